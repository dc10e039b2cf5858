//! The token estimator: how the simulator bills input and how the proxy sizes
//! prefixes before it has seen a bill.
//!
//! Real tokenizers differ by model; this one is documented, cheap and consistent:
//! - text: one token per 4 bytes of UTF-8, rounded up (English averages about 4
//!   characters per token in Claude's and Llama's tokenizers);
//! - JSON (tool specs, tool inputs, JSON tool results): the text rule over the
//!   compact JSON;
//! - an image: 1,600 tokens (Claude's cost for a ~1.15 megapixel image);
//! - a document: its name (title) and context by the text rule, plus its content:
//!   a PDF 1,500 tokens per page (pages counted from its `/Type /Page` objects,
//!   else one per started 50 KB), other bytes (txt, md, html, csv, docx...) the
//!   text rule over the decoded bytes, a text or content source the text rule;
//! - reasoning sent back: its text by the text rule, redacted reasoning by the
//!   text rule over its encoded form;
//! - each message: 3 tokens of framing; cache markers: nothing.
//!
//! The simulator's `CountTokens` and `usage` use exactly these numbers, so the
//! proxy's estimate of a prefix matches what the simulator will bill for it.

use serde_json::Value;

/// Framing tokens per message.
pub const MESSAGE_OVERHEAD: u32 = 3;
/// Tokens billed per image.
pub const IMAGE_TOKENS: u32 = 1_600;
/// Tokens billed per PDF page (Claude reads each page as text and as an image).
pub const PDF_PAGE_TOKENS: u32 = 1_500;
/// Bytes per page assumed for a PDF whose pages cannot be counted.
const PDF_BYTES_PER_PAGE: usize = 50_000;

/// Tokens of a text.
pub fn text(s: &str) -> u32 {
    u32::try_from(s.len().div_ceil(4)).unwrap_or(u32::MAX)
}

/// Tokens of a JSON value, by the text rule over its compact form.
pub fn json(v: &Value) -> u32 {
    match v {
        Value::String(s) => text(s),
        other => text(&other.to_string()),
    }
}

fn base64_decoded_tokens(v: &Value) -> u32 {
    let encoded = v.as_str().unwrap_or("");
    let padding = encoded.bytes().rev().take_while(|&b| b == b'=').count();
    let decoded = (encoded.len() / 4 * 3).saturating_sub(padding);
    u32::try_from(decoded.div_ceil(4)).unwrap_or(u32::MAX)
}

/// The pages of a PDF: its `/Type /Page` objects (not `/Pages`, the page tree),
/// or one per started 50 KB when it has none that can be read (a compressed
/// object stream).
pub fn pdf_pages(bytes: &[u8]) -> u32 {
    let mut pages = 0u32;
    let mut i = 0;
    while let Some(at) = find(&bytes[i..], b"/Type") {
        let mut j = i + at + b"/Type".len();
        while bytes.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        if bytes[j..].starts_with(b"/Page") && bytes.get(j + 5) != Some(&b's') {
            pages = pages.saturating_add(1);
        }
        i = j;
    }
    if pages > 0 {
        return pages;
    }
    u32::try_from(bytes.len().div_ceil(PDF_BYTES_PER_PAGE).max(1)).unwrap_or(u32::MAX)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn base64_bytes(v: &Value) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str()?)
        .ok()
}

fn pdf_tokens(data: &Value) -> u32 {
    base64_bytes(data).map_or(0, |b| pdf_pages(&b).saturating_mul(PDF_PAGE_TOKENS))
}

/// Tokens of a Converse `document` block.
pub fn converse_document(doc: &Value) -> u32 {
    let source = &doc["source"];
    let content = if let Some(bytes) = source.get("bytes") {
        if doc["format"] == "pdf" {
            pdf_tokens(bytes)
        } else {
            base64_decoded_tokens(bytes)
        }
    } else if let Some(t) = source.get("text") {
        json(t)
    } else if let Some(blocks) = source.get("content").and_then(Value::as_array) {
        blocks.iter().map(|b| json(&b["text"])).sum()
    } else {
        0
    };
    content
        .saturating_add(text(doc["name"].as_str().unwrap_or("")))
        .saturating_add(text(doc["context"].as_str().unwrap_or("")))
}

/// Tokens of an Anthropic Messages `document` block.
pub fn anthropic_document(block: &Value) -> u32 {
    let source = &block["source"];
    let content = match source["type"].as_str() {
        Some("base64") if source["media_type"] == "application/pdf" => pdf_tokens(&source["data"]),
        Some("base64") => base64_decoded_tokens(&source["data"]),
        Some("text") => json(&source["data"]),
        Some("content") => match &source["content"] {
            Value::String(s) => text(s),
            Value::Array(blocks) => blocks.iter().map(|b| json(&b["text"])).sum(),
            _ => 0,
        },
        _ => 0,
    };
    content
        .saturating_add(text(block["title"].as_str().unwrap_or("")))
        .saturating_add(text(block["context"].as_str().unwrap_or("")))
}

/// Tokens of one Converse content block (message content or a system block).
pub fn converse_block(block: &Value) -> u32 {
    let Some(obj) = block.as_object() else {
        return json(block);
    };
    if let Some(t) = obj.get("text") {
        return json(t);
    }
    if obj.contains_key("cachePoint") {
        return 0;
    }
    if obj.contains_key("image") {
        return IMAGE_TOKENS;
    }
    if let Some(doc) = obj.get("document") {
        return converse_document(doc);
    }
    if let Some(tool_use) = obj.get("toolUse") {
        return json(&tool_use["name"]) + json(&tool_use["input"]);
    }
    if let Some(result) = obj.get("toolResult") {
        return result["content"]
            .as_array()
            .map_or(0, |blocks| blocks.iter().map(converse_block).sum());
    }
    if let Some(json_block) = obj.get("json") {
        return json(json_block);
    }
    if let Some(reasoning) = obj.get("reasoningContent") {
        return match reasoning.get("redactedContent") {
            Some(redacted) => json(redacted),
            None => json(&reasoning["reasoningText"]["text"]),
        };
    }
    if let Some(guard) = obj.get("guardContent") {
        return json(&guard["text"]["text"]);
    }
    json(block)
}

/// Tokens of one entry of `toolConfig.tools`.
pub fn converse_tool(tool: &Value) -> u32 {
    match tool.get("toolSpec") {
        Some(spec) => json(spec),
        None if tool.get("cachePoint").is_some() => 0,
        None => json(tool),
    }
}

/// Tokens of a message's content (its framing included).
pub fn converse_message(message: &Value) -> u32 {
    MESSAGE_OVERHEAD
        + message["content"]
            .as_array()
            .map_or(0, |blocks| blocks.iter().map(converse_block).sum())
}

fn sum_array(v: &Value, f: fn(&Value) -> u32) -> u32 {
    v.as_array().map_or(0, |items| items.iter().map(f).sum())
}

/// Input tokens of a Converse request: tools, system and messages.
pub fn converse_request(body: &Value) -> u32 {
    sum_array(&body["toolConfig"]["tools"], converse_tool)
        + sum_array(&body["system"], converse_block)
        + sum_array(&body["messages"], converse_message)
}

/// Tokens of one Anthropic Messages content block.
pub fn anthropic_block(block: &Value) -> u32 {
    if let Some(s) = block.as_str() {
        return text(s);
    }
    match block["type"].as_str() {
        Some("text") => json(&block["text"]),
        Some("image") => IMAGE_TOKENS,
        Some("document") => anthropic_document(block),
        Some("tool_use") => json(&block["name"]) + json(&block["input"]),
        Some("tool_result") => anthropic_content(&block["content"]),
        Some("thinking") => json(&block["thinking"]),
        Some("redacted_thinking") => json(&block["data"]),
        _ => {
            let mut copy = block.clone();
            if let Some(obj) = copy.as_object_mut() {
                obj.remove("cache_control");
            }
            json(&copy)
        }
    }
}

/// Tokens of Anthropic content: a string or a list of blocks.
pub fn anthropic_content(content: &Value) -> u32 {
    match content {
        Value::String(s) => text(s),
        Value::Array(blocks) => blocks.iter().map(anthropic_block).sum(),
        Value::Null => 0,
        other => json(other),
    }
}

/// Tokens of one Anthropic tool definition (its cache marker excluded).
pub fn anthropic_tool(tool: &Value) -> u32 {
    json(&tool["name"]) + json(&tool["description"]) + json(&tool["input_schema"])
}

/// Tokens of an Anthropic message (its framing included).
pub fn anthropic_message(message: &Value) -> u32 {
    MESSAGE_OVERHEAD + anthropic_content(&message["content"])
}

/// Input tokens of an Anthropic Messages body: tools, system and messages.
pub fn anthropic_request(body: &Value) -> u32 {
    sum_array(&body["tools"], anthropic_tool)
        + anthropic_content(&body["system"])
        + sum_array(&body["messages"], anthropic_message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_is_a_token_per_four_bytes_rounded_up() {
        assert_eq!(text(""), 0);
        assert_eq!(text("abc"), 1);
        assert_eq!(text("abcd"), 1);
        assert_eq!(text("abcde"), 2);
    }

    #[test]
    fn markers_cost_nothing_and_messages_carry_framing() {
        let plain = json!({"system": [{"text": "abcdefgh"}],
            "messages": [{"role": "user", "content": [{"text": "abcd"}]}]});
        let marked = json!({"system": [{"text": "abcdefgh"}, {"cachePoint": {"type": "default"}}],
            "messages": [{"role": "user", "content": [{"text": "abcd"}, {"cachePoint": {"type": "default"}}]}]});
        assert_eq!(converse_request(&plain), 2 + MESSAGE_OVERHEAD + 1);
        assert_eq!(converse_request(&plain), converse_request(&marked));
    }

    #[test]
    fn pdf_pages_are_counted_from_page_objects() {
        let pdf = b"%PDF-1.4\n1 0 obj << /Type /Pages /Kids [2 0 R 3 0 R] >>\n2 0 obj << /Type /Page >>\n3 0 obj <</Type/Page/Parent 1 0 R>>\n%%EOF";
        assert_eq!(pdf_pages(pdf), 2);
        assert_eq!(pdf_pages(b"%PDF-1.7 compressed"), 1);
        assert_eq!(pdf_pages(&vec![b'x'; 120_000]), 3);
    }

    #[test]
    fn documents_are_sized_by_format_and_agree_across_apis() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let pdf = b"%PDF-1.4 << /Type /Page >> << /Type /Page >> << /Type /Page >>";
        let converse_pdf =
            json!({"document": {"format": "pdf", "name": "report", "source": {"bytes": b64(pdf)}}});
        assert_eq!(converse_block(&converse_pdf), 3 * PDF_PAGE_TOKENS + 2);
        let text = "a".repeat(400);
        let converse_txt =
            json!({"document": {"format": "txt", "name": "notes", "source": {"text": text}}});
        assert_eq!(converse_block(&converse_txt), 100 + 2);
        let converse_bytes = json!({"document": {"format": "txt", "name": "notes", "source": {"bytes": b64(text.as_bytes())}}});
        assert_eq!(converse_block(&converse_bytes), 100 + 2);
        let anthropic_pdf = json!({"type": "document", "title": "report",
            "source": {"type": "base64", "media_type": "application/pdf", "data": b64(pdf)}});
        assert_eq!(
            anthropic_block(&anthropic_pdf),
            converse_block(&converse_pdf)
        );
        let anthropic_txt = json!({"type": "document", "title": "notes",
            "source": {"type": "text", "media_type": "text/plain", "data": text}});
        assert_eq!(
            anthropic_block(&anthropic_txt),
            converse_block(&converse_txt)
        );
    }

    #[test]
    fn anthropic_and_converse_agree_on_plain_text() {
        let converse = json!({"system": [{"text": "you are terse"}],
            "messages": [{"role": "user", "content": [{"text": "hello there"}]}]});
        let anthropic = json!({"system": "you are terse",
            "messages": [{"role": "user", "content": "hello there"}]});
        assert_eq!(converse_request(&converse), anthropic_request(&anthropic));
    }
}
