//! The JSON types of the top-level members of the OpenAI and Anthropic request
//! bodies, checked before translation: a member of the wrong type
//! (`"stream": "yes"`, `"tools": "x"`) is a 400 naming it, as those APIs answer,
//! never read as absent. `null` counts as absent, as both APIs take it.

use serde_json::{Map, Value};

/// A JSON type a member may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    /// A whole number (`1`, not `1.5`).
    Integer,
    Number,
    Boolean,
    Array,
    Object,
}

impl Kind {
    fn matches(self, value: &Value) -> bool {
        match self {
            Kind::String => value.is_string(),
            Kind::Integer => value.is_i64() || value.is_u64(),
            Kind::Number => value.is_number(),
            Kind::Boolean => value.is_boolean(),
            Kind::Array => value.is_array(),
            Kind::Object => value.is_object(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Integer => "an integer",
            Kind::Number => "a number",
            Kind::Boolean => "a boolean",
            Kind::Array => "an array",
            Kind::Object => "an object",
        }
    }
}

/// What a JSON value is, in words.
pub fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks each member `table` names against its allowed types; members the
/// table does not name are left to the translator. The error is `invalid`'s,
/// given the member's name and what is wrong.
pub fn check<E>(
    body: &Map<String, Value>,
    table: &[(&str, &[Kind])],
    invalid: impl Fn(&str, String) -> E,
) -> Result<(), E> {
    for (name, kinds) in table {
        let Some(value) = body.get(*name).filter(|v| !v.is_null()) else {
            continue;
        };
        if !kinds.iter().any(|k| k.matches(value)) {
            let expected: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            return Err(invalid(
                name,
                format!(
                    "expected {}, got {}",
                    expected.join(" or "),
                    describe(value)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TABLE: &[(&str, &[Kind])] = &[
        ("stream", &[Kind::Boolean]),
        ("stop", &[Kind::String, Kind::Array]),
        ("n", &[Kind::Integer]),
    ];

    fn run(body: Value) -> Result<(), String> {
        check(body.as_object().unwrap(), TABLE, |name, what| {
            format!("{name}: {what}")
        })
    }

    #[test]
    fn wrong_types_are_named_and_null_is_absent() {
        assert_eq!(
            run(json!({"stream": "yes"})),
            Err("stream: expected a boolean, got a string".into())
        );
        assert_eq!(
            run(json!({"stop": 1})),
            Err("stop: expected a string or an array, got an integer".into())
        );
        assert_eq!(
            run(json!({"n": 1.5})),
            Err("n: expected an integer, got a number".into())
        );
        assert!(run(json!({"stream": null, "stop": ["x"], "n": 2, "other": "x"})).is_ok());
    }
}
