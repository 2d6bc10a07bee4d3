//! The messages between the root and a process it starts, as `#[repr(C)]`
//! types with a tag, a version and a crc, each written and read here only.
//!
//! - [`History`]: what the root knows of a daemon's past (restart count,
//!   recent deaths, a poison verdict). A standby reads it from its gate
//!   pipe when it takes over; an exec'd program reads it, hex-encoded, from
//!   `FORKROOT_HISTORY` ([`crate::Context::from_env`]).
//! - The setup report ([`report_setup_failure`], [`read_setup`]): a
//!   start-up step that failed in a forked child, sent to the root over
//!   the close-on-exec setup pipe before the child exits.
//! - A spawn request ([`Spawn`]) and its answer ([`encode_spawned`],
//!   [`decode_spawned`]): between the root and its zygote (DESIGN.md §3).
//! - The environment of an exec'd program ([`exec_env`], [`ExecEnv`]):
//!   `FORKROOT_NAME`, `FORKROOT_REGION_FD`, `FORKROOT_REGION_SIZE`,
//!   `FORKROOT_RESTARTS`, `FORKROOT_ON_RESTART` and `FORKROOT_HISTORY`.
//!
//! A message that is the wrong size, has another tag or version, or fails
//! its crc is an error ([`MessageError`]), never read as something else.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::config::OnRestart;
use crate::daemon::{AttachError, Death, ExitReason, SetupStage, Start};
use crate::region::Plain;
use crate::sys::{self, Signal};

/// Deaths the root keeps per daemon, and a [`History`] carries.
pub(crate) const DEATHS_KEPT: usize = 16;

/// Version of both messages' layouts.
const VERSION: u32 = 1;

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageError {
    /// It had this many bytes, not the message's size.
    Size(usize),
    /// Its tag is not this message's (another message, or garbage).
    Tag,
    /// It was written by another layout version.
    Version(u32),
    /// Its crc does not match its bytes.
    Crc,
    /// A field holds a value no writer produces.
    Field(&'static str),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Size(n) => write!(f, "{n} bytes is not a whole message"),
            MessageError::Tag => f.write_str("not this kind of message"),
            MessageError::Version(v) => {
                write!(f, "layout version {v}, this build reads {VERSION}")
            }
            MessageError::Crc => f.write_str("its crc does not match"),
            MessageError::Field(name) => write!(f, "field {name} is out of range"),
        }
    }
}

/// A message type: `Plain`, without padding (every byte is a field, so
/// its bytes may be read), with its tag and crc at known places.
trait Message: Plain + Copy {
    const TAG: u32;
    const SIZE: usize = size_of::<Self>();
    fn crc_mut(&mut self) -> &mut u32;
    fn header(&self) -> (u32, u32);

    fn bytes(&self) -> &[u8] {
        // SAFETY: Self is Plain and has no padding (checked by the const
        // assertions next to each type), so all SIZE bytes are initialised
        // and any u8 is valid.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), Self::SIZE) }
    }

    /// The crc32 of the message with its crc field zeroed.
    fn checksum(mut self) -> u32 {
        *self.crc_mut() = 0;
        crc32fast::hash(self.bytes())
    }

    /// Seals the message: sets its crc. Fork-safe (no allocation).
    fn sealed(mut self) -> Self {
        let crc = self.checksum();
        *self.crc_mut() = crc;
        self
    }

    /// Reads and verifies a message from exactly SIZE bytes.
    fn open(b: &[u8]) -> Result<Self, MessageError> {
        if b.len() != Self::SIZE {
            return Err(MessageError::Size(b.len()));
        }
        // SAFETY: b holds SIZE bytes; Self is Plain, so any bytes are a
        // valid value; read_unaligned needs no alignment of `b`.
        let mut m = unsafe { b.as_ptr().cast::<Self>().read_unaligned() };
        let (tag, version) = m.header();
        if tag != Self::TAG {
            return Err(MessageError::Tag);
        }
        if version != VERSION {
            return Err(MessageError::Version(version));
        }
        let crc = *m.crc_mut();
        if m.checksum() != crc {
            return Err(MessageError::Crc);
        }
        Ok(m)
    }
}

/// One death on the wire (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DeathRecord {
    /// 0 exited (a = code), 1 signaled (a = signal, b = core), 2 setup
    /// failed (a = stage, b = errno).
    kind: u32,
    a: i32,
    b: i32,
    _pad: u32,
    uptime_ns: u64,
    at_realtime_ns: u64,
}

/// [`History`] on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct HistoryMsg {
    tag: u32,
    version: u32,
    crc: u32,
    restarts: u32,
    /// Deaths in `deaths[..n]`, oldest first.
    n: u32,
    _pad: u32,
    /// 0: none.
    resume_before: u64,
    deaths: [DeathRecord; DEATHS_KEPT],
}

// SAFETY: repr(C), integers only; every bit pattern is valid.
unsafe impl Plain for DeathRecord {}
// SAFETY: repr(C), integers and an array of Plain records only.
unsafe impl Plain for HistoryMsg {}

// No padding: the fields add up to the size.
const _: () = assert!(size_of::<DeathRecord>() == 4 * 4 + 2 * 8);
const _: () = assert!(size_of::<HistoryMsg>() == 6 * 4 + 8 + DEATHS_KEPT * 32);
// One write on a pipe, so atomic.
const _: () = assert!(size_of::<HistoryMsg>() <= libc::PIPE_BUF);

impl Message for HistoryMsg {
    const TAG: u32 = u32::from_le_bytes(*b"FRhi");
    fn crc_mut(&mut self) -> &mut u32 {
        &mut self.crc
    }
    fn header(&self) -> (u32, u32) {
        (self.tag, self.version)
    }
}

/// What the root knows of a daemon's past when it starts a process for
/// it: the facts that change between starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct History {
    pub(crate) restarts: u32,
    pub(crate) resume_before: Option<u64>,
    deaths: [Death; DEATHS_KEPT],
    n: usize,
}

/// An empty history slot.
const NO_DEATH: Death = Death {
    reason: ExitReason::Exited(0),
    uptime: Duration::ZERO,
    at_realtime_ns: 0,
};

impl History {
    /// Bytes of the message.
    pub(crate) const SIZE: usize = HistoryMsg::SIZE;

    /// The history of a daemon with `restarts`, `deaths` (the newest
    /// [`DEATHS_KEPT`] are kept) and `resume_before`.
    pub(crate) fn new(restarts: u32, deaths: &[Death], resume_before: Option<u64>) -> History {
        let n = deaths.len().min(DEATHS_KEPT);
        let mut h = History {
            restarts,
            resume_before,
            deaths: [NO_DEATH; DEATHS_KEPT],
            n,
        };
        h.deaths[..n].copy_from_slice(&deaths[deaths.len() - n..]);
        h
    }

    /// The deaths, oldest first.
    pub(crate) fn deaths(&self) -> &[Death] {
        &self.deaths[..self.n]
    }

    /// The sealed message. Fork-safe.
    pub(crate) fn encode(&self) -> [u8; Self::SIZE] {
        let zero = DeathRecord {
            kind: 0,
            a: 0,
            b: 0,
            _pad: 0,
            uptime_ns: 0,
            at_realtime_ns: 0,
        };
        let mut m = HistoryMsg {
            tag: HistoryMsg::TAG,
            version: VERSION,
            crc: 0,
            restarts: self.restarts,
            n: self.n as u32,
            _pad: 0,
            resume_before: self.resume_before.unwrap_or(0),
            deaths: [zero; DEATHS_KEPT],
        };
        for (r, d) in m.deaths.iter_mut().zip(self.deaths()) {
            let (kind, a, b) = match d.reason {
                ExitReason::Exited(code) => (0, code, 0),
                ExitReason::Signaled { signal, core } => (1, signal.as_raw(), i32::from(core)),
                ExitReason::SetupFailed { stage, errno } => (2, stage as i32, errno),
                ExitReason::Watchdog => (3, 0, 0),
                ExitReason::StartTimeout => (4, 0, 0),
            };
            *r = DeathRecord {
                kind,
                a,
                b,
                _pad: 0,
                uptime_ns: u64::try_from(d.uptime.as_nanos()).unwrap_or(u64::MAX),
                at_realtime_ns: d.at_realtime_ns,
            };
        }
        let mut out = [0u8; Self::SIZE];
        out.copy_from_slice(m.sealed().bytes());
        out
    }

    /// Reads a sealed message. Fork-safe.
    pub(crate) fn decode(b: &[u8]) -> Result<History, MessageError> {
        let m = HistoryMsg::open(b)?;
        let n = m.n as usize;
        if n > DEATHS_KEPT {
            return Err(MessageError::Field("n"));
        }
        let mut h = History {
            restarts: m.restarts,
            resume_before: Some(m.resume_before).filter(|&s| s != 0),
            deaths: [NO_DEATH; DEATHS_KEPT],
            n,
        };
        for (d, r) in h.deaths.iter_mut().zip(&m.deaths[..n]) {
            let reason = match r.kind {
                0 => ExitReason::Exited(r.a),
                1 => ExitReason::Signaled {
                    signal: Signal::from_raw(r.a).ok_or(MessageError::Field("deaths.signal"))?,
                    core: r.b != 0,
                },
                2 => ExitReason::SetupFailed {
                    stage: SetupStage::from_u32(r.a as u32)
                        .ok_or(MessageError::Field("deaths.stage"))?,
                    errno: r.b,
                },
                3 => ExitReason::Watchdog,
                4 => ExitReason::StartTimeout,
                _ => return Err(MessageError::Field("deaths.kind")),
            };
            *d = Death {
                reason,
                uptime: Duration::from_nanos(r.uptime_ns),
                at_realtime_ns: r.at_realtime_ns,
            };
        }
        Ok(h)
    }

    /// The message as lowercase hex, for an environment variable.
    /// Two digits a byte from a table: built on every start of an exec'd
    /// program, on its restart path, where `write!` per byte cost tens of
    /// microseconds.
    fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(2 * Self::SIZE);
        for b in self.encode() {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        s
    }

    /// Reads [`History::hex`]'s output.
    fn from_hex(s: &str) -> Result<History, MessageError> {
        let s = s.as_bytes();
        if s.len() != 2 * Self::SIZE {
            return Err(MessageError::Size(s.len() / 2));
        }
        let mut b = [0u8; Self::SIZE];
        for (out, pair) in b.iter_mut().zip(s.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(MessageError::Field("hex"));
            *out = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        History::decode(&b)
    }

    /// Sends the message to a standby through its gate, in one write.
    pub(crate) fn send(&self, gate: BorrowedFd<'_>) -> io::Result<()> {
        sys::write_all(gate, &self.encode())
    }

    /// A standby's wait for its takeover: `None` when the gate closed (the
    /// root no longer needs it) or the message does not verify. Fork-safe.
    pub(crate) fn wait(gate: BorrowedFd<'_>) -> Option<History> {
        let mut b = [0u8; Self::SIZE];
        match sys::read(gate, &mut b) {
            Ok(n) => History::decode(&b[..n]).ok(),
            Err(_) => None,
        }
    }
}

/// A setup report on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SetupMsg {
    tag: u32,
    version: u32,
    crc: u32,
    stage: u32,
    errno: i32,
    _pad: u32,
}

// SAFETY: repr(C), integers only; every bit pattern is valid.
unsafe impl Plain for SetupMsg {}
const _: () = assert!(size_of::<SetupMsg>() == 6 * 4);

impl Message for SetupMsg {
    const TAG: u32 = u32::from_le_bytes(*b"FRsu");
    fn crc_mut(&mut self) -> &mut u32 {
        &mut self.crc
    }
    fn header(&self) -> (u32, u32) {
        (self.tag, self.version)
    }
}

/// Reports a failed start-up step to the root over the setup pipe. Fork-safe.
pub(crate) fn report_setup_failure(pipe: BorrowedFd<'_>, stage: SetupStage, errno: i32) {
    let m = SetupMsg {
        tag: SetupMsg::TAG,
        version: VERSION,
        crc: 0,
        stage: stage as u32,
        errno,
        _pad: 0,
    }
    .sealed();
    let _ = sys::write_all(pipe, m.bytes());
}

/// What a setup pipe says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setup {
    /// Nothing to read yet.
    Pending,
    /// End of file: the child's code runs (or it exec'd).
    Ready,
    /// The child reported a failed step (or a report that does not verify:
    /// [`SetupStage::Report`]).
    Failed(ExitReason),
}

/// Reads a setup pipe without blocking.
pub(crate) fn read_setup(fd: &OwnedFd) -> Setup {
    let mut buf = [0u8; SetupMsg::SIZE + 1];
    match sys::read(fd.as_fd(), &mut buf) {
        Ok(0) => Setup::Ready,
        Ok(n) => Setup::Failed(parse_setup(&buf[..n])),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Setup::Pending,
        // A failed read: the child is gone or broken; its exit will tell.
        Err(_) => Setup::Ready,
    }
}

/// The failure a setup report names, or [`SetupStage::Report`] for bytes
/// that are not a report.
fn parse_setup(b: &[u8]) -> ExitReason {
    let garbled = ExitReason::SetupFailed {
        stage: SetupStage::Report,
        errno: libc::EBADMSG,
    };
    match SetupMsg::open(b) {
        Ok(m) => match SetupStage::from_u32(m.stage) {
            Some(stage) => ExitReason::SetupFailed {
                stage,
                errno: m.errno,
            },
            None => garbled,
        },
        Err(_) => garbled,
    }
}

/// The root's request to its zygote, on the wire; a [`HistoryMsg`]
/// follows it in the same message.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SpawnMsg {
    tag: u32,
    version: u32,
    crc: u32,
    index: u32,
    standby: u32,
    writer: u32,
    /// Which of the optional descriptors come (`Spawn::present`'s bits).
    present: u32,
    listeners: u32,
    monitors_at: u64,
}

// SAFETY: repr(C), integers only; every bit pattern is valid.
unsafe impl Plain for SpawnMsg {}
const _: () = assert!(size_of::<SpawnMsg>() == 8 * 4 + 8);

impl Message for SpawnMsg {
    const TAG: u32 = u32::from_le_bytes(*b"FRsp");
    fn crc_mut(&mut self) -> &mut u32 {
        &mut self.crc
    }
    fn header(&self) -> (u32, u32) {
        (self.tag, self.version)
    }
}

/// What the root asks its zygote to fork: daemon `index` (its standby if
/// `standby`), as mailbox writer `writer`, with `history`. The descriptors
/// travel beside the message (`SCM_RIGHTS`), in the order the root's
/// spawn code lists them; `present` and `listeners` say which came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spawn {
    pub(crate) index: u32,
    pub(crate) standby: bool,
    pub(crate) writer: u32,
    pub(crate) present: u32,
    pub(crate) listeners: u32,
    pub(crate) monitors_at: u64,
    pub(crate) history: History,
}

impl Spawn {
    /// Bytes of the message.
    pub(crate) const SIZE: usize = SpawnMsg::SIZE + History::SIZE;

    /// The sealed message.
    pub(crate) fn encode(&self) -> [u8; Self::SIZE] {
        let m = SpawnMsg {
            tag: SpawnMsg::TAG,
            version: VERSION,
            crc: 0,
            index: self.index,
            standby: u32::from(self.standby),
            writer: self.writer,
            present: self.present,
            listeners: self.listeners,
            monitors_at: self.monitors_at,
        }
        .sealed();
        let mut out = [0u8; Self::SIZE];
        out[..SpawnMsg::SIZE].copy_from_slice(m.bytes());
        out[SpawnMsg::SIZE..].copy_from_slice(&self.history.encode());
        out
    }

    /// Reads a sealed message.
    pub(crate) fn decode(b: &[u8]) -> Result<Spawn, MessageError> {
        if b.len() != Self::SIZE {
            return Err(MessageError::Size(b.len()));
        }
        let m = SpawnMsg::open(&b[..SpawnMsg::SIZE])?;
        let standby = match m.standby {
            0 => false,
            1 => true,
            _ => return Err(MessageError::Field("standby")),
        };
        Ok(Spawn {
            index: m.index,
            standby,
            writer: m.writer,
            present: m.present,
            listeners: m.listeners,
            monitors_at: m.monitors_at,
            history: History::decode(&b[SpawnMsg::SIZE..])?,
        })
    }
}

/// The zygote's answer, on the wire: the new process's pid, or why there
/// is none.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SpawnedMsg {
    tag: u32,
    version: u32,
    crc: u32,
    pid: i32,
    errno: i32,
    _pad: u32,
}

// SAFETY: repr(C), integers only; every bit pattern is valid.
unsafe impl Plain for SpawnedMsg {}
const _: () = assert!(size_of::<SpawnedMsg>() == 6 * 4);

impl Message for SpawnedMsg {
    const TAG: u32 = u32::from_le_bytes(*b"FRsd");
    fn crc_mut(&mut self) -> &mut u32 {
        &mut self.crc
    }
    fn header(&self) -> (u32, u32) {
        (self.tag, self.version)
    }
}

/// Bytes of the zygote's answer.
pub(crate) const SPAWNED_SIZE: usize = SpawnedMsg::SIZE;

/// The zygote's answer: `Ok(pid)`, or the error its fork or the request
/// met.
pub(crate) fn encode_spawned(r: &io::Result<sys::Pid>) -> [u8; SPAWNED_SIZE] {
    let (pid, errno) = match r {
        Ok(pid) => (pid.as_raw(), 0),
        Err(e) => (0, e.raw_os_error().unwrap_or(libc::EIO)),
    };
    let m = SpawnedMsg {
        tag: SpawnedMsg::TAG,
        version: VERSION,
        crc: 0,
        pid,
        errno,
        _pad: 0,
    }
    .sealed();
    let mut out = [0u8; SPAWNED_SIZE];
    out.copy_from_slice(m.bytes());
    out
}

/// Reads the zygote's answer: the outer error if the message does not
/// verify, the inner one if the zygote reported one.
pub(crate) fn decode_spawned(b: &[u8]) -> Result<io::Result<sys::Pid>, MessageError> {
    let m = SpawnedMsg::open(b)?;
    if m.errno != 0 {
        return Ok(Err(io::Error::from_raw_os_error(m.errno)));
    }
    Ok(Ok(
        sys::Pid::from_raw(m.pid).ok_or(MessageError::Field("pid"))?
    ))
}

/// The variables of an exec'd program's environment that forkroot sets.
const NAME: &str = "FORKROOT_NAME";
const REGION_FD: &str = "FORKROOT_REGION_FD";
const REGION_SIZE: &str = "FORKROOT_REGION_SIZE";
const RESTARTS: &str = "FORKROOT_RESTARTS";
const ON_RESTART: &str = "FORKROOT_ON_RESTART";
const HISTORY: &str = "FORKROOT_HISTORY";
/// Set only for a daemon with a `watchdog` (systemd's name: a program
/// that speaks the notify protocol reads it too).
const WATCHDOG_USEC: &str = "WATCHDOG_USEC";

/// Every variable the root writes into an exec'd program's environment
/// (here, `crate::listen`, `crate::mailbox` and `NOTIFY_SOCKET`): `check`
/// refuses them in a daemon's `env`, where a second value would be read by
/// some programs and not by others.
pub(crate) const SET_BY_ROOT: &[&str] = &[
    NAME,
    REGION_FD,
    REGION_SIZE,
    RESTARTS,
    ON_RESTART,
    HISTORY,
    WATCHDOG_USEC,
    crate::listen::LISTEN_VAR,
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "LISTEN_PID",
    crate::mailbox::POST_FD_VAR,
    crate::mailbox::REGISTRY_FD_VAR,
    crate::mailbox::WRITER_VAR,
    crate::mailbox::MONITORS_FD_VAR,
    "NOTIFY_SOCKET",
];

/// The descriptor an exec'd program finds its region at when it has no
/// listening sockets (after them when it has: `crate::listen`).
pub(crate) const EXEC_REGION_FD: RawFd = 3;

fn on_restart_name(m: OnRestart) -> &'static str {
    match m {
        OnRestart::Fresh => "fresh",
        OnRestart::Resume => "resume",
        OnRestart::Decide => "decide",
    }
}

/// `NAME=value` strings the root adds to an exec'd program's environment
/// (prepared in the root, before the fork).
pub(crate) fn exec_env(
    name: &str,
    region_fd: RawFd,
    region_len: usize,
    start: &Start<'_>,
) -> Vec<String> {
    let history = History::new(start.restarts, start.deaths, start.resume_before);
    let mut vars = vec![
        format!("{NAME}={name}"),
        format!("{REGION_FD}={region_fd}"),
        format!("{REGION_SIZE}={region_len}"),
        format!("{RESTARTS}={}", start.restarts),
        format!("{ON_RESTART}={}", on_restart_name(start.on_restart)),
        format!("{HISTORY}={}", history.hex()),
    ];
    if let Some(wd) = start.watchdog {
        vars.push(format!("{WATCHDOG_USEC}={}", wd.as_micros()));
    }
    vars
}

/// What an exec'd program reads from its environment.
#[derive(Debug)]
pub(crate) struct ExecEnv {
    pub(crate) name: String,
    pub(crate) fd: RawFd,
    pub(crate) region_size: u64,
    pub(crate) on_restart: OnRestart,
    pub(crate) history: History,
    pub(crate) watchdog: Option<Duration>,
}

impl ExecEnv {
    /// Reads the variables through `get` (`std::env::var` in a program).
    /// No `FORKROOT_NAME` means the program was not started by forkroot.
    pub(crate) fn read(get: impl Fn(&str) -> Option<String>) -> Result<ExecEnv, AttachError> {
        let name = get(NAME).ok_or(AttachError::NotStarted)?;
        let var = |key: &'static str| {
            get(key).ok_or_else(|| AttachError::BadVariable {
                name: key,
                value: String::new(),
                problem: "is not set (the root sets it with FORKROOT_NAME)".into(),
            })
        };
        let bad = |key: &'static str, value: &str, problem: String| AttachError::BadVariable {
            name: key,
            value: value.to_owned(),
            problem,
        };
        let fd_text = var(REGION_FD)?;
        let fd = fd_text
            .parse::<RawFd>()
            .ok()
            .filter(|&fd| fd >= 0)
            .ok_or_else(|| bad(REGION_FD, &fd_text, "is not a descriptor number".into()))?;
        let size_text = var(REGION_SIZE)?;
        let region_size = size_text
            .parse::<u64>()
            .map_err(|e| bad(REGION_SIZE, &size_text, format!("is not a size ({e})")))?;
        let mode = var(ON_RESTART)?;
        let on_restart = [OnRestart::Fresh, OnRestart::Resume, OnRestart::Decide]
            .into_iter()
            .find(|&m| on_restart_name(m) == mode)
            .ok_or_else(|| bad(ON_RESTART, &mode, "is not fresh, resume or decide".into()))?;
        let hex = var(HISTORY)?;
        let history = History::from_hex(&hex).map_err(|e| {
            let mut shown = hex.clone();
            shown.truncate(16);
            bad(HISTORY, &shown, format!("is not a history message: {e}"))
        })?;
        let restarts = var(RESTARTS)?;
        if restarts.parse::<u32>().ok() != Some(history.restarts) {
            return Err(bad(
                RESTARTS,
                &restarts,
                format!("disagrees with {HISTORY} ({} restarts)", history.restarts),
            ));
        }
        // Optional: set only for a daemon with a `watchdog`.
        let watchdog = get(WATCHDOG_USEC)
            .map(|us| match us.parse::<u64>() {
                Ok(n) if n > 0 => Ok(Duration::from_micros(n)),
                _ => Err(bad(
                    WATCHDOG_USEC,
                    &us,
                    "is not a positive number of microseconds".into(),
                )),
            })
            .transpose()?;
        Ok(ExecEnv {
            name,
            fd,
            region_size,
            on_restart,
            history,
            watchdog,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deaths(k: usize) -> Vec<Death> {
        (0..k)
            .map(|k| Death {
                reason: match k % 3 {
                    0 => ExitReason::Exited(k as i32),
                    1 => ExitReason::Signaled {
                        signal: Signal::SEGV,
                        core: k % 2 == 0,
                    },
                    _ => ExitReason::SetupFailed {
                        stage: SetupStage::Exec,
                        errno: 2,
                    },
                },
                uptime: Duration::from_millis(k as u64),
                at_realtime_ns: 1000 + k as u64,
            })
            .collect()
    }

    #[test]
    fn a_history_round_trips_in_binary_and_hex() {
        let all = deaths(20);
        let h = History::new(7, &all, Some(42));
        assert_eq!(h.deaths().len(), DEATHS_KEPT);
        assert_eq!(h.deaths()[0], all[20 - DEATHS_KEPT], "the newest are kept");
        assert_eq!(History::decode(&h.encode()), Ok(h));
        assert_eq!(History::from_hex(&h.hex()), Ok(h));
        let spelled: String = h.encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(h.hex(), spelled, "two lowercase digits a byte, high first");
        let none = History::new(0, &[], None);
        assert_eq!(History::decode(&none.encode()), Ok(none));
    }

    #[test]
    fn a_garbled_history_is_refused_not_misread() {
        let good = History::new(3, &deaths(2), None).encode();
        let mut bad = good;
        bad[16] = 200; // n
        assert_eq!(History::decode(&bad), Err(MessageError::Crc));
        let mut v2 = good;
        v2[4] = 2;
        assert_eq!(History::decode(&v2), Err(MessageError::Version(2)));
        assert_eq!(History::decode(&good[..100]), Err(MessageError::Size(100)));
        assert_eq!(
            History::decode(&[0u8; History::SIZE]),
            Err(MessageError::Tag)
        );
        // A resealed message with an impossible count is still refused.
        let mut m = HistoryMsg::open(&good).unwrap();
        m.n = 200;
        assert_eq!(
            History::decode(m.sealed().bytes()),
            Err(MessageError::Field("n"))
        );
        assert_eq!(History::from_hex("zz"), Err(MessageError::Size(1)));
        let mut hex = History::new(0, &[], None).hex();
        hex.replace_range(0..2, "g0");
        assert_eq!(History::from_hex(&hex), Err(MessageError::Field("hex")));
    }

    #[test]
    fn a_spawn_request_and_its_answer_round_trip_and_are_checked() {
        let req = Spawn {
            index: 4,
            standby: true,
            writer: 0x0003_0004,
            present: 0b1010,
            listeners: 2,
            monitors_at: 8192,
            history: History::new(9, &deaths(3), Some(5)),
        };
        let b = req.encode();
        assert_eq!(Spawn::decode(&b), Ok(req));
        assert_eq!(Spawn::decode(&b[..10]), Err(MessageError::Size(10)));
        let mut bad = b;
        bad[12] ^= 1; // index
        assert_eq!(Spawn::decode(&bad), Err(MessageError::Crc));
        let mut bad = b;
        bad[SpawnMsg::SIZE + 12] ^= 1; // the history's restarts
        assert_eq!(Spawn::decode(&bad), Err(MessageError::Crc));
        let pid = sys::Pid::from_raw(1234).unwrap();
        let ok = encode_spawned(&Ok(pid));
        assert_eq!(decode_spawned(&ok).unwrap().unwrap(), pid);
        let err = encode_spawned(&Err(io::Error::from_raw_os_error(libc::EAGAIN)));
        let e = decode_spawned(&err).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        assert_eq!(
            decode_spawned(&b[..SPAWNED_SIZE]).unwrap_err(),
            MessageError::Tag
        );
    }

    #[test]
    fn the_exec_environment_round_trips_and_is_checked() {
        let all = deaths(3);
        let start = Start {
            restarts: 3,
            deaths: &all,
            on_restart: OnRestart::Decide,
            resume_before: Some(9),
            watchdog: Some(Duration::from_millis(400)),
        };
        let vars = exec_env("web", EXEC_REGION_FD, 1 << 20, &start);
        let get = |vars: &[String], k: &str| {
            vars.iter()
                .find_map(|v| v.strip_prefix(k)?.strip_prefix('=').map(str::to_owned))
        };
        let e = ExecEnv::read(|k| get(&vars, k)).unwrap();
        assert_eq!(e.name, "web");
        assert_eq!(e.fd, EXEC_REGION_FD);
        assert_eq!(e.region_size, 1 << 20);
        assert_eq!(e.on_restart, OnRestart::Decide);
        assert_eq!(e.history, History::new(3, &all, Some(9)));
        assert_eq!(e.watchdog, Some(Duration::from_millis(400)));
        // No watchdog, no variable.
        let none = exec_env(
            "web",
            EXEC_REGION_FD,
            1 << 20,
            &Start {
                watchdog: None,
                ..start
            },
        );
        assert!(
            !none.iter().any(|v| v.starts_with("WATCHDOG_USEC=")),
            "{none:?}"
        );
        assert_eq!(ExecEnv::read(|k| get(&none, k)).unwrap().watchdog, None);
        assert!(matches!(
            ExecEnv::read(|_| None),
            Err(AttachError::NotStarted)
        ));
        for (key, value) in [
            (ON_RESTART, "sometimes"),
            (REGION_FD, "-1"),
            (RESTARTS, "4"),
            (HISTORY, "00"),
            (WATCHDOG_USEC, "0"),
            (WATCHDOG_USEC, "soon"),
        ] {
            let mut changed = vars.clone();
            for v in changed.iter_mut() {
                if v.starts_with(&format!("{key}=")) {
                    *v = format!("{key}={value}");
                }
            }
            match ExecEnv::read(|k| get(&changed, k)) {
                Err(AttachError::BadVariable { name, .. }) => assert_eq!(name, key),
                other => panic!("{key}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_setup_report_round_trips_and_garbage_is_a_report_failure() {
        let (rd, wr) = sys::pipe_cloexec(true).unwrap();
        assert_eq!(read_setup(&rd), Setup::Pending);
        report_setup_failure(wr.as_fd(), SetupStage::Exec, libc::ENOENT);
        assert_eq!(
            read_setup(&rd),
            Setup::Failed(ExitReason::SetupFailed {
                stage: SetupStage::Exec,
                errno: libc::ENOENT
            })
        );
        sys::write_all(wr.as_fd(), &[1, 0, 0, 0, 2, 0, 0, 0]).unwrap();
        assert_eq!(
            read_setup(&rd),
            Setup::Failed(ExitReason::SetupFailed {
                stage: SetupStage::Report,
                errno: libc::EBADMSG
            })
        );
        drop(wr);
        assert_eq!(read_setup(&rd), Setup::Ready);
    }
}
