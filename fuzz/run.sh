#!/usr/bin/env bash
# Runs every fuzz target in turn for a bounded time, growing fuzz/corpus/<target>, and
# prints per-target executions and time. Exits non-zero when a target finds a crash (the
# input is left in fuzz/artifacts/<target>/).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     # default 600 s, all targets
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). On a stable toolchain it runs with
# RUSTC_BOOTSTRAP=1 for the sanitizer flags. One fuzzer process at a time (-jobs is not used).
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(decode netascii negotiate sender receiver resolve)
fi

max_len() {
    case "$1" in
        sender | receiver) echo 70000 ;;
        resolve) echo 1100 ;;
        *) echo 4096 ;;
    esac
}

export RUSTC_BOOTSTRAP=1
cargo fuzz build
logdir="${FUZZ_LOG_DIR:-target/fuzz-logs}"
mkdir -p "$logdir"

status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="$logdir/$t.log"
    echo "== $t: ${secs}s (log: fuzz/$log)"
    start=$(date +%s)
    set +e
    cargo fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
        -timeout=60 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    elapsed=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    execs="${execs:-?}"
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    rate="${rate:-?}"
    files=$(find "corpus/$t" -maxdepth 1 -type f | wc -l)
    if [ "$rc" -ne 0 ]; then
        status=1
        result="FINDING (exit $rc, see fuzz/$log and fuzz/artifacts/$t/)"
        grep -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | head -5 || true
    else
        result="ok"
    fi
    line="$t: ${elapsed}s, $execs executions, $rate exec/s, corpus $files files: $result"
    echo "$line"
    summary+=("$line")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
