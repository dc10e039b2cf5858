//! The proxy's shared state and its API router.
//!
//! [`Runtime`] is everything built from one config (auth table, routes,
//! upstreams); it is swapped atomically on reload, and every request holds the
//! `Arc` it started with, so in-flight requests finish on their own config.
//! [`app`] is the API port's router, apart from `main` so tests can call it
//! without a socket.

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use futures_util::FutureExt;
use metrics_exporter_prometheus::PrometheusHandle;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Auth;
use crate::cache::ResponseCache;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::ingress;
use crate::metrics::{self, InFlight};
use crate::route::RouteTable;
use crate::upstream::Upstreams;

/// Everything built from one config.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub auth: Auth,
    pub routes: RouteTable,
    pub upstreams: Upstreams,
    pub catalog: Arc<Catalog>,
}

impl Runtime {
    /// Builds a runtime, reusing `previous`'s upstreams where their config is
    /// unchanged. `embedded` is the in-process simulator's URL, if any.
    pub async fn build(
        config: Config,
        embedded: Option<&str>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, String> {
        let upstreams =
            Upstreams::build(&config.upstreams, embedded, previous.map(|p| &p.upstreams)).await?;
        let catalog = match &config.catalog_file {
            Some(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("catalog.file {}: {e}", path.display()))?;
                Catalog::parse(&text)
                    .map_err(|e| format!("catalog.file {}: {e}", path.display()))?
            }
            None => Catalog::parse(crate::catalog::DEFAULT_CATALOG)?,
        };
        Ok(Runtime {
            auth: Auth::new(&config),
            routes: RouteTable::new(&config),
            upstreams,
            catalog: Arc::new(catalog),
            config: Arc::new(config),
        })
    }
}

/// Whether the proxy can serve: config loaded, upstream credentials resolved.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    pub credentials_checked: bool,
    pub problems: Vec<String>,
}

/// State shared by every request and the admin listener.
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    /// The response cache: built once, it survives config reloads.
    pub cache: Arc<ResponseCache>,
    /// Which prompt prefixes repeat (for the prompt-cache planner); survives reloads.
    pub prefixes: Arc<crate::prompt_cache::PrefixRegistry>,
    /// Circuit breakers per upstream target; survive reloads.
    pub breakers: crate::upstream::breaker::Breakers,
    /// The config file reloads read (none in built-in demo mode).
    pub config_path: RwLock<Option<std::path::PathBuf>>,
    pub metrics: PrometheusHandle,
    /// Requests in flight beyond this are shed with ServiceUnavailable.
    pub concurrency: Arc<Semaphore>,
    pub shutting_down: AtomicBool,
    pub readiness: RwLock<Readiness>,
    /// The embedded simulator (demo mode), whose control endpoints the admin
    /// listener serves.
    pub simulator: Option<bedrock_sim::Simulator>,
    pub embedded_url: Option<String>,
}

/// A cheap handle on [`Shared`].
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Shared state around `runtime`; background connections (the Redis tier)
    /// stop with `stop`.
    pub fn new(
        runtime: Runtime,
        simulator: Option<bedrock_sim::Simulator>,
        embedded_url: Option<String>,
        stop: tokio_util::sync::CancellationToken,
    ) -> AppState {
        let permits = runtime.config.limits.max_concurrent_requests;
        let redis = runtime
            .config
            .cache
            .redis
            .clone()
            .map(|r| crate::cache::redis::RedisTier::start(r, stop));
        let cache = Arc::new(ResponseCache::new(&runtime.config.cache, redis.clone()));
        let prefixes = Arc::new(crate::prompt_cache::PrefixRegistry::new(
            runtime.config.prompt_cache.max_prefixes,
            redis,
        ));
        AppState(Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            cache,
            prefixes,
            breakers: crate::upstream::breaker::Breakers::default(),
            config_path: RwLock::new(None),
            metrics: metrics::install(),
            concurrency: Arc::new(Semaphore::new(permits)),
            shutting_down: AtomicBool::new(false),
            readiness: RwLock::new(Readiness::default()),
            simulator,
            embedded_url,
        }))
    }

    /// The current runtime; hold it for the whole request.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.0.runtime.load_full()
    }

    /// Replaces the runtime; requests already running keep the old one.
    pub fn swap_runtime(&self, runtime: Runtime) {
        self.0.runtime.store(Arc::new(runtime));
    }

    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::SeqCst);
    }
}

/// The API port's router: the ingress adapters behind the load-shedding guard.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(ingress::bedrock::routes())
        .merge(ingress::openai::routes())
        .merge(ingress::anthropic::routes())
        .fallback(unknown_path)
        .method_not_allowed_fallback(unknown_path)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn unknown_path(request: Request) -> Response {
    let e = ProxyError::new(
        ErrorKind::NotFound,
        Side::Client,
        format!(
            "No API at {} {} on this proxy.",
            request.method(),
            request.uri().path()
        ),
    );
    metrics::rejected("unknown_path");
    ingress::render_error(request.uri().path(), &e, &bedrock_wire::new_request_id())
}

/// Sheds load past `max_concurrent_requests` and during shutdown, and counts
/// requests in flight; both held until the response body (a stream too) ends.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if state.shutting_down.load(Ordering::Relaxed) {
        metrics::rejected("shutting_down");
        let e =
            ProxyError::overloaded("The proxy is shutting down; retry against another replica.");
        return ingress::render_error(&path, &e, &bedrock_wire::new_request_id());
    }
    let Ok(permit) = state.concurrency.clone().try_acquire_owned() else {
        metrics::rejected("overloaded");
        let e =
            ProxyError::overloaded("The proxy is at its concurrent request limit; retry shortly.");
        return ingress::render_error(&path, &e, &bedrock_wire::new_request_id());
    };
    let in_flight = InFlight::start();
    // A bug that panics in a handler answers this request with an error in its
    // API's shape (and is logged) instead of dropping the connection.
    let response = match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(path = %path, panic = %what, "a request handler panicked");
            metrics::rejected("internal_error");
            let e = ProxyError::internal("The proxy failed on this request; it has been logged.");
            ingress::render_error(&path, &e, &bedrock_wire::new_request_id())
        }
    };
    let (mut parts, body) = response.into_parts();
    if !parts.headers.contains_key("x-amzn-requestid") {
        if let Some(id) = parts.headers.get("x-request-id").cloned() {
            parts.headers.insert("x-amzn-requestid", id);
        }
    }
    parts
        .headers
        .entry("server")
        .or_insert(HeaderValue::from_static("bedrock-proxy"));
    let body = Guarded {
        inner: body,
        _permit: permit,
        _in_flight: in_flight,
    };
    Response::from_parts(parts, Body::new(body))
}

/// A response body holding the concurrency permit and the in-flight count until
/// it is done; size and end-of-stream pass through, so whole answers keep their
/// `Content-Length`.
struct Guarded {
    inner: Body,
    _permit: OwnedSemaphorePermit,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
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
