//! Stored Responses (`store: true`) for the Responses API's conversation state:
//! each response with the input items it answered, under the caller's tenant,
//! bounded in bytes and by a TTL in process, and in the shared Redis tier when
//! one is configured so every replica can read, continue and delete it. A
//! tenant's lookups only ever see its own keys: the tenant is part of every key.
//!
//! With Redis answering, Redis is the truth (a response deleted on one replica
//! is gone on all); the in-process copy serves only while Redis is down or not
//! yet connected.

use moka::future::Cache;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::config::ResponsesConfig;
use crate::shared::RedisTier;

/// One stored response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The Response object as answered.
    pub response: Value,
    /// Every input item of the conversation up to this response (the previous
    /// response's input items and output, then this request's input), which
    /// `previous_response_id` continues from and `input_items` lists.
    pub input_items: Vec<Value>,
}

/// An in-process entry and when it stops being readable (tokio's clock, so
/// tests can move it).
struct Local {
    stored: Arc<Stored>,
    expires: Instant,
    weight: u32,
}

/// The store.
pub struct ResponseStore {
    local: Cache<(Arc<str>, String), Arc<Local>>,
    redis: Option<Arc<RedisTier>>,
    ttl: Duration,
}

fn redis_key(redis: &RedisTier, tenant: &str, id: &str) -> String {
    redis.prefixed(&format!("responses:{tenant}:{id}"))
}

impl ResponseStore {
    /// A store keeping at most `config.max_bytes` of responses in process,
    /// each readable for `config.ttl`.
    pub fn new(config: &ResponsesConfig, redis: Option<Arc<RedisTier>>) -> ResponseStore {
        let local = Cache::builder()
            // Least recently used goes first, and a new response is always
            // admitted (TinyLFU could refuse one a client is about to continue).
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .max_capacity(config.max_bytes)
            .weigher(|_k: &(Arc<str>, String), v: &Arc<Local>| v.weight)
            // A backstop on the wall clock; reads check `expires`.
            .time_to_live(config.ttl)
            .build();
        ResponseStore {
            local,
            redis,
            ttl: config.ttl,
        }
    }

    /// Whether Redis is there to ask (connected and not being skipped).
    fn redis(&self) -> Option<&RedisTier> {
        self.redis
            .as_deref()
            .filter(|r| r.connected() && !r.is_down())
    }

    /// Stores `tenant`'s response `id` for the TTL.
    pub async fn put(&self, tenant: &Arc<str>, id: &str, stored: Stored) {
        let bytes = match serde_json::to_vec(&stored) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, "a response could not be stored");
                return;
            }
        };
        if let Some(redis) = &self.redis {
            redis
                .set_for(&redis_key(redis, tenant, id), &bytes, self.ttl)
                .await;
        }
        let local = Local {
            stored: Arc::new(stored),
            expires: Instant::now() + self.ttl,
            weight: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        };
        self.local
            .insert((tenant.clone(), id.to_owned()), Arc::new(local))
            .await;
    }

    /// `tenant`'s response `id`, if it is stored and not expired.
    pub async fn get(&self, tenant: &Arc<str>, id: &str) -> Option<Arc<Stored>> {
        if let Some(redis) = self.redis() {
            let found = redis.get(&redis_key(redis, tenant, id)).await;
            // A miss while Redis answers is a miss: another replica may have
            // deleted what this one still holds.
            if found.is_some() || self.redis().is_some() {
                return found
                    .and_then(|bytes| serde_json::from_slice::<Stored>(&bytes).ok())
                    .map(Arc::new);
            }
        }
        let key = (tenant.clone(), id.to_owned());
        let local = self.local.get(&key).await?;
        if Instant::now() >= local.expires {
            self.local.invalidate(&key).await;
            return None;
        }
        Some(local.stored.clone())
    }

    /// Removes `tenant`'s response `id`; whether it was there (and readable).
    pub async fn delete(&self, tenant: &Arc<str>, id: &str) -> bool {
        let local = self
            .local
            .remove(&(tenant.clone(), id.to_owned()))
            .await
            .is_some_and(|l| Instant::now() < l.expires);
        let shared = match &self.redis {
            Some(redis) => redis.delete(&redis_key(redis, tenant, id)).await,
            None => None,
        };
        shared.unwrap_or(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(text: &str) -> Stored {
        Stored {
            response: json!({"id": "resp_1", "output_text": text}),
            input_items: vec![json!({"role": "user", "content": text})],
        }
    }

    fn store(max_bytes: u64, ttl: Duration) -> ResponseStore {
        ResponseStore::new(&ResponsesConfig { ttl, max_bytes }, None)
    }

    #[tokio::test]
    async fn a_tenant_reads_and_deletes_only_its_own_responses() {
        let store = store(1 << 20, Duration::from_secs(60));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("team-a"), Arc::from("team-b"));
        store.put(&a, "resp_1", stored("hello")).await;
        assert_eq!(store.get(&a, "resp_1").await.unwrap().input_items.len(), 1);
        assert!(store.get(&b, "resp_1").await.is_none());
        assert!(!store.delete(&b, "resp_1").await);
        assert!(store.get(&a, "resp_1").await.is_some());
        assert!(store.delete(&a, "resp_1").await);
        assert!(store.get(&a, "resp_1").await.is_none());
        assert!(!store.delete(&a, "resp_1").await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_expires_after_the_ttl() {
        let store = store(1 << 20, Duration::from_secs(3600));
        let tenant: Arc<str> = Arc::from("t");
        store.put(&tenant, "resp_1", stored("hello")).await;
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert!(store.get(&tenant, "resp_1").await.is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(store.get(&tenant, "resp_1").await.is_none());
        assert!(!store.delete(&tenant, "resp_1").await);
    }

    #[tokio::test]
    async fn the_store_is_bounded_in_bytes() {
        let one = serde_json::to_vec(&stored(&"x".repeat(1000)))
            .unwrap()
            .len() as u64;
        let store = store(one * 3, Duration::from_secs(60));
        let tenant: Arc<str> = Arc::from("t");
        for i in 0..20 {
            store
                .put(&tenant, &format!("resp_{i}"), stored(&"x".repeat(1000)))
                .await;
        }
        store.local.run_pending_tasks().await;
        assert!(store.local.weighted_size() <= one * 3);
        let mut kept = 0;
        for i in 0..20 {
            kept += usize::from(store.get(&tenant, &format!("resp_{i}")).await.is_some());
        }
        assert!((1..=3).contains(&kept), "{kept} kept");
        assert!(
            store.get(&tenant, "resp_19").await.is_some(),
            "the newest response is kept"
        );
    }
}
