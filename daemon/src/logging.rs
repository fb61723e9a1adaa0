//! `weftd`'s logging: a checked filter, text or JSON lines on stderr (colour only on a
//! terminal), and a handle that swaps both on reload (SIGHUP).

use crate::config::LogConfig;
use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and the event's fields.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{s}`: expected text or json")),
        }
    }
}

fn is_level(s: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s))
}

fn is_target(s: &str) -> bool {
    !s.is_empty()
        && s.split("::")
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Checks a filter strictly and builds it. `tracing`'s own parser takes any bare word as a
/// target name, so `verbose` would be accepted and then match nothing: here every directive
/// must be a level (`debug`) or `target=level` (`weft_daemon::overlay=trace`).
pub fn parse_filter(s: &str) -> Result<EnvFilter, String> {
    let directives: Vec<&str> = s.split(',').map(str::trim).collect();
    if directives.iter().all(|d| d.is_empty()) {
        return Err("empty filter (expected a level: error, warn, info, debug, trace, off)".into());
    }
    for d in directives.iter().filter(|d| !d.is_empty()) {
        let ok = match d.rsplit_once('=') {
            Some((target, level)) => is_target(target) && is_level(level),
            None => is_level(d),
        };
        if !ok {
            return Err(format!(
                "`{d}` is neither a level (error, warn, info, debug, trace, off) nor target=level"
            ));
        }
    }
    let clean: Vec<&str> = directives.into_iter().filter(|d| !d.is_empty()).collect();
    EnvFilter::try_new(clean.join(",")).map_err(|e| format!("`{s}`: {e}"))
}

type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Formatter = Box<dyn Layer<Filtered> + Send + Sync>;

/// Swaps the filter and the line format of the running daemon.
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<Formatter, Filtered>,
    /// `WEFT_LOG`, which wins over the configuration at start and on every reload.
    env_filter: Option<String>,
    current: LogConfig,
}

fn formatter(format: LogFormat) -> Formatter {
    let ansi = std::io::stderr().is_terminal();
    match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr),
        ),
    }
}

/// The filter in force: `WEFT_LOG` if set, else the configuration's.
fn effective(env_filter: &Option<String>, cfg: &LogConfig) -> Result<EnvFilter, String> {
    match env_filter {
        Some(f) => parse_filter(f).map_err(|e| format!("`WEFT_LOG`: {e}")),
        None => parse_filter(&cfg.filter).map_err(|e| format!("`log`: {e}")),
    }
}

/// Installs the global subscriber. Fails (naming `WEFT_LOG` or `log`) on a bad filter.
pub fn init(cfg: &LogConfig) -> Result<LogHandle, String> {
    let env_filter = std::env::var("WEFT_LOG").ok().filter(|s| !s.is_empty());
    let (filter, filter_handle) = reload::Layer::new(effective(&env_filter, cfg)?);
    let (format, format_handle) = reload::Layer::new(formatter(cfg.format));
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .try_init()
        .map_err(|e| format!("logging: {e}"))?;
    Ok(LogHandle {
        filter: filter_handle,
        format: format_handle,
        env_filter,
        current: cfg.clone(),
    })
}

impl LogHandle {
    /// Applies a reloaded configuration; returns what changed (empty if nothing did).
    pub fn reload(&mut self, cfg: &LogConfig) -> Result<Vec<&'static str>, String> {
        let mut changed = Vec::new();
        if cfg.filter != self.current.filter {
            self.filter
                .reload(effective(&self.env_filter, cfg)?)
                .map_err(|e| format!("logging: {e}"))?;
            changed.push("log");
        }
        if cfg.format != self.current.format {
            self.format
                .reload(formatter(cfg.format))
                .map_err(|e| format!("logging: {e}"))?;
            changed.push("log_format");
        }
        self.current = cfg.clone();
        Ok(changed)
    }
}

/// Shows an optional value in a log field as the value itself, or `-`.
pub struct Maybe<'a, T>(pub &'a Option<T>);

impl<T: fmt::Display> fmt::Display for Maybe<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked_strictly() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "warn,weft_daemon::overlay=trace",
            "info, mio=warn",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "verbose",
            "",
            "info,loud",
            "weft_daemon=chatty",
            "=debug",
            "a::=info",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
        assert!(parse_filter("verbose").unwrap_err().contains("`verbose`"));
    }

    #[test]
    fn formats() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
        assert_eq!(Maybe(&Some(3)).to_string(), "3");
        assert_eq!(Maybe::<u8>(&None).to_string(), "-");
    }
}
