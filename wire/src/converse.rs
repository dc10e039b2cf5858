//! A complete Converse answer as one normalized list of ConverseStream events.
//!
//! The simulator generates answers in this form, the proxy's response cache stores
//! them in it, and both render them either as a Converse JSON body ([`assemble`]) or
//! as event-stream frames ([`ConverseEvent::to_frame`]). A Converse JSON body turns
//! back into events with [`split`], so a stream can be replayed from an answer that
//! was fetched without streaming.
//!
//! Event payloads are kept as the exact JSON bytes received, so fields this crate
//! does not know survive a replay.

use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

use crate::eventstream::{event_frame, Frame, FrameKind};
use crate::operation::Operation;
use crate::tier::{LatencyTier, ServiceTier, LATENCY_HEADER, SERVICE_TIER_HEADER};

/// `serde_json::from_slice`, with text that is valid UTF-8 (all JSON Bedrock
/// sends) read as a `&str`: the text is checked once, by the standard
/// library's ASCII fast path, where a slice reader checks every string it
/// parses on its own. Bytes that are not UTF-8 go to `from_slice` as before.
pub fn read_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// The event types of the ConverseStream union (its exceptions aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    MessageStart,
    ContentBlockStart,
    ContentBlockDelta,
    ContentBlockStop,
    MessageStop,
    Metadata,
}

impl EventKind {
    /// The `:event-type` header value.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::MessageStart => "messageStart",
            EventKind::ContentBlockStart => "contentBlockStart",
            EventKind::ContentBlockDelta => "contentBlockDelta",
            EventKind::ContentBlockStop => "contentBlockStop",
            EventKind::MessageStop => "messageStop",
            EventKind::Metadata => "metadata",
        }
    }

    /// Reads an `:event-type` header value.
    pub fn from_name(name: &str) -> Option<EventKind> {
        Some(match name {
            "messageStart" => EventKind::MessageStart,
            "contentBlockStart" => EventKind::ContentBlockStart,
            "contentBlockDelta" => EventKind::ContentBlockDelta,
            "contentBlockStop" => EventKind::ContentBlockStop,
            "messageStop" => EventKind::MessageStop,
            "metadata" => EventKind::Metadata,
            _ => return None,
        })
    }
}

/// One ConverseStream event: its type and its JSON payload as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConverseEvent {
    pub kind: EventKind,
    pub payload: Bytes,
}

/// Why events and a Converse body could not be turned into one another.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssembleError {
    #[error("event payload is not JSON: {0}")]
    BadJson(String),
    #[error("content of kind `{0}` cannot be converted between a stream and a body")]
    Unsupported(String),
    #[error("the answer is incomplete: {0}")]
    Incomplete(&'static str),
}

impl ConverseEvent {
    /// An event whose payload is `payload` serialized.
    pub fn new(kind: EventKind, payload: &Value) -> Self {
        ConverseEvent {
            kind,
            payload: Bytes::from(payload.to_string()),
        }
    }

    /// The event as an event-stream frame.
    pub fn to_frame(&self) -> Bytes {
        event_frame(self.kind.name(), self.payload.clone())
    }

    /// The event a decoded frame carries; `None` for exceptions and event types
    /// this crate does not know.
    pub fn from_frame(frame: &Frame) -> Option<Self> {
        match &frame.kind {
            FrameKind::Event(name) => EventKind::from_name(name).map(|kind| ConverseEvent {
                kind,
                payload: frame.payload.clone(),
            }),
            _ => None,
        }
    }

    /// The payload parsed.
    pub fn json(&self) -> Result<Value, AssembleError> {
        serde_json::from_slice(&self.payload).map_err(|e| AssembleError::BadJson(e.to_string()))
    }
}

/// Token usage as Bedrock reports it (`TokenUsage`; missing members are zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    /// Of `cache_write_input_tokens`, those written with the 1-hour TTL (from
    /// `cacheDetails`, whose other entries are the 5-minute writes); they are
    /// billed at the 1-hour write price.
    #[serde(rename = "cacheDetails", deserialize_with = "one_hour_writes")]
    pub cache_write_1h_input_tokens: u64,
}

/// Bedrock's cache-TTL names as `CacheDetail.ttl` and `cachePoint.ttl` spell them.
pub const TTL_1H: &str = "1h";
pub const TTL_5M: &str = "5m";

/// The 1-hour tokens of a `cacheDetails` list (`[{"ttl": "1h", "inputTokens": N}, ...]`).
fn one_hour_writes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Detail {
        ttl: Option<String>,
        #[serde(default)]
        input_tokens: u64,
    }
    let details: Option<Vec<Detail>> = serde::Deserialize::deserialize(d)?;
    Ok(details
        .unwrap_or_default()
        .iter()
        .filter(|d| d.ttl.as_deref() == Some(TTL_1H))
        .map(|d| d.input_tokens)
        .sum())
}

impl Usage {
    /// Reads a `TokenUsage` object; missing members count as zero.
    pub fn from_json(v: &Value) -> Usage {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let one_hour = v
            .get("cacheDetails")
            .and_then(Value::as_array)
            .map_or(0, |details| {
                details
                    .iter()
                    .filter(|d| d["ttl"] == TTL_1H)
                    .filter_map(|d| d["inputTokens"].as_u64())
                    .sum()
            });
        Usage {
            input_tokens: n("inputTokens"),
            output_tokens: n("outputTokens"),
            total_tokens: n("totalTokens"),
            cache_read_input_tokens: n("cacheReadInputTokens"),
            cache_write_input_tokens: n("cacheWriteInputTokens"),
            cache_write_1h_input_tokens: one_hour,
        }
    }

    /// The cache writes with the 5-minute TTL.
    pub fn cache_write_5m_input_tokens(&self) -> u64 {
        self.cache_write_input_tokens
            .saturating_sub(self.cache_write_1h_input_tokens)
    }

    /// The `TokenUsage` object; cache members only when non-zero, as Bedrock does.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("inputTokens".into(), self.input_tokens.into());
        m.insert("outputTokens".into(), self.output_tokens.into());
        m.insert("totalTokens".into(), self.total_tokens.into());
        if self.cache_read_input_tokens > 0 {
            m.insert(
                "cacheReadInputTokens".into(),
                self.cache_read_input_tokens.into(),
            );
        }
        if self.cache_write_input_tokens > 0 {
            m.insert(
                "cacheWriteInputTokens".into(),
                self.cache_write_input_tokens.into(),
            );
            // Sorted as Bedrock sorts them: 1h before 5m; empty TTLs left out.
            let details: Vec<Value> = [
                (TTL_1H, self.cache_write_1h_input_tokens),
                (TTL_5M, self.cache_write_5m_input_tokens()),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(ttl, n)| serde_json::json!({"ttl": ttl, "inputTokens": n}))
            .collect();
            m.insert("cacheDetails".into(), details.into());
        }
        Value::Object(m)
    }
}

/// The 1-hour cache writes of an Anthropic Messages `usage` object
/// (`cache_creation.ephemeral_1h_input_tokens`; 0 when absent).
pub fn anthropic_1h_writes(usage: &Value) -> u64 {
    usage["cache_creation"]["ephemeral_1h_input_tokens"]
        .as_u64()
        .unwrap_or(0)
}

/// The members of a Converse body, or of a `messageStop` or `metadata` event,
/// that a [`Summary`] keeps; serde skips the rest without allocating it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tail {
    stop_reason: Option<String>,
    usage: Option<Usage>,
    performance_config: Option<TailPerformance>,
    metrics: Option<TailMetrics>,
    service_tier: Option<TailServiceTier>,
    trace: Option<TailTrace>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct TailServiceTier {
    #[serde(rename = "type")]
    kind: Option<ServiceTier>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TailTrace {
    prompt_router: Option<TailRouter>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TailRouter {
    invoked_model_id: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct TailPerformance {
    latency: Option<LatencyTier>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TailMetrics {
    latency_ms: Option<u64>,
}

/// The stop reason of an answer a guardrail intervened in (Converse's
/// `stopReason`; also what an InvokeModel answer that says
/// `amazon-bedrock-guardrailAction: INTERVENED` is summarized as).
pub const GUARDRAIL_INTERVENED: &str = "guardrail_intervened";

/// What the end of an answer says: why it stopped, what it cost, which tier served it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub stop_reason: Option<String>,
    pub usage: Option<Usage>,
    /// `performanceConfig.latency` of the answer: the tier that actually served it.
    pub latency_tier: Option<LatencyTier>,
    pub latency_ms: Option<u64>,
    /// `serviceTier.type` of the answer (InvokeModel: its
    /// `X-Amzn-Bedrock-Service-Tier` header): the service tier that served it.
    pub service_tier: Option<ServiceTier>,
    /// `trace.promptRouter.invokedModelId`: the model a prompt router chose.
    pub invoked_model: Option<String>,
}

impl Summary {
    /// Reads one event into the summary (only `messageStop` and `metadata` matter).
    pub fn observe(&mut self, event: &ConverseEvent) {
        match event.kind {
            EventKind::MessageStop => {
                if let Ok(tail) = read_json::<Tail>(&event.payload) {
                    self.stop_reason = tail.stop_reason;
                }
            }
            EventKind::Metadata => {
                if let Ok(tail) = read_json::<Tail>(&event.payload) {
                    self.read_tail(tail);
                }
            }
            _ => {}
        }
    }

    /// The summary of a Converse JSON response body, read without building the
    /// whole document (the content is skipped, not allocated); an unreadable
    /// body gives an empty summary.
    pub fn of_response_bytes(body: &[u8]) -> Summary {
        read_json(body).map(Summary::from_tail).unwrap_or_default()
    }

    fn from_tail(mut tail: Tail) -> Summary {
        let mut s = Summary {
            stop_reason: tail.stop_reason.take(),
            ..Summary::default()
        };
        s.read_tail(tail);
        s
    }

    fn read_tail(&mut self, tail: Tail) {
        if tail.usage.is_some() {
            self.usage = tail.usage;
        }
        self.latency_tier = tail.performance_config.and_then(|p| p.latency);
        self.latency_ms = tail.metrics.and_then(|m| m.latency_ms);
        self.service_tier = tail.service_tier.and_then(|t| t.kind);
        self.invoked_model = tail
            .trace
            .and_then(|t| t.prompt_router)
            .and_then(|r| r.invoked_model_id);
    }

    /// The summary of a parsed Converse JSON response body.
    pub fn of_response(body: &Value) -> Summary {
        <Tail as serde::Deserialize>::deserialize(body)
            .map(Summary::from_tail)
            .unwrap_or_default()
    }

    /// What a whole answer of `op` says about itself: from the Converse body, or
    /// from InvokeModel's `x-amzn-bedrock-*` headers and its body's stop reason
    /// (Anthropic's `stop_reason`, or `stopReason`; [`GUARDRAIL_INTERVENED`]
    /// when `amazon-bedrock-guardrailAction` says so); other operations say nothing.
    pub fn of_answer(op: Operation, headers: &http::HeaderMap, body: &[u8]) -> Summary {
        match op {
            Operation::Converse => Summary::of_response_bytes(body),
            Operation::Invoke => {
                let n = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let input = n("x-amzn-bedrock-input-token-count");
                let output = n("x-amzn-bedrock-output-token-count");
                // Only the stop reason and Anthropic's split of cache writes by
                // TTL are read; the rest of the body is skipped, not built.
                #[derive(serde::Deserialize)]
                struct Stop {
                    stop_reason: Option<Value>,
                    #[serde(rename = "stopReason")]
                    stop_reason_camel: Option<Value>,
                    usage: Option<Value>,
                    #[serde(rename = "amazon-bedrock-guardrailAction")]
                    guardrail_action: Option<Value>,
                    /// Where a prompt router names its model in a native body.
                    #[serde(rename = "amazon-bedrock-trace")]
                    trace: Option<TailTrace>,
                }
                let parsed = read_json::<Stop>(body).ok();
                let one_hour = parsed
                    .as_ref()
                    .and_then(|v| v.usage.as_ref())
                    .map_or(0, anthropic_1h_writes);
                let invoked_model = parsed
                    .as_ref()
                    .and_then(|s| s.trace.as_ref())
                    .and_then(|t| t.prompt_router.as_ref())
                    .and_then(|r| r.invoked_model_id.clone());
                let stop_reason = parsed.and_then(|v| {
                    // A guardrail that intervened says so beside the model's
                    // own stop reason: that answer is the guardrail's.
                    if v.guardrail_action.as_ref().and_then(Value::as_str) == Some("INTERVENED") {
                        return Some(GUARDRAIL_INTERVENED.to_owned());
                    }
                    let text = |v: Option<Value>| match v {
                        Some(Value::String(s)) => Some(s),
                        _ => None,
                    };
                    text(v.stop_reason).or_else(|| text(v.stop_reason_camel))
                });
                let written = n("x-amzn-bedrock-cache-write-input-token-count");
                Summary {
                    stop_reason,
                    usage: Some(Usage {
                        input_tokens: input,
                        output_tokens: output,
                        total_tokens: input + output,
                        cache_read_input_tokens: n("x-amzn-bedrock-cache-read-input-token-count"),
                        cache_write_input_tokens: written,
                        cache_write_1h_input_tokens: one_hour.min(written),
                    }),
                    latency_tier: headers
                        .get(LATENCY_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(LatencyTier::parse),
                    latency_ms: Some(n("x-amzn-bedrock-invocation-latency")),
                    service_tier: headers
                        .get(SERVICE_TIER_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(ServiceTier::parse),
                    invoked_model,
                }
            }
            _ => Summary::default(),
        }
    }

    /// Whether the answer reached its end: a stop reason and usage were seen.
    pub fn is_complete(&self) -> bool {
        self.stop_reason.is_some() && self.usage.is_some()
    }
}

enum Block {
    /// Text, and the citations that support it (a `citationsContent` block when
    /// there are any).
    Text { text: String, citations: Vec<Value> },
    ToolUse {
        start: Map<String, Value>,
        input: String,
    },
    Reasoning {
        text: String,
        signature: Option<String>,
        redacted: Option<String>,
    },
}

impl Block {
    fn into_json(self) -> Result<Value, AssembleError> {
        Ok(match self {
            Block::Text { text, citations } if citations.is_empty() => json!({ "text": text }),
            Block::Text { text, citations } => json!({ "citationsContent": {
                "content": [{ "text": text }],
                "citations": citations,
            } }),
            Block::ToolUse { mut start, input } => {
                let input: Value = if input.trim().is_empty() {
                    json!({})
                } else {
                    serde_json::from_str(&input)
                        .map_err(|e| AssembleError::BadJson(format!("tool input: {e}")))?
                };
                start.insert("input".into(), input);
                json!({ "toolUse": start })
            }
            Block::Reasoning {
                redacted: Some(redacted),
                ..
            } => json!({ "reasoningContent": { "redactedContent": redacted } }),
            Block::Reasoning {
                text, signature, ..
            } => {
                let mut r = Map::new();
                r.insert("text".into(), text.into());
                if let Some(sig) = signature {
                    r.insert("signature".into(), sig.into());
                }
                json!({ "reasoningContent": { "reasoningText": r } })
            }
        })
    }
}

fn index_of(v: &Value) -> u32 {
    v["contentBlockIndex"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(0)
}

/// Builds the Converse response body of a complete answer.
///
/// Fails when the events are incomplete (no `messageStop` or `metadata`) or carry
/// content without a body form this crate knows; callers then do not cache.
pub fn assemble(events: &[ConverseEvent]) -> Result<Value, AssembleError> {
    let mut role = Value::from("assistant");
    let mut blocks: BTreeMap<u32, Block> = BTreeMap::new();
    let mut stop: Option<Value> = None;
    let mut metadata: Option<Value> = None;
    for event in events {
        let v = event.json()?;
        match event.kind {
            EventKind::MessageStart => role = v["role"].clone(),
            EventKind::ContentBlockStart => {
                let start = &v["start"];
                match start.get("toolUse").and_then(Value::as_object) {
                    Some(tool) => {
                        blocks.insert(
                            index_of(&v),
                            Block::ToolUse {
                                start: tool.clone(),
                                input: String::new(),
                            },
                        );
                    }
                    None => {
                        let kind = start
                            .as_object()
                            .and_then(|m| m.keys().next().cloned())
                            .unwrap_or_default();
                        return Err(AssembleError::Unsupported(kind));
                    }
                }
            }
            EventKind::ContentBlockDelta => {
                let delta = &v["delta"];
                let block = blocks.entry(index_of(&v));
                let new_text = || Block::Text {
                    text: String::new(),
                    citations: Vec::new(),
                };
                if let Some(t) = delta.get("text").and_then(Value::as_str) {
                    match block.or_insert_with(new_text) {
                        Block::Text { text, .. } => text.push_str(t),
                        _ => return Err(AssembleError::Unsupported("mixed text".into())),
                    }
                } else if let Some(citation) = delta.get("citation") {
                    match block.or_insert_with(new_text) {
                        Block::Text { citations, .. } => citations.push(citation.clone()),
                        _ => return Err(AssembleError::Unsupported("mixed citation".into())),
                    }
                } else if let Some(tool) = delta.get("toolUse") {
                    match block {
                        std::collections::btree_map::Entry::Occupied(mut o) => match o.get_mut() {
                            Block::ToolUse { input, .. } => {
                                input.push_str(tool["input"].as_str().unwrap_or(""))
                            }
                            _ => return Err(AssembleError::Unsupported("mixed toolUse".into())),
                        },
                        std::collections::btree_map::Entry::Vacant(_) => {
                            return Err(AssembleError::Incomplete("toolUse delta before its start"))
                        }
                    }
                } else if let Some(r) = delta.get("reasoningContent") {
                    let acc = block.or_insert_with(|| Block::Reasoning {
                        text: String::new(),
                        signature: None,
                        redacted: None,
                    });
                    let Block::Reasoning {
                        text,
                        signature,
                        redacted,
                    } = acc
                    else {
                        return Err(AssembleError::Unsupported("mixed reasoning".into()));
                    };
                    if let Some(t) = r.get("text").and_then(Value::as_str) {
                        text.push_str(t);
                    }
                    if let Some(s) = r.get("signature").and_then(Value::as_str) {
                        *signature = Some(s.to_owned());
                    }
                    if let Some(d) = r.get("redactedContent").and_then(Value::as_str) {
                        *redacted = Some(d.to_owned());
                    }
                } else {
                    let kind = delta
                        .as_object()
                        .and_then(|m| m.keys().next().cloned())
                        .unwrap_or_default();
                    return Err(AssembleError::Unsupported(kind));
                }
            }
            EventKind::ContentBlockStop => {}
            EventKind::MessageStop => stop = Some(v),
            EventKind::Metadata => metadata = Some(v),
        }
    }
    let stop = stop.ok_or(AssembleError::Incomplete("no messageStop"))?;
    let metadata = metadata.ok_or(AssembleError::Incomplete("no metadata"))?;
    let content = blocks
        .into_values()
        .map(Block::into_json)
        .collect::<Result<Vec<_>, _>>()?;

    let mut body = Map::new();
    body.insert(
        "output".into(),
        json!({ "message": { "role": role, "content": content } }),
    );
    body.insert("stopReason".into(), stop["stopReason"].clone());
    body.insert("usage".into(), metadata["usage"].clone());
    body.insert("metrics".into(), metadata["metrics"].clone());
    if let Some(extra) = stop.get("additionalModelResponseFields") {
        body.insert("additionalModelResponseFields".into(), extra.clone());
    }
    for key in ["trace", "performanceConfig", "serviceTier"] {
        if let Some(v) = metadata.get(key) {
            body.insert(key.into(), v.clone());
        }
    }
    Ok(Value::Object(body))
}

/// Cuts text into stream deltas of about `target` bytes, at whitespace where it can.
pub fn chunk_text(text: &str, target: usize) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut last_space = None;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            last_space = Some(i + c.len_utf8());
        }
        let end = i + c.len_utf8();
        if end - start >= target {
            let cut = last_space.filter(|&s| s > start).unwrap_or(end);
            chunks.push(&text[start..cut]);
            start = cut;
            last_space = None;
        }
    }
    if start < text.len() {
        chunks.push(&text[start..]);
    }
    chunks
}

/// Text deltas replayed from a body are cut to about this many bytes, roughly the
/// size of the deltas Bedrock streams.
const REPLAY_CHUNK_BYTES: usize = 24;

/// The events of a Converse response body, in Bedrock's stream order.
pub fn split(body: &Value) -> Result<Vec<ConverseEvent>, AssembleError> {
    let message = &body["output"]["message"];
    let content = message["content"]
        .as_array()
        .ok_or(AssembleError::Incomplete("no output.message.content"))?;
    let stop_reason = body
        .get("stopReason")
        .ok_or(AssembleError::Incomplete("no stopReason"))?;
    let mut events = vec![ConverseEvent::new(
        EventKind::MessageStart,
        &json!({ "role": message.get("role").cloned().unwrap_or("assistant".into()) }),
    )];
    let delta = |i: usize, d: Value| {
        ConverseEvent::new(
            EventKind::ContentBlockDelta,
            &json!({ "contentBlockIndex": i, "delta": d }),
        )
    };
    for (i, block) in content.iter().enumerate() {
        if let Some(text) = block.get("text").and_then(Value::as_str) {
            for chunk in chunk_text(text, REPLAY_CHUNK_BYTES) {
                events.push(delta(i, json!({ "text": chunk })));
            }
        } else if let Some(cited) = block.get("citationsContent") {
            let text: String = cited["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["text"].as_str())
                .collect();
            for chunk in chunk_text(&text, REPLAY_CHUNK_BYTES) {
                events.push(delta(i, json!({ "text": chunk })));
            }
            for citation in cited["citations"].as_array().into_iter().flatten() {
                events.push(delta(i, json!({ "citation": citation })));
            }
        } else if let Some(tool) = block.get("toolUse").and_then(Value::as_object) {
            let mut start = tool.clone();
            let input = start.remove("input").unwrap_or(json!({}));
            events.push(ConverseEvent::new(
                EventKind::ContentBlockStart,
                &json!({ "contentBlockIndex": i, "start": { "toolUse": start } }),
            ));
            events.push(delta(
                i,
                json!({ "toolUse": { "input": input.to_string() } }),
            ));
        } else if let Some(r) = block.get("reasoningContent") {
            if let Some(redacted) = r.get("redactedContent") {
                events.push(delta(
                    i,
                    json!({ "reasoningContent": { "redactedContent": redacted } }),
                ));
            } else {
                let rt = &r["reasoningText"];
                events.push(delta(
                    i,
                    json!({ "reasoningContent": { "text": rt["text"] } }),
                ));
                if let Some(sig) = rt.get("signature") {
                    events.push(delta(
                        i,
                        json!({ "reasoningContent": { "signature": sig } }),
                    ));
                }
            }
        } else {
            let kind = block
                .as_object()
                .and_then(|m| m.keys().next().cloned())
                .unwrap_or_default();
            return Err(AssembleError::Unsupported(kind));
        }
        events.push(ConverseEvent::new(
            EventKind::ContentBlockStop,
            &json!({ "contentBlockIndex": i }),
        ));
    }
    let mut stop = Map::new();
    stop.insert("stopReason".into(), stop_reason.clone());
    if let Some(extra) = body.get("additionalModelResponseFields") {
        stop.insert("additionalModelResponseFields".into(), extra.clone());
    }
    events.push(ConverseEvent::new(
        EventKind::MessageStop,
        &Value::Object(stop),
    ));
    let mut meta = Map::new();
    meta.insert("usage".into(), body["usage"].clone());
    meta.insert("metrics".into(), body["metrics"].clone());
    for key in ["trace", "performanceConfig", "serviceTier"] {
        if let Some(v) = body.get(key) {
            meta.insert(key.into(), v.clone());
        }
    }
    events.push(ConverseEvent::new(
        EventKind::Metadata,
        &Value::Object(meta),
    ));
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream::decode;

    #[test]
    fn a_summary_reads_the_same_from_text_and_from_bytes_that_are_not_utf8() {
        let text = [
            br#"{"output":{"message":{"content":[{"text":"caf\u00e9 "#.as_slice(),
            b"\xc3\xa9",
            br#""}]}},"stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":4,"totalTokens":7}}"#,
        ]
        .concat();
        let summary = Summary::of_response_bytes(&text);
        assert_eq!(summary.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(summary.usage.as_ref().map(|u| u.output_tokens), Some(4));
        // A byte that is not UTF-8 in text serde skips: read as from_slice
        // reads it, the usage still found.
        let mut bytes = text.clone();
        let at = bytes.iter().position(|&b| b == 0xc3).unwrap();
        bytes[at] = 0xff;
        assert!(std::str::from_utf8(&bytes).is_err());
        assert_eq!(Summary::of_response_bytes(&bytes), summary);
        // Text that is not JSON is an error either way.
        assert!(read_json::<Value>(b"{oops").is_err());
        assert!(read_json::<Value>(b"{\"a\":\"\xff\"}").is_err());
    }

    fn sample_body() -> Value {
        json!({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "The weather in Paris is mild today, with light wind."},
                {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris", "days": 2}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 12, "outputTokens": 30, "totalTokens": 42},
            "metrics": {"latencyMs": 250},
            "performanceConfig": {"latency": "optimized"}
        })
    }

    #[test]
    fn a_body_survives_split_then_assemble() {
        let body = sample_body();
        let events = split(&body).unwrap();
        assert_eq!(events.first().unwrap().kind, EventKind::MessageStart);
        assert_eq!(events.last().unwrap().kind, EventKind::Metadata);
        assert!(
            events
                .iter()
                .filter(|e| e.kind == EventKind::ContentBlockDelta)
                .count()
                > 2,
            "text is replayed in several deltas"
        );
        assert_eq!(assemble(&events).unwrap(), body);
    }

    #[test]
    fn events_survive_framing() {
        let events = split(&sample_body()).unwrap();
        for e in &events {
            let back = ConverseEvent::from_frame(&decode(e.to_frame()).unwrap()).unwrap();
            assert_eq!(&back, e);
        }
    }

    #[test]
    fn summary_reads_the_service_tier_and_the_routers_model() {
        let mut body = sample_body();
        body["serviceTier"] = json!({"type": "flex"});
        body["trace"] = json!({"promptRouter": {"invokedModelId": "arn:aws:bedrock:us-east-2:1:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"}});
        let whole = Summary::of_response_bytes(body.to_string().as_bytes());
        assert_eq!(whole.service_tier, Some(ServiceTier::Flex));
        let invoked = "arn:aws:bedrock:us-east-2:1:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0";
        assert_eq!(whole.invoked_model.as_deref(), Some(invoked));
        let mut streamed = Summary::default();
        for e in split(&body).unwrap() {
            streamed.observe(&e);
        }
        assert_eq!(
            streamed, whole,
            "the stream's metadata says what the body says"
        );
        assert_eq!(
            Summary::of_response_bytes(sample_body().to_string().as_bytes()).service_tier,
            None
        );

        let mut headers = http::HeaderMap::new();
        headers.insert(
            SERVICE_TIER_HEADER,
            http::HeaderValue::from_static("priority"),
        );
        let native = json!({"stop_reason": "end_turn", "amazon-bedrock-trace": {"promptRouter": {"invokedModelId": invoked}}});
        let invoke = Summary::of_answer(Operation::Invoke, &headers, native.to_string().as_bytes());
        assert_eq!(invoke.service_tier, Some(ServiceTier::Priority));
        assert_eq!(invoke.invoked_model.as_deref(), Some(invoked));
        assert_eq!(invoke.stop_reason.as_deref(), Some("end_turn"));
    }

    #[test]
    fn summary_reads_stop_usage_and_tier() {
        let mut s = Summary::default();
        for e in split(&sample_body()).unwrap() {
            s.observe(&e);
        }
        assert!(s.is_complete());
        assert_eq!(s.stop_reason.as_deref(), Some("tool_use"));
        assert_eq!(s.latency_tier, Some(LatencyTier::Optimized));
        assert_eq!(s.usage.unwrap().total_tokens, 42);
        assert_eq!(s, Summary::of_response(&sample_body()));
    }

    #[test]
    fn incomplete_answers_do_not_assemble() {
        let mut events = split(&sample_body()).unwrap();
        events.pop();
        assert_eq!(
            assemble(&events),
            Err(AssembleError::Incomplete("no metadata"))
        );
    }

    #[test]
    fn unknown_delta_kinds_are_refused_not_dropped() {
        let events = vec![
            ConverseEvent::new(EventKind::MessageStart, &json!({"role": "assistant"})),
            ConverseEvent::new(
                EventKind::ContentBlockDelta,
                &json!({"contentBlockIndex": 0, "delta": {"image": {}}}),
            ),
        ];
        assert_eq!(
            assemble(&events),
            Err(AssembleError::Unsupported("image".into()))
        );
    }

    #[test]
    fn reasoning_and_citations_survive_split_then_assemble() {
        let body = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"reasoningContent": {"reasoningText": {"text": "Let me look at the report first.", "signature": "c2ln"}}},
                {"text": "The report says "},
                {"citationsContent": {
                    "content": [{"text": "revenue grew by a tenth"}],
                    "citations": [{"title": "report", "sourceContent": [{"text": "Revenue grew 10%."}],
                        "location": {"documentChar": {"documentIndex": 0, "start": 0, "end": 17}}}]}},
                {"reasoningContent": {"redactedContent": "ZW5jcnlwdGVk"}}
            ]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 12, "outputTokens": 30, "totalTokens": 42},
            "metrics": {"latencyMs": 250}
        });
        let events = split(&body).unwrap();
        assert!(events
            .iter()
            .any(|e| e.json().unwrap()["delta"].get("citation").is_some()));
        assert_eq!(assemble(&events).unwrap(), body);
    }

    #[test]
    fn chunking_keeps_every_byte() {
        let text = "héllo wörld, this is a fairly long sentence without surprises";
        let chunks = chunk_text(text, 8);
        assert!(chunks.len() > 3);
        assert_eq!(chunks.concat(), text);
        assert_eq!(chunk_text("", 8), Vec::<&str>::new());
    }
}
