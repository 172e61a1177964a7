#!/usr/bin/env python3
"""Introduce classic Raft mistakes into a scratch copy of raft-core, one at a
time, and check that the default simulator sweep fails on each.

usage: scripts/classic-mistakes.py [SEEDS] [MISTAKE ...]
       scripts/classic-mistakes.py --explore DEPTH [EXPLORE-ARG ...] -- [MISTAKE ...]

With --explore, each mutant is judged by exhaustive exploration
(`raft-sim explore --depth DEPTH`, further arguments passed on) instead of
the sweep, and the line says at which depth and after how long the first
counterexample was found; the counterexample is then replayed as a scenario
script and must fail with the same violation (KEEP_SCRIPTS=DIR keeps them).
`--explore 0 --timeouts --clock 2 --reorders 0 --proposals 0 --crashes 0`
explores every run with two timeouts instead of a depth (docs/testing.md).

Works in a temporary directory (never touches the checkout) and prints one
summary line per mistake. See docs/testing.md for the results.
"""
import os, shutil, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (file in raft-core/src, original text, mistaken text)
MISTAKES = {
    "vote_before_persist": ("election.rs",
        "if self.hard_state_durable() {\n            self.vote_reply_pending = None;",
        "if true {\n            self.vote_reply_pending = None;"),
    "vote_no_uptodate": ("election.rs",
        "let mut granted = can_vote && self.log.is_up_to_date(req.last_log_index, req.last_log_term);",
        "let mut granted = can_vote;"),
    "uptodate_off_by_one": ("log.rs",
        "last_index >= self.last_index()", "last_index + 1 >= self.last_index()"),
    "commit_old_term": ("replication.rs",
        "if candidate > self.commit_index && self.log.term(candidate) == Some(self.hard_state.term) {",
        "if candidate > self.commit_index {"),
    "no_truncate": ("replication.rs",
        "Some(t) if t == e.term => continue,", "Some(_) => continue,"),
    "stale_term_append": ("node.rs",
        "if message.term < self.hard_state.term {\n            self.step_lower_term(from, &message);",
        "if message.term < self.hard_state.term && !matches!(message.body, MessageBody::AppendEntries(_)) {\n            self.step_lower_term(from, &message);"),
    "next_without_ack": ("replication.rs",
        "if pr.ack(match_index) {", "if pr.ack(pr.next_index - 1) {"),
    "forget_term": ("node.rs",
        "let PersistedState { hard_state, snapshot, entries } = persisted;",
        "let PersistedState { hard_state, snapshot, entries } = persisted;\n"
        "        let hard_state = HardState { term: entries.last().map_or(0, |e| e.term), vote: None };"),
    "apply_unpersisted": ("node.rs",
        "let upto = self.commit_index.min(self.persisted_index);",
        "let upto = self.commit_index;"),
    "truncate_keeps_durability": ("node.rs",
        "self.persisted_index = self.persisted_index.min(keep);",
        "let _ = keep;"),
}

def main():
    explore = None
    args = sys.argv[1:]
    if args[:1] == ["--explore"]:
        rest = args[1:]
        cut = rest.index("--") if "--" in rest else len(rest)
        explore, names = rest[:cut], rest[cut + 1:]
        seeds = 0
    else:
        seeds = int(args[0]) if args else 3000
        names = args[1:]
    names = names or list(MISTAKES)
    work = tempfile.mkdtemp(prefix="raft-mistakes-")
    target = os.path.join(work, "target")
    for name in names:
        ws = os.path.join(work, "ws")
        shutil.rmtree(ws, ignore_errors=True)
        os.makedirs(ws)
        # The simulator runs the real driver and store too, so the mutant workspace holds all three.
        for crate in ("raft-core", "raft-sim", "raft-driver-std"):
            shutil.copytree(os.path.join(ROOT, crate), os.path.join(ws, crate),
                            ignore=shutil.ignore_patterns("target"))
        shutil.copy(os.path.join(ROOT, "Cargo.lock"), ws)
        with open(os.path.join(ROOT, "Cargo.toml")) as f:
            manifest = f.read().replace(', "fuzz/harness"', "")
        with open(os.path.join(ws, "Cargo.toml"), "w") as f:
            f.write(manifest)
        fname, old, new = MISTAKES[name]
        path = os.path.join(ws, "raft-core", "src", fname)
        src = open(path).read()
        if old not in src:
            print(f"{name}: patch no longer applies (the core changed); update MISTAKES")
            continue
        open(path, "w").write(src.replace(old, new, 1))
        env = dict(os.environ, CARGO_TARGET_DIR=target)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "raft-sim"], cwd=ws, env=env, check=True)
        sim = os.path.join(target, "release", "raft-sim")
        if explore is not None:
            script = os.path.join(work, f"{name}.txt")
            out = subprocess.run([sim, "explore", "--depth", *explore, "--script", script], cwd=ws, env=env,
                                 capture_output=True, text=True).stdout
            lines = out.strip().splitlines()
            summary = next((l for l in lines if l.startswith("explored=")), "?")
            violation = next((l for l in lines if l.startswith("violation:")), "no violation found")
            steps = next((l for l in lines if l.startswith("path (")), "")
            first = next((l for l in lines if l.startswith("first found")), "")
            print(f"{name}: {summary}\n    {violation} {steps} {first}", flush=True)
            if os.path.exists(script):
                # The counterexample must replay as a scenario script, to the same violation.
                replay = subprocess.run([sim, "scenario", script], cwd=ws, capture_output=True, text=True)
                prop = violation.split(":")[1].strip() if ":" in violation else "?"
                same = replay.returncode != 0 and f"{prop} violated" in replay.stderr
                print(f"    replayed as a script ({len(open(script).read().splitlines())} lines): "
                      f"{'same violation' if same else 'DID NOT REPRODUCE'}", flush=True)
                if os.environ.get("KEEP_SCRIPTS"):
                    shutil.copy(script, os.environ["KEEP_SCRIPTS"])
            continue
        out = subprocess.run([sim, "run", "--seeds", f"0..{seeds}"],
                             cwd=ws, env=env, capture_output=True, text=True).stdout
        lines = out.strip().splitlines()
        first = next((l for l in lines if l.startswith("FAIL")), "no failing seed")
        print(f"{name}: {lines[-1] if lines else '?'}\n    first: {first}", flush=True)
    shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
