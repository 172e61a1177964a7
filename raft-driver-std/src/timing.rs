//! How the driver's clock maps onto `raft-core`'s logical ticks.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Tick length and the heartbeat and election timeouts, in ticks.
///
/// The defaults follow etcd: a 50 ms tick, a heartbeat every 2 ticks (100 ms) and an election timeout
/// of 10 ticks, which `raft-core` randomizes to 0.5–1 s. That is the same order as etcd's and
/// hashicorp/raft's 1 s: long enough that a GC pause, a slow fsync or a loaded CI machine does not
/// trigger spurious elections (10 missed heartbeats), yet short enough that a crashed leader is
/// replaced — timeout, PreVote round, vote round — in well under 2 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// Length of one tick in milliseconds.
    pub tick_ms: u64,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: u32,
    /// Minimum election timeout in ticks (randomized up to twice this).
    pub election_ticks: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { tick_ms: 50, heartbeat_ticks: 2, election_ticks: 10 }
    }
}

/// Why a [`Timing`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimingError(Timing);

impl fmt::Display for TimingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.0;
        write!(
            f,
            "timing needs tick_ms > 0 and 0 < heartbeat_ticks ({}) < election_ticks ({}); tick_ms is {}",
            t.heartbeat_ticks, t.election_ticks, t.tick_ms
        )
    }
}

impl std::error::Error for TimingError {}

impl Timing {
    /// The tick length as a `Duration`.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// Checks that ticks are non-empty and a heartbeat comes well before an election timeout.
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.tick_ms == 0 || self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(TimingError(*self));
        }
        Ok(())
    }

    /// Copies the tick counts into a core configuration.
    pub fn apply_to(&self, config: &mut raft_core::Config) {
        config.election_ticks = self.election_ticks;
        config.heartbeat_ticks = self.heartbeat_ticks;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_bad_values() {
        assert_eq!(Timing::default().validate(), Ok(()));
        for bad in [
            Timing { tick_ms: 0, ..Timing::default() },
            Timing { heartbeat_ticks: 0, ..Timing::default() },
            Timing { heartbeat_ticks: 10, election_ticks: 10, ..Timing::default() },
        ] {
            let error = bad.validate().expect_err("refused");
            assert!(error.to_string().contains(&format!("({})", bad.election_ticks)), "{error}");
        }
    }

    #[test]
    fn apply_to_copies_both_tick_counts() {
        let mut config = raft_core::Config::new(1, vec![1]);
        Timing { tick_ms: 5, heartbeat_ticks: 3, election_ticks: 17 }.apply_to(&mut config);
        assert_eq!((config.heartbeat_ticks, config.election_ticks), (3, 17));
    }
}
