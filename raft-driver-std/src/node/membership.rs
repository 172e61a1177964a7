//! Membership in the driver: keeping the transport's peers in step with the
//! configuration the core holds, and the admin requests (change the
//! membership, transfer leadership) that wait on the node thread for their
//! outcome.
//!
//! Addresses travel with the configuration ([`crate::members`]). On every
//! configuration change the members with a known address become peers; a
//! member that a *committed* configuration no longer has, and that this
//! node saw as a member before, is refused by the transport from then on
//! (removed peers are disconnected and their handshakes refused). Members
//! this node never knew of are never refused: one added while this node
//! lagged may be its leader, and it introduces itself in its handshake.

use std::collections::BTreeSet;
use std::fmt;

use crossbeam_channel::Sender;
use raft_core::{Index, Membership, MembershipChange, MembershipError, Node, NodeId, Role, Term};

use super::driver::Driver;
use crate::members::{MemberAddr, Members};
use crate::state_machine::StateMachine;

/// Why an admin request (membership change or leadership transfer) did not
/// succeed, and whether it may still have taken effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminError {
    /// The core refused it; nothing changed. [`MembershipError::is_retryable`]
    /// says whether the same request can succeed later.
    Refused(MembershipError),
    /// This node stopped leading before the change committed: it may still
    /// commit under the next leader. Read the membership to find out.
    LeadershipLost,
    /// A new leader overwrote the change's entry: it did not take effect.
    Overwritten,
    /// The transfer was abandoned after an election timeout (the target did
    /// not win); this node still leads.
    TransferFailed,
    /// No answer in time; the change may still take effect.
    Timeout,
    /// The node stopped.
    Stopped,
}

impl AdminError {
    /// Whether the request may have taken effect (`false`: certainly not).
    pub fn may_have_taken_effect(&self) -> bool {
        matches!(self, AdminError::LeadershipLost | AdminError::Timeout | AdminError::Stopped)
    }

    /// Whether asking again (at the leader) can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            AdminError::Refused(e) => e.is_retryable(),
            AdminError::Stopped => false,
            _ => true,
        }
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Refused(e) => write!(f, "refused: {e}"),
            AdminError::LeadershipLost => {
                f.write_str("leadership lost before the change committed; it may still take effect")
            }
            AdminError::Overwritten => {
                f.write_str("the change was overwritten by a new leader; it did not take effect")
            }
            AdminError::TransferFailed => {
                f.write_str("the transfer timed out: the target did not win an election; leadership did not move")
            }
            AdminError::Timeout => f.write_str("timed out; the change may still take effect"),
            AdminError::Stopped => f.write_str("node stopped"),
        }
    }
}

impl std::error::Error for AdminError {}

/// The answer channel of an admin request.
pub(super) type AdminTx<T> = Sender<Result<T, AdminError>>;

/// A membership change appended at `(index, term)`, waiting to commit (for
/// a joint change, until the `C_new` after it commits).
struct PendingChange {
    index: Index,
    term: Term,
    reply: AdminTx<Membership>,
}

/// The driver's membership state.
pub(super) struct MembershipState {
    /// Addresses of the first configuration's members (from the options).
    initial: Members,
    /// Every id this node has seen as a member of a configuration it held.
    known: BTreeSet<NodeId>,
    /// The refused set last given to the transport.
    refused: Vec<NodeId>,
    /// The configuration (its entry's index) the refused set was last
    /// worked out for once committed: it only changes with the membership.
    refused_for: Option<Index>,
    /// A change request not yet appended (waiting for the core's answer).
    asked: Option<AdminTx<Membership>>,
    pending: Option<PendingChange>,
    transfer: Option<(NodeId, AdminTx<()>)>,
}

impl MembershipState {
    pub(super) fn new(initial: Members, node: &Node) -> MembershipState {
        let mut known: BTreeSet<NodeId> = node.membership().members().into_iter().collect();
        known.extend(initial.0.keys().copied());
        MembershipState {
            initial,
            known,
            refused: Vec::new(),
            refused_for: None,
            asked: None,
            pending: None,
            transfer: None,
        }
    }

    /// The address book in force: the configuration's context over the
    /// initial addresses.
    pub(super) fn book(&self, membership: &Membership) -> Members {
        let mut book = self.initial.clone();
        match Members::decode(&membership.context) {
            Ok(context) => book.0.extend(context.0),
            Err(e) => tracing::warn!(%e, "ignoring a configuration's address book"),
        }
        book
    }
}

impl<S: StateMachine> Driver<S> {
    /// The configuration in force changed: connect to its members.
    pub(super) fn membership_changed(&mut self, membership: &Membership) {
        let me = self.node.id();
        self.shared_membership = std::sync::Arc::new(membership.clone());
        // Worked out again once this configuration is committed.
        self.membership.refused_for = None;
        let book = self.membership.book(membership);
        let mut peers = Vec::new();
        for id in membership.members() {
            self.membership.known.insert(id);
            if id == me {
                continue;
            }
            match book.get(id) {
                Some(addr) => peers.push((id, addr.peer)),
                None => tracing::warn!(node = me, member = id, "no address known for a member"),
            }
        }
        if let Err(e) = self.transport.set_peers(&peers) {
            tracing::error!(node = me, %e, "cannot start a peer writer");
        }
    }

    /// After every step: refuse removed members once the configuration
    /// that removed them is committed here, and settle admin requests.
    pub(super) fn after_membership_step(&mut self) {
        let node = &self.node;
        let m = node.membership();
        // Not before this node is in a configuration at all (a node that
        // joins knows the cluster's members, and must not refuse them).
        let committed = node.membership_index() <= node.commit_index() && !m.voters.is_empty();
        if committed && self.membership.refused_for != Some(node.membership_index()) {
            self.membership.refused_for = Some(node.membership_index());
            let refused: Vec<NodeId> =
                self.membership.known.iter().copied().filter(|&id| id != node.id() && !m.contains(id)).collect();
            if refused != self.membership.refused {
                self.transport.refuse(&refused);
                self.membership.refused = refused;
            }
        }
        self.settle_change();
        self.settle_transfer();
    }

    /// Starts a change: the address book of the result goes with it.
    pub(super) fn change_membership(
        &mut self,
        change: MembershipChange,
        addr: Option<(NodeId, MemberAddr)>,
        reply: AdminTx<Membership>,
    ) {
        if self.membership.asked.is_some() || self.membership.pending.is_some() {
            let _ = reply.send(Err(AdminError::Refused(MembershipError::ChangeInProgress)));
            return;
        }
        let mut book = self.membership.book(self.node.membership());
        // The first configuration's members are in the options; this node's
        // own address is what the transport advertises.
        let me = self.node.id();
        let service = self.service_addr.or_else(|| book.get(me).and_then(|a| a.service));
        book.0.insert(me, MemberAddr { peer: self.transport.advertised_addr(), service });
        if let Some((id, a)) = addr {
            book.0.insert(id, a);
        }
        self.membership.asked = Some(reply);
        let event = raft_core::Event::ChangeMembership { change, context: Some(book.encode()) };
        if let Err(e) = self.step(event) {
            tracing::error!(node = me, %e, "step failed");
        }
        // `ChangeProposed` / `ChangeRejected` answered it (see `change_answered`).
        if let Some(reply) = self.membership.asked.take() {
            let _ = reply.send(Err(AdminError::Stopped));
        }
    }

    /// The core's answer to the change just stepped.
    pub(super) fn change_answered(&mut self, result: Result<(Index, Term), MembershipError>) {
        let Some(reply) = self.membership.asked.take() else { return };
        match result {
            Ok((index, term)) => self.membership.pending = Some(PendingChange { index, term, reply }),
            Err(e) => {
                let _ = reply.send(Err(AdminError::Refused(e)));
            }
        }
    }

    fn settle_change(&mut self) {
        let Some(p) = &self.membership.pending else { return };
        let node = &self.node;
        let done = node.commit_index() >= p.index
            && !node.membership().is_joint()
            && node.membership_index() <= node.commit_index();
        let outcome = if node.term_at(p.index).is_some_and(|t| t != p.term) {
            Some(Err(AdminError::Overwritten))
        } else if done {
            // Checked before leadership: a leader that removed itself steps
            // down in the very step that commits the change.
            Some(Ok(node.membership().clone()))
        } else if node.role() != Role::Leader {
            Some(Err(AdminError::LeadershipLost))
        } else {
            None
        };
        if let Some(outcome) = outcome {
            let p = self.membership.pending.take().expect("pending");
            let _ = p.reply.send(outcome);
        }
    }

    /// Starts a leadership transfer.
    pub(super) fn transfer_leadership(&mut self, to: NodeId, reply: AdminTx<()>) {
        if self.membership.transfer.is_some() {
            let _ = reply.send(Err(AdminError::Refused(MembershipError::TransferInProgress)));
            return;
        }
        self.membership.transfer = Some((to, reply));
        if let Err(e) = self.step(raft_core::Event::TransferLeadership { to }) {
            tracing::error!(node = self.node.id(), %e, "step failed");
        }
    }

    /// The core refused the transfer just stepped.
    pub(super) fn transfer_refused(&mut self, error: MembershipError) {
        if let Some((_, reply)) = self.membership.transfer.take() {
            let _ = reply.send(Err(AdminError::Refused(error)));
        }
    }

    fn settle_transfer(&mut self) {
        let Some((to, _)) = &self.membership.transfer else { return };
        let node = &self.node;
        let outcome = if node.leader() == Some(*to) {
            Some(Ok(()))
        } else if node.role() == Role::Leader && node.transfer_target().is_none() {
            Some(Err(AdminError::TransferFailed))
        } else if node.role() != Role::Leader && node.leader().is_some() {
            // Someone else won: leadership moved, though not where asked.
            Some(Err(AdminError::LeadershipLost))
        } else {
            None
        };
        if let Some(outcome) = outcome {
            let (_, reply) = self.membership.transfer.take().expect("transfer");
            let _ = reply.send(outcome);
        }
    }

    /// Fails the admin requests still waiting (the node stops).
    pub(super) fn fail_admin(&mut self) {
        if let Some(p) = self.membership.pending.take() {
            let _ = p.reply.send(Err(AdminError::Stopped));
        }
        if let Some((_, reply)) = self.membership.transfer.take() {
            let _ = reply.send(Err(AdminError::Stopped));
        }
    }
}
