//! The response-cache key: SHA-256 over a versioned, length-prefixed encoding of
//! the tenant namespace, the route, the upstream model, the operation family and
//! the canonical request (object keys sorted, no whitespace, numbers by their
//! exact decimal value). The canonical form is read from the request's text, not
//! its parsed value, whose numbers are rounded to `f64`: two integers beyond
//! 2^53 that differ are different requests.
//!
//! What is in and what is out of the key, and why, is [`CONVERSE_FIELDS`]; a test
//! walks the Bedrock API model and fails on any Converse member this table does
//! not classify, so a new API field can never silently fall out of the key.
//! Members the table does not list are hashed anyway: unknown means "in".
//!
//! Also out, wherever they appear: every `cachePoint` block (Converse) and every
//! `cache_control` marker (Anthropic bodies), because prompt caching changes cost
//! and speed, not the answer; and the stream flag: Converse and ConverseStream
//! share a family, so a streamed answer serves a non-streamed request and back.

use bedrock_wire::canonical::{request_bytes_from_text, write_request, Markers};
use bedrock_wire::tier::{LATENCY_HEADER, SERVICE_TIER_HEADER};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::json_body::JsonBody;

/// Bump when the encoding changes: old entries then simply miss.
pub const KEY_VERSION: &str = "bedrock-proxy/response-cache/v2";

/// Whether a request member is part of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyed {
    /// Changes the answer: hashed.
    In,
    /// In the key through the route and upstream model, not the body.
    ByRoute,
    /// Does not change the answer: left out, for the reason given.
    Out(&'static str),
}

/// Every member of ConverseRequest / ConverseStreamRequest, classified.
pub const CONVERSE_FIELDS: &[(&str, Keyed)] = &[
    ("modelId", Keyed::ByRoute),
    ("messages", Keyed::In),
    ("system", Keyed::In),
    ("inferenceConfig", Keyed::In),
    ("toolConfig", Keyed::In),
    ("guardrailConfig", Keyed::In),
    ("additionalModelRequestFields", Keyed::In),
    ("promptVariables", Keyed::In),
    ("additionalModelResponseFieldPaths", Keyed::In),
    ("outputConfig", Keyed::In),
    (
        "requestMetadata",
        Keyed::Out("tags for logs and billing; the model never sees them"),
    ),
    (
        "performanceConfig",
        Keyed::Out("the latency tier changes speed and price, not the answer"),
    ),
    (
        "serviceTier",
        Keyed::Out("the service tier changes queueing and price, not the answer"),
    ),
];

/// The top-level Converse members left out of the key.
fn converse_excluded() -> Vec<&'static str> {
    CONVERSE_FIELDS
        .iter()
        .filter(|(_, k)| matches!(k, Keyed::Out(_)))
        .map(|(name, _)| *name)
        .collect()
}

/// InvokeModel request headers left out of the key, and why; every other header
/// the Bedrock ingress forwards (the body format, the guardrail, the trace flag)
/// changes the answer and is hashed.
pub const INVOKE_HEADERS_OUT: &[(&str, &str)] = &[
    (
        LATENCY_HEADER,
        "the latency tier changes speed and price, not the answer",
    ),
    (
        SERVICE_TIER_HEADER,
        "the service tier changes queueing and price, not the answer",
    ),
    (
        "x-amzn-bedrock-request-metadata",
        "tags for logs and billing; the model never sees them",
    ),
];

/// Which operations share entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Converse and ConverseStream: one answer, rendered either way.
    Converse,
    /// InvokeModel: a model-native body, kept as received.
    Invoke,
    /// InvokeModelWithResponseStream: model-native chunks. A native body and
    /// native chunks cannot be converted into one another for every model
    /// family, so the two invoke operations do not share entries.
    InvokeStream,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Converse => "converse",
            Family::Invoke => "invoke",
            Family::InvokeStream => "invoke-stream",
        }
    }
}

/// A response-cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// What a key is made of.
#[derive(Debug)]
pub struct KeyParts<'a> {
    /// The tenant, or a shared namespace for routes that share entries.
    pub namespace: &'a str,
    pub route: &'a str,
    pub upstream_model: &'a str,
    pub family: Family,
    /// The body read as JSON, when it is JSON (its text is what is keyed;
    /// the tree is built only for a body whose text does not read back).
    pub json: Option<&'a JsonBody>,
    /// The raw body (hashed as is when it is not JSON).
    pub raw: &'a [u8],
    /// InvokeModel headers, `(name, value)`, lowercase names.
    pub headers: &'a [(&'a str, &'a [u8])],
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The cache markers of a model-native body.
fn invoke_markers(body: &JsonBody) -> Markers {
    if body.has("anthropic_version") {
        Markers::Anthropic
    } else if body.has("messages") {
        // Nova's native body marks prefixes with Converse-style cachePoint blocks.
        Markers::Converse
    } else {
        Markers::Keep
    }
}

/// Computes the key.
pub fn cache_key(parts: &KeyParts<'_>) -> CacheKey {
    let mut h = Sha256::new();
    field(&mut h, KEY_VERSION.as_bytes());
    field(&mut h, parts.namespace.as_bytes());
    field(&mut h, parts.route.as_bytes());
    field(&mut h, parts.upstream_model.as_bytes());
    field(&mut h, parts.family.name().as_bytes());
    let mut headers: Vec<&(&str, &[u8])> = parts
        .headers
        .iter()
        .filter(|(n, _)| {
            !INVOKE_HEADERS_OUT
                .iter()
                .any(|(out, _)| n.eq_ignore_ascii_case(out))
        })
        .collect();
    headers.sort_unstable();
    field(&mut h, &(headers.len() as u64).to_be_bytes());
    for (name, value) in headers {
        field(&mut h, name.as_bytes());
        field(&mut h, value);
    }
    match (parts.json, parts.family) {
        (Some(json), Family::Converse) => {
            let excluded = converse_excluded();
            field(
                &mut h,
                &canonical(json, parts.raw, Markers::Converse, &excluded),
            );
        }
        (Some(json), _) => {
            field(
                &mut h,
                &canonical(json, parts.raw, invoke_markers(json), &[]),
            );
        }
        (None, _) => field(&mut h, parts.raw),
    }
    CacheKey(h.finalize().into())
}

/// The canonical request, from its text (`raw`, exact for every number); from
/// its parsed value only if the text does not read as the JSON it was parsed
/// from (never for a body the ingress parsed).
fn canonical(json: &JsonBody, raw: &[u8], markers: Markers, excluded: &[&str]) -> Vec<u8> {
    if let Some(bytes) = request_bytes_from_text(raw, markers, excluded) {
        return bytes;
    }
    let mut out = Vec::with_capacity(512);
    write_request(json.tree(), markers, excluded, &mut out);
    out
}

/// Whether a request asks for a deterministic answer: temperature explicitly 0
/// (`inferenceConfig.temperature` in Converse and Nova bodies, `temperature` in
/// Anthropic and Llama bodies). `json` is the body or its head (both members
/// are head members).
pub fn is_deterministic(json: Option<&Value>) -> bool {
    let Some(json) = json else {
        return false;
    };
    let temperature = json
        .get("inferenceConfig")
        .and_then(|c| c.get("temperature"))
        .or_else(|| json.get("temperature"));
    temperature.and_then(Value::as_f64) == Some(0.0)
}

#[cfg(test)]
mod tests;
