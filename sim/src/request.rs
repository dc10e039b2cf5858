//! Reading a request body: Bedrock's validation rules, then one [`Prompt`] whatever
//! the format (Converse, Anthropic Messages or Llama through InvokeModel), with the
//! prompt cut into units in cache order (tools, system, messages) so the
//! prompt-cache model can hash each prefix. The rules of extended thinking,
//! structured output and documents live in their own modules; this one applies
//! them in request order.

use bedrock_wire::canonical::{self, Markers};
use bedrock_wire::tokens;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use bedrock_wire::operation::Operation;

use crate::catalog::{Family, Model, MAX_CACHE_POINTS};
use crate::documents::{self, Citable};
use crate::error::SimError;
use crate::reasoning::{self, Api, Effort, Part, Thinking, Turn};
use crate::structured;

/// The body format of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Converse,
    Anthropic,
    Llama,
}

pub use bedrock_wire::tier::LatencyTier as Tier;

/// Reads `standard` / `optimized`; `field` names the member in the error.
pub fn parse_tier(value: &str, field: &str) -> Result<Tier, SimError> {
    Tier::parse(value).ok_or_else(|| {
        constraint(
            value,
            field,
            "Member must satisfy enum value set: [standard, optimized]",
        )
    })
}

/// How the caller constrained tool use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    Any,
    Tool(String),
    None,
}

/// A tool the model may call.
#[derive(Debug, Clone)]
pub struct ToolDef {
    pub name: String,
    /// The JSON schema of its input.
    pub schema: Value,
}

/// One piece of the prompt in cache order. `hash` covers it and all before it.
#[derive(Debug, Clone)]
pub struct Unit {
    pub hash: [u8; 32],
    /// Input tokens up to and including this unit.
    pub tokens_end: u32,
}

/// A cache checkpoint: the prefix that ends with unit `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub unit: usize,
    pub ttl_1h: bool,
}

/// A request, read and validated.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub format: Format,
    pub units: Vec<Unit>,
    pub checkpoints: Vec<Checkpoint>,
    pub input_tokens: u32,
    pub tools: Vec<ToolDef>,
    pub tool_choice: ToolChoice,
    pub last_user_text: String,
    pub after_tool_result: bool,
    /// Tools the conversation has called so far.
    pub called_tools: Vec<String>,
    /// Extended thinking, when enabled.
    pub thinking: Option<Thinking>,
    /// Whether this answer starts with reasoning (not after a tool result unless
    /// thinking is interleaved).
    pub emit_reasoning: bool,
    pub effort: Option<Effort>,
    /// The JSON schema the answer's text follows.
    pub output_schema: Option<Value>,
    /// Documents whose answer cites them.
    pub citable: Vec<Citable>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub stop_sequences: Vec<String>,
    /// Hash of everything that decides the answer (cache markers and
    /// performance settings excluded): the seed of deterministic output.
    pub fingerprint: [u8; 32],
    /// The tier the caller asked for.
    pub tier: Tier,
    /// Converse asked for `additionalModelResponseFieldPaths: ["/stop_sequence"]`
    /// on a Claude model: the answer names the stop sequence that ended it.
    pub report_stop_sequence: bool,
}

fn constraint(value: impl std::fmt::Display, field: &str, rule: &str) -> SimError {
    SimError::validation(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {rule}"
    ))
}

const START_WITH_USER: &str = "A conversation must start with a user message. Try again with a conversation that starts with a user message.";
const ALTERNATE: &str = "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.";

/// Builds the chain of prefix hashes and the checkpoints that point into it.
struct PrefixBuilder {
    units: Vec<Unit>,
    hash: [u8; 32],
    tokens: u32,
    checkpoints: Vec<Checkpoint>,
    markers: Markers,
}

impl PrefixBuilder {
    fn new(model: &Model, markers: Markers) -> Self {
        PrefixBuilder {
            units: Vec::new(),
            hash: Sha256::digest(model.id.as_bytes()).into(),
            tokens: 0,
            checkpoints: Vec::new(),
            markers,
        }
    }

    fn unit(&mut self, tag: &[u8], value: &Value, tokens: u32) {
        let mut hasher = Sha256::new();
        hasher.update(self.hash);
        hasher.update(tag);
        let mut buf = Vec::with_capacity(128);
        if self.markers == Markers::Anthropic && value.get("cache_control").is_some() {
            let mut copy = value.clone();
            if let Some(obj) = copy.as_object_mut() {
                obj.remove("cache_control");
            }
            canonical::write(&copy, &mut buf);
        } else {
            canonical::write(value, &mut buf);
        }
        hasher.update(&buf);
        self.hash = hasher.finalize().into();
        self.tokens = self.tokens.saturating_add(tokens);
        self.units.push(Unit {
            hash: self.hash,
            tokens_end: self.tokens,
        });
    }

    /// A checkpoint after the last unit; a marker before any content caches nothing.
    fn checkpoint(&mut self, ttl_1h: bool) {
        if let Some(last) = self.units.len().checked_sub(1) {
            self.checkpoints.push(Checkpoint { unit: last, ttl_1h });
        }
    }
}

fn fingerprint(model: &Model, body: &Value, markers: Markers) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(model.id.as_bytes());
    hasher.update(canonical::request_bytes(
        body,
        markers,
        &["performanceConfig", "requestMetadata"],
    ));
    hasher.finalize().into()
}

fn max_tokens(value: &Value, field: &str, model: &Model) -> Result<Option<u32>, SimError> {
    if value.is_null() {
        return Ok(None);
    }
    let n = value
        .as_i64()
        .ok_or_else(|| constraint(value, field, "Member must be an integer"))?;
    if n < 1 {
        return Err(constraint(
            n,
            field,
            "Member must have value greater than or equal to 1",
        ));
    }
    if n > i64::from(model.max_output_tokens) {
        return Err(SimError::validation(format!(
            "The maximum tokens you requested exceeds the model limit of {0}. Try again with a maximum tokens value that is lower than {0}.",
            model.max_output_tokens
        )));
    }
    Ok(u32::try_from(n).ok())
}

fn unit_interval(value: &Value, field: &str) -> Result<Option<f64>, SimError> {
    if value.is_null() {
        return Ok(None);
    }
    let f = value
        .as_f64()
        .ok_or_else(|| constraint(value, field, "Member must be a number"))?;
    if f < 0.0 {
        return Err(constraint(
            f,
            field,
            "Member must have value greater than or equal to 0",
        ));
    }
    if f > 1.0 {
        return Err(constraint(
            f,
            field,
            "Member must have value less than or equal to 1",
        ));
    }
    Ok(Some(f))
}

fn stop_sequences(value: &Value, field: &str) -> Result<Vec<String>, SimError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| constraint(s, field, "Member must be a non-empty string"))
            })
            .collect(),
        other => Err(constraint(other, field, "Member must be a list")),
    }
}

/// Checks that roles start with the user and alternate.
fn check_roles<'a>(roles: impl Iterator<Item = &'a str>) -> Result<(), SimError> {
    let mut previous: Option<&str> = None;
    for (i, role) in roles.enumerate() {
        match (previous, role) {
            (None, "user") => {}
            (None, _) => return Err(SimError::validation(START_WITH_USER)),
            (Some(p), r) if p == r => return Err(SimError::validation(ALTERNATE)),
            (_, "user" | "assistant") => {}
            (_, other) => {
                return Err(constraint(
                    other,
                    &format!("messages.{i}.member.role"),
                    "Member must satisfy enum value set: [user, assistant]",
                ))
            }
        }
        previous = Some(role);
    }
    if previous.is_none() {
        return Err(SimError::validation(START_WITH_USER));
    }
    Ok(())
}

/// Validates a Converse `cachePoint` and returns whether it asks for the 1h TTL.
fn converse_cache_point(point: &Value, model: &Model, in_tools: bool) -> Result<bool, SimError> {
    if !model.prompt_cache {
        return Err(SimError::validation(format!(
            "You invoked an unsupported model or your request did not allow prompt caching. Model {} does not support cachePoint blocks.",
            model.id
        )));
    }
    if in_tools && !model.cache_tools {
        return Err(SimError::validation(format!(
            "Model {} does not support a cachePoint in toolConfig.tools.",
            model.id
        )));
    }
    if point["type"].as_str() != Some("default") {
        return Err(constraint(
            &point["type"],
            "cachePoint.type",
            "Member must satisfy enum value set: [default]",
        ));
    }
    cache_ttl(&point["ttl"], model)
}

fn cache_ttl(ttl: &Value, model: &Model) -> Result<bool, SimError> {
    match ttl.as_str() {
        None if ttl.is_null() => Ok(false),
        Some("5m") => Ok(false),
        Some("1h") if model.cache_ttl_1h => Ok(true),
        Some("1h") => Err(SimError::validation(format!(
            "Model {} does not support a cache TTL of 1h.",
            model.id
        ))),
        _ => Err(constraint(
            ttl,
            "cachePoint.ttl",
            "Member must satisfy enum value set: [5m, 1h]",
        )),
    }
}

/// Longer TTLs first: a 1-hour checkpoint may not follow a 5-minute one (the
/// cache's rule for mixing TTLs, in tools, system, messages order).
fn ttls_non_increasing(checkpoints: &[Checkpoint]) -> bool {
    checkpoints
        .windows(2)
        .all(|pair| pair[0].ttl_1h || !pair[1].ttl_1h)
}

fn too_many_points(found: usize) -> SimError {
    SimError::validation(format!(
        "A maximum of {MAX_CACHE_POINTS} cachePoint blocks may be provided. Found {found}."
    ))
}

fn check_context(prompt: &Prompt, model: &Model) -> Result<(), SimError> {
    let output = prompt.max_tokens.unwrap_or(0);
    if prompt.input_tokens.saturating_add(output) > model.context_tokens {
        return Err(SimError::validation(
            "Input is too long for requested model.",
        ));
    }
    Ok(())
}

fn text_of_blocks(blocks: &[Value], text_key: &str) -> String {
    blocks
        .iter()
        .filter_map(|b| b.get(text_key).and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Converse content block as the reasoning rules see it (cache markers are
/// not blocks of the model's message).
fn converse_part(block: &Value) -> Option<Part> {
    let obj = block.as_object()?;
    if obj.contains_key("cachePoint") {
        return None;
    }
    Some(if obj.contains_key("text") {
        Part::Text
    } else if obj.contains_key("toolUse") {
        Part::ToolUse
    } else if obj.contains_key("toolResult") {
        Part::ToolResult
    } else if let Some(r) = obj.get("reasoningContent") {
        if r.get("redactedContent").is_some() {
            Part::RedactedThinking
        } else {
            Part::Thinking {
                text: r["reasoningText"]["text"].as_str().unwrap_or("").to_owned(),
                signature: non_empty(&r["reasoningText"]["signature"]),
            }
        }
    } else if obj.contains_key("document") {
        Part::Other("document")
    } else if obj.contains_key("image") {
        Part::Other("image")
    } else {
        Part::Other("unknown")
    })
}

/// An Anthropic content block as the reasoning rules see it.
fn anthropic_part(block: &Value) -> Part {
    match block["type"].as_str() {
        Some("text") => Part::Text,
        Some("tool_use") => Part::ToolUse,
        Some("tool_result") => Part::ToolResult,
        Some("thinking") => Part::Thinking {
            text: block["thinking"].as_str().unwrap_or("").to_owned(),
            signature: non_empty(&block["signature"]),
        },
        Some("redacted_thinking") => Part::RedactedThinking,
        Some("document") => Part::Other("document"),
        Some("image") => Part::Other("image"),
        _ => Part::Other("unknown"),
    }
}

/// A signature, unless missing or empty (both are "Field required").
fn non_empty(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn is_reasoning(block: &Value, markers: Markers) -> bool {
    match markers {
        Markers::Converse => block.get("reasoningContent").is_some(),
        _ => matches!(
            block["type"].as_str(),
            Some("thinking" | "redacted_thinking")
        ),
    }
}

/// Where the model stops reading earlier reasoning: reasoning in messages before
/// this index belongs to earlier turns and is stripped (no input tokens, no
/// part of a cached prefix), as Anthropic's models do.
fn reasoning_kept_from(turns: &[Turn], model: &Model) -> usize {
    if model.reasoning {
        reasoning::current_turn_start(turns)
    } else {
        0
    }
}

/// Adds the thinking setting to the prefix: changing it changes what the model
/// reads from the messages on, so a cached conversation prefix no longer matches.
fn thinking_unit(prefix: &mut PrefixBuilder, thinking: Option<&Thinking>) {
    if let Some(t) = thinking {
        prefix.unit(b"thinking", &Value::from(t.budget), 0);
    }
}

fn called_tools<'a>(
    messages: impl Iterator<Item = &'a Value>,
    name_of: fn(&Value) -> Option<&str>,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for block in messages {
        if let Some(name) = name_of(block) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// The JSON types of the Converse request's structure and list members
/// (`additionalModelRequestFields` is a document: any type).
const CONVERSE_TYPES: &[(&str, bool)] = &[
    // (member, is an object; else a list)
    ("system", false),
    ("inferenceConfig", true),
    ("toolConfig", true),
    ("guardrailConfig", true),
    ("promptVariables", true),
    ("additionalModelResponseFieldPaths", false),
    ("requestMetadata", true),
    ("performanceConfig", true),
    ("serviceTier", true),
    ("outputConfig", true),
];

/// What Bedrock calls a JSON value's type in its "expected type" messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "Null",
        Value::Bool(_) => "Boolean",
        Value::Number(_) => "Number",
        Value::String(_) => "String",
        Value::Array(_) => "JSONArray",
        Value::Object(_) => "JSONObject",
    }
}

/// A structure or list member of the wrong JSON type is refused, as Bedrock
/// refuses it (`"inferenceConfig": "x"`), instead of read as absent.
fn check_member_types(obj: &serde_json::Map<String, Value>) -> Result<(), SimError> {
    for (name, object) in CONVERSE_TYPES {
        let Some(value) = obj.get(*name).filter(|v| !v.is_null()) else {
            continue;
        };
        let (ok, expected) = if *object {
            (value.is_object(), "JSONObject")
        } else {
            (value.is_array(), "JSONArray")
        };
        if !ok {
            return Err(SimError::malformed(format!(
                "#/{name}: expected type: {expected}, found: {}",
                json_type(value)
            )));
        }
    }
    Ok(())
}

/// Reads a Converse / ConverseStream body.
pub fn converse(body: &Value, model: &Model) -> Result<Prompt, SimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| SimError::malformed("the body must be a JSON object"))?;
    check_member_types(obj)?;
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) => m.as_slice(),
        None | Some(Value::Null) => &[],
        Some(other) => return Err(constraint(other, "messages", "Member must be a list")),
    };
    for (i, m) in messages.iter().enumerate() {
        let content = m["content"].as_array();
        if content.is_none_or(|c| c.is_empty()) {
            return Err(SimError::validation(format!(
                "The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the content field and try again."
            )));
        }
    }
    check_roles(messages.iter().map(|m| m["role"].as_str().unwrap_or("")))?;

    let inference = obj.get("inferenceConfig").cloned().unwrap_or(Value::Null);
    let max_tokens = max_tokens(&inference["maxTokens"], "inferenceConfig.maxTokens", model)?;
    let temperature = unit_interval(&inference["temperature"], "inferenceConfig.temperature")?;
    unit_interval(&inference["topP"], "inferenceConfig.topP")?;
    let stop_sequences =
        stop_sequences(&inference["stopSequences"], "inferenceConfig.stopSequences")?;
    let tier = match obj.get("performanceConfig").map(|p| &p["latency"]) {
        Some(Value::String(s)) => parse_tier(s, "performanceConfig.latency")?,
        _ => Tier::Standard,
    };

    let mut prefix = PrefixBuilder::new(model, Markers::Converse);
    let mut points = 0usize;

    // Tools come first in the cache order.
    let mut tools = Vec::new();
    let mut tool_choice = ToolChoice::None;
    if let Some(config) = obj.get("toolConfig").filter(|c| !c.is_null()) {
        let list = config["tools"]
            .as_array()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                constraint(
                    "[]",
                    "toolConfig.tools",
                    "Member must have length greater than or equal to 1",
                )
            })?;
        for tool in list {
            if let Some(point) = tool.get("cachePoint") {
                points += 1;
                let ttl = converse_cache_point(point, model, true)?;
                prefix.checkpoint(ttl);
            } else if let Some(spec) = tool.get("toolSpec") {
                let name = spec["name"].as_str().ok_or_else(|| {
                    SimError::validation("toolConfig.tools.toolSpec.name is required.")
                })?;
                tools.push(ToolDef {
                    name: name.to_owned(),
                    schema: spec["inputSchema"]["json"].clone(),
                });
                prefix.unit(b"tool", spec, tokens::converse_tool(tool));
            } else {
                prefix.unit(b"tool", tool, tokens::converse_tool(tool));
            }
        }
        let choice = &config["toolChoice"];
        tool_choice = if choice.get("any").is_some() {
            ToolChoice::Any
        } else if let Some(name) = choice["tool"]["name"].as_str() {
            if !tools.iter().any(|t| t.name == name) {
                return Err(SimError::validation(format!(
                    "The tool {name} named in toolChoice is not in toolConfig.tools."
                )));
            }
            ToolChoice::Tool(name.to_owned())
        } else {
            ToolChoice::Auto
        };
    }

    let extra = obj
        .get("additionalModelRequestFields")
        .cloned()
        .unwrap_or(Value::Null);
    let forced = matches!(tool_choice, ToolChoice::Any | ToolChoice::Tool(_));
    let thinking = reasoning::parse_thinking(
        &extra["thinking"],
        model,
        Api::Converse,
        max_tokens.unwrap_or(model.max_output_tokens),
        temperature,
        forced,
        &reasoning::betas(&extra["anthropic_beta"]),
    )?;
    let output =
        structured::converse_output_config(obj.get("outputConfig").unwrap_or(&Value::Null), model)?;
    if let Some(effort) = output.effort {
        effort.check(thinking.is_some(), "outputConfig.effort")?;
    }

    if let Some(system) = obj.get("system").and_then(Value::as_array) {
        for block in system {
            if let Some(point) = block.get("cachePoint") {
                points += 1;
                let ttl = converse_cache_point(point, model, false)?;
                prefix.checkpoint(ttl);
            } else {
                prefix.unit(b"system", block, tokens::converse_block(block));
            }
        }
    }

    let turns: Vec<Turn> = messages
        .iter()
        .map(|m| Turn {
            assistant: m["role"] == "assistant",
            parts: m["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(converse_part)
                .collect(),
        })
        .collect();
    reasoning::check_history(&turns, thinking.is_some(), Api::Converse)?;
    let kept_from = reasoning_kept_from(&turns, model);

    thinking_unit(&mut prefix, thinking.as_ref());
    let mut citable = Vec::new();
    let mut documents_seen = 0u32;
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or("");
        prefix.unit(role.as_bytes(), &Value::Null, tokens::MESSAGE_OVERHEAD);
        for (j, block) in message["content"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(point) = block.get("cachePoint") {
                points += 1;
                let ttl = converse_cache_point(point, model, false)?;
                prefix.checkpoint(ttl);
                continue;
            }
            if i < kept_from && is_reasoning(block, Markers::Converse) {
                continue;
            }
            if let Some(doc) = block.get("document") {
                if let Some(c) = documents::converse_document(doc, i, j, documents_seen, model)? {
                    citable.push(c);
                }
                documents_seen += 1;
            }
            prefix.unit(b"block", block, tokens::converse_block(block));
        }
    }
    if points > MAX_CACHE_POINTS {
        return Err(too_many_points(points));
    }
    if !ttls_non_increasing(&prefix.checkpoints) {
        return Err(SimError::validation(
            "A cachePoint with ttl 1h must not come after a cachePoint with ttl 5m. Cache points are processed in the order toolConfig.tools, system, messages.",
        ));
    }

    let last = messages.last();
    let last_blocks = last
        .filter(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_array())
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let after_tool_result = last_blocks.iter().any(|b| b.get("toolResult").is_some());
    let called_tools = called_tools(
        messages
            .iter()
            .filter(|m| m["role"] == "assistant")
            .flat_map(|m| m["content"].as_array().into_iter().flatten()),
        |b| b["toolUse"]["name"].as_str(),
    );
    let prompt = Prompt {
        format: Format::Converse,
        input_tokens: prefix.tokens,
        units: prefix.units,
        checkpoints: prefix.checkpoints,
        tools,
        tool_choice,
        last_user_text: text_of_blocks(last_blocks, "text"),
        after_tool_result,
        called_tools,
        emit_reasoning: thinking.is_some_and(|t| !after_tool_result || t.interleaved),
        thinking,
        effort: output.effort,
        output_schema: output.schema,
        citable,
        max_tokens,
        temperature,
        stop_sequences,
        fingerprint: fingerprint(model, body, Markers::Converse),
        tier,
        report_stop_sequence: model.family == Family::Anthropic
            && obj
                .get("additionalModelResponseFieldPaths")
                .and_then(Value::as_array)
                .is_some_and(|paths| paths.iter().any(|p| p == "/stop_sequence")),
    };
    check_context(&prompt, model)?;
    Ok(prompt)
}

/// Top-level keys every Anthropic Messages body may carry on Bedrock.
const ANTHROPIC_KEYS: [&str; 11] = [
    "anthropic_version",
    "anthropic_beta",
    "max_tokens",
    "messages",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
];

/// Whether `key` may be a top-level key of an Anthropic body for `model`:
/// `thinking` and `output_config` only where the model has those features, as
/// Bedrock's body schema for each model says.
fn anthropic_key_allowed(key: &str, model: &Model) -> bool {
    ANTHROPIC_KEYS.contains(&key)
        || (key == "thinking" && model.reasoning)
        || (key == "output_config" && (model.structured_output || model.effort))
}

fn anthropic_cache_control(
    block: &Value,
    model: &Model,
    points: &mut usize,
) -> Result<Option<bool>, SimError> {
    let Some(cc) = block.get("cache_control") else {
        return Ok(None);
    };
    if !model.prompt_cache {
        return Err(SimError::validation(format!(
            "Model {} does not support cache_control.",
            model.id
        )));
    }
    if cc["type"].as_str() != Some("ephemeral") {
        return Err(SimError::malformed(
            "#/cache_control/type: ephemeral expected",
        ));
    }
    *points += 1;
    cache_ttl(&cc["ttl"], model).map(Some)
}

/// Reads an Anthropic Messages body sent to InvokeModel.
pub fn anthropic(body: &Value, model: &Model) -> Result<Prompt, SimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| SimError::malformed("#: expected type: JSONObject"))?;
    if let Some(extra) = obj.keys().find(|k| !anthropic_key_allowed(k, model)) {
        return Err(SimError::malformed(format!(
            "#: extraneous key [{extra}] is not permitted"
        )));
    }
    for required in ["anthropic_version", "max_tokens", "messages"] {
        if !obj.contains_key(required) {
            return Err(SimError::malformed(format!(
                "#: required key [{required}] not found"
            )));
        }
    }
    let messages = obj["messages"]
        .as_array()
        .ok_or_else(|| SimError::malformed("#/messages: expected type: JSONArray"))?;
    check_roles(messages.iter().map(|m| m["role"].as_str().unwrap_or("")))?;
    let max_tokens = max_tokens(&obj["max_tokens"], "max_tokens", model)?;
    let temperature = unit_interval(
        obj.get("temperature").unwrap_or(&Value::Null),
        "temperature",
    )?;
    unit_interval(obj.get("top_p").unwrap_or(&Value::Null), "top_p")?;
    let stop_sequences = stop_sequences(
        obj.get("stop_sequences").unwrap_or(&Value::Null),
        "stop_sequences",
    )?;
    let has_tools = obj
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let tool_choice = match obj.get("tool_choice").map(|c| c["type"].as_str()) {
        Some(Some("any")) => ToolChoice::Any,
        Some(Some("none")) => ToolChoice::None,
        Some(Some("tool")) => {
            ToolChoice::Tool(obj["tool_choice"]["name"].as_str().unwrap_or("").to_owned())
        }
        _ if !has_tools => ToolChoice::None,
        _ => ToolChoice::Auto,
    };
    let forced = matches!(tool_choice, ToolChoice::Any | ToolChoice::Tool(_));
    let thinking = reasoning::parse_thinking(
        obj.get("thinking").unwrap_or(&Value::Null),
        model,
        Api::Anthropic,
        max_tokens.unwrap_or(model.max_output_tokens),
        temperature,
        forced,
        &reasoning::betas(obj.get("anthropic_beta").unwrap_or(&Value::Null)),
    )?;
    let output = match obj.get("output_config") {
        Some(config) => structured::anthropic_output_config(config, model)?,
        None => structured::OutputConfig::default(),
    };
    if let Some(effort) = output.effort {
        effort.check(thinking.is_some(), "output_config.effort")?;
    }

    let mut prefix = PrefixBuilder::new(model, Markers::Anthropic);
    let mut points = 0usize;
    let mut tools = Vec::new();
    for tool in obj
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = tool["name"]
            .as_str()
            .ok_or_else(|| SimError::malformed("#/tools: required key [name] not found"))?;
        if tool.get("cache_control").is_some() && !model.cache_tools {
            return Err(SimError::validation(format!(
                "Model {} does not support cache_control on tools.",
                model.id
            )));
        }
        tools.push(ToolDef {
            name: name.to_owned(),
            schema: tool["input_schema"].clone(),
        });
        prefix.unit(b"tool", tool, tokens::anthropic_tool(tool));
        if let Some(ttl) = anthropic_cache_control(tool, model, &mut points)? {
            prefix.checkpoint(ttl);
        }
    }
    match obj.get("system") {
        Some(Value::String(s)) => {
            let block = serde_json::json!({ "type": "text", "text": s });
            prefix.unit(b"system", &block, tokens::text(s));
        }
        Some(Value::Array(blocks)) => {
            for block in blocks {
                prefix.unit(b"system", block, tokens::anthropic_block(block));
                if let Some(ttl) = anthropic_cache_control(block, model, &mut points)? {
                    prefix.checkpoint(ttl);
                }
            }
        }
        _ => {}
    }

    let turns: Vec<Turn> = messages
        .iter()
        .map(|m| Turn {
            assistant: m["role"] == "assistant",
            parts: match &m["content"] {
                Value::Array(blocks) => blocks.iter().map(anthropic_part).collect(),
                _ => vec![Part::Text],
            },
        })
        .collect();
    reasoning::check_history(&turns, thinking.is_some(), Api::Anthropic)?;
    let kept_from = reasoning_kept_from(&turns, model);

    thinking_unit(&mut prefix, thinking.as_ref());
    let mut citable = Vec::new();
    let mut documents_seen = 0u32;
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or("");
        prefix.unit(role.as_bytes(), &Value::Null, tokens::MESSAGE_OVERHEAD);
        match &message["content"] {
            Value::String(s) => {
                let block = serde_json::json!({ "type": "text", "text": s });
                prefix.unit(b"block", &block, tokens::text(s));
            }
            Value::Array(blocks) => {
                for (j, block) in blocks.iter().enumerate() {
                    if i < kept_from && is_reasoning(block, Markers::Anthropic) {
                        continue;
                    }
                    if block["type"] == "document" {
                        if let Some(c) =
                            documents::anthropic_document(block, i, j, documents_seen, model)?
                        {
                            citable.push(c);
                        }
                        documents_seen += 1;
                    }
                    prefix.unit(b"block", block, tokens::anthropic_block(block));
                    if let Some(ttl) = anthropic_cache_control(block, model, &mut points)? {
                        prefix.checkpoint(ttl);
                    }
                }
            }
            _ => {
                return Err(SimError::malformed(
                    "#/messages/content: expected a string or an array",
                ))
            }
        }
    }
    if points > MAX_CACHE_POINTS {
        return Err(SimError::validation(format!(
            "A maximum of {MAX_CACHE_POINTS} blocks with cache_control may be provided. Found {points}."
        )));
    }
    if !ttls_non_increasing(&prefix.checkpoints) {
        return Err(SimError::validation(
            "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block. Note that blocks are processed in the following order: `tools`, `system`, `messages`.",
        ));
    }

    let last = messages.last().filter(|m| m["role"] == "user");
    let (last_user_text, after_tool_result) = match last.map(|m| &m["content"]) {
        Some(Value::String(s)) => (s.clone(), false),
        Some(Value::Array(blocks)) => (
            text_of_blocks(blocks, "text"),
            blocks.iter().any(|b| b["type"] == "tool_result"),
        ),
        _ => (String::new(), false),
    };
    let called_tools = called_tools(
        messages
            .iter()
            .filter(|m| m["role"] == "assistant")
            .flat_map(|m| m["content"].as_array().into_iter().flatten()),
        |b| {
            (b["type"] == "tool_use")
                .then(|| b["name"].as_str())
                .flatten()
        },
    );
    let prompt = Prompt {
        format: Format::Anthropic,
        input_tokens: prefix.tokens,
        units: prefix.units,
        checkpoints: prefix.checkpoints,
        tools,
        tool_choice,
        last_user_text,
        after_tool_result,
        called_tools,
        emit_reasoning: thinking.is_some_and(|t| !after_tool_result || t.interleaved),
        thinking,
        effort: output.effort,
        output_schema: output.schema,
        citable,
        max_tokens,
        temperature,
        stop_sequences,
        fingerprint: fingerprint(model, body, Markers::Anthropic),
        tier: Tier::Standard,
        report_stop_sequence: false,
    };
    check_context(&prompt, model)?;
    Ok(prompt)
}

const LLAMA_KEYS: [&str; 5] = ["prompt", "max_gen_len", "temperature", "top_p", "images"];

/// Reads a Llama body sent to InvokeModel.
pub fn llama(body: &Value, model: &Model) -> Result<Prompt, SimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| SimError::malformed("#: expected type: JSONObject"))?;
    if let Some(extra) = obj.keys().find(|k| !LLAMA_KEYS.contains(&k.as_str())) {
        return Err(SimError::malformed(format!(
            "#: extraneous key [{extra}] is not permitted"
        )));
    }
    let text = obj
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or_else(|| SimError::malformed("#: required key [prompt] not found"))?;
    let max_tokens = max_tokens(
        obj.get("max_gen_len").unwrap_or(&Value::Null),
        "max_gen_len",
        model,
    )?;
    let temperature = unit_interval(
        obj.get("temperature").unwrap_or(&Value::Null),
        "temperature",
    )?;
    let mut prefix = PrefixBuilder::new(model, Markers::Keep);
    prefix.unit(
        b"prompt",
        &Value::String(text.to_owned()),
        tokens::text(text),
    );
    let prompt = Prompt {
        format: Format::Llama,
        input_tokens: prefix.tokens,
        units: prefix.units,
        checkpoints: Vec::new(),
        tools: Vec::new(),
        tool_choice: ToolChoice::None,
        last_user_text: text.to_owned(),
        after_tool_result: false,
        called_tools: Vec::new(),
        thinking: None,
        emit_reasoning: false,
        effort: None,
        output_schema: None,
        citable: Vec::new(),
        max_tokens,
        temperature,
        stop_sequences: Vec::new(),
        fingerprint: fingerprint(model, body, Markers::Keep),
        tier: Tier::Standard,
        report_stop_sequence: false,
    };
    check_context(&prompt, model)?;
    Ok(prompt)
}

/// Input tokens of a CountTokens request (`{"input": {"converse": ...}}` or
/// `{"input": {"invokeModel": {"body": base64}}}`).
pub fn count_tokens(body: &Value, model: &Model) -> Result<u32, SimError> {
    let input = &body["input"];
    if let Some(converse_input) = input.get("converse") {
        // The same reading as Converse's, thinking settings and documents
        // included, so the count agrees with a Converse answer's inputTokens.
        return converse(converse_input, model).map(|p| p.input_tokens);
    }
    if let Some(invoke) = input.get("invokeModel") {
        use base64::Engine;
        let raw = invoke["body"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or_else(|| {
                SimError::validation("input.invokeModel.body must be base64-encoded JSON.")
            })?;
        let parsed: Value = serde_json::from_slice(&raw).map_err(SimError::malformed)?;
        return anthropic(&parsed, model).map(|p| p.input_tokens);
    }
    Err(SimError::validation(
        "input must contain exactly one of converse or invokeModel.",
    ))
}

/// A one-message Converse request, for tests.
#[cfg(test)]
pub(crate) fn user(text: &str) -> Value {
    serde_json::json!({"messages": [{"role": "user", "content": [{"text": text}]}]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use serde_json::json;

    fn haiku() -> std::sync::Arc<Model> {
        Catalog::embedded()
            .resolve("us.anthropic.claude-3-5-haiku-20241022-v1:0")
            .unwrap()
            .model
    }

    fn llama() -> std::sync::Arc<Model> {
        Catalog::embedded()
            .resolve("us.meta.llama3-1-70b-instruct-v1:0")
            .unwrap()
            .model
    }

    #[test]
    fn roles_must_start_with_user_and_alternate() {
        let m = haiku();
        let bad_start = json!({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]});
        assert!(converse(&bad_start, &m)
            .unwrap_err()
            .message
            .contains("start with a user"));
        let repeat = json!({"messages": [
            {"role": "user", "content": [{"text": "x"}]},
            {"role": "user", "content": [{"text": "y"}]}]});
        assert!(converse(&repeat, &m)
            .unwrap_err()
            .message
            .contains("alternate"));
        assert!(converse(&json!({}), &m).is_err());
        assert!(converse(&user("hi"), &m).is_ok());
    }

    #[test]
    fn inference_limits_are_enforced() {
        let m = haiku();
        let mut req = user("hi");
        req["inferenceConfig"] = json!({"maxTokens": 0});
        assert!(converse(&req, &m)
            .unwrap_err()
            .message
            .contains("greater than or equal to 1"));
        req["inferenceConfig"] = json!({"maxTokens": 100000});
        assert!(converse(&req, &m)
            .unwrap_err()
            .message
            .contains("model limit of 8192"));
        req["inferenceConfig"] = json!("x");
        let e = converse(&req, &m).unwrap_err();
        assert_eq!(e.type_name, "ValidationException");
        assert!(
            e.message
                .contains("#/inferenceConfig: expected type: JSONObject, found: String"),
            "{}",
            e.message
        );
        req["inferenceConfig"] = json!({"temperature": 1.5});
        assert!(converse(&req, &m)
            .unwrap_err()
            .message
            .contains("inferenceConfig.temperature"));
    }

    #[test]
    fn cache_points_are_counted_and_checked() {
        let m = haiku();
        let point = json!({"cachePoint": {"type": "default"}});
        let req = json!({
            "system": [{"text": "a"}, point, {"text": "b"}, point],
            "messages": [{"role": "user", "content": [{"text": "c"}, point, {"text": "d"}, point, {"text": "e"}, point]}]
        });
        assert!(converse(&req, &m).unwrap_err().message.contains("Found 5"));
        let req = json!({"system": [{"text": "a"}, point], "messages": [{"role": "user", "content": [{"text": "c"}]}]});
        let p = converse(&req, &m).unwrap();
        assert_eq!(
            p.checkpoints,
            [Checkpoint {
                unit: 0,
                ttl_1h: false
            }]
        );
        assert!(converse(&req, &llama())
            .unwrap_err()
            .message
            .contains("does not support"));
        let one_hour = json!({"system": [{"text": "a"}, {"cachePoint": {"type": "default", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": [{"text": "c"}]}]});
        assert!(converse(&one_hour, &m).unwrap_err().message.contains("1h"));
    }

    #[test]
    fn a_one_hour_point_may_not_follow_a_five_minute_one() {
        let m = Catalog::embedded()
            .resolve("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
            .unwrap()
            .model;
        let five = json!({"cachePoint": {"type": "default"}});
        let hour = json!({"cachePoint": {"type": "default", "ttl": "1h"}});
        let body = |a: &Value, b: &Value| {
            json!({"system": [{"text": "s"}, a],
                "messages": [{"role": "user", "content": [{"text": "q"}, b]}]})
        };
        assert!(converse(&body(&hour, &five), &m).is_ok());
        assert!(converse(&body(&hour, &hour), &m).is_ok());
        let err = converse(&body(&five, &hour), &m).unwrap_err();
        assert!(
            err.message.contains("must not come after"),
            "{}",
            err.message
        );
        let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
            "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "q",
                "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]});
        let err = anthropic(&body, &m).unwrap_err();
        assert!(err.message.contains("ttl='1h'"), "{}", err.message);
    }

    #[test]
    fn prefix_hashes_ignore_markers_and_follow_content() {
        let m = haiku();
        let point = json!({"cachePoint": {"type": "default"}});
        let a = converse(&json!({"system": [{"text": "s"}, point], "messages": [{"role": "user", "content": [{"text": "q1"}]}]}), &m).unwrap();
        let b = converse(&json!({"system": [{"text": "s"}], "messages": [{"role": "user", "content": [{"text": "q2"}]}]}), &m).unwrap();
        assert_eq!(a.units[0].hash, b.units[0].hash, "same system prefix");
        assert_ne!(a.units.last().unwrap().hash, b.units.last().unwrap().hash);
        assert_ne!(a.fingerprint, b.fingerprint);
        let a2 = converse(&json!({"system": [{"text": "s"}], "messages": [{"role": "user", "content": [{"text": "q1"}]}],
            "performanceConfig": {"latency": "optimized"}}), &m).unwrap();
        assert_eq!(
            a.fingerprint, a2.fingerprint,
            "markers and performanceConfig do not change the answer"
        );
        assert_eq!(a.input_tokens, a2.input_tokens);
    }

    #[test]
    fn anthropic_bodies_are_checked_like_bedrock() {
        let m = haiku();
        let ok = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hello"}]});
        assert!(anthropic(&ok, &m).is_ok());
        let mut extra = ok.clone();
        extra["foo"] = json!(1);
        assert!(anthropic(&extra, &m)
            .unwrap_err()
            .message
            .contains("extraneous key [foo]"));
        let mut missing = ok.clone();
        missing.as_object_mut().unwrap().remove("anthropic_version");
        assert!(anthropic(&missing, &m)
            .unwrap_err()
            .message
            .contains("anthropic_version"));
    }

    #[test]
    fn count_tokens_agrees_with_the_estimator() {
        let m = haiku();
        let req = json!({"input": {"converse": user("hello there")}});
        assert_eq!(
            count_tokens(&req, &m).unwrap(),
            tokens::converse_request(&user("hello there"))
        );
    }
}
