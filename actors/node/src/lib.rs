//! A running node: its actors (transport, membership, registry, placer) and router wired together
//! over one data dir.
//!
//! The `klf` binary and the in-process tests both start nodes through [`Node::start`]; creating a
//! mesh ([`init_mesh`]) and joining one ([`join_mesh`]) prepare the data dir beforehand.

pub mod data_dir;
mod frames;
mod ops;
pub use ops::GatheredSpans;
pub mod secrets;
pub mod validator;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use klf_proto::{Frame, Limits};
use ractor::{Actor, ActorRef};
use tokio::sync::watch;
use tracing::info;

pub use data_dir::{DataDir, NodeSettings};

use self::frames::NodeFrames;
use futures_util::future::BoxFuture;
use klf_functions::analysis::{self, Analysis};
use klf_functions::native::is_native;
use klf_functions::package::Package;
use klf_functions::sandbox::{SandboxError, check};
use klf_mesh::join::{JoinError, JoinService, check_node_name, member_of_seed};
use klf_mesh::{
    MemberId, MemberView, Membership, MembershipArgs, MembershipConfig, MembershipMsg, PeerAddr,
    Transport, TransportArgs, TransportMsg,
};
use klf_model::ModelError;
use klf_model::{ModelConfig, ModelProvider, OpenAiCompatible};
use klf_registry::artifact::ArtifactError;
use klf_registry::artifact::Signer;
use klf_registry::{Catalog, Registry, RegistryArgs, RegistryError, RegistryMsg, Release};
use klf_router::instances::{function_code, sandbox_limits};
use klf_router::placer::{Placer, PlacerArgs, PlacerMsg};
use klf_router::{HostServices, InvokeError, InvokeOutcome, InvokeRequest, Router, RouterArgs};
use klf_security::{ApiToken, JoinToken, MeshCa, PeerIdentity, SecurityError, files};
use klf_store::{Store, StoreError};

/// Errors of starting, joining or running a node. Where another layer failed, its error is the
/// source.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// Boxed: a join error carries the seed's answer, and every node result would pay its size.
    #[error(transparent)]
    Join(Box<JoinError>),
    /// The data dir or the options do not allow what was asked (the message says what to do).
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Store {
        path: std::path::PathBuf,
        #[source]
        source: StoreError,
    },
    /// This node's key cannot sign artifacts.
    #[error("{0}")]
    Signer(#[source] ArtifactError),
    /// The model endpoint configured for `ctx.model` is unusable.
    #[error("{0}")]
    Model(#[source] ModelError),
    /// The HTTP client behind `ctx.http` cannot be built.
    #[error("{0}")]
    Http(#[source] klf_functions::http::client::ClientError),
    /// An actor did not answer as it should (the message says how).
    #[error("actor failed: {0}")]
    Actor(String),
    /// An actor could not be started or reached: `what` names it, the source says why.
    #[error("actor failed: {what}: {source}")]
    ActorFailed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Registry(RegistryError),
    #[error("the function's code is refused: {0}")]
    InvalidCode(SandboxError),
    /// Static analysis found errors: each with its rule and location.
    #[error(
        "the function's code is refused by static analysis: {}",
        errors.iter().map(|f| format!("{file}:{f}")).collect::<Vec<_>>().join("; ")
    )]
    StaticAnalysis {
        file: String,
        errors: Vec<klf_functions::analysis::Finding>,
    },
    /// The performance test measured more than the budget allows.
    #[error("{id} is over its performance budget: {}", over.join("; "))]
    OverBudget { id: String, over: Vec<String> },
    #[error(
        "{} is in use by another klf process (pid {holder}); stop it, or give this node its own --data directory",
        path.display()
    )]
    InUse {
        path: std::path::PathBuf,
        holder: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<JoinError> for NodeError {
    fn from(error: JoinError) -> Self {
        Self::Join(Box::new(error))
    }
}

impl NodeError {
    /// The actor `what` failed with `source`.
    fn actor(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::ActorFailed {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// How to run a node (what `klf up` takes on its command line).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// UDP address to bind (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Address peers dial; defaults to the bound address when that is a specific IP.
    pub advertise: Option<String>,
    /// The HTTP API address, as peers and `klf members` should show it.
    pub api: String,
    /// Where local clients (`klf … --data DIR`) reach the API, saved in node.json; defaults to `api`.
    pub local_api: Option<String>,
    pub membership: MembershipConfig,
    pub limits: Limits,
    /// How often the catalog is compared with one random peer.
    pub anti_entropy_every: Duration,
    /// The OpenAI-compatible endpoint behind `ctx.model`; `None` leaves the node without one.
    pub model: Option<ModelConfig>,
    /// Address blocks `ctx.http.fetch` may reach although they are loopback, private,
    /// link-local… (`klf up --http-allow`); only the operator opens them, never a manifest.
    pub http_allow: Vec<klf_functions::http::Cidr>,
}

impl RunOptions {
    /// Loopback on a free port, default timings: what tests and the demo use.
    pub fn loopback() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            api: String::new(),
            local_api: None,
            membership: MembershipConfig::default(),
            limits: Limits::default(),
            anti_entropy_every: Duration::from_secs(2),
            model: None,
            http_allow: Vec::new(),
        }
    }
}

/// Creates a new mesh in `dir`: the CA, this node's key and certificate, an admin API token.
pub fn init_mesh(dir: &DataDir, name: &str, mesh_name: &str) -> Result<NodeSettings, NodeError> {
    check_node_name(name).map_err(NodeError::Config)?;
    if dir.is_initialized() {
        return Err(NodeError::Config(format!(
            "{} already holds a node; use another --data directory or `klf up --data {}` to run it",
            dir.root().display(),
            dir.root().display()
        )));
    }
    dir.create()?;
    let mesh_id = hex::encode(klf_security::random_bytes::<8>()?);
    let (ca, ca_key_pem) = MeshCa::create(&mesh_id)?;
    let key = rcgen::KeyPair::generate().map_err(SecurityError::from)?;
    let (node_id, cert) = ca.issue_node_cert(&key, name)?;
    files::write_private(&dir.ca_key(), ca_key_pem.as_bytes())?;
    dir.save_certificate(&dir.ca_cert(), ca.cert_der())?;
    files::write_private(&dir.node_key(), key.serialize_pem().as_bytes())?;
    dir.save_certificate(&dir.node_cert(), &cert)?;
    dir.create_admin_token()?;
    let settings = NodeSettings {
        name: name.to_string(),
        node_id,
        mesh_id,
        mesh_name: mesh_name.to_string(),
        listen: None,
        advertise: None,
        api: None,
    };
    dir.save_settings(&settings)?;
    Ok(settings)
}

/// Joins the mesh a token names: redeems it at the seed and stores the new identity in `dir`.
pub async fn join_mesh(
    dir: &DataDir,
    token_text: &str,
    name: &str,
    advertise: &str,
    api: &str,
) -> Result<NodeSettings, NodeError> {
    if dir.is_initialized() {
        return Err(NodeError::Config(format!(
            "{} already holds a node identity; omit --join to restart it",
            dir.root().display()
        )));
    }
    let token = JoinToken::decode(token_text)?;
    let outcome = klf_mesh::join::redeem(&token, name, advertise, api).await?;
    dir.create()?;
    files::write_private(&dir.node_key(), outcome.key_pem.as_bytes())?;
    dir.save_certificate(&dir.node_cert(), &outcome.accept.cert_der)?;
    dir.save_certificate(&dir.ca_cert(), &outcome.accept.ca_der)?;
    // Refuse to keep credentials that do not fit together (a broken seed).
    dir.load_credentials()?;
    dir.create_admin_token()?;
    let seeds: Vec<MemberId> = outcome
        .accept
        .seeds
        .into_iter()
        .map(member_of_seed)
        .collect();
    dir.save_peers(&seeds)?;
    let settings = NodeSettings {
        name: name.to_string(),
        node_id: outcome.accept.node_id,
        mesh_id: outcome.accept.mesh_id,
        mesh_name: outcome.accept.mesh_name,
        listen: None,
        advertise: Some(advertise.to_string()),
        api: Some(api.to_string()),
    };
    dir.save_settings(&settings)?;
    Ok(settings)
}

/// Nothing is published that static analysis refuses or that does not compile: every deploy path
/// (`klf fn deploy`, the API, the Chef) comes through here, so the same rules hold for all of them.
/// Errors (rule, line and column) refuse the package before the catalog or any peer sees it; the
/// analysis is returned so that callers can report its warnings.
pub async fn check_code(package: &Package) -> Result<Analysis, NodeError> {
    if is_native(&package.manifest.entry) {
        return Ok(Analysis::default());
    }
    let report = analysis::analyze(&package.manifest.entry, &package.source);
    let errors: Vec<_> = report.errors().cloned().collect();
    if !errors.is_empty() {
        return Err(NodeError::StaticAnalysis {
            file: package.manifest.entry.clone(),
            errors,
        });
    }
    check(
        &function_code(&package.manifest, &package.source),
        sandbox_limits(&package.manifest),
    )
    .await
    .map_err(NodeError::InvalidCode)?;
    Ok(report)
}

/// A running node.
pub struct Node {
    settings: NodeSettings,
    identity: MemberId,
    local_addr: SocketAddr,
    transport: ActorRef<TransportMsg>,
    membership: ActorRef<MembershipMsg>,
    registry: ActorRef<RegistryMsg>,
    placer: ActorRef<PlacerMsg>,
    router: Router,
    catalog: watch::Receiver<Arc<Catalog>>,
    join: Arc<JoinService>,
    api_tokens: Vec<ApiToken>,
    /// Where `Agent` frames from peers go: set by a layer above (the Chef), if any.
    agents: Arc<OnceLock<Arc<dyn AgentEndpoint>>>,
    data_dir: DataDir,
    /// Weak: the registry owns the store, so a stopped node releases its data dir.
    store: std::sync::Weak<Store>,
    /// Held while the actors run; released when they stop (so the dir can be started again).
    lock: std::sync::Mutex<Option<data_dir::DataDirLock>>,
    ops: ops::NodeOps,
}

/// Answers `Agent` frames from peers (the Chef's agents, when they run on several nodes). The node
/// itself knows no agents: the layer that does installs one with [`Node::set_agent_endpoint`].
pub trait AgentEndpoint: Send + Sync + 'static {
    fn handle(
        &self,
        from: PeerIdentity,
        message: klf_proto::AgentMessage,
    ) -> BoxFuture<'static, Result<klf_proto::AgentMessage, String>>;
}

impl Node {
    /// Starts the node stored in `dir`: transport, then membership, announcing to known peers.
    pub async fn start(dir: &DataDir, options: RunOptions) -> Result<Self, NodeError> {
        if !dir.is_initialized() {
            return Err(NodeError::Config(format!(
                "{} holds no node identity: run `klf init --data {0}` to create a mesh, or `klf up --join TOKEN` to join one",
                dir.root().display()
            )));
        }
        // First, before anything binds a port or speaks for this node id.
        let lock = dir.lock()?;
        let mut settings = dir.load_settings()?;
        let credentials = dir.load_credentials()?;
        let api_tokens = dir.load_api_tokens()?;
        let (transport, _) = Actor::spawn(
            None,
            Transport,
            TransportArgs {
                listen: options.listen,
                credentials,
                mesh_id: settings.mesh_id.clone(),
                limits: options.limits,
            },
        )
        .await
        .map_err(|e| NodeError::actor(format!("transport on {}", options.listen), e))?;
        let local_addr = transport
            .call(TransportMsg::LocalAddr, None)
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
            .ok_or_else(|| NodeError::Actor("transport did not report its address".into()))?;
        let advertise = match &options.advertise {
            Some(a) => a.clone(),
            None if local_addr.ip().is_unspecified() => {
                transport.stop(None);
                return Err(NodeError::Config(format!(
                    "--listen {} binds every interface; pass --advertise HOST:PORT so peers know where to reach this node",
                    options.listen
                )));
            }
            None => local_addr.to_string(),
        };
        let identity = MemberId {
            node_id: settings.node_id.clone(),
            name: settings.name.clone(),
            addr: advertise.clone(),
            api: options.api.clone(),
            generation: klf_proto::unix_ms(),
        };
        let (membership, _) = Actor::spawn(
            None,
            Membership,
            MembershipArgs {
                me: identity.clone(),
                transport: transport.clone(),
                seeds: dir.known_peers(),
                config: options.membership.clone(),
                peers_file: Some(dir.peers()),
            },
        )
        .await
        .map_err(|e| NodeError::actor("membership", e))?;
        let join = Arc::new(JoinService::new(
            dir.load_ca()?,
            dir.token_book()?,
            settings.mesh_id.clone(),
            settings.mesh_name.clone(),
            membership.clone(),
        ));
        let store = Arc::new(
            Store::open_patiently(&dir.store(), Duration::from_secs(5))
                .await
                .map_err(|source| NodeError::Store {
                    path: dir.store(),
                    source,
                })?,
        );
        let credentials = dir.load_credentials()?;
        let (snapshots, catalog) = watch::channel(Arc::new(Catalog::default()));
        let (registry, _) = Actor::spawn(
            None,
            Registry,
            RegistryArgs {
                store: store.clone(),
                node_id: settings.node_id.clone(),
                signer: Signer::new(&credentials).map_err(NodeError::Signer)?,
                ca_der: credentials.ca_der.to_vec(),
                transport: transport.clone(),
                membership: membership.clone(),
                anti_entropy_every: options.anti_entropy_every,
                snapshots,
            },
        )
        .await
        .map_err(|e| NodeError::actor("registry", e))?;
        let (alive_tx, alive) = watch::channel(Arc::new(Vec::new()));
        let link = ractor::call_t!(transport, TransportMsg::Handle, 5_000)
            .map_err(|e| NodeError::actor("transport", e))?;
        let router = Router::new(RouterArgs {
            me: settings.node_id.clone(),
            catalog: catalog.clone(),
            alive: alive.clone(),
            registry: registry.clone(),
            transport: transport.clone(),
            link,
            store: store.clone(),
            services: HostServices {
                node_name: settings.name.clone(),
                secrets_dir: dir.secrets_dir(),
                model: match &options.model {
                    Some(config) => Some(Arc::new(
                        OpenAiCompatible::new(config.clone()).map_err(NodeError::Model)?,
                    ) as Arc<dyn ModelProvider>),
                    None => None,
                },
                http: Some(Arc::new(
                    klf_functions::http::HttpClient::new(klf_functions::http::AddressPolicy::new(
                        options.http_allow.clone(),
                    ))
                    .map_err(NodeError::Http)?,
                )),
            },
        });
        let (placer, _) = Actor::spawn(
            None,
            Placer,
            PlacerArgs {
                me: settings.node_id.clone(),
                router: router.clone(),
                membership: membership.clone(),
                catalog: catalog.clone(),
                alive: alive_tx,
                every: Duration::from_secs(1),
            },
        )
        .await
        .map_err(|e| NodeError::actor("placer", e))?;
        let agents: Arc<OnceLock<Arc<dyn AgentEndpoint>>> = Arc::default();
        let ops = ops::NodeOps {
            me: settings.node_id.clone(),
            me_name: settings.name.clone(),
            router: router.clone(),
            registry: registry.clone(),
            membership: membership.clone(),
            transport: transport.clone(),
            alive,
        };
        let _ = transport.cast(TransportMsg::SetHandler(Arc::new(NodeFrames {
            membership: membership.clone(),
            registry: registry.clone(),
            router: router.clone(),
            join: join.clone(),
            agents: agents.clone(),
            secrets_dir: dir.secrets_dir(),
        })));
        settings.listen = Some(options.listen.to_string());
        settings.advertise = Some(advertise);
        settings.api = Some(
            options
                .local_api
                .clone()
                .unwrap_or_else(|| options.api.clone()),
        );
        dir.save_settings(&settings)?;
        info!(name = %settings.name, node_id = %settings.node_id, %local_addr, "node started");
        Ok(Self {
            settings,
            identity,
            local_addr,
            transport,
            membership,
            registry,
            placer,
            router,
            catalog,
            join,
            api_tokens,
            agents,
            data_dir: dir.clone(),
            store: Arc::downgrade(&store),
            lock: std::sync::Mutex::new(Some(lock)),
            ops,
        })
    }

    /// Installs what answers `Agent` frames; false if one is installed already.
    pub fn set_agent_endpoint(&self, endpoint: Arc<dyn AgentEndpoint>) -> bool {
        self.agents.set(endpoint).is_ok()
    }

    /// Sends an `Agent` frame to the member `to` and returns its answer.
    pub async fn agent_request(
        &self,
        to: &MemberId,
        message: klf_proto::AgentMessage,
        timeout: Duration,
    ) -> Result<klf_proto::AgentMessage, NodeError> {
        let peer = PeerAddr {
            addr: to.addr.clone(),
            node_id: Some(to.node_id.clone()),
        };
        let answer = self
            .transport
            .call(
                |reply| TransportMsg::Request {
                    to: peer,
                    frame: Frame::Agent(message),
                    reply,
                },
                Some(timeout),
            )
            .await
            .map_err(|e| NodeError::actor("transport", e))?;
        match answer {
            ractor::rpc::CallResult::Success(Ok(Frame::Agent(reply))) => Ok(reply),
            ractor::rpc::CallResult::Success(Ok(other)) => Err(NodeError::Actor(format!(
                "node {} answered {} to an agent message",
                to.name,
                other.kind_name()
            ))),
            ractor::rpc::CallResult::Success(Err(error)) => {
                Err(NodeError::actor(format!("node {}", to.name), error))
            }
            _ => Err(NodeError::Actor(format!(
                "node {} did not answer the agent message within {timeout:?}",
                to.name
            ))),
        }
    }

    /// The data dir this node runs from.
    pub fn data_dir(&self) -> &DataDir {
        &self.data_dir
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// This node's SWIM identity.
    pub fn identity(&self) -> &MemberId {
        &self.identity
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn transport(&self) -> &ActorRef<TransportMsg> {
        &self.transport
    }

    /// The membership as this node sees it.
    pub async fn members(&self) -> Result<Vec<MemberView>, NodeError> {
        self.membership
            .call(MembershipMsg::Members, Some(Duration::from_secs(2)))
            .await
            .map_err(|e| NodeError::actor("membership", e))?
            .success_or(())
            .map_err(|_| NodeError::Actor("membership did not answer".into()))
    }

    /// Issues a one-time join token that new nodes redeem at this node.
    pub fn create_join_token(&self, ttl: Duration) -> Result<JoinToken, NodeError> {
        Ok(self.join.issue_token(&self.identity.addr, ttl)?)
    }

    /// Whether this node can admit new nodes.
    pub fn holds_ca(&self) -> bool {
        self.join.holds_ca()
    }

    /// The API token a bearer string belongs to, if any.
    pub fn authenticate(&self, bearer: &str) -> Option<&ApiToken> {
        self.api_tokens.iter().find(|t| t.matches(bearer))
    }

    /// The node's store, while the node runs (the layers above keep their own tables in it, for
    /// example the ledger). `None` once the node has stopped.
    pub fn store(&self) -> Option<Arc<Store>> {
        self.store.upgrade()
    }

    /// The members this node sees alive, as the placer last published them (no actor round trip).
    pub fn alive(&self) -> Arc<Vec<MemberId>> {
        self.ops.alive.borrow().clone()
    }

    /// The latest catalog snapshot (no actor round trip).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    /// Waits for the next catalog change (or returns at once if one happened unseen).
    pub async fn catalog_changed(&mut self) {
        let _ = self.catalog.changed().await;
    }

    pub fn registry(&self) -> &ActorRef<RegistryMsg> {
        &self.registry
    }

    /// Asks the registry actor something (a query or a command) and waits for the answer.
    pub async fn ask_registry<T: Send + 'static>(
        &self,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> RegistryMsg,
    ) -> Result<T, NodeError> {
        self.registry
            .call(build, Some(Duration::from_secs(15)))
            .await
            .map_err(|e| NodeError::actor("registry", e))?
            .success_or(())
            .map_err(|_| NodeError::Actor("the registry did not answer in time".into()))
    }

    /// Routes one call to wherever the function runs.
    pub async fn invoke(&self, request: InvokeRequest) -> Result<InvokeOutcome, InvokeError> {
        self.router.invoke(request).await
    }

    /// The router (instances running here, routing).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Registers a package and deploys it with `replicas` instances.
    pub async fn publish(
        &self,
        package: Package,
        replicas: u32,
        owner: &str,
    ) -> Result<Release, NodeError> {
        check_code(&package).await?;
        let owner = owner.to_string();
        self.ask_registry(|reply| RegistryMsg::Publish {
            package: Box::new(package),
            replicas,
            owner,
            reply,
        })
        .await?
        .map_err(NodeError::Registry)
    }

    /// Registers a package as a canary of its deployed function: the mesh keeps serving the
    /// current version, and one node serves the new one beside it until [`Node::end_canary`]
    /// (the Monitor's decision). A function not deployed yet is simply deployed.
    pub async fn publish_canary(
        &self,
        package: Package,
        owner: &str,
    ) -> Result<Release, NodeError> {
        check_code(&package).await?;
        let owner = owner.to_string();
        self.ask_registry(|reply| RegistryMsg::PublishCanary {
            package: Box::new(package),
            owner,
            reply,
        })
        .await?
        .map_err(NodeError::Registry)
    }

    /// Ends the canary of `name`: promoted, its version serves everywhere; else the stable one
    /// keeps serving. Answers the canary that ended.
    pub async fn end_canary(
        &self,
        name: &str,
        promote: bool,
    ) -> Result<klf_registry::Canary, NodeError> {
        let name = name.to_string();
        self.ask_registry(|reply| RegistryMsg::EndCanary {
            name,
            promote,
            reply,
        })
        .await?
        .map_err(NodeError::Registry)
    }

    /// Waits until `name@version` answers a call from this node, or `timeout` passes.
    ///
    /// Any answer of the function itself counts, even an error it raised for `probe` (a sample
    /// input may be bad on purpose, or need a secret this mesh lacks): only routing failures
    /// wait. Between attempts it waits for an event that can change the answer — this node's
    /// catalog, its view of the alive members, or its own instances — not for a timer; a host
    /// that lags behind the catalog waits for the record itself (see the router). Code that cannot
    /// load fails at once.
    pub async fn wait_serving(
        &self,
        name: &str,
        version: &semver::Version,
        probe: serde_json::Value,
        timeout: Duration,
    ) -> Result<(), InvokeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut catalog, mut alive) = (self.catalog.clone(), self.ops.alive.clone());
        let mut instances = self.router.instances().changes();
        let exact = semver::VersionReq {
            comparators: vec![semver::Comparator {
                op: semver::Op::Exact,
                major: version.major,
                minor: Some(version.minor),
                patch: Some(version.patch),
                pre: version.pre.clone(),
            }],
        };
        loop {
            catalog.borrow_and_update();
            alive.borrow_and_update();
            instances.borrow_and_update();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let error = match self
                .invoke(InvokeRequest {
                    range: exact.clone(),
                    ..InvokeRequest::new(name, probe.clone(), left)
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.answered_by_function() => return Ok(()),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => e,
            };
            let changed = async {
                tokio::select! {
                    _ = catalog.changed() => {}
                    _ = alive.changed() => {}
                    _ = instances.changed() => {}
                }
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(InvokeError::new(
                    error.kind,
                    format!(
                        "{name}@{version} did not answer within {timeout:?}; last: {}",
                        error.message
                    ),
                ));
            }
        }
    }

    /// Unregisters one version of a function, or all of it.
    pub async fn unregister(
        &self,
        name: &str,
        version: Option<semver::Version>,
    ) -> Result<Vec<String>, NodeError> {
        let name = name.to_string();
        self.ask_registry(|reply| RegistryMsg::Unregister {
            name,
            version,
            reply,
        })
        .await?
        .map_err(NodeError::Registry)
    }

    /// Yanks `name@version` on every node: dependency resolution skips it from now on.
    pub async fn yank(
        &self,
        name: &str,
        version: semver::Version,
        reason: &str,
        by: &str,
    ) -> Result<klf_registry::Yank, NodeError> {
        let (name, reason, by) = (name.to_string(), reason.to_string(), by.to_string());
        self.ask_registry(|reply| RegistryMsg::Yank {
            name,
            version,
            reason,
            by,
            reply,
        })
        .await?
        .map_err(NodeError::Registry)
    }

    /// Leaves the mesh gracefully (peers are told and acknowledge), then stops the actors.
    pub async fn shutdown(&self) {
        let _ = self
            .membership
            .call(MembershipMsg::Leave, Some(Duration::from_secs(2)))
            .await;
        let _ = self
            .transport
            .call(TransportMsg::Shutdown, Some(Duration::from_secs(2)))
            .await;
        self.stop_actors().await;
        info!(name = %self.settings.name, "node stopped");
    }

    /// Stops the actors without telling anyone (as if the process died), for tests and drills.
    pub async fn kill(&self) {
        self.stop_actors().await;
    }

    /// Stops every actor and waits until each has released what it held (the store file, the port).
    async fn stop_actors(&self) {
        let wait = Some(Duration::from_secs(5));
        let _ = self.placer.stop_and_wait(None, wait).await;
        let _ = self.registry.stop_and_wait(None, wait).await;
        let _ = self.membership.stop_and_wait(None, wait).await;
        let _ = self.transport.stop_and_wait(None, wait).await;
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }
}
