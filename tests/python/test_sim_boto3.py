"""boto3's bedrock-runtime client against bedrock-sim, as an application uses it."""
import json

import pytest
from botocore.exceptions import ClientError, EventStreamError

from conftest import HAIKU, HAIKU_BASE, bedrock_client, http_json, user

ANTHROPIC_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 60,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Explain the concept of machine learning in simple terms."}],
}


def test_converse_and_stream_agree(sim):
    client = bedrock_client(sim.url)
    resp = client.converse(modelId=HAIKU, messages=user("Explain caching."),
                           inferenceConfig={"temperature": 0, "maxTokens": 300})
    text = resp["output"]["message"]["content"][0]["text"]
    assert resp["stopReason"] in ("end_turn", "max_tokens")
    assert resp["usage"]["totalTokens"] == resp["usage"]["inputTokens"] + resp["usage"]["outputTokens"]

    stream = client.converse_stream(modelId=HAIKU, messages=user("Explain caching."),
                                    inferenceConfig={"temperature": 0, "maxTokens": 300})
    kinds, streamed, metadata = [], "", None
    for event in stream["stream"]:
        kind = next(iter(event))
        kinds.append(kind)
        if kind == "contentBlockDelta":
            streamed += event[kind]["delta"]["text"]
        if kind == "metadata":
            metadata = event[kind]
    assert kinds[0] == "messageStart" and kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    assert streamed == text
    assert metadata["usage"] == resp["usage"]


def test_invoke_model_and_its_stream(sim):
    client = bedrock_client(sim.url)
    resp = client.invoke_model(modelId=HAIKU, body=json.dumps(ANTHROPIC_BODY))
    assert resp["contentType"] == "application/json"
    body = json.loads(resp["body"].read())
    assert body["type"] == "message" and body["content"][0]["type"] == "text"
    assert body["usage"]["output_tokens"] > 0

    stream = client.invoke_model_with_response_stream(modelId=HAIKU, body=json.dumps(ANTHROPIC_BODY))
    events = [json.loads(e["chunk"]["bytes"]) for e in stream["body"]]
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    assert "amazon-bedrock-invocationMetrics" in events[-1]
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == body["content"][0]["text"]


def test_count_tokens_agrees_with_usage(sim):
    client = bedrock_client(sim.url)
    counted = client.count_tokens(modelId=HAIKU_BASE, input={"converse": {"messages": user("hello there")}})
    used = client.converse(modelId=HAIKU, messages=user("hello there"))["usage"]["inputTokens"]
    assert counted["inputTokens"] == used


@pytest.mark.parametrize("fault,code,status", [
    ("throttle", "ThrottlingException", 429),
    ("unavailable", "ServiceUnavailableException", 503),
    ("model-not-ready", "ModelNotReadyException", 429),
    ("model-timeout", "ModelTimeoutException", 408),
    ("internal", "InternalServerException", 500),
])
def test_scripted_faults_are_typed_client_errors(sim, fault, code, status):
    client = bedrock_client(sim.url)
    assert http_json("POST", f"{sim.url}/_sim/faults", {"fault": fault, "times": 1})[0] == 201
    with pytest.raises(ClientError) as info:
        client.converse(modelId=HAIKU, messages=user("hi"))
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    modeled = getattr(client.exceptions, code)
    assert isinstance(info.value, modeled)
    client.converse(modelId=HAIKU, messages=user("hi"))  # the rule fired once


def test_exception_inside_a_stream(sim):
    client = bedrock_client(sim.url)
    http_json("POST", f"{sim.url}/_sim/faults",
              {"fault": "midstream-error", "after_events": 2, "exception": "throttlingException", "times": 1})
    stream = client.converse_stream(modelId=HAIKU, messages=user("hi"))
    seen = []
    with pytest.raises(EventStreamError) as info:
        for event in stream["stream"]:
            seen.append(next(iter(event)))
    assert len(seen) == 2
    assert info.value.response["Error"]["Code"] == "throttlingException"


def test_validation_errors(sim):
    client = bedrock_client(sim.url)
    with pytest.raises(client.exceptions.ValidationException, match="start with a user message"):
        client.converse(modelId=HAIKU, messages=[{"role": "assistant", "content": [{"text": "x"}]}])
    with pytest.raises(client.exceptions.ValidationException, match="model identifier is invalid"):
        client.converse(modelId="anthropic.nope-v1:0", messages=user("x"))
    with pytest.raises(client.exceptions.ValidationException, match="extraneous key"):
        client.invoke_model(modelId=HAIKU, body=json.dumps({**ANTHROPIC_BODY, "bogus": 1}))


def test_requests_are_recorded_without_secrets(sim):
    client = bedrock_client(sim.url)
    client.converse(modelId=HAIKU, messages=user("remember me"), requestMetadata={"app": "tests"})
    status, log = http_json("GET", f"{sim.url}/_sim/requests?limit=1")
    assert status == 200
    (req,) = log["requests"]
    assert req["operation"] == "converse" and req["model_id"] == HAIKU
    assert req["body"]["messages"] == user("remember me")
    assert req["body"]["requestMetadata"] == {"app": "tests"}
    assert "authorization" not in req["headers"]
    assert req["headers"]["content-type"] == "application/json"


def test_prompt_cache_and_clock(sim):
    client = bedrock_client(sim.url)
    system = [{"text": "You are a meticulous assistant. " * 300}, {"cachePoint": {"type": "default"}}]
    first = client.converse(modelId=HAIKU, system=system, messages=user("q"))["usage"]
    assert first["cacheWriteInputTokens"] > 2048
    second = client.converse(modelId=HAIKU, system=system, messages=user("q"))["usage"]
    assert second["cacheReadInputTokens"] == first["cacheWriteInputTokens"]
    http_json("POST", f"{sim.url}/_sim/clock", {"seconds": 301})
    third = client.converse(modelId=HAIKU, system=system, messages=user("q"))["usage"]
    assert third.get("cacheReadInputTokens", 0) == 0
    assert third["cacheWriteInputTokens"] == first["cacheWriteInputTokens"]
