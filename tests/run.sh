#!/usr/bin/env bash
# The whole test suite, as README's Quickstart runs it:
#   Rust unit and integration tests (cargo nextest, parallel) against the real
#   embedded broker, then the Python interop tests (Confluent's own client).
# Installs what it needs: Python packages, cargo-nextest, the Tansu broker.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keyflow/target}"

python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

cargo build --workspace --bins
"$CARGO_TARGET_DIR/debug/devstack" install

cargo nextest run --workspace --no-fail-fast
KEYFLOW_BIN_DIR="$CARGO_TARGET_DIR/debug" python3 -m pytest tests/python -q -p no:cacheprovider
