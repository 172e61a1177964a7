//! Snapshot files: a state machine image and the [`SnapshotMeta`] it
//! stands for, stored so that a crash at any point leaves either the old
//! file or the complete new one, and damage is refused, never loaded.
//!
//! Format version 2, all integers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `RFTS` |
//! | 4 | format version (`2`) |
//! | 4 | length `M` of the metadata |
//! | `M` | metadata: postcard of [`SnapshotMetaV2`] (`last_included_index`, `last_included_term`, `membership` as [`Membership::encode`] bytes) |
//! | 8 | length `D` of the image |
//! | `D` | the state machine image (the application's bytes) |
//! | 4 | CRC-32C of every byte before it |
//!
//! Writing goes to `NAME.tmp`, is fsynced, renamed to `NAME` and the
//! directory fsynced: the rename is the commit point. A file whose magic,
//! lengths or checksum do not hold is [`SnapshotFileError::Corrupt`] (naming
//! the file); one of another version is [`SnapshotFileError::UnsupportedVersion`].
//! The driver (`node/snapshots.rs`) writes one after each snapshot it takes
//! or fetches, restores from the one the WAL's newest snapshot record names
//! on restart, and deletes older ones once a newer record is durable.
//!
//! Version 1 differs only in its metadata, [`SnapshotMetaV1`], which held a
//! voter list instead of a whole configuration (from before membership
//! changes); it is still read, as a configuration of those voters.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_core::{Index, Membership, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

use crate::failpoint::fail_point;

/// The magic bytes every snapshot file starts with.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"RFTS";
/// The format version this build writes.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// The format versions this build reads.
pub const SUPPORTED_SNAPSHOT_VERSIONS: &[u32] = &[1, 2];

/// The metadata as stored, version 1 (owned here, converted to and from the
/// core type, so that a change in raft-core cannot silently change the bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMetaV1 {
    /// Index of the last entry the snapshot includes.
    pub last_included_index: Index,
    /// Term of that entry.
    pub last_included_term: Term,
    /// The voters at that index.
    pub voters: Vec<NodeId>,
}

/// The metadata as stored, version 2: the configuration is
/// [`Membership::encode`] bytes (voters, joint outgoing voters, learners,
/// context), checked when read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMetaV2 {
    /// Index of the last entry the snapshot includes.
    pub last_included_index: Index,
    /// Term of that entry.
    pub last_included_term: Term,
    /// The configuration in force at that index.
    pub membership: Bytes,
}

impl From<&SnapshotMeta> for SnapshotMetaV2 {
    fn from(m: &SnapshotMeta) -> Self {
        SnapshotMetaV2 {
            last_included_index: m.last_included_index,
            last_included_term: m.last_included_term,
            membership: m.membership.encode(),
        }
    }
}

/// Decodes the metadata of a file of format `version`.
fn decode_meta(version: u32, bytes: &[u8]) -> Result<SnapshotMeta, String> {
    if version == 1 {
        let m: SnapshotMetaV1 = postcard::from_bytes(bytes).map_err(|e| format!("metadata: {e}"))?;
        let membership = Membership::new(m.voters);
        membership.validate().map_err(|e| format!("metadata: {e}"))?;
        return Ok(SnapshotMeta {
            last_included_index: m.last_included_index,
            last_included_term: m.last_included_term,
            membership,
        });
    }
    let m: SnapshotMetaV2 = postcard::from_bytes(bytes).map_err(|e| format!("metadata: {e}"))?;
    let membership = Membership::decode(&m.membership).map_err(|e| format!("metadata: {e}"))?;
    Ok(SnapshotMeta {
        last_included_index: m.last_included_index,
        last_included_term: m.last_included_term,
        membership,
    })
}

/// Why a snapshot file could not be written or read.
#[derive(Debug)]
pub enum SnapshotFileError {
    /// The operating system refused an operation.
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is damaged (or not a snapshot file): it is refused whole.
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What does not hold.
        reason: String,
    },
    /// The file is of a format version this build cannot read.
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version found.
        found: u32,
        /// The versions this build reads.
        supported: &'static [u32],
    },
}

impl fmt::Display for SnapshotFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotFileError::Io { op, path, source } => {
                write!(f, "snapshot {op} failed for {}: {source}", path.display())
            }
            SnapshotFileError::Corrupt { file, reason } => {
                write!(f, "snapshot file {} is corrupt ({reason}); it was not loaded", file.display())
            }
            SnapshotFileError::UnsupportedVersion { file, found, supported } => write!(
                f,
                "snapshot file {} has format version {found}; this build reads version(s) {supported:?}",
                file.display()
            ),
        }
    }
}

impl std::error::Error for SnapshotFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotFileError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotFileError {
    let path = path.to_path_buf();
    move |source| SnapshotFileError::Io { op, path, source }
}

/// The file name of the snapshot ending at `index` (sorts by index).
pub fn snapshot_file_name(index: Index) -> String {
    format!("snapshot-{index:020}.snap")
}

/// The index a complete snapshot file's name stands for (the inverse of
/// [`snapshot_file_name`]); `None` for any other name, temp and partial
/// files included.
pub fn index_of_file_name(name: &str) -> Option<Index> {
    name.strip_prefix("snapshot-")?.strip_suffix(".snap")?.parse().ok()
}

/// Whether `name` is a temp file of [`write()`] or a partial fetch: only a
/// crash or an interrupted transfer leaves one behind.
pub fn is_leftover_file_name(name: &str) -> bool {
    name.starts_with("snapshot-") && (name.ends_with(".snap.tmp") || name.ends_with(".snap.part"))
}

/// The bytes before the image: magic, version, metadata and image length.
fn head(meta: &SnapshotMeta, image_len: usize) -> Vec<u8> {
    let meta = postcard::to_allocvec(&SnapshotMetaV2::from(meta)).expect("serializing into a Vec cannot fail");
    let mut out = Vec::with_capacity(4 + 4 + 4 + meta.len() + 8);
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&u32::try_from(meta.len()).expect("metadata under 4 GiB").to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&(image_len as u64).to_le_bytes());
    out
}

/// The bytes of a snapshot file holding `meta` and `image`.
pub fn encode(meta: &SnapshotMeta, image: &[u8]) -> Vec<u8> {
    let mut out = head(meta, image.len());
    out.extend_from_slice(image);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads `n` bytes at `*at`, advancing it; `None` past the end.
fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(n)?;
    let out = bytes.get(*at..end)?;
    *at = end;
    Some(out)
}

/// Decodes the bytes of the snapshot file `file` (named in errors).
pub fn decode(file: &Path, bytes: &[u8]) -> Result<(SnapshotMeta, Bytes), SnapshotFileError> {
    let (meta, (start, len)) = check(file, bytes)?;
    Ok((meta, Bytes::copy_from_slice(&bytes[start..start + len])))
}

/// Checks the file's bytes; returns its metadata and where the image lies.
fn check(file: &Path, bytes: &[u8]) -> Result<(SnapshotMeta, (usize, usize)), SnapshotFileError> {
    let corrupt = |reason: String| SnapshotFileError::Corrupt { file: file.to_path_buf(), reason };
    let mut at = 0;
    let head = take(bytes, &mut at, 8).ok_or_else(|| corrupt(format!("{} bytes: too short", bytes.len())))?;
    if head[..4] != SNAPSHOT_MAGIC {
        return Err(corrupt(format!("magic {:02x?} is not {:02x?}", &head[..4], SNAPSHOT_MAGIC)));
    }
    let version = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    if !SUPPORTED_SNAPSHOT_VERSIONS.contains(&version) {
        return Err(SnapshotFileError::UnsupportedVersion {
            file: file.to_path_buf(),
            found: version,
            supported: SUPPORTED_SNAPSHOT_VERSIONS,
        });
    }
    // The checksum first: nothing of a damaged file is interpreted.
    let body_len = bytes.len().checked_sub(4).filter(|&n| n >= 8).ok_or_else(|| corrupt("no checksum".into()))?;
    let stored = u32::from_le_bytes(bytes[body_len..].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(&bytes[..body_len]);
    if stored != computed {
        return Err(corrupt(format!("checksum {stored:08x} does not match the contents ({computed:08x})")));
    }
    let body = &bytes[..body_len];
    let meta_len = take(body, &mut at, 4).ok_or_else(|| corrupt("truncated metadata length".into()))?;
    let meta_len = u32::from_le_bytes(meta_len.try_into().expect("4 bytes")) as usize;
    let meta =
        take(body, &mut at, meta_len).ok_or_else(|| corrupt(format!("metadata of {meta_len} bytes truncated")))?;
    let meta = decode_meta(version, meta).map_err(corrupt)?;
    let image_len = take(body, &mut at, 8).ok_or_else(|| corrupt("truncated image length".into()))?;
    let image_len = u64::from_le_bytes(image_len.try_into().expect("8 bytes"));
    let image_len = usize::try_from(image_len).map_err(|_| corrupt(format!("image of {image_len} bytes")))?;
    let image =
        take(body, &mut at, image_len).ok_or_else(|| corrupt(format!("image of {image_len} bytes truncated")))?;
    if at != body.len() {
        return Err(corrupt(format!("{} bytes after the image", body.len() - at)));
    }
    let start = image.as_ptr() as usize - bytes.as_ptr() as usize;
    Ok((meta, (start, image_len)))
}

/// Writes the snapshot file for `meta` in `dir` crash-safely (temp file,
/// fsync, rename, directory fsync) and returns its path.
pub fn write(dir: &Path, meta: &SnapshotMeta, image: &[u8]) -> Result<PathBuf, SnapshotFileError> {
    let path = dir.join(snapshot_file_name(meta.last_included_index));
    let tmp = path.with_extension("snap.tmp");
    fail_point("snapshot-write-before-tmp");
    let mut file = File::create(&tmp).map_err(io_error("create", &tmp))?;
    // Written in pieces, never copied into one buffer: the image is the big part.
    let head = head(meta, image.len());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head), image);
    let mut write = |bytes: &[u8]| file.write_all(bytes).map_err(io_error("write", &tmp));
    write(&head)?;
    write(&image[..image.len() / 2])?;
    fail_point("snapshot-write-mid-tmp");
    write(&image[image.len() / 2..])?;
    write(&crc.to_le_bytes())?;
    file.sync_all().map_err(io_error("fsync", &tmp))?;
    drop(file);
    fail_point("snapshot-write-before-rename");
    fs::rename(&tmp, &path).map_err(io_error("rename", &path))?;
    fail_point("snapshot-write-before-dir-fsync");
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("fsync directory", dir))?;
    Ok(path)
}

/// Reads and checks the snapshot file at `path`. The image shares the
/// file's buffer (no second copy).
pub fn read(path: &Path) -> Result<(SnapshotMeta, Bytes), SnapshotFileError> {
    let bytes = fs::read(path).map_err(io_error("read", path))?;
    let (meta, (start, len)) = check(path, &bytes)?;
    Ok((meta, Bytes::from(bytes).slice(start..start + len)))
}

/// What [`inspect_dir`] found about one snapshot file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotFileInfo {
    /// The file.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Its metadata, if the file passed every check.
    pub last_included_index: Option<Index>,
    /// Its last included term, if the file passed every check.
    pub last_included_term: Option<Term>,
    /// Its image size, if the file passed every check.
    pub image_bytes: Option<u64>,
    /// Why the file fails its checks, if it does.
    pub error: Option<String>,
}

/// The complete snapshot files in `dir`, by index.
pub fn list_dir(dir: &Path) -> io::Result<Vec<(Index, PathBuf)>> {
    let mut files: Vec<(Index, PathBuf)> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| Some((index_of_file_name(e.file_name().to_str()?)?, e.path())))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads and checks every snapshot file in `dir` (by index), without
/// changing anything. For `raftkv inspect`.
pub fn inspect_dir(dir: &Path) -> io::Result<Vec<SnapshotFileInfo>> {
    Ok(list_dir(dir)?
        .into_iter()
        .map(|(_, path)| {
            let bytes = fs::metadata(&path).map_or(0, |m| m.len());
            let file = path.display().to_string();
            match read(&path) {
                Ok((meta, image)) => SnapshotFileInfo {
                    file,
                    bytes,
                    last_included_index: Some(meta.last_included_index),
                    last_included_term: Some(meta.last_included_term),
                    image_bytes: Some(image.len() as u64),
                    error: None,
                },
                Err(e) => SnapshotFileInfo {
                    file,
                    bytes,
                    last_included_index: None,
                    last_included_term: None,
                    image_bytes: None,
                    error: Some(e.to_string()),
                },
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;

    const GOLDEN_V1: &str = "snapshot-v1.bin";
    const GOLDEN: &str = "snapshot-v2.bin";

    #[test]
    fn file_names_round_trip_and_leftovers_are_told_apart() {
        for index in [1, 70_000, u64::MAX] {
            assert_eq!(index_of_file_name(&snapshot_file_name(index)), Some(index));
        }
        let name = snapshot_file_name(5);
        for other in
            [format!("{name}.tmp"), format!("{name}.part"), "wal-0000000000000001.log".into(), "snapshot-x.snap".into()]
        {
            assert_eq!(index_of_file_name(&other), None, "{other}");
        }
        assert!(is_leftover_file_name(&format!("{name}.tmp")) && is_leftover_file_name(&format!("{name}.part")));
        assert!(!is_leftover_file_name(&name) && !is_leftover_file_name("other.part"));
    }

    fn meta() -> SnapshotMeta {
        let membership = Membership {
            voters: vec![1, 2, 0x1122],
            outgoing: vec![1, 2, 3],
            learners: vec![7],
            context: Bytes::from_static(b"addrs"),
        };
        SnapshotMeta { last_included_index: 70_000, last_included_term: 300, membership }
    }

    #[test]
    fn snapshot_golden_file_decodes_and_encodes() {
        let committed = golden::check(GOLDEN, &encode(&meta(), b"image bytes"));
        // Spelled out too: magic, version 2, metadata length, then the
        // metadata's varints (70000 = f0 a2 04, 300 = ac 02), then the
        // configuration's length and its version byte.
        assert_eq!(committed[..8], *b"RFTS\x02\x00\x00\x00");
        assert_eq!(committed[12..19], [0xf0, 0xa2, 0x04, 0xac, 0x02, 18, 1]);
        let (m, image) = decode(Path::new(GOLDEN), &committed).expect("decodes");
        assert_eq!((m, &image[..]), (meta(), &b"image bytes"[..]));
    }

    #[test]
    fn snapshot_v1_golden_file_still_decodes_as_its_voters() {
        // Written before membership changes: a voter list, no learners.
        let committed = std::fs::read(golden::dir().join(GOLDEN_V1)).expect("committed v1 file");
        let (m, image) = decode(Path::new(GOLDEN_V1), &committed).expect("decodes");
        let expected = SnapshotMeta {
            last_included_index: 70_000,
            last_included_term: 300,
            membership: Membership::new(vec![1, 2, 0x1122]),
        };
        assert_eq!((m, &image[..]), (expected, &b"image bytes"[..]));
    }

    #[test]
    fn snapshot_golden_files_are_exactly_the_tested_cases() {
        golden::assert_complete("snapshot-", &[GOLDEN_V1, GOLDEN]);
    }

    #[test]
    fn a_written_snapshot_reads_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &meta(), b"state").unwrap();
        assert_eq!(path.file_name().unwrap(), "snapshot-00000000000000070000.snap");
        assert_eq!(read(&path).unwrap(), (meta(), Bytes::from_static(b"state")));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn every_damaged_byte_and_every_truncation_is_refused_naming_the_file() {
        let good = encode(&meta(), b"abc");
        let file = Path::new("/data/snapshot-x.snap");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            match decode(file, &bad) {
                Err(SnapshotFileError::Corrupt { file: f, .. }) => assert_eq!(f, file),
                // Flipping a version bit is a version this build does not read.
                Err(SnapshotFileError::UnsupportedVersion { found, .. }) => assert!((4..8).contains(&i), "{found}"),
                other => panic!("byte {i} flipped: {other:?}"),
            }
        }
        for len in 0..good.len() {
            let err = decode(file, &good[..len]).unwrap_err();
            assert!(err.to_string().contains("/data/snapshot-x.snap"), "{err}");
        }
    }

    #[test]
    fn an_unknown_version_is_named_as_such() {
        let mut bytes = encode(&meta(), b"abc");
        bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        let err = decode(Path::new("s.snap"), &bytes).unwrap_err();
        assert!(matches!(err, SnapshotFileError::UnsupportedVersion { found: 3, .. }), "{err}");
        assert!(err.to_string().contains("format version 3"), "{err}");
    }
}
