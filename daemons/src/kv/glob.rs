//! Glob patterns as Redis matches them (KEYS, SCAN MATCH, CONFIG GET):
//! `*` any bytes, `?` one byte, `[abc]`, `[^abc]`, `[a-z]` a class, `\x`
//! the byte `x`. Iterative, with one backtracking point (the last `*`):
//! no recursion, no allocation, O(pattern x subject) at worst.

/// Whether `s` matches `pattern`.
pub(crate) fn matches(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Where to go on after the last `*`: (pattern after it, subject byte
    // it now stands for).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, i));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pattern, p, s[i]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == s[i]).then_some(p + 2),
            Some(&c) => (c == s[i]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                i += 1;
            }
            // Let the last `*` take one more byte and try again.
            (None, Some((after, taken))) => {
                star = Some((after, taken + 1));
                p = after;
                i = taken + 1;
            }
            (None, None) => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting with the `[` at `at`: the
/// pattern index after the class if it matches. An unclosed class runs to
/// the end of the pattern, as in Redis.
fn class(pattern: &[u8], at: usize, c: u8) -> Option<usize> {
    let mut p = at + 1;
    let not = pattern.get(p) == Some(&b'^');
    if not {
        p += 1;
    }
    let mut hit = false;
    while p < pattern.len() && pattern[p] != b']' {
        if pattern[p] == b'\\' && p + 1 < pattern.len() {
            hit |= pattern[p + 1] == c;
            p += 2;
        } else if p + 2 < pattern.len() && pattern[p + 1] == b'-' && pattern[p + 2] != b']' {
            let (lo, hi) = (
                pattern[p].min(pattern[p + 2]),
                pattern[p].max(pattern[p + 2]),
            );
            hit |= (lo..=hi).contains(&c);
            p += 3;
        } else {
            hit |= pattern[p] == c;
            p += 1;
        }
    }
    // Past the `]` (or at the end of an unclosed class).
    let after = (p + 1).min(pattern.len());
    (hit != not).then_some(after)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns_as_redis_matches_them() {
        let yes = [
            ("*", ""),
            ("*", "abc"),
            ("a*", "abc"),
            ("*c", "abc"),
            ("a*c", "abbbc"),
            ("h?llo", "hello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("user:*:name", "user:42:name"),
            ("*a*b*", "xxaxxbxx"),
            ("a\\*b", "a*b"),
            ("[\\]]", "]"),
            ("**", "x"),
        ];
        let no = [
            ("a*", "bac"),
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("h[a-b]llo", "hcllo"),
            ("a*c", "abcd"),
            ("a\\*b", "axb"),
            ("", "a"),
            ("user:*:name", "user:42:names"),
        ];
        for (p, s) in yes {
            assert!(matches(p.as_bytes(), s.as_bytes()), "{p} {s}");
        }
        for (p, s) in no {
            assert!(!matches(p.as_bytes(), s.as_bytes()), "{p} {s}");
        }
    }
}
