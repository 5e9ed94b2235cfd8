#!/usr/bin/env bash
# Runs every test of trendflow: Rust unit, integration (real Kafka-protocol broker, real
# MongoDB-protocol server) and doc tests, then the Python client tests (ADBC,
# pyarrow.flight, SQLAlchemy), the status endpoint, the Streamlit dashboard (AppTest and
# headless Chromium via Playwright) and the compose file, against real `trendflow` processes.
# Installs what the tests need when it is missing. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust from https://rustup.rs" >&2
    exit 1
fi
if [ ! -d ../shared/data ]; then
    echo "error: ../shared/data (the real sample used by the tests) is missing beside this checkout" >&2
    exit 1
fi

echo "== Python clients for the Flight SQL tests"
venv="${TRENDFLOW_VENV:-$HOME/.cache/trendflow/venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want="$(sha256sum tests/python/requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
    echo "$want" > "$stamp"
fi

echo "== Chromium for the browser test (Debian package)"
if [ ! -x /usr/bin/chromium ]; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

echo "== Kafka-protocol broker for the Kafka tests (tansu)"
tansu_version=0.6.0
tansu="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
if [ "$("$tansu" --version 2>/dev/null)" != "tansu $tansu_version" ]; then
    echo "installing tansu $tansu_version with cargo (first run only; ~15 min on 2 cores)"
    # Its own build dir: the broker's dependencies stay out of trendflow's target dir.
    env -u CARGO_TARGET_DIR cargo install tansu --version "$tansu_version" --locked --features libsql --quiet
fi
export TANSU_BIN="$tansu"

echo "== cargo test (workspace)"
# The MongoDB tests start SecantusDB with this interpreter, unless MONGODB_URI names a real server.
export TRENDFLOW_PYTHON="$venv/bin/python"
cargo test --workspace --locked "$@"

echo "== Flight SQL client, status, dashboard and browser tests (pytest)"
# The browser test's screenshot lands here (a CI artifact).
export TRENDFLOW_ARTIFACTS="${TRENDFLOW_ARTIFACTS:-$PWD/target/artifacts}"
target_dir="${CARGO_TARGET_DIR:-target}"
TRENDFLOW_BIN="$(cd "$target_dir" && pwd)/debug/trendflow" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python
