//! Mailboxes and the registry: every daemon's inbox, a ring in memory the
//! root preallocates, and the table that tells who runs under each name.
//!
//! Two memory files, made by the root before its first fork (DESIGN.md §2,
//! *Mailboxes*):
//!
//! - the **post** (`forkroot:post`): every daemon's mailbox, a multi-producer
//!   [`crate::ring`] with crc'd slots, mapped read-write by the root and
//!   inherited read-write by every daemon, so any daemon may send to any
//!   other, and a message sent while its receiver is down waits in the ring
//!   for the replacement (up to the mailbox's `mailbox` messages);
//! - the **registry** (`forkroot:registry`): a [`Directory`] and one
//!   [`Entry`] per daemon (name, where its ring lies, and the current
//!   incarnation: generation, pid, state, restarts), written only by the
//!   root through a mapping its children do not inherit (`MADV_DONTFORK`);
//!   daemons see it through a mapping of a read-only descriptor, which no
//!   `mprotect` can make writable.
//!
//! Monitors are bits each daemon keeps in a memory file of its own
//! ([`MonitorRow`], `forkroot:monitors`): bit `j` of daemon `w`'s row says
//! `w` monitors `j`. Only `w`'s processes and the root map `w`'s row, so no
//! daemon can make another one receive a DOWN it never asked for.
//!
//! A sender's identity in the ring is a [`WriterId`] `(daemon slot,
//! generation)` the root assigns at each fork, never a pid. A writer is
//! alive while the registry's entry for its slot shows its generation and
//! the alive bit; the root clears the bit only after it reaped the process,
//! so a receiver that finds a slot reserved by a dead writer skips it (never
//! delivering half a message), and one reserved by a live writer waits.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::ring::{self, Consumer, Kind, Ring, RingError, WriterId};
use crate::sys;

/// `"FKPOST01"`: the first word of an initialised registry.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FKPOST01");
/// Layout version of `Directory`, `Entry` and `Head`.
pub const VERSION: u32 = 2;
/// Messages a mailbox holds unless `mailbox` says otherwise.
pub const DEFAULT_CAPACITY: u32 = 64;
/// Bytes a message may have unless `mailbox_message` says otherwise.
pub const DEFAULT_MESSAGE: u32 = 1024;
/// Largest `mailbox` (messages).
pub const MAX_CAPACITY: u32 = 1 << 16;
/// Smallest `mailbox_message` (bytes): a DOWN or EXIT message fits.
pub const MIN_MESSAGE: u32 = 64;
/// Largest `mailbox_message` (bytes).
pub const MAX_MESSAGE: u32 = 1 << 20;
/// The writer slot of the root itself (system messages).
pub const ROOT_SLOT: u16 = u16::MAX;
/// Bytes of a name in the registry (config names have at most 32).
const NAME_BYTES: usize = 32;

/// Environment of an exec'd program: its post descriptor (read-write).
pub(crate) const POST_FD_VAR: &str = "FORKROOT_POST_FD";
/// Its registry descriptor (read-only).
pub(crate) const REGISTRY_FD_VAR: &str = "FORKROOT_REGISTRY_FD";
/// Its writer id, `(slot, generation)` as [`WriterId::raw`].
pub(crate) const WRITER_VAR: &str = "FORKROOT_WRITER";
/// Its row of monitor bits (read-write; a file of its own).
pub(crate) const MONITORS_FD_VAR: &str = "FORKROOT_MONITORS_FD";

/// The registry's first bytes; written once by the root before any fork.
#[repr(C)]
#[derive(Debug)]
pub struct Directory {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`VERSION`].
    pub version: u32,
    /// Entries that follow.
    pub count: u32,
    /// Bytes of the post.
    pub post_len: u64,
    /// `AtomicU64` words of a daemon's [`MonitorRow`] (one bit per daemon
    /// of the registry).
    pub words: u64,
    _pad: [u64; 4],
}

/// One daemon in the registry. `name`, `ring_offset`, `ring_len` are written
/// once before the first fork; the atomics only by the root afterwards.
#[repr(C)]
#[derive(Debug)]
pub struct Entry {
    /// Bytes of `name` in use; 0 for a spare slot no reload took yet.
    /// Stored last (release) when a slot is taken: a reader that loads it
    /// (acquire) finds the name and ring written.
    pub name_len: AtomicU32,
    /// Which incarnation runs: `generation << 16 | alive` (alive is 0 or
    /// 1). A writer `(slot, g)` is alive iff this shows `g` and alive 1.
    pub life: AtomicU32,
    /// The daemon's name, `name_len` bytes.
    pub name: [u8; NAME_BYTES],
    /// Offset of its ring in the post (a multiple of [`ring::ALIGN`]).
    pub ring_offset: u64,
    /// Bytes of its ring.
    pub ring_len: u64,
    /// Pid of the current process (0: none).
    pub pid: AtomicU32,
    /// [`Presence`] as a number.
    pub state: AtomicU32,
    /// Restarts so far.
    pub restarts: AtomicU32,
    _pad: u32,
}

/// A message's first bytes in the ring, before its body.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Head {
    /// [`MessageKind`] as a number.
    kind: u32,
    /// The sender's slot ([`ROOT_SLOT`] for the root).
    from: u32,
}

const HEAD: usize = size_of::<Head>();

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageKind {
    /// Sent by a daemon with [`crate::Context::send`].
    User,
    /// From the root: a daemon this one monitors ended (its body is a
    /// [`Gone`]).
    Down,
    /// From the root: a daemon linked to this one died, and this one traps
    /// exits (its body is a [`Gone`]).
    Exit,
}

impl MessageKind {
    fn from_u32(v: u32) -> Option<MessageKind> {
        match v {
            1 => Some(MessageKind::User),
            2 => Some(MessageKind::Down),
            3 => Some(MessageKind::Exit),
            _ => None,
        }
    }

    fn as_u32(self) -> u32 {
        match self {
            MessageKind::User => 1,
            MessageKind::Down => 2,
            MessageKind::Exit => 3,
        }
    }

    /// Whether the root sent it (DOWN, EXIT) rather than a daemon.
    pub fn is_system(self) -> bool {
        !matches!(self, MessageKind::User)
    }
}

/// The body of a DOWN or EXIT message: who ended, and how. Encoded in
/// [`GONE_BYTES`] little-endian bytes: `pid u32, restarts u32, reason kind
/// u32 (0 exited, 1 signaled, 2 setup failed), a i32, b i32, name_len u32,
/// name [u8; 32]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    /// The daemon's name.
    pub name: &'static str,
    /// The pid of the process that ended.
    pub pid: u32,
    /// How it ended.
    pub reason: crate::ExitReason,
    /// Its restarts before that process.
    pub restarts: u32,
}

/// Bytes of a [`Gone`] body.
pub const GONE_BYTES: usize = 24 + NAME_BYTES;

impl Gone {
    fn encode(
        i: usize,
        post: &Post,
        pid: u32,
        reason: crate::ExitReason,
        restarts: u32,
    ) -> [u8; GONE_BYTES] {
        use crate::ExitReason::*;
        let (kind, a, b) = match reason {
            Exited(code) => (0u32, code, 0),
            Signaled { signal, core } => (1, signal.as_raw(), i32::from(core)),
            SetupFailed { stage, errno } => (2, stage as i32, errno),
            Watchdog => (3, 0, 0),
            StartTimeout => (4, 0, 0),
        };
        let e = post.entry(i);
        let mut out = [0u8; GONE_BYTES];
        let words = [
            pid,
            restarts,
            kind,
            a as u32,
            b as u32,
            e.name_len.load(Ordering::Acquire),
        ];
        for (k, w) in words.iter().enumerate() {
            out[k * 4..k * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        out[24..].copy_from_slice(&e.name);
        out
    }

    /// Decodes the body of a DOWN or EXIT message; `None` for anything
    /// else (it names a daemon of this tree, or it is not one).
    pub fn decode(post: &Post, body: &[u8]) -> Option<Gone> {
        if body.len() != GONE_BYTES {
            return None;
        }
        let w = |k: usize| {
            u32::from_le_bytes([
                body[k * 4],
                body[k * 4 + 1],
                body[k * 4 + 2],
                body[k * 4 + 3],
            ])
        };
        let (a, b) = (w(3) as i32, w(4) as i32);
        let reason = match w(2) {
            0 => crate::ExitReason::Exited(a),
            1 => crate::ExitReason::Signaled {
                signal: crate::sys::Signal::from_raw(a)?,
                core: b != 0,
            },
            2 => crate::ExitReason::SetupFailed {
                stage: crate::daemon::SetupStage::from_u32(a as u32)?,
                errno: b,
            },
            3 => crate::ExitReason::Watchdog,
            4 => crate::ExitReason::StartTimeout,
            _ => return None,
        };
        let n = (w(5) as usize).min(NAME_BYTES);
        let name = std::str::from_utf8(&body[24..24 + n]).ok()?;
        let i = post.find(name)?;
        Some(Gone {
            name: post.name(i),
            pid: w(0),
            reason,
            restarts: w(1),
        })
    }
}

/// Where a daemon is, as the root last published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Not started yet, or stopped.
    Stopped,
    /// Forked; setting up.
    Starting,
    /// Running its code.
    Running,
    /// Dead, waiting for its restart.
    Backoff,
    /// Asked to stop.
    Stopping,
    /// Given up on by its supervisor.
    Failed,
}

impl Presence {
    /// The number stored in [`Entry::state`].
    pub fn as_u32(self) -> u32 {
        match self {
            Presence::Stopped => 0,
            Presence::Starting => 1,
            Presence::Running => 2,
            Presence::Backoff => 3,
            Presence::Stopping => 4,
            Presence::Failed => 5,
        }
    }

    fn from_u32(v: u32) -> Presence {
        match v {
            1 => Presence::Starting,
            2 => Presence::Running,
            3 => Presence::Backoff,
            4 => Presence::Stopping,
            5 => Presence::Failed,
            _ => Presence::Stopped,
        }
    }
}

/// What [`crate::Context::whereis`] tells of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whereabouts {
    /// Pid of the current incarnation, if a process exists.
    pub pid: Option<u32>,
    /// Its state.
    pub state: Presence,
    /// Its restarts so far.
    pub restarts: u32,
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No daemon of the tree has this name.
    NoSuchName(String),
    /// The message is longer than the receiver's `mailbox_message`.
    TooLarge {
        /// The receiver.
        to: String,
        /// Bytes of the message.
        len: usize,
        /// The most its mailbox takes.
        max: usize,
    },
    /// The receiver's mailbox holds `mailbox` unread messages already.
    Full {
        /// The receiver.
        to: String,
    },
    /// This process has no mailboxes (not started by forkroot).
    NoPost,
    /// The receiver's mailbox is not a ring (its memory was damaged).
    Broken {
        /// The receiver.
        to: String,
        /// What the ring said.
        error: RingError,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NoSuchName(n) => write!(f, "send: no daemon is named {n:?}"),
            SendError::TooLarge { to, len, max } => write!(
                f,
                "send to {to}: a {len}-byte message exceeds its mailbox_message of {max} bytes"
            ),
            SendError::Full { to } => write!(f, "send to {to}: its mailbox is full"),
            SendError::NoPost => f.write_str("send: this process has no mailboxes"),
            SendError::Broken { to, error } => write!(f, "send to {to}: {error}"),
        }
    }
}

impl std::error::Error for SendError {}

/// Why nothing was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvError {
    /// The caller's buffer is shorter than the next message (which stays).
    BufferTooSmall {
        /// Bytes of the body.
        need: usize,
    },
    /// This process has no mailbox.
    NoPost,
    /// The mailbox's ring failed (it is damaged, or another live process
    /// holds the receiving role).
    Ring(RingError),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::BufferTooSmall { need } => {
                write!(f, "recv: buffer too small for a {need}-byte message")
            }
            RecvError::NoPost => f.write_str("recv: this process has no mailbox"),
            RecvError::Ring(e) => write!(f, "recv: {e}"),
        }
    }
}

impl std::error::Error for RecvError {}

/// A message received into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// User or system.
    pub kind: MessageKind,
    /// The sender's name (`"root"` for system messages).
    pub from: &'static str,
    /// Bytes of the body at the start of the buffer.
    pub len: usize,
}

/// A message received with [`crate::Context::recv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// User or system.
    pub kind: MessageKind,
    /// The sender's name (`"root"` for system messages).
    pub from: &'static str,
    /// Its bytes.
    pub body: Vec<u8>,
    /// For DOWN and EXIT: who ended, and how.
    pub gone: Option<Gone>,
}

/// Views of the registry (read-only) and the post (read-write), valid for
/// the rest of the process: the root maps them before its first fork and
/// never unmaps them; an exec'd program maps them in `Post::from_fds`.
#[derive(Debug, Clone, Copy)]
pub struct Post {
    registry: NonNull<u8>,
    count: usize,
    post: NonNull<u8>,
    post_len: usize,
}

// SAFETY: the views hold pointers to shared mappings that live for the rest
// of the process; everything read through them is atomic or written once
// before any reader could exist.
unsafe impl Send for Post {}
// SAFETY: as above.
unsafe impl Sync for Post {}

/// Registry of this process, for [`judge`] (the ring's liveness predicate
/// takes no state): set once when the process learns its post.
static REGISTRY: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static REGISTRY_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Whether writer `w` is dead, by the registry: the root is never dead; a
/// daemon's writer is dead unless its slot's entry shows its generation and
/// the alive bit.
fn judge(w: WriterId) -> bool {
    if w.slot() == ROOT_SLOT {
        return false;
    }
    let base = REGISTRY.load(Ordering::Acquire);
    let count = REGISTRY_COUNT.load(Ordering::Acquire);
    let Some(base) = NonNull::new(base) else {
        return true;
    };
    if usize::from(w.slot()) >= count {
        return true;
    }
    let post = Post {
        registry: base,
        count,
        post: NonNull::dangling(),
        post_len: 0,
    };
    let life = post
        .entry(usize::from(w.slot()))
        .life
        .load(Ordering::Acquire);
    life != (u32::from(w.generation()) << 16 | 1)
}

impl Post {
    fn entry(&self, i: usize) -> &'static Entry {
        debug_assert!(i < self.count);
        let off = size_of::<Directory>() + i * size_of::<Entry>();
        // SAFETY: `i < count`, and the registry holds `count` entries after
        // the directory (checked when the view was made); entries are
        // 8-aligned in a page-aligned mapping, every bit pattern is valid,
        // and the mapping lives for the rest of the process.
        unsafe { &*self.registry.as_ptr().add(off).cast::<Entry>() }
    }

    /// Daemons in the registry.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The name of daemon `i` (its bytes were written before any fork and
    /// never change; a name that is not UTF-8 reads as empty).
    pub fn name(&self, i: usize) -> &'static str {
        let e = self.entry(i);
        let n = (e.name_len.load(Ordering::Acquire) as usize).min(NAME_BYTES);
        std::str::from_utf8(&e.name[..n]).unwrap_or("")
    }

    /// The slot of the daemon called `name` (never a spare slot: those
    /// are nameless).
    pub fn find(&self, name: &str) -> Option<usize> {
        if name.is_empty() {
            return None;
        }
        (0..self.count).find(|&i| self.name(i) == name)
    }

    /// Where daemon `i` is now.
    pub fn whereabouts(&self, i: usize) -> Whereabouts {
        let e = self.entry(i);
        let pid = e.pid.load(Ordering::Acquire);
        Whereabouts {
            pid: (pid != 0).then_some(pid),
            state: Presence::from_u32(e.state.load(Ordering::Acquire)),
            restarts: e.restarts.load(Ordering::Acquire),
        }
    }

    /// Daemon `i`'s ring, attached after checking that the registry places
    /// it inside the post.
    fn ring(&self, i: usize) -> Result<Ring<'static>, RingError> {
        let e = self.entry(i);
        let (off, len) = (e.ring_offset as usize, e.ring_len as usize);
        if off % ring::ALIGN != 0 || off.checked_add(len).is_none_or(|end| end > self.post_len) {
            return Err(RingError::NotARing("outside the post"));
        }
        // SAFETY: `[off, off+len)` lies inside the post, mapped read-write
        // for the rest of the process, and used only as rings.
        unsafe { ring::attach(self.post.as_ptr().add(off), len) }
    }

    /// Words of a [`MonitorRow`] in this tree.
    pub(crate) fn row_words(&self) -> usize {
        self.count.div_ceil(64).max(1)
    }

    /// The word and bit of the interest bitmap that say "some daemon may
    /// monitor daemon `j`": set by [`Mailbox::monitor`] after the bit in
    /// its own row, cleared by the root before it looks for watchers of
    /// `j` in every row, so a death nobody watches costs no look at any
    /// row. It lies in the post's last pages, which every daemon maps
    /// read-write: a stray write there costs the root a needless look, it
    /// never makes a DOWN (the rows decide). `None` for no such slot.
    fn interest(&self, j: usize) -> Option<(&AtomicU64, u64)> {
        if j >= self.count {
            return None;
        }
        let start = self.post_len.checked_sub(interest_len(self.row_words()))?;
        let off = start + (j / 64) * 8;
        // SAFETY: `start` is page-aligned (both lengths are whole pages)
        // and the area holds `row_words()` words, the last at
        // `post_len - 8` or below; the post is mapped for the process's
        // life; AtomicU64 has u64's layout and any bits are valid.
        let word = unsafe { &*self.post.as_ptr().add(off).cast::<AtomicU64>() };
        Some((word, 1 << (j % 64)))
    }

    /// Makes this view the one [`judge`] reads. Fork-safe.
    fn install(&self) {
        REGISTRY_COUNT.store(self.count, Ordering::Release);
        REGISTRY.store(self.registry.as_ptr(), Ordering::Release);
    }

    /// An exec'd program's view: maps the post (`FORKROOT_POST_FD`,
    /// read-write) and the registry (`FORKROOT_REGISTRY_FD`, read-only)
    /// after checking the registry's directory.
    pub(crate) fn from_fds(post_fd: RawFd, registry_fd: RawFd) -> io::Result<Post> {
        let size = |fd: RawFd| -> io::Result<usize> {
            let len = std::fs::metadata(format!("/proc/self/fd/{fd}"))?.len();
            usize::try_from(len).map_err(io::Error::other)
        };
        let (post_len, reg_len) = (size(post_fd)?, size(registry_fd)?);
        if reg_len < size_of::<Directory>() {
            return Err(io::Error::other(
                "the registry is smaller than its directory",
            ));
        }
        let registry = map(registry_fd, reg_len, sys::Access::ReadOnly)?;
        // SAFETY: the mapping is at least a Directory long, page-aligned;
        // Directory is integers only.
        let dir = unsafe { &*registry.as_ptr().cast::<Directory>() };
        let need = size_of::<Directory>() + dir.count as usize * size_of::<Entry>();
        if dir.magic != MAGIC || dir.version != VERSION || need > reg_len {
            return Err(io::Error::other("the registry's directory does not check"));
        }
        if dir.post_len as usize != post_len {
            return Err(io::Error::other(format!(
                "the post is {post_len} bytes, the registry says {}",
                dir.post_len
            )));
        }
        if dir.words as usize != (dir.count as usize).div_ceil(64).max(1) {
            return Err(io::Error::other(
                "the registry's monitor rows do not fit its daemons",
            ));
        }
        let post = map(post_fd, post_len, sys::Access::ReadWrite)?;
        Ok(Post {
            registry,
            count: dir.count as usize,
            post,
            post_len,
        })
    }
}

/// Maps `len` bytes of `fd` shared somewhere, for the rest of the process.
fn map(fd: RawFd, len: usize, access: sys::Access) -> io::Result<NonNull<u8>> {
    map_at(fd, 0, len, access)
}

/// Maps `len` bytes of `fd` from `offset` (a page multiple) shared
/// somewhere, for the rest of the process. Fork-safe: no allocation.
fn map_at(fd: RawFd, offset: u64, len: usize, access: sys::Access) -> io::Result<NonNull<u8>> {
    let len = len.max(1);
    let base = sys::reserve(len)?;
    // SAFETY: `[base, base+len)` is the reservation just made; nothing
    // refers into it. `fd` is the caller's, open across the call.
    let mapped = unsafe {
        sys::map_fixed(
            base,
            len,
            std::os::fd::BorrowedFd::borrow_raw(fd),
            offset,
            access,
        )
    };
    if let Err(e) = mapped {
        // SAFETY: the reservation is ours and nothing refers into it.
        let _ = unsafe { sys::unmap(base, len) };
        return Err(e);
    }
    Ok(base)
}

/// One daemon's row of monitor bits: bit `j` set says this daemon
/// monitors daemon `j`. The row is whole pages of memory the root owns
/// (sealed memfds `forkroot:monitors`), mapped read-write by the root (not
/// inherited by its children) and by the daemon's own processes only: a
/// forked daemon maps its own page range of the rows' arena from the
/// root's descriptor before it closes that; an exec'd program gets a file
/// holding its row alone at `FORKROOT_MONITORS_FD`. So a daemon can set
/// bits only in its own row, and the root reads daemon `w`'s monitors only
/// from `w`'s row.
#[derive(Debug, Clone, Copy)]
pub struct MonitorRow {
    words: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the row is a shared mapping that lives for the rest of the
// process (never unmapped), and is only touched through atomics.
unsafe impl Send for MonitorRow {}
// SAFETY: as above.
unsafe impl Sync for MonitorRow {}

impl MonitorRow {
    /// Bytes of a row file of `words` words: whole pages, the unit the
    /// kernel protects (and maps) memory in.
    fn file_len(words: usize) -> usize {
        crate::region::page_round((words * 8) as u64) as usize
    }

    /// Maps the row at `offset` of file `fd` (of `words` words) read-write,
    /// for the rest of the process. Fork-safe: two system calls, no
    /// allocation.
    pub(crate) fn map(fd: RawFd, offset: u64, words: usize) -> io::Result<MonitorRow> {
        let base = map_at(
            fd,
            offset,
            MonitorRow::file_len(words),
            sys::Access::ReadWrite,
        )?;
        Ok(MonitorRow {
            words: base.cast(),
            len: words,
        })
    }

    /// The word and bit of daemon `j`, if the row has one.
    fn bit(&self, j: usize) -> Option<(&AtomicU64, u64)> {
        if j / 64 >= self.len {
            return None;
        }
        // SAFETY: word `j / 64` lies inside the mapping (`len` words, page
        // rounded), 8-aligned (page-aligned base); any bits are a valid
        // atomic; the mapping lives for the rest of the process.
        let word = unsafe { &*self.words.as_ptr().add(j / 64) };
        Some((word, 1u64 << (j % 64)))
    }

    /// Clears every bit (the root, when the row's daemon ended).
    fn clear(&self) {
        for k in 0..self.len {
            if let Some((w, _)) = self.bit(k * 64) {
                w.store(0, Ordering::Release);
            }
        }
    }
}

/// A daemon's own mailbox and its right to send: what
/// [`crate::Context::send`]/[`crate::Context::recv`] use.
pub struct Mailbox {
    post: Post,
    me: usize,
    id: WriterId,
    consumer: Option<Consumer<'static>>,
    /// Its row of monitor bits (none: it cannot monitor).
    monitors: Option<MonitorRow>,
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("me", &self.me)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Mailbox {
    /// The mailbox of daemon `me`, writing as `id`, the id the root
    /// assigned this process ([`PostOffice::begin`]). Daemons get theirs in
    /// their `Context`; this is for a process that stands in for daemon
    /// `me` (benchmarks, tests). Fork-safe: allocates nothing, makes no
    /// system call.
    pub fn new(post: Post, me: usize, id: WriterId) -> Mailbox {
        post.install();
        Mailbox {
            post,
            me,
            id,
            consumer: None,
            monitors: None,
        }
    }

    /// This mailbox, monitoring through `row` (its daemon's own row of
    /// monitor bits, which the root gave this process). Fork-safe.
    pub fn with_monitors(mut self, row: Option<MonitorRow>) -> Mailbox {
        self.monitors = row;
        self
    }

    /// An exec'd program's mailbox, from its environment.
    pub(crate) fn from_env(
        get: impl Fn(&str) -> Option<String>,
        name: &str,
    ) -> Result<Option<Mailbox>, crate::daemon::AttachError> {
        use crate::daemon::AttachError::BadVariable;
        let bad = |var: &'static str, value: String, problem: String| BadVariable {
            name: var,
            value,
            problem,
        };
        let fd = |var: &'static str| -> Result<RawFd, crate::daemon::AttachError> {
            let v = get(var).ok_or_else(|| bad(var, String::new(), "is not set".into()))?;
            v.parse::<RawFd>()
                .ok()
                .filter(|&fd| fd >= 3)
                .ok_or_else(|| bad(var, v, "is not a descriptor number".into()))
        };
        let (pfd, rfd) = (fd(POST_FD_VAR)?, fd(REGISTRY_FD_VAR)?);
        let raw = get(WRITER_VAR).unwrap_or_default();
        let id = raw
            .parse::<u32>()
            .ok()
            .and_then(WriterId::from_raw)
            .ok_or_else(|| bad(WRITER_VAR, raw.clone(), "is not a writer id".into()))?;
        let post = Post::from_fds(pfd, rfd).map_err(|e| {
            bad(
                POST_FD_VAR,
                pfd.to_string(),
                format!("is not the tree's post: {e}"),
            )
        })?;
        let me = usize::from(id.slot());
        if me >= post.count {
            // Added by a reload: the post has no mailbox for it.
            return Ok(None);
        }
        if post.name(me) != name {
            return Err(bad(
                WRITER_VAR,
                raw,
                format!("does not name {name:?} in the registry"),
            ));
        }
        let mfd = fd(MONITORS_FD_VAR)?;
        let row = MonitorRow::map(mfd, 0, post.row_words()).map_err(|e| {
            bad(
                MONITORS_FD_VAR,
                mfd.to_string(),
                format!("is not a row of monitors: {e}"),
            )
        })?;
        Ok(Some(Mailbox::new(post, me, id).with_monitors(Some(row))))
    }

    /// The registry.
    pub fn post(&self) -> &Post {
        &self.post
    }

    /// Sends `body` to the daemon called `to`: into its mailbox, where it
    /// waits if `to` is down. Never blocks.
    pub fn send(&self, to: &str, body: &[u8]) -> Result<(), SendError> {
        let j = self
            .post
            .find(to)
            .ok_or_else(|| SendError::NoSuchName(to.to_owned()))?;
        self.send_to(j, MessageKind::User, body)
    }

    fn send_to(&self, j: usize, kind: MessageKind, body: &[u8]) -> Result<(), SendError> {
        let to = || self.post.name(j).to_owned();
        let ring = self
            .post
            .ring(j)
            .map_err(|error| SendError::Broken { to: to(), error })?;
        let max = (ring.config().slot_size as usize).saturating_sub(HEAD);
        if body.len() > max {
            return Err(SendError::TooLarge {
                to: to(),
                len: body.len(),
                max,
            });
        }
        let head = Head {
            kind: kind.as_u32(),
            from: u32::from(self.id.slot()),
        };
        let head = head_bytes(&head);
        match ring.producer_as(self.id).try_send_parts(&[&head, body]) {
            Ok(()) => Ok(()),
            Err(RingError::Full) => Err(SendError::Full { to: to() }),
            Err(error) => Err(SendError::Broken { to: to(), error }),
        }
    }

    /// Receives the next message into `buf`, waiting at most `timeout`
    /// (`None`: no limit) on the ring's futex; `Ok(None)` on timeout. A
    /// damaged message (failed crc) is skipped, never delivered.
    pub fn recv_into(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<Option<Envelope>, RecvError> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let post = self.post;
        let consumer = match &mut self.consumer {
            Some(c) => c,
            none => {
                let ring = post.ring(self.me).map_err(RecvError::Ring)?;
                none.insert(
                    ring.consumer_with(self.id, &judge)
                        .map_err(RecvError::Ring)?,
                )
            }
        };
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            match consumer.wait(left) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(RingError::Corrupt { .. }) => continue,
                Err(e) => return Err(RecvError::Ring(e)),
            }
            let got = match consumer.peek() {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(RingError::Corrupt { .. }) => continue,
                Err(e) => return Err(RecvError::Ring(e)),
            };
            if got.len() < HEAD {
                got.commit();
                continue;
            }
            let head = read_head(&got[..HEAD]);
            let Some(kind) = MessageKind::from_u32(head.kind) else {
                got.commit();
                continue;
            };
            // A system message comes from the root's writer only.
            let from = match head.from {
                f if f == u32::from(ROOT_SLOT) && kind.is_system() => "root",
                f if (f as usize) < post.count && !kind.is_system() => post.name(f as usize),
                _ => {
                    got.commit();
                    continue;
                }
            };
            let body = &got[HEAD..];
            if body.len() > buf.len() {
                return Err(RecvError::BufferTooSmall { need: body.len() });
            }
            let len = body.len();
            buf[..len].copy_from_slice(body);
            got.commit();
            return Ok(Some(Envelope { kind, from, len }));
        }
    }

    /// [`Mailbox::recv_into`] into a new buffer of the mailbox's size.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, RecvError> {
        let size = self
            .post
            .ring(self.me)
            .map_err(RecvError::Ring)?
            .config()
            .slot_size as usize;
        let mut buf = vec![0; size];
        let post = self.post;
        Ok(self.recv_into(&mut buf, timeout)?.map(|e| {
            buf.truncate(e.len);
            let gone = e
                .kind
                .is_system()
                .then(|| Gone::decode(&post, &buf))
                .flatten();
            Message {
                kind: e.kind,
                from: e.from,
                body: buf,
                gone,
            }
        }))
    }

    /// The counters of this daemon's mailbox: messages skipped because
    /// their writer died before committing them, or failed their crc.
    pub fn stats(&self) -> Result<ring::Stats, RingError> {
        Ok(self.post.ring(self.me)?.stats())
    }

    /// Monitors the daemon called `name`: when its process ends (for any
    /// reason), the root puts a DOWN message into this mailbox, once. A
    /// monitor lasts until it fires or this process ends.
    pub fn monitor(&self, name: &str) -> Result<(), SendError> {
        let (word, bit) = self.my_monitor_bit(name)?;
        word.fetch_or(bit, Ordering::AcqRel);
        // Then the interest bit, so the root that finds it also finds the
        // row's bit (it clears the interest bit before it looks).
        if let Some((word, bit)) = self.post.find(name).and_then(|j| self.post.interest(j)) {
            word.fetch_or(bit, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Drops a monitor of `name` (nothing if there was none).
    pub fn demonitor(&self, name: &str) -> Result<(), SendError> {
        let (word, bit) = self.my_monitor_bit(name)?;
        word.fetch_and(!bit, Ordering::AcqRel);
        Ok(())
    }

    /// The word and bit, in this daemon's own row, that say "this daemon
    /// monitors `name`".
    fn my_monitor_bit(&self, name: &str) -> Result<(&AtomicU64, u64), SendError> {
        let j = self
            .post
            .find(name)
            .ok_or_else(|| SendError::NoSuchName(name.to_owned()))?;
        self.monitors
            .as_ref()
            .and_then(|row| row.bit(j))
            .ok_or(SendError::NoPost)
    }

    /// Where the daemon called `name` is now.
    pub fn whereis(&self, name: &str) -> Option<Whereabouts> {
        self.post.find(name).map(|i| self.post.whereabouts(i))
    }
}

fn head_bytes(h: &Head) -> [u8; HEAD] {
    let mut b = [0; HEAD];
    b[..4].copy_from_slice(&h.kind.to_le_bytes());
    b[4..].copy_from_slice(&h.from.to_le_bytes());
    b
}

fn read_head(b: &[u8]) -> Head {
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Head {
        kind: word(0),
        from: word(4),
    }
}

/// One daemon's mailbox shape, from its config.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    /// Its name.
    pub name: &'a str,
    /// `mailbox`: messages it holds (a power of two).
    pub capacity: u32,
    /// `mailbox_message`: bytes of the largest message.
    pub message: u32,
}

impl<'a> Shape<'a> {
    /// The shape daemon `d`'s config gives its mailbox.
    pub(crate) fn of(d: &'a crate::config::DaemonConfig) -> Shape<'a> {
        Shape {
            name: &d.name,
            capacity: d.mailbox,
            message: d.mailbox_message,
        }
    }
}

/// The root's side: both files, the registry's writable view (not
/// inherited by children), every daemon's row of monitor bits, and each
/// daemon's next generation.
#[derive(Debug)]
pub struct PostOffice {
    view: Post,
    /// The registry mapped read-write, `MADV_DONTFORK`: the root's only.
    rw: NonNull<u8>,
    post_fd: OwnedFd,
    registry_ro: OwnedFd,
    /// Last generation handed out per daemon.
    generations: Vec<u16>,
    /// A standby's id, published when it takes over.
    pending: Vec<Option<WriterId>>,
    /// Each mailbox as `ring::init` made it: the root sends through these,
    /// never re-reading a ring's geometry from shared memory. `None`: a
    /// spare slot no reload has taken yet.
    rings: Vec<Option<Ring<'static>>>,
    /// Every slot's row of monitor bits, a page range each, in one file
    /// (one descriptor, one mapping in the root however many daemons).
    arena_fd: OwnedFd,
    /// Each daemon's row: the root's mapping of it (in the arena's
    /// mapping, `MADV_DONTFORK`, or of its own file), and its own file once
    /// it is an exec'd program's (which must get its row alone).
    rows: Vec<Option<(Option<OwnedFd>, MonitorRow)>>,
    /// Where each slot's room lies in the post: `(offset, bytes)`.
    room: Vec<(usize, usize)>,
    /// Spare slots reserved at start.
    spare: usize,
    /// The root's mapping of the rows' arena (set once made).
    arena: Option<NonNull<u8>>,
    /// How each daemon's last process ended: `(pid, reason, restarts)`,
    /// for the EXIT messages its links get.
    last: Vec<Option<(u32, crate::ExitReason, u32)>>,
    /// System messages not delivered (a full mailbox).
    dropped: u64,
}

/// Why a daemon a reload adds cannot have a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddError {
    /// Every spare slot reserved at start is taken.
    NoRoom {
        /// Spare slots the root reserved (`[supervisor] spare_mailboxes`).
        spare: usize,
    },
    /// Its mailbox is larger than a spare slot's room.
    TooLarge {
        /// Bytes its ring needs.
        need: usize,
        /// Bytes of a spare slot.
        room: usize,
    },
    /// The ring or its row of monitors could not be made.
    Failed(String),
}

impl fmt::Display for AddError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddError::NoRoom { spare } => write!(
                f,
                "no mailbox left for it: the {spare} spare mailbox(es) reserved at start \
                 ([supervisor] spare_mailboxes) are taken; restart the root, or reserve more"
            ),
            AddError::TooLarge { need, room } => write!(
                f,
                "its mailbox needs {need} bytes, more than the {room} of a spare mailbox \
                 (room for mailbox = {DEFAULT_CAPACITY} of mailbox_message = {DEFAULT_MESSAGE}); \
                 make it smaller or restart the root"
            ),
            AddError::Failed(e) => write!(f, "its mailbox cannot be made: {e}"),
        }
    }
}

impl std::error::Error for AddError {}

/// The room of each slot in the post, as (offset, length): one per daemon
/// of `daemons`, its ring's size, then `spare` of a default mailbox's;
/// and the post's length, before rounding to pages.
/// Bytes of the interest bitmap of `words` words: whole pages.
fn interest_len(words: usize) -> usize {
    crate::region::page_round((words * 8) as u64) as usize
}

fn rooms(daemons: &[Shape<'_>], spare: usize) -> io::Result<(Vec<(usize, usize)>, usize)> {
    let spare_len = ring::required_size(&ring_config(&Shape {
        name: "",
        capacity: DEFAULT_CAPACITY,
        message: DEFAULT_MESSAGE,
    }))
    .map_err(|e| io::Error::other(format!("spare mailbox: {e}")))?;
    let mut room = Vec::with_capacity(daemons.len() + spare);
    let mut post_len = 0usize;
    for d in daemons {
        let len = ring::required_size(&ring_config(d))
            .map_err(|e| io::Error::other(format!("mailbox of {}: {e}", d.name)))?;
        room.push((post_len, len));
        post_len = (post_len + len).next_multiple_of(ring::ALIGN);
    }
    for _ in 0..spare {
        room.push((post_len, spare_len));
        post_len = (post_len + spare_len).next_multiple_of(ring::ALIGN);
    }
    Ok((room, post_len))
}

impl PostOffice {
    /// Makes and maps the post and the registry for `daemons` and `spare`
    /// slots a reload may give to daemons it adds (together at most
    /// 65,534), every daemon's ring initialised, every entry stopped, and
    /// every daemon's row of monitor bits made. A spare slot has the room
    /// of a mailbox of the default shape; its entry stays nameless until
    /// [`PostOffice::add`].
    pub fn create(daemons: &[Shape<'_>], spare: usize) -> io::Result<PostOffice> {
        let count = daemons.len() + spare;
        if count >= usize::from(ROOT_SLOT) {
            return Err(io::Error::other(
                "mailboxes: too many daemons and spare mailboxes (at most 65534)",
            ));
        }
        let (room, post_len) = rooms(daemons, spare)?;
        let words = count.div_ceil(64).max(1);
        // The rings, then the interest bitmap in pages of its own at the
        // end ([`Post::interest`]).
        let post_len =
            crate::region::page_round(post_len.max(8) as u64) as usize + interest_len(words);
        let reg_len =
            crate::region::page_round((size_of::<Directory>() + count * size_of::<Entry>()) as u64)
                as usize;
        let row_len = MonitorRow::file_len(words);
        let arena_len = row_len * count.max(1);
        let arena_fd = sys::memfd_sealed(c"forkroot:monitors", arena_len as u64)?;
        let arena = map(arena_fd.as_raw_fd(), arena_len, sys::Access::ReadWrite)?;
        // SAFETY: `arena` is the root's own mapping of `arena_len` bytes,
        // just made: no child inherits it (each maps its own row).
        unsafe { sys::dont_fork(arena, arena_len)? };
        let post_fd = sys::memfd_sealed(c"forkroot:post", post_len as u64)?;
        let registry_fd = sys::memfd_sealed(c"forkroot:registry", reg_len as u64)?;
        let registry_ro = sys::reopen_read_only(registry_fd.as_fd())?;
        let post = map(post_fd.as_raw_fd(), post_len, sys::Access::ReadWrite)?;
        let rw = map(registry_fd.as_raw_fd(), reg_len, sys::Access::ReadWrite)?;
        // SAFETY: `rw` is the root's own mapping of `reg_len` bytes, just made.
        unsafe { sys::dont_fork(rw, reg_len)? };
        let ro = map(registry_ro.as_raw_fd(), reg_len, sys::Access::ReadOnly)?;
        // SAFETY: the mapping is page-aligned and holds the directory; no
        // one else maps the file yet.
        unsafe {
            rw.as_ptr().cast::<Directory>().write(Directory {
                magic: MAGIC,
                version: VERSION,
                count: count as u32,
                post_len: post_len as u64,
                words: words as u64,
                _pad: [0; 4],
            });
        }
        let mut office = PostOffice {
            view: Post {
                registry: ro,
                count,
                post,
                post_len,
            },
            rw,
            post_fd,
            registry_ro,
            generations: vec![0; count],
            pending: vec![None; count],
            rings: Vec::with_capacity(count),
            arena_fd,
            rows: Vec::with_capacity(count),
            room,
            spare,
            arena: None,
            last: vec![None; count],
            dropped: 0,
        };
        for i in 0..count {
            // SAFETY: entry `i` lies inside the registry (sized for every
            // slot above), 8-aligned; no process reads it yet. A spare
            // slot's entry is nameless, with no ring, until a reload takes
            // it.
            unsafe {
                rw.as_ptr()
                    .add(size_of::<Directory>() + i * size_of::<Entry>())
                    .cast::<Entry>()
                    .write(Entry {
                        name_len: AtomicU32::new(0),
                        life: AtomicU32::new(0),
                        name: [0; NAME_BYTES],
                        ring_offset: 0,
                        ring_len: 0,
                        pid: AtomicU32::new(0),
                        state: AtomicU32::new(0),
                        restarts: AtomicU32::new(0),
                        _pad: 0,
                    });
            }
            office.rings.push(None);
            office.rows.push(None);
        }
        office.arena = Some(arena);
        for (i, d) in daemons.iter().enumerate() {
            office.open(i, d)?;
        }
        Ok(office)
    }

    /// Slot `i` becomes daemon `d`'s: its ring is made in the slot's room,
    /// its row of monitor bits is made, then its entry is named (the name
    /// last, so no reader finds a name without its ring).
    fn open(&mut self, i: usize, d: &Shape<'_>) -> io::Result<()> {
        let (off, room) = self.room[i];
        let cfg = ring_config(d);
        let len = ring::required_size(&cfg)
            .map_err(|e| io::Error::other(format!("mailbox of {}: {e}", d.name)))?;
        if len > room {
            return Err(io::Error::other(format!(
                "mailbox of {}: {len} bytes do not fit its {room}",
                d.name
            )));
        }
        let row = self.arena_row(i)?;
        row.clear();
        // SAFETY: `[off, off+len)` lies inside the post (summed in
        // `create`), 128-aligned, and no process uses it yet (a spare
        // slot's room is nobody's until now); the mapping lives as long as
        // the root.
        let ring = unsafe { ring::init(self.view.post.as_ptr().add(off), len, &cfg) }
            .map_err(|e| io::Error::other(format!("mailbox of {}: {e}", d.name)))?;
        let mut name = [0u8; NAME_BYTES];
        let n = d.name.len().min(NAME_BYTES);
        name[..n].copy_from_slice(&d.name.as_bytes()[..n]);
        let at = size_of::<Directory>() + i * size_of::<Entry>();
        // SAFETY: entry `i` lies inside the root's writable registry
        // mapping; its plain fields are read by others only once its
        // `name_len` is published below (a nameless entry matches no name
        // and is never looked into).
        unsafe {
            let e = self.rw.as_ptr().add(at).cast::<Entry>();
            (*e).name = name;
            (*e).ring_offset = off as u64;
            (*e).ring_len = len as u64;
        }
        self.entry_rw(i).name_len.store(n as u32, Ordering::Release);
        self.rings[i] = Some(ring);
        self.rows[i] = Some((None, row));
        Ok(())
    }

    /// Slot `i`'s row in the root's mapping of the arena.
    fn arena_row(&self, i: usize) -> io::Result<MonitorRow> {
        let base = self
            .arena
            .ok_or_else(|| io::Error::other("the monitors' arena is not mapped"))?;
        let words = self.view.row_words();
        debug_assert!(i < self.view.count);
        Ok(MonitorRow {
            // SAFETY: row `i` lies inside the arena (`count` rows of
            // `file_len(words)` bytes each, mapped for the root's life).
            words: unsafe { base.add(i * MonitorRow::file_len(words)) }.cast(),
            len: words,
        })
    }

    /// Whether a daemon of shape `d` could take slot `i` (its index in
    /// the tree): a spare slot, free, with room enough.
    pub fn can_add(&self, i: usize, d: &Shape<'_>) -> Result<(), AddError> {
        if i >= self.view.count || self.rings[i].is_some() {
            return Err(AddError::NoRoom { spare: self.spare });
        }
        let need =
            ring::required_size(&ring_config(d)).map_err(|e| AddError::Failed(e.to_string()))?;
        let room = self.room[i].1;
        if need > room {
            return Err(AddError::TooLarge { need, room });
        }
        Ok(())
    }

    /// A daemon a reload adds takes spare slot `i` (its index in the
    /// tree): [`PostOffice::can_add`], then its ring and row are made and
    /// its name published.
    pub fn add(&mut self, i: usize, d: &Shape<'_>) -> Result<(), AddError> {
        self.can_add(i, d)?;
        self.open(i, d).map_err(|e| AddError::Failed(e.to_string()))
    }

    /// Daemon `i` left the tree (a reload removed it): its name is
    /// withdrawn from the registry, so no one finds it (and a daemon of
    /// that name added later is found in its own slot). Its slot stays
    /// taken, as its index does.
    pub fn retire(&self, i: usize) {
        if self.has(i) {
            self.entry_rw(i).name_len.store(0, Ordering::Release);
        }
    }

    /// Whether slot `i` is a daemon's (not a spare one no reload took).
    pub fn has(&self, i: usize) -> bool {
        self.rings.get(i).is_some_and(Option::is_some)
    }

    /// Where daemon `i`'s processes map its row of monitor bits from
    /// (`MonitorRow::map`): a file and an offset; none for a slot not
    /// taken. An exec'd program (`alone`) gets a file that holds its row
    /// alone, made at its first start (offset 0); a forked daemon maps its
    /// row's pages of the arena (or that file, once it has one).
    pub fn monitor_fd(&mut self, i: usize, alone: bool) -> io::Result<Option<(RawFd, u64)>> {
        let row_len = MonitorRow::file_len(self.view.row_words());
        let Some((own, row)) = self.rows.get_mut(i).and_then(Option::as_mut) else {
            return Ok(None);
        };
        if own.is_none() && alone {
            let fd = sys::memfd_sealed(c"forkroot:monitors", row_len as u64)?;
            let mine = MonitorRow::map(fd.as_raw_fd(), 0, row.len)?;
            // SAFETY: `mine` is the root's own mapping of `row_len` bytes,
            // just made: no child inherits it.
            unsafe { sys::dont_fork(mine.words.cast(), row_len)? };
            // No process of it runs (this is before its fork): its arena
            // row is clear, and stays so.
            row.clear();
            *own = Some(fd);
            *row = mine;
        }
        Ok(Some(match own {
            Some(fd) => (fd.as_raw_fd(), 0),
            None => (self.arena_fd.as_raw_fd(), (i * row_len) as u64),
        }))
    }

    /// The view every daemon inherits.
    pub fn post(&self) -> Post {
        self.view
    }

    /// In a copy of the root that reads the post only through its view
    /// ([`PostOffice::post`]) and never uses this again (the zygote):
    /// frees the per-daemon tables, which every fork of that process would
    /// otherwise copy. The mappings stay (nothing here unmaps); a monitor
    /// row's own file, if one was made, is this copy's descriptor and is
    /// closed. The post office is left unusable (its count still says how
    /// many daemons, its tables are empty): nothing may call it after.
    pub(crate) fn drop_tables(&mut self) {
        self.generations = Vec::new();
        self.pending = Vec::new();
        self.rings = Vec::new();
        self.rows = Vec::new();
        self.room = Vec::new();
        self.last = Vec::new();
    }

    fn entry_rw(&self, i: usize) -> &Entry {
        assert!(i < self.view.count);
        let at = size_of::<Directory>() + i * size_of::<Entry>();
        // SAFETY: entry `i` lies inside the root's writable mapping, which
        // lives as long as `self`; the root only stores to its atomics.
        unsafe { &*self.rw.as_ptr().add(at).cast::<Entry>() }
    }

    /// The next writer id of daemon `i`, before forking it. A primary's is
    /// published at once (so it is alive before its first send); a
    /// standby's when it takes over ([`PostOffice::took_over`]).
    pub fn begin(&mut self, i: usize, standby: bool) -> WriterId {
        if !self.has(i) {
            // No slot of its own (a reload adds a daemon only once it has
            // one): an id that names it, never published.
            return WriterId::new(i as u16, 1).expect("generation is not 0");
        }
        let mut g = self.generations[i].wrapping_add(1);
        if g == 0 {
            g = 1;
        }
        self.generations[i] = g;
        let id = WriterId::new(i as u16, g).expect("generation is never 0");
        if standby {
            self.pending[i] = Some(id);
        } else {
            // A new incarnation monitors nothing yet: what a straggler of
            // the last one (a transaction, a grandchild holding the row)
            // set after the row was cleared at its death is dropped.
            if let Some((_, row)) = &self.rows[i] {
                row.clear();
            }
            self.entry_rw(i)
                .life
                .store(u32::from(g) << 16 | 1, Ordering::Release);
        }
        id
    }

    /// Daemon `i`'s standby took over as `pid`: its id is the live one.
    pub fn took_over(&mut self, i: usize, pid: u32) {
        if !self.has(i) {
            return;
        }
        if let Some(id) = self.pending[i].take() {
            let e = self.entry_rw(i);
            e.life
                .store(u32::from(id.generation()) << 16 | 1, Ordering::Release);
            e.pid.store(pid, Ordering::Release);
        }
    }

    /// Daemon `i` runs as `pid`.
    pub fn forked(&self, i: usize, pid: u32) {
        if !self.has(i) {
            return;
        }
        self.entry_rw(i).pid.store(pid, Ordering::Release);
    }

    /// Daemon `i`'s process was reaped (or never forked): its writer id is
    /// dead from now on, and the monitors it held end with it (its row is
    /// cleared).
    pub fn ended(&self, i: usize) {
        if !self.has(i) {
            return;
        }
        let e = self.entry_rw(i);
        let life = e.life.load(Ordering::Relaxed);
        e.life.store(life & !1, Ordering::Release);
        e.pid.store(0, Ordering::Release);
        if let Some((_, row)) = &self.rows[i] {
            row.clear();
        }
    }

    /// Daemon `i`'s process `pid` was reaped after ending with `reason`
    /// (`restarts` before it): its writer id is dead from now on, every
    /// daemon whose own row has `i`'s bit set gets a DOWN message (and the
    /// bit is cleared: a monitor fires once), and the monitors `i` held
    /// are dropped (its row cleared). Bounded and allocation-free: one
    /// word looked at in each daemon's row, `i`'s row cleared, one bounded
    /// send per watcher. Returns how many DOWN messages were delivered.
    pub fn died(&mut self, i: usize, pid: u32, reason: crate::ExitReason, restarts: u32) -> usize {
        if !self.has(i) {
            return 0;
        }
        self.ended(i);
        self.last[i] = Some((pid, reason, restarts));
        // Nobody may watch `i`: no row to look at (a death costs the same
        // whatever the tree's size). Cleared before the look: a monitor
        // set meanwhile sets it again and is found at `i`'s next death.
        let watched = self
            .view
            .interest(i)
            .is_some_and(|(word, bit)| word.fetch_and(!bit, Ordering::AcqRel) & bit != 0);
        if !watched {
            return 0;
        }
        let body = Gone::encode(i, &self.view, pid, reason, restarts);
        let mut delivered = 0;
        for w in 0..self.rows.len() {
            // Only `w` (and the root) can write `w`'s row: a bit there is
            // `w`'s own request.
            let asked = match &self.rows[w] {
                // A load first: most rows do not have the bit, and are
                // then only read.
                Some((_, row)) if w != i => row.bit(i).is_some_and(|(word, bit)| {
                    word.load(Ordering::Acquire) & bit != 0
                        && word.fetch_and(!bit, Ordering::AcqRel) & bit != 0
                }),
                _ => false,
            };
            if asked && self.deliver(w, MessageKind::Down, &body) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Tells daemon `to` (which traps exits) that `link` died: an EXIT
    /// message with how `link`'s last process ended. Whether it was
    /// delivered.
    pub fn exit_to(&mut self, to: usize, link: usize) -> bool {
        if !self.has(to) || !self.has(link) {
            return false;
        }
        let Some((pid, reason, restarts)) = self.last[link] else {
            return false;
        };
        let body = Gone::encode(link, &self.view, pid, reason, restarts);
        self.deliver(to, MessageKind::Exit, &body)
    }

    /// Puts a system message into daemon `to`'s mailbox, as the root's
    /// writer, with a bounded search for a free slot: a full (or damaged)
    /// mailbox loses the message, counted in [`PostOffice::dropped`].
    fn deliver(&mut self, to: usize, kind: MessageKind, body: &[u8]) -> bool {
        let head = head_bytes(&Head {
            kind: kind.as_u32(),
            from: u32::from(ROOT_SLOT),
        });
        let root = WriterId::new(ROOT_SLOT, 1).expect("nonzero");
        let sent = self.rings[to].as_ref().is_some_and(|ring| {
            ring.producer_as(root)
                .try_send_bounded(&[&head, body])
                .is_ok()
        });
        if !sent {
            self.dropped += 1;
        }
        sent
    }

    /// System messages lost to full mailboxes so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Publishes daemon `i`'s state and restart count.
    pub fn show(&self, i: usize, state: Presence, restarts: u32) {
        if !self.has(i) {
            return;
        }
        let e = self.entry_rw(i);
        e.state.store(state.as_u32(), Ordering::Release);
        e.restarts.store(restarts, Ordering::Release);
    }

    /// The descriptors an exec'd program gets (post read-write, registry
    /// read-only).
    pub fn fds(&self) -> (RawFd, RawFd) {
        (self.post_fd.as_raw_fd(), self.registry_ro.as_raw_fd())
    }

    /// The environment an exec'd program finds its mailbox with.
    pub fn exec_env(
        id: WriterId,
        post_fd: RawFd,
        registry_fd: RawFd,
        monitors_fd: RawFd,
    ) -> [String; 4] {
        [
            format!("{POST_FD_VAR}={post_fd}"),
            format!("{REGISTRY_FD_VAR}={registry_fd}"),
            format!("{WRITER_VAR}={}", id.raw()),
            format!("{MONITORS_FD_VAR}={monitors_fd}"),
        ]
    }
}

fn ring_config(d: &Shape<'_>) -> ring::Config {
    ring::Config {
        kind: Kind::Mpsc,
        capacity: d.capacity,
        slot_size: d.message + HEAD as u32,
        checksum: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str) -> Shape<'_> {
        Shape {
            name,
            capacity: 4,
            message: 64,
        }
    }

    /// Daemon `i`'s mailbox, monitoring through its own row (as its
    /// process maps it).
    fn mailbox(office: &mut PostOffice, i: usize) -> Mailbox {
        let id = office.begin(i, false);
        let (fd, at) = office.monitor_fd(i, false).expect("a row").expect("a slot");
        let row = MonitorRow::map(fd, at, office.post().row_words()).expect("map the row");
        Mailbox::new(office.post(), i, id).with_monitors(Some(row))
    }

    #[test]
    fn a_down_goes_only_to_the_daemons_whose_own_row_asks_and_fires_once() {
        let mut office =
            PostOffice::create(&[shape("a"), shape("b"), shape("c")], 0).expect("post office");
        let mut a = mailbox(&mut office, 0);
        let mut c = mailbox(&mut office, 2);
        a.monitor("b").expect("monitor b");
        assert_eq!(
            a.monitor("nobody"),
            Err(SendError::NoSuchName("nobody".into()))
        );
        let reason = crate::ExitReason::Exited(3);
        assert_eq!(office.died(1, 42, reason, 0), 1, "one watcher");
        let m = a.recv(Some(Duration::ZERO)).expect("recv").expect("a DOWN");
        assert_eq!(m.kind, MessageKind::Down);
        assert_eq!(m.gone.map(|g| (g.name, g.pid)), Some(("b", 42)));
        assert_eq!(c.recv(Some(Duration::ZERO)).expect("recv"), None);
        // Fired once; and a monitor ends with its holder's process.
        assert_eq!(office.died(1, 43, reason, 1), 0);
        c.monitor("b").expect("monitor b");
        office.ended(2);
        assert_eq!(
            office.died(1, 44, reason, 2),
            0,
            "c's monitors ended with it"
        );
        // A mailbox without a row of its own cannot monitor.
        let id = office.begin(1, false);
        let plain = Mailbox::new(office.post(), 1, id);
        assert_eq!(plain.monitor("a"), Err(SendError::NoPost));
    }

    #[test]
    fn a_death_looks_at_the_rows_only_when_a_monitor_said_so() {
        let mut office =
            PostOffice::create(&[shape("a"), shape("b"), shape("c")], 0).expect("post office");
        let a = mailbox(&mut office, 0);
        let interest = |office: &PostOffice, j: usize| {
            let (word, bit) = office.view.interest(j).expect("a slot");
            word.load(Ordering::Acquire) & bit != 0
        };
        assert!(!interest(&office, 1), "nobody watches b yet");
        a.monitor("b").expect("monitor b");
        assert!(interest(&office, 1), "monitor raises b's interest bit");
        assert!(!interest(&office, 2), "and only b's");
        let reason = crate::ExitReason::Exited(3);
        assert_eq!(office.died(1, 42, reason, 0), 1);
        assert!(!interest(&office, 1), "cleared by the death that looked");
        // A bit in a row without the interest bit (a write that did not go
        // through `monitor`) is not looked for: it waits for a monitor.
        let (word, bit) = a.monitors.as_ref().and_then(|r| r.bit(1)).expect("a's row");
        word.fetch_or(bit, Ordering::AcqRel);
        assert_eq!(office.died(1, 43, reason, 1), 0);
        a.monitor("b").expect("monitor b again");
        assert_eq!(
            office.died(1, 44, reason, 2),
            1,
            "found with the interest bit"
        );
        // The bitmap lies past every ring, in the post's last page.
        let (word, _) = office.view.interest(2).expect("a slot");
        let at = std::ptr::from_ref(word) as usize - office.view.post.as_ptr() as usize;
        assert!(at + 8 <= office.view.post_len && at >= office.view.post_len - 4096);
        assert!(office.view.interest(3).is_none(), "no slot 3");
    }

    #[test]
    fn a_spare_slot_takes_an_added_daemon_that_fits_and_a_retired_name_is_gone() {
        let mut office = PostOffice::create(&[shape("a")], 1).expect("post office");
        let post = office.post();
        assert_eq!(post.count(), 2);
        assert_eq!(post.find(""), None, "a spare slot has no name");
        assert!(!office.has(1));
        let big = Shape {
            name: "big",
            capacity: 1024,
            message: 1024,
        };
        assert!(matches!(
            office.can_add(1, &big),
            Err(AddError::TooLarge { .. })
        ));
        assert_eq!(
            office.can_add(0, &shape("x")),
            Err(AddError::NoRoom { spare: 1 })
        );
        office.add(1, &shape("new")).expect("a spare slot");
        assert_eq!(post.find("new"), Some(1));
        assert_eq!(
            office.can_add(2, &shape("x")),
            Err(AddError::NoRoom { spare: 1 })
        );
        // The added daemon receives what a daemon started before sends.
        let a = mailbox(&mut office, 0);
        let mut new = mailbox(&mut office, 1);
        a.send("new", b"hi").expect("send");
        let m = new
            .recv(Some(Duration::ZERO))
            .expect("recv")
            .expect("a message");
        assert_eq!((m.from, &m.body[..]), ("a", &b"hi"[..]));
        office.retire(1);
        assert_eq!(post.find("new"), None);
        assert_eq!(
            a.send("new", b"hi"),
            Err(SendError::NoSuchName("new".into()))
        );
    }
}
