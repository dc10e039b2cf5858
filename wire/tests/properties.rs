//! Property tests of the parsers that read untrusted bytes: the event-stream
//! splitter and decoder, SigV4 `Authorization` parsing and verification, and
//! canonical JSON (the response cache's key). No input panics or hangs; errors
//! are typed; equivalent input gives equal output and changed input does not.
//!
//! Case counts are small by default so the test command stays quick;
//! `PROPTEST_CASES=10000 cargo nextest run -p bedrock-wire properties` runs more.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bedrock_wire::canonical::{request_bytes, request_bytes_from_text, Markers};
use bedrock_wire::eventstream::{
    decode, event_frame, exception_frame, read_upload, EnvelopeSigner, EnvelopeVerifier, FrameKind,
    FrameSplitter, Upload,
};
use bedrock_wire::sigv4::{parse_authorization, verify, VerifyError};
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime};

/// `PROPTEST_CASES`, or `default`.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(cases)
}

// --- Event streams ---

proptest! {
    #![proptest_config(cases(128))]

    /// A bidirectional stream's upload: any bytes are read or refused by the
    /// envelope reader and the chunk-signature check without panicking, and a
    /// signed upload verifies only unchanged.
    #[test]
    fn uploads_are_read_or_refused_and_only_an_unchanged_chain_verifies(
        junk in prop::collection::vec(any::<u8>(), 0..512),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..5),
        flip in any::<prop::sample::Index>(),
    ) {
        let _ = read_upload(Bytes::from(junk.clone()));
        let mut verifier = EnvelopeVerifier::new("AKID", "secret", "us-east-2", "bedrock", "seed");
        let _ = verifier.verify(Bytes::from(junk));

        let creds = Credentials::new("AKID", "secret", None, None, "t");
        let mut signer = EnvelopeSigner::new(creds, "us-east-2", "bedrock", "seed".into());
        let now = SystemTime::now();
        let envelopes: Vec<Bytes> = payloads
            .iter()
            .map(|p| signer.sign(Some(event_frame("chunk", p.clone())), now).unwrap())
            .collect();
        let mut verifier = EnvelopeVerifier::new("AKID", "secret", "us-east-2", "bedrock", "seed");
        for (e, p) in envelopes.iter().zip(&payloads) {
            let Upload::Message(m) = verifier.verify(e.clone()).unwrap() else {
                panic!("a message expected");
            };
            let frame = decode(m).unwrap();
            prop_assert_eq!(frame.payload.as_ref(), p.as_slice());
        }
        // One changed byte anywhere in the first envelope: refused.
        let mut changed = envelopes[0].to_vec();
        let i = flip.index(changed.len());
        changed[i] ^= 0x01;
        let mut verifier = EnvelopeVerifier::new("AKID", "secret", "us-east-2", "bedrock", "seed");
        prop_assert!(verifier.verify(Bytes::from(changed)).is_err());
    }
}

fn frames() -> impl Strategy<Value = Vec<(String, Vec<u8>, bool)>> {
    prop::collection::vec(
        (
            "[a-zA-Z]{1,24}",
            prop::collection::vec(any::<u8>(), 0..300),
            any::<bool>(),
        ),
        1..8,
    )
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn any_bytes_in_any_chunks_never_panic_the_splitter_or_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        cut in prop::collection::vec(1usize..64, 1..16),
    ) {
        let mut splitter = FrameSplitter::new();
        let mut at = 0;
        for step in cut.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + step).min(bytes.len());
            splitter.push(&bytes[at..end]);
            at = end;
            while let Ok(Some(frame)) = splitter.next_frame() {
                let _ = decode(frame);
            }
        }
        let _ = decode(Bytes::from(bytes));
    }

    #[test]
    fn frames_survive_any_chunking_and_any_changed_byte_is_caught(
        frames in frames(),
        chunk in 1usize..97,
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for (name, payload, exception) in &frames {
            if *exception {
                let message = String::from_utf8_lossy(payload).into_owned();
                stream.extend_from_slice(&exception_frame(name, &message));
                sent.push((FrameKind::Exception(name.clone()), None));
            } else {
                stream.extend_from_slice(&event_frame(name, payload.clone()));
                sent.push((FrameKind::Event(name.clone()), Some(payload.clone())));
            }
        }
        let mut splitter = FrameSplitter::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            splitter.push(piece);
            while let Some(frame) = splitter.next_frame().unwrap() {
                got.push(decode(frame).unwrap());
            }
        }
        prop_assert_eq!(splitter.pending(), 0);
        prop_assert_eq!(got.len(), sent.len());
        for (frame, (kind, payload)) in got.iter().zip(&sent) {
            prop_assert_eq!(&frame.kind, kind);
            if let Some(p) = payload {
                prop_assert_eq!(frame.payload.as_ref(), p.as_slice());
            }
        }
        // One changed bit anywhere in a frame: a CRC catches it.
        let first = event_frame(&frames[0].0, frames[0].1.clone());
        let mut corrupt = first.to_vec();
        let i = flip.index(corrupt.len());
        corrupt[i] ^= 1 << bit;
        prop_assert!(decode(Bytes::from(corrupt)).is_err());
    }
}

// --- SigV4 ---

const PATH: &str = "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse";

/// Signs like an SDK does, with `aws-sigv4`'s defaults.
fn signed(
    body: &[u8],
    time: SystemTime,
    region: &str,
    extra: &[(String, String)],
) -> http::HeaderMap {
    let identity: Identity = Credentials::new("AKIDEXAMPLE", "secret", None, None, "t").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let mut base: Vec<(String, String)> = vec![
        ("host".into(), "127.0.0.1:8080".into()),
        ("content-type".into(), "application/json".into()),
    ];
    base.extend_from_slice(extra);
    let request = SignableRequest::new(
        "POST",
        PATH,
        base.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    let mut headers = http::HeaderMap::new();
    for (k, v) in &base {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    for (k, v) in instructions.headers() {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    headers
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn any_authorization_text_parses_or_not_without_panicking(text in "\\PC{0,300}") {
        if let Some(auth) = parse_authorization(&text) {
            prop_assert!(!auth.access_key_id.is_empty());
        }
        let _ = parse_authorization(&format!("AWS4-HMAC-SHA256 {text}"));
        let _ = parse_authorization(&format!("aws4-hmac-sha256 Credential={text}, SignedHeaders={text}, Signature={text}"));
    }

    #[test]
    fn parsed_fields_are_the_ones_written(
        key in "[A-Z0-9]{4,20}",
        date in "[0-9]{8}",
        region in "[a-z]{2}-[a-z]{4,9}-[1-9]",
        headers in prop::collection::vec("[a-z][a-z0-9-]{0,15}", 1..6),
        signature in "[0-9a-f]{64}",
        upper in any::<bool>(),
    ) {
        let scheme = if upper { "AWS4-HMAC-SHA256" } else { "aws4-hmac-sha256" };
        let text = format!(
            "{scheme} Credential={key}/{date}/{region}/bedrock/aws4_request, SignedHeaders={}, Signature={signature}",
            headers.join(";")
        );
        let auth = parse_authorization(&text).unwrap();
        prop_assert_eq!(auth.access_key_id, key.as_str());
        prop_assert_eq!(auth.date, date.as_str());
        prop_assert_eq!(auth.region, region.as_str());
        prop_assert_eq!(auth.service, "bedrock");
        prop_assert_eq!(auth.signed_headers, headers.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(auth.signature, signature.as_str());
    }

    #[test]
    fn what_an_sdk_signs_verifies_and_any_change_does_not(
        body in prop::collection::vec(any::<u8>(), 0..512),
        other_body in prop::collection::vec(any::<u8>(), 0..512),
        region in "[a-z]{2}-[a-z]{4,9}-[1-9]",
        extra in prop::collection::vec(("x-amz-[a-z]{1,10}", "[ -~]{0,40}"), 0..3),
        skew_s in 0u64..600,
    ) {
        let now = SystemTime::now();
        let signed_at = now - Duration::from_secs(skew_s);
        let extra: Vec<(String, String)> = {
            let mut seen = std::collections::HashSet::new();
            extra.into_iter()
                .filter(|(k, _)| k != "x-amz-date" && k != "x-amz-content-sha256" && seen.insert(k.clone()))
                .map(|(k, v)| (k, v.trim().to_owned()))
                .collect()
        };
        let headers = signed(&body, signed_at, &region, &extra);
        let value = headers["authorization"].to_str().unwrap().to_owned();
        let auth = parse_authorization(&value).unwrap();
        prop_assert_eq!(verify(&auth, "secret", "POST", PATH, &headers, &body, now), Ok(()));
        prop_assert_eq!(
            verify(&auth, "not-the-secret", "POST", PATH, &headers, &body, now),
            Err(VerifyError::Mismatch)
        );
        if other_body != body {
            prop_assert_eq!(
                verify(&auth, "secret", "POST", PATH, &headers, &other_body, now),
                Err(VerifyError::Mismatch)
            );
        }
        prop_assert!(verify(&auth, "secret", "PUT", PATH, &headers, &body, now).is_err());
        prop_assert_eq!(
            verify(&auth, "secret", "POST", PATH, &headers, &body, now + Duration::from_secs(3600)),
            Err(VerifyError::Expired)
        );
    }
}

// --- Canonical JSON ---

/// JSON values whose numbers a `Value` holds exactly.
fn json() -> impl Strategy<Value = Value> {
    json_named("[a-zA-Z_]{1,8}".boxed(), 4, 48)
}

/// Request-shaped JSON: like [`json`], but member names are often the ones
/// the canonical form treats specially (the markers and where they are read,
/// the left-out member), so markers are dropped and members skipped at
/// random places.
fn request_json() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        "[a-zA-Z_]{1,8}",
        Just("messages".to_owned()),
        Just("content".to_owned()),
        Just("system".to_owned()),
        Just("toolConfig".to_owned()),
        Just("tools".to_owned()),
        Just("cachePoint".to_owned()),
        Just("cache_control".to_owned()),
        Just("performanceConfig".to_owned()),
    ];
    json_named(name.boxed(), 5, 64)
}

/// JSON values (numbers a `Value` holds exactly) whose members are named by
/// `name`, nested at most `depth` levels, about `size` nodes in all.
fn json_named(name: BoxedStrategy<String>, depth: u32, size: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, size, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((name.clone(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// The same value written another way: members in reverse order, spaces
/// around every token, strings with escaped characters, numbers with a
/// trailing `.0` or an exponent.
fn respelled(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push_str("{ ");
            for (i, (k, v)) in map.iter().rev().enumerate() {
                if i > 0 {
                    out.push_str(" , ");
                }
                out.push_str(&escaped(k));
                out.push_str(" : ");
                respelled(v, out);
            }
            out.push_str(" }");
        }
        Value::Array(items) => {
            out.push_str("[ ");
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(" ,\n");
                }
                respelled(v, out);
            }
            out.push_str(" ]");
        }
        Value::String(s) => out.push_str(&escaped(s)),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            out.push_str(&format!("{n}0e-1"));
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A JSON string literal with every character escaped as `\uXXXX`.
fn escaped(s: &str) -> String {
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn text_and_value_give_the_same_canonical_bytes(value in json()) {
        let text = value.to_string();
        for markers in [Markers::Keep, Markers::Converse, Markers::Anthropic] {
            prop_assert_eq!(
                request_bytes_from_text(text.as_bytes(), markers, &["performanceConfig"]).unwrap(),
                request_bytes(&value, markers, &["performanceConfig"])
            );
        }
    }

    #[test]
    fn respelled_text_and_the_value_give_the_same_canonical_bytes(value in request_json()) {
        // Members in reverse order: the text reader sorts what it reads.
        let mut text = String::new();
        respelled(&value, &mut text);
        for markers in [Markers::Keep, Markers::Converse, Markers::Anthropic] {
            prop_assert_eq!(
                request_bytes_from_text(text.as_bytes(), markers, &["performanceConfig"]).unwrap(),
                request_bytes(&value, markers, &["performanceConfig"])
            );
        }
    }

    #[test]
    fn equivalent_json_gives_the_same_bytes(value in json()) {
        let mut other = String::new();
        respelled(&value, &mut other);
        prop_assert_eq!(
            request_bytes_from_text(other.as_bytes(), Markers::Keep, &[]).unwrap(),
            request_bytes_from_text(value.to_string().as_bytes(), Markers::Keep, &[]).unwrap()
        );
    }

    #[test]
    fn any_changed_value_gives_different_bytes(value in json(), pick in any::<prop::sample::Index>(), replacement in json()) {
        let mut changed = value.clone();
        let mut leaves = Vec::new();
        paths(&value, &mut Vec::new(), &mut leaves);
        let path = &leaves[pick.index(leaves.len())];
        let slot = path.iter().fold(&mut changed, |v, step| match step {
            Step::Key(k) => &mut v[k.as_str()],
            Step::At(i) => &mut v[*i],
        });
        *slot = replacement;
        prop_assume!(!same(&changed, &value));
        prop_assert_ne!(
            request_bytes_from_text(changed.to_string().as_bytes(), Markers::Keep, &[]).unwrap(),
            request_bytes_from_text(value.to_string().as_bytes(), Markers::Keep, &[]).unwrap()
        );
    }

    #[test]
    fn numbers_are_equal_exactly_when_their_decimal_values_are(
        digits in "[1-9][0-9]{0,30}",
        exponent in -40i64..40,
        other_digits in "[1-9][0-9]{0,30}",
        shift in 0usize..5,
    ) {
        let canon = |text: &str| String::from_utf8(
            request_bytes_from_text(format!("[{text}]").as_bytes(), Markers::Keep, &[]).unwrap()
        ).unwrap();
        // digits × 10^exponent, spelled with more zeros and a moved point.
        let plain = format!("{digits}e{exponent}");
        let zeros = "0".repeat(shift);
        let respelled = format!("{digits}.{zeros}e{exponent}");
        let shifted = format!("{digits}{zeros}e{}", exponent - shift as i64);
        prop_assert_eq!(canon(&plain), canon(&respelled));
        prop_assert_eq!(canon(&plain), canon(&shifted));
        if digits != other_digits {
            prop_assert_ne!(canon(&plain), canon(&format!("{other_digits}e{exponent}")));
        }
    }

    #[test]
    fn any_text_reads_or_not_without_panicking(text in "\\PC{0,200}") {
        let _ = request_bytes_from_text(text.as_bytes(), Markers::Converse, &[]);
    }
}

/// Whether two values are the same JSON (numbers by value).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

enum Step {
    Key(String),
    At(usize),
}

/// Every path to a value inside `value` (the value itself included).
fn paths(value: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(
        here.iter()
            .map(|s| match s {
                Step::Key(k) => Step::Key(k.clone()),
                Step::At(i) => Step::At(*i),
            })
            .collect(),
    );
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                here.push(Step::Key(k.clone()));
                paths(v, here, out);
                here.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                here.push(Step::At(i));
                paths(v, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}
