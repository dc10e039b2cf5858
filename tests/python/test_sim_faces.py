"""bedrock-sim's self-hosted faces driven by the real clients: the openai SDK
against the OpenAI-compatible face, boto3's sagemaker-runtime client against
the SageMaker Runtime face."""
import json

import boto3
import openai
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from conftest import http_json, start_sim

QWEN = "qwen2.5-72b-instruct"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_EP = "llama-3-1-8b-selfhosted"
ACCESS_KEY = "AKIDPYTHONTEST"
SECRET = "python-secret"

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}},
]


@pytest.fixture
def faces(tmp_path):
    """A simulator whose SageMaker face verifies the test key pair and whose
    OpenAI face wants an API key."""
    config = tmp_path / "sim.toml"
    config.write_text(
        f'[openai]\napi_key = "sk-sim-test"\n\n'
        f'[[credentials]]\naccess_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET}"\n'
    )
    server = start_sim("--time-scale", "0", "--config", str(config))
    yield server
    server.stop()


def oai(sim, key="sk-sim-test"):
    return openai.OpenAI(base_url=sim.url + "/v1", api_key=key, max_retries=0)


def sagemaker(sim, secret=SECRET):
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=sim.url,
        region_name="us-east-2",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=60),
    )


def add_fault(sim, rule):
    status, body = http_json("POST", sim.url + "/_sim/faults", rule)
    assert status == 201, body


def messages(text):
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


def test_openai_chat_and_its_stream_agree(faces):
    client = oai(faces)
    resp = client.chat.completions.create(model=QWEN, messages=messages("Explain caching."),
                                          temperature=0, max_tokens=300)
    text = resp.choices[0].message.content
    assert text and resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

    stream = client.chat.completions.create(model=QWEN, messages=messages("Explain caching."),
                                            temperature=0, max_tokens=300, stream=True,
                                            stream_options={"include_usage": True})
    streamed, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            streamed += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert streamed == text
    assert finish == resp.choices[0].finish_reason
    assert usage.completion_tokens == resp.usage.completion_tokens
    assert usage.prompt_tokens == resp.usage.prompt_tokens

    ids = [m.id for m in client.models.list()]
    assert ids == [QWEN, LLAMA]


def test_openai_tools_in_parallel_then_their_results(faces):
    client = oai(faces)
    ask = messages("Use get_weather for Paris and get_time for Europe/Paris.")
    resp = client.chat.completions.create(model=LLAMA, messages=ask, tools=TOOLS)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)

    follow = ask + [choice.message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": "sunny, 12:00"} for c in calls
    ]
    answer = client.chat.completions.create(model=LLAMA, messages=follow, tools=TOOLS)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls


def test_openai_errors_are_typed(faces):
    with pytest.raises(openai.AuthenticationError):
        oai(faces, key="wrong").chat.completions.create(model=QWEN, messages=messages("hi"))
    client = oai(faces)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=messages("hi"))
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=QWEN, messages=messages("hi"), temperature=5)
    assert e.value.param == "temperature"

    add_fault(faces, {"face": "openai", "model": "qwen", "fault": "throttle", "times": 1})
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=QWEN, messages=messages("hi"))

    stream = client.chat.completions.create(model=QWEN, messages=messages("Explain caching."), stream=True,
                                            extra_headers={"x-sim-fault": "midstream-error=2"})
    with pytest.raises(openai.APIError) as e:
        for _ in stream:
            pass
    assert "stopped" in e.value.message

    status, log = http_json("GET", faces.url + "/_sim/requests")
    assert status == 200
    assert {r["face"] for r in log["requests"]} == {"openai"}


def test_sagemaker_invoke_endpoint_and_its_stream_agree(faces):
    client = sagemaker(faces)
    body = {"messages": messages("Explain caching."), "max_tokens": 300, "temperature": 0}
    resp = client.invoke_endpoint(EndpointName=LLAMA_EP, ContentType="application/json",
                                  Accept="application/json", Body=json.dumps(body))
    assert resp["ContentType"] == "application/json"
    assert resp["InvokedProductionVariant"] == "AllTraffic"
    whole = json.loads(resp["Body"].read())
    text = whole["choices"][0]["message"]["content"]
    assert whole["model"] == LLAMA and text

    stream = client.invoke_endpoint_with_response_stream(
        EndpointName=LLAMA_EP, ContentType="application/json",
        Body=json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}))
    assert stream["ContentType"] == "text/event-stream"
    raw = b"".join(event["PayloadPart"]["Bytes"] for event in stream["Body"])
    events = [line[len(b"data: "):] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == text
    assert chunks[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]


def test_sagemaker_errors_in_sagemakers_shapes(faces):
    client = sagemaker(faces)
    body = json.dumps({"messages": messages("hi")})
    with pytest.raises(client.exceptions.ValidationError) as e:
        client.invoke_endpoint(EndpointName="no-such-endpoint", Body=body)
    assert "Endpoint no-such-endpoint of account" in str(e.value)

    with pytest.raises(client.exceptions.ModelError) as e:
        client.invoke_endpoint(EndpointName=LLAMA_EP, Body=json.dumps({"messages": []}))
    assert e.value.response["OriginalStatusCode"] == 400
    assert json.loads(e.value.response["OriginalMessage"])["error"]["param"] == "messages"

    with pytest.raises(ClientError) as e:
        client.invoke_endpoint(EndpointName="shared-selfhosted", Body=body)
    assert e.value.response["Error"]["Code"] == "ValidationError"
    resp = client.invoke_endpoint(EndpointName="shared-selfhosted", InferenceComponentName="qwen-2-5-72b-ic",
                                  Body=body)
    assert json.loads(resp["Body"].read())["model"] == QWEN

    add_fault(faces, {"face": "sagemaker", "model": LLAMA_EP, "fault": "throttle", "times": 1})
    with pytest.raises(ClientError) as e:
        client.invoke_endpoint(EndpointName=LLAMA_EP, Body=body)
    assert e.value.response["Error"]["Code"] == "ThrottlingException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    add_fault(faces, {"face": "sagemaker", "fault": "midstream-error", "after_events": 3, "times": 1})
    stream = client.invoke_endpoint_with_response_stream(
        EndpointName=LLAMA_EP, Body=json.dumps({"messages": messages("Explain caching."), "stream": True}))
    with pytest.raises(EventStreamError) as e:
        for _ in stream["Body"]:
            pass
    assert e.value.response["Error"]["Code"] == "ModelStreamError"

    with pytest.raises(ClientError) as e:
        sagemaker(faces, secret="wrong").invoke_endpoint(EndpointName=LLAMA_EP, Body=body)
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"

    status, stats = http_json("GET", faces.url + "/_sim/stats")
    assert stats["by_face"]["sagemaker"] >= 6
    assert stats["errors"]["ThrottlingException"] == 1
