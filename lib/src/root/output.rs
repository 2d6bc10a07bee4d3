//! What daemons write on stdout and stderr: read from pipes the root owns,
//! written to the root's log one line at a time (tagged `NAME[PID]`), and
//! kept in a bounded buffer per daemon that `ctl logs` shows.
//!
//! Each daemon has one pipe per stream, created once and handed to every
//! incarnation: a line a process did not finish before it died stays in
//! the pipe, and the root reads it as that process's (it drains the pipes
//! when it reaps the process, before the replacement is forked). A partial
//! last line is flushed then, with [`PARTIAL`] after it.
//!
//! The read ends are non-blocking and read in the poll loop, at most
//! [`READ_BUDGET`] bytes per wake-up (epoll is level-triggered: the rest
//! comes on the next turn). The write ends stay blocking, as a program
//! expects of its stdout. Lines are rate-limited per daemon (a token
//! bucket of [`BURST`] lines, refilled at [`RATE`] a second); the lines
//! dropped are counted and said once the bucket lets a line through again.
//!
//! The text is the daemon's and untrusted: control characters are escaped
//! before it reaches the root's log, and `ctl` escapes it again on display.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::control::proto::OutputLine;
use crate::sys::{self, Pid};

/// Bytes read from one pipe per wake-up of the poll loop.
pub(crate) const READ_BUDGET: usize = 64 << 10;
/// Bytes drained from one pipe when its process is reaped (more than a
/// pipe holds, so a dead process's last lines are all read).
const DRAIN_BUDGET: usize = 1 << 20;
/// The longest line kept whole; a longer one is cut into pieces this long.
pub(crate) const MAX_LINE: usize = 4096;
/// Lines kept per daemon for `ctl logs`.
pub(crate) const KEPT_LINES: usize = 2000;
/// Lines per second a daemon may write to the root's log, on average.
pub(crate) const RATE: u32 = 1000;
/// Lines it may write at once.
pub(crate) const BURST: u32 = 2000;
/// Written after a line its process did not finish.
pub(crate) const PARTIAL: &str = " [no newline: the process ended mid-line]";

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    pub(crate) fn from_index(n: u64) -> Stream {
        if n == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One stream's pipe and the line it is in the middle of.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    partial: Vec<u8>,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = sys::pipe_cloexec(true)?;
        sys::setup::set_nonblocking(write.as_fd(), false)?;
        Ok(Pipe {
            read,
            write,
            // Grown on the first byte: a quiet daemon costs the root no
            // buffer (its heap is copied into every child it forks).
            partial: Vec::new(),
        })
    }
}

/// Where captured lines go besides the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sink {
    /// The root's log (`tracing`, with its timestamps).
    Log,
    /// journald reads the root's stderr (`JOURNAL_STREAM` names it): one
    /// line each, a `<N>` priority first, no timestamp of our own.
    Journal,
}

impl Sink {
    /// [`Sink::Journal`] if journald reads the root's stderr.
    pub(crate) fn detect() -> Sink {
        if crate::subscriber::under_journald() {
            Sink::Journal
        } else {
            Sink::Log
        }
    }
}

/// One daemon's captured output.
#[derive(Debug)]
pub(crate) struct Output {
    name: String,
    pipes: [Pipe; 2],
    lines: VecDeque<OutputLine>,
    next_seq: u64,
    /// The process lines are attributed to: the one running, else the last
    /// (`None` before the first; its lines say pid 0).
    pid: Option<Pid>,
    tokens: f64,
    refilled: Instant,
    /// Lines dropped by the rate limit and not yet said.
    unsaid: u64,
    /// Every line dropped so far.
    dropped: u64,
    sink: Sink,
    /// Lines drained from a dead process (sequence numbers) whose log
    /// lines wait until its replacement is forked ([`Output::flush_log`]).
    deferred: Option<(u64, u64)>,
    /// Inside [`Output::ended`]: lines are kept, their logging deferred.
    draining: bool,
}

impl Output {
    pub(crate) fn new(name: &str, sink: Sink) -> io::Result<Output> {
        Ok(Output {
            name: name.to_owned(),
            pipes: [Pipe::new()?, Pipe::new()?],
            lines: VecDeque::new(),
            next_seq: 1,
            pid: None,
            tokens: f64::from(BURST),
            refilled: Instant::now(),
            unsaid: 0,
            dropped: 0,
            sink,
            deferred: None,
            draining: false,
        })
    }

    /// [`Output::new`] for daemon `i`, its read ends watched by `epoll`.
    pub(crate) fn watched(
        name: &str,
        sink: Sink,
        epoll: &sys::Epoll,
        i: usize,
    ) -> io::Result<Output> {
        let out = Output::new(name, sink)?;
        for stream in [Stream::Stdout, Stream::Stderr] {
            let token = super::TOKEN_OUTPUT | (i as u64 * 2 + stream as u64);
            epoll.add(out.read_fd(stream), token)?;
        }
        Ok(out)
    }

    /// The read end of `stream`'s pipe, for the poll loop.
    pub(crate) fn read_fd(&self, stream: Stream) -> BorrowedFd<'_> {
        self.pipes[stream as usize].read.as_fd()
    }

    /// The write ends (stdout, stderr) a forked child takes.
    pub(crate) fn write_fds(&self) -> (RawFd, RawFd) {
        (
            self.pipes[0].write.as_raw_fd(),
            self.pipes[1].write.as_raw_fd(),
        )
    }

    /// Attributes what is read from now on to `pid`.
    pub(crate) fn started(&mut self, pid: Pid) {
        self.pid = Some(pid);
    }

    /// `stream` is readable: reads at most [`READ_BUDGET`] bytes.
    pub(crate) fn on_readable(&mut self, stream: Stream) {
        self.read(stream, READ_BUDGET);
    }

    /// Process `pid` ended: reads what it left in both pipes, then flushes
    /// a line it did not finish, marked with [`PARTIAL`].
    /// Their log lines wait for [`Output::flush_log`]: writing them takes
    /// longer than reading them, and the replacement should not wait.
    pub(crate) fn ended(&mut self, pid: Pid) {
        self.pid = Some(pid);
        // Lines of an earlier death not logged yet go first.
        self.flush_log();
        let first = self.next_seq;
        self.draining = true;
        for stream in [Stream::Stdout, Stream::Stderr] {
            self.read(stream, DRAIN_BUDGET);
            let rest = std::mem::take(&mut self.pipes[stream as usize].partial);
            if !rest.is_empty() {
                self.line(stream, &rest, true);
            }
        }
        self.say_dropped();
        self.draining = false;
        self.deferred = Some((first, self.next_seq));
    }

    /// Logs the lines [`Output::ended`] read. Lines that fell out of the
    /// buffer meanwhile (more than it keeps) are not logged.
    pub(crate) fn flush_log(&mut self) {
        let Some((from, to)) = self.deferred.take() else {
            return;
        };
        for l in self.lines.iter().filter(|l| (from..to).contains(&l.seq)) {
            let stream = if l.stream == "stdout" {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            self.log(stream, l.pid, &l.text);
        }
    }

    fn read(&mut self, stream: Stream, budget: usize) {
        let mut buf = [0u8; 16 << 10];
        let mut left = budget;
        while left > 0 {
            let want = left.min(buf.len());
            let fd = self.pipes[stream as usize].read.as_fd();
            let n = match sys::read(fd, &mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EAGAIN: empty for now.
                Err(_) => break,
            };
            left -= n;
            self.split(stream, &buf[..n]);
        }
    }

    /// Cuts `bytes` into lines, keeping an unfinished one for later.
    fn split(&mut self, stream: Stream, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let partial = &mut self.pipes[stream as usize].partial;
            let room = MAX_LINE - partial.len();
            let end = bytes.iter().take(room).position(|&b| b == b'\n');
            match end {
                Some(n) => {
                    partial.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n + 1..];
                }
                None if bytes.len() < room => {
                    partial.extend_from_slice(bytes);
                    return;
                }
                None => {
                    // A line longer than MAX_LINE: this piece is a line.
                    partial.extend_from_slice(&bytes[..room]);
                    bytes = &bytes[room..];
                }
            }
            // The buffer is kept (up to MAX_LINE) for the next line.
            let mut line = std::mem::take(partial);
            self.line(stream, &line, false);
            line.clear();
            self.pipes[stream as usize].partial = line;
        }
    }

    /// One line: through the rate limit, into the buffer and the log.
    fn line(&mut self, stream: Stream, bytes: &[u8], partial: bool) {
        let now = Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() * f64::from(RATE);
        self.tokens = (self.tokens + refill).min(f64::from(BURST));
        self.refilled = now;
        if self.tokens < 1.0 {
            self.unsaid += 1;
            self.dropped += 1;
            return;
        }
        self.tokens -= 1.0;
        self.say_dropped();
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        if partial {
            text.push_str(PARTIAL);
        }
        self.push(stream, text);
    }

    /// Says how many lines the rate limit dropped, if any since last said.
    fn say_dropped(&mut self) {
        if self.unsaid == 0 {
            return;
        }
        let n = std::mem::take(&mut self.unsaid);
        let text = format!(
            "[forkroot: {n} line{} dropped (more than {RATE} lines a second)]",
            if n == 1 { "" } else { "s" }
        );
        self.push(Stream::Stderr, text);
    }

    fn push(&mut self, stream: Stream, text: String) {
        if !self.draining {
            self.log(stream, self.pid.map_or(0, Pid::as_u32), &text);
        }
        if self.lines.len() == KEPT_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(OutputLine {
            seq: self.next_seq,
            time_ns: sys::realtime_ns(),
            pid: self.pid.map_or(0, Pid::as_u32),
            stream: stream.as_str().to_owned(),
            text,
        });
        self.next_seq += 1;
    }

    /// Writes one line to the root's log, tagged with the daemon and pid.
    fn log(&self, stream: Stream, pid: u32, text: &str) {
        let text = escape_controls(text);
        match self.sink {
            Sink::Log => {
                tracing::info!(target: "forkroot::output", "{}[{pid}] {}: {text}", self.name, stream.as_str());
            }
            Sink::Journal => {
                // LOG_INFO for stdout, LOG_WARNING for stderr.
                let level = if stream == Stream::Stdout {
                    crate::subscriber::priority(&tracing::Level::INFO)
                } else {
                    crate::subscriber::priority(&tracing::Level::WARN)
                };
                let line = format!("<{level}>{}[{pid}]: {text}\n", self.name);
                let _ = sys::write_all(std::io::stderr().as_fd(), line.as_bytes());
            }
        }
    }

    /// Lines with a sequence number of at least `*from`, oldest first;
    /// moves `*from` past the newest.
    pub(crate) fn since(&self, from: &mut u64, out: &mut Vec<OutputLine>) {
        let before = out.len();
        out.extend(self.lines.iter().filter(|l| l.seq >= *from).cloned());
        if out.len() > before {
            *from = self.next_seq;
        }
    }

    /// Lines the rate limit dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// `text` with control characters written as escapes (`\u{1b}`), so a
/// daemon cannot move the cursor or forge lines in the root's log.
fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}
