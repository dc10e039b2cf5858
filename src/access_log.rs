//! The log writer: one thread that formats access lines and writes them, with
//! every other log line, to stderr from a bounded buffer. A request hands over
//! an [`AccessLine`] of plain values it already has; what a line does when the
//! buffer is full is `logging.access_log_overflow`. Not here: what goes into a
//! line (`ingress/finish.rs`), the log filter (`server::init_logging`).
//!
//! Why not `tracing_appender::non_blocking` (which the EMF lines use): it takes
//! lines already formatted on the request's thread, and its worker wakes for
//! every line, which at one connection is a thread switch per request on a
//! loaded machine. This writer polls once per [`BATCH_WINDOW`] while lines
//! keep coming (sooner when the buffer is half full), so a request never wakes
//! it at steady traffic, and writes what came in with one `write`.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{LogFormat, LogOverflow};
use crate::metrics;

/// How long the writer lets lines gather after the first one wakes it: at
/// steady traffic, one wake-up and one write per window instead of per line.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// One request's access line, from values the request already holds; the
/// writer thread formats it.
#[derive(Debug, Clone)]
pub struct AccessLine {
    /// When the request ended.
    pub at: SystemTime,
    pub request_id: Arc<str>,
    pub tenant: Option<Arc<str>>,
    pub route: Option<Arc<str>>,
    pub operation: &'static str,
    pub status: u16,
    pub cache: &'static str,
    pub outcome: &'static str,
    pub attempts: u32,
    pub target: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub served_model: Option<Arc<str>>,
    pub tier: Option<&'static str>,
    pub service_tier: Option<&'static str>,
    /// The model a prompt router chose.
    pub invoked_model: Option<Arc<str>>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub duration_ms: f64,
    /// What went wrong, for a request that failed.
    pub error: Option<String>,
}

enum Item {
    Access(Box<AccessLine>),
    /// A line `tracing`'s formatter already wrote (warnings, startup notes).
    Raw(Vec<u8>),
}

struct Queue {
    items: VecDeque<Item>,
    /// The writer sleeps until a line arrives; the first line wakes it.
    writer_idle: bool,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer: a first line, a half-full buffer, or closing.
    work: Condvar,
    /// Wakes requests waiting for room (`LogOverflow::Wait`).
    room: Condvar,
    capacity: usize,
    overflow: LogOverflow,
    format: LogFormat,
    waited: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn wait_for_work<'a>(
        &self,
        q: MutexGuard<'a, Queue>,
        at_most: Duration,
    ) -> MutexGuard<'a, Queue> {
        self.work
            .wait_timeout(q, at_most)
            .map(|(q, _)| q)
            .unwrap_or_else(|p| p.into_inner().0)
    }

    // A std Mutex: held for a push or a swap of the queue, never across I/O
    // or an await.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, item: Item) {
        let mut q = self.lock();
        if q.closed {
            return;
        }
        if q.items.len() >= self.capacity {
            match self.overflow {
                LogOverflow::Drop => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    metrics::log_buffer_full("dropped");
                    return;
                }
                LogOverflow::Wait => {
                    self.waited.fetch_add(1, Ordering::Relaxed);
                    metrics::log_buffer_full("waited");
                    self.work.notify_one();
                    while q.items.len() >= self.capacity && !q.closed {
                        q = self.room.wait(q).unwrap_or_else(|p| p.into_inner());
                    }
                }
            }
        }
        q.items.push_back(item);
        if q.writer_idle {
            q.writer_idle = false;
            self.work.notify_one();
        } else if q.items.len() == self.capacity.div_ceil(2) {
            self.work.notify_one();
        }
    }

    /// The writer's wait for the next batch; `None` once closed and drained.
    ///
    /// While lines keep coming the writer polls: it waits one window for the
    /// next lines without marking itself idle, so requests never wake it
    /// (no futex call on a request's thread at steady traffic). Only after a
    /// whole window without a line does it sleep until the next line wakes it.
    fn next_batch(&self, batch: &mut VecDeque<Item>) -> Option<()> {
        let mut q = self.lock();
        let mut deadline = Instant::now() + BATCH_WINDOW;
        while q.items.is_empty() && !q.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = self.wait_for_work(q, left);
        }
        if q.items.is_empty() {
            while q.items.is_empty() {
                if q.closed {
                    return None;
                }
                q.writer_idle = true;
                q = self.work.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            // Woken by a first line: let the others of its window gather.
            deadline = Instant::now() + BATCH_WINDOW;
        }
        while !q.closed && q.items.len() < self.capacity.div_ceil(2) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = self.wait_for_work(q, left);
        }
        std::mem::swap(&mut q.items, batch);
        drop(q);
        self.room.notify_all();
        Some(())
    }
}

/// The process's log writer (see the module's doc). Cloning shares it.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Dropped, waits for the writer thread to write every line queued: keep it
/// alive until the process stops.
pub struct LogGuard {
    shared: Arc<Shared>,
    /// Disconnects when the writer thread ends.
    done: std::sync::mpsc::Receiver<()>,
}

/// How long a stopping process waits for the queued lines to be written: a
/// stderr nobody reads must not keep it from exiting.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
        self.shared.room.notify_all();
        let _ = self.done.recv_timeout(FINAL_FLUSH);
    }
}

static GLOBAL: OnceLock<LogWriter> = OnceLock::new();

impl LogWriter {
    /// Starts the writer thread on `sink`.
    pub fn start(
        sink: Box<dyn Write + Send>,
        format: LogFormat,
        capacity: usize,
        overflow: LogOverflow,
    ) -> std::io::Result<(LogWriter, LogGuard)> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                writer_idle: false,
                closed: false,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            capacity: capacity.max(1),
            overflow,
            format,
            waited: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let writer = shared.clone();
        let (finished, done) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                run(&writer, sink);
                drop(finished);
            })?;
        Ok((
            LogWriter {
                shared: shared.clone(),
            },
            LogGuard { shared, done },
        ))
    }

    /// Makes this the writer [`access`] sends to (the first one set stays).
    pub fn install(&self) {
        let _ = GLOBAL.set(self.clone());
    }

    /// Queues an access line.
    pub fn access(&self, line: AccessLine) {
        self.shared.push(Item::Access(Box::new(line)));
    }

    /// Lines that found the buffer full: (waited for room, dropped).
    pub fn overflowed(&self) -> (u64, u64) {
        (
            self.shared.waited.load(Ordering::Relaxed),
            self.shared.dropped.load(Ordering::Relaxed),
        )
    }
}

/// Queues an access line on the installed writer (none installed: an embedded
/// proxy without `init_logging`, and the line is not written).
pub fn access(line: impl FnOnce() -> AccessLine) {
    if let Some(w) = GLOBAL.get() {
        w.access(line());
    }
}

/// Whether an access line would be written: a writer is installed and the log
/// filter lets `access` lines through (`RUST_LOG=warn` turns them off).
pub fn enabled() -> bool {
    GLOBAL.get().is_some() && tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// `tracing`'s formatter writes each event into one of these; the bytes join
/// the same queue, so log lines and access lines never interleave mid-line.
pub struct RawLine {
    shared: Arc<Shared>,
}

impl Write for RawLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.push(Item::Raw(buf.to_vec()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = RawLine;

    fn make_writer(&'a self) -> RawLine {
        RawLine {
            shared: self.shared.clone(),
        }
    }
}

fn run(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let mut batch = VecDeque::new();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut clock = Timestamps::default();
    while shared.next_batch(&mut batch).is_some() {
        for item in batch.drain(..) {
            match item {
                Item::Access(line) => format_line(&line, shared.format, &mut clock, &mut out),
                Item::Raw(bytes) => out.extend_from_slice(&bytes),
            }
        }
        // A failed write (stderr closed) loses this batch; there is nowhere
        // left to say so.
        let _ = sink.write_all(&out).and_then(|()| sink.flush());
        out.clear();
    }
}

/// RFC 3339 timestamps with microseconds, as `tracing-subscriber` writes
/// them; the part up to the second is formatted once per second.
#[derive(Default)]
struct Timestamps {
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS.`
    prefix: String,
}

impl Timestamps {
    fn write(&mut self, at: SystemTime, out: &mut Vec<u8>) {
        let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if self.second != Some(since.as_secs()) {
            let full = crate::log_tag::timestamp(at);
            // `...SS.ffffffZ`: the part before the fraction.
            self.prefix.clear();
            self.prefix.push_str(&full[..full.len() - 7]);
            self.second = Some(since.as_secs());
        }
        out.extend_from_slice(self.prefix.as_bytes());
        let micros = since.subsec_micros();
        let mut digits = [b'0'; 6];
        let mut n = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend_from_slice(&digits);
        out.push(b'Z');
    }
}

/// `tracing-subscriber`'s own layout, so log tooling reads the access lines
/// as it did when they were `tracing` events with target `access`.
fn format_line(line: &AccessLine, format: LogFormat, clock: &mut Timestamps, out: &mut Vec<u8>) {
    match format {
        LogFormat::Text => {
            clock.write(line.at, out);
            text(line, out);
        }
        LogFormat::Json => {
            let mut at = Vec::with_capacity(27);
            clock.write(line.at, &mut at);
            let record = JsonLine {
                timestamp: std::str::from_utf8(&at).unwrap_or_default(),
                level: "INFO",
                fields: Fields::of(line),
                target: "access",
            };
            if serde_json::to_writer(&mut *out, &record).is_ok() {
                out.push(b'\n');
            }
        }
    }
}

/// Bytes a debug string writes as they are: printable ASCII but `"` and `\`.
const PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        plain[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    plain
};

/// Writes `s` as a Rust debug string (quoted, escaped), as tracing's
/// formatter writes `&str` fields, so a tenant name cannot break a line. Plain
/// printable ASCII, which nearly every value is, is copied as it is.
fn debug_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| PLAIN[usize::from(b)]) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        use std::io::Write as _;
        let _ = write!(out, "{s:?}");
    }
}

fn text(line: &AccessLine, out: &mut Vec<u8>) {
    let mut int = itoa::Buffer::new();
    // Room for a typical line at once, rather than growing field by field.
    out.reserve(512);
    out.extend_from_slice(b"  INFO access: request_id=");
    out.extend_from_slice(line.request_id.as_bytes());
    // Each field's ` name=` is one literal: one copy, not three.
    out.extend_from_slice(b" tenant=");
    debug_str(out, dash(&line.tenant));
    out.extend_from_slice(b" route=");
    debug_str(out, dash(&line.route));
    out.extend_from_slice(b" operation=");
    debug_str(out, line.operation);
    out.extend_from_slice(b" status=");
    out.extend_from_slice(int.format(line.status).as_bytes());
    out.extend_from_slice(b" cache=");
    debug_str(out, line.cache);
    out.extend_from_slice(b" outcome=");
    debug_str(out, line.outcome);
    out.extend_from_slice(b" attempts=");
    out.extend_from_slice(int.format(line.attempts).as_bytes());
    for (name, value) in [
        (&b" target="[..], dash(&line.target)),
        (b" upstream=", dash(&line.upstream)),
        (b" served_model=", dash(&line.served_model)),
        (b" tier=", line.tier.unwrap_or("-")),
        (b" service_tier=", line.service_tier.unwrap_or("-")),
        (b" invoked_model=", dash(&line.invoked_model)),
    ] {
        out.extend_from_slice(name);
        debug_str(out, value);
    }
    for (name, value) in [
        (&b" input_tokens="[..], line.input_tokens),
        (b" output_tokens=", line.output_tokens),
        (b" cache_read_tokens=", line.cache_read_tokens),
        (b" cache_write_tokens=", line.cache_write_tokens),
    ] {
        out.extend_from_slice(name);
        out.extend_from_slice(int.format(value).as_bytes());
    }
    out.extend_from_slice(b" duration_ms=");
    {
        // `{:?}` itself: ryu, tried here, breaks exact ties the other way
        // (564214.5766601562 where `{:?}` writes ...563).
        use std::io::Write as _;
        let _ = write!(out, "{:?}", line.duration_ms);
    }
    if let Some(e) = &line.error {
        out.extend_from_slice(b" error=");
        debug_str(out, e);
    }
    out.push(b'\n');
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    timestamp: &'a str,
    level: &'static str,
    fields: Fields<'a>,
    target: &'static str,
}

#[derive(serde::Serialize)]
struct Fields<'a> {
    request_id: &'a str,
    tenant: &'a str,
    route: &'a str,
    operation: &'a str,
    status: u16,
    cache: &'a str,
    outcome: &'a str,
    attempts: u32,
    target: &'a str,
    upstream: &'a str,
    served_model: &'a str,
    tier: &'a str,
    service_tier: &'a str,
    invoked_model: &'a str,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_tokens: u64,
    cache_write_tokens: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl<'a> Fields<'a> {
    fn of(l: &'a AccessLine) -> Fields<'a> {
        Fields {
            request_id: &l.request_id,
            tenant: dash(&l.tenant),
            route: dash(&l.route),
            operation: l.operation,
            status: l.status,
            cache: l.cache,
            outcome: l.outcome,
            attempts: l.attempts,
            target: dash(&l.target),
            upstream: dash(&l.upstream),
            served_model: dash(&l.served_model),
            tier: l.tier.unwrap_or("-"),
            service_tier: l.service_tier.unwrap_or("-"),
            invoked_model: dash(&l.invoked_model),
            input_tokens: l.input_tokens,
            output_tokens: l.output_tokens,
            cache_read_tokens: l.cache_read_tokens,
            cache_write_tokens: l.cache_write_tokens,
            duration_ms: l.duration_ms,
            error: l.error.as_deref(),
        }
    }
}

fn dash(v: &Option<Arc<str>>) -> &str {
    v.as_deref().unwrap_or("-")
}

#[cfg(test)]
mod tests;
