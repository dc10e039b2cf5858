//! Server-sent events, read and written: the framing of OpenAI-compatible chat
//! streams (`data: {json}` events ending with `data: [DONE]`), whether they come
//! straight from a server or inside SageMaker `PayloadPart` frames, which cut the
//! bytes wherever the container flushed, not at event boundaries.
//!
//! The reader follows the HTML standard's event-stream rules: lines end with
//! `\n`, `\r\n` or `\r`; `data` lines of one event join with `\n`; a blank line
//! ends the event; lines starting with `:` are comments; an event with no data is
//! not dispatched.

use bytes::{Buf, Bytes, BytesMut};

/// The line OpenAI-compatible servers end a chat stream with.
pub const DONE: &str = "[DONE]";

/// Longest line accepted; a server sending more is broken or hostile.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, when the server named the event.
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// Whether this is the `data: [DONE]` terminator.
    pub fn is_done(&self) -> bool {
        self.data == DONE
    }
}

/// Why bytes could not be read as events.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("server-sent event line is not UTF-8")]
    NotUtf8,
    #[error("server-sent event line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
}

/// An event written as SSE: `data: {data}\n\n`. `data` must hold no newline
/// (compact JSON never does).
pub fn data_event(data: &str) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Reads events from a byte stream delivered in arbitrary chunks.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: BytesMut,
    data: String,
    has_data: bool,
    event: Option<String>,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes received that do not yet form a whole line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete line without its terminator; `None` when more bytes
    /// are needed. A `\r` at the very end waits for a possible `\n`.
    fn next_line(&mut self) -> Result<Option<Bytes>, SseError> {
        let Some(end) = self.buf.iter().position(|b| *b == b'\n' || *b == b'\r') else {
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(SseError::LineTooLong);
            }
            return Ok(None);
        };
        if end > MAX_LINE_BYTES {
            return Err(SseError::LineTooLong);
        }
        let terminator = if self.buf[end] == b'\r' {
            match self.buf.get(end + 1) {
                None => return Ok(None),
                Some(b'\n') => 2,
                Some(_) => 1,
            }
        } else {
            1
        };
        let line = self.buf.split_to(end).freeze();
        self.buf.advance(terminator);
        Ok(Some(line))
    }

    /// The next whole event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        while let Some(line) = self.next_line()? {
            if line.is_empty() {
                if !self.has_data {
                    self.event = None;
                    continue;
                }
                self.has_data = false;
                return Ok(Some(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                }));
            }
            let line = std::str::from_utf8(&line).map_err(|_| SseError::NotUtf8)?;
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                }
                "event" => self.event = Some(value.to_owned()),
                _ => {}
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c);
            while let Some(e) = d.next_event().unwrap() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn every_chunking_gives_the_same_events() {
        let stream = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: error\ndata: x\ndata: y\n\ndata:[DONE]\r\rdata: tail";
        let whole = events(&[stream]);
        assert_eq!(
            whole,
            [
                SseEvent {
                    event: None,
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: Some("error".into()),
                    data: "x\ny".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
        assert!(whole[2].is_done());
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let mut chunks = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(9));
                chunks.push(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(events(&chunks), whole);
        }
    }

    #[test]
    fn written_events_read_back() {
        let mut d = SseDecoder::new();
        d.push(&data_event(r#"{"choices":[]}"#));
        d.push(&data_event(DONE));
        assert_eq!(d.next_event().unwrap().unwrap().data, r#"{"choices":[]}"#);
        assert!(d.next_event().unwrap().unwrap().is_done());
        assert_eq!(d.next_event().unwrap(), None);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let mut d = SseDecoder::new();
        d.push(b"data: \xff\xfe\n\n");
        assert_eq!(d.next_event(), Err(SseError::NotUtf8));
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..500 {
            let bytes: Vec<u8> = (0..rng.usize(0..64))
                .map(|_| *rng.choice(b"data: \r\n:x{}\xff").unwrap())
                .collect();
            let mut d = SseDecoder::new();
            d.push(&bytes);
            while let Ok(Some(_)) = d.next_event() {}
        }
    }
}
