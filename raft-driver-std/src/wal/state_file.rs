//! The WAL's state file, `raft-state`: a second, independently written copy
//! of the hard state and a durable record of how far the log was synced,
//! so that recovery can tell a torn unsynced tail (safe to cut) from synced
//! records the disk lost (a segment cut at a record boundary, cut to its
//! header, or deleted), and never forgets a term or vote the segments lost.
//!
//! ```text
//! file    := magic "RAFTSTAT" (8) | version u32 LE (4) | len u32 LE (4)
//!            | crc u32 LE (4) = CRC32C(payload) | payload (len)
//! payload := postcard StateFileV1 (fields in declaration order, varints)
//! ```
//!
//! The file is replaced atomically (written to `raft-state.tmp`, fsynced,
//! renamed over `raft-state`, directory fsynced), so a crash leaves the old
//! or the new one whole; one that fails its check is damage and refused.
//! It is written when the hard state changes (before the write that
//! changed it is reported durable, so a vote is in both places before any
//! peer hears of it), before a truncation lowers the synced mark (so a cut
//! that a crash interrupts is never mistaken for a loss), and otherwise at
//! most once per [`WalOptions::state_file_interval`](super::WalOptions)
//! after a sync: the synced mark may lag the log by that much, and a loss
//! of only those newest synced entries goes unnoticed (a documented
//! window; zero makes every sync write it, at the price of two more
//! fsyncs per sync).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use raft_core::{HardState, Index, NodeId, Repair, Term};
use serde::{Deserialize, Serialize};

use super::WalError;

/// The file's name inside the WAL directory.
pub(super) const STATE_FILE: &str = "raft-state";
const STATE_FILE_TMP: &str = "raft-state.tmp";
const MAGIC: [u8; 8] = *b"RAFTSTAT";
/// The state file's format version.
pub const STATE_FILE_VERSION: u32 = 1;
const HEADER_LEN: usize = 20;
/// A payload is a handful of varints; anything longer is damage.
const MAX_PAYLOAD: usize = 256;

/// Payload of the state file, version 1. Field order is the byte order:
/// never reorder, never insert; a different layout is a new version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StateFileV1 {
    /// The hard state's term.
    pub term: Term,
    /// The vote in `term`.
    pub vote: Option<NodeId>,
    /// Index of the last entry known synced when the file was written.
    pub synced_index: Index,
    /// Term of that entry (0 with index 0).
    pub synced_term: Term,
    /// A loss of synced entries found earlier and not yet repaired: the
    /// last entry the log held before it (index, term).
    pub repair: Option<(Index, Term)>,
}

impl StateFileV1 {
    pub(super) fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote }
    }

    pub(super) fn repair(&self) -> Option<Repair> {
        self.repair.map(|(lost_through, last_term)| Repair { lost_through, last_term })
    }
}

/// The encoded file.
pub(super) fn encode(state: &StateFileV1) -> Vec<u8> {
    let payload = postcard::to_allocvec(state).expect("a state file always encodes");
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&STATE_FILE_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes a whole file, naming what is wrong.
pub(super) fn decode(path: &Path, data: &[u8]) -> Result<StateFileV1, WalError> {
    let corrupt = |offset: u64, reason: String| WalError::Corrupt { file: path.to_path_buf(), offset, reason };
    if data.len() < HEADER_LEN || data[..8] != MAGIC {
        return Err(corrupt(0, "not a WAL state file (bad or incomplete header)".into()));
    }
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    if version != STATE_FILE_VERSION {
        return Err(WalError::UnsupportedVersion { file: path.to_path_buf(), found: version, supported: &[1] });
    }
    let len = u32::from_le_bytes(data[12..16].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(data[16..20].try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD || data.len() != HEADER_LEN + len {
        return Err(corrupt(12, format!("length {len} does not match the file's {} bytes", data.len())));
    }
    let payload = &data[HEADER_LEN..];
    if crc32c::crc32c(payload) != crc {
        return Err(corrupt(16, "checksum mismatch".into()));
    }
    let (state, rest) =
        postcard::take_from_bytes::<StateFileV1>(payload).map_err(|e| corrupt(20, format!("payload: {e}")))?;
    if !rest.is_empty() || state.vote == Some(0) {
        return Err(corrupt(20, "payload does not decode exactly".into()));
    }
    Ok(state)
}

/// Reads the state file of `dir`; `None` if there is none (a new log, or
/// one written by a build without state files).
pub(super) fn read(dir: &Path) -> Result<Option<StateFileV1>, WalError> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(data) => decode(&path, &data).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(WalError::io("read", &path, e)),
    }
}

/// Replaces the state file of `dir` atomically and durably. Returns the
/// fsyncs issued.
pub(super) fn write(dir: &Path, state: &StateFileV1) -> Result<u64, WalError> {
    let tmp: PathBuf = dir.join(STATE_FILE_TMP);
    let path = dir.join(STATE_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| WalError::io("create", &tmp, e))?;
    f.write_all(&encode(state)).map_err(|e| WalError::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| WalError::io("fsync", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| WalError::io("rename state file to", &path, e))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| WalError::io("fsync directory", dir, e))?;
    Ok(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version 1, byte for byte: term 3, vote 2, synced through 7 of term 3,
    /// an unrepaired loss through 9 of term 2.
    #[test]
    fn golden_bytes() {
        let state = StateFileV1 { term: 3, vote: Some(2), synced_index: 7, synced_term: 3, repair: Some((9, 2)) };
        let bytes = encode(&state);
        let payload = [3, 1, 2, 7, 3, 1, 9, 2];
        let mut want = b"RAFTSTAT".to_vec();
        want.extend_from_slice(&[1, 0, 0, 0, 8, 0, 0, 0]);
        want.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        want.extend_from_slice(&payload);
        assert_eq!(bytes, want);
        assert_eq!(decode(Path::new("x"), &bytes).expect("decodes"), state);
    }

    #[test]
    fn damage_is_refused() {
        let bytes = encode(&StateFileV1 { term: 3, vote: Some(2), ..StateFileV1::default() });
        for cut in 0..bytes.len() {
            assert!(decode(Path::new("x"), &bytes[..cut]).is_err(), "accepted a file cut to {cut} bytes");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(Path::new("x"), &bad).is_err(), "accepted a flipped byte at {i}");
        }
    }
}
