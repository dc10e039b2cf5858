//! Reading a request body within the limits: size (declared and actual),
//! deadlines (the whole body within `server.body_timeout`, and at least
//! `server.body_min_rate` bytes a second after `server.body_rate_grace`), the
//! proxy-wide budget of body bytes in memory, UTF-8, JSON nesting depth, and an
//! object at the top, each refused with a clear message before anything else
//! reads the body.

use axum::body::Body;
use axum::http::HeaderMap;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::time::Instant;

use crate::budget::{BodyBudget, Reservation};
use crate::config::{Connections, Limits};
use crate::error::ProxyError;
pub use crate::json_body::parse_json;

/// What bounds one body read.
pub struct BodyRules<'a> {
    pub limits: &'a Limits,
    pub connections: &'a Connections,
    /// The proxy-wide budget (`None`: not counted, as in unit tests).
    pub budget: Option<&'a BodyBudget>,
}

/// Bodies without a declared length reserve budget in steps of this, so a
/// stream of small chunks does not touch the shared count for each.
const RESERVE_STEP: usize = 256 * 1024;

/// The time by which a body that has delivered `received` bytes must have
/// delivered more: the total deadline, or sooner when it is behind the
/// minimum rate (mod_reqtimeout's rule: a grace, then one second per
/// `min_rate` bytes).
fn next_deadline(start: Instant, received: usize, c: &Connections) -> (Instant, bool) {
    let total = start + c.body_timeout;
    if c.body_min_rate == 0 {
        return (total, false);
    }
    let earned = Duration::from_secs_f64(received as f64 / c.body_min_rate as f64);
    let by_rate = start + c.body_rate_grace + earned;
    if by_rate < total {
        (by_rate, true)
    } else {
        (total, false)
    }
}

/// Reads a request body, refusing it as soon as it passes
/// `limits.max_body_bytes`, does not fit the budget of bytes in flight, or
/// misses a deadline. Returns the bytes and what they hold of the budget
/// (to keep until the request is done).
pub async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    rules: &BodyRules<'_>,
) -> Result<(Bytes, Option<Reservation>), ProxyError> {
    let max = rules.limits.max_body_bytes;
    let budget_limit = rules.limits.max_inflight_body_bytes;
    let too_large = || {
        ProxyError::too_large(format!(
            "The request body is larger than this proxy's limit of {max} bytes."
        ))
    };
    let over_budget = || {
        ProxyError::overloaded(
            "The proxy is holding as many request bodies as it may (limits.max_inflight_body_bytes); retry shortly.",
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let declared = declared.and_then(|n| usize::try_from(n).ok());
    let mut reservation = match rules.budget {
        Some(budget) => Some(
            budget
                .reserve(declared.unwrap_or(0), budget_limit)
                .ok_or_else(over_budget)?,
        ),
        None => None,
    };
    let start = Instant::now();
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut received = 0usize;
    loop {
        let (deadline, by_rate) = next_deadline(start, received, rules.connections);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                let c = rules.connections;
                return Err(ProxyError::request_timeout(if by_rate {
                    format!(
                        "The request body arrived slower than this proxy's minimum of {} bytes per second ({received} bytes in {:.1}s); it was not read.",
                        c.body_min_rate,
                        start.elapsed().as_secs_f64()
                    )
                } else {
                    format!(
                        "The request body did not arrive within {:?} ({received} bytes read); it was not read.",
                        c.body_timeout
                    )
                }));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ProxyError::validation(format!(
                    "The request body could not be read: {e}"
                )))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        received = received.saturating_add(data.len());
        if received > max {
            return Err(too_large());
        }
        if let Some(r) = reservation.as_mut() {
            if received > r.bytes() {
                let step = received.max(r.bytes() + RESERVE_STEP).min(max);
                if !r.grow_to(step, budget_limit) && !r.grow_to(received, budget_limit) {
                    return Err(over_budget());
                }
            }
        }
        // One chunk is kept as it came; more are gathered in one buffer sized
        // from the declared length, so a body is copied at most once.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
            Some(f) => {
                buf.reserve(declared.unwrap_or(0).max(f.len() + data.len()));
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
        }
    }
    let bytes = first.unwrap_or_else(|| buf.freeze());
    Ok((bytes, reservation))
}
