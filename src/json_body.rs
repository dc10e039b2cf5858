//! A JSON request body, parsed only as far as the stages that read it need:
//! validated once (UTF-8, nesting, syntax, an object), its few small top-level
//! members that stages may read ([`HEAD_MEMBERS`]: tiers, temperature,
//! guardrail) parsed when the first stage reads one ([`JsonBody::head`], or
//! [`JsonBody::head_member`], which parses nothing for a member the body does
//! not have), and the whole tree built only when a stage asks for
//! it ([`JsonBody::tree`]: translation, traces that capture content), then
//! shared by every stage of the call. Stages that walk a long member (token
//! estimates, prompt-cache planning) read it element by element from the text
//! ([`JsonBody::member_text`], [`each_element`], [`member`]).
//!
//! A `serde_json::Value` of many small objects costs 10 to 20 times its text;
//! a call that no stage reads goes out as the bytes the client sent, and edits
//! (the tiers the planners set, the prompt-cache points) are spliced into the
//! text without building the tree ([`JsonBody::edited`], [`JsonBody::spliced`]).

use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::OnceLock;

use crate::error::ProxyError;

/// The top-level members of the head: the ones stages read without the rest
/// of the body, all small in any request Bedrock accepts.
pub const HEAD_MEMBERS: &[&str] = &[
    // Converse
    "performanceConfig",
    "serviceTier",
    "inferenceConfig",
    "guardrailConfig",
    // InvokeModel bodies (the cache markers' format, determinism)
    "anthropic_version",
    "temperature",
];

/// The most JSON text a head member may have. Every one of them is a few
/// fields that Bedrock bounds far below this; a larger one, which Bedrock
/// would refuse too, is refused before it is parsed, so no member can make
/// the head cost a multiple of the body.
pub const HEAD_MEMBER_MAX_BYTES: usize = 64 * 1024;

/// A JSON object request body (see the module docs).
#[derive(Debug)]
pub struct JsonBody {
    raw: Bytes,
    /// The [`HEAD_MEMBERS`] present, parsed (an object) when a stage first
    /// reads the head: a pass-through call that asks for no member present
    /// builds no `Value` at all.
    head: OnceLock<Value>,
    /// Every top-level member's name and where its text is in `raw`, in order.
    names: Names,
    tree: OnceLock<Value>,
}

/// The top-level members of an object as their JSON text, in order (a
/// repeated name appears twice: the last one counts, as in a parsed tree).
/// A name is borrowed from the text unless it has escapes.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// A member name, borrowed from the text when it has no escapes (serde's own
/// `Cow<str>` always copies).
struct MemberName<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl<'de> Visitor<'de> for Name {
            type Value = MemberName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Walk;
        impl<'de> Visitor<'de> for Walk {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((name, value)) =
                    map.next_entry::<MemberName<'de>, &'de RawValue>()?
                {
                    members.push((name.0, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Walk)
    }
}

/// Reads a JSON value as a tree parse does (numbers as numbers, strings
/// unescaped), refusing what it would refuse (a number out of `f64`'s range, a
/// lone surrogate escape), without building anything: the check a head member
/// passes when the body is read, so that parsing it later cannot fail.
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Check;
        impl<'de> Visitor<'de> for Check {
            type Value = Checked;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_unit<E>(self) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
                while map.next_entry::<Checked, Checked>()?.is_some() {}
                Ok(Checked)
            }
        }
        deserializer.deserialize_any(Check)
    }
}

fn malformed(e: impl std::fmt::Display) -> ProxyError {
    ProxyError::validation(format!(
        "Malformed input request: {e}, please reformat your input and try again."
    ))
}

fn not_an_object() -> ProxyError {
    ProxyError::validation("Malformed input request: the body must be a JSON object.")
}

/// Whether JSON text nests arrays and objects deeper than `max` (strings and
/// escapes are skipped, so brackets inside strings do not count).
pub fn nesting_exceeds(bytes: &[u8], max: usize) -> bool {
    // Text with no more opening brackets than `max` cannot nest deeper, inside
    // strings or not: counting them is a branch-free loop the compiler
    // vectorizes, where the walk below goes byte by byte. Most bodies stop here.
    let opening = bytes
        .iter()
        .map(|&b| usize::from(b == b'{' || b == b'['))
        .sum::<usize>();
    if opening <= max {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The checks every JSON body passes before anything reads it: UTF-8, at most
/// `max_depth` levels of nesting. The text, for parsers that then need not
/// check its UTF-8 again.
fn check_text(bytes: &[u8], max_depth: usize) -> Result<&str, ProxyError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ProxyError::validation(format!(
            "Malformed input request: the body is not valid UTF-8 (invalid byte at offset {}), please reformat your input and try again.",
            e.valid_up_to()
        ))
    })?;
    if nesting_exceeds(bytes, max_depth) {
        return Err(ProxyError::validation(format!(
            "Malformed input request: JSON is nested deeper than this proxy's limit of {max_depth} levels."
        )));
    }
    Ok(text)
}

/// Parses a JSON request body into a tree: valid UTF-8, nested at most
/// `max_depth`, an object (for the ingresses that translate every body).
pub fn parse_json(bytes: &[u8], max_depth: usize) -> Result<Value, ProxyError> {
    let text = check_text(bytes, max_depth)?;
    let value: Value = serde_json::from_str(text).map_err(malformed)?;
    if !value.is_object() {
        return Err(not_an_object());
    }
    Ok(value)
}

impl JsonBody {
    /// Validates a body as [`parse_json`] does, with the same messages, without
    /// building its tree: the text is read once and its top-level members
    /// located (the head members checked as a tree parse would read them;
    /// they are parsed on first use).
    pub fn parse(raw: Bytes, max_depth: usize) -> Result<JsonBody, ProxyError> {
        let text = check_text(&raw, max_depth)?;
        if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            // Still a syntax error first, as a tree parse would say.
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Err(e) => malformed(e),
                Ok(_) => not_an_object(),
            });
        }
        let names = {
            let members: Members<'_> = serde_json::from_str(text).map_err(malformed)?;
            check_head(&members.0)?;
            names_of(&raw, &members.0)
        };
        Ok(JsonBody {
            raw,
            head: OnceLock::new(),
            names,
            tree: OnceLock::new(),
        })
    }

    /// A body the proxy built (a translation): its text and tree, both kept.
    pub fn from_value(tree: Value) -> JsonBody {
        let raw = Bytes::from(tree.to_string());
        let head = OnceLock::from(head_of_tree(&tree));
        let names = names_in(&raw);
        JsonBody {
            raw,
            head,
            names,
            tree: OnceLock::from(tree),
        }
    }

    /// The body's text.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The head: an object of the [`HEAD_MEMBERS`] the body has, parsed on
    /// first use. Any other member is read from [`JsonBody::tree`].
    ///
    /// Each head member was checked as a tree parse reads it when the body
    /// was read ([`check_head`]), so none fails to parse here.
    pub fn head(&self) -> &Value {
        self.head.get_or_init(|| {
            let mut head = Map::new();
            for (name, span) in &self.names {
                let Some(name) = name.head_member(&self.raw) else {
                    continue;
                };
                let Some(text) = self.text_at(span.clone()) else {
                    continue;
                };
                if let Ok(value) = serde_json::from_str::<Value>(text) {
                    head.insert(name.to_owned(), value);
                }
            }
            Value::Object(head)
        })
    }

    /// The head member `name` (one of [`HEAD_MEMBERS`]), `None` when the body
    /// has none: asking for a member the body does not have parses nothing.
    pub fn head_member(&self, name: &str) -> Option<&Value> {
        debug_assert!(HEAD_MEMBERS.contains(&name), "{name} is not a head member");
        if self.head.get().is_none() && !self.has(name) {
            return None;
        }
        self.head().get(name)
    }

    /// Whether the body has a top-level member `name`.
    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|(n, _)| n.is(&self.raw, name))
    }

    /// The top-level member `name` parsed on its own (borrowed from the tree
    /// when it is built).
    pub fn member(&self, name: &str) -> Option<std::borrow::Cow<'_, Value>> {
        if let Some(tree) = self.tree.get() {
            return tree.get(name).map(std::borrow::Cow::Borrowed);
        }
        let text = self.text_at(self.last_span(name)?)?;
        serde_json::from_str(text).ok().map(std::borrow::Cow::Owned)
    }

    /// Calls `f` with each element of the top-level array `name`, parsed one
    /// at a time and dropped after (taken from the tree when it is built), so
    /// a stage can walk a long conversation without building its tree.
    /// Nothing when the member is missing or not an array.
    pub fn for_each_element(&self, name: &str, mut f: impl FnMut(&Value)) {
        if let Some(tree) = self.tree.get() {
            tree.get(name)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .for_each(f);
            return;
        }
        let Some(text) = self.member_text(name) else {
            return;
        };
        each_element(text, |item| {
            if let Ok(value) = serde_json::from_str::<Value>(item.get()) {
                f(&value);
            }
        });
    }

    /// The text at `span` of [`JsonBody::raw`] (only that part is checked as
    /// UTF-8, which the whole body was when it was made).
    pub fn text_at(&self, span: std::ops::Range<usize>) -> Option<&str> {
        std::str::from_utf8(self.raw.get(span)?).ok()
    }

    /// Where `text`, a slice of [`JsonBody::raw`] (from [`JsonBody::member_text`]
    /// and what was read from it), is in it.
    pub fn span_of(&self, text: &str) -> std::ops::Range<usize> {
        span_of_str(&self.raw, text)
    }

    /// The text of the top-level member `name` (the last of a repeated name,
    /// as in a tree), a slice of [`JsonBody::raw`]; never builds the tree.
    pub fn member_text(&self, name: &str) -> Option<&str> {
        self.text_at(self.last_span(name)?)
    }

    /// Where the top-level member `name`'s text is in [`JsonBody::raw`]: the
    /// last of a repeated name counts, as in a tree.
    fn last_span(&self, name: &str) -> Option<std::ops::Range<usize>> {
        self.names
            .iter()
            .rev()
            .find(|(n, _)| n.is(&self.raw, name))
            .map(|(_, span)| span.clone())
    }

    /// The body's text with `edits` (spans of [`JsonBody::raw`], empty to
    /// insert, and the text to put there; spans that overlap an earlier one
    /// are left out) and then `edit`'s head changes, as [`JsonBody::edited`]
    /// makes them: everything else goes out as it came.
    pub fn spliced(
        &self,
        mut edits: Vec<(std::ops::Range<usize>, String)>,
        edit: impl FnOnce(&mut Value),
    ) -> Bytes {
        edits.sort_by_key(|(span, _)| (span.start, span.end));
        let added: usize = edits.iter().map(|(_, text)| text.len()).sum();
        let mut out = Vec::with_capacity(self.raw.len() + added);
        let mut from = 0;
        for (span, text) in &edits {
            if span.start < from || span.end < span.start || span.end > self.raw.len() {
                continue;
            }
            out.extend_from_slice(self.raw.get(from..span.start).unwrap_or_default());
            out.extend_from_slice(text.as_bytes());
            from = span.end;
        }
        out.extend_from_slice(self.raw.get(from..).unwrap_or_default());
        let old = self.head();
        let mut head = old.clone();
        edit(&mut head);
        if head == *old {
            return Bytes::from(out);
        }
        splice(&out, old, &head)
    }

    /// The whole body parsed, built on first use and shared after.
    pub fn tree(&self) -> &Value {
        self.tree.get_or_init(|| {
            // The text was read as an object when this was made.
            bedrock_wire::converse::read_json(&self.raw)
                .unwrap_or_else(|_| Value::Object(Map::new()))
        })
    }

    /// Whether the tree has been built (by a stage that needed it).
    pub fn has_tree(&self) -> bool {
        self.tree.get().is_some()
    }

    /// The body's text after `edit`, which may change, add or remove head
    /// members only (it is given the head): the members it changed are
    /// spliced into the text, every other member goes out as it came.
    pub fn edited(&self, edit: impl FnOnce(&mut Value)) -> Bytes {
        let old = self.head();
        let mut head = old.clone();
        edit(&mut head);
        if head == *old {
            return self.raw.clone();
        }
        match self.tree.get() {
            Some(tree) => {
                let mut tree = tree.clone();
                apply_head(&mut tree, old, &head);
                Bytes::from(tree.to_string())
            }
            None => splice(&self.raw, old, &head),
        }
    }

    /// [`JsonBody::edited`], kept: the body becomes the edited one.
    pub fn edit(&mut self, edit: impl FnOnce(&mut Value)) {
        let old = self.head().clone();
        let mut head = old.clone();
        edit(&mut head);
        if head == old {
            return;
        }
        if let Some(tree) = self.tree.get_mut() {
            apply_head(tree, &old, &head);
            self.raw = Bytes::from(tree.to_string());
            self.head = OnceLock::from(head_of_tree(tree));
            self.names = names_in(&self.raw);
        } else {
            let raw = splice(&self.raw, &old, &head);
            self.names = names_in(&raw);
            self.raw = raw;
            self.head = OnceLock::from(head);
        }
    }
}

/// Where a member's text (a slice of `raw`) is in `raw`.
fn span(raw: &[u8], text: &RawValue) -> std::ops::Range<usize> {
    span_of_str(raw, text.get())
}

/// A top-level member's name: where it is in the body's text (a name without
/// escapes, the common case), or unescaped.
#[derive(Debug)]
enum Name {
    At(std::ops::Range<usize>),
    Unescaped(Box<str>),
}

impl Name {
    // The `Cow` itself is the point: borrowed means a slice of `raw`.
    #[allow(clippy::ptr_arg)]
    fn of(raw: &[u8], name: &Cow<'_, str>) -> Name {
        match name {
            Cow::Borrowed(text) => Name::At(span_of_str(raw, text)),
            Cow::Owned(text) => Name::Unescaped(text.as_str().into()),
        }
    }

    /// The [`HEAD_MEMBERS`] entry this name is, if it is one.
    fn head_member(&self, raw: &[u8]) -> Option<&'static str> {
        HEAD_MEMBERS.iter().copied().find(|m| self.is(raw, m))
    }

    /// Whether this is `name` (`raw`, the body's text the name was read from).
    fn is(&self, raw: &[u8], name: &str) -> bool {
        match self {
            Name::At(span) => raw.get(span.clone()) == Some(name.as_bytes()),
            Name::Unescaped(text) => &**text == name,
        }
    }
}

type Names = Vec<(Name, std::ops::Range<usize>)>;

/// Where `text`, a slice of `raw`, is in it.
fn span_of_str(raw: &[u8], text: &str) -> std::ops::Range<usize> {
    let start = (text.as_ptr() as usize).saturating_sub(raw.as_ptr() as usize);
    start..start + text.len()
}

/// Checks the head members when the body is read, with the messages a tree
/// parse gives: one larger than [`HEAD_MEMBER_MAX_BYTES`] (Bedrock would
/// refuse it too) before anything reads it, and each read as a tree parse
/// reads it ([`Checked`]: a number out of range, a lone surrogate), so that
/// building the head later cannot fail and no stage (the guardrail check
/// among them) sees a member the body has as missing.
fn check_head(members: &[(Cow<'_, str>, &RawValue)]) -> Result<(), ProxyError> {
    for (name, raw) in members {
        if !HEAD_MEMBERS.contains(&name.as_ref()) {
            continue;
        }
        if raw.get().len() > HEAD_MEMBER_MAX_BYTES {
            return Err(ProxyError::validation(format!(
                "Malformed input request: `{name}` is larger than {HEAD_MEMBER_MAX_BYTES} bytes, please reformat your input and try again."
            )));
        }
        serde_json::from_str::<Checked>(raw.get()).map_err(malformed)?;
    }
    Ok(())
}

fn head_of_tree(tree: &Value) -> Value {
    let Some(obj) = tree.as_object() else {
        return Value::Object(Map::new());
    };
    let head = obj
        .iter()
        .filter(|(k, _)| HEAD_MEMBERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(head)
}

/// Every top-level member's name and span in object text `raw` (none when it
/// does not read as an object).
fn names_in(raw: &[u8]) -> Names {
    serde_json::from_slice::<Members<'_>>(raw)
        .map(|members| names_of(raw, &members.0))
        .unwrap_or_default()
}

/// The names and spans of `members`, read from object text `raw`.
fn names_of(raw: &[u8], members: &[(Cow<'_, str>, &RawValue)]) -> Names {
    members
        .iter()
        .map(|(n, v)| (Name::of(raw, n), span(raw, v)))
        .collect()
}

/// The members of the JSON object `text` as their text, in order (a repeated
/// name appears each time); `None` when `text` is not an object.
pub fn members(text: &str) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    serde_json::from_str::<Members<'_>>(text).ok().map(|m| m.0)
}

/// The text of the member `name` of the JSON object `text` (the last of a
/// repeated name, as in a tree); `None` when there is none or `text` is not
/// an object.
pub fn member<'a>(text: &'a str, name: &str) -> Option<&'a RawValue> {
    members(text)?
        .into_iter()
        .rev()
        .find_map(|(n, v)| (n == name).then_some(v))
}

/// Calls `f` with the text of each element of the JSON array `text`, in
/// order, one at a time: nothing collects them, so a long array costs no more
/// than its longest element. False (and no call) when `text` is not an array.
pub fn each_element<'a>(text: &'a str, mut f: impl FnMut(&'a RawValue)) -> bool {
    struct Each<'f, F>(&'f mut F);
    impl<'de, F: FnMut(&'de RawValue)> Visitor<'de> for Each<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element::<&'de RawValue>()? {
                (self.0)(item);
            }
            Ok(())
        }
    }
    impl<'de, F: FnMut(&'de RawValue)> DeserializeSeed<'de> for Each<'_, F> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_seq(self)
        }
    }
    if !text.trim_start().starts_with('[') {
        return false;
    }
    let mut de = serde_json::Deserializer::from_str(text);
    Each(&mut f).deserialize(&mut de).is_ok() && de.end().is_ok()
}

/// What an edit of the head did: members set (changed or added), in the new
/// head's order, and members removed.
fn head_changes<'a>(old: &'a Value, new: &'a Value) -> (Vec<(&'a str, &'a Value)>, Vec<&'a str>) {
    // A head is an object; an edit that made it something else changes nothing.
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return (Vec::new(), Vec::new());
    };
    let set = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(String::as_str)
        .collect();
    (set, removed)
}

fn apply_head(tree: &mut Value, old: &Value, new: &Value) {
    let (set, removed) = head_changes(old, new);
    if let Some(obj) = tree.as_object_mut() {
        for name in removed {
            obj.shift_remove(name);
        }
        for (name, value) in set {
            obj.insert(name.to_owned(), value.clone());
        }
    }
}

/// The object text `raw` with the head's changes: a member set where it was
/// (its repeats dropped) or at the end when new, a removed member left out.
fn splice(raw: &[u8], old: &Value, new: &Value) -> Bytes {
    let Ok(members) = serde_json::from_slice::<Members<'_>>(raw) else {
        return Bytes::copy_from_slice(raw);
    };
    let (set, removed) = head_changes(old, new);
    let mut out = Vec::with_capacity(raw.len() + 64);
    out.push(b'{');
    let mut written: Vec<&str> = Vec::new();
    for (name, text) in &members.0 {
        if removed.contains(&name.as_ref()) || written.contains(&name.as_ref()) {
            continue;
        }
        match set.iter().find(|(n, _)| n == name) {
            Some((n, value)) => {
                put(&mut out, name, &value.to_string());
                written.push(n);
            }
            None => put(&mut out, name, text.get()),
        }
    }
    for (name, value) in &set {
        if !written.contains(name) {
            put(&mut out, name, &value.to_string());
        }
    }
    out.push(b'}');
    Bytes::from(out)
}

/// Appends one member to object text being written.
fn put(out: &mut Vec<u8>, name: &str, text: &str) {
    if out.len() > 1 {
        out.push(b',');
    }
    // A name is a string: serializing it cannot fail.
    out.extend_from_slice(serde_json::to_string(name).unwrap_or_default().as_bytes());
    out.push(b':');
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests;
