//! Mailbox benchmark: send→recv latency between two processes through
//! their mailboxes (`Mailbox::send` by name, `Mailbox::recv_into`), next to
//! a pipe and a Unix socketpair measured in the same run.
//!
//! `cargo bench -p forkroot --bench mailbox`
//!
//! A parent and a forked child stand in for two daemons of a tree of two
//! (a `PostOffice` made as the root makes it, writer ids assigned with
//! `begin`). Ping-pong of one 64-byte message; one-way = half the round
//! trip; the median round trip of each repetition, then the median over
//! repetitions.

use std::time::Instant;

use forkroot::mailbox::{Mailbox, PostOffice, Shape};

#[path = "../tests/common/mod.rs"]
mod common;

const MSG: usize = 64;
const REPS: usize = 5;
const PINGS: usize = 20_000;
/// Fewer round trips for the kernel paths, which are ~100x slower.
const FD_PINGS: usize = 4_000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mailbox_latency(pings: usize) -> f64 {
    let shapes = [
        Shape {
            name: "a",
            capacity: 64,
            message: MSG as u32,
        },
        Shape {
            name: "b",
            capacity: 64,
            message: MSG as u32,
        },
    ];
    let mut office = PostOffice::create(&shapes, 0).expect("post office");
    let (ida, idb) = (office.begin(0, false), office.begin(1, false));
    let post = office.post();
    let pid = common::fork();
    if pid == 0 {
        let mut me = Mailbox::new(post, 1, idb);
        let mut buf = [0u8; MSG];
        for _ in 0..pings {
            let got = me
                .recv_into(&mut buf, None)
                .expect("recv")
                .expect("a message");
            me.send("a", &buf[..got.len]).expect("send");
        }
        common::child_exit();
    }
    let mut me = Mailbox::new(post, 0, ida);
    let mut buf = [7u8; MSG];
    let mut rtts = Vec::with_capacity(pings);
    for _ in 0..pings {
        let t = Instant::now();
        me.send("b", &buf).expect("send");
        let got = me
            .recv_into(&mut buf, None)
            .expect("recv")
            .expect("a message");
        rtts.push(t.elapsed().as_nanos() as f64);
        assert_eq!(got.len, MSG);
    }
    common::reap_ok(pid);
    median(&mut rtts) / 2.0
}

/// `(parent writes, child reads)`, `(child writes, parent reads)`.
type Fds = ((i32, i32), (i32, i32));

fn pipes() -> Fds {
    let (mut a, mut b) = ([0; 2], [0; 2]);
    // SAFETY: valid out arrays of two fds.
    unsafe {
        assert_eq!(libc::pipe(a.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(b.as_mut_ptr()), 0);
    }
    ((a[1], a[0]), (b[1], b[0]))
}

fn socketpair() -> Fds {
    let mut s = [0; 2];
    // SAFETY: valid out array of two fds.
    unsafe {
        assert_eq!(
            libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, s.as_mut_ptr()),
            0
        );
    }
    ((s[0], s[1]), (s[1], s[0]))
}

fn close(fds: Fds) {
    for fd in [fds.0 .0, fds.0 .1, fds.1 .0, fds.1 .1] {
        // SAFETY: our descriptors; a second close of a socketpair end is EBADF, harmless.
        unsafe { libc::close(fd) };
    }
}

fn fd_latency(fds: Fds, pings: usize) -> f64 {
    let ((down_w, down_r), (up_w, up_r)) = fds;
    let pid = common::fork();
    if pid == 0 {
        let mut buf = [0u8; MSG];
        for _ in 0..pings {
            common::read_exact(down_r, &mut buf);
            common::write_all(up_w, &buf);
        }
        common::child_exit();
    }
    let mut buf = [7u8; MSG];
    let mut rtts = Vec::with_capacity(pings);
    for _ in 0..pings {
        let t = Instant::now();
        common::write_all(down_w, &buf);
        common::read_exact(up_r, &mut buf);
        rtts.push(t.elapsed().as_nanos() as f64);
    }
    common::reap_ok(pid);
    close(fds);
    median(&mut rtts) / 2.0
}

fn reps(mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..REPS).map(|_| f()).collect();
    median(&mut v)
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --benches` only
    // check that it runs, on fewer messages.
    let scale = if std::env::args().any(|a| a == "--bench") {
        1
    } else {
        20
    };
    let started = Instant::now();
    println!("mailbox bench: 64-byte messages, 2 processes, median of {REPS} repetitions");
    let mail = reps(|| mailbox_latency(PINGS / scale));
    let pipe = reps(|| fd_latency(pipes(), FD_PINGS / scale));
    let sock = reps(|| fd_latency(socketpair(), FD_PINGS / scale));
    println!("one-way send→recv latency (half round trip, median):");
    println!("  mailbox     {mail:>9.0} ns");
    println!(
        "  pipe        {pipe:>9.0} ns   mailbox is {:.1}x faster",
        pipe / mail
    );
    println!(
        "  socketpair  {sock:>9.0} ns   mailbox is {:.1}x faster",
        sock / mail
    );
    println!("({:.1} s)", started.elapsed().as_secs_f64());
}
