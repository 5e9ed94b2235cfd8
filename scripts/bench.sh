#!/usr/bin/env bash
# Benchmarks: trendflow against its physical limits and its peers, in one run (see bench/README.md).
#   scripts/bench.sh           release build, 1.4M generated rows, median of 3 runs, with the peers (~20 min after the build)
#   scripts/bench.sh --smoke   debug build, 50k rows, one run, no peers: checks every figure is produced (CI)
# Extra arguments go to bench/run.py (e.g. --rows 700000 --repeat 5).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

profile=release
args=()
if [ "${1:-}" = "--smoke" ]; then
    shift
    profile=debug
    args=(--smoke --rows 50000 --stream-rows 20000 --repeat 1 --latency-seconds 2 --results "${CARGO_TARGET_DIR:-target}/bench-smoke")
else
    # The peers (figures 3 and 4) in a venv of their own: their dependencies are large
    # and conflict with the test venv's. First, since ensure_venv sets $venv and
    # TRENDFLOW_PYTHON, which the test venv's call below then sets for good.
    TRENDFLOW_VENV="${TRENDFLOW_PEERS_VENV:-$HOME/.cache/trendflow/bench-peers-venv}" ensure_venv bench/requirements-peers.txt
    args=(--peers-python "$venv/bin/python")
fi
ensure_venv tests/python/requirements.txt bench/requirements.txt
ensure_kafka

echo "== building trendflow and trendflow-bench ($profile)"
if [ "$profile" = release ]; then
    cargo build --locked --release -p trendflow -p trendflow-bench
else
    # Every target of the workspace: the dependencies' features then match what
    # `cargo test --workspace` built, so a smoke run after the tests rebuilds nothing.
    cargo build --locked --workspace --all-targets
fi
target_dir="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
"$venv/bin/python" bench/run.py --bin-dir "$target_dir/$profile" "${args[@]}" "$@"
