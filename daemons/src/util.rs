//! Small helpers the built-in daemons share: ending over a setting that
//! cannot be used, and a tiny random number generator (no allocation, no
//! dependency).

use forkroot::Context;

/// Ends the daemon over a setting whose value was valid in the config but
/// does not work here (a file that cannot be opened, a sibling that is not
/// there), with exit code 2 and a message naming the setting.
pub(crate) fn bad_arg(ctx: &Context<'_>, key: &str, why: &str) -> ! {
    eprintln!("forkroot: daemon {:?}: args.{key}: {why}", ctx.name());
    // Not process::exit: that would run exit handlers and flush stdio
    // buffers inherited from the root.
    forkroot::sys::exit_now(2)
}

/// xorshift64*: plenty for random lifetimes, seeded per process.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded() -> Rng {
        let seed =
            forkroot::sys::monotonic_ns() ^ (u64::from(forkroot::sys::getpid().as_u32()) << 32);
        Rng(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in (0, 1].
    pub(crate) fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}
