//! `[responses]`: the stored Responses of the OpenAI Responses API (`store`,
//! `previous_response_id`, `GET /v1/responses/{id}`): how long each is kept
//! and how many bytes of them the process holds.

use serde::Deserialize;
use std::time::Duration;

use crate::config::values::duration_or;

/// The stored-responses store.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesConfig {
    /// How long a stored response can be read or continued (in process and in
    /// Redis).
    pub ttl: Duration,
    /// The in-process store's capacity, in bytes of stored responses (least
    /// recently used go first).
    pub max_bytes: u64,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        ResponsesConfig {
            // OpenAI keeps stored responses 30 days.
            ttl: Duration::from_secs(30 * 24 * 3600),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResponses {
    ttl: Option<String>,
    max_bytes: Option<u64>,
}

pub(super) fn validate(raw: RawResponses, e: &mut Vec<String>) -> ResponsesConfig {
    let d = ResponsesConfig::default();
    let ttl = duration_or("responses.ttl", raw.ttl, d.ttl, e);
    if ttl < Duration::from_secs(1) {
        e.push("responses.ttl: must be at least 1s".into());
    }
    let max_bytes = raw.max_bytes.unwrap_or(d.max_bytes);
    if max_bytes < 1024 {
        // Smaller, not one response with its input would fit.
        e.push(format!(
            "responses.max_bytes: must be at least 1024, got {max_bytes}"
        ));
    }
    ResponsesConfig { ttl, max_bytes }
}
