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
    pub fn new(request_id: impl Into<Arc<str>>, operation: &'static str) -> Tag {
        Tag {
            request_id: request_id.into(),
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
        // `text` in SGR style `code` on a terminal, plain otherwise.
        let paint = |w: &mut Writer<'_>, code: &str, text: fmt::Arguments<'_>| {
            if ansi {
                write!(w, "\x1b[{code}m{text}\x1b[0m")
            } else {
                w.write_fmt(text)
            }
        };
        let meta = event.metadata();
        let at = timestamp(SystemTime::now());
        paint(&mut writer, "2", format_args!("{at}"))?;
        writer.write_char(' ')?;
        let level = meta.level();
        let color = match *level {
            Level::ERROR => "31",
            Level::WARN => "33",
            Level::INFO => "32",
            Level::DEBUG => "34",
            Level::TRACE => "35",
        };
        paint(&mut writer, color, format_args!("{level:>5}"))?;
        writer.write_char(' ')?;
        let mut spans = false;
        if let Some(tag) = current() {
            paint(&mut writer, "1", format_args!("request"))?;
            write!(
                writer,
                "{{request_id={} operation={}}}:",
                tag.request_id, tag.operation
            )?;
            spans = true;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                paint(&mut writer, "1", format_args!("{}", span.name()))?;
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
        paint(&mut writer, "2", format_args!("{}:", meta.target()))?;
        writer.write_char(' ')?;
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
    use crate::support::TestSink;

    async fn work() {
        tracing::warn!(attempt = 2, "falling back");
        tokio::task::yield_now().await;
        let tag = current();
        tokio::spawn(within(tag, async { tracing::info!("in a spawned task") }))
            .await
            .unwrap();
    }

    /// The [`Text`] format, written to a sink the test reads, until the guard drops.
    fn text_lines(ansi: bool) -> (TestSink, tracing::subscriber::DefaultGuard) {
        let out = TestSink::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_writer(out.clone())
            .event_format(Text)
            .finish();
        (out, tracing::subscriber::set_default(subscriber))
    }

    #[tokio::test]
    async fn text_lines_name_their_request_and_others_do_not() {
        let (out, _guard) = text_lines(/* ansi: */ false);
        scope(Tag::new("3f1c-id", "converse"), work()).await;
        tracing::info!("outside");
        let lines = out.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
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
    async fn on_a_terminal_the_layout_is_the_same_with_colours() {
        let (out, _guard) = text_lines(/* ansi: */ true);
        scope(Tag::new("3f1c-id", "converse"), async {
            tracing::warn!("falling back")
        })
        .await;
        let lines = out.lines();
        assert!(lines[0].starts_with("\x1b[2m"), "{:?}", lines[0]);
        assert!(
            lines[0].ends_with(
                "Z\x1b[0m \x1b[33m WARN\x1b[0m \x1b[1mrequest\x1b[0m{request_id=3f1c-id operation=converse}: \x1b[2mbedrock_proxy::log_tag::tests:\x1b[0m falling back"
            ),
            "{:?}",
            lines[0]
        );
    }

    #[tokio::test]
    async fn json_lines_carry_the_request_as_an_object() {
        let out = TestSink::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(out.clone())
            .map_event_format(Json)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        scope(Tag::new("3f1c-id", "converse"), work()).await;
        tracing::info!("outside");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .iter()
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
