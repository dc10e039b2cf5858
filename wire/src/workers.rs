//! Connection runtimes, one per core, as nginx has a worker process per core.
//!
//! On tokio's work-stealing runtime a request hops between threads: the
//! connection's task wakes the upstream connection's task on another worker,
//! which wakes the first back, each hop a futex call and a cold cache. A
//! [`Workers`] set is `n` single-threaded runtimes, each on its own thread:
//! [`crate::serve::serve`] hands every accepted connection to the next one in
//! turn, and everything the connection's requests start (the upstream
//! connections of a [`crate::client::Spread`] included, which keeps a pool per
//! worker) runs on that thread.
//!
//! A worker runs only while the [`Workers`] that started it lives: dropping it
//! stops every worker, and the tasks still on one are dropped with it.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker the calling thread is, if it is one.
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// One per core the process may run on: `server.workers = "auto"`, and the
/// worker slots a [`crate::client::Spread`] keeps clients for.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Single-threaded runtimes on threads of their own; see the module docs.
pub struct Workers {
    handles: Box<[Handle]>,
    next: AtomicUsize,
    /// Dropping a sender ends its worker's thread.
    _stops: Box<[oneshot::Sender<()>]>,
}

impl Workers {
    /// Starts `count` workers (at least one), their threads named `name-0`,
    /// `name-1`, and so on.
    pub fn start(count: usize, name: &str) -> io::Result<Workers> {
        let mut handles = Vec::with_capacity(count.max(1));
        let mut stops = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let (stop, stopped) = oneshot::channel::<()>();
            let (started, handle) = std::sync::mpsc::sync_channel(1);
            // The runtime is built, run and dropped on its own thread: never
            // dropped where blocking is not allowed, even when the thread
            // cannot start.
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    INDEX.with(|i| i.set(Some(index)));
                    let _ = started.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        // Ends when the sender is sent to or dropped.
                        let _ = stopped.await;
                    });
                    // Whatever still runs here (an idle upstream connection, a
                    // pool's reaper) ends with the runtime; nothing blocks it.
                    runtime.shutdown_background();
                })?;
            let handle = handle.recv().map_err(|_| {
                io::Error::other("a worker thread ended before its runtime started")
            })??;
            handles.push(handle);
            stops.push(stop);
        }
        Ok(Workers {
            handles: handles.into(),
            next: AtomicUsize::new(0),
            _stops: stops.into(),
        })
    }

    /// The next worker in turn, for a new connection.
    pub fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// How many workers run.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never: at least one worker runs.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("len", &self.handles.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_workers_in_turn_and_know_which_they_are_on() {
        let workers = Workers::start(2, "test-worker").unwrap();
        assert_eq!(current(), None, "the test's own thread is no worker");
        let seen: Vec<Option<usize>> = (0..4)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                workers.next().spawn(async move {
                    let _ = tx.send((current(), std::thread::current().name().map(String::from)));
                });
                let (index, name) = rx.recv().unwrap();
                assert_eq!(name, index.map(|i| format!("test-worker-{i}")));
                index
            })
            .collect();
        assert_eq!(seen, vec![Some(0), Some(1), Some(0), Some(1)]);
    }

    #[test]
    fn dropping_the_set_ends_its_threads() {
        let workers = Workers::start(1, "test-ending").unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // A task that would hold its sender forever: it goes with the runtime.
        workers.next().spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
            "the pending task was dropped when its worker stopped"
        );
    }
}
