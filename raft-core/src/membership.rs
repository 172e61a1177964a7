//! Cluster membership: who votes, who only listens, and how that changes
//! (Raft thesis §4: single-server changes §4.1, joint consensus §4.3,
//! learners ("non-voting members") §4.2.1).
//!
//! A configuration is carried by the log as an [`EntryKind::Config`] entry
//! whose payload is [`Membership::encode`]. It takes effect on a node as
//! soon as the node appends it, committed or not (§4.1): a node always uses
//! the newest configuration in its log, and falls back to the previous one
//! if that entry is truncated away. Snapshots record the configuration in
//! force at their last index ([`crate::SnapshotMeta::membership`]).
//!
//! While a configuration is *joint* (`outgoing` not empty) every decision,
//! elections and commits alike, needs a majority of `voters` **and** a
//! majority of `outgoing`. Learners never count toward any quorum.
//!
//! [`EntryKind::Config`]: crate::EntryKind::Config

use alloc::vec::Vec;
use bytes::Bytes;
use core::fmt;
use serde::{Deserialize, Serialize};

use crate::types::{Index, NodeId};

/// The version byte [`Membership::encode`] writes first.
pub const MEMBERSHIP_FORMAT_VERSION: u8 = 1;

/// A cluster configuration.
///
/// All three id lists are sorted, free of duplicates and of the reserved id
/// 0, and pairwise disjoint except that a node may be in both `voters` and
/// `outgoing` (it votes in both halves of a joint configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// The voters (`C_new` while joint).
    pub voters: Vec<NodeId>,
    /// The voters of `C_old` while the configuration is joint; empty
    /// otherwise.
    pub outgoing: Vec<NodeId>,
    /// Members that receive the log but never vote or count toward a quorum.
    pub learners: Vec<NodeId>,
    /// Bytes the core never reads, replicated with the configuration: the
    /// std driver keeps the members' addresses here, so a node that learns
    /// of a new member also learns where to reach it.
    pub context: Bytes,
}

impl Membership {
    /// A simple (non-joint) configuration of `voters`, no learners.
    pub fn new(mut voters: Vec<NodeId>) -> Membership {
        voters.sort_unstable();
        voters.dedup();
        Membership { voters, ..Membership::default() }
    }

    /// True while a joint configuration (`C_old,new`) is in force.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// True if `id` votes in either half.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok() || self.outgoing.binary_search(&id).is_ok()
    }

    /// True if `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    /// True if `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member (voters of both halves and learners), sorted, once each.
    pub fn members(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self.voters.iter().chain(&self.outgoing).chain(&self.learners).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Whether the nodes for which `yes` holds form a quorum: a majority of
    /// `voters` and, while joint, a majority of `outgoing` as well.
    pub fn has_quorum(&self, mut yes: impl FnMut(NodeId) -> bool) -> bool {
        let majority = |set: &[NodeId], yes: &mut dyn FnMut(NodeId) -> bool| {
            set.iter().filter(|&&id| yes(id)).count() > set.len() / 2
        };
        majority(&self.voters, &mut yes) && (!self.is_joint() || majority(&self.outgoing, &mut yes))
    }

    /// Whether the nodes for which `no` holds make a quorum impossible: a
    /// majority of either half (an election with that many refusals is lost).
    pub fn quorum_impossible(&self, mut no: impl FnMut(NodeId) -> bool) -> bool {
        let blocks = |set: &[NodeId], no: &mut dyn FnMut(NodeId) -> bool| {
            !set.is_empty() && set.iter().filter(|&&id| no(id)).count() >= set.len().div_ceil(2)
        };
        blocks(&self.voters, &mut no) || blocks(&self.outgoing, &mut no)
    }

    /// The highest index stored on a quorum, given each voter's `matched`
    /// index: the quorum index of `voters`, and while joint the lower of it
    /// and that of `outgoing`. `scratch` is reused so counting allocates
    /// nothing on the hot path.
    pub(crate) fn committed_index(&self, scratch: &mut Vec<Index>, mut matched: impl FnMut(NodeId) -> Index) -> Index {
        let mut half = |set: &[NodeId]| {
            scratch.clear();
            scratch.extend(set.iter().map(|&id| matched(id)));
            quorum_index(scratch)
        };
        let incoming = half(&self.voters);
        if self.is_joint() { incoming.min(half(&self.outgoing)) } else { incoming }
    }

    /// Checks the invariants listed on the type.
    pub fn validate(&self) -> Result<(), MembershipError> {
        for set in [&self.voters, &self.outgoing, &self.learners] {
            if set.contains(&0) {
                return Err(MembershipError::InvalidId);
            }
            if set.windows(2).any(|w| w[0] >= w[1]) {
                return Err(MembershipError::Malformed("ids not sorted or duplicated"));
            }
        }
        if self.voters.is_empty() {
            return Err(MembershipError::NoVoters);
        }
        if self.learners.iter().any(|&id| self.is_voter(id)) {
            return Err(MembershipError::Malformed("a learner is also a voter"));
        }
        Ok(())
    }

    /// The configuration as bytes: the payload of an
    /// [`crate::EntryKind::Config`] entry. Format version
    /// [`MEMBERSHIP_FORMAT_VERSION`]: the version byte, then `voters`,
    /// `outgoing` and `learners`, each as a count and the ids, then the
    /// context as a length and its bytes; every count, id and length an
    /// unsigned LEB128 varint. Pinned by a golden byte vector in the tests.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(8 + 2 * self.voters.len() + self.context.len());
        out.push(MEMBERSHIP_FORMAT_VERSION);
        for set in [&self.voters, &self.outgoing, &self.learners] {
            put_varint(&mut out, set.len() as u64);
            for &id in set.iter() {
                put_varint(&mut out, id);
            }
        }
        put_varint(&mut out, self.context.len() as u64);
        out.extend_from_slice(&self.context);
        Bytes::from(out)
    }

    /// Parses [`Membership::encode`]'s output and checks it
    /// ([`Membership::validate`]). Untrusted input: any other bytes are an
    /// error, never a panic or an allocation larger than the input.
    pub fn decode(bytes: &Bytes) -> Result<Membership, MembershipError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.byte()?;
        if version != MEMBERSHIP_FORMAT_VERSION {
            return Err(MembershipError::UnknownVersion(version));
        }
        let mut sets: [Vec<NodeId>; 3] = Default::default();
        for set in &mut sets {
            let n = r.varint()?;
            // Every id takes at least one byte: a count beyond what is left
            // is a lie, refused before allocating for it.
            if n > (bytes.len() - r.pos) as u64 {
                return Err(MembershipError::Malformed("truncated"));
            }
            for _ in 0..n {
                set.push(r.varint()?);
            }
        }
        let len = r.varint()?;
        if len != (bytes.len() - r.pos) as u64 {
            return Err(MembershipError::Malformed("context length does not match the rest"));
        }
        let context = bytes.slice(r.pos..);
        let [voters, outgoing, learners] = sets;
        let m = Membership { voters, outgoing, learners, context };
        m.validate()?;
        Ok(m)
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters {:?}", self.voters)?;
        if self.is_joint() {
            write!(f, " joint with {:?}", self.outgoing)?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners {:?}", self.learners)?;
        }
        Ok(())
    }
}

/// The index replicated on a quorum of `match_indexes` (one per voter): the
/// largest `i` such that a majority has `match >= i`.
pub(crate) fn quorum_index(match_indexes: &mut [Index]) -> Index {
    if match_indexes.is_empty() {
        return 0;
    }
    match_indexes.sort_unstable_by(|a, b| b.cmp(a));
    match_indexes[match_indexes.len() / 2]
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, MembershipError> {
        let b = *self.bytes.get(self.pos).ok_or(MembershipError::Malformed("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, MembershipError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(MembershipError::Malformed("varint overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(MembershipError::Malformed("varint overflows 64 bits"))
    }
}

/// A requested change of membership ([`crate::Event::ChangeMembership`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a new member as a learner: it receives the log (by snapshot if
    /// needed) but does not vote.
    AddLearner(NodeId),
    /// Make a learner a voter. Refused unless the learner is caught up
    /// (see [`MembershipError::LearnerBehind`]).
    Promote(NodeId),
    /// Remove a voter or a learner. Removing the leader itself is allowed:
    /// it keeps leading without counting itself until the change commits,
    /// then steps down.
    Remove(NodeId),
    /// Any change at once: the voters and learners wanted. When the voters
    /// differ from the current ones by more than one node, the change goes
    /// through a joint configuration (`C_old,new`, then `C_new`, appended by
    /// the leader once the joint one commits); otherwise it is a
    /// single-server change. New voters must be caught-up learners, and no
    /// voter may become a learner in the same change (remove it, then add it
    /// back as a learner).
    Set {
        /// The voters of the new configuration.
        voters: Vec<NodeId>,
        /// The learners of the new configuration.
        learners: Vec<NodeId>,
    },
}

/// Why a membership change, a leadership transfer or a configuration was
/// refused. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipError {
    /// Only the leader changes the membership; `leader` is its best guess.
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// A configuration change is not yet committed (or the joint phase has
    /// not ended): one change at a time. Retrying later can succeed.
    ChangeInProgress,
    /// A new leader must commit an entry of its own term before it changes
    /// the membership (the fix to single-server changes found after the
    /// thesis, raft-dev, 2015). Retrying shortly can succeed.
    LeaderNotReady,
    /// A leadership transfer is under way; retry once it ends.
    TransferInProgress,
    /// The node is not a member of the configuration.
    UnknownNode {
        /// The node named.
        id: NodeId,
    },
    /// The node is a member already.
    AlreadyMember {
        /// The node named.
        id: NodeId,
    },
    /// Only a learner can be promoted.
    NotALearner {
        /// The node named.
        id: NodeId,
    },
    /// The learner has not caught up: it must hold the leader's log up to
    /// at most one message's worth (`Config::max_entries_per_msg`) of
    /// entries and have answered within the last election timeout. Retrying
    /// once it catches up can succeed.
    LearnerBehind {
        /// The node named.
        id: NodeId,
        /// Its acknowledged index.
        matched: Index,
        /// The leader's last index.
        last: Index,
    },
    /// The change would leave no voter.
    NoVoters,
    /// The change would move a voter straight to a learner.
    Demotion {
        /// The node named.
        id: NodeId,
    },
    /// The change would change nothing.
    NoChange,
    /// Node id 0 is reserved.
    InvalidId,
    /// Leadership can only be transferred to a voter other than the leader.
    NotAVoter {
        /// The node named.
        id: NodeId,
    },
    /// A configuration entry's bytes are of a format version this build
    /// does not know.
    UnknownVersion(u8),
    /// A configuration's bytes or lists are malformed.
    Malformed(&'static str),
}

impl MembershipError {
    /// Whether the same request can succeed later without being changed
    /// (another change or a transfer is under way, the leader is new, the
    /// learner is still catching up, or another node leads).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MembershipError::NotLeader { .. }
                | MembershipError::ChangeInProgress
                | MembershipError::LeaderNotReady
                | MembershipError::TransferInProgress
                | MembershipError::LearnerBehind { .. }
        )
    }
}

impl fmt::Display for MembershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipError::NotLeader { leader: Some(id) } => write!(f, "not the leader; try node {id}"),
            MembershipError::NotLeader { leader: None } => f.write_str("not the leader; no leader known"),
            MembershipError::ChangeInProgress => {
                f.write_str("another membership change is not yet committed; retry when it is")
            }
            MembershipError::LeaderNotReady => {
                f.write_str("the leader has not yet committed an entry of its term; retry shortly")
            }
            MembershipError::TransferInProgress => f.write_str("a leadership transfer is under way; retry after it"),
            MembershipError::UnknownNode { id } => write!(f, "node {id} is not a member"),
            MembershipError::AlreadyMember { id } => write!(f, "node {id} is already a member"),
            MembershipError::NotALearner { id } => write!(f, "node {id} is not a learner"),
            MembershipError::LearnerBehind { id, matched, last } => {
                write!(f, "learner {id} has not caught up (it holds {matched} of {last}); retry when it has")
            }
            MembershipError::NoVoters => f.write_str("the change would leave no voter"),
            MembershipError::Demotion { id } => {
                write!(f, "voter {id} cannot become a learner in one change; remove it, then add it as a learner")
            }
            MembershipError::NoChange => f.write_str("the change would change nothing"),
            MembershipError::InvalidId => f.write_str("node id 0 is reserved"),
            MembershipError::NotAVoter { id } => write!(f, "node {id} is not a voter other than the leader"),
            MembershipError::UnknownVersion(v) => write!(f, "configuration format version {v} is unknown"),
            MembershipError::Malformed(why) => write!(f, "malformed configuration: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn joint() -> Membership {
        Membership {
            voters: vec![1, 4, 5],
            outgoing: vec![1, 2, 3],
            learners: vec![6],
            context: Bytes::from_static(b"ctx"),
        }
    }

    #[test]
    fn encoding_is_pinned() {
        // version 1; voters 3: 1 4 5; outgoing 3: 1 2 3; learners 1: 6;
        // context 3: "ctx". Id 300 needs two varint bytes (ac 02).
        let bytes = joint().encode();
        assert_eq!(&bytes[..], b"\x01\x03\x01\x04\x05\x03\x01\x02\x03\x01\x06\x03ctx");
        let big = Membership { voters: vec![300], ..Membership::default() };
        assert_eq!(&big.encode()[..], b"\x01\x01\xac\x02\x00\x00\x00");
        assert_eq!(Membership::decode(&bytes), Ok(joint()));
        assert_eq!(Membership::decode(&big.encode()), Ok(big));
    }

    #[test]
    fn decoding_refuses_every_malformed_shape() {
        let good = joint().encode();
        let cases: [(&[u8], MembershipError); 7] = [
            (b"", MembershipError::Malformed("truncated")),
            (b"\x02\x01\x01\x00\x00\x00", MembershipError::UnknownVersion(2)),
            (b"\x01\x05\x01", MembershipError::Malformed("truncated")),
            (b"\x01\x01\x01\x00\x00\x01", MembershipError::Malformed("context length does not match the rest")),
            (b"\x01\x00\x00\x00\x00", MembershipError::NoVoters),
            (b"\x01\x02\x02\x01\x00\x00\x00", MembershipError::Malformed("ids not sorted or duplicated")),
            (b"\x01\x01\x01\x00\x01\x01\x00", MembershipError::Malformed("a learner is also a voter")),
        ];
        for (bytes, err) in cases {
            assert_eq!(Membership::decode(&Bytes::copy_from_slice(bytes)), Err(err), "{bytes:?}");
        }
        assert_eq!(
            Membership::decode(&Bytes::from_static(b"\x01\x01\x00\x00\x00\x00")),
            Err(MembershipError::InvalidId)
        );
        // Every strict prefix of a good encoding is refused.
        for n in 0..good.len() {
            assert!(Membership::decode(&good.slice(..n)).is_err(), "prefix of {n} bytes");
        }
        // A count of 2^63 ids is refused before anything is allocated.
        let huge = Bytes::from_static(b"\x01\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01");
        assert!(Membership::decode(&huge).is_err());
    }

    #[test]
    fn joint_quorums_need_both_halves() {
        let m = joint();
        // 1 and 4 are a majority of C_new but only 1 of C_old.
        assert!(!m.has_quorum(|id| id == 1 || id == 4));
        assert!(m.has_quorum(|id| [1, 2, 4].contains(&id)));
        // The learner never counts.
        assert!(!m.has_quorum(|id| [2, 4, 6].contains(&id)));
        assert!(m.quorum_impossible(|id| id == 2 || id == 3), "a majority of C_old refused");
        assert!(!m.quorum_impossible(|id| id == 2 || id == 5));
        let simple = Membership::new(vec![3, 1, 2]);
        assert!(simple.has_quorum(|id| id != 3) && !simple.has_quorum(|id| id == 1));
        assert!(simple.quorum_impossible(|id| id != 3) && !simple.quorum_impossible(|id| id == 1));
        // An even-sized set: half refusing is enough to lose.
        let four = Membership::new(vec![1, 2, 3, 4]);
        assert!(four.quorum_impossible(|id| id <= 2) && !four.has_quorum(|id| id > 2));
    }

    #[test]
    fn joint_commit_is_the_lower_of_both_halves() {
        let m = joint();
        let matched = |id: NodeId| [0, 10, 3, 2, 9, 8, 100][id as usize];
        let mut scratch = Vec::new();
        // C_new {1:10, 4:9, 5:8} -> 9; C_old {1:10, 2:3, 3:2} -> 3.
        assert_eq!(m.committed_index(&mut scratch, matched), 3);
        let simple = Membership::new(vec![1, 4, 5]);
        assert_eq!(simple.committed_index(&mut scratch, matched), 9);
    }

    #[test]
    fn membership_queries() {
        let m = joint();
        assert!(m.is_joint() && m.is_voter(2) && m.is_voter(5) && !m.is_voter(6));
        assert!(m.is_learner(6) && m.contains(6) && !m.contains(7));
        assert_eq!(m.members(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(alloc::format!("{m}"), "voters [1, 4, 5] joint with [1, 2, 3] learners [6]");
        assert!(MembershipError::ChangeInProgress.is_retryable());
        assert!(!MembershipError::NoVoters.is_retryable());
    }
}
