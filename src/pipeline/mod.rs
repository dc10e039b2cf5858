//! The pipeline: one [`Call`] (whatever API it came in through) flows through the
//! stages after auth and routing, in order:
//!
//! 1. response cache: lookup (L1, then L2), or join an identical call in flight
//!    ([`flight`]);
//! 2. upstream: the route's chain of targets ([`crate::upstream::chain`]), each
//!    attempt planned for its target ([`plan`]: prompt-cache points, latency
//!    tier), in a task of its own when the answer may be cached (so identical
//!    requests can share it), else on the request's task;
//! 3. the answer, as a whole body or as a stream of frames whose first frame has
//!    arrived; complete, successful answers are stored by the task that fetched them.
//!
//! Ingress adapters build the `Call` and render the [`Answer`]; the planners
//! edit a copy of the request per attempt, leaving the `Call` as the client sent it.
//! [`Pipeline`] is what the stages keep across requests and config reloads.

pub mod flight;
pub mod plan;

use axum::http::{HeaderName, HeaderValue};
use bedrock_wire::eventstream::FrameKind;
use bedrock_wire::operation::Operation;
use bedrock_wire::tier::{LatencyTier, ServiceTier, LATENCY_HEADER, SERVICE_TIER_HEADER};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use tokio::time::Instant;

use crate::answer::{Answer, CacheStatus, CacheTier, Record};
use crate::auth::Principal;
use crate::cache::key::is_deterministic;
use crate::cache::{cache_key, CacheKey, Directives, Entry, Family, KeyParts, ResponseCache};
use crate::config::{CacheMode, Replay, RouteCacheConfig, NEVER_CACHED_STOP_REASONS};
use crate::error::{ProxyError, Side};
use crate::json_body::JsonBody;
use crate::metrics;
use crate::prompt_cache::{PrefixRegistry, Survey};
use crate::route::Routed;
use crate::runtime::Runtime;
use crate::stream::{self, StreamReader};
use crate::telemetry::Trace;
use crate::upstream::breaker::Breakers;
use crate::upstream::chain::{self, Chain, Target};
use flight::{Flight, FlightKey, Flights, Head, Joined, Role};

/// One request on its way through the pipeline.
#[derive(Debug)]
pub struct Call {
    pub op: Operation,
    pub principal: Arc<Principal>,
    pub routed: Routed,
    /// The body as the client sent it (or as the service-tier header marked it).
    pub body: Bytes,
    /// The body read as JSON, when it is JSON: its head always, its tree only
    /// once a stage asks for it ([`Call::tree`]).
    pub json: Option<JsonBody>,
    /// Request headers passed to the upstream (InvokeModel's header members).
    pub forward: Vec<(HeaderName, HeaderValue)>,
    pub started: Instant,
    /// The request's span, which upstream attempts are children of.
    pub trace: Trace,
}

impl Call {
    /// The JSON body's head members (see [`crate::json_body::HEAD_MEMBERS`]).
    pub fn head(&self) -> Option<&Value> {
        self.json.as_ref().map(JsonBody::head)
    }

    /// One head member (see [`JsonBody::head_member`]): nothing is parsed
    /// when the body does not have it.
    pub fn head_member(&self, name: &str) -> Option<&Value> {
        self.json.as_ref().and_then(|j| j.head_member(name))
    }

    /// The JSON body parsed whole: built by the first stage that asks, shared
    /// by the others. Stages that read only head members use [`Call::head`].
    pub fn tree(&self) -> Option<&Value> {
        self.json.as_ref().map(JsonBody::tree)
    }

    /// The latency tier the request asks for (`performanceConfig.latency`, or
    /// InvokeModel's header); `None` when it asks for none (or for a tier
    /// Bedrock does not have, which the upstream will refuse).
    pub fn requested_tier(&self) -> Option<LatencyTier> {
        let from_body = self
            .head_member("performanceConfig")
            .filter(|_| matches!(self.op, Operation::Converse | Operation::ConverseStream))
            .and_then(|c| c["latency"].as_str());
        from_body
            .or_else(|| {
                self.forward
                    .iter()
                    .find(|(k, _)| k == LATENCY_HEADER)
                    .and_then(|(_, v)| v.to_str().ok())
            })
            .and_then(LatencyTier::parse)
    }

    /// The service tier the request asks for (`serviceTier.type`, or
    /// InvokeModel's header); `None` when it asks for none or for a tier
    /// Bedrock does not have (which the upstream will refuse).
    pub fn requested_service_tier(&self) -> Option<ServiceTier> {
        let from_body = self
            .head_member("serviceTier")
            .filter(|_| matches!(self.op, Operation::Converse | Operation::ConverseStream))
            .and_then(|t| t["type"].as_str());
        from_body
            .or_else(|| {
                self.forward
                    .iter()
                    .find(|(k, _)| k == SERVICE_TIER_HEADER)
                    .and_then(|(_, v)| v.to_str().ok())
            })
            .and_then(ServiceTier::parse)
    }

    /// Marks the call with a service tier (the `x-proxy-service-tier` request
    /// header), as if the client had written it where Bedrock reads it.
    pub fn mark_service_tier(&mut self, tier: ServiceTier) {
        match self.op {
            Operation::Converse | Operation::ConverseStream => {
                if let Some(json) = self.json.as_mut() {
                    json.edit(|head| crate::service_tier::apply_converse(head, tier));
                    self.body = json.raw().clone();
                }
            }
            Operation::Invoke | Operation::InvokeStream => {
                crate::service_tier::apply_invoke(&mut self.forward, tier)
            }
            Operation::CountTokens => {}
        }
    }
}

/// What the pipeline keeps across requests and config reloads: the response
/// cache, the calls in flight that identical requests join, the prompt-prefix
/// registry and the targets' circuit breakers.
pub struct Pipeline {
    pub cache: ResponseCache,
    pub flights: Flights,
    pub prefixes: Arc<PrefixRegistry>,
    pub breakers: Breakers,
}

/// How a cacheable call is cached.
struct Cacheable {
    key: CacheKey,
    namespace: Arc<str>,
    lookup: bool,
}

fn family(op: Operation) -> Option<Family> {
    match op {
        Operation::Converse | Operation::ConverseStream => Some(Family::Converse),
        Operation::Invoke => Some(Family::Invoke),
        Operation::InvokeStream => Some(Family::InvokeStream),
        Operation::CountTokens => None,
    }
}

/// Whether and how `call` is cached: the route's mode, the temperature (an
/// embedding model's answer is deterministic at any), the request's
/// `Cache-Control`.
fn cacheable(call: &Call, rt: &Runtime, directives: &Directives) -> Option<Cacheable> {
    let policy = &call.routed.route.config.cache;
    let family = family(call.op)?;
    let allowed = match policy.mode {
        CacheMode::Off => false,
        CacheMode::Always => true,
        CacheMode::Deterministic => is_deterministic(call.head()) || is_embedding(call, rt),
    };
    if !allowed || directives.no_store {
        return None;
    }
    static SHARED: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("shared"));
    let namespace: Arc<str> = if policy.shared {
        SHARED.clone()
    } else {
        call.principal.tenant.clone()
    };
    let headers: Vec<(&str, &[u8])> = call
        .forward
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let key = cache_key(&KeyParts {
        namespace: &namespace,
        route: &call.routed.route.name,
        upstream_model: &call.routed.upstream_model,
        family,
        json: call.json.as_ref(),
        raw: &call.body,
        headers: &headers,
    });
    Some(Cacheable {
        key,
        namespace,
        lookup: !directives.no_cache,
    })
}

/// An answer from a stored entry, as a body or a stream. A stream replayed at
/// once also comes joined; its frames are made only if they are read.
fn from_entry(entry: &Arc<Entry>, op: Operation, replay: Replay) -> Option<Answer> {
    if op.is_stream() {
        if !entry.has_frames() {
            return None;
        }
        let paced = replay == Replay::Paced;
        let stored = entry.clone();
        Some(Answer::Stream {
            headers: entry.headers(true),
            frames: stream::replay_lazy(move || stored.frames(), paced),
            joined: if paced { None } else { entry.joined_frames() },
        })
    } else {
        Some(Answer::Whole {
            headers: entry.headers(false),
            body: entry.body()?,
            summary: entry.summary.clone(),
        })
    }
}

/// Followers of failed flights try again this many times before giving up.
const FLIGHT_RETRIES: usize = 3;

/// Runs a call through the cache and upstream stages; `record` says what it
/// took, also when it failed.
pub async fn run(
    pipeline: &Arc<Pipeline>,
    rt: &Arc<Runtime>,
    call: Call,
    directives: &Directives,
    record: &mut Record,
) -> Result<Answer, ProxyError> {
    let cache = &pipeline.cache;
    let route_metrics = call.routed.route.metrics.clone();
    let Some(c) = cacheable(&call, rt, directives) else {
        record.cache = CacheStatus::Bypass;
        cache.count(CacheStatus::Bypass);
        route_metrics.cache_request("bypass", "none");
        return upstream(pipeline, rt, &call, record).await;
    };

    if c.lookup {
        let found = cache
            .get(
                &c.key,
                &c.namespace,
                &call.routed.route.name,
                directives.max_age,
            )
            .await;
        if let Some((entry, tier)) = found {
            if let Some(answer) = from_entry(&entry, call.op, call.routed.route.config.cache.replay)
            {
                record.cache = CacheStatus::Hit {
                    tier,
                    age: entry.age(),
                };
                record.served_by = entry.served_by.clone();
                // A replayed stream carries no tier before its last event: the
                // headers report the tier that served the stored answer.
                record.service_tier_sent = entry.summary.service_tier;
                if call.op.is_stream() {
                    record.stored_summary = Some(Box::new(entry.summary.clone()));
                }
                cache.count(record.cache);
                route_metrics.cache_request("hit", tier.label());
                return Ok(answer);
            }
        }
    }

    let flight_key = FlightKey {
        key: c.key,
        streamed: call.op.is_stream(),
    };
    let call = Arc::new(call);
    let mut last_error = None;
    for _ in 0..FLIGHT_RETRIES {
        let role = if c.lookup {
            pipeline.flights.join_or_start(flight_key)
        } else {
            // `no-cache`: a call of its own, stored at the end, shared with nobody.
            let (flight, rx) = Flight::new();
            Role::Leader(flight, rx)
        };
        match role {
            Role::Leader(flight, rx) => {
                record.cache = CacheStatus::Miss;
                cache.count(CacheStatus::Miss);
                route_metrics.cache_request("miss", "none");
                tokio::spawn(fly(
                    pipeline.clone(),
                    rt.clone(),
                    call.clone(),
                    flight.clone(),
                    flight_key,
                    c.namespace.clone(),
                    c.lookup,
                ));
                let (result, leader) = match flight.join(rx).await {
                    Joined::Answer { answer, record } => (Ok(answer), record),
                    Joined::Failed { error, record } => (Err(error), record),
                };
                *record = Record {
                    cache: CacheStatus::Miss,
                    ..leader
                };
                return result;
            }
            Role::Follower(flight, rx) => {
                metrics::single_flight_join(route_metrics.label());
                match flight.join(rx).await {
                    Joined::Answer {
                        answer,
                        record: leader,
                    } => {
                        record.cache = CacheStatus::Hit {
                            tier: CacheTier::Flight,
                            age: std::time::Duration::ZERO,
                        };
                        record.served_by = leader.served_by;
                        record.service_tier_sent = leader.service_tier_sent;
                        cache.count(record.cache);
                        route_metrics.cache_request("hit", CacheTier::Flight.label());
                        return Ok(answer);
                    }
                    // Another request's call failed: try on our own.
                    Joined::Failed { error, .. } => last_error = Some(error),
                }
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ProxyError::internal("no answer after retrying")))
}

/// Whether `call` goes to an embedding model (whose answers are vectors:
/// deterministic, and without a stop reason).
fn is_embedding(call: &Call, rt: &Runtime) -> bool {
    rt.catalog
        .get(&call.routed.upstream_model)
        .is_some_and(|l| l.model.kind == crate::catalog::ModelKind::Embedding)
}

/// Whether a finished answer may be stored: one that stopped for a reason the
/// route caches, or an embedding model's (which has no stop reason).
fn storable(policy: &RouteCacheConfig, stop_reason: Option<&str>, embedding: bool) -> bool {
    if embedding && stop_reason.is_none() {
        return true;
    }
    stop_reason.is_some_and(|reason| {
        policy.stop_reasons.iter().any(|r| r == reason)
            && !NEVER_CACHED_STOP_REASONS.contains(&reason)
    })
}

/// The upstream call of a flight: publishes the answer as it arrives, stores it
/// when complete, and stops if every subscriber went away.
async fn fly(
    pipeline: Arc<Pipeline>,
    rt: Arc<Runtime>,
    call: Arc<Call>,
    flight: Arc<Flight>,
    flight_key: FlightKey,
    namespace: Arc<str>,
    registered: bool,
) {
    let cache = &pipeline.cache;
    let policy = &call.routed.route.config.cache;
    let key = flight_key.key;
    let forget = || {
        if registered {
            pipeline.flights.remove(&flight_key, &flight);
        }
    };
    let mut record = Record::default();
    let result = tokio::select! {
        r = upstream(&pipeline, &rt, &call, &mut record) => r,
        () = flight.abandoned() => {
            forget();
            flight.finish(Err(ProxyError::overloaded("every client of this call went away")));
            return;
        }
    };
    // Another model's answer (a fallback target) is served, never stored: the
    // entry would answer for the route's own model for its whole TTL.
    let may_store = !record.other_model;
    let served_by = record.served_by.clone();
    flight.set_record(record);
    let tenant = call.principal.tenant.clone();
    let route = call.routed.route.name.clone();
    let model = &*call.routed.upstream_model;
    match result {
        Err(e) => {
            forget();
            flight.finish(Err(e));
        }
        Ok(Answer::Whole {
            headers,
            body,
            summary,
        }) => {
            flight.start(Head::Whole {
                headers: headers.clone(),
                body: body.clone(),
                summary: summary.clone(),
            });
            if may_store
                && storable(
                    policy,
                    summary.stop_reason.as_deref(),
                    is_embedding(&call, &rt),
                )
            {
                let entry = match call.op {
                    Operation::Converse => {
                        Entry::from_converse_body(tenant, route, model, policy.ttl, &body).ok()
                    }
                    _ => Some(Entry::from_invoke(
                        tenant, route, model, policy.ttl, &headers, body, summary,
                    )),
                };
                if let Some(entry) = entry {
                    cache
                        .store(key, &namespace, entry.served_by(served_by))
                        .await;
                }
            }
            forget();
            flight.finish(Ok(()));
        }
        Ok(Answer::Stream {
            headers,
            mut frames,
            ..
        }) => {
            flight.start(Head::Stream {
                headers: headers.clone(),
            });
            let mut reader = StreamReader::recording();
            let mut upstream_exception = false;
            let end = loop {
                let next = tokio::select! {
                    n = frames.next() => n,
                    () = flight.abandoned() => break Err(ProxyError::overloaded("every client of this call went away")),
                };
                match next {
                    Some(Ok(frame)) => {
                        upstream_exception |= matches!(frame.frame.kind, FrameKind::Exception(_));
                        reader.read(&frame);
                        flight.push(frame);
                    }
                    Some(Err(e)) => break Err(e),
                    None => break Ok(()),
                }
            };
            drop(frames);
            let complete = end.is_ok() && !upstream_exception;
            if may_store
                && complete
                && storable(policy, reader.summary.stop_reason.as_deref(), false)
            {
                let summary = reader.summary.clone();
                let offsets = std::mem::take(&mut reader.offsets_ms);
                let entry = match (reader.events.take(), reader.chunks.take()) {
                    (Some(events), _) if summary.is_complete() => Entry::from_converse_events(
                        tenant, route, model, policy.ttl, events, offsets, summary,
                    )
                    .ok(),
                    (_, Some(chunks)) => Some(Entry::from_invoke_stream(
                        tenant, route, model, policy.ttl, &headers, chunks, offsets, summary,
                    )),
                    _ => None,
                };
                if let Some(entry) = entry {
                    cache
                        .store(key, &namespace, entry.served_by(served_by))
                        .await;
                }
            }
            forget();
            flight.finish(end);
        }
    }
}

/// Calls the route's targets: the latency, fallback and prompt-cache policies
/// apply per attempt.
async fn upstream(
    pipeline: &Pipeline,
    rt: &Runtime,
    call: &Call,
    record: &mut Record,
) -> Result<Answer, ProxyError> {
    let route = &call.routed.route;
    let route_label = metrics::route_label(&route.name);
    // The client's prompt sections, read once (from the text, element by
    // element) for the registry and every target's plan, on routes with
    // prompt caching on only.
    let survey = (route.config.prompt_cache.mode != crate::config::PromptCacheMode::Off)
        .then(|| plan::plannable(call))
        .flatten()
        .map(|(json, format)| Survey::of(json, format));
    let observed = plan::observe_prefixes(rt, &pipeline.prefixes, call, survey.as_ref()).await;
    let targets = chain::targets(&rt.upstreams, route, &call.routed.upstream_model)?;
    // Targets that take chat requests get the call translated once, before
    // any upstream call: what the primary cannot take is the client's 400.
    let (targets, chat) = plan::egress(call, targets)?;
    let prepare = |target: &Target| {
        plan::prepare(
            rt,
            &pipeline.prefixes,
            call,
            target,
            &observed,
            survey.as_ref(),
            &chat,
        )
    };
    let chain = Chain {
        route: &route.name,
        op: call.op,
        resilience: &route.config.resilience,
        breakers: &pipeline.breakers,
        started: call.started,
        prepare: &prepare,
        attempt: &chain::Http,
        trace: &call.trace,
    };
    let result = chain.run(&targets, record).await;
    if let Err(e) = &result {
        if e.side == Side::Upstream {
            metrics::upstream_error(&route_label, e.kind);
        }
    }
    result
}
