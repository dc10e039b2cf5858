//! What the pipeline hands back, shared by every stage that touches an answer
//! (the single-flight that relays it, the upstream chain that fetches it, the
//! cache that replays it, the ingress that renders it): the [`Answer`] itself,
//! and the one [`Record`] of what happened to the call on its way.
//!
//! Nothing here does work; it sits at the bottom of the module graph so the
//! stages above can share these types without importing each other.

use axum::http::HeaderMap;
use bedrock_wire::converse::Summary;
use bedrock_wire::tier::{LatencyTier, ServiceTier};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

use crate::config::UpstreamKind;
use crate::stream::FrameStream;

/// What the pipeline answers with.
pub enum Answer {
    /// A complete (non-streamed) answer.
    Whole {
        headers: HeaderMap,
        body: Bytes,
        summary: Summary,
    },
    /// A stream whose first frame has arrived.
    Stream {
        headers: HeaderMap,
        frames: FrameStream,
        /// The same frames already back to back, when they are all at hand (a
        /// cache hit replayed at once): a client that takes Bedrock's frames
        /// as they are gets them in one write, and `frames` is never read.
        joined: Option<Bytes>,
    },
}

/// Where a cache hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheTier {
    /// This process's memory.
    L1,
    /// The shared Redis tier.
    L2,
    /// Another request's upstream call, in flight.
    Flight,
}

impl CacheTier {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CacheTier::L1 => "l1",
            CacheTier::L2 => "l2",
            CacheTier::Flight => "flight",
        }
    }
}

/// What the response cache did for a request (`x-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheStatus {
    /// Not cacheable (route mode, temperature, `no-store`, operation).
    #[default]
    Bypass,
    /// Looked up (or `no-cache`), not found: answered by its own upstream call.
    Miss,
    Hit {
        tier: CacheTier,
        age: Duration,
    },
}

impl CacheStatus {
    /// The `x-cache` header value (also the metric label).
    pub fn header(self) -> &'static str {
        match self {
            CacheStatus::Bypass => "bypass",
            CacheStatus::Miss => "miss",
            CacheStatus::Hit { .. } => "hit",
        }
    }

    pub fn is_hit(self) -> bool {
        matches!(self, CacheStatus::Hit { .. })
    }
}

/// Told what a complete upstream answer reported about itself (its usage),
/// once: the prompt-cache planner learns from it this way without the ingress
/// knowing the planner.
pub trait UsageSink: Send + Sync {
    fn settle(&self, summary: &Summary);
}

/// The sink of the attempt that answered.
#[derive(Clone)]
pub struct Settle(pub Arc<dyn UsageSink>);

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settle")
    }
}

/// What happened to one call: the upstream chain fills in its attempts and
/// the target that answered, the pipeline the cache outcome; the ingress reads
/// it for the response headers, the metrics and the access log. A single-flight
/// hands its leader's record to the request that started it.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Upstream attempts made (0 for cache hits).
    pub attempts: u32,
    pub cache: CacheStatus,
    /// cachePoint blocks the planner added to the attempt that answered.
    pub cache_points: u32,
    /// The latency tier the answering attempt asked for (`None`: the client's
    /// request as sent, without one).
    pub tier_sent: Option<LatencyTier>,
    /// The service tier the answering attempt asked for (`None`: as the
    /// client sent it).
    pub service_tier_sent: Option<ServiceTier>,
    /// The target that answered (`primary`, `fallback1`, ...).
    pub target: Option<Arc<str>>,
    /// The answering target is a fallback to another model than the route's.
    pub other_model: bool,
    /// Who served the answer (for cache hits, who served the stored answer):
    /// `x-proxy-upstream`, `x-proxy-served-model`.
    pub served_by: Option<ServedBy>,
    /// Where the answering attempt's usage goes once the answer is complete.
    pub settle: Option<Settle>,
    /// A streamed cache hit's stored summary (usage, stop reason, tiers):
    /// what reading its frames again would find, so they are not read.
    /// Boxed: a record is moved through every stage of a request, and most
    /// requests have none (it would be half the record's size).
    pub stored_summary: Option<Box<Summary>>,
}

/// The upstream and model that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy {
    /// The upstream's config name.
    pub upstream: Arc<str>,
    pub kind: UpstreamKind,
    /// The model (for SageMaker, the endpoint) it was asked for.
    pub model: Arc<str>,
}

impl Record {
    /// Adds one attempt's record to the call's, keeping the answering target's
    /// details when this attempt answered.
    pub fn absorb(&mut self, attempt: Record) {
        self.attempts += attempt.attempts;
        if attempt.target.is_some() {
            self.target = attempt.target;
            self.tier_sent = attempt.tier_sent;
            self.service_tier_sent = attempt.service_tier_sent;
            self.cache_points = attempt.cache_points;
            self.other_model = attempt.other_model;
            self.served_by = attempt.served_by;
            self.settle = attempt.settle;
        }
    }
}
