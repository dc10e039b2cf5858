//! The proxy core as an AWS SDK app sees it: the Rust SDK and raw HTTP against
//! bedrock-proxy in front of bedrock-sim. Every operation, streams to their end,
//! errors in Bedrock's shape, auth, limits, metrics and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_sdk_bedrockruntime::error::ProvideErrorMetadata;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    ConverseStreamOutput, ConverseTokensRequest, CountTokensInput, InferenceConfiguration,
    ResponseStream,
};
use bedrock_sim::testing::{raw, sdk_client, sdk_client_signed, user_text};
use bedrock_sim::{FaultKind, FaultRule, SimConfig};
use common::*;
use serde_json::json;
use std::time::Duration;

/// A rule that fires once.
fn fault(kind: FaultKind) -> FaultRule {
    FaultRule {
        times: Some(1),
        ..FaultRule::new(kind)
    }
}

fn error_type(r: &bedrock_sim::testing::RawResponse) -> String {
    r.header("x-amzn-errortype")
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn the_rust_sdk_runs_all_five_operations_through_the_proxy() {
    let s = stack().await;
    let client = sdk_client(&s.url());

    let out = client
        .converse()
        .model_id("haiku")
        .messages(user_text("Explain caching."))
        .inference_config(
            InferenceConfiguration::builder()
                .temperature(0.0)
                .max_tokens(200)
                .build(),
        )
        .send()
        .await
        .expect("converse");
    let text: String = out.output().unwrap().as_message().unwrap().content()[0]
        .as_text()
        .unwrap()
        .clone();
    assert!(!text.is_empty());

    let mut stream = client
        .converse_stream()
        .model_id("haiku")
        .messages(user_text("Explain caching."))
        .inference_config(
            InferenceConfiguration::builder()
                .temperature(0.0)
                .max_tokens(200)
                .build(),
        )
        .send()
        .await
        .expect("converse-stream");
    let mut streamed = String::new();
    let mut saw_metadata = false;
    while let Some(event) = stream.stream.recv().await.expect("event") {
        match event {
            ConverseStreamOutput::ContentBlockDelta(d) => {
                streamed.push_str(d.delta().unwrap().as_text().unwrap())
            }
            ConverseStreamOutput::Metadata(m) => saw_metadata = m.usage().is_some(),
            _ => {}
        }
    }
    assert_eq!(
        streamed, text,
        "the stream and the body agree at temperature 0"
    );
    assert!(saw_metadata);

    let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 40,
        "messages": [{"role": "user", "content": "Hi"}]});
    let invoke = client
        .invoke_model()
        .model_id(HAIKU)
        .body(Blob::new(body.to_string()))
        .send()
        .await
        .expect("invoke");
    let answer: serde_json::Value = serde_json::from_slice(invoke.body().as_ref()).unwrap();
    assert_eq!(answer["type"], "message");

    let mut chunks = client
        .invoke_model_with_response_stream()
        .model_id("haiku")
        .body(Blob::new(body.to_string()))
        .send()
        .await
        .expect("invoke-with-response-stream");
    let mut last_type = String::new();
    while let Some(ResponseStream::Chunk(part)) = chunks.body.recv().await.expect("chunk") {
        let v: serde_json::Value = serde_json::from_slice(part.bytes().unwrap().as_ref()).unwrap();
        last_type = v["type"].as_str().unwrap().to_owned();
    }
    assert_eq!(last_type, "message_stop");

    let counted = client
        .count_tokens()
        .model_id(HAIKU_BASE)
        .input(CountTokensInput::Converse(
            ConverseTokensRequest::builder()
                .messages(user_text("Explain caching."))
                .build(),
        ))
        .send()
        .await
        .expect("count-tokens");
    assert_eq!(counted.input_tokens(), out.usage().unwrap().input_tokens());

    let ops: Vec<_> = s.upstream_requests().iter().map(|r| r.operation).collect();
    assert_eq!(
        ops,
        [
            "converse",
            "converse-stream",
            "invoke",
            "invoke-with-response-stream",
            "count-tokens"
        ]
    );
    // An alias reaches the simulator as the route's model id.
    assert_eq!(s.upstream_requests()[0].model_id, HAIKU);
    s.shutdown().await;
}

/// Converse, ConverseStream and InvokeModelWithResponseStream through a proxy
/// whose upstream table has `upstream_extra`, to a simulator that checks the
/// proxy's SigV4 signature; the HTTP versions the simulator received them on.
async fn upstream_versions(upstream_extra: &str) -> Vec<&'static str> {
    let s = stack_with(
        SimConfig {
            time_scale: 0.0,
            credentials: vec![bedrock_sim::config::StaticCredential {
                access_key_id: "AKIDBEDROCKPROXY".into(),
                secret_access_key: "bedrock-proxy-simulator".into(),
                session_token: None,
            }],
            ..SimConfig::default()
        },
        upstream_extra,
        "",
    )
    .await;
    let client = sdk_client(&s.url());
    for _ in 0..3 {
        let out = client
            .converse()
            .model_id("haiku")
            .messages(user_text("Explain caching."))
            .send()
            .await
            .expect("converse");
        assert!(out.output().is_some());
        let mut stream = client
            .converse_stream()
            .model_id("haiku")
            .messages(user_text("Explain streams."))
            .send()
            .await
            .expect("converse-stream");
        let mut text = String::new();
        let mut stopped = false;
        while let Some(event) = stream.stream.recv().await.expect("event") {
            match event {
                ConverseStreamOutput::ContentBlockDelta(d) => {
                    text.push_str(d.delta().unwrap().as_text().unwrap())
                }
                ConverseStreamOutput::MessageStop(_) => stopped = true,
                _ => {}
            }
        }
        assert!(stopped && !text.is_empty(), "the stream ran to its end");
        let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
            "messages": [{"role": "user", "content": "Explain chunks."}]});
        let mut chunks = client
            .invoke_model_with_response_stream()
            .model_id(HAIKU)
            .body(Blob::new(body.to_string()))
            .send()
            .await
            .expect("invoke-with-response-stream");
        let mut n = 0;
        while let Some(event) = chunks.body.recv().await.expect("chunk") {
            if let ResponseStream::Chunk(_) = event {
                n += 1;
            }
        }
        assert!(n > 0);
    }
    let received = s.upstream_requests();
    assert_eq!(received.len(), 9, "every call reached the simulator");
    let versions = received.iter().map(|r| r.http_version).collect();
    s.shutdown().await;
    versions
}

#[tokio::test]
async fn the_upstream_is_reached_over_the_configured_http_version() {
    assert!(
        upstream_versions("http = \"http2\"\nhttp2_connections = 3")
            .await
            .iter()
            .all(|v| *v == "HTTP/2.0"),
        "http2 on a plain http endpoint is h2c with prior knowledge"
    );
    assert!(upstream_versions("http = \"http1\"")
        .await
        .iter()
        .all(|v| *v == "HTTP/1.1"));
    assert!(
        upstream_versions("").await.iter().all(|v| *v == "HTTP/1.1"),
        "auto on plain http: HTTP/1.1 (HTTP/2 is negotiated by ALPN on https only)"
    );
}

#[tokio::test]
async fn the_upstream_receives_exactly_what_the_client_sent() {
    let s = stack().await;
    let sent = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"futureField":{"nested":[1,2.50,"x"]},
        "inferenceConfig":{"maxTokens":30},"requestMetadata":{"app":"billing"}}"#;
    let r = post_b(&s.op_url(HAIKU, "converse"), sent).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-proxy-route"), Some("haiku"));
    assert_eq!(r.header("x-proxy-attempts"), Some("1"));
    assert_eq!(r.header("x-proxy-latency-tier"), Some("standard"));
    assert!(r.header("x-amzn-requestid").is_some());

    let received = s.upstream_requests().pop().unwrap();
    let sent_json: serde_json::Value = serde_json::from_str(sent).unwrap();
    assert_eq!(received.body, sent_json, "unknown fields survive");
    assert_eq!(
        received.path,
        format!("/model/{}/converse", HAIKU.replace(':', "%3A"))
    );
    assert_eq!(
        received.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    s.shutdown().await;
}

#[tokio::test]
async fn invoke_headers_and_arns_pass_through() {
    let s = stack().await;
    let arn = format!("arn:aws:bedrock:us-east-2:123456789012:inference-profile/{HAIKU}");
    let encoded = arn.replace(':', "%3A").replace('/', "%2F");
    let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20,
        "messages": [{"role": "user", "content": "Hi"}]});
    let r = raw(
        "POST",
        &s.op_url(&encoded, "invoke"),
        &[
            ("authorization", &format!("Bearer {KEY_B}")),
            ("content-type", "application/json"),
            ("x-amzn-bedrock-performanceconfig-latency", "optimized"),
        ],
        body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("x-amzn-bedrock-performanceconfig-latency"),
        Some("optimized")
    );
    assert_eq!(r.header("x-proxy-latency-tier"), Some("optimized"));
    assert!(r.header("x-amzn-bedrock-output-token-count").is_some());
    let received = s.upstream_requests().pop().unwrap();
    assert_eq!(
        received.model_id, arn,
        "the ARN reaches the upstream intact"
    );
    assert_eq!(
        received
            .headers
            .get("x-amzn-bedrock-performanceconfig-latency")
            .map(String::as_str),
        Some("optimized")
    );
    s.shutdown().await;
}

#[tokio::test]
async fn upstream_errors_pass_through_and_sdk_errors_stay_typed() {
    let s = stack().await;
    let client = sdk_client(&s.url());
    let faults = &s.sim.sim.state().faults;

    faults.add(fault(FaultKind::Throttle));
    let err = client
        .converse()
        .model_id("haiku")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 429);
    assert!(err.into_service_error().is_throttling_exception());

    faults.add(fault(FaultKind::ModelNotReady));
    let err = client
        .converse()
        .model_id("haiku")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.into_service_error().code(),
        Some("ModelNotReadyException")
    );

    // The simulator's own validation error, byte for byte, with its request id.
    let bad = json!({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]});
    let r = post_b(&s.op_url("haiku", "converse"), bad.to_string()).await;
    assert_eq!(r.status, 400);
    assert_eq!(error_type(&r), "ValidationException");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("start with a user message"));
    let upstream_id = s.sim.sim.state().log.recent(1)[0].request_id.clone();
    assert_eq!(r.header("x-amzn-requestid"), Some(upstream_id.as_str()));

    // An exception inside a stream reaches the SDK as a typed stream error.
    faults.add(FaultRule {
        after_events: Some(3),
        exception: Some("throttlingException".into()),
        ..fault(FaultKind::MidstreamError)
    });
    let mut out = client
        .converse_stream()
        .model_id("haiku")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap();
    let mut events = 0;
    let err = loop {
        match out.stream.recv().await {
            Ok(Some(_)) => events += 1,
            Ok(None) => panic!("the stream ended without the exception"),
            Err(e) => break e,
        }
    };
    assert_eq!(events, 3);
    assert!(err.into_service_error().is_throttling_exception());
    s.shutdown().await;
}

#[tokio::test]
async fn a_stream_cut_by_the_upstream_ends_with_an_exception_frame() {
    let s = stack().await;
    let client = sdk_client(&s.url());
    s.sim.sim.state().faults.add(FaultRule {
        after_events: Some(4),
        ..fault(FaultKind::ConnectionReset)
    });
    let mut out = client
        .converse_stream()
        .model_id("haiku")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap();
    let mut events = 0;
    let err = loop {
        match out.stream.recv().await {
            Ok(Some(_)) => events += 1,
            Ok(None) => panic!("a cut stream must not look complete"),
            Err(e) => break e,
        }
    };
    assert_eq!(events, 4, "every whole frame before the cut arrives");
    let err = err.into_service_error();
    assert!(err.is_service_unavailable_exception(), "{err:?}");
    assert!(err.message().unwrap().contains("broke off the stream"));
    s.shutdown().await;
}

#[tokio::test]
async fn auth_is_enforced_on_every_request() {
    let s = stack().await;
    let body = converse_body("hi").to_string();
    let url = s.op_url("haiku", "converse");

    let none = raw(
        "POST",
        &url,
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(none.status, 403);
    assert_eq!(error_type(&none), "AccessDeniedException");
    assert!(none.json()["message"]
        .as_str()
        .unwrap()
        .contains("Missing credentials"));

    let wrong = raw(
        "POST",
        &url,
        &[("authorization", "Bearer nope")],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 403);
    assert_eq!(error_type(&wrong), "AccessDeniedException");

    let by_header = raw("POST", &url, &[("x-api-key", KEY_B)], body.clone())
        .await
        .unwrap();
    assert_eq!(by_header.status, 200);

    let not_allowed = post_b(&s.op_url("llama", "converse"), body.clone()).await;
    assert_eq!(not_allowed.status, 403);
    assert!(not_allowed.json()["message"]
        .as_str()
        .unwrap()
        .contains("not allowed to use route llama"));

    // SigV4 with the proxy-issued pair passes; a wrong secret (a signature that
    // does not verify) and an unknown access key do not.
    let signed = sdk_client(&s.url())
        .converse()
        .model_id("llama")
        .messages(user_text("hi"))
        .send()
        .await;
    assert!(signed.is_ok(), "{signed:?}");
    let tampered = sdk_client_signed(
        &s.url(),
        bedrock_sim::testing::TEST_ACCESS_KEY,
        "wrong-secret",
    )
    .converse()
    .model_id("llama")
    .messages(user_text("hi"))
    .send()
    .await
    .unwrap_err();
    assert_eq!(tampered.raw_response().unwrap().status().as_u16(), 403);
    let tampered = tampered.into_service_error();
    assert!(tampered.is_access_denied_exception());
    assert!(tampered
        .message()
        .unwrap()
        .contains("The request signature we calculated does not match"));
    let unknown = sdk_client_signed(&s.url(), "AKIDUNKNOWN", "x")
        .converse()
        .model_id("llama")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(unknown.is_access_denied_exception());
    assert_eq!(
        unknown.message(),
        tampered.message(),
        "an unknown key id is not told apart from a wrong signature"
    );
    assert_eq!(
        s.upstream_requests().len(),
        2,
        "refused requests never reach the upstream"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_bedrock_shaped_4xx() {
    let s = stack().await;
    let url = s.op_url("haiku", "converse");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed JSON",
            b"{\"messages\": [".to_vec(),
            "Malformed input request",
        ),
        (
            "invalid UTF-8",
            b"{\"messages\": \"\xff\xfe\"}".to_vec(),
            "not valid UTF-8",
        ),
        (
            "40 MB body",
            vec![b' '; 40 * 1024 * 1024],
            "larger than this proxy's limit",
        ),
        (
            "5,000-deep nesting",
            format!("{{\"a\":{}{}}}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            "nested deeper",
        ),
    ];
    for (name, body, expected) in cases {
        let r = post_b(&url, body).await;
        assert_eq!(r.status, 400, "{name}");
        assert_eq!(error_type(&r), "ValidationException", "{name}");
        assert!(
            r.json()["message"].as_str().unwrap().contains(expected),
            "{name}: {:?}",
            r.json()
        );
    }
    let unknown = post_b(
        &s.op_url("anthropic.claude-v99", "converse"),
        converse_body("hi").to_string(),
    )
    .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(error_type(&unknown), "ValidationException");
    assert!(unknown.json()["message"]
        .as_str()
        .unwrap()
        .contains("no route"));
    let unknown_op = post_b(&s.op_url("haiku", "apply"), "{}").await;
    assert_eq!(unknown_op.status, 404);
    assert!(
        s.upstream_requests().is_empty(),
        "nothing invalid was sent upstream"
    );

    let r = raw("GET", &format!("{}/metrics", s.url()), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "metrics are not served on the API port");
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_move_after_requests() {
    let s = stack().await;
    let before = s.metrics().await;
    let count = |text: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with("bedrock_proxy_requests_total{")
                    && l.contains("route=\"haiku\"")
                    && l.contains("operation=\"converse\"")
                    && l.contains("status=\"2xx\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    for _ in 0..3 {
        assert_eq!(
            post_b(
                &s.op_url("haiku", "converse"),
                converse_body("hi").to_string()
            )
            .await
            .status,
            200
        );
    }
    let after = s.metrics().await;
    assert!(count(&after) >= count(&before) + 3, "{after}");
    assert!(after.contains(
        "bedrock_proxy_request_duration_seconds_bucket{route=\"haiku\",operation=\"converse\""
    ));
    assert!(after.contains("bedrock_proxy_upstream_ttft_seconds"));
    assert!(after.contains("bedrock_proxy_tokens_total{route=\"haiku\",kind=\"output\"}"));
    let health = raw("GET", &format!("{}/healthz", s.proxy.admin_url()), &[], "")
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = stack_with(
        SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        },
        "",
        "[limits]\nheader_read_timeout = \"300ms\"\n",
    )
    .await;
    let mut conn = tokio::net::TcpStream::connect(s.proxy.api_addr)
        .await
        .unwrap();
    conn.write_all(b"POST /model/haiku/converse HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the proxy closed the connection instead of waiting forever"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn per_key_rate_limits_throttle() {
    let key = "bpk_rate_limited";
    let extra = format!(
        "[[keys]]\ntenant = \"limited\"\nkey_sha256 = \"{}\"\nrequests_per_minute = 2\n",
        bedrock_proxy::auth::hash_key(key)
    );
    let s = stack_with(
        SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        },
        "",
        &extra,
    )
    .await;
    let url = s.op_url("haiku", "converse");
    let headers = [("x-api-key", key)];
    let call = || raw("POST", &url, &headers, converse_body("hi").to_string());
    assert_eq!(call().await.unwrap().status, 200);
    assert_eq!(call().await.unwrap().status, 200);
    let limited = call().await.unwrap();
    assert_eq!(limited.status, 429);
    assert_eq!(error_type(&limited), "ThrottlingException");
    s.shutdown().await;
}

#[tokio::test]
async fn deadlines_and_unreachable_upstreams_are_bedrock_errors() {
    let s = stack_with(
        SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        },
        "first_byte_timeout = \"300ms\"",
        "",
    )
    .await;
    s.sim.sim.state().faults.add(FaultRule {
        ms: Some(2000),
        ..fault(FaultKind::SlowFirstByte)
    });
    let r = post_b(
        &s.op_url("haiku", "converse"),
        converse_body("hi").to_string(),
    )
    .await;
    assert_eq!(r.status, 408);
    assert_eq!(error_type(&r), "ModelTimeoutException");
    s.shutdown().await;

    // An upstream nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = config_text(&format!("http://127.0.0.1:{port}"), "", "");
    let proxy = bedrock_proxy::server::start(
        bedrock_proxy::Config::parse(&config).unwrap(),
        None,
        Default::default(),
    )
    .await
    .unwrap();
    let r = post_b(
        &format!("{}/model/haiku/converse", proxy.url()),
        converse_body("hi").to_string(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(error_type(&r), "ServiceUnavailableException");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("could not connect"));
    proxy.shutdown().await;
}

/// A simulator whose streams take a while, for tests that act mid-stream.
fn slow_sim() -> SimConfig {
    SimConfig {
        time_scale: 1.0,
        jitter: 0.0,
        seed: Some(3),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn load_is_shed_past_the_concurrency_limit() {
    let s = stack_with(slow_sim(), "", "[limits]\nmax_concurrent_requests = 1\n").await;
    let client = sdk_client(&s.url());
    let mut first = client
        .converse_stream()
        .model_id("haiku")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap();
    first.stream.recv().await.unwrap();
    let shed = post_b(
        &s.op_url("haiku", "converse"),
        converse_body("hi").to_string(),
    )
    .await;
    assert_eq!(shed.status, 503);
    assert_eq!(error_type(&shed), "ServiceUnavailableException");
    while first.stream.recv().await.unwrap().is_some() {}
    let ok = post_b(
        &s.op_url("haiku", "converse"),
        converse_body("hi").to_string(),
    )
    .await;
    assert_eq!(ok.status, 200, "the permit came back when the stream ended");
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_stream() {
    let s = stack_with(slow_sim(), "", "").await;
    let client = sdk_client(&s.url());
    let mut out = client
        .converse_stream()
        .model_id("haiku")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap();
    out.stream.recv().await.unwrap();
    drop(out);
    let mut cancelled = 0;
    for _ in 0..100 {
        cancelled = s.sim_stats()["streams_cancelled"].as_u64().unwrap();
        if cancelled > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cancelled, 1, "the simulator saw its stream dropped");
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("bedrock_proxy_streams_total{route=\"haiku\",outcome=\"client_gone\"} 1"),
        "{metrics}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_stream_finish() {
    let s = stack_with(slow_sim(), "", "").await;
    let client = sdk_client(&s.url());
    let mut out = client
        .converse_stream()
        .model_id("haiku")
        .messages(user_text("hi"))
        .send()
        .await
        .unwrap();
    out.stream.recv().await.unwrap();
    let url = s.url();
    let Stack { sim, proxy } = s;
    let stopping = tokio::spawn(proxy.shutdown());
    let mut rest = 0;
    let mut stop_reason = None;
    while let Some(event) = out.stream.recv().await.expect("the stream keeps going") {
        rest += 1;
        if let ConverseStreamOutput::MessageStop(m) = event {
            stop_reason = Some(m.stop_reason().clone());
        }
    }
    assert!(rest > 3 && stop_reason.is_some(), "the stream finished");
    stopping.await.unwrap();
    assert!(
        raw("POST", &format!("{url}/model/haiku/converse"), &[], "{}")
            .await
            .is_err(),
        "no longer listening"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn no_auth_is_refused_beyond_loopback_from_the_command_line_too() {
    // Demo mode has `auth = "none"`; `--listen 0.0.0.0:...` must not turn it
    // into an open proxy.
    let demo = || bedrock_proxy::Config::parse(bedrock_proxy::demo::DEMO_CONFIG).unwrap();
    let refused = bedrock_proxy::server::start(
        demo(),
        None,
        bedrock_proxy::server::StartOptions {
            listen: Some("0.0.0.0:0".parse().unwrap()),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        },
    )
    .await;
    let Err(e) = refused else {
        panic!("an unauthenticated proxy started on every interface")
    };
    assert!(e.to_string().contains("loopback"), "{e}");

    let sim = bedrock_proxy::demo::start_simulator().await.unwrap();
    let on_loopback = bedrock_proxy::server::start(
        demo(),
        Some(sim),
        bedrock_proxy::server::StartOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        },
    )
    .await
    .expect("loopback is fine");
    on_loopback.shutdown().await;
}

#[tokio::test]
async fn a_wrong_method_on_a_bedrock_path_gets_a_bedrock_error_not_an_empty_405() {
    let s = stack().await;
    let r = raw("GET", &s.op_url("haiku", "converse"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(error_type(&r), "ResourceNotFoundException");
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("GET /model/haiku/converse"), "{message}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_caller_without_a_valid_key_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = stack().await;
    let addr = s.url().trim_start_matches("http://").to_owned();
    for auth in ["", "authorization: Bearer not-a-key\r\n"] {
        // Announce a 20 MB body and send none of it: the refusal must not wait.
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /model/haiku/converse HTTP/1.1\r\nhost: {addr}\r\n{auth}\
             content-type: application/json\r\ncontent-length: 20000000\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut answer))
            .await
            .expect("refused without waiting for the body")
            .unwrap();
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("x-amzn-errortype: accessdeniedexception"),
            "{text}"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints_beyond_loopback_need_the_admin_token() {
    use tower::ServiceExt;
    let s = stack().await;
    let state = s.proxy.state.clone();
    let token_hash: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(b"admin-secret").into()
    };
    let call = |router: axum::Router, path: &'static str, token: Option<&'static str>| async move {
        let mut request = axum::http::Request::builder().method("GET").uri(path);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let response = router
            .oneshot(request.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        response.status().as_u16()
    };
    // An exposed listener without a token: probes and metrics only.
    let closed = || bedrock_proxy::admin::router(state.clone(), None, true);
    assert_eq!(call(closed(), "/metrics", None).await, 200);
    assert_eq!(call(closed(), "/healthz", None).await, 200);
    assert_eq!(call(closed(), "/admin/config", None).await, 403);
    // With a token: /admin/* for whoever has it.
    let guarded = || bedrock_proxy::admin::router(state.clone(), Some(token_hash), true);
    assert_eq!(call(guarded(), "/healthz", None).await, 200);
    assert_eq!(call(guarded(), "/admin/cache", None).await, 403);
    assert_eq!(call(guarded(), "/admin/cache", Some("wrong")).await, 403);
    assert_eq!(
        call(guarded(), "/admin/cache", Some("admin-secret")).await,
        200
    );
    // Loopback without a token: open, as before.
    let local = bedrock_proxy::admin::router(state.clone(), None, false);
    assert_eq!(call(local, "/admin/cache", None).await, 200);
    s.shutdown().await;
}

/// A client's JSON as a hand-written client might send it: spacing, escapes, a
/// number spelt `1.50`, a field the proxy does not know.
const HAND_WRITTEN: &str = "{ \"messages\" : [ {\"role\":\"user\", \"content\":[{\"text\":\"caf\\u00e9 \\\"1.50\\\"\"}]} ],\n  \"inferenceConfig\": {\"temperature\" : 0.50, \"maxTokens\": 100},\n  \"futureField\": {\"nested\": [1, 2.50, 1E2, \"x\"]} }";

#[tokio::test]
async fn a_body_no_stage_reads_goes_upstream_byte_for_byte() {
    // No response cache, no prompt-cache planning, no token limit, no
    // translation: the body is checked and passed on as sent.
    let s = stack().await;
    let r = post_b(&s.op_url(HAIKU, "converse"), HAND_WRITTEN).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let received = s.upstream_bodies().pop().unwrap();
    assert_eq!(
        std::str::from_utf8(&received).unwrap(),
        HAND_WRITTEN,
        "the simulator received the client's bytes"
    );
    // The proxy's own checks still hold on that path.
    let r = post_b(&s.op_url(HAIKU, "converse"), "{\"messages\": [}").await;
    assert_eq!(r.status, 400);
    assert_eq!(error_type(&r), "ValidationException");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("Malformed input request"));
    let deep = format!("{{\"messages\":{}{}}}", "[".repeat(100), "]".repeat(100));
    let r = post_b(&s.op_url(HAIKU, "converse"), deep).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("nested deeper"));
    assert_eq!(
        s.upstream_bodies().len(),
        1,
        "refused bodies never go upstream"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_tier_the_route_sets_is_spliced_into_the_clients_text() {
    let fast = SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    };
    let s = stack_full(fast, "", "latency = \"optimized\"", "").await;
    let r = post_b(&s.op_url(HAIKU, "converse"), HAND_WRITTEN).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-proxy-latency-tier"), Some("optimized"));
    let received = s.upstream_bodies().pop().unwrap();
    let text = std::str::from_utf8(&received).unwrap();
    let mut wanted: serde_json::Value = serde_json::from_str(HAND_WRITTEN).unwrap();
    wanted["performanceConfig"] = json!({"latency": "optimized"});
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(text).unwrap(),
        wanted
    );
    // Every member the planner did not touch goes out as the client wrote it.
    assert!(
        text.contains("{\"temperature\" : 0.50, \"maxTokens\": 100}"),
        "{text}"
    );
    assert!(text.contains("[1, 2.50, 1E2, \"x\"]"), "{text}");
    assert!(text.contains("caf\\u00e9"), "{text}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_route_that_reads_the_body_keys_and_plans_it_from_one_parse() {
    let fast = SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    };
    let route = "cache = { mode = \"deterministic\" }\nprompt_cache = { mode = \"always\" }";
    let s = stack_full(fast, "", route, "").await;
    let system = "You are the support assistant of an online bookshop. ".repeat(300);
    let body = json!({
        "system": [{"text": system}],
        "messages": [{"role": "user", "content": [{"text": "Where is my order?"}]}],
        "inferenceConfig": {"temperature": 0, "maxTokens": 40},
    });
    let first = post_b(&s.op_url(HAIKU, "converse"), body.to_string()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.header("x-cache"), Some("miss"));
    assert_eq!(first.header("x-proxy-cache-points"), Some("1"));
    let sent: serde_json::Value =
        serde_json::from_slice(&s.upstream_bodies().pop().unwrap()).unwrap();
    assert_eq!(
        sent["system"][1],
        json!({"cachePoint": {"type": "default"}})
    );
    assert_eq!(sent["messages"], body["messages"]);

    // The same request written another way is the same entry.
    let pretty = serde_json::to_string_pretty(&json!({
        "inferenceConfig": {"maxTokens": 40, "temperature": 0.0},
        "messages": body["messages"],
        "system": body["system"],
    }))
    .unwrap();
    let second = post_b(&s.op_url(HAIKU, "converse"), pretty).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache"), Some("hit"));
    assert_eq!(second.json()["output"], first.json()["output"]);
    assert_eq!(s.upstream_bodies().len(), 1);
    s.shutdown().await;
}
