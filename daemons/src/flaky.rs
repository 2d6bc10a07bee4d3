//! `flaky`: lives for a random time (exponentially distributed with mean
//! `mean_life`, default 5s), then kills itself with `signal` (default
//! SIGSEGV; one whose default action ends a process) — a stand-in for a
//! daemon with a bug.

use std::time::Duration;

use forkroot::config::Value;
use forkroot::{Context, Kind, Setting};

use crate::util::Rng;

/// The kind, with its settings.
pub(crate) const KIND: Kind = Kind::new(
    "flaky",
    "crashes after a random lifetime (mean_life) with a chosen signal",
    main,
)
.settings(&[
    Setting::duration("mean_life", "mean lifetime (exponentially distributed)")
        .default_duration(Duration::from_secs(5))
        .between(Duration::from_millis(1), Duration::from_secs(86_400)),
    Setting::signal("signal", "the signal it dies by")
        .default_signal(libc::SIGSEGV)
        .check(check_signal),
]);

/// `signal` must end the process by default: one that is ignored
/// (SIGCHLD), stops (SIGSTOP) or continues (SIGCONT) it would leave a
/// daemon that never dies, or one that merely exits.
fn check_signal(v: Value<'_>) -> Result<(), String> {
    const NOT_FATAL: &[i32] = &[
        libc::SIGCHLD,
        libc::SIGCONT,
        libc::SIGSTOP,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGURG,
        libc::SIGWINCH,
    ];
    match v {
        Value::Signal(s) if NOT_FATAL.contains(&s) => Err(format!(
            "{v} does not end a process (use one that does, such as SIGSEGV, SIGABRT, SIGKILL)"
        )),
        _ => Ok(()),
    }
}

fn main(ctx: &mut Context<'_>) -> i32 {
    let mean: Duration = ctx.arg("mean_life");
    let signal: forkroot::Signal = ctx.arg("signal");
    let life = mean.mul_f64(-Rng::seeded().unit().ln());
    tracing::info!(life = ?life, "will die");
    ctx.steady();
    if !ctx.sleep(life) {
        return 0;
    }
    forkroot::sys::die_by(signal)
}
