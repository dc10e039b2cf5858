"""Tenants across replicas: two bedrock-proxy processes sharing one
redis-server enforce one set of rate limits and budgets, as boto3, openai and
anthropic clients meet them (issue 19).

The proxies run `limits.clock = "manual"`: the limits' clock stands still
unless `POST /admin/clock` moves it, so per-minute buckets do not drain while a
test runs and a budget's day turns when the test says so.
"""
import datetime
import hashlib
import socket
import subprocess
import textwrap
import time

import anthropic
import openai
import pytest
from botocore.exceptions import ClientError

from conftest import BIN_DIR, HAIKU, HAIKU_BASE, Server, bedrock_client, http_json, start_sim, user

ACCESS_KEY, SECRET = "BPXKLIMITSTEST", "limits-test-secret"
API_KEY = "bpk_limits_acme"
FREE_KEY = "bpk_limits_free"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A redis-server child without persistence, stopped by its PID."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


def config(sim_url, redis_port, tenant_limits, on_shared_failure="open"):
    return textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:0"
        [admin]
        listen = "127.0.0.1:0"
        [logging]
        level = "warn"
        [limits]
        clock = "manual"
        on_shared_failure = "{on_shared_failure}"
        [cache.redis]
        url = "redis://127.0.0.1:{redis_port}"
        timeout = "250ms"
        [upstreams.sim]
        kind = "simulator"
        endpoint = "{sim_url}"
        [[routes]]
        name = "haiku"
        aliases = ["haiku"]
        models = ["{HAIKU}", "{HAIKU_BASE}"]
        upstream = "sim"
        cache = {{ mode = "off" }}
        [[keys]]
        tenant = "acme"
        access_key_id = "{ACCESS_KEY}"
        secret_access_key = "{SECRET}"
        [[keys]]
        tenant = "acme"
        key_sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"
        [[keys]]
        tenant = "free"
        key_sha256 = "{hashlib.sha256(FREE_KEY.encode()).hexdigest()}"
        [[tenants]]
        name = "acme"
    """) + textwrap.dedent(tenant_limits)


class Replica:
    """One proxy process and its clients."""

    def __init__(self, path):
        self.path = path
        self.server = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(path)])
        self.api = self.server.urls["bedrock-proxy"]
        self.admin = self.server.urls["admin"]
        self.boto = bedrock_client(self.api, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET)
        self.oai = openai.OpenAI(base_url=self.api + "/v1", api_key=API_KEY, max_retries=0)
        self.claude = anthropic.Anthropic(base_url=self.api, api_key=API_KEY, max_retries=0)

    def converse(self, text="Say hello.", **kwargs):
        return self.boto.converse(modelId="haiku", messages=user(text), **kwargs)

    def usage(self):
        status, body = http_json("GET", self.admin + "/admin/usage")
        assert status == 200, body
        return body

    def tenant(self, name="acme"):
        return next(t for t in self.usage()["tenants"] if t["tenant"] == name)

    def metrics(self):
        import urllib.request
        with urllib.request.urlopen(self.admin + "/metrics", timeout=10) as r:
            return r.read().decode()

    def advance(self, seconds):
        status, body = http_json("POST", self.admin + "/admin/clock", {"seconds": seconds})
        assert status == 200, body
        return body

    def stop(self):
        self.server.stop()


@pytest.fixture
def stack(tmp_path):
    """A simulator, a redis-server and a function starting proxies on them."""
    sim = start_sim("--time-scale", "0")
    redis = Redis()
    replicas = []

    def start(tenant_limits, on_shared_failure="open"):
        path = tmp_path / f"proxy{len(replicas)}.toml"
        path.write_text(config(sim.url, redis.port, tenant_limits, on_shared_failure))
        replica = Replica(path)
        replicas.append(replica)
        return replica

    yield start, redis
    for r in replicas:
        r.stop()
    redis.stop()
    sim.stop()


def headers_of(error):
    return error.response["ResponseMetadata"]["HTTPHeaders"]


def metric(text, name, *labels):
    for line in text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_tenant_gets_exactly_its_requests_across_two_replicas(stack):
    start, _ = stack
    a = start("requests_per_minute = 5\n")
    b = start("requests_per_minute = 5\n")
    answered = [
        a.converse(), b.converse(),
        a.oai.chat.completions.with_raw_response.create(
            model="haiku", messages=[{"role": "user", "content": "hi"}], max_tokens=20),
        b.claude.messages.with_raw_response.create(
            model="haiku", max_tokens=20, messages=[{"role": "user", "content": "hi"}]),
        a.converse(),
    ]
    assert answered[0]["ResponseMetadata"]["HTTPHeaders"]["x-ratelimit-remaining-requests"] == "4"
    assert answered[2].headers["x-ratelimit-remaining-requests"] == "2"
    assert answered[3].headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert answered[4]["ResponseMetadata"]["HTTPHeaders"]["x-ratelimit-remaining-requests"] == "0"

    with pytest.raises(ClientError) as refused:
        b.converse()
    assert refused.value.response["Error"]["Code"] == "ThrottlingException"
    assert "tenant acme: 5 requests per minute" in refused.value.response["Error"]["Message"]
    h = headers_of(refused.value)
    assert h["x-ratelimit-limit-requests"] == "5"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(h["retry-after"]) <= 12

    with pytest.raises(openai.RateLimitError) as refused:
        a.oai.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.response.headers["retry-after"]

    with pytest.raises(anthropic.RateLimitError) as refused:
        b.claude.messages.create(model="haiku", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert refused.value.response.headers["anthropic-ratelimit-requests-limit"] == "5"
    assert refused.value.response.headers["retry-after"]

    # Both replicas read the same counters; another tenant is not affected.
    for replica in (a, b):
        usage = replica.tenant()
        assert usage["requests"]["remaining"] == 0 and usage["requests"]["used"] == 5
        assert replica.usage()["counters"] == "redis"
    free = openai.OpenAI(base_url=a.api + "/v1", api_key=FREE_KEY, max_retries=0)
    free.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    refusals = sum(metric(r.metrics(), "bedrock_proxy_limit_refusals_total",
                          'tenant="acme"', 'reason="requests_per_minute"') for r in (a, b))
    assert refusals == 3


def test_tokens_per_minute_with_streams_settle_what_was_used(stack):
    start, _ = stack
    a = start("tokens_per_minute = 3000\n")
    b = start("tokens_per_minute = 3000\n")
    used, streams, refusal = 0, 0, None
    for i in range(40):
        replica = (a, b)[i % 2]
        try:
            if i % 4 == 3:
                with replica.claude.messages.stream(model="haiku", max_tokens=300, messages=[
                        {"role": "user", "content": f"Tell me about tides, part {i}."}]) as s:
                    message = s.get_final_message()
                    assert s.response.headers["anthropic-ratelimit-tokens-limit"] == "3000"
                used += message.usage.input_tokens + message.usage.output_tokens
            else:
                stream = replica.oai.chat.completions.create(
                    model="haiku", stream=True, max_tokens=300, stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": f"Tell me about tides, part {i}."}])
                assert stream.response.headers["x-ratelimit-limit-tokens"] == "3000"
                usage = [c.usage for c in stream if c.usage][-1]
                used += usage.prompt_tokens + usage.completion_tokens
            streams += 1
        except openai.RateLimitError as e:
            refusal = e
            break
        except anthropic.RateLimitError as e:
            refusal = e
            break
    assert refusal is not None and streams >= 3, f"{streams} streams, none refused"
    assert "3000 tokens per minute" in str(refusal)
    assert int(refusal.response.headers.get("x-ratelimit-remaining-tokens")
               or refusal.response.headers["anthropic-ratelimit-tokens-remaining"]) < 320
    # Each stream settled its actual usage in the shared bucket (the clock
    # stands still, so nothing drained): the estimates are gone.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tokens = b.tenant()["tokens"]
        if abs(tokens["used"] - used) < 0.01:
            break
        time.sleep(0.05)
    assert abs(tokens["used"] - used) < 0.01, (tokens, used)
    assert tokens["remaining"] == 3000 - used


def seconds_to_next_utc_day(clock):
    now = datetime.datetime.fromtimestamp(clock["now_ms"] / 1000, datetime.timezone.utc)
    tomorrow = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds() + 1


def test_a_spent_budget_refuses_until_the_utc_day_turns(stack):
    start, _ = stack
    a = start("usd_per_day = 0.002\nusd_per_month = 50\n")
    b = start("usd_per_day = 0.002\nusd_per_month = 50\n")
    spent, served = 0.0, 0
    for i in range(100):
        replica = (a, b)[i % 2]
        try:
            r = replica.converse(f"Write a long story, number {i}.", inferenceConfig={"maxTokens": 300})
        except ClientError as e:
            refused = e
            break
        u = r["usage"]
        spent += (u["inputTokens"] * 0.80 + u["outputTokens"] * 4.00) / 1e6
        served += 1
    else:
        pytest.fail("the budget never ran out")
    assert served >= 2
    assert spent >= 0.002
    assert refused.response["Error"]["Code"] == "ThrottlingException"
    message = refused.response["Error"]["Message"]
    assert "The daily budget of tenant acme ($0.002 per day) is spent" in message, message
    assert "It renews at " in message
    assert int(headers_of(refused)["retry-after"]) > 0

    # openai clients hear it as insufficient_quota.
    with pytest.raises(openai.RateLimitError) as e:
        a.oai.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "insufficient_quota"

    for replica in (a, b):
        today = replica.tenant()["spend"]
        assert abs(today["today_usd"] - spent) < 1e-6, (today, spent)
    refused_total = sum(metric(r.metrics(), "bedrock_proxy_limit_refusals_total",
                               'tenant="acme"', 'reason="usd_per_day"') for r in (a, b))
    assert refused_total == 2
    assert metric(a.metrics(), "bedrock_proxy_budget_used_ratio", 'tenant="acme"', 'period="day"') >= 1
    assert metric(a.metrics(), "bedrock_proxy_spend_usd", 'tenant="acme"', 'route="haiku"') > 0

    # The next UTC day on both replicas' clocks: the budget is back.
    for replica in (a, b):
        clock = http_json("GET", replica.admin + "/admin/clock")[1]
        replica.advance(seconds_to_next_utc_day(clock))
    a.converse("And one more.")
    spend = b.tenant()["spend"]
    assert spend["today_usd"] > 0 and spend["today_usd"] < 0.002
    assert spend["this_month_usd"] >= spent or spend["month"] != today.get("month")


def test_redis_stopped_open_or_closed_then_counting_resumes(stack):
    start, redis = stack
    limits = "requests_per_minute = 3\nusd_per_month = 100\n"
    opened = start(limits, on_shared_failure="open")
    closed = start(limits, on_shared_failure="closed")
    opened.converse()
    assert closed.tenant()["requests"]["used"] == 1

    port = redis.port
    redis.stop()
    # open: the replica counts on alone from what Redis last said (1 used).
    opened.converse()
    opened.converse()
    with pytest.raises(ClientError) as refused:
        opened.converse()
    assert refused.value.response["Error"]["Code"] == "ThrottlingException"
    assert opened.usage()["counters"] == "local (redis unreachable)"
    # closed: limited requests are refused; unlimited tenants are served.
    with pytest.raises(ClientError) as refused:
        closed.converse()
    assert refused.value.response["Error"]["Code"] == "ServiceUnavailableException"
    assert headers_of(refused.value)["retry-after"] == "1"
    free = openai.OpenAI(base_url=closed.api + "/v1", api_key=FREE_KEY, max_retries=0)
    free.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    assert metric(closed.metrics(), "bedrock_proxy_limit_refusals_total",
                  'reason="shared_unavailable"') >= 1

    # Redis is back (empty: it kept nothing): both replicas share counts again.
    restarted = Redis(port)
    stack_redis_stop = restarted.stop
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(r.usage()["counters"] == "redis" for r in (opened, closed)):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the replicas never went back to Redis")
        # The spend counted while Redis was away was added to it.
        assert closed.tenant()["spend"]["this_month_usd"] > 0
        closed.converse()
        opened.converse()
        closed.converse()
        with pytest.raises(ClientError) as refused:
            opened.converse()
        assert refused.value.response["Error"]["Code"] == "ThrottlingException"
        assert closed.tenant()["requests"]["used"] == 3
    finally:
        stack_redis_stop()


def test_a_reload_lowering_a_limit_applies_to_the_next_request(stack):
    start, _ = stack
    a = start("requests_per_minute = 10\n")
    for _ in range(3):
        a.converse()
    text = a.path.read_text().replace("requests_per_minute = 10", "requests_per_minute = 3")
    a.path.write_text(text)
    status, body = http_json("POST", a.admin + "/admin/reload")
    assert status == 200 and body["reloaded"], body
    with pytest.raises(ClientError) as refused:
        a.converse()
    assert "3 requests per minute" in refused.value.response["Error"]["Message"]
    usage = a.tenant()
    assert usage["limits"]["requests_per_minute"] == 3
    assert usage["requests"]["used"] == 3
