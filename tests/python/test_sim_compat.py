"""boto3 against bedrock-sim for what modern apps do beyond plain chat: extended
thinking, structured output, forced tool choice in an agent loop, documents with
citations, and embedding models, written as a boto3 user writes them."""
import json
import math

import jsonschema
import pytest
from botocore.exceptions import ClientError

from conftest import bedrock_client, start_sim, user

SONNET_45 = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
HAIKU_45 = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
HAIKU_35 = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
SONNET_4 = "us.anthropic.claude-sonnet-4-20250514-v1:0"
TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-multilingual-v3"

THINKING = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
WEATHER_TOOL = {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}


@pytest.fixture
def seeded_sim():
    """A simulator that answers reproducibly at any temperature (thinking needs 1)."""
    server = start_sim("--time-scale", "0", "--seed", "5")
    yield server
    server.stop()


def validation_error(info):
    err = info.value.response["Error"]
    assert err["Code"] == "ValidationException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return err["Message"]


def test_thinking_then_tool_round_trip_with_the_signature(seeded_sim):
    client = bedrock_client(seeded_sim.url)
    messages = user("Use get_weather for Paris, then tell me what to wear.")
    first = client.converse(modelId=SONNET_45, messages=messages, toolConfig={"tools": [WEATHER_TOOL]},
                            inferenceConfig={"maxTokens": 2048},
                            additionalModelRequestFields=THINKING)
    content = first["output"]["message"]["content"]
    reasoning = content[0]["reasoningContent"]["reasoningText"]
    assert reasoning["text"] and reasoning["signature"]
    tool_use = next(b["toolUse"] for b in content if "toolUse" in b)
    assert first["stopReason"] == "tool_use"

    messages.append(first["output"]["message"])
    messages.append({"role": "user", "content": [{"toolResult": {
        "toolUseId": tool_use["toolUseId"], "content": [{"json": {"celsius": 18}}]}}]})
    second = client.converse(modelId=SONNET_45, messages=messages, toolConfig={"tools": [WEATHER_TOOL]},
                             inferenceConfig={"maxTokens": 2048},
                             additionalModelRequestFields=THINKING)
    assert second["stopReason"] == "end_turn"
    assert second["output"]["message"]["content"][0]["text"]

    messages[1]["content"][0]["reasoningContent"]["reasoningText"]["text"] += " Or not."
    with pytest.raises(ClientError) as info:
        client.converse(modelId=SONNET_45, messages=messages, toolConfig={"tools": [WEATHER_TOOL]},
                        inferenceConfig={"maxTokens": 2048}, additionalModelRequestFields=THINKING)
    assert "Invalid `signature` in `thinking` block" in validation_error(info)

    messages[1]["content"] = messages[1]["content"][1:]
    with pytest.raises(ClientError) as info:
        client.converse(modelId=SONNET_45, messages=messages, toolConfig={"tools": [WEATHER_TOOL]},
                        inferenceConfig={"maxTokens": 2048}, additionalModelRequestFields=THINKING)
    assert "must start with a thinking block" in validation_error(info)


def test_streamed_thinking_comes_before_the_text(seeded_sim):
    client = bedrock_client(seeded_sim.url)
    stream = client.converse_stream(modelId=SONNET_45, messages=user("Why is the sea salty?"),
                                    inferenceConfig={"maxTokens": 3000},
                                    additionalModelRequestFields={"thinking": {"type": "enabled", "budget_tokens": 2000}})
    order, thought, text, signature, usage = [], "", "", None, None
    for event in stream["stream"]:
        delta = event.get("contentBlockDelta", {}).get("delta", {})
        if "reasoningContent" in delta:
            r = delta["reasoningContent"]
            thought += r.get("text", "")
            signature = r.get("signature", signature)
            order.append("signature" if "signature" in r else "reasoning")
        elif "text" in delta:
            text += delta["text"]
            order.append("text")
        if "metadata" in event:
            usage = event["metadata"]["usage"]
    assert order[0] == "reasoning" and order.index("text") == order.index("signature") + 1
    assert order.count("signature") == 1 and signature
    assert usage["outputTokens"] == len(thought.split()) + len(text.split())


def test_thinking_on_a_model_without_it_is_refused(sim):
    client = bedrock_client(sim.url)
    with pytest.raises(ClientError) as info:
        client.converse(modelId=HAIKU_35, messages=user("hi"), additionalModelRequestFields=THINKING)
    assert "extraneous key [thinking]" in validation_error(info)
    with pytest.raises(ClientError) as info:
        client.converse(modelId=SONNET_45, messages=user("hi"), inferenceConfig={"temperature": 0.2},
                        additionalModelRequestFields=THINKING)
    assert "`temperature` may only be set to 1 when thinking is enabled" in validation_error(info)


PYDANTIC_SCHEMA = {  # Invoice.model_json_schema() of a pydantic v2 model
    "$defs": {
        "LineItem": {"properties": {
            "sku": {"title": "Sku", "type": "string", "minLength": 3},
            "quantity": {"title": "Quantity", "type": "integer", "exclusiveMinimum": 0},
            "price": {"title": "Price", "type": "number", "minimum": 0}},
            "required": ["sku", "quantity", "price"], "title": "LineItem", "type": "object"},
        "Status": {"enum": ["draft", "sent", "paid"], "title": "Status", "type": "string"},
    },
    "properties": {
        "number": {"title": "Number", "type": "string"},
        "status": {"$ref": "#/$defs/Status"},
        "items": {"items": {"$ref": "#/$defs/LineItem"}, "title": "Items", "type": "array", "minItems": 1},
        "due": {"anyOf": [{"format": "date", "type": "string"}, {"type": "null"}], "title": "Due"},
        "customer_email": {"format": "email", "title": "Customer Email", "type": "string"},
    },
    "required": ["number", "status", "items", "due", "customer_email"],
    "title": "Invoice", "type": "object",
}


def output_config(schema):
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
        "schema": json.dumps(schema), "name": "Invoice", "description": "An invoice"}}}}


def test_structured_output_validates_against_the_schema(sim):
    client = bedrock_client(sim.url)
    resp = client.converse(modelId=HAIKU_45, messages=user("Draft an invoice."),
                           inferenceConfig={"temperature": 0}, outputConfig=output_config(PYDANTIC_SCHEMA))
    invoice = json.loads(resp["output"]["message"]["content"][0]["text"])
    jsonschema.validate(invoice, PYDANTIC_SCHEMA, format_checker=jsonschema.FormatChecker())

    stream = client.converse_stream(modelId=HAIKU_45, messages=user("Draft an invoice."),
                                    inferenceConfig={"temperature": 0}, outputConfig=output_config(PYDANTIC_SCHEMA))
    streamed = "".join(e["contentBlockDelta"]["delta"].get("text", "")
                       for e in stream["stream"] if "contentBlockDelta" in e)
    assert json.loads(streamed) == invoice

    with pytest.raises(ClientError) as info:
        client.converse(modelId=SONNET_4, messages=user("Draft an invoice."),
                        outputConfig=output_config(PYDANTIC_SCHEMA))
    assert "outputConfig.textFormat" in validation_error(info)
    bad = output_config(PYDANTIC_SCHEMA)
    bad["textFormat"]["structure"]["jsonSchema"]["schema"] = "{not json"
    with pytest.raises(ClientError) as info:
        client.converse(modelId=HAIKU_45, messages=user("x"), outputConfig=bad)
    assert "not valid JSON" in validation_error(info)


def test_tool_choice_any_ends_an_agent_loop_with_the_final_answer_tool(sim):
    client = bedrock_client(sim.url)
    final_schema = {"type": "object", "properties": {"answer": {"type": "string"},
                                                      "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
                    "required": ["answer", "confidence"]}
    tools = {"tools": [
        {"toolSpec": {"name": "lookup", "inputSchema": {"json": {
            "type": "object", "properties": {"term": {"type": "string"}}, "required": ["term"]}}}},
        {"toolSpec": {"name": "final_answer", "inputSchema": {"json": final_schema}}},
    ], "toolChoice": {"any": {}}}
    messages = user("What is the boiling point of water?")
    for turn in range(4):
        resp = client.converse(modelId=HAIKU_35, messages=messages, toolConfig=tools)
        assert resp["stopReason"] == "tool_use"
        call = next(b["toolUse"] for b in resp["output"]["message"]["content"] if "toolUse" in b)
        if call["name"] == "final_answer":
            break
        messages.append(resp["output"]["message"])
        messages.append({"role": "user", "content": [{"toolResult": {
            "toolUseId": call["toolUseId"], "content": [{"text": "100 C at sea level"}]}}]})
    else:
        pytest.fail("the agent never called final_answer")
    assert turn == 1, "lookup first, then the tool not yet called"
    jsonschema.validate(call["input"], final_schema)


def tiny_pdf(text):
    return (b"%PDF-1.4\n1 0 obj << /Type /Pages /Kids [2 0 R] /Count 1 >> endobj\n"
            b"2 0 obj << /Type /Page /Parent 1 0 R /Contents 3 0 R >> endobj\n"
            b"3 0 obj << >> stream\nBT 72 712 Td (" + text.encode() + b") Tj ET\nendstream endobj\n%%EOF\n")


def test_documents_are_counted_and_count_tokens_agrees(sim):
    client = bedrock_client(sim.url)
    content = [
        {"document": {"format": "pdf", "name": "Contract (signed)", "source": {"bytes": tiny_pdf("Term: 12 months.")}}},
        {"document": {"format": "csv", "name": "prices", "source": {"bytes": b"sku,price\nA1,3.50\nB2,7.25\n"}}},
        {"text": "Summarize these."},
    ]
    messages = [{"role": "user", "content": content}]
    resp = client.converse(modelId=HAIKU_35, messages=messages)
    plain = client.converse(modelId=HAIKU_35, messages=user("Summarize these."))
    assert resp["usage"]["inputTokens"] > plain["usage"]["inputTokens"] + 1500
    counted = client.count_tokens(modelId="anthropic.claude-3-5-haiku-20241022-v1:0",
                                  input={"converse": {"messages": messages}})
    assert counted["inputTokens"] == resp["usage"]["inputTokens"]

    content[0]["document"]["name"] = "contract.pdf"
    with pytest.raises(ClientError) as info:
        client.converse(modelId=HAIKU_35, messages=messages)
    assert validation_error(info).startswith("The document file name can only contain")


def test_citations_point_into_the_document(sim):
    client = bedrock_client(sim.url)
    doc = {"document": {"format": "txt", "name": "handbook", "citations": {"enabled": True},
                        "source": {"text": "Employees get 25 days of leave. Requests go to HR."}}}
    resp = client.converse(modelId=HAIKU_35, messages=[{"role": "user", "content": [doc, {"text": "How much leave?"}]}])
    cited = [b["citationsContent"] for b in resp["output"]["message"]["content"] if "citationsContent" in b]
    assert len(cited) == 1 and cited[0]["content"][0]["text"]
    citation = cited[0]["citations"][0]
    assert citation["title"] == "handbook"
    assert citation["sourceContent"] == [{"text": "Employees get 25 days of leave."}]
    assert citation["location"] == {"documentChar": {"documentIndex": 0, "start": 0, "end": 31}}


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def titan(client, text, **extra):
    resp = client.invoke_model(modelId=TITAN, body=json.dumps({"inputText": text, **extra}),
                               contentType="application/json", accept="application/json")
    return resp, json.loads(resp["body"].read())


def test_titan_embeddings_rank_a_paraphrase_above_an_unrelated_sentence(sim):
    client = bedrock_client(sim.url)
    resp, body = titan(client, "How do I bake sourdough bread at home?")
    query = body["embedding"]
    assert len(query) == 1024
    assert abs(math.sqrt(sum(x * x for x in query)) - 1) < 1e-3
    assert body["inputTextTokenCount"] == 10
    headers = resp["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-input-token-count"] == "10"

    paraphrase = titan(client, "Baking sourdough bread at home: how to do it")[1]["embedding"]
    unrelated = titan(client, "The stock market closed higher on Friday.")[1]["embedding"]
    assert cosine(query, paraphrase) > cosine(query, unrelated) + 0.2
    small = titan(client, "How do I bake sourdough bread at home?", dimensions=256, normalize=True)[1]
    assert len(small["embedding"]) == 256

    with pytest.raises(ClientError) as info:
        titan(client, "x", dimensions=768)
    assert "#/dimensions: 768 is not a valid enum value" in validation_error(info)
    with pytest.raises(ClientError) as info:
        titan(client, "lorem " * 7000)
    assert "Too many input tokens. Max input tokens: 8192" in validation_error(info)
    with pytest.raises(ClientError) as info:
        client.converse(modelId=TITAN, messages=user("hi"))
    assert "doesn't support the model" in validation_error(info)


def test_cohere_embeddings_in_batches_and_by_type(sim):
    client = bedrock_client(sim.url)
    texts = ["renew my passport", "passport renewal process", "chocolate cake recipe"]
    resp = client.invoke_model(modelId=COHERE, body=json.dumps({"texts": texts, "input_type": "search_document"}))
    body = json.loads(resp["body"].read())
    assert body["response_type"] == "embeddings_floats" and body["texts"] == texts and body["id"]
    a, b, c = body["embeddings"]
    assert cosine(a, b) > cosine(a, c)

    typed = json.loads(client.invoke_model(modelId=COHERE, body=json.dumps(
        {"texts": texts[:1], "input_type": "search_query", "embedding_types": ["float", "binary"]}))["body"].read())
    assert typed["response_type"] == "embeddings_by_type"
    assert len(typed["embeddings"]["binary"][0]) == 1024 // 8

    with pytest.raises(ClientError) as info:
        client.invoke_model(modelId=COHERE, body=json.dumps({"texts": texts}))
    assert "required key [input_type] not found" in validation_error(info)
    with pytest.raises(ClientError) as info:
        client.invoke_model(modelId=COHERE, body=json.dumps({"texts": ["x"] * 97, "input_type": "clustering"}))
    assert "expected maximum item count: 96" in validation_error(info)
