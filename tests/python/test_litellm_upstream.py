"""The proxy's `openai` upstream against an OpenAI-compatible server this
project did not write: LiteLLM's proxy (installed from PyPI by
bench/litellm/setup.sh, in its own virtualenv), with a mock model that answers
a fixed text. boto3 Converse and ConverseStream and the OpenAI SDK go through
bedrock-proxy to it, streaming included."""
import os
import socket
import subprocess
import textwrap
import time
import urllib.request

import openai
import pytest

from conftest import BIN_DIR, ROOT, Server, bedrock_client, user

LITELLM = ROOT / "bench" / "litellm" / ".venv" / "bin" / "litellm"
MOCK_TEXT = "Hello from the LiteLLM mock model, answering through bedrock-proxy."
MASTER_KEY = "sk-litellm-proxy-test"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url, proc, deadline_s=240):
    """LiteLLM imports for a while before it listens; poll its liveness probe."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"LiteLLM exited: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/health/liveliness", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("LiteLLM did not start listening")


@pytest.fixture(scope="module")
def litellm_stack(tmp_path_factory):
    if not LITELLM.exists():
        pytest.fail(f"{LITELLM} is missing: run bench/litellm/setup.sh (scripts/test.sh does)")
    tmp = tmp_path_factory.mktemp("litellm")
    config = tmp / "litellm.yaml"
    config.write_text(textwrap.dedent(f"""
        model_list:
          - model_name: mock-llama
            litellm_params:
              model: openai/mock-llama
              api_key: not-used
              api_base: http://127.0.0.1:9/v1
              mock_response: "{MOCK_TEXT}"
        litellm_settings:
          num_retries: 0
        general_settings:
          master_key: {MASTER_KEY}
    """))
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    litellm = subprocess.Popen([str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", litellm)
        proxy_config = tmp / "proxy.toml"
        proxy_config.write_text(textwrap.dedent(f"""
            [server]
            listen = "127.0.0.1:0"
            auth = "none"
            [admin]
            listen = "127.0.0.1:0"
            [logging]
            level = "warn"
            [upstreams.litellm]
            kind = "openai"
            base_url = "http://127.0.0.1:{port}/v1"
            api_key = "${{LITELLM_KEY}}"
            [[routes]]
            name = "mock"
            aliases = ["mock"]
            upstream = "litellm"
            upstream_model = "mock-llama"
        """))
        proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(proxy_config)],
                       env={"LITELLM_KEY": MASTER_KEY})
        yield proxy
        proxy.stop()
    finally:
        litellm.terminate()
        try:
            litellm.wait(timeout=15)
        except subprocess.TimeoutExpired:
            litellm.kill()
            litellm.wait()


def test_boto3_converse_and_stream_through_litellm(litellm_stack):
    brt = bedrock_client(litellm_stack.urls["bedrock-proxy"])
    resp = brt.converse(modelId="mock", messages=user("Hello"))
    assert resp["output"]["message"]["content"][0]["text"] == MOCK_TEXT
    assert resp["stopReason"] == "end_turn"
    assert resp["usage"]["outputTokens"] > 0
    assert resp["ResponseMetadata"]["HTTPHeaders"]["x-proxy-upstream"] == "litellm"

    text, names, usage = "", [], None
    for event in brt.converse_stream(modelId="mock", messages=user("Hello"))["stream"]:
        name = next(iter(event))
        names.append(name)
        if name == "contentBlockDelta":
            text += event[name]["delta"]["text"]
        if name == "metadata":
            usage = event[name]["usage"]
    assert text == MOCK_TEXT
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"]
    assert usage["outputTokens"] > 0


def test_openai_sdk_streams_through_litellm(litellm_stack):
    client = openai.OpenAI(base_url=litellm_stack.urls["bedrock-proxy"] + "/v1", api_key="none", max_retries=0)
    chunks = list(client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "Hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == MOCK_TEXT
    assert chunks[-1].usage.completion_tokens > 0
