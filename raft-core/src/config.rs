//! Node configuration, validated once into a [`Config`] the node trusts.

use alloc::vec::Vec;
use core::fmt;

use crate::types::NodeId;

/// How a node behaves. Build it with [`Config::new`] and adjust fields; it is
/// checked by [`Config::validate`] when the node is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// The voters of the cluster's first configuration (this node included),
    /// in force until the log or a snapshot carries another one. Empty for
    /// a node that joins an existing cluster: it waits, never campaigning,
    /// until a leader adds it and replicates the configuration to it.
    pub voters: Vec<NodeId>,
    /// Minimum election timeout in ticks; each timeout is drawn uniformly
    /// from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u32,
    /// Ticks between leader heartbeats; must be below `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Most entries in one AppendEntries message.
    pub max_entries_per_msg: usize,
    /// Most payload bytes in one AppendEntries message (at least one entry
    /// is always sent, however large).
    pub max_bytes_per_msg: usize,
    /// Most AppendEntries messages in flight to one follower while it is
    /// being replicated to optimistically (pipelining window).
    pub max_inflight_msgs: usize,
    /// Largest single command accepted by `Propose`. An entry is always sent
    /// whole, so this (plus headers) must fit the transport's frame limit.
    pub max_entry_bytes: usize,
    /// Most entries the leader holds uncommitted before refusing proposals
    /// with [`crate::ProposeError::Backpressure`].
    pub max_uncommitted_entries: usize,
    /// Run a PreVote round before a real election (thesis §9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum for an election timeout
    /// steps down, and followers ignore vote requests while they hear from a
    /// leader (thesis §6.2).
    pub check_quorum: bool,
    /// Entries kept in memory behind a snapshot so that a follower only a
    /// little behind still catches up by AppendEntries instead of a whole
    /// snapshot (etcd keeps 5,000 by default for the same reason).
    pub snapshot_trailing_entries: u64,
    /// Serve reads from a leader lease instead of confirming leadership
    /// with a round of messages per read batch (thesis §6.4.1). Off by
    /// default: a lease is only as safe as the clocks. It relies on
    /// `check_quorum` (a follower that heard from the leader refuses other
    /// candidates for `election_ticks` of *its* clock) and on no clock
    /// running faster than another by more than `max_clock_drift_ticks`
    /// over an election timeout. If clocks drift more (a paused VM, a
    /// process stopped and resumed, a stepped clock), a deposed leader can
    /// answer reads with stale data.
    pub lease_reads: bool,
    /// The bound on clock drift that `lease_reads` assumes: how many ticks
    /// one node's clock may gain on another's over `election_ticks` ticks.
    /// The lease lasts `election_ticks - 1 - max_clock_drift_ticks` ticks
    /// from the time the round that confirmed it was sent (the 1 covers
    /// tick granularity), so it ends before any follower's promise does.
    pub max_clock_drift_ticks: u32,
}

impl Config {
    /// A configuration with production defaults: election timeout of 10
    /// ticks, heartbeat every 2, PreVote and CheckQuorum on.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Config {
        Config {
            id,
            voters,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_entries_per_msg: 4096,
            max_bytes_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_entry_bytes: 16 << 20,
            max_uncommitted_entries: 1 << 20,
            pre_vote: true,
            check_quorum: true,
            snapshot_trailing_entries: 1024,
            lease_reads: false,
            max_clock_drift_ticks: 1,
        }
    }

    /// Checks the configuration and returns it with `voters` sorted and
    /// deduplicated.
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        self.voters.sort_unstable();
        self.voters.dedup();
        if self.voters.contains(&0) {
            return Err(ConfigError::ZeroId);
        }
        if !self.voters.is_empty() && !self.voters.contains(&self.id) {
            return Err(ConfigError::NotAVoter { id: self.id });
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(ConfigError::HeartbeatNotBelowElection {
                heartbeat_ticks: self.heartbeat_ticks,
                election_ticks: self.election_ticks,
            });
        }
        if self.election_ticks > u32::MAX / 2 {
            return Err(ConfigError::ElectionTicksTooLarge);
        }
        if self.max_entries_per_msg == 0 || self.max_bytes_per_msg == 0 || self.max_inflight_msgs == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        if self.max_uncommitted_entries == 0 || self.max_entry_bytes == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        if self.lease_reads {
            if !self.check_quorum {
                return Err(ConfigError::LeaseWithoutCheckQuorum);
            }
            if self.max_clock_drift_ticks.saturating_add(1) >= self.election_ticks {
                return Err(ConfigError::LeaseTooShort {
                    max_clock_drift_ticks: self.max_clock_drift_ticks,
                    election_ticks: self.election_ticks,
                });
            }
        }
        Ok(self)
    }
}

/// A configuration that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Node id 0 is reserved.
    ZeroId,
    /// The node's own id is not among the (non-empty) voters.
    NotAVoter {
        /// The node's id.
        id: NodeId,
    },
    /// Heartbeats must come more often than elections time out.
    HeartbeatNotBelowElection {
        /// Configured heartbeat interval.
        heartbeat_ticks: u32,
        /// Configured election timeout.
        election_ticks: u32,
    },
    /// `election_ticks` would overflow when randomized.
    ElectionTicksTooLarge,
    /// A message, pipeline or backlog limit is zero.
    ZeroLimit,
    /// The persisted state given to `restore` is inconsistent.
    CorruptState(&'static str),
    /// `lease_reads` needs `check_quorum`: the lease is the followers'
    /// promise not to elect anyone else while they hear from the leader.
    LeaseWithoutCheckQuorum,
    /// The drift bound leaves no lease: `election_ticks - 1 - max_clock_drift_ticks` must be positive.
    LeaseTooShort {
        /// Configured drift bound.
        max_clock_drift_ticks: u32,
        /// Configured election timeout.
        election_ticks: u32,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroId => f.write_str("node id 0 is reserved"),
            ConfigError::NotAVoter { id } => write!(f, "node {id} is not in the voter list"),
            ConfigError::HeartbeatNotBelowElection { heartbeat_ticks, election_ticks } => write!(
                f,
                "heartbeat_ticks ({heartbeat_ticks}) must be at least 1 and below election_ticks ({election_ticks})"
            ),
            ConfigError::ElectionTicksTooLarge => f.write_str("election_ticks is too large"),
            ConfigError::ZeroLimit => f.write_str("message, in-flight and backlog limits must be non-zero"),
            ConfigError::CorruptState(why) => write!(f, "persisted state is inconsistent: {why}"),
            ConfigError::LeaseWithoutCheckQuorum => f.write_str("lease_reads requires check_quorum"),
            ConfigError::LeaseTooShort { max_clock_drift_ticks, election_ticks } => write!(
                f,
                "max_clock_drift_ticks ({max_clock_drift_ticks}) leaves no read lease: it must be below \
                 election_ticks - 1 ({})",
                election_ticks.saturating_sub(1)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn base() -> Config {
        Config::new(1, vec![3, 1, 2, 2])
    }

    #[test]
    fn valid_config_is_normalised() {
        let c = base().validate().expect("valid");
        assert_eq!(c.voters, vec![1, 2, 3], "voters sorted and deduplicated");
    }

    #[test]
    fn election_ticks_limit_is_exact() {
        let ok = Config { election_ticks: u32::MAX / 2, ..base() };
        assert!(ok.validate().is_ok(), "the largest timeout whose doubling fits in u32");
        let too_big = Config { election_ticks: u32::MAX / 2 + 1, ..base() };
        assert_eq!(too_big.validate(), Err(ConfigError::ElectionTicksTooLarge));
    }

    #[test]
    fn each_zero_limit_is_refused_on_its_own() {
        let cases = [
            Config { max_entries_per_msg: 0, ..base() },
            Config { max_bytes_per_msg: 0, ..base() },
            Config { max_inflight_msgs: 0, ..base() },
            Config { max_uncommitted_entries: 0, ..base() },
            Config { max_entry_bytes: 0, ..base() },
        ];
        for c in cases {
            assert_eq!(c.clone().validate(), Err(ConfigError::ZeroLimit), "{c:?}");
        }
    }

    #[test]
    fn errors_explain_themselves() {
        let e = Config { heartbeat_ticks: 10, ..base() }.validate().expect_err("invalid");
        assert_eq!(e.to_string(), "heartbeat_ticks (10) must be at least 1 and below election_ticks (10)");
        assert_eq!(ConfigError::NotAVoter { id: 4 }.to_string(), "node 4 is not in the voter list");
        assert!(ConfigError::CorruptState("gap").to_string().contains("gap"));
    }

    #[test]
    fn leases_need_check_quorum_and_room_for_the_drift_bound() {
        let lease = Config { lease_reads: true, ..base() };
        assert!(lease.clone().validate().is_ok(), "the defaults leave an 8-tick lease");
        let no_cq = Config { check_quorum: false, ..lease.clone() };
        assert_eq!(no_cq.validate(), Err(ConfigError::LeaseWithoutCheckQuorum));
        let edge = Config { max_clock_drift_ticks: 8, ..lease.clone() };
        assert!(edge.validate().is_ok(), "a 1-tick lease");
        let none = Config { max_clock_drift_ticks: 9, ..lease.clone() };
        let e = none.validate().expect_err("no lease left");
        assert!(e.to_string().contains("below election_ticks - 1 (9)"), "{e}");
        let off = Config { max_clock_drift_ticks: 100, check_quorum: false, ..base() };
        assert!(off.validate().is_ok(), "the bound only matters with leases");
    }
}
