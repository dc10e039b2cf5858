//! The tokens a request is admitted for before its answer says what it used:
//! input by `bedrock_wire::tokens` (the rule the simulator bills by, close to
//! Claude's and Llama's tokenizers), output the most the request asks for,
//! else `limits.output_tokens_estimate`. The answer's usage settles the
//! difference.

use bedrock_wire::operation::Operation;
use bedrock_wire::tokens;
use serde_json::Value;

use crate::json_body::JsonBody;

/// Estimated tokens of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Estimate {
    pub(crate) input: u64,
    pub(crate) output: u64,
}

impl Estimate {
    pub(crate) fn total(&self) -> u64 {
        self.input + self.output
    }
}

/// Where InvokeModel bodies of the model families put their output limit.
const INVOKE_MAX_OUTPUT: [&[&str]; 5] = [
    &["max_tokens"],                        // Anthropic, Mistral, Cohere, OpenAI-style
    &["max_gen_len"],                       // Llama
    &["maxTokens"],                         // AI21 and Converse-like bodies
    &["inferenceConfig", "max_new_tokens"], // Nova
    &["textGenerationConfig", "maxTokenCount"], // Titan
];

/// The estimate for a request of `op` with `json` (parsed) or `body` (raw);
/// `embedding` models answer no output tokens.
pub(crate) fn estimate(
    op: Operation,
    json: Option<&Value>,
    body: &[u8],
    embedding: bool,
    default_output: u32,
) -> Estimate {
    let default_output = u64::from(default_output);
    let output = |found: Option<u64>| {
        if embedding {
            0
        } else {
            found.unwrap_or(default_output)
        }
    };
    match (op, json) {
        (Operation::CountTokens, _) => Estimate::default(),
        (Operation::Converse | Operation::ConverseStream, Some(j)) => Estimate {
            input: u64::from(tokens::converse_request(j)),
            output: output(j["inferenceConfig"]["maxTokens"].as_u64()),
        },
        (_, Some(j)) => {
            let input = if j.get("messages").is_some() && j.get("anthropic_version").is_some() {
                tokens::anthropic_request(j)
            } else {
                tokens::text(std::str::from_utf8(body).unwrap_or_default())
            };
            let found = INVOKE_MAX_OUTPUT.iter().find_map(|path| {
                path.iter()
                    .try_fold(j, |v, k| v.get(*k))
                    .and_then(Value::as_u64)
            });
            Estimate {
                input: u64::from(input),
                output: output(found),
            }
        }
        (_, None) => Estimate {
            input: (body.len() as u64).div_ceil(4),
            output: output(None),
        },
    }
}

/// [`estimate`] for a call's body: a Converse body whose tree no stage has
/// built is counted one message at a time, so a token limit does not build
/// the tree of a long conversation.
pub(crate) fn estimate_body(
    op: Operation,
    json: Option<&JsonBody>,
    body: &[u8],
    embedding: bool,
    default_output: u32,
) -> Estimate {
    match (op, json) {
        (Operation::Converse | Operation::ConverseStream, Some(j)) if !j.has_tree() => {
            let mut input = 0u32;
            if let Some(config) = j.member("toolConfig") {
                for tool in config["tools"].as_array().into_iter().flatten() {
                    input += tokens::converse_tool(tool);
                }
            }
            j.for_each_element("system", |block| input += tokens::converse_block(block));
            j.for_each_element("messages", |m| input += tokens::converse_message(m));
            let asked = j
                .head_member("inferenceConfig")
                .and_then(|c| c["maxTokens"].as_u64());
            Estimate {
                input: u64::from(input),
                output: if embedding {
                    0
                } else {
                    asked.unwrap_or(u64::from(default_output))
                },
            }
        }
        _ => estimate(
            op,
            json.map(JsonBody::tree),
            body,
            embedding,
            default_output,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converse_asks_for_its_max_tokens_or_the_default() {
        let body = json!({
            "messages": [{"role": "user", "content": [{"text": "x".repeat(400)}]}],
            "inferenceConfig": {"maxTokens": 50}
        });
        let e = estimate(Operation::Converse, Some(&body), b"", false, 1024);
        assert_eq!(
            e,
            Estimate {
                input: 103,
                output: 50
            }
        );
        let bare = json!({"messages": []});
        let e = estimate(Operation::ConverseStream, Some(&bare), b"", false, 1024);
        assert_eq!(e.output, 1024);
        assert_eq!(
            estimate(Operation::CountTokens, Some(&body), b"", false, 1024),
            Estimate::default()
        );
    }

    #[test]
    fn a_converse_body_counted_message_by_message_agrees_with_its_tree() {
        let bodies = [
            json!({"messages": [{"role": "user", "content": [{"text": "x".repeat(400)}]}],
                   "inferenceConfig": {"maxTokens": 50}}),
            json!({"toolConfig": {"tools": [{"toolSpec": {"name": "t", "inputSchema": {"json": {}}}},
                                            {"cachePoint": {"type": "default"}}]},
                   "system": [{"text": "be brief"}, {"cachePoint": {"type": "default"}}],
                   "messages": (0..50).map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                       "content": [{"text": format!("message {i}")}, {"image": {"format": "png", "source": {"bytes": "AAAA"}}}]}))
                       .collect::<Vec<_>>()}),
            json!({"messages": "not a list", "system": {"text": "nor this"}}),
        ];
        for body in bodies {
            let text = body.to_string();
            let lazy = JsonBody::parse(bytes::Bytes::from(text.clone()), 64).unwrap();
            for op in [Operation::Converse, Operation::ConverseStream] {
                for embedding in [false, true] {
                    let by_tree = estimate(op, Some(&body), text.as_bytes(), embedding, 1024);
                    let by_message =
                        estimate_body(op, Some(&lazy), text.as_bytes(), embedding, 1024);
                    assert_eq!(by_message, by_tree, "{body}");
                }
            }
            assert!(!lazy.has_tree(), "counted without building the tree");
        }
    }

    #[test]
    fn invoke_bodies_by_family() {
        let claude = json!({
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 77,
            "messages": [{"role": "user", "content": "abcdefgh"}]
        });
        let raw = claude.to_string();
        let e = estimate(
            Operation::Invoke,
            Some(&claude),
            raw.as_bytes(),
            false,
            1024,
        );
        assert_eq!(
            e,
            Estimate {
                input: 5,
                output: 77
            }
        );
        let titan = json!({"inputText": "hi", "textGenerationConfig": {"maxTokenCount": 9}});
        let raw = titan.to_string();
        let e = estimate(Operation::Invoke, Some(&titan), raw.as_bytes(), false, 1024);
        assert_eq!(e.output, 9);
        let e = estimate(Operation::Invoke, Some(&titan), raw.as_bytes(), true, 1024);
        assert_eq!(e.output, 0, "embedding models answer no tokens");
        let e = estimate(Operation::Invoke, None, &[0u8; 40], false, 8);
        assert_eq!(
            e,
            Estimate {
                input: 10,
                output: 8
            }
        );
    }
}
