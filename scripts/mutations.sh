#!/usr/bin/env bash
# Usage: WT=DIR scripts/mutations.sh [names...]: applies each bug of scripts/mutations.py in turn in
# the worktree DIR and records what catches it (docs/testing.md, "Which tests catch which bugs").
set -u
# A scratch worktree of this repository (git worktree add --detach WT HEAD) and its own target dir.
WT=${WT:?set WT to a scratch worktree}; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/tgt-mut} CARGO_INCREMENTAL=1
LIST=$(cd "$(dirname "$0")" && pwd)/mutations.py
cd $WT
names=$(python3 -c "exec(open('$LIST').read()); print(' '.join(m[0] for m in M))")
[ $# -gt 0 ] && names="$*"
for n in $names; do
  git checkout -q -- raft-core
  python3 - "$n" "$LIST" <<'PY'
import sys
exec(open(sys.argv[2]).read())
n=sys.argv[1]
for name,f,o,nw in M:
    if name==n:
        p='raft-core/src/'+f; s=open(p).read(); assert s.count(o)==1; open(p,'w').write(s.replace(o,nw))
PY
  out=${OUT:-/tmp/mut}/$n; mkdir -p "$out"
  if ! cargo test -p raft-sim -p raft-core --no-run >$out/build.log 2>&1; then echo "$n BUILD-FAIL"; continue; fi
  cargo test -p raft-core --no-fail-fast >$out/core.log 2>&1
  cargo test -p raft-sim --test scenarios --no-fail-fast >$out/scen.log 2>&1
  INSTA_FORCE_PASS=1 cargo test -p raft-sim --test scenarios --no-fail-fast >$out/scen_expect.log 2>&1
  cargo test -p raft-sim --lib >$out/simlib.log 2>&1
  timeout 600 $CARGO_TARGET_DIR/debug/raft-sim run --seeds 0..10000 >$out/sweep.log 2>&1
  core=$(grep -c "^test .* FAILED$" $out/core.log); 
  all=$(grep "^test .* FAILED$" $out/scen.log | awk '{print $2}' | sed 's/scenario_//' | tr '\n' ,)
  exp=$(grep "^test .* FAILED$" $out/scen_expect.log | awk '{print $2}' | sed 's/scenario_//' | tr '\n' ,)
  simlib=$(grep -c "^test .* FAILED$" $out/simlib.log)
  sweep=$(grep -o "failures=[0-9]*" $out/sweep.log | tail -1)
  echo "$n core=$core simlib=$simlib sweep=$sweep scen_all=[$all] scen_expect=[$exp]" | tee -a ${OUT:-/tmp/mut}/results.txt
done
git checkout -q -- raft-core
