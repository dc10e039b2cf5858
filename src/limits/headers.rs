//! The rate-limit headers each ecosystem's clients read, from one
//! [`RateView`]: OpenAI's `x-ratelimit-*` (on `/v1/chat/completions`,
//! `/v1/responses` and the Bedrock paths), Anthropic's
//! `anthropic-ratelimit-*` (on `/v1/messages`), and `retry-after` on a refusal.
//! Where several scopes (key, tenant, route) limit a request, the headers
//! show the one with the least left.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::bucket::{go_duration, Window};

/// Which family of names an API's clients read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RateHeaders {
    /// `x-ratelimit-limit-requests`, ...: OpenAI's names (the Bedrock paths too).
    #[default]
    OpenAi,
    /// `anthropic-ratelimit-requests-limit`, ...
    Anthropic,
}

/// Where a request's limits stand, for its response headers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateView {
    pub(crate) requests: Option<Window>,
    pub(crate) tokens: Option<Window>,
    /// Set on a refusal: when to try again (`None` on admission, or when
    /// waiting cannot help).
    pub(crate) retry_after: Option<Duration>,
    /// The limits' clock when the view was taken (epoch ms), for the absolute
    /// reset times Anthropic sends.
    pub(crate) at_ms: f64,
}

/// The window with the least left (ties: the smaller limit).
fn tighter(a: Option<Window>, b: Option<Window>) -> Option<Window> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if (y.remaining, y.limit) < (x.remaining, x.limit) {
            y
        } else {
            x
        }),
        (x, y) => x.or(y),
    }
}

impl RateView {
    /// Adds a requests window, keeping the tighter one.
    pub(crate) fn requests(&mut self, w: Window) {
        self.requests = tighter(self.requests, Some(w));
    }

    /// Adds a tokens window, keeping the tighter one.
    pub(crate) fn tokens(&mut self, w: Window) {
        self.tokens = tighter(self.tokens, Some(w));
    }

    /// This view and a later one together.
    pub(crate) fn merge(&mut self, later: &RateView) {
        self.requests = tighter(self.requests, later.requests);
        self.tokens = tighter(self.tokens, later.tokens);
        self.retry_after = later.retry_after.or(self.retry_after);
        self.at_ms = later.at_ms.max(self.at_ms);
    }

    /// Writes the headers `style` names, and `retry-after` on a refusal.
    pub fn write(&self, style: RateHeaders, headers: &mut HeaderMap) {
        match style {
            RateHeaders::OpenAi => self.write_openai(headers),
            RateHeaders::Anthropic => self.write_anthropic(headers),
        }
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits this long fits.
            let secs = wait.as_millis().div_ceil(1000).max(1);
            set(headers, "retry-after", &secs.to_string());
        }
    }

    /// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.
    pub fn write_openai(&self, headers: &mut HeaderMap) {
        for (kind, window) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some(w) = window else { continue };
            set_dyn(
                headers,
                format!("x-ratelimit-limit-{kind}"),
                &w.limit.to_string(),
            );
            set_dyn(
                headers,
                format!("x-ratelimit-remaining-{kind}"),
                &w.remaining.to_string(),
            );
            set_dyn(
                headers,
                format!("x-ratelimit-reset-{kind}"),
                &go_duration(w.reset),
            );
        }
    }

    /// Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`,
    /// the reset as an RFC 3339 time.
    pub fn write_anthropic(&self, headers: &mut HeaderMap) {
        for (kind, window) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some(w) = window else { continue };
            set_dyn(
                headers,
                format!("anthropic-ratelimit-{kind}-limit"),
                &w.limit.to_string(),
            );
            set_dyn(
                headers,
                format!("anthropic-ratelimit-{kind}-remaining"),
                &w.remaining.to_string(),
            );
            let reset = UNIX_EPOCH
                + Duration::from_millis(self.at_ms.max(0.0) as u64)
                + Duration::from_secs(w.reset.as_millis().div_ceil(1000) as u64);
            set_dyn(
                headers,
                format!("anthropic-ratelimit-{kind}-reset"),
                &rfc3339(reset),
            );
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

fn set_dyn(headers: &mut HeaderMap, name: String, value: &str) {
    if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
        headers.insert(n, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> RateView {
        let mut v = RateView {
            at_ms: 1_700_000_000_000.0,
            ..RateView::default()
        };
        v.requests(Window {
            limit: 10,
            remaining: 7,
            reset: Duration::from_secs(18),
        });
        v.requests(Window {
            limit: 5,
            remaining: 2,
            reset: Duration::from_secs(36),
        });
        v.tokens(Window {
            limit: 1000,
            remaining: 400,
            reset: Duration::from_millis(36_500),
        });
        v
    }

    #[test]
    fn openai_names_show_the_tightest_scope() {
        let mut h = HeaderMap::new();
        view().write(RateHeaders::OpenAi, &mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "5");
        assert_eq!(h["x-ratelimit-remaining-requests"], "2");
        assert_eq!(h["x-ratelimit-reset-requests"], "36s");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "400");
        assert_eq!(h["x-ratelimit-reset-tokens"], "36.5s");
        assert!(h.get("retry-after").is_none());
    }

    #[test]
    fn anthropic_names_reset_at_a_time_and_refusals_say_when_to_retry() {
        let mut v = view();
        v.retry_after = Some(Duration::from_millis(11_200));
        let mut h = HeaderMap::new();
        v.write(RateHeaders::Anthropic, &mut h);
        assert_eq!(h["anthropic-ratelimit-requests-limit"], "5");
        assert_eq!(h["anthropic-ratelimit-requests-remaining"], "2");
        // 1_700_000_000 s + 36 s
        assert_eq!(
            h["anthropic-ratelimit-requests-reset"],
            "2023-11-14T22:13:56Z"
        );
        assert_eq!(h["anthropic-ratelimit-tokens-limit"], "1000");
        assert_eq!(h["retry-after"], "12");
        assert!(h.get("x-ratelimit-limit-requests").is_none());
    }
}
