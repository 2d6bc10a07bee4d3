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

    /// A new daemon joins group `g` at position `pos` (stopped). Returns
    /// its index, the next one.
    pub(crate) fn add(&mut self, cfg: &DaemonConfig, g: usize, pos: usize) -> usize {
        let i = self.daemons.len();
        let pos = pos.min(self.groups[g].children.len());
        self.daemons.push(Daemon {
            state: DState::Stopped,
            group: g,
            pos,
            restart: cfg.restart,
            backoff_cfg: cfg.backoff,
            backoff: cfg.backoff.initial,
            restarts: 0,
            links: Vec::new(),
            cause: super::Cause::Start,
        });
        self.shift(g, pos, true);
        self.groups[g].children.insert(pos, Member::Daemon(i));
        self.renumber(g);
        i
    }

    /// Daemon `i` takes the settings of `cfg` the supervisor acts on (its
    /// backoff starts over).
    pub(crate) fn update(&mut self, i: usize, cfg: &DaemonConfig) {
        let d = &mut self.daemons[i];
        d.restart = cfg.restart;
        d.backoff_cfg = cfg.backoff;
        d.backoff = cfg.backoff.initial;
    }

    /// Every daemon's links, resolved and symmetric (retired ones empty).
    pub(crate) fn relink(&mut self, links: &[Vec<usize>]) {
        for (d, l) in self.daemons.iter_mut().zip(links) {
            d.links.clone_from(l);
        }
    }

    /// The settings of `config` for the supervisors that exist (the same
    /// groups, checked by the caller): strategy, intensity, period and
    /// restart type; and the stop timeout. Their windows are kept.
    pub(crate) fn set_settings(&mut self, config: &Config) {
        self.stop_timeout = config.root.stop_timeout;
        let top = &mut self.groups[TOP];
        top.strategy = config.supervisor.strategy;
        top.intensity = config.supervisor.intensity;
        top.period = config.supervisor.period;
        for (k, gc) in config.groups.iter().enumerate() {
            let g = &mut self.groups[k + 1];
            g.strategy = gc.supervisor.strategy;
            g.intensity = gc.supervisor.intensity;
            g.period = gc.supervisor.period;
            g.restart = gc.restart;
        }
    }

    /// Whether group `g` runs its children (an added daemon starts now),
    /// rather than being down (it starts with its group).
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
                | DState::Stopping(Then::Start)
        )
    }

    /// Where daemon `i` sits among its group's children.
    pub(crate) fn daemon_pos(&self, i: usize) -> usize {
        self.daemons[i].pos
    }

    /// Group `g`'s pending restart, for a child inserted at (or removed
    /// from) `pos`: the positions after it move by one.
    fn shift(&mut self, g: usize, pos: usize, insert: bool) {
        if let GState::Restarting { stop, start } = &mut self.groups[g].state {
            for p in stop.iter_mut().chain(start.iter_mut()) {
                if insert && *p >= pos {
                    *p += 1;
                } else if !insert && *p > pos {
                    *p -= 1;
                }
            }
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
