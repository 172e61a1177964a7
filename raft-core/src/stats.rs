//! Counters of input the node refused to trust.

/// Counts of dropped or ignored input. A healthy cluster sees some stale
/// messages (they are normal after elections); malformed ones point at a
/// buggy or hostile peer or driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages from ids that are not voters of this cluster, or from self.
    pub dropped_unknown_sender: u64,
    /// Messages from a lower term (answered where that helps the sender
    /// catch up, never acted upon).
    pub dropped_stale_term: u64,
    /// Structurally impossible messages: index gaps, terms from the future,
    /// a commit index beyond the entries carried, acks beyond our log.
    pub dropped_malformed: u64,
    /// Vote requests ignored because a leader was heard from recently: real
    /// votes with CheckQuorum on (thesis §4.2.3), pre-votes always (§9.6).
    pub dropped_in_lease: u64,
    /// Messages that do not fit the current role (e.g. a vote response
    /// after the election ended); harmless.
    pub ignored_unexpected: u64,
    /// `Persisted` events for a sequence number never issued.
    pub dropped_bad_persisted: u64,
    /// Snapshot events that do not fit: `SnapshotTaken` at an index not
    /// applied or not newer than the current snapshot, `SnapshotInstalled`
    /// or `SnapshotAborted` with no install under way.
    pub dropped_bad_snapshot: u64,
    /// Votes and pre-votes refused because the candidate is less up to date
    /// than the log this node's disk lost ([`crate::Node::begin_repair`]).
    pub votes_refused_in_repair: u64,
    /// Times this node, as leader, found a follower holding less than the
    /// match index it had acknowledged (its disk lost synced entries) and
    /// went back to repair it.
    pub follower_regressions: u64,
}
