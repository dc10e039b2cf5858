#!/usr/bin/env bash
# Reruns the measurements in docs/PERFORMANCE.md on this machine.
#
#   bench/perf/run.sh [SECTION...]
#
# Sections: overhead cache memory streams prompt-cache fallback litellm
# (default: all but litellm; `litellm` installs LiteLLM into a throwaway venv
# with bench/litellm/setup.sh the first time). Results (tables as printed, and
# the JSON each run writes) go to target/perf/ (OUT=DIR to change); every
# server this script starts logs there too and is stopped, by its PID, on exit.
#
# Set SKIP_BUILD=1 to use the release binaries already in target/release.
# Ports 17070-17071, 18080-18092 and 19090-19096 on 127.0.0.1 must be free.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bin="$root/target/release"
perf="$root/bench/perf"
out="${OUT:-$root/target/perf}"
mkdir -p "$out"

sections=("$@")
if [ ${#sections[@]} -eq 0 ]; then
    sections=(overhead cache memory streams prompt-cache fallback)
fi
for s in "${sections[@]}"; do
    case "$s" in
        overhead | cache | memory | streams | prompt-cache | fallback | litellm) ;;
        *)
            echo "unknown section: $s (overhead cache memory streams prompt-cache fallback litellm)" >&2
            exit 2
            ;;
    esac
done

if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --locked -p bedrock-proxy -p bedrock-sim -p bedrock-bench --bins
fi

# The key the bench configs accept: sha256("bench-key").
export BENCH_KEY_SHA256=b0962662e937d44c699c8305d90cbf190b3150c59b13863d1380b5cc3c711bb7
KEY=bench-key
FAST_SIM=http://127.0.0.1:17070 # time-scale 0: answers as fast as it can
REAL_SIM=http://127.0.0.1:17071 # time-scale 1: Bedrock's latencies

pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

# start NAME COMMAND...: runs a server in the background, logging to $out/NAME.log.
start() {
    local name="$1"
    shift
    "$@" >"$out/$name.log" 2>&1 &
    pids+=($!)
    last_pid=$!
}

# stop PID: stops one server this script started.
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# wait_for URL: until it answers (a server just started).
wait_for() {
    for _ in $(seq 1 300); do
        if curl -s -o /dev/null "$1"; then
            return 0
        fi
        sleep 0.1
    done
    echo "$1 did not come up; see the logs in $out" >&2
    exit 1
}

bench() {
    "$bin/bedrock-bench" "$@" --no-progress
}

# heading TEXT: a section title in the output and in $out/results.txt.
heading() {
    printf '\n== %s ==\n' "$1" | tee -a "$out/results.txt"
}

# record CMD...: runs a measurement, its table shown and kept in results.txt.
record() {
    "$@" 2>&1 | tee -a "$out/results.txt"
}

sims_up=""
start_sims() {
    [ -n "$sims_up" ] && return
    start sim-fast "$bin/bedrock-sim" --listen 127.0.0.1:17070 --time-scale 0
    start sim-real "$bin/bedrock-sim" --listen 127.0.0.1:17071 --time-scale 1
    wait_for "$FAST_SIM/_sim/stats"
    wait_for "$REAL_SIM/_sim/stats"
    sims_up=1
}

# proxy NAME CONFIG SIM_URL [FLAGS...]: starts bedrock-proxy; its admin URL is
# read from the config unless --admin-listen is given.
proxy() {
    local name="$1" config="$2" sim="$3"
    shift 3
    SIM_URL="$sim" start "$name" "$bin/bedrock-proxy" --config "$config" "$@"
}

rss_mb() {
    awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

overhead() {
    heading "Pass-through overhead (simulator at time-scale 0, unique requests)"
    proxy proxy-overhead "$perf/overhead.toml" "$FAST_SIM"
    local p=$last_pid
    RUST_LOG=warn proxy proxy-overhead-quiet "$perf/overhead.toml" "$FAST_SIM" \
        --listen 127.0.0.1:18082 --admin-listen 127.0.0.1:19092
    local q=$last_pid
    start forward "$bin/bedrock-bench" baseline --forward "$FAST_SIM" --listen 127.0.0.1:18091
    local f=$last_pid
    wait_for http://127.0.0.1:19090/healthz
    wait_for http://127.0.0.1:19092/healthz
    wait_for http://127.0.0.1:18091/
    for c in 1 32; do
        heading "simulator vs bedrock-proxy (access log on), $c connection(s)"
        record bench load --compare "$FAST_SIM" http://127.0.0.1:18080 --api-key "$KEY" \
            --unique --concurrency "$c" --requests 20000 --out "$out/overhead-proxy-c$c"
        heading "simulator vs bedrock-proxy (access log off), $c connection(s)"
        record bench load --compare "$FAST_SIM" http://127.0.0.1:18082 --api-key "$KEY" \
            --unique --concurrency "$c" --requests 20000 --out "$out/overhead-quiet-c$c"
        heading "simulator vs a bare hyper forwarder (the floor), $c connection(s)"
        record bench load --compare "$FAST_SIM" http://127.0.0.1:18091 --api-key "$KEY" \
            --unique --concurrency "$c" --requests 20000 --out "$out/overhead-forward-c$c"
    done
    stop "$p"
    stop "$q"
    stop "$f"
}

cache() {
    heading "Cache hits vs a static axum server, 16 connections"
    start static "$bin/bedrock-bench" baseline --static - --listen 127.0.0.1:18090
    local s=$last_pid
    proxy proxy-cache "$perf/cache.toml" "$FAST_SIM"
    local p=$last_pid
    wait_for http://127.0.0.1:18090/
    wait_for http://127.0.0.1:19091/healthz
    heading "static axum server alone"
    record bench load --endpoint http://127.0.0.1:18090 --concurrency 16 --duration 20s \
        --out "$out/cache-static"
    heading "bedrock-proxy cache hits alone"
    record bench load --endpoint http://127.0.0.1:18081 --api-key "$KEY" --concurrency 16 \
        --duration 20s --out "$out/cache-proxy"
    heading "static vs cache hits, alternating"
    record bench load --compare http://127.0.0.1:18090 http://127.0.0.1:18081 --api-key "$KEY" \
        --concurrency 16 --duration 20s --out "$out/cache-compare"
    stop "$p"
    stop "$s"
}

memory() {
    heading "Memory: cache.max_bytes = 64 MiB, filled with unique answers for 60s"
    proxy proxy-memory "$perf/cache.toml" "$FAST_SIM" \
        --listen 127.0.0.1:18085 --admin-listen 127.0.0.1:19095
    local p=$last_pid
    wait_for http://127.0.0.1:19095/healthz
    echo "RSS at start: $(rss_mb "$p") MB" | tee -a "$out/results.txt"
    record bench load --endpoint http://127.0.0.1:18085 --api-key "$KEY" --unique \
        --max-tokens 400 --concurrency 16 --duration 60s --out "$out/memory"
    {
        echo "RSS after the fill: $(rss_mb "$p") MB"
        awk '/VmHWM/ { printf "peak RSS: %.1f MB\n", $2 / 1024 }' "/proc/$p/status"
        curl -s http://127.0.0.1:19095/metrics | grep -E '^bedrock_proxy_cache_(bytes|entries|evictions_total) '
    } | tee -a "$out/results.txt"
    stop "$p"
}

streams() {
    heading "Streaming TTFT: Bedrock-native vs OpenAI SSE through the proxy (time-scale 0)"
    proxy proxy-streams "$perf/overhead.toml" "$FAST_SIM"
    local p=$last_pid
    wait_for http://127.0.0.1:19090/healthz
    for c in 1 8; do
        heading "ConverseStream: simulator vs bedrock-proxy, $c connection(s)"
        record bench load --compare "$FAST_SIM" http://127.0.0.1:18080 --api-key "$KEY" \
            --stream --unique --concurrency "$c" --requests 10000 --out "$out/streams-bedrock-c$c"
        heading "OpenAI chat completions (SSE) through bedrock-proxy, $c connection(s)"
        record bench load --endpoint http://127.0.0.1:18080 --api-key "$KEY" --format openai \
            --model haiku --stream --unique --concurrency "$c" --requests 5000 \
            --out "$out/streams-openai-c$c"
    done
    stop "$p"
}

prompt_cache() {
    heading "Prompt-cache workload (time-scale 1, 3 system prompts of ~3,000 tokens, 20% repeats)"
    local model=us.anthropic.claude-3-5-haiku-20241022-v1:0
    proxy proxy-prompt-cache "$perf/prompt-cache.toml" "$REAL_SIM"
    local p=$last_pid
    proxy proxy-prompt-and-response-cache "$perf/prompt-cache-and-responses.toml" "$REAL_SIM"
    local r=$last_pid
    wait_for http://127.0.0.1:19093/healthz
    wait_for http://127.0.0.1:19094/healthz
    heading "direct vs bedrock-proxy with prompt caching (response cache off)"
    curl -s -X POST "$REAL_SIM/_sim/reset" >/dev/null
    record bench workload --compare "$REAL_SIM" http://127.0.0.1:18083 --model "$model" \
        --api-key "$KEY" --out "$out/prompt-cache"
    heading "direct vs bedrock-proxy with prompt caching and the response cache"
    curl -s -X POST "$REAL_SIM/_sim/reset" >/dev/null
    record bench workload --compare "$REAL_SIM" http://127.0.0.1:18084 --model "$model" \
        --api-key "$KEY" --out "$out/prompt-and-response-cache"
    stop "$p"
    stop "$r"
}

fallback() {
    heading "Fallback workload (time-scale 1, 20% of latency-optimized calls throttled)"
    proxy proxy-fallback "$perf/fallback.toml" "$REAL_SIM"
    local p=$last_pid
    wait_for http://127.0.0.1:19096/healthz
    curl -s -X POST "$REAL_SIM/_sim/reset" >/dev/null
    heading "the healthy standard tier, direct (what fallbacks are served at)"
    record bench latency --input "$perf/standard-prompts.jsonl" --endpoint "$REAL_SIM" \
        --api-key "$KEY" --concurrency 8 --repetitions 100 --out "$out/fallback-standard"
    curl -s -X POST "$REAL_SIM/_sim/faults" -H 'content-type: application/json' \
        -d '{"latency": "optimized", "fault": "throttle", "probability": 0.2}' >/dev/null
    heading "direct to the simulator"
    record bench latency --input "$perf/fallback-prompts.jsonl" --endpoint "$REAL_SIM" \
        --api-key "$KEY" --concurrency 8 --repetitions 100 --out "$out/fallback-direct"
    heading "through bedrock-proxy (optimized, falling back to standard)"
    record bench latency --input "$perf/fallback-prompts.jsonl" --endpoint http://127.0.0.1:18086 \
        --api-key "$KEY" --concurrency 8 --repetitions 100 --out "$out/fallback-proxy"
    curl -s http://127.0.0.1:19096/metrics | grep -E '^bedrock_proxy_(upstream_attempts_total|fallbacks_total|served_tier_total)' |
        tee -a "$out/results.txt" || true
    curl -s -X DELETE "$REAL_SIM/_sim/faults" >/dev/null
    stop "$p"
}

litellm() {
    heading "LiteLLM side by side (simulator at time-scale 0, OpenAI format)"
    if [ ! -x "$root/bench/litellm/.venv/bin/litellm" ]; then
        "$root/bench/litellm/setup.sh"
    fi
    start litellm "$root/bench/litellm/run.sh" "$FAST_SIM" 18087
    local l=$last_pid
    start litellm-cache "$root/bench/litellm/run.sh" "$FAST_SIM" 18088 cache
    local lc=$last_pid
    proxy proxy-litellm "$perf/overhead.toml" "$FAST_SIM"
    local p=$last_pid
    proxy proxy-litellm-cache "$perf/cache.toml" "$FAST_SIM"
    local pc=$last_pid
    wait_for http://127.0.0.1:18087/health/liveliness
    wait_for http://127.0.0.1:18088/health/liveliness
    wait_for http://127.0.0.1:19090/healthz
    wait_for http://127.0.0.1:19091/healthz
    local lkey=sk-bedrock-bench
    for c in 1 8; do
        heading "pass-through, $c connection(s): LiteLLM"
        record bench load --endpoint http://127.0.0.1:18087 --api-key "$lkey" --format openai \
            --model haiku --unique --concurrency "$c" --duration 20s --out "$out/litellm-c$c"
        heading "pass-through, $c connection(s): bedrock-proxy"
        record bench load --endpoint http://127.0.0.1:18080 --api-key "$KEY" --format openai \
            --model haiku --unique --concurrency "$c" --duration 20s --out "$out/proxy-openai-c$c"
    done
    heading "cache hits, 8 connections: LiteLLM (local cache)"
    record bench load --endpoint http://127.0.0.1:18088 --api-key "$lkey" --format openai \
        --model haiku --concurrency 8 --duration 20s --out "$out/litellm-cache"
    heading "cache hits, 8 connections: bedrock-proxy"
    record bench load --endpoint http://127.0.0.1:18081 --api-key "$KEY" --format openai \
        --model haiku --concurrency 8 --duration 20s --out "$out/proxy-openai-cache"
    stop "$p"
    stop "$pc"
    stop "$l"
    stop "$lc"
}

{
    echo "bedrock-proxy performance run, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr)"
} >"$out/results.txt"
start_sims
for s in "${sections[@]}"; do
    case "$s" in
        overhead) overhead ;;
        cache) cache ;;
        memory) memory ;;
        streams) streams ;;
        prompt-cache) prompt_cache ;;
        fallback) fallback ;;
        litellm) litellm ;;
    esac
done
echo
echo "results: $out/results.txt"
