//! Cluster configuration: the `cluster.toml` every node of a `raftkv` cluster reads.
//!
//! All nodes must be started with the same file: it is the membership (the voter list handed to
//! `raft-core`) plus the two addresses of each member, one for Raft traffic between peers and one for
//! Redis clients. See `examples/cluster.toml` for a documented example.
//!
//! ```toml
//! cluster_id = 1
//!
//! [[nodes]]
//! id = 1
//! peer_addr = "127.0.0.1:7379"
//! client_addr = "127.0.0.1:6379"
//! ```
//!
//! An optional `[timing]` table overrides [`Timing`]'s defaults and an optional `[limits]` table
//! [`Limits`]' (e.g. `max_entry_bytes`, the largest command a client may send); every node should use
//! the same values. An optional `[snapshot]` table sets when a node snapshots and compacts its log
//! (`every_entries`, `every_bytes`, `wal_segment_bytes`: see [`SnapshotConfig`]); nodes may differ.
//! An optional `[reads]` table chooses how read-only commands are served (see [`ReadsConfig`]); every
//! node must use the same mode, since a lease relies on the followers' side of the bargain too.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use raft_core::NodeId;
use serde::{Deserialize, Serialize};

use crate::limits::Limits;
use crate::node::SnapshotPolicy;
use crate::timing::Timing;

/// The parsed and validated contents of `cluster.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Identifies the cluster in the peer handshake, so that a node of another cluster that is
    /// accidentally pointed at our ports is refused instead of corrupting our logs.
    pub cluster_id: u64,
    /// Clock settings; all nodes should agree on them.
    #[serde(default)]
    pub timing: Timing,
    /// Size limits; all nodes should agree on them.
    #[serde(default)]
    pub limits: Limits,
    /// When to snapshot, and how the WAL is cut into segments.
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    /// How read-only commands are served; all nodes must agree.
    #[serde(default)]
    pub reads: ReadsConfig,
    /// Every voting member, the node reading the file included.
    pub nodes: Vec<NodeAddrs>,
}

/// The `[snapshot]` table: when a node takes a snapshot and compacts its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Snapshot after this many applied commands (0: not by count). Default 100,000.
    pub every_entries: u64,
    /// ... or after this many bytes of applied commands (0: not by size). Default 16 MiB.
    pub every_bytes: u64,
    /// Entries kept in memory before the snapshot point for followers a little behind. Default 1024.
    pub trailing_entries: u64,
    /// WAL segment size. Segments wholly before the newest snapshot are deleted, so the disk holds
    /// about the snapshot plus one or two segments. Default 16 MiB.
    pub wal_segment_bytes: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        let policy = SnapshotPolicy::default();
        SnapshotConfig {
            every_entries: policy.every_entries,
            every_bytes: policy.every_bytes,
            trailing_entries: policy.trailing_entries,
            wal_segment_bytes: 16 * 1024 * 1024,
        }
    }
}

impl SnapshotConfig {
    /// The driver's policy.
    pub fn policy(&self) -> SnapshotPolicy {
        SnapshotPolicy {
            every_entries: self.every_entries,
            every_bytes: self.every_bytes,
            trailing_entries: self.trailing_entries,
        }
    }
}

/// How read-only commands (`GET`, `MGET`, `EXISTS`, `STRLEN`, `DBSIZE`) are served. Every mode is
/// linearizable under its assumptions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// ReadIndex (the default): the leader confirms it still leads with one round of messages per
    /// batch of reads, then the node that took the command (leader or follower) answers from its own
    /// store once it has applied the leader's commit index. Nothing is written to the log.
    #[default]
    Index,
    /// Leader leases: the leader answers at once while a quorum's recent answer guarantees no other
    /// leader can exist yet (followers ask the leader for the index as with `index`). Safe only while
    /// clocks drift less than `max_clock_drift_ticks` per election timeout; a paused VM or process can
    /// break it.
    Lease,
    /// Every read goes through the log like a write (slowest; no timing assumption at all).
    Log,
}

impl fmt::Display for ReadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadMode::Index => "index",
            ReadMode::Lease => "lease",
            ReadMode::Log => "log",
        })
    }
}

/// The `[reads]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadsConfig {
    /// `index` (default), `lease` or `log`.
    pub mode: ReadMode,
    /// With `lease`: how many ticks one node's clock may gain on another's over an election timeout.
    /// The lease is `election_ticks - 1 - max_clock_drift_ticks` ticks. Default 1 (10% of the default
    /// election timeout: far beyond what NTP-disciplined clocks drift, but not a paused process).
    pub max_clock_drift_ticks: u32,
}

impl Default for ReadsConfig {
    fn default() -> Self {
        ReadsConfig { mode: ReadMode::Index, max_clock_drift_ticks: 1 }
    }
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddrs {
    /// The node's Raft id (non-zero, unique).
    pub id: NodeId,
    /// Where the node accepts Raft connections from its peers.
    pub peer_addr: SocketAddr,
    /// Where the node serves Redis (RESP) clients; followers also forward writes to the leader's
    /// client address.
    pub client_addr: SocketAddr,
}

/// Why a cluster configuration was refused.
#[derive(Debug)]
pub enum ConfigFileError {
    /// The file could not be read.
    Read(std::io::Error),
    /// The file is not valid TOML or does not have the expected fields.
    Parse(toml::de::Error),
    /// The values are inconsistent (duplicate ids or addresses, zero id, ...).
    Invalid(String),
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigFileError::Read(e) => write!(f, "cannot read cluster configuration: {e}"),
            ConfigFileError::Parse(e) => write!(f, "invalid cluster configuration: {e}"),
            ConfigFileError::Invalid(why) => write!(f, "invalid cluster configuration: {why}"),
        }
    }
}

impl std::error::Error for ConfigFileError {}

impl ClusterConfig {
    /// Reads and validates `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<ClusterConfig, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(ConfigFileError::Read)?;
        ClusterConfig::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<ClusterConfig, ConfigFileError> {
        let config: ClusterConfig = toml::from_str(text).map_err(ConfigFileError::Parse)?;
        config.validate()?;
        Ok(config)
    }

    /// Serializes to TOML (what `raftkv cluster` writes into its data directory).
    pub fn to_toml(&self) -> String {
        // Serializing plain structs of integers and addresses cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks what TOML cannot express: unique non-zero ids, unique addresses, sane timing.
    pub fn validate(&self) -> Result<(), ConfigFileError> {
        let invalid = |why: String| Err(ConfigFileError::Invalid(why));
        if self.nodes.is_empty() {
            return invalid("no nodes listed".into());
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for n in &self.nodes {
            if n.id == 0 {
                return invalid("node id 0 is reserved".into());
            }
            if !ids.insert(n.id) {
                return invalid(format!("node id {} is listed twice", n.id));
            }
            for addr in [n.peer_addr, n.client_addr] {
                if !addrs.insert(addr) {
                    return invalid(format!("address {addr} is used twice"));
                }
            }
        }
        self.timing.validate().map_err(|e| ConfigFileError::Invalid(e.to_string()))?;
        self.limits.validate().map_err(|e| ConfigFileError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// The entry for node `id`.
    pub fn node(&self, id: NodeId) -> Option<&NodeAddrs> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Every member's id.
    pub fn voters(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// `(id, peer address)` of every member except `me`, as the transport wants them.
    pub fn peers_of(&self, me: NodeId) -> Vec<(NodeId, SocketAddr)> {
        self.nodes.iter().filter(|n| n.id != me).map(|n| (n.id, n.peer_addr)).collect()
    }

    /// A local cluster of `n` nodes on 127.0.0.1: client ports `port`, `port + 1`, ..., peer ports
    /// `port + 1000 + i` (what `raftkv cluster` generates).
    pub fn local(n: u64, port: u16) -> Result<ClusterConfig, ConfigFileError> {
        let mut nodes = Vec::new();
        for i in 0..n {
            let client = u16::try_from(u64::from(port) + i);
            let peer = u16::try_from(u64::from(port) + 1000 + i);
            let (Ok(client), Ok(peer)) = (client, peer) else {
                return Err(ConfigFileError::Invalid(format!("ports for {n} nodes from {port} exceed 65535")));
            };
            nodes.push(NodeAddrs {
                id: i + 1,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], peer)),
                client_addr: SocketAddr::from(([127, 0, 0, 1], client)),
            });
        }
        let config = ClusterConfig {
            cluster_id: 1,
            timing: Timing::default(),
            limits: Limits::default(),
            snapshot: SnapshotConfig::default(),
            reads: ReadsConfig::default(),
            nodes,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../examples/cluster.toml");
        let config = ClusterConfig::parse(text).expect("example parses");
        assert_eq!(config.nodes.len(), 3);
        assert_eq!(config.timing, Timing::default());
        assert_eq!(config.reads, ReadsConfig::default());
    }

    #[test]
    fn reads_table_selects_the_mode_and_refuses_unknown_ones() {
        let base = include_str!("../../examples/cluster.toml");
        let lease = base.replace("mode = \"index\"", "mode = \"lease\"").replace("drift_ticks = 1", "drift_ticks = 3");
        let config = ClusterConfig::parse(&lease).expect("parses");
        assert_eq!(config.reads, ReadsConfig { mode: ReadMode::Lease, max_clock_drift_ticks: 3 });
        assert_eq!(config.reads.mode.to_string(), "lease");
        let log = ClusterConfig::parse(&base.replace("mode = \"index\"", "mode = \"log\"")).expect("parses");
        assert_eq!(log.reads.mode, ReadMode::Log);
        let bad = base.replace("mode = \"index\"", "mode = \"fast\"");
        assert!(ClusterConfig::parse(&bad).is_err(), "an unknown read mode is refused");
        let without: String = base
            .lines()
            .filter(|l| !l.starts_with("mode") && !l.starts_with("max_clock"))
            .collect::<Vec<_>>()
            .join("\n");
        let without = without.replace("[reads]", "");
        assert_eq!(ClusterConfig::parse(&without).expect("parses").reads, ReadsConfig::default());
        let round_trip = ClusterConfig::parse(&config.to_toml()).expect("round trip");
        assert_eq!(round_trip.reads, config.reads);
    }

    #[test]
    fn local_round_trips_through_toml() {
        let config = ClusterConfig::local(3, 6379).expect("valid");
        let again = ClusterConfig::parse(&config.to_toml()).expect("parses");
        assert_eq!(config, again);
        assert_eq!(again.node(2).map(|n| n.client_addr.port()), Some(6380));
        assert_eq!(again.peers_of(1).len(), 2);
    }

    #[test]
    fn rejects_duplicates_and_bad_timing() {
        let dup = "cluster_id = 1\n[[nodes]]\nid = 1\npeer_addr = \"127.0.0.1:1\"\nclient_addr = \"127.0.0.1:2\"\n\
                   [[nodes]]\nid = 1\npeer_addr = \"127.0.0.1:3\"\nclient_addr = \"127.0.0.1:4\"\n";
        assert!(matches!(ClusterConfig::parse(dup), Err(ConfigFileError::Invalid(_))));
        let timing = "cluster_id = 1\n[timing]\nheartbeat_ticks = 10\nelection_ticks = 10\n[[nodes]]\nid = 1\n\
                      peer_addr = \"127.0.0.1:1\"\nclient_addr = \"127.0.0.1:2\"\n";
        assert!(matches!(ClusterConfig::parse(timing), Err(ConfigFileError::Invalid(_))));
        assert!(matches!(ClusterConfig::parse("cluster_id = "), Err(ConfigFileError::Parse(_))));
        let limits = "cluster_id = 1\n[limits]\nmax_entry_bytes = 0\n[[nodes]]\nid = 1\n\
                      peer_addr = \"127.0.0.1:1\"\nclient_addr = \"127.0.0.1:2\"\n";
        let Err(ConfigFileError::Invalid(why)) = ClusterConfig::parse(limits) else { panic!("zero limit accepted") };
        assert!(why.contains("max_entry_bytes"), "{why}");
        let custom = limits.replace("max_entry_bytes = 0", "max_entry_bytes = 4096");
        assert_eq!(ClusterConfig::parse(&custom).expect("valid").limits.max_entry_bytes, 4096);
        assert!(ClusterConfig::local(3, 65535).is_err());
    }
}
