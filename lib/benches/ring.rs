//! Ring benchmark: one-way latency and throughput between two processes,
//! next to a pipe and a Unix socketpair measured in the same run.
//!
//! `cargo bench -p forkroot --bench ring`
//!
//! - latency: ping-pong of one 64-byte message between a parent and a forked
//!   child; one-way = half the round trip; the median round trip of each
//!   repetition, then the median over repetitions.
//! - throughput: a child sends 64-byte messages as fast as it can, the
//!   parent receives them one message per call; messages/s from the first
//!   message received to the last, median over repetitions.

use std::hint::black_box;
use std::time::Instant;

use forkroot::ring::{self, Config, Kind, Ring};

#[path = "../tests/common/mod.rs"]
mod common;

const MSG: usize = 64;
const REPS: usize = 5;
const PINGS: usize = 20_000;
/// Fewer round trips for the kernel paths, which are ~100x slower.
const FD_PINGS: usize = 4_000;

fn new_ring() -> Ring<'static> {
    let cfg = Config {
        kind: Kind::Spsc,
        capacity: 1024,
        slot_size: MSG as u32,
        checksum: false,
    };
    let len = ring::required_size(&cfg).expect("config");
    // SAFETY: a fresh mapping, never unmapped: valid for 'static.
    unsafe { ring::init(common::map_shared(len), len, &cfg) }.expect("init")
}

/// A byte stream used message by message: a pipe pair or a socketpair.
#[derive(Clone, Copy)]
struct Fds {
    /// parent writes, child reads
    down: (i32, i32),
    /// child writes, parent reads
    up: (i32, i32),
}

fn pipes() -> Fds {
    let mut a = [0; 2];
    let mut b = [0; 2];
    // SAFETY: valid out arrays of two fds.
    unsafe {
        assert_eq!(libc::pipe(a.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(b.as_mut_ptr()), 0);
    }
    Fds {
        down: (a[1], a[0]),
        up: (b[1], b[0]),
    }
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
    // Both directions over one pair: parent uses s[0], child s[1].
    Fds {
        down: (s[0], s[1]),
        up: (s[1], s[0]),
    }
}

fn close(fds: Fds) {
    for fd in [fds.down.0, fds.down.1, fds.up.0, fds.up.1] {
        // SAFETY: our descriptors; double close of a socketpair end returns EBADF, harmless.
        unsafe { libc::close(fd) };
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median one-way latency in ns of one repetition, from round-trip samples.
fn rtts_to_oneway(mut rtts: Vec<f64>) -> f64 {
    median(&mut rtts) / 2.0
}

fn ring_latency() -> f64 {
    let down = new_ring();
    let up = new_ring();
    let pid = common::fork();
    if pid == 0 {
        let mut c = down.consumer().expect("consumer");
        let p = up.producer().expect("producer");
        let mut buf = [0u8; MSG];
        for _ in 0..PINGS {
            c.recv(&mut buf).expect("recv");
            p.send_timeout(&buf, None).expect("send");
        }
        common::child_exit();
    }
    let p = down.producer().expect("producer");
    let mut c = up.consumer().expect("consumer");
    let mut buf = [7u8; MSG];
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t = Instant::now();
        p.send_timeout(&buf, None).expect("send");
        c.recv(&mut buf).expect("recv");
        rtts.push(t.elapsed().as_nanos() as f64);
    }
    common::reap_ok(pid);
    rtts_to_oneway(rtts)
}

fn fd_latency(fds: Fds) -> f64 {
    let pid = common::fork();
    if pid == 0 {
        let mut buf = [0u8; MSG];
        for _ in 0..FD_PINGS {
            common::read_exact(fds.down.1, &mut buf);
            common::write_all(fds.up.0, &buf);
        }
        common::child_exit();
    }
    let mut buf = [7u8; MSG];
    let mut rtts = Vec::with_capacity(FD_PINGS);
    for _ in 0..FD_PINGS {
        let t = Instant::now();
        common::write_all(fds.down.0, &buf);
        common::read_exact(fds.up.1, &mut buf);
        rtts.push(t.elapsed().as_nanos() as f64);
    }
    common::reap_ok(pid);
    close(fds);
    rtts_to_oneway(rtts)
}

/// Messages per second of one repetition.
fn ring_throughput(n: usize) -> f64 {
    let r = new_ring();
    let pid = common::fork();
    if pid == 0 {
        let p = r.producer().expect("producer");
        let mut msg = [0u8; MSG];
        for i in 0..n {
            msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
            p.send_timeout(&msg, None).expect("send");
        }
        common::child_exit();
    }
    let mut c = r.consumer().expect("consumer");
    let mut buf = [0u8; MSG];
    c.recv(&mut buf).expect("recv");
    let t = Instant::now();
    for _ in 1..n {
        c.recv(&mut buf).expect("recv");
        black_box(&buf);
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(
        u64::from_le_bytes(buf[..8].try_into().unwrap()),
        n as u64 - 1
    );
    common::reap_ok(pid);
    (n - 1) as f64 / secs
}

fn fd_throughput(fds: Fds, n: usize) -> f64 {
    let pid = common::fork();
    if pid == 0 {
        let mut msg = [0u8; MSG];
        for i in 0..n {
            msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
            common::write_all(fds.down.0, &msg);
        }
        common::child_exit();
    }
    let mut buf = [0u8; MSG];
    common::read_exact(fds.down.1, &mut buf);
    let t = Instant::now();
    for _ in 1..n {
        common::read_exact(fds.down.1, &mut buf);
        black_box(&buf);
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(
        u64::from_le_bytes(buf[..8].try_into().unwrap()),
        n as u64 - 1
    );
    common::reap_ok(pid);
    close(fds);
    (n - 1) as f64 / secs
}

fn reps(mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..REPS).map(|_| f()).collect();
    median(&mut v)
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --benches` only
    // check that it runs, on fewer messages.
    let full = std::env::args().any(|a| a == "--bench");
    run(if full { 1 } else { 20 });
}

fn run(scale: usize) {
    let started = Instant::now();
    println!("ring bench: 64-byte messages, 2 processes, median of {REPS} repetitions");
    let lat_ring = reps(ring_latency);
    let lat_pipe = reps(|| fd_latency(pipes()));
    let lat_sock = reps(|| fd_latency(socketpair()));
    println!("one-way latency (half round trip, median):");
    println!("  ring        {lat_ring:>9.0} ns");
    println!(
        "  pipe        {lat_pipe:>9.0} ns   ring is {:.1}x faster",
        lat_pipe / lat_ring
    );
    println!(
        "  socketpair  {lat_sock:>9.0} ns   ring is {:.1}x faster",
        lat_sock / lat_ring
    );
    let thr_ring = reps(|| ring_throughput(1_000_000 / scale));
    let thr_pipe = reps(|| fd_throughput(pipes(), 200_000 / scale));
    let thr_sock = reps(|| fd_throughput(socketpair(), 200_000 / scale));
    println!("throughput (one message per send/recv call, median):");
    println!("  ring        {:>9.2} M msg/s", thr_ring / 1e6);
    println!(
        "  pipe        {:>9.2} M msg/s   ring is {:.1}x",
        thr_pipe / 1e6,
        thr_ring / thr_pipe
    );
    println!(
        "  socketpair  {:>9.2} M msg/s   ring is {:.1}x",
        thr_sock / 1e6,
        thr_ring / thr_sock
    );
    println!("({:.1} s)", started.elapsed().as_secs_f64());
}
