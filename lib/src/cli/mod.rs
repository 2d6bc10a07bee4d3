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

/// Erlang/OTP-style supervision for native Unix processes.
#[derive(Parser, Debug)]
#[command(name = "forkroot", version, about, long_about = None, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes of `forkroot run`:
  0   stopped cleanly (SIGTERM/SIGINT or `ctl shutdown`), every child reaped
  69  gave up: the top supervisor's restart intensity was exceeded
  70  internal error of the root itself
  78  configuration error: nothing was started";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the tree in the foreground (the built-in demo tree without --config).
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
    /// Print the daemon kinds built into this binary.
    Kinds,
}

/// The whole command line for a binary whose built-in kinds are `registry`;
/// `demo` is the tree `forkroot run` starts without `--config`.
pub fn main(registry: &Registry, demo: &str) -> ExitCode {
    let cli = Cli::parse();
    let known: Vec<&str> = registry.kinds().iter().map(|k| k.name).collect();
    let code = match cli.command {
        Command::Check { config } => match load(Some(&config), demo, &known) {
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
            for k in registry.kinds() {
                println!("{:<8} {}", k.name, k.about);
            }
            0
        }
        Command::Run { config } => {
            crate::logging::init();
            match load(config.as_deref(), demo, &known) {
                Err(code) => code,
                Ok(c) => match root::run(c, registry) {
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

/// Loads and validates a config (or the demo tree), printing every problem.
fn load(path: Option<&Path>, demo: &str, known: &[&str]) -> Result<Config, i32> {
    let problems = match path {
        Some(p) => config::load_with_kinds(p, Some(known)),
        None => Config::parse_with_kinds(demo, "<demo>", Some(known)),
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
