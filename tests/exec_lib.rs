//! Exec'd programs that link the library (`Context::from_env`), through the
//! real binary: `examples/exec_counter.rs` run with `exec = [...]` counts
//! across SIGKILLs at random moments without skipping or repeating a
//! number, and runs a transaction at each start; run outside forkroot, or handed a descriptor that is not its
//! region, it gets a clear error instead of a crash.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use common::{send, Tree};
use libc::{SIGKILL, SIGTERM};

/// The example program, built for the profile the tests run in (cargo
/// builds examples for `cargo test`, but not for `cargo test --test
/// exec_lib`: then it is built here, once).
fn example() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let bin_dir = std::path::Path::new(common::BIN).parent().expect("bin dir");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "--example", "exec_counter"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if bin_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build --example");
        assert!(
            status.success(),
            "cargo build --example exec_counter failed"
        );
        let path = bin_dir.join("examples").join("exec_counter");
        assert!(path.exists(), "{} is missing", path.display());
        path
    })
}

/// The counter as an exec'd daemon `count` writing `@DIR@/count.out`,
/// restarted as often as the test kills it.
fn config(keys: &str) -> String {
    format!(
        "[supervisor]\nintensity = 1000000\nperiod = \"1s\"\n\
         [[daemon]]\nname = \"count\"\nexec = [\"{}\", \"@DIR@/count.out\"]\n\
         memory = \"64KiB\"\n{keys}\n",
        example().display()
    )
}

/// `count`'s pid and restart count while it runs and has heartbeated (so
/// it is past `from_env`), from `ctl status --json`.
fn running(t: &Tree) -> Option<(i32, u64)> {
    let d = t.daemon_status("count")?;
    let up = d["state"] == "running" && d["heartbeat_age_ms"].is_u64();
    up.then(|| Some((d["pid"].as_i64()? as i32, d["restarts"].as_u64()?)))?
}

/// The numbers in `count.out`, which must be exactly 1..=N.
fn counted(t: &Tree) -> u64 {
    let text = std::fs::read_to_string(t.path("count.out")).expect("count.out");
    assert!(text.ends_with('\n'), "count.out ends in a torn line");
    let mut expect = 1u64;
    for (at, line) in text.lines().enumerate() {
        let n: u64 = line
            .parse()
            .unwrap_or_else(|_| panic!("count.out:{}: {line:?} is not a number", at + 1));
        assert!(
            n == expect,
            "count.out:{}: {n} where {expect} was due ({})",
            at + 1,
            if n < expect { "repeated" } else { "skipped" }
        );
        expect += 1;
    }
    expect - 1
}

#[test]
fn an_exec_program_resumes_its_checkpoint_across_20_sigkills() {
    let mut t = Tree::start(&config("watchdog = \"5s\""));
    let seed = std::env::var("EXEC_LIB_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()));
    eprintln!("seed {seed:#x} (replay the kill moments with EXEC_LIB_SEED={seed:#x})");
    let mut rng = seed;
    let mut last = None;
    for kill in 0..20u64 {
        let (pid, restarts) = t.poll("count running with a new pid", || {
            running(&t).filter(|&(pid, _)| Some(pid) != last)
        });
        assert_eq!(restarts, kill, "restarts seen by the root");
        // A random moment: from right after its first heartbeat to 20 ms
        // of counting.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(rng % 20_000));
        send(pid, SIGKILL).expect("kill count");
        last = Some(pid);
    }
    let (_, restarts) = t.poll("count running after the last kill", || {
        running(&t).filter(|&(pid, _)| Some(pid) != last)
    });
    assert_eq!(restarts, 20);
    let log = t.log();
    assert_eq!(
        log.matches("crashed daemon=count").count(),
        20,
        "one crash report per kill, none from the watchdog:\n{log}"
    );
    assert!(!log.contains("watchdog: no heartbeat"), "{log}");
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
    let log = t.log();
    assert!(
        log.contains("stopped daemon=count") && log.contains("exited with code 0"),
        "a stop is a clean exit: {log}"
    );
    // The flight log reached the crash reports: what the killed process
    // logged through `tracing` at start-up.
    assert!(log.contains("last_log=[\"INFO"), "{log}");
    assert!(log.contains("resumed from checkpoint"), "{log}");
    // Each start that got to counting first had a transaction count the
    // output file's lines, which matched its checkpoint (else it exits
    // with code 5). A kill may land while the transaction runs.
    let pids = |what: &str| -> std::collections::BTreeSet<&str> {
        log.lines()
            .filter(|l| l.contains(what))
            // `count[PID] stderr: count[PID]  INFO  text`: its echo, captured.
            .filter_map(|l| l.split("count[").nth(1)?.split(']').next())
            .collect()
    };
    let checked = pids("lines checked by a transaction");
    let counting = pids("  counting next=");
    assert!(!counting.is_empty(), "{log}");
    assert!(counting.is_subset(&checked), "{log}");
    let n = counted(&t);
    assert!(n > 20, "counted only to {n}");
    eprintln!("counted to {n} across 20 kills, none skipped or repeated");
}

/// Runs the example with `env` (and nothing else) through `sh`, with
/// `redirect` applied (e.g. `3<file`).
fn run_example(env: &[(String, String)], redirect: &str) -> Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec \"$0\" /dev/null {redirect}"))
        .arg(example())
        .env_clear()
        .envs(env.iter().cloned())
        .output()
        .expect("run the example")
}

fn refused(out: &Output, words: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(words), "expected {words:?} in: {err}");
}

#[test]
fn from_env_outside_forkroot_is_a_clear_error() {
    refused(
        &run_example(&[], ""),
        "not started by forkroot: FORKROOT_NAME is not set",
    );
}

/// The environment the root gives an exec'd program (`FORKROOT_*` only),
/// recorded by a shell under a real root.
fn root_env() -> Vec<(String, String)> {
    let mut t = Tree::start(
        "[[daemon]]\nname = \"env\"\nexec = [\"/bin/sh\", \"-c\", \"env > @DIR@/env.tmp && mv @DIR@/env.tmp @DIR@/env; exec sleep 30\"]\n",
    );
    let text = t.poll("the program's environment", || {
        std::fs::read_to_string(t.path("env")).ok()
    });
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("FORKROOT_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for key in [
        "NAME",
        "REGION_FD",
        "REGION_SIZE",
        "RESTARTS",
        "ON_RESTART",
        "HISTORY",
    ] {
        assert!(
            env.iter().any(|(k, _)| k == &format!("FORKROOT_{key}")),
            "FORKROOT_{key} missing from {env:?}"
        );
    }
    env
}

#[test]
fn from_env_refuses_what_is_not_its_region_with_a_clear_error() {
    let env = root_env();
    let size: u64 = env
        .iter()
        .find(|(k, _)| k == "FORKROOT_REGION_SIZE")
        .and_then(|(_, v)| v.parse().ok())
        .expect("FORKROOT_REGION_SIZE");
    let dir = tempfile::tempdir().unwrap();

    // Nothing at fd 3.
    refused(&run_example(&env, "3<&-"), "fd 3 is not a forkroot region");
    // A regular file at fd 3.
    let file = dir.path().join("plain");
    std::fs::write(&file, vec![0u8; size as usize]).unwrap();
    refused(
        &run_example(&env, &format!("3<>{}", file.display())),
        "fd 3 is not a forkroot region: it is /",
    );

    // A memfd named like the root's, but too small, and one whose header
    // has another layout. The child opens it through /proc/PID/fd/N.
    let memfd = |len: u64, header: &[u8]| {
        use std::io::Write;
        let fd =
            nix::sys::memfd::memfd_create(c"forkroot:fake", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .expect("memfd_create");
        let mut f = std::fs::File::from(fd);
        f.set_len(len).unwrap();
        f.write_all(header).unwrap();
        let path = format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&f)
        );
        (f, path)
    };
    let (_small, path) = memfd(4096, &[]);
    let mut small_env = env.clone();
    for (k, v) in small_env.iter_mut() {
        if k == "FORKROOT_REGION_SIZE" {
            *v = "4096".into();
        }
    }
    refused(
        &run_example(&small_env, &format!("3<>{path}")),
        "the region is 4096 bytes, a region has at least",
    );
    let mut header = b"FKROOTR1".to_vec();
    header.extend_from_slice(&99u32.to_le_bytes());
    let (_old, path) = memfd(size, &header);
    refused(
        &run_example(&env, &format!("3<>{path}")),
        "the region's header has layout 99, this library writes layout 1",
    );

    // A garbled history is named, not misread.
    let mut garbled = env.clone();
    for (k, v) in garbled.iter_mut() {
        if k == "FORKROOT_HISTORY" {
            v.replace_range(0..2, "00");
        }
    }
    refused(
        &run_example(&garbled, ""),
        "is not a history message: not this kind of message",
    );
}

#[test]
fn an_exec_program_gets_its_on_restart_mode_and_deaths_from_the_root() {
    let mut t = Tree::start(&config("on_restart = \"fresh\""));
    let (pid, _) = t.poll("count running", || running(&t));
    t.poll("count past 100", || {
        let n = std::fs::read_to_string(t.path("count.out"))
            .ok()?
            .lines()
            .count();
        (n > 100).then_some(())
    });
    send(pid, SIGKILL).expect("kill count");
    // Fresh: the root zeroed its state, so it starts over at 1, and it
    // knows it died once.
    t.wait_log(&["counting next=1 restarts=1 deaths=1 resumed=Fresh"]);
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
    assert!(counted(&t) > 0);
}

/// `ctx.ready()` speaks the notify protocol: with `readiness = "notify"`
/// the program is `running` only once it checked its state and said so.
#[test]
fn an_exec_program_says_ready_through_the_library() {
    let mut t = Tree::start(&config("readiness = \"notify\"\nstart_timeout = \"20s\""));
    t.poll("count running", || running(&t));
    let log = t.log();
    assert!(log.contains("ready (READY=1) daemon=count"), "{log}");
    // It said so after its start-up check, not before.
    let checked = log.find("lines checked by a transaction").expect("checked");
    assert!(checked < log.find("ready (READY=1)").unwrap(), "{log}");
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}
