//! The arithmetic of the limits, with time passed in: per-minute buckets
//! (requests and tokens) and calendar budget windows in UTC. The local
//! counters use it directly; the Redis scripts (`admit.lua`, `settle.lua`)
//! do the same sums, and the tests here pin both to one behaviour.
//!
//! A bucket holds what a scope has used, draining evenly at its limit per
//! minute (a leaky bucket, GCRA in counts): a limit of N per minute admits N
//! at once, then one every 60/N seconds. The state is a count, not a time, so
//! a limit changed by a reload applies to what was already used.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

/// The span a per-minute limit refills over, in milliseconds.
pub(crate) const MINUTE_MS: f64 = 60_000.0;

/// What a scope has used of a per-minute limit, as of `at` (epoch ms).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Bucket {
    pub(crate) used: f64,
    pub(crate) at: f64,
}

/// Where a per-minute limit stands: what clients see in the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Window {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    /// Until the bucket is empty again (OpenAI's `reset`, Anthropic's reset time).
    pub(crate) reset: Duration,
}

impl Bucket {
    /// What is used at `now`, after draining since `at`.
    pub(crate) fn level(&self, limit: f64, now: f64) -> f64 {
        (self.used - (now - self.at).max(0.0) * limit / MINUTE_MS).max(0.0)
    }

    /// Whether `amount` more fits under `limit` at `now`.
    pub(crate) fn fits(&self, limit: f64, amount: f64, now: f64) -> bool {
        self.level(limit, now) + amount <= limit
    }

    /// The bucket after adding `amount` (negative gives back) at `now`.
    pub(crate) fn add(&self, limit: f64, amount: f64, now: f64) -> Bucket {
        Bucket {
            used: (self.level(limit, now) + amount).max(0.0),
            at: now,
        }
    }

    /// How long until `amount` more fits; `None` when it never can (more than
    /// the whole limit).
    pub(crate) fn wait(&self, limit: f64, amount: f64, now: f64) -> Option<Duration> {
        if amount > limit {
            return None;
        }
        let excess = self.level(limit, now) + amount - limit;
        Some(ms(excess.max(0.0) / limit * MINUTE_MS))
    }

    /// The bucket as the rate-limit headers show it.
    pub(crate) fn window(&self, limit: f64, now: f64) -> Window {
        let level = self.level(limit, now);
        Window {
            limit: limit as u64,
            remaining: (limit - level).max(0.0).floor() as u64,
            reset: ms(level / limit * MINUTE_MS),
        }
    }
}

fn ms(millis: f64) -> Duration {
    Duration::from_micros((millis * 1000.0).ceil().max(0.0) as u64)
}

/// A calendar budget period in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Period {
    Day,
    Month,
}

impl Period {
    /// The limit key this period is configured by (also the refusal reason).
    pub(crate) fn key(self) -> &'static str {
        match self {
            Period::Day => "usd_per_day",
            Period::Month => "usd_per_month",
        }
    }
}

/// One calendar window: its label (`2025-01-31`, `2025-01`) and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CalendarWindow {
    pub(crate) label: Arc<str>,
    /// The next window's first millisecond (epoch ms, UTC).
    pub(crate) ends_ms: i64,
}

/// The UTC day or month `now_ms` falls in. Every answered request settles its
/// spend in both, so each thread keeps the current day's two windows and
/// works them out again only when the day changes.
pub(crate) fn calendar(period: Period, now_ms: f64) -> CalendarWindow {
    thread_local! {
        static TODAY: RefCell<Option<(i64, [CalendarWindow; 2])>> = const { RefCell::new(None) };
    }
    let day = (now_ms / 86_400_000.0).floor() as i64;
    let slot = match period {
        Period::Day => 0,
        Period::Month => 1,
    };
    TODAY.with(|today| {
        let mut today = today.borrow_mut();
        match &*today {
            Some((cached, windows)) if *cached == day => windows[slot].clone(),
            _ => {
                let windows = [window(Period::Day, now_ms), window(Period::Month, now_ms)];
                let found = windows[slot].clone();
                *today = Some((day, windows));
                found
            }
        }
    })
}

fn window(period: Period, now_ms: f64) -> CalendarWindow {
    let now = time::OffsetDateTime::from_unix_timestamp_nanos(now_ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let date = now.date();
    let (label, next) = match period {
        Period::Day => (
            format!(
                "{:04}-{:02}-{:02}",
                date.year(),
                u8::from(date.month()),
                date.day()
            ),
            date.next_day(),
        ),
        Period::Month => {
            let (year, month) = match date.month() {
                time::Month::December => (date.year() + 1, time::Month::January),
                m => (date.year(), m.next()),
            };
            (
                format!("{:04}-{:02}", date.year(), u8::from(date.month())),
                time::Date::from_calendar_date(year, month, 1).ok(),
            )
        }
    };
    let ends_ms = next
        .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
        .unwrap_or(i64::MAX);
    CalendarWindow {
        label: Arc::from(label),
        ends_ms,
    }
}

/// Dollars as the integer nano-dollars counters hold (sums stay exact).
pub(crate) fn nano_usd(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

/// Nano-dollars as dollars.
pub(crate) fn usd(nano: i64) -> f64 {
    nano as f64 / 1e9
}

/// A duration as OpenAI writes `x-ratelimit-reset-*`: `6m0s`, `8.64s`, `17ms`.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let total_s = d.as_secs_f64();
    let hours = (total_s / 3600.0).floor() as u64;
    let minutes = ((total_s - hours as f64 * 3600.0) / 60.0).floor() as u64;
    let seconds = total_s - hours as f64 * 3600.0 - minutes as f64 * 60.0;
    let mut seconds = format!("{seconds:.3}");
    while seconds.ends_with('0') {
        seconds.pop();
    }
    if seconds.ends_with('.') {
        seconds.pop();
    }
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_limit_at_once_then_refills_evenly() {
        let limit = 5.0;
        let mut b = Bucket::default();
        let t0 = 1_700_000_000_000.0;
        for _ in 0..5 {
            assert!(b.fits(limit, 1.0, t0));
            b = b.add(limit, 1.0, t0);
        }
        assert!(!b.fits(limit, 1.0, t0));
        assert_eq!(b.wait(limit, 1.0, t0), Some(Duration::from_secs(12)));
        assert_eq!(b.window(limit, t0).remaining, 0);
        assert_eq!(b.window(limit, t0).reset, Duration::from_secs(60));
        // One request's worth drains in 12 s.
        assert!(!b.fits(limit, 1.0, t0 + 11_999.0));
        assert!(b.fits(limit, 1.0, t0 + 12_000.0));
        assert_eq!(b.window(limit, t0 + 30_000.0).remaining, 2);
        assert_eq!(b.level(limit, t0 + 61_000.0), 0.0);
    }

    #[test]
    fn a_lowered_limit_applies_to_what_was_used() {
        let t0 = 1_000_000.0;
        let b = Bucket::default().add(10.0, 2.0, t0);
        assert!(b.fits(10.0, 1.0, t0));
        assert!(!b.fits(2.0, 1.0, t0), "2 used of a new limit of 2");
    }

    #[test]
    fn settling_gives_back_or_takes_more() {
        let t0 = 0.0;
        let b = Bucket::default().add(1000.0, 800.0, t0);
        assert_eq!(b.add(1000.0, -700.0, t0).used, 100.0);
        assert_eq!(b.add(1000.0, -900.0, t0).used, 0.0);
        let over = b.add(1000.0, 500.0, t0);
        assert_eq!(over.used, 1300.0);
        assert!(!over.fits(1000.0, 1.0, t0));
        assert_eq!(over.window(1000.0, t0).remaining, 0);
        assert_eq!(Bucket::default().wait(1000.0, 1001.0, t0), None);
    }

    #[test]
    fn calendar_windows_are_utc_days_and_months() {
        // 2024-02-29T23:59:59.500Z
        let leap = 1_709_251_199_500.0;
        let day = calendar(Period::Day, leap);
        assert_eq!(&*day.label, "2024-02-29");
        assert_eq!(day.ends_ms, 1_709_251_200_000);
        let month = calendar(Period::Month, leap);
        assert_eq!(&*month.label, "2024-02");
        assert_eq!(month.ends_ms, 1_709_251_200_000);
        // 2024-12-31T12:00:00Z: the month ends with the year.
        let december = calendar(Period::Month, 1_735_646_400_000.0);
        assert_eq!(&*december.label, "2024-12");
        assert_eq!(december.ends_ms, 1_735_689_600_000);
        // The same thread half a second later, past midnight: the next day
        // and month, not the windows it kept for the day before.
        let next = calendar(Period::Day, leap + 500.0);
        assert_eq!(&*next.label, "2024-03-01");
        assert_eq!(&*calendar(Period::Month, leap + 500.0).label, "2024-03");
        assert_eq!(&*calendar(Period::Day, leap).label, "2024-02-29");
    }

    #[test]
    fn dollars_are_counted_in_exact_nano_dollars() {
        assert_eq!(nano_usd(0.000_08), 80_000);
        assert_eq!(usd(nano_usd(12.5)), 12.5);
    }

    #[test]
    fn reset_durations_read_like_openai_s() {
        assert_eq!(go_duration(Duration::from_millis(17)), "17ms");
        assert_eq!(go_duration(Duration::from_millis(8640)), "8.64s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_secs(3725)), "1h2m5s");
    }
}
