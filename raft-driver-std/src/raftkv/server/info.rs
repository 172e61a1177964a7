//! The `INFO` command's text.

use std::sync::atomic::Ordering;

use std::time::Duration;

use bytes::Bytes;

use crate::raftkv::store::KvStore;

use super::Shared;

/// `INFO` text: `# Server`, `# Clients`, `# Replication`, `# Persistence` and `# Stats` sections
/// (all unless specific ones are asked for).
pub(super) fn info_text(shared: &Shared, sections: &[Bytes]) -> String {
    let want = |name: &str| {
        sections.is_empty()
            || sections.iter().any(|s| {
                s.eq_ignore_ascii_case(name.as_bytes())
                    || s.eq_ignore_ascii_case(b"all")
                    || s.eq_ignore_ascii_case(b"default")
                    || s.eq_ignore_ascii_case(b"everything")
            })
    };
    let status = shared.node.status();
    let mut text = String::new();
    let mut section = |name: &str, lines: Vec<(&str, String)>| {
        if !want(name) {
            return;
        }
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        text.push_str(&format!("# {name}\r\n"));
        for (key, value) in lines {
            text.push_str(&format!("{key}:{value}\r\n"));
        }
    };
    section(
        "Server",
        vec![
            ("redis_version", "7.2.0".into()),
            ("raftkv_version", env!("CARGO_PKG_VERSION").into()),
            ("redis_mode", "standalone".into()),
            ("node_id", shared.node_id.to_string()),
            ("cluster_id", shared.cluster.cluster_id.to_string()),
            ("process_id", std::process::id().to_string()),
            ("tcp_port", shared.local_addr.port().to_string()),
            ("uptime_in_seconds", shared.started.elapsed().as_secs().to_string()),
        ],
    );
    section("Clients", vec![("connected_clients", shared.clients.load(Ordering::Relaxed).to_string())]);
    let leader_addr =
        status.leader.and_then(|id| super::admin::client_addr_of(shared, id)).map_or(String::new(), |a| a.to_string());
    let m = &status.membership;
    let ids = |v: &[u64]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    section(
        "Replication",
        vec![
            ("role", status.role.to_string()),
            ("leader_id", status.leader.map_or("none".to_owned(), |id| id.to_string())),
            ("leader_addr", leader_addr),
            ("term", status.term.to_string()),
            ("commit_index", status.commit_index.to_string()),
            ("applied_index", status.applied_index.to_string()),
            ("last_log_index", status.last_log_index.to_string()),
            ("persisted_index", status.persisted_index.to_string()),
            ("pending_proposals", status.pending_proposals.to_string()),
            ("read_mode", shared.cluster.reads.mode.to_string()),
            ("read_lease_held", u8::from(status.lease).to_string()),
            ("pending_reads", status.pending_reads.to_string()),
            ("repairing_lost_log_through", status.repairing_through.unwrap_or(0).to_string()),
            ("follower_regressions", status.follower_regressions.to_string()),
            ("voters", ids(&m.voters)),
            ("learners", ids(&m.learners)),
            ("joint_outgoing_voters", ids(&m.outgoing)),
            ("membership_index", status.membership_index.to_string()),
            ("membership_committed", u8::from(status.membership_index <= status.commit_index).to_string()),
        ],
    );
    section(
        "Persistence",
        vec![
            ("wal_persists", status.wal.persists.to_string()),
            ("wal_groups", status.wal.groups.to_string()),
            ("wal_fsyncs", status.wal.fsyncs.to_string()),
            ("wal_durable_seq", status.wal.durable_seq.to_string()),
            ("log_first_index", status.first_index.to_string()),
            ("snapshot_index", status.snapshot.index.to_string()),
            ("snapshot_term", status.snapshot.term.to_string()),
            ("snapshot_bytes", status.snapshot.file_bytes.to_string()),
            ("snapshots_taken", status.snapshot.taken.to_string()),
            ("snapshots_installed", status.snapshot.installed.to_string()),
            ("snapshots_failed", status.snapshot.failed.to_string()),
            ("snapshot_last_write_ms", status.snapshot.last_write_ms.to_string()),
            ("entries_since_snapshot", status.snapshot.entries_since.to_string()),
        ],
    );
    let t = shared.node.transport_stats();
    let store = shared.node.inspect(|kv: &KvStore| kv.stats(), Duration::from_secs(1)).unwrap_or_default();
    section(
        "Stats",
        vec![
            ("peer_messages_sent", t.sent.to_string()),
            ("peer_messages_received", t.received.to_string()),
            ("peer_messages_dropped", (t.dropped_full + t.dropped_unreachable + t.dropped_write).to_string()),
            ("peer_connects", t.connects.to_string()),
            ("peer_disconnects", t.disconnects.to_string()),
            ("peer_stalls_replaced", t.stalls_replaced.to_string()),
            ("peer_handshakes_rejected", t.handshake_rejected.to_string()),
            ("peer_bad_frames", t.bad_frames.to_string()),
            ("store_commands_executed", store.executed.to_string()),
            ("store_retries_deduplicated", store.deduplicated.to_string()),
            ("store_stale_requests", store.stale.to_string()),
            ("store_malformed_entries", store.malformed.to_string()),
        ],
    );
    text
}
