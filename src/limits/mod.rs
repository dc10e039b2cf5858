//! The limits stage: rate limits and dollar budgets of keys, tenants and
//! routes (`requests_per_minute`, `tokens_per_minute`, `usd_per_day`,
//! `usd_per_month` on `[[keys]]`, `[[tenants]]` and `[[routes]]`), counted
//! across replicas through Redis when it is configured.
//!
//! A request meets its limits three times:
//! 1. **From its headers** ([`Limiter::admit_headers`]), before its body is
//!    read: the key's and tenant's (and, on the Bedrock paths, the route's)
//!    requests are counted, and a spent budget or an exhausted token bucket
//!    refuses it, so a caller over its limit never uploads its body.
//!    A SigV4 caller's signature needs the body, so its requests are only
//!    peeked at here and counted after the signature is checked.
//! 2. **From its body** ([`Limiter::admit_body`]), before any cache lookup or
//!    upstream call: the route's limits (the OpenAI and Anthropic APIs name
//!    the model in the body) and the token estimate ([`estimate`]).
//! 3. **When its answer ends** ([`Ticket::settle`]): the tokens it really
//!    used replace the estimate, and what it cost at catalog prices is added
//!    to the day's and month's spend of its key, tenant and route. Cache hits
//!    cost nothing and use no tokens; they count as requests.
//!
//! A refusal is an error of kind `Throttled` (rates) or `BudgetExceeded`
//! (budgets) with a [`RateView`] for the `retry-after` and rate-limit
//! headers ([`headers`]). The counters ([`counters`]) and their arithmetic
//! ([`bucket`]) are below; the [`Limiter`] outlives config reloads, so a
//! reload keeps the counts and a changed limit applies to the next request.

mod bucket;
mod counters;
pub(crate) mod estimate;
pub(crate) mod headers;

use bedrock_wire::catalog::Price;
use bedrock_wire::converse::Usage;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{AuthMode, Config, Limits, LimitsClock, Quota, SharedFailure};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::metrics;
use crate::shared::RedisTier;
use crate::support::lock;
use bucket::{calendar, nano_usd, usd, Bucket, Period};
use counters::{Change, ChangeRef, Check, CheckOp, Counters, Found, Source, TAG};
pub(crate) use estimate::{estimate_body, Estimate};
pub use headers::{RateHeaders, RateView};

/// What kind of scope a counter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScopeKind {
    Key,
    Tenant,
    Route,
}

impl ScopeKind {
    /// The metric label.
    fn label(self) -> &'static str {
        match self {
            ScopeKind::Key => "key",
            ScopeKind::Tenant => "tenant",
            ScopeKind::Route => "route",
        }
    }

    /// The counter-key part.
    fn code(self) -> &'static str {
        match self {
            ScopeKind::Key => "k",
            ScopeKind::Tenant => "t",
            ScopeKind::Route => "r",
        }
    }
}

/// One scope a request is counted in, with the limits in force now.
#[derive(Debug, Clone)]
struct Scope {
    kind: ScopeKind,
    name: Arc<str>,
    quota: Quota,
}

/// The per-minute buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rate {
    Requests,
    Tokens,
}

impl Rate {
    fn key(self) -> &'static str {
        match self {
            Rate::Requests => "requests_per_minute",
            Rate::Tokens => "tokens_per_minute",
        }
    }
}

impl Scope {
    fn bucket_key(&self, rate: Rate) -> String {
        let what = match rate {
            Rate::Requests => "rq",
            Rate::Tokens => "tk",
        };
        format!("{TAG}{what}:{}:{}", self.kind.code(), self.name)
    }

    fn budget_key(&self, period: Period, label: &str) -> String {
        let mut key = String::new();
        self.write_budget_key(period, label, &mut key);
        key
    }

    /// [`Scope::budget_key`] written into `out` (cleared first): an answered
    /// request settles up to six, into one buffer.
    fn write_budget_key(&self, period: Period, label: &str, out: &mut String) {
        let what = match period {
            Period::Day => "d",
            Period::Month => "m",
        };
        out.clear();
        for part in [
            TAG,
            "usd:",
            what,
            ":",
            label,
            ":",
            self.kind.code(),
            ":",
            &self.name,
        ] {
            out.push_str(part);
        }
    }

    fn rate_limit(&self, rate: Rate) -> Option<f64> {
        match rate {
            Rate::Requests => self.quota.requests_per_minute.map(f64::from),
            Rate::Tokens => self.quota.tokens_per_minute.map(|t| t as f64),
        }
    }

    fn budget(&self, period: Period) -> Option<f64> {
        match period {
            Period::Day => self.quota.usd_per_day,
            Period::Month => self.quota.usd_per_month,
        }
    }

    /// How messages name the scope.
    fn describe(&self, tenant: &str) -> String {
        match self.kind {
            ScopeKind::Key => format!("key {} of tenant {tenant}", self.name),
            ScopeKind::Tenant => format!("tenant {}", self.name),
            ScopeKind::Route => format!("route {}", self.name),
        }
    }
}

/// The caller as admission sees it (from the auth stage).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    pub(crate) tenant: &'a Arc<str>,
    /// The key's id ([`crate::config::KeyConfig::id`]); `None` for anonymous callers.
    pub(crate) key: Option<&'a Arc<str>>,
    pub(crate) key_quota: &'a Quota,
    pub(crate) tenant_quota: &'a Quota,
}

/// The clock windows and budgets are read from.
struct Clock {
    /// A manual clock's time (epoch ms); `None` follows the system clock.
    manual: Option<Mutex<f64>>,
}

impl Clock {
    fn now_ms(&self) -> f64 {
        match &self.manual {
            Some(t) => *lock(t),
            None => crate::support::now_ms() as f64,
        }
    }
}

/// The limits' counters and clock: built once, kept across reloads.
pub struct Limiter {
    counters: Counters,
    clock: Clock,
    spend: metrics::SpendGauges,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("shared", &self.counters.is_shared())
            .finish()
    }
}

/// A request refused by a limit: the error in the proxy's terms and the
/// headers' view (with `retry_after`).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) error: ProxyError,
    pub(crate) view: RateView,
}

/// One check's place: which scope, which limit.
#[derive(Debug, Clone, Copy)]
enum Measure {
    Rate(Rate),
    Budget(Period),
}

/// Checks and what each is about.
#[derive(Default)]
struct Plan {
    checks: Vec<Check>,
    about: Vec<(usize, Measure)>,
}

impl Plan {
    fn push(&mut self, scope: usize, measure: Measure, check: Check) {
        self.checks.push(check);
        self.about.push((scope, measure));
    }
}

impl Limiter {
    /// Counters in Redis when `shared` is given, else in this process.
    pub(crate) fn new(clock: LimitsClock, shared: Option<Arc<RedisTier>>) -> Arc<Limiter> {
        let manual = match clock {
            LimitsClock::System => None,
            // The start of the current UTC hour, not the start time itself:
            // replicas started a moment apart then share one clock, so shared
            // buckets do not drain between them while the clock stands still.
            LimitsClock::Manual => {
                let now = crate::support::now_ms();
                Some(Mutex::new((now - now % 3_600_000) as f64))
            }
        };
        Arc::new(Limiter {
            counters: Counters::new(shared),
            clock: Clock { manual },
            spend: metrics::SpendGauges::default(),
        })
    }

    /// The limits' clock (epoch ms).
    pub(crate) fn now_ms(&self) -> f64 {
        self.clock.now_ms()
    }

    /// Moves a manual clock forward; `None` when the clock is the system's.
    pub(crate) fn advance_clock(&self, by: Duration) -> Option<f64> {
        let t = self.clock.manual.as_ref()?;
        let mut now = lock(t);
        *now += by.as_secs_f64() * 1000.0;
        Some(*now)
    }

    /// Admission from the headers. `route` is known here on the Bedrock paths
    /// (the model id is in the path). `verified` is false for a SigV4 caller
    /// whose signature is still to check: its requests are counted by
    /// [`Limiter::admit_body`].
    pub(crate) async fn admit_headers(
        self: &Arc<Self>,
        limits: &Limits,
        caller: Caller<'_>,
        route: Option<(&Arc<str>, &Quota)>,
        verified: bool,
    ) -> Result<Ticket, Refusal> {
        let now = self.clock.now_ms();
        let mut scopes = Vec::with_capacity(3);
        if let Some(key) = caller.key {
            scopes.push(Scope {
                kind: ScopeKind::Key,
                name: key.clone(),
                quota: *caller.key_quota,
            });
        }
        scopes.push(Scope {
            kind: ScopeKind::Tenant,
            name: caller.tenant.clone(),
            quota: *caller.tenant_quota,
        });
        if let Some((name, quota)) = route {
            scopes.push(Scope {
                kind: ScopeKind::Route,
                name: name.clone(),
                quota: *quota,
            });
        }
        let mut plan = Plan::default();
        for (i, s) in scopes.iter().enumerate() {
            if let Some(limit) = s.rate_limit(Rate::Requests) {
                let op = if verified {
                    CheckOp::Take
                } else {
                    CheckOp::Peek
                };
                plan.push(
                    i,
                    Measure::Rate(Rate::Requests),
                    bucket_check(s, Rate::Requests, op, limit, 1.0),
                );
            }
            if let Some(limit) = s.rate_limit(Rate::Tokens) {
                // Estimates need the body; a bucket without a token left
                // refuses now.
                plan.push(
                    i,
                    Measure::Rate(Rate::Tokens),
                    bucket_check(s, Rate::Tokens, CheckOp::Peek, limit, 1.0),
                );
            }
            push_budgets(&mut plan, i, s, now);
        }
        let taken_requests: Vec<(String, f64)> = if verified {
            plan.checks
                .iter()
                .zip(&plan.about)
                .filter(|(_, (_, m))| matches!(m, Measure::Rate(Rate::Requests)))
                .map(|(c, _)| (c.key.clone(), c.limit))
                .collect()
        } else {
            Vec::new()
        };
        // The scopes go to the ticket (moved, not copied, when nothing is
        // checked now) to settle what the answer used.
        let ticket = |view: RateView, scopes: Vec<Scope>| Ticket {
            view,
            held: Some(Arc::new(Held {
                limiter: self.clone(),
                tenant: caller.tenant.clone(),
                taken: Mutex::new(Taken {
                    scopes,
                    requests: taken_requests,
                    requests_counted: verified,
                    ..Taken::default()
                }),
                settled: AtomicBool::new(false),
            })),
        };
        if plan.checks.is_empty() {
            return Ok(ticket(RateView::default(), scopes));
        }
        let (view, refused) = self
            .run(limits, now, &plan, &scopes, caller.tenant, None)
            .await;
        match refused {
            // Nothing was taken: no ticket, nothing to give back.
            Some(error) => Err(Refusal { error, view }),
            None => Ok(ticket(view, scopes)),
        }
    }

    /// Admission from the body, before any cache lookup or upstream call: the
    /// route's limits when the headers did not name it, the requests of a
    /// caller whose signature is now checked, and the token estimate
    /// (computed only when a token limit applies). A refusal gives back what
    /// the headers' admission took.
    pub(crate) async fn admit_body(
        &self,
        ticket: &mut Ticket,
        limits: &Limits,
        route: (&Arc<str>, &Quota),
        estimate: impl FnOnce() -> Estimate,
    ) -> Result<(), Refusal> {
        let Some(held) = ticket.held.clone() else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        // The plan is made under the ticket's own lock (no other request
        // takes it); its scopes are copied out only when there is a check to
        // run, across an await.
        let (plan, estimated, scopes) = {
            let mut taken = lock(&held.taken);
            let counted_before = taken.requests_counted;
            let new_from = if taken.scopes.iter().any(|s| s.kind == ScopeKind::Route) {
                taken.scopes.len()
            } else {
                taken.scopes.push(Scope {
                    kind: ScopeKind::Route,
                    name: route.0.clone(),
                    quota: *route.1,
                });
                taken.scopes.len() - 1
            };
            let scopes = &taken.scopes;
            let mut plan = Plan::default();
            for (i, s) in scopes.iter().enumerate() {
                let new = i >= new_from;
                if let Some(limit) = s
                    .rate_limit(Rate::Requests)
                    .filter(|_| new || !counted_before)
                {
                    plan.push(
                        i,
                        Measure::Rate(Rate::Requests),
                        bucket_check(s, Rate::Requests, CheckOp::Take, limit, 1.0),
                    );
                }
                if new {
                    push_budgets(&mut plan, i, s, now);
                }
            }
            let mut estimate = Some(estimate);
            let mut estimated = None;
            for (i, s) in scopes.iter().enumerate() {
                if let Some(limit) = s.rate_limit(Rate::Tokens) {
                    let e = *estimated
                        .get_or_insert_with(|| estimate.take().map(|f| f()).unwrap_or_default());
                    plan.push(
                        i,
                        Measure::Rate(Rate::Tokens),
                        bucket_check(s, Rate::Tokens, CheckOp::Take, limit, e.total() as f64),
                    );
                }
            }
            if plan.checks.is_empty() {
                return Ok(());
            }
            (plan, estimated, taken.scopes.clone())
        };
        let (view, refused) = self
            .run(limits, now, &plan, &scopes, &held.tenant, estimated)
            .await;
        if let Some(error) = refused {
            // The request is not served: give back the requests the headers'
            // admission counted, and settle nothing more.
            let give_back: Vec<Change> = {
                let taken = lock(&held.taken);
                taken
                    .requests
                    .iter()
                    .map(|(key, limit)| Change::Bucket {
                        key: key.clone(),
                        limit: *limit,
                        amount: -1.0,
                    })
                    .collect()
            };
            held.settled.store(true, Ordering::SeqCst);
            self.counters.settle(now, give_back).await;
            let mut merged = ticket.view;
            merged.merge(&view);
            return Err(Refusal {
                error,
                view: merged,
            });
        }
        {
            let mut taken = lock(&held.taken);
            taken.requests_counted = true;
            for (c, (_, m)) in plan.checks.iter().zip(&plan.about) {
                match m {
                    Measure::Rate(Rate::Requests) => taken.requests.push((c.key.clone(), c.limit)),
                    Measure::Rate(Rate::Tokens) => taken.tokens.push((c.key.clone(), c.limit)),
                    Measure::Budget(_) => {}
                }
            }
            taken.estimate = estimated.unwrap_or_default();
        }
        ticket.view.merge(&view);
        Ok(())
    }

    /// Runs a plan's checks and reads the outcome: the headers' view, and the
    /// refusal if any check failed (or the counters are unreachable and
    /// `on_shared_failure` is `closed`).
    async fn run(
        &self,
        limits: &Limits,
        now: f64,
        plan: &Plan,
        scopes: &[Scope],
        tenant: &Arc<str>,
        estimated: Option<Estimate>,
    ) -> (RateView, Option<ProxyError>) {
        let closed = limits.on_shared_failure == SharedFailure::Closed;
        let (found, source) = self.counters.admit(now, &plan.checks, !closed).await;
        let mut view = RateView {
            at_ms: now,
            ..RateView::default()
        };
        if source == Source::Fallback && closed {
            metrics::limit_refused(tenant, "tenant", "shared_unavailable");
            view.retry_after = Some(Duration::from_secs(1));
            return (
                view,
                Some(ProxyError::new(
                    ErrorKind::Unavailable,
                    Side::Internal,
                    "The shared rate-limit counters are unreachable and limits.on_shared_failure is `closed`; retry shortly.",
                )),
            );
        }
        let all = found.iter().all(Found::ok);
        // The refusal that lasts longest decides (`None`: waiting cannot help).
        let mut worst: Option<(Option<Duration>, usize, usize)> = None;
        for (n, ((check, (scope, measure)), f)) in
            plan.checks.iter().zip(&plan.about).zip(&found).enumerate()
        {
            match (measure, f) {
                (Measure::Rate(rate), Found::Bucket { ok, level }) => {
                    let taken = if all && check.op == CheckOp::Take {
                        check.amount
                    } else {
                        0.0
                    };
                    let bucket = Bucket {
                        used: level + taken,
                        at: now,
                    };
                    let window = bucket.window(check.limit, now);
                    match rate {
                        Rate::Requests => view.requests(window),
                        Rate::Tokens => view.tokens(window),
                    }
                    if !ok {
                        let wait = Bucket {
                            used: *level,
                            at: now,
                        }
                        .wait(check.limit, check.amount, now);
                        if worst.is_none_or(|(w, _, _)| longer(wait, w)) {
                            worst = Some((wait, n, *scope));
                        }
                    }
                }
                (Measure::Budget(period), Found::Spent { ok, nano }) => {
                    let s = &scopes[*scope];
                    if s.kind == ScopeKind::Tenant {
                        if let Some(limit) = s.budget(*period) {
                            metrics::budget_used(tenant, period_label(*period), usd(*nano) / limit);
                        }
                    }
                    if !ok {
                        let ends = calendar(*period, now).ends_ms;
                        let wait = Some(Duration::from_millis((ends as f64 - now).max(0.0) as u64));
                        if worst.is_none_or(|(w, _, _)| longer(wait, w)) {
                            worst = Some((wait, n, *scope));
                        }
                    }
                }
                _ => {}
            }
        }
        let Some((wait, n, scope)) = worst else {
            return (view, None);
        };
        view.retry_after = wait;
        let s = &scopes[scope];
        let check = &plan.checks[n];
        let (reason, error) = match plan.about[n].1 {
            Measure::Rate(rate) => (
                rate.key(),
                rate_refusal(s, tenant, rate, check, &found[n], estimated, wait),
            ),
            Measure::Budget(period) => (
                period.key(),
                budget_refusal(s, tenant, period, &found[n], now),
            ),
        };
        metrics::limit_refused(tenant, s.kind.label(), reason);
        (view, Some(error))
    }

    /// `GET /admin/usage`: each tenant, key and route of `config`, with its
    /// limits, its per-minute buckets and its spend today and this month.
    pub(crate) async fn usage(&self, config: &Config) -> Value {
        let now = self.clock.now_ms();
        let mut tenants: BTreeSet<&str> = config.keys.iter().map(|k| k.tenant.as_str()).collect();
        tenants.extend(config.tenants.iter().map(|t| t.name.as_str()));
        if config.server.auth == AuthMode::None {
            tenants.insert(crate::config::ANONYMOUS_TENANT);
        }
        let tenant_quota = |name: &str| {
            config
                .tenants
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.quota)
                .unwrap_or_default()
        };
        let mut scopes: Vec<(Scope, Option<String>)> = Vec::new();
        for t in &tenants {
            scopes.push((
                Scope {
                    kind: ScopeKind::Tenant,
                    name: Arc::from(*t),
                    quota: tenant_quota(t),
                },
                None,
            ));
        }
        for k in &config.keys {
            scopes.push((
                Scope {
                    kind: ScopeKind::Key,
                    name: Arc::from(k.id()),
                    quota: k.quota,
                },
                Some(k.tenant.clone()),
            ));
        }
        for r in &config.routes {
            scopes.push((
                Scope {
                    kind: ScopeKind::Route,
                    name: Arc::from(r.name.as_str()),
                    quota: r.quota,
                },
                None,
            ));
        }
        let mut plan = Plan::default();
        for (i, (s, _)) in scopes.iter().enumerate() {
            for rate in [Rate::Requests, Rate::Tokens] {
                if let Some(limit) = s.rate_limit(rate) {
                    plan.push(
                        i,
                        Measure::Rate(rate),
                        bucket_check(s, rate, CheckOp::Peek, limit, 0.0),
                    );
                }
            }
            for period in [Period::Day, Period::Month] {
                plan.push(
                    i,
                    Measure::Budget(period),
                    Check {
                        key: s.budget_key(period, &calendar(period, now).label),
                        op: CheckOp::Spent,
                        limit: 0.0,
                        amount: 0.0,
                    },
                );
            }
        }
        let (found, source) = self.counters.admit(now, &plan.checks, true).await;
        let mut rows: Vec<Value> = scopes
            .iter()
            .map(|(s, tenant)| {
                let q = &s.quota;
                let mut row = json!({
                    "limits": {
                        "requests_per_minute": q.requests_per_minute,
                        "tokens_per_minute": q.tokens_per_minute,
                        "usd_per_day": q.usd_per_day,
                        "usd_per_month": q.usd_per_month,
                    },
                    "requests": null,
                    "tokens": null,
                    "spend": {},
                });
                let name_field = match s.kind {
                    ScopeKind::Tenant => "tenant",
                    ScopeKind::Key => "key",
                    ScopeKind::Route => "route",
                };
                row[name_field] = json!(&*s.name);
                if let Some(t) = tenant {
                    row["tenant"] = json!(t);
                }
                row
            })
            .collect();
        for ((check, (i, measure)), f) in plan.checks.iter().zip(&plan.about).zip(&found) {
            let row = &mut rows[*i];
            match (measure, f) {
                (Measure::Rate(rate), Found::Bucket { level, .. }) => {
                    let w = Bucket {
                        used: *level,
                        at: now,
                    }
                    .window(check.limit, now);
                    let name = match rate {
                        Rate::Requests => "requests",
                        Rate::Tokens => "tokens",
                    };
                    row[name] = json!({
                        "limit": w.limit,
                        "used": (level * 1000.0).round() / 1000.0,
                        "remaining": w.remaining,
                        "reset_seconds": w.reset.as_secs_f64(),
                    });
                }
                (Measure::Budget(period), Found::Spent { nano, .. }) => {
                    let window = calendar(*period, now);
                    let (used, label) = match period {
                        Period::Day => ("today_usd", "day"),
                        Period::Month => ("this_month_usd", "month"),
                    };
                    row["spend"][used] = json!(usd(*nano));
                    row["spend"][label] = json!(&*window.label);
                }
                _ => {}
            }
        }
        let (mut t, mut k, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for ((s, _), row) in scopes.iter().zip(rows) {
            match s.kind {
                ScopeKind::Tenant => t.push(row),
                ScopeKind::Key => k.push(row),
                ScopeKind::Route => r.push(row),
            }
        }
        json!({
            "counters": source.name(),
            "now": humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_millis(now.max(0.0) as u64)
            ).to_string(),
            "tenants": t,
            "keys": k,
            "routes": r,
        })
    }
}

/// Whether waiting `a` is longer than waiting `b` (`None`: for ever).
fn longer(a: Option<Duration>, b: Option<Duration>) -> bool {
    match (a, b) {
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
        _ => false,
    }
}

fn period_label(p: Period) -> &'static str {
    match p {
        Period::Day => "day",
        Period::Month => "month",
    }
}

fn bucket_check(s: &Scope, rate: Rate, op: CheckOp, limit: f64, amount: f64) -> Check {
    Check {
        key: s.bucket_key(rate),
        op,
        limit,
        amount,
    }
}

/// The budget checks of a scope with budgets.
fn push_budgets(plan: &mut Plan, i: usize, s: &Scope, now: f64) {
    for period in [Period::Day, Period::Month] {
        if let Some(limit) = s.budget(period) {
            plan.push(
                i,
                Measure::Budget(period),
                Check {
                    key: s.budget_key(period, &calendar(period, now).label),
                    op: CheckOp::Spent,
                    limit: nano_usd(limit) as f64,
                    amount: 0.0,
                },
            );
        }
    }
}

fn rate_refusal(
    s: &Scope,
    tenant: &str,
    rate: Rate,
    check: &Check,
    found: &Found,
    estimated: Option<Estimate>,
    wait: Option<Duration>,
) -> ProxyError {
    let who = s.describe(tenant);
    let limit = check.limit as u64;
    let unit = match rate {
        Rate::Requests => "requests",
        Rate::Tokens => "tokens",
    };
    let message = match (wait, estimated) {
        (None, Some(e)) => format!(
            "This request is estimated at {} tokens (its input plus its maximum output), more than the {limit} tokens per minute {who} may use; send a smaller request or ask for fewer output tokens.",
            e.total()
        ),
        (wait, Some(e)) if rate == Rate::Tokens => {
            let left = match found {
                Found::Bucket { level, .. } => (check.limit - level).max(0.0).floor() as u64,
                Found::Spent { .. } => 0,
            };
            format!(
                "Rate limit reached for {who}: {limit} tokens per minute, {left} left, and this request is estimated at {} tokens (its input plus its maximum output); retry in {}.",
                e.total(),
                seconds(wait)
            )
        }
        (wait, _) => format!(
            "Rate limit reached for {who}: {limit} {unit} per minute; retry in {}.",
            seconds(wait)
        ),
    };
    ProxyError::throttled(message)
}

fn seconds(wait: Option<Duration>) -> String {
    let secs = wait.map_or(0, |w| w.as_millis().div_ceil(1000).max(1));
    if secs == 1 {
        "1 second".into()
    } else {
        format!("{secs} seconds")
    }
}

fn budget_refusal(s: &Scope, tenant: &str, period: Period, found: &Found, now: f64) -> ProxyError {
    let window = calendar(period, now);
    let spent = match found {
        Found::Spent { nano, .. } => usd(*nano),
        Found::Bucket { .. } => 0.0,
    };
    let limit = s.budget(period).unwrap_or_default();
    let (name, per, when) = match period {
        Period::Day => ("daily", "day", format!("on {} (UTC)", window.label)),
        Period::Month => ("monthly", "month", format!("in {} (UTC)", window.label)),
    };
    let renews = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(window.ends_ms.max(0) as u64),
    );
    ProxyError::new(
        ErrorKind::BudgetExceeded,
        Side::Client,
        format!(
            "The {name} budget of {} (${} per {per}) is spent: ${} used {when}. It renews at {renews}.",
            s.describe(tenant),
            dollars(limit),
            dollars(spent),
        ),
    )
}

/// Dollars as people write them: cents from a dollar up, else the digits
/// that matter (`$0.002`, not `$0.00`).
fn dollars(v: f64) -> String {
    if v >= 1.0 {
        return format!("{v:.2}");
    }
    let mut s = format!("{v:.6}");
    while s.ends_with('0') && s.len() > 4 {
        s.pop();
    }
    s
}

/// What an answer used, for settlement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// No answer came (an error response): nothing used, nothing spent.
    Failed,
    /// An answer with the usage it reported; `cache_hit` answers cost nothing.
    Answered {
        usage: Usage,
        price: Option<Price>,
        cache_hit: bool,
    },
    /// An answer that ended without saying what it used (a stream cut short):
    /// the estimate stands for tokens, and its input is charged.
    Unknown { price: Option<Price> },
}

/// What one request's admission took, settled once when its answer ends
/// (or, failing that, when the last copy is dropped, as [`Outcome::Unknown`]).
#[derive(Debug, Clone, Default)]
pub struct Ticket {
    /// Where the request's limits stand, for its response headers.
    pub view: RateView,
    held: Option<Arc<Held>>,
}

struct Held {
    limiter: Arc<Limiter>,
    tenant: Arc<str>,
    taken: Mutex<Taken>,
    settled: AtomicBool,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("tenant", &self.tenant)
            .field("settled", &self.settled)
            .finish()
    }
}

#[derive(Debug, Default)]
struct Taken {
    scopes: Vec<Scope>,
    /// Request buckets counted (key, limit), to give back on a later refusal.
    requests: Vec<(String, f64)>,
    /// Whether the key's and tenant's requests are counted (not for a SigV4
    /// caller before its signature is checked).
    requests_counted: bool,
    /// Token buckets the estimate was taken from (key, limit).
    tokens: Vec<(String, f64)>,
    estimate: Estimate,
}

impl Ticket {
    /// Settles what the answer used; only the first call counts.
    pub(crate) fn settle(&self, outcome: Outcome) {
        if let Some(held) = &self.held {
            held.settle(outcome);
        }
    }
}

impl Held {
    fn settle(&self, outcome: Outcome) {
        if self.settled.swap(true, Ordering::SeqCst) {
            return;
        }
        // Borrowed: cloned only for the Redis settlement spawned below.
        let limiter = &self.limiter;
        let now = limiter.clock.now_ms();
        let taken = lock(&self.taken);
        let estimate = taken.estimate;
        let (tokens, usd_cost) = match outcome {
            Outcome::Failed => (0, 0.0),
            Outcome::Answered {
                usage, cache_hit, ..
            } if cache_hit => {
                let _ = usage;
                (0, 0.0)
            }
            Outcome::Answered { usage, price, .. } => (
                usage.input_tokens
                    + usage.output_tokens
                    + usage.cache_read_input_tokens
                    + usage.cache_write_input_tokens,
                price.map_or(0.0, |p| p.cost(&usage)),
            ),
            Outcome::Unknown { price } => (
                estimate.total(),
                price.map_or(0.0, |p| estimate.input as f64 * p.input / 1_000_000.0),
            ),
        };
        let delta = tokens as f64 - estimate.total() as f64;
        let nano = nano_usd(usd_cost);
        if nano > 0 {
            let route = taken
                .scopes
                .iter()
                .find(|s| s.kind == ScopeKind::Route)
                .map(|s| &s.name);
            limiter.spend.add(&self.tenant, route, usd_cost);
        }
        if (delta == 0.0 || taken.tokens.is_empty()) && nano <= 0 {
            return;
        }
        // The budgets' windows, each kept a day past its end for late readers.
        let windows = [Period::Day, Period::Month].map(|period| {
            let window = calendar(period, now);
            let ttl_ms = (window.ends_ms as f64 - now).max(0.0) as u64 + 86_400_000;
            (period, window, ttl_ms)
        });
        // Every change this answer makes, handed over with its key borrowed
        // (the budget keys written in turn into one buffer).
        let changes = |apply: &mut dyn FnMut(ChangeRef<'_>)| {
            if delta != 0.0 {
                for (key, limit) in &taken.tokens {
                    apply(ChangeRef::Bucket {
                        key,
                        limit: *limit,
                        amount: delta,
                    });
                }
            }
            if nano > 0 {
                let mut key = String::with_capacity(64);
                for (period, window, ttl_ms) in &windows {
                    for s in &taken.scopes {
                        s.write_budget_key(*period, &window.label, &mut key);
                        apply(ChangeRef::Budget {
                            key: &key,
                            nano,
                            ttl_ms: *ttl_ms,
                        });
                    }
                }
            }
        };
        if !limiter.counters.is_shared() {
            // Nothing goes to Redis: settled here, no key copied.
            limiter.counters.settle_local_with(now, changes);
            return;
        }
        let mut owned = Vec::new();
        changes(&mut |c| owned.push(c.owned()));
        drop(taken);
        let Some(changes) = limiter.counters.settle_here(now, owned) else {
            return;
        };
        // Off the response path; bounded by the Redis timeout.
        if let Some(tier) = limiter.counters.shared().cloned() {
            let limiter = limiter.clone();
            tier.spawn(async move { limiter.counters.settle_redis(now, changes).await });
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::SeqCst) {
            self.settle(Outcome::Unknown { price: None });
        }
    }
}

#[cfg(test)]
mod tests;
