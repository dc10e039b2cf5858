//! Service tiers (`serviceTier.type` on Converse, `X-Amzn-Bedrock-Service-Tier`
//! on InvokeModel): which tier a request asked for, whether the model offers it
//! here, the flex quota, and how each tier changes the timing. Priority is
//! faster and steadier, flex slower and less steady; reserved runs like priority
//! on the account's reserved capacity.

use axum::http::HeaderMap;
use bedrock_wire::tier::{ServiceTier, SERVICE_TIER_HEADER};
use serde_json::Value;

use crate::catalog::{Model, Speed};
use crate::error::SimError;
use crate::SimState;

/// A request's service tier: the one asked for (`None`: the request named
/// none, and the answer will not name one either), defaulting to `default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested(pub Option<ServiceTier>);

impl Requested {
    /// The tier to serve: the one asked for, or `default`.
    pub fn tier(self) -> ServiceTier {
        self.0.unwrap_or(ServiceTier::Default)
    }
}

fn invalid() -> SimError {
    SimError::validation("service tier provided is invalid")
}

/// Reads `serviceTier: {type}` from a Converse body.
pub fn from_body(body: &Value) -> Result<Requested, SimError> {
    match body.get("serviceTier") {
        None | Some(Value::Null) => Ok(Requested(None)),
        Some(v) => {
            let name = v.get("type").and_then(Value::as_str).ok_or_else(invalid)?;
            ServiceTier::parse(name)
                .map(|t| Requested(Some(t)))
                .ok_or_else(invalid)
        }
    }
}

/// Reads InvokeModel's `X-Amzn-Bedrock-Service-Tier` header.
pub fn from_header(headers: &HeaderMap) -> Result<Requested, SimError> {
    match headers.get(SERVICE_TIER_HEADER) {
        None => Ok(Requested(None)),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(ServiceTier::parse)
            .map(|t| Requested(Some(t)))
            .ok_or_else(invalid),
    }
}

/// Refuses a tier the model does not offer in the simulated region, and
/// `reserved` without a reservation, as Bedrock does.
pub fn check(state: &SimState, model: &Model, tier: ServiceTier) -> Result<(), SimError> {
    let region = &state.config.region;
    match tier {
        ServiceTier::Default => Ok(()),
        ServiceTier::Reserved => {
            let reserved = state
                .config
                .reserved
                .iter()
                .any(|r| r == &model.id || model.profiles.iter().any(|p| p == r));
            if reserved {
                Ok(())
            } else {
                Err(SimError::validation("Reservation not found."))
            }
        }
        ServiceTier::Priority | ServiceTier::Flex => {
            if model.service_tiers.offers(tier, region) {
                Ok(())
            } else {
                Err(SimError::validation(format!(
                    "The service tier {tier} is not supported for the model {} in {region}. Try again with the default service tier.",
                    model.id
                )))
            }
        }
    }
}

/// Counts a flex request against `flex_rpm`; a ThrottlingException past it.
pub fn admit_flex(state: &SimState, model: &Model) -> Result<(), SimError> {
    let Some(rpm) = state.config.flex_rpm else {
        return Ok(());
    };
    if state.flex_quota.admit(&model.id, rpm, state.clock.now()) {
        return Ok(());
    }
    state.stats.flex_throttled();
    Err(SimError::modeled(
        bedrock_wire::error::ErrorType::Throttling,
        "Too many requests on the flex service tier, please wait before trying again or use the default service tier.",
    ))
}

/// How a tier changes an answer's timing: multipliers on time to first token
/// and on output speed, and on the jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierEffect {
    pub ttft: f64,
    pub tokens_per_s: f64,
    pub jitter: f64,
}

/// Priority: AWS quotes up to 25% more output tokens per second, and requests
/// jump the queue (a shorter, steadier wait for the first token). Flex: served
/// after everything else, so the first token waits much longer and output runs
/// slower and less evenly. Reserved capacity runs like priority.
pub fn effect(tier: ServiceTier) -> TierEffect {
    match tier {
        ServiceTier::Priority | ServiceTier::Reserved => TierEffect {
            ttft: 0.8,
            tokens_per_s: 1.25,
            jitter: 0.25,
        },
        ServiceTier::Default => TierEffect {
            ttft: 1.0,
            tokens_per_s: 1.0,
            jitter: 1.0,
        },
        ServiceTier::Flex => TierEffect {
            ttft: 2.5,
            tokens_per_s: 0.6,
            jitter: 2.5,
        },
    }
}

/// The speed and jitter of `tier`, from the latency tier's speed and the
/// configured jitter (kept below 1 so no delay turns negative).
pub fn adjust(speed: &Speed, jitter: f64, tier: ServiceTier) -> (Speed, f64) {
    let e = effect(tier);
    let speed = Speed {
        ttft_ms: speed.ttft_ms * e.ttft,
        prefill_us_per_token: speed.prefill_us_per_token * e.ttft,
        tokens_per_s: speed.tokens_per_s * e.tokens_per_s,
    };
    (speed, (jitter * e.jitter).min(0.95))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tiers_read_from_the_body_and_the_header() {
        assert_eq!(from_body(&json!({})).unwrap(), Requested(None));
        assert_eq!(
            from_body(&json!({"serviceTier": {"type": "flex"}})).unwrap(),
            Requested(Some(ServiceTier::Flex))
        );
        let err = from_body(&json!({"serviceTier": {"type": "cheapest"}})).unwrap_err();
        assert_eq!(err.message, "service tier provided is invalid");
        assert!(from_body(&json!({"serviceTier": "flex"})).is_err());
        let mut headers = HeaderMap::new();
        assert_eq!(from_header(&headers).unwrap(), Requested(None));
        headers.insert(SERVICE_TIER_HEADER, "priority".parse().unwrap());
        assert_eq!(from_header(&headers).unwrap().tier(), ServiceTier::Priority);
        headers.insert(SERVICE_TIER_HEADER, "gold".parse().unwrap());
        assert!(from_header(&headers).is_err());
    }

    #[test]
    fn priority_is_faster_and_steadier_and_flex_slower() {
        let speed = Speed {
            ttft_ms: 400.0,
            prefill_us_per_token: 100.0,
            tokens_per_s: 100.0,
        };
        let (p, pj) = adjust(&speed, 0.1, ServiceTier::Priority);
        let (d, dj) = adjust(&speed, 0.1, ServiceTier::Default);
        let (f, fj) = adjust(&speed, 0.1, ServiceTier::Flex);
        assert!(p.ttft_ms < d.ttft_ms && d.ttft_ms < f.ttft_ms);
        assert!(p.tokens_per_s > d.tokens_per_s && d.tokens_per_s > f.tokens_per_s);
        assert!(pj < dj && dj < fj);
        assert!(adjust(&speed, 0.9, ServiceTier::Flex).1 < 1.0);
    }
}
