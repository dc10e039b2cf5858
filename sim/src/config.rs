//! The simulator's settings: TOML file, overridden by command-line flags.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::guardrail::GuardrailConfig;

/// A key pair whose SigV4 signatures the simulator verifies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCredential {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Everything that shapes the simulated Bedrock.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Where the binary listens (the library takes a listener instead).
    pub listen: SocketAddr,
    /// The simulated AWS region; decides where latency-optimized inference works.
    pub region: String,
    /// Multiplies every simulated delay; 0 answers as fast as possible.
    pub time_scale: f64,
    /// Makes answers deterministic at any temperature.
    pub seed: Option<u64>,
    /// Random spread of each delay, as a fraction (0.1 = plus or minus 10%).
    pub jitter: f64,
    /// Latency-optimized requests per minute per model; past it, requests are
    /// served standard, as Bedrock does past its quota. None: no quota.
    pub optimized_rpm: Option<u32>,
    /// Flex service-tier requests per minute per model; past it, flex requests
    /// are throttled (ThrottlingException). None: no quota.
    pub flex_rpm: Option<u32>,
    /// Models (base or profile ids) the simulated account holds a Reserved-tier
    /// reservation for; `serviceTier = reserved` elsewhere is refused.
    pub reserved: Vec<String>,
    /// The simulated AWS account: it appears in the ARNs the simulator makes.
    pub account_id: String,
    /// Guardrails the simulated account has (`[[guardrails]]`); by default the
    /// demo guardrail `demoguardrail`, which blocks the word `forbidden`.
    pub guardrails: Vec<GuardrailConfig>,
    /// A bidirectional stream that sends nothing for this long ends with a
    /// modelTimeoutException, in seconds (not scaled by `time_scale`).
    pub bidi_idle_timeout_s: f64,
    /// Largest request body accepted (Bedrock's own limit is 25,000,000 bytes).
    pub max_body_bytes: usize,
    /// A catalog file replacing the embedded one.
    pub catalog: Option<PathBuf>,
    /// How many received requests `/_sim/requests` remembers.
    pub request_log: usize,
    /// When set, SigV4 requests must be signed with one of these key pairs.
    pub credentials: Vec<StaticCredential>,
    /// When set, bearer tokens must be one of these.
    pub bearer_tokens: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            region: "us-east-2".into(),
            time_scale: 1.0,
            seed: None,
            jitter: 0.1,
            optimized_rpm: None,
            flex_rpm: None,
            reserved: Vec::new(),
            account_id: "123456789012".into(),
            guardrails: vec![GuardrailConfig::demo()],
            bidi_idle_timeout_s: 60.0,
            max_body_bytes: 25_000_000,
            catalog: None,
            request_log: 1000,
            credentials: Vec::new(),
            bearer_tokens: Vec::new(),
        }
    }
}

impl SimConfig {
    /// Parses a TOML config; unknown keys are errors that name the key.
    pub fn parse(text: &str) -> Result<SimConfig, String> {
        let config: SimConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.time_scale >= 0.0 && self.time_scale.is_finite()) {
            return Err(format!(
                "time_scale must be 0 or more, got {}",
                self.time_scale
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(format!("jitter must be in [0, 1), got {}", self.jitter));
        }
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "account_id must be 12 digits, got {:?}",
                self.account_id
            ));
        }
        if !(self.bidi_idle_timeout_s > 0.0 && self.bidi_idle_timeout_s.is_finite()) {
            return Err(format!(
                "bidi_idle_timeout_s must be more than 0, got {}",
                self.bidi_idle_timeout_s
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for g in &self.guardrails {
            g.validate()?;
            if !ids.insert(g.id.as_str()) {
                return Err(format!("guardrail {} appears twice", g.id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let c = SimConfig::parse("region = \"us-west-2\"\ntime_scale = 0\noptimized_rpm = 5\n")
            .unwrap();
        assert_eq!(c.region, "us-west-2");
        assert_eq!(c.optimized_rpm, Some(5));
        let err = SimConfig::parse("regoin = \"x\"").unwrap_err();
        assert!(err.contains("regoin"), "{err}");
        assert!(SimConfig::parse("time_scale = -1").is_err());
        assert!(SimConfig::parse("account_id = \"12\"").is_err());
    }

    #[test]
    fn the_demo_guardrail_ships_and_config_replaces_it() {
        let d = SimConfig::default();
        assert_eq!(d.guardrails.len(), 1);
        assert_eq!(d.guardrails[0].id, "demoguardrail");
        assert_eq!(d.guardrails[0].versions, ["DRAFT", "1"]);
        let c = SimConfig::parse(
            "flex_rpm = 3\nreserved = [\"amazon.nova-pro-v1:0\"]\n[[guardrails]]\nid = \"g1\"\nwords = [\"secret plan\"]\n",
        )
        .unwrap();
        assert_eq!(c.flex_rpm, Some(3));
        assert_eq!(c.guardrails.len(), 1);
        assert_eq!(c.guardrails[0].versions, ["DRAFT"]);
        let err = SimConfig::parse("[[guardrails]]\nid = \"Bad-Id\"\n").unwrap_err();
        assert!(err.contains("Bad-Id"), "{err}");
        let err =
            SimConfig::parse("[[guardrails]]\nid = \"g\"\nversions = [\"v2\"]\n").unwrap_err();
        assert!(err.contains("v2"), "{err}");
    }
}
