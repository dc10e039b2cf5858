#!/usr/bin/env bash
# The prompt-cache economics benchmark (issue 20): for each traffic shape of
# `bedrock-bench workload` (app, long-tail, slow), static `auto` (learn = false,
# 5-minute TTL) against learning (`ttl = "auto"`, learn = true), each arm on its
# own fresh simulator and proxy so neither sees the other's cache. Simulated
# time runs 1/SCALE times as fast in the simulator, the proxy's learning clock
# and the workload alike, so an hour of traffic takes SCALE hours.
#
# Usage: bench/prompt-cache-economics.sh [OUT_DIR]
# Env: BIN_DIR (bedrock-sim, bedrock-proxy, bedrock-bench; default
# $CARGO_TARGET_DIR/debug), SCALE (0.05), MODEL (Claude Sonnet 4.5, which
# offers the 1-hour TTL), SHAPES ("app long-tail slow"), BASE_PORT (47100),
# TABLE_ONLY (set: only print the table of an earlier run).
set -euo pipefail

OUT=${1:-bench-out/prompt-cache}
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
SCALE=${SCALE:-0.05}
MODEL=${MODEL:-us.anthropic.claude-sonnet-4-5-20250929-v1:0}
SHAPES=${SHAPES:-app long-tail slow}
PORT=${BASE_PORT:-47100}
for bin in bedrock-sim bedrock-proxy bedrock-bench; do
    if [ ! -x "$BIN_DIR/$bin" ]; then
        echo "$BIN_DIR/$bin is missing: build with cargo build -p bedrock-sim -p bedrock-proxy -p bedrock-bench, or set BIN_DIR" >&2
        exit 1
    fi
done
mkdir -p "$OUT"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    pids=()
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# Shape-specific workload flags: the app shape as documented; the long tail
# over an hour of arrivals; slow conversations of 4 turns.
shape_args() {
    case "$1" in
        app) echo "--conversations 40 --turns 3 --repeat-share 0.2 --concurrency 4" ;;
        long-tail) echo "--conversations 240 --concurrency 8" ;;
        slow) echo "--conversations 20 --turns 4" ;;
    esac
}

run_arm() {
    local shape=$1 arm=$2 policy=$3
    local sim_port=$PORT proxy_port=$((PORT + 1)) admin_port=$((PORT + 2))
    PORT=$((PORT + 3))
    local dir="$OUT/$shape-$arm"
    mkdir -p "$dir"
    cat >"$dir/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$proxy_port"
auth = "none"
[admin]
listen = "127.0.0.1:$admin_port"
[logging]
level = "warn"
[prompt_cache]
time_scale = $SCALE
[upstreams.sim]
kind = "simulator"
endpoint = "http://127.0.0.1:$sim_port"
[[routes]]
name = "sonnet"
aliases = ["sonnet"]
models = ["$MODEL"]
upstream = "sim"
prompt_cache = $policy
EOF
    "$BIN_DIR/bedrock-sim" --listen "127.0.0.1:$sim_port" --time-scale "$SCALE" --seed 7 \
        >"$dir/sim.log" 2>&1 &
    pids+=($!)
    "$BIN_DIR/bedrock-proxy" --config "$dir/proxy.toml" >"$dir/proxy.log" 2>&1 &
    pids+=($!)
    wait_port "$sim_port"
    wait_port "$proxy_port"
    # shellcheck disable=SC2046
    "$BIN_DIR/bedrock-bench" workload --endpoint "http://127.0.0.1:$proxy_port" \
        --model "$MODEL" --shape "$shape" --time-scale "$SCALE" --seed 1 \
        $(shape_args "$shape") --out "$dir" | tee "$dir/report.txt"
    curl -s "http://127.0.0.1:$admin_port/admin/prompt-cache" >"$dir/admin-prompt-cache.json" || true
    cleanup
}

# TABLE_ONLY=1 prints the table of an earlier run in OUT_DIR.
if [ -z "${TABLE_ONLY:-}" ]; then
    for shape in $SHAPES; do
        run_arm "$shape" static '{ mode = "auto", learn = false }'
        run_arm "$shape" learning '{ mode = "auto", ttl = "auto" }'
    done
fi

# Side by side: billed input cost and TTFT p50 (at full scale) of each arm.
python3 - "$OUT" $SHAPES <<'EOF'
import json, sys
out, shapes = sys.argv[1], sys.argv[2:]
# The input without caching: every cached token billed as input (the output
# costs the same either way).
print(f"{'shape':<10} {'arm':<9} {'requests':>8} {'errors':>6} {'input USD':>10} {'uncached input USD':>18} {'read tok':>9} {'write tok':>9} {'of 1h':>8} {'TTFT p50 ms':>11}")
for shape in shapes:
    for arm in ("static", "learning"):
        r = json.load(open(f"{out}/{shape}-{arm}/workload.json"))["targets"][0]
        c, b, t = r["cost"], r["billed"], r["ttft_simulated_ms"]
        errors = sum(r["errors"].values()) if isinstance(r["errors"], dict) else len(r["errors"])
        uncached = c['without_caching_usd'] - (c['billed_usd'] - c['input_usd'])
        print(f"{shape:<10} {arm:<9} {r['requests']:>8} {errors:>6} {c['input_usd']:>10.4f} {uncached:>18.4f} "
              f"{b['cache_read_input_tokens']:>9} {b['cache_write_input_tokens']:>9} "
              f"{b['cache_write_1h_input_tokens']:>8} {t['p50'] if t else float('nan'):>11.0f}")
EOF
