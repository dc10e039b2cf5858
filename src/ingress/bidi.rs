//! InvokeModelWithBidirectionalStream (`POST /model/{modelId}/invoke-with-bidirectional-stream`,
//! Nova Sonic): the client's upload and the model's answer are both event
//! streams, open at once (HTTP/2, h2c or HTTP/1.1). The proxy relays each
//! frame as it arrives, both ways, and ends both sides together.
//!
//! The upload is re-signed: AWS SDKs wrap each message frame in an envelope
//! whose `:chunk-signature` chains from their request's signature, which only
//! their own key can continue. The proxy checks a SigV4 client's chain with the
//! proxy-issued key it signed with, unwraps each message and wraps it afresh
//! in an envelope signed for the upstream's credentials (bare for a bearer
//! token), ending the upload with the empty signed envelope as the SDKs do.
//!
//! Never cached; auth, route and key checks, limits (one request), the
//! upstream's deadline for the whole session, metrics and the access log
//! apply as to the other operations (see [`super::operations`]).

use crate::log_tag::{self, Tagged};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use bedrock_wire::eventstream::{
    self, exception_frame, read_upload, EnvelopeVerifier, FrameKind, FrameSplitter, Upload,
};
use bedrock_wire::operation::RuntimeOperation;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::operations::{begin, books, end};
use super::{route, signed_headers, Finish};
use crate::answer::ServedBy;
use crate::error::ProxyError;
use crate::limits::Refusal;
use crate::state::AppState;
use crate::upstream::{passed_headers, read_body, UploadBody, UploadSigning};

const OP: RuntimeOperation = RuntimeOperation::InvokeModelWithBidirectionalStream;

/// The bidirectional stream's route.
pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/model/{model_id}/invoke-with-bidirectional-stream",
        post(handle),
    )
}

async fn handle(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let (mut finish, tag) = begin(OP);
    let opened = open(&state, &mut finish, path, request).tagged(tag).await;
    match opened {
        Ok(Opened::Stream(response)) => response,
        Ok(Opened::Whole(response)) => end(&finish, OP, Ok(response)),
        Err(e) => end(&finish, OP, Err(e)),
    }
}

/// What opening a session came to.
enum Opened {
    /// The session runs; its books close when it ends.
    Stream(Response),
    /// The upstream refused it: its answer, passed on.
    Whole(Response),
}

/// Frames of the upload queued for the upstream before the pump waits.
const UPLOAD_QUEUE: usize = 16;

async fn open(
    state: &AppState,
    finish: &mut Finish,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Opened, ProxyError> {
    let Path(model_id) =
        path.map_err(|e| ProxyError::validation(format!("The request path is invalid: {e}")))?;
    let rt = state.runtime();
    let (parts, body) = request.into_parts();

    // Everything is decided from the headers: the body is the conversation,
    // still to come.
    let admission = rt.auth.admit_headers(&parts.headers)?;
    finish.tenant = Some(admission.principal().tenant.clone());
    let path_route = rt.routes.resolve(&model_id).ok().map(|r| r.route);
    let admitted = state
        .limiter
        .admit_headers(
            &rt.config.limits,
            admission.principal().caller(),
            path_route.as_deref().map(|r| (&r.name, &r.config.quota)),
            admission.verified(),
        )
        .await;
    match admitted {
        Ok(ticket) => finish.limits = ticket,
        Err(Refusal { error, view }) => {
            finish.limits.view = view;
            return Err(error);
        }
    }
    let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let (principal, verifier) =
        admission.stream_caller(parts.method.as_str(), uri, &signed_headers(&parts))?;
    let routed = route(&rt, &principal, &model_id, finish)?;
    let upstream = rt
        .upstreams
        .get(&routed.route.config.upstream)
        .filter(|u| u.config.kind.is_bedrock())
        .cloned()
        .ok_or_else(|| {
            ProxyError::validation(format!(
                "The provided model {model_id} doesn't support InvokeModelWithBidirectionalStream: route {} does not send to Bedrock.",
                routed.route.name
            ))
        })?;
    finish.record.served_by = Some(ServedBy {
        upstream: upstream.name.clone(),
        kind: upstream.config.kind,
        model: routed.upstream_model.clone(),
    });

    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(UPLOAD_QUEUE);
    let upload = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let upload: UploadBody = BodyExt::boxed(http_body_util::StreamBody::new(upload));
    let (signing, response) = upstream
        .open_stream(&routed.upstream_model, &[], upload)
        .await?;
    let counts = Arc::new(Counts::default());
    let (failed_tx, mut failed_rx) = oneshot::channel();
    let pump = tokio::spawn(log_tag::within(
        log_tag::current(),
        pump(body, verifier, signing, tx, failed_tx, counts.clone()),
    ));
    // Whichever side ends first ends the other: the pump stops with the relay.
    let pump = AbortOnDrop(pump.abort_handle());
    let answer = match upstream.stream_response(response).await {
        Ok(answer) => answer,
        // A bad upload resets the upstream request: the client hears why.
        Err(e) => return Err(failed_rx.try_recv().unwrap_or(e)),
    };
    let deadline = finish.started + upstream.timeouts().total;
    if !answer.status.is_success() {
        let bytes = read_body(answer.body, 1024 * 1024, deadline, &upstream.name).await?;
        let mut headers = passed_headers(&answer.headers);
        if let Some(kind) = answer.headers.get("x-amzn-errortype") {
            headers.insert("x-amzn-errortype", kind.clone());
        }
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = answer.status;
        *response.headers_mut() = headers;
        return Ok(Opened::Whole(response));
    }

    let mut headers = passed_headers(&answer.headers);
    headers.insert(
        "content-type",
        HeaderValue::from_static(eventstream::CONTENT_TYPE),
    );
    finish.headers(&mut headers, None);
    let relay = Relay {
        upstream: answer.body,
        failed: Some(failed_rx),
        cut: state.cut.clone(),
        deadline,
        splitter: FrameSplitter::new(),
        books: SessionBooks {
            finish: finish.clone(),
            counts,
            outcome: "client_gone",
        },
        _pump: pump,
        done: false,
    };
    let stream = futures_util::stream::unfold(relay, |mut relay| async move {
        relay.next().await.map(|item| (item, relay))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = headers;
    Ok(Opened::Stream(response))
}

/// Events each way, for the access log.
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    received: AtomicU64,
}

/// Aborts the upload's pump when the session's response goes away.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the client's upload frame by frame, checks and unwraps each, and
/// sends it upstream in an envelope of the proxy's; a bad frame stops the
/// session (the relay tells the client why).
async fn pump(
    body: Body,
    mut verifier: Option<EnvelopeVerifier>,
    mut signing: UploadSigning,
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    failed: oneshot::Sender<ProxyError>,
    counts: Arc<Counts>,
) {
    let mut data = body.into_data_stream();
    let mut splitter = FrameSplitter::new();
    let bad = |e: eventstream::FrameError| {
        ProxyError::validation(format!("The uploaded event stream is invalid: {e}"))
    };
    let result: Result<(), ProxyError> = async {
        'upload: while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| {
                ProxyError::validation(format!("The client's upload broke off: {e}"))
            })?;
            splitter.push(&chunk);
            while let Some(frame) = splitter.next_frame().map_err(bad)? {
                let upload = match verifier.as_mut() {
                    Some(v) => v.verify(frame),
                    None => read_upload(frame),
                }
                .map_err(bad)?;
                let message = match upload {
                    Upload::Message(m) => m,
                    Upload::End => break 'upload,
                };
                counts.received.fetch_add(1, Ordering::Relaxed);
                if let Some(bytes) = signing.wrap(Some(message))? {
                    if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                        // The upstream request is gone; the relay ends the session.
                        return Ok(());
                    }
                }
            }
        }
        // The client's upload ended: end the upstream's as the SDKs do.
        if let Some(bytes) = signing.wrap(None)? {
            let _ = tx.send(Ok(Frame::data(bytes))).await;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        // The client is told why (first, so the reason is there whenever the
        // upstream request fails), and the upstream's request is reset.
        let message = e.message.clone();
        let _ = failed.send(e);
        let _ = tx.try_send(Err(std::io::Error::other(message)));
    }
}

/// The books of a session, closed when it ends, however it ends.
struct SessionBooks {
    finish: Finish,
    counts: Arc<Counts>,
    outcome: &'static str,
}

impl Drop for SessionBooks {
    fn drop(&mut self) {
        tracing::info!(
            target: "access",
            request_id = %self.finish.request_id,
            events_in = self.counts.received.load(Ordering::Relaxed),
            events_out = self.counts.sent.load(Ordering::Relaxed),
            "bidirectional stream ended"
        );
        books(&self.finish, OP, 200, self.outcome);
    }
}

/// The model's side of a session, relayed to the client frame by frame.
struct Relay {
    upstream: Incoming,
    /// Why the pump stopped, when the upload was bad.
    failed: Option<oneshot::Receiver<ProxyError>>,
    cut: CancellationToken,
    deadline: Instant,
    splitter: FrameSplitter,
    books: SessionBooks,
    _pump: AbortOnDrop,
    done: bool,
}

impl Relay {
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if self.done {
                return None;
            }
            let failed = &mut self.failed;
            let frame = tokio::select! {
                biased;
                () = self.cut.cancelled() => {
                    return self.exception("serviceUnavailableException", "The proxy is shutting down and this stream outlived its grace period; reconnect to another replica.", "shutdown");
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    return self.exception("modelTimeoutException", "The session reached the proxy's upstream deadline.", "timeout");
                }
                e = async {
                    match failed.as_mut() {
                        Some(rx) => rx.await.ok(),
                        None => std::future::pending().await,
                    }
                } => match e {
                    Some(e) => return self.exception("validationException", &e.message, "bad_upload"),
                    // The upload ended well: keep relaying the answer.
                    None => {
                        self.failed = None;
                        continue;
                    }
                },
                frame = self.upstream.frame() => frame,
            };
            return match frame {
                None => {
                    self.done = true;
                    self.books.outcome = "complete";
                    None
                }
                Some(Err(e)) => {
                    self.done = true;
                    self.books.outcome = "upstream_error";
                    Some(Err(std::io::Error::other(format!(
                        "the upstream broke off the stream: {e}"
                    ))))
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    self.count(&data);
                    Some(Ok(data))
                }
            };
        }
    }

    /// Counts the whole frames in `data` and notes an exception among them.
    fn count(&mut self, data: &Bytes) {
        self.splitter.push(data);
        while let Ok(Some(f)) = self.splitter.next_frame() {
            self.books.counts.sent.fetch_add(1, Ordering::Relaxed);
            if let Ok(decoded) = eventstream::decode(f) {
                if let FrameKind::Exception(kind) = decoded.kind {
                    tracing::info!(exception = %kind, "the model ended the stream with an exception");
                    self.books.outcome = "upstream_exception";
                }
            }
        }
    }

    /// Ends the session with an exception frame of `kind`.
    fn exception(
        &mut self,
        kind: &str,
        message: &str,
        outcome: &'static str,
    ) -> Option<Result<Bytes, std::io::Error>> {
        self.done = true;
        self.books.outcome = outcome;
        Some(Ok(exception_frame(kind, message)))
    }
}
