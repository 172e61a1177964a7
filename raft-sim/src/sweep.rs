//! Running many seeds in parallel and summarising them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::linearizability::CheckResult;
use crate::sim::{RunReport, SimConfig, run};

/// What to sweep.
#[derive(Clone, Debug)]
pub struct SweepSpec {
    /// First seed (inclusive).
    pub from: u64,
    /// Last seed (exclusive).
    pub to: u64,
    /// Force a profile (else chosen per seed).
    pub profile: Option<String>,
    /// Force a cluster size (else 3 or 5 per seed).
    pub nodes: Option<usize>,
    /// Override the run length in ticks.
    pub ticks: Option<u64>,
    /// Override the snapshot policy: every this many applied entries (0:
    /// never).
    pub snapshot_every: Option<u64>,
    /// Worker threads.
    pub jobs: usize,
}

impl SweepSpec {
    /// The configuration of one seed of this sweep.
    pub fn config(&self, seed: u64) -> SimConfig {
        let mut cfg = SimConfig::for_seed(seed, self.profile.as_deref(), self.nodes);
        if let Some(t) = self.ticks {
            cfg.ticks = t;
        }
        if let Some(every) = self.snapshot_every {
            cfg.snapshot_every = (every > 0).then_some(every);
        }
        cfg
    }
}

/// Totals of a sweep.
#[derive(Clone, Debug, Default)]
pub struct SweepSummary {
    /// Seeds run.
    pub seeds: u64,
    /// Events processed across all seeds.
    pub events: u64,
    /// Client operations in histories found linearizable.
    pub linearizable_ops: u64,
    /// Seeds whose linearizability check ran out of budget.
    pub undecided: u64,
    /// Elections won.
    pub elections: u64,
    /// Snapshots taken by nodes, and installed by followers from a leader.
    pub snapshots: (u64, u64),
    /// The longest in-memory log any node of any seed held.
    pub peak_log_len: usize,
    /// Membership operations asked of leaders.
    pub reconfigs: u64,
    /// Reads served without the log: by a read round, by a lease.
    pub reads: (u64, u64),
    /// Disks that lost synced entries, and repairs completed.
    pub disk_losses: (u64, u64),
    /// Situations the runs produced (old messages, stale deliveries, pre-votes).
    pub situations: crate::sim::Situations,
    /// Failing runs, by seed.
    pub failures: Vec<RunReport>,
}

impl SweepSummary {
    fn add(&mut self, r: RunReport) {
        self.seeds += 1;
        self.events += r.events;
        self.elections += r.elections;
        self.snapshots.0 += r.snapshots.0;
        self.snapshots.1 += r.snapshots.1;
        self.peak_log_len = self.peak_log_len.max(r.peak_log_len);
        self.reconfigs += r.reconfigs;
        self.reads.0 += r.reads.0;
        self.reads.1 += r.reads.1;
        self.disk_losses.0 += r.disk_losses.0;
        self.disk_losses.1 += r.disk_losses.1;
        self.situations.add(r.situations);
        match r.linearizability {
            Some(CheckResult::Linearizable) if r.failure.is_none() => self.linearizable_ops += r.ops as u64,
            Some(CheckResult::Undecided { .. }) => self.undecided += 1,
            _ => {}
        }
        if r.failure.is_some() {
            self.failures.push(r);
        }
    }

    /// Adds another thread's totals.
    fn merge(&mut self, other: SweepSummary) {
        self.seeds += other.seeds;
        self.events += other.events;
        self.linearizable_ops += other.linearizable_ops;
        self.undecided += other.undecided;
        self.elections += other.elections;
        self.snapshots.0 += other.snapshots.0;
        self.snapshots.1 += other.snapshots.1;
        self.peak_log_len = self.peak_log_len.max(other.peak_log_len);
        self.reconfigs += other.reconfigs;
        self.reads.0 += other.reads.0;
        self.reads.1 += other.reads.1;
        self.disk_losses.0 += other.disk_losses.0;
        self.disk_losses.1 += other.disk_losses.1;
        self.situations.add(other.situations);
        self.failures.extend(other.failures);
    }
}

/// Runs every seed of `spec` on `spec.jobs` threads. `on_done` is called
/// after each seed (for progress reporting) with that seed's report.
pub fn sweep(spec: &SweepSpec, on_done: &(dyn Fn(&RunReport) + Sync)) -> SweepSummary {
    let next = AtomicU64::new(spec.from);
    let total = Mutex::new(SweepSummary::default());
    std::thread::scope(|s| {
        for _ in 0..spec.jobs.max(1) {
            s.spawn(|| {
                let mut local = SweepSummary::default();
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= spec.to {
                        break;
                    }
                    let mut report = run(spec.config(seed));
                    report.history.clear();
                    report.history.shrink_to_fit();
                    on_done(&report);
                    local.add(report);
                }
                total.lock().expect("summary lock").merge(local);
            });
        }
    });
    let mut summary = total.into_inner().expect("summary lock");
    summary.failures.sort_by_key(|r| r.seed);
    summary
}
