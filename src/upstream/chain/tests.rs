//! The fallback chain against a scripted upstream, in paused time: which targets
//! a call tries, how often, when, and what its [`Record`] and metrics say.
//!
//! Each test builds its route from config text as an operator writes it, runs
//! [`Chain::run`] with a [`Fake`] in place of [`Http`], and reads the fake's log
//! of attempts (when each started, what it was given, how it ended). Time is
//! tokio's paused clock: a sleep completes as soon as nothing else can run, so
//! the virtual instants are exact (up to the timer's 1 ms rounding up) and no
//! test waits in real time.

use super::*;
use crate::config::Config;
use crate::route::Route;
use crate::upstream::breaker::State;
use bedrock_wire::error::ErrorType;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::{HashMap, VecDeque};

/// Two upstreams (two regions), one route on the first; each test appends the
/// route's resilience keys.
const CONFIG: &str = r#"
[server]
auth = "none"
[upstreams.east]
kind = "simulator"
endpoint = "http://127.0.0.1:9"
first_byte_timeout = "5s"
total_timeout = "60s"
[upstreams.west]
kind = "simulator"
region = "us-west-2"
endpoint = "http://127.0.0.1:9"
first_byte_timeout = "5s"
total_timeout = "60s"
[[routes]]
name = "chat"
models = ["model-a"]
upstream = "east"
"#;

const MS: Duration = Duration::from_millis(1);

/// What one scripted attempt does.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Answers after this long.
    Answer(Duration),
    /// Fails after this long with Bedrock's error response of this type.
    Fail(Duration, ErrorType, &'static str),
}

fn ok(ms: u64) -> Step {
    Step::Answer(Duration::from_millis(ms))
}

fn fail(ms: u64, error: ErrorType) -> Step {
    Step::Fail(Duration::from_millis(ms), error, "upstream says no")
}

/// Sends nothing for an hour: the attempt runs into its first-byte timeout.
fn hang() -> Step {
    ok(3_600_000)
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    Running,
    Answered,
    Failed(ErrorKind),
    /// Dropped before it ended (a hedge that lost).
    Cancelled,
}

/// One attempt the chain made.
#[derive(Debug, Clone)]
struct Call {
    target: String,
    started: Instant,
    ended: Option<Instant>,
    end: End,
    first_byte: Duration,
    tier: Option<LatencyTier>,
    /// The `traceparent` the attempt was sent with (tracing on).
    traceparent: Option<String>,
}

/// An upstream that plays each target's script, one step per attempt, and logs
/// every attempt. It keeps the contract of [`Attempt`]: an answer that would
/// come later than `first_byte` is a timeout error at `first_byte`.
#[derive(Default)]
struct Fake {
    scripts: Mutex<HashMap<String, VecDeque<Step>>>,
    calls: Mutex<Vec<Call>>,
}

impl Fake {
    fn script(&self, target: &str, steps: impl IntoIterator<Item = Step>) {
        support::lock(&self.scripts)
            .entry(target.to_owned())
            .or_default()
            .extend(steps);
    }

    fn calls(&self) -> Vec<Call> {
        support::lock(&self.calls).clone()
    }

    /// The targets attempted, in order.
    fn attempted(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.target).collect()
    }

    fn end(&self, call: usize, end: End) {
        let mut calls = support::lock(&self.calls);
        calls[call].end = end;
        calls[call].ended = Some(Instant::now());
    }
}

/// Marks its attempt cancelled if dropped before the attempt ended.
struct Pending<'a> {
    fake: &'a Fake,
    call: usize,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.fake.end(self.call, End::Cancelled);
        }
    }
}

impl Attempt for Fake {
    fn send(
        &self,
        target: &Target,
        _op: Operation,
        prepared: Prepared,
        first_byte: Duration,
        _deadline: Instant,
        _route: &Arc<str>,
    ) -> impl std::future::Future<Output = Result<Answer, ProxyError>> + Send {
        let label = target.label.to_string();
        let step = support::lock(&self.scripts)
            .get_mut(&label)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| panic!("an attempt on {label} that the test did not script"));
        let call = {
            let mut calls = support::lock(&self.calls);
            calls.push(Call {
                target: label.clone(),
                started: Instant::now(),
                ended: None,
                end: End::Running,
                first_byte,
                tier: prepared.tier,
                traceparent: prepared
                    .headers
                    .iter()
                    .find(|(k, _)| k == "traceparent")
                    .map(|(_, v)| v.to_str().unwrap().to_owned()),
            });
            calls.len() - 1
        };
        async move {
            let mut pending = Pending {
                fake: self,
                call,
                done: false,
            };
            let after = match step {
                Step::Answer(after) | Step::Fail(after, ..) => after,
            };
            let result = if after > first_byte {
                tokio::time::sleep(first_byte).await;
                Err(ProxyError::upstream_timeout(format!(
                    "upstream {label} sent no response within {first_byte:?}"
                )))
            } else {
                tokio::time::sleep(after).await;
                match step {
                    Step::Answer(_) => Ok(Answer::Whole {
                        headers: HeaderMap::new(),
                        body: Bytes::from(format!("answer from {label}")),
                        summary: Summary::default(),
                    }),
                    Step::Fail(_, error, message) => {
                        let mut headers = HeaderMap::new();
                        headers.insert("x-amzn-errortype", HeaderValue::from_static(error.name()));
                        Err(ProxyError::from_upstream(
                            StatusCode::from_u16(error.status()).unwrap(),
                            &headers,
                            bedrock_wire::error::error_body(message),
                        ))
                    }
                }
            };
            pending.done = true;
            self.fake_end(call, &result);
            result
        }
    }
}

impl Fake {
    fn fake_end(&self, call: usize, result: &Result<Answer, ProxyError>) {
        self.end(
            call,
            match result {
                Ok(_) => End::Answered,
                Err(e) => End::Failed(e.kind),
            },
        );
    }
}

/// A route built from config, its breakers, and the fake upstream behind it.
struct Setup {
    route: Arc<str>,
    resilience: ResilienceConfig,
    targets: Vec<Target>,
    breakers: Breakers,
    fake: Fake,
    /// The request's span (off unless a test traces).
    trace: Trace,
}

impl Setup {
    /// The route of [`CONFIG`] with `resilience` (route keys) added.
    async fn new(resilience: &str) -> Setup {
        let config = Config::parse(&format!("{CONFIG}{resilience}")).unwrap();
        let upstreams = Upstreams::build(&config.upstreams, None, None)
            .await
            .unwrap();
        let route = Route::new(Arc::from("chat"), config.routes[0].clone());
        Setup {
            targets: targets(&upstreams, &route, &Arc::from("model-a")).unwrap(),
            route: route.name.clone(),
            resilience: route.config.resilience.clone(),
            breakers: Breakers::default(),
            fake: Fake::default(),
            trace: Trace::off(),
        }
    }

    /// One call through the chain, as the pipeline makes it; planning asks for
    /// the tier of the target's latency policy.
    async fn run(&self) -> (Result<Answer, ProxyError>, Record) {
        let prepare = |target: &Target| Prepared {
            body: Bytes::from_static(b"{}"),
            headers: Vec::new(),
            tier: match target.latency {
                LatencyPolicy::Optimized => Some(LatencyTier::Optimized),
                LatencyPolicy::Standard => Some(LatencyTier::Standard),
                LatencyPolicy::Client => None,
            },
            service_tier: match target.service_tier {
                ServicePolicy::Priority => Some(ServiceTier::Priority),
                ServicePolicy::Default => Some(ServiceTier::Default),
                ServicePolicy::Flex => Some(ServiceTier::Flex),
                ServicePolicy::Client => None,
            },
            cache_points: u32::from(target.label.as_ref() == "primary"),
            notes: PlanNotes::default(),
            settle: None,
        };
        let chain = Chain {
            route: &self.route,
            op: Operation::Converse,
            resilience: &self.resilience,
            breakers: &self.breakers,
            started: Instant::now(),
            prepare: &prepare,
            attempt: &self.fake,
            trace: &self.trace,
        };
        let mut record = Record::default();
        let result = chain.run(&self.targets, &mut record).await;
        (result, record)
    }

    /// The breaker state of `upstream|model|tier`, as `/admin/breakers` shows it.
    fn breaker(&self, key: &str) -> Option<State> {
        self.breakers
            .states()
            .into_iter()
            .find_map(|(k, state)| (k == key).then_some(state))
    }
}

/// Which target answered, by the answer's body.
fn answered_by(result: Result<Answer, ProxyError>) -> String {
    match result {
        Ok(Answer::Whole { body, .. }) => String::from_utf8(body.to_vec()).unwrap(),
        Ok(Answer::Stream { .. }) => panic!("a stream from a fake that answers whole"),
        Err(e) => panic!("the call failed: {e}"),
    }
}

fn failed(result: Result<Answer, ProxyError>) -> ProxyError {
    match result {
        Ok(_) => panic!("the call was answered"),
        Err(e) => e,
    }
}

/// A metrics recorder for this test's thread (the runtime is single-threaded).
fn recorder() -> (
    metrics_exporter_prometheus::PrometheusRecorder,
    PrometheusHandle,
) {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    (recorder, handle)
}

/// The sum of the series of `name` carrying every one of `labels`.
fn metric(handle: &PrometheusHandle, name: &str, labels: &[(&str, &str)]) -> f64 {
    handle
        .render()
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|l| l.starts_with('{')))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn since(t0: Instant, t: Instant) -> Duration {
    t.duration_since(t0)
}

#[tokio::test(start_paused = true)]
async fn the_primary_answers_on_the_first_try() {
    let (recorder, prom) = recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let s = Setup::new("latency = \"optimized\"\nfallback = [{ latency = \"standard\" }]\n").await;
    s.fake.script("primary", [ok(200)]);
    let t0 = Instant::now();

    let (result, record) = s.run().await;

    assert_eq!(answered_by(result), "answer from primary");
    assert_eq!(s.fake.attempted(), ["primary"]);
    let call = &s.fake.calls()[0];
    assert_eq!(
        call.first_byte,
        Duration::from_secs(5),
        "the upstream's first_byte_timeout"
    );
    assert_eq!(call.tier, Some(LatencyTier::Optimized));
    assert_eq!(since(t0, call.ended.unwrap()), Duration::from_millis(200));
    assert_eq!(record.attempts, 1);
    assert_eq!(record.target.as_deref(), Some("primary"));
    assert_eq!(record.tier_sent, Some(LatencyTier::Optimized));
    assert_eq!(record.cache_points, 1);
    assert!(!record.other_model);
    assert_eq!(
        metric(
            &prom,
            metrics::ATTEMPTS,
            &[("target", "primary"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(metric(&prom, metrics::FALLBACKS, &[]), 0.0);
    assert_eq!(s.breaker("east|model-a|optimized|-"), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_retryable_error_is_retried_after_a_jittered_exponential_backoff() {
    let (recorder, prom) = recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let s = Setup::new(
        "retries = 2\nbackoff = \"100ms\"\nmax_backoff = \"1s\"\nfallback = [{ upstream = \"west\" }]\n",
    )
    .await;
    s.fake.script(
        "primary",
        [
            fail(10, ErrorType::Throttling),
            fail(10, ErrorType::Throttling),
            ok(10),
        ],
    );

    let (result, record) = s.run().await;

    assert_eq!(answered_by(result), "answer from primary");
    assert_eq!(s.fake.attempted(), ["primary", "primary", "primary"]);
    let calls = s.fake.calls();
    // Retry n waits a random delay in [½, 1] × min(max_backoff, backoff × 2^n)
    // after the failure (plus up to 1 ms of timer rounding).
    for (n, bounds) in [(50, 100), (100, 200)].into_iter().enumerate() {
        let failed_at = calls[n].ended.unwrap();
        let pause = since(failed_at, calls[n + 1].started);
        assert!(
            pause >= bounds.0 * MS && pause <= bounds.1 * MS + MS,
            "retry {n} came {pause:?} after the failure"
        );
        assert_eq!(calls[n].end, End::Failed(ErrorKind::Throttled));
    }
    assert_eq!(record.attempts, 3);
    assert_eq!(record.target.as_deref(), Some("primary"));
    assert_eq!(
        metric(&prom, metrics::ATTEMPTS, &[("outcome", "throttled")]),
        2.0
    );
    assert_eq!(metric(&prom, metrics::FALLBACKS, &[]), 0.0);
}

#[tokio::test(start_paused = true)]
async fn retries_exhausted_move_on_to_the_next_target() {
    let s = Setup::new("retries = 1\nfallback = [{ upstream = \"west\" }]\n").await;
    s.fake
        .script("primary", [fail(0, ErrorType::ServiceUnavailable); 2]);
    s.fake.script("fallback1", [ok(0)]);

    let (result, record) = s.run().await;

    assert_eq!(answered_by(result), "answer from fallback1");
    assert_eq!(s.fake.attempted(), ["primary", "primary", "fallback1"]);
    assert_eq!(record.attempts, 3);
    assert_eq!(record.target.as_deref(), Some("fallback1"));
    assert_eq!(record.tier_sent, None, "latency = client sends no tier");
    assert_eq!(
        record.cache_points, 0,
        "the fallback's plan, not the primary's"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_error_is_neither_retried_nor_fallen_back() {
    for (error, kind) in [
        (ErrorType::Validation, ErrorKind::Validation),
        (ErrorType::AccessDenied, ErrorKind::AccessDenied),
        (ErrorType::ResourceNotFound, ErrorKind::NotFound),
    ] {
        let s = Setup::new("retries = 3\nfallback = [{ upstream = \"west\" }]\n").await;
        s.fake.script(
            "primary",
            [Step::Fail(
                Duration::ZERO,
                error,
                "messages: field required",
            )],
        );

        let (result, record) = s.run().await;

        let e = failed(result);
        assert_eq!(e.kind, kind);
        assert_eq!(e.message, "messages: field required");
        assert_eq!(
            e.status().as_u16(),
            error.status(),
            "passed through as sent"
        );
        assert_eq!(s.fake.attempted(), ["primary"], "{error:?}");
        assert_eq!(record.attempts, 1);
        assert_eq!(record.target, None);
    }
}

/// Under the default `fallback_on`, which of Bedrock's exceptions move on to
/// the next target; the rest are returned as they came.
#[tokio::test(start_paused = true)]
async fn each_fallback_on_kind_moves_on_and_no_other_does() {
    let unsupported = "The model does not support latency-optimized inference.";
    let cases = [
        (ErrorType::Throttling, "x", true),
        (ErrorType::ServiceUnavailable, "x", true),
        (ErrorType::ModelTimeout, "x", true),
        (ErrorType::ModelNotReady, "x", true),
        (ErrorType::InternalServer, "x", true),
        (ErrorType::Validation, unsupported, true),
        (ErrorType::Validation, "x", false),
        (ErrorType::Conflict, "x", false),
        (ErrorType::AccessDenied, "x", false),
        (ErrorType::ResourceNotFound, "x", false),
        (ErrorType::ModelError, "x", false),
        (ErrorType::ModelStreamError, "x", false),
        (ErrorType::ServiceQuotaExceeded, "x", false),
    ];
    for (error, message, moves_on) in cases {
        let (recorder, prom) = recorder();
        let _local = ::metrics::set_default_local_recorder(&recorder);
        let s = Setup::new("fallback = [{ upstream = \"west\" }]\n").await;
        s.fake
            .script("primary", [Step::Fail(Duration::ZERO, error, message)]);
        s.fake.script("fallback1", [ok(0)]);

        let (result, record) = s.run().await;

        if moves_on {
            assert_eq!(answered_by(result), "answer from fallback1", "{error:?}");
            assert_eq!(record.attempts, 2);
            assert_eq!(record.target.as_deref(), Some("fallback1"));
            let kind = s.fake.calls()[0].end.clone();
            let End::Failed(kind) = kind else {
                panic!("{kind:?}")
            };
            assert_eq!(
                metric(
                    &prom,
                    metrics::FALLBACKS,
                    &[
                        ("from", "primary"),
                        ("to", "fallback1"),
                        ("reason", kind.label())
                    ]
                ),
                1.0,
                "{error:?}"
            );
        } else {
            let e = failed(result);
            assert_eq!(e.status().as_u16(), error.status(), "{error:?}");
            assert_eq!(s.fake.attempted(), ["primary"], "{error:?}");
            assert_eq!(record.attempts, 1);
            assert_eq!(metric(&prom, metrics::FALLBACKS, &[]), 0.0);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn fallback_on_is_the_routes_to_choose() {
    let config = "fallback_on = [\"model_error\"]\nfallback = [{ upstream = \"west\" }]\n";
    let s = Setup::new(config).await;
    s.fake.script("primary", [fail(0, ErrorType::ModelError)]);
    s.fake.script("fallback1", [ok(0)]);
    assert_eq!(answered_by(s.run().await.0), "answer from fallback1");

    let s = Setup::new(config).await;
    s.fake.script("primary", [fail(0, ErrorType::Throttling)]);
    let e = failed(s.run().await.0);
    assert_eq!(e.kind, ErrorKind::Throttled);
    assert_eq!(s.fake.attempted(), ["primary"]);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_is_skipped_until_open_for_has_passed() {
    let (recorder, prom) = recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let s = Setup::new(
        "fallback = [{ upstream = \"west\" }]\nbreaker = { consecutive_failures = 2, open_for = \"10s\" }\n",
    )
    .await;
    s.fake
        .script("primary", [fail(0, ErrorType::ServiceUnavailable); 2]);
    s.fake.script("fallback1", [ok(0); 4]);
    for _ in 0..2 {
        let (result, record) = s.run().await;
        assert_eq!(answered_by(result), "answer from fallback1");
        assert_eq!(record.attempts, 2);
    }
    assert_eq!(s.breaker("east|model-a|-|-"), Some(State::Open));
    let gauge = [("target", "primary")];
    assert_eq!(metric(&prom, metrics::BREAKER_STATE, &gauge), 2.0);

    // Open: the primary is not tried at all.
    tokio::time::advance(Duration::from_secs(9)).await;
    let (result, record) = s.run().await;
    assert_eq!(answered_by(result), "answer from fallback1");
    assert_eq!(record.attempts, 1);
    assert_eq!(record.target.as_deref(), Some("fallback1"));
    assert_eq!(s.fake.attempted().len(), 5, "no attempt on the primary");
    assert_eq!(
        metric(
            &prom,
            metrics::FALLBACKS,
            &[("from", "primary"), ("reason", "breaker_open")]
        ),
        1.0
    );

    // After open_for one probe goes through, and its success closes the breaker.
    tokio::time::advance(Duration::from_secs(1)).await;
    s.fake.script("primary", [ok(0), ok(0)]);
    let (result, record) = s.run().await;
    assert_eq!(answered_by(result), "answer from primary");
    assert_eq!(record.attempts, 1);
    assert_eq!(s.breaker("east|model-a|-|-"), Some(State::Closed));
    assert_eq!(metric(&prom, metrics::BREAKER_STATE, &gauge), 0.0);
    assert_eq!(answered_by(s.run().await.0), "answer from primary");
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_the_breaker() {
    let s = Setup::new(
        "fallback = [{ upstream = \"west\" }]\nbreaker = { consecutive_failures = 1, open_for = \"10s\" }\n",
    )
    .await;
    s.fake
        .script("primary", [fail(0, ErrorType::ServiceUnavailable); 2]);
    s.fake.script("fallback1", [ok(0); 3]);
    assert_eq!(answered_by(s.run().await.0), "answer from fallback1");
    tokio::time::advance(Duration::from_secs(10)).await;
    let (result, record) = s.run().await;
    assert_eq!(answered_by(result), "answer from fallback1");
    assert_eq!(record.attempts, 2, "the probe, then the fallback");
    assert_eq!(s.breaker("east|model-a|-|-"), Some(State::Open));
    let (result, record) = s.run().await;
    assert_eq!(answered_by(result), "answer from fallback1");
    assert_eq!(record.attempts, 1, "open again: skipped");
}

#[tokio::test(start_paused = true)]
async fn when_every_breaker_is_open_the_call_fails_without_an_attempt() {
    let s = Setup::new("breaker = { consecutive_failures = 2, open_for = \"30s\" }\n").await;
    s.fake
        .script("primary", [fail(0, ErrorType::ServiceUnavailable); 2]);
    for _ in 0..2 {
        assert_eq!(failed(s.run().await.0).kind, ErrorKind::Unavailable);
    }
    let (result, record) = s.run().await;
    let e = failed(result);
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert_eq!(e.status().as_u16(), 503);
    assert!(e.message.contains("circuit breakers open"), "{e}");
    assert_eq!(record.attempts, 0);
    assert_eq!(s.fake.attempted().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_fires_after_hedge_after_and_the_faster_target_wins() {
    let (recorder, prom) = recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let s = Setup::new(
        "hedge_after = \"1s\"\nfallback = [{ upstream = \"west\", model = \"model-b\" }]\n",
    )
    .await;
    s.fake.script("primary", [ok(5_000)]);
    s.fake.script("fallback1", [ok(500)]);
    let t0 = Instant::now();

    let (result, record) = s.run().await;

    assert_eq!(answered_by(result), "answer from fallback1");
    let calls = s.fake.calls();
    assert_eq!(since(t0, calls[1].started), Duration::from_secs(1));
    assert_eq!(calls[1].end, End::Answered);
    assert_eq!(
        since(t0, calls[1].ended.unwrap()),
        Duration::from_millis(1_500)
    );
    assert_eq!(calls[0].end, End::Cancelled, "the loser is cancelled");
    assert_eq!(
        calls[0].ended, calls[1].ended,
        "as soon as the winner answers"
    );
    assert_eq!(record.attempts, 2);
    assert_eq!(record.target.as_deref(), Some("fallback1"));
    assert!(record.other_model);
    assert_eq!(metric(&prom, metrics::HEDGES, &[("outcome", "fired")]), 1.0);
    assert_eq!(metric(&prom, metrics::HEDGES, &[("outcome", "won")]), 1.0);
    assert_eq!(
        metric(&prom, metrics::ATTEMPTS, &[("target", "primary")]),
        0.0,
        "a cancelled attempt has no outcome"
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_target_still_wins_when_it_answers_first_after_the_hedge() {
    let (recorder, prom) = recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let s = Setup::new("hedge_after = \"1s\"\nfallback = [{ upstream = \"west\" }]\n").await;
    s.fake.script("primary", [ok(1_200)]);
    s.fake.script("fallback1", [ok(5_000)]);

    let (result, record) = s.run().await;

    assert_eq!(answered_by(result), "answer from primary");
    assert_eq!(s.fake.calls()[1].end, End::Cancelled);
    assert_eq!(record.attempts, 2, "the cancelled hedge counts");
    assert_eq!(record.target.as_deref(), Some("primary"));
    assert_eq!(record.cache_points, 1);
    assert_eq!(metric(&prom, metrics::HEDGES, &[("outcome", "fired")]), 1.0);
    assert_eq!(metric(&prom, metrics::HEDGES, &[("outcome", "won")]), 0.0);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_fires_when_the_first_target_answers_in_time() {
    let (recorder, prom) = recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let s = Setup::new("hedge_after = \"1s\"\nfallback = [{ upstream = \"west\" }]\n").await;
    s.fake.script("primary", [ok(999)]);
    let (result, record) = s.run().await;
    assert_eq!(answered_by(result), "answer from primary");
    assert_eq!(s.fake.attempted(), ["primary"]);
    assert_eq!(record.attempts, 1);
    assert_eq!(metric(&prom, metrics::HEDGES, &[]), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_target_failing_before_the_hedge_fires_is_retried_and_fallen_back_as_usual() {
    let (recorder, prom) = recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let s = Setup::new("hedge_after = \"1s\"\nretries = 1\nfallback = [{ upstream = \"west\" }]\n")
        .await;
    s.fake
        .script("primary", [fail(10, ErrorType::Throttling); 2]);
    s.fake.script("fallback1", [ok(10)]);

    let (result, record) = s.run().await;

    assert_eq!(answered_by(result), "answer from fallback1");
    assert_eq!(s.fake.attempted(), ["primary", "primary", "fallback1"]);
    assert_eq!(record.attempts, 3);
    assert_eq!(record.target.as_deref(), Some("fallback1"));
    assert_eq!(metric(&prom, metrics::HEDGES, &[]), 0.0);
    assert_eq!(
        metric(&prom, metrics::FALLBACKS, &[("reason", "throttled")]),
        1.0
    );
}

/// Both hedged attempts fail: the second target has had its attempt, so the
/// chain goes on with the target after it, without retrying either.
#[tokio::test(start_paused = true)]
async fn when_both_hedged_attempts_fail_the_chain_goes_on_after_the_second() {
    let (recorder, prom) = recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let s = Setup::new(
        "hedge_after = \"1s\"\nretries = 2\nbackoff = \"10ms\"\nfallback = [{ upstream = \"west\" }, { model = \"model-b\" }]\n",
    )
    .await;
    s.fake
        .script("primary", [fail(2_000, ErrorType::ServiceUnavailable)]);
    s.fake
        .script("fallback1", [fail(1_500, ErrorType::Throttling)]);
    s.fake.script("fallback2", [ok(100)]);
    let t0 = Instant::now();

    let (result, record) = s.run().await;

    assert_eq!(answered_by(result), "answer from fallback2");
    assert_eq!(s.fake.attempted(), ["primary", "fallback1", "fallback2"]);
    let calls = s.fake.calls();
    assert_eq!(
        since(t0, calls[2].started),
        Duration::from_millis(2_500),
        "right after the second hedged attempt failed"
    );
    assert_eq!(record.attempts, 3);
    assert_eq!(record.target.as_deref(), Some("fallback2"));
    assert!(record.other_model);
    assert_eq!(
        metric(
            &prom,
            metrics::FALLBACKS,
            &[
                ("from", "fallback1"),
                ("to", "fallback2"),
                ("reason", "throttled")
            ]
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_everything_with_a_timeout() {
    let (recorder, prom) = recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let s = Setup::new(
        "deadline = \"2500ms\"\nfirst_byte_timeout = \"1s\"\nretries = 5\nbackoff = \"50ms\"\nfallback = [{ upstream = \"west\" }]\n",
    )
    .await;
    s.fake.script("primary", [hang(), hang(), hang()]);
    let t0 = Instant::now();

    let (result, record) = s.run().await;

    let e = failed(result);
    let elapsed = t0.elapsed();
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert_eq!(e.status().as_u16(), 408, "ModelTimeoutException");
    assert!(
        elapsed >= Duration::from_millis(2_500) && elapsed <= Duration::from_millis(2_505),
        "{elapsed:?}"
    );
    assert_eq!(
        s.fake.attempted(),
        ["primary", "primary", "primary"],
        "no fallback after the deadline"
    );
    let calls = s.fake.calls();
    assert_eq!(calls[0].first_byte, Duration::from_secs(1), "the route's");
    let last = &calls[2];
    assert_eq!(
        last.first_byte,
        Duration::from_millis(2_500) - since(t0, last.started),
        "the last attempt gets what is left of the deadline"
    );
    assert_eq!(record.attempts, 3);
    assert_eq!(record.target, None);
    assert_eq!(
        metric(&prom, crate::metrics::FALLBACKS, &[]),
        0.0,
        "a fallback that never happened is not counted"
    );
}

/// A hedge that lost while it was a half-open breaker's probe hands the probe
/// back, so the breaker is not stuck half-open.
#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_is_handed_back() {
    let s = Setup::new(
        "hedge_after = \"1s\"\nfallback = [{ upstream = \"west\" }]\nbreaker = { consecutive_failures = 1, open_for = \"10s\" }\n",
    )
    .await;
    // Both targets fail once, which opens both breakers.
    s.fake
        .script("primary", [fail(0, ErrorType::ServiceUnavailable)]);
    s.fake
        .script("fallback1", [fail(0, ErrorType::ServiceUnavailable)]);
    assert_eq!(failed(s.run().await.0).kind, ErrorKind::Unavailable);
    assert_eq!(s.breaker("east|model-a|-|-"), Some(State::Open));
    assert_eq!(s.breaker("west|model-a|-|-"), Some(State::Open));
    tokio::time::advance(Duration::from_secs(10)).await;

    // Past open_for, the primary is probed and slow; fallback1, probed as the
    // hedge, answers first.
    s.fake.script("primary", [ok(5_000)]);
    s.fake.script("fallback1", [ok(100)]);
    assert_eq!(answered_by(s.run().await.0), "answer from fallback1");
    assert_eq!(s.breaker("west|model-a|-|-"), Some(State::Closed));
    assert_eq!(s.breaker("east|model-a|-|-"), Some(State::HalfOpen));

    // The primary's probe was cancelled, not spent: the next call probes again.
    s.fake.script("primary", [ok(0)]);
    assert_eq!(answered_by(s.run().await.0), "answer from primary");
    assert_eq!(s.breaker("east|model-a|-|-"), Some(State::Closed));
}

#[test]
fn backoff_is_jittered_exponential_and_capped() {
    let r = ResilienceConfig {
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(1000),
        ..ResilienceConfig::default()
    };
    for retry in 0..8 {
        let d = backoff(&r, retry);
        let cap = Duration::from_millis(100 * (1 << retry)).min(Duration::from_millis(1000));
        assert!(
            d >= cap / 2 && d <= cap,
            "retry {retry}: {d:?} vs cap {cap:?}"
        );
    }
}

/// With tracing on, each attempt is a child span of the request's, sent
/// upstream as its `traceparent`; retries and fallbacks each have their span,
/// a hedge that lost ends `cancelled`, and the moves are events on the request.
#[tokio::test(start_paused = true)]
async fn every_attempt_is_a_span_under_the_request_and_goes_upstream_as_its_traceparent() {
    use crate::telemetry::testing::{spans_of, text, tracing_on};
    use crate::telemetry::{attr, RequestEnd};
    use opentelemetry::trace::{SpanKind, TraceId};
    let spans = tracing_on();
    let traced = |trace: &Trace| TraceId::from_hex(&trace.trace_id().unwrap()).unwrap();

    // Throttled twice on the primary (a retry), then the fallback answers.
    let mut s =
        Setup::new("retries = 1\nbackoff = \"10ms\"\nfallback = [{ upstream = \"west\" }]\n").await;
    s.trace = Trace::request(&HeaderMap::new(), Instant::now(), "converse");
    s.fake.script(
        "primary",
        [
            fail(50, ErrorType::Throttling),
            fail(50, ErrorType::Throttling),
        ],
    );
    s.fake.script("fallback1", [ok(100)]);
    assert_eq!(answered_by(s.run().await.0), "answer from fallback1");
    s.trace.end(&RequestEnd {
        status: 200,
        outcome: "ok",
        cache: "bypass",
        ..RequestEnd::default()
    });
    let got = spans_of(&spans, traced(&s.trace));
    let request = got
        .iter()
        .find(|sp| sp.span_kind == SpanKind::Server)
        .unwrap();
    let attempts: Vec<_> = got
        .iter()
        .filter(|sp| sp.span_kind == SpanKind::Client)
        .collect();
    let seen: Vec<(String, String)> = attempts
        .iter()
        .map(|a| (text(a, attr::TARGET), text(a, attr::OUTCOME)))
        .collect();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    assert_eq!(
        seen,
        pairs(&[
            ("primary", "throttled"),
            ("primary", "throttled"),
            ("fallback1", "ok")
        ])
    );
    for (attempt, call) in attempts.iter().zip(s.fake.calls()) {
        assert_eq!(attempt.parent_span_id, request.span_context.span_id());
        assert_eq!(
            call.traceparent.unwrap(),
            format!(
                "00-{}-{}-01",
                request.span_context.trace_id(),
                attempt.span_context.span_id()
            ),
            "each attempt sends its own context"
        );
    }
    let moves: Vec<_> = request.events.iter().map(|e| e.name.to_string()).collect();
    assert_eq!(moves, ["bedrock_proxy.fallback"]);
    assert_eq!(text(request, attr::TARGET), "fallback1");

    // The primary is silent: the hedge on the fallback wins, the primary's
    // attempt is cancelled.
    let mut s = Setup::new("hedge_after = \"1s\"\nfallback = [{ upstream = \"west\" }]\n").await;
    s.trace = Trace::request(&HeaderMap::new(), Instant::now(), "converse");
    s.fake.script("primary", [ok(3000)]);
    s.fake.script("fallback1", [ok(200)]);
    assert_eq!(answered_by(s.run().await.0), "answer from fallback1");
    s.trace.end(&RequestEnd {
        status: 200,
        outcome: "ok",
        cache: "bypass",
        ..RequestEnd::default()
    });
    let got = spans_of(&spans, traced(&s.trace));
    let mut seen: Vec<(String, String)> = got
        .iter()
        .filter(|sp| sp.span_kind == SpanKind::Client)
        .map(|a| (text(a, attr::TARGET), text(a, attr::OUTCOME)))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        pairs(&[("fallback1", "ok"), ("primary", "cancelled")])
    );
    let request = got
        .iter()
        .find(|sp| sp.span_kind == SpanKind::Server)
        .unwrap();
    let hedges: Vec<String> = request
        .events
        .iter()
        .filter(|e| e.name == "bedrock_proxy.hedge")
        .map(|e| {
            e.attributes
                .iter()
                .find(|kv| kv.key.as_str() == attr::OUTCOME)
                .unwrap()
                .value
                .to_string()
        })
        .collect();
    assert_eq!(hedges, ["fired", "won"]);
}
