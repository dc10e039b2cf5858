//! The latency planner: which tier (`performanceConfig.latency`) each upstream
//! attempt asks Bedrock for. A route says `optimized`, `standard` or `client`
//! (keep what the request asked); the model catalog says where latency-optimized
//! inference can work (these models, in these regions, through inference
//! profiles). Where it cannot, the proxy sends `standard` instead of a request
//! bound to fail, and says why.

use axum::http::{HeaderName, HeaderValue};
use bedrock_wire::tier::{LatencyTier, LATENCY_HEADER};
use serde_json::{json, Value};

use crate::catalog::Lookup;
use crate::config::LatencyPolicy;

/// Why `optimized` was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downgrade {
    /// The model is not in the catalog.
    UnknownModel,
    /// The model has no latency-optimized version.
    Model,
    /// Not in this upstream's region.
    Region,
    /// Only served through inference profiles, and this is a base model id.
    NotProfile,
}

impl Downgrade {
    pub fn label(self) -> &'static str {
        match self {
            Downgrade::UnknownModel => "unknown_model",
            Downgrade::Model => "model_unsupported",
            Downgrade::Region => "region_unsupported",
            Downgrade::NotProfile => "not_inference_profile",
        }
    }
}

/// The downgrade label of an `optimized` ask dropped because the attempt
/// sends the flex service tier (see `service_tier.rs`).
pub const FLEX_DOWNGRADE: &str = "service_tier_flex";

/// The tier decided for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TierPlan {
    /// What to send, or `None` to leave the request as it is.
    pub send: Option<LatencyTier>,
    /// Set when `optimized` was wanted and is not possible here.
    pub downgraded: Option<Downgrade>,
}

/// Whether latency-optimized inference can serve `model` in `region`.
pub fn optimized_possible(model: Option<&Lookup>, region: &str) -> Result<(), Downgrade> {
    let lookup = model.ok_or(Downgrade::UnknownModel)?;
    let info = &lookup.model;
    if info.optimized_regions.is_empty() {
        return Err(Downgrade::Model);
    }
    if !info.optimized_regions.iter().any(|r| r == region) {
        return Err(Downgrade::Region);
    }
    if !lookup.via_profile {
        return Err(Downgrade::NotProfile);
    }
    Ok(())
}

/// The tier a route wants for a request: its policy applied to what the
/// client asked (nothing asked is Bedrock's default, standard), before the
/// catalog or a fallback has a say. Metrics compare it with the tier served.
pub fn wanted(policy: LatencyPolicy, requested: Option<LatencyTier>) -> LatencyTier {
    match policy {
        LatencyPolicy::Optimized => LatencyTier::Optimized,
        LatencyPolicy::Standard => LatencyTier::Standard,
        LatencyPolicy::Client => requested.unwrap_or(LatencyTier::Standard),
    }
}

/// Decides the tier of one attempt. `requested` is what the client asked.
pub fn plan(
    policy: LatencyPolicy,
    requested: Option<LatencyTier>,
    model: Option<&Lookup>,
    region: &str,
) -> TierPlan {
    let wants_optimized = match policy {
        LatencyPolicy::Optimized => true,
        LatencyPolicy::Standard => false,
        LatencyPolicy::Client => requested == Some(LatencyTier::Optimized),
    };
    if !wants_optimized {
        return TierPlan {
            send: match policy {
                LatencyPolicy::Standard => Some(LatencyTier::Standard),
                _ => None,
            },
            downgraded: None,
        };
    }
    match optimized_possible(model, region) {
        Ok(()) => TierPlan {
            send: Some(LatencyTier::Optimized),
            downgraded: None,
        },
        Err(reason) => TierPlan {
            send: Some(LatencyTier::Standard),
            downgraded: Some(reason),
        },
    }
}

/// Puts the tier into a Converse body (other `performanceConfig` members stay).
pub fn apply_converse(body: &mut Value, tier: LatencyTier) {
    let tier = tier.name();
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    match obj
        .get_mut("performanceConfig")
        .and_then(Value::as_object_mut)
    {
        Some(config) => {
            config.insert("latency".into(), tier.into());
        }
        None => {
            obj.insert("performanceConfig".into(), json!({ "latency": tier }));
        }
    }
}

/// Puts the tier into InvokeModel's headers.
pub fn apply_invoke(headers: &mut Vec<(HeaderName, HeaderValue)>, tier: LatencyTier) {
    headers.retain(|(k, _)| k != LATENCY_HEADER);
    headers.push((
        HeaderName::from_static(LATENCY_HEADER),
        HeaderValue::from_static(tier.name()),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn the_catalog_decides_where_optimized_works() {
        let c = Catalog::embedded();
        let haiku = c.get("us.anthropic.claude-3-5-haiku-20241022-v1:0");
        assert_eq!(optimized_possible(haiku, "us-east-2"), Ok(()));
        assert_eq!(
            optimized_possible(haiku, "eu-west-1"),
            Err(Downgrade::Region)
        );
        let base = c.get("anthropic.claude-3-5-haiku-20241022-v1:0");
        assert_eq!(
            optimized_possible(base, "us-east-2"),
            Err(Downgrade::NotProfile)
        );
        let sonnet = c.get("us.anthropic.claude-3-7-sonnet-20250219-v1:0");
        assert_eq!(
            optimized_possible(sonnet, "us-east-2"),
            Err(Downgrade::Model)
        );
        assert_eq!(
            optimized_possible(None, "us-east-2"),
            Err(Downgrade::UnknownModel)
        );
    }

    #[test]
    fn policies() {
        let c = Catalog::embedded();
        let haiku = c.get("us.anthropic.claude-3-5-haiku-20241022-v1:0");
        let sonnet = c.get("us.anthropic.claude-3-7-sonnet-20250219-v1:0");
        assert_eq!(
            plan(LatencyPolicy::Optimized, None, haiku, "us-east-2").send,
            Some(LatencyTier::Optimized)
        );
        let down = plan(LatencyPolicy::Optimized, None, sonnet, "us-east-2");
        assert_eq!(
            down,
            TierPlan {
                send: Some(LatencyTier::Standard),
                downgraded: Some(Downgrade::Model)
            }
        );
        assert_eq!(
            plan(
                LatencyPolicy::Standard,
                Some(LatencyTier::Optimized),
                haiku,
                "us-east-2"
            )
            .send,
            Some(LatencyTier::Standard)
        );
        assert_eq!(
            plan(LatencyPolicy::Client, None, haiku, "us-east-2"),
            TierPlan::default()
        );
        assert_eq!(
            plan(
                LatencyPolicy::Client,
                Some(LatencyTier::Optimized),
                haiku,
                "us-east-2"
            )
            .send,
            Some(LatencyTier::Optimized)
        );
        let doomed = plan(
            LatencyPolicy::Client,
            Some(LatencyTier::Optimized),
            sonnet,
            "us-east-2",
        );
        assert_eq!(
            doomed.send,
            Some(LatencyTier::Standard),
            "a request bound to fail is never sent"
        );
    }

    #[test]
    fn the_tier_wanted_is_the_policy_applied_to_the_clients_ask() {
        use LatencyPolicy::*;
        use LatencyTier::{Optimized as Opt, Standard as Std};
        for (policy, asked, wanted_tier) in [
            (Optimized, None, Opt),
            (Optimized, Some(Std), Opt),
            (Standard, Some(Opt), Std),
            (Client, Some(Opt), Opt),
            (Client, Some(Std), Std),
            (Client, None, Std),
        ] {
            assert_eq!(wanted(policy, asked), wanted_tier, "{policy:?} {asked:?}");
        }
    }

    #[test]
    fn tiers_are_written_where_bedrock_reads_them() {
        let mut body =
            json!({"messages": [], "performanceConfig": {"latency": "standard", "future": 1}});
        apply_converse(&mut body, LatencyTier::Optimized);
        assert_eq!(
            body["performanceConfig"],
            json!({"latency": "optimized", "future": 1})
        );
        let mut fresh = json!({"messages": []});
        apply_converse(&mut fresh, LatencyTier::Standard);
        assert_eq!(fresh["performanceConfig"]["latency"], "standard");
        let mut headers = vec![(
            HeaderName::from_static(LATENCY_HEADER),
            HeaderValue::from_static("optimized"),
        )];
        apply_invoke(&mut headers, LatencyTier::Standard);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].1, "standard");
    }
}
