//! `[cache]` and `[cache.redis]`: the response cache's tiers (in-process and
//! shared). A route's own cache policy is `routes/cache.rs`.

use serde::Deserialize;
use std::time::Duration;

use super::values::{duration_or, expand_env};

/// The response cache's tiers.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// The in-process tier's capacity, in bytes of stored answers.
    pub max_bytes: u64,
    pub redis: Option<RedisConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 256 * 1024 * 1024,
            redis: None,
        }
    }
}

/// The shared cache tier.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// One URL (`redis://`, or `rediss://` for TLS), or a cluster's seed nodes.
    pub urls: Vec<String>,
    pub cluster: bool,
    pub key_prefix: String,
    /// The longest an entry lives in Redis (a route's own TTL may be shorter).
    pub ttl: Duration,
    /// Each Redis call's deadline; past it the tier is skipped.
    pub timeout: Duration,
    /// Values at least this large are LZ4-compressed.
    pub compress_min_bytes: usize,
    /// Consecutive failed calls after which the tier is skipped.
    pub down_after: u32,
    /// How often a skipped tier is probed; the first success brings it back.
    pub retry_after: Duration,
}

/// A `[cache.redis]` table's keys before any is written (no URL: the table
/// must give one).
impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: Vec::new(),
            cluster: false,
            key_prefix: "bedrock-proxy:".into(),
            ttl: Duration::from_secs(24 * 3600),
            timeout: Duration::from_millis(100),
            compress_min_bytes: 2048,
            down_after: 3,
            retry_after: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    max_bytes: Option<u64>,
    redis: Option<RawRedis>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Option<String>,
    urls: Option<Vec<String>>,
    cluster: Option<bool>,
    key_prefix: Option<String>,
    ttl: Option<String>,
    timeout: Option<String>,
    compress_min_bytes: Option<usize>,
    down_after: Option<u32>,
    retry_after: Option<String>,
}

pub(super) fn validate(raw: RawCache, e: &mut Vec<String>) -> CacheConfig {
    let d = CacheConfig::default();
    CacheConfig {
        redis: raw.redis.map(|r| redis(r, e)).or(d.redis),
        max_bytes: raw.max_bytes.unwrap_or(d.max_bytes),
    }
}

fn redis(raw: RawRedis, e: &mut Vec<String>) -> RedisConfig {
    let d = RedisConfig::default();
    let urls: Vec<String> = raw
        .url
        .into_iter()
        .chain(raw.urls.unwrap_or(d.urls))
        .map(|u| expand_env("cache.redis.url", &u, e))
        .collect();
    if urls.is_empty() {
        e.push("cache.redis: give `url` (or `urls` for a cluster)".into());
    }
    for u in &urls {
        if !["redis://", "rediss://", "valkey://", "valkeys://"]
            .iter()
            .any(|scheme| u.starts_with(scheme))
        {
            e.push(format!(
                "cache.redis.url: `{u}` must start with redis:// or rediss://"
            ));
        }
    }
    let down_after = raw.down_after.unwrap_or(d.down_after);
    if down_after == 0 {
        e.push("cache.redis.down_after: must be at least 1".into());
    }
    let retry_after = duration_or("cache.redis.retry_after", raw.retry_after, d.retry_after, e);
    if retry_after.is_zero() {
        e.push("cache.redis.retry_after: must be longer than 0s".into());
    }
    RedisConfig {
        urls,
        down_after,
        retry_after,
        cluster: raw.cluster.unwrap_or(d.cluster),
        key_prefix: raw.key_prefix.unwrap_or(d.key_prefix),
        ttl: duration_or("cache.redis.ttl", raw.ttl, d.ttl, e),
        timeout: duration_or("cache.redis.timeout", raw.timeout, d.timeout, e),
        compress_min_bytes: raw.compress_min_bytes.unwrap_or(d.compress_min_bytes),
    }
}
