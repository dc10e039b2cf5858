//! The config file as written: serde structs that reject unknown keys, and
//! `validate`, which checks them together and builds the typed [`Config`].

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::SystemTime;

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    logging: RawLogging,
    #[serde(default)]
    upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    catalog: RawCatalog,
    #[serde(default)]
    prompt_cache: RawPromptCacheGlobal,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPromptCacheGlobal {
    max_prefixes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPromptCache {
    mode: Option<String>,
    min_repeats: Option<u32>,
    window: Option<String>,
    ttl: Option<String>,
    positions: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteCache {
    mode: Option<String>,
    ttl: Option<String>,
    shared: Option<bool>,
    replay: Option<String>,
    stop_reasons: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    auth: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token_sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body_bytes: Option<usize>,
    max_json_depth: Option<usize>,
    max_concurrent_requests: Option<usize>,
    header_read_timeout: Option<String>,
    shutdown_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    format: Option<String>,
    level: Option<String>,
    log_bodies: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    kind: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    profile: Option<String>,
    bearer_token: Option<String>,
    connect_timeout: Option<String>,
    first_byte_timeout: Option<String>,
    idle_timeout: Option<String>,
    total_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    upstream: Option<String>,
    upstream_model: Option<String>,
    #[serde(default)]
    cache: Option<RawRouteCache>,
    #[serde(default)]
    prompt_cache: Option<RawPromptCache>,
    latency: Option<String>,
    #[serde(default)]
    fallback: Vec<RawFallback>,
    fallback_on: Option<Vec<String>>,
    retries: Option<u32>,
    backoff: Option<String>,
    max_backoff: Option<String>,
    deadline: Option<String>,
    first_byte_timeout: Option<String>,
    hedge_after: Option<String>,
    breaker: Option<RawBreaker>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    upstream: Option<String>,
    model: Option<String>,
    latency: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    consecutive_failures: Option<u32>,
    error_rate: Option<f64>,
    window: Option<String>,
    min_requests: Option<u32>,
    open_for: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    tenant: Option<String>,
    key_sha256: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    routes: Option<Vec<String>>,
    requests_per_minute: Option<u32>,
}

/// The largest JSON depth serde_json can parse.
const SERDE_DEPTH_LIMIT: usize = 127;

fn listen_addr(
    key: &str,
    value: Option<&str>,
    default: &str,
    errors: &mut Vec<String>,
) -> SocketAddr {
    let text = value.unwrap_or(default);
    text.parse().unwrap_or_else(|_| {
        errors.push(format!(
            "{key}: `{text}` is not an address like 127.0.0.1:8080"
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

impl RawConfig {
    /// Checks everything, collecting every problem, and builds the typed config.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let e = &mut errors;

        let listen = listen_addr(
            "server.listen",
            self.server.listen.as_deref(),
            "127.0.0.1:8080",
            e,
        );
        let auth = match self.server.auth.as_deref().unwrap_or("keys") {
            "keys" => AuthMode::Keys,
            "none" => AuthMode::None,
            other => {
                e.push(format!("server.auth: `{other}` is not one of keys, none"));
                AuthMode::Keys
            }
        };
        if auth == AuthMode::None && !listen.ip().is_loopback() {
            e.push(format!(
                "server.auth: `none` is only allowed on a loopback address, not {listen}; configure [[keys]] instead"
            ));
        }
        let tls = match (self.server.tls_cert, self.server.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: expand_env("server.tls_cert", &cert, e).into(),
                key: expand_env("server.tls_key", &key, e).into(),
            }),
            (None, None) => None,
            _ => {
                e.push("server.tls_cert and server.tls_key go together".into());
                None
            }
        };
        let token_sha256 = self.admin.token_sha256.map(|hash| {
            let hash = expand_env("admin.token_sha256", &hash, e);
            let mut sha256 = [0u8; 32];
            if hex::decode_to_slice(hash.trim(), &mut sha256).is_err() {
                e.push(
                    "admin.token_sha256: must be 64 hex characters (run `bedrock-proxy hash-key`)"
                        .into(),
                );
            }
            sha256
        });
        let admin = AdminConfig {
            listen: listen_addr(
                "admin.listen",
                self.admin.listen.as_deref(),
                "127.0.0.1:9090",
                e,
            ),
            token_sha256,
        };

        let l = self.limits;
        let max_json_depth = l.max_json_depth.unwrap_or(64);
        if max_json_depth == 0 || max_json_depth > SERDE_DEPTH_LIMIT {
            e.push(format!(
                "limits.max_json_depth: must be between 1 and {SERDE_DEPTH_LIMIT}"
            ));
        }
        let limits = Limits {
            max_body_bytes: l.max_body_bytes.unwrap_or(25_000_000),
            max_json_depth,
            max_concurrent_requests: l.max_concurrent_requests.unwrap_or(1024).max(1),
            header_read_timeout: parse_duration(
                "limits.header_read_timeout",
                l.header_read_timeout.as_deref().unwrap_or("10s"),
                e,
            ),
            shutdown_grace: parse_duration(
                "limits.shutdown_grace",
                l.shutdown_grace.as_deref().unwrap_or("30s"),
                e,
            ),
        };

        let logging = LoggingConfig {
            format: match self.logging.format.as_deref().unwrap_or("text") {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    e.push(format!(
                        "logging.format: `{other}` is not one of text, json"
                    ));
                    LogFormat::Text
                }
            },
            level: self.logging.level.unwrap_or_else(|| "info".into()),
            log_bodies: self.logging.log_bodies.unwrap_or(false),
        };

        let mut upstreams = BTreeMap::new();
        if self.upstreams.is_empty() {
            e.push("upstreams: at least one [upstreams.NAME] table is needed".into());
        }
        for (name, u) in self.upstreams {
            let key = format!("upstreams.{name}");
            let kind = match u.kind.as_deref().unwrap_or("bedrock") {
                "bedrock" => UpstreamKind::Bedrock,
                "simulator" => UpstreamKind::Simulator,
                other => {
                    e.push(format!(
                        "{key}.kind: `{other}` is not one of bedrock, simulator"
                    ));
                    UpstreamKind::Bedrock
                }
            };
            let endpoint = u
                .endpoint
                .map(|v| expand_env(&format!("{key}.endpoint"), &v, e));
            if let Some(ep) = &endpoint {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                    e.push(format!(
                        "{key}.endpoint: `{ep}` must start with http:// or https://"
                    ));
                }
            }
            let bearer_token = u
                .bearer_token
                .map(|v| expand_env(&format!("{key}.bearer_token"), &v, e))
                .filter(|t| !t.is_empty());
            let d = |field: &str, v: Option<String>, default: &str, e: &mut Vec<String>| {
                parse_duration(
                    &format!("{key}.{field}"),
                    v.as_deref().unwrap_or(default),
                    e,
                )
            };
            let timeouts = Timeouts {
                connect: d("connect_timeout", u.connect_timeout, "3s", e),
                first_byte: d("first_byte_timeout", u.first_byte_timeout, "60s", e),
                idle: d("idle_timeout", u.idle_timeout, "30s", e),
                total: d("total_timeout", u.total_timeout, "10m", e),
            };
            upstreams.insert(
                name.clone(),
                UpstreamConfig {
                    name,
                    kind,
                    region: u.region.unwrap_or_else(|| "us-east-2".into()),
                    endpoint,
                    profile: u.profile,
                    bearer_token,
                    timeouts,
                },
            );
        }

        let mut routes = Vec::new();
        let mut claimed: HashMap<String, String> = HashMap::new();
        let mut catch_all_route: Option<String> = None;
        if self.routes.is_empty() {
            e.push("routes: at least one [[routes]] entry is needed".into());
        }
        for (i, mut r) in self.routes.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            let resilience = route_resilience(&key, &mut r, &upstreams, e);
            let name = r.name.unwrap_or_default();
            if !is_name(&name) {
                e.push(format!(
                    "{key}.name: `{name}` must be non-empty letters, digits, - _ . :"
                ));
            }
            let upstream = r.upstream.unwrap_or_default();
            if !upstreams.contains_key(&upstream) {
                e.push(format!("{key}.upstream: no upstream named `{upstream}`"));
            }
            if r.aliases.is_empty() && r.models.is_empty() {
                e.push(format!("{key}: give at least one of aliases, models"));
            }
            let catch_all = r.models.iter().any(|m| m == "*");
            if catch_all {
                if let Some(other) = &catch_all_route {
                    e.push(format!(
                        "{key}.models: `*` is already claimed by route {other}"
                    ));
                }
                catch_all_route = Some(name.clone());
            }
            for id in r
                .aliases
                .iter()
                .chain(r.models.iter().filter(|m| *m != "*"))
            {
                if let Some(other) = claimed.insert(id.clone(), name.clone()) {
                    e.push(format!("{key}: `{id}` is already claimed by route {other}"));
                }
            }
            let cache = route_cache(&key, r.cache, e);
            let prompt_cache = route_prompt_cache(&key, r.prompt_cache, e);
            routes.push(RouteConfig {
                name,
                aliases: r.aliases,
                models: r.models.into_iter().filter(|m| m != "*").collect(),
                catch_all,
                upstream,
                upstream_model: r.upstream_model,
                cache,
                prompt_cache,
                resilience,
            });
        }
        let mut names = HashSet::new();
        for r in &routes {
            if !names.insert(r.name.clone()) {
                e.push(format!("routes: the name `{}` is used twice", r.name));
            }
        }

        let mut keys = Vec::new();
        let mut seen_credentials = HashSet::new();
        for (i, k) in self.keys.into_iter().enumerate() {
            let key = format!("keys[{i}]");
            let tenant = k.tenant.unwrap_or_default();
            if !is_name(&tenant) {
                e.push(format!(
                    "{key}.tenant: `{tenant}` must be non-empty letters, digits, - _ . :"
                ));
            }
            let credential = match (k.key_sha256, k.access_key_id, k.secret_access_key) {
                (Some(hash), None, None) => {
                    let hash = expand_env(&format!("{key}.key_sha256"), &hash, e);
                    let mut sha256 = [0u8; 32];
                    if hex::decode_to_slice(hash.trim(), &mut sha256).is_err() {
                        e.push(format!(
                            "{key}.key_sha256: must be 64 hex characters (run `bedrock-proxy hash-key`)"
                        ));
                    }
                    KeyCredential::ApiKey { sha256 }
                }
                (None, Some(id), Some(secret)) => {
                    let secret = expand_env(&format!("{key}.secret_access_key"), &secret, e);
                    if secret.is_empty() {
                        e.push(format!("{key}.secret_access_key: must not be empty"));
                    }
                    KeyCredential::AccessKey { id, secret }
                }
                (None, Some(_), None) => {
                    e.push(format!("{key}: access_key_id needs secret_access_key"));
                    continue;
                }
                _ => {
                    e.push(format!(
                        "{key}: give either key_sha256, or access_key_id with secret_access_key"
                    ));
                    continue;
                }
            };
            let id = match &credential {
                KeyCredential::ApiKey { sha256 } => hex::encode(sha256),
                KeyCredential::AccessKey { id, .. } => id.clone(),
            };
            if !seen_credentials.insert(id) {
                e.push(format!("{key}: the same credential is configured twice"));
            }
            let route_names = k.routes.unwrap_or_else(|| vec!["*".into()]);
            let routes_access = if route_names.iter().any(|r| r == "*") {
                RouteAccess::All
            } else {
                for r in &route_names {
                    if !names.contains(r) {
                        e.push(format!("{key}.routes: no route named `{r}`"));
                    }
                }
                RouteAccess::Only(route_names.into_iter().collect())
            };
            if k.requests_per_minute == Some(0) {
                e.push(format!("{key}.requests_per_minute: must be at least 1"));
            }
            keys.push(KeyConfig {
                tenant,
                credential,
                routes: routes_access,
                requests_per_minute: k.requests_per_minute,
            });
        }
        if auth == AuthMode::Keys && keys.is_empty() {
            e.push("keys: server.auth is `keys` but no [[keys]] entry is configured; nobody could call the proxy".into());
        }

        let cache = cache_config(self.cache, e);
        let catalog_file = self
            .catalog
            .file
            .map(|f| std::path::PathBuf::from(expand_env("catalog.file", &f, e)));

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Config {
            server: ServerConfig { listen, auth, tls },
            admin,
            limits,
            logging,
            upstreams,
            routes,
            keys,
            cache,
            prompt_cache: PromptCacheGlobal {
                max_prefixes: self.prompt_cache.max_prefixes.unwrap_or(100_000).max(1),
            },
            catalog_file,
            hash: String::new(),
            loaded_at: SystemTime::now(),
        })
    }
}

fn route_cache(
    route_key: &str,
    raw: Option<RawRouteCache>,
    e: &mut Vec<String>,
) -> RouteCacheConfig {
    let Some(raw) = raw else {
        return RouteCacheConfig::default();
    };
    let key = format!("{route_key}.cache");
    let defaults = RouteCacheConfig::default();
    let mode = match raw.mode.as_deref().unwrap_or("deterministic") {
        "off" => CacheMode::Off,
        "deterministic" => CacheMode::Deterministic,
        "always" => CacheMode::Always,
        other => {
            e.push(format!(
                "{key}.mode: `{other}` is not one of off, deterministic, always"
            ));
            CacheMode::Off
        }
    };
    let replay = match raw.replay.as_deref().unwrap_or("instant") {
        "instant" => Replay::Instant,
        "paced" => Replay::Paced,
        other => {
            e.push(format!(
                "{key}.replay: `{other}` is not one of instant, paced"
            ));
            Replay::Instant
        }
    };
    let stop_reasons = raw.stop_reasons.unwrap_or(defaults.stop_reasons);
    for reason in &stop_reasons {
        if NEVER_CACHED_STOP_REASONS.contains(&reason.as_str()) {
            e.push(format!(
                "{key}.stop_reasons: `{reason}` answers are never cached"
            ));
        }
    }
    let ttl = match raw.ttl {
        Some(t) => parse_duration(&format!("{key}.ttl"), &t, e),
        None => defaults.ttl,
    };
    if ttl.is_zero() {
        e.push(format!("{key}.ttl: must be more than 0"));
    }
    RouteCacheConfig {
        mode,
        ttl,
        shared: raw.shared.unwrap_or(false),
        replay,
        stop_reasons,
    }
}

fn cache_config(raw: RawCache, e: &mut Vec<String>) -> CacheConfig {
    let redis = raw.redis.map(|r| {
        let mut urls: Vec<String> = r.urls.unwrap_or_default();
        if let Some(u) = r.url {
            urls.insert(0, u);
        }
        let urls: Vec<String> = urls
            .iter()
            .map(|u| expand_env("cache.redis.url", u, e))
            .collect();
        if urls.is_empty() {
            e.push("cache.redis: give `url` (or `urls` for a cluster)".into());
        }
        for u in &urls {
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("valkey://")
                || u.starts_with("valkeys://"))
            {
                e.push(format!(
                    "cache.redis.url: `{u}` must start with redis:// or rediss://"
                ));
            }
        }
        RedisConfig {
            urls,
            cluster: r.cluster.unwrap_or(false),
            key_prefix: r.key_prefix.unwrap_or_else(|| "bedrock-proxy:".into()),
            ttl: parse_duration("cache.redis.ttl", r.ttl.as_deref().unwrap_or("24h"), e),
            timeout: parse_duration(
                "cache.redis.timeout",
                r.timeout.as_deref().unwrap_or("100ms"),
                e,
            ),
            compress_min_bytes: r.compress_min_bytes.unwrap_or(2048),
        }
    });
    CacheConfig {
        max_bytes: raw.max_bytes.unwrap_or(256 * 1024 * 1024),
        redis,
    }
}

fn route_prompt_cache(
    route_key: &str,
    raw: Option<RawPromptCache>,
    e: &mut Vec<String>,
) -> PromptCacheConfig {
    let Some(raw) = raw else {
        return PromptCacheConfig::default();
    };
    let key = format!("{route_key}.prompt_cache");
    let defaults = PromptCacheConfig::default();
    let mode = match raw.mode.as_deref().unwrap_or("auto") {
        "off" => PromptCacheMode::Off,
        "auto" => PromptCacheMode::Auto,
        "always" => PromptCacheMode::Always,
        other => {
            e.push(format!(
                "{key}.mode: `{other}` is not one of off, auto, always"
            ));
            PromptCacheMode::Off
        }
    };
    let ttl_1h = match raw.ttl.as_deref().unwrap_or("5m") {
        "5m" => false,
        "1h" => true,
        other => {
            e.push(format!("{key}.ttl: `{other}` is not one of 5m, 1h"));
            false
        }
    };
    let positions = match raw.positions {
        None => defaults.positions,
        Some(list) => list
            .iter()
            .filter_map(|p| match p.as_str() {
                "tools" => Some(CachePosition::Tools),
                "system" => Some(CachePosition::System),
                "conversation" => Some(CachePosition::Conversation),
                other => {
                    e.push(format!(
                        "{key}.positions: `{other}` is not one of tools, system, conversation"
                    ));
                    None
                }
            })
            .collect(),
    };
    let min_repeats = raw.min_repeats.unwrap_or(defaults.min_repeats);
    if min_repeats == 0 {
        e.push(format!("{key}.min_repeats: must be at least 1"));
    }
    PromptCacheConfig {
        mode,
        min_repeats,
        window: match raw.window {
            Some(w) => parse_duration(&format!("{key}.window"), &w, e),
            None => defaults.window,
        },
        ttl_1h,
        positions,
    }
}

fn latency_policy(key: &str, value: &str, e: &mut Vec<String>) -> LatencyPolicy {
    match value {
        "optimized" => LatencyPolicy::Optimized,
        "standard" => LatencyPolicy::Standard,
        "client" => LatencyPolicy::Client,
        other => {
            e.push(format!(
                "{key}: `{other}` is not one of optimized, standard, client"
            ));
            LatencyPolicy::Client
        }
    }
}

fn route_resilience(
    route_key: &str,
    r: &mut RawRoute,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    e: &mut Vec<String>,
) -> ResilienceConfig {
    let defaults = ResilienceConfig::default();
    let latency = match r.latency.take() {
        Some(v) => latency_policy(&format!("{route_key}.latency"), &v, e),
        None => defaults.latency,
    };
    let fallback = std::mem::take(&mut r.fallback)
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let key = format!("{route_key}.fallback[{i}]");
            if f.upstream.is_none() && f.model.is_none() && f.latency.is_none() {
                e.push(format!(
                    "{key}: give at least one of upstream, model, latency"
                ));
            }
            if let Some(u) = &f.upstream {
                if !upstreams.contains_key(u) {
                    e.push(format!("{key}.upstream: no upstream named `{u}`"));
                }
            }
            FallbackTarget {
                upstream: f.upstream,
                model: f.model,
                latency: f
                    .latency
                    .map(|l| latency_policy(&format!("{key}.latency"), &l, e)),
            }
        })
        .collect();
    let fallback_on = match r.fallback_on.take() {
        Some(list) => {
            let allowed: Vec<&str> = crate::error::ErrorKind::ALL
                .into_iter()
                .filter(|k| k.can_fall_back())
                .map(|k| k.label())
                .collect();
            let mut kinds = Vec::with_capacity(list.len());
            for label in &list {
                match crate::error::ErrorKind::parse(label).filter(|k| k.can_fall_back()) {
                    Some(kind) => kinds.push(kind),
                    None => e.push(format!(
                        "{route_key}.fallback_on: `{label}` is not one of {}",
                        allowed.join(", ")
                    )),
                }
            }
            kinds
        }
        None => defaults.fallback_on,
    };
    let duration = |field: &str, v: Option<String>, e: &mut Vec<String>| {
        v.map(|v| parse_duration(&format!("{route_key}.{field}"), &v, e))
    };
    let b = r.breaker.take().unwrap_or_default();
    let bd = BreakerConfig::default();
    let breaker = BreakerConfig {
        consecutive_failures: b
            .consecutive_failures
            .unwrap_or(bd.consecutive_failures)
            .max(1),
        error_rate: b.error_rate.unwrap_or(bd.error_rate),
        window: duration("breaker.window", b.window, e).unwrap_or(bd.window),
        min_requests: b.min_requests.unwrap_or(bd.min_requests).max(1),
        open_for: duration("breaker.open_for", b.open_for, e).unwrap_or(bd.open_for),
    };
    if !(0.0..=1.0).contains(&breaker.error_rate) || breaker.error_rate == 0.0 {
        e.push(format!("{route_key}.breaker.error_rate: must be in (0, 1]"));
    }
    ResilienceConfig {
        latency,
        fallback,
        fallback_on,
        retries: r.retries.take().unwrap_or(defaults.retries),
        backoff: duration("backoff", r.backoff.take(), e).unwrap_or(defaults.backoff),
        max_backoff: duration("max_backoff", r.max_backoff.take(), e)
            .unwrap_or(defaults.max_backoff),
        deadline: duration("deadline", r.deadline.take(), e),
        first_byte_timeout: duration("first_byte_timeout", r.first_byte_timeout.take(), e),
        hedge_after: duration("hedge_after", r.hedge_after.take(), e),
        breaker,
    }
}
