//! The simulation engine: virtual time, a seeded RNG, an event queue ordered
//! by (time, sequence), simulated network, disks, clocks and clients around
//! real `raft_core::Node`s. One seed is one exact run.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use raft_core::{Action, Config, EntryKind, Event, Index, Message, Node, NodeId, ProposeError, Role, Term};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

use crate::disk::SimDisk;
use crate::history::{OpKind, Operation, Outcome};
use crate::invariants::{Safety, Violation};
use crate::linearizability::{Budget, CheckResult, check};
use crate::profile::Profile;
use crate::workload::{Command, KvMachine, Op, OpResult};

/// Virtual length of one base tick.
pub const TICK_US: u64 = 10_000;

/// Liveness bound: once faults have stopped, a write acknowledged this long
/// before the end of the run must be applied on every node by the end.
pub const LIVENESS_BOUND_US: u64 = 30 * TICK_US;

/// Extra time after the end of a run for lagging nodes to catch up (with no
/// new client operations and no faults) before liveness fails.
pub const DRAIN_US: u64 = 200 * TICK_US;

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: everything random in the run derives from it.
    pub seed: u64,
    /// Cluster size (1 to 7).
    pub nodes: usize,
    /// The fault profile.
    pub profile: Profile,
    /// Run length in base ticks. Faults stop at 60%, new client operations
    /// at 70%; the rest is for the liveness check.
    pub ticks: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Size of the key space (small, so operations conflict).
    pub keys: u64,
    /// Explicit fault schedule; replaces the profile's random partitions
    /// and crashes when set.
    pub schedule: Option<Vec<ScheduledFault>>,
    /// Record a human-readable line per event.
    pub trace: bool,
    /// Record messages, roles and faults for an SVG timeline.
    pub timeline: bool,
}

impl SimConfig {
    /// The default configuration for `seed`: 3 or 5 nodes (by seed) and, if
    /// `profile` is `None`, a profile chosen by seed too.
    pub fn for_seed(seed: u64, profile: Option<&str>, nodes: Option<usize>) -> SimConfig {
        let profile_name = profile.unwrap_or(Profile::NAMES[(seed % Profile::NAMES.len() as u64) as usize]);
        SimConfig {
            seed,
            nodes: nodes.unwrap_or(if (seed / 5) % 2 == 0 { 3 } else { 5 }),
            profile: Profile::named(profile_name).unwrap_or_else(|| Profile::named("calm").expect("calm")),
            ticks: 300,
            clients: 3,
            keys: 3,
            schedule: None,
            trace: false,
            timeline: false,
        }
    }
}

/// A fault the simulator injects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut every link of one node.
    Isolate(NodeId),
    /// Cut every link between `side` and the other nodes.
    Split(Vec<NodeId>),
    /// Cut the link `from -> to` only.
    OneWay(NodeId, NodeId),
    /// Cut the current leader away.
    IsolateLeader,
    /// Restore every link.
    Heal,
    /// Restore the links from one node to the others (not back to it).
    HealOutbound(NodeId),
    /// Crash a node (unsynced writes may be lost).
    Crash(NodeId),
    /// Restart a crashed node from its disk.
    Restart(NodeId),
}

/// A fault at a virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledFault {
    /// When, in virtual microseconds.
    pub at_us: u64,
    /// What.
    pub fault: Fault,
}

/// A safety or liveness failure of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The property violated.
    pub property: String,
    /// What was seen.
    pub detail: String,
    /// The event number at which it was detected.
    pub event: u64,
    /// Virtual time of detection.
    pub time_us: u64,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The configuration that ran.
    pub seed: u64,
    /// Events processed.
    pub events: u64,
    /// Client operations recorded.
    pub ops: usize,
    /// Operations with a known outcome.
    pub completed_ops: usize,
    /// The linearizability verdict.
    pub linearizability: CheckResult,
    /// The first failure, if any.
    pub failure: Option<Failure>,
    /// The client history.
    pub history: Vec<Operation>,
    /// Per-event trace lines (only with `trace`).
    pub trace: Vec<String>,
    /// Timeline marks (only with `timeline`).
    pub timeline: Vec<crate::timeline::Mark>,
    /// Elections won during the run.
    pub elections: u64,
    /// Entries committed by the end.
    pub committed: Index,
    /// Applications of a command that had already taken effect (retries
    /// that reached the log twice), answered from the session instead.
    pub duplicates_suppressed: u64,
}

#[derive(Clone, Debug)]
enum NetMsg {
    Raft(Message),
    Request(Command),
    Reply { client: u64, seq: u64, result: Result<(OpResult, Index), Option<NodeId>> },
}

#[derive(Clone, Debug)]
enum Ev {
    Tick { node: NodeId, inc: u64 },
    Deliver { from: u64, to: u64, msg: NetMsg },
    Sync { node: NodeId, inc: u64, count: usize },
    Fault(Fault),
    RandomFault,
    EndFaults,
    ClientWake { client: u64 },
    ClientTimeout { client: u64, seq: u64, attempt: u64 },
}

struct Queued {
    time: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse for earliest-first.
        (o.time, o.seq).cmp(&(self.time, self.seq))
    }
}

struct SimNode {
    config: Config,
    node: Option<Node>,
    disk: SimDisk,
    inc: u64,
    tick_us: u64,
    sync_pending: bool,
    sm: KvMachine,
    /// index -> (client, seq, term) of proposals this node made as leader.
    waiting: BTreeMap<Index, (u64, u64, Term)>,
    /// (client, seq) of every command that took effect on this node's
    /// state machine since it (re)started: the exactly-once check.
    took_effect: BTreeSet<(u64, u64)>,
}

struct Client {
    id: u64,
    seq: u64,
    /// (history position, command, attempt) of the outstanding operation.
    current: Option<(usize, Command, u64)>,
    target: NodeId,
}

/// Client ids live above node ids so both share one address space.
const CLIENT_BASE: u64 = 1000;

/// One simulated world.
pub struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Queued>,
    nodes: BTreeMap<NodeId, SimNode>,
    clients: Vec<Client>,
    cut: BTreeSet<(NodeId, NodeId)>,
    faults_active: bool,
    safety: Safety,
    history: Vec<Operation>,
    next_value: u64,
    events: u64,
    failure: Option<Failure>,
    trace: Vec<String>,
    actions: Vec<Action>,
    max_acked_index: Index,
    elections: u64,
    /// The client command being proposed in the current step.
    proposing: Option<Command>,
    /// Some node was leader at some point after the faults stopped.
    leader_since_heal: bool,
    /// The highest term any node had when the faults stopped.
    heal_term: Term,
    /// Seeds the per-link latency factors.
    link_salt: u64,
    /// The message being delivered comes from a term older than the
    /// receiver's.
    stale_delivery: bool,
    timeline: Vec<crate::timeline::Mark>,
    /// Log entries whose command had already taken effect (a retry that
    /// reached the log twice), suppressed by the client session.
    duplicates_suppressed: u64,
}

impl Sim {
    /// Builds the world for `cfg`.
    pub fn new(cfg: SimConfig) -> Sim {
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: BTreeMap::new(),
            clients: Vec::new(),
            cut: BTreeSet::new(),
            faults_active: true,
            safety: Safety::new(),
            history: Vec::new(),
            next_value: 1,
            events: 0,
            failure: None,
            trace: Vec::new(),
            actions: Vec::new(),
            max_acked_index: 0,
            elections: 0,
            proposing: None,
            leader_since_heal: false,
            heal_term: 0,
            duplicates_suppressed: 0,
            link_salt: 0,
            stale_delivery: false,
            timeline: Vec::new(),
            cfg,
        };
        sim.link_salt = sim.rng.r#gen::<u64>();
        let n = sim.cfg.nodes.clamp(1, 7) as u64;
        let voters: Vec<NodeId> = (1..=n).collect();
        let template = sim.random_config(voters.clone());
        sim.note(|| format!("config: {template:?}"));
        for id in 1..=n {
            let config = Config { id, ..template.clone() };
            let node_seed = sim.rng.r#gen::<u64>();
            let node = Node::new(config.clone(), node_seed).expect("valid config");
            let tick_us = sim.drifted_tick();
            sim.nodes.insert(
                id,
                SimNode {
                    config,
                    node: Some(node),
                    disk: SimDisk::new(),
                    inc: 0,
                    tick_us,
                    sync_pending: false,
                    sm: KvMachine::default(),
                    waiting: BTreeMap::new(),
                    took_effect: BTreeSet::new(),
                },
            );
            let first = sim.rng.gen_range(0..tick_us);
            sim.push(first, Ev::Tick { node: id, inc: 0 });
        }
        for c in 0..sim.cfg.clients as u64 {
            let id = CLIENT_BASE + c;
            let target = sim.rng.gen_range(1..=n);
            sim.clients.push(Client { id, seq: 0, current: None, target });
            let at = sim.rng.gen_range(0..50_000);
            sim.push(at, Ev::ClientWake { client: id });
        }
        let end = sim.end_us();
        match sim.cfg.schedule.clone() {
            Some(schedule) => {
                for f in schedule {
                    sim.push(f.at_us.min(end), Ev::Fault(f.fault));
                }
            }
            None => {
                if sim.cfg.profile.partition_every_us > 0 || sim.cfg.profile.crash_every_us > 0 {
                    let at = sim.next_fault_delay();
                    sim.push(at, Ev::RandomFault);
                }
            }
        }
        sim.push(sim.faults_end_us(), Ev::EndFaults);
        sim
    }

    /// Protocol settings vary by seed: small batches and windows make old
    /// entries travel apart from new ones (the Figure 8 shapes), and turning
    /// PreVote/CheckQuorum off keeps stale leaders around for longer.
    fn random_config(&mut self, voters: Vec<NodeId>) -> Config {
        let mut c = Config::new(1, voters);
        c.pre_vote = self.rng.gen_bool(0.75);
        c.check_quorum = self.rng.gen_bool(0.75);
        c.max_entries_per_msg = *[1, 2, 8, 64].choose(&mut self.rng).expect("choice");
        c.max_inflight_msgs = *[1, 2, 16].choose(&mut self.rng).expect("choice");
        c.election_ticks = self.rng.gen_range(6..=12);
        c.heartbeat_ticks = self.rng.gen_range(1..=2);
        c
    }

    fn end_us(&self) -> u64 {
        self.cfg.ticks * TICK_US
    }

    fn faults_end_us(&self) -> u64 {
        self.end_us() * 6 / 10
    }

    fn ops_end_us(&self) -> u64 {
        self.end_us() * 7 / 10
    }

    fn drifted_tick(&mut self) -> u64 {
        let d = self.cfg.profile.clock_drift;
        if d <= 0.0 {
            return TICK_US;
        }
        let f = 1.0 + self.rng.gen_range(-d..d);
        (TICK_US as f64 * f) as u64
    }

    fn push(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued { time, seq: self.seq, ev });
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let l = line();
            self.trace.push(format!("{:>9}us {l}", self.now));
        }
    }

    fn fail(&mut self, property: &str, detail: String) {
        if self.failure.is_none() {
            self.failure =
                Some(Failure { property: property.to_string(), detail, event: self.events, time_us: self.now });
        }
    }

    fn fail_violation(&mut self, v: Violation) {
        self.fail(v.property, v.detail);
    }

    /// Runs to the end (or the first failure) and checks the run.
    pub fn run(mut self) -> RunReport {
        let end = self.end_us();
        while let Some(q) = self.queue.pop() {
            if q.time > end || self.failure.is_some() {
                self.queue.push(q);
                break;
            }
            self.now = q.time;
            self.events += 1;
            self.handle(q.ev);
        }
        // Drain: no new client operations, no faults; a node still catching
        // up gets a bounded extra time (a slow configuration is not a stuck
        // one). Liveness is judged when everyone has caught up, or at the
        // bound.
        let drain_end = end + DRAIN_US;
        while !self.caught_up() && self.failure.is_none() {
            let Some(q) = self.queue.pop() else { break };
            if q.time > drain_end {
                break;
            }
            self.now = q.time;
            self.events += 1;
            self.handle(q.ev);
        }
        if self.failure.is_none() {
            self.check_liveness();
        }
        for c in &self.clients {
            if let Some((pos, _, _)) = c.current {
                self.history[pos].outcome = Outcome::Unknown;
                self.history[pos].complete_time = None;
            }
        }
        let linearizability =
            if self.failure.is_none() { check(&self.history, Budget::default()) } else { CheckResult::Linearizable };
        if let CheckResult::NotLinearizable { key, explanation, .. } = &linearizability {
            let detail = format!("key {key}: {explanation}");
            self.fail("linearizability", detail);
        }
        let completed_ops = self.history.iter().filter(|o| o.outcome != Outcome::Unknown).count();
        RunReport {
            seed: self.cfg.seed,
            events: self.events,
            ops: self.history.len(),
            completed_ops,
            linearizability,
            failure: self.failure,
            history: self.history,
            trace: self.trace,
            timeline: self.timeline,
            elections: self.elections,
            committed: self.safety.committed_len(),
            duplicates_suppressed: self.duplicates_suppressed,
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { node, inc } => {
                let Some(n) = self.nodes.get(&node) else { return };
                if n.inc != inc || n.node.is_none() {
                    return;
                }
                let next = self.now + n.tick_us;
                self.push(next, Ev::Tick { node, inc });
                self.step(node, Event::Tick);
            }
            Ev::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Ev::Sync { node, inc, count } => self.sync(node, inc, count),
            Ev::Fault(f) => self.apply_fault(f),
            Ev::RandomFault => {
                if self.faults_active {
                    let f = self.random_fault();
                    self.apply_fault(f);
                    let at = self.now + self.next_fault_delay();
                    self.push(at, Ev::RandomFault);
                }
            }
            Ev::EndFaults => {
                self.faults_active = false;
                // A leader counts only if no node has seen a newer term: a
                // stale leader cut off in a minority does not.
                self.heal_term =
                    self.nodes.values().filter_map(|n| n.node.as_ref().map(|x| x.term())).max().unwrap_or(0);
                self.leader_since_heal = self
                    .current_leader()
                    .is_some_and(|l| self.nodes[&l].node.as_ref().is_some_and(|x| x.term() >= self.heal_term));
                self.note(|| "faults end: heal and restart everything".into());
                self.apply_fault(Fault::Heal);
                let down: Vec<NodeId> =
                    self.nodes.iter().filter(|(_, n)| n.node.is_none()).map(|(id, _)| *id).collect();
                for id in down {
                    self.apply_fault(Fault::Restart(id));
                }
            }
            Ev::ClientWake { client } => self.client_wake(client),
            Ev::ClientTimeout { client, seq, attempt } => self.client_timeout(client, seq, attempt),
        }
    }

    /// Steps a node and carries out its actions.
    fn step(&mut self, id: NodeId, event: Event) {
        let mut actions = std::mem::take(&mut self.actions);
        actions.clear();
        let n = self.nodes.get_mut(&id).expect("node");
        let Some(node) = n.node.as_mut() else { return };
        let commit_before = node.commit_index();
        node.step_into(event, &mut actions);
        let inc = n.inc;
        let node = n.node.as_ref().expect("node");
        let checked = self.safety.after_step(id, inc, node, &n.disk, &actions);
        let leader_committed = node.role() == Role::Leader && node.commit_index() > commit_before;
        if let Err(v) = checked {
            self.fail_violation(v);
        }
        if leader_committed {
            self.check_leader_commit(id);
        }
        for a in actions.drain(..) {
            self.execute(id, a);
        }
        self.actions = actions;
    }

    fn execute(&mut self, id: NodeId, action: Action) {
        if self.cfg.trace {
            let line = crate::fmt::action(id, &action);
            self.note(|| line);
        }
        match action {
            Action::Send { to, message } => self.send(id, to, NetMsg::Raft(message)),
            Action::Persist(p) => {
                if self.stale_delivery && (!p.entries.is_empty() || p.truncate_from.is_some()) {
                    self.fail("stale term", format!("node {id} changed its log on a message from an older term"));
                }
                let n = self.nodes.get_mut(&id).expect("node");
                n.disk.write(p);
                if !n.sync_pending {
                    self.schedule_sync(id);
                }
            }
            Action::Apply { entries } => {
                for e in &entries {
                    if e.kind != EntryKind::Normal {
                        continue;
                    }
                    let Some(cmd) = Command::decode(&e.data) else {
                        self.fail("state machine", format!("node {id} applied undecodable entry {}", e.index));
                        continue;
                    };
                    let n = self.nodes.get_mut(&id).expect("node");
                    let effects_before = n.sm.effects;
                    let result = n.sm.apply(&cmd);
                    if n.sm.effects > effects_before {
                        if !n.took_effect.insert((cmd.client, cmd.seq)) {
                            let detail = format!("node {id} applied client {} seq {} twice", cmd.client, cmd.seq);
                            self.fail("exactly-once", detail);
                        }
                    } else {
                        self.duplicates_suppressed += 1;
                    }
                    let n = self.nodes.get_mut(&id).expect("node");
                    let waiter = n.waiting.remove(&e.index);
                    if let (Some(result), Some((client, seq, term))) = (result, waiter) {
                        if term == e.term && client == cmd.client && seq == cmd.seq {
                            let reply = NetMsg::Reply { client, seq, result: Ok((result, e.index)) };
                            self.send(id, client, reply);
                        }
                    }
                }
            }
            Action::RoleChanged { role, term, .. } => {
                if self.cfg.timeline {
                    self.timeline.push(crate::timeline::Mark::Role { node: id, at_us: self.now, role, term });
                }
                if role == Role::Leader {
                    self.elections += 1;
                    self.leader_since_heal |= !self.faults_active && term >= self.heal_term;
                } else {
                    // Proposals in flight may never commit; clients retry.
                    self.nodes.get_mut(&id).expect("node").waiting.clear();
                }
            }
            Action::Proposed { first_index, term, .. } => {
                if let Some(cmd) = self.proposing {
                    self.nodes.get_mut(&id).expect("node").waiting.insert(first_index, (cmd.client, cmd.seq, term));
                }
            }
            Action::ProposeRejected { error } => {
                if let Some(cmd) = self.proposing {
                    let hint = match error {
                        ProposeError::NotLeader { leader } => leader,
                        ProposeError::Backpressure | ProposeError::EntryTooLarge { .. } => Some(id),
                    };
                    self.send(id, cmd.client, NetMsg::Reply { client: cmd.client, seq: cmd.seq, result: Err(hint) });
                }
            }
        }
    }

    /// The commit rule of Figure 2, checked from outside: a leader advances
    /// its commit index only to an entry of its own term, and only once that
    /// entry is durable on a majority (judged by the simulated disks, not by
    /// what the leader believes).
    fn check_leader_commit(&mut self, id: NodeId) {
        let leader = self.nodes[&id].node.as_ref().expect("leader");
        let (commit, term) = (leader.commit_index(), leader.term());
        let entry_term = leader.term_at(commit);
        if entry_term != Some(term) {
            let detail =
                format!("leader {id} of term {term} advanced commit to {commit}, an entry of term {entry_term:?}");
            self.fail("commit rule", detail);
            return;
        }
        let durable = self
            .nodes
            .values()
            .filter(|n| n.disk.durable().entries.get((commit - 1) as usize).is_some_and(|e| e.term == term))
            .count();
        if durable < self.nodes.len() / 2 + 1 {
            let detail = format!("leader {id} committed {commit}/{term} while only {durable} disks hold it");
            self.fail("commit rule", detail);
        }
    }

    fn schedule_sync(&mut self, id: NodeId) {
        let p = &self.cfg.profile;
        let mut delay = self.rng.gen_range(p.fsync_us.0..=p.fsync_us.1);
        if p.slow_disk > 0.0 && self.rng.gen_bool(p.slow_disk) {
            delay += p.slow_fsync_us;
        }
        let n = self.nodes.get_mut(&id).expect("node");
        n.sync_pending = true;
        // Group commit: this fsync covers what is written now; later writes
        // wait for the next one.
        let count = n.disk.pending_writes();
        let inc = n.inc;
        self.push(self.now + delay, Ev::Sync { node: id, inc, count });
    }

    fn sync(&mut self, id: NodeId, inc: u64, count: usize) {
        let n = self.nodes.get_mut(&id).expect("node");
        if n.inc != inc || n.node.is_none() {
            return;
        }
        n.sync_pending = false;
        let synced = n.disk.sync(Some(count));
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

    fn send(&mut self, from: u64, to: u64, msg: NetMsg) {
        let mark = self.cfg.timeline && from < CLIENT_BASE && to < CLIENT_BASE;
        let kind = match (&msg, mark) {
            (NetMsg::Raft(m), true) => Some(crate::fmt::kind(m)),
            _ => None,
        };
        let sent_us = self.now;
        let record = |sim: &mut Sim, arrive_us: Option<u64>| {
            if let Some(kind) = kind {
                sim.timeline.push(crate::timeline::Mark::Message { from, to, sent_us, arrive_us, kind });
            }
        };
        if self.cut.contains(&(from, to)) {
            record(self, None);
            return;
        }
        let p = &self.cfg.profile;
        let (drop, dup, delay_p, slow) = (p.drop, p.duplicate, p.delay, p.slow_latency_us);
        let (lo, hi) = p.latency_us;
        if drop > 0.0 && self.rng.gen_bool(drop) {
            record(self, None);
            return;
        }
        let copies = if dup > 0.0 && self.rng.gen_bool(dup) { 2 } else { 1 };
        let link_factor = self.link_factor(from, to);
        let mut msg = Some(msg);
        for copy in 0..copies {
            let mut latency = (self.rng.gen_range(lo..=hi) as f64 * link_factor) as u64;
            if delay_p > 0.0 && self.rng.gen_bool(delay_p) {
                latency += self.rng.gen_range(0..=slow);
            }
            record(self, Some(self.now + latency));
            // Clone only for a duplicate; the last copy takes the message.
            let msg = if copy + 1 == copies { msg.take() } else { msg.clone() }.expect("message");
            self.push(self.now + latency, Ev::Deliver { from, to, msg });
        }
    }

    /// Each directed link has its own speed for the whole run (0.5x to 2x
    /// the profile's latency), so some paths are consistently slower, as in
    /// a real network; derived from the seed, not drawn per message.
    fn link_factor(&self, from: u64, to: u64) -> f64 {
        let mut x = self.link_salt ^ from.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ to.rotate_left(32);
        // splitmix64 finaliser: a well-mixed, deterministic hash.
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        0.5 + 1.5 * (x as f64 / u64::MAX as f64)
    }

    fn deliver(&mut self, from: u64, to: u64, msg: NetMsg) {
        // A partition that started while the message was in flight drops it.
        if self.cut.contains(&(from, to)) {
            return;
        }
        match msg {
            NetMsg::Raft(message) => {
                let Some(term) = self.nodes.get(&to).and_then(|n| n.node.as_ref()).map(|n| n.term()) else {
                    return;
                };
                // Figure 2: a message from an older term is refused; it
                // must never change the receiver's log.
                self.stale_delivery = message.term < term;
                self.step(to, Event::Message { from, message });
                self.stale_delivery = false;
            }
            NetMsg::Request(cmd) => self.request(to, cmd),
            NetMsg::Reply { client, seq, result } => self.client_reply(client, seq, result),
        }
    }

    /// A node receives a client request.
    fn request(&mut self, id: NodeId, cmd: Command) {
        let Some(node) = self.nodes.get(&id).and_then(|n| n.node.as_ref()) else { return };
        if node.role() != Role::Leader {
            let hint = node.leader();
            self.send(id, cmd.client, NetMsg::Reply { client: cmd.client, seq: cmd.seq, result: Err(hint) });
            return;
        }
        self.proposing = Some(cmd);
        self.step(id, Event::Propose { data: cmd.encode() });
        self.proposing = None;
    }

    // ----- clients -----------------------------------------------------

    fn client_wake(&mut self, client: u64) {
        let c = (client - CLIENT_BASE) as usize;
        if self.clients[c].current.is_some() || self.now >= self.ops_end_us() {
            return;
        }
        let key = self.rng.gen_range(0..self.cfg.keys);
        let op = if self.rng.gen_bool(0.5) {
            let value = self.next_value;
            self.next_value += 1;
            Op::Put { key, value }
        } else {
            Op::Get { key }
        };
        self.clients[c].seq += 1;
        let cmd = Command { client, seq: self.clients[c].seq, op };
        let kind = match op {
            Op::Put { value, .. } => OpKind::Put { value },
            Op::Get { .. } => OpKind::Get,
        };
        let pos = self.history.len();
        self.history.push(Operation {
            id: pos as u64,
            client,
            key,
            kind,
            invoke_time: self.now,
            complete_time: None,
            outcome: Outcome::Unknown,
        });
        self.clients[c].current = Some((pos, cmd, 0));
        self.client_send(c);
    }

    fn client_send(&mut self, c: usize) {
        let Some((_, cmd, attempt)) = self.clients[c].current else { return };
        let target = self.clients[c].target;
        let id = self.clients[c].id;
        self.note(|| format!("client {id} -> {target} {:?} seq {} attempt {attempt}", cmd.op, cmd.seq));
        self.send(id, target, NetMsg::Request(cmd));
        let timeout = self.now + 8 * TICK_US;
        self.push(timeout, Ev::ClientTimeout { client: id, seq: cmd.seq, attempt });
    }

    fn client_reply(&mut self, client: u64, seq: u64, result: Result<(OpResult, Index), Option<NodeId>>) {
        let c = (client - CLIENT_BASE) as usize;
        let Some((pos, cmd, attempt)) = self.clients[c].current else { return };
        if cmd.seq != seq {
            return;
        }
        match result {
            Ok((r, index)) => {
                let outcome = match (cmd.op, r) {
                    (Op::Put { .. }, OpResult::Written) => Outcome::Ok,
                    (Op::Get { .. }, OpResult::Read(value)) => Outcome::Read { value },
                    _ => {
                        self.fail("client", format!("client {client} got a mismatched reply {r:?} to {:?}", cmd.op));
                        return;
                    }
                };
                self.history[pos].outcome = outcome;
                self.history[pos].complete_time = Some(self.now);
                // Acks in the last stretch of the run may not have reached
                // every node yet; the liveness bound covers the others.
                if self.now + LIVENESS_BOUND_US <= self.end_us() {
                    self.max_acked_index = self.max_acked_index.max(index);
                }
                self.clients[c].current = None;
                let think = self.rng.gen_range(0..20_000);
                self.push(self.now + think, Ev::ClientWake { client });
            }
            Err(hint) => {
                let n = self.cfg.nodes as u64;
                let target = match hint {
                    Some(h) if h != self.clients[c].target => h,
                    _ => self.rng.gen_range(1..=n),
                };
                self.clients[c].target = target;
                self.clients[c].current = Some((pos, cmd, attempt + 1));
                let c_id = self.clients[c].id;
                let backoff = self.rng.gen_range(1_000..5_000);
                self.push(self.now + backoff, Ev::ClientTimeout { client: c_id, seq, attempt: u64::MAX });
            }
        }
    }

    fn client_timeout(&mut self, client: u64, seq: u64, attempt: u64) {
        let c = (client - CLIENT_BASE) as usize;
        let Some((pos, cmd, current_attempt)) = self.clients[c].current else { return };
        if cmd.seq != seq {
            return;
        }
        if attempt == u64::MAX {
            // Retry after a NotLeader answer (already redirected).
            self.clients[c].current = Some((pos, cmd, current_attempt));
            self.client_send(c);
            return;
        }
        if attempt != current_attempt {
            return;
        }
        let n = self.cfg.nodes as u64;
        self.clients[c].target = self.rng.gen_range(1..=n);
        self.clients[c].current = Some((pos, cmd, attempt + 1));
        self.client_send(c);
    }

    // ----- faults ------------------------------------------------------

    fn next_fault_delay(&mut self) -> u64 {
        let p = &self.cfg.profile;
        let mean = match (p.partition_every_us, p.crash_every_us) {
            (0, c) => c,
            (pt, 0) => pt,
            (pt, c) => pt.min(c),
        };
        self.rng.gen_range(mean / 2..=mean * 3 / 2)
    }

    fn random_fault(&mut self) -> Fault {
        let p = self.cfg.profile.clone();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let down: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| n.node.is_none()).map(|(id, _)| *id).collect();
        let can_partition = p.partition_every_us > 0;
        let can_crash = p.crash_every_us > 0;
        let crash = can_crash && (!can_partition || self.rng.gen_bool(0.5));
        if crash {
            if !down.is_empty() && self.rng.gen_bool(0.5) {
                return Fault::Restart(*down.choose(&mut self.rng).expect("down"));
            }
            let leader = self.current_leader();
            let victim = match leader {
                Some(l) if self.rng.gen_bool(0.4) => l,
                _ => *ids.choose(&mut self.rng).expect("ids"),
            };
            let down_for = self.rng.gen_range(p.down_for_us.0..=p.down_for_us.1);
            self.push(self.now + down_for, Ev::Fault(Fault::Restart(victim)));
            return Fault::Crash(victim);
        }
        if !self.cut.is_empty() {
            // Sometimes a partition heals in one direction first: a node
            // that was cut off can talk again but not yet hear (a stale
            // leader keeps sending in its old term).
            if self.rng.gen_bool(0.3) {
                let senders: Vec<NodeId> = self.cut.iter().map(|&(a, _)| a).collect();
                return Fault::HealOutbound(*senders.choose(&mut self.rng).expect("cut"));
            }
            return Fault::Heal;
        }
        let heal_after = self.rng.gen_range(p.partition_for_us.0..=p.partition_for_us.1);
        self.push(self.now + heal_after, Ev::Fault(Fault::Heal));
        match self.rng.gen_range(0..4) {
            0 => Fault::IsolateLeader,
            1 => {
                let a = *ids.choose(&mut self.rng).expect("ids");
                let b = *ids.choose(&mut self.rng).expect("ids");
                Fault::OneWay(a, b)
            }
            2 => Fault::Isolate(*ids.choose(&mut self.rng).expect("ids")),
            _ => {
                let mut shuffled = ids.clone();
                shuffled.shuffle(&mut self.rng);
                let k = self.rng.gen_range(1..ids.len().max(2));
                Fault::Split(shuffled[..k.min(ids.len())].to_vec())
            }
        }
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.node.as_ref().filter(|x| x.role() == Role::Leader).map(|x| (x.term(), *id)))
            .max()
            .map(|(_, id)| id)
    }

    fn apply_fault(&mut self, f: Fault) {
        self.note(|| format!("fault: {f:?}"));
        if self.cfg.timeline {
            self.timeline.push(crate::timeline::Mark::Fault { at_us: self.now, label: format!("{f:?}") });
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        match f {
            Fault::Heal => self.cut.clear(),
            Fault::HealOutbound(a) => self.cut.retain(|&(from, _)| from != a),
            Fault::Isolate(a) => self.isolate(&ids, &[a]),
            Fault::Split(side) => self.isolate(&ids, &side),
            Fault::OneWay(a, b) => {
                if a != b {
                    self.cut.insert((a, b));
                }
            }
            Fault::IsolateLeader => {
                if let Some(l) = self.current_leader() {
                    self.isolate(&ids, &[l]);
                }
            }
            Fault::Crash(id) => self.crash(id),
            Fault::Restart(id) => self.restart(id),
        }
    }

    fn isolate(&mut self, ids: &[NodeId], side: &[NodeId]) {
        for &a in side {
            for &b in ids {
                if !side.contains(&b) {
                    self.cut.insert((a, b));
                    self.cut.insert((b, a));
                }
            }
        }
    }

    fn crash(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        if n.node.is_none() {
            return;
        }
        // Some writes issued before the crash may have reached the platter
        // even though their fsync never returned: keep a random prefix.
        let pending = n.disk.pending_writes();
        let survive = self.rng.gen_range(0..=pending);
        let n = self.nodes.get_mut(&id).expect("node");
        n.disk.sync(Some(survive));
        n.disk.crash();
        n.node = None;
        n.inc += 1;
        if self.cfg.timeline {
            self.timeline.push(crate::timeline::Mark::Power { node: id, at_us: self.now, up: false });
        }
        n.sync_pending = false;
        n.waiting.clear();
        if let Err(v) = self.safety.after_sync(id, &self.nodes[&id].disk) {
            self.fail_violation(v);
        }
    }

    fn restart(&mut self, id: NodeId) {
        if self.nodes.get(&id).is_none_or(|n| n.node.is_some()) {
            return;
        }
        let seed = self.rng.r#gen::<u64>();
        let tick_us = self.drifted_tick();
        let n = self.nodes.get_mut(&id).expect("node");
        self.safety.on_restart(id, &n.disk.durable().entries);
        match Node::restore(n.config.clone(), n.disk.durable().clone(), seed) {
            Ok(node) => n.node = Some(node),
            Err(e) => {
                self.fail("restart", format!("node {id} could not restore from its disk: {e}"));
                return;
            }
        }
        n.sm = KvMachine::default();
        n.took_effect.clear();
        if self.cfg.timeline {
            self.timeline.push(crate::timeline::Mark::Power { node: id, at_us: self.now, up: true });
        }
        n.tick_us = tick_us;
        let inc = n.inc;
        self.push(self.now + tick_us, Ev::Tick { node: id, inc });
    }

    // ----- end of run --------------------------------------------------

    /// Every live node has applied every acknowledged write.
    fn caught_up(&self) -> bool {
        self.nodes.values().all(|n| n.node.as_ref().is_none_or(|x| x.applied_index() >= self.max_acked_index))
    }

    /// After the faults heal: a leader exists, every node applied every
    /// acknowledged write, and all state machines agree.
    fn check_liveness(&mut self) {
        // Message loss goes on after the heal (it is part of the profile), so
        // an election may be under way at the very end; what must hold is
        // that a leader emerged once the partitions and crashes stopped.
        if !self.leader_since_heal {
            self.fail("liveness", "no leader emerged after the faults healed".to_string());
            return;
        }
        for (id, n) in &self.nodes {
            let Some(node) = n.node.as_ref() else { continue };
            if node.applied_index() < self.max_acked_index {
                let detail = format!(
                    "node {id} applied {} < acknowledged index {} by the end",
                    node.applied_index(),
                    self.max_acked_index
                );
                self.fail("liveness", detail);
                return;
            }
        }
        for c in &self.clients {
            if let Some((pos, _, _)) = c.current {
                if self.history[pos].invoke_time + 30 * TICK_US < self.ops_end_us() {
                    let detail = format!("client {} operation {pos} never completed", c.id);
                    self.fail("liveness", detail);
                    return;
                }
            }
        }
    }
}

/// Runs one seed.
pub fn run(cfg: SimConfig) -> RunReport {
    Sim::new(cfg).run()
}
