//! The HTTP API's wire types: every request body, query and answer of every route, shared by the
//! axum handlers that write them and the `klf` client commands that read them.
//!
//! They live in the binary crate because only the `klf` binary speaks this API from Rust; the
//! integration tests deliberately read the wire as JSON (through `klf … --json` or raw HTTP), so
//! they check the contract instead of agreeing with the server by construction.
//!
//! Answers that a lower crate already defines (`MemberView`, `FunctionStats`, `TestRun`, `Roi`,
//! `ChefRun`, `StageEvent`, `RenderedPackage`) are sent as those types; their OpenAPI schemas are the
//! mirrors in [`super::schemas`], which the contract test checks against real answers.

use std::collections::BTreeMap;

use klf_actors::chef::{ChefRun, StageEvent};
use klf_actors::functions::package::Limits;
use klf_actors::registry::Release;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::schemas;

/// Every refusal of the API: `{"error":{"code","message"}}`, with a fitting HTTP status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and for people (`message`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable kind (`unauthenticated`, `forbidden`, `bad_request`,
    /// `body_too_large`, `not_found`, `conflict`, an invocation error kind such as `timeout`, …).
    pub code: String,
    /// What happened and, where possible, what to do about it.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

/// `GET /readyz` once membership answers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// Members this node knows, itself included, in any state.
    pub members: usize,
}

/// `GET /v1/node`: who answered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    pub mesh_id: String,
    pub mesh_name: String,
    /// QUIC address peers dial.
    pub addr: String,
    /// HTTP API address peers and `klf members` show.
    pub api: String,
    /// Incremented on every restart, so peers tell a restarted node from a stale record of it.
    pub generation: u64,
    /// Whether this node holds the mesh CA key (only then can it issue join tokens).
    pub holds_ca: bool,
    /// The `klf` version.
    pub version: String,
}

/// The body of `POST /v1/join-tokens` (optional: no body means the defaults).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenRequest {
    /// How long the token stays valid, in seconds (1 to 604800; default 600).
    #[serde(default = "default_ttl_secs")]
    #[schema(default = 600, minimum = 1, maximum = 604800)]
    pub ttl_secs: u64,
}

fn default_ttl_secs() -> u64 {
    600
}

impl Default for JoinTokenRequest {
    fn default() -> Self {
        Self {
            ttl_secs: default_ttl_secs(),
        }
    }
}

/// A one-time join token, as `klf up --join` takes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinToken {
    /// The encoded token (`klf1.…`).
    pub token: String,
    pub mesh_id: String,
    /// QUIC address of the node that issued the token and will redeem it.
    pub seed: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

/// A package as the API receives it: the text of its files.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PackageBody {
    /// The `klf.toml` text.
    pub manifest: String,
    /// The entry module's source (empty for a native built-in).
    pub source: String,
    /// `examples/NAME.json` contents by NAME.
    #[serde(default)]
    pub examples: BTreeMap<String, String>,
    /// `schema/input.json`, if the package has it.
    #[serde(default)]
    pub input_schema: Option<String>,
    /// `schema/output.json`, if the package has it.
    #[serde(default)]
    pub output_schema: Option<String>,
}

/// The body of `POST /v1/functions`: a package and how many instances to keep.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeployRequest {
    #[serde(flatten)]
    pub package: PackageBody,
    /// Instances the mesh keeps running (1 to 64).
    #[serde(default = "one")]
    #[schema(default = 1, minimum = 1, maximum = 64)]
    pub replicas: u32,
    #[serde(flatten)]
    pub perf: PerfSettings,
}

/// The body of `POST /v1/functions/validate`: a package and how to run its performance test.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ValidateRequest {
    #[serde(flatten)]
    pub package: PackageBody,
    #[serde(flatten)]
    pub perf: PerfSettings,
}

/// How the validator's performance test runs: the package's examples, `perf_runs` times each,
/// then a load step at 1, 8 and 32 calls in flight.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PerfSettings {
    /// `fail` (default): over budget refuses; `warn`: reported as warnings; `off`: not run.
    #[serde(default)]
    pub perf: Option<PerfModeBody>,
    /// Timed runs of each example (default 50, at most 1000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub perf_runs: Option<u32>,
    /// The p99 one call may take, in milliseconds (besides `[limits] timeout_ms`).
    #[serde(default)]
    pub latency_budget_ms: Option<u64>,
}

/// What an over-budget performance test does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PerfModeBody {
    Fail,
    Warn,
    Off,
}

impl From<PerfModeBody> for klf_actors::node::validator::PerfMode {
    fn from(mode: PerfModeBody) -> Self {
        match mode {
            PerfModeBody::Fail => Self::Fail,
            PerfModeBody::Warn => Self::Warn,
            PerfModeBody::Off => Self::Off,
        }
    }
}

/// What the performance test measured for a release.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PerfView {
    /// Timed calls (examples × runs).
    pub runs: u32,
    pub examples: u32,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub peak_memory_bytes: u64,
    pub max_output_bytes: u64,
    /// Calls/s at 1, 8 and 32 calls in flight.
    pub load: Vec<LoadStepView>,
    /// The best of the load steps: the ROI's scalability metric.
    pub calls_per_sec: Option<f64>,
    /// The latency budget held to, if any.
    pub latency_budget_ms: Option<u64>,
    /// What was over budget (a deploy with `perf: warn` keeps it).
    pub over_budget: Vec<String>,
    /// How long the test took, in milliseconds.
    pub elapsed_ms: u64,
    /// The node that measured.
    pub node: String,
}

/// Throughput at one load step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoadStepView {
    pub in_flight: u32,
    pub calls: u32,
    pub calls_per_sec: f64,
}

impl From<&klf_actors::registry::PerfRecord> for PerfView {
    fn from(r: &klf_actors::registry::PerfRecord) -> Self {
        let f = &r.figures;
        Self {
            runs: f.runs,
            examples: f.examples,
            p50_ms: f.p50_us as f64 / 1000.0,
            p99_ms: f.p99_us as f64 / 1000.0,
            peak_memory_bytes: f.peak_memory_bytes,
            max_output_bytes: f.max_output_bytes,
            load: f
                .load
                .iter()
                .map(|s| LoadStepView {
                    in_flight: s.in_flight,
                    calls: s.calls,
                    calls_per_sec: s.calls_per_sec,
                })
                .collect(),
            calls_per_sec: f.calls_per_sec(),
            latency_budget_ms: r.budget.latency_ms,
            over_budget: r.over_budget.clone(),
            elapsed_ms: f.elapsed_ms,
            node: r.node.clone(),
        }
    }
}

fn one() -> u32 {
    1
}

/// One published version, as shown to users.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseView {
    /// `name@version`.
    pub id: String,
    pub name: String,
    pub version: String,
    /// Free-form kind used by find-by-type.
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub idempotent: bool,
    pub capabilities: Vec<String>,
    /// Dependency name → semver range.
    pub dependencies: BTreeMap<String, String>,
    #[schema(value_type = schemas::Limits)]
    pub limits: Limits,
    /// The manifest's `[config]`, as JSON.
    pub config: Value,
    /// Declared value of one successful call, in USD.
    pub value_per_call: f64,
    /// Hex blake3 hash of the artifact.
    pub artifact: String,
    pub artifact_len: u64,
    /// The node that signed the artifact.
    pub signer: String,
    /// The principal that published it.
    pub owner: String,
    pub created_unix_ms: u64,
}

impl From<&Release> for ReleaseView {
    fn from(r: &Release) -> Self {
        let m = &r.manifest;
        Self {
            id: m.id(),
            name: m.name.clone(),
            version: m.version.to_string(),
            kind: m.kind.clone(),
            description: m.description.clone(),
            idempotent: m.idempotent,
            capabilities: m.capabilities.clone(),
            dependencies: m
                .dependencies
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            limits: m.limits,
            config: m.config.clone(),
            value_per_call: m.value_per_call,
            artifact: hex::encode(r.artifact),
            artifact_len: r.artifact_len,
            signer: r.signer.clone(),
            owner: r.owner.clone(),
            created_unix_ms: r.created_unix_ms,
        }
    }
}

/// `POST /v1/functions` answer: the published release and its deployment's replicas.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deployed {
    #[serde(flatten)]
    pub release: ReleaseView,
    pub replicas: u32,
    /// The static analysis' warnings (`FILE:LINE:COLUMN: warning[RULE]: …`) and, with
    /// `perf: warn`, what the performance test found over budget; errors refuse the deploy
    /// instead.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The performance test's figures (null without examples or with `perf: off`).
    #[serde(default)]
    pub perf: Option<PerfView>,
}

/// One function in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionSummary {
    pub name: String,
    /// The highest published version.
    pub latest: String,
    /// Every published version, highest first.
    pub versions: Vec<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    /// Desired instances (0 when not deployed).
    pub replicas: u32,
    pub enabled: bool,
}

/// `GET /v1/functions/{target}`: the resolved release with its versions, deployment and examples.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionInfo {
    #[serde(flatten)]
    pub release: ReleaseView,
    /// Every published version, highest first.
    pub versions: Vec<String>,
    /// Desired instances (0 when not deployed).
    pub replicas: u32,
    pub enabled: bool,
    /// What the mesh runs: the version a rollback pinned, else the highest.
    pub served: Option<String>,
    /// The version a rollback pinned, until the next deploy.
    pub pinned: Option<String>,
    /// The package's sample inputs by name (empty when the artifact is unavailable).
    pub examples: BTreeMap<String, Value>,
    /// `schema/input.json`, or null when the package has none or its artifact is unavailable.
    #[serde(default)]
    pub input_schema: Option<Value>,
    /// `schema/output.json`, or null when the package has none or its artifact is unavailable.
    #[serde(default)]
    pub output_schema: Option<Value>,
    /// Why the artifact could not be read here (then examples and schemas are missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_error: Option<String>,
    /// Set when this version is yanked: dependency resolution skips it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yanked: Option<YankView>,
    /// What the validator's performance test measured for this version, if it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perf: Option<PerfView>,
    /// Yanked versions of this function, by version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub yanked_versions: BTreeMap<String, YankView>,
}

/// The body of `POST /v1/functions/{name}/versions/{version}/yank`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct YankRequest {
    /// Why: shown by `klf fn info` and `klf fn audit`, and in the refusal of a deploy that needs
    /// only yanked versions (1 to 500 characters).
    pub reason: String,
}

/// A yanked release.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct YankView {
    /// `name@version`.
    pub id: String,
    pub reason: String,
    /// The principal that yanked it.
    pub by: String,
    pub yanked_unix_ms: u64,
}

impl From<&klf_actors::registry::Yank> for YankView {
    fn from(y: &klf_actors::registry::Yank) -> Self {
        Self {
            id: format!("{}@{}", y.name, y.version),
            reason: y.reason.clone(),
            by: y.by.clone(),
            yanked_unix_ms: y.yanked_unix_ms,
        }
    }
}

/// `GET /v1/audit/dependencies`: one deployed function whose calls to a dependency reach a
/// yanked release.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// The deployed function, `name@version` (the version it serves).
    pub function: String,
    pub dependency: String,
    /// The range its manifest declares.
    pub range: String,
    /// The yanked release its calls reach, `name@version`.
    pub resolves_to: String,
    /// Why it was yanked.
    pub reason: String,
    /// What a new deploy would resolve to instead, if any version is left.
    pub replacement: Option<String>,
}

impl From<klf_actors::registry::AuditFinding> for AuditEntry {
    fn from(f: klf_actors::registry::AuditFinding) -> Self {
        Self {
            function: f.function,
            dependency: f.dependency,
            range: f.range,
            resolves_to: f.resolves_to,
            reason: f.reason,
            replacement: f.replacement,
        }
    }
}

/// `POST /v1/functions/validate` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Validation {
    /// Always true: an invalid package is answered with an error instead.
    pub valid: bool,
    /// `name@version` of the package.
    pub id: String,
    /// `name@version` of every release it resolves to, dependencies first.
    pub dependencies: Vec<String>,
    /// The static analysis' warnings (`FILE:LINE:COLUMN: warning[RULE]: …`) and, with
    /// `perf: warn`, what the performance test found over budget; errors refuse the package
    /// instead.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The performance test's figures (null without examples or with `perf: off`).
    #[serde(default)]
    pub perf: Option<PerfView>,
}

/// `DELETE /v1/functions/{target}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    /// `name@version` of every version unregistered.
    pub removed: Vec<String>,
}

/// The body of `POST /v1/functions/{name}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RollbackRequest {
    /// A published version, such as `1.0.0`.
    pub version: String,
}

/// A function's deployment after a rollback.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub name: String,
    /// The pinned version (null: the highest is served).
    pub version: Option<String>,
    pub replicas: u32,
    pub enabled: bool,
}

/// One case of a function's own tests, as `BaseFunction.test()` reports it (an item of
/// [`klf_actors::router::test_run::TestRun::results`]).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TestCaseResult {
    pub name: String,
    pub passed: bool,
    /// The expected output, when the case compares outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Value>,
    /// What the function returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<Value>,
    /// The error the function threw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// One ingredient in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IngredientSummary {
    pub name: String,
    /// `model`, `data-flow`, `api`, `security`, `testing` or `recipe`.
    pub kind: String,
    pub description: String,
    pub file: String,
    /// `shipped` or `user`.
    pub source: String,
    /// The file of the ingredient this one overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<String>,
}

/// A file that did not load, named with the field at fault when there is one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IngredientLoadError {
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
    /// The whole error as one line.
    pub text: String,
}

/// `GET /v1/ingredients` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IngredientListing {
    pub ingredients: Vec<IngredientSummary>,
    /// Files that did not load (the others still did).
    pub errors: Vec<IngredientLoadError>,
    /// The user folders, in load order.
    pub folders: Vec<String>,
}

/// `GET /v1/ingredients/{name}`: an ingredient in full.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IngredientDetail {
    #[serde(flatten)]
    pub summary: IngredientSummary,
    /// The kind-specific content, as the ingredient's TOML file holds it (see
    /// docs/ingredients.md).
    pub content: Value,
}

/// The body of `POST /v1/ingredients/{name}/render` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RenderRecipeRequest {
    /// The package's name (default: the recipe's).
    #[serde(default)]
    pub name: Option<String>,
    /// Recipe parameter values by name.
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
}

/// The body of `POST /v1/chef`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChefRequest {
    /// What the function should do, in plain language (1 to 4000 characters).
    pub request: String,
    /// `offline` (the default), `openai` or `replay`, as this node offers them.
    #[serde(default)]
    pub provider: Option<String>,
    /// Deploy the function once it passes its tests.
    #[serde(default)]
    pub deploy: bool,
    /// Replicas when deploying (1 to 64; default 1).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Agents to run on other nodes: role (e.g. `code-validator`) → node name.
    #[serde(default)]
    pub placement: BTreeMap<String, String>,
    /// Have the model write the function even when a recipe fits (needs a model provider).
    #[serde(default)]
    pub fresh: bool,
    /// Generate random keys for secrets the function needs that no node holds.
    #[serde(default)]
    pub create_secrets: bool,
    /// Wall-clock limit of the run in milliseconds (default 300000, at most 3600000).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Model tokens (in + out) the run may spend (default: unbounded).
    #[serde(default)]
    pub token_budget: Option<u64>,
    /// `max_tokens` of one model exchange by stage: `interpret`, `write-tests`, `generate`.
    #[serde(default)]
    pub max_tokens: BTreeMap<String, u32>,
    /// Build the next minor version of this deployed function from its current package.
    #[serde(default)]
    pub update: Option<String>,
    /// What the validator's performance test does over budget (default `fail`).
    #[serde(default)]
    pub perf: Option<PerfModeBody>,
}

/// `PUT /v1/secrets/{name}`: the secret's value (text, as `ctx.secret` returns it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretValue {
    pub value: String,
}

/// Where a secret was stored (never its value).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretSet {
    pub name: String,
    /// The nodes that hold it now.
    pub nodes: Vec<String>,
}

/// One line of the NDJSON stream `POST /v1/chef` answers with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChefStreamLine {
    /// A stage started or ended.
    Stage {
        #[schema(value_type = schemas::StageEvent)]
        event: StageEvent,
    },
    /// The last line of a run that finished (whatever its outcome).
    Run {
        #[schema(value_type = schemas::ChefRun)]
        run: Box<ChefRun>,
    },
    /// The last line of a run that could not finish.
    Error { message: String },
}

/// `GET /v1/functions` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FunctionListQuery {
    /// Only functions of this type (find by type).
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// `POST /v1/functions/{target}/invoke` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvokeQuery {
    /// How long the caller waits, in milliseconds (default 10000, clamped to 1..300000).
    pub timeout_ms: Option<u64>,
}

/// `GET /v1/stats` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Only this function's versions.
    pub function: Option<String>,
    /// This node's stats alone, without asking the peers.
    #[serde(default)]
    pub local: bool,
}

/// `GET /v1/ingredients` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IngredientListQuery {
    /// Only this kind: `model`, `data-flow`, `api`, `security`, `testing`, `recipe`.
    pub kind: Option<String>,
}

/// `GET /v1/traces` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TracesQuery {
    /// Only traces with a span about this function.
    pub function: Option<String>,
    /// Only traces with a failed span.
    #[serde(default)]
    pub errors: bool,
    /// At most this many traces, newest first (default 20, at most 1000).
    pub limit: Option<usize>,
}

/// `GET /v1/traces`: recent traces gathered from every alive member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TraceList {
    #[schema(value_type = Vec<schemas::TraceSummary>)]
    pub traces: Vec<klf_actors::router::trace_ring::TraceSummary>,
    /// Members that did not answer in time (their spans are missing).
    pub missing: Vec<String>,
}

/// `GET /v1/traces/{trace_id}`: one trace's spans from every alive member, as a waterfall.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TraceView {
    pub trace_id: String,
    /// Depth-first, children under their parents in start order.
    #[schema(value_type = Vec<schemas::WaterfallRow>)]
    pub rows: Vec<klf_actors::router::trace_ring::WaterfallRow>,
    /// Members that did not answer in time (their spans are missing).
    pub missing: Vec<String>,
}
