//! Writing an [`Answer`] in each wire format: Converse JSON and ConverseStream
//! events, and the Anthropic and Llama native bodies and stream chunks of
//! InvokeModel. Reasoning streams as reasoning deltas and then its signature,
//! before the text; cited text carries its citation. Each stream item carries how
//! many output tokens it costs, so the sender can pace it.

use base64::Engine;
use bedrock_wire::converse::{assemble, ConverseEvent, EventKind, Usage};
use bedrock_wire::eventstream::event_frame;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::generate::{Answer, Block};

/// What the answer cost and how it was served.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Input tokens not read from or written to the prompt cache.
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cache_read: u32,
    pub cache_write: u32,
    /// Of `cache_write`, the tokens written with the 1-hour TTL.
    pub cache_write_1h: u32,
    pub latency_ms: u64,
    pub first_byte_ms: u64,
    /// The tier to report in `performanceConfig`, when the caller asked for one.
    pub tier: Option<&'static str>,
    /// The service tier to report in `serviceTier`, when the caller asked for one.
    pub service_tier: Option<&'static str>,
    /// Converse's `trace` (prompt router, guardrail), when there is one.
    pub trace: Option<Value>,
    /// Members InvokeModel adds to a native body and to a stream's last chunk
    /// (`amazon-bedrock-guardrailAction`, `amazon-bedrock-trace`).
    pub native: Map<String, Value>,
    /// `model` of Anthropic-native answers.
    pub model_name: String,
    /// Seeds the delta sizes and padding, so streams are reproducible.
    pub seed: u64,
    /// Name the stop sequence in `additionalModelResponseFields` (Converse
    /// asked for `/stop_sequence` on a Claude model).
    pub report_stop_sequence: bool,
}

impl Meta {
    fn usage(&self) -> Usage {
        let input = u64::from(self.input_tokens);
        let output = u64::from(self.output_tokens);
        let read = u64::from(self.cache_read);
        let write = u64::from(self.cache_write);
        Usage {
            input_tokens: input,
            output_tokens: output,
            total_tokens: input + output + read + write,
            cache_read_input_tokens: read,
            cache_write_input_tokens: write,
            cache_write_1h_input_tokens: u64::from(self.cache_write_1h).min(write),
        }
    }
}

/// One stream item and the output tokens generated before it is sent.
#[derive(Debug, Clone)]
pub struct Paced {
    pub frame: Bytes,
    pub tokens: u32,
}

/// Groups text pieces into deltas of one to three tokens.
fn deltas(pieces: &[String], rng: &mut fastrand::Rng) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let n = rng.usize(1..=3).min(pieces.len() - i);
        out.push((pieces[i..i + n].concat(), n as u32));
        i += n;
    }
    out
}

/// Cuts a tool input's JSON into a few partial strings.
fn json_parts(input: &Value, rng: &mut fastrand::Rng) -> Vec<String> {
    let text = input.to_string();
    let parts = rng.usize(2..=4);
    let size = text.len().div_ceil(parts).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + size).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push(text[start..end].to_owned());
        start = end;
    }
    out
}

/// Bedrock pads stream payloads with a random-length `p` field so sizes do not
/// reveal tokens; clients ignore it.
fn padding(rng: &mut fastrand::Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let len = rng.usize(1..=48);
    (0..len)
        .map(|_| char::from(ALPHABET[rng.usize(..ALPHABET.len())]))
        .collect()
}

fn padded(mut v: Value, pad: bool, rng: &mut fastrand::Rng) -> Value {
    if pad {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("p".into(), padding(rng).into());
        }
    }
    v
}

/// The answer as ConverseStream events, each with its token cost.
pub fn converse_events(answer: &Answer, meta: &Meta, pad: bool) -> Vec<(ConverseEvent, u32)> {
    let mut rng = fastrand::Rng::with_seed(meta.seed ^ 0x5eed);
    let mut events = Vec::new();
    let mut push = |kind, v: Value, tokens, rng: &mut fastrand::Rng| {
        events.push((ConverseEvent::new(kind, &padded(v, pad, rng)), tokens));
    };
    push(
        EventKind::MessageStart,
        json!({"role": "assistant"}),
        0,
        &mut rng,
    );
    for (i, block) in answer.blocks.iter().enumerate() {
        match block {
            Block::Text(pieces) => {
                for (text, n) in deltas(pieces, &mut rng) {
                    push(
                        EventKind::ContentBlockDelta,
                        json!({"contentBlockIndex": i, "delta": {"text": text}}),
                        n,
                        &mut rng,
                    );
                }
            }
            Block::Reasoning { pieces, signature } => {
                for (text, n) in deltas(pieces, &mut rng) {
                    push(
                        EventKind::ContentBlockDelta,
                        json!({"contentBlockIndex": i, "delta": {"reasoningContent": {"text": text}}}),
                        n,
                        &mut rng,
                    );
                }
                push(
                    EventKind::ContentBlockDelta,
                    json!({"contentBlockIndex": i, "delta": {"reasoningContent": {"signature": signature}}}),
                    0,
                    &mut rng,
                );
            }
            Block::Cited { pieces, citation } => {
                push(
                    EventKind::ContentBlockDelta,
                    json!({"contentBlockIndex": i, "delta": {"citation": citation.converse_json()}}),
                    0,
                    &mut rng,
                );
                for (text, n) in deltas(pieces, &mut rng) {
                    push(
                        EventKind::ContentBlockDelta,
                        json!({"contentBlockIndex": i, "delta": {"text": text}}),
                        n,
                        &mut rng,
                    );
                }
            }
            Block::ToolUse { id, name, input } => {
                push(
                    EventKind::ContentBlockStart,
                    json!({"contentBlockIndex": i, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
                    0,
                    &mut rng,
                );
                let parts = json_parts(input, &mut rng);
                let per = (bedrock_wire::tokens::json(input) / parts.len().max(1) as u32).max(1);
                for part in parts {
                    push(
                        EventKind::ContentBlockDelta,
                        json!({"contentBlockIndex": i, "delta": {"toolUse": {"input": part}}}),
                        per,
                        &mut rng,
                    );
                }
            }
        }
        push(
            EventKind::ContentBlockStop,
            json!({"contentBlockIndex": i}),
            0,
            &mut rng,
        );
    }
    let mut stop = json!({"stopReason": answer.stop_reason.name()});
    if meta.report_stop_sequence {
        stop["additionalModelResponseFields"] = json!({"stop_sequence": answer.stop_sequence});
    }
    push(EventKind::MessageStop, stop, 0, &mut rng);
    let mut metadata = Map::new();
    metadata.insert("usage".into(), meta.usage().to_json());
    metadata.insert("metrics".into(), json!({"latencyMs": meta.latency_ms}));
    if let Some(tier) = meta.tier {
        metadata.insert("performanceConfig".into(), json!({"latency": tier}));
    }
    if let Some(tier) = meta.service_tier {
        metadata.insert("serviceTier".into(), json!({"type": tier}));
    }
    if let Some(trace) = &meta.trace {
        metadata.insert("trace".into(), trace.clone());
    }
    push(EventKind::Metadata, Value::Object(metadata), 0, &mut rng);
    events
}

/// The answer as a Converse response body.
pub fn converse_body(answer: &Answer, meta: &Meta) -> Value {
    let events: Vec<_> = converse_events(answer, meta, false)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    // Events built above always assemble; Null would only signal a bug.
    assemble(&events).unwrap_or(Value::Null)
}

fn message_id(seed: u64) -> String {
    format!("msg_bdrk_{seed:016x}")
}

fn anthropic_content(answer: &Answer) -> Vec<Value> {
    answer
        .blocks
        .iter()
        .map(|b| match b {
            Block::Text(pieces) => json!({"type": "text", "text": pieces.concat()}),
            Block::Reasoning { pieces, signature } => {
                json!({"type": "thinking", "thinking": pieces.concat(), "signature": signature})
            }
            Block::Cited { pieces, citation } => json!({"type": "text", "text": pieces.concat(),
                "citations": [citation.anthropic_json()]}),
            Block::ToolUse { id, name, input } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": input})
            }
        })
        .collect()
}

fn anthropic_usage(meta: &Meta, output: u32) -> Value {
    json!({
        "input_tokens": meta.input_tokens,
        "cache_creation_input_tokens": meta.cache_write,
        "cache_creation": {
            "ephemeral_5m_input_tokens": meta.cache_write.saturating_sub(meta.cache_write_1h),
            "ephemeral_1h_input_tokens": meta.cache_write_1h,
        },
        "cache_read_input_tokens": meta.cache_read,
        "output_tokens": output,
    })
}

/// `v` with InvokeModel's extra members added.
fn with_native(mut v: Value, meta: &Meta) -> Value {
    if let Some(obj) = v.as_object_mut() {
        obj.extend(meta.native.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    v
}

/// An Anthropic Messages response body.
pub fn anthropic_body(answer: &Answer, meta: &Meta) -> Value {
    with_native(
        json!({
            "id": message_id(meta.seed),
            "type": "message",
            "role": "assistant",
            "model": meta.model_name,
            "content": anthropic_content(answer),
            "stop_reason": answer.stop_reason.anthropic_name(),
            "stop_sequence": answer.stop_sequence,
            "usage": anthropic_usage(meta, meta.output_tokens),
        }),
        meta,
    )
}

fn invocation_metrics(meta: &Meta) -> Value {
    json!({
        "inputTokenCount": meta.input_tokens,
        "outputTokenCount": meta.output_tokens,
        "invocationLatency": meta.latency_ms,
        "firstByteLatency": meta.first_byte_ms,
        "cacheReadInputTokenCount": meta.cache_read,
        "cacheWriteInputTokenCount": meta.cache_write,
    })
}

/// An InvokeModelWithResponseStream `chunk` frame carrying one JSON event.
pub fn chunk_frame(event: &Value, rng: &mut fastrand::Rng) -> Bytes {
    let bytes = base64::engine::general_purpose::STANDARD.encode(event.to_string());
    let payload = json!({"bytes": bytes, "p": padding(rng)});
    event_frame("chunk", payload.to_string())
}

/// Anthropic stream events, from message_start to message_stop.
pub fn anthropic_events(answer: &Answer, meta: &Meta) -> Vec<(Value, u32)> {
    let mut rng = fastrand::Rng::with_seed(meta.seed ^ 0xa17);
    let mut out = vec![(
        json!({"type": "message_start", "message": {
            "id": message_id(meta.seed), "type": "message", "role": "assistant", "model": meta.model_name,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": anthropic_usage(meta, 1)}}),
        0,
    )];
    for (i, block) in answer.blocks.iter().enumerate() {
        match block {
            Block::Text(pieces) => {
                out.push((json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}), 0));
                for (text, n) in deltas(pieces, &mut rng) {
                    out.push((json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": text}}), n));
                }
            }
            Block::Reasoning { pieces, signature } => {
                out.push((
                    json!({"type": "content_block_start", "index": i,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
                    0,
                ));
                for (text, n) in deltas(pieces, &mut rng) {
                    out.push((
                        json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "thinking_delta", "thinking": text}}),
                        n,
                    ));
                }
                out.push((
                    json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "signature_delta", "signature": signature}}),
                    0,
                ));
            }
            Block::Cited { pieces, citation } => {
                out.push((
                    json!({"type": "content_block_start", "index": i,
                    "content_block": {"type": "text", "text": "", "citations": []}}),
                    0,
                ));
                out.push((
                    json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "citations_delta", "citation": citation.anthropic_json()}}),
                    0,
                ));
                for (text, n) in deltas(pieces, &mut rng) {
                    out.push((json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": text}}), n));
                }
            }
            Block::ToolUse { id, name, input } => {
                out.push((
                    json!({"type": "content_block_start", "index": i,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                    0,
                ));
                for part in json_parts(input, &mut rng) {
                    out.push((
                        json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": part}}),
                        1,
                    ));
                }
            }
        }
        out.push((json!({"type": "content_block_stop", "index": i}), 0));
    }
    out.push((
        json!({"type": "message_delta", "delta": {"stop_reason": answer.stop_reason.anthropic_name(), "stop_sequence": answer.stop_sequence},
            "usage": {"output_tokens": meta.output_tokens}}),
        0,
    ));
    out.push((
        with_native(
            json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": invocation_metrics(meta)}),
            meta,
        ),
        0,
    ));
    out
}

fn llama_stop(answer: &Answer) -> &'static str {
    match answer.stop_reason {
        crate::generate::StopReason::MaxTokens => "length",
        _ => "stop",
    }
}

/// A Llama response body.
pub fn llama_body(answer: &Answer, meta: &Meta) -> Value {
    with_native(
        json!({
            "generation": crate::generate::text(answer),
            "prompt_token_count": meta.input_tokens,
            "generation_token_count": meta.output_tokens,
            "stop_reason": llama_stop(answer),
        }),
        meta,
    )
}

/// Llama stream chunks: one per delta, the last with the stop reason and metrics.
pub fn llama_events(answer: &Answer, meta: &Meta) -> Vec<(Value, u32)> {
    let mut rng = fastrand::Rng::with_seed(meta.seed ^ 0x11a);
    let pieces: Vec<String> = answer
        .blocks
        .iter()
        .flat_map(|b| match b {
            Block::Text(p) | Block::Cited { pieces: p, .. } => p.clone(),
            Block::Reasoning { .. } | Block::ToolUse { .. } => Vec::new(),
        })
        .collect();
    let mut out = Vec::new();
    let mut generated = 0;
    for (i, (text, n)) in deltas(&pieces, &mut rng).into_iter().enumerate() {
        generated += n;
        out.push((
            json!({"generation": text, "prompt_token_count": if i == 0 { Value::from(meta.input_tokens) } else { Value::Null },
                "generation_token_count": generated, "stop_reason": null}),
            n,
        ));
    }
    out.push((
        with_native(
            json!({"generation": "", "prompt_token_count": null, "generation_token_count": generated,
                "stop_reason": llama_stop(answer), "amazon-bedrock-invocationMetrics": invocation_metrics(meta)}),
            meta,
        ),
        0,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::StopReason;
    use bedrock_wire::converse::Summary;

    fn sample() -> (Answer, Meta) {
        let answer = Answer {
            blocks: vec![
                Block::Text(vec!["Hello ".into(), "there ".into(), "friend.".into()]),
                Block::ToolUse {
                    id: "tooluse_1".into(),
                    name: "lookup".into(),
                    input: json!({"q": "x"}),
                },
            ],
            stop_reason: StopReason::ToolUse,
            stop_sequence: None,
            output_tokens: 9,
        };
        let meta = Meta {
            input_tokens: 10,
            output_tokens: 9,
            cache_read: 100,
            cache_write: 0,
            cache_write_1h: 0,
            latency_ms: 42,
            first_byte_ms: 10,
            tier: Some("optimized"),
            service_tier: Some("priority"),
            trace: Some(
                json!({"promptRouter": {"invokedModelId": "arn:aws:bedrock:us-east-2:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"}}),
            ),
            native: Map::new(),
            model_name: "claude".into(),
            seed: 1,
            report_stop_sequence: false,
        };
        (answer, meta)
    }

    #[test]
    fn converse_body_and_stream_agree() {
        let (answer, meta) = sample();
        let body = converse_body(&answer, &meta);
        assert_eq!(
            body["output"]["message"]["content"][0]["text"],
            "Hello there friend."
        );
        assert_eq!(
            body["output"]["message"]["content"][1]["toolUse"]["input"],
            json!({"q": "x"})
        );
        assert_eq!(body["usage"]["totalTokens"], 119);
        assert_eq!(body["usage"]["cacheReadInputTokens"], 100);
        assert_eq!(body["performanceConfig"]["latency"], "optimized");
        assert_eq!(body["serviceTier"]["type"], "priority");
        assert!(body["trace"]["promptRouter"]["invokedModelId"]
            .as_str()
            .unwrap()
            .ends_with("claude-3-haiku-20240307-v1:0"));
        let streamed: Vec<_> = converse_events(&answer, &meta, true)
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(
            assemble(&streamed).unwrap(),
            body,
            "padding does not change the answer"
        );
        let mut summary = Summary::default();
        streamed.iter().for_each(|e| summary.observe(e));
        assert_eq!(summary.stop_reason.as_deref(), Some("tool_use"));
    }

    #[test]
    fn anthropic_stream_ends_with_invocation_metrics() {
        let (answer, meta) = sample();
        let events = anthropic_events(&answer, &meta);
        assert_eq!(events[0].0["type"], "message_start");
        let last = &events.last().unwrap().0;
        assert_eq!(last["type"], "message_stop");
        assert_eq!(
            last["amazon-bedrock-invocationMetrics"]["outputTokenCount"],
            9
        );
        let partial: String = events
            .iter()
            .filter(|(e, _)| e["delta"]["type"] == "input_json_delta")
            .map(|(e, _)| e["delta"]["partial_json"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&partial).unwrap(),
            json!({"q": "x"})
        );
    }
}
