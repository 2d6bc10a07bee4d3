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
}

impl std::fmt::Debug for Db<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("store", &self.store)
            .field("clients", &self.clients)
            .finish()
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

    /// Executes the command in `args` (ranges of `buf`), writing its reply.
    pub(crate) fn execute(&mut self, buf: &[u8], args: &Args, out: &mut Out<'_>) -> Action {
        self.commands += 1;
        let n = args.len();
        let arg = |i: usize| args.get(buf, i);
        let name = arg(0);
        let store = self.store;
        let now = now_ms();
        if is(name, "get") {
            if n != 2 {
                wrong_args(out, "get");
                return Action::Done;
            }
            self.expire_lazily(arg(1), now);
            match store.get(self.journal.data(), arg(1), now) {
                Ok(Some(v)) => out.bulk(v),
                Ok(None) => out.null(),
                Err(e) => store_error(out, e),
            }
        } else if is(name, "set") {
            if n < 3 {
                wrong_args(out, "set");
                return Action::Done;
            }
            let Some((ttl, cond)) = set_options(out, buf, args, now) else {
                return Action::Done;
            };
            let (k, v) = (arg(1), arg(2));
            if let Some(done) = self.write(out, &mut |w| {
                store.set(w, k, v, ttl, cond, now).map(i64::from)
            }) {
                if done == 1 {
                    out.ok()
                } else {
                    out.null()
                }
            }
        } else if is(name, "ping") {
            match n {
                1 => out.simple(b"PONG"),
                2 => out.bulk(arg(1)),
                _ => wrong_args(out, "ping"),
            }
        } else if let Some(delta) = incr_kind(name) {
            let cmd = incr_name(name);
            let by = matches!(delta, 0);
            if n != 2 + usize::from(by) {
                wrong_args(out, cmd);
                return Action::Done;
            }
            let delta = if by {
                match store::parse_int(arg(2)) {
                    None => {
                        not_integer(out);
                        return Action::Done;
                    }
                    Some(d) if is(name, "decrby") => match d.checked_neg() {
                        Some(d) => d,
                        None => {
                            out.error(b"ERR decrement would overflow");
                            return Action::Done;
                        }
                    },
                    Some(d) => d,
                }
            } else {
                delta
            };
            let k = arg(1);
            if let Some(v) = self.write(out, &mut |w| store.incr_by(w, k, delta, now)) {
                out.int(v);
            }
        } else if is(name, "del") || is(name, "unlink") {
            if n < 2 {
                wrong_args(out, if is(name, "del") { "del" } else { "unlink" });
                return Action::Done;
            }
            if let Some(count) = self.write(out, &mut |w| {
                let mut count = 0;
                for i in 1..n {
                    count += i64::from(store.del(w, args.get(buf, i), now)?);
                }
                Ok(count)
            }) {
                out.int(count);
            }
        } else if is(name, "exists") {
            if n < 2 {
                wrong_args(out, "exists");
                return Action::Done;
            }
            let d = self.journal.data();
            let mut count = 0;
            for i in 1..n {
                match store.get(d, arg(i), now) {
                    Ok(v) => count += i64::from(v.is_some()),
                    Err(e) => {
                        store_error(out, e);
                        return Action::Done;
                    }
                }
            }
            out.int(count);
        } else if is(name, "mget") {
            if n < 2 {
                wrong_args(out, "mget");
                return Action::Done;
            }
            let d = self.journal.data();
            if let Some(e) = (1..n).find_map(|i| store.get(d, arg(i), now).err()) {
                store_error(out, e);
                return Action::Done;
            }
            out.array(n - 1);
            for i in 1..n {
                match store.get(d, arg(i), now) {
                    Ok(Some(v)) => out.bulk(v),
                    _ => out.null(),
                }
            }
        } else if is(name, "mset") {
            if n < 3 || n % 2 == 0 {
                wrong_args(out, "mset");
                return Action::Done;
            }
            if self
                .write(out, &mut |w| {
                    for i in (1..n).step_by(2) {
                        let (k, v) = (args.get(buf, i), args.get(buf, i + 1));
                        store.set(w, k, v, Ttl::Clear, Cond::Always, now)?;
                    }
                    Ok(0)
                })
                .is_some()
            {
                out.ok();
            }
        } else if is(name, "ttl") || is(name, "pttl") {
            let ms = is(name, "pttl");
            if n != 2 {
                wrong_args(out, if ms { "pttl" } else { "ttl" });
                return Action::Done;
            }
            match store.ttl_ms(self.journal.data(), arg(1), now) {
                Err(e) => store_error(out, e),
                Ok(None) => out.int(-2),
                Ok(Some(None)) => out.int(-1),
                Ok(Some(Some(t))) if ms => out.int(t as i64),
                Ok(Some(Some(t))) => out.int(t.div_ceil(1000) as i64),
            }
        } else if is(name, "echo") {
            if n != 2 {
                wrong_args(out, "echo");
                return Action::Done;
            }
            out.bulk(arg(1));
        } else if is(name, "dbsize") {
            if n != 1 {
                wrong_args(out, "dbsize");
                return Action::Done;
            }
            out.int(store.len(self.journal.data()) as i64);
        } else if is(name, "flushall") || is(name, "flushdb") {
            let mode_ok = n == 1 || (n == 2 && (is(arg(1), "async") || is(arg(1), "sync")));
            if !mode_ok {
                syntax(out);
                return Action::Done;
            }
            if self
                .write(out, &mut |w| store.flush(w).map(|()| 0))
                .is_some()
            {
                out.ok();
            }
        } else if is(name, "info") {
            self.info(out);
        } else if is(name, "command") {
            if n >= 2 && is(arg(1), "count") {
                out.int(0);
            } else {
                out.array(0);
            }
        } else if is(name, "config") {
            if n >= 2 && is(arg(1), "get") {
                if n < 3 {
                    wrong_args(out, "config|get");
                } else {
                    self.config_get(out, buf, args);
                }
            } else if n >= 2 && (is(arg(1), "set") || is(arg(1), "resetstat")) {
                out.ok();
            } else {
                out.error(b"ERR unknown subcommand or wrong number of arguments for 'config'");
            }
        } else if is(name, "select") {
            if n != 2 {
                wrong_args(out, "select");
                return Action::Done;
            }
            match store::parse_int(arg(1)) {
                Some(0) => out.ok(),
                Some(_) => out.error(b"ERR DB index is out of range"),
                None => not_integer(out),
            }
        } else if is(name, "quit") {
            out.ok();
            return Action::Close;
        } else if is(name, "calc") {
            if n < 2 {
                wrong_args(out, "calc");
                return Action::Done;
            }
            return Action::Calc;
        } else if is(name, "debug") {
            if !self.debug {
                out.error(b"ERR DEBUG command not allowed (set debug = true in the daemon's args)");
                return Action::Done;
            }
            return debug(out, buf, args);
        } else {
            unknown(out, buf, args);
        }
        Action::Done
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
        out.array(2 * count);
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
        t.raw(b"# Server\r\nredis_version:7.0.0-forkroot\r\nredis_mode:standalone\r\nprocess_id:");
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
        out.bulk(&tmp[..len]);
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

/// INCR/DECR give their fixed delta; INCRBY/DECRBY give 0 (delta in arg 2).
fn incr_kind(name: &[u8]) -> Option<i64> {
    if is(name, "incr") {
        Some(1)
    } else if is(name, "decr") {
        Some(-1)
    } else if is(name, "incrby") || is(name, "decrby") {
        Some(0)
    } else {
        None
    }
}

fn incr_name(name: &[u8]) -> &'static str {
    ["incr", "decr", "incrby", "decrby"]
        .into_iter()
        .find(|c| is(name, c))
        .unwrap_or("incr")
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
