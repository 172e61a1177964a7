#![warn(missing_docs)]
//! The bodies of the fuzz targets, one function per untrusted boundary. Each takes the fuzzer's
//! bytes and panics exactly when a property of that boundary breaks (a panic inside the code under
//! test counts too: none of these inputs may panic a node).
//!
//! `fuzz/fuzz_targets/*.rs` are one-line cargo-fuzz wrappers around these functions (nightly,
//! libFuzzer); on stable, `cargo test` replays every committed seed (`fuzz/seeds/TARGET/`) and
//! every past finding (`fuzz/regressions/TARGET/`) through the same functions, so CI exercises
//! each target and every crash found stays fixed.

pub mod core_events;
pub mod frame_decode;
pub mod kv_apply;
pub mod node_messages;
pub mod resp_parse;
pub mod wal_recover;

/// A target's body: panics when a property breaks; otherwise returns how deep the input reached
/// (committed entries, frames decoded, requests parsed...), so the replay test can tell seeds that
/// exercise a target from seeds that stop at its first byte.
pub type Target = fn(&[u8]) -> u64;

/// Every target by name (as cargo-fuzz and the seed directories name them) and the depth its
/// committed seeds must reach between them.
pub const TARGETS: &[(&str, Target, u64)] = &[
    ("core_events", core_events::run, 30),
    ("node_messages", node_messages::run, 8),
    ("frame_decode", frame_decode::run, 8),
    ("resp_parse", resp_parse::run, 3),
    ("wal_recover", wal_recover::run, 12),
    ("kv_apply", kv_apply::run, 200),
];

/// A scratch directory, in memory where the machine has one (`/dev/shm`), so that a target that
/// writes files runs at fuzzing speed rather than at the disk's.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("a temporary directory")
}

#[cfg(test)]
mod seeds;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// The committed inputs of a target: its seeds and its regressions.
    fn inputs(target: &str) -> Vec<PathBuf> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for kind in ["seeds", "regressions"] {
            let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else { continue };
            files.extend(dir.map(|e| e.expect("dir entry").path()).filter(|p| p.is_file()));
        }
        files.sort();
        files
    }

    #[test]
    fn every_committed_input_of_every_target_passes() {
        for &(target, run, depth) in super::TARGETS {
            let files = inputs(target);
            assert!(files.len() >= 5, "target {target} has only {} committed seeds", files.len());
            let mut deepest = 0;
            for path in files {
                let data = std::fs::read(&path).expect("read seed");
                match std::panic::catch_unwind(|| run(&data)) {
                    Ok(reached) => deepest = deepest.max(reached),
                    Err(_) => panic!("target {target} fails on {}", path.display()),
                }
            }
            eprintln!("{target}: deepest seed reaches {deepest}");
            assert!(deepest >= depth, "the seeds of {target} reach only {deepest} (want {depth})");
        }
    }

    #[test]
    fn every_target_has_a_cargo_fuzz_wrapper() {
        let manifest =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml")).expect("fuzz/Cargo.toml");
        for &(target, ..) in super::TARGETS {
            assert!(manifest.contains(&format!("name = \"{target}\"")), "fuzz/Cargo.toml lacks target {target}");
        }
    }
}
