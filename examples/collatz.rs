//! An author's own binary: one kind of its own, `collatz`, and the whole
//! `forkroot` command line (`run`, `check`, `ctl`, `kinds`) in one line.
//!
//! For n = 1, 2, 3, ... the daemon counts the steps of n's Collatz sequence
//! (n → n/2 or 3n+1 until 1) in a transaction, a forked child that may
//! crash or hang without hurting the daemon, and writes `n steps` to `out`.
//! Its checkpoint holds the next n and the length of `out` that goes with
//! it, so after a SIGKILL at any moment the replacement resumes where the
//! last commit left it, and `out` holds every n exactly once.
//!
//! ```sh
//! cargo build --example collatz
//! target/debug/examples/collatz kinds
//! target/debug/examples/collatz run --config examples/collatz.toml
//! ```

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use forkroot::region::Plain;
use forkroot::transaction::{Output, Policy, Transactions};
use forkroot::{Context, Kind, Registry, Setting};

forkroot::main!(Registry::new().add(COLLATZ));

/// The kind: its name in `kind = "..."`, a line of help, the entry point
/// and the settings `check` holds `[daemon.args]` to.
const COLLATZ: Kind = Kind::new("collatz", "counts Collatz steps of 1, 2, 3, ...", collatz)
    .settings(&[
        Setting::path("out", "file, one `n steps` line per number").required(),
        Setting::duration("pace", "pause between numbers")
            .default_duration(Duration::from_millis(10))
            .between(Duration::ZERO, Duration::from_secs(60)),
        Setting::int("limit", "stop after this many numbers (0: never)")
            .default_int(0)
            .range(0, 1 << 40),
    ]);

/// The checkpointed state: plain data in the daemon's region.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct State {
    /// The next number to do (0 before the first commit).
    next: u64,
    /// Bytes of `out` holding the lines of the numbers before `next`.
    out_len: u64,
}

// SAFETY: repr(C), two u64s: no pointers, every bit pattern is valid.
unsafe impl Plain for State {}

/// The transaction: runs in a forked copy of the daemon.
fn steps(input: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    let mut n = u64::from_le_bytes(input.try_into().map_err(|_| ())?);
    let mut steps = 0u64;
    while n > 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    out.write(&steps.to_le_bytes()).map_err(|_| ())
}

fn collatz(ctx: &mut Context<'_>) -> i32 {
    match run(ctx) {
        Ok(()) => 0, // stopped by the root: a normal exit
        Err(e) => {
            tracing::error!("{e}");
            3
        }
    }
}

fn run(ctx: &mut Context<'_>) -> Result<(), Box<dyn Error>> {
    let out: &Path = ctx.arg("out");
    let pace: Duration = ctx.arg("pace");
    let limit: u64 = ctx.arg("limit");

    // Transaction slots first, then the checkpoints in the rest of the state.
    let name = ctx.name();
    let size = Transactions::required_size(1, 8, 8);
    let area = ctx.split_state(size).ok_or("memory is too small")?;
    let mut tx = Transactions::new(area, 1, 8, 8, Policy::default(), name)?;
    let (mut state, resumed) = ctx.checkpoints::<State>(1)?;
    if state.next == 0 {
        state.next = 1;
    }
    let file = open(out, state.out_len)?;
    tracing::info!(next = state.next, ?resumed, "counting steps");

    while limit == 0 || state.next <= limit {
        let n = state.next;
        tx.start(steps, &n.to_le_bytes(), n, n)?;
        let Some(steps) = finish(ctx, &mut tx)? else {
            return Ok(()); // asked to stop
        };
        // The line goes where the checkpoint says the file ends, then the
        // commit moves both on together: a kill in between rewrites it.
        let line = format!("{n} {steps}\n");
        file.write_all_at(line.as_bytes(), state.out_len)?;
        state.out_len += line.len() as u64;
        state.next = n + 1;
        state.commit();
        if !ctx.sleep(pace) {
            return Ok(());
        }
    }
    while ctx.sleep(Duration::from_secs(3600)) {}
    Ok(())
}

/// Waits for the one transaction in flight: its result, or `None` when the
/// root asks the daemon to stop first.
fn finish(ctx: &mut Context<'_>, tx: &mut Transactions<'_>) -> Result<Option<u64>, Box<dyn Error>> {
    let stop = ctx.stop_fd()?;
    loop {
        wait(&[tx.fd(), stop], tx.next_timer());
        if ctx.stopping() {
            return Ok(None);
        }
        let mut result = None;
        tx.poll(|done| result = Some(done.result.map(<[u8]>::to_vec)));
        if let Some(bytes) = result {
            let bytes: [u8; 8] = bytes?.try_into().map_err(|_| "a result of 8 bytes")?;
            return Ok(Some(u64::from_le_bytes(bytes)));
        }
    }
}

/// Opens `path` and cuts it to `len`, the length the checkpoint vouches for.
fn open(path: &Path, len: u64) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if f.metadata()?.len() < len {
        let why = format!("{} is shorter than the checkpoint says", path.display());
        return Err(std::io::Error::other(why));
    }
    f.set_len(len)?;
    Ok(f)
}

/// Waits until one of `fds` is readable or `timeout` passed (forever
/// without one).
fn wait(fds: &[RawFd; 2], timeout: Option<Duration>) {
    let mut set = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = timeout.map_or(-1, |t| t.as_millis().min(60_000) as i32);
    // SAFETY: `set` is an array of two initialised pollfds that outlives the
    // call; poll writes only their `revents`.
    unsafe { libc::poll(set.as_mut_ptr(), 2, ms) };
}
