//! The simulated nodes: a real `raft_core::Node` with its disk, clock and
//! state machine; stepping it and carrying out its actions (sends, writes,
//! fsyncs, applies, role changes, proposals), and the server side of the
//! client protocol (requests in, replies out).

use std::collections::BTreeSet;

use raft_core::{Action, Bytes, Config, Entry, EntryKind, Event, Index, Node, NodeId, Persist, Role, Term};
use raft_driver_std::StateMachine;
use raft_driver_std::proposals::{ProposalTracker, Settled};
use raft_driver_std::raftkv::store::{KvOp, KvRequest, KvStore};
use raft_driver_std::reads::{ReadSettled, ReadTracker};
use rand::Rng;

use super::network::{ClientError, NetMsg};
use super::queue::Ev;
use super::{Sim, TICK_US};
use crate::disk::SimDisk;
use crate::timeline::Mark;

/// Who waits for a proposal: the client and its operation's sequence number. The driver's
/// [`ProposalTracker`] keeps these exactly as the real node thread keeps reply channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Waiter {
    pub(super) client: u64,
    pub(super) seq: u64,
}

/// A client request as it reaches a node: the command as the server's parser read it, its encoded
/// [`KvRequest`] and who waits for it.
#[derive(Clone, Debug)]
pub(super) struct Request {
    pub(super) waiter: Waiter,
    pub(super) op: KvOp,
    pub(super) data: Bytes,
}

/// One node of the cluster, up or down.
pub(super) struct SimNode {
    pub(super) config: Config,
    /// The protocol core; `None` while crashed.
    pub(super) node: Option<Node>,
    pub(super) disk: SimDisk,
    /// Incarnation: bumped by a crash, so events of an earlier life are
    /// ignored.
    pub(super) inc: u64,
    /// The length of this node's tick (its clock drifts).
    tick_us: u64,
    /// A slow-clock fault divides the clock's speed by this (1: normal).
    pub(super) clock_slowdown: u64,
    /// An fsync is in progress.
    sync_pending: bool,
    /// The real raftkv store, driven through the driver's `StateMachine` trait.
    pub(super) sm: KvStore,
    /// The session bound every replica's store uses.
    max_sessions: usize,
    /// The driver's proposal bookkeeping: which client waits for which entry.
    proposals: ProposalTracker<Waiter>,
    /// The driver's read bookkeeping: which client waits for which read, the op to run and the
    /// reader's clock (ms) when it arrived.
    reads: ReadTracker<(Waiter, KvOp, u64)>,
    /// (session, seq) of every command that took effect on this node's
    /// state machine since it (re)started: the exactly-once check.
    took_effect: BTreeSet<(u64, u64)>,
    /// The driver's durable repair mark: set when the disk lost synced
    /// entries, dropped once the core says the repair is over.
    pub(super) repair_mark: Option<raft_core::Repair>,
    /// When the disk last lost synced entries.
    pub(super) lost_at_us: Option<u64>,
    /// When the node last became leader.
    pub(super) led_since_us: u64,
    /// Ticks this incarnation has seen.
    pub(super) ticks: u64,
    /// While leading: the tick at which each peer was last heard from in the
    /// leader's term.
    pub(super) heard_at: std::collections::BTreeMap<NodeId, u64>,
    /// While leading: the last tick at which a quorum had been heard from.
    pub(super) quorum_heard_at: u64,
    /// The node has led, and since then lost part of its log to another
    /// leader (a truncation): if it leads again, that is a leader flap.
    cut_since_led: bool,
    has_led: bool,
}

impl SimNode {
    fn new(config: Config, node: Node, tick_us: u64, max_sessions: usize) -> SimNode {
        SimNode {
            config,
            node: Some(node),
            disk: SimDisk::new(),
            inc: 0,
            tick_us,
            clock_slowdown: 1,
            sync_pending: false,
            sm: KvStore::with_max_sessions(max_sessions),
            max_sessions,
            proposals: ProposalTracker::new(),
            reads: ReadTracker::new(),
            took_effect: BTreeSet::new(),
            repair_mark: None,
            lost_at_us: None,
            led_since_us: 0,
            ticks: 0,
            heard_at: std::collections::BTreeMap::new(),
            quorum_heard_at: 0,
            cut_since_led: false,
            has_led: false,
        }
    }

    /// Crashes the node: the first `survive` pending writes reach the disk,
    /// the rest are lost, and everything in memory goes.
    pub(super) fn power_off(&mut self, survive: usize) {
        self.disk.sync(Some(survive));
        self.disk.crash();
        self.node = None;
        self.inc += 1;
        self.sync_pending = false;
        // The process is gone, and with it every waiting client's connection.
        self.proposals = ProposalTracker::new();
        self.reads = ReadTracker::new();
    }

    /// Brings the node back as `node` (restored from its disk) with a
    /// fresh state machine and a clock ticking every `tick_us`.
    pub(super) fn power_on(&mut self, node: Node, sm: KvStore, tick_us: u64) {
        self.node = Some(node);
        self.sm = sm;
        self.took_effect.clear();
        self.tick_us = tick_us;
    }

    /// The session bound of this node's store.
    pub(super) fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// The store was replaced by one restored from a snapshot.
    pub(super) fn install_store(&mut self, sm: KvStore) {
        self.sm = sm;
        // Commands that took effect before the snapshot are in its sessions;
        // the exactly-once check starts over from the installed state.
        self.took_effect.clear();
    }

    /// A fresh store, restored from the snapshot image ending at `index`
    /// (none for 0), as a restarting or installing driver builds it.
    pub(super) fn store_from_image(&self, index: Index) -> Result<KvStore, String> {
        let mut sm = KvStore::with_max_sessions(self.max_sessions);
        if index == 0 {
            return Ok(sm);
        }
        let image = self.disk.image(index).ok_or_else(|| format!("no snapshot image for index {index}"))?;
        sm.restore(image).map_err(|e| format!("snapshot image {index} does not restore: {e}"))?;
        Ok(sm)
    }
}

/// What the step in progress is about, for the actions it produces.
#[derive(Default)]
pub(super) struct StepContext {
    /// The action buffer, reused from step to step.
    actions: Vec<Action>,
    /// The message being delivered comes from a term older than the
    /// receiver's.
    pub(super) stale_delivery: bool,
}

impl Sim {
    /// Adds a node with `config` and queues its first tick.
    pub(super) fn add_node(&mut self, config: Config) {
        let id = config.id;
        let node_seed = self.rng.r#gen::<u64>();
        let node = Node::new(config.clone(), node_seed).expect("valid config");
        let tick_us = self.drifted_tick();
        self.nodes.insert(id, SimNode::new(config, node, tick_us, self.cfg.max_sessions));
        let first = self.rng.gen_range(0..tick_us);
        self.push(first, Ev::Tick { node: id, inc: 0 });
    }

    /// A tick length with the profile's clock drift.
    pub(super) fn drifted_tick(&mut self) -> u64 {
        let d = self.cfg.profile.clock_drift;
        if d <= 0.0 {
            return TICK_US;
        }
        let f = 1.0 + self.rng.gen_range(-d..d);
        (TICK_US as f64 * f) as u64
    }

    /// A slow-clock fault starts (`slowdown` > 1) or ends (1).
    pub(super) fn set_clock_speed(&mut self, id: NodeId, slowdown: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.clock_slowdown = slowdown;
        }
    }

    /// The crashed nodes, by id.
    pub(super) fn down_nodes(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.node.is_none()).map(|(id, _)| id).collect()
    }

    /// The leader of the highest term among the running nodes.
    pub(super) fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.node.as_ref().filter(|x| x.role() == Role::Leader).map(|x| (x.term(), id)))
            .max()
            .map(|(_, id)| id)
    }

    /// A node's clock ticks (unless it crashed since the tick was queued).
    pub(super) fn tick(&mut self, id: NodeId, inc: u64) {
        let Some(n) = self.nodes.get(&id) else { return };
        if n.inc != inc || n.node.is_none() {
            return;
        }
        let next = self.now + n.tick_us * n.clock_slowdown;
        self.push(next, Ev::Tick { node: id, inc });
        if let Some(n) = self.nodes.get_mut(&id) {
            n.ticks += 1;
        }
        self.step(id, Event::Tick);
        self.check_quorum_rule(id);
    }

    /// Steps a node and carries out its actions.
    pub(super) fn step(&mut self, id: NodeId, event: Event) {
        let mut actions = std::mem::take(&mut self.stepping.actions);
        actions.clear();
        let n = self.nodes.get_mut(&id).expect("node");
        let Some(node) = n.node.as_mut() else { return };
        let commit_before = node.commit_index();
        node.step_into(event, &mut actions);
        let inc = n.inc;
        if n.repair_mark.is_some() && node.repairing().is_none() {
            // The driver drops its durable mark.
            n.repair_mark = None;
            self.stats.repairs += 1;
        }
        let node = n.node.as_ref().expect("node");
        self.stats.peak_log_len = self.stats.peak_log_len.max(node.entries().len());
        let checked = self.safety.after_step(id, inc, node, &n.disk, &actions);
        let leader_committed = node.role() == Role::Leader && node.commit_index() > commit_before;
        if let Err(v) = checked {
            self.fail_violation(v);
        }
        if leader_committed {
            self.check_leader_commit(id);
        }
        if self.nodes[&id].node.as_ref().is_some_and(|x| x.role() == Role::Leader) {
            self.check_match_indexes(id);
        }
        for a in actions.drain(..) {
            self.execute(id, a);
        }
        self.stepping.actions = actions;
        self.maybe_take_snapshot(id);
    }

    fn execute(&mut self, id: NodeId, action: Action) {
        let now = self.now;
        self.rec.note(now, || crate::fmt::action(id, &action));
        let mut settled = Vec::new();
        let n = self.nodes.get_mut(&id).expect("node");
        n.proposals.on_action(&action, |s| settled.push(s));
        let read = n.reads.on_action(&action);
        if !settled.is_empty() {
            self.answer(id, settled);
        }
        if let Some(read) = read {
            self.answer_read(id, read);
        }
        match action {
            Action::Send { to, message } => self.send(id, to, NetMsg::Raft(message)),
            Action::Persist(p) => self.persist(id, p),
            Action::Apply { entries } => {
                for e in &entries {
                    self.apply_entry(id, e);
                }
            }
            Action::RoleChanged { role, term, .. } => self.role_changed(id, role, term),
            Action::InstallSnapshot { from, meta } => self.fetch_snapshot(id, from, meta),
            Action::ChangeProposed { index, term, .. } => self.check_change_proposed(id, index, term),
            Action::Proposed { .. }
            | Action::ProposeRejected { .. }
            | Action::ChangeRejected { .. }
            | Action::TransferRejected { .. }
            | Action::MembershipChanged { .. } => {}
            Action::ReadReady { .. } | Action::ReadRejected { .. } => {}
        }
    }

    /// Sends the failures among `settled` to their clients. (Successes are answered by
    /// [`Sim::apply_entry`], which has the store's result.)
    fn answer(&mut self, id: NodeId, settled: Vec<Settled<Waiter>>) {
        for s in settled {
            match s {
                Settled::Failed(w, error) => {
                    let result = Err(ClientError::Proposal(error));
                    self.send(id, w.client, NetMsg::Reply { client: w.client, seq: w.seq, result });
                }
                Settled::Applied(w) => {
                    self.fail("proposal tracking", format!("node {id}: {w:?} settled as applied outside an apply"))
                }
            }
        }
    }

    /// A read the core released (served from the store as it is now, after the step's applies, exactly
    /// as the driver's node thread runs it) or refused.
    fn answer_read(&mut self, id: NodeId, read: ReadSettled<(Waiter, KvOp, u64)>) {
        let (w, result) = match read {
            ReadSettled::Ready((w, op, now_ms)) => {
                let Some(result) = self.nodes[&id].sm.query(&op, now_ms) else {
                    return self.fail("reads", format!("node {id}: {op:?} was served as a read but is not one"));
                };
                // A read acknowledges no log index (`max_acked_index` is about writes).
                (w, Ok((result, 0)))
            }
            ReadSettled::Failed((w, _, _), error) => (w, Err(ClientError::Read(error))),
        };
        self.send(id, w.client, NetMsg::Reply { client: w.client, seq: w.seq, result });
    }

    /// A write to the node's disk, volatile until an fsync covers it.
    fn persist(&mut self, id: NodeId, p: Persist) {
        if self.stepping.stale_delivery && (!p.entries.is_empty() || p.truncate_from.is_some()) {
            self.fail("stale term", format!("node {id} changed its log on a message from an older term"));
        }
        let n = self.nodes.get_mut(&id).expect("node");
        if p.truncate_from.is_some() && n.has_led {
            n.cut_since_led = true;
        }
        n.disk.write(p);
        if !n.sync_pending {
            self.schedule_sync(id);
        }
    }

    /// Applies one committed entry to the node's real store, checks exactly-once against the store's
    /// own counters, and answers the client if this node proposed it.
    fn apply_entry(&mut self, id: NodeId, e: &Entry) {
        let n = self.nodes.get_mut(&id).expect("node");
        let mut lower = Vec::new();
        let settled = n.proposals.applied(e, |s| lower.push(s));
        let result = (e.kind == EntryKind::Normal).then(|| {
            let before = n.sm.stats();
            let result = n.sm.apply(e.index, &e.data);
            (before, n.sm.stats(), result)
        });
        if !lower.is_empty() {
            self.answer(id, lower);
        }
        let Some((before, after, result)) = result else {
            if let Some(s) = settled {
                self.answer(id, vec![s]);
            }
            return;
        };
        self.check_effect(id, e, before, after);
        match settled {
            Some(Settled::Applied(w)) => {
                let reply = NetMsg::Reply { client: w.client, seq: w.seq, result: Ok((result, e.index)) };
                self.send(id, w.client, reply);
            }
            Some(failed) => self.answer(id, vec![failed]),
            None => {}
        }
    }

    /// Exactly-once, judged by the store's own counters: a command the store executed (rather than
    /// answering from its session cache) must not have been executed before on this node.
    fn check_effect(
        &mut self,
        id: NodeId,
        e: &Entry,
        before: raft_driver_std::raftkv::store::StoreStats,
        after: raft_driver_std::raftkv::store::StoreStats,
    ) {
        if after.malformed > before.malformed {
            self.fail("state machine", format!("node {id} applied undecodable entry {}", e.index));
            return;
        }
        if after.deduplicated > before.deduplicated {
            self.stats.duplicates_suppressed += 1;
        }
        if after.executed == before.executed {
            return;
        }
        let Some((session, seq)) = KvRequest::session_of(&e.data) else { return };
        if session == 0 {
            return;
        }
        let n = self.nodes.get_mut(&id).expect("node");
        if !n.took_effect.insert((session, seq)) {
            let detail = format!("node {id} applied session {session} seq {seq} twice");
            self.fail("exactly-once", detail);
        }
    }

    fn role_changed(&mut self, id: NodeId, role: Role, term: Term) {
        let now = self.now;
        self.rec.mark(|| Mark::Role { node: id, at_us: now, role, term });
        if role == Role::Leader {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.led_since_us = now;
                n.heard_at.clear();
                n.quorum_heard_at = n.ticks;
                if n.cut_since_led {
                    self.stats.leader_flaps += 1;
                }
                n.has_led = true;
                n.cut_since_led = false;
            }
            self.check_election(id, term);
            self.stats.elections += 1;
            self.faults.on_leader(term);
        }
    }

    /// A node receives a client request and proposes it, as the driver's node thread does: the
    /// tracker learns who waits, and the core accepts or refuses.
    pub(super) fn request(&mut self, id: NodeId, request: Request) {
        let now_ms = self.now / 1000;
        let Some(n) = self.nodes.get_mut(&id).filter(|n| n.node.is_some()) else { return };
        // Read-only commands are served without the log, as the raftkv server serves them.
        if request.op.is_read_only() && self.cfg.reads_without_log {
            let event = n.reads.start((request.waiter, request.op, now_ms));
            return self.step(id, event);
        }
        n.proposals.queue(request.waiter);
        self.step(id, Event::Propose { data: request.data });
        let mut settled = Vec::new();
        if let Some(n) = self.nodes.get_mut(&id) {
            n.proposals.settle_unclaimed(|s| settled.push(s));
        }
        self.answer(id, settled);
    }

    /// Remembers the vote the node's disk now holds, for [`Sim::check_election`].
    pub(super) fn record_durable_vote(&mut self, id: NodeId) {
        let hs = self.nodes[&id].disk.durable().hard_state;
        if let Some(v) = hs.vote {
            self.durable_votes.insert((hs.term, id, v));
        }
    }

    fn schedule_sync(&mut self, id: NodeId) {
        let (lo, hi) = self.cfg.profile.fsync_us;
        let mut delay = self.rng.gen_range(lo..=hi);
        if self.chance(self.cfg.profile.slow_disk) {
            delay += self.cfg.profile.slow_fsync_us;
        }
        let n = self.nodes.get_mut(&id).expect("node");
        n.sync_pending = true;
        // Group commit: this fsync covers what is written now; later writes
        // wait for the next one.
        let count = n.disk.pending_writes();
        let inc = n.inc;
        self.push(self.now + delay, Ev::Sync { node: id, inc, count });
    }

    /// An fsync completes (unless the node crashed since it started).
    pub(super) fn sync(&mut self, id: NodeId, inc: u64, count: usize) {
        let n = self.nodes.get_mut(&id).expect("node");
        if n.inc != inc || n.node.is_none() {
            return;
        }
        n.sync_pending = false;
        let synced = n.disk.sync(Some(count));
        self.record_durable_vote(id);
        if let Err(v) = self.safety.after_sync(id, &self.nodes[&id].disk) {
            self.fail_violation(v);
        }
        if self.nodes[&id].disk.pending_writes() > 0 {
            self.schedule_sync(id);
        }
        if let Some(seq) = synced {
            self.step(id, Event::Persisted { seq });
        }
    }
}
