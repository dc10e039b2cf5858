//! The Bedrock Runtime operations that are not model calls: ApplyGuardrail,
//! InvokeGuardrailChecks, StartAsyncInvoke, GetAsyncInvoke and
//! ListAsyncInvokes. They pass through to an upstream as sent (re-signed for
//! the proxy's credentials), never cached, with the same auth, limits, key
//! checks, deadlines, metrics and access log as the model operations. The
//! bidirectional stream is [`super::bidi`]'s.
//!
//! Which upstream serves them (documented in docs/APIS.md): StartAsyncInvoke
//! names a model, so it is routed like one (its route's upstream, the model
//! id rewritten to the route's upstream model); GetAsyncInvoke goes to the
//! Bedrock upstream in its ARN's region; the rest, and GetAsyncInvoke when no
//! upstream is in that region, go to `server.operations_upstream` (by default
//! the first route's upstream).
//!
//! Async invocations belong to the tenant that started them: the proxy tags
//! the `clientRequestToken` it sends with the tenant, so GetAsyncInvoke and
//! ListAsyncInvokes show a tenant its own jobs only, on every replica, with no
//! state kept (`auth = "none"` has one tenant and sends the token untouched).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bedrock_wire::catalog::arn_resource;
use bedrock_wire::operation::RuntimeOperation;
use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::time::Instant;

use super::{parse_json, route, Finish};
use crate::answer::ServedBy;
use crate::auth::Principal;
use crate::config::ANONYMOUS_TENANT;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::limits::Outcome;
use crate::log_tag::{Tag, Tagged};
use crate::metrics;
use crate::runtime::Runtime;
use crate::state::AppState;
use crate::upstream::{passed_headers, read_body, Upstream};

/// The routes of the operations this module serves.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/guardrail/{guardrail_id}/version/{guardrail_version}/apply",
            post(apply_guardrail),
        )
        .route("/guardrail-checks/invoke", post(guardrail_checks))
        .route("/async-invoke", post(start_async).get(list_async))
        .route("/async-invoke/{invocation_arn}", get(get_async))
}

/// The largest answer read from an upstream for these operations.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

async fn apply_guardrail(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    let op = RuntimeOperation::ApplyGuardrail;
    let (mut finish, tag) = begin(op);
    let result = async {
        let Path((id, version)) = path.map_err(bad_path)?;
        let (rt, parts, body, principal) = receive(&state, &mut finish, request).await?;
        principal.admit_guardrail(op.api_name(), guardrail_id(&id), Some(&version))?;
        let upstream = operations_upstream(&rt)?;
        pass(&mut finish, &upstream, &parts, body, None).await
    }
    .tagged(tag)
    .await;
    end(&finish, op, result)
}

async fn guardrail_checks(State(state): State<AppState>, request: Request) -> Response {
    let op = RuntimeOperation::InvokeGuardrailChecks;
    let (mut finish, tag) = begin(op);
    let result = async {
        let (rt, parts, body, principal) = receive(&state, &mut finish, request).await?;
        principal.admit_guardrail_checks()?;
        let upstream = operations_upstream(&rt)?;
        pass(&mut finish, &upstream, &parts, body, None).await
    }
    .tagged(tag)
    .await;
    end(&finish, op, result)
}

async fn start_async(State(state): State<AppState>, request: Request) -> Response {
    let op = RuntimeOperation::StartAsyncInvoke;
    let (mut finish, tag) = begin(op);
    let result = async {
        let (rt, parts, body, principal) = receive(&state, &mut finish, request).await?;
        let mut json = parse_json(&body, rt.config.limits.max_json_depth)?;
        let Some(model_id) = json["modelId"].as_str().map(str::to_owned) else {
            return Err(ProxyError::validation(
                "1 validation error detected: Value null at 'modelId' failed to satisfy constraint: Member must not be null",
            ));
        };
        let routed = route(&rt, &principal, &model_id, &mut finish)?;
        principal.admit_async_model(&[&model_id, &routed.route.name, &routed.upstream_model])?;
        let upstream = rt
            .upstreams
            .get(&routed.route.config.upstream)
            .filter(|u| u.config.kind.is_bedrock())
            .cloned()
            .ok_or_else(|| {
                ProxyError::validation(format!(
                    "The provided model {model_id} doesn't support StartAsyncInvoke: route {} does not send to Bedrock.",
                    routed.route.name
                ))
            })?;
        json["modelId"] = Value::String(routed.upstream_model.to_string());
        if let Some(tag) = TenantTag::of(&principal) {
            let token = json["clientRequestToken"].as_str().map(str::to_owned);
            json["clientRequestToken"] = Value::String(tag.token(token.as_deref()));
        }
        let body = Bytes::from(json.to_string());
        pass(&mut finish, &upstream, &parts, body, Some(&routed.upstream_model)).await
    }
    .tagged(tag)
    .await;
    end(&finish, op, result)
}

async fn get_async(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let op = RuntimeOperation::GetAsyncInvoke;
    let (mut finish, tag) = begin(op);
    let result = async {
        let Path(arn) = path.map_err(bad_path)?;
        let (rt, parts, body, principal) = receive(&state, &mut finish, request).await?;
        // An async invocation lives in one region: ask the upstream there.
        let region = arn.split(':').nth(3).unwrap_or_default();
        let upstream = match rt
            .upstreams
            .iter()
            .find(|u| u.config.kind.is_bedrock() && u.config.region == region)
        {
            Some(u) => u.clone(),
            None => operations_upstream(&rt)?,
        };
        let tag = TenantTag::of(&principal);
        let mut response = pass(&mut finish, &upstream, &parts, body, None).await?;
        if let Some(tag) = tag.filter(|_| response.status() == StatusCode::OK) {
            let owned = edit_json(&mut response, |v| tag.claim(v)).await?;
            if !owned {
                return Err(ProxyError::validation(format!(
                    "The async invocation {arn} does not exist."
                )));
            }
        }
        Ok(response)
    }
    .tagged(tag)
    .await;
    end(&finish, op, result)
}

async fn list_async(State(state): State<AppState>, request: Request) -> Response {
    let op = RuntimeOperation::ListAsyncInvokes;
    let (mut finish, tag) = begin(op);
    let result = async {
        let (rt, parts, body, principal) = receive(&state, &mut finish, request).await?;
        let upstream = operations_upstream(&rt)?;
        let tag = TenantTag::of(&principal);
        let mut response = pass(&mut finish, &upstream, &parts, body, None).await?;
        if let Some(tag) = tag.filter(|_| response.status() == StatusCode::OK) {
            edit_json(&mut response, |v| {
                if let Some(list) = v["asyncInvokeSummaries"].as_array_mut() {
                    list.retain_mut(|s| tag.claim(s));
                }
                true
            })
            .await?;
        }
        Ok(response)
    }
    .tagged(tag)
    .await;
    end(&finish, op, result)
}

fn bad_path(e: PathRejection) -> ProxyError {
    ProxyError::validation(format!("The request path is invalid: {e}"))
}

/// A request's head.
type Parts = axum::http::request::Parts;

/// A request's books and the tag its log lines carry.
pub(crate) fn begin(op: RuntimeOperation) -> (Finish, Tag) {
    let finish = Finish::new(bedrock_wire::new_shared_request_id(), Instant::now());
    let tag = Tag::new(finish.request_id.clone(), op.label());
    (finish, tag)
}

/// The response to an operation, with the proxy's headers; its books closed
/// (metrics, access log, limits).
pub(crate) fn end(
    finish: &Finish,
    op: RuntimeOperation,
    result: Result<Response, ProxyError>,
) -> Response {
    let mut response = match result {
        Ok(response) => response,
        Err(e) => e.bedrock_response(&finish.request_id),
    };
    finish.headers(response.headers_mut(), None);
    let status = response.status().as_u16();
    let outcome = match response
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
    {
        Some(kind) => kind.split(':').next().unwrap_or(kind).to_owned(),
        None => "ok".to_owned(),
    };
    books(finish, op, status, &outcome);
    response
}

/// The metrics and access-log line of a finished operation, and its limits
/// settled (these operations report no tokens).
pub(crate) fn books(finish: &Finish, op: RuntimeOperation, status: u16, outcome: &str) {
    finish.limits.settle(if status < 400 {
        Outcome::Answered {
            usage: bedrock_wire::converse::Usage::default(),
            price: None,
            cache_hit: false,
        }
    } else {
        Outcome::Failed
    });
    let route = match &finish.route {
        Some(name) => metrics::route_label(name),
        None => metrics::SharedString::const_str(metrics::UNROUTED),
    };
    if finish.route.is_none() && status >= 400 && status != 404 {
        metrics::rejected(outcome_label(status));
    }
    metrics::operation_done(&route, op.label(), status, finish.started.elapsed());
    tracing::info!(
        target: "access",
        request_id = %finish.request_id,
        tenant = finish.tenant.as_deref().unwrap_or("-"),
        route = finish.route.as_deref().unwrap_or("-"),
        operation = op.label(),
        status,
        cache = "bypass",
        outcome,
        upstream = finish.record.served_by.as_ref().map_or("-", |s| &*s.upstream),
        duration_ms = finish.started.elapsed().as_secs_f64() * 1000.0,
    );
}

/// A bounded label for a refusal before routing.
fn outcome_label(status: u16) -> &'static str {
    match status {
        401 | 403 => "unauthorized",
        429 => "throttled",
        _ => "invalid",
    }
}

/// Authenticates, admits and reads the body of a request, under the
/// runtime (config, keys, upstreams) it is served by.
async fn receive(
    state: &AppState,
    finish: &mut Finish,
    request: Request,
) -> Result<(Arc<Runtime>, Parts, Bytes, Arc<Principal>), ProxyError> {
    let rt = state.runtime();
    let (parts, body) = request.into_parts();
    let (body, principal) = super::receive(state, &rt, &parts, body, finish).await?;
    Ok((rt, parts, body, principal))
}

/// The upstream of the operations that name no model.
pub(crate) fn operations_upstream(rt: &Runtime) -> Result<Arc<Upstream>, ProxyError> {
    let name = rt
        .config
        .server
        .operations_upstream
        .as_deref()
        .or_else(|| rt.config.routes.first().map(|r| r.upstream.as_str()));
    name.and_then(|n| rt.upstreams.get(n))
        .filter(|u| u.config.kind.is_bedrock())
        .cloned()
        .ok_or_else(|| {
            ProxyError::new(
                ErrorKind::Unavailable,
                Side::Internal,
                "This proxy has no Bedrock upstream for operations that name no model: set server.operations_upstream.",
            )
        })
}

/// A guardrail identifier as the key config names it: the id, also when the
/// client sent the guardrail's ARN.
pub(crate) fn guardrail_id(identifier: &str) -> &str {
    arn_resource(identifier)
        .map(|r| r.strip_prefix("guardrail/").unwrap_or(r))
        .unwrap_or(identifier)
}

/// Sends the request upstream as received (path, query, body; the headers
/// Bedrock reads), and answers with what came back: status, body and
/// Bedrock's headers, untouched.
async fn pass(
    finish: &mut Finish,
    upstream: &Upstream,
    parts: &Parts,
    body: Bytes,
    model: Option<&str>,
) -> Result<Response, ProxyError> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let forward: Vec<(HeaderName, HeaderValue)> = ["content-type", "accept"]
        .iter()
        .filter_map(|name| {
            let value = parts.headers.get(*name)?;
            Some((HeaderName::from_static(name), value.clone()))
        })
        .collect();
    let deadline = finish.started + upstream.timeouts().total;
    finish.record.served_by = Some(ServedBy {
        upstream: upstream.name.clone(),
        kind: upstream.config.kind,
        model: Arc::from(model.unwrap_or("-")),
    });
    let answer = upstream
        .send_path(parts.method.clone(), path, body, &forward, deadline)
        .await?;
    let bytes = read_body(answer.body, MAX_ANSWER_BYTES, deadline, &upstream.name).await?;
    let mut headers = passed_headers(&answer.headers);
    if let Some(kind) = answer.headers.get("x-amzn-errortype") {
        headers.insert("x-amzn-errortype", kind.clone());
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = answer.status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Edits a whole JSON answer in place; `edit` says whether the answer stands.
async fn edit_json(
    response: &mut Response,
    edit: impl FnOnce(&mut Value) -> bool,
) -> Result<bool, ProxyError> {
    let body = std::mem::take(response.body_mut());
    let bytes = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| ProxyError::internal(format!("reading the upstream answer: {e}")))?;
    let mut json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ProxyError::internal(format!("the upstream answer is not JSON: {e}")))?;
    let stands = edit(&mut json);
    let out = json.to_string();
    response.headers_mut().remove("content-length");
    *response.body_mut() = Body::from(out);
    Ok(stands)
}

/// The mark a tenant's async invocations carry in their `clientRequestToken`
/// (which Bedrock keeps and reports): `p` and 10 hex digits of the tenant's
/// SHA-256, then `-`. Tokens are `[a-zA-Z0-9](-*[a-zA-Z0-9])*`, up to 256.
#[derive(Debug)]
struct TenantTag(String);

/// The longest token Bedrock accepts.
const MAX_TOKEN: usize = 256;

impl TenantTag {
    /// The tag of `principal`'s tenant; `None` for the anonymous tenant of
    /// `auth = "none"` (one tenant: nothing to keep apart).
    fn of(principal: &Principal) -> Option<TenantTag> {
        if &*principal.tenant == ANONYMOUS_TENANT {
            return None;
        }
        let digest = Sha256::digest(principal.tenant.as_bytes());
        Some(TenantTag(format!("p{}-", &hex::encode(digest)[..10])))
    }

    /// The token sent upstream for the client's `token` (a fresh one when it
    /// sent none; its SHA-256 when the tag would make it too long, which keeps
    /// retries of one request idempotent).
    fn token(&self, token: Option<&str>) -> String {
        match token {
            Some(t) if self.0.len() + t.len() <= MAX_TOKEN => format!("{}{t}", self.0),
            Some(t) => format!("{}{}", self.0, hex::encode(Sha256::digest(t.as_bytes()))),
            None => format!("{}{}", self.0, uuid::Uuid::new_v4()),
        }
    }

    /// Whether an invocation (a GetAsyncInvoke answer, or a summary of
    /// ListAsyncInvokes) is this tenant's; if so, its token is given back as
    /// the client sent it.
    fn claim(&self, invocation: &mut Value) -> bool {
        let Some(token) = invocation["clientRequestToken"].as_str() else {
            return false;
        };
        match token.strip_prefix(&self.0) {
            Some(own) => {
                invocation["clientRequestToken"] = Value::String(own.to_owned());
                true
            }
            None => false,
        }
    }
}

/// InvokeModel's guardrail headers and Converse's `guardrailConfig` name a
/// guardrail: the key must be allowed it. `guardrail_config` is the body's
/// `guardrailConfig` member.
pub(crate) fn admit_model_guardrail(
    principal: &Principal,
    op: bedrock_wire::operation::Operation,
    headers: &HeaderMap,
    guardrail_config: Option<&Value>,
) -> Result<(), ProxyError> {
    const ID: HeaderName = HeaderName::from_static("x-amzn-bedrock-guardrailidentifier");
    const VERSION: HeaderName = HeaderName::from_static("x-amzn-bedrock-guardrailversion");
    let header = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let (id, version) = match header(ID) {
        Some(id) => (Some(id), header(VERSION)),
        None => {
            let config = guardrail_config;
            (
                config.and_then(|c| c["guardrailIdentifier"].as_str()),
                config.and_then(|c| c["guardrailVersion"].as_str()),
            )
        }
    };
    match id {
        Some(id) => principal.admit_guardrail(
            RuntimeOperation::from(op).api_name(),
            guardrail_id(id),
            version,
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn guardrail_arns_name_their_id() {
        assert_eq!(guardrail_id("demoguardrail"), "demoguardrail");
        assert_eq!(
            guardrail_id("arn:aws:bedrock:us-east-2:111122223333:guardrail/abc123xyz"),
            "abc123xyz"
        );
    }

    #[test]
    fn a_tenant_claims_only_its_own_invocations_and_sees_its_own_token() {
        let mine = TenantTag("pabcdef0123-".into());
        let theirs = TenantTag("p9999999999-".into());
        let sent = mine.token(Some("my-token-1"));
        assert_eq!(sent, "pabcdef0123-my-token-1");
        let mut job = json!({"invocationArn": "arn", "clientRequestToken": sent});
        assert!(!theirs.claim(&mut job.clone()));
        assert!(mine.claim(&mut job));
        assert_eq!(job["clientRequestToken"], "my-token-1");
        assert!(!mine.claim(&mut json!({"invocationArn": "arn"})));
        // Too long with the tag: hashed, still within Bedrock's limit and
        // the same for a retry of the same request.
        let long = "a".repeat(250);
        assert_eq!(mine.token(Some(&long)).len(), 12 + 64);
        assert_eq!(mine.token(Some(&long)), mine.token(Some(&long)));
        assert!(mine.token(None).starts_with("pabcdef0123-"));
    }
}
