//! The prefix registry: which fixed prompt prefixes repeat. A prefix is the
//! SHA-256 of tenant, model, section (`system` or `tools`) and the section's
//! canonical content (cache markers left out); for each, how often it was seen,
//! when first and last, and its estimated tokens (the simulator's estimator, see
//! `bedrock_wire::tokens`).
//!
//! Memory is bounded: at most `max_prefixes` entries, each forgotten after its
//! route's window passes without a sighting. With a Redis tier configured,
//! sightings are counted there (INCR with the window as expiry), so every
//! replica sees the same counts; if Redis is unreachable the local count is used.

use moka::sync::Cache;
use moka::Expiry;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Format;
use crate::config::CachePosition;
use crate::shared::RedisTier;
use crate::support::now_ms;
use bedrock_wire::canonical;

/// What the registry knows about one prefix.
#[derive(Debug)]
pub struct PrefixStats {
    pub tenant: Arc<str>,
    pub model: String,
    pub section: CachePosition,
    /// Estimated tokens of the prefix up to the end of this section.
    pub tokens: u32,
    pub first_seen_ms: u64,
    last_seen_ms: AtomicU64,
    sightings: AtomicU64,
    window: Duration,
}

struct IdleWindow;

impl Expiry<[u8; 32], Arc<PrefixStats>> for IdleWindow {
    fn expire_after_create(
        &self,
        _k: &[u8; 32],
        v: &Arc<PrefixStats>,
        _at: Instant,
    ) -> Option<Duration> {
        Some(v.window)
    }

    /// Every lookup is a sighting, which restarts the window.
    fn expire_after_read(
        &self,
        _k: &[u8; 32],
        v: &Arc<PrefixStats>,
        _at: Instant,
        _left: Option<Duration>,
        _modified: Instant,
    ) -> Option<Duration> {
        Some(v.window)
    }
}

/// The registry.
pub struct PrefixRegistry {
    local: Cache<[u8; 32], Arc<PrefixStats>>,
    redis: Option<Arc<RedisTier>>,
}

/// The canonical digest of one section of a body, cache markers excluded;
/// `None` when the body has no such section.
pub fn section_digest(body: &Value, format: Format, section: CachePosition) -> Option<[u8; 32]> {
    let content = match (format, section) {
        (Format::Converse, CachePosition::System) => body.get("system")?,
        (Format::Converse, CachePosition::Tools) => body.get("toolConfig")?.get("tools")?,
        (Format::Anthropic, CachePosition::System) => body.get("system")?,
        (Format::Anthropic, CachePosition::Tools) => body.get("tools")?,
        (_, CachePosition::Conversation) => return None,
    };
    let mut h = Sha256::new();
    let mut buf = Vec::with_capacity(1024);
    match content {
        Value::Array(items) => {
            for item in items {
                if item.get("cachePoint").is_some() {
                    continue;
                }
                buf.clear();
                match item.get("cache_control") {
                    Some(_) => {
                        let mut copy = item.clone();
                        if let Some(o) = copy.as_object_mut() {
                            o.remove("cache_control");
                        }
                        canonical::write(&copy, &mut buf);
                    }
                    None => canonical::write(item, &mut buf),
                }
                h.update((buf.len() as u64).to_be_bytes());
                h.update(&buf);
            }
        }
        other => {
            canonical::write(other, &mut buf);
            h.update(&buf);
        }
    }
    Some(h.finalize().into())
}

impl PrefixRegistry {
    pub fn new(max_prefixes: u64, redis: Option<Arc<RedisTier>>) -> PrefixRegistry {
        PrefixRegistry {
            local: Cache::builder()
                .max_capacity(max_prefixes)
                .expire_after(IdleWindow)
                .build(),
            redis,
        }
    }

    fn key(tenant: &str, model: &str, section: CachePosition, digest: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            tenant.as_bytes(),
            model.as_bytes(),
            section.name().as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update(digest);
        h.finalize().into()
    }

    /// Records a sighting of a section and returns how often it has been seen
    /// within the window, this one included.
    pub async fn observe(
        &self,
        tenant: &Arc<str>,
        model: &str,
        section: CachePosition,
        digest: &[u8; 32],
        tokens: u32,
        window: Duration,
    ) -> u64 {
        let key = Self::key(tenant, model, section, digest);
        let stats = self.local.get_with(key, || {
            Arc::new(PrefixStats {
                tenant: tenant.clone(),
                model: model.to_owned(),
                section,
                tokens,
                first_seen_ms: now_ms(),
                last_seen_ms: AtomicU64::new(0),
                sightings: AtomicU64::new(0),
                window,
            })
        });
        stats.last_seen_ms.store(now_ms(), Ordering::Relaxed);
        let local = stats.sightings.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = match &self.redis {
            Some(redis) => {
                redis
                    .incr_with_ttl(&format!("prefix:{}", hex::encode(key)), window)
                    .await
            }
            None => None,
        };
        if let Some(n) = shared {
            stats.sightings.store(n.max(local), Ordering::Relaxed);
        }
        shared.unwrap_or(local)
    }

    /// The most-seen prefixes, for `/admin/prefixes`.
    pub fn top(&self, n: usize) -> Vec<Value> {
        self.local.run_pending_tasks();
        let mut all: Vec<Arc<PrefixStats>> = self.local.iter().map(|(_, v)| v).collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.sightings.load(Ordering::Relaxed)));
        all.into_iter()
            .take(n)
            .map(|s| {
                json!({
                    "tenant": &*s.tenant,
                    "model": s.model,
                    "section": s.section.name(),
                    "sightings": s.sightings.load(Ordering::Relaxed),
                    "estimated_tokens": s.tokens,
                    "first_seen_ms": s.first_seen_ms,
                    "last_seen_ms": s.last_seen_ms.load(Ordering::Relaxed),
                    "window_s": s.window.as_secs(),
                })
            })
            .collect()
    }

    /// Prefixes remembered.
    pub fn len(&self) -> u64 {
        self.local.run_pending_tasks();
        self.local.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sightings_count_per_tenant_model_and_content() {
        let r = PrefixRegistry::new(100, None);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let sys = json!({"system": [{"text": "You are a helpful assistant."}]});
        let marked = json!({"system": [{"text": "You are a helpful assistant."}, {"cachePoint": {"type": "default"}}]});
        let d1 = section_digest(&sys, Format::Converse, CachePosition::System).unwrap();
        let d2 = section_digest(&marked, Format::Converse, CachePosition::System).unwrap();
        assert_eq!(d1, d2, "markers do not change the prefix");
        let w = Duration::from_secs(60);
        assert_eq!(
            r.observe(&a, "m", CachePosition::System, &d1, 10, w).await,
            1
        );
        assert_eq!(
            r.observe(&a, "m", CachePosition::System, &d2, 10, w).await,
            2
        );
        assert_eq!(
            r.observe(&b, "m", CachePosition::System, &d1, 10, w).await,
            1,
            "tenants apart"
        );
        assert_eq!(
            r.observe(&a, "other", CachePosition::System, &d1, 10, w)
                .await,
            1,
            "models apart"
        );
        assert_eq!(r.len(), 3);
        assert_eq!(r.top(1)[0]["sightings"], 2);
        assert!(section_digest(&sys, Format::Converse, CachePosition::Tools).is_none());
    }

    #[test]
    fn anthropic_markers_do_not_change_the_prefix() {
        let plain = json!({"system": [{"type": "text", "text": "s"}]});
        let marked = json!({"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]});
        assert_eq!(
            section_digest(&plain, Format::Anthropic, CachePosition::System),
            section_digest(&marked, Format::Anthropic, CachePosition::System)
        );
    }

    #[test]
    fn memory_is_bounded() {
        let r = PrefixRegistry::new(10, None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let t: Arc<str> = Arc::from("t");
        for i in 0..100u8 {
            rt.block_on(r.observe(
                &t,
                "m",
                CachePosition::System,
                &[i; 32],
                1,
                Duration::from_secs(60),
            ));
        }
        assert!(r.len() <= 10, "{}", r.len());
    }
}
