//! A route's tier and resilience keys (`latency`, `service_tier`, `fallback`, `fallback_on`,
//! `retries`, backoff, deadlines, `hedge_after`, `breaker`): which tier it asks
//! for and what happens when a target fails. Whether a fallback's upstream
//! exists is checked with the other cross-table references in `config/mod.rs`.

use serde::Deserialize;
use std::time::Duration;

use crate::config::names::choose;
use crate::config::values::{duration_or, optional_duration};
use crate::error::ErrorKind;

named_enum! {
    /// Which latency tier a route asks Bedrock for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum LatencyPolicy {
        /// Latency-optimized wherever the catalog says it works, standard elsewhere.
        Optimized = "optimized",
        Standard = "standard",
        /// Whatever the request asked (unless the catalog says it cannot work).
        #[default]
        Client = "client",
    }
}

named_enum! {
    /// Which service tier (`serviceTier.type`) a route asks Bedrock for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum ServicePolicy {
        /// Priority wherever the catalog offers it for the model and region, default elsewhere.
        Priority = "priority",
        Default = "default",
        /// Flex wherever the catalog offers it, default elsewhere.
        Flex = "flex",
        /// Whatever the request asked (its body, InvokeModel's header, or the
        /// proxy's `x-proxy-service-tier` request header), unless the catalog
        /// says it cannot work.
        #[default]
        Client = "client",
    }
}

/// One step of a fallback chain: what changes from the route's primary target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FallbackTarget {
    pub upstream: Option<String>,
    pub model: Option<String>,
    pub latency: Option<LatencyPolicy>,
    pub service_tier: Option<ServicePolicy>,
}

/// When a target is taken out of rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure share over `window` that opens it (with at least `min_requests`).
    pub error_rate: f64,
    pub window: Duration,
    pub min_requests: u32,
    /// How long it stays open before one probe request is let through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            error_rate: 0.5,
            window: Duration::from_secs(30),
            min_requests: 20,
            open_for: Duration::from_secs(30),
        }
    }
}

/// A route's latency and resilience policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ResilienceConfig {
    pub latency: LatencyPolicy,
    pub service_tier: ServicePolicy,
    pub fallback: Vec<FallbackTarget>,
    /// Error kinds that move on to a retry or the next target.
    pub fallback_on: Vec<ErrorKind>,
    /// Retries on the same target before moving on.
    pub retries: u32,
    /// Base and cap of the jittered exponential backoff between retries.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// One deadline for every attempt together; default: the upstream's total timeout.
    pub deadline: Option<Duration>,
    /// Per attempt, until the response headers (or a stream's first event);
    /// default: the upstream's `first_byte_timeout`.
    pub first_byte_timeout: Option<Duration>,
    /// Start the next target when the current one sent nothing for this long.
    pub hedge_after: Option<Duration>,
    pub breaker: BreakerConfig,
}

/// Error kinds that fall back unless a route says otherwise.
pub const DEFAULT_FALLBACK_ON: &[ErrorKind] = &[
    ErrorKind::Throttled,
    ErrorKind::Unavailable,
    ErrorKind::Timeout,
    ErrorKind::Unsupported,
    ErrorKind::ModelNotReady,
    ErrorKind::Internal,
];

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            latency: LatencyPolicy::default(),
            service_tier: ServicePolicy::default(),
            fallback: Vec::new(),
            fallback_on: DEFAULT_FALLBACK_ON.to_vec(),
            retries: 0,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: None,
            first_byte_timeout: None,
            hedge_after: None,
            breaker: BreakerConfig::default(),
        }
    }
}

/// The resilience keys of one `[[routes]]` entry (they sit in the route's own
/// table, so `RawRoute` holds them and hands them over).
pub(super) struct RawResilience {
    pub latency: Option<String>,
    pub service_tier: Option<String>,
    pub fallback: Vec<RawFallback>,
    pub fallback_on: Option<Vec<String>>,
    pub retries: Option<u32>,
    pub backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub deadline: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub hedge_after: Option<String>,
    pub breaker: Option<RawBreaker>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFallback {
    upstream: Option<String>,
    model: Option<String>,
    latency: Option<String>,
    service_tier: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    consecutive_failures: Option<u32>,
    error_rate: Option<f64>,
    window: Option<String>,
    min_requests: Option<u32>,
    open_for: Option<String>,
}

pub(super) fn validate(
    route_key: &str,
    raw: RawResilience,
    e: &mut Vec<String>,
) -> ResilienceConfig {
    let d = ResilienceConfig::default();
    let key = |field: &str| format!("{route_key}.{field}");
    ResilienceConfig {
        latency: raw
            .latency
            .and_then(|v| choose(&key("latency"), &v, LatencyPolicy::NAMES, e))
            .unwrap_or(d.latency),
        service_tier: raw
            .service_tier
            .and_then(|v| choose(&key("service_tier"), &v, ServicePolicy::NAMES, e))
            .unwrap_or(d.service_tier),
        fallback: raw
            .fallback
            .into_iter()
            .enumerate()
            .map(|(i, f)| fallback(&key(&format!("fallback[{i}]")), f, e))
            .collect(),
        fallback_on: raw
            .fallback_on
            .map(|labels| fallback_on(&key("fallback_on"), &labels, e))
            .unwrap_or(d.fallback_on),
        retries: raw.retries.unwrap_or(d.retries),
        backoff: duration_or(&key("backoff"), raw.backoff, d.backoff, e),
        max_backoff: duration_or(&key("max_backoff"), raw.max_backoff, d.max_backoff, e),
        deadline: optional_duration(&key("deadline"), raw.deadline, e).or(d.deadline),
        first_byte_timeout: optional_duration(
            &key("first_byte_timeout"),
            raw.first_byte_timeout,
            e,
        )
        .or(d.first_byte_timeout),
        hedge_after: optional_duration(&key("hedge_after"), raw.hedge_after, e).or(d.hedge_after),
        breaker: breaker(&key("breaker"), raw.breaker.unwrap_or_default(), e),
    }
}

fn fallback(key: &str, raw: RawFallback, e: &mut Vec<String>) -> FallbackTarget {
    if raw.upstream.is_none()
        && raw.model.is_none()
        && raw.latency.is_none()
        && raw.service_tier.is_none()
    {
        e.push(format!(
            "{key}: give at least one of upstream, model, latency, service_tier"
        ));
    }
    FallbackTarget {
        upstream: raw.upstream,
        model: raw.model,
        latency: raw
            .latency
            .and_then(|v| choose(&format!("{key}.latency"), &v, LatencyPolicy::NAMES, e)),
        service_tier: raw
            .service_tier
            .and_then(|v| choose(&format!("{key}.service_tier"), &v, ServicePolicy::NAMES, e)),
    }
}

/// The kinds named in `fallback_on`: only the upstream's failures may be named
/// (a client's own mistake would fail the same way on every target).
fn fallback_on(key: &str, labels: &[String], e: &mut Vec<String>) -> Vec<ErrorKind> {
    let allowed: Vec<(ErrorKind, &str)> = ErrorKind::ALL
        .into_iter()
        .filter(|k| k.can_fall_back())
        .map(|k| (k, k.label()))
        .collect();
    labels
        .iter()
        .filter_map(|label| choose(key, label, &allowed, e))
        .collect()
}

fn breaker(key: &str, raw: RawBreaker, e: &mut Vec<String>) -> BreakerConfig {
    let d = BreakerConfig::default();
    let breaker = BreakerConfig {
        // 0 would open the breaker before any failure; read it as 1.
        consecutive_failures: raw
            .consecutive_failures
            .unwrap_or(d.consecutive_failures)
            .max(1),
        error_rate: raw.error_rate.unwrap_or(d.error_rate),
        window: duration_or(&format!("{key}.window"), raw.window, d.window, e),
        min_requests: raw.min_requests.unwrap_or(d.min_requests).max(1),
        open_for: duration_or(&format!("{key}.open_for"), raw.open_for, d.open_for, e),
    };
    if !(0.0..=1.0).contains(&breaker.error_rate) || breaker.error_rate == 0.0 {
        e.push(format!("{key}.error_rate: must be in (0, 1]"));
    }
    breaker
}
