//! `GET /v1/models` and `GET /v1/models/{id}`: the chat models (routes) the
//! caller's key may use, by route name and alias, in the OpenAI shape, or in
//! the Anthropic shape when the request carries `anthropic-version` (the
//! Anthropic SDK always sends it; the OpenAI SDK never does). Routes whose
//! model is an embedding model are listed in the OpenAI shape (OpenAI's list
//! has its embedding models, callable at `/v1/embeddings`), not in Anthropic's.

use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{anthropic, failed, openai, receive, Finish};
use crate::auth::Principal;
use crate::catalog::ModelKind;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::limits::RateHeaders;
use crate::route::Route;
use crate::runtime::Runtime;
use crate::state::AppState;

/// The model routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list))
        .route("/v1/models/{id}", get(one))
}

/// Which API's shape a models request is answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    OpenAi,
    Anthropic,
}

impl Shape {
    fn of(parts: &Parts) -> Shape {
        if parts.headers.contains_key("anthropic-version") {
            Shape::Anthropic
        } else {
            Shape::OpenAi
        }
    }

    fn model(self, id: &str, route: &Route) -> Value {
        match self {
            Shape::OpenAi => {
                json!({ "id": id, "object": "model", "created": 0, "owned_by": "bedrock-proxy" })
            }
            // The epoch: routes have no creation date worth inventing.
            Shape::Anthropic => json!({ "type": "model", "id": id, "display_name": &*route.name,
                "created_at": "1970-01-01T00:00:00Z" }),
        }
    }

    /// A refusal in this shape, with the headers, metrics and log line of any
    /// failed request.
    fn failed(self, finish: &Finish, e: &ProxyError) -> Response {
        match self {
            Shape::OpenAi => failed(finish, e, openai::error_response),
            Shape::Anthropic => failed(finish, e, anthropic::error_response),
        }
    }
}

/// Whether a route answers chats (its model is not an embedding model).
fn is_chat(rt: &Runtime, route: &Route) -> bool {
    rt.routes.resolve(&route.name).is_ok_and(|routed| {
        rt.catalog
            .get(&routed.upstream_model)
            .is_none_or(|l| l.model.kind != ModelKind::Embedding)
    })
}

/// The ids a route is listed under: its name, then its aliases.
fn listed_ids(route: &Route) -> Vec<&str> {
    let mut ids: Vec<&str> = route.config.aliases.iter().map(String::as_str).collect();
    if !ids.contains(&&*route.name) {
        ids.insert(0, &route.name);
    }
    ids
}

/// The routes `principal` may use that the API of `shape` can call (the
/// Anthropic API has no embeddings).
fn usable<'a>(
    rt: &'a Runtime,
    principal: &'a Principal,
    shape: Shape,
) -> impl Iterator<Item = &'a Route> {
    rt.routes
        .routes()
        .iter()
        .map(|r| &**r)
        .filter(move |r| principal.may_use(&r.name) && (shape == Shape::OpenAi || is_chat(rt, r)))
}

async fn list(State(state): State<AppState>, request: Request) -> Response {
    let mut finish = Finish::new(bedrock_wire::new_shared_request_id(), Instant::now());
    let rt = state.runtime();
    let (parts, body) = request.into_parts();
    let shape = Shape::of(&parts);
    if shape == Shape::Anthropic {
        finish.rate_headers = RateHeaders::Anthropic;
    }
    let principal = match receive(&state, &rt, &parts, body, &mut finish).await {
        Ok((_, p)) => p,
        Err(e) => return shape.failed(&finish, &e),
    };
    let data: Vec<Value> = usable(&rt, &principal, shape)
        .flat_map(|r| listed_ids(r).into_iter().map(move |id| shape.model(id, r)))
        .collect();
    match shape {
        Shape::OpenAi => Json(json!({ "object": "list", "data": data })).into_response(),
        Shape::Anthropic => {
            let first = data.first().map(|m| m["id"].clone());
            let last = data.last().map(|m| m["id"].clone());
            Json(json!({ "data": data, "has_more": false, "first_id": first, "last_id": last }))
                .into_response()
        }
    }
}

async fn one(State(state): State<AppState>, Path(id): Path<String>, request: Request) -> Response {
    let mut finish = Finish::new(bedrock_wire::new_shared_request_id(), Instant::now());
    let rt = state.runtime();
    let (parts, body) = request.into_parts();
    let shape = Shape::of(&parts);
    if shape == Shape::Anthropic {
        finish.rate_headers = RateHeaders::Anthropic;
    }
    let principal = match receive(&state, &rt, &parts, body, &mut finish).await {
        Ok((_, p)) => p,
        Err(e) => return shape.failed(&finish, &e),
    };
    // A model the route lists counts too; a catch-all route's stand-in for any
    // id does not: only what a route names exists.
    let found = usable(&rt, &principal, shape)
        .find(|r| listed_ids(r).contains(&id.as_str()) || r.config.models.contains(&id));
    match found {
        Some(route) => Json(shape.model(&id, route)).into_response(),
        None => {
            let message = match shape {
                Shape::OpenAi => {
                    format!("The model `{id}` does not exist or you do not have access to it.")
                }
                Shape::Anthropic => format!("model: {id}"),
            };
            let e = ProxyError::new(ErrorKind::NotFound, Side::Client, message).with_param("model");
            shape.failed(&finish, &e)
        }
    }
}
