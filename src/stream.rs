//! Event streams on the response path: cut the upstream body into whole frames
//! as bytes arrive (never buffering the stream), enforce the idle gap and the
//! overall deadline, and hand each frame, raw bytes and decoded, to whoever
//! renders it for the client while an observer reads usage and the served tier.
//!
//! A stream is forwarded frame by frame, so a client never sees half a frame, and
//! an upstream failure after the first frame becomes one exception frame at a
//! frame boundary. Dropping the stream (a client that went away) drops the
//! upstream body, which cancels the upstream call.

use base64::Engine;
use bedrock_wire::converse::{ConverseEvent, Summary, Usage};
use bedrock_wire::eventstream::{decode, exception_frame, Frame, FrameKind, FrameSplitter};
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::error::{ErrorKind, ProxyError};

/// One frame: the bytes as received and what they decode to.
#[derive(Debug, Clone)]
pub struct RelayedFrame {
    pub raw: Bytes,
    pub frame: Frame,
}

/// Frames from an upstream, in order; an error ends the stream.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<RelayedFrame, ProxyError>> + Send>>;

struct Splitting {
    body: Incoming,
    splitter: FrameSplitter,
    idle: Duration,
    deadline: Instant,
    upstream: Arc<str>,
    done: bool,
}

/// The frames of an upstream event-stream body. Each read waits at most `idle`
/// (and never past `deadline`).
pub fn frames(
    body: Incoming,
    idle: Duration,
    deadline: Instant,
    upstream: Arc<str>,
) -> FrameStream {
    let state = Splitting {
        body,
        splitter: FrameSplitter::new(),
        idle,
        deadline,
        upstream,
        done: false,
    };
    Box::pin(stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            match s.splitter.next_frame() {
                Ok(Some(raw)) => {
                    return match decode(raw.clone()) {
                        Ok(frame) => Some((Ok(RelayedFrame { raw, frame }), s)),
                        Err(e) => {
                            s.done = true;
                            let msg = format!("upstream {} sent a corrupt frame: {e}", s.upstream);
                            Some((Err(ProxyError::upstream_unreachable(msg)), s))
                        }
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    s.done = true;
                    let msg = format!("upstream {} sent a corrupt frame: {e}", s.upstream);
                    return Some((Err(ProxyError::upstream_unreachable(msg)), s));
                }
            }
            let wait = s
                .idle
                .min(s.deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, s.body.frame()).await {
                Err(_) => {
                    s.done = true;
                    let msg = format!(
                        "upstream {} went silent for {wait:?} in the middle of a stream",
                        s.upstream
                    );
                    return Some((Err(ProxyError::upstream_timeout(msg)), s));
                }
                Ok(None) => {
                    s.done = true;
                    if s.splitter.pending() > 0 {
                        let msg = format!(
                            "upstream {} ended the stream in the middle of a frame",
                            s.upstream
                        );
                        return Some((Err(ProxyError::upstream_unreachable(msg)), s));
                    }
                    return None;
                }
                Ok(Some(Err(e))) => {
                    s.done = true;
                    let msg = format!("upstream {} broke off the stream: {e}", s.upstream);
                    return Some((Err(ProxyError::upstream_unreachable(msg)), s));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        s.splitter.push(&data);
                    }
                }
            }
        }
    }))
}

/// Replays stored frames: all at once, or `paced` at their original offsets.
pub fn replay(frames: Vec<(RelayedFrame, Duration)>, paced: bool) -> FrameStream {
    let start = Instant::now();
    Box::pin(
        stream::iter(frames).then(move |(frame, offset)| async move {
            if paced && !offset.is_zero() {
                tokio::time::sleep_until(start + offset).await;
            }
            Ok(frame)
        }),
    )
}

/// A stream with its first frame already read (so the caller knows the
/// upstream really started answering before committing to it).
pub fn prepend(first: RelayedFrame, rest: FrameStream) -> FrameStream {
    Box::pin(stream::once(async move { Ok(first) }).chain(rest))
}

/// How a stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// Every frame arrived and the upstream closed the stream.
    Complete,
    /// The upstream failed, or sent an exception frame.
    Failed(ProxyError),
    /// The client went away first.
    ClientGone,
}

/// Told about every frame of a stream and, once, how it ended.
pub trait StreamObserver: Send + 'static {
    fn frame(&mut self, frame: &RelayedFrame);
    fn end(&mut self, end: StreamEnd);
}

/// Calls the observer's `end` exactly once, with `ClientGone` if the stream is
/// dropped before it finished.
struct Ending<O: StreamObserver> {
    observer: O,
    ended: bool,
}

impl<O: StreamObserver> Ending<O> {
    fn end(&mut self, end: StreamEnd) {
        if !self.ended {
            self.ended = true;
            self.observer.end(end);
        }
    }
}

impl<O: StreamObserver> Drop for Ending<O> {
    fn drop(&mut self) {
        self.end(StreamEnd::ClientGone);
    }
}

/// The stream exception member a proxy-side failure is reported as.
pub fn exception_member(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Throttled => "throttlingException",
        ErrorKind::Unavailable => "serviceUnavailableException",
        ErrorKind::Validation => "validationException",
        ErrorKind::Timeout | ErrorKind::ModelError => "modelStreamErrorException",
        _ => "internalServerException",
    }
}

/// The client's side of a Bedrock event stream: the upstream's frames byte for
/// byte; a failure becomes one exception frame and the end of the stream.
pub fn to_bedrock_client(
    frames: FrameStream,
    observer: impl StreamObserver,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let ending = Ending {
        observer,
        ended: false,
    };
    stream::unfold(Some((frames, ending)), |state| async move {
        let (mut frames, mut ending) = state?;
        match frames.next().await {
            Some(Ok(f)) => {
                ending.observer.frame(&f);
                if let FrameKind::Exception(kind) = &f.frame.kind {
                    let message = String::from_utf8_lossy(&f.frame.payload).into_owned();
                    let error = ProxyError::new(
                        bedrock_wire::error::ErrorType::parse(kind)
                            .map(exception_kind)
                            .unwrap_or(ErrorKind::Internal),
                        crate::error::Side::Upstream,
                        message,
                    );
                    ending.end(StreamEnd::Failed(error));
                    return Some((Ok(f.raw), None));
                }
                Some((Ok(f.raw), Some((frames, ending))))
            }
            Some(Err(e)) => {
                let frame = exception_frame(exception_member(e.kind), &e.message);
                ending.end(StreamEnd::Failed(e));
                Some((Ok(frame), None))
            }
            None => {
                ending.end(StreamEnd::Complete);
                None
            }
        }
    })
}

/// Renders a ConverseStream as another API's server-sent events.
pub trait SseWriter: Send + 'static {
    /// The events one Converse event becomes.
    fn event(&mut self, event: &ConverseEvent) -> Vec<Bytes>;
    /// The event that reports a failure mid-stream (the stream then ends).
    fn failed(&mut self, error: &ProxyError) -> Bytes;
    /// What a complete stream ends with.
    fn done(&mut self) -> Vec<Bytes>;
}

/// The client's side of a translated stream: each upstream frame rendered by
/// `writer` as it arrives; a failure (an upstream exception frame, a cut) becomes
/// the writer's error event and the end of the stream.
pub fn to_sse_client(
    frames: FrameStream,
    observer: impl StreamObserver,
    writer: impl SseWriter,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let ending = Ending {
        observer,
        ended: false,
    };
    let state = (
        frames,
        ending,
        writer,
        std::collections::VecDeque::<Bytes>::new(),
        false,
    );
    stream::unfold(
        state,
        |(mut frames, mut ending, mut writer, mut queue, mut finished)| async move {
            loop {
                if let Some(chunk) = queue.pop_front() {
                    return Some((Ok(chunk), (frames, ending, writer, queue, finished)));
                }
                if finished {
                    return None;
                }
                match frames.next().await {
                    Some(Ok(f)) => {
                        ending.observer.frame(&f);
                        match &f.frame.kind {
                            FrameKind::Exception(kind) => {
                                let error = ProxyError::new(
                                    bedrock_wire::error::ErrorType::parse(kind)
                                        .map(exception_kind)
                                        .unwrap_or(ErrorKind::Internal),
                                    crate::error::Side::Upstream,
                                    String::from_utf8_lossy(&f.frame.payload).into_owned(),
                                );
                                queue.push_back(writer.failed(&error));
                                ending.end(StreamEnd::Failed(error));
                                finished = true;
                            }
                            _ => {
                                if let Some(event) = ConverseEvent::from_frame(&f.frame) {
                                    queue.extend(writer.event(&event));
                                }
                            }
                        }
                    }
                    Some(Err(e)) => {
                        queue.push_back(writer.failed(&e));
                        ending.end(StreamEnd::Failed(e));
                        finished = true;
                    }
                    None => {
                        queue.extend(writer.done());
                        ending.end(StreamEnd::Complete);
                        finished = true;
                    }
                }
            }
        },
    )
}

fn exception_kind(t: bedrock_wire::error::ErrorType) -> ErrorKind {
    use bedrock_wire::error::ErrorType as T;
    match t {
        T::Throttling => ErrorKind::Throttled,
        T::ServiceUnavailable => ErrorKind::Unavailable,
        T::Validation => ErrorKind::Validation,
        T::ModelTimeout => ErrorKind::Timeout,
        T::ModelStreamError | T::ModelError => ErrorKind::ModelError,
        _ => ErrorKind::Internal,
    }
}

/// Reads what a stream says about itself: ConverseStream events, or the
/// `amazon-bedrock-invocationMetrics` of InvokeModelWithResponseStream chunks.
#[derive(Debug, Default)]
pub struct StreamReader {
    pub summary: Summary,
    /// The ConverseStream events, kept when the answer may be cached.
    pub events: Option<Vec<ConverseEvent>>,
    /// The raw chunk payloads of an invoke stream, kept when it may be cached.
    pub chunks: Option<Vec<Bytes>>,
    /// When each kept event or chunk arrived, in ms after the first.
    pub offsets_ms: Vec<u32>,
    first: Option<Instant>,
}

impl StreamReader {
    /// A reader that also keeps the events or chunks (for the response cache).
    pub fn recording() -> Self {
        StreamReader {
            events: Some(Vec::new()),
            chunks: Some(Vec::new()),
            ..StreamReader::default()
        }
    }

    fn offset(&mut self) -> u32 {
        let now = Instant::now();
        let first = *self.first.get_or_insert(now);
        u32::try_from(now.duration_since(first).as_millis()).unwrap_or(u32::MAX)
    }

    pub fn read(&mut self, f: &RelayedFrame) {
        let FrameKind::Event(name) = &f.frame.kind else {
            return;
        };
        if name == "chunk" {
            if self.chunks.is_some() {
                let offset = self.offset();
                self.offsets_ms.push(offset);
            }
            if let Some(chunks) = self.chunks.as_mut() {
                chunks.push(f.frame.payload.clone());
            }
            self.events = None;
            read_invoke_chunk(&f.frame.payload, &mut self.summary);
            return;
        }
        self.chunks = None;
        if let Some(event) = ConverseEvent::from_frame(&f.frame) {
            self.summary.observe(&event);
            if self.events.is_some() {
                let offset = self.offset();
                self.offsets_ms.push(offset);
            }
            if let Some(events) = self.events.as_mut() {
                events.push(event);
            }
        }
    }
}

/// Reads stop reason and usage from an invoke-stream chunk (`{"bytes": base64}`),
/// in the Anthropic (`message_delta`, `message_stop`) or Llama
/// (`stop_reason`, `amazon-bedrock-invocationMetrics`) formats.
fn read_invoke_chunk(payload: &[u8], summary: &mut Summary) {
    let Ok(outer) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return;
    };
    let Some(inner) = outer["bytes"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
    else {
        return;
    };
    if let Some(stop) = inner["delta"]["stop_reason"]
        .as_str()
        .or(inner["stop_reason"].as_str())
    {
        summary.stop_reason = Some(stop.to_owned());
    }
    let metrics = &inner["amazon-bedrock-invocationMetrics"];
    if metrics.is_object() {
        let n = |k: &str| metrics[k].as_u64().unwrap_or(0);
        let usage = Usage {
            input_tokens: n("inputTokenCount"),
            output_tokens: n("outputTokenCount"),
            total_tokens: n("inputTokenCount") + n("outputTokenCount"),
            cache_read_input_tokens: n("cacheReadInputTokenCount"),
            cache_write_input_tokens: n("cacheWriteInputTokenCount"),
        };
        summary.usage = Some(usage);
        summary.latency_ms = metrics["invocationLatency"].as_u64();
    }
}
