//! `[routes.cache]` (or `cache = { ... }` in a route): when a route's answers
//! are stored and how they are replayed. The tiers themselves are `[cache]`.

use serde::Deserialize;
use std::time::Duration;

use crate::config::names::choose;
use crate::config::values::duration_or;

named_enum! {
    /// When a route's answers are cached.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum CacheMode {
        #[default]
        Off = "off",
        /// Only requests with temperature explicitly 0.
        Deterministic = "deterministic",
        /// Every request (the operator accepts reuse of sampled answers).
        Always = "always",
    }
}

named_enum! {
    /// How a cached stream is replayed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum Replay {
        /// All events at once.
        #[default]
        Instant = "instant",
        /// With the original gaps between events.
        Paced = "paced",
    }
}

/// A route's response-cache policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCacheConfig {
    pub mode: CacheMode,
    pub ttl: Duration,
    /// Share entries across tenants (by default each tenant has its own).
    pub shared: bool,
    pub replay: Replay,
    /// Stop reasons whose answers are stored.
    pub stop_reasons: Vec<String>,
}

/// A route without a `cache` table: nothing is cached.
impl Default for RouteCacheConfig {
    fn default() -> Self {
        RouteCacheConfig {
            mode: CacheMode::default(),
            ttl: Duration::from_secs(3600),
            shared: false,
            replay: Replay::default(),
            stop_reasons: DEFAULT_CACHED_STOP_REASONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

impl RouteCacheConfig {
    /// A route whose `cache` table sets no `mode`: writing the table turns the
    /// cache on for the answers that are safe to reuse (temperature 0); every
    /// other key keeps its default.
    pub(crate) fn enabled() -> Self {
        RouteCacheConfig {
            mode: CacheMode::Deterministic,
            ..RouteCacheConfig::default()
        }
    }
}

/// Answers that ended like this are complete and worth reusing.
pub const DEFAULT_CACHED_STOP_REASONS: &[&str] = &[
    "end_turn",
    "stop_sequence",
    "max_tokens",
    "tool_use",
    "stop",
    "length",
];

/// Stop reasons never cached, whatever a route says: a guardrail or a content
/// filter stepped in, so the answer is not the model's.
pub const NEVER_CACHED_STOP_REASONS: &[&str] = &["guardrail_intervened", "content_filtered"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouteCache {
    mode: Option<String>,
    ttl: Option<String>,
    shared: Option<bool>,
    replay: Option<String>,
    stop_reasons: Option<Vec<String>>,
}

pub(super) fn validate(
    route_key: &str,
    raw: Option<RawRouteCache>,
    e: &mut Vec<String>,
) -> RouteCacheConfig {
    let Some(raw) = raw else {
        return RouteCacheConfig::default();
    };
    let key = format!("{route_key}.cache");
    let d = RouteCacheConfig::enabled();
    let mode = raw
        .mode
        .and_then(|v| choose(&format!("{key}.mode"), &v, CacheMode::NAMES, e))
        .unwrap_or(d.mode);
    let replay = raw
        .replay
        .and_then(|v| choose(&format!("{key}.replay"), &v, Replay::NAMES, e))
        .unwrap_or(d.replay);
    let stop_reasons = raw.stop_reasons.unwrap_or(d.stop_reasons);
    for reason in &stop_reasons {
        if NEVER_CACHED_STOP_REASONS.contains(&reason.as_str()) {
            e.push(format!(
                "{key}.stop_reasons: `{reason}` answers are never cached"
            ));
        }
    }
    let ttl = duration_or(&format!("{key}.ttl"), raw.ttl, d.ttl, e);
    if ttl.is_zero() {
        e.push(format!("{key}.ttl: must be more than 0"));
    }
    RouteCacheConfig {
        mode,
        ttl,
        shared: raw.shared.unwrap_or(d.shared),
        replay,
        stop_reasons,
    }
}
