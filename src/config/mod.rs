//! The proxy's configuration: one TOML file, parsed into raw serde structs that
//! reject unknown keys, then validated into the typed [`Config`] the rest of the
//! proxy uses. Parsing takes a `&str`; [`Config::load`] is the thin file wrapper.
//! Every error names the key it is about (`routes[2].upstream: ...`).
//!
//! Secrets come from the environment: any string value may be written `${VAR}`
//! (or `${VAR:-default}`) and is expanded at load time.

mod raw;

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

pub use raw::RawConfig;

use crate::error::ErrorKind;

/// Why a config could not be used: every problem found, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// Who may call the API port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every request carries a configured API key or a proxy-issued SigV4 key.
    Keys,
    /// Anyone on the listener may call; only allowed on a loopback address.
    None,
}

/// The API listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub auth: AuthMode,
    /// PEM certificate chain and key: serve HTTPS (boto3 sends Bedrock API keys
    /// only over HTTPS).
    pub tls: Option<TlsFiles>,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// The admin listener (metrics, health, admin API).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// SHA-256 of the bearer token `/admin/*` (and `/_sim/*`) require. Without
    /// one they are served only on a loopback admin listener.
    pub token_sha256: Option<[u8; 32]>,
}

/// Protective limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_concurrent_requests: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
    /// Log prompts and completions (off by default: they are customer data).
    pub log_bodies: bool,
}

/// Which service an upstream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// Amazon Bedrock, signed with AWS credentials or a Bedrock API key.
    Bedrock,
    /// bedrock-sim: at `endpoint`, or embedded in the proxy when none is given.
    Simulator,
}

/// Deadlines for calls to one upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the response headers (and, for streams, the first event).
    pub first_byte: Duration,
    /// Longest silence between two events of a stream.
    pub idle: Duration,
    /// The whole call.
    pub total: Duration,
}

/// One upstream Bedrock endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub kind: UpstreamKind,
    pub region: String,
    /// `https://bedrock-runtime.{region}.amazonaws.com` unless overridden.
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    pub bearer_token: Option<String>,
    pub timeouts: Timeouts,
}

impl UpstreamConfig {
    /// The endpoint to call; `None` for the embedded simulator.
    pub fn endpoint_url(&self) -> Option<String> {
        match (&self.endpoint, self.kind) {
            (Some(e), _) => Some(e.trim_end_matches('/').to_owned()),
            (None, UpstreamKind::Bedrock) => {
                Some(bedrock_wire::client::bedrock_runtime_endpoint(&self.region))
            }
            (None, UpstreamKind::Simulator) => None,
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
}

/// The response cache's tiers.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// The in-process tier's capacity, in bytes of stored answers.
    pub max_bytes: u64,
    pub redis: Option<RedisConfig>,
}

/// When a route's answers are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Off,
    /// Only requests with temperature explicitly 0.
    Deterministic,
    /// Every request (the operator accepts reuse of sampled answers).
    Always,
}

/// How a cached stream is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// All events at once.
    Instant,
    /// With the original gaps between events.
    Paced,
}

/// A route's response-cache policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCacheConfig {
    pub mode: CacheMode,
    pub ttl: Duration,
    /// Share entries across tenants (by default each tenant has its own).
    pub shared: bool,
    pub replay: Replay,
    /// Stop reasons whose answers are stored.
    pub stop_reasons: Vec<String>,
}

impl Default for RouteCacheConfig {
    fn default() -> Self {
        RouteCacheConfig {
            mode: CacheMode::Off,
            ttl: Duration::from_secs(3600),
            shared: false,
            replay: Replay::Instant,
            stop_reasons: DEFAULT_CACHED_STOP_REASONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// Answers that ended like this are complete and worth reusing.
pub const DEFAULT_CACHED_STOP_REASONS: &[&str] = &[
    "end_turn",
    "stop_sequence",
    "max_tokens",
    "tool_use",
    "stop",
    "length",
];

/// Stop reasons never cached, whatever a route says: a guardrail or a content
/// filter stepped in, so the answer is not the model's.
pub const NEVER_CACHED_STOP_REASONS: &[&str] = &["guardrail_intervened", "content_filtered"];

/// Where the prompt-cache planner may put cachePoint blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CachePosition {
    /// After the tool definitions.
    Tools,
    /// After the system prompt.
    System,
    /// At the end of a multi-turn conversation, so the next turn reads it.
    Conversation,
}

impl CachePosition {
    pub fn label(self) -> &'static str {
        match self {
            CachePosition::Tools => "tools",
            CachePosition::System => "system",
            CachePosition::Conversation => "conversation",
        }
    }
}

/// When the planner injects cache points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptCacheMode {
    Off,
    /// Where expected reuse repays the cache-write premium.
    Auto,
    /// Wherever the prefix reaches the model's minimum.
    Always,
}

/// A route's prompt-cache policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptCacheConfig {
    pub mode: PromptCacheMode,
    /// Sightings of a prefix within `window` before `auto` caches it (when
    /// writing costs more than reading it back saves on one use).
    pub min_repeats: u32,
    /// A prefix not seen for this long is forgotten.
    pub window: Duration,
    /// Request the 1-hour cache TTL (where the model offers it) instead of 5 minutes.
    pub ttl_1h: bool,
    pub positions: Vec<CachePosition>,
}

impl Default for PromptCacheConfig {
    fn default() -> Self {
        PromptCacheConfig {
            mode: PromptCacheMode::Off,
            min_repeats: 2,
            window: Duration::from_secs(600),
            ttl_1h: false,
            positions: vec![
                CachePosition::Tools,
                CachePosition::System,
                CachePosition::Conversation,
            ],
        }
    }
}

/// Which latency tier a route asks Bedrock for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyPolicy {
    /// Latency-optimized wherever the catalog says it works, standard elsewhere.
    Optimized,
    Standard,
    /// Whatever the request asked (unless the catalog says it cannot work).
    Client,
}

/// One step of a fallback chain: what changes from the route's primary target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FallbackTarget {
    pub upstream: Option<String>,
    pub model: Option<String>,
    pub latency: Option<LatencyPolicy>,
}

/// When a target is taken out of rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure share over `window` that opens it (with at least `min_requests`).
    pub error_rate: f64,
    pub window: Duration,
    pub min_requests: u32,
    /// How long it stays open before one probe request is let through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            error_rate: 0.5,
            window: Duration::from_secs(30),
            min_requests: 20,
            open_for: Duration::from_secs(30),
        }
    }
}

/// A route's latency and resilience policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ResilienceConfig {
    pub latency: LatencyPolicy,
    pub fallback: Vec<FallbackTarget>,
    /// Error kinds that move on to a retry or the next target.
    pub fallback_on: Vec<ErrorKind>,
    /// Retries on the same target before moving on.
    pub retries: u32,
    /// Base and cap of the jittered exponential backoff between retries.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// One deadline for every attempt together; default: the upstream's total timeout.
    pub deadline: Option<Duration>,
    /// Per attempt, until the response headers (or a stream's first event);
    /// default: the upstream's `first_byte_timeout`.
    pub first_byte_timeout: Option<Duration>,
    /// Start the next target when the current one sent nothing for this long.
    pub hedge_after: Option<Duration>,
    pub breaker: BreakerConfig,
}

/// Error kinds that fall back unless a route says otherwise.
pub const DEFAULT_FALLBACK_ON: &[ErrorKind] = &[
    ErrorKind::Throttled,
    ErrorKind::Unavailable,
    ErrorKind::Timeout,
    ErrorKind::Unsupported,
    ErrorKind::ModelNotReady,
    ErrorKind::Internal,
];

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            latency: LatencyPolicy::Client,
            fallback: Vec::new(),
            fallback_on: DEFAULT_FALLBACK_ON.to_vec(),
            retries: 0,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: None,
            first_byte_timeout: None,
            hedge_after: None,
            breaker: BreakerConfig::default(),
        }
    }
}

/// The prefix registry.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptCacheGlobal {
    /// Prefixes remembered at most (least recently seen go first).
    pub max_prefixes: u64,
}

/// One route: the model ids and aliases it answers, and where it sends them.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub aliases: Vec<String>,
    /// Model ids (or inference profile ids) clients may call this route by.
    pub models: Vec<String>,
    /// Answers any model id no other route claims (`models = ["*"]`).
    pub catch_all: bool,
    pub upstream: String,
    /// The model id sent upstream; when unset, the id the client used (or, for
    /// an alias, the route's first model).
    pub upstream_model: Option<String>,
    pub cache: RouteCacheConfig,
    pub prompt_cache: PromptCacheConfig,
    pub resilience: ResilienceConfig,
}

/// Which routes a key may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAccess {
    All,
    Only(HashSet<String>),
}

impl RouteAccess {
    pub fn allows(&self, route: &str) -> bool {
        match self {
            RouteAccess::All => true,
            RouteAccess::Only(names) => names.contains(route),
        }
    }
}

/// How a key proves itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCredential {
    /// An API key, stored as the SHA-256 of the key.
    ApiKey { sha256: [u8; 32] },
    /// A proxy-issued access key pair for SigV4-signing clients.
    AccessKey { id: String, secret: String },
}

/// A client credential and what it may do.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyConfig {
    pub tenant: String,
    pub credential: KeyCredential,
    pub routes: RouteAccess,
    pub requests_per_minute: Option<u32>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub limits: Limits,
    pub logging: LoggingConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub keys: Vec<KeyConfig>,
    pub cache: CacheConfig,
    pub prompt_cache: PromptCacheGlobal,
    /// A model catalog file replacing the embedded one.
    pub catalog_file: Option<std::path::PathBuf>,
    /// SHA-256 of the source text.
    pub hash: String,
    pub loaded_at: SystemTime,
}

/// Expands `${VAR}` and `${VAR:-default}` in `value`; `key` names the setting in errors.
pub fn expand_env(key: &str, value: &str, errors: &mut Vec<String>) -> String {
    expand_env_with(key, value, errors, |name| std::env::var(name).ok())
}

fn expand_env_with(
    key: &str,
    value: &str,
    errors: &mut Vec<String>,
    lookup: impl Fn(&str) -> Option<String>,
) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            errors.push(format!("{key}: unterminated ${{ in value"));
            return out;
        };
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => errors.push(format!("{key}: environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Parses a duration such as `250ms`, `30s`, `5m`; `key` names the setting in errors.
pub fn parse_duration(key: &str, value: &str, errors: &mut Vec<String>) -> Duration {
    match humantime::parse_duration(value.trim()) {
        Ok(d) => d,
        Err(e) => {
            errors.push(format!(
                "{key}: `{value}` is not a duration ({e}); write e.g. 250ms, 30s, 5m"
            ));
            Duration::ZERO
        }
    }
}

impl Config {
    /// Parses and validates a config.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError(vec![e.to_string()]))?;
        let mut config = raw.validate()?;
        config.hash = hex::encode(Sha256::digest(text.as_bytes()));
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("reading {}: {e}", path.display())]))?;
        Config::parse(&text)
    }

    /// Whether a simulator upstream has no endpoint, so the proxy must run the
    /// simulator in its own process.
    pub fn needs_embedded_simulator(&self) -> bool {
        self.upstreams
            .values()
            .any(|u| u.kind == UpstreamKind::Simulator && u.endpoint.is_none())
    }

    /// A one-line description for logs and `check-config`.
    pub fn summary(&self) -> String {
        format!(
            "{} upstream(s), {} route(s), {} key(s); api {} (auth {}), admin {}",
            self.upstreams.len(),
            self.routes.len(),
            self.keys.len(),
            self.server.listen,
            match self.server.auth {
                AuthMode::Keys => "keys",
                AuthMode::None => "none",
            },
            self.admin.listen
        )
    }
}

#[cfg(test)]
mod tests;
