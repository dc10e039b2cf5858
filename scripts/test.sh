#!/usr/bin/env bash
# Runs every test of the project on a fresh machine, installing what it needs:
# Python clients in .venv, then formatting and lint checks, the Rust tests
# (unit and end to end, with the AWS SDK for Rust), the Python client tests
# (boto3, openai, anthropic) against the built binaries, with the deploy/ kit
# checked against a real Prometheus, promtool, kustomize and the Kubernetes
# schemas, and the Node client tests (tests/node, from its package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

step "System packages (redis-server for the shared-cache tests; prometheus and promtool for deploy/; node, npm and openssl for the Node SDK tests)"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
{ command -v node && command -v npm; } >/dev/null 2>&1 || missing+=(nodejs npm)
# The Node tests make a throwaway certificate for the TLS (HTTP/2 by ALPN) case.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
redis-server --version
prometheus --version 2>&1 | sed -n 1p
# deploy/k8s renders with a kustomize binary, or kubectl's built-in kustomize
# (neither is packaged by Debian; kubectl ships with this machine image).
if command -v kustomize >/dev/null 2>&1; then kustomize version; else kubectl version --client 2>&1 | grep -i kustomize || echo "no kustomize and no kubectl: the deploy/k8s tests will fail"; fi

step "Python clients (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade -r tests/python/requirements.txt

step "LiteLLM's proxy (bench/litellm/.venv): an OpenAI-compatible server the proxy's openai upstream is tested against"
bench/litellm/setup.sh

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

step "Node client tests (@aws-sdk/client-bedrock-runtime over HTTP/2, openai, @anthropic-ai/sdk)"
node --version
# Exactly the committed lockfile's packages; npm's cache makes it work offline once filled.
(cd tests/node && npm ci --no-audit --no-fund --prefer-offline)
(cd tests/node && BEDROCK_BIN_DIR="$target_dir/debug" node --test)

step "all tests passed"
