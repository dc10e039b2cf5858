use super::*;
use bedrock_wire::catalog::Catalog;
use bedrock_wire::converse::split;

/// What the embedded catalog says `model` supports (nothing for an alias).
fn features(model: &str) -> Features {
    let catalog = Catalog::embedded();
    Features::of(model, catalog.get(model).map(|l| &*l.model))
}

/// Translates a Messages body for the model it names.
fn request(body: &Value) -> Result<Translated, ProxyError> {
    let f = features(body["model"].as_str().unwrap_or(""));
    super::request(body, &f, Purpose::Messages)
}

const SONNET_45: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

/// The events a writer makes of a Converse answer, as (event, data) pairs.
fn stream_of(converse: &Value, stops: Vec<String>) -> Vec<(String, Value)> {
    let mut w = EventWriter::new("msg_1".into(), "m".into(), stops);
    split(converse)
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
        .collect()
}

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
    let r = response(&converse, "haiku", "msg_1", &[]);
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

    let mut w = EventWriter::new("msg_1".into(), "haiku".into(), Vec::new());
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

#[test]
fn thinking_blocks_travel_with_their_signatures() {
    let t = request(&json!({"model": SONNET_45, "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "Go."},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should call f.", "signature": "c2ln"},
                {"type": "redacted_thinking", "data": "ZW5j"},
                {"type": "tool_use", "id": "tu1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "content": "ok"}]}]}))
    .unwrap();
    assert_eq!(
        t.converse["messages"][1]["content"],
        json!([
            {"reasoningContent": {"reasoningText": {"text": "I should call f.", "signature": "c2ln"}}},
            {"reasoningContent": {"redactedContent": "ZW5j"}},
            {"toolUse": {"toolUseId": "tu1", "name": "f", "input": {}}}
        ])
    );
    assert_eq!(
        t.converse["additionalModelRequestFields"]["thinking"],
        json!({"type": "enabled", "budget_tokens": 2000})
    );
    let converse = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "Hmm, four.", "signature": "c2ln"}}},
            {"reasoningContent": {"redactedContent": "ZW5j"}},
            {"text": "Four."}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 7, "outputTokens": 6, "totalTokens": 13},
        "metrics": {"latencyMs": 1}
    });
    assert_eq!(
        response(&converse, "m", "id", &[])["content"],
        json!([
            {"type": "thinking", "thinking": "Hmm, four.", "signature": "c2ln"},
            {"type": "redacted_thinking", "data": "ZW5j"},
            {"type": "text", "text": "Four."}
        ])
    );
    let events = stream_of(&converse, Vec::new());
    let starts: Vec<(u64, &str)> = events
        .iter()
        .filter(|(k, _)| k == "content_block_start")
        .map(|(_, v)| {
            (
                v["index"].as_u64().unwrap(),
                v["content_block"]["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        starts,
        [(0, "thinking"), (1, "redacted_thinking"), (2, "text")]
    );
    let thinking: String = events
        .iter()
        .filter_map(|(_, v)| v["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(thinking, "Hmm, four.");
    let signatures: Vec<&str> = events
        .iter()
        .filter_map(|(_, v)| v["delta"]["signature"].as_str())
        .collect();
    assert_eq!(signatures, ["c2ln"]);
    let stops: Vec<u64> = events
        .iter()
        .filter(|(k, _)| k == "content_block_stop")
        .map(|(_, v)| v["index"].as_u64().unwrap())
        .collect();
    assert_eq!(stops, [0, 1, 2]);
}

#[test]
fn documents_and_citations() {
    let t = request(&json!({"model": SONNET_45, "max_tokens": 100, "messages": [{"role": "user", "content": [
        {"type": "document", "title": "Q3 report.pdf", "context": "finance",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
            "citations": {"enabled": true}, "cache_control": {"type": "ephemeral"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Revenue grew."}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "One."}]}},
        {"type": "text", "text": "Summarize."}]}]}))
    .unwrap();
    assert_eq!(
        t.converse["messages"][0]["content"],
        json!([
            {"document": {"format": "pdf", "name": "Q3 report", "source": {"bytes": "JVBERi0x"},
                "context": "finance", "citations": {"enabled": true}}},
            {"cachePoint": {"type": "default"}},
            {"document": {"format": "txt", "name": "document 2", "source": {"text": "Revenue grew."}}},
            {"document": {"format": "txt", "name": "document 3", "source": {"content": [{"text": "One."}]}}},
            {"text": "Summarize."}
        ])
    );
    let url = request(
        &json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://x/y.pdf"}}]}]}),
    )
    .unwrap_err();
    assert_eq!(
        url.param.as_deref(),
        Some("messages.0.content.0.source.type")
    );

    let converse = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"text": "The report says "},
            {"citationsContent": {"content": [{"text": "revenue grew"}], "citations": [
                {"title": "Q3 report", "sourceContent": [{"text": "Revenue grew 10%."}],
                 "location": {"documentPage": {"documentIndex": 0, "start": 1, "end": 2}}}]}},
            {"text": "."}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 7, "outputTokens": 6, "totalTokens": 13},
        "metrics": {"latencyMs": 1}
    });
    let cited = json!({"type": "page_location", "cited_text": "Revenue grew 10%.",
        "document_index": 0, "document_title": "Q3 report", "start_page_number": 1, "end_page_number": 2});
    assert_eq!(
        response(&converse, "m", "id", &[])["content"][1],
        json!({"type": "text", "text": "revenue grew", "citations": [cited]})
    );
    let events = stream_of(&converse, Vec::new());
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|(_, v)| v["delta"]["type"] == "citations_delta")
        .map(|(_, v)| &v["delta"]["citation"])
        .collect();
    assert_eq!(deltas, [&cited]);
}

#[test]
fn the_stop_sequence_that_ended_an_answer_is_named() {
    let t = request(
        &json!({"model": SONNET_45, "max_tokens": 10, "stop_sequences": ["END", "STOP"],
        "messages": [{"role": "user", "content": "x"}]}),
    )
    .unwrap();
    assert_eq!(
        t.converse["additionalModelResponseFieldPaths"],
        json!(["/stop_sequence"])
    );
    let answer = |fields: Value| {
        json!({"output": {"message": {"role": "assistant", "content": [{"text": "a"}]}},
            "stopReason": "stop_sequence", "additionalModelResponseFields": fields,
            "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}, "metrics": {"latencyMs": 1}})
    };
    let stops = vec!["END".to_owned(), "STOP".to_owned()];
    assert_eq!(
        response(&answer(json!({"stop_sequence": "STOP"})), "m", "id", &stops)["stop_sequence"],
        "STOP"
    );
    assert_eq!(
        response(&answer(Value::Null), "m", "id", &stops)["stop_sequence"],
        Value::Null,
        "two candidates and no word from Bedrock"
    );
    assert_eq!(
        response(&answer(Value::Null), "m", "id", &stops[..1])["stop_sequence"],
        "END",
        "the only one"
    );
    let events = stream_of(&answer(json!({"stop_sequence": "STOP"})), stops);
    let delta = events.iter().find(|(k, _)| k == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_sequence"], "STOP");
}

#[test]
fn output_config_count_tokens_and_refusals() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let t = request(&json!({"model": SONNET_45, "max_tokens": 10,
        "output_config": {"format": {"type": "json_schema", "schema": schema}, "effort": "low"},
        "messages": [{"role": "user", "content": "x"}]}))
    .unwrap();
    let format = &t.converse["outputConfig"]["textFormat"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(
        serde_json::from_str::<Value>(
            format["structure"]["jsonSchema"]["schema"]
                .as_str()
                .unwrap()
        )
        .unwrap(),
        schema
    );
    assert_eq!(t.converse["outputConfig"]["effort"], "low");

    let count = super::request(
        &json!({"model": SONNET_45, "system": "Be brief.",
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "x"}]}),
        &features(SONNET_45),
        Purpose::CountTokens,
    )
    .unwrap();
    let input = &count.converse["input"]["converse"];
    assert_eq!(input["system"], json!([{"text": "Be brief."}]));
    assert_eq!(input["toolConfig"]["tools"][0]["toolSpec"]["name"], "f");
    assert!(input.get("inferenceConfig").is_none());
    assert_eq!(
        count_response(&json!({"inputTokens": 42})),
        json!({"input_tokens": 42})
    );
    let sampling = super::request(
        &json!({"model": "m", "max_tokens": 5, "messages": []}),
        &Features::default(),
        Purpose::CountTokens,
    )
    .unwrap_err();
    assert_eq!(sampling.param.as_deref(), Some("max_tokens"));

    let no_id = request(&json!({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]}))
    .unwrap_err();
    assert_eq!(no_id.message, "messages.1.content.0.id: Field required");
    let bmp = request(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "Qk0="}}]}]}))
    .unwrap_err();
    assert!(!bmp.message.contains("Some("), "{}", bmp.message);
}

/// Every case under `translate/golden/`, the mapping as data:
/// - `request/<case>.in.json`, a Messages request, and `.out.json`: the
///   [`Translated`] request (the Converse body, the model, the stream flag), or
///   `{"error": ...}`, the 400 the client gets. The model's features come from
///   the embedded catalog: a full model id has them, an alias none;
/// - `count_tokens/<case>.in.json`, a `count_tokens` request, and `.out.json`:
///   the CountTokens body, or the error;
/// - `response/<case>.in.json`, a Converse response (or `{"stop_sequences",
///   "converse"}`), and `.out.json`: the Messages response (id `msg_golden`,
///   model `haiku`);
/// - `stream/<case>.in.json`, `{"stop_sequences"?, "events": [...]}` with
///   ConverseStream events, and `.out.sse`: the server-sent events the client reads.
///
/// A mismatch prints a diff per case. `UPDATE_GOLDEN=1 cargo nextest run -p
/// bedrock-proxy golden` rewrites the `.out` files from the code; review them.
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

#[test]
fn golden_files() {
    use crate::ingress::golden::{events, pretty, Golden};
    let mut golden = Golden::new("src/ingress/anthropic/translate/golden");
    golden.folder("request", "json", |input| {
        pretty(&match request(input) {
            Ok(t) => json!({ "model": t.model, "stream": t.stream, "converse": t.converse }),
            Err(e) => json!({ "error": { "kind": e.kind.label(), "param": e.param, "message": e.message } }),
        })
    });
    golden.folder("count_tokens", "json", |input| {
        let f = features(input["model"].as_str().unwrap_or(""));
        pretty(&match super::request(input, &f, Purpose::CountTokens) {
            Ok(t) => json!({ "model": t.model, "count_tokens": t.converse }),
            Err(e) => json!({ "error": { "kind": e.kind.label(), "param": e.param, "message": e.message } }),
        })
    });
    golden.folder("response", "json", |input| {
        // `{"stop_sequences": [...], "converse": ...}` when the request had some.
        let (converse, stops) = match input.get("stop_sequences") {
            Some(stops) => (&input["converse"], strings(stops)),
            None => (input, Vec::new()),
        };
        pretty(&response(converse, "haiku", "msg_golden", &stops))
    });
    golden.folder("stream", "sse", |input| {
        let mut writer = EventWriter::new(
            "msg_golden".into(),
            "haiku".into(),
            strings(&input["stop_sequences"]),
        );
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
