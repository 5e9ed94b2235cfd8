#!/usr/bin/env bash
# Fuzzes the code hostile input reaches first, with libFuzzer through cargo fuzz:
# record decoding (JSON and CSV, as Kafka messages and file lines) and the ingest
# API's body splitting. A crash, a failed invariant (every record accepted or
# rejected once) or more than 2 GB of memory fails the run; libFuzzer then prints
# the input, saved under fuzz/artifacts/, to reproduce with `cargo fuzz run TARGET FILE`.
#
# Usage: scripts/fuzz.sh [SECONDS per target, default 300] [cargo fuzz build options]
# By default the targets are optimized and built with AddressSanitizer (a long local
# run: `scripts/fuzz.sh 3600`). CI runs `scripts/fuzz.sh 30 --sanitizer none`,
# which builds faster and still catches panics, failed invariants and memory
# blow-ups (not out-of-bounds reads in unsafe code, which need the sanitizer).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
seconds="${1:-300}"
shift || true
ensure_cargo_fuzz

# Sanitizer flags are nightly-only options; the stable compiler accepts them
# with RUSTC_BOOTSTRAP, so no second toolchain is needed.
export RUSTC_BOOTSTRAP=1
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
for target in decode_records ingest_body; do
    # New inputs go to a corpus outside the checkout; the committed seeds stay as they are.
    corpus="$target_dir/corpus/$target"
    mkdir -p "$corpus"
    echo "== fuzzing $target for ${seconds}s"
    log="$target_dir/$target.log"
    if ! cargo fuzz run --fuzz-dir fuzz --target-dir "$target_dir" "$@" "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "error: fuzzing $target failed; the input is under fuzz/artifacts/$target/ (full log: $log)" >&2
        exit 1
    fi
    { grep -E "^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added)" "$log" || true; } | tr '\n' ' '
    echo
done
