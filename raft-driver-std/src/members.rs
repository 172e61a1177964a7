//! Where the members of a cluster are: the address book the std driver
//! replicates inside every configuration ([`raft_core::Membership::context`]).
//!
//! `raft-core` knows members by id only. A node that learns of a new member
//! from the log must also learn how to reach it, and so must every node
//! that becomes leader later; so the addresses travel with the
//! configuration itself, in the log and in snapshots, rather than in a file
//! each node would have to be told about. The first configuration (the
//! voters a cluster starts with) has no context: its addresses come from
//! [`crate::NodeOptions::peers`].
//!
//! Format version 1 ([`MEMBERS_FORMAT_VERSION`]), owned by this module and
//! pinned by `tests/golden/members-v1.bin`: the version byte, then a
//! postcard sequence of [`MemberV1`] (id, peer address, service address),
//! sorted by id. An unknown version is an error, never a guess.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use raft_core::NodeId;
use serde::{Deserialize, Serialize};

/// The version byte [`Members::encode`] writes first.
pub const MEMBERS_FORMAT_VERSION: u8 = 1;

/// How to reach one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberAddr {
    /// Where its peer transport listens.
    pub peer: SocketAddr,
    /// Where it serves the application's clients, if it does (raftkv's
    /// Redis port, which followers forward to); `None` for none.
    pub service: Option<SocketAddr>,
}

/// One member as stored, version 1. Field order is the byte order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberV1 {
    /// The member's id (never 0).
    pub id: NodeId,
    /// Its peer address.
    pub peer: SocketAddr,
    /// Its service address.
    pub service: Option<SocketAddr>,
}

/// The address book: member id to addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members(pub BTreeMap<NodeId, MemberAddr>);

/// A context that is not a valid address book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembersError {
    /// The version byte is not one this build reads.
    UnknownVersion(u8),
    /// The bytes after the version do not decode, or name id 0 or an id twice.
    Malformed(String),
}

impl fmt::Display for MembersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembersError::UnknownVersion(v) => write!(f, "member address book of unknown format version {v}"),
            MembersError::Malformed(why) => write!(f, "malformed member address book: {why}"),
        }
    }
}

impl std::error::Error for MembersError {}

impl Members {
    /// The book as [`raft_core::Membership::context`] bytes.
    pub fn encode(&self) -> Bytes {
        let list: Vec<MemberV1> =
            self.0.iter().map(|(&id, a)| MemberV1 { id, peer: a.peer, service: a.service }).collect();
        let mut out = vec![MEMBERS_FORMAT_VERSION];
        out.extend(postcard::to_allocvec(&list).expect("serializing into a Vec cannot fail"));
        Bytes::from(out)
    }

    /// Parses a configuration's context. Empty bytes (the first
    /// configuration's) are an empty book.
    pub fn decode(bytes: &[u8]) -> Result<Members, MembersError> {
        let Some((&version, rest)) = bytes.split_first() else { return Ok(Members::default()) };
        if version != MEMBERS_FORMAT_VERSION {
            return Err(MembersError::UnknownVersion(version));
        }
        let list: Vec<MemberV1> = match postcard::take_from_bytes(rest) {
            Ok((list, [])) => list,
            Ok((_, extra)) => return Err(MembersError::Malformed(format!("{} trailing bytes", extra.len()))),
            Err(e) => return Err(MembersError::Malformed(e.to_string())),
        };
        let mut book = BTreeMap::new();
        for m in list {
            if m.id == 0 || book.insert(m.id, MemberAddr { peer: m.peer, service: m.service }).is_some() {
                return Err(MembersError::Malformed(format!("member id {} is 0 or repeated", m.id)));
            }
        }
        Ok(Members(book))
    }

    /// The address of `id`, if the book has it.
    pub fn get(&self, id: NodeId) -> Option<&MemberAddr> {
        self.0.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;

    fn book() -> Members {
        let mut m = BTreeMap::new();
        m.insert(
            1,
            MemberAddr { peer: "127.0.0.1:7001".parse().unwrap(), service: Some("127.0.0.1:6379".parse().unwrap()) },
        );
        m.insert(300, MemberAddr { peer: "[::1]:7300".parse().unwrap(), service: None });
        Members(m)
    }

    #[test]
    fn members_golden_file_decodes_and_encodes() {
        let committed = golden::check("members-v1.bin", &book().encode());
        // Version 1, two members; member 1: id 01, then postcard's SocketAddr.
        assert_eq!(committed[..3], [1, 2, 1]);
        assert_eq!(Members::decode(&committed), Ok(book()));
        golden::assert_complete("members-", &["members-v1.bin"]);
    }

    #[test]
    fn members_bad_contexts_are_errors() {
        assert_eq!(Members::decode(&[]), Ok(Members::default()), "the first configuration has no context");
        assert_eq!(Members::decode(&[2, 0]), Err(MembersError::UnknownVersion(2)));
        let good = book().encode();
        for cut in 1..good.len() {
            assert!(Members::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = good.to_vec();
        extra.push(0);
        assert!(matches!(Members::decode(&extra), Err(MembersError::Malformed(_))));
        let dup = [
            MemberV1 { id: 1, peer: "127.0.0.1:1".parse().unwrap(), service: None },
            MemberV1 { id: 1, peer: "127.0.0.1:2".parse().unwrap(), service: None },
        ];
        let mut bytes = vec![1];
        bytes.extend(postcard::to_allocvec(&dup).unwrap());
        assert!(matches!(Members::decode(&bytes), Err(MembersError::Malformed(_))));
    }
}
