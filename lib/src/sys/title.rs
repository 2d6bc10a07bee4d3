//! Process titles: what `ps` shows for a forked daemon.
//!
//! A forked child has its parent's command line. To show `forkroot: NAME`
//! the child sets its `comm` (15 bytes, what `ps -e` and `top` show) and
//! overwrites its own argument area in place (what `ps -ef` and
//! `/proc/PID/cmdline` show), the way `PostgreSQL`'s `set_ps_display` does.
//! The area's bounds are read once, in the root, from `/proc/self/stat`;
//! the child only copies bytes into it, which is fork-safe.

use std::sync::atomic::{AtomicUsize, Ordering};

static ARG_START: AtomicUsize = AtomicUsize::new(0);
static ARG_END: AtomicUsize = AtomicUsize::new(0);

/// Records where this process's argument strings live. Call once in the
/// root, before forking; without it [`set`] only changes `comm`.
pub fn init() {
    let Ok(proc_stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Field 2 (comm) may hold spaces and parentheses: count from the last ')'.
    let Some(rest) = proc_stat.rfind(')').map(|i| &proc_stat[i + 1..]) else {
        return;
    };
    // After ')' come fields 3.. ; arg_start and arg_end are fields 48 and 49.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(start), Some(end)) = (fields.get(45), fields.get(46)) else {
        return;
    };
    if let (Ok(start), Ok(end)) = (start.parse::<usize>(), end.parse::<usize>()) {
        if start != 0 && end > start {
            ARG_START.store(start, Ordering::Relaxed);
            ARG_END.store(end, Ordering::Relaxed);
        }
    }
}

/// Shows `title` for this process in `ps`, truncated to the room the
/// original command line had. Fork-safe: no allocation, no lock.
pub fn set(title: &[u8]) {
    super::set_comm(title);
    let start = ARG_START.load(Ordering::Relaxed);
    let end = ARG_END.load(Ordering::Relaxed);
    if start == 0 {
        return;
    }
    let room = end - start;
    // SAFETY: [start, end) is this process's own argument area, recorded
    // from /proc/self/stat by `init` before the fork; it is ordinary
    // writable stack memory that the kernel reads for /proc/PID/cmdline.
    // The process's argv strings live there: after this, they read as the
    // title (std::env::args in a daemon would see it, not the root's
    // arguments), which no code of ours reads after the fork.
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, room) };
    let n = title.len().min(room.saturating_sub(1));
    area[..n].copy_from_slice(&title[..n]);
    area[n..].fill(0);
}
