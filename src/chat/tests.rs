use super::*;
use crate::ingress::golden::{pretty, Golden};
use bedrock_wire::converse::assemble;

/// Events as the golden files write them: `[{"messageStart": {...}}, ...]`.
fn listed(events: &[ConverseEvent]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|e| json!({ e.kind.name(): e.json().unwrap() }))
            .collect(),
    )
}

use bedrock_wire::converse::ConverseEvent;

/// Reads the chunks of a stream case; what the reader says, event by event,
/// and whether the events assemble into a Converse body (so the answer can be
/// cached and replayed).
fn read_stream(input: &Value) -> Value {
    let mut reader = ChunkReader::new("golden");
    let mut events = Vec::new();
    for chunk in input["chunks"].as_array().unwrap() {
        match reader.chunk(chunk) {
            Ok(more) => events.extend(more),
            Err(e) => {
                return json!({ "events": listed(&events),
                    "error": { "kind": e.kind.label(), "message": e.message } })
            }
        }
    }
    let done = input["done"].as_bool().unwrap_or(true);
    match reader.end(done, 11, 250) {
        Ok((more, estimated)) => {
            events.extend(more);
            let assembled = assemble(&events).map_err(|e| e.to_string());
            json!({
                "events": listed(&events),
                "usage_estimated": estimated,
                "assembles": assembled.is_ok(),
            })
        }
        Err(e) => json!({ "events": listed(&events),
            "error": { "kind": e.kind.label(), "message": e.message } }),
    }
}

#[test]
fn golden_cases() {
    let mut golden = Golden::new("src/chat/golden");
    golden.folder("request", "json", |input| {
        pretty(&match request(input) {
            Ok(chat) => json!({
                "chat": finish_request(chat.clone(), Some("qwen-plus"), false, false),
                "streamed": finish_request(chat, None, true, true)
                    .as_object()
                    .map(|o| json!({ "stream": o["stream"], "stream_options": o["stream_options"] })),
            }),
            Err(e) => json!({ "error": { "field": e.field, "reason": e.reason } }),
        })
    });
    golden.folder("response", "json", |input| {
        pretty(&match response(input, "golden", 11, 250) {
            Ok((converse, estimated)) => {
                json!({ "converse": converse, "usage_estimated": estimated })
            }
            Err(e) => json!({ "error": { "kind": e.kind.label(), "message": e.message } }),
        })
    });
    golden.folder("stream", "json", |input| pretty(&read_stream(input)));
    golden.finish();
}

#[test]
fn stop_reasons_both_ways() {
    assert_eq!(stop_reason(Some("stop"), false, false), "end_turn");
    assert_eq!(stop_reason(Some("stop"), true, false), "stop_sequence");
    assert_eq!(stop_reason(Some("length"), false, true), "max_tokens");
    assert_eq!(
        stop_reason(Some("stop"), false, true),
        "tool_use",
        "OpenAI says stop for a forced tool call"
    );
    assert_eq!(stop_reason(Some("tool_calls"), false, true), "tool_use");
    assert_eq!(
        stop_reason(Some("content_filter"), false, false),
        "content_filtered"
    );
    assert_eq!(stop_reason(None, false, false), "end_turn");
    for stop in ["end_turn", "stop_sequence", "max_tokens", "tool_use"] {
        let finish = finish_reason(Some(stop));
        assert_eq!(
            stop_reason(Some(finish), stop == "stop_sequence", stop == "tool_use"),
            stop
        );
    }
}

#[test]
fn usage_counts_cached_prompt_tokens_as_cache_reads() {
    let u = usage_from(
        &json!({"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 64}}),
    )
    .unwrap();
    assert_eq!(
        (
            u.input_tokens,
            u.cache_read_input_tokens,
            u.output_tokens,
            u.total_tokens
        ),
        (36, 64, 7, 107)
    );
    assert_eq!(usage(&u)["prompt_tokens"], 100, "and back again");
    assert_eq!(usage_from(&Value::Null), None);
    assert_eq!(usage_from(&json!({"completion_tokens": 3})), None);
}

#[test]
fn server_errors_have_kinds_that_fallback_understands() {
    let e = |status, body: Value| error_kind(status, &body);
    assert_eq!(
        e(Some(429), json!({"code": "rate_limit_exceeded"})),
        ErrorKind::Throttled
    );
    assert_eq!(
        e(Some(429), json!({"code": "insufficient_quota"})),
        ErrorKind::QuotaExceeded
    );
    assert_eq!(e(Some(503), json!({})), ErrorKind::Unavailable);
    assert_eq!(
        e(Some(503), json!({"code": "model_not_ready"})),
        ErrorKind::ModelNotReady
    );
    assert_eq!(e(Some(504), json!({})), ErrorKind::Timeout);
    assert_eq!(e(Some(500), json!({})), ErrorKind::Internal);
    assert_eq!(e(Some(400), json!({})), ErrorKind::Validation);
    assert_eq!(e(Some(401), json!({})), ErrorKind::AccessDenied);
    assert_eq!(e(Some(404), json!({})), ErrorKind::NotFound);
    assert_eq!(
        e(None, json!({"type": "server_error"})),
        ErrorKind::ModelError
    );
    assert_eq!(
        e(None, json!({"type": "rate_limit_error"})),
        ErrorKind::Throttled
    );
    assert_eq!(
        error_message(&json!({"error": {"message": "no"}})).as_deref(),
        Some("no")
    );
    assert_eq!(
        error_message(&json!({"detail": "bad"})).as_deref(),
        Some("bad")
    );
}

#[test]
fn input_is_estimated_like_the_simulator_bills_it() {
    let chat = json!({"messages": [
        {"role": "system", "content": "12345678"},
        {"role": "user", "content": [{"type": "text", "text": "abcd"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
    assert_eq!(estimate_input(&chat), 3 + 2 + 3 + 1 + 1600);
}
