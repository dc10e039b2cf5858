//! One pass over a body's prompt sections (tools, system prompt, messages)
//! read from its text, each element parsed alone and dropped after use: the
//! section sizes ([`Prefixes`]), the client's own markers, the prefix digests
//! the registry keys its ledgers by, and where each position's point would go.
//! [`Survey::planned`] splices the planner's points into the client's text.
//! Nothing here builds the body's tree, so planning a conversation of any
//! length costs about its longest message, not a multiple of the body.

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::ops::Range;

use super::{index, Format, Plan, Prefixes};
use crate::config::CachePosition;
use crate::json_body::{self, JsonBody};
use bedrock_wire::{canonical, tokens};

/// Where a marker sits in cache order: section (tools 0, system 1, messages 2),
/// then block (message `i`'s blocks from `i * 1_000_000`). Points the planner
/// adds sit at the end of their block list.
pub(crate) type Order = (u8, u64);

/// The client's own markers.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ClientMarks {
    pub count: u32,
    /// Whether tools, system, the first message and the last message end with one.
    pub ends: [bool; 4],
    /// Each marker's place and whether it asks for the hour.
    pub ttls: Vec<(Order, bool)>,
}

/// What the planner and the settlement need to know about one body.
#[derive(Debug, Clone, PartialEq)]
pub struct Survey {
    pub format: Format,
    pub prefixes: Prefixes,
    pub(crate) client: ClientMarks,
    /// The token end of each of the client's markers, in cache order, with
    /// whether it asks for the hour (what answers are settled against).
    pub(crate) settle: Vec<(u32, bool)>,
    /// The digests of tools; tools and system; tools, system and the first
    /// message's content (head and conversation share it).
    digests: [Option<[u8; 32]>; 3],
    /// For each position (tools, system, head, conversation), the span in the
    /// body's text of the value its point goes into.
    places: [Option<Range<usize>>; 4],
}

/// A block or tool is a client's marker.
fn marked(format: Format, v: &Value) -> bool {
    match format {
        Format::Converse => v.get("cachePoint").is_some(),
        Format::Anthropic => v.get("cache_control").is_some(),
    }
}

fn one_hour(format: Format, v: &Value) -> bool {
    match format {
        Format::Converse => v["cachePoint"]["ttl"] == "1h",
        Format::Anthropic => v["cache_control"]["ttl"] == "1h",
    }
}

fn parse(raw: &RawValue) -> Value {
    // Every element was read as JSON when the body was validated.
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

fn is_array(raw: &RawValue) -> bool {
    raw.get().starts_with('[')
}

/// One element of an array the digest covers: a Converse point is left out,
/// an Anthropic marker taken off its block.
fn hash_item(item: &Value, h: &mut Sha256, buf: &mut Vec<u8>) {
    if item.get("cachePoint").is_some() {
        return;
    }
    buf.clear();
    match item.get("cache_control") {
        Some(_) => {
            let mut copy = item.clone();
            if let Some(o) = copy.as_object_mut() {
                o.remove("cache_control");
            }
            canonical::write(&copy, buf);
        }
        None => canonical::write(item, buf),
    }
    h.update((buf.len() as u64).to_be_bytes());
    h.update(&buf[..]);
}

/// A section the digest covers that is not an array. A plain-string system
/// prompt or message hashes like one text block, so the planner turning it
/// into a block does not change the prefix. Anything else (which neither API
/// accepts) hashes as its canonical text, read without a tree.
fn hash_other(raw: &RawValue, h: &mut Sha256, buf: &mut Vec<u8>) {
    buf.clear();
    if raw.get().starts_with('"') {
        let text: String = serde_json::from_str(raw.get()).unwrap_or_default();
        canonical::write(&json!({"type": "text", "text": text}), buf);
        h.update((buf.len() as u64).to_be_bytes());
    } else {
        let text =
            canonical::request_bytes_from_text(raw.get().as_bytes(), canonical::Markers::Keep, &[]);
        buf.extend_from_slice(text.as_deref().unwrap_or(raw.get().as_bytes()));
    }
    h.update(&buf[..]);
}

/// The walk's running state.
struct Walk {
    format: Format,
    client: ClientMarks,
    settle: Vec<(u32, bool)>,
    /// Tokens so far, in cache order.
    at: u32,
}

impl Walk {
    /// Notes every element of a tools list or a system block list (`section`
    /// 0 or 1), each counted by `tokens` and hashed into `h`: their tokens,
    /// and whether one is more than a marker (a Converse `cachePoint`
    /// element only marks). The section's client marker end is the last
    /// element's.
    fn section(
        &mut self,
        list: &RawValue,
        section: u8,
        tokens: fn(&Value) -> u32,
        h: &mut Sha256,
        buf: &mut Vec<u8>,
    ) -> (u32, bool) {
        let (mut total, mut has) = (0u32, false);
        let mut i = 0u64;
        json_body::each_element(list.get(), |raw| {
            let element = parse(raw);
            let n = tokens(&element);
            total = total.saturating_add(n);
            has |= match self.format {
                Format::Converse => element.get("cachePoint").is_none(),
                Format::Anthropic => true,
            };
            self.client.ends[usize::from(section)] = self.block(&element, n, section, i);
            hash_item(&element, h, buf);
            i += 1;
        });
        (total, has)
    }

    /// Notes one block (or tool) of `section` at `place` in cache order,
    /// whose tokens are `tokens`; whether it is a client's marker.
    fn block(&mut self, v: &Value, tokens: u32, section: u8, place: u64) -> bool {
        self.at = self.at.saturating_add(tokens);
        let marked = marked(self.format, v);
        if marked {
            let hour = one_hour(self.format, v);
            self.client.count += 1;
            self.client.ttls.push(((section, place), hour));
            self.settle.push((self.at, hour));
        }
        marked
    }
}

impl Survey {
    /// Reads `body`'s prompt sections as `format` lays them out.
    pub fn of(body: &JsonBody, format: Format) -> Survey {
        let at = |raw: &RawValue| body.span_of(raw.get());
        let mut walk = Walk {
            format,
            client: ClientMarks::default(),
            settle: Vec::new(),
            at: 0,
        };
        let mut prefixes = Prefixes::default();
        let mut h = Sha256::new();
        let mut buf = Vec::with_capacity(1024);
        let mut digests = [None; 3];
        let mut places: [Option<Range<usize>>; 4] = Default::default();

        // Tools.
        let tools = match format {
            Format::Converse => body
                .member_text("toolConfig")
                .and_then(|t| json_body::member(t, "tools")),
            Format::Anthropic => body
                .member_text("tools")
                .and_then(|t| serde_json::from_str::<&RawValue>(t).ok()),
        };
        match tools {
            None => h.update([0u8]),
            Some(tools) => {
                h.update([1u8]);
                places[0] = Some(at(tools));
                if !is_array(tools) {
                    hash_other(tools, &mut h, &mut buf);
                }
                let count = match format {
                    Format::Converse => tokens::converse_tool,
                    Format::Anthropic => tokens::anthropic_tool,
                };
                let (n, has) = walk.section(tools, 0, count, &mut h, &mut buf);
                prefixes.tools_end = prefixes.tools_end.saturating_add(n);
                prefixes.has_tools |= has;
                digests[0] = Some(h.clone().finalize().into());
            }
        }

        // The system prompt.
        prefixes.system_end = prefixes.tools_end;
        let system = body
            .member_text("system")
            .and_then(|t| serde_json::from_str::<&RawValue>(t).ok());
        match system {
            None => h.update([0u8]),
            Some(system) => {
                h.update([1u8]);
                places[1] = Some(at(system));
                if !is_array(system) {
                    hash_other(system, &mut h, &mut buf);
                    if format == Format::Anthropic {
                        let value = parse(system);
                        let tokens = tokens::anthropic_content(&value);
                        prefixes.system_end = prefixes.system_end.saturating_add(tokens);
                        prefixes.has_system = value.as_str().is_some_and(|s| !s.is_empty());
                        // Only a string counts toward the settled marks' ends.
                        if let Value::String(s) = &value {
                            walk.at = walk.at.saturating_add(tokens::text(s));
                        }
                    }
                }
                let count = match format {
                    Format::Converse => tokens::converse_block,
                    Format::Anthropic => tokens::anthropic_block,
                };
                let (n, has) = walk.section(system, 1, count, &mut h, &mut buf);
                prefixes.system_end = prefixes.system_end.saturating_add(n);
                prefixes.has_system |= has;
                digests[1] = Some(h.clone().finalize().into());
            }
        }

        // The messages, one at a time.
        let mut total = prefixes.system_end;
        let mut last: Option<&RawValue> = None;
        let mut i = 0u64;
        if let Some(messages) = body.member_text("messages") {
            json_body::each_element(messages, |raw| {
                let message = parse(raw);
                let tokens = match format {
                    Format::Converse => tokens::converse_message(&message),
                    Format::Anthropic => tokens::anthropic_message(&message),
                };
                total = total.saturating_add(tokens);
                if message["role"] == "user" {
                    prefixes.user_turns += 1;
                }
                walk.at = walk.at.saturating_add(tokens::MESSAGE_OVERHEAD);
                let mut ends_marked = false;
                match (&message["content"], format) {
                    (Value::Array(blocks), _) => {
                        for (j, block) in blocks.iter().enumerate() {
                            let tokens = match format {
                                Format::Converse => tokens::converse_block(block),
                                Format::Anthropic => tokens::anthropic_block(block),
                            };
                            ends_marked = walk.block(block, tokens, 2, i * 1_000_000 + j as u64);
                        }
                    }
                    (Value::String(s), Format::Anthropic) => {
                        walk.at = walk.at.saturating_add(tokens::text(s));
                    }
                    _ => {}
                }
                if i == 0 {
                    prefixes.head_end = total;
                    walk.client.ends[2] = ends_marked;
                    let content = json_body::member(raw.get(), "content");
                    places[2] = content.map(at);
                    if let Some(content) = content {
                        h.update([1u8]);
                        match &message["content"] {
                            Value::Array(blocks) => {
                                for block in blocks {
                                    hash_item(block, &mut h, &mut buf);
                                }
                            }
                            _ => hash_other(content, &mut h, &mut buf),
                        }
                        digests[2] = Some(h.clone().finalize().into());
                    }
                }
                walk.client.ends[3] = ends_marked;
                last = Some(raw);
                i += 1;
            });
        }
        places[3] = last
            .and_then(|m| json_body::member(m.get(), "content"))
            .map(at);
        if i == 0 {
            prefixes.head_end = prefixes.system_end;
        }
        prefixes.total = total;
        prefixes.messages = i as usize;
        Survey {
            format,
            prefixes,
            client: walk.client,
            settle: walk.settle,
            digests,
            places,
        }
    }

    /// The canonical digest of the body up to the end of `section`, cache
    /// markers excluded: tools; tools and system; tools, system and the first
    /// message (for `head` and `conversation`, which a conversation's turns
    /// share). `None` when the body has no such section.
    pub fn digest(&self, section: CachePosition) -> Option<[u8; 32]> {
        match section {
            CachePosition::Tools => self.digests[0],
            CachePosition::System => self.digests[1],
            CachePosition::Head | CachePosition::Conversation => self.digests[2],
        }
    }

    /// `body`'s text (the body surveyed) with `plan`'s points spliced in and
    /// then `edit`'s head changes (the tiers); every other byte is the
    /// client's. Converse points are `cachePoint` blocks appended to their
    /// list; Anthropic ones `cache_control` on the list's last block, a plain
    /// string becoming one text block.
    pub fn planned(
        &self,
        body: &JsonBody,
        plan: &Plan,
        edit: impl FnOnce(&mut Value),
    ) -> bytes::Bytes {
        let mut edits: Vec<(Range<usize>, String)> = Vec::new();
        // Lists already given a point (only a plan no planner makes puts two
        // in one list: the first and last message of a one-message body).
        let mut done: Vec<Range<usize>> = Vec::new();
        for point in &plan.injected {
            let Some(span) = self.places[index(point.position)].clone() else {
                continue;
            };
            let again = done.contains(&span);
            done.push(span.clone());
            match self.format {
                Format::Converse => {
                    let Some(list) = body.text_at(span.clone()).filter(|l| l.starts_with('['))
                    else {
                        continue;
                    };
                    let end = span.end - 1;
                    let comma = if is_empty(list) && !again { "" } else { "," };
                    edits.push((end..end, format!("{comma}{}", cache_point(point.ttl_1h))));
                }
                Format::Anthropic => {
                    // A second marker on the same block replaces the first.
                    if again {
                        edits.retain(|(r, _)| !(span.start <= r.start && r.end <= span.end));
                    }
                    edits.extend(mark_last_block(body, span, point.ttl_1h));
                }
            }
        }
        body.spliced(edits, edit)
    }
}

/// The edits of `body`'s text that put `cache_control` on the last block of the
/// value at `span`, turning a plain string into one text block first.
fn mark_last_block(
    body: &JsonBody,
    span: Range<usize>,
    ttl_1h: bool,
) -> Vec<(Range<usize>, String)> {
    let Some(value) = body.text_at(span.clone()) else {
        return Vec::new();
    };
    let marker = cache_control(ttl_1h).to_string();
    if value.starts_with('"') {
        return vec![
            (
                span.start..span.start,
                r#"[{"type":"text","text":"#.to_owned(),
            ),
            (
                span.end..span.end,
                format!(r#","cache_control":{marker}}}]"#),
            ),
        ];
    }
    let mut last = None;
    json_body::each_element(value, |block| last = Some(block));
    let Some(block) = last.filter(|b| b.get().starts_with('{')) else {
        return Vec::new();
    };
    // A marker already there is replaced where it is, as setting a key of a
    // parsed object would.
    match json_body::member(block.get(), "cache_control") {
        Some(old) => vec![(body.span_of(old.get()), marker)],
        None => {
            let end = body.span_of(block.get()).end - 1;
            let comma = if is_empty(block.get()) { "" } else { "," };
            vec![(end..end, format!(r#"{comma}"cache_control":{marker}"#))]
        }
    }
}

/// Whether array or object text has nothing between its brackets.
fn is_empty(text: &str) -> bool {
    text.get(1..text.len().saturating_sub(1))
        .is_some_and(|inner| inner.trim_matches([' ', '\t', '\n', '\r']).is_empty())
}

fn cache_point(ttl_1h: bool) -> Value {
    let mut point = Map::new();
    point.insert("type".into(), "default".into());
    if ttl_1h {
        point.insert("ttl".into(), "1h".into());
    }
    json!({ "cachePoint": point })
}

fn cache_control(ttl_1h: bool) -> Value {
    if ttl_1h {
        json!({"type": "ephemeral", "ttl": "1h"})
    } else {
        json!({"type": "ephemeral"})
    }
}

#[cfg(test)]
mod tests;
