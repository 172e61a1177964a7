//! Compact, readable renderings of messages and actions for traces.

use std::fmt::Write;

use raft_core::{Action, AppendEntriesResponse, Entry, EntryKind, Message, MessageBody, NodeId, Persist};
use raft_driver_std::raftkv::store::{KvOp, KvRequest, SetCondition};

/// `idx/term` plus the payload for normal entries.
pub fn entry(e: &Entry) -> String {
    match e.kind {
        EntryKind::Noop => format!("{}/{} noop", e.index, e.term),
        EntryKind::Config => match raft_core::Membership::decode(&e.data) {
            Ok(m) => format!("{}/{} config {}", e.index, e.term, membership(&m)),
            Err(err) => format!("{}/{} config <{err}>", e.index, e.term),
        },
        EntryKind::Normal => format!("{}/{} {}", e.index, e.term, payload(&e.data)),
    }
}

/// A payload: a raftkv request decoded (`s4294967296#3 set k1=5 nx`), printable text quoted, other
/// bytes by length.
pub fn payload(data: &[u8]) -> String {
    if let Ok(req) = KvRequest::decode(data) {
        return format!("s{}#{} {}", req.session, req.seq, kv_op(&req.op));
    }
    match std::str::from_utf8(data) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => format!("<{} bytes>", data.len()),
    }
}

/// The ops the workload issues, compactly; anything else in Debug form.
fn kv_op(op: &KvOp) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match op {
        KvOp::Set { key, value, condition: SetCondition::IfAbsent, .. } => {
            format!("set {}={} nx", text(key), text(value))
        }
        KvOp::Set { key, value, .. } => format!("set {}={}", text(key), text(value)),
        KvOp::Get { key } => format!("get {}", text(key)),
        KvOp::IncrBy { key, delta: 1 } => format!("incr {}", text(key)),
        KvOp::Del { keys } if keys.len() == 1 => format!("del {}", text(&keys[0])),
        other => format!("{other:?}"),
    }
}

/// A configuration, e.g. `voters=[1,2,3] outgoing=[1,2,4] learners=[5]`.
pub fn membership(m: &raft_core::Membership) -> String {
    let ids = |v: &[NodeId]| v.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let mut s = format!("voters=[{}]", ids(&m.voters));
    if m.is_joint() {
        let _ = write!(s, " outgoing=[{}]", ids(&m.outgoing));
    }
    if !m.learners.is_empty() {
        let _ = write!(s, " learners=[{}]", ids(&m.learners));
    }
    s
}

/// A list of entries, abbreviated when long.
pub fn entries(es: &[Entry]) -> String {
    if es.len() <= 4 {
        let v: Vec<String> = es.iter().map(entry).collect();
        return format!("[{}]", v.join(", "));
    }
    format!("[{} .. {} ({} entries)]", entry(&es[0]), entry(&es[es.len() - 1]), es.len())
}

/// One message, e.g. `AppendEntries t3 prev=5/2 [6/3 noop] commit=5`.
pub fn message(m: &Message) -> String {
    let t = m.term;
    match &m.body {
        MessageBody::RequestVote(r) => {
            let kind = if r.pre_vote { "PreVote" } else { "RequestVote" };
            let transfer = if r.transfer { " transfer" } else { "" };
            format!("{kind} t{t} last={}/{}{transfer}", r.last_log_index, r.last_log_term)
        }
        MessageBody::RequestVoteResponse(r) => {
            let kind = if r.pre_vote { "PreVoteResp" } else { "RequestVoteResp" };
            let verdict = if r.granted { "granted" } else { "rejected" };
            format!("{kind} t{t} {verdict}")
        }
        MessageBody::AppendEntries(a) => {
            let mut s = format!("AppendEntries t{t} prev={}/{}", a.prev_log_index, a.prev_log_term);
            if !a.entries.is_empty() {
                let _ = write!(s, " {}", entries(&a.entries));
            }
            let _ = write!(s, " commit={}", a.leader_commit);
            s
        }
        MessageBody::AppendEntriesResponse(AppendEntriesResponse::Success { match_index }) => {
            format!("AppendResp t{t} ok match={match_index}")
        }
        MessageBody::AppendEntriesResponse(AppendEntriesResponse::Reject {
            rejected_index,
            conflict_term,
            conflict_index,
        }) => {
            let ct = conflict_term.map_or("-".to_string(), |t| t.to_string());
            format!("AppendResp t{t} reject at {rejected_index} (conflict term {ct} from {conflict_index})")
        }
        MessageBody::InstallSnapshot(r) => {
            format!("InstallSnapshot t{t} through {}", snapshot(&r.meta))
        }
        MessageBody::TimeoutNow => format!("TimeoutNow t{t}"),
        MessageBody::ReadIndex(r) => format!("ReadIndex t{t} ctx={}", r.ctx),
        MessageBody::ReadIndexResponse(r) => match r.index {
            Some(i) => format!("ReadIndexResp t{t} ctx={} index={i}", r.ctx),
            None => format!("ReadIndexResp t{t} ctx={} refused", r.ctx),
        },
        MessageBody::ReadRound { seq } => format!("ReadRound t{t} seq={seq}"),
        MessageBody::ReadRoundAck { seq } => format!("ReadRoundAck t{t} seq={seq}"),
    }
}

/// A snapshot's description, e.g. `40/3`.
pub fn snapshot(m: &raft_core::SnapshotMeta) -> String {
    format!("{}/{}", m.last_included_index, m.last_included_term)
}

/// A message's kind in one word (`Heartbeat` is an AppendEntries with no
/// entries): the vocabulary of `expect-count` and of the SVG timeline.
pub fn kind(m: &Message) -> &'static str {
    use raft_core::{AppendEntriesResponse as R, MessageBody as B};
    match &m.body {
        B::RequestVote(r) if r.pre_vote => "PreVote",
        B::RequestVote(_) => "RequestVote",
        B::RequestVoteResponse(r) if r.granted => "VoteGranted",
        B::RequestVoteResponse(_) => "VoteRejected",
        B::AppendEntries(a) if a.entries.is_empty() => "Heartbeat",
        B::AppendEntries(_) => "AppendEntries",
        B::AppendEntriesResponse(R::Success { .. }) => "AppendOk",
        B::AppendEntriesResponse(R::Reject { .. }) => "AppendReject",
        B::InstallSnapshot(_) => "InstallSnapshot",
        B::TimeoutNow => "TimeoutNow",
        B::ReadIndex(_) => "ReadIndex",
        B::ReadIndexResponse(_) => "ReadIndexResp",
        B::ReadRound { .. } => "ReadRound",
        B::ReadRoundAck { .. } => "ReadRoundAck",
    }
}

/// One persist request.
pub fn persist(p: &Persist) -> String {
    let mut s = format!("persist #{}", p.seq);
    if let Some(hs) = p.hard_state {
        let vote = hs.vote.map_or("-".to_string(), |v| v.to_string());
        let _ = write!(s, " term={} vote={vote}", hs.term);
    }
    if let Some(m) = &p.snapshot {
        let _ = write!(s, " log-follows-snapshot={}", snapshot(m));
    }
    if let Some(t) = p.truncate_from {
        let _ = write!(s, " truncate>={t}");
    }
    if !p.entries.is_empty() {
        let _ = write!(s, " {}", entries(&p.entries));
    }
    s
}

/// One action of node `id`, as one trace line.
pub fn action(id: NodeId, a: &Action) -> String {
    match a {
        Action::Send { to, message: m } => format!("{id}->{to} {}", message(m)),
        Action::Persist(p) => format!("{id} {}", persist(p)),
        Action::Apply { entries: es } => format!("{id} apply {}", entries(es)),
        Action::Proposed { first_index, last_index, term } => {
            format!("{id} proposed {first_index}..={last_index} t{term}")
        }
        Action::ProposeRejected { error } => format!("{id} propose rejected: {error}"),
        Action::InstallSnapshot { from, meta } => format!("{id} install snapshot {} from {from}", snapshot(meta)),
        Action::ChangeProposed { index, term, membership: m } => {
            format!("{id} change proposed at {index} t{term}: {}", membership(m))
        }
        Action::ChangeRejected { error } => format!("{id} change rejected: {error}"),
        Action::TransferRejected { error } => format!("{id} transfer rejected: {error}"),
        Action::MembershipChanged { membership: m, index } => {
            format!("{id} membership {} (from {index})", membership(m))
        }
        Action::RoleChanged { role, term, leader } => {
            let l = leader.map_or("none".to_string(), |l| l.to_string());
            format!("{id} is {role} t{term} leader={l}")
        }
        Action::ReadReady { ctx, index } => format!("{id} read {ctx} ready at {index}"),
        Action::ReadRejected { ctx, error } => format!("{id} read {ctx} rejected: {error}"),
    }
}
