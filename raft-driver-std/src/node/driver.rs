//! The node thread: steps the core and carries out its actions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, select};
use raft_core::{Action, Entry, EntryKind, Event, Node, NodeId, Role};

use super::membership::MembershipState;
use super::snapshots::Snapshots;
use super::{Activity, DriverError, Input, NodeOptions, PeerProgress, ReadJob, ReplyTx, Status};
use crate::proposals::{ProposalError, ProposalTracker, Settled};
use crate::reads::{ReadFailure, ReadSettled, ReadTracker};
use crate::state_machine::StateMachine;
use crate::transport::Transport;
use crate::wal::{Wal, WalError, WalWriter};

/// Most proposals stepped as one `ProposeBatch`. Draining what queued up while the node was busy turns
/// many small appends (and AppendEntries messages) into one under load.
const MAX_PROPOSE_BATCH: usize = 512;

/// How the WAL writer's thread reports to the node thread without ever blocking on it.
struct WalProgress {
    durable_seq: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
    wake: Receiver<()>,
}

impl WalProgress {
    /// Spawns the writer with a callback that records progress and pokes a capacity-1 channel.
    fn spawn(wal: Wal, queue_len: usize) -> Result<(WalWriter, WalProgress), DriverError> {
        let durable_seq = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let error = Arc::new(Mutex::new(None::<String>));
        let (wake_tx, wake) = crossbeam_channel::bounded::<()>(1);
        let (seq, fail, err) = (Arc::clone(&durable_seq), Arc::clone(&failed), Arc::clone(&error));
        let writer = WalWriter::spawn(wal, queue_len, move |result: Result<u64, &WalError>| {
            match result {
                Ok(s) => {
                    seq.fetch_max(s, Ordering::AcqRel);
                }
                Err(e) => {
                    *err.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                    fail.store(true, Ordering::Release);
                }
            }
            // Never blocks: one pending wake-up is enough, the node reads the latest seq.
            let _ = wake_tx.try_send(());
        })
        .map_err(DriverError::Wal)?;
        Ok((writer, WalProgress { durable_seq, failed, error, wake }))
    }

    /// The failure the writer reported, if any.
    fn failure(&self) -> Option<DriverError> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        let error = self.error.lock().unwrap_or_else(PoisonError::into_inner).take();
        Some(DriverError::WalFailed(error.unwrap_or_else(|| "unknown error".into())))
    }
}

/// What the node thread is built from, besides the core node and the state machine.
pub(super) struct Parts<S: StateMachine> {
    pub(super) wal: Wal,
    pub(super) inputs: Receiver<Input<S>>,
    /// For the snapshot threads to report back on.
    pub(super) self_inputs: Sender<Input<S>>,
    pub(super) snapshots: Snapshots,
}

/// The state owned by the node thread.
pub(super) struct Driver<S: StateMachine> {
    pub(super) node: Node,
    pub(super) state_machine: S,
    /// Reused for every step so that the hot loop does not allocate.
    actions: Vec<Action>,
    /// Events the last actions call for, stepped right after them.
    pub(super) followups: Vec<Event>,
    inputs: Receiver<Input<S>>,
    pub(super) self_inputs: Sender<Input<S>>,
    pub(super) snapshots: Snapshots,
    writer: WalWriter,
    wal: WalProgress,
    /// The highest seq already stepped as `Persisted`.
    reported_seq: u64,
    fsync: bool,
    pub(super) transport: Arc<Transport>,
    status: Arc<Mutex<Status>>,
    proposals: ProposalTracker<ReplyTx<S>>,
    reads: ReadTracker<ReadJob<S>>,
    tick: Duration,
    /// With leases: every tick stepped so far, counted from this instant.
    clock: Option<(Instant, u64)>,
    stopping: bool,
    pub(super) membership: MembershipState,
    /// The configuration in force, as the status publishes it (replaced on
    /// every change, shared otherwise).
    pub(super) shared_membership: Arc<raft_core::Membership>,
    /// This node's service address, for the address book.
    pub(super) service_addr: Option<std::net::SocketAddr>,
    /// Elections and proposal outcomes so far, published with the status.
    activity: Activity,
}

impl<S: StateMachine> Driver<S> {
    pub(super) fn new(
        options: &NodeOptions,
        node: Node,
        state_machine: S,
        parts: Parts<S>,
        transport: Arc<Transport>,
    ) -> Result<Driver<S>, DriverError> {
        let Parts { wal, inputs, self_inputs, snapshots } = parts;
        let (writer, wal) = WalProgress::spawn(wal, options.wal_queue_len)?;
        let shared_membership = Arc::new(node.membership().clone());
        let status =
            Arc::new(Mutex::new(Status::of(&node, Arc::clone(&shared_membership), 0, writer.stats(), snapshots.stats)));
        let membership = MembershipState::new(options.members.clone(), &node);
        let mut driver = Driver {
            node,
            state_machine,
            actions: Vec::with_capacity(256),
            followups: Vec::new(),
            inputs,
            self_inputs,
            snapshots,
            writer,
            wal,
            reported_seq: 0,
            fsync: options.fsync,
            transport,
            status,
            proposals: ProposalTracker::new(),
            reads: ReadTracker::new(),
            tick: options.timing.tick(),
            clock: options.lease_reads.then(|| (Instant::now(), 0)),
            stopping: false,
            membership,
            shared_membership,
            service_addr: options.service_addr,
            activity: Activity::default(),
        };
        // The configuration restored from disk may have members the options do not.
        let m = driver.node.membership().clone();
        driver.membership_changed(&m);
        Ok(driver)
    }

    /// The status cell the handle reads.
    pub(super) fn status(&self) -> Arc<Mutex<Status>> {
        Arc::clone(&self.status)
    }

    pub(super) fn run(&mut self) -> Result<(), DriverError> {
        let ticker = crossbeam_channel::tick(self.tick);
        while !self.stopping {
            select! {
                recv(self.inputs) -> input => match input {
                    Ok(input) => self.handle(input)?,
                    Err(_) => break,
                },
                recv(self.wal.wake) -> _ => self.on_wal_progress()?,
                recv(ticker) -> _ => self.on_tick()?,
            }
            self.publish_status();
        }
        Ok(())
    }

    fn handle(&mut self, input: Input<S>) -> Result<(), DriverError> {
        match input {
            Input::Message(from, message) => self.step(Event::Message { from, message }),
            Input::Propose(data, reply) => self.propose(data, reply),
            Input::Inspect(f) => {
                f(&self.state_machine);
                Ok(())
            }
            Input::Peers(reply) => {
                let _ = reply.send(self.peer_progress());
                Ok(())
            }
            Input::Read(job) => self.read(job),
            Input::Campaign => self.step(Event::Campaign),
            Input::ChangeMembership { change, addr, reply } => {
                self.change_membership(change, addr, reply);
                Ok(())
            }
            Input::TransferLeadership { to, reply } => {
                self.transfer_leadership(to, reply);
                Ok(())
            }
            Input::SnapshotWritten { meta, result, started } => self.snapshot_written(meta, result, started),
            Input::SnapshotFetched { from, meta, result } => self.snapshot_fetched(from, meta, result),
            Input::Shutdown => {
                self.stopping = true;
                Ok(())
            }
        }
    }

    /// Steps `data` together with every proposal already queued behind it (up to
    /// [`MAX_PROPOSE_BATCH`]) as one batch, then handles the first other input it drained.
    fn propose(&mut self, data: Bytes, reply: ReplyTx<S>) -> Result<(), DriverError> {
        let mut batch = vec![data];
        self.proposals.queue(reply);
        let mut other = None;
        while batch.len() < MAX_PROPOSE_BATCH {
            match self.inputs.try_recv() {
                Ok(Input::Propose(data, reply)) => {
                    batch.push(data);
                    self.proposals.queue(reply);
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
        self.proposals.settle_unclaimed(counting(&mut self.activity.proposals_failed));
        match other {
            Some(input) => self.handle(input),
            None => Ok(()),
        }
    }

    /// Steps a read together with every read already queued behind it (up to [`MAX_PROPOSE_BATCH`]),
    /// then handles the first other input it drained: the core shares one read round among all reads
    /// that arrive while a round is in flight, and this makes them arrive together.
    fn read(&mut self, job: ReadJob<S>) -> Result<(), DriverError> {
        // The lease is measured on the core's clock: bring it up to date first.
        self.catch_up_ticks()?;
        let event = self.reads.start(job);
        self.step(event)?;
        for _ in 1..MAX_PROPOSE_BATCH {
            match self.inputs.try_recv() {
                Ok(Input::Read(job)) => {
                    let event = self.reads.start(job);
                    self.step(event)?;
                }
                Ok(other) => return self.handle(other),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// A timer tick. Without leases the timer's dropped ticks stay dropped (a stalled node must not
    /// replay a burst of timeouts); with leases the core's clock must not fall behind real time, since a
    /// slow leader clock would stretch its lease, so every tick due is stepped.
    fn on_tick(&mut self) -> Result<(), DriverError> {
        if self.clock.is_some() { self.catch_up_ticks() } else { self.step(Event::Tick) }
    }

    /// With leases: steps every tick that real time says is due.
    fn catch_up_ticks(&mut self) -> Result<(), DriverError> {
        let Some((start, stepped)) = self.clock else { return Ok(()) };
        let due = (start.elapsed().as_nanos() / self.tick.as_nanos().max(1)) as u64;
        for n in stepped..due {
            self.clock = Some((start, n + 1));
            self.step(Event::Tick)?;
        }
        Ok(())
    }

    fn on_wal_progress(&mut self) -> Result<(), DriverError> {
        if let Some(error) = self.wal.failure() {
            return Err(error);
        }
        let seq = self.wal.durable_seq.load(Ordering::Acquire);
        // Really durable (even without fsync acknowledgements): old snapshot files may go.
        self.snapshots.durable(seq);
        if !self.fsync {
            // Writes were acknowledged when queued.
            return Ok(());
        }
        if seq > self.reported_seq {
            self.reported_seq = seq;
            self.step(Event::Persisted { seq })?;
        }
        Ok(())
    }

    /// Steps one event and executes the resulting actions. Without fsync, the writes of a step are
    /// acknowledged right away, which takes another step.
    pub(super) fn step(&mut self, event: Event) -> Result<(), DriverError> {
        let mut next = vec![event];
        while let Some(event) = next.pop() {
            let mut actions = std::mem::take(&mut self.actions);
            self.node.step_into(event, &mut actions);
            let result = self.execute(&mut actions);
            actions.clear();
            self.actions = actions;
            if let Some(seq) = result? {
                if !self.fsync {
                    next.push(Event::Persisted { seq });
                }
            }
            // Answers the actions asked for (a snapshot fetch that could not start).
            next.append(&mut self.followups);
        }
        self.after_membership_step();
        self.maybe_snapshot();
        Ok(())
    }

    /// Executes actions in order; returns the seq of the last `Persist` submitted.
    fn execute(&mut self, actions: &mut Vec<Action>) -> Result<Option<u64>, DriverError> {
        let mut last_persist = None;
        for action in actions.drain(..) {
            self.proposals.on_action(&action, counting(&mut self.activity.proposals_failed));
            match self.reads.on_action(&action) {
                Some(ReadSettled::Ready(job)) => job(Ok(&self.state_machine)),
                Some(ReadSettled::Failed(job, error)) => job(Err(error)),
                None => {}
            }
            match action {
                Action::Send { to, message } => {
                    self.transport.send(to, message);
                }
                Action::Persist(persist) => {
                    let seq = persist.seq;
                    if let Some(meta) = &persist.snapshot {
                        self.snapshots.marker_submitted(seq, meta);
                    }
                    // A stopped writer thread reported why it stopped: name that, not the stop.
                    self.writer
                        .submit(persist)
                        .map_err(|e| self.wal.failure().unwrap_or_else(|| DriverError::WalFailed(e.to_string())))?;
                    last_persist = Some(seq);
                }
                Action::Apply { entries } => {
                    for entry in entries {
                        self.apply(&entry);
                    }
                }
                Action::RoleChanged { role, term, leader } => {
                    let node = self.node.id();
                    tracing::info!(event = "role_changed", node, %role, term, ?leader, "role changed");
                    match role {
                        Role::Candidate => tracing::info!(event = "election_started", node, term, "election started"),
                        Role::Leader => tracing::info!(event = "election_won", node, term, "election won"),
                        Role::Follower | Role::PreCandidate => {}
                    }
                    self.activity.count_role(role);
                }
                Action::InstallSnapshot { from, meta } => self.fetch_snapshot(from, meta),
                Action::MembershipChanged { membership, index } => {
                    tracing::info!(event = "membership_changed", node = self.node.id(), %membership, index, "membership changed");
                    self.membership_changed(&membership);
                }
                Action::ChangeProposed { index, term, .. } => self.change_answered(Ok((index, term))),
                Action::ChangeRejected { error } => self.change_answered(Err(error)),
                Action::TransferRejected { error } => self.transfer_refused(error),
                Action::Proposed { .. } | Action::ProposeRejected { .. } => {}
                Action::ReadReady { .. } | Action::ReadRejected { .. } => {}
            }
        }
        Ok(last_persist)
    }

    /// Applies one committed entry and answers the proposal waiting for it, if any.
    fn apply(&mut self, entry: &Entry) {
        let mut response = match entry.kind {
            EntryKind::Normal => {
                self.snapshots.applied(entry.data.len());
                Some(self.state_machine.apply(entry.index, &entry.data))
            }
            // Configuration entries are the core's; the state machine never sees them.
            EntryKind::Noop | EntryKind::Config => None,
        };
        match self.proposals.applied(entry, counting(&mut self.activity.proposals_failed)) {
            Some(Settled::Applied(reply)) => match response.take() {
                Some(r) => {
                    self.activity.proposals_applied += 1;
                    reply.send(Ok(r));
                }
                None => {
                    self.activity.proposals_failed += 1;
                    reply.send(Err(ProposalError::Overwritten));
                }
            },
            Some(failed) => {
                self.activity.proposals_failed += 1;
                answer(failed);
            }
            None => {}
        }
    }

    /// Where each peer's replication stands, as this node leads it (empty unless it leads).
    fn peer_progress(&self) -> Vec<PeerProgress> {
        if self.node.role() != Role::Leader {
            return Vec::new();
        }
        let m = self.node.membership();
        let mut ids: Vec<NodeId> = m.voters.iter().chain(&m.outgoing).chain(&m.learners).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let last = self.node.last_index();
        ids.into_iter()
            .filter(|&id| id != self.node.id())
            .filter_map(|id| self.node.progress(id))
            .map(|p| PeerProgress { id: p.id, match_index: p.match_index, lag: last.saturating_sub(p.match_index) })
            .collect()
    }

    /// A handle to the WAL writer's distributions.
    pub(super) fn wal_monitor(&self) -> crate::wal::WalMonitor {
        self.writer.monitor()
    }

    fn publish_status(&self) {
        let membership = Arc::clone(&self.shared_membership);
        let mut status =
            Status::of(&self.node, membership, self.proposals.pending(), self.writer.stats(), self.snapshots.stats);
        status.activity = self.activity;
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    /// Runs when the loop ends for any reason.
    pub(super) fn stop(&mut self) {
        self.proposals.fail_all(&ProposalError::Stopped, counting(&mut self.activity.proposals_failed));
        self.reads.fail_all(&ReadFailure::Stopped, |s| match s {
            ReadSettled::Ready(job) | ReadSettled::Failed(job, _) => job(Err(ReadFailure::Stopped)),
        });
        self.fail_admin();
        self.transport.shutdown();
        // Fail proposals still queued; later ones see the closed channel.
        while let Ok(input) = self.inputs.try_recv() {
            match input {
                Input::Propose(_, reply) => reply.send(Err(ProposalError::StoppedBeforeProposing)),
                Input::Read(job) => job(Err(ReadFailure::Stopped)),
                _ => {}
            }
        }
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.running = false;
        status.role = Role::Follower;
        status.leader = None;
    }
}

/// Answers a settled proposal's waiting client. Only failures reach here without a response; an
/// `Applied` without one (cannot happen: the tracker answers `Applied` only at the apply that produces
/// the response) is reported as overwritten rather than dropped.
fn answer<R>(settled: Settled<super::Answer<R>>) {
    let (reply, error) = match settled {
        Settled::Failed(reply, error) => (reply, error),
        Settled::Applied(reply) => (reply, ProposalError::Overwritten),
    };
    reply.send(Err(error));
}

/// [`answer`], counting each failure into `failed`.
fn counting<R>(failed: &mut u64) -> impl FnMut(Settled<super::Answer<R>>) + '_ {
    move |settled| {
        *failed += 1;
        answer(settled);
    }
}

/// A seed that differs per node and per start.
pub(super) fn time_seed(id: NodeId) -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id()) << 32;
    // splitmix64 finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
