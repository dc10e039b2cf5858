//! What the OpenAI and Anthropic translators share on the Converse side: the
//! features of the routed model they decide by ([`Features`], from the catalog),
//! and the Converse pieces both build the same way (structured output's text
//! format, document names, a tool history told as text).
//!
//! Pure functions over JSON, like the translators; the shapes of the two APIs
//! stay in their own modules.

use bedrock_wire::catalog::ModelInfo;
use serde_json::{json, Value};

/// What the routed model supports, as the translators need it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// Extended thinking (`thinking` with a budget).
    pub reasoning: bool,
    /// Native structured output (`outputConfig.textFormat`).
    pub structured_output: bool,
    /// `outputConfig.effort`.
    pub effort: bool,
    /// An Anthropic (Claude) model: it takes Anthropic's own request fields in
    /// `additionalModelRequestFields` and reports them in
    /// `additionalModelResponseFields`.
    pub anthropic: bool,
}

impl Features {
    /// The features of `upstream_model`, from its catalog entry when it has
    /// one (a model the catalog does not know gets none but its family).
    pub fn of(upstream_model: &str, info: Option<&ModelInfo>) -> Features {
        let id = info.map_or(upstream_model, |m| m.id.as_str());
        Features {
            reasoning: info.is_some_and(|m| m.reasoning),
            structured_output: info.is_some_and(|m| m.structured_output),
            effort: info.is_some_and(|m| m.effort),
            anthropic: id.starts_with("anthropic.") || id.contains(".anthropic."),
        }
    }
}

/// `outputConfig.textFormat` asking for JSON that conforms to `schema`
/// (Converse takes the schema as a string).
pub fn json_schema_format(schema: &Value, name: Option<&str>, description: Option<&str>) -> Value {
    let mut definition = serde_json::Map::new();
    definition.insert("schema".into(), schema.to_string().into());
    if let Some(name) = name {
        definition.insert("name".into(), name.into());
    }
    if let Some(description) = description {
        definition.insert("description".into(), description.into());
    }
    json!({ "type": "json_schema", "structure": { "jsonSchema": definition } })
}

/// A Converse document name from a client's file name or title: Bedrock takes
/// letters, digits, single spaces, hyphens, parentheses, square brackets and
/// underscores, 1 to 200 of them; anything else becomes a hyphen. Without a
/// usable name, `document N` (N from 1).
pub fn document_name(raw: Option<&str>, index: usize) -> String {
    let raw = raw.unwrap_or("").trim();
    // A file name's extension says the format, which Converse takes apart.
    let raw = match raw.rsplit_once('.') {
        Some((stem, ext))
            if !stem.is_empty()
                && (1..=5).contains(&ext.len())
                && ext.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            stem
        }
        _ => raw,
    };
    let mut name = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || "-()[]_".contains(c) {
            c
        } else if c.is_whitespace() {
            ' '
        } else {
            '-'
        };
        if !(c == ' ' && name.ends_with(' ')) {
            name.push(c);
        }
        if name.len() >= 200 {
            break;
        }
    }
    let name = name.trim().to_owned();
    if name.chars().any(|c| c.is_ascii_alphanumeric()) {
        name
    } else {
        format!("document {}", index + 1)
    }
}

/// The Converse document format of a media type (and, failing that, of a file
/// name's extension); `None` for one Bedrock does not read.
pub fn document_format(media_type: &str, file_name: Option<&str>) -> Option<&'static str> {
    let by_type = match media_type {
        "application/pdf" => Some("pdf"),
        "text/plain" => Some("txt"),
        "text/csv" => Some("csv"),
        "text/html" => Some("html"),
        "text/markdown" => Some("md"),
        "application/msword" => Some("doc"),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => Some("docx"),
        "application/vnd.ms-excel" => Some("xls"),
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => Some("xlsx"),
        _ => None,
    };
    by_type.or_else(|| {
        let ext = file_name?.rsplit_once('.')?.1.to_ascii_lowercase();
        [
            "pdf", "txt", "csv", "html", "md", "doc", "docx", "xls", "xlsx",
        ]
        .into_iter()
        .find(|f| *f == ext)
    })
}

/// Converse refuses `toolUse` and `toolResult` blocks without a `toolConfig`.
/// When a client turns tools off (`tool_choice: none`) in a conversation that
/// used them, the tools are left out, so the model cannot call one, and the
/// history's calls and results are told as text (a result's images and
/// documents follow its text as they are): the model still reads what was
/// called and what came back.
pub fn tool_history_as_text(messages: &mut [Value]) {
    for message in messages {
        let Some(content) = message.get_mut("content").and_then(Value::as_array_mut) else {
            continue;
        };
        let blocks = std::mem::take(content);
        for block in blocks {
            if let Some(tool) = block.get("toolUse") {
                let text = format!(
                    "[called tool {} with {}]",
                    tool["name"].as_str().unwrap_or(""),
                    tool["input"]
                );
                content.push(json!({ "text": text }));
            } else if let Some(result) = block.get("toolResult") {
                let mut parts: Vec<String> = Vec::new();
                let mut attached = Vec::new();
                for part in result["content"].as_array().into_iter().flatten() {
                    if let Some(t) = part.get("text") {
                        parts.push(t.as_str().unwrap_or("").to_owned());
                    } else if let Some(j) = part.get("json") {
                        parts.push(j.to_string());
                    } else {
                        attached.push(part.clone());
                    }
                }
                let failed = if result["status"] == "error" {
                    " (failed)"
                } else {
                    ""
                };
                let text = format!(
                    "[result of tool call {}{failed}: {}]",
                    result["toolUseId"].as_str().unwrap_or(""),
                    parts.join(" ")
                );
                content.push(json!({ "text": text }));
                content.extend(attached);
            } else {
                content.push(block);
            }
        }
    }
}

/// Whether any message holds a `toolUse` or `toolResult` block.
pub fn has_tool_blocks(messages: &[Value]) -> bool {
    messages.iter().any(|m| {
        m["content"].as_array().is_some_and(|c| {
            c.iter()
                .any(|b| b.get("toolUse").is_some() || b.get("toolResult").is_some())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_names_keep_what_bedrock_takes() {
        assert_eq!(
            document_name(Some("Q3 report (final).pdf"), 0),
            "Q3 report (final)"
        );
        assert_eq!(document_name(Some("v1.2 notes.txt"), 0), "v1-2 notes");
        assert_eq!(document_name(Some("a   b\tc"), 0), "a b c");
        assert_eq!(document_name(Some("..."), 2), "document 3");
        assert_eq!(document_name(None, 0), "document 1");
        assert_eq!(document_name(Some(&"x".repeat(300)), 0).len(), 200);
    }

    #[test]
    fn document_formats_by_media_type_then_extension() {
        assert_eq!(document_format("application/pdf", None), Some("pdf"));
        assert_eq!(
            document_format("application/octet-stream", Some("notes.MD")),
            Some("md")
        );
        assert_eq!(document_format("image/png", Some("x.png")), None);
    }

    #[test]
    fn features_come_from_the_catalog() {
        let catalog = bedrock_wire::catalog::Catalog::embedded();
        let of = |id: &str| Features::of(id, catalog.get(id).map(|l| &*l.model));
        let sonnet = of("us.anthropic.claude-sonnet-4-5-20250929-v1:0");
        assert!(sonnet.reasoning && sonnet.structured_output && sonnet.anthropic && !sonnet.effort);
        let haiku35 = of("us.anthropic.claude-3-5-haiku-20241022-v1:0");
        assert!(haiku35.anthropic && !haiku35.reasoning && !haiku35.structured_output);
        assert_eq!(of("us.amazon.nova-pro-v1:0"), Features::default());
        assert!(of("us.anthropic.claude-opus-4-5-20251101-v1:0").effort);
        assert!(of("anthropic.claude-future-v9:0").anthropic, "by family");
    }

    #[test]
    fn a_tool_history_becomes_text() {
        let mut messages = vec![
            json!({"role": "assistant", "content": [{"text": "Let me look."},
                {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}}]}),
            json!({"role": "user", "content": [{"toolResult": {"toolUseId": "t1",
                "content": [{"text": "18C"}, {"json": {"wind": 3}},
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}]}},
                {"text": "Warm?"}]}),
        ];
        assert!(has_tool_blocks(&messages));
        tool_history_as_text(&mut messages);
        assert!(!has_tool_blocks(&messages));
        assert_eq!(
            messages[0]["content"][1]["text"],
            r#"[called tool get_weather with {"city":"Paris"}]"#
        );
        assert_eq!(
            messages[1]["content"],
            json!([{"text": r#"[result of tool call t1: 18C {"wind":3}]"#},
                {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
                {"text": "Warm?"}])
        );
    }
}
