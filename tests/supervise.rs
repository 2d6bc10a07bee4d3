//! Supervision by the real binary: restarts after kills and crashes, restart
//! types, restart intensity, backoff, and the top supervisor's strategies.

mod common;

use common::{log_pid, send, Proc, Start, Tree};
use libc::{SIGKILL, SIGTERM};

/// A `[[daemon]]` table for a probe reporting to `NAME.out`, with extra
/// daemon keys and extra `[daemon.args]` lines.
fn probe(name: &str, keys: &str, args: &str) -> String {
    format!(
        "[[daemon]]\nname = \"{name}\"\nkind = \"probe\"\nmemory = \"64KiB\"\n{keys}\n\
         [daemon.args]\nout = \"@DIR@/{name}.out\"\n{args}\n"
    )
}

#[test]
fn a_killed_daemon_is_replaced_by_a_new_pid_with_the_same_name() {
    let mut t = Tree::start(&probe("victim", "", ""));
    let first = t.wait_starts("victim", 1)[0];
    assert_eq!(first.restarts, 0);
    // The root's child named `forkroot: victim` is the one that reported.
    let old = t.poll("the daemon among the root's children, by name", || {
        t.daemons_named("victim")
            .into_iter()
            .find(|p| p.pid == first.pid)
    });

    send(old.pid, SIGKILL).unwrap();

    let s = t.wait_starts("victim", 2);
    assert_ne!(s[1].pid, old.pid, "the replacement has a new pid");
    assert_eq!(s[1].restarts, 1, "the replacement knows it is a restart");
    let new = t.poll("one child named `forkroot: victim`: the new pid", || {
        let d = t.daemons_named("victim");
        (d.len() == 1 && d[0].pid == s[1].pid).then(|| d[0].clone())
    });
    assert_eq!(new.ppid, t.pid);
    // The old process was reaped: no such pid, not even a zombie.
    t.wait_gone(std::slice::from_ref(&old));
    let crash = t.wait_log(&["crashed", "daemon=victim", &format!("pid={}", old.pid)]);
    assert!(crash.contains("killed by SIGKILL"), "{crash}");

    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
    assert!(Proc::pid_gone(new.pid));
}

#[test]
fn a_flaky_daemon_past_the_intensity_makes_the_root_give_up_with_69() {
    let config = format!(
        "[supervisor]\nintensity = 3\nperiod = \"10s\"\n\n{}\n\
         [[daemon]]\nname = \"flaky\"\nkind = \"flaky\"\nmemory = \"64KiB\"\n\
         [daemon.args]\nmean_life = \"20ms\"\n",
        probe("bystander", "", "")
    );
    let mut t = Tree::start(&config);
    assert_eq!(t.wait_code(), 69, "{}", t.log());

    let log = t.log();
    assert!(
        log.contains("restart intensity exceeded; giving up"),
        "{log}"
    );
    // The first start and 3 restarts; the 4th death is one too many.
    let started: Vec<i32> = t
        .log_lines(&["started", "daemon=flaky"])
        .iter()
        .filter_map(|l| log_pid(l))
        .collect();
    assert_eq!(started.len(), 4, "{log}");
    let crashes = t.log_lines(&["crashed", "daemon=flaky"]);
    assert_eq!(crashes.len(), 4, "{log}");
    assert!(
        crashes.iter().all(|l| l.contains("killed by SIGSEGV")),
        "{log}"
    );

    // The bystander was stopped gracefully, and nothing of the tree is left:
    // the root reaped every child before exiting.
    let by = t.starts("bystander");
    assert_eq!(by.len(), 1);
    assert!(t.out("bystander").contains(&format!("stop {}", by[0].pid)));
    for pid in started.iter().chain([&by[0].pid]) {
        assert!(Proc::pid_gone(*pid), "pid {pid} is left");
    }
}

#[test]
fn restart_types_transient_temporary_and_exec_daemons() {
    let exec = "[[daemon]]\nname = \"sh\"\nmemory = \"64KiB\"\nbackoff = \"50ms\"\n\
        exec = [\"/bin/sh\", \"-c\", 'echo \"$$ $FORKROOT_NAME $FORKROOT_REGION_FD \
        $FORKROOT_RESTARTS $(readlink /proc/$$/fd/3)\" >> @DIR@/sh.out; exit 1']\n";
    let config = format!(
        "[supervisor]\nintensity = 1000\nperiod = \"10s\"\n\n{}{}{}{}{}",
        probe("keeper", "", ""),
        probe("trans0", "restart = \"transient\"", "exit = 0"),
        probe(
            "trans3",
            "restart = \"transient\"\nbackoff = \"50ms\"",
            "exit = 3"
        ),
        probe("temp", "restart = \"temporary\"", "exit = 3"),
        exec,
    );
    let mut t = Tree::start(&config);

    t.wait_log(&["exited normally", "daemon=trans0"]);
    t.wait_log(&["not restarted", "daemon=trans0"]);
    t.wait_log(&["crashed", "daemon=temp", "exited with code 3"]);
    t.wait_log(&["not restarted", "daemon=temp"]);

    // transient + abnormal exit: restarted, again and again.
    let s = t.wait_starts("trans3", 3);
    assert_eq!(
        s.iter().map(|s| s.restarts).collect::<Vec<_>>()[..3],
        [0, 1, 2]
    );
    // Three starts make two crashes, logged after the next start.
    t.wait_log_count(&["crashed", "daemon=trans3"], 2);
    assert!(
        t.log_lines(&["crashed", "daemon=trans3"])
            .iter()
            .all(|l| l.contains("exited with code 3")),
        "{}",
        t.log()
    );

    // An exec'd program is restarted too, and sees its identity and its
    // region (a memfd) at fd 3.
    let lines = t.poll("3 runs of the exec daemon", || {
        let l: Vec<String> = std::fs::read_to_string(t.path("sh.out"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        (l.len() >= 3).then_some(l)
    });
    let mut pids = Vec::new();
    for (n, line) in lines.iter().take(3).enumerate() {
        // (readlink gives `/memfd:NAME (deleted)`: the last field has a space.)
        let w: Vec<&str> = line.splitn(5, ' ').collect();
        assert_eq!(w.len(), 5, "{line}");
        pids.push(w[0]);
        assert_eq!(w[1], "sh", "FORKROOT_NAME: {line}");
        assert_eq!(w[2], "3", "FORKROOT_REGION_FD: {line}");
        assert_eq!(w[3], n.to_string(), "FORKROOT_RESTARTS: {line}");
        assert!(w[4].starts_with("/memfd:"), "fd 3: {line}");
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "each run is a new process: {lines:?}");

    // Neither the normal transient exit nor the temporary one came back.
    assert_eq!(t.starts("trans0").len(), 1);
    assert_eq!(t.starts("temp").len(), 1);
    assert_eq!(t.starts("keeper").len(), 1);

    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn backoff_spaces_restarts_by_doubling_delays() {
    let config = format!(
        "[supervisor]\nintensity = 100\nperiod = \"10s\"\n\n{}",
        probe("b", "backoff = \"200ms\"", "exit = 3")
    );
    let mut t = Tree::start(&config);
    let s = t.wait_starts("b", 4);
    // Lower bounds only: each restart waits at least its delay after the
    // previous run (which began at its start line).
    for (k, want_ms) in [200u64, 400, 800].into_iter().enumerate() {
        let gap = s[k + 1].ns - s[k].ns;
        assert!(
            gap >= want_ms * 1_000_000,
            "restart {} came {}ms after the previous start; backoff is {want_ms}ms",
            k + 1,
            gap / 1_000_000
        );
    }
    assert!(!t
        .log_lines(&["restarting after backoff", "daemon=b"])
        .is_empty());
    // A stop during a backoff cancels the restart and exits cleanly.
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

/// Starts probes a, b, c (in that order) under `strategy`, with `a_keys`
/// as extra daemon keys of a, and returns the tree and their first starts.
fn start_abc(strategy: &str, a_keys: &str) -> (Tree, Vec<Start>) {
    let config = format!(
        "[supervisor]\nstrategy = \"{strategy}\"\nintensity = 10\nperiod = \"10s\"\n\n{}{}{}",
        probe("a", a_keys, ""),
        probe("b", "", ""),
        probe("c", "", "")
    );
    let t = Tree::start(&config);
    let first: Vec<Start> = ["a", "b", "c"]
        .iter()
        .map(|n| t.wait_starts(n, 1)[0])
        .collect();
    (t, first)
}

/// Starts a, b, c under `strategy`, kills b, and returns the tree once b has
/// been restarted.
fn kill_the_middle_one(strategy: &str) -> (Tree, Vec<Start>) {
    let (t, first) = start_abc(strategy, "");
    send(first[1].pid, SIGKILL).unwrap();
    let b = t.wait_starts("b", 2);
    assert_eq!(b[1].restarts, 1);
    (t, first)
}

/// The daemons named in the last `n` "started" log lines, in order.
fn last_started(t: &Tree, n: usize) -> Vec<String> {
    let lines = t.log_lines(&["started daemon="]);
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .filter_map(|l| {
            l.split(' ')
                .find_map(|w| w.strip_prefix("daemon="))
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn one_for_all_restarts_every_sibling_in_start_order() {
    let (mut t, first) = kill_the_middle_one("one_for_all");
    let a = t.wait_starts("a", 2);
    let c = t.wait_starts("c", 2);
    assert_ne!(a[1].pid, a[0].pid);
    assert_ne!(c[1].pid, c[0].pid);
    // The siblings were stopped (they reported it), not killed.
    assert!(t.out("a").contains(&format!("stop {}", first[0].pid)));
    assert!(t.out("c").contains(&format!("stop {}", first[2].pid)));
    // The root logs a start once the child runs: three, then three more.
    t.wait_log_count(&["started daemon="], 6);
    assert_eq!(last_started(&t, 3), ["a", "b", "c"], "{}", t.log());
    // The siblings were stopped one at a time, in reverse start order.
    let stopped: Vec<String> = t
        .log_lines(&["stopped daemon="])
        .iter()
        .filter_map(|l| {
            l.split(' ')
                .find_map(|w| w.strip_prefix("daemon="))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(stopped, ["c", "a"], "{}", t.log());
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn rest_for_one_restarts_the_dead_one_and_those_started_after_it() {
    let (mut t, first) = kill_the_middle_one("rest_for_one");
    let c = t.wait_starts("c", 2);
    assert_ne!(c[1].pid, c[0].pid);
    assert!(t.out("c").contains(&format!("stop {}", first[2].pid)));
    t.wait_log_count(&["started daemon="], 5);
    assert_eq!(last_started(&t, 2), ["b", "c"], "{}", t.log());
    // `a`, started before `b`, was left alone.
    assert_eq!(t.starts("a").len(), 1);
    assert!(!t.out("a").iter().any(|l| l.starts_with("stop")));
    assert!(t.daemons_named("a").iter().any(|p| p.pid == first[0].pid));
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn daemons_killed_at_once_are_all_reaped_and_restarted() {
    // SIGCHLD is coalesced: one signal may stand for every one of these exits.
    let names = ["p0", "p1", "p2", "p3", "p4"];
    let config: String = names.iter().map(|n| probe(n, "", "")).collect();
    let mut t = Tree::start(&config);
    let first: Vec<Start> = names.iter().map(|n| t.wait_starts(n, 1)[0]).collect();
    let old: Vec<Proc> = first
        .iter()
        .map(|s| Proc::read(s.pid).expect("a running daemon"))
        .collect();
    for s in &first {
        send(s.pid, SIGKILL).unwrap();
    }
    for n in names {
        let s = t.wait_starts(n, 2);
        assert_eq!(s[1].restarts, 1, "{n}");
    }
    t.wait_gone(&old);
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

/// `forkroot ctl VERB NAME` against the tree's root; panics on failure.
fn ctl(t: &Tree, verb: &str, name: &str) {
    let out = t.ctl(&[verb, name]);
    assert!(out.status.success(), "ctl {verb} {name}: {out:?}");
}

#[test]
fn a_group_restart_leaves_a_daemon_the_operator_stopped_down() {
    let (mut t, first) = start_abc("one_for_all", "");
    ctl(&t, "stop", "c");
    t.poll("c stopped", || {
        t.out("c")
            .iter()
            .any(|l| l.starts_with("stop "))
            .then_some(())
    });
    send(first[1].pid, SIGKILL).unwrap();
    t.wait_starts("b", 2);
    t.wait_starts("a", 2);
    // Long enough for a wrong restart of c to have happened (a and b are
    // already back): c started once, and is still down.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(t.starts("c").len(), 1, "{}", t.log());
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn what_a_crashed_daemon_forked_dies_with_it() {
    // The daemon forks a long sleep into its process group, reports its pid,
    // then crashes: the sleep must not outlive it.
    let mut t = Tree::start(
        "[supervisor]\nintensity = 100\nperiod = \"10s\"\n\
         [[daemon]]\nname = \"parent\"\nrestart = \"temporary\"\n\
         exec = [\"sh\", \"-c\", \"sleep 1000 & echo $! > @DIR@/child.pid; sleep 0.2; kill -SEGV $$\"]\n",
    );
    let child: i32 = t.poll("the forked child's pid", || {
        std::fs::read_to_string(t.path("child.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    t.wait_log(&["crashed", "daemon=parent", "SIGSEGV"]);
    t.poll("the forked child gone", || match Proc::read(child) {
        None => Some(()),
        Some(p) if p.state == 'Z' => Some(()),
        Some(_) => None,
    });
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn a_linked_daemon_is_restarted_when_its_link_dies_either_way() {
    let (mut t, first) = start_abc("one_for_one", "links = [\"b\"]");
    // a dies: b, linked to it, is stopped (gracefully) and started again.
    send(first[0].pid, SIGKILL).unwrap();
    t.wait_starts("a", 2);
    let b = t.wait_starts("b", 2);
    assert!(t.out("b").contains(&format!("stop {}", first[1].pid)));
    // b dies: the link goes both ways.
    send(b[1].pid, SIGKILL).unwrap();
    t.wait_starts("b", 3);
    t.wait_starts("a", 3);
    // c is linked to nobody.
    assert_eq!(t.starts("c").len(), 1, "{}", t.log());
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

// ----- nested groups ----------------------------------------------------

/// The daemons named in the log lines that contain `what` (`"started
/// daemon="`, `"stopped daemon="`), in order, from the `skip`-th such line.
fn logged(t: &Tree, what: &str, skip: usize) -> Vec<String> {
    logged_field(t, what, "daemon=", skip)
}

/// The values of field `key` (`"group="`) in the log lines that contain
/// `what`, in order, from the `skip`-th such line.
fn logged_field(t: &Tree, what: &str, key: &str, skip: usize) -> Vec<String> {
    t.log_lines(&[what])
        .iter()
        .skip(skip)
        .filter_map(|l| {
            l.split(' ')
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
        })
        .collect()
}

/// The top (`one_for_all`, so a wrong escalation would show) holds `out1`,
/// the group `g` (`strategy`) with a, b, c, and `out2`, in that order.
/// Returns the tree, the first starts of a, b, c, and of out1 and out2.
fn group_abc(strategy: &str) -> (Tree, Vec<Start>, Vec<Start>) {
    let g = "group = \"g\"";
    let config = format!(
        "[supervisor]\nstrategy = \"one_for_all\"\nintensity = 10\nperiod = \"10s\"\n\n\
         [[group]]\nname = \"g\"\nstrategy = \"{strategy}\"\nintensity = 10\nperiod = \"10s\"\n\n{}{}{}{}{}",
        probe("out1", "", ""),
        probe("a", g, ""),
        probe("b", g, ""),
        probe("c", g, ""),
        probe("out2", "", ""),
    );
    let t = Tree::start(&config);
    let first: Vec<Start> = ["a", "b", "c"]
        .iter()
        .map(|n| t.wait_starts(n, 1)[0])
        .collect();
    let outside: Vec<Start> = ["out1", "out2"]
        .iter()
        .map(|n| t.wait_starts(n, 1)[0])
        .collect();
    // The root logs a start once the child runs: wait for the fifth.
    t.wait_log_count(&["started daemon="], 5);
    assert_eq!(
        logged(&t, "started daemon=", 0),
        ["out1", "a", "b", "c", "out2"],
        "declared order: {}",
        t.log()
    );
    (t, first, outside)
}

/// Nothing outside the group moved: one start each, never stopped.
fn outside_untouched(t: &Tree, outside: &[Start]) {
    for (name, s) in ["out1", "out2"].iter().zip(outside) {
        assert_eq!(t.starts(name).len(), 1, "{name}: {}", t.log());
        assert!(
            t.daemons_named(name).iter().any(|p| p.pid == s.pid),
            "{name}"
        );
        assert!(!t.out(name).iter().any(|l| l.starts_with("stop")), "{name}");
    }
}

#[test]
fn one_for_one_in_a_group_restarts_only_the_dead_daemon_though_the_top_is_one_for_all() {
    let (mut t, first, outside) = group_abc("one_for_one");
    send(first[1].pid, SIGKILL).unwrap();
    let b = t.wait_starts("b", 2);
    assert_ne!(b[1].pid, first[1].pid);
    assert_eq!(b[1].restarts, 1);
    // Long enough for a wrong restart of the others to show.
    std::thread::sleep(std::time::Duration::from_millis(300));
    for (name, s) in [("a", first[0]), ("c", first[2])] {
        assert_eq!(t.starts(name).len(), 1, "{name}: {}", t.log());
        assert!(t.daemons_named(name).iter().any(|p| p.pid == s.pid));
    }
    outside_untouched(&t, &outside);
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn one_for_all_in_a_group_restarts_the_group_in_order_and_nothing_outside_it() {
    let (mut t, first, outside) = group_abc("one_for_all");
    send(first[1].pid, SIGKILL).unwrap();
    let a = t.wait_starts("a", 2);
    let c = t.wait_starts("c", 2);
    t.wait_starts("b", 2);
    assert_ne!(a[1].pid, first[0].pid);
    assert_ne!(c[1].pid, first[2].pid);
    // Stopped gracefully, one at a time in reverse order; started in order.
    assert!(t.out("a").contains(&format!("stop {}", first[0].pid)));
    assert!(t.out("c").contains(&format!("stop {}", first[2].pid)));
    assert_eq!(logged(&t, "stopped daemon=", 0), ["c", "a"], "{}", t.log());
    t.wait_log_count(&["started daemon="], 8);
    assert_eq!(
        logged(&t, "started daemon=", 5),
        ["a", "b", "c"],
        "{}",
        t.log()
    );
    // Each start says why: b died, a and c came along with it.
    assert_eq!(
        logged_field(&t, "started daemon=", "cause=", 5),
        ["strategy", "death", "strategy"],
        "{}",
        t.log()
    );
    outside_untouched(&t, &outside);
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn rest_for_one_in_a_group_restarts_the_dead_one_and_those_after_it_in_the_group() {
    let (mut t, first, outside) = group_abc("rest_for_one");
    send(first[1].pid, SIGKILL).unwrap();
    let c = t.wait_starts("c", 2);
    t.wait_starts("b", 2);
    assert_ne!(c[1].pid, first[2].pid);
    assert!(t.out("c").contains(&format!("stop {}", first[2].pid)));
    assert_eq!(logged(&t, "stopped daemon=", 0), ["c"], "{}", t.log());
    t.wait_log_count(&["started daemon="], 7);
    assert_eq!(logged(&t, "started daemon=", 5), ["b", "c"], "{}", t.log());
    // a, before b in the group, stayed.
    assert_eq!(t.starts("a").len(), 1);
    assert!(t.daemons_named("a").iter().any(|p| p.pid == first[0].pid));
    outside_untouched(&t, &outside);
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

/// root ─ outer (intensity `outer`) ─ inner (one_for_one, intensity 1) ─
/// [i1, i2]; root ─ side ─ [s1]; the top's intensity is `top`.
fn two_levels(top: u32, outer: u32) -> Tree {
    let config = format!(
        "[supervisor]\nintensity = {top}\nperiod = \"10s\"\n\n\
         [[group]]\nname = \"outer\"\nintensity = {outer}\nperiod = \"10s\"\n\n\
         [[group]]\nname = \"inner\"\nparent = \"outer\"\nintensity = 1\nperiod = \"10s\"\n\n\
         [[group]]\nname = \"side\"\n\n{}{}{}",
        probe("i1", "group = \"inner\"", ""),
        probe("i2", "group = \"inner\"", ""),
        probe("s1", "group = \"side\"", ""),
    );
    Tree::start(&config)
}

/// Kills i1 twice (its first and its second incarnation): inner, at
/// intensity 1, gives up. Returns i1's and i2's first starts.
fn break_inner(t: &Tree) -> (Start, Start) {
    let i1 = t.wait_starts("i1", 1)[0];
    let i2 = t.wait_starts("i2", 1)[0];
    t.wait_starts("s1", 1);
    send(i1.pid, SIGKILL).unwrap();
    let again = t.wait_starts("i1", 2)[1];
    send(again.pid, SIGKILL).unwrap();
    (i1, i2)
}

#[test]
fn escalation_through_two_groups_exits_69_and_the_sibling_group_is_untouched() {
    let mut t = two_levels(0, 0);
    let (_, i2) = break_inner(&t);
    assert_eq!(t.wait_code(), 69, "{}", t.log());
    // Each level gave up in turn: inner, outer, then the top.
    let gave_up = logged_field(&t, "restart intensity exceeded; giving up", "group=", 0);
    assert_eq!(gave_up, ["inner", "outer", "root"], "{}", t.log());
    // i2 was stopped by its group, and only then did the failure go up.
    assert!(t.out("i2").contains(&format!("stop {}", i2.pid)));
    // The sibling group's daemon ran once, from start to the final stop.
    let s1 = t.starts("s1");
    assert_eq!(s1.len(), 1, "{}", t.log());
    assert!(t.out("s1").contains(&format!("stop {}", s1[0].pid)));
    let log = t.log();
    let root_gave_up = log.find("group=root").expect("the top gave up");
    let s1_stopped = log.find("stopped daemon=s1").expect("s1 stopped");
    assert!(
        s1_stopped > root_gave_up,
        "s1 stopped only by the shutdown:\n{log}"
    );
    assert_eq!(t.starts("i2").len(), 1, "{log}");
}

#[test]
fn a_group_that_gave_up_is_restarted_by_its_parent_and_ctl_tree_shows_it() {
    let mut t = two_levels(10, 10);
    let (i1, i2) = break_inner(&t);
    // inner failed; outer restarted it: both of its daemons are new.
    let i1s = t.wait_starts("i1", 3);
    let i2s = t.wait_starts("i2", 2);
    assert_ne!(i2s[1].pid, i2.pid);
    assert!(t.out("i2").contains(&format!("stop {}", i2.pid)));
    assert_ne!(i1s[2].pid, i1.pid);
    t.wait_log(&["group failed", "group=inner"]);
    t.wait_log(&["started daemon=i2", "cause=escalation"]);
    let tree = t.poll("ctl tree with inner restarted", || {
        let out = t.ctl(&["tree", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let inner = find_group(&v["tree"], "inner")?;
        (inner["restarts"] == 1 && inner["state"] == "running").then_some(v)
    });
    let root = &tree["tree"];
    assert_eq!(root["name"], "root");
    let outer = find_group(root, "outer").expect("outer");
    assert_eq!(outer["state"], "running");
    assert_eq!(outer["restarts_in_period"], 1, "{tree}");
    let side = find_group(root, "side").expect("side");
    assert_eq!(side["restarts"], 0);
    assert_eq!(side["children"][0]["name"], "s1");
    assert_eq!(side["children"][0]["state"], "running");
    assert_eq!(side["children"][0]["cause"], "start");
    let inner = find_group(root, "inner").expect("inner");
    assert_eq!(inner["children"][1]["cause"], "escalation", "{tree}");
    assert_eq!(t.starts("s1").len(), 1);
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

/// The group named `name` anywhere under `node` in `ctl tree --json`.
fn find_group<'a>(node: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    if node["name"] == name && node["type"] == "group" {
        return Some(node);
    }
    node["children"]
        .as_array()?
        .iter()
        .find_map(|c| find_group(c, name))
}

// ----- auto_shutdown: significant children end their supervisor ----------

/// A `[[daemon]]` that runs `sh -c 'exit 0'`: `significant`, `transient`
/// (so its exit 0 is its end), with extra keys.
fn ends_at_once(keys: &str) -> String {
    format!(
        "[[daemon]]\nname = \"done\"\nexec = [\"/bin/sh\", \"-c\", \"exit 0\"]\n\
         memory = \"64KiB\"\nrestart = \"transient\"\nsignificant = true\n{keys}\n"
    )
}

/// The daemons the root stopped, in order, once `n` of them are.
fn stopped(t: &Tree, n: usize) -> Vec<String> {
    t.poll(&format!("{n} daemons stopped"), || {
        let s = logged(t, "stopped daemon=", 0);
        (s.len() >= n).then_some(s)
    })
}

#[test]
fn a_significant_daemon_that_exits_0_ends_its_group_which_stops_its_siblings() {
    let config = format!(
        "[[group]]\nname = \"g\"\nauto_shutdown = \"any_significant\"\nrestart = \"transient\"\n\n{}{}{}{}",
        probe("out1", "", ""),
        probe("a", "group = \"g\"", ""),
        probe("b", "group = \"g\"", ""),
        ends_at_once("group = \"g\""),
    );
    let mut t = Tree::start(&config);
    let out1 = t.wait_starts("out1", 1)[0];
    let a = t.wait_starts("a", 1)[0];
    let b = t.wait_starts("b", 1)[0];
    t.wait_log(&[
        "a significant child ended: auto_shutdown",
        "group=g",
        "after=done",
    ]);
    // Its siblings stop in reverse start order, each with SIGTERM.
    assert_eq!(stopped(&t, 2), ["b", "a"], "{}", t.log());
    for (name, s) in [("a", a), ("b", b)] {
        let line = format!("stop {}", s.pid);
        t.poll(&format!("{name} saw its SIGTERM"), || {
            t.out(name).contains(&line).then_some(())
        });
        t.wait_gone(&t.daemons_named(name));
    }
    // The group ended (a transient group's normal end: not restarted);
    // the rest of the tree runs on, untouched.
    let tree = t.poll("ctl tree with g ended", || {
        let out = t.ctl(&["tree", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (find_group(&v["tree"], "g")?["state"] == "ended").then_some(v)
    });
    assert_eq!(tree["tree"]["state"], "running", "{tree}");
    let done = t.log_lines(&["started daemon=done pid="]);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(t.starts("a").len(), 1);
    assert_eq!(t.starts("out1").len(), 1);
    assert!(t.daemons_named("out1").iter().any(|p| p.pid == out1.pid));
    assert!(!t.out("out1").iter().any(|l| l.starts_with("stop")));

    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn a_significant_daemon_that_exits_0_under_the_top_stops_the_tree_and_the_root_exits_0() {
    let config = format!(
        "[supervisor]\nauto_shutdown = \"any_significant\"\n\n{}{}{}",
        probe("a", "", ""),
        probe("b", "", ""),
        ends_at_once(""),
    );
    let mut t = Tree::start(&config);
    let a = t.wait_starts("a", 1)[0];
    let b = t.wait_starts("b", 1)[0];
    assert_eq!(t.wait_code(), 0, "{}", t.log());
    let log = t.log();
    assert!(
        log.contains("a significant child ended: auto_shutdown") && log.contains("group=root"),
        "{log}"
    );
    assert_eq!(logged(&t, "stopped daemon=", 0), ["b", "a"], "{log}");
    assert!(t.out("a").contains(&format!("stop {}", a.pid)), "{log}");
    assert!(t.out("b").contains(&format!("stop {}", b.pid)), "{log}");
    assert!(Proc::pid_gone(a.pid) && Proc::pid_gone(b.pid));
}

/// A program that says it is ready and then never keeps its watchdog is
/// killed by it, and each restart is counted under cause `watchdog`: in
/// `ctl status --json`, the metrics and the `started` log line.
#[test]
fn a_daemon_that_misses_its_watchdog_restarts_with_cause_watchdog() {
    let prog =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/notify_support/prog.py");
    let config = format!(
        "[supervisor]\nintensity = 100\n\
         [[daemon]]\nname = \"stall\"\nreadiness = \"notify\"\nwatchdog = \"300ms\"\n\
         exec = [{:?}, \"send:READY=1\"]\n",
        prog.to_str().expect("utf-8 path")
    );
    let mut t = Tree::start(&config);
    let d = t.poll("stall restarted by its watchdog", || {
        let d = t.daemon_status("stall")?;
        (d["restarts"].as_u64()? >= 1 && d["cause"].is_string()).then_some(d)
    });
    assert_eq!(d["cause"], "watchdog", "{d}");
    assert_eq!(d["last_exit"], "killed by the watchdog", "{d}");
    assert_eq!(d["starts_by_cause"]["start"], 1, "{d}");
    assert!(d["starts_by_cause"]["watchdog"].as_u64() >= Some(1), "{d}");
    assert!(
        d["starts_by_cause"].get("death").is_none(),
        "no watchdog kill counted as a death: {d}"
    );
    t.wait_log(&["started", "daemon=stall", "cause=watchdog"]);
    let m = t.ctl_run(&["metrics"]).stdout;
    let count = |cause: &str| {
        let key = format!("forkroot_starts_total{{daemon=\"stall\",cause=\"{cause}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{key} missing from:\n{m}"))
    };
    assert!(count("watchdog") >= 1, "{m}");
    assert_eq!(count("death"), 0, "{m}");
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}

/// `ctl tree` shows each supervisor's `auto_shutdown` and which children
/// are `significant`: the JSON for every node, the text where set.
#[test]
fn ctl_tree_shows_auto_shutdown_and_significant() {
    let config = format!(
        "[[group]]\nname = \"g\"\nauto_shutdown = \"all_significant\"\n\
         restart = \"transient\"\nsignificant = true\n\
         [[group]]\nname = \"h\"\nparent = \"g\"\n\n\
         [supervisor]\nauto_shutdown = \"any_significant\"\n{}{}{}",
        probe(
            "a",
            "group = \"g\"\nrestart = \"transient\"\nsignificant = true",
            ""
        ),
        probe("b", "group = \"g\"", ""),
        probe("c", "group = \"h\"", ""),
    );
    let mut t = Tree::start(&config);
    for name in ["a", "b", "c"] {
        t.wait_starts(name, 1);
    }
    let out = t.ctl_run(&["tree", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let root = &v["tree"];
    assert_eq!(root["auto_shutdown"], "any_significant", "{v}");
    assert_eq!(root["significant"], false);
    let g = find_group(root, "g").expect("g");
    assert_eq!(g["auto_shutdown"], "all_significant", "{v}");
    assert_eq!(g["significant"], true, "{v}");
    let h = find_group(root, "h").expect("h");
    assert_eq!(h["auto_shutdown"], "never", "{v}");
    assert_eq!(h["significant"], false);
    let kids: Vec<(String, bool)> = g["children"]
        .as_array()
        .expect("children")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_owned(),
                c["significant"].as_bool().expect("significant"),
            )
        })
        .collect();
    assert_eq!(
        kids,
        [("a".into(), true), ("b".into(), false), ("h".into(), false)]
    );

    let text = t.ctl_run(&["tree"]).stdout;
    let line = |start: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line for {start} in:\n{text}"))
            .to_owned()
    };
    assert!(
        line("root/").contains("auto_shutdown any_significant, "),
        "{text}"
    );
    assert!(
        line("g/").contains("auto_shutdown all_significant, significant, "),
        "{text}"
    );
    assert!(
        !line("h/").contains("auto_shutdown"),
        "never goes unsaid: {text}"
    );
    assert!(!line("h/").contains("significant"), "{text}");
    assert!(line("a ").contains(", significant"), "{text}");
    assert!(!line("b ").contains("significant"), "{text}");
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

/// A watchdog kill is a death, though `ctl status` shows the daemon
/// `stopping` meanwhile: its replacement hears of it (`Context::deaths`),
/// as it does of any crash, unlike a stop someone asked for.
#[test]
fn a_watchdog_kill_is_a_death_the_replacement_hears_of() {
    let mut t = Tree::start(
        "[supervisor]\nintensity = 100\n\
         [[daemon]]\nname = \"quiet\"\nkind = \"probe\"\nwatchdog = \"300ms\"\n\
         [daemon.args]\nout = \"@DIR@/quiet.out\"\n",
    );
    // A probe writes its `deaths` line after its `start` line: wait for
    // the second `deaths` line itself.
    let lines = t.poll("the probe's second deaths line", || {
        let out = t.out("quiet");
        (out.iter().filter(|l| l.starts_with("deaths ")).count() >= 2).then_some(out)
    });
    let deaths: Vec<&String> = lines.iter().filter(|l| l.starts_with("deaths ")).collect();
    assert_eq!(deaths[0], "deaths 0 -", "{lines:?}");
    assert_eq!(
        deaths[1],
        "deaths 1 killed by the watchdog",
        "{lines:?}\n{}",
        t.log()
    );
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}
