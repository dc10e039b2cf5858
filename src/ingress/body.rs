//! Reading a request body within the limits: size (declared and actual),
//! UTF-8, JSON nesting depth, and an object at the top, each refused with a
//! clear message before anything else reads the body.

use axum::body::Body;
use axum::http::HeaderMap;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;

use crate::config::Limits;
use crate::error::ProxyError;

/// Reads a request body, refusing it as soon as it passes `limits.max_body_bytes`.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limits: &Limits,
) -> Result<Bytes, ProxyError> {
    let max = limits.max_body_bytes;
    let too_large = || {
        ProxyError::too_large(format!(
            "The request body is larger than this proxy's limit of {max} bytes."
        ))
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ProxyError::validation(format!(
            "The request body could not be read: {e}"
        ))),
    }
}

/// Whether JSON text nests arrays and objects deeper than `max` (strings and
/// escapes are skipped, so brackets inside strings do not count).
pub fn nesting_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses a JSON request body: valid UTF-8, nested at most `max_depth`, an object.
pub fn parse_json(bytes: &[u8], max_depth: usize) -> Result<Value, ProxyError> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ProxyError::validation(format!(
            "Malformed input request: the body is not valid UTF-8 (invalid byte at offset {}), please reformat your input and try again.",
            e.valid_up_to()
        )));
    }
    if nesting_exceeds(bytes, max_depth) {
        return Err(ProxyError::validation(format!(
            "Malformed input request: JSON is nested deeper than this proxy's limit of {max_depth} levels."
        )));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ProxyError::validation(format!(
            "Malformed input request: {e}, please reformat your input and try again."
        ))
    })?;
    if !value.is_object() {
        return Err(ProxyError::validation(
            "Malformed input request: the body must be a JSON object.",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert!(!nesting_exceeds(br#"{"a":[{"b":1}]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[{"b":[1]}]}"#, 3));
        assert!(!nesting_exceeds(br#"{"a":"[[[[[[[[\"[[["}"#, 1));
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert!(nesting_exceeds(deep.as_bytes(), 64));
    }

    #[test]
    fn bad_bodies_get_clear_messages() {
        let e = parse_json(b"{\"a\": \"\xff\"}", 64).unwrap_err();
        assert!(e.message.contains("UTF-8"), "{}", e.message);
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert!(parse_json(deep.as_bytes(), 64)
            .unwrap_err()
            .message
            .contains("nested deeper"));
        assert!(parse_json(b"{oops", 64)
            .unwrap_err()
            .message
            .contains("Malformed input request"));
        assert!(parse_json(b"[1]", 64)
            .unwrap_err()
            .message
            .contains("JSON object"));
        assert!(parse_json(br#"{"messages":[]}"#, 64).is_ok());
    }
}
