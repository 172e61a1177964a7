//! Cluster administration over the client port: the `RAFT` command.
//!
//! | command | effect |
//! |---|---|
//! | `RAFT MEMBERS` | the configuration: one line per member (`id=N role=voter\|learner\|outgoing peer=ADDR client=ADDR`) after a header line |
//! | `RAFT ADD-LEARNER ID PEER_ADDR CLIENT_ADDR` | add a new member as a learner (it catches up, then can be promoted) |
//! | `RAFT PROMOTE ID` | make a caught-up learner a voter (`-TRYAGAIN` while it is behind) |
//! | `RAFT REMOVE ID` | remove a voter (the leader too) or a learner |
//! | `RAFT REPLACE OLD NEW` | in one joint change, make learner NEW a voter and remove voter OLD |
//! | `RAFT TRANSFER-LEADER ID` | hand leadership to voter ID |
//!
//! Any node accepts them: a follower forwards the command to the leader
//! (once: a node that receives a forwarded command and does not lead
//! answers `-TRYAGAIN`). A change is answered once it has committed (a
//! joint one once the final configuration has), with `+OK` and the
//! configuration in force. Errors say whether the request may have taken
//! effect: `-TRYAGAIN` means it certainly did not and may succeed if sent
//! again (another change in progress, a learner still catching up, no
//! leader); `-ERR ...; nothing changed` is a refusal that will not succeed
//! as asked; `-UNCERTAIN ... may still take effect` is uncertain: read `RAFT MEMBERS` to find out.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use raft_core::{Membership, MembershipChange, NodeId, Role};

use super::Shared;
use crate::members::{MemberAddr, Members};
use crate::node::AdminError;
use crate::raftkv::resp::{self, Reply};

/// The command name.
pub const ADMIN_COMMAND: &str = "RAFT";
/// The form a follower forwards to the leader (never forwarded again).
pub const FORWARDED_ADMIN_COMMAND: &str = "RAFT.FORWARDED";

/// How long a change may take to commit before the answer says it timed out.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest reply relayed from the leader.
const MAX_RELAYED_REPLY: usize = 1 << 20;

/// Runs `RAFT args...`; `may_forward` is false for a forwarded command.
pub(super) fn command(shared: &Shared, args: &[Bytes], may_forward: bool) -> Reply {
    let Some(sub) = args.first() else {
        return Reply::error("ERR wrong number of arguments for 'raft' command");
    };
    let sub = String::from_utf8_lossy(sub).to_ascii_uppercase();
    let rest = &args[1..];
    if sub == "MEMBERS" {
        return members_reply(shared);
    }
    let status = shared.node.status();
    if status.role != Role::Leader {
        return match (status.leader, may_forward) {
            (Some(leader), true) => forward(shared, leader, args),
            (Some(leader), false) => Reply::error(format!(
                "TRYAGAIN node {} is not the leader (node {leader} is); nothing changed",
                shared.node_id
            )),
            (None, _) => Reply::error("TRYAGAIN no leader known; nothing changed"),
        };
    }
    let parsed = parse(&sub, rest, &status.membership);
    let (change, addr) = match parsed {
        Ok(Request::Change(change, addr)) => (change, addr),
        Ok(Request::Transfer(to)) => {
            return match shared.node.transfer_leadership(to, ADMIN_TIMEOUT) {
                Ok(()) => Reply::Simple(format!("OK node {to} leads")),
                Err(e) => admin_error_reply(&e),
            };
        }
        Err(reply) => return reply,
    };
    match shared.node.change_membership(change, addr, ADMIN_TIMEOUT) {
        Ok(m) => Reply::Simple(format!("OK {}", membership_text(&m))),
        Err(e) => admin_error_reply(&e),
    }
}

enum Request {
    Change(MembershipChange, Option<(NodeId, MemberAddr)>),
    Transfer(NodeId),
}

fn parse(sub: &str, args: &[Bytes], current: &Membership) -> Result<Request, Reply> {
    let id = |i: usize| -> Result<NodeId, Reply> {
        let raw =
            args.get(i).ok_or_else(|| Reply::error(format!("ERR RAFT {sub}: missing node id; nothing changed")))?;
        std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()).filter(|&id| id != 0).ok_or_else(|| {
            Reply::error(format!("ERR RAFT {sub}: bad node id {:?}; nothing changed", String::from_utf8_lossy(raw)))
        })
    };
    let addr = |i: usize| -> Result<SocketAddr, Reply> {
        let raw =
            args.get(i).ok_or_else(|| Reply::error(format!("ERR RAFT {sub}: missing address; nothing changed")))?;
        std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
            Reply::error(format!("ERR RAFT {sub}: bad address {:?}; nothing changed", String::from_utf8_lossy(raw)))
        })
    };
    let arity = |n: usize| -> Result<(), Reply> {
        if args.len() == n {
            Ok(())
        } else {
            Err(Reply::error(format!("ERR RAFT {sub}: expected {n} argument(s), got {}; nothing changed", args.len())))
        }
    };
    match sub {
        "ADD-LEARNER" => {
            arity(3)?;
            let (id, peer, client) = (id(0)?, addr(1)?, addr(2)?);
            let a = MemberAddr { peer, service: Some(client) };
            Ok(Request::Change(MembershipChange::AddLearner(id), Some((id, a))))
        }
        "PROMOTE" => {
            arity(1)?;
            Ok(Request::Change(MembershipChange::Promote(id(0)?), None))
        }
        "REMOVE" => {
            arity(1)?;
            Ok(Request::Change(MembershipChange::Remove(id(0)?), None))
        }
        "REPLACE" => {
            arity(2)?;
            let (old, new) = (id(0)?, id(1)?);
            let mut voters: Vec<NodeId> = current.voters.iter().copied().filter(|&v| v != old).collect();
            voters.push(new);
            let learners = current.learners.iter().copied().filter(|&l| l != new).collect();
            Ok(Request::Change(MembershipChange::Set { voters, learners }, None))
        }
        "TRANSFER-LEADER" => {
            arity(1)?;
            Ok(Request::Transfer(id(0)?))
        }
        other => Err(Reply::error(format!(
            "ERR unknown RAFT subcommand '{other}' (MEMBERS, ADD-LEARNER, PROMOTE, REMOVE, REPLACE, TRANSFER-LEADER)"
        ))),
    }
}

/// The RESP error for an admin failure, saying whether it may have taken effect.
pub(super) fn admin_error_reply(e: &AdminError) -> Reply {
    match e {
        AdminError::Refused(m) if m.is_retryable() => Reply::error(format!("TRYAGAIN {m}; nothing changed")),
        AdminError::Refused(m) => Reply::error(format!("ERR {m}; nothing changed")),
        AdminError::Overwritten | AdminError::TransferFailed => Reply::error(format!("TRYAGAIN {e}")),
        other if other.may_have_taken_effect() => {
            Reply::error(format!("{} {other}; the change may still take effect", super::UNCERTAIN))
        }
        other => Reply::error(format!("ERR {other}")),
    }
}

/// `voters=1,2,3 learners=4` (and `outgoing=...` while joint).
pub fn membership_text(m: &Membership) -> String {
    let ids = |v: &[NodeId]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let mut s = format!("voters={}", ids(&m.voters));
    if m.is_joint() {
        s.push_str(&format!(" outgoing={}", ids(&m.outgoing)));
    }
    s.push_str(&format!(" learners={}", ids(&m.learners)));
    s
}

/// The address book in force: the configuration's, with the cluster file's
/// entries for its members (the same precedence as [`client_addr_of`]).
pub(super) fn address_book(shared: &Shared, membership: &Membership) -> Members {
    let mut book = Members::decode(&membership.context).unwrap_or_default();
    for n in &shared.cluster.nodes {
        book.0.insert(n.id, MemberAddr { peer: n.peer_addr, service: Some(n.client_addr) });
    }
    book
}

/// Where member `id` serves clients, if known: the cluster file's address
/// for its members (what the first configuration's book holds too), else
/// the replicated address book. Called per forwarded request, so the common
/// case decodes nothing.
pub(super) fn client_addr_of(shared: &Shared, id: NodeId) -> Option<SocketAddr> {
    if let Some(n) = shared.cluster.node(id) {
        return Some(n.client_addr);
    }
    let status = shared.node.status();
    Members::decode(&status.membership.context).ok()?.get(id).and_then(|a| a.service)
}

fn members_reply(shared: &Shared) -> Reply {
    let status = shared.node.status();
    let m = &status.membership;
    let book = address_book(shared, m);
    let committed = status.membership_index <= status.commit_index;
    let mut text = format!(
        "leader={} term={} index={} committed={} joint={} {}\n",
        status.leader.map_or("none".into(), |l| l.to_string()),
        status.term,
        status.membership_index,
        if committed { "yes" } else { "no" },
        if m.is_joint() { "yes" } else { "no" },
        membership_text(m),
    );
    for id in m.members() {
        let role = if m.voters.contains(&id) {
            "voter"
        } else if m.outgoing.contains(&id) {
            "outgoing"
        } else {
            "learner"
        };
        let a = book.get(id);
        let peer = a.map_or("?".into(), |a| a.peer.to_string());
        let client = a.and_then(|a| a.service).map_or("?".into(), |c| c.to_string());
        text.push_str(&format!("id={id} role={role} peer={peer} client={client}\n"));
    }
    Reply::Bulk(Bytes::from(text))
}

/// Sends the command to the leader as `RAFT.FORWARDED` and relays its answer.
fn forward(shared: &Shared, leader: NodeId, args: &[Bytes]) -> Reply {
    let Some(addr) = client_addr_of(shared, leader) else {
        return Reply::error(format!(
            "TRYAGAIN the leader, node {leader}, has no known client address; nothing changed"
        ));
    };
    match relay(addr, args) {
        Ok(reply) => reply,
        Err(RelayError::NotSent(why)) => {
            Reply::error(format!("TRYAGAIN cannot reach the leader at {addr}: {why}; nothing changed"))
        }
        Err(RelayError::NoAnswer(why)) => Reply::error(format!(
            "{} no answer from the leader at {addr} ({why}); the change may still take effect",
            super::UNCERTAIN
        )),
    }
}

enum RelayError {
    NotSent(String),
    NoAnswer(String),
}

fn relay(addr: SocketAddr, args: &[Bytes]) -> Result<Reply, RelayError> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| RelayError::NotSent(e.to_string()))?;
    let deadline = Instant::now() + ADMIN_TIMEOUT + Duration::from_secs(2);
    stream.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| RelayError::NotSent(e.to_string()))?;
    let mut out = BytesMut::new();
    let mut request: Vec<&[u8]> = vec![FORWARDED_ADMIN_COMMAND.as_bytes()];
    request.extend(args.iter().map(|a| a.as_ref()));
    resp::encode_request(&request, &mut out);
    stream.write_all(&out).map_err(|e| RelayError::NotSent(e.to_string()))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(reply) = parse_simple_reply(&buf).map_err(RelayError::NoAnswer)? {
            return Ok(reply);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(RelayError::NoAnswer("connection closed".into())),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RELAYED_REPLY {
                    return Err(RelayError::NoAnswer("oversized reply".into()));
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return Err(RelayError::NoAnswer("timed out".into()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RelayError::NoAnswer(e.to_string())),
        }
    }
}

/// Parses a `+line`, `-line` or `$len` bulk reply (what admin commands answer) from the front of
/// `buf`; `Ok(None)` while incomplete.
pub fn parse_simple_reply(buf: &[u8]) -> Result<Option<Reply>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    match buf.first() {
        Some(b'+') => Ok(Some(Reply::Simple(line))),
        Some(b'-') => Ok(Some(Reply::Error(line))),
        Some(b'$') => {
            let len: usize = line.parse().map_err(|_| format!("bad bulk length {line:?}"))?;
            let start = end + 2;
            if buf.len() < start + len + 2 {
                return Ok(None);
            }
            Ok(Some(Reply::Bulk(Bytes::copy_from_slice(&buf[start..start + len]))))
        }
        Some(b'=') => {
            // RESP3 verbatim string: `=len\r\ntxt:...`.
            let len: usize = line.parse().map_err(|_| format!("bad verbatim length {line:?}"))?;
            let start = end + 2;
            if buf.len() < start + len + 2 {
                return Ok(None);
            }
            Ok(Some(Reply::Bulk(Bytes::copy_from_slice(&buf[start + 4..start + len]))))
        }
        other => Err(format!("unexpected reply type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_replies_parse_and_errors_say_whether_anything_changed() {
        assert_eq!(parse_simple_reply(b"+OK voters=1\r\n"), Ok(Some(Reply::Simple("OK voters=1".into()))));
        assert_eq!(parse_simple_reply(b"-TRYAGAIN x\r\n"), Ok(Some(Reply::Error("TRYAGAIN x".into()))));
        assert_eq!(parse_simple_reply(b"$3\r\nabc\r\n"), Ok(Some(Reply::Bulk(Bytes::from_static(b"abc")))));
        assert_eq!(parse_simple_reply(b"$3\r\nab"), Ok(None));
        assert_eq!(parse_simple_reply(b"+OK"), Ok(None));
        assert!(parse_simple_reply(b":1\r\n").is_err());

        use raft_core::MembershipError as M;
        let text = |e: AdminError| match admin_error_reply(&e) {
            Reply::Error(t) => t,
            other => panic!("{other:?}"),
        };
        assert!(text(AdminError::Refused(M::ChangeInProgress)).starts_with("TRYAGAIN"));
        assert!(
            text(AdminError::Refused(M::NoVoters)).starts_with("ERR")
                && text(AdminError::Refused(M::NoVoters)).contains("nothing changed")
        );
        assert!(text(AdminError::Timeout).contains("may still take effect"));
        assert!(text(AdminError::LeadershipLost).contains("may still take effect"));
        for maybe in [AdminError::Timeout, AdminError::LeadershipLost, AdminError::Stopped] {
            assert!(text(maybe).starts_with("UNCERTAIN "), "{}", text(maybe));
        }
        assert!(text(AdminError::Overwritten).starts_with("TRYAGAIN"));
    }

    #[test]
    fn membership_is_shown_compactly() {
        let m = Membership { voters: vec![1, 4], outgoing: vec![1, 2], learners: vec![5], context: Bytes::new() };
        assert_eq!(membership_text(&m), "voters=1,4 outgoing=1,2 learners=5");
        assert_eq!(membership_text(&Membership::new(vec![3])), "voters=3 learners=");
    }
}
