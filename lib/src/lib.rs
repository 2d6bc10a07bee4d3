//! forkroot: Erlang/OTP-style supervision for native Unix processes.
//!
//! This crate is what a daemon author links. A daemon is a function that
//! gets a [`Context`]: its name, its region of shared memory (which the
//! root owns, so a replacement after a crash finds the state where it was),
//! read-only views of its siblings' regions, why it was last restarted, and
//! its settings. Registered under a kind name in a [`Registry`], it runs in
//! the author's own binary, which is one line and has the whole `forkroot`
//! command line (`run`, `check`, `ctl`, `kinds`):
//!
//! ```no_run
//! use forkroot::{Context, Kind, Registry, Setting};
//!
//! const TICKER: Kind = Kind::new("ticker", "counts ticks across restarts", ticker)
//!     .settings(&[Setting::int("step", "added per tick").default_int(1).range(1, 1000)]);
//!
//! fn ticker(ctx: &mut Context<'_>) -> i32 {
//!     let step: u64 = ctx.arg("step");
//!     let Ok((mut ticks, _resumed)) = ctx.checkpoints::<u64>(1) else { return 3 };
//!     while ctx.sleep(std::time::Duration::from_secs(1)) {
//!         *ticks += step;
//!         ticks.commit(); // survives a SIGKILL: the next process resumes here
//!     }
//!     0
//! }
//!
//! forkroot::main!(Registry::new().add(TICKER));
//! ```
//!
//! # What an author uses
//!
//! - [`main!`] (or [`main()`]), [`Registry`], [`Kind`], [`Setting`]: the
//!   binary, its kinds and their settings.
//! - [`Context`] ([`daemon`]): what a daemon is given; [`checkpoint`]
//!   (state that survives crashes, through [`Context::checkpoints`]),
//!   [`transaction`] (risky work in a forked child), [`state`] (typed
//!   layouts in the region), [`region::Plain`] (what may live there).
//! - [`mutex`] (robust locks), [`ring`] and [`pool`] (shared-memory
//!   structures), [`log`] and [`trace`] (the crash-surviving flight log and
//!   its `tracing` layer), [`alloc`] (no allocation after fork),
//!   [`config`] (the configuration, settings, sizes and durations),
//!   [`notify`] (readiness).
//!
//! The root's own machinery (`root`, `cli`, `control`, `subscriber`, `sync`,
//! `sys`) is public for the `forkroot` binary and the tests, hidden from
//! these docs, and not an API to build on.

#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod alloc;
pub mod checkpoint;
#[doc(hidden)]
pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod control;
pub mod daemon;
mod handoff;
pub mod listen;
pub mod log;
pub mod mailbox;
pub mod mutex;
pub mod notify;
pub mod pool;
mod prologue;
pub mod region;
pub mod ring;
// Internals' docs are read with --document-private-items, where links to
// their private items resolve.
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod root;
pub mod state;
#[doc(hidden)]
pub mod subscriber;
#[doc(hidden)]
pub mod sync;
#[doc(hidden)]
#[allow(rustdoc::private_intra_doc_links)]
pub mod sys;
pub mod trace;
pub mod transaction;

pub use config::{Args, Setting};
pub use daemon::{AttachError, Context, Entry, ExitReason, Kind, Registry, Resumed};
pub use sys::{Pid, Signal};

/// The whole `forkroot` command line (`run`, `check`, `ctl`, `kinds`,
/// `--help`, the documented exit codes) for a binary whose daemon kinds
/// are `registry`.
///
/// Prefer [`main!`], which calls this and also installs
/// [`alloc::Guarded`] as the global allocator; a binary calling this
/// directly should install it itself, or [`Context::steady`] cannot
/// forbid allocation (`run` warns when it is missing).
pub fn main(registry: &Registry) -> std::process::ExitCode {
    cli::main(registry)
}

/// Declares the binary's `fn main` as the `forkroot` command line with the
/// kinds of a [`Registry`] expression, and installs [`alloc::Guarded`] as
/// its global allocator (so [`Context::steady`] can forbid allocation):
///
/// ```no_run
/// # use forkroot::{Context, Kind, Registry};
/// # fn idle(ctx: &mut Context<'_>) -> i32 { while ctx.sleep(std::time::Duration::from_secs(1)) {} 0 }
/// const IDLE: Kind = Kind::new("idle", "does nothing", idle);
///
/// forkroot::main!(Registry::new().add(IDLE));
/// ```
///
/// Use it once, at the root of a binary crate (it declares `fn main`); the
/// binary must not declare another `#[global_allocator]`.
#[macro_export]
macro_rules! main {
    ($registry:expr $(,)?) => {
        #[global_allocator]
        static FORKROOT_GUARDED_ALLOC: $crate::alloc::Guarded = $crate::alloc::Guarded::new();

        fn main() -> ::std::process::ExitCode {
            $crate::main(&$registry)
        }
    };
}
