//! Rate limits as clients meet them, in one proxy: a caller over its limit is
//! refused before it sends its body (issue 13, requirement 3), the Rust SDK
//! sees Bedrock's ThrottlingException with the rate-limit headers, and a
//! refusal never reaches the upstream. The limits across replicas (two proxy
//! processes sharing Redis) are tested from Python: tests/python/test_limits.py.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_sdk_bedrockruntime::error::ProvideErrorMetadata;
use bedrock_sim::testing::{raw, sdk_client, user_text};
use bedrock_sim::SimConfig;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMITED: &str = "bpk_limited_to_one_a_minute";

fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    }
}

/// A key allowed one request a minute.
fn limited_key() -> String {
    format!(
        "[[keys]]\ntenant = \"limited\"\nkey_sha256 = \"{}\"\nrequests_per_minute = 1\n",
        bedrock_proxy::auth::hash_key(LIMITED)
    )
}

/// Sends `head` (and then `body`, from another task, ignoring write errors)
/// on a new connection and reads what comes back until the proxy closes it.
/// The deadline only keeps a broken proxy from hanging the test.
async fn exchange(addr: std::net::SocketAddr, head: String, body: Option<Vec<u8>>) -> String {
    let conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        if let Some(body) = body {
            let _ = wr.write_all(&body).await;
        }
        // Keep our side open (no FIN) until the proxy has answered.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(wr);
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut got)).await;
    writer.abort();
    assert!(
        read.is_ok(),
        "the proxy neither answered nor closed: {}",
        String::from_utf8_lossy(&got)
    );
    String::from_utf8_lossy(&got).into_owned()
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn a_rate_limited_key_is_refused_before_sending_its_body() {
    let s = stack_with(fast(), "", &limited_key()).await;
    let url = s.op_url("haiku", "converse");
    let first = raw(
        "POST",
        &url,
        &[("x-api-key", LIMITED)],
        converse_body("hi").to_string(),
    )
    .await
    .unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("1"));
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(first.header("x-ratelimit-reset-requests"), Some("1m0s"));

    // Headers promising 100 kB, and no body: the answer comes anyway.
    let head = format!(
        "POST /model/haiku/converse HTTP/1.1\r\nhost: proxy\r\nx-api-key: {LIMITED}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    );
    let answer = exchange(s.proxy.api_addr, head.clone(), None).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(header(&answer, "x-amzn-errortype")
        .unwrap()
        .starts_with("ThrottlingException"));
    assert_eq!(header(&answer, "connection"), Some("close"));
    assert_eq!(header(&answer, "x-ratelimit-remaining-requests"), Some("0"));
    let retry: u64 = header(&answer, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(
        answer.contains("limited: 1 requests per minute"),
        "{answer}"
    );

    // A client that sends its whole (1 MB) body without waiting still reads
    // the 429, not a reset connection.
    let big = serde_json::to_vec(&converse_body(&"x".repeat(1_000_000))).unwrap();
    let head = format!(
        "POST /model/haiku/converse HTTP/1.1\r\nhost: proxy\r\nx-api-key: {LIMITED}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    let answer = exchange(s.proxy.api_addr, head, Some(big)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");

    assert_eq!(
        s.upstream_requests().len(),
        1,
        "refused requests never reach the upstream"
    );
    let metrics = s.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "bedrock_proxy_limit_refusals_total",
            &[
                "tenant=\"limited\"",
                "scope=\"key\"",
                "reason=\"requests_per_minute\""
            ]
        ),
        2.0
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_rust_sdk_gets_throttled_by_its_tenants_limit() {
    // team-a signs with SigV4: its requests are counted once the signature
    // over the body is checked.
    let s = stack_with(
        fast(),
        "",
        "[[tenants]]\nname = \"team-a\"\nrequests_per_minute = 2\ntokens_per_minute = 100000\n",
    )
    .await;
    let client = sdk_client(&s.url());
    for _ in 0..2 {
        client
            .converse()
            .model_id("haiku")
            .messages(user_text("hello"))
            .send()
            .await
            .expect("within the limit");
    }
    let err = client
        .converse()
        .model_id("haiku")
        .messages(user_text("hello"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ThrottlingException"));
    assert!(err
        .message()
        .unwrap()
        .contains("tenant team-a: 2 requests per minute"));
    let response = err.raw_response().unwrap();
    assert!(response.headers().get("retry-after").is_some());
    assert_eq!(
        response.headers().get("x-ratelimit-remaining-requests"),
        Some("0")
    );
    assert_eq!(
        response.headers().get("x-ratelimit-limit-tokens"),
        Some("100000")
    );
    assert_eq!(s.upstream_requests().len(), 2);

    // A bad signature is refused without using up the tenant's requests.
    let forged = bedrock_sim::testing::sdk_client_signed(
        &s.url(),
        bedrock_sim::testing::TEST_ACCESS_KEY,
        "not-the-secret",
    );
    let err = forged
        .converse()
        .model_id("haiku")
        .messages(user_text("hello"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some("ThrottlingException"),
        "still over its limit"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_bad_signature_does_not_use_up_the_keys_requests() {
    let s = stack_with(
        fast(),
        "",
        "[[tenants]]\nname = \"team-a\"\nrequests_per_minute = 1\n",
    )
    .await;
    let forged = bedrock_sim::testing::sdk_client_signed(
        &s.url(),
        bedrock_sim::testing::TEST_ACCESS_KEY,
        "not-the-secret",
    );
    for _ in 0..3 {
        let err = forged
            .converse()
            .model_id("haiku")
            .messages(user_text("hello"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("AccessDeniedException"));
    }
    sdk_client(&s.url())
        .converse()
        .model_id("haiku")
        .messages(user_text("hello"))
        .send()
        .await
        .expect("the real key still has its request");
    s.shutdown().await;
}
