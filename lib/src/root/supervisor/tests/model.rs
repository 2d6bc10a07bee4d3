//! Property: random trees and random deaths, the table (driven to rest by
//! [`World`]) against a small synchronous model of OTP's supervisor
//! (`supervisor.erl`: `restart/2`, `add_restart/1`, `terminate_children`,
//! `start_children`), written from OTP's documentation with forkroot's
//! documented differences (`DESIGN.md` §4): a sibling that is down when a
//! `one_for_all`/`rest_for_one` restart begins stays down, and a temporary
//! child that ended stays in the tree, down. Supervisors shut themselves
//! down as OTP 24's `do_auto_shutdown/2` says (`auto_shutdown`, children
//! marked `significant`). The running daemons, every restart count, every
//! group's state and the exit decision must match after every event.

use std::fmt::Write as _;

use proptest::prelude::{any, prop, prop_oneof, proptest, ProptestConfig};
use proptest::strategy::Strategy as Gen;

use super::*;

#[derive(Debug)]
struct MDaemon {
    group: usize,
    restart: RestartType,
    significant: bool,
    alive: bool,
    restarts: u32,
}

#[derive(Debug)]
struct MGroup {
    parent: Option<usize>,
    children: Vec<Member>,
    strategy: Strategy,
    intensity: u32,
    period: Duration,
    restart: RestartType,
    auto_shutdown: AutoShutdown,
    significant: bool,
    restarts: Vec<Instant>,
    alive: bool,
}

/// OTP's supervisor, synchronous: a restart terminates and starts children
/// before the next event.
#[derive(Debug)]
struct Model {
    daemons: Vec<MDaemon>,
    groups: Vec<MGroup>,
    exit: Option<i32>,
    now: Instant,
}

impl Model {
    fn new(config: &Config, now: Instant) -> Model {
        let group_of = |name: Option<&str>| {
            name.and_then(|n| config.groups.iter().position(|g| g.name == n))
                .map_or(0, |k| k + 1)
        };
        let mut groups: Vec<MGroup> =
            std::iter::once((None, &config.supervisor, RestartType::Permanent, false))
                .chain(config.groups.iter().map(|g| {
                    (
                        Some(group_of(g.parent.as_deref())),
                        &g.supervisor,
                        g.restart,
                        g.significant,
                    )
                }))
                .map(|(parent, s, restart, significant)| MGroup {
                    parent,
                    children: Vec::new(),
                    strategy: s.strategy,
                    intensity: s.intensity,
                    period: s.period,
                    restart,
                    auto_shutdown: s.auto_shutdown,
                    significant,
                    restarts: Vec::new(),
                    alive: false,
                })
                .collect();
        let daemons: Vec<MDaemon> = config
            .daemons
            .iter()
            .map(|d| MDaemon {
                group: group_of(d.group.as_deref()),
                restart: d.restart,
                significant: d.significant,
                alive: false,
                restarts: 0,
            })
            .collect();
        // Start order: a group sits where the first daemon under it is
        // declared; one without daemons comes after the daemons.
        let under = |mut g: usize, h: usize| loop {
            if g == h {
                return true;
            }
            match groups_parent(config, g) {
                Some(p) => g = p,
                None => return false,
            }
        };
        let n = groups.len();
        for (g, group) in groups.iter_mut().enumerate() {
            let mut kids: Vec<(usize, Member)> = daemons
                .iter()
                .enumerate()
                .filter(|(_, d)| d.group == g)
                .map(|(i, _)| (i, Member::Daemon(i)))
                .collect();
            for h in 1..n {
                if groups_parent(config, h) == Some(g) {
                    let first = daemons
                        .iter()
                        .position(|d| under(d.group, h))
                        .unwrap_or(daemons.len() + h);
                    kids.push((first, Member::Group(h)));
                }
            }
            kids.sort_by_key(|&(k, _)| k);
            group.children = kids.into_iter().map(|(_, m)| m).collect();
        }
        Model {
            daemons,
            groups,
            exit: None,
            now,
        }
    }

    fn start(&mut self, m: Member) {
        match m {
            Member::Daemon(i) => self.daemons[i].alive = true,
            Member::Group(g) => {
                // A new incarnation: its restart history is empty.
                self.groups[g].alive = true;
                self.groups[g].restarts.clear();
                for c in self.groups[g].children.clone() {
                    self.start(c);
                }
            }
        }
    }

    fn terminate(&mut self, m: Member) {
        match m {
            Member::Daemon(i) => self.daemons[i].alive = false,
            Member::Group(g) => {
                for c in self.groups[g].children.clone().into_iter().rev() {
                    self.terminate(c);
                }
                self.groups[g].alive = false;
            }
        }
    }

    fn alive(&self, m: Member) -> bool {
        match m {
            Member::Daemon(i) => self.daemons[i].alive,
            Member::Group(g) => self.groups[g].alive,
        }
    }

    fn exit(&mut self, i: usize, normal: bool) {
        if self.exit.is_some() || !self.daemons[i].alive {
            return;
        }
        self.daemons[i].alive = false;
        self.child_exit(self.daemons[i].group, Member::Daemon(i), normal);
    }

    /// `restart/2` of supervisor `g` for its child `m`.
    fn child_exit(&mut self, g: usize, m: Member, normal: bool) {
        let restart = match m {
            Member::Daemon(i) => self.daemons[i].restart,
            Member::Group(h) => self.groups[h].restart,
        };
        let restart = match restart {
            RestartType::Permanent => true,
            RestartType::Transient => !normal,
            RestartType::Temporary => false,
        };
        if !restart {
            return self.auto_shutdown(g, m);
        }
        // add_restart/1: restarts within the period, this one included.
        let now = self.now;
        let grp = &mut self.groups[g];
        grp.restarts.push(now);
        let period = grp.period;
        grp.restarts.retain(|&t| now.duration_since(t) <= period);
        if grp.restarts.len() > grp.intensity as usize {
            // Terminate every child, then itself with reason `shutdown`.
            self.terminate(Member::Group(g));
            match self.groups[g].parent {
                None => self.exit = Some(EXIT_GAVE_UP),
                Some(p) => self.child_exit(p, Member::Group(g), true),
            }
            return;
        }
        if let Member::Daemon(i) = m {
            self.daemons[i].restarts += 1;
        }
        let children = self.groups[g].children.clone();
        let pos = children.iter().position(|&c| c == m).expect("a child");
        let from = match self.groups[g].strategy {
            Strategy::OneForOne => return self.start(m),
            Strategy::OneForAll => 0,
            Strategy::RestForOne => pos + 1,
        };
        let kind = |s: &Model, c: Member| match c {
            Member::Daemon(i) => s.daemons[i].restart,
            Member::Group(h) => s.groups[h].restart,
        };
        let again: Vec<usize> = (from..children.len())
            .filter(|&p| {
                p != pos
                    && self.alive(children[p])
                    && kind(self, children[p]) != RestartType::Temporary
            })
            .collect();
        for p in (from..children.len()).rev() {
            if p != pos && self.alive(children[p]) {
                self.terminate(children[p]);
            }
        }
        for (p, &c) in children.iter().enumerate() {
            if p == pos || again.contains(&p) {
                self.start(c);
            }
        }
    }
}

impl Model {
    /// `do_auto_shutdown/2` of supervisor `g` after its child `m` ended
    /// for good: a significant child ends `g` (`any_significant`), or the
    /// last significant one alive does (`all_significant`). `g` terminates
    /// its children and exits `shutdown`; the top ends the tree (exit 0).
    fn auto_shutdown(&mut self, g: usize, m: Member) {
        let significant = |s: &Model, c: Member| match c {
            Member::Daemon(i) => s.daemons[i].significant,
            Member::Group(h) => s.groups[h].significant,
        };
        if !significant(self, m) {
            return;
        }
        let ends = match self.groups[g].auto_shutdown {
            AutoShutdown::Never => false,
            AutoShutdown::AnySignificant => true,
            AutoShutdown::AllSignificant => !self.groups[g]
                .children
                .iter()
                .any(|&c| significant(self, c) && self.alive(c)),
        };
        if !ends {
            return;
        }
        self.terminate(Member::Group(g));
        match self.groups[g].parent {
            None => self.exit = Some(EXIT_OK),
            Some(p) => self.child_exit(p, Member::Group(g), true),
        }
    }
}

fn groups_parent(config: &Config, g: usize) -> Option<usize> {
    if g == 0 {
        return None;
    }
    let parent = config.groups[g - 1].parent.as_deref();
    Some(parent.map_or(0, |p| {
        config
            .groups
            .iter()
            .position(|x| x.name == p)
            .map_or(0, |k| k + 1)
    }))
}

const STRATEGIES: [&str; 3] = ["one_for_one", "one_for_all", "rest_for_one"];
const RESTARTS: [&str; 3] = ["permanent", "transient", "temporary"];

const AUTO_SHUTDOWNS: [&str; 3] = ["never", "any_significant", "all_significant"];

/// A supervisor's keys: strategy, intensity 0..=3, period 1..=5 s (and
/// `auto_shutdown`, chosen by [`tree`]).
fn sup_keys() -> impl Gen<Value = String> {
    (0..3usize, 0..4u32, 1..6u32).prop_map(|(s, i, p)| {
        format!(
            "strategy = \"{}\"\nintensity = {i}\nperiod = \"{p}s\"\n",
            STRATEGIES[s]
        )
    })
}

/// A config of up to 3 groups (each under the top or an earlier group) and
/// 1 to 6 daemons, with random strategies, intensities, restart types and
/// `auto_shutdown`s; a child is `significant` at random where `check`
/// allows it (not permanent, under a supervisor that shuts down), and a
/// supervisor keeps its `auto_shutdown` only with a significant child.
fn tree() -> impl Gen<Value = String> {
    let child = (any::<prop::sample::Index>(), 0..3usize, any::<bool>());
    (
        (sup_keys(), 0..3usize),
        prop::collection::vec(((sup_keys(), 0..3usize), child.clone()), 0..4),
        prop::collection::vec(child, 1..7),
    )
        .prop_map(|((top, top_auto), groups, daemons)| {
            let autos: Vec<usize> = std::iter::once(top_auto)
                .chain(groups.iter().map(|((_, a), _)| *a))
                .collect();
            // Each child: its supervisor (0 the top, k + 1 group k), restart
            // type, and whether it is significant.
            let place = |(parent, restart, sig): &(prop::sample::Index, usize, bool), n: usize| {
                let sup = parent.index(n);
                (sup, *restart, *sig && *restart != 0 && autos[sup] != 0)
            };
            let gs: Vec<_> = groups
                .iter()
                .enumerate()
                .map(|(k, (_, c))| place(c, k + 1))
                .collect();
            let ds: Vec<_> = daemons
                .iter()
                .map(|c| place(c, groups.len() + 1))
                .collect();
            let auto = |g: usize| {
                let any = gs.iter().chain(&ds).any(|&(sup, _, sig)| sup == g && sig);
                AUTO_SHUTDOWNS[if any { autos[g] } else { 0 }]
            };
            let name = |sup: usize| match sup {
                0 => "root".to_owned(),
                j => format!("g{}", j - 1),
            };
            let mut s = format!("[supervisor]\n{top}auto_shutdown = \"{}\"\n\n", auto(0));
            for (k, ((keys, _), _)) in groups.iter().enumerate() {
                let (sup, restart, sig) = gs[k];
                let _ = write!(
                    s,
                    "[[group]]\nname = \"g{k}\"\nparent = \"{}\"\nrestart = \"{}\"\nsignificant = {sig}\n{keys}auto_shutdown = \"{}\"\n\n",
                    name(sup),
                    RESTARTS[restart],
                    auto(k + 1)
                );
            }
            for (k, &(sup, restart, sig)) in ds.iter().enumerate() {
                let _ = write!(
                    s,
                    "[[daemon]]\nname = \"d{k}\"\nkind = \"idle\"\ngroup = \"{}\"\nrestart = \"{}\"\nsignificant = {sig}\n",
                    name(sup),
                    RESTARTS[restart]
                );
            }
            s
        })
}

/// What happens next: a running daemon (chosen among those up) crashes or
/// exits with code 0, or time passes.
#[derive(Debug, Clone)]
enum Step {
    Crash(prop::sample::Index),
    Exit0(prop::sample::Index),
    Wait(u64),
}

fn step() -> impl Gen<Value = Step> {
    prop_oneof![
        4 => any::<prop::sample::Index>().prop_map(Step::Crash),
        1 => any::<prop::sample::Index>().prop_map(Step::Exit0),
        2 => (1..4000u64).prop_map(Step::Wait),
    ]
}

fn check(w: &World, m: &Model, history: &str) {
    for (i, d) in m.daemons.iter().enumerate() {
        let state = w.sup.daemon_state(i);
        assert_eq!(
            d.alive,
            state == DState::Running,
            "d{i}: model alive {}, table {state:?}\n{history}",
            d.alive
        );
        assert_eq!(
            d.restarts,
            w.sup.daemon_restarts(i),
            "d{i}: restarts\n{history}"
        );
    }
    for (g, grp) in m.groups.iter().enumerate() {
        let state = &w.sup.groups()[g].state;
        assert_eq!(
            grp.alive,
            *state == GState::Running,
            "group {g}: model alive {}, table {state:?}\n{history}",
            grp.alive
        );
    }
    assert_eq!(m.exit, w.sup.shutting_down(), "exit decision\n{history}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_table_supervises_as_otps_supervisor_does(
        config in tree(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let mut w = World::new(&config);
        let parsed = Config::parse(&config, "test.toml", &kinds()).expect("a valid config");
        let mut m = Model::new(&parsed, w.now);
        w.feed(Event::StartAll);
        m.start(Member::Group(TOP));
        let mut history = format!("{config}\n");
        check(&w, &m, &history);
        for s in steps {
            if m.exit.is_some() {
                break;
            }
            let up: Vec<usize> = (0..m.daemons.len()).filter(|&i| m.daemons[i].alive).collect();
            match s {
                Step::Crash(k) | Step::Exit0(k) if !up.is_empty() => {
                    let i = up[k.index(up.len())];
                    let normal = matches!(s, Step::Exit0(_));
                    let _ = writeln!(history, "d{i} {}", if normal { "exits 0" } else { "crashes" });
                    w.feed(Event::Exit { daemon: i, normal, uptime: Duration::from_millis(1) });
                    m.exit(i, normal);
                }
                Step::Crash(_) | Step::Exit0(_) => continue,
                Step::Wait(ms) => {
                    let _ = writeln!(history, "{ms} ms pass");
                    w.advance(Duration::from_millis(ms));
                    m.now = w.now;
                }
            }
            check(&w, &m, &history);
        }
    }
}
