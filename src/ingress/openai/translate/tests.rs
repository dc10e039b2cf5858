use super::*;
use bedrock_wire::converse::split;

fn ok(body: Value) -> Translated {
    request(&body).unwrap_or_else(|e| panic!("{e}"))
}

fn err(body: Value) -> String {
    request(&body).unwrap_err().message
}

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
        (
            "response_format",
            json!({"type": "json_object"}),
            "`response_format` is not supported",
        ),
        ("temperature", json!(1.5), "between 0 and 1"),
        ("parallel_tool_calls", json!(false), "cannot be guaranteed"),
        ("made_up", json!(1), "`made_up` is not supported"),
    ] {
        let mut body = base();
        body[key] = value;
        let message = err(body);
        assert!(message.starts_with(key), "{message}");
        assert!(message.contains(expected), "{message}");
    }
    let mut harmless = base();
    harmless["user"] = json!("u-1");
    harmless["presence_penalty"] = json!(0);
    harmless["n"] = json!(1);
    assert!(request(&harmless).is_ok());
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
    let r = response(&converse, "haiku", "chatcmpl-1", 7);
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

/// Every case under `translate/golden/`, the mapping as data:
/// - `request/<case>.in.json`, a Chat Completions request, and `.out.json`: the
///   [`Translated`] request (the Converse body, the model, the stream flags), or
///   `{"error": ...}`, the 400 the client gets;
/// - `response/<case>.in.json`, a Converse response, and `.out.json`: the Chat
///   Completion (id `chatcmpl-golden`, model `haiku`, created `1700000000`);
/// - `stream/<case>.in.json`, `{"include_usage": bool, "events": [...]}` with
///   ConverseStream events, and `.out.sse`: the server-sent events the client
///   reads, `data: [DONE]` included.
///
/// A mismatch prints a diff per case. `UPDATE_GOLDEN=1 cargo nextest run -p
/// bedrock-proxy golden` rewrites the `.out` files from the code; review them.
#[test]
fn golden_files() {
    use crate::ingress::golden::{events, pretty, Golden};
    let mut golden = Golden::new("src/ingress/openai/translate/golden");
    golden.folder("request", "json", |input| {
        pretty(&match request(input) {
            Ok(t) => json!({
                "model": t.model,
                "stream": t.stream,
                "include_usage": t.include_usage,
                "converse": t.converse,
            }),
            Err(e) => json!({ "error": { "kind": e.kind.label(), "message": e.message } }),
        })
    });
    golden.folder("response", "json", |input| {
        pretty(&response(input, "haiku", "chatcmpl-golden", 1_700_000_000))
    });
    golden.folder("stream", "sse", |input| {
        let include_usage = input["include_usage"].as_bool().unwrap_or(false);
        let mut writer = ChunkWriter::new(
            "chatcmpl-golden".into(),
            "haiku".into(),
            1_700_000_000,
            include_usage,
        );
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
