//! Anthropic Messages <-> Bedrock Converse, both ways, as pure functions.
//! `cache_control` markers become `cachePoint` blocks right after the marked
//! block, which is where Bedrock reads them.

use bedrock_wire::converse::{ConverseEvent, EventKind, Usage};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::HashSet;

use crate::error::ProxyError;
use crate::ingress::shape::{self, Kind};

/// A Messages request, translated.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub model: String,
    pub stream: bool,
    pub converse: Value,
}

/// A 400 that names the offending field first.
fn invalid(field: &str, message: impl std::fmt::Display) -> ProxyError {
    ProxyError::validation(format!("{field}: {message}"))
}

/// The JSON types of the request members, as the Messages API defines them.
const TYPES: &[(&str, &[Kind])] = &[
    ("model", &[Kind::String]),
    ("messages", &[Kind::Array]),
    ("system", &[Kind::String, Kind::Array]),
    ("max_tokens", &[Kind::Integer]),
    ("temperature", &[Kind::Number]),
    ("top_p", &[Kind::Number]),
    ("top_k", &[Kind::Integer]),
    ("stop_sequences", &[Kind::Array]),
    ("stream", &[Kind::Boolean]),
    ("tools", &[Kind::Array]),
    ("tool_choice", &[Kind::Object]),
    ("metadata", &[Kind::Object]),
    ("thinking", &[Kind::Object]),
];

const KNOWN: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
];

fn cache_point(block: &Value) -> Option<Value> {
    let cc = block.get("cache_control")?;
    let mut point = Map::new();
    point.insert("type".into(), "default".into());
    if let Some(ttl) = cc.get("ttl").and_then(Value::as_str) {
        point.insert("ttl".into(), ttl.into());
    }
    Some(json!({ "cachePoint": point }))
}

fn image(block: &Value, field: &str) -> Result<Value, ProxyError> {
    let source = &block["source"];
    if source["type"] != "base64" {
        return Err(invalid(
            &format!("{field}.source.type"),
            "only base64 image sources are supported",
        ));
    }
    let format = match source["media_type"].as_str() {
        Some("image/png") => "png",
        Some("image/jpeg") => "jpeg",
        Some("image/gif") => "gif",
        Some("image/webp") => "webp",
        other => {
            return Err(invalid(
                &format!("{field}.source.media_type"),
                format!("{other:?} is not one of image/png, image/jpeg, image/gif, image/webp"),
            ))
        }
    };
    let data = source["data"]
        .as_str()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| invalid(&format!("{field}.source.data"), "image data is required"))?;
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

/// Blocks of `content` (a string or a list), with cache points after marked ones.
fn blocks(content: &Value, field: &str, allow_tools: bool) -> Result<Vec<Value>, ProxyError> {
    let list = match content {
        Value::String(s) => return Ok(vec![json!({ "text": s })]),
        Value::Array(list) => list,
        _ => {
            return Err(invalid(
                field,
                "content must be a string or a list of blocks",
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, block) in list.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let converted = match block["type"].as_str() {
            Some("text") => json!({ "text": block["text"].as_str().unwrap_or("") }),
            Some("image") => image(block, &field)?,
            Some("tool_use") if allow_tools => json!({ "toolUse": {
                "toolUseId": block["id"], "name": block["name"],
                "input": block.get("input").cloned().unwrap_or_else(|| json!({})) } }),
            Some("tool_result") if allow_tools => {
                let content = match &block["content"] {
                    Value::Null => vec![json!({ "text": "" })],
                    other => blocks(other, &format!("{field}.content"), false)?,
                };
                let mut result = Map::new();
                result.insert("toolUseId".into(), block["tool_use_id"].clone());
                result.insert("content".into(), Value::Array(content));
                if block["is_error"] == true {
                    result.insert("status".into(), "error".into());
                }
                json!({ "toolResult": result })
            }
            Some(other) => {
                return Err(invalid(
                    &field,
                    format!("blocks of type `{other}` are not supported here"),
                ))
            }
            None => return Err(invalid(&field, "a content block needs a type")),
        };
        out.push(converted);
        if let Some(point) = cache_point(block) {
            out.push(point);
        }
    }
    Ok(out)
}

/// Translates a Messages request body.
pub fn request(body: &Value) -> Result<Translated, ProxyError> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("body", "the request body must be a JSON object"))?;
    if let Some(extra) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(extra, "Extra inputs are not permitted"));
    }
    shape::check(obj, TYPES, invalid)?;
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("model", "Field required"))?
        .to_owned();
    let max_tokens = obj
        .get("max_tokens")
        .and_then(Value::as_u64)
        .filter(|n| *n >= 1)
        .ok_or_else(|| invalid("max_tokens", "Field required: a positive integer"))?;
    let raw = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages", "Field required"))?;

    let mut converse = Map::new();
    let mut messages: Vec<Value> = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let role = match m["role"].as_str() {
            Some(r @ ("user" | "assistant")) => r,
            _ => {
                return Err(invalid(
                    &format!("messages.{i}.role"),
                    "must be user or assistant",
                ))
            }
        };
        let content = blocks(&m["content"], &format!("messages.{i}.content"), true)?;
        // The Messages API merges consecutive turns of one role; Converse
        // requires roles to alternate, so they are merged here.
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(Value::Array(earlier)) = last.get_mut("content") {
                    earlier.extend(content);
                }
            }
            _ => messages.push(json!({ "role": role, "content": content })),
        }
    }
    converse.insert("messages".into(), Value::Array(messages));
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(system) => {
            let system = blocks(system, "system", false)?;
            if !system.is_empty() {
                converse.insert("system".into(), Value::Array(system));
            }
        }
    }

    let mut inference = Map::new();
    inference.insert("maxTokens".into(), max_tokens.into());
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = obj.get(from).filter(|v| !v.is_null()) {
            if !v.as_f64().is_some_and(|f| (0.0..=1.0).contains(&f)) {
                return Err(invalid(from, "must be a number between 0 and 1"));
            }
            inference.insert(to.into(), v.clone());
        }
    }
    if let Some(stops) = obj.get("stop_sequences").filter(|v| !v.is_null()) {
        if !stops
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string))
        {
            return Err(invalid("stop_sequences", "must be a list of strings"));
        }
        inference.insert("stopSequences".into(), stops.clone());
    }
    converse.insert("inferenceConfig".into(), Value::Object(inference));

    let mut extra = Map::new();
    if let Some(k) = obj.get("top_k").filter(|v| !v.is_null()) {
        extra.insert("top_k".into(), k.clone());
    }
    if let Some(t) = obj.get("thinking").filter(|v| !v.is_null()) {
        extra.insert("thinking".into(), t.clone());
    }
    if !extra.is_empty() {
        converse.insert("additionalModelRequestFields".into(), Value::Object(extra));
    }

    let has_tool_blocks = raw.iter().any(|m| {
        m["content"].as_array().is_some_and(|c| {
            c.iter()
                .any(|b| b["type"] == "tool_use" || b["type"] == "tool_result")
        })
    });
    let choice = obj.get("tool_choice").filter(|v| !v.is_null());
    let none = choice.is_some_and(|c| c["type"] == "none");
    if let Some(tools) = obj
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    {
        if !none || has_tool_blocks {
            let mut specs = Vec::new();
            for (i, t) in tools.iter().enumerate() {
                let field = format!("tools.{i}");
                let name = t["name"]
                    .as_str()
                    .ok_or_else(|| invalid(&format!("{field}.name"), "Field required"))?;
                let schema = t.get("input_schema").ok_or_else(|| {
                    invalid(
                        &format!("{field}.input_schema"),
                        "Field required (server tools are not supported)",
                    )
                })?;
                let mut spec = Map::new();
                spec.insert("name".into(), name.into());
                if let Some(d) = t["description"].as_str() {
                    spec.insert("description".into(), d.into());
                }
                spec.insert("inputSchema".into(), json!({ "json": schema }));
                specs.push(json!({ "toolSpec": spec }));
                if let Some(point) = cache_point(t) {
                    specs.push(point);
                }
            }
            let mut config = Map::new();
            config.insert("tools".into(), Value::Array(specs));
            match choice.and_then(|c| c["type"].as_str()) {
                None | Some("none") => {}
                Some("auto") => {
                    config.insert("toolChoice".into(), json!({ "auto": {} }));
                }
                Some("any") => {
                    config.insert("toolChoice".into(), json!({ "any": {} }));
                }
                Some("tool") => {
                    let name = choice
                        .and_then(|c| c["name"].as_str())
                        .ok_or_else(|| invalid("tool_choice.name", "Field required"))?;
                    config.insert("toolChoice".into(), json!({ "tool": { "name": name } }));
                }
                Some(other) => {
                    return Err(invalid(
                        "tool_choice.type",
                        format!("`{other}` is not one of auto, any, tool, none"),
                    ))
                }
            }
            converse.insert("toolConfig".into(), Value::Object(config));
        }
    }
    Ok(Translated {
        model,
        stream: obj.get("stream").and_then(Value::as_bool).unwrap_or(false),
        converse: Value::Object(converse),
    })
}

/// Bedrock's stop reason in Anthropic's terms.
pub fn stop_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens" | "model_context_window_exceeded") => "max_tokens",
        Some("stop_sequence") => "stop_sequence",
        Some("tool_use") => "tool_use",
        Some("guardrail_intervened" | "content_filtered") => "refusal",
        _ => "end_turn",
    }
}

/// Converse usage as Anthropic usage (`input_tokens` excludes cache reads and writes).
pub fn usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_write_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
    })
}

/// A Converse response body as a Messages response.
pub fn response(converse: &Value, model: &str, id: &str) -> Value {
    let mut content = Vec::new();
    for block in converse["output"]["message"]["content"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(t) = block["text"].as_str() {
            content.push(json!({ "type": "text", "text": t }));
        } else if let Some(tool) = block.get("toolUse") {
            content.push(json!({ "type": "tool_use", "id": tool["toolUseId"], "name": tool["name"], "input": tool["input"] }));
        } else if let Some(r) = block.get("reasoningContent") {
            content.push(
                json!({ "type": "thinking", "thinking": r["reasoningText"]["text"],
                "signature": r["reasoningText"]["signature"] }),
            );
        }
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(converse["stopReason"].as_str()),
        "stop_sequence": null,
        "usage": usage(&Usage::from_json(&converse["usage"])),
    })
}

fn sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Writes ConverseStream events as Messages stream events.
#[derive(Debug)]
pub struct EventWriter {
    id: String,
    model: String,
    started: HashSet<u64>,
    stop: Option<String>,
}

impl EventWriter {
    pub fn new(id: String, model: String) -> EventWriter {
        EventWriter {
            id,
            model,
            started: HashSet::new(),
            stop: None,
        }
    }

    fn start_text(&mut self, index: u64, out: &mut Vec<Bytes>) {
        if self.started.insert(index) {
            out.push(sse(
                "content_block_start",
                &json!({ "type": "content_block_start", "index": index, "content_block": { "type": "text", "text": "" } }),
            ));
        }
    }

    /// The events one Converse event becomes.
    pub fn event(&mut self, event: &ConverseEvent) -> Vec<Bytes> {
        let Ok(v) = event.json() else {
            return Vec::new();
        };
        let index = v["contentBlockIndex"].as_u64().unwrap_or(0);
        let mut out = Vec::new();
        match event.kind {
            EventKind::MessageStart => {
                out.push(sse(
                    "message_start",
                    &json!({ "type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": { "input_tokens": 0, "output_tokens": 0 } } }),
                ));
                out.push(sse("ping", &json!({ "type": "ping" })));
            }
            EventKind::ContentBlockStart => {
                if let Some(tool) = v["start"].get("toolUse") {
                    self.started.insert(index);
                    out.push(sse("content_block_start", &json!({ "type": "content_block_start", "index": index,
                        "content_block": { "type": "tool_use", "id": tool["toolUseId"], "name": tool["name"], "input": {} } })));
                }
            }
            EventKind::ContentBlockDelta => {
                let delta = &v["delta"];
                if let Some(text) = delta["text"].as_str() {
                    self.start_text(index, &mut out);
                    out.push(sse(
                        "content_block_delta",
                        &json!({ "type": "content_block_delta", "index": index,
                        "delta": { "type": "text_delta", "text": text } }),
                    ));
                } else if let Some(input) = delta["toolUse"]["input"].as_str() {
                    out.push(sse(
                        "content_block_delta",
                        &json!({ "type": "content_block_delta", "index": index,
                        "delta": { "type": "input_json_delta", "partial_json": input } }),
                    ));
                }
            }
            EventKind::ContentBlockStop => {
                if self.started.contains(&index) {
                    out.push(sse(
                        "content_block_stop",
                        &json!({ "type": "content_block_stop", "index": index }),
                    ));
                }
            }
            EventKind::MessageStop => self.stop = v["stopReason"].as_str().map(str::to_owned),
            EventKind::Metadata => {
                out.push(sse("message_delta", &json!({ "type": "message_delta",
                    "delta": { "stop_reason": stop_reason(self.stop.as_deref()), "stop_sequence": null },
                    "usage": usage(&Usage::from_json(&v["usage"])) })));
                out.push(sse("message_stop", &json!({ "type": "message_stop" })));
            }
        }
        out
    }

    /// An `error` event.
    pub fn error(kind: &str, message: &str) -> Bytes {
        sse(
            "error",
            &json!({ "type": "error", "error": { "type": kind, "message": message } }),
        )
    }
}

#[cfg(test)]
mod tests;
