//! The zygote: a copy of the root, forked once, that forks the built-in
//! daemons on the root's behalf (DESIGN.md §3, "The zygote").
//!
//! A fork copies the forking process's page tables and write-protects its
//! memory, and the forking process then pays a copy-on-write fault for
//! every page it writes until the next fork does it again. Forking every
//! daemon from the root made each restart pay for the root's whole size
//! (its heap grows with the tree) and every event after it pay faults.
//! The zygote is forked from the root early in its start-up, once the
//! regions and mailboxes are mapped and before anything else per daemon
//! is made (`listen` sockets, cgroups, pipes, the records of `Child`), and
//! again after a reload changed the tree; it holds what a built-in
//! daemon's process is made of (an [`Image`]: the few settings each one
//! reads, every name, the region layout, the mailboxes' mapping) and
//! never changes, so its forks stay small and the root never forks a
//! built-in daemon itself.
//!
//! For each start the root sends a request ([`handoff::Spawn`]: which
//! daemon, its history, its mailbox writer id) with the descriptors the
//! child keeps beside it (`SCM_RIGHTS`) on a `SOCK_SEQPACKET` pair; the
//! zygote forks with `CLONE_PARENT`, so the new process is the root's
//! child (the root reaps it and its exit signal goes to the root), and
//! answers with its pid. The child waits for one byte from the root on a
//! pipe ("go", whose only write end the root holds) before anything of the
//! daemon runs: if the answer never reached the root (the zygote died, or
//! answered after the root gave up), the root drops that end unwritten and
//! the child exits, so no process the root does not know of runs a daemon.
//!
//! The zygote dies with the root (`PR_SET_PDEATHSIG`) and exits when the
//! root closes its end. If it is gone (killed from outside), the root
//! forks that start itself and makes a new zygote at the next start.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use super::spawn::{self, Plan, Run};
use super::Root;
use crate::config::{DaemonConfig, Program};
use crate::daemon::{Registry, Start};
use crate::handoff::{self, Spawn};
use crate::mailbox::Post;
use crate::region::RegionSet;
use crate::sys::{self, fdpass, Forked, Pid, Signal};

/// The process title of the zygote (brackets: no daemon name has them).
const TITLE: &[u8] = b"forkroot [zygote]";
/// How long the root waits for the zygote's answer to a request (a fork
/// takes well under a millisecond).
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Where the zygote keeps its socket: the lowest number after stdio.
const SOCK_FD: RawFd = 3;

/// What the zygote forks from: what each built-in daemon's process is
/// made of, by the root's index; every daemon's name (for `Siblings`);
/// the regions' layout; the mailboxes' mapping; the root's pid.
///
/// It is built in the zygote, after the fork, and holds copies of the few
/// settings a built-in daemon's process reads ([`Spec`]): every page of
/// the zygote's memory is copied into each fork (its page-table entries)
/// and torn down again when that process exits, so what the zygote holds
/// per daemon is paid on every restart in proportion to the tree. The
/// first zygote then drops its copy of the daemons' configs and of the
/// mailboxes' per-daemon tables (`start_zygote`, [`Zygote::start`]); one
/// forked after a reload keeps its copy of the whole root, configs and
/// all.
#[derive(Debug)]
pub(super) struct Image<'a> {
    /// By the root's index; `None` for an exec'd program (not the
    /// zygote's to fork) or a kind the registry does not have.
    daemons: Vec<Option<Spec>>,
    names: &'a [String],
    regions: &'a RegionSet,
    post: Post,
    root_pid: Pid,
}

/// Of one built-in daemon's config, what its process is made of (its
/// name, and so its process title, is the image's `names` at its index).
#[derive(Debug)]
struct Spec {
    entry: crate::daemon::Entry,
    on_restart: crate::config::OnRestart,
    args: crate::config::Args,
    listen: Vec<String>,
    watchdog: Option<std::time::Duration>,
}

impl<'a> Image<'a> {
    /// The image of daemons `configs` (by the root's index, removed ones
    /// included after a reload), with the rest of what their processes
    /// share.
    pub(super) fn new<'c>(
        configs: impl Iterator<Item = &'c DaemonConfig>,
        names: &'a [String],
        registry: &Registry,
        regions: &'a RegionSet,
        post: Post,
        root_pid: Pid,
    ) -> Image<'a> {
        let daemons = configs
            .map(|cfg| {
                let Program::Builtin(kind) = &cfg.program else {
                    return None;
                };
                Some(Spec {
                    entry: registry.get(kind)?.entry,
                    on_restart: cfg.on_restart,
                    args: cfg.args.clone(),
                    listen: cfg.listen.clone(),
                    watchdog: cfg.watchdog,
                })
            })
            .collect();
        Image {
            daemons,
            names,
            regions,
            post,
            root_pid,
        }
    }

    /// The image of `root` as it is now (after a reload: its daemons by
    /// index, removed ones included, as the root numbers them).
    pub(super) fn of(root: &'a Root<'_>) -> Image<'a> {
        Image::new(
            root.children.iter().map(|c| &c.cfg),
            &root.names,
            root.registry,
            &root.regions,
            root.post.post(),
            root.pid,
        )
    }
}

/// The root's handle on its zygote.
#[derive(Debug)]
pub(super) struct Zygote {
    pid: Pid,
    /// The root's end of the request socket.
    sock: OwnedFd,
    /// The generation of the region layout it was forked with
    /// ([`RegionSet::generation`]).
    regions: u64,
    /// Not reaped yet: its pid is still its own, to be killed at the end.
    unreaped: bool,
}

impl Zygote {
    /// Forks the zygote from the root. `image` runs in the zygote alone,
    /// given `keep`, which the root gets back: what the zygote needs is
    /// copied out of it and the rest is dropped there (the root's
    /// first zygote is given the config itself and the post office, so
    /// that its copy of the root's memory keeps neither every daemon's
    /// settings nor every mailbox's tables).
    pub(super) fn start<'a, T>(
        regions: &RegionSet,
        keep: T,
        image: impl FnOnce(T) -> Image<'a>,
    ) -> (T, io::Result<Zygote>) {
        let (ours, theirs) = match fdpass::seqpacket_pair() {
            Ok(pair) => pair,
            Err(e) => return (keep, Err(e)),
        };
        let root = sys::getpid();
        // SAFETY: the root is single-threaded; the zygote is too, and runs
        // only `serve` until it exits.
        match unsafe { sys::fork() } {
            Err(e) => (keep, Err(e)),
            Ok(Forked::Parent(pid)) => {
                let z = Zygote {
                    pid,
                    sock: ours,
                    regions: regions.generation(),
                    unreaped: true,
                };
                // A stopped or stuck zygote does not stop the root: past
                // this, the answer is given up on, the zygote ended and the
                // start forked by the root itself.
                let z = fdpass::set_recv_timeout(z.sock.as_fd(), ANSWER_TIMEOUT).map(|()| z);
                (keep, z)
            }
            Ok(Forked::Child) => {
                // The first steps of any forked process, before this one
                // allocates (its image) or frees (what it was given).
                if crate::prologue::after_fork(root).is_err() {
                    sys::exit_now(0);
                }
                drop(ours);
                crate::prologue::run_or_abort(|| {
                    let image = image(keep);
                    serve(&image, &theirs)
                });
                sys::exit_now(0)
            }
        }
    }

    pub(super) fn pid(&self) -> Pid {
        self.pid
    }

    /// Whether its copy of the regions' layout is `regions`'s.
    pub(super) fn knows(&self, regions: &RegionSet) -> bool {
        self.regions == regions.generation()
    }

    /// Where requests go.
    pub(super) fn sock(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Forgets a zygote the root has reaped already (its pid may be
    /// anyone's by now: not to be signalled).
    pub(super) fn reaped(mut self) {
        self.unreaped = false;
    }
}

impl Drop for Zygote {
    /// Ends it: kills and reaps it (it holds nothing that needs a clean
    /// exit), so no zombie outlives it.
    fn drop(&mut self) {
        if self.unreaped {
            let _ = sys::kill(self.pid, Signal::KILL);
            let _ = sys::wait_pid(self.pid);
        }
    }
}

/// The zygote's life: settles, then forks what the root asks for until
/// the root closes its end or dies.
fn serve(image: &Image<'_>, sock: &OwnedFd) -> ! {
    sys::title::set(TITLE);
    // The exec'd programs' regions (two mappings each, with a guard page)
    // are none of a built-in daemon's business: beside 1,000 programs they
    // were most of what each fork copied.
    // SAFETY: nothing in the zygote reads them; its children see exec'd
    // siblings through no view (`Siblings::get`).
    if unsafe { image.regions.unmap_programs() }.is_err() {
        sys::exit_now(0);
    }
    // The root keeps 0, 1 and 2 open (`sys::open_std_fds`), so the socket
    // and whatever a request brings land above them.
    // Nothing of the root's but its standard descriptors and the socket,
    // moved down to 3: a fork copies the table up to its highest open
    // descriptor, and the root's tree holds thousands.
    let keep = std::os::fd::AsRawFd::as_raw_fd(sock);
    let _ = sys::close_between(3, keep - 1);
    let _ = sys::close_from(keep + 1);
    if keep != SOCK_FD
        && (sys::dup2(keep, SOCK_FD).is_err() || sys::close_from(SOCK_FD + 1).is_err())
    {
        sys::exit_now(0);
    }
    // SAFETY: SOCK_FD holds the socket (moved there, or there already),
    // open until this process exits: `serve` never returns.
    let sock = unsafe { BorrowedFd::borrow_raw(SOCK_FD) };
    // What the root's data left free in this copy of its heap (the
    // config's parse; the daemons' configs and the mailboxes' tables if
    // this is the first zygote) goes back to the kernel, so that no fork
    // copies it.
    sys::mem::release_free_heap();
    let mut buf = [0u8; Spawn::SIZE + 1];
    let mut got = Vec::with_capacity(16);
    loop {
        got.clear();
        let answer = match fdpass::recv_with_fds(sock, &mut buf, &mut got) {
            Ok(0) => sys::exit_now(0),
            Ok(n) => Spawn::decode(&buf[..n])
                .map_err(|_| io::Error::from_raw_os_error(libc::EBADMSG))
                .and_then(|req| fork_for_root(image, &req, &got)),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => Err(e),
            Err(_) => sys::exit_now(0),
        };
        if fdpass::send_with_fds(sock, &handoff::encode_spawned(&answer), &[]).is_err() {
            sys::exit_now(0);
        }
        // Its copies of the child's descriptors: the child has its own.
        got.clear();
    }
}

/// In the zygote: the plan of `req`'s process, from the image, and its
/// fork. Only built-in daemons come this way.
fn fork_for_root(image: &Image<'_>, req: &Spawn, got: &[OwnedFd]) -> io::Result<Pid> {
    let invalid = || io::Error::from_raw_os_error(libc::EINVAL);
    let i = req.index as usize;
    let spec = image
        .daemons
        .get(i)
        .and_then(Option::as_ref)
        .ok_or_else(invalid)?;
    let name = image.names.get(i).ok_or_else(invalid)?;
    // Made here, per request, not kept per daemon: the fork copies all
    // the zygote holds.
    let title = super::Child::title(name);
    let writer = crate::ring::WriterId::from_raw(req.writer).ok_or_else(invalid)?;
    let start = Start {
        restarts: req.history.restarts,
        deaths: req.history.deaths(),
        on_restart: spec.on_restart,
        resume_before: req.history.resume_before,
        watchdog: spec.watchdog,
    };
    // The descriptors come with the request (`got`); the plan's own
    // descriptor fields are the root's, and not read here.
    let plan = Plan {
        index: i,
        name,
        title: &title,
        regions: image.regions,
        root_pid: image.root_pid,
        start,
        run: Run::Builtin {
            entry: spec.entry,
            args: &spec.args,
            names: image.names,
        },
        lock: None,
        standby: req.standby,
        output: None,
        notify_fd: None,
        post: image.post,
        writer,
        post_fds: (-1, -1),
        monitors: None,
        cgroup: None,
        listeners: &[],
        listen: &spec.listen,
    };
    spawn::fork_for_root(&plan, req, got)
}
