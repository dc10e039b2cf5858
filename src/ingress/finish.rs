//! The books of one request: the proxy's response headers, and the metrics and
//! access-log line written once the answer is complete (for a stream, when it
//! ends), from the call's [`Record`].

use axum::http::{HeaderMap, HeaderValue};
use bedrock_wire::converse::Summary;
use bedrock_wire::operation::Operation;
use bedrock_wire::tier::LatencyTier;
use std::sync::Arc;
use tokio::time::Instant;

use crate::answer::{CacheStatus, Record};
use crate::catalog::ModelInfo;
use crate::error::ProxyError;
use crate::metrics;
use crate::stream::{RelayedFrame, StreamEnd, StreamObserver, StreamReader};

/// Per-request bookkeeping every ingress shares: the proxy's response headers,
/// and the metrics and access-log line written once the answer is complete
/// (for a stream, when it ends).
#[derive(Debug, Clone)]
pub struct Finish {
    pub request_id: String,
    pub started: Instant,
    pub op: Operation,
    pub route: Option<Arc<str>>,
    pub tenant: Option<Arc<str>>,
    /// The latency tier the client's request asked for.
    pub requested_tier: Option<LatencyTier>,
    /// What the pipeline did (attempts, cache outcome, the answering target).
    pub record: Record,
    /// When the answer's first byte was ready to send.
    pub answered_at: Option<Instant>,
    /// The upstream model's catalog entry (prices, for what a cache hit saved).
    pub model: Option<Arc<ModelInfo>>,
}

impl Finish {
    pub fn new(request_id: String, started: Instant) -> Finish {
        Finish {
            request_id,
            started,
            op: Operation::Converse,
            route: None,
            tenant: None,
            requested_tier: None,
            record: Record::default(),
            answered_at: None,
            model: None,
        }
    }

    fn route_label(&self) -> metrics::SharedString {
        match &self.route {
            Some(name) => metrics::route_label(name),
            None => metrics::SharedString::const_str(metrics::UNROUTED),
        }
    }

    /// Adds `x-proxy-route`, `x-proxy-attempts` and, for answers,
    /// `x-proxy-latency-tier` (the tier that served the request when known, else
    /// the one asked for, else `standard`).
    pub fn headers(&self, headers: &mut HeaderMap, served_tier: Option<LatencyTier>) {
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        if let Some(route) = &self.route {
            set("x-proxy-route", route);
        }
        let record = &self.record;
        set("x-proxy-attempts", &record.attempts.to_string());
        set("x-request-id", &self.request_id);
        set("x-cache", record.cache.header());
        if record.attempts > 0 {
            set("x-proxy-cache-points", &record.cache_points.to_string());
        }
        if let CacheStatus::Hit { age, .. } = record.cache {
            set("age", &age.as_secs().to_string());
        }
        if record.attempts > 0 || record.cache.is_hit() {
            set("x-proxy-latency-tier", self.tier(served_tier).name());
        }
    }

    /// The tier an answer is reported as served by: what Bedrock said when it
    /// said, else what the answering attempt asked for, else what the client
    /// asked for, else `standard`.
    fn tier(&self, served: Option<LatencyTier>) -> LatencyTier {
        served
            .or(self.record.tier_sent)
            .or(self.requested_tier)
            .unwrap_or(LatencyTier::Standard)
    }

    /// Takes in what the pipeline did: attempts, cache outcome, the tier the
    /// answering attempt asked for.
    pub fn record(&mut self, record: Record) {
        self.record = record;
        self.answered_at = Some(Instant::now());
    }

    /// Records the tier that served an upstream answer with its TTFT and output
    /// speed (streams: tokens over the time after the first byte; whole answers:
    /// tokens over the whole request, AWS's definition).
    fn served(&self, route: &metrics::SharedString, summary: &Summary, streamed: bool) {
        if self.record.cache.is_hit() || self.record.attempts == 0 {
            return;
        }
        let tier = self.tier(summary.latency_tier).name();
        let ttft = self.answered_at.map(|t| t.duration_since(self.started));
        let output = summary.usage.map_or(0, |u| u.output_tokens) as f64;
        let span = if streamed {
            self.answered_at.map(|t| t.elapsed())
        } else {
            Some(self.started.elapsed())
        };
        let tps = span
            .filter(|d| !d.is_zero() && output > 0.0)
            .map(|d| output / d.as_secs_f64());
        metrics::served(route, tier, ttft, tps);
    }

    /// Counts what an answer cost: billed tokens for upstream answers, tokens
    /// and dollars saved for cache hits (at the original answer's price).
    fn account(&self, route: &metrics::SharedString, summary: &Summary) {
        let Some(usage) = &summary.usage else { return };
        if self.record.cache.is_hit() {
            let usd = self.model.as_ref().map_or(0.0, |m| {
                m.price_for(summary.latency_tier.map(LatencyTier::name))
                    .cost(usage)
            });
            metrics::cache_saved(route, usage, usd);
        } else {
            metrics::tokens(route, usage);
            if usage.cache_read_input_tokens + usage.cache_write_input_tokens > 0 {
                let (label, saved) = match &self.model {
                    Some(m) => {
                        let price = m.price_for(summary.latency_tier.map(LatencyTier::name));
                        (m.id.as_str(), price.prompt_cache_savings(usage))
                    }
                    None => ("unknown", 0.0),
                };
                let tenant = self.tenant.as_deref().unwrap_or("-");
                metrics::prompt_cache_usage(route, label, tenant, usage, saved);
            }
        }
    }

    /// Tells the answering attempt's planner what a complete answer reported.
    fn settle(&self, summary: &Summary) {
        if self.record.cache.is_hit() {
            return;
        }
        if let Some(settle) = &self.record.settle {
            settle.0.settle(summary);
        }
    }

    fn log(&self, status: u16, outcome: &str, summary: Option<&Summary>) {
        let usage = summary.and_then(|s| s.usage).unwrap_or_default();
        tracing::info!(
            target: "access",
            request_id = %self.request_id,
            tenant = self.tenant.as_deref().unwrap_or("-"),
            route = self.route.as_deref().unwrap_or("-"),
            operation = self.op.name(),
            status,
            cache = self.record.cache.header(),
            outcome,
            attempts = self.record.attempts,
            target = self.record.target.as_deref().unwrap_or("-"),
            tier = summary
                .and_then(|s| s.latency_tier)
                .map_or("-", LatencyTier::name),
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            cache_read_tokens = usage.cache_read_input_tokens,
            cache_write_tokens = usage.cache_write_input_tokens,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
        );
    }

    /// A whole answer was sent.
    pub fn whole(&self, summary: &Summary) {
        let route = self.route_label();
        self.account(&route, summary);
        self.settle(summary);
        self.served(&route, summary, false);
        metrics::request_done(&route, self.op, 200, self.started.elapsed());
        self.log(200, "ok", Some(summary));
    }

    /// An error response was sent.
    pub fn error(&self, e: &ProxyError) {
        let status = e.status().as_u16();
        if self.route.is_none() {
            metrics::rejected(e.kind.label());
        }
        metrics::request_done(&self.route_label(), self.op, status, self.started.elapsed());
        tracing::info!(target: "access", request_id = %self.request_id, error = %e, "request failed");
        self.log(status, e.kind.label(), None);
    }

    /// The observer that finishes the books when a stream ends.
    pub fn stream_observer(&self) -> FinishStream {
        FinishStream {
            finish: self.clone(),
            reader: StreamReader::default(),
        }
    }
}

/// Reads a stream as it passes and writes metrics and the access log at its end.
pub struct FinishStream {
    finish: Finish,
    pub reader: StreamReader,
}

impl StreamObserver for FinishStream {
    fn frame(&mut self, frame: &RelayedFrame) {
        self.reader.read(frame);
    }

    fn end(&mut self, end: StreamEnd) {
        let route = self.finish.route_label();
        let outcome = match &end {
            StreamEnd::Complete => "complete",
            StreamEnd::Failed(_) => "upstream_error",
            StreamEnd::ClientGone => "client_gone",
        };
        if let StreamEnd::Failed(e) = &end {
            metrics::upstream_error(&route, e.kind);
        }
        self.finish.account(&route, &self.reader.summary);
        if matches!(end, StreamEnd::Complete) {
            self.finish.settle(&self.reader.summary);
            self.finish.served(&route, &self.reader.summary, true);
        }
        metrics::stream_ended(&route, outcome);
        metrics::request_done(&route, self.finish.op, 200, self.finish.started.elapsed());
        self.finish.log(200, outcome, Some(&self.reader.summary));
    }
}
