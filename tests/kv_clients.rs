//! The kv daemon with the clients people use: redis-py (RESP3, its
//! default, and RESP2) through tests/kv_redispy.py, and `redis-cli -3`.
//!
//! redis-py comes from a virtual environment that .ci/run creates
//! (`target/venv-kv`, or the Python named by `KV_PYTHON`); without it
//! these tests fail, saying how to create it.

mod common;
mod kv_support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::Tree;
use kv_support::start_kv;

const PASSWORD: &str = "correct horse";

/// A tree of one kv daemon with a password on a free port, once it
/// listens.
fn start() -> (Tree, u16) {
    let (t, port) = start_kv("16MiB", &format!("password = \"{PASSWORD}\""));
    t.poll("kv listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (t, port)
}

/// The Python of the virtual environment with redis-py in it.
fn python() -> PathBuf {
    let py = std::env::var_os("KV_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv-kv/bin/python")
        });
    assert!(
        py.exists(),
        "{} is missing: create it with `python3 -m venv target/venv-kv && \
         target/venv-kv/bin/pip install redis` (.ci/run does), or name a Python \
         with redis-py in KV_PYTHON",
        py.display()
    );
    py
}

/// Runs tests/kv_redispy.py with `protocol`; panics with its output if a
/// check failed. The script is killed if it runs past two minutes.
fn redispy(protocol: u8) {
    let (t, port) = start();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kv_redispy.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg(port.to_string())
        .arg(PASSWORD)
        .arg(protocol.to_string())
        .arg(common::BIN)
        .arg(t.path("ctl.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait python") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait python");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("python output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        status.success(),
        "kv_redispy.py (protocol {protocol}) failed: {status}\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("protocol={protocol}: ")) && stdout.contains(" 0 failed"),
        "{stdout}"
    );
}

#[test]
fn redis_py_with_resp3() {
    redispy(3);
}

#[test]
fn redis_py_with_resp2() {
    redispy(2);
}

/// `redis-cli`'s output for `args` (with `-3`: RESP3).
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-3", "--no-raw", "-p", &port.to_string()])
        .args(["--user", "default", "--pass", PASSWORD, "--no-auth-warning"])
        .args(args)
        .output()
        .expect("redis-cli is installed (Debian: redis-tools)");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn redis_cli_with_resp3() {
    let (_t, port) = start();
    assert_eq!(redis_cli(port, &["set", "k", "v"]), "OK\n");
    assert_eq!(redis_cli(port, &["get", "k"]), "\"v\"\n");
    // RESP3's null and map types, as redis-cli shows them.
    assert_eq!(redis_cli(port, &["get", "absent"]), "(nil)\n");
    let map = redis_cli(port, &["config", "get", "databases"]);
    assert_eq!(map, "1# \"databases\" => \"1\"\n");
    let hello = redis_cli(port, &["hello", "3"]);
    assert!(hello.contains("\"proto\" => (integer) 3"), "{hello}");
    // INFO is a verbatim string in RESP3, shown as its text.
    let info = redis_cli(port, &["info", "server"]);
    assert!(info.contains("redis_version:7.0.0-forkroot"), "{info}");
    assert_eq!(redis_cli(port, &["ttl", "k"]), "(integer) -1\n");
}
