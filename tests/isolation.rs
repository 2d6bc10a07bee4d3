//! Memory isolation and state: a daemon cannot write into a sibling's
//! region (nor make it writable), and a daemon's region outlives it.

mod common;

use common::{send, Tree};
use libc::{SIGKILL, SIGTERM};

#[test]
fn a_daemon_writing_into_a_sibling_dies_with_sigsegv_and_the_bytes_are_intact() {
    let mut t = Tree::start(
        r#"
[supervisor]
intensity = 1000
period = "10s"

[[daemon]]
name = "victim"
kind = "probe"
memory = "64KiB"
[daemon.args]
out = "@DIR@/victim.out"
fill = 171

[[daemon]]
name = "attacker"
kind = "probe"
memory = "64KiB"
backoff = "50ms"
[daemon.args]
out = "@DIR@/attacker.out"
attack = "victim"
"#,
    );
    // Wait until two attacks that read 171 have been completed (ended by a
    // crash): the second read the byte after the first tried to overwrite it.
    // (The very first attack may run before the victim filled its page, and
    // read 0.)
    let (out, crashes) = t.poll("two completed attacks that read 171", || {
        let out = t.out("attacker");
        let crashes = t.log_lines(&["crashed", "daemon=attacker"]);
        let runs = runs(&out);
        let done = &runs[..crashes.len().min(runs.len())];
        let read_171 = done
            .iter()
            .filter(|r| r.first() == Some(&"sibling victim first_byte=171".to_owned()))
            .count();
        (read_171 >= 2).then_some((out, crashes))
    });
    for c in &crashes {
        assert!(c.contains("killed by SIGSEGV"), "{c}");
    }
    let runs = runs(&out);
    let mut seen_171 = false;
    for run in &runs[..crashes.len()] {
        let first = run.first().map(String::as_str);
        match first {
            Some("sibling victim first_byte=171") => seen_171 = true,
            // Only before the victim filled its page.
            Some("sibling victim first_byte=0") if !seen_171 => {}
            _ => panic!("the attacker read {first:?} in {out:?}"),
        }
        assert_eq!(run[1..], ["mprotect EACCES", "writing"], "{out:?}");
    }
    assert!(!out.iter().any(|l| l == "wrote"), "{out:?}");
    assert!(!out.iter().any(|l| l == "mprotect ok"), "{out:?}");
    // The victim was never disturbed: one start, no crash.
    assert_eq!(t.starts("victim").len(), 1);
    assert!(t.log_lines(&["crashed", "daemon=victim"]).is_empty());

    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

/// A probe's lines after each `start` line (less its `deaths` report), one
/// vector per run.
fn runs(out: &[String]) -> Vec<Vec<String>> {
    let mut runs: Vec<Vec<String>> = Vec::new();
    for line in out {
        if line.starts_with("start ") {
            runs.push(Vec::new());
        } else if line.starts_with("deaths ") {
            continue;
        } else if let Some(r) = runs.last_mut() {
            r.push(line.clone());
        }
    }
    runs
}

/// An exec daemon that writes `kept` into the first bytes of its state (at
/// offset 64KiB of the region at fd 3, after the system area) on its first
/// run, and on every run reports `PID RESTARTS HEX-OF-THOSE-BYTES`.
fn keeper(name: &str, on_restart: &str) -> String {
    format!(
        r#"
[[daemon]]
name = "{name}"
memory = "4KiB"
on_restart = "{on_restart}"
exec = ["/bin/sh", "-c", '''
r=$FORKROOT_RESTARTS
if [ "$r" = 0 ]; then
  printf kept | dd of=/proc/self/fd/3 bs=1 seek=65536 conv=notrunc 2>/dev/null
fi
echo "$$ $r $(dd if=/proc/self/fd/3 bs=1 skip=65536 count=4 2>/dev/null | od -An -tx1)" >> @DIR@/{name}.out
exec sleep 1000
''']
"#
    )
}

#[test]
fn a_restarted_daemon_finds_its_state_unless_it_restarts_fresh() {
    let config = format!(
        "{}{}",
        keeper("resumer", "resume"),
        keeper("freshman", "fresh")
    );
    let mut t = Tree::start(&config);
    for (name, after) in [("resumer", "6b 65 70 74"), ("freshman", "00 00 00 00")] {
        let line = |n: usize| {
            t.poll(&format!("run {n} of {name}"), || {
                let out = t.out(name);
                out.get(n)
                    .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            })
        };
        let first = line(0);
        assert_eq!(first[1..].join(" "), "0 6b 65 70 74", "{name}: {first:?}");
        send(first[0].parse().unwrap(), SIGKILL).unwrap();
        let second = line(1);
        assert_ne!(second[0], first[0]);
        assert_eq!(second[1..].join(" "), format!("1 {after}"), "{name}");
    }
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}
