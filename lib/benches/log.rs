//! Flight log record cost next to a write(2) of the same bytes to /dev/null,
//! measured in the same run. `cargo bench -p forkroot --bench log`

use forkroot::log::{FlightLog, Level};
use forkroot::region::LOG_SIZE;
use std::os::fd::AsRawFd as _;
use std::time::Instant;

const REPS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // SAFETY: anonymous shared mapping of LOG_SIZE bytes, no aliasing.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LOG_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(area, libc::MAP_FAILED);
    // SAFETY: the mapping is LOG_SIZE bytes and lives until exit.
    let log = unsafe { FlightLog::init(area.cast(), LOG_SIZE) }.unwrap();
    let text = "request served path=/api/v1/items status=200 bytes=5123 elapsed_us=184";
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let fd = null.as_raw_fd();

    let (mut l, mut w) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        let n = 1_000_000u64;
        let t = Instant::now();
        for i in 0..n {
            log.write(
                Level::Info,
                1234,
                u128::from(i & 1),
                std::hint::black_box(text),
            );
        }
        l.push(t.elapsed().as_nanos() as f64 / n as f64);

        let n = 300_000u64;
        let t = Instant::now();
        for _ in 0..n {
            // SAFETY: writing a live buffer to an open descriptor.
            unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
        }
        w.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    let mut clock = Vec::new();
    for _ in 0..REPS {
        let n = 1_000_000u64;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let t = Instant::now();
        for _ in 0..n {
            // SAFETY: `ts` is a writable timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
            std::hint::black_box(&ts);
        }
        clock.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    println!(
        "clock_gettime(CLOCK_REALTIME) alone, part of every record: {:.1} ns",
        median(clock)
    );
    let (l, w) = (median(l), median(w));
    println!(
        "flight log write ({} bytes of text): {l:.1} ns/record; write(2) to /dev/null: {w:.1} ns; ratio {:.2} (median of {REPS})",
        text.len(),
        l / w
    );

    // Four threads writing at once (a transaction with threads).
    let mut c = Vec::new();
    for _ in 0..REPS {
        let n = 250_000u64;
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..n {
                        log.write(Level::Info, 1234, 0, std::hint::black_box(text));
                    }
                });
            }
        });
        c.push(t.elapsed().as_nanos() as f64 / (4 * n) as f64);
    }
    println!(
        "flight log, 4 threads at once: {:.1} ns/record of wall time (median of {REPS})",
        median(c)
    );
}
