#!/usr/bin/env bash
# Reruns the measurements in docs/PERFORMANCE.md on this machine.
#
#   bench/perf/run.sh [SECTION...]
#
# Sections: overhead cache memory streams prompt-cache fallback service-tiers soak hostile
# bigbody limits litellm instructions cpu-profile hot-text (default: all but
# litellm, instructions, cpu-profile and hot-text, which rewrites
# link/hot-text.ld; `litellm` installs LiteLLM into a throwaway venv
# with bench/litellm/setup.sh the first time; `overhead` installs Debian's
# nginx-light with apt-get when nginx is missing, `instructions` valgrind,
# `cpu-profile` and `hot-text` Linux perf). Results (tables as
# printed, and the JSON each run writes) go to target/perf/ (OUT=DIR to
# change); every server this script starts logs there too and is stopped, by
# its PID, on exit.
#
# Set SKIP_BUILD=1 to use the release binaries already built (in target/release,
# or under CARGO_TARGET_DIR when it is set). PROFILE=debug builds and runs debug
# binaries instead (quicker to build; for measuring memory, not speed).
# UPSTREAM_HTTP=auto|http1|http2 sets `http` in every [upstreams.*] table of the
# proxy configs (the simulator is plain http: `http2` is h2c, `auto` HTTP/1.1),
# UPSTREAM_H2_CONNECTIONS their `http2_connections`; unset, the configs'
# defaults apply. E.g. `UPSTREAM_HTTP=http2 OUT=target/perf-h2 bench/perf/run.sh
# overhead streams` next to a run with UPSTREAM_HTTP=http1.
# SOAK_DURATION (10m), SOAK_WARMUP (1m) and SOAK_RATE (100 arrivals/s) shape the
# soak; HOSTILE_SLOW and HOSTILE_IDLE (1000 each) the hostile section.
# Ports 17070-17071, 18080-18095 and 19090-19099 on 127.0.0.1 must be free.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
profile="${PROFILE:-release}"
case "$profile" in
    release) profile_flag=--release ;;
    debug) profile_flag= ;;
    *)
        echo "PROFILE must be release or debug, not $profile" >&2
        exit 2
        ;;
esac
bin="${CARGO_TARGET_DIR:-$root/target}/$profile"
perf="$root/bench/perf"
out="${OUT:-$root/target/perf}"
mkdir -p "$out"

sections=("$@")
if [ ${#sections[@]} -eq 0 ]; then
    sections=(overhead cache memory streams prompt-cache fallback service-tiers soak hostile bigbody limits)
fi
for s in "${sections[@]}"; do
    case "$s" in
        overhead | cache | memory | streams | prompt-cache | fallback | service-tiers | soak | hostile | bigbody | limits | litellm | instructions | cpu-profile | hot-text) ;;
        *)
            echo "unknown section: $s (overhead cache memory streams prompt-cache fallback service-tiers soak hostile bigbody limits litellm instructions cpu-profile hot-text)" >&2
            exit 2
            ;;
    esac
done

# Held connections need descriptors, in the proxies and in bedrock-bench.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build $profile_flag --locked -p bedrock-proxy -p bedrock-sim -p bedrock-bench --bins
fi

# The key the bench configs accept: sha256("bench-key").
export BENCH_KEY_SHA256=b0962662e937d44c699c8305d90cbf190b3150c59b13863d1380b5cc3c711bb7
KEY=bench-key
FAST_SIM=http://127.0.0.1:17070 # time-scale 0: answers as fast as it can
REAL_SIM=http://127.0.0.1:17071 # time-scale 1: Bedrock's latencies

pids=()
tmpdirs=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for dir in "${tmpdirs[@]}"; do
        rm -rf "$dir"
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
    if [ -n "${UPSTREAM_HTTP:-}${UPSTREAM_H2_CONNECTIONS:-}" ]; then
        # A copy of the config with the upstream connection keys added.
        local lines="" variant="$out/$name.toml"
        if [ -n "${UPSTREAM_HTTP:-}" ]; then
            lines="http = \"$UPSTREAM_HTTP\""
        fi
        if [ -n "${UPSTREAM_H2_CONNECTIONS:-}" ]; then
            lines="$lines${lines:+\n}http2_connections = $UPSTREAM_H2_CONNECTIONS"
        fi
        sed "/^\[upstreams\.[^].]*\]/a $lines" "$config" >"$variant"
        config="$variant"
    fi
    SIM_URL="$sim" start "$name" "$bin/bedrock-proxy" --config "$config" "$@"
}

rss_mb() {
    awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# apt_install PACKAGE: installs a Debian package (with sudo when not root),
# its output in $out/PACKAGE-install.log; stops the run when that fails.
apt_install() {
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    echo "installing $1 with apt-get" >&2
    $sudo apt-get install -y "$1" >"$out/$1-install.log" 2>&1 || {
        echo "could not install $1; see $out/$1-install.log" >&2
        exit 1
    }
}

# ensure_nginx: Debian's nginx-light, installed when no nginx is on the PATH.
ensure_nginx() {
    command -v nginx >/dev/null || apt_install nginx-light
}

# ensure_valgrind: Debian's valgrind (callgrind), installed when missing.
ensure_valgrind() {
    command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
        apt_install valgrind
}

# ensure_perf: Linux perf (Debian's linux-perf), installed when missing.
ensure_perf() {
    command -v perf >/dev/null && perf --version >/dev/null 2>&1 || apt_install linux-perf
}

# start_nginx NAME PORT UPSTREAM: nginx as a plain reverse proxy on 127.0.0.1:PORT
# in front of UPSTREAM (host:port), with upstream keep-alive and its access log
# on. Config, logs and temp files live in a temp dir (nothing else is written,
# no root needed), and the master runs in the foreground: its PID is ours.
start_nginx() {
    local name="$1" port="$2" upstream="$3"
    local dir
    dir="$(mktemp -d)"
    tmpdirs+=("$dir")
    cat >"$dir/nginx.conf" <<EOF
worker_processes auto;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 16384; }
http {
    access_log $dir/access.log;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    client_max_body_size 25m;
    keepalive_requests 1000000;
    upstream upstream {
        server $upstream;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            # Streams pass as they arrive, as through the proxy.
            proxy_buffering off;
        }
    }
}
EOF
    start "$name" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;'
}

# proc_ticks PID...: utime + stime (clock ticks) of these processes and of their
# direct children (nginx's workers), from /proc.
proc_ticks() {
    local want=" $* " total=0 f line pid fields
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        pid="${f#/proc/}"
        pid="${pid%/stat}"
        read -ra fields <<<"${line##*) }"
        if [[ "$want" == *" $pid "* || "$want" == *" ${fields[1]} "* ]]; then
            total=$((total + fields[11] + fields[12]))
        fi
    done
    echo "$total"
}

overhead() {
    heading "Pass-through overhead (simulator at time-scale 0, unique requests)"
    ensure_nginx
    start_nginx nginx 18092 127.0.0.1:17070
    local n=$last_pid
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
    wait_for http://127.0.0.1:18092/_sim/stats
    local targets=("$FAST_SIM" http://127.0.0.1:18092 http://127.0.0.1:18091
        http://127.0.0.1:18080 http://127.0.0.1:18082)
    local legend="A simulator, B nginx, C bare forwarder, D bedrock-proxy"
    for c in 1 32; do
        heading "added latency, $c connection(s), one interleaved run: $legend (access log on), E bedrock-proxy (log off)"
        record bench load --compare "${targets[@]}" --api-key "$KEY" \
            --unique --concurrency "$c" --requests 50000 --out "$out/overhead-c$c"
    done
    for c in 1 8; do
        heading "stream TTFT added, $c connection(s), one interleaved run: $legend (access log on)"
        record bench load --compare "${targets[@]:0:4}" --api-key "$KEY" --stream \
            --unique --concurrency "$c" --requests 20000 --out "$out/overhead-stream-c$c"
    done

    # CPU per request: each server's utime + stime over an interleaved run in
    # which each of the four serves exactly (40,000 + 100 warmup) / 4
    # requests. One such run moves by several percent with what else the two
    # cores are doing (the forwarder's own number by up to a third between
    # runs), so the step repeats it and reports every round and the median.
    local rounds=${CPU_ROUNDS:-3}
    heading "CPU per pass-through request (8 connections, $rounds interleaved rounds, 10,025 requests each per round)"
    local hz each=10025 r row after us i
    hz=$(getconf CLK_TCK)
    local labels=("nginx" "bare forwarder" "bedrock-proxy (access log on)" "bedrock-proxy (access log off)")
    local pids=("$n" "$f" "$p" "$q")
    local -a samples=()
    for ((r = 1; r <= rounds; r++)); do
        local -a before=()
        for i in 0 1 2 3; do before[i]=$(proc_ticks "${pids[i]}"); done
        bench load --compare http://127.0.0.1:18092 http://127.0.0.1:18091 http://127.0.0.1:18080 \
            http://127.0.0.1:18082 --api-key "$KEY" --unique --concurrency 8 --requests 40000 \
            --warmup 100 --out "$out/overhead-cpu-r$r" >"$out/overhead-cpu-r$r.txt" 2>&1
        row="$r"
        for i in 0 1 2 3; do
            after=$(proc_ticks "${pids[i]}")
            us=$(awk -v d="$((after - before[i]))" -v hz="$hz" -v n="$each" \
                'BEGIN { printf "%.1f", d * 1e6 / hz / n }')
            row="$row $us"
        done
        samples+=("$row")
        grep -E '^errors' "$out/overhead-cpu-r$r.txt" | sed "s/^/round $r: /" | tee -a "$out/results.txt" || true
    done
    # One row per round (µs per request; the proxy as a multiple of the
    # forwarder), then each column's median, and the median of the rounds'
    # proxy/forwarder ratios.
    printf '%s\n' "${samples[@]}" | awk -v names="$(IFS=';'; echo "${labels[*]}")" '
        function median(a, k,   i, j, t) {
            for (i = 2; i <= k; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
        }
        {
            k++
            for (c = 2; c <= 5; c++) v[c, k] = $c
            on[k] = $4 / $3; off[k] = $5 / $3
            printf "round %d: nginx %s, forwarder %s, proxy %s (log off %s) us/req: proxy %.2fx the forwarder (log off %.2fx), %.2fx nginx\n", $1, $2, $3, $4, $5, on[k], off[k], $4 / $2
        }
        END {
            split(names, name, ";")
            printf "%-32s %18s %9s\n", "server", "CPU us/req median", "vs nginx"
            for (c = 2; c <= 5; c++) { for (i = 1; i <= k; i++) col[i] = v[c, i]; m[c] = median(col, k) }
            for (c = 2; c <= 5; c++) printf "%-32s %18.1f %8.2fx\n", name[c - 1], m[c], m[c] / m[2]
            printf "proxy vs bare forwarder, median of %d rounds: %.2fx (log off %.2fx)\n", k, median(on, k), median(off, k)
        }' | tee -a "$out/results.txt"
    stop "$p"
    stop "$q"
    stop "$f"
    stop "$n"
}

cache() {
    heading "Cache hits vs a static axum server, 16 connections"
    start static "$bin/bedrock-bench" baseline --copy "$FAST_SIM" --listen 127.0.0.1:18090
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
    # Streamed hits: the static server answers ConverseStream with frames
    # encoded once, the proxy with the cached answer's frames.
    heading "static axum server alone, ConverseStream"
    record bench load --endpoint http://127.0.0.1:18090 --stream --concurrency 16 --duration 20s \
        --out "$out/cache-static-stream"
    heading "bedrock-proxy streamed cache hits alone"
    record bench load --endpoint http://127.0.0.1:18081 --api-key "$KEY" --stream \
        --concurrency 16 --duration 20s --out "$out/cache-proxy-stream"
    heading "static vs streamed cache hits, alternating"
    record bench load --compare http://127.0.0.1:18090 http://127.0.0.1:18081 --api-key "$KEY" \
        --stream --concurrency 16 --duration 20s --out "$out/cache-compare-stream"
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

service_tiers() {
    heading "Service-tier workload (time-scale 1): interactive at priority + background at flex, versus both at default, interleaved in one run"
    proxy proxy-service-tiers "$perf/service-tiers.toml" "$REAL_SIM"
    local p=$last_pid
    wait_for http://127.0.0.1:19099/healthz
    curl -s -X POST "$REAL_SIM/_sim/reset" >/dev/null
    record bench latency --input "$perf/service-tier-prompts.jsonl" --endpoint http://127.0.0.1:18089 \
        --api-key "$KEY" --concurrency 8 --repetitions 50 --out "$out/service-tiers"
    heading "dollars by route (the tier that served each answer, at its catalog price)"
    curl -s http://127.0.0.1:19099/metrics | grep -E '^bedrock_proxy_(cost_usd|service_tier_served_total)' |
        tee -a "$out/results.txt" || true
    stop "$p"
}

soak() {
    local duration="${SOAK_DURATION:-10m}" warmup="${SOAK_WARMUP:-1m}" rate="${SOAK_RATE:-100}"
    heading "Soak: $duration at $rate arrivals/s (simulator at time-scale 1): hits, misses, streams, upstream errors, slow and idle clients"
    proxy proxy-soak "$perf/soak.toml" "$REAL_SIM"
    local p=$last_pid
    wait_for http://127.0.0.1:19097/healthz
    curl -s -X POST "$REAL_SIM/_sim/reset" >/dev/null
    record bench soak --endpoint http://127.0.0.1:18093 --pid "$p" --sim "$REAL_SIM" \
        --api-key "$KEY" --duration "$duration" --warmup "$warmup" --rate "$rate" \
        --out "$out/soak"
    # Whether the cache was full (evicting) is what tells its growth from a leak.
    curl -s http://127.0.0.1:19097/metrics |
        grep -E '^bedrock_proxy_cache_(bytes|entries|evictions_total) ' | tee -a "$out/results.txt" || true
    stop "$p"
    curl -s -X POST "$REAL_SIM/_sim/reset" >/dev/null
}

hostile() {
    local slow="${HOSTILE_SLOW:-1000}" idle="${HOSTILE_IDLE:-1000}"
    heading "Hostile clients: $slow slow-body and $idle idle connections held, other tenants' latency (time-scale 0)"
    proxy proxy-hostile "$perf/hostile.toml" "$FAST_SIM"
    local p=$last_pid
    wait_for http://127.0.0.1:19098/healthz
    record bench hold --endpoint http://127.0.0.1:18094 --pid "$p" --api-key "$KEY" \
        --slow "$slow" --idle "$idle" --concurrency 4 --requests 5000 --unique \
        --out "$out/hostile"
    stop "$p"
}

bigbody() {
    heading "Big bodies: peak RSS with four concurrent 25 MB Converse bodies of many small messages"
    # Just under limits.max_body_bytes (25,000,000): messages of about 60 bytes,
    # user and assistant in turn, the last one the user's.
    local body="$out/bigbody.json"
    awk 'BEGIN {
        printf "{\"messages\":["
        size = 14; i = 0
        while (size < 24900000) {
            role = (i % 2 == 0) ? "user" : "assistant"
            m = sprintf("%s{\"role\":\"%s\",\"content\":[{\"text\":\"message %d\"}]}", i ? "," : "", role, i)
            printf "%s", m; size += length(m); i++
        }
        if (i % 2 == 0) printf ",{\"role\":\"user\",\"content\":[{\"text\":\"last\"}]}"
        printf "],\"inferenceConfig\":{\"maxTokens\":16}}"
    }' >"$body"
    # Caches off (the body passes as bytes), then a route whose response cache
    # and prompt-cache planning read it.
    bigbody_with "caches off (overhead.toml)" "$perf/overhead.toml" "$body"
    bigbody_with "response cache and prompt-cache planning on (bigbody-cached.toml)" \
        "$perf/bigbody-cached.toml" "$body"
    rm -f "$body"
}

# bigbody_with LABEL CONFIG BODY: one proxy, four concurrent BODYs, its peak RSS.
bigbody_with() {
    local label="$1" config="$2" body="$3"
    proxy proxy-bigbody "$config" "$FAST_SIM" \
        --listen 127.0.0.1:18095 --admin-listen 127.0.0.1:19099
    local p=$last_pid
    wait_for http://127.0.0.1:19099/healthz
    local bytes idle_kb i curls=()
    bytes=$(wc -c <"$body")
    idle_kb=$(awk '/VmRSS/ { print $2 }' "/proc/$p/status")
    for i in 1 2 3 4; do
        curl -s -o "$out/bigbody-$i.out" -w "request $i: HTTP %{http_code} in %{time_total}s\n" \
            -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
            --data-binary @"$body" \
            "http://127.0.0.1:18095/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse" \
            >"$out/bigbody-$i.status" &
        curls+=($!)
    done
    for i in "${curls[@]}"; do
        wait "$i" || true
    done
    sleep 1
    {
        echo "$label:"
        cat "$out"/bigbody-[1-4].status
        awk -v b="$bytes" -v idle="$idle_kb" '/VmHWM/ {
            peak = $2 / 1024; base = idle / 1024; in_flight = 4 * b / 1048576
            printf "body %.1f MB x 4 = %.1f MB in flight; RSS idle %.1f MB, peak %.1f MB: +%.1f MB, %.1fx the bytes in flight", b / 1048576, in_flight, base, peak, peak - base, (peak - base) / in_flight
        } /VmRSS/ { printf "; settled %.1f MB\n", $2 / 1024 }' "/proc/$p/status"
        awk '{ printf "proxy CPU (utime+stime): %.2f s\n", ($14 + $15) / 100 }' "/proc/$p/stat"
    } | tee -a "$out/results.txt"
    stop "$p"
    # The simulator's request log keeps the last bodies: let them go.
    curl -s -X DELETE "$FAST_SIM/_sim/requests" >/dev/null
}

# What counting rate limits and budgets in Redis adds over counting them in
# process: two proxies with the same generous limits (never refusing), one
# with [cache.redis], requests alternating between them, at 1 and 16
# connections. Needs redis-server (scripts/test.sh installs it).
limits() {
    heading "Rate limits: counters in Redis vs in process (time-scale 0, nothing refused)"
    local port=16399
    start redis redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no
    local r=$last_pid
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    proxy proxy-limits-local "$perf/limits-local.toml" "$FAST_SIM"
    local a=$last_pid
    REDIS_URL="redis://127.0.0.1:$port" proxy proxy-limits-redis "$perf/limits-redis.toml" "$FAST_SIM"
    local b=$last_pid
    wait_for http://127.0.0.1:19096/healthz
    wait_for http://127.0.0.1:19097/healthz
    for c in 1 16; do
        heading "in process (A) vs Redis (B), $c connection(s)"
        record bench load --compare http://127.0.0.1:18096 http://127.0.0.1:18097 --api-key "$KEY" \
            --concurrency "$c" --duration 20s --warmup 200 --out "$out/limits-$c"
    done
    stop "$b"
    stop "$a"
    stop "$r"
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

# instructions_of NAME URL HEALTH LOAD_FLAGS -- COMMAND...: starts COMMAND under
# callgrind, warms it up, and sets `ir` to the user-space instructions it spends
# per request over INSTR_REQUESTS requests of `bench load LOAD_FLAGS` at 4
# connections.
instructions_of() {
    local name="$1" url="$2" health="$3" flags="$4"
    shift 5
    local n="${INSTR_REQUESTS:-2000}" file="$out/callgrind-$name.out"
    rm -f "$file" "$file".*
    start "callgrind-$name" valgrind --tool=callgrind --callgrind-out-file="$file" "$@"
    local pid=$last_pid
    for _ in $(seq 1 600); do
        curl -s -o /dev/null "$health" && break
        sleep 0.2
    done
    # shellcheck disable=SC2086
    bench load --endpoint "$url" --api-key "$KEY" $flags --concurrency 4 --requests 300 \
        >/dev/null 2>&1
    callgrind_control -z "$pid" >/dev/null 2>&1
    # shellcheck disable=SC2086
    bench load --endpoint "$url" --api-key "$KEY" $flags --concurrency 4 --requests "$n" \
        >"$out/callgrind-$name.txt" 2>&1
    callgrind_control -d "$pid" >/dev/null 2>&1
    stop "$pid"
    if ! grep -qE "latency +$n +0 " "$out/callgrind-$name.txt"; then
        echo "$name: not every request was answered; see $out/callgrind-$name.txt" >&2
        exit 1
    fi
    local dump total
    dump="$(ls -t "$file".* | head -1)"
    total="$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')"
    ir=$((total / n))
}

# Instructions per request: deterministic where timings are noisy (a shared
# VM), so two builds compare to within a fraction of a percent. User space
# only: the kernel's share (the sockets) is the same for every server here.
# Under valgrind SHA-256 runs its portable code, not the CPU's SHA
# instructions, so hashing (SigV4, the cache key, API keys) counts several
# times what it costs natively.
instructions() {
    heading "Instructions per request under callgrind (4 connections, ${INSTR_REQUESTS:-2000} requests after 300)"
    ensure_valgrind
    local rows=() ir
    instructions_of static-whole http://127.0.0.1:18090 http://127.0.0.1:18090/ "" -- \
        "$bin/bedrock-bench" baseline --copy "$FAST_SIM" --listen 127.0.0.1:18090
    rows+=("static axum server, Converse:$ir")
    instructions_of static-stream http://127.0.0.1:18090 http://127.0.0.1:18090/ "--stream" -- \
        "$bin/bedrock-bench" baseline --copy "$FAST_SIM" --listen 127.0.0.1:18090
    rows+=("static axum server, ConverseStream:$ir")
    instructions_of forward http://127.0.0.1:18091 http://127.0.0.1:18091/ "--unique" -- \
        "$bin/bedrock-bench" baseline --forward "$FAST_SIM" --listen 127.0.0.1:18091
    rows+=("bare forwarder, pass-through:$ir")
    SIM_URL="$FAST_SIM" instructions_of proxy-pass http://127.0.0.1:18080 \
        http://127.0.0.1:19090/healthz "--unique" -- \
        "$bin/bedrock-proxy" --config "$perf/overhead.toml"
    rows+=("bedrock-proxy, pass-through:$ir")
    SIM_URL="$FAST_SIM" instructions_of proxy-hit http://127.0.0.1:18081 \
        http://127.0.0.1:19091/healthz "" -- \
        "$bin/bedrock-proxy" --config "$perf/cache.toml"
    rows+=("bedrock-proxy, cache hit:$ir")
    SIM_URL="$FAST_SIM" instructions_of proxy-stream-hit http://127.0.0.1:18081 \
        http://127.0.0.1:19091/healthz "--stream" -- \
        "$bin/bedrock-proxy" --config "$perf/cache.toml"
    rows+=("bedrock-proxy, streamed cache hit:$ir")
    {
        printf '%-40s %14s\n' "server, request" "instructions"
        local row label value
        for row in "${rows[@]}"; do
            label="${row%:*}"
            value="${row##*:}"
            printf '%-40s %14s\n' "$label" "$value"
        done
    } | tee -a "$out/results.txt"
}

# profile_us DATA REQUESTS: `µs-per-request<TAB>function` for each function of
# a `perf record -e cpu-clock:u` file (the event counts nanoseconds). Functions
# of one name (generic instances) are summed, and so are the allocators' own
# (the proxy links jemalloc, the forwarder glibc's malloc).
profile_us() {
    local total
    total=$(perf report -i "$1" --stdio 2>/dev/null | awk '/Event count/ && !t { t = $NF } END { print t }')
    perf report -i "$1" --no-children --sort symbol --stdio -g none 2>/dev/null |
        awk -v total="$total" -v n="$2" '/^ +[0-9.]+%/ {
            pct = $1; sub("%", "", pct); $1 = ""; $2 = ""
            sym = substr($0, 3); sub(/ +- +- *$/, "", sym)
            if (sym ~ /^(_rjem_|je_|_int_(malloc|free|realloc)$|(__libc_|__GI___libc_)?(malloc|free|cfree|realloc|calloc)$|malloc_consolidate|tcache_)/)
                sym = "[allocator: malloc and free]"
            us[substr(sym, 1, 100)] += pct / 100 * total / 1000 / n
        }
        END { for (s in us) printf "%.3f\t%s\n", us[s], s }'
}

# sample PID NAME: records PID's user CPU with perf (cpu-clock, 4999 Hz) into
# $out/NAME.data, in the background; the recorder's PID is last_sampler (stop
# it with SIGINT).
sample() {
    perf record -e cpu-clock:u -F 4999 -p "$1" -o "$out/$2.data" >"$out/perf-$2.log" 2>&1 &
    last_sampler=$!
}

# cpu_profile: where the proxy's user CPU per pass-through request goes beyond
# the bare forwarder's. Both are sampled (perf, user time only) through one
# interleaved run in which each serves 20,000 requests; each function's
# samples become µs per request, listed by the difference, largest first.
cpu_profile() {
    local n=20000
    heading "User CPU per pass-through request by function, bare forwarder vs bedrock-proxy (8 connections, one interleaved run, $n requests each)"
    ensure_perf
    proxy proxy-profile "$perf/overhead.toml" "$FAST_SIM"
    local p=$last_pid
    start forward-profile "$bin/bedrock-bench" baseline --forward "$FAST_SIM" --listen 127.0.0.1:18091
    local f=$last_pid
    wait_for http://127.0.0.1:19090/healthz
    wait_for http://127.0.0.1:18091/
    local targets=(http://127.0.0.1:18091 http://127.0.0.1:18080)
    bench load --compare "${targets[@]}" --api-key "$KEY" --unique --concurrency 8 \
        --requests 2000 >/dev/null 2>&1
    sample "$f" profile-forward
    local rf=$last_sampler
    sample "$p" profile-proxy
    local rp=$last_sampler
    sleep 1
    bench load --compare "${targets[@]}" --api-key "$KEY" --unique --concurrency 8 \
        --requests $((2 * n)) --warmup 0 >"$out/profile-load.txt" 2>&1
    kill -INT "$rf" "$rp"
    wait "$rf" "$rp" 2>/dev/null || true
    stop "$p"
    stop "$f"
    profile_us "$out/profile-forward.data" "$n" | LC_ALL=C sort -t$'\t' -k2 >"$out/profile-forward.us"
    profile_us "$out/profile-proxy.data" "$n" | LC_ALL=C sort -t$'\t' -k2 >"$out/profile-proxy.us"
    {
        awk -F'\t' '{ s += $1 } END { printf "user CPU us/req: bare forwarder %.1f, ", s }' "$out/profile-forward.us"
        awk -F'\t' '{ s += $1 } END { printf "bedrock-proxy %.1f\n", s }' "$out/profile-proxy.us"
        printf '%9s %9s %9s  %s\n' "proxy-fwd" "forwarder" "proxy" "function (self time, us per request)"
        LC_ALL=C join -t$'\t' -1 2 -2 2 -a 1 -a 2 -e 0 -o 0,1.1,2.1 "$out/profile-forward.us" "$out/profile-proxy.us" |
            awk -F'\t' '{ printf "%9.3f %9.3f %9.3f  %s\n", $3 - $2, $2, $3, $1 }' | sort -rn | head -"${PROFILE_ROWS:-40}"
    } | tee -a "$out/results.txt"
}

# hot_text: rewrites link/hot-text.ld, the proxy's functions that a
# pass-through request runs (sampled by perf over 20,000 unique requests at 8
# connections), hottest first. build.rs links them ahead of the rest of the
# proxy's code, so the request path's code shares pages and cache lines
# instead of being spread over the 16 MB of code. Each function is named as
# sampled (this build's instances, packed tight), then without its hash
# (`17h*`), so the list holds across builds whose hashes differ (features, the
# lock file); a function it no longer names is linked where it would be
# anyway. Rebuild after rewriting it.
hot_text() {
    local n=20000 file="$root/link/hot-text.ld"
    heading "The pass-through path's functions, hottest first, into link/hot-text.ld ($n requests at 8 connections)"
    ensure_perf
    proxy proxy-hot-text "$perf/overhead.toml" "$FAST_SIM"
    local p=$last_pid
    wait_for http://127.0.0.1:19090/healthz
    bench load --endpoint http://127.0.0.1:18080 --api-key "$KEY" --unique --concurrency 8 \
        --requests 2000 >/dev/null 2>&1
    sample "$p" hot-text
    local rp=$last_sampler
    sleep 1
    bench load --endpoint http://127.0.0.1:18080 --api-key "$KEY" --unique --concurrency 8 \
        --requests "$n" --warmup 0 >"$out/hot-text-load.txt" 2>&1
    kill -INT "$rp"
    wait "$rp" 2>/dev/null || true
    stop "$p"
    local symbols names
    symbols=$(perf report -i "$out/hot-text.data" --no-demangle --no-children --sort dso,symbol \
        --stdio -g none 2>/dev/null |
        awk '/^ +[0-9.]+%/ && $2 == "bedrock-proxy" && $3 == "[.]" { print $4 }')
    # The sampled symbols as they are (this build's instances, packed tight),
    # then each name with any hash (other builds' instances, and the rest of a
    # generic's instances after the hot ones).
    names=$(printf '%s\n%s\n' "$symbols" "$(printf '%s\n' "$symbols" | sed 's/17h[0-9a-f]\{16\}E$/17h*/')" |
        awk 'NF && !seen[$0]++')
    {
        echo "/* The proxy's pass-through path, hottest function first: linked ahead of"
        echo "   the rest of its code by build.rs. Written by bench/perf/run.sh hot-text"
        echo "   ($(git rev-parse --short HEAD 2>/dev/null || echo unknown)); see docs/PERFORMANCE.md. */"
        echo "SECTIONS"
        echo "{"
        echo "  .text.hot : {"
        printf '%s\n' "$names" | sed 's/^/    *(.text./; s/$/)/'
        echo "  }"
        echo "}"
        echo "INSERT BEFORE .text;"
    } >"$file"
    echo "$(printf '%s\n' "$symbols" | wc -l) sampled functions ($(printf '%s\n' "$names" | wc -l) names) written to $file" |
        tee -a "$out/results.txt"
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
        service-tiers) service_tiers ;;
        soak) soak ;;
        hostile) hostile ;;
        bigbody) bigbody ;;
        limits) limits ;;
        litellm) litellm ;;
        instructions) instructions ;;
        cpu-profile) cpu_profile ;;
        hot-text) hot_text ;;
    esac
done
echo
echo "results: $out/results.txt"
