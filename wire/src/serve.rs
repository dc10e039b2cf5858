//! Serving a router on a listener: HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN
//! over TLS) on one port, optional TLS, a deadline on every phase of a
//! connection that has no request in flight, a cap on open connections, and a
//! graceful shutdown that stops accepting, lets open requests finish, and gives
//! up after a drain deadline.
//!
//! A connection's phases, each bounded ([`ServeOptions`]):
//! - accepted, nothing sent yet: `first_byte_timeout`;
//! - bytes arrived, no request yet (TLS handshake, HTTP/1.1 headers, an HTTP/2
//!   preface without a request): `header_read_timeout` from the first byte;
//! - between requests (keep-alive): `idle_timeout` (HTTP/2 pings do not count as
//!   requests; `h2_keep_alive_interval` pings the client and closes a connection
//!   whose pong does not come back within `h2_keep_alive_timeout`).
//!
//! While a request is in flight the application owns the deadlines (the proxy
//! bounds body reads itself, and answers in the API's shape). One watchdog per
//! connection enforces the rest: when its deadline passes with no request in
//! flight, the connection is shut down gracefully (HTTP/2 GOAWAY) and dropped
//! if that does not finish promptly.
//!
//! Past `max_connections`, a plain-HTTP connection gets a fixed 503 in
//! Bedrock's error shape and is closed; a TLS one is closed. Accept errors
//! (out of file descriptors) back off and are reported at a bounded rate.
//!
//! Shutdown: the listener closes; HTTP/2 connections get GOAWAY at once;
//! HTTP/1.1 connections stay open while any request is in flight on the server
//! (so a request arriving on a kept-alive connection gets the application's
//! answer, a 503 in the proxy, rather than a closed socket), and close once the
//! server has nothing in flight; whatever is left at the drain deadline is cut.
//!
//! A handler can ask for its connection to be cut without a response by putting
//! [`ResetConnection`] in the response's extensions (the simulator's
//! `connection-reset` fault).

use axum::body::Body;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::workers::Workers;

/// Marks a response whose connection must be dropped instead of answered.
#[derive(Debug, Clone, Copy)]
pub struct ResetConnection;

#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset on request")
    }
}

impl std::error::Error for Reset {}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it, or the protocol ended it (`Connection: close`).
    Normal,
    /// Nothing arrived within `first_byte_timeout` of the accept.
    FirstByteTimeout,
    /// Bytes arrived but no request followed within `header_read_timeout`.
    HeaderTimeout,
    /// No request within `idle_timeout` of the last one.
    IdleTimeout,
    /// Still open at the drain deadline.
    DrainDeadline,
}

impl Closed {
    /// A metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Closed::Normal => "normal",
            Closed::FirstByteTimeout => "first_byte_timeout",
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::DrainDeadline => "drain_deadline",
        }
    }
}

/// A failed `accept`, by kind (a closed set, for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// The process (EMFILE) or the system (ENFILE) is out of file descriptors.
    FileDescriptors,
    /// The kernel is out of memory or buffers.
    Memory,
    /// The connection was reset or aborted before it was accepted.
    Aborted,
    Other,
}

impl AcceptError {
    fn of(e: &io::Error) -> AcceptError {
        match e.raw_os_error() {
            // EMFILE, ENFILE (Linux and the BSDs agree on these numbers).
            Some(23 | 24) => AcceptError::FileDescriptors,
            // ENOBUFS (Linux 105, BSD 55), ENOMEM.
            Some(12 | 55 | 105) => AcceptError::Memory,
            _ => match e.kind() {
                io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => {
                    AcceptError::Aborted
                }
                io::ErrorKind::OutOfMemory => AcceptError::Memory,
                _ => AcceptError::Other,
            },
        }
    }

    /// A metrics label.
    pub fn label(self) -> &'static str {
        match self {
            AcceptError::FileDescriptors => "file_descriptors",
            AcceptError::Memory => "memory",
            AcceptError::Aborted => "aborted",
            AcceptError::Other => "other",
        }
    }
}

/// What the accept loop reports, for the application's metrics. Every method
/// does nothing by default.
pub trait ServeEvents: Send + Sync + 'static {
    /// A connection was accepted and is being served.
    fn connection_opened(&self) {}
    /// A served connection ended.
    fn connection_closed(&self, _why: Closed) {}
    /// A connection was turned away at `max_connections`.
    fn connection_refused(&self) {}
    /// `accept` failed (the loop backs off and carries on).
    fn accept_failed(&self, _kind: AcceptError) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl ServeEvents for NoEvents {}

/// Server settings.
#[derive(Clone)]
pub struct ServeOptions {
    /// Time from the accept to the connection's first byte.
    pub first_byte_timeout: Duration,
    /// Time from a connection's first byte (or the first byte after an idle
    /// spell) to a complete request: TLS handshake and request headers.
    pub header_read_timeout: Duration,
    /// Time a connection may sit between requests.
    pub idle_timeout: Duration,
    /// HTTP/2: ping the client this often (`None`: never).
    pub h2_keep_alive_interval: Option<Duration>,
    /// HTTP/2: close a connection whose ping is not answered within this.
    pub h2_keep_alive_timeout: Duration,
    /// Largest request head (request line or pseudo-headers, and headers);
    /// larger gets 431 on HTTP/1.1 and HTTP/2 alike.
    pub max_header_bytes: usize,
    /// Open connections beyond this are refused (0: no cap).
    pub max_connections: usize,
    /// Time open connections get to finish after shutdown starts.
    pub drain: Duration,
    /// Serve HTTPS with this certificate; plain HTTP when `None`.
    pub tls: Option<Arc<ServerConfig>>,
    /// Where connection events go (metrics).
    pub events: Arc<dyn ServeEvents>,
    /// Runtimes to serve connections on, each on the next in turn (`None`:
    /// the runtime `serve` runs on).
    pub workers: Option<Arc<Workers>>,
}

impl ServeOptions {
    /// The shortest of the deadlines a connection with nothing in flight can
    /// be given: none starts closer than this to the moment it starts.
    fn shortest_timeout(&self) -> Duration {
        self.first_byte_timeout
            .min(self.header_read_timeout)
            .min(self.idle_timeout)
            .max(Duration::from_millis(1))
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("h2_keep_alive_interval", &self.h2_keep_alive_interval)
            .field("h2_keep_alive_timeout", &self.h2_keep_alive_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_connections", &self.max_connections)
            .field("drain", &self.drain)
            .field("tls", &self.tls.is_some())
            .field("workers", &self.workers.as_ref().map(|w| w.len()))
            .finish_non_exhaustive()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            first_byte_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            h2_keep_alive_interval: Some(Duration::from_secs(30)),
            h2_keep_alive_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            drain: Duration::from_secs(30),
            tls: None,
            events: Arc::new(NoEvents),
            workers: None,
        }
    }
}

/// Loads a PEM certificate chain and private key into a TLS server config that
/// offers HTTP/2 and HTTP/1.1 by ALPN.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading certificates from {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading the private key from {}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not form a valid pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The fixed answer of a connection over the cap: Bedrock's error shape, so an
/// SDK reports (and retries) a ServiceUnavailableException.
pub fn over_capacity_response() -> Bytes {
    let body = crate::error::error_body(
        "The server is at its connection limit; retry shortly or against another replica.",
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nx-amzn-errortype: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        crate::error::ErrorType::ServiceUnavailable.header_value(),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// What the server as a whole is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Shutdown started: no new connections; HTTP/2 connections get GOAWAY.
    Draining,
    /// Shutdown, and nothing is in flight: every connection closes.
    Closing,
}

/// Requests in flight on the whole server, and, once it drains, a wake-up
/// when that reaches 0 (before, nobody waits for it: the last request out
/// does not take `idle`'s lock).
#[derive(Default)]
struct ServerLoad {
    active: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

/// What a connection's watchdog reads: requests in flight, since when it has
/// been idle, when bytes arrived since then. Times are milliseconds after the
/// connection's `base`; `first_read_ms` holds that plus one (0: none yet).
///
/// Nothing here wakes the watchdog: it checks on a timer that never fires
/// later than a deadline could pass ([`watch_over`]), so a request costs the
/// connection no wake-up and no timer of its own.
struct Activity {
    base: Instant,
    active: AtomicUsize,
    served: AtomicU64,
    idle_since_ms: AtomicU64,
    first_read_ms: AtomicU64,
    h2: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            first_read_ms: AtomicU64::new(0),
            h2: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// Bytes arrived; the first since the connection went idle starts the
    /// header deadline.
    fn read(&self) {
        if self.first_read_ms.load(Ordering::Relaxed) == 0 {
            let _ = self.first_read_ms.compare_exchange(
                0,
                self.now_ms() + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// When this connection must be closed unless a request starts, and why;
    /// `None` while a request is in flight.
    fn deadline(&self, o: &ServeOptions) -> Option<(Instant, Closed)> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_since = self.idle_since_ms.load(Ordering::Acquire);
        let first_read = self.first_read_ms.load(Ordering::Acquire);
        let fresh = self.served.load(Ordering::Acquire) == 0;
        let h2 = self.h2.load(Ordering::Relaxed);
        Some(match first_read.checked_sub(1) {
            // HTTP/2 pings and window updates on a connection that has served
            // requests are not a request starting.
            Some(read) if fresh || !h2 => {
                (self.at(read) + o.header_read_timeout, Closed::HeaderTimeout)
            }
            _ if fresh => (
                self.at(idle_since) + o.first_byte_timeout,
                Closed::FirstByteTimeout,
            ),
            _ => (self.at(idle_since) + o.idle_timeout, Closed::IdleTimeout),
        })
    }
}

/// Counts a request in flight on its connection and on the server, from the
/// moment the service is called until its response body is done (or dropped).
struct InFlight {
    conn: Arc<Activity>,
    server: Arc<ServerLoad>,
}

impl InFlight {
    fn start(conn: &Arc<Activity>, server: &Arc<ServerLoad>) -> InFlight {
        conn.active.fetch_add(1, Ordering::AcqRel);
        conn.served.fetch_add(1, Ordering::AcqRel);
        server.active.fetch_add(1, Ordering::AcqRel);
        InFlight {
            conn: conn.clone(),
            server: server.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let c = &self.conn;
        if c.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            c.first_read_ms.store(0, Ordering::Release);
            c.idle_since_ms.store(c.now_ms(), Ordering::Release);
        }
        // SeqCst here and in `serve`: either this sees `draining`, or the
        // drain loop sees this request gone.
        if self.server.active.fetch_sub(1, Ordering::SeqCst) == 1
            && self.server.draining.load(Ordering::SeqCst)
        {
            self.server.idle.notify_one();
        }
    }
}

/// A response body that keeps its request counted until it is done, and (on
/// HTTP/2) the request body it answered alive until then: dropping an unread
/// request body before the response is sent resets the stream, and the client
/// would never see an early answer (413, 400) that HTTP/1.1 delivers.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
    _request_body: Option<Arc<Mutex<Option<Incoming>>>>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP/2 request body that, when the handler drops it, hands itself to the
/// response ([`Tracked`]) instead of going away.
struct Retained {
    inner: Option<Incoming>,
    slot: Arc<Mutex<Option<Incoming>>>,
}

impl Drop for Retained {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take() {
            if let Ok(mut slot) = self.slot.lock() {
                *slot = Some(body);
            }
        }
    }
}

impl http_body::Body for Retained {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map(http_body::Body::size_hint)
            .unwrap_or_default()
    }
}

/// The accepted socket, noting when bytes arrive (and whether the first ones
/// are an HTTP/2 preface) for the watchdog. Dropped with bytes the client is
/// still sending, it lingers ([`linger`]).
struct Watched {
    /// `None` only once dropped.
    inner: Option<TcpStream>,
    activity: Arc<Activity>,
    sniffed: bool,
}

impl Watched {
    fn new(stream: TcpStream, activity: Arc<Activity>) -> Watched {
        Watched {
            inner: Some(stream),
            activity,
            sniffed: false,
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.inner.as_mut() {
            Some(stream) => Ok(Pin::new(stream)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.stream()?.poll_read(cx, buf);
        let got = &buf.filled()[before..];
        if !got.is_empty() {
            if !self.sniffed {
                self.sniffed = true;
                if got.starts_with(b"PRI ") {
                    self.activity.h2.store(true, Ordering::Relaxed);
                }
            }
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream()?.poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(TcpStream::is_write_vectored)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        // Without a syscall unless the socket was last seen readable.
        let mut probe = [0u8; 1];
        if matches!(stream.try_read(&mut probe), Ok(n) if n > 0) {
            linger(stream);
        }
    }
}

/// How long a closing connection keeps reading what its client still sends,
/// in all and without a byte.
const LINGER_TIME: Duration = Duration::from_secs(10);
const LINGER_IDLE: Duration = Duration::from_secs(2);

/// Connections lingering at once, process-wide; past this, they close at once.
const MAX_LINGERING: usize = 256;
static LINGERING: Semaphore = Semaphore::const_new(MAX_LINGERING);

/// Closes a connection whose client is still sending (an answer that came
/// before the whole request body, such as a 400 for a body over the size
/// limit, or a 408): its write side at once, so the client sees the answer
/// end, and the socket after reading and dropping what the client sends, for
/// at most [`LINGER_TIME`] and [`LINGER_IDLE`] without a byte. Closed with
/// unread bytes, the socket would answer with a reset, and a client still
/// writing its body (most do, before they read) gets a broken pipe, and with
/// it loses the answer waiting in its receive buffer. nginx's
/// `lingering_close`, for the same reason.
fn linger(mut stream: TcpStream) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Ok(slot) = LINGERING.try_acquire() else {
        return;
    };
    // Dropped unrun (its runtime is shutting down), the task gives its slot back too.
    runtime.spawn(async move {
        let _slot = slot;
        let _ = stream.shutdown().await;
        discard_until_closed(&mut stream, LINGER_TIME, LINGER_IDLE).await;
    });
}

/// Reads and drops what the client sends until it closes, for at most `total`
/// and `idle` without a byte: a close with unread bytes would reset the
/// connection before the client has read the answer sent before it.
async fn discard_until_closed(stream: &mut TcpStream, total: Duration, idle: Duration) {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + total;
    let mut sink = [0u8; 16 * 1024];
    loop {
        let wait = deadline.min(Instant::now() + idle);
        match tokio::time::timeout_at(wait, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
}

/// The size of a request head as HTTP/2 counts it (RFC 9113 §6.5.2: each field
/// is its name, its value and 32 bytes), pseudo-headers included.
fn head_size<B>(request: &hyper::Request<B>) -> usize {
    let fields: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum();
    let uri = request.uri();
    fields
        + request.method().as_str().len()
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + 4 * 32
}

fn header_too_large() -> axum::response::Response {
    let mut response = axum::response::Response::new(Body::empty());
    *response.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    response
}

/// Accept errors: backed off exponentially and logged at most once every 10 s.
struct AcceptBackoff {
    delay: Duration,
    failures_since_log: u64,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        AcceptBackoff {
            delay: Self::FIRST,
            failures_since_log: 0,
            last_log: None,
        }
    }

    fn succeeded(&mut self) {
        self.delay = Self::FIRST;
    }

    /// Records a failure; returns how long to wait before accepting again.
    fn failed(&mut self, e: &io::Error, kind: AcceptError) -> Duration {
        self.failures_since_log += 1;
        if self.last_log.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
            tracing::warn!(
                error = %e,
                kind = kind.label(),
                failures = self.failures_since_log,
                "accept failed; backing off (logged at most every 10s)"
            );
            self.last_log = Some(Instant::now());
            self.failures_since_log = 0;
        }
        let wait = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        wait
    }
}

/// Refusals still writing their 503: beyond this many, sockets over the cap
/// are closed without one, so a flood cannot pile up descriptors.
const MAX_LINGERING_REFUSALS: usize = 256;

/// Answers a connection over the cap with the fixed 503 (plain HTTP) and
/// closes it, reading what the client sent for a moment first so the close
/// does not reset the connection before the answer is read.
async fn refuse(mut stream: TcpStream, response: Bytes) {
    let written = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        let moment = Duration::from_millis(500);
        discard_until_closed(&mut stream, moment, moment).await;
    }
}

/// What [`serve`] answers requests with: an axum `Router`, or a service in
/// front of one (the proxy's load-shedding guard), cloned per request.
pub trait App:
    tower::Service<
        axum::extract::Request,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> App for T where
    T: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `router` until `shutdown` resolves, then drains open connections for
/// at most `options.drain`.
pub async fn serve(
    listener: TcpListener,
    router: impl App,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog bounds the wait for headers (and keep-alive idleness,
        // which hyper's own header timer would cut short).
        .header_read_timeout(None)
        .max_buf_size(options.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.h2_keep_alive_interval)
        .keep_alive_timeout(options.h2_keep_alive_timeout)
        // Room above the limit, so that a head over it reaches the check below
        // and gets a 431 response instead of a reset stream.
        .max_header_list_size(
            u32::try_from(options.max_header_bytes.saturating_mul(4)).unwrap_or(u32::MAX),
        );
    let options = Arc::new(options);
    let cap =
        (options.max_connections > 0).then(|| Arc::new(Semaphore::new(options.max_connections)));
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
    let refusal = over_capacity_response();
    let load = Arc::new(ServerLoad::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let mut connections = JoinSet::new();
    let mut backoff = AcceptBackoff::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    backoff.succeeded();
                    stream
                }
                Err(e) => {
                    let kind = AcceptError::of(&e);
                    options.events.accept_failed(kind);
                    let wait = backoff.failed(&e, kind);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let permit = match &cap {
            None => None,
            Some(cap) => match cap.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    options.events.connection_refused();
                    if options.tls.is_none() {
                        if let Ok(slot) = lingering.clone().try_acquire_owned() {
                            let response = refusal.clone();
                            tokio::spawn(async move {
                                refuse(stream, response).await;
                                drop(slot);
                            });
                            continue;
                        }
                        let _ = stream.try_write(&refusal);
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let served = {
            let (router, builder, options) = (router.clone(), builder.clone(), options.clone());
            let (load, phase) = (load.clone(), phase_rx.clone());
            move |stream| connection(stream, router, builder, options, load, phase, permit)
        };
        options.events.connection_opened();
        match &options.workers {
            None => {
                connections.spawn(served(stream));
            }
            // The socket moves to the worker's own I/O driver.
            Some(workers) => match stream.into_std() {
                Ok(stream) => {
                    let events = options.events.clone();
                    connections.spawn_on(
                        async move {
                            match TcpStream::from_std(stream) {
                                Ok(stream) => served(stream).await,
                                Err(e) => {
                                    tracing::warn!(error = %e, "a worker could not take a connection");
                                    events.connection_closed(Closed::Normal);
                                }
                            }
                        },
                        workers.next(),
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not hand a connection to a worker");
                    options.events.connection_closed(Closed::Normal);
                }
            },
        }
    }
    drop(listener);
    load.draining.store(true, Ordering::SeqCst);
    let _ = phase_tx.send(Phase::Draining);
    let deadline = tokio::time::sleep(options.drain);
    tokio::pin!(deadline);
    loop {
        if load.active.load(Ordering::SeqCst) == 0 {
            let _ = phase_tx.send(Phase::Closing);
        }
        tokio::select! {
            joined = connections.join_next() => {
                if joined.is_none() {
                    tracing::debug!("all connections drained");
                    return;
                }
            }
            () = load.idle.notified() => {}
            () = &mut deadline => break,
        }
    }
    let left = connections.len();
    tracing::warn!(
        connections = left,
        "drain deadline passed; closing open connections"
    );
    for _ in 0..left {
        options.events.connection_closed(Closed::DrainDeadline);
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// How long a connection told to close gets to do so gracefully (HTTP/2
/// GOAWAY) once nothing is in flight on it, before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves one connection under its watchdog; reports how it ended (unless it is
/// aborted at the drain deadline, which the accept loop reports).
async fn connection(
    stream: TcpStream,
    router: impl App,
    builder: auto::Builder<TokioExecutor>,
    options: Arc<ServeOptions>,
    load: Arc<ServerLoad>,
    phase: watch::Receiver<Phase>,
    _permit: Option<OwnedSemaphorePermit>,
) {
    let activity = Arc::new(Activity::new());
    let close = Arc::new(Notify::new());
    let io = Watched::new(stream, activity.clone());
    let service = {
        let activity = activity.clone();
        let max_header_bytes = options.max_header_bytes;
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let router = router.clone();
            let in_flight = InFlight::start(&activity, &load);
            handle(router, req, in_flight, max_header_bytes)
        })
    };
    let tls = options.tls.clone().map(TlsAcceptor::from);
    // Asks hyper to finish gracefully when the watchdog says so.
    macro_rules! drive {
        ($connection:expr, $close:expr) => {{
            let connection = $connection;
            tokio::pin!(connection);
            let closed = woken_only($close.notified());
            tokio::pin!(closed);
            tokio::select! {
                biased;
                result = connection.as_mut() => result,
                () = closed => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }};
    }
    let serving = {
        let activity = activity.clone();
        let close = close.clone();
        async move {
            match tls {
                None => drive!(builder.serve_connection(TokioIo::new(io), service), close),
                Some(acceptor) => {
                    let tls_stream = tokio::select! {
                        accepted = acceptor.accept(io) => match accepted {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return Ok(());
                            }
                        },
                        () = close.notified() => return Ok(()),
                    };
                    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    activity.h2.store(h2, Ordering::Relaxed);
                    // ALPN said which protocol; hyper need not read a preface to know.
                    let builder = if h2 { builder.http2_only() } else { builder };
                    drive!(
                        builder.serve_connection(TokioIo::new(tls_stream), service),
                        close
                    )
                }
            }
        }
    };
    let why = watch_over(serving, &activity, &close, &options, phase).await;
    options.events.connection_closed(why);
}

/// One request: a head over the limit gets 431; otherwise the router answers,
/// and the response body carries the request's in-flight count (and, on
/// HTTP/2, its unread body) until it is sent.
async fn handle(
    router: impl App,
    req: hyper::Request<Incoming>,
    in_flight: InFlight,
    max_header_bytes: usize,
) -> Result<hyper::Response<Body>, Reset> {
    let tracked = |response: axum::response::Response, slot| {
        let (parts, body) = response.into_parts();
        hyper::Response::from_parts(
            parts,
            Body::new(Tracked {
                inner: body,
                _in_flight: in_flight,
                _request_body: slot,
            }),
        )
    };
    if head_size(&req) > max_header_bytes {
        return Ok(tracked(header_too_large(), None));
    }
    let h2 = req.version() == http::Version::HTTP_2;
    let (parts, body) = req.into_parts();
    let (body, slot) = if h2 {
        let slot = Arc::new(Mutex::new(None));
        let retained = Retained {
            inner: Some(body),
            slot: slot.clone(),
        };
        (Body::new(retained), Some(slot))
    } else {
        (Body::new(body), None)
    };
    let request = axum::extract::Request::from_parts(parts, body);
    let response = match router.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if response.extensions().get::<ResetConnection>().is_some() {
        return Err(Reset);
    }
    Ok(tracked(response, slot))
}

/// Drives a connection until it ends, asking it to close (`close`) when its
/// watchdog deadline passes with nothing in flight, or when the server's phase
/// says so, and dropping it if it has not closed [`CLOSE_GRACE`] after that
/// with nothing in flight.
///
/// The watchdog shares the connection's task, so it must cost nothing on the
/// task's many wakes while requests come and go:
/// - its timer is reset only when it fires, never per request. It is set to
///   the connection's deadline or one [`ServeOptions::shortest_timeout`]
///   from now, whichever is sooner: every deadline a later request could
///   start (an idle spell, the first byte of a request) lies at least that far
///   after the moment it starts, so the timer never fires late, and on firing
///   early it looks again;
/// - the phase is polled only once it has changed ([`woken_only`]), not on
///   every wake (polling a `watch` takes the lock it shares with every
///   connection).
async fn watch_over<F, E>(
    serving: F,
    activity: &Activity,
    close: &Notify,
    options: &ServeOptions,
    mut phase: watch::Receiver<Phase>,
) -> Closed
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    // Resolves when the phase says this connection is to close: at once on
    // HTTP/2 (GOAWAY, its streams finish), at `Closing` on HTTP/1.1, which
    // stays to answer what arrives while others finish.
    let told_to_close = woken_only(async move {
        loop {
            if phase.changed().await.is_err() {
                return;
            }
            match *phase.borrow_and_update() {
                Phase::Serving => {}
                Phase::Draining if !activity.h2.load(Ordering::Relaxed) => {}
                Phase::Draining | Phase::Closing => return,
            }
        }
    });
    let check = |now: Instant| match activity.deadline(options) {
        Some((at, why)) if at <= now => Err(why),
        Some((at, _)) => Ok(at.min(now + options.shortest_timeout())),
        None => Ok(now + options.shortest_timeout()),
    };
    tokio::pin!(serving, told_to_close);
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut closing: Option<Closed> = None;
    // Asks the connection to close, and gives it `CLOSE_GRACE` to.
    let ask = |timer: Pin<&mut tokio::time::Sleep>| {
        timer.reset(Instant::now() + CLOSE_GRACE);
        close.notify_one();
    };
    loop {
        tokio::select! {
            biased;
            result = &mut serving => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return closing.unwrap_or(Closed::Normal);
            }
            () = &mut told_to_close, if closing.is_none() => {
                closing = Some(Closed::Normal);
                ask(timer.as_mut());
            }
            () = timer.as_mut() => {
                let now = Instant::now();
                match closing {
                    Some(why) if activity.active.load(Ordering::Acquire) == 0 => return why,
                    Some(_) => timer.as_mut().reset(now + CLOSE_GRACE),
                    None => match check(now) {
                        Ok(next) => timer.as_mut().reset(next),
                        Err(why) => {
                            closing = Some(why);
                            ask(timer.as_mut());
                        }
                    },
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A future polled only once its own waker has fired (and on the first
    /// poll), however often the task holding it is woken for other reasons:
    /// for a future that takes a lock on every poll (tokio's `Notify` and what
    /// is built on it: `watch`, cancellation tokens) sharing a busy task.
    pub struct WokenOnly<F> {
        #[pin]
        inner: F,
        woken: Arc<Woken>,
    }
}

/// Whether a [`WokenOnly`]'s future has been woken since it was last polled,
/// and the task to wake when it is.
struct Woken {
    flag: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Wraps `future` in a [`WokenOnly`].
pub fn woken_only<F: Future>(future: F) -> WokenOnly<F> {
    WokenOnly {
        inner: future,
        woken: Arc::new(Woken {
            flag: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }),
    }
}

impl<F: Future> Future for WokenOnly<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.woken.task.register(cx.waker());
        if !this.woken.flag.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = std::task::Waker::from(this.woken.clone());
        this.inner.poll(&mut Context::from_waker(&waker))
    }
}

/// Resolves on Ctrl-C or SIGTERM: the signal both binaries stop on.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
