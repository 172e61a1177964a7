//! RESP2 / RESP3 codec: an incremental request parser and a reply encoder.
//!
//! Clients send requests as RESP arrays of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or, when a human
//! types into `telnet`/`nc`, as an *inline command*: a single space-separated line with optional Redis-style
//! quoting. [`RequestParser`] handles both, incrementally, over a [`BytesMut`] read buffer.
//!
//! Replies are built as protocol-neutral [`Reply`] values (that is also what the replicated state machine
//! returns, serialized with postcard) and encoded per connection with [`encode`], because every client
//! chooses its own protocol version with `HELLO`: redis-py 8 opens each connection with `HELLO 3`, while
//! `redis-cli` and `redis-benchmark` stay on RESP2.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

pub use super::int::parse_i64;

/// Which RESP dialect a connection speaks. Every connection starts in RESP2 and may switch with `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Protocol {
    /// RESP2: no null/map/double/boolean types; those are mapped onto bulk strings, arrays and integers.
    #[default]
    Resp2,
    /// RESP3: native null (`_`), maps (`%`), sets (`~`), doubles (`,`), booleans (`#`), verbatim strings (`=`)
    /// and push messages (`>`).
    Resp3,
}

impl Protocol {
    /// The protocol version number as used by `HELLO` (2 or 3).
    pub fn version(self) -> u8 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// Limits that bound how much memory a single (possibly hostile or buggy) client can make the server
/// buffer for one request. Exceeding any of them is a protocol error: the server replies `-ERR ...` and
/// closes that one connection, because after a framing error the rest of the stream cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Largest accepted bulk string (one argument), in bytes. Redis' `proto-max-bulk-len` defaults to 512 MiB.
    pub max_bulk_bytes: usize,
    /// Largest accepted number of arguments in one multibulk request.
    pub max_args: usize,
    /// Longest accepted inline command line (and the longest line we buffer while waiting for its `\n`).
    /// Redis hard-codes 64 KiB (`PROTO_INLINE_MAX_SIZE`).
    pub max_inline_bytes: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        ParserLimits { max_bulk_bytes: 512 * 1024 * 1024, max_args: 1024 * 1024, max_inline_bytes: 64 * 1024 }
    }
}

/// A malformed or over-limit request. After any of these the connection's byte stream is out of sync:
/// reply with [`RespError::to_reply`] and close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespError {
    /// The multibulk count (`*<n>`) is not a valid integer.
    InvalidMultibulkLength,
    /// The multibulk count exceeds [`ParserLimits::max_args`].
    TooManyArgs {
        /// The count the client announced.
        count: u64,
        /// The configured limit.
        max: usize,
    },
    /// The bulk length (`$<n>`) is not a valid non-negative integer.
    InvalidBulkLength,
    /// The bulk length exceeds [`ParserLimits::max_bulk_bytes`].
    BulkTooLarge {
        /// The length the client announced.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// Inside a multibulk request an element did not start with `$`.
    ExpectedBulk {
        /// The byte found instead.
        got: u8,
    },
    /// A request started with a RESP type byte other than `*` (for example a bare `$` or `:` frame).
    /// Only arrays of bulk strings and inline commands are valid requests.
    InvalidTypeByte(u8),
    /// A line (or a bulk payload) was not terminated by `\r\n`.
    ExpectedCrlf,
    /// An inline command line exceeds [`ParserLimits::max_inline_bytes`].
    InlineTooBig,
    /// An inline command has an unterminated quote, or a closing quote not followed by a space.
    UnbalancedQuotes,
}

impl RespError {
    /// The error reply to send before closing the connection (Redis prefixes these with `ERR Protocol error`).
    pub fn to_reply(&self) -> Reply {
        Reply::Error(format!("ERR {self}"))
    }
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::InvalidMultibulkLength => f.write_str("Protocol error: invalid multibulk length"),
            RespError::TooManyArgs { count, max } => {
                // Redis' words first (clients and tests match on them), then the numbers.
                write!(f, "Protocol error: invalid multibulk length ({count} arguments, the limit is {max})")
            }
            RespError::InvalidBulkLength => f.write_str("Protocol error: invalid bulk length"),
            RespError::BulkTooLarge { len, max } => {
                write!(f, "Protocol error: invalid bulk length ({len} bytes, the limit is {max})")
            }
            RespError::ExpectedBulk { got } => write!(f, "Protocol error: expected '$', got '{}'", got.escape_ascii()),
            RespError::InvalidTypeByte(b) => {
                write!(f, "Protocol error: invalid request type byte '{}'", b.escape_ascii())
            }
            RespError::ExpectedCrlf => f.write_str("Protocol error: expected CRLF"),
            RespError::InlineTooBig => f.write_str("Protocol error: too big inline request"),
            RespError::UnbalancedQuotes => f.write_str("Protocol error: unbalanced quotes in request"),
        }
    }
}

impl std::error::Error for RespError {}

/// Numeric header lines (`*<n>`, `$<n>`) never need more than this many bytes ("-" plus 19 digits, CRLF).
/// Bounding them separately from `max_inline_bytes` lets us reject garbage after a few bytes.
const MAX_NUMBER_LINE: usize = 22;

/// Cap on `Vec::with_capacity` for a request's argument list: the count is client-controlled, so we grow
/// the vector as arguments actually arrive instead of trusting `*1000000` up front.
const MAX_PREALLOC_ARGS: usize = 64;

/// Incremental parser for client requests.
///
/// Feed it the connection's read buffer after every read; it consumes exactly the bytes of complete
/// elements and keeps the partial state of a multibulk request between calls, so each byte is examined
/// once even when a huge request trickles in over many reads. Arguments are split off the buffer without
/// copying, so they share its allocation: copy them if they are to be kept long after the request.
///
/// ```
/// # use bytes::BytesMut;
/// # use raft_driver_std::raftkv::resp::RequestParser;
/// let mut parser = RequestParser::default();
/// let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r"[..]);
/// assert_eq!(parser.parse(&mut buf).unwrap(), None); // need more bytes
/// buf.extend_from_slice(b"\nk\r\nPING\r\n");
/// assert_eq!(parser.parse(&mut buf).unwrap().unwrap(), vec!["GET", "k"]);
/// assert_eq!(parser.parse(&mut buf).unwrap().unwrap(), vec!["PING"]); // inline command
/// assert_eq!(parser.parse(&mut buf).unwrap(), None);
/// ```
#[derive(Debug, Default)]
pub struct RequestParser {
    limits: ParserLimits,
    pending: Option<Pending>,
}

/// A multibulk request whose header has been consumed but whose arguments have not all arrived.
#[derive(Debug)]
struct Pending {
    /// Arguments still to read.
    remaining: usize,
    args: Vec<Bytes>,
    /// Length of the current argument once its `$<n>\r\n` header has been consumed.
    bulk_len: Option<usize>,
}

impl RequestParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: ParserLimits) -> Self {
        RequestParser { limits, pending: None }
    }

    /// The limits this parser enforces.
    pub fn limits(&self) -> &ParserLimits {
        &self.limits
    }

    /// Parses the next complete request from the front of `buf`, consuming its bytes.
    ///
    /// Returns `Ok(None)` when more bytes are needed (partial progress is kept in `self`), and
    /// `Ok(Some(args))` with a non-empty argument list for each complete request; call again to get the
    /// next pipelined one. Empty inline lines and `*0`/`*-1` requests are skipped, as Redis does. After an
    /// `Err` the parser and buffer are in an unspecified state: close the connection.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, RespError> {
        loop {
            if self.pending.is_none() {
                let Some(&first) = buf.first() else { return Ok(None) };
                match first {
                    b'*' => {
                        let Some((count, used)) = read_number_line(buf)? else { return Ok(None) };
                        let count = count.ok_or(RespError::InvalidMultibulkLength)?;
                        buf.advance(used);
                        if count <= 0 {
                            // Redis treats `*0` and `*-1` as no request at all.
                            continue;
                        }
                        if count as u64 > self.limits.max_args as u64 {
                            return Err(RespError::TooManyArgs { count: count as u64, max: self.limits.max_args });
                        }
                        let count = count as usize;
                        self.pending = Some(Pending {
                            remaining: count,
                            args: Vec::with_capacity(count.min(MAX_PREALLOC_ARGS)),
                            bulk_len: None,
                        });
                    }
                    // Other RESP type bytes cannot start a valid request; treating them as inline text (as
                    // Redis does) would only produce a confusing "unknown command '$3'" for a broken client.
                    b'$' | b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'!' | b'=' | b'(' | b'%' | b'~' | b'>' | b'|' => {
                        return Err(RespError::InvalidTypeByte(first));
                    }
                    _ => match self.parse_inline(buf)? {
                        None => return Ok(None),
                        Some(args) if args.is_empty() => continue,
                        Some(args) => return Ok(Some(args)),
                    },
                }
            }
            return self.parse_bulks(buf);
        }
    }

    /// Continues reading the bulk-string arguments of the pending multibulk request.
    fn parse_bulks(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, RespError> {
        let pending = self.pending.as_mut().expect("parse_bulks called with a pending request");
        while pending.remaining > 0 {
            let len = match pending.bulk_len {
                Some(len) => len,
                None => {
                    let Some(&first) = buf.first() else { return Ok(None) };
                    if first != b'$' {
                        return Err(RespError::ExpectedBulk { got: first });
                    }
                    let Some((len, used)) = read_number_line(buf)? else { return Ok(None) };
                    let len = len.ok_or(RespError::InvalidBulkLength)?;
                    if len < 0 {
                        return Err(RespError::InvalidBulkLength);
                    }
                    if len as u64 > self.limits.max_bulk_bytes as u64 {
                        return Err(RespError::BulkTooLarge { len: len as u64, max: self.limits.max_bulk_bytes });
                    }
                    buf.advance(used);
                    pending.bulk_len = Some(len as usize);
                    len as usize
                }
            };
            if buf.len() < len + 2 {
                return Ok(None);
            }
            if &buf[len..len + 2] != b"\r\n" {
                return Err(RespError::ExpectedCrlf);
            }
            pending.args.push(buf.split_to(len).freeze());
            buf.advance(2);
            pending.bulk_len = None;
            pending.remaining -= 1;
        }
        Ok(self.pending.take().map(|p| p.args))
    }

    /// Parses one inline command line. `Some(vec![])` means a blank line was consumed.
    fn parse_inline(&self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, RespError> {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > self.limits.max_inline_bytes {
                return Err(RespError::InlineTooBig);
            }
            return Ok(None);
        };
        let line_len = if nl > 0 && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
        if line_len > self.limits.max_inline_bytes {
            return Err(RespError::InlineTooBig);
        }
        let args = split_inline_args(&buf[..line_len])?;
        buf.advance(nl + 1);
        Ok(Some(args))
    }
}

/// Reads a `<type byte><integer>\r\n` line at the front of `buf` without consuming it. Returns
/// `Ok(None)` if the line is incomplete, else the parsed number (`None` if not a valid integer) and the
/// line's length including CRLF.
fn read_number_line(buf: &[u8]) -> Result<Option<(Option<i64>, usize)>, RespError> {
    let window = &buf[..buf.len().min(MAX_NUMBER_LINE)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if buf.len() >= MAX_NUMBER_LINE {
            // No CR within the longest legal number line: this can never become valid.
            return Err(if buf[0] == b'*' { RespError::InvalidMultibulkLength } else { RespError::InvalidBulkLength });
        }
        return Ok(None);
    };
    match buf.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((parse_i64(&buf[1..cr]), cr + 2))),
        Some(_) => Err(RespError::ExpectedCrlf),
    }
}

/// Splits an inline command line like Redis' `sdssplitargs`: whitespace separates arguments; `"..."`
/// supports `\n \r \t \b \a \\ \"` and `\xHH` escapes; `'...'` supports `\'`; a closing quote must be
/// followed by whitespace or the end of the line.
fn split_inline_args(line: &[u8]) -> Result<Vec<Bytes>, RespError> {
    let mut args = Vec::new();
    let mut i = 0;
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                let Some(&c) = line.get(i) else { return Err(RespError::UnbalancedQuotes) };
                if c == b'\\'
                    && i + 3 < line.len()
                    && line[i + 1] == b'x'
                    && line[i + 2].is_ascii_hexdigit()
                    && line[i + 3].is_ascii_hexdigit()
                {
                    let hex = |b: u8| (b as char).to_digit(16).expect("checked hex digit") as u8;
                    cur.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                    i += 3;
                } else if c == b'\\' && i + 1 < line.len() {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if i + 1 < line.len() && !is_space(line[i + 1]) {
                        return Err(RespError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if in_sq {
                let Some(&c) = line.get(i) else { return Err(RespError::UnbalancedQuotes) };
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if i + 1 < line.len() && !is_space(line[i + 1]) {
                        return Err(RespError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else {
                match line.get(i) {
                    None => break,
                    Some(&c) if is_space(c) => break,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(&c) => cur.push(c),
                }
            }
            i += 1;
        }
        args.push(Bytes::from(cur));
    }
}

/// Encodes `args` as a RESP request (an array of bulk strings), as a client would send it.
pub fn encode_request<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    write_header(out, b'*', args.len() as i64);
    for arg in args {
        write_bulk(out, arg.as_ref());
    }
}

/// A protocol-neutral reply value. Build replies as `Reply`s and let [`encode`] pick the wire form for
/// each connection's protocol. Replies never enter the log: the store answers with its own result type,
/// and the server turns that into a `Reply`.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A simple status string such as `OK` or `PONG` (`+OK`). Must not contain CR/LF; any found are
    /// replaced by spaces when encoding so they cannot break framing.
    Simple(String),
    /// An error, including its code prefix, without the leading `-`: `"ERR syntax error"`,
    /// `"WRONGTYPE ..."`. CR/LF are replaced by spaces when encoding.
    Error(String),
    /// A signed 64-bit integer (`:42`).
    Integer(i64),
    /// A binary-safe bulk string (`$3\r\nfoo`).
    Bulk(Bytes),
    /// The null bulk string: `$-1` in RESP2, `_` in RESP3 (a missing key).
    Null,
    /// The null array: `*-1` in RESP2, `_` in RESP3.
    NullArray,
    /// An array of replies (`*N`).
    Array(Vec<Reply>),
    /// Key/value pairs: `%N` in RESP3, a flat `2N`-element array in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// An unordered set: `~N` in RESP3, an array in RESP2.
    Set(Vec<Reply>),
    /// A floating-point number: `,1.5` in RESP3, a bulk string in RESP2.
    Double(f64),
    /// A boolean: `#t`/`#f` in RESP3, the integer 1/0 in RESP2 (what Redis does).
    Bool(bool),
    /// A verbatim string with a three-byte format such as `txt` or `mkd` (`=` in RESP3); a plain bulk
    /// string of `text` in RESP2. Redis uses it for `INFO` and similar human-readable output.
    Verbatim {
        /// The format, e.g. `*b"txt"`.
        format: [u8; 3],
        /// The text itself.
        text: Bytes,
    },
    /// An out-of-band push message (`>N` in RESP3, an array in RESP2), e.g. pub/sub deliveries.
    Push(Vec<Reply>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple("OK".to_owned())
    }

    /// An error reply; `msg` includes the code prefix, e.g. `"ERR syntax error"`.
    pub fn error(msg: impl Into<String>) -> Reply {
        Reply::Error(msg.into())
    }

    /// A bulk string reply.
    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// Appends the wire encoding of `reply` in protocol `proto` to `out`.
pub fn encode(reply: &Reply, proto: Protocol, out: &mut BytesMut) {
    let resp3 = proto == Protocol::Resp3;
    match reply {
        Reply::Simple(s) => write_line(out, b'+', s),
        Reply::Error(s) => write_line(out, b'-', s),
        Reply::Integer(n) => write_header(out, b':', *n),
        Reply::Bulk(b) => write_bulk(out, b),
        Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
        Reply::Null => out.extend_from_slice(b"$-1\r\n"),
        Reply::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
        Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
        Reply::Array(items) => write_aggregate(out, b'*', items, proto),
        Reply::Set(items) => write_aggregate(out, if resp3 { b'~' } else { b'*' }, items, proto),
        Reply::Push(items) => write_aggregate(out, if resp3 { b'>' } else { b'*' }, items, proto),
        Reply::Map(pairs) => {
            if resp3 {
                write_header(out, b'%', pairs.len() as i64);
            } else {
                write_header(out, b'*', 2 * pairs.len() as i64);
            }
            for (k, v) in pairs {
                encode(k, proto, out);
                encode(v, proto, out);
            }
        }
        Reply::Double(d) => {
            let text = format_double(*d);
            if resp3 {
                write_line(out, b',', &text);
            } else {
                write_bulk(out, text.as_bytes());
            }
        }
        Reply::Bool(b) if resp3 => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Reply::Bool(b) => write_header(out, b':', i64::from(*b)),
        Reply::Verbatim { format, text } if resp3 => {
            write_header(out, b'=', text.len() as i64 + 4);
            out.extend_from_slice(format);
            out.extend_from_slice(b":");
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Verbatim { text, .. } => write_bulk(out, text),
    }
}

fn write_aggregate(out: &mut BytesMut, marker: u8, items: &[Reply], proto: Protocol) {
    write_header(out, marker, items.len() as i64);
    for item in items {
        encode(item, proto, out);
    }
}

/// `<marker><n>\r\n`, formatting the integer without going through `fmt` (this is on every reply's path).
fn write_header(out: &mut BytesMut, marker: u8, n: i64) {
    let mut digits = [0u8; 20];
    let mut pos = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        pos -= 1;
        digits[pos] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.reserve(24);
    out.extend_from_slice(&[marker]);
    if n < 0 {
        out.extend_from_slice(b"-");
    }
    out.extend_from_slice(&digits[pos..]);
    out.extend_from_slice(b"\r\n");
}

fn write_bulk(out: &mut BytesMut, data: &[u8]) {
    write_header(out, b'$', data.len() as i64);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A single-line frame; CR and LF would end the frame early and desynchronise the client, so they are
/// replaced by spaces (Redis does the same for error messages).
fn write_line(out: &mut BytesMut, marker: u8, text: &str) {
    out.reserve(text.len() + 3);
    out.extend_from_slice(&[marker]);
    if text.bytes().any(|b| b == b'\r' || b == b'\n') {
        out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    } else {
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Shortest round-tripping text for a double, in the RESP3 grammar (`inf`, `-inf`, `nan`, exponent form
/// for very large/small magnitudes so `1e300` is not 301 digits long).
fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".to_owned()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else if d == 0.0 || (1e-5..1e17).contains(&d.abs()) {
        format!("{d}")
    } else {
        format!("{d:e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(reply: &Reply, proto: Protocol) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(reply, proto, &mut out);
        out.to_vec()
    }

    /// Asserts the RESP2 and RESP3 encodings of `reply`.
    fn check(reply: Reply, resp2: &[u8], resp3: &[u8]) {
        assert_eq!(
            enc(&reply, Protocol::Resp2),
            resp2,
            "RESP2 {reply:?}: {}",
            enc(&reply, Protocol::Resp2).escape_ascii()
        );
        assert_eq!(
            enc(&reply, Protocol::Resp3),
            resp3,
            "RESP3 {reply:?}: {}",
            enc(&reply, Protocol::Resp3).escape_ascii()
        );
    }

    fn same(reply: Reply, both: &[u8]) {
        check(reply, both, both);
    }

    #[test]
    fn encode_scalars() {
        same(Reply::ok(), b"+OK\r\n");
        same(Reply::error("ERR bad\r\nthing"), b"-ERR bad  thing\r\n");
        same(Reply::Integer(0), b":0\r\n");
        same(Reply::Integer(-42), b":-42\r\n");
        same(Reply::Integer(i64::MIN), b":-9223372036854775808\r\n");
        same(Reply::Integer(i64::MAX), b":9223372036854775807\r\n");
        same(Reply::bulk("foo"), b"$3\r\nfoo\r\n");
        same(Reply::bulk(""), b"$0\r\n\r\n");
        same(Reply::bulk(&b"a\r\nb\0"[..]), b"$5\r\na\r\nb\0\r\n");
        check(Reply::Null, b"$-1\r\n", b"_\r\n");
        check(Reply::NullArray, b"*-1\r\n", b"_\r\n");
        check(Reply::Bool(true), b":1\r\n", b"#t\r\n");
        check(Reply::Bool(false), b":0\r\n", b"#f\r\n");
        check(Reply::Double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n");
        check(Reply::Double(3.0), b"$1\r\n3\r\n", b",3\r\n");
        check(Reply::Double(-0.25), b"$5\r\n-0.25\r\n", b",-0.25\r\n");
        check(Reply::Double(1e300), b"$5\r\n1e300\r\n", b",1e300\r\n");
        check(Reply::Double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n");
        check(Reply::Double(f64::NEG_INFINITY), b"$4\r\n-inf\r\n", b",-inf\r\n");
        let nan = Reply::Double(f64::NAN);
        assert_eq!(enc(&nan, Protocol::Resp2), b"$3\r\nnan\r\n");
        assert_eq!(enc(&nan, Protocol::Resp3), b",nan\r\n");
        check(
            Reply::Verbatim { format: *b"txt", text: Bytes::from_static(b"Some string") },
            b"$11\r\nSome string\r\n",
            b"=15\r\ntxt:Some string\r\n",
        );
    }

    #[test]
    fn encode_aggregates() {
        same(Reply::Array(vec![]), b"*0\r\n");
        check(
            Reply::Array(vec![Reply::bulk("a"), Reply::Null, Reply::Integer(1)]),
            b"*3\r\n$1\r\na\r\n$-1\r\n:1\r\n",
            b"*3\r\n$1\r\na\r\n_\r\n:1\r\n",
        );
        check(
            Reply::Map(vec![(Reply::bulk("proto"), Reply::Integer(3)), (Reply::bulk("x"), Reply::Null)]),
            b"*4\r\n$5\r\nproto\r\n:3\r\n$1\r\nx\r\n$-1\r\n",
            b"%2\r\n$5\r\nproto\r\n:3\r\n$1\r\nx\r\n_\r\n",
        );
        check(Reply::Map(vec![]), b"*0\r\n", b"%0\r\n");
        check(Reply::Set(vec![Reply::Integer(1)]), b"*1\r\n:1\r\n", b"~1\r\n:1\r\n");
        check(
            Reply::Push(vec![Reply::bulk("message"), Reply::Array(vec![Reply::Bool(true)])]),
            b"*2\r\n$7\r\nmessage\r\n*1\r\n:1\r\n",
            b">2\r\n$7\r\nmessage\r\n*1\r\n#t\r\n",
        );
    }

    fn parse_all(parser: &mut RequestParser, buf: &mut BytesMut) -> Result<Vec<Vec<Bytes>>, RespError> {
        let mut out = Vec::new();
        while let Some(args) = parser.parse(buf)? {
            out.push(args);
        }
        Ok(out)
    }

    fn parse_one(input: &[u8]) -> Result<Option<Vec<Bytes>>, RespError> {
        RequestParser::default().parse(&mut BytesMut::from(input))
    }

    fn strs(v: &[&str]) -> Vec<Bytes> {
        v.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())).collect()
    }

    /// A pipelined stream mixing multibulk and inline requests, binary data (including CRLF and a
    /// RESP-looking payload inside a bulk), blank lines and `*0`.
    const STREAM: &[u8] = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$6\r\nva\r\nl\0\r\n\
        PING\r\n\
        \r\n\
        *0\r\n\
        *1\r\n$0\r\n\r\n\
        set  k \"a b\\x41\\n\"  'c d'\n\
        *2\r\n$4\r\nECHO\r\n$11\r\n*1\r\n$1\r\nx\r\n\r\n";

    #[test]
    fn pipelined_stream_split_at_every_byte() {
        let stream = STREAM;
        let expected: Vec<Vec<Bytes>> = vec![
            vec![Bytes::from_static(b"SET"), Bytes::from_static(b"key"), Bytes::from_static(b"va\r\nl\0")],
            strs(&["PING"]),
            strs(&[""]),
            strs(&["set", "k", "a bA\n", "c d"]),
            vec![Bytes::from_static(b"ECHO"), Bytes::from_static(b"*1\r\n$1\r\nx\r\n")],
        ];

        let mut parser = RequestParser::default();
        assert_eq!(parse_all(&mut parser, &mut BytesMut::from(stream)).unwrap(), expected);

        for split in 0..=stream.len() {
            let mut parser = RequestParser::default();
            let mut buf = BytesMut::from(&stream[..split]);
            let mut got = parse_all(&mut parser, &mut buf).unwrap();
            buf.extend_from_slice(&stream[split..]);
            got.extend(parse_all(&mut parser, &mut buf).unwrap());
            assert_eq!(got, expected, "split at {split}");
            assert!(buf.is_empty());
        }
        // And byte by byte.
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in stream {
            buf.extend_from_slice(&[b]);
            got.extend(parse_all(&mut parser, &mut buf).unwrap());
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn inline_commands() {
        assert_eq!(parse_one(b"PING\r\n").unwrap().unwrap(), strs(&["PING"]));
        assert_eq!(parse_one(b"get foo\n").unwrap().unwrap(), strs(&["get", "foo"]));
        assert_eq!(parse_one(b"  set\tk   v  \r\n").unwrap().unwrap(), strs(&["set", "k", "v"]));
        assert_eq!(parse_one(b"set k \"\"\r\n").unwrap().unwrap(), strs(&["set", "k", ""]));
        assert_eq!(parse_one(b"echo \"q\\\"x\" 'it\\'s'\r\n").unwrap().unwrap(), strs(&["echo", "q\"x", "it's"]));
        assert_eq!(parse_one(b"a\"b c\"\r\n").unwrap().unwrap(), strs(&["ab c"]));
        assert_eq!(parse_one(b"echo \"\\xzz\"\n").unwrap().unwrap(), strs(&["echo", "xzz"]));
        assert_eq!(parse_one(b"PING"), Ok(None));
        // Blank lines are skipped rather than producing empty commands.
        let mut buf = BytesMut::from(&b"\r\n   \r\n\nPING\r\n"[..]);
        assert_eq!(parse_all(&mut RequestParser::default(), &mut buf).unwrap(), vec![strs(&["PING"])]);
    }

    #[test]
    fn inline_quotes() {
        assert_eq!(parse_one(b"set k \"abc\r\n"), Err(RespError::UnbalancedQuotes));
        assert_eq!(parse_one(b"set k 'abc\r\n"), Err(RespError::UnbalancedQuotes));
        assert_eq!(parse_one(b"set k \"a\"b\r\n"), Err(RespError::UnbalancedQuotes));
        assert_eq!(parse_one(b"set k 'c''d'\r\n"), Err(RespError::UnbalancedQuotes));
    }

    #[test]
    fn malformed_requests_error() {
        let cases: &[(&[u8], RespError)] = &[
            (b"*x\r\n", RespError::InvalidMultibulkLength),
            (b"*\r\n", RespError::InvalidMultibulkLength),
            (b"*+1\r\n", RespError::InvalidMultibulkLength),
            (b"*01\r\n", RespError::InvalidMultibulkLength),
            (b"*99999999999999999999\r\n", RespError::InvalidMultibulkLength),
            (b"*1234567890123456789012345", RespError::InvalidMultibulkLength),
            (b"*1\rX", RespError::ExpectedCrlf),
            (b"*1\r\n:1\r\n", RespError::ExpectedBulk { got: b':' }),
            (b"*1\r\n*1\r\n", RespError::ExpectedBulk { got: b'*' }),
            (b"*1\r\n$-1\r\n", RespError::InvalidBulkLength),
            (b"*1\r\n$x\r\n", RespError::InvalidBulkLength),
            (b"*1\r\n$ 3\r\n", RespError::InvalidBulkLength),
            (b"*1\r\n$3\r\nabcd\r\n", RespError::ExpectedCrlf),
            (b"*1\r\n$3\r\nabc\n\n", RespError::ExpectedCrlf),
            (b"$3\r\nfoo\r\n", RespError::InvalidTypeByte(b'$')),
            (b":1\r\n", RespError::InvalidTypeByte(b':')),
            (b"+OK\r\n", RespError::InvalidTypeByte(b'+')),
        ];
        for (input, err) in cases {
            assert_eq!(parse_one(input).as_ref(), Err(err), "{}", input.escape_ascii());
        }
        // An incomplete header is not an error yet.
        assert_eq!(parse_one(b"*1\r\n$-5"), Ok(None));
        assert_eq!(
            RespError::ExpectedBulk { got: b':' }.to_reply(),
            Reply::error("ERR Protocol error: expected '$', got ':'")
        );
    }

    #[test]
    fn limits_error() {
        let limits = ParserLimits { max_bulk_bytes: 10, max_args: 3, max_inline_bytes: 16 };
        let parse = |input: &[u8]| RequestParser::new(limits).parse(&mut BytesMut::from(input));
        assert_eq!(parse(b"*1\r\n$10\r\n0123456789\r\n").unwrap().unwrap(), strs(&["0123456789"]));
        // Rejected as soon as the header is seen, before the payload arrives.
        assert_eq!(parse(b"*1\r\n$11\r\n"), Err(RespError::BulkTooLarge { len: 11, max: 10 }));
        assert_eq!(parse(b"*3\r\n").unwrap(), None);
        assert_eq!(parse(b"*4\r\n"), Err(RespError::TooManyArgs { count: 4, max: 3 }));
        assert_eq!(parse(b"0123456789abcdef\r\n").unwrap().unwrap(), strs(&["0123456789abcdef"]));
        assert_eq!(parse(b"0123456789abcdefg\r\n"), Err(RespError::InlineTooBig));
        // An unterminated line is rejected once it is longer than the limit.
        assert_eq!(parse(b"0123456789abcdef").unwrap(), None);
        assert_eq!(parse(b"0123456789abcdefg"), Err(RespError::InlineTooBig));

        // The defaults match Redis.
        let d = ParserLimits::default();
        assert_eq!(d.max_bulk_bytes, 512 << 20);
        let mut buf = BytesMut::from(&b"*1\r\n$536870913\r\n"[..]);
        let err = RequestParser::default().parse(&mut buf).unwrap_err();
        assert_eq!(err, RespError::BulkTooLarge { len: 536_870_913, max: 536_870_912 });
        assert_eq!(
            err.to_reply(),
            Reply::error("ERR Protocol error: invalid bulk length (536870913 bytes, the limit is 536870912)")
        );
        assert_eq!(
            parse_one(b"*1\r\n$9223372036854775807\r\n"),
            Err(RespError::BulkTooLarge { len: i64::MAX as u64, max: 512 << 20 })
        );
    }

    #[test]
    fn strict_integers() {
        for ok in ["0", "-1", "12", "9223372036854775807", "-9223372036854775808"] {
            assert_eq!(parse_i64(ok.as_bytes()), Some(ok.parse().unwrap()), "{ok}");
        }
        for bad in ["", "-", "+1", "01", "-0", " 1", "1 ", "1.0", "9223372036854775808", "1e3", "٣"] {
            assert_eq!(parse_i64(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn encode_request_matches_parser() {
        let mut out = BytesMut::new();
        encode_request(&["SET", "k", "v"], &mut out);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }

    proptest! {
        #[test]
        fn requests_round_trip(
            requests in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6), 1..6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let mut wire = BytesMut::new();
            for req in &requests {
                encode_request(req, &mut wire);
            }
            let wire = wire.freeze();
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            cuts.push(wire.len());
            cuts.sort_unstable();

            let mut parser = RequestParser::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut start = 0;
            for cut in cuts {
                buf.extend_from_slice(&wire[start..cut]);
                start = cut;
                got.extend(parse_all(&mut parser, &mut buf).unwrap());
            }
            let got: Vec<Vec<Vec<u8>>> = got.iter().map(|r| r.iter().map(|a| a.to_vec()).collect()).collect();
            prop_assert_eq!(got, requests);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..200)) {
            let limits = ParserLimits { max_bulk_bytes: 64, max_args: 8, max_inline_bytes: 64 };
            let mut parser = RequestParser::new(limits);
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(args)) = parser.parse(&mut buf) {
                prop_assert!(!args.is_empty());
            }
        }
    }
}
