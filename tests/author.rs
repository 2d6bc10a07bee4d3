//! An author's own binary, `examples/collatz.rs`: one kind of its own
//! (checkpoints and a transaction) under the complete command line of
//! `forkroot::main!`. Runs the real example binary, which `cargo test` and
//! `cargo build --workspace --all-targets` build next to `forkroot`.

mod common;

use std::path::PathBuf;

use common::{run_bin_to_end, send, Tree};
use libc::SIGKILL;

/// The example binary: `target/PROFILE/examples/collatz`.
fn collatz() -> PathBuf {
    let bin = std::path::Path::new(common::BIN)
        .parent()
        .expect("the binary's folder")
        .join("examples/collatz");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --example collatz` (plain `cargo test` does)",
        bin.display()
    );
    // `cargo test --test author` builds this test but not the example: a
    // binary older than its sources would test yesterday's code.
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .expect("the example's mtime");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = [root.join("examples/collatz.rs"), root.join("lib/src")];
    if let Some(newer) = sources.iter().find_map(|s| newer_than(s, built)) {
        panic!(
            "{} is older than {}: build it with `cargo build --example collatz` \
             (plain `cargo test` does)",
            bin.display(),
            newer.display()
        );
    }
    bin
}

/// A file at or under `path` modified after `t`, if any.
fn newer_than(path: &std::path::Path, t: std::time::SystemTime) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).ok()?;
        return entries.flatten().find_map(|e| newer_than(&e.path(), t));
    }
    (meta.modified().ok()? > t).then(|| path.to_owned())
}

/// Steps of n's Collatz sequence down to 1.
fn steps(mut n: u64) -> u64 {
    let mut s = 0;
    while n > 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        s += 1;
    }
    s
}

/// The lines of `out`, checked: `n steps` for n = 1, 2, ... in order, each
/// once, with the right count. Returns how many there are.
fn check_out(t: &Tree) -> u64 {
    let lines = t.out("collatz");
    for (i, line) in lines.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(
            *line,
            format!("{n} {}", steps(n)),
            "line {n} of collatz.out (skipped, repeated or wrong)"
        );
    }
    lines.len() as u64
}

/// How many processes of the daemon logged that they resumed from a
/// checkpoint (their own log lines, not the crash reports quoting them).
fn resumes(t: &Tree) -> u64 {
    t.log()
        .lines()
        .filter(|l| l.starts_with("collatz[") && l.contains("resumed from checkpoint"))
        .count() as u64
}

const TREE: &str = "[supervisor]\nintensity = 100\n\
                    [[daemon]]\nname = \"collatz\"\nkind = \"collatz\"\nmemory = \"64KiB\"\n\
                    [daemon.args]\nout = \"@DIR@/collatz.out\"\npace = \"2ms\"\n";

#[test]
fn the_authors_kind_resumes_from_its_checkpoint_after_sigkill() {
    let mut t = Tree::start_bin(&collatz(), TREE);
    let kills: u64 = 8;
    let mut pid = 0;
    for k in 0..kills {
        // Wait for a new process that has made progress of its own.
        let before = check_out(&t);
        let p = t.poll("the collatz daemon running and counting", || {
            let procs = t.daemons_named("collatz");
            let p = procs.first()?.pid;
            (p != pid && check_out(&t) > before + 5).then_some(p)
        });
        send(p, SIGKILL).expect("kill the daemon");
        pid = p;
        t.wait_log(&["crashed", "collatz", &format!("pid={p}")]);
        assert!(
            resumes(&t) >= k,
            "a replacement did not resume:\n{}",
            t.log()
        );
    }
    let last = check_out(&t);
    t.poll("progress after the last kill", || {
        (check_out(&t) > last + 5).then_some(())
    });
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_code(), 0, "{}", t.log());
    let n = check_out(&t);
    assert!(n > 6 * kills, "only {n} numbers");
    assert_eq!(resumes(&t), kills, "{}", t.log());
    println!("{kills} kills, {n} numbers, none skipped or repeated");
}

#[test]
fn check_rejects_bad_settings_of_the_authors_kind_with_places_and_78() {
    let text = "[[daemon]]\nname = \"a\"\nkind = \"collatz\"\n[daemon.args]\n\
                out = \"@DIR@/a.out\"\npaec = \"1s\"\nlimit = -1\n\
                [[daemon]]\nname = \"b\"\nkind = \"collatz\"\n[daemon.args]\npace = 5\n\
                [[daemon]]\nname = \"c\"\nkind = \"collatz\"\n[daemon.args]\n\
                out = \"@DIR@/c.out\"\npace = \"2m\"\nlimit = \"many\"\n";
    let want = [
        "daemon[0].args.paec: unknown setting of kind \"collatz\", did you mean \"pace\"? \
         (it takes: out, pace, limit)",
        "daemon[0].args.limit: -1 is out of range (use 0..=1099511627776)",
        "daemon[1].args.out: missing; kind \"collatz\" needs it \
         (file, one `n steps` line per number)",
        "daemon[1].args.pace: 5 has no unit: write a string such as \"5s\" or \"5ms\"",
        "daemon[2].args.pace: 2m is out of range (use 0s..=1m)",
        "daemon[2].args.limit: expected a whole number, found the string \"many\"",
    ];
    common::assert_rejected(&collatz(), text, &want);
}

#[test]
fn the_authors_binary_has_the_whole_command_line_and_only_its_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let bin = collatz();

    let kinds = run_bin_to_end(&bin, &dir, &["kinds"]);
    assert_eq!(kinds.code, Some(0), "{kinds:?}");
    let lines: Vec<&str> = kinds.stdout.lines().collect();
    assert!(lines[0].starts_with("collatz "), "{kinds:?}");
    assert!(
        lines.iter().any(|l| l.contains("pace = \"10ms\"")
            && l.contains("duration 0s..=1m: pause between numbers")),
        "{kinds:?}"
    );
    assert!(!kinds.stdout.contains("counter"), "{kinds:?}");

    let help = run_bin_to_end(&bin, &dir, &["--help"]);
    assert_eq!(help.code, Some(0), "{help:?}");
    // What the command line is, not the library crate's description.
    assert_eq!(
        help.stdout.lines().next(),
        Some("Erlang/OTP-style supervision for native Unix processes"),
        "{help:?}"
    );
    for cmd in ["run", "check", "ctl", "kinds"] {
        assert!(
            help.stdout.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{help:?}"
        );
    }

    // A built-in kind is not built into this binary.
    let path = common::write_config(&dir, "[[daemon]]\nname = \"i\"\nkind = \"idle\"\n");
    let check = run_bin_to_end(&bin, &dir, &["check", "--config", path.to_str().unwrap()]);
    assert_eq!(check.code, Some(78), "{check:?}");
    assert!(
        check
            .stderr
            .contains("daemon[0].kind: unknown kind \"idle\" (built in: collatz)"),
        "{check:?}"
    );

    // No demo tree: `run` needs --config.
    let run = run_bin_to_end(&bin, &dir, &["run"]);
    assert_eq!(run.code, Some(78), "{run:?}");
    assert!(
        run.stderr
            .contains("no --config given, and this binary has no demo tree"),
        "{run:?}"
    );
}

/// The crates `code` names by path (`libc::poll`, `use tracing::...`),
/// other than the standard library's and the primitive types.
fn crates_named(code: &str) -> std::collections::BTreeSet<&str> {
    const NOT_CRATES: &[&str] = &[
        "std", "core", "alloc", "crate", "self", "super", "u8", "u16", "u32", "u64", "u128",
        "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32", "f64", "str", "bool", "char",
    ];
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut crates = std::collections::BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("::") {
            let head = &line[..at];
            let start = head.rfind(|c: char| !is_ident(c)).map_or(0, |i| i + 1);
            let name = &head[start..];
            // Not a crate: a path's later segment (`a::b::`, `<T>::`), a
            // method's turbofish (`.checkpoints::<T>`), a type's (`f::<T>`).
            let not_first = head[..start].ends_with([':', '>', '.']);
            let turbofish = line[at + 2..].starts_with('<');
            if !name.is_empty()
                && !not_first
                && !turbofish
                && name.starts_with(|c: char| c.is_ascii_lowercase())
                && !NOT_CRATES.contains(&name)
            {
                crates.insert(name);
            }
        }
    }
    crates
}

/// The ```LANG blocks of `text`.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    text.split(fence.as_str())
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or(""))
        .collect()
}

#[test]
fn the_readme_walks_through_the_examples_real_code_and_config() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/collatz.rs");
    let config = include_str!("../examples/collatz.toml");
    let section = readme
        .split("## Writing a daemon")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("README has a Writing a daemon section");

    let code = blocks(section, "rust");
    assert!(code.len() >= 2, "no code in the section");
    for line in code.iter().flat_map(|b| b.lines()).map(str::trim) {
        if line.is_empty() || line.starts_with("// ...") {
            continue;
        }
        assert!(
            example.lines().any(|l| l.trim() == line),
            "README shows a line that examples/collatz.rs does not have: {line}"
        );
    }
    let toml = blocks(section, "toml");
    let tree: Vec<&str> = toml
        .iter()
        .copied()
        .filter(|b| b.contains("[[daemon]]"))
        .collect();
    assert_eq!(tree.len(), 1);
    let config_lines: Vec<&str> = config
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let shown: Vec<&str> = tree[0].lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        shown, config_lines,
        "README's tree is examples/collatz.toml"
    );

    // An author's Cargo.toml, as shown, has every crate the example names.
    let deps = toml
        .iter()
        .find(|b| b.starts_with("[dependencies]"))
        .expect("README shows the author's [dependencies]");
    for krate in crates_named(example) {
        assert!(
            deps.lines().any(|l| l.starts_with(&format!("{krate} ="))),
            "examples/collatz.rs uses the crate {krate}, which README's [dependencies] lacks:\n{deps}"
        );
    }

    // That config is good.
    let dir = tempfile::tempdir().unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/collatz.toml");
    let check = run_bin_to_end(&collatz(), &dir, &["check", "--config", path]);
    assert_eq!(check.code, Some(0), "{check:?}");
    assert!(
        check.stdout.contains("ok (1 daemon, 0 groups)"),
        "{check:?}"
    );
}
