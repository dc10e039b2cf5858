#!/bin/sh
# Demo traffic for deploy/compose.yaml's `demo` profile, so the dashboard has
# something to show: repeated questions (response-cache hits), new ones
# (misses), streams, OpenAI-style calls, a long fixed system prompt (Bedrock
# prompt-cache writes, then reads), and now and then a fault scripted on the
# embedded simulator (a throttle that falls back to standard, a slow first byte
# that fires a hedge, an internal error that reaches the client). POSIX sh and
# curl only; one line per request on stdout: iteration, route, operation, status.
set -u

PROXY_URL=${PROXY_URL:-http://proxy:8080}
ADMIN_URL=${ADMIN_URL:-http://proxy:9090}
API_KEY=${API_KEY:-demo}
ADMIN_TOKEN=${ADMIN_TOKEN:-demo-admin}
ITERATIONS=${LOADGEN_ITERATIONS:-0} # 0: run until stopped
PAUSE=${LOADGEN_PAUSE:-0.5}         # seconds between requests

# POST $2 to the proxy's path $1; prints the HTTP status (000 when no answer).
call() {
  curl -sS -o /dev/null -w '%{http_code}' --max-time 60 \
    -H "authorization: Bearer $API_KEY" -H 'content-type: application/json' \
    --data-binary "$2" "$PROXY_URL$1" 2>/dev/null || true
}

# Adds a fault rule to the embedded simulator (docs/SIMULATOR.md).
fault() {
  curl -sS -o /dev/null --max-time 10 \
    -H "authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
    --data-binary "$1" "$ADMIN_URL/_sim/faults" 2>/dev/null || true
}

converse_body() { # text temperature-json
  printf '{"messages":[{"role":"user","content":[{"text":"%s"}]}],"inferenceConfig":{%s"maxTokens":120}}' "$1" "$2"
}

until curl -sf --max-time 5 "$ADMIN_URL/readyz" >/dev/null 2>&1; do
  echo "waiting for $ADMIN_URL/readyz"
  sleep 1
done

# About 6,000 tokens: above every model's prompt-cache minimum.
system=$(n=0; while [ $n -lt 400 ]; do
  printf 'Rule %d: answer politely, cite the manual, and keep every answer short. ' "$n"
  n=$((n + 1))
done)

i=1
while [ "$ITERATIONS" -eq 0 ] || [ "$i" -le "$ITERATIONS" ]; do
  case $((i % 4)) in
    0) route=haiku ;;
    1) route=sonnet ;;
    2) route=llama-70b ;;
    *) route=nova-pro ;;
  esac
  # A fixed set of questions repeats (cache hits); every fifth is new (a miss).
  if [ $((i % 5)) -eq 0 ]; then
    question="Question $i: what changed since the last deploy?"
  else
    question="Question $((i % 12)): how does a response cache decide what to reuse?"
  fi
  [ $((i % 50)) -eq 10 ] && fault '{"model":"haiku","latency":"optimized","fault":"throttle","times":2}'
  [ $((i % 120)) -eq 60 ] && fault '{"model":"haiku","latency":"optimized","fault":"slow-first-byte","ms":3000,"times":1}'
  [ $((i % 80)) -eq 40 ] && fault '{"model":"nova-pro","fault":"internal","times":1}'

  if [ $((i % 7)) -eq 0 ]; then
    op=prompt-cache
    route=haiku
    body=$(printf '{"system":[{"text":"%s"}],"messages":[{"role":"user","content":[{"text":"Turn %d"}]}],"inferenceConfig":{"maxTokens":60}}' "$system" "$i")
    status=$(call "/model/$route/converse" "$body")
  elif [ $((i % 6)) -eq 0 ]; then
    op=chat-completions
    body=$(printf '{"model":"%s","temperature":0,"max_tokens":120,"messages":[{"role":"user","content":"%s"}]}' "$route" "$question")
    status=$(call "/v1/chat/completions" "$body")
  elif [ $((i % 3)) -eq 0 ]; then
    op=converse-stream
    status=$(call "/model/$route/converse-stream" "$(converse_body "$question" '"temperature":0,')")
  else
    op=converse
    status=$(call "/model/$route/converse" "$(converse_body "$question" '"temperature":0,')")
  fi
  echo "$i $route $op $status"
  i=$((i + 1))
  sleep "$PAUSE"
done
