//! `[routes.prompt_cache]` (or `prompt_cache = { ... }` in a route): when and
//! where the planner injects cachePoint blocks for a route. The prefix
//! registry they share is `[prompt_cache]`.

use serde::Deserialize;
use std::time::Duration;

use crate::config::names::choose;
use crate::config::values::duration_or;

named_enum! {
    /// When the planner injects cache points.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum PromptCacheMode {
        #[default]
        Off = "off",
        /// Where expected reuse repays the cache-write premium.
        Auto = "auto",
        /// Wherever the prefix reaches the model's minimum.
        Always = "always",
    }
}

named_enum! {
    /// Where the prompt-cache planner may put cachePoint blocks, in cache order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum CachePosition {
        /// After the tool definitions.
        Tools = "tools",
        /// After the system prompt.
        System = "system",
        /// After a conversation's first message (a long opening, such as a
        /// document or examples, that many conversations or turns share).
        Head = "head",
        /// At the end of a multi-turn conversation, so the next turn reads it.
        Conversation = "conversation",
    }
}

named_enum! {
    /// The cache TTL the planner's points ask for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum CacheTtl {
        #[default]
        FiveMinutes = "5m",
        /// Where the model offers it; 5 minutes elsewhere.
        OneHour = "1h",
        /// Per prefix, from the gaps between its uses (1 hour where it pays).
        Auto = "auto",
    }
}

/// A route's prompt-cache policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptCacheConfig {
    pub mode: PromptCacheMode,
    /// Sightings of a prefix within `window` before `auto` caches it (when
    /// writing costs more than reading it back saves on one use).
    pub min_repeats: u32,
    /// Sightings of a prefix count while each follows the last within this long.
    pub window: Duration,
    /// The TTL the points ask for.
    pub ttl: CacheTtl,
    /// `auto` learns from what Bedrock reports: prefixes whose writes are not
    /// read back are backed off, and classes of prefixes whose first writes go
    /// unread need more sightings.
    pub learn: bool,
    pub positions: Vec<CachePosition>,
}

/// A route without a `prompt_cache` table: no cache points are injected.
impl Default for PromptCacheConfig {
    fn default() -> Self {
        PromptCacheConfig {
            mode: PromptCacheMode::default(),
            min_repeats: 2,
            window: Duration::from_secs(600),
            ttl: CacheTtl::FiveMinutes,
            learn: true,
            positions: vec![
                CachePosition::Tools,
                CachePosition::System,
                CachePosition::Head,
                CachePosition::Conversation,
            ],
        }
    }
}

impl PromptCacheConfig {
    /// A route whose `prompt_cache` table sets no `mode`: writing the table
    /// turns the planner on where reuse repays the write premium; every other
    /// key keeps its default.
    pub(crate) fn enabled() -> Self {
        PromptCacheConfig {
            mode: PromptCacheMode::Auto,
            ..PromptCacheConfig::default()
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPromptCache {
    mode: Option<String>,
    min_repeats: Option<u32>,
    window: Option<String>,
    ttl: Option<String>,
    learn: Option<bool>,
    positions: Option<Vec<String>>,
}

pub(super) fn validate(
    route_key: &str,
    raw: Option<RawPromptCache>,
    e: &mut Vec<String>,
) -> PromptCacheConfig {
    let Some(raw) = raw else {
        return PromptCacheConfig::default();
    };
    let key = format!("{route_key}.prompt_cache");
    let d = PromptCacheConfig::enabled();
    let mode = raw
        .mode
        .and_then(|v| choose(&format!("{key}.mode"), &v, PromptCacheMode::NAMES, e))
        .unwrap_or(d.mode);
    let ttl = raw
        .ttl
        .and_then(|v| choose(&format!("{key}.ttl"), &v, CacheTtl::NAMES, e))
        .unwrap_or(d.ttl);
    let positions = match raw.positions {
        None => d.positions,
        Some(list) => list
            .iter()
            .filter_map(|p| choose(&format!("{key}.positions"), p, CachePosition::NAMES, e))
            .collect(),
    };
    let min_repeats = raw.min_repeats.unwrap_or(d.min_repeats);
    if min_repeats == 0 {
        e.push(format!("{key}.min_repeats: must be at least 1"));
    }
    PromptCacheConfig {
        mode,
        min_repeats,
        window: duration_or(&format!("{key}.window"), raw.window, d.window, e),
        ttl,
        learn: raw.learn.unwrap_or(d.learn),
        positions,
    }
}
