//! Two small helpers every stage may use, kept here so each is written once:
//! the wall clock in milliseconds (stored timestamps, shared across replicas),
//! and std locks that survive a panic in another holder.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 before it, saturating far after).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
