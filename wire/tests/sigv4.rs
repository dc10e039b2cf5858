//! SigV4 signing (`bedrock_wire::signing`, `client::sign_any`) held to AWS's
//! published test suite (vendored in tests/sigv4-suite) and, by property
//! tests, to `aws-sigv4`'s own `sign` and to the verifier (`sigv4::verify`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bedrock_wire::client::sign_any;
use bedrock_wire::signing::{self, Dialect, Keys};
use bedrock_wire::sigv4::{parse_amz_date, parse_authorization, verify};
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::Full;
use proptest::prelude::*;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One case of the suite: the request as the suite writes it down.
struct Case {
    name: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    context: serde_json::Value,
}

fn read_case(dir: &Path) -> Case {
    let text = std::fs::read_to_string(dir.join("request.txt")).unwrap();
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let first = lines.next().unwrap();
    let (method, rest) = first.split_once(' ').unwrap();
    let path = rest.strip_suffix(" HTTP/1.1").unwrap();
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            // An obsolete folded line continues the previous header's value.
            let last = headers.last_mut().unwrap();
            last.1.push(' ');
            last.1.push_str(line.trim());
        } else {
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.to_owned()));
        }
    }
    let context =
        serde_json::from_str(&std::fs::read_to_string(dir.join("context.json")).unwrap()).unwrap();
    Case {
        name: dir.file_name().unwrap().to_string_lossy().into_owned(),
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
        body: body.as_bytes().to_vec(),
        context,
    }
}

fn expected(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .trim_end_matches('\n')
        .to_owned()
}

#[test]
fn the_aws_signing_test_suite_signs_as_published() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sigv4-suite");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 29, "the vendored suite is there");
    let mut signed_whole = 0;
    for dir in &dirs {
        let case = read_case(dir);
        let ctx = &case.context;
        let creds = &ctx["credentials"];
        let secret = creds["secret_access_key"].as_str().unwrap();
        let akid = creds["access_key_id"].as_str().unwrap();
        let token = creds["token"]
            .as_str()
            .filter(|_| ctx["omit_session_token"].as_bool() != Some(true));
        let region = ctx["region"].as_str().unwrap();
        let service = ctx["service"].as_str().unwrap();
        let stamp: String = ctx["timestamp"]
            .as_str()
            .unwrap()
            .chars()
            .filter(|c| *c != '-' && *c != ':')
            .collect();
        let time = parse_amz_date(&stamp).unwrap();
        let amz_date = signing::amz_date(time);
        assert_eq!(amz_date, stamp, "{}", case.name);
        let payload_hash = signing::payload_hash(&case.body);

        // What the suite signs: the request's headers, x-amz-date, the
        // session token, and the payload hash when the context says so.
        let mut headers: Vec<(String, String)> = case.headers.clone();
        headers.push(("x-amz-date".into(), amz_date.clone()));
        if let Some(token) = token {
            headers.push(("x-amz-security-token".into(), token.into()));
        }
        if ctx["sign_body"].as_bool() == Some(true) {
            headers.push(("x-amz-content-sha256".into(), payload_hash.clone()));
        }
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        let mut joined: Vec<(String, String)> = Vec::new();
        for (name, value) in headers {
            match joined.last_mut() {
                Some(last) if last.0 == name => {
                    last.1.push(',');
                    last.1.push_str(&value);
                }
                _ => joined.push((name, value)),
            }
        }
        let signed: Vec<(&str, &str)> = joined
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let canonical = signing::canonical_request(
            Dialect::AwsSigv4,
            &case.method,
            &case.path,
            &signed,
            &payload_hash,
        );
        assert_eq!(
            canonical,
            expected(dir, "header-canonical-request.txt"),
            "{}",
            case.name
        );
        let scope = signing::scope(&amz_date[..8], region, service);
        let sts = signing::string_to_sign(&amz_date, &scope, &canonical);
        assert_eq!(
            sts,
            expected(dir, "header-string-to-sign.txt"),
            "{}",
            case.name
        );
        let signature = signing::signature(secret, &amz_date[..8], time, region, service, &sts);
        assert_eq!(
            signature,
            expected(dir, "header-signature.txt"),
            "{}",
            case.name
        );

        // The whole signer, where the path is a valid URI as written down
        // (the suite's raw UTF-8 and space paths are not).
        let host = case
            .headers
            .iter()
            .find(|(n, _)| n == "host")
            .map(|(_, v)| v.clone())
            .unwrap();
        let Ok(uri) = format!("https://{host}{}", case.path).parse::<http::Uri>() else {
            continue;
        };
        let mut request_headers: Vec<(String, String)> = case.headers.clone();
        if ctx["sign_body"].as_bool() == Some(true) {
            request_headers.push(("x-amz-content-sha256".into(), payload_hash.clone()));
        }
        let whole = signing::sign(
            &case.method,
            &uri,
            request_headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
            &payload_hash,
            Keys {
                access_key_id: akid,
                secret_access_key: secret,
                session_token: token,
            },
            region,
            service,
            time,
        )
        .unwrap();
        assert_eq!(whole.signature, signature, "{}", case.name);
        assert_eq!(whole.amz_date, amz_date);
        let names: Vec<&str> = signed.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            whole.authorization,
            format!(
                "AWS4-HMAC-SHA256 Credential={akid}/{scope}, SignedHeaders={}, Signature={signature}",
                names.join(";")
            ),
            "{}",
            case.name
        );
        signed_whole += 1;
    }
    assert!(
        signed_whole >= 25,
        "most cases signed whole: {signed_whole}"
    );
}

/// What `sign_any` did before it signed by itself: `aws-sigv4`'s `sign` with
/// default settings, applied to the request.
fn sign_with_aws_sigv4(
    request: &mut Request<Full<Bytes>>,
    url: &str,
    body: &[u8],
    credentials: Credentials,
    region: &str,
    time: SystemTime,
) -> String {
    let method = request.method().as_str().to_owned();
    let identity: Identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
    let signable = SignableRequest::new(&method, url, headers, SignableBody::Bytes(body)).unwrap();
    let (instructions, signature) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(request);
    signature
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[A-Za-z0-9._~:@!$'()*+,;=-]{1,12}",
        2 => "[a-z]{1,4}%3A[0-9]{1,3}",
        1 => Just(".".to_owned()),
        1 => Just("..".to_owned()),
        1 => Just(String::new()),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            "[A-Za-z0-9._~+-]{0,6}",
            "[A-Za-z0-9._~+/-]{0,8}|[a-z]{1,3}%2B[a-z]{0,3}",
        ),
        0..4,
    )
    .prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn header() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            Just("content-type".to_owned()),
            Just("accept".to_owned()),
            Just("user-agent".to_owned()),
            Just("x-amzn-trace-id".to_owned()),
            Just("x-amz-date".to_owned()),
            Just("x-amz-security-token".to_owned()),
            Just("x-amzn-bedrock-trace".to_owned()),
            "x-[a-z]{1,8}",
        ],
        "[ -~]{0,16}|[a-z]{1,4}( +|\t)[a-z]{1,4} {0,2}",
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sign_any_signs_as_aws_sigv4_does_and_the_verifier_accepts_it(
        segments in prop::collection::vec(segment(), 0..5),
        trailing in any::<bool>(),
        query in query(),
        headers in prop::collection::vec(header(), 0..6),
        body in prop::collection::vec(any::<u8>(), 0..64),
        token in prop::option::of("[A-Za-z0-9+/=]{8,40}"),
        secret in "[A-Za-z0-9+/]{8,40}",
        seconds in 1_400_000_000u64..2_000_000_000,
        port in prop_oneof![Just(""), Just(":443"), Just(":8443")],
    ) {
        let mut path = format!("/{}", segments.join("/"));
        if trailing && !path.ends_with('/') {
            path.push('/');
        }
        let url = if query.is_empty() {
            format!("https://bedrock-runtime.us-east-2.amazonaws.com{port}{path}")
        } else {
            format!("https://bedrock-runtime.us-east-2.amazonaws.com{port}{path}?{query}")
        };
        let time = UNIX_EPOCH + Duration::from_secs(seconds);
        let mut builder = Request::post(&url);
        for (name, value) in &headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder.body(Full::new(Bytes::from(body.clone()))).unwrap();
        let mut ours = request.clone();
        let mut theirs = request;
        let credentials = Credentials::new("AKIDEXAMPLE", secret.clone(), token.clone(), None, "t");
        let seed = sign_any(&mut ours, &body, credentials.clone(), "us-east-2", "bedrock", time)
            .unwrap();
        let expected = sign_with_aws_sigv4(&mut theirs, &url, &body, credentials, "us-east-2", time);
        prop_assert_eq!(&seed, &expected);
        prop_assert_eq!(ours.headers(), theirs.headers());

        // The verifier (what the proxy and the simulator run on incoming
        // requests) accepts it, with the Host header a client would send.
        let mut received: HeaderMap = ours.headers().clone();
        let authority = ours.uri().authority().unwrap().as_str().to_owned();
        let host = authority.strip_suffix(":443").unwrap_or(&authority);
        received.insert("host", host.parse().unwrap());
        let value = received["authorization"].to_str().unwrap().to_owned();
        let auth = parse_authorization(&value).unwrap();
        let path_and_query = ours.uri().path_and_query().unwrap().as_str().to_owned();
        prop_assert_eq!(
            verify(&auth, &secret, "POST", &path_and_query, &received, &body, time),
            Ok(())
        );
        prop_assert!(verify(&auth, "not-the-secret", "POST", &path_and_query, &received, &body, time).is_err());
    }
}
