//! The auth stage: who is calling, and may they use this route.
//!
//! A caller is a configured key: an API key sent as `Authorization: Bearer <key>`
//! (what boto3 sends with `AWS_BEARER_TOKEN_BEDROCK`, and the OpenAI SDK) or
//! `x-api-key` (the Anthropic SDK), matched by its SHA-256; or a proxy-issued
//! access key pair, whose SigV4 signature is verified, so an unmodified boto3 app
//! with plain credentials works too. With `server.auth = "none"` (loopback only)
//! everyone is the `anonymous` tenant. The key's and its tenant's limits ride
//! along to the limits stage (`crate::limits`), which counts them.
//!
//! A SigV4 request must be scoped to service `bedrock` and a region the proxy
//! accepts (`server.sigv4_regions`, by default the regions of the upstreams the
//! routes use), and over plain HTTP its signature must cover the body
//! (`UNSIGNED-PAYLOAD` is accepted over TLS only, as AWS does), so a captured
//! request cannot carry another body. An unknown access key and a wrong
//! signature get the same answer.

use axum::http::{header, HeaderMap, HeaderName};
use bedrock_wire::eventstream::EnvelopeVerifier;
use bedrock_wire::sigv4;
use bedrock_wire::FastMap;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{AuthMode, Config, KeyCredential, Quota, RouteAccess};
use crate::error::ProxyError;
use crate::limits::Caller;

/// An authenticated caller: its tenant and what its key allows.
#[derive(Debug)]
pub(crate) struct Principal {
    /// The tenant namespace (cache entries, prefix registry, metrics).
    pub(crate) tenant: Arc<str>,
    routes: RouteAccess,
    /// The guardrails (`id`, `id:version`) the key may apply.
    guardrails: RouteAccess,
    /// The models the key may start async invocations on.
    async_invoke_models: RouteAccess,
    /// The key's id in the limits' counters and `/admin/usage`
    /// (`KeyConfig::id`); `None` for anonymous callers.
    key_id: Option<Arc<str>>,
    key_quota: Quota,
    tenant_quota: Quota,
}

impl Principal {
    fn new(
        tenant: &str,
        access: [RouteAccess; 3],
        key_id: Option<String>,
        key_quota: Quota,
        tenant_quota: Quota,
    ) -> Principal {
        let [routes, guardrails, async_invoke_models] = access;
        Principal {
            tenant: Arc::from(tenant),
            routes,
            guardrails,
            async_invoke_models,
            key_id: key_id.map(Arc::from),
            key_quota,
            tenant_quota,
        }
    }

    /// Checks the key may use `route`.
    pub(crate) fn admit(&self, route: &str) -> Result<(), ProxyError> {
        if !self.routes.allows(route) {
            return Err(ProxyError::access_denied(format!(
                "The key for tenant {} is not allowed to use route {route}.",
                self.tenant
            )));
        }
        Ok(())
    }

    /// The caller as the limits stage counts it.
    pub(crate) fn caller(&self) -> Caller<'_> {
        Caller {
            tenant: &self.tenant,
            key: self.key_id.as_ref(),
            key_quota: &self.key_quota,
            tenant_quota: &self.tenant_quota,
        }
    }

    /// Checks the key may apply guardrail `id` (an id, not an ARN) at
    /// `version` (`None`: the request names none, so the key must be allowed
    /// every version): `id` or `id:version` in its `guardrails`.
    pub(crate) fn admit_guardrail(
        &self,
        operation: &str,
        id: &str,
        version: Option<&str>,
    ) -> Result<(), ProxyError> {
        let allowed = self.guardrails.allows(id)
            || version.is_some_and(|v| self.guardrails.allows(&format!("{id}:{v}")));
        if allowed {
            return Ok(());
        }
        Err(ProxyError::access_denied(format!(
            "The key for tenant {} is not authorized to perform: bedrock:{operation} on guardrail {id}{}.",
            self.tenant,
            version.map(|v| format!(" version {v}")).unwrap_or_default()
        )))
    }

    /// Checks the key may run InvokeGuardrailChecks: any guardrail allowed.
    pub(crate) fn admit_guardrail_checks(&self) -> Result<(), ProxyError> {
        if self.guardrails.is_none() {
            return Err(ProxyError::access_denied(format!(
                "The key for tenant {} is not authorized to perform: bedrock:InvokeGuardrailChecks (it may use no guardrail).",
                self.tenant
            )));
        }
        Ok(())
    }

    /// Checks the key may start async invocations on a model any of `names`
    /// stand for (the id as sent, the route, the model sent upstream).
    pub(crate) fn admit_async_model(&self, names: &[&str]) -> Result<(), ProxyError> {
        if names.iter().any(|n| self.async_invoke_models.allows(n)) {
            return Ok(());
        }
        Err(ProxyError::access_denied(format!(
            "The key for tenant {} is not authorized to perform: bedrock:InvokeModel (async) on model {}.",
            self.tenant,
            names.first().copied().unwrap_or("-")
        )))
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
    // Built from the config; a request only looks up (the digest of its key,
    // or the access key id it names), so no request can crowd a bucket.
    api_keys: FastMap<[u8; 32], Arc<Principal>>,
    access_keys: FastMap<String, (String, Arc<Principal>)>,
    anonymous: Arc<Principal>,
    /// The regions a SigV4 credential scope may name.
    regions: BTreeSet<String>,
    /// Whether the API listener is TLS (where `UNSIGNED-PAYLOAD` is allowed).
    tls: bool,
}

const MISSING: &str = "Missing credentials: send `Authorization: Bearer <key>`, `x-api-key: <key>`, or sign the request (SigV4) with an access key issued by this proxy.";

/// The one answer to an unknown access key and to a wrong signature (AWS's
/// words for the latter), so the answer does not tell which key ids exist.
const BAD_SIGNATURE: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.";

/// The service a SigV4 credential scope must name.
const SERVICE: &str = "bedrock";

/// The regions SigV4 requests may be scoped to: `server.sigv4_regions`, or the
/// regions of every upstream a route (or a route's fallback) sends to.
fn accepted_regions(config: &Config) -> BTreeSet<String> {
    if let Some(regions) = &config.server.sigv4_regions {
        return regions.iter().cloned().collect();
    }
    config
        .routes
        .iter()
        .flat_map(|r| {
            std::iter::once(&r.upstream).chain(
                r.resilience
                    .fallback
                    .iter()
                    .filter_map(|f| f.upstream.as_ref()),
            )
        })
        .filter_map(|name| config.upstreams.get(name))
        .map(|u| u.region.clone())
        .collect()
}

/// Strips an auth scheme from a header value, whatever its case (RFC 9110:
/// schemes are case-insensitive).
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let head = value.get(..scheme.len())?;
    let rest = &value[scheme.len()..];
    (head.eq_ignore_ascii_case(scheme) && (rest.is_empty() || rest.starts_with(' ')))
        .then_some(rest)
}

impl Auth {
    pub(crate) fn new(config: &Config) -> Auth {
        let mut api_keys = FastMap::default();
        let mut access_keys = FastMap::default();
        let tenant_quota = |name: &str| {
            config
                .tenants
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.quota)
                .unwrap_or_default()
        };
        for key in &config.keys {
            let principal = Arc::new(Principal::new(
                &key.tenant,
                [
                    key.routes.clone(),
                    key.guardrails.clone(),
                    key.async_invoke_models.clone(),
                ],
                Some(key.id()),
                key.quota,
                tenant_quota(&key.tenant),
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
            anonymous: Arc::new(Principal::new(
                crate::config::ANONYMOUS_TENANT,
                [RouteAccess::All, RouteAccess::All, RouteAccess::All],
                None,
                Quota::default(),
                tenant_quota(crate::config::ANONYMOUS_TENANT),
            )),
            regions: accepted_regions(config),
            tls: config.server.tls.is_some(),
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
        // Header names as constants: a `&str` name is parsed on every lookup.
        const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let api_key = match authorization {
            Some(v) if v.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("AWS4-")) => {
                return self.access_key(v, headers)
            }
            Some(v) => strip_scheme(v, "Bearer").map(str::trim),
            None => None,
        }
        .or_else(|| headers.get(X_API_KEY).and_then(|v| v.to_str().ok()));
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
        let uri: axum::http::Uri = uri.parse().expect("a test request's URI");
        self.admit_headers(headers)?
            .caller(method, &uri, headers, body)
    }

    /// A SigV4 header, parsed and checked against what the headers alone can
    /// tell (scope, payload signing), with its access key's secret and caller.
    fn access_key<'a>(
        &'a self,
        value: &'a str,
        headers: &HeaderMap,
    ) -> Result<Admission<'a>, ProxyError> {
        let auth = sigv4::parse_authorization(value).ok_or_else(|| {
            ProxyError::unauthenticated("The Authorization header is not a valid SigV4 header.")
        })?;
        if auth.service != SERVICE {
            return Err(ProxyError::unauthenticated(format!(
                "Credential should be scoped to correct service: '{SERVICE}'."
            )));
        }
        if !self.regions.contains(auth.region) {
            let accepted: Vec<&str> = self.regions.iter().map(String::as_str).collect();
            return Err(ProxyError::unauthenticated(format!(
                "Credential should be scoped to a valid region, not '{}'; this proxy accepts {}.",
                auth.region,
                accepted.join(", ")
            )));
        }
        const CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");
        let unsigned = headers
            .get(CONTENT_SHA256)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"UNSIGNED-PAYLOAD"));
        if unsigned && !self.tls {
            return Err(ProxyError::unauthenticated(
                "UNSIGNED-PAYLOAD is accepted over HTTPS only: over plain HTTP the signature must cover the body (sign it, or serve the proxy with TLS).",
            ));
        }
        let (secret, principal) = self
            .access_keys
            .get(auth.access_key_id)
            .ok_or_else(|| ProxyError::unauthenticated(BAD_SIGNATURE))?;
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
    /// Who the headers say is calling (for a SigV4 request, who it would be
    /// if its signature is good).
    pub(crate) fn principal(&self) -> &Arc<Principal> {
        match self {
            Admission::Caller(p) => p,
            Admission::Signed { principal, .. } => principal,
        }
    }

    /// Whether the caller is proven by the headers alone (not a signature
    /// still to check over the body).
    pub(crate) fn verified(&self) -> bool {
        matches!(self, Admission::Caller(_))
    }

    /// The caller, once the body is in: for SigV4, after the signature is
    /// checked over method, path (`uri`, as received), headers and body.
    pub(crate) fn caller(
        self,
        method: &str,
        uri: &http::Uri,
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
                // The whole URI: over HTTP/2 it holds the authority a signature may cover.
                let uri = uri.to_string();
                sigv4::verify(
                    &auth,
                    secret,
                    method,
                    &uri,
                    headers,
                    body,
                    SystemTime::now(),
                )
                .map_err(|e| match e {
                    sigv4::VerifyError::Mismatch => ProxyError::unauthenticated(BAD_SIGNATURE),
                    e => ProxyError::unauthenticated(format!("SigV4 verification failed: {e}.")),
                })?;
                Ok(principal.clone())
            }
        }
    }
}

impl Admission<'_> {
    /// The caller of a request whose body is an event-stream upload still to
    /// come (the bidirectional stream): for SigV4, the signature over its
    /// headers is checked now, and the verifier of the chunk signatures its
    /// upload carries comes back with the caller.
    pub(crate) fn stream_caller(
        self,
        method: &str,
        uri: &str,
        headers: &HeaderMap,
    ) -> Result<(Arc<Principal>, Option<EnvelopeVerifier>), ProxyError> {
        match self {
            Admission::Caller(principal) => Ok((principal, None)),
            Admission::Signed {
                auth,
                secret,
                principal,
            } => {
                sigv4::verify_headers(&auth, secret, method, uri, headers, SystemTime::now())
                    .map_err(|e| match e {
                        sigv4::VerifyError::Mismatch => ProxyError::unauthenticated(BAD_SIGNATURE),
                        e => {
                            ProxyError::unauthenticated(format!("SigV4 verification failed: {e}."))
                        }
                    })?;
                let verifier = EnvelopeVerifier::new(
                    auth.access_key_id,
                    secret,
                    auth.region,
                    auth.service,
                    auth.signature,
                );
                Ok((principal.clone(), Some(verifier)))
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
    fn routes_are_enforced_and_limits_ride_along() {
        let auth = Auth::new(&config("[[tenants]]\nname = \"t1\"\nusd_per_day = 3\n"));
        let p = auth
            .authenticate("POST", "/", &headers(&[("x-api-key", "good-key")]), b"")
            .unwrap();
        assert!(p.admit("b").unwrap_err().message.contains("not allowed"));
        assert!(p.admit("a").is_ok());
        let caller = p.caller();
        assert_eq!(caller.key_quota.requests_per_minute, Some(2));
        assert_eq!(caller.tenant_quota.usd_per_day, Some(3.0));
        assert_eq!(
            caller.key.map(|k| k.to_string()),
            Some(hash_key("good-key")[..12].to_owned())
        );
    }

    /// `now` as an `x-amz-date`.
    fn amz_now() -> String {
        humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace(['-', ':'], "")
    }

    fn sigv4_headers(
        key_id: &str,
        region: &str,
        service: &str,
        extra: &[(&'static str, &str)],
    ) -> HeaderMap {
        let date = amz_now();
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={key_id}/{}/{region}/{service}/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
            &date[..8],
            "0".repeat(64)
        );
        let mut pairs = vec![
            ("authorization", auth.as_str()),
            ("host", "proxy"),
            ("x-amz-date", date.as_str()),
        ];
        pairs.extend_from_slice(extra);
        headers(&pairs)
    }

    fn signed_config(tls: bool) -> Config {
        let mut c = config(
            "[[keys]]\ntenant = \"signer\"\naccess_key_id = \"AKIDKNOWN\"\nsecret_access_key = \"s3cret\"\n",
        );
        if tls {
            c.server.tls = Some(crate::config::TlsFiles {
                cert: "cert.pem".into(),
                key: "key.pem".into(),
            });
        }
        c
    }

    #[test]
    fn sigv4_scopes_name_bedrock_and_an_accepted_region() {
        let auth = Auth::new(&signed_config(false));
        let refused = |h: &HeaderMap| auth.admit_headers(h).err().map(|e| e.message);
        // The upstream `sim` signs for us-east-2 (the default region).
        assert_eq!(
            refused(&sigv4_headers("AKIDKNOWN", "us-east-2", "bedrock", &[])),
            None
        );
        assert!(refused(&sigv4_headers("AKIDKNOWN", "us-east-2", "s3", &[]))
            .unwrap()
            .contains("scoped to correct service: 'bedrock'"));
        assert!(
            refused(&sigv4_headers("AKIDKNOWN", "eu-west-1", "bedrock", &[]))
                .unwrap()
                .contains(
                    "scoped to a valid region, not 'eu-west-1'; this proxy accepts us-east-2"
                )
        );
        let mut listed = signed_config(false);
        listed.server.sigv4_regions = Some(vec!["eu-west-1".into()]);
        let auth = Auth::new(&listed);
        assert!(auth
            .admit_headers(&sigv4_headers("AKIDKNOWN", "eu-west-1", "bedrock", &[]))
            .is_ok());
    }

    #[test]
    fn unsigned_payloads_are_refused_over_plain_http_only() {
        let unsigned = sigv4_headers(
            "AKIDKNOWN",
            "us-east-2",
            "bedrock",
            &[("x-amz-content-sha256", "UNSIGNED-PAYLOAD")],
        );
        let e = Auth::new(&signed_config(false))
            .admit_headers(&unsigned)
            .err()
            .unwrap();
        assert!(e
            .message
            .contains("UNSIGNED-PAYLOAD is accepted over HTTPS only"));
        assert!(Auth::new(&signed_config(true))
            .admit_headers(&unsigned)
            .is_ok());
    }

    #[test]
    fn an_unknown_key_and_a_wrong_signature_get_one_answer() {
        let auth = Auth::new(&signed_config(false));
        let unknown = auth
            .authenticate(
                "POST",
                "/",
                &sigv4_headers("AKIDNOBODY", "us-east-2", "bedrock", &[]),
                b"",
            )
            .unwrap_err();
        let wrong = auth
            .authenticate(
                "POST",
                "/",
                &sigv4_headers("AKIDKNOWN", "us-east-2", "bedrock", &[]),
                b"",
            )
            .unwrap_err();
        assert_eq!(unknown.message, wrong.message);
        assert_eq!(unknown.kind, wrong.kind);
        assert!(!unknown.message.contains("AKIDNOBODY"));
    }

    #[test]
    fn authorization_schemes_are_case_insensitive() {
        let auth = Auth::new(&config(""));
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let p = auth
                .authenticate(
                    "POST",
                    "/",
                    &headers(&[("authorization", &format!("{scheme} good-key"))]),
                    b"",
                )
                .unwrap();
            assert_eq!(&*p.tenant, "t1");
        }
        assert!(auth
            .authenticate(
                "POST",
                "/",
                &headers(&[("authorization", "Bearergood-key")]),
                b""
            )
            .is_err());
        let signed = Auth::new(&signed_config(false));
        let mut lower = sigv4_headers("AKIDKNOWN", "us-east-2", "bedrock", &[]);
        let value = lower["authorization"]
            .to_str()
            .unwrap()
            .replace("AWS4-HMAC-SHA256", "aws4-hmac-sha256");
        lower.insert("authorization", HeaderValue::from_str(&value).unwrap());
        assert!(
            signed.admit_headers(&lower).is_ok(),
            "a lowercase SigV4 scheme parses"
        );
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
