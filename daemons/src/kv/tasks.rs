//! The kv daemon's transactions: CALC and DEBUG TXCRASH run in a forked
//! copy of the daemon ([`forkroot::transaction`]), and the connection that
//! asked waits for the reply without blocking the others.
//!
//! The child computes the whole RESP reply (`:7\r\n`, or a committed error
//! such as `-ERR division by zero\r\n`) into its result slot; a child that
//! crashes is retried, and an input that crashed it `QUARANTINE_AFTER`
//! times is refused from then on. Transactions never touch the table (it
//! is shared memory the daemon keeps writing, not a snapshot): CALC's keys
//! are resolved by the daemon before the fork ([`calc::resolve`]).

use std::os::fd::RawFd;
use std::time::Duration;

use forkroot::transaction::{Done, Output, Policy, StartError, Transactions, TxError};
use forkroot::ExitReason;

use super::calc;
use super::resp::Out;
use super::store;

/// Largest CALC input (the arguments joined by spaces).
pub(crate) const MAX_INPUT: usize = 64 * 1024;
/// Transactions in flight at once.
const SLOTS: usize = 8;
/// Largest reply a transaction commits.
const MAX_RESULT: usize = 128;
/// Attempts of one transaction (a crashed one is retried).
const ATTEMPTS: u32 = 3;
/// Crashes of one input (over all its transactions) after which it is
/// refused: a first CALC that crashes is answered "crashed after 3
/// attempts", the next with the same input "quarantined".
const QUARANTINE_AFTER: u32 = ATTEMPTS + 1;

/// What a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Task {
    /// Evaluate an expression.
    Calc,
    /// Crash on purpose.
    Crash,
    /// Sleep for the ms in the input, then reply `+OK`.
    Sleep,
}

/// The transactions in flight.
#[derive(Debug)]
pub(crate) struct Tasks<'a> {
    tx: Transactions<'a>,
    /// Keys for DEBUG TXCRASH, a new one each time, so it is never
    /// quarantined.
    crash_key: u64,
}

impl<'a> Tasks<'a> {
    /// Bytes of state the transactions take.
    pub(crate) const fn required_size() -> usize {
        Transactions::required_size(SLOTS, MAX_INPUT, MAX_RESULT)
    }

    /// Transactions over `area` (carved off the state).
    pub(crate) fn new(area: &'a mut [u8], name: &str) -> std::io::Result<Tasks<'a>> {
        let policy = Policy {
            deadline: Duration::from_secs(5),
            retries: ATTEMPTS - 1,
            retry_backoff: Duration::from_millis(10),
            quarantine_after: QUARANTINE_AFTER,
        };
        let tx = Transactions::new(area, SLOTS, MAX_INPUT, MAX_RESULT, policy, name)?;
        Ok(Tasks { tx, crash_key: 0 })
    }

    /// A descriptor that becomes readable when a transaction ends.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        Some(self.tx.fd())
    }

    /// When [`Tasks::poll`] must run at the latest.
    pub(crate) fn next_timer(&self) -> Option<Duration> {
        self.tx.next_timer()
    }

    /// Starts `task` on `input`; `tag` comes back with its reply. `false`:
    /// not started, an error reply was written to `out`.
    pub(crate) fn start(&mut self, task: Task, input: &[u8], tag: u64, out: &mut Out<'_>) -> bool {
        let (f, key): (forkroot::transaction::Task, u64) = match task {
            Task::Calc => (calc_task, store::hash(input)),
            Task::Crash => {
                self.crash_key += 1;
                (crash_task, self.crash_key | 1 << 63)
            }
            Task::Sleep => (sleep_task, 1 << 62),
        };
        match self.tx.start(f, input, key, tag) {
            Ok(_) => true,
            Err(StartError::NoFreeSlot) => {
                out.error(b"ERR too many transactions in flight, try again");
                false
            }
            Err(StartError::InputTooLarge) => {
                out.error(b"ERR expression too long");
                false
            }
            Err(StartError::Quarantined { crashes }) => {
                out.raw(b"-ERR input quarantined after ");
                out.num(i64::from(crashes));
                out.raw(b" crashes\r\n");
                false
            }
            Err(StartError::Fork(_)) => {
                out.error(b"ERR cannot fork a transaction");
                false
            }
        }
    }

    /// Calls `done(tag, reply)` for every transaction that ended.
    pub(crate) fn poll(&mut self, mut done: impl FnMut(u64, &[u8])) {
        self.tx.poll(|d: Done<'_>| match d.result {
            Ok(reply) => done(d.tag, reply),
            Err(e) => {
                let mut buf = [0u8; 256];
                let mut out = Out::new(&mut buf, 0);
                describe(&mut out, e);
                let n = out.len();
                done(d.tag, &buf[..n]);
            }
        });
    }
}

/// The error reply for a failed transaction, e.g. `-ERR transaction
/// crashed (killed by SIGSEGV) after 3 attempts`.
fn describe(out: &mut Out<'_>, e: TxError) {
    let attempts = |out: &mut Out<'_>, n: u32| {
        out.raw(b" after ");
        out.num(i64::from(n));
        out.raw(if n == 1 {
            b" attempt\r\n"
        } else {
            b" attempts\r\n"
        });
    };
    match e {
        TxError::Crashed {
            reason,
            attempts: n,
        } => {
            out.raw(b"-ERR transaction crashed (");
            match reason {
                ExitReason::Signaled { signal, .. } => {
                    out.raw(b"killed by ");
                    // Only a real-time signal has a formatted name.
                    forkroot::alloc::allow(|| out.raw(signal.name().as_bytes()));
                }
                ExitReason::Exited(code) => {
                    out.raw(b"exited with code ");
                    out.num(i64::from(code));
                }
                ExitReason::SetupFailed { .. } => out.raw(b"could not be forked"),
                // Daemons' reasons; a transaction never ends with these.
                ExitReason::Watchdog | ExitReason::StartTimeout => out.raw(b"killed by the root"),
            }
            out.raw(b")");
            attempts(out, n);
        }
        TxError::Deadline { attempts: n } => {
            out.raw(b"-ERR transaction passed its deadline");
            attempts(out, n);
        }
        TxError::NoCommit => out.error(b"ERR transaction ended without a result"),
        TxError::Quarantined { crashes } => {
            out.raw(b"-ERR input quarantined after ");
            out.num(i64::from(crashes));
            out.raw(b" crashes\r\n");
        }
    }
}

/// In the transaction: evaluates the expression over the snapshot and
/// commits the RESP reply.
fn calc_task(input: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    // Keys were resolved by the daemon: any `$` left is a syntax error.
    let lookup = |_: &[u8]| -> Result<Option<i64>, ()> { Ok(None) };
    let mut buf = [0u8; 96];
    let mut reply = Out::new(&mut buf, 0);
    match calc::eval(input, &lookup) {
        Ok(v) => reply.int(v),
        Err(e) => {
            let mut m = [0u8; 64];
            reply.error(e.message(&mut m));
        }
    }
    let n = reply.len();
    out.write(&buf[..n]).map_err(|_| ())
}

/// In the transaction: crashes (DEBUG TXCRASH).
fn crash_task(_input: &[u8], _out: &mut Output<'_>) -> Result<(), ()> {
    forkroot::sys::die_by(forkroot::Signal::SEGV)
}

/// In the transaction: sleeps the input's ms, then commits `+OK`
/// (DEBUG TXSLEEP: a slow transaction, to show the daemon is not blocked).
fn sleep_task(input: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    let ms = store::parse_int(input).unwrap_or(0).max(0) as u64;
    std::thread::sleep(Duration::from_millis(ms));
    out.write(b"+OK\r\n").map_err(|_| ())
}
