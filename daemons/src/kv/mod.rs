//! `kv`: a key-value store speaking RESP2 and RESP3, so `redis-cli`,
//! `redis-benchmark` and client libraries such as redis-py work against
//! it, whose data lives in the daemon's
//! region: a write is journaled, applied and committed before its `+OK`
//! goes out, so a restarted daemon serves every acknowledged write.
//!
//! Settings (`[daemon.args]`):
//! - `listen`: `"127.0.0.1:6380"` (default), or a Unix socket path (any
//!   value with a `/`), bound by kv itself. A daemon-level `listen =
//!   ["tcp:..."]` takes its place: kv then serves on the first socket the
//!   root holds, so clients are never refused while it restarts.
//! - `max_clients`: connections served at once (default 1024); one more is
//!   answered `-ERR max number of clients reached` and closed.
//! - `debug`: allow the DEBUG command, which crashes on purpose (default
//!   false).
//! - `password`: if set, a connection must `AUTH` (or `HELLO 3 AUTH`)
//!   with it before any other command, as with Redis' `requirepass`.
//!
//! They are declared once in [`KIND`] and checked with the rest of the
//! config before anything starts.
//!
//! Limits: a request (one command with its arguments) may be up to
//! [`MAX_REQUEST`] bytes; a larger one is answered with a protocol error and
//! its connection closed. A reply may be up to [`MAX_REPLY`] bytes (an MGET
//! beyond it gets an error). Keys and values live in the region: the table
//! takes about a quarter of the state, the heap the rest; a full store
//! answers `-OOM`, as Redis does at `maxmemory`.
//!
//! One thread, one epoll loop, non-blocking sockets, level-triggered.
//! Every buffer is allocated at start-up; after `ctx.steady()` the process
//! allocates nothing. Commands are parsed from each connection's input
//! buffer in order and answered in order (pipelining); a connection whose
//! output does not drain stops being read (backpressure), and one waiting
//! for a transaction (CALC) stops being parsed until its reply is in.
//!
//! Modules: [`resp`] (protocol), [`store`] (the table in the region),
//! [`journal`] (its undo journal), [`commands`] (the command table and
//! each command), [`glob`] (KEYS and SCAN patterns), [`calc`] and
//! [`tasks`] (the transactions).

mod calc;
mod commands;
mod glob;
mod journal;
mod resp;
mod store;
mod tasks;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use commands::{Action, Db, ExecFailed, Queued, Session, RESERVE};
use forkroot::config::Value;
use forkroot::sys::Epoll;
use forkroot::{Context, Kind, Setting};
use resp::{Args, Out, Parse, Resume};
use tasks::{Task, Tasks};

/// Largest request (one command and its arguments), in bytes: the size of
/// each connection's input buffer.
pub(crate) const MAX_REQUEST: usize = 64 * 1024;
/// Largest reply batch, in bytes: the size of each connection's output
/// buffer.
pub(crate) const MAX_REPLY: usize = 128 * 1024;
/// Most arguments of one command.
const MAX_ARGS: usize = 16 * 1024;
/// Active expiry: a step over `SWEEP_BUCKETS` buckets runs this often, and
/// again on the very next loop turn while steps keep finding expired keys
/// (as Redis' active expiry repeats while more than a few of its samples
/// expired).
const SWEEP_EVERY: Duration = Duration::from_millis(100);
const SWEEP_BUCKETS: usize = 4096;

/// The background check of the table ([`store::Store::scrub`]) covers
/// this many buckets with each expiry step: their entries (32 KiB) and
/// the heap block of each live one, a page fault each the first time, so
/// a step costs tens of microseconds and never holds up a request for
/// long; a table of a million buckets is checked about every 100 s.
const SCRUB_BUCKETS: usize = 1024;

/// Most events one epoll wait returns.
const EVENTS: usize = 64;

const LISTENER: u64 = 0;
const STOP: u64 = 1;
const TASKS: u64 = 2;
const CONN_BASE: u64 = 16;

/// What a connection is polled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interest {
    Read,
    Write,
    /// Waiting for a transaction: taken out of the epoll set until its
    /// reply is in (a hang-up meanwhile shows when the reply is sent).
    Nothing,
}

/// One client connection; its buffers are its slot's share of
/// [`Server::ins`] and [`Server::outs`].
#[derive(Debug, Clone, Copy)]
struct Conn {
    /// -1: a free slot.
    fd: RawFd,
    /// Bumped when the slot is reused, so a late transaction reply for a
    /// closed connection is dropped.
    gen: u32,
    in_pos: usize,
    in_len: usize,
    /// How far the parse of the incomplete command at `in_pos` got.
    resume: Resume,
    out_pos: usize,
    out_len: usize,
    waiting: bool,
    closing: bool,
    interest: Interest,
    /// Its protocol, authentication, id and name.
    sess: Session,
    /// After MULTI: where the queued commands start in the input buffer
    /// (they stay there until EXEC runs them); `None` if the block grew
    /// past the buffer (EXEC then discards it).
    queue_from: Option<usize>,
    /// Commands queued since MULTI.
    queued: usize,
}

impl Conn {
    const FREE: Conn = Conn {
        fd: -1,
        gen: 0,
        in_pos: 0,
        in_len: 0,
        resume: Resume::START,
        out_pos: 0,
        out_len: 0,
        waiting: false,
        closing: false,
        interest: Interest::Read,
        sess: Session::new(0, false),
        queue_from: None,
        queued: 0,
    };
}

/// Why command processing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// No whole command left: read more.
    NeedInput,
    /// The output buffer is too full for the next command.
    Blocked,
    /// Waiting for a transaction, or closing.
    Parked,
}

/// Everything the loop owns; every buffer is allocated before the steady
/// state.
struct Server<'a> {
    poll: Epoll,
    /// Tokens of the ready descriptors (capacity for one wait's worth).
    ready: Vec<u64>,
    listener: RawFd,
    conns: Vec<Conn>,
    free: Vec<usize>,
    ins: Vec<u8>,
    outs: Vec<u8>,
    args: Args,
    scratch: Vec<u8>,
    /// CALC's expression with its keys' values in (see `calc::resolve`).
    resolved: Vec<u8>,
    db: Db<'a>,
    tasks: Tasks<'a>,
}

/// The kind, with its settings.
pub(crate) const KIND: Kind = Kind::new(
    "kv",
    "key-value store speaking RESP2/RESP3 (redis-cli, redis-benchmark, redis-py); acknowledged writes survive crashes",
    main,
)
.settings(&[
    Setting::string("listen", "HOST:PORT, or a Unix socket path (any value with a /)")
        .default_str("127.0.0.1:6380")
        .check(check_listen),
    Setting::int("max_clients", "connections served at once")
        .default_int(1024)
        .range(1, 65536),
    Setting::bool("debug", "allow DEBUG (crashes on purpose)").default_bool(false),
    Setting::string(
        "password",
        "clients must AUTH with it before other commands (default: none)",
    ),
]);

/// `listen` is a socket path (it has a `/`) that fits a socket address,
/// or `HOST:PORT`.
fn check_listen(v: Value<'_>) -> Result<(), String> {
    /// `sun_path` less its NUL.
    const MAX_SOCKET_PATH: usize = 107;
    let Value::Str(s) = v else { return Ok(()) };
    if s.contains('/') && s.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "the socket path is {} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}",
            s.len()
        ));
    }
    let host_port = s
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if s.contains('/') || host_port {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is neither HOST:PORT (\"127.0.0.1:6380\") nor a socket path (with a /)"
        ))
    }
}

fn main(ctx: &mut Context<'_>) -> i32 {
    let listen: &str = ctx.arg("listen");
    let max_clients: usize = ctx.arg("max_clients");
    let debug: bool = ctx.arg("debug");
    let password: Option<&str> = ctx.arg("password");

    let name = ctx.name();
    let restarts = ctx.restarts();
    let Some(task_area) = ctx.split_state(Tasks::required_size()) else {
        tracing::error!("memory is too small for the transaction slots");
        return 3;
    };
    let tasks = match Tasks::new(task_area, name) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up transactions");
            return 3;
        }
    };
    let Some((mut journal, store)) = open_store(ctx) else {
        return 3;
    };
    // A socket the root holds (the daemon's `listen`) outlives this
    // process: clients that connect while kv restarts wait in its backlog.
    // Without one, kv binds `args.listen` itself.
    let held = ctx
        .listeners()
        .next()
        .map(|l| (l.fd.as_raw_fd(), l.address));
    let (listener, listen) = match held {
        Some((fd, address)) => match set_nonblocking(fd) {
            Ok(()) => (Listening::Held(fd), address),
            Err(e) => {
                tracing::error!(listen = address, error = %e, "cannot use the socket");
                return 4;
            }
        },
        None => match bind(listen) {
            Ok(fd) => (Listening::Own(fd), listen),
            Err(e) => {
                tracing::error!(listen, error = %e, "cannot listen");
                return 4;
            }
        },
    };
    let Some(poll) = event_poll(ctx, listener.as_raw_fd(), &tasks) else {
        return 3;
    };
    let mut server = Server {
        poll,
        ready: Vec::with_capacity(EVENTS),
        listener: listener.as_raw_fd(),
        conns: vec![Conn::FREE; max_clients],
        free: (0..max_clients).rev().collect(),
        ins: vec![0; max_clients * MAX_REQUEST],
        outs: vec![0; max_clients * MAX_REPLY],
        args: Args::with_capacity(MAX_ARGS, MAX_REQUEST),
        scratch: vec![0; MAX_REQUEST],
        resolved: vec![0; tasks::MAX_INPUT],
        db: Db {
            journal: &mut *journal,
            store,
            started_ns: forkroot::sys::monotonic_ns(),
            restarts,
            clients: 0,
            commands: 0,
            listen,
            debug,
            password,
            next_id: 1,
        },
        tasks,
    };
    tracing::info!(
        listen,
        keys = server.db.store.len(server.db.journal.data()),
        max_keys = server.db.store.max_keys(),
        heap = server.db.store.heap_size(),
        "serving"
    );
    ctx.steady();
    let code = server.run(ctx);
    if let Listening::Own(fd) = listener {
        drop(fd);
        if listen.contains('/') {
            let _ = forkroot::alloc::allow(|| std::fs::remove_file(listen));
        }
    }
    code
}

/// No whole command in the input of `c`: read more, unless the buffer is
/// full of one request, which is refused and the connection closed.
fn incomplete(c: &mut Conn, out: &mut Out<'_>) -> Stop {
    if c.in_pos > 0 && c.in_len == MAX_REQUEST && c.queue_from == Some(0) {
        // A MULTI block larger than the input buffer: it
        // is dropped, and EXEC will discard it.
        c.queue_from = None;
        c.sess.multi_error = true;
    }
    if c.in_pos == 0 && c.in_len == MAX_REQUEST {
        out.error(b"ERR Protocol error: request larger than 65536 bytes");
        c.out_len = out.len();
        c.closing = true;
        return Stop::Parked;
    }
    Stop::NeedInput
}

/// Executes the parsed command in `input` for `c` (its MULTI block from
/// `ins`, at `in_base`, on EXEC), writing its reply to `out`.
/// `Err(Stop::Blocked)`: the reply does not fit after the ones already
/// buffered; nothing is written, and it runs again once they are sent.
fn execute(
    db: &mut Db<'_>,
    c: &mut Conn,
    ins: &[u8],
    in_base: usize,
    input: &[u8],
    args: &mut Args,
    out: &mut Out<'_>,
) -> Result<Action, Stop> {
    let mark = c.out_len;
    let action = db.execute(input, args, out, &mut c.sess);
    if action == Action::Exec {
        let block = match c.queue_from {
            Some(from) => &ins[in_base + from..in_base + c.in_pos],
            None => {
                c.sess.multi_error = true;
                &[]
            }
        };
        if db.exec(block, c.queued, args, out, &mut c.sess) == Err(ExecFailed::Overflow) {
            if mark > 0 {
                return Err(Stop::Blocked);
            }
            c.sess.multi = false;
            out.error(
                b"ERR EXEC replies larger than the output buffer (131072 bytes), \
                  nothing was run",
            );
        }
    }
    if out.overflowed() {
        // Only read-only commands have replies that can
        // overflow (RESERVE covers the others): run it again
        // once the output drained, or refuse it if alone.
        out.truncate(mark);
        if mark > 0 {
            return Err(Stop::Blocked);
        }
        out.error(b"ERR reply larger than the output buffer (131072 bytes)");
    }
    Ok(action)
}

/// The input of a transaction: the arguments of `input` from `first` on
/// (CALC's expression, TXSLEEP's ms), joined by spaces into `scratch`.
/// Returns its length.
fn join_args(args: &Args, input: &[u8], first: usize, scratch: &mut [u8]) -> usize {
    let mut len = 0;
    for i in first..args.len() {
        let a = args.get(input, i);
        if i > first {
            scratch[len] = b' ';
            len += 1;
        }
        scratch[len..len + a.len()].copy_from_slice(a);
        len += a.len();
    }
    len
}

/// The epoll set kv waits on: its listening socket, its stop descriptor and
/// its transactions' descriptor. `None` (logged) when one cannot be added.
fn event_poll(ctx: &mut Context<'_>, listener: RawFd, tasks: &Tasks) -> Option<Epoll> {
    let stop = match ctx.stop_fd() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "no stop descriptor");
            return None;
        }
    };
    let poll = match Epoll::new() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "epoll");
            return None;
        }
    };
    let armed = poll
        .add(borrowed(&listener), LISTENER)
        .and_then(|()| poll.add(borrowed(&stop), STOP))
        .and_then(|()| match tasks.fd() {
            Some(fd) => poll.add(borrowed(&fd), TASKS),
            None => Ok(()),
        });
    if let Err(e) = armed {
        tracing::error!(error = %e, "epoll_ctl");
        return None;
    }
    Some(poll)
}

/// Where kv accepts: a socket the root holds, or one of its own (removed
/// at exit if it is a Unix socket).
enum Listening {
    Held(RawFd),
    Own(std::os::fd::OwnedFd),
}

impl Listening {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listening::Held(fd) => *fd,
            Listening::Own(fd) => fd.as_raw_fd(),
        }
    }
}

/// Attaches the journaled table in the state (see [`open_table`]).
fn open_store<'a>(ctx: &mut Context<'a>) -> Option<(Box<dyn journal::Journal + 'a>, store::Store)> {
    let area: &'a mut [u8] = ctx.split_state(ctx.state().len() & !63)?;
    open_table(area)
}

/// Attaches the journaled table in `area`, creating it in a zeroed area;
/// an area of another layout or a damaged table is zeroed first, with an
/// error in the log: kv starts empty rather than crash on it again and
/// again.
fn open_table<'a>(area: &'a mut [u8]) -> Option<(Box<dyn journal::Journal + 'a>, store::Store)> {
    if let Some(problem) = stray_data(area) {
        tracing::error!(
            problem,
            "the state's earlier keys are discarded, starting with an empty store"
        );
    }
    let len = area.len();
    let ptr = area.as_mut_ptr();
    let cap = journal::capacity_for(len);
    let mut attempt = 0;
    let mut area = Some(area);
    loop {
        attempt += 1;
        let a = area.take()?;
        let problem = match journal::attach(a, cap) {
            Ok(None) => {
                tracing::error!(len, "memory is too small for the kv table");
                return None;
            }
            Ok(Some(mut j)) => {
                if j.rolled_back() > 0 {
                    tracing::warn!("rolled back a write cut short by the last crash");
                }
                let mut opened = None;
                let r = j.transact(&mut |w| {
                    opened = Some(store::Store::open(w)?);
                    Ok(0)
                });
                match (r, opened) {
                    (Ok(_), Some(Ok(s))) => return Some((j, s)),
                    (_, Some(Err(why))) => why.to_string(),
                    _ => "the journal is too small to create the table".to_string(),
                }
            }
            Err(e) => attach_problem(&e),
        };
        if attempt > 1 {
            tracing::error!(problem, "cannot use the state");
            return None;
        }
        tracing::error!(
            problem,
            "the state is unusable: its keys are discarded, starting with an empty store"
        );
        // SAFETY: the attempt above is gone (its borrow of the area ended
        // with `journal::attach`'s result), so this is again the only
        // reference to the `len` bytes at `ptr`, which live for 'a.
        let again = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        if let Err(e) = forkroot::state::zero(again) {
            tracing::error!(problem = %e, "cannot use the state");
            return None;
        }
        area = Some(again);
    }
}

/// Bytes of the area [`stray_data`] looks at.
const STRAY_SCAN: usize = 4 << 20;

/// Why attaching `area` would discard data although its header says it
/// is empty, which the attach would otherwise do without a word (it
/// zeroes an empty area): the area now starts where an earlier layout put
/// something else, because what is split off the state before it (the
/// transaction slots) changed size. Only the first [`STRAY_SCAN`] bytes
/// are looked at: reading all of a large untouched state would make the
/// kernel back every page of it, and a moved header lands near the start.
fn stray_data(area: &[u8]) -> Option<&'static str> {
    let head = &area[..area.len().min(STRAY_SCAN)];
    match forkroot::state::read_layout(area) {
        Ok(None) if head.iter().any(|&b| b != 0) => Some(
            "the state holds data but no header where the kv table starts: \
             the layout before it changed (the transaction slots' size)",
        ),
        _ => None,
    }
}

/// What an attach error means for the keys, in words for the log.
fn attach_problem(e: &forkroot::checkpoint::CheckpointError) -> String {
    use forkroot::checkpoint::CheckpointError;
    use forkroot::state::StateError;
    match e {
        CheckpointError::State(StateError::LayoutChanged { .. }) => format!(
            "{e}: the table was written with another `memory` setting (its size follows \
             `memory`) or by another version of kv"
        ),
        CheckpointError::State(StateError::BadMagic { .. }) => format!(
            "{e}: the state holds something else where the kv table starts (another kind of \
             daemon, or the transaction slots before the table changed size)"
        ),
        _ => e.to_string(),
    }
}

/// A non-blocking listening socket on `listen` (TCP with SO_REUSEADDR, so
/// a replacement binds at once, or a Unix socket, replacing a stale one).
fn bind(listen: &str) -> io::Result<std::os::fd::OwnedFd> {
    let fd: std::os::fd::OwnedFd = if listen.contains('/') {
        let _ = std::fs::remove_file(listen);
        std::os::unix::net::UnixListener::bind(listen)?.into()
    } else {
        // std sets SO_REUSEADDR on Unix.
        std::net::TcpListener::bind(listen)?.into()
    };
    set_nonblocking(fd.as_raw_fd())?;
    Ok(fd)
}

/// A descriptor this daemon holds by number (its listener, a connection
/// in its table, its stop signalfd, its transactions' signalfd), borrowed
/// for one call.
fn borrowed(fd: &RawFd) -> BorrowedFd<'_> {
    debug_assert!(*fd >= 0, "a free connection slot");
    // SAFETY: each of these stays open until this daemon closes it itself
    // (`Server::close` for a connection, never for the others), which
    // cannot happen while `fd` is borrowed.
    unsafe { BorrowedFd::borrow_raw(*fd) }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no memory involved.
    let flags = forkroot::sys::cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    forkroot::sys::cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Server<'_> {
    fn run(&mut self, ctx: &mut Context<'_>) -> i32 {
        // The first step waits a period: a replacement answers the
        // clients that queued while it was down before it reads anything
        // it does not need.
        let start = forkroot::sys::monotonic_ns();
        let mut next_sweep = start + SWEEP_EVERY.as_nanos() as u64;
        let mut cursor = 0;
        // Each incarnation starts the check somewhere else, so one killed
        // again and again still checks the whole table over its lives.
        let mut scrubbed = (start / 1000) as usize & (self.db.store.buckets() - 1);
        loop {
            let now = forkroot::sys::monotonic_ns();
            if now >= next_sweep {
                let (next, removed) = self.db.sweep(cursor, SWEEP_BUCKETS);
                cursor = next;
                scrubbed = self.db.scrub(scrubbed, SCRUB_BUCKETS);
                ctx.heartbeat();
                next_sweep = if removed > 0 {
                    now
                } else {
                    now + SWEEP_EVERY.as_nanos() as u64
                };
            }
            let mut timeout = Duration::from_nanos(next_sweep.saturating_sub(now));
            if let Some(t) = self.tasks.next_timer() {
                timeout = timeout.min(t);
            }
            let mut ready = std::mem::take(&mut self.ready);
            // EINTR gives no events; no other error can come from a valid
            // epoll descriptor and buffer.
            let _ = self.poll.wait(&mut ready, Some(timeout));
            for &token in &ready {
                match token {
                    LISTENER => self.accept(),
                    STOP => {
                        if ctx.stopping() {
                            return 0;
                        }
                    }
                    TASKS => self.finish_tasks(),
                    t => self.on_ready((t - CONN_BASE) as usize),
                }
            }
            self.ready = ready;
            // Deadlines of transactions pass without an event.
            if self.tasks.next_timer() == Some(Duration::ZERO) {
                self.finish_tasks();
            }
        }
    }

    fn accept(&mut self) {
        loop {
            // SAFETY: null address arguments are allowed.
            let fd = unsafe {
                libc::accept4(
                    self.listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                match errno() {
                    libc::EINTR | libc::ECONNABORTED => continue,
                    // EAGAIN, or out of descriptors (EMFILE): try again on the
                    // next event.
                    _ => return,
                }
            }
            let one: libc::c_int = 1;
            // SAFETY: `one` outlives the call; a Unix socket refuses
            // TCP_NODELAY harmlessly.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            let Some(slot) = self.free.pop() else {
                let msg = b"-ERR max number of clients reached\r\n";
                // SAFETY: writing a static buffer to a descriptor we own.
                let _ = unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
                forkroot::sys::close(fd);
                continue;
            };
            if self
                .poll
                .add(borrowed(&fd), CONN_BASE + slot as u64)
                .is_err()
            {
                forkroot::sys::close(fd);
                self.free.push(slot);
                continue;
            }
            let gen = self.conns[slot].gen;
            let id = self.db.next_id;
            self.db.next_id += 1;
            self.conns[slot] = Conn {
                fd,
                gen,
                sess: Session::new(id, self.db.password.is_none()),
                ..Conn::FREE
            };
            self.db.clients += 1;
        }
    }

    fn close(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if c.fd < 0 {
            return;
        }
        forkroot::sys::close(c.fd);
        *c = Conn {
            gen: c.gen.wrapping_add(1),
            ..Conn::FREE
        };
        self.free.push(slot);
        self.db.clients -= 1;
    }

    fn on_ready(&mut self, slot: usize) {
        let Some(c) = self.conns.get(slot) else {
            return;
        };
        if c.fd < 0 || c.interest == Interest::Nothing {
            return;
        }
        if c.interest == Interest::Read && !self.read(slot) {
            self.close(slot);
            return;
        }
        self.serve(slot);
    }

    /// Reads what the socket has into the input buffer. `false`: the peer
    /// closed or the connection failed.
    fn read(&mut self, slot: usize) -> bool {
        let c = &mut self.conns[slot];
        let base = slot * MAX_REQUEST;
        // What must stay: the unparsed input, and a MULTI block's queue.
        let keep = c.queue_from.map_or(c.in_pos, |q| q.min(c.in_pos));
        if keep == c.in_len {
            c.in_pos = 0;
            c.in_len = 0;
            c.queue_from = c.queue_from.map(|_| 0);
        } else if c.in_len == MAX_REQUEST && keep > 0 {
            self.ins.copy_within(base + keep..base + c.in_len, base);
            c.in_len -= keep;
            c.in_pos -= keep;
            c.queue_from = c.queue_from.map(|q| q - keep);
        }
        if c.in_len == MAX_REQUEST {
            return true;
        }
        let buf = &mut self.ins[base + c.in_len..base + MAX_REQUEST];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(c.fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            c.in_len += n as usize;
            return true;
        }
        n < 0 && matches!(errno(), libc::EAGAIN | libc::EINTR)
    }

    /// Runs the connection's buffered commands and sends the replies, until
    /// it needs input, waits, or its output does not drain.
    fn serve(&mut self, slot: usize) {
        loop {
            let stop = self.process(slot);
            if !self.flush(slot) {
                self.close(slot);
                return;
            }
            let c = &self.conns[slot];
            if c.fd < 0 {
                return;
            }
            // Blocked on a full output that has now drained: go on.
            if stop != Stop::Blocked || c.out_len != 0 {
                break;
            }
        }
        self.update_interest(slot);
    }

    fn update_interest(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if c.fd < 0 {
            return;
        }
        let want = if c.out_pos < c.out_len {
            Interest::Write
        } else if c.waiting {
            Interest::Nothing
        } else {
            Interest::Read
        };
        if want != c.interest {
            let token = CONN_BASE + slot as u64;
            let ok = match (c.interest, want) {
                (_, Interest::Nothing) => self.poll.delete(borrowed(&c.fd)),
                (Interest::Nothing, w) => self.poll.add(borrowed(&c.fd), token).and_then(|()| {
                    self.poll
                        .modify(borrowed(&c.fd), token, w == Interest::Write)
                }),
                (_, w) => self
                    .poll
                    .modify(borrowed(&c.fd), token, w == Interest::Write),
            }
            .is_ok();
            c.interest = want;
            if !ok {
                self.close(slot);
            }
        }
    }

    /// Parses and executes the buffered commands of `slot`.
    fn process(&mut self, slot: usize) -> Stop {
        let Server {
            conns,
            ins,
            outs,
            args,
            db,
            tasks,
            scratch,
            resolved,
            ..
        } = self;
        let c = &mut conns[slot];
        let in_base = slot * MAX_REQUEST;
        let out_buf = &mut outs[slot * MAX_REPLY..(slot + 1) * MAX_REPLY];
        loop {
            if c.waiting || c.closing {
                return Stop::Parked;
            }
            if MAX_REPLY - c.out_len < RESERVE {
                return Stop::Blocked;
            }
            let input = &ins[in_base + c.in_pos..in_base + c.in_len];
            let mut out = Out::new(out_buf, c.out_len).resp3(c.sess.resp3);
            match resp::parse(input, args, MAX_REQUEST, &mut c.resume) {
                Parse::Incomplete => return incomplete(c, &mut out),
                Parse::Error(e) => {
                    e.write(&mut out);
                    c.out_len = out.len();
                    c.closing = true;
                    return Stop::Parked;
                }
                Parse::Command(used) if args.len() == 0 => {
                    c.in_pos += used;
                    c.resume = Resume::START;
                }
                Parse::Command(used) => {
                    if c.sess.multi
                        && db.queue(input, args, &mut out, &mut c.sess) == Queued::Answered
                    {
                        c.queued += 1;
                        c.out_len = out.len();
                        c.in_pos += used;
                        c.resume = Resume::START;
                        continue;
                    }
                    let action = match execute(db, c, ins, in_base, input, args, &mut out) {
                        Ok(action) => action,
                        Err(stop) => return stop,
                    };
                    c.out_len = out.len();
                    c.in_pos += used;
                    c.resume = Resume::START;
                    match action {
                        Action::Done => {}
                        Action::Multi => {
                            c.queue_from = Some(c.in_pos);
                            c.queued = 0;
                        }
                        Action::Exec | Action::Discard => {
                            c.queue_from = None;
                            c.queued = 0;
                        }
                        Action::Close => c.closing = true,
                        Action::Crash => forkroot::sys::die_by(forkroot::Signal::SEGV),
                        Action::Calc | Action::TxCrash | Action::TxSleep => {
                            let (task, first) = match action {
                                Action::Calc => (Task::Calc, 1),
                                Action::TxCrash => (Task::Crash, 2),
                                _ => (Task::Sleep, 2),
                            };
                            let len = join_args(args, input, first, scratch);
                            let tag = (slot as u64) << 32 | u64::from(c.gen);
                            let mut out = Out::new(out_buf, c.out_len);
                            let mut input = &scratch[..len];
                            if task == Task::Calc {
                                match db.resolve_keys(input, resolved) {
                                    Ok(n) => input = &resolved[..n],
                                    Err(e) => {
                                        let mut m = [0u8; 64];
                                        out.error(e.message(&mut m));
                                        c.out_len = out.len();
                                        continue;
                                    }
                                }
                            }
                            c.waiting = tasks.start(task, input, tag, &mut out);
                            c.out_len = out.len();
                        }
                    }
                }
            }
        }
    }

    /// Sends buffered replies. `false`: the connection failed.
    fn flush(&mut self, slot: usize) -> bool {
        let c = &mut self.conns[slot];
        let base = slot * MAX_REPLY;
        while c.out_pos < c.out_len {
            let buf = &self.outs[base + c.out_pos..base + c.out_len];
            // SAFETY: `buf` is readable for its length. MSG_NOSIGNAL: a
            // closed peer is an error here, not a SIGPIPE.
            let n = unsafe { libc::send(c.fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
            if n < 0 {
                match errno() {
                    libc::EINTR => continue,
                    // ENOTSOCK: cannot happen (accept gives sockets).
                    libc::EAGAIN => return true,
                    _ => return false,
                }
            }
            c.out_pos += n as usize;
        }
        c.out_pos = 0;
        c.out_len = 0;
        !c.closing
    }

    /// Appends the replies of ended transactions to their connections and
    /// resumes them.
    fn finish_tasks(&mut self) {
        let Server {
            conns, outs, tasks, ..
        } = self;
        let mut resumed = [0usize; 64];
        let mut n = 0;
        let mut overflow = false;
        tasks.poll(|tag, reply| {
            let slot = (tag >> 32) as usize;
            let Some(c) = conns.get_mut(slot) else {
                return;
            };
            if c.fd < 0 || c.gen != tag as u32 || !c.waiting {
                return; // the client left meanwhile
            }
            let mut out = Out::new(
                &mut outs[slot * MAX_REPLY..(slot + 1) * MAX_REPLY],
                c.out_len,
            );
            out.raw(reply);
            c.out_len = out.len();
            c.waiting = false;
            if n < resumed.len() {
                resumed[n] = slot;
                n += 1;
            } else {
                overflow = true;
            }
        });
        for &slot in &resumed[..n] {
            self.serve(slot);
        }
        if overflow {
            // More than 64 ended at once: serve every resumed connection.
            for slot in 0..self.conns.len() {
                let c = self.conns[slot];
                if c.fd >= 0 && !c.waiting && c.interest == Interest::Nothing {
                    self.serve(slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::journal::tests::area;
    use super::store::{tests::damage_entry, Cond, StoreError, Ttl};
    use super::*;

    #[test]
    fn discarded_data_is_named_in_the_log() {
        // A fresh state: nothing is discarded, nothing to say.
        let a = area(2 << 20);
        assert_eq!(stray_data(a), None);
        let (ptr, len) = (a.as_mut_ptr(), a.len());
        // The table as an earlier layout placed it, 4 KiB further on.
        let (mut j, s) = open_table(&mut a[4096..]).unwrap();
        j.transact(&mut |w| {
            s.set(w, b"k", b"v", Ttl::Clear, Cond::Always, 0)
                .map(i64::from)
        })
        .unwrap();
        drop(j);
        // SAFETY: the journal above is gone; the area is leaked memory.
        let again = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        // Now the area starts 4 KiB earlier: its header reads as empty.
        assert_eq!(forkroot::state::read_layout(again).unwrap(), None);
        assert!(stray_data(again).unwrap().contains("layout"));
        let (j, s) = open_table(again).unwrap();
        assert_eq!(s.len(j.data()), 0);
        drop(j);
        // SAFETY: as above.
        let again = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        // A smaller `memory`: another blob size, another layout.
        let e = journal::attach(&mut again[..1 << 20], journal::capacity_for(1 << 20))
            .err()
            .unwrap();
        assert!(
            attach_problem(&e).contains("`memory`"),
            "{}",
            attach_problem(&e)
        );
    }

    #[test]
    fn a_damaged_entry_is_found_when_touched_and_by_the_scrub_not_at_attach() {
        let a = area(1 << 20);
        let (ptr, len) = (a.as_mut_ptr(), a.len());
        let (j, s) = open_table(a).unwrap();
        let mut j = j;
        for k in [&b"k"[..], b"other"] {
            j.transact(&mut |w| {
                s.set(w, k, b"v", Ttl::Clear, Cond::Always, 0)
                    .map(i64::from)
            })
            .unwrap();
        }
        let at = j.data().as_ptr() as usize - ptr as usize;
        let blob = j.data().len();
        drop(j);
        // SAFETY: the journal above is gone; the area is leaked memory.
        let again = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        damage_entry(&mut again[at..at + blob], b"k", u64::MAX);
        // Attaching reads the head only: the keys are kept.
        let (j, s) = open_table(again).unwrap();
        assert_eq!(s.len(j.data()), 2);
        assert_eq!(s.get(j.data(), b"other", 0), Ok(Some(&b"v"[..])));
        assert_eq!(s.get(j.data(), b"k", 0), Err(StoreError::Corrupt));
        let mut cursor = 0;
        let damaged = loop {
            match s.scrub(j.data(), cursor, 64) {
                Ok(0) => break None,
                Ok(next) => cursor = next,
                Err((bucket, _)) => break Some(bucket),
            }
        };
        assert!(damaged.is_some());
    }
}
