//! The stored responses of the caller's tenant: `GET /v1/responses/{id}`,
//! `DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`
//! (OpenAI's list: `order`, `limit`, `after`). Keys and tenants are resolved
//! as for every `/v1` endpoint; another tenant's id, like an unknown or
//! expired one, is OpenAI's 404.

use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::time::Instant;

use super::super::error_with_code;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::ingress::{failed, receive, Finish};
use crate::responses_store::Stored;
use crate::state::AppState;

/// OpenAI's error object; an unknown response's 404 has the code `not_found`.
fn render(e: &ProxyError, request_id: &str) -> Response {
    let code = (e.kind == ErrorKind::NotFound).then_some("not_found");
    error_with_code(e, request_id, code)
}

fn not_found(id: &str) -> ProxyError {
    ProxyError::new(
        ErrorKind::NotFound,
        Side::Client,
        format!("Response with id '{id}' not found."),
    )
}

/// Authenticates the caller and runs `work` with its tenant.
async fn serve<F, Fut>(state: AppState, request: Request, work: F) -> Response
where
    F: FnOnce(AppState, Arc<str>, axum::http::request::Parts) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ProxyError>>,
{
    let mut finish = Finish::new(bedrock_wire::new_shared_request_id(), Instant::now());
    let rt = state.runtime();
    let (parts, body) = request.into_parts();
    let principal = match receive(&state, &rt, &parts, body, &mut finish).await {
        Ok((_, principal)) => principal,
        Err(e) => return failed(&finish, &e, render),
    };
    match work(state.clone(), principal.tenant.clone(), parts).await {
        Ok(response) => response,
        Err(e) => failed(&finish, &e, render),
    }
}

async fn find(state: &AppState, tenant: &Arc<str>, id: &str) -> Result<Arc<Stored>, ProxyError> {
    state
        .responses
        .get(tenant, id)
        .await
        .ok_or_else(|| not_found(id))
}

/// `GET /v1/responses/{id}`: the Response as it was answered.
pub async fn retrieve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    serve(state, request, |state, tenant, _| async move {
        let stored = find(&state, &tenant, &id).await?;
        Ok(Json(&stored.response).into_response())
    })
    .await
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    serve(state, request, |state, tenant, _| async move {
        if !state.responses.delete(&tenant, &id).await {
            return Err(not_found(&id));
        }
        Ok(Json(json!({ "id": id, "object": "response", "deleted": true })).into_response())
    })
    .await
}

/// The query of `input_items`.
#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    order: Option<String>,
    limit: Option<String>,
    after: Option<String>,
    /// Extra fields to include: the proxy keeps every item whole already.
    #[serde(rename = "include[]", default)]
    _include: Vec<String>,
}

fn invalid(param: &str, message: String) -> ProxyError {
    ProxyError::new(ErrorKind::Validation, Side::Client, message).with_param(param)
}

/// One page of `items`, as OpenAI lists them.
fn page(items: &[Value], query: &ListQuery) -> Result<Value, ProxyError> {
    let descending = match query.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(invalid(
                "order",
                format!("Invalid value for 'order': '{other}'. Expected 'asc' or 'desc'."),
            ))
        }
    };
    let limit = match query.limit.as_deref() {
        None => 20,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                invalid(
                    "limit",
                    format!(
                        "Invalid value for 'limit': '{text}'. Expected an integer from 1 to 100."
                    ),
                )
            })?,
    };
    let mut ordered: Vec<&Value> = items.iter().collect();
    if descending {
        ordered.reverse();
    }
    let start = match &query.after {
        None => 0,
        Some(after) => {
            ordered
                .iter()
                .position(|item| item["id"].as_str() == Some(after.as_str()))
                .ok_or_else(|| {
                    invalid(
                        "after",
                        format!("No input item with id '{after}' in this response."),
                    )
                })?
                + 1
        }
    };
    let data: Vec<&Value> = ordered.iter().skip(start).take(limit).copied().collect();
    let has_more = start + data.len() < ordered.len();
    Ok(json!({
        "object": "list",
        "data": data,
        "first_id": data.first().map(|item| &item["id"]),
        "last_id": data.last().map(|item| &item["id"]),
        "has_more": has_more,
    }))
}

/// `GET /v1/responses/{id}/input_items`: the conversation's input items up
/// to the response (a continued response's include what it continued).
pub async fn input_items(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    serve(state, request, |state, tenant, parts| async move {
        let query = Query::<ListQuery>::try_from_uri(&parts.uri)
            .map_err(|e| invalid("query", format!("Invalid query: {e}")))?;
        let stored = find(&state, &tenant, &id).await?;
        Ok(Json(page(&stored.input_items, &query)?).into_response())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| json!({ "id": format!("msg_{i}") }))
            .collect()
    }

    fn ids(page: &Value) -> Vec<&str> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect()
    }

    fn query(order: Option<&str>, limit: Option<&str>, after: Option<&str>) -> ListQuery {
        ListQuery {
            order: order.map(str::to_owned),
            limit: limit.map(str::to_owned),
            after: after.map(str::to_owned),
            _include: Vec::new(),
        }
    }

    #[test]
    fn pages_go_newest_first_unless_asked_and_continue_after_an_id() {
        let items = items(5);
        let first = page(&items, &query(None, Some("2"), None)).unwrap();
        assert_eq!(ids(&first), ["msg_4", "msg_3"]);
        assert_eq!(first["first_id"], "msg_4");
        assert_eq!(first["last_id"], "msg_3");
        assert_eq!(first["has_more"], true);
        let last = page(&items, &query(None, Some("2"), Some("msg_1"))).unwrap();
        assert_eq!(ids(&last), ["msg_0"]);
        assert_eq!(last["has_more"], false);
        let asc = page(&items, &query(Some("asc"), None, Some("msg_2"))).unwrap();
        assert_eq!(ids(&asc), ["msg_3", "msg_4"]);
        assert_eq!(asc["object"], "list");
        let empty = page(&[], &query(None, None, None)).unwrap();
        assert_eq!(empty["first_id"], Value::Null);
        assert_eq!(empty["has_more"], false);
    }

    #[test]
    fn a_bad_query_is_refused_by_name() {
        let items = items(2);
        let param = |q: ListQuery| page(&items, &q).unwrap_err().param;
        assert_eq!(
            param(query(Some("up"), None, None)).as_deref(),
            Some("order")
        );
        assert_eq!(
            param(query(None, Some("0"), None)).as_deref(),
            Some("limit")
        );
        assert_eq!(
            param(query(None, Some("101"), None)).as_deref(),
            Some("limit")
        );
        assert_eq!(
            param(query(None, None, Some("msg_9"))).as_deref(),
            Some("after")
        );
    }
}
