//! The proxy's shared state: the current [`Runtime`] (swapped atomically on
//! reload), the [`Pipeline`]'s long-lived parts, and what the listeners share
//! (load shedding, readiness, the metrics handle, the embedded simulator).
//!
//! The API router that serves requests with it is [`crate::ingress::app`].

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::Semaphore;

use crate::budget::BodyBudget;
use crate::cache::ResponseCache;
use crate::limits::Limiter;
use crate::metrics;
use crate::pipeline::Pipeline;
use crate::prompt_cache::PrefixRegistry;
use crate::responses_store::ResponseStore;
use crate::runtime::Runtime;
use crate::shared::RedisTier;

/// Whether the proxy can serve: config loaded, upstream credentials resolved.
#[derive(Debug, Clone, Default)]
pub(crate) struct Readiness {
    pub(crate) credentials_checked: bool,
    pub(crate) problems: Vec<String>,
}

/// State shared by every request and the admin listener.
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    /// The response cache, flights, prefix registry and breakers: built once,
    /// they survive config reloads.
    pub(crate) pipeline: Arc<Pipeline>,
    /// The rate-limit and budget counters: built once, they survive reloads
    /// (the limits themselves are the runtime's config).
    pub(crate) limiter: Arc<Limiter>,
    /// The Responses API's stored responses (`[responses]`, read at start):
    /// built once, they survive reloads.
    pub(crate) responses: Arc<ResponseStore>,
    /// The config file reloads read (none in built-in demo mode).
    pub(crate) config_path: RwLock<Option<std::path::PathBuf>>,
    pub(crate) metrics: PrometheusHandle,
    /// Requests in flight beyond this are shed with ServiceUnavailable.
    pub(crate) concurrency: Arc<Semaphore>,
    pub(crate) shutting_down: AtomicBool,
    /// Cancelled when shutdown's grace has passed: streams still running end
    /// with an exception frame (or error event), requests still waiting get a
    /// 503.
    pub(crate) cut: tokio_util::sync::CancellationToken,
    /// Request-body bytes in memory (`limits.max_inflight_body_bytes`).
    pub(crate) bodies: BodyBudget,
    pub(crate) readiness: RwLock<Readiness>,
    /// The embedded simulator (demo mode), whose control endpoints the admin
    /// listener serves.
    pub(crate) simulator: Option<bedrock_sim::Simulator>,
    pub(crate) embedded_url: Option<String>,
    /// The shared tier (`[cache.redis]`), whose background writes shutdown
    /// waits for.
    pub(crate) redis: Option<Arc<RedisTier>>,
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
    /// Shared state around `runtime`; background connections (the shared
    /// Redis tier) stop with `stop`.
    pub(crate) fn new(
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
            .map(|r| RedisTier::start(r, stop));
        let tier = redis.clone();
        let limiter = Limiter::new(runtime.config.limits.clock, redis.clone());
        let responses = Arc::new(ResponseStore::new(&runtime.config.responses, redis.clone()));
        let pipeline = Arc::new(Pipeline {
            cache: ResponseCache::new(&runtime.config.cache, redis.clone()),
            flights: Default::default(),
            prefixes: Arc::new(PrefixRegistry::new(
                runtime.config.prompt_cache.max_prefixes,
                runtime.config.prompt_cache.retention,
                runtime.config.prompt_cache.time_scale,
                redis,
            )),
            breakers: Default::default(),
        });
        let metrics = metrics::install();
        routes_configured(&runtime);
        AppState(Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            pipeline,
            limiter,
            responses,
            config_path: RwLock::new(None),
            metrics,
            concurrency: Arc::new(Semaphore::new(permits)),
            shutting_down: AtomicBool::new(false),
            cut: tokio_util::sync::CancellationToken::new(),
            bodies: BodyBudget::default(),
            readiness: RwLock::new(Readiness::default()),
            simulator,
            embedded_url,
            redis: tier,
        }))
    }

    /// The current runtime; hold it for the whole request.
    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        self.0.runtime.load_full()
    }

    /// Replaces the runtime; requests already running keep the old one.
    pub(crate) fn swap_runtime(&self, runtime: Runtime) {
        routes_configured(&runtime);
        self.0.runtime.store(Arc::new(runtime));
    }

    /// The Prometheus text of the proxy's metrics (what the admin listener's
    /// `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        self.0.metrics.render()
    }

    /// Moves the prompt-cache planner's learning clock forward, as if `by` had
    /// passed: tests of what it learns over minutes and hours run without waiting.
    pub fn advance_prompt_cache_clock(&self, by: std::time::Duration) {
        self.0.pipeline.prefixes.clock().advance(by);
    }

    pub(crate) fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::SeqCst);
    }
}

/// Starts the per-route series that should exist before their first event.
fn routes_configured(runtime: &Runtime) {
    for route in runtime.routes.routes() {
        let hedges = route.config.resilience.hedge_after.is_some();
        metrics::route_configured(&metrics::route_label(&route.name), hedges);
    }
}
