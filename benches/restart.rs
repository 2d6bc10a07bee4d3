//! Crash-to-restart latency: from SIGKILL of a daemon to its replacement
//! running its first line of code, against a bare fork()+waitpid() measured
//! in the same run.
//!
//! `cargo bench --bench restart`; `FORKROOT_BENCH_N` sets the number of
//! kills per measurement (default 300); the root logs at `FORKROOT_LOG`
//! (default `info`, one line per crash and per start, to a file).
//!
//! - **forkroot**: `forkroot run` supervises one `probe` daemon whose `out`
//!   is a FIFO. The probe's first line takes CLOCK_MONOTONIC and reports it
//!   as `start PID RESTARTS NS`. Each round takes t0 just before
//!   `kill(pid, SIGKILL)` and reads the replacement's line: the latency is
//!   NS − t0. Run with a 64KiB region, then with a 1GiB one: the restart
//!   must not grow with the region (state is mapped, never copied).
//! - **bare fork+waitpid**: the same sequence in this process: a child that
//!   pauses; t0; SIGKILL; waitpid; fork; the new child writes its
//!   CLOCK_MONOTONIC to a pipe at its first line.
//!
//! The ratio printed is forkroot's median over the bare median; a row
//! beside 1,000 daemons or more also prints, against the row beside 10,
//! its median over that row's, its ratio to the floor over that row's,
//! the median of its kills' own ratios to the floor round right before
//! each ("kill by kill") over that row's, and its floor over that row's
//! floor.
//! Each restart row is measured in five blocks, round-robin over the rows
//! (a fresh tree per block, settled for 5 s once up; every other round of
//! blocks in reverse order), and each kill right after a round of the
//! floor, so that figures compared in a ratio saw the same machine: a
//! shared machine's speed drifts over seconds (a virtual machine's can
//! move between two speeds, one twice the other, from one block to the
//! next), and a few hundred kills last under a tenth of a second. Over
//! the floor, a row's figure is what its restarts cost apart from the
//! machine's speed in its rounds; the floor's own ratio shows what the
//! tree's presence costs everything else on the machine (its daemons'
//! own wake-ups; an `idle` one without a watchdog has none).
//! `FORKROOT_BENCH_N` kills per row in all (rounded up to a multiple of
//! five). `FORKROOT_BENCH_CPU=N` runs everything on CPU N alone. Each
//! row also prints the CPU time the root spent per restart over its
//! measured rounds (`/proc/PID/schedstat`): the root's own work per
//! event, which must not grow with the tree, apart from how the rounds
//! fell on the machine.
//!
//! - **in a tree** (measured once every daemon is up, `ctl health
//!   --ready`): the probe beside 10 idle daemons, and beside 1,000 in
//!   50 `[[group]]`s, against the same 1,000 under the top supervisor;
//!   beside 1,000 exec'd programs (`/bin/sleep`), each with a region file
//!   of its own; and beside 3,000 in 50 groups (how a restart grows with
//!   the tree). Then the same rows **at once** ("restart at once"): every
//!   one of those trees up side by side, and each round a kill in each
//!   tree in an order shuffled each round, each right after a round of
//!   the floor, as many kills per row as above: the rows saw the machine
//!   at the same moments, so their ratios to the row beside 10 are what
//!   each tree's size costs a restart (with every tree's daemons present
//!   in every row). A root's CPU per restart there is not comparable
//!   with the same row's in turn: its caches are shared with four other
//!   roots, and every row reads some 30 µs higher.
//!   `FORKROOT_BENCH_ONLY=trees` runs these rows alone.
//! - **time to ready**: from spawning `forkroot run` to its `READY=1` on
//!   `NOTIFY_SOCKET` (every daemon of the first start set up), for one
//!   daemon of 64 KiB, 1 GiB and 8 GiB, and for 10 and 1,000 daemons (and
//!   1,000 in 50 groups) of
//!   64 KiB; beside the floor of spawning the same binary to print its
//!   version (exec, dynamic loading, exit), same run.
//!   `FORKROOT_BENCH_READY_N` sets the starts per row (default 5).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_forkroot");
/// Rounds run and thrown away before measuring.
const WARMUP: usize = 20;
/// Blocks each restart row is measured in (round-robin over the rows).
const BLOCKS: usize = 5;
/// How long each block waits once its tree is up, before its first kill.
const SETTLE: Duration = Duration::from_secs(5);
/// How long one read may wait before the benchmark gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    // `FORKROOT_BENCH_CPU=N`: this process, and so the root, its zygote,
    // its daemons and the floor's children, on CPU N only: no wake-up
    // crosses to another CPU (benches/RESULTS.md: what that costs).
    if let Ok(cpu) = std::env::var("FORKROOT_BENCH_CPU") {
        let cpu: usize = cpu.parse().expect("FORKROOT_BENCH_CPU: a CPU number");
        pin_to(cpu).expect("FORKROOT_BENCH_CPU: sched_setaffinity");
        println!("every process of this run on CPU {cpu}");
    }
    // `cargo bench` passes `--bench`; take no other arguments.
    let n: usize = std::env::var("FORKROOT_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let runs = [
        Run {
            memory: "64KiB",
            siblings: 0,
            groups: 0,
            exec: false,
            standby: false,
        },
        Run {
            memory: "1GiB",
            siblings: 0,
            groups: 0,
            exec: false,
            standby: false,
        },
        Run {
            memory: "64KiB",
            siblings: 1000,
            groups: 0,
            exec: false,
            standby: false,
        },
        Run {
            memory: "64KiB",
            siblings: 10,
            groups: 0,
            exec: false,
            standby: false,
        },
        Run {
            memory: "64KiB",
            siblings: 1000,
            groups: 50,
            exec: false,
            standby: false,
        },
        Run {
            memory: "64KiB",
            siblings: 0,
            groups: 0,
            exec: false,
            standby: true,
        },
        Run {
            memory: "64KiB",
            siblings: 1000,
            groups: 0,
            exec: true,
            standby: false,
        },
        Run {
            memory: "64KiB",
            siblings: 3000,
            groups: 50,
            exec: false,
            standby: false,
        },
    ];
    // `FORKROOT_BENCH_ONLY=trees`: the rows beside other daemons alone,
    // without the time to ready.
    let trees_only = match std::env::var("FORKROOT_BENCH_ONLY") {
        Ok(only) if only == "trees" => true,
        Ok(other) => panic!("FORKROOT_BENCH_ONLY: `trees` or unset, not {other:?}"),
        Err(_) => false,
    };
    let runs: Vec<Run> = runs
        .into_iter()
        .filter(|r| !trees_only || r.siblings > 0)
        .collect();
    let ready_n: usize = std::env::var("FORKROOT_BENCH_READY_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let ready_rows: &[(&str, usize, usize)] = if trees_only {
        &[]
    } else {
        &[
            ("64KiB", 1, 0),
            ("1GiB", 1, 0),
            ("8GiB", 1, 0),
            ("64KiB", 10, 0),
            ("64KiB", 1000, 0),
            ("64KiB", 1000, 50),
        ]
    };
    for &(memory, daemons, groups) in ready_rows {
        let floor = Stats::of(
            (0..ready_n)
                .map(|_| exec_floor().expect("exec floor"))
                .collect(),
        );
        let mut rss = Vec::new();
        let s = Stats::of(
            (0..ready_n)
                .map(|_| {
                    let (t, kib) = time_to_ready(memory, daemons, groups).expect("time to ready");
                    rss.push(kib);
                    t
                })
                .collect(),
        );
        println!(
            "ready    memory={memory:<6} daemons={daemons:<4} groups={groups:<2} n={ready_n}  median={} max={}   \
             forkroot --version median={}   ratio={:.1}   root RSS when ready median={}KiB",
            ms(s.median),
            ms(s.p99),
            ms(floor.median),
            s.median as f64 / floor.median as f64,
            Stats::of(rss).median
        );
    }
    // Every row is measured in BLOCKS blocks, round-robin over the rows,
    // each round of a block right after a round of the floor: a shared
    // machine's speed drifts over seconds (a virtual machine's can move
    // between two speeds, one twice the other), and figures compared in a
    // ratio must have seen the same machine. Each block starts its own
    // tree.
    let per = n.div_ceil(BLOCKS);
    let mut measured: Vec<Measured> = runs.iter().map(|_| Measured::default()).collect();
    for b in 0..BLOCKS {
        // Every other block runs the rows in reverse order, so that a row
        // does not always follow the same one (a block's tree starts while
        // the kernel may still be clearing the last tree away).
        for j in 0..runs.len() {
            let k = if b % 2 == 0 { j } else { runs.len() - 1 - j };
            let m = measure(&[&runs[k]], per)
                .expect("forkroot restart")
                .pop()
                .expect("one tree, one measurement");
            measured[k].latencies.extend(m.latencies);
            measured[k].floor.extend(m.floor);
            measured[k].root_cpu_ns += m.root_cpu_ns;
        }
    }
    let rows: Vec<&Run> = runs.iter().collect();
    print_rows(&rows, &measured, "");
    // The same tree rows again, every tree up at once and a kill in each
    // per round, in a shuffled order: what is left of a row's ratio to the
    // row beside 10 is what its own tree costs a restart, not the moment
    // it was measured at.
    let together: Vec<&Run> = runs
        .iter()
        .filter(|r| r.siblings > 0 && !r.standby)
        .collect();
    if together.len() > 1 {
        let measured = measure(&together, per * BLOCKS).expect("forkroot restart, at once");
        print_rows(&together, &measured, " at once");
    }
}

/// Prints a line per row: its median and p99 against the floor's, and
/// for a row beside 1,000 daemons or more its ratios to the row beside 10.
fn print_rows(runs: &[&Run], measured: &[Measured], how: &str) {
    let kills = measured[0].latencies.len();
    // Kill by kill, the restart over the floor's round right before it
    // (in thousandths): both saw the machine at the same moment.
    let paired: Vec<Stats> = measured
        .iter()
        .map(|m| {
            Stats::of(
                m.latencies
                    .iter()
                    .zip(&m.floor)
                    .map(|(&g, &f)| g * 1000 / f.max(1))
                    .collect(),
            )
        })
        .collect();
    let stats: Vec<Stats> = measured
        .iter()
        .map(|m| Stats::of(m.latencies.clone()))
        .collect();
    let floors: Vec<Stats> = measured
        .iter()
        .map(|m| Stats::of(m.floor.clone()))
        .collect();
    // The row the tree rows are compared with: the probe beside 10, as
    // measured (its median) and over its floor (the ratio).
    let beside_10 = runs
        .iter()
        .position(|r| r.siblings == 10)
        .map(|k| (stats[k].median, floors[k].median, paired[k].median));
    for (k, run) in runs.iter().enumerate() {
        let s = &stats[k];
        let b = &floors[k];
        // A standby row's root also answers the bench's status queries.
        let cpu = if run.standby {
            String::new()
        } else {
            format!(
                "   root CPU per restart={}",
                us(measured[k].root_cpu_ns / kills as u64)
            )
        };
        // Beside a larger tree: the median over the row beside 10's; the
        // ratio to the floor over that row's (what the restart costs
        // apart from how fast the machine was in each row's rounds); and
        // the floor over that row's floor (how much the tree's presence
        // slowed the machine itself).
        let vs_10 = match beside_10 {
            Some((m, f, p)) if run.siblings > 10 => {
                let ratio_10 = m as f64 / f as f64;
                format!(
                    "   vs siblings=10: {:.2} (over the floor {:.2}, kill by kill {:.2}, the floor {:.2})",
                    s.median as f64 / m as f64,
                    s.median as f64 / b.median as f64 / ratio_10,
                    paired[k].median as f64 / p as f64,
                    b.median as f64 / f as f64
                )
            }
            _ => String::new(),
        };
        println!(
            "restart{how}  memory={:<6} siblings={:<4} groups={:<2} exec={:<5} standby={:<5} n={}  median={} p99={}   \
             bare fork+waitpid median={} p99={}   ratio={:.2}{vs_10}{cpu}",
            run.memory,
            run.siblings,
            run.groups,
            run.exec,
            run.standby,
            kills,
            us(s.median),
            us(s.p99),
            us(b.median),
            us(b.p99),
            s.median as f64 / b.median as f64
        );
    }
}

/// Restricts this process (and what it spawns from now on) to CPU `cpu`.
fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain bits; all zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: writes one bit inside `set` (a CPU past its size panics on
    // the index instead).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    cvt(unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) }).map(drop)
}

/// Nanoseconds as milliseconds with two decimals.
fn ms(ns: u64) -> String {
    format!("{:.2}ms", ns as f64 / 1e6)
}

/// Spawning the binary to print its version and exit: the floor of any
/// start of it.
fn exec_floor() -> io::Result<u64> {
    let t0 = monotonic_ns();
    let st = Command::new(BIN)
        .arg("--version")
        .stdout(Stdio::null())
        .status()?;
    assert!(st.success());
    Ok(monotonic_ns() - t0)
}

/// From spawning `forkroot run` (`daemons` idle daemons in `groups`
/// groups, the first of `memory`, the rest of 64 KiB) to its `READY=1`;
/// and the root's resident memory then (KiB, `VmRSS`).
fn time_to_ready(memory: &str, daemons: usize, groups: usize) -> io::Result<(u64, u64)> {
    let dir = tempfile::Builder::new()
        .prefix("forkroot-bench")
        .tempdir()?;
    let d = dir.path();
    let config = d.join("ready.toml");
    let mut text = format!("[root]\ncontrol = \"{}/ctl.sock\"\n", d.display());
    text.push_str(&format!(
        "\n[[daemon]]\nname = \"first\"\nkind = \"idle\"\nmemory = \"{memory}\"\n"
    ));
    text.push_str(&siblings(daemons - 1, groups, "64KiB", false));
    fs::write(&config, text)?;
    let sock_path = d.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path)?;
    sock.set_read_timeout(Some(Duration::from_secs(60)))?;
    let log = fs::File::create(d.join("root.log"))?;
    let t0 = monotonic_ns();
    let root = Root(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("XDG_RUNTIME_DIR", d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf)?;
        if buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") {
            let t = monotonic_ns() - t0;
            let status = fs::read_to_string(format!("/proc/{}/status", root.0.id()))?;
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            return Ok((t, kib));
        }
    }
}

/// Nanoseconds as microseconds with one decimal.
fn us(ns: u64) -> String {
    format!("{:.1}us", ns as f64 / 1000.0)
}

struct Stats {
    median: u64,
    p99: u64,
}

impl Stats {
    fn of(mut v: Vec<u64>) -> Stats {
        assert!(!v.is_empty());
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Stats {
            median: at(0.5),
            p99: at(0.99),
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Reads lines from a descriptor, waiting at most [`READ_TIMEOUT`] for each.
struct Lines {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Lines {
    /// The next `start` line (skipping the probe's other reports).
    fn next_start(&mut self) -> io::Result<(i32, u64)> {
        loop {
            if let Some(start) = parse_start(&self.next()?) {
                return Ok(start);
            }
        }
    }

    fn next(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = cvt(unsafe { libc::poll(&mut pfd, 1, READ_TIMEOUT.as_millis() as i32) })?;
            if ready == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no line in time"));
            }
            let mut chunk = [0u8; 256];
            // SAFETY: `chunk` is writable for its length.
            let got = unsafe { libc::read(self.fd.as_raw_fd(), chunk.as_mut_ptr().cast(), 256) };
            match got {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                n => self.buf.extend_from_slice(&chunk[..n as usize]),
            }
        }
    }
}

/// Parses a probe's `start PID RESTARTS NS`.
fn parse_start(line: &str) -> Option<(i32, u64)> {
    let w: Vec<&str> = line.strip_prefix("start ")?.split(' ').collect();
    Some((w.first()?.parse().ok()?, w.get(2)?.parse().ok()?))
}

/// Kills the root and what it started, whatever happens to the benchmark.
struct Root(Child);

impl Drop for Root {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// One measurement: the probe's region size, how many `idle` daemons run
/// beside it (the cost per event must not grow with the tree), and whether
/// it keeps a hot standby (takeover instead of fork).
struct Run {
    memory: &'static str,
    siblings: usize,
    /// The siblings spread over this many `[[group]]`s (0: all under the
    /// top supervisor).
    groups: usize,
    /// The siblings are exec'd programs (`/bin/sleep`), not built-in idles.
    exec: bool,
    standby: bool,
}

/// The trees of `runs` (one, or the tree rows at once) up and settled
/// side by side, then `n` rounds, each a kill in every tree in an order
/// shuffled anew each round (a floor round, and so a kill, runs while the
/// last tree's root may still be finishing its restart: no tree always
/// follows the same one), each kill right after a round of the floor and
/// timed to the replacement's first line. Every row saw the machine at
/// the same moments, and all the trees' daemons.
fn measure(runs: &[&Run], n: usize) -> io::Result<Vec<Measured>> {
    let mut trees = runs
        .iter()
        .map(|run| Tree::start(run))
        .collect::<io::Result<Vec<Tree>>>()?;
    std::thread::sleep(SETTLE);
    let mut floor = Floor::new()?;
    let mut m: Vec<Measured> = runs.iter().map(|_| Measured::default()).collect();
    let mut cpu_from = vec![0; trees.len()];
    let mut order: Vec<usize> = (0..trees.len()).collect();
    // xorshift64, fixed seed: the same orders in every run.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..WARMUP + n {
        // Fisher-Yates.
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &k in &order {
            if round == WARMUP {
                cpu_from[k] = trees[k].root_cpu()?;
            }
            let f = floor.round()?;
            let ns = trees[k].kill()?;
            if round >= WARMUP {
                m[k].floor.push(f);
                m[k].latencies.push(ns);
            }
        }
    }
    for (k, tree) in trees.iter().enumerate() {
        m[k].root_cpu_ns = tree.root_cpu()? - cpu_from[k];
    }
    Ok(m)
}

/// A running `forkroot run` with a probe reporting to a FIFO; the probe's
/// current pid.
struct Tree {
    /// Declared before `dir`: the root is stopped before its directory
    /// goes.
    root: Root,
    lines: Lines,
    pid: i32,
    standby: bool,
    dir: tempfile::TempDir,
}

impl Tree {
    /// Writes the config of `run`, starts its root, and waits for the
    /// probe's first line and for every daemon to be up.
    fn start(run: &Run) -> io::Result<Tree> {
        let dir = tempfile::Builder::new()
            .prefix("forkroot-bench")
            .tempdir()?;
        let d = dir.path();
        let fifo = d.join("probe.fifo");
        mkfifo(&fifo)?;
        let config = d.join("bench.toml");
        fs::write(
            &config,
            format!(
                r#"[root]
control = "{dir}/ctl.sock"

[supervisor]
intensity = 1000000
period = "1s"

[[daemon]]
name = "probe"
kind = "probe"
memory = "{memory}"
standby = {standby}
[daemon.args]
out = "{fifo}"
{siblings}"#,
                dir = d.display(),
                memory = run.memory,
                fifo = fifo.display(),
                standby = run.standby,
                siblings = siblings(run.siblings, run.groups, "4KiB", run.exec),
            ),
        )?;
        // Read-write, so the probe's open never waits for a reader and a
        // dead writer never reads as end-of-file.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&fifo)?;
        let lines = Lines {
            fd: file.into(),
            buf: Vec::new(),
        };
        let log = fs::File::create(d.join("root.log"))?;
        let root = Root(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&config)
                .env(
                    "FORKROOT_LOG",
                    std::env::var("FORKROOT_LOG").unwrap_or_else(|_| "info".into()),
                )
                .env("XDG_RUNTIME_DIR", d)
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        let mut tree = Tree {
            root,
            lines,
            pid: 0,
            standby: run.standby,
            dir,
        };
        let (pid, _) = tree.lines.next_start().map_err(|e| tree.failed(e))?;
        tree.pid = pid;
        // Beside idle daemons: every one up (starting 1,000 takes longer
        // than the rounds, which would otherwise race the tree's start).
        wait_until_ready(&tree.ctl()).map_err(|e| tree.failed(e))?;
        Ok(tree)
    }

    /// Kills the probe and waits for its replacement's first line: the
    /// nanoseconds from just before the kill to that line.
    fn kill(&mut self) -> io::Result<u64> {
        if self.standby {
            wait_for_standby(&self.ctl(), self.pid).map_err(|e| self.failed(e))?;
        }
        let t0 = monotonic_ns();
        // SAFETY: kill has no memory preconditions.
        cvt(unsafe { libc::kill(self.pid, libc::SIGKILL) })?;
        let (next, ns) = self.lines.next_start().map_err(|e| self.failed(e))?;
        assert_ne!(next, self.pid, "the same pid reported twice");
        self.pid = next;
        Ok(ns.saturating_sub(t0))
    }

    /// The CPU time the root has run so far.
    fn root_cpu(&self) -> io::Result<u64> {
        cpu_ns(self.root.0.id())
    }

    fn ctl(&self) -> std::path::PathBuf {
        self.dir.path().join("ctl.sock")
    }

    /// `e`, with the end of the root's log: its side of a failed
    /// measurement.
    fn failed(&self, e: io::Error) -> io::Error {
        let log = fs::read_to_string(self.dir.path().join("root.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        io::Error::new(
            e.kind(),
            format!("{e}; the root's log ends with:\n{}", tail.join("\n")),
        )
    }
}

/// The rounds of one block: each restart's latency, and the CPU time the
/// root spent over them (its work per event, whatever it overlaps with).
#[derive(Default)]
struct Measured {
    latencies: Vec<u64>,
    /// The floor's rounds, one run right before each of the row's.
    floor: Vec<u64>,
    root_cpu_ns: u64,
}

/// CPU time process `pid` has run, in nanoseconds (the first field of
/// `/proc/PID/schedstat`; the root is single-threaded).
fn cpu_ns(pid: u32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    text.split(' ')
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/schedstat: {text:?}")))
}

/// `n` idle daemons of `memory` each, spread over `groups` groups (named
/// `g0`..; none: all under the top supervisor), as config text.
fn siblings(n: usize, groups: usize, memory: &str, exec: bool) -> String {
    let program = if exec {
        "exec = [\"/bin/sleep\", \"1000000\"]"
    } else {
        "kind = \"idle\""
    };
    let mut text = String::new();
    for g in 0..groups {
        text.push_str(&format!("\n[[group]]\nname = \"g{g}\"\n"));
    }
    for i in 0..n {
        text.push_str(&format!(
            "\n[[daemon]]\nname = \"idle{i}\"\n{program}\nmemory = \"{memory}\"\n"
        ));
        if groups > 0 {
            text.push_str(&format!("group = \"g{}\"\n", i % groups));
        }
    }
    text
}

/// Waits (outside the timed part) until `ctl health --ready` says every
/// daemon of the tree is up.
fn wait_until_ready(socket: &Path) -> io::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        let st = Command::new(BIN)
            .args(["ctl", "--socket"])
            .arg(socket)
            .args(["health", "--ready"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if st.success() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the tree was not ready within 120 s",
    ))
}

/// Waits (outside the timed part) until the daemon whose primary is `pid`
/// has a ready standby, so each kill measures a takeover, not a fork.
fn wait_for_standby(socket: &Path, pid: i32) -> io::Result<()> {
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    while std::time::Instant::now() < deadline {
        let out = Command::new(BIN)
            .args(["ctl", "--socket"])
            .arg(socket)
            .args(["status", "--json"])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let d = &v["daemons"][0];
        if d["pid"].as_i64() == Some(pid as i64) && d["standby_pid"].as_i64().is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no standby became ready",
    ))
}

fn mkfifo(path: &Path) -> io::Result<()> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid C string.
    cvt(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }).map(drop)
}

/// Forks a child that writes its CLOCK_MONOTONIC to `wr` at its first line,
/// then pauses until killed.
fn fork_reporter(wr: RawFd) -> io::Result<i32> {
    // SAFETY: this process is single-threaded, and the child only calls
    // async-signal-safe functions (clock_gettime, write, pause).
    let pid = cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        let ns = monotonic_ns().to_ne_bytes();
        // SAFETY: writing 8 bytes from a valid buffer; pause has no
        // preconditions.
        unsafe {
            libc::write(wr, ns.as_ptr().cast(), 8);
            loop {
                libc::pause();
            }
        }
    }
    Ok(pid)
}

/// The floor: the same kill → reap → fork → first line sequence, done by
/// this process itself with no forkroot code on the path. Its rounds are
/// run one by one between a row's own, so that both saw the same machine
/// (each right after a replacement's first line, while the root may still
/// be finishing that restart: its log line, the set-up report).
struct Floor {
    rd: OwnedFd,
    wr: OwnedFd,
    /// The child that reported last, pausing; `None` once it is reaped
    /// and before the next is forked.
    pid: Option<i32>,
}

impl Floor {
    /// The pipe and the first child, reported and paused.
    fn new() -> io::Result<Floor> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
        // SAFETY: pipe2 just created both descriptors; we own them.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let pid = Some(fork_reporter(wr.as_raw_fd())?);
        let mut floor = Floor { rd, wr, pid };
        floor.read_ns()?;
        Ok(floor)
    }

    /// One round: the nanoseconds from the kill of the last child to the
    /// first line of the next.
    fn round(&mut self) -> io::Result<u64> {
        let pid = self
            .pid
            .take()
            .ok_or_else(|| io::Error::other("no floor child"))?;
        let t0 = monotonic_ns();
        // SAFETY: kill and waitpid have no memory preconditions; `pid` is
        // our child, not yet reaped (taken out of `self.pid` first, so that
        // an error below leaves no reaped pid for `drop` to signal).
        unsafe {
            cvt(libc::kill(pid, libc::SIGKILL))?;
            cvt(libc::waitpid(pid, std::ptr::null_mut(), 0))?;
        }
        self.pid = Some(fork_reporter(self.wr.as_raw_fd())?);
        Ok(self.read_ns()?.saturating_sub(t0))
    }

    /// The CLOCK_MONOTONIC the last child wrote at its first line.
    fn read_ns(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            let mut pfd = libc::pollfd {
                fd: self.rd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if cvt(unsafe { libc::poll(&mut pfd, 1, READ_TIMEOUT.as_millis() as i32) })? == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "child silent"));
            }
            // SAFETY: the rest of `b` is writable.
            let r =
                unsafe { libc::read(self.rd.as_raw_fd(), b[got..].as_mut_ptr().cast(), 8 - got) };
            if r <= 0 {
                return Err(io::Error::last_os_error());
            }
            got += r as usize;
        }
        Ok(u64::from_ne_bytes(b))
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: as in `round`: our child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}
