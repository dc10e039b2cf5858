"""OpenAI's Responses API (`POST /v1/responses`) through bedrock-proxy in demo
mode, driven by the openai SDK unchanged but for the endpoint (issue 15, the
non-streaming core): plain text, instructions and item lists, a function-tool
round trip, reasoning sent back with its signature, `text.format` json_schema
through the structured-output path, the cache entry shared with Chat
Completions, and built-in tools refused by name."""
import json

import openai
import pydantic
import pytest

from conftest import BIN_DIR, Server

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
