//! The one HTTP client every subcommand uses: a hyper-util keep-alive pool
//! (HTTP/1.1; https through rustls with webpki roots, as the proxy's upstream
//! client), request signing (SigV4 or a bearer key) and timing of each call from
//! a start instant the caller chooses.
//!
//! Reading the answer is `response`'s business; what to send is each
//! subcommand's. The client adds microseconds, not milliseconds, to a call: no
//! SDK retries, no middleware, bodies built once by the caller.

use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
pub use bedrock_wire::client::bedrock_runtime_endpoint;
use bedrock_wire::client::{http_client, model_path, sign_bedrock, HttpClient};
use bedrock_wire::converse::Usage;
use bedrock_wire::operation::Operation;
use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

use crate::error::BenchError;
use crate::response::{self, ConverseStreamReader, Outcome, SseReader};

/// The key pair used against a simulator or proxy when none is given: the
/// simulator accepts any well-formed SigV4 signature.
const DUMMY_ACCESS_KEY: &str = "AKIDBEDROCKBENCH";
const DUMMY_SECRET_KEY: &str = "bedrock-bench-dummy-secret";

/// Largest non-streamed body read; a benchmark answer is never near it.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Credentials as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct AuthOptions {
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
}

/// How requests are authorized.
pub enum Auth {
    /// Nothing sent (OpenAI-compatible servers without a key).
    None,
    Bearer(HeaderValue),
    /// SigV4 for service `bedrock`; the region is chosen per request.
    SigV4(SharedCredentialsProvider),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key.
        f.write_str(match self {
            Auth::None => "Auth::None",
            Auth::Bearer(_) => "Auth::Bearer",
            Auth::SigV4(_) => "Auth::SigV4",
        })
    }
}

fn bearer(key: &str) -> Result<Auth, BenchError> {
    HeaderValue::from_str(&format!("Bearer {key}"))
        .map(Auth::Bearer)
        .map_err(|_| BenchError::Client("--api-key is not a valid header value".into()))
}

impl Auth {
    /// Authorization for Bedrock's API: the API key when given; else static
    /// keys when given; else, against an explicit endpoint (a simulator or the
    /// proxy), dummy static keys; else AWS's default credential chain.
    pub async fn bedrock(
        options: &AuthOptions,
        endpoint_given: bool,
        region: &str,
    ) -> Result<Auth, BenchError> {
        if let Some(key) = &options.api_key {
            return bearer(key);
        }
        match (&options.access_key, &options.secret_key) {
            (Some(access), Some(secret)) => {
                return Ok(Auth::SigV4(SharedCredentialsProvider::new(
                    Credentials::new(access, secret, None, None, "bedrock-bench"),
                )))
            }
            (None, None) => {}
            _ => {
                return Err(BenchError::Options(
                    "--access-key and --secret-key go together".into(),
                ))
            }
        }
        if endpoint_given {
            return Ok(Auth::SigV4(SharedCredentialsProvider::new(
                Credentials::new(
                    DUMMY_ACCESS_KEY,
                    DUMMY_SECRET_KEY,
                    None,
                    None,
                    "bedrock-bench",
                ),
            )));
        }
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .load()
            .await;
        let provider = sdk.credentials_provider().ok_or_else(|| {
            BenchError::Client("AWS's default credential chain found no provider".into())
        })?;
        provider
            .provide_credentials()
            .await
            .map_err(|e| {
                BenchError::Client(format!(
                    "no AWS credentials ({e}); configure the default chain (AWS_PROFILE, environment, SSO), or pass --api-key or --access-key/--secret-key"
                ))
            })?;
        Ok(Auth::SigV4(provider))
    }

    /// Authorization for an OpenAI-compatible server: the API key, or nothing.
    pub fn openai(options: &AuthOptions) -> Result<Auth, BenchError> {
        match &options.api_key {
            Some(key) => bearer(key),
            None => Ok(Auth::None),
        }
    }
}

/// The API a call speaks, which decides how its answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Converse,
    ConverseStream,
    OpenAiChat,
    OpenAiChatStream,
}

impl Api {
    pub fn is_stream(self) -> bool {
        matches!(self, Api::ConverseStream | Api::OpenAiChatStream)
    }
}

/// The URL of Converse (or ConverseStream) on `model` under `base`.
pub fn bedrock_url(base: &str, model: &str, stream: bool) -> String {
    let operation = if stream {
        Operation::ConverseStream
    } else {
        Operation::Converse
    };
    format!(
        "{}{}",
        base.trim_end_matches('/'),
        model_path(model, operation)
    )
}

/// The URL of OpenAI's chat completions under `base`.
pub fn openai_url(base: &str) -> String {
    format!("{}/v1/chat/completions", base.trim_end_matches('/'))
}

/// Checks a run's targets: one, or up to `max` to compare, each a base URL.
pub fn check_targets(targets: &[String], max: usize) -> Result<(), BenchError> {
    if targets.is_empty() || targets.len() > max {
        return Err(BenchError::Options(if max == 2 {
            "one target, or two to compare".into()
        } else {
            format!("one target, or two to {max} to compare")
        }));
    }
    targets.iter().try_for_each(|t| check_base_url(t))
}

/// Labels of compared targets, in order.
const LABELS: [&str; 8] = ["A", "B", "C", "D", "E", "F", "G", "H"];

/// Most targets one run compares.
pub const MAX_TARGETS: usize = LABELS.len();

/// How a report names target `i` of `n`: `target` alone, else `A`, `B`, `C`...
pub fn target_label(i: usize, n: usize) -> &'static str {
    if n == 1 {
        "target"
    } else {
        LABELS.get(i).copied().unwrap_or("?")
    }
}

/// Checks that `url` is an absolute http(s) URL, so a typo fails before the run.
pub fn check_base_url(url: &str) -> Result<(), BenchError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| BenchError::Options(format!("`{url}` is not a URL: {e}")))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(BenchError::Options(format!(
            "`{url}` must be an absolute http:// or https:// URL"
        ))),
    }
}

/// Whether a response came from a gateway's response cache: bedrock-proxy
/// says `x-cache: hit`; LiteLLM sends `x-litellm-cache-key` only on hits.
pub fn is_cache_hit(headers: &http::HeaderMap) -> bool {
    headers
        .get("x-cache")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"hit"))
        || headers.contains_key("x-litellm-cache-key")
}

/// One call, measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallResult {
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// From the start instant to the first generated content (streams only).
    pub ttft: Option<Duration>,
    /// From the start instant to the end of the body.
    pub total: Duration,
    pub usage: Option<Usage>,
    pub served_tier: Option<String>,
    pub text: String,
    /// The error code, `None` on success.
    pub error: Option<String>,
    /// The response came from the gateway's response cache ([`is_cache_hit`]).
    pub cache_hit: bool,
}

impl CallResult {
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    fn failed(code: &str, status: Option<u16>, start: Instant) -> CallResult {
        CallResult {
            status,
            total: start.elapsed(),
            error: Some(code.to_owned()),
            ..CallResult::default()
        }
    }

    fn from_outcome(outcome: Outcome, status: u16, cache_hit: bool, start: Instant) -> Self {
        CallResult {
            status: Some(status),
            ttft: outcome.ttft,
            total: start.elapsed(),
            usage: outcome.usage,
            served_tier: outcome.served_tier,
            text: outcome.text,
            error: outcome.error,
            cache_hit,
        }
    }
}

/// The client: cheap to clone, one connection pool shared by every clone.
#[derive(Clone, Debug)]
pub struct BenchClient {
    http: HttpClient,
    auth: Arc<Auth>,
    timeout: Duration,
}

impl BenchClient {
    /// A client whose calls give up after `timeout` (counted as `Timeout`);
    /// `pool_size` is how many idle connections per host to keep, at least the
    /// concurrency so that no call waits for a new connection after warmup.
    pub fn new(auth: Auth, timeout: Duration, pool_size: usize) -> BenchClient {
        BenchClient {
            http: http_client(Duration::from_secs(10), pool_size.max(16), false),
            auth: Arc::new(auth),
            timeout,
        }
    }

    /// POSTs `body` to `url` and reads the whole answer. Latencies are measured
    /// from `start`, which may be earlier than now (an open-loop request's
    /// scheduled time). Never fails: errors come back as codes in the result.
    pub async fn call(
        &self,
        api: Api,
        url: &str,
        region: &str,
        body: Bytes,
        start: Instant,
    ) -> CallResult {
        self.call_shaped(api, url, region, body, start, &CallShape::default())
            .await
    }

    /// [`BenchClient::call`], sent and read as `shape` says (a slow client, an
    /// injected fault). The timeout covers the deliberate pauses too.
    pub async fn call_shaped(
        &self,
        api: Api,
        url: &str,
        region: &str,
        body: Bytes,
        start: Instant,
        shape: &CallShape,
    ) -> CallResult {
        let deadline = Instant::now() + self.timeout;
        let exchange = self.exchange(api, url, region, body, start, shape);
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => CallResult::failed("Timeout", None, start),
        }
    }

    /// The headers a POST of `body` to `url` carries, authorization included:
    /// what a hand-written request (a deliberately stalled one) must send.
    pub async fn request_headers(
        &self,
        api: Api,
        url: &str,
        region: &str,
        body: &Bytes,
    ) -> Result<http::HeaderMap, &'static str> {
        let request = self
            .signed_request(api, url, region, body, &CallShape::default())
            .await?;
        Ok(request.into_parts().0.headers)
    }

    async fn signed_request(
        &self,
        api: Api,
        url: &str,
        region: &str,
        body: &Bytes,
        shape: &CallShape,
    ) -> Result<Request<Full<Bytes>>, &'static str> {
        let accept = match api {
            Api::ConverseStream => bedrock_wire::eventstream::CONTENT_TYPE,
            Api::OpenAiChatStream => "text/event-stream",
            Api::Converse | Api::OpenAiChat => "application/json",
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(Full::new(body.clone()))
            .map_err(|_| "InvalidUrl")?;
        if let Some(fault) = &shape.sim_fault {
            request.headers_mut().insert(SIM_FAULT, fault.clone());
        }
        self.authorize(&mut request, region, body).await?;
        Ok(request)
    }

    async fn exchange(
        &self,
        api: Api,
        url: &str,
        region: &str,
        body: Bytes,
        start: Instant,
        shape: &CallShape,
    ) -> CallResult {
        let request = match self.signed_request(api, url, region, &body, shape).await {
            Ok(r) => r,
            Err(code) => return CallResult::failed(code, None, start),
        };
        let response = match &shape.slow_body {
            None => self.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    "ConnectError"
                } else {
                    "ConnectionError"
                }
            }),
            Some(slow) => send_slowly(request, body, *slow).await,
        };
        match response {
            Ok(response) => read_answer(api, response, start, shape.read_pause).await,
            Err(code) => CallResult::failed(code, None, start),
        }
    }

    async fn authorize(
        &self,
        request: &mut Request<Full<Bytes>>,
        region: &str,
        body: &[u8],
    ) -> Result<(), &'static str> {
        let credentials = match self.auth.as_ref() {
            Auth::None => return Ok(()),
            Auth::Bearer(value) => {
                request.headers_mut().insert("authorization", value.clone());
                return Ok(());
            }
            Auth::SigV4(credentials) => credentials,
        };
        let creds = credentials
            .provide_credentials()
            .await
            .map_err(|_| "CredentialsError")?;
        sign_bedrock(request, body, creds, region, SystemTime::now()).map_err(|_| "SigningError")
    }
}

/// The simulator's per-request fault header (docs/SIMULATOR.md); a proxy does
/// not pass it on, so through one, faults come from the simulator's rules.
pub const SIM_FAULT: &str = "x-sim-fault";

/// A body sent in `pieces` parts, `gap` apart (the first at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowBody {
    pub pieces: u32,
    pub gap: Duration,
}

/// What a call does besides sending its body at once and reading the answer as
/// fast as it comes: the slow and faulty clients of a soak.
#[derive(Debug, Clone, Default)]
pub struct CallShape {
    /// Send the body slowly, over a connection of its own (plain http only):
    /// the pool's connections are not kept waiting on purpose.
    pub slow_body: Option<SlowBody>,
    /// Pause this long after each chunk of a streamed answer is read.
    pub read_pause: Option<Duration>,
    /// Sent as [`SIM_FAULT`].
    pub sim_fault: Option<HeaderValue>,
}

/// Sends `request` with its `body` in pieces over a new HTTP/1.1 connection,
/// with an explicit `Content-Length` so the server waits for every byte.
async fn send_slowly(
    request: Request<Full<Bytes>>,
    body: Bytes,
    slow: SlowBody,
) -> Result<http::Response<hyper::body::Incoming>, &'static str> {
    let (mut parts, _) = request.into_parts();
    if parts.uri.scheme_str() != Some("http") {
        return Err("SlowBodyNeedsHttp");
    }
    let authority = parts.uri.authority().cloned().ok_or("InvalidUrl")?;
    let port = authority.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|_| "ConnectError")?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|_| "ConnectError")?;
    // Drives the connection; it ends when the connection does.
    tokio::spawn(connection);
    let host = HeaderValue::from_str(authority.as_str()).map_err(|_| "InvalidUrl")?;
    parts.headers.insert(http::header::HOST, host);
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    // A connection of its own is spoken to in origin form (`/model/...`).
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| "InvalidUrl")?;
    let (mut tx, channel) = Channel::<Bytes, std::convert::Infallible>::new(1);
    let pieces = piece_sizes(body.len(), slow.pieces);
    let feeder = tokio::spawn(async move {
        let mut at = 0;
        for (i, size) in pieces.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(slow.gap).await;
            }
            if tx.send_data(body.slice(at..at + size)).await.is_err() {
                // The server answered (or closed) before the body ended.
                return;
            }
            at += size;
        }
    });
    let response = sender
        .send_request(Request::from_parts(parts, channel))
        .await
        .map_err(|_| "ConnectionError");
    // A server that answers early stops the sending.
    if response.is_err() {
        feeder.abort();
    }
    response
}

/// `len` bytes split into `pieces` parts as equal as can be (the first ones
/// one byte longer); never more parts than bytes, never an empty part.
pub fn piece_sizes(len: usize, pieces: u32) -> Vec<usize> {
    let n = (pieces.max(1) as usize).min(len.max(1));
    (0..n)
        .map(|i| len / n + usize::from(i < len % n))
        .filter(|&size| size > 0)
        .collect()
}

/// Reads an answer into a result: whole for errors and plain bodies, frame by
/// frame for streams (pausing `read_pause` after each chunk, when given).
async fn read_answer(
    api: Api,
    response: http::Response<hyper::body::Incoming>,
    start: Instant,
    read_pause: Option<Duration>,
) -> CallResult {
    let (parts, mut body) = response.into_parts();
    let status = parts.status.as_u16();
    let cache_hit = is_cache_hit(&parts.headers);

    if !parts.status.is_success() || !api.is_stream() {
        let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => return CallResult::failed("ConnectionError", Some(status), start),
        };
        let outcome = if !parts.status.is_success() {
            response::failed(&response::error_code(parts.status, &parts.headers, &bytes))
        } else if api == Api::Converse {
            response::converse_body(&bytes)
        } else {
            response::openai_body(&bytes)
        };
        return CallResult::from_outcome(outcome, status, cache_hit, start);
    }

    let mut reader = StreamReader::new(api);
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return CallResult::failed("ConnectionError", Some(status), start),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !reader.push(&data, start.elapsed()) {
                        break;
                    }
                }
                if let Some(pause) = read_pause {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
    CallResult::from_outcome(reader.finish(), status, cache_hit, start)
}

/// Either stream reader, chosen by the API.
enum StreamReader {
    Converse(ConverseStreamReader),
    Sse(SseReader),
}

impl StreamReader {
    fn new(api: Api) -> StreamReader {
        match api {
            Api::OpenAiChatStream | Api::OpenAiChat => StreamReader::Sse(SseReader::new()),
            Api::ConverseStream | Api::Converse => {
                StreamReader::Converse(ConverseStreamReader::new())
            }
        }
    }

    fn push(&mut self, chunk: &[u8], at: Duration) -> bool {
        match self {
            StreamReader::Converse(r) => r.push(chunk, at),
            StreamReader::Sse(r) => r.push(chunk, at),
        }
    }

    fn finish(self) -> Outcome {
        match self {
            StreamReader::Converse(r) => r.finish(),
            StreamReader::Sse(r) => r.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_escaped_like_the_sdks_do() {
        assert_eq!(
            bedrock_url(
                "http://127.0.0.1:7070/",
                "us.anthropic.claude-3-5-haiku-20241022-v1:0",
                true
            ),
            "http://127.0.0.1:7070/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"
        );
        assert_eq!(openai_url("http://h:1"), "http://h:1/v1/chat/completions");
    }

    #[test]
    fn cache_hits_are_read_from_either_gateway() {
        let mut h = http::HeaderMap::new();
        assert!(!is_cache_hit(&h));
        h.insert("x-cache", HeaderValue::from_static("miss"));
        assert!(!is_cache_hit(&h));
        h.insert("x-cache", HeaderValue::from_static("hit"));
        assert!(is_cache_hit(&h));
        let mut h = http::HeaderMap::new();
        h.insert("x-litellm-cache-key", HeaderValue::from_static("24f2"));
        assert!(is_cache_hit(&h));
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(check_base_url("http://127.0.0.1:7070").is_ok());
        assert!(check_base_url("https://bedrock-runtime.us-east-1.amazonaws.com").is_ok());
        assert!(check_base_url("127.0.0.1:7070").is_err());
        assert!(check_base_url("ftp://x").is_err());
    }

    #[test]
    fn a_slow_body_is_cut_into_near_equal_pieces() {
        assert_eq!(piece_sizes(10, 3), vec![4, 3, 3]);
        assert_eq!(piece_sizes(9, 3), vec![3, 3, 3]);
        assert_eq!(piece_sizes(2, 5), vec![1, 1], "no empty piece");
        assert_eq!(piece_sizes(7, 0), vec![7], "at least one piece");
        assert!(piece_sizes(0, 4).is_empty());
        assert_eq!(piece_sizes(1000, 7).iter().sum::<usize>(), 1000);
    }
}
