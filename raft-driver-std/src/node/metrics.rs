//! The driver's metrics families: what any application on the driver exports (raftkv adds its
//! own). Names follow Prometheus conventions: a `raft_` prefix, units as suffixes (`_seconds`,
//! `_bytes`, `_entries`), `_total` on counters, one family per quantity with labels for its
//! parts.

use std::time::Duration;

use raft_core::Role;

use super::RaftHandle;
use crate::metrics::Exposition;
use crate::state_machine::StateMachine;
use crate::transport::PeerStats;

pub(super) fn write_metrics<S: StateMachine>(node: &RaftHandle<S>, page: &mut Exposition) {
    let s = node.status();
    let roles = [Role::Follower, Role::PreCandidate, Role::Candidate, Role::Leader];
    let names: Vec<String> = roles.iter().map(ToString::to_string).collect();
    let labels: Vec<[(&str, &str); 1]> = names.iter().map(|name| [("role", name.as_str())]).collect();
    let role_refs: Vec<_> = labels.iter().zip(roles).map(|(l, r)| (&l[..], f64::from(u8::from(r == s.role)))).collect();
    page.gauges("raft_role", "1 for the role this node is in, 0 for the others.", &role_refs);
    page.gauge("raft_up", "1 while the node thread runs.", f64::from(u8::from(s.running)));
    page.gauge("raft_term", "The current term.", s.term as f64);
    page.gauge("raft_leader_id", "The known leader's id (0: none known).", s.leader.unwrap_or(0) as f64);
    page.gauge("raft_commit_index", "Highest log index known committed.", s.commit_index as f64);
    page.gauge("raft_applied_index", "Highest log index applied to the state machine.", s.applied_index as f64);
    page.gauge("raft_last_log_index", "Index of the last log entry, durable or not.", s.last_log_index as f64);
    page.gauge("raft_persisted_index", "Highest log index durable on this node's disk.", s.persisted_index as f64);
    let held = (s.last_log_index + 1).saturating_sub(s.first_index);
    page.gauge("raft_log_entries", "Entries in the log after the snapshot.", held as f64);
    page.gauge("raft_snapshot_index", "Last index the newest snapshot includes.", s.snapshot.index as f64);
    page.gauge("raft_snapshot_size_bytes", "Size of the newest snapshot file.", s.snapshot.file_bytes as f64);
    let voters = s.membership.voters.len() as f64;
    page.gauge("raft_voters", "Voters in the configuration in force (incoming half while joint).", voters);
    page.gauge("raft_learners", "Learners in the configuration in force.", s.membership.learners.len() as f64);
    page.gauge(
        "raft_membership_joint",
        "1 while a joint configuration is in force.",
        f64::from(u8::from(s.membership.is_joint())),
    );
    page.gauge("raft_pending_proposals", "Proposals appended and waiting to be applied.", s.pending_proposals as f64);
    page.gauge("raft_pending_reads", "Reads waiting for confirmation or apply.", s.pending_reads as f64);
    let a = s.activity;
    page.counter("raft_pre_votes_started_total", "PreVote rounds this node started.", a.pre_votes_started);
    page.counter("raft_elections_started_total", "Elections this node started as candidate.", a.elections_started);
    page.counter("raft_elections_won_total", "Elections this node won.", a.elections_won);
    page.counters(
        "raft_proposals_total",
        "Proposals answered, by outcome (applied: the state machine's response; failed: an error).",
        &[(&[("outcome", "applied")], a.proposals_applied), (&[("outcome", "failed")], a.proposals_failed)],
    );
    page.counter("raft_snapshots_taken_total", "Snapshots this node wrote.", s.snapshot.taken);
    page.counter("raft_snapshots_installed_total", "Snapshots installed from a leader.", s.snapshot.installed);
    page.counter("raft_snapshots_failed_total", "Snapshot writes or installs that failed.", s.snapshot.failed);
    page.counter("raft_wal_writes_total", "Writes (Persist) the WAL made durable.", s.wal.persists);
    page.counter("raft_wal_syncs_total", "Group commits, each ending in one sync.", s.wal.groups);
    page.counter("raft_wal_fsyncs_total", "fsyncs issued by the WAL (group syncs and segment creation).", s.wal.fsyncs);
    let h = node.wal_histograms();
    page.histogram("raft_wal_sync_duration_seconds", "Time each group commit's sync took.", &h.sync_seconds);
    page.histogram("raft_wal_group_size", "Writes per group commit (per sync).", &h.group_size);

    let t = node.transport_stats();
    page.counter("raft_peer_messages_sent_total", "Messages written to peers, all peers.", t.sent);
    page.counter("raft_peer_messages_received_total", "Messages from peers delivered to the node.", t.received);
    page.counters(
        "raft_peer_messages_dropped_total",
        "Messages to peers dropped, by reason (Raft resends what matters).",
        &[
            (&[("reason", "queue_full")], t.dropped_full),
            (&[("reason", "unreachable")], t.dropped_unreachable),
            (&[("reason", "write_failed")], t.dropped_write),
            (&[("reason", "oversized")], t.dropped_oversized),
            (&[("reason", "unknown_peer")], t.dropped_unknown_peer),
            (&[("reason", "closed")], t.dropped_closed),
        ],
    );
    page.counter("raft_peer_connects_total", "Outbound peer connections made.", t.connects);
    page.counter("raft_peer_disconnects_total", "Peer connections lost.", t.disconnects);
    page.counter(
        "raft_peer_handshakes_rejected_total",
        "Inbound connections refused at the handshake.",
        t.handshake_rejected,
    );
    page.counter(
        "raft_peer_bad_frames_total",
        "Inbound frames that failed to decode (connection dropped).",
        t.bad_frames,
    );
    let peers = node.peer_stats();
    let ids: Vec<String> = peers.iter().map(|p| p.id.to_string()).collect();
    let labels: Vec<[(&str, &str); 1]> = ids.iter().map(|id| [("peer", id.as_str())]).collect();
    let series = |f: fn(&PeerStats) -> u64| labels.iter().zip(&peers).map(|(l, p)| (&l[..], f(p))).collect::<Vec<_>>();
    page.counters("raft_peer_sent_total", "Messages written to each peer.", &series(|p| p.sent));
    page.counters(
        "raft_peer_received_total",
        "Messages from each peer delivered to the node.",
        &series(|p| p.received),
    );
    let help = "Messages to each peer lost after queueing (failed write, unreachable, oversized).";
    page.counters("raft_peer_lost_total", help, &series(|p| p.dropped));
    let progress = node.peer_progress(Duration::from_millis(500)).unwrap_or_default();
    let pids: Vec<String> = progress.iter().map(|p| p.id.to_string()).collect();
    let labels: Vec<[(&str, &str); 1]> = pids.iter().map(|id| [("peer", id.as_str())]).collect();
    let matched: Vec<_> = labels.iter().zip(&progress).map(|(l, p)| (&l[..], p.match_index as f64)).collect();
    let lag: Vec<_> = labels.iter().zip(&progress).map(|(l, p)| (&l[..], p.lag as f64)).collect();
    page.gauges("raft_peer_match_index", "Highest index replicated on each follower (on the leader only).", &matched);
    page.gauges(
        "raft_peer_replication_lag_entries",
        "Entries the leader holds beyond each follower's match index (on the leader only).",
        &lag,
    );
}
