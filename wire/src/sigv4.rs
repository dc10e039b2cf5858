//! Verifying an incoming SigV4 `Authorization` header.
//!
//! The signature is recomputed with `aws-sigv4` over exactly the headers the
//! client listed as signed, at the time in its `x-amz-date`, in the region and
//! service of its credential scope, then compared in constant time. Signing
//! outgoing requests is the proxy's upstream client's business, not this module's.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::HeaderMap;
use sha2::{Digest, Sha256};
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

/// Checks a request's SigV4 signature against `secret_access_key`.
///
/// `uri` is the path and query exactly as received (still percent-encoded);
/// `headers` must hold every header the client signed, `host` included.
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
    let date_header = headers
        .get("x-amz-date")
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

    let mut signed: Vec<(&str, &str)> = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let value = headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| VerifyError::MissingHeader((*name).to_owned()))?;
        signed.push((name, value));
    }
    let content_sha = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok());
    let signable_body = match (content_sha, body) {
        (Some("UNSIGNED-PAYLOAD"), _) => SignableBody::UnsignedPayload,
        (Some(claimed), Some(body)) => {
            if hex::encode(Sha256::digest(body)) != claimed {
                return Err(VerifyError::BodyHash);
            }
            SignableBody::Bytes(body)
        }
        // A body not read yet: the claimed hash (or the event-stream marker,
        // each frame then carrying its own chunk signature) is what was signed.
        (Some(claimed), None) => SignableBody::Precomputed(claimed.to_owned()),
        (None, Some(body)) => SignableBody::Bytes(body),
        // An event-stream upload without the header: the AWS SDKs sign its
        // headers over the empty payload; the frames are signed one by one.
        (None, None) => SignableBody::Bytes(&[]),
    };

    let identity: Identity = Credentials::new(
        auth.access_key_id,
        secret_access_key,
        None,
        None,
        "sigv4-verify",
    )
    .into();
    let mut settings = SigningSettings::default();
    // Sign exactly the client's list: nothing excluded, nothing added.
    settings.excluded_headers = Some(Vec::new());
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(auth.region)
        .name(auth.service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|_| VerifyError::Malformed)?
        .into();
    let request = SignableRequest::new(method, uri, signed.into_iter(), signable_body)
        .map_err(|_| VerifyError::Malformed)?;
    let output = sign(request, &params).map_err(|_| VerifyError::Malformed)?;
    if constant_time_eq(output.signature().as_bytes(), auth.signature.as_bytes()) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
