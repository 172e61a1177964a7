//! Checks made from outside the nodes, against the simulated disks and the
//! client history: the commit rule, catch-up, liveness after the faults
//! stop, and linearizability at the end of a run. (The per-event safety
//! invariants live in `crate::invariants`.)

use raft_core::{EntryKind, Index, Node, NodeId, ProgressState, Role, Term};

use super::Sim;
use crate::history::Operation;
use crate::linearizability::{Budget, CheckResult, check};

/// See [`Sim::observable`].
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Observable {
    role: Role,
    term: Term,
    vote: Option<NodeId>,
    commit: Index,
    leader: Option<NodeId>,
    progress: Vec<(NodeId, Index, Index, ProgressState)>,
}

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
        if !quorum_of(membership, holds) {
            let on: Vec<NodeId> =
                self.nodes.iter().filter(|(_, n)| n.disk.durably_holds(commit, term)).map(|(v, _)| v).collect();
            let detail = format!(
                "leader {id} committed {commit}/{term} while only the disks of {on:?} hold it, no quorum of {}",
                crate::fmt::membership(membership)
            );
            self.fail("commit rule", detail);
        }
    }

    /// What a message from an older term must leave alone: role, term, vote,
    /// commit index, leader, and the leader's view of each follower.
    pub(super) fn observable(&self, n: &Node) -> Observable {
        let progress = self
            .nodes
            .keys()
            .filter_map(|id| n.progress(id).map(|p| (id, p.match_index, p.next_index, p.state)))
            .collect();
        Observable {
            role: n.role(),
            term: n.term(),
            vote: n.hard_state().vote,
            commit: n.commit_index(),
            leader: n.leader(),
            progress,
        }
    }

    /// A message from `from` in `term` reaches `to`: a leader of that term
    /// has heard from `from` (for the CheckQuorum check).
    pub(super) fn heard(&mut self, to: NodeId, from: NodeId, term: Term) {
        let Some(n) = self.nodes.get_mut(&to) else { return };
        if n.node.as_ref().is_some_and(|x| x.role() == Role::Leader && x.term() == term) {
            n.heard_at.insert(from, n.ticks);
        }
    }

    /// CheckQuorum (thesis §6.2): a leader that has heard from no quorum of
    /// its configuration for two of its election timeouts has stepped down.
    /// (It checks once per election timeout, so the longest it can take is
    /// just under two.) Followers it has not heard from since it was
    /// elected, or since they joined, count from then; the two timeouts run
    /// from the last tick at which some quorum of the configuration then in
    /// force had been heard from (a configuration change does not reset it).
    pub(super) fn check_quorum_rule(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node");
        let Some(x) = n.node.as_ref().filter(|x| x.role() == Role::Leader) else { return };
        if !n.config.check_quorum {
            return;
        }
        let (ticks, limit) = (n.ticks, 2 * u64::from(n.config.election_ticks));
        let m = x.membership();
        for v in m.voters.iter().chain(&m.outgoing) {
            n.heard_at.entry(*v).or_insert(ticks);
        }
        let heard = &n.heard_at;
        if quorum_of(m, |v| v == id || heard.get(&v).is_some_and(|&t| t + limit >= ticks)) {
            n.quorum_heard_at = ticks;
        }
        if n.quorum_heard_at + limit < ticks {
            let detail = format!(
                "leader {id} of term {} heard from no quorum of {} for {limit} ticks (at tick {ticks}, last heard {heard:?})",
                x.term(),
                crate::fmt::membership(m)
            );
            self.fail("check quorum", detail);
        }
    }

    /// Every election rests on a majority of durable votes for the winner in
    /// its term, the winner's own vote included (a vote that a crash could
    /// still take back does not count).
    pub(super) fn check_election(&mut self, id: NodeId, term: Term) {
        let Some(x) = self.nodes.get(&id).and_then(|n| n.node.as_ref()) else { return };
        let votes = &self.durable_votes;
        if !quorum_of(x.membership(), |v| votes.contains(&(term, v, id))) {
            let on: Vec<NodeId> = self.nodes.keys().filter(|&v| votes.contains(&(term, v, id))).collect();
            self.fail("election", format!("node {id} leads term {term} with durable votes only from {on:?}"));
        }
    }

    /// A leader appends a configuration only when the one before it is
    /// committed (one change at a time, thesis §4.1) and once it has
    /// committed an entry of its own term (the fix of the single-server
    /// change bug, thesis §4.1 / raft-dev 2015): otherwise two leaders of
    /// different terms could each add a configuration that the other's
    /// voters never saw.
    pub(super) fn check_change_proposed(&mut self, id: NodeId, index: Index, term: Term) {
        let Some(x) = self.nodes.get(&id).and_then(|n| n.node.as_ref()) else { return };
        let commit = x.commit_index();
        let first = x.first_index();
        let previous = (first..index).rev().find(|&i| x.entry(i).is_some_and(|e| e.kind == EntryKind::Config));
        if let Some(prev) = previous.filter(|&p| p > commit) {
            let detail = format!(
                "leader {id} appended a configuration at {index} while the one at {prev} was uncommitted (commit {commit})"
            );
            self.fail("membership change", detail);
        } else if x.term_at(commit) != Some(term) {
            let detail = format!(
                "leader {id} of term {term} appended a configuration at {index} before committing an entry of its term (commit {commit})"
            );
            self.fail("membership change", detail);
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

/// Whether the nodes for which `yes` holds are a quorum of `m`: a majority of its voters and, while
/// joint, a majority of the outgoing voters too (thesis §4.3). Stated here on its own rather than
/// through `Membership::has_quorum`: a check that asked the core's own counting would agree with
/// any bug in it (a core counting only the new half passed the election check that way).
fn quorum_of(m: &raft_core::Membership, mut yes: impl FnMut(NodeId) -> bool) -> bool {
    let mut majority = |set: &[NodeId]| 2 * set.iter().filter(|&&v| yes(v)).count() > set.len();
    majority(&m.voters) && (m.outgoing.is_empty() || majority(&m.outgoing))
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
