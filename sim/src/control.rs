//! The control plane under `/_sim/`: what the simulator received, what it counted,
//! and the fault rules tests script. Not part of Bedrock's API.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

use crate::faults::FaultRule;
use crate::SimState;

/// The `/_sim/*` routes.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/_sim/requests", get(requests).delete(clear_requests))
        .route("/_sim/stats", get(stats))
        .route(
            "/_sim/faults",
            get(list_faults).post(add_faults).delete(clear_faults),
        )
        .route("/_sim/clock", post(advance_clock))
        .route("/_sim/reset", post(reset))
        .with_state(state)
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn requests(State(state): State<Arc<SimState>>, Query(q): Query<Limit>) -> Json<Value> {
    let list = state.log.recent(q.limit.unwrap_or(usize::MAX));
    Json(json!({ "requests": list }))
}

async fn clear_requests(State(state): State<Arc<SimState>>) -> StatusCode {
    state.log.clear();
    StatusCode::NO_CONTENT
}

async fn stats(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(state.stats.snapshot())
}

async fn list_faults(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(json!({ "faults": state.faults.list() }))
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "message": message }))).into_response()
}

/// Takes one rule or a list of rules.
async fn add_faults(State(state): State<Arc<SimState>>, body: axum::body::Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("body is not JSON: {e}")),
    };
    let items = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    let mut rules = Vec::with_capacity(items.len());
    for item in items {
        let rule: FaultRule = match serde_json::from_value(item) {
            Ok(r) => r,
            Err(e) => return bad_request(format!("invalid fault rule: {e}")),
        };
        if let Err(e) = rule.validate() {
            return bad_request(format!("invalid fault rule: {e}"));
        }
        rules.push(rule);
    }
    let ids: Vec<u64> = rules.into_iter().map(|r| state.faults.add(r)).collect();
    (StatusCode::CREATED, Json(json!({ "ids": ids }))).into_response()
}

async fn clear_faults(State(state): State<Arc<SimState>>) -> StatusCode {
    state.faults.clear();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: f64,
}

/// Moves the simulator's clock forward, so prompt-cache TTLs can expire in tests.
async fn advance_clock(State(state): State<Arc<SimState>>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<Advance>(&body) {
        Ok(a) if a.seconds >= 0.0 && a.seconds.is_finite() => {
            state.clock.advance(Duration::from_secs_f64(a.seconds));
            Json(json!({ "now_ms": state.clock.now().as_millis() as u64 })).into_response()
        }
        Ok(_) => bad_request("seconds must be 0 or more".into()),
        Err(e) => bad_request(format!("expected {{\"seconds\": N}}: {e}")),
    }
}

/// Forgets everything: requests, counters, faults, quota and the prompt cache.
async fn reset(State(state): State<Arc<SimState>>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}
