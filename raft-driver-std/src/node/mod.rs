//! The driver: one thread that owns a [`raft_core::Node`] and turns its actions into network sends,
//! WAL writes and state-machine applies.
//!
//! `raft-core` is sans-IO: it only says what to do. [`RaftNode`] is the std-thread runtime that does it.
//! Everything reaches the node thread as an event:
//!
//! - peer messages, delivered by the [`Transport`]'s reader threads into the bounded input channel;
//! - client proposals ([`RaftHandle::propose`]), each with a channel for its result, on the same channel;
//! - `Persisted { seq }`, reported by the [`WalWriter`]'s group-commit thread: the callback only stores the
//!   seq in an atomic and pokes a capacity-1 wake-up channel, so the WAL thread can never block on a busy
//!   node (the node thread blocks on the WAL queue when the disk is slow; the reverse would deadlock);
//! - ticks from a [`crossbeam_channel::tick`] timer (which drops ticks the node is too busy to take, so a
//!   stalled node does not replay a burst of timeouts when it wakes up).
//!
//! The thread steps the node with [`Node::step_into`] and a reused action buffer, then executes the
//! actions in order: `Send` goes to the transport (never blocks; Raft retransmits what it drops),
//! `Persist` to the WAL writer (durable before the `Persisted` that releases it), `Apply` to the
//! [`StateMachine`], and `Proposed`/`ProposeRejected`/`RoleChanged` settle the waiting proposals.
//! The thread itself lives in `driver.rs`; this module is the API around it.
//!
//! # Answering proposals
//!
//! `Proposed` tells at which `(index, term)` a proposal was appended. When the entry at that index is
//! applied, the proposal succeeded iff the applied entry's term is the same: a different term means a new
//! leader overwrote it and the command was lost. Proposals are also failed as soon as this node stops
//! being the leader, since it can no longer tell whether they will commit. Both failures are
//! [retryable](ProposalError::is_retryable). The bookkeeping is [`ProposalTracker`], the same code the
//! simulator runs; see [`crate::proposals`] for which failures leave the outcome unknown.
//!
//! # Limits
//!
//! [`NodeOptions::limits`] feeds the core configuration and the transport's frame bound, and a command
//! larger than an entry may be is refused by [`RaftHandle::propose`] at once, before it reaches the
//! node thread (where it would fail the whole batch it was drained into).

mod driver;
mod membership;
mod metrics;
use metrics::write_metrics;
mod snapshots;
#[cfg(test)]
mod tests;

pub use membership::AdminError;
pub use snapshots::{SnapshotPolicy, SnapshotStats};

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use raft_core::{
    Config, ConfigError, Index, Membership, MembershipChange, Message, Node, NodeId, ProposeError, Role, Term,
};
use serde::Serialize;

use crate::limits::{Limits, LimitsError};
use crate::members::{MemberAddr, Members};
use crate::oneshot;
use crate::proposals::ProposalError;
#[cfg(doc)]
use crate::proposals::ProposalTracker;
use crate::reads::ReadFailure;
use crate::state_machine::StateMachine;
use crate::timing::{Timing, TimingError};
use crate::transport::{Transport, TransportConfig, TransportStats};
#[cfg(doc)]
use crate::wal::WalWriter;
use crate::wal::{RecoveryReport, Wal, WalError, WalOptions, WalWriterStats};

/// Capacity of the node's input channel. Bounded so that a node that cannot keep up pushes back on the
/// transport's reader threads (TCP flow control then slows the peers) and on clients, instead of
/// buffering without limit.
const INPUT_QUEUE_LEN: usize = 8192;

/// The transport's peer silence is never set below this, however short the election timeout: under
/// load (a busy CI machine, a slow fsync) a healthy peer can take this long to answer, and replacing its
/// connection would only lose what is in flight.
pub const MIN_PEER_SILENCE: Duration = Duration::from_millis(250);

/// The transport's `TCP_USER_TIMEOUT` is never set below this: a few retransmissions must fit in it
/// (Linux's shortest retransmission timeout is 200 ms), or one lost packet would cost a connection.
pub const MIN_TCP_USER_TIMEOUT: Duration = Duration::from_secs(1);

/// Connection attempts are given at least this long, however short the election timeout.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);

/// Everything needed to start a [`RaftNode`].
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id.
    pub id: NodeId,
    /// The voters of the cluster's first configuration (this node
    /// included); empty for a node that joins an existing cluster (it waits
    /// to be added, see [`RaftHandle::change_membership`]). Once the log or
    /// a snapshot holds a configuration, that one is in force instead.
    pub voters: Vec<NodeId>,
    /// Cluster id checked in the peer handshake.
    pub cluster_id: u64,
    /// Where to accept peer connections.
    pub peer_listen: SocketAddr,
    /// `(id, peer address)` of every other member of the first
    /// configuration (for a joining node: of the members it knows).
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Addresses of the first configuration's members, this node included:
    /// the address book a membership change starts from (later ones travel
    /// in the log, see [`crate::members`]). Default: `peers` and
    /// `peer_listen`, no service addresses.
    pub members: Members,
    /// Where this node serves the application's clients, if it does; goes
    /// into the address book when this node changes the membership.
    pub service_addr: Option<SocketAddr>,
    /// The node's WAL directory.
    pub wal_dir: PathBuf,
    /// Where snapshot files go (default: `snapshots` inside `wal_dir`).
    pub snapshot_dir: PathBuf,
    /// When to take a snapshot and compact the log.
    pub snapshot: SnapshotPolicy,
    /// WAL tuning (segment size: segments wholly before the newest snapshot
    /// are deleted, so it also sets how much log the disk holds beyond it).
    pub wal: WalOptions,
    /// Tick length and the election/heartbeat timeouts in ticks.
    pub timing: Timing,
    /// Size limits: the core's entry and batch bounds and the transport's frame bound derive from them.
    pub limits: Limits,
    /// `true` (the default): a write is acknowledged to `raft-core` only after its fsync, which is what
    /// Raft's safety argument assumes. `false` acknowledges writes as soon as they are queued for the WAL
    /// (still written and fsynced in the background): much faster, but a crash of a majority can lose
    /// acknowledged writes. For benchmarks and throwaway clusters only.
    pub fsync: bool,
    /// Capacity of the WAL writer's queue (and the largest group sharing one fsync).
    pub wal_queue_len: usize,
    /// Serve linearizable reads from a leader lease instead of a round of messages per batch of reads
    /// (see [`raft_core::Config::lease_reads`]): faster, but only as safe as the clocks. Off by default.
    /// With it on, the node thread catches up on every tick its timer missed (a busy or paused thread
    /// must not slow its clock down, which would stretch the lease) and before every read.
    pub lease_reads: bool,
    /// The clock drift bound leases assume, in ticks per election timeout
    /// ([`raft_core::Config::max_clock_drift_ticks`]).
    pub max_clock_drift_ticks: u32,
    /// Seed for the election-timeout jitter; `None` derives one from the id and the clock. The driver is
    /// not the deterministic part (the simulator is), so a time-based seed is fine.
    pub seed: Option<u64>,
    /// The cluster secret: every peer connection (Raft messages, snapshot fetches) opens with a
    /// challenge-response over it, and peers without it are refused
    /// ([`crate::transport::auth`]). The same on every node; `None` (the default) accepts any peer
    /// of the cluster id, as on a trusted network.
    pub cluster_secret: Option<crate::transport::auth::Secret>,
}

impl NodeOptions {
    /// Options with the defaults: etcd-like [`Timing`], `raft-core`'s [`Limits`], fsync on.
    pub fn new(
        id: NodeId,
        cluster_id: u64,
        peer_listen: SocketAddr,
        peers: Vec<(NodeId, SocketAddr)>,
        wal_dir: impl Into<PathBuf>,
    ) -> NodeOptions {
        let mut voters: Vec<NodeId> = peers.iter().map(|&(p, _)| p).collect();
        voters.push(id);
        let wal_dir = wal_dir.into();
        let mut book: std::collections::BTreeMap<NodeId, MemberAddr> =
            peers.iter().map(|&(p, addr)| (p, MemberAddr { peer: addr, service: None })).collect();
        book.insert(id, MemberAddr { peer: peer_listen, service: None });
        NodeOptions {
            id,
            voters,
            cluster_id,
            peer_listen,
            peers,
            members: Members(book),
            service_addr: None,
            snapshot_dir: wal_dir.join("snapshots"),
            wal_dir,
            snapshot: SnapshotPolicy::default(),
            wal: WalOptions::default(),
            timing: Timing::default(),
            limits: Limits::default(),
            fsync: true,
            wal_queue_len: 1024,
            lease_reads: false,
            max_clock_drift_ticks: 1,
            seed: None,
            cluster_secret: None,
        }
    }

    /// The `raft-core` configuration these options describe: the voters, [`Timing`] and [`Limits`].
    pub fn core_config(&self) -> Config {
        let mut config = Config::new(self.id, self.voters.clone());
        self.timing.apply_to(&mut config);
        self.limits.apply_to(&mut config);
        config.snapshot_trailing_entries = self.snapshot.trailing_entries;
        config.lease_reads = self.lease_reads;
        config.max_clock_drift_ticks = self.max_clock_drift_ticks;
        config
    }

    /// The transport configuration: the peers, the frame bound from [`Limits`], and liveness limits
    /// scaled to the election timeout (see the transport's
    /// [Liveness](crate::transport#liveness) section).
    ///
    /// With `e` the shortest election timeout in wall time (randomized up to `2e`): a peer silent for
    /// `2e` after we wrote to it is treated as cut off (a follower that heard nothing from its leader for
    /// that long has campaigned anyway), unacknowledged data is given two election timeouts (`4e`, at
    /// least [`MIN_TCP_USER_TIMEOUT`]), and reconnects are retried at least once per `e` (connect
    /// attempts give up after `e` too), so that after a partition heals a connection is back within
    /// about one election timeout instead of after TCP's next retransmission.
    pub fn transport_config(&self) -> TransportConfig {
        let mut config = TransportConfig::new(self.cluster_id, self.id, self.peer_listen, self.peers.clone());
        let election = self.timing.tick() * self.timing.election_ticks;
        config.peer_silence = (election * 2).max(MIN_PEER_SILENCE);
        config.tcp_user_timeout = (election * 4).max(MIN_TCP_USER_TIMEOUT);
        config.backoff_max = election.clamp(config.backoff_initial, config.backoff_max);
        config.connect_timeout = election.clamp(MIN_CONNECT_TIMEOUT, config.connect_timeout);
        config.max_frame_bytes = self.limits.max_frame_bytes();
        config.snapshot_dir = Some(self.snapshot_dir.clone());
        config.secret = self.cluster_secret.clone();
        // This node's own entry in the address book, when it is a real
        // address (not port 0, not the unspecified address).
        config.advertise =
            self.members.get(self.id).map(|a| a.peer).filter(|a| a.port() != 0 && !a.ip().is_unspecified());
        config
    }
}

/// Why a node could not start or stopped.
#[derive(Debug)]
pub enum DriverError {
    /// Opening the WAL failed. A [`WalError::Corrupt`] names the segment file and byte offset.
    Wal(WalError),
    /// The configuration or the persisted state was refused by `raft-core`.
    Config(ConfigError),
    /// [`NodeOptions::timing`] is inconsistent.
    Timing(TimingError),
    /// [`NodeOptions::limits`] is inconsistent.
    Limits(LimitsError),
    /// The peer listener could not be bound (or a thread could not be spawned).
    Io(std::io::Error),
    /// A WAL write or fsync failed while running: nothing written since can be trusted, so the node
    /// stopped; restart it to recover from what is durable.
    WalFailed(String),
    /// The snapshot file the WAL's newest snapshot record names is missing,
    /// damaged or of an unknown version (the error names the file). The node
    /// will not start from the log alone: that would lose the state the
    /// snapshot holds.
    Snapshot(crate::snapshot_file::SnapshotFileError),
    /// The state machine refused the snapshot image in `file`.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// What the state machine said.
        error: crate::state_machine::RestoreError,
    },
    /// The node thread panicked.
    Panicked,
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Wal(e) => write!(f, "cannot open WAL: {e}"),
            DriverError::Config(e) => write!(f, "cannot start raft node: {e}"),
            DriverError::Timing(e) => write!(f, "cannot start raft node: {e}"),
            DriverError::Limits(e) => write!(f, "cannot start raft node: {e}"),
            DriverError::Io(e) => write!(f, "cannot start node: {e}"),
            DriverError::WalFailed(e) => write!(f, "WAL failed, node stopped: {e}"),
            DriverError::Snapshot(e) => write!(f, "cannot load the snapshot the WAL starts from: {e}"),
            DriverError::Restore { file, error } => write!(f, "{}: {error}", file.display()),
            DriverError::Panicked => f.write_str("node thread panicked"),
        }
    }
}

impl std::error::Error for DriverError {}

/// The result of a proposal: the state machine's response, or why there is none.
pub type ProposalResult<R> = Result<R, ProposalError>;

/// A snapshot of the node's Raft state, for `INFO` and for routing client requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// Its role in the current term.
    pub role: Role,
    /// The leader of the current term, if known (this node's id when it leads).
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: Term,
    /// Highest index known committed.
    pub commit_index: Index,
    /// Highest index applied to the state machine.
    pub applied_index: Index,
    /// Index of the last log entry (durable or not).
    pub last_log_index: Index,
    /// Highest index confirmed durable.
    pub persisted_index: Index,
    /// Index of the first entry the in-memory log holds (entries before it
    /// are compacted into the snapshot).
    pub first_index: Index,
    /// Snapshot state and counters.
    pub snapshot: SnapshotStats,
    /// The configuration in force (the newest in the log, committed or not).
    /// Shared, so that publishing the status after every event and reading
    /// it per client request copy a pointer, not the configuration.
    pub membership: Arc<Membership>,
    /// Index of the entry it comes from; committed once `commit_index` reaches it.
    pub membership_index: Index,
    /// Proposals waiting for their entry to be applied.
    pub pending_proposals: usize,
    /// Reads waiting for their confirmation or for the apply that releases them.
    pub pending_reads: usize,
    /// Whether this node serves reads from a lease right now (a leader with `lease_reads` whose last
    /// confirmed round is recent enough).
    pub lease: bool,
    /// The disk lost synced log entries and the node is not yet repaired
    /// ([`raft_core::Node::begin_repair`]): the index of the lost log's last entry.
    pub repairing_through: Option<Index>,
    /// Times this node, as leader, found a follower holding less than it had acknowledged.
    pub follower_regressions: u64,
    /// WAL writer counters.
    pub wal: WalWriterStats,
    /// Elections and proposal outcomes since the node started.
    pub activity: Activity,
    /// Whether the node thread is still running.
    pub running: bool,
}

/// A follower's replication as its leader sees it ([`RaftHandle::peer_progress`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PeerProgress {
    /// The follower (voter or learner).
    pub id: NodeId,
    /// Highest index known replicated and durable on it.
    pub match_index: Index,
    /// Entries the leader holds beyond that (its last index minus `match_index`).
    pub lag: Index,
}

/// What a node did since it started: counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Activity {
    /// PreVote rounds this node started (it became a pre-candidate).
    pub pre_votes_started: u64,
    /// Elections this node started (it became a candidate, in a new term).
    pub elections_started: u64,
    /// Elections this node won (it became leader).
    pub elections_won: u64,
    /// Proposals applied and answered with the state machine's response.
    pub proposals_applied: u64,
    /// Proposals answered with an error (refused, overwritten, leadership lost, stopped).
    pub proposals_failed: u64,
}

impl Activity {
    /// Counts a role change.
    pub(super) fn count_role(&mut self, role: Role) {
        match role {
            Role::PreCandidate => self.pre_votes_started += 1,
            Role::Candidate => self.elections_started += 1,
            Role::Leader => self.elections_won += 1,
            Role::Follower => {}
        }
    }
}

impl Status {
    fn of(
        node: &Node,
        membership: Arc<Membership>,
        pending: usize,
        wal: WalWriterStats,
        snapshot: SnapshotStats,
    ) -> Status {
        Status {
            id: node.id(),
            role: node.role(),
            leader: node.leader(),
            term: node.term(),
            commit_index: node.commit_index(),
            applied_index: node.applied_index(),
            last_log_index: node.last_index(),
            persisted_index: node.persisted_index(),
            first_index: node.first_index(),
            snapshot,
            membership,
            membership_index: node.membership_index(),
            pending_proposals: pending,
            pending_reads: node.pending_reads(),
            lease: node.has_lease(),
            repairing_through: node.repairing().map(|r| r.lost_through),
            follower_regressions: node.stats().follower_regressions,
            wal,
            activity: Activity::default(),
            running: true,
        }
    }
}

/// A closure run on the node thread with the state machine (see [`RaftHandle::inspect`]).
type InspectFn<S> = Box<dyn FnOnce(&S) + Send>;

/// A read waiting on the node thread: run with the state machine once the read is confirmed and
/// applied, or with the reason it failed.
type ReadJob<S> = Box<dyn FnOnce(Result<&S, ReadFailure>) + Send>;

/// Where one proposal's result goes.
type ReplyTx<S> = Answer<<S as StateMachine>::Response>;

/// Where one proposal's result goes: a channel a thread waits on ([`RaftHandle::propose`]), or a
/// function the node thread runs with it ([`RaftHandle::propose_then`]).
pub(crate) enum Answer<R> {
    Channel(oneshot::Sender<ProposalResult<R>>),
    Then(Box<dyn FnOnce(ProposalResult<R>) + Send>),
}

impl<R> Answer<R> {
    /// Delivers the result (to a receiver that may have gone: then nobody needs it).
    pub(crate) fn send(self, result: ProposalResult<R>) {
        match self {
            Answer::Channel(tx) => {
                let _ = tx.send(result);
            }
            Answer::Then(f) => f(result),
        }
    }
}

/// What reaches the node thread.
enum Input<S: StateMachine> {
    Message(NodeId, Message),
    Propose(Bytes, ReplyTx<S>),
    Inspect(InspectFn<S>),
    /// Where each peer's replication stands (for metrics).
    Peers(Sender<Vec<PeerProgress>>),
    Read(ReadJob<S>),
    Campaign,
    ChangeMembership {
        change: MembershipChange,
        addr: Option<(NodeId, MemberAddr)>,
        reply: membership::AdminTx<Membership>,
    },
    TransferLeadership {
        to: NodeId,
        reply: membership::AdminTx<()>,
    },
    /// A snapshot write finished (on its thread).
    SnapshotWritten {
        meta: raft_core::SnapshotMeta,
        result: Result<u64, String>,
        started: std::time::Instant,
    },
    /// A snapshot fetch finished (on its thread).
    SnapshotFetched {
        from: NodeId,
        meta: raft_core::SnapshotMeta,
        result: Result<PathBuf, String>,
    },
    Shutdown,
}

/// A cheap, cloneable handle to a running node: propose commands, read its status.
pub struct RaftHandle<S: StateMachine> {
    inputs: Sender<Input<S>>,
    status: Arc<Mutex<Status>>,
    transport: Arc<Transport>,
    max_entry_bytes: usize,
    wal: crate::wal::WalMonitor,
}

impl<S: StateMachine> Clone for RaftHandle<S> {
    fn clone(&self) -> Self {
        RaftHandle {
            inputs: self.inputs.clone(),
            status: Arc::clone(&self.status),
            transport: Arc::clone(&self.transport),
            max_entry_bytes: self.max_entry_bytes,
            wal: self.wal.clone(),
        }
    }
}

impl<S: StateMachine> fmt::Debug for RaftHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftHandle").field("status", &self.status()).finish_non_exhaustive()
    }
}

impl<S: StateMachine> RaftHandle<S> {
    /// Proposes `command`; the returned channel receives exactly one result: the state machine's
    /// response once the entry is committed and applied here, or the reason it will not come. A command
    /// over [`Limits::max_entry_bytes`] is refused at once with
    /// [`ProposeError::EntryTooLarge`]. Blocks only while the node's input queue is full.
    pub fn propose(&self, command: Bytes) -> oneshot::Receiver<ProposalResult<S::Response>> {
        let (tx, rx) = oneshot::channel();
        self.submit(command, Answer::Channel(tx));
        rx
    }

    /// [`propose`](Self::propose) without a channel: `f` runs with the result (on the node thread
    /// once the entry is applied or fails, or here at once when it is refused), and this returns at
    /// once. For an event loop that posts the answer back to itself instead of parking a thread per
    /// proposal. Keep `f` short: the node waits for it.
    pub fn propose_then(&self, command: Bytes, f: impl FnOnce(ProposalResult<S::Response>) + Send + 'static) {
        self.submit(command, Answer::Then(Box::new(f)));
    }

    fn submit(&self, command: Bytes, answer: ReplyTx<S>) {
        if command.len() > self.max_entry_bytes {
            let error = ProposeError::EntryTooLarge { size: command.len(), max: self.max_entry_bytes };
            return answer.send(Err(ProposalError::Refused(error)));
        }
        if let Err(crossbeam_channel::SendError(Input::Propose(_, answer))) =
            self.inputs.send(Input::Propose(command, answer))
        {
            answer.send(Err(ProposalError::StoppedBeforeProposing));
        }
    }

    /// Proposes `command` and waits at most `timeout` for its result.
    pub fn propose_wait(&self, command: Bytes, timeout: Duration) -> ProposalResult<S::Response> {
        match self.propose(command).recv_timeout(timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ProposalError::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(ProposalError::Stopped),
        }
    }

    /// The largest command [`propose`](Self::propose) accepts ([`Limits::max_entry_bytes`]).
    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    /// The node's current Raft state.
    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Runs `f` on the node thread with the state machine (between two events, so it sees a consistent
    /// applied state) and returns its result, or `None` if the node stopped or `timeout` passed. Meant
    /// for diagnostics such as a digest of the state; keep `f` short, the node waits for it.
    pub fn inspect<R: Send + 'static>(&self, f: impl FnOnce(&S) -> R + Send + 'static, timeout: Duration) -> Option<R> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job: InspectFn<S> = Box::new(move |sm| {
            let _ = tx.send(f(sm));
        });
        self.inputs.send(Input::Inspect(job)).ok()?;
        rx.recv_timeout(timeout).ok()
    }

    /// A linearizable read that writes nothing to the log: `f` runs on the node thread with the state
    /// machine once it reflects every write that completed before this call (ReadIndex, or the lease
    /// with [`NodeOptions::lease_reads`]; see `raft-core`'s `read` module). Works on any node: a
    /// follower asks its leader for the read index and runs `f` on its own state machine. Waits at most
    /// `timeout`. Every failure left the state untouched; all but [`ReadFailure::Stopped`] are worth
    /// retrying. Keep `f` short: the node waits for it.
    pub fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&S) -> R + Send + 'static,
        timeout: Duration,
    ) -> Result<R, ReadFailure> {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob<S> = Box::new(move |sm| {
            let _ = tx.send(sm.map(f));
        });
        if self.inputs.send(Input::Read(job)).is_err() {
            return Err(ReadFailure::Stopped);
        }
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ReadFailure::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(ReadFailure::Stopped),
        }
    }

    /// [`read`](Self::read) without waiting: `f` runs on the node thread with the state machine
    /// once the read is confirmed and applied, or with the reason it failed, and this returns at
    /// once. For an event loop that posts the answer back to itself instead of parking a thread per
    /// read. Keep `f` short: the node waits for it.
    pub fn read_then(&self, f: impl FnOnce(Result<&S, ReadFailure>) + Send + 'static) {
        let job: ReadJob<S> = Box::new(f);
        if let Err(crossbeam_channel::SendError(Input::Read(job))) = self.inputs.send(Input::Read(job)) {
            job(Err(ReadFailure::Stopped));
        }
    }

    /// Changes the membership (this node must lead; see
    /// [`MembershipChange`] for what each change allows) and waits up to
    /// `timeout` for it to commit: for a joint change, until the final
    /// configuration commits. `addr` is a new member's addresses, which
    /// every node learns with the change. Returns the configuration now in
    /// force.
    pub fn change_membership(
        &self,
        change: MembershipChange,
        addr: Option<(NodeId, MemberAddr)>,
        timeout: Duration,
    ) -> Result<Membership, AdminError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.inputs.send(Input::ChangeMembership { change, addr, reply }).map_err(|_| AdminError::Stopped)?;
        wait_admin(&rx, timeout)
    }

    /// Hands leadership to voter `to` (this node must lead) and waits up to
    /// `timeout` until `to` leads. Proposals pause meanwhile (for at most an
    /// election timeout).
    pub fn transfer_leadership(&self, to: NodeId, timeout: Duration) -> Result<(), AdminError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.inputs.send(Input::TransferLeadership { to, reply }).map_err(|_| AdminError::Stopped)?;
        wait_admin(&rx, timeout)
    }

    /// Starts an election now, skipping PreVote (for operators and tests).
    pub fn campaign(&self) {
        let _ = self.inputs.send(Input::Campaign);
    }

    /// The address the peer transport listens on (the actual port if
    /// `peer_listen` asked for port 0).
    pub fn peer_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// The peer transport's counters.
    pub fn transport_stats(&self) -> TransportStats {
        self.transport.stats()
    }

    /// Each current peer's traffic counters.
    pub fn peer_stats(&self) -> Vec<crate::transport::PeerStats> {
        self.transport.peer_stats()
    }

    /// The WAL writer's sync latency and group size distributions.
    pub fn wal_histograms(&self) -> crate::wal::WalHistograms {
        self.wal.histograms()
    }

    /// Where each follower's replication stands, asked of the node thread (empty unless this node
    /// leads; `None` if it does not answer within `timeout`).
    pub fn peer_progress(&self, timeout: Duration) -> Option<Vec<PeerProgress>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inputs.send(Input::Peers(tx)).ok()?;
        rx.recv_timeout(timeout).ok()
    }

    /// The driver's metrics families (see [`crate::metrics`]), added to `page`: role, term, leader,
    /// indexes, log and snapshot size, elections, proposals, WAL writes with sync latency and group
    /// size histograms, and peer traffic and replication lag per peer.
    pub fn write_metrics(&self, page: &mut crate::metrics::Exposition) {
        write_metrics(self, page);
    }
}

fn wait_admin<T>(rx: &Receiver<Result<T, AdminError>>, timeout: Duration) -> Result<T, AdminError> {
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(AdminError::Timeout),
        Err(RecvTimeoutError::Disconnected) => Err(AdminError::Stopped),
    }
}

/// A running Raft node: the node thread plus its WAL writer and transport. See the [module docs](self).
pub struct RaftNode<S: StateMachine> {
    handle: RaftHandle<S>,
    thread: Option<JoinHandle<Result<(), DriverError>>>,
    recovery: RecoveryReport,
}

impl<S: StateMachine> fmt::Debug for RaftNode<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftNode").field("handle", &self.handle).finish_non_exhaustive()
    }
}

impl<S: StateMachine> RaftNode<S> {
    /// Recovers the WAL in `options.wal_dir` (cutting a torn tail, refusing corruption), restores the
    /// Raft node from it, and starts the WAL writer, the transport and the node thread.
    ///
    /// `state_machine` must be empty: it is restored from the snapshot the WAL starts from (if any), and
    /// the log after it is re-applied as entries become known committed again.
    pub fn start(options: NodeOptions, mut state_machine: S) -> Result<RaftNode<S>, DriverError> {
        options.timing.validate().map_err(DriverError::Timing)?;
        options.limits.validate().map_err(DriverError::Limits)?;
        let (wal, persisted, recovery) = Wal::open(&options.wal_dir, options.wal.clone()).map_err(DriverError::Wal)?;
        let snapshot_bytes =
            snapshots::restore_at_start(&options.snapshot_dir, persisted.snapshot.as_ref(), &mut state_machine)?;
        let restored = persisted.snapshot.clone().map(|meta| (meta, snapshot_bytes));
        tracing::info!(
            node = options.id,
            term = recovery.term,
            vote = ?recovery.vote,
            first_index = recovery.first_index,
            last_index = recovery.last_index,
            torn_tail_bytes = recovery.torn_tail_bytes,
            "WAL recovered"
        );
        let seed = options.seed.unwrap_or_else(|| driver::time_seed(options.id));
        let mut node = Node::restore(options.core_config(), persisted, seed).map_err(DriverError::Config)?;
        if let Some(lost) = recovery.repair {
            // The WAL found synced entries gone (it logged the details): keep every promise the lost
            // log made until the peers have repaired it. The WAL drops its mark by the same rule.
            tracing::error!(
                node = options.id,
                lost_through = lost.lost_through,
                last_term = lost.last_term,
                "this node's disk lost synced log entries: it will not campaign, nor vote for a candidate                  behind the lost log, until its peers have repaired it"
            );
            node.begin_repair(lost);
        }
        let (input_tx, input_rx) = crossbeam_channel::bounded::<Input<S>>(INPUT_QUEUE_LEN);
        let inbound_tx = input_tx.clone();
        let transport = Transport::start(options.transport_config(), move |from, message| {
            // Blocks while the node is behind: back-pressure onto this peer's connection.
            let _ = inbound_tx.send(Input::Message(from, message));
        })
        .map_err(DriverError::Io)?;
        let transport = Arc::new(transport);
        let snapshots = snapshots::Snapshots::new(
            options.snapshot_dir.clone(),
            options.snapshot,
            restored.as_ref().map(|(meta, bytes)| (meta, *bytes)),
        );
        let parts = driver::Parts { wal, inputs: input_rx, self_inputs: input_tx.clone(), snapshots };
        let mut driver = driver::Driver::new(&options, node, state_machine, parts, Arc::clone(&transport))?;
        let handle = RaftHandle {
            inputs: input_tx,
            status: driver.status(),
            transport,
            max_entry_bytes: options.limits.max_entry_bytes,
            wal: driver.wal_monitor(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-node-{}", options.id))
            .spawn(move || {
                let result = driver.run();
                driver.stop();
                result
            })
            .map_err(DriverError::Io)?;
        Ok(RaftNode { handle, thread: Some(thread), recovery })
    }

    /// A handle for proposing and reading status.
    pub fn handle(&self) -> RaftHandle<S> {
        self.handle.clone()
    }

    /// What WAL recovery found at startup.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Whether the node thread has exited (after a WAL failure or [`RaftNode::shutdown`]).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the node thread to exit on its own (it only does after a fatal error) and returns why.
    pub fn wait(mut self) -> Result<(), DriverError> {
        self.join()
    }

    /// Stops the node: fails pending proposals with [`ProposalError::Stopped`], waits until queued WAL
    /// writes are durable, and stops the transport.
    pub fn shutdown(mut self) -> Result<(), DriverError> {
        let _ = self.handle.inputs.send(Input::Shutdown);
        self.join()
    }

    fn join(&mut self) -> Result<(), DriverError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(DriverError::Panicked),
            None => Ok(()),
        }
    }
}

impl<S: StateMachine> Drop for RaftNode<S> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.handle.inputs.send(Input::Shutdown);
            let _ = self.join();
        }
    }
}
