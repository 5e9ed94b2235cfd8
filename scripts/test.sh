#!/usr/bin/env bash
# Runs every test of trendflow: Rust unit, integration (real Kafka-protocol broker, real
# MongoDB-protocol server) and doc tests, then the Python client tests (ADBC,
# pyarrow.flight, SQLAlchemy), the status endpoint, the Streamlit dashboard (AppTest and
# headless Chromium via Playwright) and the compose file, against real `trendflow` processes.
# Installs what the tests need when it is missing. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup.sh
if [ ! -d ../shared/data ]; then
    echo "error: ../shared/data (the real sample used by the tests) is missing beside this checkout" >&2
    exit 1
fi

echo "== Python packages for the client, dashboard and browser tests"
ensure_venv tests/python/requirements.txt bench/requirements.txt
echo "== Chromium for the browser test (Debian package)"
ensure_chromium
echo "== Kafka-protocol broker for the Kafka tests (tansu)"
ensure_tansu

echo "== cargo test (workspace)"
cargo test --workspace --locked "$@"

echo "== Flight SQL client, status, dashboard and browser tests (pytest)"
# The browser test's screenshot lands here (a CI artifact).
export TRENDFLOW_ARTIFACTS="${TRENDFLOW_ARTIFACTS:-$PWD/target/artifacts}"
target_dir="${CARGO_TARGET_DIR:-target}"
TRENDFLOW_BIN="$(cd "$target_dir" && pwd)/debug/trendflow" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python

echo "== benchmark harness smoke run (every figure produced; no time is asserted)"
scripts/bench.sh --smoke
