#!/usr/bin/env bash
# Runs every test of the project on a fresh machine, installing what it needs:
# Python clients in .venv, then formatting and lint checks, the Rust tests
# (unit and end to end, with the AWS SDK for Rust) and the Python client tests
# (boto3, openai, anthropic) against the built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

step "System packages (redis-server for the shared-cache tests)"
if ! command -v redis-server >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

step "Python clients (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade -r tests/python/requirements.txt

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Rust tests"
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

step "Python client tests"
target_dir=$(cargo metadata --format-version 1 --no-deps | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BEDROCK_BIN_DIR="$target_dir/debug" .venv/bin/python -m pytest -q "$root/tests/python"

step "all tests passed"
