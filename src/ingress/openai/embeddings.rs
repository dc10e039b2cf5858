//! `POST /v1/embeddings`: OpenAI's embeddings request turned into InvokeModel
//! calls on a Bedrock embedding model (Amazon Titan Text Embeddings v2, one text
//! per call, fanned out concurrently; Cohere Embed v3, up to the catalog's
//! `max_batch` texts per call), and the vectors answered in OpenAI's shape,
//! as floats or base64 little-endian `f32`s. Each call goes through the
//! pipeline like any InvokeModel request, so the response cache answers a
//! repeated text (and shares the entry with the same InvokeModel body sent
//! on Bedrock's own path).

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use base64::Engine;
use bedrock_wire::converse::{Summary, Usage};
use bedrock_wire::operation::Operation;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::error_response;
use crate::answer::Answer;
use crate::catalog::{EmbeddingInfo, ModelKind};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::ingress::{
    handled, json_answer, parse_json, receive, route_translated, run_many, Finish,
};
use crate::json_body::JsonBody;
use crate::pipeline::Call;
use crate::state::AppState;

/// Cohere's `input_type` when the request names none: texts being embedded
/// for a store are documents (the usual reason to call embeddings).
const COHERE_DEFAULT_INPUT_TYPE: &str = "search_document";

/// The embedding model families the proxy translates for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Titan,
    Cohere,
}

impl Family {
    fn of(model_id: &str) -> Option<Family> {
        // Inference profiles prefix a region group (`us.`); the family is after it.
        if model_id.contains("amazon.titan-embed-text") {
            Some(Family::Titan)
        } else if model_id.contains("cohere.embed") {
            Some(Family::Cohere)
        } else {
            None
        }
    }
}

/// How the vectors are written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Float,
    Base64,
}

/// An embeddings request, checked.
#[derive(Debug, Clone, PartialEq)]
struct EmbedRequest {
    model: String,
    texts: Vec<String>,
    encoding: Encoding,
    dimensions: Option<u32>,
    input_type: Option<String>,
}

fn invalid(message: impl Into<String>, param: &str) -> ProxyError {
    ProxyError::new(ErrorKind::Validation, Side::Client, message).with_param(param)
}

fn parse(json: &Value) -> Result<EmbedRequest, ProxyError> {
    let obj = json
        .as_object()
        .ok_or_else(|| invalid("The request body must be a JSON object.", "body"))?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(invalid("`model` must be a non-empty string.", "model")),
        None => return Err(invalid("Missing required parameter: 'model'.", "model")),
    };
    let texts = match obj.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                // Token arrays are OpenAI's tokenizer's ids, which mean nothing to
                // a Bedrock model.
                Value::Array(_) | Value::Number(_) => Err(invalid(
                    "This proxy takes `input` as text (a string or a list of strings); token arrays are not supported.",
                    "input",
                )),
                _ => Err(invalid("`input` must be a string or a list of strings.", "input")),
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => return Err(invalid("`input` must not be an empty list.", "input")),
        Some(_) => return Err(invalid("`input` must be a string or a list of strings.", "input")),
        None => return Err(invalid("Missing required parameter: 'input'.", "input")),
    };
    if texts.iter().any(String::is_empty) {
        return Err(invalid("`input` cannot contain an empty string.", "input"));
    }
    let encoding = match obj.get("encoding_format") {
        None | Some(Value::Null) => Encoding::Float,
        Some(Value::String(s)) if s == "float" => Encoding::Float,
        Some(Value::String(s)) if s == "base64" => Encoding::Base64,
        Some(other) => {
            return Err(invalid(
                format!("`encoding_format` must be 'float' or 'base64', not {other}."),
                "encoding_format",
            ))
        }
    };
    let dimensions = match obj.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|d| u32::try_from(d).ok())
                .filter(|d| *d > 0)
                .ok_or_else(|| invalid("`dimensions` must be a positive integer.", "dimensions"))?,
        ),
    };
    // Not OpenAI's: Cohere's input type, for callers that know the model.
    let input_type = match obj.get("input_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("`input_type` must be a string.", "input_type")),
    };
    Ok(EmbedRequest {
        model,
        texts,
        encoding,
        dimensions,
        input_type,
    })
}

/// The InvokeModel bodies for `request` on a model of `family`, in order.
fn bodies(
    request: &EmbedRequest,
    family: Family,
    info: &EmbeddingInfo,
) -> Result<Vec<Value>, ProxyError> {
    let dimensions = request.dimensions.unwrap_or(info.default_dimensions);
    if !info.dimensions.contains(&dimensions) {
        let offered: Vec<String> = info.dimensions.iter().map(u32::to_string).collect();
        return Err(invalid(
            format!(
                "This model does not offer {dimensions} dimensions; it offers {}.",
                offered.join(", ")
            ),
            "dimensions",
        ));
    }
    match family {
        Family::Titan => {
            if request.input_type.is_some() {
                return Err(invalid(
                    "`input_type` is for Cohere Embed models.",
                    "input_type",
                ));
            }
            Ok(request
                .texts
                .iter()
                .map(|t| json!({ "inputText": t, "dimensions": dimensions, "normalize": true }))
                .collect())
        }
        Family::Cohere => {
            let input_type = request
                .input_type
                .as_deref()
                .unwrap_or(COHERE_DEFAULT_INPUT_TYPE);
            let batch = usize::try_from(info.max_batch.max(1)).unwrap_or(1);
            Ok(request
                .texts
                .chunks(batch)
                .map(|texts| json!({ "texts": texts, "input_type": input_type }))
                .collect())
        }
    }
}

/// The vectors of one answer body.
fn vectors(family: Family, body: &Value) -> Result<Vec<Vec<f64>>, ProxyError> {
    let floats =
        |v: &Value| -> Option<Vec<f64>> { v.as_array()?.iter().map(Value::as_f64).collect() };
    let found = match family {
        Family::Titan => floats(&body["embedding"]).map(|v| vec![v]),
        Family::Cohere => {
            let list = match &body["embeddings"] {
                Value::Object(by_type) => by_type.get("float").cloned().unwrap_or(Value::Null),
                other => other.clone(),
            };
            list.as_array()
                .and_then(|items| items.iter().map(floats).collect())
        }
    };
    found.ok_or_else(|| ProxyError::internal("the embedding model's answer has no vectors"))
}

fn encode(vector: &[f64], encoding: Encoding) -> Value {
    match encoding {
        Encoding::Float => json!(vector),
        Encoding::Base64 => {
            // OpenAI's base64 is the little-endian float32 array.
            #[allow(clippy::cast_possible_truncation)]
            let bytes: Vec<u8> = vector
                .iter()
                .flat_map(|x| (*x as f32).to_le_bytes())
                .collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(state): State<AppState>, request: Request) -> Response {
    let finish = Finish::new(bedrock_wire::new_shared_request_id(), Instant::now());
    handled(
        finish,
        request,
        "embeddings",
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
    let request = parse(&json)?;
    finish.op = Operation::Invoke;
    let (routed, _) = route_translated(&rt, &principal, finish, &request.model, |model| {
        format!("The model `{model}` does not exist or you do not have access to it.")
    })?;
    let model = rt
        .catalog
        .get(&routed.upstream_model)
        .map(|l| l.model.clone());
    let info = model
        .as_ref()
        .filter(|m| m.kind == ModelKind::Embedding)
        .and_then(|m| m.embedding.clone());
    let (Some(info), Some(family)) = (info, Family::of(&routed.upstream_model)) else {
        return Err(invalid(
            format!(
                "The model `{}` is not an embedding model this proxy can serve (Amazon Titan Text Embeddings v2, Cohere Embed v3).",
                request.model
            ),
            "model",
        ));
    };
    let calls: Vec<Call> = bodies(&request, family, &info)?
        .into_iter()
        .map(JsonBody::from_value)
        .map(|json| Call {
            op: Operation::Invoke,
            principal: principal.clone(),
            routed: routed.clone(),
            body: json.raw().clone(),
            json: Some(json),
            forward: vec![
                (
                    HeaderName::from_static("content-type"),
                    HeaderValue::from_static("application/json"),
                ),
                (
                    HeaderName::from_static("accept"),
                    HeaderValue::from_static("application/json"),
                ),
            ],
            started: finish.started,
            trace: finish.trace.clone(),
        })
        .collect();
    let answers = run_many(state, &rt, calls, &parts.headers, finish).await?;
    let mut data = Vec::with_capacity(request.texts.len());
    let mut usage = Usage::default();
    let mut summary = Summary::default();
    for answer in answers {
        let Answer::Whole {
            body, summary: one, ..
        } = answer
        else {
            return Err(ProxyError::internal(
                "the embedding model answered with a stream",
            ));
        };
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| ProxyError::internal(format!("the upstream answer is not JSON: {e}")))?;
        let mut input_tokens = one.usage.as_ref().map_or(0, |u| u.input_tokens);
        if input_tokens == 0 {
            input_tokens = body["inputTextTokenCount"].as_u64().unwrap_or(0);
        }
        usage.input_tokens += input_tokens;
        summary.latency_tier = summary.latency_tier.or(one.latency_tier);
        summary.service_tier = summary.service_tier.or(one.service_tier);
        for vector in vectors(family, &body)? {
            data.push(json!({
                "object": "embedding",
                "index": data.len(),
                "embedding": encode(&vector, request.encoding),
            }));
        }
    }
    if data.len() != request.texts.len() {
        return Err(ProxyError::internal(format!(
            "the embedding model answered {} vectors for {} texts",
            data.len(),
            request.texts.len()
        )));
    }
    usage.total_tokens = usage.input_tokens;
    let response = json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": { "prompt_tokens": usage.input_tokens, "total_tokens": usage.total_tokens },
    });
    summary.usage = Some(usage);
    Ok(json_answer(finish, &response, &summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn titan() -> EmbeddingInfo {
        EmbeddingInfo {
            dimensions: vec![256, 512, 1024],
            default_dimensions: 1024,
            max_input_tokens: 8192,
            max_input_chars: 50_000,
            max_batch: 1,
        }
    }

    #[test]
    fn requests_are_checked_with_the_param_they_are_about() {
        let err = |j: Value| parse(&j).unwrap_err();
        assert_eq!(err(json!({"input": "x"})).param.as_deref(), Some("model"));
        assert_eq!(err(json!({"model": "m"})).param.as_deref(), Some("input"));
        assert_eq!(
            err(json!({"model": "m", "input": [[1, 2]]}))
                .param
                .as_deref(),
            Some("input")
        );
        assert_eq!(
            err(json!({"model": "m", "input": []})).param.as_deref(),
            Some("input")
        );
        assert_eq!(
            err(json!({"model": "m", "input": "x", "encoding_format": "int8"}))
                .param
                .as_deref(),
            Some("encoding_format")
        );
        let r = parse(&json!({"model": "m", "input": ["a", "b"], "dimensions": 256, "encoding_format": "base64"})).unwrap();
        assert_eq!(r.texts, vec!["a", "b"]);
        assert_eq!((r.dimensions, r.encoding), (Some(256), Encoding::Base64));
    }

    #[test]
    fn titan_takes_one_text_per_call_and_cohere_batches() {
        let r = parse(&json!({"model": "m", "input": ["a", "b", "c"], "dimensions": 256})).unwrap();
        let b = bodies(&r, Family::Titan, &titan()).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(
            b[2],
            json!({"inputText": "c", "dimensions": 256, "normalize": true})
        );
        let bad = parse(&json!({"model": "m", "input": "a", "dimensions": 300})).unwrap();
        assert_eq!(
            bodies(&bad, Family::Titan, &titan())
                .unwrap_err()
                .param
                .as_deref(),
            Some("dimensions")
        );
        let cohere = EmbeddingInfo {
            dimensions: vec![1024],
            default_dimensions: 1024,
            max_batch: 2,
            ..titan()
        };
        let b = bodies(&r, Family::Cohere, &cohere).unwrap_err();
        assert_eq!(b.param.as_deref(), Some("dimensions"));
        let r =
            parse(&json!({"model": "m", "input": ["a", "b", "c"], "input_type": "search_query"}))
                .unwrap();
        let b = bodies(&r, Family::Cohere, &cohere).unwrap();
        assert_eq!(
            b,
            vec![
                json!({"texts": ["a", "b"], "input_type": "search_query"}),
                json!({"texts": ["c"], "input_type": "search_query"}),
            ]
        );
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let Value::String(s) = encode(&[1.0, -0.5], Encoding::Base64) else {
            panic!("not a string");
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        let back: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, vec![1.0, -0.5]);
    }

    #[test]
    fn cohere_answers_in_either_shape() {
        let plain = json!({"embeddings": [[0.1, 0.2], [0.3, 0.4]]});
        let typed = json!({"embeddings": {"float": [[0.1, 0.2]]}});
        assert_eq!(vectors(Family::Cohere, &plain).unwrap().len(), 2);
        assert_eq!(
            vectors(Family::Cohere, &typed).unwrap(),
            vec![vec![0.1, 0.2]]
        );
        assert!(vectors(Family::Titan, &plain).is_err());
    }
}
