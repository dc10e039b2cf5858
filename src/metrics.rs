//! Metrics, served as Prometheus text on the admin listener. Every label comes
//! from a closed set: route names from the config (or `unrouted`), the five
//! operations, status classes, error kinds, token kinds, tiers. Never a raw path,
//! a request id or a model id a client typed.

use crate::support::Memo;
use bedrock_wire::converse::Usage;
use bedrock_wire::operation::Operation;
pub use metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::error::ErrorKind;

pub mod emf;

pub const REQUESTS: &str = "bedrock_proxy_requests_total";
pub const REQUEST_DURATION: &str = "bedrock_proxy_request_duration_seconds";
pub const UPSTREAM_TTFT: &str = "bedrock_proxy_upstream_ttft_seconds";
pub const TOKENS: &str = "bedrock_proxy_tokens_total";
pub const UPSTREAM_ERRORS: &str = "bedrock_proxy_upstream_errors_total";
pub const IN_FLIGHT: &str = "bedrock_proxy_in_flight_requests";
pub const REJECTED: &str = "bedrock_proxy_rejected_total";
pub const STREAMS: &str = "bedrock_proxy_streams_total";

/// The label for requests no route claimed.
pub const UNROUTED: &str = "unrouted";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Output tokens per second of one answer: standard-tier models run at tens,
/// latency-optimized ones reach the low hundreds.
const TOKENS_PER_SECOND_BUCKETS: &[f64] = &[
    5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 125.0, 150.0, 200.0, 300.0, 500.0, 1000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle; later calls
/// (a second proxy in the same test process) share it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(OUTPUT_TOKENS_PER_SECOND.into()),
                        TOKENS_PER_SECOND_BUCKETS,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is installed (an embedding
            // application's); the handle then renders nothing, which is visible.
            let _ = metrics::set_global_recorder(recorder);
            let _ = IN_FLIGHT_GAUGE.set(metrics::gauge!(IN_FLIGHT));
            let _ = BODY_BYTES_GAUGE.set(metrics::gauge!(BODY_BYTES_IN_FLIGHT));
            describe();
            describe_protection();
            start_at_zero();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        REQUESTS,
        "Requests answered, by route, operation and status class."
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from request to the end of the response, by route and operation."
    );
    metrics::describe_histogram!(
        UPSTREAM_TTFT,
        metrics::Unit::Seconds,
        "Time to the upstream's first byte (first event for streams), by route and operation."
    );
    metrics::describe_counter!(TOKENS, "Tokens billed by the upstream, by route and kind.");
    metrics::describe_counter!(UPSTREAM_ERRORS, "Upstream errors, by route and error kind.");
    metrics::describe_gauge!(IN_FLIGHT, "Requests being served now.");
    metrics::describe_counter!(
        REJECTED,
        "Requests refused before reaching a route, by reason."
    );
    metrics::describe_counter!(STREAMS, "Streams ended, by route and outcome.");
    metrics::describe_counter!(
        CACHE_REQUESTS,
        "Response-cache outcomes, by route, result and tier."
    );
    metrics::describe_gauge!(CACHE_ENTRIES, "Entries in the in-process response cache.");
    metrics::describe_gauge!(
        CACHE_BYTES,
        "Bytes of answers in the in-process response cache."
    );
    metrics::describe_counter!(
        CACHE_EVICTIONS,
        "Entries evicted to stay within cache.max_bytes."
    );
    metrics::describe_counter!(
        CACHE_FLIGHT_JOINS,
        "Requests answered by another request's upstream call in flight."
    );
    metrics::describe_counter!(
        CACHE_REDIS_ERRORS,
        "Failed calls to the shared cache tier, by operation."
    );
    metrics::describe_counter!(
        CACHE_TOKENS_SAVED,
        "Tokens cache hits did not spend, by route and kind."
    );
    metrics::describe_gauge!(
        CACHE_USD_SAVED,
        "Estimated dollars cache hits saved (catalog prices), by route; only increases."
    );
    metrics::describe_counter!(
        PROMPT_CACHE_POINTS,
        "cachePoint blocks the planner added, by route, position and TTL."
    );
    metrics::describe_counter!(
        PROMPT_CACHE_SKIPPED,
        "Positions the planner left alone, by route, position and reason."
    );
    metrics::describe_counter!(
        PROMPT_CACHE_TOKENS,
        "Bedrock prompt-cache tokens read and written, by route and model."
    );
    metrics::describe_gauge!(
        PROMPT_CACHE_USD_SAVED,
        "Net dollars Bedrock's prompt cache saved versus no caching (reported usage, catalog prices, writes at their TTL's price), by route, model and tenant."
    );
    metrics::describe_counter!(
        PROMPT_CACHE_WRITE_TOKENS,
        "Bedrock prompt-cache tokens written, by route, model and TTL."
    );
    metrics::describe_counter!(
        ATTEMPTS,
        "Upstream attempts, by route, target and outcome (ok or the error kind)."
    );
    metrics::describe_counter!(
        FALLBACKS,
        "Moves from one target of a route's chain to the next, by reason."
    );
    metrics::describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker of each route target: 0 closed, 1 half-open, 2 open."
    );
    metrics::describe_counter!(
        HEDGES,
        "Hedged attempts, by route and outcome (fired, won)."
    );
    metrics::describe_counter!(
        LATENCY_DOWNGRADES,
        "Attempts sent standard where optimized was wanted, by route, target and reason."
    );
    metrics::describe_counter!(
        SERVICE_TIER_DOWNGRADES,
        "Attempts sent the default service tier where priority or flex was wanted and the catalog says it cannot work, by route, target and reason."
    );
    metrics::describe_counter!(
        SERVICE_TIER_SERVED,
        "Upstream answers by the service tier Bedrock says served them (served; `none` for non-Bedrock upstreams) and the one the route asked for (requested)."
    );
    metrics::describe_counter!(
        PROMPT_ROUTER_INVOKED,
        "Answers of prompt routers by the model the router chose (the catalog's base model id; `other` for a model the catalog does not know)."
    );
    metrics::describe_counter!(
        SERVED_TIER,
        "Upstream answers by the latency tier Bedrock reports as having served them (tier) and the tier the route asked for (requested)."
    );
    metrics::describe_histogram!(
        TTFT,
        metrics::Unit::Seconds,
        "Time from the client's request to the answer's first byte, by route and served tier."
    );
    metrics::describe_histogram!(
        OUTPUT_TOKENS_PER_SECOND,
        "Output tokens per second of upstream answers, by route and served tier."
    );
    metrics::describe_counter!(
        LIMIT_REFUSALS,
        "Requests refused by a rate limit or budget, by tenant, scope (key, tenant, route) and reason."
    );
    metrics::describe_gauge!(
        SPEND_USD,
        "Dollars answers cost at catalog prices, by tenant and route; only increases."
    );
    metrics::describe_gauge!(
        BUDGET_USED,
        "Share of a tenant's budget spent in the current UTC day or month (1 = spent)."
    );
    metrics::describe_counter!(
        UPSTREAM_KIND_ATTEMPTS,
        "Upstream attempts, by route, upstream kind (bedrock, simulator, openai, sagemaker) and outcome."
    );
    metrics::describe_counter!(
        USAGE_ESTIMATED,
        "Upstream answers whose usage the server did not report and the proxy estimated, by route and upstream kind."
    );
    metrics::describe_counter!(
        TARGETS_SKIPPED,
        "Fallback targets left out of a call, by route, target and reason (untranslatable: a chat server cannot take the request)."
    );
    metrics::describe_gauge!(
        COST_USD,
        "Estimated dollars upstream answers cost (catalog prices, or a self-hosted upstream's usd_per_hour), by route, upstream kind and basis; only increases."
    );
    metrics::describe_counter!(CONFIG_RELOADS, "Config reloads applied.");
    metrics::describe_counter!(
        CONFIG_RELOAD_FAILURES,
        "Config reloads refused (the running config stays); the log says why."
    );
}

/// Series that exist from the start at 0, so that their first increment is a
/// visible step for `rate()` and `increase()` (a series that appears at 1 has
/// no earlier sample to differ from).
fn start_at_zero() {
    metrics::counter!(CONFIG_RELOADS).increment(0);
    metrics::counter!(CONFIG_RELOAD_FAILURES).increment(0);
    metrics::counter!(REJECTED, "reason" => "overloaded").increment(0);
    // An alert on a full log buffer needs the series before the first one.
    for action in ["waited", "dropped"] {
        metrics::counter!(LOG_BUFFER_FULL, "action" => action).increment(0);
    }
}

/// A route of the running config: its hedge counters start at 0 when it hedges.
pub fn route_configured(route: &SharedString, hedges: bool) {
    if hedges {
        for outcome in ["fired", "won"] {
            metrics::counter!(HEDGES, "route" => route.clone(), "outcome" => outcome).increment(0);
        }
    }
}

/// The route label of a route name.
pub fn route_label(name: &std::sync::Arc<str>) -> SharedString {
    SharedString::from(name.clone())
}

/// The metrics every request of a route updates, resolved once per route and
/// label set instead of per request: `metrics::counter!` with labels builds a
/// key (an allocation) and looks it up in the registry on every call; a handle
/// is an `Arc` to the counter itself. Each handle is resolved on first use, so
/// a series still appears when it first counts, as before. Built with the
/// route (`route::RouteTable`), so a request finds it without a lookup.
#[derive(Debug)]
pub struct RouteMetrics {
    label: SharedString,
    /// By operation, then status class.
    requests: [[OnceLock<metrics::Counter>; 5]; 5],
    duration: [OnceLock<metrics::Histogram>; 5],
    tokens: [OnceLock<metrics::Counter>; 4],
    /// By (result, tier), in [`CACHE_OUTCOMES`]' order.
    cache: [OnceLock<metrics::Counter>; 5],
    /// By outcome, in [`STREAM_OUTCOMES`]' order.
    streams: [OnceLock<metrics::Counter>; 4],
    /// By (tier, requested).
    served_tier: Memo<[&'static str; 2], metrics::Counter, 6>,
    /// By tier.
    ttft: Memo<&'static str, metrics::Histogram, 3>,
    /// By tier.
    output_speed: Memo<&'static str, metrics::Histogram, 3>,
    /// By (served, requested).
    service_tier: Memo<[&'static str; 2], metrics::Counter, 6>,
    /// By (upstream kind, basis).
    cost: Memo<[&'static str; 2], metrics::Gauge, 4>,
    /// Tokens cache hits saved, input and output.
    saved_tokens: [OnceLock<metrics::Counter>; 2],
    saved_usd: OnceLock<metrics::Gauge>,
    /// Response header values of the names the route's answers carry (its
    /// own, its upstreams' and models'), made once per name (a route answers
    /// with a few): found by the name's text, the `Arc` holding it first.
    header_values: Memo<std::sync::Arc<str>, Option<http::HeaderValue>, 8>,
}

/// The metrics every attempt on one target of a route updates (attempts by
/// outcome and upstream kind, the breaker's state, the upstream's TTFT),
/// resolved once per target and label set; built with the route.
#[derive(Debug)]
pub struct TargetMetrics {
    route: SharedString,
    target: SharedString,
    /// By outcome (`ok` or an error kind).
    attempts: Memo<&'static str, metrics::Counter, 8>,
    /// By (upstream kind, outcome).
    kind_attempts: Memo<[&'static str; 2], metrics::Counter, 8>,
    breaker: OnceLock<metrics::Gauge>,
    /// By operation.
    upstream_ttft: [OnceLock<metrics::Histogram>; 5],
}

impl TargetMetrics {
    /// The handles of target `target` (`primary`, `fallback1`...) of route `route`.
    pub fn new(route: &Arc<str>, target: &Arc<str>) -> TargetMetrics {
        TargetMetrics {
            route: route_label(route),
            target: route_label(target),
            attempts: Memo::default(),
            kind_attempts: Memo::default(),
            breaker: OnceLock::new(),
            upstream_ttft: Default::default(),
        }
    }

    /// One upstream attempt on the target, to an upstream of `kind`: `ok` or
    /// the error kind (`bedrock_proxy_attempts_total` and
    /// `bedrock_proxy_upstream_kind_attempts_total`).
    pub fn attempt(&self, kind: &'static str, outcome: &'static str) {
        let (route, target) = (&self.route, &self.target);
        self.attempts
            .get(outcome, || {
                metrics::counter!(ATTEMPTS, "route" => route.clone(), "target" => target.clone(), "outcome" => outcome)
            })
            .increment(1);
        self.kind_attempts
            .get([kind, outcome], || {
                metrics::counter!(UPSTREAM_KIND_ATTEMPTS, "route" => route.clone(), "upstream_kind" => kind, "outcome" => outcome)
            })
            .increment(1);
    }

    /// The target's breaker: 0 closed, 1 half-open, 2 open.
    pub fn breaker_state(&self, gauge: f64) {
        self.breaker
            .get_or_init(|| {
                metrics::gauge!(BREAKER_STATE, "route" => self.route.clone(), "target" => self.target.clone())
            })
            .set(gauge);
    }

    /// Time to the upstream's first byte (by route and operation).
    pub fn upstream_ttft(&self, op: Operation, elapsed: Duration) {
        self.upstream_ttft[operation_index(op)]
            .get_or_init(|| {
                metrics::histogram!(UPSTREAM_TTFT, "route" => self.route.clone(), "operation" => op.name())
            })
            .record(elapsed.as_secs_f64());
    }
}

const CACHE_OUTCOMES: [(&str, &str); 5] = [
    ("bypass", "none"),
    ("miss", "none"),
    ("hit", "l1"),
    ("hit", "l2"),
    ("hit", "flight"),
];

const STREAM_OUTCOMES: [&str; 4] = ["complete", "upstream_error", "client_gone", "shutdown"];

fn operation_index(op: Operation) -> usize {
    match op {
        Operation::Converse => 0,
        Operation::ConverseStream => 1,
        Operation::Invoke => 2,
        Operation::InvokeStream => 3,
        Operation::CountTokens => 4,
    }
}

fn status_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

impl RouteMetrics {
    /// The handles of route `name` (none resolved yet).
    pub fn new(name: &std::sync::Arc<str>) -> RouteMetrics {
        RouteMetrics::labelled(route_label(name))
    }

    fn labelled(label: SharedString) -> RouteMetrics {
        RouteMetrics {
            label,
            requests: Default::default(),
            duration: Default::default(),
            tokens: Default::default(),
            cache: Default::default(),
            streams: Default::default(),
            served_tier: Memo::default(),
            ttft: Memo::default(),
            output_speed: Memo::default(),
            service_tier: Memo::default(),
            cost: Memo::default(),
            saved_tokens: Default::default(),
            saved_usd: OnceLock::new(),
            header_values: Memo::default(),
        }
    }

    /// `name` (the route's, or an upstream's or model's from its config) as
    /// a header value, made the first time; `None` when it cannot be one.
    pub fn header_value(&self, name: &std::sync::Arc<str>) -> Option<http::HeaderValue> {
        self.header_values.find(
            |k| std::sync::Arc::ptr_eq(k, name) || **k == **name,
            || (name.clone(), http::HeaderValue::from_str(name).ok()),
        )
    }

    /// The handles of requests no route claimed.
    pub fn unrouted_ref() -> &'static std::sync::Arc<RouteMetrics> {
        static UNROUTED_METRICS: OnceLock<std::sync::Arc<RouteMetrics>> = OnceLock::new();
        UNROUTED_METRICS.get_or_init(|| {
            std::sync::Arc::new(RouteMetrics::labelled(SharedString::const_str(UNROUTED)))
        })
    }

    /// The route label, for the metrics without a handle here.
    pub fn label(&self) -> &SharedString {
        &self.label
    }

    /// One request answered.
    pub fn request_done(&self, op: Operation, status: u16, elapsed: Duration) {
        let o = operation_index(op);
        self.requests[o][status_index(status)]
            .get_or_init(|| {
                metrics::counter!(REQUESTS, "route" => self.label.clone(), "operation" => op.name(), "status" => status_class(status))
            })
            .increment(1);
        self.duration[o]
            .get_or_init(|| {
                metrics::histogram!(REQUEST_DURATION, "route" => self.label.clone(), "operation" => op.name())
            })
            .record(elapsed.as_secs_f64());
    }

    /// What a cache hit saved: the tokens the original answer billed and,
    /// when its price is known, the dollars.
    pub fn cache_saved(&self, usage: &Usage, usd: f64) {
        for (i, (kind, n)) in [
            (
                "input",
                usage.input_tokens + usage.cache_read_input_tokens + usage.cache_write_input_tokens,
            ),
            ("output", usage.output_tokens),
        ]
        .into_iter()
        .enumerate()
        {
            if n > 0 {
                self.saved_tokens[i]
                    .get_or_init(|| {
                        metrics::counter!(CACHE_TOKENS_SAVED, "route" => self.label.clone(), "kind" => kind)
                    })
                    .increment(n);
            }
        }
        if usd > 0.0 {
            self.saved_usd
                .get_or_init(|| metrics::gauge!(CACHE_USD_SAVED, "route" => self.label.clone()))
                .increment(usd);
        }
    }

    /// Tokens an upstream answer billed.
    pub fn tokens(&self, usage: &Usage) {
        for (i, (kind, n)) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_write", usage.cache_write_input_tokens),
        ]
        .into_iter()
        .enumerate()
        {
            if n > 0 {
                self.tokens[i]
                    .get_or_init(
                        || metrics::counter!(TOKENS, "route" => self.label.clone(), "kind" => kind),
                    )
                    .increment(n);
            }
        }
    }

    /// A cache lookup outcome (see [`cache_request`]).
    pub fn cache_request(&self, result: &'static str, tier: &'static str) {
        match CACHE_OUTCOMES
            .iter()
            .position(|o| *o == (result, tier))
        {
            Some(i) => self.cache[i]
                .get_or_init(|| {
                    metrics::counter!(CACHE_REQUESTS, "route" => self.label.clone(), "result" => result, "tier" => tier)
                })
                .increment(1),
            None => cache_request(&self.label, result, tier),
        }
    }

    /// How a stream ended (see [`stream_ended`]).
    pub fn stream_ended(&self, outcome: &'static str) {
        match STREAM_OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => self.streams[i]
                .get_or_init(|| {
                    metrics::counter!(STREAMS, "route" => self.label.clone(), "outcome" => outcome)
                })
                .increment(1),
            None => stream_ended(&self.label, outcome),
        }
    }

    /// The tier Bedrock says served an answer and the one the route asked for
    /// (`requested`: the route's latency policy applied to the client's request,
    /// before catalog downgrades and fallbacks), its time to first byte (from the
    /// client's request) and its output speed.
    pub fn served(
        &self,
        tier: &'static str,
        requested: &'static str,
        ttft: Option<Duration>,
        output_tokens_per_s: Option<f64>,
    ) {
        let label = &self.label;
        self.served_tier
            .get([tier, requested], || {
                metrics::counter!(SERVED_TIER, "route" => label.clone(), "tier" => tier, "requested" => requested)
            })
            .increment(1);
        if let Some(t) = ttft {
            self.ttft
                .get(
                    tier,
                    || metrics::histogram!(TTFT, "route" => label.clone(), "tier" => tier),
                )
                .record(t.as_secs_f64());
        }
        if let Some(tps) = output_tokens_per_s {
            self.output_speed
                .get(tier, || {
                    metrics::histogram!(OUTPUT_TOKENS_PER_SECOND, "route" => label.clone(), "tier" => tier)
                })
                .record(tps);
        }
    }

    /// The service tier that served an upstream answer and the one the route
    /// asked for (its policy applied to the client's request).
    pub fn service_tier_served(&self, served: &'static str, requested: &'static str) {
        let label = &self.label;
        self.service_tier
            .get([served, requested], || {
                metrics::counter!(SERVICE_TIER_SERVED, "route" => label.clone(), "served" => served, "requested" => requested)
            })
            .increment(1);
    }

    /// What an upstream answer cost: `basis` is `tokens` (catalog prices) or
    /// `hourly` (a self-hosted upstream's price per hour, shared by its requests).
    pub fn cost(&self, kind: &'static str, basis: &'static str, usd: f64) {
        if usd > 0.0 {
            let label = &self.label;
            self.cost
                .get([kind, basis], || {
                    metrics::gauge!(COST_USD, "route" => label.clone(), "upstream_kind" => kind, "basis" => basis)
                })
                .increment(usd);
        }
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A request of a Bedrock Runtime operation the pipeline does not run
/// (guardrails, async invoke, the bidirectional stream) ended; `operation` is
/// its `RuntimeOperation` label.
pub fn operation_done(
    route: &SharedString,
    operation: &'static str,
    status: u16,
    elapsed: Duration,
) {
    metrics::counter!(REQUESTS, "route" => route.clone(), "operation" => operation, "status" => status_class(status))
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "route" => route.clone(), "operation" => operation)
        .record(elapsed.as_secs_f64());
}

/// An upstream error.
pub fn upstream_error(route: &SharedString, kind: ErrorKind) {
    metrics::counter!(UPSTREAM_ERRORS, "route" => route.clone(), "kind" => kind.label())
        .increment(1);
}

/// A request refused before routing (auth, limits, bad input).
pub fn rejected(reason: &'static str) {
    metrics::counter!(REJECTED, "reason" => reason).increment(1);
}

/// How a stream ended: `complete`, `upstream_error` or `client_gone`.
pub fn stream_ended(route: &SharedString, outcome: &'static str) {
    metrics::counter!(STREAMS, "route" => route.clone(), "outcome" => outcome).increment(1);
}

/// Counts a request in flight for as long as it lives.
#[derive(Debug)]
pub struct InFlight(());

impl InFlight {
    pub fn start() -> InFlight {
        in_flight_gauge().increment(1.0);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        in_flight_gauge().decrement(1.0);
    }
}

/// Gauges every request moves, resolved by [`install`] once the recorder is
/// in place (a handle taken before would be a no-op for ever); until then
/// each use looks its gauge up.
static IN_FLIGHT_GAUGE: OnceLock<metrics::Gauge> = OnceLock::new();
static BODY_BYTES_GAUGE: OnceLock<metrics::Gauge> = OnceLock::new();

fn in_flight_gauge() -> metrics::Gauge {
    IN_FLIGHT_GAUGE
        .get()
        .cloned()
        .unwrap_or_else(|| metrics::gauge!(IN_FLIGHT))
}

pub const CACHE_REQUESTS: &str = "bedrock_proxy_cache_requests_total";
pub const CACHE_ENTRIES: &str = "bedrock_proxy_cache_entries";
pub const CACHE_BYTES: &str = "bedrock_proxy_cache_bytes";
pub const CACHE_EVICTIONS: &str = "bedrock_proxy_cache_evictions_total";
pub const CACHE_FLIGHT_JOINS: &str = "bedrock_proxy_cache_single_flight_joins_total";
pub const CACHE_REDIS_ERRORS: &str = "bedrock_proxy_cache_redis_errors_total";
pub const CACHE_TOKENS_SAVED: &str = "bedrock_proxy_cache_tokens_saved_total";
pub const CACHE_USD_SAVED: &str = "bedrock_proxy_cache_saved_usd";

/// A cache lookup outcome: `result` is hit, miss or bypass; `tier` l1, l2,
/// flight (another request's upstream call) or none.
pub fn cache_request(route: &SharedString, result: &'static str, tier: &'static str) {
    metrics::counter!(CACHE_REQUESTS, "route" => route.clone(), "result" => result, "tier" => tier)
        .increment(1);
}

/// A request that joined another's upstream call.
pub fn single_flight_join(route: &SharedString) {
    metrics::counter!(CACHE_FLIGHT_JOINS, "route" => route.clone()).increment(1);
}

/// An entry evicted to stay within `max_bytes`.
pub fn cache_evicted() {
    metrics::counter!(CACHE_EVICTIONS).increment(1);
}

/// The in-process tier's size.
pub fn cache_size(entries: u64, bytes: u64) {
    metrics::gauge!(CACHE_ENTRIES).set(entries as f64);
    metrics::gauge!(CACHE_BYTES).set(bytes as f64);
}

/// A failed Redis call (`connect`, `get`, `set`, `scan`, `del`, `decode`).
pub fn redis_error(operation: &'static str) {
    metrics::counter!(CACHE_REDIS_ERRORS, "operation" => operation).increment(1);
}

pub const PROMPT_CACHE_POINTS: &str = "bedrock_proxy_prompt_cache_points_injected_total";
pub const PROMPT_CACHE_SKIPPED: &str = "bedrock_proxy_prompt_cache_skipped_total";
pub const PROMPT_CACHE_TOKENS: &str = "bedrock_proxy_prompt_cache_tokens_total";
pub const PROMPT_CACHE_USD_SAVED: &str = "bedrock_proxy_prompt_cache_saved_usd";
pub const PROMPT_CACHE_WRITE_TOKENS: &str = "bedrock_proxy_prompt_cache_write_tokens_total";

/// A cachePoint the planner added, by position (`tools`, `system`, `head`,
/// `conversation`) and TTL (`5m`, `1h`).
pub fn prompt_cache_injected(route: &SharedString, position: &'static str, ttl: &'static str) {
    metrics::counter!(PROMPT_CACHE_POINTS, "route" => route.clone(), "position" => position, "ttl" => ttl)
        .increment(1);
}

/// A position the planner left alone, and why.
pub fn prompt_cache_skipped(route: &SharedString, position: &'static str, reason: &'static str) {
    metrics::counter!(PROMPT_CACHE_SKIPPED, "route" => route.clone(), "position" => position, "reason" => reason)
        .increment(1);
}

/// Bedrock's prompt-cache reads and writes (writes also by TTL), and the net
/// dollars they saved against the same tokens billed as plain input (negative
/// while writes dominate), by route, model (catalog id) and tenant (from config).
pub fn prompt_cache_usage(
    route: &SharedString,
    model: &str,
    tenant: &str,
    usage: &Usage,
    usd_saved: f64,
) {
    let model = SharedString::from(model.to_owned());
    let one_hour = usage
        .cache_write_1h_input_tokens
        .min(usage.cache_write_input_tokens);
    for (ttl, n) in [
        ("5m", usage.cache_write_input_tokens - one_hour),
        ("1h", one_hour),
    ] {
        if n > 0 {
            metrics::counter!(PROMPT_CACHE_WRITE_TOKENS, "route" => route.clone(), "model" => model.clone(), "ttl" => ttl)
                .increment(n);
        }
    }
    for (kind, n) in [
        ("read", usage.cache_read_input_tokens),
        ("write", usage.cache_write_input_tokens),
    ] {
        if n > 0 {
            metrics::counter!(PROMPT_CACHE_TOKENS, "route" => route.clone(), "model" => model.clone(), "kind" => kind)
                .increment(n);
        }
    }
    metrics::gauge!(PROMPT_CACHE_USD_SAVED, "route" => route.clone(), "model" => model, "tenant" => SharedString::from(tenant.to_owned()))
        .increment(usd_saved);
}

pub const ATTEMPTS: &str = "bedrock_proxy_upstream_attempts_total";
pub const FALLBACKS: &str = "bedrock_proxy_fallbacks_total";
pub const BREAKER_STATE: &str = "bedrock_proxy_breaker_state";
pub const HEDGES: &str = "bedrock_proxy_hedges_total";
pub const LATENCY_DOWNGRADES: &str = "bedrock_proxy_latency_downgrades_total";
pub const SERVED_TIER: &str = "bedrock_proxy_served_tier_total";
pub const SERVICE_TIER_DOWNGRADES: &str = "bedrock_proxy_service_tier_downgrades_total";
pub const SERVICE_TIER_SERVED: &str = "bedrock_proxy_service_tier_served_total";
pub const PROMPT_ROUTER_INVOKED: &str = "bedrock_proxy_prompt_router_invoked_total";
pub const TTFT: &str = "bedrock_proxy_ttft_seconds";
pub const OUTPUT_TOKENS_PER_SECOND: &str = "bedrock_proxy_output_tokens_per_second";
pub const CONFIG_RELOADS: &str = "bedrock_proxy_config_reloads_total";
pub const CONFIG_RELOAD_FAILURES: &str = "bedrock_proxy_config_reload_failures_total";

/// A move from one target to the next, and why.
pub fn fallback(route: &SharedString, from: &str, to: &str, reason: &'static str) {
    metrics::counter!(FALLBACKS, "route" => route.clone(), "from" => from.to_owned(), "to" => to.to_owned(), "reason" => reason)
        .increment(1);
}

/// A hedge `fired`, or `won` (the hedged attempt answered first).
pub fn hedge(route: &SharedString, outcome: &'static str) {
    metrics::counter!(HEDGES, "route" => route.clone(), "outcome" => outcome).increment(1);
}

/// `optimized` wanted where the catalog says it cannot work; standard was sent.
pub fn latency_downgrade(route: &SharedString, target: &Arc<str>, reason: &'static str) {
    metrics::counter!(LATENCY_DOWNGRADES, "route" => route.clone(), "target" => route_label(target), "reason" => reason)
        .increment(1);
}

/// Priority or flex wanted where the catalog says it cannot work; default was sent.
pub fn service_tier_downgrade(route: &SharedString, target: &Arc<str>, reason: &'static str) {
    metrics::counter!(SERVICE_TIER_DOWNGRADES, "route" => route.clone(), "target" => route_label(target), "reason" => reason)
        .increment(1);
}

/// The model a prompt router chose (`model`: a catalog id or `other`).
pub fn prompt_router_invoked(route: &SharedString, model: SharedString) {
    metrics::counter!(PROMPT_ROUTER_INVOKED, "route" => route.clone(), "model" => model)
        .increment(1);
}

/// A config reload: applied, or refused (the running config stays).
pub fn config_reload(ok: bool) {
    if ok {
        metrics::counter!(CONFIG_RELOADS).increment(1);
    } else {
        metrics::counter!(CONFIG_RELOAD_FAILURES).increment(1);
    }
}

pub const CONNECTIONS: &str = "bedrock_proxy_connections";
pub const CONNECTIONS_CLOSED: &str = "bedrock_proxy_connections_closed_total";
pub const CONNECTIONS_REFUSED: &str = "bedrock_proxy_connections_refused_total";
pub const ACCEPT_ERRORS: &str = "bedrock_proxy_accept_errors_total";
pub const BODY_BYTES_IN_FLIGHT: &str = "bedrock_proxy_request_body_bytes_in_flight";
pub const REDIS_UP: &str = "bedrock_proxy_redis_up";
pub const REDIS_SKIPPED: &str = "bedrock_proxy_cache_redis_skipped_total";
pub const LOG_BUFFER_FULL: &str = "bedrock_proxy_log_buffer_full_total";

fn describe_protection() {
    metrics::describe_gauge!(CONNECTIONS, "Client connections open on the API port.");
    metrics::describe_counter!(
        CONNECTIONS_CLOSED,
        "API connections ended, by reason (normal, first_byte_timeout, header_timeout, idle_timeout, drain_deadline)."
    );
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "API connections refused at server.max_connections."
    );
    metrics::describe_counter!(
        ACCEPT_ERRORS,
        "Failed accepts on the API port (file_descriptors, memory, aborted, other); the loop backs off."
    );
    metrics::describe_gauge!(
        BODY_BYTES_IN_FLIGHT,
        "Request-body bytes reserved against limits.max_inflight_body_bytes."
    );
    metrics::describe_gauge!(
        REDIS_UP,
        "The shared Redis tier: 1 in use, 0 skipped after failures (probing to recover)."
    );
    metrics::describe_counter!(
        REDIS_SKIPPED,
        "Shared-tier calls skipped while the tier is down, by operation."
    );
    metrics::describe_counter!(
        LOG_BUFFER_FULL,
        "Log lines that found the log writer's buffer full, by action (waited, dropped: logging.access_log_overflow)."
    );
}

/// An API connection was accepted.
pub fn connection_opened() {
    metrics::gauge!(CONNECTIONS).increment(1.0);
}

/// An API connection ended, and why.
pub fn connection_closed(reason: &'static str) {
    metrics::gauge!(CONNECTIONS).decrement(1.0);
    metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

/// An API connection refused at the cap.
pub fn connection_refused() {
    metrics::counter!(CONNECTIONS_REFUSED).increment(1);
}

/// A failed accept, by kind.
pub fn accept_failed(kind: &'static str) {
    metrics::counter!(ACCEPT_ERRORS, "kind" => kind).increment(1);
}

/// A log line found the writer's buffer full: `waited` for room or `dropped`.
pub fn log_buffer_full(action: &'static str) {
    metrics::counter!(LOG_BUFFER_FULL, "action" => action).increment(1);
}

/// Request-body bytes reserved now.
pub fn body_bytes_in_flight(bytes: usize) {
    match BODY_BYTES_GAUGE.get() {
        Some(g) => g.set(bytes as f64),
        None => metrics::gauge!(BODY_BYTES_IN_FLIGHT).set(bytes as f64),
    }
}

/// Whether the shared Redis tier is in use (`true`) or skipped after failures.
pub fn redis_up(up: bool) {
    metrics::gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

/// A shared-tier call skipped because the tier is down.
pub fn redis_skipped(operation: &'static str) {
    metrics::counter!(REDIS_SKIPPED, "operation" => operation).increment(1);
}

pub const LIMIT_REFUSALS: &str = "bedrock_proxy_limit_refusals_total";
pub const SPEND_USD: &str = "bedrock_proxy_spend_usd";
pub const BUDGET_USED: &str = "bedrock_proxy_budget_used_ratio";

/// A request refused by a limit: `scope` key, tenant or route; `reason` the
/// limit's key (`requests_per_minute`, ..., `usd_per_month`) or
/// `shared_unavailable`.
pub fn limit_refused(tenant: &std::sync::Arc<str>, scope: &'static str, reason: &'static str) {
    metrics::counter!(LIMIT_REFUSALS, "tenant" => route_label(tenant), "scope" => scope, "reason" => reason)
        .increment(1);
}

/// What answers cost, by tenant and route (`None`: unrouted): each pair's
/// gauge is made once, for the first pairs seen (see [`Memo`]; later pairs are
/// looked up in the registry each time, still counted right).
#[derive(Debug, Default)]
pub struct SpendGauges(Memo<(Arc<str>, Option<Arc<str>>), metrics::Gauge, 16>);

impl SpendGauges {
    /// Adds what an answer cost.
    pub fn add(&self, tenant: &Arc<str>, route: Option<&Arc<str>>, usd: f64) {
        if usd <= 0.0 {
            return;
        }
        self.0
            .find(
                |(t, r)| t == tenant && r.as_ref() == route,
                || {
                    let label =
                        route.map_or_else(|| SharedString::const_str(UNROUTED), route_label);
                    let gauge = metrics::gauge!(SPEND_USD, "tenant" => route_label(tenant), "route" => label);
                    ((tenant.clone(), route.cloned()), gauge)
                },
            )
            .increment(usd);
    }
}

/// A tenant's spend in its current day or month (`period`), against its budget.
pub fn budget_used(tenant: &std::sync::Arc<str>, period: &'static str, ratio: f64) {
    metrics::gauge!(BUDGET_USED, "tenant" => route_label(tenant), "period" => period).set(ratio);
}
pub const UPSTREAM_KIND_ATTEMPTS: &str = "bedrock_proxy_upstream_kind_attempts_total";
pub const USAGE_ESTIMATED: &str = "bedrock_proxy_usage_estimated_total";
pub const TARGETS_SKIPPED: &str = "bedrock_proxy_targets_skipped_total";
pub const COST_USD: &str = "bedrock_proxy_cost_usd";

/// An upstream answer whose usage the proxy estimated (the server sent none).
pub fn usage_estimated(route: &SharedString, kind: &'static str) {
    metrics::counter!(USAGE_ESTIMATED, "route" => route.clone(), "upstream_kind" => kind)
        .increment(1);
}

/// A target left out of a call's chain, and why.
pub fn target_skipped(route: &SharedString, target: &Arc<str>, reason: &'static str) {
    metrics::counter!(TARGETS_SKIPPED, "route" => route.clone(), "target" => route_label(target), "reason" => reason)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_made_once_per_name_and_stay_right_past_the_slots() {
        use std::sync::Arc;
        let route = RouteMetrics::new(&Arc::from("haiku"));
        let name: Arc<str> = Arc::from("haiku");
        let first = route.header_value(&name).unwrap();
        assert_eq!(first, "haiku");
        // Found again, by its Arc or by its text in another (a model named
        // per request): the same bytes, not a copy.
        let again = route.header_value(&name).unwrap();
        assert_eq!(again.as_bytes().as_ptr(), first.as_bytes().as_ptr());
        let same_text = route.header_value(&Arc::from("haiku")).unwrap();
        assert_eq!(same_text.as_bytes().as_ptr(), first.as_bytes().as_ptr());
        // More names than slots (a reload's, a cache entry's): each still
        // gets its own value, and a name no header can carry gets none.
        for i in 0..20 {
            let other: Arc<str> = Arc::from(format!("model-{i}"));
            assert_eq!(
                route.header_value(&other).unwrap(),
                format!("model-{i}").as_str()
            );
        }
        assert_eq!(route.header_value(&Arc::from("bad\nname")), None);
        assert_eq!(route.header_value(&name).unwrap(), "haiku");
    }

    #[test]
    fn route_handles_count_the_series_the_labels_named() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let route = RouteMetrics::new(&std::sync::Arc::from("haiku"));
        metrics::with_local_recorder(&recorder, || {
            route.request_done(Operation::Converse, 200, Duration::from_millis(3));
            route.request_done(Operation::Converse, 204, Duration::from_millis(3));
            route.request_done(Operation::ConverseStream, 429, Duration::from_millis(1));
            route.tokens(&Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            });
            route.cache_request("hit", "l2");
            route.stream_ended("client_gone");
            RouteMetrics::unrouted_ref().request_done(Operation::Invoke, 403, Duration::ZERO);
        });
        let text = handle.render();
        for line in [
            r#"bedrock_proxy_requests_total{route="haiku",operation="converse",status="2xx"} 2"#,
            r#"bedrock_proxy_requests_total{route="haiku",operation="converse-stream",status="4xx"} 1"#,
            r#"bedrock_proxy_requests_total{route="unrouted",operation="invoke",status="4xx"} 1"#,
            r#"bedrock_proxy_request_duration_seconds_count{route="haiku",operation="converse"} 2"#,
            r#"bedrock_proxy_tokens_total{route="haiku",kind="input"} 10"#,
            r#"bedrock_proxy_tokens_total{route="haiku",kind="output"} 5"#,
            r#"bedrock_proxy_cache_requests_total{route="haiku",result="hit",tier="l2"} 1"#,
            r#"bedrock_proxy_streams_total{route="haiku",outcome="client_gone"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // A series appears when it first counts, not before.
        assert!(!text.contains(r#"kind="cache_read""#), "{text}");
        assert!(!text.contains(r#"tier="l1""#), "{text}");
    }

    #[test]
    fn target_handles_count_attempts_by_outcome_and_kind_and_set_the_breaker() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let route: std::sync::Arc<str> = std::sync::Arc::from("haiku");
        let primary = TargetMetrics::new(&route, &std::sync::Arc::from("primary"));
        let fallback = TargetMetrics::new(&route, &std::sync::Arc::from("fallback1"));
        metrics::with_local_recorder(&recorder, || {
            primary.attempt("bedrock", "ok");
            primary.attempt("bedrock", "throttled");
            primary.attempt("bedrock", "throttled");
            primary.breaker_state(2.0);
            fallback.attempt("openai", "ok");
            fallback.breaker_state(0.0);
            primary.upstream_ttft(Operation::ConverseStream, Duration::from_millis(4));
        });
        let text = handle.render();
        for line in [
            r#"bedrock_proxy_upstream_attempts_total{route="haiku",target="primary",outcome="ok"} 1"#,
            r#"bedrock_proxy_upstream_attempts_total{route="haiku",target="primary",outcome="throttled"} 2"#,
            r#"bedrock_proxy_upstream_attempts_total{route="haiku",target="fallback1",outcome="ok"} 1"#,
            r#"bedrock_proxy_upstream_kind_attempts_total{route="haiku",upstream_kind="bedrock",outcome="throttled"} 2"#,
            r#"bedrock_proxy_upstream_kind_attempts_total{route="haiku",upstream_kind="openai",outcome="ok"} 1"#,
            r#"bedrock_proxy_breaker_state{route="haiku",target="primary"} 2"#,
            r#"bedrock_proxy_breaker_state{route="haiku",target="fallback1"} 0"#,
            r#"bedrock_proxy_upstream_ttft_seconds_count{route="haiku",operation="converse-stream"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn memoized_handles_keep_each_label_set_apart_even_past_their_slots() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let route = RouteMetrics::new(&std::sync::Arc::from("haiku"));
        // Four served/requested pairs, five times each, through six slots, and
        // four upstream kinds through a cost memo of four: every series must
        // count only its own.
        let pairs = [
            ("standard", "standard"),
            ("optimized", "optimized"),
            ("standard", "optimized"),
            ("optimized", "standard"),
        ];
        let kinds = ["bedrock", "simulator", "openai", "sagemaker", "bedrock"];
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..5 {
                for (tier, requested) in pairs {
                    route.served(tier, requested, Some(Duration::from_millis(20)), None);
                    route.service_tier_served("priority", requested);
                }
                for kind in kinds {
                    route.cost(kind, "tokens", 0.5);
                }
                // Seven distinct service-tier pairs: one more than the memo holds.
                for (served, requested) in [
                    ("default", "default"),
                    ("flex", "flex"),
                    ("default", "flex"),
                    ("flex", "default"),
                    ("none", "priority"),
                ] {
                    route.service_tier_served(served, requested);
                }
            }
        });
        let text = handle.render();
        for (tier, requested) in pairs {
            let line = format!(
                r#"bedrock_proxy_served_tier_total{{route="haiku",tier="{tier}",requested="{requested}"}} 5"#
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        for line in [
            r#"bedrock_proxy_ttft_seconds_count{route="haiku",tier="standard"} 10"#,
            r#"bedrock_proxy_service_tier_served_total{route="haiku",served="priority",requested="standard"} 10"#,
            r#"bedrock_proxy_service_tier_served_total{route="haiku",served="none",requested="priority"} 5"#,
            r#"bedrock_proxy_service_tier_served_total{route="haiku",served="flex",requested="default"} 5"#,
            r#"bedrock_proxy_cost_usd{route="haiku",upstream_kind="bedrock",basis="tokens"} 5"#,
            r#"bedrock_proxy_cost_usd{route="haiku",upstream_kind="sagemaker",basis="tokens"} 2.5"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
