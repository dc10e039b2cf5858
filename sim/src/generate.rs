//! Making up an answer: plain English-like text derived from a seed, cut by
//! `maxTokens` and stop sequences; JSON that follows the requested schema; text
//! citing a document; or a tool call whose input satisfies the tool's schema;
//! each preceded by signed reasoning when the request enables thinking. The same
//! seed always gives the same answer.

use serde_json::Value;

use crate::documents::{self, Citation};
use crate::reasoning;
use crate::request::{Prompt, ToolChoice, ToolDef};
use crate::structured::Generator;

/// One generated token: a word and the space or punctuation after it.
pub type Piece = String;

/// A content block of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(Vec<Piece>),
    /// Extended thinking and its signature.
    Reasoning {
        pieces: Vec<Piece>,
        signature: String,
    },
    /// Text supported by a citation of a document.
    Cited {
        pieces: Vec<Piece>,
        citation: Citation,
    },
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

pub(crate) const WORDS: &[&str] = &[
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

    fn id(&mut self, prefix: &str, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut id = String::with_capacity(prefix.len() + len);
        id.push_str(prefix);
        for _ in 0..len {
            id.push(char::from(ALPHABET[self.rng.usize(..ALPHABET.len())]));
        }
        id
    }
}

/// The tool the model calls, if it calls one. `any` and `tool` force a call at
/// every turn; after a tool result, `any` picks a tool the conversation has not
/// called yet where there is one, so agent loops that end with a final-answer
/// tool get there. `auto` calls a tool the user's message names, and answers in
/// text after a tool result.
fn chosen_tool(prompt: &Prompt) -> Option<&ToolDef> {
    if prompt.tools.is_empty() {
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
        ToolChoice::Any if prompt.after_tool_result => prompt
            .tools
            .iter()
            .find(|t| !prompt.called_tools.contains(&t.name))
            .or_else(asked)
            .or(prompt.tools.first()),
        ToolChoice::Any => asked().or(prompt.tools.first()),
        ToolChoice::Auto if prompt.after_tool_result => None,
        ToolChoice::Auto => asked(),
    }
}

/// Cuts text into pieces of about one token (four bytes), for JSON answers.
fn token_pieces(text: &str) -> Vec<Piece> {
    let mut pieces = Vec::with_capacity(text.len() / 4 + 1);
    let mut piece = String::new();
    for c in text.chars() {
        piece.push(c);
        if piece.len() >= 4 {
            pieces.push(std::mem::take(&mut piece));
        }
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    pieces
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

/// All the text of an answer (cited text included), its reasoning and tool
/// calls left out.
pub fn text(answer: &Answer) -> String {
    answer
        .blocks
        .iter()
        .filter_map(|b| match b {
            Block::Text(p) | Block::Cited { pieces: p, .. } => Some(p.concat()),
            Block::Reasoning { .. } | Block::ToolUse { .. } => None,
        })
        .collect()
}

/// Generates the answer to `prompt` from `seed`, within `max_tokens`.
pub fn answer(prompt: &Prompt, seed: u64, max_tokens: u32) -> Answer {
    let mut writer = Writer {
        rng: fastrand::Rng::with_seed(seed),
    };
    let max = max_tokens.max(1) as usize;
    let mut blocks = Vec::new();
    let mut used = 0usize;
    if let Some(thinking) = prompt.thinking.filter(|_| prompt.emit_reasoning) {
        let n = reasoning::reasoning_tokens(&thinking, prompt.effort, max_tokens, &mut writer.rng);
        let pieces = writer.text(n as usize);
        let signature = reasoning::sign(&pieces.concat());
        used += pieces.len();
        blocks.push(Block::Reasoning { pieces, signature });
    }
    let left = max.saturating_sub(used).max(1);

    if let Some(tool) = chosen_tool(prompt) {
        if prompt.tool_choice == ToolChoice::Auto {
            let preface = writer.text(8.min(left));
            used += preface.len();
            blocks.push(Block::Text(preface));
        }
        let input = Generator::new(&tool.schema, &mut writer.rng, WORDS).generate();
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

    let scale = prompt.effort.map_or(1.0, reasoning::Effort::scale);
    let (mut pieces, natural) = if let Some(schema) = &prompt.output_schema {
        let value = Generator::new(schema, &mut writer.rng, WORDS).generate();
        let mut pieces = token_pieces(&value.to_string());
        let natural = pieces.len();
        pieces.truncate(left);
        (pieces, natural)
    } else {
        let drawn = MIN_NATURAL_TOKENS + writer.rng.u64(..NATURAL_TOKENS_SPREAD);
        let natural = ((drawn as f64) * scale) as usize;
        if let Some(doc) = prompt.citable.first() {
            return cited_answer(
                &mut writer,
                blocks,
                used,
                documents::cite(doc),
                natural,
                left,
            );
        }
        (writer.text(natural.min(left)), natural)
    };
    let mut stop_reason = if natural > left {
        StopReason::MaxTokens
    } else {
        StopReason::EndTurn
    };
    let stop_sequence = cut_at_stop(&mut pieces, &prompt.stop_sequences);
    if stop_sequence.is_some() {
        stop_reason = StopReason::StopSequence;
    }
    used += pieces.len();
    blocks.push(Block::Text(pieces));
    Answer {
        blocks,
        stop_reason,
        stop_sequence,
        output_tokens: u32::try_from(used).unwrap_or(u32::MAX),
    }
}

/// An answer that cites a document: an opening, the cited passage's text, and a
/// close, as Claude interleaves text and citations.
fn cited_answer(
    writer: &mut Writer,
    mut blocks: Vec<Block>,
    mut used: usize,
    citation: Citation,
    natural: usize,
    left: usize,
) -> Answer {
    let total = natural.min(left);
    let opening = writer.text(4.min(total));
    let cited = writer.text(12.min(total.saturating_sub(opening.len())).max(1));
    let rest = total.saturating_sub(opening.len() + cited.len());
    used += opening.len() + cited.len();
    blocks.push(Block::Text(opening));
    blocks.push(Block::Cited {
        pieces: cited,
        citation,
    });
    if rest > 0 {
        let close = writer.text(rest);
        used += close.len();
        blocks.push(Block::Text(close));
    }
    Answer {
        blocks,
        stop_reason: if natural > left {
            StopReason::MaxTokens
        } else {
            StopReason::EndTurn
        },
        stop_sequence: None,
        output_tokens: u32::try_from(used).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::request::{converse, user};
    use serde_json::json;

    fn prompt_for(id: &str, body: &Value) -> Prompt {
        let m = Catalog::embedded().resolve(id).unwrap().model;
        converse(body, &m).unwrap()
    }

    fn prompt(body: &Value) -> Prompt {
        prompt_for("us.anthropic.claude-3-5-haiku-20241022-v1:0", body)
    }

    const SONNET_45: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

    fn tool_names(a: &Answer) -> Vec<String> {
        a.blocks
            .iter()
            .filter_map(|b| match b {
                Block::ToolUse { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// A conversation that called `search` and sends its result back.
    fn after_search(choice: Value) -> Value {
        json!({
            "messages": [
                {"role": "user", "content": [{"text": "Find the capital of France."}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "search", "input": {"q": "capital"}}}]},
                {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "Paris"}]}}]}
            ],
            "toolConfig": {"tools": [
                {"toolSpec": {"name": "search", "inputSchema": {"json": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}},
                {"toolSpec": {"name": "final_answer", "inputSchema": {"json": {"type": "object",
                    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
                    "required": ["answer", "confidence"]}}}}
            ], "toolChoice": choice}
        })
    }

    #[test]
    fn forced_tools_are_called_after_tool_results_too() {
        let any = answer(&prompt(&after_search(json!({"any": {}}))), 1, 500);
        assert_eq!(
            tool_names(&any),
            ["final_answer"],
            "any picks the tool not yet called"
        );
        let Some(Block::ToolUse { input, .. }) = any.blocks.last() else {
            panic!()
        };
        let confidence = input["confidence"].as_f64().unwrap();
        assert!(input["answer"].is_string() && (0.0..=1.0).contains(&confidence));
        let named = answer(
            &prompt(&after_search(json!({"tool": {"name": "search"}}))),
            1,
            500,
        );
        assert_eq!(tool_names(&named), ["search"]);
        let auto = answer(&prompt(&after_search(json!({"auto": {}}))), 1, 500);
        assert_eq!(
            auto.stop_reason,
            StopReason::EndTurn,
            "auto answers in text"
        );
    }

    #[test]
    fn thinking_comes_first_is_signed_and_counted() {
        let mut body = user("Explain caching");
        body["inferenceConfig"] = json!({"maxTokens": 3000});
        body["additionalModelRequestFields"] =
            json!({"thinking": {"type": "enabled", "budget_tokens": 2000}});
        let a = answer(&prompt_for(SONNET_45, &body), 5, 3000);
        let Block::Reasoning { pieces, signature } = &a.blocks[0] else {
            panic!("reasoning first: {:?}", a.blocks[0]);
        };
        assert!(reasoning::verify(&pieces.concat(), signature));
        assert!((500..=1000).contains(&pieces.len()), "{}", pieces.len());
        let Block::Text(text) = &a.blocks[1] else {
            panic!()
        };
        assert_eq!(a.output_tokens as usize, pieces.len() + text.len());
    }

    #[test]
    fn structured_answers_are_json_of_the_schema() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"},
            "population": {"type": "integer", "minimum": 1}}, "required": ["city", "population"],
            "additionalProperties": false});
        let mut body = user("Biggest city?");
        body["outputConfig"] = json!({"textFormat": {"type": "json_schema",
            "structure": {"jsonSchema": {"schema": schema.to_string(), "name": "city"}}}});
        let a = answer(&prompt_for(SONNET_45, &body), 2, 500);
        let v: Value = serde_json::from_str(&text(&a)).unwrap();
        assert!(v["city"].is_string() && v["population"].as_i64().unwrap() >= 1);
        assert_eq!(a.stop_reason, StopReason::EndTurn);
        let cut = answer(&prompt_for(SONNET_45, &body), 2, 3);
        assert_eq!(cut.stop_reason, StopReason::MaxTokens);
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
