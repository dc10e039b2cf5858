//! `POST /v1/responses`: OpenAI's Responses API as another face of the Chat
//! Completions translator. A Responses request is rewritten as the Chat
//! Completions request that means the same thing, which
//! [`super::translate::request`] turns into Converse (so both APIs, and a native
//! Converse client, share response-cache entries and every mapping: structured
//! output, reasoning effort, tools, documents); the Chat Completions answer is
//! then rewritten as a Response object with its output items.
//!
//! Done: string and item-list input (messages with `input_text`, `input_image`,
//! `input_file`; `function_call` / `function_call_output`; `reasoning` items
//! carrying their signature as `encrypted_content`), `instructions`, function
//! tools, `tool_choice`, `parallel_tool_calls`, `max_output_tokens`,
//! `temperature`, `top_p`, `text.format`, `reasoning.effort`, `metadata`, usage
//! with `input_tokens_details.cached_tokens`.
//! `stream: true` is the Responses event sequence ([`stream`]).
//! Conversation state: `store` (default true) keeps the answer, with its
//! conversation, in the tenant's [`crate::responses_store`];
//! `previous_response_id` continues one (its items before `input`, its
//! `instructions` not carried over); [`stored`] serves `GET`/`DELETE
//! /v1/responses/{id}` and `input_items`. Errors the Chat Completions
//! translator raises name the Responses field they are about ([`Origin`]).

pub mod stored;
pub mod stream;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::Response;
use bedrock_wire::operation::Operation;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use tokio::time::Instant;

use super::{error_response, now_secs, translate, STRUCTURED_OUTPUT_HEADER};
use crate::answer::Answer;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::ingress::{
    converse_call, converse_json, handled, json_answer, parse_json, receive, route_translated, run,
    sse_answer, sse_body, Finish,
};
use crate::responses_store::Stored;
use crate::state::AppState;

fn invalid(param: &str, message: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorKind::Validation, Side::Client, message).with_param(param)
}

/// Members accepted and not translated: they change nothing Bedrock does
/// (`store` and `previous_response_id` are the proxy's own business, in
/// [`serve`]).
const IGNORED: &[&str] = &[
    "store",
    "previous_response_id",
    "user",
    "safety_identifier",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "truncation",
    "include",
    "background",
];

/// A Responses request rewritten as a Chat Completions request, with what the
/// Response object echoes back.
#[derive(Debug, Clone, PartialEq)]
pub struct AsChat {
    pub chat: Value,
    /// The request members a Response repeats (`instructions`, `tools`, ...).
    pub echo: Map<String, Value>,
    /// Where each Chat Completions message came from.
    origins: Vec<Origin>,
}

/// One input message's content as Chat Completions parts.
fn content_parts(content: &Value, param: &str) -> Result<Value, ProxyError> {
    let parts = match content {
        Value::String(s) => return Ok(Value::String(s.clone())),
        Value::Array(parts) => parts,
        _ => {
            return Err(invalid(
                param,
                "content must be a string or a list of parts",
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let param = format!("{param}[{i}]");
        let converted = match part["type"].as_str() {
            Some("input_text" | "output_text" | "text") => {
                json!({ "type": "text", "text": part["text"].as_str().unwrap_or("") })
            }
            Some("input_image") => {
                let url = part["image_url"].as_str().ok_or_else(|| {
                    invalid(
                        &format!("{param}.image_url"),
                        "input_image needs image_url (file_id is not supported)",
                    )
                })?;
                json!({ "type": "image_url", "image_url": { "url": url } })
            }
            Some("input_file") => {
                let data = part["file_data"].as_str().ok_or_else(|| {
                    invalid(
                        &format!("{param}.file_data"),
                        "input_file needs file_data (file_id and file_url are not supported)",
                    )
                })?;
                let mut file = json!({ "file_data": data });
                if let Some(name) = part.get("filename") {
                    file["filename"] = name.clone();
                }
                json!({ "type": "file", "file": file })
            }
            Some("refusal") => {
                json!({ "type": "text", "text": part["refusal"].as_str().unwrap_or("") })
            }
            other => {
                return Err(invalid(
                    &format!("{param}.type"),
                    format!("content part type {other:?} is not supported"),
                ))
            }
        };
        out.push(converted);
    }
    Ok(Value::Array(out))
}

/// Where a Chat Completions message came from in the Responses request, so
/// that a translator error about it names the Responses field.
#[derive(Debug, Clone, PartialEq, Default)]
struct Origin {
    /// The item's param (`input[3]`, `input`, `instructions`,
    /// `previous_response_id`).
    item: String,
    /// The item of each of the message's tool calls.
    calls: Vec<String>,
    /// The reasoning item of each of its thinking blocks.
    thinking: Vec<String>,
    /// A function call's output, whose Chat Completions `content` is `output`.
    output: bool,
}

/// The Chat Completions messages of a conversation, with their origins.
#[derive(Debug, Default)]
struct Conversation {
    messages: Vec<Value>,
    origins: Vec<Origin>,
    /// Reasoning waiting for the next assistant turn, and its items.
    thinking: Vec<Value>,
    thinking_from: Vec<String>,
}

impl Conversation {
    fn push(&mut self, message: Value, item: String) {
        self.messages.push(message);
        self.origins.push(Origin {
            item,
            ..Origin::default()
        });
    }

    /// Hands the waiting reasoning to the assistant message just pushed.
    fn attach_thinking(&mut self) {
        if self.thinking.is_empty() {
            return;
        }
        if let (Some(message), Some(origin)) = (self.messages.last_mut(), self.origins.last_mut()) {
            message["thinking_blocks"] = Value::Array(std::mem::take(&mut self.thinking));
            origin.thinking = std::mem::take(&mut self.thinking_from);
        }
    }

    /// The input items as Chat Completions messages: function calls join the
    /// assistant turn they belong to, reasoning items ride on the next
    /// assistant turn as `thinking_blocks` (their signature is
    /// `encrypted_content`). `param(i)` names item `i` in errors.
    fn items(
        &mut self,
        items: &[Value],
        param: &dyn Fn(usize) -> String,
    ) -> Result<(), ProxyError> {
        for (i, item) in items.iter().enumerate() {
            let param = param(i);
            match item_type(item) {
                Some("message") => {
                    let role = item["role"].as_str().ok_or_else(|| {
                        invalid(&format!("{param}.role"), "a message item needs a role")
                    })?;
                    if !matches!(role, "user" | "assistant" | "system" | "developer") {
                        return Err(invalid(
                            &format!("{param}.role"),
                            format!("role `{role}` is not supported"),
                        ));
                    }
                    let content = content_parts(
                        item.get("content").unwrap_or(&Value::Null),
                        &format!("{param}.content"),
                    )?;
                    self.push(json!({ "role": role, "content": content }), param);
                    if role == "assistant" {
                        self.attach_thinking();
                    }
                }
                Some("function_call") => {
                    let call_id = item["call_id"].as_str().ok_or_else(|| {
                        invalid(&format!("{param}.call_id"), "a function_call needs call_id")
                    })?;
                    let call = json!({
                        "id": call_id,
                        "type": "function",
                        "function": { "name": item["name"], "arguments": item["arguments"] },
                    });
                    // Calls made in the same turn as a message, or each other,
                    // are one assistant turn.
                    let joins = self.thinking.is_empty()
                        && self.messages.last().is_some_and(|m| m["role"] == "assistant");
                    if !joins {
                        self.push(
                            json!({ "role": "assistant", "content": null }),
                            param.clone(),
                        );
                        self.attach_thinking();
                    }
                    if let (Some(last), Some(origin)) =
                        (self.messages.last_mut(), self.origins.last_mut())
                    {
                        match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                            Some(calls) => calls.push(call),
                            None => last["tool_calls"] = json!([call]),
                        }
                        origin.calls.push(param);
                    }
                }
                Some("function_call_output") => {
                    let call_id = item["call_id"].as_str().ok_or_else(|| {
                        invalid(
                            &format!("{param}.call_id"),
                            "a function_call_output needs call_id",
                        )
                    })?;
                    let output = match &item["output"] {
                        Value::String(s) => Value::String(s.clone()),
                        other @ Value::Array(_) => {
                            content_parts(other, &format!("{param}.output"))?
                        }
                        other => Value::String(other.to_string()),
                    };
                    self.push(
                        json!({ "role": "tool", "tool_call_id": call_id, "content": output }),
                        param,
                    );
                    if let Some(origin) = self.origins.last_mut() {
                        origin.output = true;
                    }
                }
                Some("reasoning") => {
                    let text: String = item["summary"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s["text"].as_str())
                        .collect();
                    // Without its signature Bedrock will not take the reasoning
                    // back; a reasoning item without one is left out.
                    if let Some(signature) = item["encrypted_content"].as_str() {
                        self.thinking.push(
                            json!({ "type": "thinking", "thinking": text, "signature": signature }),
                        );
                        self.thinking_from.push(param);
                    }
                }
                Some("item_reference") => {
                    return Err(invalid(
                        &format!("{param}.type"),
                        "item_reference is not supported: continue a stored conversation with previous_response_id",
                    ))
                }
                other => {
                    return Err(invalid(
                        &format!("{param}.type"),
                        format!("input item type {other:?} is not supported"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// A Chat Completions param (from the translator) as the Responses field
    /// it came from.
    fn responses_param(&self, param: &str) -> String {
        let Some(rest) = param.strip_prefix("messages[") else {
            return top_level_param(param);
        };
        let Some((n, rest)) = rest.split_once(']') else {
            return "input".into();
        };
        let Some(origin) = n.parse::<usize>().ok().and_then(|n| self.origins.get(n)) else {
            return "input".into();
        };
        // Fields of a stored item, or of a string, have no finer name.
        if matches!(
            origin.item.as_str(),
            "previous_response_id" | "input" | "instructions"
        ) {
            return origin.item.clone();
        }
        let indexed = |rest: &str, key: &str, items: &[String]| -> Option<String> {
            let (k, tail) = rest.strip_prefix(key)?.split_once(']')?;
            let item = items.get(k.parse::<usize>().ok()?)?;
            Some(format!("{item}{tail}"))
        };
        if let Some(call) = indexed(rest, ".tool_calls[", &origin.calls) {
            return call.replacen(".function.", ".", 1);
        }
        if let Some(reasoning) = indexed(rest, ".thinking_blocks[", &origin.thinking) {
            return reasoning.replacen(".signature", ".encrypted_content", 1);
        }
        match rest.strip_prefix(".content") {
            Some(tail) if origin.output => format!("{}.output{tail}", origin.item),
            _ => format!("{}{rest}", origin.item),
        }
    }
}

/// An item's type; a message may leave it out.
fn item_type(item: &Value) -> Option<&str> {
    item["type"]
        .as_str()
        .or_else(|| item.get("role").map(|_| "message"))
}

/// A Chat Completions member's param as the Responses field it came from.
fn top_level_param(param: &str) -> String {
    let renamed = [
        ("messages", "input"),
        ("max_completion_tokens", "max_output_tokens"),
        ("max_tokens", "max_output_tokens"),
        ("response_format.json_schema.", "text.format."),
        ("response_format", "text.format"),
        ("reasoning_effort", "reasoning.effort"),
        ("tool_choice", "tool_choice"),
    ];
    for (chat, responses) in renamed {
        if let Some(tail) = param.strip_prefix(chat) {
            if chat == "tool_choice" {
                return responses.into();
            }
            return format!("{responses}{tail}");
        }
    }
    if param.starts_with("tools[") {
        return param
            .replacen(".function.", ".", 1)
            .replacen(".function", "", 1);
    }
    param.to_owned()
}

/// Responses function tools as Chat Completions tools; built-in tools have no
/// Bedrock counterpart.
fn tools(tools: &Value) -> Result<Value, ProxyError> {
    let list = tools
        .as_array()
        .ok_or_else(|| invalid("tools", "tools must be a list"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        match tool["type"].as_str() {
            Some("function") => {
                let mut function = Map::new();
                for key in ["name", "description", "parameters", "strict"] {
                    if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                        function.insert(key.into(), v.clone());
                    }
                }
                out.push(json!({ "type": "function", "function": function }));
            }
            other => {
                return Err(invalid(
                    &format!("tools[{i}].type"),
                    format!(
                        "tool type {} is not supported: this proxy's Bedrock backend runs function tools only",
                        other.map_or_else(|| "(missing)".to_owned(), |o| format!("`{o}`"))
                    ),
                ))
            }
        }
    }
    Ok(Value::Array(out))
}

fn tool_choice(choice: &Value) -> Result<Value, ProxyError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            Ok(json!({ "type": "function", "function": { "name": o.get("name") } }))
        }
        _ => Err(invalid(
            "tool_choice",
            "tool_choice must be auto, none, required or a function",
        )),
    }
}

fn text_format(text: &Value) -> Result<Option<Value>, ProxyError> {
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({ "type": "json_object" }))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(
                json!({ "type": "json_schema", "json_schema": schema }),
            ))
        }
        other => Err(invalid(
            "text.format.type",
            format!("text format {other:?} is not supported"),
        )),
    }
}

/// A Responses request as the Chat Completions request that means the same,
/// continuing `prior` (a stored conversation's items, from
/// `previous_response_id`): `instructions`, then `prior`, then `input`.
pub fn as_chat(body: &Value, prior: &[Value]) -> Result<AsChat, ProxyError> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("body", "the request body must be a JSON object"))?;
    let mut chat = Map::new();
    let mut echo = Map::new();
    let mut conversation = Conversation::default();
    if let Some(instructions) = obj.get("instructions").filter(|v| !v.is_null()) {
        let text = instructions
            .as_str()
            .ok_or_else(|| invalid("instructions", "instructions must be a string"))?;
        conversation.push(
            json!({ "role": "system", "content": text }),
            "instructions".into(),
        );
    }
    // Stored items passed every check when they were stored; should one not
    // pass now, the stored conversation is what is wrong.
    conversation
        .items(prior, &|_| "previous_response_id".to_owned())
        .map_err(|e| e.with_param("previous_response_id"))?;
    for (key, value) in obj {
        match key.as_str() {
            "model" => {
                chat.insert("model".into(), value.clone());
            }
            "input" => match value {
                Value::String(s) => conversation.push(
                    json!({ "role": "user", "content": s }),
                    "input".into(),
                ),
                Value::Array(items) => {
                    conversation.items(items, &|i| format!("input[{i}]"))?;
                }
                _ => {
                    return Err(invalid(
                        "input",
                        "input must be a string or a list of items",
                    ))
                }
            },
            "instructions" => {}
            "tools" => {
                chat.insert("tools".into(), tools(value)?);
            }
            "tool_choice" => {
                chat.insert("tool_choice".into(), tool_choice(value)?);
            }
            "parallel_tool_calls" | "temperature" | "top_p" | "metadata" => {
                chat.insert(key.clone(), value.clone());
            }
            "max_output_tokens" => {
                chat.insert("max_completion_tokens".into(), value.clone());
            }
            "text" => {
                if let Some(format) = text_format(value)? {
                    chat.insert("response_format".into(), format);
                }
            }
            "reasoning" => {
                if let Some(effort) = value.get("effort").filter(|v| !v.is_null()) {
                    chat.insert("reasoning_effort".into(), effort.clone());
                }
            }
            "stream" => {
                chat.insert("stream".into(), value.clone());
            }
            "store" if !value.is_null() && !value.is_boolean() => {
                return Err(invalid("store", "store must be true or false"))
            }
            "previous_response_id" if !value.is_null() && !value.is_string() => {
                return Err(invalid(
                    "previous_response_id",
                    "previous_response_id must be a string",
                ))
            }
            "conversation" if !value.is_null() => {
                return Err(invalid(
                    key,
                    "the Conversations API is not supported: continue a stored response with previous_response_id",
                ))
            }
            k if IGNORED.contains(&k) || value.is_null() => {}
            k => {
                return Err(invalid(
                    k,
                    format!("`{k}` is not supported by this proxy's Bedrock backend"),
                ))
            }
        }
        if !matches!(key.as_str(), "input" | "model" | "stream") {
            echo.insert(key.clone(), value.clone());
        }
    }
    if obj.get("input").is_none() {
        return Err(invalid("input", "Missing required parameter: 'input'."));
    }
    chat.insert("messages".into(), Value::Array(conversation.messages));
    Ok(AsChat {
        chat: Value::Object(chat),
        echo,
        origins: conversation.origins,
    })
}

impl AsChat {
    /// A translator error about the Chat Completions request, naming the
    /// Responses field it came from (`messages[3].content` -> `input[2].content`).
    pub fn responses_error(&self, mut e: ProxyError) -> ProxyError {
        let Some(param) = e.param.take() else {
            return e;
        };
        let conversation = Conversation {
            origins: self.origins.clone(),
            ..Conversation::default()
        };
        let renamed = conversation.responses_param(&param);
        if let Some(rest) = e.message.strip_prefix(&format!("{param}:")) {
            e.message = format!("{renamed}:{rest}");
        }
        e.with_param(renamed)
    }
}

/// The request's input as the input items `input_items` lists: a string is a
/// user message, messages get their `type` and parts, and every item an id
/// (`{prefix}_{response id}_{n}`) that pagination can name.
pub fn input_items(input: &Value, id: &str) -> Vec<Value> {
    let items = match input {
        Value::String(s) => vec![json!({ "role": "user", "content": s })],
        Value::Array(items) => items.clone(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            let kind = item_type(&item).unwrap_or("item").to_owned();
            if kind == "message" {
                let text_type = if item["role"] == "assistant" {
                    "output_text"
                } else {
                    "input_text"
                };
                if let Some(text) = item["content"].as_str().map(str::to_owned) {
                    item["content"] = json!([{ "type": text_type, "text": text }]);
                }
                item["type"] = json!("message");
            }
            if matches!(
                kind.as_str(),
                "message" | "function_call" | "function_call_output"
            ) && item.get("status").is_none_or(Value::is_null)
            {
                item["status"] = json!("completed");
            }
            if item.get("id").is_none_or(Value::is_null) {
                let prefix = match kind.as_str() {
                    "message" => "msg",
                    "function_call" => "fc",
                    "function_call_output" => "fco",
                    "reasoning" => "rs",
                    _ => "item",
                };
                item["id"] = json!(format!("{prefix}_{id}_in{i}"));
            }
            item
        })
        .collect()
}

/// A stored response's conversation, as the items a response continuing it
/// starts from: its input items, then its output.
pub fn conversation(stored: &Stored) -> Vec<Value> {
    let mut items = stored.input_items.clone();
    items.extend(
        stored.response["output"]
            .as_array()
            .into_iter()
            .flatten()
            .cloned(),
    );
    items
}

/// The Response object for a Chat Completions answer.
pub fn response(completion: &Value, echo: &Map<String, Value>, id: &str, created: u64) -> Value {
    let message = &completion["choices"][0]["message"];
    let mut output = Vec::new();
    let blocks = message["thinking_blocks"].as_array();
    for (i, block) in blocks.into_iter().flatten().enumerate() {
        if block["type"] == "thinking" {
            output.push(json!({
                "type": "reasoning",
                "id": format!("rs_{id}_{i}"),
                "summary": [{ "type": "summary_text", "text": block["thinking"] }],
                "encrypted_content": block["signature"],
            }));
        }
    }
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(json!({
            "type": "message",
            "id": format!("msg_{id}"),
            "status": "completed",
            "role": "assistant",
            "content": [{ "type": "output_text", "text": text, "annotations": [] }],
        }));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        output.push(json!({
            "type": "function_call",
            "id": format!("fc_{}", call["id"].as_str().unwrap_or_default()),
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
            "status": "completed",
        }));
    }
    let finish = completion["choices"][0]["finish_reason"].as_str();
    let (status, incomplete) = match finish {
        Some("length") => ("incomplete", json!({ "reason": "max_output_tokens" })),
        Some("content_filter") => ("incomplete", json!({ "reason": "content_filter" })),
        _ => ("completed", Value::Null),
    };
    let u = &completion["usage"];
    let usage = json!({
        "input_tokens": u["prompt_tokens"].as_u64().unwrap_or(0),
        "input_tokens_details": {
            "cached_tokens": u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
        },
        "output_tokens": u["completion_tokens"].as_u64().unwrap_or(0),
        "output_tokens_details": {
            "reasoning_tokens": u["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap_or(0),
        },
        "total_tokens": u["total_tokens"].as_u64().unwrap_or(0),
    });
    let get = |key: &str, default: Value| echo.get(key).cloned().unwrap_or(default);
    let format = echo
        .get("text")
        .and_then(|t| t.get("format"))
        .cloned()
        .unwrap_or_else(|| json!({ "type": "text" }));
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": get("instructions", Value::Null),
        "max_output_tokens": get("max_output_tokens", Value::Null),
        "model": completion["model"],
        "output": output,
        "parallel_tool_calls": get("parallel_tool_calls", Value::Bool(true)),
        "previous_response_id": get("previous_response_id", Value::Null),
        "reasoning": { "effort": echo.get("reasoning").and_then(|r| r.get("effort")).cloned(), "summary": null },
        "store": get("store", Value::Bool(true)),
        "temperature": get("temperature", Value::Null),
        "text": { "format": format },
        "tool_choice": get("tool_choice", json!("auto")),
        "tools": get("tools", json!([])),
        "top_p": get("top_p", Value::Null),
        "truncation": "disabled",
        "usage": usage,
        "user": get("user", Value::Null),
        "metadata": get("metadata", json!({})),
    })
}

/// `POST /v1/responses`.
pub async fn create(State(state): State<AppState>, request: Request) -> Response {
    let finish = Finish::new(bedrock_wire::new_shared_request_id(), Instant::now());
    handled(
        finish,
        request,
        "responses",
        error_response,
        async |f, r| serve(&state, f, r).await,
    )
    .await
}

async fn serve(
    state: &AppState,
    finish: &mut Finish,
    request: Request,
) -> Result<Response, ProxyError> {
    let rt = state.runtime();
    let (parts, body) = request.into_parts();
    let (body, principal) = receive(state, &rt, &parts, body, finish).await?;
    let json = parse_json(&body, rt.config.limits.max_json_depth)?;
    // What this request continues: only the caller's tenant's own responses.
    let previous = match json.get("previous_response_id").and_then(Value::as_str) {
        Some(previous) => match state.responses.get(&principal.tenant, previous).await {
            Some(stored) => Some((previous.to_owned(), stored)),
            None => {
                return Err(ProxyError::new(
                    ErrorKind::NotFound,
                    Side::Client,
                    format!("Previous response with id '{previous}' not found."),
                )
                .with_param("previous_response_id"))
            }
        },
        None => None,
    };
    let prior = previous
        .as_ref()
        .map(|(_, stored)| conversation(stored))
        .unwrap_or_default();
    let mut as_chat = as_chat(&json, &prior)?;
    let store = json.get("store").and_then(Value::as_bool).unwrap_or(true);
    as_chat.echo.insert("store".into(), Value::Bool(store));
    as_chat.echo.insert(
        "previous_response_id".into(),
        previous.as_ref().map_or(Value::Null, |(id, _)| json!(id)),
    );
    let model = translate::model(&as_chat.chat).map_err(|e| as_chat.responses_error(e))?;
    let (routed, features) = route_translated(&rt, &principal, finish, &model, |model| {
        format!("The model `{model}` does not exist or you do not have access to it.")
    })?;
    let t = translate::request(&as_chat.chat, &features).map_err(|e| as_chat.responses_error(e))?;
    let op = if t.stream {
        Operation::ConverseStream
    } else {
        Operation::Converse
    };
    let tenant = principal.tenant.clone();
    let call = converse_call(principal, routed, finish, t.converse, op);
    let id = format!("resp_{}", finish.request_id);
    let created = now_secs();
    let structured = t.structured.as_ref();
    // The conversation a stored response keeps: what it continued, then its input.
    let mut conversation_items = prior;
    conversation_items.extend(input_items(&json["input"], &id));
    let mut response = match run(state, &rt, call, &parts.headers, finish).await? {
        Answer::Whole { body, summary, .. } => {
            let converse = converse_json(&body)?;
            let completion = translate::response(&converse, &t.model, &id, created, structured);
            let answer = response(&completion, &as_chat.echo, &id, created);
            if store {
                let stored = Stored {
                    response: answer.clone(),
                    input_items: conversation_items,
                };
                state.responses.put(&tenant, &id, stored).await;
            }
            json_answer(finish, &answer, &summary)
        }
        Answer::Stream { frames, .. } => {
            let events = stream::ResponseEvents::new(
                translate::ChunkWriter::new(id.clone(), t.model.clone(), created, true)
                    .structured(structured),
                id.clone(),
                created,
                t.model.clone(),
                as_chat.echo,
            );
            if store {
                stored_when_complete(
                    state,
                    finish,
                    frames,
                    events,
                    tenant,
                    id,
                    conversation_items,
                )
            } else {
                sse_answer(finish, frames, events)
            }
        }
    };
    if let Some(s) = structured {
        response.headers_mut().insert(
            STRUCTURED_OUTPUT_HEADER,
            HeaderValue::from_static(s.label()),
        );
    }
    Ok(response)
}

/// The stream of a response to store: once it completes, the Response is
/// stored before the chunk carrying `response.completed` goes out, so a client
/// that reads the event can retrieve or continue it at once. A failed, cut or
/// abandoned stream stores nothing.
fn stored_when_complete(
    state: &AppState,
    finish: &Finish,
    frames: crate::stream::FrameStream,
    events: stream::ResponseEvents,
    tenant: Arc<str>,
    id: String,
    input_items: Vec<Value>,
) -> Response {
    let completed: stream::Completed = Arc::default();
    let events = events.on_complete(completed.clone());
    let body = crate::stream::to_sse_client(frames, finish.stream_observer(), events);
    let store = state.responses.clone();
    let mut input_items = Some(input_items);
    let body = body.then(move |chunk| {
        let response = completed.lock().ok().and_then(|mut c| c.take());
        let stored = response.and_then(|response| {
            Some(Stored {
                response,
                input_items: input_items.take()?,
            })
        });
        let (store, tenant, id) = (store.clone(), tenant.clone(), id.clone());
        async move {
            if let Some(stored) = stored {
                store.put(&tenant, &id, stored).await;
            }
            chunk
        }
    });
    sse_body(finish, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_input_with_instructions_is_the_chat_request_that_means_the_same() {
        let r = as_chat(&json!({
            "model": "haiku", "input": "Hi", "instructions": "Be brief.",
            "max_output_tokens": 50, "temperature": 0,
            "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": true}},
            "reasoning": {"effort": "low"}, "store": true,
        }), &[])
        .unwrap();
        assert_eq!(
            r.chat,
            json!({
                "model": "haiku",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                "max_completion_tokens": 50, "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": true}},
                "reasoning_effort": "low",
            })
        );
    }

    #[test]
    fn function_calls_join_one_assistant_turn_and_outputs_are_tool_messages() {
        let r = as_chat(&json!({
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris and Rome?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}], "encrypted_content": "sig"},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"city\":\"Rome\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": "rain"},
            ],
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "w"},
        }), &[])
        .unwrap();
        let messages = r.chat["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[1]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(
            messages[1]["thinking_blocks"],
            json!([{"type": "thinking", "thinking": "think", "signature": "sig"}])
        );
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "c2", "content": "rain"})
        );
        assert_eq!(
            r.chat["tools"],
            json!([{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}])
        );
        assert_eq!(
            r.chat["tool_choice"],
            json!({"type": "function", "function": {"name": "w"}})
        );
    }

    #[test]
    fn what_bedrock_cannot_do_is_refused_by_name() {
        let param = |body: Value| as_chat(&body, &[]).unwrap_err().param;
        assert_eq!(
            param(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}))
                .as_deref(),
            Some("tools[0].type")
        );
        assert_eq!(
            param(json!({"model": "m", "input": "x", "previous_response_id": 7})).as_deref(),
            Some("previous_response_id")
        );
        assert_eq!(
            param(json!({"model": "m", "input": "x", "store": "yes"})).as_deref(),
            Some("store")
        );
        assert_eq!(
            param(json!({"model": "m", "input": "x", "conversation": "conv_1"})).as_deref(),
            Some("conversation")
        );
        assert_eq!(param(json!({"model": "m"})).as_deref(), Some("input"));
        assert_eq!(
            param(json!({"model": "m", "input": "x", "frobnicate": 1})).as_deref(),
            Some("frobnicate")
        );
    }

    #[test]
    fn a_completion_becomes_output_items_and_usage() {
        let completion = json!({
            "model": "haiku",
            "choices": [{"message": {"role": "assistant", "content": "Checking.",
                "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 1510, "completion_tokens": 5, "total_tokens": 1515,
                "prompt_tokens_details": {"cached_tokens": 1200}},
        });
        let r = response(&completion, &Map::new(), "resp_x", 7);
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"][0]["content"][0]["text"], "Checking.");
        assert_eq!(r["output"][1]["type"], "function_call");
        assert_eq!(r["output"][1]["call_id"], "t1");
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 1200);
        assert_eq!(r["usage"]["total_tokens"], 1515);
    }

    #[test]
    fn a_continued_conversation_comes_after_the_instructions_and_before_the_input() {
        let stored = Stored {
            response: json!({"output": [
                {"type": "function_call", "id": "fc_t1", "call_id": "t1", "name": "w", "arguments": "{}"},
            ]}),
            input_items: input_items(&json!("Weather in Paris?"), "resp_a"),
        };
        assert_eq!(
            stored.input_items,
            [
                json!({"type": "message", "id": "msg_resp_a_in0", "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": "Weather in Paris?"}]})
            ]
        );
        let r = as_chat(
            &json!({"model": "m", "instructions": "Be brief.", "input": [
                {"type": "function_call_output", "call_id": "t1", "output": "sunny"}]}),
            &conversation(&stored),
        )
        .unwrap();
        let roles: Vec<&str> = r.chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool"]);
        assert_eq!(r.chat["messages"][2]["tool_calls"][0]["id"], "t1");
    }

    #[test]
    fn translator_errors_name_the_responses_fields() {
        let features = crate::ingress::converse::Features::of("anthropic.claude-3-5-haiku", None);
        let param = |body: Value| {
            let r = as_chat(&body, &[]).unwrap();
            let e = translate::request(&r.chat, &features).map_err(|e| r.responses_error(e));
            let e = e.unwrap_err();
            let param = e.param.clone().unwrap();
            assert!(e.message.starts_with(&format!("{param}:")), "{}", e.message);
            param
        };
        let image = json!({"type": "input_image", "image_url": "https://example.com/cat.png"});
        assert_eq!(
            param(json!({"model": "m", "instructions": "x", "input": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": [{"type": "input_text", "text": "c"}, image]},
            ]})),
            "input[2].content[1].image_url"
        );
        assert_eq!(
            param(json!({"model": "m", "input": [
                {"role": "user", "content": "a"},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "not json"},
            ]})),
            "input[2].arguments"
        );
        assert_eq!(
            param(json!({"model": "m", "input": "x", "temperature": 2})),
            "temperature"
        );
        assert_eq!(
            param(json!({"model": "m", "input": "x", "max_output_tokens": 0})),
            "max_output_tokens"
        );
    }
}
