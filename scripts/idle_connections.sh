#!/usr/bin/env bash
# scripts/idle_connections.sh [RAFTKV_BINARY] [ROUNDS]: RSS of a raftkv node and of redis-server with
# 10,000 idle connections (read once all are open: the server's descriptors count past 10,000) and
# after they close, in alternating rounds (raftkv, redis, raftkv, ...) in one sitting; prints each
# round and the medians (docs/benchmarks.md, "Idle connections").
set -u
cd "$(dirname "$0")/.."
BIN=${1:-target/release/raftkv}; ROUNDS=${2:-3}; N=10000
[ -x "$BIN" ] || cargo build --release -p raft-driver-std --bin raftkv
PY=scripts/idle_connections.py
measure() { # PID PORT -> "before open_kib closed_kib open_s"
    local pid=$1 port=$2 before open closed t0 t1
    before=$(ps -o rss= -p "$pid")
    t0=$(date +%s.%N)
    timeout 180 python3 "$PY" "$port" "$N" 6 >/dev/null &
    local py=$!
    for _ in $(seq 1 170); do sleep 0.5; [ "$(ls /proc/"$pid"/fd | wc -l)" -gt "$N" ] && break; done
    t1=$(date +%s.%N)
    sleep 1
    open=$(ps -o rss= -p "$pid")
    wait "$py"; sleep 2
    closed=$(ps -o rss= -p "$pid")
    echo "$before $open $closed $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
}
rk=(); rd=()
for r in $(seq 1 "$ROUNDS"); do
    rm -rf /tmp/idle-rk && mkdir -p /tmp/idle-rk
    "$BIN" cluster --nodes 3 --data-dir /tmp/idle-rk --port 7379 >/tmp/idle-rk.log 2>&1 &
    sleep 3
    n1=$(pgrep -f "raftkv node --id 1 .*--data-dir /tmp/idle-rk" | head -1)
    line=$(measure "$n1" 7379); rk+=("$line"); echo "round $r raftkv node: before/open/closed KiB, open s: $line"
    pkill -INT -f "raftkv cluster --nodes 3 --data-dir /tmp/idle-rk"; sleep 2; pkill -f "data-dir /tmp/idle-rk"; sleep 1
    redis-server --port 7400 --save "" --appendonly no --maxclients 15000 --daemonize yes >/dev/null 2>&1
    sleep 1
    line=$(measure "$(pgrep -f 'redis-server.*:7400' | head -1)" 7400); rd+=("$line"); echo "round $r redis-server: before/open/closed KiB, open s: $line"
    redis-cli -p 7400 shutdown nosave >/dev/null 2>&1; sleep 1
done
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
for who in rk rd; do
    declare -n rows=$who
    printf '%s median: open %s KiB, closed %s KiB, open time %s s\n' "$who" \
        "$(printf '%s\n' "${rows[@]}" | awk '{print $2}' | median)" \
        "$(printf '%s\n' "${rows[@]}" | awk '{print $3}' | median)" \
        "$(printf '%s\n' "${rows[@]}" | awk '{print $4}' | median)"
done
