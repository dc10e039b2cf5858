//! Baseline servers for the performance report: what the machine allows before
//! any proxy logic runs.
//!
//! - [`Baseline::Static`]: an axum server answering every POST with one fixed
//!   body (and a ConverseStream path with fixed event-stream frames, encoded
//!   once). A cache hit does at least this much work, so its requests/s are
//!   the ceiling cache-hit throughput is compared with. [`Baseline::copy`]
//!   takes both answers from the server the proxy caches from, so the static
//!   server sends the very bytes a cache hit does.
//! - [`Baseline::Forward`]: the least a reverse proxy can do (hyper in, the body
//!   read whole, hyper out to the same upstream, the answer streamed back; no
//!   auth, parsing, logging or metrics). Its added latency is the floor
//!   pass-through overhead is compared with on the same machine.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bedrock_wire::client::{http_client, HttpClient};
use bedrock_wire::eventstream::event_frame;
use bedrock_wire::serve::{serve, ServeOptions};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::client::bedrock_url;
use crate::error::BenchError;

/// A built-in Converse answer (a 24-token sentence), for `--static -`. The
/// simulator's answer to the load test's prompt is longer: `--copy` serves that.
pub const CONVERSE_ANSWER: &str = r#"{"output":{"message":{"role":"assistant","content":[{"text":"The sea keeps its own slow time, folding light and salt into waves that arrive, retreat and arrive again."}]}},"stopReason":"end_turn","usage":{"inputTokens":14,"outputTokens":24,"totalTokens":38},"metrics":{"latencyMs":212}}"#;

/// Which baseline to serve.
#[derive(Debug, Clone)]
pub enum Baseline {
    /// Every POST answered with `body` (JSON), and every path ending in
    /// `/converse-stream` with `stream` (event-stream frames).
    Static { body: Bytes, stream: Bytes },
    /// Every request forwarded to this base URL.
    Forward(String),
}

impl Baseline {
    /// The built-in answer, [`CONVERSE_ANSWER`], whole and as frames.
    pub fn builtin() -> Baseline {
        Baseline::with_body(Bytes::from_static(CONVERSE_ANSWER.as_bytes()))
    }

    /// `body` for Converse; the built-in frames for ConverseStream.
    pub fn with_body(body: Bytes) -> Baseline {
        Baseline::Static {
            body,
            stream: static_stream(),
        }
    }

    /// The answers `base` (a simulator, Bedrock or a proxy) gives to `request`
    /// for `model`, asked once each for Converse and ConverseStream with
    /// `Authorization: Bearer api_key`, to be served byte for byte.
    pub async fn copy(
        base: &str,
        model: &str,
        request: Bytes,
        api_key: &str,
    ) -> Result<Baseline, BenchError> {
        let client = &http_client(Duration::from_secs(5), 1, false);
        let request = &request;
        let ask = |stream: bool| async move {
            let url = bedrock_url(base, model, stream);
            let call = http::Request::post(&url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {api_key}"))
                .body(Full::new(request.clone()))
                .map_err(|e| BenchError::Client(format!("{url}: {e}")))?;
            let response = client
                .request(call)
                .await
                .map_err(|e| BenchError::Client(format!("{url}: {e}")))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| BenchError::Client(format!("{url}: reading the answer: {e}")))?
                .to_bytes();
            if !status.is_success() {
                return Err(BenchError::Client(format!(
                    "{url} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            Ok(body)
        };
        Ok(Baseline::Static {
            body: ask(false).await?,
            stream: ask(true).await?,
        })
    }
}

#[derive(Clone)]
struct Forward {
    base: Arc<str>,
    client: HttpClient,
}

#[derive(Clone)]
struct Static {
    body: Bytes,
    /// ConverseStream frames, for `/converse-stream`.
    stream: Bytes,
}

async fn answer_static(State(s): State<Static>, uri: Uri) -> Response {
    if uri.path().ends_with("/converse-stream") {
        return (
            [(
                "content-type",
                HeaderValue::from_static("application/vnd.amazon.eventstream"),
            )],
            s.stream,
        )
            .into_response();
    }
    (
        [("content-type", HeaderValue::from_static("application/json"))],
        s.body,
    )
        .into_response()
}

/// [`CONVERSE_ANSWER`]'s text as the simulator streams it: message start,
/// deltas of two words, block and message stop, metadata.
fn static_stream() -> Bytes {
    let text = "The sea keeps its own slow time, folding light and salt into waves that arrive, retreat and arrive again.";
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let mut out = Vec::new();
    out.extend_from_slice(&event_frame("messageStart", r#"{"role":"assistant"}"#));
    for pair in words.chunks(2) {
        let delta = serde_json::json!({"contentBlockIndex": 0, "delta": {"text": pair.concat()}});
        out.extend_from_slice(&event_frame("contentBlockDelta", delta.to_string()));
    }
    out.extend_from_slice(&event_frame(
        "contentBlockStop",
        r#"{"contentBlockIndex":0}"#,
    ));
    out.extend_from_slice(&event_frame("messageStop", r#"{"stopReason":"end_turn"}"#));
    out.extend_from_slice(&event_frame(
        "metadata",
        r#"{"usage":{"inputTokens":14,"outputTokens":24,"totalTokens":38},"metrics":{"latencyMs":212}}"#,
    ));
    Bytes::from(out)
}

async fn forward(State(f): State<Forward>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("{}{path}", f.base).parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    parts.headers.remove("host");
    let outbound = http::Request::from_parts(parts, Full::new(body));
    match f.client.request(outbound).await {
        Ok(response) => response.map(Body::new),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// The router of a baseline.
pub fn router(baseline: Baseline) -> Router {
    match baseline {
        Baseline::Static { body, stream } => Router::new()
            .fallback(answer_static)
            .with_state(Static { body, stream }),
        Baseline::Forward(base) => Router::new().fallback(forward).with_state(Forward {
            base: Arc::from(base.trim_end_matches('/')),
            client: http_client(Duration::from_secs(5), 256, false),
        }),
    }
}

/// Serves a baseline on `listen` until Ctrl-C or SIGTERM.
pub async fn run(listen: SocketAddr, baseline: Baseline) -> Result<(), BenchError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| BenchError::Listen(format!("cannot listen on {listen}: {e}")))?;
    eprintln!("baseline listening on http://{listen}");
    serve(
        listener,
        router(baseline),
        ServeOptions::default(),
        bedrock_wire::serve::shutdown_signal(),
    )
    .await;
    Ok(())
}
