//! Outbound HTTP to Bedrock, shared by the proxy's upstream client and the
//! benchmark tool: pooled HTTPS clients (rustls with aws-lc-rs and the webpki
//! roots; HTTP/1.1, HTTP/2 by ALPN where the server offers it, or HTTP/2 only,
//! h2c on plain http; requests spread over several), the path of an operation on
//! a model as the AWS SDKs encode it, and SigV4 signing for service `bedrock`
//! (or any other signing name, such as SageMaker Runtime's `sagemaker`).

use aws_credential_types::Credentials;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use crate::operation::Operation;
use crate::signing;

/// What the AWS SDKs leave unescaped in a path segment.
pub(crate) const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A pooled HTTP(S) client sending whole bodies.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled HTTP(S) client sending bodies of type `B`.
pub type StreamingClient<B> = Client<HttpsConnector<HttpConnector>, B>;

pub use hyper_util::client::legacy::{Error as ClientError, ResponseFuture};

/// Builds a client: `connect_timeout` for TCP and TLS, `max_idle_per_host` kept
/// connections, HTTP/2 offered by ALPN when `http2` (plain http stays HTTP/1.1).
pub fn http_client(connect_timeout: Duration, max_idle_per_host: usize, http2: bool) -> HttpClient {
    http_client_for(connect_timeout, max_idle_per_host, http2)
}

/// [`http_client`] for any request body type (a body still being written,
/// such as a bidirectional stream's upload).
pub fn http_client_for<B>(
    connect_timeout: Duration,
    max_idle_per_host: usize,
    http2: bool,
) -> StreamingClient<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
{
    client_with(&ClientOptions {
        connect_timeout,
        version: if http2 {
            HttpVersion::Auto
        } else {
            HttpVersion::Http1
        },
        pool_max_idle_per_host: max_idle_per_host,
        ..ClientOptions::default()
    })
}

/// Which HTTP version a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersion {
    /// HTTP/2 where the server picks it by ALPN (https), else HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: by ALPN on https, with prior knowledge (h2c) on plain http.
    Http2,
}

/// How a client connects and keeps connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// TCP and TLS.
    pub connect_timeout: Duration,
    pub version: HttpVersion,
    /// How long an unused connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// HTTP/2 PING interval, also while idle (`None`: no pings); a connection
    /// whose PING is not answered within `http2_keep_alive_timeout` is closed.
    pub http2_keep_alive_interval: Option<Duration>,
    pub http2_keep_alive_timeout: Duration,
    /// HTTP/2 flow-control windows sized from the measured bandwidth-delay
    /// product (instead of hyper's fixed 64 KiB stream / 1 MiB connection).
    pub http2_adaptive_window: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(3),
            version: HttpVersion::Auto,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            http2_keep_alive_timeout: Duration::from_secs(10),
            http2_adaptive_window: true,
        }
    }
}

/// Builds one pooled client by `options` (over HTTP/2, all requests to a host
/// share one connection: see [`Spread`] for several).
pub fn client_with<B>(options: &ClientOptions) -> StreamingClient<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
{
    client_on(options, connector(options))
}

/// The TCP and TLS connector `options` describe.
fn connector(options: &ClientOptions) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(options.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
        .unwrap_or_else(|_| {
            // The bundled provider supports the default protocol versions; should
            // it not, the process-wide default provider is the fallback.
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots()
        })
        .https_or_http();
    match options.version {
        HttpVersion::Auto => builder.enable_all_versions().wrap_connector(http),
        HttpVersion::Http1 => builder.enable_http1().wrap_connector(http),
        HttpVersion::Http2 => builder.enable_http2().wrap_connector(http),
    }
}

/// A pooled client over `connector` (which clients may share: its TLS config
/// is built once).
fn client_on<B>(
    options: &ClientOptions,
    connector: HttpsConnector<HttpConnector>,
) -> StreamingClient<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
{
    let mut client = Client::builder(TokioExecutor::new());
    client
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(options.pool_idle_timeout)
        .pool_max_idle_per_host(options.pool_max_idle_per_host);
    if options.version != HttpVersion::Http1 {
        client
            .http2_only(options.version == HttpVersion::Http2)
            .http2_keep_alive_interval(options.http2_keep_alive_interval)
            .http2_keep_alive_timeout(options.http2_keep_alive_timeout)
            .http2_keep_alive_while_idle(options.http2_keep_alive_interval.is_some())
            .http2_adaptive_window(options.http2_adaptive_window);
    }
    client.build(connector)
}

/// Several clients with requests spread over them in turn. Over HTTP/2 a
/// client multiplexes every request to a host on one connection, whose flow
/// control and single TCP stream then serialize a loaded upstream; `n` clients
/// give `n` connections. (Over HTTP/1.1 they split one pool `n` ways.)
///
/// Each connection runtime ([`crate::workers`]) has clients of its own, so a
/// request's upstream connection runs on the request's thread: a pooled
/// connection is a task on the runtime that opened it, and one opened by
/// another worker would cost a thread hand-off each way.
pub struct Spread<B> {
    /// `per_worker` clients for each of `workers` runtimes, worker by worker.
    clients: Box<[StreamingClient<B>]>,
    per_worker: usize,
    workers: usize,
    next: AtomicUsize,
}

impl<B> Spread<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// `connections` clients (at least one) built by `options`, for each
    /// connection runtime the process may run ([`crate::workers::cores`]).
    pub fn new(options: &ClientOptions, connections: usize) -> Spread<B> {
        let per_worker = connections.max(1);
        let workers = crate::workers::cores();
        let connector = connector(options);
        Spread {
            clients: (0..per_worker * workers)
                .map(|_| client_on(options, connector.clone()))
                .collect(),
            per_worker,
            workers,
            next: AtomicUsize::new(0),
        }
    }

    /// Sends `request` on the calling worker's next client in turn (the first
    /// worker's off the workers).
    pub fn request(&self, request: Request<B>) -> ResponseFuture {
        let worker = crate::workers::current().map_or(0, |w| w % self.workers);
        let i = match self.per_worker {
            1 => 0,
            n => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        self.clients[worker * self.per_worker + i].request(request)
    }

    /// How many clients each worker's requests are spread over.
    pub fn len(&self) -> usize {
        self.per_worker
    }

    /// Never: a spread has at least one client.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// `/model/{modelId}/{operation}`, the model id escaped as the SDKs do (an ARN's
/// `:` and `/` included).
pub fn model_path(model_id: &str, operation: Operation) -> String {
    format!(
        "/model/{}/{}",
        utf8_percent_encode(model_id, PATH_SEGMENT),
        operation.name()
    )
}

/// `/model/{modelId}/{segment}` for any operation's path segment (such as
/// `invoke-with-bidirectional-stream`), escaped as [`model_path`] does.
pub fn model_segment_path(model_id: &str, segment: &str) -> String {
    format!(
        "/model/{}/{segment}",
        utf8_percent_encode(model_id, PATH_SEGMENT)
    )
}

/// Bedrock Runtime's public endpoint in `region`.
pub fn bedrock_runtime_endpoint(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// Signs `request` (going to `url`, carrying `body`) with SigV4 for service
/// `bedrock` in `region`, adding `authorization`, `x-amz-date` and, for
/// temporary credentials, `x-amz-security-token`.
pub fn sign_bedrock(
    request: &mut Request<Full<Bytes>>,
    body: &[u8],
    credentials: Credentials,
    region: &str,
    time: SystemTime,
) -> Result<(), String> {
    sign_request(request, body, credentials, region, "bedrock", time)
}

/// Signs a POST of `body` to `url` with SigV4 for `service` (its signing name:
/// `bedrock`, `sagemaker`) in `region`, as [`sign_bedrock`] does.
pub fn sign_request(
    request: &mut Request<Full<Bytes>>,
    body: &[u8],
    credentials: Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<(), String> {
    sign_any(request, body, credentials, region, service, time).map(|_| ())
}

/// Signs `request` (any method and body type; the signature covers `body`,
/// which for an event-stream upload is empty, as the AWS SDKs sign it) and
/// returns the signature: the seed an event-stream upload's chunk signatures
/// chain from ([`crate::eventstream::sign_envelope`]). Signs as `aws-sigv4`'s
/// `sign` does with default settings, by [`signing::sign`], with a signing key
/// derived once per day rather than on every request.
pub fn sign_any<B>(
    request: &mut Request<B>,
    body: &[u8],
    credentials: Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<String, String> {
    let keys = signing::Keys {
        access_key_id: credentials.access_key_id(),
        secret_access_key: credentials.secret_access_key(),
        session_token: credentials.session_token(),
    };
    let headers = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
    let mut hash = [0u8; 64];
    let signed = signing::sign(
        request.method().as_str(),
        request.uri(),
        headers,
        signing::hex_sha256(body, &mut hash),
        keys,
        region,
        service,
        time,
    )?;
    // The signer's strings become the values without another copy.
    let value = |s: String| HeaderValue::try_from(s).map_err(|e| format!("signing: {e}"));
    const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
    const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
    let amz_date = value(signed.amz_date)?;
    let authorization = value(signed.authorization)?;
    let token = signed.security_token.map(value).transpose()?;
    let headers = request.headers_mut();
    headers.insert(X_AMZ_DATE, amz_date);
    headers.insert(http::header::AUTHORIZATION, authorization);
    if let Some(mut token) = token {
        token.set_sensitive(true);
        headers.insert(X_AMZ_SECURITY_TOKEN, token);
    }
    Ok(signed.signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sigv4::{parse_authorization, verify};

    #[test]
    fn model_ids_are_escaped_like_the_sdks_do() {
        assert_eq!(
            model_path(
                "arn:aws:bedrock:us-east-2:123:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0",
                Operation::Converse
            ),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-2%3A123%3Ainference-profile%2Fus.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
        );
    }

    #[test]
    fn a_signed_request_verifies() {
        let url = format!(
            "http://127.0.0.1:9/{}",
            &model_path("m.x:0", Operation::Converse)[1..]
        );
        let body = br#"{"messages":[]}"#;
        let mut request = Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let now = SystemTime::now();
        sign_bedrock(
            &mut request,
            body,
            Credentials::new("AKID", "secret", None, None, "t"),
            "us-east-2",
            now,
        )
        .unwrap();
        let mut headers = request.headers().clone();
        headers.insert("host", "127.0.0.1:9".parse().unwrap());
        let value = headers["authorization"].to_str().unwrap().to_owned();
        let auth = parse_authorization(&value).unwrap();
        let path = request.uri().path().to_owned();
        assert_eq!(
            verify(&auth, "secret", "POST", &path, &headers, body, now),
            Ok(())
        );
    }
}
