//! `CALC`: integer arithmetic over client input, the kv daemon's risky
//! command. It runs in a transaction (a forked copy of the daemon), because
//! the evaluator is a plain recursive-descent parser with no depth limit: a
//! deeply nested expression overflows the stack and crashes the process
//! evaluating it, which must never be the daemon.
//!
//! ```text
//! expr    := term (('+' | '-') term)*
//! term    := unary (('*' | '/' | '%') unary)*
//! unary   := ('-' | '+') unary | primary
//! primary := integer | '$' key | '(' expr ')'
//! key     := [A-Za-z0-9_:.]+   (its value must be an integer)
//! ```
//!
//! Keys are read by the daemon, not the transaction: the table lives in the
//! region, which is shared, not copy-on-write, so a transaction reading it
//! could see a write the daemon is making at the same time. Before the fork
//! the daemon replaces each `$key` with `(value)` ([`resolve`], a linear
//! scan that cannot crash); the transaction evaluates plain arithmetic.
//!
//! Arithmetic is on i64, checked: overflow and division by zero are
//! errors (results committed like any other), not crashes.

/// Why an expression has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CalcError {
    /// Division or remainder by zero.
    DivisionByZero,
    /// A result outside i64.
    Overflow,
    /// Unexpected input at this byte offset.
    Syntax(usize),
    /// A `$key` that does not exist.
    NoSuchKey,
    /// A `$key` whose value is not an integer.
    NotInteger,
    /// The expression with its keys' values is longer than a transaction's
    /// input.
    TooLong,
}

impl CalcError {
    /// The error line (without `-` and CRLF), `ERR ...`, into `buf`.
    pub(crate) fn message<'b>(&self, buf: &'b mut [u8; 64]) -> &'b [u8] {
        let fixed: &[u8] = match self {
            CalcError::DivisionByZero => b"ERR division by zero",
            CalcError::Overflow => b"ERR integer overflow",
            CalcError::NoSuchKey => b"ERR no such key",
            CalcError::NotInteger => b"ERR value is not an integer or out of range",
            CalcError::TooLong => b"ERR expression too long",
            CalcError::Syntax(at) => {
                let head = b"ERR syntax error at byte ";
                buf[..head.len()].copy_from_slice(head);
                let mut d = [0u8; 20];
                let n = super::store::format_int(*at as i64, &mut d);
                buf[head.len()..head.len() + n.len()].copy_from_slice(n);
                return &buf[..head.len() + n.len()];
            }
        };
        buf[..fixed.len()].copy_from_slice(fixed);
        &buf[..fixed.len()]
    }
}

/// Reads a key's integer value: `Ok(None)` if absent, `Err(())` if not an
/// integer.
pub(crate) type Lookup<'l> = &'l dyn Fn(&[u8]) -> Result<Option<i64>, ()>;

struct Parser<'s, 'l> {
    s: &'s [u8],
    at: usize,
    lookup: Lookup<'l>,
}

/// Evaluates `input`.
/// Whether `c` may appear in a `$key` name.
fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"_:.".contains(&c)
}

/// Copies `expr` into `out` with every `$key` replaced by `(value)`, the
/// key's integer value now; returns the length written. Linear, no
/// recursion: safe to run in the daemon. A `$` with no key after it is left
/// for the parser to report.
pub(crate) fn resolve(expr: &[u8], out: &mut [u8], lookup: Lookup<'_>) -> Result<usize, CalcError> {
    let mut n = 0;
    let mut put = |bytes: &[u8], n: &mut usize| -> Result<(), CalcError> {
        let end = *n + bytes.len();
        out.get_mut(*n..end)
            .ok_or(CalcError::TooLong)?
            .copy_from_slice(bytes);
        *n = end;
        Ok(())
    };
    let mut i = 0;
    while i < expr.len() {
        let key_len = expr[i + 1..]
            .iter()
            .take_while(|&&c| is_key_byte(c))
            .count();
        if expr[i] != b'$' || key_len == 0 {
            put(&expr[i..i + 1], &mut n)?;
            i += 1;
            continue;
        }
        let value = match lookup(&expr[i + 1..i + 1 + key_len]) {
            Ok(Some(v)) => v,
            Ok(None) => return Err(CalcError::NoSuchKey),
            Err(()) => return Err(CalcError::NotInteger),
        };
        let mut digits = [0u8; 20];
        put(b"(", &mut n)?;
        if value == i64::MIN {
            // Its digits alone overflow before the minus applies.
            put(b"-9223372036854775807-1", &mut n)?;
        } else {
            put(super::store::format_int(value, &mut digits), &mut n)?;
        }
        put(b")", &mut n)?;
        i += 1 + key_len;
    }
    Ok(n)
}

pub(crate) fn eval(input: &[u8], lookup: Lookup<'_>) -> Result<i64, CalcError> {
    let mut p = Parser {
        s: input,
        at: 0,
        lookup,
    };
    let v = p.expr()?;
    p.skip_space();
    if p.at != p.s.len() {
        return Err(CalcError::Syntax(p.at));
    }
    Ok(v)
}

impl Parser<'_, '_> {
    fn skip_space(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.s.get(self.at).copied()
    }

    fn expr(&mut self) -> Result<i64, CalcError> {
        let mut v = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.at += 1;
            let r = self.term()?;
            v = if op == b'+' {
                v.checked_add(r)
            } else {
                v.checked_sub(r)
            }
            .ok_or(CalcError::Overflow)?;
        }
        Ok(v)
    }

    fn term(&mut self) -> Result<i64, CalcError> {
        let mut v = self.unary()?;
        while let Some(op @ (b'*' | b'/' | b'%')) = self.peek() {
            self.at += 1;
            let r = self.unary()?;
            if op != b'*' && r == 0 {
                return Err(CalcError::DivisionByZero);
            }
            v = match op {
                b'*' => v.checked_mul(r),
                b'/' => v.checked_div(r),
                _ => v.checked_rem(r),
            }
            .ok_or(CalcError::Overflow)?;
        }
        Ok(v)
    }

    fn unary(&mut self) -> Result<i64, CalcError> {
        match self.peek() {
            Some(b'-') => {
                self.at += 1;
                self.unary()?.checked_neg().ok_or(CalcError::Overflow)
            }
            Some(b'+') => {
                self.at += 1;
                self.unary()
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<i64, CalcError> {
        match self.peek() {
            Some(b'(') => {
                self.at += 1;
                let v = self.expr()?;
                if self.peek() != Some(b')') {
                    return Err(CalcError::Syntax(self.at));
                }
                self.at += 1;
                Ok(v)
            }
            Some(b'$') => {
                self.at += 1;
                let start = self.at;
                while self.at < self.s.len() && is_key_byte(self.s[self.at]) {
                    self.at += 1;
                }
                if self.at == start {
                    return Err(CalcError::Syntax(start));
                }
                match (self.lookup)(&self.s[start..self.at]) {
                    Ok(Some(v)) => Ok(v),
                    Ok(None) => Err(CalcError::NoSuchKey),
                    Err(()) => Err(CalcError::NotInteger),
                }
            }
            Some(c) if c.is_ascii_digit() => {
                let mut v: i64 = 0;
                while let Some(&c) = self.s.get(self.at).filter(|c| c.is_ascii_digit()) {
                    v = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(i64::from(c - b'0')))
                        .ok_or(CalcError::Overflow)?;
                    self.at += 1;
                }
                Ok(v)
            }
            _ => Err(CalcError::Syntax(self.at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calc(s: &str) -> Result<i64, CalcError> {
        eval(s.as_bytes(), &|k: &[u8]| match k {
            b"ten" => Ok(Some(10)),
            b"text" => Err(()),
            _ => Ok(None),
        })
    }

    #[test]
    fn arithmetic() {
        assert_eq!(calc("1 + 2 * 3"), Ok(7));
        assert_eq!(calc("(1 + 2) * 3"), Ok(9));
        assert_eq!(calc("-7 / 2"), Ok(-3));
        assert_eq!(calc("-7 % 3"), Ok(-1));
        assert_eq!(calc("--5 - -+5"), Ok(10));
        assert_eq!(calc(" 2*(3+(4-1)) "), Ok(12));
        assert_eq!(calc("$ten * $ten + 1"), Ok(101));
        assert_eq!(calc("9223372036854775807"), Ok(i64::MAX));
    }

    #[test]
    fn errors() {
        assert_eq!(calc("1 / 0"), Err(CalcError::DivisionByZero));
        assert_eq!(calc("1 % (2 - 2)"), Err(CalcError::DivisionByZero));
        assert_eq!(calc("9223372036854775807 + 1"), Err(CalcError::Overflow));
        assert_eq!(calc("9223372036854775808"), Err(CalcError::Overflow));
        assert_eq!(calc("-9223372036854775807 - 2"), Err(CalcError::Overflow));
        assert_eq!(calc("1 +"), Err(CalcError::Syntax(3)));
        assert_eq!(calc("(1"), Err(CalcError::Syntax(2)));
        assert_eq!(calc("1 2"), Err(CalcError::Syntax(2)));
        assert_eq!(calc(""), Err(CalcError::Syntax(0)));
        assert_eq!(calc("$"), Err(CalcError::Syntax(1)));
        assert_eq!(calc("$nope"), Err(CalcError::NoSuchKey));
        assert_eq!(calc("$text"), Err(CalcError::NotInteger));
        let mut b = [0u8; 64];
        assert_eq!(
            CalcError::Syntax(12).message(&mut b),
            b"ERR syntax error at byte 12"
        );
        assert_eq!(
            CalcError::DivisionByZero.message(&mut b),
            b"ERR division by zero"
        );
    }

    fn lookup(k: &[u8]) -> Result<Option<i64>, ()> {
        match k {
            b"ten" => Ok(Some(10)),
            b"neg" => Ok(Some(-4)),
            b"min" => Ok(Some(i64::MIN)),
            b"text" => Err(()),
            _ => Ok(None),
        }
    }

    #[test]
    fn resolve_puts_values_in_place_of_keys() {
        let mut out = [0u8; 64];
        let n = resolve(b"$ten*$neg + $ + 1", &mut out, &lookup).unwrap();
        assert_eq!(&out[..n], b"(10)*(-4) + $ + 1");
        let n = resolve(b"$ten * $ten + 1", &mut out, &lookup).unwrap();
        assert_eq!(eval(&out[..n], &|_| Ok(None)), Ok(101));
        let n = resolve(b"$min + 1", &mut out, &lookup).unwrap();
        assert_eq!(eval(&out[..n], &|_| Ok(None)), Ok(i64::MIN + 1));
        assert_eq!(
            resolve(b"$nope", &mut out, &lookup),
            Err(CalcError::NoSuchKey)
        );
        assert_eq!(
            resolve(b"1+$text", &mut out, &lookup),
            Err(CalcError::NotInteger)
        );
        let mut small = [0u8; 5];
        assert_eq!(
            resolve(b"$ten+1", &mut small, &lookup),
            Err(CalcError::TooLong)
        );
    }

    #[test]
    fn moderate_nesting_is_fine() {
        let s = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        assert_eq!(calc(&s), Ok(1));
    }
}
