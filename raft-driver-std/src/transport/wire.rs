//! The messages peers exchange, as types the transport owns.
//!
//! `raft-core`'s [`Message`] is the protocol's vocabulary and is free to
//! change shape; the bytes between two nodes, possibly of different
//! releases during a rolling upgrade, are not. So the transport never
//! serializes a core type: every frame payload is a [`WireMessageV1`],
//! mirroring each [`Message`] / [`MessageBody`] variant, converted
//! explicitly in both directions. Its serde layout under postcard (fields in
//! declaration order, integers as varints, `u8` and `bool` as one byte,
//! `Option` as a `0`/`1` tag, an enum as its variant's position as a varint,
//! sequences and byte strings as a varint length and the items) *is* wire
//! format version 1, pinned by the golden files in `tests/golden/` and
//! described in `docs/formats.md`. Never reorder fields or variants, never
//! insert one: a different layout is a new version.
//!
//! Decoding is a [`TryFrom`]: bytes from a peer that decode can still hold a
//! value no core type can express (an unknown entry kind), and that is a
//! [`WireError`], never a panic or a silent default.
//!
//! The layout is byte-identical to what the transport sent before it owned
//! its types (postcard of the core types at the time), so nodes of both
//! builds still talk version 1 to each other.

use std::fmt;

use bytes::Bytes;
use raft_core::{
    AppendEntries, AppendEntriesResponse, Entry, EntryKind, Index, InstallSnapshot, Membership, Message, MessageBody,
    ReadIndex, ReadIndexResponse, RequestVote, RequestVoteResponse, SnapshotMeta, Term,
};
use serde::{Deserialize, Serialize};

/// The kind byte of an [`EntryKind::Normal`] entry.
pub(super) const ENTRY_KIND_NORMAL: u8 = 0;
/// The kind byte of an [`EntryKind::Noop`] entry.
pub(super) const ENTRY_KIND_NOOP: u8 = 1;
/// The kind byte of an [`EntryKind::Config`] entry (appended with
/// membership changes; an older build refuses it as an unknown kind). Its
/// data is checked by the core, which drops a message whose configuration
/// does not decode.
pub(super) const ENTRY_KIND_CONFIG: u8 = 2;

/// A frame payload, version 1: mirrors [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WireMessageV1 {
    /// The sender's term.
    pub term: Term,
    /// What the message says.
    pub body: WireBodyV1,
}

/// Mirrors [`MessageBody`]. The variant order is the wire tag (0 to 4). Tag 4
/// was appended with snapshots; existing tags are unchanged, so every frame
/// an older build sends still decodes, and an older build refuses tag 4
/// with a decode error (counted, never misread).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum WireBodyV1 {
    /// Tag 0: [`MessageBody::RequestVote`].
    RequestVote(WireRequestVoteV1),
    /// Tag 1: [`MessageBody::RequestVoteResponse`].
    RequestVoteResponse(WireRequestVoteResponseV1),
    /// Tag 2: [`MessageBody::AppendEntries`].
    AppendEntries(WireAppendEntriesV1),
    /// Tag 3: [`MessageBody::AppendEntriesResponse`].
    AppendEntriesResponse(WireAppendEntriesResponseV1),
    /// Tag 4: [`MessageBody::InstallSnapshot`] as sent before membership
    /// changes (a voter list); still decoded, no longer sent.
    InstallSnapshot(WireInstallSnapshotV1),
    /// Tag 5: [`MessageBody::InstallSnapshot`] with the whole configuration.
    InstallSnapshotConfig(WireInstallSnapshotConfigV1),
    /// Tag 6: [`MessageBody::TimeoutNow`].
    TimeoutNow,
    /// Tag 7: [`MessageBody::RequestVote`] of an election a leadership
    /// transfer started (`transfer: true`); tag 0 carries the others, so a
    /// vote request is byte-identical to an older build's.
    RequestVoteTransfer(WireRequestVoteV1),
    /// Tag 8: [`MessageBody::ReadIndex`] (appended with reads; so are 9 to 11).
    ReadIndex {
        /// The follower's id for the read.
        ctx: u64,
    },
    /// Tag 9: [`MessageBody::ReadIndexResponse`].
    ReadIndexResponse {
        /// The request's `ctx`.
        ctx: u64,
        /// The read index, or `None` if the node asked does not lead.
        index: Option<Index>,
    },
    /// Tag 10: [`MessageBody::ReadRound`].
    ReadRound {
        /// The round.
        seq: u64,
    },
    /// Tag 11: [`MessageBody::ReadRoundAck`].
    ReadRoundAck {
        /// The highest round received.
        seq: u64,
    },
}

/// Mirrors [`InstallSnapshot`], with the configuration as
/// [`raft_core::Membership::encode`] bytes (checked by the core).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WireInstallSnapshotConfigV1 {
    /// Index of the last entry the snapshot includes.
    pub last_included_index: Index,
    /// Term of that entry.
    pub last_included_term: Term,
    /// The configuration in force there.
    pub membership: Bytes,
}

/// Mirrors [`InstallSnapshot`] (its [`SnapshotMeta`], flattened).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WireInstallSnapshotV1 {
    /// Index of the last entry the snapshot includes.
    pub last_included_index: Index,
    /// Term of that entry.
    pub last_included_term: Term,
    /// The voters at that index.
    pub voters: Vec<u64>,
}

/// Mirrors [`RequestVote`] (its `transfer` flag is the tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WireRequestVoteV1 {
    /// True for a PreVote probe.
    pub pre_vote: bool,
    /// Index of the candidate's last log entry.
    pub last_log_index: Index,
    /// Term of the candidate's last log entry.
    pub last_log_term: Term,
}

/// Mirrors [`RequestVoteResponse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WireRequestVoteResponseV1 {
    /// Echoes the request's `pre_vote`.
    pub pre_vote: bool,
    /// Whether the vote was granted.
    pub granted: bool,
}

/// Mirrors [`AppendEntries`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WireAppendEntriesV1 {
    /// Index of the entry preceding `entries`.
    pub prev_log_index: Index,
    /// Term of that entry.
    pub prev_log_term: Term,
    /// The entries to store.
    pub entries: Vec<WireEntryV1>,
    /// The leader's commit index.
    pub leader_commit: Index,
}

/// Mirrors [`AppendEntriesResponse`]. The variant order is the wire tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum WireAppendEntriesResponseV1 {
    /// Tag 0: [`AppendEntriesResponse::Success`].
    Success {
        /// Highest index known to match and be persisted.
        match_index: Index,
    },
    /// Tag 1: [`AppendEntriesResponse::Reject`].
    Reject {
        /// The rejected `prev_log_index`.
        rejected_index: Index,
        /// The follower's term at `rejected_index`, if it has that entry.
        conflict_term: Option<Term>,
        /// Where the leader should retry from.
        conflict_index: Index,
    },
}

/// Mirrors [`Entry`]; the kind is a byte so that the mapping is written
/// down here rather than implied by the order of a core enum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WireEntryV1 {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Index,
    /// [`ENTRY_KIND_NORMAL`] or [`ENTRY_KIND_NOOP`]; anything else is refused.
    pub kind: u8,
    /// The application payload.
    pub data: Bytes,
}

/// A decoded frame payload that no core [`Message`] can hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// An entry kind byte that no wire version defines.
    UnknownEntryKind {
        /// The entry's index.
        index: Index,
        /// The kind byte found.
        kind: u8,
    },
    /// A snapshot offer whose configuration does not decode.
    BadMembership(raft_core::MembershipError),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::UnknownEntryKind { index, kind } => write!(
                f,
                "entry {index} has unknown kind {kind} (known: {ENTRY_KIND_NORMAL} normal, {ENTRY_KIND_NOOP} noop, \
                 {ENTRY_KIND_CONFIG} config)"
            ),
            WireError::BadMembership(e) => write!(f, "snapshot offer with a bad configuration: {e}"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<&Message> for WireMessageV1 {
    fn from(m: &Message) -> Self {
        let body = match &m.body {
            MessageBody::RequestVote(rv) => {
                let wire = WireRequestVoteV1 {
                    pre_vote: rv.pre_vote,
                    last_log_index: rv.last_log_index,
                    last_log_term: rv.last_log_term,
                };
                if rv.transfer { WireBodyV1::RequestVoteTransfer(wire) } else { WireBodyV1::RequestVote(wire) }
            }
            MessageBody::RequestVoteResponse(r) => {
                WireBodyV1::RequestVoteResponse(WireRequestVoteResponseV1 { pre_vote: r.pre_vote, granted: r.granted })
            }
            MessageBody::AppendEntries(ae) => WireBodyV1::AppendEntries(WireAppendEntriesV1 {
                prev_log_index: ae.prev_log_index,
                prev_log_term: ae.prev_log_term,
                entries: ae.entries.iter().map(WireEntryV1::from).collect(),
                leader_commit: ae.leader_commit,
            }),
            MessageBody::AppendEntriesResponse(r) => WireBodyV1::AppendEntriesResponse((*r).into()),
            MessageBody::InstallSnapshot(req) => WireBodyV1::InstallSnapshotConfig(WireInstallSnapshotConfigV1 {
                last_included_index: req.meta.last_included_index,
                last_included_term: req.meta.last_included_term,
                membership: req.meta.membership.encode(),
            }),
            MessageBody::TimeoutNow => WireBodyV1::TimeoutNow,
            MessageBody::ReadIndex(r) => WireBodyV1::ReadIndex { ctx: r.ctx },
            MessageBody::ReadIndexResponse(r) => WireBodyV1::ReadIndexResponse { ctx: r.ctx, index: r.index },
            MessageBody::ReadRound { seq } => WireBodyV1::ReadRound { seq: *seq },
            MessageBody::ReadRoundAck { seq } => WireBodyV1::ReadRoundAck { seq: *seq },
        };
        WireMessageV1 { term: m.term, body }
    }
}

impl TryFrom<WireMessageV1> for Message {
    type Error = WireError;

    fn try_from(m: WireMessageV1) -> Result<Self, WireError> {
        let body = match m.body {
            WireBodyV1::RequestVote(rv) => MessageBody::RequestVote(rv.into_core(false)),
            WireBodyV1::RequestVoteTransfer(rv) => MessageBody::RequestVote(rv.into_core(true)),
            WireBodyV1::RequestVoteResponse(r) => {
                MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote: r.pre_vote, granted: r.granted })
            }
            WireBodyV1::AppendEntries(ae) => MessageBody::AppendEntries(AppendEntries {
                prev_log_index: ae.prev_log_index,
                prev_log_term: ae.prev_log_term,
                entries: ae.entries.into_iter().map(Entry::try_from).collect::<Result<_, _>>()?,
                leader_commit: ae.leader_commit,
            }),
            WireBodyV1::AppendEntriesResponse(r) => MessageBody::AppendEntriesResponse(r.into()),
            WireBodyV1::InstallSnapshot(req) => {
                // Before membership changes the voters were the whole configuration; checked as
                // the newer variant's is (empty, zero or repeated ids are a decode error, not a
                // configuration for the core to install; found by fuzzing frame_decode).
                let membership = Membership::new(req.voters);
                membership.validate().map_err(WireError::BadMembership)?;
                MessageBody::InstallSnapshot(InstallSnapshot {
                    meta: SnapshotMeta {
                        last_included_index: req.last_included_index,
                        last_included_term: req.last_included_term,
                        membership,
                    },
                })
            }
            WireBodyV1::InstallSnapshotConfig(req) => MessageBody::InstallSnapshot(InstallSnapshot {
                meta: SnapshotMeta {
                    last_included_index: req.last_included_index,
                    last_included_term: req.last_included_term,
                    membership: Membership::decode(&req.membership).map_err(WireError::BadMembership)?,
                },
            }),
            WireBodyV1::TimeoutNow => MessageBody::TimeoutNow,
            WireBodyV1::ReadIndex { ctx } => MessageBody::ReadIndex(ReadIndex { ctx }),
            WireBodyV1::ReadIndexResponse { ctx, index } => {
                MessageBody::ReadIndexResponse(ReadIndexResponse { ctx, index })
            }
            WireBodyV1::ReadRound { seq } => MessageBody::ReadRound { seq },
            WireBodyV1::ReadRoundAck { seq } => MessageBody::ReadRoundAck { seq },
        };
        Ok(Message { term: m.term, body })
    }
}

impl WireRequestVoteV1 {
    fn into_core(self, transfer: bool) -> RequestVote {
        RequestVote {
            pre_vote: self.pre_vote,
            last_log_index: self.last_log_index,
            last_log_term: self.last_log_term,
            transfer,
        }
    }
}

impl From<AppendEntriesResponse> for WireAppendEntriesResponseV1 {
    fn from(r: AppendEntriesResponse) -> Self {
        match r {
            AppendEntriesResponse::Success { match_index } => WireAppendEntriesResponseV1::Success { match_index },
            AppendEntriesResponse::Reject { rejected_index, conflict_term, conflict_index } => {
                WireAppendEntriesResponseV1::Reject { rejected_index, conflict_term, conflict_index }
            }
        }
    }
}

impl From<WireAppendEntriesResponseV1> for AppendEntriesResponse {
    fn from(r: WireAppendEntriesResponseV1) -> Self {
        match r {
            WireAppendEntriesResponseV1::Success { match_index } => AppendEntriesResponse::Success { match_index },
            WireAppendEntriesResponseV1::Reject { rejected_index, conflict_term, conflict_index } => {
                AppendEntriesResponse::Reject { rejected_index, conflict_term, conflict_index }
            }
        }
    }
}

impl From<&Entry> for WireEntryV1 {
    fn from(e: &Entry) -> Self {
        let kind = match e.kind {
            EntryKind::Normal => ENTRY_KIND_NORMAL,
            EntryKind::Noop => ENTRY_KIND_NOOP,
            EntryKind::Config => ENTRY_KIND_CONFIG,
        };
        // `Bytes` is reference-counted: no payload copy.
        WireEntryV1 { term: e.term, index: e.index, kind, data: e.data.clone() }
    }
}

impl TryFrom<WireEntryV1> for Entry {
    type Error = WireError;

    fn try_from(e: WireEntryV1) -> Result<Self, WireError> {
        let kind = match e.kind {
            ENTRY_KIND_NORMAL => EntryKind::Normal,
            ENTRY_KIND_NOOP => EntryKind::Noop,
            ENTRY_KIND_CONFIG => EntryKind::Config,
            kind => return Err(WireError::UnknownEntryKind { index: e.index, kind }),
        };
        Ok(Entry { term: e.term, index: e.index, kind, data: e.data })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::transport::{decode_frame, encode_frame};

    fn entry() -> impl Strategy<Value = Entry> {
        let kind = prop_oneof![Just(EntryKind::Normal), Just(EntryKind::Noop), Just(EntryKind::Config)];
        (any::<u64>(), any::<u64>(), kind, proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(term, index, kind, data)| Entry { term, index, kind, data: Bytes::from(data) })
    }

    fn body() -> impl Strategy<Value = MessageBody> {
        let response = prop_oneof![
            any::<u64>().prop_map(|match_index| AppendEntriesResponse::Success { match_index }),
            (any::<u64>(), any::<Option<u64>>(), any::<u64>()).prop_map(|(rejected_index, conflict_term, ci)| {
                AppendEntriesResponse::Reject { rejected_index, conflict_term, conflict_index: ci }
            }),
        ];
        prop_oneof![
            (any::<bool>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(pre_vote, last_log_index, last_log_term, transfer)| {
                    MessageBody::RequestVote(RequestVote { pre_vote, last_log_index, last_log_term, transfer })
                }
            ),
            Just(MessageBody::TimeoutNow),
            any::<u64>().prop_map(|ctx| MessageBody::ReadIndex(ReadIndex { ctx })),
            (any::<u64>(), any::<Option<u64>>())
                .prop_map(|(ctx, index)| MessageBody::ReadIndexResponse(ReadIndexResponse { ctx, index })),
            any::<u64>().prop_map(|seq| MessageBody::ReadRound { seq }),
            any::<u64>().prop_map(|seq| MessageBody::ReadRoundAck { seq }),
            (any::<bool>(), any::<bool>()).prop_map(|(pre_vote, granted)| {
                MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote, granted })
            }),
            (any::<u64>(), any::<u64>(), proptest::collection::vec(entry(), 0..5), any::<u64>()).prop_map(
                |(prev_log_index, prev_log_term, entries, leader_commit)| {
                    MessageBody::AppendEntries(AppendEntries { prev_log_index, prev_log_term, entries, leader_commit })
                }
            ),
            response.prop_map(MessageBody::AppendEntriesResponse),
            (any::<u64>(), any::<u64>(), proptest::collection::btree_set(1..u64::MAX, 1..7), any::<Vec<u8>>())
                .prop_map(|(last_included_index, last_included_term, ids, context)| {
                    // A valid configuration: the wire only carries valid ones
                    // (a bad one is a decode error, tested with the golden files).
                    let ids: Vec<u64> = ids.into_iter().collect();
                    let (voters, learners) = ids.split_at(ids.len().div_ceil(2));
                    let membership = Membership {
                        voters: voters.to_vec(),
                        outgoing: Vec::new(),
                        learners: learners.to_vec(),
                        context: Bytes::from(context),
                    };
                    MessageBody::InstallSnapshot(InstallSnapshot {
                        meta: SnapshotMeta { last_included_index, last_included_term, membership },
                    })
                }),
        ]
    }

    /// A snapshot offer in the pre-membership layout (voters only) with no voters, or with node id 0,
    /// is a decode error like the newer layout's, not a configuration handed to the core (found by
    /// the `frame_decode` fuzz target: it decoded, and re-encoded to a frame that did not).
    #[test]
    fn a_legacy_snapshot_offer_with_a_bad_configuration_is_refused() {
        for voters in [vec![], vec![0, 1]] {
            let body = WireBodyV1::InstallSnapshot(WireInstallSnapshotV1 {
                last_included_index: 5,
                last_included_term: 1,
                voters: voters.clone(),
            });
            let wire = WireMessageV1 { term: 1, body };
            let result = Message::try_from(wire);
            assert!(matches!(result, Err(WireError::BadMembership(_))), "voters {voters:?}: {result:?}");
        }
        let body = WireBodyV1::InstallSnapshot(WireInstallSnapshotV1 {
            last_included_index: 5,
            last_included_term: 1,
            voters: vec![2, 1],
        });
        let decoded = Message::try_from(WireMessageV1 { term: 1, body }).expect("a valid legacy offer decodes");
        let MessageBody::InstallSnapshot(req) = decoded.body else { panic!("not an offer") };
        assert_eq!(req.meta.membership, Membership::new(vec![1, 2]));
    }

    proptest! {
        /// The conversions lose nothing and invent nothing: any message
        /// survives encode, decode unchanged (the golden files pin the
        /// bytes; this covers the values in between).
        #[test]
        fn transport_wire_round_trips_any_message(term in any::<u64>(), body in body()) {
            let message = Message { term, body };
            let frame = encode_frame(&message, 1 << 20).unwrap();
            let (decoded, used) = decode_frame(&frame, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(used, frame.len());
            prop_assert_eq!(decoded, message);
        }
    }
}
