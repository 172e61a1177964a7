//! Golden byte files: the committed bytes of each format version, which the
//! WAL and transport tests decode and re-encode.
//!
//! Test-only, shared by the `wal` and `transport` golden tests (declared
//! as `crate::golden` in lib.rs).
//!
//! The files live in `raft-driver-std/tests/golden/`. A committed file is a
//! promise about bytes that already exist on disks and on the network, so
//! nothing here ever rewrites one: with `UPDATE_GOLDEN=1` a test *creates*
//! the files that are missing (for a new case or a new format version) and
//! still fails on any file whose bytes differ. Changing a committed file
//! means deleting it first, which shows up in review as what it is: a
//! format change, which needs a new version (see `docs/formats.md`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The directory holding the golden files.
pub(crate) fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden")
}

/// Checks that the committed file `name` holds exactly `encoded`, and
/// returns the committed bytes (for the decoding half of the test).
///
/// A missing file fails the test unless `UPDATE_GOLDEN=1`, which creates
/// it. A differing file always fails.
pub(crate) fn check(name: &str, encoded: &[u8]) -> Vec<u8> {
    let path = dir().join(name);
    let committed = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && update_requested() => {
            std::fs::create_dir_all(dir()).expect("create golden directory");
            std::fs::write(&path, encoded).expect("write golden file");
            eprintln!("created golden file {}", path.display());
            encoded.to_vec()
        }
        Err(e) => panic!("cannot read golden file {} ({e}); run with UPDATE_GOLDEN=1 to create it", path.display()),
    };
    assert_eq!(
        hex(encoded),
        hex(&committed),
        "encoding no longer matches committed {name}: that is a format change, which needs a new format version \
         (existing files are never rewritten; see docs/formats.md)"
    );
    committed
}

/// Checks that the golden files whose names start with `prefix` are
/// exactly `names`: a file no test reads would be a promise nobody checks.
/// (With `UPDATE_GOLDEN=1`, missing files are left to [`check`], which
/// may be creating them concurrently.)
pub(crate) fn assert_complete(prefix: &str, names: &[&str]) {
    if update_requested() {
        std::fs::create_dir_all(dir()).expect("create golden directory");
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir())
        .expect("list golden directory")
        .map(|entry| entry.expect("golden directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix))
        .collect();
    let mut expected: BTreeSet<String> = names.iter().map(|name| (*name).to_owned()).collect();
    if update_requested() {
        expected.retain(|name| on_disk.contains(name));
    }
    assert_eq!(on_disk, expected, "golden files with prefix {prefix:?} and the tested cases differ");
}

fn update_requested() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

/// Bytes as spaced hex, so a failed comparison shows where they differ.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        let sep = if i == 0 {
            ""
        } else if i % 16 == 0 {
            "\n"
        } else {
            " "
        };
        let _ = write!(out, "{sep}{b:02x}");
    }
    out
}
