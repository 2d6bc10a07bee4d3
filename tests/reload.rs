//! Reload (`ctl reload`, SIGHUP) against the real binary: the file is read
//! again and applied by daemon name, leaving unchanged daemons' processes
//! alone; a bad file changes nothing.

mod common;

use common::{running_pid, write_config, Tree};

/// The pid of daemon `name` once it is running.
/// The pids of [`THREE`]'s daemons, once each runs.
fn three_pids(t: &Tree) -> Vec<i32> {
    ["keep", "gone", "change"]
        .iter()
        .map(|n| running_pid(t, n))
        .collect()
}

/// The names `ctl status` shows, in order.
fn names(t: &Tree) -> Vec<String> {
    t.daemons_status()
        .unwrap_or_default()
        .iter()
        .filter_map(|d| d["name"].as_str().map(str::to_owned))
        .collect()
}

const THREE: &str = r#"
[[daemon]]
name = "keep"
kind = "idle"
[[daemon]]
name = "gone"
kind = "idle"
[[daemon]]
name = "change"
kind = "idle"
memory = "64KiB"
"#;

#[test]
fn reload_adds_removes_and_changes_daemons_and_leaves_the_rest_running() {
    let t = Tree::start(THREE);
    let keep = running_pid(&t, "keep");
    let gone = running_pid(&t, "gone");
    let change = running_pid(&t, "change");
    write_config(
        &t.dir,
        r#"
[[daemon]]
name = "keep"
kind = "idle"
[[daemon]]
name = "new"
kind = "idle"
[[daemon]]
name = "change"
kind = "idle"
memory = "1MiB"
"#,
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(r.code, Some(0), "ctl reload: {}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("add     new"), "{}", r.stdout);
    assert!(r.stdout.contains("remove  gone"), "{}", r.stdout);
    assert!(r.stdout.contains("change  change (memory)"), "{}", r.stdout);
    assert!(r.stdout.contains("keep    keep"), "{}", r.stdout);

    let new = running_pid(&t, "new");
    let changed = t.poll("change restarted", || {
        let d = t.daemon_status("change")?;
        let pid = d["pid"].as_i64()? as i32;
        (d["state"] == "running" && pid != change).then_some((pid, d))
    });
    assert_eq!(
        changed.1["memory"].as_u64(),
        Some(1 << 20),
        "the new memory setting is in effect: {}",
        changed.1
    );
    assert!(
        changed.1["region_bytes"].as_u64().unwrap() >= 1 << 20,
        "a region that fits the new size: {}",
        changed.1
    );
    t.poll("gone gone", || {
        (!names(&t).contains(&"gone".into())).then_some(())
    });
    assert!(
        common::Proc::pid_gone(gone),
        "the removed daemon's process ended"
    );
    assert_eq!(
        running_pid(&t, "keep"),
        keep,
        "an unchanged daemon keeps its pid"
    );
    let mut now = names(&t);
    now.sort();
    assert_eq!(now, ["change", "keep", "new"]);
    let tree = t.ctl_run(&["tree", "--json"]);
    // The nested tree, after the flat list older readers know.
    let nested = &tree.stdout[tree.stdout.find("\"tree\"").expect("a tree")..];
    let at = |n: &str| nested.find(&format!("\"{n}\"")).expect(n);
    assert!(
        at("keep") < at("new") && at("new") < at("change"),
        "the added daemon sits where the file declares it: {}",
        tree.stdout
    );
    t.wait_log(&["reload done"]);

    // The tree still supervises: a killed added daemon is restarted.
    common::send(new, libc::SIGKILL).expect("kill new");
    t.poll("new restarted", || {
        let d = t.daemon_status("new")?;
        (d["state"] == "running" && d["pid"].as_i64()? as i32 != new).then_some(())
    });
    let r = t.ctl_run(&["shutdown"]);
    assert_eq!(r.code, Some(0));
}

#[test]
fn a_broken_file_is_rejected_whole_and_the_tree_keeps_running() {
    let t = Tree::start(THREE);
    let before = three_pids(&t);
    write_config(
        &t.dir,
        r#"
[[daemon]]
name = "keep"
kind = "idle"
memory = "lots"
[[daemon]]
name = "extra"
kind = "nosuchkind"
"#,
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(
        r.code,
        Some(1),
        "ctl reload fails: {}{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("nothing changed"), "{}", r.stderr);
    assert!(r.stderr.contains("daemon[0].memory"), "{}", r.stderr);
    assert!(r.stderr.contains("daemon[1].kind"), "{}", r.stderr);
    t.wait_log(&["reload rejected"]);
    let log = t.log();
    assert!(log.contains("daemon[0].memory"), "{log}");

    // A setting that cannot change at run time is refused the same way.
    write_config(
        &t.dir,
        &format!(
            "[root]\ncontrol = \"{}\"\nstate_dir = \"{}/state\"\n{THREE}",
            t.socket().display(),
            t.dir.path().display()
        ),
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("root.state_dir"), "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot change while the root runs"),
        "{}",
        r.stderr
    );

    // So is a mailbox of another size (laid out at start) and a cgroup
    // limit (written when the cgroup is made), each named with its place.
    // The tree's file with one more line for its last daemon: a failed
    // reload's stderr.
    let refused = |line: &str| {
        write_config(
            &t.dir,
            &format!(
                "[root]\ncontrol = \"{}\"\n{}\n{line}\n",
                t.socket().display(),
                THREE.trim_end()
            ),
        );
        let r = t.ctl_run(&["reload"]);
        assert_eq!(r.code, Some(1), "{line}: {}{}", r.stdout, r.stderr);
        r.stderr
    };
    let err = refused("mailbox = 512");
    assert!(err.contains("daemon[2].mailbox"), "{err}");
    assert!(err.contains("its size cannot change"), "{err}");
    let err = refused("pids_max = 64");
    assert!(err.contains("daemon[2]"), "{err}");
    assert!(
        err.contains("cgroup limits") || err.contains("pids_max"),
        "{err}"
    );

    let after = three_pids(&t);
    assert_eq!(before, after, "every daemon kept its process");
    assert_eq!(names(&t), ["keep", "gone", "change"]);
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let t = Tree::start(THREE);
    let before = three_pids(&t);
    write_config(
        &t.dir,
        r#"
[root]
stop_timeout = "3s"
[[daemon]]
name = "keep"
kind = "idle"
[[daemon]]
name = "change"
kind = "idle"
memory = "64KiB"
restart = "transient"
[[daemon]]
name = "new"
kind = "idle"
"#,
    );
    let r = t.ctl_run(&["reload", "--dry-run"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("dry run of "), "{}", r.stdout);
    assert!(lines[0].ends_with("nothing changed"), "{}", r.stdout);
    assert_eq!(
        &lines[1..],
        [
            "add     new",
            "remove  gone",
            "change  change (restart)",
            "keep    keep",
            "set     root.stop_timeout",
        ],
        "{}",
        r.stdout
    );
    let after = three_pids(&t);
    assert_eq!(before, after);
    assert_eq!(names(&t), ["keep", "gone", "change"]);
    assert!(t.log().contains("reload dry run"), "{}", t.log());
}

#[test]
fn sighup_reloads() {
    let mut t = Tree::start(THREE);
    let keep = running_pid(&t, "keep");
    write_config(
        &t.dir,
        &format!("{THREE}[[daemon]]\nname = \"late\"\nkind = \"idle\"\n"),
    );
    t.signal(libc::SIGHUP);
    running_pid(&t, "late");
    assert_eq!(running_pid(&t, "keep"), keep);
    assert_eq!(names(&t), ["keep", "gone", "change", "late"]);
    t.wait_log(&["reload done"]);
    // A broken file on SIGHUP: logged, nothing changed, the root lives.
    write_config(&t.dir, "[[daemon]]\nname = 1\n");
    t.signal(libc::SIGHUP);
    t.wait_log(&["reload rejected"]);
    assert_eq!(running_pid(&t, "keep"), keep);
    assert_eq!(names(&t), ["keep", "gone", "change", "late"]);
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_code(), 0);
}

#[test]
fn reload_in_groups_adds_in_place_changes_settings_and_refuses_new_groups() {
    let grouped = |extra: &str, intensity: u32| {
        format!(
            r#"
[[group]]
name = "g"
strategy = "one_for_all"
intensity = {intensity}
[[daemon]]
name = "top"
kind = "idle"
[[daemon]]
name = "x"
kind = "idle"
group = "g"
{extra}
[[daemon]]
name = "y"
kind = "idle"
group = "g"
"#
        )
    };
    let t = Tree::start(&grouped("", 5));
    let pids: Vec<i32> = ["top", "x", "y"]
        .iter()
        .map(|n| running_pid(&t, n))
        .collect();

    // A new group is refused, whole.
    write_config(
        &t.dir,
        &format!("{}\n[[group]]\nname = \"h\"\n", grouped("", 5)),
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("group: the set of [[group]]s"),
        "{}",
        r.stderr
    );

    // A daemon added inside the group, and the group's intensity changed.
    write_config(
        &t.dir,
        &grouped(
            "[[daemon]]\nname = \"z\"\nkind = \"idle\"\ngroup = \"g\"",
            7,
        ),
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("set     group[0] (g)"), "{}", r.stdout);
    let z = running_pid(&t, "z");
    t.wait_log(&["reload done"]);
    let after: Vec<i32> = ["top", "x", "y"]
        .iter()
        .map(|n| running_pid(&t, n))
        .collect();
    assert_eq!(pids, after, "the others keep their processes");
    let tree = t.ctl_run(&["tree"]);
    let g = &tree.stdout[tree.stdout.find("g/").expect("group g")..];
    assert!(g.contains("intensity 7"), "{}", tree.stdout);
    let at = |n: &str| g.find(&format!("  {n} [")).expect(n);
    assert!(at("x") < at("z") && at("z") < at("y"), "{}", tree.stdout);

    // The added daemon is one of the group: its death restarts x and y.
    common::send(z, libc::SIGKILL).expect("kill z");
    t.poll("x restarted with its group", || {
        let d = t.daemon_status("x")?;
        (d["state"] == "running" && d["pid"].as_i64()? as i32 != pids[1]).then_some(())
    });
    assert_eq!(running_pid(&t, "top"), pids[0]);
}

#[test]
fn reload_with_a_state_dir_makes_resizes_and_keeps_region_files() {
    let with = |daemons: &str| {
        format!(
            "[root]\nstate_dir = \"{}\"\n{daemons}",
            common::DIR.to_owned() + "/state"
        )
    };
    let t = Tree::start(&with(
        "[[daemon]]\nname = \"a\"\nkind = \"idle\"\nmemory = \"64KiB\"\n\
         [[daemon]]\nname = \"b\"\nkind = \"idle\"\n",
    ));
    running_pid(&t, "a");
    running_pid(&t, "b");
    let file = |n: &str| t.path(&format!("state/{n}.region"));
    let len = |n: &str| std::fs::metadata(file(n)).map(|m| m.len()).ok();
    assert_eq!(len("a"), Some(64 * 1024 + 64 * 1024));
    write_config(
        &t.dir,
        &with(
            "[[daemon]]\nname = \"a\"\nkind = \"idle\"\nmemory = \"128KiB\"\n\
             [[daemon]]\nname = \"n\"\nkind = \"idle\"\n",
        ),
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    running_pid(&t, "n");
    t.wait_log(&["reload done"]);
    assert_eq!(len("a"), Some(64 * 1024 + 128 * 1024), "a's file resized");
    assert!(
        len("n").is_some(),
        "the added daemon's region is its state_dir file"
    );
    assert!(
        len("b").is_some(),
        "a removed daemon's state is kept on disk"
    );
    t.wait_log(&["the region no longer fits", "resized"]);
}

/// A daemon a SIGHUP reload changes starts again with cause `reload`, and
/// so does one it adds: in `ctl status --json`, the metrics and the
/// `started` log line; a daemon it leaves alone keeps cause `start`.
#[test]
fn a_daemon_changed_by_a_sighup_reload_restarts_with_cause_reload() {
    let t = Tree::start(THREE);
    let change = running_pid(&t, "change");
    let keep = running_pid(&t, "keep");
    write_config(
        &t.dir,
        &THREE
            .replace("memory = \"64KiB\"", "memory = \"128KiB\"")
            .replace(
                "[[daemon]]\nname = \"gone\"",
                "[[daemon]]\nname = \"added\"\nkind = \"idle\"\n[[daemon]]\nname = \"gone\"",
            ),
    );
    t.signal(libc::SIGHUP);
    let d = t.poll("change started again", || {
        let d = t.daemon_status("change")?;
        (d["state"] == "running" && d["pid"].as_i64()? as i32 != change).then_some(d)
    });
    assert_eq!(d["cause"], "reload", "{d}");
    assert_eq!(
        d["starts_by_cause"],
        serde_json::json!({"start": 1, "reload": 1})
    );
    assert_eq!(d["restarts"], 0, "a reload is no restart: {d}");
    running_pid(&t, "added");
    let added = t.daemon_status("added").expect("added");
    assert_eq!(added["cause"], "reload", "{added}");
    assert_eq!(running_pid(&t, "keep"), keep);
    assert_eq!(t.daemon_status("keep").expect("keep")["cause"], "start");
    t.wait_log(&["started", "daemon=change", "cause=reload"]);
    let m = t.ctl_run(&["metrics"]).stdout;
    for line in [
        "forkroot_starts_total{daemon=\"change\",cause=\"reload\"} 1\n",
        "forkroot_starts_total{daemon=\"change\",cause=\"operator\"} 0\n",
        "forkroot_starts_total{daemon=\"added\",cause=\"reload\"} 1\n",
    ] {
        assert!(m.contains(line), "{line} missing from:\n{m}");
    }
    let r = t.ctl_run(&["shutdown"]);
    assert_eq!(r.code, Some(0));
}

/// `examples/mail.rs`: an exec'd program with a mailbox.
fn mail() -> String {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    common::example("mail", &PATH).display().to_string()
}

/// A mailbox program as a `[[daemon]]` table.
fn mail_daemon(name: &str, args: &str) -> String {
    format!(
        "[[daemon]]\nname = \"{name}\"\nexec = [\"{}\", {args}]\nmemory = \"64KiB\"\n",
        mail()
    )
}

/// A daemon a reload adds gets a mailbox like the others (a message sent
/// by name, by a process forked before the reload, reaches it) and a
/// cgroup of its own where the root runs daemons in cgroups.
#[test]
fn an_added_daemon_receives_a_message_sent_by_name_and_runs_in_its_own_cgroup() {
    // `old` sends as soon as a daemon named `inbox` exists.
    let first = mail_daemon("old", "\"send\", \"inbox\", \"hello\", \"@DIR@/old.out\"");
    let t = Tree::start(&first);
    running_pid(&t, "old");
    write_config(
        &t.dir,
        &format!(
            "{first}{}",
            mail_daemon("inbox", "\"recv\", \"@DIR@/inbox.out\"")
        ),
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(r.code, Some(0), "ctl reload: {}{}", r.stdout, r.stderr);
    let inbox = running_pid(&t, "inbox");
    let got = t.poll("inbox got the message", || {
        let text = std::fs::read_to_string(t.path("inbox.out")).ok()?;
        text.lines()
            .find(|l| !l.starts_with("start "))
            .map(str::to_owned)
    });
    assert_eq!(got, "old hello");
    // Its own cgroup, where the root has cgroups.
    let status: serde_json::Value =
        serde_json::from_str(&t.ctl_run(&["status", "--json"]).stdout).expect("status json");
    let containment = status["root"]["containment"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    eprintln!("containment: {containment}");
    match containment.strip_prefix("cgroup ") {
        Some(base) => {
            let own = std::fs::read_to_string(format!("/proc/{inbox}/cgroup")).expect("its cgroup");
            let base = std::path::Path::new(base);
            let rel = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .expect("a cgroup v2 line");
            let mount = common::cgroup2_mount().expect("a cgroup2 mount");
            let dir = mount.join(rel.trim_start_matches('/'));
            assert!(
                dir == base.join("inbox/a") || dir == base.join("inbox/b"),
                "inbox runs in {} rather than a leaf of {}/inbox",
                dir.display(),
                base.display()
            );
        }
        None => assert!(containment.starts_with("process-group"), "{containment}"),
    }
    let r = t.ctl_run(&["shutdown"]);
    assert_eq!(r.code, Some(0));
}

/// A reload that adds more daemons than the spare mailboxes reserved at
/// start is refused whole, naming the daemon, and changes nothing.
#[test]
fn a_reload_past_the_spare_mailboxes_is_refused_naming_the_daemon() {
    let t = Tree::start(
        "[supervisor]\nspare_mailboxes = 1\n[[daemon]]\nname = \"keep\"\nkind = \"idle\"\n",
    );
    let keep = running_pid(&t, "keep");
    write_config(
        &t.dir,
        "[supervisor]\nspare_mailboxes = 1\n[[daemon]]\nname = \"keep\"\nkind = \"idle\"\n\
         [[daemon]]\nname = \"one\"\nkind = \"idle\"\n\
         [[daemon]]\nname = \"two\"\nkind = \"idle\"\n",
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("daemon[2]: \"two\" cannot be added: no mailbox left for it"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("\"one\""), "{}", r.stderr);
    assert_eq!(names(&t), ["keep"]);
    assert_eq!(running_pid(&t, "keep"), keep);
    // One is within the room: accepted, and it gets a mailbox.
    write_config(
        &t.dir,
        "[supervisor]\nspare_mailboxes = 1\n[[daemon]]\nname = \"keep\"\nkind = \"idle\"\n\
         [[daemon]]\nname = \"one\"\nkind = \"idle\"\nmailbox = 128\n",
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(
        r.code,
        Some(1),
        "a mailbox larger than the spare room: {}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains("\"one\" cannot be added: its mailbox needs"),
        "{}",
        r.stderr
    );
    write_config(
        &t.dir,
        "[supervisor]\nspare_mailboxes = 1\n[[daemon]]\nname = \"keep\"\nkind = \"idle\"\n\
         [[daemon]]\nname = \"one\"\nkind = \"idle\"\n",
    );
    let r = t.ctl_run(&["reload"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    running_pid(&t, "one");
    let r = t.ctl_run(&["shutdown"]);
    assert_eq!(r.code, Some(0));
}
