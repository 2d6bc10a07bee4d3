//! The table, cell by cell (each test names its cell; `DESIGN.md` §4 points
//! here), and a property test against a small model of OTP's supervisor.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::daemon::{Context, Kind, Registry};

/// The one kind these configs name; the table runs no daemon.
fn kinds() -> Registry {
    fn never(_: &mut Context<'_>) -> i32 {
        unreachable!("the table forks nothing")
    }
    let mut r = Registry::new();
    r.add(Kind::new("idle", "does nothing", never));
    r
}

/// The loop around the table, with processes that do as they are told: a
/// fork runs (its setup finishes), and with `obedient` a SIGTERM ends the
/// process right after the batch that sent it.
struct World {
    sup: Supervisor,
    now: Instant,
    up: Vec<bool>,
    timers: Vec<Option<Instant>>,
    actions: Vec<Action>,
    names: Vec<String>,
    obedient: bool,
    /// Forks fail (EAGAIN).
    fail_forks: bool,
    /// Forked processes are not ready until a test says so.
    slow: bool,
}

impl World {
    fn new(toml: &str) -> World {
        let config = Config::parse(toml, "test.toml", &kinds()).expect("a valid config");
        let names: Vec<String> = config.daemons.iter().map(|d| d.name.clone()).collect();
        let mut links = vec![Vec::new(); names.len()];
        for (i, d) in config.daemons.iter().enumerate() {
            for l in &d.links {
                let j = names.iter().position(|n| n == l).expect("a linked daemon");
                if !links[i].contains(&j) {
                    links[i].push(j);
                }
                if !links[j].contains(&i) {
                    links[j].push(i);
                }
            }
        }
        let now = Instant::now();
        World {
            sup: Supervisor::new(&config, &links, now),
            now,
            up: vec![false; names.len()],
            timers: vec![None; names.len()],
            actions: Vec::new(),
            names,
            obedient: true,
            fail_forks: false,
            slow: false,
        }
    }

    /// Starts the tree and forgets what that did.
    fn started(toml: &str) -> World {
        let mut w = World::new(toml);
        w.feed(Event::StartAll);
        w.actions.clear();
        w
    }

    fn d(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).expect("a daemon")
    }

    fn feed(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(e) = events.pop_front() {
            if let Event::Exit { daemon, .. } = e {
                self.up[daemon] = false;
            }
            for a in self.sup.handle(e, self.now) {
                self.actions.push(a);
                match a {
                    Action::Fork(i) if self.fail_forks => events.push_back(Event::ForkFailed(i)),
                    Action::Fork(i) => {
                        assert!(!self.up[i], "{} forked while it runs", self.names[i]);
                        self.up[i] = true;
                        if !self.slow {
                            events.push_back(Event::Ready(i));
                        }
                    }
                    Action::Term(i) if self.obedient => events.push_back(Event::Exit {
                        daemon: i,
                        normal: true,
                        uptime: Duration::ZERO,
                    }),
                    Action::Kill(i) => events.push_back(Event::Exit {
                        daemon: i,
                        normal: false,
                        uptime: Duration::ZERO,
                    }),
                    Action::SetTimer(i, at) => self.timers[i] = Some(at),
                    Action::CancelTimer(i) => self.timers[i] = None,
                    _ => {}
                }
            }
        }
    }

    /// Daemon `name`'s process dies on its own.
    fn crash(&mut self, name: &str) {
        let i = self.d(name);
        assert!(self.up[i], "{name} is not running");
        self.feed(Event::Exit {
            daemon: i,
            normal: false,
            uptime: Duration::from_millis(1),
        });
    }

    /// Daemon `name`'s process, asked to stop, ends.
    fn exits(&mut self, name: &str) {
        let i = self.d(name);
        self.feed(Event::Exit {
            daemon: i,
            normal: true,
            uptime: Duration::ZERO,
        });
    }

    /// Time passes; due timers fire in order.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        while let Some((i, at)) = self
            .timers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .min_by_key(|&(_, t)| t)
        {
            if at > self.now {
                break;
            }
            self.timers[i] = None;
            self.feed(Event::Timer(i));
        }
    }

    /// Names of the daemons the actions since the last call forked (`+`)
    /// and signalled (`-`), in order.
    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.actions)
            .into_iter()
            .filter_map(|a| match a {
                Action::Fork(i) => Some(format!("+{}", self.names[i])),
                Action::Term(i) => Some(format!("-{}", self.names[i])),
                Action::Kill(i) => Some(format!("!{}", self.names[i])),
                _ => None,
            })
            .collect()
    }

    fn state(&self, name: &str) -> DState {
        self.sup.daemon_state(self.d(name))
    }

    fn group(&self, name: &str) -> &Group {
        self.sup
            .groups()
            .iter()
            .find(|g| g.name == name)
            .expect("a group")
    }
}

/// A daemon table.
fn daemon(name: &str, keys: &str) -> String {
    format!("[[daemon]]\nname = \"{name}\"\nkind = \"idle\"\n{keys}\n")
}

/// A group table.
fn group(name: &str, keys: &str) -> String {
    format!("[[group]]\nname = \"{name}\"\n{keys}\n")
}

fn abc(strategy: &str) -> String {
    format!(
        "[supervisor]\nstrategy = \"{strategy}\"\nintensity = 10\n{}{}{}",
        daemon("a", ""),
        daemon("b", ""),
        daemon("c", "")
    )
}

const S: Duration = Duration::from_secs(1);

#[test]
fn stopped_x_start_forks_children_in_declared_order_groups_where_their_first_daemon_is() {
    let mut w = World::new(&format!(
        "{}{}{}{}{}{}",
        group("g", ""),
        group("h", "parent = \"g\""),
        daemon("x", "group = \"g\""),
        daemon("y", ""),
        daemon("z", "group = \"h\""),
        daemon("v", "group = \"g\""),
    ));
    w.feed(Event::StartAll);
    // root: [g (first daemon x), y]; g: [x, h (z), v].
    assert_eq!(w.take(), ["+x", "+z", "+v", "+y"]);
    assert_eq!(w.group("g").state, GState::Running);
    assert_eq!(w.group("h").state, GState::Running);
}

#[test]
fn starting_x_ready_runs() {
    let mut w = World::new(&daemon("a", ""));
    w.feed(Event::StartAll);
    assert!(w.actions.contains(&Action::Show(0, State::Starting)));
    assert!(w.actions.contains(&Action::Show(0, State::Running)));
    assert_eq!(w.state("a"), DState::Running);
}

#[test]
fn running_x_exit_one_for_one_restarts_only_the_dead_one() {
    let mut w = World::started(&abc("one_for_one"));
    w.crash("b");
    assert_eq!(w.take(), ["+b"]);
    assert_eq!(w.sup.daemon_restarts(w.d("b")), 1);
    assert_eq!(w.sup.daemon_restarts(w.d("a")), 0);
}

#[test]
fn running_x_exit_with_backoff_waits_then_backoff_x_timer_starts() {
    let mut w = World::started(&daemon("a", "backoff = \"2s\""));
    w.crash("a");
    assert_eq!(w.take(), Vec::<String>::new());
    assert_eq!(w.state("a"), DState::Backoff);
    w.advance(S);
    assert_eq!(w.take(), Vec::<String>::new());
    w.advance(S);
    assert_eq!(w.take(), ["+a"]);
    // The next delay doubled.
    w.crash("a");
    w.advance(3 * S);
    assert_eq!(w.take(), Vec::<String>::new());
    w.advance(S);
    assert_eq!(w.take(), ["+a"]);
}

#[test]
fn running_x_exit_temporary_and_a_normal_transient_exit_stay_stopped() {
    let mut w = World::started(&format!(
        "{}{}",
        daemon("t", "restart = \"temporary\""),
        daemon("n", "restart = \"transient\"")
    ));
    w.crash("t");
    let n = w.d("n");
    w.feed(Event::Exit {
        daemon: n,
        normal: true,
        uptime: S,
    });
    assert_eq!(w.take(), Vec::<String>::new());
    assert_eq!(w.state("t"), DState::Stopped);
    assert_eq!(w.state("n"), DState::Stopped);
    assert!(w.actions.is_empty() || !w.actions.iter().any(|a| matches!(a, Action::Fork(_))));
}

#[test]
fn running_x_exit_past_the_top_intensity_gives_up_with_69() {
    let mut w = World::started(&format!(
        "[supervisor]\nintensity = 1\n{}{}{}",
        daemon("a", ""),
        daemon("b", ""),
        daemon("c", "")
    ));
    w.crash("b");
    assert_eq!(w.take(), ["+b"]);
    w.crash("b");
    // Given up: the others stop in reverse order; b is failed.
    assert_eq!(w.take(), ["-c", "-a"]);
    assert_eq!(w.sup.shutting_down(), Some(EXIT_GAVE_UP));
    assert_eq!(w.state("b"), DState::Failed);
    assert_eq!(w.sup.groups()[TOP].state, GState::Failed);
}

#[test]
fn the_intensity_window_forgets_restarts_older_than_the_period() {
    let mut w = World::started(&format!(
        "[supervisor]\nintensity = 1\nperiod = \"5s\"\n{}",
        daemon("a", "")
    ));
    w.crash("a");
    w.advance(6 * S);
    w.crash("a");
    assert_eq!(w.sup.shutting_down(), None);
    assert_eq!(w.take(), ["+a", "+a"]);
}

#[test]
fn one_for_all_stops_the_others_one_at_a_time_in_reverse_then_starts_all_in_order() {
    let mut w = World::started(&abc("one_for_all"));
    w.obedient = false;
    w.crash("b");
    assert_eq!(w.take(), ["-c"], "one at a time");
    assert_eq!(w.state("c"), DState::Stopping(Then::Start));
    w.exits("c");
    assert_eq!(w.take(), ["-a"]);
    w.exits("a");
    assert_eq!(w.take(), ["+a", "+b", "+c"]);
    assert_eq!(w.sup.groups()[TOP].state, GState::Running);
}

#[test]
fn one_for_all_waits_for_the_dead_ones_backoff() {
    let mut w = World::started(&format!(
        "[supervisor]\nstrategy = \"one_for_all\"\n{}{}",
        daemon("a", ""),
        daemon("b", "backoff = \"1s\"")
    ));
    w.crash("b");
    assert_eq!(w.take(), ["-a"]);
    assert_eq!(w.state("a"), DState::Waiting);
    w.advance(S);
    assert_eq!(w.take(), ["+a", "+b"]);
}

#[test]
fn rest_for_one_restarts_the_dead_one_and_those_after_it() {
    let mut w = World::started(&abc("rest_for_one"));
    w.crash("b");
    assert_eq!(w.take(), ["-c", "+b", "+c"]);
    assert_eq!(w.sup.daemon_restarts(w.d("c")), 0, "not a death of c");
}

#[test]
fn a_temporary_sibling_is_stopped_by_a_group_restart_and_stays_down() {
    let mut w = World::started(&format!(
        "[supervisor]\nstrategy = \"one_for_all\"\n{}{}",
        daemon("a", "restart = \"temporary\""),
        daemon("b", "")
    ));
    w.crash("b");
    assert_eq!(w.take(), ["-a", "+b"]);
    assert_eq!(w.state("a"), DState::Stopped);
}

#[test]
fn stopping_x_timer_kills_and_stopping_x_exit_rests() {
    let mut w = World::started(&abc("one_for_one"));
    w.obedient = false;
    w.feed(Event::Stop(w.d("a")));
    assert_eq!(w.take(), ["-a"]);
    w.advance(5 * S);
    assert!(w.actions.contains(&Action::KillStandby(w.d("a"))));
    assert_eq!(w.take(), ["!a"]);
    assert_eq!(w.state("a"), DState::Stopped);
}

#[test]
fn restart_x_running_stops_then_starts_it_and_counts_no_restart() {
    let mut w = World::started(&abc("one_for_all"));
    w.feed(Event::Restart(w.d("b")));
    assert_eq!(w.take(), ["-b", "+b"], "an operator's restart is b's alone");
    assert_eq!(w.sup.daemon_restarts(w.d("b")), 0);
    assert_eq!(w.sup.recent_restarts(TOP, w.now), 0);
}

#[test]
fn start_x_stopped_forks_and_start_x_running_does_nothing() {
    let mut w = World::started(&abc("one_for_one"));
    w.feed(Event::Stop(w.d("a")));
    w.feed(Event::Start(w.d("a")));
    w.feed(Event::Start(w.d("a")));
    assert_eq!(w.take(), ["-a", "+a"]);
}

#[test]
fn an_operator_stopped_daemon_stays_down_through_its_groups_restart() {
    let mut w = World::started(&abc("one_for_all"));
    w.feed(Event::Stop(w.d("c")));
    w.crash("b");
    assert_eq!(w.take(), ["-c", "-a", "+a", "+b"]);
}

#[test]
fn a_link_restarts_the_linked_daemon_without_counting_it() {
    let mut w = World::started(&format!(
        "{}{}{}",
        daemon("a", "links = [\"c\"]"),
        daemon("b", ""),
        daemon("c", "")
    ));
    w.crash("a");
    assert_eq!(w.take(), ["-c", "+a", "+c"]);
    assert_eq!(w.sup.daemon_restarts(w.d("c")), 0);
    assert_eq!(w.sup.recent_restarts(TOP, w.now), 1);
}

#[test]
fn a_link_that_traps_exits_gets_an_exit_message_instead_of_a_restart() {
    let mut w = World::started(&format!(
        "{}{}{}",
        daemon("a", "links = [\"b\", \"c\"]"),
        daemon("b", "trap_exits = true"),
        daemon("c", "")
    ));
    w.crash("a");
    assert!(w.actions.contains(&Action::Exit {
        to: w.d("b"),
        link: w.d("a")
    }));
    // b stays up; c goes down with its link and comes back.
    assert_eq!(w.take(), ["-c", "+a", "+c"]);
    assert_eq!(w.state("b"), DState::Running);
    // A normal exit sends nothing along a link.
    w.actions.clear();
    w.exits("a");
    assert!(!w.actions.iter().any(|a| matches!(a, Action::Exit { .. })));
}

#[test]
fn fork_failed_x_starting_retries_after_a_second_and_counts() {
    let mut w = World::started(&daemon("a", ""));
    // The replacement's fork fails.
    w.fail_forks = true;
    w.crash("a");
    w.take();
    assert_eq!(w.state("a"), DState::Backoff);
    assert_eq!(w.sup.recent_restarts(TOP, w.now), 2);
    assert_eq!(w.sup.daemon_restarts(0), 2);
    w.fail_forks = false;
    w.advance(S / 2);
    assert_eq!(w.take(), Vec::<String>::new());
    w.advance(S / 2);
    assert_eq!(w.take(), ["+a"]);
}

#[test]
fn standby_died_counts_against_the_intensity() {
    let mut w = World::started(&format!("[supervisor]\nintensity = 1\n{}", daemon("a", "")));
    w.feed(Event::StandbyDied(0));
    assert!(w.actions.contains(&Action::ForkStandby(0)));
    w.feed(Event::StandbyDied(0));
    // Given up; the primary (still running) is stopped, not failed.
    assert_eq!(w.sup.shutting_down(), Some(EXIT_GAVE_UP));
    assert_eq!(w.take(), ["-a"]);
    assert_eq!(w.state("a"), DState::Stopped);
}

#[test]
fn stopping_x_standby_died_counts_a_restart_and_forks_no_standby() {
    let mut w = World::started(&daemon("a", ""));
    w.obedient = false;
    w.feed(Event::Stop(0));
    assert!(matches!(w.state("a"), DState::Stopping(_)));
    w.actions.clear();
    w.feed(Event::StandbyDied(0));
    assert!(
        !w.actions.contains(&Action::ForkStandby(0)),
        "{:?}",
        w.actions
    );
    assert_eq!(w.sup.recent_restarts(TOP, w.now), 1);
    // Running, a standby that dies is replaced.
    let mut w = World::started(&daemon("a", ""));
    w.feed(Event::StandbyDied(0));
    assert!(
        w.actions.contains(&Action::ForkStandby(0)),
        "{:?}",
        w.actions
    );
}

#[test]
fn shutdown_stops_every_daemon_in_reverse_tree_order_one_at_a_time() {
    let mut w = World::started(&format!(
        "{}{}{}{}{}",
        group("g", ""),
        daemon("x", "group = \"g\""),
        daemon("y", ""),
        daemon("z", "group = \"g\""),
        daemon("w", "backoff = \"1s\""),
    ));
    w.crash("w");
    w.obedient = false;
    w.feed(Event::Shutdown(0));
    // w was waiting out its backoff: it stays down, at once.
    assert_eq!(w.state("w"), DState::Stopped);
    assert_eq!(w.timers[w.d("w")], None);
    assert_eq!(w.take(), ["-y"]);
    w.exits("y");
    assert_eq!(w.take(), ["-z"]);
    w.exits("z");
    assert_eq!(w.take(), ["-x"]);
    w.exits("x");
    assert_eq!(w.group("g").state, GState::Stopped);
    assert_eq!(w.sup.groups()[TOP].state, GState::Stopped);
    // Nothing starts during a shutdown.
    w.feed(Event::Start(w.d("x")));
    assert_eq!(w.take(), Vec::<String>::new());
}

/// `root` (`one_for_one`) ─ `outer` (`one_for_one`, intensity 0) ─ `inner`
/// (`one_for_all`, intensity 1) ─ [`i1`, `i2`]; `root` ─ `side` ─ [`s1`];
/// `root` ─ `top1`.
fn two_levels(root_intensity: u32, outer_restart: &str) -> String {
    format!(
        "[supervisor]\nintensity = {root_intensity}\n{}{}{}{}{}{}{}",
        group(
            "outer",
            &format!("intensity = 0\nrestart = \"{outer_restart}\"")
        ),
        group(
            "inner",
            "parent = \"outer\"\nstrategy = \"one_for_all\"\nintensity = 1"
        ),
        group("side", ""),
        daemon("i1", "group = \"inner\""),
        daemon("i2", "group = \"inner\""),
        daemon("s1", "group = \"side\""),
        daemon("top1", ""),
    )
}

#[test]
fn a_group_past_its_intensity_fails_and_its_parent_restarts_it_as_a_child() {
    let mut w = World::started(&two_levels(5, "permanent").replace(
        "[[group]]\nname = \"outer\"\nintensity = 0",
        "[[group]]\nname = \"outer\"\nintensity = 3",
    ));
    w.crash("i1");
    assert_eq!(w.take(), ["-i2", "+i1", "+i2"]);
    w.crash("i2");
    // inner gave up: it stops its children (reverse order) and fails;
    // outer restarts it (a new incarnation: its children start in order).
    assert_eq!(w.take(), ["-i1", "+i1", "+i2"]);
    assert_eq!(w.group("inner").state, GState::Running);
    assert_eq!(w.group("inner").restarts, 1);
    assert_eq!(w.sup.recent_restarts(1, w.now), 1, "outer counted it");
    assert_eq!(w.sup.recent_restarts(TOP, w.now), 0);
    assert_eq!(w.sup.recent_restarts(2, w.now), 0, "inner's window is new");
}

#[test]
fn escalation_through_two_groups_reaches_the_top_and_leaves_the_sibling_group_alone() {
    let mut w = World::started(&two_levels(0, "permanent"));
    w.crash("i1");
    w.take();
    w.crash("i2");
    // inner fails -> outer (intensity 0) fails -> root (intensity 0)
    // gives up: the rest of the tree stops in reverse order.
    assert_eq!(w.take(), ["-i1", "-top1", "-s1"]);
    assert_eq!(w.group("inner").state, GState::Failed);
    assert_eq!(w.group("outer").state, GState::Failed);
    assert_eq!(w.sup.shutting_down(), Some(EXIT_GAVE_UP));
    // s1 was never restarted: only the final shutdown stopped it.
    assert_eq!(w.sup.daemon_restarts(w.d("s1")), 0);
}

#[test]
fn a_transient_group_that_gave_up_is_not_restarted() {
    let mut w = World::started(&two_levels(5, "transient"));
    w.crash("i1");
    w.crash("i2");
    w.take();
    // outer (intensity 0) gave up when inner failed; it is transient and
    // OTP's `shutdown` is no abnormal exit: it stays failed.
    assert_eq!(w.group("outer").state, GState::Failed);
    assert_eq!(w.sup.shutting_down(), None);
    assert_eq!(w.state("s1"), DState::Running);
    assert_eq!(w.state("top1"), DState::Running);
    // An operator can bring a daemon of it back; its groups come up.
    w.feed(Event::Start(w.d("i1")));
    assert_eq!(w.take(), ["+i1"]);
    assert_eq!(w.group("outer").state, GState::Running);
}

#[test]
fn a_group_restarted_by_its_parents_strategy_stops_and_starts_as_a_whole() {
    let mut w = World::started(&format!(
        "[supervisor]\nstrategy = \"rest_for_one\"\n{}{}{}{}{}",
        group("g", ""),
        daemon("a", ""),
        daemon("g1", "group = \"g\""),
        daemon("g2", "group = \"g\""),
        daemon("b", ""),
    ));
    w.crash("a");
    // After a: the group g (its children in reverse), then b; then a, g
    // (g1, g2), b in order.
    assert_eq!(w.take(), ["-b", "-g2", "-g1", "+a", "+g1", "+g2", "+b"]);
    assert_eq!(
        w.group("g").restarts,
        0,
        "a strategy restart is not g's death"
    );
}

#[test]
fn running_x_timer_asks_the_watchdog() {
    let mut w = World::started(&daemon("a", ""));
    w.feed(Event::Timer(0));
    assert_eq!(w.actions, [Action::CheckWatchdog(0)]);
}

#[test]
fn running_x_watchdog_kills_and_its_exit_is_a_death_with_cause_watchdog() {
    let mut w = World::started(&format!(
        "[supervisor]\nintensity = 1\n{}{}",
        daemon("a", ""),
        daemon("b", "")
    ));
    w.feed(Event::Watchdog(0));
    assert_eq!(
        w.actions,
        [
            Action::CancelTimer(0),
            Action::WatchdogKill(0),
            Action::Show(0, State::Stopping)
        ]
    );
    assert_eq!(w.state("a"), DState::Killed);
    // A second expiry while it dies changes nothing.
    w.actions.clear();
    w.feed(Event::Watchdog(0));
    assert!(w.actions.is_empty());
    w.crash("a");
    assert_eq!(w.take(), ["+a"]);
    assert_eq!(w.state("a"), DState::Running);
    assert_eq!(w.sup.start_cause(0), Cause::Watchdog);
    assert_eq!(w.sup.daemon_restarts(0), 1, "a watchdog death is a restart");
    // It counts against the intensity as any death: a second one gives up.
    w.feed(Event::Watchdog(1));
    w.crash("b");
    assert_eq!(w.sup.shutting_down(), Some(EXIT_GAVE_UP));
}

#[test]
fn killed_x_ctl_stop_rests_and_killed_x_ctl_restart_starts_once_down() {
    let mut w = World::started(&abc("one_for_one"));
    let a = w.d("a");
    w.feed(Event::Watchdog(a));
    w.feed(Event::Stop(a));
    assert_eq!(w.state("a"), DState::Stopping(Then::Rest));
    assert!(w.timers[a].is_some(), "a stop deadline");
    w.crash("a");
    assert_eq!(w.state("a"), DState::Stopped);
    assert_eq!(w.sup.daemon_restarts(a), 0, "the stop was asked for");
    w.feed(Event::Start(a));
    w.feed(Event::Watchdog(a));
    w.feed(Event::Restart(a));
    w.take();
    w.crash("a");
    assert_eq!(w.take(), ["+a"]);
    assert_eq!(w.sup.start_cause(a), Cause::Operator);
    // Stopped × watchdog: nothing.
    w.feed(Event::Stop(a));
    w.actions.clear();
    w.feed(Event::Watchdog(a));
    assert!(w.actions.is_empty());
}

#[test]
fn ctl_stop_x_backoff_cancels_the_restart() {
    let mut w = World::started(&daemon("a", "backoff = \"1s\""));
    w.crash("a");
    w.feed(Event::Stop(0));
    assert_eq!(w.state("a"), DState::Stopped);
    assert_eq!(w.timers[0], None);
    w.advance(2 * S);
    assert_eq!(w.take(), Vec::<String>::new());
}

#[test]
fn ctl_restart_x_stopping_starts_it_once_down() {
    let mut w = World::started(&abc("one_for_one"));
    w.obedient = false;
    w.feed(Event::Stop(w.d("a")));
    w.feed(Event::Restart(w.d("a")));
    assert_eq!(w.take(), ["-a"]);
    w.exits("a");
    assert_eq!(w.take(), ["+a"]);
}

#[test]
fn a_death_during_a_group_restart_counts_and_joins_it() {
    let mut w = World::started(&abc("one_for_all"));
    w.obedient = false;
    w.crash("b");
    assert_eq!(w.take(), ["-c"]);
    // a, waiting for its turn to stop, dies on its own.
    w.crash("a");
    assert_eq!(w.sup.recent_restarts(TOP, w.now), 2);
    assert_eq!(w.sup.daemon_restarts(w.d("a")), 1);
    assert_eq!(w.take(), Vec::<String>::new(), "c is still stopping");
    w.exits("c");
    assert_eq!(w.take(), ["+a", "+b", "+c"]);
}

#[test]
fn start_x_failed_forks_it_and_brings_its_groups_up() {
    let mut w = World::started(&two_levels(5, "transient"));
    w.crash("i1");
    w.crash("i2");
    assert_eq!(w.state("i2"), DState::Failed);
    assert_eq!(w.group("inner").state, GState::Failed);
    w.take();
    w.feed(Event::Start(w.d("i2")));
    assert_eq!(w.take(), ["+i2"]);
    assert_eq!(w.group("inner").state, GState::Running);
    assert_eq!(w.group("outer").state, GState::Running);
}

#[test]
fn every_start_names_its_cause() {
    let mut w = World::started(&format!(
        "{}{}{}{}",
        group("g", "strategy = \"one_for_all\""),
        daemon("a", "group = \"g\""),
        daemon("b", "group = \"g\""),
        daemon("c", "links = [\"a\"]"),
    ));
    let cause = |w: &World, n: &str| w.sup.start_cause(w.d(n));
    assert!(["a", "b", "c"].iter().all(|n| cause(&w, n) == Cause::Start));
    w.crash("a");
    assert_eq!(cause(&w, "a"), Cause::Death);
    assert_eq!(cause(&w, "b"), Cause::Strategy);
    assert_eq!(cause(&w, "c"), Cause::Link);
    w.feed(Event::Restart(w.d("b")));
    assert_eq!(cause(&w, "b"), Cause::Operator);
    w.feed(Event::Stop(w.d("b")));
    w.feed(Event::Reload(w.d("b")));
    assert_eq!(cause(&w, "b"), Cause::Reload);
    w.feed(Event::Watchdog(w.d("b")));
    w.crash("b");
    assert_eq!(cause(&w, "b"), Cause::Watchdog);
    w.fail_forks = true;
    w.crash("c");
    assert_eq!(cause(&w, "c"), Cause::Retry);

    let mut w = World::started(&two_levels(5, "permanent").replace(
        "[[group]]\nname = \"outer\"\nintensity = 0",
        "[[group]]\nname = \"outer\"\nintensity = 3",
    ));
    w.crash("i1");
    w.crash("i2");
    assert_eq!(cause(&w, "i1"), Cause::Escalation);
    assert_eq!(cause(&w, "i2"), Cause::Escalation);
    assert_eq!(cause(&w, "s1"), Cause::Start);
}

mod model;

#[test]
fn start_forks_each_child_once_the_one_before_it_is_ready() {
    let mut w = World::new(&format!(
        "{}{}{}{}{}",
        group("g", ""),
        daemon("a", ""),
        daemon("g1", "group = \"g\""),
        daemon("g2", "group = \"g\""),
        daemon("b", ""),
    ));
    w.slow = true;
    w.feed(Event::StartAll);
    assert_eq!(w.take(), ["+a"]);
    assert_eq!(w.group("root").state.as_str(), "starting");
    w.feed(Event::Ready(w.d("a")));
    assert_eq!(w.take(), ["+g1"], "g starts, its first child first");
    w.feed(Event::Ready(w.d("g1")));
    assert_eq!(w.take(), ["+g2"]);
    assert_eq!(w.group("g").state.as_str(), "starting");
    w.feed(Event::Ready(w.d("g2")));
    assert_eq!(w.take(), ["+b"], "b waits for all of g");
    assert_eq!(w.group("g").state.as_str(), "running");
    w.feed(Event::Ready(w.d("b")));
    assert_eq!(w.group("root").state.as_str(), "running");
}

#[test]
fn a_child_that_dies_while_awaited_holds_the_next_until_its_restart_is_ready() {
    let mut w = World::new(&format!(
        "{}{}",
        daemon("a", "backoff = \"1s\""),
        daemon("b", "")
    ));
    w.slow = true;
    w.feed(Event::StartAll);
    w.crash("a");
    assert_eq!(w.state("a"), DState::Backoff);
    assert_eq!(w.take(), ["+a"], "b is not started past a dead a");
    w.advance(S);
    assert_eq!(w.take(), ["+a"]);
    w.feed(Event::Ready(0));
    assert_eq!(w.take(), ["+b"]);
}

#[test]
fn starting_x_timer_is_a_start_timeout() {
    let mut w = World::new(&daemon("a", "start_timeout = \"2s\""));
    w.slow = true;
    w.feed(Event::StartAll);
    assert_eq!(w.timers[0], Some(w.now + 2 * S));
    w.advance(2 * S);
    assert!(
        w.actions.contains(&Action::StartTimedOut(0)),
        "{:?}",
        w.actions
    );
    // The kill's exit is a death like any other.
    w.crash("a");
    assert_eq!(w.sup.daemon_restarts(0), 1);
    assert_eq!(w.state("a"), DState::Starting);
}

#[test]
fn extend_moves_a_start_deadline_and_ready_arms_the_watchdog() {
    let mut w = World::new(&daemon("a", "start_timeout = \"2s\"\nwatchdog = \"5s\""));
    w.slow = true;
    w.feed(Event::StartAll);
    w.actions.clear();
    w.feed(Event::Extend(0, 10 * S));
    assert_eq!(w.actions, [Action::ExtendTimer(0, w.now + 10 * S)]);
    w.actions.clear();
    w.feed(Event::Ready(0));
    assert_eq!(
        w.timers[0],
        Some(w.now + 5 * S),
        "the watchdog's first look"
    );
    w.actions.clear();
    w.feed(Event::Extend(0, 10 * S));
    assert!(
        w.actions.is_empty(),
        "a running daemon has no start deadline"
    );
}

// ----- auto_shutdown: significant children end their supervisor ----------

/// root ─ x, g (`auto_shutdown`, restart `g_restart`) ─ [a, s (significant
/// transient), b], y.
fn significant_in_group(auto: &str, g_restart: &str) -> String {
    format!(
        "{}{}{}{}{}{}",
        group(
            "g",
            &format!("auto_shutdown = \"{auto}\"\nrestart = \"{g_restart}\"")
        ),
        daemon("x", ""),
        daemon("a", "group = \"g\""),
        daemon(
            "s",
            "group = \"g\"\nrestart = \"transient\"\nsignificant = true"
        ),
        daemon("b", "group = \"g\""),
        daemon("y", ""),
    )
}

/// Whether the actions since the last `take` logged `group`'s auto
/// shutdown after `member`.
fn auto_shutdown_logged(w: &World, group: &str, member: Member) -> bool {
    let g = w.sup.groups().iter().position(|x| x.name == group);
    w.actions.iter().any(|a| {
        matches!(a, Action::Log(Log::AutoShutdown { group: h, member: m })
            if Some(*h) == g && *m == member)
    })
}

#[test]
fn a_significant_normal_exit_x_any_significant_ends_the_group_and_leaves_its_parent_running() {
    let mut w = World::started(&significant_in_group("any_significant", "transient"));
    w.exits("s");
    assert!(auto_shutdown_logged(&w, "g", Member::Daemon(w.d("s"))));
    // Its other children stop in reverse order; nothing outside moves.
    assert_eq!(w.take(), ["-b", "-a"]);
    assert_eq!(w.group("g").state, GState::Ended);
    assert_eq!(w.group("g").state.as_str(), "ended");
    // A transient group's end (OTP's `shutdown`) is normal: not restarted.
    assert_eq!(w.group("root").state, GState::Running);
    assert_eq!(w.sup.recent_restarts(TOP, w.now), 0);
    assert_eq!(w.state("x"), DState::Running);
    assert_eq!(w.state("y"), DState::Running);
    assert_eq!(w.sup.shutting_down(), None);
    // An operator can bring a daemon of it back; the group comes up.
    w.feed(Event::Start(w.d("a")));
    assert_eq!(w.take(), ["+a"]);
    assert_eq!(w.group("g").state, GState::Running);
}

#[test]
fn a_significant_crash_x_transient_restarts_and_x_temporary_ends_the_group() {
    let mut w = World::started(&significant_in_group("any_significant", "transient"));
    w.crash("s");
    // Transient and abnormal: restarted, as without auto_shutdown.
    assert_eq!(w.take(), ["+s"]);
    assert_eq!(w.group("g").state, GState::Running);

    let config = significant_in_group("any_significant", "transient").replace(
        "restart = \"transient\"\nsignificant",
        "restart = \"temporary\"\nsignificant",
    );
    let mut w = World::started(&config);
    w.crash("s");
    // Temporary: never restarted, so any end of it is an end.
    assert_eq!(w.take(), ["-b", "-a"]);
    assert_eq!(w.group("g").state, GState::Ended);
}

#[test]
fn a_normal_exit_of_a_child_not_significant_ends_nothing() {
    let config = significant_in_group("any_significant", "transient").replace(
        "name = \"a\"\nkind = \"idle\"\ngroup = \"g\"",
        "name = \"a\"\nkind = \"idle\"\ngroup = \"g\"\nrestart = \"transient\"",
    );
    let mut w = World::started(&config);
    w.exits("a");
    assert_eq!(w.take(), Vec::<String>::new());
    assert_eq!(w.state("a"), DState::Stopped);
    assert_eq!(w.group("g").state, GState::Running);
}

#[test]
fn all_significant_ends_the_group_with_its_last_active_significant_child() {
    let config = format!(
        "{}{}{}{}",
        group(
            "g",
            "auto_shutdown = \"all_significant\"\nrestart = \"temporary\""
        ),
        daemon("a", "group = \"g\""),
        daemon(
            "s1",
            "group = \"g\"\nrestart = \"temporary\"\nsignificant = true"
        ),
        daemon(
            "s2",
            "group = \"g\"\nrestart = \"transient\"\nsignificant = true"
        ),
    );
    let mut w = World::started(&config);
    w.crash("s1");
    assert_eq!(w.take(), Vec::<String>::new(), "s2 is still active");
    assert_eq!(w.group("g").state, GState::Running);
    // s2 crashes: restarted (transient), still active.
    w.crash("s2");
    assert_eq!(w.take(), ["+s2"]);
    w.exits("s2");
    assert_eq!(w.take(), ["-a"]);
    assert_eq!(w.group("g").state, GState::Ended);

    // One waiting out its backoff to restart is active (OTP: `restarting`).
    let mut w = World::started(&config.replace(
        "restart = \"transient\"\nsignificant = true",
        "restart = \"transient\"\nsignificant = true\nbackoff = \"1s\"",
    ));
    w.crash("s2");
    assert_eq!(w.state("s2"), DState::Backoff);
    w.exits("s1");
    assert_eq!(w.take(), Vec::<String>::new());
    assert_eq!(w.group("g").state, GState::Running);
    w.advance(S);
    assert_eq!(w.take(), ["+s2"]);

    // A significant child the operator stopped is not active (OTP's
    // `terminate_child` leaves no pid), and its stop ends nothing.
    let mut w = World::started(&config);
    w.feed(Event::Stop(w.d("s2")));
    assert_eq!(w.take(), ["-s2"]);
    assert_eq!(w.group("g").state, GState::Running);
    w.exits("s1");
    assert_eq!(w.take(), ["-a"]);
    assert_eq!(w.group("g").state, GState::Ended);
}

#[test]
fn auto_shutdown_at_the_top_stops_the_tree_and_exits_0() {
    let mut w = World::started(&format!(
        "[supervisor]\nauto_shutdown = \"any_significant\"\n{}{}{}{}",
        group("g", ""),
        daemon("a", ""),
        daemon("g1", "group = \"g\""),
        daemon("s", "restart = \"temporary\"\nsignificant = true"),
    ));
    w.exits("s");
    assert!(auto_shutdown_logged(&w, "root", Member::Daemon(w.d("s"))));
    assert_eq!(w.take(), ["-g1", "-a"]);
    assert_eq!(w.sup.shutting_down(), Some(EXIT_OK));
    assert_eq!(w.group("root").state, GState::Stopped);
}

#[test]
fn a_permanent_group_that_ended_itself_is_restarted_by_its_parent_and_counts() {
    let mut w = World::started(&significant_in_group("any_significant", "permanent"));
    w.exits("s");
    // OTP: a permanent child is restarted whatever its exit reason.
    assert_eq!(w.take(), ["-b", "-a", "+a", "+s", "+b"]);
    assert_eq!(w.group("g").state, GState::Running);
    assert_eq!(w.group("g").restarts, 1);
    assert_eq!(w.sup.recent_restarts(TOP, w.now), 1);
    assert_eq!(w.sup.start_cause(w.d("a")), Cause::Death);
}

#[test]
fn a_significant_group_that_ended_ends_its_parent_up_to_the_top() {
    let mut w = World::started(&format!(
        "[supervisor]\nauto_shutdown = \"all_significant\"\n{}{}{}{}{}{}",
        group(
            "outer",
            "auto_shutdown = \"any_significant\"\nrestart = \"transient\"\nsignificant = true"
        ),
        group(
            "inner",
            "parent = \"outer\"\nauto_shutdown = \"any_significant\"\nrestart = \"temporary\"\nsignificant = true"
        ),
        daemon("o1", "group = \"outer\""),
        daemon("i1", "group = \"inner\""),
        daemon("s", "group = \"inner\"\nrestart = \"transient\"\nsignificant = true"),
        daemon("top1", ""),
    ));
    w.exits("s");
    // inner ends (i1), then outer (o1), then the top (top1): exit 0.
    assert_eq!(w.take(), ["-i1", "-o1", "-top1"]);
    assert_eq!(w.group("inner").state, GState::Ended);
    assert_eq!(w.group("outer").state, GState::Ended);
    assert_eq!(w.sup.shutting_down(), Some(EXIT_OK));
}

#[test]
fn a_significant_group_that_gave_up_ends_its_parent() {
    // OTP: a supervisor past its intensity exits `shutdown`, and a
    // transient significant one is then not restarted: auto shutdown.
    let mut w = World::started(&format!(
        "[supervisor]\nauto_shutdown = \"any_significant\"\n{}{}{}",
        group(
            "g",
            "intensity = 0\nrestart = \"transient\"\nsignificant = true"
        ),
        daemon("a", "group = \"g\""),
        daemon("b", ""),
    ));
    w.crash("a");
    assert_eq!(w.group("g").state, GState::Failed);
    assert_eq!(w.take(), ["-b"]);
    assert_eq!(w.sup.shutting_down(), Some(EXIT_OK));
}
