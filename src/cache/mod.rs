//! The response cache: repeated requests answered from memory, or from a shared
//! Redis tier, instead of Bedrock.
//!
//! - [`key`]: what a request's key is made of, and what is left out and why.
//! - [`entry`]: what is stored, and how a hit is rendered as a body or a stream.
//!
//! The cache is storage: the pipeline decides what to look up and store, and
//! coalesces identical misses (single-flight); the Redis connection of the
//! shared tier is [`crate::shared`]'s.
//!
//! Lookups go L1 (moka, weighted by bytes, per-entry TTL) then L2 (Redis), whose
//! hits are copied into L1. Stores happen off the response path, in the task
//! that made the upstream call, and only for complete, successful answers.

pub mod entry;
pub mod key;

use axum::http::HeaderMap;
use moka::notification::RemovalCause;
use moka::Expiry;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::answer::{CacheStatus, CacheTier};
use crate::config::CacheConfig;
use crate::metrics;
use crate::shared::{glob_escape, RedisTier};
pub use entry::{Entry, EntryError};
pub use key::{cache_key, CacheKey, Family, KeyParts};

/// A request's `Cache-Control`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// Skip the lookup, still store.
    pub no_cache: bool,
    /// Neither look up nor store.
    pub no_store: bool,
    /// Accept only entries at most this old.
    pub max_age: Option<Duration>,
}

impl Directives {
    /// Reads `Cache-Control` (`no-cache`, `no-store`, `max-age=N`; others ignored).
    pub fn from_headers(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for value in headers.get_all("cache-control") {
            let Ok(text) = value.to_str() else { continue };
            for part in text.split(',').map(str::trim) {
                let lower = part.to_ascii_lowercase();
                if lower == "no-cache" {
                    d.no_cache = true;
                } else if lower == "no-store" {
                    d.no_store = true;
                } else if let Some(n) = lower.strip_prefix("max-age=") {
                    if let Ok(secs) = n.trim_matches('"').parse::<u64>() {
                        d.max_age = Some(Duration::from_secs(secs));
                    }
                }
            }
        }
        d
    }
}

struct EntryExpiry;

impl Expiry<CacheKey, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.remaining())
    }
}

/// The cache, shared by every request and surviving config reloads.
pub struct ResponseCache {
    l1: moka::future::Cache<CacheKey, Arc<Entry>>,
    l2: Option<Arc<RedisTier>>,
    max_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    evictions: Arc<AtomicU64>,
}

impl ResponseCache {
    /// Builds the tiers around `l2`, the shared Redis tier when configured.
    pub fn new(config: &CacheConfig, l2: Option<Arc<RedisTier>>) -> ResponseCache {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = evictions.clone();
        let l1 = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<Entry>| v.weight())
            .expire_after(EntryExpiry)
            .support_invalidation_closures()
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                    metrics::cache_evicted();
                }
            })
            .build();
        ResponseCache {
            l1,
            l2,
            max_bytes: config.max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bypasses: AtomicU64::new(0),
            evictions,
        }
    }

    /// The Redis key of an entry (`{namespace}:{route}:{hash}` under the prefix).
    fn redis_key(l2: &RedisTier, namespace: &str, route: &str, key: &CacheKey) -> String {
        l2.key(namespace, route, &key.hex())
    }

    /// Looks a key up in L1, then L2; `max_age` rejects older entries.
    pub async fn get(
        &self,
        key: &CacheKey,
        namespace: &str,
        route: &str,
        max_age: Option<Duration>,
    ) -> Option<(Arc<Entry>, CacheTier)> {
        let fresh = |e: &Entry| max_age.is_none_or(|m| e.age() <= m) && !e.remaining().is_zero();
        if let Some(entry) = self.l1.get(key).await {
            if fresh(&entry) {
                return Some((entry, CacheTier::L1));
            }
        }
        let l2 = self.l2.as_ref()?;
        let data = l2.get(&Self::redis_key(l2, namespace, route, key)).await?;
        let entry = match Entry::decode(&data) {
            Ok(e) => Arc::new(e),
            // Expected for a while after an upgrade: a miss, overwritten on store.
            Err(e @ EntryError::OtherVersion) => {
                tracing::debug!(error = %e, "ignoring a shared-cache entry");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a corrupt shared-cache entry");
                return None;
            }
        };
        if !fresh(&entry) {
            return None;
        }
        self.l1.insert(*key, entry.clone()).await;
        Some((entry, CacheTier::L2))
    }

    /// Stores an entry in L1, and in L2 in the background.
    pub async fn store(&self, key: CacheKey, namespace: &str, entry: Entry) {
        let entry = Arc::new(entry);
        if let Some(l2) = &self.l2 {
            let l2 = l2.clone();
            let redis_key = Self::redis_key(&l2, namespace, &entry.route, &key);
            let encoded = entry.encode();
            let ttl = entry.ttl;
            let tier = l2.clone();
            tier.spawn(async move { l2.set(&redis_key, &encoded, ttl).await });
        }
        self.l1.insert(key, entry).await;
    }

    /// Counts a lookup outcome for the hit ratio.
    pub fn count(&self, status: CacheStatus) {
        let counter = match status {
            CacheStatus::Hit { .. } => &self.hits,
            CacheStatus::Miss => &self.misses,
            CacheStatus::Bypass => &self.bypasses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes entries: all, or those of a tenant and/or a route, in both tiers.
    /// Returns (L1 entries, L2 keys) removed.
    pub async fn invalidate(&self, tenant: Option<&str>, route: Option<&str>) -> (u64, u64) {
        let before = self.l1.entry_count();
        match (tenant, route) {
            (None, None) => self.l1.invalidate_all(),
            _ => {
                let (t, r) = (tenant.map(str::to_owned), route.map(str::to_owned));
                let predicate = move |_: &CacheKey, e: &Arc<Entry>| {
                    t.as_deref().is_none_or(|t| &*e.tenant == t)
                        && r.as_deref().is_none_or(|r| &*e.route == r)
                };
                if let Err(e) = self.l1.invalidate_entries_if(predicate) {
                    tracing::warn!(error = %e, "could not invalidate cache entries");
                }
            }
        }
        self.l1.run_pending_tasks().await;
        let removed_l1 = before.saturating_sub(self.l1.entry_count());
        let removed_l2 = match &self.l2 {
            Some(l2) => {
                // Names hold no `:` (check-config refuses it), so each part of
                // `{namespace}:{route}:{hash}` matches that tenant or route only.
                let literal = |v: Option<&str>| v.map_or_else(|| "*".to_owned(), glob_escape);
                let pattern = format!("{}:{}:*", literal(tenant), literal(route));
                l2.delete_matching(&pattern).await
            }
            None => 0,
        };
        (removed_l1, removed_l2)
    }

    /// Refreshes the size gauges (called periodically).
    pub async fn upkeep(&self) {
        self.l1.run_pending_tasks().await;
        metrics::cache_size(self.l1.entry_count(), self.l1.weighted_size());
    }

    /// What `GET /admin/cache` shows; `in_flight` is the pipeline's count of
    /// upstream calls that identical requests may join.
    pub async fn describe(&self, in_flight: usize) -> Value {
        self.l1.run_pending_tasks().await;
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let lookups = hits + misses;
        json!({
            "entries": self.l1.entry_count(),
            "bytes": self.l1.weighted_size(),
            "max_bytes": self.max_bytes,
            "hits": hits,
            "misses": misses,
            "bypasses": self.bypasses.load(Ordering::Relaxed),
            "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
            "evictions": self.evictions.load(Ordering::Relaxed),
            "in_flight": in_flight,
            "redis": self.l2.as_ref().map(|l2| json!({
                "connected": l2.connected(),
                "up": l2.connected() && !l2.is_down(),
                "errors": l2.errors(),
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cache_control_directives() {
        let mut h = HeaderMap::new();
        h.insert(
            "cache-control",
            HeaderValue::from_static("No-Cache, max-age=30"),
        );
        let d = Directives::from_headers(&h);
        assert!(d.no_cache && !d.no_store);
        assert_eq!(d.max_age, Some(Duration::from_secs(30)));
        h.insert("cache-control", HeaderValue::from_static("no-store"));
        assert!(Directives::from_headers(&h).no_store);
        assert_eq!(
            Directives::from_headers(&HeaderMap::new()),
            Directives::default()
        );
    }
}
