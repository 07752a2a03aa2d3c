//! The Chef's pipeline: request → requirement → acceptance tests → package → validation → test
//! run → deployment → monitoring, with bounded repair rounds and an explicit failed state.
//!
//! What the pipeline decides lives in [`machine`], a pure state machine with its own tests; this
//! module is the thin driver around it: it asks the agents (here, or on the node a placement
//! names, over KLF), writes each round's package to the data dir, keeps the run's deadline, reports
//! progress, and records the finished run in the ledger.

pub mod machine;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{Instrument, info, info_span, warn};

use super::agents::{AgentContext, AgentMsg, Agents, RunContext};
use super::messages::{
    AgentMessage, AgentResponse, AgentType, Bounds, GeneratedCode, NoMatch, TechnicalRequirement,
    TestResult, ValidationResult,
};
use super::providers::Provider;
use crate::kitchen::Kitchen;
use futures_util::future::BoxFuture;
use klf_mesh::MemberState;
use klf_node_core::AgentEndpoint;
use klf_node_core::validator::PerfMode;
use klf_router::trace::TARGET as TRACE_TARGET;
use klf_security::PeerIdentity;
pub use machine::{Cooking, MAX_REPAIRS, Next, Plan, Stage};

/// Least time an agent is given to answer, even past the run's deadline (to say why it could not).
const MIN_AGENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The `kind` of KLF `Agent` frames that carry Chef messages.
pub const FRAME_KIND: &str = "chef";

/// Why the Chef could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ChefError {
    #[error("cannot start the chef's agents: {0}")]
    Agents(String),
    #[error("unknown provider {name:?} (available: {available})")]
    UnknownProvider { name: String, available: String },
    #[error(
        "--fresh has a model write the function, but provider {provider:?} has no model; use \
         --provider openai (KLF_MODEL_BASE_URL on the node) or drop --fresh"
    )]
    FreshNeedsModel { provider: String },
}

/// How to run one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChefOptions {
    /// `offline` unless another provider is named.
    pub provider: String,
    /// Deploy the function once it passes its tests.
    pub deploy: bool,
    pub replicas: u32,
    /// Agents to run on other nodes: role → node name (the rest run here).
    #[serde(default)]
    pub placement: BTreeMap<AgentType, String>,
    /// Wall-clock limit of the whole run, in milliseconds (default [`DEFAULT_DEADLINE`]): a run
    /// that reaches it ends `failed`, saying in which stage.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Model tokens (in + out) the run may spend; unbounded when `None`.
    #[serde(default)]
    pub token_budget: Option<u64>,
    /// `max_tokens` of one model exchange by stage (`interpret`, `write-tests`, `generate`);
    /// stages not named keep [`Bounds::DEFAULT_MAX_TOKENS`].
    #[serde(default)]
    pub max_tokens: BTreeMap<String, u32>,
    /// Have the model write the function even when a recipe fits (needs a model provider).
    #[serde(default)]
    pub fresh: bool,
    /// Generate a random key for each secret the function needs that no node holds, and store it
    /// on every node (instead of failing, naming the secret and the command to create it).
    #[serde(default)]
    pub create_secrets: bool,
    /// Build the next version (minor) of this deployed function from its current package, and
    /// deploy it as a canary the Monitor promotes or rolls back.
    #[serde(default)]
    pub update: Option<String>,
    /// What the validator's performance test does when the function is over its budget
    /// (`--perf warn` deploys it anyway, with warnings).
    #[serde(default)]
    pub perf: PerfMode,
}

/// How long a run may take unless `--deadline` says otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5 * 60);

impl Default for ChefOptions {
    fn default() -> Self {
        Self {
            provider: "offline".into(),
            deploy: false,
            replicas: 1,
            placement: BTreeMap::new(),
            deadline_ms: None,
            token_budget: None,
            max_tokens: BTreeMap::new(),
            fresh: false,
            create_secrets: false,
            update: None,
            perf: PerfMode::Fail,
        }
    }
}

impl ChefOptions {
    /// The run's wall-clock limit.
    pub fn deadline(&self) -> Duration {
        self.deadline_ms
            .map_or(DEFAULT_DEADLINE, Duration::from_millis)
    }
}

/// A stage starting or ending, as the progress display shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEvent {
    pub stage: String,
    /// `started`, `done` or `failed`.
    pub status: String,
    pub ms: Option<u64>,
    pub detail: String,
    /// The node whose agent did the work.
    pub node: String,
    /// While a stage streams model tokens (status `progress`): how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// How far a streaming model exchange got.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Tokens (or streamed chunks, when the server does not count) received so far.
    pub tokens: u64,
    /// Tokens per second since the first token (the prompt's reading left out).
    pub tokens_per_s: f64,
    pub elapsed_ms: u64,
}

/// One finished stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub stage: String,
    pub ms: u64,
    pub ok: bool,
    pub detail: String,
    pub node: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum RunOutcome {
    Deployed {
        function: String,
        version: String,
        replicas: u32,
    },
    /// Validated and tested, not deployed (no `--deploy`).
    Built {
        function: String,
        version: String,
    },
    NoMatch(NoMatch),
    Failed {
        reasons: Vec<String>,
    },
}

/// Everything about one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl ChefRun {
    pub fn succeeded(&self) -> bool {
        matches!(
            self.outcome,
            RunOutcome::Deployed { .. } | RunOutcome::Built { .. }
        )
    }
}

/// The Chef of one node: its agents and the pipeline that drives them.
pub struct Chef {
    kitchen: Arc<Kitchen>,
    providers: BTreeMap<String, Arc<dyn Provider>>,
    agents: BTreeMap<String, Arc<Agents>>,
    /// Called after every run (for example to save a recording of the model's exchanges).
    after_run: std::sync::OnceLock<AfterRun>,
}

/// What [`Chef::set_after_run`] installs.
pub type AfterRun = Box<dyn Fn(&ChefRun) + Send + Sync>;

/// Answers Chef messages from peers with this node's agents.
struct Endpoint {
    agents: BTreeMap<String, Arc<Agents>>,
    /// This node's name, for the agents' spans.
    node: String,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    provider: String,
    /// The run's bounds, so an agent on another node keeps them.
    #[serde(default)]
    bounds: Bounds,
    /// The stage span's `traceparent`: the agent's exchanges join the run's trace.
    #[serde(default)]
    trace_parent: Option<String>,
    message: AgentMessage,
}

/// How long an agent may take: until the run's deadline, and at least a moment to say no.
fn agent_timeout(bounds: &Bounds) -> Duration {
    bounds.remaining().max(MIN_AGENT_TIMEOUT)
}

async fn ask_actor(
    agents: &Agents,
    role: AgentType,
    cx: RunContext,
    message: AgentMessage,
) -> AgentResponse {
    let failed = |reason: String| AgentResponse::failed(role, reason);
    let Some(actor) = agents.get(role) else {
        return failed(format!("no {} agent", role.as_str()));
    };
    let timeout = agent_timeout(&cx.bounds);
    let bounds = cx.bounds.clone();
    match actor
        .call(
            |reply| AgentMsg::Communicate(cx, message, reply),
            Some(timeout),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(response)) => response,
        Ok(_) if bounds.remaining().is_zero() => failed(format!(
            "the run's deadline passed while the {} worked; give it longer with --deadline",
            role.as_str()
        )),
        Ok(_) => failed(format!(
            "the {} did not answer within {timeout:?}",
            role.as_str()
        )),
        Err(e) => failed(format!("the {} stopped: {e}", role.as_str())),
    }
}

impl AgentEndpoint for Endpoint {
    fn handle(
        &self,
        _from: PeerIdentity,
        message: klf_proto::AgentMessage,
    ) -> BoxFuture<'static, Result<klf_proto::AgentMessage, String>> {
        let agents = self.agents.clone();
        let node = self.node.clone();
        Box::pin(async move {
            if message.kind != FRAME_KIND {
                return Err(format!("unknown agent message kind {:?}", message.kind));
            }
            let role = AgentType::parse(&message.to_agent)
                .ok_or_else(|| format!("no agent role {:?}", message.to_agent))?;
            let envelope: Envelope = serde_json::from_slice(&message.body)
                .map_err(|e| format!("the agent message is not a Chef message: {e}"))?;
            let set = agents
                .get(&envelope.provider)
                .ok_or_else(|| format!("this node has no {:?} provider", envelope.provider))?;
            let cx = RunContext {
                run_id: message.run_id.clone(),
                bounds: envelope.bounds,
                progress: None,
                trace_parent: envelope.trace_parent,
                node,
            };
            let response = ask_actor(set, role, cx, envelope.message).await;
            Ok(klf_proto::AgentMessage {
                run_id: message.run_id,
                from_agent: message.to_agent,
                to_agent: message.from_agent,
                kind: FRAME_KIND.into(),
                body: serde_json::to_vec(&response).map_err(|e| e.to_string())?,
            })
        })
    }
}

impl Chef {
    /// Starts this node's agents, one set per provider, and answers Chef messages from peers.
    pub async fn start(
        kitchen: Arc<Kitchen>,
        providers: Vec<Arc<dyn Provider>>,
    ) -> Result<Arc<Self>, ChefError> {
        let mut by_name = BTreeMap::new();
        let mut agents = BTreeMap::new();
        for provider in providers {
            let name = provider.name().to_string();
            let set = Agents::spawn(AgentContext {
                kitchen: kitchen.clone(),
                provider: provider.clone(),
            })
            .await
            .map_err(|e| ChefError::Agents(e.to_string()))?;
            agents.insert(name.clone(), Arc::new(set));
            by_name.insert(name, provider);
        }
        kitchen.node().set_agent_endpoint(Arc::new(Endpoint {
            agents: agents.clone(),
            node: kitchen.node().settings().name.clone(),
        }));
        Ok(Arc::new(Self {
            kitchen,
            providers: by_name,
            agents,
            after_run: std::sync::OnceLock::new(),
        }))
    }

    /// Installs what runs after every run; false if something is installed already.
    pub fn set_after_run(&self, hook: AfterRun) -> bool {
        self.after_run.set(hook).is_ok()
    }

    /// The providers this Chef can use.
    pub fn providers(&self) -> Vec<String> {
        self.providers.keys().cloned().collect()
    }

    /// The Kitchen (and through it the node) this Chef runs on.
    pub fn kitchen(&self) -> &Arc<Kitchen> {
        &self.kitchen
    }

    /// What the Monitor agents of this node were asked to watch.
    pub fn watched(&self) -> Vec<(String, String)> {
        self.agents
            .values()
            .flat_map(|a| a.watched.lock().map(|w| w.clone()).unwrap_or_default())
            .collect()
    }

    /// Stops the agents.
    pub fn stop(&self) {
        for agents in self.agents.values() {
            agents.stop();
        }
    }

    /// Sends `message` to the `role` agent: here, or on the node the placement names.
    async fn ask(
        &self,
        cx: RunContext,
        provider: &str,
        role: AgentType,
        message: AgentMessage,
        placement: &BTreeMap<AgentType, String>,
    ) -> (AgentResponse, String) {
        let failed = |reason: String| AgentResponse::failed(role, reason);
        let here = self.kitchen.node().settings().name.clone();
        match placement.get(&role).filter(|name| **name != here) {
            None => {
                let Some(agents) = self.agents.get(provider) else {
                    return (failed(format!("no {provider:?} provider here")), here);
                };
                (ask_actor(agents, role, cx, message).await, here)
            }
            Some(name) => {
                let members = self.kitchen.node().members().await.unwrap_or_default();
                let Some(member) = members
                    .iter()
                    .find(|m| &m.name == name && m.state == MemberState::Alive)
                else {
                    return (
                        failed(format!("node {name} is not an alive member of the mesh")),
                        name.clone(),
                    );
                };
                let body = match serde_json::to_vec(&Envelope {
                    provider: provider.to_string(),
                    bounds: cx.bounds.clone(),
                    trace_parent: cx.trace_parent.clone(),
                    message,
                }) {
                    Ok(body) => body,
                    Err(e) => return (failed(e.to_string()), name.clone()),
                };
                let frame = klf_proto::AgentMessage {
                    run_id: cx.run_id.clone(),
                    from_agent: "pipeline".into(),
                    to_agent: role.as_str().into(),
                    kind: FRAME_KIND.into(),
                    body,
                };
                let id = klf_mesh::MemberId {
                    node_id: member.id.clone(),
                    name: member.name.clone(),
                    addr: member.addr.clone(),
                    api: member.api.clone(),
                    generation: member.generation,
                };
                let response = match self
                    .kitchen
                    .node()
                    .agent_request(&id, frame, agent_timeout(&cx.bounds))
                    .await
                {
                    Ok(reply) => serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
                        failed(format!(
                            "node {name} answered something that is not a Chef response: {e}"
                        ))
                    }),
                    Err(e) => failed(e.to_string()),
                };
                (response, name.clone())
            }
        }
    }

    /// Runs one request through the pipeline. Progress events go to `progress` as stages start
    /// and end; the returned run says how it ended, always (a failure is a state, not an error).
    pub async fn run(
        &self,
        request: &str,
        options: &ChefOptions,
        progress: Option<UnboundedSender<StageEvent>>,
    ) -> Result<ChefRun, ChefError> {
        if !self.providers.contains_key(&options.provider) {
            return Err(ChefError::UnknownProvider {
                name: options.provider.clone(),
                available: self.providers().join(", "),
            });
        }
        if options.fresh && options.provider == "offline" {
            return Err(ChefError::FreshNeedsModel {
                provider: options.provider.clone(),
            });
        }
        let run_id = format!(
            "{}-{}",
            chrono_like_stamp(),
            // Only tells runs of the same second apart: zeros if the OS has no randomness.
            hex::encode(klf_security::random_bytes::<3>().unwrap_or_default())
        );
        // The run as a trace (`klf trace`, OTLP): this span, one per stage, one per model exchange.
        let traced = info_span!(
            target: TRACE_TARGET,
            "chef.run",
            klf.node = %self.kitchen.node().settings().name,
            chef.run_id = %run_id,
            chef.provider = %options.provider,
            chef.outcome = tracing::field::Empty,
            function = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            chef.repairs = tracing::field::Empty,
            error.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let span = info_span!("chef_run", run_id = %run_id, provider = %options.provider);
        let run = self
            .run_inner(run_id, request, options, progress, &traced)
            .instrument(span)
            .instrument(traced.clone())
            .await?;
        record_outcome(&traced, &run);
        self.record(&run);
        if let Some(hook) = self.after_run.get() {
            hook(&run);
        }
        Ok(run)
    }

    /// Writes the run into this node's ledger (cost and value, docs/roi.md).
    fn record(&self, run: &ChefRun) {
        use crate::ledger::{Amount, RunOutcome as Outcome, RunRecord, StageRecord};
        let (outcome, function, version) = match &run.outcome {
            RunOutcome::Deployed {
                function, version, ..
            } => (
                Outcome::Deployed,
                Some(function.clone()),
                Some(version.clone()),
            ),
            RunOutcome::Built { function, version } => (
                Outcome::Built,
                Some(function.clone()),
                Some(version.clone()),
            ),
            RunOutcome::NoMatch(_) => (Outcome::NoMatch, None, None),
            RunOutcome::Failed { .. } => (
                Outcome::Failed,
                run.requirement.as_ref().map(|r| r.function.clone()),
                None,
            ),
        };
        let baseline = run
            .requirement
            .as_ref()
            .and_then(|r| self.kitchen.ingredients().recipe(&r.recipe).ok())
            .map_or_else(
                || Amount::zero("no recipe was chosen"),
                |(_, recipe)| {
                    Amount::declared(
                        recipe.baseline_hours,
                        format!(
                            "recipe {} declares {} h by hand",
                            recipe.name, recipe.baseline_hours
                        ),
                    )
                },
            );
        let sandbox_ms: u64 = run
            .stages
            .iter()
            .filter(|s| s.stage.starts_with("validate") || s.stage.starts_with("test"))
            .map(|s| s.ms)
            .sum();
        let record = RunRecord {
            run_id: run.run_id.clone(),
            function,
            version,
            request: run.request.clone(),
            provider: run.provider.clone(),
            outcome,
            started_unix_ms: run.started_unix_ms,
            stages: run
                .stages
                .iter()
                .map(|s| StageRecord {
                    stage: s.stage.clone(),
                    ms: s.ms,
                    ok: s.ok,
                    note: s.detail.chars().take(200).collect(),
                })
                .collect(),
            model_tokens_in: run.tokens_in,
            model_tokens_out: run.tokens_out,
            model_cost: self
                .kitchen
                .rates()
                .model_price()
                .cost(run.tokens_in, run.tokens_out),
            compute_us: sandbox_ms.saturating_mul(1000),
            repairs: run.repairs,
            tests_passed: run.tests.as_ref().map_or(0, |t| t.passed),
            tests_total: run.tests.as_ref().map_or(0, |t| t.passed + t.failed),
            baseline_hours: baseline,
        };
        if let Err(error) = self.kitchen.ledger().record_run(&record) {
            warn!(%error, "the run could not be recorded in the ledger");
        }
    }

    async fn run_inner(
        &self,
        run_id: String,
        request: &str,
        options: &ChefOptions,
        progress: Option<UnboundedSender<StageEvent>>,
        traced: &tracing::Span,
    ) -> Result<ChefRun, ChefError> {
        let here = self.kitchen.node().settings().name.clone();
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + options.deadline();
        let run = ChefRun {
            run_id: run_id.clone(),
            request: request.to_string(),
            provider: options.provider.clone(),
            outcome: RunOutcome::Failed {
                reasons: Vec::new(),
            },
            requirement: None,
            code_dir: None,
            validation: None,
            tests: None,
            stages: Vec::new(),
            repairs: 0,
            tokens_in: 0,
            tokens_out: 0,
            total_ms: 0,
            started_unix_ms: klf_proto::unix_ms(),
        };
        let plan = Plan {
            deploy: options.deploy,
            replicas: options.replicas,
            token_budget: options.token_budget,
            create_secrets: options.create_secrets,
            update: options.update.clone(),
            perf: options.perf,
        };
        let mut cooking = Cooking::new(run, plan, self.kitchen.ingredients().clone());
        let emit = |event: StageEvent| {
            if let Some(progress) = &progress {
                let _ = progress.send(event);
            }
        };
        let bounds = Bounds {
            max_tokens: options.max_tokens.clone(),
            deadline_unix_ms: klf_proto::unix_ms()
                .saturating_add(u64::try_from(options.deadline().as_millis()).unwrap_or(u64::MAX)),
            fresh: options.fresh,
        };
        // Streamed model progress, reported under the stage being asked (agents on this node).
        let asking = Arc::new(std::sync::Mutex::new(String::new()));
        let streamed: Option<klf_model::ProgressSink> = progress.clone().map(|sender| {
            let asking = asking.clone();
            Arc::new(move |streamed: klf_model::Streamed| {
                let stage = asking.lock().map(|s| s.clone()).unwrap_or_default();
                let elapsed_ms = u64::try_from(streamed.elapsed.as_millis()).unwrap_or(u64::MAX);
                // The rate of generation: from the first token, not from the request (reading a
                // long prompt can take longer than writing the answer).
                let seconds = streamed.generating.as_secs_f64();
                let _ = sender.send(StageEvent {
                    stage,
                    status: "progress".into(),
                    ms: Some(elapsed_ms),
                    detail: String::new(),
                    node: String::new(),
                    progress: Some(Progress {
                        tokens: streamed.chunks,
                        tokens_per_s: if seconds > 0.0 {
                            streamed.chunks as f64 / seconds
                        } else {
                            0.0
                        },
                        elapsed_ms,
                    }),
                });
            }) as klf_model::ProgressSink
        });
        loop {
            match cooking.next() {
                Next::Done => break,
                Next::Write(code) => {
                    let dir = self.write_code(&run_id, &code);
                    cooking.written(dir);
                }
                Next::Versions { function } => {
                    let (published, current) = self.current_of(&function, options).await;
                    cooking.versioned(&published, current);
                }
                Next::Ask {
                    stage,
                    role,
                    message,
                } => {
                    emit(StageEvent {
                        stage: stage.clone(),
                        status: "started".into(),
                        ms: None,
                        detail: String::new(),
                        node: String::new(),
                        progress: None,
                    });
                    let t = Instant::now();
                    if let Ok(mut asking) = asking.lock() {
                        asking.clone_from(&stage);
                    }
                    let stage_span = info_span!(
                        target: TRACE_TARGET,
                        parent: traced,
                        "chef.stage",
                        klf.node = %here,
                        chef.stage = %stage,
                        chef.agent = role.as_str(),
                        chef.agent_node = tracing::field::Empty,
                        error.kind = tracing::field::Empty,
                        otel.status_code = tracing::field::Empty,
                    );
                    let cx = RunContext {
                        run_id: run_id.clone(),
                        bounds: bounds.clone(),
                        progress: streamed.clone(),
                        trace_parent: (!stage_span.is_disabled())
                            .then(|| klf_router::trace::onward(&stage_span, None))
                            .flatten(),
                        node: here.clone(),
                    };
                    let asked = self
                        .ask(cx, &options.provider, role, message, &options.placement)
                        .instrument(stage_span.clone());
                    match tokio::time::timeout_at(deadline, asked).await {
                        Ok((response, node)) => {
                            let ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
                            let event = cooking.answer(&stage, response, ms, &node);
                            stage_span.record("chef.agent_node", node.as_str());
                            if event.status == "failed" {
                                stage_span
                                    .record("error.kind", "stage_failed")
                                    .record("otel.status_code", "ERROR");
                            }
                            emit(event);
                        }
                        Err(_) => {
                            let reason = format!(
                                "the run's deadline of {:?} passed during stage {stage}; give it \
                                 longer with --deadline",
                                options.deadline()
                            );
                            warn!(%stage, "chef run deadline passed");
                            stage_span
                                .record("error.kind", "deadline")
                                .record("otel.status_code", "ERROR");
                            emit(StageEvent {
                                stage: stage.clone(),
                                status: "failed".into(),
                                ms: Some(
                                    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
                                ),
                                detail: reason.clone(),
                                node: String::new(),
                                progress: None,
                            });
                            cooking.abandon(reason);
                        }
                    }
                }
            }
        }
        let mut run = cooking.into_run();
        if let RunOutcome::Deployed {
            function, version, ..
        } = &run.outcome
        {
            info!(%function, %version, "deployed by the chef");
        }
        run.total_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(run)
    }

    /// The published versions of `function` and, for `--update`, the package it serves now (the
    /// code the new version is built from).
    async fn current_of(
        &self,
        function: &str,
        options: &ChefOptions,
    ) -> (Vec<semver::Version>, Option<GeneratedCode>) {
        let node = self.kitchen.node();
        let catalog = node.catalog();
        let published: Vec<semver::Version> = catalog
            .versions(function)
            .iter()
            .map(|r| r.manifest.version.clone())
            .collect();
        if options.update.is_none() {
            return (published, None);
        }
        let Some(served) = catalog.served(function).cloned() else {
            return (published, None);
        };
        let package = node
            .ask_registry(|reply| klf_registry::RegistryMsg::Package {
                release: Box::new((*served).clone()),
                reply,
            })
            .await;
        let current = match package {
            Ok(Ok(package)) => Some(GeneratedCode {
                function: function.to_string(),
                version: package.manifest.version.to_string(),
                recipe: String::new(),
                files: BTreeMap::from([
                    ("klf.toml".to_string(), package.manifest_text.clone()),
                    (package.manifest.entry.clone(), package.source.clone()),
                ]),
                round: 0,
                fixtures: BTreeMap::new(),
            }),
            Ok(Err(error)) => {
                warn!(%function, %error, "the current package could not be read; building without it");
                None
            }
            Err(error) => {
                warn!(%function, %error, "the registry did not answer; building without the current package");
                None
            }
        };
        (published, current)
    }

    /// Writes the generated package under `<data>/chef/<run>/<function>/`; where, if it worked.
    fn write_code(&self, run_id: &str, code: &GeneratedCode) -> Option<String> {
        let dir = self
            .kitchen
            .node()
            .data_dir()
            .root()
            .join("chef")
            .join(run_id)
            .join(&code.function);
        let rendered = crate::ingredients::RenderedPackage {
            name: code.function.clone(),
            version: code.version.clone(),
            recipe: code.recipe.clone(),
            files: code.files.clone(),
            params: BTreeMap::new(),
            fixtures: Default::default(),
        };
        match rendered.write_to(&dir) {
            Ok(()) => Some(dir.display().to_string()),
            Err(e) => {
                warn!(error = %e, "could not write the generated package");
                None
            }
        }
    }
}

/// `YYYYMMDD-HHMMSS` in UTC, for run ids that sort by time.
fn chrono_like_stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Marks the run's span with how the run ended.
fn record_outcome(span: &tracing::Span, run: &ChefRun) {
    let (outcome, function) = match &run.outcome {
        RunOutcome::Deployed { function, .. } => ("deployed", Some(function)),
        RunOutcome::Built { function, .. } => ("built", Some(function)),
        RunOutcome::NoMatch(_) => ("no-match", None),
        RunOutcome::Failed { .. } => ("failed", None),
    };
    span.record("chef.outcome", outcome)
        .record("gen_ai.usage.input_tokens", run.tokens_in)
        .record("gen_ai.usage.output_tokens", run.tokens_out)
        .record("chef.repairs", run.repairs);
    if let Some(function) = function {
        span.record("function", function.as_str());
    }
    if outcome == "failed" {
        span.record("error.kind", "chef_failed")
            .record("otel.status_code", "ERROR");
    }
}
