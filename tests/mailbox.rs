//! Mailboxes through the real binary: `examples/mail.rs` run with
//! `exec = [...]` sends and receives by name. Messages sent while the
//! receiver is down wait for its replacement, in order; a sender SIGKILLed
//! mid-send leaves no torn message; a full mailbox, an unknown name and a
//! message too large are clear errors.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::{send, Tree};
use libc::{SIGKILL, SIGTERM};

/// `examples/mail.rs`: an exec'd program with a mailbox.
fn mail() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    common::example("mail", &PATH)
}

/// `examples/mail_kinds.rs`: an author's binary whose built-in kinds use
/// their mailboxes.
fn mail_kinds() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    common::example("mail_kinds", &PATH)
}

fn daemon(name: &str, args: &str, keys: &str) -> String {
    format!(
        "[[daemon]]\nname = \"{name}\"\nexec = [\"{}\", {args}]\nmemory = \"64KiB\"\n{keys}\n",
        mail().display()
    )
}

fn lines(t: &Tree, file: &str) -> Vec<String> {
    std::fs::read_to_string(t.path(file))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn pid_of(t: &Tree, name: &str) -> Option<i32> {
    let d = t.daemon_status(name)?;
    (d["state"] == "running").then(|| d["pid"].as_i64().map(|p| p as i32))?
}

#[test]
fn a_thousand_messages_sent_while_the_receiver_is_down_reach_its_replacement_in_order() {
    let config = format!(
        "[supervisor]\nintensity = 100\nperiod = \"10s\"\n{}{}",
        daemon(
            "inbox",
            "\"recv\", \"@DIR@/inbox.out\"",
            "mailbox = 1024\nbackoff = \"2s\""
        ),
        daemon(
            "outbox",
            "\"burst\", \"inbox\", \"1000\", \"@DIR@/outbox.out\"",
            ""
        ),
    );
    let mut t = Tree::start(&config);
    let first: i32 = t.poll("inbox started", || {
        let l = lines(&t, "inbox.out");
        l.first()?.strip_prefix("start ")?.parse().ok()
    });
    // Killed once the root counts it ready (its exec seen): a death while
    // it starts would hold outbox, the next to start, behind its backoff.
    t.poll("inbox running", || {
        (pid_of(&t, "inbox") == Some(first)).then_some(())
    });
    send(first, SIGKILL).expect("kill inbox");
    t.poll("outbox sent its burst", || {
        lines(&t, "outbox.out")
            .contains(&"sent 1000".to_owned())
            .then_some(())
    });
    // The burst went out while inbox had no process (outbox waited for
    // `whereis` to show none, and the backoff keeps it down for 2s).
    let starts = |l: &[String]| l.iter().filter(|s| s.starts_with("start ")).count();
    assert_eq!(
        starts(&lines(&t, "inbox.out")),
        1,
        "inbox restarted too early"
    );
    let got = t.poll("the replacement received 1000 messages", || {
        let l = lines(&t, "inbox.out");
        let at = l.iter().rposition(|s| s.starts_with("start "))?;
        (at > 0 && l.len() - at > 1000).then(|| l[at + 1..].to_vec())
    });
    let want: Vec<String> = (0..1000).map(|i| format!("outbox {i}")).collect();
    assert_eq!(got, want, "delivered in order, none lost or repeated");
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

#[test]
fn a_sender_killed_mid_send_leaves_no_torn_message() {
    let config = format!(
        "[supervisor]\nintensity = 1000\nperiod = \"1s\"\n{}{}",
        daemon(
            "inbox",
            "\"recv\", \"@DIR@/inbox.out\"",
            "mailbox = 64\nmailbox_message = \"64KiB\""
        ),
        daemon("pump", "\"pattern\", \"inbox\", \"65536\"", ""),
    );
    let mut t = Tree::start(&config);
    let seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    eprintln!("seed {seed:#x}");
    let mut rng = seed;
    let mut last = None;
    const KILLS: usize = 30;
    for _ in 0..KILLS {
        let pid = t.poll("pump running with a new pid", || {
            pid_of(&t, "pump").filter(|&p| Some(p) != last)
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(2_000 + rng % 20_000));
        send(pid, SIGKILL).expect("kill pump");
        last = Some(pid);
    }
    // The receiver goes on after the last kill.
    let ok_lines = |t: &Tree| {
        lines(t, "inbox.out")
            .iter()
            .filter(|l| l.starts_with("pump ok"))
            .count()
    };
    let before = ok_lines(&t);
    t.poll("inbox receiving after the last kill", || {
        (ok_lines(&t) > before + 100).then_some(())
    });
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
    let l = lines(&t, "inbox.out");
    let torn: Vec<&String> = l.iter().filter(|s| s.contains(" torn ")).collect();
    assert!(torn.is_empty(), "torn messages delivered: {torn:?}");
    let other: Vec<&String> = l
        .iter()
        .filter(|s| {
            !s.starts_with("pump ok ") && !s.starts_with("start ") && !s.starts_with("skipped ")
        })
        .collect();
    assert!(other.is_empty(), "unexpected lines: {other:?}");
    let skipped = l
        .iter()
        .find_map(|s| s.strip_prefix("skipped "))
        .expect("the receiver's counters at its stop");
    eprintln!(
        "{KILLS} kills of a sender of 64 KiB messages: {} messages whole, \
         skipped (writer died mid-send) and corrupt: {skipped}",
        ok_lines(&t)
    );
    assert!(skipped.ends_with("corrupt 0"), "{skipped}");
}

#[test]
fn a_full_mailbox_an_unknown_name_and_a_message_too_large_are_clear_errors() {
    // `sink` runs a program that never reads: its mailbox of 4 fills up.
    let config = format!(
        "[[daemon]]\nname = \"sink\"\nexec = [\"sleep\", \"1000\"]\nmailbox = 4\n{}",
        daemon("client", "\"errors\", \"sink\", \"@DIR@/client.out\"", ""),
    );
    let mut t = Tree::start(&config);
    let l = t.poll("client done", || {
        let l = lines(&t, "client.out");
        l.contains(&"done".to_owned()).then_some(l)
    });
    assert_eq!(
        l,
        [
            "sent 4 then: send to sink: its mailbox is full",
            "send: no daemon is named \"nobody\"",
            "send to sink: a 100000-byte message exceeds its mailbox_message of 1024 bytes",
            "done",
        ]
    );
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

#[test]
fn whereis_follows_the_current_incarnation() {
    let config = format!(
        "{}{}",
        daemon("victim", "\"recv\", \"@DIR@/victim.out\"", ""),
        daemon("finder", "\"where\", \"victim\", \"@DIR@/finder.out\"", ""),
    );
    let mut t = Tree::start(&config);
    let first = started(&t, "victim.out", 0);
    let running = |pid: i32, restarts: u32| format!("victim pid {pid} Running restarts {restarts}");
    t.poll("finder sees the first victim", || {
        lines(&t, "finder.out")
            .contains(&running(first, 0))
            .then_some(())
    });
    send(first, SIGKILL).expect("kill victim");
    let second = started(&t, "victim.out", 1);
    t.poll("finder sees the replacement", || {
        lines(&t, "finder.out")
            .contains(&running(second, 1))
            .then_some(())
    });
    assert_eq!(pid_of(&t, "victim"), Some(second));
    // Between the two, no line names a pid other than theirs: a name is
    // never bound to a process that is not its current incarnation.
    let allowed = [
        "victim pid none ".to_owned(),
        format!("victim pid {first} "),
        format!("victim pid {second} "),
    ];
    for l in lines(&t, "finder.out") {
        assert!(allowed.iter().any(|p| l.starts_with(p)), "{l}");
    }
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

#[test]
fn built_in_daemons_send_receive_and_monitor_by_name() {
    // Built-in kinds (forked, not exec'd) next to an exec'd program that
    // monitors one of them: the same post and registry serve both.
    let config = format!(
        "[[daemon]]\nname = \"inbox\"\nkind = \"inbox\"\nmailbox = 256\n\
         [daemon.args]\nout = \"@DIR@/inbox.out\"\n\
         [[daemon]]\nname = \"sender\"\nkind = \"sender\"\n\
         [daemon.args]\nto = \"inbox\"\ncount = 500\n{}",
        daemon(
            "watcher",
            "\"watch\", \"sender\", \"@DIR@/watcher.out\"",
            ""
        ),
    );
    let mut t = Tree::start_bin(mail_kinds(), &config);
    let got = t.poll("inbox received 500 messages", || {
        let l = lines(&t, "inbox.out");
        (l.len() > 500).then(|| l[1..].to_vec())
    });
    let want: Vec<String> = (0..500).map(|i| format!("sender {i}")).collect();
    assert_eq!(got, want);
    started(&t, "watcher.out", 0);
    let sender = pid_of(&t, "sender").expect("sender running");
    send(sender, SIGKILL).expect("kill sender");
    let down = t.poll("watcher got DOWN", || {
        lines(&t, "watcher.out")
            .into_iter()
            .find(|l| l.starts_with("Down "))
    });
    assert_eq!(
        down,
        format!("Down sender pid {sender} killed by SIGKILL restarts 0")
    );
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

/// The first `start PID` line of `file`, once there is one.
fn started(t: &Tree, file: &str, nth: usize) -> i32 {
    t.poll(&format!("{file} start #{nth}"), || {
        let l = lines(t, file);
        let starts: Vec<&String> = l.iter().filter(|s| s.starts_with("start ")).collect();
        starts.get(nth)?.strip_prefix("start ")?.parse().ok()
    })
}

#[test]
fn a_monitor_gets_down_with_the_reason_and_the_monitored_daemon_is_restarted_untouched() {
    let config = format!(
        "{}{}",
        daemon("victim", "\"recv\", \"@DIR@/victim.out\"", ""),
        daemon(
            "watcher",
            "\"watch\", \"victim\", \"@DIR@/watcher.out\"",
            ""
        ),
    );
    let mut t = Tree::start(&config);
    let watcher = started(&t, "watcher.out", 0);
    let victim = started(&t, "victim.out", 0);
    send(victim, libc::SIGSEGV).expect("kill victim");
    let down = t.poll("watcher got DOWN", || {
        lines(&t, "watcher.out")
            .into_iter()
            .find(|l| l.starts_with("Down "))
    });
    assert_eq!(
        down,
        format!("Down victim pid {victim} killed by SIGSEGV restarts 0")
    );
    // The victim is restarted by its supervisor as always; the watcher is
    // the same process, and its monitor fired once: a second death sends
    // nothing.
    let second = started(&t, "victim.out", 1);
    assert_ne!(second, victim);
    send(second, SIGKILL).expect("kill victim again");
    started(&t, "victim.out", 2);
    assert_eq!(pid_of(&t, "watcher"), Some(watcher));
    let downs = lines(&t, "watcher.out")
        .iter()
        .filter(|l| l.starts_with("Down "))
        .count();
    assert_eq!(downs, 1, "a monitor fires once");
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

#[test]
fn a_link_restarts_its_peer_unless_the_peer_traps_exits_and_gets_exit_instead() {
    let config = format!(
        "{}{}{}",
        daemon("victim", "\"recv\", \"@DIR@/victim.out\"", ""),
        daemon(
            "trapper",
            "\"recv\", \"@DIR@/trapper.out\"",
            "links = [\"victim\"]\ntrap_exits = true"
        ),
        daemon(
            "plain",
            "\"recv\", \"@DIR@/plain.out\"",
            "links = [\"victim\"]"
        ),
    );
    let mut t = Tree::start(&config);
    let trapper = started(&t, "trapper.out", 0);
    let plain = started(&t, "plain.out", 0);
    let victim = started(&t, "victim.out", 0);
    send(victim, SIGKILL).expect("kill victim");
    let exit = t.poll("trapper got EXIT", || {
        lines(&t, "trapper.out")
            .into_iter()
            .find(|l| l.starts_with("Exit "))
    });
    assert_eq!(
        exit,
        format!("Exit victim pid {victim} killed by SIGKILL restarts 0")
    );
    // The linked daemon without trap_exits went down with its link and
    // came back as a new process; the one that traps exits did not.
    let plain2 = started(&t, "plain.out", 1);
    assert_ne!(plain2, plain);
    started(&t, "victim.out", 1);
    assert_eq!(pid_of(&t, "trapper"), Some(trapper));
    // Each start is counted with its cause, in `ctl status --json` and in
    // the metrics.
    let causes = |name: &str| {
        let d = t.daemon_status(name).expect("status");
        (d["cause"].clone(), d["starts_by_cause"].clone())
    };
    assert_eq!(
        causes("plain"),
        (
            serde_json::json!("link"),
            serde_json::json!({"start": 1, "link": 1})
        )
    );
    assert_eq!(
        causes("victim"),
        (
            serde_json::json!("death"),
            serde_json::json!({"start": 1, "death": 1})
        )
    );
    assert_eq!(
        causes("trapper"),
        (serde_json::json!("start"), serde_json::json!({"start": 1}))
    );
    let m = t.ctl_run(&["metrics"]).stdout;
    for line in [
        "forkroot_starts_total{daemon=\"plain\",cause=\"link\"} 1\n",
        "forkroot_starts_total{daemon=\"victim\",cause=\"death\"} 1\n",
        "forkroot_starts_total{daemon=\"trapper\",cause=\"link\"} 0\n",
        "forkroot_system_messages_dropped_total 0\n",
    ] {
        assert!(m.contains(line), "{line} missing from:\n{m}");
    }
    assert_eq!(
        lines(&t, "trapper.out")
            .iter()
            .filter(|l| l.starts_with("start "))
            .count(),
        1
    );
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

/// Monitor bits a daemon can write are its own: a real process that writes
/// all ones over every byte it maps where monitors could live (the post
/// outside the rings, every writable `forkroot:monitors` mapping it has)
/// then sees a daemon killed: only it (it set every bit of its own row)
/// and the daemon that asked get a DOWN; a daemon that never asked gets
/// nothing.
#[test]
fn a_daemon_that_scribbles_over_the_monitor_bits_cannot_send_another_a_down() {
    let config = format!(
        "{}{}{}{}",
        daemon("victim", "\"recv\", \"@DIR@/victim.out\"", ""),
        daemon("quiet", "\"recv\", \"@DIR@/quiet.out\"", ""),
        daemon("honest", "\"watch\", \"victim\", \"@DIR@/honest.out\"", ""),
        daemon("scribbler", "\"scribble\", \"@DIR@/scribbler.out\"", ""),
    );
    let mut t = Tree::start(&config);
    let victim = started(&t, "victim.out", 0);
    started(&t, "quiet.out", 0);
    started(&t, "honest.out", 0);
    started(&t, "scribbler.out", 0);
    let did = lines(&t, "scribbler.out")[0].clone();
    let words: Vec<&str> = did.split(' ').collect();
    assert_eq!(words[..2], ["scribbled", "post"], "{did}");
    assert!(words[2].parse::<u64>().unwrap() > 0, "{did}");
    // Exactly one row of monitors is writable in it: its own.
    assert_eq!(words[3..5], ["monitors", "1"], "{did}");
    send(victim, SIGKILL).expect("kill victim");
    let down = format!("Down victim pid {victim} killed by SIGKILL restarts 0");
    for file in ["honest.out", "scribbler.out"] {
        let got = t.poll(&format!("{file} got DOWN"), || {
            lines(&t, file).into_iter().find(|l| l.starts_with("Down "))
        });
        assert_eq!(got, down, "{file}");
    }
    // The DOWNs went out together, when the root reaped the victim; the
    // daemon that never asked reads its mailbox every 200 ms.
    started(&t, "victim.out", 1);
    std::thread::sleep(Duration::from_millis(600));
    let quiet = lines(&t, "quiet.out");
    assert!(
        quiet.iter().all(|l| l.starts_with("start ")),
        "a DOWN nobody asked for: {quiet:?}"
    );
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}
