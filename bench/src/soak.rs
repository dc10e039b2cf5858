//! The `soak` subcommand: mixed traffic at a fixed rate for a fixed time
//! against one proxy (cache hits, misses, streams, upstream errors, slow and
//! idle clients, each a share of the arrivals), while the proxy's RSS and open
//! file descriptors are sampled by PID. It reports what a leak or a stuck
//! resource would show: growth after the warm-up, latency per kind, and every
//! valid request that failed (an expected upstream fault is counted apart).
//!
//! Bounded on purpose: arrivals stop at `duration`, requests in flight and idle
//! connections are capped (an arrival over a cap is counted as skipped), and
//! every call has the client's timeout.

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, Api, Auth, AuthOptions, BenchClient, CallResult, CallShape, SlowBody};
use crate::error::BenchError;
use crate::hostile::{self, Ending, Held, HeldCounts};
use crate::process::{self, Growth, ProcSample};
use crate::stats::{LatencyHistogram, LatencySummary};
use crate::table::{code_list, num, Table};

/// What one arrival does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Converse with one of a few fixed bodies at temperature 0: a response-cache hit after its first time.
    Hit,
    /// Converse with a body never sent before.
    Miss,
    /// ConverseStream with a body never sent before.
    Stream,
    /// Converse to the error model, which the simulator is told to fail.
    Error,
    /// Converse whose body is sent in pieces over several seconds.
    SlowBody,
    /// ConverseStream read with a pause after every chunk.
    SlowRead,
    /// A connection opened and left silent.
    Idle,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Hit,
        Kind::Miss,
        Kind::Stream,
        Kind::Error,
        Kind::SlowBody,
        Kind::SlowRead,
        Kind::Idle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Hit => "hit",
            Kind::Miss => "miss",
            Kind::Stream => "stream",
            Kind::Error => "error",
            Kind::SlowBody => "slow-body",
            Kind::SlowRead => "slow-read",
            Kind::Idle => "idle",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn index(self) -> usize {
        Kind::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }

    /// A request that should succeed: its failure is an error.
    fn is_valid_request(self) -> bool {
        !matches!(self, Kind::Error | Kind::Idle)
    }
}

/// The default `--mix`.
pub const DEFAULT_MIX: &str = "hit=35,miss=20,stream=20,error=5,slow-body=5,slow-read=5,idle=10";

/// Each kind's share of the arrivals.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// By [`Kind::ALL`] order; they sum to 1.
    shares: [f64; 7],
}

impl Mix {
    /// Parses `kind=weight,...`: weights are relative (they need not sum to
    /// 100), a kind left out gets none, and at least one weight is positive.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = [None::<f64>; 7];
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, weight) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}`: expected kind=weight"))?;
            let kind = Kind::parse(name.trim()).ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown kind `{}` (one of {})",
                    name.trim(),
                    names.join(", ")
                )
            })?;
            let weight: f64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{item}`: the weight is not a number"))?;
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(format!("`{item}`: the weight must be 0 or more"));
            }
            if weights[kind.index()].replace(weight).is_some() {
                return Err(format!("`{}` is given twice", kind.name()));
            }
        }
        let total: f64 = weights.iter().flatten().sum();
        if total <= 0.0 {
            return Err("at least one kind needs a positive weight".into());
        }
        Ok(Mix {
            shares: weights.map(|w| w.unwrap_or(0.0) / total),
        })
    }

    pub fn share(&self, kind: Kind) -> f64 {
        self.shares[kind.index()]
    }

    /// The kind for a uniform draw `u` in [0, 1).
    pub fn pick(&self, u: f64) -> Kind {
        let mut acc = 0.0;
        let mut last = Kind::Hit;
        for kind in Kind::ALL {
            let share = self.share(kind);
            if share <= 0.0 {
                continue;
            }
            acc += share;
            last = kind;
            if u < acc {
                return kind;
            }
        }
        // Rounding may leave the sum a hair under 1.
        last
    }
}

impl Default for Mix {
    fn default() -> Mix {
        // The default parses; should it not, every arrival is a hit.
        Mix::parse(DEFAULT_MIX).unwrap_or(Mix {
            shares: [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        })
    }
}

/// The simulator's error faults (docs/SIMULATOR.md), for `--fault`.
pub const FAULTS: [&str; 6] = [
    "throttle",
    "unavailable",
    "internal",
    "model-not-ready",
    "model-timeout",
    "validation",
];

/// How to run a soak.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Base URL of the proxy.
    pub endpoint: String,
    pub model: String,
    /// The model `error` requests name; the simulator is made to fail it.
    pub error_model: String,
    /// The simulator fault (one of [`FAULTS`]).
    pub fault: String,
    /// The simulator's base URL: a rule failing `error_model` is installed there
    /// for the run, and every rule is cleared after it.
    pub sim: Option<String>,
    /// The proxy's PID, to sample.
    pub pid: Option<u32>,
    /// Arrivals per second, all kinds together.
    pub rate: f64,
    pub duration: Duration,
    /// Left out of the latencies and of the growth.
    pub warmup: Duration,
    pub sample_every: Duration,
    pub mix: Mix,
    /// Distinct bodies `hit` requests cycle through.
    pub hit_prompts: usize,
    pub max_tokens: u32,
    /// `maxTokens` of slow-read streams (a longer answer to read slowly).
    pub slow_read_max_tokens: u32,
    /// How long a slow body takes to send, in `slow_body_pieces` pieces.
    pub slow_body: Duration,
    pub slow_body_pieces: u32,
    /// Pause after each chunk a slow reader reads.
    pub slow_read_pause: Duration,
    /// Idle connections open at once, at most.
    pub idle_max: usize,
    /// How long an idle connection is kept, unless the server closes it first.
    pub idle_hold: Duration,
    /// Requests in flight at once, at most.
    pub max_in_flight: usize,
    pub seed: u64,
    pub auth: AuthOptions,
    pub region: String,
    pub timeout: Duration,
    pub progress: bool,
}

impl SoakOptions {
    /// Defaults for everything but the endpoint.
    pub fn new(endpoint: impl Into<String>) -> SoakOptions {
        SoakOptions {
            endpoint: endpoint.into(),
            model: "us.anthropic.claude-3-5-haiku-20241022-v1:0".into(),
            error_model: "us.amazon.nova-micro-v1:0".into(),
            fault: "internal".into(),
            sim: None,
            pid: None,
            rate: 50.0,
            duration: Duration::from_secs(600),
            warmup: Duration::from_secs(60),
            sample_every: Duration::from_secs(5),
            mix: Mix::default(),
            hit_prompts: 16,
            max_tokens: 64,
            slow_read_max_tokens: 400,
            slow_body: Duration::from_secs(2),
            slow_body_pieces: 10,
            slow_read_pause: Duration::from_millis(20),
            idle_max: 100,
            idle_hold: Duration::from_secs(30),
            max_in_flight: 1000,
            seed: 1,
            auth: AuthOptions::default(),
            region: "us-east-2".into(),
            timeout: Duration::from_secs(60),
            progress: false,
        }
    }
}

/// Refuses options that cannot make a meaningful run.
pub fn check(o: &SoakOptions) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::Options(m.to_owned()));
    client::check_base_url(&o.endpoint)?;
    if let Some(sim) = &o.sim {
        client::check_base_url(sim)?;
    }
    if !(o.rate > 0.0 && o.rate.is_finite()) {
        return bad("--rate must be positive");
    }
    if o.duration.is_zero() || o.warmup >= o.duration {
        return bad("--duration must be positive and longer than --warmup");
    }
    if o.sample_every.is_zero() {
        return bad("--sample-every must be positive");
    }
    if o.hit_prompts == 0 || o.max_in_flight == 0 || o.slow_body_pieces == 0 {
        return bad("--hit-prompts, --max-in-flight and --slow-body-pieces must be at least 1");
    }
    if o.model.is_empty() || o.error_model.is_empty() {
        return bad("--model and --error-model must not be empty");
    }
    if !FAULTS.contains(&o.fault.as_str()) {
        return bad(&format!("--fault must be one of {}", FAULTS.join(", ")));
    }
    if o.mix.share(Kind::SlowBody) > 0.0 {
        if !o.endpoint.starts_with("http://") {
            return bad("slow-body requests need a plain http:// endpoint");
        }
        if o.slow_body >= o.timeout {
            return bad("--slow-body must be shorter than --timeout");
        }
    }
    if o.mix.share(Kind::Idle) > 0.0 && o.idle_max == 0 {
        return bad("idle connections need --idle-max of at least 1");
    }
    Ok(())
}

/// Counters of one kind.
#[derive(Debug)]
struct KindStats {
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    cache_hits: u64,
    /// After the warm-up only.
    latency: LatencyHistogram,
    ttft: LatencyHistogram,
}

impl KindStats {
    fn new() -> Result<KindStats, BenchError> {
        Ok(KindStats {
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            cache_hits: 0,
            latency: LatencyHistogram::new()?,
            ttft: LatencyHistogram::new()?,
        })
    }

    fn record(&mut self, r: &CallResult, measured: bool) {
        self.sent += 1;
        if r.cache_hit {
            self.cache_hits += 1;
        }
        match &r.error {
            Some(code) => *self.errors.entry(code.clone()).or_insert(0) += 1,
            None => {
                self.ok += 1;
                if measured {
                    self.latency.record(r.total);
                    if let Some(t) = r.ttft {
                        self.ttft.record(t);
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
struct Stats {
    kinds: Vec<KindStats>,
    idle: HeldCounts,
    idle_closed_after: LatencyHistogram,
    idle_skipped: u64,
    skipped_in_flight: u64,
}

/// One sample of the proxy, with what the soak held at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SoakSample {
    #[serde(flatten)]
    pub process: ProcSample,
    pub in_flight: u64,
    pub idle_open: u64,
}

/// What every arrival shares.
struct Shared {
    client: BenchClient,
    options: SoakOptions,
    converse_url: String,
    stream_url: String,
    error_url: String,
    idle_addr: Option<SocketAddr>,
    hit_bodies: Vec<bytes::Bytes>,
    /// Makes bodies unique across runs against the same proxy, whose cache
    /// outlives a run.
    nonce: u128,
    counter: AtomicU64,
    in_flight: AtomicUsize,
    idle_open: AtomicUsize,
    stats: Mutex<Stats>,
    release: watch::Sender<bool>,
    warmed_up: Instant,
    started: Instant,
}

fn converse_body(prompt: &str, max_tokens: u32) -> bytes::Bytes {
    bytes::Bytes::from(
        json!({
            "messages": [{ "role": "user", "content": [{ "text": prompt }] }],
            "inferenceConfig": { "maxTokens": max_tokens, "temperature": 0 },
        })
        .to_string(),
    )
}

impl Shared {
    fn unique_body(&self, kind: Kind, max_tokens: u32) -> bytes::Bytes {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        converse_body(
            &format!(
                "Write one sentence about the sea. [soak {:x} {} {n}]",
                self.nonce,
                kind.name()
            ),
            max_tokens,
        )
    }

    /// The call an arrival of `kind` makes; `pick` chooses a hit body.
    fn call_for(&self, kind: Kind, pick: usize) -> (Api, &str, bytes::Bytes, CallShape) {
        let o = &self.options;
        let plain = CallShape::default();
        match kind {
            Kind::Hit => (
                Api::Converse,
                &self.converse_url,
                self.hit_bodies[pick % self.hit_bodies.len()].clone(),
                plain,
            ),
            Kind::Stream => (
                Api::ConverseStream,
                &self.stream_url,
                self.unique_body(kind, o.max_tokens),
                plain,
            ),
            Kind::Error => (
                Api::Converse,
                &self.error_url,
                self.unique_body(kind, o.max_tokens),
                CallShape {
                    sim_fault: http::HeaderValue::from_str(&o.fault).ok(),
                    ..plain
                },
            ),
            Kind::SlowBody => (
                Api::Converse,
                &self.converse_url,
                self.unique_body(kind, o.max_tokens),
                CallShape {
                    slow_body: Some(SlowBody {
                        pieces: o.slow_body_pieces,
                        gap: o.slow_body / o.slow_body_pieces.max(1),
                    }),
                    ..plain
                },
            ),
            Kind::SlowRead => (
                Api::ConverseStream,
                &self.stream_url,
                self.unique_body(kind, o.slow_read_max_tokens),
                CallShape {
                    read_pause: Some(o.slow_read_pause),
                    ..plain
                },
            ),
            Kind::Miss | Kind::Idle => (
                Api::Converse,
                &self.converse_url,
                self.unique_body(kind, o.max_tokens),
                plain,
            ),
        }
    }

    async fn request(&self, kind: Kind, pick: usize, scheduled: Instant) {
        let (api, url, body, shape) = self.call_for(kind, pick);
        let result = self
            .client
            .call_shaped(api, url, &self.options.region, body, scheduled, &shape)
            .await;
        if let Ok(mut stats) = self.stats.lock() {
            stats.kinds[kind.index()].record(&result, scheduled >= self.warmed_up);
        }
    }

    async fn idle(&self, addr: SocketAddr) {
        let held = match hostile::connect(addr, Duration::from_secs(5)).await {
            None => Held {
                ending: Ending::Refused,
                lasted: Duration::ZERO,
            },
            Some(tcp) => {
                let hold = hostile::hold_idle(tcp, self.release.subscribe());
                match tokio::time::timeout(self.options.idle_hold, hold).await {
                    Ok(held) => held,
                    // Kept for its whole hold: closed by this side.
                    Err(_) => Held {
                        ending: Ending::Open,
                        lasted: self.options.idle_hold,
                    },
                }
            }
        };
        if let Ok(mut stats) = self.stats.lock() {
            stats.idle.add(&held);
            if !matches!(held.ending, Ending::Open | Ending::Refused) {
                stats.idle_closed_after.record(held.lasted);
            }
        }
    }

    fn sample(&self) -> Option<Result<SoakSample, BenchError>> {
        let pid = self.options.pid?;
        let at_s = self.started.elapsed().as_secs_f64();
        Some(process::sample(pid, at_s).map(|process| SoakSample {
            process,
            in_flight: self.in_flight.load(Ordering::Relaxed) as u64,
            idle_open: self.idle_open.load(Ordering::Relaxed) as u64,
        }))
    }
}

/// Decrements a gauge when a task ends, however it ends.
struct Gauge<'a>(&'a AtomicUsize);

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One kind's numbers (`soak.json`).
#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    pub kind: String,
    pub share: f64,
    pub sent: u64,
    pub ok: u64,
    /// Failures by code; for `error`, the expected faults.
    pub errors: BTreeMap<String, u64>,
    pub cache_hits: u64,
    /// Successful requests started after the warm-up (the latencies' count).
    pub latency_ms: Option<LatencySummary>,
    pub ttft_ms: Option<LatencySummary>,
}

/// Idle connections (`soak.json`).
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    #[serde(flatten)]
    pub counts: HeldCounts,
    /// Arrivals not opened because `idle_max` were open already.
    pub skipped_at_max: u64,
    pub hold_s: f64,
    /// How long the server kept those it closed.
    pub closed_by_server_after_ms: Option<LatencySummary>,
}

/// The whole run (`soak.json`).
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub endpoint: String,
    pub model: String,
    pub error_model: String,
    pub fault: String,
    /// How faults reach the simulator: its rule, or only the request header.
    pub fault_via: String,
    pub rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub elapsed_s: f64,
    pub seed: u64,
    pub arrivals: u64,
    /// Arrivals dropped because `max_in_flight` requests were in flight.
    pub skipped_in_flight: u64,
    /// Valid requests (every kind but `error` and `idle`) that failed.
    pub errors_total: u64,
    pub kinds: Vec<KindReport>,
    /// The `error` kind: answers that failed as expected are in `errors`, and
    /// `ok` counts faults that did not reach the client.
    pub faults: Option<KindReport>,
    pub idle: Option<IdleReport>,
    pub pid: Option<u32>,
    pub samples: Vec<SoakSample>,
    pub growth: Option<Growth>,
    /// Sampled once the traffic is over and every connection closed.
    pub settled: Option<SoakSample>,
    /// Why sampling stopped early (the process ended?).
    pub sampling_error: Option<String>,
}

/// Sends a control-plane request to the simulator.
async fn sim_control(
    sim: &str,
    method: http::Method,
    body: Option<serde_json::Value>,
) -> Result<(), BenchError> {
    let url = format!("{}/_sim/faults", sim.trim_end_matches('/'));
    let http = bedrock_wire::client::http_client(Duration::from_secs(5), 1, false);
    let request = http::Request::builder()
        .method(method)
        .uri(&url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .map_err(|e| BenchError::Options(format!("{url}: {e}")))?;
    let response = tokio::time::timeout(Duration::from_secs(10), http.request(request))
        .await
        .map_err(|_| BenchError::Client(format!("{url}: no answer in 10s")))?
        .map_err(|e| BenchError::Client(format!("{url}: {e}")))?;
    if !response.status().is_success() {
        return Err(BenchError::Client(format!(
            "{url} answered {}",
            response.status()
        )));
    }
    Ok(())
}

/// Raises this process's open-file limit to its hard limit: a soak and a hold
/// keep many sockets open. Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

async fn resolve(endpoint: &str) -> Result<SocketAddr, BenchError> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| BenchError::Options(format!("`{endpoint}`: {e}")))?;
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| BenchError::Client(format!("{endpoint}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| BenchError::Client(format!("{endpoint}: no address")))
}

/// Runs the soak and reports.
pub async fn run(options: SoakOptions) -> Result<SoakReport, BenchError> {
    check(&options)?;
    if let Some(pid) = options.pid {
        process::check_pid(pid)?;
    }
    let limit = raise_fd_limit();
    let wanted = (options.max_in_flight + options.idle_max + 64) as u64;
    if limit != 0 && limit < wanted {
        eprintln!("warning: this process may open {wanted} sockets but its limit is {limit}");
    }
    let auth = Auth::bedrock(&options.auth, true, &options.region).await?;
    let idle_addr = if options.mix.share(Kind::Idle) > 0.0 {
        Some(resolve(&options.endpoint).await?)
    } else {
        None
    };
    let fault_via = match &options.sim {
        Some(sim) => {
            sim_control(
                sim,
                http::Method::POST,
                Some(json!({ "model": options.error_model, "fault": options.fault })),
            )
            .await?;
            format!("simulator rule at {sim} on model {}", options.error_model)
        }
        None => "x-sim-fault header only (a proxy does not pass it on)".into(),
    };
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let hit_bodies = (0..options.hit_prompts)
        .map(|i| {
            converse_body(
                &format!("Write one sentence about the sea. [soak hit {i}]"),
                options.max_tokens,
            )
        })
        .collect();
    let mut kinds = Vec::new();
    for _ in Kind::ALL {
        kinds.push(KindStats::new()?);
    }
    let progress = if options.progress {
        ProgressBar::new(options.duration.as_secs().max(1))
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len}s {msg}") {
        progress.set_style(style);
    }
    let started = Instant::now();
    let (release, _) = watch::channel(false);
    let pool = (options.rate.ceil() as usize).min(options.max_in_flight);
    let shared = Arc::new(Shared {
        client: BenchClient::new(auth, options.timeout, pool),
        converse_url: client::bedrock_url(&options.endpoint, &options.model, false),
        stream_url: client::bedrock_url(&options.endpoint, &options.model, true),
        error_url: client::bedrock_url(&options.endpoint, &options.error_model, false),
        idle_addr,
        hit_bodies,
        nonce,
        counter: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        idle_open: AtomicUsize::new(0),
        stats: Mutex::new(Stats {
            kinds,
            idle: HeldCounts::default(),
            idle_closed_after: LatencyHistogram::new()?,
            idle_skipped: 0,
            skipped_in_flight: 0,
        }),
        release,
        warmed_up: started + options.warmup,
        started,
        options,
    });

    // The sampler: one sample at once, one every `sample_every`, one at the end.
    let (stop_sampling, mut sampling_stopped) = watch::channel(false);
    let sampler = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut error = None;
            let mut tick = tokio::time::interval(shared.options.sample_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = sampling_stopped.wait_for(|&s| s) => true,
                };
                match shared.sample() {
                    None => break,
                    Some(Ok(s)) => samples.push(s),
                    Some(Err(e)) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
                if last {
                    break;
                }
            }
            (samples, error)
        })
    };

    let mut rng = fastrand::Rng::with_seed(shared.options.seed);
    let end = started + shared.options.duration;
    let mut requests = JoinSet::new();
    let mut idles = JoinSet::new();
    let mut arrivals: u64 = 0;
    loop {
        let scheduled = started + Duration::from_secs_f64(arrivals as f64 / shared.options.rate);
        if scheduled >= end {
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        arrivals += 1;
        let kind = shared.options.mix.pick(rng.f64());
        let pick = rng.usize(..);
        match (kind, shared.idle_addr) {
            (Kind::Idle, Some(addr)) => {
                if shared.idle_open.load(Ordering::Relaxed) >= shared.options.idle_max {
                    if let Ok(mut s) = shared.stats.lock() {
                        s.idle_skipped += 1;
                    }
                } else {
                    shared.idle_open.fetch_add(1, Ordering::Relaxed);
                    let shared = shared.clone();
                    idles.spawn(async move {
                        let _open = Gauge(&shared.idle_open);
                        shared.idle(addr).await;
                    });
                }
            }
            _ => {
                if shared.in_flight.load(Ordering::Relaxed) >= shared.options.max_in_flight {
                    if let Ok(mut s) = shared.stats.lock() {
                        s.skipped_in_flight += 1;
                    }
                } else {
                    shared.in_flight.fetch_add(1, Ordering::Relaxed);
                    let shared = shared.clone();
                    requests.spawn(async move {
                        let _in_flight = Gauge(&shared.in_flight);
                        shared.request(kind, pick, scheduled).await;
                    });
                }
            }
        }
        // Reap finished tasks so a long run does not keep them all.
        while requests.try_join_next().is_some() {}
        while idles.try_join_next().is_some() {}
        progress.set_position(started.elapsed().as_secs());
        progress.set_message(format!(
            "{} in flight, {} idle",
            shared.in_flight.load(Ordering::Relaxed),
            shared.idle_open.load(Ordering::Relaxed)
        ));
    }
    let _ = stop_sampling.send(true);
    let (samples, mut sampling_error) = sampler
        .await
        .map_err(|e| BenchError::Options(format!("the sampler failed: {e}")))?;
    progress.set_message("draining");
    while requests.join_next().await.is_some() {}
    let _ = shared.release.send(true);
    while idles.join_next().await.is_some() {}
    progress.finish_and_clear();
    let elapsed_s = started.elapsed().as_secs_f64();
    if let Some(sim) = &shared.options.sim {
        if let Err(e) = sim_control(sim, http::Method::DELETE, None).await {
            eprintln!("warning: could not clear the simulator's fault rules: {e}");
        }
    }
    // Give the proxy a moment to notice closed connections before the last look.
    let settled = if shared.options.pid.is_some() && sampling_error.is_none() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match shared.sample() {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                sampling_error = Some(e.to_string());
                None
            }
            None => None,
        }
    } else {
        None
    };
    report(
        &shared,
        arrivals,
        elapsed_s,
        fault_via,
        samples,
        settled,
        sampling_error,
    )
}

fn report(
    shared: &Shared,
    arrivals: u64,
    elapsed_s: f64,
    fault_via: String,
    samples: Vec<SoakSample>,
    settled: Option<SoakSample>,
    sampling_error: Option<String>,
) -> Result<SoakReport, BenchError> {
    let o = &shared.options;
    let stats = shared
        .stats
        .lock()
        .map_err(|_| BenchError::Histogram("a task panicked while recording".into()))?;
    let kind_report = |kind: Kind| {
        let s = &stats.kinds[kind.index()];
        KindReport {
            kind: kind.name().into(),
            share: o.mix.share(kind),
            sent: s.sent,
            ok: s.ok,
            errors: s.errors.clone(),
            cache_hits: s.cache_hits,
            latency_ms: s.latency.summary(),
            ttft_ms: s.ttft.summary(),
        }
    };
    let kinds: Vec<KindReport> = Kind::ALL
        .into_iter()
        .filter(|k| k.is_valid_request() && o.mix.share(*k) > 0.0)
        .map(kind_report)
        .collect();
    let errors_total = kinds.iter().map(|k| k.errors.values().sum::<u64>()).sum();
    let process_samples: Vec<ProcSample> = samples.iter().map(|s| s.process).collect();
    Ok(SoakReport {
        endpoint: o.endpoint.clone(),
        model: o.model.clone(),
        error_model: o.error_model.clone(),
        fault: o.fault.clone(),
        fault_via,
        rate: o.rate,
        duration_s: o.duration.as_secs_f64(),
        warmup_s: o.warmup.as_secs_f64(),
        elapsed_s,
        seed: o.seed,
        arrivals,
        skipped_in_flight: stats.skipped_in_flight,
        errors_total,
        kinds,
        faults: (o.mix.share(Kind::Error) > 0.0).then(|| kind_report(Kind::Error)),
        idle: (o.mix.share(Kind::Idle) > 0.0).then(|| IdleReport {
            counts: stats.idle.clone(),
            skipped_at_max: stats.idle_skipped,
            hold_s: o.idle_hold.as_secs_f64(),
            closed_by_server_after_ms: stats.idle_closed_after.summary(),
        }),
        pid: o.pid,
        growth: Growth::after_warmup(&process_samples, o.warmup.as_secs_f64()),
        samples,
        settled,
        sampling_error,
    })
}

/// `30.1 -> 31.0 MB (+0.9, +3.0%), peak 32.0`
fn change_line(c: &process::Change, unit: &str, decimals: usize) -> String {
    format!(
        "{:.d$} -> {:.d$}{unit} ({:+.d$}, {}), peak {:.d$}",
        c.start,
        c.end,
        c.growth,
        c.growth_pct.map_or("-".to_owned(), |p| format!("{p:+.1}%")),
        c.peak,
        d = decimals
    )
}

/// The terminal report.
pub fn render(r: &SoakReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "soak of {} at {} arrivals/s for {:.0}s ({:.0}s warm-up), {} arrivals, seed {}",
        r.endpoint, r.rate, r.duration_s, r.warmup_s, r.arrivals, r.seed
    );
    let mut t = Table::new(&[
        "kind",
        "share",
        "sent",
        "ok",
        "errors",
        "cache hits",
        "p50 ms",
        "p99 ms",
        "TTFT p50",
        "TTFT p99",
    ]);
    for k in r.kinds.iter().chain(&r.faults) {
        let errors: u64 = k.errors.values().sum();
        t.row(vec![
            k.kind.clone(),
            format!("{:.0}%", k.share * 100.0),
            k.sent.to_string(),
            k.ok.to_string(),
            errors.to_string(),
            k.cache_hits.to_string(),
            num(k.latency_ms.map(|s| s.p50), 2),
            num(k.latency_ms.map(|s| s.p99), 2),
            num(k.ttft_ms.map(|s| s.p50), 2),
            num(k.ttft_ms.map(|s| s.p99), 2),
        ]);
    }
    out.push_str(&t.render());
    let _ = writeln!(
        out,
        "latencies: successful requests started after the warm-up, from their scheduled start"
    );
    let _ = writeln!(out, "valid requests failed: {}", r.errors_total);
    for k in &r.kinds {
        if !k.errors.is_empty() {
            let _ = writeln!(out, "  {}: {}", k.kind, code_list(&k.errors));
        }
    }
    if let Some(f) = &r.faults {
        let _ = writeln!(
            out,
            "expected upstream faults ({} via {}): {}{}",
            r.fault,
            r.fault_via,
            if f.errors.is_empty() {
                "none".to_owned()
            } else {
                code_list(&f.errors)
            },
            if f.ok > 0 {
                format!(
                    "; {} error requests succeeded (the fault did not reach them)",
                    f.ok
                )
            } else {
                String::new()
            }
        );
    }
    if let Some(i) = &r.idle {
        let _ = writeln!(
            out,
            "idle connections (held up to {:.0}s): {}; {} not opened (at --idle-max){}",
            i.hold_s,
            i.counts.describe(),
            i.skipped_at_max,
            i.closed_by_server_after_ms
                .map(|s| format!("; the server closed them after p50 {:.0} ms", s.p50))
                .unwrap_or_default()
        );
    }
    if r.skipped_in_flight > 0 {
        let _ = writeln!(
            out,
            "arrivals skipped at --max-in-flight: {} (the target is slower than the rate)",
            r.skipped_in_flight
        );
    }
    match (r.pid, &r.growth) {
        (None, _) => {
            let _ = writeln!(out, "no --pid: RSS and descriptors not sampled");
        }
        (Some(pid), growth) => {
            let _ = writeln!(
                out,
                "process {pid}: {} samples{}",
                r.samples.len(),
                r.sampling_error
                    .as_ref()
                    .map(|e| format!(" (sampling stopped: {e})"))
                    .unwrap_or_default()
            );
            match growth {
                Some(g) => {
                    let _ = writeln!(
                        out,
                        "after the warm-up ({} samples): RSS {}; fds {}",
                        g.samples,
                        change_line(&g.rss_mb, " MB", 1),
                        change_line(&g.fds, "", 0)
                    );
                }
                None => {
                    let _ = writeln!(out, "fewer than two samples after the warm-up: no growth");
                }
            }
            if let Some(s) = &r.settled {
                let _ = writeln!(
                    out,
                    "settled (traffic over, connections closed): RSS {:.1} MB, peak {:.1} MB, fds {}",
                    s.process.rss_kb as f64 / 1024.0,
                    s.process.peak_rss_kb as f64 / 1024.0,
                    s.process.fds
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_normalized_and_picks_by_share() {
        let m = Mix::parse("hit=3, miss=1").unwrap();
        assert_eq!(m.share(Kind::Hit), 0.75);
        assert_eq!(m.share(Kind::Miss), 0.25);
        assert_eq!(m.share(Kind::Idle), 0.0);
        assert_eq!(m.pick(0.0), Kind::Hit);
        assert_eq!(m.pick(0.7499), Kind::Hit);
        assert_eq!(m.pick(0.75), Kind::Miss);
        assert_eq!(m.pick(0.999_999), Kind::Miss);
        // A draw at the top (rounding) gives the last kind with a share.
        assert_eq!(m.pick(1.0), Kind::Miss);
        let d = Mix::default();
        let total: f64 = Kind::ALL.iter().map(|&k| d.share(k)).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert_eq!(d.share(Kind::Hit), 0.35);
    }

    #[test]
    fn the_mix_picks_each_kind_at_its_rate() {
        let m = Mix::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0u32; 7];
        for _ in 0..100_000 {
            counts[m.pick(rng.f64()).index()] += 1;
        }
        for kind in Kind::ALL {
            let seen = f64::from(counts[kind.index()]) / 100_000.0;
            assert!(
                (seen - m.share(kind)).abs() < 0.01,
                "{}: {seen}",
                kind.name()
            );
        }
    }

    #[test]
    fn bad_mixes_say_why() {
        assert!(Mix::parse("hit").unwrap_err().contains("kind=weight"));
        assert!(Mix::parse("hits=1").unwrap_err().contains("slow-body"));
        assert!(Mix::parse("hit=x").unwrap_err().contains("not a number"));
        assert!(Mix::parse("hit=-1").unwrap_err().contains("0 or more"));
        assert!(Mix::parse("hit=1,hit=2").unwrap_err().contains("twice"));
        assert!(Mix::parse("hit=0").unwrap_err().contains("positive"));
        assert!(Mix::parse("").is_err());
    }

    #[test]
    fn options_are_checked() {
        let ok = SoakOptions::new("http://127.0.0.1:1");
        assert!(check(&ok).is_ok());
        let mut o = ok.clone();
        o.warmup = o.duration;
        assert!(check(&o).is_err());
        let mut o = ok.clone();
        o.fault = "explode".into();
        assert!(check(&o).is_err());
        let mut o = ok.clone();
        o.endpoint = "https://example.com".into();
        assert!(check(&o).is_err(), "slow bodies need plain http");
        o.mix = Mix::parse("hit=1").unwrap();
        assert!(check(&o).is_ok());
        let mut o = ok.clone();
        o.rate = f64::INFINITY;
        assert!(check(&o).is_err());
        let mut o = ok;
        o.slow_body = o.timeout;
        assert!(check(&o).is_err());
    }

    #[test]
    fn hit_bodies_repeat_and_other_bodies_do_not() {
        let (release, _) = watch::channel(false);
        let now = Instant::now();
        let shared = Shared {
            client: BenchClient::new(Auth::None, Duration::from_secs(1), 1),
            options: SoakOptions {
                hit_prompts: 2,
                ..SoakOptions::new("http://127.0.0.1:1")
            },
            converse_url: "c".into(),
            stream_url: "s".into(),
            error_url: "e".into(),
            idle_addr: None,
            hit_bodies: vec!["a".into(), "b".into()],
            nonce: 9,
            counter: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_open: AtomicUsize::new(0),
            stats: Mutex::new(Stats {
                kinds: Vec::new(),
                idle: HeldCounts::default(),
                idle_closed_after: LatencyHistogram::new().unwrap(),
                idle_skipped: 0,
                skipped_in_flight: 0,
            }),
            release,
            warmed_up: now,
            started: now,
        };
        assert_eq!(shared.call_for(Kind::Hit, 3).2, "b");
        assert_eq!(shared.call_for(Kind::Hit, 5).2, "b");
        let (api, url, a, shape) = shared.call_for(Kind::Miss, 0);
        assert_eq!((api, url), (Api::Converse, "c"));
        assert!(shape.slow_body.is_none() && shape.sim_fault.is_none());
        let (_, _, b, _) = shared.call_for(Kind::Miss, 0);
        assert_ne!(a, b);
        let (api, url, _, shape) = shared.call_for(Kind::Error, 0);
        assert_eq!((api, url), (Api::Converse, "e"));
        assert_eq!(shape.sim_fault.unwrap(), "internal");
        let (api, _, body, shape) = shared.call_for(Kind::SlowRead, 0);
        assert_eq!(api, Api::ConverseStream);
        assert!(std::str::from_utf8(&body)
            .unwrap()
            .contains("\"maxTokens\":400"));
        assert_eq!(shape.read_pause, Some(Duration::from_millis(20)));
        let slow = shared.call_for(Kind::SlowBody, 0).3.slow_body.unwrap();
        assert_eq!(slow.pieces, 10);
        assert_eq!(slow.gap, Duration::from_millis(200));
    }
}
