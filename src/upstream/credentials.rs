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
//!   queueing loads of their own behind it.
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

/// A credentials provider with a cache in front (see the module's doc).
pub struct CachedCredentials {
    provider: SharedCredentialsProvider,
    held: ArcSwapOption<Held>,
    loading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CachedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedCredentials").finish_non_exhaustive()
    }
}

impl CachedCredentials {
    pub fn new(provider: SharedCredentialsProvider) -> CachedCredentials {
        CachedCredentials {
            provider,
            held: ArcSwapOption::empty(),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// Credentials to sign with now; the error is the provider's, with its causes.
    pub async fn get(&self) -> Result<Credentials, String> {
        self.get_at(SystemTime::now()).await
    }

    /// The cached credentials if they need no reload at `now`.
    fn fresh(&self, now: SystemTime) -> Option<Credentials> {
        let held = self.held.load();
        let held = held.as_ref()?;
        if now < held.reload_at {
            held.credentials.clone()
        } else {
            None
        }
    }

    fn generation(&self) -> u64 {
        self.held.load().as_ref().map_or(0, |h| h.generation)
    }

    /// [`CachedCredentials::get`] as of `now` (tests move the clock).
    pub async fn get_at(&self, now: SystemTime) -> Result<Credentials, String> {
        if let Some(credentials) = self.fresh(now) {
            return Ok(credentials);
        }
        let seen = self.generation();
        let _loading = self.loading.lock().await;
        if let Some(credentials) = self.fresh(now) {
            return Ok(credentials);
        }
        let previous = self.held.load_full();
        if let Some(previous) = previous.as_ref().filter(|h| h.generation != seen) {
            // A load finished while this call waited: share its outcome.
            match (usable(previous, now), &previous.failure) {
                (Some(credentials), _) => return Ok(credentials),
                (None, Some(failure)) => return Err(failure.clone()),
                (None, None) => {}
            }
        }
        let generation = previous.as_ref().map_or(0, |h| h.generation) + 1;
        let error = match tokio::time::timeout(LOAD_TIMEOUT, self.provider.provide_credentials())
            .await
        {
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
        let kept = previous.as_ref().and_then(|p| usable(p, now));
        if kept.is_some() {
            tracing::warn!(
                error = %error,
                retry_in = ?RETRY_AFTER,
                "reloading AWS credentials failed; signing with the current ones until they expire"
            );
        }
        self.held.store(Some(Arc::new(Held {
            credentials: kept.clone(),
            reload_at: now + RETRY_AFTER,
            expires_at: previous.as_ref().and_then(|p| p.expires_at),
            failure: Some(error.clone()),
            generation,
        })));
        kept.ok_or(error)
    }
}

/// `held`'s credentials if they have not expired at `now`.
fn usable(held: &Held, now: SystemTime) -> Option<Credentials> {
    let credentials = held.credentials.clone()?;
    match held.expires_at {
        Some(at) if now >= at => None,
        _ => Some(credentials),
    }
}

#[cfg(test)]
mod tests;
