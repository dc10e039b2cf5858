//! Which request a log line is about. A request's work runs inside
//! [`scope`], which holds its id and operation in a task-local; the log
//! formatter ([`Tagged`]) reads them when a line is written, so a warning from
//! deep in the pipeline (a fallback, a breaker, a cache tier) names its
//! request. This replaced a `tracing` span per request, which the fmt layer
//! formatted into a string and the registry tracked on every poll, whether or
//! not a line was ever logged; the tag costs one task-local swap per poll.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The request a task works for.
#[derive(Debug, Clone)]
pub struct Tag {
    pub request_id: Arc<str>,
    pub operation: &'static str,
}

tokio::task_local! {
    static REQUEST: Tag;
}

impl Tag {
    pub fn new(request_id: &str, operation: &'static str) -> Tag {
        Tag {
            request_id: Arc::from(request_id),
            operation,
        }
    }
}

/// Runs `work` with its log lines tagged with `tag`'s request.
pub fn scope<F: Future>(tag: Tag, work: F) -> impl Future<Output = F::Output> {
    REQUEST.scope(tag, work)
}

/// `future.tagged(tag)`: [`scope`] as a method, where a chain reads better.
pub trait Tagged: Future + Sized {
    fn tagged(self, tag: Tag) -> impl Future<Output = Self::Output> {
        scope(tag, self)
    }
}

impl<F: Future> Tagged for F {}

/// The tag of the running task, for work it hands to a task of its own.
pub fn current() -> Option<Tag> {
    REQUEST.try_with(Tag::clone).ok()
}

/// Runs `work` under `tag` when there is one (a task spawned for a request).
pub async fn within<F: Future>(tag: Option<Tag>, work: F) -> F::Output {
    match tag {
        Some(tag) => REQUEST.scope(tag, work).await,
        None => work.await,
    }
}

/// The text layout of `tracing-subscriber`'s default (full) format, with the
/// running request's tag where its span used to be:
/// `2025-01-01T00:00:00.000000Z  WARN request{request_id=… operation=converse}: bedrock_proxy::upstream: message key=value`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Text;

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ansi = writer.has_ansi_escapes();
        let meta = event.metadata();
        let at = timestamp(SystemTime::now());
        if ansi {
            write!(writer, "\x1b[2m{at}\x1b[0m ")?;
        } else {
            write!(writer, "{at} ")?;
        }
        let level = meta.level();
        if ansi {
            let color = match *level {
                Level::ERROR => "31",
                Level::WARN => "33",
                Level::INFO => "32",
                Level::DEBUG => "34",
                Level::TRACE => "35",
            };
            write!(writer, "\x1b[{color}m{level:>5}\x1b[0m ")?;
        } else {
            write!(writer, "{level:>5} ")?;
        }
        let bold = |w: &mut Writer<'_>, name: &str| {
            if ansi {
                write!(w, "\x1b[1m{name}\x1b[0m")
            } else {
                w.write_str(name)
            }
        };
        let mut spans = false;
        if let Some(tag) = current() {
            bold(&mut writer, "request")?;
            write!(
                writer,
                "{{request_id={} operation={}}}:",
                tag.request_id, tag.operation
            )?;
            spans = true;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                bold(&mut writer, span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                writer.write_char(':')?;
                spans = true;
            }
        }
        if spans {
            writer.write_char(' ')?;
        }
        if ansi {
            write!(writer, "\x1b[2m{}:\x1b[0m ", meta.target())?;
        } else {
            write!(writer, "{}: ", meta.target())?;
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// `tracing-subscriber`'s JSON layout (`inner`), with the running request's
/// tag as a `request` object: `{…,"target":"…","request":{"request_id":"…","operation":"converse"}}`.
#[derive(Debug, Clone)]
pub struct Json<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Json<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(tag) = current() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end();
        let Some(open) = body.strip_suffix('}') else {
            return writer.write_str(&line);
        };
        // Both values are plain ASCII (a UUID, an operation name), but are
        // escaped anyway so the line stays JSON whatever they hold.
        let id = serde_json::Value::from(&*tag.request_id);
        let op = serde_json::Value::from(tag.operation);
        writeln!(
            writer,
            "{open},\"request\":{{\"request_id\":{id},\"operation\":{op}}}}}"
        )
    }
}

/// RFC 3339 in UTC with microseconds, as `tracing-subscriber` writes it.
pub fn timestamp(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    async fn work() {
        tracing::warn!(attempt = 2, "falling back");
        tokio::task::yield_now().await;
        let tag = current();
        tokio::spawn(within(tag, async { tracing::info!("in a spawned task") }))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn text_lines_name_their_request_and_others_do_not() {
        let out = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(out.clone())
            .event_format(Text)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        scope(Tag::new("3f1c-id", "converse"), work()).await;
        tracing::info!("outside");
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].ends_with(
                " WARN request{request_id=3f1c-id operation=converse}: bedrock_proxy::log_tag::tests: falling back attempt=2"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("request{request_id=3f1c-id operation=converse}: "));
        assert!(
            lines[2].ends_with("  INFO bedrock_proxy::log_tag::tests: outside"),
            "{}",
            lines[2]
        );
        // The timestamp leads, as before: `2025-01-01T00:00:00.000000Z`.
        assert_eq!(lines[2].find('Z'), Some(26), "{}", lines[2]);
    }

    #[tokio::test]
    async fn json_lines_carry_the_request_as_an_object() {
        let out = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(out.clone())
            .map_event_format(Json)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        scope(Tag::new("3f1c-id", "converse"), work()).await;
        tracing::info!("outside");
        let lines: Vec<serde_json::Value> = out
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["fields"]["message"], "falling back");
        assert_eq!(lines[0]["fields"]["attempt"], 2);
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["request"]["request_id"], "3f1c-id");
        assert_eq!(lines[1]["request"]["operation"], "converse");
        assert!(lines[2].get("request").is_none());
    }
}
