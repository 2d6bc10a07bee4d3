//! The daemon API: what a daemon author writes, and what it is given.
//!
//! A daemon is a function, `fn(&mut Context) -> i32`, declared as a
//! [`Kind`] (its name in `kind = "..."`, a line of help, its settings) and
//! registered in a [`Registry`]. The root forks a process for it (no exec),
//! maps its region writable, and calls the function with a [`Context`]; the
//! returned value is the process's exit code (0 is a normal exit).
//!
//! ```
//! use std::time::Duration;
//! use forkroot::{Context, Kind, Registry, Setting};
//!
//! const TICKER: Kind = Kind::new("ticker", "counts ticks across restarts", ticker)
//!     .settings(&[Setting::duration("every", "time between ticks")
//!         .default_duration(Duration::from_secs(1))]);
//!
//! fn ticker(ctx: &mut Context<'_>) -> i32 {
//!     let every: Duration = ctx.arg("every");
//!     // Checkpointed state: a restart resumes from the last commit.
//!     let Ok((mut ticks, _)) = ctx.checkpoints::<u64>(1) else { return 3 };
//!     while ctx.sleep(every) {
//!         *ticks += 1;
//!         ticks.commit();
//!     }
//!     0 // stopped by the root: a normal exit
//! }
//!
//! let mut kinds = Registry::new();
//! kinds.add(TICKER);
//! assert_eq!(kinds.get("ticker").unwrap().settings[0].name, "every");
//! ```

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::{Args, FromArg, OnRestart, Setting};
use crate::region::{Header, LOG_OFFSET, LOG_SIZE, SYSTEM_SIZE};
use crate::sys::{self, Signal};

/// A daemon's entry point; its return value is the exit code.
pub type Entry = fn(&mut Context<'_>) -> i32;

/// A daemon kind: a name for `kind = "..."`, a line of help, the entry
/// point and the settings it takes in `[daemon.args]`. A `const`, declared
/// once next to the daemon's code.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// The name used in `kind = "..."`.
    pub name: &'static str,
    /// One line for `forkroot kinds`.
    pub about: &'static str,
    /// The entry point.
    pub entry: Entry,
    /// The settings of `[daemon.args]`, checked before anything starts.
    pub settings: &'static [Setting],
}

impl Kind {
    /// A kind without settings (add them with [`Kind::settings`]).
    pub const fn new(name: &'static str, about: &'static str, entry: Entry) -> Kind {
        Kind {
            name,
            about,
            entry,
            settings: &[],
        }
    }

    /// The settings this kind takes.
    pub const fn settings(mut self, settings: &'static [Setting]) -> Kind {
        self.settings = settings;
        self
    }
}

/// The daemon kinds a binary knows, by name, and the tree `forkroot run`
/// starts without `--config`, if any.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: Vec<Kind>,
    demo: Option<&'static str>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `kind`; a later registration of the same name replaces the
    /// earlier one.
    ///
    /// # Panics
    /// When the kind's declaration contradicts itself: two settings of one
    /// name, or a default its own setting would reject.
    pub fn add(&mut self, kind: Kind) -> &mut Registry {
        if let Err(e) = crate::config::check_declaration(kind.settings) {
            panic!("kind {:?}: {e}", kind.name);
        }
        self.kinds.retain(|k| k.name != kind.name);
        self.kinds.push(kind);
        self
    }

    /// Sets the demo tree: the config (TOML text) `forkroot run` starts when
    /// given no `--config`. Without one, `run` needs `--config`.
    pub fn demo(&mut self, config: &'static str) -> &mut Registry {
        self.demo = Some(config);
        self
    }

    /// The demo tree, if there is one.
    pub fn demo_config(&self) -> Option<&'static str> {
        self.demo
    }

    /// The kind called `name`.
    pub fn get(&self, name: &str) -> Option<&Kind> {
        self.kinds.iter().find(|k| k.name == name)
    }

    /// Every registered kind, in registration order.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }
}

/// The stage of a daemon's start-up that failed before its code ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SetupStage {
    /// The root had died before the child could arm its death signal.
    Orphaned = 1,
    /// Making a new session (setsid).
    Session = 2,
    /// Mapping its own region writable.
    Region = 3,
    /// Arranging descriptors for an exec'd program.
    Descriptors = 4,
    /// execve of the configured program.
    Exec = 5,
    /// The kind is not built into this binary.
    UnknownKind = 6,
    /// fork itself (or preparing for it) failed in the root.
    Fork = 7,
    /// The child's report of its failed start-up did not verify.
    Report = 8,
    /// Opening an exec'd program's `stdin`.
    Stdin = 9,
    /// Setting its `rlimits`.
    Rlimits = 10,
    /// Changing to its `cwd`.
    Cwd = 11,
    /// Setting its supplementary groups.
    Groups = 12,
    /// Setting its group id.
    Gid = 13,
    /// Setting its user id.
    Uid = 14,
    /// Setting `no_new_privs`.
    NoNewPrivs = 15,
    /// Entering its cgroup (writing `cgroup.procs`).
    Cgroup = 16,
}

impl SetupStage {
    /// The stage for a number sent over the setup pipe.
    pub fn from_u32(n: u32) -> Option<SetupStage> {
        use SetupStage::*;
        [
            Orphaned,
            Session,
            Region,
            Descriptors,
            Exec,
            UnknownKind,
            Fork,
            Report,
            Stdin,
            Rlimits,
            Cwd,
            Groups,
            Gid,
            Uid,
            NoNewPrivs,
            Cgroup,
        ]
        .into_iter()
        .find(|s| *s as u32 == n)
    }
}

impl fmt::Display for SetupStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetupStage::Orphaned => "root gone before start",
            SetupStage::Session => "setsid",
            SetupStage::Region => "mapping its region",
            SetupStage::Descriptors => "arranging descriptors",
            SetupStage::Exec => "exec",
            SetupStage::UnknownKind => "unknown kind",
            SetupStage::Fork => "fork",
            SetupStage::Report => "unreadable setup report",
            SetupStage::Stdin => "opening stdin",
            SetupStage::Rlimits => "setrlimit",
            SetupStage::Cwd => "chdir",
            SetupStage::Groups => "setgroups",
            SetupStage::Gid => "setgid",
            SetupStage::Uid => "setuid",
            SetupStage::NoNewPrivs => "no_new_privs",
            SetupStage::Cgroup => "entering its cgroup",
        })
    }
}

/// Why a daemon process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled {
        /// The signal.
        signal: Signal,
        /// Whether it dumped core.
        core: bool,
    },
    /// It failed before its code ran.
    SetupFailed {
        /// Where.
        stage: SetupStage,
        /// The errno of the failed call.
        errno: i32,
    },
    /// The root killed it (SIGKILL): its watchdog expired (no heartbeat,
    /// no `WATCHDOG=1` in time, or it sent `WATCHDOG=trigger`).
    Watchdog,
    /// The root killed it (SIGKILL): it was not ready within its
    /// `start_timeout`.
    StartTimeout,
}

impl ExitReason {
    /// Exit code 0 is normal; anything else is abnormal (OTP's `normal`
    /// versus every other reason), which `transient` daemons restart on.
    pub fn is_normal(&self) -> bool {
        matches!(self, ExitReason::Exited(0))
    }

    /// Whether the process died of its own doing: a non-zero exit, or a
    /// signal other than SIGKILL, SIGTERM and SIGINT (which come from
    /// outside: an operator, the OOM killer, a stop). A setup failure is
    /// not the daemon's code crashing.
    pub fn is_crash(&self) -> bool {
        match *self {
            ExitReason::Exited(code) => code != 0,
            ExitReason::Signaled { signal, .. } => {
                ![Signal::KILL, Signal::TERM, Signal::INT].contains(&signal)
            }
            ExitReason::SetupFailed { .. } => false,
            // A hang is the daemon's own doing.
            ExitReason::Watchdog | ExitReason::StartTimeout => true,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitReason::Exited(code) => write!(f, "exited with code {code}"),
            ExitReason::Signaled { signal, core } => {
                write!(f, "killed by {signal}")?;
                if core {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
            ExitReason::SetupFailed { stage, errno } => {
                write!(
                    f,
                    "failed to start ({stage}: {})",
                    std::io::Error::from_raw_os_error(errno)
                )
            }
            ExitReason::Watchdog => f.write_str("killed by the watchdog"),
            ExitReason::StartTimeout => f.write_str("killed: not ready within start_timeout"),
        }
    }
}

/// One past death of a daemon, as the root recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Death {
    /// How it ended.
    pub reason: ExitReason,
    /// How long that process had run.
    pub uptime: Duration,
    /// When it was reaped (ns since the epoch).
    pub at_realtime_ns: u64,
}

/// What [`Context::checkpoints`] did with the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// No checkpoint (first start, or `on_restart = "fresh"`): zeroed state.
    Fresh,
    /// Restored the newest checkpoint that verifies.
    Resumed {
        /// Its sequence number.
        seq: u64,
    },
    /// The root called checkpoint `poison` poison; restored the newest one
    /// before it (`Some(seq)`), or none was left and the state is zeroed.
    FellBack {
        /// The poison checkpoint's sequence number.
        poison: u64,
        /// The checkpoint restored instead, if any.
        seq: Option<u64>,
    },
    /// `on_restart = "decide"`: nothing restored; the daemon chooses.
    Decide,
}

/// Read-only views of the sibling daemons' user areas, by name.
///
/// Only daemons forked from the root (built-in kinds) have their siblings
/// mapped; in an exec'd program ([`Context::from_env`]) there are none.
#[derive(Debug, Clone, Copy)]
pub struct Siblings<'a> {
    pub(crate) names: &'a [String],
    pub(crate) regions: Option<&'a crate::region::RegionSet>,
    pub(crate) own: usize,
}

impl<'a> Siblings<'a> {
    /// The user area of the sibling called `name`, mapped read-only (a write
    /// is a SIGSEGV, and it cannot be made writable). Its owner writes it
    /// while this daemon reads, so the bytes are atomics (load them; a
    /// plain `&[u8]` would let the compiler assume they hold still), and a
    /// crashed owner may have left anything: treat them as untrusted input.
    /// `None` for an unknown name, this daemon itself, an exec'd sibling
    /// (its region is a file of its own, handed to its program, and not
    /// mapped in built-in daemons), and in an exec'd program (siblings are
    /// not mapped there).
    pub fn get(&self, name: &str) -> Option<&'a [std::sync::atomic::AtomicU8]> {
        let regions = self.regions?;
        let i = self.names.iter().position(|n| n == name)?;
        (i != self.own && !regions.is_program(i)).then(|| regions.user_shared(i))
    }

    /// Names of every daemon of the tree, this one included (empty in an
    /// exec'd program).
    pub fn names(&self) -> impl Iterator<Item = &'a str> {
        // An empty name: a daemon a reload removed.
        self.names
            .iter()
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }
}

/// What the root decided for one start of a daemon, carried in one value
/// from the config and the root's records to the daemon's [`Context`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start<'a> {
    /// Restarts before this start.
    pub(crate) restarts: u32,
    /// Recent deaths, oldest first.
    pub(crate) deaths: &'a [Death],
    /// The configured restart mode.
    pub(crate) on_restart: OnRestart,
    /// A poison verdict: resume from a checkpoint older than this.
    pub(crate) resume_before: Option<u64>,
    /// The configured `watchdog` deadline, if any.
    pub(crate) watchdog: Option<Duration>,
}

/// What a running daemon is given: its identity, its region, its siblings'
/// regions, and its history.
///
/// Built in the child after the fork without allocating (a built-in kind),
/// or by [`Context::from_env`] in an exec'd program.
#[derive(Debug)]
pub struct Context<'a> {
    pub(crate) name: &'a str,
    pub(crate) header: &'a Header,
    pub(crate) state: &'a mut [u8],
    pub(crate) siblings: Siblings<'a>,
    pub(crate) start: Start<'a>,
    pub(crate) args: &'a Args,
    pub(crate) stopping: bool,
    pub(crate) stop_fd: Option<sys::SignalFd>,
    /// Attached by [`Context::from_env`]: `$NOTIFY_SOCKET` is the root's.
    pub(crate) exec: bool,
    pub(crate) mail: Option<crate::mailbox::Mailbox>,
    /// The listening sockets the root holds for this daemon.
    pub(crate) listeners: crate::listen::Held<'a>,
}

/// A built-in daemon's own start-up, in the process forked for it once
/// the prologue ([`crate::prologue::after_fork`]) ran, its region is
/// mapped writable and its descriptors are arranged: takes the region
/// ([`take_region`]), builds the [`Context`], runs `entry` and exits with
/// its return value.
// Each argument is one fact the forked child was handed; bundling them
// would only move the list into a struct built for one call.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_builtin(
    entry: Entry,
    name: &str,
    region: &'static mut [u8],
    siblings: Siblings<'_>,
    args: &Args,
    start: Start<'_>,
    mail: Option<crate::mailbox::Mailbox>,
    listeners: crate::listen::Held<'_>,
) -> ! {
    let (header, state) = take_region(name, region);
    let mut ctx = Context {
        name,
        header,
        state,
        siblings,
        start,
        args,
        stopping: false,
        stop_fd: None,
        exec: false,
        mail,
        listeners,
    };
    let code = crate::prologue::run_or_abort(|| entry(&mut ctx));
    // Exiting is not the steady state: flushing stdout may allocate.
    crate::alloc::set_policy(crate::alloc::Policy::Count);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    sys::exit_now(code)
}

/// Makes this process the owner of `region` (mapped writable for the rest
/// of its life, at least [`SYSTEM_SIZE`] bytes): claims its header,
/// installs its flight log as this process's log, and names the process
/// for echoed log lines and allocation reports. Returns the header and the
/// user area. Fork-safe.
fn take_region(name: &str, region: &'static mut [u8]) -> (&'static Header, &'static mut [u8]) {
    // The system area (header, flight log) and the state are disjoint
    // halves: pointers into the first never alias the second.
    let (system, state) = region.split_at_mut(SYSTEM_SIZE);
    let base = std::ptr::NonNull::from(system).cast::<u8>();
    // SAFETY: `system` is the start of the region, mapped writable for the
    // rest of this process's life (the caller's contract), and nothing else
    // in this process refers to it.
    let header = unsafe { crate::region::claim(base) };
    // SAFETY: the log area lies inside the system area, mapped writable for
    // the rest of this process's life; this process starts no thread or
    // transaction before this point.
    let log = unsafe { crate::log::FlightLog::init(base.as_ptr().add(LOG_OFFSET), LOG_SIZE) };
    if let Some(log) = log {
        crate::log::install(log);
    }
    crate::alloc::set_name(name);
    crate::subscriber::set_daemon_name(name);
    (header, state)
}

/// Why [`Context::from_env`] could not attach. Each names what is wrong
/// and where; none is a crash.
#[derive(Debug)]
#[non_exhaustive]
pub enum AttachError {
    /// `FORKROOT_NAME` is not set: the program was not started by
    /// forkroot (`exec = [...]` in a config).
    NotStarted,
    /// A variable forkroot sets is missing or holds something it never
    /// writes.
    BadVariable {
        /// The variable.
        name: &'static str,
        /// What it holds (cut short if long).
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The region descriptor is not a region the root made (closed, another
    /// file, or not writable).
    NotARegion {
        /// The descriptor (`FORKROOT_REGION_FD`: 3, or 3 + n after n listening sockets).
        fd: std::os::fd::RawFd,
        /// What it is instead.
        problem: String,
    },
    /// The region is too small to hold the library's system area and any
    /// state.
    TooSmall {
        /// The descriptor.
        fd: std::os::fd::RawFd,
        /// Its size in bytes.
        len: u64,
        /// The least a region has.
        need: u64,
    },
    /// The region's header was written by another layout of the library
    /// (the region outlived a program built against another version).
    LayoutChanged {
        /// The layout found in the header.
        found: u32,
        /// The layout this library writes.
        expected: u32,
    },
    /// This process already attached: one `Context` per process owns the
    /// region.
    AlreadyAttached,
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::NotStarted => f.write_str(
                "not started by forkroot: FORKROOT_NAME is not set \
                 (run this program from a forkroot config with exec = [...])",
            ),
            AttachError::BadVariable {
                name,
                value,
                problem,
            } => write!(f, "{name}={value:?} {problem}"),
            AttachError::NotARegion { fd, problem } => {
                write!(f, "fd {fd} is not a forkroot region: {problem}")
            }
            AttachError::TooSmall { fd, len, need } => write!(
                f,
                "fd {fd}: the region is {len} bytes, a region has at least {need}"
            ),
            AttachError::LayoutChanged { found, expected } => write!(
                f,
                "the region's header has layout {found}, this library writes layout {expected}"
            ),
            AttachError::AlreadyAttached => {
                f.write_str("this process already attached to its region (Context::from_env)")
            }
        }
    }
}

impl std::error::Error for AttachError {}

/// Whether this process attached with [`Context::from_env`].
static ATTACHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Context<'static> {
    /// Attaches a program started by forkroot with `exec = [...]` to what
    /// the root gave it: its region at fd 3 (`FORKROOT_REGION_FD`) and its
    /// start facts (`FORKROOT_NAME`, `FORKROOT_RESTARTS`,
    /// `FORKROOT_ON_RESTART`, `FORKROOT_HISTORY`, and `WATCHDOG_USEC` with
    /// a `watchdog`). Call it once, first
    /// thing in `main`, before starting threads.
    ///
    /// The program then has what a built-in daemon has: typed state and
    /// checkpoints ([`Context::checkpoints`], with `fresh`, `resume`,
    /// `decide` and poison fall-back the same), transactions over
    /// [`Context::split_state`], its restart count and deaths,
    /// [`Context::heartbeat`] for the root's `watchdog`, stop requests
    /// through [`Context::stopping`]/[`Context::sleep`] (SIGTERM is blocked
    /// in the calling thread for that), and its flight log: `tracing`
    /// events go into the region's crash-surviving log (shown in the root's
    /// crash reports and `ctl logs`) and to stderr. [`Context::steady`]
    /// forbids allocation only in a program that installs
    /// `forkroot::alloc::Guarded` as its global allocator.
    ///
    /// Not available: siblings' regions are not mapped into exec'd
    /// programs ([`Context::siblings`] is empty), and there are no
    /// `[daemon.args]` (a program takes its own arguments).
    pub fn from_env() -> Result<Context<'static>, AttachError> {
        use std::sync::atomic::Ordering::AcqRel;
        if ATTACHED.swap(true, AcqRel) {
            return Err(AttachError::AlreadyAttached);
        }
        let attached = crate::handoff::ExecEnv::read(|k| std::env::var(k).ok())
            .and_then(|env| {
                let listen = crate::listen::from_env(|k| std::env::var(k).ok()).map_err(
                    |(name, value)| AttachError::BadVariable {
                        name,
                        value,
                        problem: "does not describe the listening sockets forkroot passes".into(),
                    },
                )?;
                Ok((env, listen))
            })
            .and_then(|(env, listen)| Context::attach(env, listen));
        if attached.is_err() {
            ATTACHED.store(false, std::sync::atomic::Ordering::Release);
        }
        attached
    }

    /// [`Context::from_env`] once the environment is read.
    fn attach(
        env: crate::handoff::ExecEnv,
        listen: Vec<String>,
    ) -> Result<Context<'static>, AttachError> {
        let region = map_exec_region(env.fd, env.region_size)?;
        let mail = crate::mailbox::Mailbox::from_env(|k| std::env::var(k).ok(), &env.name)?;
        sys::default_crash_signals();
        let _ = sys::SigSet::of(&[Signal::TERM]).block();
        let name: &'static str = env.name.leak();
        let (header, state) = take_region(name, region);
        crate::subscriber::init();
        crate::alloc::reset_stats();
        crate::alloc::set_policy(crate::alloc::Policy::Count);
        let history = env.history;
        static NO_ARGS: std::sync::OnceLock<Args> = std::sync::OnceLock::new();
        Ok(Context {
            name,
            header,
            state,
            siblings: Siblings {
                names: &[],
                regions: None,
                own: 0,
            },
            start: Start {
                restarts: history.restarts,
                deaths: history.deaths().to_vec().leak(),
                on_restart: env.on_restart,
                resume_before: history.resume_before,
                watchdog: env.watchdog,
            },
            args: NO_ARGS.get_or_init(Args::none),
            stopping: false,
            stop_fd: None,
            exec: true,
            mail,
            listeners: crate::listen::Held {
                first: crate::listen::EXEC_FIRST_FD,
                addresses: listen.leak(),
            },
        })
    }

    /// Tells the root this daemon is ready: `READY=1` on `$NOTIFY_SOCKET`,
    /// what a daemon with `readiness = "notify"` must send before its
    /// `start_timeout`. Only an exec'd program ([`Context::from_env`])
    /// sends it; a built-in daemon is ready when its setup ends, and this
    /// returns `Ok(false)` there (its `NOTIFY_SOCKET`, if any, is the
    /// root's own manager's). Allowed after [`Context::steady`]: the few
    /// allocations of sending are permitted.
    pub fn ready(&self) -> std::io::Result<bool> {
        if !self.exec {
            return Ok(false);
        }
        crate::alloc::allow(|| crate::notify::notify("READY=1"))
    }
}

/// Maps an exec'd program's region (the root's sealed memfd at `fd`)
/// read-write for the rest of the process, after checking it is one.
fn map_exec_region(
    fd: std::os::fd::RawFd,
    size_said: u64,
) -> Result<&'static mut [u8], AttachError> {
    use crate::region::{LAYOUT, MAGIC};
    let not = |problem: String| AttachError::NotARegion { fd, problem };
    let link = format!("/proc/self/fd/{fd}");
    let target = std::fs::read_link(&link).map_err(|e| not(format!("{link}: {e}")))?;
    // The root names every exec'd program's memfd "forkroot:NAME".
    if !target.to_string_lossy().starts_with("/memfd:forkroot:") {
        return Err(not(format!("it is {}", target.display())));
    }
    let len = std::fs::metadata(&link)
        .map_err(|e| not(format!("{link}: {e}")))?
        .len();
    let need = (SYSTEM_SIZE + sys::page_size()) as u64;
    if len < need {
        return Err(AttachError::TooSmall { fd, len, need });
    }
    if len != size_said {
        return Err(not(format!(
            "it is {len} bytes, FORKROOT_REGION_SIZE says {size_said}"
        )));
    }
    let len = usize::try_from(len).map_err(|_| AttachError::TooSmall { fd, len, need })?;
    // SAFETY: the file is the root's sealed memfd for this daemon (checked
    // above): it cannot shrink, so no access through the mapping can fault
    // past its end. Other processes see its bytes only read-only; this
    // process's own accesses go through the one `&mut [u8]` made below.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(fd) }
        .map_err(|e| not(format!("mapping it read-write: {e}")))?;
    // SAFETY: the mapping is page-aligned and longer than a Header, and
    // Header is Plain: any bytes are a valid value. The reference ends
    // before the mapping is handed out or dropped.
    let header = unsafe { &*map.as_ptr().cast::<Header>() };
    let magic = header.magic.load(Ordering::Acquire);
    let layout = header.layout.load(Ordering::Relaxed);
    if magic == MAGIC && layout != LAYOUT {
        return Err(AttachError::LayoutChanged {
            found: layout,
            expected: LAYOUT,
        });
    }
    if magic != MAGIC && magic != 0 {
        return Err(not("its header is not a forkroot header".into()));
    }
    // Mapped for the rest of the process; from_env's ATTACHED flag makes
    // this the only reference into it.
    let map: &'static mut memmap2::MmapMut = Box::leak(Box::new(map));
    Ok(map)
}

/// Mailboxes (`lib/src/mailbox.rs`): send by name, receive, look names up.
impl Context<'_> {
    /// Sends `body` to the daemon called `to`, into its mailbox: it waits
    /// there while `to` is down, for its replacement. Never blocks: a full
    /// mailbox is [`SendError::Full`](crate::mailbox::SendError::Full), an
    /// unknown name `NoSuchName`, a body over the receiver's
    /// `mailbox_message` `TooLarge`.
    pub fn send(&self, to: &str, body: &[u8]) -> Result<(), crate::mailbox::SendError> {
        self.mail
            .as_ref()
            .ok_or(crate::mailbox::SendError::NoPost)?
            .send(to, body)
    }

    /// The next message in this daemon's mailbox, waiting at most `timeout`
    /// (`None`: until one comes) without spinning for long (the ring's
    /// futex); `Ok(None)` on timeout.
    pub fn recv(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<crate::mailbox::Message>, crate::mailbox::RecvError> {
        self.mail
            .as_mut()
            .ok_or(crate::mailbox::RecvError::NoPost)?
            .recv(timeout)
    }

    /// [`Context::recv`] into the caller's buffer, without allocating.
    pub fn recv_into(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<Option<crate::mailbox::Envelope>, crate::mailbox::RecvError> {
        self.mail
            .as_mut()
            .ok_or(crate::mailbox::RecvError::NoPost)?
            .recv_into(buf, timeout)
    }

    /// Monitors the daemon called `name`: when its process ends, for any
    /// reason, the root puts a DOWN message ([`MessageKind::Down`], with a
    /// [`Gone`]: its name, old pid, reason and restarts) into this
    /// daemon's mailbox, once, without affecting either daemon. The monitor
    /// ends when it fires or when this process ends.
    ///
    /// [`MessageKind::Down`]: crate::mailbox::MessageKind::Down
    /// [`Gone`]: crate::mailbox::Gone
    pub fn monitor(&self, name: &str) -> Result<(), crate::mailbox::SendError> {
        self.mail
            .as_ref()
            .ok_or(crate::mailbox::SendError::NoPost)?
            .monitor(name)
    }

    /// Drops a monitor set with [`Context::monitor`].
    pub fn demonitor(&self, name: &str) -> Result<(), crate::mailbox::SendError> {
        self.mail
            .as_ref()
            .ok_or(crate::mailbox::SendError::NoPost)?
            .demonitor(name)
    }

    /// The counters of this daemon's mailbox (messages skipped because
    /// their writer died mid-send, or because they failed their crc).
    pub fn mailbox_stats(&self) -> Option<crate::ring::Stats> {
        self.mail.as_ref()?.stats().ok()
    }

    /// The current incarnation of the daemon called `name`: its pid (if a
    /// process exists), state and restarts, as the root published them.
    pub fn whereis(&self, name: &str) -> Option<crate::mailbox::Whereabouts> {
        self.mail.as_ref()?.whereis(name)
    }
}

impl<'a> Context<'a> {
    /// The daemon's name in the config.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The daemon's state: the user area of its region, `memory` bytes
    /// (rounded up to a page), zeroed on the first start. It lives in the
    /// root's shared memory, so a replacement after a crash finds it as the
    /// dead process left it.
    pub fn state(&self) -> &[u8] {
        self.state
    }

    /// The state, writable.
    pub fn state_mut(&mut self) -> &mut [u8] {
        self.state
    }

    /// Views of the siblings' regions.
    pub fn siblings(&self) -> Siblings<'a> {
        self.siblings
    }

    /// How many times this daemon has been restarted (0 on its first start).
    pub fn restarts(&self) -> u32 {
        self.start.restarts
    }

    /// Recent deaths of this daemon, oldest first (empty on its first start).
    pub fn deaths(&self) -> &'a [Death] {
        self.start.deaths
    }

    /// Why the previous process of this daemon ended, if there was one.
    pub fn last_exit(&self) -> Option<ExitReason> {
        self.start.deaths.last().map(|d| d.reason)
    }

    /// The configured restart mode (`on_restart`).
    pub fn on_restart(&self) -> OnRestart {
        self.start.on_restart
    }

    /// The configured `watchdog`: the root kills this daemon when its last
    /// [`Context::heartbeat`] is older than this. `None`: no watchdog, so
    /// a daemon with nothing to do need not wake up to heartbeat.
    pub fn watchdog(&self) -> Option<Duration> {
        self.start.watchdog
    }

    /// When the root found the checkpoint this daemon last resumed from to
    /// be poison (the daemon crashed soon after resuming from it): resume
    /// from a checkpoint older than this sequence number.
    pub fn resume_before(&self) -> Option<u64> {
        self.start.resume_before
    }

    /// Lays checkpointed state of type `T` (layout `version`) over the
    /// daemon's state and applies its `on_restart` mode:
    ///
    /// - `fresh`: the state starts zeroed (the root zeroed the region).
    /// - `resume`: the newest checkpoint that verifies is restored; after a
    ///   poison verdict from the root, the newest one older than the poison.
    /// - `decide`: nothing is restored; the daemon looks at
    ///   [`Context::deaths`] and calls `restore`, `restore_before` or `reset`.
    ///
    /// A state header that is damaged or absent (a magic that is neither 0
    /// nor the state's, or a crc that does not match its fields) is logged
    /// and the state starts fresh ([`Resumed::Fresh`]; [`Resumed::FellBack`]
    /// with no checkpoint after a poison verdict; [`Resumed::Decide`] with
    /// no checkpoint for `decide`): the checkpoints behind it are not
    /// trusted, and an error here would fail every restart alike. A header
    /// of another layout is still an error
    /// ([`StateError::LayoutChanged`](crate::state::StateError::LayoutChanged)).
    ///
    /// The state is handed over to the returned [`Checkpoints`](crate::checkpoint::Checkpoints):
    /// [`Context::state`] is empty afterwards.
    pub fn checkpoints<T: crate::region::Plain>(
        &mut self,
        version: u32,
    ) -> Result<(crate::checkpoint::Checkpoints<'a, T>, Resumed), crate::state::StateError> {
        use crate::checkpoint::{CheckpointError, Checkpoints};
        use crate::state::StateError;
        let area = std::mem::take(&mut self.state);
        // A header damaged from outside (its bytes overwritten: the root
        // never writes there, and a crash mid-stamp leaves it empty) or
        // never written (another kind's area) vouches for no checkpoint
        // behind it: refusing would fail every restart alike. Emptied, the
        // area is attached as a fresh one (zeroed whole).
        if let Err(e @ (StateError::BadMagic { .. } | StateError::CorruptHeader { .. })) =
            crate::state::read_layout(area)
        {
            tracing::error!(error = %e, "state header damaged (or never written): the checkpoints behind it are not trusted; starting fresh");
            area[..8].fill(0);
        }
        let mut cp = Checkpoints::<T>::attach(area, version)?;
        let restored = match (self.start.on_restart, self.start.resume_before) {
            (OnRestart::Decide, _) => return Ok((cp, Resumed::Decide)),
            (OnRestart::Fresh, _) => {
                cp.reset();
                return Ok((cp, Resumed::Fresh));
            }
            (OnRestart::Resume, None) => cp.restore(),
            (OnRestart::Resume, Some(poison)) => cp.restore_before(poison),
        };
        let resumed = match restored {
            Ok(r) => {
                self.header.resumed_seq.store(r.seq, Ordering::Relaxed);
                match self.start.resume_before {
                    None => Resumed::Resumed { seq: r.seq },
                    Some(poison) => Resumed::FellBack {
                        poison,
                        seq: Some(r.seq),
                    },
                }
            }
            Err(CheckpointError::NoCheckpoint) => match self.start.resume_before {
                None => Resumed::Fresh,
                Some(poison) => Resumed::FellBack { poison, seq: None },
            },
            Err(e) => unreachable!("restore only fails with NoCheckpoint, not {e:?}"),
        };
        match resumed {
            Resumed::FellBack { poison, seq } => {
                tracing::warn!(poison, ?seq, "checkpoint {poison} is poison; fell back")
            }
            Resumed::Resumed { seq } => tracing::info!(seq, "resumed from checkpoint"),
            _ => {}
        }
        Ok((cp, resumed))
    }

    /// The daemon's settings (`[daemon.args]`), checked against its kind's
    /// declaration before the tree started.
    pub fn args(&self) -> &'a Args {
        self.args
    }

    /// Setting `name`, typed: `ctx.arg::<u64>("rate")`, or
    /// `ctx.arg::<Option<&str>>("out")` for a setting without a default.
    /// See [`Args::get`].
    ///
    /// # Panics
    /// When the kind does not declare `name`, or `T` does not fit its type:
    /// a mistake in the daemon's code (the config was checked already).
    pub fn arg<T: FromArg<'a>>(&self, name: &str) -> T {
        self.args.get(name)
    }

    /// Records that the daemon is alive (the watchdog reads this), and
    /// publishes its allocation counters for `ctl status`.
    pub fn heartbeat(&self) {
        let stats = crate::alloc::stats();
        let h = self.header;
        h.alloc_policy
            .store(crate::alloc::policy() as u32, Ordering::Relaxed);
        h.allocs.store(stats.allocs, Ordering::Relaxed);
        h.alloc_bytes.store(stats.bytes, Ordering::Relaxed);
        h.heartbeat_ns.store(sys::monotonic_ns(), Ordering::Release);
    }

    /// Declares the end of start-up: from now on this process may not
    /// allocate (`alloc::Policy::Forbid`, when the binary installs
    /// `forkroot::alloc::Guarded`). An allocation then aborts the daemon with
    /// a message naming it and the size, which the root's crash report shows.
    /// Counters restart at zero, so `ctl status` shows steady-state
    /// allocations only.
    pub fn steady(&self) {
        crate::alloc::reset_stats();
        crate::alloc::set_policy(crate::alloc::Policy::Forbid);
        self.heartbeat();
    }

    /// Whether the root asked this daemon to stop (SIGTERM). A daemon
    /// should return from its entry soon after; the root SIGKILLs it after
    /// `stop_timeout`.
    pub fn stopping(&mut self) -> bool {
        if !self.stopping {
            self.stopping = match &self.stop_fd {
                Some(fd) => matches!(fd.read(), Ok(Some(_))),
                None => sys::take_pending(Signal::TERM),
            };
        }
        self.stopping
    }

    /// A descriptor that becomes readable when the root asks this daemon to
    /// stop (a signalfd for SIGTERM), for daemons with a poll loop of their
    /// own. Once it is readable, [`Context::stopping`] returns true.
    pub fn stop_fd(&mut self) -> std::io::Result<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        if self.stop_fd.is_none() {
            self.stop_fd = Some(sys::SigSet::of(&[Signal::TERM]).signalfd()?);
        }
        Ok(self.stop_fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1))
    }

    /// The listening sockets the root holds for this daemon (`listen`), in
    /// the order of the config: bound once by the root before the first
    /// fork and the same in every incarnation, so connections that arrive
    /// while the daemon is down wait in the kernel's backlog for the next
    /// one. They are blocking as the root made them; a daemon with a poll
    /// loop makes them non-blocking (a flag of the socket, shared with
    /// every copy). An exec'd program gets them through systemd's
    /// `LISTEN_FDS` (see [`crate::listen`]). Empty without `listen`.
    pub fn listeners(&self) -> impl Iterator<Item = crate::listen::Listener<'a>> + 'a {
        self.listeners.iter()
    }

    /// Carves the first `bytes` (rounded up to 64) off the state for another
    /// use (transaction slots, a second structure) and returns them; the
    /// rest stays [`Context::state`]. `None` if the state is too small.
    pub fn split_state(&mut self, bytes: usize) -> Option<&'a mut [u8]> {
        let n = bytes.div_ceil(64) * 64;
        if n > self.state.len() {
            return None;
        }
        let (head, tail) = std::mem::take(&mut self.state).split_at_mut(n);
        self.state = tail;
        Some(head)
    }

    /// Sleeps for `d` or until asked to stop, heartbeating first. Returns
    /// `false` when the daemon should stop.
    pub fn sleep(&mut self, d: Duration) -> bool {
        self.heartbeat();
        if self.stopping {
            return false;
        }
        if sys::wait_signal(Signal::TERM, d) {
            self.stopping = true;
        }
        !self.stopping
    }
}
