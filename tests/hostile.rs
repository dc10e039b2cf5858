//! Hostile clients and slow dependencies, end to end: bodies that never finish,
//! sockets that send nothing, more connections than the cap, HTTP/2 heads and
//! bodies over the limits, SigV4 scopes and replays, a Redis that stops
//! answering, shutdown while streams run, numbers beyond f64 precision in the
//! cache key, and members of the wrong JSON type.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_bedrockruntime::types::{ConverseStreamOutput, InferenceConfiguration};
use bedrock_sim::testing::{raw, sdk_client, sdk_client_signed, user_text, TEST_ACCESS_KEY};
use bedrock_sim::SimConfig;
use bytes::Bytes;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    }
}

/// How long a test waits for the proxy to do something before calling it a
/// hang. Not a timing assertion: every wait here ends far sooner when it works.
const HANG: Duration = Duration::from_secs(20);

async fn connect(s: &Stack) -> TcpStream {
    TcpStream::connect(s.proxy.api_addr).await.unwrap()
}

/// Reads until the proxy closes the connection.
async fn read_until_closed(conn: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(HANG, conn.read_to_end(&mut buf))
        .await
        .expect("the proxy closes the connection")
        .ok();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads one HTTP/1.1 response with a Content-Length from a kept-alive connection.
async fn read_response(conn: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(HANG, conn.read(&mut byte))
            .await
            .expect("a response")
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tokio::time::timeout(HANG, conn.read_exact(&mut body))
        .await
        .expect("the body")
        .unwrap();
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The request line and headers of a Converse call with team-b's key.
fn converse_head(content_length: usize) -> String {
    format!(
        "POST /model/haiku/converse HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {KEY_B}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    )
}

// --- Bodies that never finish ---

#[tokio::test]
async fn a_stalled_body_gets_408_and_holds_no_request_slot() {
    let s = stack_with_server(
        fast(),
        "body_timeout = \"1s\"\nbody_min_rate = 0",
        "",
        "[limits]\nmax_concurrent_requests = 1\n",
    )
    .await;
    let mut stalled = connect(&s).await;
    stalled
        .write_all(converse_head(1000).as_bytes())
        .await
        .unwrap();
    stalled.write_all(b"{").await.unwrap();
    // The stalled upload is in (its connection may be on another thread)...
    let mut in_flight = 0.0;
    for _ in 0..500 {
        in_flight = metric(
            &s.proxy.state.metrics_text(),
            "bedrock_proxy_in_flight_requests",
            &[],
        );
        if in_flight >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(in_flight, 1.0, "the stalled upload is being read");
    // ...and the one request slot is not its: another tenant's request is
    // served while it hangs.
    let served = post_b(
        &s.op_url("haiku", "converse"),
        converse_body("hi").to_string(),
    )
    .await;
    assert_eq!(served.status, 200, "{:?}", served.body);

    let answer = read_until_closed(&mut stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        header_of(&answer, "x-amzn-errortype"),
        Some("RequestTimeoutException")
    );
    assert_eq!(header_of(&answer, "connection"), Some("close"));
    assert!(answer.contains("did not arrive within"), "{answer}");
    let again = post_b(
        &s.op_url("haiku", "converse"),
        converse_body("again").to_string(),
    )
    .await;
    assert_eq!(again.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn a_trickled_body_below_the_minimum_rate_gets_408_in_each_api_shape() {
    let s = stack_with_server(
        fast(),
        "body_min_rate = 100000\nbody_rate_grace = \"300ms\"",
        "",
        "",
    )
    .await;
    for (path, extra_headers, check) in [
        (
            "/model/haiku/converse",
            "",
            (|answer: &str| {
                assert_eq!(
                    header_of(answer, "x-amzn-errortype"),
                    Some("RequestTimeoutException")
                );
                assert!(answer.contains("\"message\":\"The request body arrived slower"));
            }) as fn(&str),
        ),
        ("/v1/chat/completions", "", |answer: &str| {
            assert!(answer.contains("\"type\":\"timeout_error\""), "{answer}");
        }),
        (
            "/v1/messages",
            "anthropic-version: 2023-06-01\r\n",
            |answer: &str| {
                assert!(answer.contains("\"type\":\"error\""), "{answer}");
                assert!(answer.contains("timeout_error"), "{answer}");
            },
        ),
    ] {
        let mut conn = connect(&s).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {KEY_B}\r\n{extra_headers}content-type: application/json\r\ncontent-length: 100000\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        // One byte every 100 ms: far below 100 kB/s.
        let mut answer = String::new();
        for _ in 0..200 {
            if conn.write_all(b" ").await.is_err() {
                break;
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    answer.push_str(&String::from_utf8_lossy(&buf[..n]));
                    answer.push_str(&read_until_closed(&mut conn).await);
                    break;
                }
                Ok(_) => break,
                Err(_) => {}
            }
        }
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        check(&answer);
    }
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            "bedrock_proxy_rejected_total",
            &["reason=\"request_timeout\""]
        ) >= 3.0
    );
    s.shutdown().await;
}

// --- Connections that send nothing ---

#[tokio::test]
async fn silent_idle_and_preface_only_connections_are_closed() {
    let s = stack_with_server(
        fast(),
        "first_byte_timeout = \"300ms\"\nidle_timeout = \"300ms\"",
        "",
        "[limits]\nheader_read_timeout = \"300ms\"\n",
    )
    .await;
    // Nothing at all.
    let mut silent = connect(&s).await;
    assert_eq!(read_until_closed(&mut silent).await, "");

    // One request, then nothing on the kept-alive connection.
    let mut kept = connect(&s).await;
    let body = converse_body("hi").to_string();
    kept.write_all(converse_head(body.len()).as_bytes())
        .await
        .unwrap();
    kept.write_all(body.as_bytes()).await.unwrap();
    let (status, head, _) = read_response(&mut kept).await;
    assert_eq!(status, 200);
    assert_ne!(header_of(&head, "connection"), Some("close"));
    assert_eq!(read_until_closed(&mut kept).await, "");

    // An HTTP/2 preface and nothing after it.
    let mut preface = connect(&s).await;
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    read_until_closed(&mut preface).await;

    // Half a request head.
    let mut half = connect(&s).await;
    half.write_all(b"POST /model/haiku/converse HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    read_until_closed(&mut half).await;

    let m = s.metrics().await;
    for reason in ["first_byte_timeout", "idle_timeout", "header_timeout"] {
        assert!(
            metric(
                &m,
                "bedrock_proxy_connections_closed_total",
                &[&format!("reason=\"{reason}\"")]
            ) >= 1.0,
            "{reason}: {m}"
        );
    }
    s.shutdown().await;
}

/// The header deadline of a request that starts on a kept-alive connection
/// holds even when the idle deadline is far later (the watchdog is not woken
/// per request; it must still not sleep through the sooner deadline).
#[tokio::test]
async fn a_stalled_head_after_a_kept_alive_request_is_cut_at_the_header_deadline() {
    let s = stack_with_server(
        fast(),
        "first_byte_timeout = \"120s\"\nidle_timeout = \"120s\"",
        "",
        "[limits]\nheader_read_timeout = \"300ms\"\n",
    )
    .await;
    let mut kept = connect(&s).await;
    for _ in 0..2 {
        let body = converse_body("hi").to_string();
        kept.write_all(converse_head(body.len()).as_bytes())
            .await
            .unwrap();
        kept.write_all(body.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut kept).await.0, 200);
    }
    // Idle long enough for the watchdog to have looked at the idle connection.
    tokio::time::sleep(Duration::from_secs(1)).await;
    kept.write_all(b"POST /model/haiku/converse HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // HANG is far shorter than the idle timeout: only the header deadline closes it.
    assert_eq!(read_until_closed(&mut kept).await, "");
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "bedrock_proxy_connections_closed_total",
            &["reason=\"header_timeout\""]
        ),
        1.0,
        "{m}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_get_a_fast_503() {
    let s = stack_with_server(fast(), "max_connections = 2", "", "").await;
    let _a = connect(&s).await;
    let _b = connect(&s).await;
    // The accept loop takes connections in order; make sure both are in.
    for _ in 0..200 {
        let m = s.proxy.state.metrics_text();
        if metric(&m, "bedrock_proxy_connections", &[]) >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut third = connect(&s).await;
    let body = converse_body("hi").to_string();
    let _ = third.write_all(converse_head(body.len()).as_bytes()).await;
    let _ = third.write_all(body.as_bytes()).await;
    let answer = read_until_closed(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        header_of(&answer, "x-amzn-errortype")
            .is_some_and(|t| t.starts_with("ServiceUnavailableException")),
        "{answer}"
    );
    assert!(answer.contains("connection limit"), "{answer}");
    let m = s.proxy.state.metrics_text();
    assert!(metric(&m, "bedrock_proxy_connections_refused_total", &[]) >= 1.0);
    s.shutdown().await;
}

// --- Connection runtimes ---

#[tokio::test]
async fn every_connection_runtime_setting_serves_concurrent_connections_and_streams() {
    // 0: the shared work-stealing runtime; 1: a single worker takes every
    // connection; 3: more workers than a CI machine's cores (they share
    // upstream pools).
    for workers in [0, 1, 3] {
        let s = stack_with_server(fast(), &format!("workers = {workers}"), "", "").await;
        let calls = (0..6).map(|i| {
            // A client each, so each call has a connection of its own.
            let client = sdk_client(&s.url());
            async move {
                client
                    .converse()
                    .model_id(HAIKU)
                    .messages(user_text(&format!("question {i}")))
                    .send()
                    .await
            }
        });
        for (i, answer) in futures_util::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            let answer = answer.unwrap_or_else(|e| panic!("workers = {workers}, call {i}: {e:?}"));
            let text = answer
                .output()
                .and_then(|o| o.as_message().ok())
                .and_then(|m| m.content().first())
                .and_then(|c| c.as_text().ok())
                .cloned()
                .unwrap_or_default();
            assert!(!text.is_empty(), "workers = {workers}, call {i}");
        }
        let mut stream = sdk_client(&s.url())
            .converse_stream()
            .model_id(HAIKU)
            .messages(user_text("a stream"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("workers = {workers}: {e:?}"))
            .stream;
        let mut text = String::new();
        let mut stopped = false;
        while let Some(event) = stream.recv().await.unwrap() {
            match event {
                ConverseStreamOutput::ContentBlockDelta(d) => {
                    if let Some(Ok(t)) = d.delta().map(|d| d.as_text()) {
                        text.push_str(t);
                    }
                }
                ConverseStreamOutput::MessageStop(_) => stopped = true,
                _ => {}
            }
        }
        assert!(stopped && !text.is_empty(), "workers = {workers}: {text:?}");
        // The clients are gone; their connections close and are counted so.
        let mut open = f64::NAN;
        for _ in 0..500 {
            open = metric(
                &s.proxy.state.metrics_text(),
                "bedrock_proxy_connections",
                &[],
            );
            if open == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(open, 0.0, "workers = {workers}: open connections");
        s.shutdown().await;
    }
}

// --- HTTP/2 answers like HTTP/1.1 ---

/// An HTTP/2 (prior knowledge) connection to the proxy.
async fn h2(
    s: &Stack,
) -> hyper::client::conn::http2::SendRequest<http_body_util::StreamBody<futures_stream::Chunks>> {
    let tcp = connect(s).await;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

/// Request bodies for the HTTP/2 client: chunks sent as the test pushes them.
mod futures_stream {
    use bytes::Bytes;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub type Frame = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>;

    /// Chunks from a channel; the body ends when the sender is dropped.
    pub struct Chunks(pub tokio::sync::mpsc::Receiver<Bytes>);

    impl futures_util::Stream for Chunks {
        type Item = Frame;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
            self.0
                .poll_recv(cx)
                .map(|c| c.map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
}

fn h2_request(
    path: &str,
    headers: &[(&str, String)],
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    hyper::Request<http_body_util::StreamBody<futures_stream::Chunks>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut builder = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://proxy{path}"))
        .version(hyper::Version::HTTP_2);
    for (k, v) in headers {
        builder = builder.header(*k, v);
    }
    let request = builder
        .body(http_body_util::StreamBody::new(futures_stream::Chunks(rx)))
        .unwrap();
    (tx, request)
}

async fn body_text(response: hyper::Response<hyper::body::Incoming>) -> String {
    use http_body_util::BodyExt;
    let bytes = tokio::time::timeout(HANG, response.into_body().collect())
        .await
        .expect("the body")
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn http2_delivers_431_and_413_like_http1() {
    let s = stack().await;
    let auth = ("authorization", format!("Bearer {KEY_B}"));

    // A 100 KB header: 431, on HTTP/1.1 and HTTP/2 alike.
    let big = "a".repeat(100_000);
    let over_h1 = raw(
        "POST",
        &s.op_url("haiku", "converse"),
        &[("authorization", &auth.1), ("x-big", &big)],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(over_h1.status, 431);
    let mut send = h2(&s).await;
    let (tx, request) = h2_request("/model/haiku/converse", &[auth.clone(), ("x-big", big)]);
    drop(tx);
    let response = tokio::time::timeout(HANG, send.send_request(request))
        .await
        .expect("an answer")
        .expect("the 431 reaches the client");
    assert_eq!(response.status(), 431);

    // A 30 MB body: refused from its Content-Length, and the answer arrives
    // although the client is still sending.
    let mut send = h2(&s).await;
    let (tx, request) = h2_request(
        "/model/haiku/converse",
        &[
            auth.clone(),
            ("content-type", "application/json".into()),
            ("content-length", "30000000".into()),
        ],
    );
    let sender = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b' '; 16 * 1024]);
        for _ in 0..64 {
            if tx.send(chunk.clone()).await.is_err() {
                return;
            }
        }
        // Then stall, holding the body open.
        tokio::time::sleep(HANG).await;
    });
    let response = tokio::time::timeout(HANG, send.send_request(request))
        .await
        .expect("an answer")
        .expect("the 400 reaches the client");
    assert_eq!(response.status(), 400);
    assert!(response
        .headers()
        .get("x-amzn-errortype")
        .is_some_and(|v| v.to_str().unwrap().starts_with("ValidationException")));
    let text = body_text(response).await;
    assert!(text.contains("larger than this proxy's limit"), "{text}");
    sender.abort();

    // The connection still serves.
    let body = converse_body("after").to_string();
    let (tx, request) = h2_request(
        "/model/haiku/converse",
        &[
            auth,
            ("content-type", "application/json".into()),
            ("content-length", body.len().to_string()),
        ],
    );
    tx.send(Bytes::from(body)).await.unwrap();
    drop(tx);
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    s.shutdown().await;
}

// --- SigV4 ---

fn client_in(endpoint: &str, region: &str) -> aws_sdk_bedrockruntime::Client {
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            TEST_ACCESS_KEY,
            bedrock_sim::testing::TEST_SECRET,
            None,
            None,
            "test",
        ))
        .retry_config(aws_sdk_bedrockruntime::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_bedrockruntime::Client::from_conf(config)
}

async fn converse_error(client: &aws_sdk_bedrockruntime::Client) -> (String, String) {
    let e = client
        .converse()
        .model_id(HAIKU)
        .messages(bedrock_sim::testing::user_text("hi"))
        .send()
        .await
        .expect_err("refused");
    let service = e.into_service_error();
    (
        aws_sdk_bedrockruntime::error::ProvideErrorMetadata::code(&service)
            .unwrap_or_default()
            .to_owned(),
        aws_sdk_bedrockruntime::error::ProvideErrorMetadata::message(&service)
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn sigv4_scopes_are_checked_and_unknown_keys_look_like_bad_signatures() {
    let s = stack().await;
    let url = s.url();
    assert!(sdk_client(&url)
        .converse()
        .model_id(HAIKU)
        .messages(bedrock_sim::testing::user_text("hi"))
        .send()
        .await
        .is_ok());

    let (code, message) = converse_error(&client_in(&url, "eu-west-1")).await;
    assert_eq!(code, "AccessDeniedException");
    assert!(
        message.contains("scoped to a valid region, not 'eu-west-1'"),
        "{message}"
    );

    let (code_unknown, unknown) =
        converse_error(&sdk_client_signed(&url, "AKIDNOBODYKNOWS", "whatever")).await;
    let (code_wrong, wrong) =
        converse_error(&sdk_client_signed(&url, TEST_ACCESS_KEY, "not-the-secret")).await;
    assert_eq!(code_unknown, "AccessDeniedException");
    assert_eq!(code_unknown, code_wrong);
    assert_eq!(unknown, wrong, "one message for both");
    assert!(unknown.contains("signature we calculated does not match"));

    // Authorization schemes are case-insensitive.
    let r = raw(
        "POST",
        &s.op_url("haiku", "converse"),
        &[
            ("authorization", &format!("bearer {KEY_B}")),
            ("content-type", "application/json"),
        ],
        converse_body("hi").to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    s.shutdown().await;
}

// --- A Redis that accepts connections and stops answering ---

/// A fake Redis: answers `+OK` to every command until frozen, then reads and
/// never answers (a hung server, or a network that drops replies).
struct FrozenRedis {
    port: u16,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FrozenRedis {
    async fn start() -> FrozenRedis {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut pending = Vec::new();
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        let commands = complete_commands(&mut pending);
                        if !f.load(Ordering::SeqCst) {
                            for _ in 0..commands {
                                if conn.write_all(b"+OK\r\n").await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        FrozenRedis { port, frozen, task }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl Drop for FrozenRedis {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Removes whole RESP commands (`*N` arrays of bulk strings) from the front
/// of `buf`; returns how many.
fn complete_commands(buf: &mut Vec<u8>) -> usize {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    let mut count = 0;
    loop {
        let parsed = (|| {
            let (head, mut at) = line(buf, 0)?;
            let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
                .ok()?
                .parse()
                .ok()?;
            for _ in 0..n {
                let (len, next) = line(buf, at)?;
                let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
                    .ok()?
                    .parse()
                    .ok()?;
                at = next + len + 2;
                if at > buf.len() {
                    return None;
                }
            }
            Some(at)
        })();
        match parsed {
            Some(used) => {
                buf.drain(..used);
                count += 1;
            }
            None => return count,
        }
    }
}

#[tokio::test]
async fn a_redis_that_stops_answering_is_skipped_after_the_first_failures() {
    let redis = FrozenRedis::start().await;
    let s = stack_full(
        fast(),
        "",
        "cache = { mode = \"always\" }",
        &format!(
            "[cache.redis]\nurl = \"redis://127.0.0.1:{}\"\ntimeout = \"100ms\"\ndown_after = 3\nretry_after = \"1h\"\n",
            redis.port
        ),
    )
    .await;
    let admin = s.proxy.admin_url();
    let mut connected = false;
    for _ in 0..200 {
        let d = raw("GET", &format!("{admin}/admin/cache"), &[], "")
            .await
            .unwrap()
            .json();
        if d["redis"]["connected"] == true {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(connected, "the fake Redis took the connection");
    redis.freeze();

    let url = s.op_url("haiku", "converse");
    for i in 0..12 {
        let r = post_b(&url, converse_body(&format!("miss {i}")).to_string()).await;
        assert_eq!(r.status, 200, "misses are served while Redis hangs");
    }
    let m = s.proxy.state.metrics_text();
    assert_eq!(metric(&m, "bedrock_proxy_redis_up", &[]), 0.0, "{m}");
    let failed: f64 = ["get", "set"]
        .iter()
        .map(|op| {
            metric(
                &m,
                "bedrock_proxy_cache_redis_errors_total",
                &[&format!("operation=\"{op}\"")],
            )
        })
        .sum();
    let skipped = metric(
        &m,
        "bedrock_proxy_cache_redis_skipped_total",
        &["operation=\"get\""],
    );
    // Each of the first calls waited out its timeout; after `down_after` in a
    // row the tier is skipped, so the other lookups cost nothing.
    assert!(failed <= 6.0, "only the first failures waited: {m}");
    assert!(skipped >= 8.0, "later lookups skipped the tier: {m}");
    let d = raw("GET", &format!("{admin}/admin/cache"), &[], "")
        .await
        .unwrap()
        .json();
    assert_eq!(d["redis"]["up"], false);
    s.shutdown().await;
}

// --- Shutdown ---

#[tokio::test]
async fn shutdown_says_503_on_readyz_and_kept_alive_connections_and_ends_cut_streams_with_an_exception(
) {
    let sim_config = SimConfig {
        // Slow enough that the stream below outlives the grace period: at
        // least 24 tokens at 62 a second, six times slower, is over 2 s.
        time_scale: 6.0,
        jitter: 0.0,
        ..SimConfig::default()
    };
    let s = stack_full(sim_config, "", "", "[limits]\nshutdown_grace = \"500ms\"\n").await;
    let client = sdk_client(&s.url());
    let mut stream = client
        .converse_stream()
        .model_id(HAIKU)
        .messages(user_text("Tell me a long story."))
        .inference_config(InferenceConfiguration::builder().max_tokens(4000).build())
        .send()
        .await
        .unwrap()
        .stream;
    // The stream is under way.
    loop {
        match stream.recv().await.unwrap() {
            Some(ConverseStreamOutput::ContentBlockDelta(_)) => break,
            Some(_) => {}
            None => panic!("the stream ended before shutdown"),
        }
    }
    // A kept-alive connection that has served one (quick) request.
    let mut kept = connect(&s).await;
    kept.write_all(
        format!("GET /v1/models HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {KEY_B}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut kept).await.0, 200);
    let body = converse_body("hi").to_string();

    let Stack { sim, proxy } = s;
    let admin = proxy.admin_url();
    let state = proxy.state.clone();
    let shutdown = tokio::spawn(proxy.shutdown());

    let mut ready = Err(String::new());
    for _ in 0..200 {
        ready = raw("GET", &format!("{admin}/readyz"), &[], "")
            .await
            .map(|r| r.status.as_u16());
        if ready == Ok(503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ready, Ok(503), "/readyz says 503 while draining");

    kept.write_all(converse_head(body.len()).as_bytes())
        .await
        .unwrap();
    kept.write_all(body.as_bytes()).await.unwrap();
    let (status, head, answer) = read_response(&mut kept).await;
    assert_eq!(status, 503, "{head}{answer}");
    assert!(header_of(&head, "x-amzn-errortype")
        .is_some_and(|t| t.starts_with("ServiceUnavailableException")));
    assert_eq!(header_of(&head, "connection"), Some("close"));

    let ended = loop {
        match tokio::time::timeout(HANG, stream.recv())
            .await
            .expect("the stream ends")
        {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without saying it was cut"),
            Err(e) => break e,
        }
    };
    let service = ended.into_service_error();
    assert!(
        service.is_service_unavailable_exception(),
        "the cut stream ends with an exception frame: {service:?}"
    );
    tokio::time::timeout(HANG, shutdown).await.unwrap().unwrap();
    let m = state.metrics_text();
    assert!(
        metric(&m, "bedrock_proxy_streams_total", &["outcome=\"shutdown\""]) >= 1.0,
        "{m}"
    );
    sim.shutdown().await;
}

// --- Cache keys ---

#[tokio::test]
async fn integers_beyond_f64_precision_are_different_requests() {
    let s = stack_full(fast(), "", "cache = { mode = \"always\" }", "").await;
    let url = s.op_url("haiku", "converse");
    let body = |n: &str| {
        format!(
            r#"{{"messages":[{{"role":"user","content":[{{"text":"hi"}}]}}],"additionalModelRequestFields":{{"seed":{n}}}}}"#
        )
    };
    let a = body("123456789012345678901234");
    let b = body("123456789012345678901235");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&a).unwrap(),
        serde_json::from_str::<serde_json::Value>(&b).unwrap(),
        "as f64 the two are one number"
    );
    assert_eq!(
        post_b(&url, a.clone()).await.header("x-cache"),
        Some("miss")
    );
    assert_eq!(post_b(&url, b).await.header("x-cache"), Some("miss"));
    let spelled_otherwise = body("1.23456789012345678901234e23");
    assert_eq!(
        post_b(&url, spelled_otherwise).await.header("x-cache"),
        Some("hit"),
        "the same number spelled otherwise is the same request"
    );
    s.shutdown().await;
}

// --- Strict types ---

#[tokio::test]
async fn members_of_the_wrong_type_are_400s_in_each_api_shape() {
    let s = stack().await;
    let chat = format!("{}/v1/chat/completions", s.url());
    for (member, value) in [("stream", json!("yes")), ("tools", json!("x"))] {
        let mut body = json!({"model": "haiku", "messages": [{"role": "user", "content": "hi"}]});
        body[member] = value;
        let r = post_b(&chat, body.to_string()).await;
        assert_eq!(r.status, 400, "{member}");
        let e = r.json();
        assert_eq!(e["error"]["param"], member);
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
    let r = raw(
        "POST",
        &format!("{}/v1/messages", s.url()),
        &[
            ("x-api-key", KEY_B),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ],
        json!({"model": "haiku", "max_tokens": 10, "stream": "yes",
               "messages": [{"role": "user", "content": "hi"}]})
        .to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let mut converse = converse_body("hi");
    converse["inferenceConfig"] = json!("x");
    let r = post_b(&s.op_url("haiku", "converse"), converse.to_string()).await;
    assert_eq!(r.status, 400);
    assert!(r
        .header("x-amzn-errortype")
        .is_some_and(|t| t.starts_with("ValidationException")));
    assert!(
        String::from_utf8_lossy(&r.body).contains("#/inferenceConfig: expected type: JSONObject"),
        "{:?}",
        r.body
    );
    s.shutdown().await;
}
