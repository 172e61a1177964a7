//! Failpoints: named places where a test can make the process die as if
//! `kill -9` hit it exactly there (as etcd's gofail does), to check that
//! every step of a multi-step disk protocol is crash-safe.
//!
//! Set `RAFT_FAILPOINTS` to a comma-separated list of names before the
//! process starts; reaching a listed point aborts the process at once (no
//! destructors, no buffered writes flushed: what the disk holds is what a
//! crash leaves). Unset, a failpoint costs one relaxed load of a cached flag.
//! The names are listed in `docs/testing.md`.

use std::sync::OnceLock;

/// The environment variable naming the armed failpoints.
pub const FAILPOINTS_ENV: &str = "RAFT_FAILPOINTS";

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(FAILPOINTS_ENV)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    })
}

/// Dies here if `name` is armed.
pub fn fail_point(name: &str) {
    let armed = armed();
    if !armed.is_empty() && armed.iter().any(|a| a == name) {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}
