"""OpenTelemetry traces and CloudWatch EMF lines from the real binary.

An OTLP/HTTP receiver in the test (protobuf, decoded with `opentelemetry-proto`)
collects what bedrock-proxy exports while boto3 and the OpenAI SDK call it with
W3C `traceparent` headers of their own, in front of bedrock-sim. The spans
must follow the GenAI semantic conventions, continue the client's trace, have
one child per upstream attempt, and that child's context must be what the
upstream (the simulator's request log) received. The same proxy writes one EMF
line per request on stdout, which must parse as CloudWatch reads it.
"""
import http.server
import json
import os
import secrets
import textwrap
import threading
import time

import pytest
from botocore.exceptions import ClientError
from openai import OpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import BIN_DIR, HAIKU, Server, bedrock_client, http_json, start_sim, user

SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
SERVER, CLIENT = 2, 3  # Span.SpanKind
STATUS_ERROR = 2


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class Collector:
    """An OTLP/HTTP trace receiver: `POST /v1/traces` with protobuf bodies."""

    def __init__(self):
        self.spans, self.headers, self.resources = [], [], []
        self.lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    collector.headers.append(dict(self.headers))
                    for rs in request.resource_spans:
                        collector.resources.append({a.key: value(a.value) for a in rs.resource.attributes})
                        for ss in rs.scope_spans:
                            collector.spans.extend(decode(s) for s in ss.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def trace(self, trace_id, count, where=lambda span: True):
        """The spans of `trace_id`, once `count` of them (matching `where`) have
        arrived (polled: the proxy exports in batches, off the request path)."""
        for _ in range(200):
            with self.lock:
                got = [s for s in self.spans if s["trace_id"] == trace_id]
            if len([s for s in got if where(s)]) >= count:
                return got
            time.sleep(0.05)
        pytest.fail(f"expected {count} spans of trace {trace_id}, got {got}")

    def stop(self):
        self.server.shutdown()


def decode(span):
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent": span.parent_span_id.hex(),
        "name": span.name,
        "kind": span.kind,
        "start": span.start_time_unix_nano,
        "end": span.end_time_unix_nano,
        "attrs": {a.key: value(a.value) for a in span.attributes},
        "events": [(e.name, {a.key: value(a.value) for a in e.attributes}) for e in span.events],
        "status": span.status.code,
    }


def traceparent():
    """A client's own trace: its trace id, its span id and the header it sends."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def with_traceparent(client, header):
    """boto3, as an application instrumented with OpenTelemetry sends it."""
    def add(request, **kwargs):
        request.headers["traceparent"] = header
    client.meta.events.register("before-sign.bedrock-runtime", add)
    return client


def config(sim_url, collector_url, capture=False):
    return textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:0"
        auth = "none"
        [admin]
        listen = "127.0.0.1:0"
        [logging]
        cloudwatch_emf = true
        cloudwatch_namespace = "BedrockProxyTest"
        [tracing]
        endpoint = "{collector_url}"
        headers = {{ "x-collector-key" = "${{COLLECTOR_KEY}}" }}
        service_name = "proxy-under-test"
        capture_content = {"true" if capture else "false"}
        [upstreams.sim]
        kind = "simulator"
        endpoint = "{sim_url}"
        [[routes]]
        name = "haiku"
        aliases = ["haiku"]
        models = ["{HAIKU}"]
        upstream = "sim"
        latency = "optimized"
        fallback = [{{ latency = "standard" }}]
        retries = 1
        cache = {{ mode = "deterministic", ttl = "1h" }}
        [[routes]]
        name = "sonnet"
        aliases = ["sonnet"]
        models = ["{SONNET}"]
        upstream = "sim"
    """)


class EmfLines:
    """Reads the proxy's stdout after `ready`: EMF lines, one JSON object each."""

    def __init__(self, proxy):
        self.lines = []
        threading.Thread(target=self._read, args=(proxy.proc.stdout,), daemon=True).start()

    def _read(self, stdout):
        for line in stdout:
            self.lines.append(line)

    def documents(self, count):
        for _ in range(200):
            docs = [json.loads(line) for line in list(self.lines) if line.startswith("{")]
            if len(docs) >= count:
                return docs
            time.sleep(0.05)
        pytest.fail(f"expected {count} EMF lines, got {self.lines}")


@pytest.fixture
def traced(tmp_path):
    collector = Collector()
    sim = start_sim("--time-scale", "0")
    path = tmp_path / "proxy.toml"
    path.write_text(config(sim.url, collector.url))
    # Batches every 50ms (the standard variable) so the test waits little.
    proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(path)],
                   env={"COLLECTOR_KEY": "sesame", "OTEL_BSP_SCHEDULE_DELAY": "50"})
    emf = EmfLines(proxy)
    yield proxy, sim, collector, emf
    proxy.stop()
    sim.stop()
    collector.stop()


def one(spans, **match):
    found = [s for s in spans if all(s.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, spans)
    return found[0]


def children(spans, parent):
    return sorted((s for s in spans if s["parent"] == parent["span_id"]), key=lambda s: s["start"])


def last_upstream_request(sim):
    status, logged = http_json("GET", f"{sim.url}/_sim/requests?limit=1")
    assert status == 200
    return logged["requests"][-1]


def test_spans_follow_the_genai_conventions_continue_the_clients_trace_and_reach_the_upstream(traced):
    proxy, sim, collector, emf = traced
    prompt = f"What is a response cache? {secrets.token_hex(4)}"

    # A miss: the request span under the client's span, one attempt span under it.
    trace_id, client_span, header = traceparent()
    brt = with_traceparent(bedrock_client(proxy.url), header)
    answer = brt.converse(modelId="haiku", messages=user(prompt), inferenceConfig={"maxTokens": 60, "temperature": 0})
    spans = collector.trace(trace_id, 2)
    request = one(spans, kind=SERVER)
    assert request["parent"] == client_span
    a = request["attrs"]
    assert request["name"] == "chat haiku"
    assert a["gen_ai.system"] == a["gen_ai.provider.name"] == "aws.bedrock"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "haiku" and a["gen_ai.response.model"] == HAIKU
    assert a["gen_ai.request.max_tokens"] == 60 and a["gen_ai.request.temperature"] == 0
    usage = answer["usage"]
    assert a["gen_ai.usage.output_tokens"] == usage["outputTokens"] > 0
    cached = usage.get("cacheReadInputTokens", 0) + usage.get("cacheWriteInputTokens", 0)
    assert a["gen_ai.usage.input_tokens"] == usage["inputTokens"] + cached > 0
    assert a["gen_ai.response.finish_reasons"] == [answer["stopReason"]]
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == int(sim.url.rsplit(":", 1)[1])
    assert a["bedrock_proxy.cache"] == "miss" and a["bedrock_proxy.route"] == "haiku"
    assert a["bedrock_proxy.latency_tier.requested"] == a["bedrock_proxy.latency_tier.served"] == "optimized"
    assert a["http.response.status_code"] == 200 and request["status"] != STATUS_ERROR
    (attempt,) = children(spans, request)
    assert attempt["kind"] == CLIENT and attempt["name"] == f"chat {HAIKU}"
    assert attempt["attrs"]["bedrock_proxy.target"] == "primary"
    assert attempt["attrs"]["bedrock_proxy.latency_tier.sent"] == "optimized"
    assert attempt["attrs"]["bedrock_proxy.outcome"] == "ok"
    # The upstream received the attempt span's context, in the client's trace.
    upstream = last_upstream_request(sim)
    assert upstream["headers"]["traceparent"] == f"00-{trace_id}-{attempt['span_id']}-01"
    assert "tracestate" not in upstream["headers"], "the client sent none"
    # The exporter sent the configured header and service name.
    assert collector.headers[0].get("x-collector-key") == "sesame"
    assert collector.resources[0]["service.name"] == "proxy-under-test"

    # The same request again: a hit, answered without an attempt.
    hit_trace, _, hit_header = traceparent()
    requests = 1
    for _ in range(200):  # bounded; a hit normally comes on the second try
        resp = with_traceparent(bedrock_client(proxy.url), hit_header).converse(
            modelId="haiku", messages=user(prompt), inferenceConfig={"maxTokens": 60, "temperature": 0})
        requests += 1
        if resp["ResponseMetadata"]["HTTPHeaders"]["x-cache"] == "hit":
            break
        time.sleep(0.05)  # the first answer's store lands off the response path
    is_hit = lambda span: span["attrs"].get("bedrock_proxy.cache") == "hit"  # noqa: E731
    spans = collector.trace(hit_trace, 1, where=is_hit)
    (hit,) = [s for s in spans if is_hit(s)]
    assert hit["attrs"]["bedrock_proxy.cache.tier"] == "l1" and hit["parent"] != ""
    assert hit["attrs"]["gen_ai.usage.output_tokens"] == usage["outputTokens"], "the stored answer's usage"
    assert not children(spans, hit)

    # A stream: the span stays open until the stream ends (usage and the stop
    # reason come in its last events).
    stream_trace, _, stream_header = traceparent()
    resp = with_traceparent(bedrock_client(proxy.url), stream_header).converse_stream(
        modelId="haiku", messages=user("Stream a haiku"), inferenceConfig={"maxTokens": 60})
    events = list(resp["stream"])
    metadata = events[-1]["metadata"]
    spans = collector.trace(stream_trace, 2)
    request = one(spans, kind=SERVER)
    assert request["attrs"]["gen_ai.request.stream"] is True
    assert request["attrs"]["gen_ai.usage.output_tokens"] == metadata["usage"]["outputTokens"]
    assert request["attrs"]["gen_ai.response.finish_reasons"] == [events[-2]["messageStop"]["stopReason"]]
    assert request["attrs"]["gen_ai.response.time_to_first_chunk"] > 0
    assert request["attrs"]["bedrock_proxy.outcome"] == "complete"
    (attempt,) = children(spans, request)
    assert attempt["end"] <= request["end"]

    # Throttled twice on the optimized tier: two failed attempts, then the
    # standard fallback; the move is an event on the request span.
    http_json("POST", f"{sim.url}/_sim/faults", {"model": "haiku", "latency": "optimized", "fault": "throttle", "times": 2})
    fb_trace, _, fb_header = traceparent()
    with_traceparent(bedrock_client(proxy.url), fb_header).converse(modelId="haiku", messages=user("Fall back"))
    spans = collector.trace(fb_trace, 4)
    request = one(spans, kind=SERVER)
    attempts = children(spans, request)
    assert [(s["attrs"]["bedrock_proxy.target"], s["attrs"]["bedrock_proxy.outcome"]) for s in attempts] == [
        ("primary", "throttled"), ("primary", "throttled"), ("fallback1", "ok")]
    assert attempts[0]["status"] == STATUS_ERROR and attempts[0]["attrs"]["error.type"] == "throttled"
    assert [s["attrs"]["bedrock_proxy.latency_tier.sent"] for s in attempts] == ["optimized", "optimized", "standard"]
    assert ("bedrock_proxy.fallback", {"bedrock_proxy.from": "primary", "bedrock_proxy.to": "fallback1",
                                       "bedrock_proxy.reason": "throttled"}) in request["events"]
    assert request["attrs"]["bedrock_proxy.attempts"] == 3
    assert request["attrs"]["bedrock_proxy.latency_tier.requested"] == "optimized"
    assert request["attrs"]["bedrock_proxy.latency_tier.served"] == "standard"

    # An upstream error reaches the client: the request span is in error.
    http_json("POST", f"{sim.url}/_sim/faults", {"model": "sonnet", "fault": "internal", "times": 1})
    err_trace, _, err_header = traceparent()
    with pytest.raises(ClientError):
        with_traceparent(bedrock_client(proxy.url), err_header).converse(modelId="sonnet", messages=user("Fail"))
    spans = collector.trace(err_trace, 2)
    request = one(spans, kind=SERVER)
    assert request["status"] == STATUS_ERROR
    assert request["attrs"]["http.response.status_code"] == 500
    assert request["attrs"]["error.type"] == "internal"

    # The OpenAI SDK on the same route: same conventions, the API's operation beside.
    oai_trace, oai_parent, oai_header = traceparent()
    oai = OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    oai.chat.completions.create(model="haiku", max_tokens=30, messages=[{"role": "user", "content": "Hi there"}],
                                extra_headers={"traceparent": oai_header})
    request = one(collector.trace(oai_trace, 2), kind=SERVER)
    assert request["parent"] == oai_parent and request["name"] == "chat haiku"
    assert request["attrs"]["bedrock_proxy.operation"] == "chat.completions"

    # Nothing the clients wrote or read is in any span: content was not asked for.
    with collector.lock:
        exported = json.dumps([s["attrs"] for s in collector.spans] + [s["events"] for s in collector.spans])
    assert prompt not in exported and "Stream a haiku" not in exported and "Hi there" not in exported
    assert "gen_ai.input.messages" not in exported

    # EMF: one line per request.
    requests += 4  # the stream, the fallback, the error, the OpenAI call
    docs = emf.documents(requests)
    assert len(docs) == requests
    for doc in docs:
        (directive,) = doc["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "BedrockProxyTest"
        assert directive["Dimensions"] == [["Route", "Tier"], ["Route"]]
        assert isinstance(doc["_aws"]["Timestamp"], int)
        for metric in directive["Metrics"]:
            assert isinstance(doc[metric["Name"]], (int, float)), metric
        assert doc["Route"] in ("haiku", "sonnet") and doc["Tier"] in ("optimized", "standard")
    first = next(d for d in docs if d.get("TraceId") == trace_id)
    assert first["Cache"] == "miss" and first["CacheHit"] == 0
    assert first["TTFT"] > 0 and first["OutputTokensPerSecond"] > 0 and first["CostUSD"] > 0
    assert first["OutputTokens"] == usage["outputTokens"] and first["Tier"] == "optimized"
    hit = [d for d in docs if d.get("TraceId") == hit_trace][-1]
    assert hit["CacheHit"] == 1 and hit["CacheSavedUSD"] > 0 and "TTFT" not in hit
    failed = next(d for d in docs if d.get("TraceId") == err_trace)
    assert failed["ServerErrors"] == 1 and failed["Status"] == 500 and failed["Route"] == "sonnet"
    fell = next(d for d in docs if d.get("TraceId") == fb_trace)
    assert fell["Tier"] == "standard" and fell["Attempts"] == 3 and fell["Target"] == "fallback1"


def test_prompts_and_completions_are_in_spans_only_when_asked(tmp_path):
    collector = Collector()
    sim = start_sim("--time-scale", "0")
    path = tmp_path / "proxy.toml"
    path.write_text(config(sim.url, collector.url, capture=True))
    proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(path)],
                   env={"COLLECTOR_KEY": "sesame", "OTEL_BSP_SCHEDULE_DELAY": "50"})
    try:
        trace_id, _, header = traceparent()
        brt = with_traceparent(bedrock_client(proxy.url), header)
        answer = brt.converse(modelId="sonnet", messages=user("Tell me about caches"),
                              system=[{"text": "Answer in one line"}])
        request = one(collector.trace(trace_id, 2), kind=SERVER)
        assert json.loads(request["attrs"]["gen_ai.input.messages"]) == [
            {"role": "user", "parts": [{"type": "text", "content": "Tell me about caches"}]}]
        assert json.loads(request["attrs"]["gen_ai.system_instructions"]) == [
            {"type": "text", "content": "Answer in one line"}]
        (output,) = json.loads(request["attrs"]["gen_ai.output.messages"])
        assert output["role"] == "assistant"
        assert output["parts"][0]["content"] == answer["output"]["message"]["content"][0]["text"]

        stream_trace, _, stream_header = traceparent()
        resp = with_traceparent(bedrock_client(proxy.url), stream_header).converse_stream(
            modelId="sonnet", messages=user("Stream about caches"))
        text = "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in resp["stream"] if "contentBlockDelta" in e)
        request = one(collector.trace(stream_trace, 2), kind=SERVER)
        (output,) = json.loads(request["attrs"]["gen_ai.output.messages"])
        assert output["parts"] == [{"type": "text", "content": text}] and text
    finally:
        proxy.stop()
        sim.stop()
        collector.stop()


def test_without_tracing_configured_nothing_is_exported_and_no_traceparent_goes_upstream(tmp_path):
    collector = Collector()
    sim = start_sim("--time-scale", "0")
    path = tmp_path / "proxy.toml"
    text = config(sim.url, collector.url)
    path.write_text(text[:text.index("[tracing]")] + text[text.index("[upstreams.sim]"):])
    env = {k: "" for k in os.environ if k.startswith("OTEL_")}
    proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(path)], env=env)
    try:
        _, _, header = traceparent()
        with_traceparent(bedrock_client(proxy.url), header).converse(modelId="sonnet", messages=user("Untraced"))
        assert "traceparent" not in last_upstream_request(sim)["headers"]
        # A proxy that exports sends what is queued when it stops: after the
        # stop, a span would have arrived.
        proxy.stop()
        assert not collector.spans and not collector.headers
    finally:
        proxy.stop()
        sim.stop()
        collector.stop()
