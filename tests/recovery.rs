//! Recovery with sockets the root holds (`listen`): the real binary, real
//! SIGKILLs, real TCP and Unix connections. A kv daemon with data answers
//! after SIGKILL with every acknowledged write; a client connecting in a
//! loop while kv is killed again and again is never refused; an exec'd
//! program gets systemd's LISTEN_FDS and serves on the same socket across
//! kills; a bad `listen` is a config error at its place.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{children, command, send, write_config, Proc, Tree};

/// How long one reply may take (a restart included).
const REPLY: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// A tree of one kv daemon whose socket the root holds; restarts are not
/// limited (the tests kill it many times).
fn start_kv(memory: &str) -> (Tree, u16) {
    let port = free_port();
    let t = Tree::start(&format!(
        r#"
[supervisor]
intensity = 100000
period = "1s"

[[daemon]]
name = "kv"
kind = "kv"
memory = "{memory}"
listen = ["tcp:127.0.0.1:{port}"]
"#
    ));
    // The root binds before it forks anything; from then on, no refusal.
    t.poll("the root's socket", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (t, port)
}

/// One RESP command.
fn command_bytes(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends one command on a new connection and reads its reply: a simple
/// string or error as its line, a bulk string as its bytes, a null as
/// `None`. An I/O error means no reply came (the daemon died meanwhile,
/// or the connection was refused).
fn call(port: u16, args: &[&[u8]]) -> io::Result<Option<Vec<u8>>> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(REPLY))?;
    (&s).write_all(&command_bytes(args))?;
    let mut r = BufReader::new(&s);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    line.truncate(line.len() - 2);
    match line.first() {
        Some(b'$') => {
            let n: i64 = std::str::from_utf8(&line[1..]).unwrap().parse().unwrap();
            if n < 0 {
                return Ok(None);
            }
            let mut v = vec![0; n as usize + 2];
            r.read_exact(&mut v)?;
            v.truncate(n as usize);
            Ok(Some(v))
        }
        _ => Ok(Some(line)),
    }
}

/// The kv daemon's process, once it is up.
fn kv_proc(t: &Tree) -> Proc {
    t.poll("a kv daemon", || t.daemons_named("kv").into_iter().next())
}

/// SIGKILLs `p` and waits for its replacement.
fn kill_and_wait(t: &Tree, p: &Proc) -> Proc {
    send(p.pid, libc::SIGKILL).expect("kill kv");
    t.poll("kv's replacement", || {
        t.daemons_named("kv")
            .into_iter()
            .find(|q| q.pid != p.pid && q.state != 'Z')
    })
}

#[test]
fn kv_with_data_answers_after_sigkill_with_every_acknowledged_write() {
    let (t, port) = start_kv("32MiB");
    let mut written = 0;
    for round in 0..3 {
        for _ in 0..200 {
            let k = format!("key:{written}");
            let v = format!("value {written} {}", "x".repeat(written % 300));
            let r = call(port, &[b"SET", k.as_bytes(), v.as_bytes()]).expect("SET");
            assert_eq!(r.as_deref(), Some(&b"+OK"[..]));
            written += 1;
        }
        let before = kv_proc(&t);
        let after = kill_and_wait(&t, &before);
        assert_ne!(before.pid, after.pid);
        // The first command after the kill is answered, with every key.
        let n = call(port, &[b"DBSIZE"]).expect("DBSIZE after the kill");
        assert_eq!(n, Some(format!(":{written}").into_bytes()), "round {round}");
        for i in 0..written {
            let k = format!("key:{i}");
            let v = format!("value {i} {}", "x".repeat(i % 300));
            let got = call(port, &[b"GET", k.as_bytes()]).expect("GET");
            assert_eq!(got, Some(v.into_bytes()), "{k} after {} kills", round + 1);
        }
    }
    assert!(t.log().contains("restart"), "{}", t.log());
}

#[test]
fn connections_are_never_refused_while_kv_is_killed() {
    const KILLS: usize = 15;
    let (t, port) = start_kv("16MiB");
    kv_proc(&t);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let hammer = {
        let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
        thread::spawn(move || {
            let (mut refused, mut cut, mut other) = (0u64, 0u64, Vec::new());
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let k = format!("h:{i}");
                match call(port, &[b"SET", k.as_bytes(), i.to_string().as_bytes()]) {
                    Ok(Some(r)) if r == b"+OK" => acked.lock().unwrap().push(i),
                    Ok(r) => other.push(format!("{k}: {r:?}")),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => refused += 1,
                    // Killed while this connection was open: no reply, so
                    // the write was not acknowledged.
                    Err(_) => cut += 1,
                }
                i += 1;
            }
            (refused, cut, other, i)
        })
    };
    let mut p = kv_proc(&t);
    for _ in 0..KILLS {
        // Kill a daemon that has been serving: wait for an ack from it.
        let seen = acked.lock().unwrap().len();
        t.poll("an acknowledged write", || {
            (acked.lock().unwrap().len() > seen).then_some(())
        });
        p = kill_and_wait(&t, &p);
    }
    let seen = acked.lock().unwrap().len();
    t.poll("an acknowledged write after the last kill", || {
        (acked.lock().unwrap().len() > seen).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let (refused, cut, other, tried) = hammer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{KILLS} kills, {tried} connects: {} acknowledged, {cut} cut by a kill, {refused} refused",
        acked.len()
    );
    assert_eq!(refused, 0, "connections refused during restarts");
    assert!(other.is_empty(), "unexpected replies: {other:?}");
    for i in &acked {
        let k = format!("h:{i}");
        let got = call(port, &[b"GET", k.as_bytes()]).expect("GET");
        assert_eq!(
            got,
            Some(i.to_string().into_bytes()),
            "acknowledged {k} lost"
        );
    }
}

/// A program written for systemd's socket activation: checks LISTEN_PID,
/// LISTEN_FDS and where the region went, then answers each connection on
/// the first socket with what it was given.
const SOCKET_ACTIVATED: &str = r#"
import os, socket
n = int(os.environ["LISTEN_FDS"])
assert os.environ["LISTEN_PID"] == str(os.getpid()), "LISTEN_PID"
region = int(os.environ["FORKROOT_REGION_FD"])
assert region == 3 + n, "the region follows the sockets"
os.fstat(region)
for fd in range(3, 3 + n):
    assert socket.socket(fileno=os.dup(fd)).getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    names = os.environ["LISTEN_FDNAMES"]
    listen = os.environ["FORKROOT_LISTEN"].replace("\n", " ")
    c.sendall(f"{os.getpid()} {n} {region} {names} {listen}\n".encode())
    c.close()
"#;

#[test]
fn an_execd_program_gets_listen_fds_and_serves_on_the_same_socket_across_kills() {
    let port = free_port();
    let t = Tree::start(&format!(
        r#"
[supervisor]
intensity = 1000
period = "1s"

[[daemon]]
name = "app"
exec = ["python3", "-c", '''{SOCKET_ACTIVATED}''']
listen = ["unix:@DIR@/app.sock", "tcp:127.0.0.1:{port}"]
"#
    ));
    let sock = t.path("app.sock");
    t.poll("the root's socket", || UnixStream::connect(&sock).ok());
    // A connection the killed incarnation accepted just before it died
    // ends without a reply (SIGKILL is delivered asynchronously): ask
    // again. A refused connect fails the test.
    let ask = || -> String {
        loop {
            let s = UnixStream::connect(&sock).expect("connect: the root holds the socket");
            s.set_read_timeout(Some(REPLY)).unwrap();
            let mut line = String::new();
            match BufReader::new(&s).read_line(&mut line) {
                Ok(n) if n > 0 => return line,
                _ => continue,
            }
        }
    };
    let root = t.pid;
    let dir = t.dir.path().display().to_string();
    let mut last = 0;
    for round in 0..5 {
        let line = ask();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 6, "{line:?}\n{}", t.log());
        let pid: i32 = f[0].parse().unwrap();
        assert_ne!(pid, last, "round {round}: a new incarnation");
        assert_eq!(&f[1..4], ["2", "5", "app:app"], "{line:?}");
        assert_eq!(f[4], format!("unix:{dir}/app.sock"));
        assert_eq!(f[5], format!("tcp:127.0.0.1:{port}"));
        assert!(children(root).iter().any(|c| c.pid == pid));
        send(pid, libc::SIGKILL).unwrap();
        last = pid;
        // Connect at once, while it may still be down: the backlog holds
        // the connection for the replacement.
    }
}

#[test]
fn a_bad_listen_is_a_located_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        r#"
[[daemon]]
name = "a"
kind = "kv"
listen = ["tcp:localhost:6380", 5, "unix:", "127.0.0.1:1", "tcp:127.0.0.1:1", "tcp:127.0.0.1:1"]

[[daemon]]
name = "b"
kind = "kv"
listen = "tcp:127.0.0.1:2"
"#,
    );
    let out = command(&dir)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    for place in [
        "daemon[0].listen[0]",
        "daemon[0].listen[1]",
        "daemon[0].listen[2]",
        "daemon[0].listen[3]",
        "daemon[0].listen[5]",
        "daemon[1].listen",
    ] {
        assert!(err.contains(place), "{place} missing from:\n{err}");
    }
    assert!(!err.contains("daemon[0].listen[4]"), "{err}");
    assert!(err.contains("is not IP:PORT"), "{err}");
    assert!(err.contains("listed twice"), "{err}");

    // A well-formed address that cannot be bound: nothing starts, exit 78,
    // the place named.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut t = Tree::start(&format!(
        r#"
[[daemon]]
name = "kv"
kind = "kv"
listen = ["tcp:127.0.0.1:{port}"]
"#
    ));
    assert_eq!(t.wait_code(), 78, "{}", t.log());
    let log = t.log();
    assert!(log.contains("daemon[0].listen[0]"), "{log}");
    assert!(log.contains("cannot listen on"), "{log}");
    assert!(t.daemons_named("kv").is_empty());
}

/// A root that stops cleanly removes the Unix socket files it bound, and
/// leaves alone a socket another process put at the same path since.
#[test]
fn a_clean_stop_removes_the_roots_unix_socket_files_and_no_one_elses() {
    let config = "[[daemon]]\nname = \"a\"\nexec = [\"/bin/sleep\", \"1000\"]\n\
                  listen = [\"unix:@DIR@/a.sock\"]\n\n\
                  [[daemon]]\nname = \"b\"\nexec = [\"/bin/sleep\", \"1000\"]\n\
                  listen = [\"unix:@DIR@/b.sock\"]\n";
    let mut t = Tree::start(config);
    let (a, b) = (t.path("a.sock"), t.path("b.sock"));
    t.poll("the root's sockets", || UnixStream::connect(&a).ok());
    t.poll("b's socket file", || b.exists().then_some(()));
    // Another process replaces b's file with a socket of its own.
    std::fs::remove_file(&b).unwrap();
    let theirs = std::os::unix::net::UnixListener::bind(&b).unwrap();
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
    assert!(
        !a.exists(),
        "the root's socket file is left after a clean stop"
    );
    assert!(b.exists(), "the root removed a socket it did not bind");
    drop(theirs);
}
