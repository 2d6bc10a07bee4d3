//! Transactions: a daemon forks itself to run risky work.
//!
//! A daemon hands a [`Task`] and its input to [`Transactions::start`]. The
//! task runs in a forked child, a copy-on-write snapshot of the daemon that
//! may allocate and start threads, and returns its result through a
//! preallocated slot in the daemon's region. The daemon learns that a
//! transaction ended through a descriptor in its poll loop
//! ([`Transactions::fd`]), and [`Transactions::poll`] hands it the outcome.
//! The daemon applies results itself, so its region keeps one writer.
//!
//! ```no_run
//! use forkroot::transaction::{Output, Policy, Transactions};
//!
//! fn double(input: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
//!     let n = u64::from_le_bytes(input.try_into().map_err(|_| ())?);
//!     out.write(&(2 * n).to_le_bytes()).map_err(|_| ())
//! }
//!
//! fn daemon(ctx: &mut forkroot::Context<'_>) -> i32 {
//!     let size = Transactions::required_size(4, 64, 64);
//!     let area = ctx.split_state(size).expect("memory too small");
//!     let mut tx = Transactions::new(area, 4, 64, 64, Policy::default(), ctx.name())
//!         .expect("transactions");
//!     tx.start(double, &21u64.to_le_bytes(), 21, 0).expect("start");
//!     // ... in the poll loop, when tx.fd() is readable or tx.next_timer() passed:
//!     tx.poll(|done| {
//!         if let Ok(result) = done.result {
//!             assert_eq!(result, 42u64.to_le_bytes());
//!         }
//!     });
//!     0
//! }
//! ```
//!
//! # What the child sees
//!
//! The child is a copy-on-write snapshot of the daemon's *private* memory
//! (its heap, stack and statics) at the fork. Shared memory is not
//! snapshotted: the daemon's region, this module's slots included, is the
//! same memory in both processes, so a task that reads the daemon's state
//! from the region sees the daemon's later writes as they happen (and may
//! see a write half done). A task that needs a consistent view of shared
//! state gets it through its input, or reads structures built for
//! concurrent readers.
//!
//! # Success is detected, not failure
//!
//! A transaction succeeds only when its child *committed* a result (the
//! task returned `Ok`, and the library wrote the length, a crc32 and then,
//! last, the commit word into the slot) and the daemon, after reaping the
//! child, finds the commit word of this very attempt and a crc that
//! verifies. Everything else is a failed attempt: a signal, a non-zero
//! exit, an exit without a commit ([`TxError::NoCommit`]: the task returned
//! `Err(())`, or the process exited 0 before the commit), a result that does
//! not verify (also `NoCommit`), or the deadline. A result that is
//! committed and verifies is a success *whatever the exit status*: it is
//! complete, and a crash after the commit (in a destructor, or a kill that
//! raced the exit) cannot have changed it without the crc noticing.
//!
//! # Slot layout
//!
//! ```text
//! area:  | AreaHeader (64 B) | slot 0 | slot 1 | ... | slot N-1 |
//! slot:  | SlotHeader (64 B) | input (max_input, rounded up to 64) | result (max_result, rounded up to 64) |
//! ```
//!
//! The area must be 8-byte aligned ([`crate::Context::split_state`] gives
//! 64-byte aligned areas). [`Transactions::new`] stamps the area header and
//! clears every slot header, so slots left behind by a crashed predecessor
//! (whose transactions died with it) are never read.
//!
//! # Commit protocol
//!
//! Before each fork the daemon writes the attempt's identity into the slot
//! header (`id`, `attempt`, `input_len`) and sets `commit` to 0. The child
//! writes the result bytes, then `len` and `crc` (Relaxed), then stores
//! `commit = COMMIT_TAG << 32 | attempt` with Release. The crc covers the
//! transaction id (16 bytes LE), the attempt (4 bytes LE), the length (8
//! bytes LE) and the result bytes, so neither a stale commit of an older
//! transaction nor bytes torn by a wild write can pass for this one.
//!
//! The daemon reads the slot only after it reaped the child (`waitid`
//! synchronizes with the child's exit), so no writer of the slot is left:
//! the Release store orders the data before the commit word in the compiled
//! code, and a child killed at any instruction leaves either no commit word
//! (a failed attempt) or a complete result behind it (the crash model of
//! [`crate::checkpoint`]: a killed process's stores form a prefix of its
//! program order). A process the task itself forked could still write into
//! the slot after the commit; the crc is what catches that.
//!
//! # The child's setup, in order
//!
//! Between `fork` and the task, the child makes only fork-safe calls:
//!
//! 1. `PR_SET_PDEATHSIG = SIGKILL`, then checks `getppid()` against the
//!    daemon's pid (the daemon may have died before the prctl): exit 127 if
//!    it changed. So a transaction never outlives its daemon. It stays in
//!    the daemon's process group, so the root's `killpg` at a stop or a
//!    restart reaches it too.
//! 2. Crash signals get their default action; the signal mask is emptied
//!    (the daemon blocks SIGTERM and SIGCHLD): a SIGTERM to the daemon's
//!    group ends a transaction at once, as a throwaway snapshot has nothing
//!    to save.
//! 3. Every descriptor from 3 up is closed (the daemon's listening socket,
//!    its clients' connections, its signalfds): a transaction must not keep
//!    a client's connection half alive after its daemon died, and its result
//!    goes through shared memory anyway. 0, 1 and 2 stay.
//! 4. `ps` shows it as `forkroot: NAME tx`; its flight-log records carry the
//!    transaction id ([`crate::trace::set_transaction`]).
//! 5. Allocation policy `Count`: the child may allocate (it is a throwaway
//!    copy-on-write snapshot of a single-threaded daemon, so the allocator's
//!    locks are free), and may start threads.
//! 6. The task runs; a panic is turned into SIGABRT (it must not unwind back
//!    into the daemon's code). `Ok` commits and exits 0; `Err` exits 0
//!    without committing.
//!
//! # Policy: the state of a slot
//!
//! | state | event | action | next |
//! |---|---|---|---|
//! | Free | `start` | copy input, fork attempt 1 | Running |
//! | Running | reaped, commit verifies | `done(Ok)`, forgive the key | Free |
//! | Running | reaped, crash or no commit | count a crash for the key | quarantined: `done(Quarantined)`, Free; retries left: Backoff; else `done(Crashed/NoCommit)`, Free |
//! | Running | reaped, killed by SIGTERM | — (the supervisor is stopping the daemon's group; not counted) | `done(Crashed)`, Free |
//! | Running | deadline passed | SIGKILL | Killed |
//! | Killed | reaped, commit verifies | `done(Ok)` | Free |
//! | Killed | reaped, otherwise | — (deadlines do not count as crashes) | retries left: Backoff; else `done(Deadline)`, Free |
//! | Backoff | due | key quarantined meanwhile: `done(Quarantined)`; input changed: `done(last error)`; else fork the next attempt (a failed fork is a failed attempt) | Running |
//!
//! - Deadlines apply to each attempt.
//! - Retry `n` (1-based) waits `retry_backoff * 2^(n-1)` (the factor capped
//!   at 64), timed through [`Transactions::next_timer`]; nothing sleeps.
//! - Quarantine counts crashes per input `key`: signals (any but SIGTERM,
//!   including a SIGKILL from outside, such as the OOM killer's), non-zero
//!   exits, exits without a commit and results that do not verify. Deadlines do not count: a slow attempt may be
//!   the machine's fault rather than the input's. A verified success resets
//!   the key's count. Once a key reaches `quarantine_after` crashes it is
//!   quarantined: the transaction ends with [`TxError::Quarantined`] and
//!   [`Transactions::start`] refuses the key until
//!   [`Transactions::pardon`]. The table holds [`QUARANTINE_ENTRIES`] keys;
//!   when full, the least recently updated entry is evicted.
//!
//! # Signals and children
//!
//! [`Transactions::new`] blocks SIGCHLD and reads it through a signalfd;
//! SIGCHLD is coalesced, so [`Transactions::poll`] checks every busy slot's
//! pid with `waitid(P_PID, WNOHANG)` and never reaps a child that is not a
//! transaction. A daemon with other children of its own must reap them
//! itself (by pid) and must not consume SIGCHLD elsewhere. For the same
//! reason a process has one `Transactions` (a second one's signalfd would
//! compete for the same coalesced signal; if there must be two, poll both
//! whenever either descriptor is readable).

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::daemon::{ExitReason, SetupStage};
use crate::region::Plain;
use crate::sys::{self, Forked, Pid, SigSet, Signal, WaitStatus};

/// `"FKROOTTX"`: the first word of an area laid out by [`Transactions::new`].
pub const AREA_MAGIC: u64 = u64::from_le_bytes(*b"FKROOTTX");
/// Layout version of the area.
pub const AREA_LAYOUT: u32 = 1;
/// Keys the quarantine table remembers.
pub const QUARANTINE_ENTRIES: usize = 256;
/// Exit code of a transaction child whose setup failed (its daemon was
/// gone before it could arm its death signal).
pub const SETUP_FAILED: i32 = 127;

/// High half of a commit word (`"TXOK"`); the low half is the attempt.
const COMMIT_TAG: u64 = u32::from_le_bytes(*b"TXOK") as u64;
/// Size of the area header and of a slot header.
const LINE: usize = 64;
/// Largest factor of the retry backoff.
const MAX_BACKOFF_SHIFT: u32 = 6;

const fn round64(n: usize) -> usize {
    n.div_ceil(LINE) * LINE
}

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// What happens to a transaction that fails, and how long it may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Each attempt is SIGKILLed when it runs longer than this.
    pub deadline: Duration,
    /// Attempts after the first one, for crashed, uncommitted or overdue
    /// attempts.
    pub retries: u32,
    /// Wait before the first retry; doubles for each further one (up to 64
    /// times this).
    pub retry_backoff: Duration,
    /// An input key is quarantined after this many crashes (0: never).
    pub quarantine_after: u32,
}

impl Default for Policy {
    /// Deadline 5 s, 2 retries, backoff 10 ms, quarantine after 3 crashes.
    fn default() -> Policy {
        Policy {
            deadline: Duration::from_secs(5),
            retries: 2,
            retry_backoff: Duration::from_millis(10),
            quarantine_after: 3,
        }
    }
}

/// A task runs in the forked child: it reads its input and writes its
/// result into `out` (at most the slot's result size). `Ok(())` commits the
/// result; `Err(())` ends the attempt without committing (a failed attempt,
/// [`TxError::NoCommit`]). A deterministic refusal of bad input (a syntax
/// error) is better committed as a result: it is not worth a retry.
pub type Task = fn(input: &[u8], out: &mut Output<'_>) -> Result<(), ()>;

/// A result does not fit in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// Bytes the result would need.
    pub need: usize,
    /// Bytes the slot holds.
    pub capacity: usize,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "result of {} bytes does not fit in a {}-byte slot",
            self.need, self.capacity
        )
    }
}

impl std::error::Error for TooLarge {}

/// The result being built in a transaction's slot (in shared memory).
#[derive(Debug)]
pub struct Output<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Output<'a> {
    /// An output over `buf`, empty. (Transactions get theirs from the
    /// library; this is for calling a task directly, as in a unit test.)
    pub fn new(buf: &'a mut [u8]) -> Output<'a> {
        Output { buf, len: 0 }
    }

    /// Appends `bytes`; nothing is written if they do not fit.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), TooLarge> {
        let need = self.len + bytes.len();
        if need > self.buf.len() {
            return Err(TooLarge {
                need,
                capacity: self.buf.len(),
            });
        }
        self.buf[self.len..need].copy_from_slice(bytes);
        self.len = need;
        Ok(())
    }

    /// The most bytes a result may have.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of the result so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the result is empty so far.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The result so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The whole slot, [`Output::capacity`] bytes, to fill in place; then
    /// [`Output::set_len`] says how much of it is the result.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.buf
    }

    /// Declares the first `len` bytes of the slot the result.
    pub fn set_len(&mut self, len: usize) -> Result<(), TooLarge> {
        if len > self.buf.len() {
            return Err(TooLarge {
                need: len,
                capacity: self.buf.len(),
            });
        }
        self.len = len;
        Ok(())
    }

    /// Empties the result.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// A transaction's id: a uuid v4, the correlation id in every log and
/// trace record of the transaction. Displays as the uuid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub u128);

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_u128(self.0).hyphenated(), f)
    }
}

/// Why [`Transactions::start`] refused.
#[derive(Debug)]
pub enum StartError {
    /// Every slot holds a transaction in flight.
    NoFreeSlot,
    /// The input is longer than a slot's input area.
    InputTooLarge,
    /// The input's key crashed its transactions `crashes` times.
    Quarantined {
        /// Crashes counted for the key.
        crashes: u32,
    },
    /// fork failed (the slot stays free).
    Fork(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::NoFreeSlot => f.write_str("no free transaction slot"),
            StartError::InputTooLarge => f.write_str("input larger than a transaction slot"),
            StartError::Quarantined { crashes } => {
                write!(f, "input quarantined after {crashes} crashes")
            }
            StartError::Fork(e) => write!(f, "cannot fork a transaction: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Why a transaction failed, after its last attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxError {
    /// The last attempt ended abnormally (a signal or a non-zero exit), or
    /// it could not be forked (`SetupFailed { stage: Fork, .. }`).
    Crashed {
        /// How the last attempt ended.
        reason: ExitReason,
        /// Attempts made.
        attempts: u32,
    },
    /// The last attempt ran past the deadline and was killed.
    Deadline {
        /// Attempts made.
        attempts: u32,
    },
    /// The last attempt exited without a committed result that verifies
    /// (the task returned `Err(())`, exited early, or its result was
    /// corrupted after the commit).
    NoCommit,
    /// The input's key reached the quarantine threshold: no more attempts.
    Quarantined {
        /// Crashes counted for the key.
        crashes: u32,
    },
}

impl fmt::Display for TxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxError::Crashed { reason, attempts } => {
                write!(f, "transaction {reason} (after {attempts} attempts)")
            }
            TxError::Deadline { attempts } => {
                write!(f, "transaction deadline passed (after {attempts} attempts)")
            }
            TxError::NoCommit => f.write_str("transaction ended without a committed result"),
            TxError::Quarantined { crashes } => {
                write!(f, "input quarantined after {crashes} crashes")
            }
        }
    }
}

impl std::error::Error for TxError {}

/// A finished transaction, handed to the callback of [`Transactions::poll`].
#[derive(Debug)]
pub struct Done<'a> {
    /// Its id.
    pub id: TxId,
    /// The caller's tag given to `start`.
    pub tag: u64,
    /// The input key given to `start`.
    pub key: u64,
    /// Attempts made (1 if the first one succeeded).
    pub attempts: u32,
    /// The committed, verified result (valid during the callback: the slot
    /// is reused afterwards), or why there is none.
    pub result: Result<&'a [u8], TxError>,
}

// ---------------------------------------------------------------------------
// Shared layout
// ---------------------------------------------------------------------------

/// The first 64 bytes of the area: what a reader (a debugger, a future
/// inspector) needs to find the slots. The daemon itself trusts only its
/// private bookkeeping.
#[repr(C)]
#[derive(Debug)]
struct AreaHeader {
    magic: AtomicU64,
    layout: AtomicU32,
    slots: AtomicU32,
    max_input: AtomicU64,
    max_result: AtomicU64,
    _reserved: [u64; 4],
}

/// One slot's header (64 bytes, followed by the input and result areas).
#[repr(C)]
#[derive(Debug)]
struct SlotHeader {
    /// 0, or `COMMIT_TAG << 32 | attempt` once the child committed. Set to
    /// 0 by the daemon before each fork; stored last, with Release, by the
    /// child.
    commit: AtomicU64,
    /// Result length; written by the child before `commit`.
    len: AtomicU64,
    /// crc32 over id, attempt, len and the result; written before `commit`.
    crc: AtomicU32,
    /// Attempt number (1-based); written by the daemon before each fork.
    attempt: AtomicU32,
    /// Transaction id, low and high halves; written by the daemon.
    id_lo: AtomicU64,
    id_hi: AtomicU64,
    /// Input length; written by the daemon at start.
    input_len: AtomicU64,
    /// Pid of the current attempt (informational); written by the daemon.
    pid: AtomicU32,
    _reserved: [u32; 3],
}

// SAFETY: repr(C), atomic integers and integers only; any bits are valid.
unsafe impl Plain for AreaHeader {}
// SAFETY: repr(C), atomic integers and integers only; any bits are valid.
unsafe impl Plain for SlotHeader {}

const _: () = assert!(size_of::<AreaHeader>() == LINE && size_of::<SlotHeader>() == LINE);

fn result_crc(id: u128, attempt: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(&attempt.to_le_bytes());
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
    h.finalize()
}

// ---------------------------------------------------------------------------
// Private bookkeeping
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Phase {
    Free,
    /// An attempt runs as `pid`, killed at `deadline_ns` (monotonic).
    Running {
        pid: Pid,
        deadline_ns: u64,
    },
    /// Killed for its deadline, not reaped yet.
    Killed {
        pid: Pid,
    },
    /// Waiting to retry at `due_ns`; `last` is the previous attempt's error.
    Backoff {
        due_ns: u64,
        last: TxError,
    },
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    phase: Phase,
    id: u128,
    task: Option<Task>,
    key: u64,
    tag: u64,
    attempts: u32,
    input_len: usize,
    input_crc: u32,
}

const FREE: Slot = Slot {
    phase: Phase::Free,
    id: 0,
    task: None,
    key: 0,
    tag: 0,
    attempts: 0,
    input_len: 0,
    input_crc: 0,
};

#[derive(Debug, Clone, Copy, Default)]
struct Quarantine {
    key: u64,
    crashes: u32,
    /// Last update (a counter); 0: unused entry.
    stamp: u64,
}

/// How an attempt ended, as [`Transactions::poll`] judges it.
enum Verdict {
    /// The result verified with this length (read once: a process the task
    /// forked could still change the header afterwards).
    Committed(usize),
    /// `crash`: counts towards the key's quarantine; `final_`: no retry.
    Failed {
        error: TxError,
        crash: bool,
        final_: bool,
    },
}

/// A daemon's transactions: slots in its region, bookkeeping in its private
/// memory. Lives in the daemon (not shared); dropping it kills and reaps
/// every transaction in flight.
pub struct Transactions<'a> {
    base: NonNull<u8>,
    _area: PhantomData<&'a mut [u8]>,
    slots: Vec<Slot>,
    max_input: usize,
    max_result: usize,
    stride: usize,
    policy: Policy,
    quarantine: Vec<Quarantine>,
    clock: u64,
    sigchld: sys::SignalFd,
    /// `forkroot: NAME tx`.
    title: Vec<u8>,
    busy: usize,
}

impl fmt::Debug for Transactions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transactions")
            .field("slots", &self.slots.len())
            .field("in_flight", &self.busy)
            .field("max_input", &self.max_input)
            .field("max_result", &self.max_result)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<'a> Transactions<'a> {
    /// Bytes an area for `slots` slots of these sizes needs.
    pub const fn required_size(slots: usize, max_input: usize, max_result: usize) -> usize {
        LINE + slots * (LINE + round64(max_input) + round64(max_result))
    }

    /// Lays `slots` slots (input and result areas) over `area`, which must
    /// be shared memory (the daemon's state, from
    /// [`crate::Context::split_state`]), 8-byte aligned and at least
    /// [`Transactions::required_size`] bytes. Blocks SIGCHLD and makes a
    /// signalfd for it; `name` is the daemon's, for `ps`. Allocates the
    /// bookkeeping: call it during start-up, before `Context::steady`.
    pub fn new(
        area: &'a mut [u8],
        slots: usize,
        max_input: usize,
        max_result: usize,
        policy: Policy,
        name: &str,
    ) -> io::Result<Transactions<'a>> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
        if slots == 0 || slots > u32::MAX as usize {
            return Err(invalid("transactions: need at least one slot"));
        }
        if area.len() < Self::required_size(slots, max_input, max_result) {
            return Err(invalid("transactions: area smaller than required_size"));
        }
        if area.as_ptr() as usize % 8 != 0 {
            return Err(invalid("transactions: area not 8-byte aligned"));
        }
        // Children must stay zombies until poll reaps them (SIG_IGN would
        // have the kernel reap them, losing their exit status).
        sys::default_signal(Signal::CHLD);
        let set = SigSet::of(&[Signal::CHLD]);
        set.block()?;
        let sigchld = set.signalfd()?;
        let mut title = b"forkroot: ".to_vec();
        title.extend_from_slice(name.as_bytes());
        title.extend_from_slice(b" tx");
        let tx = Transactions {
            base: NonNull::new(area.as_mut_ptr()).expect("a slice's pointer is not null"),
            _area: PhantomData,
            slots: vec![FREE; slots],
            max_input,
            max_result,
            stride: LINE + round64(max_input) + round64(max_result),
            policy,
            quarantine: vec![Quarantine::default(); QUARANTINE_ENTRIES],
            clock: 0,
            sigchld,
            title,
            busy: 0,
        };
        let h = tx.area_header();
        h.magic.store(0, Ordering::Relaxed);
        for i in 0..slots {
            let s = tx.header(i);
            for w in [&s.commit, &s.len, &s.id_lo, &s.id_hi, &s.input_len] {
                w.store(0, Ordering::Relaxed);
            }
            for w in [&s.crc, &s.attempt, &s.pid] {
                w.store(0, Ordering::Relaxed);
            }
        }
        h.layout.store(AREA_LAYOUT, Ordering::Relaxed);
        h.slots.store(slots as u32, Ordering::Relaxed);
        h.max_input.store(max_input as u64, Ordering::Relaxed);
        h.max_result.store(max_result as u64, Ordering::Relaxed);
        h.magic.store(AREA_MAGIC, Ordering::Release);
        Ok(tx)
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Changes the policy for transactions started from now on (and for
    /// the retries and deadlines of those in flight).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Starts `task` on `input` in a forked child and returns its id at
    /// once. `key` identifies the input for quarantine (a hash of it, say);
    /// `tag` is the caller's own and comes back in [`Done`]. Never blocks;
    /// allocates nothing.
    pub fn start(
        &mut self,
        task: Task,
        input: &[u8],
        key: u64,
        tag: u64,
    ) -> Result<TxId, StartError> {
        if input.len() > self.max_input {
            return Err(StartError::InputTooLarge);
        }
        if let Some(crashes) = self.quarantined(key) {
            return Err(StartError::Quarantined { crashes });
        }
        let Some(i) = self
            .slots
            .iter()
            .position(|s| matches!(s.phase, Phase::Free))
        else {
            return Err(StartError::NoFreeSlot);
        };
        let id = uuid::Uuid::new_v4().as_u128();
        // SAFETY: slot i is free: no child writes it, and no `Done` borrows
        // it (poll holds `&mut self` while it lends one out).
        let dst = unsafe { self.input_mut(i) };
        dst[..input.len()].copy_from_slice(input);
        let h = self.header(i);
        h.id_lo.store(id as u64, Ordering::Relaxed);
        h.id_hi.store((id >> 64) as u64, Ordering::Relaxed);
        h.input_len.store(input.len() as u64, Ordering::Relaxed);
        self.slots[i] = Slot {
            phase: Phase::Free,
            id,
            task: Some(task),
            key,
            tag,
            attempts: 0,
            input_len: input.len(),
            input_crc: crc32fast::hash(input),
        };
        match self.fork_attempt(i) {
            Ok(()) => {
                tracing::debug!(tx = %TxId(id), key, "transaction started");
                Ok(TxId(id))
            }
            Err(e) => {
                self.slots[i] = FREE;
                Err(StartError::Fork(e))
            }
        }
    }

    /// A descriptor that becomes readable when a transaction ended (a
    /// signalfd for SIGCHLD): watch it in the daemon's poll loop and call
    /// [`Transactions::poll`] when it is readable.
    pub fn fd(&self) -> RawFd {
        self.sigchld.as_raw_fd()
    }

    /// Time until the earliest deadline or retry, for the poll loop's
    /// timeout (`Some(ZERO)` if one is due); `None` when no timer is needed.
    pub fn next_timer(&self) -> Option<Duration> {
        let next = self
            .slots
            .iter()
            .filter_map(|s| match s.phase {
                Phase::Running { deadline_ns, .. } => Some(deadline_ns),
                Phase::Backoff { due_ns, .. } => Some(due_ns),
                Phase::Free | Phase::Killed { .. } => None,
            })
            .min()?;
        Some(Duration::from_nanos(
            next.saturating_sub(sys::monotonic_ns()),
        ))
    }

    /// Reaps ended attempts, kills those past their deadline, forks retries
    /// that are due, and calls `done` once for each transaction that
    /// finished. Never blocks; allocates nothing (unless `done` does).
    pub fn poll(&mut self, mut done: impl FnMut(Done<'_>)) {
        // Drain the signalfd: SIGCHLD is coalesced, so it only says "look".
        while let Ok(Some(_)) = self.sigchld.read() {}
        for i in 0..self.slots.len() {
            let (pid, killed) = match self.slots[i].phase {
                Phase::Running { pid, .. } => (pid, false),
                Phase::Killed { pid } => (pid, true),
                _ => continue,
            };
            let status = match sys::reap_pid(pid) {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(e) => {
                    crate::alloc::allow(
                        || tracing::error!(error = %e, pid = pid.as_raw(), "cannot reap a transaction"),
                    );
                    continue;
                }
            };
            self.header(i).pid.store(0, Ordering::Relaxed);
            let verdict = self.judge(i, status, killed);
            self.settle(i, verdict, &mut done);
        }
        let now = sys::monotonic_ns();
        for i in 0..self.slots.len() {
            match self.slots[i].phase {
                Phase::Running { pid, deadline_ns } if now >= deadline_ns => {
                    // Not reaped yet, so the pid cannot have been reused.
                    let _ = sys::kill(pid, Signal::KILL);
                    self.slots[i].phase = Phase::Killed { pid };
                    let (id, attempt) = (self.slots[i].id, self.slots[i].attempts);
                    crate::alloc::allow(
                        || tracing::warn!(tx = %TxId(id), attempt, "transaction past its deadline: killed"),
                    );
                }
                Phase::Backoff { due_ns, last } if now >= due_ns => self.retry(i, last, &mut done),
                _ => {}
            }
        }
    }

    /// Transactions started and not yet handed to `done`.
    pub fn in_flight(&self) -> usize {
        self.busy
    }

    /// Crashes counted for `key` if it is quarantined.
    pub fn quarantined(&self, key: u64) -> Option<u32> {
        let after = self.policy.quarantine_after;
        if after == 0 {
            return None;
        }
        self.quarantine
            .iter()
            .find(|q| q.stamp != 0 && q.key == key && q.crashes >= after)
            .map(|q| q.crashes)
    }

    /// Forgets the crashes of `key` (lifts its quarantine).
    pub fn pardon(&mut self, key: u64) {
        for q in &mut self.quarantine {
            if q.stamp != 0 && q.key == key {
                *q = Quarantine::default();
            }
        }
    }

    // -- internals ----------------------------------------------------------

    fn area_header(&self) -> &AreaHeader {
        // SAFETY: the area is at least LINE bytes, 8-byte aligned (checked
        // in `new`), borrowed for 'a, and AreaHeader is Plain (atomics only).
        unsafe { self.base.cast::<AreaHeader>().as_ref() }
    }

    fn slot_base(&self, i: usize) -> *mut u8 {
        debug_assert!(i < self.slots.len());
        // SAFETY: i < slots, so the offset stays inside the area
        // (`required_size` was checked in `new`).
        unsafe { self.base.as_ptr().add(LINE + i * self.stride) }
    }

    fn header(&self, i: usize) -> &SlotHeader {
        // SAFETY: the slot header lies inside the area, 8-byte aligned (the
        // area is, and LINE and stride are multiples of 64); SlotHeader is
        // Plain and only accessed through atomics.
        unsafe { &*self.slot_base(i).cast::<SlotHeader>() }
    }

    /// # Safety
    /// No child may be writing slot `i` and no other reference into its
    /// input may be live.
    #[allow(clippy::mut_from_ref)]
    unsafe fn input_mut(&self, i: usize) -> &mut [u8] {
        // SAFETY: the input area of slot i lies inside the area; exclusivity
        // is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.slot_base(i).add(LINE), self.max_input) }
    }

    fn input(&self, i: usize) -> &[u8] {
        // SAFETY: the input area lies inside the area; the daemon writes it
        // only in `start` (through `&mut self`), so it does not change while
        // this shared borrow of `self` lives. A child may scribble on it:
        // it is plain bytes, and retries check its crc.
        unsafe { std::slice::from_raw_parts(self.slot_base(i).add(LINE), self.slots[i].input_len) }
    }

    fn result_ptr(&self, i: usize) -> *mut u8 {
        // SAFETY: the result area follows the input area inside slot i.
        unsafe { self.slot_base(i).add(LINE + round64(self.max_input)) }
    }

    /// Forks the next attempt of slot `i`; on success the slot is Running.
    fn fork_attempt(&mut self, i: usize) -> io::Result<()> {
        let attempt = self.slots[i].attempts + 1;
        let h = self.header(i);
        h.commit.store(0, Ordering::Relaxed);
        h.len.store(0, Ordering::Relaxed);
        h.crc.store(0, Ordering::Relaxed);
        h.attempt.store(attempt, Ordering::Relaxed);
        let daemon = sys::getpid();
        // SAFETY: a daemon is single-threaded (the library's rule), so the
        // child inherits no lock held by another thread; it runs `child`,
        // which never returns.
        match unsafe { sys::fork()? } {
            Forked::Child => self.child(i, attempt, daemon),
            Forked::Parent(pid) => {
                let was_free = self.slots[i].attempts == 0;
                let s = &mut self.slots[i];
                s.attempts = attempt;
                s.phase = Phase::Running {
                    pid,
                    deadline_ns: sys::monotonic_ns().saturating_add(nanos(self.policy.deadline)),
                };
                if was_free {
                    self.busy += 1;
                }
                self.header(i).pid.store(pid.as_u32(), Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// The child of a fork: set up (fork-safe calls only), run the task,
    /// commit, exit.
    fn child(&mut self, i: usize, attempt: u32, daemon: Pid) -> ! {
        if crate::prologue::after_fork(daemon).is_err() {
            sys::exit_now(SETUP_FAILED);
        }
        let _ = SigSet::empty().set_mask();
        let _ = sys::close_from(3);
        sys::title::set(&self.title);
        let id = self.slots[i].id;
        crate::trace::set_transaction(id);
        let Some(task) = self.slots[i].task else {
            sys::exit_now(SETUP_FAILED)
        };
        // SAFETY: this process is the only writer of slot i's result area
        // (the daemon does not touch it while the attempt runs) and holds no
        // other reference into it.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.result_ptr(i), self.max_result) };
        let mut out = Output { buf, len: 0 };
        let input = self.input(i);
        // A panic must not unwind into the daemon's code: it is a crash.
        match crate::prologue::run_or_abort(|| task(input, &mut out)) {
            Ok(()) => {
                let len = out.len;
                let crc = result_crc(id, attempt, out.as_slice());
                let h = self.header(i);
                h.len.store(len as u64, Ordering::Relaxed);
                h.crc.store(crc, Ordering::Relaxed);
                // Publishes the result bytes, len and crc before the word.
                h.commit
                    .store(COMMIT_TAG << 32 | u64::from(attempt), Ordering::Release);
                sys::exit_now(0)
            }
            Err(()) => sys::exit_now(0),
        }
    }

    /// Judges an attempt of slot `i` that was reaped with `status`.
    fn judge(&self, i: usize, status: WaitStatus, killed: bool) -> Verdict {
        let s = &self.slots[i];
        let h = self.header(i);
        let commit = h.commit.load(Ordering::Acquire);
        if commit == COMMIT_TAG << 32 | u64::from(s.attempts) {
            let len = h.len.load(Ordering::Relaxed);
            if len <= self.max_result as u64 {
                // SAFETY: the child is reaped, so nothing writes the result
                // area (a process the task forked could: the crc catches it).
                let bytes = unsafe { std::slice::from_raw_parts(self.result_ptr(i), len as usize) };
                if result_crc(s.id, s.attempts, bytes) == h.crc.load(Ordering::Relaxed) {
                    return Verdict::Committed(len as usize);
                }
            }
            crate::alloc::allow(
                || tracing::warn!(tx = %TxId(s.id), attempt = s.attempts, "transaction result does not verify"),
            );
            return Verdict::Failed {
                error: TxError::NoCommit,
                crash: true,
                final_: false,
            };
        }
        if killed {
            return Verdict::Failed {
                error: TxError::Deadline {
                    attempts: s.attempts,
                },
                crash: false,
                final_: false,
            };
        }
        let error = match status {
            WaitStatus::Exited(0) => TxError::NoCommit,
            WaitStatus::Exited(code) => TxError::Crashed {
                reason: ExitReason::Exited(code),
                attempts: s.attempts,
            },
            WaitStatus::Signaled { signal, core } => TxError::Crashed {
                reason: ExitReason::Signaled { signal, core },
                attempts: s.attempts,
            },
        };
        // SIGTERM is the supervisor stopping the daemon's process group:
        // retrying would defeat the stop, and the input is not to blame.
        let stopped = matches!(
            status,
            WaitStatus::Signaled {
                signal: Signal::TERM,
                ..
            }
        );
        Verdict::Failed {
            error,
            crash: !stopped,
            final_: stopped,
        }
    }

    /// Applies the policy to a judged attempt of slot `i`.
    fn settle(&mut self, i: usize, verdict: Verdict, done: &mut impl FnMut(Done<'_>)) {
        let (error, crash, final_) = match verdict {
            Verdict::Committed(len) => {
                let key = self.slots[i].key;
                self.forgive(key);
                debug_assert!(len <= self.max_result);
                // SAFETY: `len` was checked against max_result in `judge`
                // (not re-read from shared memory), so the slice stays in the
                // slot's result area; the slot is not reused until `done`
                // returns (`&mut self` is held).
                let bytes = unsafe { std::slice::from_raw_parts(self.result_ptr(i), len) };
                self.finish(i, Ok(bytes), done);
                return;
            }
            Verdict::Failed {
                error,
                crash,
                final_,
            } => (error, crash, final_),
        };
        let s = self.slots[i];
        // Logging a failure must never abort a daemon under `Forbid` (an
        // error's text may be formatted on the heap).
        crate::alloc::allow(
            || tracing::warn!(tx = %TxId(s.id), attempt = s.attempts, error = %error, "transaction attempt failed"),
        );
        if crash {
            let crashes = self.count_crash(s.key);
            let after = self.policy.quarantine_after;
            if after != 0 && crashes >= after {
                crate::alloc::allow(
                    || tracing::warn!(tx = %TxId(s.id), key = s.key, crashes, "input quarantined"),
                );
                self.finish(i, Err(TxError::Quarantined { crashes }), done);
                return;
            }
        }
        if final_ || s.attempts > self.policy.retries {
            self.finish(i, Err(error), done);
            return;
        }
        let shift = (s.attempts - 1).min(MAX_BACKOFF_SHIFT);
        let wait = nanos(self.policy.retry_backoff).saturating_mul(1 << shift);
        self.slots[i].phase = Phase::Backoff {
            due_ns: sys::monotonic_ns().saturating_add(wait),
            last: error,
        };
    }

    /// Forks the retry of slot `i` that is due, unless its key was
    /// quarantined or its input changed meanwhile.
    fn retry(&mut self, i: usize, last: TxError, done: &mut impl FnMut(Done<'_>)) {
        let s = self.slots[i];
        if let Some(crashes) = self.quarantined(s.key) {
            self.finish(i, Err(TxError::Quarantined { crashes }), done);
            return;
        }
        if crc32fast::hash(self.input(i)) != s.input_crc {
            crate::alloc::allow(
                || tracing::error!(tx = %TxId(s.id), "transaction input overwritten in its slot: not retried"),
            );
            self.finish(i, Err(last), done);
            return;
        }
        if let Err(e) = self.fork_attempt(i) {
            let error = TxError::Crashed {
                reason: ExitReason::SetupFailed {
                    stage: SetupStage::Fork,
                    errno: e.raw_os_error().unwrap_or(0),
                },
                attempts: s.attempts + 1,
            };
            self.slots[i].attempts += 1;
            self.settle(
                i,
                Verdict::Failed {
                    error,
                    crash: false,
                    final_: false,
                },
                done,
            );
        }
    }

    /// Hands the outcome of slot `i` to `done` and frees the slot.
    fn finish(
        &mut self,
        i: usize,
        result: Result<&[u8], TxError>,
        done: &mut impl FnMut(Done<'_>),
    ) {
        let s = self.slots[i];
        done(Done {
            id: TxId(s.id),
            tag: s.tag,
            key: s.key,
            attempts: s.attempts,
            result,
        });
        self.slots[i] = FREE;
        self.busy -= 1;
    }

    /// Counts a crash for `key`; returns its crashes so far.
    fn count_crash(&mut self, key: u64) -> u32 {
        self.clock += 1;
        let stamp = self.clock;
        let entry = match self
            .quarantine
            .iter()
            .position(|q| q.stamp != 0 && q.key == key)
        {
            Some(e) => e,
            None => {
                // A free entry has stamp 0, the smallest: taken first.
                let e = (0..self.quarantine.len())
                    .min_by_key(|&e| self.quarantine[e].stamp)
                    .unwrap_or(0);
                self.quarantine[e] = Quarantine {
                    key,
                    crashes: 0,
                    stamp,
                };
                e
            }
        };
        let q = &mut self.quarantine[entry];
        q.crashes = q.crashes.saturating_add(1);
        q.stamp = stamp;
        q.crashes
    }

    /// Resets the crash count of `key` after a verified success (a key that
    /// is already quarantined stays so).
    fn forgive(&mut self, key: u64) {
        let after = self.policy.quarantine_after;
        for q in &mut self.quarantine {
            if q.stamp != 0 && q.key == key && (after == 0 || q.crashes < after) {
                *q = Quarantine::default();
            }
        }
    }
}

impl Drop for Transactions<'_> {
    /// Kills and reaps every attempt still running (a SIGKILLed process
    /// ends at once, so this waits only for the kernel).
    fn drop(&mut self) {
        for s in &self.slots {
            if let Phase::Running { pid, .. } | Phase::Killed { pid } = s.phase {
                let _ = sys::kill(pid, Signal::KILL);
                let _ = sys::wait_pid(pid);
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}
