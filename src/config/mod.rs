//! The proxy's configuration: one TOML file, parsed into raw serde structs that
//! reject unknown keys, then validated into the typed [`Config`] the rest of the
//! proxy uses. Parsing takes a `&str`; [`Config::load`] is the thin file wrapper.
//! Every error names the key it is about (`routes[2].upstream: ...`), and every
//! problem is reported at once: a reader pushes its problem and carries on with
//! the default.
//!
//! Secrets come from the environment: any string value may be written `${VAR}`
//! (or `${VAR:-default}`) and is expanded at load time.
//!
//! # Layout
//! One file per top-level table, each holding the table's raw serde types, its
//! typed config with the `Default` impls (the one place defaults live: raw
//! parsing falls back to them), and `validate`, which reads the table alone:
//! `server`, `admin`, `limits`, `logging`, `tracing`, `upstreams`, `cache`,
//! `prompt_cache`, `responses`, `catalog`, `routes/` (with the route's own `cache`,
//! `prompt_cache` and `resilience` parts), `keys`, `tenants` (with `Quota`,
//! the limit keys tenants, keys and routes share). Checks that one table makes
//! of another (a route naming a missing upstream, a key naming a missing
//! route, `auth = "keys"` without keys) are `check_references`, here.
//! `values.rs` reads single values (durations, addresses, `${VAR}`), and
//! `names.rs` holds `named_enum!`, which gives each closed set of names
//! (`auth = "keys"`) one table used both to parse and to label it.
//!
//! # Adding a section
//! 1. A file `config/NAME.rs` with `RawNAME` (`#[serde(deny_unknown_fields)]`,
//!    every key an `Option` so an absent key is visible), the typed
//!    `NAMEConfig` with its `Default`, and `validate(raw, &mut errors) ->
//!    NAMEConfig` that reads each key or falls back to the default, pushing
//!    `NAME.key: what is wrong` and carrying on. Closed sets of names are
//!    `named_enum!`s read with `choose`.
//! 2. A field in `RawConfig` and in [`Config`], and one line in
//!    `RawConfig::validate` (the compiler points at both: they are
//!    destructured and built field by field).
//! 3. References to other tables in `check_references`.
//! 4. Error cases in `tests.rs`, and the keys in `docs/CONFIG.md`.
//!
//! A key in an existing table is the same in small: an `Option` field in the
//! raw struct, the typed field with its default in the `Default` impl, one
//! line in that file's `validate`, a test, and its row in `docs/CONFIG.md`.

#[macro_use]
mod names;
mod admin;
mod advice;
mod cache;
mod catalog;
mod keys;
mod limits;
mod logging;
mod prompt_cache;
mod responses;
mod routes;
mod server;
mod tenants;
mod tracing;
mod upstreams;
mod values;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use self::tracing::TracingConfig;
pub use admin::AdminConfig;
pub use cache::{CacheConfig, RedisConfig};
pub use keys::{KeyConfig, KeyCredential, RouteAccess};
pub use limits::{Limits, LimitsClock, SharedFailure};
pub use logging::{LogFormat, LogOverflow, LoggingConfig};
pub use prompt_cache::PromptCacheGlobal;
pub use responses::ResponsesConfig;
pub use routes::cache::{
    CacheMode, Replay, RouteCacheConfig, DEFAULT_CACHED_STOP_REASONS, NEVER_CACHED_STOP_REASONS,
};
pub use routes::prompt_cache::{CachePosition, CacheTtl, PromptCacheConfig, PromptCacheMode};
pub use routes::resilience::{
    BreakerConfig, FallbackTarget, LatencyPolicy, ResilienceConfig, ServicePolicy,
    DEFAULT_FALLBACK_ON,
};
pub use routes::RouteConfig;
pub use server::{AuthMode, Connections, ServerConfig, TlsFiles};
pub use tenants::{Quota, TenantConfig};
pub use upstreams::{
    HourlyCost, HttpProtocol, Timeouts, UpstreamConfig, UpstreamConnections, UpstreamKind, EMBEDDED,
};

/// Why a config could not be used: every problem found, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub limits: Limits,
    pub logging: LoggingConfig,
    /// OpenTelemetry trace export (read at start).
    pub tracing: TracingConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub keys: Vec<KeyConfig>,
    pub tenants: Vec<TenantConfig>,
    pub cache: CacheConfig,
    pub prompt_cache: PromptCacheGlobal,
    /// Stored Responses (`store`, `previous_response_id`; read at start).
    pub responses: ResponsesConfig,
    /// A model catalog file replacing the embedded one.
    pub catalog_file: Option<PathBuf>,
    /// SHA-256 of the source text.
    pub hash: String,
    pub loaded_at: SystemTime,
}

/// The config file as written: one field per top-level table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: server::RawServer,
    #[serde(default)]
    admin: admin::RawAdmin,
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(default)]
    logging: logging::RawLogging,
    #[serde(default)]
    tracing: tracing::RawTracing,
    #[serde(default)]
    upstreams: BTreeMap<String, upstreams::RawUpstream>,
    #[serde(default)]
    routes: Vec<routes::RawRoute>,
    #[serde(default)]
    keys: Vec<keys::RawKey>,
    #[serde(default)]
    tenants: Vec<tenants::RawTenant>,
    #[serde(default)]
    cache: cache::RawCache,
    #[serde(default)]
    catalog: catalog::RawCatalog,
    #[serde(default)]
    prompt_cache: prompt_cache::RawPromptCacheGlobal,
    #[serde(default)]
    responses: responses::RawResponses,
}

impl RawConfig {
    /// Checks every table, then what the tables say about each other,
    /// collecting every problem, and builds the typed config.
    fn validate(self) -> Result<Config, ConfigError> {
        let RawConfig {
            server,
            admin,
            limits,
            logging,
            tracing,
            upstreams,
            routes,
            keys,
            tenants,
            cache,
            catalog,
            prompt_cache,
            responses,
        } = self;
        let mut errors = Vec::new();
        let e = &mut errors;
        let server = server::validate(server, e);
        let admin = admin::validate(admin, e);
        let limits = limits::validate(limits, e);
        let logging = logging::validate(logging, e);
        let tracing = tracing::validate(tracing, e);
        let upstreams = upstreams::validate(upstreams, e);
        let cache = cache::validate(cache, e);
        let prompt_cache = prompt_cache::validate(prompt_cache, e);
        let responses = responses::validate(responses, e);
        let catalog_file = catalog::validate(catalog, e);
        let routes = routes::validate(routes, e);
        let keys = keys::validate(keys, e);
        let tenants = tenants::validate(tenants, e);
        check_references(&server, &upstreams, &routes, &keys, e);
        check_tenants(&server, &keys, &tenants, e);
        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Config {
            server,
            admin,
            limits,
            logging,
            tracing,
            upstreams,
            routes,
            keys: keys.into_iter().flatten().collect(),
            tenants,
            cache,
            prompt_cache,
            responses,
            catalog_file,
            hash: String::new(),
            loaded_at: SystemTime::now(),
        })
    }
}

/// What one table says about another: the upstreams routes and their fallbacks
/// name exist, the routes keys name exist, and `auth = "keys"` has keys.
/// `keys` is in file order (`None` for an entry already reported unusable).
fn check_references(
    server: &ServerConfig,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    routes: &[RouteConfig],
    keys: &[Option<KeyConfig>],
    e: &mut Vec<String>,
) {
    for (i, r) in routes.iter().enumerate() {
        if !upstreams.contains_key(&r.upstream) {
            e.push(format!(
                "routes[{i}].upstream: no upstream named `{}`",
                r.upstream
            ));
        }
        for (j, f) in r.resilience.fallback.iter().enumerate() {
            if let Some(u) = f.upstream.as_ref().filter(|u| !upstreams.contains_key(*u)) {
                e.push(format!(
                    "routes[{i}].fallback[{j}].upstream: no upstream named `{u}`"
                ));
            }
        }
    }
    if let Some(name) = &server.operations_upstream {
        match upstreams.get(name) {
            None => e.push(format!(
                "server.operations_upstream: no upstream named `{name}`"
            )),
            Some(u) if !u.kind.is_bedrock() => e.push(format!(
                "server.operations_upstream: upstream `{name}` is not a Bedrock (or simulator) upstream"
            )),
            Some(_) => {}
        }
    }
    let route_names: HashSet<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    for (i, k) in keys.iter().enumerate() {
        let Some(KeyConfig {
            routes: RouteAccess::Only(names),
            ..
        }) = k
        else {
            continue;
        };
        let mut missing: Vec<&String> = names
            .iter()
            .filter(|n| !route_names.contains(n.as_str()))
            .collect();
        missing.sort();
        for r in missing {
            e.push(format!("keys[{i}].routes: no route named `{r}`"));
        }
    }
    if server.auth == AuthMode::Keys && keys.iter().flatten().next().is_none() {
        e.push("keys: server.auth is `keys` but no [[keys]] entry is configured; nobody could call the proxy".into());
    }
}

/// Every `[[tenants]]` entry names a tenant that can call: one some key
/// belongs to, or `anonymous` (everyone, with `server.auth = "none"`).
fn check_tenants(
    server: &ServerConfig,
    keys: &[Option<KeyConfig>],
    tenants: &[TenantConfig],
    e: &mut Vec<String>,
) {
    let known: HashSet<&str> = keys.iter().flatten().map(|k| k.tenant.as_str()).collect();
    for (i, t) in tenants.iter().enumerate() {
        let anonymous = server.auth == AuthMode::None && t.name == ANONYMOUS_TENANT;
        if !anonymous && !known.contains(t.name.as_str()) {
            e.push(format!(
                "tenants[{i}].name: no [[keys]] entry belongs to tenant `{}`",
                t.name
            ));
        }
    }
}

/// The tenant of every caller when `server.auth = "none"`.
pub const ANONYMOUS_TENANT: &str = "anonymous";

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
        self.upstreams.values().any(|u| u.embedded)
    }

    /// A one-line description for logs and `check-config`.
    pub fn summary(&self) -> String {
        format!(
            "{} upstream(s), {} route(s), {} key(s); api {} (auth {}), admin {}",
            self.upstreams.len(),
            self.routes.len(),
            self.keys.len(),
            self.server.listen,
            self.server.auth,
            self.admin.listen
        )
    }
}

#[cfg(test)]
mod tests;
