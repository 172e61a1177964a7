//! The event queue: every scheduled event with its virtual time, taken
//! earliest first and, at equal times, in the order it was scheduled (a
//! sequence number breaks ties, so a seed always replays the same order).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use raft_core::{NodeId, SnapshotMeta};

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
    /// A snapshot transfer to `node` (in incarnation `inc`) from `from` ends.
    SnapshotFetched { node: NodeId, inc: u64, from: NodeId, meta: SnapshotMeta },
    /// Time for the next membership operation.
    Reconfig,
}

/// A queued event's place in the order: (time, sequence), and where the event waits in the slab.
/// The sequence number is unique, so no two queued events compare equal. Small (24 bytes), so that
/// sorting a bucket and inserting into it move keys, not events (an `Ev` is 168 bytes).
struct Queued {
    time: u64,
    seq: u64,
    slot: u32,
}

impl Queued {
    #[inline]
    fn key(&self) -> (u64, u64) {
        (self.time, self.seq)
    }
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
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
        self.key().cmp(&o.key())
    }
}

/// log2 of a bucket's width in microseconds (about 4 ms: a handful of events each).
const BUCKET_SHIFT: u32 = 12;
/// Buckets in the ring: about a quarter of a second ahead, which covers every latency, tick, fsync
/// and client timer; anything later waits in the overflow heap.
const RING: u64 = 64;

/// The pending events of one run: a calendar queue. Events sit in a ring of buckets by time; the
/// bucket being drained is sorted (earliest first), later ones are sorted when their turn comes, and
/// events beyond the ring's horizon wait in a heap. Events come out in exactly (time, sequence)
/// order, as from a binary heap, at a fraction of the cost (the queue is the simulator's hottest
/// structure), and are read in the order they sit in memory.
pub(super) struct EventQueue {
    /// Bucket `b` (of times `b << BUCKET_SHIFT ..`) is `ring[b % RING]` while `cur <= b < cur + RING`.
    ring: Vec<Vec<Queued>>,
    /// The bucket being drained. Every event in it precedes every other queued event; it is sorted
    /// earliest first, and its events before `head` are taken. (An event pushed for a time before
    /// the bucket's also goes here.)
    cur: u64,
    /// Position of the next event to take in the bucket being drained.
    head: usize,
    /// Events in the ring.
    in_ring: usize,
    /// Events at or beyond bucket `cur + RING`.
    far: BinaryHeap<Reverse<Queued>>,
    /// The sequence number of the last event scheduled.
    seq: u64,
    /// The queued events, by slot; a taken slot holds a placeholder until it is reused.
    slab: Vec<Ev>,
    /// Slots free for reuse.
    free: Vec<u32>,
}

impl Default for EventQueue {
    fn default() -> EventQueue {
        EventQueue {
            // Sized for a busy bucket, so that the ring does not regrow in every run.
            ring: (0..RING).map(|_| Vec::with_capacity(16)).collect(),
            cur: 0,
            head: 0,
            in_ring: 0,
            far: BinaryHeap::new(),
            seq: 0,
            slab: Vec::with_capacity(256),
            free: Vec::with_capacity(256),
        }
    }
}

impl EventQueue {
    /// Schedules `ev` at virtual time `time`.
    pub(super) fn push(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = ev;
                slot
            }
            None => {
                self.slab.push(ev);
                u32::try_from(self.slab.len() - 1).expect("fewer than 2^32 queued events")
            }
        };
        let q = Queued { time, seq: self.seq, slot };
        let b = time >> BUCKET_SHIFT;
        if b >= self.cur + RING {
            self.far.push(Reverse(q));
            return;
        }
        self.in_ring += 1;
        let bucket = &mut self.ring[(b.max(self.cur) % RING) as usize];
        if b <= self.cur {
            // The bucket being drained stays sorted; a new event usually goes last.
            let pos = self.head + bucket[self.head..].partition_point(|k| k.key() < q.key());
            bucket.insert(pos, q);
        } else {
            bucket.push(q);
        }
    }

    /// Takes the earliest event if it is due at or before `limit`; a later
    /// one stays queued.
    pub(super) fn pop_due(&mut self, limit: u64) -> Option<(u64, Ev)> {
        loop {
            let bucket = &mut self.ring[(self.cur % RING) as usize];
            if let Some(q) = bucket.get(self.head) {
                if q.time > limit {
                    return None;
                }
                self.head += 1;
                self.in_ring -= 1;
                // The placeholder is never read: the slot is free until a push overwrites it.
                let ev = std::mem::replace(&mut self.slab[q.slot as usize], Ev::RandomFault);
                self.free.push(q.slot);
                return Some((q.time, ev));
            }
            self.advance()?;
        }
    }

    /// Moves on to the next bucket that may hold events (jumping ahead when the ring is empty),
    /// pulls in the overflow events that came within the horizon, and sorts the new current bucket.
    /// `None` when nothing is queued at all.
    fn advance(&mut self) -> Option<()> {
        if self.head > 0 {
            self.ring[(self.cur % RING) as usize].clear();
            self.head = 0;
        }
        if self.in_ring == 0 {
            let Reverse(first) = self.far.peek()?;
            self.cur = first.time >> BUCKET_SHIFT;
        } else {
            self.cur += 1;
        }
        while self.far.peek().is_some_and(|Reverse(q)| q.time >> BUCKET_SHIFT < self.cur + RING) {
            let Reverse(q) = self.far.pop().expect("peeked");
            self.in_ring += 1;
            self.ring[((q.time >> BUCKET_SHIFT) % RING) as usize].push(q);
        }
        self.ring[(self.cur % RING) as usize].sort_unstable();
        Some(())
    }

    /// Events still queued.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.in_ring + self.far.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_by_time_then_in_the_order_they_were_queued() {
        let mut q = EventQueue::default();
        for (time, client) in [(30, 1), (10, 2), (30, 3), (20, 4), (10, 5)] {
            q.push(time, Ev::ClientWake { client });
        }
        assert!(q.pop_due(9).is_none(), "nothing is due before 10");
        let mut out = Vec::new();
        while let Some((time, Ev::ClientWake { client })) = q.pop_due(25) {
            out.push((time, client));
        }
        assert_eq!(out, [(10, 2), (10, 5), (20, 4)]);
        // Slots freed by the pops are reused without disturbing the order.
        q.push(30, Ev::ClientWake { client: 6 });
        q.push(5, Ev::ClientWake { client: 7 });
        let rest: Vec<_> = std::iter::from_fn(|| q.pop_due(u64::MAX))
            .map(|(t, ev)| match ev {
                Ev::ClientWake { client } => (t, client),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(rest, [(5, 7), (30, 1), (30, 3), (30, 6)]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn the_calendar_gives_exactly_the_order_of_a_binary_heap() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut q = EventQueue::default();
        let mut model = BinaryHeap::new();
        let (mut now, mut seq) = (0u64, 0u64);
        for round in 0..20_000u64 {
            // Pushes at the current time, just after it, a few buckets on, across the ring's horizon
            // and far beyond it; pops with limits that sometimes stop short.
            for _ in 0..rng.gen_range(0..4) {
                let delay = match rng.gen_range(0..6) {
                    0 => 0,
                    1 => rng.gen_range(0..1 << BUCKET_SHIFT),
                    2 => rng.gen_range(0..10_000),
                    3 => rng.gen_range(0..RING << BUCKET_SHIFT),
                    4 => (RING << BUCKET_SHIFT) + rng.gen_range(0..3 << BUCKET_SHIFT),
                    _ => rng.gen_range(0..5_000_000),
                };
                seq += 1;
                q.push(now + delay, Ev::ClientWake { client: seq });
                model.push(Reverse((now + delay, seq)));
            }
            let limit = now + rng.gen_range(0..20_000);
            for _ in 0..rng.gen_range(0..5) {
                let want = model.peek().filter(|Reverse((t, _))| *t <= limit).map(|Reverse(k)| *k);
                let got = q.pop_due(limit).map(|(t, ev)| match ev {
                    Ev::ClientWake { client } => (t, client),
                    other => panic!("unexpected {other:?}"),
                });
                assert_eq!(got, want, "round {round}");
                if let Some((t, _)) = want {
                    model.pop();
                    now = t;
                }
            }
            assert_eq!(q.len(), model.len());
        }
        while let Some(Reverse(want)) = model.pop() {
            let got = q.pop_due(u64::MAX).map(|(t, ev)| match ev {
                Ev::ClientWake { client } => (t, client),
                other => panic!("unexpected {other:?}"),
            });
            assert_eq!(got, Some(want));
        }
        assert!(q.pop_due(u64::MAX).is_none());
    }
}
