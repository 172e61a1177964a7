#![warn(missing_docs)]
//! The std-thread runtime for `raft-core`, in two layers.
//!
//! **The generic driver** runs any [`StateMachine`] on real threads, disks and sockets:
//! [`node::RaftNode`] (the node loop), [`proposals`] and [`reads`] (which client waits for which entry or
//! read, shared with the simulator), [`timing`] and [`limits`] (the settings that feed the core), [`wal`] (a segmented,
//! CRC-checked, group-committed write-ahead log) and [`transport`] (TCP between peers). It never
//! imports the application: build with `default-features = false` to get just this.
//!
//! **The raftkv application** (`raftkv`, behind the default `raftkv` feature) is a replicated
//! key-value store that speaks the Redis protocol: the store, its commands, the RESP codec, the server
//! with follower forwarding, the cluster file, and the `raftkv` binary.

// The golden-file helper shared by the WAL and transport format tests.
pub mod failpoint;
#[cfg(test)]
pub(crate) mod golden;
pub mod limits;
pub mod members;
pub mod metrics;
pub mod node;
pub mod oneshot;
pub mod proposals;
pub mod reads;
pub mod snapshot_file;
pub mod state_machine;
pub mod timing;
pub mod transport;
pub mod wal;

#[cfg(feature = "raftkv")]
pub mod raftkv;

pub use limits::Limits;
pub use node::{NodeOptions, RaftHandle, RaftNode};
pub use proposals::{ProposalError, ProposalTracker};
pub use reads::{ReadFailure, ReadTracker};
pub use state_machine::{RestoreError, SnapshotImage, StateMachine};
pub use timing::Timing;
