//! Verifying an incoming SigV4 `Authorization` header.
//!
//! The signature is recomputed over exactly the headers the client listed as
//! signed, at the time in its `x-amz-date`, in the region and service of its
//! credential scope, then compared in constant time. The canonical request is
//! built by [`crate::signing`] (held to `aws-sigv4` and AWS's test suite by the
//! tests) and signed with a signing key derived once per day, region, service
//! and secret. Signing outgoing requests is [`crate::client`]'s business.
//!
//! Over HTTP/2 the AWS SDK for JavaScript signs the `:authority` pseudo-header
//! instead of `host`; such a request is checked by the JavaScript signer's
//! rules ([`canonical_request`]).

use crate::signing::{self, Dialect};
use http::HeaderMap;
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far a request's `x-amz-date` may be from now, as AWS allows.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// The parts of an `AWS4-HMAC-SHA256` Authorization header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub access_key_id: &'a str,
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub signed_headers: Vec<&'a str>,
    pub signature: &'a str,
}

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the Authorization header is not a valid AWS4-HMAC-SHA256 header")]
    Malformed,
    #[error("the request has no valid x-amz-date header")]
    BadDate,
    #[error("signature expired: the request time is more than 15 minutes from the server time")]
    Expired,
    #[error("a signed header is missing from the request: {0}")]
    MissingHeader(String),
    #[error("the x-amz-content-sha256 header does not match the body")]
    BodyHash,
    #[error("the request signature we calculated does not match the signature you provided")]
    Mismatch,
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/bedrock/aws4_request,
/// SignedHeaders=a;b, Signature=hex` (the scheme in any case, as HTTP allows);
/// `None` for anything else.
pub fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    const SCHEME: &str = "AWS4-HMAC-SHA256";
    let rest = value
        .get(..SCHEME.len())
        .filter(|s| s.eq_ignore_ascii_case(SCHEME))
        .and_then(|_| value.get(SCHEME.len()..))?;
    if !rest.starts_with(' ') {
        return None;
    }
    let rest = rest.trim_start();
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let mut scope = credential?.split('/');
    let auth = Authorization {
        access_key_id: scope.next()?,
        date: scope.next()?,
        region: scope.next()?,
        service: scope.next()?,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    };
    (scope.next()? == "aws4_request" && !auth.access_key_id.is_empty()).then_some(auth)
}

/// Parses an ISO 8601 basic timestamp (`20240101T120000Z`).
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3_600 + mi * 60 + sec).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// The value of a signed header: a pseudo-header from the request line or the
/// URI (HTTP/2 carries `:authority`, `:scheme` and `:path` there), `host` from
/// the URI's authority when the request has no `Host` header (HTTP/2 again),
/// any other from the headers (a repeated one as its values joined with `,`,
/// as signers sign it).
fn signed_value<'a>(
    name: &str,
    method: &'a str,
    uri: &'a http::Uri,
    headers: &'a HeaderMap,
) -> Option<Cow<'a, str>> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let authority = || uri.authority().map(http::uri::Authority::as_str);
    let value = match name {
        ":authority" => authority().or_else(|| header("host")),
        ":method" => Some(method),
        ":path" => Some(uri.path_and_query().map_or("/", |p| p.as_str())),
        ":scheme" => uri.scheme_str(),
        "host" => header("host").or_else(authority),
        other => {
            let mut values = headers.get_all(other).iter();
            let first = values.next()?.to_str().ok()?;
            let mut joined: Option<String> = None;
            for more in values {
                let all = joined.get_or_insert_with(|| signing::trim_value(first).into_owned());
                all.push(',');
                all.push_str(&signing::trim_value(more.to_str().ok()?));
            }
            return Some(joined.map_or(Cow::Borrowed(first), Cow::Owned));
        }
    };
    value.map(Cow::Borrowed)
}

/// Checks a request's SigV4 signature against `secret_access_key`.
///
/// `uri` is the request's URI exactly as received (still percent-encoded): the
/// path and query on HTTP/1.1, the absolute URI built from the pseudo-headers on
/// HTTP/2. `headers` must hold every other header the client signed; a signed
/// `host` or `:authority` is read from the URI's authority or the `Host`
/// header, whichever the request has, so a signature verifies over HTTP/1.1
/// and HTTP/2 alike.
pub fn verify(
    auth: &Authorization<'_>,
    secret_access_key: &str,
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), VerifyError> {
    verify_signed(
        auth,
        secret_access_key,
        method,
        uri,
        headers,
        Some(body),
        now,
    )
}

/// Checks the signature of a request whose body is still arriving (an
/// event-stream upload): the signature covers the headers and the payload hash
/// the client claimed, or the empty payload's when it claimed none (what the
/// AWS SDKs sign for an event-stream upload), never the body itself.
pub fn verify_headers(
    auth: &Authorization<'_>,
    secret_access_key: &str,
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<(), VerifyError> {
    verify_signed(auth, secret_access_key, method, uri, headers, None, now)
}

fn verify_signed(
    auth: &Authorization<'_>,
    secret_access_key: &str,
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    now: SystemTime,
) -> Result<(), VerifyError> {
    const X_AMZ_DATE: http::HeaderName = http::HeaderName::from_static("x-amz-date");
    let date_header = headers
        .get(X_AMZ_DATE)
        .and_then(|v| v.to_str().ok())
        .ok_or(VerifyError::BadDate)?;
    let time = parse_amz_date(date_header).ok_or(VerifyError::BadDate)?;
    if !date_header.starts_with(auth.date) {
        return Err(VerifyError::BadDate);
    }
    let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
    if skew > MAX_CLOCK_SKEW {
        return Err(VerifyError::Expired);
    }

    let uri: http::Uri = uri.parse().map_err(|_| VerifyError::Malformed)?;
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut values: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let value = signed_value(name, method, &uri, headers)
            .ok_or_else(|| VerifyError::MissingHeader((*name).to_owned()))?;
        values.push((name, value));
    }
    let signed: Vec<(&str, &str)> = values.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    let content_sha = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok());
    let signable_body = match (content_sha, body) {
        (Some("UNSIGNED-PAYLOAD"), _) => SignedPayload::Unsigned,
        (Some(claimed), Some(body)) => {
            if signing::payload_hash(body) != claimed {
                return Err(VerifyError::BodyHash);
            }
            SignedPayload::Claimed(claimed)
        }
        // A body not read yet: the claimed hash (or the event-stream marker,
        // each frame then carrying its own chunk signature) is what was signed.
        (Some(claimed), None) => SignedPayload::Claimed(claimed),
        (None, Some(body)) => SignedPayload::Body(body),
        // An event-stream upload without the header: the AWS SDKs sign its
        // headers over the empty payload; the frames are signed one by one.
        (None, None) => SignedPayload::Body(&[]),
    };

    // A pseudo-header is signed only by the JavaScript SDK (over HTTP/2);
    // everything else is checked by `aws-sigv4`'s rules, which also add
    // `x-amz-date` and `host` to what they sign: a list without them could
    // never verify.
    let dialect = if auth.signed_headers.iter().any(|n| n.starts_with(':')) {
        Dialect::JavaScript
    } else {
        if !auth.signed_headers.contains(&"x-amz-date") {
            return Err(VerifyError::Mismatch);
        }
        if !auth.signed_headers.contains(&"host") {
            return Err(VerifyError::MissingHeader("host".to_owned()));
        }
        Dialect::AwsSigv4
    };
    let hashed;
    let payload_hash = match signable_body {
        SignedPayload::Unsigned => "UNSIGNED-PAYLOAD",
        SignedPayload::Claimed(claimed) => claimed,
        SignedPayload::Body(body) => {
            hashed = signing::payload_hash(body);
            &hashed
        }
    };
    let mut signed = signed;
    if dialect == Dialect::AwsSigv4 {
        // `aws-sigv4` sorts what it signs; a client's list is sorted anyway.
        signed.sort_by(|a, b| a.0.cmp(b.0));
        signed.dedup_by(|a, b| a.0 == b.0);
    }
    let canonical =
        signing::canonical_request(dialect, method, path_and_query, &signed, payload_hash);
    let signature = sign_canonical(auth, secret_access_key, date_header, time, &canonical);
    if constant_time_eq(signature.as_bytes(), auth.signature.as_bytes()) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// What the payload hash in a canonical request stands for.
enum SignedPayload<'a> {
    Unsigned,
    Claimed(&'a str),
    Body(&'a [u8]),
}

/// The SigV4 canonical request over `signed` (name, value) pairs in the order
/// the client listed them (sorted, as every signer sends them), pseudo-headers
/// included, by the JavaScript SDK's rules (the one signer that signs
/// pseudo-headers).
pub fn canonical_request(
    method: &str,
    path_and_query: &str,
    signed: &[(&str, &str)],
    payload_hash: &str,
) -> String {
    signing::canonical_request(
        Dialect::JavaScript,
        method,
        path_and_query,
        signed,
        payload_hash,
    )
}

/// The signature of a canonical request, for `auth`'s credential scope.
fn sign_canonical(
    auth: &Authorization<'_>,
    secret_access_key: &str,
    amz_date: &str,
    time: SystemTime,
    canonical: &str,
) -> String {
    let scope = signing::scope(auth.date, auth.region, auth.service);
    let string_to_sign = signing::string_to_sign(amz_date, &scope, canonical);
    signing::signature(
        secret_access_key,
        auth.date,
        time,
        auth.region,
        auth.service,
        &string_to_sign,
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    use aws_smithy_runtime_api::client::identity::Identity;
    use http::HeaderValue;
    use sha2::{Digest, Sha256};

    /// Signs like an SDK would, with `aws-sigv4` and its default settings.
    fn signed_headers(body: &[u8], time: SystemTime) -> HeaderMap {
        signed_headers_for(SignableBody::Bytes(body), time)
    }

    fn signed_headers_for(signable: SignableBody<'_>, time: SystemTime) -> HeaderMap {
        let identity: Identity = Credentials::new("AKIDEXAMPLE", "secret", None, None, "t").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-2")
            .name("bedrock")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let base = [
            ("host", "127.0.0.1:8080"),
            ("content-type", "application/json"),
            ("user-agent", "test-agent"),
        ];
        let req = SignableRequest::new(
            "POST",
            "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse",
            base.iter().copied(),
            signable,
        )
        .unwrap();
        let (instructions, _) = sign(req, &params).unwrap().into_parts();
        let mut headers = HeaderMap::new();
        for (k, v) in base {
            headers.insert(k, HeaderValue::from_static(v));
        }
        for (k, v) in instructions.headers() {
            headers.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn a_signature_made_by_aws_sigv4_verifies_and_tampering_fails() {
        let now = SystemTime::now();
        let body = br#"{"messages":[]}"#;
        let headers = signed_headers(body, now);
        let value = headers["authorization"].to_str().unwrap().to_owned();
        let auth = parse_authorization(&value).unwrap();
        assert_eq!(auth.access_key_id, "AKIDEXAMPLE");
        assert_eq!(auth.region, "us-east-2");
        assert_eq!(auth.service, "bedrock");
        let uri = "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse";
        assert_eq!(
            verify(&auth, "secret", "POST", uri, &headers, body, now),
            Ok(())
        );
        assert_eq!(
            verify(&auth, "wrong", "POST", uri, &headers, body, now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                &auth,
                "secret",
                "POST",
                uri,
                &headers,
                br#"{"messages":[1]}"#,
                now
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                &auth,
                "secret",
                "POST",
                uri,
                &headers,
                body,
                now + Duration::from_secs(3600)
            ),
            Err(VerifyError::Expired)
        );
    }

    /// Signed by `@smithy/signature-v4` (what `@aws-sdk/client-bedrock-runtime`
    /// runs) for an HTTP/2 request: `host` replaced by `:authority`, as the SDK's
    /// host-header middleware does on HTTP/2.
    fn javascript_http2_request() -> (HeaderMap, SystemTime) {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("content-length", "15"),
            ("amz-sdk-request", "attempt=1; max=3"),
            ("x-amz-date", "20240601T120000Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240601/us-east-2/bedrock/aws4_request, SignedHeaders=:authority;amz-sdk-request;content-length;content-type;x-amz-date, Signature=44d8138e7f682dcb653f4c80282f9f40cf6778a60c33c3052160297f241d87c0"),
        ] {
            headers.insert(k, HeaderValue::from_static(v));
        }
        (headers, parse_amz_date("20240601T120000Z").unwrap())
    }

    #[test]
    fn a_signed_authority_pseudo_header_verifies_over_http2_and_http1() {
        let (mut headers, at) = javascript_http2_request();
        let value = headers["authorization"].to_str().unwrap().to_owned();
        let auth = parse_authorization(&value).unwrap();
        let body = br#"{"messages":[]}"#;
        let path = "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse";
        let h2_uri = format!("http://127.0.0.1:8080{path}");
        assert_eq!(
            verify(&auth, "secret", "POST", &h2_uri, &headers, body, at),
            Ok(())
        );
        let https = format!("https://127.0.0.1:8080{path}");
        assert_eq!(
            verify(&auth, "secret", "POST", &https, &headers, body, at),
            Ok(()),
            "the scheme is not signed"
        );
        for wrong in [
            format!("http://127.0.0.1:9999{path}"),
            format!("http://127.0.0.1:8080{path}?x=1"),
        ] {
            assert_eq!(
                verify(&auth, "secret", "POST", &wrong, &headers, body, at),
                Err(VerifyError::Mismatch),
                "{wrong}"
            );
        }
        assert_eq!(
            verify(&auth, "secret", "POST", path, &headers, body, at),
            Err(VerifyError::MissingHeader(":authority".into())),
            "no authority anywhere"
        );
        // The same signature over HTTP/1.1, where the authority is the Host header.
        headers.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(
            verify(&auth, "secret", "POST", path, &headers, body, at),
            Ok(())
        );
        assert_eq!(
            verify(&auth, "other", "POST", path, &headers, body, at),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&auth, "secret", "POST", path, &headers, b"{}", at),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_signed_host_verifies_over_http2_from_the_uri_authority() {
        let now = SystemTime::now();
        let body = br#"{"messages":[]}"#;
        let mut headers = signed_headers(body, now);
        headers.remove("host");
        let value = headers["authorization"].to_str().unwrap().to_owned();
        let auth = parse_authorization(&value).unwrap();
        let path = "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse";
        assert_eq!(
            verify(
                &auth,
                "secret",
                "POST",
                &format!("http://127.0.0.1:8080{path}"),
                &headers,
                body,
                now
            ),
            Ok(())
        );
        assert_eq!(
            verify(&auth, "secret", "POST", path, &headers, body, now),
            Err(VerifyError::MissingHeader("host".into()))
        );
    }

    /// The canonical request built here (for pseudo-headers) signs exactly as
    /// `aws-sigv4` does on requests it can sign itself. (Tabs inside a value
    /// are where the two differ: `aws-sigv4` keeps them, the JavaScript signer,
    /// the one that signs pseudo-headers, folds them into one space as this does.)
    #[test]
    fn the_canonical_request_agrees_with_aws_sigv4() {
        let time = parse_amz_date("20240601T120000Z").unwrap();
        let identity: Identity = Credentials::new("AKIDEXAMPLE", "secret", None, None, "t").into();
        for (path, host, extra) in [
            (
                "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse",
                "127.0.0.1:8080",
                "plain",
            ),
            (
                "/model/arn%3Aaws%3Abedrock%3Aus-east-2%3A1%3Ainference-profile%2Fx/invoke",
                "h",
                "  spaced   out  ",
            ),
            ("/a/./b/../c//d/", "proxy.example.com", "x"),
            (
                "/guardrail/g1/version/1/apply?b=2&a=%7E1&a=0&c",
                "h:443",
                "tab inside",
            ),
            ("/", "h", "émoji ☃"),
        ] {
            let base = [
                ("host", host),
                ("content-type", "application/json"),
                ("x-extra", extra),
            ];
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region("us-east-2")
                .name("bedrock")
                .time(time)
                .settings(SigningSettings::default())
                .build()
                .unwrap()
                .into();
            let body = b"{}";
            let req = SignableRequest::new(
                "POST",
                path,
                base.iter().copied(),
                SignableBody::Bytes(body),
            )
            .unwrap();
            let (instructions, expected) = sign(req, &params).unwrap().into_parts();
            let auth_value = instructions
                .headers()
                .find(|(k, _)| *k == "authorization")
                .map(|(_, v)| v.to_owned())
                .unwrap();
            let auth = parse_authorization(&auth_value).unwrap();
            let amz_date = "20240601T120000Z";
            let mut values: Vec<(&str, &str)> = base.to_vec();
            values.push(("x-amz-date", amz_date));
            values.sort();
            let signed: Vec<(&str, &str)> = auth
                .signed_headers
                .iter()
                .map(|n| *values.iter().find(|(k, _)| k == n).unwrap())
                .collect();
            let canonical =
                canonical_request("POST", path, &signed, &hex::encode(Sha256::digest(body)));
            assert_eq!(
                sign_canonical(&auth, "secret", amz_date, time, &canonical),
                expected,
                "{path}"
            );
        }
    }

    #[test]
    fn a_streaming_upload_verifies_from_its_headers() {
        let now = SystemTime::now();
        let headers = signed_headers_for(SignableBody::Bytes(&[]), now);
        let value = headers["authorization"].to_str().unwrap().to_owned();
        let auth = parse_authorization(&value).unwrap();
        let uri = "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse";
        assert_eq!(
            verify_headers(&auth, "secret", "POST", uri, &headers, now),
            Ok(())
        );
        assert_eq!(
            verify_headers(&auth, "wrong", "POST", uri, &headers, now),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_headers(&auth, "secret", "POST", "/model/x/converse", &headers, now),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn amz_dates_parse() {
        let t = parse_amz_date("20240229T235959Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_709_251_199
        );
        assert_eq!(parse_amz_date("2024-02-29T23:59:59Z"), None);
        assert_eq!(parse_amz_date("20241301T000000Z"), None);
    }

    #[test]
    fn other_schemes_do_not_parse() {
        assert_eq!(parse_authorization("Bearer abc"), None);
        assert_eq!(parse_authorization("AWS4-HMAC-SHA256 Credential=x"), None);
    }
}
