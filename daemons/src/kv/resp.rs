//! RESP2: the request parser and the reply writer, both over caller-owned
//! fixed buffers (no allocation).
//!
//! Requests come as multibulk arrays (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`,
//! what every client library and `redis-cli` send) or as inline commands
//! (`GET k\r\n`, what a person types into telnet; words split on spaces,
//! with double or single quotes as Redis' `sdssplitargs` has them).

/// Why a request cannot be parsed; the connection is answered with the
/// error and closed, as Redis does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProtoError {
    /// `*` not followed by a valid count.
    MultibulkLength,
    /// `$` not followed by a valid length, or longer than the request limit.
    BulkLength,
    /// Something other than `$` where a bulk string was expected.
    ExpectedDollar(u8),
    /// An inline command with unbalanced quotes.
    UnbalancedQuotes,
    /// More arguments than [`Args`] holds.
    TooManyArgs,
}

impl ProtoError {
    /// Writes the error as Redis words it.
    pub(crate) fn write(&self, out: &mut Out<'_>) {
        match self {
            ProtoError::MultibulkLength => {
                out.error(b"ERR Protocol error: invalid multibulk length")
            }
            ProtoError::BulkLength => out.error(b"ERR Protocol error: invalid bulk length"),
            ProtoError::ExpectedDollar(c) => {
                out.raw(b"-ERR Protocol error: expected '$', got '");
                out.raw(&[*c]);
                out.raw(b"'\r\n");
            }
            ProtoError::UnbalancedQuotes => {
                out.error(b"ERR Protocol error: unbalanced quotes in request")
            }
            ProtoError::TooManyArgs => out.error(b"ERR Protocol error: too many arguments"),
        }
    }
}

/// The outcome of one parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parse {
    /// Not a whole command yet: read more.
    Incomplete,
    /// A command of this many bytes; its arguments are in [`Args`] (none for
    /// an empty line or `*0`, which are skipped).
    Command(usize),
    /// Bad input.
    Error(ProtoError),
}

/// The arguments of the last parsed command: ranges of the buffer it was
/// parsed from (multibulk), or of the arguments' own copy (inline: words
/// are unescaped into it, so the input is never rewritten and parsing it
/// again gives the same command).
#[derive(Debug)]
pub(crate) struct Args {
    spans: Box<[(u32, u32)]>,
    len: usize,
    /// The unescaped words of an inline command.
    words: Box<[u8]>,
    /// Whether the spans are ranges of `words` rather than of the input.
    inline: bool,
}

impl Args {
    /// Room for `max` arguments and an inline line of `line` bytes
    /// (allocated once, at start-up).
    pub(crate) fn with_capacity(max: usize, line: usize) -> Args {
        Args {
            spans: vec![(0, 0); max].into_boxed_slice(),
            len: 0,
            words: vec![0; line].into_boxed_slice(),
            inline: false,
        }
    }

    /// Number of arguments.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Argument `i`; `buf` is the buffer the command was parsed from.
    pub(crate) fn get<'b>(&'b self, buf: &'b [u8], i: usize) -> &'b [u8] {
        let (s, e) = self.spans[i];
        let from = if self.inline { &self.words[..] } else { buf };
        &from[s as usize..e as usize]
    }

    fn push(&mut self, start: usize, end: usize) -> Result<(), ProtoError> {
        if self.len == self.spans.len() {
            return Err(ProtoError::TooManyArgs);
        }
        self.spans[self.len] = (start as u32, end as u32);
        self.len += 1;
        Ok(())
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

/// A decimal number of at most 18 digits (what lengths and counts need).
fn parse_len(s: &[u8]) -> Option<i64> {
    let (neg, d) = match s.split_first() {
        Some((b'-', r)) => (true, r),
        _ => (false, s),
    };
    if d.is_empty() || d.len() > 18 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = d.iter().fold(0i64, |n, &c| n * 10 + i64::from(c - b'0'));
    Some(if neg { -n } else { n })
}

/// Parses one command from the front of `buf` into `args`. `max_bulk`
/// bounds a single argument (larger is a protocol error, not a wait for
/// bytes that could never fit).
pub(crate) fn parse(buf: &[u8], args: &mut Args, max_bulk: usize) -> Parse {
    args.len = 0;
    args.inline = false;
    match buf.first() {
        None => Parse::Incomplete,
        Some(b'*') => parse_multibulk(buf, args, max_bulk),
        Some(_) => parse_inline(buf, args),
    }
}

fn parse_multibulk(buf: &[u8], args: &mut Args, max_bulk: usize) -> Parse {
    let Some(end) = find_crlf(buf, 0) else {
        return Parse::Incomplete;
    };
    let n = match parse_len(&buf[1..end]) {
        Some(n) if n <= 1024 * 1024 => n,
        _ => return Parse::Error(ProtoError::MultibulkLength),
    };
    let mut at = end + 2;
    if n <= 0 {
        return Parse::Command(at);
    }
    for _ in 0..n {
        if at >= buf.len() {
            return Parse::Incomplete;
        }
        if buf[at] != b'$' {
            return Parse::Error(ProtoError::ExpectedDollar(buf[at]));
        }
        let Some(end) = find_crlf(buf, at) else {
            return Parse::Incomplete;
        };
        let len = match parse_len(&buf[at + 1..end]) {
            Some(l) if l >= 0 && l as usize <= max_bulk => l as usize,
            _ => return Parse::Error(ProtoError::BulkLength),
        };
        let start = end + 2;
        if start + len + 2 > buf.len() {
            return Parse::Incomplete;
        }
        if let Err(e) = args.push(start, start + len) {
            return Parse::Error(e);
        }
        at = start + len + 2;
    }
    Parse::Command(at)
}

fn parse_inline(buf: &[u8], args: &mut Args) -> Parse {
    let Some(nl) = buf.iter().position(|&c| c == b'\n') else {
        return Parse::Incomplete;
    };
    let end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    // The words are never longer than the line.
    if end > args.words.len() {
        return Parse::Error(ProtoError::TooManyArgs);
    }
    args.inline = true;
    let mut i = 0;
    let mut w = 0;
    while i < end {
        while i < end && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == end {
            break;
        }
        // One word, unescaped into `args.words` at `w`.
        let start = w;
        let mut quote = 0u8;
        while i < end {
            let c = buf[i];
            if quote == 0 {
                if c.is_ascii_whitespace() {
                    break;
                }
                if c == b'"' || c == b'\'' {
                    quote = c;
                } else {
                    args.words[w] = c;
                    w += 1;
                }
                i += 1;
            } else if c == quote {
                quote = 0;
                i += 1;
                // A closing quote must end the word.
                if i < end && !buf[i].is_ascii_whitespace() {
                    return Parse::Error(ProtoError::UnbalancedQuotes);
                }
            } else if quote == b'"' && c == b'\\' && i + 1 < end {
                let (b, used) = unescape(&buf[i + 1..end]);
                args.words[w] = b;
                w += 1;
                i += 1 + used;
            } else {
                args.words[w] = c;
                w += 1;
                i += 1;
            }
        }
        if quote != 0 {
            return Parse::Error(ProtoError::UnbalancedQuotes);
        }
        if let Err(e) = args.push(start, w) {
            return Parse::Error(e);
        }
    }
    Parse::Command(nl + 1)
}

/// The byte a backslash escape in double quotes stands for, and the bytes
/// after the backslash it used.
fn unescape(s: &[u8]) -> (u8, usize) {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    match s[0] {
        b'n' => (b'\n', 1),
        b'r' => (b'\r', 1),
        b't' => (b'\t', 1),
        b'b' => (8, 1),
        b'a' => (7, 1),
        b'x' if s.len() >= 3 => match (hex(s[1]), hex(s[2])) {
            (Some(h), Some(l)) => (h * 16 + l, 3),
            _ => (b'x', 1),
        },
        c => (c, 1),
    }
}

/// A reply writer over a fixed buffer. Writing past its end sets
/// [`Out::overflowed`] and drops the bytes; the caller then rolls the
/// buffer back to a mark ([`Out::len`], [`Out::truncate`]).
#[derive(Debug)]
pub(crate) struct Out<'b> {
    buf: &'b mut [u8],
    len: usize,
    overflow: bool,
}

impl<'b> Out<'b> {
    /// A writer appending to `buf` after its first `len` bytes.
    pub(crate) fn new(buf: &'b mut [u8], len: usize) -> Out<'b> {
        Out {
            buf,
            len,
            overflow: false,
        }
    }

    /// Bytes written.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes still free.
    pub(crate) fn free(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Whether a write did not fit.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Drops everything after `len` and clears the overflow.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = len.min(self.len);
        self.overflow = false;
    }

    /// Appends raw bytes.
    pub(crate) fn raw(&mut self, b: &[u8]) {
        if self.overflow || b.len() > self.free() {
            self.overflow = true;
            return;
        }
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    fn line(&mut self, prefix: u8, n: i64) {
        let mut digits = [0u8; 20];
        self.raw(&[prefix]);
        self.raw(super::store::format_int(n, &mut digits));
        self.raw(b"\r\n");
    }

    /// A decimal number, raw (for text inside a bulk string).
    pub(crate) fn num(&mut self, n: i64) {
        let mut digits = [0u8; 20];
        self.raw(super::store::format_int(n, &mut digits));
    }

    /// `+s\r\n`
    pub(crate) fn simple(&mut self, s: &[u8]) {
        self.raw(b"+");
        self.raw(s);
        self.raw(b"\r\n");
    }

    /// `+OK\r\n`
    pub(crate) fn ok(&mut self) {
        self.raw(b"+OK\r\n");
    }

    /// `-e\r\n` (`e` starts with the error code: `ERR ...`).
    pub(crate) fn error(&mut self, e: &[u8]) {
        self.raw(b"-");
        self.raw(e);
        self.raw(b"\r\n");
    }

    /// `:n\r\n`
    pub(crate) fn int(&mut self, n: i64) {
        self.line(b':', n);
    }

    /// A bulk string.
    pub(crate) fn bulk(&mut self, b: &[u8]) {
        self.line(b'$', b.len() as i64);
        self.raw(b);
        self.raw(b"\r\n");
    }

    /// The null bulk string `$-1\r\n`.
    pub(crate) fn null(&mut self) {
        self.raw(b"$-1\r\n");
    }

    /// The head of an array of `n` elements.
    pub(crate) fn array(&mut self, n: usize) {
        self.line(b'*', n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> (Vec<Vec<Vec<u8>>>, Parse, usize) {
        let buf = input.to_vec();
        let mut args = Args::with_capacity(64, 1 << 16);
        let mut cmds = Vec::new();
        let mut at = 0;
        loop {
            match parse(&buf[at..], &mut args, 1 << 20) {
                Parse::Command(n) => {
                    let b = &buf[at..];
                    cmds.push((0..args.len()).map(|i| args.get(b, i).to_vec()).collect());
                    at += n;
                }
                other => return (cmds, other, at),
            }
        }
    }

    fn words(ws: &[&str]) -> Vec<Vec<u8>> {
        ws.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_multibulk_command() {
        let (cmds, last, at) = parse_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nx!\r\n");
        assert_eq!(cmds, vec![words(&["SET", "k", "v\r\nx!"])]);
        assert_eq!((last, at), (Parse::Incomplete, 31));
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete() {
        let full = b"*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n";
        for n in 0..full.len() {
            let (cmds, last, _) = parse_all(&full[..n]);
            assert!(cmds.is_empty(), "prefix {n}");
            assert_eq!(last, Parse::Incomplete, "prefix {n}");
        }
        let (cmds, _, at) = parse_all(full);
        assert_eq!(cmds, vec![words(&["GET", "0123456789"])]);
        assert_eq!(at, full.len());
    }

    #[test]
    fn pipelined_commands_come_out_in_order() {
        let mut input = Vec::new();
        for i in 0..100 {
            let k = format!("key{i}");
            input.extend_from_slice(
                format!("*2\r\n$4\r\nINCR\r\n${}\r\n{k}\r\n", k.len()).as_bytes(),
            );
        }
        input.extend_from_slice(b"PING\r\n*1\r\n$4\r\nPI");
        let (cmds, last, _) = parse_all(&input);
        assert_eq!(cmds.len(), 101);
        for (i, c) in cmds[..100].iter().enumerate() {
            assert_eq!(c, &words(&["INCR", &format!("key{i}")]));
        }
        assert_eq!(cmds[100], words(&["PING"]));
        assert_eq!(last, Parse::Incomplete);
    }

    #[test]
    fn inline_commands() {
        let (cmds, last, _) = parse_all(
            b"SET k  v\r\nping\n\r\n  \r\nSET \"a b\" 'c d'\r\nECHO \"x\\ty\\x41\\\"\"\r\n",
        );
        assert_eq!(
            cmds,
            vec![
                words(&["SET", "k", "v"]),
                words(&["ping"]),
                vec![],
                vec![],
                words(&["SET", "a b", "c d"]),
                words(&["ECHO", "x\tyA\""]),
            ]
        );
        assert_eq!(last, Parse::Incomplete);
        assert_eq!(parse_all(b"GET k").1, Parse::Incomplete);
    }

    #[test]
    fn an_inline_command_parses_the_same_twice() {
        // The server parses a command again when its reply did not fit the
        // output buffer: the input must still be what the client sent.
        let buf = b"MGET \"a b\" 'c' \"\\x41\\\"\" d\r\n".to_vec();
        let mut args = Args::with_capacity(8, 64);
        let mut twice = Vec::new();
        for _ in 0..2 {
            assert_eq!(parse(&buf, &mut args, 99), Parse::Command(buf.len()));
            let got: Vec<Vec<u8>> = (0..args.len())
                .map(|i| args.get(&buf, i).to_vec())
                .collect();
            twice.push(got);
        }
        assert_eq!(twice[0], words(&["MGET", "a b", "c", "A\"", "d"]));
        assert_eq!(twice[0], twice[1]);
        // A multibulk command after it reads from the input again.
        let mb = b"*1\r\n$4\r\nPING\r\n";
        assert_eq!(parse(mb, &mut args, 99), Parse::Command(mb.len()));
        assert_eq!(args.get(mb, 0), b"PING");
    }

    #[test]
    fn empty_multibulk_is_skipped() {
        let (cmds, _, at) = parse_all(b"*0\r\n*-1\r\n");
        assert_eq!(cmds, vec![Vec::<Vec<u8>>::new(), vec![]]);
        assert_eq!(at, 9);
    }

    #[test]
    fn bad_input() {
        let bad = |s: &[u8]| parse_all(s).1;
        assert_eq!(bad(b"*x\r\n"), Parse::Error(ProtoError::MultibulkLength));
        assert_eq!(
            bad(b"*99999999\r\n"),
            Parse::Error(ProtoError::MultibulkLength)
        );
        assert_eq!(
            bad(b"*1\r\n+GET\r\n"),
            Parse::Error(ProtoError::ExpectedDollar(b'+'))
        );
        assert_eq!(bad(b"*1\r\n$-3\r\n"), Parse::Error(ProtoError::BulkLength));
        assert_eq!(bad(b"*1\r\n$abc\r\n"), Parse::Error(ProtoError::BulkLength));
        assert_eq!(
            bad(b"SET \"a b\r\n"),
            Parse::Error(ProtoError::UnbalancedQuotes)
        );
        assert_eq!(
            bad(b"SET \"a\"b\r\n"),
            Parse::Error(ProtoError::UnbalancedQuotes)
        );
        // A bulk larger than the limit is refused at once.
        let buf = b"*1\r\n$100\r\n".to_vec();
        let mut args = Args::with_capacity(4, 1 << 16);
        assert_eq!(
            parse(&buf, &mut args, 99),
            Parse::Error(ProtoError::BulkLength)
        );
        let mut many = b"*5\r\n".to_vec();
        for _ in 0..5 {
            many.extend_from_slice(b"$1\r\nx\r\n");
        }
        assert_eq!(
            parse(&many, &mut args, 99),
            Parse::Error(ProtoError::TooManyArgs)
        );
    }

    #[test]
    fn replies() {
        let mut buf = [0u8; 128];
        let mut out = Out::new(&mut buf, 0);
        out.ok();
        out.int(-42);
        out.bulk(b"hi");
        out.null();
        out.array(2);
        out.error(b"ERR no");
        ProtoError::ExpectedDollar(b'x').write(&mut out);
        let n = out.len();
        assert!(!out.overflowed());
        assert_eq!(
            &buf[..n],
            &b"+OK\r\n:-42\r\n$2\r\nhi\r\n$-1\r\n*2\r\n-ERR no\r\n-ERR Protocol error: expected '$', got 'x'\r\n"[..]
        );
    }

    #[test]
    fn an_overflowing_reply_is_flagged_and_can_be_rolled_back() {
        let mut buf = [0u8; 16];
        let mut out = Out::new(&mut buf, 0);
        out.ok();
        let mark = out.len();
        out.bulk(b"0123456789");
        assert!(out.overflowed());
        out.truncate(mark);
        assert!(!out.overflowed());
        out.int(7);
        let n = out.len();
        assert_eq!(&buf[..n], b"+OK\r\n:7\r\n");
    }
}
