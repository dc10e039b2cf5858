//! Reading answers without I/O: Bedrock event streams, OpenAI server-sent events
//! and JSON bodies, fed the bytes as they arrive, each reduced to one [`Outcome`]
//! (time to first token, usage, served tier, text, error code).
//!
//! Sockets, signing and timing the request live in `client`; this module only
//! sees bytes and the time each chunk arrived, so tests can replay any stream.

use bedrock_wire::converse::{ConverseEvent, Summary, Usage};
use bedrock_wire::eventstream::{decode, FrameKind, FrameSplitter};
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// Error code for a stream that ended before its final event.
pub const INCOMPLETE_STREAM: &str = "IncompleteStream";
/// Error code for bytes that are not valid frames or JSON.
pub const BAD_RESPONSE: &str = "BadResponse";

/// What one answer said, whatever API it came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Time from the request's start to the first generated content.
    pub ttft: Option<Duration>,
    pub usage: Option<Usage>,
    /// `performanceConfig.latency` of the answer.
    pub served_tier: Option<String>,
    /// The generated text, concatenated (workloads send it back as history).
    pub text: String,
    /// The error code when the call failed, `None` on success.
    pub error: Option<String>,
}

/// One spelling per error code: streams name exceptions in camelCase
/// (`throttlingException`) while HTTP errors use `ThrottlingException`, and
/// `x-amzn-ErrorType` may carry a `:` suffix; all count as one code.
pub fn normalize_code(code: &str) -> String {
    let code = code.split(':').next().unwrap_or(code);
    let code = code.rsplit('#').next().unwrap_or(code).trim();
    if code.is_empty() {
        return "Unknown".to_owned();
    }
    if !code.ends_with("Exception") {
        return code.to_owned();
    }
    let mut chars = code.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Unknown".to_owned(),
    }
}

/// The error code of a non-2xx answer: `x-amzn-ErrorType`, else the body's
/// `__type` (AWS JSON) or `error.type` / `error.code` (OpenAI), else `HTTP<status>`.
pub fn error_code(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> String {
    if let Some(t) = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.trim().is_empty())
    {
        return normalize_code(t);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(t) = v.get("__type").and_then(Value::as_str) {
            return normalize_code(t);
        }
        let err = &v["error"];
        for key in ["type", "code"] {
            if let Some(t) = err.get(key).and_then(Value::as_str) {
                // LiteLLM writes the type "None" when it has none.
                if !t.is_empty() && t != "None" {
                    return format!("HTTP{}:{t}", status.as_u16());
                }
            }
        }
    }
    format!("HTTP{}", status.as_u16())
}

/// Reads a ConverseStream answer frame by frame.
#[derive(Debug, Default)]
pub struct ConverseStreamReader {
    splitter: FrameSplitter,
    first_delta: Option<Duration>,
    text: String,
    summary: Summary,
    saw_metadata: bool,
    error: Option<String>,
}

impl ConverseStreamReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk that arrived `at` after the request started. Returns false
    /// once the stream has failed (an exception frame or corrupt bytes), after
    /// which the rest of the body does not matter.
    pub fn push(&mut self, chunk: &[u8], at: Duration) -> bool {
        if self.error.is_some() {
            return false;
        }
        self.splitter.push(chunk);
        loop {
            let frame = match self.splitter.next_frame() {
                Ok(Some(bytes)) => match decode(bytes) {
                    Ok(frame) => frame,
                    Err(_) => return self.fail(BAD_RESPONSE.to_owned()),
                },
                Ok(None) => return true,
                Err(_) => return self.fail(BAD_RESPONSE.to_owned()),
            };
            match &frame.kind {
                FrameKind::Event(name) if name == "contentBlockDelta" => {
                    self.first_delta.get_or_insert(at);
                    if let Ok(v) = serde_json::from_slice::<Value>(&frame.payload) {
                        if let Some(t) = v["delta"]["text"].as_str() {
                            self.text.push_str(t);
                        }
                    }
                }
                FrameKind::Event(name) => {
                    if name == "metadata" {
                        self.saw_metadata = true;
                    }
                    if let Some(event) = ConverseEvent::from_frame(&frame) {
                        self.summary.observe(&event);
                    }
                }
                FrameKind::Exception(kind) => return self.fail(normalize_code(kind)),
                FrameKind::Error(code) if code.is_empty() => {
                    return self.fail("StreamError".to_owned())
                }
                FrameKind::Error(code) => return self.fail(normalize_code(code)),
            }
        }
    }

    fn fail(&mut self, code: String) -> bool {
        self.error = Some(code);
        false
    }

    /// The answer, once the body has ended; a stream without its `metadata`
    /// event is an [`INCOMPLETE_STREAM`] error.
    pub fn finish(self) -> Outcome {
        let error = match self.error {
            Some(e) => Some(e),
            None if !self.saw_metadata || self.splitter.pending() > 0 => {
                Some(INCOMPLETE_STREAM.to_owned())
            }
            None => None,
        };
        Outcome {
            ttft: self.first_delta,
            usage: self.summary.usage,
            served_tier: self.summary.latency_tier.map(|t| t.name().to_owned()),
            text: self.text,
            error,
        }
    }
}

/// Reads an OpenAI chat-completions stream (server-sent events).
#[derive(Debug, Default)]
pub struct SseReader {
    buf: Vec<u8>,
    first_content: Option<Duration>,
    text: String,
    usage: Option<Usage>,
    done: bool,
    error: Option<String>,
}

impl SseReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk that arrived `at` after the request started; false once
    /// `data: [DONE]` or an error event was read.
    pub fn push(&mut self, chunk: &[u8], at: Duration) -> bool {
        self.buf.extend_from_slice(chunk);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            self.line(&line, at);
            if self.done || self.error.is_some() {
                return false;
            }
        }
        true
    }

    fn line(&mut self, line: &[u8], at: Duration) {
        let Ok(line) = std::str::from_utf8(line) else {
            self.error = Some(BAD_RESPONSE.to_owned());
            return;
        };
        // Comments (`:`), `event:` and `id:` lines carry nothing measured here.
        let Some(data) = line.trim_end().strip_prefix("data:") else {
            return;
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        if data.is_empty() {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            self.error = Some(BAD_RESPONSE.to_owned());
            return;
        };
        if let Some(err) = v.get("error") {
            let code = err
                .get("type")
                .or_else(|| err.get("code"))
                .and_then(Value::as_str)
                .unwrap_or("StreamError");
            self.error = Some(normalize_code(code));
            return;
        }
        if let Some(content) = v["choices"][0]["delta"]["content"].as_str() {
            if !content.is_empty() {
                self.first_content.get_or_insert(at);
                self.text.push_str(content);
            }
        }
        if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(openai_usage(usage));
        }
    }

    /// The answer, once the body has ended; without `data: [DONE]` it is an
    /// [`INCOMPLETE_STREAM`] error.
    pub fn finish(mut self) -> Outcome {
        // A last line without its newline still counts.
        if !self.buf.is_empty() && !self.done && self.error.is_none() {
            let rest = std::mem::take(&mut self.buf);
            let at = self.first_content.unwrap_or_default();
            self.line(&rest, at);
        }
        let error = match self.error {
            Some(e) => Some(e),
            None if !self.done => Some(INCOMPLETE_STREAM.to_owned()),
            None => None,
        };
        Outcome {
            ttft: self.first_content,
            usage: self.usage,
            served_tier: None,
            text: self.text,
            error,
        }
    }
}

fn openai_usage(v: &Value) -> Usage {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n("prompt_tokens"),
        output_tokens: n("completion_tokens"),
        total_tokens: n("total_tokens"),
        cache_read_input_tokens: 0,
        cache_write_input_tokens: 0,
        cache_write_1h_input_tokens: 0,
    }
}

/// Reads a successful Converse JSON body.
pub fn converse_body(body: &[u8]) -> Outcome {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return failed(BAD_RESPONSE);
    };
    let summary = Summary::of_response(&v);
    if summary.usage.is_none() {
        return failed(BAD_RESPONSE);
    }
    let text = v["output"]["message"]["content"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<String>()
        })
        .unwrap_or_default();
    Outcome {
        ttft: None,
        usage: summary.usage,
        served_tier: summary.latency_tier.map(|t| t.name().to_owned()),
        text,
        error: None,
    }
}

/// Reads a successful OpenAI chat-completions JSON body.
pub fn openai_body(body: &[u8]) -> Outcome {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return failed(BAD_RESPONSE);
    };
    let Some(choice) = v["choices"].get(0) else {
        return failed(BAD_RESPONSE);
    };
    Outcome {
        ttft: None,
        usage: v.get("usage").filter(|u| u.is_object()).map(openai_usage),
        served_tier: None,
        text: choice["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        error: None,
    }
}

/// An outcome that is only an error.
pub fn failed(code: &str) -> Outcome {
    Outcome {
        error: Some(code.to_owned()),
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bedrock_wire::eventstream::{event_frame, exception_frame};
    use http::HeaderValue;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn converse_stream() -> Vec<bytes::Bytes> {
        vec![
            event_frame("messageStart", r#"{"role":"assistant"}"#),
            event_frame(
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":"Hello"}}"#,
            ),
            event_frame(
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":" world"}}"#,
            ),
            event_frame("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            event_frame("messageStop", r#"{"stopReason":"end_turn"}"#),
            event_frame(
                "metadata",
                r#"{"usage":{"inputTokens":12,"outputTokens":2,"totalTokens":14,"cacheReadInputTokens":5},"metrics":{"latencyMs":80},"performanceConfig":{"latency":"optimized"}}"#,
            ),
        ]
    }

    #[test]
    fn ttft_is_the_arrival_of_the_first_content_delta() {
        let frames = converse_stream();
        let mut reader = ConverseStreamReader::new();
        // messageStart arrives alone at 10 ms; it is not a token.
        assert!(reader.push(&frames[0], ms(10)));
        // The first delta is split across two chunks: it counts when whole.
        let (a, b) = frames[1].split_at(7);
        assert!(reader.push(a, ms(20)));
        assert!(reader.push(b, ms(30)));
        let rest: Vec<u8> = frames[2..].concat();
        for (i, chunk) in rest.chunks(5).enumerate() {
            assert!(reader.push(chunk, ms(40 + i as u64)));
        }
        let out = reader.finish();
        assert_eq!(out.ttft, Some(ms(30)));
        assert_eq!(out.text, "Hello world");
        assert_eq!(out.error, None);
        assert_eq!(out.served_tier.as_deref(), Some("optimized"));
        let usage = out.usage.unwrap();
        assert_eq!(usage.output_tokens, 2);
        assert_eq!(usage.input_tokens, 12);
        assert_eq!(usage.cache_read_input_tokens, 5);
    }

    #[test]
    fn exception_frames_are_errors_with_their_code() {
        let frames = converse_stream();
        let mut reader = ConverseStreamReader::new();
        assert!(reader.push(&frames[..2].concat(), ms(5)));
        assert!(!reader.push(&exception_frame("throttlingException", "slow down"), ms(9)));
        let out = reader.finish();
        assert_eq!(out.error.as_deref(), Some("ThrottlingException"));
        assert_eq!(out.ttft, Some(ms(5)));
    }

    #[test]
    fn truncated_and_corrupt_streams_are_errors_not_panics() {
        let frames = converse_stream();
        let mut reader = ConverseStreamReader::new();
        reader.push(&frames[..3].concat(), ms(1));
        assert_eq!(reader.finish().error.as_deref(), Some(INCOMPLETE_STREAM));

        let mut reader = ConverseStreamReader::new();
        assert!(!reader.push(&[0xff; 32], ms(1)));
        assert_eq!(reader.finish().error.as_deref(), Some(BAD_RESPONSE));
    }

    #[test]
    fn sse_ttft_skips_role_only_and_empty_chunks() {
        let stream = concat!(
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
            "data: [DONE]\n\n",
        );
        let mut reader = SseReader::new();
        let bytes = stream.as_bytes();
        // Arrival time grows with the offset, so TTFT tells which chunk was first.
        let mut alive = true;
        for (i, chunk) in bytes.chunks(10).enumerate() {
            alive = reader.push(chunk, ms(i as u64));
            if !alive {
                break;
            }
        }
        assert!(!alive, "[DONE] ends the stream");
        let first = stream.find("\"Hi\"").unwrap();
        let line_end = first + stream[first..].find('\n').unwrap();
        let out = reader.finish();
        assert_eq!(out.ttft, Some(ms((line_end / 10) as u64)));
        assert_eq!(out.text, "Hi there");
        assert_eq!(out.error, None);
        assert_eq!(out.usage.unwrap().output_tokens, 2);
    }

    #[test]
    fn sse_without_done_or_with_an_error_fails() {
        let mut reader = SseReader::new();
        reader.push(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
            ms(1),
        );
        assert_eq!(reader.finish().error.as_deref(), Some(INCOMPLETE_STREAM));

        let mut reader = SseReader::new();
        assert!(!reader.push(
            b"data: {\"error\":{\"message\":\"no\",\"type\":\"rate_limit_error\"}}\n\n",
            ms(1)
        ));
        assert_eq!(reader.finish().error.as_deref(), Some("rate_limit_error"));

        let mut reader = SseReader::new();
        reader.push(b"data: [DONE]", ms(1));
        assert_eq!(reader.finish().error, None, "a last line without newline");
    }

    #[test]
    fn error_codes_come_from_the_header_then_the_body() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("ValidationException:http://internal.amazon.com/coral/"),
        );
        assert_eq!(
            error_code(StatusCode::BAD_REQUEST, &headers, b""),
            "ValidationException"
        );
        let empty = HeaderMap::new();
        assert_eq!(
            error_code(
                StatusCode::BAD_REQUEST,
                &empty,
                br#"{"__type":"com.amazon#ThrottlingException"}"#
            ),
            "ThrottlingException"
        );
        assert_eq!(
            error_code(
                StatusCode::TOO_MANY_REQUESTS,
                &empty,
                br#"{"error":{"type":"rate_limit"}}"#
            ),
            "HTTP429:rate_limit"
        );
        assert_eq!(
            error_code(StatusCode::BAD_GATEWAY, &empty, b"<html>"),
            "HTTP502"
        );
    }

    #[test]
    fn bodies_give_usage_text_and_tier() {
        let out = converse_body(
            br#"{"output":{"message":{"role":"assistant","content":[{"text":"a"},{"text":"b"}]}},"stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":2,"totalTokens":5},"metrics":{"latencyMs":1},"performanceConfig":{"latency":"standard"}}"#,
        );
        assert_eq!(out.text, "ab");
        assert_eq!(out.usage.unwrap().total_tokens, 5);
        assert_eq!(out.served_tier.as_deref(), Some("standard"));
        assert_eq!(converse_body(b"{}").error.as_deref(), Some(BAD_RESPONSE));

        let out = openai_body(
            br#"{"choices":[{"message":{"role":"assistant","content":"hey"}}],"usage":{"prompt_tokens":4,"completion_tokens":1}}"#,
        );
        assert_eq!(out.text, "hey");
        assert_eq!(out.usage.unwrap().output_tokens, 1);
        assert_eq!(openai_body(b"[]").error.as_deref(), Some(BAD_RESPONSE));
    }
}
