//! Document blocks: Bedrock's checks on them (Converse `document` with its name
//! rules, formats and sources; the Anthropic body's `document`), whether a
//! document asks for citations (refused on models without them), and the
//! citation an answer gives for it: a quoted passage and its location (characters
//! of a text, pages of a PDF, blocks of a content list). Token sizes live in
//! `bedrock_wire::tokens`, shared with the proxy.

use base64::Engine;
use serde_json::{json, Value};

use crate::catalog::Model;
use crate::error::SimError;

/// The formats a Converse document may have.
const FORMATS: [&str; 9] = [
    "pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md",
];
/// Longest quote a citation carries, in characters.
const MAX_QUOTE_CHARS: usize = 300;

const NAME_RULES: &str = "The document file name can only contain alphanumeric characters, whitespace characters, hyphens, parentheses, and square brackets. The name can't contain more than one consecutive whitespace character. Check that the file name conforms to these restrictions and retry your request.";

/// A document's content as a citation can point into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Plain text: citations give character ranges.
    Text(String),
    /// A PDF: citations give pages; `text` is what could be read from page one.
    Pdf { text: String },
    /// A list of text blocks: citations give block ranges.
    Chunks(Vec<String>),
}

/// A document whose answer may cite it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citable {
    /// Its position among all documents of the request.
    pub index: u32,
    pub title: String,
    pub content: Content,
}

/// Where a cited passage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Characters `start..end`.
    Chars { start: usize, end: usize },
    /// Pages `start..end`, from 1.
    Pages { start: u32, end: u32 },
    /// Content blocks `start..end`.
    Chunks { start: usize, end: usize },
}

/// One citation of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citation {
    pub document_index: u32,
    pub title: String,
    /// The cited passage (empty when a PDF's text could not be read).
    pub quote: String,
    pub location: Location,
}

impl Citation {
    /// The Converse `Citation` (and `CitationsDelta`) object.
    pub fn converse_json(&self) -> Value {
        let doc = self.document_index;
        let location = match self.location {
            Location::Chars { start, end } => {
                json!({"documentChar": {"documentIndex": doc, "start": start, "end": end}})
            }
            Location::Pages { start, end } => {
                json!({"documentPage": {"documentIndex": doc, "start": start, "end": end}})
            }
            Location::Chunks { start, end } => {
                json!({"documentChunk": {"documentIndex": doc, "start": start, "end": end}})
            }
        };
        let source_content = if self.quote.is_empty() {
            json!([])
        } else {
            json!([{"text": self.quote}])
        };
        json!({"title": self.title, "sourceContent": source_content, "location": location})
    }

    /// The Anthropic Messages citation object.
    pub fn anthropic_json(&self) -> Value {
        let mut v = json!({
            "cited_text": self.quote,
            "document_index": self.document_index,
            "document_title": self.title,
        });
        let extra = match self.location {
            Location::Chars { start, end } => json!({"type": "char_location",
                "start_char_index": start, "end_char_index": end}),
            Location::Pages { start, end } => json!({"type": "page_location",
                "start_page_number": start, "end_page_number": end}),
            Location::Chunks { start, end } => json!({"type": "content_block_location",
                "start_block_index": start, "end_block_index": end}),
        };
        if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            obj.extend(extra.clone());
        }
        v
    }
}

/// The passage an answer cites from `doc`: its first sentence.
pub fn cite(doc: &Citable) -> Citation {
    let (quote, location) = match &doc.content {
        Content::Text(text) => {
            let (quote, start) = first_sentence(text);
            let end = start + quote.chars().count();
            (quote, Location::Chars { start, end })
        }
        Content::Pdf { text } => (first_sentence(text).0, Location::Pages { start: 1, end: 2 }),
        Content::Chunks(chunks) => (
            chunks
                .first()
                .map(|c| first_sentence(c).0)
                .unwrap_or_default(),
            Location::Chunks { start: 0, end: 1 },
        ),
    };
    Citation {
        document_index: doc.index,
        title: doc.title.clone(),
        quote,
        location,
    }
}

/// The first sentence of a text (at most [`MAX_QUOTE_CHARS`]), and the character
/// offset where it starts.
fn first_sentence(text: &str) -> (String, usize) {
    let start = text.chars().take_while(|c| c.is_whitespace()).count();
    let mut quote = String::new();
    for c in text.chars().skip(start).take(MAX_QUOTE_CHARS) {
        if c == '\n' && !quote.is_empty() {
            break;
        }
        quote.push(c);
        if matches!(c, '.' | '!' | '?') {
            break;
        }
    }
    (quote.trim_end().to_owned(), start)
}

/// The text of a PDF's uncompressed content streams: its literal strings, less
/// those that are dictionary values (`/Title (...)`), as far as it can be read
/// without a PDF library.
pub fn pdf_text(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'(' {
            i += 1;
            continue;
        }
        let mut s = Vec::new();
        let mut j = i + 1;
        let mut depth = 1;
        while j < bytes.len() {
            match bytes[j] {
                b'\\' if j + 1 < bytes.len() => {
                    s.push(bytes[j + 1]);
                    j += 2;
                    continue;
                }
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            s.push(bytes[j]);
            j += 1;
        }
        let printable = s
            .iter()
            .all(|b| b.is_ascii() && (!b.is_ascii_control() || *b == b' '));
        if printable && !s.is_empty() && !after_name(&bytes[..i]) {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
            out.push_str(&String::from_utf8_lossy(&s));
        }
        i = j + 1;
    }
    out
}

/// Whether the token before a string is a name (`/Title`), making the string a
/// dictionary value rather than shown text.
fn after_name(before: &[u8]) -> bool {
    let trimmed = before.trim_ascii_end();
    let token_start = trimmed
        .iter()
        .rposition(|b| b.is_ascii_whitespace() || b"[]()<>{}".contains(b))
        .map_or(0, |p| p + 1);
    trimmed.get(token_start) == Some(&b'/')
}

fn valid_name(name: &str) -> bool {
    let mut previous_space = false;
    for c in name.chars() {
        let space = c == ' ';
        if space && previous_space {
            return false;
        }
        if !(c.is_ascii_alphanumeric() || space || "-()[]_".contains(c)) {
            return false;
        }
        previous_space = space;
    }
    true
}

fn not_null(path: &str) -> SimError {
    SimError::validation(format!(
        "1 validation error detected: Value null at '{path}' failed to satisfy constraint: Member must not be null"
    ))
}

fn citations_enabled(config: &Value, model: &Model, field: &str) -> Result<bool, SimError> {
    let enabled = config["enabled"].as_bool().unwrap_or(false);
    if enabled && !model.citations {
        return Err(SimError::validation(format!(
            "This model doesn't support the {field} field. Remove {field} and try again."
        )));
    }
    Ok(enabled)
}

fn decode(data: &Value, what: &str) -> Result<Vec<u8>, SimError> {
    data.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            SimError::validation(format!(
                "The document bytes at {what} must be non-empty and base64-encoded."
            ))
        })
}

/// Checks a Converse `document` block (message `i`, block `j`); the document is
/// the `index`-th of the request. Returns it when it asks for citations.
pub fn converse_document(
    doc: &Value,
    i: usize,
    j: usize,
    index: u32,
    model: &Model,
) -> Result<Option<Citable>, SimError> {
    let path = format!("messages.{i}.member.content.{j}.member.document");
    let name = doc["name"]
        .as_str()
        .ok_or_else(|| not_null(&format!("{path}.name")))?;
    let length = name.chars().count();
    if !(1..=200).contains(&length) {
        return Err(SimError::validation(format!(
            "1 validation error detected: Value '{name}' at '{path}.name' failed to satisfy constraint: Member must have length between 1 and 200"
        )));
    }
    if !valid_name(name) {
        return Err(SimError::validation(NAME_RULES));
    }
    let format = &doc["format"];
    if !format.is_null() && !format.as_str().is_some_and(|f| FORMATS.contains(&f)) {
        return Err(SimError::validation(format!(
            "1 validation error detected: Value '{}' at '{path}.format' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
            format.as_str().map_or_else(|| format.to_string(), str::to_owned),
            FORMATS.join(", ")
        )));
    }
    let source = &doc["source"];
    let content = if let Some(bytes) = source.get("bytes") {
        let raw = decode(bytes, &format!("{path}.source.bytes"))?;
        if format == "pdf" {
            Content::Pdf {
                text: pdf_text(&raw),
            }
        } else {
            Content::Text(String::from_utf8_lossy(&raw).into_owned())
        }
    } else if let Some(text) = source.get("text") {
        Content::Text(text.as_str().unwrap_or("").to_owned())
    } else if let Some(blocks) = source.get("content").and_then(Value::as_array) {
        Content::Chunks(
            blocks
                .iter()
                .map(|b| b["text"].as_str().unwrap_or("").to_owned())
                .collect(),
        )
    } else if source.get("s3Location").is_some() {
        return Err(SimError::validation(format!(
            "bedrock-sim cannot read documents from Amazon S3 ({path}.source.s3Location); send the document's bytes instead."
        )));
    } else {
        return Err(not_null(&format!("{path}.source")));
    };
    let field = format!("messages.{i}.content.{j}.document.citations");
    if !citations_enabled(&doc["citations"], model, &field)? {
        return Ok(None);
    }
    Ok(Some(Citable {
        index,
        title: name.to_owned(),
        content,
    }))
}

/// Checks an Anthropic Messages `document` block (message `i`, block `j`); the
/// document is the `index`-th of the request. Returns it when it asks for
/// citations.
pub fn anthropic_document(
    block: &Value,
    i: usize,
    j: usize,
    index: u32,
    model: &Model,
) -> Result<Option<Citable>, SimError> {
    let path = format!("messages.{i}.content.{j}.document");
    let source = &block["source"];
    let content = match source["type"].as_str() {
        Some("base64") => {
            let raw = decode(&source["data"], &format!("{path}.source.data"))?;
            match source["media_type"].as_str() {
                Some("application/pdf") => Content::Pdf {
                    text: pdf_text(&raw),
                },
                Some("text/plain") => Content::Text(String::from_utf8_lossy(&raw).into_owned()),
                _ => {
                    return Err(SimError::validation(format!(
                        "{path}.source.base64.media_type: Input should be 'application/pdf' or 'text/plain'"
                    )))
                }
            }
        }
        Some("text") => Content::Text(source["data"].as_str().unwrap_or("").to_owned()),
        Some("content") => Content::Chunks(match &source["content"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(blocks) => blocks
                .iter()
                .map(|b| b["text"].as_str().unwrap_or("").to_owned())
                .collect(),
            _ => Vec::new(),
        }),
        None if source.is_null() => {
            return Err(SimError::validation(format!("{path}.source: Field required")))
        }
        other => {
            return Err(SimError::validation(format!(
                "{path}.source: Input tag '{}' found using 'type' does not match any of the expected tags: 'base64', 'content', 'text'",
                other.unwrap_or("")
            )))
        }
    };
    if !citations_enabled(&block["citations"], model, &format!("{path}.citations"))? {
        return Ok(None);
    }
    Ok(Some(Citable {
        index,
        title: block["title"].as_str().unwrap_or("").to_owned(),
        content,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn model(id: &str) -> std::sync::Arc<Model> {
        Catalog::embedded().resolve(id).unwrap().model
    }

    #[test]
    fn names_follow_bedrocks_rules() {
        for ok in ["report", "Q3 report (final) [v2]", "notes_2024-01"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["report.pdf", "two  spaces", "tab\there", "résumé", "a/b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let m = model("us.anthropic.claude-3-5-haiku-20241022-v1:0");
        let doc = json!({"format": "txt", "name": "cv.txt", "source": {"text": "x"}});
        assert_eq!(
            converse_document(&doc, 0, 1, 0, &m).unwrap_err().message,
            NAME_RULES
        );
        let nameless = json!({"format": "txt", "source": {"text": "x"}});
        assert!(converse_document(&nameless, 0, 1, 0, &m)
            .unwrap_err()
            .message
            .contains("messages.0.member.content.1.member.document.name"));
    }

    #[test]
    fn citations_need_a_model_that_has_them() {
        let doc = json!({"format": "txt", "name": "facts", "source": {"text": "Water boils at 100 C. It freezes at 0 C."},
            "citations": {"enabled": true}});
        let claude = model("us.anthropic.claude-3-5-haiku-20241022-v1:0");
        let cited = converse_document(&doc, 0, 0, 2, &claude).unwrap().unwrap();
        let c = cite(&cited);
        assert_eq!(c.quote, "Water boils at 100 C.");
        assert_eq!(c.location, Location::Chars { start: 0, end: 21 });
        assert_eq!(
            c.converse_json()["location"]["documentChar"]["documentIndex"],
            2
        );
        let nova = model("us.amazon.nova-pro-v1:0");
        assert!(converse_document(&doc, 0, 0, 0, &nova)
            .unwrap_err()
            .message
            .contains("citations"));
    }

    #[test]
    fn pdf_text_is_read_from_text_operators() {
        let pdf = b"<< /Title (Quarterly) >> BT /F1 12 Tf 72 712 Td (Revenue grew \\(a lot\\) in 2024.) Tj ET [(Next) -250 (page)] TJ";
        assert_eq!(pdf_text(pdf), "Revenue grew (a lot) in 2024. Next page");
    }
}
