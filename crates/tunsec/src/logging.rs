//! tunsecd's logs: which events (the level), and how they are written
//! (the format), on stderr.
//!
//! The level comes from, first to last: `--log-level`, then `RUST_LOG`,
//! then `[node] log_level` in the configuration, else `info`. The command
//! line is the most explicit and the shortest-lived, the configuration
//! file the most lasting, as with most tools (flag, environment, file).
//! Since the configuration is read after logging starts (its own errors
//! must be logged), a level from it is applied by [`Logging::apply_config`],
//! through a reloadable filter.
//!
//! A level is one of `error`, `warn`, `info`, `debug`, `trace`, `off`, or
//! a list of `tracing` filter directives (`info,tunsec_ike=debug`). A
//! single level name applies to tunsec's own crates, while libraries (the
//! netlink crates log every message at debug) stay at `info` at most; a
//! directive list is used as written. A bare word in a list must be a
//! level name: `debgu` is refused rather than read as a module name that
//! matches nothing.
//!
//! Formats: `text` for people, with colours only when stderr is a
//! terminal (and `NO_COLOR` is not set), so a log file or the journal
//! never holds escape codes; `json`, one object per line with the
//! event's fields at the top level, for log shippers.

use std::fmt;
use std::io::IsTerminal as _;
use std::str::FromStr;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry, reload};

/// The level names, least verbose first (and `off`).
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// tunsec's own crates, which a single level name applies to.
const OWN_CRATES: [&str; 6] = [
    "tunsec",
    "tunsecd",
    "tunsec_ike",
    "tunsec_esp",
    "tunsec_datapath",
    "tunsec_wire",
];

/// A checked log level: a level name or a list of filter directives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel(String);

impl LogLevel {
    /// Checks `s`; the error says why it is refused (the caller names the
    /// setting and the value).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err(format!("is empty: {}", Self::EXPECTED));
        }
        let parts: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        for part in &parts {
            let bare = !part.contains(['=', '[', ':']);
            if !bare || LEVELS.iter().any(|l| l.eq_ignore_ascii_case(part)) {
                continue;
            }
            return Err(if parts.len() == 1 {
                format!("is not a log level: {}", Self::EXPECTED)
            } else {
                format!(
                    "has {part:?}, which is not a log level ({}); a module is filtered with module=level",
                    LEVELS.join(", ")
                )
            });
        }
        EnvFilter::builder()
            .parse(s)
            .map_err(|e| format!("is not a valid log filter ({e}); {}", Self::EXPECTED))?;
        Ok(Self(s.to_owned()))
    }

    const EXPECTED: &'static str = "expected error, warn, info, debug, trace, off, or filter directives such as \"info,tunsec_ike=debug\"";

    /// The level as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The filter directives it stands for: a single level name for
    /// tunsec's crates, libraries at `info` at most; a list as written.
    pub fn directives(&self) -> String {
        let name = self.0.to_ascii_lowercase();
        let Some(rank) = LEVELS.iter().position(|l| *l == name) else {
            return self.0.clone();
        };
        let info = LEVELS.iter().position(|l| *l == "info").unwrap_or(rank);
        let libraries = LEVELS[rank.min(info)];
        let mut d = libraries.to_owned();
        if rank > info {
            for c in OWN_CRATES {
                d.push_str(&format!(",{c}={name}"));
            }
        }
        d
    }

    fn filter(&self) -> EnvFilter {
        // Checked in `parse`; the lossy parse cannot drop anything.
        EnvFilter::builder().parse_lossy(self.directives())
    }
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people: time, level, target, message,
    /// fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `message` and the event's fields.
    Json,
}

/// tunsecd's logging options (`tunsecd --help`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// What to log: error, warn, info, debug, trace, off, or tracing
    /// filter directives ("info,tunsec_ike=debug"). A level name applies
    /// to tunsec's own code (libraries stay at info at most). At debug,
    /// each IKE message, the proposals, the traffic selectors and the SPIs
    /// are logged; never keys. Wins over RUST_LOG, which wins over
    /// node.log_level in the configuration; the default is info.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
    /// How to write the log on stderr: text (colours only on a terminal),
    /// or json (one object per line, for log shippers).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where the level in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelSource {
    /// `--log-level`.
    Flag,
    /// The `RUST_LOG` environment variable.
    Env,
    /// `[node] log_level`.
    Config,
    /// None of them: `info`.
    Default,
}

impl fmt::Display for LevelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flag => "--log-level",
            Self::Env => "RUST_LOG",
            Self::Config => "node.log_level",
            Self::Default => "the default",
        })
    }
}

/// The level in force and its source, from the flag and the value of
/// `RUST_LOG` (an empty one counts as unset). A bad `RUST_LOG` is an
/// error that names it, even under a flag: it is wrong either way.
pub fn choose(
    flag: Option<&LogLevel>,
    env: Option<&str>,
) -> Result<(LogLevel, LevelSource), String> {
    let env = env
        .filter(|v| !v.trim().is_empty())
        .map(|v| LogLevel::parse(v).map_err(|reason| format!("RUST_LOG: {v:?} {reason}")))
        .transpose()?;
    Ok(match (flag, env) {
        (Some(f), _) => (f.clone(), LevelSource::Flag),
        (None, Some(e)) => (e, LevelSource::Env),
        (None, None) => (LogLevel("info".to_owned()), LevelSource::Default),
    })
}

/// Whether the text format writes colours: only to a terminal, and not
/// when `NO_COLOR` is set (<https://no-color.org>).
pub fn use_colour(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// The running log subscriber: its filter can still change once.
pub struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    source: LevelSource,
}

impl fmt::Debug for Logging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logging")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Starts logging to stderr as `args` and `RUST_LOG` say. Fails on a bad
/// `RUST_LOG`, or if a subscriber is already installed.
pub fn init(args: &LogArgs) -> Result<Logging, String> {
    let env = std::env::var("RUST_LOG").ok();
    let (level, source) = choose(args.log_level.as_ref(), env.as_deref())?;
    let (filter, handle) = reload::Layer::new(level.filter());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match args.log_format {
        LogFormat::Text => {
            let no_color = std::env::var("NO_COLOR").ok();
            fmt.with_ansi(use_colour(
                std::io::stderr().is_terminal(),
                no_color.as_deref(),
            ))
            .boxed()
        }
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .map_err(|e| format!("cannot start logging: {e}"))?;
    Ok(Logging { handle, source })
}

impl Logging {
    /// Applies `[node] log_level`, unless `--log-level` or `RUST_LOG`
    /// chose the level already; logs the level in force unless it is the
    /// default.
    pub fn apply_config(&mut self, level: Option<&LogLevel>) {
        if let (LevelSource::Default, Some(level)) = (self.source, level) {
            if self.handle.reload(level.filter()).is_ok() {
                self.source = LevelSource::Config;
            }
        }
        if self.source != LevelSource::Default {
            let level = self
                .handle
                .with_current(ToString::to_string)
                .unwrap_or_default();
            tracing::info!(source = %self.source, "log filter: {level}");
        }
    }

    /// Where the level in force came from.
    pub fn source(&self) -> LevelSource {
        self.source
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn level_names_and_directives() {
        for name in ["error", "warn", "info", "debug", "trace", "off", "DEBUG"] {
            assert_eq!(LogLevel::parse(name).unwrap().as_str(), name);
        }
        assert_eq!(LogLevel::parse(" warn ").unwrap().as_str(), "warn");
        // A level name: tunsec's crates at it, libraries at info at most.
        let debug = LogLevel::parse("debug").unwrap().directives();
        assert!(debug.starts_with("info,"), "{debug}");
        for c in OWN_CRATES {
            assert!(debug.contains(&format!(",{c}=debug")), "{debug}");
        }
        assert_eq!(LogLevel::parse("warn").unwrap().directives(), "warn");
        assert_eq!(LogLevel::parse("info").unwrap().directives(), "info");
        assert_eq!(LogLevel::parse("off").unwrap().directives(), "off");
        assert!(
            LogLevel::parse("trace")
                .unwrap()
                .directives()
                .contains(",tunsec_ike=trace")
        );
        // Directives as written.
        for d in [
            "info,tunsec_ike=debug",
            "warn,tunsec::ike=trace",
            "tunsec_ike[ike]=debug",
            "debug,netlink_proto=info",
        ] {
            let l = LogLevel::parse(d).unwrap();
            assert_eq!(l.directives(), d);
        }
    }

    #[test]
    fn bad_levels_say_why() {
        let e = LogLevel::parse("verbose").unwrap_err();
        assert!(
            e.starts_with("is not a log level: expected error, warn, info, debug, trace"),
            "{e}"
        );
        let e = LogLevel::parse("info,debgu").unwrap_err();
        assert!(
            e.starts_with("has \"debgu\", which is not a log level"),
            "{e}"
        );
        let e = LogLevel::parse("tunsec_ike=loud").unwrap_err();
        assert!(e.contains("is not a valid log filter"), "{e}");
        assert!(LogLevel::parse("").unwrap_err().contains("is empty"));
        // On the command line, clap names the flag and the value.
        let command = <LogArgs as clap::Args>::augment_args(clap::Command::new("tunsecd"));
        let e = command
            .clone()
            .try_get_matches_from(["tunsecd", "--log-level", "loud"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--log-level") && e.contains("'loud'"), "{e}");
        assert!(e.contains("is not a log level"), "{e}");
        let e = command
            .try_get_matches_from(["tunsecd", "--log-format", "xml"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--log-format") && e.contains("'xml'"), "{e}");
    }

    #[test]
    fn formats() {
        use clap::ValueEnum as _;
        assert_eq!(LogFormat::from_str("text", false), Ok(LogFormat::Text));
        assert_eq!(LogFormat::from_str("json", false), Ok(LogFormat::Json));
        assert!(LogFormat::from_str("xml", false).is_err());
        assert_eq!(LogArgs::default().log_format, LogFormat::Text);
    }

    #[test]
    fn flag_wins_over_env_and_env_must_be_valid() {
        let flag = LogLevel::parse("debug").unwrap();
        let (l, s) = choose(Some(&flag), Some("warn")).unwrap();
        assert_eq!((l.as_str(), s), ("debug", LevelSource::Flag));
        let (l, s) = choose(None, Some("warn")).unwrap();
        assert_eq!((l.as_str(), s), ("warn", LevelSource::Env));
        let (l, s) = choose(None, Some("  ")).unwrap();
        assert_eq!((l.as_str(), s), ("info", LevelSource::Default));
        let (l, s) = choose(None, None).unwrap();
        assert_eq!((l.as_str(), s), ("info", LevelSource::Default));
        let e = choose(Some(&flag), Some("loud")).unwrap_err();
        assert!(
            e.starts_with("RUST_LOG: \"loud\" is not a log level: expected"),
            "{e}"
        );
    }

    #[test]
    fn colour_only_on_a_terminal() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("")));
        assert!(!use_colour(true, Some("1")));
        assert!(!use_colour(false, None));
    }
}
