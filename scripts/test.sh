#!/usr/bin/env bash
# Runs every test of trendflow: unit, integration (real processes, real files) and doc tests.
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

echo "== cargo test (workspace)"
cargo test --workspace --locked "$@"
