//! The spans a request makes, read back from an in-process exporter: the
//! client's `traceparent` continued, attempts as children whose context goes
//! upstream, streams followed to their end, content only when captured.

use super::testing::{attribute, spans_of, text, tracing_on};
use super::*;
use opentelemetry::trace::{SpanId, TraceId};

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn client_headers(trace: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        HeaderValue::from_str(&format!("00-{trace}-{CLIENT_SPAN}-01")).unwrap(),
    );
    headers.insert("tracestate", HeaderValue::from_static("vendor=opaque"));
    headers
}

fn attempt_start() -> AttemptStart<'static> {
    AttemptStart {
        target: "primary",
        upstream: "bedrock",
        model: "us.anthropic.claude-3-5-haiku-20241022-v1:0",
        base_url: "https://bedrock-runtime.us-east-2.amazonaws.com",
        tier: Some("optimized"),
        cache_points: 1,
    }
}

#[test]
fn a_request_continues_the_clients_trace_and_its_attempt_carries_its_own_context_upstream() {
    let spans = tracing_on();
    let trace = Trace::request(&client_headers(CLIENT_TRACE), Instant::now(), "converse");
    trace.routed(
        "chat",
        "haiku",
        "haiku",
        "us.anthropic.claude-3-5-haiku-20241022-v1:0",
    );
    let body = json!({
        "messages": [{"role": "user", "content": [{"text": "Name a prime"}]}],
        "system": [{"text": "Be brief"}],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.0},
    });
    trace.call(false, Some(&body));
    let attempt = trace.attempt(attempt_start());
    let mut headers = Vec::new();
    attempt.inject(&mut headers);
    attempt.ok();
    trace.answered(
        "primary",
        "us.anthropic.claude-3-5-haiku-20241022-v1:0",
        "https://bedrock-runtime.us-east-2.amazonaws.com",
    );
    trace.fallback("primary", "fallback1", "throttled");
    trace.output_body(
        br#"{"output":{"message":{"role":"assistant","content":[{"text":"7"}]}},"stopReason":"end_turn"}"#,
        Some("end_turn"),
    );
    let usage = Usage {
        input_tokens: 10,
        output_tokens: 2,
        total_tokens: 12,
        cache_read_input_tokens: 100,
        cache_write_input_tokens: 5,
        cache_write_1h_input_tokens: 0,
    };
    trace.end(&RequestEnd {
        status: 200,
        outcome: "ok",
        route: Some("haiku"),
        cache: "miss",
        attempts: 1,
        target: Some("primary"),
        tier_requested: Some("optimized"),
        tier_served: Some("optimized"),
        usage: Some(&usage),
        stop_reason: Some("end_turn"),
        ttft: Some(Duration::from_millis(120)),
        ..RequestEnd::default()
    });

    let got = spans_of(&spans, TraceId::from_hex(CLIENT_TRACE).unwrap());
    let request = got
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .unwrap();
    let upstream = got
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .unwrap();
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex(CLIENT_SPAN).unwrap()
    );
    assert!(request.parent_span_is_remote);
    assert_eq!(request.name, "chat haiku");
    assert_eq!(text(request, attr::SYSTEM), "aws.bedrock");
    assert_eq!(text(request, attr::PROVIDER), "aws.bedrock");
    assert_eq!(text(request, attr::OPERATION), "chat");
    assert_eq!(text(request, attr::REQUEST_MODEL), "haiku");
    assert_eq!(
        text(request, attr::RESPONSE_MODEL),
        "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    );
    assert_eq!(
        attribute(request, attr::REQUEST_MAX_TOKENS),
        Some(&Value::I64(64))
    );
    // Input tokens count the cached ones, as the conventions ask.
    assert_eq!(
        attribute(request, attr::USAGE_INPUT_TOKENS),
        Some(&Value::I64(115))
    );
    assert_eq!(
        attribute(request, attr::USAGE_OUTPUT_TOKENS),
        Some(&Value::I64(2))
    );
    assert_eq!(
        attribute(request, attr::USAGE_CACHE_READ),
        Some(&Value::I64(100))
    );
    assert_eq!(
        attribute(request, attr::USAGE_CACHE_WRITE),
        Some(&Value::I64(5))
    );
    assert_eq!(
        attribute(request, attr::RESPONSE_FINISH_REASONS),
        Some(&string_array(["end_turn".to_owned()]))
    );
    assert_eq!(
        text(request, attr::SERVER_ADDRESS),
        "bedrock-runtime.us-east-2.amazonaws.com"
    );
    assert_eq!(
        attribute(request, attr::SERVER_PORT),
        Some(&Value::I64(443))
    );
    assert_eq!(text(request, attr::CACHE), "miss");
    assert_eq!(request.status, Status::Unset);
    let fallback = request
        .events
        .iter()
        .find(|e| e.name == "bedrock_proxy.fallback")
        .unwrap();
    assert!(fallback
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == attr::REASON && kv.value.as_str() == "throttled"));
    // Content was asked for here: the conventions' message schema.
    let input: Json = serde_json::from_str(&text(request, attr::INPUT_MESSAGES)).unwrap();
    assert_eq!(
        input,
        json!([{"role": "user", "parts": [{"type": "text", "content": "Name a prime"}]}])
    );
    assert_eq!(
        text(request, attr::SYSTEM_INSTRUCTIONS),
        r#"[{"type":"text","content":"Be brief"}]"#
    );
    let output: Json = serde_json::from_str(&text(request, attr::OUTPUT_MESSAGES)).unwrap();
    assert_eq!(output[0]["parts"][0]["content"], "7");
    assert_eq!(output[0]["finish_reason"], "end_turn");

    // The attempt: a child of the request span, whose own context went upstream.
    assert_eq!(upstream.parent_span_id, request.span_context.span_id());
    assert_eq!(
        upstream.name,
        "chat us.anthropic.claude-3-5-haiku-20241022-v1:0"
    );
    assert_eq!(text(upstream, attr::TARGET), "primary");
    assert_eq!(text(upstream, attr::TIER_SENT), "optimized");
    assert_eq!(text(upstream, attr::OUTCOME), "ok");
    let sent: HashMap<&str, &str> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(
        sent["traceparent"],
        format!("00-{CLIENT_TRACE}-{}-01", upstream.span_context.span_id())
    );
    assert_eq!(sent["tracestate"], "vendor=opaque");
}

#[test]
fn without_a_traceparent_a_request_starts_a_trace_of_its_own() {
    let spans = tracing_on();
    let trace = Trace::request(&HeaderMap::new(), Instant::now(), "chat.completions");
    let id = trace.trace_id().unwrap();
    trace.end(&RequestEnd {
        status: 503,
        error: Some(("unavailable", "every target is out of rotation")),
        outcome: "unavailable",
        cache: "bypass",
        ..RequestEnd::default()
    });
    let got = spans_of(&spans, TraceId::from_hex(&id).unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].parent_span_id, SpanId::INVALID);
    assert_eq!(
        got[0].name, "chat.completions",
        "never routed: the API's name"
    );
    assert_eq!(text(&got[0], attr::ERROR_TYPE), "unavailable");
    assert!(
        matches!(&got[0].status, Status::Error { description } if description.contains("out of rotation"))
    );
}

fn stream_of(
    items: Vec<Result<u32, ProxyError>>,
) -> impl Stream<Item = Result<u32, ProxyError>> + Unpin {
    futures_util::stream::iter(items)
}

#[tokio::test]
async fn a_streamed_attempt_ends_with_its_stream_and_a_dropped_one_as_cancelled() {
    use futures_util::StreamExt;
    let spans = tracing_on();
    let trace = Trace::request(
        &client_headers("1af7651916cd43dd8448eb211c80319c"),
        Instant::now(),
        "converse-stream",
    );

    let whole: Vec<_> = trace
        .attempt(attempt_start())
        .follow(stream_of(vec![Ok(1), Ok(2)]))
        .collect()
        .await;
    assert_eq!(whole.len(), 2);
    let broken: Vec<_> = trace
        .attempt(attempt_start())
        .follow(stream_of(vec![
            Ok(1),
            Err(ProxyError::upstream_timeout("went silent")),
        ]))
        .collect()
        .await;
    assert!(broken[1].is_err());
    let mut dropped = trace
        .attempt(attempt_start())
        .follow(stream_of(vec![Ok(1), Ok(2)]));
    assert!(dropped.next().await.is_some());
    drop(dropped);
    trace
        .attempt(attempt_start())
        .failed(&ProxyError::upstream_timeout("no first byte"));

    let got = spans_of(
        &spans,
        TraceId::from_hex("1af7651916cd43dd8448eb211c80319c").unwrap(),
    );
    let outcomes: Vec<String> = got.iter().map(|s| text(s, attr::OUTCOME)).collect();
    assert_eq!(outcomes, ["ok", "timeout", "cancelled", "timeout"]);
    assert!(matches!(got[1].status, Status::Error { .. }));
    assert_eq!(got[2].status, Status::Unset);
}

#[test]
fn a_transcript_keeps_a_streams_text_only_for_a_span_that_captures_it() {
    tracing_on();
    let delta = |t: &str| {
        bedrock_wire::eventstream::decode(bedrock_wire::eventstream::event_frame(
            "contentBlockDelta",
            format!(r#"{{"contentBlockIndex":0,"delta":{{"text":"{t}"}}}}"#),
        ))
        .unwrap()
    };
    let mut kept = Transcript::for_trace(&Trace::request(
        &HeaderMap::new(),
        Instant::now(),
        "converse-stream",
    ));
    let mut off = Transcript::for_trace(&Trace::off());
    for part in ["Hello", ", world"] {
        kept.read(&delta(part));
        off.read(&delta(part));
    }
    assert_eq!(kept.text(), Some("Hello, world"));
    assert_eq!(off.text(), None);
}

#[test]
fn a_trace_that_is_off_builds_nothing() {
    let off = Trace::off();
    let attempt = off.attempt(attempt_start());
    let mut headers = Vec::new();
    attempt.inject(&mut headers);
    assert!(!attempt.is_on() && headers.is_empty() && off.trace_id().is_none());
    off.event("never", || {
        unreachable!("attributes are built only for a traced request")
    });
}

#[test]
fn traces_are_on_when_configured_or_when_an_otlp_endpoint_is_in_the_environment() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let unset = TracingConfig::default();
    assert!(!wanted(&unset, env(&[])));
    assert!(wanted(
        &unset,
        env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])
    ));
    assert!(wanted(
        &unset,
        env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )])
    ));
    assert!(!wanted(
        &unset,
        env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ])
    ));
    assert!(!wanted(
        &unset,
        env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none")
        ])
    ));
    let endpoint = TracingConfig {
        endpoint: Some("http://collector:4318".into()),
        ..TracingConfig::default()
    };
    assert!(wanted(&endpoint, env(&[])));
    let off = TracingConfig {
        enabled: Some(false),
        ..endpoint
    };
    assert!(!wanted(
        &off,
        env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
    ));

    assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
    assert_eq!(traces_url("https://c/otlp/"), "https://c/otlp/v1/traces");
    assert_eq!(
        traces_url("http://c:4318/v1/traces"),
        "http://c:4318/v1/traces"
    );
}

#[test]
fn operations_get_their_gen_ai_names() {
    assert_eq!(operation_name(Operation::Converse, false), "chat");
    assert_eq!(operation_name(Operation::ConverseStream, false), "chat");
    assert_eq!(operation_name(Operation::Invoke, false), "chat");
    assert_eq!(operation_name(Operation::Invoke, true), "embeddings");
    assert_eq!(
        operation_name(Operation::CountTokens, false),
        "count_tokens"
    );
}
