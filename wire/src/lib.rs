//! Wire formats shared by the proxy, the simulator and the benchmark tool.
//!
//! # Layout
//! - [`eventstream`]: AWS event-stream frames: build them, cut a byte stream into
//!   whole frames, read their headers.
//! - [`converse`]: ConverseStream events as one normalized list, rendered as a
//!   Converse JSON body or as frames, and built back from either.
//! - [`canonical`]: canonical JSON (sorted keys, no whitespace, normalized numbers)
//!   for hashing requests; cache markers left out.
//! - [`operation`]: the five model operations and their path segments.
//! - [`tier`]: the latency and service tiers, parsed and named in one place.
//! - [`catalog`]: what each Bedrock model supports and costs (`config/models.toml`).
//! - [`tokens`]: the token estimator the simulator bills with and the proxy plans with.
//! - [`error`]: Bedrock's error types, their statuses and bodies.
//! - [`sagemaker`]: SageMaker Runtime's paths, headers, error types and
//!   `PayloadPart` stream frames.
//! - [`sse`]: server-sent events (OpenAI-compatible streams), read and written.
//! - [`sigv4`]: checking an incoming SigV4 signature.
//! - [`signing`]: SigV4's canonical request, string to sign and signing keys
//!   (derived once per day, cached), shared by [`sigv4`] and [`client`].
//! - [`serve`]: the HTTP accept loop both servers run (timeouts, graceful drain).
//! - [`client`]: outbound HTTPS to Bedrock and SigV4 signing for any AWS service
//!   (proxy and benchmark).
//!
//! Apart from [`serve`], [`client`] and reading a catalog file, nothing here does
//! I/O: these are pure functions over bytes, headers and JSON.

pub mod canonical;
pub mod catalog;
pub mod client;
pub mod converse;
pub mod error;
pub mod eventstream;
pub mod operation;
pub mod sagemaker;
pub mod serve;
pub mod signing;
pub mod sigv4;
pub mod sse;
pub mod tier;
pub mod tokens;
pub mod workers;

/// A hash map with a fast seeded hasher (foldhash), for the maps every
/// request looks up (routes, the catalog, breakers, limit counters): SipHash,
/// std's default, costs more than the lookup around it. Keys come from the
/// config or are bounded by it; the per-process seed keeps the table's
/// layout unpredictable all the same.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A request id in the format Bedrock uses (a random UUID v4). Not secret, so
/// a fast non-cryptographic generator is enough.
pub fn new_request_id() -> String {
    String::from_utf8_lossy(&request_id_bytes()).into_owned()
}

/// [`new_request_id`] shared: one allocation, then cloned by reference count
/// (a request's id goes into its log tag, its access line and its headers).
pub fn new_shared_request_id() -> std::sync::Arc<str> {
    let bytes = request_id_bytes();
    std::sync::Arc::from(std::str::from_utf8(&bytes).unwrap_or_default())
}

fn request_id_bytes() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // 8-4-4-4-12 hex digits; the version nibble is 4 and the variant's top
    // bits are 10 (written as `a`, as before).
    let mut bits = fastrand::u128(..);
    let mut out = [0u8; 36];
    for (i, b) in out.iter_mut().enumerate() {
        *b = match i {
            8 | 13 | 18 | 23 => b'-',
            14 => b'4',
            19 => b'a',
            _ => {
                let digit = HEX[(bits & 0xf) as usize];
                bits >>= 4;
                digit
            }
        };
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_uuid_v4_shaped_and_differ() {
        let a = super::new_request_id();
        let b = super::new_request_id();
        assert_ne!(a, b);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(a
            .chars()
            .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert!(groups[2].starts_with('4') && groups[3].starts_with('a'));
    }
}
