//! Group commit: a thread that owns the [`Wal`], writes every `Persist`
//! that queued up while the previous fsync ran, and fsyncs once for all of
//! them. Under load this turns N fsyncs into ~1 per disk round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use raft_core::Persist;
use serde::Serialize;

use super::{Wal, WalError};
use crate::metrics::{FSYNC_MICROS, GROUP_SIZES, Histogram, HistogramSnapshot};

/// Counters of a [`WalWriter`], for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WalWriterStats {
    /// `Persist` values written.
    pub persists: u64,
    /// Groups committed (each ends in one `sync`).
    pub groups: u64,
    /// fsyncs issued by the WAL (group syncs plus segment creation).
    pub fsyncs: u64,
    /// The highest `seq` reported durable so far (`0` before the first).
    pub durable_seq: u64,
    /// Obsolete segments deleted after snapshot markers
    /// ([`Wal::segments_deleted`]).
    pub segments_deleted: u64,
}

struct Counters {
    persists: AtomicU64,
    groups: AtomicU64,
    fsyncs: AtomicU64,
    durable_seq: AtomicU64,
    segments_deleted: AtomicU64,
    /// How long each group's sync took, in microseconds.
    sync_micros: Histogram,
    /// `Persist`s per group.
    group_size: Histogram,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            persists: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            durable_seq: AtomicU64::new(0),
            segments_deleted: AtomicU64::new(0),
            sync_micros: Histogram::new(FSYNC_MICROS, 1e6),
            group_size: Histogram::new(GROUP_SIZES, 1.0),
        }
    }
}

/// A cloneable view of a [`WalWriter`]'s distributions, readable from any thread (the writer
/// itself lives on the node thread).
#[derive(Clone)]
pub struct WalMonitor(Arc<Counters>);

impl WalMonitor {
    /// The sync latency and group size distributions so far.
    pub fn histograms(&self) -> WalHistograms {
        WalHistograms { sync_seconds: self.0.sync_micros.snapshot(), group_size: self.0.group_size.snapshot() }
    }
}

impl std::fmt::Debug for WalMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("WalMonitor").field(&self.histograms()).finish()
    }
}

/// The writer's distributions ([`WalWriter::histograms`]).
#[derive(Clone, Debug, PartialEq)]
pub struct WalHistograms {
    /// Time each group's sync took (`fdatasync`, or nothing with fsync off), in seconds.
    pub sync_seconds: HistogramSnapshot,
    /// Writes (`Persist`s) per group, so per sync.
    pub group_size: HistogramSnapshot,
}

/// Owns a [`Wal`] on a dedicated thread and commits writes in groups.
///
/// [`submit`](WalWriter::submit) queues a `Persist` on a bounded channel
/// (blocking when it is full: that is the backpressure that keeps a slow
/// disk from buffering unbounded memory). After each group is durable the
/// callback receives `Ok(seq)` with the `seq` of the group's last `Persist`:
/// every `Persist` submitted up to it is durable, so the driver turns it
/// into `Event::Persisted { seq }`. Seqs are reported in submission order.
///
/// On the first error the callback receives `Err`, the thread stops, and
/// later submits fail with [`WalError::WriterStopped`]: after a failed
/// fsync nothing can be trusted, and the node must restart from disk.
pub struct WalWriter {
    tx: Option<Sender<Persist>>,
    handle: Option<JoinHandle<Result<Wal, WalError>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for WalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalWriter").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl WalWriter {
    /// Starts the writer thread. `capacity` bounds the queue (and a group:
    /// at most `capacity` `Persist`s share one fsync, which bounds latency).
    pub fn spawn<F>(wal: Wal, capacity: usize, on_durable: F) -> Result<WalWriter, WalError>
    where
        F: FnMut(Result<u64, &WalError>) + Send + 'static,
    {
        let capacity = capacity.max(1);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let dir = wal.dir().to_path_buf();
        let handle = std::thread::Builder::new()
            .name("raft-wal".into())
            .spawn(move || run(wal, rx, capacity, &thread_counters, on_durable))
            .map_err(|e| WalError::io("spawn writer thread for", &dir, e))?;
        Ok(WalWriter { tx: Some(tx), handle: Some(handle), counters })
    }

    /// Queues `persist` for writing, blocking while the queue is full.
    pub fn submit(&self, persist: Persist) -> Result<(), WalError> {
        let tx = self.tx.as_ref().ok_or(WalError::WriterStopped)?;
        tx.send(persist).map_err(|_| WalError::WriterStopped)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WalWriterStats {
        let c = &self.counters;
        WalWriterStats {
            persists: c.persists.load(Ordering::Relaxed),
            groups: c.groups.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            durable_seq: c.durable_seq.load(Ordering::Acquire),
            segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
        }
    }

    /// The sync latency and group size distributions so far.
    pub fn histograms(&self) -> WalHistograms {
        self.monitor().histograms()
    }

    /// A handle that reads the distributions from any thread.
    pub fn monitor(&self) -> WalMonitor {
        WalMonitor(Arc::clone(&self.counters))
    }

    /// Commits everything already submitted, stops the thread and returns
    /// the `Wal` (or the error that stopped the thread).
    pub fn shutdown(mut self) -> Result<Wal, WalError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<Wal, WalError> {
        // Dropping the only sender closes the channel; the thread drains
        // what is queued, syncs it and returns.
        self.tx = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            // The callback panicked, or `stop` already ran.
            Some(Err(_)) | None => Err(WalError::WriterStopped),
        }
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        // Join so the queued writes are synced and the segment file closed
        // before anyone (e.g. a restarted node in a test) reopens the WAL.
        let _ = self.stop();
    }
}

fn run<F>(
    mut wal: Wal,
    rx: Receiver<Persist>,
    max_group: usize,
    counters: &Counters,
    mut on_durable: F,
) -> Result<Wal, WalError>
where
    F: FnMut(Result<u64, &WalError>),
{
    // `recv` fails only once every sender is gone and the queue is empty.
    while let Ok(first) = rx.recv() {
        match commit_group(&mut wal, &rx, first, max_group, counters) {
            Ok(seq) => {
                counters.groups.fetch_add(1, Ordering::Relaxed);
                counters.fsyncs.store(wal.fsync_count(), Ordering::Relaxed);
                counters.segments_deleted.store(wal.segments_deleted(), Ordering::Relaxed);
                counters.durable_seq.store(seq, Ordering::Release);
                on_durable(Ok(seq));
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL write failed; writer stopping");
                on_durable(Err(&e));
                return Err(e);
            }
        }
    }
    Ok(wal)
}

/// Writes `first` and whatever else is already queued (up to `max_group`),
/// then syncs once. Returns the seq of the last `Persist` written.
fn commit_group(
    wal: &mut Wal,
    rx: &Receiver<Persist>,
    first: Persist,
    max_group: usize,
    counters: &Counters,
) -> Result<u64, WalError> {
    wal.write(&first)?;
    let mut seq = first.seq;
    let mut n = 1;
    // Only what already arrived: waiting for more would add latency to the
    // writes that are ready, and the next group picks up late arrivals.
    while n < max_group {
        let Ok(p) = rx.try_recv() else { break };
        wal.write(&p)?;
        seq = p.seq;
        n += 1;
    }
    counters.persists.fetch_add(n as u64, Ordering::Relaxed);
    let started = std::time::Instant::now();
    wal.sync()?;
    counters.sync_micros.observe(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    counters.group_size.observe(n as u64);
    Ok(seq)
}
