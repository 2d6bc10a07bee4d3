//! Forking one daemon: what the root prepares, and what the child does
//! between `fork()` and the daemon's first line of code.
//!
//! The child of a single-threaded root may allocate in principle, but we
//! hold it to the stricter rule std's process spawn follows: between fork
//! and the daemon's entry (or exec) it only makes fork-safe calls from
//! [`crate::sys`], and a failure is reported to the root as 8 bytes over a
//! close-on-exec pipe (stage, errno) followed by `_exit(127)`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::config::OnRestart;
use crate::daemon::{Context, Death, Entry, ExitReason, SetupStage, Siblings};
use crate::region::{self, RegionSet, LOG_OFFSET, LOG_SIZE, SYSTEM_SIZE};
use crate::sys::{self, Forked, Pid, SigSet};

/// Exit code of a child whose setup failed (as a shell's "cannot execute").
pub(crate) const SETUP_FAILED: i32 = 127;

/// Where a built-in daemon keeps the root's `state_dir` lock.
const LOCK_FD: RawFd = 3;
/// Where a standby keeps its gate.
const GATE_FD: RawFd = 4;

/// What the child will run, prepared in the root before the fork so the
/// child allocates nothing.
#[derive(Debug)]
pub(crate) enum Plan<'a> {
    Builtin {
        entry: Entry,
        args: &'a toml::Table,
        deaths: &'a [Death],
        restarts: u32,
        on_restart: OnRestart,
        resume_before: Option<u64>,
        names: &'a [String],
    },
    Exec {
        path: CString,
        /// Keeps the strings alive that `argv`/`envp` point into.
        _strings: Vec<CString>,
        argv: Vec<*const libc::c_char>,
        envp: Vec<*const libc::c_char>,
    },
}

impl Plan<'_> {
    /// Prepares an exec of `argv` with the parent's environment plus the
    /// daemon's identity: `FORKROOT_NAME`, `FORKROOT_REGION_FD=3` (its
    /// region, read-write), `FORKROOT_REGION_SIZE`, `FORKROOT_RESTARTS`.
    pub(crate) fn exec(
        argv: &[String],
        name: &str,
        region_len: usize,
        restarts: u32,
    ) -> io::Result<Plan<'static>> {
        let nul = |s: String| CString::new(s).map_err(io::Error::other);
        let path = nul(find_program(&argv[0])?)?;
        let mut strings: Vec<CString> = Vec::new();
        for a in argv {
            strings.push(nul(a.clone())?);
        }
        let nargs = strings.len();
        for (k, v) in std::env::vars_os() {
            // Bytes as they are: an environment need not be UTF-8.
            use std::os::unix::ffi::OsStrExt;
            let k = k.as_bytes();
            if k.starts_with(b"FORKROOT_") || k == b"NOTIFY_SOCKET" {
                continue;
            }
            let kv = [k, b"=", v.as_bytes()].concat();
            strings.push(CString::new(kv).map_err(io::Error::other)?);
        }
        strings.push(nul(format!("FORKROOT_NAME={name}"))?);
        strings.push(nul("FORKROOT_REGION_FD=3".into())?);
        strings.push(nul(format!("FORKROOT_REGION_SIZE={region_len}"))?);
        strings.push(nul(format!("FORKROOT_RESTARTS={restarts}"))?);
        let mut argv: Vec<_> = strings[..nargs].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<_> = strings[nargs..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(Plan::Exec {
            path,
            _strings: strings,
            argv,
            envp,
        })
    }
}

/// `program` itself if it names a path (has a `/`), else the first
/// executable file of that name in `$PATH`, as a shell would find it.
fn find_program(program: &str) -> io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Ok(program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate.to_string_lossy().into_owned());
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{program:?} is not in PATH"),
    ))
}

/// Everything the child needs, borrowed from the root's private memory
/// (which the child inherits as a copy-on-write snapshot).
#[derive(Debug)]
pub(crate) struct Spawn<'a> {
    pub(crate) index: usize,
    pub(crate) name: &'a str,
    /// `forkroot: NAME`, shown by `ps`.
    pub(crate) title: &'a [u8],
    pub(crate) regions: &'a RegionSet,
    pub(crate) root_pid: Pid,
    pub(crate) plan: Plan<'a>,
    /// The root's `state_dir` lock, which built-in daemons keep open.
    pub(crate) lock: Option<RawFd>,
    /// Start as a standby: set up, then wait on a gate pipe for the root's
    /// word to take over (see [`Takeover`]).
    pub(crate) standby: bool,
}

/// What the root tells a standby when it takes over: the facts that
/// changed since the standby was forked (its restart count, the whole death
/// history, a poison verdict). At most [`Takeover::SIZE`] bytes on the gate
/// pipe, written at once (atomic: less than PIPE_BUF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Takeover {
    pub(crate) restarts: u32,
    pub(crate) resume_before: Option<u64>,
    /// The root's recent deaths of the daemon, oldest first: `deaths[..n]`.
    pub(crate) deaths: [Death; super::DEATHS_KEPT],
    pub(crate) n: usize,
}

/// Bytes of one death in a [`Takeover`] message.
const DEATH_BYTES: usize = 28;

impl Takeover {
    /// Header (restarts u32, count u32, resume_before u64) + the deaths.
    pub(crate) const SIZE: usize = 16 + DEATH_BYTES * super::DEATHS_KEPT;

    /// An empty history slot.
    pub(crate) const NO_DEATH: Death = Death {
        reason: ExitReason::Exited(0),
        uptime: std::time::Duration::ZERO,
        at_realtime_ns: 0,
    };

    /// The message for a daemon with `restarts`, `deaths` (at most
    /// DEATHS_KEPT are kept: the newest) and `resume_before`.
    pub(crate) fn new(restarts: u32, deaths: &[Death], resume_before: Option<u64>) -> Takeover {
        let mut t = Takeover {
            restarts,
            resume_before,
            deaths: [Self::NO_DEATH; super::DEATHS_KEPT],
            n: deaths.len().min(super::DEATHS_KEPT),
        };
        t.deaths[..t.n].copy_from_slice(&deaths[deaths.len() - t.n..]);
        t
    }

    pub(crate) fn encode(&self) -> [u8; Self::SIZE] {
        let mut m = [0u8; Self::SIZE];
        m[0..4].copy_from_slice(&self.restarts.to_le_bytes());
        m[4..8].copy_from_slice(&(self.n as u32).to_le_bytes());
        m[8..16].copy_from_slice(&self.resume_before.unwrap_or(0).to_le_bytes());
        for (k, d) in self.deaths[..self.n].iter().enumerate() {
            let (kind, a, b) = match d.reason {
                ExitReason::Exited(code) => (0u32, code, 0),
                ExitReason::Signaled { signal, core } => (1, signal, core as i32),
                ExitReason::SetupFailed { stage, errno } => (2, stage as i32, errno),
            };
            let o = 16 + k * DEATH_BYTES;
            m[o..o + 4].copy_from_slice(&kind.to_le_bytes());
            m[o + 4..o + 8].copy_from_slice(&a.to_le_bytes());
            m[o + 8..o + 12].copy_from_slice(&b.to_le_bytes());
            m[o + 12..o + 20].copy_from_slice(&(d.uptime.as_nanos() as u64).to_le_bytes());
            m[o + 20..o + 28].copy_from_slice(&d.at_realtime_ns.to_le_bytes());
        }
        m
    }

    /// Fork-safe.
    pub(crate) fn decode(m: &[u8; Self::SIZE]) -> Option<Takeover> {
        let word = |i: usize| i32::from_le_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
        let long = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&m[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let n = word(4) as u32 as usize;
        if n > super::DEATHS_KEPT {
            return None;
        }
        let mut t = Takeover {
            restarts: word(0) as u32,
            resume_before: Some(long(8)).filter(|&s| s != 0),
            deaths: [Self::NO_DEATH; super::DEATHS_KEPT],
            n,
        };
        for k in 0..n {
            let o = 16 + k * DEATH_BYTES;
            let (a, b) = (word(o + 4), word(o + 8));
            let reason = match word(o) {
                0 => ExitReason::Exited(a),
                1 => ExitReason::Signaled {
                    signal: a,
                    core: b != 0,
                },
                2 => ExitReason::SetupFailed {
                    stage: SetupStage::from_u32(a as u32)?,
                    errno: b,
                },
                _ => return None,
            };
            t.deaths[k] = Death {
                reason,
                uptime: std::time::Duration::from_nanos(long(o + 12)),
                at_realtime_ns: long(o + 20),
            };
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_message_round_trips() {
        let deaths: Vec<Death> = (0..20)
            .map(|k| Death {
                reason: match k % 3 {
                    0 => ExitReason::Exited(k),
                    1 => ExitReason::Signaled {
                        signal: 11,
                        core: k % 2 == 0,
                    },
                    _ => ExitReason::SetupFailed {
                        stage: SetupStage::Exec,
                        errno: 2,
                    },
                },
                uptime: std::time::Duration::from_millis(k as u64),
                at_realtime_ns: 1000 + k as u64,
            })
            .collect();
        let t = Takeover::new(7, &deaths, Some(42));
        assert_eq!(t.n, super::super::DEATHS_KEPT);
        assert_eq!(t.deaths[0], deaths[20 - t.n], "the newest are kept");
        assert_eq!(Takeover::decode(&t.encode()), Some(t));
        let none = Takeover::new(0, &[], None);
        assert_eq!(Takeover::decode(&none.encode()), Some(none));
        let mut bad = none.encode();
        bad[4] = 200;
        assert_eq!(
            Takeover::decode(&bad),
            None,
            "a count past DEATHS_KEPT is refused"
        );
    }
}

/// A forked child, seen from the root.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: Pid,
    /// Read end of the setup pipe: end-of-file on it means setup succeeded
    /// (the child closed every inherited descriptor, or exec'd); 8 bytes
    /// mean it failed.
    pub(crate) setup: OwnedFd,
    /// Write end of a standby's gate: a [`Takeover`] starts it; closing it
    /// without one makes the standby exit.
    pub(crate) gate: Option<OwnedFd>,
}

/// Forks the daemon (or its standby).
pub(crate) fn spawn(s: &Spawn<'_>) -> io::Result<Spawned> {
    let (rd, wr) = sys::pipe_cloexec(true)?;
    let gate = if s.standby {
        Some(sys::pipe_cloexec(false)?)
    } else {
        None
    };
    // SAFETY: the root is single-threaded (it never spawns threads), and the
    // child below only makes fork-safe calls until the daemon's entry.
    match unsafe { sys::fork()? } {
        Forked::Parent(pid) => {
            drop(wr);
            Ok(Spawned {
                pid,
                setup: rd,
                gate: gate.map(|(_, w)| w),
            })
        }
        Forked::Child => child(s, wr.as_raw_fd(), gate.as_ref().map(|(r, _)| r.as_raw_fd())),
    }
}

/// Reports a failed setup step to the root and exits. Fork-safe.
fn fail(pipe: RawFd, stage: SetupStage, err: io::Error) -> ! {
    let errno = err.raw_os_error().unwrap_or(0);
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(stage as u32).to_le_bytes());
    msg[4..].copy_from_slice(&errno.to_le_bytes());
    let _ = sys::write_all(pipe, &msg);
    sys::exit_now(SETUP_FAILED)
}

fn child(s: &Spawn<'_>, pipe: RawFd, gate: Option<RawFd>) -> ! {
    // Die with the root. The root may have died between fork() and here,
    // in which case we were already reparented and no signal will come.
    if let Err(e) = sys::set_parent_death_signal(libc::SIGKILL) {
        fail(pipe, SetupStage::Orphaned, e);
    }
    if sys::getppid() != s.root_pid {
        fail(
            pipe,
            SetupStage::Orphaned,
            io::Error::from_raw_os_error(libc::ESRCH),
        );
    }
    // Own session and process group, so a stop reaches whatever the daemon
    // forks, and a terminal's ^C reaches only the root.
    if let Err(e) = sys::setsid() {
        fail(pipe, SetupStage::Session, e);
    }
    sys::title::set(s.title);

    match &s.plan {
        Plan::Exec {
            path, argv, envp, ..
        } => {
            let Some(fd) = s.regions.own_fd(s.index).map(|f| f.as_raw_fd()) else {
                fail(
                    pipe,
                    SetupStage::Region,
                    io::Error::from_raw_os_error(libc::EBADF),
                );
            };
            // Move the region to fd 3 and the pipe to fd 4 (close-on-exec,
            // so a successful exec reads as end-of-file in the root).
            let moved = sys::dup_at_least(fd, 5).and_then(|r| {
                let p = sys::dup_at_least(pipe, 5)?;
                sys::dup2(r, 3)?;
                sys::dup2(p, 4)?;
                sys::set_cloexec(4, true)?;
                sys::close_from(5)
            });
            if let Err(e) = moved {
                fail(pipe, SetupStage::Descriptors, e);
            }
            // A program gets default signal handling, as from a shell.
            sys::default_sigpipe();
            sys::restore_fd_limit();
            let _ = SigSet::empty().set_mask();
            let err = sys::exec(path, argv, envp);
            fail(4, SetupStage::Exec, err)
        }
        Plan::Builtin {
            entry,
            args,
            deaths,
            restarts,
            on_restart,
            resume_before,
            names,
        } => {
            // A crash signal is a crash: the Rust runtime's SIGSEGV/SIGBUS
            // handler (for stack overflow reports) would swallow a first
            // SIGSEGV sent with kill(2).
            sys::default_crash_signals();
            // SIGTERM stays blocked: the daemon takes it through
            // Context::stopping/sleep, so it can finish what it is doing.
            let _ = SigSet::of(&[libc::SIGTERM]).set_mask();
            // SAFETY: this process was just forked for region `index` and
            // holds no reference into it.
            let region = match unsafe { s.regions.enter(s.index) } {
                Ok(r) => r,
                Err(e) => fail(pipe, SetupStage::Region, e),
            };
            // Keep the state_dir lock (fd 3: while any daemon of this root
            // lives, no other root can take the state_dir) and a standby's
            // gate (fd 4); close everything else inherited from the root
            // (its epoll, signalfd, control socket, the regions'
            // descriptors). That closes the setup pipe too, which tells the
            // root we are up.
            let pipe = sys::dup_at_least(pipe, 10).unwrap_or(pipe);
            let moved = (|| -> io::Result<()> {
                let lock = s.lock.map(|fd| sys::dup_at_least(fd, 10)).transpose()?;
                let gate = gate.map(|fd| sys::dup_at_least(fd, 10)).transpose()?;
                if let Some(fd) = lock {
                    sys::dup2(fd, LOCK_FD)?;
                }
                if let Some(fd) = gate {
                    sys::dup2(fd, GATE_FD)?;
                }
                Ok(())
            })();
            if let Err(e) = moved {
                fail(pipe, SetupStage::Descriptors, e);
            }
            if let Err(e) = sys::close_from(GATE_FD + 1) {
                fail(pipe, SetupStage::Descriptors, e);
            }
            if gate.is_none() {
                sys::close(GATE_FD);
            }
            if s.lock.is_none() {
                sys::close(LOCK_FD);
            }
            // The root's descriptors are closed: be dumpable again (core
            // dumps, /proc/PID/fd for the user), which the root is not.
            let _ = sys::file::set_dumpable(true);
            // A standby waits here, set up, until the primary dies.
            let mut restarts = *restarts;
            let mut resume_before = *resume_before;
            let mut deaths: &[Death] = deaths;
            let took;
            if gate.is_some() {
                let mut msg = [0u8; Takeover::SIZE];
                let t = match sys::read(GATE_FD, &mut msg) {
                    Ok(Takeover::SIZE) => Takeover::decode(&msg),
                    _ => None,
                };
                // No takeover (the gate closed): the root no longer needs us.
                let Some(t) = t else { sys::exit_now(0) };
                sys::close(GATE_FD);
                took = t;
                deaths = &took.deaths[..took.n];
                restarts = took.restarts;
                resume_before = took.resume_before;
            }
            // The system area (header, flight log) and the state are disjoint
            // halves: pointers into the first never alias the second.
            let (system, state) = region.split_at_mut(SYSTEM_SIZE);
            let Some(base) = std::ptr::NonNull::new(system.as_mut_ptr()) else {
                fail(
                    pipe,
                    SetupStage::Region,
                    io::Error::from_raw_os_error(libc::EFAULT),
                );
            };
            // SAFETY: `system` is the start of the region, mapped writable
            // for the rest of this process's life by `enter` just above, and
            // nothing else in this process refers to it.
            let header = unsafe { region::claim(base) };
            // SAFETY: the log area lies inside the region, which stays mapped
            // writable for the rest of this process's life; this process
            // starts no thread or transaction before this point.
            let log =
                unsafe { crate::log::FlightLog::init(base.as_ptr().add(LOG_OFFSET), LOG_SIZE) };
            if let Some(log) = log {
                crate::log::install(log);
            }
            crate::alloc::set_name(s.name);
            // Start-up may allocate; counted, so status can show it. The
            // daemon declares its steady state with Context::steady.
            crate::alloc::reset_stats();
            crate::alloc::set_policy(crate::alloc::Policy::Count);
            crate::logging::set_daemon_name(s.name);
            crate::trace::after_fork();
            let mut ctx = Context {
                name: s.name,
                header,
                state,
                siblings: Siblings {
                    names,
                    regions: s.regions,
                    own: s.index,
                },
                restarts,
                deaths,
                on_restart: *on_restart,
                resume_before,
                args,
                stopping: false,
                stop_fd: None,
            };
            // A panic must not unwind into the root's frames below us (their
            // destructors would run here: the control socket's unlinks the
            // root's socket). It is a crash.
            let code =
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry(&mut ctx))) {
                    Ok(code) => code,
                    Err(_) => sys::die_by(libc::SIGABRT),
                };
            // Exiting is not the steady state: flushing stdout may allocate.
            crate::alloc::set_policy(crate::alloc::Policy::Count);
            use std::io::Write;
            let _ = std::io::stdout().flush();
            sys::exit_now(code)
        }
    }
}
