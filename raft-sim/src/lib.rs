#![warn(missing_docs)]
//! Deterministic simulator for `raft-core`: real nodes, simulated network,
//! disks, clocks and clients, with safety invariants checked after every
//! event and linearizability checked after every run.

pub mod cluster;
pub mod disk;
pub mod explore;
pub mod fmt;
pub mod hash;
pub mod history;
pub mod idmap;
pub mod invariants;
pub mod linearizability;
pub mod profile;
pub mod scenario;
pub mod sim;
pub mod sweep;
pub mod timeline;
pub mod workload;
