#!/usr/bin/env python3
"""Snapshot figures for docs/benchmarks.md: raftkv (3 nodes) next to redis-server
(appendfsync always), in one sitting, on the 100,000-key workload
`redis-benchmark -t set -d 128 -r 100000`.

    cargo build --release -p raft-driver-std --bin raftkv
    python3 scripts/snapshot_figures.py --writes 1000000

Prints one line per figure: RSS and data-dir size after the writes (raftkv per
node, redis-server with its AOF after BGREWRITEAOF), restart-to-correct-GET
times by history length, the catch-up time of a follower that missed the
writes, and SET throughput with snapshots on and off. Needs redis-server,
redis-benchmark and redis-cli on PATH; uses ports 23000-23010 and 24000-24010.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAFTKV = os.path.join(ROOT, "target", "release", "raftkv")
CLIENT_BASE, PEER_BASE = 23000, 24000


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10).stdout


def info(port):
    return dict(l.split(":", 1) for l in cli(port, "INFO").splitlines() if ":" in l)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def bench(port, n, keyspace=100_000, pipeline=16, clients=50):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "set", "-d", "128", "-r", str(keyspace), "-n", str(n),
         "-c", str(clients), "-P", str(pipeline), "-q"],
        capture_output=True, text=True, timeout=7200).stdout
    return float(re.findall(r"SET: ([\d.]+) requests per second", out)[-1])


def wait_for(cond, timeout, step=0.01):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return True
        except Exception:
            pass
        time.sleep(step)
    return False


class Cluster:
    def __init__(self, base, every_entries=100_000, every_bytes=16 << 20):
        self.dir = base
        os.makedirs(base, exist_ok=True)
        self.config = os.path.join(base, "cluster.toml")
        with open(self.config, "w") as f:
            f.write("cluster_id = 1\n")
            f.write(f"[snapshot]\nevery_entries = {every_entries}\nevery_bytes = {every_bytes}\n")
            for i in range(1, 4):
                f.write(f'[[nodes]]\nid = {i}\npeer_addr = "127.0.0.1:{PEER_BASE + i}"\n'
                        f'client_addr = "127.0.0.1:{CLIENT_BASE + i}"\n')
        self.procs = {}
        for i in range(1, 4):
            self.start(i)

    def port(self, i):
        return CLIENT_BASE + i

    def start(self, i):
        log = open(os.path.join(self.dir, f"node-{i}.log"), "a")
        self.procs[i] = subprocess.Popen(
            [RAFTKV, "node", "--id", str(i), "--config", self.config, "--data-dir", os.path.join(self.dir, f"node-{i}")],
            stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "warn"})

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def leader(self):
        for _ in range(500):
            for i in range(1, 4):
                try:
                    if info(self.port(i)).get("raft_role", "").strip() == "leader":
                        return i
                except Exception:
                    pass
            time.sleep(0.02)
        raise RuntimeError("no leader")

    def applied(self, i):
        return int(info(self.port(i))["applied_index"])

    def stop(self):
        for i in list(self.procs):
            self.kill(i)


def redis_figures(tmp, writes):
    d = os.path.join(tmp, "redis")
    os.makedirs(d)
    port = 23100
    p = subprocess.Popen(["redis-server", "--port", str(port), "--dir", d, "--appendonly", "yes",
                          "--appendfsync", "always", "--save", ""], stdout=subprocess.DEVNULL)
    wait_for(lambda: cli(port, "PING").strip() == "PONG", 5)
    rps = bench(port, writes)
    cli(port, "BGREWRITEAOF")
    wait_for(lambda: info(port)["aof_rewrite_in_progress"].strip() == "0", 60, 0.1)
    time.sleep(1)
    rss = rss_kib(p.pid)
    disk = dir_bytes(d)
    p.send_signal(signal.SIGKILL)
    p.wait()
    print(f"redis-server appendfsync always: {writes} SETs at {rps:.0f}/s; RSS {rss / 1024:.1f} MiB; "
          f"AOF dir after rewrite {disk / 2**20:.1f} MiB")
    return rss, disk


def restart_to_get(c, i, key, expected):
    c.kill(i)
    t0 = time.time()
    c.start(i)
    ok = wait_for(lambda: cli(c.port(i), "GET", key).strip() == expected, 60, 0.005)
    return time.time() - t0 if ok else float("inf")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--writes", type=int, default=1_000_000)
    ap.add_argument("--skip-redis", action="store_true")
    ap.add_argument("--rss-only", action="store_true",
                    help="only RSS and data dir after --writes SETs, sampled every tenth of them")
    ap.add_argument("--restart-only", action="store_true",
                    help="only the restart-to-correct-GET times after --writes SETs (follower, then leader)")
    ap.add_argument("--throughput-rounds", type=int, default=0,
                    help="only SET/s with snapshots off and on: this many alternating rounds, fresh clusters, medians")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="snapfig-")
    try:
        if args.throughput_rounds:
            results = {"off": [], "on": []}
            for r in range(args.throughput_rounds):
                order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
                for mode in order:
                    kw = {"every_entries": 0, "every_bytes": 0} if mode == "off" else {}
                    c = Cluster(os.path.join(tmp, f"tp-{r}-{mode}"), **kw)
                    leader = c.leader()
                    rps = bench(c.port(leader), args.writes)
                    taken = info(c.port(leader))["snapshots_taken"].strip()
                    c.stop()
                    results[mode].append(rps)
                    print(f"round {r + 1} snapshots {mode}: {rps:.0f} SET/s ({taken} snapshots on the leader)", flush=True)
            med = {m: sorted(v)[len(v) // 2] for m, v in results.items()}
            print(f"median SET/s over {args.throughput_rounds} alternating rounds of {args.writes} writes: "
                  f"off {med['off']:.0f}, on {med['on']:.0f}, ratio {med['on'] / med['off']:.3f}")
            return
        if args.restart_only:
            c = Cluster(os.path.join(tmp, "restart"))
            leader = c.leader()
            bench(c.port(leader), args.writes)
            cli(c.port(leader), "SET", "probe", "v1")
            follower = next(i for i in range(1, 4) if i != leader)
            print(f"history {args.writes} writes: follower restart to correct GET "
                  f"{restart_to_get(c, follower, 'probe', 'v1'):.3f} s", flush=True)
            # The whole cluster: every node restarts from its snapshot and WAL tail.
            for i in range(1, 4):
                c.kill(i)
            t0 = time.time()
            for i in range(1, 4):
                c.start(i)
            ok = wait_for(lambda: cli(c.port(1), "GET", "probe").strip() == "v1", 60, 0.005)
            print(f"history {args.writes} writes: whole cluster restart to correct GET "
                  f"{time.time() - t0 if ok else float('inf'):.3f} s", flush=True)
            c.stop()
            return
        if args.rss_only:
            redis_figures(tmp, args.writes)
            c = Cluster(os.path.join(tmp, "rss"))
            leader = c.leader()
            for step in range(1, 11):
                bench(c.port(leader), args.writes // 10)
                rss = [rss_kib(c.procs[i].pid) / 1024 for i in range(1, 4)]
                disk = [dir_bytes(os.path.join(c.dir, f"node-{i}")) / 2**20 for i in range(1, 4)]
                print(f"after {step * args.writes // 10} SETs: RSS MiB " + ", ".join(f"{r:.1f}" for r in rss)
                      + f" (leader {leader}); data dir MiB " + ", ".join(f"{d:.1f}" for d in disk), flush=True)
            c.stop()
            return
        if not args.skip_redis:
            redis_figures(tmp, args.writes)

        # Throughput with snapshots off, then on (default policy), on fresh clusters.
        off = Cluster(os.path.join(tmp, "off"), every_entries=0, every_bytes=0)
        rps_off = bench(CLIENT_BASE + off.leader(), args.writes)
        off.stop()
        c = Cluster(os.path.join(tmp, "on"))
        leader = c.leader()
        rps_on = bench(c.port(leader), args.writes)
        taken = int(info(c.port(leader))["snapshots_taken"])
        print(f"raftkv SET throughput, {args.writes} writes: snapshots off {rps_off:.0f}/s, "
              f"on {rps_on:.0f}/s ({taken} snapshots on the leader), ratio {rps_on / rps_off:.3f}")
        time.sleep(1)
        for i in range(1, 4):
            inf = info(c.port(i))
            print(f"raftkv node {i}: RSS {rss_kib(c.procs[i].pid) / 1024:.1f} MiB; data dir "
                  f"{dir_bytes(os.path.join(c.dir, f'node-{i}')) / 2**20:.1f} MiB; snapshot "
                  f"{int(inf['snapshot_bytes']) / 2**20:.1f} MiB at {inf['snapshot_index'].strip()}; "
                  f"log from {inf['log_first_index'].strip()}")

        # Restart of a follower to a correct GET at this history length.
        follower = next(i for i in range(1, 4) if i != leader)
        cli(c.port(leader), "SET", "probe", "after-history")
        dt = restart_to_get(c, follower, "probe", "after-history")
        print(f"restart to a correct GET after {args.writes} writes: {dt:.3f} s")

        # A follower that missed the writes catches up.
        c.kill(follower)
        bench(c.port(leader), args.writes)
        target = c.applied(leader)
        t0 = time.time()
        c.start(follower)
        wait_for(lambda: c.applied(follower) >= target, 120, 0.005)
        dt = time.time() - t0
        inf = info(c.port(follower))
        print(f"follower that missed {args.writes} writes caught up in {dt:.3f} s "
              f"(snapshots installed: {inf['snapshots_installed'].strip()})")
        c.stop()

        # Restart to a correct GET by history length, each on a fresh cluster.
        for n in [1_000, 100_000, args.writes]:
            c = Cluster(os.path.join(tmp, f"hist-{n}"))
            leader = c.leader()
            bench(c.port(leader), n)
            cli(c.port(leader), "SET", "probe", f"v{n}")
            follower = next(i for i in range(1, 4) if i != leader)
            dt_f = restart_to_get(c, follower, "probe", f"v{n}")
            print(f"history {n:>9} writes: follower restart to correct GET {dt_f:.3f} s")
            c.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
