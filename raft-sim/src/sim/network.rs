//! The simulated network: sending (loss, duplication, latency with a fixed
//! speed per directed link, long detours that reorder), delivery, and the
//! set of cut links that partitions are made of.

use std::collections::BTreeSet;

use raft_core::{Event, Index, Message, NodeId};
use rand::Rng;

use super::Sim;
use super::node::Request;
use super::queue::Ev;
use crate::timeline::Mark;
use raft_driver_std::proposals::ProposalError;
use raft_driver_std::raftkv::store::KvResult;
use raft_driver_std::reads::ReadFailure;

/// Why a node could not answer a client: the driver's proposal or read error.
#[derive(Clone, Debug)]
pub(super) enum ClientError {
    /// A write (or a read through the log) failed.
    Proposal(ProposalError),
    /// A read served without the log failed (it never takes effect).
    Read(ReadFailure),
}

/// Client ids live above node ids so both share one address space.
pub(super) const CLIENT_BASE: u64 = 1000;

/// What travels over the network.
#[derive(Clone, Debug)]
pub(super) enum NetMsg {
    /// Raft traffic between nodes.
    Raft(Message),
    /// A client's request to a node.
    Request(Request),
    /// A node's answer to a client: the store's result and the log index it
    /// was applied at, or why there is none (the driver's error).
    Reply { client: u64, seq: u64, result: Result<(KvResult, Index), ClientError> },
}

/// Which links are cut, and the speed of each link.
pub(super) struct Network {
    /// Cut directed links `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Seeds the per-link latency factors.
    link_salt: u64,
    /// A uniform sample (reservoir) of the Raft messages sent so far in the
    /// run, any of which the network may deliver again at any later time.
    old: Vec<(NodeId, NodeId, Message)>,
    /// Raft messages offered to the reservoir.
    sent: u64,
    /// Stalled directed links: they accept messages and deliver none (a TCP
    /// connection whose packets are dropped while the sender's buffer
    /// fills), until they resume.
    stalled: BTreeSet<(NodeId, NodeId)>,
    /// What stalled links hold, in send order.
    held: Vec<(NodeId, NodeId, Message)>,
}

/// How many messages stalled links hold in all (a socket buffer's worth);
/// later ones are lost, as a full send queue drops them.
const HELD_MESSAGES: usize = 2048;

/// How many old messages the network keeps for redelivery.
const OLD_MESSAGES: usize = 256;

impl Network {
    /// A network with every link up; `link_salt` fixes the link speeds.
    pub(super) fn new(link_salt: u64) -> Network {
        Network {
            cut: BTreeSet::new(),
            link_salt,
            old: Vec::new(),
            sent: 0,
            stalled: BTreeSet::new(),
            held: Vec::new(),
        }
    }

    /// Stalls every link of `a`, both ways.
    pub(super) fn stall(&mut self, ids: &[NodeId], a: NodeId) {
        for &b in ids.iter().filter(|&&b| b != a) {
            self.stalled.insert((a, b));
            self.stalled.insert((b, a));
        }
    }

    /// Whether the link `from -> to` is stalled.
    pub(super) fn is_stalled(&self, from: u64, to: u64) -> bool {
        !self.stalled.is_empty() && self.stalled.contains(&(from, to))
    }

    /// A stalled link takes a message it will not deliver for now.
    fn hold(&mut self, from: NodeId, to: NodeId, m: Message) -> bool {
        if self.held.len() < HELD_MESSAGES {
            self.held.push((from, to, m));
            return true;
        }
        false
    }

    /// Ends every stall; returns what the links held, in send order.
    fn resume_all(&mut self) -> Vec<(NodeId, NodeId, Message)> {
        self.stalled.clear();
        std::mem::take(&mut self.held)
    }

    /// Whether the link `from -> to` is cut.
    pub(super) fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut.contains(&(from, to))
    }

    /// Whether any link is cut or stalled.
    pub(super) fn is_partitioned(&self) -> bool {
        !self.cut.is_empty() || !self.stalled.is_empty()
    }

    /// The sending side of every cut link, in link order.
    pub(super) fn cut_senders(&self) -> Vec<NodeId> {
        self.cut.iter().map(|&(a, _)| a).collect()
    }

    /// Restores every link.
    pub(super) fn heal(&mut self) {
        self.cut.clear();
    }

    /// Restores the links from `a` to the others (not those back to it).
    pub(super) fn heal_outbound(&mut self, a: NodeId) {
        self.cut.retain(|&(from, _)| from != a);
    }

    /// Cuts the link `a -> b` only (a node is never cut from itself).
    pub(super) fn cut_one_way(&mut self, a: NodeId, b: NodeId) {
        if a != b {
            self.cut.insert((a, b));
        }
    }

    /// Cuts every link, both ways, between `side` and the rest of `ids`.
    pub(super) fn isolate(&mut self, ids: &[NodeId], side: &[NodeId]) {
        for &a in side {
            for &b in ids {
                if !side.contains(&b) {
                    self.cut.insert((a, b));
                    self.cut.insert((b, a));
                }
            }
        }
    }

    /// Each directed link has its own speed for the whole run (0.5x to 2x
    /// the profile's latency), so some paths are consistently slower, as in
    /// a real network; derived from the seed, not drawn per message.
    pub(super) fn link_factor(&self, from: u64, to: u64) -> f64 {
        let mut x = self.link_salt ^ from.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ to.rotate_left(32);
        // splitmix64 finaliser: a well-mixed, deterministic hash.
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        0.5 + 1.5 * (x as f64 / u64::MAX as f64)
    }
}

impl Sim {
    /// Sends `msg` from `from` to `to` (node or client ids): lost on a cut
    /// link or by the profile's loss rate, otherwise delivered once or twice
    /// after a random latency.
    pub(super) fn send(&mut self, from: u64, to: u64, msg: NetMsg) {
        let kind = match &msg {
            NetMsg::Raft(m) if self.rec.timeline_on() && from < CLIENT_BASE && to < CLIENT_BASE => {
                Some(crate::fmt::kind(m))
            }
            _ => None,
        };
        if self.net.is_cut(from, to) || self.chance(self.cfg.profile.drop) {
            self.mark_message(kind, from, to, None);
            return;
        }
        if self.cfg.profile.old_messages > 0.0
            && let NetMsg::Raft(m) = &msg
        {
            self.keep_old(from, to, m);
            if self.chance(self.cfg.profile.old_messages) {
                self.redeliver_old();
            }
        }
        let copies = if self.chance(self.cfg.profile.duplicate) { 2 } else { 1 };
        let link_factor = self.net.link_factor(from, to);
        let mut msg = Some(msg);
        for copy in 0..copies {
            let arrive_us = self.now + self.latency(link_factor);
            self.mark_message(kind, from, to, Some(arrive_us));
            // Clone only for a duplicate; the last copy takes the message.
            let msg = if copy + 1 == copies { msg.take() } else { msg.clone() }.expect("message");
            self.push(arrive_us, Ev::Deliver { from, to, msg });
        }
    }

    /// The stalled links resume (at a heal): either the stalled connections
    /// come back to life and deliver what they held, late and in order, or
    /// (as the real transport does when it replaces a stalled connection)
    /// all of it is lost.
    pub(super) fn resume_stalls(&mut self) {
        let held = self.net.resume_all();
        if held.is_empty() || self.rng.gen_bool(0.5) {
            self.stats.stalled_lost += held.len() as u64;
            return;
        }
        let mut at = self.now;
        for (from, to, m) in held {
            at = at.max(self.now + self.latency(1.0)) + 1;
            self.stats.stalled_delivered += 1;
            self.push(at, Ev::Deliver { from, to, msg: NetMsg::Raft(m) });
        }
    }

    /// Offers a sent message to the reservoir of old ones (Algorithm R: every
    /// message sent so far is equally likely to be in it).
    fn keep_old(&mut self, from: NodeId, to: NodeId, m: &Message) {
        self.net.sent += 1;
        if self.net.old.len() < OLD_MESSAGES {
            self.net.old.push((from, to, m.clone()));
            return;
        }
        let slot = self.rng.gen_range(0..self.net.sent);
        if let Some(kept) = self.net.old.get_mut(slot as usize) {
            *kept = (from, to, m.clone());
        }
    }

    /// Delivers a copy of a message sent earlier in the run, any time ago
    /// (Raft assumes arbitrary delay and duplication), unless its link is
    /// cut now.
    fn redeliver_old(&mut self) {
        if self.net.old.is_empty() {
            return;
        }
        let pick = self.rng.gen_range(0..self.net.old.len());
        let (from, to, m) = self.net.old[pick].clone();
        if self.net.is_cut(from, to) {
            return;
        }
        self.stats.old_messages += 1;
        let at = self.now + self.latency(1.0);
        self.push(at, Ev::Deliver { from, to, msg: NetMsg::Raft(m) });
    }

    /// One copy's latency on a link of speed `link_factor`, sometimes with a
    /// long detour.
    pub(super) fn latency(&mut self, link_factor: f64) -> u64 {
        let (lo, hi) = self.cfg.profile.latency_us;
        let mut latency = (self.rng.gen_range(lo..=hi) as f64 * link_factor) as u64;
        if self.chance(self.cfg.profile.delay) {
            latency += self.rng.gen_range(0..=self.cfg.profile.slow_latency_us);
        }
        latency
    }

    /// Marks a message between nodes on the timeline (`kind` is `None` for
    /// anything else, or when there is no timeline).
    fn mark_message(&mut self, kind: Option<&'static str>, from: u64, to: u64, arrive_us: Option<u64>) {
        if let Some(kind) = kind {
            self.rec.timeline.push(Mark::Message { from, to, sent_us: self.now, arrive_us, kind });
        }
    }

    /// A message arrives.
    pub(super) fn deliver(&mut self, from: u64, to: u64, msg: NetMsg) {
        // A partition that started while the message was in flight drops it.
        if self.net.is_cut(from, to) {
            return;
        }
        match msg {
            NetMsg::Raft(message) if self.net.is_stalled(from, to) => {
                self.net.hold(from, to, message);
            }
            NetMsg::Raft(message) => {
                let Some(term) = self.nodes.get(&to).and_then(|n| n.node.as_ref()).map(|n| n.term()) else {
                    return;
                };
                // Figure 2: a message from an older term is refused; it
                // must never change the receiver's log, nor any other state.
                let stale = message.term < term;
                let pre_vote = matches!(&message.body, raft_core::MessageBody::RequestVote(r) if r.pre_vote);
                let before = stale.then(|| self.nodes[&to].node.as_ref().map(|n| self.observable(n))).flatten();
                self.stepping.stale_delivery = stale;
                self.stats.stale_deliveries += u64::from(stale);
                self.stats.pre_votes += u64::from(pre_vote);
                self.heard(to, from, message.term);
                self.step(to, Event::Message { from, message });
                self.stepping.stale_delivery = false;
                let Some(after) = self.nodes[&to].node.as_ref() else { return };
                if pre_vote && after.term() != term {
                    let detail = format!("node {to} moved from term {term} to {} on a pre-vote request", after.term());
                    return self.fail("pre-vote", detail);
                }
                if let Some(before) = before {
                    let now = self.observable(after);
                    if now != before {
                        let detail = format!("node {to} changed on a message of an older term: {before:?} -> {now:?}");
                        self.fail("stale term", detail);
                    }
                }
            }
            NetMsg::Request(cmd) => self.request(to, cmd),
            NetMsg::Reply { client, seq, result } => self.client_reply(client, seq, result),
        }
    }
}
