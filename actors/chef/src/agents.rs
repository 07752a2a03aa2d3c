//! The Chef's agents: one ractor actor per role of the product model (docs/product.md),
//! each implementing its `AIAgent` interface (interpret, generate, validate, test, communicate) for its own role and refusing the
//! others. The pipeline talks to them only through [`AgentMessage`]s, so an agent on another node
//! is reached the same way, in a KLF `Agent` frame.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::checks;
use super::messages::{
    AgentMessage, AgentResponse, AgentType, Attempt, Bounds, GeneratedCode, TechnicalRequirement,
};
use super::providers::{Interpretation, Provider};
use crate::kitchen::Kitchen;
use futures_util::future::BoxFuture;
use klf_node_core::validator::PerfOptions;

/// How long a deployment may take to answer its first call.
const DEPLOY_READY: Duration = Duration::from_secs(15);

/// What an agent knows of the run a message belongs to.
#[derive(Clone, Default)]
pub struct RunContext {
    pub run_id: String,
    pub bounds: Bounds,
    /// Where a streaming model exchange reports progress (agents on the pipeline's own node).
    pub progress: Option<klf_model::ProgressSink>,
    /// The W3C `traceparent` of the stage's span: the agent's model exchanges are its children.
    pub trace_parent: Option<String>,
    /// The name of the node the agent runs on (recorded on its spans).
    pub node: String,
}

/// How the deployment manager deploys (the `Deploy` message's settings).
#[derive(Debug, Clone, Default)]
pub struct DeployPlan {
    pub replicas: u32,
    /// An input known to succeed, to check the deployment answers.
    pub probe: Option<serde_json::Value>,
    pub create_secrets: bool,
    pub canary: bool,
    /// The validator's performance test.
    pub perf: PerfOptions,
}

/// The product model's `AIAgent` interface (docs/product.md). An agent implements the operations
/// of its role; the default bodies refuse, naming the agent, so a misrouted message is an error
/// rather than a silent no-op.
pub trait AIAgent: Send + Sync + 'static {
    fn id(&self) -> String;
    fn name(&self) -> &'static str {
        self.agent_type().as_str()
    }
    fn agent_type(&self) -> AgentType;

    fn interpret(&self, _cx: RunContext, _request: String) -> BoxFuture<'static, AgentResponse> {
        self.refuse("interpret")
    }
    fn generate(
        &self,
        _cx: RunContext,
        _requirement: TechnicalRequirement,
        _attempt: Attempt,
    ) -> BoxFuture<'static, AgentResponse> {
        self.refuse("generate")
    }
    fn validate(&self, _code: GeneratedCode) -> BoxFuture<'static, AgentResponse> {
        self.refuse("validate")
    }
    fn test(&self, _cx: RunContext, _message: AgentMessage) -> BoxFuture<'static, AgentResponse> {
        self.refuse("test")
    }
    fn deploy(&self, _code: GeneratedCode, _plan: DeployPlan) -> BoxFuture<'static, AgentResponse> {
        self.refuse("deploy")
    }
    fn watch(&self, _function: String, _version: String) -> BoxFuture<'static, AgentResponse> {
        self.refuse("watch")
    }

    /// Dispatches a message to the operation it asks for.
    fn communicate(
        &self,
        cx: RunContext,
        message: AgentMessage,
    ) -> BoxFuture<'static, AgentResponse> {
        match message {
            AgentMessage::Interpret { request } => self.interpret(cx, request),
            AgentMessage::Generate {
                requirement,
                attempt,
            } => self.generate(cx, *requirement, *attempt),
            AgentMessage::Validate { code } => self.validate(*code),
            message @ (AgentMessage::WriteTests { .. } | AgentMessage::RunTests { .. }) => {
                self.test(cx, message)
            }
            AgentMessage::Deploy {
                code,
                replicas,
                probe,
                create_secrets,
                canary,
                perf,
                latency_budget_ms,
            } => self.deploy(
                *code,
                DeployPlan {
                    replicas,
                    probe,
                    create_secrets,
                    canary,
                    perf: PerfOptions {
                        mode: perf,
                        latency_budget_ms,
                        ..PerfOptions::default()
                    },
                },
            ),
            AgentMessage::Watch { function, version } => self.watch(function, version),
        }
    }

    fn refuse(&self, operation: &str) -> BoxFuture<'static, AgentResponse> {
        let response = AgentResponse::failed(
            self.agent_type(),
            format!("the {} does not {operation}", self.name()),
        );
        Box::pin(std::future::ready(response))
    }
}

/// What every agent of a node shares.
#[derive(Clone)]
pub struct AgentContext {
    pub kitchen: Arc<Kitchen>,
    pub provider: Arc<dyn Provider>,
}

impl AgentContext {
    fn id(&self, role: AgentType) -> String {
        format!("{}/{}", self.kitchen.node().settings().name, role.as_str())
    }
}

struct Interpreter(AgentContext);
struct Generator(AgentContext);
struct Validator(AgentContext);
struct Tester(AgentContext);
struct Deployer(AgentContext);
/// The Monitor agent: keeps what the pipeline deployed, for the node's monitor to watch.
struct Watcher(AgentContext, Arc<Mutex<Vec<(String, String)>>>);

impl AIAgent for Interpreter {
    fn id(&self) -> String {
        self.0.id(self.agent_type())
    }
    fn agent_type(&self) -> AgentType {
        AgentType::RequirementInterpreter
    }
    fn interpret(&self, cx: RunContext, request: String) -> BoxFuture<'static, AgentResponse> {
        let context = self.0.clone();
        Box::pin(async move {
            let library = context.kitchen.ingredients().clone();
            let deployed = deployed_functions(&context.kitchen.node().catalog());
            match context
                .provider
                .interpret(request, library, deployed, cx)
                .await
            {
                Ok(costed) => match costed.value {
                    Interpretation::Requirement(requirement) => AgentResponse::Interpreted {
                        requirement,
                        tokens_in: costed.usage.input_tokens,
                        tokens_out: costed.usage.output_tokens,
                    },
                    Interpretation::NoMatch(no) => AgentResponse::NoMatch(no),
                },
                Err(error) => error.into_response(AgentType::RequirementInterpreter),
            }
        })
    }
}

impl AIAgent for Generator {
    fn id(&self) -> String {
        self.0.id(self.agent_type())
    }
    fn agent_type(&self) -> AgentType {
        AgentType::CodeGenerator
    }
    fn generate(
        &self,
        cx: RunContext,
        requirement: TechnicalRequirement,
        attempt: Attempt,
    ) -> BoxFuture<'static, AgentResponse> {
        let context = self.0.clone();
        Box::pin(async move {
            let library = context.kitchen.ingredients().clone();
            match context
                .provider
                .generate(requirement, attempt, library, cx)
                .await
            {
                Ok(costed) => AgentResponse::Generated {
                    code: Box::new(costed.value),
                    tokens_in: costed.usage.input_tokens,
                    tokens_out: costed.usage.output_tokens,
                },
                Err(error) => error.into_response(AgentType::CodeGenerator),
            }
        })
    }
}

impl AIAgent for Validator {
    fn id(&self) -> String {
        self.0.id(self.agent_type())
    }
    fn agent_type(&self) -> AgentType {
        AgentType::CodeValidator
    }
    fn validate(&self, code: GeneratedCode) -> BoxFuture<'static, AgentResponse> {
        let kitchen = self.0.kitchen.clone();
        let node = kitchen.node().clone();
        Box::pin(async move {
            let catalog = node.catalog();
            AgentResponse::Validated(checks::validate(&code, &catalog).await)
        })
    }
}

impl AIAgent for Tester {
    fn id(&self) -> String {
        self.0.id(self.agent_type())
    }
    fn agent_type(&self) -> AgentType {
        AgentType::TestGenerator
    }
    fn test(&self, cx: RunContext, message: AgentMessage) -> BoxFuture<'static, AgentResponse> {
        let provider = self.0.provider.clone();
        let kitchen = self.0.kitchen.clone();
        let node = kitchen.node().clone();
        Box::pin(async move {
            match message {
                AgentMessage::WriteTests { requirement } => {
                    let mut tests =
                        match checks::acceptance_tests(&requirement, kitchen.ingredients()) {
                            Ok(tests) => tests,
                            Err(reason) => {
                                return AgentResponse::failed(AgentType::TestGenerator, reason);
                            }
                        };
                    // A model-written function also gets tests written from its requirement alone.
                    let (mut tokens_in, mut tokens_out) = (0, 0);
                    if requirement.is_freeform() {
                        match provider.write_tests(*requirement, cx).await {
                            Ok(written) => {
                                tokens_in = written.usage.input_tokens;
                                tokens_out = written.usage.output_tokens;
                                tests.extend(written.value);
                            }
                            Err(error) => {
                                return error.into_response(AgentType::TestGenerator);
                            }
                        }
                    }
                    AgentResponse::Tests {
                        tests,
                        tokens_in,
                        tokens_out,
                    }
                }
                AgentMessage::RunTests { code, tests } => {
                    let instances = node.router().instances();
                    AgentResponse::Tested(
                        checks::run_tests(&code, &tests, |release| instances.host_for(release))
                            .await,
                    )
                }
                other => AgentResponse::failed(
                    AgentType::TestGenerator,
                    format!("the test-generator does not {}", other.name()),
                ),
            }
        })
    }
}

impl AIAgent for Deployer {
    fn id(&self) -> String {
        self.0.id(self.agent_type())
    }
    fn agent_type(&self) -> AgentType {
        AgentType::DeploymentManager
    }
    fn deploy(&self, code: GeneratedCode, plan: DeployPlan) -> BoxFuture<'static, AgentResponse> {
        let DeployPlan {
            replicas,
            probe,
            create_secrets,
            canary,
            perf,
        } = plan;
        let kitchen = self.0.kitchen.clone();
        let node = kitchen.node().clone();
        Box::pin(async move {
            let failed =
                |reason: String| AgentResponse::failed(AgentType::DeploymentManager, reason);
            let package = match checks::package_of(&code) {
                Ok(package) => package,
                Err(reason) => return failed(reason),
            };
            // Nothing is published that would fail on its hosts for a missing secret.
            if let Err(reason) = secrets_in_place(
                &node,
                &package.manifest.name,
                &package.manifest.secrets,
                create_secrets,
            )
            .await
            {
                return failed(reason);
            }
            // The validator every deploy path runs (static analysis, dependencies with yanked
            // versions skipped, the examples against the real dependencies, the performance test).
            let validated = match node.validate_package(&package, perf).await {
                Ok(validated) => validated,
                Err(error) => return failed(format!("the validator refused it: {error}")),
            };
            for warning in &validated.warnings {
                tracing::warn!(function = %package.manifest.id(), %warning, "validator warning");
            }
            let probe = probe.or_else(|| package.examples.first().map(|e| e.input.clone()));
            let published = if canary {
                node.publish_canary(package, "chef").await
            } else {
                node.publish(package, replicas, "chef").await
            };
            let release = match published {
                Ok(release) => release,
                Err(error) => return failed(format!("publishing failed: {error}")),
            };
            if let Some(record) = validated.perf
                && let Err(error) = node.record_perf(record).await
            {
                tracing::warn!(%error, "the performance figures were not stored");
            }
            // Deployed means answering (the function's own errors included; see
            // `Node::wait_serving`).
            let name = release.manifest.name.clone();
            let version = release.manifest.version.clone();
            let input = probe.unwrap_or(serde_json::Value::Null);
            if let Err(error) = node
                .wait_serving(&name, &version, input, DEPLOY_READY)
                .await
            {
                return failed(format!(
                    "{name}@{version} was published but does not serve: {error}"
                ));
            }
            let version = version.to_string();
            AgentResponse::Deployed {
                function: name,
                version,
                replicas,
                canary,
            }
        })
    }
}

/// Checks that every alive node holds each secret in `needed`, so the function can run wherever
/// it is placed. With `create`, a secret that no node holds gets a fresh random key (32 bytes,
/// hex) stored on every node; a secret some nodes hold and others lack is never overwritten.
/// `Err` says which secret is missing where, and the command that creates it.
async fn secrets_in_place(
    node: &klf_node_core::Node,
    function: &str,
    needed: &[String],
    create: bool,
) -> Result<(), String> {
    if needed.is_empty() {
        return Ok(());
    }
    let gaps = node.secret_gaps(needed).await;
    if gaps.is_empty() {
        return Ok(());
    }
    let members = node.alive_peers().await.len() + 1;
    let lacking = |name: &String| -> Vec<String> {
        gaps.iter()
            .filter(|g| g.missing.contains(name))
            .map(|g| match &g.unreachable {
                Some(why) => format!("{} (not asked: {why})", g.node),
                None => g.node.clone(),
            })
            .collect()
    };
    let missing: Vec<&String> = needed.iter().filter(|n| !lacking(n).is_empty()).collect();
    if create && gaps.iter().all(|g| g.unreachable.is_none()) {
        let mut created = Vec::new();
        for name in &missing {
            if lacking(name).len() < members {
                return Err(format!(
                    "secret `{name}` is held by some nodes but missing on {}: --create-secrets does \
                     not overwrite a key that exists; copy it there with `klf secret set {name} \
                     --from-file FILE`. Nothing was published.",
                    lacking(name).join(", ")
                ));
            }
            let key = klf_security::random_bytes::<32>().map_err(|e| e.to_string())?;
            node.put_secret_everywhere(name, &hex::encode(key))
                .await
                .map_err(|e| format!("creating secret `{name}`: {e}. Nothing was published."))?;
            created.push(name.as_str());
        }
        tracing::info!(%function, secrets = ?created, "generated missing secrets on every node");
        return Ok(());
    }
    let lines: Vec<String> = missing
        .iter()
        .map(|name| format!("`{name}` is missing on {}", lacking(name).join(", ")))
        .collect();
    Err(format!(
        "{function} needs secrets the mesh does not hold: {}. Create each on every node with \
         `klf secret set NAME --from-file FILE` (for example `klf secret set {} --from-file key.txt`), \
         or run again with --create-secrets to generate random keys. Nothing was published.",
        lines.join("; "),
        missing.first().map_or("NAME", |n| n.as_str())
    ))
}

impl AIAgent for Watcher {
    fn id(&self) -> String {
        self.0.id(self.agent_type())
    }
    fn agent_type(&self) -> AgentType {
        AgentType::Monitor
    }
    fn watch(&self, function: String, version: String) -> BoxFuture<'static, AgentResponse> {
        if let Ok(mut watched) = self.1.lock() {
            watched.push((function, version));
        }
        Box::pin(std::future::ready(AgentResponse::Watching))
    }
}

/// A message to an agent actor.
pub enum AgentMsg {
    Communicate(RunContext, AgentMessage, RpcReplyPort<AgentResponse>),
}

/// The actor around one agent. Work runs in a task of its own, so a long test run does not hold
/// up the next message (runs of several requests overlap).
pub struct AgentActor;

impl Actor for AgentActor {
    type Msg = AgentMsg;
    type State = Arc<dyn AIAgent>;
    type Arguments = Arc<dyn AIAgent>;

    async fn pre_start(
        &self,
        _myself: ActorRef<AgentMsg>,
        agent: Arc<dyn AIAgent>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(agent)
    }

    async fn handle(
        &self,
        _myself: ActorRef<AgentMsg>,
        message: AgentMsg,
        agent: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AgentMsg::Communicate(cx, message, reply) => {
                let work = agent.communicate(cx, message);
                tokio::spawn(async move {
                    let _ = reply.send(work.await);
                });
            }
        }
        Ok(())
    }
}

/// What the interpreter is told is deployed (the registry's discover), so a new function may call
/// what exists.
pub fn deployed_functions(catalog: &klf_registry::Catalog) -> Vec<crate::providers::Deployed> {
    catalog
        .deployments()
        .filter(|d| d.enabled)
        .filter_map(|d| catalog.served(&d.name))
        .map(|release| crate::providers::Deployed {
            name: release.manifest.name.clone(),
            version: release.manifest.version.to_string(),
            kind: release.manifest.kind.clone(),
            description: release.manifest.description.clone(),
        })
        .collect()
}

/// The six agents of one node.
pub struct Agents {
    pub actors: Vec<(AgentType, ActorRef<AgentMsg>)>,
    /// What the Monitor agent was asked to watch.
    pub watched: Arc<Mutex<Vec<(String, String)>>>,
}

impl Agents {
    /// Spawns one actor per role.
    pub async fn spawn(context: AgentContext) -> Result<Self, ActorProcessingErr> {
        let watched = Arc::new(Mutex::new(Vec::new()));
        let agents: Vec<Arc<dyn AIAgent>> = vec![
            Arc::new(Interpreter(context.clone())),
            Arc::new(Generator(context.clone())),
            Arc::new(Validator(context.clone())),
            Arc::new(Tester(context.clone())),
            Arc::new(Deployer(context.clone())),
            Arc::new(Watcher(context, watched.clone())),
        ];
        let mut actors = Vec::new();
        for agent in agents {
            let role = agent.agent_type();
            let (actor, _) = Actor::spawn(None, AgentActor, agent).await?;
            actors.push((role, actor));
        }
        Ok(Self { actors, watched })
    }

    pub fn get(&self, role: AgentType) -> Option<&ActorRef<AgentMsg>> {
        self.actors.iter().find(|(r, _)| *r == role).map(|(_, a)| a)
    }

    pub fn stop(&self) {
        for (_, actor) in &self.actors {
            actor.stop(None);
        }
    }
}
