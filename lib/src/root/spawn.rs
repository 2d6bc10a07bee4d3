//! Forking one daemon: what the root prepares, and what the child does
//! between `fork()` and the daemon's first line of code.
//!
//! The child of a single-threaded root may allocate in principle, but we
//! hold it to the stricter rule std's process spawn follows: between fork
//! and the daemon's entry (or exec) it only makes fork-safe calls from
//! [`crate::sys`], and a failure is reported to the root as a setup report
//! (`handoff::report_setup_failure`: stage and errno, with a version and a
//! crc) over a close-on-exec pipe, followed by `_exit(127)`.

use std::cell::UnsafeCell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::daemon::{Entry, SetupStage, Siblings, Start};
use crate::handoff::{self, History};
use crate::listen;
use crate::region::RegionSet;
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
pub(crate) enum Run<'a> {
    /// A kind built into this binary: called in the forked process.
    Builtin {
        entry: Entry,
        args: &'a crate::config::Args,
        /// Every daemon's name, for [`Siblings`].
        names: &'a [String],
    },
    /// A program: exec'd in the forked process.
    Exec {
        path: CString,
        /// Keeps the strings alive that `argv`/`envp` point into.
        _strings: Vec<CString>,
        argv: Vec<*const libc::c_char>,
        envp: Vec<*const libc::c_char>,
        /// `LISTEN_PID=`, completed with the child's pid after the fork
        /// (an entry of `envp` points at it); `None` without `listen`.
        listen_pid: Option<Box<UnsafeCell<[u8; listen::PID_VAR_LEN]>>>,
    },
}

impl Run<'_> {
    /// Prepares an exec of `argv` with the parent's environment plus what
    /// the program needs to attach (`handoff::exec_env`: its name, its
    /// region's descriptor, its start facts) and, with `listen`, systemd's
    /// `LISTEN_*` variables (`listen::exec_env`).
    pub(crate) fn exec(
        argv: &[String],
        name: &str,
        region_len: usize,
        start: &Start<'_>,
        listen: &[String],
    ) -> io::Result<Run<'static>> {
        let nul = |s: String| CString::new(s).map_err(io::Error::other);
        let path = nul(find_program(&argv[0])?)?;
        let mut strings: Vec<CString> = Vec::new();
        for a in argv {
            strings.push(nul(a.clone())?);
        }
        let nargs = strings.len();
        for (k, v) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("FORKROOT_") || k.starts_with("LISTEN_") || k == "NOTIFY_SOCKET" {
                continue;
            }
            strings.push(nul(format!("{k}={}", v.to_string_lossy()))?);
        }
        let region_fd = exec_region_fd(listen.len());
        for var in handoff::exec_env(name, region_fd, region_len, start) {
            strings.push(nul(var)?);
        }
        for var in listen::exec_env(name, listen) {
            strings.push(nul(var)?);
        }
        let mut argv: Vec<_> = strings[..nargs].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<_> = strings[nargs..].iter().map(|s| s.as_ptr()).collect();
        let listen_pid = (!listen.is_empty()).then(|| Box::new(UnsafeCell::new(listen::pid_var())));
        if let Some(cell) = &listen_pid {
            envp.push(cell.get().cast::<libc::c_char>().cast_const());
        }
        envp.push(std::ptr::null());
        Ok(Run::Exec {
            path,
            _strings: strings,
            argv,
            envp,
            listen_pid,
        })
    }
}

/// Where an exec'd program finds its region: fd 3 without listening
/// sockets; after them (3 + n) with n, which systemd's protocol puts at
/// 3.. (`FORKROOT_REGION_FD` says which, in both cases).
fn exec_region_fd(listeners: usize) -> RawFd {
    handoff::EXEC_REGION_FD + listeners as RawFd
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

/// The spawn plan: everything the child needs, decided by the config and
/// the root's records, borrowed from the root's private memory (which the
/// child inherits as a copy-on-write snapshot).
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub(crate) index: usize,
    pub(crate) name: &'a str,
    /// `forkroot: NAME`, shown by `ps`.
    pub(crate) title: &'a [u8],
    pub(crate) regions: &'a RegionSet,
    pub(crate) root_pid: Pid,
    /// Its restart count, deaths, restart mode and poison verdict.
    pub(crate) start: Start<'a>,
    pub(crate) run: Run<'a>,
    /// The root's `state_dir` lock, which built-in daemons keep open.
    pub(crate) lock: Option<RawFd>,
    /// Start as a standby: set up, then wait on a gate pipe for the root's
    /// word to take over (a [`History`]).
    pub(crate) standby: bool,
    /// The listening sockets the root holds for this daemon, and their
    /// `listen` entries (same order).
    pub(crate) listeners: &'a [OwnedFd],
    pub(crate) listen: &'a [String],
}

/// A forked child, seen from the root.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: Pid,
    /// Read end of the setup pipe: end-of-file on it means setup succeeded
    /// (the child closed every inherited descriptor, or exec'd); a setup
    /// report means it failed.
    pub(crate) setup: OwnedFd,
    /// Write end of a standby's gate: a [`History`] starts it; closing it
    /// without one makes the standby exit.
    pub(crate) gate: Option<OwnedFd>,
}

/// Forks the daemon (or its standby).
pub(crate) fn spawn(s: &Plan<'_>) -> io::Result<Spawned> {
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
    handoff::report_setup_failure(pipe, stage, err.raw_os_error().unwrap_or(0));
    sys::exit_now(SETUP_FAILED)
}

fn child(s: &Plan<'_>, pipe: RawFd, gate: Option<RawFd>) -> ! {
    if let Err(e) = crate::prologue::after_fork(s.root_pid) {
        fail(pipe, SetupStage::Orphaned, e);
    }
    // Own session and process group, so a stop reaches whatever the daemon
    // forks, and a terminal's ^C reaches only the root.
    if let Err(e) = sys::setsid() {
        fail(pipe, SetupStage::Session, e);
    }
    sys::title::set(s.title);

    match &s.run {
        Run::Exec {
            path,
            argv,
            envp,
            listen_pid,
            ..
        } => {
            let Some(fd) = s.regions.own_fd(s.index).map(|f| f.as_raw_fd()) else {
                fail(
                    pipe,
                    SetupStage::Region,
                    io::Error::from_raw_os_error(libc::EBADF),
                );
            };
            if let Some(cell) = listen_pid {
                // SAFETY: this forked child is single-threaded and nothing
                // else in it refers to the buffer; `envp` points at it and
                // is read only by the exec below.
                let buf = unsafe { &mut *cell.get() };
                listen::write_pid(buf, sys::getpid().0.unsigned_abs());
            }
            // Listening sockets to fd 3.. (systemd's protocol), the region
            // after them, the pipe after that (close-on-exec, so a
            // successful exec reads as end-of-file in the root).
            let region_fd = exec_region_fd(s.listeners.len());
            let pipe_fd = region_fd + 1;
            let above = pipe_fd + 1;
            let moved = (|| -> io::Result<()> {
                // Every source goes above the targets first, so no dup2
                // below lands on a descriptor still to be moved.
                let r = sys::dup_at_least(fd, above)?;
                let p = sys::dup_at_least(pipe, above)?;
                let high = raise(s.listeners, above)?;
                for (k, &from) in high[..s.listeners.len()].iter().enumerate() {
                    sys::dup2(from, listen::EXEC_FIRST_FD + k as RawFd)?;
                }
                sys::dup2(r, region_fd)?;
                sys::dup2(p, pipe_fd)?;
                sys::set_cloexec(pipe_fd, true)?;
                sys::close_from(above)
            })();
            if let Err(e) = moved {
                fail(pipe, SetupStage::Descriptors, e);
            }
            // A program gets default signal handling, as from a shell.
            sys::default_sigpipe();
            sys::restore_fd_limit();
            let _ = SigSet::empty().set_mask();
            let err = sys::exec(path, argv, envp);
            fail(exec_region_fd(s.listeners.len()) + 1, SetupStage::Exec, err)
        }
        Run::Builtin { entry, args, names } => {
            // SIGTERM stays blocked: the daemon takes it through
            // Context::stopping/sleep, so it can finish what it is doing.
            let _ = SigSet::of(&[libc::SIGTERM]).set_mask();
            // SAFETY: this process was just forked for region `index` and
            // holds no reference into it.
            let region = match unsafe { s.regions.enter(s.index) } {
                Ok(r) => r,
                Err(e) => fail(pipe, SetupStage::Region, e),
            };
            keep_descriptors(s, pipe, gate);
            // A standby waits here, set up, until the primary dies.
            let mut start = s.start;
            let took;
            if gate.is_some() {
                // No takeover (the gate closed): the root no longer needs us.
                let Some(t) = History::wait(GATE_FD) else {
                    sys::exit_now(0)
                };
                sys::close(GATE_FD);
                took = t;
                start = Start {
                    restarts: took.restarts,
                    deaths: took.deaths(),
                    resume_before: took.resume_before,
                    ..start
                };
            }
            let siblings = Siblings {
                names,
                regions: Some(s.regions),
                own: s.index,
            };
            let held = listen::Held {
                first: listen::BUILTIN_FIRST_FD,
                addresses: s.listen,
            };
            crate::daemon::run_builtin(*entry, s.name, region, siblings, args, start, held)
        }
    }
}

/// A built-in daemon keeps the `state_dir` lock (fd 3: while any daemon of
/// this root lives, no other root can take the state_dir), a standby's
/// gate (fd 4) and its listening sockets (fd 5..), and closes everything
/// else inherited from the root (its epoll, signalfd, control socket, the
/// regions' descriptors). That closes the setup pipe too, which tells the
/// root it is up. Fork-safe.
fn keep_descriptors(s: &Plan<'_>, pipe: RawFd, gate: Option<RawFd>) {
    let n = s.listeners.len() as RawFd;
    // Above every descriptor placed below, so no dup2 lands on a source.
    let high = (listen::BUILTIN_FIRST_FD + n).max(10);
    let pipe = sys::dup_at_least(pipe, high).unwrap_or(pipe);
    let moved = (|| -> io::Result<()> {
        let lock = s.lock.map(|fd| sys::dup_at_least(fd, high)).transpose()?;
        let gate = gate.map(|fd| sys::dup_at_least(fd, high)).transpose()?;
        let listeners = raise(s.listeners, high)?;
        if let Some(fd) = lock {
            sys::dup2(fd, LOCK_FD)?;
        }
        if let Some(fd) = gate {
            sys::dup2(fd, GATE_FD)?;
        }
        for (k, &from) in listeners[..s.listeners.len()].iter().enumerate() {
            sys::dup2(from, listen::BUILTIN_FIRST_FD + k as RawFd)?;
        }
        Ok(())
    })();
    if let Err(e) = moved {
        fail(pipe, SetupStage::Descriptors, e);
    }
    if let Err(e) = sys::close_from(listen::BUILTIN_FIRST_FD + n) {
        fail(pipe, SetupStage::Descriptors, e);
    }
    if gate.is_none() {
        sys::close(GATE_FD);
    }
    if s.lock.is_none() {
        sys::close(LOCK_FD);
    }
}

/// Copies of the listening sockets at descriptors >= `min` (close-on-exec;
/// the dup2 that places each clears that), in a fixed array so the forked
/// child allocates nothing. Fork-safe.
fn raise(listeners: &[OwnedFd], min: RawFd) -> io::Result<[RawFd; listen::MAX_LISTEN]> {
    debug_assert!(
        listeners.len() <= listen::MAX_LISTEN,
        "checked with the config"
    );
    let mut high = [-1; listen::MAX_LISTEN];
    for (slot, l) in high.iter_mut().zip(listeners) {
        *slot = sys::dup_at_least(l.as_raw_fd(), min)?;
    }
    Ok(high)
}
