//! The cluster secret: a challenge-response that opens every peer connection (Raft messages and
//! snapshot fetches alike) when [`TransportConfig::secret`](super::TransportConfig::secret) is
//! set, so that only nodes holding the secret can send this node Raft messages or fetch its
//! snapshots. It authenticates both ends; it does not encrypt (run the peer port on a private
//! network or through a TLS tunnel when the traffic itself must stay private).
//!
//! # Wire format (auth version 1)
//!
//! All integers big-endian; MACs are HMAC-SHA256 keyed with the secret.
//! 1. The connecting side sends 30 bytes, the length of a handshake's head so that the accepting
//!    side reads either with one read: magic `RFTa`, the auth version (`u16`, 1), its nonce (16
//!    random bytes), then 8 zero bytes.
//! 2. The accepting side answers 53 bytes: `RFTa`, a status byte ([`AuthStatus`]), its nonce (16
//!    bytes) and `HMAC("raft-peer-acceptor" ‖ connector nonce ‖ acceptor nonce)`; with a status
//!    other than `Challenge` the rest is zero and the connection closes.
//! 3. The connecting side checks that MAC (the acceptor knows the secret too) and sends its own,
//!    `HMAC("raft-peer-connector" ‖ connector nonce ‖ acceptor nonce)` (32 bytes).
//! 4. The accepting side answers one status byte: `Accepted`, or `WrongSecret` and a close.
//!
//! Then the connection goes on exactly as one without a secret: a handshake or a fetch request.
//! Fresh nonces on both sides make a recorded exchange useless for another connection. A node
//! with a secret refuses every connection that does not start this way; a node without one
//! answers `NoSecret`, so that a configuration mismatch is reported, not guessed at.

use std::fmt;
use std::io::{self, Read, Write};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The magic of the authentication prelude (a handshake starts `RFTx`, a fetch `RFTs`).
pub(super) const AUTH_MAGIC: [u8; 4] = *b"RFTa";
/// The prelude's version.
pub(super) const AUTH_VERSION: u16 = 1;
/// Length of the connecting side's opening (the length of a handshake's head).
pub const HELLO_LEN: usize = 30;
/// Length of the accepting side's challenge.
pub const CHALLENGE_LEN: usize = 4 + 1 + 16 + 32;
/// Length of a MAC.
pub(super) const MAC_LEN: usize = 32;

/// A cluster secret. Its `Debug` form never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret of these bytes (any length; 32 random bytes are plenty).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The status byte of the accepting side's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AuthStatus {
    /// The challenge follows (step 2), or the connector's MAC was right (step 4).
    Challenge = 0,
    /// The connector's MAC was wrong: it holds another secret.
    WrongSecret = 1,
    /// This node has no cluster secret; the connector's configuration differs.
    NoSecret = 2,
    /// Our magic, but an auth version this build does not speak.
    UnsupportedVersion = 3,
}

impl AuthStatus {
    /// The status meaning "accepted" in step 4.
    pub const ACCEPTED: AuthStatus = AuthStatus::Challenge;

    fn from_byte(byte: u8) -> Option<AuthStatus> {
        [Self::Challenge, Self::WrongSecret, Self::NoSecret, Self::UnsupportedVersion]
            .into_iter()
            .find(|s| *s as u8 == byte)
    }
}

/// Why authentication failed.
#[derive(Debug)]
pub enum AuthError {
    /// The connection failed or timed out.
    Io(io::Error),
    /// The other side answered with this status.
    Refused(AuthStatus),
    /// The other side's answer was not the protocol, or its MAC was wrong (it does not hold our
    /// secret), or it did not ask to authenticate although we hold a secret.
    Failed(&'static str),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Io(e) => write!(f, "cluster secret exchange failed: {e}"),
            AuthError::Refused(AuthStatus::WrongSecret) => f.write_str("the peer holds another cluster secret"),
            AuthError::Refused(AuthStatus::NoSecret) => f.write_str("the peer has no cluster secret configured"),
            AuthError::Refused(status) => write!(f, "the peer refused the cluster secret exchange: {status:?}"),
            AuthError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for AuthError {
    fn from(e: io::Error) -> Self {
        AuthError::Io(e)
    }
}

/// `HMAC(secret, label ‖ connector nonce ‖ acceptor nonce)`, not yet finalized.
fn keyed(secret: &Secret, label: &[u8], connector: &[u8; 16], acceptor: &[u8; 16]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0).expect("HMAC takes keys of any length");
    mac.update(label);
    mac.update(connector);
    mac.update(acceptor);
    mac
}

fn mac(secret: &Secret, label: &[u8], connector: &[u8; 16], acceptor: &[u8; 16]) -> [u8; MAC_LEN] {
    keyed(secret, label, connector, acceptor).finalize().into_bytes().into()
}

fn mac_matches(secret: &Secret, label: &[u8], connector: &[u8; 16], acceptor: &[u8; 16], got: &[u8]) -> bool {
    // Constant time: the comparison reveals nothing about how much of a forgery was right.
    keyed(secret, label, connector, acceptor).verify_slice(got).is_ok()
}

const ACCEPTOR_LABEL: &[u8] = b"raft-peer-acceptor";
const CONNECTOR_LABEL: &[u8] = b"raft-peer-connector";

/// The connecting side's opening with `nonce`.
pub(super) fn hello(nonce: &[u8; 16]) -> [u8; HELLO_LEN] {
    let mut out = [0; HELLO_LEN];
    out[..4].copy_from_slice(&AUTH_MAGIC);
    out[4..6].copy_from_slice(&AUTH_VERSION.to_be_bytes());
    out[6..22].copy_from_slice(nonce);
    out
}

/// The accepting side's challenge (status `Challenge`) or refusal.
pub(super) fn challenge(
    status: AuthStatus,
    secret: Option<&Secret>,
    connector: &[u8; 16],
    acceptor: &[u8; 16],
) -> [u8; CHALLENGE_LEN] {
    let mut out = [0; CHALLENGE_LEN];
    out[..4].copy_from_slice(&AUTH_MAGIC);
    out[4] = status as u8;
    if let (AuthStatus::Challenge, Some(secret)) = (status, secret) {
        out[5..21].copy_from_slice(acceptor);
        out[21..].copy_from_slice(&mac(secret, ACCEPTOR_LABEL, connector, acceptor));
    }
    out
}

fn nonce() -> [u8; 16] {
    rand::random()
}

/// Runs the connecting side's part on a fresh connection; `Ok` once the acceptor confirmed our
/// MAC (and proved it holds the secret).
pub(super) fn connect(mut stream: impl Read + Write, secret: &Secret) -> Result<(), AuthError> {
    let mine = nonce();
    stream.write_all(&hello(&mine))?;
    let mut answer = [0; CHALLENGE_LEN];
    stream.read_exact(&mut answer)?;
    if answer[..4] != AUTH_MAGIC {
        return Err(AuthError::Failed(
            "the peer did not answer the cluster secret exchange (no secret configured there?)",
        ));
    }
    match AuthStatus::from_byte(answer[4]) {
        Some(AuthStatus::Challenge) => {}
        Some(status) => return Err(AuthError::Refused(status)),
        None => return Err(AuthError::Failed("unknown status in the peer's cluster secret answer")),
    }
    let theirs: [u8; 16] = answer[5..21].try_into().expect("16 bytes");
    if !mac_matches(secret, ACCEPTOR_LABEL, &mine, &theirs, &answer[21..]) {
        return Err(AuthError::Failed("the peer does not hold our cluster secret"));
    }
    stream.write_all(&mac(secret, CONNECTOR_LABEL, &mine, &theirs))?;
    let mut status = [0; 1];
    stream.read_exact(&mut status)?;
    match AuthStatus::from_byte(status[0]) {
        Some(AuthStatus::Challenge) => Ok(()),
        Some(status) => Err(AuthError::Refused(status)),
        None => Err(AuthError::Failed("unknown status in the peer's cluster secret answer")),
    }
}

/// Runs the accepting side's part after the connector's opening (`hello`, already read); `Ok`
/// once the connector proved it holds `secret`. Every refusal was answered before it returns.
/// Public for the `auth_accept` fuzz target: whatever a stranger sends, this answers or fails,
/// and never lets it in.
pub fn accept(
    mut stream: impl Read + Write,
    secret: Option<&Secret>,
    hello: &[u8; HELLO_LEN],
) -> Result<(), AuthError> {
    let connector: [u8; 16] = hello[6..22].try_into().expect("16 bytes");
    let version = u16::from_be_bytes([hello[4], hello[5]]);
    let refuse = |stream: &mut dyn Write, status| {
        let _ = stream.write_all(&challenge(status, None, &connector, &[0; 16]));
        Err(AuthError::Refused(status))
    };
    if version != AUTH_VERSION {
        return refuse(&mut stream, AuthStatus::UnsupportedVersion);
    }
    let Some(secret) = secret else { return refuse(&mut stream, AuthStatus::NoSecret) };
    let mine = nonce();
    stream.write_all(&challenge(AuthStatus::Challenge, Some(secret), &connector, &mine))?;
    let mut theirs = [0; MAC_LEN];
    stream.read_exact(&mut theirs)?;
    if mac_matches(secret, CONNECTOR_LABEL, &connector, &mine, &theirs) {
        stream.write_all(&[AuthStatus::ACCEPTED as u8])?;
        Ok(())
    } else {
        let _ = stream.write_all(&[AuthStatus::WrongSecret as u8]);
        Err(AuthError::Refused(AuthStatus::WrongSecret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn exchange(connector: Option<&str>, acceptor: Option<&str>) -> (Result<(), String>, Result<(), String>) {
        let (a, b) = UnixStream::pair().expect("socket pair");
        let acceptor = acceptor.map(Secret::new);
        let accepting = std::thread::spawn(move || {
            let mut hello = [0; HELLO_LEN];
            (&b).read_exact(&mut hello).map_err(|e| e.to_string())?;
            accept(&b, acceptor.as_ref(), &hello).map_err(|e| e.to_string())
        });
        let connecting = match connector {
            Some(secret) => connect(&a, &Secret::new(secret)).map_err(|e| e.to_string()),
            None => Ok(()),
        };
        drop(a);
        (connecting, accepting.join().expect("acceptor"))
    }

    #[test]
    fn the_same_secret_passes_both_ways_and_any_other_fails() {
        assert_eq!(exchange(Some("s3cret"), Some("s3cret")), (Ok(()), Ok(())));
        let (connecting, accepting) = exchange(Some("one"), Some("other"));
        // The connector already sees that the acceptor's proof is wrong and gives up first.
        assert_eq!(connecting, Err("the peer does not hold our cluster secret".into()));
        assert!(accepting.is_err(), "{accepting:?}");
        let (connecting, accepting) = exchange(Some("s3cret"), None);
        assert_eq!(connecting, Err("the peer has no cluster secret configured".into()));
        assert!(accepting.is_err());
    }

    #[test]
    fn a_connector_that_fakes_its_mac_is_refused() {
        let (a, b) = UnixStream::pair().expect("socket pair");
        let accepting = std::thread::spawn(move || {
            let mut hello = [0; HELLO_LEN];
            (&b).read_exact(&mut hello).expect("hello");
            accept(&b, Some(&Secret::new("s3cret")), &hello)
        });
        (&a).write_all(&hello(&[7; 16])).expect("hello");
        let mut challenge = [0; CHALLENGE_LEN];
        (&a).read_exact(&mut challenge).expect("challenge");
        assert_eq!(challenge[4], AuthStatus::Challenge as u8);
        // Replaying the acceptor's own MAC, or anything else, is not the connector's MAC.
        (&a).write_all(&challenge[21..]).expect("fake MAC");
        let mut status = [0; 1];
        (&a).read_exact(&mut status).expect("status");
        assert_eq!(status[0], AuthStatus::WrongSecret as u8);
        assert!(matches!(accepting.join().unwrap(), Err(AuthError::Refused(AuthStatus::WrongSecret))));
    }

    /// The format, pinned: the opening's bytes, and the MACs for a fixed secret and nonces. An
    /// independent HMAC-SHA256 gives the same values: `python3 -c "import hmac, hashlib;
    /// print(hmac.new(b'key', b'raft-peer-acceptor' + b'\x11' * 16 + b'\x22' * 16,
    /// hashlib.sha256).hexdigest())"` prints the acceptor's.
    #[test]
    fn auth_golden_bytes() {
        let hello = hello(&[0x11; 16]);
        let committed = crate::golden::check("auth-v1-hello.bin", &hello);
        let mut want = b"RFTa\x00\x01".to_vec();
        want.extend_from_slice(&[0x11; 16]);
        want.extend_from_slice(&[0; 8]);
        assert_eq!(committed, want);
        let secret = Secret::new("key");
        let acceptor = challenge(AuthStatus::Challenge, Some(&secret), &[0x11; 16], &[0x22; 16]);
        assert_eq!(&acceptor[..5], b"RFTa\x00");
        assert_eq!(acceptor[5..21], [0x22; 16]);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        crate::golden::check("auth-v1-acceptor-mac.hex", hex(&acceptor[21..]).as_bytes());
        // Spelled out too (Python's value), so the file cannot drift with the code.
        assert_eq!(hex(&acceptor[21..]), "5318c3cad36a7a0b04097ef4624e2ac6d88a28ef273c1d26ec9c01a1f411304b");
        let connector = mac(&secret, CONNECTOR_LABEL, &[0x11; 16], &[0x22; 16]);
        crate::golden::check("auth-v1-connector-mac.hex", hex(&connector).as_bytes());
        assert_eq!(hex(&connector), "fd066727a8b1cfe2e7e7bf58f225fbedb9aab2ed37dcf10a6364e763ea8907a8");
        assert_ne!(acceptor[21..], connector, "the two directions' MACs differ");
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        crate::golden::assert_complete(
            "auth-",
            &["auth-v1-hello.bin", "auth-v1-acceptor-mac.hex", "auth-v1-connector-mac.hex"],
        );
    }
}
