//! `[limits]`: what protects the proxy from large, deep or too many requests,
//! and how long it waits on slow clients and at shutdown.

use serde::Deserialize;
use std::time::Duration;

use super::values::duration_or;

/// Protective limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_concurrent_requests: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Bedrock's own InvokeModel limit.
            max_body_bytes: 25_000_000,
            max_json_depth: 64,
            max_concurrent_requests: 1024,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The largest JSON depth serde_json can parse.
const SERDE_DEPTH_LIMIT: usize = 127;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_body_bytes: Option<usize>,
    max_json_depth: Option<usize>,
    max_concurrent_requests: Option<usize>,
    header_read_timeout: Option<String>,
    shutdown_grace: Option<String>,
}

pub(super) fn validate(raw: RawLimits, e: &mut Vec<String>) -> Limits {
    let d = Limits::default();
    let max_json_depth = raw.max_json_depth.unwrap_or(d.max_json_depth);
    if max_json_depth == 0 || max_json_depth > SERDE_DEPTH_LIMIT {
        e.push(format!(
            "limits.max_json_depth: must be between 1 and {SERDE_DEPTH_LIMIT}"
        ));
    }
    Limits {
        max_body_bytes: raw.max_body_bytes.unwrap_or(d.max_body_bytes),
        max_json_depth,
        // 0 would shed every request; read it as the smallest working limit.
        max_concurrent_requests: raw
            .max_concurrent_requests
            .unwrap_or(d.max_concurrent_requests)
            .max(1),
        header_read_timeout: duration_or(
            "limits.header_read_timeout",
            raw.header_read_timeout,
            d.header_read_timeout,
            e,
        ),
        shutdown_grace: duration_or(
            "limits.shutdown_grace",
            raw.shutdown_grace,
            d.shutdown_grace,
            e,
        ),
    }
}
