//! The membership actor: SWIM with suspicion (foca), carried over KLF.
//!
//! foca owns the protocol; this actor only carries its packets (as `Gossip` frames through the
//! transport), its timers (as delayed messages to itself) and its notifications. On top of foca it
//! adds what users expect of a mesh:
//! - a graceful leave (`Leave` notices, acknowledged, so peers show the node `left`, not `down`);
//! - rejoining without help: a restarted node announces itself to the peers it knew, and while it
//!   sees nobody alive it keeps announcing (this is also what heals a partition);
//! - the last known peers are saved to the data dir so a restart knows whom to call.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use klf_proto::{Frame, Gossip, LeaveNotice};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::rngs::StdRng;
use tracing::{debug, info, warn};

use super::member::{MemberId, MemberState, MemberView};
use super::transport::{PeerAddr, TransportMsg};
use klf_security::files;

/// Timing of failure detection. The defaults suit a LAN: a killed node is declared down by every
/// peer within about 5 s (one probe period to notice, then the suspicion period).
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// How often a random member is probed.
    pub probe_period: Duration,
    /// How long to wait for a direct probe answer before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// How long a suspect may refute the suspicion before it is declared down.
    pub suspect_to_down_after: Duration,
    /// How often to re-announce to members believed down (heals partitions).
    pub announce_to_down_every: Duration,
    /// How often to check whether this node sees nobody alive and should announce to known peers.
    pub rejoin_every: Duration,
    /// How often to exchange the whole view with one random alive member (push-pull anti-entropy).
    pub sync_every: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(500),
            suspect_to_down_after: Duration::from_secs(3),
            announce_to_down_every: Duration::from_secs(3),
            rejoin_every: Duration::from_secs(2),
            sync_every: Duration::from_secs(5),
        }
    }
}

impl MembershipConfig {
    fn to_foca(&self) -> foca::Config {
        let mut config = foca::Config::new_lan(NonZeroU32::MIN.saturating_add(15));
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.suspect_to_down_after = self.suspect_to_down_after;
        // Leaves room for the frame header inside one QUIC datagram (about 1200 bytes).
        config.max_packet_size = NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN);
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_to_down_every,
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        config
    }
}

/// Arguments of the membership actor.
pub struct MembershipArgs {
    /// This node's identity (a fresh generation).
    pub me: MemberId,
    pub transport: ActorRef<TransportMsg>,
    /// Members to announce to at start (from a join, or remembered from the last run).
    pub seeds: Vec<MemberId>,
    pub config: MembershipConfig,
    /// Where to remember peers between runs.
    pub peers_file: Option<PathBuf>,
}

/// The membership actor's public face.
pub enum MembershipMsg {
    /// A SWIM packet from a peer.
    Gossip(Vec<u8>),
    /// A peer says it is leaving.
    PeerLeft { node_id: String, generation: u64 },
    /// Announce this node to a member (for example a seed learned at join).
    Announce(MemberId),
    /// The membership as users see it, this node included.
    Members(RpcReplyPort<Vec<MemberView>>),
    /// Alive members (this node included), for a joining node to announce to.
    AliveIdentities(RpcReplyPort<Vec<MemberId>>),
    /// Leave the mesh gracefully: tell every peer, then stop gossiping.
    Leave(RpcReplyPort<()>),
    /// Internal: a foca timer fired.
    Timer(Timer<MemberId>),
    /// A peer's whole view (push-pull sync): applied, and answered with ours.
    Sync {
        data: Vec<u8>,
        reply: RpcReplyPort<Vec<u8>>,
    },
    /// Internal: the answer to a sync this node started.
    ApplySync(Vec<u8>),
    /// Internal: periodic check whether to re-announce.
    RejoinTick,
    /// Internal: time to sync with a random member.
    SyncTick,
}

/// The membership actor.
pub struct Membership;

type SwimCore = Foca<MemberId, PostcardCodec, StdRng, NoCustomBroadcast>;

/// The membership actor's state.
pub struct MembershipState {
    foca: SwimCore,
    runtime: AccumulatingRuntime<MemberId>,
    transport: ActorRef<TransportMsg>,
    /// Every peer ever seen (latest identity), for re-announcing and for the peers file.
    known: HashMap<String, MemberId>,
    /// Peers that said goodbye, with the generation that left.
    left: HashMap<String, u64>,
    peers_file: Option<PathBuf>,
    leaving: bool,
    rng: StdRng,
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: MembershipArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let rng: StdRng = rand::make_rng();
        let foca = Foca::new(args.me.clone(), args.config.to_foca(), rng, PostcardCodec);
        let mut state = MembershipState {
            foca,
            runtime: AccumulatingRuntime::new(),
            transport: args.transport,
            known: HashMap::new(),
            left: HashMap::new(),
            peers_file: args.peers_file,
            leaving: false,
            rng: rand::make_rng(),
        };
        for seed in args.seeds {
            if seed.node_id != args.me.node_id {
                state.known.insert(seed.node_id.clone(), seed);
            }
        }
        state.announce_to_known(&myself);
        myself.send_interval(args.config.rejoin_every, || MembershipMsg::RejoinTick);
        myself.send_interval(args.config.sync_every, || MembershipMsg::SyncTick);
        info!(node_id = %args.me.node_id, generation = args.me.generation, "membership started");
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MembershipMsg::Gossip(data) => {
                if state.leaving {
                    return Ok(());
                }
                if let Err(error) = state.foca.handle_data(&data, &mut state.runtime) {
                    debug!(%error, "ignoring a gossip packet");
                }
            }
            MembershipMsg::Timer(timer) => {
                if let Err(error) = state.foca.handle_timer(timer, &mut state.runtime) {
                    debug!(%error, "membership timer");
                }
            }
            MembershipMsg::PeerLeft {
                node_id,
                generation,
            } => {
                info!(%node_id, generation, "peer left the mesh");
                state.left.insert(node_id, generation);
            }
            MembershipMsg::Announce(member) => {
                state.known.insert(member.node_id.clone(), member.clone());
                if let Err(error) = state.foca.announce(member, &mut state.runtime) {
                    debug!(%error, "announce");
                }
            }
            MembershipMsg::Members(reply) => {
                let _ = reply.send(state.view());
            }
            MembershipMsg::AliveIdentities(reply) => {
                let mut alive: Vec<MemberId> =
                    state.foca.iter_members().map(|m| m.id().clone()).collect();
                alive.push(state.foca.identity().clone());
                let _ = reply.send(alive);
            }
            MembershipMsg::Leave(reply) => {
                state.leave(reply);
            }
            MembershipMsg::Sync { data, reply } => {
                state.apply_sync(&data);
                let _ = reply.send(state.encoded_state());
            }
            MembershipMsg::ApplySync(data) => state.apply_sync(&data),
            MembershipMsg::SyncTick => state.start_sync(&myself),
            MembershipMsg::RejoinTick => {
                if !state.leaving && state.foca.num_members() == 0 && !state.known.is_empty() {
                    debug!("no member alive; announcing to known peers");
                    state.announce_to_known(&myself);
                }
            }
        }
        state.drain(&myself);
        Ok(())
    }
}

impl MembershipState {
    fn announce_to_known(&mut self, myself: &ActorRef<MembershipMsg>) {
        let peers: Vec<MemberId> = self.known.values().cloned().collect();
        for peer in peers {
            if let Err(error) = self.foca.announce(peer, &mut self.runtime) {
                debug!(%error, "announce");
            }
        }
        self.drain(myself);
    }

    /// Performs what foca asked for: packets to send, timers to arm, notifications.
    fn drain(&mut self, myself: &ActorRef<MembershipMsg>) {
        while let Some((to, data)) = self.runtime.to_send() {
            let _ = self.transport.cast(TransportMsg::Send {
                to: PeerAddr {
                    addr: to.addr.clone(),
                    node_id: Some(to.node_id.clone()),
                },
                frame: Frame::Gossip(Gossip {
                    data: data.to_vec(),
                }),
            });
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            myself.send_after(after, move || MembershipMsg::Timer(timer));
        }
        let mut changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            changed = true;
            match notification {
                OwnedNotification::MemberUp(member) => {
                    info!(node_id = %member.node_id, name = %member.name, "member up");
                    if self
                        .left
                        .get(&member.node_id)
                        .is_some_and(|g| *g < member.generation)
                    {
                        self.left.remove(&member.node_id);
                    }
                    self.known.insert(member.node_id.clone(), member);
                }
                OwnedNotification::MemberDown(member) => {
                    info!(node_id = %member.node_id, name = %member.name, "member down");
                }
                OwnedNotification::Rename(_, member) => {
                    self.known.insert(member.node_id.clone(), member);
                }
                OwnedNotification::Rejoin(me) => {
                    info!(
                        generation = me.generation,
                        "rejoined the mesh under a new generation"
                    );
                }
                OwnedNotification::Defunct => warn!("this node was declared down"),
                OwnedNotification::Idle => debug!("no member alive"),
                OwnedNotification::Active => debug!("active in the mesh"),
            }
        }
        if changed {
            self.save_peers();
        }
    }

    fn view(&self) -> Vec<MemberView> {
        let me = self.foca.identity();
        let mut rows: Vec<MemberView> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().node_id != me.node_id)
            .map(|m| {
                let id = m.id();
                let state = match m.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => {
                        if self
                            .left
                            .get(&id.node_id)
                            .is_some_and(|g| *g >= id.generation)
                        {
                            MemberState::Left
                        } else {
                            MemberState::Down
                        }
                    }
                };
                view_of(id, state, false)
            })
            .collect();
        rows.push(view_of(
            me,
            if self.leaving {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            true,
        ));
        rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        rows
    }

    fn leave(&mut self, reply: RpcReplyPort<()>) {
        if self.leaving {
            let _ = reply.send(());
            return;
        }
        self.leaving = true;
        let me = self.foca.identity().clone();
        let peers: Vec<MemberId> = self.foca.iter_members().map(|m| m.id().clone()).collect();
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            debug!(%error, "foca leave");
        }
        let transport = self.transport.clone();
        // Tell every alive peer and wait (briefly) for their acknowledgements, so the notices are
        // on the wire before the process exits.
        tokio::spawn(async move {
            let notices = peers.into_iter().map(|peer| {
                let transport = transport.clone();
                let frame = Frame::Leave(LeaveNotice {
                    node_id: me.node_id.clone(),
                    generation: me.generation,
                });
                async move {
                    let to = PeerAddr {
                        addr: peer.addr,
                        node_id: Some(peer.node_id),
                    };
                    let _ = transport
                        .call(
                            |reply| TransportMsg::Request { to, frame, reply },
                            Some(Duration::from_millis(800)),
                        )
                        .await;
                }
            });
            let _ = tokio::time::timeout(Duration::from_secs(1), join_all(notices)).await;
            let _ = reply.send(());
        });
    }

    /// The whole SWIM state, for a push-pull sync.
    fn encoded_state(&self) -> Vec<u8> {
        let members: Vec<&foca::Member<MemberId>> = self.foca.iter_membership_state().collect();
        klf_proto::encode_value(&members).unwrap_or_default()
    }

    /// Applies a peer's whole state: stale knowledge is ignored by foca, news is taken, and a
    /// suspicion about this node is refuted.
    fn apply_sync(&mut self, data: &[u8]) {
        if self.leaving {
            return;
        }
        match klf_proto::decode_value::<Vec<foca::Member<MemberId>>>(data) {
            Ok(members) => {
                if let Err(error) =
                    self.foca
                        .apply_many(members.into_iter(), true, &mut self.runtime)
                {
                    debug!(%error, "membership sync");
                }
            }
            Err(error) => debug!(%error, "ignoring a malformed membership sync"),
        }
    }

    /// Sends our state to one random alive member; its answer comes back as `ApplySync`.
    fn start_sync(&mut self, myself: &ActorRef<MembershipMsg>) {
        use rand::seq::IndexedRandom;
        if self.leaving {
            return;
        }
        let alive: Vec<MemberId> = self.foca.iter_members().map(|m| m.id().clone()).collect();
        let Some(peer) = alive.choose(&mut self.rng).cloned() else {
            return;
        };
        let frame = Frame::MembershipSync(klf_proto::MembershipSync {
            data: self.encoded_state(),
        });
        let transport = self.transport.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let to = PeerAddr {
                addr: peer.addr,
                node_id: Some(peer.node_id),
            };
            let answer = transport
                .call(
                    |reply| TransportMsg::Request { to, frame, reply },
                    Some(Duration::from_secs(2)),
                )
                .await;
            if let Ok(ractor::rpc::CallResult::Success(Ok(Frame::MembershipSync(sync)))) = answer {
                let _ = myself.cast(MembershipMsg::ApplySync(sync.data));
            }
        });
    }

    fn save_peers(&self) {
        let Some(path) = &self.peers_file else { return };
        let peers: Vec<&MemberId> = self.known.values().collect();
        match serde_json::to_vec_pretty(&peers) {
            Ok(json) => {
                if let Err(error) = files::write_private(path, &json) {
                    warn!(%error, "could not save known peers");
                }
            }
            Err(error) => warn!(%error, "could not encode known peers"),
        }
    }
}

fn view_of(id: &MemberId, state: MemberState, is_self: bool) -> MemberView {
    MemberView {
        id: id.node_id.clone(),
        name: id.name.clone(),
        addr: id.addr.clone(),
        api: id.api.clone(),
        state,
        generation: id.generation,
        is_self,
    }
}

/// Runs futures concurrently and waits for all of them.
async fn join_all<F: Future<Output = ()> + Send + 'static>(futures: impl Iterator<Item = F>) {
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

/// The alive members (this node included), or `None` if the membership actor does not answer
/// within 2 s. The one way other actors ask.
pub async fn alive_members(membership: &ActorRef<MembershipMsg>) -> Option<Vec<MemberId>> {
    match membership
        .call(MembershipMsg::AliveIdentities, Some(Duration::from_secs(2)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(alive)) => Some(alive),
        _ => None,
    }
}

/// Reads the peers remembered by an earlier run (an absent or unreadable file means none).
pub fn load_peers(path: &std::path::Path) -> Vec<MemberId> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}
