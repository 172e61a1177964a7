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
//!
//! # Answering proposals
//!
//! `Proposed` tells at which `(index, term)` a proposal was appended. When the entry at that index is
//! applied, the proposal succeeded iff the applied entry's term is the same: a different term means a new
//! leader overwrote it and the command was lost. Proposals are also failed as soon as this node stops
//! being the leader, since it can no longer tell whether they will commit. Both failures are
//! [retryable](ProposalError::is_retryable): the command may or may not have been applied, which is why
//! clients make commands idempotent with sessions (see [`crate::kv::KvRequest`]) and retry them as-is.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};
use raft_core::{Action, Config, ConfigError, Entry, EntryKind, Event, Index, Message, Node, NodeId, Role, Term};
use serde::Serialize;

use crate::config::Timing;
use crate::kv::StateMachine;
use crate::transport::{Transport, TransportConfig, TransportStats};
use crate::wal::{RecoveryReport, Wal, WalError, WalOptions, WalWriter, WalWriterStats};

/// Capacity of the node's input channel. Bounded so that a node that cannot keep up pushes back on the
/// transport's reader threads (TCP flow control then slows the peers) and on clients, instead of
/// buffering without limit.
const INPUT_QUEUE_LEN: usize = 8192;

/// Most proposals stepped as one `ProposeBatch`. Draining what queued up while the node was busy turns
/// many small appends (and AppendEntries messages) into one under load.
const MAX_PROPOSE_BATCH: usize = 512;

/// Everything needed to start a [`RaftNode`].
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id.
    pub id: NodeId,
    /// Every voting member (this node included).
    pub voters: Vec<NodeId>,
    /// Cluster id checked in the peer handshake.
    pub cluster_id: u64,
    /// Where to accept peer connections.
    pub peer_listen: SocketAddr,
    /// `(id, peer address)` of every other member.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// The node's WAL directory.
    pub wal_dir: PathBuf,
    /// Tick length and the election/heartbeat timeouts in ticks.
    pub timing: Timing,
    /// `true` (the default): a write is acknowledged to `raft-core` only after its fsync, which is what
    /// Raft's safety argument assumes. `false` acknowledges writes as soon as they are queued for the WAL
    /// (still written and fsynced in the background): much faster, but a crash of a majority can lose
    /// acknowledged writes. For benchmarks and throwaway clusters only.
    pub fsync: bool,
    /// Capacity of the WAL writer's queue (and the largest group sharing one fsync).
    pub wal_queue_len: usize,
    /// Seed for the election-timeout jitter; `None` derives one from the id and the clock. The driver is
    /// not the deterministic part (the simulator is), so a time-based seed is fine.
    pub seed: Option<u64>,
}

impl NodeOptions {
    /// Options with the defaults: etcd-like [`Timing`], fsync on.
    pub fn new(
        id: NodeId,
        cluster_id: u64,
        peer_listen: SocketAddr,
        peers: Vec<(NodeId, SocketAddr)>,
        wal_dir: impl Into<PathBuf>,
    ) -> NodeOptions {
        let mut voters: Vec<NodeId> = peers.iter().map(|&(p, _)| p).collect();
        voters.push(id);
        NodeOptions {
            id,
            voters,
            cluster_id,
            peer_listen,
            peers,
            wal_dir: wal_dir.into(),
            timing: Timing::default(),
            fsync: true,
            wal_queue_len: 1024,
            seed: None,
        }
    }
}

/// Why a node could not start or stopped.
#[derive(Debug)]
pub enum DriverError {
    /// Opening the WAL failed. A [`WalError::Corrupt`] names the segment file and byte offset.
    Wal(WalError),
    /// The configuration or the persisted state was refused by `raft-core`.
    Config(ConfigError),
    /// The peer listener could not be bound (or a thread could not be spawned).
    Io(std::io::Error),
    /// A WAL write or fsync failed while running: nothing written since can be trusted, so the node
    /// stopped; restart it to recover from what is durable.
    WalFailed(String),
    /// The node thread panicked.
    Panicked,
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Wal(e) => write!(f, "cannot open WAL: {e}"),
            DriverError::Config(e) => write!(f, "cannot start raft node: {e}"),
            DriverError::Io(e) => write!(f, "cannot start node: {e}"),
            DriverError::WalFailed(e) => write!(f, "WAL failed, node stopped: {e}"),
            DriverError::Panicked => f.write_str("node thread panicked"),
        }
    }
}

impl std::error::Error for DriverError {}

/// Why a proposal did not produce a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalError {
    /// This node is not the leader (`leader` is its best guess). Nothing was appended.
    NotLeader {
        /// The leader of the current term, if known.
        leader: Option<NodeId>,
    },
    /// The leader has too many uncommitted entries. Nothing was appended.
    Backpressure,
    /// The entry was appended, but this node lost leadership before it was applied (or a new leader
    /// overwrote it). It may still commit under the new leader.
    LeadershipLost,
    /// No result within the caller's timeout; the entry may still commit.
    Timeout,
    /// The command exceeds the configured entry size limit. Nothing was appended.
    TooLarge {
        /// The command's size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The node has stopped.
    Stopped,
}

impl ProposalError {
    /// Whether retrying (with the same session and sequence number) can succeed. A stopped node or
    /// an oversized command is final.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ProposalError::Stopped | ProposalError::TooLarge { .. })
    }
}

impl fmt::Display for ProposalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposalError::NotLeader { leader: Some(id) } => write!(f, "not the leader; leader is node {id}"),
            ProposalError::NotLeader { leader: None } => f.write_str("not the leader; no leader known"),
            ProposalError::Backpressure => f.write_str("too many uncommitted entries"),
            ProposalError::LeadershipLost => f.write_str("leadership lost before the entry was applied"),
            ProposalError::Timeout => f.write_str("timed out waiting for the entry to be applied"),
            ProposalError::TooLarge { size, max } => write!(f, "command of {size} bytes exceeds the {max}-byte limit"),
            ProposalError::Stopped => f.write_str("node stopped"),
        }
    }
}

impl std::error::Error for ProposalError {}

/// The result of a proposal: the state machine's reply, or why there is none.
pub type ProposalResult = Result<Bytes, ProposalError>;

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
    /// Proposals waiting for their entry to be applied.
    pub pending_proposals: usize,
    /// WAL writer counters.
    pub wal: WalWriterStats,
    /// Whether the node thread is still running.
    pub running: bool,
}

impl Status {
    fn of(node: &Node, pending: usize, wal: WalWriterStats) -> Status {
        Status {
            id: node.id(),
            role: node.role(),
            leader: node.leader(),
            term: node.term(),
            commit_index: node.commit_index(),
            applied_index: node.applied_index(),
            last_log_index: node.last_index(),
            persisted_index: node.persisted_index(),
            pending_proposals: pending,
            wal,
            running: true,
        }
    }
}

/// A closure run on the node thread with the state machine (see [`RaftHandle::inspect`]).
type InspectFn<S> = Box<dyn FnOnce(&S) + Send>;

enum Input<S> {
    Message(NodeId, Message),
    Propose(Bytes, Sender<ProposalResult>),
    Inspect(InspectFn<S>),
    Campaign,
    Shutdown,
}

/// A cheap, cloneable handle to a running node: propose commands, read its status.
pub struct RaftHandle<S> {
    inputs: Sender<Input<S>>,
    status: Arc<Mutex<Status>>,
    transport: Arc<Transport>,
}

impl<S> Clone for RaftHandle<S> {
    fn clone(&self) -> Self {
        RaftHandle {
            inputs: self.inputs.clone(),
            status: Arc::clone(&self.status),
            transport: Arc::clone(&self.transport),
        }
    }
}

impl<S> fmt::Debug for RaftHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftHandle").field("status", &self.status()).finish_non_exhaustive()
    }
}

impl<S> RaftHandle<S> {
    /// Proposes `command`; the returned channel receives exactly one result: the state machine's reply
    /// once the entry is committed and applied here, or the reason it will not come. Blocks only while
    /// the node's input queue is full.
    pub fn propose(&self, command: Bytes) -> Receiver<ProposalResult> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if let Err(crossbeam_channel::SendError(Input::Propose(_, tx))) = self.inputs.send(Input::Propose(command, tx))
        {
            let _ = tx.send(Err(ProposalError::Stopped));
        }
        rx
    }

    /// Proposes `command` and waits at most `timeout` for its result.
    pub fn propose_wait(&self, command: Bytes, timeout: Duration) -> ProposalResult {
        match self.propose(command).recv_timeout(timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ProposalError::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(ProposalError::Stopped),
        }
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

    /// Starts an election now, skipping PreVote (for operators and tests).
    pub fn campaign(&self) {
        let _ = self.inputs.send(Input::Campaign);
    }

    /// The peer transport's counters.
    pub fn transport_stats(&self) -> TransportStats {
        self.transport.stats()
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
    /// `state_machine` must be empty: the whole log is re-applied on startup (there are no snapshots
    /// yet), as entries become known committed again.
    pub fn start(options: NodeOptions, state_machine: S) -> Result<RaftNode<S>, DriverError> {
        let (wal, persisted, recovery) =
            Wal::open(&options.wal_dir, WalOptions::default()).map_err(DriverError::Wal)?;
        tracing::info!(
            node = options.id,
            term = recovery.term,
            vote = ?recovery.vote,
            first_index = recovery.first_index,
            last_index = recovery.last_index,
            torn_tail_bytes = recovery.torn_tail_bytes,
            "WAL recovered"
        );
        let mut config = Config::new(options.id, options.voters.clone());
        config.election_ticks = options.timing.election_ticks;
        config.heartbeat_ticks = options.timing.heartbeat_ticks;
        let seed = options.seed.unwrap_or_else(|| time_seed(options.id));
        let node = Node::restore(config, persisted, seed).map_err(DriverError::Config)?;

        let durable_seq = Arc::new(AtomicU64::new(0));
        let wal_failed = Arc::new(AtomicBool::new(false));
        let wal_error = Arc::new(Mutex::new(None::<String>));
        let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
        let writer = {
            let (durable_seq, wal_failed, wal_error) =
                (Arc::clone(&durable_seq), Arc::clone(&wal_failed), Arc::clone(&wal_error));
            WalWriter::spawn(wal, options.wal_queue_len, move |result: Result<u64, &WalError>| {
                match result {
                    Ok(seq) => {
                        durable_seq.fetch_max(seq, Ordering::AcqRel);
                    }
                    Err(e) => {
                        *wal_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                        wal_failed.store(true, Ordering::Release);
                    }
                }
                // Never blocks: one pending wake-up is enough, the node reads the latest seq.
                let _ = wake_tx.try_send(());
            })
            .map_err(DriverError::Wal)?
        };

        let (input_tx, input_rx) = crossbeam_channel::bounded::<Input<S>>(INPUT_QUEUE_LEN);
        let inbound_tx = input_tx.clone();
        let transport_config =
            TransportConfig::new(options.cluster_id, options.id, options.peer_listen, options.peers.clone());
        let transport = Transport::start(transport_config, move |from, message| {
            // Blocks while the node is behind: back-pressure onto this peer's connection.
            let _ = inbound_tx.send(Input::Message(from, message));
        })
        .map_err(DriverError::Io)?;
        let transport = Arc::new(transport);

        let status = Arc::new(Mutex::new(Status::of(&node, 0, writer.stats())));
        let handle = RaftHandle { inputs: input_tx, status: Arc::clone(&status), transport: Arc::clone(&transport) };
        let mut driver = Driver {
            node,
            state_machine,
            actions: Vec::with_capacity(256),
            inputs: input_rx,
            wal_wake: wake_rx,
            writer,
            durable_seq,
            reported_seq: 0,
            wal_failed,
            wal_error,
            fsync: options.fsync,
            transport,
            status,
            pending: BTreeMap::new(),
            proposing: Vec::new(),
            tick: options.timing.tick(),
            stopping: false,
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

/// A proposal whose entry is in the log, waiting to be applied.
struct Pending {
    term: Term,
    reply: Sender<ProposalResult>,
}

/// The state owned by the node thread.
struct Driver<S> {
    node: Node,
    state_machine: S,
    /// Reused for every step so that the hot loop does not allocate.
    actions: Vec<Action>,
    inputs: Receiver<Input<S>>,
    wal_wake: Receiver<()>,
    writer: WalWriter,
    durable_seq: Arc<AtomicU64>,
    /// The highest seq already stepped as `Persisted`.
    reported_seq: u64,
    wal_failed: Arc<AtomicBool>,
    wal_error: Arc<Mutex<Option<String>>>,
    fsync: bool,
    transport: Arc<Transport>,
    status: Arc<Mutex<Status>>,
    /// Proposals by log index.
    pending: BTreeMap<Index, Pending>,
    /// The reply channels of the proposal batch being stepped, in order; settled by the `Proposed` or
    /// `ProposeRejected` that the step produces.
    proposing: Vec<Sender<ProposalResult>>,
    tick: Duration,
    stopping: bool,
}

impl<S: StateMachine> Driver<S> {
    fn run(&mut self) -> Result<(), DriverError> {
        let ticker = crossbeam_channel::tick(self.tick);
        while !self.stopping {
            select! {
                recv(self.inputs) -> input => match input {
                    Ok(input) => self.handle(input)?,
                    Err(_) => break,
                },
                recv(self.wal_wake) -> _ => self.on_wal_progress()?,
                recv(ticker) -> _ => self.step(Event::Tick)?,
            }
            self.publish_status();
        }
        Ok(())
    }

    fn handle(&mut self, input: Input<S>) -> Result<(), DriverError> {
        match input {
            Input::Message(from, message) => self.step(Event::Message { from, message }),
            Input::Propose(data, reply) => {
                let mut batch = vec![data];
                self.proposing.push(reply);
                let mut other = None;
                while batch.len() < MAX_PROPOSE_BATCH {
                    match self.inputs.try_recv() {
                        Ok(Input::Propose(data, reply)) => {
                            batch.push(data);
                            self.proposing.push(reply);
                        }
                        Ok(input) => {
                            other = Some(input);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let event = if batch.len() == 1 {
                    Event::Propose { data: batch.swap_remove(0) }
                } else {
                    Event::ProposeBatch { data: batch }
                };
                self.step(event)?;
                // Defensive: every propose step settles its batch, but never leave a client hanging.
                for reply in self.proposing.drain(..) {
                    let _ = reply.send(Err(ProposalError::NotLeader { leader: self.node.leader() }));
                }
                match other {
                    Some(input) => self.handle(input),
                    None => Ok(()),
                }
            }
            Input::Inspect(f) => {
                f(&self.state_machine);
                Ok(())
            }
            Input::Campaign => self.step(Event::Campaign),
            Input::Shutdown => {
                self.stopping = true;
                Ok(())
            }
        }
    }

    fn on_wal_progress(&mut self) -> Result<(), DriverError> {
        if self.wal_failed.load(Ordering::Acquire) {
            let error = self.wal_error.lock().unwrap_or_else(PoisonError::into_inner).take();
            return Err(DriverError::WalFailed(error.unwrap_or_else(|| "unknown error".into())));
        }
        if !self.fsync {
            // Writes were acknowledged when queued.
            return Ok(());
        }
        let seq = self.durable_seq.load(Ordering::Acquire);
        if seq > self.reported_seq {
            self.reported_seq = seq;
            self.step(Event::Persisted { seq })?;
        }
        Ok(())
    }

    /// Steps one event and executes the resulting actions. Without fsync, the writes of a step are
    /// acknowledged right away, which takes another step.
    fn step(&mut self, event: Event) -> Result<(), DriverError> {
        let mut next = Some(event);
        while let Some(event) = next.take() {
            let mut actions = std::mem::take(&mut self.actions);
            self.node.step_into(event, &mut actions);
            let result = self.execute(&mut actions);
            actions.clear();
            self.actions = actions;
            if let Some(seq) = result? {
                if !self.fsync {
                    next = Some(Event::Persisted { seq });
                }
            }
        }
        Ok(())
    }

    /// Executes actions in order; returns the seq of the last `Persist` submitted.
    fn execute(&mut self, actions: &mut Vec<Action>) -> Result<Option<u64>, DriverError> {
        let mut last_persist = None;
        for action in actions.drain(..) {
            match action {
                Action::Send { to, message } => {
                    self.transport.send(to, message);
                }
                Action::Persist(persist) => {
                    let seq = persist.seq;
                    self.writer.submit(persist).map_err(|e| DriverError::WalFailed(e.to_string()))?;
                    last_persist = Some(seq);
                }
                Action::Apply { entries } => {
                    for entry in entries {
                        self.apply(entry);
                    }
                }
                Action::Proposed { first_index, last_index, term } => {
                    let replies = std::mem::take(&mut self.proposing);
                    for (index, reply) in (first_index..=last_index).zip(replies) {
                        self.pending.insert(index, Pending { term, reply });
                    }
                }
                Action::ProposeRejected { error } => {
                    let error = match error {
                        raft_core::ProposeError::NotLeader { leader } => ProposalError::NotLeader { leader },
                        raft_core::ProposeError::Backpressure => ProposalError::Backpressure,
                        raft_core::ProposeError::EntryTooLarge { size, max } => ProposalError::TooLarge { size, max },
                    };
                    for reply in self.proposing.drain(..) {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                Action::RoleChanged { role, term, leader } => {
                    tracing::info!(node = self.node.id(), %role, term, ?leader, "role changed");
                    if role != Role::Leader {
                        self.fail_pending(ProposalError::LeadershipLost);
                    }
                }
            }
        }
        Ok(last_persist)
    }

    fn apply(&mut self, entry: Entry) {
        let result = match entry.kind {
            EntryKind::Normal => Some(self.state_machine.apply(entry.index, &entry.data)),
            EntryKind::Noop => None,
        };
        // Anything below this index was overwritten and never comes back (defensive: a proposal is
        // always settled at its own index).
        while let Some(first) = self.pending.first_entry() {
            if *first.key() >= entry.index {
                break;
            }
            let _ = first.remove().reply.send(Err(ProposalError::LeadershipLost));
        }
        if let Some(p) = self.pending.remove(&entry.index) {
            let outcome = match result {
                Some(reply) if p.term == entry.term => Ok(reply),
                _ => Err(ProposalError::LeadershipLost),
            };
            let _ = p.reply.send(outcome);
        }
    }

    fn fail_pending(&mut self, error: ProposalError) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(error.clone()));
        }
    }

    fn publish_status(&self) {
        let status = Status::of(&self.node, self.pending.len(), self.writer.stats());
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    /// Runs when the loop ends for any reason.
    fn stop(&mut self) {
        self.fail_pending(ProposalError::Stopped);
        for reply in self.proposing.drain(..) {
            let _ = reply.send(Err(ProposalError::Stopped));
        }
        self.transport.shutdown();
        // Fail proposals still queued; later ones see the closed channel.
        while let Ok(input) = self.inputs.try_recv() {
            if let Input::Propose(_, reply) = input {
                let _ = reply.send(Err(ProposalError::Stopped));
            }
        }
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.running = false;
        status.role = Role::Follower;
        status.leader = None;
    }
}

/// A seed that differs per node and per start.
fn time_seed(id: NodeId) -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id()) << 32;
    // splitmix64 finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Waits until `cond` holds or `timeout` passes, polling every few milliseconds; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends every command to a list and replies with the list's length.
    #[derive(Default)]
    struct Log(Vec<Bytes>);

    impl StateMachine for Log {
        fn apply(&mut self, _index: u64, command: &[u8]) -> Bytes {
            self.0.push(Bytes::copy_from_slice(command));
            Bytes::from(self.0.len().to_string())
        }
    }

    fn options(dir: &std::path::Path, fsync: bool) -> NodeOptions {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut options = NodeOptions::new(1, 9, listen, Vec::new(), dir.join("wal"));
        options.timing = Timing { tick_ms: 5, heartbeat_ticks: 1, election_ticks: 4 };
        options.fsync = fsync;
        options.seed = Some(7);
        options
    }

    fn wait_leader(handle: &RaftHandle<Log>) {
        assert!(wait_until(Duration::from_secs(5), || handle.status().role == Role::Leader), "no leader");
    }

    #[test]
    fn single_node_commits_applies_and_recovers() {
        for fsync in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let node = RaftNode::start(options(dir.path(), fsync), Log::default()).expect("start");
            let handle = node.handle();
            wait_leader(&handle);
            // Many concurrent proposals exercise batching; each gets its own reply.
            let receivers: Vec<_> = (0..100).map(|i| handle.propose(Bytes::from(format!("c{i}")))).collect();
            let mut replies: Vec<u64> = receivers
                .into_iter()
                .map(|rx| {
                    let reply = rx.recv_timeout(Duration::from_secs(5)).expect("reply").expect("applied");
                    std::str::from_utf8(&reply).expect("utf8").parse().expect("number")
                })
                .collect();
            replies.sort_unstable();
            assert_eq!(replies, (1..=100).collect::<Vec<u64>>());
            let status = handle.status();
            assert!(status.applied_index >= 101 && status.commit_index == status.applied_index, "{status:?}");
            assert_eq!(handle.inspect(|log: &Log| log.0.len(), Duration::from_secs(1)), Some(100));
            node.shutdown().expect("clean shutdown");
            assert_eq!(
                handle.propose_wait(Bytes::from_static(b"late"), Duration::from_secs(1)),
                Err(ProposalError::Stopped)
            );

            // Restart: the log is replayed into a fresh state machine once committed again.
            let node = RaftNode::start(options(dir.path(), fsync), Log::default()).expect("restart");
            assert_eq!(node.recovery().last_index, 101);
            let handle = node.handle();
            wait_leader(&handle);
            let reply = handle.propose_wait(Bytes::from_static(b"again"), Duration::from_secs(5)).expect("applied");
            assert_eq!(&reply[..], b"101");
        }
    }

    #[test]
    fn follower_rejects_proposals_as_retryable() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Peer 2 never answers, so node 1 can never win an election.
        let mut opts = options(dir.path(), true);
        opts.peers = vec![(2, SocketAddr::from(([127, 0, 0, 1], 9)))];
        opts.voters = vec![1, 2];
        let node = RaftNode::start(opts, Log::default()).expect("start");
        let result = node.handle().propose_wait(Bytes::from_static(b"x"), Duration::from_secs(5));
        let error = result.expect_err("not leader");
        assert!(matches!(error, ProposalError::NotLeader { leader: None }), "{error:?}");
        assert!(error.is_retryable());
    }

    #[test]
    fn corrupt_wal_is_refused_with_file_and_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = RaftNode::start(options(dir.path(), true), Log::default()).expect("start");
        let handle = node.handle();
        wait_leader(&handle);
        for _ in 0..3 {
            handle.propose_wait(Bytes::from_static(b"x"), Duration::from_secs(5)).expect("applied");
        }
        node.shutdown().expect("shutdown");
        let segment = dir.path().join("wal").join("wal-0000000000000001.log");
        let mut bytes = std::fs::read(&segment).expect("read");
        bytes[16 + 8] ^= 0xFF;
        std::fs::write(&segment, &bytes).expect("write");
        let error = RaftNode::start(options(dir.path(), true), Log::default()).expect_err("corrupt");
        let text = error.to_string();
        assert!(text.contains("wal-0000000000000001.log") && text.contains("offset 16"), "{text}");
    }
}
