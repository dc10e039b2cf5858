//! The shared tier: one connection to Redis, Valkey or ElastiCache (`redis://`,
//! TLS with `rediss://`, cluster mode with `cluster = true`) that every stage
//! keeping state across replicas uses: the response cache's entries, the
//! prompt-prefix registry's ledgers (sightings, gaps, writes, reads, back-off). Every call has a short timeout;
//! when the server is down or slow, lookups miss and writes are dropped, errors
//! are counted and logged at most once every 10 seconds, and the connection
//! comes back by itself.
//!
//! Every key starts with the configured prefix. Values are bytes,
//! LZ4-compressed above a size; what they mean is the caller's business.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::RedisConfig;

/// Leading byte of stored values.
const RAW: u8 = 0;
const LZ4: u8 = 1;

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The connection to the shared tier, and its error count.
pub struct RedisTier {
    config: RedisConfig,
    conn: arc_swap::ArcSwapOption<Conn>,
    errors: AtomicU64,
    last_warning_ms: AtomicU64,
    started: Instant,
}

async fn connect(config: &RedisConfig) -> redis::RedisResult<Conn> {
    if config.cluster {
        let client = ClusterClient::builder(config.urls.clone())
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(config.timeout)
            .build()?;
        Ok(Conn::Cluster(client.get_async_connection().await?))
    } else {
        let url = config.urls.first().cloned().unwrap_or_default();
        let client = redis::Client::open(url)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        Ok(Conn::Single(
            ConnectionManager::new_with_config(client, manager_config).await?,
        ))
    }
}

impl RedisTier {
    /// Starts connecting in the background (until `stop`); lookups miss until
    /// the first connection is up.
    pub fn start(config: RedisConfig, stop: CancellationToken) -> Arc<RedisTier> {
        let tier = Arc::new(RedisTier {
            config,
            conn: arc_swap::ArcSwapOption::empty(),
            errors: AtomicU64::new(0),
            last_warning_ms: AtomicU64::new(0),
            started: Instant::now(),
        });
        let t = tier.clone();
        tokio::spawn(async move {
            loop {
                let attempt = tokio::select! {
                    r = connect(&t.config) => r,
                    () = stop.cancelled() => return,
                };
                match attempt {
                    Ok(conn) => {
                        tracing::info!(urls = ?t.config.urls, "connected to the shared cache");
                        t.conn.store(Some(Arc::new(conn)));
                        return;
                    }
                    Err(e) => t.failed("connect", &e.to_string()),
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    () = stop.cancelled() => return,
                }
            }
        });
        tier
    }

    /// Counts an error; logs at most one warning every 10 seconds.
    fn failed(&self, operation: &'static str, error: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        crate::metrics::redis_error(operation);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000)
            && self
                .last_warning_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                operation,
                error,
                "shared cache unavailable; serving from memory and upstream"
            );
        }
    }

    /// Errors so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Whether a connection is established.
    pub fn connected(&self) -> bool {
        self.conn.load().is_some()
    }

    /// The Redis key of a response-cache entry: `{prefix}{namespace}:{route}:{hash}`,
    /// so an operator can clear a tenant or a route.
    pub fn key(&self, namespace: &str, route: &str, hash: &str) -> String {
        format!("{}{namespace}:{route}:{hash}", self.config.key_prefix)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: redis::Cmd,
    ) -> Option<T> {
        let conn = self.conn.load_full()?;
        let call = async {
            match &*conn {
                Conn::Single(c) => cmd.query_async::<T>(&mut c.clone()).await,
                Conn::Cluster(c) => cmd.query_async::<T>(&mut c.clone()).await,
            }
        };
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(operation, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(operation, "timed out");
                None
            }
        }
    }

    /// An entry's encoded bytes, or `None` on a miss or any error.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let value: Option<Vec<u8>> = self.run("get", redis::cmd("GET").arg(key).clone()).await?;
        let value = value?;
        match value.split_first() {
            Some((&RAW, rest)) => Some(rest.to_vec()),
            Some((&LZ4, rest)) => lz4_flex::decompress_size_prepended(rest).ok().or_else(|| {
                self.failed("decode", "corrupt compressed value");
                None
            }),
            _ => None,
        }
    }

    /// Stores an entry's encoded bytes for `ttl` (the tier's own TTL caps it).
    pub async fn set(&self, key: &str, encoded: &[u8], ttl: Duration) {
        let ttl = ttl.min(self.config.ttl).max(Duration::from_millis(1));
        let value = if encoded.len() >= self.config.compress_min_bytes {
            let mut v = vec![LZ4];
            v.extend_from_slice(&lz4_flex::compress_prepend_size(encoded));
            v
        } else {
            let mut v = Vec::with_capacity(encoded.len() + 1);
            v.push(RAW);
            v.extend_from_slice(encoded);
            v
        };
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let _: Option<()> = self
            .run(
                "set",
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ms)
                    .clone(),
            )
            .await;
    }

    /// Runs a Lua script on one key (`{prefix}{key}`), atomically; its reply as
    /// field-value pairs, or `None` when Redis is unavailable. The prefix
    /// registry keeps what it learns in hashes this way.
    pub async fn script_pairs(
        &self,
        script: &redis::Script,
        key: &str,
        args: &[String],
    ) -> Option<std::collections::HashMap<String, String>> {
        let conn = self.conn.load_full()?;
        let key = format!("{}{key}", self.config.key_prefix);
        let mut invocation = script.prepare_invoke();
        invocation.key(&key);
        for a in args {
            invocation.arg(a);
        }
        let call = async {
            match &*conn {
                Conn::Single(c) => invocation.invoke_async(&mut c.clone()).await,
                Conn::Cluster(c) => invocation.invoke_async(&mut c.clone()).await,
            }
        };
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed("script", &e.to_string());
                None
            }
            Err(_) => {
                self.failed("script", "timed out");
                None
            }
        }
    }

    /// A hash's fields (`{prefix}{key}`), or `None` when Redis is unavailable.
    pub async fn hash(&self, key: &str) -> Option<std::collections::HashMap<String, String>> {
        let key = format!("{}{key}", self.config.key_prefix);
        self.run("hgetall", redis::cmd("HGETALL").arg(key).clone())
            .await
    }

    /// Deletes every key matching `{prefix}{pattern}` (a SCAN glob); on a cluster,
    /// each key's node is found by its hash slot. Returns how many were removed.
    pub async fn delete_matching(&self, pattern: &str) -> u64 {
        let full = format!("{}{pattern}", self.config.key_prefix);
        let mut removed = 0u64;
        let mut cursor: u64 = 0;
        loop {
            let page: Option<(u64, Vec<String>)> = self
                .run(
                    "scan",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&full)
                        .arg("COUNT")
                        .arg(500)
                        .clone(),
                )
                .await;
            let Some((next, keys)) = page else { break };
            for key in keys {
                let n: Option<u64> = self
                    .run("del", redis::cmd("UNLINK").arg(&key).clone())
                    .await;
                removed += n.unwrap_or(0);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        removed
    }
}
