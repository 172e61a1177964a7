//! Redis' integer syntax, shared by the RESP codec (lengths), the command parser (arguments) and the
//! store (`INCR` on a stored value), so that all three agree on what an integer is.

/// Strict decimal `i64` parsing with Redis' `string2ll` rules: optional `-`, digits only, no `+`, no
/// leading zeros (except `0` itself), no surrounding whitespace. Rust's `str::parse` is more lenient
/// (accepts `+5`, `007`), which would make `INCR` accept values Redis rejects.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits[0] == b'0' && (digits.len() > 1 || digits.len() != s.len()) {
        return None; // leading zero, or "-0"
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}
