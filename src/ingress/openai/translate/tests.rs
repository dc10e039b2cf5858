use super::*;
use bedrock_wire::catalog::Catalog;
use bedrock_wire::converse::split;

/// What the embedded catalog says `model` supports (nothing for an alias).
fn features(model: &str) -> Features {
    let catalog = Catalog::embedded();
    Features::of(model, catalog.get(model).map(|l| &*l.model))
}

fn ok(body: Value) -> Translated {
    let f = features(body["model"].as_str().unwrap_or(""));
    request(&body, &f).unwrap_or_else(|e| panic!("{e}"))
}

fn err(body: Value) -> String {
    let f = features(body["model"].as_str().unwrap_or(""));
    request(&body, &f).unwrap_err().message
}

const SONNET_45: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
const SONNET_4: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";
const OPUS_45: &str = "us.anthropic.claude-opus-4-5-20251101-v1:0";

#[test]
fn a_plain_request_becomes_what_a_native_client_sends() {
    let t = ok(
        json!({"model": "haiku", "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0, "max_tokens": 50}),
    );
    assert_eq!(t.model, "haiku");
    assert!(!t.stream);
    assert_eq!(
        t.converse,
        json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "inferenceConfig": {"maxTokens": 50, "temperature": 0}})
    );
}

#[test]
fn roles_merge_and_tools_round_trip() {
    let t = ok(json!({"model": "m", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "user", "content": "And Rome?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"}],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required", "stop": "END", "max_completion_tokens": 99}));
    let c = &t.converse;
    assert_eq!(
        c["system"],
        json!([{"text": "Be brief."}, {"text": "Use tools."}])
    );
    let m = c["messages"].as_array().unwrap();
    assert_eq!(
        m.len(),
        3,
        "consecutive user messages merged; tool results merged into one user turn"
    );
    assert_eq!(
        m[0]["content"],
        json!([{"text": "Weather in Paris?"}, {"text": "And Rome?"}])
    );
    assert_eq!(
        m[1]["content"][1]["toolUse"],
        json!({"toolUseId": "call_2", "name": "weather", "input": {"city": "Rome"}})
    );
    assert_eq!(m[2]["role"], "user");
    assert_eq!(
        m[2]["content"][0]["toolResult"],
        json!({"toolUseId": "call_1", "content": [{"text": "sunny"}]})
    );
    assert_eq!(c["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(
        c["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["city"]
            ["type"],
        "string"
    );
    assert_eq!(
        c["inferenceConfig"],
        json!({"maxTokens": 99, "stopSequences": ["END"]})
    );
    let named = ok(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}}),
    );
    assert_eq!(
        named.converse["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "f"}})
    );
    let none = ok(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}),
    );
    assert!(
        none.converse.get("toolConfig").is_none(),
        "none without tool history drops the tools"
    );
}

#[test]
fn images_come_as_data_urls() {
    let png = "iVBORw0KGgo=";
    let t = ok(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}]}]}),
    );
    assert_eq!(
        t.converse["messages"][0]["content"][1],
        json!({"image": {"format": "png", "source": {"bytes": png}}})
    );
    let remote = err(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
    );
    assert!(
        remote.contains("messages[0].content[0].image_url") && remote.contains("data URLs"),
        "{remote}"
    );
    let broken = err(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}),
    );
    assert!(broken.contains("not valid base64"), "{broken}");
}

#[test]
fn what_bedrock_cannot_honour_is_refused_by_name() {
    let base = || json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    for (key, value, expected) in [
        ("n", json!(2), "only n = 1"),
        ("logprobs", json!(true), "`logprobs` is not supported"),
        (
            "presence_penalty",
            json!(0.5),
            "`presence_penalty` is not supported",
        ),
        ("temperature", json!(1.5), "between 0 and 1"),
        ("made_up", json!(1), "`made_up` is not supported"),
        (
            "reasoning_effort",
            json!("high"),
            "has no extended thinking",
        ),
    ] {
        let mut body = base();
        body[key] = value;
        let f = features("m");
        let e = request(&body, &f).unwrap_err();
        assert!(e.message.starts_with(key), "{}", e.message);
        assert!(e.message.contains(expected), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some(key), "param names the field");
    }
    let mut harmless = base();
    harmless["user"] = json!("u-1");
    harmless["presence_penalty"] = json!(0);
    harmless["n"] = json!(1);
    harmless["seed"] = json!(7);
    harmless["parallel_tool_calls"] = json!(false);
    harmless["response_format"] = json!({"type": "text"});
    let t = ok(harmless);
    assert_eq!(t.converse["requestMetadata"], json!({"user": "u-1"}));
    assert!(t.structured.is_none());
    assert!(err(json!({"messages": []})).starts_with("model"));
    assert!(
        err(json!({"model": "m", "messages": [{"role": "function", "content": "x"}]}))
            .contains("role")
    );
}

#[test]
fn responses_map_content_tools_stop_and_usage() {
    let converse = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"text": "Let me check."},
            {"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"city": "Paris"}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 115, "cacheReadInputTokens": 100},
        "metrics": {"latencyMs": 10}
    });
    let r = response(&converse, "haiku", "chatcmpl-1", 7, None);
    assert_eq!(r["object"], "chat.completion");
    let choice = &r["choices"][0];
    assert_eq!(choice["message"]["content"], "Let me check.");
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(
        r["usage"],
        json!({"prompt_tokens": 110, "completion_tokens": 5, "total_tokens": 115,
        "prompt_tokens_details": {"cached_tokens": 100}})
    );
    assert_eq!(finish_reason(Some("max_tokens")), "length");
    assert_eq!(finish_reason(Some("end_turn")), "stop");
    assert_eq!(finish_reason(Some("content_filtered")), "content_filter");
}

#[test]
fn streams_become_chat_completion_chunks() {
    let converse = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"text": "Checking the weather in Paris now."},
            {"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"city": "Paris"}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15},
        "metrics": {"latencyMs": 10}
    });
    let mut w = ChunkWriter::new("id1".into(), "haiku".into(), 1, true);
    let chunks: Vec<Value> = split(&converse)
        .unwrap()
        .iter()
        .flat_map(|e| w.event(e))
        .map(|b| {
            let s = std::str::from_utf8(&b).unwrap();
            serde_json::from_str(s.strip_prefix("data: ").unwrap().trim()).unwrap()
        })
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Checking the weather in Paris now.");
    let call = chunks
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"] == "t1")
        .unwrap();
    assert_eq!(
        call["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "weather"
    );
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    let finish = chunks
        .iter()
        .find(|c| !c["choices"][0]["finish_reason"].is_null())
        .unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["total_tokens"], 15);
    assert_eq!(&w.done()[..], b"data: [DONE]\n\n");
}

#[test]
fn structured_output_is_native_where_the_model_has_it_and_a_tool_elsewhere() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}},
        "required": ["city"], "additionalProperties": false});
    let body = |model: &str| {
        json!({"model": model, "messages": [{"role": "user", "content": "Where?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "Place", "schema": schema, "strict": true}}})
    };
    let native = ok(body(SONNET_45));
    assert_eq!(native.structured, Some(Structured::Native));
    let format = &native.converse["outputConfig"]["textFormat"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["structure"]["jsonSchema"]["name"], "Place");
    let sent: Value = serde_json::from_str(
        format["structure"]["jsonSchema"]["schema"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sent, schema, "the schema goes as a string");
    assert!(native.converse.get("toolConfig").is_none());

    let by_tool = ok(body(SONNET_4));
    assert_eq!(by_tool.structured, Some(Structured::Tool("Place".into())));
    assert!(by_tool.converse.get("outputConfig").is_none());
    let config = &by_tool.converse["toolConfig"];
    assert_eq!(config["toolChoice"], json!({"tool": {"name": "Place"}}));
    assert_eq!(
        config["tools"][0]["toolSpec"]["inputSchema"]["json"],
        schema
    );
    assert_eq!(config["tools"][0]["toolSpec"]["strict"], true);

    // json_object has no closed schema: always the tool.
    let mut object = body(SONNET_45);
    object["response_format"] = json!({"type": "json_object"});
    assert_eq!(
        ok(object).structured,
        Some(Structured::Tool("json_object".into()))
    );

    // With tools of the client's own, the model must call one of them or answer.
    let mut with_tools = body(SONNET_4);
    with_tools["tools"] = json!([{"type": "function", "function": {"name": "lookup"}}]);
    let t = ok(with_tools);
    assert_eq!(t.converse["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(
        t.converse["toolConfig"]["tools"][1]["toolSpec"]["name"],
        "Place"
    );
}

#[test]
fn the_answer_of_a_structure_tool_is_the_message_content() {
    let converse = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": "Place", "input": {"city": "Paris"}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15},
        "metrics": {"latencyMs": 10}
    });
    let tool = Structured::Tool("Place".into());
    let r = response(&converse, "m", "id", 1, Some(&tool));
    let message = &r["choices"][0]["message"];
    assert_eq!(message["content"], r#"{"city":"Paris"}"#);
    assert!(message.get("tool_calls").is_none());
    assert_eq!(r["choices"][0]["finish_reason"], "stop");

    let mut w = ChunkWriter::new("id".into(), "m".into(), 1, false).structured(Some(&tool));
    let streamed: String = split(&converse)
        .unwrap()
        .iter()
        .flat_map(|e| w.event(e))
        .filter_map(|b| {
            let s = String::from_utf8(b.to_vec()).unwrap();
            let v: Value = serde_json::from_str(s.strip_prefix("data: ").unwrap().trim()).unwrap();
            assert!(v["choices"][0]["delta"].get("tool_calls").is_none());
            if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                assert_eq!(f, "stop");
            }
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&streamed).unwrap(),
        json!({"city": "Paris"})
    );
}

#[test]
fn reasoning_effort_becomes_a_thinking_budget_and_comes_back_signed() {
    let t = ok(json!({"model": SONNET_45, "reasoning_effort": "medium",
        "messages": [{"role": "user", "content": "Think."}]}));
    assert_eq!(
        t.converse["additionalModelRequestFields"]["thinking"],
        json!({"type": "enabled", "budget_tokens": 4096})
    );
    assert_eq!(
        t.converse["inferenceConfig"]["maxTokens"],
        4096 + ANSWER_TOKENS
    );
    assert!(
        t.converse.get("outputConfig").is_none(),
        "no effort on Sonnet 4.5"
    );

    let capped = ok(
        json!({"model": SONNET_45, "reasoning_effort": "high", "max_completion_tokens": 3000,
        "messages": [{"role": "user", "content": "Think."}]}),
    );
    assert_eq!(
        capped.converse["additionalModelRequestFields"]["thinking"]["budget_tokens"], 1500,
        "the limit covers reasoning and answer: half of it for the reasoning"
    );
    let opus = ok(json!({"model": OPUS_45, "reasoning_effort": "minimal",
        "messages": [{"role": "user", "content": "Think."}]}));
    assert_eq!(opus.converse["outputConfig"]["effort"], "low");

    for (extra, param) in [
        (json!({"temperature": 0}), "temperature"),
        (json!({"max_tokens": 1000}), "max_tokens"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "reasoning_effort",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}),
            "tool_choice",
        ),
    ] {
        let mut body = json!({"model": SONNET_45, "reasoning_effort": "low",
            "messages": [{"role": "user", "content": "Think."}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let e = request(&body, &features(SONNET_45)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{}", e.message);
    }

    // Signed reasoning goes back to Bedrock first in its turn; unsigned does not go.
    let back = ok(json!({"model": SONNET_45, "messages": [
        {"role": "user", "content": "Think."},
        {"role": "assistant", "content": "Done.", "reasoning_content": "Hmm.",
            "thinking_blocks": [{"type": "thinking", "thinking": "Hmm.", "signature": "c2ln"},
                {"type": "redacted_thinking", "data": "ZW5j"}]},
        {"role": "assistant", "content": "More.", "reasoning_content": "unsigned"},
        {"role": "user", "content": "Again."}]}));
    assert_eq!(
        back.converse["messages"][1]["content"],
        json!([
            {"reasoningContent": {"reasoningText": {"text": "Hmm.", "signature": "c2ln"}}},
            {"reasoningContent": {"redactedContent": "ZW5j"}},
            {"text": "Done."},
            {"text": "More."}
        ])
    );
    let unsigned = err(json!({"model": SONNET_45, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "y", "thinking_blocks": [{"type": "thinking", "thinking": "t"}]}]}));
    assert!(
        unsigned.starts_with("messages[1].thinking_blocks[0].signature"),
        "{unsigned}"
    );
}

#[test]
fn reasoning_comes_back_as_reasoning_content_and_thinking_blocks() {
    let converse = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "Let me think.", "signature": "c2ln"}}},
            {"text": "Four."}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15},
        "metrics": {"latencyMs": 10}
    });
    let r = response(&converse, "m", "id", 1, None);
    let message = &r["choices"][0]["message"];
    assert_eq!(message["content"], "Four.");
    assert_eq!(message["reasoning_content"], "Let me think.");
    assert_eq!(
        message["thinking_blocks"],
        json!([{"type": "thinking", "thinking": "Let me think.", "signature": "c2ln"}])
    );
    let mut w = ChunkWriter::new("id".into(), "m".into(), 1, false);
    let deltas: Vec<Value> = split(&converse)
        .unwrap()
        .iter()
        .flat_map(|e| w.event(e))
        .map(|b| {
            let s = String::from_utf8(b.to_vec()).unwrap();
            serde_json::from_str::<Value>(s.strip_prefix("data: ").unwrap().trim()).unwrap()
                ["choices"][0]["delta"]
                .clone()
        })
        .collect();
    let reasoning: String = deltas
        .iter()
        .filter_map(|d| d["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Let me think.");
    let blocks: Vec<&Value> = deltas
        .iter()
        .filter_map(|d| d.get("thinking_blocks"))
        .collect();
    assert_eq!(
        blocks,
        [&json!([{"type": "thinking", "thinking": "Let me think.", "signature": "c2ln"}])]
    );
}

#[test]
fn tool_choice_none_keeps_the_model_from_tools_even_after_tool_use() {
    let t = ok(json!({"model": "m", "tool_choice": "none",
        "tools": [{"type": "function", "function": {"name": "weather"}}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}));
    assert!(t.converse.get("toolConfig").is_none());
    assert_eq!(
        t.converse["messages"][1]["content"],
        json!([{"text": "[called tool weather with {}]"}])
    );
    assert_eq!(
        t.converse["messages"][2]["content"],
        json!([{"text": "[result of tool call c1: sunny]"}])
    );
}

#[test]
fn parallel_tool_calls_false_is_claudes_switch() {
    let body = |model: &str| {
        json!({"model": model, "parallel_tool_calls": false,
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required",
        "messages": [{"role": "user", "content": "x"}]})
    };
    assert_eq!(
        ok(body(SONNET_4)).converse["additionalModelRequestFields"]["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert!(
        ok(body("us.amazon.nova-pro-v1:0"))
            .converse
            .get("additionalModelRequestFields")
            .is_none(),
        "elsewhere best effort"
    );
}

#[test]
fn user_and_metadata_become_request_metadata() {
    let t = ok(
        json!({"model": "m", "user": "user-42", "metadata": {"team": "search", "run": "7"},
        "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(
        t.converse["requestMetadata"],
        json!({"user": "user-42", "team": "search", "run": "7"})
    );
    let e = request(
        &json!({"model": "m", "metadata": {"team": "a;b"}, "messages": [{"role": "user", "content": "x"}]}),
        &Features::default(),
    )
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("metadata.team"));
}

#[test]
fn files_become_documents() {
    let pdf = "JVBERi0xLjQK";
    let t = ok(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Summarize."},
        {"type": "file", "file": {"filename": "Q3 report.pdf", "file_data": format!("data:application/pdf;base64,{pdf}")}}]}]}),
    );
    assert_eq!(
        t.converse["messages"][0]["content"][1],
        json!({"document": {"format": "pdf", "name": "Q3 report", "source": {"bytes": pdf}}})
    );
    let e = err(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-abc"}}]}]}),
    );
    assert!(e.contains("file_id") && e.contains("Files API"), "{e}");
}

/// Every case under `translate/golden/`, the mapping as data:
/// - `request/<case>.in.json`, a Chat Completions request, and `.out.json`: the
///   [`Translated`] request (the Converse body, the model, the stream flags,
///   how structured output is produced), or `{"error": ...}`, the 400 the
///   client gets. The model's features come from the embedded catalog: a full
///   model id (`us.anthropic.claude-sonnet-4-5-...`) has them, an alias none;
/// - `response/<case>.in.json`, a Converse response (or `{"respond_tool",
///   "converse"}` when structured output came by tool), and `.out.json`: the
///   Chat Completion (id `chatcmpl-golden`, model `haiku`, created `1700000000`);
/// - `stream/<case>.in.json`, `{"include_usage": bool, "respond_tool"?, "events":
///   [...]}` with ConverseStream events, and `.out.sse`: the server-sent events
///   the client reads, `data: [DONE]` included.
///
/// A mismatch prints a diff per case. `UPDATE_GOLDEN=1 cargo nextest run -p
/// bedrock-proxy golden` rewrites the `.out` files from the code; review them.
#[test]
fn golden_files() {
    use crate::ingress::golden::{events, pretty, Golden};
    let mut golden = Golden::new("src/ingress/openai/translate/golden");
    golden.folder("request", "json", |input| {
        let f = features(input["model"].as_str().unwrap_or(""));
        pretty(&match request(input, &f) {
            Ok(t) => json!({
                "model": t.model,
                "stream": t.stream,
                "include_usage": t.include_usage,
                "structured_output": t.structured.as_ref().map(Structured::label),
                "converse": t.converse,
            }),
            Err(e) => json!({ "error": { "kind": e.kind.label(), "param": e.param, "message": e.message } }),
        })
    });
    golden.folder("response", "json", |input| {
        // `{"respond_tool": name, "converse": ...}` for structured output by tool.
        let (converse, structured) = match input["respond_tool"].as_str() {
            Some(tool) => (&input["converse"], Some(Structured::Tool(tool.to_owned()))),
            None => (input, None),
        };
        pretty(&response(
            converse,
            "haiku",
            "chatcmpl-golden",
            1_700_000_000,
            structured.as_ref(),
        ))
    });
    golden.folder("stream", "sse", |input| {
        let include_usage = input["include_usage"].as_bool().unwrap_or(false);
        let structured = input["respond_tool"]
            .as_str()
            .map(|t| Structured::Tool(t.to_owned()));
        let mut writer = ChunkWriter::new(
            "chatcmpl-golden".into(),
            "haiku".into(),
            1_700_000_000,
            include_usage,
        )
        .structured(structured.as_ref());
        let mut sse = Vec::new();
        for event in events(&input["events"]) {
            for chunk in writer.event(&event) {
                sse.extend_from_slice(&chunk);
            }
        }
        sse.extend_from_slice(&writer.done());
        String::from_utf8(sse).unwrap()
    });
    golden.finish();
}
