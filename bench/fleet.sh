#!/usr/bin/env bash
# Fleet demo: three `tftpx serve --single-port` nodes behind one anycast address, a storm of
# downloads through an ECMP router, per-node request counts.
#
#   bash bench/fleet.sh [--downloads 200] [--parallel 20] [--size 1M] [--nodes 3]
#                       [--multi-port] [--bin PATH]
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
# The binary: --bin, else target/release/tftpx (built with `cargo build --release -p
# tftpx-cli` if missing). Needs root (namespaces), iproute2 and the tftpx client.
# Output: per-node served counts (from each node's log), failures, total wall time.
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

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
    --downloads) DOWNLOADS=$2; shift 2 ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --multi-port) SINGLE=; shift ;;
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

# The origin plugs in here. TODO(fleet origin): start one HTTP or S3 origin (in its own
# namespace behind the router), serve it with `tftpx serve http://ORIGIN/ --cache DIR` on every
# node instead of the local directory, and print cache hits and origin fetches beside the
# per-node counts. Until the HTTP/S3 origins land, every node serves an identical local copy.
mkdir -p "$WORK/root"
head -c "$SIZE" /dev/urandom >"$WORK/root/image.bin" || { echo "--size $SIZE: not a size" >&2; exit 2; }

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
    # Each node serves its own copy (identical bytes), as nodes with their own disks do.
    mkdir -p "$WORK/n$i"
    cp "$WORK/root/image.bin" "$WORK/n$i/"
    # shellcheck disable=SC2086 # $SINGLE is empty or one flag
    ip netns exec "$node" "$BIN" serve "$WORK/n$i" --listen 0.0.0.0:69 --user root $SINGLE \
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
printf '%-6s %-16s %8s %8s\n' node link served failed
total=0
for i in $(seq 1 "$NODES"); do
    # The probes came from the router's address on the node's link, not through the anycast
    # route: only requests from the client (198.51.100.2) count.
    served=$(grep -c 'RRQ from 198\.51\.100\.2:[0-9]* "image.bin" octet: ok' "$WORK/n$i.log" || true)
    failed=$(grep -E 'RRQ from 198\.51\.100\.2:[0-9]* "image.bin" octet: (failed|refused)' "$WORK/n$i.log" | wc -l || true)
    printf '%-6s %-16s %8s %8s\n' "n$i" "192.0.2.$((4 * i + 2))" "$served" "$failed"
    total=$((total + served))
done
printf '%-6s %-16s %8s\n' total "" "$total"
echo
echo "downloads byte-identical: $good of $DOWNLOADS (failed or different: $bad)"
awk -v s="$start" -v e="$end" -v n="$DOWNLOADS" \
    'BEGIN { t = e - s; printf "total time: %.2f s (%.1f downloads/s)\n", t, n / t }'
if [ -s "$WORK/client.err" ]; then
    echo "client errors (first 5):"
    sort "$WORK/client.err" | uniq -c | sort -rn | head -5
fi
[ "$bad" = 0 ]
