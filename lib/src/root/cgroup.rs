//! A daemon's whole process tree is the daemon.
//!
//! With a writable cgroup v2 hierarchy, every daemon runs in a cgroup of
//! its own, a child of the root's cgroup: whatever it forks, `setsid` or
//! double-fork included, stays in it. When the daemon's process ends, the
//! root ends the rest with `cgroup.kill` and tells its supervisor of the
//! exit only once `cgroup.events` says `populated 0`, so a replacement
//! never overlaps anything of the incarnation before it. Without one, the
//! root falls back to signalling the daemon's process group (see
//! DESIGN.md §3).
//!
//! A daemon's cgroup `NAME` holds its limits; it has two leaves, `NAME/a`
//! and `NAME/b`. Its process runs in the *active* one, into which the root
//! creates it directly (`sys::fork::fork_into`, `spawn_vm`: no cgroup
//! migration on the restart path); a standby is created in the other, and
//! when it takes over the two swap roles, so a takeover moves no process
//! either. The active leaf is what is watched for `populated 0` and what
//! `cgroup.kill` ends. A killed leaf is made anew before anything is
//! created in it again: a child cloned into a cgroup that was ever killed
//! is itself killed at birth on some kernels (6.18 seen).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::config::{DaemonConfig, Limits};
use crate::sys::cgroup::Inotify;
use crate::sys::{self, Epoll};

/// What the root found of cgroup v2 where it runs.
#[derive(Debug)]
pub(crate) struct Probe {
    /// The hierarchy's mount point.
    mount: PathBuf,
    /// The root's own cgroup, as a directory.
    own: PathBuf,
    /// Whether `own` is the hierarchy's top cgroup (no delegation: the root
    /// makes a cgroup of its own under it).
    at_top: bool,
    /// The controllers `own` offers its children (`cgroup.controllers`).
    pub(crate) controllers: Vec<String>,
}

/// Finds the cgroup v2 hierarchy and this process's place in it, or says
/// why there is none to use.
pub(crate) fn probe() -> Result<Probe, String> {
    let mount = match sys::cgroup::mount_point() {
        Ok(Some(m)) => m,
        Ok(None) => return Err("no cgroup2 file system in /proc/self/mountinfo".into()),
        Err(e) => return Err(format!("reading /proc/self/mountinfo: {e}")),
    };
    let path = match sys::cgroup::own_path() {
        Ok(Some(p)) => p,
        Ok(None) => return Err("no cgroup v2 line (0::) in /proc/self/cgroup".into()),
        Err(e) => return Err(format!("reading /proc/self/cgroup: {e}")),
    };
    let own = mount.join(path.trim_start_matches('/'));
    let controllers = std::fs::read_to_string(own.join("cgroup.controllers"))
        .map_err(|e| format!("{}: {e}", own.join("cgroup.controllers").display()))?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Ok(Probe {
        at_top: path == "/",
        mount,
        own,
        controllers,
    })
}

/// The controller a limit needs, and the file it is written to.
pub(crate) const LIMITS: [(&str, &str, &str); 3] = [
    ("memory_max", "memory", "memory.max"),
    ("pids_max", "pids", "pids.max"),
    ("cpu_weight", "cpu", "cpu.weight"),
];

/// What each of [`LIMITS`] is without a limit (the kernel's defaults).
const LIMIT_DEFAULTS: [&str; 3] = ["max", "max", "100"];

/// The values a daemon set, in the order of [`LIMITS`].
fn values(l: &Limits) -> [Option<u64>; 3] {
    [l.memory_max, l.pids_max, l.cpu_weight]
}

/// How the root ends everything a daemon forked.
#[derive(Debug)]
pub(crate) enum Containment {
    /// Every daemon in a cgroup of its own.
    Cgroups(Cgroups),
    /// No writable cgroup v2 here (why): the daemon's process group is
    /// signalled, and a process that left it (`setsid`) can outlive it.
    ProcessGroups(String),
}

/// The daemons' cgroups.
#[derive(Debug)]
pub(crate) struct Cgroups {
    /// The parent of every daemon's cgroup.
    base: PathBuf,
    /// `base/root`, where the root moved itself so that `base` holds no
    /// process (cgroup v2 gives controllers only to cgroups without any).
    leaf: Option<PathBuf>,
    /// The root made `base` (it ran in the hierarchy's top cgroup) and
    /// removes it at exit.
    made_base: bool,
    /// Controllers the root enabled in `base`'s `cgroup.subtree_control`.
    enabled: Vec<&'static str>,
    /// Each daemon's cgroup directory.
    daemons: Vec<PathBuf>,
    /// Each daemon's two leaves.
    leaves: Vec<Leaves>,
    /// One descriptor, in the root's epoll set, watching every leaf's
    /// `cgroup.events` (no descriptor per daemon: DESIGN.md §1, 5).
    inotify: Inotify,
    /// Watch descriptor → daemon.
    watches: RefCell<HashMap<i32, usize>>,
}

/// A daemon's two leaves, [`LEAVES`].
#[derive(Debug, Default)]
struct Leaves {
    /// Which one its process runs in (the other is a standby's).
    active: Cell<usize>,
    /// Per leaf: killed since it was made.
    killed: [Cell<bool>; 2],
    /// Per leaf: the watch descriptor of its `cgroup.events`.
    wd: [Cell<i32>; 2],
}

impl Containment {
    /// Makes a cgroup per daemon under the root's own (writing each one's
    /// limits; `socket`, the root's control socket, names the root where
    /// it needs a cgroup of its own) and watches their `cgroup.events`
    /// through one inotify descriptor in `epoll` as `token`; or, where that is not possible, says why and falls
    /// back to process groups. An error is a cgroup that exists but cannot
    /// be set up as asked (a limit that cannot be written, a leftover
    /// cgroup whose processes do not die).
    ///
    /// Where the root moves itself into a leaf of its own, `zygote` (its
    /// zygote, forked before) moves there with it: a process left in the
    /// cgroup above the daemons' would keep controllers from being
    /// enabled there. A zygote that is gone already is no error.
    pub(crate) fn set_up(
        daemons: &[DaemonConfig],
        socket: &Path,
        epoll: &Epoll,
        token: u64,
        zygote: Option<sys::Pid>,
    ) -> io::Result<Containment> {
        let probe = match probe() {
            Ok(p) => p,
            Err(why) => return Ok(Containment::ProcessGroups(why)),
        };
        let (base, leaf, made_base) = if probe.at_top {
            // Not delegated: a cgroup of our own beside the host's, named
            // by the control socket (which only one live root can hold), so
            // the next root on the same config finds what a killed one left.
            let base = probe.mount.join(top_name(socket));
            if let Err(e) = make_dir(&base) {
                return Ok(Containment::ProcessGroups(e.to_string()));
            }
            (base, None, true)
        } else {
            let leaf = probe.own.join("root");
            let moved = make_dir(&leaf)
                .and_then(|()| move_to(&leaf, sys::getpid()))
                .and_then(|()| {
                    // If the zygote cannot follow, the root goes back where
                    // it was, so that the leaf can go.
                    zygote.map_or(Ok(()), |z| {
                        move_to(&leaf, z).inspect_err(|_| {
                            let _ = move_to(&probe.own, sys::getpid());
                        })
                    })
                });
            if let Err(e) = moved {
                let _ = std::fs::remove_dir(&leaf);
                return Ok(Containment::ProcessGroups(e.to_string()));
            }
            (probe.own.clone(), Some(leaf), false)
        };
        let mut cg = Cgroups {
            base,
            leaf,
            made_base,
            enabled: Vec::new(),
            daemons: Vec::with_capacity(daemons.len()),
            leaves: Vec::with_capacity(daemons.len()),
            inotify: Inotify::new()?,
            watches: RefCell::new(HashMap::with_capacity(2 * daemons.len())),
        };
        let filled = cg
            .fill(daemons, &probe)
            .and_then(|()| epoll.add(cg.inotify.as_fd(), token));
        if let Err(e) = filled {
            // Undo what was made (the zygote back beside the root first,
            // so that the leaf can go); the error that stopped us is the
            // one to report.
            if let (Some(z), Some(_)) = (zygote, &cg.leaf) {
                let _ = move_to(&cg.base, z);
            }
            let _ = cg.remove();
            return Err(e);
        }
        Ok(Containment::Cgroups(cg))
    }

    /// A reload adds daemon `i` (the next index): it gets its own cgroup,
    /// as the daemons made at start have. Nothing with process groups.
    pub(crate) fn add(&mut self, i: usize, d: &DaemonConfig) -> io::Result<()> {
        match self {
            Containment::Cgroups(cg) => {
                if cg.daemons.len() != i {
                    return Err(io::Error::other(format!(
                        "daemon {i} added after {} cgroups",
                        cg.daemons.len()
                    )));
                }
                let made = cg.make(i, d, false);
                if made.is_err() && cg.leaves.len() > cg.daemons.len() {
                    // Leaves of a cgroup not finished: not this daemon's.
                    cg.leaves.pop();
                }
                made
            }
            Containment::ProcessGroups(_) => Ok(()),
        }
    }

    /// Index `i`, which a reload gave a daemon it then could not add, has
    /// no cgroup: its place is kept (never used), so later daemons' indices
    /// and cgroups stay in step.
    pub(crate) fn skip(&mut self, i: usize, d: &DaemonConfig) {
        if let Containment::Cgroups(cg) = self {
            if cg.daemons.len() == i {
                cg.leaves.truncate(i);
                cg.leaves.push(Leaves::default());
                cg.daemons.push(cg.base.join(&d.name));
            }
        }
    }

    /// Whether the limits `d` sets can be applied here: each needs its
    /// controller offered to the daemons' cgroups (checked when a reload
    /// adds a daemon, before anything is made).
    pub(crate) fn can_limit(&self, d: &DaemonConfig) -> io::Result<()> {
        let Containment::Cgroups(cg) = self else {
            return Ok(());
        };
        for (k, v) in values(&d.limits).into_iter().enumerate() {
            let (key, controller, _) = LIMITS[k];
            if v.is_some() && !cg.enabled.contains(&controller) && !cg.offers(controller) {
                return Err(io::Error::other(format!(
                    "{key} needs the {controller} controller, which {} does not offer",
                    cg.base.display()
                )));
            }
        }
        Ok(())
    }

    /// One line for the log and `ctl status`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Containment::Cgroups(cg) => format!("cgroup {}", cg.base.display()),
            Containment::ProcessGroups(why) => {
                format!("process-group (no writable cgroup v2: {why})")
            }
        }
    }

    /// Opens the leaf daemon `i`'s process is to run in (its standby's,
    /// with `standby`), for the child to be created in, and says whether
    /// it may be born there ([`sys::fork::fork_into`]) or must enter it
    /// first thing ([`sys::cgroup::enter`]: a killed leaf that could not be
    /// made anew); `None` without cgroups.
    pub(crate) fn leaf(&self, i: usize, standby: bool) -> io::Result<Option<(OwnedFd, bool)>> {
        let Containment::Cgroups(cg) = self else {
            return Ok(None);
        };
        // Every daemon has one (a reload makes an added daemon's before it
        // joins the tree).
        let (Some(dir), Some(l)) = (cg.daemons.get(i), cg.leaves.get(i)) else {
            return Ok(None);
        };
        let k = l.active.get() ^ usize::from(standby);
        let leaf = dir.join(LEAVES[k]);
        if l.killed[k].get() {
            // Empty by now: the root waits for `populated 0` before a
            // replacement starts. If not, the child migrates instead.
            match std::fs::remove_dir(&leaf) {
                Ok(()) => {
                    make_dir(&leaf)?;
                    cg.watch(i, k, &leaf)?;
                    l.killed[k].set(false);
                }
                Err(e) => {
                    tracing::debug!(cgroup = %leaf.display(), error = %e, "killed leaf kept");
                }
            }
        }
        let fd = sys::cgroup::open_dir(&leaf)?;
        Ok(Some((fd, !l.killed[k].get())))
    }

    /// Daemon `i`'s standby takes over: its leaf becomes the active one
    /// (it was created there: nothing moves). The other leaf, where the
    /// dead primary ran and whose rest was killed, is the next standby's.
    pub(crate) fn adopt(&self, i: usize) {
        if let Containment::Cgroups(cg) = self {
            if let Some(l) = cg.leaves.get(i) {
                l.active.set(l.active.get() ^ 1);
            }
        }
    }

    /// SIGKILLs everything in daemon `i`'s active leaf (its process and
    /// all it forked; not its standby); nothing without cgroups.
    pub(crate) fn kill(&self, i: usize) -> io::Result<()> {
        match self {
            Containment::Cgroups(cg) => match (cg.daemons.get(i), cg.leaves.get(i)) {
                (Some(dir), Some(l)) => {
                    let k = l.active.get();
                    l.killed[k].set(true);
                    sys::cgroup::write(&dir.join(LEAVES[k]), "cgroup.kill", "1")
                }
                _ => Ok(()),
            },
            Containment::ProcessGroups(_) => Ok(()),
        }
    }

    /// Daemon `i`'s process ended: whether anything is left in its cgroup.
    /// If so, it is killed, and the root waits for [`Self::is_empty`] before
    /// the daemon's exit counts (and a replacement starts).
    pub(crate) fn end_rest(&self, i: usize) -> io::Result<bool> {
        if self.is_empty(i)? {
            return Ok(false);
        }
        self.kill(i)?;
        Ok(!self.is_empty(i)?)
    }

    /// Whether daemon `i`'s active leaf is empty (always, without
    /// cgroups).
    pub(crate) fn is_empty(&self, i: usize) -> io::Result<bool> {
        match self {
            Containment::Cgroups(cg) => match (cg.daemons.get(i), cg.leaves.get(i)) {
                (Some(dir), Some(l)) => {
                    Ok(!sys::cgroup::populated(&dir.join(LEAVES[l.active.get()]))?)
                }
                _ => Ok(true),
            },
            Containment::ProcessGroups(_) => Ok(true),
        }
    }

    /// The daemons whose `cgroup.events` changed since the last call (the
    /// inotify descriptor was readable), in `out`.
    pub(crate) fn changed(&self, out: &mut Vec<usize>) -> io::Result<()> {
        let Containment::Cgroups(cg) = self else {
            return Ok(());
        };
        let mut wds = Vec::new();
        cg.inotify.read(&mut wds)?;
        let watches = cg.watches.borrow();
        out.extend(wds.iter().filter_map(|wd| watches.get(wd).copied()));
        Ok(())
    }

    /// Removes every cgroup the root made (their processes are gone: the
    /// root exits only after every daemon's cgroup emptied) and moves the
    /// root back where it was.
    pub(crate) fn remove(self) -> io::Result<()> {
        match self {
            Containment::Cgroups(cg) => cg.remove(),
            Containment::ProcessGroups(_) => Ok(()),
        }
    }
}

impl Cgroups {
    fn fill(&mut self, daemons: &[DaemonConfig], probe: &Probe) -> io::Result<()> {
        for (k, &(key, controller, _)) in LIMITS.iter().enumerate() {
            if !daemons.iter().any(|d| values(&d.limits)[k].is_some()) {
                continue;
            }
            if !probe.controllers.iter().any(|c| c == controller) {
                // `check` refuses this; a hierarchy that changed since is
                // refused here too, never ignored.
                return Err(io::Error::other(format!(
                    "{key} needs the {controller} controller, which {} does not offer",
                    probe.own.display()
                )));
            }
            self.enable(controller)?;
        }
        for (i, d) in daemons.iter().enumerate() {
            self.make(i, d, true)?;
        }
        Ok(())
    }

    /// Makes daemon `i`'s cgroup (the next index), its two fresh leaves,
    /// watched, and its limits. What a killed root left in it is killed
    /// and waited for `at_start`; a reload refuses such a cgroup instead
    /// (the loop must not block).
    fn make(&mut self, i: usize, d: &DaemonConfig, at_start: bool) -> io::Result<()> {
        debug_assert_eq!(i, self.daemons.len(), "cgroups are made in index order");
        let dir = self.base.join(&d.name);
        make_dir(&dir)?;
        if !dir.join("cgroup.kill").exists() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel has no cgroup.kill (Linux 5.14 or later)",
            ));
        }
        if at_start {
            let wd = self.inotify.watch_modify(&dir.join("cgroup.events"))?;
            drain_leftover(&dir, &self.inotify)?;
            // Only leftovers needed the whole cgroup watched.
            self.inotify.unwatch(wd)?;
        } else if sys::cgroup::populated(&dir)? {
            return Err(io::Error::other(format!(
                "{} still holds processes",
                dir.display()
            )));
        }
        self.leaves.push(Leaves::default());
        // Fresh leaves (one a killed root, or a daemon of this name a
        // reload removed, left may have been killed).
        for (k, name) in LEAVES.iter().enumerate() {
            let leaf = dir.join(name);
            if leaf.exists() {
                remove_dir(&leaf)?;
            }
            make_dir(&leaf)?;
            self.watch(i, k, &leaf)?;
        }
        for (k, v) in values(&d.limits).into_iter().enumerate() {
            let (_, controller, file) = LIMITS[k];
            if let Some(v) = v {
                // Enabled at start if a daemon then needed it.
                self.enable(controller)?;
                sys::cgroup::write(&dir, file, &v.to_string())?;
            } else if self.enabled.contains(&controller) {
                // No limit: the kernel's default, not what a daemon of this
                // name a reload removed may have left in its cgroup.
                sys::cgroup::write(&dir, file, LIMIT_DEFAULTS[k])?;
            }
        }
        self.daemons.push(dir);
        Ok(())
    }

    /// Whether `controller` can be given to the daemons' cgroups (the
    /// daemons' parent has it in its `cgroup.controllers`).
    fn offers(&self, controller: &str) -> bool {
        std::fs::read_to_string(self.base.join("cgroup.controllers"))
            .is_ok_and(|list| list.split_whitespace().any(|c| c == controller))
    }

    /// Gives the daemons' cgroups `controller` (once).
    fn enable(&mut self, controller: &'static str) -> io::Result<()> {
        if self.enabled.contains(&controller) {
            return Ok(());
        }
        sys::cgroup::write(
            &self.base,
            "cgroup.subtree_control",
            &format!("+{controller}"),
        )?;
        self.enabled.push(controller);
        Ok(())
    }

    /// Watches leaf `k` of daemon `i` (made anew: its old watch went with
    /// the old directory).
    fn watch(&self, i: usize, k: usize, leaf: &Path) -> io::Result<()> {
        let wd = self.inotify.watch_modify(&leaf.join("cgroup.events"))?;
        let mut watches = self.watches.borrow_mut();
        if let Some(l) = self.leaves.get(i) {
            watches.remove(&l.wd[k].replace(wd));
        }
        watches.insert(wd, i);
        Ok(())
    }

    fn remove(self) -> io::Result<()> {
        let mut first: io::Result<()> = Ok(());
        let mut keep = |r: io::Result<()>| {
            if let Err(e) = r {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        };
        for (k, dir) in self.daemons.iter().enumerate() {
            // A reload that removed a daemon and added one of that name
            // gave both the same cgroup.
            if self.daemons[..k].contains(dir) {
                continue;
            }
            for name in LEAVES {
                keep(remove_dir(&dir.join(name)));
            }
            keep(remove_dir(dir));
        }
        for c in &self.enabled {
            keep(sys::cgroup::write(
                &self.base,
                "cgroup.subtree_control",
                &format!("-{c}"),
            ));
        }
        if let Some(leaf) = &self.leaf {
            keep(move_to(&self.base, sys::getpid()));
            keep(remove_dir(leaf));
        }
        if self.made_base {
            keep(remove_dir(&self.base));
        }
        first
    }
}

/// Moves process `pid` into cgroup `dir`; one that is gone already is
/// no error.
fn move_to(dir: &Path, pid: sys::Pid) -> io::Result<()> {
    match sys::cgroup::write(dir, "cgroup.procs", &pid.to_string()) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        moved => moved,
    }
}

/// The two leaves of a daemon's cgroup its processes run in (the active
/// one, and a standby's).
const LEAVES: [&str; 2] = ["a", "b"];

/// `forkroot@PATH` with the socket's path, `/` written as `_` (a cgroup
/// name is one path component).
fn top_name(socket: &Path) -> String {
    let path = socket.to_string_lossy().replace('/', "_");
    format!("forkroot@{path}")
}

/// mkdir that accepts an existing directory (a leftover of a killed root).
fn make_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    }
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    std::fs::remove_dir(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("removing {}: {e}", dir.display())))
}

/// How long the root's start-up waits for what a killed root left in a
/// daemon's cgroup to die.
const LEFTOVER_WAIT_MS: i32 = 5_000;

/// A cgroup left by a root that was killed may still hold what its
/// daemons forked: kill it and wait until it is empty, so the new daemon
/// does not overlap the old one's processes. Start-up only, before the
/// poll loop.
fn drain_leftover(dir: &Path, inotify: &Inotify) -> io::Result<()> {
    if !sys::cgroup::populated(dir)? {
        return Ok(());
    }
    tracing::warn!(cgroup = %dir.display(), "processes left from an earlier root; killing them");
    sys::cgroup::write(dir, "cgroup.kill", "1")?;
    let mut seen = Vec::new();
    while sys::cgroup::populated(dir)? {
        seen.clear();
        inotify.read(&mut seen)?;
        if !sys::cgroup::populated(dir)? {
            break;
        }
        if !sys::cgroup::wait_readable(inotify.as_fd(), LEFTOVER_WAIT_MS)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{}: still populated 5s after cgroup.kill", dir.display()),
            ));
        }
    }
    Ok(())
}

/// What a spawn plan carries of [`Containment::leaf`].
pub(crate) fn raw(leaf: Option<&(OwnedFd, bool)>) -> Option<(RawFd, bool)> {
    leaf.map(|(fd, fresh)| (fd.as_raw_fd(), *fresh))
}
