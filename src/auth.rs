//! The auth stage: who is calling, and may they use this route.
//!
//! A caller is a configured key: an API key sent as `Authorization: Bearer <key>`
//! (what boto3 sends with `AWS_BEARER_TOKEN_BEDROCK`, and the OpenAI SDK) or
//! `x-api-key` (the Anthropic SDK), matched by its SHA-256; or a proxy-issued
//! access key pair, whose SigV4 signature is verified, so an unmodified boto3 app
//! with plain credentials works too. With `server.auth = "none"` (loopback only)
//! everyone is the `anonymous` tenant.

use axum::http::HeaderMap;
use bedrock_wire::sigv4;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{AuthMode, Config, KeyCredential, RouteAccess};
use crate::error::ProxyError;

/// An authenticated caller: its tenant and what its key allows.
#[derive(Debug)]
pub(crate) struct Principal {
    /// The tenant namespace (cache entries, prefix registry, metrics).
    pub(crate) tenant: Arc<str>,
    routes: RouteAccess,
    limiter: Option<DefaultDirectRateLimiter>,
    requests_per_minute: Option<u32>,
}

impl Principal {
    fn new(tenant: &str, routes: RouteAccess, requests_per_minute: Option<u32>) -> Principal {
        Principal {
            tenant: Arc::from(tenant),
            routes,
            limiter: requests_per_minute
                .and_then(NonZeroU32::new)
                .map(|n| RateLimiter::direct(Quota::per_minute(n))),
            requests_per_minute,
        }
    }

    /// Checks the key may use `route` and is within its rate limit.
    pub(crate) fn admit(&self, route: &str) -> Result<(), ProxyError> {
        if !self.routes.allows(route) {
            return Err(ProxyError::access_denied(format!(
                "The key for tenant {} is not allowed to use route {route}.",
                self.tenant
            )));
        }
        if let Some(limiter) = &self.limiter {
            if limiter.check().is_err() {
                return Err(ProxyError::throttled(format!(
                    "Rate limit of {} requests per minute exceeded for this key; slow down and retry.",
                    self.requests_per_minute.unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// Whether the key may use `route` (without counting a request).
    pub(crate) fn may_use(&self, route: &str) -> bool {
        self.routes.allows(route)
    }
}

/// The credentials table, built from the config.
#[derive(Debug)]
pub(crate) struct Auth {
    mode: AuthMode,
    api_keys: HashMap<[u8; 32], Arc<Principal>>,
    access_keys: HashMap<String, (String, Arc<Principal>)>,
    anonymous: Arc<Principal>,
}

const MISSING: &str = "Missing credentials: send `Authorization: Bearer <key>`, `x-api-key: <key>`, or sign the request (SigV4) with an access key issued by this proxy.";

impl Auth {
    pub(crate) fn new(config: &Config) -> Auth {
        let mut api_keys = HashMap::new();
        let mut access_keys = HashMap::new();
        for key in &config.keys {
            let principal = Arc::new(Principal::new(
                &key.tenant,
                key.routes.clone(),
                key.requests_per_minute,
            ));
            match &key.credential {
                KeyCredential::ApiKey { sha256 } => {
                    api_keys.insert(*sha256, principal);
                }
                KeyCredential::AccessKey { id, secret } => {
                    access_keys.insert(id.clone(), (secret.clone(), principal));
                }
            }
        }
        Auth {
            mode: config.server.auth,
            api_keys,
            access_keys,
            anonymous: Arc::new(Principal::new("anonymous", RouteAccess::All, None)),
        }
    }

    /// What the headers alone decide, before the body is read: the caller of
    /// an API key (or of `auth = "none"`), a SigV4 request from a known access
    /// key whose signature is checked once the body is in
    /// ([`Admission::caller`]), or the refusal. Unauthenticated callers are
    /// turned away without the proxy buffering their bodies.
    pub(crate) fn admit_headers<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> Result<Admission<'a>, ProxyError> {
        if self.mode == AuthMode::None {
            return Ok(Admission::Caller(self.anonymous.clone()));
        }
        let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
        let api_key = match authorization {
            Some(v) if v.starts_with("AWS4-") => return self.access_key(v),
            Some(v) => v.strip_prefix("Bearer ").map(str::trim),
            None => None,
        }
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        let Some(key) = api_key.filter(|k| !k.is_empty()) else {
            return Err(ProxyError::unauthenticated(MISSING));
        };
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.api_keys
            .get(&digest)
            .cloned()
            .map(Admission::Caller)
            .ok_or_else(|| ProxyError::unauthenticated("The API key is not valid for this proxy."))
    }

    /// The caller of a request, with its body: [`Auth::admit_headers`], then
    /// [`Admission::caller`].
    #[cfg(test)]
    pub(crate) fn authenticate(
        &self,
        method: &str,
        uri: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Arc<Principal>, ProxyError> {
        self.admit_headers(headers)?
            .caller(method, uri, headers, body)
    }

    /// A SigV4 header, parsed, with its access key's secret and caller.
    fn access_key<'a>(&'a self, value: &'a str) -> Result<Admission<'a>, ProxyError> {
        let auth = sigv4::parse_authorization(value).ok_or_else(|| {
            ProxyError::unauthenticated("The Authorization header is not a valid SigV4 header.")
        })?;
        let (secret, principal) = self.access_keys.get(auth.access_key_id).ok_or_else(|| {
            ProxyError::unauthenticated(format!(
                "The access key {} is not issued by this proxy.",
                auth.access_key_id
            ))
        })?;
        Ok(Admission::Signed {
            auth,
            secret,
            principal,
        })
    }
}

/// What a request's headers admitted it as.
pub(crate) enum Admission<'a> {
    /// Its caller is known.
    Caller(Arc<Principal>),
    /// Signed with SigV4 by a known access key; the signature is still to check.
    Signed {
        auth: sigv4::Authorization<'a>,
        secret: &'a str,
        principal: &'a Arc<Principal>,
    },
}

impl Admission<'_> {
    /// The caller, once the body is in: for SigV4, after the signature is
    /// checked over method, path (`uri`, as received), headers and body.
    pub(crate) fn caller(
        self,
        method: &str,
        uri: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Arc<Principal>, ProxyError> {
        match self {
            Admission::Caller(principal) => Ok(principal),
            Admission::Signed {
                auth,
                secret,
                principal,
            } => {
                sigv4::verify(&auth, secret, method, uri, headers, body, SystemTime::now())
                    .map_err(|e| {
                        ProxyError::unauthenticated(format!("SigV4 verification failed: {e}."))
                    })?;
                Ok(principal.clone())
            }
        }
    }
}

/// A new random API key and the SHA-256 (hex) to put in the config.
pub fn new_api_key() -> (String, String) {
    let mut raw = [0u8; 24];
    // The OS RNG only fails on unsupported platforms; an all-zero key would then
    // be caught by the config's duplicate check rather than silently weak.
    let _ = getrandom::fill(&mut raw);
    let key = format!("bpk_{}", hex::encode(raw));
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    (key, hash)
}

/// The SHA-256 (hex) of an existing key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new access key pair for SigV4-signing clients: (access key id, secret).
pub fn new_access_key() -> (String, String) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 30];
    let _ = getrandom::fill(&mut id);
    let _ = getrandom::fill(&mut secret);
    (
        format!("BPXK{}", hex::encode_upper(id)),
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config(extra_keys: &str) -> Config {
        let hash = hash_key("good-key");
        Config::parse(&format!(
            r#"
            [upstreams.sim]
            kind = "simulator"
            [[routes]]
            name = "a"
            models = ["m.a"]
            upstream = "sim"
            [[routes]]
            name = "b"
            models = ["m.b"]
            upstream = "sim"
            [[keys]]
            tenant = "t1"
            key_sha256 = "{hash}"
            routes = ["a"]
            requests_per_minute = 2
            {extra_keys}
            "#
        ))
        .unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn api_keys_by_bearer_or_x_api_key() {
        let auth = Auth::new(&config(""));
        let p = auth
            .authenticate(
                "POST",
                "/",
                &headers(&[("authorization", "Bearer good-key")]),
                b"",
            )
            .unwrap();
        assert_eq!(&*p.tenant, "t1");
        assert!(auth
            .authenticate("POST", "/", &headers(&[("x-api-key", "good-key")]), b"")
            .is_ok());
        let wrong = auth
            .authenticate(
                "POST",
                "/",
                &headers(&[("authorization", "Bearer nope")]),
                b"",
            )
            .unwrap_err();
        assert!(wrong.message.contains("not valid"));
        let missing = auth
            .authenticate("POST", "/", &HeaderMap::new(), b"")
            .unwrap_err();
        assert!(missing.message.contains("Missing credentials"));
    }

    #[test]
    fn routes_and_rate_limits_are_enforced() {
        let auth = Auth::new(&config(""));
        let p = auth
            .authenticate("POST", "/", &headers(&[("x-api-key", "good-key")]), b"")
            .unwrap();
        assert!(p.admit("b").unwrap_err().message.contains("not allowed"));
        assert!(p.admit("a").is_ok());
        assert!(p.admit("a").is_ok());
        let limited = p.admit("a").unwrap_err();
        assert_eq!(limited.kind, crate::error::ErrorKind::Throttled);
    }

    #[test]
    fn generated_keys_hash_to_what_is_printed() {
        let (key, hash) = new_api_key();
        assert!(key.starts_with("bpk_"));
        assert_eq!(hash_key(&key), hash);
        let (id, secret) = new_access_key();
        assert!(id.starts_with("BPXK") && secret.len() >= 40);
    }
}
