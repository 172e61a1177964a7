//! A follower's connections to the leader's client port, shared by all of its client connections:
//! a few per leader, each carrying many forwarded requests at once.
//!
//! A request is written whole under the link's send lock, and its waiter joins the link's queue
//! under the same lock, so the queue's order is the wire's order. The leader answers a connection's
//! requests in order (it proposes every forwarded request it has read at once and answers them as
//! they commit, see `forward::start_forwarded`), so one reader thread per link hands each reply to
//! the waiter at the queue's front. A link that fails in any way (a write error, an unreadable
//! reply, the leader closing it) is broken for good: every request waiting on it is told it may
//! have been applied, and the next request opens a new link.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use raft_core::NodeId;

use super::Shared;
use super::forward::{Attempt, authenticate, parse_forward_reply};
use crate::oneshot::{self, Receiver, RecvTimeoutError, Sender};
use crate::raftkv::resp;

/// Most forwarding connections to one leader.
const LINKS_PER_LEADER: usize = 4;
/// Requests waiting on every link to a leader before another one is opened.
const LINK_BUSY: usize = 32;

/// What a waiter receives: the leader's answer, or why the link failed (the request may have
/// reached the leader).
type Answer = Result<Attempt, String>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every link of this node.
#[derive(Default)]
pub(super) struct Links {
    links: Mutex<Vec<Arc<Link>>>,
}

impl Drop for Links {
    /// Closes every link (which ends its reader thread).
    fn drop(&mut self) {
        for link in lock(&self.links).drain(..) {
            link.fail("server stopped");
        }
    }
}

/// One multiplexed connection to a leader.
struct Link {
    leader: NodeId,
    stream: Mutex<TcpStream>,
    /// Waiters in the order of their requests on the wire.
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// Each waiter with when its request was sent.
    queue: VecDeque<(Instant, Sender<Answer>)>,
    broken: bool,
}

impl Link {
    fn is_broken(&self) -> bool {
        lock(&self.waiting).broken
    }

    fn load(&self) -> usize {
        lock(&self.waiting).queue.len()
    }

    /// Marks the link broken and tells every waiter why.
    fn fail(&self, why: &str) {
        let waiters = {
            let mut waiting = lock(&self.waiting);
            waiting.broken = true;
            std::mem::take(&mut waiting.queue)
        };
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(why.to_owned()));
        }
        let _ = lock(&self.stream).shutdown(Shutdown::Both);
    }

    /// Writes `request` and queues its waiter; `Err` when nothing was sent.
    fn send(&self, request: &[u8]) -> Result<Receiver<Answer>, String> {
        let (tx, rx) = oneshot::channel();
        let mut stream = lock(&self.stream);
        {
            let mut waiting = lock(&self.waiting);
            if waiting.broken {
                return Err("forwarding connection broken".into());
            }
            waiting.queue.push_back((Instant::now(), tx));
        }
        if let Err(error) = stream.write_all(request) {
            drop(stream);
            // Part of the request may have gone out: the waiters (this one included) hear it failed.
            self.fail(&format!("write to leader {}: {error}", self.leader));
        }
        Ok(rx)
    }

    /// The reader thread: hands each reply to the waiter at the front. The leader answers every
    /// forwarded request within its timeout (at most the retry bound), so a front request older
    /// than `silence` means the leader is gone or cut off (a partition sends no reset): the link
    /// fails instead of holding its thread and its waiters forever.
    fn read_replies(&self, mut stream: TcpStream, max_reply: usize, silence: Duration) {
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let why = loop {
            let mut used = 0;
            loop {
                match parse_forward_reply(&buf[used..]) {
                    Ok(Some((attempt, n))) => {
                        used += n;
                        let Some((_, waiter)) = lock(&self.waiting).queue.pop_front() else {
                            return self.fail("a reply from the leader that no request asked for");
                        };
                        let _ = waiter.send(Ok(attempt));
                    }
                    Ok(None) => break,
                    Err(why) => return self.fail(&why),
                }
            }
            buf.drain(..used);
            if buf.len() > max_reply {
                break "oversized reply from the leader".to_owned();
            }
            match stream.read(&mut chunk) {
                Ok(0) => break format!("leader {} closed the forwarding connection", self.leader),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    let oldest = lock(&self.waiting).queue.front().map(|(sent, _)| sent.elapsed());
                    if oldest.is_some_and(|waited| waited > silence) {
                        break format!("leader {} did not answer for {silence:?}", self.leader);
                    }
                }
                Err(e) => break format!("read from leader {}: {e}", self.leader),
            }
        };
        self.fail(&why);
    }
}

/// How often a link's reader checks whether its oldest request has waited too long.
const LINK_CHECK: Duration = Duration::from_secs(1);
/// How much longer than the retry bound a request may wait for the leader's answer before the link
/// is given up.
const LINK_SILENCE_SLACK: Duration = Duration::from_secs(3);

/// How often a forwarded request's wait re-checks whether the leader changed.
const FORWARD_POLL: Duration = Duration::from_millis(50);

/// Bytes a forwarded reply may take beyond the largest value (its framing and the result's encoding).
const FORWARD_REPLY_SLACK_BYTES: usize = 64 * 1024;

impl Links {
    /// Sends `request` (an encoded `KvRequest`) to `leader` at `addr` and waits for its answer.
    pub(super) fn forward(
        &self,
        shared: &Shared,
        leader: NodeId,
        addr: SocketAddr,
        request: &Bytes,
        deadline: Instant,
    ) -> Attempt {
        let link = match self.link(shared, leader, addr, deadline) {
            Ok(link) => link,
            // Nothing was sent: this attempt certainly did not take effect.
            Err(why) => return Attempt::retry(why, false),
        };
        // Leave the leader time to answer before our own deadline.
        let budget = deadline.saturating_duration_since(Instant::now()).saturating_sub(Duration::from_millis(50));
        let mut out = BytesMut::with_capacity(request.len() + 64);
        resp::encode_request(
            &[super::FORWARD_COMMAND.as_bytes(), request.as_ref(), budget.as_millis().to_string().as_bytes()],
            &mut out,
        );
        let answer = match link.send(&out) {
            Ok(answer) => answer,
            Err(why) => return Attempt::retry(why, false),
        };
        let hard_deadline = deadline + Duration::from_millis(200);
        loop {
            match answer.recv_timeout(FORWARD_POLL) {
                Ok(Ok(attempt)) => return attempt,
                Ok(Err(why)) => return Attempt::retry(why, true),
                Err(RecvTimeoutError::Disconnected) => {
                    return Attempt::retry("forwarding connection dropped", true);
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            // The link stays: a late reply goes to this waiter's closed channel, harmlessly.
            if Instant::now() >= hard_deadline {
                return Attempt::retry(format!("no reply from leader {leader} in time"), true);
            }
            // A stopped or partitioned leader never answers: give up on it as soon as we learn of
            // another one.
            if shared.node.status().leader != Some(leader) {
                return Attempt::retry(format!("leader changed from {leader} while waiting"), true);
            }
        }
    }

    /// A link to `leader`: the least loaded one, or a new one when every link is busy (or there is
    /// none). Broken links and idle links to other nodes are closed on the way.
    fn link(&self, shared: &Shared, leader: NodeId, addr: SocketAddr, deadline: Instant) -> Result<Arc<Link>, String> {
        let best = {
            let mut links = lock(&self.links);
            links.retain(|link| {
                let keep = !link.is_broken() && (link.leader == leader || link.load() > 0);
                if !keep {
                    link.fail("closed: not the leader's");
                }
                keep
            });
            let mine: Vec<&Arc<Link>> = links.iter().filter(|l| l.leader == leader).collect();
            let best = mine.iter().min_by_key(|l| l.load()).map(|l| Arc::clone(l));
            match best {
                Some(link) if link.load() < LINK_BUSY || mine.len() >= LINKS_PER_LEADER => return Ok(link),
                other => other,
            }
        };
        // Connect outside the lock: other requests keep using the existing links meanwhile.
        match self.open(shared, leader, addr, deadline) {
            Ok(link) => {
                lock(&self.links).push(Arc::clone(&link));
                Ok(link)
            }
            Err(why) => best.ok_or(why),
        }
    }

    fn open(&self, shared: &Shared, leader: NodeId, addr: SocketAddr, deadline: Instant) -> Result<Arc<Link>, String> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = remaining.clamp(Duration::from_millis(1), Duration::from_millis(500));
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        if let Some(password) = &shared.options.requirepass {
            stream.set_read_timeout(Some(FORWARD_POLL)).map_err(|e| e.to_string())?;
            authenticate(&stream, password, deadline).map_err(|e| format!("AUTH at {addr}: {e}"))?;
            stream.set_read_timeout(None).map_err(|e| e.to_string())?;
        }
        let reader = stream.try_clone().map_err(|e| e.to_string())?;
        // Wakes the reader to check for a silent leader (see `read_replies`).
        reader.set_read_timeout(Some(LINK_CHECK)).map_err(|e| e.to_string())?;
        let silence = shared.options.retry_bound + LINK_SILENCE_SLACK;
        let link = Arc::new(Link { leader, stream: Mutex::new(stream), waiting: Mutex::new(Waiting::default()) });
        let max_reply = shared.node.max_entry_bytes().saturating_add(FORWARD_REPLY_SLACK_BYTES);
        let reading = Arc::clone(&link);
        std::thread::Builder::new()
            .name(format!("raftkv-link-{leader}"))
            .stack_size(256 * 1024)
            .spawn(move || reading.read_replies(reader, max_reply, silence))
            .map_err(|e| format!("cannot start a forwarding reader: {e}"))?;
        Ok(link)
    }
}
