//! The daemons built into the forkroot binary.
//!
//! Each module declares its [`forkroot::Kind`] (name, entry point and
//! settings) as a `const KIND`, and [`registry`] registers them; the binary
//! forks them without exec.

mod counter;
mod flaky;
mod idle;
mod kv;
mod probe;
mod util;

use forkroot::Registry;

/// Every built-in kind, with the demo tree `forkroot run` starts when given
/// no `--config` (`demo.toml`).
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.add(counter::KIND)
        .add(kv::KIND)
        .add(idle::KIND)
        .add(flaky::KIND)
        .add(probe::KIND)
        .demo(include_str!("demo.toml"));
    r
}
