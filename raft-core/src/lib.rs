#![no_std]
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

extern crate alloc;

mod config;
mod event;
mod membership;
mod message;
mod types;

pub use config::{Config, ConfigError};
pub use event::{Action, Event, Persist, ProposeError, Role};
pub use membership::{MEMBERSHIP_FORMAT_VERSION, Membership, MembershipChange, MembershipError};
pub use message::{
    AppendEntries, AppendEntriesResponse, InstallSnapshot, Message, MessageBody, ReadIndex, ReadIndexResponse,
    RequestVote, RequestVoteResponse,
};
pub use types::{Entry, EntryKind, HardState, Index, NodeId, PersistedState, Repair, SnapshotMeta, Term};

pub use bytes::Bytes;

mod election;
mod log;
mod node;
mod progress;
mod read;
mod reconfig;
mod replication;
mod snapshot;
mod stats;

pub use node::Node;
pub use progress::{Progress, ProgressState};
pub use read::{ReadError, ReadStats};
pub use stats::Stats;
