//! `idle`: stays up, heartbeats once a second, does nothing else.

use std::time::Duration;

use forkroot::{Context, Kind};

/// The kind: no settings.
pub(crate) const KIND: Kind = Kind::new("idle", "stays up, heartbeats, does nothing", main);

fn main(ctx: &mut Context<'_>) -> i32 {
    ctx.steady();
    while ctx.sleep(Duration::from_secs(1)) {}
    0
}
