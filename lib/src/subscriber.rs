//! One `tracing` subscriber for the root and its daemons.
//!
//! The subscriber is installed once, in the root, and every forked daemon
//! inherits it. Which layers act depends on the process:
//!
//! - in the root (no flight log installed): human-readable lines on stderr
//!   through `tracing_subscriber::fmt`;
//! - in a daemon (its flight log installed after the fork): each event goes
//!   into the flight log ([`crate::trace`]) and is echoed to the inherited
//!   stderr as one line `NAME[PID] LEVEL text`, formatted on the stack and
//!   written with a single `write(2)`: no allocation, no lock.
//!
//! The filter is `FORKROOT_LOG` (`tracing_subscriber::EnvFilter` syntax),
//! default `info`.

use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};

use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::trace::{self, StackWriter};

const NAME_MAX: usize = 32;
static NAME: [AtomicU8; NAME_MAX] = [const { AtomicU8::new(0) }; NAME_MAX];
static NAME_LEN: AtomicUsize = AtomicUsize::new(0);
/// Where echoed lines go: the root's stderr, which a built-in daemon keeps
/// at another descriptor once its own stderr is a pipe the root reads.
static ECHO_FD: AtomicI32 = AtomicI32::new(2);

/// Echoes this daemon's events to `fd` rather than stderr. Fork-safe.
pub(crate) fn set_echo_fd(fd: i32) {
    ECHO_FD.store(fd, Ordering::Relaxed);
}

/// Installs the subscriber as the global default. Call once, in the root,
/// before forking anything. Returns false if one was already installed.
pub fn init() -> bool {
    let filter = match std::env::var("FORKROOT_LOG") {
        Err(_) => EnvFilter::new("info"),
        Ok(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("forkroot: FORKROOT_LOG={spec:?} is not a log filter ({e}); using info");
            EnvFilter::new("info")
        }),
    };
    let root_only = || filter_fn(|_| crate::log::current().is_none());
    let journal = under_journald();
    let fmt = (!journal).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .with_filter(root_only())
    });
    // journald stamps each line itself and reads its priority from `<N>`.
    let journald = journal.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(JournalFormat)
            .with_filter(root_only())
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(journald)
        .with(trace::layer())
        .with(Echo)
        .try_init()
        .is_ok()
}

/// Whether the root's stderr is read by journald: `JOURNAL_STREAM`
/// (`DEVICE:INODE`) names it, as systemd documents the check.
pub(crate) fn under_journald() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(var) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2")
        .is_ok_and(|meta| var == format!("{}:{}", meta.dev(), meta.ino()))
}

/// The syslog priority journald reads from a `<N>` line prefix.
pub(crate) fn priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// The root's lines under journald: `<N>`, the message and its fields; no
/// timestamp (journald keeps its own).
struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Names this process for echoed lines (a daemon calls it after the fork).
/// Fork-safe: copies at most 32 bytes into a static buffer.
pub fn set_daemon_name(name: &str) {
    let mut n = name.len().min(NAME_MAX);
    while !name.is_char_boundary(n) {
        n -= 1;
    }
    for (slot, &b) in NAME.iter().zip(&name.as_bytes()[..n]) {
        slot.store(b, Ordering::Relaxed);
    }
    NAME_LEN.store(n, Ordering::Release);
}

/// Echoes a daemon's events to stderr, one `write(2)` per event.
struct Echo;

impl<S: Subscriber> Layer<S> for Echo {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if crate::log::current().is_none() {
            return;
        }
        let mut buf = [0u8; 512];
        let mut out = StackWriter::new(&mut buf);
        let mut name = [0u8; NAME_MAX];
        let n = NAME_LEN.load(Ordering::Acquire).min(NAME_MAX);
        for (b, slot) in name.iter_mut().zip(&NAME[..n]) {
            *b = slot.load(Ordering::Relaxed);
        }
        let name = std::str::from_utf8(&name[..n]).unwrap_or("?");
        use std::fmt::Write;
        let _ = write!(
            out,
            "{name}[{}] {:>5} ",
            trace::pid(),
            event.metadata().level()
        );
        trace::format_event(event, &mut out);
        let _ = out.write_str("\n");
        let fd = ECHO_FD.load(Ordering::Relaxed);
        // SAFETY: ECHO_FD is 2 or the descriptor spawn placed the root's
        // stderr at for this daemon: open for the life of the process.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = crate::sys::write_all(fd, out.as_str().as_bytes());
    }
}
