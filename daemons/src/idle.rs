//! `idle`: stays up, heartbeats once a second, does nothing else.

use std::time::Duration;

use forkroot::Context;

pub(crate) fn main(ctx: &mut Context<'_>) -> i32 {
    ctx.steady();
    while ctx.sleep(Duration::from_secs(1)) {}
    0
}
