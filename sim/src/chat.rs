//! OpenAI Chat Completions as the self-hosted faces speak it (vLLM's and the
//! SageMaker LMI / TGI containers' messages API): a request body read into the
//! simulator's [`Prompt`], with OpenAI's validation and error shape; the answer
//! (parallel tool calls and JSON output included) written as a `chat.completion`
//! body or as `chat.completion.chunk` events. Pure: no I/O, no server state.

use base64::Engine;
use bedrock_wire::canonical::{self, Markers};
use bedrock_wire::tokens;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::generate::{self, Answer, Block, StopReason};
use crate::request::{Format, Prompt, Tier, ToolChoice, ToolDef, Unit};

/// An error as an OpenAI-compatible server reports it:
/// `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatError {
    pub status: u16,
    /// The `type` member, such as `invalid_request_error`.
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    pub message: String,
}

impl ChatError {
    /// A 400 `invalid_request_error`.
    pub fn invalid(
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&'static str>,
    ) -> ChatError {
        ChatError {
            status: 400,
            kind: "invalid_request_error",
            code,
            param: param.map(str::to_owned),
            message: message.into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// The label the simulator's error counters use.
    pub fn label(&self) -> &'static str {
        self.code.unwrap_or(self.kind)
    }
}

fn missing(param: &str) -> ChatError {
    ChatError::invalid(
        format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

fn wrong_type(param: &str, expected: &str, got: &Value) -> ChatError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ChatError::invalid(
        format!("Invalid type for '{param}': expected {expected}, but got {got} instead."),
        Some(param),
        Some("invalid_type"),
    )
}

fn invalid_value(param: &str, value: &str, supported: &str) -> ChatError {
    ChatError::invalid(
        format!("Invalid value: '{value}'. Supported values are: {supported}."),
        Some(param),
        Some("invalid_value"),
    )
}

/// How a server treats `stream_options`: vLLM and OpenAI accept it; some
/// OpenAI-compatible servers refuse unknown arguments, others drop them silently
/// (and then send no usage chunk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamOptions {
    #[default]
    Accept,
    Reject,
    Ignore,
}

/// What the serving model allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    /// Seeds the prefix hashes and the answer, so each model answers its own way.
    pub model_id: &'a str,
    pub context_tokens: u32,
    pub stream_options: StreamOptions,
}

/// A chat request, read and validated.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// Messages, tools and sampling in the generator's terms. `units` has one
    /// entry for the tools and one per message (the prefix cache's blocks).
    pub prompt: Prompt,
    pub stream: bool,
    /// `stream_options.include_usage`, when the server honours it.
    pub include_usage: bool,
    pub parallel_tool_calls: bool,
    /// `tool_choice` named a function: finish_reason is then `stop`, as OpenAI does.
    pub named_tool: bool,
    /// The schema a `response_format` of `json_object` or `json_schema` asks for.
    pub json_schema: Option<Value>,
    /// `seed`: makes sampling at any temperature repeatable.
    pub seed: Option<u64>,
}

/// Top-level keys that change nothing about the answer.
const NOT_IN_FINGERPRINT: [&str; 7] = [
    "model",
    "stream",
    "stream_options",
    "seed",
    "user",
    "metadata",
    "store",
];

const ROLES: &str = "'system', 'assistant', 'user', 'function', 'tool', and 'developer'";

fn number(
    body: &Map<String, Value>,
    key: &str,
    min: f64,
    max: f64,
) -> Result<Option<f64>, ChatError> {
    let Some(v) = body.get(key).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let f = v.as_f64().ok_or_else(|| wrong_type(key, "a decimal", v))?;
    if f < min {
        return Err(ChatError::invalid(
            format!("Invalid '{key}': decimal below minimum value. Expected a value >= {min}, but got {f} instead."),
            Some(key),
            Some("decimal_below_min_value"),
        ));
    }
    if f > max {
        return Err(ChatError::invalid(
            format!("Invalid '{key}': decimal above maximum value. Expected a value <= {max}, but got {f} instead."),
            Some(key),
            Some("decimal_above_max_value"),
        ));
    }
    Ok(Some(f))
}

fn integer(body: &Map<String, Value>, key: &str, min: i64) -> Result<Option<i64>, ChatError> {
    let Some(v) = body.get(key).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let n = v.as_i64().ok_or_else(|| wrong_type(key, "an integer", v))?;
    if n < min {
        return Err(ChatError::invalid(
            format!("Invalid '{key}': integer below minimum value. Expected a value >= {min}, but got {n} instead."),
            Some(key),
            Some("integer_below_min_value"),
        ));
    }
    Ok(Some(n))
}

fn boolean(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, ChatError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong_type(key, "a boolean", other)),
    }
}

/// Checks an `image_url`: a base64 data URL of an image type, or an http(s) URL
/// (accepted as is: the simulator fetches nothing).
fn check_image_url(url: &str, param: &str) -> Result<(), ChatError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(());
    }
    let bad = |why: &str| {
        ChatError::invalid(
            format!("Invalid image URL: '{param}'. Expected a base64-encoded data URL with an image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but {why}."),
            Some(param),
            Some("invalid_image_url"),
        )
    };
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(bad(
            "got a value that is neither a data URL nor an http(s) URL",
        ));
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| bad("the data URL has no data"))?;
    let mime = meta
        .strip_suffix(";base64")
        .ok_or_else(|| bad("the data URL is not base64-encoded"))?;
    if !["image/png", "image/jpeg", "image/gif", "image/webp"].contains(&mime) {
        return Err(bad(&format!("got unsupported MIME type '{mime}'")));
    }
    match base64::engine::general_purpose::STANDARD.decode(data) {
        Ok(bytes) if !bytes.is_empty() => Ok(()),
        _ => Err(bad("the data is not valid base64")),
    }
}

/// A message's content: its text and its tokens. Images only where `images`.
fn content(value: &Value, param: &str, images: bool) -> Result<(String, u32), ChatError> {
    match value {
        Value::String(s) => Ok((s.clone(), tokens::text(s))),
        Value::Array(parts) if parts.is_empty() => Err(ChatError::invalid(
            format!("Invalid '{param}': empty array. Expected an array with minimum length 1, but got an empty array instead."),
            Some(param),
            Some("empty_array"),
        )),
        Value::Array(parts) => {
            let mut text = Vec::new();
            let mut count = 0u32;
            for (j, part) in parts.iter().enumerate() {
                let here = format!("{param}[{j}]");
                let kind = part["type"]
                    .as_str()
                    .ok_or_else(|| missing(&format!("{here}.type")))?;
                match kind {
                    "text" => {
                        let t = part["text"]
                            .as_str()
                            .ok_or_else(|| missing(&format!("{here}.text")))?;
                        text.push(t);
                        count = count.saturating_add(tokens::text(t));
                    }
                    "image_url" if images => {
                        let image = &part["image_url"];
                        let url = image["url"]
                            .as_str()
                            .or_else(|| image.as_str())
                            .ok_or_else(|| missing(&format!("{here}.image_url.url")))?;
                        check_image_url(url, &format!("{here}.image_url.url"))?;
                        count = count.saturating_add(tokens::IMAGE_TOKENS);
                    }
                    other => {
                        let supported = if images {
                            "'text' and 'image_url'"
                        } else {
                            "'text'"
                        };
                        return Err(invalid_value(&format!("{here}.type"), other, supported));
                    }
                }
            }
            Ok((text.join(" "), count))
        }
        other => Err(wrong_type(param, "a string or an array", other)),
    }
}

fn unanswered_calls(pending: &[String], param: &str) -> ChatError {
    ChatError::invalid(
        format!("An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}", pending.join(", ")),
        Some(param),
        None,
    )
}

/// Hash chain over the prompt in order: each unit covers itself and all before it.
struct Prefix {
    hash: [u8; 32],
    tokens: u32,
    units: Vec<Unit>,
}

impl Prefix {
    fn push(&mut self, tag: &[u8], value: &Value, tokens: u32) {
        let mut hasher = Sha256::new();
        hasher.update(self.hash);
        hasher.update(tag);
        let mut buf = Vec::with_capacity(128);
        canonical::write(value, &mut buf);
        hasher.update(&buf);
        self.hash = hasher.finalize().into();
        self.tokens = self.tokens.saturating_add(tokens);
        self.units.push(Unit {
            hash: self.hash,
            tokens_end: self.tokens,
        });
    }
}

fn tool_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn read_tools(body: &Map<String, Value>, prefix: &mut Prefix) -> Result<Vec<ToolDef>, ChatError> {
    let list = match body.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(other) => return Err(wrong_type("tools", "an array", other)),
    };
    let mut tools = Vec::with_capacity(list.len());
    let mut count = 0u32;
    for (i, tool) in list.iter().enumerate() {
        let kind = tool["type"].as_str().unwrap_or("function");
        if kind != "function" {
            return Err(invalid_value(
                &format!("tools[{i}].type"),
                kind,
                "'function'",
            ));
        }
        let name = tool["function"]["name"]
            .as_str()
            .ok_or_else(|| missing(&format!("tools[{i}].function.name")))?;
        if !tool_name_ok(name) {
            return Err(ChatError::invalid(
                format!("Invalid 'tools[{i}].function.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$' of at most 64 characters."),
                Some(&format!("tools[{i}].function.name")),
                Some("invalid_value"),
            ));
        }
        if tools.iter().any(|t: &ToolDef| t.name == name) {
            return Err(ChatError::invalid(
                format!("Duplicate function name '{name}' in 'tools'."),
                Some("tools"),
                Some("invalid_value"),
            ));
        }
        let schema = match &tool["function"]["parameters"] {
            Value::Null => json!({"type": "object", "properties": {}}),
            Value::Object(_) => tool["function"]["parameters"].clone(),
            other => {
                return Err(wrong_type(
                    &format!("tools[{i}].function.parameters"),
                    "an object",
                    other,
                ))
            }
        };
        count = count.saturating_add(tokens::json(tool));
        tools.push(ToolDef {
            name: name.to_owned(),
            schema,
        });
    }
    if !list.is_empty() {
        prefix.push(b"tools", &Value::Array(list.clone()), count);
    }
    Ok(tools)
}

fn read_tool_choice(
    body: &Map<String, Value>,
    tools: &[ToolDef],
) -> Result<(ToolChoice, bool), ChatError> {
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => {
            return Ok((
                if tools.is_empty() {
                    ToolChoice::None
                } else {
                    ToolChoice::Auto
                },
                false,
            ))
        }
        Some(c) => c,
    };
    if tools.is_empty() && choice != "none" {
        return Err(ChatError::invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            Some("tool_choice"),
            None,
        ));
    }
    match choice {
        Value::String(s) => match s.as_str() {
            "none" => Ok((ToolChoice::None, false)),
            "auto" => Ok((ToolChoice::Auto, false)),
            "required" => Ok((ToolChoice::Any, false)),
            other => Err(invalid_value(
                "tool_choice",
                other,
                "'none', 'auto' and 'required'",
            )),
        },
        Value::Object(_) => {
            let name = choice["function"]["name"]
                .as_str()
                .ok_or_else(|| missing("tool_choice.function.name"))?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ChatError::invalid(
                    format!("Tool '{name}' named in 'tool_choice' has not been passed in 'tools'."),
                    Some("tool_choice"),
                    Some("invalid_value"),
                ));
            }
            Ok((ToolChoice::Tool(name.to_owned()), true))
        }
        other => Err(wrong_type("tool_choice", "a string or an object", other)),
    }
}

fn read_response_format(body: &Map<String, Value>) -> Result<Option<Value>, ChatError> {
    let format = match body.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(f @ Value::Object(_)) => f,
        Some(other) => return Err(wrong_type("response_format", "an object", other)),
    };
    match format["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
        }))),
        Some("json_schema") => {
            let spec = &format["json_schema"];
            if spec.is_null() {
                return Err(missing("response_format.json_schema"));
            }
            if spec["name"].as_str().is_none() {
                return Err(missing("response_format.json_schema.name"));
            }
            match &spec["schema"] {
                Value::Object(_) => Ok(Some(spec["schema"].clone())),
                Value::Null => Ok(Some(json!({"type": "object", "properties": {}}))),
                other => Err(wrong_type(
                    "response_format.json_schema.schema",
                    "an object",
                    other,
                )),
            }
        }
        Some(other) => Err(invalid_value(
            "response_format.type",
            other,
            "'text', 'json_object' and 'json_schema'",
        )),
        None => Err(missing("response_format.type")),
    }
}

fn read_stop(body: &Map<String, Value>) -> Result<Vec<String>, ChatError> {
    match body.get("stop") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| wrong_type(&format!("stop[{i}]"), "a string", s))
            })
            .collect(),
        Some(other) => Err(wrong_type("stop", "a string or an array", other)),
    }
}

/// Streaming flags: `(stream, include_usage)`.
fn read_stream(body: &Map<String, Value>, mode: StreamOptions) -> Result<(bool, bool), ChatError> {
    let stream = boolean(body, "stream")?.unwrap_or(false);
    let Some(options) = body.get("stream_options").filter(|v| !v.is_null()) else {
        return Ok((stream, false));
    };
    match mode {
        StreamOptions::Reject => {
            return Err(ChatError::invalid(
                "Unrecognized request argument supplied: stream_options",
                None,
                None,
            ))
        }
        StreamOptions::Ignore => return Ok((stream, false)),
        StreamOptions::Accept => {}
    }
    if !stream {
        return Err(ChatError::invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options"),
            None,
        ));
    }
    let options = options
        .as_object()
        .ok_or_else(|| wrong_type("stream_options", "an object", options))?;
    Ok((stream, boolean(options, "include_usage")?.unwrap_or(false)))
}

/// Reads and validates a chat request for a model with `limits`.
pub fn read(body: &Value, limits: &Limits<'_>) -> Result<ChatRequest, ChatError> {
    let obj = body
        .as_object()
        .ok_or_else(|| wrong_type("body", "an object", body))?;
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(missing("messages")),
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(ChatError::invalid(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
                Some("messages"),
                Some("empty_array"),
            ))
        }
        Some(Value::Array(m)) => m,
        Some(other) => return Err(wrong_type("messages", "an array", other)),
    };

    let mut prefix = Prefix {
        hash: Sha256::digest(limits.model_id.as_bytes()).into(),
        tokens: 0,
        units: Vec::new(),
    };
    let tools = read_tools(obj, &mut prefix)?;
    let (tool_choice, named_tool) = read_tool_choice(obj, &tools)?;

    // Tool calls of the last assistant turn that still await their results.
    let mut pending: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let here = format!("messages[{i}]");
        let m = message
            .as_object()
            .ok_or_else(|| wrong_type(&here, "an object", message))?;
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            Some(other) => return Err(wrong_type(&format!("{here}.role"), "a string", other)),
            None => return Err(missing(&format!("{here}.role"))),
        };
        if role != "tool" && !pending.is_empty() {
            return Err(unanswered_calls(&pending, &format!("{here}.role")));
        }
        let body_param = format!("{here}.content");
        let mut count = tokens::MESSAGE_OVERHEAD;
        match role {
            "system" | "developer" | "user" => {
                let c = m.get("content").ok_or_else(|| missing(&body_param))?;
                count += content(c, &body_param, role == "user")?.1;
            }
            "assistant" => {
                let calls = match m.get("tool_calls") {
                    None | Some(Value::Null) => &[][..],
                    Some(Value::Array(calls)) => calls.as_slice(),
                    Some(other) => {
                        return Err(wrong_type(&format!("{here}.tool_calls"), "an array", other))
                    }
                };
                match m.get("content") {
                    None | Some(Value::Null) if !calls.is_empty() => {}
                    None | Some(Value::Null) => return Err(missing(&body_param)),
                    Some(c) => count += content(c, &body_param, false)?.1,
                }
                for (j, call) in calls.iter().enumerate() {
                    let at = format!("{here}.tool_calls[{j}]");
                    let id = call["id"]
                        .as_str()
                        .ok_or_else(|| missing(&format!("{at}.id")))?;
                    let name = call["function"]["name"]
                        .as_str()
                        .ok_or_else(|| missing(&format!("{at}.function.name")))?;
                    let arguments = &call["function"]["arguments"];
                    if !arguments.is_string() {
                        return Err(wrong_type(
                            &format!("{at}.function.arguments"),
                            "a string",
                            arguments,
                        ));
                    }
                    count += tokens::text(name) + tokens::json(arguments);
                    pending.push(id.to_owned());
                }
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| missing(&format!("{here}.tool_call_id")))?;
                let Some(at) = pending.iter().position(|p| p == id) else {
                    return Err(ChatError::invalid(
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                        Some(&format!("{here}.role")),
                        None,
                    ));
                };
                pending.remove(at);
                let c = m.get("content").ok_or_else(|| missing(&body_param))?;
                count += content(c, &body_param, false)?.1;
            }
            other => return Err(invalid_value(&format!("{here}.role"), other, ROLES)),
        }
        prefix.push(role.as_bytes(), message, count);
    }
    if !pending.is_empty() {
        return Err(unanswered_calls(&pending, "messages"));
    }

    let last = messages.last().and_then(Value::as_object);
    let last_role = last.and_then(|m| m.get("role")).and_then(Value::as_str);
    let last_user_text = match (last_role, last.and_then(|m| m.get("content"))) {
        (Some("user"), Some(c)) => content(c, "messages", true)?.0,
        _ => String::new(),
    };

    let input_tokens = prefix.tokens;
    let requested = match integer(obj, "max_completion_tokens", 1)? {
        Some(n) => Some(n),
        None => integer(obj, "max_tokens", 1)?,
    };
    let context = i64::from(limits.context_tokens);
    let input = i64::from(input_tokens);
    if input >= context {
        return Err(ChatError::invalid(
            format!("This model's maximum context length is {context} tokens. However, your messages resulted in {input} tokens. Please reduce the length of the messages."),
            Some("messages"),
            Some("context_length_exceeded"),
        ));
    }
    if let Some(n) = requested.filter(|n| input + n > context) {
        return Err(ChatError::invalid(
            format!("This model's maximum context length is {context} tokens. However, you requested {} tokens ({input} in the messages, {n} in the completion). Please reduce the length of the messages or completion.", input + n),
            Some("messages"),
            Some("context_length_exceeded"),
        ));
    }
    let max_tokens = requested.unwrap_or(context - input);

    let temperature = number(obj, "temperature", 0.0, 2.0)?;
    number(obj, "top_p", 0.0, 1.0)?;
    number(obj, "frequency_penalty", -2.0, 2.0)?;
    number(obj, "presence_penalty", -2.0, 2.0)?;
    if let Some(n) = integer(obj, "n", 1)? {
        if n != 1 {
            return Err(ChatError::invalid(
                format!(
                    "Invalid 'n': this server answers with one choice, but {n} were requested."
                ),
                Some("n"),
                Some("unsupported_value"),
            ));
        }
    }
    if boolean(obj, "logprobs")? == Some(true)
        || obj.get("top_logprobs").is_some_and(|v| !v.is_null())
    {
        return Err(ChatError::invalid(
            "Invalid 'logprobs': this server does not return log probabilities.",
            Some("logprobs"),
            Some("unsupported_value"),
        ));
    }
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                // A negative seed is as good a seed as any: keep its bits.
                .map(|s| s as u64)
                .or_else(|| v.as_u64())
                .ok_or_else(|| wrong_type("seed", "an integer", v))?,
        ),
    };
    let stop_sequences = read_stop(obj)?;
    let (stream, include_usage) = read_stream(obj, limits.stream_options)?;
    let parallel_tool_calls = boolean(obj, "parallel_tool_calls")?.unwrap_or(true);
    let json_schema = read_response_format(obj)?;

    let mut hasher = Sha256::new();
    hasher.update(limits.model_id.as_bytes());
    hasher.update(canonical::request_bytes(
        body,
        Markers::Keep,
        &NOT_IN_FINGERPRINT,
    ));
    let prompt = Prompt {
        format: Format::Converse,
        units: prefix.units,
        checkpoints: Vec::new(),
        input_tokens,
        tools,
        tool_choice,
        last_user_text,
        after_tool_result: last_role == Some("tool"),
        called_tools: called_tools(messages),
        thinking: None,
        emit_reasoning: false,
        effort: None,
        output_schema: None,
        citable: Vec::new(),
        max_tokens: u32::try_from(max_tokens).ok(),
        temperature,
        stop_sequences,
        fingerprint: hasher.finalize().into(),
        tier: Tier::Standard,
        report_stop_sequence: false,
    };
    Ok(ChatRequest {
        prompt,
        stream,
        include_usage,
        parallel_tool_calls,
        named_tool,
        json_schema,
        seed,
    })
}

/// The tools the conversation's assistant turns called, in first-call order
/// (a forced tool choice after a tool result moves on to one not called yet).
fn called_tools(messages: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let calls = messages
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["tool_calls"].as_array())
        .flatten();
    for call in calls {
        if let Some(name) = call["function"]["name"].as_str() {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// Whether the user's last message names `tool`, as the generator decides.
fn names_tool(text: &str, tool: &ToolDef) -> bool {
    let name = tool.name.to_lowercase();
    text.contains(&name) || text.contains(&name.replace('_', " "))
}

/// Cuts text into pieces of about one token (4 bytes), on char boundaries.
fn token_pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::with_capacity(text.len() / 4 + 1);
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + 4).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(text[start..end].to_owned());
        start = end;
    }
    pieces
}

/// The answer to `request` from `seed`: one tool call, or several when
/// `parallel_tool_calls` allows and the user named several tools; JSON text when
/// `response_format` asks for it; otherwise text.
pub fn answer(request: &ChatRequest, seed: u64) -> Answer {
    let prompt = &request.prompt;
    let max = prompt.max_tokens.unwrap_or(1).max(1);
    let mut answer = generate::answer(prompt, seed, max);
    if answer.stop_reason == StopReason::ToolUse {
        let parallel = request.parallel_tool_calls
            && matches!(prompt.tool_choice, ToolChoice::Auto | ToolChoice::Any);
        if parallel {
            let called: Vec<String> = answer
                .blocks
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .collect();
            let text = prompt.last_user_text.to_lowercase();
            let others = prompt
                .tools
                .iter()
                .filter(|t| names_tool(&text, t) && !called.contains(&t.name));
            for (k, tool) in others.enumerate() {
                let mut one = prompt.clone();
                one.tool_choice = ToolChoice::Tool(tool.name.clone());
                let extra = generate::answer(&one, seed.wrapping_add(k as u64 + 1), max);
                if let Some(call) = extra
                    .blocks
                    .into_iter()
                    .find(|b| matches!(b, Block::ToolUse { .. }))
                {
                    answer.blocks.push(call);
                    answer.output_tokens = answer.output_tokens.saturating_add(extra.output_tokens);
                }
            }
        }
        return answer;
    }
    let Some(schema) = &request.json_schema else {
        return answer;
    };
    // The generator fills a schema for tool inputs; a tool forced on a copy of
    // the prompt gives the JSON the response format asks for.
    let mut forced = prompt.clone();
    forced.tools = vec![ToolDef {
        name: "response_format".into(),
        schema: schema.clone(),
    }];
    forced.tool_choice = ToolChoice::Tool("response_format".into());
    forced.after_tool_result = false;
    let value = generate::answer(&forced, seed, max)
        .blocks
        .into_iter()
        .find_map(|b| match b {
            Block::ToolUse { input, .. } => Some(input),
            _ => None,
        })
        .unwrap_or_else(|| json!({}));
    let mut pieces = token_pieces(&value.to_string());
    let stop_reason = if pieces.len() > max as usize {
        pieces.truncate(max as usize);
        StopReason::MaxTokens
    } else {
        StopReason::EndTurn
    };
    Answer {
        output_tokens: u32::try_from(pieces.len()).unwrap_or(u32::MAX),
        blocks: vec![Block::Text(pieces)],
        stop_reason,
        stop_sequence: None,
    }
}

/// Token counts of an answer, as `usage` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatUsage {
    /// All input tokens, cached ones included.
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Input tokens read from the server's prefix cache.
    pub cached_tokens: u32,
}

impl ChatUsage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// What every rendering of one answer shares.
#[derive(Debug, Clone)]
pub struct Meta {
    /// `chatcmpl-...`
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    pub usage: ChatUsage,
    /// Seeds the chunk sizes, so streams are reproducible.
    pub seed: u64,
}

/// The finish reason OpenAI reports: `tool_calls` unless a named `tool_choice`
/// forced the call (then `stop`), `length` at the token limit, `content_filter`
/// for a blocked answer.
pub fn finish_reason(answer: &Answer, request: &ChatRequest) -> &'static str {
    match answer.stop_reason {
        StopReason::ToolUse if request.named_tool => "stop",
        StopReason::ToolUse => "tool_calls",
        StopReason::MaxTokens => "length",
        StopReason::EndTurn | StopReason::StopSequence => "stop",
        // OpenAI's name for an answer a content filter replaced.
        StopReason::GuardrailIntervened => "content_filter",
    }
}

/// OpenAI-style call ids (`call_...`) in place of the generator's Converse ones.
fn call_id(id: &str) -> String {
    format!("call_{}", id.strip_prefix("tooluse_").unwrap_or(id))
}

/// A `chat.completion` body.
pub fn completion(answer: &Answer, request: &ChatRequest, meta: &Meta) -> Value {
    let text: String = answer
        .blocks
        .iter()
        .filter_map(|b| match b {
            Block::Text(p) => Some(p.concat()),
            _ => None,
        })
        .collect();
    let calls: Vec<Value> = answer
        .blocks
        .iter()
        .filter_map(|b| match b {
            Block::ToolUse { id, name, input } => Some(json!({
                "id": call_id(id),
                "type": "function",
                "function": {"name": name, "arguments": input.to_string()},
            })),
            _ => None,
        })
        .collect();
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            text.into()
        },
    );
    message.insert("refusal".into(), Value::Null);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), calls.into());
    }
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(answer, request),
        }],
        "usage": meta.usage.json(),
    })
}

/// The `chat.completion.chunk` events of an answer, each with the output tokens
/// generated before it is sent; the usage chunk last when `include_usage`.
/// The `data: [DONE]` line is the transport's.
pub fn chunks(answer: &Answer, request: &ChatRequest, meta: &Meta) -> Vec<(Value, u32)> {
    let mut rng = fastrand::Rng::with_seed(meta.seed ^ 0xc4a7);
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut c = json!({
            "id": meta.id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if request.include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut out = vec![(chunk(json!({"role": "assistant", "content": ""}), None), 0)];
    let mut call_index = 0usize;
    for block in &answer.blocks {
        match block {
            Block::Text(pieces) => {
                let mut i = 0;
                while i < pieces.len() {
                    let n = rng.usize(1..=3).min(pieces.len() - i);
                    out.push((
                        chunk(json!({"content": pieces[i..i + n].concat()}), None),
                        n as u32,
                    ));
                    i += n;
                }
            }
            Block::ToolUse { id, name, input } => {
                out.push((
                    chunk(
                        json!({"tool_calls": [{"index": call_index, "id": call_id(id), "type": "function",
                            "function": {"name": name, "arguments": ""}}]}),
                        None,
                    ),
                    0,
                ));
                let arguments = input.to_string();
                let parts = rng.usize(2..=4);
                let size = arguments.len().div_ceil(parts).max(1);
                let per = (tokens::text(&arguments) / parts as u32).max(1);
                let mut start = 0;
                while start < arguments.len() {
                    let mut end = (start + size).min(arguments.len());
                    while !arguments.is_char_boundary(end) {
                        end += 1;
                    }
                    out.push((
                        chunk(
                            json!({"tool_calls": [{"index": call_index, "function": {"arguments": &arguments[start..end]}}]}),
                            None,
                        ),
                        per,
                    ));
                    start = end;
                }
                call_index += 1;
            }
            // The chat face never enables thinking or citations.
            Block::Reasoning { .. } | Block::Cited { .. } => {}
        }
    }
    out.push((chunk(json!({}), Some(finish_reason(answer, request))), 0));
    if request.include_usage {
        out.push((
            json!({
                "id": meta.id,
                "object": "chat.completion.chunk",
                "created": meta.created,
                "model": meta.model,
                "choices": [],
                "usage": meta.usage.json(),
            }),
            0,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits<'static> = Limits {
        model_id: "m",
        context_tokens: 4096,
        stream_options: StreamOptions::Accept,
    };

    fn read_ok(body: Value) -> ChatRequest {
        read(&body, &LIMITS).unwrap()
    }

    fn read_err(body: Value) -> ChatError {
        read(&body, &LIMITS).unwrap_err()
    }

    fn meta(usage: ChatUsage) -> Meta {
        Meta {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
            usage,
            seed: 9,
        }
    }

    const WEATHER: &str = r#"{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#;
    const TIME: &str = r#"{"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}"#;

    fn tools() -> Value {
        json!([
            serde_json::from_str::<Value>(WEATHER).unwrap(),
            serde_json::from_str::<Value>(TIME).unwrap()
        ])
    }

    #[test]
    fn messages_of_every_role_and_shape_are_read() {
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake");
        let r = read_ok(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Really brief."}]},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            "tools": tools(),
            "max_tokens": 50, "temperature": 0, "stop": "END", "seed": 3,
        }));
        assert_eq!(r.prompt.units.len(), 6, "tools and five messages");
        assert!(r.prompt.after_tool_result);
        assert_eq!(r.prompt.max_tokens, Some(50));
        assert_eq!(r.prompt.stop_sequences, ["END"]);
        assert_eq!(r.prompt.tool_choice, ToolChoice::Auto);
        assert_eq!(r.seed, Some(3));
        assert!(r.prompt.input_tokens > tokens::IMAGE_TOKENS);
        assert!(!r.stream);
    }

    #[test]
    fn errors_name_the_parameter_in_openais_shape() {
        let e = read_err(json!({"model": "m"}));
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert_eq!(e.code, Some("missing_required_parameter"));
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");

        let e = read_err(json!({"messages": [{"role": "robot", "content": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        assert!(e.message.contains("'robot'"));

        let e = read_err(json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}));
        assert_eq!(e.code, Some("decimal_above_max_value"));

        let e = read_err(json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}));
        assert_eq!(e.code, Some("integer_below_min_value"));

        let e =
            read_err(json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}));
        assert_eq!(e.code, Some("context_length_exceeded"));

        let e = read_err(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}]}]}));
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].content[0].image_url.url")
        );
        assert!(e.message.contains("text/plain"));

        let e =
            read_err(json!({"messages": [{"role": "tool", "tool_call_id": "x", "content": "r"}]}));
        assert!(e.message.contains("preceeding message with 'tool_calls'"));

        let e = read_err(json!({"messages": [
            {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": "x"}]}));
        assert!(e.message.contains("c1"), "{}", e.message);
        let e = read_err(json!({"messages": [{"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c2", "function": {"name": "f", "arguments": "{}"}}]}]}));
        assert!(e.message.contains("c2"), "{}", e.message);

        let e = read_err(
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"}),
        );
        assert_eq!(e.param.as_deref(), Some("tool_choice"));

        let e = read_err(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": tools(),
            "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
        );
        assert!(e.message.contains("nope"));

        let e = read_err(
            json!({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}),
        );
        assert_eq!(e.param.as_deref(), Some("stream_options"));
    }

    #[test]
    fn stream_options_follow_the_server_mode() {
        let body = json!({"messages": [{"role": "user", "content": "x"}], "stream": true,
            "stream_options": {"include_usage": true}});
        assert!(read_ok(body.clone()).include_usage);
        let reject = Limits {
            stream_options: StreamOptions::Reject,
            ..LIMITS
        };
        let e = read(&body, &reject).unwrap_err();
        assert_eq!(
            e.message,
            "Unrecognized request argument supplied: stream_options"
        );
        let ignore = Limits {
            stream_options: StreamOptions::Ignore,
            ..LIMITS
        };
        let r = read(&body, &ignore).unwrap();
        assert!(r.stream && !r.include_usage);
    }

    #[test]
    fn the_same_request_gets_the_same_answer_whatever_the_transport() {
        let a = read_ok(
            json!({"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}),
        );
        let b = read_ok(
            json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 0,
            "stream": true, "stream_options": {"include_usage": true}}),
        );
        assert_eq!(a.prompt.fingerprint, b.prompt.fingerprint);
        let other = read(
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
            &Limits {
                model_id: "n",
                ..LIMITS
            },
        )
        .unwrap();
        assert_ne!(a.prompt.fingerprint, other.prompt.fingerprint);
    }

    #[test]
    fn named_tools_are_called_in_parallel() {
        let r = read_ok(json!({"messages": [{"role": "user",
            "content": "Use get_weather for Paris and get_time for Europe/Paris."}], "tools": tools()}));
        let a = answer(&r, 5);
        let names: Vec<_> = a
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::ToolUse { name, input, .. } => {
                    assert!(input.is_object());
                    Some(name.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(names, ["get_weather", "get_time"]);
        let body = completion(&a, &r, &meta(ChatUsage::default()));
        let calls = body["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap();
        assert_eq!(calls.len(), 2);
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

        let single = read_ok(json!({"messages": [{"role": "user",
            "content": "Use get_weather for Paris and get_time for Europe/Paris."}], "tools": tools(),
            "parallel_tool_calls": false}));
        let one = answer(&single, 5);
        assert_eq!(
            one.blocks
                .iter()
                .filter(|b| matches!(b, Block::ToolUse { .. }))
                .count(),
            1
        );

        let named = read_ok(
            json!({"messages": [{"role": "user", "content": "Hello"}], "tools": tools(),
            "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
        );
        let forced = answer(&named, 1);
        assert!(
            matches!(forced.blocks.last(), Some(Block::ToolUse { name, .. }) if name == "get_time")
        );
        assert_eq!(finish_reason(&forced, &named), "stop");
    }

    #[test]
    fn json_schema_answers_are_json_of_the_schema() {
        let r = read_ok(
            json!({"messages": [{"role": "user", "content": "A city please"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "city",
                "schema": {"type": "object", "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
                "required": ["name", "population"]}}}}),
        );
        let a = answer(&r, 2);
        let body = completion(&a, &r, &meta(ChatUsage::default()));
        let text = body["choices"][0]["message"]["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        assert!(v["name"].is_string() && v["population"].is_i64(), "{v}");
        assert_eq!(a.output_tokens, tokens::text(text));
    }

    #[test]
    fn chunks_rebuild_the_completion() {
        let r = read_ok(json!({"messages": [{"role": "user",
            "content": "Use get_weather for Paris and get_time for Europe/Paris."}], "tools": tools(),
            "stream": true, "stream_options": {"include_usage": true}}));
        let a = answer(&r, 11);
        let usage = ChatUsage {
            prompt_tokens: 20,
            completion_tokens: a.output_tokens,
            cached_tokens: 16,
        };
        let whole = completion(&a, &r, &meta(usage));
        let chunks = chunks(&a, &r, &meta(usage));
        assert_eq!(chunks[0].0["choices"][0]["delta"]["role"], "assistant");
        let mut content = String::new();
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut finish = Value::Null;
        for (c, _) in &chunks[..chunks.len() - 1] {
            assert!(c["usage"].is_null() && c.as_object().unwrap().contains_key("usage"));
            let choice = &c["choices"][0];
            content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let i = call["index"].as_u64().unwrap() as usize;
                if i == calls.len() {
                    calls.push((
                        call["id"].as_str().unwrap().into(),
                        call["function"]["name"].as_str().unwrap().into(),
                        String::new(),
                    ));
                }
                calls[i]
                    .2
                    .push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
            if !choice["finish_reason"].is_null() {
                finish = choice["finish_reason"].clone();
            }
        }
        let message = &whole["choices"][0]["message"];
        assert_eq!(content, message["content"].as_str().unwrap_or(""));
        let expected: Vec<(String, String, String)> = message["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().into(),
                    c["function"]["name"].as_str().unwrap().into(),
                    c["function"]["arguments"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(calls, expected);
        assert_eq!(finish, whole["choices"][0]["finish_reason"]);
        let last = &chunks.last().unwrap().0;
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"], whole["usage"]);
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 16);
    }

    #[test]
    fn max_tokens_gives_length() {
        let r = read_ok(
            json!({"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 3}),
        );
        let a = answer(&r, 1);
        assert_eq!(a.output_tokens, 3);
        assert_eq!(finish_reason(&a, &r), "length");
    }
}
