//! What the OpenAI-compatible and SageMaker faces share: the self-hosted models
//! they serve (each with a vLLM-like latency profile), vLLM's automatic prefix
//! cache, and the steps from a validated chat request to a timed answer (fault
//! lookup, timing, seed, generation, counters). The faces add their transport:
//! paths, credentials, error shapes and stream framing.

use axum::http::HeaderMap;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::catalog::Speed;
use crate::chat::{self, ChatRequest, ChatUsage, Limits, StreamOptions};
use crate::face::Face;
use crate::faults::{FaultRule, Target};
use crate::generate::Answer;
use crate::latency::{timing, Timing};
use crate::request::Unit;
use crate::state::Billed;
use crate::SimState;

/// A model a self-hosted server (vLLM, SGLang, TGI, an LMI container) serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfHostedModel {
    /// The served model name (`--served-model-name` in vLLM).
    pub id: String,
    /// Input plus output tokens (`--max-model-len`).
    pub context_tokens: u32,
    /// Latency: base TTFT, prefill per uncached input token, output speed.
    pub speed: Speed,
    /// Whether the server accepts `stream_options`, refuses it (400) or drops it
    /// (and sends no usage chunk).
    #[serde(default)]
    pub stream_options: StreamOptions,
    /// Automatic prefix caching: repeated prefixes skip prefill and are reported
    /// in `usage.prompt_tokens_details.cached_tokens`.
    #[serde(default = "yes")]
    pub prefix_caching: bool,
}

fn yes() -> bool {
    true
}

impl SelfHostedModel {
    pub fn limits(&self) -> Limits<'_> {
        Limits {
            model_id: &self.id,
            context_tokens: self.context_tokens,
            stream_options: self.stream_options,
        }
    }
}

/// The models served when the config names none: a large model on a
/// multi-GPU node (or a regional provider's OpenAI-compatible mode) and a small
/// one on a single GPU, with figures typical of vLLM on such hardware.
pub fn default_models() -> Vec<SelfHostedModel> {
    vec![
        SelfHostedModel {
            id: "qwen2.5-72b-instruct".into(),
            context_tokens: 32_768,
            speed: Speed {
                ttft_ms: 250.0,
                prefill_us_per_token: 80.0,
                tokens_per_s: 35.0,
            },
            stream_options: StreamOptions::Accept,
            prefix_caching: true,
        },
        SelfHostedModel {
            id: "meta-llama/Llama-3.1-8B-Instruct".into(),
            context_tokens: 16_384,
            speed: Speed {
                ttft_ms: 80.0,
                prefill_us_per_token: 40.0,
                tokens_per_s: 75.0,
            },
            stream_options: StreamOptions::Accept,
            prefix_caching: true,
        },
    ]
}

/// Checks the self-hosted models: ids unique, contexts and speeds positive.
pub fn validate_models(models: &[SelfHostedModel]) -> Result<(), String> {
    for (i, m) in models.iter().enumerate() {
        if m.id.is_empty() {
            return Err(format!("self_hosted[{i}]: id must not be empty"));
        }
        if models[..i].iter().any(|o| o.id == m.id) {
            return Err(format!("self_hosted: model {} is listed twice", m.id));
        }
        if m.context_tokens == 0 {
            return Err(format!(
                "self_hosted {}: context_tokens must be at least 1",
                m.id
            ));
        }
        let s = &m.speed;
        if !(s.ttft_ms >= 0.0 && s.prefill_us_per_token >= 0.0 && s.tokens_per_s > 0.0) {
            return Err(format!(
                "self_hosted {}: speed needs ttft_ms and prefill_us_per_token >= 0 and tokens_per_s > 0",
                m.id
            ));
        }
    }
    Ok(())
}

/// Finds a served model by id.
pub fn model<'a>(models: &'a [SelfHostedModel], id: &str) -> Option<&'a SelfHostedModel> {
    models.iter().find(|m| m.id == id)
}

/// vLLM's automatic prefix cache: every prompt's prefixes (the tools, then each
/// message) stay cached while used within the TTL, shared by all callers; a
/// request reads the longest prefix it shares with an earlier one, in whole
/// 16-token blocks, and always computes its last token.
#[derive(Debug, Default)]
pub struct PrefixCache {
    last_used: Mutex<HashMap<[u8; 32], Duration>>,
}

/// How long an unused prefix survives (vLLM evicts by LRU under memory
/// pressure; an idle TTL stands in for that).
pub const PREFIX_TTL: Duration = Duration::from_secs(10 * 60);
/// vLLM's KV-cache block size: only whole blocks are reused.
pub const BLOCK_TOKENS: u32 = 16;
const SWEEP_ABOVE: usize = 100_000;

impl PrefixCache {
    /// The cached input tokens of a prompt with `units` at `now`; remembers its
    /// prefixes for later requests.
    pub fn apply(&self, units: &[Unit], now: Duration) -> u32 {
        let Some(total) = units.last().map(|u| u.tokens_end) else {
            return 0;
        };
        let mut last_used = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        if last_used.len() > SWEEP_ABOVE {
            last_used.retain(|_, t| now.saturating_sub(*t) < PREFIX_TTL);
        }
        let hit = units
            .iter()
            .rev()
            .find(|u| {
                last_used
                    .get(&u.hash)
                    .is_some_and(|t| now.saturating_sub(*t) < PREFIX_TTL)
            })
            .map_or(0, |u| u.tokens_end);
        for unit in units {
            last_used.insert(unit.hash, now);
        }
        hit.min(total.saturating_sub(1)) / BLOCK_TOKENS * BLOCK_TOKENS
    }

    pub fn clear(&self) {
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// What the self-hosted faces remember between requests.
#[derive(Debug, Default)]
pub struct SelfHostedState {
    pub prefix_cache: PrefixCache,
}

impl SelfHostedState {
    pub fn clear(&self) {
        self.prefix_cache.clear();
    }
}

/// The fault for a request on `face`: the `x-sim-fault` header's, else the
/// first installed rule matching one of `names`. An unreadable header is an
/// error message for the face to render as its 400.
pub fn take_fault(
    state: &SimState,
    face: Face,
    headers: &HeaderMap,
    names: &[&str],
    operation: &str,
) -> Result<Option<FaultRule>, String> {
    let fault = match headers.get("x-sim-fault").and_then(|v| v.to_str().ok()) {
        Some(header) => {
            Some(FaultRule::from_header_on(header, face).map_err(|e| format!("x-sim-fault: {e}"))?)
        }
        None => state.faults.take(&Target {
            face,
            ids: names,
            operation,
            ..Target::default()
        }),
    };
    if fault.is_some() {
        state.stats.fault_fired();
    }
    Ok(fault)
}

/// A chat request answered: the answer, its usage, and how long it takes.
#[derive(Debug, Clone)]
pub struct Served {
    pub answer: Answer,
    pub meta: chat::Meta,
    pub timing: Timing,
}

impl Served {
    /// Time from the request to the last token.
    pub fn generation(&self) -> Duration {
        self.timing.ttft + self.timing.tokens(self.answer.output_tokens)
    }
}

/// Answers `request` with `model`: prefix cache, timing (plus `overhead` before
/// the first token), seed (fixed at temperature 0, with a `seed`, or with the
/// simulator's `--seed`), generation; counts the tokens.
pub fn serve(
    state: &SimState,
    model: &SelfHostedModel,
    request: &ChatRequest,
    overhead: Duration,
) -> Served {
    let prompt = &request.prompt;
    let cached = if model.prefix_caching {
        state
            .self_hosted
            .prefix_cache
            .apply(&prompt.units, state.clock.now())
    } else {
        0
    };
    let mut timing = timing(
        &model.speed,
        prompt.input_tokens.saturating_sub(cached),
        cached,
        state.config.jitter,
        state.config.time_scale,
        fastrand::f64(),
    );
    timing.ttft += overhead.mul_f64(state.config.time_scale);
    let deterministic =
        prompt.temperature == Some(0.0) || request.seed.is_some() || state.config.seed.is_some();
    let seed = if deterministic {
        let mut first = [0u8; 8];
        first.copy_from_slice(&prompt.fingerprint[..8]);
        u64::from_le_bytes(first) ^ request.seed.unwrap_or(0) ^ state.config.seed.unwrap_or(0)
    } else {
        fastrand::u64(..)
    };
    let answer = chat::answer(request, seed);
    state.stats.served_untiered(Billed {
        input_tokens: prompt.input_tokens.saturating_sub(cached),
        output_tokens: answer.output_tokens,
        cache_read: cached,
        cache_write: 0,
        cache_write_1h: 0,
    });
    let meta = chat::Meta {
        id: format!("chatcmpl-{:032x}", fastrand::u128(..)),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: model.id.clone(),
        usage: ChatUsage {
            prompt_tokens: prompt.input_tokens,
            completion_tokens: answer.output_tokens,
            cached_tokens: cached,
        },
        seed,
    };
    Served {
        answer,
        meta,
        timing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn units(messages: &[&str]) -> Vec<Unit> {
        let msgs: Vec<_> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": m}))
            .collect();
        chat::read(&json!({"messages": msgs}), &default_models()[0].limits())
            .unwrap()
            .prompt
            .units
    }

    #[test]
    fn prefixes_are_reused_in_whole_blocks_and_expire() {
        let cache = PrefixCache::default();
        let long = "x".repeat(400);
        let first = units(&[&long]);
        let t0 = Duration::from_secs(1);
        assert_eq!(cache.apply(&first, t0), 0);
        let again = cache.apply(&first, t0 + Duration::from_secs(5));
        let total = first.last().unwrap().tokens_end;
        assert_eq!(again, (total - 1) / BLOCK_TOKENS * BLOCK_TOKENS);
        assert!(again > 0);

        let next_turn = units(&[&long, "answer", "and then?"]);
        let read = cache.apply(&next_turn, t0 + Duration::from_secs(6));
        assert_eq!(read, total / BLOCK_TOKENS * BLOCK_TOKENS);

        let later = t0 + Duration::from_secs(6) + PREFIX_TTL;
        assert_eq!(cache.apply(&next_turn, later), 0);
    }

    #[test]
    fn the_default_models_are_valid() {
        assert!(validate_models(&default_models()).is_ok());
        let mut twice = default_models();
        twice.push(twice[0].clone());
        assert!(validate_models(&twice).unwrap_err().contains("twice"));
    }
}
