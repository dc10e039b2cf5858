//! SigV4 arithmetic shared by signing (the proxy's upstream requests) and
//! verifying (incoming requests): the canonical request, the string to sign,
//! and the signing key, derived once per day, region, service and credentials
//! and kept in a small bounded cache instead of four HMACs on every request.
//!
//! The canonical request follows `aws-sigv4` (what the Rust SDK signs with)
//! byte for byte; AWS's published test suite and property tests against
//! `aws-sigv4` itself (wire/tests/sigv4_*.rs) hold it there. The JavaScript
//! SDK's signer differs in two details, kept as [`Dialect::JavaScript`] for
//! verifying requests that sign HTTP/2 pseudo-headers.

use aws_sigv4::sign::v4;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The signing algorithm's name, as it appears in the string to sign and the
/// Authorization header.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Headers `aws-sigv4` never signs by default (changed by proxies, or the
/// signature itself).
pub const EXCLUDED_HEADERS: [&str; 4] = [
    "authorization",
    "user-agent",
    "x-amzn-trace-id",
    "transfer-encoding",
];

/// SigV4 leaves RFC 3986's unreserved characters as they are in a canonical
/// path segment and in query keys and values, and encodes every other byte.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where two well-known signers build the canonical request differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `aws-sigv4` (the Rust SDK): a header value has its spaces trimmed and
    /// runs of spaces folded (tabs kept); a query is form-decoded (`+` is a
    /// space) before being encoded.
    AwsSigv4,
    /// `@smithy/signature-v4` (the JavaScript SDK): any whitespace in a value
    /// folds into one space; a query's `+` stays a `+`.
    JavaScript,
}

/// `YYYYMMDDTHHMMSSZ`, the form of `x-amz-date`.
pub fn amz_date(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Digits written directly: every signed and verified request makes one.
    fn push_digits(out: &mut String, n: i64, width: u32) {
        for i in (0..width).rev() {
            let digit = (n / 10_i64.pow(i)).rem_euclid(10);
            out.push(char::from(b'0' + digit as u8));
        }
    }
    let rem = i64::try_from(rem).unwrap_or(0);
    let mut out = String::with_capacity(16);
    push_digits(&mut out, year, 4);
    push_digits(&mut out, month, 2);
    push_digits(&mut out, day, 2);
    out.push('T');
    for n in [rem / 3600, rem % 3600 / 60, rem % 60] {
        push_digits(&mut out, n, 2);
    }
    out.push('Z');
    out
}

/// The canonical path of a non-S3 service: dot segments and empty segments
/// removed, then every byte but unreserved ones and `/` percent-encoded (so an
/// already-encoded `%3A` becomes `%253A`: AWS services encode twice).
fn write_canonical_path(out: &mut String, path: &str) {
    let mut segments: Vec<&str> = Vec::with_capacity(8);
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    for segment in &segments {
        out.push('/');
        out.extend(utf8_percent_encode(segment, UNRESERVED));
    }
    let trailing = ["/", "/.", "/..", "/./", "/../"]
        .iter()
        .any(|end| path.ends_with(end));
    if segments.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
}

/// The canonical query: each key and value decoded, then encoded the SigV4
/// way, the pairs sorted by their encoded forms.
fn write_canonical_query(out: &mut String, query: &str, dialect: Dialect) {
    if query.is_empty() {
        return;
    }
    let encode = |s: &str| {
        let s: Cow<'_, str> = match dialect {
            Dialect::AwsSigv4 if s.contains('+') => Cow::Owned(s.replace('+', " ")),
            _ => Cow::Borrowed(s),
        };
        let decoded = percent_decode_str(&s).decode_utf8_lossy().into_owned();
        utf8_percent_encode(&decoded, UNRESERVED).to_string()
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(k), encode(v))
        })
        .collect();
    pairs.sort();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        let _ = write!(out, "{k}={v}");
    }
}

/// A header value as `aws-sigv4` canonicalizes it (spaces trimmed, runs of
/// spaces folded), for joining the values of a repeated header: each is
/// normalized before they are joined with `,`.
pub fn trim_value(value: &str) -> Cow<'_, str> {
    let trimmed = value.trim_matches(' ');
    if !trimmed.contains("  ") {
        return Cow::Borrowed(trimmed);
    }
    let mut out = String::with_capacity(trimmed.len());
    write_value(&mut out, trimmed, Dialect::AwsSigv4);
    Cow::Owned(out)
}

/// Writes a header value as `dialect` canonicalizes it.
fn write_value(out: &mut String, value: &str, dialect: Dialect) {
    let mut first = true;
    match dialect {
        Dialect::AwsSigv4 => {
            for word in value.split(' ').filter(|w| !w.is_empty()) {
                if !first {
                    out.push(' ');
                }
                out.push_str(word);
                first = false;
            }
        }
        Dialect::JavaScript => {
            for word in value.split_whitespace() {
                if !first {
                    out.push(' ');
                }
                out.push_str(word);
                first = false;
            }
        }
    }
}

/// The SigV4 canonical request over `signed` (lower-case name, value) pairs,
/// already sorted by name with each name once (pseudo-headers allowed).
pub fn canonical_request(
    dialect: Dialect,
    method: &str,
    path_and_query: &str,
    signed: &[(&str, &str)],
    payload_hash: &str,
) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut out = String::with_capacity(256 + path_and_query.len());
    out.push_str(method);
    out.push('\n');
    write_canonical_path(&mut out, path);
    out.push('\n');
    write_canonical_query(&mut out, query, dialect);
    out.push('\n');
    // Names are lower case already but for a verified request's own.
    let push_name = |out: &mut String, name: &str| {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            out.extend(name.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            out.push_str(name);
        }
    };
    for (name, value) in signed {
        push_name(&mut out, name);
        out.push(':');
        write_value(&mut out, value, dialect);
        out.push('\n');
    }
    out.push('\n');
    for (i, (name, _)) in signed.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        push_name(&mut out, name);
    }
    out.push('\n');
    out.push_str(payload_hash);
    out
}

/// The credential scope, `20240101/us-east-1/bedrock/aws4_request`.
pub fn scope(date: &str, region: &str, service: &str) -> String {
    [date, "/", region, "/", service, "/aws4_request"].concat()
}

/// The string to sign for a canonical request made at `amz_date`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let mut hash = [0u8; 64];
    let hash = hex_sha256(canonical_request.as_bytes(), &mut hash);
    [ALGORITHM, "\n", amz_date, "\n", scope, "\n", hash].concat()
}

/// The hex signature of `string_to_sign` with the signing key of `secret` on
/// `date` (`YYYYMMDD`, the day of `time`) for `region` and `service`, taken from
/// the process-wide key cache when it was derived before.
pub fn signature(
    secret: &str,
    date: &str,
    time: SystemTime,
    region: &str,
    service: &str,
    string_to_sign: &str,
) -> String {
    let mac = KEYS.sign(
        secret,
        date,
        time,
        region,
        service,
        string_to_sign.as_bytes(),
    );
    // Into a buffer, then one copy: `hex::encode` pushes its 64 digits one
    // `char` at a time.
    let mut hex = [0u8; 64];
    hex32(&mac, &mut hex).to_owned()
}

/// HMAC-SHA256 (RFC 2104) with one key, its padded key blocks hashed once:
/// a signature then costs two hash finishes instead of four block hashes
/// plus two finishes. Checked against `aws-sigv4`'s `calculate_signature`.
#[derive(Clone)]
struct Hmac {
    /// SHA-256 state after the key XOR ipad block.
    inner: Sha256,
    /// SHA-256 state after the key XOR opad block.
    outer: Sha256,
}

impl Hmac {
    fn new(key: &[u8; 32]) -> Hmac {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, b) in key.iter().enumerate() {
            ipad[i] ^= b;
            opad[i] ^= b;
        }
        Hmac {
            inner: Sha256::new_with_prefix(ipad),
            outer: Sha256::new_with_prefix(opad),
        }
    }

    fn sign(&self, message: &[u8]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        inner.update(message);
        let mut outer = self.outer.clone();
        outer.update(inner.finalize());
        outer.finalize().into()
    }
}

/// How many signing keys are kept: one per day, region, service and
/// credentials in use; a proxy signs with one or two credentials and verifies
/// a handful of clients, so a few dozen is plenty and a scan is cheap.
const KEY_CACHE_SIZE: usize = 32;

#[derive(Clone)]
struct CachedKey {
    date: Box<str>,
    region: Box<str>,
    service: Box<str>,
    // The secret itself, not the access key id: credentials that rotate (a
    // provider's temporary ones, a reloaded key file) may keep their id while
    // the secret changes, and must then sign with a key of the new secret.
    secret: Box<str>,
    /// The derived key (its HMAC states are what signing uses).
    #[cfg_attr(not(test), allow(dead_code))]
    key: [u8; 32],
    mac: Hmac,
}

impl CachedKey {
    fn is(&self, secret: &str, date: &str, region: &str, service: &str) -> bool {
        &*self.date == date
            && &*self.region == region
            && &*self.service == service
            && &*self.secret == secret
    }
}

/// At most `cap` keys; when full, the oldest is replaced.
struct Recent {
    keys: Vec<CachedKey>,
    /// The slot the next key replaces once full.
    next: usize,
}

impl Recent {
    const fn new() -> Recent {
        Recent {
            keys: Vec::new(),
            next: 0,
        }
    }

    fn find(&self, secret: &str, date: &str, region: &str, service: &str) -> Option<&CachedKey> {
        self.keys
            .iter()
            .find(|k| k.is(secret, date, region, service))
    }

    fn put(&mut self, key: CachedKey, cap: usize) {
        if self.keys.len() < cap {
            self.keys.push(key);
        } else {
            self.keys[self.next] = key;
            self.next = (self.next + 1) % cap;
        }
    }
}

/// Derived signing keys, bounded; the oldest entry is replaced when full.
/// Each thread keeps the last few keys it used ([`THREAD_KEYS`]), so signing
/// and verifying with the same credentials all day takes no lock.
struct KeyCache {
    inner: Mutex<Recent>,
}

static KEYS: KeyCache = KeyCache {
    inner: Mutex::new(Recent::new()),
};

/// How many keys each thread keeps: the upstream's credentials and the few
/// clients a worker verifies in turn.
const THREAD_KEYS: usize = 4;

thread_local! {
    /// A thread's recent keys.
    static RECENT_KEYS: std::cell::RefCell<Recent> = const { std::cell::RefCell::new(Recent::new()) };
}

impl KeyCache {
    /// The HMAC of `message` with the signing key of `secret` on `date` for
    /// `region` and `service`.
    fn sign(
        &self,
        secret: &str,
        date: &str,
        time: SystemTime,
        region: &str,
        service: &str,
        message: &[u8],
    ) -> [u8; 32] {
        RECENT_KEYS.with(|recent| {
            let mut recent = recent.borrow_mut();
            if let Some(k) = recent.find(secret, date, region, service) {
                return k.mac.sign(message);
            }
            let found = self.get(secret, date, time, region, service);
            let mac = found.mac.sign(message);
            recent.put(found, THREAD_KEYS);
            mac
        })
    }

    /// The cached key, derived and added when it is not there.
    fn get(
        &self,
        secret: &str,
        date: &str,
        time: SystemTime,
        region: &str,
        service: &str,
    ) -> CachedKey {
        if let Ok(guard) = self.inner.lock() {
            if let Some(hit) = guard.find(secret, date, region, service) {
                return hit.clone();
            }
        }
        let derived = v4::generate_signing_key(secret, time, region, service);
        let mut key = [0u8; 32];
        key.copy_from_slice(&derived.as_ref()[..32]);
        let entry = CachedKey {
            date: date.into(),
            region: region.into(),
            service: service.into(),
            secret: secret.into(),
            key,
            mac: Hmac::new(&key),
        };
        if let Ok(mut guard) = self.inner.lock() {
            if guard.find(secret, date, region, service).is_none() {
                guard.put(entry.clone(), KEY_CACHE_SIZE);
            }
        }
        entry
    }
}

/// What signing a request adds to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `x-amz-date`.
    pub amz_date: String,
    /// `authorization`.
    pub authorization: String,
    /// `x-amz-security-token`, for temporary credentials.
    pub security_token: Option<String>,
    /// The hex signature (the seed an event-stream upload's chunk signatures
    /// chain from).
    pub signature: String,
}

/// The credentials a request is signed with.
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
}

/// Signs a request to `uri` (absolute: its authority is the `host` signed when
/// `headers` has none) with its `headers` (lower-case names; authorization,
/// user-agent, x-amzn-trace-id and transfer-encoding are left out, as
/// `aws-sigv4` leaves them out) and the hex SHA-256 of its payload (or
/// `UNSIGNED-PAYLOAD`), as `aws-sigv4`'s `sign` with default settings does.
#[allow(clippy::too_many_arguments)]
pub fn sign<'h>(
    method: &str,
    uri: &http::Uri,
    headers: impl Iterator<Item = (&'h str, &'h str)>,
    payload_hash: &str,
    keys: Keys<'_>,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Signed, String> {
    let amz_date = amz_date(time);
    let mut list: Vec<(&str, &str)> = headers
        .filter(|(name, _)| {
            !EXCLUDED_HEADERS.contains(name)
                && *name != "x-amz-date"
                && (keys.session_token.is_none() || *name != "x-amz-security-token")
        })
        .collect();
    let host_value;
    if !list.iter().any(|(n, _)| *n == "host") {
        let host = uri.host().ok_or("signing: the URL has no host")?;
        let default_port = matches!(
            (uri.scheme_str(), uri.port_u16()),
            (Some("http"), Some(80)) | (Some("https"), Some(443))
        );
        host_value = match (uri.authority(), default_port) {
            (Some(authority), false) => authority.as_str(),
            _ => host,
        };
        list.push(("host", host_value));
    }
    list.push(("x-amz-date", &amz_date));
    if let Some(token) = keys.session_token {
        list.push(("x-amz-security-token", token));
    }
    // Stable: repeated headers keep their order, then join with `,`.
    list.sort_by(|a, b| a.0.cmp(b.0));
    // A header sent twice is signed once, its values joined with `,` (rare:
    // without one, the sorted list is signed as it is).
    let repeated = list.windows(2).any(|w| w[0].0 == w[1].0);
    let mut joined: Vec<(&str, Cow<'_, str>)> = Vec::new();
    if repeated {
        for &(name, value) in &list {
            match joined.last_mut() {
                Some((last, v)) if *last == name => {
                    let mut both = trim_value(&std::mem::take(v)).into_owned();
                    both.push(',');
                    both.push_str(&trim_value(value));
                    *v = Cow::Owned(both);
                }
                _ => joined.push((name, Cow::Borrowed(value))),
            }
        }
        list = joined.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    }
    let signed = list;
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let canonical = canonical_request(
        Dialect::AwsSigv4,
        method,
        path_and_query,
        &signed,
        payload_hash,
    );
    let date = &amz_date[..8];
    let scope = scope(date, region, service);
    let sts = string_to_sign(&amz_date, &scope, &canonical);
    let signature = signature(keys.secret_access_key, date, time, region, service, &sts);
    let mut authorization =
        String::with_capacity(160 + keys.access_key_id.len() + scope.len() + signed.len() * 24);
    for part in [
        ALGORITHM,
        " Credential=",
        keys.access_key_id,
        "/",
        &scope,
        ", SignedHeaders=",
    ] {
        authorization.push_str(part);
    }
    for (i, (name, _)) in signed.iter().enumerate() {
        if i > 0 {
            authorization.push(';');
        }
        authorization.push_str(name);
    }
    authorization.push_str(", Signature=");
    authorization.push_str(&signature);
    Ok(Signed {
        amz_date,
        authorization,
        security_token: keys.session_token.map(str::to_owned),
        signature,
    })
}

/// The hex SHA-256 of a payload, as the canonical request carries it.
pub fn payload_hash(body: &[u8]) -> String {
    let mut hex = [0u8; 64];
    hex_sha256(body, &mut hex).to_owned()
}

/// The hex SHA-256 of `bytes`, written into `out`.
pub fn hex_sha256<'a>(bytes: &[u8], out: &'a mut [u8; 64]) -> &'a str {
    hex32(&Sha256::digest(bytes).into(), out)
}

/// The 64 lower-case hex digits of a 32-byte digest, written into `out`.
fn hex32<'a>(digest: &[u8; 32], out: &'a mut [u8; 64]) -> &'a str {
    // Cannot fail: 32 bytes make exactly 64 hex digits.
    let _ = hex::encode_to_slice(digest, out);
    std::str::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn amz_dates_format() {
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(amz_date(t), "20240229T235959Z");
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(951_868_800)),
            "20000301T000000Z"
        );
    }

    #[test]
    fn signatures_match_aws_sigv4_at_every_block_boundary() {
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        for secret in ["s1", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"] {
            let key = v4::generate_signing_key(secret, t, "us-west-2", "bedrock");
            for len in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000] {
                let message: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
                // Twice: the second from this thread's recent keys.
                for _ in 0..2 {
                    assert_eq!(
                        signature(secret, "20240229", t, "us-west-2", "bedrock", &message),
                        v4::calculate_signature(key.as_ref(), message.as_bytes()),
                        "secret {secret}, message of {len} bytes"
                    );
                }
            }
        }
        // More credentials than a thread keeps, in turn: each still signs
        // with its own key.
        for round in 0..3 {
            for i in 0..(THREAD_KEYS + 2) {
                let secret = format!("turn{i}");
                let key = v4::generate_signing_key(&secret, t, "us-west-2", "bedrock");
                assert_eq!(
                    signature(&secret, "20240229", t, "us-west-2", "bedrock", "sts"),
                    v4::calculate_signature(key, b"sts"),
                    "round {round}, secret {secret}"
                );
            }
        }
    }

    #[test]
    fn a_cached_key_is_the_derived_key_and_a_new_secret_gets_its_own() {
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        let derived = v4::generate_signing_key("s1", t, "us-east-1", "bedrock");
        let first = KEYS.get("s1", "20240229", t, "us-east-1", "bedrock").key;
        let again = KEYS.get("s1", "20240229", t, "us-east-1", "bedrock").key;
        assert_eq!(first, again);
        assert_eq!(&first[..], derived.as_ref());
        let rotated = KEYS.get("s2", "20240229", t, "us-east-1", "bedrock").key;
        assert_ne!(first, rotated);
        let next_day = t + Duration::from_secs(86_400);
        assert_eq!(
            &KEYS
                .get("s1", "20240301", next_day, "us-east-1", "bedrock")
                .key[..],
            v4::generate_signing_key("s1", next_day, "us-east-1", "bedrock").as_ref()
        );
        // Past the bound, the oldest entries go and lookups stay right.
        for i in 0..(KEY_CACHE_SIZE + 3) {
            let secret = format!("bulk{i}");
            assert_eq!(
                &KEYS.get(&secret, "20240229", t, "eu-west-1", "bedrock").key[..],
                v4::generate_signing_key(&secret, t, "eu-west-1", "bedrock").as_ref()
            );
        }
        assert!(KEYS.inner.lock().unwrap().keys.len() <= KEY_CACHE_SIZE);
        assert_eq!(
            KEYS.get("s1", "20240229", t, "us-east-1", "bedrock").key,
            first
        );
    }
}
