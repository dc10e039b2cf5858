//! The `hold` subcommand: what hostile clients cost everyone else. It measures
//! other tenants' latency against an unloaded proxy, then opens N slow-body
//! connections (valid headers, `Content-Length`, then a byte now and then) and
//! M idle ones, measures the same traffic again while they are held, and
//! reports both, their ratio, what was refused, and how the held connections
//! ended (still open, answered 408 or 503, closed, refused).
//!
//! The measured traffic is a `load` run (closed loop); the held connections are
//! `hostile`'s.

use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::{self, Api, Auth, AuthOptions, BenchClient};
use crate::error::BenchError;
use crate::hostile::{self, Ending, Held, HeldCounts};
use crate::load::{self, LoadOptions, TargetReport};
use crate::process::{self, ProcSample};
use crate::soak::raise_fd_limit;
use crate::table::{code_list, num, Table};

/// How to run a hold.
#[derive(Debug, Clone)]
pub struct HoldOptions {
    /// The measured traffic; its single target is the proxy held against.
    pub measure: LoadOptions,
    /// Slow-body connections to hold.
    pub slow: usize,
    /// Idle connections to hold.
    pub idle: usize,
    /// One body byte per connection this often.
    pub byte_every: Duration,
    /// The `Content-Length` announced (the body never completes).
    pub content_length: usize,
    /// Credentials of the held connections, when not the measured traffic's
    /// (another tenant's key).
    pub held_auth: Option<AuthOptions>,
    /// Time to let the proxy take in the held connections before measuring.
    pub settle: Duration,
    /// Connection attempts in progress at once while opening.
    pub connect_parallelism: usize,
    pub connect_timeout: Duration,
    /// The proxy's PID, sampled before, while held, and after.
    pub pid: Option<u32>,
}

/// The whole run (`hold.json`).
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    pub endpoint: String,
    pub slow_requested: usize,
    pub idle_requested: usize,
    pub byte_every_s: f64,
    pub content_length: usize,
    /// The measured traffic with nothing held.
    pub unloaded: TargetReport,
    /// The same traffic while the connections are held.
    pub held: TargetReport,
    /// held / unloaded latency.
    pub p50_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    pub slow: HeldCounts,
    pub idle: HeldCounts,
    /// Samples of the proxy: before anything, while held, after the release.
    pub samples: Vec<ProcSample>,
}

fn check(o: &HoldOptions) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::Options(m.to_owned()));
    if o.measure.targets.len() != 1 {
        return bad("hold measures one endpoint");
    }
    if !o.measure.targets[0].starts_with("http://") {
        return bad("held connections are written by hand: a plain http:// endpoint only");
    }
    if o.byte_every.is_zero() || o.connect_parallelism == 0 {
        return bad("--byte-every and the connect parallelism must be positive");
    }
    Ok(())
}

/// A valid Converse body padded with spaces to `len` bytes (JSON allows
/// trailing whitespace), so that it would be accepted were it ever finished.
pub fn padded_body(len: usize) -> Result<Vec<u8>, BenchError> {
    let mut body = serde_json::json!({
        "messages": [{ "role": "user", "content": [{ "text": "A body that is never finished." }] }],
        "inferenceConfig": { "maxTokens": 16 },
    })
    .to_string()
    .into_bytes();
    if len < body.len() {
        return Err(BenchError::Options(format!(
            "--content-length must be at least {} (a valid body)",
            body.len()
        )));
    }
    body.resize(len, b' ');
    Ok(body)
}

fn ratio(held: Option<f64>, unloaded: Option<f64>) -> Option<f64> {
    match (held, unloaded) {
        (Some(h), Some(u)) if u > 0.0 => Some(h / u),
        _ => None,
    }
}

/// Runs the unloaded measurement, opens and holds the connections, measures
/// again, releases them and reports.
pub async fn run(options: HoldOptions) -> Result<HoldReport, BenchError> {
    check(&options)?;
    let endpoint = options.measure.targets[0].clone();
    if let Some(pid) = options.pid {
        process::check_pid(pid)?;
    }
    let limit = raise_fd_limit();
    let wanted = (options.slow + options.idle + 256) as u64;
    if limit != 0 && limit < wanted {
        eprintln!("warning: this process may open {wanted} sockets but its limit is {limit}");
    }
    let body = padded_body(options.content_length)?;
    let held_auth = options
        .held_auth
        .clone()
        .unwrap_or_else(|| options.measure.auth.clone());
    let region = options.measure.region.clone();
    let signer = BenchClient::new(
        Auth::bedrock(&held_auth, true, &region).await?,
        Duration::from_secs(10),
        1,
    );
    let url = client::bedrock_url(&endpoint, &options.measure.model, false);
    let headers = signer
        .request_headers(Api::Converse, &url, &region, &body.clone().into())
        .await
        .map_err(|code| BenchError::Client(format!("cannot sign the held requests: {code}")))?;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| BenchError::Options(format!("{url}: {e}")))?;
    let authority = uri.authority().map_or("", |a| a.as_str());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let head = hostile::request_head(path, authority, &headers, body.len());
    let addr = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| BenchError::Client(format!("{endpoint}: {e}")))?
        .next()
        .ok_or_else(|| BenchError::Client(format!("{endpoint}: no address")))?;

    let started = tokio::time::Instant::now();
    let mut samples = Vec::new();
    let sample = |samples: &mut Vec<ProcSample>| -> Result<(), BenchError> {
        if let Some(pid) = options.pid {
            samples.push(process::sample(pid, started.elapsed().as_secs_f64())?);
        }
        Ok(())
    };
    sample(&mut samples)?;

    eprintln!("measuring the unloaded proxy");
    let unloaded = load::run(options.measure.clone()).await?;

    eprintln!(
        "opening {} slow-body and {} idle connections",
        options.slow, options.idle
    );
    let (release, _) = watch::channel(false);
    let gate = std::sync::Arc::new(Semaphore::new(options.connect_parallelism));
    let head = std::sync::Arc::new(head);
    let body = std::sync::Arc::new(body);
    let mut slow_tasks = JoinSet::new();
    let mut idle_tasks = JoinSet::new();
    let (connected_tx, mut connected_rx) =
        tokio::sync::mpsc::channel::<()>(options.slow + options.idle + 1);
    for i in 0..options.slow + options.idle {
        let gate = gate.clone();
        let release = release.subscribe();
        let connected = connected_tx.clone();
        let timeout = options.connect_timeout;
        let every = options.byte_every;
        // Spread the byte times so that the writes do not all land at once.
        let offset = every.mul_f64(i as f64 / (options.slow.max(1)) as f64 % 1.0);
        let (head, body) = (head.clone(), body.clone());
        let slow = i < options.slow;
        let task = async move {
            let tcp = {
                let _permit = gate.acquire().await;
                hostile::connect(addr, timeout).await
            };
            let _ = connected.send(()).await;
            // Counted as done: the opening phase ends when every sender is gone.
            drop(connected);
            let Some(tcp) = tcp else {
                return Held {
                    ending: Ending::Refused,
                    lasted: Duration::ZERO,
                };
            };
            if slow {
                tokio::time::sleep(offset).await;
                hostile::hold_slow_body(tcp, &head, &body, every, release).await
            } else {
                hostile::hold_idle(tcp, release).await
            }
        };
        if slow {
            slow_tasks.spawn(task);
        } else {
            idle_tasks.spawn(task);
        }
    }
    drop(connected_tx);
    // Every connection attempt is over when every sender has reported.
    while connected_rx.recv().await.is_some() {}
    tokio::time::sleep(options.settle).await;
    sample(&mut samples)?;

    eprintln!("measuring while they are held");
    let held = load::run(options.measure.clone()).await?;
    sample(&mut samples)?;
    let _ = release.send(true);
    let mut slow = HeldCounts::default();
    while let Some(h) = slow_tasks.join_next().await {
        if let Ok(h) = h {
            slow.add(&h);
        }
    }
    let mut idle = HeldCounts::default();
    while let Some(h) = idle_tasks.join_next().await {
        if let Ok(h) = h {
            idle.add(&h);
        }
    }
    let (unloaded, held) = match (unloaded.targets.first(), held.targets.first()) {
        (Some(u), Some(h)) => (u.clone(), h.clone()),
        _ => {
            return Err(BenchError::Options(
                "the load run reported no target".into(),
            ))
        }
    };
    Ok(HoldReport {
        endpoint,
        slow_requested: options.slow,
        idle_requested: options.idle,
        byte_every_s: options.byte_every.as_secs_f64(),
        content_length: options.content_length,
        p50_ratio: ratio(
            held.latency_ms.map(|s| s.p50),
            unloaded.latency_ms.map(|s| s.p50),
        ),
        p99_ratio: ratio(
            held.latency_ms.map(|s| s.p99),
            unloaded.latency_ms.map(|s| s.p99),
        ),
        unloaded,
        held,
        slow,
        idle,
        samples,
    })
}

/// The terminal report.
pub fn render(r: &HoldReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} slow-body (Content-Length {}, a byte every {}s) and {} idle connections held against {}",
        r.slow_requested, r.content_length, r.byte_every_s, r.idle_requested, r.endpoint
    );
    let mut t = Table::new(&[
        "measured traffic",
        "requests",
        "ok",
        "errors",
        "p50 ms",
        "p99 ms",
        "max ms",
    ]);
    for (name, target) in [("unloaded proxy", &r.unloaded), ("while held", &r.held)] {
        let errors: u64 = target.errors.values().sum();
        t.row(vec![
            name.into(),
            target.requests.to_string(),
            target.ok.to_string(),
            errors.to_string(),
            num(target.latency_ms.map(|s| s.p50), 2),
            num(target.latency_ms.map(|s| s.p99), 2),
            num(target.latency_ms.map(|s| s.max), 2),
        ]);
    }
    t.row(vec![
        "held / unloaded".into(),
        String::new(),
        String::new(),
        String::new(),
        num(r.p50_ratio, 2),
        num(r.p99_ratio, 2),
        String::new(),
    ]);
    out.push_str(&t.render());
    for (name, target) in [("unloaded", &r.unloaded), ("while held", &r.held)] {
        if !target.errors.is_empty() {
            let _ = writeln!(
                out,
                "refused or failed, {name}: {}",
                code_list(&target.errors)
            );
        }
    }
    let _ = writeln!(out, "slow-body {}", r.slow.describe());
    let _ = writeln!(out, "idle {}", r.idle.describe());
    if let [before, during, ..] = r.samples.as_slice() {
        let _ = writeln!(
            out,
            "proxy RSS {:.1} MB before, {:.1} MB while held; fds {} before, {} while held",
            before.rss_kb as f64 / 1024.0,
            during.rss_kb as f64 / 1024.0,
            before.fds,
            during.fds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_padded_body_is_valid_json_of_the_announced_length() {
        let body = padded_body(1000).unwrap();
        assert_eq!(body.len(), 1000);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["messages"][0]["role"], "user");
        assert!(padded_body(10).is_err());
    }

    #[test]
    fn ratios_need_both_sides() {
        assert_eq!(ratio(Some(3.0), Some(1.5)), Some(2.0));
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }
}
