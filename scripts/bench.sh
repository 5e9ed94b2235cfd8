#!/usr/bin/env bash
# Benchmarks: trendflow against its physical limits and its peers, in one run (see bench/README.md).
#   scripts/bench.sh           release build, 1.4M generated rows, median of 3 runs (~15 min after the build)
#   scripts/bench.sh --smoke   debug build, 50k rows, one run: checks every figure is produced (CI)
# Extra arguments go to bench/run.py (e.g. --rows 700000 --repeat 5).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

profile=release
args=()
if [ "${1:-}" = "--smoke" ]; then
    shift
    profile=debug
    args=(--rows 50000 --stream-rows 20000 --repeat 1 --latency-seconds 2 --results "${CARGO_TARGET_DIR:-target}/bench-smoke")
fi
ensure_venv tests/python/requirements.txt bench/requirements.txt
ensure_tansu

echo "== building trendflow and trendflow-bench ($profile)"
if [ "$profile" = release ]; then
    cargo build --locked --release -p trendflow -p trendflow-bench
else
    cargo build --locked -p trendflow -p trendflow-bench
fi
target_dir="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
"$venv/bin/python" bench/run.py --bin-dir "$target_dir/$profile" --tansu "$TANSU_BIN" "${args[@]}" "$@"
