//! The Chef's pipeline (design §13): request → requirement → package → validation → acceptance
//! tests → test run → deployment → monitoring, with bounded repair rounds and an explicit failed
//! state. Each stage is timed; the agents doing the work may live on other nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{Instrument, info, info_span, warn};

use super::agents::{AgentContext, AgentMsg, Agents};
use super::messages::{
    AgentMessage, AgentResponse, AgentType, GeneratedCode, NoMatch, TechnicalRequirement, TestCase,
    TestResult, ValidationResult,
};
use super::providers::Provider;
use futures_util::future::BoxFuture;
use klf_mesh::MemberState;
use klf_node_core::AgentEndpoint;

use crate::kitchen::Kitchen;
use klf_security::PeerIdentity;

/// Repair rounds after the first attempt.
pub const MAX_REPAIRS: u32 = 3;
/// Longest an agent may take to answer one message.
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The `kind` of KLF `Agent` frames that carry Chef messages.
pub const FRAME_KIND: &str = "chef";

/// Why the Chef could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ChefError {
    #[error("cannot start the chef's agents: {0}")]
    Agents(String),
    #[error("unknown provider {name:?} (available: {available})")]
    UnknownProvider { name: String, available: String },
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
}

impl Default for ChefOptions {
    fn default() -> Self {
        Self {
            provider: "offline".into(),
            deploy: false,
            replicas: 1,
            placement: BTreeMap::new(),
        }
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
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    provider: String,
    message: AgentMessage,
}

async fn ask_actor(agents: &Agents, role: AgentType, message: AgentMessage) -> AgentResponse {
    let failed = |reason: String| AgentResponse::Failed {
        agent: role,
        reason,
    };
    let Some(actor) = agents.get(role) else {
        return failed(format!("no {} agent", role.as_str()));
    };
    match actor
        .call(
            |reply| AgentMsg::Communicate(message, reply),
            Some(AGENT_TIMEOUT),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(response)) => response,
        Ok(_) => failed(format!(
            "the {} did not answer within {AGENT_TIMEOUT:?}",
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
            let response = ask_actor(set, role, envelope.message).await;
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

/// What went wrong with a round's code, as lines the generator gets back.
fn failure_of(validation: &ValidationResult, tests: Option<&TestResult>) -> Vec<String> {
    let mut lines: Vec<String> = validation
        .problems
        .iter()
        .map(|p| match (p.line, p.column) {
            (Some(line), Some(column)) => {
                format!("{} (line {line}, column {column}): {}", p.check, p.message)
            }
            _ => format!("{}: {}", p.check, p.message),
        })
        .collect();
    if let Some(tests) = tests {
        lines.extend(tests.cases.iter().filter(|c| !c.passed).map(|c| {
            format!(
                "test {:?} failed: {}",
                c.name,
                c.detail.clone().unwrap_or_default()
            )
        }));
    }
    lines
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
        run_id: &str,
        provider: &str,
        role: AgentType,
        message: AgentMessage,
        placement: &BTreeMap<AgentType, String>,
    ) -> (AgentResponse, String) {
        let failed = |reason: String| AgentResponse::Failed {
            agent: role,
            reason,
        };
        let here = self.kitchen.node().settings().name.clone();
        match placement.get(&role).filter(|name| **name != here) {
            None => {
                let Some(agents) = self.agents.get(provider) else {
                    return (failed(format!("no {provider:?} provider here")), here);
                };
                (ask_actor(agents, role, message).await, here)
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
                    message,
                }) {
                    Ok(body) => body,
                    Err(e) => return (failed(e.to_string()), name.clone()),
                };
                let frame = klf_proto::AgentMessage {
                    run_id: run_id.to_string(),
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
                    .agent_request(&id, frame, AGENT_TIMEOUT)
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
        let run_id = format!(
            "{}-{}",
            chrono_like_stamp(),
            hex::encode(klf_security::random_bytes::<3>())
        );
        let span = info_span!("chef_run", run_id = %run_id, provider = %options.provider);
        let run = self
            .run_inner(run_id, request, options, progress)
            .instrument(span)
            .await?;
        self.record(&run);
        if let Some(hook) = self.after_run.get() {
            hook(&run);
        }
        Ok(run)
    }

    /// Writes the run into this node's ledger (cost and value, design §14).
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
    ) -> Result<ChefRun, ChefError> {
        let started = Instant::now();
        let mut run = ChefRun {
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
        let emit = |event: StageEvent| {
            if let Some(progress) = &progress {
                let _ = progress.send(event);
            }
        };
        let provider = options.provider.clone();
        let placement = options.placement.clone();

        // A stage: announce, ask the agent, time it.
        macro_rules! stage {
            ($name:expr, $role:expr, $message:expr) => {{
                let name: String = $name;
                emit(StageEvent {
                    stage: name.clone(),
                    status: "started".into(),
                    ms: None,
                    detail: String::new(),
                    node: String::new(),
                });
                let t = Instant::now();
                let (response, node) = self
                    .ask(&run_id, &provider, $role, $message, &placement)
                    .await;
                (name, t.elapsed().as_millis() as u64, response, node)
            }};
        }
        let finish =
            |run: &mut ChefRun, name: String, ms: u64, ok: bool, detail: String, node: String| {
                emit(StageEvent {
                    stage: name.clone(),
                    status: if ok { "done" } else { "failed" }.into(),
                    ms: Some(ms),
                    detail: detail.clone(),
                    node: node.clone(),
                });
                run.stages.push(StageReport {
                    stage: name,
                    ms,
                    ok,
                    detail,
                    node,
                });
            };
        // A stage that failed ends the run with its reason.
        let fail = |run: &mut ChefRun, name: String, ms: u64, reason: String, node: String| {
            finish(run, name, ms, false, reason.clone(), node);
            run.outcome = RunOutcome::Failed {
                reasons: vec![reason],
            };
        };

        // Every early end breaks out of this block; the total time is set once, below it.
        'cook: {
            // 1. Interpret.
            let (name, ms, response, node) = stage!(
                "interpret".to_string(),
                AgentType::RequirementInterpreter,
                AgentMessage::Interpret {
                    request: request.to_string()
                }
            );
            let requirement = match response {
                AgentResponse::Interpreted {
                    requirement,
                    tokens_in,
                    tokens_out,
                } => {
                    run.tokens_in += tokens_in;
                    run.tokens_out += tokens_out;
                    finish(
                        &mut run,
                        name,
                        ms,
                        true,
                        format!(
                            "recipe {} ({}), function {}, confidence {:.2}",
                            requirement.recipe,
                            requirement.goal,
                            requirement.function,
                            requirement.confidence
                        ),
                        node,
                    );
                    *requirement
                }
                AgentResponse::NoMatch(no) => {
                    finish(&mut run, name, ms, false, no.reason.clone(), node);
                    run.outcome = RunOutcome::NoMatch(no);
                    break 'cook;
                }
                other => {
                    fail(&mut run, name, ms, describe(&other), node);
                    break 'cook;
                }
            };
            run.requirement = Some(requirement.clone());
            // A parameter without a default that the request did not give: ask, don't guess.
            if let Ok((_, recipe)) = self.kitchen.ingredients().recipe(&requirement.recipe) {
                let missing: Vec<String> = recipe
                    .parameters
                    .iter()
                    .filter(|p| p.default.is_none() && !requirement.params.contains_key(&p.name))
                    .map(|p| {
                        let hint = match p.kind {
                            crate::ingredients::kinds::ParamType::Function => {
                                " (name it in the request, e.g. \"… to the NAME function\")"
                            }
                            _ => "",
                        };
                        format!("`{}`: {}{hint}", p.name, p.description)
                    })
                    .collect();
                if !missing.is_empty() {
                    let reason = format!(
                        "recipe {} needs what the request does not say: {}",
                        recipe.name,
                        missing.join("; ")
                    );
                    run.outcome = RunOutcome::Failed {
                        reasons: vec![reason],
                    };
                    break 'cook;
                }
            }

            // 2. Acceptance tests, written before any code exists.
            let (name, ms, response, node) = stage!(
                "write tests".to_string(),
                AgentType::TestGenerator,
                AgentMessage::WriteTests {
                    requirement: Box::new(requirement.clone())
                }
            );
            let tests: Vec<TestCase> = match response {
                AgentResponse::Tests { tests } => {
                    let examples = tests.iter().filter(|t| t.origin == "example").count();
                    finish(
                        &mut run,
                        name,
                        ms,
                        true,
                        format!(
                            "{} tests: {examples} from the recipe's examples, {} edge cases from testing templates",
                            tests.len(),
                            tests.len() - examples
                        ),
                        node,
                    );
                    tests
                }
                other => {
                    fail(&mut run, name, ms, describe(&other), node);
                    break 'cook;
                }
            };

            // 3. Generate, validate, test; repair on failure.
            let mut feedback: Vec<String> = Vec::new();
            let mut last_failure: Option<Vec<String>> = None;
            let mut accepted: Option<GeneratedCode> = None;
            for round in 0..=MAX_REPAIRS {
                let label = |stage: &str| {
                    if round == 0 {
                        stage.to_string()
                    } else {
                        format!("{stage} (repair {round})")
                    }
                };
                let (name, ms, response, node) = stage!(
                    label("generate"),
                    AgentType::CodeGenerator,
                    AgentMessage::Generate {
                        requirement: Box::new(requirement.clone()),
                        feedback: feedback.clone(),
                        round
                    }
                );
                let code = match response {
                    AgentResponse::Generated {
                        code,
                        tokens_in,
                        tokens_out,
                    } => {
                        run.tokens_in += tokens_in;
                        run.tokens_out += tokens_out;
                        let dir = self.write_code(&run_id, &code);
                        run.code_dir = dir.clone();
                        finish(
                            &mut run,
                            name,
                            ms,
                            true,
                            format!(
                                "{}@{} from recipe {}{}",
                                code.function,
                                code.version,
                                code.recipe,
                                dir.map(|d| format!(", written to {d}")).unwrap_or_default()
                            ),
                            node,
                        );
                        *code
                    }
                    other => {
                        fail(&mut run, name, ms, describe(&other), node);
                        break 'cook;
                    }
                };

                let (name, ms, response, node) = stage!(
                    label("validate"),
                    AgentType::CodeValidator,
                    AgentMessage::Validate {
                        code: Box::new(code.clone())
                    }
                );
                let validation = match response {
                    AgentResponse::Validated(validation) => validation,
                    other => ValidationResult {
                        ok: false,
                        problems: vec![super::messages::Problem {
                            check: "validator".into(),
                            message: describe(&other),
                            line: None,
                            column: None,
                        }],
                        checks: Vec::new(),
                        warnings: Vec::new(),
                    },
                };
                let detail = if validation.ok {
                    format!(
                        "{} checks passed{}",
                        validation.checks.len(),
                        if validation.warnings.is_empty() {
                            String::new()
                        } else {
                            format!(", {} warnings", validation.warnings.len())
                        }
                    )
                } else {
                    failure_of(&validation, None).join("; ")
                };
                finish(&mut run, name, ms, validation.ok, detail, node);
                run.validation = Some(validation.clone());

                let mut tested = None;
                if validation.ok {
                    let (name, ms, response, node) = stage!(
                        label("test"),
                        AgentType::TestGenerator,
                        AgentMessage::RunTests {
                            code: Box::new(code.clone()),
                            tests: tests.clone()
                        }
                    );
                    let result = match response {
                        AgentResponse::Tested(result) => result,
                        other => TestResult {
                            passed: 0,
                            failed: tests.len() as u32,
                            cases: vec![super::messages::CaseResult {
                                name: "test run".into(),
                                passed: false,
                                detail: Some(describe(&other)),
                            }],
                        },
                    };
                    finish(
                        &mut run,
                        name,
                        ms,
                        result.ok(),
                        format!("{} passed, {} failed", result.passed, result.failed),
                        node,
                    );
                    run.tests = Some(result.clone());
                    tested = Some(result);
                }
                if validation.ok && tested.as_ref().is_some_and(TestResult::ok) {
                    accepted = Some(code);
                    break;
                }
                let failure = failure_of(&validation, tested.as_ref());
                let give_up = if last_failure.as_ref() == Some(&failure) {
                    warn!(round, "the same failure repeated; no more repairs");
                    Some(format!(
                        "the same failure repeated after repair round {round}; stopped early"
                    ))
                } else if round == MAX_REPAIRS {
                    Some(format!("still failing after {MAX_REPAIRS} repair rounds"))
                } else {
                    None
                };
                if let Some(why) = give_up {
                    run.outcome = RunOutcome::Failed {
                        reasons: std::iter::once(why).chain(failure).collect(),
                    };
                    break 'cook;
                }
                run.repairs += 1;
                feedback = failure.clone();
                last_failure = Some(failure);
            }
            let Some(code) = accepted else {
                break 'cook;
            };

            if !options.deploy {
                run.outcome = RunOutcome::Built {
                    function: code.function.clone(),
                    version: code.version.clone(),
                };
                break 'cook;
            }

            // 4. Deploy, then hand the version to the Monitor.
            let (name, ms, response, node) = stage!(
                "deploy".to_string(),
                AgentType::DeploymentManager,
                AgentMessage::Deploy {
                    code: Box::new(code.clone()),
                    replicas: options.replicas,
                    probe: tests
                        .iter()
                        .find(|t| t.expect.is_some())
                        .map(|t| t.input.clone())
                }
            );
            match response {
                AgentResponse::Deployed {
                    function,
                    version,
                    replicas,
                } => {
                    finish(
                        &mut run,
                        name,
                        ms,
                        true,
                        format!("{function}@{version} with {replicas} replicas, answering"),
                        node,
                    );
                    let (name, ms, response, node) = stage!(
                        "monitor".to_string(),
                        AgentType::Monitor,
                        AgentMessage::Watch {
                            function: function.clone(),
                            version: version.clone()
                        }
                    );
                    let watching = matches!(response, AgentResponse::Watching);
                    finish(
                        &mut run,
                        name,
                        ms,
                        watching,
                        if watching {
                            "error rate and latency watched; a misbehaving version is rolled back"
                                .into()
                        } else {
                            describe(&response)
                        },
                        node,
                    );
                    info!(%function, %version, "deployed by the chef");
                    run.outcome = RunOutcome::Deployed {
                        function,
                        version,
                        replicas,
                    };
                }
                other => {
                    fail(&mut run, name, ms, describe(&other), node);
                }
            }
        }
        run.total_ms = started.elapsed().as_millis() as u64;
        Ok(run)
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

/// A response the pipeline did not expect, in words.
fn describe(response: &AgentResponse) -> String {
    match response {
        AgentResponse::Failed { agent, reason } => format!("{}: {reason}", agent.as_str()),
        other => format!(
            "unexpected answer: {}",
            serde_json::to_string(other).unwrap_or_default()
        ),
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
