//! Who does the thinking for the Requirement Interpreter and the Code Generator.
//!
//! - `offline` (the default): no network. Recipes are ranked against the request with BM25,
//!   parameters are read out of the request, and the chosen recipe is rendered. When no recipe fits,
//!   it says so and lists the closest.
//! - `openai`: any OpenAI-compatible chat-completions endpoint (see `klf_model`), with answers
//!   asked for as JSON and validated here before anything is believed.
//! - `replay`: the `openai` provider over recorded exchanges, for tests.

pub mod freeform;
pub mod model;
pub mod offline;
pub mod replay;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::agents::RunContext;
use super::messages::{
    Attempt, Candidate, GeneratedCode, NoMatch, RequirementLimits, Step, TechnicalRequirement,
    TestCase,
};
use crate::ingredients::kinds::Recipe;
use crate::ingredients::{Library, RenderRequest, render};
use futures_util::future::BoxFuture;
use klf_model::{ModelConfig, OpenAiCompatible, Usage};

/// Why a provider could not do its part.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The model (or the recorded exchange) could not be reached or refused the request.
    #[error("model: {0}")]
    Model(String),
    /// The model's answer was not what was asked for, even after repairs.
    #[error("the model's answer is unusable: {0}")]
    Unusable(String),
    /// Rendering the recipe failed.
    #[error("rendering {recipe}: {message}")]
    Render { recipe: String, message: String },
    /// The provider cannot be set up as asked; the message says what to do.
    #[error("provider {provider}: {message}")]
    Setup { provider: String, message: String },
    /// One of the above, after the model had already answered: what it cost is still spent.
    #[error("{error}")]
    Spent {
        error: Box<ProviderError>,
        usage: Usage,
    },
}

impl ProviderError {
    /// Tokens the model was paid before the failure.
    pub fn usage(&self) -> Usage {
        match self {
            Self::Spent { usage, .. } => *usage,
            _ => Usage::default(),
        }
    }

    /// What went wrong, without the tokens it cost.
    pub fn cause(&self) -> &ProviderError {
        match self {
            Self::Spent { error, .. } => error.cause(),
            error => error,
        }
    }

    /// This error with `usage` spent (kept as it is when nothing was).
    pub fn spent(self, usage: Usage) -> Self {
        if usage == Usage::default() {
            return self;
        }
        match self {
            Self::Spent {
                error,
                usage: before,
            } => Self::Spent {
                error,
                usage: Usage {
                    input_tokens: before.input_tokens + usage.input_tokens,
                    output_tokens: before.output_tokens + usage.output_tokens,
                },
            },
            error => Self::Spent {
                error: Box::new(error),
                usage,
            },
        }
    }

    /// The agent's answer for this failure, with the tokens it cost.
    pub fn into_response(
        self,
        agent: crate::messages::AgentType,
    ) -> crate::messages::AgentResponse {
        let usage = self.usage();
        crate::messages::AgentResponse::Failed {
            agent,
            reason: self.to_string(),
            tokens_in: usage.input_tokens,
            tokens_out: usage.output_tokens,
        }
    }
}

/// What the interpreter concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Interpretation {
    Requirement(Box<TechnicalRequirement>),
    NoMatch(NoMatch),
}

/// A provider's answer with the model tokens it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Costed<T> {
    pub value: T,
    pub usage: Usage,
    /// The model that answered (empty offline).
    pub model: String,
}

impl<T> Costed<T> {
    pub fn free(value: T) -> Self {
        Self {
            value,
            usage: Usage::default(),
            model: String::new(),
        }
    }
}

/// A provider of interpretation and generation.
pub trait Provider: Send + Sync + 'static {
    /// `offline`, `openai` or `replay`.
    fn name(&self) -> &'static str;

    /// Request → technical requirement (or an honest "no recipe fits"). `deployed` is what the
    /// mesh serves, which a new function may depend on.
    fn interpret(
        &self,
        request: String,
        library: Arc<Library>,
        deployed: Vec<Deployed>,
        cx: RunContext,
    ) -> BoxFuture<'static, Result<Costed<Interpretation>, ProviderError>>;

    /// Acceptance tests written from a model-written requirement alone, before any code exists
    /// (the recipe path's tests come from the recipe). Providers without a model write none.
    fn write_tests(
        &self,
        requirement: TechnicalRequirement,
        cx: RunContext,
    ) -> BoxFuture<'static, Result<Costed<Vec<TestCase>>, ProviderError>> {
        let _ = (requirement, cx);
        Box::pin(std::future::ready(Ok(Costed::free(Vec::new()))))
    }

    /// Requirement → package; `attempt` says which round, and for a repair what was wrong with
    /// the previous round's code.
    fn generate(
        &self,
        requirement: TechnicalRequirement,
        attempt: Attempt,
        library: Arc<Library>,
        cx: RunContext,
    ) -> BoxFuture<'static, Result<Costed<GeneratedCode>, ProviderError>>;
}

/// A function the mesh serves, as the interpreter is told of it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Deployed {
    pub name: String,
    pub version: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
}

/// What a base class does, as a step of a technical requirement.
pub fn step_for(class: &str) -> &'static str {
    match class {
        "BaseAuthenticator" => "verify the caller's credentials",
        "BaseAuthorizer" => "decide whether the caller may do it",
        "BaseEncryptor" => "encrypt or decrypt fields with a node secret",
        "BaseValidator" => "check values against a JSON schema",
        "BaseMessageProcessor" => "route messages by type, dropping duplicates",
        "BaseProtocolHandler" => "route HTTP-shaped requests to handlers",
        "BaseSerializer" => "convert between CSV, JSON and base64",
        "BaseConnector" => "call another function with retries and a rate limit",
        "BaseDataStore" => "keep records in the function's key-value store",
        "BaseDataProcessor" => "filter, window and aggregate the records",
        "BaseDataValidator" => "separate valid records from invalid ones, with reasons",
        "BaseDataTransformer" => "reshape and cast fields",
        "BaseModelProcessor" => "score with a model",
        "BaseDecisionEngine" => "apply rules to reach a decision",
        "BaseLearningEngine" => "learn online statistics and a regression",
        "BasePredictor" => "forecast and flag anomalies in the series",
        "BaseWorkflowEngine" => "run the steps as a dependency graph",
        "BaseTaskScheduler" => "schedule deferred and periodic calls",
        "BaseProcessManager" => "move each process through its states",
        "BaseOrchestrator" => "fan out to functions and gather the results",
        _ => "a step of the function",
    }
}

/// The technical requirement for `recipe` with `params` (a subset; defaults fill the rest).
pub fn requirement_for(
    request: &str,
    recipe: &Recipe,
    function: Option<String>,
    params: BTreeMap<String, Value>,
    extracted: Vec<String>,
    confidence: f64,
    alternatives: Vec<Candidate>,
) -> TechnicalRequirement {
    let mut all = BTreeMap::new();
    for p in &recipe.parameters {
        if let Some(value) = params.get(&p.name).or(p.default.as_ref()) {
            all.insert(p.name.clone(), value.clone());
        }
    }
    TechnicalRequirement {
        request: request.to_string(),
        goal: recipe.title.clone(),
        recipe: recipe.name.clone(),
        function: function.unwrap_or_else(|| recipe.name.clone()),
        kind: String::new(),
        description: recipe.description.clone(),
        version: String::new(),
        params: all,
        extracted,
        input_schema: recipe.input_schema.clone(),
        output_schema: recipe.output_schema.clone(),
        steps: recipe
            .base_classes
            .iter()
            .map(|class| Step {
                description: step_for(class).to_string(),
                base_class: class.clone(),
            })
            .collect(),
        limits: RequirementLimits {
            memory_mb: 32,
            timeout_ms: 1000,
            latency_budget_ms: None,
        },
        confidence,
        alternatives,
        examples: Vec::new(),
        capabilities: Vec::new(),
        dependencies: BTreeMap::new(),
    }
}

/// Renders the requirement's recipe into a package (what the offline generator does, and the
/// scaffold a model-written module goes into).
pub fn render_requirement(
    requirement: &TechnicalRequirement,
    round: u32,
    library: &Library,
) -> Result<GeneratedCode, ProviderError> {
    let rendered = render::render(
        library,
        &RenderRequest {
            recipe: requirement.recipe.clone(),
            name: Some(requirement.function.clone()),
            set: requirement.params.clone(),
        },
    )
    .map_err(|e| ProviderError::Render {
        recipe: requirement.recipe.clone(),
        message: e.to_string(),
    })?;
    let mut code = GeneratedCode {
        function: rendered.name,
        version: rendered.version,
        recipe: rendered.recipe,
        files: rendered.files,
        round,
        fixtures: rendered.fixtures.secrets,
    };
    // A version the pipeline chose (the next one of a function that exists) replaces the
    // recipe's in the manifest.
    if !requirement.version.is_empty() && requirement.version != code.version {
        if let Some(manifest) = code.files.get_mut("klf.toml") {
            *manifest = with_version(manifest, &requirement.version);
        }
        code.version.clone_from(&requirement.version);
    }
    Ok(code)
}

/// `manifest` (klf.toml text) with its top-level `version = "…"` line set to `version`; the rest
/// (comments, layout) is left as written.
fn with_version(manifest: &str, version: &str) -> String {
    let mut replaced = false;
    let mut lines: Vec<String> = manifest
        .lines()
        .map(|line| {
            if !replaced && line.trim_start().starts_with("version") && line.contains('=') {
                replaced = true;
                format!("version = \"{version}\"")
            } else {
                line.to_string()
            }
        })
        .collect();
    if !replaced {
        lines.insert(0, format!("version = \"{version}\""));
    }
    let mut text = lines.join("\n");
    if manifest.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The providers `provider_from` knows.
pub const PROVIDERS: [&str; 3] = ["offline", "openai", "replay"];

fn setup(provider: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::Setup {
        provider: provider.to_string(),
        message: message.into(),
    }
}

/// The `openai` model from the environment (see [`ModelConfig::from_env`]).
fn openai_model() -> Result<OpenAiCompatible, ProviderError> {
    let config = ModelConfig::from_env().ok_or_else(|| {
        setup(
            "openai",
            "no endpoint is configured: set KLF_MODEL_BASE_URL (or OPENAI_BASE_URL) to an \
             OpenAI-compatible endpoint such as https://api.openai.com/v1, KLF_MODEL (or \
             OPENAI_MODEL, default gpt-4o-mini) and KLF_MODEL_API_KEY (or OPENAI_API_KEY); or use \
             --provider offline, which needs no network",
        )
    })?;
    OpenAiCompatible::new(config).map_err(|e| {
        setup(
            "openai",
            format!("{e}; check KLF_MODEL_BASE_URL (or OPENAI_BASE_URL)"),
        )
    })
}

/// The provider called `name`: `offline` (no network), `openai` (the endpoint the environment
/// names) or `replay` (the exchanges recorded in `replay_file`).
pub fn provider_from(
    name: &str,
    replay_file: Option<&Path>,
) -> Result<Arc<dyn Provider>, ProviderError> {
    match name {
        "offline" | "" => Ok(Arc::new(offline::Offline)),
        "openai" => Ok(Arc::new(model::ModelBacked::new(
            Arc::new(openai_model()?),
            "openai",
        ))),
        "replay" => {
            let file = replay_file.ok_or_else(|| {
                setup(
                    "replay",
                    "needs the recording to replay: set KLF_CHEF_REPLAY=FILE on the node (a file written \
                     with KLF_CHEF_RECORD=FILE and --provider openai)",
                )
            })?;
            let replay = replay::Replay::load(file).map_err(|e| setup("replay", e.to_string()))?;
            Ok(Arc::new(model::ModelBacked::new(
                Arc::new(replay),
                "replay",
            )))
        }
        other => Err(setup(
            other,
            format!("unknown provider; use one of {}", PROVIDERS.join(", ")),
        )),
    }
}

/// The `openai` provider with every exchange it makes recorded.
#[derive(Clone)]
pub struct RecordedProvider {
    pub provider: Arc<dyn Provider>,
    /// Save it with [`replay::Recording::save`] when the run is over.
    pub recording: Arc<replay::Recording<OpenAiCompatible>>,
}

/// `KLF_CHEF_RECORD=FILE` on a node: the `openai` provider, recording; the file it
/// saves is what `--provider replay` answers from on a node started with `KLF_CHEF_REPLAY=FILE`.
pub fn recorded_openai() -> Result<RecordedProvider, ProviderError> {
    let recording = Arc::new(replay::Recording::new(openai_model()?));
    let provider = model::ModelBacked::new(recording.clone(), "openai");
    Ok(RecordedProvider {
        provider: Arc::new(provider),
        recording,
    })
}

/// The providers a node's Chef offers, from its environment: `offline` always; `openai` when
/// `KLF_MODEL_BASE_URL` (or `OPENAI_BASE_URL`) names an endpoint; `replay` when `KLF_CHEF_REPLAY`
/// names a recording. A configured provider that cannot be set up is reported, not skipped.
pub fn node_providers() -> (Vec<Arc<dyn Provider>>, Vec<String>) {
    let (providers, _, problems) = node_providers_recorded();
    (providers, problems)
}

/// [`node_providers`], with the `openai` provider recorded when `KLF_CHEF_RECORD` names a file:
/// the recording and its file come back so the caller can save it after each run.
#[allow(clippy::type_complexity)]
pub fn node_providers_recorded() -> (
    Vec<Arc<dyn Provider>>,
    Option<(Arc<replay::Recording<OpenAiCompatible>>, std::path::PathBuf)>,
    Vec<String>,
) {
    let mut providers: Vec<Arc<dyn Provider>> = vec![Arc::new(offline::Offline)];
    let mut problems = Vec::new();
    let mut recording = None;
    if ModelConfig::from_env().is_some() {
        let record_to = std::env::var_os("KLF_CHEF_RECORD").filter(|f| !f.is_empty());
        match record_to {
            Some(file) => match recorded_openai() {
                Ok(recorded) => {
                    providers.push(recorded.provider);
                    recording = Some((recorded.recording, std::path::PathBuf::from(file)));
                }
                Err(e) => problems.push(e.to_string()),
            },
            None => match provider_from("openai", None) {
                Ok(provider) => providers.push(provider),
                Err(e) => problems.push(e.to_string()),
            },
        }
    }
    if let Some(file) = std::env::var_os("KLF_CHEF_REPLAY").filter(|f| !f.is_empty()) {
        match provider_from("replay", Some(Path::new(&file))) {
            Ok(provider) => providers.push(provider),
            Err(e) => problems.push(e.to_string()),
        }
    }
    (providers, recording, problems)
}
