#!/usr/bin/env bash
# The whole test suite, as README's Quickstart runs it:
#   Rust unit and integration tests (cargo nextest, parallel) against the real
#   embedded broker, then the Python interop tests (Confluent's own client).
# Installs what it needs first: Debian packages (build tools, Prometheus and
# promtool, docker-compose, kcat, Node.js and npm for kafkajs), Python
# packages, cargo-nextest.
# A tool it cannot install is a setup failure: one line naming the package.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keyflow/target}"

setup_failed() {
  echo "tests/run.sh: setup failed: $*" >&2
  exit 2
}

# command → the Debian package that provides it.
declare -A packages=(
  [make]=build-essential [gcc]=build-essential [g++]=build-essential [pkg-config]=pkg-config
  [perl]=perl [curl]=curl [python3]=python3 [prometheus]=prometheus [promtool]=prometheus
  [docker-compose]=docker-compose [kcat]=kcat [node]=nodejs [npm]=npm
)
missing=()
for c in "${!packages[@]}"; do command -v "$c" >/dev/null || missing+=("${packages[$c]}"); done
[ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
[ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  command -v apt-get >/dev/null || setup_failed "missing Debian packages ${missing[*]} and no apt-get to install them"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "tests/run.sh: installing Debian packages: ${missing[*]}" >&2
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
    setup_failed "could not install the Debian packages ${missing[*]} (apt-get install ${missing[*]})"
fi
for c in "${!packages[@]}"; do
  command -v "$c" >/dev/null || setup_failed "'$c' not found after installing Debian package ${packages[$c]}"
done

python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt ||
  setup_failed "pip could not install tests/python/requirements.txt"
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked || setup_failed "cargo install cargo-nextest"

cargo build --workspace --bins

# Both suites run whatever the other gives; the script fails if either did.
rust=0
python=0
cargo nextest run --workspace --no-fail-fast || rust=$?
KEYFLOW_BIN_DIR="$CARGO_TARGET_DIR/debug" python3 -m pytest tests/python -q -p no:cacheprovider || python=$?
if [ "$rust" != 0 ] || [ "$python" != 0 ]; then
  echo "tests/run.sh: failed (Rust suite exit $rust, Python suite exit $python)" >&2
  exit 1
fi
