//! Log replication: AppendEntries on both sides, flow control, fast
//! backtracking, and the commit rule (Raft paper §5.3, §5.4.2; thesis §5.3
//! and §10.2 on batching and pipelining).

use alloc::vec::Vec;
use bytes::Bytes;

use crate::event::{Action, ProposeError, Role};
use crate::message::{AppendEntries, AppendEntriesResponse, MessageBody};
use crate::node::Node;
use crate::progress::ProgressState;
use crate::types::{Entry, EntryKind, Index, NodeId};

impl Node {
    // ----- leader side -------------------------------------------------

    /// Appends client commands to the leader's log and starts replicating.
    pub(crate) fn propose_batch(&mut self, data: Vec<Bytes>) {
        let max = self.config.max_entry_bytes;
        let oversize = data.iter().map(Bytes::len).find(|&len| len > max);
        self.propose_entries(oversize, data.into_iter());
    }

    /// `Event::Propose`: one command, without a `Vec` around it.
    pub(crate) fn propose_one(&mut self, data: Bytes) {
        let oversize = (data.len() > self.config.max_entry_bytes).then_some(data.len());
        self.propose_entries(oversize, core::iter::once(data));
    }

    /// Appends commands unless one of them is `oversize` (its length).
    fn propose_entries(&mut self, oversize: Option<usize>, data: impl Iterator<Item = Bytes>) {
        if let Some(size) = oversize {
            let max = self.config.max_entry_bytes;
            self.out.push(Action::ProposeRejected { error: ProposeError::EntryTooLarge { size, max } });
            return;
        }
        if self.role != Role::Leader {
            let error = ProposeError::NotLeader { leader: self.leader };
            self.out.push(Action::ProposeRejected { error });
            return;
        }
        if self.transfer.is_some() {
            self.out.push(Action::ProposeRejected { error: ProposeError::TransferInProgress });
            return;
        }
        let uncommitted = (self.log.last_index() - self.commit_index) as usize;
        if uncommitted >= self.config.max_uncommitted_entries {
            self.out.push(Action::ProposeRejected { error: ProposeError::Backpressure });
            return;
        }
        let term = self.hard_state.term;
        let first_index = self.log.last_index() + 1;
        for data in data {
            let index = self.log.last_index() + 1;
            self.push_to_log(Entry { term, index, kind: EntryKind::Normal, data });
        }
        let last_index = self.log.last_index();
        if last_index < first_index {
            return;
        }
        self.out.push(Action::Proposed { first_index, last_index, term });
        self.broadcast_append();
    }

    pub(crate) fn broadcast_append(&mut self) {
        for i in 0..self.progress.len() {
            self.send_append(i);
        }
    }

    /// Heartbeats are empty AppendEntries at the follower's `match_index`:
    /// they assert leadership, carry the commit index, and their answers
    /// drive CheckQuorum and the gap probe (`probe_for_gap`).
    pub(crate) fn broadcast_heartbeat(&mut self) {
        let last_index = self.log.last_index();
        for i in 0..self.progress.len() {
            let pr = &mut self.progress[i];
            pr.gap_probe_sent = false;
            let stalled = pr.match_index == pr.match_at_heartbeat && pr.match_index < last_index;
            pr.stalled_rounds = if stalled { pr.stalled_rounds.saturating_add(1) } else { 0 };
            pr.match_at_heartbeat = pr.match_index;
            match pr.state {
                ProgressState::Probe => {
                    // A lost probe is retried once per heartbeat.
                    pr.probe_sent = false;
                    self.send_append(i);
                }
                // The offer is repeated (it may have been lost) and keeps
                // the follower from timing out while it installs.
                ProgressState::Snapshot => self.send_snapshot(i),
                ProgressState::Replicate => self.send_commit(i),
            }
        }
        self.send_timeout_now_if_ready();
    }

    /// An empty AppendEntries at the follower's `match_index`, carrying as
    /// much of the commit index as the follower is known to hold.
    fn send_commit(&mut self, i: usize) {
        let offset = self.log.offset();
        let pr = &mut self.progress[i];
        // Below the compaction point the leader cannot name the entry; the
        // point itself is committed, so the follower holds it if it holds
        // anything after it (and otherwise rejects, and is offered the
        // snapshot).
        let (to, prev) = (pr.id, pr.match_index.max(offset));
        let Some(prev_log_term) = self.log.term(prev) else { return };
        let leader_commit = self.commit_index.min(prev);
        pr.commit_sent = pr.commit_sent.max(leader_commit);
        let body = AppendEntries { prev_log_index: prev, prev_log_term, entries: Vec::new(), leader_commit };
        self.send(to, MessageBody::AppendEntries(body));
    }

    /// Sends new entries if there are any, else an empty AppendEntries if the
    /// follower has not been told the commit index it can now adopt (not
    /// while batches are in flight to it: their acks bring the next one).
    fn send_append_or_commit(&mut self, i: usize) {
        self.send_append(i);
        let pr = &self.progress[i];
        if pr.state != ProgressState::Snapshot
            && pr.inflight.is_empty()
            && pr.commit_sent < self.commit_index.min(pr.match_index)
        {
            self.send_commit(i);
        }
    }

    /// Sends follower `i` what it is missing, as far as flow control allows:
    /// one probe in Probe state, a pipeline of batches in Replicate state.
    pub(crate) fn send_append(&mut self, i: usize) {
        let max_inflight = self.config.max_inflight_msgs;
        loop {
            let pr = &self.progress[i];
            if pr.is_paused(max_inflight) {
                return;
            }
            let prev = pr.next_index - 1;
            let Some(prev_log_term) = self.log.term(prev) else {
                // What the follower needs next was compacted away.
                self.send_snapshot(i);
                return;
            };
            let batch = self.log.batch(pr.next_index, self.config.max_entries_per_msg, self.config.max_bytes_per_msg);
            if batch.is_empty() && pr.state == ProgressState::Replicate {
                return;
            }
            let entries = batch.to_vec();
            let last = prev + entries.len() as Index;
            let leader_commit = self.commit_index.min(last);
            let to = pr.id;
            let pr = &mut self.progress[i];
            pr.commit_sent = pr.commit_sent.max(leader_commit);
            match pr.state {
                ProgressState::Probe => pr.probe_sent = true,
                ProgressState::Replicate => {
                    pr.next_index = last + 1;
                    pr.inflight.push_back(last);
                }
                // Paused, so not reached; never send past an offer.
                ProgressState::Snapshot => return,
            }
            let body = AppendEntries { prev_log_index: prev, prev_log_term, entries, leader_commit };
            self.send(to, MessageBody::AppendEntries(body));
            if self.progress[i].state == ProgressState::Probe {
                return;
            }
        }
    }

    pub(crate) fn append_entries_response(&mut self, from: NodeId, resp: AppendEntriesResponse) {
        if self.role != Role::Leader {
            self.stats.ignored_unexpected += 1;
            return;
        }
        let Some(mut i) = self.progress.iter().position(|p| p.id == from) else { return };
        let last_index = self.log.last_index();
        match resp {
            AppendEntriesResponse::Success { match_index } => {
                if match_index > last_index {
                    self.stats.dropped_malformed += 1;
                    return;
                }
                let pr = &mut self.progress[i];
                pr.recent_active = true;
                pr.quiet_ticks = 0;
                if pr.state == ProgressState::Snapshot && match_index < pr.pending_snapshot {
                    // Still installing (or an older answer): alive, nothing more.
                    return;
                }
                if pr.ack(match_index) {
                    self.maybe_commit();
                    // A commit can change the configuration (leaving a joint
                    // one) or end this leadership (a removed leader steps
                    // down): find the follower again.
                    let Some(at) = self.progress.iter().position(|p| p.id == from) else { return };
                    if self.role != Role::Leader {
                        return;
                    }
                    i = at;
                } else {
                    self.probe_for_gap(i);
                }
                self.send_append_or_commit(i);
                if self.transfer.is_some_and(|t| t.to == from) {
                    self.send_timeout_now_if_ready();
                }
            }
            AppendEntriesResponse::Reject { rejected_index, conflict_term, conflict_index } => {
                if rejected_index > last_index || conflict_index > rejected_index + 1 {
                    self.stats.dropped_malformed += 1;
                    return;
                }
                self.progress[i].recent_active = true;
                self.progress[i].quiet_ticks = 0;
                self.backtrack(i, rejected_index, conflict_term, conflict_index);
            }
        }
    }

    /// An answer that acknowledges nothing new (typically to a heartbeat)
    /// while entries have been outstanding without progress for two
    /// heartbeat rounds: the batches in flight may have been lost, or the
    /// follower restarted. Once per heartbeat interval, free a pipeline slot
    /// and send an AppendEntries at `next_index - 1`: if the follower lacks
    /// that entry it rejects, and backtracking resends what is missing.
    /// Waiting for an answer *and* two quiet rounds keeps a slow link (a
    /// round trip longer than the heartbeat interval) from triggering
    /// needless resends (etcd-io/raft frees a slot on heartbeat responses).
    fn probe_for_gap(&mut self, i: usize) {
        let last_index = self.log.last_index();
        let pr = &mut self.progress[i];
        if pr.state != ProgressState::Replicate
            || pr.match_index >= last_index
            || pr.gap_probe_sent
            || pr.stalled_rounds < 2
        {
            return;
        }
        pr.gap_probe_sent = true;
        pr.inflight.pop_front();
        let prev = pr.next_index - 1;
        if prev < last_index {
            // There are unsent entries: a real batch probes just as well.
            self.send_append(i);
            return;
        }
        let to = pr.id;
        let Some(prev_log_term) = self.log.term(prev) else { return };
        let leader_commit = self.commit_index.min(prev);
        let body = AppendEntries { prev_log_index: prev, prev_log_term, entries: Vec::new(), leader_commit };
        self.send(to, MessageBody::AppendEntries(body));
    }

    /// Fast log backtracking (thesis §5.3): skip the follower's whole
    /// conflicting term per round trip instead of one entry.
    fn backtrack(&mut self, i: usize, rejected: Index, conflict_term: Option<u64>, conflict_index: Index) {
        let pr = &self.progress[i];
        let stale = match pr.state {
            // Replies to batches sent before a later ack, or to an old probe.
            ProgressState::Replicate => rejected < pr.match_index,
            ProgressState::Probe => rejected != pr.next_index - 1,
            // Answers to appends sent before the snapshot offer.
            ProgressState::Snapshot => true,
        };
        if stale || rejected == 0 {
            return;
        }
        // A current rejection at or below what the follower acknowledged,
        // or one saying its log ends before that: its disk lost entries it
        // had synced. Matching is not monotone after all; believe what it
        // holds now and resend the rest, or it never catches up and its
        // answers keep satisfying CheckQuorum while it holds nothing.
        let holds = if conflict_term.is_none() { conflict_index.saturating_sub(1) } else { rejected - 1 };
        if rejected <= pr.match_index || holds < pr.match_index {
            self.stats.follower_regressions += 1;
            let holds = holds.min(rejected - 1);
            self.progress[i].regress(holds);
        }
        let pr = &self.progress[i];
        let next = match conflict_term.and_then(|t| self.log.last_index_of_term(t)) {
            Some(last_of_term) => last_of_term + 1,
            None => conflict_index,
        };
        let next = next.min(rejected).max(pr.match_index + 1);
        self.progress[i].become_probe(next);
        self.send_append(i);
    }

    /// Advances the commit index to the highest index stored on a quorum,
    /// but only through an entry of the current term (§5.4.2): counting
    /// replicas of an older entry is exactly the Figure 8 mistake.
    pub(crate) fn maybe_commit(&mut self) {
        // Only voters count, each half of a joint configuration on its
        // own; this node counts only where it votes (a leader that is being
        // removed manages the cluster without counting itself, §4.2.2).
        let mut scratch = core::mem::take(&mut self.match_scratch);
        let candidate = self.membership.committed_index(&mut scratch, |id| self.matched(id));
        self.match_scratch = scratch;
        if candidate > self.commit_index && self.log.term(candidate) == Some(self.hard_state.term) {
            self.commit_index = candidate;
            // Tell followers promptly so they apply without waiting for the
            // next heartbeat; new entries carry it for free when there are any.
            for i in 0..self.progress.len() {
                self.send_append_or_commit(i);
            }
            // Reads that came before the term's first commit can go now.
            self.release_confirmed_reads();
            self.after_commit_as_leader();
        }
    }

    // ----- follower side -----------------------------------------------

    /// A message only the leader of our term sends (AppendEntries,
    /// InstallSnapshot) arrived from `from`: follow it and restart the
    /// election timer. False (and counted) if we lead this term ourselves,
    /// which is impossible for correct peers.
    pub(crate) fn heard_from_leader(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            self.stats.dropped_malformed += 1;
            return false;
        }
        if self.role != Role::Follower || self.leader != Some(from) {
            let term = self.hard_state.term;
            self.become_follower(term, Some(from));
        }
        self.election_elapsed = 0;
        true
    }

    /// AppendEntries receiver (Figure 2).
    pub(crate) fn append_entries(&mut self, from: NodeId, mut req: AppendEntries) {
        if !self.heard_from_leader(from) {
            return;
        }

        let offset = self.log.offset();
        if req.prev_log_index < offset {
            // The start of the request is compacted into our snapshot. Those
            // entries are committed, so they match the leader's: skip them.
            let skip = ((offset - req.prev_log_index) as usize).min(req.entries.len());
            req.entries.drain(..skip);
            req.prev_log_index = offset;
            req.prev_log_term = self.log.term(offset).unwrap_or(0);
        }
        if !self.log.matches(req.prev_log_index, req.prev_log_term) {
            self.reject_append(from, req.prev_log_index);
            return;
        }
        let last_new = req.prev_log_index + req.entries.len() as Index;
        let heartbeat = req.entries.is_empty();
        // Skip entries we already have; truncate at the first conflict.
        let mut new_from = req.entries.len();
        for (k, e) in req.entries.iter().enumerate() {
            match self.log.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    if e.index <= self.commit_index {
                        // Committed entries never conflict with a correct
                        // leader; refuse rather than lose them.
                        self.stats.dropped_malformed += 1;
                        return;
                    }
                    self.truncate_log(e.index);
                }
                None => {}
            }
            new_from = k;
            break;
        }
        if new_from < req.entries.len() {
            let new = if new_from == 0 { core::mem::take(&mut req.entries) } else { req.entries.split_off(new_from) };
            self.append_to_log(new);
        }
        self.matched_index = self.matched_index.max(last_new);
        self.leader_commit = self.leader_commit.max(req.leader_commit);
        self.advance_follower_commit();
        if heartbeat {
            // Heartbeats are always answered: the leader's CheckQuorum and
            // flow control depend on it.
            self.send_ack(true);
        } else if self.persisted_index >= last_new {
            // Already durable (a retransmission): answer even if we acked
            // this before, since that ack may be the thing that was lost.
            self.send_ack(true);
        }
        // Otherwise the ack goes out when the entries are durable: a partial
        // ack now would only make the leader resend what is in flight.
    }

    fn reject_append(&mut self, to: NodeId, rejected_index: Index) {
        let last = self.log.last_index();
        let (conflict_term, conflict_index) = if rejected_index > last {
            (None, last + 1)
        } else {
            let t = self.log.term(rejected_index).unwrap_or(0);
            (Some(t), self.log.first_index_of_term(t, rejected_index))
        };
        let body = AppendEntriesResponse::Reject { rejected_index, conflict_term, conflict_index };
        self.send(to, MessageBody::AppendEntriesResponse(body));
    }

    /// Commit what the leader says is committed, but never beyond what we
    /// have verified to match it and made durable.
    pub(crate) fn advance_follower_commit(&mut self) {
        let upto = self.leader_commit.min(self.matched_index).min(self.persisted_index);
        if upto > self.commit_index {
            self.commit_index = upto;
        }
    }

    pub(crate) fn send_ack_if_news(&mut self) {
        self.send_ack(false);
    }

    /// Acknowledges the prefix that both matches the leader and is durable,
    /// and only once our term is durable too. `always` answers even when
    /// nothing new is acknowledged (for heartbeats).
    pub(crate) fn send_ack(&mut self, always: bool) {
        let Some(leader) = self.leader else { return };
        if !self.hard_state_durable() {
            return;
        }
        let match_index = self.matched_index.min(self.persisted_index);
        if !always && match_index <= self.acked_index {
            return;
        }
        self.acked_index = self.acked_index.max(match_index);
        self.send(leader, MessageBody::AppendEntriesResponse(AppendEntriesResponse::Success { match_index }));
    }
}
