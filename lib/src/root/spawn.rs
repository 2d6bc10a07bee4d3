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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use crate::config::ExecSettings;
use crate::daemon::{Entry, SetupStage, Siblings, Start};
use crate::handoff::{self, History};
use crate::listen;
use crate::region::RegionSet;
use crate::sys::{self, Forked, Pid, SigSet, Signal};

use super::handover::{self, Handover, Slot};

/// Exit code of a child whose setup failed (as a shell's "cannot execute").
pub(crate) const SETUP_FAILED: i32 = 127;

/// Where a built-in daemon keeps the root's `state_dir` lock.
const LOCK_FD: RawFd = 3;
/// Where a standby keeps its gate.
const GATE_FD: RawFd = 4;
/// Where a built-in daemon keeps the root's stderr, for the echo of its
/// flight-log events (`logging`): already tagged and kept in its flight
/// log, they do not go through the captured stderr a second time.
const ECHO_FD: RawFd = 5;
/// An exec'd program's descriptors are first copied at least this high.
const EXEC_ABOVE: RawFd = 10;

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
    Exec(Box<Exec>),
}

/// An exec'd program's path, arguments, environment and settings, as the
/// child applies them (C strings and plain numbers, nothing to allocate).
#[derive(Debug)]
pub(crate) struct Exec {
    path: CString,
    /// Keeps the strings alive that `argv`/`envp` point into (`envp`'s
    /// first ones point into [`inherited_env`], alive for the root's life).
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    stdin: CString,
    rlimits: Vec<(u32, u64, u64)>,
    cwd: Option<CString>,
    umask: Option<u32>,
    groups: Option<Vec<u32>>,
    gid: Option<u32>,
    uid: Option<u32>,
    no_new_privs: bool,
    /// `LISTEN_PID=`, completed with the child's pid after the fork
    /// (an entry of `envp` points at it); `None` without `listen`.
    listen_pid: Option<Box<UnsafeCell<[u8; listen::PID_VAR_LEN]>>>,
    /// The descriptor its row of monitor bits goes to
    /// ([`exec_monitors_fd`]).
    monitors_fd: RawFd,
}

impl Run<'_> {
    /// Prepares an exec of `argv` as `settings` say: the root's environment
    /// (or none, with `env_clear`), then `env`, then what the program needs
    /// to attach (`handoff::exec_env`: its name, its region's descriptor,
    /// its start facts, `WATCHDOG_USEC` with a `watchdog`), `notify`
    /// (`NOTIFY_SOCKET`: the root's, not its service manager's), its
    /// mailbox's descriptors and,
    /// with `listen`, systemd's `LISTEN_*` variables (`listen::exec_env`).
    // One argument per part of the program's environment; see above.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn exec(
        argv: &[String],
        settings: &ExecSettings,
        name: &str,
        region_len: usize,
        start: &Start<'_>,
        notify: &[String],
        writer: crate::ring::WriterId,
        listen: &[String],
        notify_fd: Option<RawFd>,
    ) -> io::Result<Run<'static>> {
        let nul = |s: &[u8]| CString::new(s).map_err(io::Error::other);
        let mut strings: Vec<CString> = Vec::new();
        for a in argv {
            strings.push(nul(a.as_bytes())?);
        }
        let nargs = strings.len();
        // The root's variables first, pointed at where they are kept for
        // the root's life (not copied).
        let mut envp: Vec<*const libc::c_char> = Vec::new();
        if !settings.env_clear {
            let own =
                |var: &InheritedVar| settings.env.iter().any(|(k, _)| k.as_bytes() == var.key());
            for var in inherited_env().iter().filter(|v| !own(v)) {
                envp.push(var.line.as_ptr());
            }
        }
        for (k, v) in &settings.env {
            strings.push(nul(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
        }
        let region_fd = exec_region_fd(listen.len());
        for var in handoff::exec_env(name, region_fd, region_len, start) {
            strings.push(nul(var.as_bytes())?);
        }
        for var in listen::exec_env(name, listen) {
            strings.push(nul(var.as_bytes())?);
        }
        for var in notify {
            strings.push(nul(var.as_bytes())?);
        }
        let monitors_fd = exec_monitors_fd(listen.len(), notify_fd);
        for var in
            crate::mailbox::PostOffice::exec_env(writer, region_fd + 2, region_fd + 3, monitors_fd)
        {
            strings.push(nul(var.as_bytes())?);
        }
        let mut argv: Vec<_> = strings[..nargs].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        envp.extend(strings[nargs..].iter().map(|s| s.as_ptr()));
        let listen_pid = (!listen.is_empty()).then(|| Box::new(UnsafeCell::new(listen::pid_var())));
        if let Some(cell) = &listen_pid {
            envp.push(cell.get().cast::<libc::c_char>().cast_const());
        }
        envp.push(std::ptr::null());
        let path_of = |p: &std::path::Path| nul(p.as_os_str().as_bytes());
        Ok(Run::Exec(Box::new(Exec {
            path: path_of(&settings.path)?,
            _strings: strings,
            argv,
            envp,
            stdin: path_of(&settings.stdin)?,
            rlimits: settings
                .rlimits
                .iter()
                .map(|(r, soft, hard)| (r.resource, *soft, *hard))
                .collect(),
            cwd: settings.cwd.as_deref().map(path_of).transpose()?,
            umask: settings.umask,
            groups: settings.groups.clone(),
            gid: settings.gid,
            uid: settings.user.as_ref().map(|(_, uid)| *uid),
            no_new_privs: settings.no_new_privs,
            listen_pid,
            monitors_fd,
        })))
    }
}

/// A variable of the root's environment, as an exec'd program gets it.
struct InheritedVar {
    /// `KEY=VALUE`, bytes as they are (an environment need not be UTF-8).
    line: CString,
    key_len: usize,
}

impl InheritedVar {
    fn key(&self) -> &[u8] {
        &self.line.as_bytes()[..self.key_len]
    }
}

/// The root's environment less what forkroot sets itself, read once: the
/// root never changes its environment, and an exec'd program's restart
/// path should not copy it again variable by variable.
fn inherited_env() -> &'static [InheritedVar] {
    static ENV: std::sync::OnceLock<Vec<InheritedVar>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter(|(k, _)| {
                let k = k.as_bytes();
                !(k.starts_with(b"FORKROOT_")
                    || k.starts_with(b"LISTEN_")
                    || matches!(k, b"NOTIFY_SOCKET" | b"WATCHDOG_USEC" | b"WATCHDOG_PID"))
            })
            .filter_map(|(k, v)| {
                let line = [k.as_bytes(), b"=", v.as_bytes()].concat();
                // An environment's strings hold no NUL.
                CString::new(line).ok().map(|line| InheritedVar {
                    line,
                    key_len: k.len(),
                })
            })
            .collect()
    })
}

/// Where an exec'd program finds its region: fd 3 without listening
/// sockets; after them (3 + n) with n, which systemd's protocol puts at
/// 3.. (`FORKROOT_REGION_FD` says which, in both cases).
fn exec_region_fd(listeners: usize) -> RawFd {
    nth_fd(handoff::EXEC_REGION_FD, listeners)
}

/// Descriptor number `base + k`, the k-th of a run placed from `base`;
/// past the range of descriptor numbers, `RawFd::MAX`, which `dup2`
/// refuses (the setup fails and says so). Fork-safe.
fn nth_fd(base: RawFd, k: usize) -> RawFd {
    RawFd::try_from(k)
        .ok()
        .and_then(|k| base.checked_add(k))
        .unwrap_or(RawFd::MAX)
}

/// The descriptor an exec'd program finds its row of monitor bits at: the
/// first after the registry's, or the next when `notify_fd` takes that.
fn exec_monitors_fd(listeners: usize, notify_fd: Option<RawFd>) -> RawFd {
    let fd = exec_region_fd(listeners) + 4;
    if notify_fd == Some(fd) {
        fd + 1
    } else {
        fd
    }
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
    /// Write ends of its stdout and stderr pipes (the root reads them).
    pub(crate) output: Option<(RawFd, RawFd)>,
    /// `notify_fd`: (the write end of the root's notification pipe, the
    /// descriptor number the program gets it at).
    pub(crate) notify_fd: Option<(RawFd, RawFd)>,
    /// The mailboxes and registry, and this incarnation's writer id.
    pub(crate) post: crate::mailbox::Post,
    pub(crate) writer: crate::ring::WriterId,
    /// The post's and the read-only registry's descriptors (for exec).
    pub(crate) post_fds: (RawFd, RawFd),
    /// Where its own row of monitor bits is: a file and an offset (an
    /// exec'd program's: a file of its own, offset 0); none: no mailbox.
    pub(crate) monitors: Option<(RawFd, u64)>,
    /// Its cgroup (the leaf's directory), and whether the child may be
    /// born in it; if not, it enters it first thing.
    pub(crate) cgroup: Option<(RawFd, bool)>,
    /// The listening sockets the root holds for this daemon, and their
    /// `listen` entries (same order).
    pub(crate) listeners: &'a [listen::Bound],
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

/// Forks the daemon (or its standby). With `window` free, the child gets
/// its descriptors through it and shares the root's table until it takes
/// its own ([`Handover`]): nothing per daemon is copied or closed.
pub(crate) fn spawn(s: &Plan<'_>, window: Option<&mut Handover>) -> io::Result<Spawned> {
    let (rd, wr) = sys::pipe_cloexec(true)?;
    let gate = if s.standby {
        Some(sys::pipe_cloexec(false)?)
    } else {
        None
    };
    let gate_rd = gate.as_ref().map(|(r, _)| r.as_raw_fd());
    let lent = window.as_ref().is_some_and(|w| !w.is_free());
    let mut window = window.filter(|w| w.is_free());
    let fds = match window.as_deref_mut() {
        Some(w) => Fds::placed(s, wr.as_raw_fd(), gate_rd, w).inspect_err(|_| w.release())?,
        None => Fds::of(s, wr.as_raw_fd(), gate_rd),
    };
    let spawned = |pid, gate: Option<(OwnedFd, OwnedFd)>| Spawned {
        pid,
        setup: rd,
        gate: gate.map(|(_, w)| w),
    };
    if let Run::Exec(exec) = &s.run {
        let vm = spawn_exec_vm(s, &fds, exec);
        if vm.is_err() {
            if let Some(w) = window.as_deref_mut() {
                w.release();
            }
        }
        if let Some(pid) = vm? {
            // The child exec'd (or exited) before the root went on: it has
            // a table of its own by now.
            if let Some(w) = window {
                w.release();
            }
            drop(wr);
            return Ok(spawned(pid, None));
        }
    }
    if lent {
        tracing::debug!(
            daemon = s.name,
            "forking with a copy of the descriptor table: the window is lent"
        );
    }
    let (forked, born_in) = match fork_child(fds.cgroup, fds.unshare.is_some()) {
        Ok(f) => f,
        Err(e) => {
            if let Some(w) = window {
                w.release();
            }
            return Err(e);
        }
    };
    match forked {
        Forked::Parent(pid) => {
            if let Some(w) = window {
                if born_in.shared {
                    w.lend(pid);
                } else {
                    w.release();
                }
            }
            drop(wr);
            Ok(spawned(pid, gate))
        }
        Forked::Child => {
            let fds = Fds {
                unshare: fds.unshare.filter(|_| born_in.shared),
                ..fds
            };
            child(s, &fds, born_in.cgroup)
        }
    }
}

/// Why the zygote did not fork a process: it is gone or broken (the
/// caller forks itself, and replaces it), or its fork failed (as the
/// root's own would have).
#[derive(Debug)]
pub(crate) enum ByZygote {
    Gone(io::Error),
    Failed(io::Error),
}

/// Has the zygote behind `sock` fork the process `s` plans (a built-in
/// daemon or standby): the request and the descriptors the child keeps go
/// in one message, the answer is its pid. The root then writes one byte
/// on the child's go pipe, whose only write end it holds: a child whose
/// pid never reached the root (the zygote died first, or answered too
/// late) reads end-of-file there and exits before any of the daemon's
/// code runs.
pub(crate) fn spawn_by_zygote(sock: BorrowedFd<'_>, s: &Plan<'_>) -> Result<Spawned, ByZygote> {
    let failed = ByZygote::Failed;
    let (rd, wr) = sys::pipe_cloexec(true).map_err(failed)?;
    let gate = if s.standby {
        Some(sys::pipe_cloexec(false).map_err(failed)?)
    } else {
        None
    };
    let (go_rd, go_wr) = sys::pipe_cloexec(false).map_err(failed)?;
    let fds = Fds::of(s, wr.as_raw_fd(), gate.as_ref().map(|(r, _)| r.as_raw_fd()));
    let not_carried = || io::Error::from_raw_os_error(libc::EOPNOTSUPP);
    let (present, list) = fds
        .wire(go_rd.as_raw_fd())
        .ok_or_else(|| ByZygote::Gone(not_carried()))?;
    let request = handoff::Spawn {
        index: u32::try_from(s.index).map_err(|_| ByZygote::Gone(not_carried()))?,
        standby: s.standby,
        writer: s.writer.raw(),
        present,
        // At most MAX_LISTEN (checked with the config).
        listeners: u32::try_from(s.listeners.len()).map_err(|_| ByZygote::Gone(not_carried()))?,
        monitors_at: fds.monitors.map_or(0, |(_, at)| at),
        history: History::new(s.start.restarts, s.start.deaths, s.start.resume_before),
    };
    sys::fdpass::send_with_fds(sock, &request.encode(), &list).map_err(ByZygote::Gone)?;
    drop((wr, go_rd));
    let mut answer = [0u8; handoff::SPAWNED_SIZE + 1];
    let n = sys::fdpass::recv_with_fds(sock, &mut answer, &mut Vec::new()).map_err(|e| {
        // No answer in time (the socket's receive timeout): a stopped
        // or stuck zygote, not one out of processes.
        if e.kind() == io::ErrorKind::WouldBlock {
            ByZygote::Gone(io::Error::from_raw_os_error(libc::ETIMEDOUT))
        } else {
            ByZygote::Gone(e)
        }
    })?;
    if n == 0 {
        return Err(ByZygote::Gone(io::Error::from(
            io::ErrorKind::UnexpectedEof,
        )));
    }
    let pid = handoff::decode_spawned(&answer[..n])
        .map_err(|e| ByZygote::Gone(io::Error::other(e.to_string())))?
        .map_err(|e| match e.raw_os_error() {
            // Its clone3 cannot make siblings: no zygote on this kernel.
            Some(libc::ENOSYS) => ByZygote::Gone(e),
            _ => ByZygote::Failed(e),
        })?;
    // The pid is the root's: the child may run (dead already or not, its
    // exit says). On every path above, `go_wr` is dropped unwritten and
    // a child that exists reads end-of-file.
    let _ = sys::write_all(go_wr.as_fd(), &[1]);
    Ok(Spawned {
        pid,
        setup: rd,
        gate: gate.map(|(_, w)| w),
    })
}

/// In the zygote: forks the process of `request`, planned by `s`, as the
/// root's child, with the descriptors received beside the request (`got`).
/// Returns its pid; the child never returns.
pub(crate) fn fork_for_root(
    s: &Plan<'_>,
    request: &handoff::Spawn,
    got: &[OwnedFd],
) -> io::Result<Pid> {
    let fds = Fds::from_wire(
        request.present,
        request.listeners as usize,
        request.monitors_at,
        got,
    )?;
    let mut into = fds.cgroup.and_then(|(dir, fresh)| fresh.then_some(dir));
    loop {
        // SAFETY: the zygote is single-threaded; the child only makes
        // fork-safe calls until the daemon's entry; `dir` is a received
        // descriptor, open across the call.
        let forked = unsafe { sys::fork_sibling(into.map(|dir| BorrowedFd::borrow_raw(dir))) };
        match forked {
            Ok(Forked::Parent(pid)) => return Ok(pid),
            Ok(Forked::Child) => child(s, &fds, into.is_some()),
            // The kernel refused this cgroup (EOPNOTSUPP: not a domain
            // one): born anywhere, the child enters it by migration, as
            // the root's own fork does.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && into.is_some() => into = None,
            // No clone3 to make siblings with (`sys::fork_sibling`).
            Err(e) if e.kind() == io::ErrorKind::Unsupported && e.raw_os_error().is_none() => {
                return Err(io::Error::from_raw_os_error(libc::ENOSYS))
            }
            Err(e) => return Err(e),
        }
    }
}

/// The descriptors a child keeps, by number: where the root holds them, or
/// their slots in the hand-over window. Plain numbers, so the child
/// allocates nothing.
#[derive(Debug, Clone, Copy)]
struct Fds {
    /// The setup pipe's write end.
    setup: RawFd,
    /// A standby's gate (read end).
    gate: Option<RawFd>,
    /// Stdout's and stderr's pipes (write ends).
    output: Option<(RawFd, RawFd)>,
    /// The `state_dir` lock.
    lock: Option<RawFd>,
    /// The file its region is in (for an exec'd program: its own file
    /// only; an arena region cannot be handed to a program).
    region: Option<RawFd>,
    /// The post and the registry.
    post: (RawFd, RawFd),
    /// The file its row of monitor bits is in, and the row's offset.
    monitors: Option<(RawFd, u64)>,
    /// `notify_fd`: (the pipe's write end, the number the program gets).
    notify: Option<(RawFd, RawFd)>,
    /// Its cgroup's directory, and whether it may be born in it.
    cgroup: Option<(RawFd, bool)>,
    /// Its listening sockets, the first `listen_count`.
    listeners: [RawFd; listen::MAX_LISTEN],
    listen_count: usize,
    /// Created sharing the root's table: the window's end and sync slot
    /// (see [`handover::unshare`]).
    unshare: Option<(RawFd, RawFd)>,
    /// Forked by the zygote: the read end of the pipe the root writes one
    /// byte to once it has the child's pid (`zygote.rs`); end-of-file
    /// without it means the root never learned of the child, which exits.
    go: Option<RawFd>,
}

/// The bits of [`Fds::wire`]'s `present`: which optional descriptors
/// follow the four always there (setup, go, post, registry), in this
/// order; the listening sockets come last.
mod wire {
    pub(super) const GATE: u32 = 1;
    /// Two descriptors: stdout's and stderr's pipes.
    pub(super) const OUTPUT: u32 = 1 << 1;
    pub(super) const LOCK: u32 = 1 << 2;
    pub(super) const REGION: u32 = 1 << 3;
    pub(super) const MONITORS: u32 = 1 << 4;
    pub(super) const CGROUP: u32 = 1 << 5;
    /// Not a descriptor: the child may be born in its cgroup.
    pub(super) const FRESH: u32 = 1 << 6;
    /// One entry per descriptor a bit stands for, in the list's order.
    pub(super) const DESCRIPTORS: [u32; 7] = [GATE, OUTPUT, OUTPUT, LOCK, REGION, MONITORS, CGROUP];
    /// Every bit a writer sets.
    pub(super) const KNOWN: u32 = GATE | OUTPUT | LOCK | REGION | MONITORS | CGROUP | FRESH;
}

/// How many descriptors `present`'s bits stand for.
fn count(present: u32) -> usize {
    wire::DESCRIPTORS
        .iter()
        .filter(|&&b| present & b != 0)
        .count()
}

impl Fds {
    /// The descriptors where the root holds them.
    fn of(s: &Plan<'_>, setup: RawFd, gate: Option<RawFd>) -> Fds {
        let mut listeners = [-1; listen::MAX_LISTEN];
        for (slot, l) in listeners.iter_mut().zip(s.listeners) {
            *slot = l.as_raw_fd();
        }
        let region = match &s.run {
            Run::Exec(_) => s.regions.own_fd(s.index).map(AsRawFd::as_raw_fd),
            Run::Builtin { .. } => s.regions.file_fd(s.index),
        };
        Fds {
            setup,
            gate,
            output: s.output,
            lock: s.lock,
            region,
            post: s.post_fds,
            monitors: s.monitors,
            notify: s.notify_fd,
            cgroup: s.cgroup,
            listeners,
            listen_count: s.listeners.len(),
            unshare: None,
            go: None,
        }
    }

    /// The descriptors as one `SCM_RIGHTS` list, and which of the optional
    /// ones it holds ([`Fds::from_wire`] reads it). `None` for what the
    /// zygote does not carry: a `notify_fd` pipe (exec'd programs only).
    fn wire(&self, go: RawFd) -> Option<(u32, Vec<RawFd>)> {
        if self.notify.is_some() {
            return None;
        }
        let mut present = 0;
        let mut list = vec![self.setup, go, self.post.0, self.post.1];
        let mut opt = |fd: Option<RawFd>, bit: u32| {
            if let Some(fd) = fd {
                present |= bit;
                list.push(fd);
            }
        };
        opt(self.gate, wire::GATE);
        opt(self.output.map(|(o, _)| o), wire::OUTPUT);
        opt(self.output.map(|(_, e)| e), wire::OUTPUT);
        opt(self.lock, wire::LOCK);
        opt(self.region, wire::REGION);
        opt(self.monitors.map(|(fd, _)| fd), wire::MONITORS);
        opt(self.cgroup.map(|(fd, _)| fd), wire::CGROUP);
        if self.cgroup.is_some_and(|(_, fresh)| fresh) {
            present |= wire::FRESH;
        }
        list.extend_from_slice(&self.listeners[..self.listen_count]);
        Some((present, list))
    }

    /// The descriptors of [`Fds::wire`]'s list as received (`got`, in its
    /// order), the monitor row at `monitors_at`.
    fn from_wire(
        present: u32,
        listeners: usize,
        monitors_at: u64,
        got: &[OwnedFd],
    ) -> io::Result<Fds> {
        let bad = || io::Error::from_raw_os_error(libc::EBADMSG);
        if present & !wire::KNOWN != 0
            || (present & wire::FRESH != 0 && present & wire::CGROUP == 0)
        {
            return Err(bad());
        }
        let mut it = got.iter().map(AsRawFd::as_raw_fd);
        let mut next = || it.next().ok_or_else(bad);
        let (setup, go, post) = (next()?, next()?, (next()?, next()?));
        let mut opt = |bit: u32| -> io::Result<Option<RawFd>> {
            if present & bit == 0 {
                Ok(None)
            } else {
                next().map(Some)
            }
        };
        let gate = opt(wire::GATE)?;
        let output = match opt(wire::OUTPUT)? {
            Some(o) => Some((o, opt(wire::OUTPUT)?.ok_or_else(bad)?)),
            None => None,
        };
        let lock = opt(wire::LOCK)?;
        let region = opt(wire::REGION)?;
        let monitors = opt(wire::MONITORS)?.map(|fd| (fd, monitors_at));
        let cgroup = opt(wire::CGROUP)?.map(|fd| (fd, present & wire::FRESH != 0));
        if listeners > listen::MAX_LISTEN || got.len() != 4 + count(present) + listeners {
            return Err(bad());
        }
        let mut fds = Fds {
            setup,
            gate,
            output,
            lock,
            region,
            post,
            monitors,
            notify: None,
            cgroup,
            listeners: [-1; listen::MAX_LISTEN],
            listen_count: listeners,
            unshare: None,
            go: Some(go),
        };
        for (slot, fd) in fds.listeners.iter_mut().zip(&got[got.len() - listeners..]) {
            *slot = fd.as_raw_fd();
        }
        Ok(fds)
    }

    /// The same descriptors copied into `w`'s slots.
    fn placed(
        s: &Plan<'_>,
        setup: RawFd,
        gate: Option<RawFd>,
        w: &mut Handover,
    ) -> io::Result<Fds> {
        let at = Fds::of(s, setup, gate);
        let mut put = |fd: RawFd, slot: Slot| w.place(fd, w.at(slot));
        let mut placed = Fds {
            setup: put(at.setup, Slot::Setup)?,
            gate: at.gate.map(|fd| put(fd, Slot::Gate)).transpose()?,
            output: match at.output {
                Some((o, e)) => Some((put(o, Slot::Stdout)?, put(e, Slot::Stderr)?)),
                None => None,
            },
            lock: at.lock.map(|fd| put(fd, Slot::Lock)).transpose()?,
            region: at.region.map(|fd| put(fd, Slot::Region)).transpose()?,
            post: (put(at.post.0, Slot::Post)?, put(at.post.1, Slot::Registry)?),
            monitors: match at.monitors {
                Some((fd, offset)) => Some((put(fd, Slot::Monitors)?, offset)),
                None => None,
            },
            notify: match at.notify {
                Some((fd, to)) => Some((put(fd, Slot::Notify)?, to)),
                None => None,
            },
            cgroup: match at.cgroup {
                Some((fd, fresh)) => Some((put(fd, Slot::Cgroup)?, fresh)),
                None => None,
            },
            unshare: Some((w.end(), w.at(Slot::Sync))),
            ..at
        };
        for k in 0..at.listen_count {
            placed.listeners[k] = w.place(at.listeners[k], w.listen_at(k))?;
        }
        Ok(placed)
    }
}

/// The stack the children of [`spawn_exec_vm`] run on until they exec
/// (one is enough: the root waits while each runs on it).
static VM_STACK: std::sync::OnceLock<sys::fork::ChildStack> = std::sync::OnceLock::new();
/// Its size: the exec path's frames, with room to spare.
const VM_STACK_LEN: usize = 256 << 10;

/// What a [`vm_child`] is lent: the plan, its descriptors, its program.
struct VmArgs<'a, 'p> {
    plan: &'a Plan<'p>,
    fds: &'a Fds,
    exec: &'a Exec,
}

/// Starts an exec'd program without copying the root
/// ([`sys::fork::spawn_vm`]: the child shares the root's memory, the root
/// waiting, until it execs): no page tables copied, no copy-on-write faults
/// after, whatever the root's size. `None` where that path is not taken,
/// and the caller forks: a standby, a cgroup that must be entered by
/// migration, a `stdin` other than `/dev/null` (opening a FIFO could block
/// the child, and with it the root), an architecture or kernel without it.
fn spawn_exec_vm(s: &Plan<'_>, fds: &Fds, exec: &Exec) -> io::Result<Option<Pid>> {
    if s.standby
        || fds.cgroup.is_some_and(|(_, fresh)| !fresh)
        || exec.stdin.as_bytes() != b"/dev/null"
    {
        return Ok(None);
    }
    let stack = match VM_STACK.get() {
        Some(st) => st,
        None => match sys::fork::ChildStack::new(VM_STACK_LEN) {
            Ok(st) => VM_STACK.get_or_init(|| st),
            Err(_) => return Ok(None),
        },
    };
    let mut args = VmArgs { plan: s, fds, exec };
    // SAFETY: the root is single-threaded; `vm_child` keeps the rules of a
    // child sharing the root's memory (it writes only its own stack and the
    // plan's `LISTEN_PID` buffer, which it is lent, allocates nothing,
    // never returns); `args` outlives the call, which returns only after
    // the child exec'd or exited; its cgroup directory is open across it.
    let spawned = unsafe {
        sys::fork::spawn_vm(
            fds.cgroup.map(|(dir, _)| BorrowedFd::borrow_raw(dir)),
            fds.unshare.is_some(),
            stack,
            vm_child,
            (&raw mut args).cast(),
        )
    };
    match spawned {
        Ok(pid) => Ok(Some(pid)),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(None),
        Err(e) => Err(e),
    }
}

/// The child of [`spawn_exec_vm`], on its own stack in the root's memory.
extern "C" fn vm_child(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the `VmArgs` `spawn_exec_vm` lends, alive while the
    // root waits for this child to exec or exit.
    let a = unsafe { &*arg.cast::<VmArgs<'_, '_>>() };
    let pipe = a.fds.setup;
    // Its own descriptor table first (an exec would copy the whole shared
    // one); the root, suspended, needs no word of it.
    if let Some((end, _)) = a.fds.unshare {
        if let Err(e) = sys::unshare_below(end) {
            fail(pipe, SetupStage::Descriptors, e);
        }
    }
    if let Err(e) = crate::prologue::after_clone_vm(a.plan.root_pid) {
        fail(pipe, SetupStage::Orphaned, e);
    }
    // Born in its cgroup (a migration is never done here: see above).
    if let Err(e) = sys::setsid() {
        fail(pipe, SetupStage::Session, e);
    }
    // No title: the argument area is the root's own memory, and the exec
    // below replaces it anyway.
    exec_child(a.fds, a.exec)
}

/// How a child was created.
#[derive(Debug, Clone, Copy)]
struct Born {
    /// In its cgroup already.
    cgroup: bool,
    /// Sharing the root's descriptor table.
    shared: bool,
}

/// Forks the child: born in its cgroup (`cgroup`, a directory) where the
/// kernel allows, which costs no cgroup migration (DESIGN.md §1, 5), and
/// sharing the root's descriptor table if `share` ([`Handover`]); a plain
/// fork otherwise. [`Born`] says which.
fn fork_child(cgroup: Option<(RawFd, bool)>, share: bool) -> io::Result<(Forked, Born)> {
    // Entered by migration (`false`): born anywhere.
    let into = cgroup.and_then(|(dir, fresh)| fresh.then_some(dir));
    if into.is_some() || share {
        // SAFETY: the root is single-threaded (it never spawns threads), and
        // the child only makes fork-safe calls until the daemon's entry (and
        // takes its own descriptor table first when it shares the root's);
        // `dir` is the Plan's open cgroup directory, open across the call.
        let forked =
            unsafe { sys::fork::fork_into(into.map(|dir| BorrowedFd::borrow_raw(dir)), share) };
        match forked {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
            other => {
                let born = Born {
                    cgroup: into.is_some(),
                    shared: share,
                };
                return Ok((other?, born));
            }
        }
    }
    let born = Born {
        cgroup: false,
        shared: false,
    };
    // SAFETY: as above.
    Ok((unsafe { sys::fork()? }, born))
}

/// Reports a failed setup step to the root and exits. Fork-safe.
// `err` by value: every caller hands over the error it just got, as its
// last use (`Err(e) => fail(pipe, stage, e)`).
#[allow(clippy::needless_pass_by_value)]
fn fail(pipe: RawFd, stage: SetupStage, err: io::Error) -> ! {
    // SAFETY: `pipe` is the setup pipe's write end, open in this child
    // until it execs or exits.
    let pipe = unsafe { BorrowedFd::borrow_raw(pipe) };
    handoff::report_setup_failure(pipe, stage, err.raw_os_error().unwrap_or(0));
    sys::exit_now(SETUP_FAILED)
}

fn child(s: &Plan<'_>, fds: &Fds, in_cgroup: bool) -> ! {
    let pipe = fds.setup;
    // A table of its own before anything touches a descriptor.
    if let Some((end, sync)) = fds.unshare {
        if let Err(e) = handover::unshare(end, sync) {
            fail(pipe, SetupStage::Descriptors, e);
        }
    }
    if let Err(e) = crate::prologue::after_fork(s.root_pid) {
        fail(pipe, SetupStage::Orphaned, e);
    }
    // Into its cgroup before anything it runs can fork.
    if let Some(Err(e)) = fds
        .cgroup
        .filter(|_| !in_cgroup)
        // SAFETY: the plan's cgroup directory is open in the root, and so in
        // this copy of its descriptor table, until the child is settled.
        .map(|(dir, _)| sys::cgroup::enter(unsafe { BorrowedFd::borrow_raw(dir) }))
    {
        fail(pipe, SetupStage::Cgroup, e);
    }
    // Own session and process group, so a stop reaches whatever the daemon
    // forks, and a terminal's ^C reaches only the root.
    if let Err(e) = sys::setsid() {
        fail(pipe, SetupStage::Session, e);
    }
    sys::title::set(s.title);

    match &s.run {
        Run::Exec(exec) => exec_child(fds, exec),
        Run::Builtin { entry, args, names } => {
            // SIGTERM stays blocked: the daemon takes it through
            // Context::stopping/sleep, so it can finish what it is doing.
            let _ = SigSet::of(&[Signal::TERM]).set_mask();
            // SAFETY: this process was just forked for region `index` and
            // holds no reference into it.
            let entered = match fds.region {
                // SAFETY: as above; `fd` is the region's file, open here.
                Some(fd) => unsafe { s.regions.enter_from(s.index, fd) },
                None => Err(io::Error::from_raw_os_error(libc::EBADF)),
            };
            let region = match entered {
                Ok(r) => r,
                Err(e) => fail(pipe, SetupStage::Region, e),
            };
            // Its own row of monitor bits, the only one it maps, from the
            // root's descriptor before that is closed.
            let monitors = fds
                .monitors
                .map(|(fd, at)| crate::mailbox::MonitorRow::map(fd, at, s.post.row_words()))
                .transpose()
                .unwrap_or_else(|e| fail(pipe, SetupStage::Descriptors, e));
            wait_for_go(fds);
            keep_descriptors(fds);
            // The root's descriptors are closed: be dumpable again (core
            // dumps, /proc/PID/fd for the user), which the root is not.
            let _ = sys::file::set_dumpable(true);
            // A standby waits here, set up, until the primary dies.
            let mut start = s.start;
            let took;
            if fds.gate.is_some() {
                // No takeover (the gate closed): the root no longer needs us.
                // SAFETY: spawn placed the gate's read end at GATE_FD for
                // this standby; it stays open until closed just below.
                let Some(t) = History::wait(unsafe { BorrowedFd::borrow_raw(GATE_FD) }) else {
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
            // Every daemon of the tree has a mailbox (one a reload adds, a
            // spare one reserved at start).
            let mail = monitors.map(|row| {
                crate::mailbox::Mailbox::new(s.post, s.index, s.writer).with_monitors(Some(row))
            });
            let held = listen::Held {
                first: listen::BUILTIN_FIRST_FD,
                addresses: s.listen,
            };
            crate::daemon::run_builtin(*entry, s.name, region, siblings, args, start, mail, held)
        }
    }
}

/// Forked by the zygote: waits until the root has this process's pid (the
/// go byte), or exits if it never will (end-of-file: the root gave up on
/// the fork). Until here the child only mapped its memory; nothing of the
/// daemon ran. Fork-safe.
fn wait_for_go(fds: &Fds) {
    let Some(rd) = fds.go else { return };
    // SAFETY: the go pipe's read end, received with the request and open
    // in this copy of the zygote's table until keep_descriptors.
    let rd = unsafe { BorrowedFd::borrow_raw(rd) };
    let mut byte = [0u8; 1];
    if !matches!(sys::read(rd, &mut byte), Ok(1)) {
        // The root gave up on this fork (the zygote died or was ended
        // before its answer arrived).
        fail(
            fds.setup,
            SetupStage::Fork,
            io::Error::from_raw_os_error(libc::EPIPE),
        );
    }
}

/// An exec'd program's child, from its descriptors to the exec. Fork-safe;
/// it writes nothing but its own stack and the plan's `LISTEN_PID` buffer,
/// so it also runs in a child sharing the root's memory ([`vm_child`]).
fn exec_child(fds: &Fds, exec: &Exec) -> ! {
    let pipe = fds.setup;
    let Some(fd) = fds.region else {
        fail(
            pipe,
            SetupStage::Region,
            io::Error::from_raw_os_error(libc::EBADF),
        );
    };
    if let Some(cell) = &exec.listen_pid {
        // SAFETY: this child is single-threaded and nothing else in it
        // refers to the buffer (a child sharing the root's memory: the
        // root waits, and rewrites it before its next use); `envp` points
        // at it and is read only by the exec below.
        let buf = unsafe { &mut *cell.get() };
        listen::write_pid(buf, sys::getpid().as_u32());
    }
    let stdin = match sys::setup::open_read(&exec.stdin) {
        Ok(fd) => fd,
        Err(e) => fail(pipe, SetupStage::Stdin, e),
    };
    let Some((monitors, 0)) = fds.monitors else {
        fail(
            pipe,
            SetupStage::Descriptors,
            io::Error::from_raw_os_error(libc::EBADF),
        );
    };
    let mut report = pipe;
    if let Err(e) = place_exec_descriptors(fds, exec, fd, stdin, monitors, &mut report) {
        fail(report, SetupStage::Descriptors, e);
    }
    // A program gets default signal handling, as from a shell.
    sys::default_sigpipe();
    sys::restore_fd_limit();
    let _ = SigSet::empty().set_mask();
    let pipe_fd = exec_region_fd(fds.listen_count) + 1;
    apply_settings(exec, pipe_fd);
    let err = sys::exec(&exec.path, &exec.argv, &exec.envp);
    fail(pipe_fd, SetupStage::Exec, err)
}

/// Moves an exec'd program's descriptors to their numbers: the region's
/// file (`region`), its stdin (`stdin`), its row of monitor bits
/// (`monitors`) and the rest from `fds`. Fork-safe: no allocation, no
/// lock. `report` is where a failure is to be reported: the setup pipe's
/// copy that is open at the time of the failure.
// r, p, i, o, e, n: each the copy (above the targets) of the descriptor
// whose first letter it has, read side by side with the dup2 table below.
#[allow(clippy::many_single_char_names)]
fn place_exec_descriptors(
    fds: &Fds,
    exec: &Exec,
    region: RawFd,
    stdin: RawFd,
    monitors: RawFd,
    report: &mut RawFd,
) -> io::Result<()> {
    // Its stdin to fd 0, its output pipes to 1 and 2, its listening
    // sockets to 3.. (systemd's protocol), the region after them
    // (3 + n), the setup pipe after that (close-on-exec, so a
    // successful exec reads as end-of-file in the root), the
    // mailboxes' post and registry after it, and the notification
    // pipe to `notify_fd` (above all of them, inherited). Each is
    // first copied above the targets, so no move overwrites another's
    // source.
    let listeners = &fds.listeners[..fds.listen_count];
    let region_fd = exec_region_fd(listeners.len());
    let pipe_fd = region_fd + 1;
    let (post_fd, registry_fd) = (region_fd + 2, region_fd + 3);
    let above = (exec.monitors_fd + 1).max(EXEC_ABOVE);
    // The setup pipe first, above every target (its number now may be one
    // of them); a failure is reported on the copy that is open.
    let p = sys::dup_at_least(fds.setup, above)?;
    *report = p;
    let r = sys::dup_at_least(region, above)?;
    let i = sys::dup_at_least(stdin, above)?;
    let post = sys::dup_at_least(fds.post.0, above)?;
    let reg = sys::dup_at_least(fds.post.1, above)?;
    let mon = sys::dup_at_least(monitors, above)?;
    let high = raise(listeners, above)?;
    let out = fds.output.map(|(o, e)| -> io::Result<_> {
        Ok((sys::dup_at_least(o, above)?, sys::dup_at_least(e, above)?))
    });
    let out = out.transpose()?;
    let n = fds
        .notify
        .map(|(from, to)| sys::dup_at_least(from, above.max(to + 1)).map(|d| (d, to)))
        .transpose()?;
    sys::dup2(i, 0)?;
    if let Some((o, e)) = out {
        sys::dup2(o, 1)?;
        sys::dup2(e, 2)?;
    }
    for (k, &from) in high[..listeners.len()].iter().enumerate() {
        sys::dup2(from, nth_fd(listen::EXEC_FIRST_FD, k))?;
    }
    sys::dup2(r, region_fd)?;
    sys::dup2(p, pipe_fd)?;
    *report = pipe_fd;
    sys::set_cloexec(pipe_fd, true)?;
    sys::dup2(post, post_fd)?;
    sys::dup2(reg, registry_fd)?;
    sys::dup2(mon, exec.monitors_fd)?;
    // Kept: everything up to the registry, the monitors (right after
    // it, or one further when `notify_fd` is right after it), and
    // `notify_fd`.
    match n {
        Some((d, to)) => {
            sys::dup2(d, to)?;
            // dup2 onto itself keeps close-on-exec: clear it.
            sys::set_cloexec(to, false)?;
            let (lo, hi) = (to.min(exec.monitors_fd), to.max(exec.monitors_fd));
            sys::close_between(registry_fd + 1, lo - 1)?;
            sys::close_between(lo + 1, hi - 1)?;
            sys::close_from(hi + 1)
        }
        None => sys::close_from(exec.monitors_fd + 1),
    }
}

/// Applies an exec'd program's settings, in the order that keeps each
/// step possible: limits, directory and mask while still privileged, then
/// groups before the gid before the uid (after `setuid` the others would
/// be refused), and `no_new_privs` last. Fork-safe; a failure is reported
/// on the setup pipe (`pipe` by now).
fn apply_settings(exec: &Exec, pipe: RawFd) {
    use sys::setup;
    for &(resource, soft, hard) in &exec.rlimits {
        if let Err(e) = setup::set_rlimit(resource, soft, hard) {
            fail(pipe, SetupStage::Rlimits, e);
        }
    }
    if let Some(dir) = &exec.cwd {
        if let Err(e) = setup::chdir(dir) {
            fail(pipe, SetupStage::Cwd, e);
        }
    }
    if let Some(mask) = exec.umask {
        setup::set_umask(mask);
    }
    if let Some(groups) = &exec.groups {
        if let Err(e) = setup::set_groups(groups) {
            fail(pipe, SetupStage::Groups, e);
        }
    }
    if let Some(gid) = exec.gid {
        if let Err(e) = setup::set_gid(gid) {
            fail(pipe, SetupStage::Gid, e);
        }
    }
    if let Some(uid) = exec.uid {
        if let Err(e) = setup::set_uid(uid) {
            fail(pipe, SetupStage::Uid, e);
        }
    }
    if exec.no_new_privs {
        if let Err(e) = setup::set_no_new_privs() {
            fail(pipe, SetupStage::NoNewPrivs, e);
        }
    }
}

/// A built-in daemon keeps the `state_dir` lock (fd 3: while any daemon of
/// this root lives, no other root can take the `state_dir`), a standby's
/// gate (fd 4), the root's stderr at fd 5 (the echo of its flight-log
/// events), its listening sockets (fd 6..), takes its output pipes as
/// stdout and stderr, and closes everything else inherited from the root
/// (its epoll, signalfd, control socket, the regions' descriptors). That
/// closes the setup pipe too, which tells the root it is up. Fork-safe.
fn keep_descriptors(fds: &Fds) {
    let (pipe, gate) = (fds.setup, fds.gate);
    let listeners = &fds.listeners[..fds.listen_count];
    // Above every descriptor placed below, so no dup2 lands on a source.
    let high = nth_fd(listen::BUILTIN_FIRST_FD, listeners.len()).max(10);
    let pipe = sys::dup_at_least(pipe, high).unwrap_or(pipe);
    let moved = (|| -> io::Result<()> {
        let lock = fds.lock.map(|fd| sys::dup_at_least(fd, high)).transpose()?;
        let gate = gate.map(|fd| sys::dup_at_least(fd, high)).transpose()?;
        let high_listeners = raise(listeners, high)?;
        let out = match fds.output {
            Some((o, e)) => Some((sys::dup_at_least(o, high)?, sys::dup_at_least(e, high)?)),
            None => None,
        };
        if let Some(fd) = lock {
            sys::dup2(fd, LOCK_FD)?;
        }
        if let Some(fd) = gate {
            sys::dup2(fd, GATE_FD)?;
        }
        for (k, &from) in high_listeners[..listeners.len()].iter().enumerate() {
            sys::dup2(from, nth_fd(listen::BUILTIN_FIRST_FD, k))?;
        }
        if let Some((o, e)) = out {
            let echo = sys::dup_at_least(2, high)?;
            sys::dup2(o, 1)?;
            sys::dup2(e, 2)?;
            sys::dup2(echo, ECHO_FD)?;
            crate::subscriber::set_echo_fd(ECHO_FD);
        }
        Ok(())
    })();
    if let Err(e) = moved {
        fail(pipe, SetupStage::Descriptors, e);
    }
    if let Err(e) = sys::close_from(nth_fd(listen::BUILTIN_FIRST_FD, listeners.len())) {
        fail(pipe, SetupStage::Descriptors, e);
    }
    if gate.is_none() {
        sys::close(GATE_FD);
    }
    if fds.lock.is_none() {
        sys::close(LOCK_FD);
    }
    if fds.output.is_none() {
        sys::close(ECHO_FD);
    }
}

/// Copies of the listening sockets at descriptors >= `min` (close-on-exec;
/// the dup2 that places each clears that), in a fixed array so the forked
/// child allocates nothing. Fork-safe.
fn raise(listeners: &[RawFd], min: RawFd) -> io::Result<[RawFd; listen::MAX_LISTEN]> {
    debug_assert!(
        listeners.len() <= listen::MAX_LISTEN,
        "checked with the config"
    );
    let mut high = [-1; listen::MAX_LISTEN];
    for (slot, l) in high.iter_mut().zip(listeners) {
        *slot = sys::dup_at_least(*l, min)?;
    }
    Ok(high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::ExitReason;

    /// A child of the zygote as far as its go pipe goes.
    fn fds_with_go(go: RawFd) -> Fds {
        Fds {
            setup: -1,
            gate: None,
            output: None,
            lock: None,
            region: None,
            post: (-1, -1),
            monitors: None,
            notify: None,
            cgroup: None,
            listeners: [-1; listen::MAX_LISTEN],
            listen_count: 0,
            unshare: None,
            go: Some(go),
        }
    }

    /// Forks a child that waits for its go byte and then writes "ran" on
    /// a pipe; `release` is what the zygote's side does with its write
    /// end (the root's side: it holds the only write end). Returns the
    /// child's exit code, what it wrote, and its setup report.
    fn run_child(release: impl FnOnce(OwnedFd)) -> (i32, Vec<u8>, handoff::Setup) {
        let (go_rd, go_wr) = sys::pipe_cloexec(false).unwrap();
        let (out_rd, out_wr) = sys::pipe_cloexec(false).unwrap();
        let (setup_rd, setup_wr) = sys::pipe_cloexec(true).unwrap();
        let mut fds = fds_with_go(go_rd.as_raw_fd());
        let go_wr_here = go_wr.as_raw_fd();
        fds.setup = setup_wr.as_raw_fd();
        // SAFETY: the child makes only async-signal-safe calls (close,
        // read, write, _exit) before it exits.
        match unsafe { sys::fork() }.unwrap() {
            Forked::Child => {
                // A child of the zygote has no write end: only the root.
                sys::close(go_wr_here);
                wait_for_go(&fds);
                let _ = sys::write_all(out_wr.as_fd(), b"ran");
                sys::exit_now(0)
            }
            Forked::Parent(pid) => {
                drop((go_rd, out_wr, setup_wr));
                release(go_wr);
                let status = sys::wait_pid(pid).unwrap().expect("a status");
                let mut got = [0u8; 8];
                let n = sys::read(out_rd.as_fd(), &mut got).unwrap();
                let code = match status {
                    sys::WaitStatus::Exited(c) => c,
                    other => panic!("the child ended with {other:?}"),
                };
                (code, got[..n].to_vec(), handoff::read_setup(&setup_rd))
            }
        }
    }

    #[test]
    fn a_child_whose_pid_never_reached_the_root_runs_nothing() {
        // The root gave up on the answer: its write end closed unused.
        let (code, wrote, setup) = run_child(drop);
        assert_eq!(code, SETUP_FAILED);
        assert!(wrote.is_empty(), "it ran: {wrote:?}");
        // Reported as a failed fork (the root logs it if it knows the pid).
        let failed = ExitReason::SetupFailed {
            stage: SetupStage::Fork,
            errno: libc::EPIPE,
        };
        assert_eq!(setup, handoff::Setup::Failed(failed));
        // The answer went out: one byte, and the child goes on.
        let (code, wrote, _) = run_child(|w| sys::write_all(w.as_fd(), &[1]).unwrap());
        assert_eq!((code, &wrote[..]), (0, &b"ran"[..]));
    }

    #[test]
    fn the_descriptors_cross_to_the_zygote_in_the_order_they_left() {
        let mut fds = fds_with_go(-1);
        fds.setup = 10;
        fds.gate = Some(11);
        fds.output = Some((12, 13));
        fds.region = Some(14);
        fds.post = (15, 16);
        fds.cgroup = Some((17, true));
        fds.listeners[..2].copy_from_slice(&[18, 19]);
        fds.listen_count = 2;
        let (present, list) = fds.wire(20).unwrap();
        // What the zygote receives: new numbers, the same order.
        let got: Vec<OwnedFd> = list
            .iter()
            .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
            .collect();
        let n = |k: usize| got[k].as_raw_fd();
        let back = Fds::from_wire(present, 2, 0, &got).unwrap();
        assert_eq!(back.setup, n(0));
        assert_eq!(back.go, Some(n(1)));
        assert_eq!(back.post, (n(2), n(3)));
        assert_eq!(back.gate, Some(n(4)));
        assert_eq!(back.output, Some((n(5), n(6))));
        assert_eq!((back.lock, back.region), (None, Some(n(7))));
        assert_eq!(back.cgroup, Some((n(8), true)));
        assert_eq!(&back.listeners[..2], &[n(9), n(10)]);
        // One descriptor short, or one too many, is refused whole; so are
        // bits no writer sets.
        assert!(Fds::from_wire(present, 2, 0, &got[..10]).is_err());
        assert!(Fds::from_wire(present, 1, 0, &got).is_err());
        assert!(Fds::from_wire(present | 1 << 9, 2, 0, &got).is_err());
        let fresh_alone = (present & !wire::CGROUP) | wire::FRESH;
        assert!(Fds::from_wire(fresh_alone, 2, 0, &got[..10]).is_err());
        // A notify pipe is an exec'd program's: not carried.
        fds.notify = Some((22, 3));
        assert!(fds.wire(20).is_none());
    }
}
