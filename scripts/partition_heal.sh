#!/usr/bin/env bash
# How fast a three-node raftkv cluster recovers after a real packet-drop partition heals.
#
# Each node runs in a network namespace of its own (rkph-n1..3, addresses 10.77.0.1-3), joined by veth
# pairs to a bridge in a fourth namespace (rkph-br): nothing crosses the root namespace, and the root
# namespace gets an `unreachable` route for the subnet so that no packet for it can leave the machine
# (nor does Docker's FORWARD policy matter, since no traffic is forwarded there). A partition is an
# nftables input rule in every namespace that drops (never rejects) every packet from or to the isolated
# node, so TCP sees plain loss and backs off its retransmissions as it would on a real network.
#
# Two scenarios, both with the default timing (50 ms ticks, election timeout 10 ticks = 0.5-1 s):
#
#   heal       for each partition length in PARTITIONS: isolate the leader, wait, heal; report the time
#              from the heal until every node reports the same leader and term (INFO replication), and
#              until the first SET sent through the formerly isolated node is acknowledged.
#   heal+cut   (the issue's scenario) isolate the leader for CUT_AFTER seconds, then at once heal it and
#              isolate the new leader; report the time until the third node (neither of the two
#              leaders) acknowledges its first SET.
#
# Usage (root):  scripts/partition_heal.sh
#   RAFTKV=/path/to/raftkv  use that binary instead of building target/release/raftkv
#   PARTITIONS="5 30 60"    partition lengths in seconds for the heal scenario
#   CUT_AFTER=30            partition length before the heal+cut scenario (0 skips it)
#   ROUNDS=1                repeat everything this many times
#   LABEL=after             a word put in front of every result line
#
# Prints a skip reason and exits 0 where it cannot run (not root, no `ip netns`, no nft, no redis-cli).
set -euo pipefail

PARTITIONS=${PARTITIONS:-"5 30 60"}
CUT_AFTER=${CUT_AFTER:-30}
ROUNDS=${ROUNDS:-1}
LABEL=${LABEL:-run}
NET=10.77.0
PREFIX=rkph
# Give up on a recovery after this long (the old transport took up to ~25 s).
CAP_S=90

skip() {
    echo "partition_heal: skipped: $*"
    exit 0
}

[[ $EUID -eq 0 ]] || skip "needs root (network namespaces and nftables)"
command -v ip >/dev/null || skip "no ip (apt-get install -y iproute2)"
command -v nft >/dev/null || skip "no nft (apt-get install -y nftables)"
command -v redis-cli >/dev/null || skip "no redis-cli (apt-get install -y redis-tools)"
if ! ip netns add "$PREFIX-probe" 2>/dev/null; then
    skip "ip netns is not usable here"
fi
ip netns del "$PREFIX-probe"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z ${RAFTKV:-} ]]; then
    (cd "$ROOT" && cargo build --release -p raft-driver-std --bin raftkv)
    RAFTKV=${CARGO_TARGET_DIR:-$ROOT/target}/release/raftkv
fi
[[ -x $RAFTKV ]] || { echo "no raftkv binary at $RAFTKV" >&2; exit 1; }

WORK=$(mktemp -d /tmp/partition_heal.XXXXXX)
PIDS=()
ROUTE_ADDED=0

stop_nodes() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

cleanup() {
    set +e
    stop_nodes
    for ns in "$PREFIX-n1" "$PREFIX-n2" "$PREFIX-n3" "$PREFIX-br"; do
        ip netns del "$ns" 2>/dev/null
    done
    [[ $ROUTE_ADDED -eq 1 ]] && ip route del unreachable "$NET.0/24" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

setup_network() {
    # Leftovers of an interrupted run.
    for ns in "$PREFIX-n1" "$PREFIX-n2" "$PREFIX-n3" "$PREFIX-br"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    if ! ip route show type unreachable | grep -q "^unreachable $NET.0/24"; then
        ip route add unreachable "$NET.0/24"
        ROUTE_ADDED=1
    fi
    ip netns add "$PREFIX-br"
    ip -n "$PREFIX-br" link set lo up
    ip -n "$PREFIX-br" link add br0 type bridge
    ip -n "$PREFIX-br" link set br0 up
    for i in 1 2 3; do
        ip netns add "$PREFIX-n$i"
        ip link add eth0 netns "$PREFIX-n$i" type veth peer name "b$i" netns "$PREFIX-br"
        ip -n "$PREFIX-br" link set "b$i" master br0 up
        ip -n "$PREFIX-n$i" link set lo up
        ip -n "$PREFIX-n$i" addr add "$NET.$i/24" dev eth0
        ip -n "$PREFIX-n$i" link set eth0 up
    done
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# redis-cli against node $1's own client port, from inside its namespace (so the partition never cuts
# the measuring client off its node, only the node off its peers).
cli() {
    local n=$1
    shift
    ip netns exec "$PREFIX-n$n" timeout 5 redis-cli -h "$NET.$n" -p 6379 "$@" 2>/dev/null || true
}

field() { # node field
    cli "$1" INFO replication | tr -d '\r' | awk -F: -v f="$2" '$1 == f { print $2 }'
}

stat_field() { # node field
    cli "$1" INFO stats | tr -d '\r' | awk -F: -v f="$2" '$1 == f { print $2 }'
}

# The leader every node in "$@" names, with the same term, or nothing.
agreed_leader() {
    local first="" term="" n l t
    for n in "$@"; do
        l=$(field "$n" leader_id)
        t=$(field "$n" term)
        [[ -n $l && $l != none ]] || return 0
        if [[ -z $first ]]; then
            first=$l
            term=$t
        elif [[ $l != "$first" || $t != "$term" ]]; then
            return 0
        fi
    done
    echo "$first"
}

wait_leader() { # nodes...: prints the agreed leader, or fails after CAP_S
    local deadline leader
    deadline=$(($(date +%s) + CAP_S))
    while (($(date +%s) < deadline)); do
        leader=$(agreed_leader "$@")
        if [[ -n $leader ]]; then
            echo "$leader"
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# Drops every packet from or to node $1 (0: heals everything), one atomic ruleset per namespace.
isolate() {
    local cut=$1 i rule
    for i in 1 2 3; do
        rule=""
        if [[ $cut -ne 0 ]]; then
            if [[ $i -eq $cut ]]; then
                rule="iifname \"eth0\" drop"
            else
                rule="ip saddr $NET.$cut drop"
            fi
        fi
        ip netns exec "$PREFIX-n$i" nft -f - <<EOF
add table inet $PREFIX
delete table inet $PREFIX
table inet $PREFIX {
    chain input {
        type filter hook input priority -10; policy accept;
        $rule
    }
}
EOF
    done
}

# Starts a fresh cluster (not in a subshell: PIDS must stay ours) and sets LEADER.
start_cluster() {
    local dir=$WORK/cluster-$1 i
    mkdir -p "$dir"
    {
        echo "cluster_id = 77"
        echo "[timing]"
        echo "tick_ms = 50"
        echo "heartbeat_ticks = 2"
        echo "election_ticks = 10"
        for i in 1 2 3; do
            echo "[[nodes]]"
            echo "id = $i"
            echo "peer_addr = \"$NET.$i:7379\""
            echo "client_addr = \"$NET.$i:6379\""
        done
    } >"$dir/cluster.toml"
    for i in 1 2 3; do
        RUST_LOG=${RUST_LOG:-info} ip netns exec "$PREFIX-n$i" "$RAFTKV" node --id "$i" --config "$dir/cluster.toml" \
            --data-dir "$dir/n$i" --no-fsync >"$dir/n$i.log" 2>&1 &
        PIDS+=($!)
    done
    LEADER=$(wait_leader 1 2 3)
}

# Sends SETs through node $1 until one is acknowledged; prints when (epoch seconds).
first_ack() {
    local n=$1 key=$2 deadline
    deadline=$(($(date +%s) + CAP_S))
    while (($(date +%s) < deadline)); do
        if [[ $(cli "$n" SET "$key" v | tr -d '\r') == OK ]]; then
            now
            return 0
        fi
        sleep 0.02
    done
    echo never
}

result() { echo "result $LABEL $*"; }

run_heal() { # partition seconds
    local p=$1 leader t_heal t_agree setfile stalls agree set_s
    start_cluster "heal-$p-$RANDOM"
    leader=$LEADER
    cli "$leader" SET warm up >/dev/null
    isolate "$leader"
    sleep "$p"
    isolate 0
    t_heal=$(now)
    setfile=$WORK/set-$p
    first_ack "$leader" "after-heal-$p" >"$setfile" &
    local setter=$!
    if wait_leader 1 2 3 >/dev/null; then
        t_agree=$(now)
        agree=$(elapsed "$t_heal" "$t_agree")
    else
        agree=">$CAP_S"
    fi
    wait "$setter" || true
    if [[ $(cat "$setfile") == never ]]; then set_s=">$CAP_S"; else set_s=$(elapsed "$t_heal" "$(cat "$setfile")"); fi
    stalls=""
    for i in 1 2 3; do stalls+="$(stat_field "$i" peer_stalls_replaced)/"; done
    result "heal partition_s=$p isolated=$leader all_follow_one_leader_s=$agree first_set_via_isolated_s=$set_s stalls_replaced=${stalls%/}"
    stop_nodes
}

run_heal_and_cut() { # partition seconds
    local p=$1 old new third t_cut ack stalls i
    start_cluster "cut-$p-$RANDOM"
    old=$LEADER
    cli "$old" SET warm up >/dev/null
    isolate "$old"
    local others=()
    for i in 1 2 3; do [[ $i -eq $old ]] || others+=("$i"); done
    new=$(wait_leader "${others[@]}")
    sleep "$p"
    new=$(wait_leader "${others[@]}")
    third=$((6 - old - new))
    isolate "$new" # heals the old leader and cuts the new one off, at once
    t_cut=$(now)
    ack=$(first_ack "$third" "after-cut-$p")
    if [[ $ack == never ]]; then ack=">$CAP_S"; else ack=$(elapsed "$t_cut" "$ack"); fi
    stalls=""
    for i in 1 2 3; do stalls+="$(stat_field "$i" peer_stalls_replaced)/"; done
    result "heal+cut partition_s=$p old_leader=$old new_leader=$new third=$third first_set_via_third_s=$ack stalls_replaced=${stalls%/}"
    stop_nodes
}

setup_network
echo "partition_heal: $RAFTKV, partitions '$PARTITIONS' s, heal+cut after $CUT_AFTER s, $ROUNDS round(s)"
for ((round = 1; round <= ROUNDS; round++)); do
    for p in $PARTITIONS; do
        run_heal "$p"
    done
    if [[ $CUT_AFTER -gt 0 ]]; then
        run_heal_and_cut "$CUT_AFTER"
    fi
done
