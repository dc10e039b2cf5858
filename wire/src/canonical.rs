//! Canonical JSON for hashing requests: object keys sorted by their UTF-8 bytes,
//! no whitespace, numbers normalized (`0.0` and `0` are the same number), and the
//! prompt-cache markers left out, because they never change what a model answers.
//!
//! Markers are only recognized where the APIs put them, so a user's own data that
//! happens to look like a marker (inside a tool input, say) is still hashed:
//! - Converse: `{"cachePoint": ...}` elements of `system`, `messages[*].content`
//!   and `toolConfig.tools`.
//! - Anthropic Messages (InvokeModel bodies): the `cache_control` key of elements of
//!   `system`, `messages[*].content` and `tools`.

use serde_json::{Map, Number, Value};

/// Which request format's cache markers to leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markers {
    /// Keep everything.
    Keep,
    /// Bedrock Converse: drop `cachePoint` blocks.
    Converse,
    /// Anthropic Messages: drop `cache_control` keys.
    Anthropic,
}

/// Where in a request body a value sits; only the positions that can carry markers
/// are distinguished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    Top,
    Any,
    /// `messages`
    Messages,
    /// one element of `messages`
    Message,
    /// `toolConfig` (Converse)
    ToolConfig,
    /// an array whose elements may be markers or carry them
    MarkerList,
    /// an element of such an array (Anthropic: may carry `cache_control`)
    MarkerElement,
}

/// Writes `value` as canonical JSON, keeping everything.
pub fn write(value: &Value, out: &mut Vec<u8>) {
    write_value(value, Pos::Any, Markers::Keep, &[], out);
}

/// Writes a request body as canonical JSON, leaving out `markers` and the top-level
/// keys in `skip_top_level`.
pub fn write_request(body: &Value, markers: Markers, skip_top_level: &[&str], out: &mut Vec<u8>) {
    write_value(body, Pos::Top, markers, skip_top_level, out);
}

/// Canonical JSON of a request as a `Vec`.
pub fn request_bytes(body: &Value, markers: Markers, skip_top_level: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_request(body, markers, skip_top_level, &mut out);
    out
}

fn child_pos(pos: Pos, key: &str, markers: Markers) -> Pos {
    match (markers, pos, key) {
        (Markers::Keep, _, _) => Pos::Any,
        (_, Pos::Top, "messages") => Pos::Messages,
        (_, Pos::Top, "system") => Pos::MarkerList,
        (Markers::Converse, Pos::Top, "toolConfig") => Pos::ToolConfig,
        (Markers::Converse, Pos::ToolConfig, "tools") => Pos::MarkerList,
        (Markers::Anthropic, Pos::Top, "tools") => Pos::MarkerList,
        (_, Pos::Message, "content") => Pos::MarkerList,
        _ => Pos::Any,
    }
}

fn is_converse_marker(value: &Value) -> bool {
    matches!(value, Value::Object(m) if m.contains_key("cachePoint"))
}

fn write_value(value: &Value, pos: Pos, markers: Markers, skip: &[&str], out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            let item_pos = match pos {
                Pos::Messages => Pos::Message,
                Pos::MarkerList => Pos::MarkerElement,
                _ => Pos::Any,
            };
            out.push(b'[');
            let mut first = true;
            for item in items {
                if pos == Pos::MarkerList
                    && markers == Markers::Converse
                    && is_converse_marker(item)
                {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_value(item, item_pos, markers, skip, out);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, pos, markers, skip, out),
    }
}

fn write_object(
    map: &Map<String, Value>,
    pos: Pos,
    markers: Markers,
    skip: &[&str],
    out: &mut Vec<u8>,
) {
    let mut keys: Vec<&String> = map
        .keys()
        .filter(|k| !(pos == Pos::Top && skip.contains(&k.as_str())))
        .filter(|k| {
            !(pos == Pos::MarkerElement && markers == Markers::Anthropic && *k == "cache_control")
        })
        .collect();
    keys.sort_unstable();
    out.push(b'{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        let child = child_pos(pos, key, markers);
        write_value(&map[key.as_str()], child, markers, skip, out);
    }
    out.push(b'}');
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Integers print as integers; floats with an integral value small enough to be
/// exact print as integers too (as JSON's own canonical form, RFC 8785, does);
/// other floats print in their shortest round-trip form.
fn write_number(n: &Number, out: &mut Vec<u8>) {
    if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
            let _ = std::io::Write::write_fmt(out, format_args!("{}", f as i64));
            return;
        }
    }
    let _ = std::io::Write::write_fmt(out, format_args!("{n}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: &Value, markers: Markers) -> String {
        String::from_utf8(request_bytes(v, markers, &["performanceConfig"])).unwrap()
    }

    #[test]
    fn key_order_whitespace_and_number_spelling_do_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": 0.0, "x": [1, 2.5]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":[1,2.5],"y":0},"b":1.0}"#).unwrap();
        assert_eq!(canon(&a, Markers::Keep), canon(&b, Markers::Keep));
        assert_eq!(
            canon(&a, Markers::Keep),
            r#"{"a":{"x":[1,2.5],"y":0},"b":1}"#
        );
    }

    #[test]
    fn converse_cache_points_are_left_out_only_where_bedrock_reads_them() {
        let with = json!({
            "system": [{"text": "s"}, {"cachePoint": {"type": "default"}}],
            "messages": [{"role": "user", "content": [
                {"text": "hi"}, {"cachePoint": {"type": "default"}},
                {"toolResult": {"toolUseId": "t", "content": [{"json": {"cachePoint": 1}}]}}
            ]}],
            "toolConfig": {"tools": [{"toolSpec": {"name": "t"}}, {"cachePoint": {"type": "default"}}]},
            "performanceConfig": {"latency": "optimized"}
        });
        let without = json!({
            "system": [{"text": "s"}],
            "messages": [{"role": "user", "content": [
                {"text": "hi"},
                {"toolResult": {"toolUseId": "t", "content": [{"json": {"cachePoint": 1}}]}}
            ]}],
            "toolConfig": {"tools": [{"toolSpec": {"name": "t"}}]}
        });
        assert_eq!(
            canon(&with, Markers::Converse),
            canon(&without, Markers::Converse)
        );
        assert!(canon(&with, Markers::Converse).contains(r#"{"json":{"cachePoint":1}}"#));
        assert_ne!(canon(&with, Markers::Keep), canon(&without, Markers::Keep));
    }

    #[test]
    fn anthropic_cache_control_is_left_out() {
        let with = json!({
            "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
            "tools": [{"name": "t", "input_schema": {}, "cache_control": {"type": "ephemeral"}}]
        });
        let without = json!({
            "system": [{"type": "text", "text": "s"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "tools": [{"name": "t", "input_schema": {}}]
        });
        assert_eq!(
            canon(&with, Markers::Anthropic),
            canon(&without, Markers::Anthropic)
        );
    }

    #[test]
    fn strings_are_escaped() {
        let v = json!({"k\"": "line\nbreak \u{1F600}"});
        let s = canon(&v, Markers::Keep);
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }
}
