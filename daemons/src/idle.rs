//! `idle`: stays up and does nothing; with a `watchdog`, it heartbeats
//! at half of it, without one it sleeps until it is told to stop.

use std::time::Duration;

use forkroot::{Context, Kind};

/// The kind: no settings.
pub(crate) const KIND: Kind = Kind::new(
    "idle",
    "stays up, does nothing (heartbeats at half of its watchdog, if any)",
    main,
);

fn main(ctx: &mut Context<'_>) -> i32 {
    ctx.steady();
    // Without a watchdog nothing reads the heartbeat's time; waking once
    // a second for it cost some 20 µs of CPU a wake-up, beside 3,000
    // daemons a tenth of a CPU.
    let nap = ctx.watchdog().map_or(Duration::MAX, |w| w / 2);
    while ctx.sleep(nap) {}
    0
}
