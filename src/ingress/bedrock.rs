//! The Bedrock Runtime paths (`/model/{modelId}/converse`, `/converse-stream`,
//! `/invoke`, `/invoke-with-response-stream`, `/count-tokens`), so any AWS SDK
//! pointed at the proxy works unchanged: same bytes in, same bytes, frames and
//! errors out, plus the proxy's `x-proxy-*` headers.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use bedrock_wire::operation::Operation;
use bedrock_wire::tier::{LatencyTier, LATENCY_HEADER, SERVICE_TIER_HEADER};
use percent_encoding::percent_decode_str;
use std::borrow::Cow;
use tokio::time::Instant;

use super::gate::Gate;
use super::{failed, receive_for, route, run, start_trace, Finish};
use crate::answer::Answer;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::json_body::JsonBody;
use crate::log_tag::{self, Tag};
use crate::pipeline::Call;
use crate::state::AppState;
use crate::stream::to_bedrock_client;

/// The Bedrock Runtime routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/model/{model_id}/{operation}", post(handle))
}

/// InvokeModel's request header members, passed to the upstream as sent (and,
/// but for those `cache::key::INVOKE_HEADERS_OUT` names, part of the cache key).
pub const FORWARDED: [&str; 9] = [
    "content-type",
    "accept",
    "x-amzn-bedrock-accept",
    "x-amzn-bedrock-trace",
    "x-amzn-bedrock-guardrailidentifier",
    "x-amzn-bedrock-guardrailversion",
    LATENCY_HEADER,
    SERVICE_TIER_HEADER,
    "x-amzn-bedrock-request-metadata",
];

/// The model id and operation segments of a `/model/{model_id}/{operation}`
/// path, as sent (still percent-encoded).
fn segments(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix("/model/")
        .and_then(|rest| rest.split_once('/'))
}

/// The model id and operation of a `/model/{model_id}/{operation}` path,
/// percent-decoded as axum's `Path` would, without allocating when nothing
/// is escaped (a plain model id).
fn model_path(path: &str) -> Result<(Cow<'_, str>, Cow<'_, str>), ProxyError> {
    let invalid = |what: &str| {
        ProxyError::validation(format!(
            "The request path is invalid: {what} is not valid percent-encoded UTF-8."
        ))
    };
    let (model_id, operation) = segments(path).ok_or_else(|| invalid("the path"))?;
    let model_id = percent_decode_str(model_id)
        .decode_utf8()
        .map_err(|_| invalid("the model id"))?;
    let operation = percent_decode_str(operation)
        .decode_utf8()
        .map_err(|_| invalid("the operation"))?;
    Ok((model_id, operation))
}

/// Whether `path` is one of the model operations [`handle`] serves, exactly as
/// the router would match it (a non-empty model id, one operation segment):
/// the guard sends such a `POST` here without the router's lookup.
pub(super) fn is_model_operation(path: &str) -> bool {
    segments(path)
        .is_some_and(|(model, op)| !model.is_empty() && Operation::from_name(op).is_some())
}

pub(super) async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let gate = request.extensions().get::<Gate>().cloned();
    handle_gated(&state, request, gate).await
}

/// [`handle`] with the guard's gate (see [`super::guard`]) given directly.
pub(super) async fn handle_gated(
    state: &AppState,
    request: Request,
    gate: Option<Gate>,
) -> Response {
    let started = Instant::now();
    let mut finish = Finish::new(bedrock_wire::new_shared_request_id(), started);
    // Read from the URI rather than with `Path<(String, String)>`: two
    // strings fewer per request.
    let uri = request.uri().clone();
    let result = match model_path(uri.path()) {
        Ok((model_id, operation)) => match Operation::from_name(&operation) {
            Some(op) => {
                finish.op = op;
                start_trace(&mut finish, request.headers(), op.name());
                let tag = Tag::new(finish.request_id.clone(), op.name());
                let served = serve(state, &mut finish, op, &model_id, request, gate.as_ref());
                log_tag::scope(tag, served).await
            }
            None => Err(ProxyError::new(
                ErrorKind::NotFound,
                Side::Client,
                format!(
                    "Unknown operation `{operation}`: Bedrock Runtime's model operations are converse, converse-stream, invoke, invoke-with-response-stream and count-tokens."
                ),
            )),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(response) => response,
        Err(e) => failed(&finish, &e, |e, id| e.bedrock_response(id)),
    }
}

async fn serve(
    state: &AppState,
    finish: &mut Finish,
    op: Operation,
    model_id: &str,
    request: Request,
    gate: Option<&Gate>,
) -> Result<Response, ProxyError> {
    let rt = state.runtime();
    let (parts, body) = request.into_parts();
    // The path names the model, so the route's limits are decided from the
    // headers too (an unknown model is reported after authentication).
    let path_route = rt.routes.resolve(model_id).ok().map(|r| r.route);
    let (body, principal) = receive_for(
        state,
        &rt,
        &parts,
        body,
        path_route.as_deref(),
        gate,
        finish,
    )
    .await?;
    let routed = route(&rt, &principal, model_id, finish)?;

    // InvokeModel bodies are model-native. A body declared JSON must parse; the
    // AWS SDKs send JSON bodies as application/octet-stream unless told
    // otherwise, so those are read as JSON when they are, and passed through
    // untouched when they are not. Reading validates the text and parses its
    // few small members; the tree is built only if a stage asks for it.
    let limits = &rt.config.limits;
    let content_type = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let declared_json = content_type.is_none_or(|ct| ct.contains("json"));
    let looks_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let read = || JsonBody::parse(body.clone(), limits.max_json_depth);
    let json = match op {
        Operation::Converse | Operation::ConverseStream | Operation::CountTokens => Some(read()?),
        Operation::Invoke | Operation::InvokeStream if declared_json => Some(read()?),
        Operation::Invoke | Operation::InvokeStream if looks_json => read().ok(),
        _ => None,
    };
    super::operations::admit_model_guardrail(
        &principal,
        op,
        &parts.headers,
        json.as_ref().and_then(|j| j.head_member("guardrailConfig")),
    )?;
    let forward = match op {
        Operation::Invoke | Operation::InvokeStream => FORWARDED
            .iter()
            .filter_map(|name| {
                let value = parts.headers.get(*name)?;
                Some((HeaderName::from_static(name), value.clone()))
            })
            .collect(),
        _ => Vec::new(),
    };
    let call = Call {
        op,
        principal,
        routed,
        body,
        json,
        forward,
        started: finish.started,
        trace: finish.trace.clone(),
    };
    Ok(match run(state, &rt, call, &parts.headers, finish).await? {
        Answer::Whole {
            mut headers,
            body,
            summary,
        } => {
            finish.headers(&mut headers, summary.latency_tier);
            finish.whole(&summary);
            let mut response = Response::new(Body::from(body));
            *response.headers_mut() = headers;
            response
        }
        Answer::Stream {
            mut headers,
            frames,
            joined,
        } => {
            let tier = headers
                .get(LATENCY_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(LatencyTier::parse);
            finish.headers(&mut headers, tier);
            let observer = finish.stream_observer();
            let mut response = Response::new(Body::from_stream(to_bedrock_client(
                frames, joined, observer,
            )));
            *response.status_mut() = StatusCode::OK;
            *response.headers_mut() = headers;
            response
        }
    })
}
