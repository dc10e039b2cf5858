//! Who is calling: a SigV4-signed request (checked against configured key pairs
//! when there are any) or a Bedrock API key sent as a bearer token. A streamed
//! upload (the bidirectional stream) is checked from its headers alone. The identity
//! returned scopes the prompt cache, as Bedrock's is scoped to the account.
//! SageMaker Runtime takes SigV4 only, for its own signing name.

use axum::http::HeaderMap;
use bedrock_wire::sigv4::{self, VerifyError};
use sha2::{Digest, Sha256};
use std::time::SystemTime;

use crate::config::SimConfig;
use crate::error::SimError;

/// The caller's identity, or the error AWS would answer with.
pub fn authenticate(
    config: &SimConfig,
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, SimError> {
    check(config, method, uri, headers, Some(body))
}

/// [`authenticate`] for a request whose body is a stream still arriving (the
/// bidirectional stream): the signature is checked over the headers; the
/// frames' own chunk signatures are not verified.
pub fn authenticate_headers(
    config: &SimConfig,
    method: &str,
    uri: &str,
    headers: &HeaderMap,
) -> Result<String, SimError> {
    check(config, method, uri, headers, None)
}

fn check(
    config: &SimConfig,
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<String, SimError> {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(SimError::missing_authentication());
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        let token = token.trim();
        if token.is_empty() {
            return Err(SimError::missing_authentication());
        }
        if !config.bearer_tokens.is_empty() && !config.bearer_tokens.iter().any(|t| t == token) {
            return Err(SimError::unrecognized_client());
        }
        let digest = Sha256::digest(token.as_bytes());
        return Ok(format!("bearer:{}", hex::encode(&digest[..8])));
    }
    sigv4_identity(config, "bedrock", value, method, uri, headers, body)
}

/// The access key of a request signed with SigV4 for `service` (the value of
/// its `Authorization` header), checked against the configured key pairs when
/// there are any; or the error AWS would answer with. Without a `body` (a
/// stream still arriving) the signature is checked over the headers alone.
pub fn sigv4_identity(
    config: &SimConfig,
    service: &str,
    value: &str,
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<String, SimError> {
    let auth = sigv4::parse_authorization(value).ok_or_else(|| SimError {
        status: axum::http::StatusCode::FORBIDDEN,
        type_name: "IncompleteSignatureException",
        message: format!("Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters. Authorization={value}"),
    })?;
    if auth.service != service {
        return Err(SimError::invalid_signature(format!(
            "Credential should be scoped to correct service: '{service}'."
        )));
    }
    if !config.credentials.is_empty() {
        let cred = config
            .credentials
            .iter()
            .find(|c| c.access_key_id == auth.access_key_id)
            .ok_or_else(SimError::unrecognized_client)?;
        if let Some(token) = &cred.session_token {
            let sent = headers
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok());
            if sent != Some(token.as_str()) {
                return Err(SimError::unrecognized_client());
            }
        }
        if auth.region != config.region {
            return Err(SimError::invalid_signature(format!(
                "Credential should be scoped to a valid region, not '{}'.",
                auth.region
            )));
        }
        let now = SystemTime::now();
        let verified = match body {
            Some(body) => sigv4::verify(
                &auth,
                &cred.secret_access_key,
                method,
                uri,
                headers,
                body,
                now,
            ),
            None => {
                sigv4::verify_headers(&auth, &cred.secret_access_key, method, uri, headers, now)
            }
        };
        verified.map_err(|e| match e {
                VerifyError::Mismatch => SimError::invalid_signature(
                    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
                ),
                other => SimError::invalid_signature(other.to_string()),
            })?;
    }
    Ok(format!("akid:{}", auth.access_key_id))
}
