//! Starting and stopping the proxy: bind the API and admin listeners, build the
//! runtime, check upstream credentials in the background, serve until told to
//! stop, then stop accepting and let in-flight requests (streams included)
//! finish within `limits.shutdown_grace`.
//!
//! Every task started here is owned by [`ProxyHandle`] and awaited on shutdown.

use bedrock_sim::SimHandle;
use bedrock_wire::serve::{serve, ServeOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::{AuthMode, Config};
use crate::ingress::app;
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
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    simulator: Option<SimHandle>,
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

    /// Stops accepting, lets in-flight requests finish within the grace period,
    /// and waits for every task.
    pub async fn shutdown(mut self) {
        self.state.begin_shutdown();
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if let Some(sim) = self.simulator.take() {
            sim.shutdown().await;
        }
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
    let admin_options = ServeOptions {
        header_read_timeout: config.limits.header_read_timeout,
        drain: config.limits.shutdown_grace,
        tls: None,
    };
    let tls = match &config.server.tls {
        Some(files) => {
            Some(bedrock_wire::serve::load_tls(&files.cert, &files.key).map_err(StartError::Tls)?)
        }
        None => None,
    };
    let api_options = ServeOptions {
        tls: tls.clone(),
        ..admin_options.clone()
    };
    let admin_token = config.admin.token_sha256;
    let runtime = Runtime::build(config, embedded_url.as_deref(), None).await?;
    let bind = |what: &'static str, addr: SocketAddr| async move {
        let listener = TcpListener::bind(addr)
            .await
            .and_then(|l| Ok((l.local_addr()?, l)))
            .map_err(|error| StartError::Bind { what, addr, error })?;
        Ok::<_, StartError>(listener)
    };
    let (api_addr, api_listener) = bind("API", api_addr).await?;
    let (admin_addr, admin_listener) = bind("admin", admin_addr).await?;

    let stop = CancellationToken::new();
    let state = AppState::new(
        runtime,
        simulator.as_ref().map(|s| s.sim.clone()),
        embedded_url,
        stop.clone(),
    );
    let mut tasks = Vec::new();

    let s = stop.clone();
    let router = app(state.clone());
    tasks.push(tokio::spawn(async move {
        serve(api_listener, router, api_options, s.cancelled_owned()).await;
    }));
    let s = stop.clone();
    let router = admin::router(state.clone(), admin_token, !admin_addr.ip().is_loopback());
    tasks.push(tokio::spawn(async move {
        serve(admin_listener, router, admin_options, s.cancelled_owned()).await;
    }));
    tasks.push(tokio::spawn(check_credentials(state.clone(), stop.clone())));
    tasks.push(tokio::spawn(metrics_upkeep(state.clone(), stop.clone())));
    if let Some(path) = options.config_path.clone() {
        tasks.push(crate::reload::watch(state.clone(), path, stop.clone()));
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
        tasks,
        simulator,
    })
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

/// Sets up logging once per process (later calls keep the first setup). Log
/// lines are written by a background thread, so request handlers never block on
/// stderr. Keep the returned guard alive to flush on exit.
pub fn init_logging(
    config: &crate::config::LoggingConfig,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // The writer thread flushes whenever it has drained its queue, so a burst of
    // lines goes out in a few writes instead of one per line.
    let (writer, guard) =
        tracing_appender::non_blocking(std::io::BufWriter::new(std::io::stderr()));
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match config.format {
        crate::config::LogFormat::Json => builder.json().try_init(),
        crate::config::LogFormat::Text => builder.try_init(),
    };
    guard
}
