//! The guard every API request passes first: load shedding past
//! `limits.max_concurrent_requests` and during shutdown, the in-flight count,
//! a handler panic turned into an error in the API's shape, and the headers
//! every response carries. The permit and the count are held by the response
//! body ([`Guarded`]), so a stream holds them until it ends.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;

use crate::error::ProxyError;
use crate::metrics::{self, InFlight};
use crate::state::AppState;

/// Sheds load past `max_concurrent_requests` and during shutdown, and counts
/// requests in flight; both held until the response body (a stream too) ends.
pub(super) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if state.shutting_down.load(Ordering::Relaxed) {
        metrics::rejected("shutting_down");
        let e =
            ProxyError::overloaded("The proxy is shutting down; retry against another replica.");
        return super::render_error(&path, &e, &bedrock_wire::new_request_id());
    }
    let Ok(permit) = state.concurrency.clone().try_acquire_owned() else {
        metrics::rejected("overloaded");
        let e =
            ProxyError::overloaded("The proxy is at its concurrent request limit; retry shortly.");
        return super::render_error(&path, &e, &bedrock_wire::new_request_id());
    };
    let in_flight = InFlight::start();
    // A bug that panics in a handler answers this request with an error in its
    // API's shape (and is logged) instead of dropping the connection.
    let response = match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(path = %path, panic = %what, "a request handler panicked");
            metrics::rejected("internal_error");
            let e = ProxyError::internal("The proxy failed on this request; it has been logged.");
            super::render_error(&path, &e, &bedrock_wire::new_request_id())
        }
    };
    let (mut parts, body) = response.into_parts();
    if !parts.headers.contains_key("x-amzn-requestid") {
        if let Some(id) = parts.headers.get("x-request-id").cloned() {
            parts.headers.insert("x-amzn-requestid", id);
        }
    }
    parts
        .headers
        .entry("server")
        .or_insert(HeaderValue::from_static("bedrock-proxy"));
    let body = Guarded {
        inner: body,
        _permit: permit,
        _in_flight: in_flight,
    };
    Response::from_parts(parts, Body::new(body))
}

/// A response body holding the concurrency permit and the in-flight count until
/// it is done; size and end-of-stream pass through, so whole answers keep their
/// `Content-Length`.
struct Guarded {
    inner: Body,
    _permit: OwnedSemaphorePermit,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
