//! OpenAI Chat Completions <-> Bedrock Converse, both ways, as pure functions.
//!
//! A request becomes exactly the Converse JSON a native client would send for
//! the same meaning (so both share response-cache entries); what Converse cannot
//! honour is a 400 naming the parameter, never silently dropped. What the routed
//! model supports ([`Features`], from the catalog) decides how structured output
//! and `reasoning_effort` are sent.
//!
//! Reasoning comes back as `reasoning_content` (the field other
//! OpenAI-compatible servers use) and as `thinking_blocks`, each with its
//! signature, which a client returns on its assistant turn for Bedrock to
//! continue a conversation with extended thinking.

use base64::Engine;
use bedrock_wire::converse::{ConverseEvent, EventKind, Usage};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

use crate::error::ProxyError;
use crate::ingress::converse::{
    document_format, document_name, has_tool_blocks, json_schema_format, tool_history_as_text,
    Features,
};
use crate::ingress::shape::{self, Kind};

/// A Chat Completions request, translated.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// The Converse request body.
    pub converse: Value,
    /// How `response_format` is honoured, when it asks for JSON.
    pub structured: Option<Structured>,
}

/// How a structured answer is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Structured {
    /// `outputConfig.textFormat`: the model's text is the JSON.
    Native,
    /// A forced tool (this name) whose input schema is the requested one; its
    /// input is returned as the message's content.
    Tool(String),
}

impl Structured {
    /// The `x-proxy-structured-output` header's value.
    pub fn label(&self) -> &'static str {
        match self {
            Structured::Native => "native",
            Structured::Tool(_) => "tool",
        }
    }

    fn tool(structured: Option<&Structured>) -> Option<&str> {
        match structured {
            Some(Structured::Tool(name)) => Some(name),
            _ => None,
        }
    }
}

/// A 400 that names the offending parameter, in `param` and first in the message.
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
    ("response_format", &[Kind::Object]),
    ("reasoning_effort", &[Kind::String]),
    ("seed", &[Kind::Integer]),
    ("safety_identifier", &[Kind::String]),
    ("prompt_cache_key", &[Kind::String]),
    ("prompt_cache_retention", &[Kind::String]),
    ("top_logprobs", &[Kind::Integer]),
];

/// Request members that are accepted and have no effect on Bedrock (bookkeeping
/// OpenAI does on its own side, or a determinism hint Bedrock has no form of).
const IGNORED: &[&str] = &[
    "store",
    "service_tier",
    "stream_options",
    "seed",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
];

/// Thinking budgets for `reasoning_effort`, in tokens (Anthropic's minimum is 1,024).
pub const REASONING_BUDGETS: [(&str, u64); 5] = [
    ("minimal", 1_024),
    ("low", 2_048),
    ("medium", 4_096),
    ("high", 8_192),
    ("xhigh", 16_384),
];

/// The least thinking budget Bedrock takes.
const MIN_BUDGET: u64 = 1_024;

/// `maxTokens` beyond the thinking budget when the client sets no limit: room
/// for the answer after the reasoning.
pub const ANSWER_TOKENS: u64 = 4_096;

/// The name of the tool that carries a `json_object` answer.
const JSON_OBJECT_TOOL: &str = "json_object";

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

/// Splits a `data:` URL into its media type and base64 data.
fn data_url<'a>(url: &'a str, param: &str, what: &str) -> Result<(&'a str, &'a str), ProxyError> {
    let rest = url.strip_prefix("data:").ok_or_else(|| {
        invalid(param, format!("only data URLs (data:{what};base64,...) are supported; the proxy does not fetch remote files"))
    })?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| invalid(param, "a data URL needs a comma before its data"))?;
    let media = meta
        .strip_suffix(";base64")
        .ok_or_else(|| invalid(param, "the data URL must be base64-encoded"))?;
    let data = data.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| invalid(param, format!("the data is not valid base64: {e}")))?;
    if decoded.is_empty() {
        return Err(invalid(param, "the data is empty"));
    }
    Ok((media, data))
}

/// A `data:` URL image as a Converse image block.
fn image_block(url: &str, param: &str) -> Result<Value, ProxyError> {
    if !url.starts_with("data:") {
        return Err(invalid(param, "only data URLs (data:image/png;base64,...) are supported; the proxy does not fetch remote images"));
    }
    let (media, data) = data_url(url, param, "image/png")?;
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
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

/// A `file` part (`file_data` as a data URL) as a Converse document block.
fn file_block(part: &Value, param: &str, documents: &mut usize) -> Result<Value, ProxyError> {
    let file = &part["file"];
    if file.get("file_id").is_some_and(|v| !v.is_null()) {
        return Err(invalid(
            &format!("{param}.file.file_id"),
            "this proxy has no Files API: send the file inline as file_data",
        ));
    }
    let url = file["file_data"].as_str().ok_or_else(|| {
        invalid(
            &format!("{param}.file.file_data"),
            "a file part needs file_data (a base64 data URL)",
        )
    })?;
    let param = format!("{param}.file.file_data");
    // The SDKs send file_data as a data URL; bare base64 is a PDF by OpenAI's rules.
    let (media, data) = if url.starts_with("data:") {
        data_url(url, &param, "application/pdf")?
    } else {
        ("application/pdf", url.trim())
    };
    let file_name = file["filename"].as_str();
    let format = document_format(media, file_name).ok_or_else(|| {
        invalid(
            &param,
            format!("documents of type `{media}` are not supported: Bedrock reads pdf, csv, doc, docx, xls, xlsx, html, txt and md"),
        )
    })?;
    let name = document_name(file_name, *documents);
    *documents += 1;
    Ok(json!({ "document": { "format": format, "name": name, "source": { "bytes": data } } }))
}

fn user_parts(
    content: &Value,
    param: &str,
    documents: &mut usize,
) -> Result<Vec<Value>, ProxyError> {
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
                    Some("file") => file_block(p, &param, documents),
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

/// Reasoning an assistant turn carries back: its `thinking_blocks` (with their
/// signatures) as Converse reasoning blocks. `reasoning_content` alone has no
/// signature, and Bedrock takes no unsigned reasoning, so it is not sent.
fn reasoning_blocks(message: &Value, param: &str) -> Result<Vec<Value>, ProxyError> {
    let Some(blocks) = message.get("thinking_blocks").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let param = format!("{param}.thinking_blocks");
    let list = blocks
        .as_array()
        .ok_or_else(|| invalid(&param, "must be a list of thinking blocks"))?;
    list.iter()
        .enumerate()
        .map(|(i, b)| {
            let param = format!("{param}[{i}]");
            match b["type"].as_str() {
                Some("thinking") => {
                    let text = b["thinking"]
                        .as_str()
                        .ok_or_else(|| invalid(&param, "a thinking block needs its thinking text"))?;
                    let signature = b["signature"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                        invalid(&format!("{param}.signature"), "a thinking block needs the signature it came with")
                    })?;
                    Ok(json!({ "reasoningContent": { "reasoningText": { "text": text, "signature": signature } } }))
                }
                Some("redacted_thinking") => {
                    let data = b["data"]
                        .as_str()
                        .ok_or_else(|| invalid(&param, "a redacted_thinking block needs its data"))?;
                    Ok(json!({ "reasoningContent": { "redactedContent": data } }))
                }
                _ => Err(invalid(&param, "type must be thinking or redacted_thinking")),
            }
        })
        .collect()
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

/// The `model` a request names (the route to send it on).
pub fn model(body: &Value) -> Result<String, ProxyError> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("body", "the request body must be a JSON object"))?;
    shape::check(obj, TYPES, invalid)?;
    obj.get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| invalid("model", "you must provide a model parameter"))
}

/// Checks the request's members: what Bedrock cannot honour is refused by name.
fn check_members(obj: &Map<String, Value>) -> Result<(), ProxyError> {
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
            | "parallel_tool_calls"
            | "response_format"
            | "reasoning_effort"
            | "user"
            | "metadata"
            | "safety_identifier" => false,
            k if IGNORED.contains(&k) => false,
            "logprobs" => value.as_bool() == Some(true),
            "top_logprobs" => !value.is_null(),
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
    Ok(())
}

/// The conversation: system blocks and alternating Converse messages.
fn conversation(raw: &[Value]) -> Result<(Vec<Value>, Vec<Value>), ProxyError> {
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<(String, Vec<Value>)> = Vec::new();
    let mut documents = 0usize;
    for (i, m) in raw.iter().enumerate() {
        let param = format!("messages[{i}]");
        let content = m.get("content").unwrap_or(&Value::Null);
        match m["role"].as_str() {
            Some("system" | "developer") => {
                system.extend(text_parts(content, &format!("{param}.content"))?)
            }
            Some("user") => push(
                &mut messages,
                "user",
                user_parts(content, &format!("{param}.content"), &mut documents)?,
            ),
            Some("assistant") => {
                // Claude reads a turn's reasoning before what it said.
                let mut blocks = reasoning_blocks(m, &param)?;
                blocks.extend(text_parts(content, &format!("{param}.content"))?);
                for (j, call) in m["tool_calls"].as_array().into_iter().flatten().enumerate() {
                    let param = format!("{param}.tool_calls[{j}]");
                    let id = call["id"].as_str().ok_or_else(|| {
                        invalid(&format!("{param}.id"), "a tool call needs an id")
                    })?;
                    let name = call["function"]["name"].as_str().ok_or_else(|| {
                        invalid(
                            &format!("{param}.function.name"),
                            "a tool call needs function.name",
                        )
                    })?;
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
                }
                // A turn of reasoning only (its text empty) says nothing.
                if blocks.iter().all(|b| b.get("reasoningContent").is_some()) {
                    blocks.clear();
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
    let messages = messages
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    Ok((system, messages))
}

/// `inferenceConfig`, and the temperature the client set.
fn inference(obj: &Map<String, Value>) -> Result<Map<String, Value>, ProxyError> {
    let mut inference = Map::new();
    let max_tokens = obj
        .get("max_completion_tokens")
        .map(|v| ("max_completion_tokens", v))
        .or_else(|| obj.get("max_tokens").map(|v| ("max_tokens", v)))
        .filter(|(_, v)| !v.is_null());
    if let Some((param, v)) = max_tokens {
        let n = v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| invalid(param, "must be a positive integer"))?;
        inference.insert("maxTokens".into(), n.into());
    }
    if let Some(value) = obj.get("temperature").filter(|v| !v.is_null()) {
        let t = value
            .as_f64()
            .ok_or_else(|| invalid("temperature", "must be a number"))?;
        if !(0.0..=1.0).contains(&t) {
            return Err(invalid("temperature", "must be between 0 and 1 on Bedrock"));
        }
        inference.insert("temperature".into(), value.clone());
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
    Ok(inference)
}

/// The client's tools as Converse tool specs.
fn tool_specs(tools: &[Value]) -> Result<Vec<Value>, ProxyError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if !t.is_object() {
                return Err(invalid(
                    &format!("tools[{i}]"),
                    format!("expected an object, got {}", shape::describe(t)),
                ));
            }
            if t["type"].as_str().is_some_and(|ty| ty != "function") {
                return Err(invalid(
                    &format!("tools[{i}].type"),
                    "only function tools are supported",
                ));
            }
            let f = &t["function"];
            let name = f["name"].as_str().ok_or_else(|| {
                invalid(&format!("tools[{i}].function.name"), "a tool needs a name")
            })?;
            let mut spec = Map::new();
            spec.insert("name".into(), name.into());
            if let Some(d) = f["description"].as_str().filter(|d| !d.is_empty()) {
                spec.insert("description".into(), d.into());
            }
            let schema = f
                .get("parameters")
                .filter(|p| !p.is_null())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            spec.insert("inputSchema".into(), json!({ "json": schema }));
            if let Some(strict) = f["strict"].as_bool() {
                spec.insert("strict".into(), strict.into());
            }
            Ok(json!({ "toolSpec": spec }))
        })
        .collect()
}

/// The client's `tool_choice`, read.
#[derive(Debug, Clone, PartialEq)]
enum Choice {
    Unset,
    Auto,
    None,
    Required,
    Named(String),
}

impl Choice {
    fn read(obj: &Map<String, Value>) -> Result<Choice, ProxyError> {
        Ok(match obj.get("tool_choice") {
            None | Some(Value::Null) => Choice::Unset,
            Some(Value::String(s)) if s == "auto" => Choice::Auto,
            Some(Value::String(s)) if s == "none" => Choice::None,
            Some(Value::String(s)) if s == "required" => Choice::Required,
            Some(c) if c["type"] == "function" => {
                let name = c["function"]["name"].as_str().ok_or_else(|| {
                    invalid(
                        "tool_choice.function.name",
                        "a named tool choice needs a name",
                    )
                })?;
                Choice::Named(name.to_owned())
            }
            Some(_) => {
                return Err(invalid(
                    "tool_choice",
                    "must be auto, none, required or a named function",
                ))
            }
        })
    }

    /// Converse's `toolChoice`; `None` for Bedrock's default (auto).
    fn converse(&self) -> Option<Value> {
        match self {
            Choice::Unset | Choice::None => None,
            Choice::Auto => Some(json!({ "auto": {} })),
            Choice::Required => Some(json!({ "any": {} })),
            Choice::Named(name) => Some(json!({ "tool": { "name": name } })),
        }
    }

    fn forces_a_tool(&self) -> bool {
        matches!(self, Choice::Required | Choice::Named(_))
    }
}

/// What `response_format` asks for: the schema, its name and description, and
/// whether it is strict; `None` for plain text.
struct Format {
    schema: Value,
    name: String,
    description: Option<String>,
    strict: Option<bool>,
    /// `json_object`: any JSON object, which only the tool route can give
    /// (native structured output takes a closed schema).
    any_object: bool,
}

fn response_format(obj: &Map<String, Value>) -> Result<Option<Format>, ProxyError> {
    let Some(format) = obj.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match format["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Format {
            schema: json!({ "type": "object" }),
            name: JSON_OBJECT_TOOL.to_owned(),
            description: None,
            strict: None,
            any_object: true,
        })),
        Some("json_schema") => {
            let spec = &format["json_schema"];
            let schema = spec
                .get("schema")
                .filter(|s| s.is_object())
                .cloned()
                .ok_or_else(|| {
                    invalid(
                        "response_format.json_schema.schema",
                        "a json_schema response format needs a schema (a JSON object)",
                    )
                })?;
            let name = spec["name"].as_str().unwrap_or("response");
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(
                    "response_format.json_schema.name",
                    "must be 1 to 64 letters, digits, underscores or hyphens",
                ));
            }
            Ok(Some(Format {
                schema,
                name: name.to_owned(),
                description: spec["description"].as_str().map(str::to_owned),
                strict: spec["strict"].as_bool(),
                any_object: false,
            }))
        }
        _ => Err(invalid(
            "response_format.type",
            "must be text, json_object or json_schema",
        )),
    }
}

/// The thinking budget and effort level of `reasoning_effort`; `None` when it
/// asks for no reasoning.
fn reasoning(
    obj: &Map<String, Value>,
    model: &str,
    features: &Features,
) -> Result<Option<(u64, &'static str)>, ProxyError> {
    let Some(effort) = obj.get("reasoning_effort").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let level = effort.as_str().unwrap_or("");
    if level == "none" {
        return Ok(None);
    }
    let Some((name, budget)) = REASONING_BUDGETS.iter().find(|(n, _)| *n == level) else {
        return Err(invalid(
            "reasoning_effort",
            "must be none, minimal, low, medium, high or xhigh",
        ));
    };
    if !features.reasoning {
        return Err(invalid(
            "reasoning_effort",
            format!("the model `{model}` has no extended thinking on Bedrock; leave reasoning_effort out (or none) for it"),
        ));
    }
    Ok(Some((*budget, name)))
}

/// Converse `outputConfig.effort` for a `reasoning_effort` level.
fn effort_level(level: &str) -> &'static str {
    match level {
        "minimal" | "low" => "low",
        "medium" => "medium",
        "xhigh" => "xhigh",
        _ => "high",
    }
}

/// `user`, `safety_identifier` and `metadata` as Converse `requestMetadata`
/// (logged with the invocation by Bedrock, never read by the model).
fn request_metadata(obj: &Map<String, Value>) -> Result<Map<String, Value>, ProxyError> {
    let allowed = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c.is_whitespace() || ":_@$#=/+,-.".contains(c))
    };
    let mut out = Map::new();
    let mut put = |param: &str, key: &str, value: &Value| -> Result<(), ProxyError> {
        let value = value
            .as_str()
            .ok_or_else(|| invalid(param, "must be a string"))?;
        if key.is_empty() || key.len() > 256 || !allowed(key) {
            return Err(invalid(
                param,
                "Bedrock's request metadata keys are 1 to 256 letters, digits, spaces and the characters `:_@$#=/+,-.`",
            ));
        }
        if value.len() > 256 || !allowed(value) {
            return Err(invalid(
                param,
                "Bedrock's request metadata values are at most 256 letters, digits, spaces and the characters `:_@$#=/+,-.`",
            ));
        }
        out.insert(key.to_owned(), value.into());
        Ok(())
    };
    for key in ["user", "safety_identifier"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            put(key, key, v)?;
        }
    }
    match obj.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                put(&format!("metadata.{k}"), k, v)?;
            }
        }
        Some(_) => return Err(invalid("metadata", "must be an object of strings")),
    }
    if out.len() > 16 {
        return Err(invalid(
            "metadata",
            "Bedrock takes at most 16 request metadata entries (user and metadata together)",
        ));
    }
    Ok(out)
}

/// Translates a Chat Completions request body for a model with `features`.
pub fn request(body: &Value, features: &Features) -> Result<Translated, ProxyError> {
    let model = model(body)?;
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("body", "the request body must be a JSON object"))?;
    check_members(obj)?;

    let raw_messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("messages", "messages must be a non-empty list"))?;
    let (system, mut messages) = conversation(raw_messages)?;

    let mut inference = inference(obj)?;
    let mut extra = Map::new();
    let mut output = Map::new();

    let choice = Choice::read(obj)?;
    let client_tools = obj
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty());
    let mut specs = match client_tools {
        Some(tools) => tool_specs(tools)?,
        None => Vec::new(),
    };
    if specs.is_empty() && !matches!(choice, Choice::Unset | Choice::None | Choice::Auto) {
        return Err(invalid("tool_choice", "tool_choice needs tools"));
    }
    if choice == Choice::None {
        // OpenAI's none: the model may not call a tool. Converse has no such
        // choice, so the tools are not sent at all.
        specs.clear();
    }
    if specs.is_empty() && has_tool_blocks(&messages) {
        tool_history_as_text(&mut messages);
    }

    let format = response_format(obj)?;
    let structured = format.as_ref().map(|f| {
        if features.structured_output && !f.any_object {
            Structured::Native
        } else {
            Structured::Tool(f.name.clone())
        }
    });
    let mut tool_choice = if specs.is_empty() {
        None
    } else {
        choice.converse()
    };
    match (&format, &structured) {
        (Some(f), Some(Structured::Native)) => {
            output.insert(
                "textFormat".into(),
                json_schema_format(&f.schema, Some(&f.name), f.description.as_deref()),
            );
        }
        (Some(f), Some(Structured::Tool(name))) => {
            let mut spec = Map::new();
            spec.insert("name".into(), name.as_str().into());
            spec.insert(
                "description".into(),
                f.description
                    .as_deref()
                    .unwrap_or("Give your answer to the user with this tool: its input is the answer, in the required structure.")
                    .into(),
            );
            spec.insert("inputSchema".into(), json!({ "json": f.schema }));
            if let Some(strict) = f.strict {
                spec.insert("strict".into(), strict.into());
            }
            // With tools of its own, the client's named choice stands; any
            // other lets the model call one of them or answer through the
            // structure's tool, and it must do one of the two.
            tool_choice = match (&choice, specs.is_empty()) {
                (Choice::Named(_), false) => tool_choice,
                (_, false) => Some(json!({ "any": {} })),
                (_, true) => Some(json!({ "tool": { "name": name } })),
            };
            specs.push(json!({ "toolSpec": spec }));
        }
        _ => {}
    }

    if let Some((budget, level)) = reasoning(obj, &model, features)? {
        let param = if obj.contains_key("max_completion_tokens") {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        let budget = match inference.get("maxTokens").and_then(Value::as_u64) {
            // The limit covers reasoning and answer, as OpenAI's does.
            Some(max) if max <= MIN_BUDGET => {
                return Err(invalid(
                    param,
                    format!("must be above {MIN_BUDGET} with reasoning_effort: extended thinking takes at least {MIN_BUDGET} tokens of it"),
                ))
            }
            // Half the limit (at least the minimum) leaves the answer room.
            Some(max) => budget.min((max / 2).max(MIN_BUDGET)),
            None => {
                inference.insert("maxTokens".into(), (budget + ANSWER_TOKENS).into());
                budget
            }
        };
        if inference
            .get("temperature")
            .and_then(Value::as_f64)
            .is_some_and(|t| t != 1.0)
        {
            return Err(invalid(
                "temperature",
                "must be 1 or left out with reasoning_effort: extended thinking samples at temperature 1",
            ));
        }
        if matches!(structured, Some(Structured::Tool(_))) {
            return Err(invalid(
                "reasoning_effort",
                "cannot be combined with this response_format on this model: its structured answer comes through a forced tool call, which extended thinking does not allow",
            ));
        }
        if choice.forces_a_tool() && !specs.is_empty() {
            return Err(invalid(
                "tool_choice",
                "must be auto or none with reasoning_effort: extended thinking cannot be combined with a forced tool call",
            ));
        }
        extra.insert(
            "thinking".into(),
            json!({ "type": "enabled", "budget_tokens": budget }),
        );
        if features.effort {
            output.insert("effort".into(), effort_level(level).into());
        }
    }

    if obj.get("parallel_tool_calls") == Some(&Value::Bool(false)) && features.anthropic {
        // Claude's own switch, in its own tool_choice, mirroring Converse's.
        if let Some(choice) = &tool_choice {
            let mut native = match choice {
                c if c.get("any").is_some() => json!({ "type": "any" }),
                c if c.get("tool").is_some() => {
                    json!({ "type": "tool", "name": c["tool"]["name"] })
                }
                _ => json!({ "type": "auto" }),
            };
            native["disable_parallel_tool_use"] = true.into();
            extra.insert("tool_choice".into(), native);
        } else if !specs.is_empty() {
            extra.insert(
                "tool_choice".into(),
                json!({ "type": "auto", "disable_parallel_tool_use": true }),
            );
        }
    }

    let mut converse = Map::new();
    converse.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        converse.insert("system".into(), Value::Array(system));
    }
    if !inference.is_empty() {
        converse.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if !specs.is_empty() {
        let mut config = Map::new();
        config.insert("tools".into(), Value::Array(specs));
        if let Some(choice) = tool_choice {
            config.insert("toolChoice".into(), choice);
        }
        converse.insert("toolConfig".into(), Value::Object(config));
    }
    if !extra.is_empty() {
        converse.insert("additionalModelRequestFields".into(), Value::Object(extra));
    }
    if !output.is_empty() {
        converse.insert("outputConfig".into(), Value::Object(output));
    }
    let metadata = request_metadata(obj)?;
    if !metadata.is_empty() {
        converse.insert("requestMetadata".into(), Value::Object(metadata));
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
        structured,
    })
}

// The stop-reason and usage tables are shared with the `openai` and
// `sagemaker` upstreams, which translate the other way.
pub use crate::chat::{finish_reason, usage};

/// A Converse response body as a Chat Completion; `structured` is how the
/// request asked for structured output.
pub fn response(
    converse: &Value,
    model: &str,
    id: &str,
    created: u64,
    structured: Option<&Structured>,
) -> Value {
    let respond_tool = Structured::tool(structured);
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut reasoning = String::new();
    let mut thinking_blocks = Vec::new();
    for block in converse["output"]["message"]["content"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(t) = block["text"].as_str() {
            text.push_str(t);
        } else if let Some(cited) = block.get("citationsContent") {
            for part in cited["content"].as_array().into_iter().flatten() {
                text.push_str(part["text"].as_str().unwrap_or(""));
            }
        } else if let Some(tool) = block.get("toolUse") {
            if respond_tool.is_some_and(|n| tool["name"] == n) {
                text.push_str(&tool["input"].to_string());
                continue;
            }
            tool_calls.push(json!({
                "id": tool["toolUseId"],
                "type": "function",
                "function": { "name": tool["name"], "arguments": tool["input"].to_string() },
            }));
        } else if let Some(r) = block.get("reasoningContent") {
            if let Some(data) = r.get("redactedContent") {
                thinking_blocks.push(json!({ "type": "redacted_thinking", "data": data }));
            } else {
                let t = r["reasoningText"]["text"].as_str().unwrap_or("");
                reasoning.push_str(t);
                thinking_blocks.push(json!({ "type": "thinking", "thinking": t,
                    "signature": r["reasoningText"]["signature"] }));
            }
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
        message.insert("tool_calls".into(), Value::Array(tool_calls.clone()));
    }
    if !thinking_blocks.is_empty() {
        message.insert("reasoning_content".into(), reasoning.into());
        message.insert("thinking_blocks".into(), Value::Array(thinking_blocks));
    }
    let stop = converse["stopReason"].as_str();
    let finish = match stop {
        // The structure's tool call is the answer, not a call for the client.
        Some("tool_use") if tool_calls.is_empty() => "stop",
        other => finish_reason(other),
    };
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish,
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
    /// The tool whose input is the answer (structured output by tool).
    respond_tool: Option<String>,
    /// The content block of that tool's call, once it started.
    respond_index: Option<u64>,
    /// Reasoning text so far, per content block: a block's signature is sent
    /// with its whole text, as a thinking block a client can send back.
    reasoning: HashMap<u64, String>,
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
            respond_tool: None,
            respond_index: None,
            reasoning: HashMap::new(),
        }
    }

    /// The same writer for a request whose structured output comes as `structured`.
    pub fn structured(mut self, structured: Option<&Structured>) -> ChunkWriter {
        self.respond_tool = Structured::tool(structured).map(str::to_owned);
        self
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
                Some(tool)
                    if self
                        .respond_tool
                        .as_deref()
                        .is_some_and(|n| tool["name"] == n) =>
                {
                    self.respond_index = Some(index);
                    Vec::new()
                }
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
                    if self.respond_index == Some(index) {
                        return vec![self.chunk(json!({ "content": input }), None)];
                    }
                    let n = self.tool_calls.get(&index).copied().unwrap_or(0);
                    vec![self.chunk(json!({ "tool_calls": [{ "index": n, "function": { "arguments": input } }] }), None)]
                } else if let Some(r) = delta.get("reasoningContent") {
                    if let Some(text) = r["text"].as_str() {
                        self.reasoning.entry(index).or_default().push_str(text);
                        vec![self.chunk(json!({ "reasoning_content": text }), None)]
                    } else if let Some(signature) = r["signature"].as_str() {
                        let text = self.reasoning.remove(&index).unwrap_or_default();
                        vec![self.chunk(
                            json!({ "thinking_blocks": [{ "type": "thinking", "thinking": text, "signature": signature }] }),
                            None,
                        )]
                    } else if let Some(data) = r.get("redactedContent") {
                        vec![self.chunk(
                            json!({ "thinking_blocks": [{ "type": "redacted_thinking", "data": data }] }),
                            None,
                        )]
                    } else {
                        Vec::new()
                    }
                } else {
                    Vec::new()
                }
            }
            EventKind::ContentBlockStop => Vec::new(),
            EventKind::MessageStop => {
                let finish = match v["stopReason"].as_str() {
                    Some("tool_use") if self.tool_calls.is_empty() => "stop",
                    other => finish_reason(other),
                };
                vec![self.chunk(json!({}), Some(finish))]
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
