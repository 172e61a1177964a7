//! The `INFO` command's text.

use std::sync::atomic::Ordering;

use std::time::Duration;

use bytes::Bytes;

use crate::raftkv::store::KvStore;

use super::Shared;
use crate::metrics::Labels;

/// `INFO` text: `# Server`, `# Clients`, `# Memory`, `# Replication`, `# Persistence`, `# Stats`,
/// `# CPU` and `# Keyspace` (all unless specific ones are asked for; names are case-insensitive).
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
            ("os", format!("{} {}", std::env::consts::OS, std::env::consts::ARCH)),
            ("arch_bits", (usize::BITS).to_string()),
            ("multiplexing_api", "threads".into()),
            ("node_id", shared.node_id.to_string()),
            ("cluster_id", shared.cluster.cluster_id.to_string()),
            ("process_id", std::process::id().to_string()),
            ("run_id", format!("{:040x}", u128::from(shared.sessions.start_id()))),
            ("tcp_port", shared.local_addr.port().to_string()),
            ("uptime_in_seconds", shared.started.elapsed().as_secs().to_string()),
            ("uptime_in_days", (shared.started.elapsed().as_secs() / 86_400).to_string()),
        ],
    );
    section(
        "Clients",
        vec![
            ("connected_clients", shared.registry.user_count().to_string()),
            ("maxclients", shared.options.max_clients.to_string()),
            ("blocked_clients", "0".into()),
            ("forwarding_connections", (shared.registry.count() - shared.registry.user_count()).to_string()),
        ],
    );
    let rss = resident_bytes();
    section(
        "Memory",
        vec![
            // The allocator's own count is not exposed; the resident set is what the OS charges.
            ("used_memory", rss.to_string()),
            ("used_memory_human", human(rss)),
            ("used_memory_rss", rss.to_string()),
            ("used_memory_rss_human", human(rss)),
            ("maxmemory", "0".into()),
            ("maxmemory_policy", "noeviction".into()),
        ],
    );
    let leader_addr =
        status.leader.and_then(|id| super::admin::client_addr_of(shared, id)).map_or(String::new(), |a| a.to_string());
    let m = &status.membership;
    let ids = |v: &[u64]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    section(
        "Replication",
        vec![
            // What Redis clients expect (a leader takes writes like a master); Raft's own role next.
            ("role", if status.role == raft_core::Role::Leader { "master" } else { "slave" }.into()),
            ("raft_role", status.role.to_string()),
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
            ("total_connections_received", shared.connections_received.load(Ordering::Relaxed).to_string()),
            ("total_commands_processed", shared.commands_processed.load(Ordering::Relaxed).to_string()),
        ],
    );
    let (user, system) = cpu_seconds();
    section("CPU", vec![("used_cpu_sys", format!("{system:.6}")), ("used_cpu_user", format!("{user:.6}"))]);
    let keyspace = shared.node.inspect(|kv: &KvStore| kv.keyspace(), Duration::from_secs(1)).unwrap_or_default();
    let names: Vec<String> = keyspace.iter().map(|(db, _, _)| format!("db{db}")).collect();
    section(
        "Keyspace",
        keyspace
            .iter()
            .zip(&names)
            .map(|((_, keys, expires), name)| (name.as_str(), format!("keys={keys},expires={expires},avg_ttl=0")))
            .collect(),
    );
    text
}

/// This process's resident set in bytes (Linux `/proc/self/statm`; 0 elsewhere).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// CPU time of this process so far, user and system, in seconds (Linux `/proc/self/stat`, whose
/// times are in USER_HZ ticks, 100 per second on every mainstream kernel; zeros elsewhere).
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name is in parentheses and may hold spaces: count fields after its end.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0) as f64 / 100.0;
    (ticks(11), ticks(12))
}

/// `1.50M` style sizes, as Redis prints them.
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes}B"),
        1024..1_048_576 => format!("{:.2}K", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.2}M", b / 1_048_576.0),
        _ => format!("{:.2}G", b / 1_073_741_824.0),
    }
}

/// The metrics page (Prometheus text format): the driver's families, then raftkv's own
/// (`raftkv_` prefix): clients, requests by command, the store's counters and keyspace, memory.
pub(super) fn metrics_text(shared: &Shared) -> String {
    let mut page = crate::metrics::Exposition::new();
    shared.node.write_metrics(&mut page);
    let users = shared.registry.user_count();
    page.gauge("raftkv_connected_clients", "Client connections open (forwarding links excluded).", users as f64);
    let links = shared.registry.count().saturating_sub(users);
    page.gauge("raftkv_forwarding_connections", "Connections from followers forwarding requests.", links as f64);
    page.gauge("raftkv_max_clients", "The client connection limit.", shared.options.max_clients as f64);
    let received = shared.connections_received.load(Ordering::Relaxed);
    page.counter("raftkv_connections_received_total", "Client connections accepted.", received);
    let seen = shared.commands.seen();
    let labels: Vec<[(&str, &str); 1]> = seen.iter().map(|(name, _)| [("command", *name)]).collect();
    let samples: Vec<_> = labels.iter().zip(&seen).map(|(l, (_, n))| (&l[..], *n)).collect();
    page.counters("raftkv_commands_total", "Requests received, by command (unknown names counted together).", &samples);
    let store = shared.node.inspect(|kv: &KvStore| kv.stats(), Duration::from_secs(1)).unwrap_or_default();
    page.counter("raftkv_store_commands_executed_total", "Log entries the store executed.", store.executed);
    let help = "Retried requests answered from the session cache instead of executed again.";
    page.counter("raftkv_store_retries_deduplicated_total", help, store.deduplicated);
    page.counter("raftkv_store_stale_requests_total", "Requests older than their session's last one.", store.stale);
    page.counter("raftkv_store_malformed_entries_total", "Log entries the store could not decode.", store.malformed);
    let keyspace = shared.node.inspect(|kv: &KvStore| kv.keyspace(), Duration::from_secs(1)).unwrap_or_default();
    let dbs: Vec<String> = keyspace.iter().map(|(db, _, _)| db.to_string()).collect();
    let labels: Vec<[(&str, &str); 1]> = dbs.iter().map(|db| [("db", db.as_str())]).collect();
    let keys: Vec<_> = labels.iter().zip(&keyspace).map(|(l, (_, k, _))| (&l[..], *k as f64)).collect();
    page.gauges("raftkv_keys", "Live keys, by database.", &keys);
    let expiring: Vec<_> = labels.iter().zip(&keyspace).map(|(l, (_, _, e))| (&l[..], *e as f64)).collect();
    page.gauges("raftkv_keys_with_expiry", "Live keys with a deadline, by database.", &expiring);
    page.gauge("raftkv_resident_memory_bytes", "The process's resident set.", resident_bytes() as f64);
    let (user, system) = cpu_seconds();
    let cpu: [(Labels<'_>, f64); 2] = [(&[("mode", "user")], user), (&[("mode", "system")], system)];
    page.counters_f64("raftkv_cpu_seconds_total", "CPU time of the process, by mode.", &cpu);
    page.finish()
}
