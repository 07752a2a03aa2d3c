//! The registry actor: owns the catalog, persists it, publishes snapshots to readers, and keeps it
//! in step with peers by anti-entropy (digest, then pull what differs).
//!
//! Readers (placement, router, API) do not queue behind the actor: they read the latest snapshot
//! from a `watch` channel. Writes and replication go through the actor's mailbox.

use std::sync::Arc;
use std::time::Duration;

use klf_proto::{ArtifactFetch, CatalogDigest, CatalogPull, CatalogPush, DigestEntry, Frame};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::artifact::{self, ArtifactError, Signer};
use super::catalog::{
    Canary, Catalog, DependencyError, Deployment, PerfRecord, PublishConflict, Record, Release,
    Versioned, Yank, canary_key, deployment_key, perf_key, yank_key,
};
use klf_functions::package::Package;
use klf_mesh::membership::alive_members;
use klf_mesh::{MemberId, MembershipMsg, PeerAddr, TransportMsg};
use klf_store::{Store, StoreError};

/// How long one anti-entropy exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Registry failures, each with a message a person can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Conflict(#[from] PublishConflict),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Dependencies(Vec<DependencyError>),
    #[error("no function named {0}")]
    NotFound(String),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("registry: {0}")]
    Store(#[source] Arc<StoreError>),
    /// A catalog record that cannot be encoded for the store; nothing was stored.
    #[error("a catalog record cannot be encoded: {0}")]
    Encode(#[source] klf_proto::ProtoError),
    #[error("artifact {0} is not held by this node or any reachable peer")]
    ArtifactUnavailable(String),
    #[error(
        "{name}@{version} is not published (published: {}); roll back to one of those",
        if published.is_empty() { "none".to_string() } else { published.join(", ") }
    )]
    VersionNotPublished {
        name: String,
        version: semver::Version,
        published: Vec<String>,
    },
    #[error("{0} is not deployed; deploy it before pinning a version")]
    NotDeployed(String),
    #[error("{0} has no canary running")]
    NoCanary(String),
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        Self::Store(Arc::new(e))
    }
}

/// Arguments of the registry actor.
pub struct RegistryArgs {
    pub store: Arc<Store>,
    pub node_id: String,
    pub signer: Signer,
    pub ca_der: Vec<u8>,
    pub transport: ActorRef<TransportMsg>,
    pub membership: ActorRef<MembershipMsg>,
    pub anti_entropy_every: Duration,
    /// Where snapshots are published.
    pub snapshots: watch::Sender<Arc<Catalog>>,
}

/// The registry's public face: publishing, lookups and replication.
pub enum RegistryMsg {
    /// Register a package and deploy it with `replicas` instances.
    Publish {
        package: Box<Package>,
        replicas: u32,
        owner: String,
        reply: RpcReplyPort<Result<Release, RegistryError>>,
    },
    /// Register a package as a canary of its deployed function: the deployment stays pinned to
    /// the version it serves now, and one node serves the new one beside it (see
    /// [`crate::catalog::Canary`]). Without a served version to compare with it is a plain deploy.
    PublishCanary {
        package: Box<Package>,
        owner: String,
        reply: RpcReplyPort<Result<Release, RegistryError>>,
    },
    /// End the canary of `name`: promoted, the deployment serves the canary's version everywhere;
    /// else it stays pinned to the stable one. Answers the canary that ended.
    EndCanary {
        name: String,
        promote: bool,
        reply: RpcReplyPort<Result<Canary, RegistryError>>,
    },
    /// Unregister one version, or the whole function (and its deployment).
    Unregister {
        name: String,
        version: Option<semver::Version>,
        reply: RpcReplyPort<Result<Vec<String>, RegistryError>>,
    },
    /// Pin the deployment of `name` to a published `version` (a rollback): last writer wins, and
    /// the next deploy unpins.
    Pin {
        name: String,
        version: semver::Version,
        reply: RpcReplyPort<Result<Deployment, RegistryError>>,
    },
    /// Yank a published `version` of `name`: dependency resolution skips it from now on, on
    /// every node (the record replicates like any other).
    Yank {
        name: String,
        version: semver::Version,
        reason: String,
        by: String,
        reply: RpcReplyPort<Result<Yank, RegistryError>>,
    },
    /// Store the validator's performance figures of a published release beside it.
    RecordPerf {
        record: Box<PerfRecord>,
        reply: RpcReplyPort<Result<(), RegistryError>>,
    },
    /// The highest live release of `name` matching `range`.
    Get {
        name: String,
        range: semver::VersionReq,
        reply: RpcReplyPort<Option<Release>>,
    },
    /// Every live release.
    Discover(RpcReplyPort<Vec<Release>>),
    /// Live releases of a manifest `type`.
    FindByType {
        kind: String,
        reply: RpcReplyPort<Vec<Release>>,
    },
    /// The concrete releases a manifest's dependencies resolve to, dependencies first.
    ResolveDependencies {
        manifest: Box<klf_functions::package::Manifest>,
        reply: RpcReplyPort<Result<Vec<Release>, RegistryError>>,
    },
    /// Whether a manifest's dependencies all resolve: `Ok`, or every missing dependency and
    /// cycle by name.
    ValidateDependencies {
        manifest: Box<klf_functions::package::Manifest>,
        reply: RpcReplyPort<Result<(), Vec<DependencyError>>>,
    },
    /// A peer's digest: answered with the records it lacks; keys it has that we lack are pulled.
    Digest {
        from: PeerAddr,
        digest: Vec<(String, [u8; 32])>,
        reply: RpcReplyPort<Vec<(String, Versioned)>>,
    },
    /// Records asked for by key.
    Pull {
        keys: Vec<String>,
        reply: RpcReplyPort<Vec<(String, Versioned)>>,
    },
    /// Records from a peer.
    Merge(Vec<(String, Versioned)>),
    /// Artifact bytes held here.
    Artifact {
        hash: [u8; 32],
        reply: RpcReplyPort<Option<Vec<u8>>>,
    },
    /// The package of a release: from the store, or fetched from peers and verified.
    Package {
        release: Box<Release>,
        reply: RpcReplyPort<Result<Package, RegistryError>>,
    },
    /// Run an anti-entropy round with one random alive member (or every member).
    AntiEntropy { all: bool },
}

/// The registry actor.
pub struct Registry;

/// Its state.
pub struct RegistryState {
    catalog: Catalog,
    store: Arc<Store>,
    hlc: uhlc::HLC,
    signer: Arc<Signer>,
    ca_der: Arc<Vec<u8>>,
    transport: ActorRef<TransportMsg>,
    membership: ActorRef<MembershipMsg>,
    snapshots: watch::Sender<Arc<Catalog>>,
}

/// Encodes records for a `CatalogPush`, skipping (and logging) any that do not encode: the peer
/// still gets the others, and asks again on its next round.
pub fn encode_records(records: &[(String, Versioned)]) -> Vec<Vec<u8>> {
    records
        .iter()
        .filter_map(|record| match klf_proto::encode_value(record) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                warn!(key = %record.0, %error, "a catalog record does not encode; not sent");
                None
            }
        })
        .collect()
}

/// Decodes the records of a `CatalogPush`, skipping (and logging) any that do not decode.
pub fn decode_records(push: &CatalogPush) -> Vec<(String, Versioned)> {
    push.records
        .iter()
        .filter_map(
            |bytes| match klf_proto::decode_value::<(String, Versioned)>(bytes) {
                Ok(record) => Some(record),
                Err(error) => {
                    debug!(%error, "skipping a catalog record that does not decode");
                    None
                }
            },
        )
        .collect()
}

fn digest_frame(catalog: &Catalog) -> Frame {
    Frame::CatalogDigest(CatalogDigest {
        entries: catalog
            .digest()
            .into_iter()
            .map(|(key, hash)| DigestEntry { key, hash })
            .collect(),
    })
}

async fn alive_peers(membership: &ActorRef<MembershipMsg>, me: &str) -> Vec<MemberId> {
    alive_members(membership)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.node_id != me)
        .collect()
}

fn peer_of(member: &MemberId) -> PeerAddr {
    PeerAddr {
        addr: member.addr.clone(),
        node_id: Some(member.node_id.clone()),
    }
}

async fn request(transport: &ActorRef<TransportMsg>, to: PeerAddr, frame: Frame) -> Option<Frame> {
    match transport
        .call(
            |reply| TransportMsg::Request { to, frame, reply },
            Some(EXCHANGE_TIMEOUT),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(Ok(answer))) => Some(answer),
        Ok(ractor::rpc::CallResult::Success(Err(error))) => {
            debug!(%error, "registry exchange failed");
            None
        }
        _ => None,
    }
}

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RegistryArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut catalog = Catalog::default();
        for (key, bytes) in args.store.catalog_records()? {
            match Versioned::decode(&bytes) {
                Ok(record) => {
                    catalog.merge(key, record);
                }
                Err(error) => {
                    warn!(%key, %error, "skipping a stored catalog record that does not decode")
                }
            }
        }
        let id_bytes = hex::decode(&args.node_id).unwrap_or_default();
        let hlc = match uhlc::ID::try_from(id_bytes.as_slice()) {
            Ok(id) => uhlc::HLCBuilder::new().with_id(id).build(),
            Err(_) => uhlc::HLC::default(),
        };
        let _ = args.snapshots.send(Arc::new(catalog.clone()));
        myself.send_interval(args.anti_entropy_every, || RegistryMsg::AntiEntropy {
            all: false,
        });
        info!(records = catalog.len(), "registry started");
        Ok(RegistryState {
            catalog,
            store: args.store,
            hlc,
            signer: Arc::new(args.signer),
            ca_der: Arc::new(args.ca_der),
            transport: args.transport,
            membership: args.membership,
            snapshots: args.snapshots,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Get { name, range, reply } => {
                let _ = reply.send(state.catalog.resolve(&name, &range).cloned());
            }
            RegistryMsg::Discover(reply) => {
                let _ = reply.send(state.catalog.releases().cloned().collect());
            }
            RegistryMsg::FindByType { kind, reply } => {
                let _ = reply.send(state.catalog.find_by_type(&kind).cloned().collect());
            }
            RegistryMsg::ValidateDependencies { manifest, reply } => {
                let _ = reply.send(state.catalog.resolve_dependencies(&manifest).map(drop));
            }
            RegistryMsg::ResolveDependencies { manifest, reply } => {
                let result = state
                    .catalog
                    .resolve_dependencies(&manifest)
                    .map(|releases| releases.into_iter().cloned().collect())
                    .map_err(RegistryError::Dependencies);
                let _ = reply.send(result);
            }
            RegistryMsg::Publish {
                package,
                replicas,
                owner,
                reply,
            } => {
                let result = state.publish(*package, replicas, owner).await;
                if result.is_ok() {
                    let _ = myself.cast(RegistryMsg::AntiEntropy { all: true });
                }
                let _ = reply.send(result);
            }
            RegistryMsg::PublishCanary {
                package,
                owner,
                reply,
            } => {
                let result = state.publish_canary(*package, owner).await;
                if result.is_ok() {
                    let _ = myself.cast(RegistryMsg::AntiEntropy { all: true });
                }
                let _ = reply.send(result);
            }
            RegistryMsg::EndCanary {
                name,
                promote,
                reply,
            } => {
                let result = state.end_canary(&name, promote).await;
                if result.is_ok() {
                    let _ = myself.cast(RegistryMsg::AntiEntropy { all: true });
                }
                let _ = reply.send(result);
            }
            RegistryMsg::Unregister {
                name,
                version,
                reply,
            } => {
                let result = state.unregister(&name, version.as_ref()).await;
                if result.is_ok() {
                    let _ = myself.cast(RegistryMsg::AntiEntropy { all: true });
                }
                let _ = reply.send(result);
            }
            RegistryMsg::Yank {
                name,
                version,
                reason,
                by,
                reply,
            } => {
                let result = state.yank(&name, version, reason, by).await;
                if result.is_ok() {
                    let _ = myself.cast(RegistryMsg::AntiEntropy { all: true });
                }
                let _ = reply.send(result);
            }
            RegistryMsg::RecordPerf { record, reply } => {
                let key = perf_key(&record.name, &record.version);
                let versioned = Versioned {
                    stamp: state.stamp(),
                    record: Record::Perf(*record),
                };
                let result = state.commit(vec![(key, versioned)]).await;
                if result.is_ok() {
                    let _ = myself.cast(RegistryMsg::AntiEntropy { all: true });
                }
                let _ = reply.send(result);
            }
            RegistryMsg::Pin {
                name,
                version,
                reply,
            } => {
                let result = state.pin(&name, version).await;
                if result.is_ok() {
                    let _ = myself.cast(RegistryMsg::AntiEntropy { all: true });
                }
                let _ = reply.send(result);
            }
            RegistryMsg::Digest {
                from,
                digest,
                reply,
            } => {
                let _ = reply.send(state.catalog.newer_than(&digest));
                let wanted = state.catalog.wanted_from(&digest);
                if !wanted.is_empty() {
                    let transport = state.transport.clone();
                    let myself = myself.clone();
                    tokio::spawn(async move {
                        let pull = Frame::CatalogPull(CatalogPull { keys: wanted });
                        if let Some(Frame::CatalogPush(push)) =
                            request(&transport, from, pull).await
                        {
                            let _ = myself.cast(RegistryMsg::Merge(decode_records(&push)));
                        }
                    });
                }
            }
            RegistryMsg::Pull { keys, reply } => {
                let records = keys
                    .into_iter()
                    .filter_map(|k| state.catalog.get(&k).cloned().map(|v| (k, v)))
                    .collect();
                let _ = reply.send(records);
            }
            RegistryMsg::Merge(records) => {
                state.merge(records).await;
                state.replicate_artifacts();
            }
            RegistryMsg::Artifact { hash, reply } => {
                let _ = reply.send(state.store.artifact(&hash).ok().flatten());
            }
            RegistryMsg::Package { release, reply } => state.package(*release, reply),
            RegistryMsg::AntiEntropy { all } => {
                state.anti_entropy(&myself, all);
                state.replicate_artifacts();
            }
        }
        Ok(())
    }
}

impl RegistryState {
    fn stamp(&self) -> uhlc::Timestamp {
        self.hlc.new_timestamp()
    }

    /// Merges `records` into the catalog and stores those that changed it.
    ///
    /// The store's commit runs on the blocking pool, and the actor waits for it before it takes
    /// its next message: this actor's commits happen one at a time, in the order it makes them,
    /// and a slow disk holds up the registry's mailbox, not a runtime worker.
    async fn commit(&mut self, records: Vec<(String, Versioned)>) -> Result<(), RegistryError> {
        // Encoded first: a record that cannot be stored is not merged either.
        let records = records
            .into_iter()
            .map(|(key, record)| Ok((key, record.encode()?, record)))
            .collect::<Result<Vec<_>, klf_proto::ProtoError>>()
            .map_err(RegistryError::Encode)?;
        let mut changed = Vec::new();
        for (key, bytes, record) in records {
            let _ = self.hlc.update_with_timestamp(&record.stamp);
            if self.catalog.merge(key.clone(), record) {
                changed.push((key, bytes));
            }
        }
        if !changed.is_empty() {
            self.store
                .unblocked(move |store| store.put_catalog_records(&changed))
                .await?;
            let _ = self.snapshots.send(Arc::new(self.catalog.clone()));
        }
        Ok(())
    }

    async fn merge(&mut self, records: Vec<(String, Versioned)>) {
        let count = records.len();
        if let Err(error) = self.commit(records).await {
            warn!(%error, "could not store merged catalog records");
        } else if count > 0 {
            debug!(count, "merged catalog records from a peer");
        }
    }

    async fn publish(
        &mut self,
        package: Package,
        replicas: u32,
        owner: String,
    ) -> Result<Release, RegistryError> {
        self.catalog
            .resolve_dependencies(&package.manifest)
            .map_err(RegistryError::Dependencies)?;
        let bytes = artifact::pack(&package)?;
        let hash = artifact::hash(&bytes);
        let release = Release {
            manifest: package.manifest.clone(),
            artifact: hash,
            artifact_len: bytes.len() as u64,
            signature: self.signer.sign(&hash)?,
            signer: self.signer.node_id.clone(),
            signer_cert: self.signer.cert_der.clone(),
            owner,
            created_unix_ms: klf_proto::unix_ms(),
        };
        let is_new = self.catalog.check_publish(&release)?;
        self.store
            .unblocked(move |store| store.put_artifact(&hash, &bytes))
            .await?;
        let mut records = Vec::new();
        if is_new {
            records.push((
                release.key(),
                Versioned {
                    stamp: self.stamp(),
                    record: Record::Release(Arc::new(release.clone())),
                },
            ));
        }
        records.push((
            deployment_key(&release.manifest.name),
            Versioned {
                stamp: self.stamp(),
                record: Record::Deployment(Deployment {
                    name: release.manifest.name.clone(),
                    replicas,
                    enabled: true,
                    // A deploy unpins: the new highest version serves.
                    version: None,
                }),
            },
        ));
        self.commit(records).await?;
        info!(id = %release.manifest.id(), replicas, "published");
        // Keep the stored release (its original signature and time) when the same content is
        // published again.
        let key = release.key();
        Ok(match self.catalog.get(&key).map(|v| &v.record) {
            Some(Record::Release(stored)) => (**stored).clone(),
            _ => release,
        })
    }

    async fn publish_canary(
        &mut self,
        package: Package,
        owner: String,
    ) -> Result<Release, RegistryError> {
        let name = package.manifest.name.clone();
        let stable = self
            .catalog
            .served(&name)
            .map(|r| r.manifest.version.clone());
        let deployment = self.catalog.deployment(&name).cloned();
        let (Some(stable), Some(deployment)) = (stable, deployment.filter(|d| d.enabled)) else {
            // Nothing served to compare with: a canary of nothing is a plain deploy.
            return self.publish(package, 1, owner).await;
        };
        let release = self.publish(package, deployment.replicas, owner).await?;
        if release.manifest.version == stable {
            return Ok(release);
        }
        let stamp = self.stamp();
        self.commit(vec![
            (
                deployment_key(&name),
                Versioned {
                    stamp,
                    record: Record::Deployment(Deployment {
                        version: Some(stable.clone()),
                        ..deployment
                    }),
                },
            ),
            (
                canary_key(&name),
                Versioned {
                    stamp: self.stamp(),
                    record: Record::Canary(Canary {
                        name: name.clone(),
                        version: release.manifest.version.clone(),
                        stable: stable.clone(),
                        started_unix_ms: klf_proto::unix_ms(),
                    }),
                },
            ),
        ])
        .await?;
        info!(%name, canary = %release.manifest.version, %stable, "canary started");
        Ok(release)
    }

    async fn end_canary(&mut self, name: &str, promote: bool) -> Result<Canary, RegistryError> {
        let canary = self
            .catalog
            .canary(name)
            .map(|(c, _)| c.clone())
            .ok_or_else(|| RegistryError::NoCanary(name.to_string()))?;
        let deployment = self
            .catalog
            .deployment(name)
            .cloned()
            .ok_or_else(|| RegistryError::NotDeployed(name.to_string()))?;
        let serve = if promote {
            // The canary is the highest version now; unpinned, it serves everywhere.
            Some(canary.version.clone()).filter(|v| {
                self.catalog
                    .versions(name)
                    .first()
                    .is_none_or(|highest| &highest.manifest.version != v)
            })
        } else {
            Some(canary.stable.clone())
        };
        let stamp = self.stamp();
        self.commit(vec![
            (
                deployment_key(name),
                Versioned {
                    stamp,
                    record: Record::Deployment(Deployment {
                        version: serve,
                        ..deployment
                    }),
                },
            ),
            (
                canary_key(name),
                Versioned {
                    stamp: self.stamp(),
                    record: Record::Tombstone,
                },
            ),
        ])
        .await?;
        info!(%name, version = %canary.version, promote, "canary ended");
        Ok(canary)
    }

    /// Refuses a `version` of `name` that is not published, naming the published ones (what pin
    /// and yank both act on).
    fn require_published(
        &self,
        name: &str,
        version: &semver::Version,
    ) -> Result<(), RegistryError> {
        let versions = self.catalog.versions(name);
        if versions.is_empty() {
            return Err(RegistryError::NotFound(name.to_string()));
        }
        if !versions.iter().any(|r| &r.manifest.version == version) {
            return Err(RegistryError::VersionNotPublished {
                name: name.to_string(),
                published: versions
                    .iter()
                    .map(|r| r.manifest.version.to_string())
                    .collect(),
                version: version.clone(),
            });
        }
        Ok(())
    }

    async fn pin(
        &mut self,
        name: &str,
        version: semver::Version,
    ) -> Result<Deployment, RegistryError> {
        self.require_published(name, &version)?;
        let current = self
            .catalog
            .deployment(name)
            .cloned()
            .ok_or_else(|| RegistryError::NotDeployed(name.to_string()))?;
        let deployment = Deployment {
            version: Some(version),
            ..current
        };
        self.commit(vec![(
            deployment_key(name),
            Versioned {
                stamp: self.stamp(),
                record: Record::Deployment(deployment.clone()),
            },
        )])
        .await?;
        info!(%name, version = ?deployment.version, "pinned");
        Ok(deployment)
    }

    async fn yank(
        &mut self,
        name: &str,
        version: semver::Version,
        reason: String,
        by: String,
    ) -> Result<Yank, RegistryError> {
        self.require_published(name, &version)?;
        let yank = Yank {
            name: name.to_string(),
            version,
            reason,
            by,
            yanked_unix_ms: klf_proto::unix_ms(),
        };
        self.commit(vec![(
            yank_key(name, &yank.version),
            Versioned {
                stamp: self.stamp(),
                record: Record::Yank(yank.clone()),
            },
        )])
        .await?;
        info!(%name, version = %yank.version, reason = %yank.reason, "yanked");
        Ok(yank)
    }

    async fn unregister(
        &mut self,
        name: &str,
        version: Option<&semver::Version>,
    ) -> Result<Vec<String>, RegistryError> {
        let versions: Vec<String> = self
            .catalog
            .versions(name)
            .into_iter()
            .filter(|r| version.is_none_or(|v| &r.manifest.version == v))
            .map(|r| r.key())
            .collect();
        let deployed = self.catalog.deployment(name).is_some();
        if versions.is_empty() && (version.is_some() || !deployed) {
            return Err(RegistryError::NotFound(match version {
                Some(v) => format!("{name}@{v}"),
                None => name.to_string(),
            }));
        }
        let mut keys = versions;
        let remaining = self.catalog.versions(name).len() - keys.len();
        if version.is_none() || remaining == 0 {
            keys.push(deployment_key(name));
        }
        let records = keys
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    Versioned {
                        stamp: self.stamp(),
                        record: Record::Tombstone,
                    },
                )
            })
            .collect();
        self.commit(records).await?;
        info!(%name, ?version, "unregistered");
        Ok(keys)
    }

    fn package(&self, release: Release, reply: RpcReplyPort<Result<Package, RegistryError>>) {
        let store = self.store.clone();
        let ca = self.ca_der.clone();
        let transport = self.transport.clone();
        let membership = self.membership.clone();
        let me = self.signer.node_id.clone();
        tokio::spawn(async move {
            let result = fetch_package(&release, &store, &ca, &transport, &membership, &me).await;
            let _ = reply.send(result);
        });
    }

    /// Fetches the artifacts of live releases this node lacks, a few per round, so every node holds
    /// every artifact: a function survives the loss of the node that published it.
    fn replicate_artifacts(&self) {
        const PER_ROUND: usize = 4;
        let missing: Vec<Release> = self
            .catalog
            .releases()
            .filter(|r| matches!(self.store.artifact(&r.artifact), Ok(None)))
            .take(PER_ROUND)
            .cloned()
            .collect();
        for release in missing {
            let store = self.store.clone();
            let ca = self.ca_der.clone();
            let transport = self.transport.clone();
            let membership = self.membership.clone();
            let me = self.signer.node_id.clone();
            tokio::spawn(async move {
                if let Err(error) =
                    fetch_package(&release, &store, &ca, &transport, &membership, &me).await
                {
                    debug!(id = %release.manifest.id(), %error, "artifact not replicated yet");
                }
            });
        }
    }

    fn anti_entropy(&self, _myself: &ActorRef<RegistryMsg>, all: bool) {
        let frame = digest_frame(&self.catalog);
        let transport = self.transport.clone();
        let membership = self.membership.clone();
        let me = self.signer.node_id.clone();
        let myself = _myself.clone();
        tokio::spawn(async move {
            let mut peers = alive_peers(&membership, &me).await;
            if !all {
                use rand::seq::SliceRandom;
                peers.shuffle(&mut rand::rng());
                peers.truncate(1);
            }
            for peer in peers {
                let (transport, frame, myself) = (transport.clone(), frame.clone(), myself.clone());
                tokio::spawn(async move {
                    if let Some(Frame::CatalogPush(push)) =
                        request(&transport, peer_of(&peer), frame).await
                    {
                        let records = decode_records(&push);
                        if !records.is_empty() {
                            let _ = myself.cast(RegistryMsg::Merge(records));
                        }
                    }
                });
            }
        });
    }
}

/// Rounds over the peers before an artifact is declared unavailable, and the pause after the first.
const FETCH_ROUNDS: u32 = 3;
const FETCH_BACKOFF: Duration = Duration::from_millis(150);

/// The package of `release`: from the local store, else from the peers (the signer first), verified
/// before it is stored or used.
async fn fetch_package(
    release: &Release,
    store: &Arc<Store>,
    ca: &[u8],
    transport: &ActorRef<TransportMsg>,
    membership: &ActorRef<MembershipMsg>,
    me: &str,
) -> Result<Package, RegistryError> {
    if let Some(bytes) = store.artifact(&release.artifact)? {
        artifact::verify(release, &bytes, ca)?;
        return Ok(artifact::unpack(&bytes)?);
    }
    let mut last_error = None;
    // A peer that just reconnected, or one busy answering, can miss one exchange: a few short
    // rounds before saying no node holds it.
    for round in 0..FETCH_ROUNDS {
        if round > 0 {
            tokio::time::sleep(FETCH_BACKOFF * round).await;
        }
        let mut peers = alive_peers(membership, me).await;
        peers.sort_by_key(|p| p.node_id != release.signer);
        for peer in peers {
            let fetch = Frame::ArtifactFetch(ArtifactFetch {
                hash: release.artifact,
            });
            let answer = request(transport, peer_of(&peer), fetch).await;
            let Some(Frame::Artifact(found)) = answer else {
                debug!(from = %peer.node_id, round, answer = ?answer.map(|f| f.kind_name()), "artifact not fetched");
                continue;
            };
            match artifact::verify(release, &found.bytes, ca) {
                Ok(()) => {
                    let (hash, bytes) = (release.artifact, found.bytes.clone());
                    store
                        .unblocked(move |store| store.put_artifact(&hash, &bytes))
                        .await?;
                    debug!(id = %release.manifest.id(), from = %peer.node_id, "fetched artifact");
                    return Ok(artifact::unpack(&found.bytes)?);
                }
                Err(error) => {
                    warn!(%error, from = %peer.node_id, "refusing an artifact that does not verify");
                    last_error = Some(error);
                }
            }
        }
        if last_error.is_some() {
            break;
        }
    }
    Err(match last_error {
        Some(error) => RegistryError::Artifact(error),
        None => RegistryError::ArtifactUnavailable(hex::encode(release.artifact)),
    })
}
