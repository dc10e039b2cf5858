//! InvokeModelWithBidirectionalStream through the proxy, driven by the Rust
//! SDK as a Nova Sonic app drives it: answers arrive while the upload is still
//! open (HTTP/1.1 and h2c), the SDK's chunk signatures are checked and the
//! upload re-signed for the simulator (which verifies the proxy's signature),
//! refusals come in Bedrock's shape, and the books are kept.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_sdk_bedrockruntime::error::ProvideErrorMetadata;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::error::InvokeModelWithBidirectionalStreamInputError;
use aws_sdk_bedrockruntime::types::{
    BidirectionalInputPayloadPart, InvokeModelWithBidirectionalStreamInput,
    InvokeModelWithBidirectionalStreamOutput,
};
use bedrock_sim::config::StaticCredential;
use bedrock_sim::testing::{raw, sdk_client, sdk_client_signed};
use bedrock_sim::SimConfig;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const SONIC: &str = "amazon.nova-sonic-v1:0";

/// An API key of tenant `team-d`, allowed every route.
const KEY_D: &str = "bpk_team_d_test_key";

/// The routes and keys besides the harness's: `sonic`, tenant `team-c`
/// (a SigV4 key) allowed the `haiku` route only, and `team-d` ([`KEY_D`]).
fn extra() -> String {
    format!(
        "{EXTRA}[[keys]]\ntenant = \"team-d\"\nkey_sha256 = \"{}\"\n",
        bedrock_proxy::auth::hash_key(KEY_D)
    )
}

const EXTRA: &str = r#"
[[routes]]
name = "sonic"
aliases = ["sonic"]
models = ["amazon.nova-sonic-v1:0"]
upstream = "sim"
[[routes]]
name = "sonic-hangup"
aliases = ["sonic-hangup"]
upstream = "sim"
upstream_model = "amazon.nova-sonic-v1:0"
[[keys]]
tenant = "team-c"
access_key_id = "AKIDTEAMC"
secret_access_key = "team-c-secret"
routes = ["haiku"]
"#;

/// A simulator that checks the proxy's own signature (the key pair the proxy
/// signs simulator requests with), behind a proxy with the sonic route.
async fn signed_stack() -> Stack {
    stack_with(
        SimConfig {
            time_scale: 0.0,
            credentials: vec![StaticCredential {
                access_key_id: "AKIDBEDROCKPROXY".into(),
                secret_access_key: "bedrock-proxy-simulator".into(),
                session_token: None,
            }],
            ..SimConfig::default()
        },
        "",
        &extra(),
    )
    .await
}

type Input =
    Result<InvokeModelWithBidirectionalStreamInput, InvokeModelWithBidirectionalStreamInputError>;

/// The events sent on `rx`, as the SDK's input stream (fused: the SDK polls
/// once more after the end).
fn input(
    rx: mpsc::Receiver<InvokeModelWithBidirectionalStreamInput>,
) -> impl futures_util::Stream<Item = Input> + Send + 'static {
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
    .fuse()
}

fn chunk(event: Value) -> InvokeModelWithBidirectionalStreamInput {
    InvokeModelWithBidirectionalStreamInput::Chunk(
        BidirectionalInputPayloadPart::builder()
            .bytes(Blob::new(json!({ "event": event }).to_string()))
            .build(),
    )
}

/// The name and body of a Nova Sonic output event.
fn event(out: InvokeModelWithBidirectionalStreamOutput) -> (String, Value) {
    let InvokeModelWithBidirectionalStreamOutput::Chunk(part) = out else {
        panic!("a chunk expected, got {out:?}");
    };
    let v: Value = serde_json::from_slice(part.bytes().unwrap().as_ref()).unwrap();
    let (name, body) = v["event"].as_object().unwrap().iter().next().unwrap();
    (name.clone(), body.clone())
}

/// One text turn with the simulated Nova Sonic through the proxy: the answer
/// must come before the client ends its upload, then the session closes.
async fn text_turn(client: aws_sdk_bedrockruntime::Client, model: &str) -> String {
    let (tx, rx) = mpsc::channel(16);
    tx.send(chunk(
        json!({"sessionStart": {"inferenceConfiguration": {"maxTokens": 256}}}),
    ))
    .await
    .unwrap();
    let mut out = client
        .invoke_model_with_bidirectional_stream()
        .model_id(model)
        .body(input(rx).into())
        .send()
        .await
        .expect("the stream opens");
    for e in [
        json!({"promptStart": {"promptName": "p1", "textOutputConfiguration": {"mediaType": "text/plain"}}}),
        json!({"contentStart": {"promptName": "p1", "contentName": "q1", "type": "TEXT", "interactive": true,
            "role": "USER", "textInputConfiguration": {"mediaType": "text/plain"}}}),
        json!({"textInput": {"promptName": "p1", "contentName": "q1", "content": "What's the weather like?"}}),
        json!({"contentEnd": {"promptName": "p1", "contentName": "q1"}}),
    ] {
        tx.send(chunk(e)).await.unwrap();
    }
    let mut names = Vec::new();
    let mut reply = String::new();
    loop {
        let (name, body) = event(out.body.recv().await.unwrap().expect("an answer"));
        if name == "textOutput" {
            reply = body["content"].as_str().unwrap().to_owned();
        }
        names.push(name.clone());
        if name == "usageEvent" {
            break;
        }
    }
    assert_eq!(
        names,
        [
            "completionStart",
            "contentStart",
            "textOutput",
            "contentEnd",
            "usageEvent"
        ]
    );
    tx.send(chunk(json!({"promptEnd": {"promptName": "p1"}})))
        .await
        .unwrap();
    let (name, body) = event(out.body.recv().await.unwrap().unwrap());
    assert_eq!(
        (name.as_str(), &body["stopReason"]),
        ("completionEnd", &json!("END_TURN"))
    );
    tx.send(chunk(json!({"sessionEnd": {}}))).await.unwrap();
    drop(tx);
    assert!(out.body.recv().await.unwrap().is_none(), "the session ends");
    reply
}

#[tokio::test]
async fn nova_sonic_answers_each_turn_through_the_proxy() {
    let s = signed_stack().await;
    // The SDK signs each frame for the proxy's key; the proxy checks that
    // chain, then signs its own for the simulator's.
    let reply = text_turn(sdk_client(&s.url()), "sonic").await;
    assert!(!reply.is_empty());
    let stats = s.sim_stats();
    assert_eq!(stats["bidi_sessions"], 1);
    assert_eq!(stats["bidi_events_in"], 7, "every event the client sent");
    let logged = s.upstream_requests();
    let sent = logged.last().unwrap();
    assert_eq!(sent.operation, "invoke-with-bidirectional-stream");
    assert_eq!(sent.model_id, SONIC, "the alias became the route's model");

    let metrics = s.metrics().await;
    // Tests in this binary share one metrics recorder: at least this session.
    assert!(
        metric(
            &metrics,
            "bedrock_proxy_requests_total",
            &[
                "route=\"sonic\"",
                "operation=\"invoke-with-bidirectional-stream\"",
                "status=\"2xx\""
            ]
        ) >= 1.0,
        "{metrics}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn nova_sonic_speaks_h2c_through_the_proxy() {
    let s = signed_stack().await;
    let mut http = hyper_014::client::HttpConnector::new();
    http.enforce_http(true);
    let h2c = aws_smithy_http_client::hyper_014::HyperClientBuilder::new()
        .hyper_builder({
            let mut b = hyper_014::client::Builder::default();
            b.http2_only(true);
            b
        })
        .build(http);
    let conf = sdk_client(&s.url())
        .config()
        .to_builder()
        .http_client(h2c)
        .build();
    text_turn(aws_sdk_bedrockruntime::Client::from_conf(conf), SONIC).await;
    assert_eq!(s.sim_stats()["bidi_sessions"], 1);
    s.shutdown().await;
}

#[tokio::test]
async fn refusals_come_in_bedrocks_shape_before_the_upstream_is_called() {
    let s = signed_stack().await;
    // A key without the route.
    let (_tx, rx) = mpsc::channel(1);
    let err = sdk_client_signed(&s.url(), "AKIDTEAMC", "team-c-secret")
        .invoke_model_with_bidirectional_stream()
        .model_id(SONIC)
        .body(input(rx).into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDeniedException"), "{err:?}");
    assert!(err.message().unwrap().contains("route sonic"), "{err:?}");
    // A wrong secret.
    let (_tx, rx) = mpsc::channel(1);
    let err = sdk_client_signed(&s.url(), "AKIDTEAMC", "not-the-secret")
        .invoke_model_with_bidirectional_stream()
        .model_id(SONIC)
        .body(input(rx).into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDeniedException"), "{err:?}");
    assert!(err.message().unwrap().contains("signature"), "{err:?}");
    // No route serves the model.
    let r = raw(
        "POST",
        &s.op_url("no.such-model-v1:0", "invoke-with-bidirectional-stream"),
        &[("authorization", &format!("Bearer {KEY_B}"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status.as_u16(), 400);
    assert!(r
        .header("x-amzn-errortype")
        .unwrap()
        .starts_with("ValidationException"));
    assert_eq!(s.sim_stats()["bidi_sessions"], 0);
    s.shutdown().await;
}

#[tokio::test]
async fn the_models_refusal_reaches_the_sdk() {
    let s = signed_stack().await;
    // haiku cannot hold a bidirectional stream: the simulator says so, as Bedrock would.
    let (_tx, rx) = mpsc::channel(1);
    let err = sdk_client(&s.url())
        .invoke_model_with_bidirectional_stream()
        .model_id(HAIKU)
        .body(input(rx).into())
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_validation_exception());
    // A session the model ends with an exception ends for the client too.
    let (tx, rx) = mpsc::channel(4);
    tx.send(chunk(json!({"promptStart": {"promptName": "p"}})))
        .await
        .unwrap();
    let mut out = sdk_client(&s.url())
        .invoke_model_with_bidirectional_stream()
        .model_id(SONIC)
        .body(input(rx).into())
        .send()
        .await
        .unwrap();
    let err = out.body.recv().await.unwrap_err().into_service_error();
    assert!(err.is_validation_exception(), "{err:?}");
    assert!(err
        .meta()
        .message()
        .unwrap()
        .contains("before sessionStart"));
    drop(tx);
    s.shutdown().await;
}

#[tokio::test]
async fn a_bad_upload_ends_the_session_with_a_validation_exception() {
    let s = signed_stack().await;
    // Not event-stream frames at all: the proxy cannot relay them, and says so
    // in the stream as Bedrock would.
    let r = raw(
        "POST",
        &s.op_url(SONIC, "invoke-with-bidirectional-stream"),
        &[
            ("authorization", &format!("Bearer {KEY_D}")),
            ("content-type", "application/vnd.amazon.eventstream"),
        ],
        vec![0xffu8; 64],
    )
    .await
    .unwrap();
    // Refused before the model answered (400), or in the stream once it had
    // (an exception frame): both are how Bedrock refuses a bad upload.
    let body: Value = if r.status.as_u16() == 200 {
        let frame = bedrock_wire::eventstream::decode(r.body.clone()).unwrap();
        assert_eq!(
            frame.kind,
            bedrock_wire::eventstream::FrameKind::Exception("validationException".into())
        );
        serde_json::from_slice(&frame.payload).unwrap()
    } else {
        assert_eq!(r.status.as_u16(), 400);
        assert!(r
            .header("x-amzn-errortype")
            .unwrap()
            .starts_with("ValidationException"));
        r.json()
    };
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("event stream is invalid"),
        "{body}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_session_and_its_books() {
    let s = signed_stack().await;
    let (tx, rx) = mpsc::channel(16);
    for e in [
        json!({"sessionStart": {}}),
        json!({"promptStart": {"promptName": "p"}}),
        json!({"contentStart": {"promptName": "p", "contentName": "c", "type": "TEXT", "role": "USER", "interactive": true}}),
        json!({"textInput": {"promptName": "p", "contentName": "c", "content": "Hello"}}),
        json!({"contentEnd": {"promptName": "p", "contentName": "c"}}),
    ] {
        tx.send(chunk(e)).await.unwrap();
    }
    // A route of its own: tests in this binary share one metrics recorder.
    let mut out = sdk_client(&s.url())
        .invoke_model_with_bidirectional_stream()
        .model_id("sonic-hangup")
        .body(input(rx).into())
        .send()
        .await
        .unwrap();
    let (name, _) = event(out.body.recv().await.unwrap().unwrap());
    assert_eq!(name, "completionStart");
    // The app hangs up mid-answer, its upload still open.
    drop(out);
    let labels = [
        "route=\"sonic-hangup\"",
        "operation=\"invoke-with-bidirectional-stream\"",
        "status=\"2xx\"",
    ];
    // The session's books close when the proxy sees the client go; wait for
    // that (bounded), not for a time.
    let mut counted = 0.0;
    for _ in 0..200 {
        counted = metric(&s.metrics().await, "bedrock_proxy_requests_total", &labels);
        if counted == 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(counted, 1.0, "the session was counted once it ended");
    // The upload is no longer read: the app's sender finds nobody listening
    // once the SDK's side is gone too.
    drop(tx);
    s.shutdown().await;
}

#[tokio::test]
async fn the_re_signed_upload_verifies_like_an_sdks() {
    // Two proxies in a row: the second checks the first's chunk-signature
    // chain with the key pair the first signs simulator upstreams with, as it
    // checks an SDK's. A session that reaches the model went through both.
    let sim = bedrock_sim::testing::spawn(SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    })
    .await;
    let inner_keys = r#"
[[keys]]
tenant = "proxy-a"
access_key_id = "AKIDBEDROCKPROXY"
secret_access_key = "bedrock-proxy-simulator"
"#;
    let inner = proxy_for(&sim.url(), "", "", &format!("{}{inner_keys}", extra())).await;
    let outer = proxy_for(&inner.url(), "", "", &extra()).await;
    let reply = text_turn(sdk_client(&outer.url()), "sonic").await;
    assert!(!reply.is_empty());
    assert_eq!(sim.sim.state().stats.snapshot()["bidi_sessions"], 1);
    outer.shutdown().await;
    inner.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn the_upload_travels_over_h2c_when_the_upstream_is_configured_for_http2() {
    // As above, both hops on HTTP/2 (h2c): the outer proxy's re-signed
    // chunk-signature chain is checked by the inner one, whose own signature
    // is checked by the simulator, which logs the version it was reached on.
    let sim = bedrock_sim::testing::spawn(SimConfig {
        time_scale: 0.0,
        credentials: vec![StaticCredential {
            access_key_id: "AKIDBEDROCKPROXY".into(),
            secret_access_key: "bedrock-proxy-simulator".into(),
            session_token: None,
        }],
        ..SimConfig::default()
    })
    .await;
    let inner_keys = r#"
[[keys]]
tenant = "proxy-a"
access_key_id = "AKIDBEDROCKPROXY"
secret_access_key = "bedrock-proxy-simulator"
"#;
    let http2 = "http = \"http2\"";
    let inner = proxy_for(&sim.url(), http2, "", &format!("{}{inner_keys}", extra())).await;
    let outer = proxy_for(&inner.url(), http2, "", &extra()).await;
    let reply = text_turn(sdk_client(&outer.url()), "sonic").await;
    assert!(!reply.is_empty());
    let state = sim.sim.state();
    assert_eq!(state.stats.snapshot()["bidi_sessions"], 1);
    let logged = state.log.recent(usize::MAX);
    let session = logged.last().unwrap();
    assert_eq!(session.operation, "invoke-with-bidirectional-stream");
    assert_eq!(session.http_version, "HTTP/2.0");
    outer.shutdown().await;
    inner.shutdown().await;
    sim.shutdown().await;
}
