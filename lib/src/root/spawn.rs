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
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
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
    /// Keeps the strings alive that `argv`/`envp` point into.
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
    /// its start facts), `notify` (`NOTIFY_SOCKET`, `WATCHDOG_USEC`: the
    /// root's, not its service manager's), its mailbox's descriptors and,
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
        // Bytes as they are: an environment need not be UTF-8.
        let mut vars: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if !settings.env_clear {
            for (k, v) in std::env::vars_os() {
                let k = k.as_bytes();
                if k.starts_with(b"FORKROOT_")
                    || k.starts_with(b"LISTEN_")
                    || matches!(k, b"NOTIFY_SOCKET" | b"WATCHDOG_USEC" | b"WATCHDOG_PID")
                {
                    continue;
                }
                vars.push((k.to_vec(), v.as_bytes().to_vec()));
            }
        }
        for (k, v) in &settings.env {
            vars.retain(|(old, _)| old != k.as_bytes());
            vars.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        for (k, v) in vars {
            strings.push(nul(&[&k[..], b"=", &v[..]].concat())?);
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
        let mut envp: Vec<_> = strings[nargs..].iter().map(|s| s.as_ptr()).collect();
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
        }
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
