//! `probe`: a diagnostic daemon for tests and benchmarks.
//!
//! Its first line of code takes the monotonic clock; it then appends
//! `start PID RESTARTS NS` to `out` (a file or FIFO), so a benchmark can time
//! a restart from the kill to the replacement's first line. Settings:
//! - `out`: where to write its lines (required).
//! - `fill`: a byte (0..=255) to fill its state's first page with.
//! - `attack`: a sibling's name: report the sibling's first byte, try to
//!   make its region writable (`mprotect ok` or `mprotect EACCES`), then
//!   write into it, which must kill the probe with SIGSEGV.
//! - `exit`: exit with this code right after starting.
//! - `checkpoint = true`: keep a checkpointed counter (per `on_restart`):
//!   report `resumed VALUE HOW`, then commit VALUE + 1 (`committed N`),
//!   unless VALUE equals `crash_at`: then crash with SIGSEGV at once (a
//!   daemon killed by the state it resumed from: poison).
//!
//! - `log`: a text to write into its flight log (as a WARN record) right
//!   after starting, verbatim: control characters and all.
//! - `allocate = true`: declare the steady state (`Context::steady`), then
//!   allocate: the allocation policy must abort it (SIGABRT).
//!
//! After `start` it always reports `deaths N LAST`: how many deaths the root
//! told it about, and the last one's reason (`-` if none).

use std::io::Write;

/// Writes one line with a single `write(2)`, so a kill between two pieces
/// of it never leaves half a line for the reader (a FIFO keeps writes of
/// up to PIPE_BUF bytes whole).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = $out.write_all(line.as_bytes());
    }};
}
use std::time::Duration;

use forkroot::{Context, Kind, Setting};

use crate::util;

/// The kind, with its settings.
pub(crate) const KIND: Kind = Kind::new(
    "probe",
    "diagnostics for tests and benchmarks: reports its start, pokes at siblings",
    main,
)
.settings(&[
    Setting::path("out", "file or FIFO to report to").required(),
    Setting::int("fill", "fill the state's first page with this byte").range(0, 255),
    Setting::string("attack", "a sibling whose read-only region to write into"),
    Setting::int("exit", "exit with this code right after starting").range(0, 255),
    Setting::bool("checkpoint", "keep a checkpointed counter").default_bool(false),
    Setting::int("crash_at", "with checkpoint: crash on resuming this value"),
    Setting::bool("allocate", "declare the steady state, then allocate").default_bool(false),
    Setting::string(
        "log",
        "a text to write verbatim into its flight log at start",
    ),
]);

fn main(ctx: &mut Context<'_>) -> i32 {
    let t0 = forkroot::sys::monotonic_ns();
    let path: &str = ctx.arg("out");
    let mut out = match std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => util::bad_arg(ctx, "out", &format!("{path}: {e}")),
    };
    let pid = forkroot::sys::getpid();
    say!(out, "start {pid} {} {t0}", ctx.restarts());
    match ctx.last_exit() {
        Some(reason) => say!(out, "deaths {} {reason}", ctx.deaths().len()),
        None => say!(out, "deaths 0 -"),
    };
    if let Some(text) = ctx.arg::<Option<&str>>("log") {
        tracing::warn!("{text}");
        say!(out, "logged");
    }
    if ctx.arg::<bool>("checkpoint") {
        let crash_at: Option<i64> = ctx.arg("crash_at");
        let (mut cp, resumed) = match ctx.checkpoints::<u64>(1) {
            Ok(x) => x,
            Err(e) => util::bad_arg(ctx, "checkpoint", &e.to_string()),
        };
        let value = *cp;
        say!(out, "resumed {value} {resumed:?}");
        if crash_at == i64::try_from(value).ok() {
            say!(out, "crashing at {value}");
            forkroot::sys::die_by(forkroot::Signal::SEGV);
        }
        *cp = value + 1;
        cp.commit();
        say!(out, "committed {}", value + 1);
    }

    if let Some(fill) = ctx.arg::<Option<u8>>("fill") {
        let n = ctx.state().len().min(4096);
        ctx.state_mut()[..n].fill(fill);
    }
    if let Some(target) = ctx.arg::<Option<&str>>("attack") {
        let Some(view) = ctx.siblings().get(target) else {
            util::bad_arg(ctx, "attack", &format!("no sibling named {target:?}"))
        };
        say!(
            out,
            "sibling {target} first_byte={}",
            view[0].load(std::sync::atomic::Ordering::Relaxed)
        );
        let Some(addr) = std::ptr::NonNull::new(view.as_ptr().cast::<u8>().cast_mut()) else {
            util::bad_arg(ctx, "attack", "the sibling's view has no address")
        };
        let page = forkroot::sys::page_size();
        // SAFETY: the range is the sibling's mapped view; if the call
        // succeeded (it must not), nothing else in this process holds a
        // reference that the protection change would invalidate.
        let prot = unsafe { forkroot::sys::protect(addr, page, forkroot::sys::Access::ReadWrite) };
        match prot {
            Ok(()) => say!(out, "mprotect ok"),
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => say!(out, "mprotect EACCES"),
            Err(e) => say!(out, "mprotect {e}"),
        };
        say!(out, "writing");
        // SAFETY: deliberately not sound: this write into a read-only
        // mapping is the test; the kernel ends the process with SIGSEGV.
        unsafe { std::ptr::write_volatile(addr.as_ptr(), 0x55) };
        say!(out, "wrote");
    }
    if ctx.arg::<bool>("allocate") {
        say!(out, "allocating");
        ctx.steady();
        let v: Vec<u8> = Vec::with_capacity(4096);
        std::hint::black_box(&v);
        say!(out, "allocated");
    }
    if let Some(code) = ctx.arg::<Option<i32>>("exit") {
        return code;
    }
    while ctx.sleep(Duration::from_secs(3600)) {}
    say!(out, "stop {pid}");
    0
}
