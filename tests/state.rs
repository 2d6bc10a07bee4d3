//! State that survives crashes, through the real binary: the counter's
//! output stays exactly 1..N across SIGKILLs (cold restarts, standby
//! takeovers, a SIGKILLed root with `state_dir`), a `decide` daemon sees its
//! deaths, and a checkpoint a daemon dies of right after resuming is poison.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{send, Tree};
use libc::{SIGKILL, SIGSEGV, SIGTERM};

/// A counter writing to `@DIR@/NAME.out`, with extra daemon keys.
fn counter(name: &str, keys: &str) -> String {
    format!(
        "[[daemon]]\nname = \"{name}\"\nkind = \"counter\"\n{keys}\n\
         [daemon.args]\nrate = 20000\nout = \"@DIR@/{name}.out\"\n"
    )
}

/// Lets the root restart as often as the test kills.
const PATIENT: &str = "[supervisor]\nintensity = 1000000\nperiod = \"1s\"\n";

/// The daemon's current primary pid, from `ctl status --json`.
fn primary(t: &Tree, name: &str) -> Option<i32> {
    let d = t.daemon_status(name)?;
    if d["state"] != "running" {
        return None;
    }
    d["pid"].as_i64().map(|p| p as i32)
}

/// SIGKILLs the daemon's primary `n` times, each time waiting for the next
/// primary, after letting it count for a random moment.
fn kill_repeatedly(t: &Tree, name: &str, n: usize) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    let mut last = None;
    for _ in 0..n {
        let pid = t.poll("a new running primary", || {
            primary(t, name).filter(|&p| Some(p) != last)
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 3000));
        let _ = send(pid, SIGKILL);
        last = Some(pid);
    }
}

/// Asserts the file holds exactly 1..N (N > 0) and returns N.
fn assert_exact(t: &Tree, file: &str) -> usize {
    let text = std::fs::read_to_string(t.path(file)).expect("counter output");
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        assert_eq!(
            line,
            (i + 1).to_string(),
            "{file}: line {} is {line:?}",
            i + 1
        );
        n = i + 1;
    }
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{file}: a torn last line"
    );
    assert!(n > 0, "{file}: the counter emitted nothing");
    n
}

#[test]
fn the_counter_neither_skips_nor_repeats_across_kills() {
    let mut t = Tree::start(&format!("{PATIENT}{}", counter("c", "")));
    kill_repeatedly(&t, "c", 60);
    t.poll("the root to see the 60 kills", || {
        (t.log().matches("crashed daemon=c").count() >= 60).then_some(())
    });
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
    let n = assert_exact(&t, "c.out");
    eprintln!("counted to {n} across 60 kills");
}

#[test]
fn the_counter_with_a_standby_neither_skips_nor_repeats() {
    let mut t = Tree::start(&format!("{PATIENT}{}", counter("c", "standby = true")));
    // A standby ready before the first kill, so that at least one kill
    // is a takeover (the kills after it may come faster than a new one).
    t.poll("a standby ready", || {
        t.daemon_status("c")?["standby_pid"].as_i64()
    });
    kill_repeatedly(&t, "c", 40);
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
    assert_exact(&t, "c.out");
    assert!(t.log().contains("standby took over"), "{}", t.log());
}

/// A standby killed together with its primary: the primary is replaced
/// (by the standby if the root reaches it first, else by a fork), and so
/// is the standby, every time, whichever of the two dies first.
#[test]
fn a_standby_killed_with_its_primary_is_replaced() {
    let t = Tree::start(&format!("{PATIENT}{}", counter("c", "standby = true")));
    let pair = || {
        let d = t.daemon_status("c")?;
        if d["state"] != "running" {
            return None;
        }
        Some((d["pid"].as_i64()? as i32, d["standby_pid"].as_i64()? as i32))
    };
    let mut last = (0, 0);
    for round in 0..30 {
        let (primary, standby) = t.poll(
            &format!("round {round}: a new primary and a new ready standby"),
            || pair().filter(|&(p, s)| p != last.0 && p != last.1 && s != last.1),
        );
        let (first, second) = if round % 2 == 0 {
            (primary, standby)
        } else {
            (standby, primary)
        };
        send(first, SIGKILL).unwrap();
        send(second, SIGKILL).unwrap();
        last = (primary, standby);
    }
    t.poll("a primary and a ready standby after the last round", || {
        pair().filter(|&(p, s)| p != last.0 && p != last.1 && s != last.1)
    });
}

#[test]
fn the_counter_resumes_after_the_root_is_killed_with_a_state_dir() {
    let config = format!(
        "[root]\nstate_dir = \"@DIR@/state\"\n{PATIENT}{}",
        counter("c", "")
    );
    let mut t = Tree::start(&config);
    let mut counted = 0;
    for round in 0..4 {
        // Let it count, and kill a daemon once too.
        kill_repeatedly(&t, "c", 3);
        t.poll("the counter past what it had", || {
            let n = std::fs::read_to_string(t.path("c.out"))
                .ok()?
                .lines()
                .count();
            (n > counted).then_some(n)
        });
        send(t.pid, SIGKILL).unwrap();
        t.wait_exit();
        counted = std::fs::read_to_string(t.path("c.out"))
            .unwrap()
            .lines()
            .count();
        t.respawn();
        // The new root waits for the old daemons, takes the state_dir and
        // resumes: the new counter's first number follows the file's.
        t.poll(&format!("round {round}: the counter running again"), || {
            primary(&t, "c")
        });
    }
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
    let n = assert_exact(&t, "c.out");
    assert!(n >= counted, "the counter went back: {n} < {counted}");
    assert!(t.log().contains("resumed from checkpoint"), "{}", t.log());
}

/// A probe with a checkpointed counter; `out` is `@DIR@/NAME.out`.
fn checkpointed_probe(name: &str, on_restart: &str, crash_at: i64) -> String {
    format!(
        "[[daemon]]\nname = \"{name}\"\nkind = \"probe\"\nmemory = \"64KiB\"\non_restart = \"{on_restart}\"\n\
         [daemon.args]\nout = \"@DIR@/{name}.out\"\ncheckpoint = true\ncrash_at = {crash_at}\n"
    )
}

#[test]
fn a_decide_daemon_sees_its_deaths_and_their_causes() {
    let mut t = Tree::start(&format!(
        "{PATIENT}{}",
        checkpointed_probe("d", "decide", -1)
    ));
    for n in 1..=3 {
        let pid = t.wait_starts("d", n)[n - 1].pid;
        t.poll("the probe committed", || {
            (t.out("d")
                .iter()
                .filter(|l| l.starts_with("committed "))
                .count()
                >= n)
                .then_some(())
        });
        send(pid, if n == 2 { SIGKILL } else { SIGSEGV }).unwrap();
    }
    // A probe writes `start`, then `deaths`, then `resumed`: wait for the
    // fourth run's `resumed` line, the last of the three.
    let out = t.poll("the fourth run's resumed line", || {
        let out = t.out("d");
        (out.iter().filter(|l| l.starts_with("resumed ")).count() >= 4).then_some(out)
    });
    let lines = |prefix: &str| -> Vec<String> {
        out.iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    };
    assert_eq!(
        lines("deaths "),
        [
            "deaths 0 -",
            "deaths 1 killed by SIGSEGV",
            "deaths 2 killed by SIGKILL",
            "deaths 3 killed by SIGSEGV"
        ],
        "{}",
        t.log()
    );
    // Decide restores nothing by itself: each start sees the state exactly
    // as the dead process left it (each committed one more).
    let resumed = lines("resumed ");
    assert_eq!(
        resumed,
        [
            "resumed 0 Decide",
            "resumed 1 Decide",
            "resumed 2 Decide",
            "resumed 3 Decide"
        ]
    );
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn a_checkpoint_that_kills_its_daemon_is_poison() {
    // Every start resumes VALUE and commits VALUE + 1, except at VALUE 2,
    // where it crashes at once: checkpoint 2 is poison.
    let mut t = Tree::start(&format!(
        "{PATIENT}{}",
        checkpointed_probe("p", "resume", 2)
    ));
    // Two external kills (SIGKILL: not the daemon's fault, not poison) take
    // it from 0 to 2; then it crashes on resuming 2.
    for n in 1..=2 {
        t.poll("the probe committed", || {
            (t.out("p")
                .iter()
                .filter(|l| l.starts_with("committed "))
                .count()
                >= n)
                .then_some(())
        });
        let pid = t.wait_starts("p", n)[n - 1].pid;
        send(pid, SIGKILL).unwrap();
    }
    t.wait_log(&["checkpoint is poison", "daemon=p"]);
    // The start after the poison verdict falls back to the checkpoint
    // before (value 1), and carries on from there.
    t.poll("a start that fell back", || {
        t.out("p")
            .iter()
            .find(|l| l.starts_with("resumed 1 FellBack"))
            .cloned()
    });
    let resumed: Vec<String> = t
        .out("p")
        .into_iter()
        .filter(|l| l.starts_with("resumed "))
        .collect();
    assert_eq!(resumed[0], "resumed 0 Fresh");
    assert!(resumed[1].starts_with("resumed 1 Resumed"), "{resumed:?}");
    assert!(resumed[2].starts_with("resumed 2 Resumed"), "{resumed:?}");
    assert!(
        resumed[3].starts_with("resumed 1 FellBack { poison: "),
        "{resumed:?}"
    );
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn poison_falls_back_to_fresh_when_no_older_checkpoint_is_left() {
    // Crashes on resuming 1, the only checkpoint: the next start is fresh.
    let mut t = Tree::start(&format!(
        "{PATIENT}{}",
        checkpointed_probe("p", "resume", 1)
    ));
    t.poll("the probe committed", || {
        t.out("p").iter().any(|l| l == "committed 1").then_some(())
    });
    send(t.wait_starts("p", 1)[0].pid, SIGKILL).unwrap();
    t.poll("a fresh start after the poison", || {
        t.out("p")
            .iter()
            .find(|l| l.starts_with("resumed 0 FellBack"))
            .cloned()
    });
    // The root logs the poison after the replacement's fork (with the
    // crash's report): wait for the line.
    t.wait_log(&["checkpoint is poison", "daemon=p"]);
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn a_damaged_state_header_starts_the_daemon_over_instead_of_failing_each_start() {
    // Bytes of the state header overwritten from outside (a bit flipped in
    // its layout, so its crc no longer matches): no checkpoint behind it
    // can be trusted. The replacement says so and starts fresh, once; it
    // does not refuse the state at every start, for ever.
    let t = Tree::start(&format!(
        "{PATIENT}[root]\nstate_dir = \"@DIR@/state\"\n{}",
        counter("c", "on_restart = \"resume\"")
    ));
    let first = t.poll("c running", || primary(&t, "c"));
    let out = t.path("c.out");
    t.poll("c counting", || {
        (fs::read_to_string(&out).ok()?.lines().count() > 1000).then_some(())
    });
    let region = t.path("state/c.region");
    let at = forkroot::region::SYSTEM_SIZE as u64 + 16;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&region)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    drop(f);
    assert_eq!(send(first, SIGKILL), Ok(()));
    t.wait_log(&["state header damaged", "starting fresh"]);
    let second = t.poll("c running again", || {
        primary(&t, "c").filter(|&p| p != first)
    });
    // The replacement counts from 1 (it did not resume), its output cut
    // back to nothing and written again.
    t.wait_log(&[&format!("c[{second}]"), "counting next=1 "]);
    t.poll("c's output written again from 1", || {
        let text = fs::read_to_string(&out).ok()?;
        (text.lines().next() == Some("1") && text.lines().count() > 100).then_some(())
    });
    let d = t.daemon_status("c").unwrap();
    assert_eq!(d["pid"].as_i64(), Some(i64::from(second)), "{d}");
    assert_eq!(
        d["restarts"].as_u64(),
        Some(1),
        "one start after the kill: {d}"
    );
}
