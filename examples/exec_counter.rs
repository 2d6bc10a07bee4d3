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
//! Run outside forkroot, it says so and exits with code 2.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::Duration;

use forkroot::region::Plain;
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
    tracing::info!(
        next = count.next,
        restarts = ctx.restarts(),
        deaths = ctx.deaths().len(),
        ?resumed,
        "counting"
    );
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
