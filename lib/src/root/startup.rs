//! Start-up: checking that the tree can be run by this process, setting
//! the root's own attributes (signals, subreaper, not dumpable, open-file
//! limit), and making everything daemons share before any daemon is
//! forked: the `state_dir` lock, the regions, the mailboxes, (then the
//! zygote,) the `listen` sockets, the control and notify sockets, the
//! cgroups, the output pipes.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{info, warn};

use super::state_dir::{lock_state_dir, watch_state_dir};
use super::supervisor::Supervisor;
use super::{
    cgroup, control, ctx, handover, manager, notify, output, pid_u32, reload, zygote, Child, Mode,
    Root, RootError,
};
use super::{
    TOKEN_CGROUP, TOKEN_HANDOVER, TOKEN_LISTENER, TOKEN_NOTIFY, TOKEN_SIGNALS, TOKEN_WATCH,
};
use crate::config::{Config, DaemonConfig, Program};
use crate::daemon::Registry;
use crate::mailbox::{PostOffice, Shape};
use crate::region::{RegionSet, RegionSpec};
use crate::sys::{self, SigSet, Signal};

impl<'a> Root<'a> {
    /// Validates the kinds, sets the root's process attributes, and maps
    /// every region. Starts nothing.
    pub fn new(config: Config, registry: &'a Registry) -> Result<Root<'a>, RootError> {
        check_startable(&config, registry)?;
        let signals = set_process_attributes(&config)?;
        // Before the other descriptors, so its block is low; after the
        // open-file limit is raised, so it fits.
        let handover = handover::Handover::new();
        let lock = match &config.root.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(ctx("creating state_dir"))?;
                Some(lock_state_dir(dir)?)
            }
            None => None,
        };
        let regions = map_regions(&config)?;
        let mut post = make_mailboxes(&config)?;
        let names: Vec<String> = config.daemons.iter().map(|d| d.name.clone()).collect();
        // As early as it can be (the regions and mailboxes mapped, nothing
        // else per daemon made yet: the `listen` sockets, the cgroups, the
        // records per daemon, the output pipes): each of its forks copies
        // what it holds (§3, "The zygote"). The cgroups' set-up moves it
        // into the root's leaf with the root.
        let (config, zygote) = start_zygote(config, &names, registry, &regions, &mut post);
        let listeners = bind_listeners(&config)?;
        let epoll = sys::Epoll::new().map_err(ctx("epoll"))?;
        epoll
            .add(signals.as_fd(), TOKEN_SIGNALS)
            .map_err(ctx("epoll"))?;
        if let Some(h) = &handover {
            epoll
                .add(h.sync_fd(), TOKEN_HANDOVER)
                .map_err(ctx("epoll"))?;
        }
        let watch = watch_regions(&config, &epoll)?;
        let (server, socket) = bind_control(&config, &epoll)?;
        let contain = contain_daemons(&config, &socket, &epoll, zygote.as_ref().map(|z| z.pid()))?;
        // From here a start that fails removes the cgroups it made (the
        // zygote ended first: it sits in the root's leaf), so that nothing
        // of it is left behind.
        let rest = || -> Result<_, RootError> {
            let notify =
                notify::Socket::bind(sys::getpid()).map_err(ctx("binding the notify socket"))?;
            epoll.add(notify.fd(), TOKEN_NOTIFY).map_err(ctx("epoll"))?;
            let outputs = watch_outputs(&config, &epoll)?;
            Ok((notify, outputs))
        };
        let (notify, outputs) = match rest() {
            Ok(made) => made,
            Err(e) => {
                drop(zygote);
                if let Err(r) = contain.remove() {
                    warn!(error = %r, "could not remove the daemons' cgroups");
                }
                return Err(e);
            }
        };
        let children = config.daemons.iter().cloned().map(Child::new).collect();
        let daemons: Vec<Option<&DaemonConfig>> = config.daemons.iter().map(Some).collect();
        let links = reload::resolve_links(&daemons);
        let sup = Supervisor::new(&config, &links, Instant::now());
        Ok(Root {
            sup,
            names,
            listeners,
            config,
            registry,
            children,
            by_pid: HashMap::new(),
            regions,
            starts_by_cause: vec![Default::default(); post.post().count()],
            post,
            epoll,
            signals,
            timers: BTreeSet::new(),
            standby_retries: BTreeSet::new(),
            mode: Mode::Supervising,
            pid: sys::getpid(),
            started: Instant::now(),
            forks: 0,
            control: Some(server),
            manager: manager::Manager::from_env(pid_u32(sys::getpid())),
            notify,
            lock,
            sweep_at: None,
            pidfds: HashMap::new(),
            notes: Vec::new(),
            control_paused: None,
            config_path: None,
            reloading: None,
            watch,
            outputs,
            contain: Some(contain),
            handover,
            zygote,
            zygote_off: false,
        })
    }
}

/// Forks the zygote (`zygote.rs`) from the root as it is early in its
/// start-up; `None` (said, and the root forks every daemon itself until a
/// start makes one) if it cannot, or if the tree has no built-in daemon.
/// The config and the mailboxes' tables go into the fork and come back:
/// in the zygote, what a built-in daemon's process reads is copied out of
/// the config and the rest dropped, and the tables (the root's alone) are
/// dropped, so that no fork copies every daemon's settings and mailbox.
fn start_zygote(
    config: Config,
    names: &[String],
    registry: &Registry,
    regions: &RegionSet,
    post: &mut PostOffice,
) -> (Config, Option<zygote::Zygote>) {
    if !config.root.zygote
        || !config
            .daemons
            .iter()
            .any(|d| matches!(d.program, Program::Builtin(_)))
    {
        return (config, None);
    }
    let view = post.post();
    let root_pid = sys::getpid();
    let ((config, _), zygote) = zygote::Zygote::start(regions, (config, post), |(config, post)| {
        // In the zygote: its copy of the config is dropped once this
        // returns; the mailboxes are reached through their view alone.
        post.drop_tables();
        zygote::Image::new(
            config.daemons.iter(),
            names,
            registry,
            regions,
            view,
            root_pid,
        )
    });
    let zygote = zygote
        .inspect(|z| tracing::info!(pid = %z.pid(), "built-in daemons are forked by the zygote"))
        .inspect_err(|e| tracing::warn!(error = %e, "cannot fork the zygote; the root forks the daemons itself"))
        .ok();
    (config, zygote)
}

/// Whether this process can run `config`: every kind it names is one the
/// binary has, and the process is single-threaded.
fn check_startable(config: &Config, registry: &Registry) -> Result<(), RootError> {
    let known: Vec<&str> = registry.kinds().iter().map(|k| k.name).collect();
    let problems = config.check_kinds(&known);
    if !problems.is_empty() {
        return Err(RootError::Config(problems));
    }
    // fork() from a multi-threaded process is not safe for children
    // that run Rust code: refuse rather than deadlock a child.
    if let Some(n) = sys::thread_count().filter(|&n| n > 1) {
        return Err(RootError::Io(
            "starting the root",
            io::Error::other(format!(
                "the root must be single-threaded to fork safely; this process has {n} threads"
            )),
        ));
    }
    Ok(())
}

/// Sets what the root needs of its own process before anything else:
/// signals through a signalfd (returned), a child subreaper, not dumpable,
/// an open-file limit for the tree, a process title it can set.
fn set_process_attributes(config: &Config) -> Result<sys::SignalFd, RootError> {
    // Started with stdin, stdout or stderr closed: /dev/null there, before
    // any descriptor of the root's could take the number.
    sys::open_std_fds().map_err(ctx("opening /dev/null on a closed standard descriptor"))?;
    // An inherited "ignore SIGCHLD" would make the kernel reap our
    // children without telling us.
    sys::default_signal(Signal::CHLD);
    // Signals arrive through the signalfd, never through handlers.
    // SIGUSR1/SIGUSR2 too: their default action would end the root
    // (and with it, through PDEATHSIG, the whole tree) on a stray kill.
    let set = SigSet::of(&[
        Signal::CHLD,
        Signal::TERM,
        Signal::INT,
        Signal::HUP,
        Signal::USR1,
        Signal::USR2,
    ]);
    set.block().map_err(ctx("blocking signals"))?;
    let signals = set.signalfd().map_err(ctx("signalfd"))?;
    sys::set_child_subreaper().map_err(ctx("becoming a child subreaper"))?;
    // Not dumpable: no other process of our user may open
    // /proc/ROOT/fd/N (every region's descriptor, read-write), read our
    // memory or ptrace us. Daemons inherit it until they have closed
    // our descriptors (see spawn.rs); exec'd programs get it back from
    // execve.
    sys::file::set_dumpable(false).map_err(ctx("PR_SET_DUMPABLE"))?;
    // Per daemon: its region, its two output pipes (both ends), its
    // setup pipe; plus the loop's own.
    let limit = sys::raise_fd_limit().map_err(ctx("raising RLIMIT_NOFILE"))?;
    // A limit beyond usize is no limit here.
    if usize::try_from(limit).unwrap_or(usize::MAX) < config.daemons.len() * 6 + 64 {
        warn!(
            limit,
            daemons = config.daemons.len(),
            "the open-file limit is low for this many daemons"
        );
    }
    sys::title::init();
    Ok(signals)
}

/// Maps every daemon's region (in `state_dir`'s files, if it has one).
fn map_regions(config: &Config) -> Result<RegionSet, RootError> {
    let specs: Vec<RegionSpec<'_>> = config
        .daemons
        .iter()
        .map(|d| RegionSpec {
            name: &d.name,
            user: d.memory,
            own_file: matches!(d.program, Program::Exec(_)),
        })
        .collect();
    RegionSet::create(&specs, config.root.state_dir.as_deref()).map_err(ctx("mapping regions"))
}

/// Makes every daemon's mailbox and the registry.
fn make_mailboxes(config: &Config) -> Result<PostOffice, RootError> {
    let shapes: Vec<Shape<'_>> = config.daemons.iter().map(Shape::of).collect();
    PostOffice::create(&shapes, config.spare_mailboxes as usize)
        .map_err(ctx("making the mailboxes"))
}

/// Binds every daemon's `listen` sockets, before any fork. An address
/// that cannot be bound (taken, no permission) is a config problem placed
/// at its entry (exit 78): nothing starts.
fn bind_listeners(config: &Config) -> Result<Vec<Vec<crate::listen::Bound>>, RootError> {
    let mut problems = Vec::new();
    let mut all = Vec::with_capacity(config.daemons.len());
    for (i, d) in config.daemons.iter().enumerate() {
        let mut fds = Vec::with_capacity(d.listen.len());
        for (j, text) in d.listen.iter().enumerate() {
            let bound = crate::listen::Address::parse(text)
                .map_err(io::Error::other)
                .and_then(|a| a.bind());
            match bound {
                Ok(fd) => fds.push(fd),
                Err(e) => problems.push(crate::config::Problem {
                    place: format!("daemon[{i}].listen[{j}]"),
                    message: format!("cannot listen on {text:?}: {e}"),
                }),
            }
        }
        all.push(fds);
    }
    if problems.is_empty() {
        Ok(all)
    } else {
        Err(RootError::Config(problems))
    }
}

/// Watches `state_dir` (see [`Root::on_watch`]), if the config has one
/// and the kernel lets it.
fn watch_regions(config: &Config, epoll: &sys::Epoll) -> Result<Option<OwnedFd>, RootError> {
    let Some(dir) = &config.root.state_dir else {
        return Ok(None);
    };
    match watch_state_dir(dir) {
        Ok(fd) => {
            epoll.add(fd.as_fd(), TOKEN_WATCH).map_err(ctx("epoll"))?;
            Ok(Some(fd))
        }
        Err(e) => {
            // Damage is then found before the next start only.
            warn!(error = %e, "cannot watch state_dir; damaged region files are found when their daemon restarts");
            Ok(None)
        }
    }
}

/// Creates the control socket and watches it; returns the server and the
/// socket's path.
fn bind_control(
    config: &Config,
    epoll: &sys::Epoll,
) -> Result<(control::Server, PathBuf), RootError> {
    let socket = config
        .root
        .control
        .clone()
        .unwrap_or_else(crate::control::default_socket);
    // Without its socket the tree could not be managed: whatever the
    // cause (taken, unwritable), nothing starts (a config problem, 78).
    let server =
        control::Server::bind(&socket, config.root.control_group.clone()).map_err(|e| {
            RootError::Config(vec![crate::config::Problem {
                place: "root.control".into(),
                message: format!("cannot create the control socket: {e}"),
            }])
        })?;
    epoll
        .add(server.listener_fd(), TOKEN_LISTENER)
        .map_err(ctx("epoll"))?;
    info!(socket = %socket.display(), "control socket ready");
    Ok((server, socket))
}

/// Sets up how everything a daemon forks is ended with it (its cgroup, or
/// its process group), and says which it is.
fn contain_daemons(
    config: &Config,
    socket: &Path,
    epoll: &sys::Epoll,
    zygote: Option<sys::Pid>,
) -> Result<cgroup::Containment, RootError> {
    let contain = cgroup::Containment::set_up(&config.daemons, socket, epoll, TOKEN_CGROUP, zygote)
        .map_err(ctx("setting up the daemons' cgroups"))?;
    match &contain {
        cgroup::Containment::Cgroups(_) => {
            info!(containment = %contain.describe(), "each daemon runs in its own cgroup");
        }
        cgroup::Containment::ProcessGroups(_) => warn!(
            containment = %contain.describe(),
            "daemons are stopped by process group: a process that leaves its group (setsid) can outlive its daemon"
        ),
    }
    Ok(contain)
}

/// Makes every daemon's stdout and stderr pipes, watched by the loop.
fn watch_outputs(config: &Config, epoll: &sys::Epoll) -> Result<Vec<output::Output>, RootError> {
    let sink = output::Sink::detect();
    let mut outputs = Vec::with_capacity(config.daemons.len());
    for (i, d) in config.daemons.iter().enumerate() {
        outputs
            .push(output::Output::watched(&d.name, sink, epoll, i).map_err(ctx("output pipes"))?);
    }
    Ok(outputs)
}
