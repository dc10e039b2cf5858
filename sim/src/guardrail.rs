//! Guardrails with a word policy: the account's guardrails come from the
//! simulator config (`[[guardrails]]`: id, versions, blocked words and the
//! messages shown instead of blocked content). This module finds the guardrail
//! a request names, checks text against its words, writes Bedrock's assessment
//! JSON, and serves ApplyGuardrail; the model operations call it for
//! `guardrailConfig` (Converse) and the guardrail headers (InvokeModel).
//!
//! Only the word policy is simulated: words and phrases match whole words,
//! ignoring case. Images are counted, never blocked.

use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bedrock_wire::error::ErrorType;
use bedrock_wire::operation::RuntimeOperation;
use regex_lite::Regex;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::api::{admit, finish, json_response, Admitted, Subject};
use crate::config::SimConfig;
use crate::error::SimError;
use crate::face::Face;
use crate::faults::Target;
use crate::SimState;

/// The message Bedrock's console proposes for blocked prompts and answers.
pub const DEFAULT_BLOCKED_MESSAGE: &str = "Sorry, the model cannot answer this question.";

/// One guardrail of the simulated account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailConfig {
    /// Lowercase letters and digits, as Bedrock's guardrail ids.
    pub id: String,
    /// `DRAFT` and numbered versions (`1`, `2`, ...).
    #[serde(default = "draft_only")]
    pub versions: Vec<String>,
    /// Words and phrases the word policy blocks.
    #[serde(default)]
    pub words: Vec<String>,
    #[serde(default = "default_blocked")]
    pub blocked_input_message: String,
    #[serde(default = "default_blocked")]
    pub blocked_output_message: String,
}

fn draft_only() -> Vec<String> {
    vec!["DRAFT".into()]
}

fn default_blocked() -> String {
    DEFAULT_BLOCKED_MESSAGE.into()
}

const ID_PATTERN: &str =
    "(|([a-z0-9]+)|(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:guardrail/[a-z0-9]+))";
const VERSION_PATTERN: &str = "(|([1-9][0-9]{0,7})|(DRAFT))";

static ID_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(&format!("^{ID_PATTERN}$")).ok());
static VERSION_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(&format!("^{VERSION_PATTERN}$")).ok());

fn matches(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|re| re.is_match(s))
}

impl GuardrailConfig {
    /// `demoguardrail`, versions DRAFT and 1, blocking the word `forbidden`.
    pub fn demo() -> GuardrailConfig {
        GuardrailConfig {
            id: "demoguardrail".into(),
            versions: vec!["DRAFT".into(), "1".into()],
            words: vec!["forbidden".into()],
            blocked_input_message: default_blocked(),
            blocked_output_message: default_blocked(),
        }
    }

    /// Checks the id, versions and words.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty()
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(format!(
                "guardrail id {:?} must be lowercase letters and digits",
                self.id
            ));
        }
        if self.versions.is_empty() {
            return Err(format!("guardrail {} has no versions", self.id));
        }
        if let Some(bad) = self
            .versions
            .iter()
            .find(|v| v.is_empty() || !matches(&VERSION_RE, v))
        {
            return Err(format!(
                "guardrail {}: version {bad:?} must be DRAFT or a number from 1",
                self.id
            ));
        }
        if self.words.iter().any(|w| w.trim().is_empty()) {
            return Err(format!("guardrail {}: a blocked word is empty", self.id));
        }
        Ok(())
    }

    /// The guardrail's ARN in `region` of `account`.
    pub fn arn(&self, region: &str, account: &str) -> String {
        format!("arn:aws:bedrock:{region}:{account}:guardrail/{}", self.id)
    }
}

fn pattern_error(value: &str, field: &str, pattern: &str) -> SimError {
    SimError::validation(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: Member must satisfy regular expression pattern: {pattern}"
    ))
}

/// Why a guardrail named by a request could not be used.
#[derive(Debug)]
pub enum FindError {
    /// The identifier or version is not well formed: a ValidationException.
    Invalid(SimError),
    /// No such guardrail or version in the account.
    NotFound,
}

impl FindError {
    /// The error a model operation answers with (Converse, InvokeModel): a
    /// guardrail that does not exist is a ValidationException there.
    pub fn for_inference(self) -> SimError {
        match self {
            FindError::Invalid(e) => e,
            FindError::NotFound => SimError::validation(NOT_FOUND),
        }
    }

    /// The error ApplyGuardrail answers with: ResourceNotFoundException.
    pub fn for_apply(self) -> SimError {
        match self {
            FindError::Invalid(e) => e,
            FindError::NotFound => SimError::modeled(ErrorType::ResourceNotFound, NOT_FOUND),
        }
    }
}

const NOT_FOUND: &str =
    "The guardrail identifier or version provided in the request does not exist.";

/// The guardrail `identifier` (an id or ARN) and `version` name.
pub fn find<'a>(
    config: &'a SimConfig,
    identifier: &str,
    version: &str,
) -> Result<&'a GuardrailConfig, FindError> {
    if !matches(&ID_RE, identifier) {
        return Err(FindError::Invalid(pattern_error(
            identifier,
            "guardrailIdentifier",
            ID_PATTERN,
        )));
    }
    if !matches(&VERSION_RE, version) {
        return Err(FindError::Invalid(pattern_error(
            version,
            "guardrailVersion",
            VERSION_PATTERN,
        )));
    }
    let id = match identifier.strip_prefix("arn:") {
        Some(_) => {
            // Only this account's guardrails in this region exist here.
            let prefix = format!(
                "arn:aws:bedrock:{}:{}:guardrail/",
                config.region, config.account_id
            );
            identifier
                .strip_prefix(&prefix)
                .ok_or(FindError::NotFound)?
        }
        None => identifier,
    };
    config
        .guardrails
        .iter()
        .find(|g| g.id == id && g.versions.iter().any(|v| v == version))
        .ok_or(FindError::NotFound)
}

/// How much of an assessment a model operation reports in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trace {
    Disabled,
    Enabled,
    EnabledFull,
}

/// A guardrail a model operation applies.
#[derive(Debug, Clone)]
pub struct Applied {
    pub guardrail: GuardrailConfig,
    pub version: String,
    pub trace: Trace,
}

impl Applied {
    /// The guardrail named by a Converse `guardrailConfig`, if any.
    pub fn from_converse(config: &SimConfig, body: &Value) -> Result<Option<Applied>, SimError> {
        let Some(gc) = body.get("guardrailConfig").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let field = |name: &str| {
            gc.get(name).and_then(Value::as_str).ok_or_else(|| {
                SimError::validation(format!(
                    "1 validation error detected: Value null at 'guardrailConfig.{name}' failed to satisfy constraint: Member must not be null"
                ))
            })
        };
        let (identifier, version) = (field("guardrailIdentifier")?, field("guardrailVersion")?);
        let trace = match gc.get("trace").and_then(Value::as_str) {
            None | Some("disabled") => Trace::Disabled,
            Some("enabled") => Trace::Enabled,
            Some("enabled_full") => Trace::EnabledFull,
            Some(other) => {
                return Err(SimError::validation(format!(
                    "1 validation error detected: Value '{other}' at 'guardrailConfig.trace' failed to satisfy constraint: Member must satisfy enum value set: [enabled, disabled, enabled_full]"
                )))
            }
        };
        if let Some(mode) = gc.get("streamProcessingMode").and_then(Value::as_str) {
            if mode != "sync" && mode != "async" {
                return Err(SimError::validation(format!(
                    "1 validation error detected: Value '{mode}' at 'guardrailConfig.streamProcessingMode' failed to satisfy constraint: Member must satisfy enum value set: [sync, async]"
                )));
            }
        }
        let guardrail = find(config, identifier, version).map_err(FindError::for_inference)?;
        Ok(Some(Applied {
            guardrail: guardrail.clone(),
            version: version.to_owned(),
            trace,
        }))
    }

    /// The guardrail named by InvokeModel's headers, if any.
    pub fn from_headers(
        config: &SimConfig,
        headers: &HeaderMap,
    ) -> Result<Option<Applied>, SimError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let identifier = header("x-amzn-bedrock-guardrailidentifier");
        let version = header("x-amzn-bedrock-guardrailversion");
        let (identifier, version) = match (identifier, version) {
            (None, None) => return Ok(None),
            (Some(i), Some(v)) => (i, v),
            (Some(_), None) => {
                return Err(SimError::validation(
                    "Guardrail version is required when a guardrail identifier is provided.",
                ))
            }
            (None, Some(_)) => {
                return Err(SimError::validation(
                    "Guardrail identifier is required when a guardrail version is provided.",
                ))
            }
        };
        let trace = match header("x-amzn-bedrock-trace") {
            None | Some("DISABLED") => Trace::Disabled,
            Some("ENABLED") => Trace::Enabled,
            Some("ENABLED_FULL") => Trace::EnabledFull,
            Some(other) => {
                return Err(SimError::validation(format!(
                    "1 validation error detected: Value '{other}' at 'trace' failed to satisfy constraint: Member must satisfy enum value set: [ENABLED, DISABLED, ENABLED_FULL]"
                )))
            }
        };
        let guardrail = find(config, identifier, version).map_err(FindError::for_inference)?;
        Ok(Some(Applied {
            guardrail: guardrail.clone(),
            version: version.to_owned(),
            trace,
        }))
    }
}

/// What a guardrail found in some text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    /// Blocked words found, as written in the text, each once.
    pub matches: Vec<String>,
    /// Characters checked.
    pub chars: usize,
}

impl Assessment {
    pub fn intervened(&self) -> bool {
        !self.matches.is_empty()
    }
}

/// The first whole-word, case-insensitive occurrence of `word` in `text`, as
/// written there. Characters are compared lowercased one by one, so the
/// positions found are the text's own whatever the case mapping does to lengths.
fn find_word<'t>(text: &'t str, word: &str) -> Option<&'t str> {
    let word: Vec<char> = word.trim().chars().flat_map(char::to_lowercase).collect();
    if word.is_empty() {
        return None;
    }
    for (start, _) in text.char_indices() {
        if text[..start]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric)
        {
            continue;
        }
        let mut want = word.iter();
        let mut end = None;
        'chars: for (offset, c) in text[start..].char_indices() {
            for lower in c.to_lowercase() {
                if want.next() != Some(&lower) {
                    break 'chars;
                }
            }
            if want.len() == 0 {
                end = Some(start + offset + c.len_utf8());
                break;
            }
        }
        if let Some(end) = end {
            if !text[end..]
                .chars()
                .next()
                .is_some_and(char::is_alphanumeric)
            {
                return Some(&text[start..end]);
            }
        }
    }
    None
}

/// Checks `texts` against the guardrail's words.
pub fn assess<S: AsRef<str>>(guardrail: &GuardrailConfig, texts: &[S]) -> Assessment {
    let mut found = Vec::new();
    let mut chars = 0;
    for text in texts {
        let text = text.as_ref();
        chars += text.chars().count();
        for word in &guardrail.words {
            if let Some(m) = find_word(text, word) {
                if !found.iter().any(|f: &String| f.eq_ignore_ascii_case(m)) {
                    found.push(m.to_owned());
                }
            }
        }
    }
    Assessment {
        matches: found,
        chars,
    }
}

/// Text units billed: one per started 1,000 characters.
fn text_units(chars: usize) -> u64 {
    chars.div_ceil(1000) as u64
}

/// `GuardrailUsage` of a word-policy check over `chars` characters.
pub fn usage_json(chars: usize, images: usize) -> Value {
    let mut usage = json!({
        "topicPolicyUnits": 0,
        "contentPolicyUnits": 0,
        "wordPolicyUnits": text_units(chars),
        "sensitiveInformationPolicyUnits": 0,
        "sensitiveInformationPolicyFreeUnits": 0,
        "contextualGroundingPolicyUnits": 0,
    });
    if images > 0 {
        usage["contentPolicyImageUnits"] = json!(0);
    }
    usage
}

/// Simulated processing time, in milliseconds.
pub fn latency_ms(chars: usize) -> u64 {
    40 + (chars / 200) as u64
}

/// A `GuardrailAssessment`: the word policy's matches (when it blocked
/// something), and the invocation metrics and guardrail details.
pub fn assessment_json(
    applied: &GuardrailConfig,
    version: &str,
    a: &Assessment,
    config: &SimConfig,
) -> Value {
    let mut out = Map::new();
    if a.intervened() {
        let words: Vec<Value> = a
            .matches
            .iter()
            .map(|m| json!({"match": m, "action": "BLOCKED", "detected": true}))
            .collect();
        out.insert(
            "wordPolicy".into(),
            json!({"customWords": words, "managedWordLists": []}),
        );
    }
    out.insert(
        "invocationMetrics".into(),
        json!({
            "guardrailProcessingLatency": latency_ms(a.chars),
            "usage": usage_json(a.chars, 0),
            "guardrailCoverage": {"textCharacters": {"guarded": a.chars, "total": a.chars}},
        }),
    );
    out.insert(
        "appliedGuardrailDetails".into(),
        json!({
            "guardrailId": applied.id,
            "guardrailVersion": version,
            "guardrailArn": applied.arn(&config.region, &config.account_id),
            "guardrailOrigin": ["REQUEST"],
            "guardrailOwnership": "SELF",
        }),
    );
    Value::Object(out)
}

/// The texts a Converse guardrail checks on the way in: the `guardContent`
/// blocks when there are any (messages and system), otherwise every text
/// block of the messages.
pub fn converse_input(body: &Value) -> Vec<String> {
    let guard_text = |block: &Value| {
        block["guardContent"]["text"]["text"]
            .as_str()
            .map(str::to_owned)
    };
    let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
    let blocks = messages
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten());
    let system = body["system"].as_array().into_iter().flatten();
    let guarded: Vec<String> = blocks
        .clone()
        .chain(system)
        .filter_map(guard_text)
        .collect();
    if !guarded.is_empty() {
        return guarded;
    }
    blocks
        .filter_map(|b| b.get("text").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// The texts an InvokeModel guardrail checks: the whole prompt (Anthropic
/// system and messages, or a Llama prompt).
pub fn invoke_input(body: &Value) -> Vec<String> {
    if let Some(prompt) = body.get("prompt").and_then(Value::as_str) {
        return vec![prompt.to_owned()];
    }
    let mut texts = Vec::new();
    let mut push = |content: &Value| match content {
        Value::String(s) => texts.push(s.clone()),
        Value::Array(blocks) => texts.extend(
            blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str).map(str::to_owned)),
        ),
        _ => {}
    };
    push(&body["system"]);
    for message in body["messages"].as_array().into_iter().flatten() {
        push(&message["content"]);
    }
    texts
}

// ---- ApplyGuardrail -------------------------------------------------------

fn null(field: &str) -> SimError {
    SimError::validation(format!(
        "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
    ))
}

fn enum_error(value: &Value, field: &str, set: &str) -> SimError {
    let shown = value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned);
    SimError::validation(format!(
        "1 validation error detected: Value '{shown}' at '{field}' failed to satisfy constraint: Member must satisfy enum value set: [{set}]"
    ))
}

/// What an ApplyGuardrail body asks to check.
#[derive(Debug)]
struct ApplyInput {
    output: bool,
    texts: Vec<String>,
    images: usize,
}

fn read_apply(body: &Value) -> Result<ApplyInput, SimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| SimError::malformed("the body must be a JSON object"))?;
    let output = match obj.get("source") {
        None | Some(Value::Null) => return Err(null("source")),
        Some(v) if v == "INPUT" => false,
        Some(v) if v == "OUTPUT" => true,
        Some(v) => return Err(enum_error(v, "source", "INPUT, OUTPUT")),
    };
    if let Some(scope) = obj.get("outputScope").filter(|v| !v.is_null()) {
        if scope != "INTERVENTIONS" && scope != "FULL" {
            return Err(enum_error(scope, "outputScope", "INTERVENTIONS, FULL"));
        }
    }
    let content = match obj.get("content") {
        None | Some(Value::Null) => return Err(null("content")),
        Some(Value::Array(c)) => c,
        Some(_) => return Err(SimError::malformed("content must be a list")),
    };
    let mut texts = Vec::new();
    let mut images = 0;
    for (i, block) in content.iter().enumerate() {
        if let Some(text) = block.get("text") {
            let t = text["text"]
                .as_str()
                .ok_or_else(|| null(&format!("content.{}.member.text.text", i + 1)))?;
            for q in text["qualifiers"].as_array().into_iter().flatten() {
                if !["grounding_source", "query", "guard_content"]
                    .contains(&q.as_str().unwrap_or(""))
                {
                    return Err(enum_error(
                        q,
                        &format!("content.{}.member.text.qualifiers", i + 1),
                        "grounding_source, query, guard_content",
                    ));
                }
            }
            texts.push(t.to_owned());
        } else if let Some(image) = block.get("image") {
            let format = &image["format"];
            if format != "png" && format != "jpeg" {
                return Err(enum_error(
                    format,
                    &format!("content.{}.member.image.format", i + 1),
                    "png, jpeg",
                ));
            }
            images += 1;
        } else {
            return Err(SimError::validation(format!(
                "content.{} must contain exactly one of text or image.",
                i + 1
            )));
        }
    }
    Ok(ApplyInput {
        output,
        texts,
        images,
    })
}

/// `POST /guardrail/{guardrailIdentifier}/version/{guardrailVersion}/apply`
pub async fn apply(
    State(state): State<Arc<SimState>>,
    Path((identifier, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    let id = bedrock_wire::new_request_id();
    let result = serve_apply(&state, &id, &identifier, &version, request).await;
    finish(&state, &id, result)
}

async fn serve_apply(
    state: &Arc<SimState>,
    request_id: &str,
    identifier: &str,
    version: &str,
    request: Request,
) -> Result<Response, SimError> {
    let op = RuntimeOperation::ApplyGuardrail;
    let Admitted { parts, json, .. } =
        admit(state, request_id, op, Subject::Id(identifier), request).await?;
    let body = json.map_err(SimError::malformed)?;
    let guardrail = find(&state.config, identifier, version).map_err(FindError::for_apply)?;
    let input = read_apply(&body)?;
    crate::api::fault_error(
        state,
        &parts.headers,
        &Target {
            face: Face::Bedrock,
            ids: &[identifier],
            operation: op.label(),
            ..Target::default()
        },
    )
    .await?;
    let assessment = assess(guardrail, &input.texts);
    state.stats.guardrail(assessment.intervened());
    let latency = latency_ms(assessment.chars);
    let delay = Duration::from_millis(latency).mul_f64(state.config.time_scale);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = json!({
        "usage": usage_json(assessment.chars, input.images),
        "action": if assessment.intervened() { "GUARDRAIL_INTERVENED" } else { "NONE" },
        "actionReason": if assessment.intervened() { "Guardrail blocked." } else { "No action." },
        "outputs": [],
        "assessments": [assessment_json(guardrail, version, &assessment, &state.config)],
        "guardrailCoverage": {"textCharacters": {"guarded": assessment.chars, "total": assessment.chars}},
    });
    if assessment.intervened() {
        let message = if input.output {
            &guardrail.blocked_output_message
        } else {
            &guardrail.blocked_input_message
        };
        response["outputs"] = json!([{ "text": message }]);
    }
    if input.images > 0 {
        response["guardrailCoverage"]["images"] = json!({"guarded": 0, "total": input.images});
    }
    Ok(json_response(response, HeaderMap::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SimConfig {
        SimConfig::default()
    }

    #[test]
    fn guardrails_are_found_by_id_or_arn_and_version() {
        let c = config();
        assert_eq!(
            find(&c, "demoguardrail", "DRAFT").unwrap().id,
            "demoguardrail"
        );
        assert!(find(&c, "demoguardrail", "1").is_ok());
        let arn = "arn:aws:bedrock:us-east-2:123456789012:guardrail/demoguardrail";
        assert!(find(&c, arn, "1").is_ok());
        assert!(matches!(
            find(&c, "demoguardrail", "2"),
            Err(FindError::NotFound)
        ));
        assert!(matches!(find(&c, "other", "1"), Err(FindError::NotFound)));
        let other_account = "arn:aws:bedrock:us-east-2:999999999999:guardrail/demoguardrail";
        assert!(matches!(
            find(&c, other_account, "1"),
            Err(FindError::NotFound)
        ));
        let Err(FindError::Invalid(e)) = find(&c, "Demo-Guardrail", "1") else {
            panic!("a malformed id is a validation error");
        };
        assert!(e.message.contains("'guardrailIdentifier'"), "{}", e.message);
        assert!(matches!(
            find(&c, "demoguardrail", "v1"),
            Err(FindError::Invalid(_))
        ));
        assert_eq!(
            find(&c, "nope", "1").unwrap_err().for_apply().type_name,
            "ResourceNotFoundException"
        );
        assert_eq!(
            find(&c, "nope", "1").unwrap_err().for_inference().type_name,
            "ValidationException"
        );
    }

    #[test]
    fn words_match_whole_words_ignoring_case() {
        let mut g = GuardrailConfig::demo();
        g.words.push("secret plan".into());
        let a = assess(&g, &["This is FORBIDDEN knowledge", "no secret plans here"]);
        assert_eq!(a.matches, ["FORBIDDEN"]);
        assert_eq!(a.chars, 47);
        assert!(!assess(&g, &["unforbiddenly fine"]).intervened());
        assert_eq!(assess(&g, &["our secret plan."]).matches, ["secret plan"]);
        assert!(!assess(&g, &["ß İ ünïcödé forbiddenß"]).intervened());
        assert_eq!(assess(&g, &["İİ Forbidden!"]).matches, ["Forbidden"]);
    }

    #[test]
    fn converse_input_prefers_guard_content() {
        let plain = json!({"system": [{"text": "forbidden system"}],
            "messages": [{"role": "user", "content": [{"text": "hello"}]}]});
        assert_eq!(converse_input(&plain), ["hello"]);
        let guarded = json!({"messages": [{"role": "user", "content": [
            {"text": "forbidden but not guarded"},
            {"guardContent": {"text": {"text": "only this"}}}]}]});
        assert_eq!(converse_input(&guarded), ["only this"]);
        let anthropic = json!({"system": "sys", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        assert_eq!(invoke_input(&anthropic), ["sys", "hi"]);
    }

    #[test]
    fn apply_bodies_are_validated() {
        assert!(read_apply(&json!({"content": []}))
            .unwrap_err()
            .message
            .contains("'source'"));
        assert!(read_apply(&json!({"source": "SIDEWAYS", "content": []}))
            .unwrap_err()
            .message
            .contains("INPUT, OUTPUT"));
        assert!(read_apply(&json!({"source": "INPUT"}))
            .unwrap_err()
            .message
            .contains("'content'"));
        let ok = read_apply(
            &json!({"source": "OUTPUT", "content": [{"text": {"text": "a"}},
            {"image": {"format": "png", "source": {"bytes": "AAAA"}}}]}),
        )
        .unwrap();
        assert!(ok.output);
        assert_eq!(ok.texts, ["a"]);
        assert_eq!(ok.images, 1);
    }

    proptest::proptest! {
        /// Any text and any word: a match, when there is one, is a slice of
        /// the text equal to the word ignoring case; never a panic.
        #[test]
        fn word_matching_never_panics(text in "\\PC{0,40}", word in "\\PC{0,6}") {
            if let Some(m) = find_word(&text, &word) {
                proptest::prop_assert!(text.contains(m));
                proptest::prop_assert_eq!(m.to_lowercase(), word.trim().to_lowercase());
            }
        }
    }
}
