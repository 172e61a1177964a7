//! Fault profiles: how hostile the simulated world is.

use std::fmt;

/// All fault knobs of one run. Times are virtual microseconds;
/// probabilities are per message (or per opportunity).
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// The profile's name (`calm`, `lossy`, ...).
    pub name: &'static str,
    /// One-way network latency range.
    pub latency_us: (u64, u64),
    /// Probability a message is lost.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Probability a message takes a long detour (up to `slow_latency_us`),
    /// which reorders it behind later ones.
    pub delay: f64,
    /// Latency of a delayed message.
    pub slow_latency_us: u64,
    /// fsync latency range.
    pub fsync_us: (u64, u64),
    /// Probability an fsync is very slow (a slow disk).
    pub slow_disk: f64,
    /// Latency of a slow fsync.
    pub slow_fsync_us: u64,
    /// Mean time between partitions (0 = never).
    pub partition_every_us: u64,
    /// How long a partition lasts.
    pub partition_for_us: (u64, u64),
    /// Mean time between crashes (0 = never).
    pub crash_every_us: u64,
    /// How long a crashed node stays down.
    pub down_for_us: (u64, u64),
    /// Maximum clock drift: each node ticks at `tick * (1 ± drift)`.
    pub clock_drift: f64,
    /// Leaders serve reads from leases (`Config::lease_reads`), with the
    /// drift bound this much clock drift calls for (`None`: no leases). The
    /// `lease` profile's covers its `clock_drift`; `lease-drift`'s does not.
    pub lease_reads: Option<f64>,
    /// Some faults slow a node's clock to a quarter of its speed for a
    /// while (`partition_for_us`), the leader's most often.
    pub slow_clocks: bool,
    /// Probability that a crash also costs the node's disk synced log
    /// entries (a cut segment, a record failing its check), which its
    /// driver notices ([`raft_core::Node::begin_repair`]). Never on two
    /// nodes at once and only in clusters of three or more voters: with a
    /// majority losing what it acknowledged, no protocol can keep its
    /// guarantees, and a two-voter cluster needs the repairing node's vote.
    pub disk_loss: f64,
    /// Probability, per message sent, that the network also delivers a copy
    /// of a random message sent earlier in the run (any time ago, across
    /// elections and restarts): Raft assumes arbitrary delay.
    pub old_messages: f64,
}

impl Profile {
    /// Every named profile, in the order `--profile` lists them.
    pub const NAMES: [&'static str; 5] = ["calm", "lossy", "partitions", "crashes", "chaos"];

    /// Profiles only chosen by name, never by seed: `lease` is `chaos` with
    /// lease reads (its clocks drift 5%, inside the configured bound).
    ///
    /// `lease-drift` is `lease` with clock faults beyond the bound (a node's
    /// clock, most often the leader's, slowed to a quarter of its speed for a
    /// while) and with frequent partitions instead of crashes: it shows the checker catching leases that outlive
    /// the followers' promise (ReadIndex under the same clocks is `chaos`,
    /// whose clocks drift 10%).
    /// `slow-clocks` is `lease-drift` with ReadIndex instead of leases: the
    /// same clock faults, which ReadIndex does not depend on.
    pub const EXTRA: [&'static str; 3] = ["lease", "lease-drift", "slow-clocks"];

    /// A named profile.
    pub fn named(name: &str) -> Option<Profile> {
        let calm = Profile {
            name: "calm",
            latency_us: (200, 2_000),
            drop: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            slow_latency_us: 0,
            fsync_us: (100, 2_000),
            slow_disk: 0.0,
            slow_fsync_us: 0,
            partition_every_us: 0,
            partition_for_us: (0, 0),
            crash_every_us: 0,
            down_for_us: (0, 0),
            clock_drift: 0.0,
            lease_reads: None,
            slow_clocks: false,
            disk_loss: 0.0,
            old_messages: 0.0,
        };
        let p = match name {
            "calm" => calm,
            "lossy" => Profile {
                name: "lossy",
                drop: 0.05,
                duplicate: 0.03,
                delay: 0.03,
                slow_latency_us: 60_000,
                old_messages: 0.01,
                ..calm
            },
            "partitions" => Profile {
                name: "partitions",
                drop: 0.01,
                partition_every_us: 300_000,
                partition_for_us: (50_000, 400_000),
                clock_drift: 0.05,
                ..calm
            },
            "crashes" => Profile {
                name: "crashes",
                slow_disk: 0.02,
                slow_fsync_us: 80_000,
                crash_every_us: 250_000,
                down_for_us: (10_000, 300_000),
                clock_drift: 0.05,
                disk_loss: 0.2,
                ..calm
            },
            "chaos" => Profile {
                name: "chaos",
                latency_us: (200, 8_000),
                drop: 0.05,
                duplicate: 0.03,
                delay: 0.03,
                slow_latency_us: 60_000,
                slow_disk: 0.02,
                slow_fsync_us: 80_000,
                partition_every_us: 400_000,
                partition_for_us: (50_000, 400_000),
                crash_every_us: 400_000,
                down_for_us: (10_000, 300_000),
                clock_drift: 0.1,
                disk_loss: 0.15,
                old_messages: 0.01,
                ..calm
            },
            "lease" => Profile {
                name: "lease",
                clock_drift: 0.05,
                lease_reads: Some(0.05),
                ..Profile::named("chaos").expect("chaos")
            },
            "lease-drift" => Profile {
                name: "lease-drift",
                clock_drift: 0.05,
                slow_clocks: true,
                // Frequent, long partitions and no crashes: a cut-off
                // leader that keeps its lease is what this profile is for.
                drop: 0.01,
                partition_every_us: 150_000,
                partition_for_us: (150_000, 400_000),
                crash_every_us: 0,
                ..Profile::named("lease").expect("lease")
            },
            "slow-clocks" => Profile {
                name: "slow-clocks",
                lease_reads: None,
                ..Profile::named("lease-drift").expect("lease-drift")
            },
            _ => return None,
        };
        Some(p)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}
