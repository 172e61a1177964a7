//! The on-disk framing of WAL segments and records, and nothing else: no I/O
//! happens here, so the encoder and the parser can be tested byte by byte.
//! What a record's payload holds is `record`'s business.
//!
//! ```text
//! segment := header record*
//! header  := magic "RAFTWAL\0" (8) | version u32 LE (4) | reserved u32 LE = 0 (4)
//! record  := len u32 LE (4) | crc u32 LE (4) | kind u8 (1) | payload (len - 1)
//!            len = 1 + payload length (never 0)
//!            crc = CRC32C(len bytes ++ kind ++ payload)
//! kind    := 1 HardState (postcard WalHardStateV1)
//!          | 2 Truncate  (postcard WalTruncateV1: delete entries >= from)
//!          | 3 Entries   (postcard sequence of WalEntryV1, contiguous indexes)
//!          | 4 Snapshot  (postcard WalSnapshotV2 in version 2 segments,
//!                         WalSnapshotV3 in version 3 segments)
//! ```
//!
//! Version 3 differs from version 2 by the snapshot marker's payload
//! (the whole configuration instead of a voter list) and by entry kind 2
//! (Config) inside Entries records; see `record`.
//!
//! Version 2 differs from version 1 only by record kind 4, the snapshot
//! marker: kinds 1 to 3 have the same bytes in both, so a version-1 segment
//! is still read (and appended to) as it is, and a kind-4 record inside it
//! is corruption. A marker is only ever written as the second record of a
//! fresh segment, right after a `HardState` record (see `wal.rs`).
//!
//! The version sits in every segment header rather than in every record:
//! a segment is written by one binary from its first byte to its last, so a
//! per-record version could only ever repeat the header's. A reader checks
//! it before parsing a single record, and a version it does not know is
//! refused with [`WalError::UnsupportedVersion`](super::WalError::UnsupportedVersion), never
//! guessed at: the records of another layout can pass the CRC and still
//! mean something else entirely. `docs/formats.md` has the policy.

use super::record::Record;

/// Identifies a file as a WAL segment, so that a stray file that merely has
/// the right name is refused instead of being parsed as records.
pub(super) const MAGIC: [u8; 8] = *b"RAFTWAL\0";
/// The format version this build writes into every new segment header.
///
/// Bumped on *any* change to the bytes of the header, the framing or a
/// record payload (including a new record or entry kind): a reader of the
/// old version must refuse such a segment instead of misreading it.
pub const WAL_FORMAT_VERSION: u32 = 3;
/// The segment versions this build can read. Segments of an older version
/// stay readable as long as their version is listed here; new segments are
/// always written as [`WAL_FORMAT_VERSION`].
pub const SUPPORTED_WAL_VERSIONS: &[u32] = &[1, 2, WAL_FORMAT_VERSION];
/// The first version with [`RecordKind::Snapshot`].
pub(super) const FIRST_VERSION_WITH_SNAPSHOT: u32 = 2;
/// The first version whose snapshot marker carries a whole configuration
/// (`WalSnapshotV3`) and whose entries may be of kind Config.
pub(super) const FIRST_VERSION_WITH_MEMBERSHIP: u32 = 3;
/// Bytes before the first record of a segment.
pub(super) const SEGMENT_HEADER_LEN: usize = 16;
/// Bytes before the kind byte of a record (`len` and `crc`).
pub(super) const RECORD_HEADER_LEN: usize = 8;

/// The kind byte of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum RecordKind {
    /// A new `HardState` (term and vote).
    HardState = 1,
    /// Delete every entry with index `>= from`.
    Truncate = 2,
    /// Append a batch of entries.
    Entries = 3,
    /// The stored log now follows a snapshot (version 2 and later).
    Snapshot = 4,
}

impl RecordKind {
    pub(super) fn from_byte(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::HardState),
            2 => Some(RecordKind::Truncate),
            3 => Some(RecordKind::Entries),
            4 => Some(RecordKind::Snapshot),
            _ => None,
        }
    }
}

/// The fixed header every new segment starts with
/// ([`WAL_FORMAT_VERSION`]).
pub(super) fn segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    segment_header_for(WAL_FORMAT_VERSION)
}

/// The header of a segment of format `version` (tests build older ones).
pub(super) fn segment_header_for(version: u32) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h
}

/// Why the first bytes of a segment are not a header this build reads.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BadHeader {
    /// Too short, or the magic is wrong: not a WAL segment (or a torn one).
    NotASegment,
    /// A WAL segment, but of a format version this build cannot read.
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
    },
    /// The reserved field is not zero. No version writes anything there, so
    /// this is damage (or a writer that changed the layout without bumping
    /// the version).
    Reserved {
        /// The value found.
        found: u32,
    },
}

/// Checks a segment's header; returns its version.
pub(super) fn check_segment_header(data: &[u8]) -> Result<u32, BadHeader> {
    let Some(header) = data.first_chunk::<SEGMENT_HEADER_LEN>() else {
        return Err(BadHeader::NotASegment);
    };
    if header[..8] != MAGIC {
        return Err(BadHeader::NotASegment);
    }
    let word = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let (version, reserved) = (word(8), word(12));
    if !SUPPORTED_WAL_VERSIONS.contains(&version) {
        return Err(BadHeader::UnsupportedVersion { found: version });
    }
    if reserved != 0 {
        return Err(BadHeader::Reserved { found: reserved });
    }
    Ok(version)
}

/// `wal-0000000000000001.log`: zero-padded so that lexical order is numeric
/// order, which keeps `ls` output readable for operators.
pub(super) fn segment_file_name(seq: u64) -> String {
    format!("wal-{seq:016}.log")
}

/// The inverse of [`segment_file_name`]; `None` for any other file (which
/// the WAL then ignores, e.g. an editor's backup file).
pub(super) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Appends one complete record to `buf` and returns its length in bytes.
///
/// The payload is serialized straight into `buf` (no intermediate vector),
/// then the header is patched in: the length and CRC are only known
/// afterwards. On error `buf` is left as it was.
pub(super) fn append_record(buf: &mut Vec<u8>, record: &Record<'_>) -> Result<usize, String> {
    let kind = record.kind();
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    buf.push(kind as u8);
    if let Err(e) = record.serialize_payload(VecTail(buf)) {
        // Only possible for types postcard cannot encode, never for ours.
        buf.truncate(start);
        return Err(format!("cannot encode {kind:?} record: {e}"));
    }
    let body_len = buf.len() - start - RECORD_HEADER_LEN;
    let Ok(len) = u32::try_from(body_len) else {
        buf.truncate(start);
        return Err(format!("{kind:?} record of {body_len} bytes exceeds the 4 GiB record limit"));
    };
    let len_bytes = len.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &buf[start + RECORD_HEADER_LEN..]);
    buf[start..start + 4].copy_from_slice(&len_bytes);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf.len() - start)
}

/// A postcard output that appends to a borrowed vector, so records are
/// encoded in place in the write buffer (no per-record allocation) and the
/// buffer survives an encoding error.
struct VecTail<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecTail<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A record that passed the length and CRC checks.
#[derive(Debug)]
pub(super) struct RawRecord<'a> {
    /// The kind byte (not yet validated: a CRC-valid unknown kind means a
    /// newer writer, which is refused rather than skipped).
    pub kind: u8,
    /// The payload after the kind byte.
    pub payload: &'a [u8],
    /// Offset just past the record.
    pub end: usize,
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BadRecord {
    /// Fewer than [`RECORD_HEADER_LEN`] + 1 bytes remain.
    ShortHeader { available: usize },
    /// A length of 0 is never written (the kind byte is always present);
    /// zero-filled space after a crash looks like this.
    ZeroLength,
    /// The length runs past the end of the file.
    Overrun { len: u32, available: usize },
    /// The checksum does not match the bytes.
    Crc { stored: u32, computed: u32 },
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadRecord::ShortHeader { available } => {
                write!(f, "incomplete record header ({available} bytes left in file)")
            }
            BadRecord::ZeroLength => f.write_str("record length is zero"),
            BadRecord::Overrun { len, available } => {
                write!(f, "record length {len} exceeds the {available} bytes left in file")
            }
            BadRecord::Crc { stored, computed } => {
                write!(f, "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
        }
    }
}

/// Parses the record starting at `off`, checking only framing and CRC.
pub(super) fn parse_record(data: &[u8], off: usize) -> Result<RawRecord<'_>, BadRecord> {
    let rest = &data[off..];
    if rest.len() < RECORD_HEADER_LEN + 1 {
        return Err(BadRecord::ShortHeader { available: rest.len() });
    }
    let len_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes);
    let stored = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len == 0 {
        return Err(BadRecord::ZeroLength);
    }
    let available = rest.len() - RECORD_HEADER_LEN;
    if len as usize > available {
        return Err(BadRecord::Overrun { len, available });
    }
    let body = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len as usize];
    let computed = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), body);
    if computed != stored {
        return Err(BadRecord::Crc { stored, computed });
    }
    Ok(RawRecord { kind: body[0], payload: &body[1..], end: off + RECORD_HEADER_LEN + len as usize })
}

/// Finds the first offset after `bad` at which a valid record of a known
/// kind starts, if any.
///
/// This is what separates a torn tail (a crash cut the last write short:
/// nothing valid follows, safe to cut) from corruption (valid, possibly
/// acknowledged, records follow the damage: cutting would lose them). Every
/// offset is tried because a damaged length field gives no hint where the
/// next record starts; the cheap checks (kind byte, length in range) reject
/// almost every offset before any CRC is computed.
pub(super) fn find_valid_record_after(data: &[u8], bad: usize) -> Option<usize> {
    // Fast path: if the damaged record's length looks intact (e.g. a flipped
    // payload byte), the next record most likely starts right after it.
    if let Err(BadRecord::Crc { .. }) = parse_record(data, bad) {
        let len = u32::from_le_bytes(data[bad..bad + 4].try_into().expect("4 bytes")) as usize;
        let next = bad + RECORD_HEADER_LEN + len;
        if next < data.len() && is_valid_known(data, next) {
            return Some(next);
        }
    }
    (bad + 1..data.len()).find(|&off| is_valid_known(data, off))
}

fn is_valid_known(data: &[u8], off: usize) -> bool {
    // Check the kind byte before the CRC: it rejects ~99% of offsets for free.
    data.get(off + RECORD_HEADER_LEN).is_some_and(|&k| RecordKind::from_byte(k).is_some())
        && parse_record(data, off).is_ok()
}

/// Whether `data`, found where a segment header should be, is what a crash
/// while creating the segment can leave behind: a prefix of the header that
/// was being written, or zero-filled space.
///
/// A prefix of the header of any supported version counts: the crash may
/// have been an older release's.
pub(super) fn is_torn_header(data: &[u8]) -> bool {
    let prefix = data.len() < SEGMENT_HEADER_LEN
        && SUPPORTED_WAL_VERSIONS.iter().any(|&v| data == &segment_header_for(v)[..data.len()]);
    prefix || data.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::super::record::WalTruncateV1;
    use super::*;

    #[test]
    fn wal_format_record_round_trip_and_crc() {
        let mut buf = vec![0xAA; 3];
        let n = append_record(&mut buf, &Record::Truncate(WalTruncateV1 { from: 7 })).unwrap();
        assert_eq!(buf.len(), 3 + n);
        let rec = parse_record(&buf, 3).unwrap();
        assert_eq!(rec.kind, RecordKind::Truncate as u8);
        assert_eq!(rec.payload, [7]);
        assert_eq!(rec.end, buf.len());
        for i in 3..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            assert!(parse_record(&bad, 3).is_err(), "flip at {i} undetected");
        }
    }

    #[test]
    fn wal_format_file_names() {
        assert_eq!(segment_file_name(1), "wal-0000000000000001.log");
        assert_eq!(parse_segment_file_name("wal-0000000000000042.log"), Some(42));
        assert_eq!(parse_segment_file_name("wal-42.log"), None);
        assert_eq!(parse_segment_file_name("wal-0000000000000042.log.tmp"), None);
        assert_eq!(parse_segment_file_name("wal-00000000000000x2.log"), None);
    }

    #[test]
    fn wal_format_torn_header() {
        let h = segment_header();
        assert!(is_torn_header(&h[..5]));
        assert!(is_torn_header(&h[..9]));
        assert!(is_torn_header(&segment_header_for(1)[..9]));
        assert!(is_torn_header(&segment_header_for(2)[..9]));
        assert!(!is_torn_header(&segment_header_for(4)[..9]));
        assert!(is_torn_header(&[0; 40]));
        assert!(!is_torn_header(&h));
        assert!(!is_torn_header(b"garbage"));
    }

    #[test]
    fn wal_format_header_checks_magic_version_and_reserved() {
        let h = segment_header();
        assert_eq!(check_segment_header(&h), Ok(WAL_FORMAT_VERSION));
        assert_eq!(check_segment_header(&h[..15]), Err(BadHeader::NotASegment));
        let patched = |at: usize, value: u32| {
            let mut h = h;
            h[at..at + 4].copy_from_slice(&value.to_le_bytes());
            check_segment_header(&h)
        };
        assert_eq!(patched(0, 0x4B4C_4157), Err(BadHeader::NotASegment));
        assert_eq!(check_segment_header(&segment_header_for(1)), Ok(1));
        for found in [0, 4, u32::MAX] {
            assert_eq!(patched(8, found), Err(BadHeader::UnsupportedVersion { found }));
        }
        assert_eq!(patched(12, 1), Err(BadHeader::Reserved { found: 1 }));
    }
}
