//! What the Chef's agents say to each other: the `AIAgent` vocabulary of the
//! product model (docs/product.md) as typed messages.
//!
//! Every message is plain serde data so that it can travel inside a KLF `Agent` frame (JSON body)
//! when the agents of one run live on different nodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use klf_node_core::validator::PerfMode;

/// The product model's agent roles (docs/product.md), plus the Monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentType {
    RequirementInterpreter,
    CodeGenerator,
    CodeValidator,
    TestGenerator,
    DeploymentManager,
    Monitor,
}

impl AgentType {
    pub const ALL: [AgentType; 6] = [
        Self::RequirementInterpreter,
        Self::CodeGenerator,
        Self::CodeValidator,
        Self::TestGenerator,
        Self::DeploymentManager,
        Self::Monitor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequirementInterpreter => "requirement-interpreter",
            Self::CodeGenerator => "code-generator",
            Self::CodeValidator => "code-validator",
            Self::TestGenerator => "test-generator",
            Self::DeploymentManager => "deployment-manager",
            Self::Monitor => "monitor",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// One step of the technical requirement, mapped to the base class that does it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub description: String,
    pub base_class: String,
}

/// A recipe that was considered, with its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub recipe: String,
    pub title: String,
    pub score: f64,
    /// The request's words found in the recipe.
    pub matched: Vec<String>,
}

/// Limits the generated function runs under.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequirementLimits {
    pub memory_mb: u64,
    pub timeout_ms: u64,
    /// The p99 latency one call may take in the performance test (none: the timeout bounds it).
    #[serde(default)]
    pub latency_budget_ms: Option<u64>,
}

/// One example a requirement states: an input and what it must give (an output or an error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequirementExample {
    pub name: String,
    pub input: Value,
    /// Exactly this output.
    #[serde(default)]
    pub output: Option<Value>,
    /// Or an error whose message contains this text.
    #[serde(default)]
    pub error: Option<String>,
}

/// What the Requirement Interpreter makes of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TechnicalRequirement {
    pub request: String,
    pub goal: String,
    /// The recipe the function is built from; empty when a model wrote the requirement itself
    /// (see [`TechnicalRequirement::is_freeform`]).
    pub recipe: String,
    /// The function's name in the mesh.
    pub function: String,
    /// The function's `type` in the catalog (free-form requirements; a recipe declares its own).
    #[serde(default)]
    pub kind: String,
    /// The version to publish (empty: the recipe's, or 1.0.0 for a new model-written function).
    #[serde(default)]
    pub version: String,
    /// What the function does, in a sentence or two (free-form requirements).
    #[serde(default)]
    pub description: String,
    /// Recipe parameters: those found in the request, the rest at their defaults.
    pub params: BTreeMap<String, Value>,
    /// Which parameters came from the request (the rest are defaults).
    pub extracted: Vec<String>,
    pub input_schema: Value,
    pub output_schema: Value,
    pub steps: Vec<Step>,
    pub limits: RequirementLimits,
    /// How sure the interpreter is (0 to 1), and what else it considered.
    pub confidence: f64,
    pub alternatives: Vec<Candidate>,
    /// Examples with their expected outputs or errors (free-form requirements; a recipe's are in
    /// the recipe). The pipeline holds them: the code generator never sees the expectations.
    #[serde(default)]
    pub examples: Vec<RequirementExample>,
    /// Host capabilities the function needs (`call`, `kv`, `log`, `crypto`, `secret`, `model`,
    /// `schedule`).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Deployed functions it may call: name → semver range.
    #[serde(default)]
    pub dependencies: BTreeMap<String, String>,
}

impl TechnicalRequirement {
    /// Whether a model wrote this requirement (and will write the code) rather than a recipe.
    pub fn is_freeform(&self) -> bool {
        self.recipe.is_empty()
    }

    /// The version a model-written package gets.
    pub fn version_or_first(&self) -> String {
        if self.version.is_empty() {
            "1.0.0".into()
        } else {
            self.version.clone()
        }
    }
}

/// The interpreter's answer when no recipe fits: never a wrong function dressed as a right one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoMatch {
    pub request: String,
    pub reason: String,
    pub closest: Vec<Candidate>,
}

/// A package the Code Generator produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedCode {
    pub function: String,
    pub version: String,
    pub recipe: String,
    /// Path inside the package → content.
    pub files: BTreeMap<String, String>,
    /// Which repair round produced it (0 = first attempt).
    pub round: u32,
    /// Secrets (name → content) the function's tests need on the node that runs them.
    #[serde(default)]
    pub fixtures: BTreeMap<String, String>,
}

/// What every model exchange of one run may use. It travels with each agent message, so an agent
/// on another node keeps the run's bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// `max_tokens` of one exchange, by stage: `interpret`, `write-tests`, `generate`.
    pub max_tokens: BTreeMap<String, u32>,
    /// When the whole run must end, in milliseconds since the Unix epoch.
    pub deadline_unix_ms: u64,
    /// Have the model write the function even when a recipe fits (`--fresh`).
    #[serde(default)]
    pub fresh: bool,
}

impl Bounds {
    /// Default `max_tokens` per stage: a requirement with its schemas and examples, a set of
    /// tests, a module of a few hundred lines.
    pub const DEFAULT_MAX_TOKENS: [(&'static str, u32); 3] = [
        ("interpret", 2048),
        ("write-tests", 2048),
        ("generate", 4096),
    ];

    /// `max_tokens` for `stage`.
    pub fn max_tokens(&self, stage: &str) -> u32 {
        self.max_tokens.get(stage).copied().unwrap_or_else(|| {
            Self::DEFAULT_MAX_TOKENS
                .iter()
                .find(|(s, _)| *s == stage)
                .map_or(2048, |(_, n)| *n)
        })
    }

    /// Time left before the run's deadline.
    pub fn remaining(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.deadline_unix_ms.saturating_sub(klf_proto::unix_ms()))
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_tokens: BTreeMap::new(),
            deadline_unix_ms: klf_proto::unix_ms().saturating_add(5 * 60 * 1000),
            fresh: false,
        }
    }
}

/// What the Code Generator is told about the round it writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 0 for the first attempt, then the repair round.
    pub round: u32,
    /// What went wrong with the previous round's code: the validator's problems and the names
    /// and messages of failed tests, never their expected outputs.
    pub feedback: Vec<String>,
    /// The previous round's code, which a repair starts from.
    pub previous: Option<GeneratedCode>,
}

/// One problem the validator found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// `static`, `package`, `compile`, `dependencies`, `sandbox`.
    pub check: String,
    pub message: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
}

/// The Code Validator's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationResult {
    pub ok: bool,
    pub problems: Vec<Problem>,
    /// Checks run, in order, each with whether it passed.
    pub checks: Vec<(String, bool)>,
    /// Warnings that do not refuse the code.
    pub warnings: Vec<Problem>,
}

/// One acceptance test: what the Test Generator wrote and the generator may not change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    pub name: String,
    /// `example`, `edge-case`, `schema`.
    pub origin: String,
    pub input: Value,
    /// Exactly this output.
    pub expect: Option<Value>,
    /// Or an error containing this text.
    pub error: Option<String>,
    /// Or any output the output schema accepts.
    pub output_schema: Option<Value>,
}

/// The result of one test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    /// What went wrong, for a person: may show the expected output.
    pub detail: Option<String>,
    /// What went wrong, for the code generator: never shows the expected output (the tests are
    /// held by the pipeline, so code cannot be fitted to them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
}

/// The test run's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub passed: u32,
    pub failed: u32,
    pub cases: Vec<CaseResult>,
}

impl TestResult {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.passed > 0
    }
}

/// What agents send each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AgentMessage {
    Interpret {
        request: String,
    },
    Generate {
        requirement: Box<TechnicalRequirement>,
        attempt: Box<Attempt>,
    },
    Validate {
        code: Box<GeneratedCode>,
    },
    WriteTests {
        requirement: Box<TechnicalRequirement>,
    },
    RunTests {
        code: Box<GeneratedCode>,
        tests: Vec<TestCase>,
    },
    Deploy {
        code: Box<GeneratedCode>,
        replicas: u32,
        /// An input known to succeed (from the acceptance tests), to check the deployment answers.
        probe: Option<Value>,
        /// Generate a random key for each secret the function needs that no node holds.
        #[serde(default)]
        create_secrets: bool,
        /// Deploy it as a canary of the version served now (`--update`).
        #[serde(default)]
        canary: bool,
        /// What the validator's performance test does over budget.
        #[serde(default)]
        perf: PerfMode,
        /// The requirement's latency budget, which the performance test holds the p99 to.
        #[serde(default)]
        latency_budget_ms: Option<u64>,
    },
    Watch {
        function: String,
        version: String,
    },
}

impl AgentMessage {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Interpret { .. } => "interpret",
            Self::Generate { .. } => "generate",
            Self::Validate { .. } => "validate",
            Self::WriteTests { .. } => "write-tests",
            Self::RunTests { .. } => "run-tests",
            Self::Deploy { .. } => "deploy",
            Self::Watch { .. } => "watch",
        }
    }
}

/// What agents answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AgentResponse {
    Interpreted {
        requirement: Box<TechnicalRequirement>,
        /// Model tokens spent (0 offline).
        tokens_in: u64,
        tokens_out: u64,
    },
    NoMatch(NoMatch),
    Generated {
        code: Box<GeneratedCode>,
        tokens_in: u64,
        tokens_out: u64,
    },
    Validated(ValidationResult),
    Tests {
        tests: Vec<TestCase>,
        /// Model tokens spent writing them (0 when none were written by a model).
        #[serde(default)]
        tokens_in: u64,
        #[serde(default)]
        tokens_out: u64,
    },
    Tested(TestResult),
    Deployed {
        function: String,
        version: String,
        replicas: u32,
        /// Deployed as a canary beside the version served before.
        #[serde(default)]
        canary: bool,
    },
    Watching,
    /// The agent could not do what was asked.
    Failed {
        agent: AgentType,
        reason: String,
        /// Model tokens spent before it failed (a model paid for answers that were unusable).
        #[serde(default)]
        tokens_in: u64,
        #[serde(default)]
        tokens_out: u64,
    },
}

impl AgentResponse {
    /// A failure of `agent` that cost no model tokens.
    pub fn failed(agent: AgentType, reason: impl Into<String>) -> Self {
        Self::Failed {
            agent,
            reason: reason.into(),
            tokens_in: 0,
            tokens_out: 0,
        }
    }
}
