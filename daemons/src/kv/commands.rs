//! The commands: argument checking, the store call, the reply, each in
//! Redis' words. Writes run in one journal transaction per command and are
//! answered only after it committed.

use std::time::Duration;

use super::journal::Journal;
use super::resp::{Args, Out};
use super::store::{self, Cond, Store, StoreError, Ttl};

/// Room a command may assume in the output buffer: every reply of a write
/// command (and every error) fits in it, so a write is never executed and
/// then found to have no room for its answer.
pub(crate) const RESERVE: usize = 1024;

/// The data and what INFO reports.
pub(crate) struct Db<'a> {
    /// The table's bytes.
    pub(crate) journal: Box<dyn Journal + 'a>,
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
        name,
        cmd,
        arity,
        no_auth: true,
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
];

impl Spec {
    fn find(name: &[u8]) -> Option<&'static Spec> {
        TABLE
            .iter()
            .find(|s| s.name.len() == name.len() && is(name, s.name))
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

    /// Removes expired keys among `count` buckets from `cursor`; returns
    /// the next cursor.
    pub(crate) fn sweep(&mut self, cursor: usize, count: usize) -> usize {
        let store = self.store;
        let now = now_ms();
        let mut next = cursor;
        let r = self.journal.transact(&mut |w| {
            let (c, removed) = store.sweep(w, cursor, count, now)?;
            next = c;
            Ok(removed as i64)
        });
        if r == Err(StoreError::Corrupt) {
            corrupt_logged();
        }
        if r.is_err() {
            // Journal full (or a damaged entry): fewer buckets next time would help, but a sweep
            // of 64 buckets removes at most 64 small records; skip ahead.
            next = cursor + count;
        }
        next
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
        let arity = usize::from(spec.arity.unsigned_abs());
        if (spec.arity > 0 && n != arity) || n < arity {
            wrong_args(out, spec.name);
            return Action::Done;
        }
        if !sess.authed && !spec.no_auth {
            out.error(b"NOAUTH Authentication required.");
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
            Name::Ping => match n {
                1 => out.simple(b"PONG"),
                2 => out.bulk(a.arg(1)),
                _ => wrong_args(out, spec.name),
            },
            Name::Echo => out.bulk(a.arg(1)),
            Name::Dbsize => out.int(self.store.len(self.journal.data()) as i64),
            Name::Flushall | Name::Flushdb => self.flush(out, a),
            Name::Info => self.info(out),
            Name::Command => {
                if n >= 2 && is(a.arg(1), "count") {
                    out.int(TABLE.len() as i64);
                } else if n >= 2 && is(a.arg(1), "docs") {
                    out.map(0);
                } else {
                    out.array(0);
                }
            }
            Name::Config => self.config(out, a),
            Name::Select => match store::parse_int(a.arg(1)) {
                Some(0) => out.ok(),
                Some(_) => out.error(b"ERR DB index is out of range"),
                None => not_integer(out),
            },
            Name::Quit => {
                out.ok();
                return Action::Close;
            }
            Name::Calc => return Action::Calc,
            Name::Debug => {
                if !self.debug {
                    out.error(
                        b"ERR DEBUG command not allowed (set debug = true in the daemon's args)",
                    );
                    return Action::Done;
                }
                return debug(out, buf, args);
            }
            Name::Hello => self.hello(out, a, sess),
            Name::Auth => self.auth(out, a, sess),
            Name::Client => self.client(out, a, sess),
            Name::Reset => {
                sess.reset(self.password.is_none());
                out.set_resp3(false);
                out.simple(b"RESET");
            }
        }
        Action::Done
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
            Ok(Some(Some(t))) => out.int(t.div_ceil(unit) as i64),
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
        let found = |i: usize| known.iter().find(|(k, _)| is(args.get(buf, i), k));
        let count = (2..args.len()).filter(|&i| found(i).is_some()).count();
        out.map(count);
        for i in 2..args.len() {
            if let Some((k, v)) = found(i) {
                out.bulk(k.as_bytes());
                out.bulk(v);
            }
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
        t.num(forkroot::sys::getpid().0 as i64);
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
