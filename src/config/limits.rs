//! `[limits]`: what protects the proxy from large, deep or too many requests,
//! and how long it waits on slow clients and at shutdown; and how the rate
//! limits and budgets of tenants, keys and routes are counted (the limits
//! themselves are in those tables: `tenants.rs`).

use serde::Deserialize;
use std::time::Duration;

use super::names::choose;
use super::values::duration_or;

named_enum! {
    /// What a replica does while the shared counters (Redis) are unreachable:
    /// it counts locally either way; `open` admits by its local counts,
    /// `closed` refuses requests that a limit applies to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SharedFailure {
        Open = "open",
        Closed = "closed",
    }
}

named_enum! {
    /// The clock rate windows and budget days are read from: `system`, or
    /// `manual` (starts at the current UTC hour and moves only when
    /// `POST /admin/clock` says so; for tests and demos).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum LimitsClock {
        System = "system",
        Manual = "manual",
    }
}

/// Protective limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_concurrent_requests: usize,
    /// Request-body bytes all requests together may hold in memory.
    pub max_inflight_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub on_shared_failure: SharedFailure,
    /// The output tokens a request is assumed to ask for when it names no
    /// maximum (`maxTokens`), for `tokens_per_minute` admission.
    pub output_tokens_estimate: u32,
    pub clock: LimitsClock,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Bedrock's own InvokeModel limit.
            max_body_bytes: 25_000_000,
            max_json_depth: 64,
            max_concurrent_requests: 1024,
            max_inflight_body_bytes: 256 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            on_shared_failure: SharedFailure::Open,
            output_tokens_estimate: 1024,
            clock: LimitsClock::System,
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
    max_inflight_body_bytes: Option<usize>,
    header_read_timeout: Option<String>,
    shutdown_grace: Option<String>,
    on_shared_failure: Option<String>,
    output_tokens_estimate: Option<u32>,
    clock: Option<String>,
}

pub(super) fn validate(raw: RawLimits, e: &mut Vec<String>) -> Limits {
    let d = Limits::default();
    let max_json_depth = raw.max_json_depth.unwrap_or(d.max_json_depth);
    if max_json_depth == 0 || max_json_depth > SERDE_DEPTH_LIMIT {
        e.push(format!(
            "limits.max_json_depth: must be between 1 and {SERDE_DEPTH_LIMIT}"
        ));
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(d.max_body_bytes);
    let max_inflight_body_bytes = raw
        .max_inflight_body_bytes
        .unwrap_or(d.max_inflight_body_bytes.max(max_body_bytes));
    if max_inflight_body_bytes < max_body_bytes {
        e.push(format!(
            "limits.max_inflight_body_bytes: must be at least limits.max_body_bytes ({max_body_bytes}), or no body of the largest size could ever be read"
        ));
    }
    Limits {
        max_body_bytes,
        max_json_depth,
        // 0 would shed every request; read it as the smallest working limit.
        max_concurrent_requests: raw
            .max_concurrent_requests
            .unwrap_or(d.max_concurrent_requests)
            .max(1),
        max_inflight_body_bytes,
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
        on_shared_failure: raw
            .on_shared_failure
            .and_then(|v| choose("limits.on_shared_failure", &v, SharedFailure::NAMES, e))
            .unwrap_or(d.on_shared_failure),
        output_tokens_estimate: raw
            .output_tokens_estimate
            .unwrap_or(d.output_tokens_estimate),
        clock: raw
            .clock
            .and_then(|v| choose("limits.clock", &v, LimitsClock::NAMES, e))
            .unwrap_or(d.clock),
    }
}
