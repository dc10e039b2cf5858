//! What a process under test holds, read from Linux's `/proc` by PID: resident
//! memory (`VmRSS`, `VmHWM`), open file descriptors and CPU time, sampled
//! while a soak runs, and the growth of the samples after a warm-up.
//!
//! Only reading and arithmetic live here; when to sample is the caller's choice.

use serde::Serialize;
use std::path::PathBuf;

use crate::error::BenchError;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcSample {
    /// Seconds since the run started.
    pub at_s: f64,
    pub rss_kb: u64,
    /// Peak RSS so far (`VmHWM`).
    pub peak_rss_kb: u64,
    pub fds: u64,
    /// User plus system CPU time so far, in clock ticks.
    pub cpu_ticks: u64,
}

/// A `kB` field of `/proc/PID/status`, such as `VmRSS`.
pub fn status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `utime + stime` (clock ticks) from the text of `/proc/PID/stat`. The command
/// name may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the whole line, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn proc_path(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// Reads process `pid` now; `at_s` is stored as given.
pub fn sample(pid: u32, at_s: f64) -> Result<ProcSample, BenchError> {
    let status_path = proc_path(pid, "status");
    let status =
        std::fs::read_to_string(&status_path).map_err(|e| BenchError::io(&status_path, e))?;
    let missing =
        |field: &str| BenchError::Options(format!("{}: no {field} line", status_path.display()));
    let rss_kb = status_kb(&status, "VmRSS").ok_or_else(|| missing("VmRSS"))?;
    let peak_rss_kb = status_kb(&status, "VmHWM").unwrap_or(rss_kb);
    let fd_path = proc_path(pid, "fd");
    let fds = std::fs::read_dir(&fd_path)
        .map_err(|e| BenchError::io(&fd_path, e))?
        .count() as u64;
    let stat_path = proc_path(pid, "stat");
    let stat = std::fs::read_to_string(&stat_path).map_err(|e| BenchError::io(&stat_path, e))?;
    let cpu_ticks = stat_cpu_ticks(&stat)
        .ok_or_else(|| BenchError::Options(format!("{}: unreadable", stat_path.display())))?;
    Ok(ProcSample {
        at_s,
        rss_kb,
        peak_rss_kb,
        fds,
        cpu_ticks,
    })
}

/// Checks that `pid` can be sampled before a run starts, so a wrong PID fails
/// at once rather than after a ten-minute soak.
pub fn check_pid(pid: u32) -> Result<(), BenchError> {
    sample(pid, 0.0).map(|_| ())
}

/// How one quantity moved after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Change {
    /// The first sample at or after the warm-up.
    pub start: f64,
    /// The last sample.
    pub end: f64,
    /// The highest sample at or after the warm-up.
    pub peak: f64,
    /// `end - start`.
    pub growth: f64,
    /// `growth / start` in percent; `None` when `start` is 0.
    pub growth_pct: Option<f64>,
}

impl Change {
    fn of(values: &[f64]) -> Option<Change> {
        let (&start, &end) = (values.first()?, values.last()?);
        let peak = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let growth = end - start;
        Some(Change {
            start,
            end,
            peak,
            growth,
            growth_pct: (start != 0.0).then(|| growth / start * 100.0),
        })
    }
}

/// RSS (MB) and open descriptors, from the first sample after the warm-up to
/// the last one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Growth {
    pub warmup_s: f64,
    /// Samples the growth is computed over.
    pub samples: usize,
    pub rss_mb: Change,
    pub fds: Change,
}

impl Growth {
    /// The growth over the samples taken at or after `warmup_s`; `None` with
    /// fewer than two of them (one sample shows no trend).
    pub fn after_warmup(samples: &[ProcSample], warmup_s: f64) -> Option<Growth> {
        let kept: Vec<&ProcSample> = samples.iter().filter(|s| s.at_s >= warmup_s).collect();
        if kept.len() < 2 {
            return None;
        }
        let rss: Vec<f64> = kept.iter().map(|s| s.rss_kb as f64 / 1024.0).collect();
        let fds: Vec<f64> = kept.iter().map(|s| s.fds as f64).collect();
        Some(Growth {
            warmup_s,
            samples: kept.len(),
            rss_mb: Change::of(&rss)?,
            fds: Change::of(&fds)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tbedrock-proxy\nVmPeak:\t  900000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\nThreads:\t3\n";

    #[test]
    fn status_fields_are_read_by_name() {
        assert_eq!(status_kb(STATUS, "VmRSS"), Some(30720));
        assert_eq!(status_kb(STATUS, "VmHWM"), Some(40960));
        // `VmRSS` must not match a field that merely starts with it.
        assert_eq!(status_kb("VmRSSx:\t1 kB\n", "VmRSS"), None);
        assert_eq!(status_kb(STATUS, "VmSwap"), None);
    }

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let stat =
            "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1234 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id(), 1.5).unwrap();
        assert_eq!(s.at_s, 1.5);
        assert!(s.rss_kb > 0 && s.peak_rss_kb >= s.rss_kb);
        assert!(s.fds >= 3, "stdin, stdout and stderr at least");
        assert!(check_pid(u32::MAX).is_err());
    }

    fn at(at_s: f64, rss_mb: u64, fds: u64) -> ProcSample {
        ProcSample {
            at_s,
            rss_kb: rss_mb * 1024,
            peak_rss_kb: rss_mb * 1024,
            fds,
            cpu_ticks: 0,
        }
    }

    #[test]
    fn growth_starts_after_the_warmup() {
        let samples = [
            at(0.0, 10, 5),
            at(5.0, 40, 50),
            at(10.0, 50, 20),
            at(15.0, 60, 22),
            at(20.0, 55, 20),
        ];
        let g = Growth::after_warmup(&samples, 10.0).unwrap();
        assert_eq!(g.samples, 3);
        assert_eq!(g.rss_mb.start, 50.0);
        assert_eq!(g.rss_mb.end, 55.0);
        assert_eq!(g.rss_mb.peak, 60.0);
        assert_eq!(g.rss_mb.growth, 5.0);
        assert_eq!(g.rss_mb.growth_pct, Some(10.0));
        assert_eq!(g.fds.growth, 0.0);
        assert_eq!(g.fds.peak, 22.0);
        // A shrinking process has negative growth.
        let g = Growth::after_warmup(&samples[1..3], 0.0).unwrap();
        assert_eq!(g.fds.growth, -30.0);
        assert_eq!(g.fds.growth_pct, Some(-60.0));
    }

    #[test]
    fn growth_needs_two_samples_after_the_warmup() {
        let samples = [at(0.0, 10, 5), at(5.0, 12, 5)];
        assert!(Growth::after_warmup(&samples, 5.0).is_none());
        assert!(Growth::after_warmup(&[], 0.0).is_none());
        let zero = Growth::after_warmup(&[at(0.0, 0, 0), at(1.0, 1, 1)], 0.0).unwrap();
        assert_eq!(zero.fds.growth_pct, None);
    }
}
