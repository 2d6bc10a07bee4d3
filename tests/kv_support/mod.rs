//! What the kv daemon's test binaries share: a tree of one kv daemon on a
//! free port.

use std::net::TcpListener;

use crate::common::Tree;

/// A port nobody listens on now (the kernel's pick for port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// A tree of one kv daemon of `memory` on a free port, with `args` (TOML
/// lines) added to its `[daemon.args]`.
pub(crate) fn start_kv(memory: &str, args: &str) -> (Tree, u16) {
    let port = free_port();
    let t = Tree::start(&format!(
        r#"
[[daemon]]
name = "kv"
kind = "kv"
memory = "{memory}"
[daemon.args]
listen = "127.0.0.1:{port}"
{args}
"#
    ));
    (t, port)
}
