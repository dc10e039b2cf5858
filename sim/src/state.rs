//! What the simulator remembers between requests: its clock, the requests it
//! received (for `/_sim/requests`), counters (for `/_sim/stats`) and the
//! per-minute quotas (latency-optimized, flex). Short critical sections under
//! std mutexes: nothing here is held across an `.await`.
//!
//! The request log keeps each body as the bytes received (shared with the
//! request, not copied, and never a parsed tree, which costs many times its
//! text), bounded by count and by bytes; it is parsed when read.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

use crate::face::Face;

/// The simulator's notion of now: real time (sped up as `time_scale` speeds up
/// every delay) plus whatever tests advanced it by, so prompt-cache TTLs can
/// expire and async jobs finish without waiting.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    /// The wall-clock time at `start`: timestamps the API reports are this plus
    /// the simulated time since.
    wall_start: SystemTime,
    offset_ms: AtomicU64,
    /// Simulated seconds per real second: `1 / time_scale`, or 1 when
    /// `time_scale` is 0 (answers without delay on a real-time clock).
    rate: f64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::scaled(1.0)
    }
}

impl Clock {
    /// A clock for a simulator whose delays are multiplied by `time_scale`: at
    /// 0.01, five simulated minutes pass in three real seconds.
    pub fn scaled(time_scale: f64) -> Clock {
        let rate = if time_scale > 0.0 && time_scale.is_finite() {
            1.0 / time_scale
        } else {
            1.0
        };
        Clock {
            start: Instant::now(),
            wall_start: SystemTime::now(),
            offset_ms: AtomicU64::new(0),
            rate,
        }
    }

    /// Time since the simulator started, advances included.
    pub fn now(&self) -> Duration {
        self.start.elapsed().mul_f64(self.rate)
            + Duration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }

    /// The wall-clock time of simulated instant `at` (a [`Clock::now`] value).
    pub fn wall(&self, at: Duration) -> SystemTime {
        self.wall_start + at
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// One request as the simulator received it; secrets removed.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    pub seq: u64,
    pub request_id: String,
    /// The API it came in on.
    pub face: Face,
    pub operation: &'static str,
    /// The model as the caller named it (on SageMaker, the endpoint name).
    pub model_id: String,
    pub path: String,
    /// The HTTP version it came in on: `HTTP/1.1` or `HTTP/2.0`.
    pub http_version: &'static str,
    pub headers: BTreeMap<String, String>,
    /// The body as JSON when it is JSON, else as a string (read from the raw
    /// bytes the log keeps; [`Value::Null`] when pushing).
    pub body: Value,
    pub at_ms: u64,
}

/// A logged request as the log keeps it.
#[derive(Debug)]
struct Kept {
    request: LoggedRequest,
    raw: Bytes,
}

impl Kept {
    fn read(&self) -> LoggedRequest {
        let body = serde_json::from_slice(&self.raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.raw).into_owned()));
        LoggedRequest {
            body,
            ..self.request.clone()
        }
    }
}

/// Headers never written to the request log.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-security-token",
    "x-api-key",
    "cookie",
];

impl LoggedRequest {
    /// How a request's HTTP version is logged (`HTTP/2.0`, `HTTP/1.1`).
    pub fn version_name(version: axum::http::Version) -> &'static str {
        match version {
            axum::http::Version::HTTP_09 => "HTTP/0.9",
            axum::http::Version::HTTP_10 => "HTTP/1.0",
            axum::http::Version::HTTP_2 => "HTTP/2.0",
            axum::http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        }
    }

    pub fn headers_without_secrets(headers: &axum::http::HeaderMap) -> BTreeMap<String, String> {
        headers
            .iter()
            .filter(|(k, _)| !SECRET_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    }
}

/// The last requests received: at most `capacity` of them, holding at most
/// `max_bytes` of bodies (the newest request is always kept).
#[derive(Debug)]
pub struct RequestLog {
    capacity: usize,
    max_bytes: usize,
    seq: AtomicU64,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    kept: VecDeque<Kept>,
    bytes: usize,
}

impl RequestLog {
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        RequestLog {
            capacity: capacity.max(1),
            max_bytes,
            seq: AtomicU64::new(0),
            entries: Mutex::new(Entries::default()),
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Logs a request and its body as received (`entry.body` is not kept).
    pub fn push(&self, mut entry: LoggedRequest, raw: Bytes) {
        entry.body = Value::Null;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.bytes += raw.len();
        entries.kept.push_back(Kept {
            request: entry,
            raw,
        });
        while entries.kept.len() > self.capacity
            || (entries.bytes > self.max_bytes && entries.kept.len() > 1)
        {
            if let Some(old) = entries.kept.pop_front() {
                entries.bytes -= old.raw.len();
            }
        }
    }

    /// The newest `limit` requests, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<LoggedRequest> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let skip = entries.kept.len().saturating_sub(limit);
        entries.kept.iter().skip(skip).map(Kept::read).collect()
    }

    /// The bodies of the newest `limit` requests exactly as received, oldest
    /// first (for tests that check what a proxy forwarded byte for byte).
    pub fn recent_raw(&self, limit: usize) -> Vec<Bytes> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let skip = entries.kept.len().saturating_sub(limit);
        entries
            .kept
            .iter()
            .skip(skip)
            .map(|k| k.raw.clone())
            .collect()
    }

    /// Body bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }

    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.kept.clear();
        entries.bytes = 0;
    }
}

/// Counters behind `/_sim/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    requests: u64,
    by_face: BTreeMap<&'static str, u64>,
    by_operation: BTreeMap<&'static str, u64>,
    by_model: BTreeMap<String, u64>,
    served_tier: BTreeMap<&'static str, u64>,
    served_service_tier: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    faults_fired: u64,
    demoted_to_standard: u64,
    flex_throttled: u64,
    streams_cancelled: u64,
    prompt_router: BTreeMap<String, BTreeMap<String, u64>>,
    guardrail_assessments: u64,
    guardrail_interventions: u64,
    async_jobs_started: u64,
    bidi_sessions: u64,
    bidi_events_in: u64,
    bidi_events_out: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_input_tokens: u64,
    cache_write_input_tokens: u64,
    cache_write_1h_input_tokens: u64,
}

impl StatsInner {
    fn bill(&mut self, billed: Billed) {
        self.input_tokens += u64::from(billed.input_tokens);
        self.output_tokens += u64::from(billed.output_tokens);
        self.cache_read_input_tokens += u64::from(billed.cache_read);
        self.cache_write_input_tokens += u64::from(billed.cache_write);
        self.cache_write_1h_input_tokens += u64::from(billed.cache_write_1h);
    }
}

/// What one answered request adds to the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Billed {
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cache_read: u32,
    pub cache_write: u32,
    /// Of `cache_write`, the tokens written with the 1-hour TTL.
    pub cache_write_1h: u32,
}

impl Stats {
    fn with<R>(&self, f: impl FnOnce(&mut StatsInner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn received(&self, operation: &'static str, model: &str) {
        self.received_on(Face::Bedrock, operation, model);
    }

    /// A request on `face`; `model` as the caller named it.
    pub fn received_on(&self, face: Face, operation: &'static str, model: &str) {
        self.with(|s| {
            s.requests += 1;
            *s.by_face.entry(face.name()).or_default() += 1;
            *s.by_operation.entry(operation).or_default() += 1;
            if !model.is_empty() {
                *s.by_model.entry(model.to_owned()).or_default() += 1;
            }
        });
    }

    pub fn error(&self, type_name: &'static str) {
        self.with(|s| *s.errors.entry(type_name).or_default() += 1);
    }

    pub fn fault_fired(&self) {
        self.with(|s| s.faults_fired += 1);
    }

    pub fn demoted(&self) {
        self.with(|s| s.demoted_to_standard += 1);
    }

    /// A stream whose reader went away before its end.
    pub fn stream_cancelled(&self) {
        self.with(|s| s.streams_cancelled += 1);
    }

    /// A flex request refused past the flex quota.
    pub fn flex_throttled(&self) {
        self.with(|s| s.flex_throttled += 1);
    }

    /// The service tier a request was served on.
    pub fn served_service_tier(&self, tier: &'static str) {
        self.with(|s| *s.served_service_tier.entry(tier).or_default() += 1);
    }

    /// A prompt router sent a request to `invoked`.
    pub fn routed(&self, router: &str, invoked: &str) {
        self.with(|s| {
            *s.prompt_router
                .entry(router.to_owned())
                .or_default()
                .entry(invoked.to_owned())
                .or_default() += 1;
        });
    }

    /// A guardrail looked at some content; `intervened` when it blocked it.
    pub fn guardrail(&self, intervened: bool) {
        self.with(|s| {
            s.guardrail_assessments += 1;
            if intervened {
                s.guardrail_interventions += 1;
            }
        });
    }

    /// A StartAsyncInvoke made a new job.
    pub fn async_job_started(&self) {
        self.with(|s| s.async_jobs_started += 1);
    }

    /// A bidirectional stream opened.
    pub fn bidi_session(&self) {
        self.with(|s| s.bidi_sessions += 1);
    }

    /// Events a bidirectional stream received and sent.
    pub fn bidi_events(&self, received: u64, sent: u64) {
        self.with(|s| {
            s.bidi_events_in += received;
            s.bidi_events_out += sent;
        });
    }

    pub fn served(&self, tier: &'static str, billed: Billed) {
        self.with(|s| {
            *s.served_tier.entry(tier).or_default() += 1;
            s.bill(billed);
        });
    }

    /// An answer from a face without latency tiers (OpenAI, SageMaker).
    pub fn served_untiered(&self, billed: Billed) {
        self.with(|s| s.bill(billed));
    }

    pub fn snapshot(&self) -> Value {
        self.with(|s| {
            let counts = |m: &BTreeMap<&'static str, u64>| {
                Value::Object(
                    m.iter()
                        .map(|(k, v)| ((*k).to_owned(), json!(v)))
                        .collect::<Map<_, _>>(),
                )
            };
            json!({
                "requests": s.requests,
                "by_face": counts(&s.by_face),
                "by_operation": counts(&s.by_operation),
                "by_model": s.by_model,
                "served_tier": counts(&s.served_tier),
                "served_service_tier": counts(&s.served_service_tier),
                "errors": counts(&s.errors),
                "faults_fired": s.faults_fired,
                "demoted_to_standard": s.demoted_to_standard,
                "flex_throttled": s.flex_throttled,
                "streams_cancelled": s.streams_cancelled,
                "prompt_router": s.prompt_router,
                "guardrail_assessments": s.guardrail_assessments,
                "guardrail_interventions": s.guardrail_interventions,
                "async_jobs_started": s.async_jobs_started,
                "bidi_sessions": s.bidi_sessions,
                "bidi_events_in": s.bidi_events_in,
                "bidi_events_out": s.bidi_events_out,
                "input_tokens": s.input_tokens,
                "output_tokens": s.output_tokens,
                "cache_read_input_tokens": s.cache_read_input_tokens,
                "cache_write_input_tokens": s.cache_write_input_tokens,
                "cache_write_1h_input_tokens": s.cache_write_1h_input_tokens,
            })
        })
    }

    pub fn reset(&self) {
        self.with(|s| *s = StatsInner::default());
    }
}

/// Requests per model over the last minute, for a per-minute quota.
#[derive(Debug, Default)]
pub struct Quota {
    recent: Mutex<HashMap<String, VecDeque<Duration>>>,
}

impl Quota {
    /// Counts one request at `now`; false when the model is over `per_minute`.
    pub fn admit(&self, model: &str, per_minute: u32, now: Duration) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let window = recent.entry(model.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= Duration::from_secs(60))
        {
            window.pop_front();
        }
        if window.len() >= per_minute as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    pub fn reset(&self) {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_admits_per_minute_then_recovers() {
        let q = Quota::default();
        let t0 = Duration::from_secs(100);
        assert!(q.admit("m", 2, t0));
        assert!(q.admit("m", 2, t0));
        assert!(!q.admit("m", 2, t0 + Duration::from_secs(59)));
        assert!(q.admit("other", 2, t0));
        assert!(q.admit("m", 2, t0 + Duration::from_secs(61)));
    }

    fn logged(seq: u64) -> LoggedRequest {
        LoggedRequest {
            seq,
            request_id: String::new(),
            face: Face::Bedrock,
            operation: "converse",
            model_id: String::new(),
            path: String::new(),
            http_version: "HTTP/1.1",
            headers: BTreeMap::new(),
            body: Value::Null,
            at_ms: 0,
        }
    }

    #[test]
    fn the_log_keeps_the_newest() {
        let log = RequestLog::new(2, 1 << 20);
        for i in 0..3 {
            log.push(logged(i), Bytes::from_static(br#"{"a":1}"#));
        }
        let seqs: Vec<_> = log.recent(10).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(log.recent(1)[0].seq, 2);
        assert_eq!(log.recent(1)[0].body, json!({"a": 1}), "read back as JSON");
    }

    #[test]
    fn the_log_is_bounded_by_body_bytes_and_keeps_raw_bodies() {
        let log = RequestLog::new(1000, 100);
        for i in 0..10 {
            log.push(logged(i), Bytes::from(vec![b'x'; 30]));
        }
        let seqs: Vec<_> = log.recent(100).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [7, 8, 9], "three 30-byte bodies fit in 100 bytes");
        assert_eq!(log.bytes(), 90);
        assert_eq!(
            log.recent(1)[0].body,
            json!("x".repeat(30)),
            "not JSON: a string"
        );
        log.push(logged(10), Bytes::from(vec![b'y'; 500]));
        assert_eq!(
            log.recent(100).len(),
            1,
            "the newest is kept even when larger"
        );
        log.clear();
        assert_eq!(log.bytes(), 0);
    }

    #[test]
    fn the_clock_advances() {
        let c = Clock::default();
        let before = c.now();
        c.advance(Duration::from_secs(300));
        assert!(c.now() >= before + Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_scaled_clock_runs_as_fast_as_delays_shrink() {
        let fast = Clock::scaled(0.01);
        let instant = Clock::scaled(0.0);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            fast.now(),
            Duration::from_secs(300),
            "3 s real = 5 simulated minutes"
        );
        assert_eq!(
            instant.now(),
            Duration::from_secs(3),
            "time_scale 0 keeps real time"
        );
    }
}
