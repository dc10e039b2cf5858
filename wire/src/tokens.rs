//! The token estimator: how the simulator bills input and how the proxy sizes
//! prefixes before it has seen a bill.
//!
//! Real tokenizers differ by model; this one is documented, cheap and consistent:
//! - text: one token per 4 bytes of UTF-8, rounded up (English averages about 4
//!   characters per token in Claude's and Llama's tokenizers);
//! - JSON (tool specs, tool inputs, JSON tool results): the text rule over the
//!   compact JSON;
//! - an image: 1,600 tokens (Claude's cost for a ~1.15 megapixel image);
//! - a document: the text rule over its decoded bytes;
//! - each message: 3 tokens of framing; cache markers: nothing.
//!
//! The simulator's `CountTokens` and `usage` use exactly these numbers, so the
//! proxy's estimate of a prefix matches what the simulator will bill for it.

use serde_json::Value;

/// Framing tokens per message.
pub const MESSAGE_OVERHEAD: u32 = 3;
/// Tokens billed per image.
pub const IMAGE_TOKENS: u32 = 1_600;

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
    let len = v.as_str().map_or(0, str::len);
    u32::try_from((len / 4 * 3).div_ceil(4)).unwrap_or(u32::MAX)
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
        return base64_decoded_tokens(&doc["source"]["bytes"])
            + text(doc["name"].as_str().unwrap_or(""));
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
        return json(&reasoning["reasoningText"]["text"]);
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
        Some("document") => base64_decoded_tokens(&block["source"]["data"]),
        Some("tool_use") => json(&block["name"]) + json(&block["input"]),
        Some("tool_result") => anthropic_content(&block["content"]),
        Some("thinking") => json(&block["thinking"]),
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
    fn anthropic_and_converse_agree_on_plain_text() {
        let converse = json!({"system": [{"text": "you are terse"}],
            "messages": [{"role": "user", "content": [{"text": "hello there"}]}]});
        let anthropic = json!({"system": "you are terse",
            "messages": [{"role": "user", "content": "hello there"}]});
        assert_eq!(converse_request(&converse), anthropic_request(&anthropic));
    }
}
