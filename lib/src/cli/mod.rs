//! The `forkroot` command line: `run`, `check`, `ctl`, `kinds`.
//!
//! The stock binary and an author's own binary are the same program with a
//! different [`Registry`]: both call [`main`], so they cannot drift apart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::root;
use crate::Registry;

mod ctl;

/// Erlang/OTP-style supervision for native Unix processes
#[derive(Parser, Debug)]
// Not a bare `about`: that is the library crate's description, which the
// stock binary and an author's binary would both print.
#[command(name = "forkroot", version, long_about = None, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes of `run`:
  0   stopped cleanly (SIGTERM/SIGINT or `ctl shutdown`), every child reaped
  69  gave up: the top supervisor's restart intensity was exceeded
  70  internal error of the root itself
  78  configuration error: nothing was started";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the tree in the foreground (without --config: the binary's demo tree, if it has one).
    Run {
        /// The tree's TOML configuration.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print every problem found.
    Check {
        /// The tree's TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Talk to a running root over its control socket.
    #[command(after_help = ctl::EXIT_CODES)]
    Ctl {
        /// The root's control socket (default: /run/forkroot.sock for root;
        /// for other users $XDG_RUNTIME_DIR/forkroot.sock, else /run/forkroot.sock).
        #[arg(long, short, conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// Take the socket from this config file's `[root] control`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ctl::Ctl,
    },
    /// Print the daemon kinds built into this binary, with their settings.
    Kinds,
}

/// The whole command line (`run`, `check`, `ctl`, `kinds`, `--help`) for a
/// binary whose daemon kinds are `registry`; `run` without `--config`
/// starts the registry's demo tree ([`Registry::demo`]), if it has one.
///
/// This is [`crate::main()`]; [`crate::main!`] calls it and also installs the
/// allocator that `Context::steady` relies on.
pub fn main(registry: &Registry) -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { config } => match load(Some(&config), registry) {
            Ok(c) => {
                println!(
                    "{}: ok ({} daemon{}, {} group{})",
                    config.display(),
                    c.daemons.len(),
                    if c.daemons.len() == 1 { "" } else { "s" },
                    c.groups.len(),
                    if c.groups.len() == 1 { "" } else { "s" },
                );
                0
            }
            Err(code) => code,
        },
        Command::Ctl {
            socket,
            config,
            command,
        } => match (socket, config) {
            (Some(socket), _) => ctl::run(&socket, command),
            (None, Some(config)) => match crate::control::socket_from_config(&config) {
                Ok(socket) => ctl::run(&socket, command),
                Err(e) => {
                    eprintln!("forkroot ctl: {e}");
                    ctl::EXIT_USAGE
                }
            },
            (None, None) => ctl::run(&crate::control::default_socket(), command),
        },
        Command::Kinds => {
            print!("{}", kinds(registry));
            0
        }
        Command::Run { config } => {
            crate::subscriber::init();
            if !guarded_allocator() {
                tracing::warn!(
                    "this binary does not install forkroot::alloc::Guarded as its global \
                     allocator (forkroot::main! does): Context::steady cannot forbid allocation"
                );
            }
            match load(config.as_deref(), registry) {
                Err(code) => code,
                Ok(c) => match root::run(c, config.as_deref(), registry) {
                    Ok(code) => code,
                    Err(e) => {
                        tracing::error!("{e}");
                        e.exit_code()
                    }
                },
            }
        }
    };
    ExitCode::from(code as u8)
}

/// `forkroot kinds`: each kind with its line of help, then its settings with
/// their types, defaults and help.
fn kinds(registry: &Registry) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if registry.kinds().is_empty() {
        out.push_str("no kinds: this binary runs exec'd programs only\n");
    }
    for k in registry.kinds() {
        let _ = writeln!(out, "{:<8} {}", k.name, k.about);
        if k.settings.is_empty() {
            let _ = writeln!(out, "    (no settings)");
        }
        for s in k.settings {
            let value = match (s.default, s.required) {
                (Some(d), _) => format!("{} = {d}", s.name),
                (None, true) => format!("{} (required)", s.name),
                (None, false) => format!("{} (optional)", s.name),
            };
            let _ = writeln!(out, "    {value:<28} {}: {}", s.ty.describe(), s.help);
        }
    }
    out
}

/// Whether the process's global allocator is [`crate::alloc::Guarded`]:
/// only it counts allocations under [`crate::alloc::Policy::Count`].
fn guarded_allocator() -> bool {
    use crate::alloc::{self, Policy};
    let before = alloc::policy();
    alloc::set_policy(Policy::Count);
    alloc::reset_stats();
    std::hint::black_box(Box::new(0u64));
    let counted = alloc::stats().allocs > 0;
    alloc::reset_stats();
    alloc::set_policy(before);
    counted
}

/// Loads and validates a config (or the registry's demo tree), printing
/// every problem.
fn load(path: Option<&Path>, registry: &Registry) -> Result<Config, i32> {
    let problems = match (path, registry.demo_config()) {
        (Some(p), _) => config::load(p, registry),
        (None, Some(demo)) => Config::parse(demo, "<demo>", registry),
        (None, None) => {
            eprintln!(
                "forkroot: no --config given, and this binary has no demo tree: \
                 run it with --config FILE; nothing started"
            );
            return Err(root::EXIT_CONFIG);
        }
    };
    let problems = match problems {
        Ok(c) => return Ok(c),
        Err(p) => p,
    };
    for p in &problems {
        eprintln!("{p}");
    }
    eprintln!(
        "forkroot: {} problem{} in the configuration; nothing started",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    Err(root::EXIT_CONFIG)
}
