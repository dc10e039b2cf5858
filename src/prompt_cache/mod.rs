//! The prompt-cache planner: Bedrock's prompt cache for applications that never
//! mark their prompts. It inserts `cachePoint` blocks (Converse) or
//! `cache_control` markers (Anthropic bodies on InvokeModel) after the tools,
//! after the system prompt, after a conversation's long opening message, and at
//! the tail of a multi-turn conversation, only where the prefix reaches the
//! model's minimum, within the model's limit counting the client's own markers
//! (which it never touches), never on models without prompt caching, and only
//! where caching pays for itself. Nothing else in the request changes.
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
//! # Learning from outcomes
//! With `learn` (the default), `auto` also learns from what Bedrock reports for
//! the points it added ([`settle`]): a prefix whose writes are not read back
//! often enough to repay them is backed off, and a class of prefixes (tenant,
//! model, section) whose first writes go unread needs one more sighting. When
//! the budget of points is short, the positions with the most tokens re-used
//! per write win. `ttl = "auto"` picks 1 hour per prefix from the gaps between
//! its uses ([`ledger::one_hour_pays`]).
//!
//! - [`registry`]: the ledgers of prefixes and classes, shared through Redis.
//! - [`ledger`]: the arithmetic on them.
//! - [`settle`]: a response's usage attributed to the points that caused it.
//! - [`survey`]: what planning needs of a body, read from its text element by
//!   element (never its whole tree), and the points spliced into that text.

pub mod ledger;
pub mod registry;
pub mod settle;
pub mod survey;

use serde_json::Value;
use std::sync::Arc;

use crate::catalog::ModelInfo;
use crate::config::{CachePosition, CacheTtl, PromptCacheConfig, PromptCacheMode};

pub use ledger::Hold;
pub use registry::{LedgerKey, PrefixRegistry};
use survey::Order;
pub use survey::Survey;

/// Why a position got no cache point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The model has no prompt cache, or is not in the catalog.
    UnsupportedModel,
    /// The prefix is shorter than the model's minimum per checkpoint (or, for a
    /// conversation's opening, adds less than that to the system prompt).
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
    /// Its writes were not read back enough to pay for themselves: backed off.
    Unpaid,
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
            Skip::Unpaid => "unpaid",
        }
    }
}

/// One cache point the planner adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub position: CachePosition,
    /// It asks for the 1-hour TTL.
    pub ttl_1h: bool,
}

/// What the planner did to one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// In cache order (tools, system, head, conversation).
    pub injected: Vec<Point>,
    pub skipped: Vec<(CachePosition, Skip)>,
}

#[cfg(test)]
impl Plan {
    /// The positions that got a point, in cache order.
    pub fn positions(&self) -> Vec<CachePosition> {
        self.injected.iter().map(|p| p.position).collect()
    }
}

/// What the registry knows about one of a request's prefixes (this sighting
/// included), for the planner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Its ledger, where outcomes are recorded.
    pub key: Option<LedgerKey>,
    /// Sightings within the route's window.
    pub sightings: u64,
    /// Sightings (or user turns, for a conversation) its class needs beyond the
    /// route's rule, as learned.
    pub extra: u64,
    pub hold: Option<Hold>,
    /// `ttl = "auto"` chose the hour for it.
    pub ttl_1h: bool,
    /// Reads per write so far (Laplace-smoothed: 1 with no record).
    pub reads_per_write: f64,
    /// Its own writes have paid for themselves.
    pub proven: bool,
    /// The proxy never wrote it before.
    pub first_write: bool,
    /// The class bucket of its last write, which its reads credit.
    pub credit_bucket: i64,
}

/// What the registry knows about each of a request's prefixes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations {
    pub tools: Option<Observed>,
    pub system: Option<Observed>,
    pub head: Option<Observed>,
    pub conversation: Option<Observed>,
}

impl Observations {
    pub fn get(&self, position: CachePosition) -> Option<&Observed> {
        match position {
            CachePosition::Tools => self.tools.as_ref(),
            CachePosition::System => self.system.as_ref(),
            CachePosition::Head => self.head.as_ref(),
            CachePosition::Conversation => self.conversation.as_ref(),
        }
    }

    pub fn slot(&mut self, position: CachePosition) -> &mut Option<Observed> {
        match position {
            CachePosition::Tools => &mut self.tools,
            CachePosition::System => &mut self.system,
            CachePosition::Head => &mut self.head,
            CachePosition::Conversation => &mut self.conversation,
        }
    }
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
/// then messages), by the same estimator the simulator bills with (measured
/// by [`Survey::of`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefixes {
    pub tools_end: u32,
    pub system_end: u32,
    /// The end of the first message.
    pub head_end: u32,
    pub total: u32,
    pub has_tools: bool,
    pub has_system: bool,
    pub messages: usize,
    pub user_turns: usize,
}

impl Prefixes {
    /// Estimated tokens up to the end of a position.
    pub fn at(&self, position: CachePosition) -> u32 {
        match position {
            CachePosition::Tools => self.tools_end,
            CachePosition::System => self.system_end,
            CachePosition::Head => self.head_end,
            CachePosition::Conversation => self.total,
        }
    }

    /// Whether the request has a place for a point at `position`: tools, a
    /// system prompt, a conversation past its opening message (head), a
    /// conversation of two or more user turns.
    pub fn has(&self, position: CachePosition) -> bool {
        match position {
            CachePosition::Tools => self.has_tools,
            CachePosition::System => self.has_system,
            CachePosition::Head => self.messages >= 2,
            CachePosition::Conversation => self.user_turns >= 2,
        }
    }
}

const END: u64 = 999_999;

fn order_of(position: CachePosition, messages: usize) -> Order {
    match position {
        CachePosition::Tools => (0, u64::MAX),
        CachePosition::System => (1, u64::MAX),
        CachePosition::Head => (2, END),
        CachePosition::Conversation => (2, messages.saturating_sub(1) as u64 * 1_000_000 + END),
    }
}

pub(crate) fn index(position: CachePosition) -> usize {
    match position {
        CachePosition::Tools => 0,
        CachePosition::System => 1,
        CachePosition::Head => 2,
        CachePosition::Conversation => 3,
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

/// Decides where cache points go in the body `survey` read, from what the
/// registry `observed`; [`Survey::planned`] puts them there. The body is only
/// read, so a request is copied only when something is injected.
pub fn decide(
    survey: &Survey,
    model: Option<&ModelInfo>,
    policy: &PromptCacheConfig,
    observed: &Observations,
) -> Plan {
    let prefixes = survey.prefixes;
    let mut plan = Plan::default();
    if policy.mode == PromptCacheMode::Off {
        return plan;
    }
    let wanted: Vec<CachePosition> = [
        CachePosition::System,
        CachePosition::Conversation,
        CachePosition::Tools,
        CachePosition::Head,
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
    let client = &survey.client;
    let budget = model.max_cache_points.saturating_sub(client.count) as usize;
    let needed = sightings_needed(model, policy);
    let auto = policy.mode == PromptCacheMode::Auto;
    let learn = auto && policy.learn;
    let minimum = model.cache_min_tokens.max(1);
    let mut candidates = Vec::new();
    for position in wanted {
        let seen = observed.get(position);
        let extra = seen.filter(|o| learn && !o.proven).map_or(0, |o| o.extra);
        let skip = if client.ends[index(position)] {
            Some(Skip::ClientHasIt)
        } else if position == CachePosition::Tools && !model.cache_tools {
            Some(Skip::ToolsNotCacheable)
        } else if prefixes.at(position) < minimum
            || (position == CachePosition::Head
                && prefixes.head_end.saturating_sub(prefixes.system_end) < minimum)
        {
            Some(Skip::BelowMinimum)
        } else if auto
            && match position {
                CachePosition::Conversation => (prefixes.user_turns as u64) < 2 + extra,
                _ => seen.map_or(0, |o| o.sightings) < needed + extra,
            }
        {
            Some(Skip::NotRepeated)
        } else if learn && seen.is_some_and(|o| o.hold == Some(Hold::Unpaid)) {
            Some(Skip::Unpaid)
        } else {
            None
        };
        match skip {
            Some(reason) => plan.skipped.push((position, reason)),
            None => candidates.push(position),
        }
    }
    if candidates.len() > budget {
        // Most tokens re-used per write first: the tokens a point adds beyond the
        // candidate before it, times the reads each of its writes has seen.
        let mut in_order = candidates.clone();
        in_order.sort();
        let value = |p: CachePosition| {
            let before = in_order
                .iter()
                .take_while(|q| **q < p)
                .last()
                .map_or(0, |q| prefixes.at(*q));
            let reuse = observed.get(p).map_or(1.0, |o| o.reads_per_write);
            f64::from(prefixes.at(p).saturating_sub(before)) * reuse
        };
        let mut ranked: Vec<(usize, f64, CachePosition)> = candidates
            .iter()
            .enumerate()
            .map(|(i, p)| (i, value(*p), *p))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (_, _, p) in ranked.into_iter().skip(budget) {
            candidates.retain(|q| *q != p);
            plan.skipped.push((p, Skip::NoBudget));
        }
    }
    if candidates.is_empty() {
        return plan;
    }
    candidates.sort();
    if policy.ttl == CacheTtl::OneHour && !model.cache_ttl_1h {
        plan.skipped.push((candidates[0], Skip::TtlUnavailable));
    }
    let desired = |p: CachePosition| {
        model.cache_ttl_1h
            && match policy.ttl {
                CacheTtl::FiveMinutes => false,
                CacheTtl::OneHour => true,
                CacheTtl::Auto => observed.get(p).is_some_and(|o| o.ttl_1h),
            }
    };
    let mut points: Vec<(Order, Point)> = candidates
        .into_iter()
        .map(|p| {
            (
                order_of(p, prefixes.messages),
                Point {
                    position: p,
                    ttl_1h: desired(p),
                },
            )
        })
        .collect();
    order_ttls(&mut points, &client.ttls, model.cache_ttl_1h);
    plan.injected = points.into_iter().map(|(_, p)| p).collect();
    plan
}

/// Makes TTLs non-increasing in cache order, as Bedrock requires: none of ours
/// asks for the hour after a 5-minute point of the client's; then each of ours
/// before a 1-hour point (the client's or ours) asks for the hour too.
fn order_ttls(points: &mut [(Order, Point)], client: &[(Order, bool)], one_hour_offered: bool) {
    for (at, point) in points.iter_mut() {
        if client.iter().any(|(c, hour)| c < at && !hour) {
            point.ttl_1h = false;
        }
    }
    for i in (0..points.len()).rev() {
        let at = points[i].0;
        let later_hour = client.iter().any(|(c, hour)| *c > at && *hour)
            || points[i + 1..].iter().any(|(_, p)| p.ttl_1h);
        let capped = client.iter().any(|(c, hour)| *c < at && !hour);
        if later_hour && one_hour_offered && !capped {
            points[i].1.ttl_1h = true;
        }
    }
}

#[cfg(test)]
mod tests;
