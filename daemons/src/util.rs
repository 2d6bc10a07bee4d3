//! Small helpers the built-in daemons share: reading `[daemon.args]` and a
//! tiny random number generator (no allocation, no dependency).

use std::time::Duration;

use forkroot::Context;

/// A duration setting like `"2s"`, or `default` when absent.
///
/// The config was validated as TOML by the root, but `[daemon.args]` is
/// free-form: a bad value here ends the daemon with exit code 2 and a
/// message naming the setting.
pub(crate) fn duration(ctx: &Context<'_>, key: &str, default: Duration) -> Duration {
    match ctx.args().get(key) {
        None => default,
        Some(toml::Value::String(s)) => match forkroot::config::parse_duration(s.as_str()) {
            Ok(d) => d,
            Err(e) => bad_arg(ctx, key, &e),
        },
        Some(v) => bad_arg(
            ctx,
            key,
            &format!("expected a duration string like \"2s\", found {v}"),
        ),
    }
}

/// An integer setting, or `default` when absent.
pub(crate) fn int(ctx: &Context<'_>, key: &str, default: i64) -> i64 {
    match ctx.args().get(key) {
        None => default,
        Some(toml::Value::Integer(n)) => *n,
        Some(v) => bad_arg(ctx, key, &format!("expected an integer, found {v}")),
    }
}

/// A string setting, if present.
pub(crate) fn string<'a>(ctx: &Context<'a>, key: &str) -> Option<&'a str> {
    match ctx.args().get(key) {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(v) => bad_arg(ctx, key, &format!("expected a string, found {v}")),
    }
}

/// Ends the daemon over a bad `[daemon.args]` setting.
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
        let seed = forkroot::sys::monotonic_ns() ^ ((forkroot::sys::getpid().0 as u64) << 32);
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
