//! `counter`: the process-pair exercise. Emits 1, 2, 3, ... at
//! `rate` per second to `out`, one number a line; after any number of
//! SIGKILLs at any instruction, the file holds exactly 1..N: no number
//! skipped, none repeated.
//!
//! The output file is part of the checkpoint. The checkpointed state is the
//! next number *and the length of the file that goes with it*. Each step
//! writes the line at that length (pwrite), then commits
//! `{next + 1, length + line}`. A restart truncates the file to the checkpoint's length, which
//! removes a line written but not committed; the number is then written
//! again. So the file and the checkpoint always move together: a crash
//! before the commit leaves the old pair, after it the new one.
//!
//! Without `out`, numbers go to the flight log (at least once, not exactly
//! once: a record written just before a crash is repeated).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use forkroot::region::Plain;
use forkroot::{Context, Kind, Resumed, Setting};

/// The kind, with its settings.
pub(crate) const KIND: Kind = Kind::new(
    "counter",
    "emits 1, 2, 3, ... to a file; no number skipped or repeated across crashes",
    main,
)
.settings(&[
    Setting::int("rate", "numbers per second")
        .default_int(10)
        .range(1, 10_000_000),
    Setting::path("out", "file, one number a line (default: the flight log)"),
]);

/// The checkpointed state.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct State {
    /// The next number to emit (0 in a fresh state: start at 1).
    next: u64,
    /// Bytes of `out` that hold the numbers before `next`.
    out_len: u64,
}

// SAFETY: repr(C), two u64s: no pointers, every bit pattern valid.
unsafe impl Plain for State {}

/// Layout version of [`State`].
const VERSION: u32 = 1;
/// At most this many numbers per wake-up, so a stop is noticed quickly.
const BATCH: u64 = 4096;

fn main(ctx: &mut Context<'_>) -> i32 {
    let rate: u64 = ctx.arg("rate");
    let out: Option<&str> = ctx.arg("out");
    let (mut cp, resumed) = match ctx.checkpoints::<State>(VERSION) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot use the state");
            return 3;
        }
    };
    if resumed == Resumed::Decide {
        // Decide: resume unless the last two deaths were both crashes (not
        // kills from outside) within a second of starting (then start over).
        let quick = ctx
            .deaths()
            .iter()
            .rev()
            .take(2)
            .filter(|d| d.reason.is_crash() && d.uptime < Duration::from_secs(1))
            .count();
        if quick == 2 {
            tracing::warn!("two quick deaths in a row: starting over");
            cp.reset();
        } else if cp.restore().is_err() {
            cp.reset();
        }
    }
    if cp.next == 0 {
        cp.next = 1;
        cp.out_len = 0;
        // `open` cuts the file to `out_len`: commit that first. Otherwise
        // a state reset over older checkpoints (decide starting over) and a
        // crash before the first number's commit leave the file empty and
        // the newest checkpoint vouching for more than it holds.
        cp.commit();
    }
    let file = match out.map(|path| open(path, cp.out_len)) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            tracing::error!(out = out.unwrap_or(""), error = %e, "cannot use the output file");
            return 3;
        }
    };
    tracing::info!(next = cp.next, rate, "counting");
    ctx.steady();

    let period = 1_000_000_000 / rate;
    let mut due = forkroot::sys::monotonic_ns();
    loop {
        let now = forkroot::sys::monotonic_ns();
        let mut emitted = 0;
        while due <= now && emitted < BATCH {
            let n = cp.next;
            let mut buf = [0u8; 24];
            let line = format_line(n, &mut buf);
            match &file {
                Some(f) => {
                    if let Err(e) = f.write_all_at(line, cp.out_len) {
                        // Formatting an OS error allocates: allowed on the way out.
                        forkroot::alloc::allow(|| tracing::error!(error = %e, "write failed"));
                        return 4;
                    }
                    cp.out_len += line.len() as u64;
                }
                None => tracing::info!(n, "count"),
            }
            cp.next = n + 1;
            cp.commit();
            due += period;
            emitted += 1;
        }
        let wait = due.saturating_sub(forkroot::sys::monotonic_ns());
        if !ctx.sleep(Duration::from_nanos(wait)) {
            return 0;
        }
    }
}

/// Opens `path` and cuts it to `len`, the length the checkpoint vouches for
/// (dropping a line written after the last commit).
fn open(path: &str, len: u64) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let have = f.metadata()?.len();
    if have < len {
        return Err(std::io::Error::other(format!(
            "{path} has {have} bytes but the checkpoint vouches for {len}: it was truncated or replaced"
        )));
    }
    f.set_len(len)?;
    Ok(f)
}

/// `n` and a newline, in decimal, in `buf`.
fn format_line(mut n: u64, buf: &mut [u8; 24]) -> &[u8] {
    let mut i = buf.len() - 1;
    buf[i] = b'\n';
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::format_line;

    #[test]
    fn formats_numbers_with_a_newline() {
        let mut b = [0u8; 24];
        assert_eq!(format_line(1, &mut b), b"1\n");
        assert_eq!(format_line(1234567890, &mut b), b"1234567890\n");
        assert_eq!(format_line(u64::MAX, &mut b), b"18446744073709551615\n");
        assert_eq!(format_line(0, &mut b), b"0\n");
    }
}
