"""boto3 apps pointed at bedrock-proxy, changing nothing but endpoint_url.

Two setups: demo mode (the binary with no arguments: embedded simulator, no
auth), and a real config in front of a separate bedrock-sim with API keys and
proxy-issued SigV4 keys.
"""
import hashlib
import json
import os
import signal
import subprocess
import textwrap
import time

import pytest
from botocore.exceptions import ClientError

from conftest import BIN_DIR, HAIKU, Server, bedrock_client, http_json, start_sim, user

ACCESS_KEY, SECRET = "BPXKPYTESTS", "python-proxy-secret"
API_KEY = "bpk_python_tests_key"


@pytest.fixture
def demo():
    server = Server([str(BIN_DIR / "bedrock-proxy"), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
    yield server
    server.stop()


def self_signed_cert(directory):
    """A certificate for 127.0.0.1 and its key, made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def configured(tmp_path):
    """The proxy on HTTPS with API keys and a proxy-issued SigV4 key, in front of bedrock-sim."""
    sim = start_sim("--time-scale", "0")
    cert, key = self_signed_cert(tmp_path)
    config = tmp_path / "proxy.toml"
    config.write_text(textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:0"
        tls_cert = "{cert}"
        tls_key = "{key}"
        [admin]
        listen = "127.0.0.1:0"
        [upstreams.sim]
        kind = "simulator"
        endpoint = "{sim.url}"
        [[routes]]
        name = "haiku"
        aliases = ["haiku"]
        models = ["{HAIKU}"]
        upstream = "sim"
        [[keys]]
        tenant = "signed"
        access_key_id = "{ACCESS_KEY}"
        secret_access_key = "${{PY_TEST_SECRET}}"
        [[keys]]
        tenant = "bearer"
        key_sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"
    """))
    proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(config)], env={"PY_TEST_SECRET": SECRET})
    yield proxy, sim, str(cert)
    proxy.stop()
    sim.stop()


def test_demo_mode_runs_an_unchanged_boto3_app(demo):
    api, admin = demo.urls["bedrock-proxy"], demo.urls["admin"]
    client = bedrock_client(api)
    resp = client.converse(modelId="haiku", messages=user("Hello"), inferenceConfig={"maxTokens": 40})
    assert resp["output"]["message"]["content"][0]["text"]
    headers = resp["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-proxy-route"] == "haiku"

    events = [next(iter(e)) for e in client.converse_stream(
        modelId=HAIKU, messages=user("Hello"), inferenceConfig={"maxTokens": 40})["stream"]]
    assert events[0] == "messageStart" and events[-1] == "metadata"

    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 30,
                       "messages": [{"role": "user", "content": "Hi"}]})
    assert json.loads(client.invoke_model(modelId="haiku", body=body)["body"].read())["type"] == "message"
    chunks = [json.loads(e["chunk"]["bytes"])["type"]
              for e in client.invoke_model_with_response_stream(modelId="haiku", body=body)["body"]]
    assert chunks[-1] == "message_stop"
    assert client.count_tokens(modelId="haiku", input={"converse": {"messages": user("Hello")}})["inputTokens"] > 0

    # Demo mode exposes the embedded simulator's control plane on the admin port.
    # A throttled call is the proxy's to absorb: the demo route retries it (and
    # would fall back to standard), so the app just gets its answer.
    assert http_json("POST", f"{admin}/_sim/faults", {"model": "haiku", "fault": "throttle", "times": 1})[0] == 201
    answer = client.converse(modelId="haiku", messages=user("Hello"))
    assert answer["stopReason"] == "end_turn"
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-proxy-attempts"] == "2"
    # An error the route does not fall back on reaches the app typed, as Bedrock's would.
    assert http_json("POST", f"{admin}/_sim/faults", {"model": "haiku", "fault": "validation", "times": 1})[0] == 201
    with pytest.raises(client.exceptions.ValidationException):
        client.converse(modelId="haiku", messages=user("Hello"))
    status, log = http_json("GET", f"{admin}/_sim/requests?limit=1")
    assert log["requests"][0]["model_id"] == HAIKU

    status, ready = http_json("GET", f"{admin}/readyz")
    assert status == 200 and ready["ready"]


def test_signed_and_bearer_clients_over_https(configured):
    proxy, sim, ca = configured
    assert proxy.url.startswith("https://")
    signed = bedrock_client(proxy.url, verify=ca, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET)
    assert signed.converse(modelId="haiku", messages=user("hi"))["stopReason"]

    tampered = bedrock_client(proxy.url, verify=ca, aws_access_key_id=ACCESS_KEY, aws_secret_access_key="wrong")
    with pytest.raises(ClientError) as info:
        tampered.converse(modelId="haiku", messages=user("hi"))
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    # boto3 sends Bedrock API keys from AWS_BEARER_TOKEN_BEDROCK as a bearer
    # token, and only over HTTPS.
    os.environ["AWS_BEARER_TOKEN_BEDROCK"] = API_KEY
    try:
        bearer = bedrock_client(proxy.url, verify=ca)
        assert bearer.converse(modelId="haiku", messages=user("hi"))["stopReason"]
    finally:
        del os.environ["AWS_BEARER_TOKEN_BEDROCK"]

    with pytest.raises(signed.exceptions.ValidationException, match="no route"):
        signed.converse(modelId="no-such-model", messages=user("hi"))


def test_sigterm_lets_a_stream_finish(tmp_path):
    sim = start_sim("--time-scale", "1", "--seed", "1")
    config = tmp_path / "proxy.toml"
    config.write_text(textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:0"
        auth = "none"
        [admin]
        listen = "127.0.0.1:0"
        [upstreams.sim]
        kind = "simulator"
        endpoint = "{sim.url}"
        [[routes]]
        name = "haiku"
        aliases = ["haiku"]
        upstream = "sim"
        upstream_model = "{HAIKU}"
    """))
    proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(config)])
    try:
        client = bedrock_client(proxy.url)
        stream = client.converse_stream(modelId="haiku", messages=user("Tell me about caching."))["stream"]
        events = iter(stream)
        first = next(events)
        assert "messageStart" in first
        proxy.proc.send_signal(signal.SIGTERM)
        rest = [next(iter(e)) for e in events]
        assert rest[-2:] == ["messageStop", "metadata"], "the stream completed after SIGTERM"
        assert proxy.proc.wait(timeout=30) == 0
    finally:
        proxy.stop()
        sim.stop()


def test_demo_mode_answers_repeats_from_the_cache(demo):
    api, admin = demo.urls["bedrock-proxy"], demo.urls["admin"]
    client = bedrock_client(api)
    ask = dict(modelId="nova-micro", messages=user("What is a cache?"),
               inferenceConfig={"temperature": 0, "maxTokens": 64})
    first = client.converse(**ask)
    second = client.converse(**ask)
    assert first["ResponseMetadata"]["HTTPHeaders"]["x-cache"] == "miss"
    assert second["ResponseMetadata"]["HTTPHeaders"]["x-cache"] == "hit"
    assert second["output"] == first["output"]
    assert second["usage"] == first["usage"]

    # A streaming request is served from the same entry, as a valid event stream.
    stream = client.converse_stream(**ask)
    assert stream["ResponseMetadata"]["HTTPHeaders"]["x-cache"] == "hit"
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in stream["stream"] if "contentBlockDelta" in e)
    assert text == first["output"]["message"]["content"][0]["text"]

    status, stats = http_json("GET", f"{admin}/admin/cache")
    assert status == 200 and stats["entries"] >= 1 and stats["hits"] >= 2
    status, received = http_json("GET", f"{admin}/_sim/requests")
    assert sum(1 for r in received["requests"] if r["body"]["messages"] == ask["messages"]) == 1


def test_sighup_reloads_the_config(tmp_path):
    """The config path is a symlink into another directory, so the file watcher
    (which watches the link's directory) does not see the edit: only SIGHUP does."""
    sim = start_sim("--time-scale", "0")
    real = tmp_path / "real" / "proxy.toml"
    real.parent.mkdir()
    link = tmp_path / "etc" / "proxy.toml"
    link.parent.mkdir()
    link.symlink_to(real)

    def write(model):
        real.write_text(textwrap.dedent(f"""
            [server]
            listen = "127.0.0.1:0"
            auth = "none"
            [admin]
            listen = "127.0.0.1:0"
            [upstreams.sim]
            kind = "simulator"
            endpoint = "{sim.url}"
            [[routes]]
            name = "main"
            aliases = ["main"]
            upstream = "sim"
            upstream_model = "{model}"
        """))

    write(HAIKU)
    proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(link)])
    try:
        admin = proxy.urls["admin"]
        before = http_json("GET", f"{admin}/admin/config")[1]["hash"]
        write("us.amazon.nova-micro-v1:0")
        time.sleep(0.6)
        assert http_json("GET", f"{admin}/admin/config")[1]["hash"] == before
        proxy.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if http_json("GET", f"{admin}/admin/config")[1]["hash"] != before:
                break
            time.sleep(0.05)
        else:
            pytest.fail("SIGHUP did not reload the config")
        client = bedrock_client(proxy.url)
        client.converse(modelId="main", messages=user("hi"))
        received = http_json("GET", f"{sim.url}/_sim/requests?limit=1")[1]["requests"]
        assert received[0]["model_id"] == "us.amazon.nova-micro-v1:0"
    finally:
        proxy.stop()
        sim.stop()
