//! The pipeline: one [`Call`] (whatever API it came in through) flows through the
//! stages after auth and routing, in order:
//!
//! 1. response cache: lookup (L1, then L2), or join an identical call in flight;
//! 2. upstream: the call itself, in a task of its own when the answer may be
//!    cached (so identical requests can share it), else on the request's task;
//! 3. the answer, as a whole body or as a stream of frames whose first frame has
//!    arrived; complete, successful answers are stored by the task that fetched them.
//!
//! Ingress adapters build the `Call` and render the [`Answer`]; the planners
//! that edit the request (prompt cache, latency tier) do so per upstream
//! attempt ([`prepare`]), leaving the `Call` as the client sent it.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bedrock_wire::converse::{Summary, Usage};
use bedrock_wire::eventstream::FrameKind;
use bedrock_wire::operation::Operation;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use tokio::time::Instant;

use crate::app::{AppState, Runtime};
use crate::auth::Principal;
use crate::cache::flight::{Flight, FlightKey, Head, Joined, Role};
use crate::cache::key::is_deterministic;
use crate::cache::{cache_key, CacheKey, CacheStatus, Directives, Entry, Family, KeyParts, Tier};
use crate::config::{CacheMode, Replay, RouteCacheConfig, NEVER_CACHED_STOP_REASONS};
use crate::config::{CachePosition, PromptCacheMode};
use crate::error::{ProxyError, Side};
use crate::latency;
use crate::metrics;
use crate::prompt_cache::{self, PrefixRegistry, Prefixes, Sightings};
use crate::route::Routed;
use crate::stream::{self, FrameStream, StreamReader};
use crate::upstream::fallback::{self, Attempted, Chain, PlanNotes, Prepared, Target};

/// One request on its way through the pipeline.
#[derive(Debug)]
pub struct Call {
    pub request_id: String,
    pub op: Operation,
    pub principal: Arc<Principal>,
    pub routed: Routed,
    /// The body as the client sent it.
    pub body: Bytes,
    /// The body parsed, when it is JSON.
    pub json: Option<Value>,
    /// Request headers passed to the upstream (InvokeModel's header members).
    pub forward: Vec<(HeaderName, HeaderValue)>,
    pub started: Instant,
}

impl Call {
    /// The latency tier the request asks for (`performanceConfig.latency`, or
    /// InvokeModel's header).
    pub fn requested_tier(&self) -> Option<&str> {
        let from_body = self
            .json
            .as_ref()
            .filter(|_| matches!(self.op, Operation::Converse | Operation::ConverseStream))
            .and_then(|j| j["performanceConfig"]["latency"].as_str());
        from_body.or_else(|| {
            self.forward
                .iter()
                .find(|(k, _)| k == "x-amzn-bedrock-performanceconfig-latency")
                .and_then(|(_, v)| v.to_str().ok())
        })
    }
}

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
    },
}

/// Where an answer came from, for response headers and logs.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// Upstream attempts made for this answer (0 for cache hits).
    pub attempts: u32,
    pub cache: CacheStatus,
    /// cachePoint blocks the planner added to the attempt that answered.
    pub cache_points: u32,
    /// The tier the answering attempt asked for.
    pub tier_sent: Option<&'static str>,
    /// The target that answered (`primary`, `fallback1`, ...).
    pub target: Option<Arc<str>>,
    /// The answering target is a fallback to another model than the route's.
    pub other_model: bool,
}

/// How a cacheable call is cached.
struct Cacheable {
    key: CacheKey,
    namespace: std::sync::Arc<str>,
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

/// Whether and how `call` is cached: the route's mode, the temperature, the
/// request's `Cache-Control`.
fn cacheable(call: &Call, directives: &Directives) -> Option<Cacheable> {
    let policy = &call.routed.route.config.cache;
    let family = family(call.op)?;
    let allowed = match policy.mode {
        CacheMode::Off => false,
        CacheMode::Always => true,
        CacheMode::Deterministic => is_deterministic(call.json.as_ref()),
    };
    if !allowed || directives.no_store {
        return None;
    }
    static SHARED: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("shared"));
    let namespace: std::sync::Arc<str> = if policy.shared {
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

/// An answer from a stored entry, as a body or a stream.
fn from_entry(entry: &Entry, op: Operation, replay: Replay) -> Option<Answer> {
    if op.is_stream() {
        let frames = entry.frames();
        if frames.is_empty() {
            return None;
        }
        Some(Answer::Stream {
            headers: entry.headers(true),
            frames: stream::replay(frames, replay == Replay::Paced),
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

/// Runs a call through the cache and upstream stages; `provenance` says what it
/// took, also when it failed.
pub async fn run(
    state: &AppState,
    rt: &Arc<Runtime>,
    call: Call,
    directives: &Directives,
    provenance: &mut Provenance,
) -> Result<Answer, ProxyError> {
    let cache = &state.cache;
    let route_label = metrics::route_label(&call.routed.route.name);
    let Some(c) = cacheable(&call, directives) else {
        provenance.cache = CacheStatus::Bypass;
        cache.count(CacheStatus::Bypass);
        metrics::cache_request(&route_label, "bypass", "none");
        return upstream(state, rt, &call, provenance).await;
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
                provenance.cache = CacheStatus::Hit {
                    tier,
                    age: entry.age(),
                };
                cache.count(provenance.cache);
                metrics::cache_request(&route_label, "hit", tier.label());
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
            cache.flights.join_or_start(flight_key)
        } else {
            // `no-cache`: a call of its own, stored at the end, shared with nobody.
            let (flight, rx) = Flight::new();
            Role::Leader(flight, rx)
        };
        match role {
            Role::Leader(flight, rx) => {
                provenance.cache = CacheStatus::Miss;
                cache.count(CacheStatus::Miss);
                metrics::cache_request(&route_label, "miss", "none");
                tokio::spawn(fly(
                    state.clone(),
                    rt.clone(),
                    call.clone(),
                    flight.clone(),
                    flight_key,
                    c.namespace.clone(),
                    c.lookup,
                ));
                return match flight.join(rx).await {
                    Joined::Answer {
                        answer,
                        provenance: p,
                    } => {
                        *provenance = Provenance {
                            cache: CacheStatus::Miss,
                            ..p
                        };
                        Ok(answer)
                    }
                    Joined::Failed {
                        error,
                        provenance: p,
                    } => {
                        *provenance = Provenance {
                            cache: CacheStatus::Miss,
                            ..p
                        };
                        Err(error)
                    }
                };
            }
            Role::Follower(flight, rx) => {
                metrics::single_flight_join(&route_label);
                match flight.join(rx).await {
                    Joined::Answer { answer, .. } => {
                        provenance.cache = CacheStatus::Hit {
                            tier: Tier::Flight,
                            age: std::time::Duration::ZERO,
                        };
                        cache.count(provenance.cache);
                        metrics::cache_request(&route_label, "hit", Tier::Flight.label());
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

/// Whether a finished answer may be stored.
fn storable(policy: &RouteCacheConfig, stop_reason: Option<&str>) -> bool {
    stop_reason.is_some_and(|reason| {
        policy.stop_reasons.iter().any(|r| r == reason)
            && !NEVER_CACHED_STOP_REASONS.contains(&reason)
    })
}

/// The upstream call of a flight: publishes the answer as it arrives, stores it
/// when complete, and stops if every subscriber went away.
async fn fly(
    state: AppState,
    rt: Arc<Runtime>,
    call: Arc<Call>,
    flight: Arc<Flight>,
    flight_key: FlightKey,
    namespace: Arc<str>,
    registered: bool,
) {
    let cache = &state.cache;
    let policy = &call.routed.route.config.cache;
    let key = flight_key.key;
    let forget = || {
        if registered {
            cache.flights.remove(&flight_key, &flight);
        }
    };
    let mut provenance = Provenance::default();
    let result = tokio::select! {
        r = upstream(&state, &rt, &call, &mut provenance) => r,
        () = flight.abandoned() => {
            forget();
            flight.finish(Err(ProxyError::overloaded("every client of this call went away")));
            return;
        }
    };
    // Another model's answer (a fallback target) is served, never stored: the
    // entry would answer for the route's own model for its whole TTL.
    let may_store = !provenance.other_model;
    flight.set_provenance(provenance);
    let tenant = call.principal.tenant.clone();
    let route = call.routed.route.name.clone();
    let model = call.routed.upstream_model.as_str();
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
            if may_store && storable(policy, summary.stop_reason.as_deref()) {
                let entry = match call.op {
                    Operation::Converse => {
                        Entry::from_converse_body(tenant, route, model, policy.ttl, &body).ok()
                    }
                    _ => Some(Entry::from_invoke(
                        tenant, route, model, policy.ttl, &headers, body, summary,
                    )),
                };
                if let Some(entry) = entry {
                    cache.store(key, &namespace, entry).await;
                }
            }
            forget();
            flight.finish(Ok(()));
        }
        Ok(Answer::Stream {
            headers,
            mut frames,
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
            if may_store && complete && storable(policy, reader.summary.stop_reason.as_deref()) {
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
                    cache.store(key, &namespace, entry).await;
                }
            }
            forget();
            flight.finish(end);
        }
    }
}

/// The body format the prompt-cache planner can mark in this call, if any.
fn plannable(call: &Call) -> Option<(&Value, prompt_cache::Format)> {
    let json = call.json.as_ref()?;
    let format = match call.op {
        Operation::Converse | Operation::ConverseStream => prompt_cache::Format::Converse,
        Operation::Invoke | Operation::InvokeStream => prompt_cache::Format::of_invoke_body(json)?,
        Operation::CountTokens => return None,
    };
    Some((json, format))
}

/// Records one sighting of the call's fixed prefixes (system prompt, tool
/// definitions) in the registry; only `auto` routes need the counts, and only
/// prefixes long enough for the model's prompt cache are worth tracking.
async fn observe_prefixes(
    rt: &Runtime,
    registry: &PrefixRegistry,
    call: &Call,
    prefixes: Option<Prefixes>,
) -> Sightings {
    let policy = &call.routed.route.config.prompt_cache;
    let mut sightings = Sightings::default();
    if policy.mode != PromptCacheMode::Auto {
        return sightings;
    }
    let (Some((json, format)), Some(sizes)) = (plannable(call), prefixes) else {
        return sightings;
    };
    let model_id = &call.routed.upstream_model;
    let Some(model) = rt
        .catalog
        .get(model_id)
        .map(|l| l.model.clone())
        .filter(|m| m.prompt_cache)
    else {
        return sightings;
    };
    for (section, tokens) in [
        (CachePosition::Tools, sizes.tools_end),
        (CachePosition::System, sizes.system_end),
    ] {
        if !policy.positions.contains(&section) || tokens < model.cache_min_tokens {
            continue;
        }
        let Some(digest) = prompt_cache::registry::section_digest(json, format, section) else {
            continue;
        };
        let seen = registry
            .observe(
                &call.principal.tenant,
                &model.id,
                section,
                &digest,
                tokens,
                policy.window,
            )
            .await;
        match section {
            CachePosition::Tools => sightings.tools = Some(seen),
            _ => sightings.system = Some(seen),
        }
    }
    sightings
}

/// The body and headers of one attempt on `target`: the client's request with
/// the prompt-cache planner's points for the target's model and the latency
/// planner's tier for its model and region. When neither changes anything, the
/// client's bytes go out untouched. What the planners decided is counted when the
/// attempt is sent, not here: the chain also plans targets it may not try.
fn prepare(
    rt: &Runtime,
    call: &Call,
    target: &Target,
    sightings: Sightings,
    prefixes: Option<Prefixes>,
) -> Prepared {
    let route = &call.routed.route;
    let mut notes = PlanNotes::default();
    let lookup = rt.catalog.get(&target.model);
    let mut headers = call.forward.clone();
    let tier = latency::plan(
        target.latency,
        call.requested_tier(),
        lookup,
        &target.upstream.config.region,
    );
    notes.downgraded = tier.downgraded.map(|reason| reason.label());

    let mut edited: Option<Value> = None;
    let mut cache_points = 0;
    let policy = &route.config.prompt_cache;
    if let (Some((json, format)), Some(prefixes)) = (plannable(call), prefixes) {
        let model = lookup.map(|l| l.model.clone());
        let plan =
            prompt_cache::decide(json, format, model.as_deref(), policy, sightings, prefixes);
        notes.injected = plan.injected.iter().map(|p| p.label()).collect();
        notes.skipped = plan
            .skipped
            .iter()
            .map(|(p, reason)| (p.label(), reason.label()))
            .collect();
        cache_points = plan.injected.len() as u32;
        if cache_points > 0 {
            let mut body = json.clone();
            prompt_cache::apply(&mut body, format, &plan);
            edited = Some(body);
        }
    }

    if let Some(send) = tier.send {
        match call.op {
            Operation::Converse | Operation::ConverseStream => {
                if call.requested_tier() != Some(send) {
                    if edited.is_none() {
                        edited = call.json.clone();
                    }
                    if let Some(json) = edited.as_mut() {
                        latency::apply_converse(json, send);
                    }
                }
            }
            Operation::Invoke | Operation::InvokeStream => {
                latency::apply_invoke(&mut headers, send)
            }
            Operation::CountTokens => {}
        }
    }
    let body = match edited {
        Some(json) => Bytes::from(json.to_string()),
        None => call.body.clone(),
    };
    Prepared {
        body,
        headers,
        tier: tier.send.or_else(|| match call.requested_tier() {
            Some("optimized") => Some("optimized"),
            Some("standard") => Some("standard"),
            _ => None,
        }),
        cache_points,
        notes,
    }
}

/// Calls the route's targets: the latency, fallback and prompt-cache policies
/// apply per attempt.
async fn upstream(
    state: &AppState,
    rt: &Runtime,
    call: &Call,
    provenance: &mut Provenance,
) -> Result<Answer, ProxyError> {
    let route = &call.routed.route;
    let route_label = metrics::route_label(&route.name);
    // The client's section sizes, measured once for the registry and every
    // target's plan (routes with prompt caching on only).
    let prefixes = plannable(call)
        .filter(|_| route.config.prompt_cache.mode != PromptCacheMode::Off)
        .map(|(json, format)| Prefixes::of(json, format));
    let sightings = observe_prefixes(rt, &state.prefixes, call, prefixes).await;
    let targets = fallback::targets(rt, route, &call.routed.upstream_model)?;
    let prepare = |target: &Target| prepare(rt, call, target, sightings, prefixes);
    let chain = Chain {
        route: &route.name,
        op: call.op,
        resilience: &route.config.resilience,
        breakers: &state.breakers,
        started: call.started,
        prepare: &prepare,
    };
    let mut done = Attempted::default();
    let result = chain.run(&targets, &mut done).await;
    provenance.attempts += done.attempts;
    provenance.cache_points = done.cache_points;
    provenance.tier_sent = done.tier;
    provenance.other_model = done
        .target
        .as_ref()
        .and_then(|label| targets.iter().find(|t| &t.label == label))
        .is_some_and(|t| t.model != call.routed.upstream_model);
    provenance.target = done.target;
    if let Err(e) = &result {
        if e.side == Side::Upstream {
            metrics::upstream_error(&route_label, e.kind);
        }
    }
    result
}

/// What a whole answer says about itself: from the Converse body, or from
/// InvokeModel's `x-amzn-bedrock-*` headers.
pub fn summarize(op: Operation, headers: &HeaderMap, body: &[u8]) -> Summary {
    match op {
        Operation::Converse => Summary::of_response_bytes(body),
        Operation::Invoke => {
            let n = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let input = n("x-amzn-bedrock-input-token-count");
            let output = n("x-amzn-bedrock-output-token-count");
            // Only the stop reason is read; the rest of the body is skipped, not built.
            #[derive(serde::Deserialize)]
            struct Stop {
                stop_reason: Option<Value>,
                #[serde(rename = "stopReason")]
                stop_reason_camel: Option<Value>,
            }
            let stop_reason = serde_json::from_slice::<Stop>(body).ok().and_then(|v| {
                let text = |v: Option<Value>| match v {
                    Some(Value::String(s)) => Some(s),
                    _ => None,
                };
                text(v.stop_reason).or_else(|| text(v.stop_reason_camel))
            });
            Summary {
                stop_reason,
                usage: Some(Usage {
                    input_tokens: input,
                    output_tokens: output,
                    total_tokens: input + output,
                    cache_read_input_tokens: n("x-amzn-bedrock-cache-read-input-token-count"),
                    cache_write_input_tokens: n("x-amzn-bedrock-cache-write-input-token-count"),
                }),
                latency_tier: headers
                    .get("x-amzn-bedrock-performanceconfig-latency")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                latency_ms: Some(n("x-amzn-bedrock-invocation-latency")),
            }
        }
        _ => Summary::default(),
    }
}
