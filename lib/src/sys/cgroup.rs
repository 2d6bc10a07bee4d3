//! cgroup v2: where the hierarchy is mounted, which cgroup this process is
//! in, and the few file operations the root makes on it. The policy (which
//! cgroups, when to kill) is in `root/cgroup.rs`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
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
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
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

/// Moves the calling process into the cgroup whose `cgroup.procs` is open
/// at `procs` (writing `0` names the writer). No allocation; fork-safe.
pub fn enter(procs: RawFd) -> io::Result<()> {
    super::write_all(procs, b"0")
}

/// Whether the cgroup whose `cgroup.events` is open at `events` still has
/// a live process in it or in a descendant (its `populated` line). Reading
/// also re-arms the descriptor's `EPOLLPRI`, which the kernel raises when
/// the file changes.
pub fn populated(events: &impl AsRawFd) -> io::Result<bool> {
    let mut buf = [0u8; 128];
    // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes.
    let n = super::cvt_r(|| unsafe {
        libc::pread(events.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
    })?;
    let text = std::str::from_utf8(&buf[..n as usize]).map_err(|_| io::ErrorKind::InvalidData)?;
    match text.lines().find_map(|l| l.strip_prefix("populated ")) {
        Some("0") => Ok(false),
        Some("1") => Ok(true),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cgroup.events has no populated line: {text:?}"),
        )),
    }
}

/// Waits up to `timeout_ms` for `EPOLLPRI` on `fd` (a `cgroup.events`
/// descriptor: the file changed). For the root's start-up only, before its
/// poll loop runs. Returns whether it came.
pub fn wait_changed(fd: &impl AsRawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call.
    let n = super::cvt_r(|| unsafe { libc::poll(&mut p, 1, timeout_ms) })?;
    Ok(n > 0)
}
