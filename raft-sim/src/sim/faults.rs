//! Fault injection: the fault type, the explicit schedule or the profile's
//! random faults (partitions, one-way links, isolating the leader, healing
//! in one direction first, crashes and restarts), and the end of faults.

use raft_core::{Node, NodeId, Term};
use rand::Rng;
use rand::seq::SliceRandom;

use super::Sim;
use super::queue::Ev;
use crate::timeline::Mark;

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
    /// Stall every link of one node, both ways: messages are accepted and
    /// none delivered until the next heal, which delivers them late or
    /// loses them all (by seed).
    Stall(NodeId),
    /// Restore every link.
    Heal,
    /// Restore the links from one node to the others (not back to it).
    HealOutbound(NodeId),
    /// Crash a node (unsynced writes may be lost).
    Crash(NodeId),
    /// Restart a crashed node from its disk.
    Restart(NodeId),
    /// A node's clock runs at a quarter of its speed (a stepped or slewed
    /// clock, a starved VM) while the node itself keeps running: the fault
    /// that leases assume away.
    SlowClock(NodeId),
    /// The node's clock runs at its normal speed again.
    NormalClock(NodeId),
    /// A crashed node's disk loses a random suffix of its synced log
    /// entries; its driver notices on restart and the node is repaired
    /// ([`raft_core::Node::begin_repair`]). No effect on a running node.
    LoseSynced(NodeId),
}

/// A fault at a virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledFault {
    /// When, in virtual microseconds.
    pub at_us: u64,
    /// What.
    pub fault: Fault,
}

/// Whether faults are still being injected, and what liveness needs to know
/// about the time since they stopped.
pub(super) struct FaultState {
    /// Random faults are still being injected.
    pub(super) active: bool,
    /// Every running node's term when the faults stopped.
    pub(super) heal_terms: Vec<(NodeId, Term)>,
    /// The newest term any node led in at or after the faults stopped.
    pub(super) leader_term_since_heal: Option<Term>,
}

impl FaultState {
    /// Faults on, nothing healed yet.
    pub(super) fn new() -> FaultState {
        FaultState { active: true, heal_terms: Vec::new(), leader_term_since_heal: None }
    }

    /// A node became leader in `term`.
    pub(super) fn on_leader(&mut self, term: Term) {
        if !self.active {
            self.leader_term_since_heal = self.leader_term_since_heal.max(Some(term));
        }
    }

    /// Whether a leader emerged after the heal that no member of `members`
    /// (the final configuration) had outgrown by then: a leader elected in
    /// a term older than some member's at the heal was a stale one. Nodes
    /// outside the configuration do not count (a removed node that never
    /// learned of its removal may campaign alone in ever higher terms).
    pub(super) fn leader_since_heal(&self, members: &raft_core::Membership) -> bool {
        let needed = self.heal_terms.iter().filter(|(id, _)| members.contains(*id)).map(|&(_, t)| t).max();
        self.leader_term_since_heal.is_some_and(|t| t >= needed.unwrap_or(0))
    }
}

impl Sim {
    /// Queues the explicit schedule, or the first random fault; and the end
    /// of faults either way.
    pub(super) fn schedule_faults(&mut self) {
        let end = self.end_us();
        match self.cfg.schedule.clone() {
            Some(schedule) => {
                for f in schedule {
                    self.push(f.at_us.min(end), Ev::Fault(f.fault));
                }
            }
            None => {
                if self.cfg.profile.partition_every_us > 0 || self.cfg.profile.crash_every_us > 0 {
                    let at = self.next_fault_delay();
                    self.push(at, Ev::RandomFault);
                }
            }
        }
        self.push(self.faults_end_us(), Ev::EndFaults);
    }

    fn next_fault_delay(&mut self) -> u64 {
        let p = &self.cfg.profile;
        let mean = match (p.partition_every_us, p.crash_every_us) {
            (0, c) => c,
            (pt, 0) => pt,
            (pt, c) => pt.min(c),
        };
        self.rng.gen_range(mean / 2..=mean * 3 / 2)
    }

    /// Time for a random fault: inject one and queue the next, unless the
    /// faults have stopped.
    pub(super) fn random_fault_due(&mut self) {
        if self.faults.active {
            let f = self.random_fault();
            self.apply_fault(f);
            let at = self.now + self.next_fault_delay();
            self.push(at, Ev::RandomFault);
        }
    }

    /// Picks a random fault allowed by the profile, queueing its undoing
    /// (the restart, or the heal) where it has one.
    fn random_fault(&mut self) -> Fault {
        let p = &self.cfg.profile;
        let (can_partition, can_crash) = (p.partition_every_us > 0, p.crash_every_us > 0);
        if p.slow_clocks && self.rng.gen_bool(0.4) {
            return self.random_slow_clock();
        }
        let crash = can_crash && (!can_partition || self.rng.gen_bool(0.5));
        if crash {
            return self.random_crash();
        }
        if self.net.is_partitioned() {
            // Sometimes a partition heals in one direction first: a node
            // that was cut off can talk again but not yet hear (a stale
            // leader keeps sending in its old term).
            let senders = self.net.cut_senders();
            if !senders.is_empty() && self.rng.gen_bool(0.3) {
                return Fault::HealOutbound(*senders.choose(&mut self.rng).expect("cut"));
            }
            return Fault::Heal;
        }
        let (lo, hi) = self.cfg.profile.partition_for_us;
        let heal_after = self.rng.gen_range(lo..=hi);
        self.push(self.now + heal_after, Ev::Fault(Fault::Heal));
        self.random_partition()
    }

    /// Slows one node's clock (the leader most of the time) and queues its
    /// return to normal.
    fn random_slow_clock(&mut self) -> Fault {
        let ids: Vec<NodeId> = self.nodes.keys().collect();
        let victim = match self.current_leader() {
            Some(l) if self.rng.gen_bool(0.7) => l,
            _ => *ids.choose(&mut self.rng).expect("ids"),
        };
        let (lo, hi) = self.cfg.profile.partition_for_us;
        let slow_for = self.rng.gen_range(lo..=hi);
        self.push(self.now + slow_for, Ev::Fault(Fault::NormalClock(victim)));
        Fault::SlowClock(victim)
    }

    /// Restarts a crashed node, or crashes one (the leader more often than
    /// its share) and queues its restart.
    fn random_crash(&mut self) -> Fault {
        let ids: Vec<NodeId> = self.nodes.keys().collect();
        let down = self.down_nodes();
        if !down.is_empty() && self.rng.gen_bool(0.5) {
            return Fault::Restart(*down.choose(&mut self.rng).expect("down"));
        }
        let leader = self.current_leader();
        let victim = match leader {
            Some(l) if self.rng.gen_bool(0.4) => l,
            _ => *ids.choose(&mut self.rng).expect("ids"),
        };
        let (lo, hi) = self.cfg.profile.down_for_us;
        let down_for = self.rng.gen_range(lo..=hi);
        self.push(self.now + down_for, Ev::Fault(Fault::Restart(victim)));
        let loss = self.cfg.profile.disk_loss;
        if loss > 0.0 && self.rng.gen_bool(loss) && self.may_lose_synced(victim) {
            self.push(self.now + 1, Ev::Fault(Fault::LoseSynced(victim)));
        }
        Fault::Crash(victim)
    }

    /// Whether the random faults may cost `victim` synced data: no other
    /// node is being repaired or lost data in a term still led, and every
    /// configuration any node holds has three or more voters (see
    /// [`crate::profile::Profile::disk_loss`]).
    fn may_lose_synced(&self, victim: NodeId) -> bool {
        let others_clean = self.nodes.iter().all(|(id, n)| id == victim || n.repair_mark.is_none());
        let big_enough = self.nodes.iter().filter_map(|(_, n)| n.node.as_ref()).all(|x| {
            let m = x.membership();
            m.voters.len() >= 3 && (m.outgoing.is_empty() || m.outgoing.len() >= 3)
        });
        others_clean && big_enough
    }

    /// A crashed node's disk loses a random suffix of its synced entries.
    fn lose_synced(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get(&id).filter(|n| n.node.is_none()) else { return };
        let len = n.disk.durable().entries.len();
        if len == 0 {
            return;
        }
        let keep = self.rng.gen_range(0..len);
        let now = self.now;
        let n = self.nodes.get_mut(&id).expect("node");
        let last_term = n.disk.durable().entries.last().map_or(0, |e| e.term);
        if let Some(lost_through) = n.disk.lose_synced(keep) {
            // The driver's durable mark (kept beside the hard state): the
            // more up to date of this loss and one not yet repaired.
            let mark = raft_core::Repair { lost_through, last_term };
            n.repair_mark = Some(n.repair_mark.map_or(mark, |m| m.max(mark)));
            n.lost_at_us = Some(now);
            self.stats.disk_losses += 1;
            self.note(|| format!("node {id} lost synced entries after {keep} of {len}"));
        }
    }

    /// Half the time after a leader is asked for a joint change, a partition of a random shape up
    /// to 20 ms later (the joint entry's replication and commit take a few round trips): inside
    /// the window where the joint configuration is on the nodes and an election must win a
    /// majority of each half. Random faults alone landed there too rarely for the sweep to catch
    /// a core that counted only the new half's votes (docs/testing.md).
    pub(super) fn fault_in_joint_window(&mut self) {
        let p = &self.cfg.profile;
        if p.partition_every_us == 0 || self.net.is_partitioned() || !self.rng.gen_bool(0.5) {
            return;
        }
        let (lo, hi) = p.partition_for_us;
        let at = self.now + self.rng.gen_range(100..=20_000);
        let heal = at + self.rng.gen_range(lo..=hi);
        let shape = self.random_partition();
        self.push(at, Ev::Fault(shape));
        self.push(heal, Ev::Fault(Fault::Heal));
    }

    /// One of the partition shapes, at random.
    fn random_partition(&mut self) -> Fault {
        let ids: Vec<NodeId> = self.nodes.keys().collect();
        match self.rng.gen_range(0..5) {
            0 => Fault::IsolateLeader,
            4 => {
                let victim = match self.current_leader() {
                    Some(l) if self.rng.gen_bool(0.5) => l,
                    _ => *ids.choose(&mut self.rng).expect("ids"),
                };
                Fault::Stall(victim)
            }
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

    /// The faults stop: note the newest term (a leader counts for liveness
    /// only if no node has seen a newer one, so a stale leader cut off in a
    /// minority does not), heal every link and restart every crashed node.
    pub(super) fn end_faults(&mut self) {
        self.faults.active = false;
        self.faults.heal_terms =
            self.nodes.iter().filter_map(|(id, n)| n.node.as_ref().map(|x| (id, x.term()))).collect();
        if let Some(l) = self.current_leader() {
            let term = self.nodes[&l].node.as_ref().map(|x| x.term());
            self.faults.leader_term_since_heal = term;
        }
        self.note(|| "faults end: heal and restart everything".into());
        self.apply_fault(Fault::Heal);
        for id in self.down_nodes() {
            self.apply_fault(Fault::Restart(id));
        }
    }

    /// Injects `f`.
    pub(super) fn apply_fault(&mut self, f: Fault) {
        self.note(|| format!("fault: {f:?}"));
        let now = self.now;
        self.rec.mark(|| Mark::Fault { at_us: now, label: format!("{f:?}") });
        let ids: Vec<NodeId> = self.nodes.keys().collect();
        match f {
            Fault::Heal => {
                self.net.heal();
                self.resume_stalls();
            }
            Fault::Stall(a) => self.net.stall(&ids, a),
            Fault::HealOutbound(a) => self.net.heal_outbound(a),
            Fault::Isolate(a) => self.net.isolate(&ids, &[a]),
            Fault::Split(side) => self.net.isolate(&ids, &side),
            Fault::OneWay(a, b) => self.net.cut_one_way(a, b),
            Fault::IsolateLeader => {
                if let Some(l) = self.current_leader() {
                    self.net.isolate(&ids, &[l]);
                }
            }
            Fault::Crash(id) => self.crash(id),
            Fault::Restart(id) => self.restart(id),
            Fault::SlowClock(id) => self.set_clock_speed(id, 4),
            Fault::NormalClock(id) => self.set_clock_speed(id, 1),
            Fault::LoseSynced(id) => self.lose_synced(id),
        }
    }

    /// Crashes a running node: writes whose fsync never returned are lost,
    /// except a random prefix of them that reached the platter anyway.
    fn crash(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id).filter(|n| n.node.is_some()) else { return };
        let survive = self.rng.gen_range(0..=n.disk.pending_writes());
        let reads = n.node.as_ref().map(raft_core::Node::read_stats).unwrap_or_default();
        n.power_off(survive);
        self.stats.add_reads(reads);
        let now = self.now;
        self.rec.mark(|| Mark::Power { node: id, at_us: now, up: false });
        if let Err(v) = self.safety.after_sync(id, &n.disk) {
            self.fail_violation(v);
        }
        self.record_durable_vote(id);
    }

    /// Restarts a crashed node from what its disk holds.
    fn restart(&mut self, id: NodeId) {
        if self.nodes.get(&id).is_none_or(|n| n.node.is_some()) {
            return;
        }
        let seed = self.rng.r#gen::<u64>();
        let tick_us = self.drifted_tick();
        let n = self.nodes.get_mut(&id).expect("node");
        self.safety.on_restart(id, n.disk.durable());
        let node = match Node::restore(n.config.clone(), n.disk.durable().clone(), seed) {
            Ok(mut node) => {
                if let Some(mark) = n.repair_mark {
                    node.begin_repair(mark);
                }
                node
            }
            Err(e) => {
                self.fail("restart", format!("node {id} could not restore from its disk: {e}"));
                return;
            }
        };
        // A restarting driver restores its state machine from the snapshot
        // the durable log follows.
        let base = n.disk.durable().snapshot.as_ref().map_or(0, |m| m.last_included_index);
        let sm = match n.store_from_image(base) {
            Ok(sm) => sm,
            Err(e) => {
                self.fail("restart", format!("node {id}: {e}"));
                return;
            }
        };
        n.power_on(node, sm, tick_us);
        let inc = n.inc;
        let now = self.now;
        self.rec.mark(|| Mark::Power { node: id, at_us: now, up: true });
        self.push(now + tick_us, Ev::Tick { node: id, inc });
    }
}
