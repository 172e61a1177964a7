//! Running a request through the log from any node: proposing it on the leader, forwarding it from a
//! follower, retrying until the bound, and saying what the client may conclude when it gives up.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use raft_core::{NodeId, ProposeError, Role};

use super::{FORWARD_COMMAND, Shared, TRYAGAIN_NO_LEADER, UNCERTAIN, result_reply};
use crate::node::ProposalResult;
use crate::oneshot;
use crate::proposals::ProposalError;
use crate::raftkv::resp::{self, Reply};
use crate::raftkv::store::{KvOp, KvRequest, KvResult, KvStore};
use crate::raftkv::unix_ms;
use crate::reads::ReadFailure;

/// How one attempt to run a request ended.
#[derive(Debug)]
pub(super) enum Attempt {
    /// The command ran: the answer for the client (a result, or the store's error for the command).
    Done(Reply),
    /// Try again (the same `(session, seq)`); `may_have_applied` says whether this attempt may have
    /// taken effect.
    Retry { why: String, may_have_applied: bool },
    /// Final, and this attempt certainly did not take effect (the `-ERR ...` reply for the client).
    Refused(Reply),
    /// Final, and this attempt may have taken effect (why).
    Unknown(String),
}

impl Attempt {
    pub(super) fn retry(why: impl Into<String>, may_have_applied: bool) -> Attempt {
        Attempt::Retry { why: why.into(), may_have_applied }
    }
}

/// What a proposal error means for the attempt. This and [`ProposalError::is_retryable`] /
/// [`ProposalError::may_have_taken_effect`] are the only places that decide it.
pub(super) fn proposal_attempt(error: ProposalError) -> Attempt {
    let may_have_applied = error.may_have_taken_effect();
    if error.is_retryable() {
        Attempt::retry(error.to_string(), may_have_applied)
    } else if may_have_applied {
        Attempt::Unknown(error.to_string())
    } else {
        Attempt::Refused(Reply::error(format!("ERR {error}; nothing was applied")))
    }
}

/// The `-UNCERTAIN` reply: the command may or may not have taken effect. A write with a session says
/// how to retry it exactly once from any connection (`RAFTKV.SESSION`, see [`super::SESSION_COMMAND`]).
fn uncertain_reply(request: &KvRequest, why: &str) -> Reply {
    let mut text = format!("{UNCERTAIN} {why}; the command may or may not have been applied");
    if request.session != 0 {
        text.push_str(&format!(
            "; to retry it exactly once, on any connection send {} {} {} then the same command",
            super::SESSION_COMMAND,
            request.session,
            request.seq
        ));
    }
    Reply::error(text)
}

/// The client's reply when an attempt ended the command without a result. `may_have_applied` says
/// whether an earlier attempt may have taken effect. `-TRYAGAIN` and `-ERR` only when no attempt may
/// have taken effect; a read never takes effect.
fn final_reply(request: &KvRequest, attempt: Attempt, may_have_applied: bool) -> Reply {
    let earlier = may_have_applied && !request.op.is_read_only();
    match attempt {
        Attempt::Done(reply) => reply,
        Attempt::Refused(reply) if earlier => {
            let why = match &reply {
                Reply::Error(text) => text.trim_end_matches("; nothing was applied").to_string(),
                other => format!("{other:?}"),
            };
            uncertain_reply(request, &format!("an earlier attempt may have been applied, then: {why}"))
        }
        Attempt::Refused(reply) => reply,
        Attempt::Unknown(why) if request.op.is_read_only() => {
            Reply::error(format!("ERR {why}; a read changes nothing"))
        }
        Attempt::Unknown(why) => uncertain_reply(request, &why),
        // The retry bound passed.
        Attempt::Retry { .. } if earlier => {
            uncertain_reply(request, "no leader confirmed the command within the retry bound")
        }
        Attempt::Retry { .. } => Reply::error(TRYAGAIN_NO_LEADER),
    }
}

/// Runs `request` through the log via whichever node leads, retrying with the same `(session, seq)`
/// until it gets a reply or the retry bound passes.
pub(super) fn execute(shared: &Shared, request: &mut KvRequest) -> Reply {
    let deadline = Instant::now() + shared.options.retry_bound;
    let first = attempt(shared, request, deadline);
    execute_after(shared, request, deadline, first)
}

/// [`execute`] once the first attempt ended with `outcome` (the event loop proposes a write
/// itself, and a worker takes over here when that attempt did not settle it): retries with the
/// same `(session, seq)` until `deadline`.
pub(super) fn execute_after(
    shared: &Shared,
    request: &mut KvRequest,
    deadline: Instant,
    mut outcome: Attempt,
) -> Reply {
    let mut delay = Duration::from_millis(5);
    let mut may_have_applied = false;
    loop {
        let Attempt::Retry { why, may_have_applied: maybe } = &outcome else {
            return final_reply(request, outcome, may_have_applied);
        };
        may_have_applied |= *maybe;
        tracing::debug!(session = request.session, seq = request.seq, %why, maybe, "retrying command");
        let now = Instant::now();
        if now >= deadline {
            return final_reply(request, outcome, may_have_applied);
        }
        std::thread::sleep(delay.min(deadline - now));
        delay = (delay * 2).min(Duration::from_millis(50));
        outcome = attempt(shared, request, deadline);
    }
}

/// Read-only ops in database `db` (one, or several of a pipeline), served on this node without the
/// log (ReadIndex or the lease; a follower asks the leader for the read index and answers from its
/// own store), together: one read round (or one lease check) for all of them, answered in order.
/// Retried until the retry bound on every failure but a stopped node; a read never takes effect,
/// so giving up is `-TRYAGAIN`.
pub(super) fn read_many(shared: &Shared, db: u8, ops: Vec<KvOp>) -> Vec<Reply> {
    let deadline = Instant::now() + shared.options.retry_bound;
    let mut delay = Duration::from_millis(2);
    let ops = std::sync::Arc::new(ops);
    let failed = |reply: Reply, n: usize| vec![reply; n];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let batch = std::sync::Arc::clone(&ops);
        let now_ms = unix_ms();
        let read = shared.node.read(
            move |kv: &KvStore| batch.iter().map(|op| kv.query_in(db, op, now_ms)).collect::<Vec<_>>(),
            remaining,
        );
        match read {
            Ok(results) => return results.into_iter().map(read_reply).collect(),
            Err(ReadFailure::Stopped) => {
                return failed(Reply::error("ERR node stopped; nothing was applied"), ops.len());
            }
            Err(error) => tracing::debug!(%error, "retrying pipelined reads"),
        }
        let now = Instant::now();
        if now >= deadline {
            return failed(Reply::error(TRYAGAIN_NO_LEADER), ops.len());
        }
        std::thread::sleep(delay.min(deadline - now));
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// The client's reply to one served read ([`KvStore::query_in`]'s answer; `None` for an op that
/// is not a read, which the callers never send).
pub(super) fn read_reply(result: Option<KvResult>) -> Reply {
    result
        .map_or_else(|| Reply::error("ERR internal error: not a read-only command; nothing was applied"), result_reply)
}

/// One attempt: propose on this node if it leads, else forward to the leader it knows.
fn attempt(shared: &Shared, request: &mut KvRequest, deadline: Instant) -> Attempt {
    let status = shared.node.status();
    if !status.running {
        // Nothing of this attempt reached the node.
        return proposal_attempt(ProposalError::StoppedBeforeProposing);
    }
    request.now_ms = unix_ms();
    let encoded = request.encode();
    if status.role == Role::Leader {
        let remaining = deadline.saturating_duration_since(Instant::now());
        return match shared.node.propose_wait(encoded, remaining) {
            Ok(result) => Attempt::Done(result_reply(result)),
            Err(error) => proposal_attempt(error),
        };
    }
    let max = shared.node.max_entry_bytes();
    if encoded.len() > max {
        // Refused here, as the leader would: the same error, without a round trip.
        return proposal_attempt(ProposalError::Refused(ProposeError::EntryTooLarge { size: encoded.len(), max }));
    }
    let Some(leader) = status.leader else { return Attempt::retry("no leader known", false) };
    match super::admin::client_addr_of(shared, leader) {
        Some(addr) => shared.links.forward(shared, leader, addr, &encoded, deadline),
        None => Attempt::retry(format!("leader {leader} has no known client address"), false),
    }
}

/// A forwarded request on the leader: answered already, or proposed and waiting for its result.
pub(super) enum Forwarded {
    Answered(Reply),
    Proposed { result: oneshot::Receiver<ProposalResult<KvResult>>, deadline: Instant },
}

/// `RAFTKV.FORWARD <request> [timeout ms]` from a follower: proposes the request as-is without
/// waiting, so that every forwarded request a connection carries is proposed at once (the follower
/// multiplexes its clients' requests over a few connections). [`finish_forwarded`] waits for the
/// answer.
pub(super) fn start_forwarded(shared: &Shared, args: &[Bytes]) -> Forwarded {
    let (Some(payload), true) = (args.first(), args.len() <= 2) else {
        let reply = Reply::error(format!("ERR wrong number of arguments for '{FORWARD_COMMAND}' command"));
        return Forwarded::Answered(reply);
    };
    let timeout = match args.get(1) {
        None => shared.options.retry_bound,
        Some(ms) => match resp::parse_i64(ms) {
            Some(ms) if ms >= 0 => Duration::from_millis(ms as u64).min(shared.options.retry_bound),
            _ => return Forwarded::Answered(Reply::error("ERR invalid timeout")),
        },
    };
    if KvRequest::decode(payload).is_err() {
        return Forwarded::Answered(Reply::error("ERR malformed forwarded request"));
    }
    if shared.node.status().role != Role::Leader {
        return Forwarded::Answered(Reply::error(format!("TRYAGAIN node {} is not the leader", shared.node_id)));
    }
    let deadline = Instant::now() + timeout;
    // Copy: the argument shares the connection's read buffer, and log entries live long.
    Forwarded::Proposed { result: shared.node.propose(Bytes::copy_from_slice(payload)), deadline }
}

/// The leader's answer to a forwarded request: the postcard [`KvResult`] as a bulk string, or an
/// error: `-TRYAGAIN` (certainly not applied) or `-UNCERTAIN` (may have been applied) for the
/// follower to retry, `-ERR` for a final refusal.
pub(super) fn finish_forwarded(shared: &Shared, forwarded: Forwarded) -> Reply {
    let (result, deadline) = match forwarded {
        Forwarded::Answered(reply) => return reply,
        Forwarded::Proposed { result, deadline } => (result, deadline),
    };
    let result = match result.recv_deadline(deadline) {
        Ok(result) => result,
        Err(oneshot::RecvTimeoutError::Timeout) => Err(ProposalError::Timeout),
        Err(oneshot::RecvTimeoutError::Disconnected) => Err(ProposalError::Stopped),
    };
    match result {
        Ok(result) => Reply::Bulk(result.encode()),
        Err(error) => forwarded_error_reply(shared.node_id, error),
    }
}

/// The leader's answer to a forwarded request that failed: `-TRYAGAIN` (certainly not applied) or
/// `-UNCERTAIN` (may have been applied) for the follower to retry, `-ERR` for a final refusal. The
/// follower may find another leader: a stopped one is not final for it.
fn forwarded_error_reply(node_id: NodeId, error: ProposalError) -> Reply {
    match error {
        ProposalError::StoppedBeforeProposing => {
            Reply::error(format!("TRYAGAIN leader {node_id} stopped before proposing the command"))
        }
        ProposalError::Stopped => Reply::error(format!("{UNCERTAIN} leader {node_id} stopped")),
        error => match proposal_attempt(error) {
            Attempt::Retry { why, may_have_applied: false } => Reply::error(format!("TRYAGAIN {why}")),
            Attempt::Retry { why, may_have_applied: true } | Attempt::Unknown(why) => {
                Reply::error(format!("{UNCERTAIN} {why}"))
            }
            Attempt::Done(reply) | Attempt::Refused(reply) => reply,
        },
    }
}

/// Sends `AUTH password` on a fresh forwarding connection and waits for its `+OK` (the cluster's
/// nodes share the client password, so a follower authenticates like any client).
pub(super) fn authenticate(mut stream: &TcpStream, password: &Bytes, deadline: Instant) -> Result<(), String> {
    let mut request = BytesMut::new();
    let args = [Bytes::from_static(b"AUTH"), password.clone()];
    resp::encode(&Reply::Array(args.into_iter().map(Reply::Bulk).collect()), resp::Protocol::Resp2, &mut request);
    stream.write_all(&request).map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err("connection closed".into()),
            Ok(_) => line.push(byte[0]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return Err("no answer".into());
                }
            }
            Err(e) => return Err(e.to_string()),
        }
        if line.len() > 1024 {
            return Err("answer too long".into());
        }
    }
    if line == b"+OK\r\n" { Ok(()) } else { Err(String::from_utf8_lossy(&line).trim_end().to_owned()) }
}

/// Parses one forwarded reply from the front of `buf`: `$<len>` carrying a postcard [`KvResult`], or an
/// error line (`-TRYAGAIN` and `-UNCERTAIN` mean retry). Returns `Ok(None)` while incomplete, `Err` on
/// anything else (the connection is dropped).
pub(super) fn parse_forward_reply(buf: &[u8]) -> Result<Option<(Attempt, usize)>, String> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() > 64 * 1024 { Err("unterminated reply line".into()) } else { Ok(None) };
    };
    if line_end == 0 {
        return Err("empty reply line".into());
    }
    let line = &buf[1..line_end];
    match buf.first() {
        Some(b'$') => {
            let len = resp::parse_i64(line).filter(|&n| n >= 0).ok_or("bad bulk length in forwarded reply")? as usize;
            let start = line_end + 2;
            let Some(end) = start.checked_add(len) else { return Err("bulk length overflow".into()) };
            if buf.len() < end + 2 {
                return Ok(None);
            }
            let result = KvResult::decode(&buf[start..end]).map_err(|e| format!("undecodable forwarded reply: {e}"))?;
            Ok(Some((Attempt::Done(result_reply(result)), end + 2)))
        }
        Some(b'-') => {
            let text = String::from_utf8_lossy(line).into_owned();
            let attempt = if text.starts_with("TRYAGAIN") {
                Attempt::retry(text, false)
            } else if text.starts_with(UNCERTAIN) {
                Attempt::retry(text, true)
            } else {
                // Every other error the leader answers refuses the request before proposing it.
                Attempt::Refused(Reply::Error(text))
            };
            Ok(Some((attempt, line_end + 2)))
        }
        _ => Err("unexpected reply to forwarded request".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(parsed: Result<Option<(Attempt, usize)>, String>) -> Option<(&'static str, usize)> {
        match parsed {
            Ok(Some((Attempt::Done(_), used))) => Some(("done", used)),
            Ok(Some((Attempt::Refused(_), used))) => Some(("refused", used)),
            Ok(Some((Attempt::Unknown(_), used))) => Some(("unknown", used)),
            Ok(Some((Attempt::Retry { may_have_applied: false, .. }, used))) => Some(("certainly-not", used)),
            Ok(Some((Attempt::Retry { may_have_applied: true, .. }, used))) => Some(("maybe", used)),
            Ok(None) => None,
            Err(_) => Some(("broken", 0)),
        }
    }

    #[test]
    fn forward_replies_parse() {
        let result = KvResult::Integer(7).encode();
        let mut wire = format!("${}\r\n", result.len()).into_bytes();
        wire.extend_from_slice(&result);
        wire.extend_from_slice(b"\r\n");
        for cut in 0..wire.len() {
            assert!(matches!(parse_forward_reply(&wire[..cut]), Ok(None)), "cut at {cut}");
        }
        let Ok(Some((Attempt::Done(r), used))) = parse_forward_reply(&wire) else { panic!("complete reply") };
        assert_eq!((r, used), (Reply::Integer(7), wire.len()));
        assert_eq!(kind(parse_forward_reply(b"-TRYAGAIN x\r\n")), Some(("certainly-not", 13)));
        assert_eq!(kind(parse_forward_reply(b"-UNCERTAIN x\r\n")), Some(("maybe", 14)));
        assert_eq!(kind(parse_forward_reply(b"-ERR x\r\n")), Some(("refused", 8)));
        assert_eq!(kind(parse_forward_reply(b"+OK\r\n")), Some(("broken", 0)));
        assert_eq!(kind(parse_forward_reply(b"$-5\r\n")), Some(("broken", 0)));
        assert_eq!(kind(parse_forward_reply(b"\r\n")), Some(("broken", 0)));
    }

    fn write() -> KvRequest {
        KvRequest { session: 7, seq: 3, now_ms: 0, op: KvOp::IncrBy { key: "k".into(), delta: 1 } }
    }

    fn read() -> KvRequest {
        KvRequest { session: 0, seq: 0, now_ms: 0, op: KvOp::Get { key: "k".into() } }
    }

    fn error_text(reply: Reply) -> String {
        match reply {
            Reply::Error(text) => text,
            other => panic!("not an error: {other:?}"),
        }
    }

    /// The client's reply when `error` ends the only attempt (or the retry bound passes after it), as
    /// `execute` computes it.
    fn client_reply(error: ProposalError, request: &KvRequest) -> String {
        let attempt = proposal_attempt(error);
        let maybe = matches!(attempt, Attempt::Retry { may_have_applied: true, .. });
        error_text(final_reply(request, attempt, maybe))
    }

    #[test]
    fn every_proposal_error_says_whether_it_may_have_applied() {
        use ProposeError as P;
        let certainly_not = [
            ProposalError::Refused(P::NotLeader { leader: None }),
            ProposalError::Refused(P::NotLeader { leader: Some(2) }),
            ProposalError::Refused(P::Backpressure),
            ProposalError::Refused(P::TransferInProgress),
            ProposalError::Overwritten,
        ];
        for error in certainly_not {
            assert_eq!(client_reply(error.clone(), &write()), TRYAGAIN_NO_LEADER, "{error}");
        }
        for error in [ProposalError::LeadershipLost, ProposalError::Timeout, ProposalError::Stopped] {
            let text = client_reply(error.clone(), &write());
            assert!(text.starts_with(&format!("{UNCERTAIN} ")), "{error}: {text}");
            assert!(text.ends_with("RAFTKV.SESSION 7 3 then the same command"), "{error}: {text}");
            // A read never takes effect: it is never uncertain.
            let text = client_reply(error.clone(), &read());
            assert!(!text.starts_with(UNCERTAIN), "{error}: {text}");
        }
        let text = client_reply(ProposalError::StoppedBeforeProposing, &write());
        assert_eq!(text, "ERR node stopped before the command was proposed; nothing was applied");
        let too_large = ProposalError::Refused(ProposeError::EntryTooLarge { size: 20 << 20, max: 16 << 20 });
        let text = client_reply(too_large, &write());
        assert!(text.starts_with("ERR command of 20971520 bytes exceeds the max_entry_bytes limit"), "{text}");
        assert!(text.ends_with("nothing was applied"), "{text}");
    }

    #[test]
    fn a_final_refusal_after_an_uncertain_attempt_is_uncertain() {
        let stopped = proposal_attempt(ProposalError::StoppedBeforeProposing);
        let text = error_text(final_reply(&write(), stopped, true));
        assert!(text.starts_with(UNCERTAIN) && text.contains("node stopped before"), "{text}");
        let from_leader = Attempt::Refused(Reply::error("ERR max number of clients reached"));
        assert!(error_text(final_reply(&write(), from_leader, true)).starts_with(UNCERTAIN));
        let from_leader = Attempt::Refused(Reply::error("ERR max number of clients reached"));
        assert_eq!(error_text(final_reply(&read(), from_leader, true)), "ERR max number of clients reached");
        // A result is the command's outcome, whatever happened before.
        assert_eq!(final_reply(&write(), Attempt::Done(Reply::Integer(1)), true), Reply::Integer(1));
    }

    #[test]
    fn giving_up_says_tryagain_only_when_nothing_may_have_applied() {
        let give_up = |request: &KvRequest, maybe: bool| final_reply(request, Attempt::retry("x", maybe), maybe);
        assert_eq!(give_up(&write(), false), Reply::error(TRYAGAIN_NO_LEADER));
        let uncertain = error_text(give_up(&write(), true));
        assert!(uncertain.starts_with(UNCERTAIN) && uncertain.contains("RAFTKV.SESSION 7 3"), "{uncertain}");
        assert_eq!(give_up(&read(), true), Reply::error(TRYAGAIN_NO_LEADER), "a read never takes effect");
    }

    #[test]
    fn the_leader_tells_a_follower_whether_a_forwarded_request_may_have_applied() {
        let reply = |e| error_text(forwarded_error_reply(1, e));
        assert_eq!(
            reply(ProposalError::StoppedBeforeProposing),
            "TRYAGAIN leader 1 stopped before proposing the command"
        );
        assert_eq!(reply(ProposalError::Stopped), format!("{UNCERTAIN} leader 1 stopped"));
        assert!(reply(ProposalError::Timeout).starts_with(UNCERTAIN));
        assert!(reply(ProposalError::LeadershipLost).starts_with(UNCERTAIN));
        assert!(reply(ProposalError::Overwritten).starts_with("TRYAGAIN "));
        assert!(reply(ProposalError::Refused(ProposeError::NotLeader { leader: None })).starts_with("TRYAGAIN "));
        let too_large = ProposalError::Refused(ProposeError::EntryTooLarge { size: 2, max: 1 });
        assert!(reply(too_large).starts_with("ERR "));
        // And the follower reads the answers back the same way.
        for (wire, kind_) in [
            (format!("-{}\r\n", reply(ProposalError::Stopped)), "maybe"),
            (format!("-{}\r\n", reply(ProposalError::StoppedBeforeProposing)), "certainly-not"),
        ] {
            assert_eq!(kind(parse_forward_reply(wire.as_bytes())).map(|k| k.0), Some(kind_), "{wire}");
        }
    }
}
