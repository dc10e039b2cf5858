//! The official Rust SDK against the simulator: every operation, streams read to
//! their end, typed errors from scripted faults (in-stream too), Bedrock's
//! validation, the prompt-cache model, the optimized quota and credentials.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use aws_sdk_bedrockruntime::error::ProvideErrorMetadata;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    CachePointBlock, CachePointType, ContentBlock, ConverseStreamOutput, ConverseTokensRequest,
    CountTokensInput, InferenceConfiguration, PerformanceConfigLatency, PerformanceConfiguration,
    ResponseStream, SystemContentBlock, Tool, ToolConfiguration, ToolInputSchema,
    ToolSpecification,
};
use aws_smithy_types::Document;
use bedrock_sim::testing::{
    post_json, raw, sdk_client, sdk_client_signed, sdk_client_with_session, spawn, spawn_fast,
    user_text,
};
use bedrock_sim::{FaultKind, FaultRule, SimConfig};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const HAIKU: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
const HAIKU_BASE: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
const LLAMA: &str = "us.meta.llama3-1-70b-instruct-v1:0";

fn temp0(max_tokens: i32) -> InferenceConfiguration {
    InferenceConfiguration::builder()
        .temperature(0.0)
        .max_tokens(max_tokens)
        .build()
}

/// A rule that fires once.
fn rule(fault: FaultKind) -> FaultRule {
    FaultRule {
        times: Some(1),
        ..FaultRule::new(fault)
    }
}

/// Reads a ConverseStream to its end: the text, the stop reason and the usage.
async fn read_stream(
    mut out: aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamOutput,
) -> (
    String,
    String,
    aws_sdk_bedrockruntime::types::TokenUsage,
    Vec<&'static str>,
) {
    let mut text = String::new();
    let mut stop = String::new();
    let mut usage = None;
    let mut kinds = Vec::new();
    while let Some(event) = out.stream.recv().await.expect("stream event") {
        kinds.push(match &event {
            ConverseStreamOutput::MessageStart(_) => "messageStart",
            ConverseStreamOutput::ContentBlockStart(_) => "contentBlockStart",
            ConverseStreamOutput::ContentBlockDelta(_) => "contentBlockDelta",
            ConverseStreamOutput::ContentBlockStop(_) => "contentBlockStop",
            ConverseStreamOutput::MessageStop(_) => "messageStop",
            ConverseStreamOutput::Metadata(_) => "metadata",
            _ => "other",
        });
        match event {
            ConverseStreamOutput::ContentBlockDelta(d) => {
                if let Some(Ok(t)) = d.delta().map(|d| d.as_text()) {
                    text.push_str(t);
                }
            }
            ConverseStreamOutput::MessageStop(s) => stop = s.stop_reason().as_str().to_owned(),
            ConverseStreamOutput::Metadata(m) => usage = m.usage().cloned(),
            _ => {}
        }
    }
    (text, stop, usage.expect("metadata carries usage"), kinds)
}

fn text_of(out: &aws_sdk_bedrockruntime::operation::converse::ConverseOutput) -> String {
    out.output()
        .and_then(|o| o.as_message().ok())
        .map(|m| {
            m.content()
                .iter()
                .filter_map(|b| b.as_text().ok().cloned())
                .collect::<String>()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn all_five_operations_answer_and_streams_match_their_bodies() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());

    let converse = client
        .converse()
        .model_id(HAIKU)
        .messages(user_text(
            "Explain the concept of machine learning in simple terms.",
        ))
        .inference_config(temp0(400))
        .send()
        .await
        .expect("converse");
    let text = text_of(&converse);
    assert!(!text.is_empty());
    let usage = converse.usage().expect("usage");
    assert!(usage.input_tokens() > 0 && usage.output_tokens() > 0);
    assert_eq!(
        usage.total_tokens(),
        usage.input_tokens() + usage.output_tokens()
    );

    let stream = client
        .converse_stream()
        .model_id(HAIKU)
        .messages(user_text(
            "Explain the concept of machine learning in simple terms.",
        ))
        .inference_config(temp0(400))
        .send()
        .await
        .expect("converse-stream");
    let (streamed, stop, stream_usage, kinds) = read_stream(stream).await;
    assert_eq!(
        streamed, text,
        "temperature 0: the stream says what the body said"
    );
    assert_eq!(stop, converse.stop_reason().as_str());
    assert_eq!(stream_usage.output_tokens(), usage.output_tokens());
    assert_eq!(kinds.first(), Some(&"messageStart"));
    assert_eq!(
        &kinds[kinds.len() - 3..],
        ["contentBlockStop", "messageStop", "metadata"]
    );
    assert!(kinds.iter().filter(|k| **k == "contentBlockDelta").count() > 3);

    let body = serde_json::json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hello"}], "temperature": 0});
    let invoke = client
        .invoke_model()
        .model_id(HAIKU)
        .content_type("application/json")
        .body(Blob::new(body.to_string()))
        .send()
        .await
        .expect("invoke");
    let answer: serde_json::Value = serde_json::from_slice(invoke.body().as_ref()).unwrap();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["role"], "assistant");
    let invoke_text = answer["content"][0]["text"].as_str().unwrap().to_owned();

    let mut chunks = client
        .invoke_model_with_response_stream()
        .model_id(HAIKU)
        .content_type("application/json")
        .body(Blob::new(body.to_string()))
        .send()
        .await
        .expect("invoke-with-response-stream");
    let mut types = Vec::new();
    let mut streamed_text = String::new();
    while let Some(event) = chunks.body.recv().await.expect("chunk") {
        if let ResponseStream::Chunk(part) = event {
            let v: serde_json::Value =
                serde_json::from_slice(part.bytes().unwrap().as_ref()).unwrap();
            if let Some(t) = v["delta"]["text"].as_str() {
                streamed_text.push_str(t);
            }
            types.push(v["type"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(types.first().map(String::as_str), Some("message_start"));
    assert_eq!(types.last().map(String::as_str), Some("message_stop"));
    assert_eq!(streamed_text, invoke_text);

    let counted = client
        .count_tokens()
        .model_id(HAIKU_BASE)
        .input(CountTokensInput::Converse(
            ConverseTokensRequest::builder()
                .messages(user_text(
                    "Explain the concept of machine learning in simple terms.",
                ))
                .build(),
        ))
        .send()
        .await
        .expect("count-tokens");
    assert_eq!(
        counted.input_tokens(),
        usage.input_tokens(),
        "CountTokens agrees with usage"
    );
}

#[tokio::test]
async fn temperature_zero_is_deterministic_and_other_temperatures_vary() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let ask = |t: f32| {
        client
            .converse()
            .model_id(LLAMA)
            .messages(user_text("Name three colors."))
            .inference_config(InferenceConfiguration::builder().temperature(t).build())
            .send()
    };
    let a = text_of(&ask(0.0).await.unwrap());
    let b = text_of(&ask(0.0).await.unwrap());
    assert_eq!(a, b);
    let mut varied = std::collections::HashSet::new();
    for _ in 0..4 {
        varied.insert(text_of(&ask(0.7).await.unwrap()));
    }
    assert!(varied.len() > 1, "answers at temperature 0.7 vary");
}

#[tokio::test]
async fn tools_are_called_with_schema_valid_input() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let schema: Document = Document::Object(HashMap::from([
        ("type".to_owned(), Document::String("object".into())),
        (
            "properties".to_owned(),
            Document::Object(HashMap::from([(
                "city".to_owned(),
                Document::Object(HashMap::from([(
                    "type".to_owned(),
                    Document::String("string".into()),
                )])),
            )])),
        ),
        (
            "required".to_owned(),
            Document::Array(vec![Document::String("city".into())]),
        ),
    ]));
    let tools = ToolConfiguration::builder()
        .tools(Tool::ToolSpec(
            ToolSpecification::builder()
                .name("get_weather")
                .input_schema(ToolInputSchema::Json(schema))
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    let out = client
        .converse()
        .model_id(HAIKU)
        .messages(user_text("Use get_weather for Paris."))
        .tool_config(tools)
        .send()
        .await
        .unwrap();
    assert_eq!(out.stop_reason().as_str(), "tool_use");
    let message = out.output().unwrap().as_message().unwrap();
    let tool_use = message
        .content()
        .iter()
        .find_map(|b| b.as_tool_use().ok())
        .expect("a toolUse block");
    assert_eq!(tool_use.name(), "get_weather");
    let Document::Object(input) = tool_use.input() else {
        panic!("object input");
    };
    assert!(matches!(input.get("city"), Some(Document::String(_))));
}

#[tokio::test]
async fn scripted_faults_become_typed_sdk_errors() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let faults = &sim.sim.state().faults;
    let call = || {
        client
            .converse()
            .model_id(HAIKU)
            .messages(user_text("hi"))
            .send()
    };
    for (fault, code, status) in [
        (FaultKind::Throttle, "ThrottlingException", 429),
        (FaultKind::Unavailable, "ServiceUnavailableException", 503),
        (FaultKind::Internal, "InternalServerException", 500),
        (FaultKind::ModelNotReady, "ModelNotReadyException", 429),
        (FaultKind::ModelTimeout, "ModelTimeoutException", 408),
        (FaultKind::Validation, "ValidationException", 400),
    ] {
        faults.add(rule(fault));
        let err = call().await.expect_err("fault fires");
        let raw_status = err.raw_response().map(|r| r.status().as_u16());
        assert_eq!(raw_status, Some(status), "{code}");
        let service = err.into_service_error();
        assert_eq!(service.code(), Some(code));
        assert!(service.message().is_some_and(|m| !m.is_empty()));
    }
    assert!(call().await.is_ok(), "each rule fired once");

    faults.add(rule(FaultKind::Throttle));
    let err = call().await.unwrap_err().into_service_error();
    assert!(err.is_throttling_exception(), "typed variant: {err:?}");
}

#[tokio::test]
async fn an_exception_inside_a_stream_is_a_typed_stream_error() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    sim.sim.state().faults.add(FaultRule {
        after_events: Some(3),
        exception: Some("throttlingException".into()),
        ..rule(FaultKind::MidstreamError)
    });
    let mut out = client
        .converse_stream()
        .model_id(HAIKU)
        .messages(user_text("hi"))
        .send()
        .await
        .expect("the stream starts");
    let mut events = 0;
    let err = loop {
        match out.stream.recv().await {
            Ok(Some(_)) => events += 1,
            Ok(None) => panic!("stream ended without the scripted exception"),
            Err(e) => break e,
        }
    };
    assert_eq!(events, 3);
    let err = err.into_service_error();
    assert!(err.is_throttling_exception(), "{err:?}");
}

#[tokio::test]
async fn a_reset_connection_is_a_transport_error() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    sim.sim.state().faults.add(rule(FaultKind::ConnectionReset));
    let err = client
        .converse()
        .model_id(HAIKU)
        .messages(user_text("hi"))
        .send()
        .await
        .expect_err("connection cut");
    assert!(err.raw_response().is_none(), "no HTTP response: {err:?}");
}

#[tokio::test]
async fn slow_first_byte_delays_the_answer() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    sim.sim.state().faults.add(FaultRule {
        ms: Some(300),
        ..rule(FaultKind::SlowFirstByte)
    });
    let start = Instant::now();
    client
        .converse()
        .model_id(HAIKU)
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn bedrock_validation_errors() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let assistant_first = aws_sdk_bedrockruntime::types::Message::builder()
        .role(aws_sdk_bedrockruntime::types::ConversationRole::Assistant)
        .content(ContentBlock::Text("x".into()))
        .build()
        .unwrap();
    let cases = [
        client
            .converse()
            .model_id(HAIKU)
            .messages(assistant_first.clone()),
        client
            .converse()
            .model_id(HAIKU)
            .messages(user_text("a"))
            .messages(user_text("b")),
        client
            .converse()
            .model_id(HAIKU)
            .messages(user_text("a"))
            .inference_config(
                InferenceConfiguration::builder()
                    .max_tokens(100_000)
                    .build(),
            ),
        client
            .converse()
            .model_id("anthropic.claude-99-v1:0")
            .messages(user_text("a")),
        client
            .converse()
            .model_id(HAIKU_BASE)
            .messages(user_text("a"))
            .performance_config(
                PerformanceConfiguration::builder()
                    .latency(PerformanceConfigLatency::Optimized)
                    .build(),
            ),
    ];
    let mut messages = Vec::new();
    for call in cases {
        let err = call.send().await.expect_err("invalid").into_service_error();
        assert!(err.is_validation_exception(), "{err:?}");
        messages.push(err.message().unwrap_or_default().to_owned());
    }
    assert!(messages[0].contains("start with a user message"));
    assert!(messages[1].contains("alternate"));
    assert!(messages[2].contains("model limit of 8192"));
    assert!(messages[3].contains("model identifier is invalid"));
    assert!(
        messages[4].contains("not supported"),
        "optimized needs a profile: {}",
        messages[4]
    );

    let point = || {
        SystemContentBlock::CachePoint(
            CachePointBlock::builder()
                .r#type(CachePointType::Default)
                .build()
                .unwrap(),
        )
    };
    let mut too_many = client.converse().model_id(HAIKU).messages(user_text("a"));
    for i in 0..5 {
        too_many = too_many
            .system(SystemContentBlock::Text(format!("part {i}")))
            .system(point());
    }
    let err = too_many.send().await.unwrap_err().into_service_error();
    assert!(err.message().unwrap().contains("maximum of 4"), "{err:?}");
}

#[tokio::test]
async fn transport_level_errors_are_bedrock_shaped() {
    let sim = spawn_fast().await;
    let url = format!("{}/model/{HAIKU}/converse", sim.url());
    let body = serde_json::json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
        .to_string();

    let unsigned = raw(
        "POST",
        &url,
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(unsigned.status.as_u16(), 403);
    assert!(unsigned
        .header("x-amzn-errortype")
        .unwrap()
        .starts_with("MissingAuthenticationTokenException"));
    assert!(unsigned.header("x-amzn-requestid").is_some());

    let malformed = post_json(&url, "{not json").await.unwrap();
    assert_eq!(malformed.status.as_u16(), 400);
    assert!(malformed
        .header("x-amzn-errortype")
        .unwrap()
        .starts_with("ValidationException"));
    assert!(malformed.json()["message"]
        .as_str()
        .unwrap()
        .contains("Malformed input request"));

    let huge = post_json(&url, vec![b' '; 25_000_001]).await.unwrap();
    assert_eq!(huge.status.as_u16(), 400);
    assert!(huge.json()["message"]
        .as_str()
        .unwrap()
        .contains("larger than the limit"));

    let unknown_op = post_json(
        &format!("{}/model/{HAIKU}/explode", sim.url()),
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(unknown_op.status.as_u16(), 404);
    assert!(unknown_op
        .header("x-amzn-errortype")
        .unwrap()
        .starts_with("UnknownOperationException"));

    let ok = post_json(&url, body).await.unwrap();
    assert_eq!(ok.status.as_u16(), 200, "a bearer token is accepted");
}

/// A one-word Converse call, as the signature tests send it.
async fn hi(
    client: &aws_sdk_bedrockruntime::Client,
) -> Result<
    aws_sdk_bedrockruntime::operation::converse::ConverseOutput,
    aws_sdk_bedrockruntime::error::SdkError<
        aws_sdk_bedrockruntime::operation::converse::ConverseError,
    >,
> {
    client
        .converse()
        .model_id(HAIKU)
        .messages(user_text("hi"))
        .send()
        .await
}

/// A simulator that verifies signatures against one key (with `token`, a
/// role's temporary credentials).
async fn spawn_verifying(key: &str, secret: &str, token: Option<&str>) -> bedrock_sim::SimHandle {
    spawn(SimConfig {
        time_scale: 0.0,
        credentials: vec![bedrock_sim::config::StaticCredential {
            access_key_id: key.into(),
            secret_access_key: secret.into(),
            session_token: token.map(str::to_owned),
        }],
        ..SimConfig::default()
    })
    .await
}

/// Asserts that `client`'s call is refused: 403 with error `code`.
async fn assert_refused(client: &aws_sdk_bedrockruntime::Client, code: &str) {
    let error = hi(client).await.unwrap_err();
    assert_eq!(error.raw_response().unwrap().status().as_u16(), 403);
    assert_eq!(error.into_service_error().code(), Some(code));
}

#[tokio::test]
async fn signatures_are_verified_when_keys_are_configured() {
    let sim = spawn_verifying("AKIDGOOD", "good-secret", None).await;
    let ok = hi(&sdk_client_signed(&sim.url(), "AKIDGOOD", "good-secret")).await;
    assert!(ok.is_ok(), "{ok:?}");
    assert_refused(
        &sdk_client_signed(&sim.url(), "AKIDGOOD", "bad-secret"),
        "InvalidSignatureException",
    )
    .await;
    assert_refused(
        &sdk_client_signed(&sim.url(), "AKIDOTHER", "x"),
        "UnrecognizedClientException",
    )
    .await;
}

#[tokio::test]
async fn temporary_credentials_need_their_session_token() {
    let sim = spawn_verifying("ASIAROLE", "role-secret", Some("the-role-token")).await;
    let with_token =
        |token| sdk_client_with_session(&sim.url(), "ASIAROLE", "role-secret", Some(token));
    let ok = hi(&with_token("the-role-token")).await;
    assert!(ok.is_ok(), "{ok:?}");
    assert_refused(&with_token("another-token"), "UnrecognizedClientException").await;
    // Signed with the key and secret but no token at all.
    assert_refused(
        &sdk_client_signed(&sim.url(), "ASIAROLE", "role-secret"),
        "UnrecognizedClientException",
    )
    .await;
}

/// A ~3,000-token system prompt with a cachePoint after it.
fn cached_call(
    client: &aws_sdk_bedrockruntime::Client,
    system_tokens: usize,
) -> aws_sdk_bedrockruntime::operation::converse::builders::ConverseFluentBuilder {
    client
        .converse()
        .model_id(HAIKU)
        .system(SystemContentBlock::Text(
            "You are a careful assistant. ".repeat(system_tokens * 4 / 29),
        ))
        .system(SystemContentBlock::CachePoint(
            CachePointBlock::builder()
                .r#type(CachePointType::Default)
                .build()
                .unwrap(),
        ))
        .messages(user_text("hi"))
}

#[tokio::test]
async fn prompt_cache_writes_reads_and_expires() {
    let sim = spawn_fast().await;
    let client = sdk_client(&sim.url());
    let first = cached_call(&client, 3000).send().await.unwrap();
    let u1 = first.usage().unwrap();
    let written = u1.cache_write_input_tokens().unwrap_or(0);
    assert!(written >= 2048, "prefix written: {u1:?}");
    assert_eq!(u1.cache_read_input_tokens().unwrap_or(0), 0);

    let second = cached_call(&client, 3000).send().await.unwrap();
    let u2 = second.usage().unwrap();
    assert_eq!(
        u2.cache_read_input_tokens(),
        Some(written),
        "prefix read: {u2:?}"
    );
    assert_eq!(u2.cache_write_input_tokens().unwrap_or(0), 0);
    assert!(
        u2.input_tokens() < u1.input_tokens() + written,
        "inputTokens counts only uncached input"
    );
    assert_eq!(u2.input_tokens(), u1.input_tokens());

    // 4 minutes later the hit reset the TTL; 6 more minutes without a hit expire it.
    sim.sim.state().clock.advance(Duration::from_secs(240));
    let third = cached_call(&client, 3000).send().await.unwrap();
    assert_eq!(
        third.usage().unwrap().cache_read_input_tokens(),
        Some(written)
    );
    sim.sim.state().clock.advance(Duration::from_secs(301));
    let expired = cached_call(&client, 3000).send().await.unwrap();
    let ue = expired.usage().unwrap();
    assert_eq!(
        ue.cache_read_input_tokens().unwrap_or(0),
        0,
        "expired: {ue:?}"
    );
    assert_eq!(ue.cache_write_input_tokens(), Some(written));

    // Below Haiku's 2,048-token minimum the point is accepted and nothing is cached.
    for _ in 0..2 {
        let small = cached_call(&client, 500).send().await.unwrap();
        let us = small.usage().unwrap();
        assert_eq!(us.cache_read_input_tokens().unwrap_or(0), 0);
        assert_eq!(us.cache_write_input_tokens().unwrap_or(0), 0);
    }
    let stats = raw("GET", &format!("{}/_sim/stats", sim.url()), &[], "")
        .await
        .unwrap()
        .json();
    assert_eq!(
        stats["cache_read_input_tokens"].as_i64(),
        Some(i64::from(written) * 2)
    );
}

#[tokio::test]
async fn past_the_optimized_quota_requests_are_served_standard() {
    let sim = spawn(SimConfig {
        time_scale: 0.0,
        optimized_rpm: Some(2),
        ..SimConfig::default()
    })
    .await;
    let client = sdk_client(&sim.url());
    let mut tiers = Vec::new();
    for _ in 0..3 {
        let out = client
            .converse()
            .model_id(HAIKU)
            .messages(user_text("hi"))
            .performance_config(
                PerformanceConfiguration::builder()
                    .latency(PerformanceConfigLatency::Optimized)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        tiers.push(
            out.performance_config()
                .map(|p| p.latency().as_str().to_owned()),
        );
    }
    assert_eq!(
        tiers,
        [
            Some("optimized".into()),
            Some("optimized".into()),
            Some("standard".into())
        ]
    );
}

#[tokio::test]
async fn optimized_is_faster_than_standard_in_the_latency_model() {
    let sim = spawn(SimConfig {
        time_scale: 0.01,
        jitter: 0.0,
        seed: Some(1),
        ..SimConfig::default()
    })
    .await;
    let client = sdk_client(&sim.url());
    let mut latency = HashMap::new();
    for tier in [
        PerformanceConfigLatency::Standard,
        PerformanceConfigLatency::Optimized,
    ] {
        let out = client
            .converse()
            .model_id(HAIKU)
            .messages(user_text(
                "Explain the concept of machine learning in simple terms.",
            ))
            .performance_config(
                PerformanceConfiguration::builder()
                    .latency(tier.clone())
                    .build(),
            )
            .send()
            .await
            .unwrap();
        latency.insert(
            tier.as_str().to_owned(),
            out.metrics().unwrap().latency_ms(),
        );
    }
    assert!(latency["optimized"] < latency["standard"], "{latency:?}");
}

#[tokio::test]
async fn stream_frames_are_byte_exact_event_stream_messages() {
    use aws_smithy_eventstream::frame::{write_message_to, DecodedFrame, MessageFrameDecoder};
    let sim = spawn_fast().await;
    let body = serde_json::json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
        .to_string();
    let response = post_json(
        &format!("{}/model/{HAIKU}/converse-stream", sim.url()),
        body,
    )
    .await
    .unwrap();
    assert_eq!(response.status.as_u16(), 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    let mut rest = response.body.clone();
    let mut decoder = MessageFrameDecoder::new();
    let mut frames = 0;
    let mut reencoded = Vec::new();
    while !rest.is_empty() {
        match decoder
            .decode_frame(&mut rest)
            .expect("valid frame, CRCs included")
        {
            DecodedFrame::Complete(message) => {
                write_message_to(&message, &mut reencoded).unwrap();
                frames += 1;
            }
            DecodedFrame::Incomplete => panic!("trailing partial frame"),
        }
    }
    assert!(frames > 5);
    assert_eq!(
        reencoded,
        response.body.to_vec(),
        "every byte belongs to a well-formed frame"
    );
}
