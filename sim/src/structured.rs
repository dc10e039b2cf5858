//! Structured output: the JSON schema a request asks its answer to follow
//! (Converse `outputConfig.textFormat`, Anthropic `output_config.format`) and the
//! effort level beside it, validated as Bedrock does; and [`Generator`], which
//! makes up a value conforming to a schema (types, required properties, enums,
//! `const`, nested objects and arrays, `$defs` / `$ref`, `anyOf` / `oneOf` /
//! `allOf`, nullable types, numeric bounds, string lengths and common formats).
//! Answers with a schema and tool inputs are both made by it.

use serde_json::{Map, Number, Value};

use crate::catalog::Model;
use crate::error::SimError;
use crate::reasoning::Effort;

/// What `outputConfig` (or `output_config`) asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputConfig {
    /// The schema the answer's text must follow, parsed.
    pub schema: Option<Value>,
    pub effort: Option<Effort>,
}

fn unsupported_field(field: &str) -> SimError {
    SimError::validation(format!(
        "This model doesn't support the {field} field. Remove {field} and try again."
    ))
}

fn enum_error(value: &Value, field: &str, allowed: &str) -> SimError {
    SimError::validation(format!(
        "1 validation error detected: Value '{}' at '{field}' failed to satisfy constraint: Member must satisfy enum value set: [{allowed}]",
        value.as_str().map_or_else(|| value.to_string(), str::to_owned)
    ))
}

fn effort(value: &Value, field: &str, model: &Model) -> Result<Option<Effort>, SimError> {
    if value.is_null() {
        return Ok(None);
    }
    if !model.effort {
        return Err(unsupported_field(field));
    }
    value
        .as_str()
        .and_then(Effort::parse)
        .map(Some)
        .ok_or_else(|| enum_error(value, field, Effort::NAMES))
}

/// Reads a Converse `outputConfig`.
pub fn converse_output_config(config: &Value, model: &Model) -> Result<OutputConfig, SimError> {
    if config.is_null() {
        return Ok(OutputConfig::default());
    }
    let effort = effort(&config["effort"], "outputConfig.effort", model)?;
    let format = &config["textFormat"];
    if format.is_null() {
        return Ok(OutputConfig {
            schema: None,
            effort,
        });
    }
    if !model.structured_output {
        return Err(unsupported_field("outputConfig.textFormat"));
    }
    if format["type"] != "json_schema" {
        return Err(enum_error(
            &format["type"],
            "outputConfig.textFormat.type",
            "json_schema",
        ));
    }
    let field = "outputConfig.textFormat.structure.jsonSchema.schema";
    let text = format["structure"]["jsonSchema"]["schema"]
        .as_str()
        .ok_or_else(|| {
            SimError::validation(format!(
                "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
            ))
        })?;
    let schema: Value = serde_json::from_str(text).map_err(|e| {
        SimError::validation(format!(
            "The JSON schema in {field} is not valid JSON: {e}. Check the schema and try again."
        ))
    })?;
    check_schema(&schema).map_err(|e| {
        SimError::validation(format!(
            "The JSON schema in {field} is not supported: {e}. Check the schema and try again."
        ))
    })?;
    Ok(OutputConfig {
        schema: Some(schema),
        effort,
    })
}

/// Reads an Anthropic Messages `output_config` (`format` and `effort`).
pub fn anthropic_output_config(config: &Value, model: &Model) -> Result<OutputConfig, SimError> {
    let Some(obj) = config.as_object() else {
        return Err(SimError::malformed(
            "#/output_config: expected type: JSONObject",
        ));
    };
    if let Some(extra) = obj
        .keys()
        .find(|k| !["format", "effort"].contains(&k.as_str()))
    {
        return Err(SimError::malformed(format!(
            "#/output_config: extraneous key [{extra}] is not permitted"
        )));
    }
    let effort = effort(&config["effort"], "output_config.effort", model)?;
    let format = &config["format"];
    if format.is_null() {
        return Ok(OutputConfig {
            schema: None,
            effort,
        });
    }
    if !model.structured_output {
        return Err(SimError::malformed(
            "#/output_config: extraneous key [format] is not permitted",
        ));
    }
    if format["type"] != "json_schema" {
        return Err(SimError::validation(
            "output_config.format.type: Input should be 'json_schema'",
        ));
    }
    let schema = format["schema"].clone();
    if !schema.is_object() {
        return Err(SimError::validation(
            "output_config.format.schema: Input should be a valid dictionary",
        ));
    }
    check_schema(&schema)
        .map_err(|e| SimError::validation(format!("output_config.format.schema: {e}")))?;
    Ok(OutputConfig {
        schema: Some(schema),
        effort,
    })
}

const TYPES: [&str; 7] = [
    "string", "number", "integer", "boolean", "array", "object", "null",
];

/// Checks what a generator needs: the root is an object, every `type` is a JSON
/// Schema type, and every `$ref` resolves inside the document.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    if !schema.is_object() {
        return Err("the schema must be a JSON object".into());
    }
    check_node(schema, schema, 0)
}

fn check_node(root: &Value, node: &Value, depth: usize) -> Result<(), String> {
    if depth > 64 {
        return Err("the schema is nested too deeply".into());
    }
    match node {
        Value::Object(obj) => {
            if let Some(r) = obj.get("$ref") {
                let r = r.as_str().ok_or("a $ref must be a string")?;
                if resolve(root, r).is_none() {
                    return Err(format!("the reference {r} does not resolve"));
                }
            }
            match obj.get("type") {
                None => {}
                Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
                Some(Value::Array(ts))
                    if !ts.is_empty()
                        && ts
                            .iter()
                            .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t))) => {}
                Some(other) => return Err(format!("unknown type {other}")),
            }
            for (key, value) in obj {
                // `const`, `enum`, `default` and `examples` hold data, not schemas.
                if matches!(key.as_str(), "const" | "enum" | "default" | "examples") {
                    continue;
                }
                check_node(root, value, depth + 1)?;
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_node(root, v, depth + 1)),
        _ => Ok(()),
    }
}

/// Resolves a local reference (`#`, `#/$defs/Name`, `#/definitions/Name`).
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

/// Nesting beyond which optional content (array items above `minItems`) is left
/// out, so recursive schemas end.
const SOFT_DEPTH: usize = 6;
/// Nesting at which generation gives up (a schema that requires infinite depth).
const HARD_DEPTH: usize = 48;

/// Makes up values that conform to a schema, from a seeded generator.
pub struct Generator<'a> {
    root: &'a Value,
    rng: &'a mut fastrand::Rng,
    words: &'a [&'a str],
}

impl<'a> Generator<'a> {
    /// A generator for `root` (the schema `$ref`s resolve against) that draws
    /// string content from `words`.
    pub fn new(root: &'a Value, rng: &'a mut fastrand::Rng, words: &'a [&'a str]) -> Self {
        Generator { root, rng, words }
    }

    /// A value conforming to the root schema.
    pub fn generate(&mut self) -> Value {
        let root = self.root;
        self.value(root, 0)
    }

    fn word(&mut self) -> &'a str {
        match self.words.len() {
            0 => "value",
            n => self.words[self.rng.usize(..n)],
        }
    }

    fn value(&mut self, schema: &Value, depth: usize) -> Value {
        if depth > HARD_DEPTH {
            return Value::Null;
        }
        let obj = match schema {
            Value::Object(obj) => obj,
            Value::Bool(false) => return Value::Null,
            _ => return Value::from(self.word()),
        };
        if let Some(target) = obj
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| resolve(self.root, r))
        {
            return self.value(target, depth + 1);
        }
        if let Some(c) = obj.get("const") {
            return c.clone();
        }
        if let Some(first) = obj
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            return first.clone();
        }
        if let Some(parts) = obj.get("allOf").and_then(Value::as_array) {
            let merged = self.merge(obj, parts);
            return self.value(&merged, depth + 1);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branch) = obj
                .get(key)
                .and_then(Value::as_array)
                .and_then(|b| self.informative_branch(b))
            {
                return self.value(branch, depth + 1);
            }
        }
        match self.type_of(obj) {
            "string" => self.string(obj),
            "integer" => self.integer(obj),
            "number" => self.number(obj),
            "boolean" => Value::from(self.rng.bool()),
            "array" => self.array(obj, depth),
            "object" => self.object(obj, depth),
            _ => Value::Null,
        }
    }

    /// The first branch that is not just `null` (pydantic's `Optional[X]` is
    /// `anyOf: [X, {type: null}]`; the answer is more useful with an X).
    fn informative_branch<'b>(&self, branches: &'b [Value]) -> Option<&'b Value> {
        let is_null = |b: &Value| {
            let b = b
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| resolve(self.root, r))
                .unwrap_or(b);
            b["type"] == "null"
        };
        branches
            .iter()
            .find(|b| !is_null(b))
            .or_else(|| branches.first())
    }

    /// `allOf` folded into one schema: properties and required lists united, other
    /// keywords taken from the first part that has them.
    fn merge(&self, base: &Map<String, Value>, parts: &[Value]) -> Value {
        let mut out = base.clone();
        out.remove("allOf");
        let mut properties = out
            .remove("properties")
            .and_then(|p| p.as_object().cloned())
            .unwrap_or_default();
        let mut required: Vec<Value> = out
            .remove("required")
            .and_then(|r| r.as_array().cloned())
            .unwrap_or_default();
        for part in parts {
            let part = part
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| resolve(self.root, r))
                .unwrap_or(part);
            let Some(part) = part.as_object() else {
                continue;
            };
            for (key, value) in part {
                match key.as_str() {
                    "properties" => {
                        for (name, schema) in value.as_object().into_iter().flatten() {
                            properties.entry(name.clone()).or_insert(schema.clone());
                        }
                    }
                    "required" => {
                        for name in value.as_array().into_iter().flatten() {
                            if !required.contains(name) {
                                required.push(name.clone());
                            }
                        }
                    }
                    _ => {
                        out.entry(key.clone()).or_insert(value.clone());
                    }
                }
            }
        }
        if !properties.is_empty() {
            out.insert("properties".into(), Value::Object(properties));
        }
        if !required.is_empty() {
            out.insert("required".into(), Value::Array(required));
        }
        Value::Object(out)
    }

    fn type_of(&self, obj: &Map<String, Value>) -> &'static str {
        let named = match obj.get("type") {
            Some(Value::String(t)) => Some(t.as_str()),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .or(Some("null")),
            _ => None,
        };
        if let Some(t) = named.and_then(|t| TYPES.iter().find(|k| **k == t)) {
            return t;
        }
        if obj.contains_key("properties") || obj.contains_key("additionalProperties") {
            "object"
        } else if obj.contains_key("items") || obj.contains_key("prefixItems") {
            "array"
        } else {
            "string"
        }
    }

    fn string(&mut self, obj: &Map<String, Value>) -> Value {
        let n = self.rng.u32(1..200);
        let formatted = match obj.get("format").and_then(Value::as_str) {
            Some("date-time") => Some(format!(
                "2025-{:02}-{:02}T{:02}:{:02}:00Z",
                n % 12 + 1,
                n % 28 + 1,
                n % 24,
                n % 60
            )),
            Some("date") => Some(format!("2025-{:02}-{:02}", n % 12 + 1, n % 28 + 1)),
            Some("time") => Some(format!("{:02}:{:02}:00Z", n % 24, n % 60)),
            Some("email") => Some(format!("{}@example.com", self.word())),
            Some("uri" | "url" | "iri" | "uri-reference") => {
                Some(format!("https://example.com/{}", self.word()))
            }
            Some("hostname") => Some(format!("{}.example.com", self.word())),
            Some("ipv4") => Some(format!("192.0.2.{n}")),
            Some("ipv6") => Some(format!("2001:db8::{n:x}")),
            Some("uuid") => {
                let a = self.rng.u64(..);
                let b = self.rng.u64(..);
                Some(format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    b >> 52,
                    b & 0xffff_ffff_ffff
                ))
            }
            Some("duration") => Some(format!("P{}D", n % 30 + 1)),
            _ => None,
        };
        if let Some(s) = formatted {
            return Value::from(s);
        }
        let min = usize_of(obj.get("minLength")).unwrap_or(0);
        let max = usize_of(obj.get("maxLength"))
            .unwrap_or(usize::MAX)
            .max(min);
        let mut s = self.word().to_owned();
        while s.chars().count() < min {
            s.push(' ');
            s.push_str(self.word());
        }
        if s.chars().count() > max {
            s = s.chars().take(max).collect();
        }
        Value::from(s)
    }

    /// The closed range `[low, high]` an integer or number may take.
    fn bounds(&self, obj: &Map<String, Value>, step: f64) -> (f64, f64) {
        let f = |k: &str| obj.get(k).and_then(Value::as_f64);
        let low = f("minimum").or(f("exclusiveMinimum").map(|m| m + step));
        let high = f("maximum").or(f("exclusiveMaximum").map(|m| m - step));
        match (low, high) {
            (Some(l), Some(h)) => (l, h.max(l)),
            (Some(l), None) => (l, l + 99.0),
            (None, Some(h)) => ((h - 99.0).min(h.min(1.0)), h),
            (None, None) => (1.0, 99.0),
        }
    }

    fn integer(&mut self, obj: &Map<String, Value>) -> Value {
        let (low, high) = self.bounds(obj, 1.0);
        let (low, high) = (low.ceil() as i64, high.floor() as i64);
        let high = high.max(low);
        let step = obj
            .get("multipleOf")
            .and_then(Value::as_f64)
            .filter(|m| *m >= 1.0 && m.fract() == 0.0)
            .map_or(1, |m| m as i64);
        let first = low.div_euclid(step) * step + if low.rem_euclid(step) == 0 { 0 } else { step };
        let count = if first > high {
            0
        } else {
            (high - first) / step
        };
        let v = first + self.rng.i64(0..=count) * step;
        Value::from(v)
    }

    fn number(&mut self, obj: &Map<String, Value>) -> Value {
        if obj
            .get("multipleOf")
            .and_then(Value::as_f64)
            .is_some_and(|m| m >= 1.0 && m.fract() == 0.0)
        {
            return self.integer(obj);
        }
        let (low, high) = self.bounds(obj, 0.01);
        let v = low + (high - low) * self.rng.f64();
        let rounded = (v * 100.0).round() / 100.0;
        let v = if rounded >= low && rounded <= high {
            rounded
        } else {
            v
        };
        Number::from_f64(v).map_or(Value::from(0), Value::Number)
    }

    fn array(&mut self, obj: &Map<String, Value>, depth: usize) -> Value {
        let prefix = obj
            .get("prefixItems")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let min = usize_of(obj.get("minItems")).unwrap_or(0);
        let max = usize_of(obj.get("maxItems")).unwrap_or(usize::MAX);
        let items = obj.get("items").filter(|i| **i != Value::Bool(false));
        let wanted = if depth >= SOFT_DEPTH {
            min
        } else {
            min.max(prefix.len()).max(1)
        };
        let mut count = wanted.min(max);
        if items.is_none() {
            count = count.min(prefix.len()).max(min.min(prefix.len()));
        }
        let unique = obj.get("uniqueItems") == Some(&Value::Bool(true));
        let mut out: Vec<Value> = Vec::with_capacity(count);
        for i in 0..count {
            let schema = prefix.get(i).or(items);
            let Some(schema) = schema else { break };
            if unique {
                if let Some(values) = schema.get("enum").and_then(Value::as_array) {
                    if let Some(v) = values.iter().find(|v| !out.contains(v)) {
                        out.push(v.clone());
                    }
                    continue;
                }
            }
            let mut v = self.value(schema, depth + 1);
            let mut tries = 0;
            while unique && out.contains(&v) && tries < 8 {
                v = self.value(schema, depth + 1);
                tries += 1;
            }
            if unique && out.contains(&v) {
                continue;
            }
            out.push(v);
        }
        Value::Array(out)
    }

    fn object(&mut self, obj: &Map<String, Value>, depth: usize) -> Value {
        let mut out = Map::new();
        let empty = Map::new();
        let props = obj
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let extra = obj
            .get("additionalProperties")
            .filter(|v| v.is_object())
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        // Without `required`, every declared property is given: a caller who
        // lists properties wants to see them.
        let required: Vec<String> = match obj.get("required").and_then(Value::as_array) {
            Some(r) => r
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            None => props.keys().cloned().collect(),
        };
        for name in &required {
            let sub = props.get(name).unwrap_or(&extra);
            let v = self.value(sub, depth + 1);
            out.insert(name.clone(), v);
        }
        let min = usize_of(obj.get("minProperties")).unwrap_or(0);
        for (name, sub) in props {
            if out.len() >= min {
                break;
            }
            if !out.contains_key(name) {
                let v = self.value(sub, depth + 1);
                out.insert(name.clone(), v);
            }
        }
        Value::Object(out)
    }
}

fn usize_of(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WORDS: &[&str] = &["alpha", "beta", "gamma"];

    fn generate(schema: &Value, seed: u64) -> Value {
        let mut rng = fastrand::Rng::with_seed(seed);
        Generator::new(schema, &mut rng, WORDS).generate()
    }

    #[test]
    fn pydantic_defs_refs_and_optionals_are_followed() {
        // What pydantic v2 emits for a model with a nested model, a list of
        // models, an enum, an Optional field and a Literal.
        let schema = json!({
            "$defs": {
                "Address": {"properties": {"city": {"title": "City", "type": "string"},
                    "zip": {"title": "Zip", "type": "string", "minLength": 5, "maxLength": 5}},
                    "required": ["city", "zip"], "title": "Address", "type": "object"},
                "Color": {"enum": ["red", "green"], "title": "Color", "type": "string"}
            },
            "properties": {
                "name": {"title": "Name", "type": "string"},
                "age": {"title": "Age", "type": "integer", "minimum": 18, "maximum": 20},
                "home": {"$ref": "#/$defs/Address"},
                "others": {"items": {"$ref": "#/$defs/Address"}, "title": "Others", "type": "array", "minItems": 2},
                "color": {"$ref": "#/$defs/Color"},
                "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
                "kind": {"const": "person", "type": "string"},
                "score": {"anyOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0, "maximum": 1}]}
            },
            "required": ["name", "age", "home", "others", "color", "kind", "score"],
            "title": "Person", "type": "object"
        });
        check_schema(&schema).unwrap();
        let v = generate(&schema, 3);
        assert!(v["name"].is_string());
        assert!((18..=20).contains(&v["age"].as_i64().unwrap()));
        assert!(v["home"]["city"].is_string());
        assert_eq!(v["home"]["zip"].as_str().unwrap().chars().count(), 5);
        assert_eq!(v["others"].as_array().unwrap().len(), 2);
        assert_eq!(v["color"], "red");
        assert_eq!(v["kind"], "person");
        assert!(v.get("nickname").is_none(), "optional fields are left out");
        let score = v["score"].as_f64().unwrap();
        assert!(score > 0.0 && score <= 1.0, "{score}");
        assert_eq!(v, generate(&schema, 3), "deterministic");
    }

    #[test]
    fn formats_bounds_tuples_and_unique_items() {
        let schema = json!({"type": "object", "properties": {
            "when": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "mail": {"type": "string", "format": "email"},
            "even": {"type": "integer", "multipleOf": 2, "minimum": 3, "maximum": 9},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "maxItems": 2},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 3, "uniqueItems": true},
            "maybe": {"type": ["null", "boolean"]}
        }});
        let v = generate(&schema, 9);
        assert!(v["when"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["id"].as_str().unwrap().len(), 36);
        assert!(v["mail"].as_str().unwrap().contains('@'));
        let even = v["even"].as_i64().unwrap();
        assert!(even % 2 == 0 && (4..=8).contains(&even), "{even}");
        assert!(v["pair"][0].is_i64() && v["pair"][1].is_string());
        assert_eq!(v["tags"], json!(["a", "b", "c"]));
        assert!(v["maybe"].is_boolean());
    }

    #[test]
    fn recursive_schemas_end() {
        let schema = json!({"$defs": {"Node": {"type": "object", "properties": {
            "name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            "required": ["name", "children"]}}, "$ref": "#/$defs/Node"});
        let v = generate(&schema, 1);
        let mut depth = 0;
        let mut node = &v;
        while let Some(child) = node["children"].get(0) {
            node = child;
            depth += 1;
        }
        assert!(depth > 0 && depth < SOFT_DEPTH, "{depth}");
    }

    #[test]
    fn bad_schemas_are_named() {
        assert!(check_schema(&json!({"$ref": "#/$defs/Missing"}))
            .unwrap_err()
            .contains("#/$defs/Missing"));
        assert!(check_schema(&json!({"type": "strin"}))
            .unwrap_err()
            .contains("strin"));
        assert!(check_schema(&json!([1])).is_err());
        assert!(check_schema(&json!({"enum": [{"type": "not-a-type"}]})).is_ok());
    }
}
