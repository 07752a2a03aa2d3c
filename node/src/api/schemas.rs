//! OpenAPI schemas of the answers whose types a lower crate owns (`klf_actors`): mirrors that are
//! never built, only described, so the API document can show those shapes without the lower crates
//! depending on utoipa. Each mirror carries the same name and fields as the type it describes;
//! `contract_tests` checks real answers against them with no undocumented field allowed, so a
//! field added below shows up as a failing test here rather than as a silent gap in the document.

// The mirrors exist for their schemas alone.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{RefOr, schema};
use utoipa::{PartialSchema, ToSchema};

/// A member of the mesh as this node sees it (`klf_actors::mesh::MemberView`).
#[derive(ToSchema)]
pub struct MemberView {
    pub id: String,
    pub name: String,
    /// QUIC address peers dial.
    pub addr: String,
    /// HTTP API address.
    pub api: String,
    pub state: MemberState,
    pub generation: u64,
    /// Whether this row is the node that answered.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// A member's state: `left` means it said goodbye, `down` that it stopped answering.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
    Left,
}

/// `[limits]` of a manifest: what the sandbox enforces for every instance.
#[derive(ToSchema)]
pub struct Limits {
    pub memory_mb: u64,
    pub timeout_ms: u64,
    /// Calls one instance serves at once; beyond it callers get `overloaded`.
    pub concurrency: u64,
}

/// What one `function@version` has done (`klf_actors::router::FunctionStats`).
#[derive(ToSchema)]
pub struct FunctionStats {
    pub function: String,
    pub version: String,
    pub calls: u64,
    pub errors: u64,
    /// Errors by kind (`user_error`, `timeout`, …).
    pub error_kinds: BTreeMap<String, u64>,
    /// Latency from the moment the serving node took the call, in µs.
    pub p50_us: u64,
    pub p99_us: u64,
    /// Execution time summed (wall time inside the instance), in µs.
    pub cpu_us: u64,
    /// Calls and errors in the last 30 s.
    pub recent_calls: u64,
    pub recent_errors: u64,
    /// Prompt and completion tokens of the function's own `ctx.model` calls.
    pub model_tokens_in: u64,
    pub model_tokens_out: u64,
    /// `ctx.http` requests that got an answer.
    pub http_requests: u64,
    /// The same requests by host.
    pub http_by_host: BTreeMap<String, u64>,
}

/// The outcome of running a function's own tests (`klf_actors::router::test_run::TestRun`).
#[derive(ToSchema)]
pub struct TestRun {
    /// `name@version` that was tested.
    pub function: String,
    /// The node that ran the tests.
    pub node: String,
    /// Whether the hosted instance ran them (otherwise a throwaway instance did).
    pub hosted: bool,
    pub passed: u64,
    pub failed: u64,
    pub results: Vec<super::types::TestCaseResult>,
}

/// A rendered recipe: the package's files by path
/// (`klf_actors::ingredients::RenderedPackage`).
#[derive(ToSchema)]
pub struct RenderedPackage {
    pub name: String,
    pub version: String,
    pub recipe: String,
    /// Path inside the package → content.
    pub files: BTreeMap<String, String>,
    /// The parameter values used.
    pub params: BTreeMap<String, Value>,
    pub fixtures: Fixtures,
}

/// What a rendered package's own tests need on the nodes that run them.
#[derive(ToSchema)]
pub struct Fixtures {
    /// Secret name → content.
    pub secrets: BTreeMap<String, String>,
}

/// Cost, value and ROI of one function or of the mesh (`klf_actors::ledger::Roi`).
#[derive(ToSchema)]
pub struct Roi {
    /// The function, or null for the whole mesh.
    pub function: Option<String>,
    pub cost: Breakdown,
    pub value: Breakdown,
    /// Test pass rate, error rate, p99: ratios and times, not money.
    pub quality: Vec<Metric>,
    /// `(value − cost) / cost` with every line, declared ones included; null when nothing has
    /// cost anything yet.
    pub roi: Option<f64>,
    /// How the ROI was computed, or why there is none.
    pub roi_note: String,
    /// The ratio from measured lines alone; null when nothing measured has cost anything.
    pub roi_measured: Option<f64>,
    /// Labels of the lines whose declared inputs separate `roi` from `roi_measured`.
    pub declared: Vec<String>,
    pub rates: Rates,
    pub functions: usize,
    pub runs: usize,
    pub events: usize,
}

/// Lines of cost or value, in USD, and their total.
#[derive(ToSchema)]
pub struct Breakdown {
    pub lines: Vec<Line>,
    pub total: f64,
}

/// One line of cost or value.
#[derive(ToSchema)]
pub struct Line {
    /// Stable key (`development`, `compute_cpu`, `time_saved`, …).
    pub key: String,
    pub label: String,
    pub amount: Amount,
    pub quantities: Vec<Quantity>,
}

/// A figure with its basis and a note of where it came from.
#[derive(ToSchema)]
pub struct Amount {
    pub value: f64,
    pub basis: Basis,
    pub note: String,
}

/// One quantity behind a line.
#[derive(ToSchema)]
pub struct Quantity {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub basis: Basis,
    pub source: String,
}

/// Whether a figure was measured by the mesh or declared by someone (a recipe, a manifest).
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    Measured,
    Declared,
}

/// A quality or scalability figure (not money).
#[derive(ToSchema)]
pub struct Metric {
    pub key: String,
    pub label: String,
    /// Null when there is nothing to measure yet.
    pub value: Option<f64>,
    pub unit: String,
    pub basis: Basis,
    pub note: String,
}

/// Every price ROI uses, with where each came from.
#[derive(ToSchema)]
pub struct Rates {
    pub hourly_rate_usd: Rate,
    pub cpu_second_usd: Rate,
    pub gb_month_usd: Rate,
    pub memory_gb_month_usd: Rate,
    pub maintenance_event_hours: Rate,
    pub model_input_usd_per_1k: Rate,
    pub model_output_usd_per_1k: Rate,
    /// USD per answered `ctx.http` request, by host (`[roi.http_request_usd]`).
    pub http_request_usd: BTreeMap<String, f64>,
    /// The file the rates were read from (null when it does not exist).
    pub file: Option<String>,
}

/// One configured price.
#[derive(ToSchema)]
pub struct Rate {
    pub value: f64,
    pub source: RateSource,
}

/// Where a rate's value came from.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateSource {
    Default,
    Config,
}

/// A Chef stage starting or ending (`klf_actors::chef::StageEvent`).
#[derive(ToSchema)]
pub struct StageEvent {
    pub stage: String,
    /// `started`, `progress` (a model exchange streaming), `done` or `failed`.
    pub status: String,
    /// Null while the stage runs (time so far on `progress`).
    pub ms: Option<u64>,
    pub detail: String,
    /// The node whose agent did the work.
    pub node: String,
    /// Only on `progress`: how far the streamed answer got.
    pub progress: Option<Progress>,
}

/// How far a streaming model exchange got.
#[derive(ToSchema)]
pub struct Progress {
    /// Tokens (or streamed chunks) received so far.
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub elapsed_ms: u64,
}

/// Everything about one Chef run (`klf_actors::chef::ChefRun`).
#[derive(ToSchema)]
pub struct ChefRun {
    pub run_id: String,
    pub request: String,
    pub provider: String,
    pub outcome: RunOutcome,
    pub requirement: Option<TechnicalRequirement>,
    /// Where the generated package was written.
    pub code_dir: Option<String>,
    pub validation: Option<ValidationResult>,
    pub tests: Option<TestResult>,
    pub stages: Vec<StageReport>,
    pub repairs: u32,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub total_ms: u64,
    pub started_unix_ms: u64,
}

/// How a run ended, by `status`.
#[derive(ToSchema)]
#[serde(rename_all = "kebab-case")]
#[serde(tag = "status")]
pub enum RunOutcome {
    Deployed {
        function: String,
        version: String,
        replicas: u32,
    },
    /// Validated and tested, not deployed.
    Built {
        function: String,
        version: String,
    },
    NoMatch(NoMatch),
    Failed {
        reasons: Vec<String>,
    },
}

/// The interpreter's answer when no recipe fits.
#[derive(ToSchema)]
pub struct NoMatch {
    pub request: String,
    pub reason: String,
    pub closest: Vec<Candidate>,
}

/// A recipe that was considered, with its score.
#[derive(ToSchema)]
pub struct Candidate {
    pub recipe: String,
    pub title: String,
    pub score: f64,
    /// The request's words found in the recipe.
    pub matched: Vec<String>,
}

/// What the Requirement Interpreter made of the request.
#[derive(ToSchema)]
pub struct TechnicalRequirement {
    pub request: String,
    pub goal: String,
    /// The recipe the function is built from; empty when a model wrote the requirement.
    pub recipe: String,
    /// The function's name in the mesh.
    pub function: String,
    /// The function's `type` (model-written requirements).
    pub kind: String,
    /// What the function does.
    pub description: String,
    /// The version to publish (empty: the recipe's, or 1.0.0).
    pub version: String,
    /// Recipe parameters: those found in the request, the rest at their defaults.
    pub params: BTreeMap<String, Value>,
    /// Which parameters came from the request.
    pub extracted: Vec<String>,
    pub input_schema: Value,
    pub output_schema: Value,
    pub steps: Vec<Step>,
    pub limits: RequirementLimits,
    /// How sure the interpreter is (0 to 1).
    pub confidence: f64,
    pub alternatives: Vec<Candidate>,
    /// Examples with expected outputs or errors (model-written requirements).
    pub examples: Vec<RequirementExample>,
    /// Host capabilities the function needs.
    pub capabilities: Vec<String>,
    /// Deployed functions it may call: name → semver range.
    pub dependencies: BTreeMap<String, String>,
}

/// An example a requirement states: an input and its output or error.
#[derive(ToSchema)]
pub struct RequirementExample {
    pub name: String,
    pub input: Value,
    pub output: Option<Value>,
    /// Text the error message contains.
    pub error: Option<String>,
}

/// One step of the requirement, mapped to the base class that does it.
#[derive(ToSchema)]
pub struct Step {
    pub description: String,
    pub base_class: String,
}

/// Limits the generated function runs under.
#[derive(ToSchema)]
pub struct RequirementLimits {
    pub memory_mb: u64,
    pub timeout_ms: u64,
    /// The p99 latency one call may take in the performance test.
    pub latency_budget_ms: Option<u64>,
}

/// The Code Validator's verdict.
#[derive(ToSchema)]
pub struct ValidationResult {
    pub ok: bool,
    pub problems: Vec<Problem>,
    /// Checks run, in order, each with whether it passed.
    pub checks: Vec<Check>,
    /// Warnings that do not refuse the code.
    pub warnings: Vec<Problem>,
}

/// One problem the validator found.
#[derive(ToSchema)]
pub struct Problem {
    /// `static`, `package`, `compile`, `dependencies`, `sandbox`.
    pub check: String,
    pub message: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
}

/// A check as `[name, passed]` (a Rust `(String, bool)` on the wire).
pub struct Check;

impl PartialSchema for Check {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .description(Some(
                "`[name, passed]`: the check's name and whether it passed.",
            ))
            .prefix_items([
                Schema::from(ObjectBuilder::new().schema_type(Type::String)),
                Schema::from(ObjectBuilder::new().schema_type(Type::Boolean)),
            ])
            .items(schema::ArrayItems::False)
            .min_items(Some(2))
            .max_items(Some(2))
            .schema_type(SchemaType::from(Type::Array))
            .into()
    }
}

impl ToSchema for Check {}

/// The acceptance tests' verdict.
#[derive(ToSchema)]
pub struct TestResult {
    pub passed: u32,
    pub failed: u32,
    pub cases: Vec<CaseResult>,
}

/// The result of one acceptance test.
#[derive(ToSchema)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    /// What went wrong, for a person.
    pub detail: Option<String>,
    /// What went wrong, as the code generator was told (never the expected output).
    pub feedback: Option<String>,
}

/// One finished stage.
#[derive(ToSchema)]
pub struct StageReport {
    pub stage: String,
    pub ms: u64,
    pub ok: bool,
    pub detail: String,
    pub node: String,
}

/// One ended span (`klf_actors::router::trace_ring::RecordedSpan`).
#[derive(ToSchema)]
pub struct RecordedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    pub parent_span_id: Option<String>,
    /// `klf.invoke` (the caller's side of a call) or `klf.serve` (where it ran).
    pub name: String,
    /// The node that recorded it (its name when it is a member, else its id).
    pub node: String,
    pub function: Option<String>,
    pub start_unix_us: u64,
    pub duration_us: u64,
    /// The error kind when the span failed.
    pub error: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// One recent trace (`klf_actors::router::trace_ring::TraceSummary`).
#[derive(ToSchema)]
pub struct TraceSummary {
    pub trace_id: String,
    /// Name of its earliest span.
    pub root: String,
    pub function: Option<String>,
    pub start_unix_us: u64,
    pub duration_us: u64,
    pub spans: usize,
    /// Ids of the nodes that recorded its spans.
    pub nodes: Vec<String>,
    pub errors: usize,
}

/// A row of a waterfall (`klf_actors::router::trace_ring::WaterfallRow`).
#[derive(ToSchema)]
pub struct WaterfallRow {
    /// 0 for a span whose parent no member recorded.
    pub depth: usize,
    /// Microseconds from the trace's first start.
    pub offset_us: u64,
    pub span: RecordedSpan,
}
