//! Upstream attempts for one call: the route's fallback chain (its primary
//! target, then each `fallback` entry: same model at standard latency, another
//! upstream or region, another model), retries on the same target with jittered
//! exponential backoff, all under one deadline, with a first-byte timeout per
//! attempt, circuit breakers that take failing targets out of the chain, and
//! optional hedging (a second target started when the first has sent nothing for
//! `hedge_after`; the first to answer wins, the other is cancelled).
//!
//! An attempt's answer starts with its first byte (for streams, its first event),
//! so a stream falls back only before anything reached the client. The client's
//! own invalid request is never retried: only error kinds in `fallback_on` move on.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bedrock_wire::converse::Summary;
use bedrock_wire::error::ErrorType;
use bedrock_wire::eventstream::FrameKind;
use bedrock_wire::operation::Operation;
use bedrock_wire::tier::{LatencyTier, ServiceTier};
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use super::breaker::{Breaker, BreakerKey, Breakers};
use super::{passed_headers, read_body, Upstream, Upstreams};
use crate::answer::{Answer, Record, ServedBy};
use crate::config::{LatencyPolicy, ResilienceConfig, ServicePolicy};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::metrics;
use crate::stream;
use crate::support;
use crate::telemetry::{AttemptStart, Trace};

/// Largest upstream answer read into memory (streams are never read whole).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Largest upstream error body kept.
const MAX_ERROR_BYTES: usize = 1024 * 1024;

/// One place a call can be answered.
#[derive(Debug, Clone)]
pub struct Target {
    /// `primary`, `fallback1`, ...: the label in metrics and logs.
    pub label: Arc<str>,
    /// Its metric handles (made with the route).
    pub metrics: Arc<metrics::TargetMetrics>,
    pub upstream: Arc<Upstream>,
    pub model: Arc<str>,
    pub latency: LatencyPolicy,
    pub service_tier: ServicePolicy,
    /// A fallback to another model than the route's primary (its answers are
    /// served but never cached under the route's key).
    pub other_model: bool,
}

impl Target {
    /// Who answers when this target does: its upstream, its kind, its model.
    pub fn served_by(&self) -> ServedBy {
        ServedBy {
            upstream: self.upstream.name.clone(),
            kind: self.upstream.config.kind,
            model: self.model.clone(),
        }
    }

    /// The breaker this target answers to when asking for these tiers (flex
    /// throttled must not take the model's default tier out of rotation).
    fn breaker_key(&self, prepared: &Prepared) -> BreakerKey {
        BreakerKey {
            upstream: self.upstream.name.clone(),
            model: self.model.clone(),
            tier: prepared.tier,
            service_tier: prepared.service_tier,
        }
    }
}

/// A route's targets, primary first (labels and models shared with the
/// route, upstreams looked up by `&str`: nothing but the list allocated).
pub fn targets(
    upstreams: &Upstreams,
    route: &crate::route::Route,
    primary_model: &Arc<str>,
) -> Result<Vec<Target>, ProxyError> {
    let config = &route.config;
    let lookup = |name: &str| {
        upstreams.get(name).cloned().ok_or_else(|| {
            ProxyError::internal(format!(
                "route {} names a missing upstream {name}",
                route.name
            ))
        })
    };
    let mut all = Vec::with_capacity(1 + route.fallbacks.len());
    // Built in place: each `Arc` in a target is a shared count that both
    // cores touch, so the primary is not built once more to be copied.
    all.push(Target {
        label: route.primary_label.clone(),
        metrics: route.primary_metrics.clone(),
        upstream: lookup(&config.upstream)?,
        model: primary_model.clone(),
        latency: config.resilience.latency,
        service_tier: config.resilience.service_tier,
        other_model: false,
    });
    for (f, shared) in config.resilience.fallback.iter().zip(&route.fallbacks) {
        let primary = &all[0];
        let model = &shared.model;
        let fallback = Target {
            label: shared.label.clone(),
            metrics: shared.metrics.clone(),
            upstream: match &f.upstream {
                Some(name) => lookup(name)?,
                None => primary.upstream.clone(),
            },
            model: model.as_ref().unwrap_or(&primary.model).clone(),
            latency: f.latency.unwrap_or(primary.latency),
            service_tier: f.service_tier.unwrap_or(primary.service_tier),
            other_model: model.as_deref().is_some_and(|m| m != &**primary_model),
        };
        all.push(fallback);
    }
    Ok(all)
}

/// The body and headers of one attempt, planned for its target.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The tier asked for (`None`: as the client sent it).
    pub tier: Option<LatencyTier>,
    /// The service tier asked for (`None`: as the client sent it).
    pub service_tier: Option<ServiceTier>,
    pub cache_points: u32,
    pub notes: PlanNotes,
    /// Told the answer's usage, if the attempt answers.
    pub settle: Option<crate::answer::Settle>,
}

/// What planning an attempt decided, counted in metrics when the attempt is
/// sent (a target may be planned and then not tried).
#[derive(Debug, Clone, Default)]
pub struct PlanNotes {
    /// Why the latency tier asked for was not sent.
    pub downgraded: Option<&'static str>,
    /// Why the service tier wanted was not sent.
    pub service_downgraded: Option<&'static str>,
    /// Positions where cachePoint blocks were added, with their TTL (`5m`, `1h`).
    pub injected: Vec<(&'static str, &'static str)>,
    /// Positions left without one, and why.
    pub skipped: Vec<(&'static str, &'static str)>,
}

impl PlanNotes {
    fn count(&self, route: &metrics::SharedString, target: &Arc<str>) {
        if let Some(reason) = self.downgraded {
            metrics::latency_downgrade(route, target, reason);
        }
        if let Some(reason) = self.service_downgraded {
            metrics::service_tier_downgrade(route, target, reason);
        }
        for (position, ttl) in &self.injected {
            metrics::prompt_cache_injected(route, position, ttl);
        }
        for (position, reason) in &self.skipped {
            metrics::prompt_cache_skipped(route, position, reason);
        }
    }
}

/// What a chain needs besides its targets.
pub struct Chain<'a, A = Http> {
    pub route: &'a Arc<str>,
    pub op: Operation,
    pub resilience: &'a ResilienceConfig,
    pub breakers: &'a Breakers,
    pub started: Instant,
    /// Plans the body for a target (prompt-cache points, latency tier).
    pub prepare: &'a (dyn Fn(&Target) -> Prepared + Sync),
    /// Sends one attempt: [`Http`] in the proxy; the chain's tests script it.
    pub attempt: &'a A,
    /// The request's span: each attempt is a child span, fallbacks and hedges
    /// are events on it.
    pub trace: &'a Trace,
}

/// How one attempt reaches a target. The chain decides which targets to try,
/// when, and how often; an attempt only sends, and keeps to its timeouts: an
/// answer (for streams, the first event) within `first_byte` and the rest of a
/// whole answer within `deadline`, or else an [`ErrorKind::Timeout`] error.
///
/// A trait rather than a boxed closure so the proxy's attempts stay plain,
/// unboxed futures (the chain is generic over it, [`Http`] by default).
pub trait Attempt: Sync {
    fn send(
        &self,
        target: &Target,
        op: Operation,
        prepared: Prepared,
        first_byte: Duration,
        deadline: Instant,
        route: &Arc<str>,
    ) -> impl std::future::Future<Output = Result<Answer, ProxyError>> + Send;
}

/// The proxy's attempts: the target's [`Upstream`] client over HTTP.
#[derive(Debug, Clone, Copy, Default)]
pub struct Http;

impl Attempt for Http {
    fn send(
        &self,
        target: &Target,
        op: Operation,
        prepared: Prepared,
        first_byte: Duration,
        deadline: Instant,
        route: &Arc<str>,
    ) -> impl std::future::Future<Output = Result<Answer, ProxyError>> + Send {
        attempt(target, op, prepared, first_byte, deadline, route)
    }
}

fn counts_against_breaker(e: &ProxyError) -> bool {
    e.side == Side::Upstream
        && matches!(
            e.kind,
            ErrorKind::Throttled
                | ErrorKind::Unavailable
                | ErrorKind::Timeout
                | ErrorKind::Internal
                | ErrorKind::ModelNotReady
                | ErrorKind::ModelError
        )
}

/// Jittered exponential backoff: a random delay in [½, 1] × min(max, base × 2^n).
fn backoff(resilience: &ResilienceConfig, retry: u32) -> Duration {
    let exp = resilience
        .backoff
        .saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX))
        .min(resilience.max_backoff);
    exp.mul_f64(0.5 + fastrand::f64() / 2.0)
}

impl<A: Attempt> Chain<'_, A> {
    fn falls_back(&self, e: &ProxyError) -> bool {
        e.side != Side::Client && self.resilience.fallback_on.contains(&e.kind)
    }

    fn deadline(&self, primary: &Target) -> Instant {
        self.started
            + self
                .resilience
                .deadline
                .unwrap_or(primary.upstream.timeouts().total)
    }

    fn first_byte(&self, target: &Target, deadline: Instant) -> Duration {
        self.resilience
            .first_byte_timeout
            .unwrap_or(target.upstream.timeouts().first_byte)
            .min(deadline.saturating_duration_since(Instant::now()))
    }

    /// The attempt body and the breaker of `targets[i]`, planned the first time
    /// they are needed in this call and reused after (retries, hedging).
    fn planned(&self, plans: &mut [Option<Planned>], targets: &[Target], i: usize) -> Planned {
        plans[i]
            .get_or_insert_with(|| {
                let prepared = (self.prepare)(&targets[i]);
                let breaker = self.breakers.get(&targets[i].breaker_key(&prepared));
                Planned { prepared, breaker }
            })
            .clone()
    }

    fn settle(
        &self,
        target: &Target,
        breaker: &Mutex<Breaker>,
        result: &Result<Answer, ProxyError>,
    ) {
        let mut b = support::lock(breaker);
        let now = Instant::now();
        let kind = target.upstream.config.kind.name();
        match result {
            Ok(_) => {
                b.success(now, &self.resilience.breaker);
                target.metrics.attempt(kind, "ok");
            }
            Err(e) => {
                if counts_against_breaker(e) && b.failure(now, &self.resilience.breaker) {
                    tracing::warn!(route = %self.route, target = %target.label, error = %e, "circuit breaker opened");
                }
                target.metrics.attempt(kind, e.kind.label());
            }
        }
        target.metrics.breaker_state(b.state().gauge());
    }

    /// Whether the target's breaker lets a request through now.
    fn admits(&self, target: &Target, breaker: &Mutex<Breaker>) -> bool {
        let mut b = support::lock(breaker);
        let allowed = b.allow(Instant::now());
        target.metrics.breaker_state(b.state().gauge());
        allowed
    }

    /// One attempt (already admitted by its breaker), settled, with its record.
    /// Dropped before it ends (a hedge that lost, a client that went away), it
    /// gives its breaker's half-open probe back.
    async fn try_target(
        &self,
        target: &Target,
        planned: Planned,
        deadline: Instant,
    ) -> (Result<Answer, ProxyError>, Record) {
        let Planned {
            mut prepared,
            breaker,
        } = planned;
        let mut record = Record {
            attempts: 1,
            ..Record::default()
        };
        let tier = prepared.tier;
        let service_tier = prepared.service_tier;
        let cache_points = prepared.cache_points;
        let settle = prepared.settle.clone();
        prepared
            .notes
            .count(&metrics::route_label(self.route), &target.label);
        let span = self.trace.attempt(AttemptStart {
            target: &target.label,
            upstream: &target.upstream.name,
            model: &target.model,
            base_url: target.upstream.base_url(),
            tier: tier.map(LatencyTier::name),
            cache_points,
        });
        span.inject(&mut prepared.headers);
        let first_byte = self.first_byte(target, deadline);
        let mut unsettled = Unsettled(Some(breaker));
        let result = self
            .attempt
            .send(target, self.op, prepared, first_byte, deadline, self.route)
            .await;
        if let Some(breaker) = unsettled.0.take() {
            self.settle(target, &breaker, &result);
        }
        if result.is_ok() {
            record.target = Some(target.label.clone());
            record.tier_sent = tier;
            record.service_tier_sent = service_tier;
            record.cache_points = cache_points;
            record.other_model = target.other_model;
            self.trace
                .answered(&target.label, &target.model, target.upstream.base_url());
            record.served_by = Some(target.served_by());
            record.settle = settle;
        }
        // The attempt's span ends with it; a stream's, when the stream ends.
        let result = match result {
            Ok(Answer::Stream {
                headers,
                frames,
                joined,
            }) if span.is_on() => Ok(Answer::Stream {
                headers,
                frames: Box::pin(span.follow(frames)),
                joined,
            }),
            Ok(answer) => {
                span.ok();
                Ok(answer)
            }
            Err(e) => {
                span.failed(&e);
                Err(e)
            }
        };
        (result, record)
    }

    /// Runs the chain over `targets` (primary first): each target tried with
    /// its retries, then the next. With `hedge_after`, the first attempt on a
    /// target races the next admitted target once it has been silent that long.
    pub async fn run(&self, targets: &[Target], done: &mut Record) -> Result<Answer, ProxyError> {
        let Some(primary) = targets.first() else {
            return Err(ProxyError::internal("a route without targets"));
        };
        let deadline = self.deadline(primary);
        let route = metrics::route_label(self.route);
        let mut last_error: Option<ProxyError> = None;
        let mut hedged = false;
        let mut plans: Vec<Option<Planned>> = vec![None; targets.len()];
        let mut i = 0;
        while i < targets.len() {
            let target = &targets[i];
            let planned = self.planned(&mut plans, targets, i);
            if !self.admits(target, &planned.breaker) {
                let next = targets.get(i + 1).map_or("none", |t| &*t.label);
                metrics::fallback(&route, &target.label, next, "breaker_open");
                self.trace.fallback(&target.label, next, "breaker_open");
                last_error.get_or_insert_with(|| {
                    ProxyError::new(
                        ErrorKind::Unavailable,
                        Side::Upstream,
                        format!(
                            "every target of route {} is out of rotation (circuit breakers open)",
                            self.route
                        ),
                    )
                });
                i += 1;
                continue;
            }
            let mut retry = 0;
            let mut tried = false;
            let error = loop {
                if Instant::now() >= deadline {
                    break last_error.take().unwrap_or_else(|| self.deadline_error());
                }
                let p = planned.clone();
                let hedge = match (self.resilience.hedge_after, hedged || tried) {
                    (Some(after), false) => self
                        .hedge_partner(&mut plans, targets, i)
                        .map(|(j, partner)| (after, j, partner)),
                    _ => None,
                };
                tried = true;
                let result = match hedge {
                    Some((after, j, partner)) => {
                        let second = (&targets[j], partner);
                        // Boxed: a hedge holds two attempts at once, and inline
                        // its state would make every request's future (copied
                        // as the request moves through axum and tower) 5 KB
                        // larger, hedged or not.
                        let hedged_attempt =
                            Box::pin(self.hedge(target, p, second, after, deadline, done));
                        match hedged_attempt.await {
                            Hedged::Alone(result) => result,
                            Hedged::Raced(Ok(answer)) => return Ok(answer),
                            Hedged::Raced(Err(e)) if !self.falls_back(&e) => return Err(e),
                            Hedged::Raced(Err(e)) => {
                                // Both targets have had their attempt; go on after the second.
                                hedged = true;
                                i = j;
                                break e;
                            }
                        }
                    }
                    None => {
                        let (result, record) = self.try_target(target, p, deadline).await;
                        done.absorb(record);
                        result
                    }
                };
                match result {
                    Ok(answer) => return Ok(answer),
                    Err(e) if !self.falls_back(&e) => return Err(e),
                    Err(e) if e.retryable && retry < self.resilience.retries => {
                        let pause = backoff(self.resilience, retry)
                            .min(deadline.saturating_duration_since(Instant::now()));
                        retry += 1;
                        tokio::time::sleep(pause).await;
                        last_error = Some(e);
                    }
                    Err(e) => break e,
                }
            };
            let target = &targets[i];
            // Past the deadline nothing more is tried, so no fallback is counted.
            let out_of_time = Instant::now() >= deadline;
            if let Some(next) = targets.get(i + 1).filter(|_| !out_of_time) {
                metrics::fallback(&route, &target.label, &next.label, error.kind.label());
                self.trace
                    .fallback(&target.label, &next.label, error.kind.label());
                tracing::info!(route = %self.route, from = %target.label, to = %next.label, error = %error, "falling back");
            }
            last_error = Some(error);
            if out_of_time {
                break;
            }
            i += 1;
        }
        Err(last_error.unwrap_or_else(|| self.deadline_error()))
    }

    /// The target a hedge on `targets[i]` would start: the next one whose
    /// breaker would let it through (asked without taking a probe).
    fn hedge_partner(
        &self,
        plans: &mut [Option<Planned>],
        targets: &[Target],
        i: usize,
    ) -> Option<(usize, Planned)> {
        (i + 1..targets.len()).find_map(|j| {
            let planned = self.planned(plans, targets, j);
            let open = support::lock(&planned.breaker).would_allow(Instant::now());
            open.then_some((j, planned))
        })
    }

    fn deadline_error(&self) -> ProxyError {
        ProxyError::upstream_timeout(format!(
            "no target of route {} answered before the deadline",
            self.route
        ))
    }

    /// Starts `first`; if it has not answered after `after`, starts `second` too
    /// (if its breaker still admits it) and takes whichever answers first,
    /// cancelling the other. An answer or failure of `first` before `after` is
    /// [`Hedged::Alone`]: an ordinary attempt, retried and fallen back from as
    /// usual.
    async fn hedge(
        &self,
        first: &Target,
        planned: Planned,
        (second, second_planned): (&Target, Planned),
        after: Duration,
        deadline: Instant,
        done: &mut Record,
    ) -> Hedged {
        let route = metrics::route_label(self.route);
        let a = self.try_target(first, planned, deadline);
        tokio::pin!(a);
        tokio::select! {
            (result, record) = &mut a => {
                done.absorb(record);
                return Hedged::Alone(result);
            }
            () = tokio::time::sleep(after) => {}
        }
        if !self.admits(second, &second_planned.breaker) {
            let (result, record) = a.await;
            done.absorb(record);
            return Hedged::Alone(result);
        }
        metrics::hedge(&route, "fired");
        self.trace.hedge("fired", &second.label);
        let b = self.try_target(second, second_planned, deadline);
        tokio::pin!(b);
        // The first to answer wins; if one fails, wait for the other. Leaving
        // this function drops the loser, which cancels its upstream call.
        let ((result, record), other) = tokio::select! {
            (result, record) = &mut a => match result {
                Ok(answer) => ((Ok(answer), record), None),
                Err(_) => (b.await, Some(record)),
            },
            (result, record) = &mut b => match result {
                Ok(answer) => {
                    metrics::hedge(&route, "won");
                    self.trace.hedge("won", &second.label);
                    ((Ok(answer), record), None)
                }
                Err(_) => (a.await, Some(record)),
            },
        };
        // The attempt still in flight when the winner answered counts too.
        if other.is_none() {
            done.attempts += 1;
        }
        if let Some(failed) = other {
            done.absorb(failed);
        }
        done.absorb(record);
        Hedged::Raced(result)
    }
}

/// How a hedged attempt ended.
enum Hedged {
    /// The first target answered or failed before the hedge fired (or the
    /// second could not be started): one ordinary attempt.
    Alone(Result<Answer, ProxyError>),
    /// Both ran; the winner's answer, or the last failure.
    Raced(Result<Answer, ProxyError>),
}

/// What an attempt on one target sends, and the breaker it answers to.
#[derive(Clone)]
struct Planned {
    prepared: Prepared,
    breaker: Arc<Mutex<Breaker>>,
}

/// An admitted attempt that has not settled: dropped like that, it gives its
/// breaker's half-open probe back ([`Breaker::abandon`]).
struct Unsettled(Option<Arc<Mutex<Breaker>>>);

impl Drop for Unsettled {
    fn drop(&mut self) {
        if let Some(breaker) = self.0.take() {
            support::lock(&breaker).abandon();
        }
    }
}

/// One attempt on a target: the request, then the response headers and (for
/// streams) the first event, within `first_byte`; the rest of a whole answer
/// within `deadline`.
async fn attempt(
    target: &Target,
    op: Operation,
    prepared: Prepared,
    first_byte: Duration,
    deadline: Instant,
    route: &Arc<str>,
) -> Result<Answer, ProxyError> {
    let upstream = &target.upstream;
    if upstream.config.kind.speaks_chat() {
        // Boxed: the translating attempt's state is twice the Bedrock one's,
        // and every future above this one would carry (and copy) it.
        return Box::pin(super::chat::attempt(
            target, op, prepared, first_byte, deadline, route,
        ))
        .await;
    }
    let sent = Instant::now();
    let response = upstream
        .send(
            op,
            &target.model,
            prepared.body,
            &prepared.headers,
            first_byte,
            deadline,
        )
        .await?;
    if !response.status.is_success() {
        let body = read_body(response.body, MAX_ERROR_BYTES, deadline, &upstream.name).await?;
        return Err(ProxyError::from_upstream(
            response.status,
            &response.headers,
            body,
        ));
    }
    let headers = passed_headers(&response.headers);

    if op.is_stream() {
        let mut frames = stream::frames(
            response.body,
            upstream.timeouts().idle,
            deadline,
            upstream.name.clone(),
        );
        let wait = first_byte.saturating_sub(sent.elapsed());
        let first = match tokio::time::timeout(wait, frames.next()).await {
            Err(_) => {
                return Err(ProxyError::upstream_timeout(format!(
                    "upstream {} sent no event within {first_byte:?}",
                    upstream.name
                )))
            }
            Ok(None) => {
                return Err(ProxyError::upstream_unreachable(format!(
                    "upstream {} closed the stream without any event",
                    upstream.name
                )))
            }
            Ok(Some(first)) => first?,
        };
        target.metrics.upstream_ttft(op, sent.elapsed());
        if let FrameKind::Exception(kind) = &first.frame.kind {
            // Nothing has reached the client yet: treat it as the error response
            // Bedrock would have sent had it failed a moment earlier.
            let error_type = ErrorType::parse(kind).unwrap_or(ErrorType::InternalServer);
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(error_type.name()) {
                h.insert("x-amzn-errortype", v);
            }
            let status = StatusCode::from_u16(error_type.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(ProxyError::from_upstream(
                status,
                &h,
                first.frame.payload.clone(),
            ));
        }
        return Ok(Answer::Stream {
            headers,
            frames: stream::prepend(first, frames),
            joined: None,
        });
    }

    let body = read_body(response.body, MAX_RESPONSE_BYTES, deadline, &upstream.name).await?;
    target.metrics.upstream_ttft(op, sent.elapsed());
    let summary = Summary::of_answer(op, &headers, &body);
    Ok(Answer::Whole {
        headers,
        body,
        summary,
    })
}

#[cfg(test)]
mod tests;
