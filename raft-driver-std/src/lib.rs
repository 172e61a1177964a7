//! The std-thread runtime for `raft-core`: TCP transport between peers, a
//! crash-safe write-ahead log, a key-value state machine with exactly-once
//! client sessions, and a RESP (Redis protocol) server.

pub mod kv;
pub mod resp;
pub mod transport;
pub mod wal;
