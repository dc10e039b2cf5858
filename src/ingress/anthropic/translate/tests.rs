use super::*;
use bedrock_wire::converse::split;

#[test]
fn requests_map_system_cache_control_tools_and_results() {
    let t = request(&json!({
        "model": "haiku", "max_tokens": 100, "top_k": 5, "temperature": 0,
        "system": [{"type": "text", "text": "Long instructions", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "tool_choice": {"type": "tool", "name": "weather"},
        "messages": [
            {"role": "user", "content": "Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "tu1", "name": "weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "content": "boom", "is_error": true},
                {"type": "text", "text": "and now?", "cache_control": {"type": "ephemeral"}}]}
        ]
    }))
    .unwrap();
    let c = &t.converse;
    assert_eq!(
        c["system"],
        json!([{"text": "Long instructions"}, {"cachePoint": {"type": "default"}}])
    );
    assert_eq!(
        c["toolConfig"]["tools"][1],
        json!({"cachePoint": {"type": "default", "ttl": "1h"}})
    );
    assert_eq!(
        c["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "weather"}})
    );
    assert_eq!(c["messages"][0]["content"], json!([{"text": "Paris?"}]));
    assert_eq!(
        c["messages"][1]["content"][0]["toolUse"]["toolUseId"],
        "tu1"
    );
    assert_eq!(
        c["messages"][2]["content"][0]["toolResult"],
        json!({"toolUseId": "tu1", "content": [{"text": "boom"}], "status": "error"})
    );
    assert_eq!(
        c["messages"][2]["content"][2],
        json!({"cachePoint": {"type": "default"}})
    );
    assert_eq!(
        c["inferenceConfig"],
        json!({"maxTokens": 100, "temperature": 0})
    );
    assert_eq!(c["additionalModelRequestFields"], json!({"top_k": 5}));
}

#[test]
fn bad_requests_name_the_field() {
    let m = |body: Value| request(&body).unwrap_err().message;
    assert!(m(json!({"model": "x", "messages": []})).starts_with("max_tokens"));
    assert!(
        m(json!({"model": "x", "max_tokens": 5, "messages": [], "bogus": 1})).starts_with("bogus")
    );
    assert!(m(
        json!({"model": "x", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]})
    )
    .contains("role"));
    assert!(m(
        json!({"model": "x", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://x"}}]}]})
    )
    .contains("base64"));
}

#[test]
fn responses_and_streams_speak_messages() {
    let converse = json!({
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello there, how are you today?"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 7, "outputTokens": 6, "totalTokens": 2013, "cacheReadInputTokens": 2000},
        "metrics": {"latencyMs": 1}
    });
    let r = response(&converse, "haiku", "msg_1");
    assert_eq!(
        r["content"],
        json!([{"type": "text", "text": "Hello there, how are you today?"}])
    );
    assert_eq!(r["stop_reason"], "end_turn");
    assert_eq!(
        r["usage"],
        json!({"input_tokens": 7, "output_tokens": 6,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2000})
    );

    let mut w = EventWriter::new("msg_1".into(), "haiku".into());
    let events: Vec<(String, Value)> = split(&converse)
        .unwrap()
        .iter()
        .flat_map(|e| w.event(e))
        .map(|b| {
            let s = String::from_utf8(b.to_vec()).unwrap();
            let (event, data) = s.trim().split_once('\n').unwrap();
            (
                event.strip_prefix("event: ").unwrap().to_owned(),
                serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
            )
        })
        .collect();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds[..3], ["message_start", "ping", "content_block_start"]);
    assert_eq!(
        kinds[kinds.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let text: String = events
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello there, how are you today?");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["cache_read_input_tokens"], 2000);
}

#[test]
fn consecutive_turns_of_one_role_are_merged_as_the_messages_api_does() {
    let t = request(&json!({
        "model": "haiku", "max_tokens": 50,
        "messages": [
            {"role": "user", "content": "First part."},
            {"role": "user", "content": [{"type": "text", "text": "Second part."}]},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "Go on."}
        ]
    }))
    .unwrap();
    let messages = t.converse["messages"].as_array().unwrap();
    let roles: Vec<_> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["user", "assistant", "user"],
        "roles alternate for Converse"
    );
    assert_eq!(
        messages[0]["content"],
        json!([{"text": "First part."}, {"text": "Second part."}])
    );
}

/// Every case under `translate/golden/`, the mapping as data:
/// - `request/<case>.in.json`, a Messages request, and `.out.json`: the
///   [`Translated`] request (the Converse body, the model, the stream flag), or
///   `{"error": ...}`, the 400 the client gets;
/// - `response/<case>.in.json`, a Converse response, and `.out.json`: the
///   Messages response (id `msg_golden`, model `haiku`);
/// - `stream/<case>.in.json`, `{"events": [...]}` with ConverseStream events,
///   and `.out.sse`: the server-sent events the client reads.
///
/// A mismatch prints a diff per case. `UPDATE_GOLDEN=1 cargo nextest run -p
/// bedrock-proxy golden` rewrites the `.out` files from the code; review them.
#[test]
fn golden_files() {
    use crate::ingress::golden::{events, pretty, Golden};
    let mut golden = Golden::new("src/ingress/anthropic/translate/golden");
    golden.folder("request", "json", |input| {
        pretty(&match request(input) {
            Ok(t) => json!({ "model": t.model, "stream": t.stream, "converse": t.converse }),
            Err(e) => json!({ "error": { "kind": e.kind.label(), "message": e.message } }),
        })
    });
    golden.folder("response", "json", |input| {
        pretty(&response(input, "haiku", "msg_golden"))
    });
    golden.folder("stream", "sse", |input| {
        let mut writer = EventWriter::new("msg_golden".into(), "haiku".into());
        let mut sse = Vec::new();
        for event in events(&input["events"]) {
            for chunk in writer.event(&event) {
                sse.extend_from_slice(&chunk);
            }
        }
        String::from_utf8(sse).unwrap()
    });
    golden.finish();
}
