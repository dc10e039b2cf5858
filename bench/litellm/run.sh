#!/usr/bin/env bash
# Starts LiteLLM's proxy in the foreground on 127.0.0.1:PORT, routing the model
# names `haiku` and `nova-micro` to the Bedrock simulator (or any Bedrock
# endpoint) at SIM_URL. The caller backgrounds it and stops it by its PID:
# `exec` makes this script's PID LiteLLM's.
#
#   bench/litellm/run.sh SIM_URL PORT [cache]
#
# With `cache`, LiteLLM's response cache is on (in memory, `type: local`), for
# cache-hit throughput comparisons. Run setup.sh first.
#
# LITELLM_WORKERS sets its worker processes (default 1, LiteLLM's own default).
#
# LiteLLM refuses to start without a master key; clients send it as a bearer
# token (`bedrock-bench load --api-key sk-bedrock-bench`). Set
# LITELLM_MASTER_KEY to choose another.
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ] || { [ $# -eq 3 ] && [ "$3" != cache ]; }; then
    echo "usage: $0 SIM_URL PORT [cache]" >&2
    exit 2
fi
sim_url="$1"
port="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
litellm="$here/.venv/bin/litellm"
if [ ! -x "$litellm" ]; then
    echo "$litellm not found: run $here/setup.sh first" >&2
    exit 1
fi

config="$(mktemp "${TMPDIR:-/tmp}/litellm-bench-XXXXXX.yaml")"

# One Bedrock deployment per model name. The simulator accepts any SigV4
# signature, so the keys are dummies; the region matches the simulator's.
model() {
    cat <<YAML
  - model_name: $1
    litellm_params:
      model: bedrock/$2
      aws_bedrock_runtime_endpoint: $sim_url
      aws_access_key_id: bench-dummy-access-key
      aws_secret_access_key: bench-dummy-secret-key
      aws_region_name: us-east-2
YAML
}

{
    echo "model_list:"
    model haiku us.anthropic.claude-3-5-haiku-20241022-v1:0
    model nova-micro us.amazon.nova-micro-v1:0
    echo "litellm_settings:"
    # Retries would hide the upstream's errors from the benchmark.
    echo "  num_retries: 0"
    if [ "${3:-}" = cache ]; then
        echo "  cache: true"
        echo "  cache_params:"
        echo "    type: local"
    fi
} > "$config"
echo "LiteLLM config: $config" >&2

# Benchmark machines are often offline: use the bundled model cost map rather
# than fetching it, and send no telemetry.
export LITELLM_MASTER_KEY="${LITELLM_MASTER_KEY:-sk-bedrock-bench}"
export LITELLM_LOCAL_MODEL_COST_MAP=True
export LITELLM_TELEMETRY=False
exec "$litellm" --config "$config" --host 127.0.0.1 --port "$port" \
    --num_workers "${LITELLM_WORKERS:-1}"
