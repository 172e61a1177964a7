//! Read tracking: which caller waits for which linearizable read, and how it ended.
//!
//! `raft-core` serves reads without writing the log ([`Event::ReadIndex`]): a read is answered exactly
//! once, by [`Action::ReadReady`] (the state machine has applied the read's index with the `Apply`
//! actions before it: serve the read now, before applying anything after it) or by
//! [`Action::ReadRejected`]. [`ReadTracker`] is the bookkeeping between the two: it hands out the
//! `ctx` numbers and maps them back to the caller's token. It is pure and generic over the token, like
//! [`crate::proposals::ProposalTracker`]: the node thread keeps reply channels in it, the simulator
//! client ids, so the seed sweep runs exactly the logic the real server runs.

use std::collections::BTreeMap;
use std::fmt;

use raft_core::{Action, Event, ReadError};

/// Why a read produced no answer. A read never takes effect, so every failure leaves the state as it
/// was: retrying is always safe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadFailure {
    /// `raft-core` refused or abandoned the read (no leader, a leader change, no quorum in time).
    Refused(ReadError),
    /// No answer within the caller's timeout.
    Timeout,
    /// The node stopped.
    Stopped,
}

impl ReadFailure {
    /// Whether asking again can succeed (on this node or at the leader it names): everything but a
    /// stopped node.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ReadFailure::Stopped)
    }
}

impl fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadFailure::Refused(e) => write!(f, "read refused: {e}"),
            ReadFailure::Timeout => f.write_str("timed out waiting for the read to be confirmed"),
            ReadFailure::Stopped => f.write_str("node stopped"),
        }
    }
}

impl std::error::Error for ReadFailure {}

/// How a tracked read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadSettled<T> {
    /// Serve the read now, from the state machine as it is after the preceding applies.
    Ready(T),
    /// The read was not served.
    Failed(T, ReadFailure),
}

/// Tracks reads from the event that starts them to the action that answers them. See the
/// [module docs](self).
#[derive(Debug)]
pub struct ReadTracker<T> {
    next_ctx: u64,
    waiting: BTreeMap<u64, T>,
}

impl<T> Default for ReadTracker<T> {
    fn default() -> Self {
        ReadTracker { next_ctx: 1, waiting: BTreeMap::new() }
    }
}

impl<T> ReadTracker<T> {
    /// No reads.
    pub fn new() -> Self {
        ReadTracker::default()
    }

    /// Registers `token` and returns the event to step for it.
    pub fn start(&mut self, token: T) -> Event {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        self.waiting.insert(ctx, token);
        Event::ReadIndex { ctx }
    }

    /// Looks at one action of a step: a read's answer settles it; other actions (and answers to reads
    /// this tracker does not know, e.g. of an earlier incarnation) give `None`.
    pub fn on_action(&mut self, action: &Action) -> Option<ReadSettled<T>> {
        match action {
            Action::ReadReady { ctx, .. } => self.waiting.remove(ctx).map(ReadSettled::Ready),
            Action::ReadRejected { ctx, error } => {
                self.waiting.remove(ctx).map(|t| ReadSettled::Failed(t, ReadFailure::Refused(*error)))
            }
            _ => None,
        }
    }

    /// Fails every waiting read (the node stops).
    pub fn fail_all(&mut self, error: &ReadFailure, mut settle: impl FnMut(ReadSettled<T>)) {
        for (_, token) in std::mem::take(&mut self.waiting) {
            settle(ReadSettled::Failed(token, error.clone()));
        }
    }

    /// Reads waiting for their answer.
    pub fn pending(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_of(event: &Event) -> u64 {
        match event {
            Event::ReadIndex { ctx } => *ctx,
            other => panic!("not a read: {other:?}"),
        }
    }

    #[test]
    fn each_read_gets_its_own_ctx_and_is_answered_once() {
        let mut t = ReadTracker::new();
        let a = ctx_of(&t.start("a"));
        let b = ctx_of(&t.start("b"));
        assert_ne!(a, b);
        assert_eq!(t.pending(), 2);
        assert_eq!(t.on_action(&Action::ReadReady { ctx: b, index: 7 }), Some(ReadSettled::Ready("b")));
        assert_eq!(t.on_action(&Action::ReadReady { ctx: b, index: 7 }), None, "answered once");
        let error = ReadError::LeaderChanged;
        let failed = t.on_action(&Action::ReadRejected { ctx: a, error });
        assert_eq!(failed, Some(ReadSettled::Failed("a", ReadFailure::Refused(error))));
        assert_eq!(t.pending(), 0);
        assert_eq!(t.on_action(&Action::ReadReady { ctx: 99, index: 1 }), None, "unknown ctx");
    }

    #[test]
    fn stopping_fails_every_read_and_only_stopping_is_final() {
        let mut t = ReadTracker::new();
        t.start(1);
        t.start(2);
        let mut out = Vec::new();
        t.fail_all(&ReadFailure::Stopped, |s| out.push(s));
        assert_eq!(
            out,
            vec![ReadSettled::Failed(1, ReadFailure::Stopped), ReadSettled::Failed(2, ReadFailure::Stopped)]
        );
        assert!(!ReadFailure::Stopped.is_retryable());
        assert!(ReadFailure::Timeout.is_retryable());
        assert!(ReadFailure::Refused(ReadError::Timeout).is_retryable());
        assert!(ReadFailure::Refused(ReadError::NotLeader { leader: None }).to_string().contains("no leader"));
    }
}
