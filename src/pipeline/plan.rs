//! Per-attempt planning: what one attempt on one target sends. For Bedrock
//! targets, the client's request, plus the prompt-cache planner's `cachePoint`
//! blocks for the target's model (fed by what the prefix registry learned) and
//! the latency and service-tier planners' tiers for its model and region; when none changes
//! anything, the client's bytes go out untouched. For targets that take chat
//! requests (`openai`, `sagemaker`), the call translated once ([`egress`]),
//! with the target's model and stream flags: the planners leave them alone
//! (tiers are Bedrock's; such servers cache prefixes on their own). Each
//! attempt carries the settlement its answer's usage is attributed by.

use bedrock_wire::operation::Operation;
use bytes::Bytes;
use serde_json::Value;

use std::sync::Arc;

use super::Call;
use crate::answer::Settle;
use crate::chat::{self, ChatRequest};
use crate::config::{CachePosition, CacheTtl, PromptCacheMode, UpstreamKind};
use crate::error::ProxyError;
use crate::json_body::JsonBody;
use crate::latency;
use crate::metrics;
use crate::prompt_cache::ledger::{self, field, Prices, Sight, Update};
use crate::prompt_cache::settle::Settlement;
use crate::prompt_cache::{self, Observations, Observed, PrefixRegistry, Survey};
use crate::runtime::Runtime;
use crate::service_tier;
use crate::upstream::chain::{PlanNotes, Prepared, Target};
use bedrock_wire::tier::{LatencyTier, ServiceTier};

/// The body format the prompt-cache planner can mark in this call, if any,
/// with the body (read from its text: the planner never builds its tree).
pub(super) fn plannable(call: &Call) -> Option<(&JsonBody, prompt_cache::Format)> {
    let body = call.json.as_ref()?;
    let format = match call.op {
        Operation::Converse | Operation::ConverseStream => prompt_cache::Format::Converse,
        Operation::Invoke | Operation::InvokeStream => {
            prompt_cache::Format::of_invoke_body(body.head())?
        }
        Operation::CountTokens => return None,
    };
    Some((body, format))
}

/// Records one sighting of each of the call's prefixes (tools, system prompt,
/// opening message, conversation) in the registry and reads what was learned
/// about them: only routes that count sightings (`auto`) or choose TTLs from gaps
/// (`ttl = "auto"`) need it, and only prefixes long enough for the model's
/// prompt cache are worth tracking.
pub(super) async fn observe_prefixes(
    rt: &Runtime,
    registry: &PrefixRegistry,
    call: &Call,
    survey: Option<&Survey>,
) -> Observations {
    let policy = &call.routed.route.config.prompt_cache;
    let mut observed = Observations::default();
    if policy.mode != PromptCacheMode::Auto && policy.ttl != CacheTtl::Auto {
        return observed;
    }
    let Some(survey) = survey else {
        return observed;
    };
    let sizes = survey.prefixes;
    let model_id = &call.routed.upstream_model;
    let Some(model) = prompt_cache::limits_for(&rt.catalog, model_id).filter(|m| m.prompt_cache)
    else {
        return observed;
    };
    let learn = policy.mode == PromptCacheMode::Auto && policy.learn;
    let prices = Prices::of(&model.price);
    let now = registry.now_ms();
    let retention = i64::try_from(registry.retention().as_millis()).unwrap_or(i64::MAX);
    let window = i64::try_from(policy.window.as_millis()).unwrap_or(i64::MAX);
    let tenant = &call.principal.tenant;
    for section in [
        CachePosition::Tools,
        CachePosition::System,
        CachePosition::Head,
        CachePosition::Conversation,
    ] {
        let tokens = sizes.at(section);
        // A conversation's first turn is tracked only to see the gap before
        // its second, which `ttl = "auto"` needs.
        let first_turn = section == CachePosition::Conversation
            && sizes.user_turns == 1
            && policy.ttl == CacheTtl::Auto;
        if !policy.positions.contains(&section)
            || !(sizes.has(section) || first_turn)
            || tokens < model.cache_min_tokens.max(1)
        {
            continue;
        }
        let Some(digest) = survey.digest(section) else {
            continue;
        };
        let key = PrefixRegistry::prefix_key(tenant, &model.id, section, &digest, tokens);
        let sight = Update {
            sight: Some(Sight {
                now_ms: now,
                window_ms: window,
            }),
            ..Update::default()
        };
        let fields = registry.update(&key, &sight, policy.window).await;
        let ttl_1h = model.cache_ttl_1h
            && policy.ttl == CacheTtl::Auto
            && ledger::one_hour_pays(
                &prices,
                fields.get(field::GAPS_SHORT),
                fields.get(field::GAPS_MID),
                fields.get(field::GAPS_LONG),
            );
        let mut hold = None;
        let mut extra = 0;
        if learn {
            let judged = ledger::judge(&fields, now, ttl_1h, retention);
            hold = judged.hold;
            if !judged.update.is_empty() {
                registry.update(&key, &judged.update, policy.window).await;
            }
            let class = PrefixRegistry::class_key(tenant, &model.id, section);
            let class_fields = registry.read(&class).await;
            let judged = ledger::judge_class(&class_fields, now, retention);
            extra = judged.extra;
            if !judged.update.is_empty() {
                registry.update(&class, &judged.update, policy.window).await;
            }
        }
        let (reads, writes) = (fields.get(field::READS), fields.get(field::WRITES));
        *observed.slot(section) = Some(Observed {
            key: Some(key),
            sightings: u64::try_from(fields.get(field::SIGHTINGS)).unwrap_or(0),
            extra: u64::try_from(extra).unwrap_or(0),
            hold,
            ttl_1h,
            reads_per_write: (reads + 1) as f64 / (writes + 1) as f64,
            proven: writes > 0 && fields.get(field::SAVED) > 0,
            first_write: writes == 0,
            credit_bucket: fields.get(field::CREDIT_BUCKET),
        });
    }
    observed
}

/// The chat request the call becomes for the targets that take one,
/// translated once, and the targets that can be tried. A chat target that
/// cannot take the call (a field chat servers have no form for, an operation
/// other than Converse) is left out of the chain; when it is the primary, the
/// call is refused before any upstream is called, naming the field and the route.
pub(super) fn egress(
    call: &Call,
    targets: Vec<Target>,
) -> Result<(Vec<Target>, Option<ChatRequest>), ProxyError> {
    if !targets.iter().any(|t| t.upstream.config.kind.speaks_chat()) {
        return Ok((targets, None));
    }
    let route = &call.routed.route.name;
    let translated = match (call.op, call.tree()) {
        (Operation::Converse | Operation::ConverseStream, Some(json)) => {
            chat::request(json).map_err(|refused| refused.to_string())
        }
        (op, _) => Err(format!(
            "the operation {} has no form on a chat server; call converse or converse-stream",
            op.name()
        )),
    };
    let refused = match translated {
        Ok(chat) => return Ok((targets, Some(chat))),
        Err(refused) => refused,
    };
    let served_by = |t: &Target| {
        format!(
            "route `{route}` is served by upstream `{}` ({}), which takes OpenAI chat requests",
            t.upstream.name, t.upstream.config.kind
        )
    };
    if let Some(primary) = targets
        .first()
        .filter(|t| t.upstream.config.kind.speaks_chat())
    {
        return Err(ProxyError::validation(format!(
            "{refused}. The {}.",
            served_by(primary)
        )));
    }
    let label = metrics::route_label(route);
    let kept = targets
        .into_iter()
        .filter(|t| {
            let chat = t.upstream.config.kind.speaks_chat();
            if chat {
                metrics::target_skipped(&label, &t.label, "untranslatable");
                tracing::debug!(route = %route, target = %t.label, reason = %refused, "target left out: {}", served_by(t));
            }
            !chat
        })
        .collect();
    Ok((kept, None))
}

/// The body and headers of one attempt on `target`. What the planners decided
/// is counted when the attempt is sent, not here: the chain also plans targets
/// it may not try.
pub(super) fn prepare(
    rt: &Runtime,
    registry: &Arc<PrefixRegistry>,
    call: &Call,
    target: &Target,
    observed: &Observations,
    survey: Option<&Survey>,
    chat: &Option<ChatRequest>,
) -> Prepared {
    let upstream = &target.upstream;
    if upstream.config.kind.speaks_chat() {
        let model = (upstream.config.kind == UpstreamKind::OpenAi).then_some(&*target.model);
        let body = chat::finish_request(
            chat.clone().unwrap_or_default(),
            model,
            call.op.is_stream(),
            upstream.asks_stream_usage(),
        );
        return Prepared {
            body: Bytes::from(body.to_string()),
            headers: Vec::new(),
            tier: None,
            service_tier: None,
            cache_points: 0,
            notes: PlanNotes::default(),
            settle: None,
        };
    }
    let route = &call.routed.route;
    let mut notes = PlanNotes::default();
    let lookup = rt.catalog.get(&target.model);
    let mut headers = call.forward.clone();
    let region = &target.upstream.config.region;
    let mut tier = latency::plan(target.latency, call.requested_tier(), lookup, region);
    notes.downgraded = tier.downgraded.map(|reason| reason.label());
    // CountTokens has no service tier: nothing is planned, sent or counted.
    let service = match call.op {
        Operation::CountTokens => service_tier::ServicePlan::default(),
        _ => service_tier::plan(
            target.service_tier,
            call.requested_service_tier(),
            &rt.catalog,
            &target.model,
            region,
        ),
    };
    notes.service_downgraded = service.downgraded.map(|reason| reason.label());
    let service_sent = service.send.or_else(|| call.requested_service_tier());
    // Flex trades speed for price: it goes with the standard latency tier.
    if service_sent == Some(ServiceTier::Flex)
        && (tier.send == Some(LatencyTier::Optimized)
            || (tier.send.is_none() && call.requested_tier() == Some(LatencyTier::Optimized)))
    {
        tier.send = Some(LatencyTier::Standard);
        notes.downgraded = Some(latency::FLEX_DOWNGRADE);
    }

    let converse = matches!(call.op, Operation::Converse | Operation::ConverseStream);
    let latency_edit = tier
        .send
        .filter(|send| converse && call.requested_tier() != Some(*send));
    let service_edit = service
        .send
        .filter(|send| converse && call.requested_service_tier() != Some(*send));
    if !converse {
        if let Some(send) = tier.send.filter(|_| call.op != Operation::CountTokens) {
            latency::apply_invoke(&mut headers, send);
        }
        if let Some(send) = service.send.filter(|_| call.op != Operation::CountTokens) {
            service_tier::apply_invoke(&mut headers, send);
        }
    }
    let tiers = |json: &mut Value| {
        if let Some(send) = latency_edit {
            latency::apply_converse(json, send);
        }
        if let Some(send) = service_edit {
            service_tier::apply_converse(json, send);
        }
    };

    // The planners' edits, spliced into the client's text: cache points (with
    // the tiers), else the tiers alone.
    let mut edited: Option<Bytes> = None;
    let mut cache_points = 0;
    let mut settle = None;
    let policy = &route.config.prompt_cache;
    let planned = survey.and_then(|survey| call.json.as_ref().map(|json| (json, survey)));
    if let Some((json, survey)) = planned {
        // A prompt router is planned with its most restrictive model's limits.
        let model = prompt_cache::limits_for(&rt.catalog, &target.model);
        // What was observed is about the route's model: a fallback to another
        // model is planned on sightings alone and teaches nothing.
        let same_model = model.is_some() && !target.other_model;
        let stripped;
        let observed = if same_model {
            observed
        } else {
            stripped = Observations {
                tools: observed.tools.as_ref().map(sightings_only),
                system: observed.system.as_ref().map(sightings_only),
                head: observed.head.as_ref().map(sightings_only),
                conversation: observed.conversation.as_ref().map(sightings_only),
            };
            &stripped
        };
        let plan = prompt_cache::decide(survey, model.as_deref(), policy, observed);
        notes.injected = plan
            .injected
            .iter()
            .map(|p| (p.position.name(), if p.ttl_1h { "1h" } else { "5m" }))
            .collect();
        notes.skipped = plan
            .skipped
            .iter()
            .map(|(p, reason)| (p.name(), reason.label()))
            .collect();
        cache_points = plan.injected.len() as u32;
        if cache_points > 0 {
            edited = Some(survey.planned(json, &plan, tiers));
        }
        if let Some(model) = model.filter(|m| m.prompt_cache) {
            settle = Some(Settle(Arc::new(Settlement::new(
                registry.clone(),
                route.name.clone(),
                call.principal.tenant.clone(),
                model,
                policy.window,
                survey,
                &plan,
                same_model.then_some(observed),
            ))));
        }
    }

    let body = match (edited, &call.json) {
        (Some(body), _) => body,
        (None, Some(json)) if latency_edit.is_some() || service_edit.is_some() => {
            json.edited(tiers)
        }
        _ => call.body.clone(),
    };
    Prepared {
        body,
        headers,
        tier: tier.send.or_else(|| call.requested_tier()),
        service_tier: service_sent,
        cache_points,
        notes,
        settle,
    }
}

/// What a fallback to another model may use of an observation: its sightings.
fn sightings_only(o: &Observed) -> Observed {
    Observed {
        sightings: o.sightings,
        reads_per_write: 1.0,
        first_write: true,
        ..Observed::default()
    }
}
