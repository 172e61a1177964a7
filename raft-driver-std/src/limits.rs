//! One set of size limits for the whole driver.
//!
//! Three layers bound sizes: `raft-core` (the largest command and the batches it sends), the peer
//! transport (the largest frame it accepts, so a hostile length prefix cannot make it allocate
//! gigabytes), and an application's client protocol (the largest value a client may send). If they are
//! configured apart they drift, and a command that one layer accepts is refused by the next one
//! without a clear answer. [`Limits`] is the single source: the core configuration, the frame codec
//! and (in raftkv) the RESP parser all derive their bounds from it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Size limits, from which every layer takes its bounds.
///
/// Every node of a cluster should use the same values: a follower whose frame limit is smaller than the
/// leader's batches would refuse them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest command (log entry payload) accepted. A larger proposal is refused at once with
    /// [`raft_core::ProposeError::EntryTooLarge`], before it reaches the node thread.
    pub max_entry_bytes: usize,
    /// Target payload bytes of one AppendEntries batch (one entry is always sent whole, however large).
    pub max_batch_bytes: usize,
    /// Most entries in one AppendEntries batch.
    pub max_batch_entries: usize,
    /// Most AppendEntries batches in flight to one follower (the pipelining window).
    pub max_inflight_batches: usize,
    /// Most entries the leader holds uncommitted before refusing proposals with
    /// [`raft_core::ProposeError::Backpressure`].
    pub max_uncommitted_entries: usize,
}

impl Default for Limits {
    /// `raft-core`'s defaults: 16 MiB commands, 1 MiB / 4096-entry batches, 256 batches in flight.
    fn default() -> Self {
        let core = raft_core::Config::new(1, vec![1]);
        Limits {
            max_entry_bytes: core.max_entry_bytes,
            max_batch_bytes: core.max_bytes_per_msg,
            max_batch_entries: core.max_entries_per_msg,
            max_inflight_batches: core.max_inflight_msgs,
            max_uncommitted_entries: core.max_uncommitted_entries,
        }
    }
}

/// Per-entry bytes a frame may need beyond the payloads: postcard varints for index, term, kind and
/// length are at most 10 + 10 + 1 + 10.
const ENTRY_OVERHEAD_BYTES: usize = 32;
/// Bytes a frame may need beyond its entries (message header, terms, indexes).
const MESSAGE_OVERHEAD_BYTES: usize = 4096;

/// Why a [`Limits`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitsError {
    /// A limit is zero (`name` is the field).
    Zero {
        /// The field's name.
        name: &'static str,
    },
    /// The frame these limits need does not fit the transport's 32-bit length prefix.
    FrameTooLarge {
        /// The frame size the limits imply.
        frame_bytes: u64,
    },
}

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitsError::Zero { name } => write!(f, "limit {name} must be above 0"),
            LimitsError::FrameTooLarge { frame_bytes } => write!(
                f,
                "limits need peer frames of {frame_bytes} bytes, above the 4 GiB a frame can carry; \
                 lower max_entry_bytes, max_batch_bytes or max_batch_entries"
            ),
        }
    }
}

impl std::error::Error for LimitsError {}

impl Limits {
    /// Checks that no limit is zero and that the largest frame fits a `u32` length prefix.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let fields = [
            ("max_entry_bytes", self.max_entry_bytes),
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_batch_entries", self.max_batch_entries),
            ("max_inflight_batches", self.max_inflight_batches),
            ("max_uncommitted_entries", self.max_uncommitted_entries),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| *v == 0) {
            return Err(LimitsError::Zero { name });
        }
        let frame_bytes = self.frame_bytes_u64();
        if frame_bytes > u64::from(u32::MAX) {
            return Err(LimitsError::FrameTooLarge { frame_bytes });
        }
        Ok(())
    }

    /// Copies the limits into a core configuration (everything but ids, timing and protocol switches).
    pub fn apply_to(&self, config: &mut raft_core::Config) {
        config.max_entry_bytes = self.max_entry_bytes;
        config.max_bytes_per_msg = self.max_batch_bytes;
        config.max_entries_per_msg = self.max_batch_entries;
        config.max_inflight_msgs = self.max_inflight_batches;
        config.max_uncommitted_entries = self.max_uncommitted_entries;
    }

    /// The largest peer frame these limits can produce: a full batch plus one maximal entry (the core
    /// may start a batch with an entry larger than the batch target), with per-entry and per-message
    /// overhead. The transport refuses larger frames. Saturates on absurd values;
    /// [`Limits::validate`] refuses those.
    pub fn max_frame_bytes(&self) -> usize {
        usize::try_from(self.frame_bytes_u64()).unwrap_or(usize::MAX)
    }

    fn frame_bytes_u64(&self) -> u64 {
        let b = |v: usize| v as u64;
        b(self.max_batch_bytes)
            .saturating_add(b(self.max_entry_bytes))
            .saturating_add(b(self.max_batch_entries).saturating_add(1).saturating_mul(b(ENTRY_OVERHEAD_BYTES)))
            .saturating_add(b(MESSAGE_OVERHEAD_BYTES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_core_defaults_and_round_trip_into_a_config() {
        let limits = Limits::default();
        assert_eq!(limits.validate(), Ok(()));
        let mut config = raft_core::Config::new(1, vec![1]);
        let custom = Limits {
            max_entry_bytes: 1000,
            max_batch_bytes: 2000,
            max_batch_entries: 3,
            max_inflight_batches: 4,
            max_uncommitted_entries: 5,
        };
        custom.apply_to(&mut config);
        assert_eq!(
            (
                config.max_entry_bytes,
                config.max_bytes_per_msg,
                config.max_entries_per_msg,
                config.max_inflight_msgs,
                config.max_uncommitted_entries
            ),
            (1000, 2000, 3, 4, 5)
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_frame_holds_a_full_batch_and_a_maximal_entry() {
        let limits = Limits::default();
        let frame = limits.max_frame_bytes();
        assert!(frame >= limits.max_batch_bytes + limits.max_entry_bytes + limits.max_batch_entries * 31);
        // Not absurdly more than needed: the bound is what protects against hostile length prefixes.
        assert!(frame <= limits.max_batch_bytes + limits.max_entry_bytes + (limits.max_batch_entries + 1) * 32 + 4096);
    }

    #[test]
    fn zero_and_oversized_limits_are_refused_by_name() {
        let zero = Limits { max_batch_entries: 0, ..Limits::default() };
        assert_eq!(zero.validate(), Err(LimitsError::Zero { name: "max_batch_entries" }));
        assert!(zero.validate().unwrap_err().to_string().contains("max_batch_entries"));
        let huge = Limits { max_entry_bytes: u32::MAX as usize, ..Limits::default() };
        assert!(matches!(huge.validate(), Err(LimitsError::FrameTooLarge { .. })));
        let absurd = Limits { max_entry_bytes: usize::MAX, ..Limits::default() };
        assert_eq!(absurd.max_frame_bytes(), usize::MAX);
    }
}
