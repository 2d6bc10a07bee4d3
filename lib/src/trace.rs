//! A `tracing` layer that writes events into the flight recorder without allocating.
//!
//! A daemon installs it once at start-up, after [`crate::log::install`]:
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! let subscriber = tracing_subscriber::registry().with(forkroot::trace::layer());
//! tracing::subscriber::set_global_default(subscriber).ok();
//! tracing::info!(answer = 42, "ready");
//! ```
//!
//! Each event becomes one flight log record: its level, the calling
//! process's pid, the current transaction id ([`set_transaction`]), and the
//! text `message field=value ...`, formatted into a fixed stack buffer of
//! [`TEXT_MAX`] bytes and cut at a char boundary if longer. The daemon's
//! name is not repeated in every record: each daemon has its own log.
//!
//! The pid is cached. A `pthread_atfork` child handler, registered by
//! [`layer`], refreshes it in every forked child; a process created some
//! other way (a raw `clone`) calls [`after_fork`] itself.

use crate::log::{self, Level, TEXT_MAX};
use crate::sys;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;

/// Cached pid of this process; 0 until first use.
static PID: AtomicU32 = AtomicU32::new(0);
/// Current transaction id, low and high halves. Written by [`set_transaction`]
/// (once per transaction, before it starts threads), read by every event.
static TX_LO: AtomicU64 = AtomicU64::new(0);
static TX_HI: AtomicU64 = AtomicU64::new(0);
/// Whether the `pthread_atfork` handler is registered.
static ATFORK: AtomicBool = AtomicBool::new(false);

/// The calling process's pid, cached.
pub fn pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => after_fork(),
        p => p,
    }
}

/// Refreshes the cached pid (call in a new process that did not come from
/// `fork`, which [`layer`] already handles); returns it.
pub fn after_fork() -> u32 {
    let p = sys::getpid().as_u32();
    PID.store(p, Ordering::Relaxed);
    p
}

extern "C" fn atfork_child() {
    after_fork();
}

/// Sets the transaction id that later records of this process carry
/// (0 = none). A transaction calls it right after it is forked, before it
/// starts threads.
pub fn set_transaction(id: u128) {
    TX_LO.store(id as u64, Ordering::Relaxed);
    TX_HI.store((id >> 64) as u64, Ordering::Relaxed);
}

/// The transaction id set with [`set_transaction`], 0 if none.
pub fn transaction() -> u128 {
    u128::from(TX_LO.load(Ordering::Relaxed)) | (u128::from(TX_HI.load(Ordering::Relaxed)) << 64)
}

/// A `core::fmt::Write` into a fixed byte buffer that never fails: text that
/// does not fit is cut at a char boundary, so the filled part is always
/// valid UTF-8.
#[derive(Debug)]
pub struct StackWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    truncated: bool,
}

impl<'a> StackWriter<'a> {
    /// A writer that fills `buf` from the start.
    pub fn new(buf: &'a mut [u8]) -> StackWriter<'a> {
        StackWriter {
            buf,
            len: 0,
            truncated: false,
        }
    }
    /// The text written so far.
    pub fn as_str(&self) -> &str {
        // Only whole chars of `&str`s are ever copied in, so this holds.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
    /// Whether some text was cut off.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl fmt::Write for StackWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        if n < s.len() {
            self.truncated = true;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes `event`'s fields into `out` as `message k=v k=v`, without
/// allocating (cut at `out`'s end).
pub fn format_event(event: &Event<'_>, out: &mut StackWriter<'_>) {
    event.record(&mut FieldVisitor { out });
}

/// Writes an event's fields as `message k=v k=v`.
struct FieldVisitor<'w, 'b> {
    out: &'w mut StackWriter<'b>,
}

impl FieldVisitor<'_, '_> {
    fn sep(&mut self) {
        if self.out.len > 0 {
            let _ = self.out.write_str(" ");
        }
    }
}

impl Visit for FieldVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.sep();
        if field.name() == "message" {
            let _ = self.out.write_str(value);
        } else {
            let _ = write!(self.out, "{}={:?}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.sep();
        if field.name() == "message" {
            let _ = write!(self.out, "{value:?}");
        } else {
            let _ = write!(self.out, "{}={:?}", field.name(), value);
        }
    }
}

/// The layer returned by [`layer`]: writes every event to the current
/// flight log ([`crate::log::current`]), or drops it if none is installed.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlightLayer {
    _private: (),
}

/// A layer that records every event in the calling process's flight log.
/// Also registers (once) the fork handler that keeps the cached pid right.
pub fn layer() -> FlightLayer {
    if !ATFORK.swap(true, Ordering::AcqRel) {
        // SAFETY: the handler only calls getpid and stores an atomic, both
        // async-signal-safe, as a fork child handler must be.
        if unsafe { sys::fork::at_fork_child(atfork_child) }.is_err() {
            ATFORK.store(false, Ordering::Release);
        }
    }
    FlightLayer { _private: () }
}

fn level_of(l: &tracing::Level) -> Level {
    match *l {
        tracing::Level::ERROR => Level::Error,
        tracing::Level::WARN => Level::Warn,
        tracing::Level::INFO => Level::Info,
        tracing::Level::DEBUG => Level::Debug,
        _ => Level::Trace,
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for FlightLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(log) = log::current() else {
            return;
        };
        let mut buf = [0u8; TEXT_MAX];
        let mut out = StackWriter::new(&mut buf);
        format_event(event, &mut out);
        log.write(
            level_of(event.metadata().level()),
            pid(),
            transaction(),
            out.as_str(),
        );
    }
}
