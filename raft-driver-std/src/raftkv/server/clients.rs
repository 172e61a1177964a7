//! The table of open client connections behind `CLIENT LIST`, `CLIENT INFO` and `CLIENT KILL`.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use bytes::Bytes;

use crate::raftkv::command::KillFilter;

/// One open connection, as the table shows it.
#[derive(Debug)]
pub(super) struct ClientEntry {
    pub(super) id: u64,
    addr: String,
    laddr: String,
    created: Instant,
    /// Set by `CLIENT KILL`: the event loop closes the connection (at once if it is idle, else at
    /// the end of its turn). A flag rather than a second handle on the socket, which would double
    /// the descriptors a connection costs.
    killed: AtomicBool,
    state: Mutex<ClientState>,
}

/// What changes while a connection lives.
#[derive(Debug)]
pub(super) struct ClientState {
    pub(super) name: Option<Bytes>,
    pub(super) lib_name: Option<Bytes>,
    pub(super) lib_ver: Option<Bytes>,
    /// The last command's name, lower case.
    pub(super) last_cmd: String,
    pub(super) last_active: Instant,
    /// RESP version.
    pub(super) resp: u8,
    /// Commands queued in an open `MULTI` (-1 outside one).
    pub(super) multi: i64,
    /// The follower-to-leader forwarding connection of a node, not a user's.
    pub(super) forwarder: bool,
    /// The `SELECT`ed database.
    pub(super) db: u8,
}

impl ClientEntry {
    pub(super) fn new(id: u64, stream: &TcpStream) -> ClientEntry {
        let text = |a: std::io::Result<std::net::SocketAddr>| a.map_or_else(|_| "?:0".to_owned(), |a| a.to_string());
        let now = Instant::now();
        ClientEntry {
            id,
            addr: text(stream.peer_addr()),
            laddr: text(stream.local_addr()),
            created: now,
            killed: AtomicBool::new(false),
            state: Mutex::new(ClientState {
                name: None,
                lib_name: None,
                lib_ver: None,
                last_cmd: "NULL".to_owned(),
                last_active: now,
                resp: 2,
                multi: -1,
                forwarder: false,
                db: 0,
            }),
        }
    }

    /// Changes the mutable part.
    pub(super) fn update(&self, f: impl FnOnce(&mut ClientState)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The `CLIENT LIST` line (Redis 7's fields that mean something here, in its order).
    pub(super) fn line(&self) -> String {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let text = |b: &Option<Bytes>| b.as_ref().map_or_else(String::new, |b| String::from_utf8_lossy(b).into_owned());
        format!(
            "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db={} sub=0 psub=0 ssub=0 multi={} \
             watch=0 cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            text(&s.name),
            self.created.elapsed().as_secs(),
            s.last_active.elapsed().as_secs(),
            if s.multi >= 0 { "x" } else { "N" },
            s.db,
            s.multi,
            s.last_cmd,
            s.resp,
            text(&s.lib_name),
            text(&s.lib_ver),
        )
    }

    pub(super) fn is_forwarder(&self) -> bool {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).forwarder
    }

    fn matches(&self, filter: &KillFilter) -> bool {
        filter.id.is_none_or(|id| id == self.id)
            && filter.addr.as_ref().is_none_or(|a| *a == self.addr)
            && filter.laddr.as_ref().is_none_or(|a| *a == self.laddr)
    }

    /// Whether `CLIENT KILL` closed this connection.
    pub(super) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// Every open connection by id.
#[derive(Debug, Default)]
pub(super) struct Registry {
    clients: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
    /// Connections killed since the event loop last looked.
    killed: Mutex<Vec<u64>>,
    /// Wakes the event loop to close killed connections.
    waker: OnceLock<Arc<mio::Waker>>,
}

impl Registry {
    pub(super) fn add(&self, entry: Arc<ClientEntry>) {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).insert(entry.id, entry);
    }

    pub(super) fn remove(&self, id: u64) {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }

    fn all(&self) -> Vec<Arc<ClientEntry>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// `CLIENT LIST`: users' connections (a follower's forwarding connections are the cluster's own,
    /// not clients), or only `ids`.
    pub(super) fn list(&self, ids: &[u64]) -> String {
        let mut text = String::new();
        for entry in self.all() {
            let wanted = if ids.is_empty() { !entry.is_forwarder() } else { ids.contains(&entry.id) };
            if wanted {
                text.push_str(&entry.line());
                text.push('\n');
            }
        }
        text
    }

    /// Connections now open, users' and forwarding ones.
    pub(super) fn count(&self) -> usize {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Users' connections now open.
    pub(super) fn user_count(&self) -> usize {
        self.all().iter().filter(|e| !e.is_forwarder()).count()
    }

    /// `CLIENT KILL`: closes the matching connections (not `me` if the filter skips it); how many.
    pub(super) fn kill(&self, filter: &KillFilter, me: u64) -> usize {
        let mut ids = Vec::new();
        for entry in self.all() {
            if entry.matches(filter)
                && !(filter.skip_me && entry.id == me)
                && !entry.killed.swap(true, Ordering::SeqCst)
            {
                ids.push(entry.id);
            }
        }
        let count = ids.len();
        if count > 0 {
            self.killed.lock().unwrap_or_else(PoisonError::into_inner).extend(ids);
            if let Some(waker) = self.waker.get() {
                let _ = waker.wake();
            }
        }
        count
    }

    /// The event loop's waker, set once it runs.
    pub(super) fn set_waker(&self, waker: Arc<mio::Waker>) {
        let _ = self.waker.set(waker);
    }

    /// The connections killed since the last call.
    pub(super) fn take_killed(&self) -> Vec<u64> {
        std::mem::take(&mut *self.killed.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
