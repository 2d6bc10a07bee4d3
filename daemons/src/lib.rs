//! The daemons built into the forkroot binary.
//!
//! Each is a plain [`forkroot::Entry`] registered under its kind name by
//! [`registry`]; the binary forks them without exec.

mod counter;
mod flaky;
mod idle;
mod kv;
mod probe;
mod util;

use forkroot::Registry;

/// The demo tree `forkroot run` starts when given no `--config`.
pub const DEMO: &str = include_str!("demo.toml");

/// Every built-in kind.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.add(
        "counter",
        "emits 1, 2, 3, ... to a file; no number skipped or repeated across crashes",
        counter::main,
    )
    .add(
        "kv",
        "key-value store speaking RESP2/RESP3 (redis-cli, redis-benchmark, redis-py); acknowledged writes survive crashes",
        kv::main,
    )
    .add("idle", "stays up, heartbeats, does nothing", idle::main)
    .add(
        "flaky",
        "crashes after a random lifetime (mean_life) with a chosen signal",
        flaky::main,
    )
    .add(
        "probe",
        "diagnostics for tests and benchmarks: reports its start, pokes at siblings",
        probe::main,
    );
    r
}
