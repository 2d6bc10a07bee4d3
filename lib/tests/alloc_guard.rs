//! The allocation guard, installed as this binary's global allocator. Each
//! forbid case runs in a forked child; the parent checks SIGABRT, the
//! message on the child's stderr and the record in the flight log.
//! Runs as its own process (`harness = false`).

use forkroot::alloc::{self, AllocStats, Guarded, Policy};
use forkroot::config::{Args, Config};
use forkroot::log::{self as flight, FlightLog, Level};
use forkroot::region::LOG_SIZE;
use forkroot::{Context, Kind, Registry, Setting};
use std::hint::black_box;
use std::io::Read as _;
use std::os::fd::FromRawFd as _;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

mod common;
use common::map_shared;

#[global_allocator]
static A: Guarded = Guarded::new();

/// How a child ended, what it wrote to stderr, and its flight log's last
/// record.
struct Outcome {
    signal: Option<i32>,
    code: Option<i32>,
    stderr: String,
    last: Option<(Level, String)>,
}

/// Forks a child with a fresh shared flight log installed, stderr on a pipe,
/// and `name`; the child runs `body` then `_exit(0)`.
fn in_child(name: &str, body: fn()) -> Outcome {
    let area = map_shared(LOG_SIZE);
    // SAFETY: fresh mapping, LOG_SIZE bytes, lives until exit.
    let log = unsafe { FlightLog::init(area, LOG_SIZE) }.unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable [c_int; 2].
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: this binary is single-threaded when it forks.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: redirecting our own stderr to the pipe's write end.
        unsafe {
            libc::dup2(fds[1], 2);
            libc::close(fds[0]);
        }
        flight::install(log);
        alloc::set_name(name);
        body();
        // SAFETY: ends the child without unwinding into the parent's state.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    // SAFETY: fds[0] is an open descriptor we own from here on.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut stderr = String::new();
    pipe.read_to_string(&mut stderr).unwrap();
    let mut status = 0;
    // SAFETY: our own child; `status` is writable.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    // SAFETY: the area stays mapped; read as untrusted bytes.
    let bytes = unsafe { std::slice::from_raw_parts(area, LOG_SIZE) };
    let mut last = None;
    flight::tail(bytes, 1, |r| last = Some((r.level(), r.text().to_owned())));
    Outcome {
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stderr,
        last,
    }
}

fn expect_abort(what: &str, o: &Outcome, size: usize) {
    let msg = format!(
        "forkroot: daemon \"counter\" allocated {size} bytes after fork (alloc policy forbid)"
    );
    assert_eq!(
        o.signal,
        Some(libc::SIGABRT),
        "{what}: child must die of SIGABRT"
    );
    assert!(o.stderr.contains(&msg), "{what}: stderr was {:?}", o.stderr);
    assert_eq!(o.last, Some((Level::Error, msg)), "{what}: flight log");
    println!("ok   {what}: SIGABRT, message on stderr and in the flight log");
}

fn never(_: &mut Context<'_>) -> i32 {
    unreachable!("only the settings are read")
}

/// A kind with a setting of every type.
const EVERY: &[Setting] = &[
    Setting::bool("b", "").default_bool(true),
    Setting::int("n", "").default_int(7).range(0, 100),
    Setting::duration("d", "").default_duration(Duration::from_millis(250)),
    Setting::size("z", "").default_size(4096),
    Setting::signal("g", "").default_signal(libc::SIGABRT),
    Setting::string("s", "").default_str("x"),
    Setting::path("p", ""),
    Setting::string("o", ""),
];

/// The checked `[daemon.args]` of a daemon of that kind, made before the
/// children fork.
fn args() -> &'static Args {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let c = CONFIG.get_or_init(|| {
        let mut kinds = Registry::new();
        kinds.add(Kind::new("every", "", never).settings(EVERY));
        let text = "[[daemon]]\nname = \"e\"\nkind = \"every\"\n[daemon.args]\n\
                    s = \"a string the config gave\"\np = \"/var/lib/e\"\nz = \"1MiB\"\n";
        Config::parse(text, "t.toml", &kinds).expect("a good config")
    });
    &c.daemons[0].args
}

fn main() {
    common::watchdog(30);
    args();

    // Off: nothing counted.
    alloc::reset_stats();
    assert_eq!(alloc::policy(), Policy::Off);
    drop(black_box(vec![1u8; 100]));
    assert_eq!(alloc::stats(), AllocStats::default());
    println!("ok   off: nothing counted");

    // Count: counted, allowed.
    alloc::set_policy(Policy::Count);
    let before = alloc::stats();
    let v = black_box(vec![1u8; 1000]);
    let mid = alloc::stats();
    drop(v);
    let after = alloc::stats();
    alloc::set_policy(Policy::Off);
    assert_eq!(mid.allocs - before.allocs, 1);
    assert_eq!(mid.bytes - before.bytes, 1000);
    assert_eq!(after.deallocs - mid.deallocs, 1);
    println!("ok   count: 1 alloc of 1000 bytes, 1 dealloc");

    // Forbid: allow() permits; freeing is fine; no allocation is fine.
    let o = in_child("counter", || {
        alloc::set_policy(Policy::Forbid);
        alloc::reset_stats();
        let v = alloc::allow(|| alloc::allow(|| black_box(vec![7u8; 4096])));
        let mut sum = 0u64;
        for x in &v {
            sum += u64::from(*x);
        }
        drop(v);
        let s = alloc::stats();
        if sum != 7 * 4096 || s.allocs != 1 || s.deallocs != 1 || s.bytes != 4096 {
            // SAFETY: plain exit with a failure code.
            unsafe { libc::_exit(3) };
        }
    });
    assert_eq!((o.signal, o.code), (None, Some(0)), "allow: {}", o.stderr);
    println!("ok   forbid: allow() permits and counts, dealloc is free");

    // Forbid: alloc, alloc_zeroed, realloc each abort with the message.
    let o = in_child("counter", || {
        alloc::set_policy(Policy::Forbid);
        black_box(Box::new([0u64; 8]));
    });
    expect_abort("forbid alloc", &o, 64);
    let o = in_child("counter", || {
        alloc::set_policy(Policy::Forbid);
        black_box(vec![0u8; 5000]);
    });
    expect_abort("forbid alloc_zeroed", &o, 5000);
    let o = in_child("counter", || {
        let mut v: Vec<u8> = Vec::with_capacity(16);
        alloc::set_policy(Policy::Forbid);
        v.reserve_exact(48);
        black_box(v);
    });
    expect_abort("forbid realloc", &o, 48);
    // A forked child inherits the policy.
    let o = in_child("counter", || {
        alloc::set_policy(Policy::Forbid);
        // SAFETY: the child is single-threaded.
        match unsafe { libc::fork() } {
            0 => {
                black_box(Box::new(1u32));
                // SAFETY: not reached if the guard works.
                unsafe { libc::_exit(0) }
            }
            pid => {
                let mut status = 0;
                // SAFETY: our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                let code = if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT {
                    0
                } else {
                    4
                };
                // SAFETY: plain exit.
                unsafe { libc::_exit(code) };
            }
        }
    });
    assert_eq!(o.code, Some(0), "grandchild must abort too: {}", o.stderr);
    assert!(o.stderr.contains("allocated 4 bytes"), "{}", o.stderr);
    println!("ok   forbid is inherited across fork");

    // tracing through the flight layer allocates nothing in the steady state.
    let o = in_child("counter", || {
        use tracing_subscriber::layer::SubscriberExt as _;
        alloc::allow(|| {
            let sub = tracing_subscriber::registry().with(forkroot::trace::layer());
            tracing::subscriber::set_global_default(sub).unwrap();
        });
        alloc::set_policy(Policy::Forbid);
        forkroot::trace::set_transaction(0xabc);
        for i in 0..3 {
            tracing::info!(round = i, name = "x", "hello {}", 3);
        }
        tracing::warn!(big = ?[1u64; 100], "long");
    });
    assert_eq!(
        (o.signal, o.code),
        (None, Some(0)),
        "tracing under forbid: {}",
        o.stderr
    );
    let (level, text) = o.last.unwrap();
    assert_eq!(level, Level::Warn);
    assert!(text.starts_with("long big=[1, 1, 1"), "{text}");
    assert!(text.len() <= flight::TEXT_MAX);
    println!("ok   tracing events under forbid: no allocation, record written");

    // Reading settings (`ctx.arg`) in the steady state allocates nothing.
    let o = in_child("counter", || {
        let a = args();
        alloc::set_policy(Policy::Forbid);
        let ok = a.get::<bool>("b")
            && a.get::<u8>("n") == 7
            && a.get::<Duration>("d") == Duration::from_millis(250)
            && a.get::<usize>("z") == 1 << 20
            && a.get::<i32>("g") == libc::SIGABRT
            && a.get::<&str>("s") == "a string the config gave"
            && a.get::<&Path>("p") == Path::new("/var/lib/e")
            && a.get::<Option<&str>>("o").is_none();
        // SAFETY: plain exit.
        unsafe { libc::_exit(if ok { 0 } else { 3 }) };
    });
    assert_eq!(
        (o.signal, o.code),
        (None, Some(0)),
        "settings under forbid: {}",
        o.stderr
    );
    println!("ok   settings of every type read under forbid: no allocation");

    // A daemon's own mistake in reading one still reads as that mistake in
    // the steady state, not as an allocation.
    let o = in_child("counter", || {
        let a = args();
        alloc::set_policy(Policy::Forbid);
        let r = std::panic::catch_unwind(|| a.get::<u64>("rtae"));
        // SAFETY: plain exit.
        unsafe { libc::_exit(if r.is_err() { 7 } else { 3 }) };
    });
    assert_eq!((o.signal, o.code), (None, Some(7)), "{}", o.stderr);
    assert!(
        o.stderr.contains(
            "setting \"rtae\" is not declared by this kind (declared: b, n, d, z, g, s, p, o)"
        ),
        "{}",
        o.stderr
    );
    println!("ok   a misread setting under forbid panics with its own message");
}
