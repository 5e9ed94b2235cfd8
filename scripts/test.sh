#!/usr/bin/env bash
# Runs every test of trendflow: Rust unit, integration (Apache Kafka brokers, real
# MongoDB-protocol server) and doc tests; the fault, hostile-input and load tests; a short
# fuzzing run; then the Python client tests (ADBC, pyarrow.flight, SQLAlchemy, 50 concurrent
# clients), the status endpoint, the Streamlit dashboard (AppTest and headless Chromium via
# Playwright) and the compose file, against real `trendflow` processes; then the benchmark
# smoke run, and prints the reliability figures. Installs what the tests need when it is missing.
# Usage: scripts/test.sh [cargo options, e.g. --jobs 1]  (no test-name filters: the steps differ)
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup.sh
if [ ! -d ../shared/data ]; then
    echo "error: ../shared/data (the real sample used by the tests) is missing beside this checkout" >&2
    exit 1
fi

echo "== Python packages for the client, dashboard and browser tests"
ensure_venv tests/python/requirements.txt bench/requirements.txt
echo "== FerretDB, the second MongoDB-protocol server of the MongoDB tests (Go module proxy)"
ensure_ferretdb
echo "== Chromium for the browser test (Debian package)"
ensure_chromium
echo "== Flight SQL JDBC driver for the JDBC client test (Maven Central)"
ensure_jdbc_driver
echo "== Apache Kafka for the Kafka tests (Maven Central)"
ensure_kafka

# Screenshots and the reliability figures land here (CI artifacts).
export TRENDFLOW_ARTIFACTS="${TRENDFLOW_ARTIFACTS:-$PWD/target/artifacts}"
mkdir -p "$TRENDFLOW_ARTIFACTS"
rm -f "$TRENDFLOW_ARTIFACTS/reliability.ndjson"

echo "== style: cargo fmt --check, clippy -D warnings"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test (workspace; the heavy fault and load tests come next, alone)"
cargo test --workspace --locked "$@" -- --skip reliability::

echo "== fault, hostile-input and load tests (one at a time)"
cargo test --locked "$@" --test it reliability:: -- --test-threads=1

echo "== fuzzing the decoders and the ingest body parser (30 s per target)"
scripts/fuzz.sh 30 --sanitizer none

echo "== Flight SQL client, status, dashboard and browser tests (pytest)"
target_dir="${CARGO_TARGET_DIR:-target}"
TRENDFLOW_BIN="$(cd "$target_dir" && pwd)/debug/trendflow" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python

echo "== benchmark harness smoke run (every figure produced; no time is asserted)"
scripts/bench.sh --smoke

echo "== reliability figures ($TRENDFLOW_ARTIFACTS/reliability.ndjson)"
"$venv/bin/python" - "$TRENDFLOW_ARTIFACTS/reliability.ndjson" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    entry = json.loads(line)
    figures = {k: v for k, v in entry["figures"].items() if not isinstance(v, list) or len(v) <= 12}
    print(f"{entry['test']}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
PY
