//! A stored answer: the complete response as normalized events (Converse), or
//! the native body or chunks (InvokeModel), with the original timing of each
//! event for paced replay and what the answer cost. Entries are immutable and
//! shared (`Arc`) between the cache and every hit being served.
//!
//! A hit reports the original answer's `usage` (the tokens Bedrock billed when
//! it was made) so clients see what the answer is worth, not zero.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bedrock_wire::converse::{assemble, split, ConverseEvent, EventKind, Summary, Usage};
use bedrock_wire::eventstream::{decode, event_frame, Frame, FrameKind};
use bedrock_wire::tier::{LatencyTier, ServiceTier};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

use crate::answer::ServedBy;
use crate::config::UpstreamKind;
use crate::stream::RelayedFrame;
use crate::support::now_ms;

/// What an entry holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A Converse answer: its events, each event's offset from the first (ms),
    /// and the assembled JSON body. `frames` are the events encoded once as
    /// event-stream frames, replayed by every streamed hit as they are; each
    /// event's payload is a slice of its frame. `joined` is every frame back
    /// to back (once compacted, each frame is a slice of it): what a hit
    /// replayed at once to a Bedrock client sends as one chunk.
    Converse {
        events: Vec<ConverseEvent>,
        frames: Vec<Bytes>,
        joined: Bytes,
        offsets_ms: Vec<u32>,
        body: Bytes,
    },
    /// An InvokeModel answer: its `x-amzn-bedrock-*` and content-type headers and body.
    Invoke {
        headers: Vec<(String, Bytes)>,
        body: Bytes,
    },
    /// An InvokeModelWithResponseStream answer: headers and chunk payloads,
    /// each a slice of its `chunk` frame in `frames` (encoded once, and
    /// joined, as above).
    InvokeStream {
        headers: Vec<(String, Bytes)>,
        chunks: Vec<Bytes>,
        frames: Vec<Bytes>,
        joined: Bytes,
        offsets_ms: Vec<u32>,
    },
}

impl Content {
    /// A Converse answer's content, its frames encoded (once, here); joined
    /// when compacted.
    fn converse(events: Vec<ConverseEvent>, offsets_ms: Vec<u32>, body: Bytes) -> Content {
        let frames = events.iter().map(ConverseEvent::to_frame).collect();
        Content::Converse {
            events,
            frames,
            joined: Bytes::new(),
            offsets_ms,
            body,
        }
    }

    /// A stream of InvokeModel chunks, their frames encoded (once, here);
    /// joined when compacted.
    fn invoke_stream(
        headers: Vec<(String, Bytes)>,
        chunks: Vec<Bytes>,
        offsets_ms: Vec<u32>,
    ) -> Content {
        let frames = chunks
            .iter()
            .map(|c| event_frame("chunk", c.clone()))
            .collect();
        Content::InvokeStream {
            headers,
            chunks,
            frames,
            joined: Bytes::new(),
            offsets_ms,
        }
    }

    /// The same content in one buffer of its own size, every part a slice of it.
    /// Bodies and payloads read from a connection are slices of the
    /// connection's read buffer (8 KiB and up): stored as they are, each small
    /// answer would keep a whole buffer alive, and an answer's dozens of small
    /// event payloads would each be an allocation of their own, fragmenting
    /// the heap as entries come and go. Payloads are not copied apart: each is
    /// the slice of its frame that holds it, and the frames lie back to back,
    /// so `joined` is one slice too.
    fn compacted(self) -> Content {
        match self {
            Content::Converse {
                events,
                frames,
                offsets_ms,
                body,
                ..
            } => {
                let (body, frames, joined) = pack(body, frames);
                let events = events
                    .into_iter()
                    .zip(&frames)
                    .map(|(e, frame)| ConverseEvent {
                        payload: payload_of(frame).unwrap_or(e.payload),
                        kind: e.kind,
                    })
                    .collect();
                Content::Converse {
                    events,
                    frames,
                    joined,
                    offsets_ms,
                    body,
                }
            }
            Content::Invoke { headers, body } => Content::Invoke {
                headers,
                body: Bytes::copy_from_slice(&body),
            },
            Content::InvokeStream {
                headers,
                chunks,
                frames,
                offsets_ms,
                ..
            } => {
                let (_, frames, joined) = pack(Bytes::new(), frames);
                let chunks = chunks
                    .into_iter()
                    .zip(&frames)
                    .map(|(c, frame)| payload_of(frame).unwrap_or(c))
                    .collect();
                Content::InvokeStream {
                    headers,
                    chunks,
                    frames,
                    joined,
                    offsets_ms,
                }
            }
        }
    }
}

/// Copies `first` and `parts` into one allocation and returns slices of it:
/// `first`, each part, and all the parts together.
fn pack(first: Bytes, parts: Vec<Bytes>) -> (Bytes, Vec<Bytes>, Bytes) {
    let total = first.len() + parts.iter().map(Bytes::len).sum::<usize>();
    let mut buffer = bytes::BytesMut::with_capacity(total);
    buffer.extend_from_slice(&first);
    for part in &parts {
        buffer.extend_from_slice(part);
    }
    let buffer = buffer.freeze();
    let mut at = first.len();
    let parts = parts
        .iter()
        .map(|part| {
            let slice = buffer.slice(at..at + part.len());
            at += part.len();
            slice
        })
        .collect();
    (
        buffer.slice(..first.len()),
        parts,
        buffer.slice(first.len()..),
    )
}

/// The payload of an encoded event-stream frame, as a slice of it: after the
/// 12-byte prelude (total length, headers length, prelude CRC) and the
/// headers, before the 4-byte message CRC.
fn payload_of(frame: &Bytes) -> Option<Bytes> {
    let headers_len = u32::from_be_bytes(frame.get(4..8)?.try_into().ok()?) as usize;
    let start = 12usize.checked_add(headers_len)?;
    let end = frame.len().checked_sub(4)?;
    (start <= end).then(|| frame.slice(start..end))
}

impl Content {
    /// Bytes held besides the buffer: the part lists and their offsets.
    fn overhead(&self) -> usize {
        let part = std::mem::size_of::<ConverseEvent>()
            + std::mem::size_of::<Bytes>()
            + std::mem::size_of::<u32>();
        match self {
            Content::Converse { events, .. } => events.len() * part,
            Content::Invoke { headers, .. } => headers.len() * 64,
            Content::InvokeStream {
                headers, chunks, ..
            } => headers.len() * 64 + chunks.len() * part,
        }
    }
}

/// One cached answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// When it was stored (ms since the Unix epoch).
    pub created_ms: u64,
    pub ttl: Duration,
    pub tenant: Arc<str>,
    pub route: Arc<str>,
    /// The upstream model that answered (for prices).
    pub model: String,
    /// The upstream that answered: a hit names it (`x-proxy-upstream`).
    pub served_by: Option<ServedBy>,
    pub summary: Summary,
    pub content: Content,
}

/// Why an answer cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("the answer cannot be cached: {0}")]
    Unsupported(String),
    #[error("a stored entry is corrupt: {0}")]
    Corrupt(&'static str),
    /// Written by another version of the proxy (during a rolling upgrade):
    /// a miss, and the answer stored again in this version's format.
    #[error("a stored entry is from another version of the proxy")]
    OtherVersion,
}

/// Headers kept with invoke answers.
fn kept_headers(headers: &HeaderMap) -> Vec<(String, Bytes)> {
    headers
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str();
            n == "content-type"
                || (n.starts_with("x-amzn-bedrock-") && n != "x-amzn-bedrock-invocation-latency")
        })
        .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

impl Entry {
    fn new(
        tenant: Arc<str>,
        route: Arc<str>,
        model: &str,
        ttl: Duration,
        summary: Summary,
        content: Content,
    ) -> Entry {
        Entry {
            created_ms: now_ms(),
            ttl,
            tenant,
            route,
            model: model.to_owned(),
            served_by: None,
            summary,
            content: content.compacted(),
        }
    }

    /// The entry, naming who served it.
    pub fn served_by(mut self, served_by: Option<ServedBy>) -> Entry {
        self.served_by = served_by;
        self
    }

    /// An entry from a whole Converse body.
    pub fn from_converse_body(
        tenant: Arc<str>,
        route: Arc<str>,
        model: &str,
        ttl: Duration,
        body: &Bytes,
    ) -> Result<Entry, EntryError> {
        let json: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| EntryError::Unsupported(e.to_string()))?;
        let events = split(&json).map_err(|e| EntryError::Unsupported(e.to_string()))?;
        let summary = Summary::of_response(&json);
        let offsets_ms = vec![0; events.len()];
        let content = Content::converse(events, offsets_ms, body.clone());
        Ok(Entry::new(tenant, route, model, ttl, summary, content))
    }

    /// An entry from a complete ConverseStream, with each event's arrival offset.
    pub fn from_converse_events(
        tenant: Arc<str>,
        route: Arc<str>,
        model: &str,
        ttl: Duration,
        events: Vec<ConverseEvent>,
        offsets_ms: Vec<u32>,
        summary: Summary,
    ) -> Result<Entry, EntryError> {
        let body = assemble(&events).map_err(|e| EntryError::Unsupported(e.to_string()))?;
        let content = Content::converse(events, offsets_ms, Bytes::from(body.to_string()));
        Ok(Entry::new(tenant, route, model, ttl, summary, content))
    }

    /// An entry from a whole InvokeModel answer.
    pub fn from_invoke(
        tenant: Arc<str>,
        route: Arc<str>,
        model: &str,
        ttl: Duration,
        headers: &HeaderMap,
        body: Bytes,
        summary: Summary,
    ) -> Entry {
        let content = Content::Invoke {
            headers: kept_headers(headers),
            body,
        };
        Entry::new(tenant, route, model, ttl, summary, content)
    }

    /// An entry from a complete InvokeModelWithResponseStream answer.
    #[allow(clippy::too_many_arguments)]
    pub fn from_invoke_stream(
        tenant: Arc<str>,
        route: Arc<str>,
        model: &str,
        ttl: Duration,
        headers: &HeaderMap,
        chunks: Vec<Bytes>,
        offsets_ms: Vec<u32>,
        summary: Summary,
    ) -> Entry {
        let content = Content::invoke_stream(kept_headers(headers), chunks, offsets_ms);
        Entry::new(tenant, route, model, ttl, summary, content)
    }

    /// Age of the entry.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.created_ms))
    }

    /// Time left before it expires.
    pub fn remaining(&self) -> Duration {
        self.ttl.saturating_sub(self.age())
    }

    /// Approximate memory held, for the byte-weighted L1 tier.
    pub fn weight(&self) -> u32 {
        // The entry itself, its key and the cache's bookkeeping for it.
        const PER_ENTRY: usize = std::mem::size_of::<Entry>() + 256;
        let strings = self.tenant.len()
            + self.route.len()
            + self.model.len()
            + self
                .served_by
                .as_ref()
                .map_or(0, |s| s.upstream.len() + s.model.len());
        let bytes = match &self.content {
            // Payloads are slices of their frames: counted once, in the frames.
            Content::Converse { frames, body, .. } => {
                body.len() + frames.iter().map(Bytes::len).sum::<usize>()
            }
            Content::Invoke { headers, body } => {
                body.len()
                    + headers
                        .iter()
                        .map(|(n, v)| n.len() + v.len())
                        .sum::<usize>()
            }
            Content::InvokeStream {
                headers, frames, ..
            } => {
                frames.iter().map(Bytes::len).sum::<usize>()
                    + headers
                        .iter()
                        .map(|(n, v)| n.len() + v.len())
                        .sum::<usize>()
            }
        };
        let total = PER_ENTRY + strings + bytes + self.content.overhead();
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// The headers a hit answers with.
    pub fn headers(&self, streaming: bool) -> HeaderMap {
        let mut out = HeaderMap::new();
        let kept = match &self.content {
            Content::Invoke { headers, .. } | Content::InvokeStream { headers, .. } => {
                headers.as_slice()
            }
            Content::Converse { .. } => &[],
        };
        for (name, value) in kept {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                out.insert(n, v);
            }
        }
        if let Content::Converse { .. } = self.content {
            out.insert(
                "content-type",
                HeaderValue::from_static(if streaming {
                    bedrock_wire::eventstream::CONTENT_TYPE
                } else {
                    "application/json"
                }),
            );
        }
        out
    }

    /// The whole body a non-streamed hit answers with.
    pub fn body(&self) -> Option<Bytes> {
        match &self.content {
            Content::Converse { body, .. } | Content::Invoke { body, .. } => Some(body.clone()),
            Content::InvokeStream { .. } => None,
        }
    }

    /// Every frame of a streamed answer back to back, as one buffer (shared,
    /// not copied): what a hit replayed at once sends a Bedrock client.
    pub fn joined_frames(&self) -> Option<Bytes> {
        match &self.content {
            Content::Converse { frames, joined, .. }
            | Content::InvokeStream { frames, joined, .. } => {
                (!frames.is_empty() && !joined.is_empty()).then(|| joined.clone())
            }
            Content::Invoke { .. } => None,
        }
    }

    /// Whether the entry holds a stream's frames (a streamed hit can replay it).
    pub fn has_frames(&self) -> bool {
        match &self.content {
            Content::Converse { frames, .. } | Content::InvokeStream { frames, .. } => {
                !frames.is_empty()
            }
            Content::Invoke { .. } => false,
        }
    }

    /// The frames a streamed hit replays, each with its original offset: the
    /// frames encoded when the entry was made, shared, not encoded again.
    pub fn frames(&self) -> Vec<(RelayedFrame, Duration)> {
        let offset =
            |v: &[u32], i: usize| Duration::from_millis(u64::from(v.get(i).copied().unwrap_or(0)));
        let relayed = |raw: &Bytes, name: &str, payload: &Bytes| RelayedFrame {
            raw: raw.clone(),
            frame: Frame {
                kind: FrameKind::Event(name.to_owned()),
                payload: payload.clone(),
            },
        };
        match &self.content {
            Content::Converse {
                events,
                frames,
                offsets_ms,
                ..
            } => events
                .iter()
                .zip(frames)
                .enumerate()
                .map(|(i, (e, raw))| {
                    (
                        relayed(raw, e.kind.name(), &e.payload),
                        offset(offsets_ms, i),
                    )
                })
                .collect(),
            Content::InvokeStream {
                chunks,
                frames,
                offsets_ms,
                ..
            } => chunks
                .iter()
                .zip(frames)
                .enumerate()
                .map(|(i, (c, raw))| (relayed(raw, "chunk", c), offset(offsets_ms, i)))
                .collect(),
            Content::Invoke { .. } => Vec::new(),
        }
    }

    /// Encodes the entry for the shared tier.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(self.weight() as usize));
        w.0.extend_from_slice(MAGIC);
        w.u64(self.created_ms);
        w.u64(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        w.bytes(self.tenant.as_bytes());
        w.bytes(self.route.as_bytes());
        w.bytes(self.model.as_bytes());
        w.opt_str(self.served_by.as_ref().map(|s| &*s.upstream));
        w.opt_str(self.served_by.as_ref().map(|s| s.kind.name()));
        w.opt_str(self.served_by.as_ref().map(|s| &*s.model));
        w.opt_str(self.summary.stop_reason.as_deref());
        w.opt_str(self.summary.latency_tier.map(LatencyTier::name));
        w.u64(self.summary.latency_ms.unwrap_or(u64::MAX));
        w.opt_str(self.summary.service_tier.map(ServiceTier::name));
        w.opt_str(self.summary.invoked_model.as_deref());
        match &self.summary.usage {
            Some(u) => {
                w.u8(1);
                for n in [
                    u.input_tokens,
                    u.output_tokens,
                    u.total_tokens,
                    u.cache_read_input_tokens,
                    u.cache_write_input_tokens,
                    u.cache_write_1h_input_tokens,
                ] {
                    w.u64(n);
                }
            }
            None => w.u8(0),
        }
        match &self.content {
            Content::Converse {
                frames,
                offsets_ms,
                body,
                ..
            } => {
                w.u8(0);
                w.u32(frames.len() as u32);
                for (i, frame) in frames.iter().enumerate() {
                    w.u32(offsets_ms.get(i).copied().unwrap_or(0));
                    w.bytes(frame);
                }
                w.bytes(body);
            }
            Content::Invoke { headers, body } => {
                w.u8(1);
                w.headers(headers);
                w.bytes(body);
            }
            Content::InvokeStream {
                headers,
                frames,
                offsets_ms,
                ..
            } => {
                w.u8(2);
                w.headers(headers);
                w.u32(frames.len() as u32);
                for (i, frame) in frames.iter().enumerate() {
                    w.u32(offsets_ms.get(i).copied().unwrap_or(0));
                    w.bytes(frame);
                }
            }
        }
        w.0
    }

    /// Decodes an entry written by [`Entry::encode`].
    pub fn decode(data: &[u8]) -> Result<Entry, EntryError> {
        let mut r = Reader(Bytes::copy_from_slice(data));
        let magic = r.take(MAGIC.len())?;
        if magic.as_ref() != MAGIC {
            return Err(match magic.starts_with(b"BPCE") {
                true => EntryError::OtherVersion,
                false => EntryError::Corrupt("bad magic"),
            });
        }
        let created_ms = r.u64()?;
        let ttl = Duration::from_millis(r.u64()?);
        let tenant: Arc<str> = Arc::from(r.string()?);
        let route: Arc<str> = Arc::from(r.string()?);
        let model = r.string()?;
        let upstream = r.opt_string()?;
        let kind = r.opt_string()?;
        let served_model = r.opt_string()?;
        let served_by = match (upstream, kind, served_model) {
            (Some(upstream), Some(kind), Some(served)) => Some(ServedBy {
                upstream: Arc::from(upstream),
                kind: UpstreamKind::parse(&kind)
                    .ok_or(EntryError::Corrupt("unknown upstream kind"))?,
                model: Arc::from(served),
            }),
            _ => None,
        };
        let stop_reason = r.opt_string()?;
        let latency_tier = r.opt_string()?.as_deref().and_then(LatencyTier::parse);
        let latency_ms = Some(r.u64()?).filter(|v| *v != u64::MAX);
        let service_tier = r.opt_string()?.as_deref().and_then(ServiceTier::parse);
        let invoked_model = r.opt_string()?;
        let usage = match r.u8()? {
            0 => None,
            _ => Some(Usage {
                input_tokens: r.u64()?,
                output_tokens: r.u64()?,
                total_tokens: r.u64()?,
                cache_read_input_tokens: r.u64()?,
                cache_write_input_tokens: r.u64()?,
                cache_write_1h_input_tokens: r.u64()?,
            }),
        };
        let content = match r.u8()? {
            0 => {
                let n = r.u32()? as usize;
                let mut events = Vec::with_capacity(n.min(1 << 16));
                let mut frames = Vec::with_capacity(n.min(1 << 16));
                let mut offsets_ms = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    offsets_ms.push(r.u32()?);
                    let (name, payload, frame) = r.frame()?;
                    let kind = EventKind::from_name(&name)
                        .ok_or(EntryError::Corrupt("unknown event kind"))?;
                    events.push(ConverseEvent { kind, payload });
                    frames.push(frame);
                }
                Content::Converse {
                    events,
                    frames,
                    joined: Bytes::new(),
                    offsets_ms,
                    body: r.bytes()?,
                }
            }
            1 => Content::Invoke {
                headers: r.headers()?,
                body: r.bytes()?,
            },
            2 => {
                let headers = r.headers()?;
                let n = r.u32()? as usize;
                let mut chunks = Vec::with_capacity(n.min(1 << 16));
                let mut frames = Vec::with_capacity(n.min(1 << 16));
                let mut offsets_ms = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    offsets_ms.push(r.u32()?);
                    let (name, payload, frame) = r.frame()?;
                    if name != "chunk" {
                        return Err(EntryError::Corrupt("not a chunk frame"));
                    }
                    chunks.push(payload);
                    frames.push(frame);
                }
                Content::InvokeStream {
                    headers,
                    chunks,
                    frames,
                    joined: Bytes::new(),
                    offsets_ms,
                }
            }
            _ => return Err(EntryError::Corrupt("unknown content kind")),
        };
        // In one buffer of its own, the frames joined (the value read from
        // Redis holds them apart, between their offsets).
        let content = content.compacted();
        Ok(Entry {
            created_ms,
            ttl,
            tenant,
            route,
            model,
            served_by,
            summary: Summary {
                stop_reason,
                usage,
                latency_tier,
                latency_ms,
                service_tier,
                invoked_model,
            },
            content,
        })
    }
}

// Version 3 keeps who served the entry and its 1-hour cache writes; version 4
// stores stream events as encoded frames (replayed without encoding); version
// 5 the service tier that served and a prompt router's model. Older versions
// read as misses, and the answer is asked again.
const MAGIC: &[u8] = b"BPCE5";

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.bytes(s.as_bytes());
            }
            None => self.u8(0),
        }
    }
    fn headers(&mut self, headers: &[(String, Bytes)]) {
        self.u32(headers.len() as u32);
        for (n, v) in headers {
            self.bytes(n.as_bytes());
            self.bytes(v);
        }
    }
}

struct Reader(Bytes);

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, EntryError> {
        if self.0.len() < n {
            return Err(EntryError::Corrupt("truncated"));
        }
        Ok(self.0.split_to(n))
    }
    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, EntryError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, EntryError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Bytes, EntryError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, EntryError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| EntryError::Corrupt("not UTF-8"))
    }
    fn opt_string(&mut self) -> Result<Option<String>, EntryError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }
    /// An encoded event frame, checked (both CRCs): its event type, its
    /// payload (a slice of the frame) and the frame.
    fn frame(&mut self) -> Result<(String, Bytes, Bytes), EntryError> {
        let frame = self.bytes()?;
        let decoded = decode(frame.clone()).map_err(|_| EntryError::Corrupt("bad frame"))?;
        let FrameKind::Event(name) = decoded.kind else {
            return Err(EntryError::Corrupt("not an event frame"));
        };
        let payload = payload_of(&frame).ok_or(EntryError::Corrupt("bad frame"))?;
        Ok((name, payload, frame))
    }
    fn headers(&mut self) -> Result<Vec<(String, Bytes)>, EntryError> {
        let n = self.u32()? as usize;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            out.push((self.string()?, self.bytes()?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn converse_entry() -> Entry {
        let body = json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "Paris is the capital of France."}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 10, "outputTokens": 8, "totalTokens": 18},
            "metrics": {"latencyMs": 120}
        });
        Entry::from_converse_body(
            Arc::from("t"),
            Arc::from("haiku"),
            "m",
            Duration::from_secs(60),
            &Bytes::from(body.to_string()),
        )
        .unwrap()
    }

    #[test]
    fn entries_do_not_pin_the_buffer_they_were_read_from() {
        // An answer read off a connection is a slice of a larger read buffer.
        let answer = converse_entry().body().unwrap();
        let mut buffer = vec![b' '; 64 * 1024];
        buffer[..answer.len()].copy_from_slice(&answer);
        let read = Bytes::from(buffer);
        let body = read.slice(..answer.len());
        let range = read.as_ptr_range();
        let e = Entry::from_converse_body(
            Arc::from("t"),
            Arc::from("haiku"),
            "m",
            Duration::from_secs(60),
            &body,
        )
        .unwrap();
        let stored = e.body().unwrap();
        assert_eq!(stored, body);
        assert!(
            !range.contains(&stored.as_ptr()),
            "the body shares the read buffer"
        );
        let chunks = Entry::from_invoke_stream(
            Arc::from("t"),
            Arc::from("r"),
            "m",
            Duration::from_secs(60),
            &HeaderMap::new(),
            vec![read.slice(10..20)],
            vec![0],
            Summary::default(),
        );
        let Content::InvokeStream { chunks, .. } = &chunks.content else {
            panic!("not an invoke stream")
        };
        assert!(!range.contains(&chunks[0].as_ptr()));
    }

    #[test]
    fn entries_survive_encoding() {
        let e = converse_entry().served_by(Some(ServedBy {
            upstream: Arc::from("selfhosted"),
            kind: UpstreamKind::OpenAi,
            model: Arc::from("qwen2.5-72b-instruct"),
        }));
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        let e = converse_entry();
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert(
            "x-amzn-bedrock-output-token-count",
            HeaderValue::from_static("5"),
        );
        headers.insert("x-amzn-requestid", HeaderValue::from_static("not kept"));
        let i = Entry::from_invoke_stream(
            Arc::from("t"),
            Arc::from("r"),
            "m",
            Duration::from_secs(5),
            &headers,
            vec![Bytes::from_static(b"{\"bytes\":\"e30=\"}")],
            vec![7],
            Summary::default(),
        );
        let back = Entry::decode(&i.encode()).unwrap();
        assert_eq!(back, i);
        assert!(back.headers(true).get("x-amzn-requestid").is_none());
        assert_eq!(back.headers(true)["x-amzn-bedrock-output-token-count"], "5");
    }

    #[test]
    fn one_hour_cache_writes_survive_encoding_and_old_entries_still_decode() {
        let marker: u64 = 0x0102_0304_0506_0708;
        let body = json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "Hi."}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 10, "outputTokens": 2, "totalTokens": 12,
                "cacheWriteInputTokens": u64::MAX / 2,
                "cacheDetails": [{"ttl": "1h", "inputTokens": marker}, {"ttl": "5m", "inputTokens": 5}]},
        });
        let e = Entry::from_converse_body(
            Arc::from("t"),
            Arc::from("haiku"),
            "m",
            Duration::from_secs(60),
            &Bytes::from(body.to_string()),
        )
        .unwrap();
        assert_eq!(e.summary.usage.unwrap().cache_write_1h_input_tokens, marker);
        let encoded = e.encode();
        assert_eq!(Entry::decode(&encoded).unwrap(), e);
        // An entry an older version wrote is a miss, not a wrong answer.
        let mut older = encoded.clone();
        older[..MAGIC.len()].copy_from_slice(b"BPCE3");
        assert!(matches!(
            Entry::decode(&older),
            Err(EntryError::OtherVersion)
        ));
    }

    #[test]
    fn a_streamed_hit_shares_the_frames_encoded_when_stored() {
        let e = converse_entry();
        let first = e.frames();
        let again = Entry::decode(&e.encode()).unwrap();
        for (hit, other) in [(&e, &e), (&e, &again)] {
            let (a, b) = (hit.frames(), other.frames());
            assert_eq!(a.len(), first.len());
            for ((x, _), (y, _)) in a.iter().zip(&b) {
                assert_eq!(x.raw, y.raw);
            }
        }
        // Two hits on one entry hand out the same bytes, not two encodings.
        let second = e.frames();
        for ((x, _), (y, _)) in first.iter().zip(&second) {
            assert_eq!(x.raw.as_ptr(), y.raw.as_ptr());
            let range = x.raw.as_ptr_range();
            assert!(
                range.contains(&x.frame.payload.as_ptr()),
                "the payload is a slice of its frame"
            );
        }
        let stream = Entry::from_invoke_stream(
            Arc::from("t"),
            Arc::from("r"),
            "m",
            Duration::from_secs(5),
            &HeaderMap::new(),
            vec![Bytes::from_static(b"{\"bytes\":\"e30=\"}")],
            vec![0],
            Summary::default(),
        );
        let (chunk, _) = &stream.frames()[0];
        assert_eq!(
            chunk.raw,
            event_frame("chunk", Bytes::from_static(b"{\"bytes\":\"e30=\"}"))
        );
        assert_eq!(chunk.raw.as_ptr(), stream.frames()[0].0.raw.as_ptr());
    }

    #[test]
    fn corrupt_entries_are_errors() {
        let data = converse_entry().encode();
        assert!(Entry::decode(&data[..data.len() - 3]).is_err());
        assert!(Entry::decode(b"nope").is_err());
    }

    #[test]
    fn a_converse_entry_replays_as_body_and_frames() {
        let e = converse_entry();
        let body: serde_json::Value = serde_json::from_slice(&e.body().unwrap()).unwrap();
        assert_eq!(
            body["output"]["message"]["content"][0]["text"],
            "Paris is the capital of France."
        );
        let frames = e.frames();
        assert!(frames.len() >= 5);
        // Every frame is the event encoded as Bedrock encodes it, the payload
        // the part of it SDKs parse.
        for (relayed, _) in &frames {
            let FrameKind::Event(name) = &relayed.frame.kind else {
                panic!("not an event frame")
            };
            assert_eq!(
                relayed.raw,
                event_frame(name, relayed.frame.payload.clone())
            );
            let decoded = decode(relayed.raw.clone()).unwrap();
            assert_eq!(decoded.payload, relayed.frame.payload);
        }
        assert!(e.weight() as usize > e.body().unwrap().len());
        assert_eq!(e.summary.usage.unwrap().total_tokens, 18);
        // A replay at once sends the same bytes, joined, also after a trip
        // through the shared tier (whose value holds the frames apart).
        let all: Vec<u8> = frames.iter().flat_map(|(f, _)| f.raw.to_vec()).collect();
        assert_eq!(e.joined_frames().unwrap(), all);
        let back = Entry::decode(&e.encode()).unwrap();
        assert_eq!(back.joined_frames().unwrap(), all);
        assert!(converse_entry().has_frames());
    }

    #[test]
    fn an_invoke_stream_entry_joins_its_chunk_frames_and_a_whole_invoke_has_none() {
        let chunks = vec![
            Bytes::from_static(b"{\"bytes\":\"e30=\"}"),
            Bytes::from_static(b"{\"bytes\":\"e319\"}"),
        ];
        let e = Entry::from_invoke_stream(
            Arc::from("t"),
            Arc::from("r"),
            "m",
            Duration::from_secs(5),
            &HeaderMap::new(),
            chunks.clone(),
            vec![0, 3],
            Summary::default(),
        );
        let all: Vec<u8> = chunks
            .iter()
            .flat_map(|c| event_frame("chunk", c.clone()).to_vec())
            .collect();
        assert_eq!(e.joined_frames().unwrap(), all);
        assert_eq!(
            Entry::decode(&e.encode()).unwrap().joined_frames().unwrap(),
            all
        );
        let whole = Entry::from_invoke(
            Arc::from("t"),
            Arc::from("r"),
            "m",
            Duration::from_secs(5),
            &HeaderMap::new(),
            Bytes::from_static(b"{}"),
            Summary::default(),
        );
        assert!(!whole.has_frames());
        assert_eq!(whole.joined_frames(), None);
    }
}
