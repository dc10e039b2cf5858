"""bedrock-proxy in front of servers that are not Bedrock: an OpenAI-compatible
chat server and a SageMaker endpoint (bedrock-sim's OpenAI and SageMaker faces),
driven by unchanged boto3, openai and anthropic clients. What a user checks:
the answers, their usage, who served them (x-proxy-upstream), fallback from a
throttled Bedrock to a self-hosted model, and a 400 before any upstream call
for what such a server cannot take."""
import json
import textwrap
import urllib.request

import anthropic
import openai
import pytest
from botocore.exceptions import ClientError

from conftest import BIN_DIR, HAIKU, Server, bedrock_client, http_json, user

# The self-hosted models behind the simulator's faces: one that honours
# stream_options (vLLM), one that ignores it (no usage in streams), one that
# refuses it with a 400; and SageMaker endpoints serving them.
SIM_CONFIG = """
[[self_hosted]]
id = "qwen2.5-72b-instruct"
context_tokens = 32768
speed = { ttft_ms = 250, prefill_us_per_token = 80, tokens_per_s = 35 }

[[self_hosted]]
id = "llama-no-usage"
context_tokens = 16384
speed = { ttft_ms = 80, prefill_us_per_token = 40, tokens_per_s = 75 }
stream_options = "ignore"

[[self_hosted]]
id = "llama-strict"
context_tokens = 16384
speed = { ttft_ms = 80, prefill_us_per_token = 40, tokens_per_s = 75 }
stream_options = "reject"

[[sagemaker.endpoints]]
name = "qwen-endpoint"
model = "qwen2.5-72b-instruct"

[[sagemaker.endpoints]]
name = "shared-endpoint"
inference_components = { "strict-ic" = "llama-strict" }
"""

WEATHER = {"toolSpec": {"name": "get_weather", "description": "Current weather for a city",
                        "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}},
                                                 "required": ["city"]}}}}

# SageMaker requests are SigV4-signed with the proxy's AWS credentials (the
# default chain); the simulator checks that they are signed.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "AKIDPROXYSAGEMAKER", "AWS_SECRET_ACCESS_KEY": "proxy-sagemaker-secret",
           "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("other-upstreams")
    sim_config = tmp / "sim.toml"
    sim_config.write_text(SIM_CONFIG)
    sim = Server([str(BIN_DIR / "bedrock-sim"), "--listen", "127.0.0.1:0", "--time-scale", "0",
                  "--config", str(sim_config)])
    config = tmp / "proxy.toml"
    config.write_text(textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:0"
        auth = "none"
        [admin]
        listen = "127.0.0.1:0"
        [logging]
        level = "warn"
        [upstreams.bedrock]
        kind = "simulator"
        endpoint = "{sim.url}"
        [upstreams.vllm]
        kind = "openai"
        base_url = "{sim.url}/v1"
        [upstreams.sm]
        kind = "sagemaker"
        region = "us-east-2"
        endpoint = "{sim.url}"
        usd_per_hour = 3.6
        [[routes]]
        name = "oai"
        aliases = ["oai"]
        upstream = "vllm"
        upstream_model = "qwen2.5-72b-instruct"
        [[routes]]
        name = "oai-cached"
        aliases = ["oai-cached"]
        upstream = "vllm"
        upstream_model = "qwen2.5-72b-instruct"
        cache = {{ mode = "deterministic" }}
        [[routes]]
        name = "oai-no-usage"
        aliases = ["oai-no-usage"]
        upstream = "vllm"
        upstream_model = "llama-no-usage"
        [[routes]]
        name = "oai-strict"
        aliases = ["oai-strict"]
        upstream = "vllm"
        upstream_model = "llama-strict"
        [[routes]]
        name = "sm"
        aliases = ["sm"]
        upstream = "sm"
        upstream_model = "qwen-endpoint"
        [[routes]]
        name = "sm-ic"
        aliases = ["sm-ic"]
        upstream = "sm"
        upstream_model = "shared-endpoint/strict-ic"
        [[routes]]
        name = "haiku"
        aliases = ["haiku"]
        models = ["{HAIKU}"]
        upstream = "bedrock"
        fallback = [{{ upstream = "vllm", model = "qwen2.5-72b-instruct" }},
                    {{ upstream = "sm", model = "qwen-endpoint" }}]
    """))
    proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(config)], env=AWS_ENV)
    yield proxy, sim
    proxy.stop()
    sim.stop()


@pytest.fixture
def brt(stack):
    return bedrock_client(stack[0].urls["bedrock-proxy"])


@pytest.fixture(autouse=True)
def no_faults(stack):
    yield
    http_json("DELETE", f"{stack[1].url}/_sim/faults")


def received(sim):
    """What the simulator received, oldest first."""
    return http_json("GET", f"{sim.url}/_sim/requests")[1]["requests"]


def headers(resp):
    return resp["ResponseMetadata"]["HTTPHeaders"]


def text_of(resp):
    return "".join(b.get("text", "") for b in resp["output"]["message"]["content"])


def streamed(events):
    """Text, stop reason, usage and event names of a ConverseStream."""
    text, stop, usage, names = "", None, None, []
    for event in events:
        name = next(iter(event))
        names.append(name)
        if name == "contentBlockDelta":
            text += event[name]["delta"].get("text", "")
        elif name == "messageStop":
            stop = event[name]["stopReason"]
        elif name == "metadata":
            usage = event[name]["usage"]
    return text, stop, usage, names


@pytest.mark.parametrize("model,upstream,served,face", [
    ("oai", "vllm", "qwen2.5-72b-instruct", "openai"),
    ("sm", "sm", "qwen-endpoint", "sagemaker"),
])
def test_boto3_converse_and_stream(stack, brt, model, upstream, served, face):
    _, sim = stack
    request = dict(modelId=model, system=[{"text": "You are terse."}],
                   messages=user("Name three colours."), inferenceConfig={"maxTokens": 60, "temperature": 0})
    whole = brt.converse(**request)
    assert text_of(whole)
    assert whole["stopReason"] in ("end_turn", "max_tokens")
    assert whole["usage"]["inputTokens"] > 0 and whole["usage"]["outputTokens"] > 0
    assert headers(whole)["x-proxy-upstream"] == upstream
    assert headers(whole)["x-proxy-served-model"] == served
    sent = received(sim)[-1]
    assert sent["face"] == face
    assert sent["body"]["messages"][0] == {"role": "system", "content": "You are terse."}
    assert sent["body"]["max_tokens"] == 60

    stream = brt.converse_stream(**request)
    assert headers(stream)["x-proxy-upstream"] == upstream
    text, stop, usage, names = streamed(stream["stream"])
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"]
    assert text == text_of(whole), "the same answer, streamed"
    assert stop == whole["stopReason"]
    assert usage["outputTokens"] == whole["usage"]["outputTokens"]
    sent = received(sim)[-1]
    assert sent["body"]["stream"] is True and sent["body"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("model", ["oai", "sm"])
def test_boto3_tool_use_round_trip(brt, model):
    tools = {"tools": [WEATHER]}
    messages = user("Use get_weather for Paris.")
    first = brt.converse(modelId=model, messages=messages, toolConfig=tools)
    assert first["stopReason"] == "tool_use"
    call = next(b["toolUse"] for b in first["output"]["message"]["content"] if "toolUse" in b)
    assert call["name"] == "get_weather" and isinstance(call["input"]["city"], str)
    messages += [first["output"]["message"],
                 {"role": "user", "content": [{"toolResult": {"toolUseId": call["toolUseId"],
                                                              "content": [{"json": {"celsius": 18}}]}}]}]
    second = brt.converse(modelId=model, messages=messages, toolConfig=tools)
    assert second["stopReason"] in ("end_turn", "max_tokens") and text_of(second)

    # Streamed: the tool call's start and input deltas assemble into the input.
    events = list(brt.converse_stream(modelId=model, messages=messages[:1], toolConfig=tools)["stream"])
    start = next(e["contentBlockStart"] for e in events if "contentBlockStart" in e)
    assert start["start"]["toolUse"]["name"] == "get_weather"
    index = start["contentBlockIndex"]
    args = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
                   if "contentBlockDelta" in e and e["contentBlockDelta"]["contentBlockIndex"] == index)
    assert "city" in json.loads(args)
    assert streamed(events)[1] == "tool_use"


@pytest.mark.parametrize("model,upstream", [("oai", "vllm"), ("sm", "sm")])
def test_openai_sdk(stack, model, upstream):
    client = openai.OpenAI(base_url=stack[0].urls["bedrock-proxy"] + "/v1", api_key="none", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=40)
    assert raw.headers["x-proxy-upstream"] == upstream
    r = raw.parse()
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=40,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens


@pytest.mark.parametrize("model", ["oai", "sm"])
def test_anthropic_sdk(stack, model):
    client = anthropic.Anthropic(base_url=stack[0].urls["bedrock-proxy"], api_key="none", max_retries=0)
    message = client.messages.create(model=model, max_tokens=64, system="Be brief.",
                                     messages=[{"role": "user", "content": "Hello"}])
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and message.usage.output_tokens > 0
    with client.messages.stream(model=model, max_tokens=64,
                                messages=[{"role": "user", "content": "Hello again"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text and final.usage.output_tokens > 0


def metric(admin, name, **labels):
    """The value of one Prometheus sample, 0 when absent."""
    with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_server_without_stream_usage_gets_an_estimate(stack, brt):
    proxy, sim = stack
    admin = proxy.urls["admin"]
    before = metric(admin, "bedrock_proxy_usage_estimated_total", route="oai-no-usage", upstream_kind="openai")
    _, stop, usage, _ = streamed(brt.converse_stream(modelId="oai-no-usage", messages=user("Hello"),
                                                     inferenceConfig={"maxTokens": 30})["stream"])
    assert stop in ("end_turn", "max_tokens")
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    after = metric(admin, "bedrock_proxy_usage_estimated_total", route="oai-no-usage", upstream_kind="openai")
    assert after == before + 1


@pytest.mark.parametrize("model,face", [("oai-strict", "openai"), ("sm-ic", "sagemaker")])
def test_a_server_refusing_stream_options_is_asked_without(stack, brt, model, face):
    _, sim = stack
    seen = len(received(sim))
    text, _, usage, _ = streamed(brt.converse_stream(modelId=model, messages=user("Hello"))["stream"])
    assert text and usage["outputTokens"] > 0
    tries = [r for r in received(sim)[seen:] if r["face"] == face]
    assert [("stream_options" in r["body"]) for r in tries] == [True, False]
    if face == "sagemaker":
        assert tries[-1]["headers"]["x-amzn-sagemaker-inference-component"] == "strict-ic"
    # The upstream is not asked again.
    seen = len(received(sim))
    assert streamed(brt.converse_stream(modelId=model, messages=user("Hello"))["stream"])[0]
    tries = received(sim)[seen:]
    assert len(tries) == 1 and "stream_options" not in tries[0]["body"]


def test_fallback_from_a_throttled_bedrock_to_self_hosted_models(stack, brt):
    proxy, sim = stack
    assert http_json("POST", f"{sim.url}/_sim/faults", {"model": "haiku", "fault": "throttle", "times": 100})[0] == 201
    resp = brt.converse(modelId=HAIKU, messages=user("Hello"), inferenceConfig={"maxTokens": 30})
    assert text_of(resp)
    assert headers(resp)["x-proxy-upstream"] == "vllm"
    assert headers(resp)["x-proxy-served-model"] == "qwen2.5-72b-instruct"
    assert headers(resp)["x-proxy-attempts"] == "2"
    stream = brt.converse_stream(modelId=HAIKU, messages=user("Hello"), inferenceConfig={"maxTokens": 30})
    assert headers(stream)["x-proxy-upstream"] == "vllm"
    assert streamed(stream["stream"])[0]

    # The OpenAI-compatible server throttles too: the SageMaker endpoint answers.
    assert http_json("POST", f"{sim.url}/_sim/faults",
                     {"face": "openai", "fault": "throttle", "times": 100})[0] == 201
    resp = brt.converse(modelId=HAIKU, messages=user("Hello"), inferenceConfig={"maxTokens": 30})
    assert headers(resp)["x-proxy-upstream"] == "sm"
    assert headers(resp)["x-proxy-served-model"] == "qwen-endpoint"
    assert headers(resp)["x-proxy-attempts"] == "3"
    assert metric(proxy.urls["admin"], "bedrock_proxy_upstream_kind_attempts_total",
                  route="haiku", upstream_kind="openai", outcome="throttled") >= 1
    assert metric(proxy.urls["admin"], "bedrock_proxy_cost_usd",
                  route="haiku", upstream_kind="sagemaker", basis="hourly") > 0


def test_what_a_chat_server_cannot_take_is_refused_before_any_upstream_call(stack, brt):
    _, sim = stack
    seen = len(received(sim))
    with pytest.raises(ClientError) as info:
        brt.converse(modelId="oai", messages=user("Hello"),
                     guardrailConfig={"guardrailIdentifier": "g1", "guardrailVersion": "1"})
    error = info.value.response
    assert error["Error"]["Code"] == "ValidationException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "guardrailConfig" in error["Error"]["Message"] and "route `oai`" in error["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        brt.converse(modelId="sm", messages=[{"role": "user", "content": [
            {"text": "Summarize"},
            {"document": {"format": "txt", "name": "notes", "source": {"bytes": b"some notes"}}}]}])
    assert "messages[0].content[1].document" in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        brt.invoke_model(modelId="oai", body=json.dumps({"prompt": "Hi"}))
    assert info.value.response["Error"]["Code"] == "ValidationException"
    # The OpenAI SDK gets the same refusal in OpenAI's shape.
    client = anthropic.Anthropic(base_url=stack[0].urls["bedrock-proxy"], api_key="none", max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="oai", max_tokens=20, messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}}]}])
    assert len(received(sim)) == seen, "no upstream was called"


def test_a_cache_hit_names_who_served_the_stored_answer(brt):
    request = dict(modelId="oai-cached", messages=user("Cache me on a self-hosted model."),
                   inferenceConfig={"maxTokens": 30, "temperature": 0})
    first = brt.converse(**request)
    second = brt.converse(**request)
    assert headers(first)["x-cache"] == "miss" and headers(second)["x-cache"] == "hit"
    assert headers(second)["x-proxy-upstream"] == "vllm"
    assert headers(second)["x-proxy-served-model"] == "qwen2.5-72b-instruct"
    assert text_of(second) == text_of(first)
