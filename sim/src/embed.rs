//! Embedding models on InvokeModel: Amazon Titan Text Embeddings v2 and Cohere
//! Embed v3, with Bedrock's request and response bodies and validation. Vectors
//! are deterministic feature hashes of a text's words and character trigrams, so
//! texts that share words are closer than texts that do not, and the same text
//! always gets the same vector.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::catalog::{EmbeddingInfo, Family, Model};
use crate::error::SimError;

/// A validated embedding request: the texts and how to answer them.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    pub texts: Vec<String>,
    pub dimensions: usize,
    pub format: Format,
    /// Input tokens billed (after any truncation).
    pub input_tokens: u32,
}

/// Which body the answer takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Titan {
        normalize: bool,
        types: Vec<String>,
    },
    Cohere {
        input_type: String,
        /// `embedding_types`, when the request gave them.
        types: Option<Vec<String>>,
    },
}

const TITAN_KEYS: [&str; 4] = ["inputText", "dimensions", "normalize", "embeddingTypes"];
const TITAN_TYPES: [&str; 2] = ["float", "binary"];
const COHERE_KEYS: [&str; 5] = [
    "texts",
    "input_type",
    "truncate",
    "embedding_types",
    "images",
];
const COHERE_INPUT_TYPES: [&str; 5] = [
    "search_document",
    "search_query",
    "classification",
    "clustering",
    "image",
];
const COHERE_TYPES: [&str; 5] = ["float", "int8", "uint8", "binary", "ubinary"];

fn extraneous(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), SimError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(extra) => Err(SimError::malformed(format!(
            "#: extraneous key [{extra}] is not permitted"
        ))),
        None => Ok(()),
    }
}

fn not_in_enum(path: &str, value: &Value) -> SimError {
    let shown = value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned);
    SimError::malformed(format!("{path}: {shown} is not a valid enum value"))
}

fn string_list(value: &Value, path: &str, allowed: &[&str]) -> Result<Vec<String>, SimError> {
    let items = value.as_array().ok_or_else(|| {
        SimError::malformed(format!(
            "{path}: expected type: JSONArray, found: {}",
            json_type(value)
        ))
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .filter(|s| allowed.contains(s))
                .map(str::to_owned)
                .ok_or_else(|| not_in_enum(&format!("{path}/{i}"), v))
        })
        .collect()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "Null",
        Value::Bool(_) => "Boolean",
        Value::Number(_) => "Number",
        Value::String(_) => "String",
        Value::Array(_) => "JSONArray",
        Value::Object(_) => "JSONObject",
    }
}

/// Reads an InvokeModel body for an embedding model.
pub fn request(body: &Value, model: &Model) -> Result<EmbedRequest, SimError> {
    let spec = model
        .embedding
        .as_ref()
        .ok_or_else(|| SimError::validation("The provided model doesn't support embeddings."))?;
    let obj = body
        .as_object()
        .ok_or_else(|| SimError::malformed("#: expected type: JSONObject"))?;
    match model.family {
        Family::Cohere => cohere(obj, spec),
        _ => titan(obj, spec),
    }
}

fn titan(obj: &Map<String, Value>, spec: &EmbeddingInfo) -> Result<EmbedRequest, SimError> {
    extraneous(obj, &TITAN_KEYS)?;
    let text = match obj.get("inputText") {
        None => return Err(SimError::malformed("#: required key [inputText] not found")),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(SimError::malformed(format!(
                "#/inputText: expected type: String, found: {}",
                json_type(other)
            )))
        }
    };
    let chars = text.chars().count();
    if chars == 0 {
        return Err(SimError::malformed(
            "#/inputText: expected minLength: 1, actual: 0",
        ));
    }
    if chars > spec.max_input_chars as usize {
        return Err(SimError::malformed(format!(
            "#/inputText: expected maxLength: {}, actual: {chars}",
            spec.max_input_chars
        )));
    }
    let dimensions = match obj.get("dimensions") {
        None | Some(Value::Null) => spec.default_dimensions,
        Some(v) => v
            .as_u64()
            .and_then(|d| u32::try_from(d).ok())
            .filter(|d| spec.dimensions.contains(d))
            .ok_or_else(|| not_in_enum("#/dimensions", v))?,
    };
    let normalize = match obj.get("normalize") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(SimError::malformed(format!(
                "#/normalize: expected type: Boolean, found: {}",
                json_type(other)
            )))
        }
    };
    let types = match obj.get("embeddingTypes") {
        None | Some(Value::Null) => vec!["float".to_owned()],
        Some(v) => string_list(v, "#/embeddingTypes", &TITAN_TYPES)?,
    };
    let tokens = bedrock_wire::tokens::text(&text);
    if tokens > spec.max_input_tokens {
        return Err(SimError::validation(format!(
            "400 Bad Request: Too many input tokens. Max input tokens: {}, request input token count: {tokens}",
            spec.max_input_tokens
        )));
    }
    Ok(EmbedRequest {
        texts: vec![text],
        dimensions: dimensions as usize,
        format: Format::Titan { normalize, types },
        input_tokens: tokens,
    })
}

fn cohere(obj: &Map<String, Value>, spec: &EmbeddingInfo) -> Result<EmbedRequest, SimError> {
    extraneous(obj, &COHERE_KEYS)?;
    if obj.contains_key("images") {
        return Err(SimError::validation(
            "bedrock-sim does not embed images; send texts.",
        ));
    }
    let input_type = match obj.get("input_type") {
        None => {
            return Err(SimError::malformed(
                "#: required key [input_type] not found",
            ))
        }
        Some(v) => v
            .as_str()
            .filter(|t| COHERE_INPUT_TYPES.contains(t) && *t != "image")
            .ok_or_else(|| not_in_enum("#/input_type", v))?
            .to_owned(),
    };
    let texts = match obj.get("texts") {
        None => return Err(SimError::malformed("#: required key [texts] not found")),
        Some(v) => v.as_array().ok_or_else(|| {
            SimError::malformed(format!(
                "#/texts: expected type: JSONArray, found: {}",
                json_type(v)
            ))
        })?,
    };
    if texts.len() > spec.max_batch as usize {
        return Err(SimError::malformed(format!(
            "#/texts: expected maximum item count: {}, found: {}",
            spec.max_batch,
            texts.len()
        )));
    }
    let truncate = match obj.get("truncate") {
        None | Some(Value::Null) => "NONE",
        Some(v) => v
            .as_str()
            .filter(|t| ["NONE", "START", "END"].contains(t))
            .ok_or_else(|| not_in_enum("#/truncate", v))?,
    };
    let types = match obj.get("embedding_types") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string_list(v, "#/embedding_types", &COHERE_TYPES)?),
    };
    let max = spec.max_input_chars as usize;
    let mut out = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let text = t.as_str().ok_or_else(|| {
            SimError::malformed(format!(
                "#/texts/{i}: expected type: String, found: {}",
                json_type(t)
            ))
        })?;
        let chars = text.chars().count();
        let kept = if chars <= max {
            text.to_owned()
        } else {
            match truncate {
                "START" => text.chars().skip(chars - max).collect(),
                "END" => text.chars().take(max).collect(),
                _ => {
                    return Err(SimError::malformed(format!(
                        "#/texts/{i}: expected maxLength: {max}, actual: {chars}"
                    )))
                }
            }
        };
        out.push(kept);
    }
    let input_tokens = out.iter().map(|t| bedrock_wire::tokens::text(t)).sum();
    Ok(EmbedRequest {
        texts: out,
        dimensions: spec.default_dimensions as usize,
        format: Format::Cohere { input_type, types },
        input_tokens,
    })
}

/// FNV-1a: a tiny, stable hash, so vectors never change between builds.
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn add_feature(v: &mut [f64], seed: u64, feature: &str, weight: f64) {
    let h = fnv(seed, feature.as_bytes());
    let dims = v.len() as u64;
    let index = usize::try_from(h % dims).unwrap_or(0);
    let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
    v[index] += sign * weight;
}

/// The unit-length vector of a text: its lowercased words (weight 1) and the
/// character trigrams of each word (weight 0.25), hashed into `dimensions`
/// buckets with a sign; `model` and `flavor` (Cohere's input type) seed the
/// hash, so models differ and query and document embeddings differ a little.
pub fn vector(model: &str, flavor: &str, text: &str, dimensions: usize) -> Vec<f64> {
    let seed = fnv(0, model.as_bytes());
    let mut v = vec![0.0; dimensions.max(1)];
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    for word in &words {
        add_feature(&mut v, seed, &format!("w:{word}"), 1.0);
        let padded: Vec<char> = format!("^{word}$").chars().collect();
        for gram in padded.windows(3) {
            let gram: String = gram.iter().collect();
            add_feature(&mut v, seed, &format!("g:{gram}"), 0.25);
        }
    }
    if words.is_empty() {
        add_feature(&mut v, seed, &format!("raw:{text}"), 1.0);
    }
    if !flavor.is_empty() {
        add_feature(&mut v, seed, &format!("t:{flavor}"), 0.1);
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Rounds to what a float32 carries, as Bedrock's vectors do, written in the
/// float32's shortest form.
fn f32_value(x: f64) -> Value {
    (x as f32)
        .to_string()
        .parse::<serde_json::Number>()
        .map_or(Value::from(0.0), Value::Number)
}

fn floats(v: &[f64]) -> Value {
    Value::Array(v.iter().map(|x| f32_value(*x)).collect())
}

fn int8(v: &[f64]) -> Vec<i64> {
    let max = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    v.iter()
        .map(|x| {
            if max == 0.0 {
                0
            } else {
                (x / max * 127.0).round().clamp(-128.0, 127.0) as i64
            }
        })
        .collect()
}

/// Sign bits packed eight to a byte, first dimension in the high bit.
fn packed_bits(v: &[f64]) -> Vec<u8> {
    v.chunks(8)
        .map(|chunk| {
            chunk.iter().enumerate().fold(
                0u8,
                |byte, (i, x)| if *x > 0.0 { byte | (0x80 >> i) } else { byte },
            )
        })
        .collect()
}

fn typed(kind: &str, v: &[f64]) -> Value {
    match kind {
        "int8" => json!(int8(v)),
        "uint8" => json!(int8(v).iter().map(|x| x + 128).collect::<Vec<_>>()),
        "binary" => json!(packed_bits(v)
            .iter()
            .map(|b| i64::from(*b as i8))
            .collect::<Vec<_>>()),
        "ubinary" => json!(packed_bits(v)),
        _ => floats(v),
    }
}

/// The response body for `request`, made by `model`.
pub fn response(request: &EmbedRequest, model: &Model) -> Value {
    match &request.format {
        Format::Titan { normalize, types } => {
            let text = request.texts.first().map_or("", String::as_str);
            let mut v = vector(&model.id, "", text, request.dimensions);
            if !normalize {
                // Unnormalized vectors grow with the input, as a model's do.
                let scale = 1.0 + f64::from(request.input_tokens).ln_1p();
                v.iter_mut().for_each(|x| *x *= scale);
            }
            let mut by_type = Map::new();
            for kind in types {
                let value = match kind.as_str() {
                    "binary" => json!(v.iter().map(|x| i64::from(*x > 0.0)).collect::<Vec<_>>()),
                    _ => floats(&v),
                };
                by_type.insert(kind.clone(), value);
            }
            json!({
                "embedding": floats(&v),
                "inputTextTokenCount": request.input_tokens,
                "embeddingsByType": by_type,
            })
        }
        Format::Cohere { input_type, types } => {
            let vectors: Vec<Vec<f64>> = request
                .texts
                .iter()
                .map(|t| vector(&model.id, input_type, t, request.dimensions))
                .collect();
            let id = response_id(&model.id, input_type, &request.texts);
            let (embeddings, response_type) = match types {
                None => (
                    Value::Array(vectors.iter().map(|v| floats(v)).collect()),
                    "embeddings_floats",
                ),
                Some(kinds) => {
                    let mut by_type = Map::new();
                    for kind in kinds {
                        by_type.insert(
                            kind.clone(),
                            Value::Array(vectors.iter().map(|v| typed(kind, v)).collect()),
                        );
                    }
                    (Value::Object(by_type), "embeddings_by_type")
                }
            };
            json!({
                "id": id,
                "texts": request.texts,
                "embeddings": embeddings,
                "response_type": response_type,
            })
        }
    }
}

/// A UUID-shaped id derived from the request, so identical requests answer
/// identically.
fn response_id(model: &str, input_type: &str, texts: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    h.update(input_type.as_bytes());
    for t in texts {
        h.update([0]);
        h.update(t.as_bytes());
    }
    let d = hex::encode(h.finalize());
    format!(
        "{}-{}-4{}-8{}-{}",
        &d[0..8],
        &d[8..12],
        &d[13..16],
        &d[17..20],
        &d[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn model(id: &str) -> std::sync::Arc<Model> {
        Catalog::embedded().resolve(id).unwrap().model
    }

    fn cosine(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn shared_words_bring_texts_closer() {
        let m = "amazon.titan-embed-text-v2:0";
        let a = vector(m, "", "The cat sat on the warm mat.", 1024);
        let b = vector(m, "", "A cat was sitting on the mat.", 1024);
        let c = vector(m, "", "Quarterly revenue exceeded analyst forecasts.", 1024);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-9);
        assert!(cosine(&a, &b) > 0.4, "{}", cosine(&a, &b));
        assert!(cosine(&a, &b) > cosine(&a, &c) + 0.3);
        assert_eq!(a, vector(m, "", "The cat sat on the warm mat.", 1024));
        assert_ne!(
            a,
            vector(
                "cohere.embed-english-v3",
                "",
                "The cat sat on the warm mat.",
                1024
            )
        );
    }

    #[test]
    fn titan_bodies_are_checked_and_answered() {
        let m = model("amazon.titan-embed-text-v2:0");
        let r = request(&json!({"inputText": "hello world", "dimensions": 256, "embeddingTypes": ["float", "binary"]}), &m).unwrap();
        let body = response(&r, &m);
        assert_eq!(body["embedding"].as_array().unwrap().len(), 256);
        assert_eq!(body["inputTextTokenCount"], 3);
        assert_eq!(
            body["embeddingsByType"]["binary"].as_array().unwrap().len(),
            256
        );
        let err = |b: Value| request(&b, &m).unwrap_err().message;
        assert!(err(json!({"inputText": "x", "dimensions": 300}))
            .contains("#/dimensions: 300 is not a valid enum value"));
        assert!(err(json!({"text": "x"})).contains("extraneous key [text]"));
        assert!(err(json!({"inputText": "x".repeat(50_001)})).contains("expected maxLength: 50000"));
        assert!(err(json!({"inputText": "x".repeat(40_000)}))
            .contains("Too many input tokens. Max input tokens: 8192"));
    }

    #[test]
    fn cohere_bodies_are_checked_and_answered() {
        let m = model("cohere.embed-english-v3");
        let r = request(
            &json!({"texts": ["a b", "c d"], "input_type": "search_document"}),
            &m,
        )
        .unwrap();
        let body = response(&r, &m);
        assert_eq!(body["response_type"], "embeddings_floats");
        assert_eq!(body["embeddings"].as_array().unwrap().len(), 2);
        assert_eq!(body["embeddings"][0].as_array().unwrap().len(), 1024);
        assert_eq!(body["texts"], json!(["a b", "c d"]));
        let typed = request(&json!({"texts": ["a"], "input_type": "search_query", "embedding_types": ["int8", "ubinary"]}), &m).unwrap();
        let body = response(&typed, &m);
        assert_eq!(body["response_type"], "embeddings_by_type");
        assert_eq!(
            body["embeddings"]["ubinary"][0].as_array().unwrap().len(),
            128
        );
        let err = |b: Value| request(&b, &m).unwrap_err().message;
        assert!(err(json!({"texts": ["a"]})).contains("required key [input_type] not found"));
        assert!(
            err(json!({"texts": vec!["a"; 97], "input_type": "clustering"}))
                .contains("expected maximum item count: 96, found: 97")
        );
        assert!(
            err(json!({"texts": ["x".repeat(3000)], "input_type": "clustering"}))
                .contains("maxLength: 2048")
        );
        let cut = request(
            &json!({"texts": ["x".repeat(3000)], "input_type": "clustering", "truncate": "END"}),
            &m,
        )
        .unwrap();
        assert_eq!(cut.texts[0].len(), 2048);
    }
}
