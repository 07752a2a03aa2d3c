//! Distributed traces across the mesh: every routed call is a span, and its W3C `traceparent`
//! travels in `Invoke` so that a chain of calls over several nodes is one trace.
//!
//! Spans use the target [`TARGET`], which the node's log output leaves out and only the
//! OpenTelemetry exporter takes in: with no exporter configured nothing is interested, so the
//! spans are never built and the hot path pays for a disabled callsite only.

use std::collections::HashMap;
use std::future::Future;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::InvokeError;

/// The `tracing` target of the mesh's call spans.
pub const TARGET: &str = "klf::trace";

/// Runs `call` inside `span`, a child of the caller's span `parent`; a failure marks the span
/// with its kind (fields `error.kind` and `otel.status_code`, declared empty by the caller). When
/// nothing wants the span, `call` runs as is.
pub async fn traced<T>(
    span: &Span,
    parent: Option<&str>,
    call: impl Future<Output = Result<T, InvokeError>>,
) -> Result<T, InvokeError> {
    if span.is_disabled() {
        return call.await;
    }
    adopt(span, parent);
    let result = call.instrument(span.clone()).await;
    if let Err(e) = &result {
        span.record("error.kind", e.kind.as_str())
            .record("otel.status_code", "ERROR");
    }
    result
}

/// Makes `span` a child of the caller's span named by `traceparent` (ignored when malformed: a
/// bad header from a peer starts a new trace, it does not fail the call).
pub fn adopt(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|t| !t.is_empty()) else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

/// The `traceparent` to send onwards from inside `span`: the span itself when it is exported,
/// else whatever arrived (`inherited`), so a trace is not cut by a node that does not export.
pub fn onward(span: &Span, inherited: Option<&str>) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier
        .remove("traceparent")
        .or_else(|| inherited.map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_the_inherited_parent_travels_on() {
        let span = tracing::info_span!(target: TARGET, "klf.invoke");
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        adopt(&span, Some(tp));
        assert_eq!(onward(&span, Some(tp)).as_deref(), Some(tp));
        assert_eq!(onward(&span, None), None);
        // Garbage is ignored, not an error.
        adopt(&span, Some("not a traceparent"));
    }
}
