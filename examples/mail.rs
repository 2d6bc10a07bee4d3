//! An exec'd program that uses its mailbox (`Context::send`, `recv`,
//! `whereis`), in one of four roles given as its first argument:
//!
//! - `recv OUT`: writes `start PID` to OUT, then each message it receives
//!   as a line (`FROM BODY-AS-TEXT`); a message of the `pattern` shape
//!   (below) is checked byte for byte and written as `FROM ok N` or
//!   `FROM torn N`; a DOWN or EXIT as `Down NAME pid PID REASON restarts
//!   N`.
//! - `watch NAME OUT`: monitors NAME, then does what `recv` does.
//! - `scribble OUT`: sets every bit it can write where monitors could
//!   live (every byte of the post outside the rings, every writable
//!   mapping of a `forkroot:monitors` file it has), writes what it did
//!   (`scribbled post BYTES monitors MAPPINGS BYTES`), then does what
//!   `recv` does.
//! - `where NAME OUT`: writes what `whereis(NAME)` says whenever it
//!   changes (`NAME pid PID STATE restarts N`).
//! - `send TO TEXT OUT`: sends TEXT to TO once, as soon as a daemon of
//!   that name exists (until then `NoSuchName`: it may be one a reload
//!   adds), writes `sent` to OUT and idles.
//! - `burst TO N OUT`: waits until `TO` has no process (`whereis`), sends
//!   it the numbers 0..N, then writes `sent N` to OUT and idles.
//! - `pattern TO SIZE`: sends `TO` messages of SIZE bytes, each its
//!   sequence number (8 bytes) repeated, as fast as the mailbox takes them.
//! - `errors TO OUT`: sends `TO` (which never reads) until its mailbox is
//!   full, then to a name that does not exist and a message too large,
//!   writing each outcome as a line of OUT.
//!
//! ```toml
//! [[daemon]]
//! name = "inbox"
//! exec = ["target/debug/examples/mail", "recv", "/tmp/inbox.out"]
//! mailbox = 1024
//! ```

use std::fs::OpenOptions;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use forkroot::mailbox::{MessageKind, SendError};
use forkroot::Context;

fn main() -> ExitCode {
    let mut ctx = match Context::from_env() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("mail: {e}");
            return ExitCode::from(2);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let open = |path: &str| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the output file")
    };
    match arg(0) {
        "recv" | "watch" | "scribble" => {
            let out_at = if arg(0) == "watch" { 2 } else { 1 };
            let mut out = open(arg(out_at));
            if arg(0) == "watch" {
                ctx.monitor(arg(1)).expect("monitor");
            }
            if arg(0) == "scribble" {
                writeln!(out, "{}", scribble()).expect("write");
            }
            writeln!(out, "start {}", std::process::id()).expect("write");
            loop {
                match ctx.recv(Some(Duration::from_millis(200))) {
                    Ok(Some(m)) => {
                        let line = match (m.kind, m.gone, check_pattern(&m.body)) {
                            (MessageKind::User, _, Some((n, true))) => format!("{} ok {n}", m.from),
                            (MessageKind::User, _, Some((n, false))) => {
                                format!("{} torn {n}", m.from)
                            }
                            (MessageKind::User, _, None) => {
                                format!("{} {}", m.from, String::from_utf8_lossy(&m.body))
                            }
                            (kind, Some(g), _) => format!(
                                "{kind:?} {} pid {} {} restarts {}",
                                g.name, g.pid, g.reason, g.restarts
                            ),
                            (kind, None, _) => format!("{kind:?} unreadable"),
                        };
                        writeln!(out, "{line}").expect("write");
                    }
                    Ok(None) => {
                        if ctx.stopping() {
                            let s = ctx.mailbox_stats().expect("a mailbox");
                            writeln!(out, "skipped {} corrupt {}", s.lost_uncommitted, s.corrupt)
                                .expect("write");
                            return ExitCode::SUCCESS;
                        }
                    }
                    Err(e) => {
                        writeln!(out, "error {e}").expect("write");
                        return ExitCode::from(1);
                    }
                }
            }
        }
        "where" => {
            let mut out = open(arg(2));
            let mut last = String::new();
            while ctx.sleep(Duration::from_millis(5)) {
                let w = ctx.whereis(arg(1)).expect("a known name");
                let pid = w.pid.map_or("none".to_owned(), |p| p.to_string());
                let line = format!("{} pid {pid} {:?} restarts {}", arg(1), w.state, w.restarts);
                if line != last {
                    writeln!(out, "{line}").expect("write");
                    last = line;
                }
            }
        }
        "send" => {
            loop {
                match ctx.send(arg(1), arg(2).as_bytes()) {
                    Ok(()) => break,
                    Err(SendError::NoSuchName(_)) => {
                        if !ctx.sleep(Duration::from_millis(20)) {
                            return ExitCode::SUCCESS;
                        }
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            writeln!(open(arg(3)), "sent").expect("write");
            while ctx.sleep(Duration::from_secs(1)) {}
        }
        "burst" => {
            let (to, n) = (arg(1), arg(2).parse::<u32>().expect("a count"));
            while ctx.whereis(to).expect("a known name").pid.is_some() {
                if !ctx.sleep(Duration::from_millis(1)) {
                    return ExitCode::SUCCESS;
                }
            }
            for i in 0..n {
                ctx.send(to, i.to_string().as_bytes()).expect("send");
            }
            writeln!(open(arg(3)), "sent {n}").expect("write");
            while ctx.sleep(Duration::from_secs(1)) {}
        }
        "pattern" => {
            let (to, size) = (arg(1), arg(2).parse::<usize>().expect("a size"));
            let mut body = vec![0u8; size];
            let mut n = 0u64;
            loop {
                for chunk in body.chunks_mut(8) {
                    chunk.copy_from_slice(&n.to_le_bytes()[..chunk.len()]);
                }
                match ctx.send(to, &body) {
                    Ok(()) => n += 1,
                    Err(SendError::Full { .. }) => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        "errors" => {
            let (to, mut out) = (arg(1), open(arg(2)));
            let mut sent = 0;
            let full = loop {
                match ctx.send(to, b"x") {
                    Ok(()) => sent += 1,
                    Err(e) => break e,
                }
            };
            writeln!(out, "sent {sent} then: {full}").expect("write");
            let e = ctx.send("nobody", b"x").expect_err("no such daemon");
            writeln!(out, "{e}").expect("write");
            let e = ctx.send(to, &vec![0; 100_000]).expect_err("too large");
            writeln!(out, "{e}").expect("write");
            writeln!(out, "done").expect("write");
            while ctx.sleep(Duration::from_secs(1)) {}
        }
        other => {
            eprintln!(
                "mail: unknown role {other:?} (recv, watch, scribble, send, where, burst, pattern, errors)"
            );
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// For a body of the `pattern` shape (at least 16 bytes, a multiple of 8):
/// its number, and whether every 8 bytes hold it.
fn check_pattern(body: &[u8]) -> Option<(u64, bool)> {
    if body.len() < 16 || body.len() % 8 != 0 {
        return None;
    }
    let n = u64::from_le_bytes(body[..8].try_into().ok()?);
    let whole = body.chunks(8).all(|c| c == n.to_le_bytes());
    Some((n, whole))
}

/// Each line of `/proc/self/maps`: start, end, permissions, path (its
/// first word).
fn mappings() -> Vec<(usize, usize, String, String)> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let path = f.nth(3).unwrap_or("").to_owned();
            let (a, b) = range.split_once('-')?;
            let a = usize::from_str_radix(a, 16).ok()?;
            let b = usize::from_str_radix(b, 16).ok()?;
            Some((a, b, perms.to_owned(), path))
        })
        .collect()
}

/// `scribble`: all ones over every byte of the post that no ring holds
/// (where its registry says the rings are) and over every writable mapping
/// of a `forkroot:monitors` file; returns what it wrote.
fn scribble() -> String {
    use forkroot::mailbox::{Directory, Entry};
    let maps = mappings();
    let find = |name: &str| maps.iter().find(|m| m.3.contains(name));
    let reg = find("memfd:forkroot:registry").expect("the registry is mapped");
    let post = find("memfd:forkroot:post").expect("the post is mapped");
    // SAFETY: the registry mapping starts with a Directory (the library
    // checked it when it attached); integers only.
    let dir = unsafe { &*(reg.0 as *const Directory) };
    let rings: Vec<(usize, usize)> = (0..dir.count as usize)
        .map(|k| {
            let at = reg.0 + size_of::<Directory>() + k * size_of::<Entry>();
            // SAFETY: the library checked that the registry holds `count`
            // entries; they are 8-aligned; ring_offset/ring_len are written
            // before the entry is named.
            let e = unsafe { &*(at as *const Entry) };
            (e.ring_offset as usize, e.ring_len as usize)
        })
        .collect();
    let mut post_bytes = 0;
    for off in (0..post.1 - post.0).step_by(8) {
        if rings
            .iter()
            .any(|&(o, l)| l > 0 && off + 8 > o && off < o + l)
        {
            continue;
        }
        // SAFETY: not sound by design: this is the attack. The word lies in
        // the post, mapped read-write, outside every ring.
        unsafe { std::ptr::write_volatile((post.0 + off) as *mut u64, u64::MAX) };
        post_bytes += 8;
    }
    let (mut rows, mut row_bytes) = (0, 0);
    for m in maps
        .iter()
        .filter(|m| m.3.contains("memfd:forkroot:monitors"))
    {
        if !m.2.starts_with("rw") {
            continue;
        }
        rows += 1;
        for at in (m.0..m.1).step_by(8) {
            // SAFETY: as above: a writable mapping of this process.
            unsafe { std::ptr::write_volatile(at as *mut u64, u64::MAX) };
            row_bytes += 8;
        }
    }
    format!("scribbled post {post_bytes} monitors {rows} {row_bytes}")
}
