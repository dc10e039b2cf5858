//! The guard every API request passes first: load shedding past
//! `limits.max_concurrent_requests` and during shutdown, the in-flight count,
//! a handler panic turned into an error in the API's shape, a request still
//! waiting when shutdown cuts it answered with a 503, and the headers every
//! response carries.
//!
//! A request takes its concurrency slot once its body is in ([`Gate::admit`],
//! called by the ingress's `receive`), not while the client is still sending
//! it: slow uploads are bounded by the body deadlines and the body budget,
//! and cannot hold the slots other tenants' requests need. A proxy already at
//! its limit refuses here, before a byte of body is read. The slot, the body's
//! budget and the in-flight count are held by the response body ([`Guarded`]),
//! so a stream holds them until it ends.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, Version};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use futures_util::FutureExt;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tower::ServiceExt;

use super::gate::{Gate, Held};
use crate::error::ProxyError;
use crate::metrics::{self, InFlight};
use crate::state::AppState;

/// The API router behind the guard: one service in front of the router,
/// rather than a middleware layered onto every route (which axum clones and
/// boxes again for each request).
#[derive(Clone)]
pub struct Guard {
    inner: Router,
    state: AppState,
}

impl Guard {
    pub(super) fn new(inner: Router, state: AppState) -> Guard {
        Guard { inner, state }
    }
}

impl tower::Service<Request> for Guard {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = self.state.clone();
        // The Bedrock model operations, most of the traffic, skip the router's
        // lookup, path parameters and boxed route future (and the router is
        // not even cloned for them).
        let inner = if request.method() == Method::POST
            && super::bedrock::is_model_operation(request.uri().path())
        {
            None
        } else {
            Some(self.inner.clone())
        };
        crate::support::boxed(|| async move { Ok(guard(state, request, inner).await) })
    }
}

/// Sheds load past `max_concurrent_requests` and during shutdown, and counts
/// requests in flight; both held until the response body (a stream too) ends.
/// `inner` is `None` for a Bedrock model operation, served without the router.
async fn guard(state: AppState, request: Request, inner: Option<Router>) -> Response {
    // The URI shares the request's bytes: kept for an error's shape, not copied.
    let uri = request.uri().clone();
    let path = uri.path();
    // HTTP/1.x connections are told to close after an answer that leaves the
    // request body unread or comes during shutdown; HTTP/2 has no such header
    // (its streams end on their own; shutdown says GOAWAY).
    let http1 = request.version() < Version::HTTP_2;
    if state.shutting_down.load(Ordering::Relaxed) {
        metrics::rejected("shutting_down");
        let e =
            ProxyError::overloaded("The proxy is shutting down; retry against another replica.");
        let mut response = super::render_error(path, &e, &bedrock_wire::new_request_id());
        if http1 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return response;
    }
    if state.concurrency.available_permits() == 0 {
        metrics::rejected("overloaded");
        let e =
            ProxyError::overloaded("The proxy is at its concurrent request limit; retry shortly.");
        return super::render_error(path, &e, &bedrock_wire::new_request_id());
    }
    let gate = Gate::new(state.concurrency.clone(), state.bodies.clone());
    let in_flight = InFlight::start();
    let gate_in = gate.clone();
    // Borrowed, not cloned: the handler runs inside this future.
    let handler_state = &state;
    let serve = async move {
        match inner {
            // Boxed: moved as it is, the handler's state would be copied
            // with this future (into the select, the unwind catcher, the box).
            // The gate is handed over as it is, not through the request's
            // extensions (a map allocated for it).
            None => Ok(crate::support::boxed(|| {
                super::bedrock::handle_gated(handler_state, request, Some(gate_in))
            })
            .await),
            Some(inner) => {
                // Handlers behind the router find the gate in the extensions.
                let mut request = request;
                request.extensions_mut().insert(gate_in);
                inner.oneshot(request).await
            }
        }
    };
    // A bug that panics in a handler answers this request with an error in its
    // API's shape (and is logged) instead of dropping the connection.
    let run = AssertUnwindSafe(serve).catch_unwind();
    // Polled only once the cut comes: the token's lock is shared by every request.
    let cut = bedrock_wire::serve::woken_only(state.cut.cancelled());
    let outcome = tokio::select! {
        biased;
        outcome = run => outcome,
        () = cut => {
            tracing::warn!(path = %path, "shutdown grace passed before this request was answered");
            metrics::rejected("shutdown_cut");
            let e = ProxyError::overloaded(
                "The proxy shut down before this request was answered; retry against another replica.",
            );
            Ok(Ok(super::render_error(path, &e, &bedrock_wire::new_request_id())))
        }
    };
    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(path = %path, panic = %what, "a request handler panicked");
            metrics::rejected("internal_error");
            let e = ProxyError::internal("The proxy failed on this request; it has been logged.");
            super::render_error(path, &e, &bedrock_wire::new_request_id())
        }
    };
    let (mut parts, body) = response.into_parts();
    if http1
        && (parts.status == axum::http::StatusCode::REQUEST_TIMEOUT
            || state.shutting_down.load(Ordering::Relaxed))
    {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    const AMZN_REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");
    const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    if !parts.headers.contains_key(&AMZN_REQUEST_ID) {
        if let Some(id) = parts.headers.get(&REQUEST_ID).cloned() {
            parts.headers.insert(AMZN_REQUEST_ID, id);
        }
    }
    parts
        .headers
        .entry(header::SERVER)
        .or_insert(HeaderValue::from_static("bedrock-proxy"));
    let held = gate.take_held();
    let body = Guarded {
        inner: body,
        _held: held,
        _in_flight: in_flight,
    };
    Response::from_parts(parts, Body::new(body))
}

/// A response body holding the concurrency permit, the body's budget and the in-flight count until
/// it is done; size and end-of-stream pass through, so whole answers keep their
/// `Content-Length`.
struct Guarded {
    inner: Body,
    _held: Held,
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
