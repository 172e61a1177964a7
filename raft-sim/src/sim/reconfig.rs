//! Membership changes and leadership transfers, injected like faults: while
//! the faults last, every so often the current leader is asked to add a
//! learner (a spare node that starts empty and catches up, by snapshot if
//! the log was compacted), promote one, remove a voter or a learner (the
//! leader itself included), replace voters through a joint configuration,
//! or hand leadership to another voter. The core may refuse (a change still
//! uncommitted, a learner behind): that is traced and is part of the run.
//!
//! What the checks need from membership is here too: the configuration the
//! run ends with, whose members must all catch up.

use raft_core::{Event, Membership, MembershipChange, NodeId};
use rand::Rng;
use rand::seq::SliceRandom;

use super::Sim;
use super::queue::Ev;
use crate::timeline::Mark;

impl Sim {
    /// Queues the first membership operation, if the seed makes any.
    pub(super) fn schedule_reconfig(&mut self) {
        if self.cfg.reconfig_every_us > 0 && self.cfg.schedule.is_none() {
            let at = self.next_reconfig_delay();
            self.push(at, Ev::Reconfig);
        }
    }

    fn next_reconfig_delay(&mut self) -> u64 {
        let mean = self.cfg.reconfig_every_us;
        self.rng.gen_range(mean / 2..=mean * 3 / 2)
    }

    /// Time for a membership operation: ask the leader for one and queue
    /// the next, until the faults stop.
    pub(super) fn reconfig_due(&mut self) {
        if !self.faults.active {
            return;
        }
        if let Some((leader, event)) = self.random_reconfig() {
            self.note(|| format!("reconfig: ask {leader} for {event:?}"));
            let now = self.now;
            self.rec.mark(|| Mark::Fault { at_us: now, label: format!("{event:?}") });
            self.stats.reconfigs += 1;
            let joint = matches!(&event, Event::ChangeMembership { change: MembershipChange::Set { .. }, .. });
            self.step(leader, event);
            if joint {
                self.fault_in_joint_window();
            }
        }
        let at = self.now + self.next_reconfig_delay();
        self.push(at, Ev::Reconfig);
    }

    /// A random membership change or transfer for the current leader.
    fn random_reconfig(&mut self) -> Option<(NodeId, Event)> {
        let leader = self.current_leader()?;
        let m = self.nodes[&leader].node.as_ref()?.membership().clone();
        let outsiders: Vec<NodeId> = self.nodes.keys().filter(|&id| !m.contains(id)).collect();
        let others: Vec<NodeId> = m.voters.iter().copied().filter(|&v| v != leader).collect();
        let pick = |rng: &mut rand_chacha::ChaCha8Rng, v: &[NodeId]| v.choose(rng).copied();
        // Only the operations that apply, equally likely.
        let mut ops = Vec::new();
        if !outsiders.is_empty() {
            ops.push(0);
        }
        if !m.learners.is_empty() {
            ops.extend([1, 3, 4]);
        }
        // Voters go down to two at the least; removing the leader is allowed.
        if m.voters.len() > 2 {
            ops.push(2);
        }
        if !others.is_empty() {
            ops.push(5);
        }
        let change = match *ops.choose(&mut self.rng)? {
            0 => MembershipChange::AddLearner(pick(&mut self.rng, &outsiders)?),
            1 => MembershipChange::Promote(pick(&mut self.rng, &m.learners)?),
            2 => MembershipChange::Remove(pick(&mut self.rng, &m.voters)?),
            3 => MembershipChange::Remove(pick(&mut self.rng, &m.learners)?),
            4 => self.random_replacement(&m)?,
            _ => return Some((leader, Event::TransferLeadership { to: pick(&mut self.rng, &others)? })),
        };
        Some((leader, Event::ChangeMembership { change, context: None }))
    }

    /// Replaces up to two voters by up to two learners at once: a joint
    /// change whenever more than one voter differs.
    fn random_replacement(&mut self, m: &Membership) -> Option<MembershipChange> {
        if m.learners.is_empty() {
            return None;
        }
        let mut voters = m.voters.clone();
        let mut learners = m.learners.clone();
        voters.shuffle(&mut self.rng);
        learners.shuffle(&mut self.rng);
        let out = self.rng.gen_range(0..=2usize.min(voters.len() - 1));
        let promoted = self.rng.gen_range(1..=2usize.min(learners.len()));
        voters.truncate(voters.len() - out);
        voters.extend(learners.drain(..promoted));
        voters.sort_unstable();
        learners.sort_unstable();
        Some(MembershipChange::Set { voters, learners })
    }

    /// The configuration the run is judged by: the current leader's, else
    /// that of the running node that knows the most committed log.
    pub(super) fn final_membership(&self) -> Option<Membership> {
        if let Some(l) = self.current_leader() {
            return self.nodes[&l].node.as_ref().map(|n| n.membership().clone());
        }
        self.nodes
            .values()
            .filter_map(|n| n.node.as_ref())
            .max_by_key(|n| (n.commit_index(), n.term()))
            .map(|n| n.membership().clone())
    }
}
