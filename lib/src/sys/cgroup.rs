//! cgroup v2: where the hierarchy is mounted, which cgroup this process is
//! in, and the few file operations the root makes on it. The policy (which
//! cgroups, when to kill) is in `root/cgroup.rs`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`
/// (the first `cgroup2` mount: `/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one). `None` without one.
pub fn mount_point() -> io::Result<Option<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().find_map(|line| {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER"
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        left.split(' ').nth(4).map(|p| PathBuf::from(unescape(p)))
    }))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = octal {
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup v2 path (the `0::PATH` line of
/// `/proc/self/cgroup`), `None` where it has none (a v1-only host).
pub fn own_path() -> io::Result<Option<String>> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned))
}

/// Writes `text` to the cgroup file `dir/file` in one write (the kernel
/// takes each write as one command).
pub fn write(dir: &Path, file: &str, text: &str) -> io::Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, text)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Moves the calling process into the cgroup whose directory is open at
/// `dir` (writing `0` to its `cgroup.procs` names the writer). No
/// allocation; fork-safe. A migration: prefer creating the process in its
/// cgroup ([`super::fork::fork_into`]).
pub fn enter(dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a NUL-terminated constant path, relative to `dir`.
    let procs = super::cvt_r(|| unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c"cgroup.procs".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor that we now own (closed on return).
    let procs = unsafe { OwnedFd::from_raw_fd(procs) };
    super::write_all(procs.as_fd(), b"0")
}

/// Opens the cgroup directory `dir` for [`enter`] and
/// [`super::fork::fork_into`] (close-on-exec).
pub fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    Ok(OwnedFd::from(file))
}

/// Whether the cgroup at `dir` still has a live process in it or in a
/// descendant (the `populated` line of its `cgroup.events`; a process
/// that has exited counts as gone even before it is reaped).
pub fn populated(dir: &Path) -> io::Result<bool> {
    use std::io::Read;
    let path = dir.join("cgroup.events");
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    // One read into a buffer on the stack (the file is two short lines):
    // open, read, close, on every death of a daemon.
    let mut buf = [0u8; 256];
    let n = std::fs::File::open(&path)
        .and_then(|mut f| f.read(&mut buf))
        .map_err(named)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    match text.lines().find_map(|l| l.strip_prefix("populated ")) {
        Some("0") => Ok(false),
        Some("1") => Ok(true),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no populated line in {text:?}", path.display()),
        )),
    }
}

/// An inotify instance (non-blocking, close-on-exec): one descriptor that
/// watches every daemon's `cgroup.events`, which the kernel marks modified
/// when its contents change.
#[derive(Debug)]
pub struct Inotify(OwnedFd);

impl Inotify {
    /// A new instance.
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: inotify_init1 takes flags only.
        let raw = super::cvt(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
        // SAFETY: a fresh descriptor that we now own.
        Ok(Inotify(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Watches `path` for modification; returns the watch descriptor its
    /// events carry.
    pub fn watch_modify(&self, path: &Path) -> io::Result<i32> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: a NUL-terminated path that lives across the call.
        super::cvt(unsafe {
            libc::inotify_add_watch(self.0.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY)
        })
    }

    /// Removes watch `wd`.
    pub fn unwatch(&self, wd: i32) -> io::Result<()> {
        // SAFETY: plain system call on our descriptor.
        super::cvt(unsafe { libc::inotify_rm_watch(self.0.as_raw_fd(), wd) }).map(drop)
    }

    /// Appends the watch descriptors of every pending event to `out`, until
    /// none is left.
    pub fn read(&self, out: &mut Vec<i32>) -> io::Result<()> {
        // Aligned for inotify_event; watches of files carry no name, but
        // names are skipped by their length all the same.
        let mut buf = [0u64; 512];
        loop {
            let bytes = buf.len() * 8;
            // SAFETY: `buf` is valid writable memory of `bytes` bytes.
            let n = match super::cvt_r(|| unsafe {
                libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), bytes)
            }) {
                Ok(n) => super::count(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            let head = std::mem::size_of::<libc::inotify_event>();
            let mut at = 0;
            while at + head <= n {
                // SAFETY: the kernel wrote a whole event header at `at`
                // (checked against `n`); read_unaligned needs no alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<u8>().add(at).cast()) };
                out.push(ev.wd);
                at += head + ev.len as usize;
            }
        }
    }
}

impl AsFd for Inotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Inotify {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Waits up to `timeout_ms` for `fd` (an [`Inotify`]) to be readable. For
/// the root's start-up only, before its poll loop runs. Returns whether it
/// became readable.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call.
    let n = super::cvt_r(|| unsafe { libc::poll(&raw mut p, 1, timeout_ms) })?;
    Ok(n > 0)
}
