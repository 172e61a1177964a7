//! The peer transport: Raft messages between nodes over TCP, on std threads.
//!
//! Each node runs
//! - one **writer thread per peer**, which owns the only outbound connection
//!   to that peer: it connects (retrying with jittered exponential backoff),
//!   performs the [handshake](#wire-format), then drains the peer's bounded
//!   send queue in batches, one `write_all` per batch;
//! - one **listener thread**, which accepts inbound connections;
//! - one **reader thread per inbound connection**, which validates the
//!   handshake and then decodes frames and hands `(from, message)` to the
//!   [`Inbound`] sink.
//!
//! Connections are one-way (a node sends on the connections it opened and
//! receives on those it accepted), so there is no tie-breaking between two
//! nodes dialing each other at the same time.
//!
//! The transport is deliberately lossy: [`Transport::send`] never blocks, a
//! full queue drops the message, and a broken connection loses whatever was
//! in flight. Raft retransmits on its own (heartbeats, AppendEntries
//! retries), whereas a blocking send would let one slow peer stall the whole
//! node.
//!
//! It never reorders, though: what one node sends another arrives in the
//! order sent, with gaps but never an older message after a newer one. Each
//! writer keeps one connection at a time (a replacement starts after the old
//! one is closed), the receiving side registers a new connection from a peer
//! as that peer's newest before reading from it, and a reader delivers a
//! frame only while its connection is still the newest, checked under a
//! per-peer lock that the delivery holds. So once a newer connection from a
//! peer delivered anything, nothing from an older one ever is.
//!
//! # Liveness
//!
//! A closed connection is easy to notice (the writer peeks at an idle one,
//! a write fails). A *stalled* one is not: during a partition that drops
//! packets, writes keep landing in the socket buffer while TCP backs off its
//! retransmissions exponentially, and after the heal nothing crosses until
//! the next retransmission, tens of seconds later. Three mechanisms bound
//! that, on every peer socket, outbound and inbound:
//!
//! - **Peer silence** (application level, outbound). Raft traffic is
//!   bidirectional: every request (append or heartbeat, snapshot offer,
//!   vote, read index, read round) is answered. So when a writer has written
//!   a request and nothing at all has arrived from that peer since, on any
//!   inbound connection, for
//!   [`peer_silence`](TransportConfig::peer_silence), the path is broken: the
//!   writer closes the connection (discarding its unsent bytes, which are
//!   stale by now), counts [`TransportStats::stalls_replaced`] and
//!   reconnects after its backoff. A connection that carries no requests is
//!   never replaced (followers legitimately never write to each other, and
//!   nobody answers an answer), and the backoff only resets once the peer is
//!   heard from again, so a peer that is reachable but mute is redialled at
//!   a rate the backoff bounds, not in a loop.
//! - **`TCP_USER_TIMEOUT`** (Linux, Android, Fuchsia):
//!   [`tcp_user_timeout`](TransportConfig::tcp_user_timeout) bounds how long
//!   written data may stay unacknowledged before the kernel drops the
//!   connection. It covers the direction the silence rule cannot see: a
//!   follower whose answers are stuck while it still hears its leader.
//! - **TCP keepalive**, probing after `peer_silence` of idleness (rounded up
//!   to whole seconds) every second, three times: it ends a connection
//!   whose peer vanished even when nothing is written on it, and it is the
//!   readers' only silence check. A reader does *not* drop an inbound
//!   connection for application-level silence: a writer with nothing to say
//!   is silent legitimately, so doing so would make its connection flap,
//!   while keepalive probes are answered by the peer's kernel whenever the
//!   path works. A stalled inbound connection is also superseded as soon as
//!   its sender reconnects.
//!
//! # Wire format
//!
//! The connecting side sends a 30-byte handshake: magic `RFTx`, wire format
//! version (`u16`, [`WIRE_FORMAT_VERSION`]), cluster id, its node id and the
//! node id it means to reach (`u64` each, all big-endian). The accepting
//! side replies with the magic and one status byte (0 = accepted) and closes
//! the connection on any mismatch, including a version it does not support
//! ([`SUPPORTED_WIRE_VERSIONS`]; status 5). After that the connecting side
//! sends frames: a big-endian `u32` payload length followed by the payload;
//! see [`encode_frame`] and [`decode_frame`].
//!
//! The payload is never a serialization of `raft-core`'s [`Message`]: the
//! `wire` submodule owns a mirror of every message type (`WireMessageV1`
//! and friends) and converts explicitly, so the core types can evolve
//! freely while the bytes between nodes, possibly of two releases during a
//! rolling upgrade, stay what version 1 says. The version is negotiated
//! once per connection in the handshake rather than carried by each frame;
//! the `frame` submodule explains why. Golden files in `tests/golden/` pin
//! every byte, and `docs/formats.md` has the layout and the version policy.

pub mod auth;
mod frame;
#[cfg(test)]
mod golden_tests;
pub mod snapshot_fetch;
#[cfg(test)]
mod tests;
mod wire;

pub use frame::{
    DEFAULT_MAX_FRAME_BYTES, FRAME_HEADER_LEN, FrameError, SUPPORTED_WIRE_VERSIONS, WIRE_FORMAT_VERSION, decode_frame,
    decode_payload, encode_frame, encode_frame_into,
};
pub use wire::WireError;

use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, select};
use raft_core::{Message, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use frame::{ACK_LEN, AckStatus, HANDSHAKE_LEN, Handshake};

/// Default capacity of each peer's send queue, in messages.
pub const DEFAULT_SEND_QUEUE_LEN: usize = 4096;

/// A writer stops draining its queue into a batch once the batch holds this
/// many bytes, so one batch never pins an unbounded buffer.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Payloads are read into memory at most this much ahead of the bytes
/// actually received, so a peer announcing a huge frame and then stalling
/// cannot make us allocate the whole frame up front.
const READ_CHUNK: usize = 1024 * 1024;
/// Buffers that grew past this for one large frame are released afterwards
/// instead of being kept for the connection's lifetime.
const KEEP_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// How often the non-blocking listener polls `accept`. std has no accept
/// timeout; polling keeps shutdown simple and reliable at a negligible cost.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// Configuration of a [`Transport`].
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Identifies the cluster; connections from other clusters are rejected.
    pub cluster_id: u64,
    /// This node's id (never 0).
    pub node_id: NodeId,
    /// Where to accept connections from peers (used by [`Transport::start`]).
    pub listen: SocketAddr,
    /// Every other member of the cluster and its listen address, at start
    /// ([`Transport::set_peers`] changes the set while running). Only these
    /// ids are accepted inbound and only these can be sent to.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Largest accepted frame payload; a larger length prefix closes the
    /// connection. Default [`DEFAULT_MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// Capacity of each peer's send queue, in messages; beyond it
    /// [`Transport::send`] drops. Default [`DEFAULT_SEND_QUEUE_LEN`].
    pub send_queue_len: usize,
    /// First reconnect delay after a failed attempt. Default 50 ms.
    pub backoff_initial: Duration,
    /// Reconnect delays double up to this. Default 1 s.
    pub backoff_max: Duration,
    /// Limit for establishing a TCP connection. Default 1 s.
    pub connect_timeout: Duration,
    /// Limit for a handshake, for any write, and for a started frame to
    /// finish arriving. Default 5 s.
    pub io_timeout: Duration,
    /// How long a writer waits, after writing to a peer, for anything at
    /// all to arrive from that peer before it declares the connection
    /// stalled and replaces it (see [Liveness](self#liveness)); also the
    /// idle time before TCP keepalive starts probing. It should exceed the
    /// peer's longest answer time (the driver uses the longest election
    /// timeout: a follower silent that long has lost its leader anyway).
    /// Default 1 s.
    pub peer_silence: Duration,
    /// `TCP_USER_TIMEOUT` of every peer socket on Linux (ignored elsewhere):
    /// how long written data may stay unacknowledged before the kernel
    /// closes the connection, instead of retransmitting with exponential
    /// backoff for many minutes. Default 5 s, the default `io_timeout`; the
    /// driver uses two election timeouts.
    pub tcp_user_timeout: Duration,
    /// How often blocked threads wake up to notice shutdown (read timeout)
    /// and how often an idle writer checks that its connection is alive.
    /// Default 100 ms.
    pub poll_interval: Duration,
    /// The address peers should dial to reach this node, given in every
    /// handshake (so that a node that has not heard of this one can answer
    /// it) and written into the cluster's address book. `None`: the bound
    /// listen address.
    pub advertise: Option<SocketAddr>,
    /// Where this node's snapshot files are, served to peers that fetch one
    /// (see [`snapshot_fetch`]); `None` answers every fetch with
    /// [`NoSnapshot`](snapshot_fetch::FetchStatus::NoSnapshot).
    pub snapshot_dir: Option<std::path::PathBuf>,
    /// The cluster secret: when set, every connection to or from this node starts with a
    /// challenge-response over it ([`auth`]) and a peer without it is refused, for Raft messages
    /// and snapshot fetches alike. Every node needs the same one. Default `None`.
    pub secret: Option<auth::Secret>,
}

impl TransportConfig {
    /// A configuration with the default limits, backoff and timeouts.
    pub fn new(cluster_id: u64, node_id: NodeId, listen: SocketAddr, peers: Vec<(NodeId, SocketAddr)>) -> Self {
        TransportConfig {
            cluster_id,
            node_id,
            listen,
            peers,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            send_queue_len: DEFAULT_SEND_QUEUE_LEN,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(5),
            peer_silence: Duration::from_secs(1),
            tcp_user_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(100),
            advertise: None,
            snapshot_dir: None,
            secret: None,
        }
    }

    fn validate(&self) -> io::Result<()> {
        let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if self.node_id == 0 {
            return invalid("node id 0 is reserved".into());
        }
        let mut seen = HashSet::new();
        for &(peer, _) in &self.peers {
            if peer == 0 || peer == self.node_id || !seen.insert(peer) {
                return invalid(format!("invalid or duplicate peer id {peer}"));
            }
        }
        if self.max_frame_bytes == 0 || u32::try_from(self.max_frame_bytes).is_err() {
            return invalid("max_frame_bytes must be in 1..=u32::MAX".into());
        }
        if self.send_queue_len == 0 {
            return invalid("send_queue_len must be positive".into());
        }
        // Zero durations would turn waits into busy loops, and std rejects a
        // zero socket timeout outright.
        let durations = [
            self.backoff_initial,
            self.connect_timeout,
            self.io_timeout,
            self.peer_silence,
            self.tcp_user_timeout,
            self.poll_interval,
        ];
        if durations.contains(&Duration::ZERO) || self.backoff_max < self.backoff_initial {
            return invalid("timeouts must be positive and backoff_max >= backoff_initial".into());
        }
        Ok(())
    }
}

/// Where a [`Transport`] delivers the messages it receives.
///
/// Implemented for closures `Fn(NodeId, Message)` and for
/// `crossbeam_channel::Sender<(NodeId, Message)>`. It is called on the
/// connection's reader thread, so a slow sink slows (only) that peer's
/// connection: TCP flow control then pushes back on the sender, whose queue
/// fills and drops. It must not call [`Transport::shutdown`], which joins
/// the reader thread.
pub trait Inbound: Send + Sync + 'static {
    /// Handles one message from peer `from` (already authenticated by the
    /// handshake; the message content is still untrusted).
    fn deliver(&self, from: NodeId, message: Message);
}

impl<F> Inbound for F
where
    F: Fn(NodeId, Message) + Send + Sync + 'static,
{
    fn deliver(&self, from: NodeId, message: Message) {
        self(from, message);
    }
}

impl Inbound for Sender<(NodeId, Message)> {
    /// Blocks while a bounded channel is full (back-pressure, see
    /// [`Inbound`]); discards the message once the receiver is gone, since
    /// nobody is left to care.
    fn deliver(&self, from: NodeId, message: Message) {
        let _ = self.send((from, message));
    }
}

/// Declares the live atomic counters and their public snapshot together so
/// the two can never disagree.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        #[derive(Debug, Default)]
        struct Counters {
            $($name: AtomicU64,)*
        }

        /// A snapshot of a [`Transport`]'s counters (see [`Transport::stats`]).
        /// All count since start; "messages" are Raft messages, not bytes.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct TransportStats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Counters {
            fn snapshot(&self) -> TransportStats {
                TransportStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Messages written to a peer's socket (flushed without error).
    sent,
    /// Messages dropped by [`Transport::send`] because the queue was full.
    dropped_full,
    /// Messages dropped by [`Transport::send`] for an id not in `peers`.
    dropped_unknown_peer,
    /// Peers added because they connected with their listen address
    /// (members this node had not heard of yet).
    peers_learned,
    /// Messages dropped because the transport was shut down.
    dropped_closed,
    /// Queued messages discarded after a failed connection attempt (stale
    /// by the time the peer is reachable again; Raft will resend).
    dropped_unreachable,
    /// Messages dropped because they encode to more than `max_frame_bytes`.
    dropped_oversized,
    /// Messages lost in a batch whose write failed.
    dropped_write,
    /// Outbound connections established (handshake accepted).
    connects,
    /// Outbound connection attempts that failed (TCP, I/O or timeout).
    connect_failures,
    /// Outbound handshakes the peer answered with a rejection.
    handshake_refused,
    /// Established outbound connections lost (write error or peer closed;
    /// not counting `stalls_replaced`).
    disconnects,
    /// Established outbound connections closed and redialled because the
    /// peer stayed silent for `peer_silence` after we wrote to it: a path
    /// that drops packets looks alive to TCP for tens of seconds, so this
    /// is how a partition shows up (see [Liveness](self#liveness)).
    stalls_replaced,
    /// Inbound TCP connections accepted.
    accepted,
    /// Inbound connections closed for a bad handshake: garbage or wrong
    /// magic/version, wrong cluster id, unknown sender, or not addressed to
    /// this node, or no complete handshake within `io_timeout`.
    handshake_rejected,
    /// Inbound connections closed for a bad frame (length over the limit,
    /// undecodable payload, or a frame stalled mid-way).
    bad_frames,
    /// Messages received and delivered to the [`Inbound`] sink.
    received,
    /// Snapshot files sent whole to a fetching peer.
    snapshots_served,
    /// Snapshot file bytes sent to fetching peers.
    snapshot_bytes_sent,
    /// Snapshot files fetched whole from a peer.
    snapshots_fetched,
    /// Snapshot file bytes received from peers.
    snapshot_bytes_received,
}

fn bump(counter: &AtomicU64, by: u64) {
    // Relaxed: the counters are statistics, not synchronisation.
    counter.fetch_add(by, Ordering::Relaxed);
}

/// State shared by all of a transport's threads.
struct Shared {
    config: TransportConfig,
    stats: Counters,
    stopping: AtomicBool,
    inbound: Box<dyn Inbound>,
    /// The peers, by id: where each listens, and the id of the newest
    /// accepted connection from it. A peer's writer keeps one connection at
    /// a time, so when a newer one arrives the old one is dead (e.g. the
    /// peer crashed without a FIN reaching us); its reader notices and exits
    /// instead of lingering forever. A removed peer's counter is set to
    /// `u64::MAX`, which every reader of its connections notices the same way.
    peers: RwLock<HashMap<NodeId, PeerSlot>>,
    /// Each peer's send queue (its writer thread holds the receiver).
    queues: RwLock<HashMap<NodeId, Sender<Message>>>,
    /// Ids whose connections are refused: members a committed
    /// configuration removed ([`Transport::refuse`]).
    refused: RwLock<HashSet<NodeId>>,
    /// The listen address this node gives peers in its handshakes.
    advertise: SocketAddr,
    /// Never sent on; closed on shutdown, which wakes every thread.
    stop_rx: Receiver<()>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_connection_id: AtomicU64,
    /// The origin of the [`Shared::now`] clock.
    epoch: Instant,
}

/// One peer of a running transport.
struct PeerSlot {
    addr: SocketAddr,
    link: Arc<PeerLink>,
    /// Set when the peer is removed: its writer thread exits.
    retired: Arc<AtomicBool>,
}

/// What a peer's readers and its writer share.
#[derive(Default)]
struct PeerLink {
    /// The id of the newest accepted connection from the peer.
    newest_inbound: AtomicU64,
    /// When a frame from the peer last arrived, on any connection
    /// ([`Shared::now`]; 0: never). The writer's silence check reads it.
    last_heard: AtomicU64,
    /// Held by a reader while it checks that its connection is still the
    /// newest and delivers a frame: what keeps a peer's messages in order
    /// across a reconnect (see the [module documentation](self)).
    delivery: Mutex<()>,
    /// Messages written to this peer (the per-peer share of `sent`).
    sent: AtomicU64,
    /// Messages from this peer delivered to the node.
    received: AtomicU64,
    /// Messages to this peer lost after they were queued: a failed write, a
    /// connection that could not be made, or a frame too large to send.
    dropped: AtomicU64,
}

/// One peer's traffic counters ([`Transport::peer_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerStats {
    /// The peer.
    pub id: NodeId,
    /// Messages written to it.
    pub sent: u64,
    /// Messages from it delivered to the node.
    pub received: u64,
    /// Messages to it lost after they were queued (a full queue is counted
    /// only in [`TransportStats::dropped_full`], before any peer is looked up).
    pub dropped: u64,
}

impl PeerSlot {
    fn new(addr: SocketAddr) -> PeerSlot {
        PeerSlot { addr, link: Arc::default(), retired: Arc::new(AtomicBool::new(false)) }
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        self.link.newest_inbound.store(u64::MAX, Ordering::SeqCst);
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Nanoseconds since the transport started, never 0: a monotonic clock
    /// that fits in an atomic.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    /// The listen address of peer `id`, if it is one.
    fn peer_addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.peers.read().unwrap_or_else(PoisonError::into_inner).get(&id).map(|p| p.addr)
    }
}

/// A running peer transport; see the [module documentation](self).
///
/// Dropping it shuts it down (see [`Transport::shutdown`]).
pub struct Transport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Never sent on: dropping it disconnects every thread's receiver, which
    /// wakes threads sleeping in backoff or waiting on their queue at once.
    stop_tx: Mutex<Option<Sender<()>>>,
}

impl Transport {
    /// Binds `config.listen` and starts the listener and one writer per
    /// peer. Fails if the configuration is invalid (`InvalidInput`), the
    /// address cannot be bound, or a thread cannot be spawned.
    pub fn start(config: TransportConfig, inbound: impl Inbound) -> io::Result<Transport> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)?;
        Self::start_with_listener(config, listener, inbound)
    }

    /// Like [`Transport::start`] but accepts on an already bound `listener`
    /// (`config.listen` is ignored). Lets callers bind port 0 for every
    /// node before any of them starts, or use an inherited socket.
    pub fn start_with_listener(
        config: TransportConfig,
        listener: TcpListener,
        inbound: impl Inbound,
    ) -> io::Result<Transport> {
        config.validate()?;
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let peers = config.peers.clone();
        let node_id = config.node_id;
        let shared = Arc::new(Shared {
            peers: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            refused: RwLock::new(HashSet::new()),
            advertise: config.advertise.unwrap_or(local_addr),
            stop_rx: stop_rx.clone(),
            threads: Mutex::new(Vec::new()),
            next_connection_id: AtomicU64::new(1),
            epoch: Instant::now(),
            stats: Counters::default(),
            stopping: AtomicBool::new(false),
            inbound: Box::new(inbound),
            config,
        });
        // Built before spawning so that if a spawn fails, dropping it stops
        // and joins the threads already running.
        let transport = Transport { shared: Arc::clone(&shared), local_addr, stop_tx: Mutex::new(Some(stop_tx)) };
        let (shared_l, stop_l) = (Arc::clone(&shared), stop_rx.clone());
        let listener_thread = thread::Builder::new()
            .name(format!("raft-listen-{node_id}"))
            .spawn(move || listen_loop(shared_l, listener, stop_l))?;
        lock(&shared.threads).push(listener_thread);
        for (peer, addr) in peers {
            add_peer(&shared, peer, addr)?;
        }
        tracing::debug!(node_id, %local_addr, "transport started");
        Ok(transport)
    }

    /// Adds (or re-addresses) peers: each new one gets a writer thread and
    /// is accepted inbound. Never removes one: see [`Transport::refuse`].
    /// Ids 0 and this node's own are ignored. Fails only if a thread cannot
    /// be spawned.
    pub fn set_peers(&self, peers: &[(NodeId, SocketAddr)]) -> io::Result<()> {
        for &(id, addr) in peers {
            add_peer(&self.shared, id, addr)?;
        }
        Ok(())
    }

    /// Makes `ids` the refused set: each is disconnected (its writer stops,
    /// its inbound connections close) and its handshakes are refused from
    /// now on; ids refused before and not in `ids` are accepted again. The
    /// driver refuses the members a committed configuration removed.
    pub fn refuse(&self, ids: &[NodeId]) {
        let me = self.shared.config.node_id;
        let mut refused = write(&self.shared.refused);
        refused.clear();
        for &id in ids {
            refused.insert(id);
            if let Some(slot) = write(&self.shared.peers).remove(&id) {
                slot.retire();
                write(&self.shared.queues).remove(&id);
                tracing::info!(node_id = me, peer = id, "peer removed and refused");
            }
        }
    }

    /// Traffic counters of each current peer, by id.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let mut v: Vec<_> = read(&self.shared.peers)
            .iter()
            .map(|(&id, p)| PeerStats {
                id,
                sent: p.link.sent.load(Ordering::Relaxed),
                received: p.link.received.load(Ordering::Relaxed),
                dropped: p.link.dropped.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_unstable_by_key(|p| p.id);
        v
    }

    /// The current peers and their addresses, by id.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut v: Vec<_> = read(&self.shared.peers).iter().map(|(&id, p)| (id, p.addr)).collect();
        v.sort_unstable();
        v
    }

    /// Queues `message` for peer `to` without ever blocking. Returns whether
    /// it was queued; otherwise it was dropped and counted (queue full,
    /// unknown peer, or shut down). Queued is not delivered: a broken
    /// connection may still lose it.
    pub fn send(&self, to: NodeId, message: Message) -> bool {
        let stats = &self.shared.stats;
        let queues = read(&self.shared.queues);
        let Some(queue) = queues.get(&to) else {
            bump(&stats.dropped_unknown_peer, 1);
            return false;
        };
        if self.shared.stopping() {
            bump(&stats.dropped_closed, 1);
            return false;
        }
        match queue.try_send(message) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                bump(&stats.dropped_full, 1);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                bump(&stats.dropped_closed, 1);
                false
            }
        }
    }

    /// Fetches peer `peer`'s snapshot file for `index` into `dir` over a
    /// connection of its own (see [`snapshot_fetch`]), resuming a partial
    /// file an earlier attempt left, and returns the complete file's path.
    /// Blocks for the whole transfer: call it from a thread of its own.
    pub fn fetch_snapshot(
        &self,
        peer: NodeId,
        index: raft_core::Index,
        dir: &std::path::Path,
    ) -> Result<std::path::PathBuf, snapshot_fetch::FetchError> {
        snapshot_fetch::fetch(&self.shared, peer, index, dir)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        self.shared.stats.snapshot()
    }

    /// The address the listener is bound to (the actual port when
    /// `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address this node gives peers to dial (see
    /// [`TransportConfig::advertise`]).
    pub fn advertised_addr(&self) -> SocketAddr {
        self.shared.advertise
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.config.node_id
    }

    /// Stops all threads, closes all connections and the listener, and waits
    /// for the threads to exit. Idempotent. Typically returns within
    /// `poll_interval`; a writer blocked on a stalled peer may take up to
    /// `io_timeout` (or `connect_timeout`), and a reader blocked in its
    /// [`Inbound`] sink until the sink returns.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        drop(lock(&self.stop_tx).take());
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for thread in threads {
            // A panicked thread has already reported itself; shutting down
            // the rest matters more than propagating it.
            let _ = thread.join();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node_id", &self.shared.config.node_id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, ignoring poisoning: the guarded data (a sender slot, a
/// list of join handles) stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds peer `id` at `addr` (a no-op if it is already there at that
/// address; a new address retires the old writer): registers it, starts its
/// writer thread. Ignores 0, this node, and refused ids (returns false).
fn add_peer(shared: &Arc<Shared>, id: NodeId, addr: SocketAddr) -> io::Result<bool> {
    let me = shared.config.node_id;
    if id == 0 || id == me || read(&shared.refused).contains(&id) {
        return Ok(false);
    }
    let mut slots = write(&shared.peers);
    if slots.get(&id).is_some_and(|slot| slot.addr == addr) {
        return Ok(false);
    }
    if let Some(old) = slots.remove(&id) {
        old.retire();
    }
    let slot = PeerSlot::new(addr);
    let (retired, link) = (Arc::clone(&slot.retired), Arc::clone(&slot.link));
    slots.insert(id, slot);
    drop(slots);
    let (queue_tx, queue_rx) = crossbeam_channel::bounded(shared.config.send_queue_len);
    let (shared_w, stop_w) = (Arc::clone(shared), shared.stop_rx.clone());
    let writer = thread::Builder::new()
        .name(format!("raft-send-{me}-{id}"))
        .spawn(move || writer_loop(shared_w, id, addr, queue_rx, stop_w, retired, link))?;
    lock(&shared.threads).push(writer);
    write(&shared.queues).insert(id, queue_tx);
    tracing::info!(node_id = me, peer = id, %addr, "peer added");
    Ok(true)
}

/// Read-locks, ignoring poisoning (the maps stay consistent: every update
/// is a single insert or remove).
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks, ignoring poisoning.
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Sleeps for `delay` unless the transport shuts down first; returns true
/// on shutdown.
fn sleep_or_stop(stop_rx: &Receiver<()>, delay: Duration) -> bool {
    !matches!(stop_rx.recv_timeout(delay), Err(RecvTimeoutError::Timeout))
}

/// Exponential backoff with "equal jitter": half of each delay is fixed and
/// half random, so peers retrying the same node spread out while the delay
/// never collapses to almost nothing.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: StdRng,
}

impl Backoff {
    fn new(initial: Duration, max: Duration, rng: StdRng) -> Self {
        Backoff { initial, max, next: initial, rng }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        let half = base / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.gen_range(0..=spread))
    }
}

/// Seeds a writer's jitter from the node id, so runs are reproducible per
/// node, mixed with the peer id so that one node's writers do not retry in
/// lockstep with each other.
fn jitter_seed(node_id: NodeId, peer: NodeId) -> u64 {
    node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ peer
}

/// The body of a peer's writer thread.
fn writer_loop(
    shared: Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
    queue: Receiver<Message>,
    stop_rx: Receiver<()>,
    retired: Arc<AtomicBool>,
    link: Arc<PeerLink>,
) {
    let rng = StdRng::seed_from_u64(jitter_seed(shared.config.node_id, peer));
    let backoff = Backoff::new(shared.config.backoff_initial, shared.config.backoff_max, rng);
    let writer = PeerWriter {
        shared,
        peer,
        addr,
        queue,
        stop_rx,
        retired,
        link,
        backoff,
        connection: None,
        batch: Vec::new(),
        last_check: Instant::now(),
        unanswered_since: None,
        batch_asks: false,
        after_stall: false,
    };
    writer.run();
}

/// The state of one peer's writer thread: the only outbound connection to
/// that peer, its reconnect backoff, and the buffer a batch is encoded in.
struct PeerWriter {
    shared: Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
    queue: Receiver<Message>,
    stop_rx: Receiver<()>,
    /// The peer was removed ([`Transport::set_peers`]): stop.
    retired: Arc<AtomicBool>,
    /// Shared with the peer's readers: when we last heard from it.
    link: Arc<PeerLink>,
    backoff: Backoff,
    connection: Option<TcpStream>,
    batch: Vec<u8>,
    /// When the connection was last checked for liveness.
    last_check: Instant,
    /// When ([`Shared::now`]) the first write of a request on this
    /// connection that the peer has not answered yet started: nothing
    /// arrived from the peer since. `None`: every request written so far
    /// was answered.
    unanswered_since: Option<u64>,
    /// Whether the batch in `batch` holds a request (see [`asks`]).
    batch_asks: bool,
    /// The previous connection was replaced for a stall, and the peer has
    /// not been heard from since: a new connection does not reset the
    /// backoff, so a peer that accepts connections but never answers is
    /// redialled ever more slowly instead of once per `peer_silence`.
    after_stall: bool,
}

/// What waiting on the send queue produced.
enum Next {
    /// A message to send (the first of a batch).
    Message(Message),
    /// Nothing within the poll interval.
    Idle,
    /// The transport is shutting down (or gone).
    Stop,
}

impl PeerWriter {
    /// Connects, sends batches, reconnects; returns on shutdown.
    fn run(mut self) {
        while !self.shared.stopping() && !self.retired.load(Ordering::SeqCst) {
            if self.connection.is_none() {
                if self.connect_or_back_off().is_break() {
                    return;
                }
                continue;
            }
            if !self.connection_alive() {
                continue;
            }
            match self.next_message() {
                Next::Message(first) => self.send_batch(first),
                Next::Idle => {} // go check liveness
                Next::Stop => return,
            }
        }
    }

    /// One connection attempt; after a failure, drops what queued up and
    /// sleeps out the backoff. Breaks on shutdown.
    fn connect_or_back_off(&mut self) -> ControlFlow<()> {
        let (node_id, peer, addr) = (self.shared.config.node_id, self.peer, self.addr);
        match connect(&self.shared, peer, addr) {
            Ok(stream) => {
                tracing::debug!(node_id, peer, %addr, "connected");
                bump(&self.shared.stats.connects, 1);
                if !self.after_stall {
                    self.backoff.reset();
                }
                self.last_check = Instant::now();
                self.unanswered_since = None;
                self.connection = Some(stream);
            }
            Err(error) => {
                tracing::trace!(node_id, peer, %addr, %error, "connect failed");
                // What queued up while we tried is stale by the time the
                // peer is back; sending it then would only delay the fresh
                // messages behind it.
                let stale = self.queue.try_iter().count();
                bump(&self.shared.stats.dropped_unreachable, stale as u64);
                bump(&self.link.dropped, stale as u64);
                if sleep_or_stop(&self.stop_rx, self.backoff.next_delay()) {
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Whether the connection still looks usable; drops it if not.
    ///
    /// The peer never sends after its handshake reply, so an idle
    /// connection is only known to be dead if we look. Checking before
    /// writing avoids losing the next batch into a half-closed socket (e.g.
    /// after the peer restarted). A connection the peer has left unanswered
    /// for `peer_silence` is replaced ([`PeerWriter::replace_stalled`]).
    /// Checked at most once per poll interval.
    fn connection_alive(&mut self) -> bool {
        if self.last_check.elapsed() < self.shared.config.poll_interval {
            return true;
        }
        self.last_check = Instant::now();
        if let Some(silent) = self.silence() {
            self.replace_stalled(silent);
            return false;
        }
        let alive = self.connection.as_ref().is_some_and(peer_alive);
        if !alive {
            tracing::debug!(node_id = self.shared.config.node_id, peer = self.peer, "connection closed by peer");
            bump(&self.shared.stats.disconnects, 1);
            self.connection = None;
        }
        alive
    }

    /// How long the peer has left our writes unanswered, if that is at
    /// least `peer_silence`. Anything heard from the peer since the first
    /// unanswered write clears the clock (and, after a stall, the backoff).
    fn silence(&mut self) -> Option<Duration> {
        let since = self.unanswered_since?;
        if self.link.last_heard.load(Ordering::SeqCst) >= since {
            self.unanswered_since = None;
            if std::mem::take(&mut self.after_stall) {
                self.backoff.reset();
            }
            return None;
        }
        let silent = Duration::from_nanos(self.shared.now().saturating_sub(since));
        (silent >= self.shared.config.peer_silence).then_some(silent)
    }

    /// Closes a connection the peer stopped answering and sleeps out the
    /// backoff before the next attempt.
    ///
    /// The socket is closed with a zero linger: the kernel discards the
    /// bytes it still holds (stale by now, and possibly stuck behind a
    /// retransmission timer of many seconds) and resets the connection
    /// instead of retransmitting them for minutes. The queue is kept: its
    /// messages go out on the next connection, in order.
    fn replace_stalled(&mut self, silent: Duration) {
        let (node_id, peer) = (self.shared.config.node_id, self.peer);
        tracing::info!(node_id, peer, silent_ms = silent.as_millis(), "peer silent; replacing the connection");
        bump(&self.shared.stats.stalls_replaced, 1);
        if let Some(stream) = self.connection.take() {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
        self.unanswered_since = None;
        self.after_stall = true;
        // On shutdown the run loop's check ends the thread.
        let _ = sleep_or_stop(&self.stop_rx, self.backoff.next_delay());
    }

    /// Waits up to the poll interval for a message to send.
    fn next_message(&self) -> Next {
        select! {
            recv(self.queue) -> message => match message {
                Ok(message) => Next::Message(message),
                Err(_) => Next::Stop, // the transport is gone
            },
            recv(self.stop_rx) -> _ => Next::Stop,
            default(self.shared.config.poll_interval) => Next::Idle,
        }
    }

    /// Sends `first` and whatever else is queued as one batch.
    fn send_batch(&mut self, first: Message) {
        let count = self.encode_batch(first);
        if count > 0 {
            self.write_batch(count);
        }
        if self.batch.capacity() > KEEP_BUFFER_BYTES {
            self.batch = Vec::new();
        }
    }

    /// Encodes `first` and the queued messages into the batch buffer, up to
    /// [`MAX_BATCH_BYTES`]: one write syscall and one TCP push for the lot
    /// instead of one per message. The buffer plays the role of a
    /// `BufWriter`, without its extra copy. Returns the frames encoded;
    /// unencodable messages are dropped and counted.
    fn encode_batch(&mut self, first: Message) -> u64 {
        self.batch.clear();
        self.batch_asks = false;
        let mut count = 0u64;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match encode_frame_into(&message, self.shared.config.max_frame_bytes, &mut self.batch) {
                Ok(_) => {
                    count += 1;
                    self.batch_asks |= asks(&message);
                }
                Err(error) => {
                    let (node_id, peer) = (self.shared.config.node_id, self.peer);
                    tracing::warn!(node_id, peer, %error, "dropping unsendable message");
                    bump(&self.shared.stats.dropped_oversized, 1);
                    bump(&self.link.dropped, 1);
                }
            }
            if self.batch.len() < MAX_BATCH_BYTES {
                next = self.queue.try_recv().ok();
            }
        }
        count
    }

    /// Writes the batch of `count` frames; drops the connection on failure.
    fn write_batch(&mut self, count: u64) {
        let Some(stream) = self.connection.as_mut() else {
            return;
        };
        let stats = &self.shared.stats;
        // Taken before the write: an answer may arrive before it returns.
        let started = self.shared.now();
        match stream.write_all(&self.batch).and_then(|()| stream.flush()) {
            Ok(()) => {
                bump(&stats.sent, count);
                bump(&self.link.sent, count);
                if self.batch_asks {
                    self.unanswered_since.get_or_insert(started);
                }
            }
            Err(error) => {
                // Part of the batch may have been written; the stream is
                // unusable now, so start over on a new connection.
                tracing::debug!(node_id = self.shared.config.node_id, peer = self.peer, %error, "write failed");
                bump(&stats.dropped_write, count);
                bump(&self.link.dropped, count);
                bump(&stats.disconnects, 1);
                self.connection = None;
            }
        }
    }
}

/// Whether the peer answers `message`: what arms the writer's silence
/// check. `TimeoutNow` gets no message back (its target campaigns, which it
/// might not do at once), and answers are never answered.
fn asks(message: &Message) -> bool {
    use raft_core::MessageBody as Body;
    match message.body {
        Body::RequestVote(_)
        | Body::AppendEntries(_)
        | Body::InstallSnapshot(_)
        | Body::ReadIndex(_)
        | Body::ReadRound { .. } => true,
        Body::RequestVoteResponse(_)
        | Body::AppendEntriesResponse(_)
        | Body::ReadIndexResponse(_)
        | Body::ReadRoundAck { .. }
        | Body::TimeoutNow => false,
    }
}

/// Why an outbound connection attempt failed.
enum ConnectError {
    Io(io::Error),
    Refused(Option<AckStatus>),
    /// The cluster secret exchange failed (a peer with another secret, or none).
    Auth(auth::AuthError),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(error) => write!(f, "{error}"),
            ConnectError::Refused(Some(AckStatus::UnsupportedVersion)) => {
                write!(f, "handshake refused: the peer does not support wire format version {WIRE_FORMAT_VERSION}")
            }
            ConnectError::Refused(status) => write!(f, "handshake refused: {status:?}"),
            ConnectError::Auth(error) => write!(f, "{error}"),
        }
    }
}

/// Connects to `peer` and performs the handshake; counts the failure kinds.
fn connect(shared: &Shared, peer: NodeId, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let config = &shared.config;
    let result = (|| {
        let stream = TcpStream::connect_timeout(&addr, config.connect_timeout).map_err(ConnectError::Io)?;
        // Raft is latency-bound (heartbeats, vote round trips) and we batch
        // ourselves, so Nagle's algorithm would only add delay.
        stream.set_nodelay(true).map_err(ConnectError::Io)?;
        tune_peer_socket(&stream, config).map_err(ConnectError::Io)?;
        stream.set_write_timeout(Some(config.io_timeout)).map_err(ConnectError::Io)?;
        if let Some(secret) = &config.secret {
            authenticate_outbound(&stream, config, secret)?;
        }
        stream.set_read_timeout(Some(config.poll_interval)).map_err(ConnectError::Io)?;
        let handshake =
            Handshake { cluster_id: config.cluster_id, from: config.node_id, to: peer, listen: Some(shared.advertise) };
        (&stream).write_all(&handshake.encode()).map_err(ConnectError::Io)?;
        let mut reply = [0; ACK_LEN];
        let watch = Watch { shared, connection: None };
        read_full(&mut &stream, &mut reply, false, config.io_timeout, &watch).map_err(|stop| {
            ConnectError::Io(match stop {
                Stop::Io(error) => error,
                other => io::Error::other(format!("{other:?}")),
            })
        })?;
        match AckStatus::decode(&reply) {
            Some(AckStatus::Accepted) => Ok(stream),
            status => Err(ConnectError::Refused(status)),
        }
    })();
    match &result {
        Ok(_) => {}
        Err(ConnectError::Io(_)) => bump(&shared.stats.connect_failures, 1),
        Err(ConnectError::Refused(_) | ConnectError::Auth(_)) => bump(&shared.stats.handshake_refused, 1),
    }
    result
}

/// The connecting side of the cluster secret exchange on a fresh connection (reads bounded by
/// `io_timeout`; the caller sets its own read timeout afterwards).
fn authenticate_outbound(
    stream: &TcpStream,
    config: &TransportConfig,
    secret: &auth::Secret,
) -> Result<(), ConnectError> {
    stream.set_read_timeout(Some(config.io_timeout)).map_err(ConnectError::Io)?;
    auth::connect(stream, secret).map_err(ConnectError::Auth)
}

/// The accepting side: reads the first [`HANDSHAKE_LEN`] bytes of a connection into `raw` and,
/// when they open the cluster secret exchange, runs it and reads the next ones (the handshake or
/// fetch request behind it). `None` (counted and logged) if the connection must close: a failed
/// exchange, or one missing although this node holds a secret.
fn read_head(shared: &Arc<Shared>, stream: &TcpStream, remote: SocketAddr) -> Option<[u8; HANDSHAKE_LEN]> {
    let node_id = shared.config.node_id;
    let watch = Watch { shared, connection: None };
    let mut raw = [0; HANDSHAKE_LEN];
    let read =
        |raw: &mut [u8; HANDSHAKE_LEN]| match read_full(&mut &*stream, raw, false, shared.config.io_timeout, &watch) {
            Ok(()) => true,
            Err(stop) => {
                if !matches!(stop, Stop::Shutdown) {
                    tracing::debug!(node_id, %remote, ?stop, "no complete handshake");
                    bump(&shared.stats.handshake_rejected, 1);
                }
                false
            }
        };
    if !read(&mut raw) {
        return None;
    }
    let secret = shared.config.secret.as_ref();
    if raw[..4] == auth::AUTH_MAGIC {
        let exchanged = stream
            .set_read_timeout(Some(shared.config.io_timeout))
            .map_err(auth::AuthError::Io)
            .and_then(|()| auth::accept(stream, secret, &raw));
        let _ = stream.set_read_timeout(Some(shared.config.poll_interval));
        if let Err(error) = exchanged {
            tracing::warn!(node_id, %remote, %error, "rejecting connection: cluster secret exchange failed");
            bump(&shared.stats.handshake_rejected, 1);
            return None;
        }
        if !read(&mut raw) {
            return None;
        }
    } else if secret.is_some() {
        tracing::warn!(node_id, %remote, "rejecting connection: no cluster secret exchange (this node requires one)");
        bump(&shared.stats.handshake_rejected, 1);
        if raw[..4] == frame::MAGIC {
            let _ = (&*stream).write_all(&AckStatus::SecretRequired.encode());
        } else if raw[..4] == snapshot_fetch::FETCH_MAGIC {
            snapshot_fetch::refuse_unauthenticated(stream);
        }
        return None;
    }
    Some(raw)
}

/// Keepalive probes after the first: one a second, three of them.
#[cfg(any(
    windows,
    target_os = "android",
    target_os = "freebsd",
    target_os = "fuchsia",
    target_os = "ios",
    target_os = "linux",
    target_os = "macos",
    target_os = "netbsd",
))]
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
#[cfg(any(
    target_os = "android",
    target_os = "freebsd",
    target_os = "fuchsia",
    target_os = "ios",
    target_os = "linux",
    target_os = "macos",
    target_os = "netbsd",
))]
const KEEPALIVE_PROBES: u32 = 3;

/// Sets the kernel's liveness limits on a peer socket, outbound or inbound
/// (see [Liveness](self#liveness)): keepalive after `peer_silence` idle, and
/// `TCP_USER_TIMEOUT` where the platform has it.
fn tune_peer_socket(stream: &TcpStream, config: &TransportConfig) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    // Keepalive times are whole seconds, and 0 is invalid.
    let idle_secs = u64::try_from(config.peer_silence.as_millis().div_ceil(1000)).unwrap_or(u64::MAX).max(1);
    socket
        .set_tcp_keepalive(&keepalive_probes(socket2::TcpKeepalive::new().with_time(Duration::from_secs(idle_secs))))?;
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    socket.set_tcp_user_timeout(Some(config.tcp_user_timeout))?;
    Ok(())
}

/// Adds the probe interval and count where they can be set.
#[cfg(any(
    target_os = "android",
    target_os = "freebsd",
    target_os = "fuchsia",
    target_os = "ios",
    target_os = "linux",
    target_os = "macos",
    target_os = "netbsd",
))]
fn keepalive_probes(keepalive: socket2::TcpKeepalive) -> socket2::TcpKeepalive {
    keepalive.with_interval(KEEPALIVE_INTERVAL).with_retries(KEEPALIVE_PROBES)
}

/// Adds the probe interval where it can be set (the count is the system's).
#[cfg(windows)]
fn keepalive_probes(keepalive: socket2::TcpKeepalive) -> socket2::TcpKeepalive {
    keepalive.with_interval(KEEPALIVE_INTERVAL)
}

/// Elsewhere the system's probe interval and count apply.
#[cfg(not(any(
    windows,
    target_os = "android",
    target_os = "freebsd",
    target_os = "fuchsia",
    target_os = "ios",
    target_os = "linux",
    target_os = "macos",
    target_os = "netbsd",
)))]
fn keepalive_probes(keepalive: socket2::TcpKeepalive) -> socket2::TcpKeepalive {
    keepalive
}

/// Whether an established outbound connection still looks usable, checked
/// without blocking.
fn peer_alive(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    // Anything readable means EOF, a reset, or bytes the peer should never
    // send after its reply: the connection is unusable in every case.
    let mut probe = [0; 1];
    let alive = matches!(stream.peek(&mut probe), Err(error) if error.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && alive
}

/// The body of the listener thread.
fn listen_loop(shared: Arc<Shared>, listener: TcpListener, stop_rx: Receiver<()>) {
    let node_id = shared.config.node_id;
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, remote)) => {
                bump(&shared.stats.accepted, 1);
                // Forget finished readers so the list tracks live ones only.
                readers.retain(|reader| !reader.is_finished());
                let shared_r = Arc::clone(&shared);
                let spawned = thread::Builder::new()
                    .name(format!("raft-recv-{node_id}"))
                    .spawn(move || serve_inbound(&shared_r, stream, remote));
                match spawned {
                    Ok(reader) => readers.push(reader),
                    // The closure, and with it the stream, is dropped: the
                    // connection closes and the peer will retry.
                    Err(error) => tracing::warn!(node_id, %error, "cannot spawn reader thread"),
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if sleep_or_stop(&stop_rx, ACCEPT_POLL) {
                    break;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                // E.g. out of file descriptors: wait rather than spin.
                tracing::warn!(node_id, %error, "accept failed");
                if sleep_or_stop(&stop_rx, shared.config.poll_interval) {
                    break;
                }
            }
        }
    }
    drop(listener);
    for reader in readers {
        let _ = reader.join();
    }
}

/// The body of a reader thread: handshake, then frames until the connection
/// ends, turns bad, or the transport stops.
fn serve_inbound(shared: &Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let node_id = shared.config.node_id;
    if let Err(error) = configure_inbound(&stream, &shared.config) {
        tracing::debug!(node_id, %remote, %error, "cannot configure inbound connection");
        return;
    }
    let Some((from, link, connection_id)) = accept_handshake(shared, &stream, remote) else {
        return;
    };
    tracing::debug!(node_id, from, %remote, "accepted peer connection");
    receive_frames(shared, &stream, from, link, connection_id);
}

/// Accepted sockets inherit non-blocking mode on some platforms; the read
/// timeout is what lets a reader thread notice shutdown, and keepalive one
/// whose peer vanished.
fn configure_inbound(stream: &TcpStream, config: &TransportConfig) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    tune_peer_socket(stream, config)?;
    stream.set_read_timeout(Some(config.poll_interval))?;
    stream.set_write_timeout(Some(config.io_timeout))
}

/// Reads and checks the handshake, replies, and registers the connection
/// as the peer's newest. Returns the peer and the connection id, or `None`
/// (already counted and logged) if the connection must close.
fn accept_handshake(
    shared: &Arc<Shared>,
    stream: &TcpStream,
    remote: SocketAddr,
) -> Option<(NodeId, Arc<PeerLink>, u64)> {
    let node_id = shared.config.node_id;
    let raw = read_head(shared, stream, remote)?;
    if raw[..4] == snapshot_fetch::FETCH_MAGIC {
        snapshot_fetch::serve(shared, stream, remote, &raw);
        return None;
    }
    let from = match read_rest_of_handshake(shared, stream, &raw).and_then(|h| check_handshake(shared, &h)) {
        Ok(from) => from,
        Err(Rejection { status, reason }) => {
            tracing::warn!(node_id, %remote, ?status, %reason, "rejecting connection");
            bump(&shared.stats.handshake_rejected, 1);
            // Best effort: tells a misconfigured peer why, then close.
            let _ = (&*stream).write_all(&status.encode());
            return None;
        }
    };
    let connection_id = shared.next_connection_id.fetch_add(1, Ordering::SeqCst);
    let link = read(&shared.peers).get(&from).map(|p| Arc::clone(&p.link))?;
    link.newest_inbound.store(connection_id, Ordering::SeqCst);
    (&*stream).write_all(&AckStatus::Accepted.encode()).ok()?;
    Some((from, link, connection_id))
}

/// Decodes frames from an authenticated connection and delivers them until
/// the connection ends, turns bad, is superseded, or the transport stops.
fn receive_frames(shared: &Shared, stream: &TcpStream, from: NodeId, link: Arc<PeerLink>, connection_id: u64) {
    let watch = Watch { shared, connection: Some((Arc::clone(&link), connection_id)) };
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut payload = Vec::new();
    loop {
        // Checked per frame too: under a steady stream of frames the read
        // timeout never fires.
        if watch.stop().is_some() {
            return;
        }
        let message = match read_frame(&mut reader, &mut payload, &watch) {
            Ok(message) => message,
            Err(end) => return end.report(shared, from),
        };
        if payload.capacity() > KEEP_BUFFER_BYTES {
            payload = Vec::new();
        }
        link.last_heard.fetch_max(shared.now(), Ordering::SeqCst);
        // A newer connection may have been accepted while this frame was
        // read: then the frame is older than what that one carries.
        let _turn = lock(&link.delivery);
        if link.newest_inbound.load(Ordering::SeqCst) != connection_id {
            return;
        }
        bump(&shared.stats.received, 1);
        bump(&link.received, 1);
        shared.inbound.deliver(from, message);
    }
}

/// Why [`read_frame`] produced no message.
enum FrameEnd {
    /// The read of a frame header gave up.
    InHeader(Stop),
    /// The read of a payload gave up.
    InPayload(Stop),
    /// The frame is invalid (length over the limit, undecodable payload).
    Bad(FrameError),
}

impl FrameEnd {
    /// Logs why the connection ends, and counts a bad frame.
    fn report(self, shared: &Shared, from: NodeId) {
        let node_id = shared.config.node_id;
        match self {
            FrameEnd::InHeader(stop) => {
                // A stall inside a header is as broken as one inside a payload.
                if matches!(stop, Stop::Timeout) {
                    bump(&shared.stats.bad_frames, 1);
                }
                tracing::debug!(node_id, from, ?stop, "inbound connection ended");
            }
            FrameEnd::InPayload(stop) => {
                // A stalled frame is broken; a peer that vanished mid-frame
                // (crash, restart) is not misbehaving.
                if matches!(stop, Stop::Timeout) {
                    bump(&shared.stats.bad_frames, 1);
                }
                tracing::debug!(node_id, from, ?stop, "inbound connection ended inside a frame");
            }
            FrameEnd::Bad(error) => {
                tracing::warn!(node_id, from, %error, "closing connection");
                bump(&shared.stats.bad_frames, 1);
            }
        }
    }
}

/// Reads one frame (its payload into `payload`) and decodes it.
fn read_frame(reader: &mut impl Read, payload: &mut Vec<u8>, watch: &Watch<'_>) -> Result<Message, FrameEnd> {
    let config = &watch.shared.config;
    let mut header = [0; FRAME_HEADER_LEN];
    read_full(reader, &mut header, true, config.io_timeout, watch).map_err(FrameEnd::InHeader)?;
    let len = frame::payload_len(header, config.max_frame_bytes).map_err(FrameEnd::Bad)?;
    read_payload(reader, len, payload, config.io_timeout, watch).map_err(FrameEnd::InPayload)?;
    decode_payload(payload).map_err(FrameEnd::Bad)
}

/// Why a handshake was refused: the status to reply, and what to log.
struct Rejection {
    status: AckStatus,
    reason: String,
}

/// Decodes the handshake whose common part is `raw`, reading the listen
/// address a version-2 handshake appends.
fn read_rest_of_handshake(
    shared: &Shared,
    stream: &TcpStream,
    raw: &[u8; HANDSHAKE_LEN],
) -> Result<Handshake, Rejection> {
    let refuse = |error: frame::HandshakeError| Rejection { status: error.status(), reason: error.to_string() };
    let mut handshake = Handshake::decode(raw).map_err(refuse)?;
    if Handshake::extra_len(Handshake::version_of(raw)) > 0 {
        let mut addr = [0; frame::HANDSHAKE_ADDR_LEN];
        let watch = Watch { shared, connection: None };
        read_full(&mut &*stream, &mut addr, false, shared.config.io_timeout, &watch).map_err(|stop| Rejection {
            status: AckStatus::BadProtocol,
            reason: format!("handshake cut short in its listen address ({stop:?})"),
        })?;
        handshake.listen = Handshake::decode_listen(&addr).map_err(refuse)?;
    }
    Ok(handshake)
}

/// Validates a handshake against our configuration; returns the sender. A
/// sender we do not know that gives its listen address and is not refused
/// is added as a peer: a member added while this node lagged behind (its
/// leader, possibly), whose address is in log entries this node has yet to
/// receive from it.
fn check_handshake(shared: &Arc<Shared>, handshake: &Handshake) -> Result<NodeId, Rejection> {
    let config = &shared.config;
    let reject = |status, reason| Err(Rejection { status, reason });
    if handshake.cluster_id != config.cluster_id {
        return reject(
            AckStatus::WrongCluster,
            format!("cluster id {} (ours {})", handshake.cluster_id, config.cluster_id),
        );
    }
    if handshake.to != config.node_id {
        return reject(AckStatus::NotForUs, format!("meant for node {} (we are {})", handshake.to, config.node_id));
    }
    let from = handshake.from;
    if read(&shared.refused).contains(&from) {
        return reject(AckStatus::UnknownPeer, format!("node {from} was removed from the cluster"));
    }
    if !read(&shared.peers).contains_key(&from) {
        let Some(listen) = handshake.listen else {
            return reject(AckStatus::UnknownPeer, format!("node {from} is not a configured peer"));
        };
        match add_peer(shared, from, listen) {
            Ok(true) => bump(&shared.stats.peers_learned, 1),
            Ok(false) => return reject(AckStatus::UnknownPeer, format!("node {from} cannot be added")),
            Err(e) => return reject(AckStatus::UnknownPeer, format!("cannot start a writer for node {from}: {e}")),
        }
    }
    Ok(from)
}

/// Why a read gave up.
#[derive(Debug)]
enum Stop {
    /// The peer closed the connection.
    Eof,
    /// No progress within the stall limit.
    Timeout,
    /// The transport is shutting down.
    Shutdown,
    /// A newer connection from the same peer replaced this one.
    Superseded,
    /// Any other socket error.
    Io(io::Error),
}

/// What a blocked read checks each time its read timeout fires.
struct Watch<'a> {
    shared: &'a Shared,
    /// The peer's link (whose newest-connection id is checked) and this
    /// connection's id, for an authenticated inbound connection.
    connection: Option<(Arc<PeerLink>, u64)>,
}

impl Watch<'_> {
    fn stop(&self) -> Option<Stop> {
        if self.shared.stopping() {
            return Some(Stop::Shutdown);
        }
        let (link, id) = self.connection.as_ref()?;
        (link.newest_inbound.load(Ordering::SeqCst) != *id).then_some(Stop::Superseded)
    }
}

/// Fills `buf` from a reader whose read timeout is the poll interval.
///
/// Unlike `read_exact`, it survives timeouts without losing the bytes read
/// so far, checks `watch` on every timeout, and gives up after `stall`
/// without progress, except while `idle_ok` and nothing has arrived yet
/// (waiting for the next frame of an idle connection is fine).
fn read_full(
    reader: &mut impl Read,
    buf: &mut [u8],
    idle_ok: bool,
    stall: Duration,
    watch: &Watch<'_>,
) -> Result<(), Stop> {
    let mut filled = 0;
    let mut last_progress = Instant::now();
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Err(Stop::Eof),
            Ok(n) => {
                filled += n;
                last_progress = Instant::now();
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if let Some(stop) = watch.stop() {
                    return Err(stop);
                }
                let idle = idle_ok && filled == 0;
                if !idle && last_progress.elapsed() >= stall {
                    return Err(Stop::Timeout);
                }
            }
            Err(error) => return Err(Stop::Io(error)),
        }
    }
    Ok(())
}

/// Reads a `len`-byte payload into `buf`, growing it only as bytes arrive.
fn read_payload(
    reader: &mut impl Read,
    len: usize,
    buf: &mut Vec<u8>,
    stall: Duration,
    watch: &Watch<'_>,
) -> Result<(), Stop> {
    buf.clear();
    while buf.len() < len {
        let start = buf.len();
        let end = len.min(start + READ_CHUNK);
        buf.resize(end, 0);
        read_full(reader, &mut buf[start..end], false, stall, watch)?;
    }
    Ok(())
}
