//! `[[routes]]`: which model ids and aliases a route answers, where it sends
//! them, and its own policies, each in its own file: `cache.rs` (the route's
//! response cache), `prompt_cache.rs` (cachePoint injection), `resilience.rs`
//! (latency tier, fallback, retries, breakers). What must be unique across
//! routes is checked here; the upstreams they name, in `config/mod.rs`.

pub(super) mod cache;
pub(super) mod prompt_cache;
pub(super) mod resilience;

use serde::Deserialize;
use std::collections::{HashMap, HashSet};

use self::cache::{RawRouteCache, RouteCacheConfig};
use self::prompt_cache::{PromptCacheConfig, RawPromptCache};
use self::resilience::{RawBreaker, RawFallback, RawResilience, ResilienceConfig};
use super::tenants::{quota, Quota, RawQuota};
use super::values::check_name;

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
    /// Limits on the route as a whole, across tenants.
    pub quota: Quota,
}

/// The `models` entry that makes a route the catch-all.
const CATCH_ALL: &str = "*";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    name: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    upstream: Option<String>,
    upstream_model: Option<String>,
    cache: Option<RawRouteCache>,
    prompt_cache: Option<RawPromptCache>,
    latency: Option<String>,
    service_tier: Option<String>,
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
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u64>,
    usd_per_day: Option<f64>,
    usd_per_month: Option<f64>,
}

pub(super) fn validate(raw: Vec<RawRoute>, e: &mut Vec<String>) -> Vec<RouteConfig> {
    if raw.is_empty() {
        e.push("routes: at least one [[routes]] entry is needed".into());
    }
    let routes: Vec<RouteConfig> = raw
        .into_iter()
        .enumerate()
        .map(|(i, r)| route(&format!("routes[{i}]"), r, e))
        .collect();
    check_unique(&routes, e);
    routes
}

fn route(key: &str, raw: RawRoute, e: &mut Vec<String>) -> RouteConfig {
    // Every key is named, so a key added to `RawRoute` cannot be left unread.
    let RawRoute {
        name,
        aliases,
        models,
        upstream,
        upstream_model,
        cache,
        prompt_cache,
        latency,
        service_tier,
        fallback,
        fallback_on,
        retries,
        backoff,
        max_backoff,
        deadline,
        first_byte_timeout,
        hedge_after,
        breaker,
        requests_per_minute,
        tokens_per_minute,
        usd_per_day,
        usd_per_month,
    } = raw;
    let name = name.unwrap_or_default();
    check_name(&format!("{key}.name"), &name, e);
    if aliases.is_empty() && models.is_empty() {
        e.push(format!("{key}: give at least one of aliases, models"));
    }
    let catch_all = models.iter().any(|m| m == CATCH_ALL);
    let resilience = RawResilience {
        latency,
        service_tier,
        fallback,
        fallback_on,
        retries,
        backoff,
        max_backoff,
        deadline,
        first_byte_timeout,
        hedge_after,
        breaker,
    };
    RouteConfig {
        name,
        aliases,
        models: models.into_iter().filter(|m| m != CATCH_ALL).collect(),
        catch_all,
        upstream: upstream.unwrap_or_default(),
        upstream_model,
        cache: cache::validate(key, cache, e),
        prompt_cache: prompt_cache::validate(key, prompt_cache, e),
        resilience: resilience::validate(key, resilience, e),
        quota: quota(
            key,
            RawQuota {
                requests_per_minute,
                tokens_per_minute,
                usd_per_day,
                usd_per_month,
            },
            e,
        ),
    }
}

/// Route names, the model ids and aliases routes claim, and the catch-all
/// are each one route's.
fn check_unique(routes: &[RouteConfig], e: &mut Vec<String>) {
    let mut claimed: HashMap<&str, &str> = HashMap::new();
    let mut catch_all: Option<&str> = None;
    for (i, r) in routes.iter().enumerate() {
        if r.catch_all {
            if let Some(other) = catch_all {
                e.push(format!(
                    "routes[{i}].models: `*` is already claimed by route {other}"
                ));
            }
            catch_all = Some(&r.name);
        }
        for id in r.aliases.iter().chain(&r.models) {
            if let Some(other) = claimed.insert(id, &r.name) {
                e.push(format!(
                    "routes[{i}]: `{id}` is already claimed by route {other}"
                ));
            }
        }
    }
    let mut names = HashSet::new();
    for r in routes {
        if !names.insert(&r.name) {
            e.push(format!("routes: the name `{}` is used twice", r.name));
        }
    }
}
