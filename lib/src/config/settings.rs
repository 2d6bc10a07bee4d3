//! Settings of a daemon kind: declared once by the kind ([`Setting`]),
//! checked against `[daemon.args]` in the same pass as the rest of the
//! config, and read typed by the daemon ([`Args::get`],
//! [`crate::Context::arg`]).

use std::path::Path;
use std::time::Duration;

/// The values a setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// `true` or `false`.
    Bool,
    /// A whole number in `min..=max`.
    Int {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A duration string (`"250ms"`, `"5s"`) in `min..=max`.
    Duration {
        /// Shortest accepted value.
        min: Duration,
        /// Longest accepted value.
        max: Duration,
    },
    /// A size (`"4MiB"`, or a whole number of bytes) in `min..=max`.
    Size {
        /// Smallest accepted value, in bytes.
        min: u64,
        /// Largest accepted value, in bytes.
        max: u64,
    },
    /// A signal by name (`"SIGTERM"`).
    Signal,
    /// Any string.
    Str,
    /// A file system path: not empty, no NUL.
    Path,
}

impl Type {
    /// How the type reads in `forkroot kinds` and in messages.
    pub fn describe(&self) -> String {
        use super::units::format_duration;
        match *self {
            Type::Bool => "true or false".into(),
            Type::Int { min, max } if (min, max) == (i64::MIN, i64::MAX) => "integer".into(),
            Type::Int { min, max } => format!("integer {min}..={max}"),
            Type::Duration { min, max } if (min, max) == (Duration::ZERO, super::MAX_DURATION) => {
                "duration".into()
            }
            Type::Duration { min, max } => {
                format!(
                    "duration {}..={}",
                    format_duration(min),
                    format_duration(max)
                )
            }
            Type::Size { min, max } if (min, max) == (0, super::MAX_SIZE) => "size".into(),
            Type::Size { min, max } => format!("size {min}..={max} bytes"),
            Type::Signal => "signal name".into(),
            Type::Str => "string".into(),
            Type::Path => "path".into(),
        }
    }
}

/// A checked value of a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Of [`Type::Bool`].
    Bool(bool),
    /// Of [`Type::Int`].
    Int(i64),
    /// Of [`Type::Duration`].
    Duration(Duration),
    /// Of [`Type::Size`], in bytes.
    Size(u64),
    /// Of [`Type::Signal`]: the signal's number.
    Signal(i32),
    /// Of [`Type::Str`] and [`Type::Path`].
    Str(&'a str),
}

impl std::fmt::Display for Value<'_> {
    /// As it would be written in the config: `10`, `"5s"`, `"SIGSEGV"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Duration(d) => write!(f, "{:?}", super::units::format_duration(d)),
            Value::Size(n) => write!(f, "{n}"),
            Value::Signal(s) => match crate::sys::Signal::from_raw(s) {
                Some(s) => write!(f, "{:?}", s.name()),
                None => write!(f, "\"signal {s}\""),
            },
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A further check of a value, after its type and range: `Err` holds what
/// is wrong, in words an operator can act on.
pub type Check = fn(Value<'_>) -> Result<(), String>;

/// One setting of a kind: its name, the values it takes, its default and a
/// line of help. Built with the `const` constructors, so a kind's settings
/// are a `const` slice next to its code:
///
/// ```
/// use std::time::Duration;
/// use forkroot::Setting;
///
/// const SETTINGS: &[Setting] = &[
///     Setting::int("rate", "numbers per second").default_int(10).range(1, 10_000_000),
///     Setting::duration("grace", "how long to wait").default_duration(Duration::from_secs(5)),
///     Setting::path("out", "file to write; default: the flight log"),
/// ];
/// ```
///
/// A setting without a default is optional (read it as an `Option`), unless
/// it is [`Setting::required`]. Values are written in the config as
/// elsewhere in it: durations `"5s"`, sizes `"4MiB"`, signals `"SIGTERM"`.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The key in `[daemon.args]`.
    pub name: &'static str,
    /// The values it takes.
    pub ty: Type,
    /// The value when the key is absent; `None`: absent means absent.
    pub default: Option<Value<'static>>,
    /// Whether the key must be given.
    pub required: bool,
    /// One line for `forkroot kinds`.
    pub help: &'static str,
    /// A further check of the value, if any.
    pub check: Option<Check>,
}

impl Setting {
    const fn new(name: &'static str, ty: Type, help: &'static str) -> Setting {
        Setting {
            name,
            ty,
            default: None,
            required: false,
            help,
            check: None,
        }
    }

    /// `true` or `false`.
    pub const fn bool(name: &'static str, help: &'static str) -> Setting {
        Setting::new(name, Type::Bool, help)
    }

    /// A whole number (any `i64` until [`Setting::range`]).
    pub const fn int(name: &'static str, help: &'static str) -> Setting {
        Setting::new(
            name,
            Type::Int {
                min: i64::MIN,
                max: i64::MAX,
            },
            help,
        )
    }

    /// A duration (`"5s"`), at most [`super::MAX_DURATION`].
    pub const fn duration(name: &'static str, help: &'static str) -> Setting {
        let ty = Type::Duration {
            min: Duration::ZERO,
            max: super::MAX_DURATION,
        };
        Setting::new(name, ty, help)
    }

    /// A size (`"4MiB"`), at most [`super::MAX_SIZE`].
    pub const fn size(name: &'static str, help: &'static str) -> Setting {
        let ty = Type::Size {
            min: 0,
            max: super::MAX_SIZE,
        };
        Setting::new(name, ty, help)
    }

    /// A signal by name.
    pub const fn signal(name: &'static str, help: &'static str) -> Setting {
        Setting::new(name, Type::Signal, help)
    }

    /// Any string.
    pub const fn string(name: &'static str, help: &'static str) -> Setting {
        Setting::new(name, Type::Str, help)
    }

    /// A path: not empty, no NUL.
    pub const fn path(name: &'static str, help: &'static str) -> Setting {
        Setting::new(name, Type::Path, help)
    }

    /// Limits an int setting to `min..=max`, or a size setting to
    /// `min..=max` bytes.
    ///
    /// # Panics
    /// At compile time (in a `const`), if the setting is neither an int
    /// nor a size, if `min > max`, or if a size's `min` is negative.
    pub const fn range(mut self, min: i64, max: i64) -> Setting {
        assert!(min <= max, "range: min > max");
        match self.ty {
            Type::Int { .. } => self.ty = Type::Int { min, max },
            Type::Size { .. } => {
                assert!(min >= 0, "range: a size is not negative");
                // Both are 0 or more here, so the casts keep their values.
                self.ty = Type::Size {
                    min: min as u64,
                    max: max as u64,
                };
            }
            _ => panic!("range applies to int and size settings"),
        }
        self
    }

    /// Limits a duration setting to `min..=max`.
    ///
    /// # Panics
    /// At compile time, if the setting is not a duration.
    pub const fn between(mut self, min: Duration, max: Duration) -> Setting {
        match self.ty {
            Type::Duration { .. } => self.ty = Type::Duration { min, max },
            _ => panic!("between applies to duration settings"),
        }
        self
    }

    /// The default of a bool setting.
    ///
    /// # Panics
    /// At compile time, if the setting is not a bool.
    pub const fn default_bool(mut self, v: bool) -> Setting {
        assert!(matches!(self.ty, Type::Bool), "not a bool setting");
        self.default = Some(Value::Bool(v));
        self
    }

    /// The default of an int setting.
    ///
    /// # Panics
    /// At compile time, if the setting is not an int.
    pub const fn default_int(mut self, v: i64) -> Setting {
        assert!(matches!(self.ty, Type::Int { .. }), "not an int setting");
        self.default = Some(Value::Int(v));
        self
    }

    /// The default of a duration setting.
    ///
    /// # Panics
    /// At compile time, if the setting is not a duration.
    pub const fn default_duration(mut self, v: Duration) -> Setting {
        assert!(
            matches!(self.ty, Type::Duration { .. }),
            "not a duration setting"
        );
        self.default = Some(Value::Duration(v));
        self
    }

    /// The default of a size setting, in bytes.
    ///
    /// # Panics
    /// At compile time, if the setting is not a size.
    pub const fn default_size(mut self, v: u64) -> Setting {
        assert!(matches!(self.ty, Type::Size { .. }), "not a size setting");
        self.default = Some(Value::Size(v));
        self
    }

    /// The default of a signal setting (a signal number, `libc::SIGTERM`).
    ///
    /// # Panics
    /// At compile time, if the setting is not a signal.
    pub const fn default_signal(mut self, v: i32) -> Setting {
        assert!(matches!(self.ty, Type::Signal), "not a signal setting");
        self.default = Some(Value::Signal(v));
        self
    }

    /// The default of a string or path setting.
    ///
    /// # Panics
    /// At compile time, if the setting is neither.
    pub const fn default_str(mut self, v: &'static str) -> Setting {
        assert!(
            matches!(self.ty, Type::Str | Type::Path),
            "not a string or path setting"
        );
        self.default = Some(Value::Str(v));
        self
    }

    /// The key must be given (a required setting has no default).
    pub const fn required(mut self) -> Setting {
        self.required = true;
        self.default = None;
        self
    }

    /// Adds a check of the value after its type and range.
    pub const fn check(mut self, check: Check) -> Setting {
        self.check = Some(check);
        self
    }
}

/// A value as [`Args`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stored {
    Scalar(Value<'static>),
    Text(Box<str>),
}

/// The checked `[daemon.args]` of one daemon: a value for each setting its
/// kind declares (given, or the default), read typed with [`Args::get`].
#[derive(Debug, Clone, Default)]
pub struct Args {
    settings: &'static [Setting],
    /// What the config gave, by index into `settings`.
    given: Vec<Option<Stored>>,
}

impl PartialEq for Args {
    /// Equal when every setting has the same value (the declarations are
    /// compared by name and type).
    fn eq(&self, other: &Args) -> bool {
        self.settings.len() == other.settings.len()
            && self
                .settings
                .iter()
                .zip(other.settings)
                .all(|(a, b)| a.name == b.name && a.ty == b.ty)
            && self.given == other.given
    }
}

impl Args {
    /// No settings: what a daemon with no declared settings gets.
    pub fn none() -> Args {
        Args::default()
    }

    /// Starts the args of a kind with `settings`, nothing given yet.
    pub(super) fn of(settings: &'static [Setting]) -> Args {
        Args {
            settings,
            given: vec![None; settings.len()],
        }
    }

    /// Records the checked value of setting `i`.
    pub(super) fn set(&mut self, i: usize, v: Value<'_>) {
        self.given[i] = Some(match v {
            Value::Str(s) => Stored::Text(s.into()),
            Value::Bool(b) => Stored::Scalar(Value::Bool(b)),
            Value::Int(n) => Stored::Scalar(Value::Int(n)),
            Value::Duration(d) => Stored::Scalar(Value::Duration(d)),
            Value::Size(n) => Stored::Scalar(Value::Size(n)),
            Value::Signal(s) => Stored::Scalar(Value::Signal(s)),
        });
    }

    /// The declared settings.
    pub fn settings(&self) -> &'static [Setting] {
        self.settings
    }

    /// The value of setting `name`: as given, else its default; `None`
    /// when it is neither given nor has a default, or is not declared.
    pub fn value(&self, name: &str) -> Option<Value<'_>> {
        let i = self.settings.iter().position(|s| s.name == name)?;
        self.value_at(i)
    }

    fn value_at(&self, i: usize) -> Option<Value<'_>> {
        match &self.given[i] {
            Some(Stored::Scalar(v)) => Some(*v),
            Some(Stored::Text(s)) => Some(Value::Str(s)),
            None => self.settings[i].default,
        }
    }

    /// Whether the config gave setting `name` (rather than its default).
    pub fn is_given(&self, name: &str) -> bool {
        let i = self.settings.iter().position(|s| s.name == name);
        i.is_some_and(|i| self.given[i].is_some())
    }

    /// Setting `name`, typed: `args.get::<u64>("rate")`,
    /// `args.get::<Option<&str>>("out")` for one without a default.
    ///
    /// # Panics
    /// When the kind does not declare `name`, or `T` does not fit its type
    /// (a mistake in the daemon's code, not in the config: the config was
    /// checked against the declaration before anything started). An
    /// integer type must hold the whole declared range, not just the value
    /// at hand: `u32` for `range(0, 1 << 40)` panics on the first read,
    /// whatever the config says, rather than only once an operator gives a
    /// large value.
    pub fn get<'a, T: FromArg<'a>>(&'a self, name: &str) -> T {
        let Some(i) = self.settings.iter().position(|s| s.name == name) else {
            misread(|| {
                let declared: Vec<&str> = self.settings.iter().map(|s| s.name).collect();
                if declared.is_empty() {
                    return format!(
                        "setting {name:?}: this daemon takes no settings (a kind declares \
                         them; an exec'd program gets its arguments in exec = [...])"
                    );
                }
                format!(
                    "setting {name:?} is not declared by this kind (declared: {})",
                    declared.join(", ")
                )
            })
        };
        let ty = self.settings[i].ty;
        let what = || format!("setting {name:?} ({})", ty.describe());
        let t = std::any::type_name::<T>;
        if !T::fits(ty) {
            misread(|| {
                format!(
                    "{} cannot be read as {}: not every value it accepts fits",
                    what(),
                    t()
                )
            });
        }
        match T::from_arg(self.value_at(i)) {
            Ok(v) => v,
            Err(expected) => {
                misread(|| format!("{} cannot be read as {}: it needs {expected}", what(), t()))
            }
        }
    }
}

/// Panics over a setting the daemon's code reads wrongly, with the message
/// `why` makes. The message and the panic allocate, which is allowed here:
/// in the steady state (`Context::steady`) the mistake must read as itself,
/// not as an allocation after fork.
#[cold]
fn misread(why: impl FnOnce() -> String) -> ! {
    crate::alloc::allow(|| std::panic::panic_any(why()))
}

/// A Rust type a setting's value can be read as (see [`Args::get`]).
pub trait FromArg<'a>: Sized {
    /// Converts a value (`None`: neither given nor defaulted), or says
    /// what it would need.
    fn from_arg(v: Option<Value<'a>>) -> Result<Self, &'static str>;

    /// Whether every value a setting of type `ty` accepts converts (an
    /// integer type holds the whole declared range). A type of the wrong
    /// kind altogether is left to [`FromArg::from_arg`] to refuse.
    fn fits(ty: Type) -> bool {
        let _ = ty;
        true
    }
}

impl<'a, T: FromArg<'a>> FromArg<'a> for Option<T> {
    fn from_arg(v: Option<Value<'a>>) -> Result<Self, &'static str> {
        match v {
            None => Ok(None),
            Some(v) => T::from_arg(Some(v)).map(Some),
        }
    }

    fn fits(ty: Type) -> bool {
        T::fits(ty)
    }
}

const NO_DEFAULT: &str = "a value, and it has no default: read it as an Option";

impl<'a> FromArg<'a> for bool {
    fn from_arg(v: Option<Value<'a>>) -> Result<Self, &'static str> {
        match v {
            Some(Value::Bool(b)) => Ok(b),
            None => Err(NO_DEFAULT),
            Some(_) => Err("a bool setting"),
        }
    }
}

/// Integers, sizes and signals read as any integer type their declared
/// range fits.
macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl<'a> FromArg<'a> for $t {
            fn from_arg(v: Option<Value<'a>>) -> Result<Self, &'static str> {
                let n: i128 = match v {
                    Some(Value::Int(n)) => n.into(),
                    Some(Value::Size(n)) => n.into(),
                    Some(Value::Signal(n)) => n.into(),
                    None => return Err(NO_DEFAULT),
                    Some(_) => return Err("an int, size or signal setting"),
                };
                <$t>::try_from(n).map_err(|_| "a declared range that fits the type")
            }

            fn fits(ty: Type) -> bool {
                let (min, max): (i128, i128) = match ty {
                    Type::Int { min, max } => (min.into(), max.into()),
                    Type::Size { min, max } => (min.into(), max.into()),
                    // Signal numbers are small and positive.
                    _ => return true,
                };
                <$t>::try_from(min).is_ok() && <$t>::try_from(max).is_ok()
            }
        }
    )*};
}
from_int!(i64, u64, i32, u32, i16, u16, i8, u8, isize, usize);

/// A signal setting as the signal it names.
impl<'a> FromArg<'a> for crate::sys::Signal {
    fn from_arg(v: Option<Value<'a>>) -> Result<Self, &'static str> {
        match v {
            Some(Value::Signal(n)) => {
                crate::sys::Signal::from_raw(n).ok_or("a signal number from 1 to 64")
            }
            None => Err(NO_DEFAULT),
            Some(_) => Err("a signal setting"),
        }
    }

    fn fits(ty: Type) -> bool {
        matches!(ty, Type::Signal)
    }
}

impl<'a> FromArg<'a> for Duration {
    fn from_arg(v: Option<Value<'a>>) -> Result<Self, &'static str> {
        match v {
            Some(Value::Duration(d)) => Ok(d),
            None => Err(NO_DEFAULT),
            Some(_) => Err("a duration setting"),
        }
    }
}

impl<'a> FromArg<'a> for &'a str {
    fn from_arg(v: Option<Value<'a>>) -> Result<Self, &'static str> {
        match v {
            Some(Value::Str(s)) => Ok(s),
            None => Err(NO_DEFAULT),
            Some(_) => Err("a string or path setting"),
        }
    }
}

impl<'a> FromArg<'a> for &'a Path {
    fn from_arg(v: Option<Value<'a>>) -> Result<Self, &'static str> {
        <&str>::from_arg(v).map(Path::new)
    }
}

impl<'a> FromArg<'a> for Value<'a> {
    fn from_arg(v: Option<Value<'a>>) -> Result<Self, &'static str> {
        v.ok_or(NO_DEFAULT)
    }
}

/// Checks a kind's declaration against itself: names unique, a duration
/// range that accepts something, no default on a required setting, and
/// each default accepted by its own setting (a path's too: not empty, no
/// NUL).
pub(crate) fn check_declaration(settings: &[Setting]) -> Result<(), String> {
    for (i, s) in settings.iter().enumerate() {
        if settings[..i].iter().any(|t| t.name == s.name) {
            return Err(format!("setting {:?} is declared twice", s.name));
        }
        if let Type::Duration { min, max } = s.ty {
            if min > max {
                return Err(format!(
                    "setting {:?}: between({:?}, {:?}) accepts nothing",
                    s.name, min, max
                ));
            }
        }
        let Some(d) = s.default else { continue };
        if s.required {
            return Err(format!(
                "setting {:?} is required and has a default {d}; keep one",
                s.name
            ));
        }
        if let Value::Signal(n) = d {
            if !crate::sys::Signal::from_raw(n).is_some_and(crate::sys::Signal::is_standard) {
                return Err(format!(
                    "setting {:?}: the default {n} is not a signal",
                    s.name
                ));
            }
        }
        let fits = match (s.ty, d) {
            (Type::Bool, Value::Bool(_)) | (Type::Signal, Value::Signal(_)) => true,
            (Type::Int { min, max }, Value::Int(n)) => (min..=max).contains(&n),
            (Type::Duration { min, max }, Value::Duration(d)) => (min..=max).contains(&d),
            (Type::Size { min, max }, Value::Size(n)) => (min..=max).contains(&n),
            (Type::Str, Value::Str(_)) => true,
            // As the config's paths: not empty, no NUL.
            (Type::Path, Value::Str(p)) => !p.is_empty() && !p.contains('\0'),
            _ => false,
        };
        if !fits {
            return Err(format!(
                "setting {:?}: the default {d} does not fit {}",
                s.name,
                s.ty.describe()
            ));
        }
        if let Some(Err(e)) = s.check.map(|c| c(d)) {
            return Err(format!("setting {:?}: the default {d}: {e}", s.name));
        }
    }
    Ok(())
}
