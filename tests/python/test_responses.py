"""OpenAI's Responses API (`POST /v1/responses`) through bedrock-proxy in demo
mode, driven by the openai SDK unchanged but for the endpoint (issue 15):
plain text, instructions and item lists, a function-tool round trip, reasoning
sent back with its signature, `text.format` json_schema through the
structured-output path, the cache entry shared with Chat Completions, built-in
tools refused by name, streaming; stored responses (`store`,
`previous_response_id`, retrieve, delete, `input_items`), and, on two proxies
sharing a redis-server, stored responses seen by every replica and never by
another tenant."""
import hashlib
import json
import textwrap

import openai
import pydantic
import pytest

from conftest import BIN_DIR, HAIKU, HAIKU_BASE, Server, http_json, start_sim
from test_limits import Redis

THINKER = "haiku-4-5"
PLAIN = "haiku"

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class CalendarEvent(pydantic.BaseModel):
    name: str
    date: str
    participants: list[str]


@pytest.fixture(scope="module")
def demo():
    server = Server([str(BIN_DIR / "bedrock-proxy"), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
    yield server
    server.stop()


@pytest.fixture
def oai(demo):
    return openai.OpenAI(base_url=demo.urls["bedrock-proxy"] + "/v1", api_key="demo", max_retries=0)


def test_a_plain_response(oai):
    r = oai.responses.create(model=PLAIN, input="Say hello in one sentence.")
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed" and r.incomplete_details is None
    assert r.output_text
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens == 0

    cut = oai.responses.create(model=PLAIN, input="Tell me a long story.", max_output_tokens=5)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage.output_tokens <= 5


def test_instructions_and_an_item_list(oai):
    r = oai.responses.create(model=PLAIN, instructions="Answer briefly.", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Blue."}]},
        {"role": "user", "content": "Another one?"},
    ])
    assert r.output_text and r.instructions == "Answer briefly."


def test_a_function_tool_round_trip(oai):
    items = [{"role": "user", "content": "Use get_weather for Paris."}]
    first = oai.responses.create(model=PLAIN, input=items, tools=[WEATHER])
    [call] = [o for o in first.output if o.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    items += [o.model_dump(exclude_none=True) for o in first.output]
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"})
    second = oai.responses.create(model=PLAIN, input=items, tools=[WEATHER])
    assert second.output_text
    assert not [o for o in second.output if o.type == "function_call"]


def test_reasoning_goes_back_with_its_signature(oai):
    items = [{"role": "user", "content": "Use get_weather for Paris."}]
    first = oai.responses.create(model=THINKER, input=items, tools=[WEATHER], reasoning={"effort": "low"})
    reasoning = [o for o in first.output if o.type == "reasoning"]
    assert reasoning and reasoning[0].encrypted_content and reasoning[0].summary[0].text
    [call] = [o for o in first.output if o.type == "function_call"]
    items += [o.model_dump(exclude_none=True) for o in first.output]
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"})
    second = oai.responses.create(model=THINKER, input=items, tools=[WEATHER], reasoning={"effort": "low"})
    assert second.status == "completed" and second.output_text


@pytest.mark.parametrize("model,how", [(THINKER, "native"), (PLAIN, "tool")])
def test_text_format_json_schema(oai, model, how):
    raw = oai.responses.with_raw_response.parse(model=model, text_format=CalendarEvent, input=[
        {"role": "system", "content": "Extract the event information."},
        {"role": "user", "content": "Alice and Bob are going to a science fair on Friday."}])
    assert raw.headers["x-proxy-structured-output"] == how
    parsed = raw.parse().output_parsed
    assert isinstance(parsed, CalendarEvent)


def test_a_response_shares_the_cache_entry_of_the_same_chat_completion(oai):
    prompt = "A question asked once through each API, at temperature zero."
    chat = oai.chat.completions.with_raw_response.create(
        model=PLAIN, temperature=0, max_completion_tokens=60, messages=[{"role": "user", "content": prompt}])
    assert chat.headers["x-cache"] == "miss"
    resp = oai.responses.with_raw_response.create(model=PLAIN, temperature=0, max_output_tokens=60, input=prompt)
    assert resp.headers["x-cache"] == "hit"
    assert resp.parse().output_text == chat.parse().choices[0].message.content


def test_what_bedrock_cannot_do_is_refused_by_name(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=PLAIN, input="x", tools=[{"type": "web_search"}])
    assert e.value.body["param"] == "tools[0].type" and "web_search" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError) as e:
        oai.responses.create(model="gpt-4o", input="x")
    assert e.value.body["code"] == "model_not_found"


def test_the_agents_sdk_runs_an_agent_with_a_function_tool_to_its_final_answer(demo):
    # The OpenAI Agents SDK with its default model (the Responses API), unchanged
    # but for the client's base URL and key.
    import asyncio

    from agents import (Agent, Runner, function_tool, set_default_openai_client,
                        set_tracing_disabled)

    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"18C and sunny in {city}"

    set_tracing_disabled(True)
    set_default_openai_client(openai.AsyncOpenAI(base_url=demo.urls["bedrock-proxy"] + "/v1",
                                                 api_key="demo", max_retries=0))
    agent = Agent(name="weather", instructions="Answer with the weather tool.", model=PLAIN,
                  tools=[get_weather])
    result = asyncio.run(Runner.run(agent, "Use get_weather for Paris."))
    kinds = [type(item).__name__ for item in result.new_items]
    assert kinds[:3] == ["MessageOutputItem", "ToolCallItem", "ToolCallOutputItem"] or \
        kinds[:2] == ["ToolCallItem", "ToolCallOutputItem"], kinds
    assert len(calls) == 1 and isinstance(calls[0], str)
    assert kinds[-1] == "MessageOutputItem" and result.final_output


def test_a_streamed_response_is_the_event_sequence(oai):
    events = list(oai.responses.create(model=PLAIN, input="Say hello in one sentence.", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"], kinds
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"], kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1, "the text streams"
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "".join(deltas)
    assert final.usage.output_tokens > 0


def test_a_streamed_function_call_and_structured_output(oai):
    events = list(oai.responses.create(model=PLAIN, input="Use get_weather for Paris.", tools=[WEATHER],
                                       stream=True))
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == args and isinstance(json.loads(args)["city"], str)
    [call] = [o for o in events[-1].response.output if o.type == "function_call"]
    assert call.name == "get_weather" and call.arguments == args

    with oai.responses.stream(model=THINKER, text_format=CalendarEvent, input=[
            {"role": "system", "content": "Extract the event information."},
            {"role": "user", "content": "Alice and Bob are going to a science fair on Friday."}]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, CalendarEvent)


def test_cached_tokens_come_from_bedrocks_cache_reads(oai):
    # The demo's prompt cache marks a long system prompt once it has seen it
    # repeat; later calls read it from Bedrock's prompt cache.
    instructions = "You are the archivist of a large library of responses. " * 300
    usages = [oai.responses.create(model=PLAIN, instructions=instructions, input=f"Question {i}?").usage
              for i in range(4)]
    cached = [u.input_tokens_details.cached_tokens for u in usages]
    assert cached[0] == 0 and cached[-1] > 2000, cached
    assert all(u.input_tokens > c for u, c in zip(usages, cached))


def test_a_function_tool_round_trip_continued_by_previous_response_id(demo, oai):
    admin = demo.urls["admin"]
    first = oai.responses.create(model=PLAIN, instructions="Use the tools you have.",
                                 input="Use get_weather for Paris.", tools=[WEATHER])
    assert first.store is True and first.previous_response_id is None
    [call] = [o for o in first.output if o.type == "function_call"]
    second = oai.responses.create(model=PLAIN, previous_response_id=first.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"}])
    assert second.previous_response_id == first.id and second.instructions is None
    assert second.output_text and not [o for o in second.output if o.type == "function_call"]

    # Bedrock got the whole conversation, without the first request's instructions.
    status, log = http_json("GET", f"{admin}/_sim/requests?limit=1")
    assert status == 200, log
    sent = log["requests"][-1]["body"]
    assert "system" not in sent
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][0]["content"][0]["text"] == "Use get_weather for Paris."
    assert sent["messages"][1]["content"][-1]["toolUse"]["toolUseId"] == call.call_id
    assert sent["messages"][2]["content"][0]["toolResult"]["toolUseId"] == call.call_id

    # input_items: the conversation up to the second response, newest first by default.
    items = oai.responses.input_items.list(second.id)
    conversation = ["message", *[o.type for o in first.output], "function_call_output"]
    assert [i.type for i in items.data] == conversation[::-1]
    assert [i.id for i in items.data[1:-1]] == [o.id for o in first.output][::-1]
    assert items.data[-1].content[0].text == "Use get_weather for Paris."
    assert items.first_id == items.data[0].id and items.last_id == items.data[-1].id
    assert items.has_more is False
    oldest = oai.responses.input_items.list(second.id, order="asc", limit=1)
    assert [i.id for i in oldest.data] == [items.data[-1].id] and oldest.has_more is True
    # The SDK's pagination follows `after` to the end.
    assert [i.id for i in oai.responses.input_items.list(second.id, order="asc", limit=1)] == \
        [i.id for i in reversed(items.data)]


def test_retrieve_delete_and_store_false(oai):
    r = oai.responses.create(model=PLAIN, input="Say hello in one sentence.", metadata={"k": "v"})
    got = oai.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.metadata == {"k": "v"}
    assert got.usage.output_tokens == r.usage.output_tokens

    deleted = oai.responses.delete(r.id)  # the SDK returns nothing on success
    assert deleted is None
    with pytest.raises(openai.NotFoundError) as e:
        oai.responses.retrieve(r.id)
    assert e.value.body["message"] == f"Response with id '{r.id}' not found."
    assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        oai.responses.create(model=PLAIN, input="And then?", previous_response_id=r.id)
    assert e.value.body == {"message": f"Previous response with id '{r.id}' not found.",
                            "type": "invalid_request_error", "param": "previous_response_id",
                            "code": "previous_response_not_found"}

    unstored = oai.responses.create(model=PLAIN, input="Say hello in one sentence.", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.input_items.list(unstored.id)


def test_a_streamed_response_is_stored_once_complete_and_a_failed_one_is_not(demo, oai):
    events = list(oai.responses.create(model=PLAIN, input="Say hello in one sentence.", stream=True))
    final = events[-1].response
    assert final.store is True
    got = oai.responses.retrieve(final.id)
    assert got.status == "completed" and got.output_text == final.output_text
    [item] = oai.responses.input_items.list(final.id).data
    assert item.role == "user" and item.content[0].text == "Say hello in one sentence."
    follow = oai.responses.create(model=PLAIN, previous_response_id=final.id, input="Again, shorter.",
                                  stream=True)
    assert list(follow)[-1].response.previous_response_id == final.id

    admin = demo.urls["admin"]
    fault = {"model": "claude-3-5-haiku", "operation": "converse-stream", "fault": "midstream-error",
             "after_events": 3, "exception": "throttlingException", "times": 1}
    assert http_json("POST", f"{admin}/_sim/faults", fault)[0] == 201
    try:
        events = list(oai.responses.create(model=PLAIN, input="Count to twenty.", stream=True))
    finally:
        http_json("DELETE", f"{admin}/_sim/faults")
    assert events[0].type == "response.created"
    assert events[-1].type == "response.failed", [e.type for e in events]
    assert "response.completed" not in [e.type for e in events]
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(failed.id)


def test_validation_errors_name_the_responses_fields(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=PLAIN, input=[
            {"role": "user", "content": "Look at this."},
            {"role": "assistant", "content": "Which?"},
            {"role": "user", "content": [{"type": "input_text", "text": "This:"},
                                         {"type": "input_image", "image_url": "https://example.com/cat.png"}]}])
    assert e.value.body["param"] == "input[2].content[1].image_url", e.value.body
    assert e.value.body["message"].startswith("input[2].content[1].image_url:")
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=PLAIN, input="x", max_output_tokens=0)
    assert e.value.body["param"] == "max_output_tokens"


ACME_KEY, FREE_KEY = "bpk_responses_acme", "bpk_responses_free"


def shared_config(sim_url, redis_port):
    return textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:0"
        [admin]
        listen = "127.0.0.1:0"
        [logging]
        level = "warn"
        [cache.redis]
        url = "redis://127.0.0.1:{redis_port}"
        timeout = "250ms"
        [responses]
        ttl = "1h"
        [upstreams.sim]
        kind = "simulator"
        endpoint = "{sim_url}"
        [[routes]]
        name = "haiku"
        aliases = ["haiku"]
        models = ["{HAIKU}", "{HAIKU_BASE}"]
        upstream = "sim"
        [[keys]]
        tenant = "acme"
        key_sha256 = "{hashlib.sha256(ACME_KEY.encode()).hexdigest()}"
        [[keys]]
        tenant = "free"
        key_sha256 = "{hashlib.sha256(FREE_KEY.encode()).hexdigest()}"
    """)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two proxies sharing a simulator and a redis-server."""
    sim = start_sim("--time-scale", "0")
    redis = Redis()
    path = tmp_path_factory.mktemp("responses") / "proxy.toml"
    path.write_text(shared_config(sim.url, redis.port))
    servers = []
    try:
        servers = [Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(path)]) for _ in range(2)]
        yield [s.urls["bedrock-proxy"] + "/v1" for s in servers]
    finally:
        for s in servers:
            s.stop()
        redis.stop()
        sim.stop()


def client(base_url, key):
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def test_every_replica_sees_a_stored_response_and_its_deletion(replicas):
    one, two = client(replicas[0], ACME_KEY), client(replicas[1], ACME_KEY)
    first = one.responses.create(model=PLAIN, input="Use get_weather for Paris.", tools=[WEATHER])
    assert two.responses.retrieve(first.id).output == first.output
    [call] = [o for o in first.output if o.type == "function_call"]
    second = two.responses.create(model=PLAIN, previous_response_id=first.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"}])
    assert second.output_text
    assert [i.type for i in one.responses.input_items.list(second.id, order="asc")] == \
        ["message", *[o.type for o in first.output], "function_call_output"]
    two.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        one.responses.retrieve(first.id)
    # What continued it keeps its own copy of the conversation.
    assert one.responses.retrieve(second.id).previous_response_id == first.id


def test_another_tenant_never_sees_a_response(replicas):
    acme, free = client(replicas[0], ACME_KEY), client(replicas[1], FREE_KEY)
    r = acme.responses.create(model=PLAIN, input="A secret plan.")
    with pytest.raises(openai.NotFoundError) as e:
        free.responses.retrieve(r.id)
    assert e.value.body["message"] == f"Response with id '{r.id}' not found."
    with pytest.raises(openai.NotFoundError):
        free.responses.input_items.list(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        free.responses.create(model=PLAIN, input="Go on.", previous_response_id=r.id)
    assert e.value.body["code"] == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        free.responses.delete(r.id)
    assert acme.responses.retrieve(r.id).output_text == r.output_text
