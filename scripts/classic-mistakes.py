#!/usr/bin/env python3
"""Introduce classic Raft mistakes into a scratch copy of raft-core, one at a
time, and check that the default simulator sweep fails on each.

usage: scripts/classic-mistakes.py [SEEDS] [MISTAKE ...]

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
        "let granted = can_vote && self.log.is_up_to_date(req.last_log_index, req.last_log_term);",
        "let granted = can_vote;"),
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
        "let PersistedState { hard_state, entries } = persisted;",
        "let PersistedState { hard_state, entries } = persisted;\n"
        "        let hard_state = HardState { term: entries.last().map_or(0, |e| e.term), vote: None };"),
    "apply_unpersisted": ("node.rs",
        "let upto = self.commit_index.min(self.persisted_index);",
        "let upto = self.commit_index;"),
    "truncate_keeps_durability": ("node.rs",
        "self.persisted_index = self.persisted_index.min(keep);",
        "let _ = keep;"),
}

def main():
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    names = sys.argv[2:] or list(MISTAKES)
    work = tempfile.mkdtemp(prefix="raft-mistakes-")
    target = os.path.join(work, "target")
    for name in names:
        ws = os.path.join(work, "ws")
        shutil.rmtree(ws, ignore_errors=True)
        os.makedirs(ws)
        for crate in ("raft-core", "raft-sim"):
            shutil.copytree(os.path.join(ROOT, crate), os.path.join(ws, crate))
        shutil.copy(os.path.join(ROOT, "Cargo.lock"), ws)
        with open(os.path.join(ROOT, "Cargo.toml")) as f:
            manifest = f.read().replace('"raft-driver-std"', "").replace('members = ["raft-core", "raft-sim", ]', 'members = ["raft-core", "raft-sim"]')
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
        out = subprocess.run([os.path.join(target, "release", "raft-sim"), "run", "--seeds", f"0..{seeds}"],
                             cwd=ws, env=env, capture_output=True, text=True).stdout
        lines = out.strip().splitlines()
        first = next((l for l in lines if l.startswith("FAIL")), "no failing seed")
        print(f"{name}: {lines[-1] if lines else '?'}\n    first: {first}")
    shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
