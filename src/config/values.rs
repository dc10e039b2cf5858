//! How single values are read, the same way in every section: `${VAR}`
//! expansion, durations, listen addresses, names, SHA-256 hex. Each reader
//! takes the key path it reports problems under and carries on after one, so
//! a config's problems are all reported at once.

use std::net::SocketAddr;
use std::time::Duration;

/// Expands `${VAR}` and `${VAR:-default}` in `value`; `key` names the setting in errors.
pub(super) fn expand_env(key: &str, value: &str, errors: &mut Vec<String>) -> String {
    expand_env_with(key, value, errors, |name| std::env::var(name).ok())
}

pub(super) fn expand_env_with(
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
pub(super) fn parse_duration(key: &str, value: &str, errors: &mut Vec<String>) -> Duration {
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

/// The duration written at `key`, or `default` when the key is absent.
pub(super) fn duration_or(
    key: &str,
    value: Option<String>,
    default: Duration,
    errors: &mut Vec<String>,
) -> Duration {
    optional_duration(key, value, errors).unwrap_or(default)
}

/// The duration written at `key`, if any.
pub(super) fn optional_duration(
    key: &str,
    value: Option<String>,
    errors: &mut Vec<String>,
) -> Option<Duration> {
    value.map(|v| parse_duration(key, &v, errors))
}

/// The listen address written at `key`, or `default` when the key is absent.
pub(super) fn listen_addr(
    key: &str,
    value: Option<String>,
    default: SocketAddr,
    errors: &mut Vec<String>,
) -> SocketAddr {
    let Some(text) = value else {
        return default;
    };
    text.parse().unwrap_or_else(|_| {
        errors.push(format!(
            "{key}: `{text}` is not an address like 127.0.0.1:8080"
        ));
        default
    })
}

/// The cache namespace of `shared = true` routes, which no tenant may take.
pub(super) const SHARED_NAMESPACE: &str = "shared";

/// Checks a route or tenant name: what metrics labels, logs and cache keys can
/// carry. `:` separates the parts of a shared-cache key
/// (`{tenant}:{route}:{hash}`), so a name holding it could pass for another's
/// entries (`a` and `a:b`); it is refused.
pub(super) fn check_name(key: &str, name: &str, errors: &mut Vec<String>) {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        errors.push(format!(
            "{key}: `{name}` must be non-empty letters, digits, - _ . (no `:`: it separates the parts of cache keys)"
        ));
    }
}

/// A SHA-256 written as hex (after `${VAR}` expansion), as `bedrock-proxy hash-key` prints it.
pub(super) fn sha256_hex(key: &str, value: &str, errors: &mut Vec<String>) -> [u8; 32] {
    let hex_text = expand_env(key, value, errors);
    let mut sha256 = [0u8; 32];
    if hex::decode_to_slice(hex_text.trim(), &mut sha256).is_err() {
        errors.push(format!(
            "{key}: must be 64 hex characters (run `bedrock-proxy hash-key`)"
        ));
    }
    sha256
}
