//! AWS event-stream frames (`application/vnd.amazon.eventstream`), as Bedrock's
//! streaming operations send them.
//!
//! Encoding and decoding (prelude, headers, both CRCs) are `aws-smithy-eventstream`'s;
//! this module adds the Bedrock header conventions, a splitter that cuts an
//! arbitrary byte stream into whole frames without copying them twice, and the
//! signed envelopes a bidirectional stream's upload comes in.

use aws_smithy_eventstream::frame::{read_message_from, write_message_to};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::{Buf, Bytes, BytesMut};

/// The `Content-Type` of every Bedrock event stream.
pub const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// Largest frame accepted when splitting a stream. Bedrock's own limit on a
/// payload part is 1 MB; a frame claiming more than this is corrupt.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

const PRELUDE_BYTES: usize = 12;
const MIN_FRAME_BYTES: usize = 16;

/// Why bytes could not be read as event-stream frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("event-stream frame of {0} bytes is outside the allowed range")]
    BadLength(usize),
    #[error("event-stream frame is corrupt: {0}")]
    Corrupt(String),
    #[error("event-stream frame has no {0} header")]
    MissingHeader(&'static str),
}

pub(crate) fn string_header(name: &'static str, value: impl Into<String>) -> Header {
    Header::new(name, HeaderValue::String(value.into().into()))
}

/// Encodes a message; encoding into a `Vec` cannot fail for the headers built here.
pub(crate) fn encode(message: &Message) -> Bytes {
    let mut out = Vec::with_capacity(message.payload().len() + 128);
    // write_message_to only fails on oversized headers or payloads, which the
    // callers here never produce; an empty frame is still a safe answer.
    if write_message_to(message, &mut out).is_err() {
        out.clear();
    }
    Bytes::from(out)
}

/// An `event` frame carrying a JSON payload, headers in Bedrock's order.
pub fn event_frame(event_type: &str, payload: impl Into<Bytes>) -> Bytes {
    let message = Message::new(payload)
        .add_header(string_header(":event-type", event_type))
        .add_header(string_header(":content-type", "application/json"))
        .add_header(string_header(":message-type", "event"));
    encode(&message)
}

/// An `exception` frame: `exception_type` is the stream union's member name,
/// such as `throttlingException`.
pub fn exception_frame(exception_type: &str, message: &str) -> Bytes {
    let payload = serde_json::json!({ "message": message }).to_string();
    let frame = Message::new(payload)
        .add_header(string_header(":exception-type", exception_type))
        .add_header(string_header(":content-type", "application/json"))
        .add_header(string_header(":message-type", "exception"));
    encode(&frame)
}

/// Cuts a byte stream, delivered in arbitrary chunks, into whole frames.
///
/// Frames are returned as the exact bytes received, so a proxy can forward them
/// untouched while reading them.
#[derive(Debug, Default)]
pub struct FrameSplitter {
    buf: BytesMut,
}

impl FrameSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < PRELUDE_BYTES {
            return Ok(None);
        }
        let total = (&self.buf[..4]).get_u32() as usize;
        if !(MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&total) {
            return Err(FrameError::BadLength(total));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(total).freeze()))
    }

    /// Bytes received that do not yet form a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// What a frame is, read from its `:message-type` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameKind {
    /// `:message-type: event`, with its `:event-type`.
    Event(String),
    /// `:message-type: exception`, with its `:exception-type`.
    Exception(String),
    /// `:message-type: error`, with its `:error-code`.
    Error(String),
}

/// A decoded frame: what it is and its payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Bytes,
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

/// Decodes one whole frame, checking both CRCs.
pub fn decode(frame: Bytes) -> Result<Frame, FrameError> {
    let message = read_message_from(frame).map_err(|e| FrameError::Corrupt(e.to_string()))?;
    let kind = match header(&message, ":message-type") {
        Some("event") | None => FrameKind::Event(
            header(&message, ":event-type")
                .ok_or(FrameError::MissingHeader(":event-type"))?
                .to_owned(),
        ),
        Some("exception") => FrameKind::Exception(
            header(&message, ":exception-type")
                .ok_or(FrameError::MissingHeader(":exception-type"))?
                .to_owned(),
        ),
        Some(_) => FrameKind::Error(header(&message, ":error-code").unwrap_or("").to_owned()),
    };
    Ok(Frame {
        kind,
        payload: message.payload().clone(),
    })
}

/// What an uploaded frame of a bidirectional stream holds. SDKs wrap each
/// message they send in a signed envelope: a frame whose headers are `:date`
/// and `:chunk-signature` and whose payload is the message frame itself; the
/// last envelope is empty and ends the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upload {
    /// A message frame (unwrapped from its envelope when it came in one).
    Message(Bytes),
    /// The empty signed envelope that ends the upload.
    End,
}

/// Reads one uploaded frame: unwraps a signed envelope, or passes a bare
/// message frame through. The chunk signature itself is not checked here.
pub fn read_upload(frame: Bytes) -> Result<Upload, FrameError> {
    let message =
        read_message_from(frame.clone()).map_err(|e| FrameError::Corrupt(e.to_string()))?;
    let signed = message
        .headers()
        .iter()
        .any(|h| h.name().as_str() == ":chunk-signature");
    if !signed {
        return Ok(Upload::Message(frame));
    }
    if message.payload().is_empty() {
        Ok(Upload::End)
    } else {
        Ok(Upload::Message(message.payload().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};

    #[test]
    fn event_frames_decode_with_the_sdk_decoder() {
        let bytes = event_frame("messageStart", r#"{"role":"assistant"}"#);
        let mut decoder = MessageFrameDecoder::new();
        let DecodedFrame::Complete(message) = decoder.decode_frame(bytes.clone()).unwrap() else {
            panic!("one whole frame expected");
        };
        let names: Vec<_> = message
            .headers()
            .iter()
            .map(|h| h.name().as_str().to_owned())
            .collect();
        assert_eq!(names, [":event-type", ":content-type", ":message-type"]);
        assert_eq!(message.payload().as_ref(), br#"{"role":"assistant"}"#);
        let frame = decode(bytes).unwrap();
        assert_eq!(frame.kind, FrameKind::Event("messageStart".into()));
    }

    #[test]
    fn exception_frames_name_their_type() {
        let frame = decode(exception_frame("throttlingException", "slow down")).unwrap();
        assert_eq!(
            frame.kind,
            FrameKind::Exception("throttlingException".into())
        );
        let body: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
        assert_eq!(body["message"], "slow down");
    }

    #[test]
    fn splitter_reassembles_frames_from_any_chunking() {
        let mut stream = Vec::new();
        for i in 0..5 {
            stream.extend_from_slice(&event_frame("contentBlockDelta", format!(r#"{{"i":{i}}}"#)));
        }
        for chunk_size in [1, 3, 7, 64, stream.len()] {
            let mut splitter = FrameSplitter::new();
            let mut frames = Vec::new();
            for chunk in stream.chunks(chunk_size) {
                splitter.push(chunk);
                while let Some(frame) = splitter.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames.len(), 5, "chunk size {chunk_size}");
            assert_eq!(frames.concat(), stream);
            assert_eq!(splitter.pending(), 0);
        }
    }

    #[test]
    fn signed_envelopes_unwrap_to_their_message() {
        let inner = event_frame("chunk", r#"{"bytes":"e30="}"#);
        let envelope = |payload: Bytes| {
            encode(
                &Message::new(payload)
                    .add_header(Header::new(
                        ":date",
                        HeaderValue::Timestamp(aws_smithy_types::DateTime::from_secs(1)),
                    ))
                    .add_header(Header::new(
                        ":chunk-signature",
                        HeaderValue::ByteArray(Bytes::from_static(&[1, 2, 3])),
                    )),
            )
        };
        assert_eq!(
            read_upload(envelope(inner.clone())).unwrap(),
            Upload::Message(inner.clone())
        );
        assert_eq!(read_upload(envelope(Bytes::new())).unwrap(), Upload::End);
        assert_eq!(read_upload(inner.clone()).unwrap(), Upload::Message(inner));
        assert!(read_upload(Bytes::from_static(b"not a frame at all!")).is_err());
    }

    #[test]
    fn corrupt_frames_are_errors_not_panics() {
        let mut bytes = event_frame("messageStop", r#"{"stopReason":"end_turn"}"#).to_vec();
        let last = bytes.len() - 6;
        bytes[last] ^= 0xff;
        assert!(decode(Bytes::from(bytes)).is_err());

        let mut splitter = FrameSplitter::new();
        splitter.push(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            splitter.next_frame(),
            Err(FrameError::BadLength(_))
        ));
    }
}
