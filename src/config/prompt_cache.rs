//! `[prompt_cache]`: the prefix registry shared by every route. A route's own
//! prompt-cache policy is `routes/prompt_cache.rs`.

use serde::Deserialize;

/// The prefix registry.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptCacheGlobal {
    /// Prefixes remembered at most (least recently seen go first).
    pub max_prefixes: u64,
}

impl Default for PromptCacheGlobal {
    fn default() -> Self {
        PromptCacheGlobal {
            max_prefixes: 100_000,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPromptCacheGlobal {
    max_prefixes: Option<u64>,
}

pub(super) fn validate(raw: RawPromptCacheGlobal, _e: &mut Vec<String>) -> PromptCacheGlobal {
    let d = PromptCacheGlobal::default();
    PromptCacheGlobal {
        // A registry of no prefixes could never see one twice.
        max_prefixes: raw.max_prefixes.unwrap_or(d.max_prefixes).max(1),
    }
}
