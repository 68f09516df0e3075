#!/usr/bin/env bash
# Side-by-side TFTP benchmark: tftpx against tftpd-hpa, atftpd, dnsmasq, rs-tftpd and async-tftp
# (servers) and tftp-hpa, atftp, curl, busybox and rs-tftpd's tftpc (clients), on loopback.
#
#   bash bench/compare.sh [--size 100M] [--lockstep-size SIZE/4] [--reps 3] [--quick]
#                         [--min-secs 1.5] [--max-reps 3*REPS]
#                         [--rows LIST] [--no-install] [--no-scale] [--large] [--timeout SECS]
#                         [--storm-n 200]
#
# Every row runs every server x client pair that supports its setting, with the repetitions
# interleaved (rep 1 of every pair, then rep 2, ...), so only ratios within one run matter. A
# pair whose --reps transfers took less than --min-secs seconds in all (0.1-0.3 s transfers,
# where one repetition swings +-10%) goes on repeating, still interleaved, until they reach it
# or --max-reps (default 3 x --reps): its median rests on more samples. Each
# transferred file is compared with its source (cmp). A pair that fails or stalls (every external
# step is bounded by `timeout`) shows as a failure in the table, is not repeated, and the script
# goes on.
#
# Rows (--rows takes a comma list of these names):
#   512       download, blksize 512, lock-step (what PXE ROMs do)     file: --lockstep-size
#   1468      download, blksize 1468, lock-step                        file: --lockstep-size
#   8192      download, blksize 8192, lock-step                        file: --size
#   65464     download, blksize 65464, lock-step                       file: --size
#   1468x4    download, blksize 1468, windowsize 4 (UEFI's setting)    file: --size
#   1468x16   download, blksize 1468, windowsize 16                    file: --size
#   1468x64   download, blksize 1468, windowsize 64                    file: --size
#   65464x16  download, blksize 65464, windowsize 16                   file: --size
#   up65464   upload, blksize 65464, lock-step                         file: --size
#   conc200   200 simultaneous 1 MiB downloads from one load generator (every server)
#   storm512  boot storm: --storm-n (200) busybox processes started at once, each fetching
#             1 MiB at blksize 512, lock-step (every server)
#   storm1468 the same at blksize 1468
#   stormhpa  the same with tftp-hpa client processes (no options: 512, lock-step)
#   storm1000 1,000 simulated lock-step clients at once (tftpx-loadgen, every server)
#   Storm rows report per round the wall time (first start to last exit), the 50th/99th
#   percentile completion, server CPU and the server's peak RSS (VmHWM, reset before each
#   round; a forking server's children are not in it), and the spread between rounds.
# Servers: tftpx, tftpx-sp (tftpx --single-port: its ratio is to tftpx with the same client),
# tftpx-sh (tftpx --single-port --shared-socket: storm and load-generator rows only),
# tftpd-hpa, atftpd, dnsmasq, rs-tftpd, async-tftp.
# then, unless --no-scale, tftpx only: 1,000 simultaneous 1 MiB downloads, and 10,000 slow
# transfers (one ACK per 100 ms) held open while a probe download is timed against idle.
# --large adds a 4 GiB download and upload at blksize 512 against tftpx, sampling its RSS.
#
# Output: a markdown table on stdout and in bench/results/<UTC date>.md; raw samples in
# bench/results/<UTC date>.tsv. Needs root (apt, network namespace for dnsmasq's port 69).
# Working files live in /dev/shm (tmpfs) so disk writeback stays out of the numbers.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SIZE=100M
LOCKSTEP_SIZE=
REPS=3
MIN_SECS=1.5
MAX_REPS=
ROWS="512,1468,8192,65464,1468x4,1468x16,1468x64,65464x16,up65464,conc200,storm512,storm1468,stormhpa,storm1000"
STORM_N=200
INSTALL=1
SCALE=1
LARGE=0
TMO= # per transfer; default 5 s + 1 s per 3 MB (slower than ~3 MB/s counts as a stall)
SLOW_N=10000
CONC_N=1000
SLOW_DURATION=30s
while [ $# -gt 0 ]; do
    case "$1" in
    --size) SIZE=$2; shift ;;
    --lockstep-size) LOCKSTEP_SIZE=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --min-secs) MIN_SECS=$2; shift ;;
    --max-reps) MAX_REPS=$2; shift ;;
    --rows) ROWS=$2; shift ;;
    --quick) SIZE=20M; REPS=3; SLOW_N=2000; CONC_N=500; SLOW_DURATION=10s ;;
    --no-install) INSTALL=0 ;;
    --no-scale) SCALE=0 ;;
    --large) LARGE=1 ;;
    --timeout) TMO=$2; shift ;;
    --storm-n) STORM_N=$2; shift ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$MAX_REPS" ] || MAX_REPS=$((3 * REPS))
[ "$MAX_REPS" -ge "$REPS" ] || { echo "--max-reps ($MAX_REPS) must be at least --reps ($REPS)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "compare.sh: run as root (apt installs, network namespace)" >&2; exit 2; }

SIZE_B=$(numfmt --from=iec "$SIZE")
if [ -z "$LOCKSTEP_SIZE" ]; then LOCKSTEP_B=$((SIZE_B / 4)); else LOCKSTEP_B=$(numfmt --from=iec "$LOCKSTEP_SIZE"); fi
ulimit -Hn 65536 2>/dev/null; ulimit -Sn 65536 2>/dev/null || ulimit -Sn "$(ulimit -Hn)"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------- install and build
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
ATFTPD=/opt/tftpx-peers/atftpd/usr/sbin/atftpd
if [ "$INSTALL" = 1 ]; then
    log "installing peers (.ci/install-peers.sh) and bench tools"
    bash "$ROOT/.ci/install-peers.sh" >&2 || { echo "peer install failed" >&2; exit 1; }
    if ! dpkg-query -W -f='${Status}' time 2>/dev/null | grep -q 'install ok installed'; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null
    fi
    # rs-tftpd's client (tftpc) needs the crate's `client` feature; same pinned version.
    if [ ! -x "$CARGO_BIN/tftpc" ]; then
        cargo install --quiet --locked tftpd --version 1.0.0 --features client >&2
    fi
fi
for b in /usr/bin/time "$CARGO_BIN/tftpc" "$CARGO_BIN/tftpd" /usr/sbin/in.tftpd "$ATFTPD" /usr/sbin/dnsmasq \
    /usr/bin/tftp /usr/bin/atftp /usr/bin/curl /bin/busybox; do
    [ -x "$b" ] || { echo "missing $b (run without --no-install)" >&2; exit 1; }
done
log "building tftpx, the load generator and the async-tftp wrapper (release)"
(cd "$ROOT" && cargo build --release --quiet -p tftpx-cli -p tftpx-loadgen) || exit 1
(cd "$HERE/async-tftp-server" && cargo build --release --quiet) || exit 1
TFTPX=$ROOT/target/release/tftpx
LOADGEN=$ROOT/target/release/tftpx-loadgen
ASYNC_TFTP=$HERE/async-tftp-server/target/release/async-tftp-server

# ---------------------------------------------------------------- working area, cleanup
W=/dev/shm/tftpx-bench.$$
NS=tftpxbench$$
mkdir -p "$W/src" "$W/out" "$W/log"
declare -A SRV_PID SRV_PORT SRV_DIR SRV_NS FAILED SRV_METRICS PAIR_SECS
cleanup() {
    local s
    for s in "${!SRV_PID[@]}"; do kill "${SRV_PID[$s]}" 2>/dev/null; done
    for s in "${!SRV_PID[@]}"; do wait "${SRV_PID[$s]}" 2>/dev/null; done
    ip netns del "$NS" 2>/dev/null
    if [ -n "${CG_BASE:-}" ]; then
        for s in "${!SRV_CG[@]}"; do rmdir "${SRV_CG[$s]}" 2>/dev/null; done
        rmdir "$CG_BASE" 2>/dev/null
    fi
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "creating test files: $(numfmt --to=iec "$SIZE_B") and $(numfmt --to=iec "$LOCKSTEP_B") random, 1 MiB"
head -c "$SIZE_B" /dev/urandom >"$W/src/big.bin"
head -c "$LOCKSTEP_B" /dev/urandom >"$W/src/small.bin"
head -c 1048576 /dev/urandom >"$W/src/1m.bin"

free_port() { # [-t]: a TCP port (default UDP)
    local p proto=u
    [ "${1:-}" = -t ] && proto=t
    while :; do
        p=$((20000 + RANDOM % 40000))
        ss -Hl${proto}n "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
    done
}

# ---------------------------------------------------------------- servers
SERVERS=(tftpx tftpx-sp tftpx-sh tftpd-hpa atftpd dnsmasq rs-tftpd async-tftp)
CLIENTS=(tftpx tftp-hpa atftp curl busybox tftpc)

start_server() {
    local s=$1 port dir
    port=$(free_port)
    [ "$s" = dnsmasq ] && port=69
    dir=$W/srv-$s
    mkdir -p "$dir"
    chmod 777 "$dir"
    # Copies, not hard links: tftpx refuses to serve a file with several links.
    cp "$W/src/big.bin" "$W/src/small.bin" "$W/src/1m.bin" "$dir/"
    local out=$W/log/$s.log
    # tftpx servers serve their metrics and running transfers, saved when a transfer
    # against them fails (run_pair); nothing polls them otherwise.
    local mport mx=()
    case "$s" in tftpx*) mport=$(free_port -t); mx=(--metrics "127.0.0.1:$mport"); SRV_METRICS[$s]=$mport ;; esac
    case "$s" in
    # The load generator is one address: lift tftpx's per-client limits (32 transfers, 20
    # requests/s) as the peers have none.
    tftpx) "$TFTPX" serve "$dir" --listen "127.0.0.1:$port" --allow-create --user root --max-transfers 30000 \
        --max-transfers-per-client 0 --rate-limit 0 "${mx[@]}" -q >"$out" 2>&1 & ;;
    # The same in single-port mode (--single-port): every transfer on the listen port.
    tftpx-sp) "$TFTPX" serve "$dir" --listen "127.0.0.1:$port" --allow-create --user root --max-transfers 30000 \
        --max-transfers-per-client 0 --rate-limit 0 --single-port "${mx[@]}" -q >"$out" 2>&1 & ;;
    # Single-port mode on the shared listen socket (--shared-socket): the listener runs the
    # downloads itself, batched across transfers. Storm and load-generator rows only.
    tftpx-sh) "$TFTPX" serve "$dir" --listen "127.0.0.1:$port" --allow-create --user root --max-transfers 30000 \
        --max-transfers-per-client 0 --rate-limit 0 --single-port --shared-socket "${mx[@]}" -q >"$out" 2>&1 & ;;
    tftpd-hpa) /usr/sbin/in.tftpd -L -s -c -p -u root -a "127.0.0.1:$port" "$dir" >"$out" 2>&1 & ;;
    atftpd) "$ATFTPD" --daemon --no-fork --port "$port" --bind-address 127.0.0.1 --user root --group root \
        --maxthread 1100 --logfile /dev/null "$dir" >"$out" 2>&1 & ;;
    dnsmasq)
        ip netns add "$NS" && ip netns exec "$NS" ip link set lo up || return 1
        SRV_NS[$s]=$NS
        ip netns exec "$NS" /usr/sbin/dnsmasq -k --conf-file=/dev/null --port=0 --listen-address=127.0.0.1 \
            --bind-interfaces --enable-tftp --tftp-root="$dir" --tftp-max=1100 --user=root \
            --log-facility=/dev/null >"$out" 2>&1 &
        ;;
    rs-tftpd) "$CARGO_BIN/tftpd" -i 127.0.0.1 -p "$port" -d "$dir" -q -q >"$out" 2>&1 & ;;
    async-tftp) "$ASYNC_TFTP" "127.0.0.1:$port" "$dir" >"$out" 2>&1 & ;;
    esac
    SRV_PID[$s]=$!
    cg_join "$s" "$!"
    SRV_PORT[$s]=$port
    SRV_DIR[$s]=$dir
    sleep 0.3
    kill -0 "${SRV_PID[$s]}" 2>/dev/null || { log "server $s did not start: $(tail -3 "$out")"; unset "SRV_PID[$s]"; return 1; }
}

# CPU time of a server and every process it forks (tftpd-hpa forks per transfer and ignores
# SIGCHLD, so its children's time never reaches its cutime): each server runs in a cgroup of its
# own (v2, or v1 cpuacct), removed at exit. Without cgroups, /proc/PID/stat of the server only.
CG_BASE=
CG_KIND=
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG_KIND=v2; CG_BASE=/sys/fs/cgroup/tftpx-bench.$$
elif [ -d /sys/fs/cgroup/cpuacct ]; then
    CG_KIND=v1; CG_BASE=/sys/fs/cgroup/cpuacct/tftpx-bench.$$
fi
if [ -n "$CG_BASE" ] && ! mkdir -p "$CG_BASE" 2>/dev/null; then CG_BASE=; fi
declare -A SRV_CG
cg_join() { # server pid
    [ -n "$CG_BASE" ] || return 0
    mkdir -p "$CG_BASE/$1" && echo "$2" >"$CG_BASE/$1/cgroup.procs" 2>/dev/null && SRV_CG[$1]=$CG_BASE/$1
}
# CPU nanoseconds of server $1 so far
server_ns() {
    local cg=${SRV_CG[$1]:-} f
    if [ -n "$cg" ]; then
        if [ "$CG_KIND" = v2 ]; then awk '/^usage_usec/ { printf "%d", $2 * 1000 }' "$cg/cpu.stat"
        else cat "$cg/cpuacct.usage"; fi
        return
    fi
    read -ra f <"/proc/${SRV_PID[$1]}/stat" 2>/dev/null || { echo 0; return; }
    echo $(((f[13] + f[14] + f[15] + f[16]) * 1000000000 / TICK))
}
TICK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- settings
# setting -> "direction blksize windowsize file"
declare -A SETTING=(
    [512]="get 512 1 small.bin"
    [1468]="get 1468 1 small.bin"
    [8192]="get 8192 1 big.bin"
    [65464]="get 65464 1 big.bin"
    [1468x4]="get 1468 4 big.bin"
    [1468x16]="get 1468 16 big.bin"
    [1468x64]="get 1468 64 big.bin"
    [65464x16]="get 65464 16 big.bin"
    [up65464]="put 65464 1 big.bin"
)
declare -A ROW_TITLE=(
    [512]="download, blksize 512, lock-step"
    [1468]="download, blksize 1468, lock-step"
    [8192]="download, blksize 8192, lock-step"
    [65464]="download, blksize 65464, lock-step"
    [1468x4]="download, blksize 1468, windowsize 4"
    [1468x16]="download, blksize 1468, windowsize 16"
    [1468x64]="download, blksize 1468, windowsize 64"
    [65464x16]="download, blksize 65464, windowsize 16"
    [up65464]="upload, blksize 65464, lock-step"
)

server_supports() { # server dir blksize window
    local s=$1 d=$2 w=$4
    [ "$s" = tftpx-sh ] && return 1                   # storm and load-generator rows only
    [ "$d" = put ] && [ "$s" = dnsmasq ] && return 1 # read-only
    if [ "$w" -gt 1 ]; then
        case "$s" in tftpx | tftpx-sp | atftpd | rs-tftpd) return 0 ;; *) return 1 ;; esac # RFC 7440
    fi
    return 0
}
client_supports() { # client dir blksize window
    local c=$1 b=$3 w=$4
    [ "$c" = tftp-hpa ] && [ "$b" != 512 ] && return 1 # sends no options
    if [ "$w" -gt 1 ]; then
        case "$c" in tftpx | atftp | tftpc) return 0 ;; *) return 1 ;; esac
    fi
    return 0
}

# The client command line for one transfer, into the array CMD.
client_cmd() { # client dir port remote local blksize window
    local c=$1 d=$2 port=$3 remote=$4 local=$5 b=$6 w=$7
    local wopt=()
    case "$c" in
    tftpx)
        [ "$w" -gt 1 ] && wopt=(--windowsize "$w")
        if [ "$d" = get ]; then
            CMD=("$TFTPX" get "127.0.0.1:$port" "$remote" -o "$local" --blksize "$b" "${wopt[@]}" --dally 0 -q)
        else
            CMD=("$TFTPX" put "127.0.0.1:$port" "$local" "$remote" --blksize "$b" "${wopt[@]}" -q)
        fi ;;
    tftp-hpa)
        if [ "$d" = get ]; then CMD=(/usr/bin/tftp -m binary 127.0.0.1 "$port" -c get "$remote" "$local")
        else CMD=(/usr/bin/tftp -m binary 127.0.0.1 "$port" -c put "$local" "$remote"); fi ;;
    atftp)
        local o=()
        [ "$b" != 512 ] && o+=(--option "blksize $b")
        [ "$w" -gt 1 ] && o+=(--option "windowsize $w")
        if [ "$d" = get ]; then CMD=(/usr/bin/atftp -g -r "$remote" -l "$local" "${o[@]}" 127.0.0.1 "$port")
        else CMD=(/usr/bin/atftp -p -l "$local" -r "$remote" "${o[@]}" 127.0.0.1 "$port"); fi ;;
    curl)
        if [ "$d" = get ]; then CMD=(/usr/bin/curl -s --max-time "$tmo" --tftp-blksize "$b" -o "$local" "tftp://127.0.0.1:$port/$remote")
        else CMD=(/usr/bin/curl -s --max-time "$tmo" --tftp-blksize "$b" -T "$local" "tftp://127.0.0.1:$port/$remote"); fi ;;
    busybox)
        if [ "$d" = get ]; then CMD=(/bin/busybox tftp -g -b "$b" -r "$remote" -l "$local" 127.0.0.1 "$port")
        else CMD=(/bin/busybox tftp -p -b "$b" -l "$local" -r "$remote" 127.0.0.1 "$port"); fi ;;
    tftpc)
        # downloads land in -rd DIR under the remote name
        if [ "$d" = get ]; then CMD=("$CARGO_BIN/tftpc" "$remote" -p "$port" -b "$b" -w "$w" -rd "$(dirname "$local")" -q -q)
        else CMD=("$CARGO_BIN/tftpc" -u "$local" "$remote" -p "$port" -b "$b" -w "$w" -q -q); fi ;;
    esac
}

RESULTS_DIR=$HERE/results
mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y-%m-%dT%H%MZ)
TSV=$RESULTS_DIR/$STAMP.tsv
MD=$RESULTS_DIR/$STAMP.md
printf 'setting\tserver\tclient\trep\tok\tbytes\tsecs\tclient_cpu\tserver_cpu\n' >"$TSV"

# A tftpx server's state right after a transfer against it failed: the client's output, the
# transfers it is running (/transfers: peer, file, block, retransmissions, age) and its
# counters (/metrics), to bench/results/<stamp>-fail-<row>-<server>-<client>-<rep>.txt.
save_server_state() { # setting server client rep rc secs
    local st=$1 s=$2 c=$3 rep=$4 rc=$5 secs=$6 m=${SRV_METRICS[$2]}
    local dump=$RESULTS_DIR/$STAMP-fail-$st-$s-$c-$rep.txt
    {
        echo "# $st: $s <- $c, rep $rep: exit $rc after ${secs}s, $(date -u +%H:%M:%S.%N) UTC"
        echo "## client output (last 2000 bytes)"
        tail -c 2000 "$W/log/client.out"
        echo "## GET /transfers"
        curl -s --max-time 2 "http://127.0.0.1:$m/transfers"
        echo
        echo "## GET /metrics"
        curl -s --max-time 2 "http://127.0.0.1:$m/metrics"
    } >"$dump" 2>&1
    log "$st $s <- $c rep $rep: the server's transfers and counters saved to $dump"
}

# One transfer; appends a line to the TSV.
run_pair() { # setting server client rep
    local st=$1 s=$2 c=$3 rep=$4
    local d b w f
    read -r d b w f <<<"${SETTING[$st]}"
    local port=${SRV_PORT[$s]} pid=${SRV_PID[$s]} dir=${SRV_DIR[$s]}
    local bytes
    bytes=$(stat -c %s "$W/src/$f")
    rm -rf "$W/out" && mkdir -p "$W/out"
    local remote local target
    if [ "$d" = get ]; then
        remote=$f
        local=$W/out/$f
        target=$local
    else
        remote=up-$c-$rep.bin
        local=$W/src/$f
        target=$dir/$remote
        rm -f "$target"
    fi
    local tmo=$TMO
    [ -n "$tmo" ] || tmo=$((5 + bytes / 3000000))
    client_cmd "$c" "$d" "$port" "$remote" "$local" "$b" "$w"
    local pre=()
    [ -n "${SRV_NS[$s]:-}" ] && pre=(ip netns exec "${SRV_NS[$s]}")
    local t0 t1 k0 k1 rc ok=0 ccpu=0
    k0=$(server_ns "$s")
    t0=$(date +%s%N)
    timeout -k 2 "$tmo" /usr/bin/time -f '%U %S' -o "$W/time.txt" "${pre[@]}" "${CMD[@]}" \
        </dev/null >"$W/log/client.out" 2>&1
    rc=$?
    t1=$(date +%s%N)
    if [ "$d" = put ]; then # the server may still be renaming the upload into place
        local i
        for i in $(seq 40); do
            [ "$(stat -c %s "$target" 2>/dev/null)" = "$bytes" ] && break
            sleep 0.05
        done
    fi
    sleep 0.05 # let a forking server's child exit
    k1=$(server_ns "$s")
    if [ -f "$target" ] && cmp -s "$target" "$W/src/$f"; then ok=1; fi
    [ "$rc" = 0 ] || [ "$c" = tftp-hpa ] || ok=0 # tftp-hpa exits 0 even on errors: file checked
    if [ -s "$W/time.txt" ]; then
        ccpu=$(awk 'END { printf "%.3f", $(NF-1) + $NF }' "$W/time.txt")
    fi
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", (b - a) / 1e9 }')
    local scpu
    scpu=$(awk -v a="$k0" -v b="$k1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$st" "$s" "$c" "$rep" "$ok" "$bytes" "$secs" "$ccpu" "$scpu" >>"$TSV"
    [ "$ok" = 1 ] || FAILED["$st $s $c"]=1
    PAIR_SECS["$st $s $c"]=$(awk -v a="${PAIR_SECS["$st $s $c"]:-0}" -v b="$secs" 'BEGIN { print a + b }')
    if [ "$ok" = 1 ]; then
        log "$st $s <- $c rep $rep: $(awk -v n="$bytes" -v t="$secs" 'BEGIN { printf "%.1f MB/s", n / t / 1e6 }') (${secs}s, client ${ccpu}s, server ${scpu}s CPU)"
    else
        log "$st $s <- $c rep $rep: FAILED (exit $rc after ${secs}s) $(tail -c 200 "$W/log/client.out" | tr '\n' ' ')"
        [ -n "${SRV_METRICS[$s]:-}" ] && save_server_state "$st" "$s" "$c" "$rep" "$rc" "$secs"
    fi
    [ "$d" = put ] && rm -f "$target"
    rm -rf "$W/out"
}

# ---------------------------------------------------------------- run
log "starting servers"
for s in "${SERVERS[@]}"; do start_server "$s"; done

MACHINE="$(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date -u '+%Y-%m-%d %H:%M UTC')

IFS=, read -ra ROW_LIST <<<"$ROWS"
for st in "${ROW_LIST[@]}"; do
    [ -n "${SETTING[$st]:-}" ] || continue
    read -r d b w f <<<"${SETTING[$st]}"
    pairs=()
    for s in "${SERVERS[@]}"; do
        [ -n "${SRV_PID[$s]:-}" ] || continue
        server_supports "$s" "$d" "$b" "$w" || continue
        for c in "${CLIENTS[@]}"; do
            client_supports "$c" "$d" "$b" "$w" && pairs+=("$s $c")
        done
    done
    log "row $st: ${#pairs[@]} pairs x $REPS reps (up to $MAX_REPS for pairs under ${MIN_SECS}s in all)"
    for rep in $(seq "$MAX_REPS"); do
        for p in "${pairs[@]}"; do
            [ -n "${FAILED["$st $p"]:-}" ] && continue # failed or stalled once: not repeated
            # Past --reps, only the pairs whose transfers are still under --min-secs in all.
            if [ "$rep" -gt "$REPS" ] && awk -v t="${PAIR_SECS["$st $p"]:-0}" -v m="$MIN_SECS" 'BEGIN { exit !(t >= m) }'; then
                continue
            fi
            run_pair "$st" ${p} "$rep"
        done
    done
done

# ---------------------------------------------------------------- load generator rows
SCALE_TSV=$W/scale.tsv
: >"$SCALE_TSV"
loadgen_row() { # label server loadgen-args...
    local label=$1 s=$2
    shift 2
    local pre=()
    [ -n "${SRV_NS[$s]:-}" ] && pre=(ip netns exec "${SRV_NS[$s]}")
    local k0 k1 out
    k0=$(server_ns "$s")
    out=$(timeout -k 2 600 "${pre[@]}" "$LOADGEN" --server "127.0.0.1:${SRV_PORT[$s]}" --server-pid "${SRV_PID[$s]}" \
        --tsv "$@" 2>"$W/log/loadgen.err")
    local rc=$?
    sleep 0.1
    k1=$(server_ns "$s")
    [ -n "$out" ] || out="failed (exit $rc): $(tail -c 300 "$W/log/loadgen.err" | tr '\n' ' ')"
    printf '%s\t%s\t%s\t%s\n' "$label" "$s" "$(awk -v a="$k0" -v b="$k1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')" "$out" >>"$SCALE_TSV"
    log "$label $s: $out"
}
if [[ ",$ROWS," == *",conc200,"* ]]; then
    for rep in $(seq "$REPS"); do
        for s in "${SERVERS[@]}"; do
            [ -n "${SRV_PID[$s]:-}" ] || continue
            loadgen_row "conc200" "$s" --concurrent 200 --file 1m.bin --verify "$W/src/1m.bin"
        done
    done
fi
if [ "$SCALE" = 1 ] && [ -n "${SRV_PID[tftpx]:-}" ]; then
    loadgen_row "conc$CONC_N" tftpx --concurrent "$CONC_N" --file 1m.bin --verify "$W/src/1m.bin"
    loadgen_row "slow$SLOW_N" tftpx --slow "$SLOW_N" --ack-interval 100ms --duration "$SLOW_DURATION" \
        --file 1m.bin --probe small.bin --verify-probe "$W/src/small.bin"
fi

# ---------------------------------------------------------------- boot storms
STORM_TSV=$W/storm.tsv
: >"$STORM_TSV"
# STORM_N real client processes started at once, each fetching 1m.bin lock-step; one TSV line
# per round: label server rep ok n wall p50 p99 server_cpu peak_rss_mib.
storm_row() { # label server client blksize rep
    local label=$1 s=$2 c=$3 b=$4 rep=$5 n=$STORM_N
    local port=${SRV_PORT[$s]} pid=${SRV_PID[$s]} pre=() pids=() i
    [ -n "${SRV_NS[$s]:-}" ] && pre=(ip netns exec "${SRV_NS[$s]}")
    rm -rf "$W/storm" && mkdir -p "$W/storm"
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null # resets the peak RSS (VmHWM)
    local k0 k1 t0
    k0=$(server_ns "$s")
    t0=$(date +%s%N)
    for i in $(seq "$n"); do
        client_cmd "$c" get "$port" 1m.bin "$W/storm/$i.bin" "$b" 1
        (
            timeout -k 2 120 "${pre[@]}" "${CMD[@]}" </dev/null >/dev/null 2>&1
            echo "$? $(date +%s%N)" >"$W/storm/$i.end"
        ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    sleep 0.05 # let a forking server's children exit
    k1=$(server_ns "$s")
    local hwm ok=0 rc end stats cpu
    hwm=$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status" 2>/dev/null)
    : >"$W/storm/times"
    for i in $(seq "$n"); do
        read -r rc end <"$W/storm/$i.end" 2>/dev/null || continue
        if { [ "$rc" = 0 ] || [ "$c" = tftp-hpa ]; } && cmp -s "$W/storm/$i.bin" "$W/src/1m.bin"; then
            ok=$((ok + 1))
        fi
        echo $(((end - t0) / 1000000)) >>"$W/storm/times" # ms
    done
    stats=$(sort -n "$W/storm/times" | awk '{ a[NR] = $1 }
        END { p50 = int((NR + 1) / 2); p99 = int(NR * 0.99 + 0.999); if (p99 < 1) p99 = 1
              printf "%.3f\t%.3f\t%.3f", a[NR] / 1000, a[p50] / 1000, a[p99] / 1000 }')
    cpu=$(awk -v a="$k0" -v b="$k1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$s" "$rep" "$ok" "$n" "$stats" "$cpu" "${hwm:-?}" >>"$STORM_TSV"
    log "$label $s rep $rep: $ok/$n ok, wall/p50/p99 $(tr '\t' / <<<"$stats") s, server ${cpu}s CPU, peak RSS ${hwm:-?} MiB"
    rm -rf "$W/storm"
}
declare -A STORM_SETTING=([storm512]="busybox 512" [storm1468]="busybox 1468" [stormhpa]="tftp-hpa 512")
for st in "${ROW_LIST[@]}"; do
    [ -n "${STORM_SETTING[$st]:-}" ] || continue
    read -r c b <<<"${STORM_SETTING[$st]}"
    log "row $st: $STORM_N $c processes at once, blksize $b, x $REPS rounds per server"
    for rep in $(seq "$REPS"); do
        for s in "${SERVERS[@]}"; do
            [ -n "${SRV_PID[$s]:-}" ] || continue
            storm_row "$st" "$s" "$c" "$b" "$rep"
        done
    done
done
if [[ ",$ROWS," == *",storm1000,"* ]]; then
    for rep in $(seq "$REPS"); do
        for s in "${SERVERS[@]}"; do
            [ -n "${SRV_PID[$s]:-}" ] || continue
            loadgen_row "storm1000" "$s" --concurrent 1000 --file 1m.bin --verify "$W/src/1m.bin"
        done
    done
fi

# ---------------------------------------------------------------- 4 GiB at blksize 512
LARGE_OUT=""
if [ "$LARGE" = 1 ] && [ -n "${SRV_PID[tftpx]:-}" ]; then
    pid=${SRV_PID[tftpx]}
    dir=${SRV_DIR[tftpx]}
    truncate -s 4G "$W/src/4g.bin"
    mv "$W/src/4g.bin" "$dir/4g.bin" && ln -s "$dir/4g.bin" "$W/src/4g.bin"
    sample_rss() { # pid -> min/max VmRSS in kB, every second, until killed; written to $2
        local lo=999999999 hi=0 r
        while kill -0 "$1" 2>/dev/null; do
            r=$(awk '/VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null)
            if [ -n "$r" ]; then [ "$r" -lt "$lo" ] && lo=$r; [ "$r" -gt "$hi" ] && hi=$r; echo "$lo $hi" >"$2"; fi
            sleep 1
        done
    }
    for d in get put; do
        sample_rss "$pid" "$W/rss.txt" &
        sampler=$!
        t0=$(date +%s%N)
        if [ "$d" = get ]; then
            timeout 3600 "$TFTPX" get "127.0.0.1:${SRV_PORT[tftpx]}" 4g.bin -o "$W/4g.out" --blksize 512 --dally 0 -q
            rc=$?
            target=$W/4g.out
        else
            timeout 3600 "$TFTPX" put "127.0.0.1:${SRV_PORT[tftpx]}" "$W/src/4g.bin" up4g.bin --blksize 512 -q
            rc=$?
            target=$dir/up4g.bin
            sleep 1
        fi
        t1=$(date +%s%N)
        kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
        ok=FAILED
        [ "$rc" = 0 ] && cmp -s "$target" "$W/src/4g.bin" && ok=ok
        read -r lo hi <"$W/rss.txt"
        LARGE_OUT+="| 4 GiB $d, blksize 512 (65,536 blocks wrap 128 times) | $ok | $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f s, %.1f MB/s", (b - a) / 1e9, 4294967296 / ((b - a) / 1e9) / 1e6 }') | server RSS $((lo / 1024))-$((hi / 1024)) MiB |"$'\n'
        log "4 GiB $d: $ok"
        rm -f "$target"
    done
fi

# ---------------------------------------------------------------- report
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
{
    echo "### tftpx benchmark, $START"
    echo
    echo "Machine: $MACHINE. Load average before / after: $LOAD_BEFORE / $LOAD_AFTER."
    echo "Files: $(numfmt --to=iec "$SIZE_B") (8192 and 65464 rows, windowed, upload), $(numfmt --to=iec "$LOCKSTEP_B") (512 and 1468 lock-step rows); $REPS interleaved repetitions, more (up to $MAX_REPS) for a pair whose transfers took under $MIN_SECS s in all (ok column: how many); loopback; tmpfs."
    echo "MB/s = 10^6 bytes/s of wall time (client start to exit). CPU = median seconds per transfer, user+sys: the client's from /usr/bin/time, the server's from its cgroup ($([ -n "$CG_BASE" ] && echo "$CG_KIND, forked children included" || echo "none: /proc stat only")). A pair that failed once is not repeated (ok column)."
    echo "ratio: for a tftpx server line, its median / the best peer server's median with the same client; for a tftpx client line, its median / the best peer client's against the same server; for tftpx-tftpx, / the best peer pair; for tftpx-sp (single-port mode), / tftpx's (multi-port) median with the same client."
    echo
    awk -F'\t' -v titles="$(for k in "${!ROW_TITLE[@]}"; do printf '%s=%s;' "$k" "${ROW_TITLE[$k]}"; done)" -v order="$ROWS" -f "$HERE/report.awk" "$TSV"
    if [ -s "$SCALE_TSV" ]; then
        echo
        echo "| load generator | server | result | server CPU s |"
        echo "| --- | --- | --- | --- |"
        awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $4, $3 }' "$SCALE_TSV"
    fi
    if [ -s "$STORM_TSV" ]; then
        echo
        echo "Boot storms: $STORM_N client processes started at once, each fetching 1 MiB lock-step; $REPS rounds per server, interleaved. wall = first start to last exit; p50/p99 = completion percentiles; medians over rounds, (min-max) of wall between rounds. speed = the best peer server's median wall / this server's (tftpx, tftpx-sp and tftpx-sh lines; > 1 is faster). Peak RSS: VmHWM of the server process (tftpd-hpa forks per transfer: its children are not counted)."
        echo
        echo "| storm | server | ok | wall s (min-max) | p50 s | p99 s | server CPU s | peak RSS MiB | speed |"
        echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        awk -F'\t' '
            function med(list,   n, v, i, j, t) {
                n = split(list, v, " ")
                for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
                return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
            }
            function lo(list,   n, v, i, m) { n = split(list, v, " "); m = v[1]; for (i = 2; i <= n; i++) if (v[i] + 0 < m + 0) m = v[i]; return m }
            function hi(list,   n, v, i, m) { n = split(list, v, " "); m = v[1]; for (i = 2; i <= n; i++) if (v[i] + 0 > m + 0) m = v[i]; return m }
            {
                k = $1 SUBSEP $2
                if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
                ok[k] += $4; n[k] += $5
                wall[k] = wall[k] " " $6; p50[k] = p50[k] " " $7; p99[k] = p99[k] " " $8
                cpu[k] = cpu[k] " " $9; rss[k] = rss[k] " " $10
            }
            END {
                for (i = 1; i <= nk; i++) {
                    split(order[i], a, SUBSEP)
                    m = med(wall[order[i]])
                    if (a[2] !~ /^tftpx/ && ok[order[i]] == n[order[i]])
                        if (!(a[1] in best) || m < best[a[1]]) best[a[1]] = m
                }
                for (i = 1; i <= nk; i++) {
                    k = order[i]; split(k, a, SUBSEP)
                    m = med(wall[k]); speed = ""
                    if (a[2] ~ /^tftpx/ && (a[1] in best) && m > 0) speed = sprintf("%.2fx", best[a[1]] / m)
                    printf "| %s | %s | %d/%d | %.2f (%.2f-%.2f) | %.2f | %.2f | %.2f | %s | %s |\n", a[1], a[2], ok[k], n[k], m, lo(wall[k]), hi(wall[k]), med(p50[k]), med(p99[k]), med(cpu[k]), med(rss[k]), speed
                }
            }' "$STORM_TSV"
    fi
    if [ -n "$LARGE_OUT" ]; then
        echo
        echo "| large file | result | time | memory |"
        echo "| --- | --- | --- | --- |"
        printf '%s' "$LARGE_OUT"
    fi
} >"$MD"
cp "$SCALE_TSV" "${TSV%.tsv}-scale.tsv" 2>/dev/null
[ -s "$STORM_TSV" ] && cp "$STORM_TSV" "${TSV%.tsv}-storm.tsv"
cat "$MD"
log "written: $MD (raw samples: $TSV)"
