//! InvokeModelWithBidirectionalStream (`POST /model/{modelId}/invoke-with-bidirectional-stream`):
//! a simulated Nova Sonic. The request body is an event stream the client
//! keeps writing (each frame a `chunk` whose `bytes` hold one Nova Sonic JSON
//! event, usually inside a signed envelope); the response is an event stream
//! answered as input arrives, not after it ends.
//!
//! The session follows Nova Sonic's protocol: `sessionStart`, `promptStart`,
//! then contents (`contentStart`, `textInput` or `audioInput`, `contentEnd`),
//! `promptEnd`, `sessionEnd`. When a user's text content ends, the model
//! answers in text; when a user's audio content ends, it sends the transcript
//! of what it heard, a speculative text of its answer, the answer as audio
//! (silence of the right length, in the requested format) and the final text.
//! Each answer ends with a `usageEvent`; `promptEnd` brings `completionEnd`.
//! Events out of order, bad JSON or bad base64 end the stream with a
//! `validationException`; a client silent for `bidi_idle_timeout_s` gets a
//! `modelTimeoutException`.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bedrock_wire::eventstream::{
    self, decode, exception_frame, read_upload, FrameKind, FrameSplitter, Upload,
};
use bedrock_wire::operation::RuntimeOperation;
use bedrock_wire::tokens;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{finish, log, take_fault};
use crate::catalog::Model;
use crate::error::SimError;
use crate::face::Face;
use crate::faults::{FaultKind, FaultRule, Target};
use crate::generate;
use crate::request;
use crate::SimState;

/// Speech tokens per second of audio, both ways.
const SPEECH_TOKENS_PER_S: f64 = 25.0;
/// Words a speaker says per second.
const WORDS_PER_S: f64 = 2.5;
/// Seconds of audio per `audioOutput` event.
const AUDIO_CHUNK_S: f64 = 0.5;

/// `POST /model/{modelId}/invoke-with-bidirectional-stream`
pub async fn handle(
    State(state): State<Arc<SimState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Response {
    let id = bedrock_wire::new_request_id();
    let result = match path {
        Ok(Path(model_id)) => open(&state, &id, &model_id, request),
        Err(e) => Err(SimError::validation(format!(
            "The request path is invalid: {e}"
        ))),
    };
    finish(&state, &id, result)
}

fn open(
    state: &Arc<SimState>,
    request_id: &str,
    model_id: &str,
    request: Request,
) -> Result<Response, SimError> {
    let op = RuntimeOperation::InvokeModelWithBidirectionalStream;
    let (parts, body) = request.into_parts();
    // The body is the conversation, still to come: only the headers are signed.
    // The whole URI: over HTTP/2 it holds the authority a signature may cover
    // (there is no Host header).
    let uri = parts.uri.to_string();
    crate::auth::authenticate_headers(&state.config, parts.method.as_str(), &uri, &parts.headers)?;
    log(state, request_id, op, model_id, &parts, bytes::Bytes::new());
    let resolved = state
        .catalog
        .resolve(model_id)
        .ok_or_else(|| SimError::validation("The provided model identifier is invalid."))?;
    if !resolved.model.bidirectional_stream {
        return Err(SimError::validation(format!(
            "The provided model {model_id} doesn't support InvokeModelWithBidirectionalStream."
        )));
    }
    let target = Target {
        face: Face::Bedrock,
        ids: &[model_id],
        operation: op.label(),
        ..Target::default()
    };
    let fault = take_fault(state, &parts.headers, &target)?;
    if let Some(error) = fault.as_ref().and_then(FaultRule::error) {
        return Err(error);
    }
    state.stats.bidi_session();

    let session = Session::new(state.clone(), resolved.model.clone(), fault);
    let input: Input = Box::pin(body.into_data_stream());
    let driver = Driver {
        session,
        input: Some(input),
        splitter: FrameSplitter::new(),
        idle: Duration::from_secs_f64(state.config.bidi_idle_timeout_s),
    };
    let stream = futures_util::stream::unfold(driver, |mut d| async move {
        d.next().await.map(|item| (item, d))
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static(eventstream::CONTENT_TYPE),
    );
    Ok((StatusCode::OK, headers, Body::from_stream(stream)).into_response())
}

/// One output frame and the wait before it.
struct Out {
    frame: Bytes,
    delay: Duration,
}

/// What ends a session's output.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Everything queued is sent, then the stream ends.
    Done,
    /// An exception frame, then the end.
    Exception(&'static str, String),
    /// The connection is cut (a scripted `connection-reset`).
    Reset,
}

/// Reads input frames and hands out output frames, in the order the protocol
/// needs: queued output first, then more input.
struct Driver {
    session: Session,
    input: Option<Input>,
    splitter: FrameSplitter,
    idle: Duration,
}

impl Driver {
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(out) = self.session.out.pop_front() {
                if !out.delay.is_zero() {
                    tokio::time::sleep(out.delay).await;
                }
                return Some(Ok(self.session.sent(out.frame)));
            }
            if let Some(end) = self.session.end.take() {
                self.session.finished = true;
                return match end {
                    End::Done => None,
                    End::Exception(kind, message) => Some(Ok(exception_frame(kind, &message))),
                    End::Reset => Some(Err(std::io::Error::other("connection reset by fault"))),
                };
            }
            if self.session.finished {
                return None;
            }
            let Some(input) = self.input.as_mut() else {
                self.session.end = Some(End::Done);
                continue;
            };
            match tokio::time::timeout(self.idle, input.next()).await {
                Err(_) => {
                    self.input = None;
                    self.session.fail(
                        "modelTimeoutException",
                        "Timed out waiting for input events.",
                    );
                }
                Ok(None) => {
                    // The client closed its side: answer what is pending, then end.
                    self.input = None;
                    self.session.end.get_or_insert(End::Done);
                }
                Ok(Some(Err(e))) => {
                    self.input = None;
                    tracing::debug!(error = %e, "bidirectional stream input failed");
                    self.session.end = Some(End::Done);
                }
                Ok(Some(Ok(chunk))) => {
                    self.splitter.push(&chunk);
                    loop {
                        match self.splitter.next_frame() {
                            Ok(Some(frame)) => {
                                if !self.session.frame(frame) {
                                    self.input = None;
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                self.input = None;
                                self.session.fail(
                                    "validationException",
                                    &format!("Invalid input stream: {e}"),
                                );
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A text content the model sends.
struct TextOut<'a> {
    role: &'a str,
    /// `FINAL`, or `SPECULATIVE` for the text of speech still to come.
    stage: &'a str,
    text: &'a str,
    /// `END_TURN`, or `PARTIAL_TURN` when more of the turn follows.
    stop: &'a str,
}

/// The request body of a bidirectional stream, as frames arrive.
type Input = Pin<Box<dyn Stream<Item = Result<Bytes, axum::Error>> + Send>>;

/// One content of the prompt, as it arrives.
#[derive(Debug, Clone)]
struct Content {
    audio: bool,
    role: String,
    text: String,
    audio_bytes: usize,
}

/// A prompt in progress.
#[derive(Debug, Clone)]
struct Prompt {
    name: String,
    audio_out: Option<Value>,
    completion_id: Option<String>,
    /// System text and the turns so far: what seeds each answer.
    history: Vec<String>,
}

/// A Nova Sonic session: the protocol state and the output it queued.
struct Session {
    state: Arc<SimState>,
    model: Arc<Model>,
    fault: Option<FaultRule>,
    id: String,
    started: bool,
    max_tokens: u32,
    prompt: Option<Prompt>,
    contents: HashMap<String, Content>,
    out: VecDeque<Out>,
    end: Option<End>,
    finished: bool,
    sent_events: u64,
    totals: Usage,
}

#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    speech_in: u64,
    text_in: u64,
    speech_out: u64,
    text_out: u64,
}

impl Drop for Session {
    /// A client that went away before the end cancelled the session; count it.
    fn drop(&mut self) {
        if !self.finished {
            self.state.stats.stream_cancelled();
        }
    }
}

fn uuid_like(rng: &mut fastrand::Rng) -> String {
    let h = format!("{:032x}", rng.u128(..));
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

impl Session {
    fn new(state: Arc<SimState>, model: Arc<Model>, fault: Option<FaultRule>) -> Session {
        let mut rng = fastrand::Rng::new();
        Session {
            id: uuid_like(&mut rng),
            state,
            max_tokens: model.max_output_tokens,
            model,
            fault,
            started: false,
            prompt: None,
            contents: HashMap::new(),
            out: VecDeque::new(),
            end: None,
            finished: false,
            sent_events: 0,
            totals: Usage::default(),
        }
    }

    /// Counts a frame going out, and applies a scripted mid-stream fault.
    fn sent(&mut self, frame: Bytes) -> Bytes {
        self.sent_events += 1;
        self.state.stats.bidi_events(0, 1);
        if let Some(f) = &self.fault {
            let after = u64::from(f.after_events.unwrap_or(2));
            if self.sent_events >= after && self.end.is_none() {
                match f.fault {
                    FaultKind::MidstreamError => {
                        let message = f.message.clone().unwrap_or_else(|| {
                            "The model stopped while generating the response.".into()
                        });
                        self.out.clear();
                        self.end = Some(End::Exception(member(f.stream_exception()), message));
                    }
                    FaultKind::ConnectionReset => {
                        self.out.clear();
                        self.end = Some(End::Reset);
                    }
                    _ => {}
                }
            }
        }
        frame
    }

    /// Ends the session with an exception once queued output is gone.
    fn fail(&mut self, kind: &'static str, message: &str) {
        if self.end.is_none() || self.end == Some(End::Done) {
            self.end = Some(End::Exception(kind, message.to_owned()));
        }
    }

    fn invalid(&mut self, message: impl Into<String>) -> bool {
        let message = message.into();
        self.fail("validationException", &message);
        false
    }

    /// Reads one uploaded frame; false once the input is over.
    fn frame(&mut self, frame: Bytes) -> bool {
        let message = match read_upload(frame) {
            Ok(Upload::End) => {
                self.end.get_or_insert(End::Done);
                return false;
            }
            Ok(Upload::Message(m)) => m,
            Err(e) => return self.invalid(format!("Invalid input stream: {e}")),
        };
        let frame = match decode(message) {
            Ok(f) => f,
            Err(e) => return self.invalid(format!("Invalid input stream: {e}")),
        };
        if frame.kind != FrameKind::Event("chunk".into()) {
            return self.invalid("The input stream may only carry chunk events.");
        }
        let bytes = serde_json::from_slice::<Value>(&frame.payload)
            .ok()
            .and_then(|v| v["bytes"].as_str().map(str::to_owned))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        let Some(bytes) = bytes else {
            return self.invalid("Each chunk must carry base64 bytes.");
        };
        let event: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return self.invalid(format!("Invalid input event: the chunk is not JSON ({e})."))
            }
        };
        self.state.stats.bidi_events(1, 0);
        self.event(&event)
    }

    /// Handles one Nova Sonic input event; false once the input is over.
    fn event(&mut self, event: &Value) -> bool {
        let Some((name, body)) = event["event"].as_object().and_then(|o| o.iter().next()) else {
            return self.invalid("Invalid input event: expected {\"event\": {NAME: {...}}}.");
        };
        let name = name.as_str();
        if name != "sessionStart" && !self.started {
            return self.invalid(format!("Invalid input event: {name} before sessionStart."));
        }
        match name {
            "sessionStart" => {
                if self.started {
                    return self.invalid("Invalid input event: sessionStart was already received.");
                }
                self.started = true;
                if let Some(n) = body["inferenceConfiguration"]["maxTokens"].as_u64() {
                    self.max_tokens = u32::try_from(n)
                        .unwrap_or(u32::MAX)
                        .min(self.model.max_output_tokens)
                        .max(1);
                }
                true
            }
            "promptStart" => {
                if self.prompt.is_some() {
                    return self
                        .invalid("Invalid input event: promptStart while a prompt is open.");
                }
                let Some(prompt) = body["promptName"].as_str() else {
                    return self.invalid("Invalid input event: promptStart needs a promptName.");
                };
                self.prompt = Some(Prompt {
                    name: prompt.to_owned(),
                    audio_out: body.get("audioOutputConfiguration").cloned(),
                    completion_id: None,
                    history: Vec::new(),
                });
                true
            }
            "contentStart" => self.content_start(body),
            "textInput" | "audioInput" => self.content_input(name, body),
            "contentEnd" => self.content_end(body),
            "promptEnd" => {
                if !self.check_prompt(body) {
                    return false;
                }
                if let Some(prompt) = self.prompt.take() {
                    if let Some(completion) = &prompt.completion_id {
                        let e = self.ids(&prompt.name, completion);
                        self.push(
                            json!({"completionEnd": merge(e, json!({"stopReason": "END_TURN"}))}),
                            Duration::ZERO,
                        );
                    }
                }
                true
            }
            "sessionEnd" => {
                self.end.get_or_insert(End::Done);
                false
            }
            other => self.invalid(format!("Invalid input event: unknown event {other}.")),
        }
    }

    fn check_prompt(&mut self, body: &Value) -> bool {
        let open = self.prompt.as_ref().map(|p| p.name.as_str());
        match (open, body["promptName"].as_str()) {
            (Some(open), Some(name)) if open == name => true,
            (None, _) => self.invalid("Invalid input event: no prompt is open."),
            (_, name) => self.invalid(format!(
                "Invalid input event: promptName {} is not the open prompt.",
                name.unwrap_or("(missing)")
            )),
        }
    }

    fn content_start(&mut self, body: &Value) -> bool {
        if !self.check_prompt(body) {
            return false;
        }
        let Some(name) = body["contentName"].as_str() else {
            return self.invalid("Invalid input event: contentStart needs a contentName.");
        };
        if self.contents.contains_key(name) {
            return self.invalid(format!(
                "Invalid input event: content {name} is already open."
            ));
        }
        let audio = match body["type"].as_str() {
            Some("TEXT") => false,
            Some("AUDIO") => true,
            Some("TOOL") => false,
            other => {
                return self.invalid(format!(
                    "Invalid input event: content type {} is not TEXT, AUDIO or TOOL.",
                    other.unwrap_or("(missing)")
                ))
            }
        };
        let role = body["role"].as_str().unwrap_or("USER");
        if !["SYSTEM", "USER", "ASSISTANT", "TOOL"].contains(&role) {
            return self.invalid(format!(
                "Invalid input event: role {role} is not SYSTEM, USER, ASSISTANT or TOOL."
            ));
        }
        self.contents.insert(
            name.to_owned(),
            Content {
                audio,
                role: role.to_owned(),
                text: String::new(),
                audio_bytes: 0,
            },
        );
        true
    }

    fn content_input(&mut self, kind: &str, body: &Value) -> bool {
        if !self.check_prompt(body) {
            return false;
        }
        let name = body["contentName"].as_str().unwrap_or("");
        let Some(content) = self.contents.get_mut(name) else {
            return self.invalid(format!(
                "Invalid input event: {kind} for content {name}, which is not open."
            ));
        };
        let data = body["content"].as_str().unwrap_or("");
        match (kind, content.audio) {
            ("textInput", false) => content.text.push_str(data),
            ("audioInput", true) => match base64::engine::general_purpose::STANDARD.decode(data) {
                Ok(bytes) => content.audio_bytes += bytes.len(),
                Err(_) => {
                    return self.invalid("Invalid input event: audioInput content is not base64.")
                }
            },
            _ => {
                return self.invalid(format!(
                    "Invalid input event: {kind} does not match the content's type."
                ))
            }
        }
        true
    }

    fn content_end(&mut self, body: &Value) -> bool {
        if !self.check_prompt(body) {
            return false;
        }
        let name = body["contentName"].as_str().unwrap_or("");
        let Some(content) = self.contents.remove(name) else {
            return self.invalid(format!(
                "Invalid input event: contentEnd for content {name}, which is not open."
            ));
        };
        match (content.role.as_str(), content.audio) {
            ("USER", false) => self.answer_text(&content.text),
            ("USER", true) => self.answer_audio(content.audio_bytes),
            (_, false) => {
                if let Some(p) = self.prompt.as_mut() {
                    p.history.push(content.text);
                }
            }
            _ => {}
        }
        true
    }

    /// The ids every output event of the open prompt carries.
    fn ids(&self, prompt: &str, completion: &str) -> Value {
        json!({"sessionId": self.id, "promptName": prompt, "completionId": completion})
    }

    fn push(&mut self, event: Value, delay: Duration) {
        let bytes =
            base64::engine::general_purpose::STANDARD.encode(json!({"event": event}).to_string());
        let frame = eventstream::event_frame("chunk", json!({"bytes": bytes}).to_string());
        self.out.push_back(Out { frame, delay });
    }

    /// The completion of the open prompt, started (with `completionStart`) on
    /// its first answer. `None` without an open prompt.
    fn completion(&mut self) -> Option<(String, String)> {
        let session = self.id.clone();
        let prompt = self.prompt.as_mut()?;
        if let Some(c) = &prompt.completion_id {
            return Some((prompt.name.clone(), c.clone()));
        }
        let mut rng = fastrand::Rng::new();
        let completion = uuid_like(&mut rng);
        prompt.completion_id = Some(completion.clone());
        let name = prompt.name.clone();
        self.push(
            json!({"completionStart": {"sessionId": session, "promptName": name, "completionId": completion}}),
            Duration::ZERO,
        );
        Some((name, completion))
    }

    /// Words generated from a seed, as the simulator's models write.
    fn words(&self, seed_text: &str, max_tokens: u32) -> String {
        let body = json!({"messages": [{"role": "user", "content": [{"text": seed_text}]}]});
        let Ok(prompt) = request::converse(&body, &self.model) else {
            return String::new();
        };
        let mut h = Sha256::new();
        h.update(seed_text.as_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let seed = u64::from_le_bytes(first) ^ self.state.config.seed.unwrap_or(0);
        generate::text(&generate::answer(&prompt, seed, max_tokens))
    }

    fn ttft(&self, input_tokens: u32) -> Duration {
        let speed = &self.model.standard;
        let ms = (speed.ttft_ms + speed.prefill_us_per_token / 1000.0 * f64::from(input_tokens))
            * self.state.config.time_scale;
        Duration::from_secs_f64(ms.max(0.0) / 1000.0)
            + self
                .fault
                .as_ref()
                .filter(|f| f.fault == FaultKind::SlowFirstByte)
                .and_then(|f| f.ms)
                .map_or(Duration::ZERO, Duration::from_millis)
    }

    /// A text content: `contentStart`, `textOutput`, `contentEnd`.
    fn text_content(&mut self, prompt: &str, completion: &str, t: TextOut<'_>, delay: Duration) {
        let TextOut {
            role,
            stage,
            text,
            stop,
        } = t;
        let mut rng = fastrand::Rng::new();
        let content_id = uuid_like(&mut rng);
        let ids = self.ids(prompt, completion);
        self.push(
            json!({"contentStart": merge(ids.clone(), json!({
                "contentId": content_id, "type": "TEXT", "role": role,
                "additionalModelFields": format!("{{\"generationStage\":\"{stage}\"}}"),
                "textOutputConfiguration": {"mediaType": "text/plain"}}))}),
            delay,
        );
        self.push(
            json!({"textOutput": merge(ids.clone(), json!({"contentId": content_id, "content": text, "role": role}))}),
            Duration::ZERO,
        );
        self.push(
            json!({"contentEnd": merge(ids, json!({"contentId": content_id, "stopReason": stop, "type": "TEXT"}))}),
            Duration::ZERO,
        );
    }

    fn usage(&mut self, prompt: &str, completion: &str, delta: Usage) {
        let t = &mut self.totals;
        t.speech_in += delta.speech_in;
        t.text_in += delta.text_in;
        t.speech_out += delta.speech_out;
        t.text_out += delta.text_out;
        let t = *t;
        let part = |u: Usage| {
            json!({"input": {"speechTokens": u.speech_in, "textTokens": u.text_in},
                   "output": {"speechTokens": u.speech_out, "textTokens": u.text_out}})
        };
        let input = t.speech_in + t.text_in;
        let output = t.speech_out + t.text_out;
        let ids = self.ids(prompt, completion);
        self.push(
            json!({"usageEvent": merge(ids, json!({
                "details": {"delta": part(delta), "total": part(t)},
                "totalInputTokens": input, "totalOutputTokens": output, "totalTokens": input + output}))}),
            Duration::ZERO,
        );
    }

    /// The answer to a user's text: one final text content.
    fn answer_text(&mut self, text: &str) {
        let Some((prompt, completion)) = self.completion() else {
            return;
        };
        let history = self
            .prompt
            .as_ref()
            .map(|p| p.history.join("\n"))
            .unwrap_or_default();
        let input_tokens = tokens::text(&history) + tokens::text(text);
        let reply = self.words(&format!("{history}\n{text}"), self.max_tokens.min(120));
        let delay = self.ttft(input_tokens);
        self.text_content(
            &prompt,
            &completion,
            TextOut {
                role: "ASSISTANT",
                stage: "FINAL",
                text: &reply,
                stop: "END_TURN",
            },
            delay,
        );
        let delta = Usage {
            text_in: u64::from(input_tokens),
            text_out: u64::from(tokens::text(&reply)),
            ..Usage::default()
        };
        self.usage(&prompt, &completion, delta);
        if let Some(p) = self.prompt.as_mut() {
            p.history.push(text.to_owned());
            p.history.push(reply);
        }
    }

    /// The answer to a user's speech: what was heard, the planned text, the
    /// spoken answer and the final text.
    fn answer_audio(&mut self, audio_bytes: usize) {
        let Some((prompt, completion)) = self.completion() else {
            return;
        };
        // Input audio is 16-bit mono; Nova Sonic takes 16 kHz (8 kHz also works).
        let heard_s = audio_bytes as f64 / 32_000.0;
        let heard_words = ((heard_s * WORDS_PER_S).round() as u32).max(1);
        let transcript = self.words(
            &format!(
                "audio of {audio_bytes} bytes, turn {}",
                self.totals.speech_in
            ),
            heard_words,
        );
        let history = self
            .prompt
            .as_ref()
            .map(|p| p.history.join("\n"))
            .unwrap_or_default();
        let reply = self.words(&format!("{history}\n{transcript}"), self.max_tokens.min(60));
        let delay = self.ttft(tokens::text(&history) + tokens::text(&transcript));
        self.text_content(
            &prompt,
            &completion,
            TextOut {
                role: "USER",
                stage: "FINAL",
                text: &transcript,
                stop: "END_TURN",
            },
            delay,
        );
        self.text_content(
            &prompt,
            &completion,
            TextOut {
                role: "ASSISTANT",
                stage: "SPECULATIVE",
                text: &reply,
                stop: "PARTIAL_TURN",
            },
            Duration::ZERO,
        );

        let config = self
            .prompt
            .as_ref()
            .and_then(|p| p.audio_out.clone())
            .unwrap_or_else(|| json!({"mediaType": "audio/lpcm", "sampleRateHertz": 24000, "sampleSizeBits": 16,
                "channelCount": 1, "voiceId": "matthew", "encoding": "base64", "audioType": "SPEECH"}));
        let rate = config["sampleRateHertz"].as_u64().unwrap_or(24_000) as f64;
        let spoken_s = reply.split_whitespace().count() as f64 / WORDS_PER_S;
        let mut rng = fastrand::Rng::new();
        let content_id = uuid_like(&mut rng);
        let ids = self.ids(&prompt, &completion);
        self.push(
            json!({"contentStart": merge(ids.clone(), json!({"contentId": content_id, "type": "AUDIO",
                "role": "ASSISTANT", "audioOutputConfiguration": config}))}),
            Duration::ZERO,
        );
        let chunk_bytes = ((AUDIO_CHUNK_S * rate) as usize * 2).max(2);
        let total_bytes = ((spoken_s * rate) as usize * 2).max(chunk_bytes);
        let silence = base64::engine::general_purpose::STANDARD.encode(vec![0u8; chunk_bytes]);
        let chunks = total_bytes.div_ceil(chunk_bytes);
        for _ in 0..chunks {
            self.push(
                json!({"audioOutput": merge(ids.clone(), json!({"contentId": content_id, "content": silence}))}),
                Duration::ZERO,
            );
        }
        self.push(
            json!({"contentEnd": merge(ids, json!({"contentId": content_id, "stopReason": "END_TURN", "type": "AUDIO"}))}),
            Duration::ZERO,
        );
        self.text_content(
            &prompt,
            &completion,
            TextOut {
                role: "ASSISTANT",
                stage: "FINAL",
                text: &reply,
                stop: "END_TURN",
            },
            Duration::ZERO,
        );
        let delta = Usage {
            speech_in: (heard_s * SPEECH_TOKENS_PER_S).round() as u64,
            text_in: u64::from(tokens::text(&history)),
            speech_out: (spoken_s * SPEECH_TOKENS_PER_S).round() as u64,
            text_out: u64::from(tokens::text(&reply)),
        };
        self.usage(&prompt, &completion, delta);
        if let Some(p) = self.prompt.as_mut() {
            p.history.push(transcript);
            p.history.push(reply);
        }
    }
}

/// `a` with `b`'s members added.
fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// The stream member name of a scripted exception, or the model stream error.
fn member(name: &str) -> &'static str {
    bedrock_wire::error::ErrorType::parse(name)
        .and_then(bedrock_wire::error::ErrorType::stream_member)
        .unwrap_or("modelStreamErrorException")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SimConfig, Simulator};

    fn session() -> Session {
        let sim = Simulator::new(SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        })
        .unwrap();
        let state = sim.state().clone();
        let model = state
            .catalog
            .resolve("amazon.nova-sonic-v1:0")
            .unwrap()
            .model;
        Session::new(state, model, None)
    }

    fn out_events(s: &mut Session) -> Vec<Value> {
        s.out
            .drain(..)
            .map(|o| {
                let frame = decode(o.frame).unwrap();
                let v: Value = serde_json::from_slice(&frame.payload).unwrap();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v["bytes"].as_str().unwrap())
                    .unwrap();
                serde_json::from_slice(&bytes).unwrap()
            })
            .collect()
    }

    fn names(events: &[Value]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                e["event"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .next()
                    .unwrap()
                    .clone()
            })
            .collect()
    }

    fn ev(v: Value) -> Value {
        json!({"event": v})
    }

    #[test]
    fn a_text_turn_is_answered_when_its_content_ends() {
        let mut s = session();
        assert!(s.event(&ev(
            json!({"sessionStart": {"inferenceConfiguration": {"maxTokens": 256}}})
        )));
        assert!(s.event(&ev(json!({"promptStart": {"promptName": "p"}}))));
        assert!(s.event(&ev(json!({"contentStart": {"promptName": "p", "contentName": "c1", "type": "TEXT", "role": "USER", "interactive": true}}))));
        assert!(s.event(&ev(
            json!({"textInput": {"promptName": "p", "contentName": "c1", "content": "Hello there"}})
        )));
        assert!(
            out_events(&mut s).is_empty(),
            "nothing before the content ends"
        );
        assert!(s.event(&ev(
            json!({"contentEnd": {"promptName": "p", "contentName": "c1"}})
        )));
        let events = out_events(&mut s);
        assert_eq!(
            names(&events),
            [
                "completionStart",
                "contentStart",
                "textOutput",
                "contentEnd",
                "usageEvent"
            ]
        );
        assert_eq!(events[2]["event"]["textOutput"]["role"], "ASSISTANT");
        assert!(!events[2]["event"]["textOutput"]["content"]
            .as_str()
            .unwrap()
            .is_empty());
        assert!(s.event(&ev(json!({"promptEnd": {"promptName": "p"}}))));
        assert_eq!(names(&out_events(&mut s)), ["completionEnd"]);
        assert!(!s.event(&ev(json!({"sessionEnd": {}}))));
        assert_eq!(s.end, Some(End::Done));
    }

    #[test]
    fn speech_is_transcribed_and_answered_with_audio() {
        let mut s = session();
        s.event(&ev(json!({"sessionStart": {}})));
        s.event(&ev(json!({"promptStart": {"promptName": "p", "audioOutputConfiguration": {"mediaType": "audio/lpcm", "sampleRateHertz": 16000, "sampleSizeBits": 16, "channelCount": 1, "voiceId": "tiffany", "encoding": "base64", "audioType": "SPEECH"}}})));
        s.event(&ev(json!({"contentStart": {"promptName": "p", "contentName": "a", "type": "AUDIO", "role": "USER", "interactive": true}})));
        let second = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 32_000]);
        s.event(&ev(
            json!({"audioInput": {"promptName": "p", "contentName": "a", "content": second}}),
        ));
        s.event(&ev(
            json!({"contentEnd": {"promptName": "p", "contentName": "a"}}),
        ));
        let events = out_events(&mut s);
        let n = names(&events);
        assert_eq!(
            &n[..4],
            [
                "completionStart",
                "contentStart",
                "textOutput",
                "contentEnd"
            ]
        );
        assert_eq!(events[2]["event"]["textOutput"]["role"], "USER");
        assert!(n.iter().any(|e| e == "audioOutput"));
        let audio_start = events
            .iter()
            .find(|e| e["event"]["contentStart"]["type"] == "AUDIO")
            .unwrap();
        assert_eq!(
            audio_start["event"]["contentStart"]["audioOutputConfiguration"]["voiceId"],
            "tiffany"
        );
        assert_eq!(n.last().unwrap(), "usageEvent");
        let usage = &events.last().unwrap()["event"]["usageEvent"];
        assert!(
            usage["details"]["delta"]["input"]["speechTokens"]
                .as_u64()
                .unwrap()
                > 0
        );
    }

    #[test]
    fn protocol_errors_end_the_stream_with_a_validation_exception() {
        let mut s = session();
        assert!(!s.event(&ev(json!({"promptStart": {"promptName": "p"}}))));
        assert!(
            matches!(&s.end, Some(End::Exception("validationException", m)) if m.contains("before sessionStart"))
        );
        let mut s = session();
        s.event(&ev(json!({"sessionStart": {}})));
        s.event(&ev(json!({"promptStart": {"promptName": "p"}})));
        assert!(!s.event(&ev(
            json!({"textInput": {"promptName": "p", "contentName": "nope", "content": "x"}})
        )));
        let mut s = session();
        s.event(&ev(json!({"sessionStart": {}})));
        assert!(!s.event(&ev(json!({"teleport": {}}))));
    }

    proptest::proptest! {
        /// Whatever bytes a client uploads, the session answers or ends with
        /// an exception; it never panics.
        #[test]
        fn any_upload_is_refused_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut s = session();
            let mut splitter = FrameSplitter::new();
            splitter.push(&bytes);
            while let Ok(Some(frame)) = splitter.next_frame() {
                if !s.frame(frame) {
                    break;
                }
            }
        }

        /// Any sequence of well-framed events with arbitrary names and members
        /// is handled without a panic.
        #[test]
        fn any_event_sequence_is_handled(events in proptest::collection::vec(
            (0usize..10, "[a-zA-Z]{0,6}", proptest::option::of(0u64..3)), 0..20)) {
            const NAMES: [&str; 10] = ["sessionStart", "promptStart", "contentStart", "textInput",
                "audioInput", "contentEnd", "promptEnd", "sessionEnd", "bogus", ""];
            let mut s = session();
            for (name, text, n) in events {
                let body = json!({"promptName": "p", "contentName": format!("c{}", n.unwrap_or(0)),
                    "type": if n == Some(1) { "AUDIO" } else { "TEXT" }, "role": "USER", "content": text});
                let frame = eventstream::event_frame("chunk", json!({"bytes":
                    base64::engine::general_purpose::STANDARD.encode(json!({"event": {NAMES[name]: body}}).to_string())}).to_string());
                if !s.frame(frame) {
                    break;
                }
            }
        }
    }
}
