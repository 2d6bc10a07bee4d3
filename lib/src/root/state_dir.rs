//! The state directory (`state_dir`): its lock, held for the root's life,
//! and its watch, through which another process damaging a region file is
//! seen at once and the daemon restarted on its repaired region.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::{ctx, kill_tree, Root, RootError};
use crate::sys::{self, Signal};

/// An inotify watch on `dir` for what another process may do to a region
/// file: write or truncate it (`IN_MODIFY`), remove or replace it.
pub(super) fn watch_state_dir(dir: &Path) -> io::Result<OwnedFd> {
    let fd = sys::file::inotify()?;
    let mask = libc::IN_MODIFY
        | libc::IN_DELETE
        | libc::IN_MOVED_FROM
        | libc::IN_MOVED_TO
        | libc::IN_CREATE;
    sys::file::watch(fd.as_fd(), dir, mask)?;
    Ok(fd)
}

/// How long a new root waits for the daemons of a root that was just
/// killed to die (they hold the `state_dir` lock until they are gone).
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Takes `state_dir/lock` exclusively. Another root, or the daemons of one
/// that was just killed (they die with it, but not in the same instant),
/// hold it; wait a little for the latter, refuse the former.
pub(super) fn lock_state_dir(dir: &Path) -> Result<OwnedFd, RootError> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(ctx("opening state_dir/lock"))?;
    let fd = OwnedFd::from(file);
    let start = Instant::now();
    loop {
        match sys::try_lock_exclusive(fd.as_fd()) {
            Ok(true) => return Ok(fd),
            Ok(false) if start.elapsed() < LOCK_WAIT => {
                // Start-up, not the event path: nothing else to do yet.
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(false) => {
                return Err(RootError::Io(
                    "state_dir",
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "{} is in use by another root (its lock is held)",
                            dir.display()
                        ),
                    ),
                ))
            }
            Err(e) => return Err(RootError::Io("locking state_dir", e)),
        }
    }
}

impl Root<'_> {
    /// The `state_dir` watch: a region file changed. A daemon writes its
    /// region through its mapping, which raises no event, but zeroing it
    /// (`MADV_REMOVE`) and the root's own repairs do, so an event says only
    /// where to look. A daemon with a process has its file checked at once
    /// (one without is checked before its next start): its size put right
    /// (see `RegionSet::ensure`), and if its bytes were cut off, the daemon
    /// is killed (SIGKILL), so that its replacement starts over on state its
    /// checkpoints verify rather than on zeroes where its state was.
    pub(super) fn on_watch(&mut self) {
        let mut events = Vec::new();
        if let Some(fd) = &self.watch {
            loop {
                match sys::file::read_events(fd.as_fd(), |mask, name| {
                    events.push((mask, name.to_vec()));
                }) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "reading the state_dir watch");
                        break;
                    }
                }
            }
        }
        let mut seen: Vec<usize> = Vec::new();
        for (mask, name) in events {
            if mask & libc::IN_Q_OVERFLOW != 0 {
                // Events were lost: look at every file.
                warn!("the state_dir watch overflowed; checking every region file");
                seen = (0..self.children.len()).collect();
                break;
            }
            if let Some(i) = self.region_of(&name).filter(|i| !seen.contains(i)) {
                seen.push(i);
            }
        }
        for i in seen {
            self.check_region_file(i);
        }
    }

    /// The daemon whose region file is `name` (`NAME.region`).
    fn region_of(&self, name: &[u8]) -> Option<usize> {
        let stem = name.strip_suffix(b".region")?;
        self.names.iter().position(|n| n.as_bytes() == stem)
    }

    /// See [`Root::on_watch`].
    fn check_region_file(&mut self, i: usize) {
        let Some(pid) = self.children[i]
            .pid
            .filter(|_| self.children[i].state.has_process())
        else {
            return;
        };
        let name = self.children[i].cfg.name.clone();
        let restart = match self.regions.ensure(i) {
            Ok(Some(damage)) => {
                error!(daemon = %name, fault = %damage, "region file damaged");
                // Truncated: its mapping past the new end faults; it starts
                // again on the repaired file. Holes have blocks again and
                // read as zeroes: a change of content, which its checksums
                // judge, as any other.
                let cut = matches!(damage, crate::region::Damage::Truncated { .. });
                self.children[i].fault = Some(damage.to_string());
                cut
            }
            Ok(None) => false,
            Err(e) => {
                error!(daemon = %name, error = %e, "cannot repair the region file");
                self.children[i].fault = Some(format!("cannot repair the region file: {e}"));
                true
            }
        };
        if restart {
            warn!(daemon = %name, %pid, "restarting it on its repaired region");
            kill_tree(pid, Signal::KILL);
        }
    }
}
