//! Bedrock's prompt cache, modeled: per caller identity and model, each checkpoint
//! names a prefix; a prefix at or above the model's minimum is written on first
//! sight and read afterwards, its TTL (5 minutes, or 1 hour where allowed) reset on
//! every hit. Like Anthropic's cache, a checkpoint also finds a prefix cached at
//! any of the 20 units before it, so each turn of a conversation reads what the
//! previous turn wrote.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::catalog::Model;
use crate::request::Prompt;

/// How far back from a checkpoint a cached prefix is looked for.
pub const LOOKBACK_UNITS: usize = 20;
pub const TTL_5M: Duration = Duration::from_secs(5 * 60);
pub const TTL_1H: Duration = Duration::from_secs(60 * 60);
/// Entries kept before expired ones are swept.
const SWEEP_ABOVE: usize = 100_000;

/// Cached input tokens of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUse {
    pub read: u32,
    pub write: u32,
    /// Of `write`, the tokens written with the 1-hour TTL: each written token
    /// takes the TTL of the first checkpoint at or after it.
    pub write_1h: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    expires: Duration,
    ttl: Duration,
}

/// All cached prefixes.
#[derive(Debug, Default)]
pub struct PromptCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key(identity: &str, unit_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(identity.as_bytes());
    h.update([0]);
    h.update(unit_hash);
    h.finalize().into()
}

impl PromptCache {
    /// Reads and writes the prompt's checkpoints at time `now`.
    pub fn apply(&self, identity: &str, model: &Model, prompt: &Prompt, now: Duration) -> CacheUse {
        if !model.prompt_cache {
            return CacheUse::default();
        }
        let eligible: Vec<_> = prompt
            .checkpoints
            .iter()
            .filter(|c| prompt.units[c.unit].tokens_end >= model.cache_min_tokens.max(1))
            .collect();
        let Some(last) = eligible.last() else {
            return CacheUse::default();
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > SWEEP_ABOVE {
            entries.retain(|_, e| e.expires > now);
        }

        let mut read = 0u32;
        for checkpoint in &eligible {
            let from = checkpoint.unit.saturating_sub(LOOKBACK_UNITS);
            for unit in (from..=checkpoint.unit).rev() {
                let k = key(identity, &prompt.units[unit].hash);
                if let Some(entry) = entries.get_mut(&k).filter(|e| e.expires > now) {
                    entry.expires = now + entry.ttl;
                    read = read.max(prompt.units[unit].tokens_end);
                    break;
                }
            }
        }
        let end = prompt.units[last.unit].tokens_end;
        let write = end.saturating_sub(read);
        let mut write_1h = 0u32;
        let mut segment_start = 0u32;
        for checkpoint in &eligible {
            let segment_end = prompt.units[checkpoint.unit].tokens_end;
            if checkpoint.ttl_1h {
                write_1h += segment_end.saturating_sub(segment_start.max(read));
            }
            segment_start = segment_start.max(segment_end);
        }
        for checkpoint in &eligible {
            let ttl = if checkpoint.ttl_1h { TTL_1H } else { TTL_5M };
            let k = key(identity, &prompt.units[checkpoint.unit].hash);
            entries.insert(
                k,
                Entry {
                    expires: now + ttl,
                    ttl,
                },
            );
        }
        CacheUse {
            read,
            write,
            write_1h: write_1h.min(write),
        }
    }

    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::request::converse;
    use serde_json::{json, Value};

    fn model(id: &str) -> std::sync::Arc<Model> {
        Catalog::embedded().resolve(id).unwrap().model
    }

    const HAIKU: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";

    /// A system prompt of about `tokens` tokens.
    fn system(tokens: usize) -> String {
        "abcd".repeat(tokens)
    }

    fn request(system_tokens: usize, turns: &[&str]) -> Value {
        let mut messages = Vec::new();
        for (i, t) in turns.iter().enumerate() {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            messages.push(json!({"role": role, "content": [{"text": t}]}));
        }
        if let Some(last) = messages.last_mut() {
            last["content"]
                .as_array_mut()
                .unwrap()
                .push(json!({"cachePoint": {"type": "default"}}));
        }
        json!({"system": [{"text": system(system_tokens)}, {"cachePoint": {"type": "default"}}], "messages": messages})
    }

    #[test]
    fn write_then_read_then_expire() {
        let m = model(HAIKU);
        let cache = PromptCache::default();
        let p = converse(&request(3000, &["hi"]), &m).unwrap();
        let t0 = Duration::from_secs(10);
        let first = cache.apply("me", &m, &p, t0);
        assert_eq!(first.read, 0);
        assert_eq!(first.write, p.input_tokens);
        let second = cache.apply("me", &m, &p, t0 + Duration::from_secs(60));
        assert_eq!(
            second,
            CacheUse {
                read: p.input_tokens,
                write: 0,
                write_1h: 0
            }
        );
        // Each hit resets the TTL: 4 minutes after the hit is still within it.
        let third = cache.apply("me", &m, &p, t0 + Duration::from_secs(60 + 240));
        assert_eq!(third.read, p.input_tokens);
        // More than 5 minutes after the last hit: gone.
        let expired = cache.apply("me", &m, &p, t0 + Duration::from_secs(300 + 301));
        assert_eq!(expired.read, 0);
        assert_eq!(expired.write, p.input_tokens);
        // Another identity never sees these entries.
        assert_eq!(
            cache
                .apply("you", &m, &p, t0 + Duration::from_secs(601))
                .read,
            0
        );
    }

    #[test]
    fn one_hour_writes_are_counted_apart_and_outlive_five_minutes() {
        let m = model("us.anthropic.claude-sonnet-4-5-20250929-v1:0");
        let cache = PromptCache::default();
        let mut body = request(3000, &["q1", "a1", "q2"]);
        body["system"][1] = json!({"cachePoint": {"type": "default", "ttl": "1h"}});
        let p = converse(&body, &m).unwrap();
        let system_end = p.units[p.checkpoints[0].unit].tokens_end;
        let first = cache.apply("me", &m, &p, Duration::ZERO);
        assert_eq!(first.write, p.input_tokens);
        assert_eq!(
            first.write_1h, system_end,
            "the system prompt's segment is 1h"
        );
        // Twenty minutes later the 5-minute tail is gone, the 1-hour head is not.
        let later = cache.apply("me", &m, &p, Duration::from_secs(20 * 60));
        assert_eq!(later.read, system_end);
        assert_eq!(later.write, p.input_tokens - system_end);
        assert_eq!(later.write_1h, 0);
    }

    #[test]
    fn below_the_minimum_nothing_is_cached() {
        let m = model(HAIKU);
        let cache = PromptCache::default();
        let p = converse(&request(100, &["hi"]), &m).unwrap();
        assert!(p.input_tokens < m.cache_min_tokens);
        for _ in 0..2 {
            assert_eq!(
                cache.apply("me", &m, &p, Duration::ZERO),
                CacheUse::default()
            );
        }
    }

    #[test]
    fn reads_grow_turn_by_turn() {
        let m = model(HAIKU);
        let cache = PromptCache::default();
        let turns = ["q1", "a1", "q2", "a2", "q3"];
        let mut reads = Vec::new();
        for n in [1, 3, 5] {
            let p = converse(&request(3000, &turns[..n]), &m).unwrap();
            let used = cache.apply("me", &m, &p, Duration::from_secs(n as u64));
            assert_eq!(used.read + used.write, p.input_tokens, "turn {n}");
            reads.push(used.read);
        }
        assert!(
            reads[0] == 0 && reads[1] > 0 && reads[2] > reads[1],
            "{reads:?}"
        );
    }
}
