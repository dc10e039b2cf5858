//! Anthropic Messages <-> Bedrock Converse, both ways, as pure functions.
//! `cache_control` markers become `cachePoint` blocks right after the marked
//! block, which is where Bedrock reads them. Thinking blocks travel with their
//! signatures both ways; documents become Converse documents, and their
//! citations come back as Anthropic's.

use bedrock_wire::converse::{ConverseEvent, EventKind, Usage};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

use crate::error::ProxyError;
use crate::ingress::converse::{
    document_name, has_tool_blocks, json_schema_format, tool_history_as_text, Features,
};
use crate::ingress::shape::{self, Kind};

/// What a translated body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `POST /v1/messages`: a Converse request.
    Messages,
    /// `POST /v1/messages/count_tokens`: a CountTokens request (no
    /// `max_tokens`, no sampling).
    CountTokens,
}

/// A Messages request, translated.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub model: String,
    pub stream: bool,
    /// The Converse request body (for CountTokens, its `input` member).
    pub converse: Value,
    /// The request's stop sequences: when only one could have ended the
    /// answer, the response names it even if Bedrock does not.
    pub stop_sequences: Vec<String>,
}

/// A 400 that names the offending field first (and in `param`).
fn invalid(field: &str, message: impl std::fmt::Display) -> ProxyError {
    ProxyError::validation(format!("{field}: {message}")).with_param(field)
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
    ("output_config", &[Kind::Object]),
    ("output_format", &[Kind::Object]),
    ("service_tier", &[Kind::String]),
    ("cache_control", &[Kind::Object]),
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
    "output_config",
    "output_format",
    "service_tier",
    "cache_control",
];

/// What `count_tokens` takes (Anthropic refuses sampling parameters there).
const KNOWN_FOR_COUNT: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "output_format",
    "cache_control",
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
        _ => {
            return Err(invalid(
                &format!("{field}.source.media_type"),
                "Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
            ))
        }
    };
    let data = source["data"]
        .as_str()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| invalid(&format!("{field}.source.data"), "image data is required"))?;
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

/// A `document` block as a Converse document; `index` counts the request's
/// documents (for a name when the block has no title).
fn document(block: &Value, field: &str, index: usize) -> Result<Value, ProxyError> {
    let source = &block["source"];
    let (format, converse_source) = match source["type"].as_str() {
        Some("base64") => {
            let data = source["data"]
                .as_str()
                .filter(|d| !d.is_empty())
                .ok_or_else(|| invalid(&format!("{field}.source.data"), "Field required"))?;
            let format = match source["media_type"].as_str() {
                Some("application/pdf") => "pdf",
                Some("text/plain") => "txt",
                _ => {
                    return Err(invalid(
                        &format!("{field}.source.media_type"),
                        "Input should be 'application/pdf' or 'text/plain'",
                    ))
                }
            };
            (format, json!({ "bytes": data }))
        }
        Some("text") => {
            let data = source["data"]
                .as_str()
                .ok_or_else(|| invalid(&format!("{field}.source.data"), "Field required"))?;
            ("txt", json!({ "text": data }))
        }
        Some("content") => {
            let parts = match &source["content"] {
                Value::String(s) => vec![json!({ "text": s })],
                Value::Array(list) => list
                    .iter()
                    .enumerate()
                    .map(|(i, b)| match (b["type"].as_str(), b["text"].as_str()) {
                        (Some("text"), Some(t)) => Ok(json!({ "text": t })),
                        _ => Err(invalid(
                            &format!("{field}.source.content.{i}"),
                            "only text blocks can make up a document's content on Bedrock",
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(invalid(
                        &format!("{field}.source.content"),
                        "Field required: a string or a list of text blocks",
                    ))
                }
            };
            ("txt", json!({ "content": parts }))
        }
        Some(other) => {
            return Err(invalid(
                &format!("{field}.source.type"),
                format!("`{other}` document sources are not supported on Bedrock: send base64, text or content"),
            ))
        }
        None => return Err(invalid(&format!("{field}.source"), "Field required")),
    };
    let mut doc = Map::new();
    doc.insert("format".into(), format.into());
    doc.insert(
        "name".into(),
        document_name(block["title"].as_str(), index).into(),
    );
    doc.insert("source".into(), converse_source);
    if let Some(context) = block["context"].as_str() {
        doc.insert("context".into(), context.into());
    }
    if let Some(citations) = block.get("citations").filter(|c| !c.is_null()) {
        let enabled = citations["enabled"]
            .as_bool()
            .ok_or_else(|| invalid(&format!("{field}.citations.enabled"), "Field required"))?;
        doc.insert("citations".into(), json!({ "enabled": enabled }));
    }
    Ok(json!({ "document": doc }))
}

/// Where a content list appears, which decides the blocks it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    System,
    User,
    Assistant,
    ToolResult,
}

/// Blocks of `content` (a string or a list), with cache points after marked ones.
fn blocks(
    content: &Value,
    field: &str,
    place: Place,
    documents: &mut usize,
) -> Result<Vec<Value>, ProxyError> {
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
    let in_messages = matches!(place, Place::User | Place::Assistant);
    let mut out = Vec::with_capacity(list.len());
    for (i, block) in list.iter().enumerate() {
        let field = format!("{field}.{i}");
        let converted = match block["type"].as_str() {
            // An earlier answer's citations stay with the text they came in;
            // the model reads the text.
            Some("text") => json!({ "text": block["text"].as_str().unwrap_or("") }),
            Some("image") if place != Place::System => image(block, &field)?,
            Some("document") if place != Place::System => {
                let doc = document(block, &field, *documents)?;
                *documents += 1;
                doc
            }
            Some("tool_use") if in_messages => {
                let id = block["id"]
                    .as_str()
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| invalid(&format!("{field}.id"), "Field required"))?;
                let name = block["name"]
                    .as_str()
                    .ok_or_else(|| invalid(&format!("{field}.name"), "Field required"))?;
                json!({ "toolUse": { "toolUseId": id, "name": name,
                    "input": block.get("input").cloned().unwrap_or_else(|| json!({})) } })
            }
            Some("tool_result") if in_messages => {
                let id = block["tool_use_id"]
                    .as_str()
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| invalid(&format!("{field}.tool_use_id"), "Field required"))?;
                let content = match &block["content"] {
                    Value::Null => vec![json!({ "text": "" })],
                    other => blocks(
                        other,
                        &format!("{field}.content"),
                        Place::ToolResult,
                        documents,
                    )?,
                };
                let mut result = Map::new();
                result.insert("toolUseId".into(), id.into());
                result.insert("content".into(), Value::Array(content));
                if block["is_error"] == true {
                    result.insert("status".into(), "error".into());
                }
                json!({ "toolResult": result })
            }
            Some("thinking") if place == Place::Assistant => {
                let text = block["thinking"]
                    .as_str()
                    .ok_or_else(|| invalid(&format!("{field}.thinking"), "Field required"))?;
                let signature = block["signature"]
                    .as_str()
                    .ok_or_else(|| invalid(&format!("{field}.signature"), "Field required"))?;
                json!({ "reasoningContent": { "reasoningText": { "text": text, "signature": signature } } })
            }
            Some("redacted_thinking") if place == Place::Assistant => {
                let data = block["data"]
                    .as_str()
                    .ok_or_else(|| invalid(&format!("{field}.data"), "Field required"))?;
                json!({ "reasoningContent": { "redactedContent": data } })
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

/// Converse's `toolChoice` and Claude's own `tool_choice` (set when the client
/// turns parallel tool use off, which only Claude's carries).
fn tool_choice(choice: Option<&Value>) -> Result<(Option<Value>, Option<Value>), ProxyError> {
    let Some(choice) = choice else {
        return Ok((None, None));
    };
    let converse = match choice["type"].as_str() {
        Some("none") => return Ok((None, None)),
        Some("auto") => json!({ "auto": {} }),
        Some("any") => json!({ "any": {} }),
        Some("tool") => {
            let name = choice["name"]
                .as_str()
                .ok_or_else(|| invalid("tool_choice.name", "Field required"))?;
            json!({ "tool": { "name": name } })
        }
        Some(other) => {
            return Err(invalid(
                "tool_choice.type",
                format!("`{other}` is not one of auto, any, tool, none"),
            ))
        }
        None => return Err(invalid("tool_choice.type", "Field required")),
    };
    let native = (choice["disable_parallel_tool_use"] == true).then(|| choice.clone());
    Ok((Some(converse), native))
}

/// The `outputConfig` of `output_config` (or the beta's `output_format`).
fn output_config(obj: &Map<String, Value>) -> Result<Map<String, Value>, ProxyError> {
    let mut out = Map::new();
    let format = |field: &str, f: &Value| -> Result<Value, ProxyError> {
        if f["type"] != "json_schema" {
            return Err(invalid(
                &format!("{field}.type"),
                "Input should be 'json_schema'",
            ));
        }
        let schema = f
            .get("schema")
            .filter(|s| s.is_object())
            .ok_or_else(|| invalid(&format!("{field}.schema"), "Field required"))?;
        Ok(json_schema_format(schema, None, None))
    };
    if let Some(f) = obj.get("output_format").filter(|v| !v.is_null()) {
        out.insert("textFormat".into(), format("output_format", f)?);
    }
    if let Some(config) = obj.get("output_config").filter(|v| !v.is_null()) {
        let config = config
            .as_object()
            .ok_or_else(|| invalid("output_config", "Input should be a valid dictionary"))?;
        for (key, value) in config {
            match key.as_str() {
                "format" if !value.is_null() => {
                    out.insert("textFormat".into(), format("output_config.format", value)?);
                }
                "effort" if !value.is_null() => {
                    out.insert("effort".into(), value.clone());
                }
                "format" | "effort" => {}
                other => {
                    return Err(invalid(
                        &format!("output_config.{other}"),
                        "Extra inputs are not permitted",
                    ))
                }
            }
        }
    }
    Ok(out)
}

/// Translates a Messages request body (for `purpose`) for a model with `features`.
pub fn request(
    body: &Value,
    features: &Features,
    purpose: Purpose,
) -> Result<Translated, ProxyError> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("body", "the request body must be a JSON object"))?;
    let known = match purpose {
        Purpose::Messages => KNOWN,
        Purpose::CountTokens => KNOWN_FOR_COUNT,
    };
    if let Some(extra) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(invalid(extra, "Extra inputs are not permitted"));
    }
    shape::check(obj, TYPES, invalid)?;
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("model", "Field required"))?
        .to_owned();
    let max_tokens = match purpose {
        Purpose::Messages => Some(
            obj.get("max_tokens")
                .and_then(Value::as_u64)
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid("max_tokens", "Field required: a positive integer"))?,
        ),
        Purpose::CountTokens => None,
    };
    let raw = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages", "Field required"))?;

    let mut converse = Map::new();
    let mut documents = 0usize;
    let mut messages: Vec<Value> = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let (role, place) = match m["role"].as_str() {
            Some("user") => ("user", Place::User),
            Some("assistant") => ("assistant", Place::Assistant),
            _ => {
                return Err(invalid(
                    &format!("messages.{i}.role"),
                    "must be user or assistant",
                ))
            }
        };
        let content = blocks(
            &m["content"],
            &format!("messages.{i}.content"),
            place,
            &mut documents,
        )?;
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
    let system = match obj.get("system") {
        None | Some(Value::Null) => Vec::new(),
        Some(system) => blocks(system, "system", Place::System, &mut documents)?,
    };

    let mut inference = Map::new();
    let mut stop_sequences = Vec::new();
    if let Some(max_tokens) = max_tokens {
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
            let list = stops
                .as_array()
                .filter(|a| a.iter().all(Value::is_string))
                .ok_or_else(|| invalid("stop_sequences", "must be a list of strings"))?;
            stop_sequences = list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            inference.insert("stopSequences".into(), stops.clone());
        }
    }

    let mut extra = Map::new();
    if let Some(k) = obj.get("top_k").filter(|v| !v.is_null()) {
        extra.insert("top_k".into(), k.clone());
    }
    if let Some(t) = obj.get("thinking").filter(|v| !v.is_null()) {
        extra.insert("thinking".into(), t.clone());
    }

    let choice = obj.get("tool_choice").filter(|v| !v.is_null());
    let none = choice.is_some_and(|c| c["type"] == "none");
    let mut specs = Vec::new();
    if let Some(tools) = obj
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty() && !none)
    {
        for (i, t) in tools.iter().enumerate() {
            let field = format!("tools.{i}");
            if let Some(kind) = t["type"].as_str().filter(|k| *k != "custom") {
                return Err(invalid(
                    &format!("{field}.type"),
                    format!("server tools (`{kind}`) are not available on Bedrock: define the tool with an input_schema"),
                ));
            }
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
            if let Some(strict) = t["strict"].as_bool() {
                spec.insert("strict".into(), strict.into());
            }
            specs.push(json!({ "toolSpec": spec }));
            if let Some(point) = cache_point(t) {
                specs.push(point);
            }
        }
    }
    let mut tool_config = None;
    if !specs.is_empty() {
        let (converse_choice, native) = tool_choice(choice)?;
        let mut config = Map::new();
        config.insert("tools".into(), Value::Array(specs));
        if let Some(c) = converse_choice {
            config.insert("toolChoice".into(), c);
        }
        if let Some(native) = native.filter(|_| features.anthropic) {
            extra.insert("tool_choice".into(), native);
        }
        tool_config = Some(Value::Object(config));
    } else if has_tool_blocks(&messages) {
        // `tool_choice: none` (or no tools) with a tool history: Converse
        // takes no tool blocks without tools, and tools would let the model
        // call one; the history is told as text.
        tool_history_as_text(&mut messages);
    }

    // Top-level `cache_control` marks the last cacheable block of the
    // request, which is the last block of the last message.
    if let Some(point) = obj.get("cache_control").and_then(|cc| {
        if cc.is_null() {
            return None;
        }
        cache_point(&json!({ "cache_control": cc }))
    }) {
        let last = messages
            .last_mut()
            .and_then(|m| m.get_mut("content"))
            .and_then(Value::as_array_mut);
        if let Some(content) = last.filter(|c| !c.is_empty()) {
            if content.last().and_then(|b| b.get("cachePoint")).is_none() {
                content.push(point);
            }
        }
    }

    converse.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        converse.insert("system".into(), Value::Array(system));
    }
    if purpose == Purpose::Messages {
        converse.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if !extra.is_empty() {
        converse.insert("additionalModelRequestFields".into(), Value::Object(extra));
    }
    if let Some(config) = tool_config {
        converse.insert("toolConfig".into(), config);
    }
    let output = output_config(obj)?;
    if purpose == Purpose::Messages {
        if !output.is_empty() {
            converse.insert("outputConfig".into(), Value::Object(output));
        }
        if !stop_sequences.is_empty() && features.anthropic {
            // Claude names the sequence that stopped it, when asked.
            converse.insert(
                "additionalModelResponseFieldPaths".into(),
                json!(["/stop_sequence"]),
            );
        }
        if let Some(user) = obj
            .get("metadata")
            .and_then(|m| m.get("user_id"))
            .and_then(Value::as_str)
        {
            converse.insert("requestMetadata".into(), json!({ "user_id": user }));
        }
    }
    let converse = match purpose {
        Purpose::Messages => Value::Object(converse),
        Purpose::CountTokens => json!({ "input": { "converse": converse } }),
    };
    Ok(Translated {
        model,
        stream: obj.get("stream").and_then(Value::as_bool).unwrap_or(false),
        converse,
        stop_sequences,
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

/// The stop sequence that ended an answer: the one Claude names
/// (`additionalModelResponseFields.stop_sequence`), else the request's only
/// one when a stop sequence ended it; `null` otherwise.
pub fn stop_sequence(stop: Option<&str>, response_fields: &Value, requested: &[String]) -> Value {
    if stop != Some("stop_sequence") {
        return Value::Null;
    }
    match response_fields["stop_sequence"].as_str() {
        Some(s) => s.into(),
        None if requested.len() == 1 => requested[0].as_str().into(),
        None => Value::Null,
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

/// A Converse citation as an Anthropic one.
pub fn citation(c: &Value) -> Value {
    let location = &c["location"];
    let cited = c["sourceContent"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["text"].as_str())
        .collect::<Vec<_>>()
        .join("");
    let (kind, at, start, end) = if let Some(l) = location.get("documentChar") {
        ("char_location", l, "start_char_index", "end_char_index")
    } else if let Some(l) = location.get("documentPage") {
        ("page_location", l, "start_page_number", "end_page_number")
    } else if let Some(l) = location.get("documentChunk") {
        (
            "content_block_location",
            l,
            "start_block_index",
            "end_block_index",
        )
    } else {
        return json!({ "type": "char_location", "cited_text": cited,
            "document_index": 0, "document_title": c["title"],
            "start_char_index": 0, "end_char_index": 0 });
    };
    let mut out = json!({ "type": kind, "cited_text": cited,
        "document_index": at["documentIndex"], "document_title": c["title"] });
    out[start] = at["start"].clone();
    out[end] = at["end"].clone();
    out
}

/// A Converse response body as a Messages response; `stop_sequences` are the
/// request's.
pub fn response(converse: &Value, model: &str, id: &str, stop_sequences: &[String]) -> Value {
    let mut content = Vec::new();
    for block in converse["output"]["message"]["content"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(t) = block["text"].as_str() {
            content.push(json!({ "type": "text", "text": t }));
        } else if let Some(cited) = block.get("citationsContent") {
            let text: String = cited["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["text"].as_str())
                .collect();
            let citations: Vec<Value> = cited["citations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(citation)
                .collect();
            content.push(json!({ "type": "text", "text": text, "citations": citations }));
        } else if let Some(tool) = block.get("toolUse") {
            content.push(json!({ "type": "tool_use", "id": tool["toolUseId"], "name": tool["name"], "input": tool["input"] }));
        } else if let Some(r) = block.get("reasoningContent") {
            if let Some(data) = r.get("redactedContent") {
                content.push(json!({ "type": "redacted_thinking", "data": data }));
            } else {
                content.push(
                    json!({ "type": "thinking", "thinking": r["reasoningText"]["text"],
                    "signature": r["reasoningText"]["signature"] }),
                );
            }
        }
    }
    let stop = converse["stopReason"].as_str();
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(stop),
        "stop_sequence": stop_sequence(stop, &converse["additionalModelResponseFields"], stop_sequences),
        "usage": usage(&Usage::from_json(&converse["usage"])),
    })
}

/// A CountTokens answer as `count_tokens`'.
pub fn count_response(counted: &Value) -> Value {
    json!({ "input_tokens": counted["inputTokens"].as_u64().unwrap_or(0) })
}

fn sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Writes ConverseStream events as Messages stream events.
#[derive(Debug)]
pub struct EventWriter {
    id: String,
    model: String,
    /// Converse content-block index -> Anthropic content-block index, for the
    /// blocks started so far: Anthropic's count from 0 without gaps.
    started: HashMap<u64, u64>,
    stop: Option<String>,
    stop_sequence: Value,
    stop_sequences: Vec<String>,
}

impl EventWriter {
    pub fn new(id: String, model: String, stop_sequences: Vec<String>) -> EventWriter {
        EventWriter {
            id,
            model,
            started: HashMap::new(),
            stop: None,
            stop_sequence: Value::Null,
            stop_sequences,
        }
    }

    /// The Anthropic index of a Converse block, starting it (with
    /// `content_block`) if it has not started yet.
    fn start(&mut self, index: u64, content_block: Value, out: &mut Vec<Bytes>) -> u64 {
        if let Some(&at) = self.started.get(&index) {
            return at;
        }
        let at = self.started.len() as u64;
        self.started.insert(index, at);
        out.push(sse(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": at, "content_block": content_block }),
        ));
        at
    }

    fn delta(at: u64, delta: Value) -> Bytes {
        sse(
            "content_block_delta",
            &json!({ "type": "content_block_delta", "index": at, "delta": delta }),
        )
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
                    self.start(
                        index,
                        json!({ "type": "tool_use", "id": tool["toolUseId"], "name": tool["name"], "input": {} }),
                        &mut out,
                    );
                }
            }
            EventKind::ContentBlockDelta => {
                let delta = &v["delta"];
                if let Some(text) = delta["text"].as_str() {
                    let at = self.start(index, json!({ "type": "text", "text": "" }), &mut out);
                    out.push(Self::delta(
                        at,
                        json!({ "type": "text_delta", "text": text }),
                    ));
                } else if let Some(c) = delta.get("citation") {
                    let at = self.start(
                        index,
                        json!({ "type": "text", "text": "", "citations": [] }),
                        &mut out,
                    );
                    out.push(Self::delta(
                        at,
                        json!({ "type": "citations_delta", "citation": citation(c) }),
                    ));
                } else if let Some(input) = delta["toolUse"]["input"].as_str() {
                    if let Some(&at) = self.started.get(&index) {
                        out.push(Self::delta(
                            at,
                            json!({ "type": "input_json_delta", "partial_json": input }),
                        ));
                    }
                } else if let Some(r) = delta.get("reasoningContent") {
                    if let Some(data) = r.get("redactedContent") {
                        self.start(
                            index,
                            json!({ "type": "redacted_thinking", "data": data }),
                            &mut out,
                        );
                    } else {
                        let at = self.start(
                            index,
                            json!({ "type": "thinking", "thinking": "", "signature": "" }),
                            &mut out,
                        );
                        if let Some(text) = r["text"].as_str() {
                            out.push(Self::delta(
                                at,
                                json!({ "type": "thinking_delta", "thinking": text }),
                            ));
                        }
                        if let Some(signature) = r["signature"].as_str() {
                            out.push(Self::delta(
                                at,
                                json!({ "type": "signature_delta", "signature": signature }),
                            ));
                        }
                    }
                }
            }
            EventKind::ContentBlockStop => {
                if let Some(&at) = self.started.get(&index) {
                    out.push(sse(
                        "content_block_stop",
                        &json!({ "type": "content_block_stop", "index": at }),
                    ));
                }
            }
            EventKind::MessageStop => {
                self.stop = v["stopReason"].as_str().map(str::to_owned);
                self.stop_sequence = stop_sequence(
                    self.stop.as_deref(),
                    &v["additionalModelResponseFields"],
                    &self.stop_sequences,
                );
            }
            EventKind::Metadata => {
                out.push(sse("message_delta", &json!({ "type": "message_delta",
                    "delta": { "stop_reason": stop_reason(self.stop.as_deref()), "stop_sequence": self.stop_sequence },
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
