#!/usr/bin/env python3
"""The classic failure drills on a 3-node raftkv cluster in containers (deploy/).

Each drill runs under a client write load (one writer per node, each SET acknowledged only on
+OK) and asserts that no acknowledged write is lost and that the survivors keep serving:

  stop-two       stop a follower, then a second node: writes stop with a clear error; start
                 both: service resumes and they catch up
  disconnect     take a follower off the network, then put it back
  split-leader   take the leader off the network (a 2 | 1 split with the old leader alone), heal
  kill-all       kill -9 every container during writes, start them again
  pause-leader   docker pause the leader past the election timeout, unpause it

For each drill it prints how long the majority side had no leader (polled every 50 ms on every
reachable node; a node that does not answer within 200 ms counts as not reachable) and the
longest gap between two acknowledged writes. Exit status 0 when every drill passed; skips (exit
0, saying why) without Docker, Compose or the image (build it with deploy/build.sh).

Usage: python3 scripts/drills.py [DRILL...]    (all drills by default)
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
PROJECT = "raftkv-drills"
NODES = {1: 6379, 2: 6380, 3: 6381}
NETWORK = PROJECT + "_raftkv_net"
IPS = {1: "172.28.0.11", 2: "172.28.0.12", 3: "172.28.0.13"}


def compose(*args, check=True):
    return subprocess.run(
        [os.path.join(DEPLOY, "compose.sh"), "-p", PROJECT, "-f", "docker-compose.yml", *args],
        check=check,
        capture_output=True,
        text=True,
    )


def docker(*args, check=True):
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True)


def container(node):
    return compose("ps", "-q", f"raftkv{node}").stdout.strip()


# --- a minimal RESP client (no dependency beyond Python) ---------------------------------------


def command(port, *args, timeout=1.0):
    """Sends one command; returns the reply (str, int, list or ("error", text))."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        s.sendall(b"".join(out))
        f = s.makefile("rb")
        return read_reply(f)


def read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return ("error", rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    raise ValueError(f"bad reply {line!r}")


def info(port, timeout=0.2):
    text = command(port, "INFO", "replication", timeout=timeout)
    return dict(l.split(":", 1) for l in text.splitlines() if ":" in l)


# --- load, leader watch, checks -----------------------------------------------------------------


class Load:
    """One writer thread per node; keeps the acknowledged keys and when each was acknowledged."""

    def __init__(self):
        self.acked = {}
        self.ack_times = []
        self.errors = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in NODES]
        self.n = 0

    def run(self, node):
        i = 0
        while not self.stop.is_set():
            key, value = f"drill:{node}:{i}", str(i)
            i += 1
            try:
                reply = command(NODES[node], "SET", key, value, timeout=3.0)
            except OSError:
                time.sleep(0.05)
                continue
            if reply == "OK":
                with self.lock:
                    self.acked[key] = value
                    self.ack_times.append(time.monotonic())
            else:
                word = reply[1].split()[0] if isinstance(reply, tuple) else repr(reply)
                with self.lock:
                    self.errors[word] = self.errors.get(word, 0) + 1
                time.sleep(0.02)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()

    def acked_since(self, t):
        with self.lock:
            return sum(1 for x in self.ack_times if x >= t)

    def longest_gap(self, start, end):
        with self.lock:
            times = sorted(x for x in self.ack_times if start <= x <= end)
        points = [start] + times + [end]
        return max(b - a for a, b in zip(points, points[1:]))


class LeaderWatch:
    """Polls every node every 50 ms; records the intervals in which no reachable node leads."""

    def __init__(self):
        self.stop = threading.Event()
        self.samples = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            now = time.monotonic()
            leaders = set()
            for port in NODES.values():
                try:
                    i = info(port)
                except (OSError, ValueError, ConnectionError):
                    continue
                if i.get("raft_role") == "leader":
                    leaders.add(port)
            self.samples.append((now, bool(leaders)))
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def leaderless(self, start, end):
        """Total time without a leader in [start, end], from the samples."""
        total, last = 0.0, None
        for t, has in self.samples:
            if t < start or t > end:
                continue
            if last is not None and not last[1]:
                total += t - last[0]
            last = (t, has)
        return total


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError, ConnectionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def leader():
    for node, port in NODES.items():
        try:
            if info(port).get("raft_role") == "leader":
                return node
        except (OSError, ValueError, ConnectionError):
            pass
    return None


def followers():
    lead = leader()
    return [n for n in NODES if n != lead]


def converged():
    applied = [int(info(p)["applied_index"]) for p in NODES.values()]
    commits = [int(info(p)["commit_index"]) for p in NODES.values()]
    return len(set(applied)) == 1 and applied[0] == max(commits)


def check_acked(acked):
    """Every acknowledged write is on every node (read through each node, in chunks)."""
    keys = sorted(acked)
    for node, port in NODES.items():
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            values = command(port, "MGET", *chunk, timeout=10.0)
            missing = [k for k, v in zip(chunk, values) if v != acked[k]]
            assert not missing, f"node {node} lost {len(missing)} acknowledged writes, e.g. {missing[:3]}"


def writes_resume(load, timeout=20):
    t = time.monotonic()
    wait_for(lambda: load.acked_since(t) >= 20, timeout, "writes to resume")


# --- the drills -----------------------------------------------------------------------------------


def drill_stop_two(load):
    first, second = followers()[0], leader()
    docker("stop", "-t", "2", container(first))
    writes_resume(load)
    docker("stop", "-t", "2", container(second))
    # One node of three: no majority, writes must fail with a clear error, never hang.
    time.sleep(2)
    survivor = [n for n in NODES if n not in (first, second)][0]
    reply = command(NODES[survivor], "SET", "drill:minority", "x", timeout=10.0)
    assert isinstance(reply, tuple) and reply[1].split()[0] in ("TRYAGAIN", "UNCERTAIN", "CLUSTERDOWN"), reply
    docker("start", container(first))
    docker("start", container(second))
    writes_resume(load, 30)


def drill_disconnect(load):
    node = followers()[0]
    docker("network", "disconnect", NETWORK, container(node))
    time.sleep(3)
    writes_resume(load)
    docker("network", "connect", "--ip", IPS[node], NETWORK, container(node))


def drill_split_leader(load):
    old = leader()
    docker("network", "disconnect", NETWORK, container(old))
    writes_resume(load)
    time.sleep(2)
    docker("network", "connect", "--ip", IPS[old], NETWORK, container(old))


def drill_kill_all(load):
    time.sleep(1)
    for node in NODES:
        docker("kill", "-s", "KILL", container(node))
    time.sleep(1)
    for node in NODES:
        docker("start", container(node))
    writes_resume(load, 30)


def drill_pause_leader(load):
    old = leader()
    docker("pause", container(old))
    writes_resume(load)
    time.sleep(2)
    docker("unpause", container(old))


DRILLS = {
    "stop-two": drill_stop_two,
    "disconnect": drill_disconnect,
    "split-leader": drill_split_leader,
    "kill-all": drill_kill_all,
    "pause-leader": drill_pause_leader,
}


def skip(reason):
    print(f"drills: skipped, {reason}")
    sys.exit(0)


def main():
    names = sys.argv[1:] or list(DRILLS)
    for n in names:
        if n not in DRILLS:
            sys.exit(f"unknown drill {n}; known: {', '.join(DRILLS)}")
    if shutil.which("docker") is None:
        skip("docker is not installed")
    if docker("info", check=False).returncode != 0:
        skip("the Docker engine is not reachable")
    if compose("version", check=False).returncode != 0:
        skip("neither docker-compose nor the docker compose plugin is installed")
    if docker("image", "inspect", "raftkv:local", check=False).returncode != 0:
        skip("no raftkv:local image (build it with deploy/build.sh)")
    results = []
    for name in names:
        compose("down", "-v", "--remove-orphans", check=False)
        compose("up", "-d")
        try:
            wait_for(lambda: leader() is not None, 30, "a leader")
            with LeaderWatch() as watch, Load() as load:
                writes_resume(load)
                start = time.monotonic()
                DRILLS[name](load)
                end = time.monotonic()
                wait_for(lambda: load.acked_since(time.monotonic() - 0.5) > 0, 30, "writes after the drill")
            wait_for(converged, 60, "every node to apply everything")
            check_acked(load.acked)
            row = {
                "drill": name,
                "acked": len(load.acked),
                "leaderless_s": round(watch.leaderless(start, end + 5), 2),
                "longest_write_gap_s": round(load.longest_gap(start, end), 2),
                "errors": load.errors,
            }
            results.append(row)
            print(json.dumps(row), flush=True)
        finally:
            compose("down", "-v", "--remove-orphans", check=False)
    print(f"drills: {len(results)} passed, no acknowledged write lost")


if __name__ == "__main__":
    main()
