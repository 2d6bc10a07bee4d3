//! `flaky`: lives for a random time (exponentially distributed with mean
//! `mean_life`, default 5s), then kills itself with `signal` (default
//! SIGSEGV) — a stand-in for a daemon with a bug.

use std::time::Duration;

use forkroot::Context;

use crate::util::{self, Rng};

pub(crate) fn main(ctx: &mut Context<'_>) -> i32 {
    let mean = util::duration(ctx, "mean_life", Duration::from_secs(5));
    let signal = match util::string(ctx, "signal") {
        None => libc::SIGSEGV,
        Some(name) => match forkroot::config::parse_signal(name) {
            Ok(s) => s,
            Err(e) => util::bad_arg(ctx, "signal", &e),
        },
    };
    let life = mean.mul_f64(-Rng::seeded().unit().ln());
    tracing::info!(life = ?life, "will die");
    ctx.steady();
    if !ctx.sleep(life) {
        return 0;
    }
    forkroot::sys::die_by(signal)
}
