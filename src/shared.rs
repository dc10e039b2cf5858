//! The shared tier: one connection to Redis, Valkey or ElastiCache (`redis://`,
//! TLS with `rediss://`, cluster mode with `cluster = true`) that every stage
//! keeping state across replicas uses: the response cache's entries, the
//! prompt-prefix registry's ledgers (sightings, gaps, writes, reads,
//! back-off), the limits' counters (Lua scripts, [`RedisTier::eval`]). Every
//! call has a short timeout;
//! when the server is down or slow, lookups miss and writes are dropped, errors
//! are counted and logged at most once every 10 seconds, and the connection
//! comes back by itself.
//!
//! Fast-fail: after `down_after` consecutive failed calls (errors or
//! timeouts: a server that accepts connections and never answers costs each
//! call the whole timeout) the tier is skipped, so lookups miss at once
//! instead of waiting; a background probe (`PING`, every `retry_after`) brings
//! it back on its first success. `bedrock_proxy_redis_up` says which.
//!
//! Every key starts with the configured prefix. Values are bytes,
//! LZ4-compressed above a size; what they mean is the caller's business.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
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

/// The connection to the shared tier, its error count and its health.
pub struct RedisTier {
    config: RedisConfig,
    conn: arc_swap::ArcSwapOption<Conn>,
    errors: AtomicU64,
    last_warning_ms: AtomicU64,
    started: Instant,
    /// Failed calls in a row.
    failures: AtomicU32,
    /// Skipped until a probe succeeds.
    down: AtomicBool,
    /// Itself, for the probe task it starts when it goes down.
    me: Weak<RedisTier>,
    stop: CancellationToken,
    /// The runtime the tier started on (the main one): its probe and the
    /// writes requests leave behind run there, not on the connection runtime
    /// of the request that started them, which stops first at shutdown.
    home: tokio::runtime::Handle,
    /// Writes requests left behind, waited for at shutdown.
    detached: tokio_util::task::TaskTracker,
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
        let tier = Arc::new_cyclic(|me| RedisTier {
            config,
            conn: arc_swap::ArcSwapOption::empty(),
            errors: AtomicU64::new(0),
            last_warning_ms: AtomicU64::new(0),
            started: Instant::now(),
            failures: AtomicU32::new(0),
            down: AtomicBool::new(false),
            me: me.clone(),
            stop: stop.clone(),
            home: tokio::runtime::Handle::current(),
            detached: tokio_util::task::TaskTracker::new(),
        });
        crate::metrics::redis_up(false);
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
                        if !t.down.load(Ordering::Acquire) {
                            crate::metrics::redis_up(true);
                        }
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

    /// Runs `write` (a call a request leaves behind: a cache store, a limits
    /// settlement) in the background, on the tier's own runtime; shutdown
    /// waits for it ([`RedisTier::finish_detached`]).
    pub fn spawn(&self, write: impl std::future::Future<Output = ()> + Send + 'static) {
        self.home.spawn(self.detached.track_future(write));
    }

    /// Waits, at most `within`, for the writes [`RedisTier::spawn`] started.
    pub async fn finish_detached(&self, within: Duration) {
        self.detached.close();
        if tokio::time::timeout(within, self.detached.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.detached.len(),
                "shutdown: shared-cache writes still running were dropped"
            );
        }
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

    /// Whether the tier is being skipped after failures.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// A call succeeded: the failure streak ends.
    fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A call failed (error or timeout): counted, and after `down_after` in a
    /// row the tier goes down and a probe starts.
    fn call_failed(&self, operation: &'static str, error: &str) {
        self.failed(operation, error);
        let streak = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if streak >= self.config.down_after && !self.down.swap(true, Ordering::AcqRel) {
            crate::metrics::redis_up(false);
            tracing::warn!(
                failures = streak,
                retry_after = ?self.config.retry_after,
                "shared cache failing; skipping it until a probe succeeds"
            );
            if let Some(me) = self.me.upgrade() {
                self.home.spawn(me.probe());
            }
        }
    }

    /// Pings a down tier every `retry_after` until it answers, then brings it back.
    async fn probe(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.config.retry_after) => {}
                () = self.stop.cancelled() => return,
            }
            let Some(conn) = self.conn.load_full() else {
                continue;
            };
            let ping = redis::cmd("PING");
            let call = async {
                match &*conn {
                    Conn::Single(c) => ping.query_async::<String>(&mut c.clone()).await,
                    Conn::Cluster(c) => ping.query_async::<String>(&mut c.clone()).await,
                }
            };
            match tokio::time::timeout(self.config.timeout, call).await {
                Ok(Ok(_)) => {
                    self.failures.store(0, Ordering::Release);
                    self.down.store(false, Ordering::Release);
                    crate::metrics::redis_up(true);
                    tracing::info!("shared cache answering again; back in use");
                    return;
                }
                Ok(Err(e)) => self.failed("probe", &e.to_string()),
                Err(_) => self.failed("probe", "timed out"),
            }
        }
    }

    /// The connection to call, or `None` (counted as skipped) while the tier
    /// is down or not yet connected.
    fn usable(&self, operation: &'static str) -> Option<Arc<Conn>> {
        if self.down.load(Ordering::Acquire) {
            crate::metrics::redis_skipped(operation);
            return None;
        }
        self.conn.load_full()
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
        let conn = self.usable(operation)?;
        let call = async {
            match &*conn {
                Conn::Single(c) => cmd.query_async::<T>(&mut c.clone()).await,
                Conn::Cluster(c) => cmd.query_async::<T>(&mut c.clone()).await,
            }
        };
        self.finish(operation, call).await
    }

    /// Waits for a call within the timeout, recording how it went.
    async fn finish<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Some(v)
            }
            Ok(Err(e)) => {
                self.call_failed(operation, &e.to_string());
                None
            }
            Err(_) => {
                self.call_failed(operation, "timed out");
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
        self.set_for(key, encoded, ttl.min(self.config.ttl)).await;
    }

    /// Stores an entry's encoded bytes for exactly `ttl`, past the tier's own
    /// TTL: stored Responses keep their own (`[responses] ttl`).
    pub async fn set_for(&self, key: &str, encoded: &[u8], ttl: Duration) {
        let ttl = ttl.max(Duration::from_millis(1));
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
        let conn = self.usable("script")?;
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
        self.finish("script", call).await
    }

    /// A hash's fields (`{prefix}{key}`), or `None` when Redis is unavailable.
    pub async fn hash(&self, key: &str) -> Option<std::collections::HashMap<String, String>> {
        let key = format!("{}{key}", self.config.key_prefix);
        self.run("hgetall", redis::cmd("HGETALL").arg(key).clone())
            .await
    }

    /// Deletes every key matching `{prefix}{pattern}` (a SCAN glob; escape
    /// what must match literally with [`glob_escape`]). On a cluster every
    /// master is scanned, and each key is deleted on its own node. Returns how
    /// many were removed.
    pub async fn delete_matching(&self, pattern: &str) -> u64 {
        let full = format!("{}{pattern}", glob_escape(&self.config.key_prefix));
        let scan = |cursor: u64| {
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&full)
                .arg("COUNT")
                .arg(500)
                .clone()
        };
        let Some(conn) = self.usable("scan") else {
            return 0;
        };
        // Each node's (address, cursor) still to scan; `None`: the single server.
        let mut pending: Vec<(Option<String>, u64)> = match &*conn {
            Conn::Single(_) => vec![(None, 0)],
            Conn::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let first = self
                    .finish("scan", c.clone().route_command(scan(0), routing))
                    .await;
                let Some(redis::Value::Map(per_node)) = first else {
                    return 0;
                };
                let mut pending = Vec::new();
                let mut removed = 0;
                for (node, page) in per_node {
                    let Ok(node) = redis::from_redis_value::<String>(node) else {
                        continue;
                    };
                    let Ok((next, keys)) = redis::from_redis_value::<(u64, Vec<String>)>(page)
                    else {
                        self.failed("scan", "a node's SCAN reply is not a page");
                        continue;
                    };
                    removed += self.unlink(&keys).await;
                    if next != 0 {
                        pending.push((Some(node), next));
                    }
                }
                return removed + self.scan_nodes(c, pending, &full).await;
            }
        };
        let mut removed = 0;
        while let Some((_, cursor)) = pending.pop() {
            let page: Option<(u64, Vec<String>)> = self.run("scan", scan(cursor)).await;
            let Some((next, keys)) = page else { break };
            removed += self.unlink(&keys).await;
            if next != 0 {
                pending.push((None, next));
            }
        }
        removed
    }

    /// Scans cluster nodes (`host:port`, cursor) to their end, deleting what matches.
    async fn scan_nodes(
        &self,
        cluster: &ClusterConnection,
        mut pending: Vec<(Option<String>, u64)>,
        pattern: &str,
    ) -> u64 {
        let mut removed = 0;
        while let Some((Some(node), cursor)) = pending.pop() {
            let Some((host, port)) = node
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            else {
                self.failed("scan", "a cluster node without a host:port address");
                continue;
            };
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            let cmd = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .clone();
            let page = self
                .finish("scan", cluster.clone().route_command(cmd, routing))
                .await
                .and_then(|v| redis::from_redis_value::<(u64, Vec<String>)>(v).ok());
            let Some((next, keys)) = page else { continue };
            removed += self.unlink(&keys).await;
            if next != 0 {
                pending.push((Some(node), next));
            }
        }
        removed
    }

    /// Deletes one key (already prefixed); whether it was there. `None` when
    /// Redis is unavailable.
    pub async fn delete(&self, key: &str) -> Option<bool> {
        let n: u64 = self
            .run("del", redis::cmd("UNLINK").arg(key).clone())
            .await?;
        Some(n > 0)
    }

    /// Unlinks keys one by one (on a cluster each goes to its own slot's node).
    async fn unlink(&self, keys: &[String]) -> u64 {
        let mut removed = 0;
        for key in keys {
            let n: Option<u64> = self.run("del", redis::cmd("UNLINK").arg(key).clone()).await;
            removed += n.unwrap_or(0);
        }
        removed
    }

    /// `key` under the configured prefix.
    pub fn prefixed(&self, key: &str) -> String {
        format!("{}{key}", self.config.key_prefix)
    }

    /// Runs a Lua script (EVALSHA, loading it when the server does not know it
    /// yet) over `keys` (already prefixed) with `args`; `None` when Redis is
    /// unavailable or the call fails (counted as `operation`).
    pub async fn eval<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> Option<T> {
        let conn = self.conn.load_full()?;
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a);
        }
        let call = async {
            match &*conn {
                Conn::Single(c) => invocation.invoke_async::<T>(&mut c.clone()).await,
                Conn::Cluster(c) => invocation.invoke_async::<T>(&mut c.clone()).await,
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
}

/// `text` with the SCAN glob's special characters escaped, to match literally.
pub fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[tokio::test]
    async fn shutdown_waits_for_the_writes_requests_left_behind_and_runs_them_at_home() {
        let stop = CancellationToken::new();
        let tier = RedisTier::start(
            RedisConfig {
                // Never connects; the writes below do not call Redis.
                urls: vec!["redis://127.0.0.1:1".into()],
                ..RedisConfig::default()
            },
            stop.clone(),
        );
        let home = std::thread::current().id();
        let done = Arc::new(AtomicBool::new(false));
        // Left behind by a request on a connection runtime, which then stops.
        let worker = bedrock_wire::workers::Workers::start(1, "test-request").unwrap();
        let (t, d) = (tier.clone(), done.clone());
        let (ran_on, ran) = tokio::sync::oneshot::channel();
        worker.next().spawn(async move {
            t.spawn(async move {
                let _ = ran_on.send(std::thread::current().id());
                tokio::time::sleep(Duration::from_millis(200)).await;
                d.store(true, Ordering::SeqCst);
            });
        });
        assert_eq!(
            ran.await.unwrap(),
            home,
            "the write runs on the tier's runtime"
        );
        drop(worker);
        tier.finish_detached(Duration::from_secs(5)).await;
        assert!(done.load(Ordering::SeqCst), "shutdown waited for the write");
        stop.cancel();
    }
}
