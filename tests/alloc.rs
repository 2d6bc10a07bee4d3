//! No allocation after start-up: the built-in daemons run their steady state
//! under the `forbid` policy and publish their counters, which stay at zero;
//! a daemon that allocates anyway is aborted and the root reports why.

mod common;

use common::Tree;
use libc::SIGTERM;

#[test]
fn built_in_daemons_make_no_allocation_in_their_steady_state() {
    let mut t = Tree::start(
        "[[daemon]]\nname = \"idle\"\nkind = \"idle\"\n\
         [[daemon]]\nname = \"counter\"\nkind = \"counter\"\n[daemon.args]\nrate = 2000\nout = \"@DIR@/c.out\"\n\
         [[daemon]]\nname = \"flaky\"\nkind = \"flaky\"\n[daemon.args]\nmean_life = \"1h\"\n",
    );
    // Each publishes its counters at a heartbeat (`idle`, with no watchdog,
    // once: as it goes to sleep for good); wait past a second round of the
    // others', so the counters cover a stretch of steady state.
    let status = t.poll("every daemon to publish forbid-policy counters", || {
        let ds = t.daemons_status()?;
        let all = ds
            .iter()
            .all(|d| d["alloc"]["policy"] == "forbid" && d["uptime_ms"].as_u64() > Some(1200));
        all.then_some(ds)
    });
    for d in &status {
        assert_eq!(d["alloc"]["allocs"], 0, "{} allocated: {d}", d["name"]);
        assert_eq!(d["state"], "running", "{d}");
    }
    assert!(!t.log().contains("crashed"), "{}", t.log());
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
    assert!(!t.log().contains("SIGABRT"), "{}", t.log());
}

#[test]
fn an_allocation_in_the_steady_state_aborts_the_daemon_with_a_report() {
    let mut t = Tree::start(
        "[[daemon]]\nname = \"greedy\"\nkind = \"probe\"\nrestart = \"temporary\"\n\
         [daemon.args]\nout = \"@DIR@/greedy.out\"\nallocate = true\n",
    );
    let line = t.wait_log(&["crashed", "daemon=greedy"]);
    assert!(line.contains("killed by SIGABRT"), "{line}");
    assert!(line.contains("allocated 4096 bytes after fork"), "{line}");
    assert!(t.out("greedy").contains(&"allocating".to_string()));
    assert!(!t.out("greedy").contains(&"allocated".to_string()));
    t.signal(SIGTERM);
    assert_eq!(t.wait_code(), 0);
}
