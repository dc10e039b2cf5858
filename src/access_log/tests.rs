//! The log writer's promises: every line arrives in `wait` mode, `drop` mode
//! counts exactly what it drops, and lines keep tracing's layout.

use super::*;
use crate::support::TestSink as Sink;
use std::sync::mpsc;

/// A stderr nobody reads: the first write says it started, then blocks until
/// the test lets it go.
struct Stuck {
    inner: Sink,
    entered: Option<mpsc::Sender<()>>,
    release: mpsc::Receiver<()>,
}

impl Write for Stuck {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(tell) = self.entered.take() {
            tell.send(()).unwrap();
            self.release.recv().unwrap();
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn line(id: &str) -> AccessLine {
    AccessLine {
        at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456),
        request_id: id.into(),
        tenant: Some("team a".into()),
        route: Some("haiku".into()),
        operation: "Converse",
        status: 200,
        cache: "miss",
        outcome: "ok",
        attempts: 1,
        target: Some("sim".into()),
        upstream: Some("sim".into()),
        served_model: Some("us.anthropic.claude-3-5-haiku-20241022-v1:0".into()),
        tier: Some("standard"),
        service_tier: Some("flex"),
        invoked_model: None,
        input_tokens: 12,
        output_tokens: 34,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        duration_ms: 1.5,
        error: None,
    }
}

fn request_id(text_line: &str) -> &str {
    let start = text_line.find("request_id=").unwrap() + "request_id=".len();
    text_line[start..].split(' ').next().unwrap()
}

#[test]
fn wait_mode_writes_every_line_from_many_threads_through_a_small_buffer() {
    let sink = Sink::default();
    let (log, guard) = LogWriter::start(
        Box::new(sink.clone()),
        LogFormat::Text,
        8,
        LogOverflow::Wait,
    )
    .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    log.access(line(&format!("t{t}-{i}")));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(guard);
    let lines = sink.lines();
    assert_eq!(lines.len(), 4000);
    let ids: std::collections::HashSet<_> = lines.iter().map(|l| request_id(l)).collect();
    assert_eq!(ids.len(), 4000, "every request's line, once");
    assert_eq!(log.overflowed().1, 0, "nothing dropped in wait mode");
}

#[test]
fn drop_mode_drops_what_does_not_fit_and_counts_it() {
    let sink = Sink::default();
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let stuck = Stuck {
        inner: sink.clone(),
        entered: Some(entered_tx),
        release: release_rx,
    };
    let (log, guard) =
        LogWriter::start(Box::new(stuck), LogFormat::Text, 4, LogOverflow::Drop).unwrap();
    log.access(line("first"));
    entered.recv().unwrap();
    // The writer is stuck writing "first"; 4 lines fit the buffer, 6 do not.
    for i in 0..10 {
        log.access(line(&format!("r{i}")));
    }
    assert_eq!(log.overflowed(), (0, 6));
    release.send(()).unwrap();
    drop(guard);
    let lines = sink.lines();
    let ids: Vec<_> = lines.iter().map(|l| request_id(l)).collect();
    assert_eq!(ids, ["first", "r0", "r1", "r2", "r3"]);
}

#[test]
fn wait_mode_holds_a_line_until_there_is_room_and_counts_the_wait() {
    let sink = Sink::default();
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let stuck = Stuck {
        inner: sink.clone(),
        entered: Some(entered_tx),
        release: release_rx,
    };
    let (log, guard) =
        LogWriter::start(Box::new(stuck), LogFormat::Text, 2, LogOverflow::Wait).unwrap();
    log.access(line("first"));
    entered.recv().unwrap();
    log.access(line("a"));
    log.access(line("b"));
    let waiting = {
        let log = log.clone();
        std::thread::spawn(move || log.access(line("c")))
    };
    while log.overflowed().0 == 0 {
        std::thread::yield_now();
    }
    release.send(()).unwrap();
    waiting.join().unwrap();
    drop(guard);
    let lines = sink.lines();
    let ids: Vec<_> = lines.iter().map(|l| request_id(l)).collect();
    assert_eq!(ids, ["first", "a", "b", "c"]);
    assert_eq!(log.overflowed(), (1, 0));
}

#[test]
fn lines_keep_tracings_text_and_json_layouts() {
    let mut out = Vec::new();
    let mut failed = line("req-1");
    failed.tenant = Some("evil\ntenant".into());
    failed.status = 400;
    failed.outcome = "validation";
    failed.error = Some("maxTokens must be \"positive\"".into());
    format_line(
        &failed,
        LogFormat::Text,
        &mut Timestamps::default(),
        &mut out,
    );
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        "2026-11-18T11:06:40.123456Z  INFO access: request_id=req-1 tenant=\"evil\\ntenant\" \
         route=\"haiku\" operation=\"Converse\" status=400 cache=\"miss\" outcome=\"validation\" \
         attempts=1 target=\"sim\" upstream=\"sim\" \
         served_model=\"us.anthropic.claude-3-5-haiku-20241022-v1:0\" tier=\"standard\" \
         service_tier=\"flex\" invoked_model=\"-\" input_tokens=12 output_tokens=34 cache_read_tokens=0 cache_write_tokens=0 \
         duration_ms=1.5 error=\"maxTokens must be \\\"positive\\\"\"\n"
    );
    let mut out = Vec::new();
    format_line(
        &line("req-2"),
        LogFormat::Json,
        &mut Timestamps::default(),
        &mut out,
    );
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json["target"], "access");
    assert_eq!(json["level"], "INFO");
    assert_eq!(json["timestamp"], "2026-11-18T11:06:40.123456Z");
    assert_eq!(json["fields"]["request_id"], "req-2");
    assert_eq!(json["fields"]["tenant"], "team a");
    assert_eq!(json["fields"]["output_tokens"], 34);
    assert_eq!(json["fields"]["service_tier"], "flex");
    assert!(json["fields"].get("error").is_none());
}

#[test]
fn tracing_lines_share_the_queue_and_arrive_whole() {
    let sink = Sink::default();
    let (log, guard) = LogWriter::start(
        Box::new(sink.clone()),
        LogFormat::Text,
        16,
        LogOverflow::Wait,
    )
    .unwrap();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(log.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!("upstream sim: credentials did not resolve");
        log.access(line("after-warning"));
    });
    drop(guard);
    let lines = sink.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].ends_with("upstream sim: credentials did not resolve"));
    assert_eq!(request_id(&lines[1]), "after-warning");
}

#[test]
fn timestamps_follow_the_clock_across_seconds_and_days() {
    let mut clock = Timestamps::default();
    let base = std::time::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    for offset_us in [
        0,
        7,
        999_999,
        1_000_000,
        1_000_001,
        86_399_999_999,
        86_400_000_000,
    ] {
        let at = base + Duration::from_micros(offset_us);
        let mut out = Vec::new();
        clock.write(at, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            crate::log_tag::timestamp(at),
            "{offset_us} us after the base"
        );
    }
}

#[test]
fn a_duration_at_a_tie_reads_as_debug_formatting_writes_it() {
    // A value halfway between two 17-digit texts: `{:?}` rounds it up, where
    // ryu (tried for this line once) wrote 564214.5766601562.
    let mut access = line("r");
    access.duration_ms = 1_155_511_453.0 / 2048.0;
    let mut out = Vec::new();
    text(&access, &mut out);
    let written = String::from_utf8(out).unwrap();
    assert!(
        written.contains(" duration_ms=564214.5766601563"),
        "{written}"
    );
}

proptest::proptest! {
    /// The fast path for plain values writes what `{:?}` writes.
    #[test]
    fn debug_str_writes_what_debug_formatting_writes(s in "\\PC*|[ -~]*|.*[\"\\\\\n\t\u{7f}\u{301}].*") {
        let mut out = Vec::new();
        debug_str(&mut out, &s);
        proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), format!("{s:?}"));
    }

    /// Durations are written as `{:?}` writes them (the layout tracing used),
    /// from a microsecond to a day, around the exponent boundaries, at ties
    /// (dyadic values, where ryu and `{:?}` differ) and as any f64.
    #[test]
    fn durations_read_as_debug_formatting_writes_them(
        ms in proptest::prop_oneof![
            0.001f64..86_400_000.0,
            0.0f64..0.001,
            1e15f64..1e17,
            proptest::strategy::Strategy::prop_map(0u64..1 << 40, |k| k as f64 / 2048.0),
            proptest::num::f64::ANY,
        ],
    ) {
        let mut access = line("r");
        access.duration_ms = ms;
        let mut out = Vec::new();
        text(&access, &mut out);
        let written = String::from_utf8(out).unwrap();
        let wanted = format!(" duration_ms={ms:?}");
        proptest::prop_assert!(written.contains(&wanted), "{written} lacks {wanted}");
    }
}
