//! The settings of an exec'd program (`user`, `unix_group`, `cwd`, `umask`,
//! `env`, `env_clear`, `rlimits`, `no_new_privs`, `stdin`), and the program
//! itself, resolved through `PATH` as systemd does: everything that can be
//! known before a fork is checked at load time, so a typo is a config
//! error (exit 78), not a crash loop.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{at, closest, Checker};
use crate::config::{ExecSettings, Program, Rlimit};
use crate::sys::setup::{self, RLIMITS};

/// The keys that only an exec'd program takes.
pub(super) const EXEC_ONLY: &[&str] = &[
    "user",
    "unix_group",
    "cwd",
    "umask",
    "env",
    "env_clear",
    "rlimits",
    "no_new_privs",
    "stdin",
];

/// `PATH` when the root has none (systemd's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Checker<'_> {
    /// The exec settings of daemon table `t`, for an exec'd `program`;
    /// for a built-in kind, a problem for each exec-only key given.
    pub(super) fn exec_settings(
        &mut self,
        t: &Table,
        place: &str,
        program: Option<&Program>,
    ) -> Option<ExecSettings> {
        let argv = match program {
            Some(Program::Exec(argv)) => argv,
            Some(Program::Builtin(_)) => {
                for key in EXEC_ONLY.iter().filter(|k| t.contains_key(**k)) {
                    self.problem(
                        &at(place, key),
                        "only an exec'd program takes this (a built-in kind runs inside the root's binary)",
                    );
                }
                return None;
            }
            None => return None,
        };
        let path = self.resolve_program(&argv[0], &format!("{place}.exec[0]"));
        let user = self
            .string(t, place, "user")
            .and_then(|name| match setup::user_by_name(name) {
                Ok(Some(u)) => Some((name, u)),
                Ok(None) => {
                    self.problem(
                        &at(place, "user"),
                        format!("no user named {name:?} on this host"),
                    );
                    None
                }
                Err(e) => {
                    let msg = format!("cannot look up user {name:?}: {e}");
                    self.problem(&at(place, "user"), msg);
                    None
                }
            });
        let group = self.group_id(t, place, "unix_group");
        // With a user: its groups (as a login would have them); with only
        // a group: none, so nothing of the root's stays.
        let groups = match user {
            Some((name, u)) => match setup::group_list(name, group.unwrap_or(u.gid)) {
                Ok(list) => Some(list),
                Err(e) => {
                    let msg = format!("cannot list the groups of {name:?}: {e}");
                    self.problem(&at(place, "user"), msg);
                    None
                }
            },
            None => group.map(|_| Vec::new()),
        };
        let cwd = self.path(t, place, "cwd");
        if let Some(dir) = &cwd {
            if !dir.is_absolute() {
                self.problem(&at(place, "cwd"), "not an absolute path");
            } else if !dir.is_dir() {
                self.problem(
                    &at(place, "cwd"),
                    format!("{} is not a directory on this host", dir.display()),
                );
            }
        }
        let stdin = self.path(t, place, "stdin");
        if let Some(file) = &stdin {
            if let Err(e) = std::fs::File::open(file) {
                let msg = format!("cannot open {} for reading: {e}", file.display());
                self.problem(&at(place, "stdin"), msg);
            }
        }
        Some(ExecSettings {
            path: path.unwrap_or_default(),
            user: user.map(|(name, u)| (name.to_owned(), u.uid)),
            gid: group.or(user.map(|(_, u)| u.gid)),
            groups,
            cwd,
            umask: self.umask(t, place),
            env: self.env(t, place),
            env_clear: self.boolean(t, place, "env_clear").unwrap_or(false),
            rlimits: self.rlimits(t, place),
            no_new_privs: self.boolean(t, place, "no_new_privs").unwrap_or(false),
            stdin: stdin.unwrap_or_else(|| PathBuf::from("/dev/null")),
        })
    }

    /// `exec[0]` itself if it names a path (has a `/`), else the first
    /// executable file of that name in `PATH`; either way an existing
    /// executable regular file.
    fn resolve_program(&mut self, program: &str, place: &str) -> Option<PathBuf> {
        if program.contains('/') {
            let path = Path::new(program);
            return match executable(path) {
                Ok(()) => Some(path.to_owned()),
                Err(why) => {
                    self.problem(place, format!("{program}: {why}"));
                    None
                }
            };
        }
        let var = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        let found = std::env::split_paths(&var)
            .map(|dir| dir.join(program))
            .find(|p| p.is_absolute() && executable(p).is_ok());
        if found.is_none() {
            let shown = var.to_string_lossy();
            self.problem(
                place,
                format!(
                    "{program:?} is not an executable file in PATH ({shown}); give its full path"
                ),
            );
        }
        found
    }

    fn umask(&mut self, t: &Table, place: &str) -> Option<u32> {
        let here = at(place, "umask");
        let mask = match t.get("umask")? {
            Value::String(s) => u32::from_str_radix(s, 8).ok(),
            Value::Integer(n) => u32::try_from(*n).ok(),
            other => {
                self.type_problem(&here, "an octal string such as \"0027\"", other);
                return None;
            }
        };
        match mask {
            Some(m) if m <= 0o777 => Some(m),
            _ => {
                let shown = t.get("umask").map(ToString::to_string).unwrap_or_default();
                self.problem(
                    &here,
                    format!("{shown} is not a mask (use \"0000\" to \"0777\", in octal)"),
                );
                None
            }
        }
    }

    fn env(&mut self, t: &Table, place: &str) -> Vec<(String, String)> {
        let here = at(place, "env");
        let table = match t.get("env") {
            None => return Vec::new(),
            Some(Value::Table(table)) => table,
            Some(other) => {
                self.type_problem(&here, "a table of strings, written [daemon.env]", other);
                return Vec::new();
            }
        };
        let mut env = Vec::with_capacity(table.len());
        for (k, v) in table {
            let place = at(&here, k);
            if k.is_empty() || k.contains(['=', '\0']) {
                self.problem(
                    &place,
                    "a variable's name must be non-empty, without = or NUL",
                );
                continue;
            }
            if crate::handoff::SET_BY_ROOT.contains(&k.as_str()) {
                self.problem(
                    &place,
                    "forkroot sets this variable itself (from the daemon's settings); \
                     it cannot be given in env",
                );
                continue;
            }
            match v {
                Value::String(s) if s.contains('\0') => {
                    self.problem(&place, "contains a NUL character")
                }
                Value::String(s) => env.push((k.clone(), s.clone())),
                other => self.type_problem(&place, "a string", other),
            }
        }
        env
    }

    fn rlimits(&mut self, t: &Table, place: &str) -> Vec<(Rlimit, u64, u64)> {
        let here = at(place, "rlimits");
        let table = match t.get("rlimits") {
            None => return Vec::new(),
            Some(Value::Table(table)) => table,
            Some(other) => {
                self.type_problem(&here, "a table of limits, written [daemon.rlimits]", other);
                return Vec::new();
            }
        };
        let names: Vec<&str> = RLIMITS.iter().map(|(n, _)| *n).collect();
        let mut out = Vec::with_capacity(table.len());
        for (k, v) in table {
            let place = at(&here, k);
            let Some(&(name, resource)) = RLIMITS.iter().find(|(n, _)| n == k) else {
                let list = names.join(", ");
                let message = match closest(k, &names) {
                    Some(n) => format!("unknown limit, did you mean {n:?}? (limits: {list})"),
                    None => format!("unknown limit (limits: {list})"),
                };
                self.problem(&place, message);
                continue;
            };
            let one = |v: &Value| match v {
                Value::Integer(n) if *n >= 0 => Some(*n as u64),
                Value::String(s) if s == "infinity" => Some(u64::MAX),
                _ => None,
            };
            let pair = match v {
                Value::Array(a) if a.len() == 2 => one(&a[0]).zip(one(&a[1])),
                v => one(v).map(|n| (n, n)),
            };
            match pair {
                Some((soft, hard)) if soft <= hard => {
                    out.push((Rlimit { name, resource }, soft, hard))
                }
                Some(_) => self.problem(&place, "the soft limit is above the hard one"),
                None => self.problem(
                    &place,
                    format!(
                        "expected a number, \"infinity\", or [soft, hard], found {}",
                        super::describe(v)
                    ),
                ),
            }
        }
        out
    }
}

/// Whether `path` is a regular file someone may execute.
fn executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => Err(e.to_string()),
        Ok(m) if !m.is_file() => Err("not a regular file".to_owned()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err("not executable (no x permission)".to_owned())
        }
        Ok(_) => Ok(()),
    }
}
