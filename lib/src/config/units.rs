//! Sizes, durations and signals as an operator writes them: `"4MiB"`,
//! `"500ms"`, `"SIGSEGV"`.
//!
//! Numbers are whole: `"1.5MiB"` is rejected with a hint to use a smaller
//! unit (`"1536KiB"`), so a value always means exactly what it says. A number
//! without a unit is rejected too: `"10"` could mean bytes or kibibytes,
//! milliseconds or seconds, and a config should not make the reader guess.

use std::time::Duration;

/// The largest size accepted anywhere in a config: 1 TiB.
pub const MAX_SIZE: u64 = 1 << 40;

/// The largest duration accepted anywhere in a config: 365 days. Larger
/// values are almost certainly mistakes, and bounding them keeps deadline
/// arithmetic (`Instant + Duration`) far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
];
const SIZE_HELP: &str = "use B, KiB, MiB, GiB";

const DURATION_UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)];
const DURATION_HELP: &str = "use ms, s, m, h";

/// Parses a size such as `"4MiB"`, `"512KiB"` or `"100B"` into bytes.
///
/// Units are `B`, `KiB`, `MiB`, `GiB` (powers of 1024, case as written);
/// spaces between number and unit are allowed. The number must be a whole,
/// non-negative decimal; at most [`MAX_SIZE`]. Zero is accepted here (a
/// caller that needs a positive size checks that itself). The error is a
/// message without a place, e.g. `"4 MB" is not a size: ... (use B, KiB,
/// MiB, GiB)`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (number, unit) = split(s);
    let not_a_size = |why: &str| format!("{s:?} is not a size: {why} ({SIZE_HELP})");
    if unit.is_empty() {
        return Err(if number.is_empty() {
            not_a_size("no number")
        } else {
            format!("{s:?} has no unit: write \"{number}B\" for bytes ({SIZE_HELP})")
        });
    }
    let Some(&(_, scale)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(not_a_size(&unknown_size_unit(unit)));
    };
    let n = whole_number(number, smaller_size_unit(unit)).map_err(|why| not_a_size(&why))?;
    match n.checked_mul(scale) {
        Some(bytes) if bytes <= MAX_SIZE => Ok(bytes),
        _ => Err(format!("{s:?} is too large (at most 1024GiB)")),
    }
}

/// Parses a duration such as `"500ms"`, `"2s"`, `"1m"` or `"1h"`.
///
/// Units are `ms`, `s`, `m` (minutes) and `h`; spaces between number and
/// unit are allowed. The number must be a whole, non-negative decimal; at
/// most [`MAX_DURATION`]. Zero (`"0s"`) is accepted here; a caller that
/// needs a positive duration checks that itself.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = split(s);
    let not_a_duration = |why: &str| format!("{s:?} is not a duration: {why} ({DURATION_HELP})");
    if unit.is_empty() {
        return Err(if number.is_empty() {
            not_a_duration("no number")
        } else {
            format!(
                "{s:?} has no unit: write e.g. \"{number}s\" or \"{number}ms\" ({DURATION_HELP})"
            )
        });
    }
    let Some(&(_, millis)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(not_a_duration(&format!("unknown unit {unit:?}")));
    };
    let smaller = match unit {
        "h" => Some("m"),
        "m" => Some("s"),
        "s" => Some("ms"),
        _ => None,
    };
    let n = whole_number(number, smaller).map_err(|why| not_a_duration(&why))?;
    match n.checked_mul(millis).map(Duration::from_millis) {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("{s:?} is too long (at most 365 days)")),
    }
}

/// Parses a signal name, with or without the `SIG` prefix and in any case:
/// `"SIGSEGV"`, `"SEGV"` and `"segv"` all give `SIGSEGV`'s number.
pub fn parse_signal(name: &str) -> Result<i32, String> {
    match crate::sys::Signal::from_name(name) {
        Some(signal) => Ok(signal.as_raw()),
        None => Err(format!(
            "{name:?} is not a signal name (e.g. SIGTERM, SIGKILL, SIGSEGV, SIGABRT)"
        )),
    }
}

/// Formats a duration the way a config writes it, in the largest unit that
/// keeps it whole: `"1500ms"`, `"2s"`, `"5m"`; one finer than a millisecond
/// as Rust shows it (`"1.5ms"`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        // Finer than a config can write (a kind's default or range may
        // be): shown as it is, `1.5ms`, not cut to whole milliseconds.
        return format!("{d:?}");
    }
    let ms = d.as_millis();
    for (unit, scale) in DURATION_UNITS.iter().rev() {
        let scale = u128::from(*scale);
        if ms % scale == 0 {
            return format!("{}{unit}", ms / scale);
        }
    }
    format!("{ms}ms")
}

/// Splits `"  4 MiB "` into `("4", "MiB")`: the number is everything up to
/// the first letter, the unit the rest; both trimmed.
fn split(s: &str) -> (&str, &str) {
    let s = s.trim();
    let at = s.find(|c: char| c.is_alphabetic()).unwrap_or(s.len());
    (s[..at].trim(), s[at..].trim())
}

/// Reads the number part of a size or duration. `whole` is the full text,
/// `smaller` is the next smaller unit, suggested for fractions.
fn whole_number(number: &str, smaller: Option<&str>) -> Result<u64, String> {
    if number.is_empty() {
        return Err("no number before the unit".to_owned());
    }
    if number.starts_with('-') {
        return Err("it is negative".to_owned());
    }
    if number.contains(['.', ',']) {
        return Err(match smaller {
            Some(smaller) => format!("write a whole number, in {smaller} if need be"),
            None => "write a whole number".to_owned(),
        });
    }
    if !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{number:?} is not a whole number"));
    }
    // Only digits: the one way parsing fails is a number too large for u64,
    // which the caller's range check then reports as too large.
    Ok(number.parse::<u64>().unwrap_or(u64::MAX))
}

fn smaller_size_unit(unit: &str) -> Option<&'static str> {
    match unit {
        "GiB" => Some("MiB"),
        "MiB" => Some("KiB"),
        "KiB" => Some("B"),
        _ => None,
    }
}

/// Explains an unknown size unit, pointing decimal or lower-case spellings
/// (`MB`, `mb`, `M`) to the binary unit they were probably meant as.
fn unknown_size_unit(unit: &str) -> String {
    let meant = match unit.chars().next().map(|c| c.to_ascii_uppercase()) {
        Some('K') => Some("KiB"),
        Some('M') => Some("MiB"),
        Some('G') => Some("GiB"),
        Some('B') => Some("B"),
        _ => None,
    };
    match meant {
        Some(meant) => format!("unknown unit {unit:?}, did you mean {meant}?"),
        None => format!("unknown unit {unit:?}"),
    }
}
