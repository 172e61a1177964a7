//! Proposal tracking: which client waits for which log entry, and when its answer is known.
//!
//! `raft-core` answers a proposal in two steps. The step that takes it emits either
//! [`Action::Proposed`] (appended at `first_index..=last_index` in `term`) or [`Action::ProposeRejected`]
//! (nothing appended). Later, [`Action::Apply`] hands over the entry at that index, and the proposal
//! succeeded iff the applied entry has the proposal's term: by the Log Matching property an entry with
//! the same index and term is the same entry, and any other committed entry at that index means ours
//! was overwritten and will never commit. In between, if this node stops leading, it can no longer tell
//! whether the entry will commit, so the proposal fails with an *unknown* outcome.
//!
//! [`ProposalTracker`] is that bookkeeping and nothing else: pure, with no channels, threads or clocks,
//! generic over the token `T` a driver uses to find its waiting client (a reply channel in
//! [`crate::node`], a client id in the simulator). Both drivers use this one type, so the seed sweep
//! exercises exactly the logic the real server runs.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use raft_core::{Action, Entry, EntryKind, Index, ProposeError, Role, Term};

/// Why a proposal did not produce a response, and what the caller may conclude.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalError {
    /// `raft-core` refused the proposal: nothing was appended, the command certainly did not take
    /// effect.
    Refused(ProposeError),
    /// The entry was appended, but another entry was committed at its index: the command certainly
    /// did not take effect and never will.
    Overwritten,
    /// The entry was appended, but this node stopped leading before it was applied: it may still
    /// commit under the new leader, or be overwritten.
    LeadershipLost,
    /// No response within the caller's timeout; the entry may still commit.
    Timeout,
    /// The node stopped. The command may have been appended before it did.
    Stopped,
    /// The node stopped before the proposal reached the core (it was still queued, or the node's
    /// input channel was already closed): nothing was appended, the command certainly did not take
    /// effect here.
    StoppedBeforeProposing,
}

impl ProposalError {
    /// Whether proposing the same command again (with the same session and sequence number, so that
    /// it applies at most once) can succeed. This is the one place that decides it: a stopped node and
    /// a command larger than any entry may be are final; everything else is a matter of time or of
    /// finding the leader.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ProposalError::Stopped
                | ProposalError::StoppedBeforeProposing
                | ProposalError::Refused(ProposeError::EntryTooLarge { .. })
        )
    }

    /// Whether the command may have taken effect (or still may). `false` means it certainly did not,
    /// which is what lets a server answer "try again" without a session.
    pub fn may_have_taken_effect(&self) -> bool {
        !matches!(self, ProposalError::Refused(_) | ProposalError::Overwritten | ProposalError::StoppedBeforeProposing)
    }
}

impl fmt::Display for ProposalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposalError::Refused(ProposeError::NotLeader { leader: Some(id) }) => {
                write!(f, "not the leader; leader is node {id}")
            }
            ProposalError::Refused(ProposeError::NotLeader { leader: None }) => {
                f.write_str("not the leader; no leader known")
            }
            ProposalError::Refused(ProposeError::Backpressure) => f.write_str("too many uncommitted entries"),
            ProposalError::Refused(ProposeError::TransferInProgress) => {
                f.write_str("leadership is being transferred; retry shortly")
            }
            ProposalError::Refused(ProposeError::EntryTooLarge { size, max }) => {
                write!(f, "command of {size} bytes exceeds the max_entry_bytes limit of {max} bytes")
            }
            ProposalError::Overwritten => f.write_str("the entry was overwritten by a new leader"),
            ProposalError::LeadershipLost => f.write_str("leadership lost before the entry was applied"),
            ProposalError::Timeout => f.write_str("timed out waiting for the entry to be applied"),
            ProposalError::Stopped => f.write_str("node stopped"),
            ProposalError::StoppedBeforeProposing => f.write_str("node stopped before the command was proposed"),
        }
    }
}

impl std::error::Error for ProposalError {}

/// How a tracked proposal ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled<T> {
    /// The proposal's entry was applied: answer the token with the state machine's response.
    Applied(T),
    /// The proposal failed.
    Failed(T, ProposalError),
}

/// A proposal whose entry is in the log, waiting to be applied.
#[derive(Debug)]
struct Pending<T> {
    term: Term,
    token: T,
}

/// Tracks proposals from the step that takes them to the apply that answers them. See the
/// [module docs](self).
///
/// Use:
/// 1. [`queue`](Self::queue) a token per command, in order, before stepping the `Propose` or
///    `ProposeBatch` event that carries the commands;
/// 2. pass every action of every step to [`on_action`](Self::on_action) (it settles rejections and
///    leadership changes and records where proposals landed), then call
///    [`settle_unclaimed`](Self::settle_unclaimed) after a propose step;
/// 3. for every applied entry, in order, call [`applied`](Self::applied) and answer the token it
///    returns.
#[derive(Debug)]
pub struct ProposalTracker<T> {
    /// By log index. Indexes only grow between leadership changes, so this is ordered by age.
    pending: BTreeMap<Index, Pending<T>>,
    /// Tokens of the propose step being taken, in command order.
    queued: VecDeque<T>,
}

impl<T> Default for ProposalTracker<T> {
    fn default() -> Self {
        ProposalTracker { pending: BTreeMap::new(), queued: VecDeque::new() }
    }
}

impl<T> ProposalTracker<T> {
    /// An empty tracker.
    pub fn new() -> Self {
        ProposalTracker::default()
    }

    /// Proposals appended and waiting to be applied.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Registers the token of the next command of the propose step about to be taken.
    pub fn queue(&mut self, token: T) {
        self.queued.push_back(token);
    }

    /// Looks at one action of a step: records `Proposed` ranges, settles the step's tokens on
    /// `ProposeRejected`, and fails every pending proposal when this node stops leading. Other actions
    /// are ignored (`Apply` goes through [`applied`](Self::applied), entry by entry).
    pub fn on_action(&mut self, action: &Action, settle: impl FnMut(Settled<T>)) {
        match action {
            Action::Proposed { first_index, last_index, term } => {
                self.proposed(*first_index, *last_index, *term, settle);
            }
            Action::ProposeRejected { error } => self.fail_queued(&ProposalError::Refused(*error), settle),
            Action::RoleChanged { role, .. } if *role != Role::Leader => {
                self.fail_all(&ProposalError::LeadershipLost, settle);
            }
            _ => {}
        }
    }

    /// The queued tokens landed at `first_index..=last_index` in `term`. A range that does not match
    /// the number of queued tokens means the driver and the core disagree about what was proposed:
    /// the tokens without an index fail rather than wait forever.
    fn proposed(&mut self, first_index: Index, last_index: Index, term: Term, mut settle: impl FnMut(Settled<T>)) {
        for index in first_index..=last_index {
            let Some(token) = self.queued.pop_front() else { break };
            if let Some(old) = self.pending.insert(index, Pending { term, token }) {
                // A new leader term reusing an index: the old proposal there was overwritten.
                settle(Settled::Failed(old.token, ProposalError::Overwritten));
            }
        }
        self.fail_queued(&ProposalError::LeadershipLost, settle);
    }

    /// Fails the tokens of a propose step that the step did not settle (defensive: every propose step
    /// yields `Proposed` or `ProposeRejected`, but a client must never hang).
    pub fn settle_unclaimed(&mut self, settle: impl FnMut(Settled<T>)) {
        self.fail_queued(&ProposalError::Refused(ProposeError::NotLeader { leader: None }), settle);
    }

    /// The entry `entry` was applied. Returns how the proposal at its index (if any) ended: applied iff
    /// the entry is a command of the proposal's term. Proposals at lower indexes that are still pending
    /// can never be answered by a later apply (defensive: they are settled at their own index) and are
    /// failed through `settle`.
    pub fn applied(&mut self, entry: &Entry, mut settle: impl FnMut(Settled<T>)) -> Option<Settled<T>> {
        while let Some(first) = self.pending.first_entry() {
            if *first.key() >= entry.index {
                break;
            }
            settle(Settled::Failed(first.remove().token, ProposalError::Overwritten));
        }
        let pending = self.pending.remove(&entry.index)?;
        Some(if pending.term == entry.term && entry.kind == EntryKind::Normal {
            Settled::Applied(pending.token)
        } else {
            Settled::Failed(pending.token, ProposalError::Overwritten)
        })
    }

    /// Fails every pending and queued proposal with `error` (e.g. when the node stops).
    pub fn fail_all(&mut self, error: &ProposalError, mut settle: impl FnMut(Settled<T>)) {
        for (_, p) in std::mem::take(&mut self.pending) {
            settle(Settled::Failed(p.token, error.clone()));
        }
        self.fail_queued(error, settle);
    }

    fn fail_queued(&mut self, error: &ProposalError, mut settle: impl FnMut(Settled<T>)) {
        for token in self.queued.drain(..) {
            settle(Settled::Failed(token, error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::Bytes;

    fn entry(index: Index, term: Term) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::from_static(b"x") }
    }

    fn settled_of(tracker: &mut ProposalTracker<u32>, action: Action) -> Vec<Settled<u32>> {
        let mut out = Vec::new();
        tracker.on_action(&action, |s| out.push(s));
        out
    }

    fn apply(tracker: &mut ProposalTracker<u32>, e: &Entry) -> (Option<Settled<u32>>, Vec<Settled<u32>>) {
        let mut lower = Vec::new();
        let at = tracker.applied(e, |s| lower.push(s));
        (at, lower)
    }

    #[test]
    fn a_batch_is_answered_entry_by_entry_when_applied_in_its_term() {
        let mut t = ProposalTracker::new();
        for token in [1, 2, 3] {
            t.queue(token);
        }
        assert!(settled_of(&mut t, Action::Proposed { first_index: 5, last_index: 7, term: 2 }).is_empty());
        assert_eq!(t.pending(), 3);
        assert_eq!(apply(&mut t, &entry(4, 2)), (None, vec![]));
        assert_eq!(apply(&mut t, &entry(5, 2)), (Some(Settled::Applied(1)), vec![]));
        assert_eq!(apply(&mut t, &entry(6, 2)), (Some(Settled::Applied(2)), vec![]));
        assert_eq!(apply(&mut t, &entry(7, 2)), (Some(Settled::Applied(3)), vec![]));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn an_entry_of_another_term_or_a_noop_at_the_index_means_overwritten() {
        let mut t = ProposalTracker::new();
        t.queue(1);
        t.queue(2);
        settled_of(&mut t, Action::Proposed { first_index: 5, last_index: 6, term: 2 });
        assert_eq!(apply(&mut t, &entry(5, 3)), (Some(Settled::Failed(1, ProposalError::Overwritten)), vec![]));
        let noop = Entry { kind: EntryKind::Noop, data: Bytes::new(), ..entry(6, 2) };
        assert_eq!(apply(&mut t, &noop), (Some(Settled::Failed(2, ProposalError::Overwritten)), vec![]));
    }

    #[test]
    fn skipped_lower_indexes_fail_instead_of_waiting_forever() {
        let mut t = ProposalTracker::new();
        t.queue(1);
        settled_of(&mut t, Action::Proposed { first_index: 5, last_index: 5, term: 2 });
        t.queue(2);
        settled_of(&mut t, Action::Proposed { first_index: 8, last_index: 8, term: 2 });
        assert_eq!(
            apply(&mut t, &entry(8, 2)),
            (Some(Settled::Applied(2)), vec![Settled::Failed(1, ProposalError::Overwritten)])
        );
    }

    #[test]
    fn rejection_settles_the_whole_step_and_nothing_else() {
        let mut t = ProposalTracker::new();
        t.queue(9);
        settled_of(&mut t, Action::Proposed { first_index: 1, last_index: 1, term: 1 });
        t.queue(1);
        t.queue(2);
        let error = ProposeError::NotLeader { leader: Some(3) };
        let out = settled_of(&mut t, Action::ProposeRejected { error });
        let refused = ProposalError::Refused(error);
        assert_eq!(out, vec![Settled::Failed(1, refused.clone()), Settled::Failed(2, refused.clone())]);
        assert!(!refused.may_have_taken_effect() && refused.is_retryable());
        assert_eq!(t.pending(), 1, "the earlier proposal is still pending");
    }

    #[test]
    fn losing_leadership_fails_pending_with_an_unknown_outcome() {
        let mut t = ProposalTracker::new();
        t.queue(1);
        settled_of(&mut t, Action::Proposed { first_index: 3, last_index: 3, term: 1 });
        let leader = Action::RoleChanged { role: Role::Leader, term: 2, leader: Some(1) };
        assert!(settled_of(&mut t, leader).is_empty(), "becoming leader settles nothing");
        let follower = Action::RoleChanged { role: Role::Follower, term: 3, leader: None };
        assert_eq!(settled_of(&mut t, follower), vec![Settled::Failed(1, ProposalError::LeadershipLost)]);
        assert!(ProposalError::LeadershipLost.may_have_taken_effect());
        assert_eq!(t.pending(), 0);
        assert_eq!(apply(&mut t, &entry(3, 1)), (None, vec![]), "a settled proposal is never answered twice");
    }

    #[test]
    fn a_reused_index_overwrites_and_extra_tokens_fail() {
        let mut t = ProposalTracker::new();
        t.queue(1);
        settled_of(&mut t, Action::Proposed { first_index: 4, last_index: 4, term: 1 });
        t.queue(2);
        t.queue(3);
        let out = settled_of(&mut t, Action::Proposed { first_index: 4, last_index: 4, term: 2 });
        assert_eq!(
            out,
            vec![Settled::Failed(1, ProposalError::Overwritten), Settled::Failed(3, ProposalError::LeadershipLost)]
        );
        let mut unclaimed = Vec::new();
        t.queue(4);
        t.settle_unclaimed(|s| unclaimed.push(s));
        assert!(matches!(unclaimed[..], [Settled::Failed(4, ProposalError::Refused(_))]));
        assert_eq!(apply(&mut t, &entry(4, 2)), (Some(Settled::Applied(2)), vec![]));
    }

    #[test]
    fn retryability_and_certainty_of_every_error() {
        let too_large = ProposalError::Refused(ProposeError::EntryTooLarge { size: 20, max: 10 });
        assert!(!too_large.is_retryable() && !too_large.may_have_taken_effect());
        assert!(too_large.to_string().contains("max_entry_bytes"), "{too_large}");
        assert!(ProposalError::Refused(ProposeError::Backpressure).is_retryable());
        assert!(ProposalError::Overwritten.is_retryable() && !ProposalError::Overwritten.may_have_taken_effect());
        assert!(ProposalError::Timeout.is_retryable() && ProposalError::Timeout.may_have_taken_effect());
        assert!(!ProposalError::Stopped.is_retryable() && ProposalError::Stopped.may_have_taken_effect());
        let before = ProposalError::StoppedBeforeProposing;
        assert!(!before.is_retryable() && !before.may_have_taken_effect(), "never reached the core");
        assert!(ProposalError::LeadershipLost.is_retryable() && ProposalError::LeadershipLost.may_have_taken_effect());
        for refused in [
            ProposeError::NotLeader { leader: None },
            ProposeError::NotLeader { leader: Some(2) },
            ProposeError::TransferInProgress,
        ] {
            let e = ProposalError::Refused(refused);
            assert!(e.is_retryable() && !e.may_have_taken_effect(), "{e}");
        }
    }
}
