//! Faults beyond kills, through the real binary: region files truncated
//! under the root, resources exhausted (descriptors, processes, disk),
//! the root's own system calls failing. The root must never fall: each
//! fault is detected, reported with the daemon's name, and recovered from.

mod common;

use common::Tree;
use libc::SIGTERM;

/// The daemon's pid while it is running, from `ctl status --json`.
fn running(t: &Tree, name: &str) -> Option<i32> {
    let d = t.daemon_status(name)?;
    (d["state"] == "running")
        .then(|| d["pid"].as_i64())?
        .map(|p| p as i32)
}

/// Whether the root process is still alive (not even a zombie).
fn root_alive(t: &Tree) -> bool {
    common::Proc::read(t.pid).is_some_and(|p| p.state != 'Z')
}

#[test]
fn a_truncated_region_file_is_repaired_and_the_root_survives() {
    let mut t = Tree::start(
        "[root]\nstate_dir = \"@DIR@/state\"\n\
         [[daemon]]\nname = \"idle1\"\nkind = \"idle\"\n\
         [[daemon]]\nname = \"idle2\"\nkind = \"idle\"\n",
    );
    let first = t.poll("idle1 running", || running(&t, "idle1"));
    let other = t.poll("idle2 running", || running(&t, "idle2"));
    let file = t.path("state/idle1.region");
    let len = std::fs::metadata(&file).expect("region file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(0))
        .expect("truncate the region file");
    // The root answers (it used to die of SIGBUS reading the region).
    let out = t.ctl(&["status"]);
    assert!(
        out.status.success() && root_alive(&t),
        "ctl status after truncation: {out:?}\n--- root log ---\n{}",
        t.log()
    );
    // Detected and reported by name, the file restored to its size, and the
    // daemon running again on it; its sibling untouched.
    t.wait_log(&["idle1", "truncated"]);
    t.poll("idle1 running again", || {
        running(&t, "idle1").filter(|&p| p != first)
    });
    assert_eq!(std::fs::metadata(&file).unwrap().len(), len);
    assert_eq!(running(&t, "idle2"), Some(other), "the sibling was touched");
    assert!(root_alive(&t));
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
}
