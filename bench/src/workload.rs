//! The `workload` subcommand: synthetic application traffic for the prompt-cache
//! benchmark, in three shapes ([`Shape`]): `app`, a few long system prompts
//! shared by many multi-turn conversations (each turn resends the conversation
//! so far) plus exact repeats of earlier requests; `long-tail`, one-turn
//! requests whose system prompts mostly never repeat; `slow`, conversations
//! whose turns are 6 to 10 minutes apart. Measured per target in TTFT, billed
//! tokens and dollars.
//!
//! The text and the schedule are generated here, deterministically from a seed,
//! so two runs (or two targets) send the same requests; prices come from
//! `catalog`. Simulated minutes pass `time_scale` times as fast, to pair with
//! a simulator (and proxy) sped up alike.

use bedrock_wire::converse::Usage;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, Api, Auth, AuthOptions, BenchClient, CallResult};
use crate::error::BenchError;
use crate::stats::{count_codes, Distribution};
use crate::table::{code_list, num, Table};
use bedrock_wire::catalog::{Catalog, ModelInfo};

/// Common English words the generated text is drawn from: the simulator and
/// Bedrock bill about one token per 4 bytes of such text.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "you", "that", "it", "for", "was", "on", "are", "as",
    "with", "they", "be", "at", "one", "have", "this", "from", "by", "word", "but", "not", "what",
    "all", "were", "when", "we", "there", "can", "use", "each", "which", "she", "do", "how",
    "their", "if", "will", "way", "about", "many", "then", "them", "write", "would", "like", "so",
    "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day",
    "could", "go", "come", "did", "number", "sound", "most", "people", "over", "know", "water",
    "than", "call", "first", "who", "may", "down", "side", "been", "now", "find", "any", "new",
    "work", "part", "take", "get", "place", "made", "live", "where", "after", "back", "little",
    "only", "round", "year", "came", "show", "every", "good", "give", "our", "under", "name",
    "very", "through", "just", "form", "sentence", "great", "think", "say", "help", "low", "line",
    "differ", "turn", "cause", "much", "mean", "before", "move", "right", "boy", "old", "too",
    "same", "tell", "does", "set", "three", "want", "air", "well", "also", "play", "small", "end",
    "put", "home", "read", "hand", "port", "large", "spell", "add", "even", "land", "here", "must",
    "big", "high", "such", "follow", "act", "why", "ask", "men", "change", "went", "light", "kind",
    "off", "need", "house", "picture", "try", "us", "again", "animal", "point", "mother", "world",
    "near", "build", "self", "earth", "father", "customer", "order", "account", "policy", "refund",
    "shipping", "invoice", "support", "product", "service", "request", "answer", "question",
    "detail",
];

fn sentence(rng: &mut fastrand::Rng, out: &mut String) {
    let n = rng.usize(6..=16);
    for i in 0..n {
        let w = WORDS[rng.usize(..WORDS.len())];
        if i == 0 {
            let mut c = w.chars();
            if let Some(first) = c.next() {
                out.extend(first.to_uppercase());
                out.push_str(c.as_str());
            }
        } else {
            out.push(' ');
            out.push_str(w);
        }
        if i + 1 < n && rng.u8(..12) == 0 {
            out.push(',');
        }
    }
    out.push('.');
}

/// English-like text of at least `bytes` bytes, the same for the same seed.
pub fn english_text(seed: u64, bytes: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = String::with_capacity(bytes + 128);
    while out.len() < bytes {
        if !out.is_empty() {
            out.push(' ');
        }
        sentence(&mut rng, &mut out);
    }
    out
}

/// Mixes seeds so that nearby inputs give unrelated streams.
fn mix(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// System prompt `k`: about `tokens` tokens (4 bytes each).
pub fn system_prompt(seed: u64, k: usize, tokens: usize) -> String {
    let head = format!(
        "You are assistant number {} of the Example Company help desk. Follow the policies below and answer briefly. ",
        k + 1
    );
    let rest = (tokens * 4).saturating_sub(head.len());
    head + &english_text(mix(seed, 1_000 + k as u64), rest)
}

/// The user message of turn `turn` of conversation `conversation`.
pub fn user_message(seed: u64, conversation: usize, turn: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(mix(seed, ((conversation as u64) << 20) | turn as u64));
    let mut text = format!("Conversation {} turn {}: ", conversation + 1, turn + 1);
    sentence(&mut rng, &mut text);
    text.push(' ');
    sentence(&mut rng, &mut text);
    text.pop();
    text.push('?');
    text
}

/// How many exact repeats go with `originals` requests so that they are a
/// share `share` of all requests.
pub fn repeat_count(originals: u64, share: f64) -> u64 {
    if share <= 0.0 {
        return 0;
    }
    (originals as f64 * share / (1.0 - share)).round() as u64
}

/// The traffic's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// Conversations over a few shared system prompts, with exact repeats.
    App,
    /// One-turn requests, one every 15 simulated seconds: 15% use one of the
    /// `--system-prompts` hot prompts, 20% a prompt used exactly twice (the
    /// second time 1 to 3 minutes after the first), the rest a prompt used once.
    LongTail,
    /// Conversations on the shared system prompts, started 30 simulated
    /// seconds apart, each turn 6 to 10 simulated minutes after the last.
    Slow,
}

impl Shape {
    pub const NAMES: &'static [(Shape, &'static str)] = &[
        (Shape::App, "app"),
        (Shape::LongTail, "long-tail"),
        (Shape::Slow, "slow"),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("app", |(_, n)| n)
    }

    /// Reads `--shape`.
    pub fn parse(name: &str) -> Result<Shape, String> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(s, _)| *s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::NAMES.iter().map(|(_, n)| *n).collect();
                format!("`{name}` is not one of {}", names.join(", "))
            })
    }
}

/// Simulated seconds between long-tail arrivals.
const LONG_TAIL_EVERY_S: u64 = 15;
/// Simulated seconds between the starts of slow conversations.
const SLOW_STAGGER_S: u64 = 30;
/// Gaps between a slow conversation's turns, in simulated seconds.
const SLOW_GAP_S: std::ops::RangeInclusive<u64> = 360..=600;

/// One long-tail request: when (simulated, from the start) and which system prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub at_s: u64,
    pub prompt: usize,
}

/// The long-tail schedule of `requests` arrivals: prompts `0..hot` are the hot
/// ones; every other prompt id is used once, or twice for a pair.
pub fn long_tail_schedule(seed: u64, requests: usize, hot: usize) -> Vec<Arrival> {
    let mut rng = fastrand::Rng::with_seed(mix(seed, 0x7A11));
    let mut due: BTreeMap<usize, usize> = BTreeMap::new();
    let mut next = hot.max(1);
    let mut out = Vec::with_capacity(requests);
    for slot in 0..requests {
        let prompt = if let Some(p) = due.remove(&slot) {
            p
        } else {
            let u = rng.f64();
            if u < 0.15 && hot > 0 {
                rng.usize(..hot)
            } else {
                let p = next;
                next += 1;
                if u < 0.25 {
                    // Find a free slot 4 to 12 arrivals (1 to 3 minutes) later.
                    let mut later = slot + rng.usize(4..=12);
                    while due.contains_key(&later) {
                        later += 1;
                    }
                    due.insert(later, p);
                }
                p
            }
        };
        out.push(Arrival {
            at_s: slot as u64 * LONG_TAIL_EVERY_S,
            prompt,
        });
    }
    out
}

/// The simulated seconds before each turn of slow conversation `c` (the first
/// entry: its start).
pub fn slow_schedule(seed: u64, c: usize, turns: usize) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(mix(seed, 0x5105 + c as u64));
    (0..turns)
        .map(|t| {
            if t == 0 {
                c as u64 * SLOW_STAGGER_S
            } else {
                rng.u64(SLOW_GAP_S)
            }
        })
        .collect()
}

/// How to run the workload.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    pub shape: Shape,
    /// Real seconds per simulated second (the simulator's `--time-scale`).
    pub time_scale: f64,
    /// One base URL, or two to compare (run one after the other, A first).
    pub targets: Vec<String>,
    pub model: String,
    pub conversations: usize,
    pub system_prompts: usize,
    pub system_tokens: usize,
    pub turns: usize,
    /// Share of all requests that are exact repeats of an earlier one.
    pub repeat_share: f64,
    pub concurrency: usize,
    pub max_tokens: u32,
    pub seed: u64,
    pub auth: AuthOptions,
    pub region: String,
    pub catalog: Catalog,
    pub timeout: Duration,
    pub progress: bool,
}

/// Token counts summed from answers' `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TokenTotals {
    pub input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    /// Of the writes, those with the 1-hour TTL.
    pub cache_write_1h_input_tokens: u64,
    pub output_tokens: u64,
}

impl TokenTotals {
    fn add(&mut self, u: &Usage) {
        self.input_tokens += u.input_tokens;
        self.cache_read_input_tokens += u.cache_read_input_tokens;
        self.cache_write_input_tokens += u.cache_write_input_tokens;
        self.cache_write_1h_input_tokens += u
            .cache_write_1h_input_tokens
            .min(u.cache_write_input_tokens);
        self.output_tokens += u.output_tokens;
    }
}

/// Dollars, when the model has a price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Cost {
    pub billed_usd: f64,
    /// The billed tokens with every cache read and write priced as input.
    pub without_caching_usd: f64,
    /// What the answers served from the proxy's cache would have cost upstream.
    pub proxy_cache_usd: f64,
    /// The billed input alone: plain input, cache reads, and cache writes at
    /// their TTL's price.
    pub input_usd: f64,
}

/// One target's results.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadTargetReport {
    pub label: String,
    pub url: String,
    pub requests: u64,
    pub repeats: u64,
    pub errors: BTreeMap<String, usize>,
    pub elapsed_s: f64,
    pub ttft_ms: Option<Distribution>,
    pub total_ms: Option<Distribution>,
    /// TTFT divided by the time scale: what it would be at full scale.
    pub ttft_simulated_ms: Option<Distribution>,
    /// Usage of answers that reached Bedrock (not a response-cache hit).
    pub billed: TokenTotals,
    /// Answers from the gateway's response cache, and the usage they reported.
    pub proxy_cache_hits: u64,
    pub proxy_cache: TokenTotals,
    pub cost: Option<Cost>,
}

/// The run (`workload.json`).
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    pub shape: Shape,
    pub time_scale: f64,
    pub model: String,
    pub priced_as: Option<String>,
    pub conversations: usize,
    pub system_prompts: usize,
    pub system_tokens: usize,
    pub turns: usize,
    pub repeat_share: f64,
    pub concurrency: usize,
    pub targets: Vec<WorkloadTargetReport>,
    /// (B - A) / A of TTFT p50, with two targets.
    pub ttft_p50_change: Option<f64>,
    /// (B - A) / A of the billed cost, with two targets.
    pub cost_change: Option<f64>,
    /// (B - A) / A of the billed input cost, with two targets.
    pub input_cost_change: Option<f64>,
}

#[derive(Debug)]
struct Record {
    result: CallResult,
    repeat: bool,
}

/// Which requests are followed by exact repeats: `slots[c * turns + t]` is how
/// many repeats follow turn `t` of conversation `c`. Chosen from the seed
/// alone, so every target (and every run) repeats the same requests whatever
/// order concurrent conversations finish in.
pub fn repeat_slots(seed: u64, originals: usize, repeats: u64) -> Vec<u32> {
    let mut order: Vec<usize> = (0..originals).collect();
    fastrand::Rng::with_seed(mix(seed, 0x5EED)).shuffle(&mut order);
    let mut slots = vec![0u32; originals];
    let n = originals.max(1) as u64;
    for (k, &slot) in order.iter().enumerate() {
        let k = k as u64;
        // Spread `repeats` over the slots as evenly as integers allow.
        slots[slot] = ((k + 1) * repeats / n - k * repeats / n) as u32;
    }
    slots
}

/// What one target's workers share.
struct Run {
    client: BenchClient,
    url: String,
    options: Arc<WorkloadOptions>,
    systems: Arc<Vec<String>>,
    slots: Arc<Vec<u32>>,
    next_conversation: AtomicUsize,
    /// Every call's result. A std mutex: held for a push, never across an await.
    records: Mutex<Vec<Record>>,
    progress: ProgressBar,
}

impl Run {
    async fn call(&self, body: bytes::Bytes, repeat: bool) -> CallResult {
        let result = self
            .client
            .call(
                Api::ConverseStream,
                &self.url,
                &self.options.region,
                body,
                Instant::now(),
            )
            .await;
        if let Ok(mut records) = self.records.lock() {
            records.push(Record {
                result: result.clone(),
                repeat,
            });
        }
        self.progress.inc(1);
        result
    }

    /// Sends the repeats due after turn `turn` of conversation `c`: each an
    /// earlier answered request of the same conversation, picked by the seed.
    async fn repeats_after(&self, c: usize, turn: usize, answered: &[bytes::Bytes]) {
        let slot = c * self.options.turns + turn;
        let due = self.slots.get(slot).copied().unwrap_or(0);
        if answered.is_empty() {
            return;
        }
        for i in 0..due {
            let mut rng = fastrand::Rng::with_seed(mix(
                self.options.seed,
                (slot as u64) << 16 | u64::from(i),
            ));
            let body = answered[rng.usize(..answered.len())].clone();
            self.call(body, true).await;
        }
    }

    /// Sleeps until `at_s` simulated seconds after `start`.
    async fn until(&self, start: Instant, at_s: u64) {
        let real = Duration::from_secs_f64(at_s as f64 * self.options.time_scale);
        tokio::time::sleep_until(start + real).await;
    }

    /// One conversation; with `schedule` (the `slow` shape), each turn waits
    /// its simulated gap and no repeats are sent.
    async fn conversation(&self, c: usize, schedule: Option<(Instant, Vec<u64>)>) {
        let o = &self.options;
        let system = &self.systems[c % self.systems.len()];
        let mut messages: Vec<Value> = Vec::new();
        let mut answered: Vec<bytes::Bytes> = Vec::new();
        let mut at_s = 0;
        for turn in 0..o.turns {
            if let Some((start, gaps)) = &schedule {
                at_s += gaps.get(turn).copied().unwrap_or(0);
                self.until(*start, at_s).await;
            }
            messages.push(json!({
                "role": "user",
                "content": [{ "text": user_message(o.seed, c, turn) }],
            }));
            let body = json!({
                "system": [{ "text": system }],
                "messages": messages,
                "inferenceConfig": { "maxTokens": o.max_tokens, "temperature": 0 },
            });
            let body = bytes::Bytes::from(body.to_string());
            let result = self.call(body.clone(), false).await;
            let ok = result.is_ok() && !result.text.trim().is_empty();
            if ok {
                answered.push(body);
            }
            if schedule.is_none() {
                self.repeats_after(c, turn, &answered).await;
            }
            if !ok {
                // The next turn would need the answer this one did not give.
                return;
            }
            messages.push(json!({
                "role": "assistant",
                "content": [{ "text": result.text }],
            }));
        }
    }

    /// One long-tail request: a one-turn conversation under its system prompt.
    async fn one_off(&self, n: usize, prompt: usize) {
        let o = &self.options;
        let system = system_prompt(o.seed, prompt, o.system_tokens);
        let body = json!({
            "system": [{ "text": system }],
            "messages": [{ "role": "user", "content": [{ "text": user_message(o.seed, n, 0) }] }],
            "inferenceConfig": { "maxTokens": o.max_tokens, "temperature": 0 },
        });
        self.call(bytes::Bytes::from(body.to_string()), false).await;
    }
}

/// Runs the shape's traffic on `run`.
async fn drive(run: &Arc<Run>) {
    let o = run.options.clone();
    let mut workers = JoinSet::new();
    let start = Instant::now();
    match o.shape {
        Shape::App => {
            for _ in 0..o.concurrency.min(o.conversations) {
                let run = run.clone();
                workers.spawn(async move {
                    loop {
                        let c = run.next_conversation.fetch_add(1, Ordering::Relaxed);
                        if c >= run.options.conversations {
                            break;
                        }
                        run.conversation(c, None).await;
                    }
                });
            }
        }
        Shape::LongTail => {
            let gate = Arc::new(tokio::sync::Semaphore::new(o.concurrency));
            for (n, a) in long_tail_schedule(o.seed, o.conversations, o.system_prompts)
                .into_iter()
                .enumerate()
            {
                run.until(start, a.at_s).await;
                let Ok(permit) = gate.clone().acquire_owned().await else {
                    break;
                };
                let run = run.clone();
                workers.spawn(async move {
                    run.one_off(n, a.prompt).await;
                    drop(permit);
                });
            }
        }
        Shape::Slow => {
            for c in 0..o.conversations {
                let run = run.clone();
                let schedule = slow_schedule(o.seed, c, o.turns);
                workers.spawn(async move { run.conversation(c, Some((start, schedule))).await });
            }
        }
    }
    while workers.join_next().await.is_some() {}
}

/// Requests the shape sends (repeats included).
fn planned_requests(o: &WorkloadOptions) -> u64 {
    match o.shape {
        Shape::App => {
            let originals = (o.conversations * o.turns) as u64;
            originals + repeat_count(originals, o.repeat_share)
        }
        Shape::LongTail => o.conversations as u64,
        Shape::Slow => (o.conversations * o.turns) as u64,
    }
}

fn check(options: &WorkloadOptions) -> Result<(), BenchError> {
    client::check_targets(&options.targets, 2)?;
    if options.conversations == 0
        || options.system_prompts == 0
        || options.turns == 0
        || options.concurrency == 0
    {
        return Err(BenchError::Options(
            "--conversations, --system-prompts, --turns and --concurrency must be at least 1"
                .into(),
        ));
    }
    if !(0.0..1.0).contains(&options.repeat_share) {
        return Err(BenchError::Options(
            "--repeat-share must be at least 0 and below 1".into(),
        ));
    }
    if !(options.time_scale > 0.0 && options.time_scale.is_finite()) {
        return Err(BenchError::Options(
            "--time-scale must be a number above 0".into(),
        ));
    }
    Ok(())
}

async fn run_target(
    label: &str,
    url: &str,
    options: &Arc<WorkloadOptions>,
    systems: &Arc<Vec<String>>,
    client: &BenchClient,
    price: Option<&ModelInfo>,
) -> WorkloadTargetReport {
    let originals_total = (options.conversations * options.turns) as u64;
    let repeats_total = repeat_count(originals_total, options.repeat_share);
    let progress = if options.progress {
        let bar = ProgressBar::new(planned_requests(options));
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} requests") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("{label} {url}"));
        bar
    } else {
        ProgressBar::hidden()
    };
    let run = Arc::new(Run {
        client: client.clone(),
        url: client::bedrock_url(url, &options.model, true),
        options: options.clone(),
        systems: systems.clone(),
        slots: Arc::new(repeat_slots(
            options.seed,
            originals_total as usize,
            repeats_total,
        )),
        next_conversation: AtomicUsize::new(0),
        records: Mutex::new(Vec::new()),
        progress,
    });
    let started = Instant::now();
    drive(&run).await;
    let elapsed_s = started.elapsed().as_secs_f64();
    run.progress.finish_and_clear();

    let records = run
        .records
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    summarize(label, url, &records, elapsed_s, price, options.time_scale)
}

fn summarize(
    label: &str,
    url: &str,
    records: &[Record],
    elapsed_s: f64,
    price: Option<&ModelInfo>,
    time_scale: f64,
) -> WorkloadTargetReport {
    let errors = count_codes(records.iter().filter_map(|r| r.result.error.as_deref()));
    let mut billed = TokenTotals::default();
    let mut proxy_cache = TokenTotals::default();
    let mut hits = 0;
    let mut cost = price.map(|_| Cost::default());
    for r in records {
        if r.result.cache_hit {
            hits += 1;
        }
        let Some(usage) = &r.result.usage else {
            continue;
        };
        let tier_price = price.map(|p| p.price_for(r.result.served_tier.as_deref()));
        if r.result.cache_hit {
            proxy_cache.add(usage);
            if let (Some(c), Some(p)) = (cost.as_mut(), tier_price) {
                c.proxy_cache_usd += p.cost(usage);
            }
        } else {
            billed.add(usage);
            if let (Some(c), Some(p)) = (cost.as_mut(), tier_price) {
                c.billed_usd += p.cost(usage);
                c.without_caching_usd += p.cost_uncached(usage);
                c.input_usd += p.input_cost(usage);
            }
        }
    }
    let ok = || records.iter().filter(|r| r.result.is_ok());
    WorkloadTargetReport {
        label: label.to_owned(),
        url: url.to_owned(),
        requests: records.len() as u64,
        repeats: records.iter().filter(|r| r.repeat).count() as u64,
        errors,
        elapsed_s,
        ttft_ms: Distribution::of(
            ok().filter_map(|r| r.result.ttft.map(|t| t.as_secs_f64() * 1000.0)),
        ),
        ttft_simulated_ms: Distribution::of(
            ok().filter_map(|r| r.result.ttft.map(|t| t.as_secs_f64() * 1000.0 / time_scale)),
        ),
        total_ms: Distribution::of(ok().map(|r| r.result.total.as_secs_f64() * 1000.0)),
        billed,
        proxy_cache_hits: hits,
        proxy_cache,
        cost,
    }
}

fn change(a: f64, b: f64) -> Option<f64> {
    (a > 0.0).then(|| (b - a) / a)
}

/// Runs the workload on each target in turn (A first) and reports.
pub async fn run(options: WorkloadOptions) -> Result<WorkloadReport, BenchError> {
    check(&options)?;
    let auth = Auth::bedrock(&options.auth, true, &options.region).await?;
    let client = BenchClient::new(auth, options.timeout, options.concurrency);
    let systems: Arc<Vec<String>> = Arc::new(
        (0..options.system_prompts)
            .map(|k| system_prompt(options.seed, k, options.system_tokens))
            .collect(),
    );
    let options = Arc::new(options);
    let price = options.catalog.get(&options.model).map(|l| l.model.clone());
    let mut targets = Vec::new();
    for (i, url) in options.targets.iter().enumerate() {
        let label = client::target_label(i, options.targets.len());
        targets.push(run_target(label, url, &options, &systems, &client, price.as_deref()).await);
    }
    let (ttft_p50_change, cost_change, input_cost_change) = match targets.as_slice() {
        [a, b] => (
            a.ttft_ms
                .zip(b.ttft_ms)
                .and_then(|(a, b)| change(a.p50, b.p50)),
            a.cost
                .zip(b.cost)
                .and_then(|(a, b)| change(a.billed_usd, b.billed_usd)),
            a.cost
                .zip(b.cost)
                .and_then(|(a, b)| change(a.input_usd, b.input_usd)),
        ),
        _ => (None, None, None),
    };
    Ok(WorkloadReport {
        shape: options.shape,
        time_scale: options.time_scale,
        model: options.model.clone(),
        priced_as: price.map(|p| p.id.clone()),
        conversations: options.conversations,
        system_prompts: options.system_prompts,
        system_tokens: options.system_tokens,
        turns: options.turns,
        repeat_share: options.repeat_share,
        concurrency: options.concurrency,
        targets,
        ttft_p50_change,
        cost_change,
        input_cost_change,
    })
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:+.1}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// The terminal report: one column per target.
pub fn render(report: &WorkloadReport) -> String {
    let mut out = String::new();
    let priced = report
        .priced_as
        .as_deref()
        .map(|id| format!("priced as {id}"))
        .unwrap_or_else(|| "no price in the catalog".into());
    let traffic = match report.shape {
        Shape::App => format!(
            "{} conversations x {} turns, {} system prompts of ~{} tokens, {:.0}% repeats, {} workers",
            report.conversations,
            report.turns,
            report.system_prompts,
            report.system_tokens,
            report.repeat_share * 100.0,
            report.concurrency,
        ),
        Shape::LongTail => format!(
            "long tail: {} one-turn requests {LONG_TAIL_EVERY_S} s apart, {} hot system prompts, the rest used once or twice, ~{} tokens each",
            report.conversations, report.system_prompts, report.system_tokens,
        ),
        Shape::Slow => format!(
            "slow: {} conversations x {} turns 6-10 min apart, {} system prompts of ~{} tokens",
            report.conversations, report.turns, report.system_prompts, report.system_tokens,
        ),
    };
    let _ = writeln!(
        out,
        "model {} ({priced}), {traffic}, time scale {}",
        report.model, report.time_scale
    );
    let mut header = vec![String::new()];
    header.extend(
        report
            .targets
            .iter()
            .map(|t| format!("{} {}", t.label, t.url)),
    );
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&header_refs);
    let row = |t: &mut Table, name: &str, f: &dyn Fn(&WorkloadTargetReport) -> String| {
        let mut r = vec![name.to_owned()];
        r.extend(report.targets.iter().map(f));
        t.row(r);
    };
    let dist = |d: Option<Distribution>, f: fn(&Distribution) -> f64| num(d.as_ref().map(f), 1);
    let usd = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    row(&mut t, "requests", &|r| r.requests.to_string());
    row(&mut t, "  of which repeats", &|r| r.repeats.to_string());
    row(&mut t, "errors", &|r| {
        r.errors.values().sum::<usize>().to_string()
    });
    row(&mut t, "elapsed s", &|r| format!("{:.1}", r.elapsed_s));
    row(&mut t, "TTFT p50 ms", &|r| dist(r.ttft_ms, |d| d.p50));
    row(&mut t, "TTFT p90 ms", &|r| dist(r.ttft_ms, |d| d.p90));
    row(&mut t, "TTFT p99 ms", &|r| dist(r.ttft_ms, |d| d.p99));
    if report.time_scale != 1.0 {
        row(&mut t, "TTFT p50 ms at full scale", &|r| {
            dist(r.ttft_simulated_ms, |d| d.p50)
        });
    }
    row(&mut t, "total p50 ms", &|r| dist(r.total_ms, |d| d.p50));
    row(&mut t, "billed input tokens", &|r| {
        r.billed.input_tokens.to_string()
    });
    row(&mut t, "billed cache read tokens", &|r| {
        r.billed.cache_read_input_tokens.to_string()
    });
    row(&mut t, "billed cache write tokens", &|r| {
        r.billed.cache_write_input_tokens.to_string()
    });
    row(&mut t, "  of which 1-hour", &|r| {
        r.billed.cache_write_1h_input_tokens.to_string()
    });
    row(&mut t, "billed output tokens", &|r| {
        r.billed.output_tokens.to_string()
    });
    row(&mut t, "cost USD", &|r| usd(r.cost.map(|c| c.billed_usd)));
    row(&mut t, "  input cost USD", &|r| {
        usd(r.cost.map(|c| c.input_usd))
    });
    row(&mut t, "cost without caching USD", &|r| {
        usd(r.cost.map(|c| c.without_caching_usd))
    });
    row(&mut t, "served from proxy cache (hits)", &|r| {
        r.proxy_cache_hits.to_string()
    });
    row(&mut t, "  their input+cached tokens", &|r| {
        (r.proxy_cache.input_tokens
            + r.proxy_cache.cache_read_input_tokens
            + r.proxy_cache.cache_write_input_tokens)
            .to_string()
    });
    row(&mut t, "  their output tokens", &|r| {
        r.proxy_cache.output_tokens.to_string()
    });
    row(&mut t, "  their upstream cost USD", &|r| {
        usd(r.cost.map(|c| c.proxy_cache_usd))
    });
    out.push_str(&t.render());
    for target in &report.targets {
        if !target.errors.is_empty() {
            let _ = writeln!(
                out,
                "errors {}: {}",
                target.label,
                code_list(&target.errors)
            );
        }
    }
    if report.targets.len() == 2 {
        let _ = writeln!(
            out,
            "B vs A: TTFT p50 {}, cost {}, input cost {}",
            pct(report.ttft_p50_change),
            pct(report.cost_change),
            pct(report.input_cost_change)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_deterministic_and_about_four_bytes_a_token() {
        let a = system_prompt(7, 0, 3000);
        assert_eq!(a, system_prompt(7, 0, 3000));
        assert_ne!(a, system_prompt(7, 1, 3000));
        assert_ne!(a, system_prompt(8, 0, 3000));
        let tokens = bedrock_wire::tokens::text(&a);
        assert!((2900..=3100).contains(&tokens), "{tokens}");
        assert!(a.is_ascii());
        assert_ne!(user_message(1, 0, 0), user_message(1, 0, 1));
        assert!(user_message(1, 2, 0).starts_with("Conversation 3 turn 1: "));
    }

    #[test]
    fn repeats_are_the_asked_share_of_all_requests() {
        assert_eq!(repeat_count(120, 0.2), 30);
        assert_eq!(repeat_count(120, 0.0), 0);
        assert_eq!(repeat_count(10, 0.5), 10);
        let slots = repeat_slots(3, 120, 30);
        assert_eq!(slots.iter().map(|&n| u64::from(n)).sum::<u64>(), 30);
        assert_eq!(slots, repeat_slots(3, 120, 30), "the seed decides");
        assert!(slots.iter().all(|&n| n <= 1));
        let many = repeat_slots(3, 10, 25);
        assert_eq!(many.iter().map(|&n| u64::from(n)).sum::<u64>(), 25);
        assert!(many.iter().all(|&n| (2..=3).contains(&n)));
    }

    #[test]
    fn the_long_tail_mostly_never_repeats_and_its_pairs_come_close() {
        let s = long_tail_schedule(1, 400, 3);
        assert_eq!(s, long_tail_schedule(1, 400, 3), "the seed decides");
        assert_eq!(s.len(), 400);
        let mut uses: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for a in &s {
            uses.entry(a.prompt).or_default().push(a.at_s);
        }
        let once = uses
            .iter()
            .filter(|(p, u)| **p >= 3 && u.len() == 1)
            .count();
        let twice: Vec<&Vec<u64>> = uses
            .iter()
            .filter(|(p, u)| **p >= 3 && u.len() == 2)
            .map(|(_, u)| u)
            .collect();
        assert!(uses.iter().all(|(p, u)| *p < 3 || u.len() <= 2));
        assert!(
            once as f64 > 0.8 * uses.len() as f64,
            "{once} of {}",
            uses.len()
        );
        assert!(!twice.is_empty());
        assert!(
            twice.iter().all(|u| (60..=240).contains(&(u[1] - u[0]))),
            "{twice:?}"
        );
        let hot: usize = (0..3).map(|p| uses.get(&p).map_or(0, Vec::len)).sum();
        assert!((40..=80).contains(&hot), "{hot}");
    }

    #[test]
    fn slow_turns_are_six_to_ten_minutes_apart() {
        let s = slow_schedule(1, 2, 5);
        assert_eq!(s[0], 60, "the third conversation starts a minute in");
        assert!(s[1..].iter().all(|g| (360..=600).contains(g)));
        assert_eq!(s, slow_schedule(1, 2, 5));
        assert_eq!(Shape::parse("long-tail"), Ok(Shape::LongTail));
        assert!(Shape::parse("bursty")
            .unwrap_err()
            .contains("app, long-tail, slow"));
    }

    fn record(usage: Usage, hit: bool, tier: Option<&str>) -> Record {
        Record {
            result: CallResult {
                status: Some(200),
                ttft: Some(Duration::from_millis(100)),
                total: Duration::from_millis(300),
                usage: Some(usage),
                served_tier: tier.map(str::to_owned),
                cache_hit: hit,
                ..CallResult::default()
            },
            repeat: hit,
        }
    }

    #[test]
    fn proxy_cache_hits_are_not_billed() {
        let catalog = Catalog::embedded();
        let haiku = catalog
            .get("us.anthropic.claude-3-5-haiku-20241022-v1:0")
            .map(|l| l.model.clone());
        let usage = Usage {
            input_tokens: 100,
            output_tokens: 50,
            total_tokens: 0,
            cache_read_input_tokens: 3000,
            cache_write_input_tokens: 0,
            cache_write_1h_input_tokens: 0,
        };
        let records = vec![
            record(usage, false, None),
            record(usage, true, None),
            record(usage, false, Some("optimized")),
        ];
        let r = summarize("A", "u", &records, 1.0, haiku.as_deref(), 1.0);
        assert_eq!(r.billed.cache_read_input_tokens, 6000);
        assert_eq!(r.proxy_cache.cache_read_input_tokens, 3000);
        assert_eq!(r.proxy_cache_hits, 1);
        assert_eq!(r.repeats, 1);
        let cost = r.cost.unwrap();
        // Standard: (100*0.8 + 50*4 + 3000*0.08)/1e6; optimized: (100*1 + 50*5 + 3000*0.1)/1e6.
        let standard = (80.0 + 200.0 + 240.0) / 1e6;
        let optimized = (100.0 + 250.0 + 300.0) / 1e6;
        assert!((cost.billed_usd - (standard + optimized)).abs() < 1e-12);
        assert!((cost.proxy_cache_usd - standard).abs() < 1e-12);
        let uncached = (3100.0 * 0.8 + 200.0) / 1e6 + (3100.0 * 1.0 + 250.0) / 1e6;
        assert!((cost.without_caching_usd - uncached).abs() < 1e-12);
        assert!((cost.input_usd - (80.0 + 240.0 + 100.0 + 300.0) / 1e6).abs() < 1e-12);
        assert!(summarize("A", "u", &records, 1.0, None, 1.0).cost.is_none());
    }
}
