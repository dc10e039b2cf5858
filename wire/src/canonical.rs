//! Canonical JSON for hashing requests: object keys sorted by their UTF-8 bytes,
//! no whitespace, numbers by their exact decimal value (`0.0`, `0` and `0e5`
//! are the same number; `123456789012345678901234` and `...235` are not), and
//! the prompt-cache markers left out, because they never change what a model
//! answers.
//!
//! Two writers give the same bytes: one over a parsed [`Value`], one over the
//! JSON text itself ([`request_bytes_from_text`]). Only the second is exact for
//! every number: parsing into a `Value` rounds numbers beyond an `f64`'s
//! precision, so the response cache keys requests by their text.
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

/// A parsed number, by the text `serde_json` prints for it (exact for
/// integers; an `f64`'s shortest round-trip form otherwise).
fn write_number(n: &Number, out: &mut Vec<u8>) {
    write_number_text(n.to_string().as_bytes(), out);
}

/// Integers of at most this many digits print in full; larger magnitudes in
/// scientific form, so `1e1000000` stays short.
const MAX_PLAIN_DIGITS: i64 = 40;

/// Writes a JSON number literal by its exact decimal value, one spelling per
/// value: `-0`, `0.0` and `0e9` are `0`; `1.50`, `15e-1` and `0.15e1` are
/// `1.5`; `1E3` is `1000`; `2.5e-9` is `2.5e-9`. Text that is not a number
/// literal is written as it is.
pub fn write_number_text(text: &[u8], out: &mut Vec<u8>) {
    match decimal(text) {
        Some((negative, digits, exponent)) => write_decimal(negative, &digits, exponent, out),
        None => out.extend_from_slice(text),
    }
}

/// A number literal as (negative, significant digits without leading or
/// trailing zeros, exponent): the value is `digits × 10^exponent`. Zero has no
/// digits. `None` when `text` is not a JSON number or its exponent is absurd.
fn decimal(text: &[u8]) -> Option<(bool, Vec<u8>, i64)> {
    let (negative, rest) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let mantissa_end = rest
        .iter()
        .position(|b| matches!(b, b'e' | b'E'))
        .unwrap_or(rest.len());
    let (mantissa, exp_part) = rest.split_at(mantissa_end);
    let mut exponent: i64 = match exp_part.split_first() {
        None => 0,
        Some((_, e)) => {
            let e = std::str::from_utf8(e).ok()?;
            let e = e.strip_prefix('+').unwrap_or(e);
            if e.is_empty() || e.len() > 15 {
                return None;
            }
            e.parse().ok()?
        }
    };
    let (int, frac) = match mantissa.iter().position(|b| *b == b'.') {
        Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
        None => (mantissa, &mantissa[..0]),
    };
    if int.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    exponent = exponent.checked_sub(i64::try_from(frac.len()).ok()?)?;
    let mut digits: Vec<u8> = int.iter().chain(frac).copied().collect();
    let leading = digits.iter().take_while(|d| **d == b'0').count();
    digits.drain(..leading);
    let trailing = digits.iter().rev().take_while(|d| **d == b'0').count();
    digits.truncate(digits.len() - trailing);
    exponent = exponent.checked_add(i64::try_from(trailing).ok()?)?;
    if digits.is_empty() {
        return Some((false, digits, 0));
    }
    Some((negative, digits, exponent))
}

fn write_decimal(negative: bool, digits: &[u8], exponent: i64, out: &mut Vec<u8>) {
    if digits.is_empty() {
        out.push(b'0');
        return;
    }
    if negative {
        out.push(b'-');
    }
    let len = digits.len() as i64;
    // Where the decimal point falls, counted from the left of `digits`.
    let point = len + exponent;
    if exponent >= 0 && point <= MAX_PLAIN_DIGITS {
        out.extend_from_slice(digits);
        out.extend(std::iter::repeat_n(b'0', exponent as usize));
    } else if exponent < 0 && point > 0 {
        let (int, frac) = digits.split_at(point as usize);
        out.extend_from_slice(int);
        out.push(b'.');
        out.extend_from_slice(frac);
    } else if exponent < 0 && point > -6 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-point) as usize));
        out.extend_from_slice(digits);
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        let _ = std::io::Write::write_fmt(out, format_args!("e{}", point - 1));
    }
}

/// Canonical JSON of a request given as JSON text (see [`write_request`]),
/// every number by its exact value; `None` when `text` is not valid JSON.
pub fn request_bytes_from_text(
    text: &[u8],
    markers: Markers,
    skip_top_level: &[&str],
) -> Option<Vec<u8>> {
    let mut reader = Reader { text, at: 0 };
    let mut out = Vec::with_capacity(text.len().min(1 << 20));
    reader.value(Pos::Top, markers, skip_top_level, &mut out, 0)?;
    reader.skip_ws();
    (reader.at == text.len()).then_some(out)
}

/// Nesting beyond this is refused (the proxy's own limit is far below).
const MAX_TEXT_DEPTH: usize = 512;

/// A cursor over JSON text, writing canonical JSON as it reads.
struct Reader<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn skip_ws(&mut self) {
        while self
            .text
            .get(self.at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.text.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string token, unescaped.
    fn string(&mut self) -> Option<std::borrow::Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            let b = *self.text.get(self.at)?;
            self.at += 1;
            match b {
                b'\\' => {
                    escaped = true;
                    self.at += 1;
                }
                b'"' => break,
                0..=0x1f => return None,
                _ => {}
            }
        }
        let token = self.text.get(start - 1..self.at)?;
        if escaped {
            serde_json::from_slice::<String>(token)
                .ok()
                .map(std::borrow::Cow::Owned)
        } else {
            std::str::from_utf8(&token[1..token.len() - 1])
                .ok()
                .map(std::borrow::Cow::Borrowed)
        }
    }

    fn value(
        &mut self,
        pos: Pos,
        markers: Markers,
        skip: &[&str],
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Option<()> {
        if depth > MAX_TEXT_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(pos, markers, skip, out, depth).map(drop),
            b'[' => self.array(pos, markers, skip, out, depth),
            b'"' => {
                let s = self.string()?;
                write_string(&s, out);
                Some(())
            }
            b't' => self.literal(b"true", out),
            b'f' => self.literal(b"false", out),
            b'n' => self.literal(b"null", out),
            _ => {
                let start = self.at;
                while self
                    .text
                    .get(self.at)
                    .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    self.at += 1;
                }
                let token = &self.text[start..self.at];
                let (negative, digits, exponent) = decimal(token)?;
                write_decimal(negative, &digits, exponent, out);
                Some(())
            }
        }
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let end = self.at + word.len();
        (self.text.get(self.at..end)? == word).then_some(())?;
        self.at = end;
        out.extend_from_slice(word);
        Some(())
    }

    fn array(
        &mut self,
        pos: Pos,
        markers: Markers,
        skip: &[&str],
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Option<()> {
        self.eat(b'[')?;
        let item_pos = match pos {
            Pos::Messages => Pos::Message,
            Pos::MarkerList => Pos::MarkerElement,
            _ => Pos::Any,
        };
        let drop_markers = pos == Pos::MarkerList && markers == Markers::Converse;
        out.push(b'[');
        let mut first = true;
        if self.peek()? == b']' {
            self.at += 1;
            out.push(b']');
            return Some(());
        }
        loop {
            // Each item is written in place; a marker is taken back out.
            let before = out.len();
            if !first {
                out.push(b',');
            }
            let is_marker = if drop_markers && self.peek()? == b'{' {
                self.object(item_pos, markers, skip, out, depth + 1)?
            } else {
                self.value(item_pos, markers, skip, out, depth + 1)?;
                false
            };
            if is_marker {
                out.truncate(before);
            } else {
                first = false;
            }
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    break;
                }
                _ => return None,
            }
        }
        out.push(b']');
        Some(())
    }

    /// An object, its kept members sorted by key; returns whether it is a
    /// Converse `cachePoint` marker (has that key). Members are written in
    /// place as they are read; only an object whose keys come out of order
    /// (or repeat) is then rewritten, once, in order.
    fn object(
        &mut self,
        pos: Pos,
        markers: Markers,
        skip: &[&str],
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Option<bool> {
        self.eat(b'{')?;
        out.push(b'{');
        if self.peek()? == b'}' {
            self.at += 1;
            out.push(b'}');
            return Some(false);
        }
        let body = out.len();
        // Each kept member: its key and where `"key":value` lies in `out`.
        let mut members: Vec<(std::borrow::Cow<'a, str>, usize, usize)> = Vec::new();
        let mut in_order = true;
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            let dropped = (pos == Pos::Top && skip.contains(&key.as_ref()))
                || (pos == Pos::MarkerElement
                    && markers == Markers::Anthropic
                    && key == "cache_control");
            let before = out.len();
            if !members.is_empty() {
                out.push(b',');
            }
            let start = out.len();
            write_string(&key, out);
            out.push(b':');
            let child = child_pos(pos, &key, markers);
            self.value(child, markers, skip, out, depth + 1)?;
            if dropped {
                out.truncate(before);
            } else {
                // A repeated key: the last one counts, as serde_json reads it.
                if let Some(i) = members.iter().position(|(k, _, _)| *k == key) {
                    members.remove(i);
                    in_order = false;
                }
                if members.last().is_some_and(|(last, _, _)| *last > key) {
                    in_order = false;
                }
                members.push((key, start, out.len()));
            }
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    break;
                }
                _ => return None,
            }
        }
        let marker = members.iter().any(|(k, _, _)| k == "cachePoint");
        if !in_order {
            let written = out.split_off(body);
            members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (i, (_, start, end)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&written[start - body..end - body]);
            }
        }
        out.push(b'}');
        Some(marker)
    }
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

    fn from_text(text: &str, markers: Markers) -> String {
        String::from_utf8(
            request_bytes_from_text(text.as_bytes(), markers, &["performanceConfig"]).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn numbers_are_keyed_by_their_exact_value() {
        let a = r#"{"x": 123456789012345678901234}"#;
        let b = r#"{"x": 123456789012345678901235}"#;
        assert_ne!(from_text(a, Markers::Keep), from_text(b, Markers::Keep));
        assert_eq!(
            from_text(a, Markers::Keep),
            r#"{"x":123456789012345678901234}"#
        );
        for (spellings, canonical) in [
            (&["0", "-0", "0.0", "0e5", "0.000e-3"][..], "0"),
            (&["1", "1.0", "1e0", "10e-1", "0.1e1", "1E+0"][..], "1"),
            (&["1.5", "1.50", "15e-1", "0.15e1"][..], "1.5"),
            (&["1000", "1e3", "1E3", "0.001e6"][..], "1000"),
            (&["0.001", "1e-3"][..], "0.001"),
            (&["-2.5e-9", "-25e-10"][..], "-2.5e-9"),
            (&["1e300"][..], "1e300"),
            (
                &["0.1000000000000000000001"][..],
                "0.1000000000000000000001",
            ),
        ] {
            for s in spellings {
                assert_eq!(
                    from_text(&format!("[{s}]"), Markers::Keep),
                    format!("[{canonical}]"),
                    "{s}"
                );
            }
        }
    }

    #[test]
    fn text_and_parsed_values_give_the_same_bytes() {
        let text = r#"{"messages":[{"role":"user","content":[{"text":"h\u0069 \"x\""},{"cachePoint":{"type":"default"}}]}],
            "b":[1,2.5,-3e2,{"z":null,"a":true}],"a":{},"performanceConfig":{"latency":"optimized"},"d":"a","d":"b"}"#;
        let parsed: Value = serde_json::from_str(text).unwrap();
        for markers in [Markers::Keep, Markers::Converse, Markers::Anthropic] {
            assert_eq!(from_text(text, markers), canon(&parsed, markers));
        }
        assert!(request_bytes_from_text(b"{\"a\":1", Markers::Keep, &[]).is_none());
        assert!(request_bytes_from_text(b"{\"a\":1} x", Markers::Keep, &[]).is_none());
    }

    #[test]
    fn members_out_of_order_repeated_or_left_out_give_the_parsed_values_bytes() {
        // Unsorted at every level, a repeated key whose last value counts
        // (also `cachePoint` itself), a left-out member first, in the middle
        // and last, markers in system, messages and tools.
        let text = r#"{"performanceConfig":{"latency":"optimized"},"toolConfig":{"tools":[{"toolSpec":{"name":"b","description":"x"}},
            {"cachePoint":{"type":"default"}},{"cachePoint":1,"cachePoint":{"type":"default"}}],"b":2,"a":1},
            "system":[{"text":"s","cache_control":{"type":"ephemeral"}},{"cachePoint":{"type":"default"}}],
            "messages":[{"role":"user","content":[{"text":"y","cache_control":{"type":"ephemeral"},"a":0},{"z":1,"z":2,"a":[3,{"d":1,"c":2}]}]},
            {"content":[],"role":"assistant","role":"user"}],"serviceTier":"flex","requestMetadata":{"k":"v"},"a":{"y":1,"x":{"q":1,"p":2}}}"#;
        let parsed: Value = serde_json::from_str(text).unwrap();
        let skip = ["performanceConfig", "requestMetadata", "serviceTier"];
        for markers in [Markers::Keep, Markers::Converse, Markers::Anthropic] {
            assert_eq!(
                String::from_utf8(
                    request_bytes_from_text(text.as_bytes(), markers, &skip).unwrap()
                )
                .unwrap(),
                String::from_utf8(request_bytes(&parsed, markers, &skip)).unwrap(),
                "{markers:?}"
            );
        }
        // Escaped keys sort by their text (`\u0062` is `b`, after `a`; `\u0041`
        // is `A`, before both), and a marker first in a list leaves no comma.
        let escaped = r#"{"\u0062":1,"a":2,"\u0041":3,"messages":[{"content":[{"cachePoint":{"type":"default"}},{"text":"t"}],"role":"user"}]}"#;
        let reparsed: Value = serde_json::from_str(escaped).unwrap();
        for markers in [Markers::Keep, Markers::Converse, Markers::Anthropic] {
            assert_eq!(
                request_bytes_from_text(escaped.as_bytes(), markers, &[]).unwrap(),
                request_bytes(&reparsed, markers, &[]),
                "{markers:?}"
            );
        }
        assert_eq!(
            from_text(escaped, Markers::Converse),
            r#"{"A":3,"a":2,"b":1,"messages":[{"content":[{"text":"t"}],"role":"user"}]}"#
        );
        let converse = request_bytes_from_text(text.as_bytes(), Markers::Converse, &skip).unwrap();
        let converse = String::from_utf8(converse).unwrap();
        assert!(!converse.contains("cachePoint"), "{converse}");
        assert!(
            converse.starts_with(r#"{"a":{"x":{"p":2,"q":1},"y":1},"messages":"#),
            "{converse}"
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
