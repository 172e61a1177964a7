//! Deterministic simulator for `raft-core`.

pub mod disk;
pub mod fmt;
pub mod history;
pub mod linearizability;
pub mod scenario;
