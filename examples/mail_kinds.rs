//! Mailboxes between built-in daemons: an author's binary with two kinds of
//! its own, run by its own root (`forkroot::main!`).
//!
//! - `inbox` (`out = PATH`): writes `start PID`, then each message it
//!   receives as a line `FROM BODY` (DOWN and EXIT as `Down NAME pid PID`).
//! - `sender` (`to = NAME`, `count = N`): sends the numbers 0..N to `to`,
//!   waiting while its mailbox is full, then idles.
//!
//! ```toml
//! [[daemon]]
//! name = "inbox"
//! kind = "inbox"
//! [daemon.args]
//! out = "/tmp/inbox.out"
//! ```

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use forkroot::mailbox::SendError;
use forkroot::{Context, Kind, Registry, Setting};

forkroot::main!(Registry::new().add(INBOX).add(SENDER));

const INBOX: Kind = Kind::new("inbox", "writes every message it receives", inbox)
    .settings(&[Setting::path("out", "file, one line per message").required()]);

const SENDER: Kind = Kind::new("sender", "sends 0..count to a daemon", sender).settings(&[
    Setting::string("to", "the receiver's name").required(),
    Setting::int("count", "how many numbers")
        .default_int(100)
        .range(0, 1 << 20),
]);

fn inbox(ctx: &mut Context<'_>) -> i32 {
    let out: &Path = ctx.arg("out");
    let Ok(mut out) = OpenOptions::new().create(true).append(true).open(out) else {
        return 3;
    };
    let _ = writeln!(out, "start {}", std::process::id());
    loop {
        match ctx.recv(Some(Duration::from_millis(100))) {
            Ok(Some(m)) => {
                let line = match m.gone {
                    Some(g) => format!("{:?} {} pid {}", m.kind, g.name, g.pid),
                    None => format!("{} {}", m.from, String::from_utf8_lossy(&m.body)),
                };
                let _ = writeln!(out, "{line}");
            }
            Ok(None) if ctx.stopping() => return 0,
            Ok(None) => {}
            Err(_) => return 4,
        }
    }
}

fn sender(ctx: &mut Context<'_>) -> i32 {
    let to: &str = ctx.arg("to");
    let count: i64 = ctx.arg("count");
    let mut i = 0;
    while i < count {
        match ctx.send(to, i.to_string().as_bytes()) {
            Ok(()) => i += 1,
            Err(SendError::Full { .. }) => {
                if !ctx.sleep(Duration::from_millis(1)) {
                    return 0;
                }
            }
            Err(_) => return 5,
        }
    }
    while ctx.sleep(Duration::from_secs(1)) {}
    0
}
