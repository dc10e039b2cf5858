//! `[prompt_cache]`: the prefix registry shared by every route. A route's own
//! prompt-cache policy is `routes/prompt_cache.rs`.

use serde::Deserialize;
use std::time::Duration;

use crate::config::values::duration_or;

/// The prefix registry.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptCacheGlobal {
    /// Prefixes remembered at most (least recently seen go first).
    pub max_prefixes: u64,
    /// How long what was learned about a prefix (gaps, writes, reads, savings,
    /// back-off) is kept after its last use.
    pub retention: Duration,
    /// Multiplies the learning clock's durations: 0.01 makes an hour pass in 36
    /// seconds, to pair with a simulator at the same `--time-scale` in
    /// benchmarks. Read at start.
    pub time_scale: f64,
}

impl Default for PromptCacheGlobal {
    fn default() -> Self {
        PromptCacheGlobal {
            max_prefixes: 100_000,
            retention: Duration::from_secs(24 * 3600),
            time_scale: 1.0,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPromptCacheGlobal {
    max_prefixes: Option<u64>,
    retention: Option<String>,
    time_scale: Option<f64>,
}

pub(super) fn validate(raw: RawPromptCacheGlobal, e: &mut Vec<String>) -> PromptCacheGlobal {
    let d = PromptCacheGlobal::default();
    let retention = duration_or("prompt_cache.retention", raw.retention, d.retention, e);
    if retention < Duration::from_secs(3600) {
        // Shorter, a gap of over an hour could never be seen, nor a 1-hour write judged.
        e.push("prompt_cache.retention: must be at least 1h".into());
    }
    let time_scale = raw.time_scale.unwrap_or(d.time_scale);
    if !(time_scale > 0.0 && time_scale.is_finite()) {
        e.push(format!(
            "prompt_cache.time_scale: must be a number above 0, got {time_scale}"
        ));
    }
    PromptCacheGlobal {
        // A registry of no prefixes could never see one twice.
        max_prefixes: raw.max_prefixes.unwrap_or(d.max_prefixes).max(1),
        retention,
        time_scale,
    }
}
