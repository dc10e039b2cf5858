//! The books of one request: the proxy's response headers (rate-limit headers
//! included), and the metrics, access-log line, trace span, EMF line and
//! limits' settlement done once the answer is complete (for a stream, when it
//! ends), from the call's [`Record`].

mod report;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use bedrock_wire::catalog::Price;
use bedrock_wire::converse::Summary;
use bedrock_wire::operation::Operation;
use bedrock_wire::tier::{LatencyTier, ServiceTier};
use std::sync::Arc;
use tokio::time::Instant;

use crate::access_log::{self, AccessLine};
use crate::answer::{CacheStatus, Record};
use crate::catalog::{Catalog, ModelInfo};
use crate::config::HourlyCost;
use crate::error::ProxyError;
use crate::limits::{Outcome, RateHeaders, Ticket};
use crate::metrics;
use crate::runtime::Runtime;
use crate::stream::{RelayedFrame, StreamEnd, StreamObserver, StreamReader};
use crate::telemetry::{Trace, Transcript};

/// Per-request bookkeeping every ingress shares: the proxy's response headers,
/// and the metrics and access-log line written once the answer is complete
/// (for a stream, when it ends).
#[derive(Debug, Clone)]
pub struct Finish {
    pub request_id: Arc<str>,
    pub started: Instant,
    pub op: Operation,
    pub route: Option<Arc<str>>,
    /// The route's metric handles, once routed (see [`Finish::route_metrics`]).
    pub routed_metrics: Option<Arc<metrics::RouteMetrics>>,
    pub tenant: Option<Arc<str>>,
    /// The latency tier the client's request asked for.
    pub requested_tier: Option<LatencyTier>,
    /// What the pipeline did (attempts, cache outcome, the answering target).
    pub record: Record,
    /// When the answer's first byte was ready to send.
    pub answered_at: Option<Instant>,
    /// The upstream model's catalog entry (prices, for what a cache hit saved).
    pub model: Option<Arc<ModelInfo>>,
    /// What the limits' admission took (settled when the answer ends) and
    /// where the limits stand, for the rate-limit headers.
    pub limits: Ticket,
    /// Which rate-limit header names the API's clients read.
    pub rate_headers: RateHeaders,
    /// Answer with `Connection: close`: a request refused before its body was
    /// read leaves the body unread on an HTTP/1.1 connection.
    pub close_connection: bool,
    /// The request's span (nothing when tracing is off).
    pub trace: Trace,
    /// The tier the route wants for this request: its latency policy applied
    /// to `requested_tier` (`latency::wanted`).
    pub wanted_tier: Option<LatencyTier>,
    /// What the answering target charges.
    pub pricing: Pricing,
    /// The service tier the client's request asked for (its body, InvokeModel's
    /// header, or the proxy's `x-proxy-service-tier` request header).
    pub requested_service_tier: Option<ServiceTier>,
    /// The service tier the route wants: its policy applied to the client's ask.
    pub wanted_service_tier: Option<ServiceTier>,
    /// What the answer says served it, read before its headers are written
    /// (a whole answer's body, a stream's response headers).
    pub answer_service_tier: Option<ServiceTier>,
    /// The model a prompt router chose, when a whole answer says.
    pub invoked_model: Option<String>,
    /// The catalog, for the model a prompt router chose (prices, metric label).
    pub catalog: Option<Arc<Catalog>>,
}

/// What an upstream answer costs: the catalog's prices for the model that
/// answered, a self-hosted upstream's price per hour, or nothing known.
#[derive(Debug, Clone, Default)]
pub enum Pricing {
    #[default]
    Unknown,
    Tokens(Arc<ModelInfo>),
    /// A prompt router: the catalog's prices for the model it chose.
    Router,
    Hourly(HourlyCost),
}

impl Pricing {
    /// The pricing of the target that answered `record`: its upstream's
    /// `usd_per_hour` when it has one, else the catalog's prices for its model.
    pub fn of(rt: &Runtime, record: &Record) -> Pricing {
        let Some(served) = &record.served_by else {
            return Pricing::Unknown;
        };
        let hourly = rt
            .upstreams
            .get(&served.upstream)
            .and_then(|u| u.config.hourly);
        match (hourly, rt.catalog.get(&served.model)) {
            (Some(h), _) => Pricing::Hourly(h),
            (None, Some(lookup)) => Pricing::Tokens(lookup.model.clone()),
            (None, None) if rt.catalog.router(&served.model).is_some() => Pricing::Router,
            (None, None) => Pricing::Unknown,
        }
    }

    /// Dollars for an answer with `usage`, at the token `price` of the model
    /// and tiers that served it, that held its upstream for `held` (an hourly
    /// price is shared by the requests the deployment serves at once).
    fn usd(
        &self,
        usage: &bedrock_wire::converse::Usage,
        price: Option<Price>,
        held: std::time::Duration,
    ) -> Option<(&'static str, f64)> {
        match self {
            Pricing::Unknown => None,
            Pricing::Tokens(_) | Pricing::Router => price.map(|p| ("tokens", p.cost(usage))),
            Pricing::Hourly(h) => Some((
                "hourly",
                h.usd_per_hour / 3600.0 * held.as_secs_f64() / f64::from(h.concurrency),
            )),
        }
    }
}

impl Finish {
    /// The route's metric handles (the `unrouted` ones until routed; those
    /// are borrowed, not counted: every request would touch one shared count).
    pub fn route_metrics(&self) -> &Arc<metrics::RouteMetrics> {
        self.routed_metrics
            .as_ref()
            .unwrap_or_else(|| metrics::RouteMetrics::unrouted_ref())
    }

    pub fn new(request_id: Arc<str>, started: Instant) -> Finish {
        Finish {
            request_id,
            started,
            op: Operation::Converse,
            route: None,
            routed_metrics: None,
            tenant: None,
            requested_tier: None,
            record: Record::default(),
            answered_at: None,
            model: None,
            limits: Ticket::default(),
            rate_headers: RateHeaders::default(),
            close_connection: false,
            trace: Trace::off(),
            wanted_tier: None,
            pricing: Pricing::Unknown,
            requested_service_tier: None,
            wanted_service_tier: None,
            answer_service_tier: None,
            invoked_model: None,
            catalog: None,
        }
    }

    /// Adds `x-proxy-route`, `x-proxy-attempts` and, for answers,
    /// `x-proxy-latency-tier` (the tier that served the request when known, else
    /// the one asked for, else `standard`), `x-proxy-service-tier` (likewise,
    /// else `default`; Bedrock upstreams only), `x-proxy-invoked-model` (the
    /// model a prompt router chose, when the answer said so before its
    /// headers: whole answers), `x-proxy-upstream` and
    /// `x-proxy-served-model` (who served it; for a cache hit, who served the
    /// stored answer).
    pub fn headers(&self, headers: &mut HeaderMap, served_tier: Option<LatencyTier>) {
        // Names made at compile time and fixed values taken as they are: a
        // header name given as a `&str` is parsed again on every insert.
        const ROUTE: HeaderName = HeaderName::from_static("x-proxy-route");
        const ATTEMPTS: HeaderName = HeaderName::from_static("x-proxy-attempts");
        const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
        const CACHE: HeaderName = HeaderName::from_static("x-cache");
        const CACHE_POINTS: HeaderName = HeaderName::from_static("x-proxy-cache-points");
        const LATENCY_TIER: HeaderName = HeaderName::from_static("x-proxy-latency-tier");
        const SERVICE_TIER: HeaderName = HeaderName::from_static("x-proxy-service-tier");
        const INVOKED_MODEL: HeaderName = HeaderName::from_static("x-proxy-invoked-model");
        const UPSTREAM: HeaderName = HeaderName::from_static("x-proxy-upstream");
        const SERVED_MODEL: HeaderName = HeaderName::from_static("x-proxy-served-model");
        fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
        // Attempts and cache points are nearly always one digit: those values
        // are static, not formatted into a new buffer per response.
        fn count(n: u64) -> HeaderValue {
            const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
            usize::try_from(n)
                .ok()
                .and_then(|i| DIGITS.get(i))
                .map_or_else(|| HeaderValue::from(n), |d| HeaderValue::from_static(d))
        }
        // The route's names are made into values once (see
        // `RouteMetrics::header_value`); the request id is new every time.
        let named = |headers: &mut HeaderMap, name: HeaderName, value: &Arc<str>| {
            if let Some(v) = self.route_metrics().header_value(value) {
                headers.insert(name, v);
            }
        };
        if let Some(route) = &self.route {
            named(headers, ROUTE, route);
        }
        let record = &self.record;
        headers.insert(ATTEMPTS, count(record.attempts.into()));
        set(headers, REQUEST_ID, &self.request_id);
        headers.insert(CACHE, HeaderValue::from_static(record.cache.header()));
        if record.attempts > 0 {
            headers.insert(CACHE_POINTS, count(record.cache_points.into()));
        }
        if let CacheStatus::Hit { age, .. } = record.cache {
            headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
        }
        if record.attempts > 0 || record.cache.is_hit() {
            let tier = self.tier(served_tier).name();
            headers.insert(LATENCY_TIER, HeaderValue::from_static(tier));
            if let Some(tier) = self.service_tier(None) {
                headers.insert(SERVICE_TIER, HeaderValue::from_static(tier.name()));
            }
            if let Some(model) = &self.invoked_model {
                set(headers, INVOKED_MODEL, model);
            }
        }
        if let Some(served) = &record.served_by {
            named(headers, UPSTREAM, &served.upstream);
            named(headers, SERVED_MODEL, &served.model);
        }
        if self.close_connection {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        self.limits.view.write(self.rate_headers, headers);
    }

    /// Settles the limits' counters with what the answer used (`None`: it did
    /// not say), at the price of the tier that served it.
    fn settle(&self, usage: Option<&bedrock_wire::converse::Usage>, summary: &Summary) {
        let price = self
            .invoked(summary)
            .or_else(|| self.model.clone())
            .map(|m| self.price_at(&m, summary));
        self.limits.settle(match usage {
            Some(usage) => Outcome::Answered {
                usage: *usage,
                price,
                cache_hit: self.record.cache.is_hit(),
            },
            None => Outcome::Unknown { price },
        });
    }

    /// The tier an answer is reported as served by: what Bedrock said when it
    /// said, else what the answering attempt asked for, else what the client
    /// asked for, else `standard`.
    fn tier(&self, served: Option<LatencyTier>) -> LatencyTier {
        // Latency tiers are Bedrock's; anything else served at its only speed.
        if let Some(s) = &self.record.served_by {
            if !s.kind.is_bedrock() {
                return LatencyTier::Standard;
            }
        }
        served
            .or(self.record.tier_sent)
            .or(self.requested_tier)
            .unwrap_or(LatencyTier::Standard)
    }

    /// The service tier an answer is reported as served by: what Bedrock said
    /// when it said, else what the answering attempt asked for, else what the
    /// client asked for, else `default`; `None` for answers of other upstreams
    /// (service tiers are Bedrock's).
    fn service_tier(&self, summary: Option<&Summary>) -> Option<ServiceTier> {
        if let Some(s) = &self.record.served_by {
            if !s.kind.is_bedrock() {
                return None;
            }
        }
        Some(
            summary
                .and_then(|s| s.service_tier)
                .or(self.answer_service_tier)
                .or(self.record.service_tier_sent)
                .or(self.requested_service_tier)
                .unwrap_or(ServiceTier::Default),
        )
    }

    /// The catalog's entry for the model a prompt router chose.
    fn invoked(&self, summary: &Summary) -> Option<Arc<ModelInfo>> {
        let id = summary.invoked_model.as_deref()?;
        self.catalog.as_ref()?.get(id).map(|l| l.model.clone())
    }

    /// The token price of `model` at the tiers that served `summary`: a
    /// priority or flex service tier's price, else the latency tier's (the
    /// catalog prices no combination of the two).
    fn price_at(&self, model: &ModelInfo, summary: &Summary) -> Price {
        match self.service_tier(Some(summary)) {
            Some(tier @ (ServiceTier::Priority | ServiceTier::Flex)) => {
                model.price_for_service(tier)
            }
            _ => model.price_for(Some(self.tier(summary.latency_tier).name())),
        }
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
    fn served(
        &self,
        route: &metrics::RouteMetrics,
        summary: &Summary,
        streamed: bool,
        ended: Instant,
    ) {
        if self.record.cache.is_hit() || self.record.attempts == 0 {
            return;
        }
        let tier = self.tier(summary.latency_tier).name();
        let (ttft, tps) = self.speed(summary, streamed, ended);
        route.served(tier, self.tier_requested().name(), ttft, tps);
        let requested = self
            .wanted_service_tier
            .or(self.requested_service_tier)
            .unwrap_or(ServiceTier::Default);
        let served = self
            .service_tier(Some(summary))
            .map_or("none", ServiceTier::name);
        route.service_tier_served(served, requested.name());
        if summary.invoked_model.is_some() {
            let label = self
                .invoked(summary)
                .map_or(metrics::SharedString::const_str("other"), |m| {
                    metrics::SharedString::from(m.id.clone())
                });
            metrics::prompt_router_invoked(route.label(), label);
        }
    }

    /// An upstream answer's TTFT and output speed (see [`Finish::served`]),
    /// for an answer that ended at `ended`.
    fn speed(
        &self,
        summary: &Summary,
        streamed: bool,
        ended: Instant,
    ) -> (Option<std::time::Duration>, Option<f64>) {
        let ttft = self.answered_at.map(|t| t.duration_since(self.started));
        let output = summary.usage.map_or(0, |u| u.output_tokens) as f64;
        let span = if streamed {
            self.answered_at.map(|t| ended.saturating_duration_since(t))
        } else {
            Some(ended.saturating_duration_since(self.started))
        };
        let tps = span
            .filter(|d| !d.is_zero() && output > 0.0)
            .map(|d| output / d.as_secs_f64());
        (ttft, tps)
    }

    /// The tier the route asked for (the `requested` label).
    fn tier_requested(&self) -> LatencyTier {
        self.wanted_tier
            .or(self.requested_tier)
            .unwrap_or(LatencyTier::Standard)
    }

    /// Counts what an answer cost: billed tokens for upstream answers, tokens
    /// and dollars saved for cache hits (at the original answer's price), for
    /// a request that ended at `ended`.
    fn account(&self, route: &metrics::RouteMetrics, summary: &Summary, ended: Instant) {
        let Some(usage) = &summary.usage else { return };
        if self.record.cache.is_hit() {
            let usd = self
                .invoked(summary)
                .or_else(|| self.model.clone())
                .map_or(0.0, |m| self.price_at(&m, summary).cost(usage));
            route.cache_saved(usage, usd);
        } else {
            route.tokens(usage);
            let held = ended.saturating_duration_since(self.started);
            let price = match &self.pricing {
                Pricing::Tokens(m) => Some(self.price_at(m, summary)),
                Pricing::Router => self.invoked(summary).map(|m| self.price_at(&m, summary)),
                _ => None,
            };
            if let (Some(served), Some((basis, usd))) =
                (&self.record.served_by, self.pricing.usd(usage, price, held))
            {
                route.cost(served.kind.name(), basis, usd);
            }
            if usage.cache_read_input_tokens + usage.cache_write_input_tokens > 0 {
                let model = self.invoked(summary).or_else(|| self.model.clone());
                let (label, saved) = match &model {
                    Some(m) => {
                        let price = self.price_at(m, summary);
                        (m.id.as_str(), price.prompt_cache_savings(usage))
                    }
                    None => ("unknown", 0.0),
                };
                let tenant = self.tenant.as_deref().unwrap_or("-");
                metrics::prompt_cache_usage(route.label(), label, tenant, usage, saved);
            }
        }
    }

    /// Tells the answering attempt's planner what a complete answer reported.
    fn settle_prompt_cache(&self, summary: &Summary) {
        if self.record.cache.is_hit() {
            return;
        }
        if let Some(settle) = &self.record.settle {
            settle.0.settle(summary);
        }
    }

    /// Hands the access line to the log writer, which formats it on its own
    /// thread; here only values the request holds are copied. `ended`: when
    /// the request ended.
    fn log(
        &self,
        status: u16,
        outcome: &'static str,
        summary: Option<&Summary>,
        error: Option<&ProxyError>,
        ended: Instant,
    ) {
        if !access_log::enabled() {
            return;
        }
        access_log::access(|| {
            let usage = summary.and_then(|s| s.usage).unwrap_or_default();
            let served = self.record.served_by.as_ref();
            AccessLine {
                at: std::time::SystemTime::now(),
                request_id: self.request_id.clone(),
                tenant: self.tenant.clone(),
                route: self.route.clone(),
                operation: self.op.name(),
                status,
                cache: self.record.cache.header(),
                outcome,
                attempts: self.record.attempts,
                target: self.record.target.clone(),
                upstream: served.map(|s| s.upstream.clone()),
                served_model: served.map(|s| s.model.clone()),
                tier: summary.and_then(|s| s.latency_tier).map(LatencyTier::name),
                service_tier: summary
                    .and_then(|s| self.service_tier(Some(s)))
                    .map(ServiceTier::name),
                invoked_model: summary.and_then(|s| s.invoked_model.as_deref().map(Arc::from)),
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cache_read_tokens: usage.cache_read_input_tokens,
                cache_write_tokens: usage.cache_write_input_tokens,
                duration_ms: ended.saturating_duration_since(self.started).as_secs_f64() * 1000.0,
                error: error.map(ToString::to_string),
            }
        });
    }

    /// A whole answer was sent.
    pub fn whole(&self, summary: &Summary) {
        // One clock read for every measure of the request's end.
        let ended = Instant::now();
        self.settle(summary.usage.as_ref(), summary);
        let route = self.route_metrics();
        self.account(route, summary, ended);
        self.settle_prompt_cache(summary);
        self.served(route, summary, false, ended);
        route.request_done(self.op, 200, ended.saturating_duration_since(self.started));
        self.log(200, "ok", Some(summary), None, ended);
        self.report(&report::Ending::answered(summary));
    }

    /// An error response was sent.
    pub fn error(&self, e: &ProxyError) {
        self.limits.settle(Outcome::Failed);
        let status = e.status().as_u16();
        if self.route.is_none() {
            metrics::rejected(e.kind.label());
        }
        let ended = Instant::now();
        self.route_metrics().request_done(
            self.op,
            status,
            ended.saturating_duration_since(self.started),
        );
        self.log(status, e.kind.label(), None, Some(e), ended);
        self.report(&report::Ending::failed(e));
    }

    /// The observer that finishes the books when a stream ends.
    pub fn stream_observer(&self) -> FinishStream {
        FinishStream {
            finish: self.clone(),
            reader: match &self.record.stored_summary {
                Some(summary) => StreamReader::known((**summary).clone()),
                None => StreamReader::default(),
            },
            transcript: Transcript::for_trace(&self.trace),
        }
    }
}

/// Reads a stream as it passes and writes metrics and the access log at its end.
pub struct FinishStream {
    finish: Finish,
    pub reader: StreamReader,
    /// The stream's text, kept only for a span that captures content.
    transcript: Transcript,
}

impl StreamObserver for FinishStream {
    fn frame(&mut self, frame: &RelayedFrame) {
        self.reader.read(frame);
        self.transcript.read(&frame.frame);
    }

    fn reads_frames(&self) -> bool {
        !self.reader.is_known() || self.transcript.text().is_some()
    }

    fn end(&mut self, end: StreamEnd) {
        let route = self.finish.route_metrics().clone();
        let outcome = match &end {
            StreamEnd::Complete => "complete",
            StreamEnd::Failed(_) => "upstream_error",
            StreamEnd::ClientGone => "client_gone",
            StreamEnd::Cut(_) => "shutdown",
        };
        if let StreamEnd::Cut(e) = &end {
            tracing::warn!(target: "access", request_id = %self.finish.request_id, error = %e, "stream cut at shutdown");
        }
        if let StreamEnd::Failed(e) = &end {
            metrics::upstream_error(route.label(), e.kind);
        }
        if matches!(end, StreamEnd::Complete) {
            self.reader.finished();
        }
        let ended = Instant::now();
        let summary = &self.reader.summary;
        self.finish.settle(summary.usage.as_ref(), summary);
        self.finish.account(&route, &self.reader.summary, ended);
        if matches!(end, StreamEnd::Complete) {
            self.finish.settle_prompt_cache(&self.reader.summary);
            self.finish
                .served(&route, &self.reader.summary, true, ended);
        }
        route.stream_ended(outcome);
        let took = ended.saturating_duration_since(self.finish.started);
        route.request_done(self.finish.op, 200, took);
        self.finish
            .log(200, outcome, Some(&self.reader.summary), None, ended);
        let summary = &self.reader.summary;
        if let Some(text) = self.transcript.text() {
            let reason = summary.stop_reason.as_deref();
            self.finish.trace.output_text(text, reason);
        }
        self.finish
            .report(&report::Ending::streamed(summary, outcome, &end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bedrock_wire::converse::Usage;
    use std::time::Duration;

    #[test]
    fn an_hourly_price_is_shared_by_the_requests_served_at_once() {
        let usage = Usage {
            input_tokens: 1000,
            output_tokens: 500,
            total_tokens: 1500,
            ..Usage::default()
        };
        let hourly = Pricing::Hourly(HourlyCost {
            usd_per_hour: 3.6,
            concurrency: 4,
        });
        // $3.60 an hour is $0.001 a second; 20 s of a deployment that serves
        // 4 at once is a quarter of $0.02, whatever the tokens.
        let (basis, usd) = hourly
            .usd(&usage, None, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("an hourly price prices every answer"));
        assert_eq!(basis, "hourly");
        assert!((usd - 0.005).abs() < 1e-12, "{usd}");
        assert_eq!(
            Pricing::Unknown.usd(&usage, None, Duration::from_secs(20)),
            None
        );
    }
}
