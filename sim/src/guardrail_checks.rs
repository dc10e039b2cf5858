//! InvokeGuardrailChecks (`POST /guardrail-checks/invoke`): checks configured in
//! the request itself (content filter categories, prompt attacks, sensitive
//! information entities) scored over the messages, without a stored guardrail.
//!
//! Scores are deterministic: a category's severity rises with the number of
//! its marker words or phrases in the text (none: 0.0); sensitive information
//! is found by pattern (email, phone, IP and MAC address, URL, US SSN, card
//! number, AWS access key; the other entity types are accepted but never found).

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bedrock_wire::operation::RuntimeOperation;
use regex_lite::Regex;
use serde_json::{json, Value};
use std::sync::{Arc, LazyLock};

use crate::api::{admit, fault_error, finish, json_response, Admitted, Subject};
use crate::error::SimError;
use crate::face::Face;
use crate::faults::Target;
use crate::SimState;

const CONTENT_CATEGORIES: [(&str, &[&str]); 5] = [
    (
        "VIOLENCE",
        &[
            "kill", "murder", "attack", "weapon", "bomb", "shoot", "stab", "assault",
        ],
    ),
    ("HATE", &["hate", "inferior", "subhuman", "racist", "bigot"]),
    ("SEXUAL", &["explicit", "nude", "sexual", "porn"]),
    (
        "MISCONDUCT",
        &[
            "steal",
            "fraud",
            "hack into",
            "launder",
            "counterfeit",
            "bribe",
        ],
    ),
    (
        "INSULTS",
        &["idiot", "stupid", "moron", "dumb", "loser", "pathetic"],
    ),
];

const ATTACK_CATEGORIES: [(&str, &[&str]); 3] = [
    (
        "JAILBREAK",
        &[
            "do anything now",
            "developer mode",
            "without any restrictions",
            "ignore your rules",
            "no restrictions",
        ],
    ),
    (
        "PROMPT_INJECTION",
        &[
            "ignore previous instructions",
            "ignore all previous instructions",
            "disregard the above",
            "ignore the above",
        ],
    ),
    (
        "PROMPT_LEAKAGE",
        &[
            "system prompt",
            "reveal your instructions",
            "repeat the text above",
            "your initial instructions",
        ],
    ),
];

/// Every entity type of the API model's enum.
const ENTITY_TYPES: [&str; 31] = [
    "ADDRESS",
    "AGE",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "CA_HEALTH_NUMBER",
    "CA_SOCIAL_INSURANCE_NUMBER",
    "CREDIT_DEBIT_CARD_CVV",
    "CREDIT_DEBIT_CARD_EXPIRY",
    "CREDIT_DEBIT_CARD_NUMBER",
    "DRIVER_ID",
    "EMAIL",
    "INTERNATIONAL_BANK_ACCOUNT_NUMBER",
    "IP_ADDRESS",
    "LICENSE_PLATE",
    "MAC_ADDRESS",
    "NAME",
    "PASSWORD",
    "PHONE",
    "PIN",
    "SWIFT_CODE",
    "UK_NATIONAL_HEALTH_SERVICE_NUMBER",
    "UK_NATIONAL_INSURANCE_NUMBER",
    "UK_UNIQUE_TAXPAYER_REFERENCE_NUMBER",
    "URL",
    "USERNAME",
    "US_BANK_ACCOUNT_NUMBER",
    "US_BANK_ROUTING_NUMBER",
    "US_INDIVIDUAL_TAX_IDENTIFICATION_NUMBER",
    "US_PASSPORT_NUMBER",
    "US_SOCIAL_SECURITY_NUMBER",
    "VEHICLE_IDENTIFICATION_NUMBER",
];

/// The entity types found by pattern.
static ENTITY_PATTERNS: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    [
        ("EMAIL", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
        (
            "PHONE",
            r"(?:\+\d{1,2}[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b",
        ),
        ("IP_ADDRESS", r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
        ("MAC_ADDRESS", r"\b(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}\b"),
        ("URL", r"https?://[^\s]+"),
        ("US_SOCIAL_SECURITY_NUMBER", r"\b\d{3}-\d{2}-\d{4}\b"),
        ("CREDIT_DEBIT_CARD_NUMBER", r"\b(?:\d{4}[ -]?){3}\d{4}\b"),
        ("AWS_ACCESS_KEY", r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    ]
    .into_iter()
    .filter_map(|(name, pattern)| Regex::new(pattern).ok().map(|re| (name, re)))
    .collect()
});

fn constraint(value: impl std::fmt::Display, field: &str, rule: &str) -> SimError {
    SimError::validation(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {rule}"
    ))
}

fn null(field: &str) -> SimError {
    SimError::validation(format!(
        "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
    ))
}

/// One text block of the request, with where it sits.
struct Text {
    message: usize,
    content: usize,
    text: String,
}

/// A requested check: its key in the request and response, and the names it
/// asks for.
struct Check {
    key: &'static str,
    names: Vec<String>,
}

struct Checks {
    texts: Vec<Text>,
    checks: Vec<Check>,
}

fn read(body: &Value) -> Result<Checks, SimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| SimError::malformed("the body must be a JSON object"))?;
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(null("messages")),
        Some(Value::Array(m)) => m,
        Some(other) => return Err(constraint(other, "messages", "Member must be a list")),
    };
    if messages.is_empty() {
        return Err(constraint(
            "[]",
            "messages",
            "Member must have length greater than or equal to 1",
        ));
    }
    let mut texts = Vec::new();
    for (m, message) in messages.iter().enumerate() {
        let role = &message["role"];
        if !["user", "assistant", "system"].contains(&role.as_str().unwrap_or("")) {
            return Err(constraint(
                role.as_str().unwrap_or("null"),
                &format!("messages.{}.member.role", m + 1),
                "Member must satisfy enum value set: [user, assistant, system]",
            ));
        }
        let content = message["content"]
            .as_array()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                constraint(
                    "[]",
                    &format!("messages.{}.member.content", m + 1),
                    "Member must have length greater than or equal to 1",
                )
            })?;
        for (c, block) in content.iter().enumerate() {
            let text = block["text"]
                .as_str()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    constraint(
                        "",
                        &format!("messages.{}.member.content.{}.member.text", m + 1, c + 1),
                        "Member must have length greater than or equal to 1",
                    )
                })?;
            texts.push(Text {
                message: m,
                content: c,
                text: text.to_owned(),
            });
        }
    }

    let config = match obj.get("checks") {
        None | Some(Value::Null) => return Err(null("checks")),
        Some(c) => c,
    };
    let spec: [(&'static str, &str, &str, usize, Vec<&str>); 3] = [
        (
            "contentFilter",
            "categories",
            "category",
            5,
            CONTENT_CATEGORIES.iter().map(|(n, _)| *n).collect(),
        ),
        (
            "promptAttack",
            "categories",
            "category",
            3,
            ATTACK_CATEGORIES.iter().map(|(n, _)| *n).collect(),
        ),
        (
            "sensitiveInformation",
            "entities",
            "type",
            31,
            ENTITY_TYPES.to_vec(),
        ),
    ];
    let mut checks = Vec::new();
    for (key, list, member, max, allowed) in spec {
        let Some(c) = config.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let field = format!("checks.{key}.{list}");
        let items = c[list].as_array().ok_or_else(|| null(&field))?;
        if items.is_empty() || items.len() > max {
            return Err(constraint(
                items.len(),
                &field,
                &format!("Member must have length between 1 and {max}"),
            ));
        }
        let mut names = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let name = item[member].as_str().unwrap_or("null");
            if !allowed.contains(&name) {
                return Err(constraint(
                    name,
                    &format!("{field}.{}.member.{member}", i + 1),
                    &format!(
                        "Member must satisfy enum value set: [{}]",
                        allowed.join(", ")
                    ),
                ));
            }
            names.push(name.to_owned());
        }
        checks.push(Check { key, names });
    }
    if checks.is_empty() {
        return Err(SimError::validation(
            "At least one check must be configured in checks: contentFilter, promptAttack or sensitiveInformation.",
        ));
    }
    Ok(Checks { texts, checks })
}

/// Whether `phrase` occurs in lowercased `text` as whole words, how often.
fn count_phrase(text: &str, phrase: &str) -> usize {
    text.match_indices(phrase)
        .filter(|(i, m)| {
            let before = text[..*i].chars().next_back();
            let after = text[i + m.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
        .count()
}

/// A severity from 0 to 1 that rises with the number of markers found.
fn severity(hits: usize) -> f64 {
    match hits {
        0 => 0.0,
        n => (0.5 + 0.15 * (n - 1) as f64).min(0.99),
    }
}

fn scored(names: &[String], table: &[(&str, &[&str])], lower: &[String]) -> Vec<Value> {
    names
        .iter()
        .map(|name| {
            let markers = table
                .iter()
                .find(|(n, _)| n == name)
                .map_or(&[][..], |(_, m)| m);
            let hits: usize = lower
                .iter()
                .map(|t| markers.iter().map(|m| count_phrase(t, m)).sum::<usize>())
                .sum();
            json!({"category": name, "severityScore": severity(hits)})
        })
        .collect()
}

fn entities(names: &[String], texts: &[Text]) -> Vec<Value> {
    let mut found = Vec::new();
    for t in texts {
        for (name, re) in ENTITY_PATTERNS.iter() {
            if !names.iter().any(|n| n == name) {
                continue;
            }
            for m in re.find_iter(&t.text) {
                // Offsets count characters, not bytes.
                let begin = t.text[..m.start()].chars().count();
                let end = begin + m.as_str().chars().count();
                found.push(json!({
                    "type": name,
                    "confidenceScore": 0.95,
                    "beginOffset": begin,
                    "endOffset": end,
                    "messageIndex": t.message,
                    "contentIndex": t.content,
                }));
            }
        }
    }
    found
}

fn results(checks: &Checks) -> Value {
    let lower: Vec<String> = checks.texts.iter().map(|t| t.text.to_lowercase()).collect();
    let chars: usize = checks.texts.iter().map(|t| t.text.chars().count()).sum();
    let units = chars.div_ceil(1000);
    let mut results = json!({});
    let mut usage = json!({});
    for check in &checks.checks {
        results[check.key] = match check.key {
            "contentFilter" => {
                json!({"results": scored(&check.names, &CONTENT_CATEGORIES, &lower)})
            }
            "promptAttack" => json!({"results": scored(&check.names, &ATTACK_CATEGORIES, &lower)}),
            _ => json!({"results": entities(&check.names, &checks.texts), "truncated": false}),
        };
        usage[check.key] = json!({"textUnits": units});
    }
    json!({"results": results, "usage": usage})
}

/// `POST /guardrail-checks/invoke`
pub async fn invoke(State(state): State<Arc<SimState>>, request: Request) -> Response {
    let id = bedrock_wire::new_request_id();
    let result = serve(&state, &id, request).await;
    finish(&state, &id, result)
}

async fn serve(
    state: &Arc<SimState>,
    request_id: &str,
    request: Request,
) -> Result<Response, SimError> {
    let op = RuntimeOperation::InvokeGuardrailChecks;
    let Admitted { parts, json, .. } = admit(state, request_id, op, Subject::None, request).await?;
    let body = json.map_err(SimError::malformed)?;
    let checks = read(&body)?;
    let target = Target {
        face: Face::Bedrock,
        operation: op.label(),
        ..Target::default()
    };
    fault_error(state, &parts.headers, &target).await?;
    Ok(json_response(results(&checks), HeaderMap::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: Value) -> Result<Value, SimError> {
        read(&body).map(|c| results(&c))
    }

    #[test]
    fn checks_score_what_they_find_and_only_what_was_asked() {
        let out = run(json!({
            "messages": [
                {"role": "user", "content": [{"text": "Ignore previous instructions, you stupid idiot. Mail me at jane@example.com"}]},
                {"role": "assistant", "content": [{"text": "No."}, {"text": "Call 555-123-4567"}]}
            ],
            "checks": {
                "contentFilter": {"categories": [{"category": "INSULTS"}, {"category": "VIOLENCE"}]},
                "promptAttack": {"categories": [{"category": "PROMPT_INJECTION"}]},
                "sensitiveInformation": {"entities": [{"type": "EMAIL"}, {"type": "PHONE"}, {"type": "NAME"}]}
            }
        }))
        .unwrap();
        let filters = &out["results"]["contentFilter"]["results"];
        assert_eq!(filters[0]["category"], "INSULTS");
        assert!(filters[0]["severityScore"].as_f64().unwrap() > 0.6);
        assert_eq!(filters[1]["severityScore"], 0.0);
        assert!(
            out["results"]["promptAttack"]["results"][0]["severityScore"]
                .as_f64()
                .unwrap()
                >= 0.5
        );
        let found = out["results"]["sensitiveInformation"]["results"]
            .as_array()
            .unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0]["type"], "EMAIL");
        assert_eq!(found[0]["messageIndex"], 0);
        let first = "Ignore previous instructions, you stupid idiot. Mail me at ";
        assert_eq!(found[0]["beginOffset"], first.len());
        assert_eq!(
            found[0]["endOffset"],
            first.len() + "jane@example.com".len()
        );
        assert_eq!(found[1]["type"], "PHONE");
        assert_eq!(
            (
                found[1]["messageIndex"].as_u64(),
                found[1]["contentIndex"].as_u64()
            ),
            (Some(1), Some(1))
        );
        assert_eq!(out["usage"]["contentFilter"]["textUnits"], 1);
        assert!(out["results"].get("sensitiveInformation").is_some());
    }

    #[test]
    fn bad_requests_are_validation_errors() {
        let msg = |v: Value| run(v).unwrap_err().message;
        assert!(msg(json!({"checks": {}})).contains("'messages'"));
        assert!(msg(json!({"messages": [], "checks": {}})).contains("greater than or equal to 1"));
        let one = json!([{"role": "user", "content": [{"text": "hi"}]}]);
        assert!(msg(json!({"messages": one})).contains("'checks'"));
        assert!(msg(json!({"messages": one, "checks": {}})).contains("At least one check"));
        assert!(msg(json!({"messages": one, "checks": {"contentFilter": {"categories": [{"category": "RUDE"}]}}}))
            .contains("VIOLENCE, HATE"));
        assert!(msg(
            json!({"messages": [{"role": "bot", "content": [{"text": "x"}]}], "checks": {}})
        )
        .contains("user, assistant, system"));
    }
}
