//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! `/admin/*`, and in demo mode the embedded simulator's `/_sim/*` control
//! endpoints. It binds to loopback unless configured otherwise; nothing here is
//! served on the API port.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering;

use crate::app::AppState;
use crate::config::UpstreamKind;

/// The admin router.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/admin/config", get(config))
        .route("/admin/cache", get(cache_stats).delete(cache_clear))
        .route("/admin/prefixes", get(prefixes))
        .route("/admin/reload", axum::routing::post(reload))
        .route("/admin/breakers", get(breakers))
        .with_state(state.clone());
    if let Some(sim) = &state.simulator {
        router = router.merge(sim.control_router());
    }
    router
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state
        .readiness
        .read()
        .map(|r| r.clone())
        .unwrap_or_default();
    let shutting_down = state.shutting_down.load(Ordering::Relaxed);
    let mut problems = readiness.problems.clone();
    if !readiness.credentials_checked {
        problems.push("upstream credentials are still being resolved".into());
    }
    if shutting_down {
        problems.push("shutting down".into());
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": problems.is_empty(), "problems": problems })),
    )
        .into_response()
}

async fn config(State(state): State<AppState>) -> Json<serde_json::Value> {
    let rt = state.runtime();
    let c = &rt.config;
    Json(json!({
        "hash": c.hash,
        "loaded_at": humantime::format_rfc3339_seconds(c.loaded_at).to_string(),
        "summary": c.summary(),
        "routes": c.routes.iter().map(|r| json!({
            "name": r.name,
            "aliases": r.aliases,
            "models": r.models,
            "catch_all": r.catch_all,
            "upstream": r.upstream,
            "upstream_model": r.upstream_model,
        })).collect::<Vec<_>>(),
        "upstreams": rt.upstreams.iter().map(|u| json!({
            "name": &*u.name,
            "kind": match u.config.kind { UpstreamKind::Bedrock => "bedrock", UpstreamKind::Simulator => "simulator" },
            "region": u.config.region,
            "endpoint": u.base_url(),
            "auth": if u.config.bearer_token.is_some() { "bearer" } else { "sigv4" },
        })).collect::<Vec<_>>(),
    }))
}

async fn cache_stats(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.cache.describe().await)
}

#[derive(serde::Deserialize)]
struct CacheScope {
    tenant: Option<String>,
    route: Option<String>,
}

/// `DELETE /admin/cache[?tenant=T][&route=R]`: clears both tiers.
async fn cache_clear(
    State(state): State<AppState>,
    Query(scope): Query<CacheScope>,
) -> Json<serde_json::Value> {
    let (l1, l2) = state
        .cache
        .invalidate(scope.tenant.as_deref(), scope.route.as_deref())
        .await;
    tracing::info!(tenant = ?scope.tenant, route = ?scope.route, l1, l2, "response cache cleared");
    Json(json!({ "removed_l1": l1, "removed_l2": l2 }))
}

/// `GET /admin/prefixes`: the prompt prefixes seen most, for the prompt-cache planner.
async fn prefixes(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "remembered": state.prefixes.len(),
        "top": state.prefixes.top(50),
    }))
}

/// `POST /admin/reload`: reloads the config file now.
async fn reload(State(state): State<AppState>) -> Response {
    let path = state.config_path.read().ok().and_then(|p| p.clone());
    let Some(path) = path else {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "reloaded": false, "error": "running on the built-in demo config; start with --config FILE to reload" })),
        )
            .into_response();
    };
    match crate::reload::reload(&state, &path).await {
        Ok(hash) => Json(json!({ "reloaded": true, "hash": hash })).into_response(),
        Err(error) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "reloaded": false, "error": error })),
        )
            .into_response(),
    }
}

/// `GET /admin/breakers`: each upstream target's circuit breaker.
async fn breakers(State(state): State<AppState>) -> Json<serde_json::Value> {
    let states: Vec<_> = state
        .breakers
        .states()
        .into_iter()
        .map(|(target, s)| {
            let state = match s {
                crate::upstream::breaker::State::Closed => "closed",
                crate::upstream::breaker::State::HalfOpen => "half_open",
                crate::upstream::breaker::State::Open => "open",
            };
            json!({ "target": target, "state": state })
        })
        .collect();
    Json(json!({ "breakers": states }))
}
