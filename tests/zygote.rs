//! The zygote (DESIGN.md §3): the process that forks the built-in daemons
//! on the root's behalf. Killed from outside, it costs no start and is
//! replaced; a reload gives its successor the new tree; and every process
//! it forks is the root's child.

mod common;

use common::{children, running_pid, send, write_config, zygote_of, Proc, Tree};
use libc::SIGKILL;

/// A tree whose root logs who forked each process.
fn start(config: &str) -> Tree {
    Tree::start_with(config, |c| {
        c.env("FORKROOT_LOG", "info,forkroot::root::start=debug");
    })
}

/// How many of daemon `name`'s processes `by` (`zygote` or `root`) forked.
fn forked_by(t: &Tree, name: &str, by: &str) -> usize {
    let d = format!("daemon={name}");
    let b = format!("by={by}");
    t.log_lines(&["forked", &d, &b]).len()
}

/// Waits until daemon `name` runs with a pid other than `old`.
fn restarted(t: &Tree, name: &str, old: i32) -> i32 {
    t.poll(&format!("{name} restarted"), || {
        let d = t.daemon_status(name)?;
        let pid = d["pid"].as_i64()? as i32;
        (d["state"] == "running" && pid != old).then_some(pid)
    })
}

const TWO: &str = "[supervisor]\nintensity = 100\n\
    [[daemon]]\nname = \"a\"\nkind = \"idle\"\n\
    [[daemon]]\nname = \"b\"\nkind = \"idle\"\n";

#[test]
fn the_daemons_are_the_roots_children_and_the_zygote_forks_them() {
    let t = start(TWO);
    let a = running_pid(&t, "a");
    let z = zygote_of(t.pid).expect("a zygote");
    let kids = children(t.pid);
    assert!(
        kids.iter().any(|p| p.pid == a),
        "a is the root's child: {kids:?}"
    );
    assert!(children(z.pid).is_empty(), "the zygote keeps no child");
    // A restart goes through the same zygote (the root made no other).
    send(a, SIGKILL).unwrap();
    let a2 = restarted(&t, "a", a);
    assert_eq!(Proc::read(a2).expect("a runs").ppid, t.pid);
    assert_eq!(zygote_of(t.pid).map(|p| p.pid), Some(z.pid));
    assert_eq!(forked_by(&t, "a", "zygote"), 2, "{}", t.log());
    assert_eq!(forked_by(&t, "a", "root"), 0, "{}", t.log());
    let mut t = t;
    let r = t.ctl_run(&["shutdown"]);
    assert_eq!(r.code, Some(0));
    assert_eq!(t.wait_code(), 0);
    // Ended and reaped by the root before it exited (a zombie left to
    // init would still show).
    assert!(z.is_gone(), "the zygote outlived the root's clean exit");
}

#[test]
fn a_killed_zygote_costs_no_start_and_is_replaced() {
    let t = start(TWO);
    let a = running_pid(&t, "a");
    let b = running_pid(&t, "b");
    let z = zygote_of(t.pid).expect("a zygote");
    send(z.pid, SIGKILL).unwrap();
    t.wait_log(&["the zygote exited"]);
    // Reaped by the root: gone, not a zombie.
    t.poll("the killed zygote reaped", || z.is_gone().then_some(()));
    // The daemons it forked run on, untouched.
    assert_eq!(running_pid(&t, "a"), a);
    send(a, SIGKILL).unwrap();
    restarted(&t, "a", a);
    let z2 = t.poll("a new zygote", || zygote_of(t.pid));
    assert_ne!(z2.pid, z.pid);
    // The new one serves the next start.
    send(b, SIGKILL).unwrap();
    restarted(&t, "b", b);
    assert_eq!(zygote_of(t.pid).map(|p| p.pid), Some(z2.pid));
    assert_eq!(t.log_lines(&["the zygote exited"]).len(), 1, "{}", t.log());
    assert_eq!(forked_by(&t, "b", "zygote"), 2, "{}", t.log());
    let r = t.ctl_run(&["shutdown"]);
    assert_eq!(r.code, Some(0));
}

#[test]
fn a_reload_gives_a_new_zygote_the_new_tree() {
    let t = start(TWO);
    running_pid(&t, "a");
    let z = zygote_of(t.pid).expect("a zygote");
    write_config(
        &t.dir,
        &format!("{TWO}[[daemon]]\nname = \"added\"\nkind = \"idle\"\n"),
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Forked from the new tree: the old zygote knew no daemon 2.
    let added = running_pid(&t, "added");
    assert_eq!(Proc::read(added).expect("added runs").ppid, t.pid);
    let z2 = zygote_of(t.pid).expect("a zygote after the reload");
    assert_ne!(z2.pid, z.pid, "the zygote of the old tree forked it");
    t.poll("the old zygote ended", || z.is_gone().then_some(()));
    let r = t.ctl_run(&["shutdown"]);
    assert_eq!(r.code, Some(0));
}

#[test]
fn zygote_false_has_the_root_fork_every_daemon() {
    let t = start(&format!("[root]\nzygote = false\n{TWO}"));
    let a = running_pid(&t, "a");
    assert!(zygote_of(t.pid).is_none());
    send(a, SIGKILL).unwrap();
    restarted(&t, "a", a);
    assert!(zygote_of(t.pid).is_none());
    assert_eq!(forked_by(&t, "a", "root"), 2, "{}", t.log());
    assert!(t.log_lines(&["zygote"]).is_empty(), "{}", t.log());
    let r = t.ctl_run(&["shutdown"]);
    assert_eq!(r.code, Some(0));
}

#[test]
fn a_stopped_zygote_does_not_stop_the_root() {
    let t = start(TWO);
    let a = running_pid(&t, "a");
    let z = zygote_of(t.pid).expect("a zygote");
    send(z.pid, libc::SIGSTOP).unwrap();
    send(a, SIGKILL).unwrap();
    // The root gives up on the answer (1 s), ends the zygote and forks
    // the start itself.
    let a2 = restarted(&t, "a", a);
    assert_eq!(Proc::read(a2).expect("a runs").ppid, t.pid);
    t.wait_log(&["the zygote did not answer"]);
    assert_eq!(forked_by(&t, "a", "root"), 1, "{}", t.log());
    t.poll("the stopped zygote ended", || z.is_gone().then_some(()));
    // The next start makes a new one.
    send(a2, SIGKILL).unwrap();
    restarted(&t, "a", a2);
    let z2 = t.poll("a new zygote", || zygote_of(t.pid));
    assert_ne!(z2.pid, z.pid);
    let r = t.ctl_run(&["shutdown"]);
    assert_eq!(r.code, Some(0));
}

#[test]
fn neither_the_zygote_nor_a_built_in_daemon_maps_a_programs_region() {
    let t = start(
        "[[daemon]]\nname = \"a\"\nkind = \"idle\"\n\
         [[daemon]]\nname = \"prog\"\nexec = [\"/bin/sleep\", \"1000\"]\n",
    );
    let a = running_pid(&t, "a");
    running_pid(&t, "prog");
    let z = zygote_of(t.pid).expect("a zygote");
    let maps = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    // The root reads the program's region (its heartbeat, its flight log);
    // built-in daemons copy no mapping of it at each fork.
    assert!(
        maps(t.pid).contains("memfd:forkroot:prog"),
        "{}",
        maps(t.pid)
    );
    assert!(
        !maps(z.pid).contains("memfd:forkroot:prog"),
        "{}",
        maps(z.pid)
    );
    assert!(!maps(a).contains("memfd:forkroot:prog"), "{}", maps(a));
    let r = t.ctl_run(&["shutdown"]);
    assert_eq!(r.code, Some(0));
}
