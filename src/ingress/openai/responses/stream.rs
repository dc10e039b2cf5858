//! The Responses API's streamed events, made from the Chat Completions chunks
//! [`ChunkWriter`] writes for each ConverseStream event (so streaming shares
//! every mapping of the whole answer: structured output by tool, reasoning with
//! its signature): `response.created`, `response.in_progress`, output items
//! added and done, `response.output_text.delta` / `.done`,
//! `response.function_call_arguments.delta` / `.done`, `response.completed`
//! (whose Response is the one [`super::response`] makes of the whole answer),
//! or `response.failed`; every event with its `sequence_number`.

use bedrock_wire::converse::ConverseEvent;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};

use super::super::translate::ChunkWriter;
use super::response;
use crate::error::ProxyError;
use crate::stream::SseWriter;

/// An output item being streamed.
#[derive(Debug)]
enum Open {
    Message { index: usize },
    Reasoning { index: usize },
    Call { index: usize, id: String },
}

/// Where a complete stream leaves its final Response (to be stored).
pub type Completed = Arc<Mutex<Option<Value>>>;

/// Writes a Response's events.
pub struct ResponseEvents {
    chunks: ChunkWriter,
    id: String,
    created: u64,
    model: String,
    echo: Map<String, Value>,
    sequence: u64,
    started: bool,
    /// Output items so far (their `output_index` is their position).
    items: usize,
    open: Vec<Open>,
    text: String,
    tool_calls: Vec<Value>,
    thinking: Vec<Value>,
    reasoning: String,
    finish: Option<String>,
    usage: Value,
    completed: Option<Completed>,
}

impl ResponseEvents {
    pub fn new(
        chunks: ChunkWriter,
        id: String,
        created: u64,
        model: String,
        echo: Map<String, Value>,
    ) -> ResponseEvents {
        ResponseEvents {
            chunks,
            id,
            created,
            model,
            echo,
            sequence: 0,
            started: false,
            items: 0,
            open: Vec::new(),
            text: String::new(),
            tool_calls: Vec::new(),
            thinking: Vec::new(),
            reasoning: String::new(),
            finish: None,
            usage: Value::Null,
            completed: None,
        }
    }

    /// Leaves the final Response in `completed` when the stream completes
    /// (the model finished: a stream that ends without its stop is no answer).
    pub fn on_complete(mut self, completed: Completed) -> ResponseEvents {
        self.completed = Some(completed);
        self
    }

    fn emit(&mut self, out: &mut Vec<Bytes>, kind: &str, mut body: Value) {
        body["type"] = Value::String(kind.to_owned());
        body["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.push(Bytes::from(format!("event: {kind}\ndata: {body}\n\n")));
    }

    /// The Response as it stands (the whole answer's, once complete).
    fn snapshot(&self, status: &str) -> Value {
        let completion = json!({
            "model": self.model,
            "choices": [{
                "message": {
                    "content": self.text,
                    "tool_calls": self.tool_calls,
                    "thinking_blocks": self.thinking,
                },
                "finish_reason": self.finish,
            }],
            "usage": self.usage,
        });
        let mut r = response(&completion, &self.echo, &self.id, self.created);
        if status != "completed" {
            r["status"] = Value::String(status.to_owned());
            r["output"] = json!([]);
            r["usage"] = Value::Null;
        }
        r
    }

    fn open_message(&mut self, out: &mut Vec<Bytes>) -> usize {
        if let Some(Open::Message { index }) =
            self.open.iter().find(|o| matches!(o, Open::Message { .. }))
        {
            return *index;
        }
        let index = self.items;
        self.items += 1;
        self.open.push(Open::Message { index });
        let id = format!("msg_{}", self.id);
        self.emit(out, "response.output_item.added", json!({
            "output_index": index,
            "item": { "type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": [] },
        }));
        self.emit(
            out,
            "response.content_part.added",
            json!({
                "item_id": id, "output_index": index, "content_index": 0,
                "part": { "type": "output_text", "text": "", "annotations": [] },
            }),
        );
        index
    }

    fn close(&mut self, out: &mut Vec<Bytes>, item: Open) {
        match item {
            Open::Message { index } => {
                let id = format!("msg_{}", self.id);
                let text = self.text.clone();
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({
                        "item_id": id, "output_index": index, "content_index": 0, "text": text,
                    }),
                );
                let part = json!({ "type": "output_text", "text": text, "annotations": [] });
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({
                        "item_id": id, "output_index": index, "content_index": 0, "part": part,
                    }),
                );
                self.emit(out, "response.output_item.done", json!({
                    "output_index": index,
                    "item": { "type": "message", "id": id, "status": "completed", "role": "assistant", "content": [part] },
                }));
            }
            Open::Call { index, id } => {
                let Some(call) = self.tool_calls.iter().find(|c| c["id"] == id.as_str()) else {
                    return;
                };
                let item = json!({
                    "type": "function_call", "id": format!("fc_{id}"), "call_id": id,
                    "name": call["function"]["name"], "arguments": call["function"]["arguments"],
                    "status": "completed",
                });
                self.emit(out, "response.function_call_arguments.done", json!({
                    "item_id": item["id"], "output_index": index, "arguments": item["arguments"],
                }));
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({ "output_index": index, "item": item }),
                );
            }
            // Closed when its signature arrives, or left open without one.
            Open::Reasoning { .. } => {}
        }
    }

    fn close_all(&mut self, out: &mut Vec<Bytes>) {
        for item in std::mem::take(&mut self.open) {
            self.close(out, item);
        }
    }

    fn chunk(&mut self, chunk: &Value, out: &mut Vec<Bytes>) {
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = usage.clone();
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["reasoning_content"].as_str() {
            if !self
                .open
                .iter()
                .any(|o| matches!(o, Open::Reasoning { .. }))
            {
                let index = self.items;
                self.items += 1;
                self.open.push(Open::Reasoning { index });
                let id = format!("rs_{}_{}", self.id, self.thinking.len());
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({
                        "output_index": index,
                        "item": { "type": "reasoning", "id": id, "summary": [] },
                    }),
                );
            }
            self.reasoning.push_str(text);
        }
        for block in delta["thinking_blocks"].as_array().into_iter().flatten() {
            if block["type"] != "thinking" {
                continue;
            }
            let position = self
                .open
                .iter()
                .position(|o| matches!(o, Open::Reasoning { .. }));
            let index = match position.map(|p| self.open.remove(p)) {
                Some(Open::Reasoning { index }) => index,
                _ => {
                    let index = self.items;
                    self.items += 1;
                    index
                }
            };
            let id = format!("rs_{}_{}", self.id, self.thinking.len());
            self.thinking.push(block.clone());
            self.reasoning.clear();
            self.emit(
                out,
                "response.output_item.done",
                json!({
                    "output_index": index,
                    "item": {
                        "type": "reasoning", "id": id,
                        "summary": [{ "type": "summary_text", "text": block["thinking"] }],
                        "encrypted_content": block["signature"],
                    },
                }),
            );
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let index = self.open_message(out);
            self.text.push_str(text);
            let id = format!("msg_{}", self.id);
            self.emit(
                out,
                "response.output_text.delta",
                json!({
                    "item_id": id, "output_index": index, "content_index": 0, "delta": text,
                }),
            );
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let n = usize::try_from(call["index"].as_u64().unwrap_or(0)).unwrap_or(0);
            if let Some(id) = call["id"].as_str() {
                // A call begins: what was being written before it is done.
                if let Some(p) = self
                    .open
                    .iter()
                    .position(|o| matches!(o, Open::Message { .. }))
                {
                    let message = self.open.remove(p);
                    self.close(out, message);
                }
                self.tool_calls.push(json!({
                    "id": id, "type": "function",
                    "function": { "name": call["function"]["name"], "arguments": "" },
                }));
                let index = self.items;
                self.items += 1;
                self.open.push(Open::Call {
                    index,
                    id: id.to_owned(),
                });
                self.emit(out, "response.output_item.added", json!({
                    "output_index": index,
                    "item": { "type": "function_call", "id": format!("fc_{id}"), "call_id": id,
                        "name": call["function"]["name"], "arguments": "", "status": "in_progress" },
                }));
            }
            if let Some(args) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                let Some(entry) = self.tool_calls.get_mut(n) else {
                    continue;
                };
                let mut joined = entry["function"]["arguments"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                joined.push_str(args);
                entry["function"]["arguments"] = Value::String(joined);
                let id = entry["id"].as_str().unwrap_or_default().to_owned();
                let index = self.open.iter().find_map(|o| match o {
                    Open::Call { index, id: open } if *open == id => Some(*index),
                    _ => None,
                });
                self.emit(
                    out,
                    "response.function_call_arguments.delta",
                    json!({
                        "item_id": format!("fc_{id}"), "output_index": index, "delta": args,
                    }),
                );
            }
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.finish = Some(finish.to_owned());
            self.close_all(out);
        }
    }
}

impl SseWriter for ResponseEvents {
    fn event(&mut self, event: &ConverseEvent) -> Vec<Bytes> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            let r = self.snapshot("in_progress");
            self.emit(&mut out, "response.created", json!({ "response": r }));
            self.emit(&mut out, "response.in_progress", json!({ "response": r }));
        }
        for bytes in self.chunks.event(event) {
            let text = String::from_utf8_lossy(&bytes);
            let Some(data) = text.trim().strip_prefix("data: ") else {
                continue;
            };
            if let Ok(chunk) = serde_json::from_str::<Value>(data) {
                self.chunk(&chunk, &mut out);
            }
        }
        out
    }

    fn failed(&mut self, error: &ProxyError) -> Bytes {
        let mut out = Vec::new();
        let mut r = self.snapshot("failed");
        r["error"] = json!({ "code": error.kind.label(), "message": error.message });
        self.emit(&mut out, "response.failed", json!({ "response": r }));
        out.concat().into()
    }

    fn done(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.close_all(&mut out);
        let r = self.snapshot("completed");
        if self.finish.is_some() {
            if let Some(mut slot) = self.completed.as_ref().and_then(|c| c.lock().ok()) {
                *slot = Some(r.clone());
            }
        }
        self.emit(&mut out, "response.completed", json!({ "response": r }));
        out
    }
}
