//! Summary statistics: exact ones over a list of samples (the latency command
//! keeps every call) and an HDR histogram wrapper for load runs, which may
//! record millions of latencies.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::BenchError;

/// Mean, spread and percentiles of a list of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Distribution {
    pub count: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// How often each error code occurs.
pub fn count_codes<'a>(codes: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for code in codes {
        *counts.entry(code.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// The `q` quantile (0..=1) of sorted samples, interpolating linearly between
/// the two nearest ranks (numpy's default), so small samples give stable values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            let frac = pos - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

impl Distribution {
    /// The distribution of the finite values among `samples`; `None` when there
    /// are none. `std` is the sample standard deviation (n - 1), 0 for one sample.
    pub fn of(samples: impl IntoIterator<Item = f64>) -> Option<Distribution> {
        let mut v: Vec<f64> = samples.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Distribution {
            count: n,
            mean,
            std,
            min: v[0],
            p25: percentile(&v, 0.25),
            p50: percentile(&v, 0.50),
            p75: percentile(&v, 0.75),
            p90: percentile(&v, 0.90),
            p99: percentile(&v, 0.99),
            max: v[n - 1],
        })
    }
}

/// Latencies in microseconds, 3 significant digits, from 1 µs to a day.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
}

const MAX_MICROS: u64 = 86_400_000_000;

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyHistogram {
    pub fn new() -> Result<LatencyHistogram, BenchError> {
        Histogram::new_with_bounds(1, MAX_MICROS, 3)
            .map(|hist| LatencyHistogram { hist })
            .map_err(|e| BenchError::Histogram(e.to_string()))
    }

    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        // No call lasts a day (timeouts end them first); clamping keeps a
        // pathological value from failing the run.
        self.hist.saturating_record(us.clamp(1, MAX_MICROS));
    }

    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The percentiles in milliseconds; `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            count: self.hist.len(),
            mean: self.hist.mean() / 1000.0,
            p50: ms(self.hist.value_at_quantile(0.50)),
            p90: ms(self.hist.value_at_quantile(0.90)),
            p99: ms(self.hist.value_at_quantile(0.99)),
            p999: ms(self.hist.value_at_quantile(0.999)),
            max: ms(self.hist.max()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 5.0);
        assert!((percentile(&v, 0.9) - 4.6).abs() < 1e-9);
        assert!((percentile(&[10.0, 20.0], 0.99) - 19.9).abs() < 1e-9);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn distribution_of_known_samples() {
        let d = Distribution::of([4.0, 2.0, 8.0, 6.0, f64::NAN]).unwrap();
        assert_eq!(d.count, 4);
        assert_eq!(d.mean, 5.0);
        assert_eq!(d.p50, 5.0);
        assert_eq!(d.min, 2.0);
        assert_eq!(d.max, 8.0);
        // Sample std of 2,4,6,8: sqrt(20/3).
        assert!((d.std - (20.0f64 / 3.0).sqrt()).abs() < 1e-9);
        let one = Distribution::of([7.0]).unwrap();
        assert_eq!((one.std, one.p99), (0.0, 7.0));
        assert!(Distribution::of(Vec::new()).is_none());
    }

    #[test]
    fn histogram_percentiles_in_milliseconds() {
        let mut h = LatencyHistogram::new().unwrap();
        assert!(h.summary().is_none());
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 1000);
        // Three significant digits: within 0.1%.
        assert!((s.p50 - 500.0).abs() <= 0.5, "{}", s.p50);
        assert!((s.p99 - 990.0).abs() <= 1.0, "{}", s.p99);
        assert!((s.max - 1000.0).abs() <= 1.0, "{}", s.max);
        assert!((s.mean - 500.5).abs() <= 0.5, "{}", s.mean);
    }
}
