//! `flaky`: lives for a random time (exponentially distributed with mean
//! `mean_life`, default 5s), then kills itself with `signal` (default
//! SIGSEGV) — a stand-in for a daemon with a bug.

use std::time::Duration;

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
    Setting::signal("signal", "the signal it dies by").default_signal(libc::SIGSEGV),
]);

fn main(ctx: &mut Context<'_>) -> i32 {
    let mean: Duration = ctx.arg("mean_life");
    let signal: i32 = ctx.arg("signal");
    let life = mean.mul_f64(-Rng::seeded().unit().ln());
    tracing::info!(life = ?life, "will die");
    ctx.steady();
    if !ctx.sleep(life) {
        return 0;
    }
    forkroot::sys::die_by(signal)
}
