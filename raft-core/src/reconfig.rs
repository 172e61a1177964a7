//! Changing the cluster: membership changes (thesis §4.1 single-server,
//! §4.3 joint consensus, §4.2.1 learners, §4.2.2 removing the leader) and
//! leadership transfer (§3.10), on the leader's side. How a configuration
//! is represented, encoded and counted is in [`crate::membership`]; how it
//! takes effect on append and falls back on truncation is in the node's
//! `set_membership` / `recompute_membership`.

use alloc::vec::Vec;
use bytes::Bytes;

use crate::event::{Action, Role};
use crate::membership::{Membership, MembershipChange, MembershipError};
use crate::message::MessageBody;
use crate::node::{Node, Transfer};
use crate::progress::ProgressState;
use crate::types::{Entry, EntryKind, Index, NodeId};

impl Node {
    /// `Event::ChangeMembership`.
    pub(crate) fn change_membership(&mut self, change: MembershipChange, context: Option<Bytes>) {
        match self.plan_change(change, context) {
            Ok(membership) => {
                let index = self.append_config(membership.clone());
                let term = self.hard_state.term;
                self.out.push(Action::ChangeProposed { index, term, membership });
            }
            Err(error) => self.out.push(Action::ChangeRejected { error }),
        }
    }

    /// The configuration `change` leads to, or why it is refused.
    fn plan_change(&self, change: MembershipChange, context: Option<Bytes>) -> Result<Membership, MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader { leader: self.leader });
        }
        if self.transfer.is_some() {
            return Err(MembershipError::TransferInProgress);
        }
        let cur = &self.membership;
        if cur.is_joint() || self.membership_index > self.commit_index {
            return Err(MembershipError::ChangeInProgress);
        }
        if self.log.term(self.commit_index) != Some(self.hard_state.term) {
            return Err(MembershipError::LeaderNotReady);
        }
        let (mut voters, mut learners) = (cur.voters.clone(), cur.learners.clone());
        match change {
            MembershipChange::AddLearner(id) => {
                check_id(id)?;
                if cur.contains(id) {
                    return Err(MembershipError::AlreadyMember { id });
                }
                learners.push(id);
            }
            MembershipChange::Promote(id) => {
                check_id(id)?;
                if !cur.contains(id) {
                    return Err(MembershipError::UnknownNode { id });
                }
                if !cur.is_learner(id) {
                    return Err(MembershipError::NotALearner { id });
                }
                learners.retain(|&l| l != id);
                voters.push(id);
            }
            MembershipChange::Remove(id) => {
                check_id(id)?;
                if !cur.contains(id) {
                    return Err(MembershipError::UnknownNode { id });
                }
                voters.retain(|&v| v != id);
                learners.retain(|&l| l != id);
            }
            MembershipChange::Set { voters: v, learners: l } => {
                (voters, learners) = (v, l);
            }
        }
        voters.sort_unstable();
        voters.dedup();
        learners.sort_unstable();
        learners.dedup();
        if voters.contains(&0) || learners.contains(&0) {
            return Err(MembershipError::InvalidId);
        }
        if voters.is_empty() {
            return Err(MembershipError::NoVoters);
        }
        if let Some(&id) = learners.iter().find(|id| voters.contains(id)) {
            return Err(MembershipError::AlreadyMember { id });
        }
        if let Some(&id) = learners.iter().find(|&&id| cur.voters.contains(&id)) {
            return Err(MembershipError::Demotion { id });
        }
        for &id in voters.iter().filter(|id| !cur.voters.contains(id)) {
            // A new voter must be a learner that has caught up: an empty
            // voter would stall commits while it catches up (§4.2.1).
            if !cur.contains(id) {
                return Err(MembershipError::UnknownNode { id });
            }
            self.check_caught_up(id)?;
        }
        if voters == cur.voters && learners == cur.learners && context.is_none() {
            return Err(MembershipError::NoChange);
        }
        let changed_voters = voters.iter().filter(|id| !cur.voters.contains(id)).count()
            + cur.voters.iter().filter(|id| !voters.contains(id)).count();
        // One voter more or less: the old and new majorities always
        // overlap, so the new configuration can be used directly (§4.1).
        // Otherwise, go through C_old,new (§4.3).
        let outgoing = if changed_voters > 1 { cur.voters.clone() } else { Vec::new() };
        let context = context.unwrap_or_else(|| cur.context.clone());
        let m = Membership { voters, outgoing, learners, context };
        m.validate()?;
        Ok(m)
    }

    /// The learner promotion rule: the learner has answered within the last
    /// election timeout, is being replicated to normally, and lacks at most
    /// one message's worth of the leader's log.
    fn check_caught_up(&self, id: NodeId) -> Result<(), MembershipError> {
        let last = self.log.last_index();
        let Some(pr) = self.progress.iter().find(|p| p.id == id) else {
            return Err(MembershipError::LearnerBehind { id, matched: 0, last });
        };
        let close = last - pr.match_index.min(last) <= self.config.max_entries_per_msg as Index;
        let alive = pr.quiet_ticks < self.config.election_ticks;
        if pr.state == ProgressState::Replicate && close && alive {
            Ok(())
        } else {
            Err(MembershipError::LearnerBehind { id, matched: pr.match_index, last })
        }
    }

    /// Appends a configuration entry, which takes effect at once, and
    /// starts replicating it. Returns its index.
    fn append_config(&mut self, membership: Membership) -> Index {
        let index = self.log.last_index() + 1;
        let entry = Entry { term: self.hard_state.term, index, kind: EntryKind::Config, data: membership.encode() };
        self.push_to_log(entry);
        self.set_membership(membership, index);
        self.broadcast_append();
        index
    }

    /// After the commit index advanced on a leader: a committed joint
    /// configuration is followed by `C_new` (§4.3), and a leader that is
    /// not a voter of a committed configuration steps down (§4.2.2).
    pub(crate) fn after_commit_as_leader(&mut self) {
        if self.role != Role::Leader || self.membership_index > self.commit_index {
            return;
        }
        if self.membership.is_joint() {
            let m = Membership { outgoing: Vec::new(), ..self.membership.clone() };
            self.append_config(m);
            return;
        }
        if !self.is_voter() {
            // Hand over at once to the most up-to-date voter instead of
            // leaving the cluster an election timeout without a leader.
            let last = self.log.last_index();
            let heir = self
                .progress
                .iter()
                .filter(|p| self.membership.is_voter(p.id) && p.match_index == last)
                .map(|p| p.id)
                .next();
            if let Some(to) = heir {
                self.end_lease();
                self.send(to, MessageBody::TimeoutNow);
            }
            let term = self.hard_state.term;
            self.become_follower(term, None);
        }
    }

    /// `Event::TransferLeadership`.
    pub(crate) fn transfer_leadership(&mut self, to: NodeId) {
        let error = if self.role != Role::Leader {
            Some(MembershipError::NotLeader { leader: self.leader })
        } else if to == self.config.id || !self.membership.is_voter(to) {
            Some(MembershipError::NotAVoter { id: to })
        } else if self.transfer.is_some() {
            Some(MembershipError::TransferInProgress)
        } else {
            None
        };
        if let Some(error) = error {
            self.out.push(Action::TransferRejected { error });
            return;
        }
        self.transfer = Some(Transfer { to, elapsed: 0 });
        if let Some(i) = self.progress.iter().position(|p| p.id == to) {
            // Bring it up to date first; its ack triggers the TimeoutNow.
            self.send_append(i);
        }
        self.send_timeout_now_if_ready();
    }

    /// Tells the transfer target to campaign once it holds the whole log
    /// (again at every heartbeat until the transfer ends, in case the
    /// message was lost).
    pub(crate) fn send_timeout_now_if_ready(&mut self) {
        let Some(t) = self.transfer else { return };
        if self.matched(t.to) == self.log.last_index() {
            self.end_lease();
            self.send(t.to, MessageBody::TimeoutNow);
        }
    }
}

fn check_id(id: NodeId) -> Result<(), MembershipError> {
    if id == 0 { Err(MembershipError::InvalidId) } else { Ok(()) }
}
