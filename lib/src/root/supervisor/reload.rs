//! What a reload changes in the supervision tree (`DESIGN.md` §10): a
//! daemon leaves its group, joins one, or takes new settings. The loop
//! stops and starts the daemons through the ordinary events
//! ([`Event::Stop`], [`Event::Start`]); these only edit the tree between
//! them, so every transition stays the table's.

use super::{DState, Daemon, GState, Member, Supervisor, Then, TOP};
use crate::config::{Config, DaemonConfig};

impl Supervisor {
    /// Daemon `i`, down and without a process, leaves the tree: it is out
    /// of its group's children (and of any restart of it), and no daemon
    /// links to it. Its index stays taken.
    pub(crate) fn retire(&mut self, i: usize) {
        debug_assert!(self.daemons[i].state.down(), "retiring a live daemon");
        let (g, pos) = (self.daemons[i].group, self.daemons[i].pos);
        self.forget(g, pos);
        self.shift(g, pos, false);
        self.groups[g].children.remove(pos);
        self.renumber(g);
        self.daemons[i].state = DState::Stopped;
        for d in &mut self.daemons {
            d.links.retain(|&l| l != i);
        }
    }

    /// A new daemon joins group `g` at position `pos` (stopped); a group
    /// still starting its children starts it in its turn. Returns its
    /// index, the next one.
    pub(crate) fn add(&mut self, cfg: &DaemonConfig, g: usize, pos: usize) -> usize {
        let i = self.daemons.len();
        let pos = pos.min(self.groups[g].children.len());
        self.daemons.push(Daemon::new(cfg, g, Vec::new()));
        self.daemons[i].pos = pos;
        self.shift(g, pos, true);
        self.groups[g].children.insert(pos, Member::Daemon(i));
        self.renumber(g);
        if let GState::Starting { next, .. } = &mut self.groups[g].state {
            next.insert(next.partition_point(|&p| p < pos), pos);
        }
        i
    }

    /// Daemon `i` takes the settings of `cfg` the supervisor acts on (its
    /// backoff starts over).
    pub(crate) fn update(&mut self, i: usize, cfg: &DaemonConfig) {
        let d = &mut self.daemons[i];
        d.restart = cfg.restart;
        d.significant = cfg.significant;
        d.backoff_cfg = cfg.backoff;
        d.backoff = cfg.backoff.initial;
        d.start_timeout = cfg.start_timeout;
        d.watchdog = cfg.watchdog;
    }

    /// Every daemon's links, resolved and symmetric (retired ones empty).
    pub(crate) fn relink(&mut self, links: &[Vec<usize>]) {
        for (d, l) in self.daemons.iter_mut().zip(links) {
            d.links.clone_from(l);
        }
    }

    /// The settings of `config` for the supervisors that exist (the same
    /// groups, checked by the caller): strategy, intensity, period and
    /// restart type, `auto_shutdown` and `significant`; and the stop
    /// timeout. Their windows are kept.
    pub(crate) fn set_settings(&mut self, config: &Config) {
        self.stop_timeout = config.root.stop_timeout;
        let top = &mut self.groups[TOP];
        top.strategy = config.supervisor.strategy;
        top.intensity = config.supervisor.intensity;
        top.period = config.supervisor.period;
        top.auto_shutdown = config.supervisor.auto_shutdown;
        for (k, gc) in config.groups.iter().enumerate() {
            let g = &mut self.groups[k + 1];
            g.strategy = gc.supervisor.strategy;
            g.intensity = gc.supervisor.intensity;
            g.period = gc.supervisor.period;
            g.restart = gc.restart;
            g.auto_shutdown = gc.supervisor.auto_shutdown;
            g.significant = gc.significant;
        }
    }

    /// Whether group `g` runs its children (an added daemon starts now),
    /// rather than being down or still starting them (it starts with its
    /// group, or in its turn).
    pub(crate) fn group_up(&self, g: usize) -> bool {
        matches!(
            self.groups[g].state,
            GState::Running | GState::Restarting { .. }
        )
    }

    /// Whether daemon `i` is up or on its way up (a restart pending): a
    /// reload that changes it starts it again with its new settings.
    pub(crate) fn wants_up(&self, i: usize) -> bool {
        matches!(
            self.daemons[i].state,
            DState::Starting
                | DState::Running
                | DState::Backoff
                | DState::Waiting
                | DState::Killed
                | DState::Stopping(Then::Start)
        )
    }

    /// Where daemon `i` sits among its group's children.
    pub(crate) fn daemon_pos(&self, i: usize) -> usize {
        self.daemons[i].pos
    }

    /// Group `g`'s pending restart or start, for a child inserted at (or
    /// removed from) `pos`: the positions after it move by one.
    fn shift(&mut self, g: usize, pos: usize, insert: bool) {
        let moved = |p: &mut usize| {
            if insert && *p >= pos {
                *p += 1;
            } else if !insert && *p > pos {
                *p -= 1;
            }
        };
        match &mut self.groups[g].state {
            GState::Restarting { stop, start } => stop.iter_mut().chain(start).for_each(moved),
            GState::Starting { awaiting, next, .. } => {
                if !insert && *awaiting == Some(pos) {
                    *awaiting = None;
                }
                awaiting.iter_mut().chain(next).for_each(moved);
            }
            _ => {}
        }
    }

    /// Every child of group `g` learns its position again.
    fn renumber(&mut self, g: usize) {
        for (pos, m) in self.groups[g].children.clone().into_iter().enumerate() {
            match m {
                Member::Daemon(d) => self.daemons[d].pos = pos,
                Member::Group(h) => self.groups[h].pos = pos,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};
    use std::time::{Duration, Instant};

    use super::super::{Action, Event, Member, Supervisor, TOP};
    use crate::config::Config;
    use crate::daemon::{Context, Kind, Registry};

    fn config(toml: &str) -> Config {
        fn never(_: &mut Context<'_>) -> i32 {
            unreachable!("the table forks nothing")
        }
        let mut r = Registry::new();
        r.add(Kind::new("idle", "does nothing", never));
        Config::parse(toml, "test.toml", &r).expect("a valid config")
    }

    /// Feeds `event`, then plays obedient processes (a fork runs, a
    /// SIGTERM ends it, a timer fires when due) until nothing is left;
    /// returns the daemons forked, in order.
    fn play(s: &mut Supervisor, event: Event, now: Instant) -> Vec<usize> {
        let mut forks = Vec::new();
        let mut timers: BTreeMap<usize, Instant> = BTreeMap::new();
        let mut events = VecDeque::from([(event, now)]);
        let mut t = now;
        for _ in 0..1000 {
            let Some((e, at)) = events.pop_front().or_else(|| {
                let (&i, &at) = timers.iter().min_by_key(|(_, &at)| at)?;
                timers.remove(&i);
                Some((Event::Timer(i), at))
            }) else {
                return forks;
            };
            t = t.max(at);
            for a in s.handle(e, t) {
                match a {
                    Action::Fork(i) => {
                        forks.push(i);
                        events.push_back((Event::Ready(i), t));
                    }
                    Action::Term(i) => {
                        timers.remove(&i);
                        events.push_back((
                            Event::Exit {
                                daemon: i,
                                normal: true,
                                uptime: Duration::from_secs(1),
                            },
                            t,
                        ));
                    }
                    Action::SetTimer(i, at) => {
                        timers.insert(i, at);
                    }
                    Action::CancelTimer(i) => {
                        timers.remove(&i);
                    }
                    _ => {}
                }
            }
        }
        panic!("the tree never settled");
    }

    #[test]
    fn a_daemon_added_while_its_group_starts_starts_in_its_turn() {
        let c = config(
            "[[daemon]]\nname = \"a\"\nkind = \"idle\"\n\
             [[daemon]]\nname = \"b\"\nkind = \"idle\"\n",
        );
        let now = Instant::now();
        let mut s = Supervisor::new(&c, &[vec![], vec![]], now);
        // a is forked and not ready yet: the top awaits it, b is next.
        let first = s.handle(Event::StartAll, now);
        assert!(first.contains(&Action::Fork(0)) && !first.contains(&Action::Fork(1)));
        assert!(!s.group_up(TOP));
        // Added before b, and at the end: both start in order once a is.
        let d = s.add(&c.daemons[1], TOP, 1);
        let e = s.add(&c.daemons[1], TOP, 3);
        assert_eq!(play(&mut s, Event::Ready(0), now), [d, 1, e]);
        assert!(s.group_up(TOP));
    }

    #[test]
    fn a_retired_daemon_leaves_its_groups_restarts_and_an_added_one_joins_them() {
        let c = config(
            "[supervisor]\nstrategy = \"one_for_all\"\nintensity = 10\n\
             [[daemon]]\nname = \"a\"\nkind = \"idle\"\n\
             [[daemon]]\nname = \"b\"\nkind = \"idle\"\n\
             [[daemon]]\nname = \"c\"\nkind = \"idle\"\n",
        );
        let now = Instant::now();
        let mut s = Supervisor::new(&c, &[vec![1], vec![0], vec![]], now);
        assert_eq!(play(&mut s, Event::StartAll, now), [0, 1, 2]);
        // b is removed: stopped as an operator would, then retired.
        assert!(play(&mut s, Event::Stop(1), now).is_empty());
        s.retire(1);
        assert!(s.daemons[0].links.is_empty(), "no link to a retired daemon");
        // d is added between a and c, and started.
        let d = s.add(&c.daemons[1], TOP, s.daemon_pos(0) + 1);
        assert_eq!(d, 3);
        assert_eq!(
            s.groups()[TOP].children,
            [Member::Daemon(0), Member::Daemon(3), Member::Daemon(2)]
        );
        assert_eq!(
            (s.daemon_pos(0), s.daemon_pos(3), s.daemon_pos(2)),
            (0, 1, 2)
        );
        assert_eq!(play(&mut s, Event::Start(d), now), [3]);
        // a dies: one_for_all restarts its group in order, with d, never b.
        let died = Event::Exit {
            daemon: 0,
            normal: false,
            uptime: Duration::from_secs(1),
        };
        assert_eq!(play(&mut s, died, now), [0, 3, 2]);
        assert!(s.wants_up(3) && !s.wants_up(1));
    }
}
