//! How long an answer takes: time to first token (a base, plus prefill per
//! uncached input token, cache reads at a tenth of that), then output at the
//! tier's tokens per second, each with jitter, all scaled by `--time-scale`.

use std::time::Duration;

use crate::catalog::Speed;

/// The delays of one answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub ttft: Duration,
    pub per_token: Duration,
}

impl Timing {
    /// Time to generate `tokens` output tokens.
    pub fn tokens(&self, tokens: u32) -> Duration {
        self.per_token * tokens
    }
}

/// Cached tokens prefill this many times faster than uncached ones.
pub const CACHED_PREFILL_SPEEDUP: f64 = 10.0;

/// The timing of one request. `uncached` counts input tokens processed in full
/// (cache writes included), `cache_read` those read from the prompt cache;
/// `jitter` is a fraction and `rand` a uniform draw in [0, 1).
pub fn timing(
    speed: &Speed,
    uncached: u32,
    cache_read: u32,
    jitter: f64,
    scale: f64,
    rand: f64,
) -> Timing {
    let prefill_ms = speed.prefill_us_per_token / 1000.0
        * (f64::from(uncached) + f64::from(cache_read) / CACHED_PREFILL_SPEEDUP);
    let spread = 1.0 + jitter * (2.0 * rand - 1.0);
    let ttft_ms = (speed.ttft_ms + prefill_ms) * spread * scale;
    let per_token_ms = 1000.0 / speed.tokens_per_s.max(0.001) * spread * scale;
    Timing {
        ttft: Duration::from_secs_f64(ttft_ms.max(0.0) / 1000.0),
        per_token: Duration::from_secs_f64(per_token_ms.max(0.0) / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEED: Speed = Speed {
        ttft_ms: 500.0,
        prefill_us_per_token: 200.0,
        tokens_per_s: 50.0,
    };

    #[test]
    fn prefill_and_cache_reads_shape_ttft() {
        let cold = timing(&SPEED, 3000, 0, 0.0, 1.0, 0.5);
        assert_eq!(cold.ttft, Duration::from_millis(1100));
        let warm = timing(&SPEED, 0, 3000, 0.0, 1.0, 0.5);
        assert_eq!(warm.ttft, Duration::from_millis(560));
        assert_eq!(cold.per_token, Duration::from_millis(20));
        assert_eq!(cold.tokens(10), Duration::from_millis(200));
    }

    #[test]
    fn time_scale_zero_is_instant() {
        let t = timing(&SPEED, 3000, 0, 0.1, 0.0, 0.9);
        assert_eq!(t.ttft, Duration::ZERO);
        assert_eq!(t.per_token, Duration::ZERO);
    }
}
