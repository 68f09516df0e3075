#!/usr/bin/env bash
# Fleet demo: three `tftpx serve --single-port` nodes behind one anycast address, a storm of
# downloads through an ECMP router, per-node request counts.
#
#   bash bench/fleet.sh [--downloads 200] [--parallel 20] [--size 1M] [--nodes 3]
#                       [--multi-port] [--local] [--bin PATH]
#
# Topology (private network namespaces, TEST-NET addresses only, all deleted on exit):
#
#   client 198.51.100.2 --- router 198.51.100.1
#                           router 192.0.2.(4i+1)/30 --- node i 192.0.2.(4i+2)/30, lo 203.0.113.10/32
#
# Every node holds the anycast address 203.0.113.10/32 on its loopback and listens on
# 0.0.0.0:69 (replies leave from the address asked, IP_PKTINFO). The router has one multipath
# route to 203.0.113.10 with one nexthop per node and hashes flows by L4 ports
# (net.ipv4.fib_multipath_hash_policy=1), as an ECMP router fed by BGP does: each new client
# source port may land on another node. --multi-port runs the nodes without --single-port to
# show what breaks (replies from a new port are hashed to whatever node, the client's ACKs
# to the wrong one).
#
# The nodes serve one HTTP origin (crates/origin/tests/origin_http.py, python3, in its own
# namespace at 192.0.2.2 behind the router, logging every request) with `--cache`: each node
# fetches the image once and then revalidates it (If-None-Match -> 304); concurrent requests
# on a node share one fetch. --local: each node serves its own copy of the image instead.
#
# The binary: --bin, else target/release/tftpx (built with `cargo build --release -p
# tftpx-cli` if missing). Needs root (namespaces), iproute2 and the tftpx client.
# Output: per-node served counts and origin fetches (from each node's log), failures, the
# origin's full and conditional GETs (from its log), total wall time.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DOWNLOADS=200
PARALLEL=20
SIZE=1M
NODES=3
SINGLE=--single-port
BIN=
ANYCAST=203.0.113.10
LOCAL=

usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
    --downloads) DOWNLOADS=$2; shift 2 ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --multi-port) SINGLE=; shift ;;
    --local) LOCAL=1; shift ;;
    --bin) BIN=$2; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "fleet.sh needs root (network namespaces)" >&2; exit 1; }
command -v ip >/dev/null || { echo "ip (iproute2) is missing: bash .ci/install-peers.sh" >&2; exit 1; }
[ "$NODES" -ge 1 ] && [ "$NODES" -le 60 ] || { echo "--nodes: 1..60" >&2; exit 2; }

if [ -z "$BIN" ]; then
    BIN=$ROOT/target/release/tftpx
    if [ ! -x "$BIN" ]; then
        echo "building $BIN (cargo build --release -p tftpx-cli)" >&2
        (cd "$ROOT" && cargo build --release -p tftpx-cli)
    fi
fi
[ -x "$BIN" ] || { echo "no tftpx binary at $BIN" >&2; exit 1; }

TAG=tfxfleet$$
WORK=$(mktemp -d /tmp/tftpx-fleet.XXXXXX)
PIDS=()
NSS=()
cleanup() {
    local p n
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for n in "${NSS[@]}"; do ip netns delete "$n" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ns() { ip netns add "$1"; NSS+=("$1"); ip -n "$1" link set lo up; }
CLIENT=$TAG-c
ROUTER=$TAG-r
ns "$CLIENT"
ns "$ROUTER"
ip link add c0 netns "$CLIENT" type veth peer name r0 netns "$ROUTER"
ip -n "$CLIENT" addr add 198.51.100.2/24 dev c0
ip -n "$CLIENT" link set c0 up
ip -n "$CLIENT" route add default via 198.51.100.1
ip -n "$ROUTER" addr add 198.51.100.1/24 dev r0
ip -n "$ROUTER" link set r0 up
ip netns exec "$ROUTER" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$ROUTER" sysctl -qw net.ipv4.fib_multipath_hash_policy=1

mkdir -p "$WORK/root"
head -c "$SIZE" /dev/urandom >"$WORK/root/image.bin" || { echo "--size $SIZE: not a size" >&2; exit 2; }

# The origin: its own namespace behind the router (192.0.2.0/30), serving $WORK/root.
ORIGIN_URL=
if [ -z "$LOCAL" ]; then
    command -v python3 >/dev/null || { echo "python3 is missing: bash .ci/install-peers.sh" >&2; exit 1; }
    ORIGIN=$TAG-o
    ns "$ORIGIN"
    ip link add r-o netns "$ROUTER" type veth peer name o0 netns "$ORIGIN"
    ip -n "$ROUTER" addr add 192.0.2.1/30 dev r-o
    ip -n "$ROUTER" link set r-o up
    ip -n "$ORIGIN" addr add 192.0.2.2/30 dev o0
    ip -n "$ORIGIN" link set o0 up
    ip -n "$ORIGIN" route add default via 192.0.2.1
    : >"$WORK/origin.log"
    ip netns exec "$ORIGIN" python3 "$ROOT/crates/origin/tests/origin_http.py" --bind 192.0.2.2 \
        --dir "$WORK/root" --log "$WORK/origin.log" --port-file "$WORK/origin.port" \
        --release "$WORK/origin.release" 2>"$WORK/origin.err" &
    PIDS+=($!)
    for _ in $(seq 1 100); do [ -s "$WORK/origin.port" ] && break; sleep 0.1; done
    [ -s "$WORK/origin.port" ] || { echo "the origin did not start:" >&2; cat "$WORK/origin.err" >&2; exit 1; }
    ORIGIN_URL="http://192.0.2.2:$(cat "$WORK/origin.port")/"
fi

nexthops=()
for i in $(seq 1 "$NODES"); do
    node=$TAG-n$i
    ns "$node"
    ip link add "r$i" netns "$ROUTER" type veth peer name n0 netns "$node"
    ip -n "$ROUTER" addr add "192.0.2.$((4 * i + 1))/30" dev "r$i"
    ip -n "$ROUTER" link set "r$i" up
    ip -n "$node" addr add "192.0.2.$((4 * i + 2))/30" dev n0
    ip -n "$node" link set n0 up
    ip -n "$node" addr add "$ANYCAST/32" dev lo
    ip -n "$node" route add default via "192.0.2.$((4 * i + 1))"
    nexthops+=(nexthop via "192.0.2.$((4 * i + 2))" dev "r$i")
    if [ -n "$LOCAL" ]; then
        # Each node serves its own copy (identical bytes), as nodes with their own disks do.
        mkdir -p "$WORK/n$i"
        cp "$WORK/root/image.bin" "$WORK/n$i/"
        serve=("$WORK/n$i")
    else
        # The origin, cached on the node's own disk.
        serve=("$ORIGIN_URL" --cache "$WORK/cache$i")
    fi
    # shellcheck disable=SC2086 # $SINGLE is empty or one flag
    ip netns exec "$node" "$BIN" serve "${serve[@]}" --listen 0.0.0.0:69 --user root $SINGLE \
        --max-transfers-per-client 1024 --rate-limit 0 2>"$WORK/n$i.log" &
    PIDS+=($!)
done
ip -n "$ROUTER" route add "$ANYCAST/32" "${nexthops[@]}"

# Wait (bounded) until every node answers a probe from the router's own link to it.
for i in $(seq 1 "$NODES"); do
    ok=0
    for _ in $(seq 1 100); do
        if ip netns exec "$ROUTER" "$BIN" get "192.0.2.$((4 * i + 2))" image.bin -o "$WORK/probe" \
            --timeout 200ms --retries 2 -q 2>/dev/null; then
            ok=1
            break
        fi
        sleep 0.1
    done
    [ "$ok" = 1 ] || { echo "node $i did not start; its log:" >&2; cat "$WORK/n$i.log" >&2; exit 1; }
done

count_origin() { # full GETs, conditional GETs, 304s in the origin's log so far
    local f c n
    f=$(grep '"event": "request"' "$WORK/origin.log" | grep -c '"inm": null' || true)
    c=$(grep '"event": "request"' "$WORK/origin.log" | grep -vc '"inm": null' || true)
    n=$(grep -c '"event": "not-modified"' "$WORK/origin.log" || true)
    echo "$f $c $n"
}
[ -n "$LOCAL" ] || read -r full0 cond0 n3040 < <(count_origin)

echo "fleet: $NODES nodes on $ANYCAST (${SINGLE:-multi-port}), $DOWNLOADS downloads of $SIZE, $PARALLEL at a time"
mkdir -p "$WORK/out"
start=$(date +%s.%N)
# Each download is a new process, so a new source port: a new flow for the ECMP hash.
seq 1 "$DOWNLOADS" | xargs -P "$PARALLEL" -I{} sh -c \
    'ip netns exec "$1" timeout 60 "$2" get "$3" image.bin -o "$4/out/{}" --timeout 1s --retries 3 -q 2>>"$4/client.err" || echo "{}" >>"$4/failed"' \
    _ "$CLIENT" "$BIN" "$ANYCAST" "$WORK"
end=$(date +%s.%N)

good=0
bad=0
for i in $(seq 1 "$DOWNLOADS"); do
    if cmp -s "$WORK/root/image.bin" "$WORK/out/$i"; then good=$((good + 1)); else bad=$((bad + 1)); fi
done
echo
printf '%-6s %-16s %8s %8s %8s\n' node link served failed fetched
total=0
for i in $(seq 1 "$NODES"); do
    # Bodies this node fetched from the origin (the probe's included); 0 with --local.
    fetched=$(grep -c 'cache: fetched image.bin from the origin' "$WORK/n$i.log" || true)
    # The probes came from the router's address on the node's link, not through the anycast
    # route: only requests from the client (198.51.100.2) count.
    served=$(grep -c 'RRQ from 198\.51\.100\.2:[0-9]* "image.bin" octet: ok' "$WORK/n$i.log" || true)
    failed=$(grep -E 'RRQ from 198\.51\.100\.2:[0-9]* "image.bin" octet: (failed|refused)' "$WORK/n$i.log" | wc -l || true)
    printf '%-6s %-16s %8s %8s %8s\n' "n$i" "192.0.2.$((4 * i + 2))" "$served" "$failed" "$fetched"
    total=$((total + served))
done
printf '%-6s %-16s %8s\n' total "" "$total"
echo
if [ -z "$LOCAL" ]; then
    # The origin's log: one JSON line per request; conditional ones carry "inm" (If-None-Match).
    read -r full cond n304 < <(count_origin)
    echo "origin $ORIGIN_URL, during the storm: $((full - full0)) full GETs, $((cond - cond0))" \
        "conditional GETs ($((n304 - n3040)) answered 304 Not Modified)"
    echo "before it, the probes that check each node is up: $full0 full GETs (one per node)"
    echo "storm downloads served from the node caches: $((total - (full - full0))) of $total"
    echo
fi
echo "downloads byte-identical: $good of $DOWNLOADS (failed or different: $bad)"
awk -v s="$start" -v e="$end" -v n="$DOWNLOADS" \
    'BEGIN { t = e - s; printf "total time: %.2f s (%.1f downloads/s)\n", t, n / t }'
if [ -s "$WORK/client.err" ]; then
    echo "client errors (first 5):"
    sort "$WORK/client.err" | uniq -c | sort -rn | head -5
fi
[ "$bad" = 0 ]
