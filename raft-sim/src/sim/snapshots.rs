//! Snapshots in the simulated driver: taking them by a per-seed policy, the
//! transfer an `InstallSnapshot` action asks for (which the network can
//! lose), installing them into a fresh real `KvStore`, and the checks that
//! only a simulator can make: every replica's state at an index is the same
//! image, whether it got there entry by entry or by installing a snapshot.

use bytes::Bytes;
use raft_core::{Event, Index, NodeId, SnapshotMeta};
use raft_driver_std::node::SnapshotPolicy;
use raft_driver_std::raftkv::store::KvStore;
use raft_driver_std::{SnapshotImage, StateMachine};

use super::Sim;
use super::queue::Ev;
use crate::hash::hash_bytes;

impl Sim {
    /// Takes a snapshot of node `id` if its policy says so: every
    /// `snapshot_every` applied entries since its last one.
    pub(super) fn maybe_take_snapshot(&mut self, id: NodeId) {
        let Some(every) = self.cfg.snapshot_every else { return };
        let Some(n) = self.nodes.get(&id) else { return };
        let Some(node) = n.node.as_ref() else { return };
        let applied = node.applied_index();
        // Counted from the node's last snapshot, taken, installed or restored.
        let last = node.snapshot().map_or(0, |m| m.last_included_index);
        // The driver's policy, by entry count (the simulated store's entries are tiny).
        let policy = SnapshotPolicy { every_entries: every, every_bytes: 0, trailing_entries: 0 };
        if !policy.is_due(applied.saturating_sub(last), 0) || node.installing_snapshot().is_some() {
            return;
        }
        // As the driver: only where the core can describe the snapshot (a
        // joining node cannot before the entry that added it).
        if node.snapshot_meta_at(applied).is_none() {
            return;
        }
        // (The store's own `last_applied` is its last command: no-op entries
        // never reach it.)
        // Through the trait, as the driver takes it: the O(1) capture, then the encoding.
        let image = Bytes::from(StateMachine::snapshot(&n.sm).encode());
        if !self.same_state(id, applied, &image, "took") {
            return;
        }
        let n = self.nodes.get_mut(&id).expect("node");
        n.disk.store_image(applied, image);
        self.stats.snapshots_taken += 1;
        self.step(id, Event::SnapshotTaken { index: applied });
    }

    /// Every image of the state at `index` must be byte-identical, however
    /// the replica got there. Returns whether it is (failing the run if not).
    fn same_state(&mut self, id: NodeId, index: Index, image: &[u8], how: &str) -> bool {
        let hash = hash_bytes(index, image);
        let first = *self.snapshot_hashes.entry(index).or_insert((hash, id));
        if first.0 != hash {
            let detail = format!("node {id} {how} a state at {index} that differs from node {}'s", first.1);
            self.fail("state machine divergence", detail);
            return false;
        }
        true
    }

    /// `InstallSnapshot`: the driver fetches the snapshot from `from`; the
    /// transfer takes a few network latencies.
    pub(super) fn fetch_snapshot(&mut self, id: NodeId, from: NodeId, meta: SnapshotMeta) {
        let link_factor = self.net.link_factor(from, id);
        let delay = (0..4).map(|_| self.latency(link_factor)).sum::<u64>();
        let inc = self.nodes[&id].inc;
        self.push(self.now + delay, Ev::SnapshotFetched { node: id, inc, from, meta });
    }

    /// The transfer ends: the image arrives (and is installed) unless the
    /// link is cut, the sender is down or no longer has that snapshot, or
    /// the transfer is lost; then the install is aborted.
    pub(super) fn snapshot_fetched(&mut self, id: NodeId, inc: u64, from: NodeId, meta: SnapshotMeta) {
        if self.nodes.get(&id).is_none_or(|n| n.inc != inc || n.node.is_none()) {
            return;
        }
        let index = meta.last_included_index;
        let image = self
            .nodes
            .get(&from)
            .filter(|f| f.node.is_some())
            .and_then(|f| f.disk.image(index).cloned())
            .filter(|_| !self.net.is_cut(from, id));
        let image = match image {
            Some(image) if !self.chance(self.cfg.profile.drop) => image,
            _ => {
                self.stats.snapshots_aborted += 1;
                return self.step(id, Event::SnapshotAborted);
            }
        };
        let n = &self.nodes[&id];
        let mut sm = KvStore::with_max_sessions(n.max_sessions());
        if let Err(e) = sm.restore(&image) {
            return self.fail("snapshot", format!("node {id} cannot restore snapshot {index} from {from}: {e}"));
        }
        if sm.image() != image {
            let detail = format!("node {id}: snapshot {index} from {from} does not restore to itself");
            return self.fail("snapshot", detail);
        }
        if !self.same_state(id, index, &image, "installed") {
            return;
        }
        let n = self.nodes.get_mut(&id).expect("node");
        // Durable before it is reported, as a driver fsyncs the file.
        n.disk.store_image(index, image);
        n.install_store(sm);
        self.stats.snapshots_installed += 1;
        self.step(id, Event::SnapshotInstalled { meta });
    }
}
