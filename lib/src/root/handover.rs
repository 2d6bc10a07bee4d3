//! The hand-over window: a fixed block of low descriptor numbers through
//! which the root gives a new process its descriptors, so that forking
//! costs the same whatever the number of daemons.
//!
//! A fork copies the whole descriptor table, and a daemon's first act is
//! to close what it inherited from the root: both are one step per
//! descriptor the root holds, and the root holds several per daemon (the
//! output pipes, listening sockets). With 1,000 daemons that is ~4,000
//! descriptors copied and closed on every restart, most of the restart's
//! time. Instead, the child is created *sharing* the root's table
//! (`CLONE_FILES`, nothing copied) and its first system call takes a table
//! of its own holding only the descriptors below the window's end
//! (`close_range(end, ~0, CLOSE_RANGE_UNSHARE)`, [`sys::unshare_below`]):
//! the root's few early descriptors and the window, whatever the tree's
//! size.
//!
//! Before such a fork the root copies each descriptor the child keeps into
//! its slot of the window (`dup3` over a placeholder). Until the child has
//! its own table, the two share the window, so the root must not change
//! it: the window is *lent* to that child ([`Handover::lend`]). The child
//! writes its pid on the sync pipe once it has its own table; the root
//! reads it ([`Handover::on_sync`]) or reaps the child, and puts the
//! placeholders back ([`Handover::release`]), closing its copies (the
//! setup pipe's write end among them, whose end-of-file the root waits
//! for). A fork while the window is lent takes the old way: a copy of the
//! table, closed by the child.
//!
//! An exec'd program started with `CLONE_VM | CLONE_VFORK` suspends the
//! root until it execs, and it takes its own table first: the window is
//! free again when the spawn returns.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::listen::MAX_LISTEN;
use crate::sys::{self, Pid};

/// The window's slots, from its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Slot {
    /// The sync pipe's write end (always there).
    Sync = 0,
    Setup,
    Stdout,
    Stderr,
    Gate,
    Lock,
    Region,
    Post,
    Registry,
    /// The file of the daemon's row of monitor bits.
    Monitors,
    Notify,
    Cgroup,
    /// The first listening socket; the others follow.
    Listen,
}

/// Slots in the window.
const LEN: usize = Slot::Listen as usize + MAX_LISTEN;
/// The same, as a count of descriptor numbers.
// 76 fits any descriptor number type (checked below).
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
const SPAN: RawFd = LEN as RawFd;

/// The window, owned by the root.
#[derive(Debug)]
pub(crate) struct Handover {
    /// The first slot's descriptor number.
    base: RawFd,
    /// `/dev/null`, copied into every free slot.
    null: OwnedFd,
    /// The sync pipe's read end (the write end is [`Slot::Sync`]).
    sync: OwnedFd,
    /// The child the window is lent to, until it has its own table.
    lent: Option<Pid>,
    /// Slots holding a copy the next release puts a placeholder over.
    used: u128,
}

// One bit of `used` per slot.
const _: () = assert!(LEN <= 128 && SPAN > 0);

impl Drop for Handover {
    fn drop(&mut self) {
        sys::close_between(self.base, self.end() - 1).ok();
    }
}

impl Handover {
    /// Reserves the window: the lowest block of [`LEN`] consecutive free
    /// descriptor numbers (made early at start, it sits right above the
    /// root's standard streams and its signalfd). `None`, and forks copy
    /// the table, where the kernel cannot unshare a table by `close_range`
    /// (before Linux 5.9) or the window cannot be made (too few
    /// descriptors allowed); the reason is logged.
    pub(crate) fn new() -> Option<Handover> {
        // A range above every descriptor: closes nothing; the flag alone
        // is what is tested (EINVAL or ENOSYS before 5.9).
        if let Err(e) = sys::unshare_below(RawFd::MAX - 1) {
            tracing::info!(error = %e, "no CLOSE_RANGE_UNSHARE: every fork copies the descriptor table");
            return None;
        }
        match Handover::reserve() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reserve the hand-over window: every fork copies the descriptor table");
                None
            }
        }
    }

    fn reserve() -> io::Result<Handover> {
        // SAFETY: a descriptor open just made, owned by nobody else.
        let null = unsafe {
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sys::setup::open_read(c"/dev/null")?)
        };
        // The lowest free number, then the first block of LEN free numbers
        // from there (a number in use moves the block past it). Numbers
        // are only probed here, so no hole is left below the block.
        let open = |fd: RawFd| sys::is_open(fd);
        let mut base = sys::dup_at_least(null.as_raw_fd(), 3)?;
        sys::close(base);
        while let Some(used) = (base..base + SPAN).rev().find(|&fd| open(fd)) {
            base = used + 1;
        }
        // The slots first, each a copy of /dev/null; on failure the ones
        // made are closed again.
        for k in 0..SPAN {
            if let Err(e) = sys::dup_onto(null.as_raw_fd(), base + k) {
                sys::close_between(base, base + k - 1).ok();
                return Err(e);
            }
        }
        // The sync pipe once the block is full: its numbers are free ones
        // below the block (holes that were there) or above it, so the
        // write end's, freed below, leaves no new hole under the block.
        let (sync, sync_wr) = match sys::pipe_cloexec(true) {
            Ok(p) => p,
            Err(e) => {
                sys::close_between(base, base + SPAN - 1).ok();
                return Err(e);
            }
        };
        let h = Handover {
            base,
            null,
            sync,
            lent: None,
            used: 0,
        };
        // Dropping `h` on failure closes the slots.
        sys::dup_onto(sync_wr.as_raw_fd(), h.at(Slot::Sync))?;
        Ok(h)
    }

    /// The descriptor number of `slot`.
    pub(crate) fn at(&self, slot: Slot) -> RawFd {
        self.base + slot as RawFd
    }

    /// The descriptor number of the `k`th listening socket's slot.
    pub(crate) fn listen_at(&self, k: usize) -> RawFd {
        // k < MAX_LISTEN (checked with the config): within the window.
        RawFd::try_from(k).map_or(RawFd::MAX, |k| self.at(Slot::Listen) + k)
    }

    /// The first descriptor above the window: what a child keeps is below.
    pub(crate) fn end(&self) -> RawFd {
        self.base + SPAN
    }

    /// The sync pipe's read end, which the poll loop watches.
    pub(crate) fn sync_fd(&self) -> BorrowedFd<'_> {
        self.sync.as_fd()
    }

    /// Whether the window is free to fill for a new process.
    pub(crate) fn is_free(&self) -> bool {
        self.lent.is_none()
    }

    /// Copies `fd` into slot `at` (a number from [`Handover::at`] or
    /// [`Handover::listen_at`]) and returns that number.
    pub(crate) fn place(&mut self, fd: RawFd, at: RawFd) -> io::Result<RawFd> {
        let k = at - self.base;
        if !self.is_free() || k <= 0 || k >= SPAN {
            // A bug of the caller; refused rather than done.
            return Err(io::Error::other(
                "the hand-over window is lent, or no such slot",
            ));
        }
        sys::dup_onto(fd, at)?;
        self.used |= 1 << k;
        Ok(at)
    }

    /// The window is shared with `pid` until it has its own table.
    pub(crate) fn lend(&mut self, pid: Pid) {
        self.lent = Some(pid);
    }

    /// Puts the placeholders back over the copies (the root's copies of a
    /// child's descriptors close) and empties the sync pipe. Only when no
    /// process shares the window: after the child said so, or is dead.
    pub(crate) fn release(&mut self) {
        for k in 1..SPAN {
            if self.used & (1 << k) != 0 {
                // dup3 over an open slot cannot fail but for EINTR (retried)
                // or a bad source: /dev/null stays open.
                let _ = sys::dup_onto(self.null.as_raw_fd(), self.base + k);
            }
        }
        self.used = 0;
        self.lent = None;
        let mut buf = [0u8; 64];
        while matches!(sys::read(self.sync.as_fd(), &mut buf), Ok(n) if n > 0) {}
    }

    /// The sync pipe is readable: the child the window is lent to has its
    /// own table (or one that died said so before dying).
    pub(crate) fn on_sync(&mut self) {
        let mut buf = [0u8; 4];
        let mut said = false;
        while let Ok(4) = sys::read(self.sync.as_fd(), &mut buf) {
            said |= self.lent.is_some() && self.lent == Pid::from_raw(i32::from_ne_bytes(buf));
        }
        if said {
            self.release();
        }
    }

    /// A child was reaped: if the window was lent to it, nobody shares it
    /// now.
    pub(crate) fn reaped(&mut self, pid: Pid) {
        if self.lent == Some(pid) {
            self.release();
        }
    }
}

/// In a child created sharing the root's table: takes a table of its own
/// holding the descriptors below `end`, then tells the root on `sync` (its
/// pid, 4 bytes). Fork-safe; the first thing the child does.
pub(crate) fn unshare(end: RawFd, sync: RawFd) -> io::Result<()> {
    sys::unshare_below(end)?;
    let pid = sys::getpid().as_raw().to_ne_bytes();
    // SAFETY: `sync` is the window's sync slot, open in this table (below
    // `end`) until the child closes its inherited descriptors.
    sys::write_all(unsafe { BorrowedFd::borrow_raw(sync) }, &pid)
}
