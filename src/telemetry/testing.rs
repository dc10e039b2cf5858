//! Tracing for unit tests: an exporter that keeps every span as it ends, and
//! readers for what the tests check.

use super::{Tracing, TRACING};
use opentelemetry::trace::TraceId;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Value;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

/// Tracing on for this test process (content captured), exporting each span
/// as it ends into the returned list.
pub(crate) fn tracing_on() -> Arc<Mutex<Vec<SpanData>>> {
    static SPANS: OnceLock<Arc<Mutex<Vec<SpanData>>>> = OnceLock::new();
    SPANS
        .get_or_init(|| {
            let collect = Collect::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(collect.clone())
                .build();
            let set = TRACING.set(Tracing {
                tracer: provider.tracer("test"),
                capture_content: true,
            });
            assert!(set.is_ok(), "tracing was installed twice");
            collect.0
        })
        .clone()
}

pub(crate) fn spans_of(spans: &Mutex<Vec<SpanData>>, trace: TraceId) -> Vec<SpanData> {
    spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .cloned()
        .collect()
}

pub(crate) fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

pub(crate) fn text(span: &SpanData, key: &str) -> String {
    attribute(span, key)
        .map(|v| v.as_str().into_owned())
        .unwrap_or_default()
}
