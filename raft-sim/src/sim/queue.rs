//! The event queue: every scheduled event with its virtual time, taken
//! earliest first and, at equal times, in the order it was scheduled (a
//! sequence number breaks ties, so a seed always replays the same order).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use raft_core::NodeId;

use super::faults::Fault;
use super::network::NetMsg;

/// Something that happens at a virtual time.
#[derive(Clone, Debug)]
pub(super) enum Ev {
    /// A node's clock ticks; stale if the node restarted since (`inc`).
    Tick { node: NodeId, inc: u64 },
    /// A message arrives (node and client ids share one address space).
    Deliver { from: u64, to: u64, msg: NetMsg },
    /// An fsync covering the first `count` pending writes completes.
    Sync { node: NodeId, inc: u64, count: usize },
    /// A scheduled fault, or the follow-up of a random one.
    Fault(Fault),
    /// Time to inject the next random fault.
    RandomFault,
    /// The faults stop: heal everything and restart every crashed node.
    EndFaults,
    /// A client may start its next operation.
    ClientWake { client: u64 },
    /// A client's attempt timed out (`u64::MAX`: the retry after a redirect).
    ClientTimeout { client: u64, seq: u64, attempt: u64 },
}

/// An event in the heap, ordered by (time, sequence).
struct Queued {
    time: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse for earliest-first.
        (o.time, o.seq).cmp(&(self.time, self.seq))
    }
}

/// The pending events of one run.
#[derive(Default)]
pub(super) struct EventQueue {
    heap: BinaryHeap<Queued>,
    /// The sequence number of the last event scheduled.
    seq: u64,
}

impl EventQueue {
    /// Schedules `ev` at virtual time `time`.
    pub(super) fn push(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Queued { time, seq: self.seq, ev });
    }

    /// Takes the earliest event if it is due at or before `limit`; a later
    /// one stays queued.
    pub(super) fn pop_due(&mut self, limit: u64) -> Option<(u64, Ev)> {
        if self.heap.peek()?.time > limit {
            return None;
        }
        self.heap.pop().map(|q| (q.time, q.ev))
    }
}
