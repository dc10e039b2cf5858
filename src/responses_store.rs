//! Stored Responses (`store: true`) for the Responses API's conversation state:
//! each response with the input items it answered, under the caller's tenant,
//! bounded in bytes and by a TTL in process, and in the shared Redis tier when
//! one is configured so every replica can continue a conversation. A tenant's
//! lookups only ever see its own keys: the tenant is part of every key.
//!
//! WORK IN PROGRESS (issue 15): not yet wired into `/v1/responses` (AppState,
//! `previous_response_id`, `GET/DELETE /v1/responses/{id}`, `input_items`) nor
//! configurable (`[responses]` TTL and size keys still to add).
#![allow(dead_code)] // WIP: the ingress wiring comes next (see above)

use moka::future::Cache;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

use crate::shared::RedisTier;

/// One stored response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The Response object as answered.
    pub response: Value,
    /// Every input item of the conversation up to this response (the previous
    /// response's, then this request's), which `previous_response_id` continues
    /// from and `input_items` lists.
    pub input_items: Vec<Value>,
}

impl Stored {
    fn weight(&self) -> u32 {
        let bytes = serde_json::to_vec(self).map_or(0, |v| v.len());
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// The store.
pub struct ResponseStore {
    local: Cache<(Arc<str>, String), Arc<Stored>>,
    redis: Option<Arc<RedisTier>>,
    ttl: Duration,
}

fn redis_key(redis: &RedisTier, tenant: &str, id: &str) -> String {
    redis.prefixed(&format!("responses:{tenant}:{id}"))
}

impl ResponseStore {
    /// A store keeping at most `max_bytes` of responses in process, each for `ttl`.
    pub fn new(max_bytes: u64, ttl: Duration, redis: Option<Arc<RedisTier>>) -> ResponseStore {
        let local = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &(Arc<str>, String), v: &Arc<Stored>| v.weight())
            .time_to_live(ttl)
            .build();
        ResponseStore { local, redis, ttl }
    }

    pub async fn put(&self, tenant: &Arc<str>, id: &str, stored: Stored) {
        if let Some(redis) = &self.redis {
            if let Ok(bytes) = serde_json::to_vec(&stored) {
                redis
                    .set(&redis_key(redis, tenant, id), &bytes, self.ttl)
                    .await;
            }
        }
        self.local
            .insert((tenant.clone(), id.to_owned()), Arc::new(stored))
            .await;
    }

    /// `tenant`'s response `id`, if it is stored and not expired.
    pub async fn get(&self, tenant: &Arc<str>, id: &str) -> Option<Arc<Stored>> {
        let key = (tenant.clone(), id.to_owned());
        if let Some(found) = self.local.get(&key).await {
            return Some(found);
        }
        let redis = self.redis.as_ref()?;
        let bytes = redis.get(&redis_key(redis, tenant, id)).await?;
        let stored: Stored = serde_json::from_slice(&bytes).ok()?;
        let stored = Arc::new(stored);
        self.local.insert(key, stored.clone()).await;
        Some(stored)
    }

    /// Removes `tenant`'s response `id`; whether it was there.
    pub async fn delete(&self, tenant: &Arc<str>, id: &str) -> bool {
        let local = self
            .local
            .remove(&(tenant.clone(), id.to_owned()))
            .await
            .is_some();
        let shared = match &self.redis {
            Some(redis) => {
                let pattern = crate::shared::glob_escape(&format!("responses:{tenant}:{id}"));
                redis.delete_matching(&pattern).await > 0
            }
            None => false,
        };
        local || shared
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

    #[tokio::test]
    async fn a_tenant_reads_and_deletes_only_its_own_responses() {
        let store = ResponseStore::new(1 << 20, Duration::from_secs(60), None);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("team-a"), Arc::from("team-b"));
        store.put(&a, "resp_1", stored("hello")).await;
        assert_eq!(store.get(&a, "resp_1").await.unwrap().input_items.len(), 1);
        assert!(store.get(&b, "resp_1").await.is_none());
        assert!(!store.delete(&b, "resp_1").await);
        assert!(store.get(&a, "resp_1").await.is_some());
        assert!(store.delete(&a, "resp_1").await);
        assert!(store.get(&a, "resp_1").await.is_none());
    }

    #[tokio::test]
    async fn the_store_is_bounded_in_bytes() {
        let one = stored(&"x".repeat(1000)).weight();
        let store = ResponseStore::new(u64::from(one) * 3, Duration::from_secs(60), None);
        let tenant: Arc<str> = Arc::from("t");
        for i in 0..20 {
            store
                .put(&tenant, &format!("resp_{i}"), stored(&"x".repeat(1000)))
                .await;
        }
        store.local.run_pending_tasks().await;
        assert!(store.local.weighted_size() <= u64::from(one) * 3);
        let mut kept = 0;
        for i in 0..20 {
            kept += usize::from(store.get(&tenant, &format!("resp_{i}")).await.is_some());
        }
        assert!(kept <= 3, "{kept} kept");
    }
}
