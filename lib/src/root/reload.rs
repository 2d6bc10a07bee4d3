//! Reload (`ctl reload`, SIGHUP): the file the root was started with, read
//! again, checked whole, compared with the running tree by daemon name, and
//! carried out step by step from the poll loop (`DESIGN.md` §10).
//!
//! A file with any problem changes nothing: its problems go to the log and
//! to `ctl reload`. Otherwise the plan runs in this order, each step after
//! the one before it is done: removed daemons stop in reverse file order
//! and leave the tree; changed daemons stop, take their new settings (and
//! a new region if theirs no longer fits) and start again; added daemons
//! join their group where the file puts them and start if it runs.
//! Unchanged daemons are not touched: same process, same region.

use std::collections::VecDeque;

use tracing::{error, info, warn};

use super::supervisor::{group_index, Event};
use super::{Child, Mode, Root};
use crate::config::{Config, DaemonConfig, Problem, Program};
use crate::control::proto::{Failure, FailureKind, ReloadReply};
use crate::mailbox::Shape;
use crate::region::{page_round, RegionSpec, SYSTEM_SIZE};

/// What a reload does, worked out before anything changes.
#[derive(Debug, Default)]
struct Plan {
    /// Daemons of the new file the tree does not have (index in the file).
    added: Vec<usize>,
    /// Daemons the new file does not name (index in the tree).
    removed: Vec<usize>,
    /// (index in the tree, index in the file, the keys that differ).
    changed: Vec<(usize, usize, Vec<&'static str>)>,
    /// Index in the tree.
    unchanged: Vec<usize>,
    /// Supervisor settings that change in place.
    settings: Vec<String>,
}

/// One step of a reload.
#[derive(Debug)]
enum Op {
    /// Stop daemon `i`, then take it out of the tree.
    Remove(usize),
    /// Stop daemon `i`, give it `cfg`, start it again if it was up.
    Change(usize, Box<DaemonConfig>),
    /// A new daemon joins the tree.
    Add(Box<DaemonConfig>),
}

/// What follows once the daemon a step stopped is down.
#[derive(Debug)]
enum After {
    Retire,
    Apply {
        cfg: Box<DaemonConfig>,
        restart: bool,
    },
}

/// A reload being carried out.
#[derive(Debug)]
pub(super) struct Reloading {
    /// The steps not begun yet.
    ops: VecDeque<Op>,
    /// The step waiting for its daemon (and its standby) to be down.
    waiting: Option<(usize, After)>,
}

/// The keys of a daemon's entry that differ between `a` and `b`.
fn changed_keys(a: &DaemonConfig, b: &DaemonConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    match (&a.program, &b.program) {
        (Program::Builtin(x), Program::Builtin(y)) if x == y => {}
        (Program::Exec(x), Program::Exec(y)) if x == y => {}
        (_, Program::Builtin(_)) => keys.push("kind"),
        (_, Program::Exec(_)) => keys.push("exec"),
    }
    let mut differ = |key, same: bool| {
        if !same {
            keys.push(key);
        }
    };
    differ("memory", a.memory == b.memory);
    differ("restart", a.restart == b.restart);
    differ("on_restart", a.on_restart == b.on_restart);
    differ("watchdog", a.watchdog == b.watchdog);
    differ("standby", a.standby == b.standby);
    differ("links", a.links == b.links);
    differ("backoff", a.backoff == b.backoff);
    differ("args", a.args == b.args);
    if keys.is_empty() && a != b {
        // A key this list does not name yet: still a change.
        keys.push("settings");
    }
    keys
}

/// The settings of `old` that cannot change while the root runs and differ
/// in `new`, as problems; returns whether the groups are the same.
fn fixed_settings(old: &Config, new: &Config, problems: &mut Vec<Problem>) -> bool {
    let mut fixed = |place: &str, what: &str, same: bool| {
        if !same {
            problems.push(Problem {
                place: place.into(),
                message: format!(
                    "{what} cannot change while the root runs; restart the root to change it"
                ),
            });
        }
    };
    fixed(
        "root.control",
        "the control socket (bound at start)",
        old.root.control == new.root.control,
    );
    fixed(
        "root.control_group",
        "the control socket's group (set when it is created)",
        old.root.control_group == new.root.control_group,
    );
    fixed(
        "root.state_dir",
        "the state directory (locked, and holding the regions, from start)",
        old.root.state_dir == new.root.state_dir,
    );
    fixed(
        "supervisor.spare_mailboxes",
        "the mailboxes reserved for added daemons (laid out at start)",
        old.spare_mailboxes == new.spare_mailboxes,
    );
    let same_groups = old.groups.len() == new.groups.len()
        && old
            .groups
            .iter()
            .zip(&new.groups)
            .all(|(a, b)| a.name == b.name && a.parent == b.parent);
    fixed(
        "group",
        "the set of [[group]]s (their names, order and parents)",
        same_groups,
    );
    same_groups
}

/// The supervisor settings that change in place (the groups' only when
/// the groups are the same).
fn changed_settings(old: &Config, new: &Config, same_groups: bool) -> Vec<String> {
    let mut settings = Vec::new();
    if old.root.stop_timeout != new.root.stop_timeout {
        settings.push("root.stop_timeout".into());
    }
    if old.root.zygote != new.root.zygote {
        settings.push("root.zygote".into());
    }
    if old.supervisor != new.supervisor {
        settings.push("supervisor".into());
    }
    if same_groups {
        for (k, (a, b)) in old.groups.iter().zip(&new.groups).enumerate() {
            if a != b {
                settings.push(format!("group[{k}] ({})", b.name));
            }
        }
    }
    settings
}

/// Every daemon's links, resolved to indices and made symmetric; `None`
/// marks an index no longer in the tree (it links to nothing).
pub(super) fn resolve_links(daemons: &[Option<&DaemonConfig>]) -> Vec<Vec<usize>> {
    let index = |name: &str| {
        daemons
            .iter()
            .position(|d| d.is_some_and(|d| d.name == name))
    };
    let mut links = vec![Vec::new(); daemons.len()];
    for (i, d) in daemons.iter().enumerate() {
        for other in d.map(|d| d.links.as_slice()).unwrap_or_default() {
            // The config checked that every link names a daemon.
            if let Some(j) = index(other) {
                if !links[i].contains(&j) {
                    links[i].push(j);
                }
                if !links[j].contains(&i) {
                    links[j].push(i);
                }
            }
        }
    }
    links
}

impl Root<'_> {
    /// `ctl reload [--dry-run]`, SIGHUP: reads the file again and, unless
    /// `dry_run`, begins carrying out its plan. Every refusal is logged.
    pub(super) fn reload(&mut self, dry_run: bool) -> Result<ReloadReply, Failure> {
        let refuse = |message: String| {
            warn!("reload refused: {message}");
            Err(Failure::new(FailureKind::Failed, message))
        };
        let Some(path) = self.config_path.clone() else {
            return refuse(
                "the root runs the built-in demo tree (started without --config): there is no file to read again"
                    .into(),
            );
        };
        if self.mode != Mode::Supervising {
            return refuse("the root is shutting down".into());
        }
        if self.reloading.is_some() {
            return refuse(
                "the previous reload is still being carried out; try again once it is done".into(),
            );
        }
        let file = path.display().to_string();
        let loaded = crate::config::load(&path, self.registry).and_then(|new| {
            let plan = self.plan(&new)?;
            Ok((new, plan))
        });
        let (new, plan) = match loaded {
            Ok(loaded) => loaded,
            Err(problems) => {
                for p in &problems {
                    error!(file = %file, "{p}");
                }
                let n = problems.len();
                let s = if n == 1 { "" } else { "s" };
                error!(file = %file, "reload rejected: {n} problem{s}; the running tree is unchanged");
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                return Err(Failure::new(
                    FailureKind::Failed,
                    format!(
                        "{n} problem{s} in {file}; nothing changed:\n{}",
                        list.join("\n")
                    ),
                ));
            }
        };
        let reply = self.reply(file, &new, &plan, !dry_run);
        let changed: Vec<&str> = reply.changed.iter().map(|(n, _)| n.as_str()).collect();
        if dry_run {
            info!(file = %reply.file, added = ?reply.added, removed = ?reply.removed, changed = ?changed, "reload dry run: nothing changed");
            return Ok(reply);
        }
        info!(file = %reply.file, added = ?reply.added, removed = ?reply.removed, changed = ?changed, settings = ?reply.settings, "reloading");
        self.manager.reloading();
        self.apply(new, plan);
        Ok(reply)
    }

    /// Compares `new` with the running tree. Settings that cannot change
    /// while the root runs are problems, as a bad file's are.
    fn plan(&self, new: &Config) -> Result<Plan, Vec<Problem>> {
        let known: Vec<&str> = self.registry.kinds().iter().map(|k| k.name).collect();
        let mut problems = new.check_kinds(&known);
        let same_groups = fixed_settings(&self.config, new, &mut problems);
        let mut plan = Plan {
            settings: changed_settings(&self.config, new, same_groups),
            ..Plan::default()
        };
        self.compare_daemons(new, &mut plan, &mut problems);
        self.check_added(new, &plan.added, &mut problems);
        if problems.is_empty() {
            Ok(plan)
        } else {
            Err(problems)
        }
    }

    /// Sorts the daemons of the tree into the plan's removed, changed and
    /// unchanged ones, and those of `new` it does not have into added; a
    /// daemon moved to another group, or whose sockets change, is a
    /// problem.
    fn compare_daemons(&self, new: &Config, plan: &mut Plan, problems: &mut Vec<Problem>) {
        for (i, c) in self.children.iter().enumerate().filter(|(_, c)| !c.removed) {
            let Some(k) = new.daemons.iter().position(|d| d.name == c.cfg.name) else {
                plan.removed.push(i);
                continue;
            };
            let d = &new.daemons[k];
            if d.group != c.cfg.group {
                let name = |g: &Option<String>| g.clone().unwrap_or_else(|| "root".into());
                problems.push(Problem {
                    place: format!("daemon[{k}].group"),
                    message: format!(
                        "moving {:?} from group {:?} to {:?} is not supported while the root runs; remove it in one reload and add it back in the next",
                        d.name,
                        name(&c.cfg.group),
                        name(&d.group)
                    ),
                });
            }
            if d.listen != c.cfg.listen {
                problems.push(Problem {
                    place: format!("daemon[{k}].listen"),
                    message: "the sockets the root holds are bound at start and cannot change while the root runs; restart the root to change them".into(),
                });
            }
            if (d.mailbox, d.mailbox_message) != (c.cfg.mailbox, c.cfg.mailbox_message) {
                problems.push(Problem {
                    place: format!("daemon[{k}].mailbox"),
                    message: "a mailbox is laid out in the root's shared memory at start (or when a reload adds its daemon): its size cannot change while the root runs; restart the root to change it".into(),
                });
            }
            if d.limits != c.cfg.limits {
                problems.push(Problem {
                    place: format!("daemon[{k}]"),
                    message: "cgroup limits (memory_max, pids_max, cpu_weight) are written when the daemon's cgroup is made and cannot change while the root runs; restart the root to change them".into(),
                });
            }
            let keys = changed_keys(&c.cfg, d);
            if keys.is_empty() {
                plan.unchanged.push(i);
            } else {
                plan.changed.push((i, k, keys));
            }
        }
        plan.added = (0..new.daemons.len())
            .filter(|&k| self.live_index(&new.daemons[k].name).is_none())
            .collect();
    }

    /// Daemons `added` (indices in `new`) may join: no `listen`, and a
    /// spare mailbox for each.
    fn check_added(&self, new: &Config, added: &[usize], problems: &mut Vec<Problem>) {
        for (n, &k) in added.iter().enumerate() {
            let d = &new.daemons[k];
            if !d.listen.is_empty() {
                problems.push(Problem {
                    place: format!("daemon[{k}].listen"),
                    message: "the sockets the root holds are bound at start: a daemon a reload adds cannot have listen; restart the root".into(),
                });
            }
            if let Some(Err(e)) = self.contain.as_ref().map(|c| c.can_limit(d)) {
                problems.push(Problem {
                    place: format!("daemon[{k}]"),
                    message: format!("{:?} cannot be added: {e}", d.name),
                });
            }
            // Added daemons take the next indices, in this order: each
            // needs the spare mailbox of its index.
            if let Err(e) = self.post.can_add(self.children.len() + n, &Shape::of(d)) {
                problems.push(Problem {
                    place: format!("daemon[{k}]"),
                    message: format!("{:?} cannot be added: {e}", d.name),
                });
            }
        }
    }

    /// The plan as `ctl reload` shows it, by name.
    fn reply(&self, file: String, new: &Config, plan: &Plan, applied: bool) -> ReloadReply {
        let name = |i: usize| self.children[i].cfg.name.clone();
        ReloadReply {
            file,
            applied,
            added: plan
                .added
                .iter()
                .map(|&k| new.daemons[k].name.clone())
                .collect(),
            removed: plan.removed.iter().map(|&i| name(i)).collect(),
            changed: plan
                .changed
                .iter()
                .map(|(i, _, keys)| (name(*i), keys.iter().map(|k| (*k).to_owned()).collect()))
                .collect(),
            unchanged: plan.unchanged.iter().map(|&i| name(i)).collect(),
            settings: plan.settings.clone(),
        }
    }

    /// Begins carrying out `plan`: the settings change at once, the steps
    /// one after another from the loop.
    fn apply(&mut self, new: Config, plan: Plan) {
        let mut ops = VecDeque::new();
        for &i in plan.removed.iter().rev() {
            ops.push_back(Op::Remove(i));
        }
        for (i, k, _) in plan.changed {
            ops.push_back(Op::Change(i, Box::new(new.daemons[k].clone())));
        }
        for k in plan.added {
            ops.push_back(Op::Add(Box::new(new.daemons[k].clone())));
        }
        self.sup.set_settings(&new);
        self.config = new;
        self.reloading = Some(Reloading { ops, waiting: None });
        self.advance_reload();
    }

    /// Moves the reload on as far as it can go now: a step whose daemon is
    /// down is finished, and the next one begun. Called from the loop.
    pub(super) fn advance_reload(&mut self) {
        loop {
            let Some(r) = self.reloading.as_mut() else {
                return;
            };
            if self.mode != Mode::Supervising {
                warn!("reload abandoned: the root is shutting down");
                self.reloading = None;
                return;
            }
            if let Some((i, _)) = r.waiting {
                let c = &self.children[i];
                if c.state.has_process() || c.standby.is_some() {
                    return;
                }
                if let Some((i, after)) = r.waiting.take() {
                    self.finish(i, after);
                }
                continue;
            }
            let Some(op) = r.ops.pop_front() else {
                self.reloading = None;
                info!("reload done");
                return;
            };
            let waiting = self.begin(op);
            if let Some(r) = self.reloading.as_mut() {
                r.waiting = waiting;
            }
        }
    }

    /// Begins one step; returns what to do once its daemon is down.
    fn begin(&mut self, op: Op) -> Option<(usize, After)> {
        match op {
            Op::Remove(i) => {
                info!(daemon = %self.names[i], "reload: removed from the file; stopping");
                self.kill_standby(i);
                self.step(Event::Stop(i));
                Some((i, After::Retire))
            }
            Op::Change(i, cfg) => {
                // Up, or on its way up: it comes back with its new settings.
                let restart = self.sup.wants_up(i);
                info!(daemon = %self.names[i], restart, "reload: settings changed; stopping");
                self.kill_standby(i);
                self.step(Event::Stop(i));
                Some((i, After::Apply { cfg, restart }))
            }
            Op::Add(cfg) => {
                self.add_daemon(*cfg);
                None
            }
        }
    }

    /// Finishes a step whose daemon `i` is down.
    fn finish(&mut self, i: usize, after: After) {
        self.drop_zygote();
        match after {
            After::Retire => {
                self.sup.retire(i);
                self.regions.release(i);
                self.post.retire(i);
                self.children[i].removed = true;
                self.relink();
                info!(daemon = %self.names[i], "reload: removed");
                // Daemons forked from now on do not find it among their
                // siblings (a name is never empty).
                self.names[i].clear();
            }
            After::Apply { cfg, restart } => {
                if !self.fit_region(i, &cfg) {
                    return;
                }
                self.sup.update(i, &cfg);
                let c = &mut self.children[i];
                c.title = Child::title(&cfg.name);
                c.cfg = *cfg;
                self.relink();
                info!(daemon = %self.names[i], "reload: new settings");
                if restart {
                    self.step(Event::Reload(i));
                }
            }
        }
    }

    /// Keeps daemon `i`'s region if `cfg` still fits it (the same size, and
    /// a file of its own for an exec'd program), else maps a new one.
    /// Returns false, with the daemon left stopped on its old settings, if
    /// that fails.
    fn fit_region(&mut self, i: usize, cfg: &DaemonConfig) -> bool {
        let old = &self.children[i].cfg;
        let own_file = matches!(cfg.program, Program::Exec(_));
        // A size past the address space fits no region there is.
        let size = usize::try_from(page_round(cfg.memory))
            .map_or(usize::MAX, |user| user.saturating_add(SYSTEM_SIZE));
        if size == self.regions.region_len(i) && own_file == matches!(old.program, Program::Exec(_))
        {
            return true;
        }
        let state_dir = self.config.root.state_dir.clone();
        let kept = if state_dir.is_some() && !own_file {
            "its state_dir file is resized and keeps what fits"
        } else {
            "it starts from an empty region; the old one is released"
        };
        warn!(daemon = %cfg.name, was = old.memory, now = cfg.memory, "reload: the region no longer fits the new settings: {kept}");
        let spec = RegionSpec {
            name: &cfg.name,
            user: cfg.memory,
            own_file,
        };
        match self.regions.replace(i, &spec, state_dir.as_deref()) {
            Ok(()) => true,
            Err(e) => {
                error!(daemon = %cfg.name, error = %e, "reload: cannot map a new region; the daemon stays stopped on its old settings");
                false
            }
        }
    }

    /// A daemon new in the file joins its group, after the nearest daemon
    /// before it in the file that is in the tree (else before the nearest
    /// after it), with a region of its own; it starts if its group runs.
    fn add_daemon(&mut self, cfg: DaemonConfig) {
        self.drop_zygote();
        let g = group_index(&self.config, cfg.group.as_deref());
        let k = self.config.daemons.iter().position(|d| d.name == cfg.name);
        let (before, after) = self.config.daemons.split_at(k.unwrap_or(0));
        let sibling = |d: &&DaemonConfig| group_index(&self.config, d.group.as_deref()) == g;
        let pos = before
            .iter()
            .rev()
            .filter(sibling)
            .find_map(|d| self.live_index(&d.name))
            .map(|j| self.sup.daemon_pos(j) + 1)
            .or_else(|| {
                after
                    .iter()
                    .skip(1)
                    .filter(sibling)
                    .find_map(|d| self.live_index(&d.name))
                    .map(|j| self.sup.daemon_pos(j))
            })
            .unwrap_or(usize::MAX);
        let spec = RegionSpec {
            name: &cfg.name,
            user: cfg.memory,
            own_file: matches!(cfg.program, Program::Exec(_)),
        };
        let i = self.children.len();
        let out = match super::output::Output::watched(
            &cfg.name,
            super::output::Sink::detect(),
            &self.epoll,
            i,
        ) {
            Ok(out) => out,
            Err(e) => {
                error!(daemon = %cfg.name, error = %e, "reload: cannot make the new daemon's output pipes; not added");
                return;
            }
        };
        let state_dir = self.config.root.state_dir.clone();
        if let Err(e) = self.regions.add(&spec, state_dir.as_deref()) {
            error!(daemon = %cfg.name, error = %e, "reload: cannot map a region for the new daemon; not added");
            return;
        }
        // Its mailbox (the plan checked that its spare one is there) and
        // its cgroup, as every daemon has.
        let joined = match self.post.add(i, &Shape::of(&cfg)) {
            Ok(()) => self
                .contain
                .as_mut()
                .map_or(Ok(()), |c| c.add(i, &cfg))
                .map_err(|e| format!("cannot make its cgroup: {e}")),
            Err(e) => Err(e.to_string()),
        };
        if joined.is_err() {
            // The index is taken either way: the cgroups stay in step with
            // the daemons' indices, so the next add finds its own.
            if let Some(c) = self.contain.as_mut() {
                c.skip(i, &cfg);
            }
        }
        let i = self.sup.add(&cfg, g, pos);
        debug_assert_eq!(i, self.children.len());
        debug_assert_eq!(self.regions.len(), i + 1);
        self.names.push(cfg.name.clone());
        self.children.push(Child::new(cfg));
        self.outputs.push(out);
        if let Err(e) = joined {
            // Its index is taken (region, slot): it leaves the tree at
            // once, never started, as a removed daemon does.
            error!(daemon = %self.names[i], error = %e, "reload: not added");
            self.sup.retire(i);
            self.regions.release(i);
            self.post.retire(i);
            self.children[i].removed = true;
            self.names[i].clear();
            return;
        }
        self.relink();
        info!(daemon = %self.names[i], "reload: added");
        if self.sup.group_up(g) {
            self.step(Event::Reload(i));
        }
    }

    /// The index of the daemon named `name` in the tree (not removed).
    pub(super) fn live_index(&self, name: &str) -> Option<usize> {
        (0..self.children.len())
            .find(|&i| !self.children[i].removed && self.children[i].cfg.name == name)
    }

    /// The supervisor's links, from the daemons in the tree now.
    fn relink(&mut self) {
        let daemons: Vec<Option<&DaemonConfig>> = self
            .children
            .iter()
            .map(|c| (!c.removed).then_some(&c.cfg))
            .collect();
        let links = resolve_links(&daemons);
        self.sup.relink(&links);
    }
}
