"""A framework as apps use it, against bedrock-proxy in demo mode with nothing
changed but the endpoint (issue 14): LangChain's ChatOpenAI (langchain-openai)
for structured output by both of its methods, a tool round trip and streaming.
docs/APIS.md says how to point the other frameworks at the proxy."""
import pydantic
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from conftest import BIN_DIR, Server

# Routes of config/demo.toml: Claude Haiku 4.5 has native structured output;
# Claude 3.5 Haiku has not (the proxy answers through a forced tool there).
THINKER = "haiku-4-5"
PLAIN = "haiku"


class CalendarEvent(pydantic.BaseModel):
    """An event on a calendar."""

    name: str
    date: str
    participants: list[str]


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"18C and sunny in {city}"


@pytest.fixture(scope="module")
def demo():
    server = Server([str(BIN_DIR / "bedrock-proxy"), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
    yield server
    server.stop()


def chat(demo, model, **kwargs):
    return ChatOpenAI(base_url=demo.urls["bedrock-proxy"] + "/v1", api_key="demo", model=model, max_retries=0,
                      **kwargs)


# json_schema is LangChain's default method; function_calling sends a forced
# tool with parallel_tool_calls: false (which the proxy used to refuse).
@pytest.mark.parametrize("model", [THINKER, PLAIN])
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(demo, model, method):
    extract = chat(demo, model).with_structured_output(CalendarEvent, method=method)
    event = extract.invoke("Alice and Bob are going to a science fair on Friday.")
    assert isinstance(event, CalendarEvent)
    assert event.name and all(isinstance(p, str) for p in event.participants)


def test_a_tool_round_trip(demo):
    llm = chat(demo, PLAIN).bind_tools([get_weather])
    messages = [HumanMessage("Use get_weather for Paris.")]
    first = llm.invoke(messages)
    [call] = first.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)
    messages += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    second = llm.invoke(messages)
    assert not second.tool_calls and second.content


def test_streaming(demo):
    chunks = list(chat(demo, PLAIN, stream_usage=True).stream("Count to five."))
    assert len(chunks) > 1
    text = "".join(c.content for c in chunks)
    assert text
    usage = sum(chunks[1:], chunks[0]).usage_metadata
    assert usage["output_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
