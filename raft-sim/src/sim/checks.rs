//! Checks made from outside the nodes, against the simulated disks and the
//! client history: the commit rule, catch-up, liveness after the faults
//! stop, and linearizability at the end of a run. (The per-event safety
//! invariants live in `crate::invariants`.)

use raft_core::NodeId;

use super::Sim;
use crate::history::Operation;
use crate::linearizability::{Budget, CheckResult, check};

impl Sim {
    /// The commit rule of Figure 2, checked from outside: a leader advances
    /// its commit index only to an entry of its own term, and only once that
    /// entry is durable on a quorum of the configuration it holds (a
    /// majority of its voters, of each half while joint; learners never
    /// count), judged by the simulated disks, not by what the leader
    /// believes.
    pub(super) fn check_leader_commit(&mut self, id: NodeId) {
        let leader = self.nodes[&id].node.as_ref().expect("leader");
        let (commit, term) = (leader.commit_index(), leader.term());
        let entry_term = leader.term_at(commit);
        if entry_term != Some(term) {
            let detail =
                format!("leader {id} of term {term} advanced commit to {commit}, an entry of term {entry_term:?}");
            self.fail("commit rule", detail);
            return;
        }
        let membership = leader.membership();
        // A disk that lost synced entries in this leader's term may have
        // acknowledged this one before: its ack counts as it was given.
        let since = self.nodes[&id].led_since_us;
        let holds = |v: NodeId| {
            self.nodes.get(&v).is_some_and(|n| n.disk.durably_holds(commit, term) || n.lost_at_us >= Some(since))
        };
        if !membership.has_quorum(holds) {
            let on: Vec<NodeId> =
                self.nodes.iter().filter(|(_, n)| n.disk.durably_holds(commit, term)).map(|(v, _)| v).collect();
            let detail = format!(
                "leader {id} committed {commit}/{term} while only the disks of {on:?} hold it, no quorum of {}",
                crate::fmt::membership(membership)
            );
            self.fail("commit rule", detail);
        }
    }

    /// The leader's match index for each follower names an entry that
    /// follower holds on its disk, unless the follower has moved to a newer
    /// term since (a newer leader may have cut it) or its disk lost synced
    /// entries in this leader's term (the leader learns that from its next
    /// rejection and repairs it).
    pub(super) fn check_match_indexes(&mut self, id: NodeId) {
        let leader = self.nodes[&id].node.as_ref().expect("leader");
        let (term, since) = (leader.term(), self.nodes[&id].led_since_us);
        let mut broken = None;
        for (fid, f) in self.nodes.iter() {
            let Some(pr) = (fid != id).then(|| leader.progress(fid)).flatten() else { continue };
            let m = pr.match_index;
            if m == 0 || f.lost_at_us >= Some(since) {
                continue;
            }
            let f_term = f.node.as_ref().map_or(f.disk.durable().hard_state.term, |x| x.term());
            if f_term != term {
                continue;
            }
            let Some(t) = leader.term_at(m) else { continue };
            if !f.disk.durably_holds(m, t) {
                broken = Some(format!(
                    "leader {id} of term {term} has match index {m}/{t} for node {fid}, whose disk does not hold it"
                ));
                break;
            }
        }
        if let Some(detail) = broken {
            self.fail("match index", detail);
        }
    }

    /// Every live member of the final configuration has applied every
    /// acknowledged write. (Removed nodes, and spares never added, are not
    /// sent the log.)
    pub(super) fn caught_up(&self) -> bool {
        let acked = self.clients.max_acked_index();
        // A patient client still waiting is not caught up either: the drain
        // goes on for it (a slow configuration is not a stuck one).
        if self.clients.overdue(self.ops_end_us()).is_some() {
            return false;
        }
        let Some(members) = self.final_membership() else { return false };
        self.nodes
            .iter()
            .filter(|(id, _)| members.contains(*id))
            .all(|(_, n)| n.node.as_ref().is_none_or(|x| x.applied_index() >= acked))
    }

    /// After the faults heal: a leader exists, every node applied every
    /// acknowledged write, and no client operation is stuck.
    pub(super) fn check_liveness(&mut self) {
        if let Some(detail) = self.liveness_problem() {
            self.fail("liveness", detail);
        }
    }

    /// The first liveness property that does not hold, if any.
    fn liveness_problem(&self) -> Option<String> {
        // Message loss goes on after the heal (it is part of the profile), so
        // an election may be under way at the very end; what must hold is
        // that a leader emerged once the partitions and crashes stopped.
        let members = self.final_membership()?;
        if !self.faults.leader_since_heal(&members) {
            return Some("no leader emerged after the faults healed".to_string());
        }
        let acked = self.clients.max_acked_index();
        for (id, n) in self.nodes.iter() {
            if !members.contains(id) {
                continue;
            }
            let Some(node) = n.node.as_ref() else { continue };
            if node.applied_index() < acked {
                return Some(format!(
                    "node {id} applied {} < acknowledged index {acked} by the end",
                    node.applied_index()
                ));
            }
        }
        let (client, pos) = self.clients.overdue(self.ops_end_us())?;
        Some(format!("client {client} operation {pos} never completed"))
    }

    /// Checks the history for linearizability, unless the run already failed (then `None`: not
    /// checked).
    pub(super) fn check_linearizability(&mut self, history: &[Operation]) -> Option<CheckResult> {
        if self.failure.is_some() {
            return None;
        }
        let result = check(history, Budget::default());
        if let CheckResult::NotLinearizable { key, explanation, .. } = &result {
            let detail = format!("key {key}: {explanation}");
            self.fail("linearizability", detail);
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::super::SimConfig;
    use super::*;

    #[test]
    fn a_failed_run_is_not_reported_linearizable() {
        let mut sim = Sim::new(SimConfig::for_seed(1, Some("calm"), Some(3)));
        // A history no order explains: a read of a value never written.
        let history = vec![Operation {
            id: 0,
            client: 1,
            key: 0,
            kind: crate::history::OpKind::Get,
            invoke_time: 0,
            complete_time: Some(1),
            outcome: crate::history::Outcome::Read { value: Some(42) },
        }];
        assert!(matches!(sim.check_linearizability(&history), Some(CheckResult::NotLinearizable { .. })));
        // The run has failed now (by that very check): nothing more is judged, and nothing is called
        // linearizable.
        assert!(sim.failure.is_some());
        assert_eq!(sim.check_linearizability(&[]), None);
    }
}
