//! Scripted faults: rules added with `POST /_sim/faults` (or one-off, with the
//! `x-sim-fault` request header) that make matching requests fail the way Bedrock
//! fails: error responses, slow first bytes, exceptions in the middle of a
//! stream, a connection cut, or an async job that ends Failed. A rule names
//! the face it targets (Bedrock by default); each face renders the fault in its
//! own API's shape.

use bedrock_wire::error::ErrorType;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::SimError;
use crate::face::{Face, FaceMatch};

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    Throttle,
    Unavailable,
    Internal,
    ModelNotReady,
    ModelTimeout,
    Validation,
    SlowFirstByte,
    MidstreamError,
    ConnectionReset,
    /// StartAsyncInvoke succeeds, and the job ends Failed.
    JobFailure,
    /// The model (a container, for SageMaker) failed: Bedrock's
    /// ModelErrorException, SageMaker's ModelError, a 500 from an OpenAI server.
    ModelError,
}

impl FaultKind {
    fn parse(s: &str) -> Option<FaultKind> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

/// A fault rule: which requests it matches, what it does, how often.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// The faces the rule applies to: `bedrock` (when absent), `openai`,
    /// `sagemaker` or `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face: Option<FaceMatch>,
    /// Matches model ids containing this text (as the caller wrote the id; on
    /// SageMaker, the endpoint name, the inference component or the model it serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Matches the latency tier the request asked for: `standard` or `optimized`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// Matches the service tier the request asked for: `priority`, `default`
    /// (also a request that names none), `flex` or `reserved` (Bedrock only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    /// Matches one operation by its label. On Bedrock: `converse`,
    /// `converse-stream`, `invoke`, `invoke-with-response-stream`,
    /// `count-tokens`, `invoke-with-bidirectional-stream`, `apply-guardrail`,
    /// `invoke-guardrail-checks`, `start-async-invoke`, `get-async-invoke` or
    /// `list-async-invokes`; `chat-completions` on the OpenAI face;
    /// `invoke-endpoint` or `invoke-endpoint-with-response-stream` on SageMaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    pub fault: FaultKind,
    /// How many requests it fires for; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// Fires for this share of matching requests (0..=1); always when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// `slow-first-byte`: the delay in milliseconds; error faults: how long the
    /// error takes to come back. Not scaled by time-scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// `midstream-error` and `connection-reset` on streams: events sent first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_events: Option<u32>,
    /// `midstream-error`: the stream exception member, such as `throttlingException`
    /// (default `modelStreamErrorException`) on Bedrock, `ModelStreamError`
    /// (default) or `InternalStreamFailure` on SageMaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
    /// Overrides the error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl FaultRule {
    /// A rule for `fault` matching every request, without limits.
    pub fn new(fault: FaultKind) -> FaultRule {
        FaultRule {
            face: None,
            model: None,
            latency: None,
            service_tier: None,
            operation: None,
            fault,
            times: None,
            probability: None,
            ms: None,
            after_events: None,
            exception: None,
            message: None,
        }
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = self.probability {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("probability must be within [0, 1], got {p}"));
            }
        }
        if let Some(l) = &self.latency {
            if l != "standard" && l != "optimized" {
                return Err(format!("latency must be standard or optimized, got {l}"));
            }
        }
        if let Some(t) = &self.service_tier {
            if bedrock_wire::tier::ServiceTier::parse(t).is_none() {
                return Err(format!(
                    "service_tier must be priority, default, flex or reserved, got {t}"
                ));
            }
        }
        let faces = self.faces();
        if (self.latency.is_some() || self.service_tier.is_some())
            && !faces.contains(&Face::Bedrock)
        {
            return Err("latency and service_tier match Bedrock requests only".to_owned());
        }
        if let Some(op) = &self.operation {
            if !faces.iter().any(|f| f.has_operation(op)) {
                return Err(format!("unknown operation {op}"));
            }
        }
        if self.fault == FaultKind::JobFailure && faces != [Face::Bedrock] {
            return Err("job-failure is a Bedrock fault (StartAsyncInvoke)".to_owned());
        }
        if let Some(e) = &self.exception {
            if !faces.iter().any(|f| stream_exception_exists(*f, e)) {
                return Err(format!("{e} is not a stream exception"));
            }
        }
        Ok(())
    }

    /// The faces this rule applies to.
    pub fn faces(&self) -> &'static [Face] {
        self.face.unwrap_or(FaceMatch::Bedrock).faces()
    }

    /// Parses the `x-sim-fault` header: `throttle`, `slow-first-byte=800`,
    /// `midstream-error=3`, `midstream-error=3:throttlingException`,
    /// `connection-reset=2`.
    pub fn from_header(value: &str) -> Result<FaultRule, String> {
        Self::from_header_on(value, Face::Bedrock)
    }

    /// [`FaultRule::from_header`] for a request that came in on `face`.
    pub fn from_header_on(value: &str, face: Face) -> Result<FaultRule, String> {
        let (kind, arg) = value.trim().split_once('=').unwrap_or((value.trim(), ""));
        let fault = FaultKind::parse(kind).ok_or_else(|| format!("unknown fault {kind}"))?;
        let mut rule = FaultRule {
            times: Some(1),
            face: Some(match face {
                Face::Bedrock => FaceMatch::Bedrock,
                Face::OpenAi => FaceMatch::OpenAi,
                Face::SageMaker => FaceMatch::SageMaker,
            }),
            ..FaultRule::new(fault)
        };
        let (num, exception) = arg.split_once(':').unwrap_or((arg, ""));
        if !num.is_empty() {
            let n: u64 = num
                .parse()
                .map_err(|_| format!("bad fault argument {num}"))?;
            match fault {
                FaultKind::SlowFirstByte => rule.ms = Some(n),
                _ => rule.after_events = Some(u32::try_from(n).unwrap_or(u32::MAX)),
            }
        }
        if !exception.is_empty() {
            rule.exception = Some(exception.to_owned());
        }
        rule.validate()?;
        Ok(rule)
    }

    fn matches(&self, target: &Target<'_>) -> bool {
        self.faces().contains(&target.face)
            && self
                .model
                .as_deref()
                .is_none_or(|m| target.ids.iter().any(|id| id.contains(m)))
            && self
                .latency
                .as_deref()
                .is_none_or(|l| Some(l) == target.latency)
            && self
                .service_tier
                .as_deref()
                .is_none_or(|t| Some(t) == target.service_tier)
            && self
                .operation
                .as_deref()
                .is_none_or(|o| o == target.operation)
    }

    /// The error response of an error fault; `None` for the timing faults.
    pub fn error(&self) -> Option<SimError> {
        let (kind, default) = match self.fault {
            FaultKind::Throttle => (
                ErrorType::Throttling,
                "Too many requests, please wait before trying again.",
            ),
            FaultKind::Unavailable => (
                ErrorType::ServiceUnavailable,
                "Bedrock is unable to process your request.",
            ),
            FaultKind::Internal => (
                ErrorType::InternalServer,
                "The server encountered an internal error while processing the request.",
            ),
            FaultKind::ModelNotReady => (
                ErrorType::ModelNotReady,
                "Model is not ready to serve inference requests. Try again later.",
            ),
            FaultKind::ModelTimeout => (
                ErrorType::ModelTimeout,
                "Model has timed out in processing the request. Try your request again.",
            ),
            FaultKind::Validation => (
                ErrorType::Validation,
                "The request was rejected by a scripted validation fault.",
            ),
            FaultKind::ModelError => (
                ErrorType::ModelError,
                "The model returned an error while processing the request.",
            ),
            _ => return None,
        };
        Some(SimError::modeled(
            kind,
            self.message.clone().unwrap_or_else(|| default.to_owned()),
        ))
    }

    /// The stream exception member of a `midstream-error`.
    pub fn stream_exception(&self) -> &str {
        self.exception
            .as_deref()
            .unwrap_or("modelStreamErrorException")
    }
}

/// What a request is, as fault rules see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    /// The API the request came in on.
    pub face: Face,
    /// The ids a `model` rule may match: the model id as the caller wrote it,
    /// and the model a prompt router chose (or a guardrail's id; on SageMaker,
    /// the endpoint, the inference component and the model it serves).
    pub ids: &'a [&'a str],
    /// The latency tier asked for, for Bedrock's model operations.
    pub latency: Option<&'a str>,
    /// The service tier asked for (`default` when none), for Bedrock's model
    /// operations.
    pub service_tier: Option<&'a str>,
    /// The operation's label.
    pub operation: &'a str,
}

/// Whether `name` is a stream exception `face` can send.
fn stream_exception_exists(face: Face, name: &str) -> bool {
    match face {
        Face::Bedrock => ErrorType::parse(name)
            .and_then(ErrorType::stream_member)
            .is_some(),
        Face::SageMaker => bedrock_wire::sagemaker::StreamException::parse(name).is_some(),
        // An OpenAI stream ends with an `error` chunk; it has no exception types.
        Face::OpenAi => false,
    }
}

#[derive(Debug, Clone, Serialize)]
struct Installed {
    id: u64,
    #[serde(flatten)]
    rule: FaultRule,
    fired: u64,
}

/// The installed rules.
#[derive(Debug, Default)]
pub struct Faults {
    next_id: AtomicU64,
    rules: Mutex<Vec<Installed>>,
}

impl Faults {
    /// Installs a rule and returns its id.
    pub fn add(&self, rule: FaultRule) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Installed { id, rule, fired: 0 });
        id
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The installed rules, with how often each fired.
    pub fn list(&self) -> serde_json::Value {
        serde_json::to_value(&*self.rules.lock().unwrap_or_else(|e| e.into_inner()))
            .unwrap_or_default()
    }

    /// The first rule that matches and fires for this request, used up by one.
    pub fn take(&self, target: &Target<'_>) -> Option<FaultRule> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let index = rules.iter().position(|r| {
            r.rule.matches(target) && r.rule.probability.is_none_or(|p| fastrand::f64() < p)
        })?;
        let installed = &mut rules[index];
        installed.fired += 1;
        let rule = installed.rule.clone();
        if let Some(times) = installed.rule.times.as_mut() {
            *times = times.saturating_sub(1);
            if *times == 0 {
                rules.remove(index);
            }
        }
        Some(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: serde_json::Value) -> FaultRule {
        serde_json::from_value(json).unwrap()
    }

    fn target<'a>(ids: &'a [&'a str], latency: &'a str, service: &'a str) -> Target<'a> {
        Target {
            face: Face::Bedrock,
            ids,
            latency: Some(latency),
            service_tier: Some(service),
            operation: "converse",
        }
    }

    #[test]
    fn rules_match_and_are_used_up() {
        let faults = Faults::default();
        faults.add(rule(serde_json::json!({"model": "haiku", "latency": "optimized", "fault": "throttle", "times": 2})));
        let haiku = ["us.anthropic.claude-3-5-haiku"];
        assert!(faults
            .take(&target(&haiku, "standard", "default"))
            .is_none());
        assert!(faults
            .take(&target(&["us.meta.llama"], "optimized", "default"))
            .is_none());
        for _ in 0..2 {
            let r = faults
                .take(&target(&haiku, "optimized", "default"))
                .unwrap();
            assert_eq!(r.fault, FaultKind::Throttle);
        }
        assert!(faults
            .take(&target(&haiku, "optimized", "default"))
            .is_none());
    }

    #[test]
    fn rules_match_service_tiers_operations_and_routed_models() {
        let faults = Faults::default();
        faults.add(rule(
            serde_json::json!({"service_tier": "flex", "fault": "throttle"}),
        ));
        faults.add(rule(serde_json::json!({"model": "claude-3-haiku", "operation": "converse", "fault": "unavailable"})));
        let nova = ["us.amazon.nova-pro-v1:0"];
        assert!(faults.take(&target(&nova, "standard", "default")).is_none());
        assert_eq!(
            faults
                .take(&target(&nova, "standard", "flex"))
                .unwrap()
                .fault,
            FaultKind::Throttle
        );
        let routed = [
            "arn:aws:bedrock:us-east-2:123456789012:default-prompt-router/anthropic.claude:1",
            "us.anthropic.claude-3-haiku-20240307-v1:0",
        ];
        assert_eq!(
            faults
                .take(&target(&routed, "standard", "default"))
                .unwrap()
                .fault,
            FaultKind::Unavailable
        );
        let apply = Target {
            ids: &["demoguardrail"],
            operation: "apply-guardrail",
            ..Target::default()
        };
        assert!(faults.take(&apply).is_none());
        assert!(rule(
            serde_json::json!({"operation": "start-async-invoke", "fault": "job-failure"})
        )
        .validate()
        .is_ok());
        assert!(
            rule(serde_json::json!({"operation": "teleport", "fault": "throttle"}))
                .validate()
                .is_err()
        );
        assert!(
            rule(serde_json::json!({"service_tier": "gold", "fault": "throttle"}))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn headers_parse() {
        let r = FaultRule::from_header("midstream-error=3:throttlingException").unwrap();
        assert_eq!(r.fault, FaultKind::MidstreamError);
        assert_eq!(r.after_events, Some(3));
        assert_eq!(r.stream_exception(), "throttlingException");
        assert_eq!(
            FaultRule::from_header("slow-first-byte=250").unwrap().ms,
            Some(250)
        );
        assert!(FaultRule::from_header("explode").is_err());
        assert!(FaultRule::from_header("midstream-error=1:NotAThing").is_err());
    }

    #[test]
    fn rules_target_their_face() {
        let faults = Faults::default();
        faults.add(rule(serde_json::json!({"fault": "throttle"})));
        faults.add(rule(
            serde_json::json!({"face": "sagemaker", "model": "llama",
            "operation": "invoke-endpoint", "fault": "internal", "times": 1}),
        ));
        let names = [
            "my-endpoint",
            "my-component",
            "meta-llama/Llama-3.1-8B-Instruct",
        ];
        fn self_hosted<'a>(face: Face, ids: &'a [&'a str], operation: &'a str) -> Target<'a> {
            Target {
                face,
                ids,
                operation,
                ..Target::default()
            }
        }
        assert!(faults
            .take(&self_hosted(Face::OpenAi, &["qwen"], "chat-completions"))
            .is_none());
        assert!(faults
            .take(&self_hosted(
                Face::SageMaker,
                &names,
                "invoke-endpoint-with-response-stream"
            ))
            .is_none());
        let fired = faults
            .take(&self_hosted(Face::SageMaker, &names, "invoke-endpoint"))
            .unwrap();
        assert_eq!(fired.fault, FaultKind::Internal);
        assert!(faults
            .take(&self_hosted(Face::SageMaker, &names, "invoke-endpoint"))
            .is_none());
        assert!(faults
            .take(&target(&["anything"], "standard", "default"))
            .is_some());

        let bad_op = rule(
            serde_json::json!({"face": "openai", "operation": "converse", "fault": "throttle"}),
        );
        assert!(bad_op.validate().unwrap_err().contains("converse"));
        let guardrail_on_openai = rule(
            serde_json::json!({"face": "openai", "operation": "apply-guardrail", "fault": "throttle"}),
        );
        assert!(guardrail_on_openai.validate().is_err());
        let tier_on_sagemaker = rule(
            serde_json::json!({"face": "sagemaker", "service_tier": "flex", "fault": "throttle"}),
        );
        assert!(tier_on_sagemaker.validate().is_err());
        assert!(
            rule(serde_json::json!({"face": "any", "fault": "job-failure"}))
                .validate()
                .is_err()
        );
        assert!(FaultRule::from_header_on("job-failure", Face::OpenAi).is_err());
        let tier_on_any =
            rule(serde_json::json!({"face": "any", "service_tier": "flex", "fault": "throttle"}));
        assert!(tier_on_any.validate().is_ok());
        let sm = rule(
            serde_json::json!({"face": "sagemaker", "fault": "midstream-error",
            "exception": "InternalStreamFailure"}),
        );
        assert!(sm.validate().is_ok());
        let on_bedrock = rule(
            serde_json::json!({"fault": "midstream-error", "exception": "InternalStreamFailure"}),
        );
        assert!(on_bedrock.validate().is_err());
        let header =
            FaultRule::from_header_on("midstream-error=2:ModelStreamError", Face::SageMaker)
                .unwrap();
        assert_eq!(header.after_events, Some(2));
        assert!(FaultRule::from_header_on(
            "midstream-error=2:throttlingException",
            Face::SageMaker
        )
        .is_err());
        assert!(
            FaultRule::from_header_on("midstream-error=2:ModelStreamError", Face::OpenAi).is_err()
        );
    }

    #[test]
    fn error_faults_carry_bedrock_statuses() {
        let e = FaultRule::from_header("model-not-ready")
            .unwrap()
            .error()
            .unwrap();
        assert_eq!(e.status.as_u16(), 429);
        assert_eq!(e.type_name, "ModelNotReadyException");
        assert!(FaultRule::from_header("slow-first-byte=1")
            .unwrap()
            .error()
            .is_none());
    }
}
