//! The outputs of a finished request beyond Prometheus and the access log: its
//! trace span closed with what it turned out to be, and its CloudWatch EMF
//! line. Both are built from the same [`Finish`], once, when the answer is
//! complete (a stream: when it ends); with neither on, nothing is computed.

use bedrock_wire::converse::{Summary, Usage};
use bedrock_wire::tier::LatencyTier;

use super::Finish;
use crate::answer::CacheStatus;
use crate::error::ProxyError;
use crate::metrics;
use crate::stream::StreamEnd;
use crate::telemetry::RequestEnd;

/// How a request ended, as the report needs it.
pub(super) struct Ending<'a> {
    status: u16,
    outcome: &'a str,
    summary: Option<&'a Summary>,
    error: Option<&'a ProxyError>,
    streamed: bool,
    /// A whole answer, or a stream that ended well: its speed is known.
    complete: bool,
}

impl<'a> Ending<'a> {
    pub(super) fn answered(summary: &'a Summary) -> Ending<'a> {
        Ending {
            status: 200,
            outcome: "ok",
            summary: Some(summary),
            error: None,
            streamed: false,
            complete: true,
        }
    }

    pub(super) fn failed(e: &'a ProxyError) -> Ending<'a> {
        Ending {
            status: e.status().as_u16(),
            outcome: e.kind.label(),
            summary: None,
            error: Some(e),
            streamed: false,
            complete: false,
        }
    }

    pub(super) fn streamed(summary: &'a Summary, outcome: &'a str, end: &StreamEnd) -> Ending<'a> {
        Ending {
            status: 200,
            outcome,
            summary: Some(summary),
            error: None,
            streamed: true,
            complete: matches!(end, StreamEnd::Complete),
        }
    }
}

impl Finish {
    /// Closes the request's span and writes its EMF line.
    pub(super) fn report(&self, end: &Ending<'_>) {
        let emf = metrics::emf::enabled();
        if !self.trace.is_on() && !emf {
            return;
        }
        let record = &self.record;
        let served = end.summary.and_then(|s| s.latency_tier);
        let tier = self.tier(served);
        let usage = end.summary.and_then(|s| s.usage.as_ref());
        let upstream_answer = record.attempts > 0 && !record.cache.is_hit();
        let (ttft, tps) = match end.summary {
            Some(summary) if upstream_answer && end.complete => {
                self.speed(summary, end.streamed, tokio::time::Instant::now())
            }
            _ => (None, None),
        };
        let price = self
            .model
            .as_ref()
            .map(|m| m.price_for(served.map(LatencyTier::name)));
        let billed = |usage: &Usage| price.as_ref().map(|p| p.cost(usage));
        let cost_usd = usage.filter(|_| upstream_answer).and_then(billed);
        let saved_usd = usage.filter(|_| record.cache.is_hit()).and_then(billed);
        let route = self.route.as_deref();
        self.trace.end(&RequestEnd {
            status: end.status,
            error: end.error.map(|e| (e.kind.label(), e.message.as_str())),
            outcome: end.outcome,
            route,
            tenant: self.tenant.as_deref(),
            cache: record.cache.header(),
            cache_tier: match record.cache {
                CacheStatus::Hit { tier, .. } => Some(tier.label()),
                _ => None,
            },
            attempts: record.attempts,
            target: record.target.as_deref(),
            tier_requested: Some(self.tier_requested().name()),
            tier_served: served.map(LatencyTier::name),
            usage,
            stop_reason: end.summary.and_then(|s| s.stop_reason.as_deref()),
            ttft: ttft.or_else(|| self.answered_at.map(|t| t.duration_since(self.started))),
            streamed: end.streamed,
            cost_usd,
        });
        if emf {
            metrics::emf::request(&metrics::emf::Request {
                route: route.unwrap_or(metrics::UNROUTED),
                tier: tier.name(),
                operation: self.op.name(),
                status: end.status,
                cache: record.cache.header(),
                request_id: &self.request_id,
                tenant: self.tenant.as_deref(),
                attempts: record.attempts,
                target: record.target.as_deref(),
                trace_id: self.trace.trace_id(),
                duration: self.started.elapsed(),
                ttft,
                output_tokens_per_second: tps,
                usage,
                cost_usd,
                saved_usd,
            });
        }
    }
}
