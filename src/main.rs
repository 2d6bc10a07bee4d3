//! `forkroot`: the stock binary, the command line of the library with the
//! built-in daemons (`forkroot-daemons`) as its kinds.

use std::process::ExitCode;

/// Enforces "no allocation after fork" in daemons that declare their steady
/// state (`Context::steady`); in the root it only forwards to the system.
#[global_allocator]
static ALLOC: forkroot::alloc::Guarded = forkroot::alloc::Guarded::new();

fn main() -> ExitCode {
    forkroot::cli::main(&forkroot_daemons::registry(), forkroot_daemons::DEMO)
}
