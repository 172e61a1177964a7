//! The payloads of WAL records, as types the WAL owns.
//!
//! `raft-core`'s types ([`Entry`], [`HardState`]) are the protocol's
//! vocabulary and are free to change shape: a field may be added, renamed
//! or reordered there without anyone thinking about disks. Bytes already on
//! disk cannot change. So the WAL never serializes a core type: it converts
//! to the `…V1` types below, whose serde layout (postcard: fields in
//! declaration order, integers as varints, `u8` and `bool` as one byte,
//! `Option` as a `0`/`1` tag, sequences and byte strings as a varint length
//! and the items) *is* version 1 of the record format, pinned byte for byte
//! by the golden files in `tests/golden/` and described in `docs/formats.md`.
//!
//! Converting back is a [`TryFrom`]: a record that passed its CRC can still
//! hold a value no core type can express (an unknown entry kind, a vote for
//! the reserved node id 0), and that is an error naming the value, never a
//! panic and never a silent default.
//!
//! These layouts are byte-identical to what the WAL wrote before it owned
//! its types (postcard of the core types at the time), so existing data
//! directories still open as version 1.
//!
//! Version 2 adds one payload, [`WalSnapshotV2`] (record kind 4, the
//! snapshot marker); the `…V1` payloads are unchanged in version 2.
//!
//! Version 3 (membership changes) adds the entry kind
//! [`ENTRY_KIND_CONFIG`] and writes the snapshot marker as
//! [`WalSnapshotV3`], which carries the whole configuration instead of a
//! voter list. A marker is decoded by its segment's version (a marker
//! always opens a fresh segment, so a segment holds only one layout).
//! Config entries are read from segments of any version: after an upgrade
//! the newer build appends to the segment an older one started, and an
//! older build refuses kind 2 as an unknown entry kind, never misreads it.

use std::fmt;

use bytes::Bytes;
use raft_core::{Entry, EntryKind, HardState, Index, Membership, MembershipError, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize, Serializer};

use super::format::{FIRST_VERSION_WITH_MEMBERSHIP, RecordKind};

/// The kind byte of an [`EntryKind::Normal`] entry.
pub(super) const ENTRY_KIND_NORMAL: u8 = 0;
/// The kind byte of an [`EntryKind::Noop`] entry.
pub(super) const ENTRY_KIND_NOOP: u8 = 1;
/// The kind byte of an [`EntryKind::Config`] entry (version 3); its data is
/// [`Membership::encode`], checked when read.
pub(super) const ENTRY_KIND_CONFIG: u8 = 2;

/// Payload of a `HardState` record, version 1.
///
/// Field order is the byte order: never reorder, never insert; a different
/// layout is a new format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WalHardStateV1 {
    /// The persisted current term.
    pub term: Term,
    /// The vote in `term`; never `Some(0)` (0 is not a node id).
    pub vote: Option<NodeId>,
}

/// Payload of a `Truncate` record, version 1: delete every entry with
/// index `>= from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WalTruncateV1 {
    /// First index deleted; never 0 (indexes start at 1).
    pub from: Index,
}

/// One entry inside an `Entries` record, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WalEntryV1 {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Index,
    /// [`ENTRY_KIND_NORMAL`] or [`ENTRY_KIND_NOOP`]; anything else is refused.
    pub kind: u8,
    /// The application payload.
    pub data: Bytes,
}

/// Payload of a `Snapshot` record (the snapshot marker), version 2: the
/// stored log now follows this snapshot, whose image the driver stored
/// durably before. Converted to and from the core [`SnapshotMeta`]
/// explicitly.
///
/// Field order is the byte order: never reorder, never insert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WalSnapshotV2 {
    /// Index of the last entry the snapshot includes; never 0.
    pub last_included_index: Index,
    /// Term of that entry.
    pub last_included_term: Term,
    /// The voters of the configuration in force there; never contains 0.
    pub voters: Vec<NodeId>,
}

/// Payload of a `Snapshot` record, version 3: as [`WalSnapshotV2`], with
/// the configuration in force at the snapshot as [`Membership::encode`]
/// bytes (voters, joint outgoing voters, learners, context).
///
/// Field order is the byte order: never reorder, never insert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WalSnapshotV3 {
    /// Index of the last entry the snapshot includes; never 0.
    pub last_included_index: Index,
    /// Term of that entry.
    pub last_included_term: Term,
    /// [`Membership::encode`] of the configuration in force there.
    pub membership: Bytes,
}

/// The encoding side of an `Entries` record: a postcard sequence of
/// [`WalEntryV1`], produced straight from borrowed core entries so that a
/// large batch is not copied into a second vector first. It encodes to the
/// same bytes as a `Vec<WalEntryV1>`, which is what the decoder reads.
#[derive(Clone, Copy, Debug)]
pub(super) struct WalEntriesV1<'a>(pub &'a [Entry]);

impl Serialize for WalEntriesV1<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(WalEntryV1::from))
    }
}

/// A record about to be appended: its kind and its owned-format payload.
#[derive(Clone, Copy, Debug)]
pub(super) enum Record<'a> {
    /// A new hard state.
    HardState(WalHardStateV1),
    /// A truncation.
    Truncate(WalTruncateV1),
    /// A batch of contiguous entries.
    Entries(WalEntriesV1<'a>),
    /// A snapshot marker (written as version 3).
    Snapshot(&'a WalSnapshotV3),
}

impl Record<'_> {
    /// The kind byte this record is framed with.
    pub(super) fn kind(&self) -> RecordKind {
        match self {
            Record::HardState(_) => RecordKind::HardState,
            Record::Truncate(_) => RecordKind::Truncate,
            Record::Entries(_) => RecordKind::Entries,
            Record::Snapshot(_) => RecordKind::Snapshot,
        }
    }

    /// Serializes the payload (not the framing) with postcard.
    pub(super) fn serialize_payload<F: postcard::ser_flavors::Flavor>(&self, out: F) -> postcard::Result<F::Output> {
        match self {
            Record::HardState(hs) => postcard::serialize_with_flavor(hs, out),
            Record::Truncate(t) => postcard::serialize_with_flavor(t, out),
            Record::Entries(entries) => postcard::serialize_with_flavor(entries, out),
            Record::Snapshot(snapshot) => postcard::serialize_with_flavor(*snapshot, out),
        }
    }
}

/// A record read back from disk, already converted to core values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    /// A new hard state.
    HardState(HardState),
    /// Delete every entry with index `>= from`.
    Truncate {
        /// First index deleted (at least 1).
        from: Index,
    },
    /// A batch of entries (contiguity is checked by the replay, which knows
    /// the log they follow).
    Entries(Vec<Entry>),
    /// The stored log now follows this snapshot.
    Snapshot(SnapshotMeta),
}

/// A decoded value that no core type can hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum InvalidValue {
    /// An entry kind byte other than the known ones.
    UnknownEntryKind {
        /// The entry's index.
        index: Index,
        /// The kind byte found.
        kind: u8,
    },
    /// A vote for node id 0, which is reserved.
    VoteForZero,
    /// A truncation from index 0 (indexes start at 1).
    TruncateFromZero,
    /// A snapshot through index 0, which would cover nothing.
    SnapshotIndexZero,
    /// A snapshot whose voters include node id 0, which is reserved.
    VoterZero,
    /// A configuration (in a Config entry or a snapshot marker) that does
    /// not decode.
    BadMembership {
        /// The entry's index, or the snapshot's last index.
        index: Index,
        /// Why.
        error: MembershipError,
    },
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidValue::UnknownEntryKind { index, kind } => write!(
                f,
                "entry {index} has unknown kind {kind} (known: {ENTRY_KIND_NORMAL} normal, {ENTRY_KIND_NOOP} noop, \
                 {ENTRY_KIND_CONFIG} config)"
            ),
            InvalidValue::VoteForZero => f.write_str("vote for node id 0 (reserved, never a valid id)"),
            InvalidValue::TruncateFromZero => f.write_str("truncation from index 0 (indexes start at 1)"),
            InvalidValue::SnapshotIndexZero => f.write_str("snapshot through index 0 (indexes start at 1)"),
            InvalidValue::VoterZero => f.write_str("snapshot voters include node id 0 (reserved, never a valid id)"),
            InvalidValue::BadMembership { index, error } => write!(f, "configuration at index {index}: {error}"),
        }
    }
}

/// Why a CRC-valid record payload was refused.
#[derive(Debug)]
pub(super) enum RecordError {
    /// The payload is not a postcard encoding of the kind's type.
    Decode {
        /// The record kind.
        kind: RecordKind,
        /// postcard's complaint.
        error: postcard::Error,
    },
    /// The payload decoded with bytes left over: never written, so it means
    /// a bug or a writer of another layout.
    TrailingBytes {
        /// The record kind.
        kind: RecordKind,
        /// How many bytes were left over.
        extra: usize,
    },
    /// The payload decoded to a value no core type can hold.
    Invalid {
        /// The record kind.
        kind: RecordKind,
        /// What is wrong with it.
        value: InvalidValue,
    },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Decode { kind, error } => write!(f, "cannot decode {kind:?} record: {error}"),
            RecordError::TrailingBytes { kind, extra } => write!(f, "{kind:?} record has {extra} trailing bytes"),
            RecordError::Invalid { kind, value } => write!(f, "invalid {kind:?} record: {value}"),
        }
    }
}

/// Decodes a record payload of `kind`, found in a segment of format
/// `version`, into core values. (Whether `kind` may appear in that version
/// is the caller's check.)
pub(super) fn decode_record(kind: RecordKind, payload: &[u8], version: u32) -> Result<Decoded, RecordError> {
    let invalid = |value| RecordError::Invalid { kind, value };
    match kind {
        RecordKind::HardState => {
            let hs = take_exact::<WalHardStateV1>(kind, payload)?;
            Ok(Decoded::HardState(hs.try_into().map_err(invalid)?))
        }
        RecordKind::Truncate => {
            let t = take_exact::<WalTruncateV1>(kind, payload)?;
            Ok(Decoded::Truncate { from: t.try_into().map_err(invalid)? })
        }
        RecordKind::Entries => {
            let entries = take_exact::<Vec<WalEntryV1>>(kind, payload)?;
            let entries = entries.into_iter().map(Entry::try_from).collect::<Result<_, _>>().map_err(invalid)?;
            Ok(Decoded::Entries(entries))
        }
        RecordKind::Snapshot if version < FIRST_VERSION_WITH_MEMBERSHIP => {
            let snapshot = take_exact::<WalSnapshotV2>(kind, payload)?;
            Ok(Decoded::Snapshot(snapshot.try_into().map_err(invalid)?))
        }
        RecordKind::Snapshot => {
            let snapshot = take_exact::<WalSnapshotV3>(kind, payload)?;
            Ok(Decoded::Snapshot(snapshot.try_into().map_err(invalid)?))
        }
    }
}

/// Decodes exactly one `T` from `payload`; leftovers are an error.
fn take_exact<'a, T: Deserialize<'a>>(kind: RecordKind, payload: &'a [u8]) -> Result<T, RecordError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(RecordError::TrailingBytes { kind, extra: rest.len() }),
        Err(error) => Err(RecordError::Decode { kind, error }),
    }
}

impl From<HardState> for WalHardStateV1 {
    fn from(hs: HardState) -> Self {
        WalHardStateV1 { term: hs.term, vote: hs.vote }
    }
}

impl TryFrom<WalHardStateV1> for HardState {
    type Error = InvalidValue;

    fn try_from(hs: WalHardStateV1) -> Result<Self, InvalidValue> {
        if hs.vote == Some(0) {
            return Err(InvalidValue::VoteForZero);
        }
        Ok(HardState { term: hs.term, vote: hs.vote })
    }
}

impl TryFrom<WalTruncateV1> for Index {
    type Error = InvalidValue;

    fn try_from(t: WalTruncateV1) -> Result<Self, InvalidValue> {
        if t.from == 0 {
            return Err(InvalidValue::TruncateFromZero);
        }
        Ok(t.from)
    }
}

impl From<&Entry> for WalEntryV1 {
    fn from(e: &Entry) -> Self {
        let kind = match e.kind {
            EntryKind::Normal => ENTRY_KIND_NORMAL,
            EntryKind::Noop => ENTRY_KIND_NOOP,
            EntryKind::Config => ENTRY_KIND_CONFIG,
        };
        // `Bytes` is reference-counted: no payload copy.
        WalEntryV1 { term: e.term, index: e.index, kind, data: e.data.clone() }
    }
}

impl TryFrom<WalEntryV1> for Entry {
    type Error = InvalidValue;

    fn try_from(e: WalEntryV1) -> Result<Self, InvalidValue> {
        let kind = match e.kind {
            ENTRY_KIND_NORMAL => EntryKind::Normal,
            ENTRY_KIND_NOOP => EntryKind::Noop,
            ENTRY_KIND_CONFIG => {
                Membership::decode(&e.data).map_err(|error| InvalidValue::BadMembership { index: e.index, error })?;
                EntryKind::Config
            }
            kind => return Err(InvalidValue::UnknownEntryKind { index: e.index, kind }),
        };
        Ok(Entry { term: e.term, index: e.index, kind, data: e.data })
    }
}

impl From<&SnapshotMeta> for WalSnapshotV3 {
    fn from(m: &SnapshotMeta) -> Self {
        WalSnapshotV3 {
            last_included_index: m.last_included_index,
            last_included_term: m.last_included_term,
            membership: m.membership.encode(),
        }
    }
}

impl TryFrom<WalSnapshotV3> for SnapshotMeta {
    type Error = InvalidValue;

    fn try_from(s: WalSnapshotV3) -> Result<Self, InvalidValue> {
        let index = s.last_included_index;
        if index == 0 {
            return Err(InvalidValue::SnapshotIndexZero);
        }
        let membership =
            Membership::decode(&s.membership).map_err(|error| InvalidValue::BadMembership { index, error })?;
        Ok(SnapshotMeta { last_included_index: index, last_included_term: s.last_included_term, membership })
    }
}

impl TryFrom<WalSnapshotV2> for SnapshotMeta {
    type Error = InvalidValue;

    fn try_from(s: WalSnapshotV2) -> Result<Self, InvalidValue> {
        if s.last_included_index == 0 {
            return Err(InvalidValue::SnapshotIndexZero);
        }
        if s.voters.contains(&0) {
            return Err(InvalidValue::VoterZero);
        }
        // A version-2 marker predates membership changes: its voters were
        // the whole configuration.
        let membership = Membership::new(s.voters);
        let index = s.last_included_index;
        membership.validate().map_err(|error| InvalidValue::BadMembership { index, error })?;
        Ok(SnapshotMeta { last_included_index: index, last_included_term: s.last_included_term, membership })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(record: Record<'_>) -> Vec<u8> {
        record.serialize_payload(postcard::ser_flavors::AllocVec::new()).unwrap()
    }

    #[test]
    fn wal_record_entries_view_encodes_like_a_vec_of_owned_entries() {
        let entries = vec![
            Entry { term: 2, index: 9, kind: EntryKind::Normal, data: Bytes::from_static(b"x") },
            Entry { term: 3, index: 10, kind: EntryKind::Noop, data: Bytes::new() },
        ];
        let owned: Vec<WalEntryV1> = entries.iter().map(WalEntryV1::from).collect();
        assert_eq!(encode(Record::Entries(WalEntriesV1(&entries))), postcard::to_allocvec(&owned).unwrap());
        let decoded = decode_record(RecordKind::Entries, &encode(Record::Entries(WalEntriesV1(&entries))), 3).unwrap();
        assert_eq!(decoded, Decoded::Entries(entries));
    }

    #[test]
    fn wal_record_invalid_values_are_errors() {
        let unknown = vec![WalEntryV1 { term: 1, index: 4, kind: 3, data: Bytes::new() }];
        let err = decode_record(RecordKind::Entries, &postcard::to_allocvec(&unknown).unwrap(), 3).unwrap_err();
        assert!(
            matches!(err, RecordError::Invalid { value: InvalidValue::UnknownEntryKind { index: 4, kind: 3 }, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("entry 4 has unknown kind 3"), "{err}");

        let zero_vote = WalHardStateV1 { term: 5, vote: Some(0) };
        let err = decode_record(RecordKind::HardState, &encode(Record::HardState(zero_vote)), 3).unwrap_err();
        assert!(matches!(err, RecordError::Invalid { value: InvalidValue::VoteForZero, .. }), "{err}");

        let err =
            decode_record(RecordKind::Truncate, &encode(Record::Truncate(WalTruncateV1 { from: 0 })), 3).unwrap_err();
        assert!(matches!(err, RecordError::Invalid { value: InvalidValue::TruncateFromZero, .. }), "{err}");

        let v2 = |s: &WalSnapshotV2| postcard::to_allocvec(s).unwrap();
        let zero_index = WalSnapshotV2 { last_included_index: 0, last_included_term: 1, voters: vec![1] };
        let err = decode_record(RecordKind::Snapshot, &v2(&zero_index), 2).unwrap_err();
        assert!(matches!(err, RecordError::Invalid { value: InvalidValue::SnapshotIndexZero, .. }), "{err}");
        let zero_voter = WalSnapshotV2 { last_included_index: 5, last_included_term: 1, voters: vec![1, 0] };
        let err = decode_record(RecordKind::Snapshot, &v2(&zero_voter), 2).unwrap_err();
        assert!(matches!(err, RecordError::Invalid { value: InvalidValue::VoterZero, .. }), "{err}");
        assert!(err.to_string().contains("voters include node id 0"), "{err}");
        let no_voters = WalSnapshotV2 { last_included_index: 5, last_included_term: 1, voters: vec![] };
        let err = decode_record(RecordKind::Snapshot, &v2(&no_voters), 2).unwrap_err();
        assert!(err.to_string().contains("configuration at index 5"), "{err}");
        // Version 3: the configuration is checked.
        let bad =
            WalSnapshotV3 { last_included_index: 5, last_included_term: 1, membership: Bytes::from_static(b"\x01") };
        let err = decode_record(RecordKind::Snapshot, &encode(Record::Snapshot(&bad)), 3).unwrap_err();
        assert!(matches!(err, RecordError::Invalid { value: InvalidValue::BadMembership { index: 5, .. }, .. }));
        let zero_index = WalSnapshotV3 { last_included_index: 0, ..WalSnapshotV3::from(&SnapshotMeta::default()) };
        let err = decode_record(RecordKind::Snapshot, &encode(Record::Snapshot(&zero_index)), 3).unwrap_err();
        assert!(matches!(err, RecordError::Invalid { value: InvalidValue::SnapshotIndexZero, .. }), "{err}");
        // A Config entry is checked too.
        let config = vec![WalEntryV1 { term: 1, index: 8, kind: ENTRY_KIND_CONFIG, data: Bytes::from_static(b"\x09") }];
        let err = decode_record(RecordKind::Entries, &postcard::to_allocvec(&config).unwrap(), 3).unwrap_err();
        assert!(err.to_string().contains("configuration at index 8: configuration format version 9"), "{err}");
    }

    #[test]
    fn wal_record_snapshot_round_trip() {
        let meta = SnapshotMeta {
            last_included_index: 300,
            last_included_term: 7,
            membership: Membership::new(vec![1, 2, 70_000]),
        };
        // Version 2: index 300 (ac 02), term 7, 3 voters: 1, 2, 70000 (f0 a2 04).
        let payload = [0xac, 0x02, 7, 3, 1, 2, 0xf0, 0xa2, 0x04];
        assert_eq!(decode_record(RecordKind::Snapshot, &payload, 2).unwrap(), Decoded::Snapshot(meta.clone()));
        for cut in 0..payload.len() {
            assert!(decode_record(RecordKind::Snapshot, &payload[..cut], 2).is_err(), "cut at {cut}");
        }
        // Version 3: index, term, then the configuration's bytes (length 10).
        let payload = encode(Record::Snapshot(&WalSnapshotV3::from(&meta)));
        assert_eq!(payload[..5], [0xac, 0x02, 7, 10, 1]);
        assert_eq!(decode_record(RecordKind::Snapshot, &payload, 3).unwrap(), Decoded::Snapshot(meta));
        for cut in 0..payload.len() {
            assert!(decode_record(RecordKind::Snapshot, &payload[..cut], 3).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn wal_record_trailing_and_truncated_payloads_are_errors() {
        let mut payload = encode(Record::Truncate(WalTruncateV1 { from: 300 }));
        payload.push(0);
        let err = decode_record(RecordKind::Truncate, &payload, 3).unwrap_err();
        assert!(matches!(err, RecordError::TrailingBytes { extra: 1, .. }), "{err}");
        let payload = encode(Record::HardState(WalHardStateV1 { term: 300, vote: Some(7) }));
        for cut in 0..payload.len() {
            let err = decode_record(RecordKind::HardState, &payload[..cut], 3).unwrap_err();
            assert!(matches!(err, RecordError::Decode { .. }), "cut at {cut}: {err}");
        }
    }
}
