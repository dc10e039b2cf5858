//! The simulator's settings: TOML file, overridden by command-line flags.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::guardrail::GuardrailConfig;
use crate::openai_face::OpenAiConfig;
use crate::sagemaker::SageMakerConfig;
use crate::selfhosted::{self, SelfHostedModel};

/// A key pair whose SigV4 signatures the simulator verifies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCredential {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Temporary credentials (a role's): every request signed with this key
    /// must carry this `x-amz-security-token`, as AWS requires.
    #[serde(default)]
    pub session_token: Option<String>,
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
    /// The most body bytes the request log keeps; the oldest go first.
    pub request_log_bytes: usize,
    /// When set, SigV4 requests must be signed with one of these key pairs.
    pub credentials: Vec<StaticCredential>,
    /// When set, bearer tokens must be one of these.
    pub bearer_tokens: Vec<String>,
    /// Models behind the OpenAI-compatible and SageMaker faces (`[[self_hosted]]`).
    pub self_hosted: Vec<SelfHostedModel>,
    /// The OpenAI-compatible face (`[openai]`).
    pub openai: OpenAiConfig,
    /// The SageMaker Runtime face (`[sagemaker]`).
    pub sagemaker: SageMakerConfig,
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
            request_log_bytes: 64 * 1024 * 1024,
            credentials: Vec::new(),
            bearer_tokens: Vec::new(),
            self_hosted: selfhosted::default_models(),
            openai: OpenAiConfig::default(),
            sagemaker: SageMakerConfig::default(),
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
        check_account_id("account_id", &self.account_id)?;
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
        if let Some(id) = &self.sagemaker.account_id {
            check_account_id("sagemaker.account_id", id)?;
        }
        selfhosted::validate_models(&self.self_hosted)?;
        self.sagemaker.validate(&self.self_hosted)?;
        Ok(())
    }

    /// The account SageMaker's endpoints belong to: `[sagemaker] account_id`,
    /// else the simulator's one account.
    pub fn sagemaker_account(&self) -> &str {
        self.sagemaker
            .account_id
            .as_deref()
            .unwrap_or(&self.account_id)
    }
}

fn check_account_id(key: &str, id: &str) -> Result<(), String> {
    if id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("{key} must be 12 digits, got {id:?}"))
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

    #[test]
    fn self_hosted_faces_are_configured_in_one_file() {
        let c = SimConfig::parse(
            r#"
[[self_hosted]]
id = "tiny"
context_tokens = 2048
speed = { ttft_ms = 10, prefill_us_per_token = 5, tokens_per_s = 200 }
stream_options = "reject"

[openai]
api_key = "sk-local"

[sagemaker]
account_id = "111122223333"
[[sagemaker.endpoints]]
name = "tiny-ep"
model = "tiny"
[[sagemaker.endpoints]]
name = "shared"
inference_components = { "tiny-ic" = "tiny" }
"#,
        )
        .unwrap();
        assert_eq!(c.self_hosted.len(), 1);
        assert_eq!(c.openai.api_key.as_deref(), Some("sk-local"));
        assert_eq!(c.sagemaker.endpoints.len(), 2);
        let err =
            SimConfig::parse("[[sagemaker.endpoints]]\nname = \"x\"\nmodel = \"not-served\"\n")
                .unwrap_err();
        assert!(err.contains("not-served"), "{err}");
        let err = SimConfig::parse("[openai]\napi_kye = \"x\"\n").unwrap_err();
        assert!(err.contains("api_kye"), "{err}");
        assert!(SimConfig::default().validate().is_ok());
        assert_eq!(c.sagemaker_account(), "111122223333");
        let one_account = SimConfig::parse("account_id = \"444455556666\"\n").unwrap();
        assert_eq!(one_account.sagemaker_account(), "444455556666");
        let err = SimConfig::parse("[sagemaker]\naccount_id = \"12\"\n").unwrap_err();
        assert!(err.contains("sagemaker.account_id"), "{err}");
    }
}
