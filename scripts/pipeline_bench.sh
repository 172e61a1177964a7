#!/usr/bin/env bash
# Side by side (one sitting, alternating rounds; run on an otherwise idle machine): raftkv (3 nodes, fsync) vs redis-server appendfsync always, -P 16 -c 50, alternating rounds.
# READ_MODE=lease scripts/pipeline_bench.sh serves raftkv's reads from the leader's lease (default: index, ReadIndex).
set -u
cd "$(dirname "$0")/.."
RK=target/release/raftkv
[ -x "$RK" ] || cargo build --release -p raft-driver-std --bin raftkv
rm -rf /tmp/bench && mkdir -p /tmp/bench/redisdata
$RK cluster --nodes 3 --read-mode "${READ_MODE:-index}" --data-dir /tmp/bench/raftkv-data --port 6379 > /tmp/bench/raftkv.log 2>&1 &
RKPID=$!
redis-server --port 6400 --appendonly yes --appendfsync always --dir /tmp/bench/redisdata --save "" --daemonize yes >/dev/null
redis-server --port 6401 --appendonly no --save "" --daemonize yes >/dev/null
sleep 3
for i in 1 2 3; do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
LEADER=$(for p in 6379 6380 6381; do redis-cli -p $p info | grep -q "^raft_role:leader" && echo $p; done | head -1)
echo "leader port $LEADER"
for round in 1 2 3; do
  for t in set get; do
    r=$(redis-benchmark -t $t -d 128 -c 50 -n 200000 -P 16 -p $LEADER -q 2>/dev/null | grep -oE "[0-9.]+ requests per second" | head -1)
    echo "round $round raftkv $t -P16: $r"
    r=$(redis-benchmark -t $t -d 128 -c 50 -n 200000 -P 16 -p 6400 -q 2>/dev/null | grep -oE "[0-9.]+ requests per second" | head -1)
    echo "round $round redis-aof-always $t -P16: $r"
    if [ $t = get ]; then
      r=$(redis-benchmark -t $t -d 128 -c 50 -n 200000 -P 16 -p 6401 -q 2>/dev/null | grep -oE "[0-9.]+ requests per second" | head -1)
      echo "round $round redis-no-persistence $t -P16: $r"
    fi
  done
done
redis-cli -p 6400 shutdown nosave >/dev/null 2>&1
redis-cli -p 6401 shutdown nosave >/dev/null 2>&1
kill -INT $RKPID; wait $RKPID 2>/dev/null
