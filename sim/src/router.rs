//! AWS's default prompt routers (Intelligent Prompt Routing): a router ARN as
//! the model id sends the request to one of the router's two models, chosen
//! from the prompt alone, and the answer names the model that served it in
//! `trace.promptRouter.invokedModelId`.
//!
//! The simulated router is deterministic: the larger model takes prompts of at
//! least the router's `large_from_tokens` input tokens, and prompts that look
//! hard (two or more of: reasoning words such as "explain" or "compare" in the
//! last user turn, code, tools, a conversation longer than four messages);
//! everything else goes to the smaller model.

use bedrock_wire::tokens;
use serde_json::Value;

use crate::catalog::Router;
use crate::error::SimError;
use crate::request::Operation;

/// Words that mark a prompt as asking for reasoning rather than recall.
const REASONING_MARKERS: [&str; 16] = [
    "explain",
    "why",
    "analyze",
    "analyse",
    "compare",
    "design",
    "prove",
    "derive",
    "evaluate",
    "step by step",
    "trade-off",
    "tradeoff",
    "architecture",
    "optimize",
    "debug",
    "refactor",
];

/// Signs of code in a prompt.
const CODE_MARKERS: [&str; 6] = ["```", "fn ", "def ", "class ", "function ", "#include"];

/// A router request resolved: the model it goes to and how to report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The router's id (`anthropic.claude:1`).
    pub router: String,
    /// The inference profile chosen.
    pub profile: String,
    /// `trace.promptRouter.invokedModelId`: the profile's ARN in the router's
    /// region and account.
    pub invoked_model_id: String,
}

/// What decides the route, read from a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    pub input_tokens: u32,
    pub last_user_text: String,
    pub messages: usize,
    pub tools: bool,
}

impl Signals {
    /// The signals of a Converse, Anthropic Messages or Llama body.
    pub fn read(op: Operation, body: &Value) -> Signals {
        match op {
            Operation::Converse | Operation::ConverseStream | Operation::CountTokens => {
                let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
                Signals {
                    input_tokens: tokens::converse_request(body),
                    last_user_text: last_user_text(messages, |block| {
                        block.get("text").and_then(Value::as_str).map(str::to_owned)
                    }),
                    messages: messages.len(),
                    tools: body["toolConfig"]["tools"]
                        .as_array()
                        .is_some_and(|t| !t.is_empty()),
                }
            }
            Operation::Invoke | Operation::InvokeStream => {
                if let Some(prompt) = body.get("prompt").and_then(Value::as_str) {
                    return Signals {
                        input_tokens: tokens::text(prompt),
                        last_user_text: prompt.to_owned(),
                        messages: 1,
                        tools: false,
                    };
                }
                let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
                Signals {
                    input_tokens: tokens::anthropic_request(body),
                    last_user_text: last_user_text(messages, |block| {
                        block.get("text").and_then(Value::as_str).map(str::to_owned)
                    }),
                    messages: messages.len(),
                    tools: body["tools"].as_array().is_some_and(|t| !t.is_empty()),
                }
            }
        }
    }

    /// How many signs of a hard prompt it shows.
    pub fn complexity(&self) -> usize {
        let text = self.last_user_text.to_lowercase();
        let reasoning = REASONING_MARKERS
            .iter()
            .filter(|m| contains_word(&text, m))
            .count();
        let code = CODE_MARKERS.iter().any(|m| text.contains(m));
        reasoning + usize::from(code) + usize::from(self.tools) + usize::from(self.messages > 4)
    }
}

/// The text of the last user message: a string, or its text blocks joined.
fn last_user_text(messages: &[Value], text: impl Fn(&Value) -> Option<String>) -> String {
    let Some(last) = messages.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(text).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    }
}

/// Whether `needle` occurs in `haystack` as whole words.
fn contains_word(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(i, m)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + m.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Picks the router's model for a request and names it as Bedrock reports it.
/// The router ARN must be in the simulated region.
pub fn route(
    router: &Router,
    arn: &str,
    region: &str,
    signals: &Signals,
) -> Result<Routed, SimError> {
    // arn:aws:bedrock:REGION:ACCOUNT:default-prompt-router/ID
    let mut parts = arn.splitn(6, ':');
    let (_, partition, _, arn_region, account) = (
        parts.next(),
        parts.next().unwrap_or("aws"),
        parts.next(),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if arn_region != region {
        return Err(SimError::validation(
            "The provided model identifier is invalid.",
        ));
    }
    let large = signals.input_tokens >= router.large_from_tokens || signals.complexity() >= 2;
    let profile = router.models[usize::from(large)].clone();
    Ok(Routed {
        router: router.id.clone(),
        invoked_model_id: format!(
            "arn:{partition}:bedrock:{region}:{account}:inference-profile/{profile}"
        ),
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use serde_json::json;

    const ARN: &str =
        "arn:aws:bedrock:us-east-2:111122223333:default-prompt-router/anthropic.claude:1";

    fn claude_router() -> Router {
        Catalog::embedded().router(ARN).unwrap().clone()
    }

    fn ask(text: &str) -> Value {
        json!({"messages": [{"role": "user", "content": [{"text": text}]}]})
    }

    #[test]
    fn short_simple_prompts_go_small_and_hard_or_long_ones_large() {
        let r = claude_router();
        let small = route(
            &r,
            ARN,
            "us-east-2",
            &Signals::read(Operation::Converse, &ask("What is the capital of France?")),
        )
        .unwrap();
        assert_eq!(small.profile, r.models[0]);
        assert_eq!(
            small.invoked_model_id,
            format!(
                "arn:aws:bedrock:us-east-2:111122223333:inference-profile/{}",
                r.models[0]
            )
        );
        let hard = ask("Explain why quicksort is faster than heapsort in practice and compare their cache behaviour.");
        let large = route(
            &r,
            ARN,
            "us-east-2",
            &Signals::read(Operation::Converse, &hard),
        )
        .unwrap();
        assert_eq!(large.profile, r.models[1]);
        let long = ask(&"word ".repeat(2000));
        assert_eq!(
            route(
                &r,
                ARN,
                "us-east-2",
                &Signals::read(Operation::Converse, &long)
            )
            .unwrap()
            .profile,
            r.models[1]
        );
        // The same prompt always takes the same route.
        for _ in 0..3 {
            assert_eq!(
                route(
                    &r,
                    ARN,
                    "us-east-2",
                    &Signals::read(Operation::Converse, &hard)
                )
                .unwrap(),
                large
            );
        }
    }

    #[test]
    fn markers_count_whole_words_and_native_bodies_are_read() {
        assert!(contains_word("please explain this", "explain"));
        assert!(!contains_word("unexplained", "explain"));
        let anthropic = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
            "messages": [{"role": "user", "content": "Why? Explain step by step."}]});
        let s = Signals::read(Operation::Invoke, &anthropic);
        assert_eq!(s.complexity(), 3);
        let llama = json!({"prompt": "hello"});
        assert_eq!(Signals::read(Operation::Invoke, &llama).complexity(), 0);
    }

    #[test]
    fn a_router_of_another_region_is_not_found() {
        let r = claude_router();
        let err = route(&r, ARN, "us-west-2", &Signals::default()).unwrap_err();
        assert!(err.message.contains("model identifier is invalid"));
    }
}
