//! Small helpers every stage may use, kept here so each is written once: the
//! wall clock in milliseconds (stored timestamps, shared across replicas), a
//! [`Clock`] that tests and benchmarks can move or speed up, and std locks that
//! survive a panic in another holder, and a small lock-free memo.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 before it, saturating far after).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds on the wall clock, sped up by `1 / time_scale` from when the
/// clock was made, plus whatever [`Clock::advance`] added: learning windows are
/// measured on it, so tests move it instead of sleeping and a benchmark against a
/// sped-up simulator speeds it up alike. With `time_scale` 1 it is the wall clock,
/// which replicas share.
#[derive(Debug)]
pub struct Clock {
    base_ms: u64,
    started: Instant,
    rate: f64,
    offset_ms: AtomicU64,
}

impl Clock {
    /// A clock running `1 / time_scale` times as fast as the wall clock
    /// (`time_scale` above 0; anything else runs at wall-clock speed).
    pub fn new(time_scale: f64) -> Clock {
        let rate = if time_scale > 0.0 && time_scale.is_finite() {
            1.0 / time_scale
        } else {
            1.0
        };
        Clock {
            base_ms: now_ms(),
            started: Instant::now(),
            rate,
            offset_ms: AtomicU64::new(0),
        }
    }

    pub fn now_ms(&self) -> u64 {
        let run = self.started.elapsed().as_secs_f64() * 1000.0 * self.rate;
        self.base_ms
            .saturating_add(run as u64)
            .saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The wall-clock time that `d` on this clock takes.
    pub fn real(&self, d: Duration) -> Duration {
        d.div_f64(self.rate)
    }
}

/// `Box::pin(make())`, with the box allocated before the future is made: a
/// future is as large as its largest state (kilobytes for a request's), and
/// `Box::pin` of a future already made copies every byte of it into the new
/// box, where a future made after the allocation can be written in place
/// (only its arguments).
#[inline(always)]
pub fn boxed<F>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    let slot = Box::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

// A panic while a lock is held poisons it. Every lock here guards state that
// each critical section leaves consistent (a counter, a map insert, a small
// state machine step), so the data is still good: take it and go on rather
// than failing every later request.

/// Locks a mutex, recovering it if a holder panicked.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read-locks an `RwLock`, recovering it if a writer panicked.
pub fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

/// Write-locks an `RwLock`, recovering it if a holder panicked.
pub fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// A writer tests read back: the log writer's sink, a subscriber's writer.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct TestSink(std::sync::Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for TestSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TestSink {
    type Writer = TestSink;
    fn make_writer(&'a self) -> TestSink {
        self.clone()
    }
}

#[cfg(test)]
impl TestSink {
    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&lock(&self.0))
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_when_advanced_and_scales_durations() {
        let c = Clock::new(0.01);
        let before = c.now_ms();
        c.advance(Duration::from_secs(600));
        assert!(c.now_ms() >= before + 600_000);
        assert_eq!(c.real(Duration::from_secs(3600)), Duration::from_secs(36));
        assert_eq!(
            Clock::new(1.0).real(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }
}

/// Values by key from a small set (label values, an upstream's model paths),
/// each made on first use into one of `N` slots and found again by a scan of
/// the filled ones: no lock and no allocation once made. Keys beyond `N`
/// distinct ones are made each time (still correct, only slower).
#[derive(Debug)]
pub struct Memo<K, V, const N: usize> {
    slots: [OnceLock<(K, V)>; N],
}

impl<K, V, const N: usize> Default for Memo<K, V, N> {
    fn default() -> Self {
        Memo {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl<K: PartialEq + Copy, V: Clone, const N: usize> Memo<K, V, N> {
    /// The value of `key`, made by `make` the first time.
    pub fn get(&self, key: K, make: impl Fn() -> V) -> V {
        self.find(|k| *k == key, || (key, make()))
    }
}

impl<K, V: Clone, const N: usize> Memo<K, V, N> {
    /// The value whose key `is` picks, made by `make` (key and value) the first
    /// time. Two threads may race for an empty slot with different keys: the
    /// loser moves on to the next.
    pub fn find(&self, is: impl Fn(&K) -> bool, make: impl Fn() -> (K, V)) -> V {
        for slot in &self.slots {
            let (k, v) = slot.get_or_init(&make);
            if is(k) {
                return v.clone();
            }
        }
        make().1
    }
}
