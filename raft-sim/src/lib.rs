//! Deterministic simulator for `raft-core`.

pub mod linearizability;
