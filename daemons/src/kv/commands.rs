//! The commands: argument checking, the store call, the reply, each in
//! Redis' words. Writes run in one journal transaction per command and are
//! answered only after it committed.

use std::time::Duration;

use super::glob;
use super::journal::Journal;
use super::resp::{self, Args, Out, Parse, Resume};
use super::store::{self, Cond, Store, StoreError, Ttl};

/// Most keys one step of active expiry removes (one transaction: its
/// journal stays well under the smallest capacity).
const SWEEP_MAX: u64 = 64;

/// Room a command may assume in the output buffer: every reply of a write
/// command (and every error) fits in it, so a write is never executed and
/// then found to have no room for its answer.
pub(crate) const RESERVE: usize = 1024;

/// The data and what INFO reports.
pub(crate) struct Db<'a> {
    /// The table's bytes (within EXEC: the block's one transaction).
    pub(crate) journal: &'a mut (dyn Journal + 'a),
    /// The table's geometry.
    pub(crate) store: Store,
    /// When this process started serving (monotonic ns).
    pub(crate) started_ns: u64,
    /// Restarts of this daemon.
    pub(crate) restarts: u32,
    /// Open connections.
    pub(crate) clients: usize,
    /// Commands executed.
    pub(crate) commands: u64,
    /// Where it listens (for INFO).
    pub(crate) listen: &'a str,
    /// `[daemon.args] debug = true`: the DEBUG command (which crashes the
    /// daemon or its transactions on purpose) is allowed. Off by default,
    /// as Redis ships `enable-debug-command no`: any client could otherwise
    /// crash the daemon past its supervisor's restart intensity.
    pub(crate) debug: bool,
    /// `[daemon.args] password`: clients must AUTH (or HELLO ... AUTH) with
    /// it before any other command, as with Redis' `requirepass`.
    pub(crate) password: Option<&'a str>,
    /// The id of the next connection (CLIENT ID), from 1.
    pub(crate) next_id: u64,
}

impl std::fmt::Debug for Db<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("store", &self.store)
            .field("clients", &self.clients)
            .finish()
    }
}

/// The version INFO and HELLO report: the Redis version whose commands
/// and replies kv follows.
const VERSION: &str = "7.0.0";

/// Longest client name (CLIENT SETNAME), in bytes.
pub(crate) const NAME_MAX: usize = 128;

/// A connection's own state: its protocol, whether it authenticated, its
/// id and name. Fixed size, kept in the connection's slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Session {
    /// CLIENT ID.
    pub(crate) id: u64,
    /// Replies in RESP3 (after `HELLO 3`).
    pub(crate) resp3: bool,
    /// May run commands: authenticated, or no password is configured.
    pub(crate) authed: bool,
    /// Between MULTI and EXEC: commands are queued, not run.
    pub(crate) multi: bool,
    /// A command queued since MULTI was refused: EXEC discards the block.
    pub(crate) multi_error: bool,
    name_len: u8,
    name: [u8; NAME_MAX],
}

impl Session {
    /// A new connection's state: RESP2, no name, authenticated iff no
    /// password is required.
    pub(crate) const fn new(id: u64, authed: bool) -> Session {
        Session {
            id,
            resp3: false,
            authed,
            multi: false,
            multi_error: false,
            name_len: 0,
            name: [0; NAME_MAX],
        }
    }

    /// RESET: back to a new connection's state, keeping the id.
    fn reset(&mut self, authed: bool) {
        *self = Session::new(self.id, authed);
    }

    /// CLIENT GETNAME (empty: none).
    pub(crate) fn name(&self) -> &[u8] {
        &self.name[..usize::from(self.name_len)]
    }

    /// Whether `name` may be a client name, as Redis checks it.
    fn check_name(&self, name: &[u8]) -> Result<(), &'static [u8]> {
        if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
            Err(b"ERR Client names cannot contain spaces, newlines or special characters.")
        } else if name.len() > NAME_MAX {
            Err(b"ERR Client name is longer than 128 bytes")
        } else {
            Ok(())
        }
    }

    /// Sets a name [`Session::check_name`] accepted.
    fn set_name(&mut self, name: &[u8]) {
        let n = name.len().min(NAME_MAX);
        self.name[..n].copy_from_slice(&name[..n]);
        self.name_len = n as u8;
    }
}

/// The arguments of the command being executed.
#[derive(Clone, Copy)]
struct Cmd<'c> {
    buf: &'c [u8],
    args: &'c Args,
}

impl<'c> Cmd<'c> {
    fn arg(&self, i: usize) -> &'c [u8] {
        self.args.get(self.buf, i)
    }

    fn len(&self) -> usize {
        self.args.len()
    }
}

/// The commands kv implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Get,
    Set,
    Incr,
    Decr,
    IncrBy,
    DecrBy,
    Del,
    Unlink,
    Exists,
    Mget,
    Mset,
    Ttl,
    Pttl,
    Ping,
    Echo,
    Dbsize,
    Flushall,
    Flushdb,
    Info,
    Command,
    Config,
    Select,
    Quit,
    Calc,
    Debug,
    Hello,
    Auth,
    Client,
    Reset,
    Expire,
    Pexpire,
    ExpireAt,
    PexpireAt,
    Persist,
    ExpireTime,
    PexpireTime,
    Keys,
    Scan,
    Type,
    Rename,
    RenameNx,
    RandomKey,
    Append,
    Strlen,
    GetRange,
    SetRange,
    GetDel,
    GetEx,
    GetSet,
    SetNx,
    SetEx,
    PsetEx,
    IncrByFloat,
    MsetNx,
    Touch,
    Multi,
    Exec,
    Discard,
}

/// One row of the command table.
#[derive(Debug)]
struct Spec {
    /// Lower case, as Redis names it in errors.
    name: &'static str,
    cmd: Name,
    /// Redis' arity: `n` arguments exactly (the name included), or at
    /// least `-n`.
    arity: i8,
    /// Allowed before AUTH.
    no_auth: bool,
}

const fn spec(name: &'static str, cmd: Name, arity: i8) -> Spec {
    Spec {
        name,
        cmd,
        arity,
        no_auth: false,
    }
}

const fn no_auth(name: &'static str, cmd: Name, arity: i8) -> Spec {
    Spec {
        no_auth: true,
        ..spec(name, cmd, arity)
    }
}

/// Every command with its arity, the most used first (the lookup is a
/// scan). The arity is checked before a command runs, so each one's code
/// may take its fixed arguments for granted.
const TABLE: &[Spec] = &[
    spec("get", Name::Get, 2),
    spec("set", Name::Set, -3),
    spec("incr", Name::Incr, 2),
    spec("mget", Name::Mget, -2),
    spec("mset", Name::Mset, -3),
    spec("del", Name::Del, -2),
    spec("ping", Name::Ping, -1),
    spec("exists", Name::Exists, -2),
    spec("decr", Name::Decr, 2),
    spec("incrby", Name::IncrBy, 3),
    spec("decrby", Name::DecrBy, 3),
    spec("unlink", Name::Unlink, -2),
    spec("ttl", Name::Ttl, 2),
    spec("pttl", Name::Pttl, 2),
    spec("echo", Name::Echo, 2),
    spec("dbsize", Name::Dbsize, 1),
    spec("flushall", Name::Flushall, -1),
    spec("flushdb", Name::Flushdb, -1),
    spec("info", Name::Info, -1),
    spec("command", Name::Command, -1),
    spec("config", Name::Config, -2),
    spec("select", Name::Select, 2),
    spec("client", Name::Client, -2),
    spec("calc", Name::Calc, -2),
    spec("debug", Name::Debug, -2),
    no_auth("hello", Name::Hello, -1),
    no_auth("auth", Name::Auth, -2),
    no_auth("quit", Name::Quit, -1),
    no_auth("reset", Name::Reset, 1),
    spec("expire", Name::Expire, -3),
    spec("pexpire", Name::Pexpire, -3),
    spec("expireat", Name::ExpireAt, -3),
    spec("pexpireat", Name::PexpireAt, -3),
    spec("persist", Name::Persist, 2),
    spec("expiretime", Name::ExpireTime, 2),
    spec("pexpiretime", Name::PexpireTime, 2),
    spec("keys", Name::Keys, 2),
    spec("scan", Name::Scan, -2),
    spec("type", Name::Type, 2),
    spec("rename", Name::Rename, 3),
    spec("renamenx", Name::RenameNx, 3),
    spec("randomkey", Name::RandomKey, 1),
    spec("append", Name::Append, 3),
    spec("strlen", Name::Strlen, 2),
    spec("getrange", Name::GetRange, 4),
    spec("setrange", Name::SetRange, 4),
    spec("getdel", Name::GetDel, 2),
    spec("getex", Name::GetEx, -2),
    spec("getset", Name::GetSet, 3),
    spec("setnx", Name::SetNx, 3),
    spec("setex", Name::SetEx, 4),
    spec("psetex", Name::PsetEx, 4),
    spec("incrbyfloat", Name::IncrByFloat, 3),
    spec("msetnx", Name::MsetNx, -3),
    spec("touch", Name::Touch, -2),
    spec("multi", Name::Multi, 1),
    spec("exec", Name::Exec, 1),
    spec("discard", Name::Discard, 1),
];

impl Spec {
    fn find(name: &[u8]) -> Option<&'static Spec> {
        TABLE
            .iter()
            .find(|s| s.name.len() == name.len() && is(name, s.name))
    }

    /// Whether the command may run with `n` arguments (its name
    /// included) for `sess`; if not, the error is written.
    fn admits(&self, n: usize, sess: &Session, out: &mut Out<'_>) -> bool {
        let arity = usize::from(self.arity.unsigned_abs());
        if (self.arity > 0 && n != arity) || n < arity {
            wrong_args(out, self.name);
            false
        } else if !sess.authed && !self.no_auth {
            out.error(b"NOAUTH Authentication required.");
            false
        } else {
            true
        }
    }
}

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Answered: go on with the next command.
    Done,
    /// Answered; close once the answer is sent (QUIT).
    Close,
    /// Run `CALC` over the arguments after the name in a transaction; the
    /// connection waits for its result.
    Calc,
    /// Run a transaction that crashes (DEBUG TXCRASH).
    TxCrash,
    /// Run a transaction that sleeps argument 2 ms (DEBUG TXSLEEP ms).
    TxSleep,
    /// Crash the daemon (DEBUG SEGFAULT).
    Crash,
    /// MULTI: queue the commands that follow.
    Multi,
    /// EXEC: run the queued block ([`Db::exec`]).
    Exec,
    /// DISCARD or RESET: forget the queued block.
    Discard,
}

/// What [`Db::queue`] did with a command sent after MULTI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued (`+QUEUED`), or refused with an error (the block is then
    /// discarded at EXEC).
    Answered,
    /// MULTI, EXEC, DISCARD, QUIT, RESET: run it now ([`Db::execute`]).
    Run,
}

/// Why EXEC ran nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExecFailed {
    /// The replies do not fit the output buffer: nothing was changed;
    /// run it again once the buffer drained.
    Overflow,
}

/// The journal of an EXEC block: every command of the block writes into
/// the block's one transaction. A command that fails after it may have
/// changed something (out of memory, journal full, a damaged table)
/// fails the whole block, which is then rolled back.
struct Batch<'w> {
    w: &'w mut dyn store::Bytes,
    fatal: Option<StoreError>,
}

impl Journal for Batch<'_> {
    fn data(&self) -> &[u8] {
        self.w.data()
    }

    fn transact(
        &mut self,
        f: &mut dyn FnMut(&mut dyn store::Bytes) -> Result<i64, StoreError>,
    ) -> Result<i64, StoreError> {
        if let Some(e) = self.fatal {
            return Err(e);
        }
        let r = f(self.w);
        match r {
            // Found before anything was written: that command's error only.
            Err(StoreError::NotInteger | StoreError::Overflow) => {}
            Err(e) => self.fatal = Some(e),
            Ok(_) => {}
        }
        r
    }

    fn rolled_back(&self) -> usize {
        0
    }
}

fn is(name: &[u8], cmd: &str) -> bool {
    name.eq_ignore_ascii_case(cmd.as_bytes())
}

fn wrong_args(out: &mut Out<'_>, cmd: &str) {
    out.raw(b"-ERR wrong number of arguments for '");
    out.raw(cmd.as_bytes());
    out.raw(b"' command\r\n");
}

fn not_integer(out: &mut Out<'_>) {
    out.error(b"ERR value is not an integer or out of range");
}

fn syntax(out: &mut Out<'_>) {
    out.error(b"ERR syntax error");
}

/// `-ERR unknown subcommand 'x'. Try CLIENT HELP.`
fn unknown_subcommand(out: &mut Out<'_>, sub: &[u8], cmd: &str) {
    out.raw(b"-ERR unknown subcommand '");
    for &c in &sub[..sub.len().min(128)] {
        out.raw(&[if c == b'\r' || c == b'\n' { b' ' } else { c }]);
    }
    out.raw(b"'. Try ");
    out.raw(cmd.as_bytes());
    out.raw(b" HELP.\r\n");
}

/// Replies the error for a failed write.
pub(crate) fn store_error(out: &mut Out<'_>, e: StoreError) {
    match e {
        StoreError::Oom => out.error(b"OOM command not allowed when used memory > 'maxmemory'."),
        StoreError::JournalFull => {
            out.error(b"ERR command changes more than the undo journal holds (split it)")
        }
        StoreError::NotInteger => not_integer(out),
        StoreError::Overflow => out.error(b"ERR increment or decrement would overflow"),
        StoreError::Corrupt => {
            corrupt_logged();
            out.error(b"ERR the kv table is damaged (see the daemon's log)")
        }
    }
}

/// Says that a command found the table damaged.
fn corrupt_logged() {
    forkroot::alloc::allow(|| {
        tracing::error!("the kv table is damaged: an offset or a length in it points outside it")
    });
}

/// `-ERR unknown command 'x', with args beginning with: 'a' 'b' ` as Redis
/// 7 words it (the arguments shown up to 128 bytes in all).
/// COMMAND, COMMAND COUNT and COMMAND DOCS (no docs: an empty map).
fn command(out: &mut Out<'_>, a: Cmd<'_>, n: usize) {
    if n >= 2 && is(a.arg(1), "count") {
        out.int(TABLE.len() as i64);
    } else if n >= 2 && is(a.arg(1), "docs") {
        out.map(0);
    } else {
        out.array(0);
    }
}

/// PING, or PING message.
fn ping(out: &mut Out<'_>, a: Cmd<'_>, n: usize, name: &str) {
    match n {
        1 => out.simple(b"PONG"),
        2 => out.bulk(a.arg(1)),
        _ => wrong_args(out, name),
    }
}

/// SELECT: only database 0 exists.
fn select(out: &mut Out<'_>, a: Cmd<'_>) {
    match store::parse_int(a.arg(1)) {
        Some(0) => out.ok(),
        Some(_) => out.error(b"ERR DB index is out of range"),
        None => not_integer(out),
    }
}

/// MULTI outside a block: the commands after it are queued.
fn multi(out: &mut Out<'_>, sess: &mut Session) -> Action {
    sess.multi = true;
    sess.multi_error = false;
    out.ok();
    Action::Multi
}

/// DISCARD inside a block: its queued commands are dropped.
fn discard(out: &mut Out<'_>, sess: &mut Session) -> Action {
    sess.multi = false;
    out.ok();
    Action::Discard
}

fn unknown(out: &mut Out<'_>, buf: &[u8], args: &Args) {
    let clean = |out: &mut Out<'_>, s: &[u8]| {
        for &c in s {
            out.raw(&[if c == b'\r' || c == b'\n' { b' ' } else { c }]);
        }
    };
    let name = args.get(buf, 0);
    out.raw(b"-ERR unknown command '");
    clean(out, &name[..name.len().min(128)]);
    out.raw(b"', with args beginning with: ");
    let mut left = 128usize;
    for i in 1..args.len() {
        if left == 0 {
            break;
        }
        let a = args.get(buf, i);
        let a = &a[..a.len().min(left)];
        left -= a.len();
        out.raw(b"'");
        clean(out, a);
        out.raw(b"' ");
    }
    out.raw(b"\r\n");
}

/// Realtime now, in ms (expiry is wall-clock time, as in Redis).
impl Db<'_> {
    /// CALC's `$key`s replaced by their values now, into `out` (see
    /// `calc::resolve`): the daemon reads the table, the transaction never.
    pub(crate) fn resolve_keys(
        &self,
        expr: &[u8],
        out: &mut [u8],
    ) -> Result<usize, super::calc::CalcError> {
        let data = self.journal.data();
        let now = now_ms();
        let lookup = |key: &[u8]| match self.store.get(data, key, now) {
            Ok(None) => Ok(None),
            Ok(Some(v)) => super::store::parse_int(v).map(Some).ok_or(()),
            Err(_) => {
                corrupt_logged();
                Err(())
            }
        };
        super::calc::resolve(expr, out, &lookup)
    }
}

pub(crate) fn now_ms() -> u64 {
    forkroot::sys::realtime_ns() / 1_000_000
}

impl Db<'_> {
    fn write(
        &mut self,
        out: &mut Out<'_>,
        f: &mut dyn FnMut(&mut dyn store::Bytes) -> Result<i64, StoreError>,
    ) -> Option<i64> {
        match self.journal.transact(f) {
            Ok(v) => Some(v),
            Err(e) => {
                store_error(out, e);
                None
            }
        }
    }

    /// Removes `key` if it expired (lazy expiry on access).
    fn expire_lazily(&mut self, key: &[u8], now: u64) {
        // A damaged table is reported by the lookup that follows.
        if self.store.is_expired(self.journal.data(), key, now) == Ok(true) {
            let store = self.store;
            // A failure leaves the expired key for the sweep; it reads as absent.
            let _ = self
                .journal
                .transact(&mut |w| store.del(w, key, now).map(i64::from));
        }
    }

    /// One step of active expiry: removes expired keys among `count`
    /// buckets from `cursor`, at most [`SWEEP_MAX`] of them; returns the
    /// next cursor and the keys removed. Looks before it writes: a step
    /// that finds nothing expired opens no transaction.
    pub(crate) fn sweep(&mut self, cursor: usize, count: usize) -> (usize, u64) {
        let store = self.store;
        let now = now_ms();
        let Some(first) = store.first_expired(self.journal.data(), cursor, count, now) else {
            return (cursor.wrapping_add(count), 0);
        };
        let left = count - (first.wrapping_sub(cursor) & (store.buckets() - 1));
        let mut next = (first, 0);
        let r = self.journal.transact(&mut |w| {
            next = store.sweep(w, first, left, SWEEP_MAX, now)?;
            Ok(0)
        });
        if r == Err(StoreError::Corrupt) {
            corrupt_logged();
        }
        if r.is_err() {
            // A damaged entry (or a full journal): skip past this step.
            return (cursor.wrapping_add(count), 0);
        }
        next
    }

    /// One step of the background check over `count` buckets from
    /// `cursor` ([`Store::scrub`]); returns the next cursor. A damaged
    /// entry is logged with its bucket, and the step goes on after it:
    /// the entry stays an error for the commands that touch it.
    pub(crate) fn scrub(&mut self, cursor: usize, count: usize) -> usize {
        let store = self.store;
        match store.scrub(self.journal.data(), cursor, count) {
            Ok(next) => next,
            Err((bucket, _)) => {
                forkroot::alloc::allow(|| {
                    tracing::error!(
                        bucket,
                        "the kv table is damaged: an entry points outside the heap"
                    )
                });
                (bucket + 1) & (store.buckets() - 1)
            }
        }
    }

    /// Executes the command in `args` (ranges of `buf`) for the connection
    /// `sess`, writing its reply.
    pub(crate) fn execute(
        &mut self,
        buf: &[u8],
        args: &Args,
        out: &mut Out<'_>,
        sess: &mut Session,
    ) -> Action {
        self.commands += 1;
        let Some(spec) = Spec::find(args.get(buf, 0)) else {
            unknown(out, buf, args);
            return Action::Done;
        };
        let n = args.len();
        if !spec.admits(n, sess, out) {
            return Action::Done;
        }
        let a = Cmd { buf, args };
        let now = now_ms();
        match spec.cmd {
            Name::Get => self.get(out, a, now),
            Name::Set => self.set(out, a, now),
            Name::Incr => self.incr(out, a, Some(1), now),
            Name::Decr => self.incr(out, a, Some(-1), now),
            Name::IncrBy => self.incr(out, a, None, now),
            Name::DecrBy => self.decr_by(out, a, now),
            Name::Del | Name::Unlink => self.del(out, a, now),
            Name::Exists => self.exists(out, a, now),
            Name::Mget => self.mget(out, a, now),
            Name::Mset => self.mset(out, a, now),
            Name::Ttl => self.ttl(out, a, 1000, now),
            Name::Pttl => self.ttl(out, a, 1, now),
            Name::Ping => ping(out, a, n, spec.name),
            Name::Echo => out.bulk(a.arg(1)),
            Name::Dbsize => out.int(self.store.len(self.journal.data()) as i64),
            Name::Flushall | Name::Flushdb => self.flush(out, a),
            Name::Info => self.info(out),
            Name::Command => command(out, a, n),
            Name::Config => self.config(out, a),
            Name::Select => select(out, a),
            Name::Quit => {
                out.ok();
                return Action::Close;
            }
            Name::Calc => return Action::Calc,
            Name::Debug => return self.debug_if_allowed(out, buf, args),
            Name::Hello => self.hello(out, a, sess),
            Name::Auth => self.auth(out, a, sess),
            Name::Client => self.client(out, a, sess),
            Name::Reset => return self.reset(out, sess),
            Name::Multi if sess.multi => out.error(b"ERR MULTI calls can not be nested"),
            Name::Multi => return multi(out, sess),
            Name::Exec if sess.multi => return Action::Exec,
            Name::Exec => out.error(b"ERR EXEC without MULTI"),
            Name::Discard if sess.multi => return discard(out, sess),
            Name::Discard => out.error(b"ERR DISCARD without MULTI"),
            Name::Expire => self.expire(out, a, now, 1000, now, "expire"),
            Name::Pexpire => self.expire(out, a, now, 1, now, "pexpire"),
            Name::ExpireAt => self.expire(out, a, 0, 1000, now, "expireat"),
            Name::PexpireAt => self.expire(out, a, 0, 1, now, "pexpireat"),
            Name::Persist => self.persist(out, a, now),
            Name::ExpireTime => self.expire_time(out, a, 1000, now),
            Name::PexpireTime => self.expire_time(out, a, 1, now),
            Name::Keys => self.keys(out, a, now),
            Name::Scan => self.scan(out, a, now),
            Name::Type => self.type_of(out, a, now),
            Name::Rename => self.rename(out, a, false, now),
            Name::RenameNx => self.rename(out, a, true, now),
            Name::RandomKey => self.random_key(out, now),
            Name::Append => self.append(out, a, now),
            Name::Strlen => match self.store.get(self.journal.data(), a.arg(1), now) {
                Ok(v) => out.int(v.map_or(0, <[u8]>::len) as i64),
                Err(e) => store_error(out, e),
            },
            Name::GetRange => self.get_range(out, a, now),
            Name::SetRange => self.set_range(out, a, now),
            Name::GetDel => self.get_and(out, a, GetAnd::Del, now),
            Name::GetEx => {
                if let Some(ttl) = getex_options(out, a, now) {
                    self.get_and(out, a, GetAnd::Expire(ttl), now);
                }
            }
            Name::GetSet => self.get_and(out, a, GetAnd::Set(a.arg(2)), now),
            Name::SetNx => self.set_nx(out, a, now),
            Name::SetEx => self.set_ex(out, a, 1000, now, "setex"),
            Name::PsetEx => self.set_ex(out, a, 1, now, "psetex"),
            Name::IncrByFloat => self.incr_by_float(out, a, now),
            Name::MsetNx => self.mset_nx(out, a, now),
            Name::Touch => self.exists(out, a, now),
        }
        Action::Done
    }

    /// DEBUG, when the daemon's args allow it.
    fn debug_if_allowed(&self, out: &mut Out<'_>, buf: &[u8], args: &Args) -> Action {
        if !self.debug {
            out.error(b"ERR DEBUG command not allowed (set debug = true in the daemon's args)");
            return Action::Done;
        }
        debug(out, buf, args)
    }

    /// RESET: the connection back to its state on connect.
    fn reset(&self, out: &mut Out<'_>, sess: &mut Session) -> Action {
        sess.reset(self.password.is_none());
        out.set_resp3(false);
        out.simple(b"RESET");
        Action::Discard
    }

    /// TYPE key: every value is a string.
    fn type_of(&self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        match self.store.get(self.journal.data(), a.arg(1), now) {
            Ok(Some(_)) => out.simple(b"string"),
            Ok(None) => out.simple(b"none"),
            Err(e) => store_error(out, e),
        }
    }

    /// RANDOMKEY: the first live key from a bucket picked by the clock.
    fn random_key(&self, out: &mut Out<'_>, now: u64) {
        let now_ns = forkroot::sys::monotonic_ns() ^ self.commands;
        let start = store::hash(&now_ns.to_le_bytes()) as usize;
        match self.store.key_from(self.journal.data(), start, now) {
            Ok(Some(k)) => out.bulk(k),
            Ok(None) => out.null(),
            Err(e) => store_error(out, e),
        }
    }

    /// SETNX key value.
    fn set_nx(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let store = self.store;
        let (k, v) = (a.arg(1), a.arg(2));
        if let Some(done) = self.write(out, &mut |w| {
            store.set(w, k, v, Ttl::Clear, Cond::Nx, now).map(i64::from)
        }) {
            out.int(done);
        }
    }

    /// A command sent after MULTI: checked as [`Db::execute`] would check
    /// it (name, arity, authentication) and answered `+QUEUED`, or with
    /// the error, which marks the block to be discarded. The commands that
    /// control the block itself are to be run at once.
    pub(crate) fn queue(
        &self,
        buf: &[u8],
        args: &Args,
        out: &mut Out<'_>,
        sess: &mut Session,
    ) -> Queued {
        let spec = Spec::find(args.get(buf, 0));
        let refused = match spec {
            Some(s)
                if matches!(
                    s.cmd,
                    Name::Multi | Name::Exec | Name::Discard | Name::Quit | Name::Reset
                ) =>
            {
                return Queued::Run
            }
            None => {
                unknown(out, buf, args);
                true
            }
            Some(s) => {
                if !s.admits(args.len(), sess, out) {
                    true
                } else if matches!(s.cmd, Name::Calc | Name::Debug) {
                    // They answer later, from a transaction (a fork).
                    out.error(b"ERR CALC and DEBUG cannot be queued in MULTI");
                    true
                } else {
                    out.simple(b"QUEUED");
                    false
                }
            }
        };
        sess.multi_error |= refused;
        Queued::Answered
    }

    /// EXEC: runs the `count` commands queued in `block` (the bytes the
    /// client sent between MULTI and EXEC) in one journal transaction, so
    /// a crash leaves all of the block or none of it, and answers an array
    /// of their replies once it committed. A command that fails after it
    /// may have written (out of memory, journal full) rolls the whole
    /// block back and is EXEC's answer; so are replies that do not fit
    /// the output buffer (`Err(Overflow)`: nothing was changed or written).
    pub(crate) fn exec(
        &mut self,
        block: &[u8],
        count: usize,
        args: &mut Args,
        out: &mut Out<'_>,
        sess: &mut Session,
    ) -> Result<(), ExecFailed> {
        let mark = out.len();
        sess.multi = false;
        if sess.multi_error {
            out.error(b"EXECABORT Transaction discarded because of previous errors.");
            return Ok(());
        }
        out.array(count);
        let mut overflow = false;
        let mut fatal = None;
        let (store, started_ns, restarts, clients) =
            (self.store, self.started_ns, self.restarts, self.clients);
        let (listen, debug, password, next_id) =
            (self.listen, self.debug, self.password, self.next_id);
        let commands = &mut self.commands;
        let r = self.journal.transact(&mut |w| {
            let mut batch = Batch { w, fatal: None };
            let mut at = 0;
            while at < block.len() {
                let mut resume = Resume::START;
                let Parse::Command(used) =
                    resp::parse(&block[at..], args, super::MAX_REQUEST, &mut resume)
                else {
                    // These bytes were parsed once already: cannot happen.
                    fatal = Some(StoreError::Corrupt);
                    break;
                };
                // A nested MULTI was answered when it came, not queued.
                let nested = args.len() > 0 && is(args.get(&block[at..], 0), "multi");
                if args.len() > 0 && !nested {
                    let mut one = Db {
                        journal: &mut batch,
                        store,
                        started_ns,
                        restarts,
                        clients,
                        commands: *commands,
                        listen,
                        debug,
                        password,
                        next_id,
                    };
                    one.execute(&block[at..], args, out, sess);
                    *commands = one.commands;
                }
                at += used;
                if out.overflowed() {
                    overflow = true;
                    break;
                }
                if let Some(e) = batch.fatal {
                    fatal = Some(e);
                    break;
                }
            }
            // Any error rolls the whole block back.
            match (overflow, fatal) {
                (false, None) => Ok(0),
                _ => Err(StoreError::Corrupt),
            }
        });
        if r.is_ok() {
            return Ok(());
        }
        out.truncate(mark);
        if overflow {
            // Run again: EXEC is still the next command.
            sess.multi = true;
            return Err(ExecFailed::Overflow);
        }
        store_error(out, fatal.unwrap_or(StoreError::Corrupt));
        Ok(())
    }

    fn get(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        self.expire_lazily(a.arg(1), now);
        match self.store.get(self.journal.data(), a.arg(1), now) {
            Ok(Some(v)) => out.bulk(v),
            Ok(None) => out.null(),
            Err(e) => store_error(out, e),
        }
    }

    fn set(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let Some((ttl, cond)) = set_options(out, a.buf, a.args, now) else {
            return;
        };
        let store = self.store;
        let (k, v) = (a.arg(1), a.arg(2));
        if let Some(done) = self.write(out, &mut |w| {
            store.set(w, k, v, ttl, cond, now).map(i64::from)
        }) {
            if done == 1 {
                out.ok()
            } else {
                out.null()
            }
        }
    }

    /// INCR, DECR (`delta`), INCRBY (`None`: the delta is argument 2).
    fn incr(&mut self, out: &mut Out<'_>, a: Cmd<'_>, delta: Option<i64>, now: u64) {
        let delta = match delta {
            Some(d) => d,
            None => match store::parse_int(a.arg(2)) {
                Some(d) => d,
                None => return not_integer(out),
            },
        };
        let store = self.store;
        let k = a.arg(1);
        if let Some(v) = self.write(out, &mut |w| store.incr_by(w, k, delta, now)) {
            out.int(v);
        }
    }

    fn decr_by(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let delta = match store::parse_int(a.arg(2)).map(i64::checked_neg) {
            Some(Some(d)) => d,
            Some(None) => return out.error(b"ERR decrement would overflow"),
            None => return not_integer(out),
        };
        let store = self.store;
        let k = a.arg(1);
        if let Some(v) = self.write(out, &mut |w| store.incr_by(w, k, delta, now)) {
            out.int(v);
        }
    }

    fn del(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let store = self.store;
        if let Some(count) = self.write(out, &mut |w| {
            let mut count = 0;
            for i in 1..a.len() {
                count += i64::from(store.del(w, a.arg(i), now)?);
            }
            Ok(count)
        }) {
            out.int(count);
        }
    }

    fn exists(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let d = self.journal.data();
        let mut count = 0;
        for i in 1..a.len() {
            match self.store.get(d, a.arg(i), now) {
                Ok(v) => count += i64::from(v.is_some()),
                Err(e) => return store_error(out, e),
            }
        }
        out.int(count);
    }

    fn mget(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let d = self.journal.data();
        let store = self.store;
        if let Some(e) = (1..a.len()).find_map(|i| store.get(d, a.arg(i), now).err()) {
            return store_error(out, e);
        }
        out.array(a.len() - 1);
        for i in 1..a.len() {
            match store.get(d, a.arg(i), now) {
                Ok(Some(v)) => out.bulk(v),
                _ => out.null(),
            }
        }
    }

    fn mset(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        if a.len() % 2 == 0 {
            return wrong_args(out, "mset");
        }
        let store = self.store;
        let done = self.write(out, &mut |w| {
            for i in (1..a.len()).step_by(2) {
                store.set(w, a.arg(i), a.arg(i + 1), Ttl::Clear, Cond::Always, now)?;
            }
            Ok(0)
        });
        if done.is_some() {
            out.ok();
        }
    }

    /// TTL (`unit` 1000) and PTTL (`unit` 1).
    fn ttl(&mut self, out: &mut Out<'_>, a: Cmd<'_>, unit: u64, now: u64) {
        match self.store.ttl_ms(self.journal.data(), a.arg(1), now) {
            Err(e) => store_error(out, e),
            Ok(None) => out.int(-2),
            Ok(Some(None)) => out.int(-1),
            // Rounded to the nearest second, as Redis does.
            Ok(Some(Some(t))) => out.int(((t + unit / 2) / unit) as i64),
        }
    }

    fn flush(&mut self, out: &mut Out<'_>, a: Cmd<'_>) {
        let n = a.len();
        if !(n == 1 || (n == 2 && (is(a.arg(1), "async") || is(a.arg(1), "sync")))) {
            return syntax(out);
        }
        let store = self.store;
        if self
            .write(out, &mut |w| store.flush(w).map(|()| 0))
            .is_some()
        {
            out.ok();
        }
    }

    fn config(&mut self, out: &mut Out<'_>, a: Cmd<'_>) {
        let sub = a.arg(1);
        if is(sub, "get") {
            if a.len() < 3 {
                wrong_args(out, "config|get");
            } else {
                self.config_get(out, a.buf, a.args);
            }
        } else if is(sub, "set") || is(sub, "resetstat") {
            out.ok();
        } else {
            unknown_subcommand(out, sub, "CONFIG");
        }
    }

    /// Whether `given` is the configured password (compared in constant
    /// time: every byte of both is looked at, whatever differs where).
    fn password_matches(&self, given: &[u8]) -> bool {
        let Some(want) = self.password else {
            return false;
        };
        let want = want.as_bytes();
        let mut diff = u8::from(want.len() != given.len());
        for i in 0..want.len().max(given.len()) {
            let x = want.get(i).copied().unwrap_or(0);
            let y = given.get(i).copied().unwrap_or(0);
            diff |= x ^ y;
        }
        std::hint::black_box(diff) == 0
    }

    /// AUTH's check of `user` and `pass`; on failure the error is written.
    fn check_auth(&self, out: &mut Out<'_>, user: &[u8], pass: &[u8]) -> bool {
        if self.password.is_none() {
            out.error(
                b"ERR AUTH <password> called without any password configured for the default \
                  user. Are you sure your configuration is correct?",
            );
            return false;
        }
        // Both compared, so a wrong user takes as long as a wrong password.
        let pass_ok = self.password_matches(pass);
        if user == b"default" && pass_ok {
            true
        } else {
            out.error(b"WRONGPASS invalid username-password pair or user is disabled.");
            false
        }
    }

    fn auth(&mut self, out: &mut Out<'_>, a: Cmd<'_>, sess: &mut Session) {
        let (user, pass) = match a.len() {
            2 => (&b"default"[..], a.arg(1)),
            3 => (a.arg(1), a.arg(2)),
            _ => return syntax(out),
        };
        if self.check_auth(out, user, pass) {
            sess.authed = true;
            out.ok();
        }
    }

    /// HELLO [protover [AUTH user pass] [SETNAME name]].
    fn hello(&mut self, out: &mut Out<'_>, a: Cmd<'_>, sess: &mut Session) {
        let mut resp3 = sess.resp3;
        if a.len() >= 2 {
            match store::parse_int(a.arg(1)) {
                Some(2) => resp3 = false,
                Some(3) => resp3 = true,
                Some(_) => return out.error(b"NOPROTO unsupported protocol version"),
                None => {
                    return out.error(b"ERR Protocol version is not an integer or out of range")
                }
            }
        }
        let mut auth = None;
        let mut name = None;
        let mut i = 2;
        while i < a.len() {
            let opt = a.arg(i);
            if is(opt, "auth") && i + 2 < a.len() {
                auth = Some((a.arg(i + 1), a.arg(i + 2)));
                i += 3;
            } else if is(opt, "setname") && i + 1 < a.len() {
                name = Some(a.arg(i + 1));
                i += 2;
            } else {
                out.raw(b"-ERR Syntax error in HELLO option '");
                out.raw(&opt[..opt.len().min(128)]);
                out.raw(b"'\r\n");
                return;
            }
        }
        if let Some((user, pass)) = auth {
            if !self.check_auth(out, user, pass) {
                return;
            }
        } else if !sess.authed {
            out.error(
                b"NOAUTH HELLO must be called with the client already authenticated, otherwise \
                  the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                  client and select the RESP protocol version at the same time",
            );
            return;
        }
        if let Some(name) = name {
            if let Err(e) = sess.check_name(name) {
                return out.error(e);
            }
        }
        // Nothing failed: apply it all.
        if auth.is_some() {
            sess.authed = true;
        }
        if let Some(name) = name {
            sess.set_name(name);
        }
        sess.resp3 = resp3;
        out.set_resp3(resp3);
        out.map(7);
        out.bulk(b"server");
        out.bulk(b"redis");
        out.bulk(b"version");
        out.bulk(VERSION.as_bytes());
        out.bulk(b"proto");
        out.int(if resp3 { 3 } else { 2 });
        out.bulk(b"id");
        out.int(sess.id as i64);
        out.bulk(b"mode");
        out.bulk(b"standalone");
        out.bulk(b"role");
        out.bulk(b"master");
        out.bulk(b"modules");
        out.array(0);
    }

    /// CLIENT ID | SETNAME name | GETNAME | SETINFO attr value | INFO.
    fn client(&mut self, out: &mut Out<'_>, a: Cmd<'_>, sess: &mut Session) {
        let sub = a.arg(1);
        let n = a.len();
        let arity = |out: &mut Out<'_>, want: usize, name: &str| {
            if n != want {
                wrong_args(out, name);
            }
            n == want
        };
        if is(sub, "id") {
            if arity(out, 2, "client|id") {
                out.int(sess.id as i64);
            }
        } else if is(sub, "getname") {
            if arity(out, 2, "client|getname") {
                match sess.name() {
                    [] => out.null(),
                    name => out.bulk(name),
                }
            }
        } else if is(sub, "setname") {
            if arity(out, 3, "client|setname") {
                match sess.check_name(a.arg(2)) {
                    Ok(()) => {
                        sess.set_name(a.arg(2));
                        out.ok();
                    }
                    Err(e) => out.error(e),
                }
            }
        } else if is(sub, "setinfo") {
            if arity(out, 4, "client|setinfo") {
                let attr = a.arg(2);
                if is(attr, "lib-name") || is(attr, "lib-ver") {
                    if a.arg(3).iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                        out.raw(b"-ERR ");
                        out.raw(if is(attr, "lib-name") {
                            b"lib-name"
                        } else {
                            b"lib-ver"
                        });
                        out.raw(b" cannot contain spaces, newlines or special characters.\r\n");
                    } else {
                        out.ok();
                    }
                } else {
                    out.raw(b"-ERR Unrecognized option '");
                    out.raw(&attr[..attr.len().min(128)]);
                    out.raw(b"'\r\n");
                }
            }
        } else if is(sub, "info") {
            if arity(out, 2, "client|info") {
                let mut tmp = [0u8; 256];
                let mut t = Out::new(&mut tmp, 0);
                t.raw(b"id=");
                t.num(sess.id as i64);
                t.raw(b" name=");
                t.raw(sess.name());
                t.raw(b" db=0 resp=");
                t.num(if sess.resp3 { 3 } else { 2 });
                t.raw(b"\n");
                let len = t.len();
                out.text(&tmp[..len]);
            }
        } else {
            unknown_subcommand(out, sub, "CLIENT");
        }
    }

    /// EXPIRE, PEXPIRE (`base` now), EXPIREAT, PEXPIREAT (`base` 0), the
    /// time in units of `unit` ms, with NX, XX, GT, LT.
    fn expire(&mut self, out: &mut Out<'_>, a: Cmd<'_>, base: u64, unit: u64, now: u64, cmd: &str) {
        let Some(t) = store::parse_int(a.arg(2)) else {
            return not_integer(out);
        };
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for i in 3..a.len() {
            let o = a.arg(i);
            if is(o, "nx") {
                nx = true;
            } else if is(o, "xx") {
                xx = true;
            } else if is(o, "gt") {
                gt = true;
            } else if is(o, "lt") {
                lt = true;
            } else {
                out.raw(b"-ERR Unsupported option ");
                out.raw(&o[..o.len().min(128)]);
                out.raw(b"\r\n");
                return;
            }
        }
        if nx && (xx || gt || lt) {
            return out
                .error(b"ERR NX and XX, GT or LT options at the same time are not compatible");
        }
        if gt && lt {
            return out.error(b"ERR GT and LT options at the same time are not compatible");
        }
        // In ms since the epoch; before now (even negative): delete.
        let at = t
            .checked_mul(unit as i64)
            .and_then(|ms| ms.checked_add(base as i64));
        let Some(at) = at else {
            return invalid_expire(out, cmd);
        };
        let store = self.store;
        let done = self.write(out, &mut |w| {
            let Some(cur) = store.expiry(w.data(), a.arg(1), now)? else {
                return Ok(0);
            };
            // No expiry counts as an infinite one for GT and LT.
            let refused = (nx && cur != 0)
                || (xx && cur == 0)
                || (gt && (cur == 0 || at <= cur as i64))
                || (lt && cur != 0 && at >= cur as i64);
            if refused {
                return Ok(0);
            }
            if at <= now as i64 {
                store.del(w, a.arg(1), now)?;
            } else {
                store.set_expiry(w, a.arg(1), at as u64, now)?;
            }
            Ok(1)
        });
        if let Some(done) = done {
            out.int(done);
        }
    }

    fn persist(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let store = self.store;
        let done = self.write(out, &mut |w| match store.expiry(w.data(), a.arg(1), now)? {
            Some(at) if at != 0 => store.set_expiry(w, a.arg(1), 0, now).map(i64::from),
            _ => Ok(0),
        });
        if let Some(done) = done {
            out.int(done);
        }
    }

    /// EXPIRETIME (`unit` 1000) and PEXPIRETIME (`unit` 1).
    fn expire_time(&mut self, out: &mut Out<'_>, a: Cmd<'_>, unit: u64, now: u64) {
        match self.store.expiry(self.journal.data(), a.arg(1), now) {
            Err(e) => store_error(out, e),
            Ok(None) => out.int(-2),
            Ok(Some(0)) => out.int(-1),
            Ok(Some(at)) => out.int(((at + unit / 2) / unit) as i64),
        }
    }

    fn keys(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let pattern = a.arg(1);
        let d = self.journal.data();
        let buckets = self.store.buckets();
        let mut count = 0;
        let r = self.store.scan(d, 0, buckets, now, &mut |k| {
            count += usize::from(glob::matches(pattern, k));
        });
        if let Err(e) = r {
            return store_error(out, e);
        }
        out.array(count);
        let _ = self.store.scan(d, 0, buckets, now, &mut |k| {
            if glob::matches(pattern, k) {
                out.bulk(k);
            }
        });
    }

    /// SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]: the cursor is a
    /// bucket of the table (see `Store::scan`); a step covers the buckets
    /// holding about COUNT keys (see `Store::span`).
    fn scan(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let cursor = match std::str::from_utf8(a.arg(1))
            .ok()
            .and_then(|c| c.parse::<u64>().ok())
        {
            Some(c) => usize::try_from(c).unwrap_or(usize::MAX),
            None => return out.error(b"ERR invalid cursor"),
        };
        let mut pattern: &[u8] = b"*";
        let mut count = 10;
        let mut strings = true;
        let mut i = 2;
        while i < a.len() {
            let o = a.arg(i);
            if i + 1 >= a.len() {
                return syntax(out);
            }
            if is(o, "match") {
                pattern = a.arg(i + 1);
            } else if is(o, "count") {
                match store::parse_int(a.arg(i + 1)) {
                    Some(n) if n >= 1 => count = n as usize,
                    Some(_) => return syntax(out),
                    None => return not_integer(out),
                }
            } else if is(o, "type") {
                // Every key is a string.
                strings = is(a.arg(i + 1), "string");
            } else {
                return syntax(out);
            }
            i += 2;
        }
        let d = self.journal.data();
        // COUNT is about keys, as in Redis; empty buckets cost little, but
        // a step still looks at no more than `COUNT * 1024` of them.
        let count = self
            .store
            .span(d, cursor, count, count.saturating_mul(1024));
        let mut n = 0;
        let next = self.store.scan(d, cursor, count, now, &mut |k| {
            n += usize::from(strings && glob::matches(pattern, k));
        });
        let next = match next {
            Ok(next) => next,
            Err(e) => return store_error(out, e),
        };
        let mut digits = [0u8; 20];
        out.array(2);
        out.bulk(store::format_int(next as i64, &mut digits));
        out.array(n);
        let _ = self.store.scan(d, cursor, count, now, &mut |k| {
            if strings && glob::matches(pattern, k) {
                out.bulk(k);
            }
        });
    }

    fn rename(&mut self, out: &mut Out<'_>, a: Cmd<'_>, nx: bool, now: u64) {
        let store = self.store;
        let r = self.write(out, &mut |w| {
            Ok(match store.rename(w, a.arg(1), a.arg(2), nx, now)? {
                None => -1,
                Some(done) => i64::from(done),
            })
        });
        match r {
            None => {}
            Some(-1) => out.error(b"ERR no such key"),
            Some(_) if !nx => out.ok(),
            Some(done) => out.int(done),
        }
    }

    fn append(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let store = self.store;
        let (k, add) = (a.arg(1), a.arg(2));
        let len = self.write(out, &mut |w| {
            let old = store.get(w.data(), k, now)?.map_or(0, <[u8]>::len);
            let value = store.resize(w, k, old + add.len(), now)?;
            Store::write_value(w, value, old, add)?;
            Ok((old + add.len()) as i64)
        });
        if let Some(len) = len {
            out.int(len);
        }
    }

    fn get_range(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let (Some(mut start), Some(mut end)) =
            (store::parse_int(a.arg(2)), store::parse_int(a.arg(3)))
        else {
            return not_integer(out);
        };
        let v = match self.store.get(self.journal.data(), a.arg(1), now) {
            Ok(v) => v.unwrap_or_default(),
            Err(e) => return store_error(out, e),
        };
        let len = v.len() as i64;
        if start < 0 && end < 0 && start > end {
            return out.bulk(b"");
        }
        if start < 0 {
            start += len;
        }
        if end < 0 {
            end += len;
        }
        start = start.max(0);
        end = end.max(0).min(len - 1);
        if len == 0 || start > end {
            return out.bulk(b"");
        }
        out.bulk(&v[start as usize..=end as usize]);
    }

    fn set_range(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let Some(offset) = store::parse_int(a.arg(2)) else {
            return not_integer(out);
        };
        if offset < 0 {
            return out.error(b"ERR offset is out of range");
        }
        let (k, bytes) = (a.arg(1), a.arg(3));
        let offset = offset as usize;
        if offset + bytes.len() > MAX_STRING {
            return out.error(b"ERR string exceeds maximum allowed size (proto-max-bulk-len)");
        }
        let store = self.store;
        let len = self.write(out, &mut |w| {
            let old = store.get(w.data(), k, now)?;
            let old_len = old.map_or(0, <[u8]>::len);
            // Nothing to write: the key is neither created nor padded.
            if bytes.is_empty() {
                return Ok(old_len as i64);
            }
            let len = old_len.max(offset + bytes.len());
            let value = store.resize(w, k, len, now)?;
            Store::write_value(w, value, offset, bytes)?;
            Ok(len as i64)
        });
        if let Some(len) = len {
            out.int(len);
        }
    }

    /// GETDEL, GETEX, GETSET: the value before the change is the reply.
    /// It is written out before the change is committed (its bytes may
    /// move), and taken back if the change fails; a reply that does not
    /// fit changes nothing and runs again once the output drained.
    fn get_and(&mut self, out: &mut Out<'_>, a: Cmd<'_>, then: GetAnd<'_>, now: u64) {
        let key = a.arg(1);
        self.expire_lazily(key, now);
        let old = match self.store.get(self.journal.data(), key, now) {
            Ok(v) => v,
            Err(e) => return store_error(out, e),
        };
        if !out.reserve(old.map_or(0, <[u8]>::len) + 32) {
            return;
        }
        let mark = out.len();
        match old {
            Some(v) => out.bulk(v),
            None => out.null(),
        }
        let existed = old.is_some();
        let store = self.store;
        let r = self.journal.transact(&mut |w| {
            match then {
                GetAnd::Del => {
                    store.del(w, key, now)?;
                }
                GetAnd::Expire(None) => {}
                GetAnd::Expire(Some(Ttl::At(at))) if existed => {
                    if at <= now {
                        store.del(w, key, now)?;
                    } else {
                        store.set_expiry(w, key, at, now)?;
                    }
                }
                GetAnd::Expire(Some(_)) if existed => {
                    store.set_expiry(w, key, 0, now)?;
                }
                GetAnd::Expire(Some(_)) => {}
                GetAnd::Set(v) => {
                    store.set(w, key, v, Ttl::Clear, Cond::Always, now)?;
                }
            }
            Ok(0)
        });
        if let Err(e) = r {
            out.truncate(mark);
            store_error(out, e);
        }
    }

    /// SETEX and PSETEX: the time in units of `unit` ms.
    fn set_ex(&mut self, out: &mut Out<'_>, a: Cmd<'_>, unit: u64, now: u64, cmd: &str) {
        let at = match store::parse_int(a.arg(2)) {
            None => return not_integer(out),
            Some(t) if t <= 0 => None,
            Some(t) => (t as u64)
                .checked_mul(unit)
                .and_then(|ms| ms.checked_add(now))
                .filter(|&at| at <= i64::MAX as u64),
        };
        let Some(at) = at else {
            return invalid_expire(out, cmd);
        };
        let store = self.store;
        let (k, v) = (a.arg(1), a.arg(3));
        if self
            .write(out, &mut |w| {
                store
                    .set(w, k, v, Ttl::At(at), Cond::Always, now)
                    .map(i64::from)
            })
            .is_some()
        {
            out.ok();
        }
    }

    fn incr_by_float(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        let Some(by) = parse_float(a.arg(2)) else {
            return out.error(b"ERR value is not a valid float");
        };
        let (store, k) = (self.store, a.arg(1));
        let mut text = [0u8; 400];
        let mut len = 0;
        let mut bad: Option<&[u8]> = None;
        let r = self.write(out, &mut |w| {
            let old = match store.get(w.data(), k, now)? {
                None => 0.0,
                Some(v) => match parse_float(v) {
                    Some(f) => f,
                    None => {
                        bad = Some(b"ERR value is not a valid float");
                        return Ok(0);
                    }
                },
            };
            let new = old + by;
            if !new.is_finite() {
                bad = Some(b"ERR increment would produce NaN or Infinity");
                return Ok(0);
            }
            len = format_float(new, &mut text);
            store.set(w, k, &text[..len], Ttl::Keep, Cond::Always, now)?;
            Ok(0)
        });
        match (r, bad) {
            (None, _) => {}
            (Some(_), Some(e)) => out.error(e),
            (Some(_), None) => out.bulk(&text[..len]),
        }
    }

    fn mset_nx(&mut self, out: &mut Out<'_>, a: Cmd<'_>, now: u64) {
        if a.len() % 2 == 0 {
            return wrong_args(out, "msetnx");
        }
        let store = self.store;
        let done = self.write(out, &mut |w| {
            for i in (1..a.len()).step_by(2) {
                if store.get(w.data(), a.arg(i), now)?.is_some() {
                    return Ok(0);
                }
            }
            for i in (1..a.len()).step_by(2) {
                store.set(w, a.arg(i), a.arg(i + 1), Ttl::Clear, Cond::Always, now)?;
            }
            Ok(1)
        });
        if let Some(done) = done {
            out.int(done);
        }
    }

    /// CONFIG GET: the few parameters clients ask about (redis-benchmark
    /// reads `save` and `appendonly`), as name/value pairs; others are absent.
    fn config_get(&self, out: &mut Out<'_>, buf: &[u8], args: &Args) {
        let mut digits = [0u8; 20];
        let maxmemory = store::format_int(self.store.heap_size() as i64, &mut digits);
        let known: [(&str, &[u8]); 4] = [
            ("save", b""),
            ("appendonly", b"no"),
            ("databases", b"1"),
            ("maxmemory", maxmemory),
        ];
        // A parameter is listed once, if any pattern matches it.
        let wanted =
            |k: &str| (2..args.len()).any(|i| glob::matches(args.get(buf, i), k.as_bytes()));
        out.map(known.iter().filter(|(k, _)| wanted(k)).count());
        for (k, v) in known.iter().filter(|(k, _)| wanted(k)) {
            out.bulk(k.as_bytes());
            out.bulk(v);
        }
    }

    fn info(&self, out: &mut Out<'_>) {
        let mut tmp = [0u8; 1024];
        let mut t = Out::new(&mut tmp, 0);
        let d = self.journal.data();
        let uptime = (forkroot::sys::monotonic_ns() - self.started_ns) / 1_000_000_000;
        t.raw(b"# Server\r\nredis_version:");
        t.raw(VERSION.as_bytes());
        t.raw(b"-forkroot\r\nredis_mode:standalone\r\nprocess_id:");
        t.num(i64::from(forkroot::sys::getpid().as_raw()));
        t.raw(b"\r\nlisten:");
        t.raw(self.listen.as_bytes());
        t.raw(b"\r\nuptime_in_seconds:");
        t.num(uptime as i64);
        t.raw(b"\r\nforkroot_restarts:");
        t.num(i64::from(self.restarts));
        t.raw(b"\r\n\r\n# Clients\r\nconnected_clients:");
        t.num(self.clients as i64);
        t.raw(b"\r\n\r\n# Memory\r\nused_memory:");
        t.num(self.store.used(d) as i64);
        t.raw(b"\r\nmaxmemory:");
        t.num(self.store.heap_size() as i64);
        t.raw(b"\r\nlargest_free_block:");
        t.num(self.store.largest_free(d) as i64);
        t.raw(b"\r\nmax_keys:");
        t.num(self.store.max_keys() as i64);
        t.raw(b"\r\n\r\n# Stats\r\ntotal_commands_processed:");
        t.num(self.commands as i64);
        t.raw(b"\r\n\r\n# Keyspace\r\n");
        let keys = self.store.len(d);
        if keys > 0 {
            t.raw(b"db0:keys=");
            t.num(keys as i64);
            t.raw(b"\r\n");
        }
        let len = t.len();
        out.text(&tmp[..len]);
    }
}

/// Parses SET's options from argument 3 on.
fn set_options(out: &mut Out<'_>, buf: &[u8], args: &Args, now: u64) -> Option<(Ttl, Cond)> {
    let mut ttl = Ttl::Clear;
    let mut cond = Cond::Always;
    let mut i = 3;
    while i < args.len() {
        let a = args.get(buf, i);
        if (is(a, "nx") || is(a, "xx")) && cond == Cond::Always {
            cond = if is(a, "nx") { Cond::Nx } else { Cond::Xx };
        } else if is(a, "keepttl") && ttl == Ttl::Clear {
            ttl = Ttl::Keep;
        } else if (is(a, "ex") || is(a, "px") || is(a, "exat") || is(a, "pxat"))
            && ttl == Ttl::Clear
            && i + 1 < args.len()
        {
            i += 1;
            let Some(v) = store::parse_int(args.get(buf, i)) else {
                not_integer(out);
                return None;
            };
            let at = if v <= 0 {
                None
            } else if is(a, "ex") {
                (v as u64)
                    .checked_mul(1000)
                    .and_then(|d| d.checked_add(now))
            } else if is(a, "px") {
                (v as u64).checked_add(now)
            } else if is(a, "exat") {
                (v as u64).checked_mul(1000)
            } else {
                Some(v as u64)
            };
            match at {
                Some(at) if at <= i64::MAX as u64 => ttl = Ttl::At(at),
                _ => {
                    out.error(b"ERR invalid expire time in 'set' command");
                    return None;
                }
            }
        } else {
            syntax(out);
            return None;
        }
        i += 1;
    }
    Some((ttl, cond))
}

/// The longest string SETRANGE makes (Redis' `proto-max-bulk-len`).
const MAX_STRING: usize = 512 << 20;

/// What GETDEL, GETEX and GETSET do after reading the value.
#[derive(Clone, Copy)]
enum GetAnd<'c> {
    Del,
    /// `None`: nothing; `Some(Ttl::At)`: expire then; `Some(Ttl::Clear)`:
    /// persist.
    Expire(Option<Ttl>),
    Set(&'c [u8]),
}

fn invalid_expire(out: &mut Out<'_>, cmd: &str) {
    out.raw(b"-ERR invalid expire time in '");
    out.raw(cmd.as_bytes());
    out.raw(b"' command\r\n");
}

/// GETEX's options: `None` if they are wrong (the error is written).
fn getex_options(out: &mut Out<'_>, a: Cmd<'_>, now: u64) -> Option<Option<Ttl>> {
    match a.len() {
        2 => return Some(None),
        3 if is(a.arg(2), "persist") => return Some(Some(Ttl::Clear)),
        4 => {}
        _ => {
            syntax(out);
            return None;
        }
    }
    let o = a.arg(2);
    let (base, unit) = if is(o, "ex") {
        (now, 1000)
    } else if is(o, "px") {
        (now, 1)
    } else if is(o, "exat") {
        (0, 1000)
    } else if is(o, "pxat") {
        (0, 1)
    } else {
        syntax(out);
        return None;
    };
    let Some(t) = store::parse_int(a.arg(3)) else {
        not_integer(out);
        return None;
    };
    match (t as u64)
        .checked_mul(unit)
        .and_then(|ms| ms.checked_add(base))
    {
        Some(at) if t > 0 && at <= i64::MAX as u64 => Some(Some(Ttl::At(at))),
        _ => {
            invalid_expire(out, "getex");
            None
        }
    }
}

/// A float as INCRBYFLOAT reads it: decimal, optionally with an exponent;
/// no spaces, no NaN or infinity.
fn parse_float(v: &[u8]) -> Option<f64> {
    let ok = !v.is_empty()
        && v.len() <= 5120
        && v.iter()
            .all(|&c| c.is_ascii_digit() || b"+-.eE".contains(&c));
    let f: f64 = std::str::from_utf8(v).ok().filter(|_| ok)?.parse().ok()?;
    f.is_finite().then_some(f)
}

/// `f` in plain decimal (no exponent), as Redis prints INCRBYFLOAT's
/// result: the shortest digits that read back as the same value.
fn format_float(f: f64, buf: &mut [u8; 400]) -> usize {
    use std::io::Write;
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    // A finite f64 has at most 309 integer digits and prints in far less
    // than 400 bytes at its shortest; the cursor cannot allocate.
    let _ = write!(cur, "{f}");
    cur.position() as usize
}

fn debug(out: &mut Out<'_>, buf: &[u8], args: &Args) -> Action {
    let n = args.len();
    let sub = if n >= 2 { args.get(buf, 1) } else { b"" };
    if n == 2 && is(sub, "segfault") {
        Action::Crash
    } else if n == 2 && is(sub, "txcrash") {
        Action::TxCrash
    } else if n == 3 && is(sub, "txsleep") {
        match store::parse_int(args.get(buf, 2)) {
            Some(ms) if (0..=60_000).contains(&ms) => Action::TxSleep,
            _ => {
                not_integer(out);
                Action::Done
            }
        }
    } else if n == 3 && is(sub, "sleep") {
        match store::parse_int(args.get(buf, 2)) {
            Some(s) if (0..=60).contains(&s) => {
                // Blocks every client, as Redis' DEBUG SLEEP does.
                std::thread::sleep(Duration::from_secs(s as u64));
                out.ok();
            }
            _ => not_integer(out),
        }
        Action::Done
    } else {
        out.error(
            b"ERR DEBUG subcommand must be one of SEGFAULT, TXCRASH, TXSLEEP <ms>, SLEEP <seconds>",
        );
        Action::Done
    }
}
