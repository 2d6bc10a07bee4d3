//! RESP: the request parser and the reply writer (RESP2, or RESP3 after
//! `HELLO 3`), both over caller-owned fixed buffers (no allocation).
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

/// Longest `*<count>` or `$<length>` line (without its CRLF) accepted: a
/// longer one is a protocol error at once, not a wait for a CRLF that a
/// slow client sends a byte at a time while every byte rescans the line.
const MAX_HEADER: usize = 32;

/// Where the header line at `from` ends: `Ok(Some(crlf))`, `Ok(None)` if
/// its CRLF has not come yet, `Err(())` if it is longer than [`MAX_HEADER`].
fn header_end(buf: &[u8], from: usize) -> Result<Option<usize>, ()> {
    let end = buf.len().min(from + MAX_HEADER + 2);
    let line = buf.get(from..end).unwrap_or_default();
    match line.windows(2).position(|w| w == b"\r\n") {
        Some(p) => Ok(Some(from + p)),
        None if end - from.min(end) >= MAX_HEADER + 2 => Err(()),
        None => Ok(None),
    }
}

/// How far the parse of an incomplete command at the front of the input
/// got, so that parsing it again when more bytes came goes on from there
/// instead of rescanning what was already checked: every byte of a
/// request is then looked at a bounded number of times, however it is cut
/// into reads. It belongs to the command at the front of the input: reset
/// it ([`Resume::START`]) whenever that front moves.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resume {
    /// Inline: bytes known to hold no newline. Multibulk: where the first
    /// bulk not yet whole starts (0: the count line is not whole yet).
    at: usize,
    /// Multibulk: the bulks before `at`.
    done: usize,
}

impl Resume {
    /// Nothing parsed yet (what [`Resume::default`] gives, in a const).
    pub(crate) const START: Resume = Resume { at: 0, done: 0 };
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
/// bytes that could never fit). `resume` is where the last parse of the
/// same, then incomplete, command stopped (see [`Resume`]).
pub(crate) fn parse(buf: &[u8], args: &mut Args, max_bulk: usize, resume: &mut Resume) -> Parse {
    args.len = 0;
    args.inline = false;
    match buf.first() {
        None => Parse::Incomplete,
        Some(b'*') => parse_multibulk(buf, args, max_bulk, resume),
        Some(_) => parse_inline(buf, args, resume),
    }
}

fn parse_multibulk(buf: &[u8], args: &mut Args, max_bulk: usize, resume: &mut Resume) -> Parse {
    let end = match header_end(buf, 0) {
        Ok(Some(end)) => end,
        Ok(None) => return Parse::Incomplete,
        Err(()) => return Parse::Error(ProtoError::MultibulkLength),
    };
    let n = match parse_len(&buf[1..end]) {
        Some(n) if n <= 0 => return Parse::Command(end + 2),
        Some(n) if n <= 1024 * 1024 => n as usize,
        _ => return Parse::Error(ProtoError::MultibulkLength),
    };
    let first = end + 2;
    // Check the bulks not checked yet; only a whole command is split into
    // arguments (one more pass over its headers).
    let (mut at, mut done) = match *resume {
        Resume { at: 0, .. } => (first, 0),
        r => (r.at, r.done),
    };
    if n > args.spans.len() {
        return Parse::Error(ProtoError::TooManyArgs);
    }
    while done < n {
        match bulk(buf, at, max_bulk) {
            Ok(Some((_, next))) => {
                at = next;
                done += 1;
            }
            Ok(None) => {
                *resume = Resume { at, done };
                return Parse::Incomplete;
            }
            Err(e) => return Parse::Error(e),
        }
    }
    let mut at = first;
    for _ in 0..n {
        // Checked above (or by an earlier parse of the same bytes).
        let Ok(Some((start, next))) = bulk(buf, at, max_bulk) else {
            return Parse::Error(ProtoError::BulkLength);
        };
        if let Err(e) = args.push(start, next - 2) {
            return Parse::Error(e);
        }
        at = next;
    }
    Parse::Command(at)
}

/// The bulk string at `at`: `Ok(Some((start of its bytes, end of its
/// CRLF)))`, `Ok(None)` if it has not all come yet.
fn bulk(buf: &[u8], at: usize, max_bulk: usize) -> Result<Option<(usize, usize)>, ProtoError> {
    let Some(&c) = buf.get(at) else {
        return Ok(None);
    };
    if c != b'$' {
        return Err(ProtoError::ExpectedDollar(c));
    }
    let end = match header_end(buf, at) {
        Ok(Some(end)) => end,
        Ok(None) => return Ok(None),
        Err(()) => return Err(ProtoError::BulkLength),
    };
    let len = match parse_len(&buf[at + 1..end]) {
        Some(l) if l >= 0 && l as usize <= max_bulk => l as usize,
        _ => return Err(ProtoError::BulkLength),
    };
    let start = end + 2;
    if start + len + 2 > buf.len() {
        return Ok(None);
    }
    Ok(Some((start, start + len + 2)))
}

fn parse_inline(buf: &[u8], args: &mut Args, resume: &mut Resume) -> Parse {
    let from = resume.at.min(buf.len());
    let Some(nl) = buf[from..].iter().position(|&c| c == b'\n') else {
        resume.at = buf.len();
        return Parse::Incomplete;
    };
    let nl = from + nl;
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
    /// Replies in RESP3 (the connection said `HELLO 3`): nulls, maps and
    /// verbatim strings have their own types.
    resp3: bool,
}

impl<'b> Out<'b> {
    /// A writer appending to `buf` after its first `len` bytes.
    pub(crate) fn new(buf: &'b mut [u8], len: usize) -> Out<'b> {
        Out {
            buf,
            len,
            overflow: false,
            resp3: false,
        }
    }

    /// The same writer, replying in RESP3 if `resp3`.
    pub(crate) fn resp3(mut self, resp3: bool) -> Out<'b> {
        self.resp3 = resp3;
        self
    }

    /// Switches the protocol of the replies that follow (HELLO, RESET).
    pub(crate) fn set_resp3(&mut self, resp3: bool) {
        self.resp3 = resp3;
    }

    /// Whether `n` more bytes fit; if not, flags the overflow (as a write
    /// that did not fit would), so the command runs again once the buffer
    /// drained. For a write command to check before it changes anything.
    pub(crate) fn reserve(&mut self, n: usize) -> bool {
        if n > self.free() {
            self.overflow = true;
        }
        !self.overflow
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

    /// The null: `$-1\r\n` (RESP2's null bulk string), `_\r\n` in RESP3.
    pub(crate) fn null(&mut self) {
        self.raw(if self.resp3 { b"_\r\n" } else { b"$-1\r\n" });
    }

    /// The head of a map of `n` key/value pairs: `%n` in RESP3, an array of
    /// `2n` elements in RESP2.
    pub(crate) fn map(&mut self, n: usize) {
        if self.resp3 {
            self.line(b'%', n as i64);
        } else {
            self.array(2 * n);
        }
    }

    /// A text: a verbatim string (`=len\r\ntxt:...`) in RESP3, a bulk
    /// string in RESP2 (what INFO replies).
    pub(crate) fn text(&mut self, b: &[u8]) {
        if self.resp3 {
            self.line(b'=', b.len() as i64 + 4);
            self.raw(b"txt:");
            self.raw(b);
            self.raw(b"\r\n");
        } else {
            self.bulk(b);
        }
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
            match parse(&buf[at..], &mut args, 1 << 20, &mut Resume::default()) {
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
            assert_eq!(
                parse(&buf, &mut args, 99, &mut Resume::default()),
                Parse::Command(buf.len())
            );
            let got: Vec<Vec<u8>> = (0..args.len())
                .map(|i| args.get(&buf, i).to_vec())
                .collect();
            twice.push(got);
        }
        assert_eq!(twice[0], words(&["MGET", "a b", "c", "A\"", "d"]));
        assert_eq!(twice[0], twice[1]);
        // A multibulk command after it reads from the input again.
        let mb = b"*1\r\n$4\r\nPING\r\n";
        let r = parse(mb, &mut args, 99, &mut Resume::default());
        assert_eq!(r, Parse::Command(mb.len()));
        assert_eq!(args.get(mb, 0), b"PING");
    }

    /// Feeds `full` one byte at a time, as a slow client sends it, keeping
    /// the resume point between parses; returns the resume points seen.
    fn byte_by_byte(full: &[u8], args: &mut Args) -> (Parse, Vec<Resume>) {
        let mut resume = Resume::default();
        let mut seen = Vec::new();
        for n in 1..=full.len() {
            match parse(&full[..n], args, 1 << 20, &mut resume) {
                Parse::Incomplete => seen.push(resume),
                done => return (done, seen),
            }
        }
        (Parse::Incomplete, seen)
    }

    #[test]
    fn a_slow_client_is_not_rescanned_from_the_start() {
        let mut args = Args::with_capacity(64, 1 << 16);
        // Multibulk: the parse goes on from the first bulk not yet whole.
        let full = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nx!\r\n";
        let (last, seen) = byte_by_byte(full, &mut args);
        assert_eq!(last, Parse::Command(full.len()));
        let got: Vec<Vec<u8>> = (0..args.len())
            .map(|i| args.get(full, i).to_vec())
            .collect();
        assert_eq!(got, words(&["SET", "k", "v\r\nx!"]));
        let done: Vec<(usize, usize)> = seen.iter().map(|r| (r.at, r.done)).collect();
        assert!(done.contains(&(4, 0)) && done.contains(&(13, 1)) && done.contains(&(20, 2)));
        assert_eq!(done.last(), Some(&(20, 2)));
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
        // Inline: the newline is looked for only in the bytes not yet seen.
        let line = b"SET k \"v w\"\r\n";
        let (last, seen) = byte_by_byte(line, &mut args);
        assert_eq!(last, Parse::Command(line.len()));
        assert_eq!(args.get(line, 2), b"v w");
        let at: Vec<usize> = seen.iter().map(|r| r.at).collect();
        assert_eq!(at, (1..line.len()).collect::<Vec<_>>());
    }

    #[test]
    fn a_header_without_crlf_is_refused_after_32_bytes() {
        let bad = |s: &[u8]| parse_all(s).1;
        let long = [b'1'; 40];
        let mut count = b"*".to_vec();
        count.extend_from_slice(&long);
        assert_eq!(bad(&count), Parse::Error(ProtoError::MultibulkLength));
        assert_eq!(bad(&count[..33]), Parse::Incomplete);
        let mut len = b"*1\r\n$".to_vec();
        len.extend_from_slice(&long);
        assert_eq!(bad(&len), Parse::Error(ProtoError::BulkLength));
        assert_eq!(bad(&len[..4 + 33]), Parse::Incomplete);
        // 32 bytes and a CRLF are still a header (here, a bad length).
        let mut edge = b"*".to_vec();
        edge.extend_from_slice(&[b'0'; 31]);
        edge.extend_from_slice(b"\r\n");
        assert_eq!(bad(&edge), Parse::Error(ProtoError::MultibulkLength));
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
            parse(&buf, &mut args, 99, &mut Resume::default()),
            Parse::Error(ProtoError::BulkLength)
        );
        let mut many = b"*5\r\n".to_vec();
        for _ in 0..5 {
            many.extend_from_slice(b"$1\r\nx\r\n");
        }
        assert_eq!(
            parse(&many, &mut args, 99, &mut Resume::default()),
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
    fn resp3_replies_have_their_own_types() {
        let mut buf = [0u8; 128];
        for (resp3, want) in [
            (false, &b"$-1\r\n*4\r\n$2\r\nab\r\n"[..]),
            (true, &b"_\r\n%2\r\n=6\r\ntxt:ab\r\n"[..]),
        ] {
            let mut out = Out::new(&mut buf, 0).resp3(resp3);
            out.null();
            out.map(2);
            out.text(b"ab");
            let n = out.len();
            assert_eq!(&buf[..n], want);
        }
        let mut out = Out::new(&mut buf, 120);
        assert!(out.reserve(8));
        assert!(!out.reserve(9));
        assert!(out.overflowed());
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
