//! Starting and stopping the proxy: bind the API and admin listeners, build the
//! runtime, check upstream credentials in the background, serve until told to
//! stop, then stop accepting and let in-flight requests (streams included)
//! finish within `limits.shutdown_grace`.
//!
//! Shutdown, in order: `/readyz` turns 503 and new requests get
//! ServiceUnavailableException (the ingress guard reads the flag); the API
//! listener closes and drains; at the grace deadline what is still in flight is
//! cut ([`crate::state::Shared::cut`]: a stream ends with an exception frame or
//! error event, a request still waiting gets a 503), and the connections get
//! [`CUT_FLUSH`] to send that; only then do the admin listener (so probes see
//! the 503 throughout) and the background tasks stop.
//!
//! Every task started here is owned by [`ProxyHandle`] and awaited on shutdown.

use bedrock_sim::SimHandle;
use bedrock_wire::serve::{serve, AcceptError, Closed, ServeEvents, ServeOptions};
use bedrock_wire::workers::Workers;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::{AuthMode, Config};
use crate::ingress::app;
use crate::metrics;
use crate::runtime::{Runtime, RuntimeError};
use crate::state::{AppState, Readiness};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("server.auth = \"none\" is only allowed on a loopback address, not {0}; configure [[keys]] to listen there")]
    OpenWithoutAuth(SocketAddr),
    #[error("server.tls: {0}")]
    Tls(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("starting {count} connection runtimes (server.workers): {error}")]
    Workers { count: usize, error: std::io::Error },
    #[error("binding the {what} listener {addr}: {error}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// Listener overrides and the file to reload from.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Overrides `server.listen` (port 0 picks a free port).
    pub listen: Option<SocketAddr>,
    /// Overrides `admin.listen`.
    pub admin_listen: Option<SocketAddr>,
    /// The config file, when there is one (reloads read it again).
    pub config_path: Option<PathBuf>,
}

/// A running proxy.
pub struct ProxyHandle {
    pub api_addr: SocketAddr,
    /// Whether the API port serves HTTPS.
    pub tls: bool,
    pub admin_addr: SocketAddr,
    pub state: AppState,
    /// Cancelled to ask for a shutdown (signal handlers, [`ProxyHandle::wait`]).
    stop: CancellationToken,
    /// Closes the API listener and starts its drain.
    api_stop: CancellationToken,
    api: Option<JoinHandle<()>>,
    /// Stops the admin listener and the background tasks, after the API drain.
    background: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    grace: Duration,
    simulator: Option<SimHandle>,
    /// The connection runtimes; they stop when this, the last owner, drops
    /// after the background tasks, so nothing a request started outlives them.
    workers: Option<Arc<Workers>>,
}

/// Time connections get, after in-flight work is cut at the grace deadline, to
/// send the exception frames and 503s that say so.
const CUT_FLUSH: Duration = Duration::from_secs(2);

/// Connection events of the API listener, as metrics.
struct ApiEvents;

impl ServeEvents for ApiEvents {
    fn connection_opened(&self) {
        metrics::connection_opened();
    }

    fn connection_closed(&self, why: Closed) {
        metrics::connection_closed(why.label());
    }

    fn connection_refused(&self) {
        metrics::connection_refused();
    }

    fn accept_failed(&self, kind: AcceptError) {
        metrics::accept_failed(kind.label());
    }
}

impl ProxyHandle {
    /// `http://ADDR` (or `https://`) of the API port.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.api_addr)
    }

    /// `http://ADDR` of the admin port.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// The embedded simulator, in demo mode.
    pub fn simulator(&self) -> Option<&SimHandle> {
        self.simulator.as_ref()
    }

    /// A token that stops the proxy when cancelled (signal handlers use it).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops accepting, lets in-flight requests finish within the grace period
    /// (cutting what is left at its end), and waits for every task.
    pub async fn shutdown(mut self) {
        self.state.begin_shutdown();
        self.stop.cancel();
        self.api_stop.cancel();
        let cut = self.state.cut.clone();
        let grace = self.grace;
        let cutter = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            tracing::warn!("shutdown grace passed; cutting the requests still in flight");
            cut.cancel();
        });
        if let Some(api) = self.api.take() {
            let _ = api.await;
        }
        cutter.abort();
        // The writes the last requests left behind (cache stores, limits
        // settlements), bounded: each is bounded by the Redis timeout.
        if let Some(redis) = &self.state.redis {
            redis.finish_detached(CUT_FLUSH).await;
        }
        self.background.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if let Some(sim) = self.simulator.take() {
            sim.shutdown().await;
        }
        self.workers.take();
    }

    /// Runs until the stop token is cancelled, then shuts down.
    pub async fn wait(self) {
        self.stop.cancelled().await;
        self.shutdown().await;
    }
}

/// Starts the proxy with `config`. `simulator` is the embedded simulator of demo
/// mode, which simulator upstreams without an endpoint call.
pub async fn start(
    config: Config,
    simulator: Option<SimHandle>,
    options: StartOptions,
) -> Result<ProxyHandle, StartError> {
    let embedded_url = simulator.as_ref().map(SimHandle::url);
    let api_addr = options.listen.unwrap_or(config.server.listen);
    let admin_addr = options.admin_listen.unwrap_or(config.admin.listen);
    if config.server.auth == AuthMode::None && !api_addr.ip().is_loopback() {
        return Err(StartError::OpenWithoutAuth(api_addr));
    }
    let grace = config.limits.shutdown_grace;
    let admin_options = ServeOptions {
        header_read_timeout: config.limits.header_read_timeout,
        drain: grace,
        tls: None,
        ..ServeOptions::default()
    };
    let tls = match &config.server.tls {
        Some(files) => {
            Some(bedrock_wire::serve::load_tls(&files.cert, &files.key).map_err(StartError::Tls)?)
        }
        None => None,
    };
    let workers = match config.server.workers {
        0 => None,
        count => Some(Arc::new(
            Workers::start(count, "bedrock-worker")
                .map_err(|error| StartError::Workers { count, error })?,
        )),
    };
    let c = &config.server.connections;
    let api_options = ServeOptions {
        first_byte_timeout: c.first_byte_timeout,
        header_read_timeout: config.limits.header_read_timeout,
        idle_timeout: c.idle_timeout,
        h2_keep_alive_interval: c.h2_keep_alive_interval,
        h2_keep_alive_timeout: c.h2_keep_alive_timeout,
        max_header_bytes: c.max_header_bytes,
        max_connections: c.max_connections,
        drain: grace + CUT_FLUSH,
        tls: tls.clone(),
        events: Arc::new(ApiEvents),
        workers: workers.clone(),
    };
    let admin_token = config.admin.token_sha256;
    let config_connections = config.server.connections.max_connections;
    let runtime = Runtime::build(config, embedded_url.as_deref(), None).await?;
    let bind = |what: &'static str, addr: SocketAddr| async move {
        let listener = TcpListener::bind(addr)
            .await
            .and_then(|l| Ok((l.local_addr()?, l)))
            .map_err(|error| StartError::Bind { what, addr, error })?;
        Ok::<_, StartError>(listener)
    };
    raise_fd_limit(config_connections);
    let (api_addr, api_listener) = bind("API", api_addr).await?;
    let (admin_addr, admin_listener) = bind("admin", admin_addr).await?;

    let stop = CancellationToken::new();
    let api_stop = CancellationToken::new();
    let background = CancellationToken::new();
    let state = AppState::new(
        runtime,
        simulator.as_ref().map(|s| s.sim.clone()),
        embedded_url,
        background.clone(),
    );
    let mut tasks = Vec::new();

    let s = api_stop.clone();
    let router = app(state.clone());
    let api = tokio::spawn(async move {
        serve(api_listener, router, api_options, s.cancelled_owned()).await;
    });
    let s = background.clone();
    let router = admin::router(state.clone(), admin_token, !admin_addr.ip().is_loopback());
    tasks.push(tokio::spawn(async move {
        serve(admin_listener, router, admin_options, s.cancelled_owned()).await;
    }));
    tasks.push(tokio::spawn(check_credentials(
        state.clone(),
        background.clone(),
    )));
    tasks.push(tokio::spawn(metrics_upkeep(
        state.clone(),
        background.clone(),
    )));
    if let Some(path) = options.config_path.clone() {
        tasks.push(crate::reload::watch(
            state.clone(),
            path,
            background.clone(),
        ));
    }
    if let Ok(mut p) = state.config_path.write() {
        *p = options.config_path;
    }

    Ok(ProxyHandle {
        api_addr,
        tls: tls.is_some(),
        admin_addr,
        state,
        stop,
        api_stop,
        api: Some(api),
        background,
        tasks,
        grace,
        simulator,
        workers,
    })
}

/// Raises the soft open-file limit to the hard one (each connection is a file
/// descriptor), and warns when `max_connections` does not fit under it: past
/// the limit, accepts fail (EMFILE) instead of the cap answering.
fn raise_fd_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            // Room for upstream connections, Redis, files and the admin port.
            let needed = (max_connections as u64).saturating_add(256);
            if limit < needed {
                tracing::warn!(
                    open_file_limit = limit,
                    max_connections,
                    "server.max_connections does not fit under the open-file limit; past it, accepts fail instead of being refused with a 503"
                );
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not read the open-file limit"),
    }
}

/// Resolves every upstream's credentials once, for `/readyz`.
async fn check_credentials(state: AppState, stop: CancellationToken) {
    let rt = state.runtime();
    let mut problems = Vec::new();
    for upstream in rt.upstreams.iter() {
        let check = tokio::time::timeout(Duration::from_secs(30), upstream.check_credentials());
        let result = tokio::select! {
            r = check => r,
            () = stop.cancelled() => return,
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(format!("upstream {}: credentials: {e}", upstream.name)),
            Err(_) => problems.push(format!(
                "upstream {}: credentials did not resolve within 30s",
                upstream.name
            )),
        }
    }
    for p in &problems {
        tracing::warn!("{p}");
    }
    if let Ok(mut r) = state.readiness.write() {
        *r = Readiness {
            credentials_checked: true,
            problems,
        };
    }
}

/// Keeps the Prometheus recorder's histograms compact and the cache gauges current.
async fn metrics_upkeep(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                state.metrics.run_upkeep();
                state.pipeline.cache.upkeep().await;
            }
            () = stop.cancelled() => return,
        }
    }
}

/// What [`init_telemetry`] started: the trace exporter and the EMF writer.
/// Call [`Telemetry::shutdown`] after the proxy stopped, to send what is queued.
pub struct Telemetry {
    exporter: Option<crate::telemetry::Exporter>,
    _emf: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl Telemetry {
    /// Exports the spans still queued, and flushes the EMF lines.
    pub async fn shutdown(self) {
        if let Some(exporter) = self.exporter {
            exporter.shutdown().await;
        }
    }
}

/// Starts the outputs `[tracing]` and `[logging] cloudwatch_emf` ask for, once
/// per process and within the Tokio runtime (read at start, not on reload).
pub fn init_telemetry(config: &Config) -> Result<Telemetry, crate::telemetry::TelemetryError> {
    let exporter = crate::telemetry::install(&config.tracing)?;
    if exporter.is_some() {
        tracing::info!("tracing: exporting spans over OTLP/HTTP");
    }
    let emf = config
        .logging
        .cloudwatch_emf
        .then(|| crate::metrics::emf::install(&config.logging.cloudwatch_namespace));
    Ok(Telemetry {
        exporter,
        _emf: emf,
    })
}

/// Sets up logging once per process (later calls keep the first setup). Every
/// log line, access lines included, is written by the log writer's thread
/// (`access_log`), so request handlers never block on stderr unless its buffer
/// is full and `logging.access_log_overflow = "wait"`. Keep the returned guard
/// alive: dropping it writes what is queued.
pub fn init_logging(
    config: &crate::config::LoggingConfig,
) -> std::io::Result<crate::access_log::LogGuard> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = crate::access_log::LogWriter::start(
        Box::new(std::io::stderr()),
        config.format,
        config.buffer_lines,
        config.overflow,
    )?;
    writer.install();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    // Lines logged while a request is served carry its id and operation
    // (`log_tag`), in the layout `tracing-subscriber` writes.
    let _ = match config.format {
        crate::config::LogFormat::Json => builder
            .json()
            .map_event_format(crate::log_tag::Json)
            .try_init(),
        crate::config::LogFormat::Text => builder.event_format(crate::log_tag::Text).try_init(),
    };
    Ok(guard)
}
