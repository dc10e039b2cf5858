"""The openai and anthropic Python SDKs against bedrock-proxy in demo mode,
changing nothing but base_url: the same pipeline, cache and policies as
Bedrock's own paths, each API with its own errors."""
import asyncio
import base64
import json

import anthropic
import openai
import pytest

from conftest import BIN_DIR, Server, bedrock_client, http_json, user

# A 1x1 PNG.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a5d7a2350000000049454e44ae426082"
)).decode()

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def demo():
    server = Server([str(BIN_DIR / "bedrock-proxy"), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
    yield server
    server.stop()


@pytest.fixture
def oai(demo):
    return openai.OpenAI(base_url=demo.urls["bedrock-proxy"] + "/v1", api_key="demo", max_retries=0)


@pytest.fixture
def claude(demo):
    return anthropic.Anthropic(base_url=demo.urls["bedrock-proxy"], api_key="demo", max_retries=0)


def test_chat_completion_and_models(oai):
    r = oai.chat.completions.create(model="nova-micro", messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."}], max_tokens=40)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    ids = {m.id for m in oai.models.list().data}
    assert {"haiku", "sonnet", "nova-micro"} <= ids


def test_streaming_with_usage(oai):
    stream = oai.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "Count to five."}],
                                         max_tokens=60, stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text and finish in ("stop", "length")
    assert usage.completion_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_async_client(demo):
    async def go():
        client = openai.AsyncOpenAI(base_url=demo.urls["bedrock-proxy"] + "/v1", api_key="demo", max_retries=0)
        whole = await client.chat.completions.create(model="nova-lite", messages=[{"role": "user", "content": "Hi"}])
        parts = []
        async for chunk in await client.chat.completions.create(
                model="nova-lite", messages=[{"role": "user", "content": "Hi"}], stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        await client.close()
        return whole, "".join(parts)

    whole, streamed = asyncio.run(go())
    assert whole.choices[0].message.content and streamed


def test_a_tool_call_round_trip(oai):
    messages = [{"role": "user", "content": "Use get_weather for Paris."}]
    first = oai.chat.completions.create(model="haiku", messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    second = oai.chat.completions.create(model="haiku", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.content

    # The same round trip streamed: tool call chunks assemble into valid JSON.
    stream = oai.chat.completions.create(model="haiku", messages=messages[:1], tools=[WEATHER_TOOL], stream=True)
    args, name, finish = "", None, None
    for chunk in stream:
        for tc in chunk.choices[0].delta.tool_calls or []:
            name = tc.function.name or name
            args += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls"
    assert "city" in json.loads(args)


def test_an_image(oai):
    r = oai.chat.completions.create(model="haiku", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    assert r.choices[0].message.content
    assert r.usage.prompt_tokens >= 1600, "the image is billed"


def test_openai_errors_in_openais_shape(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "x"}], n=2)
    assert info.value.status_code == 400 and "n = 1" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="haiku", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64"}}]}])
    assert "image_url" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="haiku", messages=[{"role": "assistant", "content": "I speak first"}])
    assert "start with a user message" in info.value.body["message"]
    assert info.value.body["type"] == "invalid_request_error"


def test_an_openai_request_shares_a_cache_entry_with_a_bedrock_one(demo, oai):
    brt = bedrock_client(demo.urls["bedrock-proxy"])
    native = brt.converse(modelId="haiku", messages=user("Share this answer."),
                          inferenceConfig={"maxTokens": 50, "temperature": 0})
    assert native["ResponseMetadata"]["HTTPHeaders"]["x-cache"] == "miss"
    raw = oai.chat.completions.with_raw_response.create(
        model="haiku", messages=[{"role": "user", "content": "Share this answer."}], max_tokens=50, temperature=0)
    assert raw.headers["x-cache"] == "hit"
    assert raw.parse().choices[0].message.content == native["output"]["message"]["content"][0]["text"]


def test_anthropic_create_and_stream(claude):
    message = claude.messages.create(model="haiku", max_tokens=64,
                                     messages=[{"role": "user", "content": "Hello, Claude"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0

    with claude.messages.stream(model="haiku", max_tokens=64,
                                messages=[{"role": "user", "content": "Hello again"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")


def test_anthropic_cache_control_becomes_bedrocks_prompt_cache(claude):
    system = [{"type": "text", "text": "You are the archivist of a large library. " * 300,
               "cache_control": {"type": "ephemeral"}}]
    first = claude.messages.create(model="haiku", max_tokens=32, system=system,
                                   messages=[{"role": "user", "content": "First question"}])
    second = claude.messages.create(model="haiku", max_tokens=32, system=system,
                                    messages=[{"role": "user", "content": "Second question"}])
    assert first.usage.cache_creation_input_tokens > 2000
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


def test_anthropic_tools(claude):
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}]
    message = claude.messages.create(model="haiku", max_tokens=100, tools=tools,
                                     messages=[{"role": "user", "content": "Use get_weather for Oslo."}])
    assert message.stop_reason == "tool_use"
    tool_use = next(b for b in message.content if b.type == "tool_use")
    assert tool_use.name == "get_weather" and "city" in tool_use.input
    follow = claude.messages.create(model="haiku", max_tokens=100, tools=tools, messages=[
        {"role": "user", "content": "Use get_weather for Oslo."},
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "cold"}]}])
    assert follow.stop_reason in ("end_turn", "max_tokens")


def test_anthropic_errors_in_anthropics_shape(claude):
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="claude-9", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="haiku", max_tokens=10, messages=[{"role": "assistant", "content": "x"}])
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "start with a user message" in info.value.body["error"]["message"]
