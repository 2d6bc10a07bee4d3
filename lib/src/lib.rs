//! forkroot: Erlang/OTP-style supervision for native Unix processes.
//!
//! This crate is what a daemon author links. A daemon gets a [`Context`]:
//! its name, its region of shared memory (which outlives the daemon, so a
//! replacement finds the state where it was), read-only views of its
//! siblings' regions, and why it was last restarted. The same crate holds the
//! root process ([`root`]), which the `forkroot` binary runs.
//!
//! Layout: [`sys`] is the only module that calls libc or nix directly; every
//! other module goes through its thin, checked wrappers.

#![warn(missing_docs)]

pub mod alloc;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
mod handoff;
pub mod log;
pub mod logging;
pub mod mutex;
pub mod notify;
pub mod pool;
mod prologue;
pub mod region;
pub mod ring;
pub mod root;
pub mod state;
pub mod sync;
pub mod sys;
pub mod trace;
pub mod transaction;

pub use daemon::{AttachError, Context, Entry, ExitReason, Registry, Resumed};
