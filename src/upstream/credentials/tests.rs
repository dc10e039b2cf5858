use super::*;
use aws_credential_types::provider::{error::CredentialsError, future};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A provider that counts its calls and answers from a script: credentials
/// valid for `lifetime` after [`base`] (`None`: no expiry), or an error;
/// after `delay`.
#[derive(Debug, Default)]
struct Scripted {
    calls: AtomicUsize,
    answers: Mutex<Vec<Result<Option<Duration>, &'static str>>>,
    delay: Duration,
}

fn base() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

impl Scripted {
    fn new(answers: Vec<Result<Option<Duration>, &'static str>>) -> Arc<Scripted> {
        Scripted::slow(answers, Duration::ZERO)
    }
    fn slow(
        answers: Vec<Result<Option<Duration>, &'static str>>,
        delay: Duration,
    ) -> Arc<Scripted> {
        Arc::new(Scripted {
            answers: Mutex::new(answers),
            delay,
            ..Scripted::default()
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl ProvideCredentials for Scripted {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let answers = self.answers.lock().unwrap().clone();
            let answer = answers
                .get(n)
                .or(answers.last())
                .copied()
                .unwrap_or(Err("no answer"));
            match answer {
                Ok(lifetime) => Ok(Credentials::new(
                    format!("AKID{n}"),
                    "secret",
                    Some("token".into()),
                    lifetime.map(|l| base() + l),
                    "scripted",
                )),
                Err(message) => Err(CredentialsError::provider_error(message)),
            }
        })
    }
}

/// Shares one [`Scripted`] between the cache and the test.
#[derive(Debug)]
struct ArcProvider(Arc<Scripted>);

impl ProvideCredentials for ArcProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        self.0.provide_credentials()
    }
}

/// A cache in front of `p`, and the clock it reads (starting at [`base`]).
fn cache(p: &Arc<Scripted>) -> (CachedCredentials, Arc<Mutex<SystemTime>>) {
    let now = Arc::new(Mutex::new(base()));
    let clock = now.clone();
    let c = CachedCredentials::with_clock(
        SharedCredentialsProvider::new(ArcProvider(p.clone())),
        Arc::new(move || *clock.lock().unwrap()),
    );
    (c, now)
}

/// The credentials' key, or the error, at `t`.
async fn at(
    c: &CachedCredentials,
    clock: &Mutex<SystemTime>,
    t: SystemTime,
) -> Result<String, String> {
    *clock.lock().unwrap() = t;
    c.get().await.map(|c| c.access_key_id().to_owned())
}

const HOUR: Duration = Duration::from_secs(3600);
const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn credentials_are_loaded_once_and_reused_until_shortly_before_they_expire() {
    let p = Scripted::new(vec![Ok(Some(HOUR))]);
    let (c, clock) = cache(&p);
    for minutes in [0, 1, 30, 58] {
        assert_eq!(
            at(&c, &clock, base() + 60 * minutes * SECOND)
                .await
                .unwrap(),
            "AKID0"
        );
    }
    assert_eq!(p.calls(), 1, "one load for an hour's credentials");
    // Inside the last minute before expiry: loaded again.
    assert_eq!(
        at(&c, &clock, base() + HOUR - 30 * SECOND).await.unwrap(),
        "AKID1"
    );
    assert_eq!(p.calls(), 2);
}

#[tokio::test]
async fn credentials_without_an_expiry_are_asked_for_again_after_fifteen_minutes() {
    let p = Scripted::new(vec![Ok(None)]);
    let (c, clock) = cache(&p);
    at(&c, &clock, base()).await.unwrap();
    at(&c, &clock, base() + DEFAULT_EXPIRATION - SECOND)
        .await
        .unwrap();
    assert_eq!(p.calls(), 1);
    at(&c, &clock, base() + DEFAULT_EXPIRATION).await.unwrap();
    assert_eq!(p.calls(), 2);
}

/// `n` calls to a cache whose provider answers `answer` after 50 ms, all
/// started before any finishes; their results and the provider's call count.
async fn together(
    n: usize,
    answer: Result<Option<Duration>, &'static str>,
) -> (Vec<Result<Credentials, String>>, usize) {
    let p = Scripted::slow(vec![answer], Duration::from_millis(50));
    let c = Arc::new(cache(&p).0);
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get().await })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    (results, p.calls())
}

#[tokio::test]
async fn callers_that_find_the_cache_empty_together_share_one_load() {
    let (results, calls) = together(16, Ok(Some(HOUR))).await;
    for r in results {
        assert_eq!(r.unwrap().access_key_id(), "AKID0");
    }
    assert_eq!(calls, 1);
}

#[tokio::test]
async fn callers_waiting_on_a_failed_load_share_its_error_instead_of_queueing_loads() {
    let (results, calls) = together(8, Err("container endpoint refused")).await;
    for r in results {
        let error = r.unwrap_err();
        assert!(error.contains("container endpoint refused"), "{error}");
    }
    assert_eq!(calls, 1, "one load, its failure shared");
}

#[tokio::test]
async fn a_failed_reload_keeps_valid_credentials_and_waits_before_trying_again() {
    let p = Scripted::new(vec![
        Ok(Some(HOUR)),
        Err("metadata service unreachable"),
        Ok(Some(2 * HOUR)),
    ]);
    let (c, clock) = cache(&p);
    at(&c, &clock, base()).await.unwrap();
    // In the reload window, the reload fails: the current credentials serve.
    let t = base() + HOUR - 50 * SECOND;
    assert_eq!(at(&c, &clock, t).await.unwrap(), "AKID0");
    assert_eq!(p.calls(), 2);
    // No new try within RETRY_AFTER.
    assert_eq!(
        at(&c, &clock, t + RETRY_AFTER - SECOND).await.unwrap(),
        "AKID0"
    );
    assert_eq!(p.calls(), 2);
    // Then it tries again, and takes the new ones.
    assert_eq!(at(&c, &clock, t + RETRY_AFTER).await.unwrap(), "AKID2");
    assert_eq!(p.calls(), 3);
}

#[tokio::test]
async fn a_failed_reload_never_stretches_credentials_past_their_expiry() {
    let p = Scripted::new(vec![Ok(Some(HOUR)), Err("metadata service unreachable")]);
    let (c, clock) = cache(&p);
    at(&c, &clock, base()).await.unwrap();
    // Five seconds before expiry the reload fails: still valid, still used.
    assert_eq!(
        at(&c, &clock, base() + HOUR - 5 * SECOND).await.unwrap(),
        "AKID0"
    );
    // Three seconds after expiry (within RETRY_AFTER of the failure): asked
    // again, and with the provider still failing, an error, not the old keys.
    let error = at(&c, &clock, base() + HOUR + 3 * SECOND)
        .await
        .unwrap_err();
    assert!(error.contains("metadata service unreachable"), "{error}");
    assert_eq!(p.calls(), 3);
}

#[tokio::test]
async fn expired_credentials_are_never_used_and_the_error_names_the_cause() {
    let p = Scripted::new(vec![Ok(Some(HOUR)), Err("metadata service unreachable")]);
    let (c, clock) = cache(&p);
    at(&c, &clock, base()).await.unwrap();
    let error = at(&c, &clock, base() + HOUR).await.unwrap_err();
    assert!(error.contains("metadata service unreachable"), "{error}");
    // With nothing usable, each call tries again (no waiting out RETRY_AFTER).
    assert!(at(&c, &clock, base() + HOUR + SECOND).await.is_err());
    assert_eq!(p.calls(), 3);
}

#[tokio::test]
async fn a_load_whose_caller_went_away_still_completes_and_serves_the_next_call() {
    let p = Scripted::slow(vec![Ok(Some(HOUR))], Duration::from_millis(50));
    let (c, _clock) = cache(&p);
    // The caller gives up (its future is dropped) while the provider works.
    let gave_up = tokio::time::timeout(Duration::from_millis(10), c.get()).await;
    assert!(gave_up.is_err(), "the load takes 50 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.get().await.unwrap().access_key_id(), "AKID0");
    assert_eq!(p.calls(), 1, "the abandoned load was kept, not repeated");
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_hangs_fails_after_the_load_timeout() {
    let p = Scripted::slow(vec![Ok(Some(HOUR))], LOAD_TIMEOUT + SECOND);
    let (c, _clock) = cache(&p);
    let error = c.get().await.unwrap_err();
    assert!(error.contains("did not answer within 5s"), "{error}");
}
