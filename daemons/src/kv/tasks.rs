//! The kv daemon's transactions: CALC and DEBUG TXCRASH run in a forked
//! copy of the daemon, and the connection that asked waits for the reply
//! without blocking the others.
//!
//! Placeholder until the library's transaction module lands: every start
//! is refused with an error reply.

use std::os::fd::RawFd;
use std::time::Duration;

use super::resp::Out;
use super::store::Store;

/// Largest CALC input (the arguments joined by spaces).
pub(crate) const MAX_INPUT: usize = 64 * 1024;

/// Where the table is, for transactions (which read it in their
/// copy-on-write snapshot): address, length, geometry.
static SNAPSHOT: std::sync::OnceLock<(usize, usize, Store)> = std::sync::OnceLock::new();

/// Records where the table is (once, at start-up).
pub(crate) fn set_snapshot(data: &[u8], store: Store) {
    let _ = SNAPSHOT.set((data.as_ptr() as usize, data.len(), store));
}

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
pub(crate) struct Tasks {}

impl Tasks {
    /// Bytes of state the transactions take.
    pub(crate) const fn required_size() -> usize {
        0
    }

    /// Transactions over `area` (carved off the state).
    pub(crate) fn new(_area: &mut [u8], _name: &str) -> std::io::Result<Tasks> {
        Ok(Tasks {})
    }

    /// A descriptor that becomes readable when a transaction ends.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        None
    }

    /// When [`Tasks::poll`] must run at the latest.
    pub(crate) fn next_timer(&self) -> Option<Duration> {
        None
    }

    /// Starts `task` on `input`; `tag` comes back with its reply. `false`:
    /// not started, an error reply was written to `out`.
    pub(crate) fn start(
        &mut self,
        _task: Task,
        _input: &[u8],
        _tag: u64,
        out: &mut Out<'_>,
    ) -> bool {
        out.error(b"ERR transactions are not available");
        false
    }

    /// Calls `done(tag, reply)` for every transaction that ended.
    pub(crate) fn poll(&mut self, _done: impl FnMut(u64, &[u8])) {}
}
