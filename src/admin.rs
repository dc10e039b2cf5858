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
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;

use crate::config::UpstreamKind;
use crate::state::AppState;

/// The admin router. `/metrics`, `/healthz` and `/readyz` are open (scrapers
/// and probes); `/admin/*` and `/_sim/*` change or reveal the proxy's state, so
/// they need `Authorization: Bearer <token>` when `admin.token_sha256` is set,
/// and without it are served only when the listener is on loopback
/// (`exposed` false).
pub fn router(state: AppState, token_sha256: Option<[u8; 32]>, exposed: bool) -> Router {
    let open = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state.clone());
    let mut guarded = Router::new()
        .route("/admin/config", get(config))
        .route("/admin/cache", get(cache_stats).delete(cache_clear))
        .route("/admin/prefixes", get(prefixes))
        .route("/admin/prompt-cache", get(prompt_cache))
        .route("/admin/reload", axum::routing::post(reload))
        .route("/admin/breakers", get(breakers))
        .route("/admin/usage", get(usage))
        .route("/admin/clock", get(clock).post(advance_clock))
        .with_state(state.clone());
    if let Some(sim) = &state.simulator {
        guarded = guarded.merge(sim.control_router());
    }
    let access = match (token_sha256, exposed) {
        (Some(hash), _) => Access::Token(hash),
        (None, false) => return open.merge(guarded),
        (None, true) => {
            tracing::warn!("the admin listener is not on loopback and admin.token_sha256 is not set: /admin/* is off");
            Access::Closed
        }
    };
    open.merge(guarded.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| async move {
            match access.check(request.headers()) {
                Ok(()) => next.run(request).await,
                Err(message) => {
                    (StatusCode::FORBIDDEN, Json(json!({ "message": message }))).into_response()
                }
            }
        },
    )))
}

/// Who may use the guarded admin endpoints.
#[derive(Clone, Copy)]
enum Access {
    Token([u8; 32]),
    Closed,
}

impl Access {
    fn check(self, headers: &axum::http::HeaderMap) -> Result<(), &'static str> {
        let Access::Token(expected) = self else {
            return Err("admin endpoints are off on a non-loopback listener; set admin.token_sha256 to use them");
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("admin endpoints need Authorization: Bearer <admin token>")?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        if digest == expected {
            Ok(())
        } else {
            Err("the admin token is not valid")
        }
    }
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
            "kind": u.config.kind.name(),
            "region": u.config.region,
            "endpoint": u.base_url(),
            "auth": match (&u.config.bearer_token, &u.config.api_key, u.config.kind) {
                (Some(_), _, _) | (_, Some(_), _) => "bearer",
                (None, None, UpstreamKind::OpenAi) => "none",
                _ => "sigv4",
            },
        })).collect::<Vec<_>>(),
    }))
}

async fn cache_stats(State(state): State<AppState>) -> Json<serde_json::Value> {
    let p = &state.pipeline;
    Json(p.cache.describe(p.flights.len()).await)
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
        .pipeline
        .cache
        .invalidate(scope.tenant.as_deref(), scope.route.as_deref())
        .await;
    tracing::info!(tenant = ?scope.tenant, route = ?scope.route, l1, l2, "response cache cleared");
    Json(json!({ "removed_l1": l1, "removed_l2": l2 }))
}

/// `GET /admin/prefixes`: the prompt prefixes seen most, for the prompt-cache planner.
async fn prefixes(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "remembered": state.pipeline.prefixes.len(),
        "top": state.pipeline.prefixes.top(50),
    }))
}

/// `GET /admin/prompt-cache`: what the prompt-cache planner learned: savings by
/// route, model and tenant, class thresholds, and the prefixes with the most
/// at stake (their sightings, gaps, writes, reads, TTL, savings, back-off).
async fn prompt_cache(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.pipeline.prefixes.report(100))
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
            Json(json!({ "reloaded": false, "error": error.to_string() })),
        )
            .into_response(),
    }
}

/// `GET /admin/breakers`: each upstream target's circuit breaker.
async fn breakers(State(state): State<AppState>) -> Json<serde_json::Value> {
    let states: Vec<_> = state
        .pipeline
        .breakers
        .states()
        .into_iter()
        .map(|(target, s)| json!({ "target": target, "state": s.label() }))
        .collect();
    Json(json!({ "breakers": states }))
}

/// `GET /admin/usage`: per tenant, key and route, the limits, the per-minute
/// buckets and the spend today and this month (UTC), from the shared counters
/// when Redis is configured.
async fn usage(State(state): State<AppState>) -> Json<serde_json::Value> {
    let rt = state.runtime();
    Json(state.limiter.usage(&rt.config).await)
}

fn clock_body(now_ms: f64) -> serde_json::Value {
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms.max(0.0) as u64);
    json!({
        "now": humantime::format_rfc3339_millis(now).to_string(),
        "now_ms": now_ms as u64,
    })
}

/// `GET /admin/clock`: the time the limits read (windows, budget days).
async fn clock(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(clock_body(state.limiter.now_ms()))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: f64,
}

/// `POST /admin/clock {"seconds": N}`: moves the limits' manual clock
/// (`limits.clock = "manual"`) forward; 409 on the system clock.
async fn advance_clock(
    State(state): State<AppState>,
    body: Result<Json<Advance>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(Advance { seconds })) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "message": "send {\"seconds\": N}, N at least 0" })),
        )
            .into_response();
    };
    let Ok(by) = std::time::Duration::try_from_secs_f64(seconds) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "message": "seconds must be a number at least 0" })),
        )
            .into_response();
    };
    match state.limiter.advance_clock(by) {
        Some(now) => Json(clock_body(now)).into_response(),
        None => (
            StatusCode::CONFLICT,
            Json(json!({ "message": "the limits' clock is the system clock; set limits.clock = \"manual\" to move it" })),
        )
            .into_response(),
    }
}
