//! The upstream stage's client: one [`Upstream`] per configured endpoint, each
//! with its own connection pool (hyper, rustls, HTTP/2 where the server offers
//! it), its credentials (`aws-config`'s default chain or a profile, signed with
//! `aws-sigv4` for service `bedrock`, or `sagemaker` for SageMaker endpoints; a
//! Bedrock API key or an OpenAI-compatible server's key as a bearer token) and
//! its deadlines. Bodies go out as the bytes the pipeline hands over, so fields
//! the proxy does not know survive untouched.
//!
//! The client is this file; which targets a call tries, with what retries,
//! breakers and hedging, is [`chain`]'s; the breakers themselves are [`breaker`]'s;
//! how an attempt on an `openai` or `sagemaker` target reads its answer, [`chat`]'s.

use aws_config::BehaviorVersion;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use bedrock_wire::client::{model_path, sign_any, Spread};
use bedrock_wire::eventstream::EnvelopeSigner;
use bedrock_wire::operation::Operation;
use bedrock_wire::sagemaker::{self, SageMakerOperation};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

pub mod breaker;
pub mod chain;
pub mod chat;
pub mod credentials;

use crate::config::{HttpProtocol, Timeouts, UpstreamConfig, UpstreamKind};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::support::Memo;
use credentials::CachedCredentials;

/// Why an upstream could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstreams.{0}: the embedded simulator (a simulator without `endpoint`, or `embedded`) runs in demo mode only")]
    NoEmbeddedSimulator(String),
    #[error("upstreams.{0}.bearer_token: not a valid header value")]
    BadBearerToken(String),
    #[error("upstreams.{0}: no AWS credentials provider could be built")]
    NoCredentialsProvider(String),
}

/// The key pair the proxy signs with when calling a simulator.
const SIMULATOR_ACCESS_KEY: &str = "AKIDBEDROCKPROXY";

enum Signer {
    SigV4 {
        credentials: CachedCredentials,
        region: String,
        /// The signing name: `bedrock`, or `sagemaker`.
        service: &'static str,
    },
    Bearer(HeaderValue),
    /// An OpenAI-compatible server without keys (vLLM without `--api-key`).
    Unsigned,
}

/// The key pair the embedded simulator is signed with, as `service`.
fn simulator_signer(region: &str, service: &'static str) -> Signer {
    Signer::SigV4 {
        credentials: CachedCredentials::new(SharedCredentialsProvider::new(Credentials::new(
            SIMULATOR_ACCESS_KEY,
            "bedrock-proxy-simulator",
            None,
            None,
            "bedrock-proxy",
        ))),
        region: region.to_owned(),
        service,
    }
}

/// `aws-config`'s credentials (the default chain, or a profile) for `config`.
async fn aws_signer(config: &UpstreamConfig, service: &'static str) -> Result<Signer, BuildError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(config.region.clone()));
    if let Some(profile) = &config.profile {
        loader = loader.profile_name(profile);
    }
    let sdk = loader.load().await;
    let credentials = sdk
        .credentials_provider()
        .ok_or_else(|| BuildError::NoCredentialsProvider(config.name.clone()))?;
    Ok(Signer::SigV4 {
        credentials: CachedCredentials::new(credentials),
        region: config.region.clone(),
        service,
    })
}

/// One upstream endpoint, ready to call.
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    base: String,
    /// Requests with whole bodies, spread over the configured connections.
    client: Spread<Full<Bytes>>,
    /// For requests whose body is still being written (the bidirectional
    /// stream's upload).
    stream_client: Spread<UploadBody>,
    signer: Signer,
    /// `headers` of the config, ready to send.
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// The `Host` header of a request that surely goes over HTTP/1.1 (see
    /// [`http1_host`]).
    host: Option<HeaderValue>,
    /// The server refused `stream_options` once; streams go without it since.
    refuses_stream_options: AtomicBool,
    /// Request URIs by operation and model ([`Upstream::uri`]).
    uris: Memo<(Operation, Box<str>), Option<Uri>, 16>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A request body written as it goes: the frames of an upload.
pub type UploadBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// How a bidirectional stream's upload frames go upstream: in envelopes
/// signed for the proxy's own credentials (SigV4), or bare (a bearer token).
pub enum UploadSigning {
    SigV4(EnvelopeSigner),
    Bare,
}

impl UploadSigning {
    /// The bytes that carry `message` (a message frame; `None`: the end of
    /// the upload, which only a signed upload writes) upstream.
    pub fn wrap(&mut self, message: Option<Bytes>) -> Result<Option<Bytes>, ProxyError> {
        match self {
            UploadSigning::SigV4(signer) => signer
                .sign(message, SystemTime::now())
                .map(Some)
                .map_err(|e| ProxyError::internal(format!("signing the upload: {e}"))),
            UploadSigning::Bare => Ok(message),
        }
    }
}

/// An upstream's answer: status and headers, the body still to be read.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Incoming,
}

impl Upstream {
    /// Builds an upstream. `embedded` is the URL of the in-process simulator,
    /// used by simulator upstreams without an endpoint.
    pub async fn build(
        config: &UpstreamConfig,
        embedded: Option<&str>,
    ) -> Result<Upstream, BuildError> {
        let base = match (config.endpoint_url(), embedded) {
            (Some(url), _) => url,
            // The embedded simulator serves its OpenAI face under `/v1`.
            (None, Some(url)) if config.kind == UpstreamKind::OpenAi => {
                format!("{}/v1", url.trim_end_matches('/'))
            }
            (None, Some(url)) => url.trim_end_matches('/').to_owned(),
            (None, None) => return Err(BuildError::NoEmbeddedSimulator(config.name.clone())),
        };
        let signer = match config.kind {
            UpstreamKind::Bedrock | UpstreamKind::Simulator if config.bearer_token.is_some() => {
                let token = config.bearer_token.as_deref().unwrap_or_default();
                Signer::Bearer(
                    HeaderValue::from_str(&format!("Bearer {token}"))
                        .map_err(|_| BuildError::BadBearerToken(config.name.clone()))?,
                )
            }
            UpstreamKind::Simulator => simulator_signer(&config.region, "bedrock"),
            UpstreamKind::Bedrock => aws_signer(config, "bedrock").await?,
            UpstreamKind::SageMaker if config.embedded => {
                simulator_signer(&config.region, sagemaker::SIGNING_NAME)
            }
            UpstreamKind::SageMaker => aws_signer(config, sagemaker::SIGNING_NAME).await?,
            UpstreamKind::OpenAi => match &config.api_key {
                Some(key) => Signer::Bearer(
                    HeaderValue::from_str(&format!("Bearer {key}"))
                        .map_err(|_| BuildError::BadBearerToken(config.name.clone()))?,
                ),
                None => Signer::Unsigned,
            },
        };
        // Checked when the config was validated; a header that fails here is left out.
        let extra_headers = config
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        let options = config.connections.client_options(config.timeouts.connect);
        let spread = config.connections.spread();
        let host = http1_host(&base, config.connections.http);
        Ok(Upstream {
            name: Arc::from(config.name.as_str()),
            config: config.clone(),
            base,
            client: Spread::new(&options, spread),
            stream_client: Spread::new(&options, spread),
            signer,
            extra_headers,
            host,
            refuses_stream_options: AtomicBool::new(false),
            uris: Memo::default(),
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn timeouts(&self) -> Timeouts {
        self.config.timeouts
    }

    /// Resolves credentials once, to tell whether the upstream can be called
    /// (and to have them cached for the first request).
    pub async fn check_credentials(&self) -> Result<(), String> {
        match &self.signer {
            Signer::Bearer(_) | Signer::Unsigned => Ok(()),
            Signer::SigV4 { credentials, .. } => credentials.get().await.map(|_| ()),
        }
    }

    /// [`Upstream::url`] parsed, made once per operation and model (a route
    /// sends to one or two models, so every request after the first finds it).
    fn uri(&self, op: Operation, model_id: &str) -> Result<Uri, ProxyError> {
        self.uris
            .find(
                |(o, m)| *o == op && **m == *model_id,
                || {
                    (
                        (op, Box::from(model_id)),
                        self.url(op, model_id).parse().ok(),
                    )
                },
            )
            .ok_or_else(|| {
                ProxyError::validation(format!(
                    "cannot build the upstream request: `{model_id}` makes no valid URL"
                ))
            })
    }

    /// The URL of `op` on `model_id`: Bedrock's path of the operation; an
    /// OpenAI-compatible server's `/chat/completions`; for SageMaker, the
    /// invocation path of the endpoint `model_id` names (`ENDPOINT` or
    /// `ENDPOINT/INFERENCE-COMPONENT`).
    pub fn url(&self, op: Operation, model_id: &str) -> String {
        match self.config.kind {
            UpstreamKind::Bedrock | UpstreamKind::Simulator => {
                format!("{}{}", self.base, model_path(model_id, op))
            }
            UpstreamKind::OpenAi => format!("{}/chat/completions", self.base),
            UpstreamKind::SageMaker => {
                let operation = if op.is_stream() {
                    SageMakerOperation::InvokeEndpointWithResponseStream
                } else {
                    SageMakerOperation::InvokeEndpoint
                };
                let (endpoint, _) = split_endpoint(model_id);
                format!(
                    "{}{}",
                    self.base,
                    sagemaker::endpoint_path(endpoint, operation)
                )
            }
        }
    }

    /// Whether streams may ask this server for usage with `stream_options`.
    pub fn asks_stream_usage(&self) -> bool {
        self.config.include_usage && !self.refuses_stream_options.load(Ordering::Relaxed)
    }

    /// Notes that the server refused `stream_options`: later streams go without.
    pub fn refused_stream_options(&self) {
        if !self.refuses_stream_options.swap(true, Ordering::Relaxed) {
            tracing::info!(upstream = %self.name, "the server refuses stream_options: streams go without it from now on, their usage estimated");
        }
    }

    /// The headers a request of `op` on `model_id` carries besides the
    /// caller's: the content type, what it accepts, the inference component
    /// of a SageMaker endpoint, the configured extra headers.
    fn request_headers(&self, op: Operation, model_id: &str, h: &mut HeaderMap) {
        if !h.contains_key(header::CONTENT_TYPE) {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        match self.config.kind {
            UpstreamKind::Bedrock | UpstreamKind::Simulator => {
                // InvokeModel's `Accept` is an API member (the answer's type): the
                // client's passes through; without one, what the operation answers in.
                h.entry(header::ACCEPT)
                    .or_insert(HeaderValue::from_static(if op.is_stream() {
                        bedrock_wire::eventstream::CONTENT_TYPE
                    } else {
                        "application/json"
                    }));
            }
            UpstreamKind::OpenAi => {
                h.insert(
                    "accept",
                    HeaderValue::from_static(if op.is_stream() {
                        "text/event-stream"
                    } else {
                        "application/json"
                    }),
                );
            }
            UpstreamKind::SageMaker => {
                if op.is_stream() {
                    h.insert(
                        "accept",
                        HeaderValue::from_static(bedrock_wire::eventstream::CONTENT_TYPE),
                    );
                    h.insert(
                        sagemaker::STREAM_ACCEPT_HEADER,
                        HeaderValue::from_static("text/event-stream"),
                    );
                } else {
                    h.insert("accept", HeaderValue::from_static("application/json"));
                }
                if let (_, Some(component)) = split_endpoint(model_id) {
                    if let Ok(v) = HeaderValue::from_str(component) {
                        h.insert(sagemaker::INFERENCE_COMPONENT_HEADER, v);
                    }
                }
            }
        }
        for (name, value) in &self.extra_headers {
            h.insert(name.clone(), value.clone());
        }
        if let Some(host) = &self.host {
            h.entry(header::HOST).or_insert_with(|| host.clone());
        }
    }

    /// Sends one request and waits for the response headers, within the
    /// first-byte timeout and `deadline`.
    pub async fn send(
        &self,
        op: Operation,
        model_id: &str,
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
        first_byte: Duration,
        deadline: Instant,
    ) -> Result<UpstreamResponse, ProxyError> {
        // Set in place: each step of `Request::builder()` moves the whole
        // request head (a `memcpy` call of about 200 bytes per step).
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri(op, model_id)?;
        let h = request.headers_mut();
        // Room for the client's, the operation's and the signature's headers
        // at once, rather than growing (rehashing) the map as they come.
        h.reserve(headers.len() + 8);
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        self.request_headers(op, model_id, h);
        self.authorize(&mut request, &body).await?;

        let first_byte = first_byte.min(deadline.saturating_duration_since(Instant::now()));
        let response = self.client.request(request);
        self.answered(tokio::time::timeout(first_byte, response).await, first_byte)
    }

    /// The upstream that serves a Bedrock Runtime operation needing `path`
    /// (path and query, escaped as the client sent them): sends `method` with
    /// a whole `body` and waits for the response headers, within the first-byte
    /// timeout and `deadline`. Bedrock and simulator upstreams only.
    pub async fn send_path(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
        deadline: Instant,
    ) -> Result<UpstreamResponse, ProxyError> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .body(Full::new(body.clone()))
            .map_err(|e| {
                ProxyError::validation(format!("cannot build the upstream request: {e}"))
            })?;
        let h = request.headers_mut();
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        if !body.is_empty() && !h.contains_key("content-type") {
            h.insert("content-type", HeaderValue::from_static("application/json"));
        }
        h.entry("accept")
            .or_insert(HeaderValue::from_static("application/json"));
        self.authorize(&mut request, &body).await?;
        let first_byte = self
            .config
            .timeouts
            .first_byte
            .min(deadline.saturating_duration_since(Instant::now()));
        let response = self.client.request(request);
        self.answered(tokio::time::timeout(first_byte, response).await, first_byte)
    }

    /// Opens a bidirectional stream on `model_id`: the request goes out with
    /// `upload` as its body (frames written by the caller, wrapped by the
    /// returned [`UploadSigning`]); the future resolves with the response
    /// headers. The upload must be pumped while the future is awaited: Bedrock
    /// may wait for the first events before it answers.
    pub async fn open_stream(
        &self,
        model_id: &str,
        headers: &[(HeaderName, HeaderValue)],
        upload: UploadBody,
    ) -> Result<(UploadSigning, bedrock_wire::client::ResponseFuture), ProxyError> {
        let url = format!(
            "{}{}",
            self.base,
            bedrock_wire::client::model_segment_path(model_id, "invoke-with-bidirectional-stream")
        );
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .body(upload)
            .map_err(|e| {
                ProxyError::validation(format!("cannot build the upstream request: {e}"))
            })?;
        let h = request.headers_mut();
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        h.insert(
            "content-type",
            HeaderValue::from_static(bedrock_wire::eventstream::CONTENT_TYPE),
        );
        h.insert(
            "accept",
            HeaderValue::from_static(bedrock_wire::eventstream::CONTENT_TYPE),
        );
        let signing = match &self.signer {
            Signer::Bearer(value) => {
                request.headers_mut().insert("authorization", value.clone());
                UploadSigning::Bare
            }
            Signer::Unsigned => UploadSigning::Bare,
            Signer::SigV4 {
                credentials,
                region,
                service,
            } => {
                let creds = self.credentials(credentials).await?;
                // The headers are signed over the empty payload, as the AWS
                // SDKs sign an event-stream upload; each frame then carries
                // its own signature, chained from this one.
                let seed = sign_any(
                    &mut request,
                    &[],
                    creds.clone(),
                    region,
                    service,
                    SystemTime::now(),
                )
                .map_err(|e| ProxyError::internal(format!("signing the upstream request: {e}")))?;
                UploadSigning::SigV4(EnvelopeSigner::new(creds, region, service, seed))
            }
        };
        Ok((signing, self.stream_client.request(request)))
    }

    /// The first-byte timeout's outcome of a request, as the caller sees it.
    fn answered(
        &self,
        result: Result<
            Result<axum::http::Response<Incoming>, bedrock_wire::client::ClientError>,
            tokio::time::error::Elapsed,
        >,
        first_byte: Duration,
    ) -> Result<UpstreamResponse, ProxyError> {
        let response = match result {
            Err(_) => {
                return Err(ProxyError::upstream_timeout(format!(
                    "upstream {} sent no response within {first_byte:?}",
                    self.name
                )))
            }
            Ok(Err(e)) if e.is_connect() => {
                return Err(ProxyError::upstream_unreachable(format!(
                    "could not connect to upstream {}: {e}",
                    self.name
                )))
            }
            Ok(Err(e)) => {
                return Err(ProxyError::upstream_unreachable(format!(
                    "upstream {} broke the connection: {e}",
                    self.name
                )))
            }
            Ok(Ok(r)) => r,
        };
        let (parts, body) = response.into_parts();
        Ok(UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// The stream's response, awaited within the first-byte timeout.
    pub async fn stream_response(
        &self,
        response: bedrock_wire::client::ResponseFuture,
    ) -> Result<UpstreamResponse, ProxyError> {
        let first_byte = self.config.timeouts.first_byte;
        self.answered(tokio::time::timeout(first_byte, response).await, first_byte)
    }

    async fn credentials(
        &self,
        credentials: &CachedCredentials,
    ) -> Result<Credentials, ProxyError> {
        credentials.get().await.map_err(|e| ProxyError {
            retryable: false,
            ..ProxyError::new(
                ErrorKind::Unavailable,
                Side::Internal,
                format!(
                    "the proxy has no AWS credentials for upstream {}: {e}",
                    self.name
                ),
            )
        })
    }

    async fn authorize(
        &self,
        request: &mut Request<Full<Bytes>>,
        body: &[u8],
    ) -> Result<(), ProxyError> {
        match &self.signer {
            Signer::Bearer(value) => {
                request.headers_mut().insert("authorization", value.clone());
                Ok(())
            }
            Signer::Unsigned => Ok(()),
            Signer::SigV4 {
                credentials,
                region,
                service,
            } => {
                let creds = self.credentials(credentials).await?;
                sign_any(request, body, creds, region, service, SystemTime::now())
                    .map(|_| ())
                    .map_err(|e| ProxyError::internal(format!("signing the upstream request: {e}")))
            }
        }
    }
}

/// The `Host` header of requests to `base` when they surely go over HTTP/1.1
/// (`http1`, or `auto` on plain `http`, where no ALPN can choose HTTP/2), as
/// the HTTP client would add it: the host, and the port unless it is the
/// scheme's default. Made once per upstream, it spares the client formatting
/// `host:port` into a new string for every request. `None` where HTTP/2 may
/// carry the request (its authority goes as `:authority`, not `Host`).
fn http1_host(base: &str, http: HttpProtocol) -> Option<HeaderValue> {
    let uri: Uri = base.parse().ok()?;
    let secure = uri.scheme_str() == Some("https");
    let http1 = match http {
        HttpProtocol::Http1 => true,
        HttpProtocol::Auto => uri.scheme_str() == Some("http"),
        HttpProtocol::Http2 => false,
    };
    if !http1 {
        return None;
    }
    let host = uri.host()?;
    let value = match uri.port_u16() {
        Some(443) if secure => host.to_owned(),
        Some(80) if !secure => host.to_owned(),
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    HeaderValue::from_str(&value).ok()
}

/// A SageMaker target's model: `ENDPOINT`, or `ENDPOINT/INFERENCE-COMPONENT`
/// for an endpoint that hosts several (endpoint names have no `/`).
pub fn split_endpoint(model: &str) -> (&str, Option<&str>) {
    match model.split_once('/') {
        Some((endpoint, component)) => (endpoint, Some(component)),
        None => (model, None),
    }
}

/// Reads a whole (non-streamed) upstream body, within `deadline` and `limit`.
pub async fn read_body(
    body: Incoming,
    limit: usize,
    deadline: Instant,
    upstream: &str,
) -> Result<Bytes, ProxyError> {
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout_at(deadline, limited.collect()).await {
        Err(_) => Err(ProxyError::upstream_timeout(format!(
            "upstream {upstream} did not finish its answer before the deadline"
        ))),
        Ok(Err(e)) => Err(ProxyError::upstream_unreachable(format!(
            "upstream {upstream} broke off its answer: {e}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Response headers passed from the upstream to the client.
pub fn passed_headers(upstream: &HeaderMap) -> HeaderMap {
    // Sized for what the proxy adds to an answer (its `x-proxy-*`, rate-limit
    // and request-id headers) as well: the map is not grown per response.
    let mut out = HeaderMap::with_capacity(32);
    for (name, value) in upstream {
        let n = name.as_str();
        if n == "content-type" || n == "x-amzn-requestid" || n.starts_with("x-amzn-bedrock-") {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The built upstreams, by name.
#[derive(Debug, Default)]
pub struct Upstreams {
    by_name: BTreeMap<String, Arc<Upstream>>,
}

impl Upstreams {
    /// Builds every configured upstream, reusing `previous` ones whose config is
    /// unchanged (their pools and credential caches survive a reload).
    pub async fn build(
        configs: &BTreeMap<String, UpstreamConfig>,
        embedded: Option<&str>,
        previous: Option<&Upstreams>,
    ) -> Result<Upstreams, BuildError> {
        let mut by_name = BTreeMap::new();
        for (name, config) in configs {
            let reused = previous
                .and_then(|p| p.by_name.get(name))
                .filter(|u| &u.config == config)
                .cloned();
            let upstream = match reused {
                Some(u) => u,
                None => Arc::new(Upstream::build(config, embedded).await?),
            };
            by_name.insert(name.clone(), upstream);
        }
        Ok(Upstreams { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests;
