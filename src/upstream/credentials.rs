//! An upstream's AWS credentials, cached until shortly before they expire.
//!
//! `aws-config`'s providers (the default chain, a named profile) fetch on every
//! call: from the instance metadata service, the container credentials endpoint,
//! or STS for a web identity token. The AWS SDK clients put them behind an
//! identity cache; the proxy signs its requests itself, so it keeps its own,
//! with the SDK's defaults: credentials without an expiry are kept 15 minutes,
//! and loading gives up after 5 seconds.
//!
//! - One load at a time: callers that find the cache stale while another loads
//!   wait for that load and take its result, success or failure, instead of
//!   queueing loads of their own behind it. The load runs in a task of its
//!   own, so a caller that goes away does not cancel it.
//! - Credentials are reloaded [`REFRESH_BEFORE`] their expiry. If the reload
//!   fails while they are still valid, they keep being used (with a warning)
//!   and the next reload is tried [`RETRY_AFTER`] later, so an unreachable
//!   metadata service costs requests nothing until the credentials really
//!   expire.

use arc_swap::ArcSwapOption;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_smithy_types::error::display::DisplayErrorContext;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long credentials without an expiry (static keys) are used before the
/// provider is asked again.
pub const DEFAULT_EXPIRATION: Duration = Duration::from_secs(15 * 60);
/// How long before their expiry credentials are reloaded.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// After a failed reload of credentials still valid, the next try waits this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// A provider that has not answered after this long has failed.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the cache holds: the last credentials, or the last failure.
struct Held {
    credentials: Option<Credentials>,
    /// When the provider is asked again.
    reload_at: SystemTime,
    /// When the credentials stop being usable (`None`: they do not expire).
    expires_at: Option<SystemTime>,
    /// The last load's error, for callers that waited on it.
    failure: Option<String>,
    /// Counts finished loads, so a waiter can tell one happened meanwhile.
    generation: u64,
}

impl Held {
    /// The credentials, if they need no reload at `now` (and so have not expired).
    fn fresh(&self, now: SystemTime) -> Option<Credentials> {
        if now < self.reload_at {
            self.usable(now)
        } else {
            None
        }
    }

    /// The credentials, if they have not expired at `now`.
    fn usable(&self, now: SystemTime) -> Option<Credentials> {
        match self.expires_at {
            Some(at) if now >= at => None,
            _ => self.credentials.clone(),
        }
    }
}

/// The time credentials are judged by (tests move it).
type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

struct Inner {
    provider: SharedCredentialsProvider,
    held: ArcSwapOption<Held>,
    /// Held by the one load under way (by its task, not its caller).
    loading: Arc<tokio::sync::Mutex<()>>,
    clock: Clock,
}

/// A credentials provider with a cache in front (see the module's doc).
pub struct CachedCredentials {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CachedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedCredentials").finish_non_exhaustive()
    }
}

impl CachedCredentials {
    pub fn new(provider: SharedCredentialsProvider) -> CachedCredentials {
        CachedCredentials::with_clock(provider, Arc::new(SystemTime::now))
    }

    fn with_clock(provider: SharedCredentialsProvider, clock: Clock) -> CachedCredentials {
        CachedCredentials {
            inner: Arc::new(Inner {
                provider,
                held: ArcSwapOption::empty(),
                loading: Arc::new(tokio::sync::Mutex::new(())),
                clock,
            }),
        }
    }

    /// Credentials to sign with now; the error is the provider's, with its causes.
    pub async fn get(&self) -> Result<Credentials, String> {
        let inner = &self.inner;
        let seen = {
            // A guard, not a clone of the Arc: the common case costs no
            // reference count.
            let snapshot = inner.held.load();
            if let Some(credentials) = snapshot.as_deref().and_then(|h| h.fresh((inner.clock)())) {
                return Ok(credentials);
            }
            // From the same snapshot as the check above, so a load that ends
            // in between counts as one this call waited on.
            snapshot.as_ref().map_or(0, |h| h.generation)
        };
        let guard = inner.loading.clone().lock_owned().await;
        let previous = inner.held.load_full();
        if let Some(held) = previous.as_deref() {
            let now = (inner.clock)();
            if let Some(credentials) = held.fresh(now) {
                return Ok(credentials);
            }
            if held.generation != seen {
                // A load finished while this call waited: share its outcome.
                if let Some(credentials) = held.usable(now) {
                    return Ok(credentials);
                }
                if let Some(failure) = &held.failure {
                    return Err(failure.clone());
                }
            }
        }
        // The load runs in a task of its own, holding the lock: a caller that
        // goes away (a client gone, a hedge's losing attempt) does not throw
        // it away, and whoever waits gets its outcome.
        let load = tokio::spawn({
            let inner = inner.clone();
            async move { inner.load(previous, guard).await }
        });
        load.await
            .unwrap_or_else(|e| Err(format!("loading AWS credentials failed: {e}")))
    }
}

impl Inner {
    /// Asks the provider and records the outcome over `previous`.
    async fn load(
        &self,
        previous: Option<Arc<Held>>,
        _loading: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Credentials, String> {
        let generation = previous.as_ref().map_or(0, |h| h.generation) + 1;
        let loaded = tokio::time::timeout(LOAD_TIMEOUT, self.provider.provide_credentials()).await;
        let now = (self.clock)();
        let error = match loaded {
            Ok(Ok(credentials)) => {
                let expires_at = credentials.expiry();
                let reload_at = match expires_at {
                    Some(at) => at.checked_sub(REFRESH_BEFORE).unwrap_or(at),
                    None => now + DEFAULT_EXPIRATION,
                };
                self.held.store(Some(Arc::new(Held {
                    credentials: Some(credentials.clone()),
                    reload_at,
                    expires_at,
                    failure: None,
                    generation,
                })));
                return Ok(credentials);
            }
            Ok(Err(e)) => DisplayErrorContext(&e).to_string(),
            Err(_) => format!("the credentials provider did not answer within {LOAD_TIMEOUT:?}"),
        };
        let kept = previous.as_deref().and_then(|p| p.usable(now));
        let expires_at = previous.as_ref().and_then(|p| p.expires_at);
        if kept.is_some() {
            tracing::warn!(
                error = %error,
                retry_in = ?RETRY_AFTER,
                "reloading AWS credentials failed; signing with the current ones until they expire"
            );
        }
        // Tried again after RETRY_AFTER; the credentials kept serve until
        // then, never past their expiry (`Held::fresh`).
        self.held.store(Some(Arc::new(Held {
            credentials: kept.clone(),
            reload_at: now + RETRY_AFTER,
            expires_at,
            failure: Some(error.clone()),
            generation,
        })));
        kept.ok_or(error)
    }
}

#[cfg(test)]
mod tests;
