//! Extended thinking, as Anthropic's models on Bedrock enforce it: reading the
//! `thinking` setting (Converse `additionalModelRequestFields.thinking`, the
//! Anthropic body's `thinking`) and its rules (a budget of at least 1,024 tokens
//! and below `max_tokens`, temperature unset or 1, no forced tool); signing the
//! reasoning an answer carries and verifying the signatures of reasoning sent
//! back; the rule that an assistant turn with tool use starts with its thinking;
//! and which earlier reasoning the model still reads (the rest is stripped, as
//! Anthropic does, and costs no input tokens).

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::catalog::Model;
use crate::error::SimError;

/// The smallest thinking budget Anthropic accepts.
pub const MIN_BUDGET: u32 = 1024;
/// The beta that lets Claude 4 models think again after each tool result.
pub const INTERLEAVED_BETA: &str = "interleaved-thinking-2025-05-14";
/// The simulator's signing key (one SHA-256 block long): signatures only need to
/// be verifiable by the simulator itself, as Anthropic's only are by Anthropic.
const SIGNING_KEY: [u8; 64] = *b"bedrock-sim reasoning signature key, version 1, 64 bytes long...";

/// Which API a request came through: Converse wraps the model's own error
/// messages, InvokeModel passes them on as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Converse,
    Anthropic,
}

/// A validation error the model (not Bedrock's front end) reports.
pub fn model_error(api: Api, message: impl std::fmt::Display) -> SimError {
    match api {
        Api::Converse => SimError::validation(format!(
            "The model returned the following errors: {message}"
        )),
        Api::Anthropic => SimError::validation(message.to_string()),
    }
}

/// How hard the model works (`outputConfig.effort`); it scales how long answers
/// and reasoning are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    Low,
    Medium,
    High,
    XHigh,
    Max,
}

impl Effort {
    /// The accepted values, as an enum error lists them.
    pub const NAMES: &'static str = "low, medium, high, xhigh, max";

    pub fn parse(s: &str) -> Option<Effort> {
        Some(match s {
            "low" => Effort::Low,
            "medium" => Effort::Medium,
            "high" => Effort::High,
            "xhigh" => Effort::XHigh,
            "max" => Effort::Max,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
            Effort::XHigh => "xhigh",
            Effort::Max => "max",
        }
    }

    /// How much longer than at `high` (the default) answers run.
    pub fn scale(self) -> f64 {
        match self {
            Effort::Low => 0.5,
            Effort::Medium => 0.75,
            Effort::High => 1.0,
            Effort::XHigh => 1.25,
            Effort::Max => 1.5,
        }
    }

    /// Levels above `high` need extended thinking.
    pub fn check(self, thinking: bool, field: &str) -> Result<(), SimError> {
        if matches!(self, Effort::XHigh | Effort::Max) && !thinking {
            return Err(SimError::validation(format!(
                "The effort level {} in {field} needs extended thinking. Use effort high or below, or enable thinking.",
                self.name()
            )));
        }
        Ok(())
    }
}

/// Extended thinking as a request enables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thinking {
    pub budget: u32,
    /// The interleaved-thinking beta is on and the model has it.
    pub interleaved: bool,
}

/// The betas of an `anthropic_beta` list.
pub fn betas(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// Reads a `thinking` setting. `max_tokens` is the answer's limit, `temperature`
/// the request's; `forced_tool` whether its tool choice forces a tool.
pub fn parse_thinking(
    value: &Value,
    model: &Model,
    api: Api,
    max_tokens: u32,
    temperature: Option<f64>,
    forced_tool: bool,
    betas: &[String],
) -> Result<Option<Thinking>, SimError> {
    if value.is_null() {
        return Ok(None);
    }
    if !model.reasoning {
        let detail = "#: extraneous key [thinking] is not permitted";
        return Err(match api {
            Api::Converse => model_error(
                api,
                format!(
                    "Malformed input request: {detail}, please reformat your input and try again."
                ),
            ),
            Api::Anthropic => SimError::malformed(detail),
        });
    }
    match value["type"].as_str() {
        Some("disabled") => return Ok(None),
        Some("enabled") => {}
        other => {
            return Err(model_error(
                api,
                format!(
                    "thinking: Input tag '{}' found using 'type' does not match any of the expected tags: 'disabled', 'enabled'",
                    other.unwrap_or("")
                ),
            ))
        }
    }
    let budget = &value["budget_tokens"];
    if budget.is_null() {
        return Err(model_error(
            api,
            "thinking.enabled.budget_tokens: Field required",
        ));
    }
    let budget = budget.as_u64().ok_or_else(|| {
        model_error(
            api,
            "thinking.enabled.budget_tokens: Input should be a valid integer",
        )
    })?;
    if budget < u64::from(MIN_BUDGET) {
        return Err(model_error(
            api,
            format!("thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_BUDGET}"),
        ));
    }
    let interleaved = model.interleaved_thinking && betas.iter().any(|b| b == INTERLEAVED_BETA);
    // With interleaved thinking the budget spans the whole turn, so it may
    // exceed one answer's max_tokens.
    if !interleaved && budget >= u64::from(max_tokens) {
        return Err(model_error(
            api,
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size",
        ));
    }
    if temperature.is_some_and(|t| t != 1.0) {
        return Err(model_error(
            api,
            "`temperature` may only be set to 1 when thinking is enabled. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#important-considerations-when-using-extended-thinking",
        ));
    }
    if forced_tool {
        return Err(model_error(
            api,
            "Thinking may not be enabled when tool_choice forces tool use.",
        ));
    }
    Ok(Some(Thinking {
        budget: u32::try_from(budget).unwrap_or(u32::MAX),
        interleaved,
    }))
}

fn mac() -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new(&SIGNING_KEY.into())
}

/// The signature of a reasoning text: base64 of an HMAC-SHA256 over it.
pub fn sign(text: &str) -> String {
    let mut m = mac();
    m.update(text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

/// Whether `signature` is the one [`sign`] gives `text`.
pub fn verify(text: &str, signature: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(signature) else {
        return false;
    };
    let mut m = mac();
    m.update(text.as_bytes());
    m.verify_slice(&raw).is_ok()
}

/// One content block of a message, as the reasoning rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text,
    ToolUse,
    ToolResult,
    Thinking {
        text: String,
        signature: Option<String>,
    },
    RedactedThinking,
    /// Anything else, by its Anthropic type name.
    Other(&'static str),
}

impl Part {
    /// The Anthropic type name, as errors spell it.
    fn type_name(&self) -> &'static str {
        match self {
            Part::Text => "text",
            Part::ToolUse => "tool_use",
            Part::ToolResult => "tool_result",
            Part::Thinking { .. } => "thinking",
            Part::RedactedThinking => "redacted_thinking",
            Part::Other(name) => name,
        }
    }

    fn is_thinking(&self) -> bool {
        matches!(self, Part::Thinking { .. } | Part::RedactedThinking)
    }
}

/// A message, as the reasoning rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub assistant: bool,
    pub parts: Vec<Part>,
}

/// Index of the first message of the current assistant turn's context: after the
/// last user message that is not only tool results. Reasoning before it belongs
/// to earlier turns, which the model no longer reads.
pub fn current_turn_start(turns: &[Turn]) -> usize {
    turns
        .iter()
        .rposition(|t| !t.assistant && !t.parts.contains(&Part::ToolResult))
        .map_or(0, |i| i + 1)
}

/// Whether the answer continues a tool loop: the last message holds tool results.
pub fn after_tool_result(turns: &[Turn]) -> bool {
    turns
        .last()
        .is_some_and(|t| !t.assistant && t.parts.contains(&Part::ToolResult))
}

/// Checks reasoning sent back in assistant turns (signatures present and valid)
/// and, with thinking enabled, that the assistant turn holding the last tool use
/// starts with its thinking.
pub fn check_history(turns: &[Turn], thinking: bool, api: Api) -> Result<(), SimError> {
    for (i, turn) in turns.iter().enumerate().filter(|(_, t)| t.assistant) {
        for (j, part) in turn.parts.iter().enumerate() {
            if let Part::Thinking { text, signature } = part {
                match signature {
                    None => {
                        return Err(model_error(
                            api,
                            format!("messages.{i}.content.{j}.thinking.signature: Field required"),
                        ))
                    }
                    Some(sig) if !verify(text, sig) => {
                        return Err(model_error(
                            api,
                            format!(
                                "messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    if !thinking || !after_tool_result(turns) {
        return Ok(());
    }
    let Some(i) = turns
        .iter()
        .rposition(|t| t.assistant && t.parts.contains(&Part::ToolUse))
    else {
        return Ok(());
    };
    // Only the assistant message that opens the current turn must start with
    // thinking; later tool calls in the same turn follow it.
    let start = current_turn_start(turns);
    let opener = (start..turns.len())
        .find(|&k| turns[k].assistant)
        .unwrap_or(i);
    let first = turns[opener].parts.first();
    if first.is_some_and(Part::is_thinking) {
        return Ok(());
    }
    let found = first.map_or("nothing", Part::type_name);
    Err(model_error(
        api,
        format!(
            "messages.{opener}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{found}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid this requirement, disable `thinking`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
        ),
    ))
}

/// How many reasoning tokens an answer spends, from its budget: between a
/// quarter and a half of it, scaled by effort, within what `max_tokens` leaves
/// for at least a short answer.
pub fn reasoning_tokens(
    thinking: &Thinking,
    effort: Option<Effort>,
    max_tokens: u32,
    rng: &mut fastrand::Rng,
) -> u32 {
    let quarter = thinking.budget / 4;
    let base = quarter + rng.u32(0..=quarter);
    let scaled = (f64::from(base) * effort.map_or(1.0, Effort::scale)) as u32;
    let room = max_tokens.saturating_sub(16).max(1);
    scaled.clamp(1, thinking.budget).min(room)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use serde_json::json;

    fn model(id: &str) -> std::sync::Arc<Model> {
        Catalog::embedded().resolve(id).unwrap().model
    }

    #[test]
    fn signatures_verify_only_their_text() {
        let sig = sign("I should add the numbers.");
        assert!(verify("I should add the numbers.", &sig));
        assert!(!verify("I should add the numbers!", &sig));
        assert!(!verify("I should add the numbers.", "not base64 at all"));
    }

    #[test]
    fn thinking_rules_are_enforced_with_anthropic_messages() {
        let sonnet = model("us.anthropic.claude-sonnet-4-5-20250929-v1:0");
        let on = json!({"type": "enabled", "budget_tokens": 2000});
        let ok = parse_thinking(&on, &sonnet, Api::Converse, 4000, None, false, &[]).unwrap();
        assert_eq!(
            ok,
            Some(Thinking {
                budget: 2000,
                interleaved: false
            })
        );
        let err = |v: &Value, max, t, forced| {
            parse_thinking(v, &sonnet, Api::Converse, max, t, forced, &[])
                .unwrap_err()
                .message
        };
        assert!(err(
            &json!({"type": "enabled", "budget_tokens": 500}),
            4000,
            None,
            false
        )
        .contains("greater than or equal to 1024"));
        assert!(err(&on, 2000, None, false).contains("`max_tokens` must be greater"));
        assert!(err(&on, 4000, Some(0.0), false).contains("`temperature` may only be set to 1"));
        assert!(err(&on, 4000, None, true).contains("forces tool use"));
        assert!(parse_thinking(&on, &sonnet, Api::Converse, 4000, Some(1.0), false, &[]).is_ok());
        let beta = [INTERLEAVED_BETA.to_owned()];
        let interleaved =
            parse_thinking(&on, &sonnet, Api::Converse, 1500, None, false, &beta).unwrap();
        assert!(interleaved.unwrap().interleaved);
        let haiku35 = model("us.anthropic.claude-3-5-haiku-20241022-v1:0");
        let e = parse_thinking(&on, &haiku35, Api::Anthropic, 4000, None, false, &[]).unwrap_err();
        assert!(
            e.message.contains("extraneous key [thinking]"),
            "{}",
            e.message
        );
    }

    fn turn(assistant: bool, parts: Vec<Part>) -> Turn {
        Turn { assistant, parts }
    }

    #[test]
    fn tool_turns_must_open_with_their_thinking() {
        let thought = Part::Thinking {
            text: "plan".into(),
            signature: Some(sign("plan")),
        };
        let good = [
            turn(false, vec![Part::Text]),
            turn(true, vec![thought.clone(), Part::ToolUse]),
            turn(false, vec![Part::ToolResult]),
            turn(true, vec![Part::ToolUse]),
            turn(false, vec![Part::ToolResult]),
        ];
        check_history(&good, true, Api::Converse).unwrap();
        let bad = [
            turn(false, vec![Part::Text]),
            turn(true, vec![Part::Text, Part::ToolUse]),
            turn(false, vec![Part::ToolResult]),
        ];
        let e = check_history(&bad, true, Api::Converse).unwrap_err();
        assert!(e.message.starts_with("The model returned the following errors: messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `text`."), "{}", e.message);
        check_history(&bad, false, Api::Converse).unwrap();
        let tampered = [
            turn(false, vec![Part::Text]),
            turn(
                true,
                vec![Part::Thinking {
                    text: "plan!".into(),
                    signature: Some(sign("plan")),
                }],
            ),
            turn(false, vec![Part::Text]),
        ];
        let e = check_history(&tampered, false, Api::Anthropic).unwrap_err();
        assert_eq!(
            e.message,
            "messages.1.content.0: Invalid `signature` in `thinking` block"
        );
        assert_eq!(current_turn_start(&good), 1);
    }
}
