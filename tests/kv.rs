//! The kv daemon through the real binary: RESP over a TcpStream, redis-cli,
//! pipelining, and acknowledged writes across SIGKILLs of the daemon.

mod common;
mod kv_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Tree, DEADLINE};
use kv_support::start_kv;

/// A tree of one kv daemon on a free port, DEBUG allowed.
fn start(memory: &str) -> (Tree, u16) {
    start_kv(memory, "debug = true")
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
    /// RESP3's null (`_`).
    Null,
    /// RESP3's map (`%`): keys and values in turn.
    Map(Vec<Reply>),
    /// RESP3's verbatim string (`=`): its format and its text.
    Verbatim(String, Vec<u8>),
}

use Reply::*;

fn bulk(s: &str) -> Reply {
    Bulk(Some(s.as_bytes().to_vec()))
}

fn ok() -> Reply {
    Simple("OK".into())
}

fn err(s: &str) -> Reply {
    Error(s.into())
}

/// A blocking RESP client with a read timeout (nothing waits forever).
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(DEADLINE))?;
        s.set_nodelay(true)?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// Connects, retrying until the daemon listens (or DEADLINE passes).
    fn wait(port: u16) -> Client {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match Client::connect(port) {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("kv never listened: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut b = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            b.extend_from_slice(a);
            b.extend_from_slice(b"\r\n");
        }
        b
    }

    fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.w.write_all(&Client::encode(&args))
    }

    fn try_cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        self.send(args)?;
        self.read()
    }

    fn cmd(&mut self, args: &[&str]) -> Reply {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn read(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        let num = || rest.parse::<i64>().expect("a number");
        Ok(match kind {
            "+" => Simple(rest.into()),
            "-" => Error(rest.into()),
            ":" => Int(num()),
            "$" if num() < 0 => Bulk(None),
            "$" => {
                let mut b = vec![0; num() as usize + 2];
                self.r.read_exact(&mut b)?;
                b.truncate(b.len() - 2);
                Bulk(Some(b))
            }
            "*" => Array((0..num()).map(|_| self.read()).collect::<Result<_, _>>()?),
            "_" => Null,
            "%" => Map((0..2 * num())
                .map(|_| self.read())
                .collect::<Result<_, _>>()?),
            "=" => {
                let mut b = vec![0; num() as usize + 2];
                self.r.read_exact(&mut b)?;
                b.truncate(b.len() - 2);
                let text = b.split_off(4);
                Verbatim(String::from_utf8_lossy(&b[..3]).into(), text)
            }
            _ => panic!("not RESP: {line:?}"),
        })
    }
}

/// The kv daemon's pid from `ctl status --json`, once it is running (and
/// not `not`, the pid of a process that was killed).
fn kv_pid(t: &Tree, not: Option<i64>) -> i64 {
    t.poll("the kv daemon running", || {
        let out = common::command(&t.dir)
            .args(["ctl", "--socket"])
            .arg(t.path("ctl.sock"))
            .args(["status", "--json"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let d = v["daemons"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == "kv")?;
        let pid = d["pid"].as_i64()?;
        (d["state"] == "running" && Some(pid) != not).then_some(pid)
    })
}

/// The kv daemon's entry in `ctl status --json`.
fn kv_status(t: &Tree) -> serde_json::Value {
    let out = common::command(&t.dir)
        .args(["ctl", "--socket"])
        .arg(t.path("ctl.sock"))
        .args(["status", "--json"])
        .output()
        .expect("ctl status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    v["daemons"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["name"] == "kv"))
        .cloned()
        .expect("kv in the status")
}

fn kill(pid: i64, signal: i32) {
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

#[test]
fn strings_counters_and_errors() {
    let (t, port) = start("4MiB");
    let mut c = Client::wait(port);
    assert_eq!(c.cmd(&["PING"]), Simple("PONG".into()));
    assert_eq!(c.cmd(&["ping", "hi"]), bulk("hi"));
    assert_eq!(c.cmd(&["ECHO", "a\r\nb"]), bulk("a\r\nb"));
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok());
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v"));
    assert_eq!(c.cmd(&["GET", "nope"]), Bulk(None));
    assert_eq!(c.cmd(&["SET", "k", "w", "NX"]), Bulk(None));
    assert_eq!(c.cmd(&["SET", "k2", "w", "XX"]), Bulk(None));
    assert_eq!(c.cmd(&["SET", "k", "w", "XX"]), ok());
    assert_eq!(c.cmd(&["INCR", "n"]), Int(1));
    assert_eq!(c.cmd(&["INCRBY", "n", "41"]), Int(42));
    assert_eq!(c.cmd(&["DECR", "n"]), Int(41));
    assert_eq!(c.cmd(&["DECRBY", "n", "50"]), Int(-9));
    assert_eq!(
        c.cmd(&["INCR", "k"]),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(
        c.cmd(&["INCRBY", "n", "x"]),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(c.cmd(&["MSET", "a", "1", "b", "2"]), ok());
    assert_eq!(
        c.cmd(&["MGET", "a", "nope", "b"]),
        Array(vec![bulk("1"), Bulk(None), bulk("2")])
    );
    assert_eq!(c.cmd(&["EXISTS", "a", "a", "nope"]), Int(2));
    assert_eq!(c.cmd(&["DBSIZE"]), Int(4));
    assert_eq!(c.cmd(&["DEL", "a", "b", "nope"]), Int(2));
    assert_eq!(c.cmd(&["DBSIZE"]), Int(2));
    // Expiry.
    assert_eq!(c.cmd(&["SET", "e", "1", "PX", "100"]), ok());
    assert!(matches!(c.cmd(&["PTTL", "e"]), Int(t) if t > 0 && t <= 100));
    assert_eq!(c.cmd(&["TTL", "k"]), Int(-1));
    assert_eq!(c.cmd(&["TTL", "nope"]), Int(-2));
    thread::sleep(Duration::from_millis(150));
    assert_eq!(c.cmd(&["GET", "e"]), Bulk(None));
    assert_eq!(
        c.cmd(&["SET", "e", "1", "EX", "0"]),
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        c.cmd(&["SET", "e", "1", "NX", "XX"]),
        err("ERR syntax error")
    );
    // Errors in Redis' words.
    assert_eq!(
        c.cmd(&["GET"]),
        err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        c.cmd(&["FOO", "bar", "baz"]),
        err("ERR unknown command 'FOO', with args beginning with: 'bar' 'baz' ")
    );
    assert_eq!(c.cmd(&["SELECT", "0"]), ok());
    assert_eq!(c.cmd(&["SELECT", "1"]), err("ERR DB index is out of range"));
    assert_eq!(c.cmd(&["COMMAND", "DOCS"]), Array(vec![]));
    assert_eq!(
        c.cmd(&["CONFIG", "GET", "save"]),
        Array(vec![bulk("save"), bulk("")])
    );
    match c.cmd(&["INFO"]) {
        Bulk(Some(b)) => {
            let info = String::from_utf8(b).unwrap();
            assert!(info.contains("redis_version:7.0.0-forkroot"), "{info}");
            assert!(info.contains("db0:keys=2"), "{info}");
        }
        other => panic!("INFO gave {other:?}"),
    }
    assert_eq!(c.cmd(&["FLUSHALL"]), ok());
    assert_eq!(c.cmd(&["DBSIZE"]), Int(0));
    assert_eq!(c.cmd(&["QUIT"]), ok());
    assert!(c.read().is_err(), "QUIT closes the connection");
    // All of it in the steady state: no allocation, no restart.
    let st = kv_status(&t);
    assert_eq!(st["alloc"]["policy"], "forbid", "{st}");
    assert_eq!(st["alloc"]["allocs"], 0, "{st}");
    assert_eq!(st["restarts"], 0, "{st}");
}

/// A tree of one kv daemon on a free port, with a password.
fn start_with_password(password: &str) -> (Tree, u16) {
    start_kv("4MiB", &format!("password = \"{password}\""))
}

#[test]
fn hello_switches_to_resp3_and_reset_back() {
    let (t, port) = start("4MiB");
    let mut c = Client::wait(port);
    let Int(id) = c.cmd(&["CLIENT", "ID"]) else {
        panic!("CLIENT ID is an integer");
    };
    assert_eq!(
        c.cmd(&["AUTH", "x"]),
        err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
    );
    assert_eq!(
        c.cmd(&["HELLO", "4"]),
        err("NOPROTO unsupported protocol version")
    );
    assert_eq!(
        c.cmd(&["HELLO", "3", "SETNAME", "bad name"]),
        err("ERR Client names cannot contain spaces, newlines or special characters.")
    );
    let Map(hello) = c.cmd(&["HELLO", "3", "SETNAME", "app"]) else {
        panic!("HELLO 3 replies a map");
    };
    let field = |k: &str| {
        let i = hello.iter().position(|r| *r == bulk(k)).expect(k);
        hello[i + 1].clone()
    };
    assert_eq!(field("proto"), Int(3));
    assert_eq!(field("id"), Int(id));
    assert_eq!(field("server"), bulk("redis"));
    assert_eq!(c.cmd(&["GET", "nope"]), Null);
    assert_eq!(c.cmd(&["MGET", "nope"]), Array(vec![Null]));
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), bulk("app"));
    assert_eq!(c.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]), ok());
    assert_eq!(
        c.cmd(&["CLIENT", "SETINFO", "COLOR", "red"]),
        err("ERR Unrecognized option 'COLOR'")
    );
    assert_eq!(
        c.cmd(&["CLIENT", "NOPE"]),
        err("ERR unknown subcommand 'NOPE'. Try CLIENT HELP.")
    );
    assert_eq!(
        c.cmd(&["CLIENT", "SETNAME"]),
        err("ERR wrong number of arguments for 'client|setname' command")
    );
    assert_eq!(
        c.cmd(&["CONFIG", "GET", "databases"]),
        Map(vec![bulk("databases"), bulk("1")])
    );
    assert!(matches!(c.cmd(&["INFO"]), Verbatim(f, _) if f == "txt"));
    assert_eq!(c.cmd(&["RESET"]), Simple("RESET".into()));
    assert_eq!(c.cmd(&["GET", "nope"]), Bulk(None));
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), Bulk(None));
    assert_eq!(c.cmd(&["CLIENT", "ID"]), Int(id));
    // HELLO without a version answers in the protocol in use.
    assert!(matches!(c.cmd(&["HELLO"]), Array(a) if a.len() == 14));
    let st = kv_status(&t);
    assert_eq!(st["alloc"]["allocs"], 0, "{st}");
}

#[test]
fn a_password_is_required_when_configured() {
    let (_t, port) = start_with_password("s3cret");
    let mut c = Client::wait(port);
    assert_eq!(c.cmd(&["GET", "k"]), err("NOAUTH Authentication required."));
    assert_eq!(
        c.cmd(&["HELLO", "3"]),
        err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
    );
    let wrong = err("WRONGPASS invalid username-password pair or user is disabled.");
    assert_eq!(c.cmd(&["AUTH", "s3cre"]), wrong);
    assert_eq!(c.cmd(&["AUTH", "s3cret!"]), wrong);
    assert_eq!(c.cmd(&["AUTH", "admin", "s3cret"]), wrong);
    assert_eq!(c.cmd(&["HELLO", "3", "AUTH", "default", "nope"]), wrong);
    assert_eq!(c.cmd(&["GET", "k"]), err("NOAUTH Authentication required."));
    assert_eq!(c.cmd(&["AUTH", "s3cret"]), ok());
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok());
    // RESET logs out again.
    assert_eq!(c.cmd(&["RESET"]), Simple("RESET".into()));
    assert_eq!(c.cmd(&["GET", "k"]), err("NOAUTH Authentication required."));
    assert!(matches!(
        c.cmd(&["HELLO", "3", "AUTH", "default", "s3cret"]),
        Map(_)
    ));
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v"));
    assert_eq!(c.cmd(&["AUTH", "default", "s3cret"]), ok());
}

#[test]
fn multi_exec_runs_the_block_all_or_nothing() {
    let (t, port) = start("2MiB");
    let mut c = Client::wait(port);
    assert_eq!(c.cmd(&["EXEC"]), err("ERR EXEC without MULTI"));
    assert_eq!(c.cmd(&["MULTI"]), ok());
    assert_eq!(c.cmd(&["MULTI"]), err("ERR MULTI calls can not be nested"));
    assert_eq!(c.cmd(&["SET", "a", "1"]), Simple("QUEUED".into()));
    assert_eq!(c.cmd(&["INCR", "a"]), Simple("QUEUED".into()));
    // Queued, not run: another client does not see it yet.
    let mut other = Client::wait(port);
    assert_eq!(other.cmd(&["GET", "a"]), Bulk(None));
    assert_eq!(c.cmd(&["GET", "a"]), Simple("QUEUED".into()));
    assert_eq!(c.cmd(&["EXEC"]), Array(vec![ok(), Int(2), bulk("2")]));
    assert_eq!(other.cmd(&["GET", "a"]), bulk("2"));
    // A refused command discards the block at EXEC.
    assert_eq!(c.cmd(&["MULTI"]), ok());
    assert_eq!(c.cmd(&["SET", "b", "1"]), Simple("QUEUED".into()));
    assert_eq!(
        c.cmd(&["GET"]),
        err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        c.cmd(&["EXEC"]),
        err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(c.cmd(&["GET", "b"]), Bulk(None));
    assert_eq!(c.cmd(&["MULTI"]), ok());
    assert_eq!(c.cmd(&["SET", "b", "1"]), Simple("QUEUED".into()));
    assert_eq!(c.cmd(&["DISCARD"]), ok());
    assert_eq!(c.cmd(&["GET", "b"]), Bulk(None));
    // A command that fails after it may have written rolls the whole
    // block back: a SETRANGE that changes more than the journal holds.
    assert_eq!(c.cmd(&["MULTI"]), ok());
    assert_eq!(c.cmd(&["SET", "first", "1"]), Simple("QUEUED".into()));
    assert_eq!(
        c.cmd(&["SETRANGE", "big", "200000", "x"]),
        Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["EXEC"]),
        err("ERR command changes more than the undo journal holds (split it)")
    );
    assert_eq!(c.cmd(&["GET", "first"]), Bulk(None));
    assert_eq!(c.cmd(&["EXISTS", "big"]), Int(0));
    // The connection goes on as usual.
    assert_eq!(c.cmd(&["SET", "first", "2"]), ok());
    let st = kv_status(&t);
    assert_eq!(st["alloc"]["allocs"], 0, "{st}");
}

#[test]
fn debug_is_refused_unless_enabled() {
    use std::os::unix::net::UnixStream;
    let t = Tree::start(
        "[[daemon]]\nname = \"kv\"\nkind = \"kv\"\nmemory = \"2MiB\"\n\
         [daemon.args]\nlisten = \"@DIR@/kv.sock\"\n",
    );
    let path = t.path("kv.sock");
    let mut s = t.poll("the kv socket", || UnixStream::connect(&path).ok());
    s.write_all(b"*2\r\n$5\r\nDEBUG\r\n$8\r\nSEGFAULT\r\n*1\r\n$4\r\nPING\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"+PONG\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"-ERR DEBUG command not allowed"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(!t.log().contains("crashed"), "{}", t.log());
}

#[test]
fn it_listens_on_a_unix_socket_too() {
    use std::os::unix::net::UnixStream;
    let t = Tree::start(
        "[[daemon]]\nname = \"kv\"\nkind = \"kv\"\nmemory = \"2MiB\"\n\
         [daemon.args]\nlisten = \"@DIR@/kv.sock\"\n",
    );
    let path = t.path("kv.sock");
    let mut s = t.poll("the kv socket", || UnixStream::connect(&path).ok());
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"SET k v\r\nGET k\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 12 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"+OK\r\n$1\r\nv\r\n");
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let (_t, port) = start("4MiB");
    let mut c = Client::wait(port);
    let n = 2000;
    let mut batch = Vec::new();
    for i in 0..n {
        let (k, v) = (format!("key{i}"), format!("value{i}"));
        batch.extend(Client::encode(&[b"SET", k.as_bytes(), v.as_bytes()]));
        batch.extend(Client::encode(&[b"INCR", b"count"]));
        batch.extend(Client::encode(&[b"GET", k.as_bytes()]));
    }
    // Also an inline command, as typed into telnet.
    batch.extend_from_slice(b"PING\r\n");
    // The whole batch at once, while another thread reads: the server
    // must not deadlock on a client that writes faster than it reads.
    let mut w = c.w.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&batch).unwrap());
    for i in 0..n {
        assert_eq!(c.read().unwrap(), ok());
        assert_eq!(c.read().unwrap(), Int(i + 1));
        assert_eq!(c.read().unwrap(), bulk(&format!("value{i}")));
    }
    assert_eq!(c.read().unwrap(), Simple("PONG".into()));
    writer.join().unwrap();
    // A request split at every byte still parses.
    let cmd = Client::encode(&[b"GET", b"key7"]);
    for b in &cmd {
        c.w.write_all(&[*b]).unwrap();
        c.w.flush().unwrap();
    }
    assert_eq!(c.read().unwrap(), bulk("value7"));
}

#[test]
fn protocol_errors_and_oversized_requests_close_the_connection() {
    let (_t, port) = start("4MiB");
    let mut c = Client::wait(port);
    c.w.write_all(b"*1\r\n+GET\r\n").unwrap();
    assert_eq!(
        c.read().unwrap(),
        err("ERR Protocol error: expected '$', got '+'")
    );
    assert!(c.read().is_err());
    // A bulk longer than the request limit is refused from its header.
    let mut c = Client::wait(port);
    c.w.write_all(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$71680\r\n")
        .unwrap();
    assert_eq!(
        c.read().unwrap(),
        err("ERR Protocol error: invalid bulk length")
    );
    assert!(c.read().is_err());
    // A request that fills the input buffer without ending is refused.
    let mut c = Client::wait(port);
    let mut req = b"*2\r\n$3\r\nGET\r\n$65530\r\n".to_vec();
    req.resize(64 * 1024, b'x');
    c.w.write_all(&req).unwrap();
    assert_eq!(
        c.read().unwrap(),
        err("ERR Protocol error: request larger than 65536 bytes")
    );
    assert!(c.read().is_err());
    // The daemon is fine.
    let mut c = Client::wait(port);
    assert_eq!(c.cmd(&["PING"]), Simple("PONG".into()));
}

#[test]
fn a_full_store_answers_oom() {
    let (_t, port) = start("2MiB");
    let mut c = Client::wait(port);
    let v = "v".repeat(16000);
    let mut oom = None;
    for i in 0..1000 {
        match c.cmd(&["SET", &format!("k{i}"), &v]) {
            Simple(_) => {}
            Error(e) => {
                oom = Some((i, e));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let (n, e) = oom.expect("the store never filled");
    assert_eq!(e, "OOM command not allowed when used memory > 'maxmemory'.");
    // What was stored before is intact, and deleting makes room.
    assert_eq!(c.cmd(&["GET", "k0"]), bulk(&v));
    assert_eq!(c.cmd(&["DEL", "k0"]), Int(1));
    assert_eq!(c.cmd(&["SET", &format!("k{n}"), &v]), ok());
}

#[test]
fn acknowledged_writes_survive_sigkill_of_the_daemon() {
    let (t, port) = start("8MiB");
    let mut c = Client::wait(port);
    let n = 500;
    for i in 0..n {
        assert_eq!(c.cmd(&["SET", &format!("k{i}"), &format!("v{i}")]), ok());
    }
    assert_eq!(c.cmd(&["INCRBY", "counter", "7"]), Int(7));
    let pid = kv_pid(&t, None);
    kill(pid, libc::SIGKILL);
    // The client of the dead daemon is disconnected ...
    assert!(c.try_cmd(&["PING"]).is_err());
    // ... and reconnects to its replacement on the same address.
    let new = kv_pid(&t, Some(pid));
    assert_ne!(new, pid);
    let mut c = Client::wait(port);
    assert_eq!(c.cmd(&["DBSIZE"]), Int(n + 1));
    for i in 0..n {
        assert_eq!(c.cmd(&["GET", &format!("k{i}")]), bulk(&format!("v{i}")));
    }
    assert_eq!(c.cmd(&["INCR", "counter"]), Int(8));
    // DEBUG SEGFAULT: the daemon crashes; the data stays.
    assert!(c.try_cmd(&["DEBUG", "SEGFAULT"]).is_err());
    kv_pid(&t, Some(new));
    let mut c = Client::wait(port);
    assert_eq!(c.cmd(&["GET", "counter"]), bulk("8"));
}

#[test]
fn every_acknowledged_set_survives_a_kill_in_the_middle_of_a_stream() {
    let (t, port) = start("8MiB");
    let pid = kv_pid(&t, None);
    let stop = Arc::new(AtomicBool::new(false));
    // Writers send SETs (pipelined, 8 at a time) and record what was
    // acknowledged, until their connection drops.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut c = Client::wait(port);
                let mut acked = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let batch: Vec<(String, String)> = (i..i + 8)
                        .map(|j| (format!("w{w}:{j}"), format!("{j}-{}", j * 31)))
                        .collect();
                    let mut bytes = Vec::new();
                    for (k, v) in &batch {
                        bytes.extend(Client::encode(&[b"SET", k.as_bytes(), v.as_bytes()]));
                    }
                    if c.w.write_all(&bytes).is_err() {
                        return acked;
                    }
                    for kv in batch {
                        match c.read() {
                            Ok(Simple(s)) if s == "OK" => acked.push(kv),
                            Ok(other) => panic!("SET answered {other:?}"),
                            Err(_) => return acked,
                        }
                    }
                    i += 8;
                }
                acked
            })
        })
        .collect();
    // Let a few thousand writes through, then kill the daemon mid-stream.
    let mut probe = Client::wait(port);
    t.poll("writes flowing", || {
        matches!(probe.cmd(&["DBSIZE"]), Int(n) if n > 2000).then_some(())
    });
    kill(pid, libc::SIGKILL);
    // (The kill ends their connections; the flag only guards against a
    // writer that would otherwise go on.)
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<Vec<(String, String)>> =
        writers.into_iter().map(|w| w.join().unwrap()).collect();
    kv_pid(&t, Some(pid));
    let mut c = Client::wait(port);
    let mut total = 0;
    for list in &acked {
        assert!(!list.is_empty());
        for (k, v) in list {
            assert_eq!(c.cmd(&["GET", k]), bulk(v), "acknowledged {k} lost");
        }
        total += list.len();
    }
    assert!(total > 2000, "{total}");
}

/// redis-cli from Debian's redis-tools; CI installs it.
fn redis_cli() -> &'static str {
    let found = Command::new("redis-cli").arg("--version").output();
    assert!(
        matches!(found, Ok(ref o) if o.status.success()),
        "redis-cli is required (Debian: apt-get install redis-tools)"
    );
    "redis-cli"
}

#[test]
fn redis_cli_talks_to_it() {
    let cli = redis_cli();
    let (_t, port) = start("4MiB");
    Client::wait(port);
    let run = |args: &[&str]| {
        let out = Command::new(cli)
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(&["PING"]), "PONG\n");
    assert_eq!(run(&["SET", "greeting", "hello world"]), "OK\n");
    assert_eq!(run(&["GET", "greeting"]), "hello world\n");
    assert_eq!(run(&["INCR", "hits"]), "1\n");
    assert_eq!(
        run(&["MGET", "greeting", "hits", "nope"]),
        "hello world\n1\n\n"
    );
    assert!(run(&["BOGUS"]).starts_with("ERR unknown command 'BOGUS'"));
    // Commands on stdin, as an interactive session sends them.
    let mut child = Command::new(cli)
        .args(["-p", &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SET a 1\nINCRBY a 9\nDBSIZE\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "OK\n10\n3\n");
}

#[test]
fn calc_runs_in_a_transaction_and_its_crashes_stay_there() {
    let (t, port) = start("4MiB");
    let mut c = Client::wait(port);
    let pid = kv_pid(&t, None);
    assert_eq!(c.cmd(&["CALC", "1 + 2 * (3 - 1)"]), Int(5));
    assert_eq!(c.cmd(&["SET", "x", "20"]), ok());
    assert_eq!(c.cmd(&["CALC", "$x", "/", "3"]), Int(6));
    assert_eq!(c.cmd(&["CALC", "7 / (2 - 2)"]), err("ERR division by zero"));
    assert_eq!(c.cmd(&["CALC", "1 +"]), err("ERR syntax error at byte 3"));
    assert_eq!(c.cmd(&["CALC", "$nope"]), err("ERR no such key"));
    // Nesting deep enough to overflow the stack: the transaction crashes,
    // is retried, and the client gets the verdict ...
    let deep = "(".repeat(60_000);
    let r = c.cmd(&["CALC", &deep]);
    assert!(
        matches!(&r, Error(m) if m.starts_with("ERR transaction crashed (killed by SIG")
            && m.ends_with("after 3 attempts")),
        "{r:?}"
    );
    // ... then the input is refused without another fork.
    assert_eq!(
        c.cmd(&["CALC", &deep]),
        err("ERR input quarantined after 4 crashes")
    );
    let r = c.cmd(&["DEBUG", "TXCRASH"]);
    assert!(
        matches!(&r, Error(m) if m.starts_with("ERR transaction crashed (killed by SIGSEGV)")),
        "{r:?}"
    );
    // The daemon itself never noticed more than failed replies.
    assert_eq!(c.cmd(&["GET", "x"]), bulk("20"));
    assert_eq!(kv_pid(&t, None), pid);
    assert_eq!(kv_status(&t)["restarts"], 0);
}

#[test]
fn a_client_waiting_for_a_transaction_blocks_nobody_and_keeps_its_order() {
    let (_t, port) = start("4MiB");
    let mut slow = Client::wait(port);
    let mut other = Client::wait(port);
    // A slow transaction, with a command pipelined behind it.
    let mut batch = Client::encode(&[b"DEBUG", b"TXSLEEP", b"1000"]);
    batch.extend(Client::encode(&[b"PING"]));
    slow.w.write_all(&batch).unwrap();
    // Meanwhile another client is served at once.
    assert_eq!(other.cmd(&["SET", "k", "v"]), ok());
    assert_eq!(other.cmd(&["CALC", "6 * 7"]), Int(42));
    slow.w.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let early = slow.w.peek(&mut byte);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the slow client got a reply before its transaction ended: {early:?}"
    );
    slow.w.set_nonblocking(false).unwrap();
    assert_eq!(slow.read().unwrap(), ok());
    assert_eq!(slow.read().unwrap(), Simple("PONG".into()));
}

#[test]
fn an_inline_command_run_again_after_its_reply_waited_is_the_same() {
    let (_t, port) = start("4MiB");
    let mut c = Client::wait(port);
    let big = "v".repeat(60_000);
    assert_eq!(c.cmd(&["SET", "big", &big]), ok());
    // The second reply does not fit behind the first: the server runs the
    // inline MGET again once the first has gone out.
    c.w.write_all(b"GET big\r\nMGET \"a b\" big big\r\nPING\r\n")
        .unwrap();
    assert_eq!(c.read().unwrap(), bulk(&big));
    assert_eq!(
        c.read().unwrap(),
        Array(vec![Bulk(None), bulk(&big), bulk(&big)])
    );
    assert_eq!(c.read().unwrap(), Simple("PONG".into()));
}

#[test]
fn a_count_or_length_line_without_crlf_is_refused_after_32_bytes() {
    let (_t, port) = start("4MiB");
    for req in [
        &b"*1111111111111111111111111111111111111111"[..],
        b"*1\r\n$1111111111111111111111111111111111111111",
    ] {
        let mut c = Client::wait(port);
        c.w.write_all(req).unwrap();
        let e = match c.read().unwrap() {
            Error(e) => e,
            r => panic!("{r:?}"),
        };
        assert!(e.starts_with("ERR Protocol error: invalid"), "{e}");
        assert!(c.read().is_err());
    }
    // A slow client, a byte at a time, is still answered.
    let mut c = Client::wait(port);
    for b in b"SET \"k k\" v\r\n" {
        c.w.write_all(&[*b]).unwrap();
    }
    assert_eq!(c.read().unwrap(), ok());
    assert_eq!(c.cmd(&["GET", "k k"]), bulk("v"));
}
