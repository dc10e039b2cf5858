//! Bedrock's two tier dimensions, as closed sets with one table of names each:
//! the latency tier (`performanceConfig.latency`, InvokeModel's
//! `X-Amzn-Bedrock-PerformanceConfig-Latency` header) and the service tier
//! (`serviceTier.type`, InvokeModel's `X-Amzn-Bedrock-Service-Tier` header).
//! The proxy, the simulator and the benchmark parse and label tiers only here.

use serde::{Deserialize, Serialize};

/// InvokeModel's request and response header for the latency tier.
pub const LATENCY_HEADER: &str = "x-amzn-bedrock-performanceconfig-latency";
/// InvokeModel's request and response header for the service tier.
pub const SERVICE_TIER_HEADER: &str = "x-amzn-bedrock-service-tier";

/// A latency tier (`performanceConfig.latency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyTier {
    Standard,
    Optimized,
}

impl LatencyTier {
    /// Every latency tier, in the order Bedrock's API model lists them.
    pub const ALL: [LatencyTier; 2] = [LatencyTier::Standard, LatencyTier::Optimized];

    /// The wire name (also the metric label).
    pub fn name(self) -> &'static str {
        match self {
            LatencyTier::Standard => "standard",
            LatencyTier::Optimized => "optimized",
        }
    }

    /// The tier of a wire name; `None` for anything else.
    pub fn parse(name: &str) -> Option<LatencyTier> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl std::fmt::Display for LatencyTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A service tier (`serviceTier.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceTier {
    Priority,
    Default,
    Flex,
    Reserved,
}

impl ServiceTier {
    /// Every service tier, in the order Bedrock's API model lists them.
    pub const ALL: [ServiceTier; 4] = [
        ServiceTier::Priority,
        ServiceTier::Default,
        ServiceTier::Flex,
        ServiceTier::Reserved,
    ];

    /// The wire name (also the metric label).
    pub fn name(self) -> &'static str {
        match self {
            ServiceTier::Priority => "priority",
            ServiceTier::Default => "default",
            ServiceTier::Flex => "flex",
            ServiceTier::Reserved => "reserved",
        }
    }

    /// The tier of a wire name; `None` for anything else.
    pub fn parse(name: &str) -> Option<ServiceTier> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl std::fmt::Display for ServiceTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in LatencyTier::ALL {
            assert_eq!(LatencyTier::parse(t.name()), Some(t));
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.name())
            );
        }
        for t in ServiceTier::ALL {
            assert_eq!(ServiceTier::parse(t.name()), Some(t));
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.name())
            );
        }
        assert_eq!(LatencyTier::parse("Optimized"), None);
        assert_eq!(ServiceTier::parse("standard"), None);
    }

    #[test]
    fn service_tiers_match_the_api_model() {
        let model = include_str!("../../reference/bedrock-runtime-service-2.json");
        let api: serde_json::Value = serde_json::from_str(model).unwrap();
        let names: Vec<&str> = api["shapes"]["ServiceTierType"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for t in ServiceTier::ALL {
            assert!(names.contains(&t.name()), "{t} is not in {names:?}");
        }
        let latency: Vec<&str> = api["shapes"]["PerformanceConfigLatency"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(latency, ["standard", "optimized"]);
    }
}
