#!/usr/bin/env bash
# scripts/idle_connections.sh RAFTKV_BINARY: RSS of node 1 with 10,000 idle connections (all open), and after they close.
BIN=$1; rm -rf /tmp/idle && mkdir -p /tmp/idle
$BIN cluster --nodes 3 --data-dir /tmp/idle/rk --port 7379 > /tmp/idle/rk.log 2>&1 &
sleep 3
N1=$(pgrep -f "raftkv node --id 1" | head -1)
echo "before: $(ps -o rss= -p $N1) KiB"
timeout 150 python3 "$(dirname "$0")/idle_connections.py" 7379 10000 6 &
PY=$!
for i in $(seq 1 140); do sleep 1; c=$(ls /proc/$N1/fd | wc -l); [ $c -gt 10005 ] && break; done
sleep 2
echo "10k idle: $(ps -o rss= -p $N1) KiB (fds $(ls /proc/$N1/fd | wc -l))"
wait $PY; sleep 2
echo "after close: $(ps -o rss= -p $N1) KiB"
pkill -f "raftkv cluster --nodes 3 --data-dir /tmp/idle"; sleep 1; pkill -f "raftkv node"; true
