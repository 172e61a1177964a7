//! raftkv: a replicated key-value store that speaks the Redis protocol, built on the generic driver.
//!
//! | module | what lives there |
//! |---|---|
//! | [`store`] | the replicated state machine ([`store::KvStore`]): Redis strings with exactly-once sessions; pure, shared with the simulator |
//! | [`command`] | Redis command parsing: arguments to a [`store::KvOp`] or a connection command |
//! | [`resp`] | the RESP2/RESP3 wire codec |
//! | [`script`] | `EVAL`: Lua scripts every replica runs as it applies them |
//! | [`server`] | the RESP server: connections, follower forwarding, retries, `INFO` |
//! | [`config`] | `cluster.toml` |
//!
//! Nothing outside this module imports it: the generic driver knows nothing of Redis.

pub mod command;
pub mod command_table;
pub mod config;
mod int;
pub mod resp;
pub mod script;
pub mod server;
pub mod store;
#[cfg(test)]
mod tests;

pub use int::parse_i64;

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it): the leader's timestamp for
/// commands, from which the store computes expiry.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
