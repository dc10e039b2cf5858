//! Test helpers, behind the `testing` feature: the official Rust SDK client
//! pointed at an endpoint, and a raw HTTP client for what an SDK would hide
//! (bytes of a stream, requests an SDK refuses to build).

// Test support: a failed unwrap here is a failed test, as in the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_bedrockruntime::types::{
    AsyncInvokeOutputDataConfig, AsyncInvokeS3OutputDataConfig, ContentBlock, ConversationRole,
    GuardrailContentBlock, GuardrailTextBlock, Message,
};
use aws_smithy_types::Document;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::{HeaderMap, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::time::Duration;

use crate::{SimConfig, SimHandle, Simulator};

/// The access key the test clients sign with.
pub const TEST_ACCESS_KEY: &str = "AKIDTESTCLIENT";
/// Its secret.
pub const TEST_SECRET: &str = "test-secret";

/// The Rust SDK's Bedrock Runtime client for `endpoint`: region us-east-2,
/// SDK retries off (tests count calls), signing with the given key pair.
pub fn sdk_client_signed(
    endpoint: &str,
    access_key: &str,
    secret: &str,
) -> aws_sdk_bedrockruntime::Client {
    sdk_client_with_session(endpoint, access_key, secret, None)
}

/// [`sdk_client_signed`] with temporary credentials: `session_token` is
/// sent as `x-amz-security-token`, as the SDKs send a role's.
pub fn sdk_client_with_session(
    endpoint: &str,
    access_key: &str,
    secret: &str,
    session_token: Option<&str>,
) -> aws_sdk_bedrockruntime::Client {
    let credentials = Credentials::new(
        access_key,
        secret,
        session_token.map(str::to_owned),
        None,
        "test",
    );
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-2"))
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .retry_config(aws_sdk_bedrockruntime::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_bedrockruntime::config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(60))
                .build(),
        )
        .build();
    aws_sdk_bedrockruntime::Client::from_conf(config)
}

/// [`sdk_client_signed`] with the test key pair.
pub fn sdk_client(endpoint: &str) -> aws_sdk_bedrockruntime::Client {
    sdk_client_signed(endpoint, TEST_ACCESS_KEY, TEST_SECRET)
}

/// A user message with one text block.
pub fn user_text(text: &str) -> Message {
    Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(text.to_owned()))
        .build()
        .expect("role and content are set")
}

/// A simulator on a free loopback port that answers without simulated delays.
pub async fn spawn_fast() -> SimHandle {
    spawn(SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    })
    .await
}

/// A simulator with `config` on a free loopback port.
pub async fn spawn(config: SimConfig) -> SimHandle {
    Simulator::new(config)
        .expect("valid simulator config")
        .spawn(([127, 0, 0, 1], 0).into())
        .await
        .expect("bind a loopback port")
}

/// What a raw request got back.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    /// The body as JSON (panics in tests when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request and reads the whole response; an error means the
/// connection failed (a reset, for instance).
pub async fn raw(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<RawResponse, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(Full::new(body.into()))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok(RawResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A raw POST with `Authorization: Bearer test` and a JSON content type.
pub async fn post_json(url: &str, body: impl Into<Bytes>) -> Result<RawResponse, String> {
    raw(
        "POST",
        url,
        &[
            ("authorization", "Bearer test"),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// A text block for ApplyGuardrail.
pub fn guarded_text(text: &str) -> GuardrailContentBlock {
    GuardrailContentBlock::Text(GuardrailTextBlock::builder().text(text).build().unwrap())
}

/// Nova Reel's model input for a 6-second 720p video of `text`.
pub fn video_input(text: &str) -> Document {
    Document::Object(HashMap::from([
        ("taskType".to_owned(), Document::String("TEXT_VIDEO".into())),
        (
            "textToVideoParams".to_owned(),
            Document::Object(HashMap::from([(
                "text".to_owned(),
                Document::String(text.into()),
            )])),
        ),
        (
            "videoGenerationConfig".to_owned(),
            Document::Object(HashMap::from([
                ("durationSeconds".to_owned(), Document::from(6u64)),
                ("fps".to_owned(), Document::from(24u64)),
                ("dimension".to_owned(), Document::String("1280x720".into())),
            ])),
        ),
    ]))
}

/// An async invoke's output location.
pub fn s3(uri: &str) -> AsyncInvokeOutputDataConfig {
    AsyncInvokeOutputDataConfig::S3OutputDataConfig(
        AsyncInvokeS3OutputDataConfig::builder()
            .s3_uri(uri)
            .build()
            .unwrap(),
    )
}
