//! JsonBody: validation as a tree parse would do it, the head, edits spliced
//! into the text, and the tree built only when asked for.

use super::*;
use serde_json::json;

fn body(text: &str) -> JsonBody {
    JsonBody::parse(Bytes::from(text.to_owned()), 64).unwrap()
}

#[test]
fn nesting_is_counted_outside_strings_only() {
    assert!(!nesting_exceeds(br#"{"a":[{"b":1}]}"#, 3));
    assert!(nesting_exceeds(br#"{"a":[{"b":[1]}]}"#, 3));
    assert!(!nesting_exceeds(br#"{"a":"[[[[[[[[\"[[["}"#, 1));
    // More opening brackets than the limit, side by side: not deeper.
    assert!(!nesting_exceeds(br#"{"a":[[],[],[],[]]}"#, 3));
    assert!(nesting_exceeds(br#"{"a":[[],[],[],[]]}"#, 2));
    let deep = "[".repeat(5000) + &"]".repeat(5000);
    assert!(nesting_exceeds(deep.as_bytes(), 64));
}

#[test]
fn bad_bodies_get_clear_messages_either_way() {
    let deep = "[".repeat(5000) + &"]".repeat(5000);
    let deep_object = format!("{{\"a\":{deep}}}");
    let cases: [(&[u8], &str); 7] = [
        (b"{\"a\": \"\xff\"}", "UTF-8"),
        (deep.as_bytes(), "nested deeper"),
        (deep_object.as_bytes(), "nested deeper"),
        (b"{oops", "Malformed input request"),
        (b"[1]", "JSON object"),
        (b"{\"a\":1} x", "trailing characters"),
        (
            b"{\"messages\":[{\"role\":\"user\",}]}",
            "Malformed input request",
        ),
    ];
    for (text, wanted) in cases {
        let tree = parse_json(text, 64).unwrap_err();
        assert!(tree.message.contains(wanted), "{}", tree.message);
        let lazy = JsonBody::parse(Bytes::copy_from_slice(text), 64).unwrap_err();
        assert!(lazy.message.contains(wanted), "{}", lazy.message);
        assert_eq!(lazy.kind, tree.kind);
    }
    assert!(parse_json(br#"{"messages":[]}"#, 64).is_ok());
}

#[test]
fn a_head_member_cannot_be_made_to_cost_a_multiple_of_the_body() {
    let items = vec![json!({"a": 1}); 20_000];
    let text = json!({"messages": [], "guardrailConfig": {"guardrailIdentifier": "g", "x": items}});
    let e = JsonBody::parse(Bytes::from(text.to_string()), 64).unwrap_err();
    assert_eq!(e.kind, crate::error::ErrorKind::Validation);
    assert!(
        e.message.contains("`guardrailConfig` is larger than"),
        "{}",
        e.message
    );
    // The same bulk anywhere else is the tree's business, built on demand.
    let text = json!({"messages": [], "futureField": items});
    assert!(JsonBody::parse(Bytes::from(text.to_string()), 64).is_ok());
}

#[test]
fn the_head_holds_the_small_members_and_the_tree_waits() {
    let b = body(
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],
            "inferenceConfig":{"temperature":0,"maxTokens":5},
            "performanceConfig":{"latency":"optimized"}}"#,
    );
    assert_eq!(
        b.head(),
        &json!({"inferenceConfig":{"temperature":0,"maxTokens":5},
                "performanceConfig":{"latency":"optimized"}})
    );
    assert!(b.has("messages") && !b.has("system"));
    assert!(!b.has_tree(), "nothing asked for the tree yet");
    assert_eq!(b.tree()["messages"][0]["content"][0]["text"], "hi");
    assert!(b.has_tree());
}

#[test]
fn a_head_member_the_body_lacks_parses_nothing() {
    let b = body(
        r#"{"messages":[],"inferenceConfig":{"maxTokens":5},
            "performanceConfig":{"latency":"optimized"}}"#,
    );
    // A pass-through call asks for the members it acts on; absent ones cost
    // a look at the names, and the head is not built.
    assert_eq!(b.head_member("serviceTier"), None);
    assert_eq!(b.head_member("guardrailConfig"), None);
    assert!(b.head.get().is_none(), "no head member was read yet");
    // A present one builds the head, once, with every head member in it.
    assert_eq!(
        b.head_member("performanceConfig"),
        Some(&json!({"latency":"optimized"}))
    );
    assert_eq!(b.head()["inferenceConfig"]["maxTokens"], 5);
    assert_eq!(b.head_member("serviceTier"), None);
    // A repeated member: the last one counts, as in a tree.
    let twice = body(r#"{"serviceTier":{"type":"flex"},"serviceTier":{"type":"priority"}}"#);
    assert_eq!(
        twice.head_member("serviceTier"),
        Some(&json!({"type":"priority"}))
    );
    assert_eq!(
        twice.head_member("serviceTier"),
        twice.tree().get("serviceTier")
    );
}

#[test]
fn a_head_member_a_tree_parse_refuses_is_refused_when_the_body_is_read() {
    // What the syntax pass lets through but a tree parse refuses (a number no
    // f64 holds, a lone surrogate) is refused at once, as the tree parse
    // would: the head, built later, never lacks a member the body has (a
    // guardrail the key may not use cannot hide behind a bad field).
    for text in [
        r#"{"messages":[],"temperature":1e400}"#,
        r#"{"messages":[],"inferenceConfig":{"maxTokens":5,"x":1e400}}"#,
        r#"{"messages":[],"guardrailConfig":{"guardrailIdentifier":"B","x":"\ud800"}}"#,
        r#"{"guardrailConfig":{"guardrailIdentifier":"A"},"guardrailConfig":{"guardrailIdentifier":"B","x":"\ud800"}}"#,
    ] {
        let lazy = JsonBody::parse(Bytes::from(text.to_owned()), 64).unwrap_err();
        let tree = parse_json(text.as_bytes(), 64).unwrap_err();
        assert!(
            lazy.message.starts_with("Malformed input request"),
            "{}",
            lazy.message
        );
        assert!(
            tree.message.starts_with("Malformed input request"),
            "{}",
            tree.message
        );
    }
    // The same bytes outside the head are the tree's business, as before.
    assert!(JsonBody::parse(Bytes::from_static(br#"{"messages":[],"x":1e400}"#), 64).is_ok());
}

#[test]
fn an_edit_of_the_head_splices_the_text() {
    // The client's formatting and number spelling stay as sent.
    let text = r#"{ "messages" : [ {"role":"user","content":[{"text":"1.50"}]} ],
        "inferenceConfig": {"temperature": 1.50},
        "serviceTier": {"type": "flex"} }"#;
    let b = body(text);
    assert_eq!(b.edited(|_| {}), b.raw(), "no change: the same bytes");
    let edited = b.edited(|head| {
        head["serviceTier"] = json!({"type": "priority"});
        head["performanceConfig"] = json!({"latency": "optimized"});
    });
    let s = std::str::from_utf8(&edited).unwrap();
    assert_eq!(
        s,
        r#"{"messages":[ {"role":"user","content":[{"text":"1.50"}]} ],"inferenceConfig":{"temperature": 1.50},"serviceTier":{"type":"priority"},"performanceConfig":{"latency":"optimized"}}"#
    );
    let removed = b.edited(|head| {
        head.as_object_mut().unwrap().remove("serviceTier");
    });
    let v: Value = serde_json::from_slice(&removed).unwrap();
    assert!(v.get("serviceTier").is_none() && v.get("messages").is_some());
    assert!(!b.has_tree(), "an edit of the head builds no tree");
}

#[test]
fn edits_agree_with_editing_the_tree() {
    let texts = [
        r#"{"messages":[],"serviceTier":{"type":"flex"},"serviceTier":{"type":"default"}}"#,
        r#"{"a":{"b":[1,2,{"c":null}]},"performanceConfig":{"latency":"standard","x":1}}"#,
        r#"{"\u0041":"escaped name","inferenceConfig":{}}"#,
    ];
    for text in texts {
        let edit = |head: &mut Value| {
            crate::service_tier::apply_converse(head, bedrock_wire::tier::ServiceTier::Priority);
            crate::latency::apply_converse(head, bedrock_wire::tier::LatencyTier::Optimized);
        };
        let mut tree: Value = serde_json::from_str(text).unwrap();
        edit(&mut tree);
        let spliced: Value = serde_json::from_slice(&body(text).edited(edit)).unwrap();
        assert_eq!(spliced, tree, "{text}");
        // Kept: the head and the text move together.
        let mut kept = body(text);
        kept.edit(edit);
        assert_eq!(serde_json::from_slice::<Value>(kept.raw()).unwrap(), tree);
        assert_eq!(kept.head()["serviceTier"]["type"], "priority");
        assert_eq!(kept.tree(), &tree);
        // A body the proxy built edits its tree.
        let mut built = JsonBody::from_value(serde_json::from_str(text).unwrap());
        built.edit(edit);
        assert_eq!(built.raw(), &Bytes::from(tree.to_string()));
    }
}

#[test]
fn long_members_are_read_element_by_element_from_the_text() {
    let b = body(
        r#"{"messages": [ {"role":"user","content":"a"} , {"role":"user","content":"b"}, 7 ],
            "toolConfig": {"tools": 1, "tools": [ ]},
            "messages2": {}}"#,
    );
    let mut seen = Vec::new();
    assert!(each_element(b.member_text("messages").unwrap(), |e| seen
        .push(e.get().to_owned())));
    assert_eq!(
        seen,
        [
            r#"{"role":"user","content":"a"}"#,
            r#"{"role":"user","content":"b"}"#,
            "7"
        ]
    );
    assert!(!each_element(b.member_text("messages2").unwrap(), |_| {}));
    // The last of a repeated name counts, as in a tree.
    let tools = member(b.member_text("toolConfig").unwrap(), "tools").unwrap();
    assert_eq!(tools.get(), "[ ]");
    assert!(member("[1]", "tools").is_none());
    assert!(b.member_text("system").is_none());
    assert!(!b.has_tree());
}

#[test]
fn splices_go_where_they_are_put_and_the_head_edit_after() {
    let text = r#"{"messages":[1, 2],"serviceTier":{"type":"flex"}}"#;
    let b = body(text);
    let end = text.find(']').unwrap();
    let one = text.find('1').unwrap();
    let spliced = b.spliced(
        vec![(end..end, ",3".into()), (one..one + 1, "0".into())],
        |_| {},
    );
    assert_eq!(
        std::str::from_utf8(&spliced).unwrap(),
        r#"{"messages":[0, 2,3],"serviceTier":{"type":"flex"}}"#
    );
    let spliced = b.spliced(vec![(end..end, ",3".into())], |head| {
        crate::service_tier::apply_converse(head, bedrock_wire::tier::ServiceTier::Priority)
    });
    assert_eq!(
        std::str::from_utf8(&spliced).unwrap(),
        r#"{"messages":[1, 2,3],"serviceTier":{"type":"priority"}}"#
    );
    // Out of range, or overlapping one before it: left out, never a panic.
    let spliced = b.spliced(
        vec![
            (0..text.len() + 5, "x".into()),
            (end..end, ",3".into()),
            (end - 1..end + 1, "9]".into()),
        ],
        |_| {},
    );
    assert_eq!(
        std::str::from_utf8(&spliced).unwrap(),
        r#"{"messages":[1, 9],"serviceTier":{"type":"flex"}}"#
    );
}

#[test]
fn a_body_the_proxy_built_locates_its_members_in_its_text() {
    let built = JsonBody::from_value(json!({"system": [{"text": "s"}], "messages": []}));
    assert_eq!(built.member_text("system"), Some(r#"[{"text":"s"}]"#));
    assert_eq!(built.member_text("messages"), Some("[]"));
}

#[test]
fn member_names_are_found_with_and_without_escapes() {
    // Names kept as spans of the text, and one spelled with escapes (kept
    // unescaped): each is found by its value, and the last repeat counts.
    let b = body(
        r#"{"mess\u0061ges":[1],"system":"a","\u0073ystem":"b","inferenceConfig":{"maxTokens":3}}"#,
    );
    assert!(b.has("messages") && b.has("system") && b.has("inferenceConfig"));
    assert!(!b.has("mess\\u0061ges") && !b.has("messag"));
    assert_eq!(b.member_text("messages"), Some("[1]"));
    assert_eq!(b.member_text("system"), Some(r#""b""#));
    assert_eq!(b.head(), &json!({"inferenceConfig":{"maxTokens":3}}));
    let spliced = b.edited(|tree| tree["inferenceConfig"]["maxTokens"] = json!(4));
    let tree: serde_json::Value = serde_json::from_slice(&spliced).unwrap();
    assert_eq!(tree["inferenceConfig"]["maxTokens"], 4);
    assert_eq!(tree["messages"], json!([1]));
}
