//! A chat server's answer as the Converse answer Bedrock would have sent: a
//! whole `chat.completion` as a Converse body ([`response`]), a stream of
//! `chat.completion.chunk`s as ConverseStream events in Bedrock's order
//! ([`ChunkReader`]). Usage is the server's when it reports any, else
//! estimated with `bedrock_wire::tokens` (and said to be).

use bedrock_wire::converse::{ConverseEvent, EventKind, Usage};
use bedrock_wire::tokens;
use serde_json::{json, Value};
use std::collections::HashMap;

use super::{stop_reason, stream_error, usage_from};
use crate::error::{ProxyError, Side};

/// Input tokens of a chat request by the estimator's rules (a token per 4
/// bytes of text, 1,600 per image, 3 per message, tools by their JSON), for
/// servers that report no usage.
pub fn estimate_input(chat: &Value) -> u32 {
    let tools: u32 = chat["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| tokens::json(&t["function"]))
        .sum();
    let messages: u32 = chat["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let content = match &m["content"] {
                Value::String(s) => tokens::text(s),
                Value::Array(parts) => parts
                    .iter()
                    .map(|p| match p["type"].as_str() {
                        Some("image_url") => tokens::IMAGE_TOKENS,
                        _ => tokens::json(&p["text"]),
                    })
                    .sum(),
                _ => 0,
            };
            let calls: u32 = m["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    tokens::json(&c["function"]["name"]) + tokens::json(&c["function"]["arguments"])
                })
                .sum();
            tokens::MESSAGE_OVERHEAD + content + calls
        })
        .sum();
    tools + messages
}

/// Usage estimated for an answer the server sent no usage for.
fn estimated(input: u32, output: u32) -> Usage {
    Usage {
        input_tokens: u64::from(input),
        output_tokens: u64::from(output),
        total_tokens: u64::from(input) + u64::from(output),
        ..Usage::default()
    }
}

/// The text of a message's `content` (a string, or a list of text parts).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// The reasoning a server reports beside the content (`reasoning_content`:
/// DeepSeek, vLLM's reasoning parsers, DashScope; `reasoning`: newer vLLM).
fn reasoning_of(v: &Value) -> Option<&str> {
    v.get("reasoning_content")
        .or_else(|| v.get("reasoning"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A tool call's arguments as Converse's `input` document: the JSON they
/// hold, or the text itself when a model wrote something else.
fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

/// A whole `chat.completion` as a Converse response body. `input_estimate`
/// stands in for the input tokens when the server reports no usage; the flag
/// says whether the usage is estimated.
pub fn response(
    chat: &Value,
    upstream: &str,
    input_estimate: u32,
    latency_ms: u64,
) -> Result<(Value, bool), ProxyError> {
    let choice = chat["choices"].get(0).ok_or_else(|| {
        ProxyError::new(
            crate::error::ErrorKind::Internal,
            Side::Upstream,
            format!("upstream {upstream} answered without a choice"),
        )
    })?;
    let message = &choice["message"];
    let mut content = Vec::new();
    let mut output_tokens = 0;
    if let Some(reasoning) = reasoning_of(message) {
        output_tokens += tokens::text(reasoning);
        content.push(json!({ "reasoningContent": { "reasoningText": { "text": reasoning } } }));
    }
    let text = content_text(&message["content"]);
    output_tokens += tokens::text(&text);
    if !text.is_empty() {
        content.push(json!({ "text": text }));
    }
    let calls = message["tool_calls"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    for (i, call) in calls.iter().enumerate() {
        let name = call["function"]["name"].as_str().unwrap_or("");
        let arguments = call["function"]["arguments"].as_str().unwrap_or("");
        output_tokens += tokens::text(name) + tokens::text(arguments);
        let id = call["id"]
            .as_str()
            .map_or_else(|| format!("tooluse_{i}"), str::to_owned);
        content.push(
            json!({ "toolUse": { "toolUseId": id, "name": name, "input": tool_input(arguments) } }),
        );
    }
    if content.is_empty() {
        content.push(json!({ "text": "" }));
    }
    let stop = stop_reason(
        choice["finish_reason"].as_str(),
        choice["stop_reason"].is_string(),
        !calls.is_empty(),
    );
    let (usage, is_estimate) = match usage_from(&chat["usage"]) {
        Some(u) => (u, false),
        None => (estimated(input_estimate, output_tokens), true),
    };
    Ok((
        json!({
            "output": { "message": { "role": "assistant", "content": content } },
            "stopReason": stop,
            "usage": usage.to_json(),
            "metrics": { "latencyMs": latency_ms },
        }),
        is_estimate,
    ))
}

/// An open Converse content block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(u32),
    Reasoning(u32),
    Tool(u32),
}

impl Open {
    fn index(self) -> u32 {
        match self {
            Open::Text(i) | Open::Reasoning(i) | Open::Tool(i) => i,
        }
    }
}

/// Reads a chat stream's chunks, in order, and says what ConverseStream events
/// they are: `messageStart` with the first chunk, text and reasoning deltas,
/// each tool call as a `contentBlockStart` and its argument deltas, a
/// `contentBlockStop` for each block, `messageStop` with the finish reason and,
/// once the stream ends, `metadata` with the usage (the server's, from
/// `stream_options.include_usage`, else estimated).
#[derive(Debug)]
pub struct ChunkReader {
    upstream: String,
    started: bool,
    open: Option<Open>,
    next_index: u32,
    /// OpenAI tool-call index -> Converse content-block index.
    tools: HashMap<u64, u32>,
    tool_calls: bool,
    finish: Option<String>,
    matched_stop: bool,
    stopped: bool,
    usage: Option<Usage>,
    output_tokens: u32,
}

impl ChunkReader {
    pub fn new(upstream: &str) -> ChunkReader {
        ChunkReader {
            upstream: upstream.to_owned(),
            started: false,
            open: None,
            next_index: 0,
            tools: HashMap::new(),
            tool_calls: false,
            finish: None,
            matched_stop: false,
            stopped: false,
            usage: None,
            output_tokens: 0,
        }
    }

    fn event(kind: EventKind, payload: Value) -> ConverseEvent {
        ConverseEvent::new(kind, &payload)
    }

    fn close(&mut self, out: &mut Vec<ConverseEvent>) {
        if let Some(open) = self.open.take() {
            out.push(Self::event(
                EventKind::ContentBlockStop,
                json!({ "contentBlockIndex": open.index() }),
            ));
        }
    }

    /// The open block of `want`'s kind, opening one (and closing any other)
    /// when there is none.
    fn block(&mut self, want: fn(u32) -> Open, out: &mut Vec<ConverseEvent>) -> u32 {
        match self.open {
            Some(open) if open == want(open.index()) => open.index(),
            _ => {
                self.close(out);
                let index = self.next_index;
                self.next_index += 1;
                self.open = Some(want(index));
                index
            }
        }
    }

    /// The events one chunk (a `data:` payload, parsed) becomes; an error
    /// event is the error that ends the answer.
    pub fn chunk(&mut self, chunk: &Value) -> Result<Vec<ConverseEvent>, ProxyError> {
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(stream_error(&self.upstream, error));
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(Self::event(
                EventKind::MessageStart,
                json!({ "role": "assistant" }),
            ));
        }
        if let Some(usage) = usage_from(&chunk["usage"]) {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return Ok(out);
        };
        if self.stopped {
            // Anything after the finish reason but the usage has no place in Converse.
            return Ok(out);
        }
        let delta = &choice["delta"];
        if let Some(reasoning) = reasoning_of(delta) {
            self.output_tokens += tokens::text(reasoning);
            let index = self.block(Open::Reasoning, &mut out);
            out.push(Self::event(
                EventKind::ContentBlockDelta,
                json!({ "contentBlockIndex": index, "delta": { "reasoningContent": { "text": reasoning } } }),
            ));
        }
        let text = content_text(&delta["content"]);
        if !text.is_empty() {
            self.output_tokens += tokens::text(&text);
            let index = self.block(Open::Text, &mut out);
            out.push(Self::event(
                EventKind::ContentBlockDelta,
                json!({ "contentBlockIndex": index, "delta": { "text": text } }),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            self.tool_call(call, &mut out);
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.finish = Some(finish.to_owned());
            self.matched_stop = choice["stop_reason"].is_string();
            self.close(&mut out);
            let stop = stop_reason(Some(finish), self.matched_stop, self.tool_calls);
            out.push(Self::event(
                EventKind::MessageStop,
                json!({ "stopReason": stop }),
            ));
            self.stopped = true;
        }
        Ok(out)
    }

    fn tool_call(&mut self, call: &Value, out: &mut Vec<ConverseEvent>) {
        self.tool_calls = true;
        let n = call["index"].as_u64().unwrap_or(0);
        let index = match self.tools.get(&n) {
            Some(index) => *index,
            None => {
                self.close(out);
                let index = self.next_index;
                self.next_index += 1;
                self.tools.insert(n, index);
                self.open = Some(Open::Tool(index));
                let id = call["id"]
                    .as_str()
                    .map_or_else(|| format!("tooluse_{n}"), str::to_owned);
                let name = call["function"]["name"].as_str().unwrap_or("");
                self.output_tokens += tokens::text(name);
                out.push(Self::event(
                    EventKind::ContentBlockStart,
                    json!({ "contentBlockIndex": index, "start": { "toolUse": { "toolUseId": id, "name": name } } }),
                ));
                index
            }
        };
        if let Some(arguments) = call["function"]["arguments"]
            .as_str()
            .filter(|a| !a.is_empty())
        {
            self.output_tokens += tokens::text(arguments);
            out.push(Self::event(
                EventKind::ContentBlockDelta,
                json!({ "contentBlockIndex": index, "delta": { "toolUse": { "input": arguments } } }),
            ));
        }
    }

    /// The events that end the answer once the server ended its stream:
    /// `done` when it sent `data: [DONE]`. A stream that ends without a
    /// finish reason and without `[DONE]` was cut off: an error. The second
    /// value says whether the usage is estimated.
    pub fn end(
        &mut self,
        done: bool,
        input_estimate: u32,
        latency_ms: u64,
    ) -> Result<(Vec<ConverseEvent>, bool), ProxyError> {
        if !self.started || (!done && !self.stopped) {
            return Err(ProxyError::upstream_unreachable(format!(
                "upstream {} ended the stream before the answer was complete",
                self.upstream
            )));
        }
        let mut out = Vec::new();
        if !self.stopped {
            self.close(&mut out);
            let stop = stop_reason(None, false, self.tool_calls);
            out.push(Self::event(
                EventKind::MessageStop,
                json!({ "stopReason": stop }),
            ));
            self.stopped = true;
        }
        let (usage, is_estimate) = match self.usage {
            Some(u) => (u, false),
            None => (estimated(input_estimate, self.output_tokens), true),
        };
        out.push(Self::event(
            EventKind::Metadata,
            json!({ "usage": usage.to_json(), "metrics": { "latencyMs": latency_ms } }),
        ));
        Ok((out, is_estimate))
    }
}
