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
use futures_util::future::Either;
use futures_util::stream::{self, Stream, StreamExt};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::error::{ErrorKind, ProxyError, Side};

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
    if !paced {
        // As fast as the client reads: every frame is ready.
        return Box::pin(stream::iter(frames.into_iter().map(|(frame, _)| Ok(frame))));
    }
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

/// [`replay`] of the frames `make` returns, made on the first poll: a stream
/// whose frames are never read (its answer went out another way) costs
/// nothing.
pub fn replay_lazy(
    make: impl FnOnce() -> Vec<(RelayedFrame, Duration)> + Send + 'static,
    paced: bool,
) -> FrameStream {
    Box::pin(stream::once(async move { replay(make(), paced) }).flatten())
}

/// A stream with its first frame already read (so the caller knows the
/// upstream really started answering before committing to it).
pub fn prepend(first: RelayedFrame, rest: FrameStream) -> FrameStream {
    Box::pin(stream::once(async move { Ok(first) }).chain(rest))
}

/// Ends `frames` with a proxy-side `Unavailable` error the moment `cut` is
/// cancelled (shutdown's grace has passed): the client's stream then ends with
/// an exception frame or error event, and the books call it [`StreamEnd::Cut`].
pub fn until_cut(frames: FrameStream, cut: tokio_util::sync::CancellationToken) -> FrameStream {
    // Polled only once the cut comes: the token takes a lock on every poll,
    // and this one would be polled for every frame.
    let cut = Box::pin(bedrock_wire::serve::woken_only(cut.cancelled_owned()));
    Box::pin(stream::unfold(Some((frames, cut)), |state| async move {
        let (mut frames, mut cut) = state?;
        tokio::select! {
            biased;
            () = &mut cut => {
                let e = ProxyError::new(
                    ErrorKind::Unavailable,
                    Side::Internal,
                    "The proxy is shutting down and this stream outlived its grace period; retry against another replica.",
                );
                Some((Err(e), None))
            }
            item = frames.next() => item.map(|item| (item, Some((frames, cut)))),
        }
    }))
}

/// How a stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// Every frame arrived and the upstream closed the stream.
    Complete,
    /// The upstream failed, or sent an exception frame.
    Failed(ProxyError),
    /// The proxy ended it (shutdown's grace passed), with this error.
    Cut(ProxyError),
    /// The client went away first.
    ClientGone,
}

/// Told about every frame of a stream and, once, how it ended.
pub trait StreamObserver: Send + 'static {
    fn frame(&mut self, frame: &RelayedFrame);
    fn end(&mut self, end: StreamEnd);
    /// Whether [`StreamObserver::frame`] does anything: frames sent at once
    /// are not shown to an observer that ignores them.
    fn reads_frames(&self) -> bool {
        true
    }
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

/// Frames that are ready together are sent to the client in one write, at
/// most this many at a time; a frame that arrives alone goes out alone, at once.
const MAX_BATCH: usize = 64;

/// How a client-side stream renders what the upstream sends.
trait Render: Send + 'static {
    /// Appends what `item` becomes to `out` (`None`: the upstream ended);
    /// returns whether the client's stream ends with it.
    fn render(
        &mut self,
        item: Option<Result<RelayedFrame, ProxyError>>,
        out: &mut Vec<Bytes>,
    ) -> bool;
}

/// How a stream that ends with error `e` ended: cut by the proxy itself, or failed.
fn ended_by(e: ProxyError) -> StreamEnd {
    if e.side == Side::Internal {
        StreamEnd::Cut(e)
    } else {
        StreamEnd::Failed(e)
    }
}

/// The error an upstream exception frame reports. Its payload is
/// `{"message": ...}` (Bedrock) or `{"Message": ...}` (SageMaker): the message
/// is its text, not the JSON, so each API renders it in one level of JSON.
fn frame_error(kind: &str, payload: &[u8]) -> ProxyError {
    let message = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(payload).into_owned());
    ProxyError::new(
        bedrock_wire::error::ErrorType::parse(kind)
            .map(ErrorKind::from_bedrock)
            .unwrap_or(ErrorKind::Internal),
        crate::error::Side::Upstream,
        message,
    )
}

/// Yields that may come back empty while a batch is gathered.
const LINGER_YIELDS: u32 = 3;

/// Drives `render` over `frames`. The first frame goes to the client the moment
/// it arrives. After it, frames that arrive in a burst are sent as one chunk:
/// hyper hands an upstream body over one HTTP chunk at a time, each after a
/// hop through the upstream connection's task, so once a frame is in, the
/// relay yields to let that task run and takes whatever it delivered, until
/// yields have come back empty [`LINGER_YIELDS`] times. A burst of frames read in one go
/// (measured: a 35-frame answer) then costs a handful of writes to the client
/// instead of one per frame, and about half the CPU; a frame that comes alone
/// waits a few task switches (microseconds).
fn relay(
    frames: FrameStream,
    render: impl Render,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let batches = frames.ready_chunks(MAX_BATCH);
    stream::unfold(Some((batches, render, true)), |state| async move {
        let (mut batches, mut render, first) = state?;
        let mut out = Vec::new();
        loop {
            let take = |batch: Option<Vec<_>>, render: &mut _, out: &mut Vec<Bytes>| match batch {
                None => Render::render(render, None, out),
                Some(batch) => batch
                    .into_iter()
                    .any(|item| Render::render(render, Some(item), out)),
            };
            let mut finished = take(batches.next().await, &mut render, &mut out);
            let mut misses = 0;
            while !first && !finished && out.len() < MAX_BATCH && misses < LINGER_YIELDS {
                tokio::task::yield_now().await;
                match batches.next().now_or_never() {
                    Some(batch) => finished = take(batch, &mut render, &mut out),
                    None => misses += 1,
                }
            }
            let chunk = match out.len() {
                0 if finished => return None,
                0 => continue,
                1 => out.pop().unwrap_or_default(),
                _ => {
                    let mut all = bytes::BytesMut::with_capacity(out.iter().map(Bytes::len).sum());
                    for part in &out {
                        all.extend_from_slice(part);
                    }
                    all.freeze()
                }
            };
            let next = (!finished).then_some((batches, render, false));
            return Some((Ok(chunk), next));
        }
    })
}

/// Renders a Bedrock event stream as it came.
struct BedrockRender<O: StreamObserver> {
    ending: Ending<O>,
}

impl<O: StreamObserver> Render for BedrockRender<O> {
    fn render(
        &mut self,
        item: Option<Result<RelayedFrame, ProxyError>>,
        out: &mut Vec<Bytes>,
    ) -> bool {
        match item {
            Some(Ok(f)) => {
                self.ending.observer.frame(&f);
                let failed = match &f.frame.kind {
                    FrameKind::Exception(kind) => Some(frame_error(kind, &f.frame.payload)),
                    _ => None,
                };
                out.push(f.raw);
                match failed {
                    Some(error) => {
                        self.ending.end(StreamEnd::Failed(error));
                        true
                    }
                    None => false,
                }
            }
            Some(Err(e)) => {
                out.push(exception_frame(exception_member(e.kind), &e.message));
                self.ending.end(ended_by(e));
                true
            }
            None => {
                self.ending.end(StreamEnd::Complete);
                true
            }
        }
    }
}

/// The most bytes of `joined` frames sent as one chunk. A longer answer goes
/// batch by batch as before, so a client that stops reading holds the relay
/// at a frame boundary, where shutdown's cut can still end it with an
/// exception frame and the books call it cut, not complete; what one chunk
/// hands over at once fits in a socket's send buffer.
const AT_ONCE_MAX_BYTES: usize = 64 * 1024;

/// The client's side of a Bedrock event stream: the upstream's frames byte for
/// byte; a failure becomes one exception frame and the end of the stream.
/// Frames already `joined` go out as one chunk (up to [`AT_ONCE_MAX_BYTES`]),
/// unless the observer reads each frame.
pub fn to_bedrock_client(
    frames: FrameStream,
    joined: Option<Bytes>,
    observer: impl StreamObserver,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let ending = Ending {
        observer,
        ended: false,
    };
    match joined {
        Some(all) if all.len() <= AT_ONCE_MAX_BYTES && !ending.observer.reads_frames() => {
            drop(frames);
            Either::Left(at_once(all, ending))
        }
        _ => Either::Right(relay(frames, BedrockRender { ending })),
    }
}

/// `all` as one chunk; the stream is complete once the client's side has
/// taken it (asked for what follows), and ends for a client gone before.
fn at_once<O: StreamObserver>(
    all: Bytes,
    ending: Ending<O>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    stream::unfold((Some(all), ending), |(all, mut ending)| async move {
        match all {
            Some(all) => Some((Ok(all), (None, ending))),
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

/// Renders a ConverseStream through an [`SseWriter`].
struct SseRender<O: StreamObserver, W: SseWriter> {
    ending: Ending<O>,
    writer: W,
}

impl<O: StreamObserver, W: SseWriter> Render for SseRender<O, W> {
    fn render(
        &mut self,
        item: Option<Result<RelayedFrame, ProxyError>>,
        out: &mut Vec<Bytes>,
    ) -> bool {
        match item {
            Some(Ok(f)) => {
                self.ending.observer.frame(&f);
                if let FrameKind::Exception(kind) = &f.frame.kind {
                    let error = frame_error(kind, &f.frame.payload);
                    out.push(self.writer.failed(&error));
                    self.ending.end(StreamEnd::Failed(error));
                    return true;
                }
                if let Some(event) = ConverseEvent::from_frame(&f.frame) {
                    out.extend(self.writer.event(&event));
                }
                false
            }
            Some(Err(e)) => {
                out.push(self.writer.failed(&e));
                self.ending.end(ended_by(e));
                true
            }
            None => {
                out.extend(self.writer.done());
                self.ending.end(StreamEnd::Complete);
                true
            }
        }
    }
}

/// The client's side of a translated stream: each upstream frame rendered by
/// `writer` as it arrives; a failure (an upstream exception frame, a cut) becomes
/// the writer's error event and the end of the stream.
pub fn to_sse_client(
    frames: FrameStream,
    observer: impl StreamObserver,
    writer: impl SseWriter,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    relay(
        frames,
        SseRender {
            ending: Ending {
                observer,
                ended: false,
            },
            writer,
        },
    )
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
    /// What the frames say, known before they pass (a replayed cache entry):
    /// they are not parsed, and [`StreamReader::finished`] takes this.
    known: Option<Summary>,
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

    /// A reader of frames whose summary is already known (a streamed cache
    /// hit replaying a stored answer): reading them would find `summary`.
    pub fn known(summary: Summary) -> Self {
        StreamReader {
            known: Some(summary),
            ..StreamReader::default()
        }
    }

    /// Whether the summary is known already (a replay): frames are not read.
    pub fn is_known(&self) -> bool {
        self.known.is_some()
    }

    /// The stream ran to its end: a known summary is now what was read (a
    /// replay cut short keeps the empty one: the client did not get it all).
    pub fn finished(&mut self) {
        if let Some(known) = self.known.take() {
            self.summary = known;
        }
    }

    fn offset(&mut self) -> u32 {
        let now = Instant::now();
        let first = *self.first.get_or_insert(now);
        u32::try_from(now.duration_since(first).as_millis()).unwrap_or(u32::MAX)
    }

    pub fn read(&mut self, f: &RelayedFrame) {
        if self.known.is_some() {
            return;
        }
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
    let intervened = bedrock_wire::converse::GUARDRAIL_INTERVENED;
    if inner["amazon-bedrock-guardrailAction"].as_str() == Some("INTERVENED") {
        summary.stop_reason = Some(intervened.to_owned());
    } else if let Some(stop) = inner["delta"]["stop_reason"]
        .as_str()
        .or(inner["stop_reason"].as_str())
        .filter(|_| summary.stop_reason.as_deref() != Some(intervened))
    {
        summary.stop_reason = Some(stop.to_owned());
    }
    // Anthropic's message_start splits cache writes by TTL; Bedrock's
    // invocation metrics at the end give only their sum.
    if inner["type"] == "message_start" {
        let one_hour = bedrock_wire::converse::anthropic_1h_writes(&inner["message"]["usage"]);
        summary.usage = Some(Usage {
            cache_write_1h_input_tokens: one_hour,
            ..summary.usage.unwrap_or_default()
        });
    }
    let metrics = &inner["amazon-bedrock-invocationMetrics"];
    if metrics.is_object() {
        let n = |k: &str| metrics[k].as_u64().unwrap_or(0);
        let written = n("cacheWriteInputTokenCount");
        let one_hour = summary
            .usage
            .map_or(0, |u| u.cache_write_1h_input_tokens)
            .min(written);
        let usage = Usage {
            input_tokens: n("inputTokenCount"),
            output_tokens: n("outputTokenCount"),
            total_tokens: n("inputTokenCount") + n("outputTokenCount"),
            cache_read_input_tokens: n("cacheReadInputTokenCount"),
            cache_write_input_tokens: written,
            cache_write_1h_input_tokens: one_hour,
        };
        summary.usage = Some(usage);
        summary.latency_ms = metrics["invocationLatency"].as_u64();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bedrock_wire::eventstream::event_frame;

    /// A text delta frame saying `text`.
    fn text_frame(text: &str) -> RelayedFrame {
        let raw = event_frame(
            "contentBlockDelta",
            format!(r#"{{"contentBlockIndex":0,"delta":{{"text":"{text}"}}}}"#),
        );
        RelayedFrame {
            frame: decode(raw.clone()).unwrap(),
            raw,
        }
    }

    fn frame(i: usize) -> RelayedFrame {
        text_frame(&format!("part {i} "))
    }

    struct Ended(Arc<std::sync::Mutex<Option<String>>>);

    impl StreamObserver for Ended {
        fn frame(&mut self, _: &RelayedFrame) {}
        fn end(&mut self, end: StreamEnd) {
            *self.0.lock().unwrap() = Some(format!("{end:?}"));
        }
        fn reads_frames(&self) -> bool {
            false
        }
    }

    /// An observer that reads every frame (counts them) and how it ended.
    struct Counting {
        frames: Arc<std::sync::atomic::AtomicUsize>,
        ended: Ended,
    }

    impl StreamObserver for Counting {
        fn frame(&mut self, _: &RelayedFrame) {
            self.frames
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn end(&mut self, end: StreamEnd) {
            self.ended.end(end);
        }
    }

    fn joined(frames: &[RelayedFrame]) -> Bytes {
        frames
            .iter()
            .flat_map(|f| f.raw.to_vec())
            .collect::<Vec<u8>>()
            .into()
    }

    /// A replay at once of `frames` made lazily, and whether they were made.
    fn lazily(frames: Vec<RelayedFrame>) -> (FrameStream, Arc<std::sync::atomic::AtomicBool>) {
        let made = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = made.clone();
        let stream = replay_lazy(
            move || {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                frames.into_iter().map(|f| (f, Duration::ZERO)).collect()
            },
            false,
        );
        (stream, made)
    }

    #[tokio::test]
    async fn joined_frames_go_out_in_one_write_and_the_frames_are_never_made() {
        let frames: Vec<_> = (0..40).map(frame).collect();
        let all = joined(&frames);
        let (upstream, made) = lazily(frames);
        let ended = Arc::new(std::sync::Mutex::new(None));
        let mut client = Box::pin(to_bedrock_client(
            upstream,
            Some(all.clone()),
            Ended(ended.clone()),
        ));
        let first = client.next().await.unwrap().unwrap();
        assert_eq!(first, all, "every frame, in order, in one chunk");
        assert_eq!(
            *ended.lock().unwrap(),
            None,
            "not complete before the client's side took the chunk"
        );
        assert!(client.next().await.is_none());
        assert_eq!(ended.lock().unwrap().as_deref(), Some("Complete"));
        assert!(!made.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_client_gone_after_the_joined_chunk_but_before_its_end_is_not_complete() {
        let frames: Vec<_> = (0..3).map(frame).collect();
        let all = joined(&frames);
        let ended = Arc::new(std::sync::Mutex::new(None));
        let mut client = Box::pin(to_bedrock_client(
            replay(vec![], false),
            Some(all),
            Ended(ended.clone()),
        ));
        client.next().await.unwrap().unwrap();
        drop(client);
        assert_eq!(ended.lock().unwrap().as_deref(), Some("ClientGone"));
    }

    #[tokio::test]
    async fn a_long_joined_answer_goes_frame_batch_by_batch() {
        // 300 frames of about 2 KiB: more than one chunk may hand over at once.
        let frames: Vec<_> = (0..300)
            .map(|i| text_frame(&"x".repeat(2000 + i % 7)))
            .collect();
        let all = joined(&frames);
        assert!(all.len() > AT_ONCE_MAX_BYTES);
        let (upstream, made) = lazily(frames);
        let ended = Arc::new(std::sync::Mutex::new(None));
        let chunks: Vec<Bytes> =
            to_bedrock_client(upstream, Some(all.clone()), Ended(ended.clone()))
                .map(|c| c.unwrap())
                .collect()
                .await;
        let sent: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        assert_eq!(sent, all.to_vec(), "every frame, in order, unchanged");
        assert!(chunks.len() > 1, "one chunk of {} bytes", all.len());
        assert!(made.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(ended.lock().unwrap().as_deref(), Some("Complete"));
    }

    #[tokio::test]
    async fn an_observer_that_reads_frames_gets_each_of_them_even_when_they_come_joined() {
        let frames: Vec<_> = (0..5).map(frame).collect();
        let all = joined(&frames);
        let expected = all.clone();
        let (upstream, _) = lazily(frames);
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ended = Arc::new(std::sync::Mutex::new(None));
        let observer = Counting {
            frames: seen.clone(),
            ended: Ended(ended.clone()),
        };
        let chunks: Vec<Bytes> = to_bedrock_client(upstream, Some(all), observer)
            .map(|c| c.unwrap())
            .collect()
            .await;
        let sent: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        assert_eq!(sent, expected.to_vec());
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 5);
        assert_eq!(ended.lock().unwrap().as_deref(), Some("Complete"));
    }

    #[test]
    fn an_exception_frame_reports_its_message_text_not_its_json() {
        let e = frame_error(
            "throttlingException",
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        );
        assert_eq!(e.kind, ErrorKind::Throttled);
        assert_eq!(
            e.message,
            "Too many requests, please wait before trying again."
        );
        let sagemaker = frame_error(
            "modelStreamErrorException",
            br#"{"Message":"stream broke","ErrorCode":"StreamBroken"}"#,
        );
        assert_eq!(sagemaker.message, "stream broke");
        assert_eq!(
            frame_error("internalServerException", b"not json").message,
            "not json"
        );
    }

    #[tokio::test]
    async fn frames_ready_together_go_out_in_fewer_writes_byte_for_byte() {
        let frames: Vec<_> = (0..40).map(frame).collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.raw.to_vec()).collect();
        let upstream = replay(
            frames.into_iter().map(|f| (f, Duration::ZERO)).collect(),
            false,
        );
        let ended = Arc::new(std::sync::Mutex::new(None));
        let chunks: Vec<Bytes> = to_bedrock_client(upstream, None, Ended(ended.clone()))
            .map(|c| c.unwrap())
            .collect()
            .await;
        let sent: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        assert_eq!(sent, expected, "every frame, in order, unchanged");
        assert!(chunks.len() < 10, "{} writes for 40 frames", chunks.len());
        assert_eq!(ended.lock().unwrap().as_deref(), Some("Complete"));
    }

    #[tokio::test]
    async fn a_frame_that_comes_alone_is_sent_without_waiting_for_more() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let upstream: FrameStream = Box::pin(stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let ended = Arc::new(std::sync::Mutex::new(None));
        let mut client = Box::pin(to_bedrock_client(upstream, None, Ended(ended.clone())));
        for i in 0..3 {
            tx.send(Ok(frame(i))).unwrap();
            let chunk = tokio::time::timeout(Duration::from_secs(1), client.next())
                .await
                .expect("a lone frame is not held back")
                .unwrap()
                .unwrap();
            assert_eq!(chunk, frame(i).raw);
        }
        tx.send(Err(ProxyError::upstream_timeout("went silent")))
            .unwrap();
        let last = client.next().await.unwrap().unwrap();
        let exception = decode(last).unwrap();
        assert!(
            matches!(exception.kind, FrameKind::Exception(ref k) if k == "modelStreamErrorException")
        );
        assert!(client.next().await.is_none());
        assert!(ended
            .lock()
            .unwrap()
            .as_deref()
            .unwrap()
            .starts_with("Failed"));
    }
}
