#!/bin/bash
# One round of the read figures of docs/benchmarks.md: redis-server (no persistence), then raftkv
# with ReadIndex, then with leases; GET at -c 50 on the leader, GET spread over the three nodes
# (three redis-benchmark processes at -c 17), and a 90% GET / 10% SET mix at 50 clients.
# Needs redis-server, redis-benchmark, redis-cli and bc; build first:
#   cargo build --release -p raft-driver-std --bin raftkv --example mixed
# Uses ports 6379-6381 (raftkv), 7379-7381 (its peers) and 6400 (redis-server); data in /tmp/bench.
set -u
B="$(cd "$(dirname "$0")/.." && pwd)/target/release"
mkdir -p /tmp/bench
summ() { tr '\r' '\n' < $1 | grep -E "throughput summary|^ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$" | tail -2 | awk 'NR==1{r=$3} NR==2{print "rps=" r " p50=" $3 " p99=" $5}'; }
spread() { # ports...
  for p in "$@"; do redis-benchmark -t get -d 128 -c 17 -n 60000 -p $p --precision 3 > /tmp/bench/sp.$p.$RANDOM 2>&1 & done; wait
  tot=0; for f in /tmp/bench/sp.*; do r=$(summ $f); echo "    $r"; tot=$(echo "$tot + $(echo $r | sed 's/rps=\([0-9.]*\).*/\1/')" | bc); done; rm -f /tmp/bench/sp.*; echo "    total rps=$tot"
}
pkill -f "redis-server \*:6400" ; sleep 0.5
redis-server --port 6400 --save "" --appendonly no --daemonize yes >/dev/null; sleep 1
redis-benchmark -t set -d 128 -c 50 -n 20000 -p 6400 -q > /dev/null 2>&1
redis-benchmark -t get -d 128 -c 50 -n 200000 -p 6400 --precision 3 > /tmp/bench/r.out 2>&1; echo "redis GET c50: $(summ /tmp/bench/r.out)"
echo "redis GET 3x c17:"; spread 6400 6400 6400
echo "redis mixed 90/10 c50: $($B/examples/mixed 50 10 90 6400)"
redis-cli -p 6400 shutdown nosave >/dev/null 2>&1
for MODE in index lease; do
  pkill -INT -f "raftkv cluster"; sleep 1.5; pkill -f "raftkv node"; sleep 0.5; rm -rf /tmp/bench/rk
  ($B/raftkv cluster --nodes 3 --data-dir /tmp/bench/rk --port 6379 --read-mode $MODE > /tmp/bench/cluster.log 2>&1 &); sleep 3
  L=$(for p in 6379 6380 6381; do redis-cli -p $p INFO replication | grep -q "raft_role:leader" && echo $p; done)
  redis-benchmark -t set -d 128 -c 50 -n 20000 -p $L -q > /dev/null 2>&1
  redis-benchmark -t get -d 128 -c 50 -n 100000 -p $L --precision 3 > /tmp/bench/k.out 2>&1; echo "raftkv $MODE GET c50 leader: $(summ /tmp/bench/k.out)"
  echo "raftkv $MODE GET 3x c17 (one per node):"; spread 6379 6380 6381
  echo "raftkv $MODE mixed 90/10 c50 (all nodes): $($B/examples/mixed 50 10 90 6379 6380 6381)"
done
pkill -INT -f "raftkv cluster"; sleep 1.5; pkill -f "raftkv node"
