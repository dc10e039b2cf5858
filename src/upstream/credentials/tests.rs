use super::*;
use aws_credential_types::provider::{error::CredentialsError, future};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A provider that counts its calls and answers from a script: credentials
/// valid for `lifetime` (`None`: no expiry), or an error; optionally slowly.
#[derive(Debug, Default)]
struct Scripted {
    calls: AtomicUsize,
    /// `Some(lifetime)` answers credentials expiring that long after `base`.
    answers: Mutex<Vec<Result<Option<Duration>, &'static str>>>,
    delay: Duration,
}

fn base() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

impl Scripted {
    fn new(answers: Vec<Result<Option<Duration>, &'static str>>) -> Arc<Scripted> {
        Arc::new(Scripted {
            answers: Mutex::new(answers),
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

fn cache(p: &Arc<Scripted>) -> CachedCredentials {
    CachedCredentials::new(SharedCredentialsProvider::new(ArcProvider(p.clone())))
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

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn credentials_are_loaded_once_and_reused_until_shortly_before_they_expire() {
    let p = Scripted::new(vec![Ok(Some(HOUR))]);
    let c = cache(&p);
    for minutes in [0, 1, 30, 58] {
        let creds = c
            .get_at(base() + Duration::from_secs(minutes * 60))
            .await
            .unwrap();
        assert_eq!(creds.access_key_id(), "AKID0");
    }
    assert_eq!(p.calls(), 1, "one load for an hour's credentials");
    // Inside the last minute before expiry: loaded again.
    let creds = c
        .get_at(base() + HOUR - Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(creds.access_key_id(), "AKID1");
    assert_eq!(p.calls(), 2);
}

#[tokio::test]
async fn credentials_without_an_expiry_are_asked_for_again_after_fifteen_minutes() {
    let p = Scripted::new(vec![Ok(None)]);
    let c = cache(&p);
    c.get_at(base()).await.unwrap();
    c.get_at(base() + DEFAULT_EXPIRATION - Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(p.calls(), 1);
    c.get_at(base() + DEFAULT_EXPIRATION).await.unwrap();
    assert_eq!(p.calls(), 2);
}

/// `n` calls to a cache whose provider answers `answer` after 50 ms, all
/// started before any finishes; their results and the provider's call count.
async fn together(
    n: usize,
    answer: Result<Option<Duration>, &'static str>,
) -> (Vec<Result<Credentials, String>>, usize) {
    let p = Arc::new(Scripted {
        answers: Mutex::new(vec![answer]),
        delay: Duration::from_millis(50),
        ..Scripted::default()
    });
    let c = Arc::new(cache(&p));
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get_at(base()).await })
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
async fn a_failed_reload_keeps_valid_credentials_and_waits_before_trying_again() {
    let p = Scripted::new(vec![
        Ok(Some(HOUR)),
        Err("metadata service unreachable"),
        Ok(Some(2 * HOUR)),
    ]);
    let c = cache(&p);
    c.get_at(base()).await.unwrap();
    // In the reload window, the reload fails: the current credentials serve.
    let t = base() + HOUR - Duration::from_secs(50);
    assert_eq!(c.get_at(t).await.unwrap().access_key_id(), "AKID0");
    assert_eq!(p.calls(), 2);
    // No new try within RETRY_AFTER.
    assert_eq!(
        c.get_at(t + RETRY_AFTER - Duration::from_secs(1))
            .await
            .unwrap()
            .access_key_id(),
        "AKID0"
    );
    assert_eq!(p.calls(), 2);
    // Then it tries again, and takes the new ones.
    assert_eq!(
        c.get_at(t + RETRY_AFTER).await.unwrap().access_key_id(),
        "AKID2"
    );
    assert_eq!(p.calls(), 3);
}

#[tokio::test]
async fn expired_credentials_are_never_used_and_the_error_names_the_cause() {
    let p = Scripted::new(vec![Ok(Some(HOUR)), Err("metadata service unreachable")]);
    let c = cache(&p);
    c.get_at(base()).await.unwrap();
    let error = c.get_at(base() + HOUR).await.unwrap_err();
    assert!(error.contains("metadata service unreachable"), "{error}");
    // With nothing usable, each call tries again (no waiting out RETRY_AFTER).
    assert!(c
        .get_at(base() + HOUR + Duration::from_secs(1))
        .await
        .is_err());
    assert_eq!(p.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_hangs_fails_after_the_load_timeout() {
    let p = Arc::new(Scripted {
        answers: Mutex::new(vec![Ok(Some(HOUR))]),
        delay: LOAD_TIMEOUT + Duration::from_secs(1),
        ..Scripted::default()
    });
    let c = cache(&p);
    let error = c.get_at(base()).await.unwrap_err();
    assert!(error.contains("did not answer within 5s"), "{error}");
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
