//! The config contract: what parses, what every default is, and that a bad
//! file gets every problem with its place.

use std::time::Duration;

use forkroot::config::{
    self, check_name, format_duration, parse_duration, parse_signal, parse_size, AutoShutdown,
    Config, OnRestart, Problem, Program, RestartType, Strategy, Value,
};
use forkroot::{Context, Kind, Registry, Setting};

fn never(_: &mut Context<'_>) -> i32 {
    unreachable!("these tests parse configs; nothing runs")
}

const FLAKY: &[Setting] = &[
    Setting::duration("mean_life", "mean lifetime")
        .default_duration(Duration::from_secs(5))
        .between(Duration::from_millis(1), Duration::from_secs(3600)),
    Setting::signal("signal", "its death").default_signal(libc::SIGSEGV),
];
const COUNTER: &[Setting] = &[
    Setting::int("rate", "per second")
        .default_int(10)
        .range(1, 10_000_000),
    Setting::path("out", "file"),
    Setting::size("buffer", "bytes").default_size(4096),
    Setting::bool("sync", "fsync").default_bool(false),
];
const PROBE: &[Setting] = &[
    Setting::path("out", "file").required(),
    Setting::string("mode", "a or b")
        .default_str("a")
        .check(|v| match v {
            Value::Str("a" | "b") => Ok(()),
            other => Err(format!("{other} is not a mode (use a, b)")),
        }),
];

/// Kinds shaped like the built-in ones, with settings of every type.
fn kinds() -> Registry {
    let mut r = Registry::new();
    r.add(Kind::new("idle", "does nothing", never))
        .add(Kind::new("flaky", "dies", never).settings(FLAKY))
        .add(Kind::new("counter", "counts", never).settings(COUNTER))
        .add(Kind::new("probe", "reports", never).settings(PROBE));
    r
}

/// The example of the product contract, completed: the link target exists.
const FULL: &str = r#"
[root]
control = "/run/forkroot.sock"   # control socket
state_dir = "/var/lib/forkroot"
stop_timeout = "5s"

[supervisor]
strategy = "one_for_one"
intensity = 5
period = "10s"

[[group]]
name = "storage"
parent = "root"
strategy = "one_for_all"
intensity = 3
period = "5s"

[[daemon]]
name = "counter"
kind = "counter"
group = "storage"
memory = "1MiB"
restart = "permanent"
on_restart = "resume"
watchdog = "2s"
standby = false
links = ["other"]
[daemon.args]
rate = 1000
out = "/var/lib/counter.out"

[[daemon]]
name = "other"
exec = ["/bin/sh", "--flag"]
memory = "4MiB"
restart = "transient"
on_restart = "decide"
standby = false
backoff = "100ms"
backoff_max = "1m"
"#;

fn parse(text: &str) -> Config {
    match Config::parse(text, "test.toml", &kinds()) {
        Ok(config) => config,
        Err(problems) => panic!("unexpected problems: {problems:#?}"),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match Config::parse(text, "test.toml", &kinds()) {
        Ok(config) => panic!("expected problems, parsed {config:#?}"),
        Err(problems) => problems,
    }
}

fn places(text: &str) -> Vec<String> {
    problems(text).into_iter().map(|p| p.place).collect()
}

/// The one problem of `text`, as `place: message`.
fn one(text: &str) -> String {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    p[0].to_string()
}

fn daemon(extra: &str) -> String {
    format!("[[daemon]]\nname = \"d\"\nkind = \"idle\"\n{extra}\n")
}

#[test]
fn full_example_parses_to_its_values() {
    let c = parse(FULL);
    assert_eq!(
        c.root.control.as_deref(),
        Some("/run/forkroot.sock".as_ref())
    );
    assert_eq!(
        c.root.state_dir.as_deref(),
        Some("/var/lib/forkroot".as_ref())
    );
    assert_eq!(c.root.stop_timeout, Duration::from_secs(5));
    assert_eq!(c.supervisor.strategy, Strategy::OneForOne);
    assert_eq!(c.supervisor.intensity, 5);
    assert_eq!(c.supervisor.period, Duration::from_secs(10));

    assert_eq!(c.groups.len(), 1);
    let g = &c.groups[0];
    assert_eq!(g.name, "storage");
    assert_eq!(g.parent, None, "parent = \"root\" is the top supervisor");
    assert_eq!(g.supervisor.strategy, Strategy::OneForAll);
    assert_eq!(g.supervisor.intensity, 3);
    assert_eq!(g.supervisor.period, Duration::from_secs(5));

    assert_eq!(c.daemons.len(), 2);
    let d = &c.daemons[0];
    assert_eq!(d.name, "counter");
    assert_eq!(d.program, Program::Builtin("counter".into()));
    assert_eq!(d.group.as_deref(), Some("storage"));
    assert_eq!(d.memory, 1 << 20);
    assert_eq!(d.restart, RestartType::Permanent);
    assert_eq!(d.on_restart, OnRestart::Resume);
    assert_eq!(d.watchdog, Some(Duration::from_secs(2)));
    assert!(!d.standby);
    assert_eq!(d.links, ["other"]);
    assert_eq!(d.backoff.initial, Duration::ZERO);
    assert_eq!(d.backoff.max, Duration::from_secs(30));
    assert_eq!(d.args.get::<u64>("rate"), 1000);
    assert_eq!(
        d.args.get::<Option<&str>>("out"),
        Some("/var/lib/counter.out")
    );
    assert_eq!(d.args.get::<usize>("buffer"), 4096, "the default");

    let o = &c.daemons[1];
    assert_eq!(
        o.program,
        Program::Exec(vec!["/bin/sh".into(), "--flag".into()])
    );
    assert_eq!(o.group, None);
    assert_eq!(o.memory, 4 << 20);
    assert_eq!(o.restart, RestartType::Transient);
    assert_eq!(o.on_restart, OnRestart::Decide);
    assert_eq!(o.watchdog, None);
    assert!(!o.standby);
    assert!(o.links.is_empty());
    assert_eq!(o.backoff.initial, Duration::from_millis(100));
    assert_eq!(o.backoff.max, Duration::from_secs(60));
    assert!(o.args.settings().is_empty());

    assert_eq!(c.daemon("other"), Some(o));
    assert_eq!(c.group("storage"), Some(g));
    assert!(c.daemon("storage").is_none());
}

#[test]
fn defaults_are_applied() {
    let c = parse("[[daemon]]\nname = \"d\"\nkind = \"idle\"\n[[group]]\nname = \"g\"\n");
    assert_eq!(c.root.control, None);
    assert_eq!(c.root.state_dir, None);
    assert_eq!(c.root.stop_timeout, Duration::from_secs(5));
    assert!(c.root.zygote);
    for s in [&c.supervisor, &c.groups[0].supervisor] {
        assert_eq!(s.strategy, Strategy::OneForOne);
        assert_eq!(s.intensity, 5);
        assert_eq!(s.period, Duration::from_secs(10));
    }
    assert_eq!(c.groups[0].parent, None);
    let d = &c.daemons[0];
    assert_eq!(d.group, None);
    assert_eq!(d.memory, 1 << 20);
    assert_eq!(d.restart, RestartType::Permanent);
    assert_eq!(d.on_restart, OnRestart::Resume);
    assert_eq!(d.watchdog, None);
    assert!(!d.standby);
    assert!(d.links.is_empty());
    assert_eq!(d.backoff.initial, Duration::ZERO);
    assert_eq!(d.backoff.max, Duration::from_secs(30));
    assert!(d.args.settings().is_empty());
}

#[test]
fn a_long_backoff_without_a_cap_is_its_own_cap() {
    let c = parse(&daemon("backoff = \"2m\""));
    assert_eq!(c.daemons[0].backoff.initial, Duration::from_secs(120));
    assert_eq!(c.daemons[0].backoff.max, Duration::from_secs(120));
}

#[test]
fn every_mistake_is_reported_with_its_place() {
    let text = r#"
[root]
stop_timeout = 5
contrl = "/tmp/x.sock"
zygote = "yes"

[supervisor]
strategy = "one_for_none"
intensity = -1
period = "0s"
perod = "1s"

[[group]]
name = "storage"
parent = "nowhere"
intensity = "3"

[[group]]
name = "root"

[[daemon]]
name = "counter"
kind = "counter"
memory = "4 MB"
restart = "always"
on_restart = "resume"
watchdog = "0s"
links = ["counter", "ghost"]

[[daemon]]
name = "counter"
exec = []
memroy = "1MiB"
group = "nogroup"
standby = "yes"

[[daemon]]
name = "bad name"
kind = "idle"
exec = ["/bin/true"]
backoff = "10s"
backoff_max = "1s"
args = 3

[[daemon]]
kind = "idle"
memory = 0
"#;
    let got = places(text);
    let want = [
        "root.contrl",
        "root.stop_timeout",
        "root.zygote",
        "supervisor.perod",
        "supervisor.strategy",
        "supervisor.intensity",
        "supervisor.period",
        "group[0].parent",
        "group[0].intensity",
        "group[1].name",
        "daemon[0].memory",
        "daemon[0].restart",
        "daemon[0].watchdog",
        "daemon[0].links[0]",
        "daemon[0].links[1]",
        "daemon[1].memroy",
        "daemon[1].name",
        "daemon[1].exec",
        "daemon[1].group",
        "daemon[1].standby",
        "daemon[2].name",
        "daemon[2]",
        "daemon[2].backoff_max",
        "daemon[2].args",
        "daemon[3].name",
        "daemon[3].memory",
    ];
    assert_eq!(got, want, "problems: {:#?}", problems(text));
}

#[test]
fn messages_say_what_to_do() {
    let all = problems(
        r#"
[root]
contrl = "/tmp/x.sock"
[[daemon]]
name = "counter"
kind = "counter"
memory = "4 MB"
memroy = "1MiB"
"#,
    );
    let lines: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "root.contrl: unknown key, did you mean \"control\"? \
             (expected one of: control, control_group, state_dir, stop_timeout, zygote)",
            "daemon[0].memroy: unknown key, did you mean \"memory\"? (expected one of: \
             name, kind, exec, group, memory, restart, significant, on_restart, watchdog, standby, \
             links, listen, backoff, backoff_max, readiness, notify_fd, start_timeout, \
             trap_exits, mailbox, mailbox_message, args, memory_max, pids_max, cpu_weight, \
             user, unix_group, cwd, umask, env, env_clear, rlimits, no_new_privs, stdin)",
            "daemon[0].memory: \"4 MB\" is not a size: unknown unit \"MB\", \
             did you mean MiB? (use B, KiB, MiB, GiB)",
        ]
    );
}

#[test]
fn wrong_types_name_the_expected_type() {
    assert_eq!(
        one(&daemon("standby = \"yes\"")),
        "daemon[0].standby: expected true or false, found the string \"yes\""
    );
    assert_eq!(
        one(&daemon("on_restart = \"restore\"")),
        "daemon[0].on_restart: \"restore\" is not an on_restart policy (use fresh, resume, decide)"
    );
    assert_eq!(
        one(&daemon("restart = \"always\"")),
        "daemon[0].restart: \"always\" is not a restart type (use permanent, transient, temporary)"
    );
    assert_eq!(
        one(&daemon("restart = 1")),
        "daemon[0].restart: expected a string, found the integer 1"
    );
    assert_eq!(
        one(&daemon("watchdog = 2")),
        "daemon[0].watchdog: 2 has no unit: write a string such as \"2s\" or \"2ms\""
    );
    assert_eq!(
        one(&daemon("memory = 1.5")),
        "daemon[0].memory: expected a size such as \"4MiB\", found the number 1.5"
    );
    assert_eq!(
        one(&daemon("links = \"other\"")),
        "daemon[0].links: expected an array of daemon names, found the string \"other\""
    );
    assert_eq!(
        one(&format!("supervisor = 1\n{}", daemon(""))),
        "supervisor: expected a table, written [supervisor], found the integer 1"
    );
    assert_eq!(
        one("[daemon]\nname = \"d\"\nkind = \"idle\"\n"),
        "daemon: expected an array of tables, written [[daemon]], found a table"
    );
    assert_eq!(
        one(&format!("{}[supervisor]\nintensity = 2.5\n", daemon(""))),
        "supervisor.intensity: expected a whole number of restarts, found the number 2.5"
    );
    assert_eq!(
        one(&daemon("exec = [\"/bin/x\", 3]")),
        "daemon[0]: has both kind and exec; keep one (kind runs a built-in daemon, exec a program)"
    );
    assert_eq!(
        one("[[daemon]]\nname = \"d\"\nexec = [\"/bin/x\", 3]\n"),
        "daemon[0].exec[1]: expected a string, found the integer 3"
    );
    assert_eq!(
        one("[[daemon]]\nname = \"d\"\nexec = [\"\"]\n"),
        "daemon[0].exec[0]: the program's path is empty"
    );
}

#[test]
fn a_syntax_error_gives_file_line_and_column() {
    let p = problems("[[daemon]]\nname = \"d\"\nkind = idle\n");
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].place, "test.toml:3:8");
    assert!(p[0].message.starts_with("TOML syntax error: "), "{}", p[0]);

    // Columns count characters, not bytes.
    let p = problems("[[daemon]]\nname = \"é\" x\n");
    assert_eq!(p[0].place, "test.toml:2:12");

    let p = problems("[[daemon]]\nname = \"a\"\nname = \"b\"\n");
    assert_eq!(p[0].place, "test.toml:3:1");
}

#[test]
fn a_config_without_daemons_is_a_problem() {
    assert_eq!(
        one(""),
        "daemon: no daemons declared; add at least one [[daemon]] table"
    );
    assert_eq!(places("daemon = []"), ["daemon"]);
    assert_eq!(
        places("[[deamon]]\nname = \"x\"\nkind = \"idle\""),
        ["deamon", "daemon"]
    );
}

#[test]
fn a_daemon_needs_a_name_and_a_program() {
    assert_eq!(
        one("[[daemon]]\nkind = \"idle\"\n"),
        "daemon[0].name: missing; every daemon needs a name"
    );
    assert_eq!(
        one("[[daemon]]\nname = \"d\"\n"),
        "daemon[0]: needs kind = \"...\" (a built-in daemon) or exec = [\"/path/to/program\", ...]"
    );
    assert_eq!(
        one("[[daemon]]\nname = \"d\"\nkind = \"\"\n"),
        "daemon[0].kind: empty; name one of this binary's kinds \
         (built in: idle, flaky, counter, probe)"
    );
    let none = Config::parse(
        "[[daemon]]\nname = \"d\"\nkind = \"\"\n",
        "t.toml",
        &Registry::new(),
    )
    .expect_err("no kinds");
    assert_eq!(
        none[0].to_string(),
        "daemon[0].kind: empty, and this binary has no kinds; use exec = [...]"
    );
}

#[test]
fn names_are_unique_across_daemons_and_groups() {
    let text = r#"
[[group]]
name = "g"
[[group]]
name = "g"
[[daemon]]
name = "g"
kind = "idle"
[[daemon]]
name = "d"
kind = "idle"
[[daemon]]
name = "d"
kind = "idle"
"#;
    let lines: Vec<String> = problems(text).iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "group[1].name: \"g\" is already the name of group[0]",
            "daemon[0].name: \"g\" is already the name of group[0]",
            "daemon[2].name: \"d\" is already the name of daemon[1]",
        ]
    );
}

#[test]
fn name_rules() {
    for good in [
        "a",
        "counter",
        "kv-1",
        "a.b_c",
        "_x",
        "0",
        &"x".repeat(32),
        "cpu",
        "cpu-stat",
        "memoryd.x",
    ] {
        assert_eq!(check_name(good), Ok(()), "{good:?}");
    }
    for bad in [
        "",
        "root",
        "-x",
        ".",
        "..",
        "a b",
        "a/b",
        "é",
        &"x".repeat(33),
        "cpu.stat",
        "cgroup.procs",
        "memory.max",
        "io.x",
    ] {
        assert!(check_name(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(
        one("[[daemon]]\nname = \"root\"\nkind = \"idle\"\n"),
        "daemon[0].name: \"root\" is reserved for the top supervisor"
    );
    assert_eq!(
        one("[[daemon]]\nname = \"cpu.stat\"\nkind = \"idle\"\n"),
        "daemon[0].name: \"cpu.stat\" is shaped like a file of the cgroup interface (cpu.*), which a daemon's cgroup directory sits beside"
    );
    assert_eq!(
        one("[[daemon]]\nname = \"a/b\"\nkind = \"idle\"\n"),
        "daemon[0].name: \"a/b\" contains '/' (use letters, digits, _ . -)"
    );
}

#[test]
fn references_must_resolve() {
    let text = r#"
[[group]]
name = "storage"
[[daemon]]
name = "a"
kind = "idle"
group = "nope"
links = ["b", "storage", "a", "b"]
[[daemon]]
name = "b"
kind = "idle"
group = "a"
[[daemon]]
name = "c"
kind = "idle"
group = "root"
links = ["ghost"]
"#;
    let lines: Vec<String> = problems(text).iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "daemon[0].group: no group named \"nope\" (groups: storage)",
            "daemon[0].links[1]: \"storage\" is a group; links join daemons",
            "daemon[0].links[2]: a daemon cannot link to itself",
            "daemon[0].links[3]: \"b\" is listed twice",
            "daemon[1].group: \"a\" is a daemon, not a group",
            "daemon[2].links[0]: no daemon named \"ghost\"",
        ]
    );
    assert_eq!(
        one(&daemon("group = \"g\"")),
        "daemon[0].group: no group named \"g\" (no [[group]] is declared)"
    );
    // `group = "root"` is the top supervisor.
    assert_eq!(parse(&daemon("group = \"root\"")).daemons[0].group, None);
}

#[test]
fn group_parents_must_exist_and_form_no_cycle() {
    let text = r#"
[[group]]
name = "a"
parent = "b"
[[group]]
name = "b"
parent = "c"
[[group]]
name = "c"
parent = "a"
[[group]]
name = "d"
parent = "a"
[[group]]
name = "e"
parent = "e"
[[group]]
name = "f"
parent = "x"
[[group]]
name = "g"
parent = "f"
[[daemon]]
name = "x"
kind = "idle"
"#;
    let lines: Vec<String> = problems(text).iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "group[0].parent: groups form a cycle: a -> b -> c -> a \
             (one of them must have parent = \"root\")",
            "group[4].parent: a group cannot be its own parent",
            "group[5].parent: \"x\" is a daemon, not a group",
        ]
    );

    let c = parse(&format!(
        "[[group]]\nname = \"inner\"\nparent = \"outer\"\n[[group]]\nname = \"outer\"\n{}",
        daemon("group = \"inner\"")
    ));
    assert_eq!(c.groups[0].parent.as_deref(), Some("outer"));
    assert_eq!(c.groups[1].parent, None);
}

#[test]
fn ranges() {
    assert_eq!(
        one(&daemon("memory = 0")),
        "daemon[0].memory: must be more than 0B"
    );
    assert_eq!(
        one(&daemon("memory = \"0KiB\"")),
        "daemon[0].memory: must be more than 0B"
    );
    assert_eq!(
        one(&daemon("memory = -4096")),
        "daemon[0].memory: -4096 is negative"
    );
    assert_eq!(parse(&daemon("memory = 4096")).daemons[0].memory, 4096);
    assert_eq!(
        one(&daemon("watchdog = \"0ms\"")),
        "daemon[0].watchdog: must be longer than 0s"
    );
    assert_eq!(
        one(&daemon("backoff = \"10s\"\nbackoff_max = \"2s\"")),
        "daemon[0].backoff_max: 2s is less than backoff (10s)"
    );
    assert_eq!(
        one(&format!(
            "{}[supervisor]\nintensity = 5000000000\n",
            daemon("")
        )),
        "supervisor.intensity: 5000000000 is too large (at most 4294967295)"
    );
    // Zero intensity (never restart) and a zero stop timeout (SIGKILL at
    // once) are allowed.
    let c = parse(&format!(
        "{}[supervisor]\nintensity = 0\n[root]\nstop_timeout = \"0s\"\n",
        daemon("")
    ));
    assert_eq!(c.supervisor.intensity, 0);
    assert_eq!(c.root.stop_timeout, Duration::ZERO);
    assert_eq!(
        one(&format!(
            "{}[root]\ncontrol = \"/{}\"\n",
            daemon(""),
            "s".repeat(120)
        )),
        "root.control: the socket path is 121 bytes long; \
         a Unix socket path holds at most 107"
    );
}

#[test]
fn args_are_typed_with_their_defaults() {
    let c = parse(
        "[[daemon]]\nname = \"f\"\nkind = \"flaky\"\n[daemon.args]\nsignal = \"SIGABRT\"\n\
         [[daemon]]\nname = \"c\"\nkind = \"counter\"\n[daemon.args]\nbuffer = \"1MiB\"\nsync = true\n",
    );
    let f = &c.daemons[0].args;
    assert_eq!(f.get::<Duration>("mean_life"), Duration::from_secs(5));
    assert!(!f.is_given("mean_life"));
    assert_eq!(f.get::<i32>("signal"), libc::SIGABRT);
    assert!(f.is_given("signal"));
    let k = &c.daemons[1].args;
    assert_eq!(k.get::<u64>("rate"), 10);
    assert_eq!(k.get::<Option<&str>>("out"), None);
    assert_eq!(k.get::<u64>("buffer"), 1 << 20);
    assert!(k.get::<bool>("sync"));
    assert_eq!(k.value("buffer"), Some(Value::Size(1 << 20)));
    assert_eq!(k.value("nothing"), None);
}

#[test]
#[should_panic(
    expected = "setting \"rtae\" is not declared by this kind (declared: rate, out, buffer, sync)"
)]
fn reading_an_undeclared_setting_is_a_bug_in_the_daemon() {
    let c = parse("[[daemon]]\nname = \"c\"\nkind = \"counter\"\n");
    let _: u64 = c.daemons[0].args.get("rtae");
}

#[test]
#[should_panic(
    expected = "setting \"rate\": this daemon takes no settings (a kind declares \
                           them; an exec'd program gets its arguments in exec = [...])"
)]
fn reading_a_setting_of_a_daemon_without_any_says_so() {
    let _: u64 = config::Args::none().get("rate");
}

#[test]
#[should_panic(expected = "has no default: read it as an Option")]
fn reading_an_optional_setting_without_option_is_a_bug_in_the_daemon() {
    let c = parse("[[daemon]]\nname = \"c\"\nkind = \"counter\"\n");
    let _: &str = c.daemons[0].args.get("out");
}

#[test]
#[should_panic(
    expected = "setting \"limit\" (integer 0..=1099511627776) cannot be read as u32: \
                not every value it accepts fits"
)]
fn reading_an_int_as_a_type_narrower_than_its_range_fails_on_the_first_read() {
    const WIDE: &[Setting] = &[Setting::int("limit", "").default_int(1).range(0, 1 << 40)];
    let mut r = Registry::new();
    r.add(Kind::new("wide", "", never).settings(WIDE));
    let c = Config::parse("[[daemon]]\nname = \"w\"\nkind = \"wide\"\n", "t.toml", &r)
        .expect("a good config");
    let args = &c.daemons[0].args;
    assert_eq!(args.get::<u64>("limit"), 1);
    assert_eq!(args.get::<Option<i64>>("limit"), Some(1));
    // The default, 1, fits a u32; the range the config may give does not.
    let _: u32 = args.get("limit");
}

#[test]
fn ints_read_as_every_integer_type_their_range_fits() {
    const SMALL: &[Setting] = &[Setting::int("n", "").default_int(-5).range(-100, 100)];
    let mut r = Registry::new();
    r.add(Kind::new("small", "", never).settings(SMALL));
    let c = Config::parse("[[daemon]]\nname = \"s\"\nkind = \"small\"\n", "t.toml", &r)
        .expect("a good config");
    let a = &c.daemons[0].args;
    assert_eq!(a.get::<i8>("n"), -5);
    assert_eq!(a.get::<i16>("n"), -5);
    assert_eq!(a.get::<i32>("n"), -5);
    assert_eq!(a.get::<i64>("n"), -5);
    assert_eq!(a.get::<isize>("n"), -5);
}

#[test]
fn a_size_setting_takes_a_range() {
    const BUF: &[Setting] = &[Setting::size("buffer", "")
        .default_size(4096)
        .range(4096, 1 << 20)];
    let mut r = Registry::new();
    r.add(Kind::new("buf", "", never).settings(BUF));
    let config = |v: &str| {
        format!("[[daemon]]\nname = \"b\"\nkind = \"buf\"\n[daemon.args]\nbuffer = {v}\n")
    };
    let c = Config::parse(&config("\"1MiB\""), "t.toml", &r).expect("in range");
    assert_eq!(c.daemons[0].args.get::<u32>("buffer"), 1 << 20);
    let p = Config::parse(&config("\"2MiB\""), "t.toml", &r).expect_err("too large");
    assert_eq!(
        p[0].to_string(),
        "daemon[0].args.buffer: 2097152B is out of range (use 4096B..=1048576B)"
    );
    assert_eq!(BUF[0].ty.describe(), "size 4096..=1048576 bytes");
}

#[test]
fn bad_args_get_their_place_and_what_is_wrong() {
    let text = "[[daemon]]\nname = \"c\"\nkind = \"counter\"\n[daemon.args]\n\
                rtae = 5\nrate = \"fast\"\nout = \"\"\nbuffer = \"4 MB\"\nsync = 1\n\
                [[daemon]]\nname = \"c2\"\nkind = \"counter\"\n[daemon.args]\nrate = 0\n\
                [[daemon]]\nname = \"f\"\nkind = \"flaky\"\n[daemon.args]\n\
                mean_life = \"2h\"\nsignal = \"SIGFOO\"\n\
                [[daemon]]\nname = \"p\"\nkind = \"probe\"\n[daemon.args]\nmode = \"c\"\n\
                [[daemon]]\nname = \"i\"\nkind = \"idle\"\n[daemon.args]\nrate = 1\n\
                [[daemon]]\nname = \"x\"\nexec = [\"/bin/true\"]\n[daemon.args]\nrate = 1\n";
    let got: Vec<String> = problems(text).iter().map(ToString::to_string).collect();
    let want = [
        "daemon[0].args.rtae: unknown setting of kind \"counter\", did you mean \"rate\"? \
         (it takes: rate, out, buffer, sync)",
        "daemon[0].args.rate: expected a whole number, found the string \"fast\"",
        "daemon[0].args.out: empty path (leave the key out for the default)",
        "daemon[0].args.buffer: \"4 MB\" is not a size: unknown unit \"MB\", did you mean MiB? \
         (use B, KiB, MiB, GiB)",
        "daemon[0].args.sync: expected true or false, found the integer 1",
        "daemon[1].args.rate: 0 is out of range (use 1..=10000000)",
        "daemon[2].args.mean_life: 2h is out of range (use 1ms..=1h)",
        "daemon[2].args.signal: \"SIGFOO\" is not a signal name (e.g. SIGTERM, SIGKILL, SIGSEGV, SIGABRT)",
        "daemon[3].args.out: missing; kind \"probe\" needs it (file)",
        "daemon[3].args.mode: \"c\" is not a mode (use a, b)",
        "daemon[4].args.rate: unknown setting: kind \"idle\" takes no settings",
        "daemon[5].args: an exec'd program takes no [daemon.args]; \
         give it its options in exec = [...]",
    ];
    assert_eq!(got, want);
}

#[test]
#[should_panic(
    expected = "kind \"bad\": setting \"rate\": the default 0 does not fit integer 1..=10"
)]
fn a_kind_whose_default_breaks_its_own_range_is_refused() {
    const BAD: &[Setting] = &[Setting::int("rate", "").default_int(0).range(1, 10)];
    Registry::new().add(Kind::new("bad", "", never).settings(BAD));
}

#[test]
fn a_kind_that_contradicts_itself_is_refused_with_why() {
    const EMPTY: &[Setting] =
        &[Setting::duration("d", "").between(Duration::from_secs(5), Duration::from_secs(1))];
    const BOTH: &[Setting] = &[Setting::int("n", "").required().default_int(3)];
    const NOT_A_SIGNAL: &[Setting] = &[Setting::signal("s", "").default_signal(999)];
    const EMPTY_PATH: &[Setting] = &[Setting::path("p", "").default_str("")];
    for (settings, want) in [
        (
            EMPTY,
            "kind \"bad\": setting \"d\": between(5s, 1s) accepts nothing",
        ),
        (
            BOTH,
            "kind \"bad\": setting \"n\" is required and has a default 3; keep one",
        ),
        (
            NOT_A_SIGNAL,
            "kind \"bad\": setting \"s\": the default 999 is not a signal",
        ),
        (
            EMPTY_PATH,
            "kind \"bad\": setting \"p\": the default \"\" does not fit path",
        ),
    ] {
        let refused = std::panic::catch_unwind(|| {
            Registry::new().add(Kind::new("bad", "", never).settings(settings));
        })
        .expect_err(want);
        let message = refused
            .downcast_ref::<String>()
            .expect("a formatted message");
        assert_eq!(message, want);
    }
}

#[test]
fn kinds_are_checked_against_the_registry() {
    let text = "[[daemon]]\nname = \"a\"\nkind = \"idle\"\n\
                [[daemon]]\nname = \"b\"\nexec = [\"/bin/true\"]\n\
                [[daemon]]\nname = \"c\"\nkind = \"flakey\"\n[daemon.args]\nx = 1\n";
    assert_eq!(
        one(text),
        "daemon[2].kind: unknown kind \"flakey\", did you mean \"flaky\"? \
         (built in: idle, flaky, counter, probe)"
    );
    let none = Config::parse(text, "t.toml", &Registry::new()).expect_err("no kinds");
    assert_eq!(
        none[0].to_string(),
        "daemon[0].kind: unknown kind \"idle\" (this binary has no kinds; use exec = [...])"
    );

    // A config checked already, against a smaller list.
    let c = parse(
        "[[daemon]]\nname = \"a\"\nkind = \"idle\"\n[[daemon]]\nname = \"c\"\nkind = \"flaky\"\n",
    );
    let p = c.check_kinds(&["idle"]);
    let lines: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        ["daemon[1].kind: unknown kind \"flaky\" (built in: idle)"]
    );
    assert!(c.check_kinds(&["idle", "flaky"]).is_empty());
}

#[test]
fn load_reads_a_file_and_names_it_on_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tree.toml");
    std::fs::write(&path, FULL).expect("write");
    assert_eq!(config::load(&path, &kinds()), Ok(parse(FULL)));

    std::fs::write(&path, "[[daemon]\n").expect("write");
    let p = config::load(&path, &kinds()).expect_err("syntax error");
    assert_eq!(p[0].place, format!("{}:1:10", path.display()));

    // Bytes that are not UTF-8 (a Latin-1 path, say): placed at the first.
    std::fs::write(
        &path,
        b"[[daemon]]\nname = \"a\"\nexec = [\"/opt/caf\xe9\"]\n",
    )
    .expect("write");
    let p = config::load(&path, &kinds()).expect_err("not UTF-8");
    assert_eq!(
        p[0].to_string(),
        format!(
            "{}:3:18: not UTF-8 text (a TOML file is UTF-8; a path in it too)",
            path.display()
        )
    );

    // Endless input (a device given by mistake) is cut off, not read
    // until memory runs out.
    let p = config::load(std::path::Path::new("/dev/zero"), &kinds()).expect_err("endless");
    assert_eq!(
        p[0].to_string(),
        "/dev/zero: larger than 16MiB: not a config file"
    );

    let missing = dir.path().join("missing.toml");
    let p = config::load(&missing, &kinds()).expect_err("missing file");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].place, missing.display().to_string());
    assert!(
        p[0].message.starts_with("cannot read the config file: "),
        "{}",
        p[0]
    );
}

#[test]
fn sizes() {
    assert_eq!(parse_size("0B"), Ok(0));
    assert_eq!(parse_size("100B"), Ok(100));
    assert_eq!(parse_size("4KiB"), Ok(4096));
    assert_eq!(parse_size("4 MiB"), Ok(4 << 20));
    assert_eq!(parse_size(" 2GiB "), Ok(2 << 30));
    assert_eq!(parse_size("1024GiB"), Ok(1 << 40), "1 TiB is the most");
    assert_eq!(
        parse_size("1025GiB"),
        Err("\"1025GiB\" is too large (at most 1024GiB)".into())
    );
    assert_eq!(
        parse_size("99999999999999999999999B"),
        Err("\"99999999999999999999999B\" is too large (at most 1024GiB)".into())
    );
    assert_eq!(
        parse_size("17179869184GiB"),
        Err("\"17179869184GiB\" is too large (at most 1024GiB)".into()),
        "overflows u64 when multiplied"
    );
    // Fractions are rejected: a size means exactly what it says.
    assert_eq!(
        parse_size("1.5MiB"),
        Err(
            "\"1.5MiB\" is not a size: write a whole number, in KiB if need be \
             (use B, KiB, MiB, GiB)"
                .into()
        )
    );
    // A number without a unit is rejected with a hint.
    assert_eq!(
        parse_size("10"),
        Err("\"10\" has no unit: write \"10B\" for bytes (use B, KiB, MiB, GiB)".into())
    );
    assert_eq!(
        parse_size("4mib"),
        Err(
            "\"4mib\" is not a size: unknown unit \"mib\", did you mean MiB? \
             (use B, KiB, MiB, GiB)"
                .into()
        )
    );
    for bad in [
        "", "MiB", "-1MiB", "+1MiB", "1e3B", "4 TiB", "0x10B", "1_000B", "4 M iB",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration(" 10 s "), Ok(Duration::from_secs(10)));
    assert_eq!(
        parse_duration("8760h"),
        Ok(Duration::from_secs(365 * 24 * 3600))
    );
    assert_eq!(
        parse_duration("8761h"),
        Err("\"8761h\" is too long (at most 365 days)".into())
    );
    assert_eq!(
        parse_duration("99999999999999999999999ms"),
        Err("\"99999999999999999999999ms\" is too long (at most 365 days)".into())
    );
    assert_eq!(
        parse_duration("10"),
        Err("\"10\" has no unit: write e.g. \"10s\" or \"10ms\" (use ms, s, m, h)".into())
    );
    assert_eq!(
        parse_duration("1.5s"),
        Err(
            "\"1.5s\" is not a duration: write a whole number, in ms if need be \
             (use ms, s, m, h)"
                .into()
        )
    );
    assert_eq!(
        parse_duration("-1s"),
        Err("\"-1s\" is not a duration: it is negative (use ms, s, m, h)".into())
    );
    for bad in ["", "s", "1d", "1sec", "1 min", "1S", "1us"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn durations_format_back() {
    for text in ["0s", "1500ms", "2s", "90s", "5m", "2h"] {
        let d = parse_duration(text).expect(text);
        assert_eq!(format_duration(d), text);
    }
    // Whole-unit round trip over a spread of values.
    for n in [1u64, 7, 59, 60, 61, 999, 1000, 1001, 3600, 86_399] {
        for unit in ["ms", "s", "m"] {
            let d = parse_duration(&format!("{n}{unit}")).expect("parses");
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
    // A kind's default or range may be finer than a config can write: it
    // is shown as it is, not cut to whole milliseconds.
    assert_eq!(format_duration(Duration::from_micros(1500)), "1.5ms");
    assert_eq!(format_duration(Duration::from_nanos(250)), "250ns");
}

#[test]
fn signals() {
    let segv = nix::sys::signal::Signal::SIGSEGV as i32;
    assert_eq!(parse_signal("SIGSEGV"), Ok(segv));
    assert_eq!(parse_signal("SEGV"), Ok(segv));
    assert_eq!(parse_signal("segv"), Ok(segv));
    assert_eq!(
        parse_signal("SIGKILL"),
        Ok(nix::sys::signal::Signal::SIGKILL as i32)
    );
    assert_eq!(
        parse_signal("ABRT"),
        Ok(nix::sys::signal::Signal::SIGABRT as i32)
    );
    for bad in ["", "SIG", "SIGFOO", "11", "SIG SEGV"] {
        assert!(parse_signal(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(
        parse_signal("SIGFOO"),
        Err("\"SIGFOO\" is not a signal name (e.g. SIGTERM, SIGKILL, SIGSEGV, SIGABRT)".into())
    );
}

#[test]
fn a_standby_of_an_exec_program_is_refused() {
    // It would run at once instead of waiting: two owners of one region.
    assert_eq!(
        one("[[daemon]]\nname = \"d\"\nexec = [\"/bin/sleep\", \"9\"]\nstandby = true\n"),
        "daemon[0].standby: a standby needs a built-in kind; an exec'd program cannot wait pre-forked"
    );
    // A built-in kind's standby is fine.
    parse(&daemon("standby = true"));
}

#[test]
fn mailbox_keys_are_checked_with_their_place() {
    let c = parse(&daemon(""));
    assert_eq!(
        (c.daemons[0].mailbox, c.daemons[0].mailbox_message),
        (64, 1024)
    );
    let c = parse(&daemon("mailbox = 1024\nmailbox_message = \"64KiB\""));
    assert_eq!(
        (c.daemons[0].mailbox, c.daemons[0].mailbox_message),
        (1024, 65536)
    );
    assert_eq!(
        one(&daemon("mailbox = 3")),
        "daemon[0].mailbox: 3 is not a power of two from 2 to 65536 (messages)"
    );
    assert_eq!(
        one(&daemon("mailbox = 131072")),
        "daemon[0].mailbox: 131072 is not a power of two from 2 to 65536 (messages)"
    );
    assert_eq!(
        one(&daemon("mailbox = \"64\"")),
        "daemon[0].mailbox: expected a number of messages such as 64, found the string \"64\""
    );
    assert_eq!(
        one(&daemon("mailbox_message = \"2MiB\"")),
        "daemon[0].mailbox_message: 2097152 bytes is not from 64B to 1MiB \
         (a DOWN or EXIT message takes 64)"
    );
    assert_eq!(
        one(&daemon("mailbox_message = 63")),
        "daemon[0].mailbox_message: 63 bytes is not from 64B to 1MiB \
         (a DOWN or EXIT message takes 64)"
    );
}

#[test]
fn cgroup_limits_out_of_range_or_of_the_wrong_type_are_refused() {
    let lines: Vec<String> = problems(
        r#"
[[daemon]]
name = "a"
kind = "idle"
pids_max = 0
cpu_weight = 10001
memory_max = "4 MB"

[[daemon]]
name = "b"
kind = "idle"
cpu_weight = "high"
"#,
    )
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        lines,
        [
            "daemon[0].memory_max: \"4 MB\" is not a size: unknown unit \"MB\", \
             did you mean MiB? (use B, KiB, MiB, GiB)",
            "daemon[0].pids_max: 0 is out of range (1..=4294967295)",
            "daemon[0].cpu_weight: 10001 is out of range (1..=10000)",
            "daemon[1].cpu_weight: expected a whole number, found the string \"high\"",
        ]
    );
}

#[test]
fn significant_and_auto_shutdown_parse_and_default_to_never() {
    let c = parse(&daemon(""));
    assert_eq!(c.supervisor.auto_shutdown, AutoShutdown::Never);
    assert!(!c.daemons[0].significant);

    let c = parse(
        r#"
[supervisor]
auto_shutdown = "all_significant"
[[group]]
name = "g"
auto_shutdown = "any_significant"
restart = "temporary"
significant = true
[[group]]
name = "h"
[[daemon]]
name = "a"
kind = "idle"
group = "g"
restart = "transient"
significant = true
[[daemon]]
name = "b"
kind = "idle"
group = "h"
"#,
    );
    assert_eq!(c.supervisor.auto_shutdown, AutoShutdown::AllSignificant);
    assert_eq!(
        c.groups[0].supervisor.auto_shutdown,
        AutoShutdown::AnySignificant
    );
    assert!(c.groups[0].significant);
    assert_eq!(c.groups[1].supervisor.auto_shutdown, AutoShutdown::Never);
    assert!(!c.groups[1].significant);
    assert!(c.daemons[0].significant);
    assert!(!c.daemons[1].significant);
}

#[test]
fn check_refuses_significant_children_that_could_never_end_their_supervisor() {
    let text = r#"
[supervisor]
auto_shutdown = "sometimes"
[[group]]
name = "g"
auto_shutdown = "any_significant"
[[group]]
name = "quiet"
significant = true
restart = "transient"
[[group]]
name = "idle"
auto_shutdown = "all_significant"
[[daemon]]
name = "perm"
kind = "idle"
group = "g"
significant = true
[[daemon]]
name = "perm2"
kind = "idle"
group = "g"
restart = "permanent"
significant = true
[[daemon]]
name = "top"
kind = "idle"
restart = "temporary"
significant = true
[[daemon]]
name = "q"
kind = "idle"
group = "quiet"
restart = "transient"
significant = true
[[daemon]]
name = "bad"
kind = "idle"
group = "g"
restart = "forever"
significant = true
[[daemon]]
name = "typed"
kind = "idle"
group = "g"
restart = "transient"
significant = "yes"
[[daemon]]
name = "nowhere"
kind = "idle"
group = "nope"
restart = "transient"
significant = true
"#;
    let lines: Vec<String> = problems(text).iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "supervisor.auto_shutdown: \"sometimes\" is not an auto_shutdown \
             (use never, any_significant, all_significant)",
            "group[2].auto_shutdown: no child of this supervisor has significant = true, \
             so it would never act: mark the transient or temporary children whose end should \
             end it with significant = true, or leave auto_shutdown out",
            "daemon[0].significant: a significant daemon needs restart = \"transient\" or \
             \"temporary\" (it is permanent, so it is always restarted and its end could never \
             end its supervisor)",
            "daemon[1].significant: a significant daemon needs restart = \"transient\" or \
             \"temporary\" (it is permanent, so it is always restarted and its end could never \
             end its supervisor)",
            "daemon[3].significant: its supervisor \"quiet\" has auto_shutdown = \"never\" \
             (the default), so no child's end ends it: set auto_shutdown = \"any_significant\" \
             or \"all_significant\" in [[group]] \"quiet\"",
            "daemon[4].restart: \"forever\" is not a restart type (use permanent, transient, temporary)",
            "daemon[5].significant: expected true or false, found the string \"yes\"",
            "daemon[6].group: no group named \"nope\" (groups: g, quiet, idle)",
        ]
    );
    // (A bad auto_shutdown, a bad restart or an unknown group was reported
    // once, and causes no second problem.)

    let text = format!(
        "[[group]]\nname = \"g\"\nrestart = \"transient\"\nsignificant = true\n{}",
        daemon("group = \"g\"")
    );
    assert_eq!(
        one(&text),
        "group[0].significant: its supervisor \"root\" has auto_shutdown = \"never\" \
         (the default), so no child's end ends it: set auto_shutdown = \"any_significant\" \
         or \"all_significant\" in [supervisor]"
    );
}

#[test]
fn supervisor_problems_come_before_those_of_the_group_and_daemon_arrays() {
    let text =
        "group = 5\n[supervisor]\nstrategy = \"x\"\n[[daemon]]\nname = \"d\"\nkind = \"idle\"\n";
    assert_eq!(places(text), ["supervisor.strategy", "group"]);
}
