//! The prompt-cache planner: Bedrock's prompt cache for applications that never
//! mark their prompts. It inserts `cachePoint` blocks (Converse) or
//! `cache_control` markers (Anthropic bodies on InvokeModel) after the tools,
//! after the system prompt, and at the tail of a multi-turn conversation, only
//! where the prefix reaches the model's minimum, within the model's limit
//! counting the client's own markers, never on models without prompt caching,
//! and only where caching pays for itself. Nothing else in the request changes.
//!
//! # When it pays off
//! A prefix of P tokens used n times within the cache TTL costs, without caching,
//! n·P·input; with caching, P·write + (n−1)·P·read. Caching saves money when
//! n > (write − read) / (input − read). With Claude's prices (write 1.25×, read
//! 0.1× input) that is n > 1.28, so a prefix must be used at least twice; with
//! Nova's (write = input) any use breaks even. `auto` predicts reuse from
//! sightings: it marks a system or tool prefix once the registry has seen it
//! `min_repeats` times (default 2) within the route's window, or from the first
//! sighting when the catalog says writing costs no premium. A conversation tail
//! is marked once the conversation has two or more user turns: such a
//! conversation usually continues, and its next turn reads everything the last
//! one wrote. `always` marks wherever the minimum is reached.
//!
//! - [`registry`]: which prefixes repeat.

pub mod registry;

use serde_json::{json, Map, Value};
use std::sync::Arc;

use crate::catalog::ModelInfo;
use crate::config::{CachePosition, PromptCacheConfig, PromptCacheMode};
use bedrock_wire::tokens;

pub use registry::PrefixRegistry;

/// Why a position got no cache point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The model has no prompt cache, or is not in the catalog.
    UnsupportedModel,
    /// The prefix is shorter than the model's minimum per checkpoint.
    BelowMinimum,
    /// The model's limit is reached, counting the client's own points.
    NoBudget,
    /// Not seen often enough to repay the write premium.
    NotRepeated,
    /// The client already marked this position.
    ClientHasIt,
    /// The model cannot cache tool definitions.
    ToolsNotCacheable,
    /// The route asked for the 1h TTL, which the model lacks: 5 minutes was used.
    TtlUnavailable,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Skip::UnsupportedModel => "unsupported_model",
            Skip::BelowMinimum => "below_minimum",
            Skip::NoBudget => "no_budget",
            Skip::NotRepeated => "not_repeated",
            Skip::ClientHasIt => "client_marked",
            Skip::ToolsNotCacheable => "tools_not_cacheable",
            Skip::TtlUnavailable => "ttl_unavailable",
        }
    }
}

/// What the planner did to one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub injected: Vec<CachePosition>,
    pub skipped: Vec<(CachePosition, Skip)>,
    /// The injected points ask for the 1-hour TTL.
    pub ttl_1h: bool,
}

/// How often the registry has seen a request's fixed prefixes (this sighting
/// included); `None` when the request has no such section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sightings {
    pub tools: Option<u64>,
    pub system: Option<u64>,
}

/// The body format being planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Bedrock Converse: `cachePoint` blocks.
    Converse,
    /// Anthropic Messages on InvokeModel: `cache_control` markers.
    Anthropic,
}

impl Format {
    /// The format of an InvokeModel body the planner can mark, if any.
    pub fn of_invoke_body(body: &Value) -> Option<Format> {
        body.get("anthropic_version").map(|_| Format::Anthropic)
    }
}

/// Token counts at the end of each section, in cache order (tools, then system,
/// then messages), by the same estimator the simulator bills with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefixes {
    pub tools_end: u32,
    pub system_end: u32,
    pub total: u32,
    pub has_tools: bool,
    pub has_system: bool,
    pub user_turns: usize,
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn is_point(v: &Value) -> bool {
    v.get("cachePoint").is_some()
}

fn has_control(v: &Value) -> bool {
    v.get("cache_control").is_some()
}

impl Prefixes {
    /// Measures a body.
    pub fn of(body: &Value, format: Format) -> Prefixes {
        let messages = array(body, "messages");
        let user_turns = messages.iter().filter(|m| m["role"] == "user").count();
        match format {
            Format::Converse => {
                let tools = body
                    .get("toolConfig")
                    .map_or(&[][..], |t| array(t, "tools"));
                let system = array(body, "system");
                let tools_end: u32 = tools.iter().map(tokens::converse_tool).sum();
                let system_end = tools_end + system.iter().map(tokens::converse_block).sum::<u32>();
                Prefixes {
                    tools_end,
                    system_end,
                    total: system_end + messages.iter().map(tokens::converse_message).sum::<u32>(),
                    has_tools: tools.iter().any(|t| !is_point(t)),
                    has_system: system.iter().any(|b| !is_point(b)),
                    user_turns,
                }
            }
            Format::Anthropic => {
                let tools = array(body, "tools");
                let tools_end: u32 = tools.iter().map(tokens::anthropic_tool).sum();
                let system = body.get("system").unwrap_or(&Value::Null);
                let system_end = tools_end + tokens::anthropic_content(system);
                Prefixes {
                    tools_end,
                    system_end,
                    total: system_end + messages.iter().map(tokens::anthropic_message).sum::<u32>(),
                    has_tools: !tools.is_empty(),
                    has_system: match system {
                        Value::String(s) => !s.is_empty(),
                        Value::Array(a) => !a.is_empty(),
                        _ => false,
                    },
                    user_turns,
                }
            }
        }
    }

    fn at(&self, position: CachePosition) -> u32 {
        match position {
            CachePosition::Tools => self.tools_end,
            CachePosition::System => self.system_end,
            CachePosition::Conversation => self.total,
        }
    }

    fn has(&self, position: CachePosition) -> bool {
        match position {
            CachePosition::Tools => self.has_tools,
            CachePosition::System => self.has_system,
            CachePosition::Conversation => self.user_turns >= 2,
        }
    }
}

/// The client's own markers, and whether each position (tools, system,
/// conversation tail) already ends with one.
fn client_marks(body: &Value, format: Format) -> (u32, [bool; 3]) {
    let (tools, marked): (&[Value], fn(&Value) -> bool) = match format {
        Format::Converse => (
            body.get("toolConfig")
                .map_or(&[][..], |t| array(t, "tools")),
            is_point,
        ),
        Format::Anthropic => (array(body, "tools"), has_control),
    };
    let system = array(body, "system");
    let messages = array(body, "messages");
    let count = tools.iter().filter(|v| marked(v)).count()
        + system.iter().filter(|v| marked(v)).count()
        + messages
            .iter()
            .map(|m| array(m, "content").iter().filter(|v| marked(v)).count())
            .sum::<usize>();
    let ends = [
        tools.last().is_some_and(marked),
        system.last().is_some_and(marked),
        messages
            .last()
            .is_some_and(|m| array(m, "content").last().is_some_and(marked)),
    ];
    (count as u32, ends)
}

fn index(position: CachePosition) -> usize {
    match position {
        CachePosition::Tools => 0,
        CachePosition::System => 1,
        CachePosition::Conversation => 2,
    }
}

/// The prompt-cache limits to plan with for a model id: the catalog's model,
/// or, for a prompt router, the most restrictive of the models it may choose
/// (the router decides after the call is sent): caching only if every member
/// caches, the highest minimum, the fewest points, tools and the 1-hour TTL
/// only if all have them, and the dearest cache write relative to input. A
/// router with a member the catalog does not know gets no limits, so the
/// request is left alone.
pub fn limits_for(catalog: &crate::catalog::Catalog, model_id: &str) -> Option<Arc<ModelInfo>> {
    let Some(router) = catalog.router(model_id) else {
        return catalog.get(model_id).map(|l| l.model.clone());
    };
    let members = router
        .models
        .iter()
        .map(|id| catalog.get(id).map(|l| l.model.clone()))
        .collect::<Option<Vec<_>>>()?;
    let write_ratio = |m: &ModelInfo| {
        if m.price.input > 0.0 {
            m.price.cache_write() / m.price.input
        } else {
            1.0
        }
    };
    let dearest = members
        .iter()
        .max_by(|a, b| write_ratio(a).total_cmp(&write_ratio(b)))?;
    let mut limits = ModelInfo::clone(dearest);
    limits.id = router.id.clone();
    limits.prompt_cache = members.iter().all(|m| m.prompt_cache);
    limits.cache_tools = members.iter().all(|m| m.cache_tools);
    limits.cache_ttl_1h = members.iter().all(|m| m.cache_ttl_1h);
    limits.cache_min_tokens = members.iter().map(|m| m.cache_min_tokens).max()?;
    limits.max_cache_points = members.iter().map(|m| m.max_cache_points).min()?;
    Some(Arc::new(limits))
}

/// Sightings a prefix needs before `auto` marks it: `min_repeats`, or 1 when
/// the catalog says a cache write costs no more than plain input.
pub fn sightings_needed(model: &ModelInfo, policy: &PromptCacheConfig) -> u64 {
    if model.price.cache_write() <= model.price.input {
        1
    } else {
        u64::from(policy.min_repeats)
    }
}

/// Decides where cache points go in `body`, whose section sizes are
/// `prefixes` ([`Prefixes::of`] the same body); [`apply`] puts them there. The
/// body is only read, so a request is copied only when something is injected.
pub fn decide(
    body: &Value,
    format: Format,
    model: Option<&ModelInfo>,
    policy: &PromptCacheConfig,
    sightings: Sightings,
    prefixes: Prefixes,
) -> Plan {
    let mut plan = Plan::default();
    if policy.mode == PromptCacheMode::Off {
        return plan;
    }
    let wanted: Vec<CachePosition> = [
        CachePosition::System,
        CachePosition::Conversation,
        CachePosition::Tools,
    ]
    .into_iter()
    .filter(|p| policy.positions.contains(p) && prefixes.has(*p))
    .collect();
    let Some(model) = model.filter(|m| m.prompt_cache) else {
        plan.skipped = wanted
            .into_iter()
            .map(|p| (p, Skip::UnsupportedModel))
            .collect();
        return plan;
    };
    let (client_points, client_ends) = client_marks(body, format);
    let mut budget = model.max_cache_points.saturating_sub(client_points);
    let needed = sightings_needed(model, policy);
    for position in wanted {
        let seen = match position {
            CachePosition::Tools => sightings.tools,
            CachePosition::System => sightings.system,
            CachePosition::Conversation => None,
        };
        let skip = if client_ends[index(position)] {
            Some(Skip::ClientHasIt)
        } else if position == CachePosition::Tools && !model.cache_tools {
            Some(Skip::ToolsNotCacheable)
        } else if prefixes.at(position) < model.cache_min_tokens.max(1) {
            Some(Skip::BelowMinimum)
        } else if policy.mode == PromptCacheMode::Auto
            && position != CachePosition::Conversation
            && seen.unwrap_or(0) < needed
        {
            Some(Skip::NotRepeated)
        } else if budget == 0 {
            Some(Skip::NoBudget)
        } else {
            None
        };
        match skip {
            Some(reason) => plan.skipped.push((position, reason)),
            None => {
                budget -= 1;
                plan.injected.push(position);
            }
        }
    }
    if plan.injected.is_empty() {
        return plan;
    }
    plan.ttl_1h = policy.ttl_1h && model.cache_ttl_1h;
    if policy.ttl_1h && !model.cache_ttl_1h {
        plan.skipped.push((plan.injected[0], Skip::TtlUnavailable));
    }
    plan
}

/// Puts the cache points `plan` decided into `body`.
pub fn apply(body: &mut Value, format: Format, plan: &Plan) {
    for position in &plan.injected {
        match format {
            Format::Converse => mark_converse(body, *position, plan.ttl_1h),
            Format::Anthropic => mark_anthropic(body, *position, plan.ttl_1h),
        }
    }
}

fn cache_point(ttl_1h: bool) -> Value {
    let mut point = Map::new();
    point.insert("type".into(), "default".into());
    if ttl_1h {
        point.insert("ttl".into(), "1h".into());
    }
    json!({ "cachePoint": point })
}

fn cache_control(ttl_1h: bool) -> Value {
    if ttl_1h {
        json!({"type": "ephemeral", "ttl": "1h"})
    } else {
        json!({"type": "ephemeral"})
    }
}

fn mark_converse(body: &mut Value, position: CachePosition, ttl_1h: bool) {
    let list = match position {
        CachePosition::Tools => body.get_mut("toolConfig").and_then(|t| t.get_mut("tools")),
        CachePosition::System => body.get_mut("system"),
        CachePosition::Conversation => body
            .get_mut("messages")
            .and_then(Value::as_array_mut)
            .and_then(|m| m.last_mut())
            .and_then(|m| m.get_mut("content")),
    };
    if let Some(list) = list.and_then(Value::as_array_mut) {
        list.push(cache_point(ttl_1h));
    }
}

/// Puts `cache_control` on the last block of `value`, turning a plain string
/// into one text block first.
fn mark_last_block(value: &mut Value, ttl_1h: bool) {
    if let Value::String(text) = value {
        *value = json!([{ "type": "text", "text": std::mem::take(text) }]);
    }
    if let Some(last) = value
        .as_array_mut()
        .and_then(|a| a.last_mut())
        .and_then(Value::as_object_mut)
    {
        last.insert("cache_control".into(), cache_control(ttl_1h));
    }
}

fn mark_anthropic(body: &mut Value, position: CachePosition, ttl_1h: bool) {
    match position {
        CachePosition::Tools => {
            if let Some(tools) = body.get_mut("tools") {
                mark_last_block(tools, ttl_1h);
            }
        }
        CachePosition::System => {
            if let Some(system) = body.get_mut("system") {
                mark_last_block(system, ttl_1h);
            }
        }
        CachePosition::Conversation => {
            if let Some(content) = body
                .get_mut("messages")
                .and_then(Value::as_array_mut)
                .and_then(|m| m.last_mut())
                .and_then(|m| m.get_mut("content"))
            {
                mark_last_block(content, ttl_1h);
            }
        }
    }
}

#[cfg(test)]
mod tests;
