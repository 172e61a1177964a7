//! Snapshot transfer between processes: a follower that the leader sent
//! `InstallSnapshot` fetches the snapshot file from it over its own TCP
//! connection to the leader's peer listener.
//!
//! The transfer never shares a connection with Raft messages, so a large
//! snapshot cannot delay heartbeats to anyone (each peer's messages keep
//! their own writer and connection), and it never holds a snapshot in
//! memory: the serving side streams the file in [`CHUNK_BYTES`] pieces, the
//! fetching side appends them to `NAME.part` as they arrive, and TCP flow
//! control paces the two. A transfer cut short resumes where the `.part`
//! file ends; the file's own CRC (checked by [`crate::snapshot_file::read`]
//! before anything is restored) catches whatever a resumed or damaged
//! transfer got wrong.
//!
//! # Wire format (fetch version 1)
//!
//! The fetching side sends 46 bytes, all integers big-endian: magic `RFTs`,
//! a version (`u16`, always 1: the layout of a version-1 peer handshake,
//! which the request's head shares), cluster id, its node id, the node id it means
//! to reach (`u64` each; the same checks as a peer handshake), then the
//! snapshot's last included index and the byte offset to start at (`u64`
//! each). The serving side replies with `RFTs` and a [`FetchStatus`] byte;
//! after `Accepted` come the file's total length (`u64`) and its bytes from
//! the offset to the end, and the connection closes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use raft_core::{Index, NodeId};

use super::frame::{AckStatus, HANDSHAKE_LEN, Handshake, MAGIC};

/// The version a fetch request carries where a handshake has its wire
/// version: 1, the version-1 handshake layout the request's head shares
/// (the request has not changed since; a peer handshake is at version 2).
const FETCH_VERSION: u16 = 1;
use super::{Rejection, Shared, Stop, Watch, bump, check_handshake, read_full};
use crate::snapshot_file::snapshot_file_name;

/// The magic of a snapshot fetch request (a peer handshake starts `RFTx`).
pub(super) const FETCH_MAGIC: [u8; 4] = *b"RFTs";
/// Encoded request length: a handshake's 30 bytes, the index and the offset.
pub(super) const FETCH_REQUEST_LEN: usize = HANDSHAKE_LEN + 16;
/// Reply length before the file bytes: magic, status, and (when accepted)
/// the file length.
const REPLY_LEN: usize = 4 + 1 + 8;
/// Bytes read from the file and written to the socket at a time.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Attempts (the first and the resumptions) before a fetch gives up.
const FETCH_ATTEMPTS: u32 = 8;

/// The status byte of a fetch reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FetchStatus {
    /// The file follows.
    Accepted = 0,
    /// Not our protocol, or a version this build does not speak.
    BadProtocol = 1,
    /// The fetching node belongs to another cluster.
    WrongCluster = 2,
    /// The fetching node is not one of our peers.
    UnknownPeer = 3,
    /// The request was meant for another node id.
    NotForUs = 4,
    /// Our magic, but a wire format version this build does not speak.
    UnsupportedVersion = 5,
    /// We hold no snapshot file for that index (a newer one replaced it, or
    /// this node never took it): the leader will offer its current one.
    NoSnapshot = 6,
    /// The offset lies past the end of the file.
    BadOffset = 7,
    /// The cluster secret exchange failed or was missing (`transport::auth`): the two nodes do not
    /// hold the same secret.
    Unauthenticated = 8,
}

impl FetchStatus {
    const ALL: [FetchStatus; 9] = [
        Self::Accepted,
        Self::BadProtocol,
        Self::WrongCluster,
        Self::UnknownPeer,
        Self::NotForUs,
        Self::UnsupportedVersion,
        Self::NoSnapshot,
        Self::BadOffset,
        Self::Unauthenticated,
    ];

    fn from_byte(byte: u8) -> Option<FetchStatus> {
        Self::ALL.into_iter().find(|s| *s as u8 == byte)
    }

    fn of_rejection(status: AckStatus) -> FetchStatus {
        match status {
            AckStatus::WrongCluster => Self::WrongCluster,
            AckStatus::UnknownPeer => Self::UnknownPeer,
            AckStatus::NotForUs => Self::NotForUs,
            AckStatus::UnsupportedVersion => Self::UnsupportedVersion,
            AckStatus::SecretRequired => Self::Unauthenticated,
            AckStatus::Accepted | AckStatus::BadProtocol => Self::BadProtocol,
        }
    }
}

/// A snapshot fetch request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FetchRequest {
    pub(super) cluster_id: u64,
    pub(super) from: NodeId,
    pub(super) to: NodeId,
    pub(super) index: Index,
    pub(super) offset: u64,
}

impl FetchRequest {
    pub(super) fn encode(&self) -> [u8; FETCH_REQUEST_LEN] {
        let mut out = [0; FETCH_REQUEST_LEN];
        out[0..4].copy_from_slice(&FETCH_MAGIC);
        out[4..6].copy_from_slice(&FETCH_VERSION.to_be_bytes());
        for (at, word) in [(6, self.cluster_id), (14, self.from), (22, self.to), (30, self.index), (38, self.offset)] {
            out[at..at + 8].copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

/// Why a fetch failed.
#[derive(Debug)]
pub enum FetchError {
    /// The peer is not in the configuration.
    UnknownPeer(NodeId),
    /// The peer refused the request.
    Refused(FetchStatus),
    /// Every attempt failed; the last error.
    Io(io::Error),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::UnknownPeer(id) => write!(f, "node {id} is not a configured peer"),
            FetchError::Refused(status) => write!(f, "the peer refused the snapshot fetch: {status:?}"),
            FetchError::Io(e) => write!(f, "snapshot fetch failed after {FETCH_ATTEMPTS} attempts: {e}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// Serves one fetch request on an accepted connection whose first
/// [`HANDSHAKE_LEN`] bytes (`head`, starting with [`FETCH_MAGIC`]) were
/// already read.
pub(super) fn serve(
    shared: &std::sync::Arc<Shared>,
    stream: &TcpStream,
    remote: SocketAddr,
    head: &[u8; HANDSHAKE_LEN],
) {
    let node_id = shared.config.node_id;
    let mut rest = [0; FETCH_REQUEST_LEN - HANDSHAKE_LEN];
    let watch = Watch { shared, connection: None };
    if read_full(&mut &*stream, &mut rest, false, shared.config.io_timeout, &watch).is_err() {
        bump(&shared.stats.handshake_rejected, 1);
        return;
    }
    // The ids are checked exactly as a peer handshake's.
    let mut as_handshake = *head;
    as_handshake[..4].copy_from_slice(&MAGIC);
    let checked = Handshake::decode(&as_handshake)
        .map_err(|e| Rejection { status: e.status(), reason: e.to_string() })
        .and_then(|h| check_handshake(shared, &h));
    let from = match checked {
        Ok(from) => from,
        Err(Rejection { status, reason }) => {
            tracing::warn!(node_id, %remote, ?status, %reason, "rejecting snapshot fetch");
            bump(&shared.stats.handshake_rejected, 1);
            let _ = reply(stream, FetchStatus::of_rejection(status), 0);
            return;
        }
    };
    let index = u64::from_be_bytes(rest[0..8].try_into().expect("8 bytes"));
    let offset = u64::from_be_bytes(rest[8..16].try_into().expect("8 bytes"));
    match send_file(shared, stream, index, offset) {
        Ok(sent) => {
            bump(&shared.stats.snapshots_served, 1);
            tracing::info!(node_id, to = from, index, offset, sent, "snapshot sent");
        }
        Err(error) => tracing::info!(node_id, to = from, index, offset, %error, "snapshot not sent"),
    }
}

/// Refuses a fetch request that did not open with the cluster secret exchange.
pub(super) fn refuse_unauthenticated(stream: &TcpStream) {
    let _ = reply(stream, FetchStatus::Unauthenticated, 0);
}

fn reply(stream: &TcpStream, status: FetchStatus, len: u64) -> io::Result<()> {
    let mut out = [0; REPLY_LEN];
    out[..4].copy_from_slice(&FETCH_MAGIC);
    out[4] = status as u8;
    out[5..].copy_from_slice(&len.to_be_bytes());
    (&*stream).write_all(&out)
}

/// Streams the snapshot file for `index` from `offset`; returns the bytes sent.
fn send_file(shared: &Shared, stream: &TcpStream, index: Index, offset: u64) -> io::Result<u64> {
    let file = shared.config.snapshot_dir.as_ref().and_then(|dir| File::open(dir.join(snapshot_file_name(index))).ok());
    let Some(mut file) = file else {
        reply(stream, FetchStatus::NoSnapshot, 0)?;
        return Err(io::Error::new(io::ErrorKind::NotFound, "no such snapshot"));
    };
    let len = file.metadata()?.len();
    if offset > len {
        reply(stream, FetchStatus::BadOffset, len)?;
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "offset past the end"));
    }
    reply(stream, FetchStatus::Accepted, len)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; CHUNK_BYTES];
    let mut sent = 0;
    loop {
        if shared.stopping() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "transport stopping"));
        }
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(sent);
        }
        (&*stream).write_all(&buf[..n])?;
        sent += n as u64;
        bump(&shared.stats.snapshot_bytes_sent, n as u64);
    }
}

/// Fetches the snapshot file for `index` from `peer` into `dir`, resuming
/// a `.part` file left by an earlier attempt, and returns the complete
/// file's path (fsynced and renamed into place; its contents are checked by
/// whoever reads it). Blocks: run it on its own thread.
pub(super) fn fetch(shared: &Shared, peer: NodeId, index: Index, dir: &Path) -> Result<PathBuf, FetchError> {
    let config = &shared.config;
    let addr = shared.peer_addr(peer).ok_or(FetchError::UnknownPeer(peer))?;
    fs::create_dir_all(dir).map_err(FetchError::Io)?;
    let name = snapshot_file_name(index);
    let part = dir.join(format!("{name}.part"));
    remove_other_parts(dir, &part);
    let mut last_error = None;
    for attempt in 0..FETCH_ATTEMPTS {
        if shared.stopping() {
            break;
        }
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
        }
        let request =
            |offset| FetchRequest { cluster_id: config.cluster_id, from: config.node_id, to: peer, index, offset };
        match fetch_once(shared, addr, &part, request) {
            Ok(()) => {
                let path = dir.join(&name);
                File::open(&part).and_then(|f| f.sync_all()).map_err(FetchError::Io)?;
                fs::rename(&part, &path).map_err(FetchError::Io)?;
                File::open(dir).and_then(|d| d.sync_all()).map_err(FetchError::Io)?;
                bump(&shared.stats.snapshots_fetched, 1);
                return Ok(path);
            }
            Err(Attempt::Refused(status)) => return Err(FetchError::Refused(status)),
            Err(Attempt::Io(e)) => {
                tracing::debug!(node_id = config.node_id, peer, index, attempt, error = %e, "snapshot fetch interrupted");
                last_error = Some(e);
            }
        }
    }
    Err(FetchError::Io(last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::Interrupted, "transport stopping"))))
}

/// Partial files of other snapshots are dead: only one fetch runs at a
/// time, and a leader offers its newest snapshot.
fn remove_other_parts(dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        // Not `.tmp` files: a snapshot write may be under way in the same directory.
        let partial = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".snap.part"));
        if partial && path != keep {
            let _ = fs::remove_file(path);
        }
    }
}

enum Attempt {
    Refused(FetchStatus),
    Io(io::Error),
}

impl From<io::Error> for Attempt {
    fn from(e: io::Error) -> Attempt {
        Attempt::Io(e)
    }
}

/// One connection's worth of a fetch: appends to `part` from its current length.
fn fetch_once(
    shared: &Shared,
    addr: SocketAddr,
    part: &Path,
    request: impl Fn(u64) -> FetchRequest,
) -> Result<(), Attempt> {
    let config = &shared.config;
    let mut file = OpenOptions::new().create(true).append(true).open(part)?;
    let offset = file.metadata()?.len();
    let stream = TcpStream::connect_timeout(&addr, config.connect_timeout)?;
    stream.set_read_timeout(Some(config.poll_interval))?;
    stream.set_write_timeout(Some(config.io_timeout))?;
    stream.set_nodelay(true)?;
    if let Some(secret) = &config.secret {
        match super::authenticate_outbound(&stream, config, secret) {
            Ok(()) => stream.set_read_timeout(Some(config.poll_interval))?,
            Err(super::ConnectError::Auth(super::auth::AuthError::Io(e)) | super::ConnectError::Io(e)) => {
                return Err(Attempt::Io(e));
            }
            Err(error) => {
                tracing::warn!(%addr, %error, "snapshot fetch refused");
                return Err(Attempt::Refused(FetchStatus::Unauthenticated));
            }
        }
    }
    (&stream).write_all(&request(offset).encode())?;
    let watch = Watch { shared, connection: None };
    let mut head = [0; REPLY_LEN];
    read_full(&mut &stream, &mut head, false, config.io_timeout, &watch).map_err(stop_error)?;
    let status =
        FetchStatus::from_byte(head[4]).filter(|_| head[..4] == FETCH_MAGIC).unwrap_or(FetchStatus::BadProtocol);
    let len = u64::from_be_bytes(head[5..].try_into().expect("8 bytes"));
    match status {
        FetchStatus::Accepted => {}
        FetchStatus::BadOffset => {
            // Our partial file is longer than theirs: it is not theirs. Start over.
            file.set_len(0)?;
            return Err(Attempt::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "partial file longer than the snapshot",
            )));
        }
        other => return Err(Attempt::Refused(other)),
    }
    let mut buf = vec![0; CHUNK_BYTES];
    let mut have = offset;
    while have < len {
        let want = usize::try_from(len - have).unwrap_or(usize::MAX).min(CHUNK_BYTES);
        let got = read_some(&stream, &mut buf[..want], &watch)?;
        file.write_all(&buf[..got])?;
        have += got as u64;
        bump(&shared.stats.snapshot_bytes_received, got as u64);
    }
    Ok(())
}

/// Reads at least one byte, waiting up to `io_timeout` for it.
fn read_some(stream: &TcpStream, buf: &mut [u8], watch: &Watch<'_>) -> Result<usize, Attempt> {
    let start = std::time::Instant::now();
    loop {
        match (&*stream).read(buf) {
            Ok(0) => return Err(Attempt::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if let Some(stop) = watch.stop() {
                    return Err(stop_error(stop));
                }
                if start.elapsed() >= watch.shared.config.io_timeout {
                    return Err(Attempt::Io(io::ErrorKind::TimedOut.into()));
                }
            }
            Err(e) => return Err(Attempt::Io(e)),
        }
    }
}

fn stop_error(stop: Stop) -> Attempt {
    Attempt::Io(match stop {
        Stop::Io(e) => e,
        Stop::Eof => io::ErrorKind::UnexpectedEof.into(),
        Stop::Timeout => io::ErrorKind::TimedOut.into(),
        Stop::Shutdown | Stop::Superseded => io::Error::new(io::ErrorKind::Interrupted, "transport stopping"),
    })
}
