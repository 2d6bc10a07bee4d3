//! An exec'd program that links the library: it counts 1, 2, 3, ... into
//! a file and, SIGKILLed at any moment and started again by the root,
//! carries on where its last checkpoint was, so the file never skips or
//! repeats a number.
//!
//! ```toml
//! [[daemon]]
//! name = "count"
//! exec = ["target/debug/examples/exec_counter", "/tmp/count.out"]
//! memory = "64KiB"
//! watchdog = "2s"
//! ```
//!
//! At each start it also has a transaction (a forked copy of itself,
//! whose crash would cost a failed result, not the counter) count the
//! lines of the output file, and checks them against its checkpoint.
//!
//! Run outside forkroot, it says so and exits with code 2.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::Duration;

use forkroot::region::Plain;
use forkroot::transaction::{Output, Policy, Transactions};
use forkroot::{Context, Resumed};

/// No allocation once counting (`Context::steady`).
#[global_allocator]
static ALLOC: forkroot::alloc::Guarded = forkroot::alloc::Guarded::new();

/// The checkpointed state: the next number, and how many bytes of the
/// output file hold the numbers before it. They move together, so a
/// line written after the last commit is cut off at restart and written
/// again.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Count {
    next: u64,
    out_len: u64,
}

// SAFETY: repr(C), two u64s: no pointers, every bit pattern valid.
unsafe impl Plain for Count {}

/// The longest output path a transaction takes.
const PATH_MAX: usize = 4096;

/// Numbers per wake-up, and the pause between wake-ups.
const BATCH: u64 = 20;
const PAUSE: Duration = Duration::from_millis(2);

fn main() -> ExitCode {
    let mut ctx = match Context::from_env() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("exec_counter: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: exec_counter OUTPUT_FILE");
        return ExitCode::from(2);
    };
    // The first bytes of the state hold one transaction slot; the rest is
    // the checkpointed count.
    let slot = ctx.split_state(Transactions::required_size(1, PATH_MAX, 8));
    let tx =
        slot.map(|area| Transactions::new(area, 1, PATH_MAX, 8, Policy::default(), ctx.name()));
    let mut tx = match tx {
        Some(Ok(tx)) => tx,
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot set up transactions");
            return ExitCode::from(3);
        }
        None => {
            tracing::error!("memory is too small for a transaction slot");
            return ExitCode::from(3);
        }
    };
    let (mut count, resumed) = match ctx.checkpoints::<Count>(1) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot use the state");
            return ExitCode::from(3);
        }
    };
    // on_restart = "decide": resume from the newest checkpoint.
    if resumed == Resumed::Decide && count.restore().is_err() {
        count.reset();
    }
    if count.next == 0 {
        count.next = 1;
        count.out_len = 0;
        count.commit();
    }
    let file = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&out)
        .and_then(|f| f.set_len(count.out_len).map(|()| f))
    {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(out, error = %e, "cannot use the output file");
            return ExitCode::from(3);
        }
    };
    match lines_by_transaction(&mut ctx, &mut tx, &out) {
        Some(lines) if lines == count.next - 1 => {
            tracing::info!(lines, "lines checked by a transaction")
        }
        Some(lines) => {
            tracing::error!(
                lines,
                next = count.next,
                "the output file disagrees with the checkpoint"
            );
            return ExitCode::from(5);
        }
        None => return ExitCode::SUCCESS, // asked to stop
    }
    tracing::info!(
        next = count.next,
        restarts = ctx.restarts(),
        deaths = ctx.deaths().len(),
        ?resumed,
        "counting"
    );
    // Ready (for `readiness = "notify"`): the state is checked and the
    // output file agrees with it.
    if let Err(e) = ctx.ready() {
        tracing::warn!(error = %e, "could not tell the root it is ready");
    }
    ctx.steady();
    loop {
        for _ in 0..BATCH {
            let mut line = [0u8; 24];
            let mut w = std::io::Cursor::new(&mut line[..]);
            let _ = writeln!(w, "{}", count.next);
            let len = w.position() as usize;
            if let Err(e) = file.write_all_at(&line[..len], count.out_len) {
                forkroot::alloc::allow(|| tracing::error!(error = %e, "write failed"));
                return ExitCode::from(4);
            }
            count.out_len += len as u64;
            count.next += 1;
            count.commit();
        }
        // Heartbeats (for the root's watchdog) and wakes early on a stop.
        if !ctx.sleep(PAUSE) {
            return ExitCode::SUCCESS;
        }
    }
}

/// Has a transaction count the lines of `path`, and waits for its
/// verified result (`None` if the root asked to stop meanwhile).
fn lines_by_transaction(
    ctx: &mut Context<'_>,
    tx: &mut Transactions<'_>,
    path: &str,
) -> Option<u64> {
    if let Err(e) = tx.start(count_lines, path.as_bytes(), 0, 0) {
        tracing::error!(error = %e, "cannot start a transaction");
        return Some(u64::MAX);
    }
    loop {
        let mut lines = None;
        tx.poll(|done| {
            lines = Some(match done.result {
                Ok(b) => b.try_into().map_or(u64::MAX, u64::from_le_bytes),
                Err(e) => {
                    tracing::error!(error = %e, "the transaction failed");
                    u64::MAX
                }
            })
        });
        if lines.is_some() {
            return lines;
        }
        if !ctx.sleep(Duration::from_millis(1)) {
            return None;
        }
    }
}

/// The transaction: the number of lines of the file named by `input`.
fn count_lines(input: &[u8], out: &mut Output<'_>) -> Result<(), ()> {
    let path = std::str::from_utf8(input).map_err(|_| ())?;
    let text = std::fs::read(path).map_err(|_| ())?;
    let lines = text.iter().filter(|&&b| b == b'\n').count() as u64;
    out.write(&lines.to_le_bytes()).map_err(|_| ())
}
