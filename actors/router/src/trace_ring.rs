//! The most recent spans of this process, kept in a bounded ring so that a trace can be read
//! without a collector (`klf trace`): an OpenTelemetry span processor that converts each ended
//! span of the mesh's call spans into a small [`RecordedSpan`] and drops the oldest when full.
//!
//! A node answers peers' `Frame::Agent` of kind [`TRACES_KIND`] from its ring; the node that was
//! asked gathers every member's answer and merges them ([`merge`], [`summarize`], [`waterfall`]:
//! pure, unit-tested). One ring per process: with several nodes in one process (`LocalMesh`) they
//! share it, and each span says which node recorded it (`klf.node`), so merging de-duplicates.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, Status};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use serde::{Deserialize, Serialize};

/// The `Frame::Agent` kind of a trace query between nodes.
pub const TRACES_KIND: &str = "klf.traces";

/// The span attribute naming the node that recorded a span (its node id).
pub const NODE_ATTRIBUTE: &str = "klf.node";

/// Spans a node keeps by default: about 1.6 MiB (a typical call span takes about 390 bytes, see
/// [`SpanRing::approx_bytes`] and its test).
pub const DEFAULT_CAPACITY: usize = 4096;

/// One ended span, as `klf trace` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// The parent span, when there is one (it may have been recorded on another node).
    pub parent_span_id: Option<String>,
    /// For example `klf.invoke` (the caller's side) or `klf.serve` (where it ran).
    pub name: String,
    /// Id of the node that recorded it; empty if unknown.
    pub node: String,
    /// The function called, when the span is about one.
    pub function: Option<String>,
    pub start_unix_us: u64,
    pub duration_us: u64,
    /// The error kind when the span failed (`timeout`, `user_error`, …).
    pub error: Option<String>,
    /// Every other attribute, as text.
    pub attributes: BTreeMap<String, String>,
}

impl RecordedSpan {
    fn from_data(span: SpanData) -> Self {
        let mut attributes = BTreeMap::new();
        let mut node = String::new();
        let mut function = None;
        let mut error = None;
        for kv in span.attributes {
            let value = kv.value.to_string();
            match kv.key.as_str() {
                NODE_ATTRIBUTE => node = value,
                "function" => function = Some(value),
                "error.kind" => error = Some(value),
                "otel.status_code" | "busy_ns" | "idle_ns" | "thread.id" | "thread.name"
                | "code.filepath" | "code.namespace" | "code.lineno" | "target" => {}
                key => {
                    attributes.insert(key.to_string(), value);
                }
            }
        }
        if error.is_none()
            && let Status::Error { description } = &span.status
        {
            error = Some(if description.is_empty() {
                "error".to_string()
            } else {
                description.to_string()
            });
        }
        let micros = |t: std::time::SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_micros() as u64
        };
        let start_unix_us = micros(span.start_time);
        Self {
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_span_id: (span.parent_span_id != SpanId::INVALID)
                .then(|| span.parent_span_id.to_string()),
            name: span.name.into_owned(),
            node,
            function,
            start_unix_us,
            duration_us: micros(span.end_time).saturating_sub(start_unix_us),
            error,
            attributes,
        }
    }

    /// Heap and inline bytes this span holds (an estimate: string capacities and the struct).
    fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.trace_id.capacity()
            + self.span_id.capacity()
            + self.parent_span_id.as_ref().map_or(0, String::capacity)
            + self.name.capacity()
            + self.node.capacity()
            + self.function.as_ref().map_or(0, String::capacity)
            + self.error.as_ref().map_or(0, String::capacity)
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.capacity() + v.capacity() + 3 * std::mem::size_of::<usize>())
                .sum::<usize>()
    }
}

/// What a peer is asked for: one trace, or the spans of the most recent traces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceQuery {
    /// One trace: all its spans this node holds.
    pub trace_id: Option<String>,
    /// Recent traces: only those with a span about this function.
    pub function: Option<String>,
    /// Recent traces: only those with a failed span.
    pub errors: bool,
    /// Recent traces: at most this many (newest first).
    pub limit: usize,
}

/// The bounded ring of recent spans.
#[derive(Debug)]
pub struct SpanRing {
    capacity: usize,
    spans: Mutex<VecDeque<RecordedSpan>>,
}

impl SpanRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            spans: Mutex::new(VecDeque::with_capacity(capacity.clamp(1, 1 << 16))),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keeps `span`, dropping the oldest when full.
    pub fn push(&self, span: RecordedSpan) {
        if let Ok(mut spans) = self.spans.lock() {
            if spans.len() >= self.capacity {
                spans.pop_front();
            }
            spans.push_back(span);
        }
    }

    /// How many spans it holds now.
    pub fn len(&self) -> usize {
        self.spans.lock().map_or(0, |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the spans it holds take, in bytes (an estimate from their sizes and string capacities).
    pub fn approx_bytes(&self) -> usize {
        self.spans
            .lock()
            .map_or(0, |s| s.iter().map(RecordedSpan::approx_bytes).sum())
    }

    /// The spans that answer `query` (see [`select`]).
    pub fn query(&self, query: &TraceQuery) -> Vec<RecordedSpan> {
        match self.spans.lock() {
            Ok(spans) => select(spans.iter(), query),
            Err(_) => Vec::new(),
        }
    }
}

/// The spans among `spans` that answer `query`: every span of the trace it names, or every span of
/// the `limit` most recent traces that match its filters.
pub fn select<'a>(
    spans: impl Iterator<Item = &'a RecordedSpan> + Clone,
    query: &TraceQuery,
) -> Vec<RecordedSpan> {
    if let Some(id) = &query.trace_id {
        return spans.filter(|s| &s.trace_id == id).cloned().collect();
    }
    let mut latest: HashMap<&str, u64> = HashMap::new();
    let mut wanted: HashSet<&str> = HashSet::new();
    let mut failed: HashSet<&str> = HashSet::new();
    for span in spans.clone() {
        let end = span.start_unix_us.saturating_add(span.duration_us);
        let at = latest.entry(&span.trace_id).or_insert(end);
        *at = (*at).max(end);
        if query.function.is_none() || span.function == query.function {
            wanted.insert(&span.trace_id);
        }
        if span.error.is_some() {
            failed.insert(&span.trace_id);
        }
    }
    let mut chosen: Vec<(&str, u64)> = latest
        .into_iter()
        .filter(|(id, _)| wanted.contains(id) && (!query.errors || failed.contains(id)))
        .collect();
    chosen.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    chosen.truncate(query.limit.max(1));
    let chosen: HashSet<&str> = chosen.into_iter().map(|(id, _)| id).collect();
    spans
        .filter(|s| chosen.contains(s.trace_id.as_str()))
        .cloned()
        .collect()
}

/// A shareable handle, so the same ring can be the tracer provider's processor and the node's
/// source of answers.
#[derive(Debug, Clone)]
pub struct SharedRing(pub Arc<SpanRing>);

impl SpanProcessor for SharedRing {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        self.0.push(RecordedSpan::from_data(span));
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

static RING: OnceLock<Arc<SpanRing>> = OnceLock::new();

/// Creates this process's ring (the first call wins; later calls return the existing one).
pub fn install(capacity: usize) -> Arc<SpanRing> {
    RING.get_or_init(|| Arc::new(SpanRing::new(capacity)))
        .clone()
}

/// This process's ring, if one was installed (`klf up --trace-buffer 0` installs none).
pub fn ring() -> Option<&'static Arc<SpanRing>> {
    RING.get()
}

/// Spans from several nodes' answers, each once (a span can come twice when nodes share a
/// process), oldest first.
pub fn merge(answers: impl IntoIterator<Item = Vec<RecordedSpan>>) -> Vec<RecordedSpan> {
    let mut seen = HashSet::new();
    let mut spans: Vec<RecordedSpan> = answers
        .into_iter()
        .flatten()
        .filter(|s| seen.insert((s.trace_id.clone(), s.span_id.clone())))
        .collect();
    spans.sort_by(|a, b| {
        a.start_unix_us
            .cmp(&b.start_unix_us)
            .then_with(|| a.span_id.cmp(&b.span_id))
    });
    spans
}

/// One trace in a list of recent ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The name of its earliest span (the root, when this mesh recorded it).
    pub root: String,
    /// The function of its earliest span about one.
    pub function: Option<String>,
    pub start_unix_us: u64,
    /// From its first start to its last end.
    pub duration_us: u64,
    pub spans: usize,
    /// Ids of the nodes that recorded its spans.
    pub nodes: Vec<String>,
    /// How many of its spans failed.
    pub errors: usize,
}

/// Summaries of the traces in `spans` (merged), newest first, at most `limit`.
pub fn summarize(spans: &[RecordedSpan], limit: usize) -> Vec<TraceSummary> {
    let mut by_trace: BTreeMap<&str, Vec<&RecordedSpan>> = BTreeMap::new();
    for span in spans {
        by_trace.entry(&span.trace_id).or_default().push(span);
    }
    let mut summaries: Vec<TraceSummary> = by_trace
        .into_iter()
        .filter_map(|(id, spans)| {
            let first = spans.iter().min_by_key(|s| s.start_unix_us)?;
            let end = spans
                .iter()
                .map(|s| s.start_unix_us.saturating_add(s.duration_us))
                .max()
                .unwrap_or(first.start_unix_us);
            let mut nodes: Vec<String> = spans
                .iter()
                .map(|s| s.node.clone())
                .filter(|n| !n.is_empty())
                .collect();
            nodes.sort();
            nodes.dedup();
            Some(TraceSummary {
                trace_id: id.to_string(),
                root: first.name.clone(),
                function: spans
                    .iter()
                    .filter(|s| s.function.is_some())
                    .min_by_key(|s| s.start_unix_us)
                    .and_then(|s| s.function.clone()),
                start_unix_us: first.start_unix_us,
                duration_us: end.saturating_sub(first.start_unix_us),
                spans: spans.len(),
                nodes,
                errors: spans.iter().filter(|s| s.error.is_some()).count(),
            })
        })
        .collect();
    summaries.sort_by(|a, b| {
        b.start_unix_us
            .cmp(&a.start_unix_us)
            .then_with(|| a.trace_id.cmp(&b.trace_id))
    });
    summaries.truncate(limit);
    summaries
}

/// One row of a trace's waterfall: its spans depth-first, children under their parents in start
/// order, each with its offset from the trace's first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaterfallRow {
    /// 0 for a span whose parent this mesh did not record.
    pub depth: usize,
    pub offset_us: u64,
    pub span: RecordedSpan,
}

/// The waterfall of one trace's spans (merged).
pub fn waterfall(spans: &[RecordedSpan]) -> Vec<WaterfallRow> {
    let origin = spans.iter().map(|s| s.start_unix_us).min().unwrap_or(0);
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&RecordedSpan>> = HashMap::new();
    for span in spans {
        let parent = span
            .parent_span_id
            .as_deref()
            .filter(|p| ids.contains(p) && *p != span.span_id);
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| {
            a.start_unix_us
                .cmp(&b.start_unix_us)
                .then_with(|| a.span_id.cmp(&b.span_id))
        });
    }
    let mut rows = Vec::with_capacity(spans.len());
    let mut stack: Vec<(&RecordedSpan, usize)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|s| (*s, 0)).collect())
        .unwrap_or_default();
    let mut visited = HashSet::new();
    while let Some((span, depth)) = stack.pop() {
        if !visited.insert(span.span_id.as_str()) {
            continue;
        }
        rows.push(WaterfallRow {
            depth,
            offset_us: span.start_unix_us.saturating_sub(origin),
            span: span.clone(),
        });
        if let Some(kids) = children.get(&Some(span.span_id.as_str())) {
            stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: &str, id: &str, parent: Option<&str>, start: u64, dur: u64) -> RecordedSpan {
        RecordedSpan {
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            name: "klf.invoke".into(),
            node: format!("n-{id}"),
            function: Some(format!("f-{trace}")),
            start_unix_us: start,
            duration_us: dur,
            error: None,
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn the_ring_keeps_the_most_recent_spans_only() {
        let ring = SpanRing::new(3);
        for i in 0..5 {
            ring.push(span("t", &i.to_string(), None, i, 1));
        }
        let kept = ring.query(&TraceQuery {
            trace_id: Some("t".into()),
            ..TraceQuery::default()
        });
        let ids: Vec<&str> = kept.iter().map(|s| s.span_id.as_str()).collect();
        assert_eq!(ids, ["2", "3", "4"]);
        assert_eq!(ring.len(), 3);
        assert!(ring.approx_bytes() >= 3 * std::mem::size_of::<RecordedSpan>());
    }

    #[test]
    fn a_typical_call_span_takes_under_half_a_kibibyte() {
        // As the router records them: 16-hex node ids, two remaining attributes.
        let mut typical = span(
            &"a".repeat(32),
            &"b".repeat(16),
            Some(&"c".repeat(16)),
            1,
            1,
        );
        typical.node = "d".repeat(16);
        typical.function = Some("moving-average".into());
        typical.attributes = BTreeMap::from([
            ("call_depth".to_string(), "1".to_string()),
            ("node".to_string(), "e".repeat(16)),
        ]);
        let ring = SpanRing::new(DEFAULT_CAPACITY);
        for _ in 0..100 {
            ring.push(typical.clone());
        }
        let each = ring.approx_bytes() / 100;
        assert!((300..512).contains(&each), "{each} bytes a span");
    }

    #[test]
    fn recent_queries_pick_the_newest_matching_traces_whole() {
        let mut failed = span("b", "b2", Some("b1"), 30, 5);
        failed.error = Some("timeout".into());
        let spans = [
            span("a", "a1", None, 10, 50),
            span("a", "a2", Some("a1"), 20, 10),
            span("b", "b1", None, 25, 20),
            failed,
            span("c", "c1", None, 100, 1),
        ];
        let pick = |query: TraceQuery| -> Vec<String> {
            let mut ids: Vec<String> = select(spans.iter(), &query)
                .into_iter()
                .map(|s| s.span_id)
                .collect();
            ids.sort();
            ids
        };
        let recent = |limit| TraceQuery {
            limit,
            ..TraceQuery::default()
        };
        assert_eq!(pick(recent(1)), ["c1"]);
        // a ends at 60, b at 45: a is the more recent of the two.
        assert_eq!(pick(recent(2)), ["a1", "a2", "c1"]);
        let errors = TraceQuery {
            errors: true,
            limit: 10,
            ..TraceQuery::default()
        };
        assert_eq!(pick(errors), ["b1", "b2"]);
        let function = TraceQuery {
            function: Some("f-a".into()),
            limit: 10,
            ..TraceQuery::default()
        };
        assert_eq!(pick(function), ["a1", "a2"]);
    }

    #[test]
    fn merging_drops_duplicates_and_summaries_count_nodes_and_errors() {
        let mut failed = span("a", "a3", Some("a2"), 40, 2);
        failed.error = Some("user_error".into());
        let mine = vec![
            span("a", "a1", None, 10, 50),
            span("a", "a2", Some("a1"), 20, 10),
        ];
        let theirs = vec![span("a", "a2", Some("a1"), 20, 10), failed];
        let merged = merge([mine, theirs, vec![span("b", "b1", None, 5, 1)]]);
        assert_eq!(merged.len(), 4);
        let summaries = summarize(&merged, 10);
        assert_eq!(summaries.len(), 2);
        let a = &summaries[0];
        assert_eq!((a.trace_id.as_str(), a.spans, a.errors), ("a", 3, 1));
        assert_eq!(a.duration_us, 50);
        assert_eq!(a.nodes, ["n-a1", "n-a2", "n-a3"]);
        assert_eq!(summarize(&merged, 1).len(), 1);
    }

    #[test]
    fn the_waterfall_puts_children_under_parents_in_start_order() {
        let spans = merge([vec![
            span("t", "root", None, 100, 90),
            span("t", "late", Some("root"), 150, 10),
            span("t", "early", Some("root"), 110, 30),
            span("t", "grand", Some("early"), 115, 5),
            // Its parent was recorded by no node of this mesh: shown at depth 0.
            span("t", "orphan", Some("elsewhere"), 120, 1),
            // A span that names itself as its parent must not loop.
            span("t", "selfish", Some("selfish"), 130, 1),
        ]]);
        let rows = waterfall(&spans);
        let rows: Vec<(usize, &str, u64)> = rows
            .iter()
            .map(|r| (r.depth, r.span.span_id.as_str(), r.offset_us))
            .collect();
        let expected = [
            (0, "root", 0),
            (1, "early", 10),
            (2, "grand", 15),
            (1, "late", 50),
            (0, "orphan", 20),
            (0, "selfish", 30),
        ];
        assert_eq!(rows, expected);
    }
}
