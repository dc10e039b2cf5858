"""What modern apps do beyond plain chat, through the openai and anthropic
Python SDKs against bedrock-proxy in demo mode, changing nothing but the
endpoint (issue 14): structured output (native and through a forced tool),
reasoning sent back with its signature, documents with citations,
count_tokens, the models endpoints, and errors the SDKs report well."""
import base64
import json

import anthropic
import jsonschema
import openai
import pydantic
import pytest

from conftest import BIN_DIR, Server, http_json

# Routes of config/demo.toml: Claude Haiku 4.5 has extended thinking and native
# structured output; Claude 3.5 Haiku has neither (structured output comes
# through a forced tool there).
THINKER = "haiku-4-5"
PLAIN = "haiku"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ANTHROPIC_WEATHER = {"name": "get_weather", "description": "Current weather for a city",
                     "input_schema": WEATHER["function"]["parameters"]}

# A one-page PDF whose text the simulator can read (an uncompressed Tj operator).
PDF = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
       b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
       b"3 0 obj << /Type /Page /Parent 2 0 R /Contents 4 0 R >> endobj\n"
       b"4 0 obj << /Length 55 >> stream\nBT /F1 12 Tf 72 720 Td (Revenue grew 10% in Q3.) Tj ET\n"
       b"endstream endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


class CalendarEvent(pydantic.BaseModel):
    name: str
    date: str
    participants: list[str]


class Answer(pydantic.BaseModel):
    answer: int
    unit: str


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


EVENT_PROMPT = [{"role": "system", "content": "Extract the event information."},
                {"role": "user", "content": "Alice and Bob are going to a science fair on Friday."}]


@pytest.mark.parametrize("model,how", [(THINKER, "native"), (PLAIN, "tool")])
def test_parse_with_a_pydantic_model(oai, model, how):
    raw = oai.chat.completions.with_raw_response.parse(model=model, messages=EVENT_PROMPT,
                                                       response_format=CalendarEvent)
    assert raw.headers["x-proxy-structured-output"] == how
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, CalendarEvent)
    assert all(isinstance(p, str) for p in choice.message.parsed.participants)
    assert not choice.message.tool_calls


def test_json_object(oai):
    r = oai.chat.completions.create(model=PLAIN, response_format={"type": "json_object"}, messages=[
        {"role": "user", "content": "Describe Paris as a JSON object."}])
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls


@pytest.mark.parametrize("model", [THINKER, PLAIN])
def test_a_streamed_structured_answer(oai, model):
    with oai.chat.completions.stream(model=model, messages=EVENT_PROMPT, response_format=CalendarEvent) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 1, "the answer streams"
    parsed = final.choices[0].message.parsed
    assert isinstance(parsed, CalendarEvent)
    jsonschema.validate(json.loads("".join(deltas)), CalendarEvent.model_json_schema())


def test_reasoning_effort_and_reasoning_content_sent_back(oai):
    messages = [{"role": "user", "content": "Use get_weather for Paris."}]
    first = oai.chat.completions.create(model=THINKER, messages=messages, tools=[WEATHER],
                                        reasoning_effort="low")
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert message.reasoning_content
    [block] = message.thinking_blocks
    assert block["thinking"] == message.reasoning_content and block["signature"]
    assert first.usage.completion_tokens > 0

    # The app appends the assistant message as the SDK returned it: its
    # reasoning goes back to Bedrock, signature included, which Bedrock
    # requires to continue a turn with extended thinking after a tool result.
    call = message.tool_calls[0]
    messages += [message, {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    second = oai.chat.completions.create(model=THINKER, messages=messages, tools=[WEATHER],
                                         reasoning_effort="low")
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content

    tampered = dict(message.model_dump(exclude_none=True))
    tampered["thinking_blocks"] = [{**block, "thinking": block["thinking"] + " (edited)"}]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=THINKER, messages=[messages[0], tampered, messages[2]],
                                    tools=[WEATHER], reasoning_effort="low")
    assert "signature" in info.value.body["message"]


def test_reasoning_streams_as_reasoning_content(oai):
    reasoning, text, blocks = "", "", []
    for chunk in oai.chat.completions.create(model=THINKER, reasoning_effort="minimal", stream=True,
                                             messages=[{"role": "user", "content": "Why is the sky blue?"}]):
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        blocks += getattr(delta, "thinking_blocks", None) or []
        text += delta.content or ""
    assert reasoning and text
    assert [b["thinking"] for b in blocks] == [reasoning] and blocks[0]["signature"]


def test_reasoning_effort_on_a_model_without_thinking_names_the_param(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=PLAIN, reasoning_effort="low", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["param"] == "reasoning_effort"


def test_what_langchain_and_others_send_is_accepted(oai):
    r = oai.chat.completions.create(model=PLAIN, tools=[WEATHER], parallel_tool_calls=False, seed=7, user="user-1",
                                    metadata={"app": "tests"}, store=False,
                                    messages=[{"role": "user", "content": "Use get_weather for Rome."}])
    assert len(r.choices[0].message.tool_calls) == 1


def test_models_by_id_in_both_shapes(oai, claude):
    model = oai.models.retrieve("haiku")
    assert model.id == "haiku" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as info:
        oai.models.retrieve("gpt-4o")
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"

    listed = [m.id for m in claude.models.list()]
    assert {"haiku", "sonnet", THINKER} <= set(listed)
    one = claude.models.retrieve(THINKER)
    assert one.type == "model" and one.id == THINKER and one.display_name
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("claude-9")


def test_anthropic_thinking_with_a_tool_round_trip(claude):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    messages = [{"role": "user", "content": "Use get_weather for Paris."}]
    first = claude.messages.create(model=THINKER, max_tokens=2048, thinking=thinking, tools=[ANTHROPIC_WEATHER],
                                   messages=messages)
    assert first.stop_reason == "tool_use"
    assert first.content[0].type == "thinking" and first.content[0].signature
    tool_use = next(b for b in first.content if b.type == "tool_use")
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "18C"}]}]
    second = claude.messages.create(model=THINKER, max_tokens=2048, thinking=thinking, tools=[ANTHROPIC_WEATHER],
                                    messages=messages)
    assert second.stop_reason == "end_turn" and any(b.type == "text" for b in second.content)

    # Without its thinking block the turn cannot continue, as on Anthropic's API.
    messages[1] = {"role": "assistant", "content": [b for b in first.content if b.type != "thinking"]}
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=THINKER, max_tokens=2048, thinking=thinking, tools=[ANTHROPIC_WEATHER],
                               messages=messages)
    assert "thinking" in info.value.body["error"]["message"]


def test_anthropic_streamed_thinking(claude):
    kinds, thinking, signature = [], "", None
    with claude.messages.stream(model=THINKER, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
                                messages=[{"role": "user", "content": "Why is the sky blue?"}]) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "thinking":
                thinking += event.thinking
            elif event.type == "signature":
                signature = event.signature
        final = stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds and "text" in kinds
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == thinking and final.content[0].signature == signature
    assert final.content[1].type == "text" and final.content[1].text


def test_anthropic_count_tokens_agrees_with_usage(claude):
    request = dict(model=THINKER, system="You are terse.", tools=[ANTHROPIC_WEATHER],
                   messages=[{"role": "user", "content": "How warm is Lisbon in May?"}])
    counted = claude.messages.count_tokens(**request)
    message = claude.messages.create(max_tokens=20, **request)
    billed = message.usage
    assert counted.input_tokens > 0
    assert counted.input_tokens == billed.input_tokens + billed.cache_read_input_tokens + billed.cache_creation_input_tokens


def test_anthropic_top_level_cache_control(claude):
    # anthropic 2.x's automatic caching marker: the proxy places the cache point.
    request = dict(model=THINKER, max_tokens=20, messages=[{"role": "user", "content": "Hello"}])
    message = claude.messages.create(cache_control={"type": "ephemeral"}, **request)
    assert message.content[0].text
    counted = claude.messages.count_tokens(cache_control={"type": "ephemeral"}, model=THINKER,
                                           messages=request["messages"])
    assert counted.input_tokens > 0


def test_anthropic_pdf_document_with_citations(claude):
    document = {"type": "document", "title": "Q3 report.pdf", "citations": {"enabled": True},
                "source": {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(PDF).decode()}}
    messages = [{"role": "user", "content": [document, {"type": "text", "text": "What grew?"}]}]
    message = claude.messages.create(model=THINKER, max_tokens=200, messages=messages)
    cited = [c for b in message.content if b.type == "text" for c in (b.citations or [])]
    assert cited and cited[0].type == "page_location"
    assert cited[0].cited_text == "Revenue grew 10% in Q3." and cited[0].document_title == "Q3 report"
    assert message.usage.input_tokens >= 1500, "a PDF page is billed"
    assert claude.messages.count_tokens(model=THINKER, messages=messages).input_tokens == message.usage.input_tokens


def test_anthropic_output_config(claude):
    parsed = claude.messages.parse(model=THINKER, max_tokens=300, output_format=Answer,
                                   messages=[{"role": "user", "content": "How far is the Moon?"}])
    assert isinstance(parsed.parsed_output, Answer)
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "temperature_c": {"type": "number"}},
              "required": ["city", "temperature_c"], "additionalProperties": False}
    message = claude.messages.create(model=THINKER, max_tokens=300, messages=[{"role": "user", "content": "Paris?"}],
                                     output_config={"format": {"type": "json_schema", "schema": schema}})
    jsonschema.validate(json.loads(message.content[0].text), schema)


def test_anthropic_stop_sequence_is_named(claude):
    request = dict(model=PLAIN, max_tokens=200, stop_sequences=["\n", " "],
                   messages=[{"role": "user", "content": "Tell me a story."}])
    message = claude.messages.create(**request)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == " "
    with claude.messages.stream(**request) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == " "


def test_errors_the_sdks_report_well(demo, oai, claude):
    api, admin = demo.urls["bedrock-proxy"], demo.urls["admin"]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=PLAIN, messages=[{"role": "user", "content": "x"}], n=2)
    assert info.value.body["param"] == "n"

    # An unknown path is no endpoint, not a missing model.
    status, body = http_json("POST", f"{api}/v1/chat/completion", {"model": PLAIN})
    assert status == 404 and body["error"]["code"] is None
    assert "no such endpoint" in body["error"]["message"]

    # A failure inside a stream: one level of JSON, the upstream's words.
    fault = {"model": "claude-3-5-haiku", "operation": "converse-stream", "fault": "midstream-error",
             "after_events": 3, "exception": "throttlingException", "times": 2}
    assert http_json("POST", f"{admin}/_sim/faults", fault)[0] == 201
    try:
        with pytest.raises(openai.APIError) as info:
            for _ in oai.chat.completions.create(model=PLAIN, stream=True, messages=[
                    {"role": "user", "content": "Count to twenty."}]):
                pass
        assert info.value.message and not info.value.message.lstrip().startswith("{")
        with pytest.raises(anthropic.APIStatusError) as info:
            with claude.messages.stream(model=PLAIN, max_tokens=200,
                                        messages=[{"role": "user", "content": "Count to twenty."}]) as stream:
                for _ in stream:
                    pass
        error = info.value.body["error"]
        assert error["type"] == "rate_limit_error" and not error["message"].lstrip().startswith("{")
    finally:
        http_json("DELETE", f"{admin}/_sim/faults")
