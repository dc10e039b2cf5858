//! Making up an answer: plain English-like text derived from a seed, cut by
//! `maxTokens` and stop sequences, or a tool call whose input satisfies the
//! tool's schema. The same seed always gives the same answer.

use serde_json::{json, Map, Value};

use crate::request::{Prompt, ToolChoice, ToolDef};

/// One generated token: a word and the space or punctuation after it.
pub type Piece = String;

/// A content block of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(Vec<Piece>),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    StopSequence,
    /// A guardrail replaced the prompt's or the answer's content.
    GuardrailIntervened,
}

impl StopReason {
    /// The Converse spelling.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::ToolUse => "tool_use",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopSequence => "stop_sequence",
            StopReason::GuardrailIntervened => "guardrail_intervened",
        }
    }

    /// The Anthropic Messages spelling: Anthropic has no guardrail stop reason,
    /// so a guardrail's replacement ends its turn (the body's
    /// `amazon-bedrock-guardrailAction` says why).
    pub fn anthropic_name(self) -> &'static str {
        match self {
            StopReason::GuardrailIntervened => "end_turn",
            other => other.name(),
        }
    }
}

/// A complete generated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub blocks: Vec<Block>,
    pub stop_reason: StopReason,
    pub stop_sequence: Option<String>,
    pub output_tokens: u32,
}

const WORDS: &[&str] = &[
    "the", "model", "answer", "request", "data", "system", "cache", "prompt", "simple", "learning",
    "machine", "latency", "token", "stream", "region", "value", "result", "quickly", "because",
    "which", "often", "every", "about", "between", "through", "before", "after", "while", "using",
    "clear", "small", "large", "fast", "slow", "better", "common", "useful", "example", "pattern",
    "process", "service", "network", "memory", "question", "context", "people", "teams", "build",
    "measure", "learn", "change", "return", "repeat", "compute", "store", "serve", "read", "write",
    "follow", "explain", "describe", "compare", "improve", "and", "or", "but", "so", "with",
    "from", "into", "over", "under", "for", "of", "to", "in", "on", "is", "are", "can", "will",
    "may", "should", "this", "that", "these", "those", "it", "its", "their", "our", "a", "an",
    "more", "less", "most", "each", "many", "few", "new", "first", "last", "next", "good", "well",
    "also", "then", "than", "very", "just", "only",
];

/// Natural answer length in tokens, before any limit.
const MIN_NATURAL_TOKENS: u64 = 24;
const NATURAL_TOKENS_SPREAD: u64 = 160;

/// A seeded word generator.
struct Writer {
    rng: fastrand::Rng,
}

impl Writer {
    fn sentence(&mut self, pieces: &mut Vec<Piece>, budget: usize) {
        let len = self.rng.usize(6..16).min(budget.max(1));
        for i in 0..len {
            let word = WORDS[self.rng.usize(..WORDS.len())];
            let mut piece = if i == 0 {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|c| c.to_uppercase().chain(chars).collect())
                    .unwrap_or_default()
            } else {
                word.to_owned()
            };
            piece.push_str(if i + 1 == len { ". " } else { " " });
            pieces.push(piece);
        }
    }

    fn text(&mut self, tokens: usize) -> Vec<Piece> {
        let mut pieces = Vec::with_capacity(tokens);
        while pieces.len() < tokens {
            let left = tokens - pieces.len();
            self.sentence(&mut pieces, left);
        }
        if let Some(last) = pieces.last_mut() {
            let trimmed = last.trim_end().to_owned();
            *last = trimmed;
        }
        pieces
    }

    fn word(&mut self) -> &'static str {
        WORDS[self.rng.usize(..WORDS.len())]
    }

    fn id(&mut self, prefix: &str, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut id = String::with_capacity(prefix.len() + len);
        id.push_str(prefix);
        for _ in 0..len {
            id.push(char::from(ALPHABET[self.rng.usize(..ALPHABET.len())]));
        }
        id
    }

    /// A value satisfying a JSON schema (types, enums, required properties).
    fn value(&mut self, schema: &Value, depth: usize) -> Value {
        if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
            return first.clone();
        }
        match schema["type"].as_str() {
            Some("string") => Value::from(self.word()),
            Some("integer") => Value::from(self.rng.i64(1..100)),
            Some("number") => Value::from(f64::from(self.rng.u16(1..10_000)) / 100.0),
            Some("boolean") => Value::from(self.rng.bool()),
            Some("array") if depth < 4 => {
                Value::Array(vec![self.value(&schema["items"], depth + 1)])
            }
            Some("array") => json!([]),
            Some("object") | None if depth < 4 => self.object(schema, depth + 1),
            _ => Value::Null,
        }
    }

    fn object(&mut self, schema: &Value, depth: usize) -> Value {
        let mut out = Map::new();
        let Some(props) = schema["properties"].as_object() else {
            return Value::Object(out);
        };
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_else(|| props.keys().map(String::as_str).collect());
        for name in required {
            let sub = props.get(name).cloned().unwrap_or(Value::Null);
            out.insert(name.to_owned(), self.value(&sub, depth));
        }
        Value::Object(out)
    }
}

/// The tool the model calls, if it calls one.
fn chosen_tool(prompt: &Prompt) -> Option<&ToolDef> {
    if prompt.tools.is_empty() || prompt.after_tool_result {
        return None;
    }
    let asked = || {
        let text = prompt.last_user_text.to_lowercase();
        prompt.tools.iter().find(|t| {
            let name = t.name.to_lowercase();
            text.contains(&name) || text.contains(&name.replace('_', " "))
        })
    };
    match &prompt.tool_choice {
        ToolChoice::None => None,
        ToolChoice::Tool(name) => prompt.tools.iter().find(|t| &t.name == name),
        ToolChoice::Any => asked().or(prompt.tools.first()),
        ToolChoice::Auto => asked(),
    }
}

/// Applies stop sequences to text pieces: cuts before the earliest match.
fn cut_at_stop(pieces: &mut Vec<Piece>, stops: &[String]) -> Option<String> {
    let text: String = pieces.concat();
    let (at, seq) = stops
        .iter()
        .filter_map(|s| text.find(s.as_str()).map(|i| (i, s)))
        .min_by_key(|(i, _)| *i)?;
    let mut kept = Vec::new();
    let mut offset = 0;
    for piece in pieces.drain(..) {
        if offset >= at {
            break;
        }
        let end = offset + piece.len();
        if end <= at {
            kept.push(piece);
        } else {
            kept.push(piece[..at - offset].to_owned());
        }
        offset = end;
    }
    *pieces = kept;
    Some(seq.clone())
}

/// The message a guardrail shows instead of blocked content.
pub fn blocked(message: &str) -> Answer {
    let pieces: Vec<Piece> = message.split_inclusive(' ').map(str::to_owned).collect();
    Answer {
        output_tokens: u32::try_from(pieces.len()).unwrap_or(u32::MAX),
        blocks: vec![Block::Text(pieces)],
        stop_reason: StopReason::GuardrailIntervened,
        stop_sequence: None,
    }
}

/// All the text of an answer, its tool calls left out.
pub fn text(answer: &Answer) -> String {
    answer
        .blocks
        .iter()
        .filter_map(|b| match b {
            Block::Text(p) => Some(p.concat()),
            Block::ToolUse { .. } => None,
        })
        .collect()
}

/// Generates the answer to `prompt` from `seed`, within `max_tokens`.
pub fn answer(prompt: &Prompt, seed: u64, max_tokens: u32) -> Answer {
    let mut writer = Writer {
        rng: fastrand::Rng::with_seed(seed),
    };
    let max = max_tokens.max(1) as usize;
    if let Some(tool) = chosen_tool(prompt) {
        let mut blocks = Vec::new();
        let mut used = 0;
        if prompt.tool_choice == ToolChoice::Auto {
            let preface = writer.text(8.min(max));
            used += preface.len();
            blocks.push(Block::Text(preface));
        }
        let input = writer.object(&tool.schema, 0);
        let id_prefix = match prompt.format {
            crate::request::Format::Anthropic => "toolu_bdrk_",
            _ => "tooluse_",
        };
        used += bedrock_wire::tokens::json(&input) as usize + 4;
        blocks.push(Block::ToolUse {
            id: writer.id(id_prefix, 22),
            name: tool.name.clone(),
            input,
        });
        return Answer {
            blocks,
            stop_reason: StopReason::ToolUse,
            stop_sequence: None,
            output_tokens: u32::try_from(used).unwrap_or(u32::MAX),
        };
    }

    let natural = (MIN_NATURAL_TOKENS + writer.rng.u64(..NATURAL_TOKENS_SPREAD)) as usize;
    let mut pieces = writer.text(natural.min(max));
    let mut stop_reason = if natural > max {
        StopReason::MaxTokens
    } else {
        StopReason::EndTurn
    };
    let stop_sequence = cut_at_stop(&mut pieces, &prompt.stop_sequences);
    if stop_sequence.is_some() {
        stop_reason = StopReason::StopSequence;
    }
    let output_tokens = u32::try_from(pieces.len()).unwrap_or(u32::MAX);
    Answer {
        blocks: vec![Block::Text(pieces)],
        stop_reason,
        stop_sequence,
        output_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::request::{converse, user};

    fn prompt(body: &Value) -> Prompt {
        let m = Catalog::embedded()
            .resolve("us.anthropic.claude-3-5-haiku-20241022-v1:0")
            .unwrap()
            .model;
        converse(body, &m).unwrap()
    }

    fn text(a: &Answer) -> String {
        match &a.blocks[0] {
            Block::Text(p) => p.concat(),
            other => panic!("text expected, got {other:?}"),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_answer() {
        let p = prompt(&user("Explain caching"));
        assert_eq!(answer(&p, 7, 500), answer(&p, 7, 500));
        assert_ne!(text(&answer(&p, 7, 500)), text(&answer(&p, 8, 500)));
    }

    #[test]
    fn max_tokens_cuts_the_answer() {
        let p = prompt(&user("Explain caching"));
        let a = answer(&p, 1, 5);
        assert_eq!(a.output_tokens, 5);
        assert_eq!(a.stop_reason, StopReason::MaxTokens);
    }

    #[test]
    fn stop_sequences_cut_before_the_match() {
        let p = prompt(&user("Explain caching"));
        let full = text(&answer(&p, 3, 500));
        let word = full
            .split_whitespace()
            .nth(5)
            .unwrap()
            .trim_end_matches('.')
            .to_owned();
        let mut body = user("Explain caching");
        body["inferenceConfig"] = json!({"stopSequences": [word.clone()]});
        let p2 = prompt(&body);
        let cut = answer(&p2, 3, 500);
        assert_eq!(cut.stop_reason, StopReason::StopSequence);
        assert_eq!(cut.stop_sequence.as_deref(), Some(word.as_str()));
        assert_eq!(text(&cut), full[..full.find(&word).unwrap()]);
    }

    #[test]
    fn tools_are_called_with_their_required_properties() {
        let mut body = user("What is the weather in Paris? Use get_weather.");
        body["toolConfig"] = json!({"tools": [{"toolSpec": {"name": "get_weather",
            "inputSchema": {"json": {"type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer"}, "verbose": {"type": "boolean"}},
                "required": ["city", "unit", "days"]}}}}]});
        let a = answer(&prompt(&body), 1, 500);
        assert_eq!(a.stop_reason, StopReason::ToolUse);
        let Some(Block::ToolUse { name, input, id }) = a.blocks.last() else {
            panic!("tool use expected");
        };
        assert_eq!(name, "get_weather");
        assert!(id.starts_with("tooluse_"));
        assert!(input["city"].is_string());
        assert_eq!(input["unit"], "celsius");
        assert!(input["days"].is_i64());
        assert!(input.get("verbose").is_none());

        body["messages"][0]["content"][0]["text"] = json!("Tell me a story.");
        assert_eq!(
            answer(&prompt(&body), 1, 500).stop_reason,
            StopReason::EndTurn
        );
        body["toolConfig"]["toolChoice"] = json!({"any": {}});
        assert_eq!(
            answer(&prompt(&body), 1, 500).stop_reason,
            StopReason::ToolUse
        );
    }
}
