//! The wire format of the peer transport: the connection handshake and the
//! length-prefixed message frames. What a frame's payload holds is
//! `wire`'s business.
//!
//! Everything here is a pure function over byte slices (no sockets, no
//! clocks) so that a fuzz target can drive the decoder directly and the
//! format can be tested without threads.
//!
//! # Where the version lives
//!
//! The wire format version is in the handshake, once per connection, not in
//! every frame. A connection carries frames one way, from one writer thread
//! of one binary, for its whole life, so every frame on it has the version
//! the handshake named; a per-frame version byte could only repeat it, on
//! every heartbeat, and would be one more field that can disagree with the
//! rest. The handshake is checked before any frame is read, so a peer of an
//! unknown version is refused ([`AckStatus::UnsupportedVersion`]) before a
//! single payload could be misread. The handshake's first six bytes (magic
//! and version) and the five-byte reply are the part every version keeps,
//! so that any two builds can at least tell each other they disagree.
//!
//! With one supported version the frame functions below decode version 1;
//! a build supporting two would pick the decoder by the handshake's version.

use std::fmt;

use raft_core::{Message, NodeId};

use super::wire::{WireError, WireMessageV1};

/// Bytes in a frame's length prefix (a big-endian `u32`).
pub const FRAME_HEADER_LEN: usize = 4;

/// Default upper bound on a frame's payload: big enough for any sane
/// AppendEntries batch, small enough that a corrupt or hostile length prefix
/// cannot make a node allocate gigabytes.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(Debug)]
pub enum FrameError {
    /// The payload is longer than the configured limit (or than a `u32`
    /// length prefix can express).
    TooLarge {
        /// The payload length announced or produced.
        len: u64,
        /// The limit it exceeds.
        max: usize,
    },
    /// postcard could not serialize the message.
    Encode(postcard::Error),
    /// The payload is not a valid encoding of a version-1 wire message.
    Decode(postcard::Error),
    /// The payload decoded, but to a value no core [`Message`] can hold
    /// (e.g. an unknown entry kind).
    Invalid(WireError),
    /// The payload decoded but bytes were left over. A well-behaved peer
    /// never sends them, so they mean corruption or version skew; accepting
    /// them would let two different byte strings mean the same frame.
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => write!(f, "frame payload of {len} bytes exceeds limit of {max}"),
            FrameError::Encode(e) => write!(f, "cannot encode message: {e}"),
            FrameError::Decode(e) => write!(f, "cannot decode message: {e}"),
            FrameError::Invalid(e) => write!(f, "invalid message: {e}"),
            FrameError::TrailingBytes { extra } => write!(f, "{extra} trailing bytes after message"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Encode(e) | FrameError::Decode(e) => Some(e),
            FrameError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

/// Encodes `message` as one frame: a big-endian `u32` payload length
/// followed by the payload, the message converted to a `WireMessageV1`
/// and encoded with postcard.
///
/// Fails with [`FrameError::TooLarge`] if the payload exceeds
/// `max_frame_bytes`, because the receiver would reject it and close the
/// connection; dropping one message is cheaper than losing the connection.
pub fn encode_frame(message: &Message, max_frame_bytes: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_frame_into(message, max_frame_bytes, &mut out)?;
    Ok(out)
}

/// Like [`encode_frame`], but appends the frame to `out` (so a writer can
/// batch many frames into one buffer) and returns the number of bytes
/// appended. On error `out` is left unchanged.
pub fn encode_frame_into(message: &Message, max_frame_bytes: usize, out: &mut Vec<u8>) -> Result<usize, FrameError> {
    let payload = postcard::to_allocvec(&WireMessageV1::from(message)).map_err(FrameError::Encode)?;
    let len = check_len(payload.len() as u64, max_frame_bytes)?;
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(FRAME_HEADER_LEN + payload.len())
}

/// Decodes the first frame in `buf`.
///
/// Returns `Ok(None)` if `buf` does not yet hold a whole frame (read more
/// and retry), or `Ok(Some((message, consumed)))` where `consumed` is the
/// frame's total length including its header. A length prefix over
/// `max_frame_bytes` is an error as soon as the header is available, so a
/// caller never waits for (or buffers) an oversized payload.
pub fn decode_frame(buf: &[u8], max_frame_bytes: usize) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = payload_len(*header, max_frame_bytes)?;
    let Some(payload) = buf[FRAME_HEADER_LEN..].get(..len) else {
        return Ok(None);
    };
    let message = decode_payload(payload)?;
    Ok(Some((message, FRAME_HEADER_LEN + len)))
}

/// Decodes a frame's payload (the bytes after the length prefix), which must
/// be exactly one postcard-encoded version-1 wire message holding a valid
/// [`Message`].
pub fn decode_payload(payload: &[u8]) -> Result<Message, FrameError> {
    let (wire, rest) = postcard::take_from_bytes::<WireMessageV1>(payload).map_err(FrameError::Decode)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes { extra: rest.len() });
    }
    Message::try_from(wire).map_err(FrameError::Invalid)
}

/// Parses a length prefix and checks it against the limit.
pub(super) fn payload_len(header: [u8; FRAME_HEADER_LEN], max_frame_bytes: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header);
    check_len(u64::from(len), max_frame_bytes)?;
    // Cannot truncate: `len <= max_frame_bytes`, which is a usize.
    Ok(len as usize)
}

fn check_len(len: u64, max_frame_bytes: usize) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(small) if len <= max_frame_bytes as u64 => Ok(small),
        _ => Err(FrameError::TooLarge { len, max: max_frame_bytes }),
    }
}

/// First bytes of every connection, so that a stray client (an HTTP probe, a
/// client of another service on the wrong port) is recognised at once.
pub(super) const MAGIC: [u8; 4] = *b"RFTx";
/// The wire format version this build speaks: sent in every handshake, and
/// it fixes the layout of the handshake's ids and of every frame on the
/// connection.
///
/// Bumped on *any* change to those bytes (a field, a variant, an entry
/// kind): a peer that only knows the old version must refuse the
/// connection, not misread its frames.
///
/// Version 2 (membership changes) appends the sender's listen address to
/// the handshake, so that a node can reach a member it has not heard of
/// yet (one added while it lagged behind), and adds message tags 5 to 7 and
/// entry kind 2 to frames. Every version-1 frame means the same in version
/// 2, so connections from version-1 peers are still accepted and read with
/// the same decoder.
pub const WIRE_FORMAT_VERSION: u16 = 2;
/// The wire versions this build accepts from connecting peers.
pub const SUPPORTED_WIRE_VERSIONS: &[u16] = &[1, WIRE_FORMAT_VERSION];
/// Length of the handshake's part every version has: magic, version,
/// cluster id, from id, to id.
pub(super) const HANDSHAKE_LEN: usize = 4 + 2 + 8 + 8 + 8;
/// Length of the listen address a version-2 handshake appends: a family
/// byte (0 none, 4 IPv4, 6 IPv6), 16 address bytes (an IPv4 address in the
/// first 4, the rest zero) and the port, big-endian.
pub(super) const HANDSHAKE_ADDR_LEN: usize = 1 + 16 + 2;
/// Encoded reply length: magic and a status byte.
pub(super) const ACK_LEN: usize = 4 + 1;

/// The status byte of a handshake reply. The connecting side needs a reply
/// so that it can tell "accepted" from "rejected" and back off instead of
/// streaming messages into a connection that is about to be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum AckStatus {
    /// The handshake was accepted; frames may follow.
    Accepted = 0,
    /// Wrong magic bytes: not our protocol at all. (Builds before the
    /// wire types were owned by the transport also answered this for an
    /// unknown version.)
    BadProtocol = 1,
    /// The sender belongs to another cluster.
    WrongCluster = 2,
    /// The sender's id is not one of our peers.
    UnknownPeer = 3,
    /// The connection was meant for another node id.
    NotForUs = 4,
    /// Our magic, but a wire format version this build does not speak.
    UnsupportedVersion = 5,
    /// This node holds a cluster secret and the connection did not open with the exchange
    /// (`transport::auth`): the sender has no secret configured.
    SecretRequired = 6,
}

impl AckStatus {
    /// Every status, in byte order.
    pub(super) const ALL: [AckStatus; 7] = [
        Self::Accepted,
        Self::BadProtocol,
        Self::WrongCluster,
        Self::UnknownPeer,
        Self::NotForUs,
        Self::UnsupportedVersion,
        Self::SecretRequired,
    ];

    fn from_byte(byte: u8) -> Option<AckStatus> {
        Self::ALL.into_iter().find(|status| *status as u8 == byte)
    }

    /// Encodes the reply carrying this status.
    pub(super) fn encode(self) -> [u8; ACK_LEN] {
        let mut out = [0; ACK_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self as u8;
        out
    }

    /// Decodes a reply; `None` if it is not one of ours at all (or a status
    /// from a newer build).
    pub(super) fn decode(bytes: &[u8; ACK_LEN]) -> Option<AckStatus> {
        if bytes[..4] != MAGIC {
            return None;
        }
        Self::from_byte(bytes[4])
    }
}

/// The opening message of a connection, sent by the connecting side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Handshake {
    /// The cluster the sender belongs to; guards against wiring two
    /// clusters together by a configuration mistake.
    pub(super) cluster_id: u64,
    /// The sender's node id; every frame on this connection is from it.
    pub(super) from: NodeId,
    /// The node the sender means to reach; guards against stale address
    /// tables (a node restarted on another node's old address).
    pub(super) to: NodeId,
    /// Where the sender's own listener is (version 2; `None` in a version-1
    /// handshake or when the sender has no address to give).
    pub(super) listen: Option<std::net::SocketAddr>,
}

/// Why a handshake is not one this build can accept, before its ids are
/// even looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HandshakeError {
    /// The first four bytes are not [`MAGIC`].
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// Our magic, but a version not in [`SUPPORTED_WIRE_VERSIONS`].
    UnsupportedVersion {
        /// The version the peer sent.
        found: u16,
    },
    /// A version-2 listen address with an unknown family byte.
    BadAddress {
        /// The family byte found.
        family: u8,
    },
}

impl HandshakeError {
    /// The reply status that tells the peer.
    pub(super) fn status(self) -> AckStatus {
        match self {
            HandshakeError::BadMagic { .. } => AckStatus::BadProtocol,
            HandshakeError::UnsupportedVersion { .. } => AckStatus::UnsupportedVersion,
            HandshakeError::BadAddress { .. } => AckStatus::BadProtocol,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::BadMagic { found } => {
                write!(f, "not a raft peer (magic {found:02x?}, expected {MAGIC:02x?})")
            }
            HandshakeError::UnsupportedVersion { found } => write!(
                f,
                "peer speaks wire format version {found}, but this build supports only version(s) \
                 {SUPPORTED_WIRE_VERSIONS:?}"
            ),
            HandshakeError::BadAddress { family } => {
                write!(f, "handshake listen address of unknown family {family} (known: 0, 4, 6)")
            }
        }
    }
}

impl Handshake {
    /// Encodes the handshake at [`WIRE_FORMAT_VERSION`] (version 2: the
    /// common part, then the listen address); all integers big-endian.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_common(WIRE_FORMAT_VERSION).to_vec();
        let mut addr = [0u8; HANDSHAKE_ADDR_LEN];
        match self.listen {
            None => {}
            Some(std::net::SocketAddr::V4(a)) => {
                addr[0] = 4;
                addr[1..5].copy_from_slice(&a.ip().octets());
            }
            Some(std::net::SocketAddr::V6(a)) => {
                addr[0] = 6;
                addr[1..17].copy_from_slice(&a.ip().octets());
            }
        }
        if let Some(a) = self.listen {
            addr[17..19].copy_from_slice(&a.port().to_be_bytes());
        }
        out.extend_from_slice(&addr);
        out
    }

    /// The part every version has, stamped with `version`.
    pub(super) fn encode_common(&self, version: u16) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0; HANDSHAKE_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&version.to_be_bytes());
        out[6..14].copy_from_slice(&self.cluster_id.to_be_bytes());
        out[14..22].copy_from_slice(&self.from.to_be_bytes());
        out[22..30].copy_from_slice(&self.to.to_be_bytes());
        out
    }

    /// How many bytes follow the common part in a handshake of `version`.
    pub(super) fn extra_len(version: u16) -> usize {
        if version >= 2 { HANDSHAKE_ADDR_LEN } else { 0 }
    }

    /// Decodes a version-2 listen address.
    pub(super) fn decode_listen(
        bytes: &[u8; HANDSHAKE_ADDR_LEN],
    ) -> Result<Option<std::net::SocketAddr>, HandshakeError> {
        let port = u16::from_be_bytes([bytes[17], bytes[18]]);
        match bytes[0] {
            0 => Ok(None),
            4 => {
                let ip = std::net::Ipv4Addr::new(bytes[1], bytes[2], bytes[3], bytes[4]);
                Ok(Some(std::net::SocketAddr::from((ip, port))))
            }
            6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&bytes[1..17]);
                Ok(Some(std::net::SocketAddr::from((std::net::Ipv6Addr::from(octets), port))))
            }
            family => Err(HandshakeError::BadAddress { family }),
        }
    }

    /// The version a handshake's common part names (checked by [`Handshake::decode`]).
    pub(super) fn version_of(bytes: &[u8; HANDSHAKE_LEN]) -> u16 {
        u16::from_be_bytes([bytes[4], bytes[5]])
    }

    /// Decodes a handshake's common part, checking only magic and version;
    /// the caller reads [`Handshake::extra_len`] more bytes for the listen
    /// address, and checks the ids against its configuration.
    pub(super) fn decode(bytes: &[u8; HANDSHAKE_LEN]) -> Result<Handshake, HandshakeError> {
        let u64_at = |at: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(word)
        };
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(HandshakeError::BadMagic { found: magic });
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if !SUPPORTED_WIRE_VERSIONS.contains(&version) {
            return Err(HandshakeError::UnsupportedVersion { found: version });
        }
        Ok(Handshake { cluster_id: u64_at(6), from: u64_at(14), to: u64_at(22), listen: None })
    }
}
