//! A Converse request as an OpenAI chat request, for the upstreams that take
//! one (`openai`, and `sagemaker`'s serving containers). What a chat server
//! has no form for (a Bedrock guardrail, a PDF, an image in S3) is refused
//! with the Converse field it is at; what only Bedrock acts on (latency and
//! service tiers, request metadata, cache points) is left out; a model's
//! earlier reasoning is not sent back (chat servers do not take it).

use serde_json::{json, Map, Value};

/// A Converse field a chat server cannot take, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Untranslatable {
    /// Where it is in the Converse request (`messages[0].content[1].document`).
    pub field: String,
    pub reason: String,
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> Untranslatable {
    Untranslatable {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Members of a chat request the translation writes; `additionalModelRequestFields`
/// may add others but not replace these.
const WRITTEN: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
];

/// The one name of a content block's member (`text`, `image`, `toolUse`...).
fn block_kind(block: &Value) -> &str {
    block
        .as_object()
        .and_then(|o| o.keys().next())
        .map_or("?", String::as_str)
}

/// A chat request without `model` and the stream flags: translated once per
/// call, finished per target by [`finish_request`].
pub type ChatRequest = Map<String, Value>;

/// Translates a Converse request body into a chat request without `model`
/// and the stream flags ([`finish_request`] adds them per target).
pub fn request(converse: &Value) -> Result<ChatRequest, Untranslatable> {
    let obj = converse
        .as_object()
        .ok_or_else(|| refuse("body", "a Converse request is a JSON object"))?;
    for key in obj.keys() {
        match key.as_str() {
            "messages"
            | "system"
            | "inferenceConfig"
            | "toolConfig"
            | "additionalModelRequestFields" => {}
            // Bedrock's own: the tier planner and Bedrock's invocation logs.
            "performanceConfig" | "serviceTier" | "requestMetadata" => {}
            "guardrailConfig" => {
                return Err(refuse(
                    key,
                    "Bedrock guardrails run inside Bedrock; this upstream cannot apply one",
                ))
            }
            "promptVariables" => return Err(refuse(
                key,
                "prompt variables fill a Bedrock prompt-management prompt; this upstream has none",
            )),
            "additionalModelResponseFieldPaths" => {
                return Err(refuse(
                    key,
                    "response field paths select fields of a Bedrock model's native answer; \
                     this upstream answers in the chat format",
                ))
            }
            _ => return Err(refuse(key, "not a Converse request field")),
        }
    }

    let mut messages = Vec::new();
    if let Some(system) = obj.get("system") {
        let blocks = system
            .as_array()
            .ok_or_else(|| refuse("system", "must be a list of blocks"))?;
        let mut texts = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            match block_kind(block) {
                "text" => texts.push(text_of(block, &format!("system[{i}].text"))?),
                "cachePoint" => {}
                other => {
                    return Err(refuse(
                        format!("system[{i}].{other}"),
                        "a chat server takes text system prompts only",
                    ))
                }
            }
        }
        if !texts.is_empty() {
            messages.push(json!({ "role": "system", "content": texts.join("\n") }));
        }
    }
    let list = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| refuse("messages", "a list of messages is required"))?;
    for (i, m) in list.iter().enumerate() {
        let field = format!("messages[{i}]");
        let content = m["content"]
            .as_array()
            .ok_or_else(|| refuse(format!("{field}.content"), "must be a list of blocks"))?;
        match m["role"].as_str() {
            Some("user") => user_message(&field, content, &mut messages)?,
            Some("assistant") => assistant_message(&field, content, &mut messages)?,
            _ => return Err(refuse(format!("{field}.role"), "must be user or assistant")),
        }
    }

    let mut chat = Map::new();
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(inference) = obj.get("inferenceConfig") {
        inference_config(inference, &mut chat)?;
    }
    if let Some(tools) = obj.get("toolConfig") {
        tool_config(tools, &mut chat)?;
    }
    if let Some(extra) = obj.get("additionalModelRequestFields") {
        let extra = extra.as_object().ok_or_else(|| {
            refuse(
                "additionalModelRequestFields",
                "must be an object of request fields",
            )
        })?;
        for (key, value) in extra {
            if WRITTEN.contains(&key.as_str()) || chat.contains_key(key) {
                return Err(refuse(
                    format!("additionalModelRequestFields.{key}"),
                    format!("would replace the chat request's own `{key}`"),
                ));
            }
            chat.insert(key.clone(), value.clone());
        }
    }
    Ok(chat)
}

/// The request one target is sent: `model` (none for SageMaker, whose
/// endpoint is the model), and for streams `stream` and, when asked,
/// `stream_options.include_usage`.
pub fn finish_request(
    mut chat: ChatRequest,
    model: Option<&str>,
    stream: bool,
    include_usage: bool,
) -> Value {
    if let Some(model) = model {
        chat.insert("model".into(), model.into());
    }
    if stream {
        chat.insert("stream".into(), true.into());
        if include_usage {
            chat.insert("stream_options".into(), json!({ "include_usage": true }));
        }
    }
    // `model` first, as clients write it (servers do not care; logs read better).
    let mut ordered = Map::new();
    if let Some(m) = chat.remove("model") {
        ordered.insert("model".into(), m);
    }
    ordered.extend(chat);
    Value::Object(ordered)
}

fn text_of(block: &Value, field: &str) -> Result<String, Untranslatable> {
    block["text"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| refuse(field, "must be a string"))
}

/// The media type of a Converse image format.
fn image_media_type(format: &str) -> Option<&'static str> {
    Some(match format {
        "png" => "image/png",
        "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => return None,
    })
}

/// A Converse image block as a chat `image_url` part (a base64 data URL).
fn image_part(image: &Value, field: &str) -> Result<Value, Untranslatable> {
    let format = image["format"].as_str().unwrap_or("");
    let media = image_media_type(format).ok_or_else(|| {
        refuse(
            format!("{field}.format"),
            format!("`{format}` is not one of png, jpeg, gif, webp"),
        )
    })?;
    let source = &image["source"];
    let Some(bytes) = source["bytes"].as_str() else {
        let kind = block_kind(source);
        return Err(refuse(
            format!("{field}.source.{kind}"),
            "a chat server takes images as bytes only (the proxy does not read S3)",
        ));
    };
    Ok(
        json!({ "type": "image_url", "image_url": { "url": format!("data:{media};base64,{bytes}") } }),
    )
}

/// A user turn: its tool results as `tool` messages (first: they answer the
/// calls of the turn before), then its text and images as one user message.
fn user_message(
    field: &str,
    content: &[Value],
    out: &mut Vec<Value>,
) -> Result<(), Untranslatable> {
    let mut parts = Vec::new();
    let mut tool_results = Vec::new();
    for (j, block) in content.iter().enumerate() {
        let at = format!("{field}.content[{j}]");
        match block_kind(block) {
            "text" => parts
                .push(json!({ "type": "text", "text": text_of(block, &format!("{at}.text"))? })),
            "image" => parts.push(image_part(&block["image"], &format!("{at}.image"))?),
            "toolResult" => tool_results.push(tool_result(
                &block["toolResult"],
                &format!("{at}.toolResult"),
            )?),
            "cachePoint" => {}
            other => {
                return Err(refuse(
                    format!("{at}.{other}"),
                    format!("a chat server has no form for `{other}` content"),
                ))
            }
        }
    }
    out.extend(tool_results);
    if parts.is_empty() {
        return Ok(());
    }
    // Text alone is sent as one string: every chat server takes that, while
    // some (and some chat templates) refuse a list of parts.
    let content = if parts.iter().all(|p| p["type"] == "text") {
        let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        Value::String(texts.join("\n"))
    } else {
        Value::Array(parts)
    };
    out.push(json!({ "role": "user", "content": content }));
    Ok(())
}

fn tool_result(result: &Value, field: &str) -> Result<Value, Untranslatable> {
    let id = result["toolUseId"]
        .as_str()
        .ok_or_else(|| refuse(format!("{field}.toolUseId"), "is required"))?;
    let mut texts = Vec::new();
    for (k, block) in result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        match block_kind(block) {
            "text" => texts.push(text_of(block, &format!("{field}.content[{k}].text"))?),
            "json" => texts.push(block["json"].to_string()),
            other => {
                return Err(refuse(
                    format!("{field}.content[{k}].{other}"),
                    "a chat server takes tool results as text or JSON only",
                ))
            }
        }
    }
    Ok(json!({ "role": "tool", "tool_call_id": id, "content": texts.join("\n") }))
}

/// An assistant turn: its text and its tool calls; its reasoning stays behind.
fn assistant_message(
    field: &str,
    content: &[Value],
    out: &mut Vec<Value>,
) -> Result<(), Untranslatable> {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    for (j, block) in content.iter().enumerate() {
        let at = format!("{field}.content[{j}]");
        match block_kind(block) {
            "text" => texts.push(text_of(block, &format!("{at}.text"))?),
            "toolUse" => {
                let tool = &block["toolUse"];
                let id = tool["toolUseId"]
                    .as_str()
                    .ok_or_else(|| refuse(format!("{at}.toolUse.toolUseId"), "is required"))?;
                let name = tool["name"]
                    .as_str()
                    .ok_or_else(|| refuse(format!("{at}.toolUse.name"), "is required"))?;
                let input = tool.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({ "id": id, "type": "function",
                    "function": { "name": name, "arguments": input.to_string() } }));
            }
            "reasoningContent" | "cachePoint" => {}
            other => {
                return Err(refuse(
                    format!("{at}.{other}"),
                    format!("a chat server has no form for `{other}` content"),
                ))
            }
        }
    }
    if texts.is_empty() && calls.is_empty() {
        return Ok(());
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if texts.is_empty() {
            Value::Null
        } else {
            Value::String(texts.join("\n"))
        },
    );
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    out.push(Value::Object(message));
    Ok(())
}

fn inference_config(
    inference: &Value,
    chat: &mut Map<String, Value>,
) -> Result<(), Untranslatable> {
    let obj = inference
        .as_object()
        .ok_or_else(|| refuse("inferenceConfig", "must be an object"))?;
    for (key, value) in obj {
        let name = match key.as_str() {
            "maxTokens" => "max_tokens",
            "temperature" => "temperature",
            "topP" => "top_p",
            "stopSequences" => "stop",
            _ => {
                return Err(refuse(
                    format!("inferenceConfig.{key}"),
                    "not an inference parameter a chat server takes",
                ))
            }
        };
        chat.insert(name.into(), value.clone());
    }
    Ok(())
}

fn tool_config(config: &Value, chat: &mut Map<String, Value>) -> Result<(), Untranslatable> {
    let obj = config
        .as_object()
        .ok_or_else(|| refuse("toolConfig", "must be an object"))?;
    let mut tools = Vec::new();
    let mut choice = None;
    for (key, value) in obj {
        match key.as_str() {
            "tools" => {
                for (k, tool) in value.as_array().into_iter().flatten().enumerate() {
                    let field = format!("toolConfig.tools[{k}]");
                    match block_kind(tool) {
                        "toolSpec" => {
                            let spec = &tool["toolSpec"];
                            let name = spec["name"].as_str().ok_or_else(|| {
                                refuse(format!("{field}.toolSpec.name"), "is required")
                            })?;
                            let mut function = Map::new();
                            function.insert("name".into(), name.into());
                            if let Some(d) = spec["description"].as_str() {
                                function.insert("description".into(), d.into());
                            }
                            let schema = spec["inputSchema"]["json"].clone();
                            function.insert(
                                "parameters".into(),
                                if schema.is_null() {
                                    json!({ "type": "object", "properties": {} })
                                } else {
                                    schema
                                },
                            );
                            tools.push(json!({ "type": "function", "function": function }));
                        }
                        "cachePoint" => {}
                        other => {
                            return Err(refuse(
                                format!("{field}.{other}"),
                                "a chat server takes function tools only",
                            ))
                        }
                    }
                }
            }
            "toolChoice" => {
                choice = Some(match block_kind(value) {
                    "auto" => json!("auto"),
                    "any" => json!("required"),
                    "tool" => {
                        let name = value["tool"]["name"].as_str().ok_or_else(|| {
                            refuse("toolConfig.toolChoice.tool.name", "is required")
                        })?;
                        json!({ "type": "function", "function": { "name": name } })
                    }
                    other => {
                        return Err(refuse(
                            format!("toolConfig.toolChoice.{other}"),
                            "not a tool choice a chat server takes",
                        ))
                    }
                });
            }
            _ => {
                return Err(refuse(
                    format!("toolConfig.{key}"),
                    "not a tool setting a chat server takes",
                ))
            }
        }
    }
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = choice {
            chat.insert("tool_choice".into(), choice);
        }
    }
    Ok(())
}
