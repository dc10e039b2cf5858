//! OpenAI Chat Completions <-> Bedrock Converse, both ways, as pure functions.
//!
//! A request becomes exactly the Converse JSON a native client would send for
//! the same meaning (so both share response-cache entries); what Converse cannot
//! honour is a 400 naming the parameter, never silently dropped.

use base64::Engine;
use bedrock_wire::converse::{ConverseEvent, EventKind, Usage};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

use crate::error::ProxyError;
use crate::ingress::shape::{self, Kind};

/// A Chat Completions request, translated.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// The Converse request body.
    pub converse: Value,
}

/// A 400 that names the offending parameter first (and in `param`).
fn invalid(param: &str, message: impl std::fmt::Display) -> ProxyError {
    ProxyError::validation(format!("{param}: {message}")).with_param(param)
}

/// The JSON types of the request members this proxy reads or accepts, as the
/// Chat Completions API defines them.
const TYPES: &[(&str, &[Kind])] = &[
    ("model", &[Kind::String]),
    ("messages", &[Kind::Array]),
    ("tools", &[Kind::Array]),
    ("tool_choice", &[Kind::String, Kind::Object]),
    ("max_tokens", &[Kind::Integer]),
    ("max_completion_tokens", &[Kind::Integer]),
    ("temperature", &[Kind::Number]),
    ("top_p", &[Kind::Number]),
    ("stop", &[Kind::String, Kind::Array]),
    ("stream", &[Kind::Boolean]),
    ("stream_options", &[Kind::Object]),
    ("n", &[Kind::Integer]),
    ("parallel_tool_calls", &[Kind::Boolean]),
    ("user", &[Kind::String]),
    ("store", &[Kind::Boolean]),
    ("metadata", &[Kind::Object]),
    ("service_tier", &[Kind::String]),
    ("logprobs", &[Kind::Boolean]),
    ("frequency_penalty", &[Kind::Number]),
    ("presence_penalty", &[Kind::Number]),
    ("logit_bias", &[Kind::Object]),
];

/// Request members that are accepted and have no effect on Bedrock (bookkeeping
/// OpenAI does on its own side).
const IGNORED: &[&str] = &[
    "user",
    "store",
    "metadata",
    "service_tier",
    "stream_options",
];

/// Text of a `content` that may be a string or a list of text parts.
fn text_parts(content: &Value, param: &str) -> Result<Vec<Value>, ProxyError> {
    match content {
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({ "text": s })]),
        Value::Null => Ok(Vec::new()),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, p)| match (p["type"].as_str(), p["text"].as_str()) {
                (Some("text"), Some(t)) => Ok(json!({ "text": t })),
                _ => Err(invalid(
                    &format!("{param}[{i}]"),
                    "only text parts are allowed here",
                )),
            })
            .collect(),
        _ => Err(invalid(
            param,
            "content must be a string or a list of parts",
        )),
    }
}

/// A `data:` URL image as a Converse image block.
fn image_block(url: &str, param: &str) -> Result<Value, ProxyError> {
    let rest = url.strip_prefix("data:").ok_or_else(|| {
        invalid(param, "only data URLs (data:image/png;base64,...) are supported; the proxy does not fetch remote images")
    })?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| invalid(param, "a data URL needs a comma before its data"))?;
    let media = meta
        .strip_suffix(";base64")
        .ok_or_else(|| invalid(param, "the image data URL must be base64-encoded"))?;
    let format = match media {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => {
            return Err(invalid(
                param,
                format!("image type `{other}` is not one of png, jpeg, gif, webp"),
            ))
        }
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| invalid(param, format!("the image data is not valid base64: {e}")))?;
    if decoded.is_empty() {
        return Err(invalid(param, "the image is empty"));
    }
    Ok(json!({ "image": { "format": format, "source": { "bytes": data.trim() } } }))
}

fn user_parts(content: &Value, param: &str) -> Result<Vec<Value>, ProxyError> {
    match content {
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let param = format!("{param}[{i}]");
                match p["type"].as_str() {
                    Some("text") => Ok(json!({ "text": p["text"].as_str().unwrap_or("") })),
                    Some("image_url") => {
                        let url = p["image_url"]["url"]
                            .as_str()
                            .or(p["image_url"].as_str())
                            .ok_or_else(|| invalid(&param, "image_url.url is required"))?;
                        image_block(url, &format!("{param}.image_url"))
                    }
                    Some(other) => Err(invalid(
                        &param,
                        format!("content parts of type `{other}` are not supported"),
                    )),
                    None => Err(invalid(&param, "a content part needs a type")),
                }
            })
            .collect(),
        other => text_parts(other, param),
    }
}

/// Appends blocks to the conversation, merging into the previous message when
/// it has the same role (Bedrock requires roles to alternate).
fn push(messages: &mut Vec<(String, Vec<Value>)>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some((last, content)) if last == role => content.extend(blocks),
        _ => messages.push((role.to_owned(), blocks)),
    }
}

/// Translates a Chat Completions request body.
pub fn request(body: &Value) -> Result<Translated, ProxyError> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("body", "the request body must be a JSON object"))?;
    shape::check(obj, TYPES, invalid)?;
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("model", "you must provide a model parameter"))?
        .to_owned();

    for (key, value) in obj {
        let unsupported = match key.as_str() {
            "model"
            | "messages"
            | "tools"
            | "tool_choice"
            | "max_tokens"
            | "max_completion_tokens"
            | "temperature"
            | "top_p"
            | "stop"
            | "stream"
            | "n"
            | "parallel_tool_calls" => false,
            k if IGNORED.contains(&k) => false,
            "logprobs" => value.as_bool() == Some(true),
            "frequency_penalty" | "presence_penalty" => value.as_f64().is_some_and(|v| v != 0.0),
            "logit_bias" => value.as_object().is_some_and(|m| !m.is_empty()),
            _ => !value.is_null(),
        };
        if unsupported {
            return Err(invalid(
                key,
                format!("`{key}` is not supported by this proxy's Bedrock backend"),
            ));
        }
    }
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return Err(invalid(
            "n",
            "only n = 1 is supported: Bedrock returns one choice per request",
        ));
    }
    if obj.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        return Err(invalid(
            "parallel_tool_calls",
            "parallel_tool_calls = false cannot be guaranteed on Bedrock; omit it",
        ));
    }

    let raw_messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("messages", "messages must be a non-empty list"))?;
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<(String, Vec<Value>)> = Vec::new();
    let mut has_tool_blocks = false;
    for (i, m) in raw_messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let content = m.get("content").unwrap_or(&Value::Null);
        match m["role"].as_str() {
            Some("system" | "developer") => {
                system.extend(text_parts(content, &format!("{param}.content"))?)
            }
            Some("user") => push(
                &mut messages,
                "user",
                user_parts(content, &format!("{param}.content"))?,
            ),
            Some("assistant") => {
                let mut blocks = text_parts(content, &format!("{param}.content"))?;
                for (j, call) in m["tool_calls"].as_array().into_iter().flatten().enumerate() {
                    let param = format!("{param}.tool_calls[{j}]");
                    let id = call["id"]
                        .as_str()
                        .ok_or_else(|| invalid(&param, "a tool call needs an id"))?;
                    let name = call["function"]["name"]
                        .as_str()
                        .ok_or_else(|| invalid(&param, "a tool call needs function.name"))?;
                    let args = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let input: Value = if args.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(args).map_err(|e| {
                            invalid(
                                &format!("{param}.function.arguments"),
                                format!("not JSON: {e}"),
                            )
                        })?
                    };
                    blocks.push(
                        json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } }),
                    );
                    has_tool_blocks = true;
                }
                push(&mut messages, "assistant", blocks);
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().ok_or_else(|| {
                    invalid(
                        &format!("{param}.tool_call_id"),
                        "a tool message needs tool_call_id",
                    )
                })?;
                let mut parts = text_parts(content, &format!("{param}.content"))?;
                if parts.is_empty() {
                    parts.push(json!({ "text": "" }));
                }
                push(
                    &mut messages,
                    "user",
                    vec![json!({ "toolResult": { "toolUseId": id, "content": parts } })],
                );
                has_tool_blocks = true;
            }
            Some(other) => {
                return Err(invalid(
                    &format!("{param}.role"),
                    format!("role `{other}` is not supported"),
                ))
            }
            None => {
                return Err(invalid(
                    &format!("{param}.role"),
                    "every message needs a role",
                ))
            }
        }
    }
    if messages.is_empty() {
        return Err(invalid("messages", "at least one user message is needed"));
    }

    let mut converse = Map::new();
    converse.insert(
        "messages".into(),
        Value::Array(
            messages
                .into_iter()
                .map(|(role, content)| json!({ "role": role, "content": content }))
                .collect(),
        ),
    );
    if !system.is_empty() {
        converse.insert("system".into(), Value::Array(system));
    }

    let mut inference = Map::new();
    let max_tokens = obj
        .get("max_completion_tokens")
        .or_else(|| obj.get("max_tokens"))
        .filter(|v| !v.is_null());
    if let Some(v) = max_tokens {
        let n = v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| invalid("max_tokens", "must be a positive integer"))?;
        inference.insert("maxTokens".into(), n.into());
    }
    if let Some(t) = obj.get("temperature").filter(|v| !v.is_null()) {
        let t = t
            .as_f64()
            .ok_or_else(|| invalid("temperature", "must be a number"))?;
        if !(0.0..=1.0).contains(&t) {
            return Err(invalid("temperature", "must be between 0 and 1 on Bedrock"));
        }
        inference.insert("temperature".into(), obj["temperature"].clone());
    }
    if let Some(p) = obj.get("top_p").filter(|v| !v.is_null()) {
        let v = p
            .as_f64()
            .ok_or_else(|| invalid("top_p", "must be a number"))?;
        if !(0.0..=1.0).contains(&v) {
            return Err(invalid("top_p", "must be between 0 and 1"));
        }
        inference.insert("topP".into(), p.clone());
    }
    match obj.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            inference.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            inference.insert("stopSequences".into(), Value::Array(list.clone()));
        }
        Some(_) => return Err(invalid("stop", "must be a string or a list of strings")),
    }
    if !inference.is_empty() {
        converse.insert("inferenceConfig".into(), Value::Object(inference));
    }

    let choice = obj.get("tool_choice").filter(|v| !v.is_null());
    let tools = obj
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty());
    if let Some(tools) = tools {
        let none = choice.and_then(Value::as_str) == Some("none");
        if !none || has_tool_blocks {
            let specs = tools
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    if !t.is_object() {
                        return Err(invalid(
                            &format!("tools[{i}]"),
                            format!("expected an object, got {}", shape::describe(t)),
                        ));
                    }
                    let f = &t["function"];
                    let name = f["name"].as_str().ok_or_else(|| {
                        invalid(&format!("tools[{i}].function.name"), "a tool needs a name")
                    })?;
                    let mut spec = Map::new();
                    spec.insert("name".into(), name.into());
                    if let Some(d) = f["description"].as_str() {
                        spec.insert("description".into(), d.into());
                    }
                    let schema = f
                        .get("parameters")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                    spec.insert("inputSchema".into(), json!({ "json": schema }));
                    Ok(json!({ "toolSpec": spec }))
                })
                .collect::<Result<Vec<_>, ProxyError>>()?;
            let mut config = Map::new();
            config.insert("tools".into(), Value::Array(specs));
            match choice {
                None => {}
                Some(Value::String(s)) if s == "auto" || s == "none" => {
                    config.insert("toolChoice".into(), json!({ "auto": {} }));
                }
                Some(Value::String(s)) if s == "required" => {
                    config.insert("toolChoice".into(), json!({ "any": {} }));
                }
                Some(c) if c["type"] == "function" => {
                    let name = c["function"]["name"].as_str().ok_or_else(|| {
                        invalid(
                            "tool_choice.function.name",
                            "a named tool choice needs a name",
                        )
                    })?;
                    config.insert("toolChoice".into(), json!({ "tool": { "name": name } }));
                }
                Some(_) => {
                    return Err(invalid(
                        "tool_choice",
                        "must be auto, none, required or a named function",
                    ))
                }
            }
            converse.insert("toolConfig".into(), Value::Object(config));
        }
    } else if choice.is_some_and(|c| c.as_str() != Some("none") && c.as_str() != Some("auto")) {
        return Err(invalid("tool_choice", "tool_choice needs tools"));
    }

    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = match obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
    {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(
                "stream_options.include_usage",
                format!("expected a boolean, got {}", shape::describe(other)),
            ))
        }
    };
    Ok(Translated {
        model,
        stream,
        include_usage,
        converse: Value::Object(converse),
    })
}

// The stop-reason and usage tables are shared with the `openai` and
// `sagemaker` upstreams, which translate the other way.
pub use crate::chat::{finish_reason, usage};

/// A Converse response body as a Chat Completion.
pub fn response(converse: &Value, model: &str, id: &str, created: u64) -> Value {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in converse["output"]["message"]["content"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(t) = block["text"].as_str() {
            text.push_str(t);
        } else if let Some(tool) = block.get("toolUse") {
            tool_calls.push(json!({
                "id": tool["toolUseId"],
                "type": "function",
                "function": { "name": tool["name"], "arguments": tool["input"].to_string() },
            }));
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if text.is_empty() && !tool_calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(converse["stopReason"].as_str()),
            "logprobs": null,
        }],
        "usage": usage(&Usage::from_json(&converse["usage"])),
    })
}

/// Writes ConverseStream events as Chat Completion chunks (server-sent events).
#[derive(Debug)]
pub struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Converse content-block index -> OpenAI tool-call index.
    tool_calls: HashMap<u64, usize>,
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

impl ChunkWriter {
    pub fn new(id: String, model: String, created: u64, include_usage: bool) -> ChunkWriter {
        ChunkWriter {
            id,
            model,
            created,
            include_usage,
            tool_calls: HashMap::new(),
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        sse(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }],
        }))
    }

    /// The chunks one event becomes (none for events OpenAI has no form of).
    pub fn event(&mut self, event: &ConverseEvent) -> Vec<Bytes> {
        let Ok(v) = event.json() else {
            return Vec::new();
        };
        let index = v["contentBlockIndex"].as_u64().unwrap_or(0);
        match event.kind {
            EventKind::MessageStart => {
                vec![self.chunk(json!({ "role": "assistant", "content": "" }), None)]
            }
            EventKind::ContentBlockStart => match v["start"].get("toolUse") {
                Some(tool) => {
                    let n = self.tool_calls.len();
                    self.tool_calls.insert(index, n);
                    vec![self.chunk(
                        json!({ "tool_calls": [{ "index": n, "id": tool["toolUseId"], "type": "function",
                            "function": { "name": tool["name"], "arguments": "" } }] }),
                        None,
                    )]
                }
                None => Vec::new(),
            },
            EventKind::ContentBlockDelta => {
                let delta = &v["delta"];
                if let Some(text) = delta["text"].as_str() {
                    vec![self.chunk(json!({ "content": text }), None)]
                } else if let Some(input) = delta["toolUse"]["input"].as_str() {
                    let n = self.tool_calls.get(&index).copied().unwrap_or(0);
                    vec![self.chunk(json!({ "tool_calls": [{ "index": n, "function": { "arguments": input } }] }), None)]
                } else {
                    Vec::new()
                }
            }
            EventKind::ContentBlockStop => Vec::new(),
            EventKind::MessageStop => {
                vec![self.chunk(json!({}), Some(finish_reason(v["stopReason"].as_str())))]
            }
            EventKind::Metadata if self.include_usage => vec![sse(&json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage(&Usage::from_json(&v["usage"])),
            }))],
            EventKind::Metadata => Vec::new(),
        }
    }

    /// The end of a complete stream.
    pub fn done(&self) -> Bytes {
        Bytes::from_static(b"data: [DONE]\n\n")
    }
}

#[cfg(test)]
mod tests;
