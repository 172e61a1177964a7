//! Redis' glob patterns (`KEYS`, `SCAN MATCH`, `HSCAN MATCH`): `*` any run of bytes, `?` one byte,
//! `[abc]`, `[a-z]` and `[^...]` byte classes, `\x` a literal `x`.
//!
//! Matching is iterative with a single backtrack point (the last `*`), so it takes at most
//! O(pattern × text) steps and constant stack whatever a client sends; Redis' own recursive matcher
//! needed a limit added after patterns like `*a*a*a...` stalled servers.

/// Whether `text` matches the glob `pattern`.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index after the star, text index it absorbed to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                _ => {
                    if let Some(next) = single(pattern, p, text[t]) {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            // Let the last star absorb one more byte and retry from just after it.
            Some((sp, st)) => {
                star = Some((sp, st + 1));
                p = sp;
                t = st + 1;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// If the single-byte element at `pattern[p]` (`?`, a class, an escape or a literal) matches `c`,
/// the index after it.
fn single(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(p + 2),
        b'[' => class(pattern, p + 1, c),
        lit => (lit == c).then_some(p + 1),
    }
}

/// Matches `c` against the class starting at `pattern[p]` (just after `[`). An unterminated class
/// runs to the end of the pattern, as in Redis.
fn class(pattern: &[u8], mut p: usize, c: u8) -> Option<usize> {
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut matched = false;
    while p < pattern.len() && pattern[p] != b']' {
        if pattern[p] == b'\\' && p + 1 < pattern.len() {
            matched |= pattern[p + 1] == c;
            p += 2;
        } else if p + 2 < pattern.len() && pattern[p + 1] == b'-' && pattern[p + 2] != b']' {
            let (a, b) = (pattern[p].min(pattern[p + 2]), pattern[p].max(pattern[p + 2]));
            matched |= (a..=b).contains(&c);
            p += 3;
        } else {
            matched |= pattern[p] == c;
            p += 1;
        }
    }
    let end = if p < pattern.len() { p + 1 } else { p };
    (matched != negate).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn redis_glob_semantics() {
        let yes = [
            ("*", ""),
            ("*", "anything"),
            ("h?llo", "hello"),
            ("h*llo", "heeeello"),
            ("h*llo", "hllo"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("user:*:name", "user:42:name"),
            ("*a*b*c", "xxaxxbxxc"),
            ("\\*", "*"),
            ("[\\]]", "]"),
            ("a*", "a"),
            ("**", "x"),
        ];
        for (p, t) in yes {
            assert!(glob_match(p.as_bytes(), t.as_bytes()), "{p:?} should match {t:?}");
        }
        let no = [
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("h[a-b]llo", "hcllo"),
            ("user:*:name", "user:42:age"),
            ("*a*b*c", "xxaxxbxx"),
            ("\\*", "x"),
            ("a", ""),
            ("", "a"),
            ("abc", "ab"),
        ];
        for (p, t) in no {
            assert!(!glob_match(p.as_bytes(), t.as_bytes()), "{p:?} should not match {t:?}");
        }
    }

    /// The pattern that made recursive matchers exponential finishes at once here.
    #[test]
    fn pathological_patterns_are_quadratic_at_worst() {
        let pattern = "*a".repeat(200) + "b";
        let text = "a".repeat(5000);
        assert!(!glob_match(pattern.as_bytes(), text.as_bytes()));
    }
}
