#![warn(missing_docs)]
//! The std-thread runtime for `raft-core`: TCP transport between peers, a
//! crash-safe write-ahead log, a key-value state machine with exactly-once
//! client sessions, and a RESP (Redis protocol) server.
//!
//! [`node::RaftNode`] is the generic driver (any [`kv::StateMachine`]);
//! [`server::Server`] puts the Redis protocol in front of a [`kv::KvStore`]
//! replicated by it, which is what the `raftkv` binary runs.

pub mod config;
pub mod kv;
pub mod node;
pub mod resp;
pub mod server;
pub mod transport;
pub mod wal;
