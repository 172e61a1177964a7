//! Where client connections live: one event-loop thread holds every connection between requests,
//! and a pool of workers answers the ones that have something to answer.
//!
//! # Why this shape
//!
//! Redis users open many connections and leave most of them idle (a pool per application process,
//! a connection per web worker). A thread per connection made each idle one cost its stack, its
//! allocator heap and its buffers (about 230 KiB of RSS each, 2.3 GiB for 10,000), and made
//! accepting slow. Here an idle connection is a registration with the [`mio`] poller and a small
//! [`Client`] record with empty buffers: the poller reads what arrives and hands the connection to a
//! worker only once there are bytes to answer.
//!
//! A turn of data commands needs no worker. The poller parses every complete request in the
//! buffer; reads alone go to the node thread as one read round
//! ([`crate::node::RaftHandle::read_then`]), and a turn with a write among them goes, on the
//! leader, as one proposal ([`crate::node::RaftHandle::propose_then`]: one op as itself, several as
//! one entry). The node thread posts the answer back and the poller writes the replies in order:
//! two thread hops per turn instead of four, and the proposals of every connection that has
//! something to write reach the node thread together, so they share one batch and one fsync
//! round. A turn's answer is due by the retry bound (a write then answers `-UNCERTAIN`, reads
//! `-TRYAGAIN`), however long the node takes to settle it.
//!
//! Everything else runs on a worker with the blocking code path: connection commands, `MULTI`
//! blocks, forwarded requests, writes on a follower (forwarded to the leader), and any write whose
//! first attempt the node did not settle (a leader change): the worker's retry loop resends it
//! with the same `(session, seq)` until the retry bound. Workers are started while turns wait for
//! one (eight at once, then one per millisecond the backlog lasts, so that a burst of instant
//! commands does not start hundreds), up to `ServerOptions::max_workers`, and leave after
//! [`WORKER_IDLE`] without work, so the threads and their memory go back after a burst.
//!
//! The socket is non-blocking while the poller holds it and blocking (with the 30 s write timeout)
//! during a worker's turn, so that a turn writes its replies as before and a client that stops
//! reading holds only its own worker.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::{
    Buffers, Conn, MAX_BATCH_COMMANDS, Next, Queued, Resume, Seen, Shared, entry_op, forward, lingering_close,
    result_reply,
};
use crate::node::ProposalResult;
use crate::proposals::ProposalError;
use crate::raftkv::config::ReadMode;
use crate::raftkv::resp::{self, Protocol, Reply, RequestParser, RespError};
use crate::raftkv::store::{KvOp, KvRequest, KvResult, KvStore};
use crate::raftkv::unix_ms;
use crate::reads::ReadFailure;
use raft_core::Role;

/// The poller's token for the listening socket.
const LISTENER: Token = Token(usize::MAX - 1);
/// The poller's token for its [`Waker`] (a worker handed a connection back, or the server stops).
const WAKE: Token = Token(usize::MAX);

/// How long a worker waits for a turn before it leaves (down to [`MIN_WORKERS`]).
pub(super) const WORKER_IDLE: Duration = Duration::from_secs(5);
/// Workers kept however long they are idle.
const MIN_WORKERS: usize = 2;
/// Workers started as soon as a turn waits.
const EAGER_WORKERS: usize = 8;
/// How often another worker starts while turns keep waiting.
const GROW_EVERY: Duration = Duration::from_millis(1);
/// Stack of a worker thread: parsing and the store's ops are iterative, so little is needed.
const WORKER_STACK: usize = 256 * 1024;
/// Instant turns (answered without the node thread) the event loop serves one connection in a row.
const INLINE_TURNS_IN_A_ROW: usize = 16;
/// Bytes the poller reads from one connection before handing it to a worker (the rest is read
/// when the worker gives it back): a flood on one connection cannot hold the poller.
const TURN_READ_MAX: usize = 1 << 20;

/// One client connection with everything a worker needs to serve it.
pub(super) struct Client {
    /// Before `stream`, so that it is dropped first: a connection leaves the client table before its
    /// socket closes.
    conn: Conn,
    stream: TcpStream,
    token: Token,
    parser: RequestParser,
    buf: Buffers,
    /// Whether the socket may hold bytes not yet read: an event came (or a worker had the
    /// connection) since the last read that found it empty. Lets a turn skip the read that would
    /// only say `EAGAIN`.
    readable: bool,
    /// Read until `EAGAIN` next time instead of trusting a short read to have emptied the socket:
    /// the end of the stream may be waiting behind the bytes (the poller said so, or it could not
    /// watch while a worker had the connection).
    drain: bool,
}

/// What a worker hands back to the poller.
enum Back {
    /// Wait for more requests.
    Again(Box<Client>),
    /// The connection ended (its record was dropped).
    Closed(Token),
    /// The node thread answered an inline read turn (see [`Poller::dispatch`]).
    Read { token: Token, id: u64, results: Result<Vec<Option<KvResult>>, ReadFailure> },
    /// The node thread settled an inline write turn's proposal (see [`Poller::dispatch`]).
    Wrote { token: Token, id: u64, result: ProposalResult<KvResult> },
}

/// How workers and the node thread post to the event loop: the message, then a wake of the
/// poller unless one is pending already. A commit settles many connections' writes at once; one
/// wake (one `eventfd` write) serves them all.
struct Notify {
    back: Sender<Back>,
    waker: Arc<Waker>,
    /// A wake was sent that the poller has not yet acted on (it clears this before it drains).
    pending: AtomicBool,
}

impl Notify {
    /// Posts `back`; `false` once the event loop has ended.
    fn post(&self, back: Back) -> bool {
        if self.back.send(back).is_err() {
            return false;
        }
        if !self.pending.swap(true, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
        true
    }
}

/// The poller's view of a connection.
enum Slot {
    /// Waiting for bytes; the poller owns it.
    Idle(Box<Client>),
    /// A worker has it; events for it are ignored (the hand-back reads whatever arrived meanwhile).
    Busy,
    /// Its reads are on the node thread; the poller keeps it until [`Back::Read`] comes.
    Reading(Box<Client>, ReadTurn),
    /// Its write is proposed; the poller keeps it until [`Back::Wrote`] comes.
    Writing(Box<Client>, WriteTurn),
}

/// An inline write turn: what each request answers with, the proposed request (for a worker to
/// retry with the same sequence number, should the first attempt not settle it) and what the
/// client table shows.
struct WriteTurn {
    /// Which of the poller's turns (a late answer to an expired one must not answer the next).
    id: u64,
    items: Vec<Queued>,
    request: KvRequest,
    deadline: Instant,
    /// Whether `request` holds the turn's ops as one `Exec` entry (else its only op).
    batched: bool,
    seen: Seen,
}

/// An inline read turn: the requests as parsed (for a worker, should the read fail), what each
/// answers with, and what the client table shows.
struct ReadTurn {
    /// Which of the poller's turns (a late answer to an expired one must not answer the next).
    id: u64,
    requests: Vec<Vec<Bytes>>,
    items: Vec<Queued>,
    seen: Seen,
}

/// Turns waiting for a worker. A mutex and a condition variable rather than a channel: an idle
/// worker should sleep, not spin (see [`crate::oneshot`]).
#[derive(Default)]
struct TurnQueue {
    turns: Mutex<(VecDeque<Box<Client>>, bool)>,
    ready: Condvar,
}

impl TurnQueue {
    fn lock(&self) -> MutexGuard<'_, (VecDeque<Box<Client>>, bool)> {
        self.turns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, client: Box<Client>) {
        self.lock().0.push_back(client);
        self.ready.notify_one();
    }

    fn len(&self) -> usize {
        self.lock().0.len()
    }

    /// The next turn, waiting at most `timeout`.
    fn pop(&self, timeout: Duration) -> Popped {
        let deadline = Instant::now() + timeout;
        let mut turns = self.lock();
        loop {
            if turns.1 {
                return Popped::Closed;
            }
            if let Some(client) = turns.0.pop_front() {
                return Popped::Turn(client);
            }
            let now = Instant::now();
            if now >= deadline {
                return Popped::TimedOut;
            }
            turns = self.ready.wait_timeout(turns, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Wakes every worker to leave.
    fn close(&self) {
        let mut turns = self.lock();
        turns.1 = true;
        turns.0.clear();
        drop(turns);
        self.ready.notify_all();
    }
}

/// What a worker waiting for a turn got.
enum Popped {
    Turn(Box<Client>),
    TimedOut,
    /// The event loop ended: leave.
    Closed,
}

/// The thread pool that serves connections' turns.
struct Workers {
    queue: Arc<TurnQueue>,
    notify: Arc<Notify>,
    /// To stop watching the connections that end during a turn.
    registry: mio::Registry,
    live: Arc<AtomicUsize>,
    idle: Arc<AtomicUsize>,
    max: usize,
    node_id: raft_core::NodeId,
    /// Since when turns have been waiting for a worker (none are waiting: `None`).
    backlog_since: Option<Instant>,
}

impl Workers {
    /// Queues a turn.
    fn run(&mut self, client: Box<Client>) {
        self.queue.push(client);
        self.grow(Instant::now());
    }

    /// Whether turns are waiting for a worker.
    fn backlogged(&self) -> bool {
        self.queue.len() > self.idle.load(Ordering::SeqCst)
    }

    /// Starts a worker when turns wait for one: at once up to [`EAGER_WORKERS`], beyond that one
    /// per [`GROW_EVERY`] while the backlog lasts. Most turns take microseconds (a `PING`, a burst
    /// of 10,000 new connections' first commands); only turns blocked on commits need many
    /// workers, and they keep the backlog long enough to get them.
    fn grow(&mut self, now: Instant) {
        if !self.backlogged() {
            self.backlog_since = None;
            return;
        }
        let live = self.live.load(Ordering::SeqCst);
        if live >= self.max {
            return;
        }
        let since = *self.backlog_since.get_or_insert(now);
        if live < EAGER_WORKERS || now.duration_since(since) >= GROW_EVERY {
            self.spawn();
            self.backlog_since = Some(now);
        }
    }

    fn spawn(&mut self) {
        if let Err(error) = self.try_spawn() {
            tracing::warn!(%error, "cannot start a worker thread; the queued turns wait for a busy one");
        }
    }

    fn try_spawn(&mut self) -> io::Result<()> {
        let registry = self.registry.try_clone()?;
        self.live.fetch_add(1, Ordering::SeqCst);
        let (queue, notify) = (Arc::clone(&self.queue), Arc::clone(&self.notify));
        let (live, idle) = (Arc::clone(&self.live), Arc::clone(&self.idle));
        let builder =
            std::thread::Builder::new().name(format!("raftkv-worker-{}", self.node_id)).stack_size(WORKER_STACK);
        let spawned = builder.spawn(move || {
            loop {
                idle.fetch_add(1, Ordering::SeqCst);
                let job = queue.pop(WORKER_IDLE);
                idle.fetch_sub(1, Ordering::SeqCst);
                match job {
                    Popped::Turn(client) => {
                        let back_msg = match turn(client) {
                            Ok(client) => Back::Again(client),
                            Err(client) => {
                                let fd = client.stream.as_raw_fd();
                                let _ = registry.deregister(&mut SourceFd(&fd));
                                Back::Closed(client.token)
                            }
                        };
                        if !notify.post(back_msg) {
                            break;
                        }
                    }
                    Popped::TimedOut => {
                        // Leave unless that would drop below the minimum.
                        let left =
                            live.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n > MIN_WORKERS).then(|| n - 1));
                        if left.is_ok() {
                            return;
                        }
                    }
                    Popped::Closed => break,
                }
            }
            live.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        spawned.map(drop)
    }
}

/// One turn of a connection on a worker: answer every complete request, write the replies. `Err`
/// when the connection is finished (closed by the client, `QUIT`, a protocol error, a failed write).
fn turn(mut client: Box<Client>) -> Result<Box<Client>, Box<Client>> {
    if client.stream.set_nonblocking(false).is_err() {
        return Err(client);
    }
    let Client { stream, conn, parser, buf, .. } = &mut *client;
    match conn.answer_parsed(parser, buf, stream) {
        Ok(Next::Continue) => {}
        Ok(Next::Close) => {
            let _ = stream.write_all(&buf.out);
            lingering_close(stream);
            return Err(client);
        }
        Err(error) => {
            tracing::debug!(client = conn.id, %error, "client connection ended");
            return Err(client);
        }
    }
    buf.release_if_empty();
    if conn.entry.is_killed() {
        return Err(client);
    }
    match client.stream.set_nonblocking(true) {
        Ok(()) => Ok(client),
        Err(_) => Err(client),
    }
}

/// What reading a connection's available bytes found.
enum Arrived {
    /// New bytes: a worker should look at them.
    Got,
    /// [`TURN_READ_MAX`] new bytes and maybe more waiting: an edge-triggered poller gets no new
    /// event for those, so the connection must not be parked.
    Capped,
    /// Nothing new.
    Nothing,
    /// The client closed the connection (or it failed) with nothing left to answer.
    Closed,
}

impl Client {
    /// Reads what the socket holds (at most [`TURN_READ_MAX`]) through the poller's scratch buffer,
    /// so that an idle connection keeps no buffer of its own.
    ///
    /// A read shorter than the scratch buffer emptied the socket (the poller is edge-triggered and
    /// reports any byte that arrives later), so the read that would say `EAGAIN` is skipped: a
    /// pipelined turn costs one `recv`, not two, and the turn after it none until an event comes.
    fn read_available(&mut self, scratch: &mut [u8]) -> Arrived {
        if !self.readable {
            return Arrived::Nothing;
        }
        let mut got = 0;
        let mut emptied = false;
        while got < TURN_READ_MAX {
            match self.stream.read(scratch) {
                // End of stream: answer what came before it first (the next read sees the end again).
                Ok(0) => return if got > 0 { Arrived::Got } else { Arrived::Closed },
                Ok(n) => {
                    self.buf.input.extend_from_slice(&scratch[..n]);
                    self.buf.request_bytes += n;
                    got += n;
                    if n < scratch.len() && !self.drain {
                        emptied = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    emptied = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Arrived::Closed,
            }
        }
        if emptied {
            self.readable = false;
            self.drain = false;
        }
        if got >= TURN_READ_MAX {
            Arrived::Capped
        } else if got > 0 {
            Arrived::Got
        } else {
            Arrived::Nothing
        }
    }
}

/// The event loop's state.
struct Poller {
    shared: Arc<Shared>,
    poll: Poll,
    listener: mio::net::TcpListener,
    slots: HashMap<Token, Slot>,
    workers: Workers,
    back: Receiver<Back>,
    scratch: Vec<u8>,
    /// When each inline turn's answer is due, in order (the retry bound is the same for all).
    deadlines: VecDeque<(Instant, Token, u64)>,
    /// The last inline turn's id.
    next_turn: u64,
}

/// Starts the event loop on `listener`; returns its thread and the waker that interrupts it (after
/// setting `shared.stopping`).
pub(super) fn start(shared: Arc<Shared>, listener: std::net::TcpListener) -> io::Result<(JoinHandle<()>, Arc<Waker>)> {
    listener.set_nonblocking(true)?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    shared.registry.set_waker(Arc::clone(&waker));
    let (back_tx, back) = crossbeam_channel::unbounded();
    let notify = Arc::new(Notify { back: back_tx, waker: Arc::clone(&waker), pending: AtomicBool::new(false) });
    let workers = Workers {
        queue: Arc::default(),
        notify,
        registry: poll.registry().try_clone()?,
        live: Arc::new(AtomicUsize::new(0)),
        idle: Arc::new(AtomicUsize::new(0)),
        max: shared.options.max_workers.max(1),
        node_id: shared.node_id,
        backlog_since: None,
    };
    let mut poller = Poller {
        shared: Arc::clone(&shared),
        poll,
        listener,
        slots: HashMap::new(),
        workers,
        back,
        scratch: vec![0; 64 * 1024],
        deadlines: VecDeque::new(),
        next_turn: 0,
    };
    let handle =
        std::thread::Builder::new().name(format!("raftkv-poll-{}", shared.node_id)).spawn(move || poller.run())?;
    Ok((handle, waker))
}

impl Drop for Poller {
    /// The workers leave with the event loop (a busy one after its turn).
    fn drop(&mut self) {
        self.workers.queue.close();
    }
}

impl Poller {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            // While turns wait for a worker, come back to start another.
            let now = Instant::now();
            let due = self.deadlines.front().map(|&(deadline, ..)| deadline.saturating_duration_since(now));
            let grow = self.workers.backlogged().then_some(GROW_EVERY);
            let timeout = match (due, grow) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(%error, "client event loop failed; no more client connections are served");
                return;
            }
            if self.shared.stopping.load(Ordering::SeqCst) {
                // Dropping the listener and the idle connections closes them; busy ones finish
                // their turn and are dropped when they come back.
                return;
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKE => self.close_killed(),
                    token => {
                        let closing = event.is_read_closed() || event.is_error();
                        match self.slots.get_mut(&token) {
                            Some(Slot::Idle(_)) => {
                                let Some(Slot::Idle(mut client)) = self.slots.insert(token, Slot::Busy) else {
                                    unreachable!("checked above")
                                };
                                client.readable = true;
                                client.drain |= closing;
                                self.serve(client);
                            }
                            // Read once its answer is written.
                            Some(Slot::Reading(client, _) | Slot::Writing(client, _)) => {
                                client.readable = true;
                                client.drain |= closing;
                            }
                            // The hand-back reads until `EAGAIN`.
                            Some(Slot::Busy) | None => {}
                        }
                    }
                }
            }
            // Before draining: a post after this wakes the poller again (see [`Notify`]).
            self.workers.notify.pending.store(false, Ordering::SeqCst);
            while let Ok(back) = self.back.try_recv() {
                match back {
                    Back::Again(mut client) => {
                        // Events while the worker had it were not seen.
                        client.readable = true;
                        client.drain = true;
                        self.serve(client)
                    }
                    Back::Closed(token) => {
                        self.slots.remove(&token);
                    }
                    Back::Read { token, id, results } => {
                        if let Some(Slot::Reading(client, turn)) = self.take_turn(token, id) {
                            if let Some(client) = self.answer_reads(client, turn, results) {
                                self.serve(client);
                            }
                        }
                    }
                    Back::Wrote { token, id, result } => {
                        if let Some(Slot::Writing(client, turn)) = self.take_turn(token, id) {
                            if let Some(client) = self.answer_write(client, turn, result) {
                                self.serve(client);
                            }
                        }
                    }
                }
            }
            self.expire_turns(Instant::now());
            self.workers.grow(Instant::now());
        }
    }

    /// The slot of `token` if it still waits for inline turn `id` (ids are unique across reads
    /// and writes), taken out of the table.
    fn take_turn(&mut self, token: Token, id: u64) -> Option<Slot> {
        let waiting = match self.slots.get(&token) {
            Some(Slot::Reading(_, turn)) => turn.id == id,
            Some(Slot::Writing(_, turn)) => turn.id == id,
            _ => false,
        };
        if waiting { self.slots.remove(&token) } else { None }
    }

    /// Ends the inline turns whose answer did not come within the retry bound, as a worker's
    /// wait would have: a write as timed out (`-UNCERTAIN`: it may still apply), reads with
    /// `-TRYAGAIN` (a read never takes effect).
    fn expire_turns(&mut self, now: Instant) {
        while let Some(&(deadline, token, id)) = self.deadlines.front() {
            if deadline > now {
                return;
            }
            if self.deadlines.len() == 1 && self.deadlines.capacity() > 4096 {
                // After a burst: give the queue's memory back.
                self.deadlines.shrink_to(64);
            }
            self.deadlines.pop_front();
            let expired = self.take_turn(token, id);
            if let Some(Slot::Writing(client, turn)) = expired {
                if let Some(client) = self.answer_write(client, turn, Err(ProposalError::Timeout)) {
                    self.serve(client);
                }
            } else if let Some(Slot::Reading(client, turn)) = expired {
                tracing::debug!(client = client.conn.id, "read not confirmed within the retry bound");
                let replies = turn
                    .items
                    .into_iter()
                    .map(|item| match item {
                        Queued::Reply(reply) => reply,
                        _ => Reply::error(super::TRYAGAIN_NO_LEADER),
                    })
                    .collect();
                client.conn.note(&turn.seen);
                if let Some(client) = self.write_replies(client, replies) {
                    self.serve(client);
                }
            }
        }
    }

    /// A new inline turn's id, whose answer is due by the retry bound.
    fn new_turn(&mut self, token: Token) -> (u64, Instant) {
        self.next_turn += 1;
        let deadline = Instant::now() + self.shared.options.retry_bound;
        self.deadlines.push_back((deadline, token, self.next_turn));
        (self.next_turn, deadline)
    }

    /// Closes the idle connections `CLIENT KILL` named (busy ones close at the end of their turn).
    fn close_killed(&mut self) {
        for id in self.shared.registry.take_killed() {
            let token = Token(id as usize);
            if matches!(self.slots.get(&token), Some(Slot::Idle(_))) {
                if let Some(Slot::Idle(client)) = self.slots.remove(&token) {
                    self.drop_client(client);
                }
            }
        }
    }

    /// Reads what a connection (marked busy) has and hands it to a worker, parks it as idle, or
    /// drops it. A loop, not recursion: a client that keeps sending instant commands (`PING`s)
    /// is answered turn after turn here without growing the stack, for at most
    /// [`INLINE_TURNS_IN_A_ROW`] turns; then a worker takes it, so that it cannot keep the event
    /// loop from every other connection.
    fn serve(&mut self, mut client: Box<Client>) {
        for _ in 0..INLINE_TURNS_IN_A_ROW {
            if client.conn.entry.is_killed() {
                return self.drop_client(client);
            }
            let fresh = match client.read_available(&mut self.scratch) {
                Arrived::Got => true,
                // A worker's turn, whose hand-back reads the rest.
                Arrived::Capped => return self.workers.run(client),
                Arrived::Nothing if client.buf.input.is_empty() => {
                    client.buf.input = BytesMut::new();
                    return self.park(client);
                }
                // An inline turn may have left complete requests (it takes at most a batch).
                Arrived::Nothing => false,
                Arrived::Closed => return self.drop_client(client),
            };
            match self.dispatch(client, fresh) {
                Some(answered) => client = answered,
                None => return,
            }
        }
        self.workers.run(client);
    }

    /// Starts a connection's turn. A turn of data commands (and replies known at once) is served
    /// without a worker: reads alone are one read round on the node thread; with a write among them
    /// (on the leader), the turn's ops are one proposal. The node thread posts the answer back here
    /// ([`Back::Read`], [`Back::Wrote`]), so a pipeline costs two thread hops instead of four and
    /// the proposals of every connection that has something to write meet in one batch. Any other
    /// request sends the turn to a worker, with what was parsed so far. `fresh` says whether bytes
    /// arrived (without, only an inline turn can have work left). Returns the connection when its
    /// turn was answered at once, to be served again.
    fn dispatch(&mut self, mut client: Box<Client>, fresh: bool) -> Option<Box<Client>> {
        let inline = client.conn.authenticated
            && client.conn.tx.is_none()
            && client.buf.pending.is_empty()
            && client.buf.out.is_empty();
        if !inline {
            if fresh {
                self.workers.run(client)
            } else {
                self.park(client)
            }
            return None;
        }
        let reads_logged = self.shared.cluster.reads.mode == ReadMode::Log;
        let max_entry_bytes = self.shared.options.limits.max_entry_bytes;
        let mut leader = None;
        let mut requests = Vec::new();
        let mut items = Vec::new();
        let mut seen = Seen::default();
        // Ops that go through the log, and about how many bytes they take in the entry.
        let (mut logged, mut bytes) = (0, 0);
        while requests.len() < MAX_BATCH_COMMANDS {
            match client.parser.parse(&mut client.buf.input) {
                Ok(Some(args)) => {
                    client.buf.request_bytes = client.buf.input.len();
                    let item = client.conn.batchable(&args);
                    requests.push(args);
                    let inline_item = match &item {
                        Some(Queued::Op(op)) if reads_logged || !op.is_read_only() => {
                            // Through the log: only a leader proposes, and the ops' bytes stay
                            // within half the entry limit, as a worker's batch does.
                            let len = op.encoded_len();
                            let is_leader =
                                *leader.get_or_insert_with(|| self.shared.node.status().role == Role::Leader);
                            let fits = logged == 0 || bytes + len <= max_entry_bytes / 2;
                            logged += 1;
                            bytes += len;
                            is_leader && fits
                        }
                        Some(Queued::Op(_) | Queued::Reply(_)) => true,
                        Some(Queued::Conn(_)) | None => false,
                    };
                    match item {
                        Some(item) if inline_item => {
                            seen.saw(requests.last().map_or(&[][..], |r| &r[..]), &self.shared.commands);
                            items.push(item);
                        }
                        _ => {
                            self.hand_to_worker(client, requests.into_iter().map(Ok).collect());
                            return None;
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let mut pending: VecDeque<_> = requests.into_iter().map(Ok).collect();
                    pending.push_back(Err(error));
                    self.hand_to_worker(client, pending);
                    return None;
                }
            }
        }
        if requests.is_empty() {
            // Nothing complete; a worker answers a request grown over the limit.
            let oversized = client.buf.request_bytes > self.shared.options.max_request_bytes();
            if oversized {
                self.workers.run(client)
            } else {
                self.park(client)
            }
            return None;
        }
        let token = client.token;
        if logged > 0 {
            self.propose_turn(client, items, seen);
            return None;
        }
        let ops: Vec<KvOp> =
            items.iter().filter_map(|item| if let Queued::Op(op) = item { Some(op.clone()) } else { None }).collect();
        if ops.is_empty() {
            let turn = ReadTurn { id: 0, requests, items, seen };
            return self.answer_reads(client, turn, Ok(Vec::new()));
        }
        let (id, _) = self.new_turn(token);
        let turn = ReadTurn { id, requests, items, seen };
        let (now_ms, db) = (unix_ms(), client.conn.db);
        self.slots.insert(token, Slot::Reading(client, turn));
        let notify = Arc::clone(&self.workers.notify);
        self.shared.node.read_then(move |store: Result<&KvStore, ReadFailure>| {
            let results = store.map(|kv| ops.iter().map(|op| kv.query_in(db, op, now_ms)).collect());
            notify.post(Back::Read { token, id, results });
        });
        None
    }

    /// Proposes the ops of an inline turn: one op as itself, several as one `Exec` entry (one
    /// sequence number of the session, applied as a whole), as a worker's batch would be.
    fn propose_turn(&mut self, mut client: Box<Client>, items: Vec<Queued>, seen: Seen) {
        let mut ops = items.iter().filter_map(|item| if let Queued::Op(op) = item { Some(op) } else { None });
        let (first, second) = (ops.next().cloned(), ops.next());
        let batched = second.is_some();
        let op = match first {
            Some(op) if !batched => op,
            _ => entry_op(&items, Vec::new()).0,
        };
        let mut request = client.conn.log_request(op);
        request.now_ms = unix_ms();
        let encoded = request.encode();
        let token = client.token;
        let (id, deadline) = self.new_turn(token);
        self.slots.insert(token, Slot::Writing(client, WriteTurn { id, items, request, deadline, batched, seen }));
        let notify = Arc::clone(&self.workers.notify);
        self.shared.node.propose_then(encoded, move |result| {
            notify.post(Back::Wrote { token, id, result });
        });
    }

    /// Finishes an inline write turn: its replies in order once the proposal applied. Any failure
    /// goes to a worker, which retries the same request (same `(session, seq)`, so it applies at
    /// most once) until the retry bound and says what the client may conclude, as for a write it
    /// proposed itself.
    fn answer_write(
        &mut self,
        mut client: Box<Client>,
        turn: WriteTurn,
        result: ProposalResult<KvResult>,
    ) -> Option<Box<Client>> {
        let WriteTurn { items, request, deadline, batched, seen, .. } = turn;
        client.conn.note(&seen);
        match result {
            Ok(result) => {
                let replies = client.conn.entry_replies(items, result_reply(result), batched);
                self.write_replies(client, replies)
            }
            Err(error) => {
                let first = forward::proposal_attempt(error);
                client.buf.resume = Some(Resume { items, request, deadline, first, batched });
                self.workers.run(client);
                None
            }
        }
    }

    /// Hands a turn to a worker with the requests parsed so far.
    fn hand_to_worker(&mut self, mut client: Box<Client>, pending: VecDeque<Result<Vec<Bytes>, RespError>>) {
        client.buf.pending = pending;
        self.workers.run(client);
    }

    /// Finishes an inline read turn: the replies in order, written without blocking (a worker
    /// writes what does not fit), then the next turn. A failed read (no leader, a leader change)
    /// goes to a worker, whose read path retries until the retry bound; a read never takes effect,
    /// so running it again is safe. Returns the connection when everything was written, to be
    /// served again.
    fn answer_reads(
        &mut self,
        client: Box<Client>,
        turn: ReadTurn,
        results: Result<Vec<Option<KvResult>>, ReadFailure>,
    ) -> Option<Box<Client>> {
        let Ok(results) = results else {
            self.hand_to_worker(client, turn.requests.into_iter().map(Ok).collect());
            return None;
        };
        let mut results = results.into_iter();
        let replies: Vec<Reply> = turn
            .items
            .into_iter()
            .map(|item| match item {
                Queued::Op(_) => forward::read_reply(results.next().flatten()),
                Queued::Reply(reply) => reply,
                Queued::Conn(_) => Reply::error("ERR internal error: a connection command in a read turn"),
            })
            .collect();
        client.conn.note(&turn.seen);
        self.write_replies(client, replies)
    }

    /// Writes a turn's replies without blocking (a worker writes what does not fit). Returns the
    /// connection when everything was written, to be served again.
    fn write_replies(&mut self, mut client: Box<Client>, replies: Vec<Reply>) -> Option<Box<Client>> {
        let protocol = client.conn.protocol;
        for reply in &replies {
            resp::encode(reply, protocol, &mut client.buf.out);
        }
        while !client.buf.out.is_empty() {
            match client.stream.write(&client.buf.out) {
                Ok(0) => {
                    self.drop_client(client);
                    return None;
                }
                Ok(n) => client.buf.out.advance(n),
                // The worker's turn starts by writing the rest (blocking, with the write timeout).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.workers.run(client);
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_client(client);
                    return None;
                }
            }
        }
        client.buf.release_if_empty();
        Some(client)
    }

    fn park(&mut self, client: Box<Client>) {
        self.slots.insert(client.token, Slot::Idle(client));
    }

    fn drop_client(&mut self, client: Box<Client>) {
        let fd = client.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        self.slots.remove(&client.token);
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => TcpStream::from(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // E.g. out of file descriptors: the listener stays readable, so back off a
                    // little instead of spinning on it.
                    tracing::warn!(%error, "accept failed");
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            };
            self.admit(stream);
        }
    }

    /// Takes a new connection if the client limit allows.
    fn admit(&mut self, stream: TcpStream) {
        let shared = &self.shared;
        if shared.clients.fetch_add(1, Ordering::SeqCst) >= shared.options.max_clients {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
            let mut out = BytesMut::new();
            resp::encode(&Reply::error("ERR max number of clients reached"), Protocol::Resp2, &mut out);
            let _ = (&stream).write_all(&out);
            return;
        }
        let setup = || -> io::Result<()> {
            stream.set_nodelay(true)?;
            // A client that stops reading holds its worker at most this long per write.
            stream.set_write_timeout(Some(Duration::from_secs(30)))?;
            stream.set_nonblocking(true)
        };
        if let Err(error) = setup() {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
            tracing::debug!(%error, "cannot set up a client connection");
            return;
        }
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        let conn = Conn::new(Arc::clone(shared), id, &stream);
        let token = Token(id as usize);
        let fd = stream.as_raw_fd();
        if let Err(error) = self.poll.registry().register(&mut SourceFd(&fd), token, Interest::READABLE) {
            tracing::warn!(%error, "cannot watch a client connection");
            return;
        }
        let parser = RequestParser::new(shared.options.parser_limits());
        let client =
            Box::new(Client { conn, stream, token, parser, buf: Buffers::default(), readable: true, drain: true });
        // Bytes may have arrived with the connection: look now (edge-triggered events only report
        // what arrives from here on).
        self.slots.insert(token, Slot::Busy);
        self.serve(client);
    }
}

/// The default of [`ServerOptions::max_workers`].
pub(super) const DEFAULT_MAX_WORKERS: usize = 1024;
