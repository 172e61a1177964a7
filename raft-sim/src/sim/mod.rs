//! The simulation engine: virtual time, a seeded RNG, an event queue ordered
//! by (time, sequence), simulated network, disks, clocks and clients around
//! real `raft_core::Node`s. One seed is one exact run.
//!
//! This module holds the configuration, the report, the world ([`Sim`]) and
//! its run loop; each concern of the world lives in a submodule:
//! `queue` (the event queue), `network` (sending, delivery, cut links),
//! `faults` (what is injected, and when), `node` (stepping nodes and
//! carrying out their actions), `clients` (the client workload driver),
//! `checks` (commit rule, catch-up, liveness, linearizability) and `record`
//! (trace and timeline).

mod checks;
mod clients;
mod faults;
mod network;
mod node;
mod queue;
mod reconfig;
mod record;
mod snapshots;

use std::collections::BTreeMap;

use raft_core::{Config, Index, NodeId, Term};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

use self::clients::Clients;
use self::faults::FaultState;
pub use self::faults::{Fault, ScheduledFault};
use self::network::Network;
use self::node::{SimNode, StepContext};
use self::queue::{Ev, EventQueue};
use self::record::Recorder;
use crate::history::{Operation, Outcome};
use crate::idmap::IdMap;
use crate::invariants::{Safety, Violation};
use crate::linearizability::CheckResult;
use crate::profile::Profile;

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
    /// Concurrent clients (1 to 10 by seed).
    pub clients: usize,
    /// Size of the key space (1 to 10 by seed: small, so operations conflict).
    pub keys: u64,
    /// The session bound of every node's store (`KvStore::with_max_sessions`): small enough that
    /// clients which reconnect make the store evict sessions.
    pub max_sessions: usize,
    /// Snapshot policy: each node snapshots its store every this many
    /// applied entries (`None`: never, so the log is never compacted).
    pub snapshot_every: Option<u64>,
    /// Entries a node keeps behind its snapshot (`Config::snapshot_trailing_entries`);
    /// small values make followers catch up by snapshot often.
    pub snapshot_trailing: u64,
    /// Nodes beyond `nodes` that start empty and outside the configuration
    /// (ids `nodes + 1 ..`): membership changes add them.
    pub spares: usize,
    /// Mean time between membership operations (add, promote, remove,
    /// replace, transfer) while the faults last; 0 for none.
    pub reconfig_every_us: u64,
    /// Read-only commands are served by ReadIndex (or the lease, with the
    /// profile's `lease_reads`) instead of through the log, as raftkv does.
    pub reads_without_log: bool,
    /// Explicit fault schedule; replaces the profile's random partitions
    /// and crashes when set.
    pub schedule: Option<Vec<ScheduledFault>>,
    /// Record a human-readable line per event.
    pub trace: bool,
    /// Record messages, roles and faults for an SVG timeline.
    pub timeline: bool,
}

/// Cluster sizes by seed (in blocks of five seeds, so each size meets every profile).
const SIZES: [usize; 10] = [3, 5, 3, 5, 4, 3, 5, 2, 6, 7];

impl SimConfig {
    /// The default configuration for `seed`: 2 to 7 nodes (by seed, 3 and 5 most often) and, if
    /// `profile` is `None`, a profile chosen by seed too.
    pub fn for_seed(seed: u64, profile: Option<&str>, nodes: Option<usize>) -> SimConfig {
        let profile_name = profile.unwrap_or(Profile::NAMES[(seed % Profile::NAMES.len() as u64) as usize]);
        // The workload's shape comes from its own stream of the seed, so that it does not shift the
        // run's RNG: 1 to 10 clients on 1 to 10 keys.
        let mut shape = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_C11E_7500_0000);
        let clients = shape.gen_range(1..=10);
        let keys = shape.gen_range(1..=10);
        let snapshot_every = [None, Some(3), Some(8), Some(20), Some(50)][shape.gen_range(0..5)];
        let snapshot_trailing = [0, 1, 4, 16][shape.gen_range(0..4)];
        let spares = shape.gen_range(0..=2);
        let reconfig_every_us = [0, 15, 30, 60][shape.gen_range(0..4)] * TICK_US;
        SimConfig {
            seed,
            // Odd sizes most often, but even ones too, where a wrong majority
            // formula shows (2 of 4 is no quorum), and 7 nodes.
            nodes: nodes.unwrap_or(SIZES[((seed / 5) % SIZES.len() as u64) as usize]),
            profile: Profile::named(profile_name).unwrap_or_else(|| Profile::named("calm").expect("calm")),
            ticks: 300,
            clients,
            keys,
            max_sessions: 4 * clients + 4,
            snapshot_every,
            snapshot_trailing,
            spares,
            reconfig_every_us,
            reads_without_log: true,
            schedule: None,
            trace: false,
            timeline: false,
        }
    }
}

/// The drift bound (in ticks per election timeout) that covers clocks each
/// off by up to `drift` in either direction: over the `election - 1` ticks a
/// follower is guaranteed to wait, a clock fast by `drift` gains
/// `(election - 1) * 2 * drift / (1 + drift)` ticks on one slow by as much.
pub fn lease_drift_bound(election_ticks: u32, drift: f64) -> u32 {
    let gain = f64::from(election_ticks.saturating_sub(1)) * 2.0 * drift / (1.0 + drift);
    gain.ceil() as u32
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
    /// The linearizability verdict; `None` when it was not checked because the run had already
    /// failed (a broken run's history proves nothing more, and must not count as linearizable).
    pub linearizability: Option<CheckResult>,
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
    /// Snapshots taken, installed by followers, and installs aborted.
    pub snapshots: (u64, u64, u64),
    /// The longest in-memory log any node held at the end of a step.
    pub peak_log_len: usize,
    /// Membership operations the leader was asked for.
    pub reconfigs: u64,
    /// Reads served without the log: confirmed by a read round, from a
    /// leader's lease.
    pub reads: (u64, u64),
    /// Disks that lost synced entries, and nodes repaired after such a loss.
    pub disk_losses: (u64, u64),
    /// Situations the run produced: old messages delivered again, messages
    /// from an older term, pre-vote requests.
    pub situations: Situations,
}

/// Counts of the situations a run produced, so a sweep shows it reached them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Situations {
    /// Copies of messages sent earlier in the run, delivered again.
    pub old_messages: u64,
    /// Messages delivered to a node already in a newer term.
    pub stale_deliveries: u64,
    /// Pre-vote requests delivered.
    pub pre_votes: u64,
    /// Messages held by stalled links: delivered late when they resumed,
    /// and lost with a replaced connection.
    pub stalled: (u64, u64),
    /// Nodes elected leader again after another leader cut part of their
    /// log ("leader flapping").
    pub leader_flaps: u64,
}

impl Situations {
    /// Adds another run's counts.
    pub fn add(&mut self, o: Situations) {
        self.old_messages += o.old_messages;
        self.stale_deliveries += o.stale_deliveries;
        self.pre_votes += o.pre_votes;
        self.stalled.0 += o.stalled.0;
        self.stalled.1 += o.stalled.1;
        self.leader_flaps += o.leader_flaps;
    }
}

/// Counters reported at the end of a run.
#[derive(Default)]
struct Stats {
    /// Events processed.
    events: u64,
    /// Elections won.
    elections: u64,
    /// Log entries whose command had already taken effect (a retry that
    /// reached the log twice), suppressed by the client session.
    duplicates_suppressed: u64,
    snapshots_taken: u64,
    snapshots_installed: u64,
    snapshots_aborted: u64,
    /// The longest in-memory log seen after a step.
    peak_log_len: usize,
    /// Membership operations the leader was asked for.
    reconfigs: u64,
    /// Reads served by a read round and by a lease, over every incarnation.
    reads: raft_core::ReadStats,
    /// Crashes that also cost a disk synced entries, and repairs completed.
    disk_losses: u64,
    repairs: u64,
    /// Copies of earlier messages delivered again, messages delivered to a
    /// node in a newer term, and pre-vote requests delivered.
    old_messages: u64,
    stale_deliveries: u64,
    pre_votes: u64,
    /// Messages stalled links delivered late at the heal, and lost.
    stalled_delivered: u64,
    stalled_lost: u64,
    /// Leaders elected again after losing part of their log to another.
    leader_flaps: u64,
}

/// One simulated world.
pub struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    /// Virtual time, in microseconds.
    now: u64,
    queue: EventQueue,
    nodes: IdMap<SimNode>,
    net: Network,
    faults: FaultState,
    clients: Clients,
    safety: Safety,
    /// About the node step in progress.
    stepping: StepContext,
    stats: Stats,
    rec: Recorder,
    /// The first failure.
    failure: Option<Failure>,
    /// Hash of the store image at each snapshot index, and the node that
    /// produced it first: every replica must produce the same.
    snapshot_hashes: BTreeMap<Index, (u64, NodeId)>,
    /// Every (term, voter, candidate) vote that reached a disk.
    durable_votes: std::collections::BTreeSet<(Term, NodeId, NodeId)>,
}

impl Sim {
    /// Builds the world for `cfg`.
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let link_salt = rng.r#gen::<u64>();
        let mut sim = Sim {
            rng,
            now: 0,
            queue: EventQueue::default(),
            nodes: IdMap::new(),
            net: Network::new(link_salt),
            faults: FaultState::new(),
            clients: Clients::new(),
            safety: Safety::new(),
            stepping: StepContext::default(),
            stats: Stats::default(),
            rec: Recorder::new(cfg.trace, cfg.timeline),
            failure: None,
            snapshot_hashes: BTreeMap::new(),
            durable_votes: std::collections::BTreeSet::new(),
            cfg,
        };
        let n = sim.cfg.nodes.clamp(1, 7) as u64;
        let voters: Vec<NodeId> = (1..=n).collect();
        let template = sim.random_config(voters);
        sim.note(|| format!("config: {template:?}"));
        for id in 1..=n {
            sim.add_node(Config { id, ..template.clone() });
        }
        // Spares join: no configuration until a leader adds them.
        for id in n + 1..=n + sim.cfg.spares as u64 {
            sim.add_node(Config { id, voters: Vec::new(), ..template.clone() });
        }
        sim.start_clients(n);
        sim.schedule_faults();
        sim.schedule_reconfig();
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
        c.snapshot_trailing_entries = self.cfg.snapshot_trailing;
        if let Some(assumed) = self.cfg.profile.lease_reads {
            c.check_quorum = true;
            c.lease_reads = true;
            c.max_clock_drift_ticks = lease_drift_bound(c.election_ticks, assumed);
        }
        c
    }

    /// The end of the run proper (before the drain).
    fn end_us(&self) -> u64 {
        self.cfg.ticks * TICK_US
    }

    /// When the faults stop.
    fn faults_end_us(&self) -> u64 {
        self.end_us() * 6 / 10
    }

    /// When clients stop starting new operations.
    fn ops_end_us(&self) -> u64 {
        self.end_us() * 7 / 10
    }

    /// Every node id, spares included (clients may address any of them).
    fn node_count(&self) -> u64 {
        self.nodes.len() as u64
    }

    /// Schedules `ev` at virtual time `time`.
    fn push(&mut self, time: u64, ev: Ev) {
        self.queue.push(time, ev);
    }

    /// Draws whether something of probability `p` happens; never draws
    /// when `p` is zero.
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen_bool(p)
    }

    /// Adds a trace line (formatted only when tracing).
    fn note(&mut self, line: impl FnOnce() -> String) {
        self.rec.note(self.now, line);
    }

    /// Records a failure, unless one was recorded already.
    #[cold]
    #[inline(never)]
    fn fail(&mut self, property: &str, detail: String) {
        if self.failure.is_none() {
            self.failure =
                Some(Failure { property: property.to_string(), detail, event: self.stats.events, time_us: self.now });
        }
    }

    fn fail_violation(&mut self, v: Violation) {
        self.fail(v.property, v.detail);
    }

    /// Runs to the end (or the first failure) and checks the run.
    pub fn run(mut self) -> RunReport {
        let end = self.end_us();
        self.process(end, false);
        // Drain: no new client operations, no faults; a node still catching
        // up gets a bounded extra time (a slow configuration is not a stuck
        // one). Liveness is judged when everyone has caught up, or at the
        // bound.
        self.process(end + DRAIN_US, true);
        if self.failure.is_none() {
            self.check_liveness();
        }
        let history = self.clients.finish();
        let linearizability = self.check_linearizability(&history);
        self.report(history, linearizability)
    }

    /// Handles events due by `limit` until the first failure (and, when
    /// `drain`, until every node has caught up).
    fn process(&mut self, limit: u64, drain: bool) {
        while self.failure.is_none() && !(drain && self.caught_up()) {
            let Some((time, ev)) = self.queue.pop_due(limit) else { break };
            self.now = time;
            self.stats.events += 1;
            self.handle(ev);
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { node, inc } => self.tick(node, inc),
            Ev::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Ev::Sync { node, inc, count } => self.sync(node, inc, count),
            Ev::Fault(f) => self.apply_fault(f),
            Ev::RandomFault => self.random_fault_due(),
            Ev::EndFaults => self.end_faults(),
            Ev::ClientWake { client } => self.client_wake(client),
            Ev::ClientTimeout { client, seq, attempt } => self.client_timeout(client, seq, attempt),
            Ev::SnapshotFetched { node, inc, from, meta } => self.snapshot_fetched(node, inc, from, meta),
            Ev::Reconfig => self.reconfig_due(),
        }
    }

    fn report(mut self, history: Vec<Operation>, linearizability: Option<CheckResult>) -> RunReport {
        for n in self.nodes.values() {
            if let Some(node) = &n.node {
                self.stats.add_reads(node.read_stats());
            }
        }
        let completed_ops = history.iter().filter(|o| o.outcome != Outcome::Unknown).count();
        RunReport {
            seed: self.cfg.seed,
            events: self.stats.events,
            ops: history.len(),
            completed_ops,
            linearizability,
            failure: self.failure,
            history,
            trace: self.rec.trace,
            timeline: self.rec.timeline,
            elections: self.stats.elections,
            committed: self.safety.committed_len(),
            duplicates_suppressed: self.stats.duplicates_suppressed,
            snapshots: (self.stats.snapshots_taken, self.stats.snapshots_installed, self.stats.snapshots_aborted),
            peak_log_len: self.stats.peak_log_len,
            reconfigs: self.stats.reconfigs,
            reads: (self.stats.reads.by_round, self.stats.reads.by_lease),
            disk_losses: (self.stats.disk_losses, self.stats.repairs),
            situations: Situations {
                old_messages: self.stats.old_messages,
                stale_deliveries: self.stats.stale_deliveries,
                pre_votes: self.stats.pre_votes,
                stalled: (self.stats.stalled_delivered, self.stats.stalled_lost),
                leader_flaps: self.stats.leader_flaps,
            },
        }
    }
}

impl Stats {
    /// Adds one node incarnation's read counters.
    fn add_reads(&mut self, r: raft_core::ReadStats) {
        self.reads.by_round += r.by_round;
        self.reads.by_lease += r.by_lease;
        self.reads.released += r.released;
        self.reads.rejected += r.rejected;
    }
}

/// Runs one seed.
pub fn run(cfg: SimConfig) -> RunReport {
    Sim::new(cfg).run()
}
