//! `[[keys]]`: the client credentials (API keys, proxy-issued SigV4 key
//! pairs), the tenant each belongs to, and what each may do. That the routes a
//! key names exist is checked with the other cross-table references in
//! `config/mod.rs`.

use serde::Deserialize;
use std::collections::HashSet;

use super::tenants::{quota, Quota, RawQuota};
use super::values::{check_name, expand_env, sha256_hex, SHARED_NAMESPACE};

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
    /// The key's own limits (its tenant's and the route's apply too).
    pub quota: Quota,
}

impl KeyConfig {
    /// The key's name where the proxy shows it (`/admin/usage`, the limits'
    /// counters): an access key's id, or the first 12 hex digits of an API
    /// key's SHA-256 (not a secret: the config holds the whole hash).
    pub fn id(&self) -> String {
        match &self.credential {
            KeyCredential::ApiKey { sha256 } => hex::encode(&sha256[..6]),
            KeyCredential::AccessKey { id, .. } => id.clone(),
        }
    }
}

/// The `routes` entry that allows every route (and the default).
const ALL_ROUTES: &str = "*";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    tenant: Option<String>,
    key_sha256: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    routes: Option<Vec<String>>,
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u64>,
    usd_per_day: Option<f64>,
    usd_per_month: Option<f64>,
}

/// The keys in file order, so an index is still the entry's key path; `None`
/// for an entry whose credential is unusable (already reported).
pub(super) fn validate(raw: Vec<RawKey>, e: &mut Vec<String>) -> Vec<Option<KeyConfig>> {
    let keys: Vec<Option<KeyConfig>> = raw
        .into_iter()
        .enumerate()
        .map(|(i, k)| key(&format!("keys[{i}]"), k, e))
        .collect();
    check_unique(&keys, e);
    keys
}

fn key(key: &str, raw: RawKey, e: &mut Vec<String>) -> Option<KeyConfig> {
    let tenant = raw.tenant.unwrap_or_default();
    check_name(&format!("{key}.tenant"), &tenant, e);
    if tenant == SHARED_NAMESPACE {
        e.push(format!(
            "{key}.tenant: `{SHARED_NAMESPACE}` is the cache namespace of routes with `shared = true`; name the tenant otherwise"
        ));
    }
    let credential = credential(
        key,
        raw.key_sha256,
        raw.access_key_id,
        raw.secret_access_key,
        e,
    )?;
    let route_names = raw.routes.unwrap_or_else(|| vec![ALL_ROUTES.into()]);
    let routes = if route_names.iter().any(|r| r == ALL_ROUTES) {
        RouteAccess::All
    } else {
        RouteAccess::Only(route_names.into_iter().collect())
    };
    let quota = quota(
        key,
        RawQuota {
            requests_per_minute: raw.requests_per_minute,
            tokens_per_minute: raw.tokens_per_minute,
            usd_per_day: raw.usd_per_day,
            usd_per_month: raw.usd_per_month,
        },
        e,
    );
    Some(KeyConfig {
        tenant,
        credential,
        routes,
        quota,
    })
}

fn credential(
    key: &str,
    key_sha256: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    e: &mut Vec<String>,
) -> Option<KeyCredential> {
    match (key_sha256, access_key_id, secret_access_key) {
        (Some(hash), None, None) => Some(KeyCredential::ApiKey {
            sha256: sha256_hex(&format!("{key}.key_sha256"), &hash, e),
        }),
        (None, Some(id), Some(secret)) => {
            let secret = expand_env(&format!("{key}.secret_access_key"), &secret, e);
            if secret.is_empty() {
                e.push(format!("{key}.secret_access_key: must not be empty"));
            }
            Some(KeyCredential::AccessKey { id, secret })
        }
        (None, Some(_), None) => {
            e.push(format!("{key}: access_key_id needs secret_access_key"));
            None
        }
        _ => {
            e.push(format!(
                "{key}: give either key_sha256, or access_key_id with secret_access_key"
            ));
            None
        }
    }
}

/// One credential, one key: two entries with the same API key hash or
/// access key id would make the tenant ambiguous.
fn check_unique(keys: &[Option<KeyConfig>], e: &mut Vec<String>) {
    let mut seen = HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        let Some(k) = k else { continue };
        let id = match &k.credential {
            KeyCredential::ApiKey { sha256 } => hex::encode(sha256),
            KeyCredential::AccessKey { id, .. } => id.clone(),
        };
        if !seen.insert(id) {
            e.push(format!(
                "keys[{i}]: the same credential is configured twice"
            ));
        }
    }
}
