//! Circuit breakers, one per upstream target (upstream, model, tier): after
//! `consecutive_failures` failures in a row, or a failure share of `error_rate`
//! over `window` (with at least `min_requests`), the target opens and fallback
//! chains skip it; after `open_for` one probe request goes through (half-open),
//! and its outcome closes or reopens the breaker.
//!
//! A breaker is a small state machine behind its own mutex, held only for a few
//! instructions and never across an await. Breakers outlive config reloads.

use bedrock_wire::FastMap as HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::time::Instant;

use bedrock_wire::tier::{LatencyTier, ServiceTier};

use crate::config::BreakerConfig;
use crate::support;

/// A breaker's state, as the metrics gauge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    /// The metric gauge's value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }

    /// The name `/admin/breakers` shows.
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

/// What a breaker is kept for: the same upstream, model and tiers share
/// one breaker whichever route uses them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BreakerKey {
    pub upstream: Arc<str>,
    pub model: Arc<str>,
    /// The tier the attempt asks for (`None`: as the client sent it).
    pub tier: Option<LatencyTier>,
    /// The service tier it asks for (`None`: as the client sent it).
    pub service_tier: Option<ServiceTier>,
}

impl std::fmt::Display for BreakerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tier = self.tier.map_or("-", LatencyTier::name);
        let service = self.service_tier.map_or("-", ServiceTier::name);
        write!(f, "{}|{}|{tier}|{service}", self.upstream, self.model)
    }
}

/// One target's breaker.
#[derive(Debug)]
pub struct Breaker {
    state: State,
    consecutive: u32,
    window_start: Instant,
    requests: u32,
    failures: u32,
    open_until: Instant,
    probe_in_flight: bool,
}

impl Breaker {
    pub fn new(now: Instant) -> Breaker {
        Breaker {
            state: State::Closed,
            consecutive: 0,
            window_start: now,
            requests: 0,
            failures: 0,
            open_until: now,
            probe_in_flight: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a request may go to this target now; an open breaker past its
    /// time lets exactly one probe through.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open if now >= self.open_until => {
                self.state = State::HalfOpen;
                self.probe_in_flight = true;
                true
            }
            State::Open => false,
            State::HalfOpen if !self.probe_in_flight => {
                self.probe_in_flight = true;
                true
            }
            State::HalfOpen => false,
        }
    }

    /// Whether [`Breaker::allow`] would let a request through now, without
    /// taking the half-open probe.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open => now >= self.open_until,
            State::HalfOpen => !self.probe_in_flight,
        }
    }

    /// An admitted request ended without an outcome (cancelled: a hedge that
    /// lost, a client that went away). If it was the half-open probe, the
    /// next request may probe instead, so the breaker cannot stay half-open
    /// for good.
    pub fn abandon(&mut self) {
        if self.state == State::HalfOpen {
            self.probe_in_flight = false;
        }
    }

    fn roll_window(&mut self, now: Instant, config: &BreakerConfig) {
        if now.duration_since(self.window_start) >= config.window {
            self.window_start = now;
            self.requests = 0;
            self.failures = 0;
        }
    }

    pub fn success(&mut self, now: Instant, config: &BreakerConfig) {
        self.roll_window(now, config);
        self.requests += 1;
        self.consecutive = 0;
        self.probe_in_flight = false;
        if self.state != State::Closed {
            self.state = State::Closed;
            self.requests = 0;
            self.failures = 0;
            self.window_start = now;
        }
    }

    /// Records a failure; true when it opened the breaker.
    pub fn failure(&mut self, now: Instant, config: &BreakerConfig) -> bool {
        self.roll_window(now, config);
        self.requests += 1;
        self.failures += 1;
        self.consecutive += 1;
        self.probe_in_flight = false;
        let rate_tripped = self.requests >= config.min_requests
            && f64::from(self.failures) / f64::from(self.requests) >= config.error_rate;
        let trip = self.state == State::HalfOpen
            || self.consecutive >= config.consecutive_failures
            || rate_tripped;
        if trip && self.state != State::Open {
            self.state = State::Open;
            self.open_until = now + config.open_for;
            return true;
        }
        if self.state == State::Open {
            self.open_until = now + config.open_for;
        }
        false
    }

    /// How long until an open breaker lets a probe through.
    #[cfg(test)]
    pub fn open_for(&self, now: Instant) -> std::time::Duration {
        self.open_until.saturating_duration_since(now)
    }
}

/// Every target's breaker, by [`BreakerKey`].
#[derive(Debug, Default)]
pub struct Breakers {
    by_target: RwLock<HashMap<BreakerKey, Arc<Mutex<Breaker>>>>,
}

impl Breakers {
    /// The breaker of a target, created closed on first use.
    pub fn get(&self, key: &BreakerKey) -> Arc<Mutex<Breaker>> {
        if let Some(b) = support::read(&self.by_target).get(key).cloned() {
            return b;
        }
        let mut map = support::write(&self.by_target);
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Breaker::new(Instant::now()))))
            .clone()
    }

    /// Every breaker's state, by key (`upstream|model|tier`), for `/admin/breakers`.
    pub fn states(&self) -> Vec<(String, State)> {
        let map = support::read(&self.by_target);
        let mut out: Vec<_> = map
            .iter()
            .map(|(k, b)| (k.to_string(), support::lock(b).state()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            error_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            open_for: Duration::from_secs(5),
        }
    }

    #[test]
    fn consecutive_failures_open_then_a_probe_closes() {
        let c = config();
        let t0 = Instant::now();
        let mut b = Breaker::new(t0);
        assert!(b.allow(t0));
        assert!(!b.failure(t0, &c));
        assert!(!b.failure(t0, &c));
        assert!(b.failure(t0, &c), "the third failure opens it");
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow(t0 + Duration::from_secs(1)));
        let later = t0 + Duration::from_secs(6);
        assert!(b.allow(later), "one probe after open_for");
        assert_eq!(b.state(), State::HalfOpen);
        assert!(!b.allow(later), "only one");
        b.success(later, &c);
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow(later));
    }

    /// A breaker opened by three failures, and a moment past its `open_for`.
    fn opened(c: &BreakerConfig) -> (Breaker, Instant) {
        let t0 = Instant::now();
        let mut b = Breaker::new(t0);
        for _ in 0..3 {
            b.failure(t0, c);
        }
        (b, t0 + Duration::from_secs(6))
    }

    #[test]
    fn a_failed_probe_reopens() {
        let c = config();
        let (mut b, later) = opened(&c);
        assert!(b.allow(later));
        b.failure(later, &c);
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow(later + Duration::from_secs(1)));
        assert!(b.open_for(later) > Duration::from_secs(4));
    }

    #[test]
    fn looking_does_not_take_the_probe_and_a_cancelled_probe_frees_it() {
        let c = config();
        let (mut b, later) = opened(&c);
        assert!(b.would_allow(later));
        assert!(b.would_allow(later), "asking twice takes nothing");
        assert!(b.allow(later), "the probe");
        assert!(!b.would_allow(later) && !b.allow(later));
        b.abandon();
        assert_eq!(b.state(), State::HalfOpen);
        assert!(
            b.allow(later),
            "the cancelled probe's place goes to the next request"
        );
        b.success(later, &c);
        assert_eq!(b.state(), State::Closed);
        b.abandon();
        assert!(b.allow(later), "abandoning while closed changes nothing");
    }

    #[test]
    fn an_error_rate_over_the_window_opens() {
        let c = config();
        let t0 = Instant::now();
        let mut b = Breaker::new(t0);
        for i in 0..10 {
            if i % 2 == 0 {
                b.success(t0, &c);
            } else {
                b.failure(t0, &c);
            }
        }
        assert_eq!(b.state(), State::Open, "5 of 10 failed");
        let mut fresh = Breaker::new(t0);
        for _ in 0..4 {
            fresh.success(t0, &c);
            fresh.failure(t0, &c);
        }
        assert_eq!(
            fresh.state(),
            State::Closed,
            "too few requests to judge a rate"
        );
        // A new window forgets old failures.
        let mut rolled = Breaker::new(t0);
        rolled.failure(t0, &c);
        rolled.failure(t0, &c);
        rolled.success(t0 + Duration::from_secs(11), &c);
        rolled.failure(t0 + Duration::from_secs(11), &c);
        assert_eq!(rolled.state(), State::Closed);
    }
}
