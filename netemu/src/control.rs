//! The control protocol: one text command per connection on a Unix stream socket, answered by
//! one line of JSON. Scripts use `netemu ctl --control PATH <command...>`.
//!
//! | command | effect |
//! |---|---|
//! | `stats` | counters, achieved loss with its confidence interval, lateness, device drops |
//! | `reset` | zero all counters and histograms |
//! | `reseed N` | restart every direction's random stream from run seed N |
//! | `down SEL` / `up SEL` | cut / heal; in-flight packets of a cut direction are lost |
//! | `set SEL key=value ...` | change parameters (keys of [`crate::params::ParamPatch`]) |
//! | `events` | the log of applied commands with their CLOCK_MONOTONIC times |
//! | `plan` | namespaces, addresses, devices and routes |
//! | `shutdown` | stop and remove everything |
//!
//! `SEL` is `*` (every direction), a link `s-r1` (both directions) or a direction `s>r1`.
//! Replies to changes carry `t_ns`, the CLOCK_MONOTONIC time at which they took effect.

use crate::params::{ParamError, ParamPatch};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    All,
    Link(String, String),
    Direction { from: String, to: String },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Stats,
    Reset,
    Reseed(u64),
    Down(Selector),
    Up(Selector),
    Set(Selector, ParamPatch),
    Events,
    Plan,
    Shutdown,
}

#[derive(Debug, PartialEq)]
pub enum ParseError {
    Empty,
    Unknown(String),
    Usage(&'static str),
    Param(ParamError),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Empty => write!(f, "empty command"),
            ParseError::Unknown(c) => write!(f, "unknown command {c:?}"),
            ParseError::Usage(u) => write!(f, "usage: {u}"),
            ParseError::Param(e) => write!(f, "{e}"),
        }
    }
}

fn parse_selector(word: &str) -> Option<Selector> {
    if word == "*" {
        return Some(Selector::All);
    }
    if let Some((from, to)) = word.split_once('>') {
        return (!from.is_empty() && !to.is_empty()).then(|| Selector::Direction {
            from: from.to_string(),
            to: to.to_string(),
        });
    }
    let (a, b) = word.split_once('-')?;
    (!a.is_empty() && !b.is_empty()).then(|| Selector::Link(a.to_string(), b.to_string()))
}

impl Command {
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        let mut words = line.split_whitespace();
        let verb = words.next().ok_or(ParseError::Empty)?;
        let rest: Vec<&str> = words.collect();
        let selector = |usage| {
            rest.first()
                .and_then(|w| parse_selector(w))
                .ok_or(ParseError::Usage(usage))
        };
        let no_arguments = |command: Command, usage| {
            if rest.is_empty() {
                Ok(command)
            } else {
                Err(ParseError::Usage(usage))
            }
        };
        match verb {
            "stats" => no_arguments(Command::Stats, "stats"),
            "reset" => no_arguments(Command::Reset, "reset"),
            "events" => no_arguments(Command::Events, "events"),
            "plan" => no_arguments(Command::Plan, "plan"),
            "shutdown" => no_arguments(Command::Shutdown, "shutdown"),
            "reseed" => match rest.as_slice() {
                [seed] => seed
                    .parse()
                    .map(Command::Reseed)
                    .map_err(|_| ParseError::Usage("reseed SEED")),
                _ => Err(ParseError::Usage("reseed SEED")),
            },
            "down" | "up" => {
                const USAGE: &str = "down|up (* | A-B | A>B)";
                if rest.len() != 1 {
                    return Err(ParseError::Usage(USAGE));
                }
                let s = selector(USAGE)?;
                Ok(if verb == "down" {
                    Command::Down(s)
                } else {
                    Command::Up(s)
                })
            }
            "set" => {
                const USAGE: &str = "set (* | A-B | A>B) key=value ...";
                let s = selector(USAGE)?;
                if rest.len() < 2 {
                    return Err(ParseError::Usage(USAGE));
                }
                let patch = ParamPatch::from_assignments(rest[1..].iter().copied())
                    .map_err(ParseError::Param)?;
                Ok(Command::Set(s, patch))
            }
            other => Err(ParseError::Unknown(other.to_string())),
        }
    }
}

/// Send one command to a running emulator and return its JSON reply.
pub fn request(control: &Path, command: &str) -> io::Result<serde_json::Value> {
    let mut stream = UnixStream::connect(control).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot reach netemu at {}: {e}", control.display()),
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(command.as_bytes())?;
    stream.write_all(b"\n")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    serde_json::from_str(reply.trim())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(Command::parse("stats"), Ok(Command::Stats));
        assert_eq!(Command::parse(" reseed 7 "), Ok(Command::Reseed(7)));
        assert_eq!(
            Command::parse("down s-r1"),
            Ok(Command::Down(Selector::Link("s".into(), "r1".into())))
        );
        assert_eq!(
            Command::parse("up s>a"),
            Ok(Command::Up(Selector::Direction {
                from: "s".into(),
                to: "a".into()
            }))
        );
        match Command::parse("set * loss=2 delay_ms=5") {
            Ok(Command::Set(Selector::All, patch)) => {
                assert_eq!(patch.loss_pct, Some(2.0));
                assert_eq!(patch.delay_ms, Some(5.0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_malformed_commands() {
        assert_eq!(Command::parse(""), Err(ParseError::Empty));
        assert!(matches!(
            Command::parse("explode"),
            Err(ParseError::Unknown(_))
        ));
        assert!(matches!(Command::parse("down"), Err(ParseError::Usage(_))));
        assert!(matches!(
            Command::parse("down s"),
            Err(ParseError::Usage(_))
        ));
        assert!(matches!(
            Command::parse("down s- "),
            Err(ParseError::Usage(_))
        ));
        assert!(matches!(Command::parse("set *"), Err(ParseError::Usage(_))));
        assert!(matches!(
            Command::parse("set * bogus=1"),
            Err(ParseError::Param(_))
        ));
        assert!(matches!(
            Command::parse("stats now"),
            Err(ParseError::Usage(_))
        ));
        assert!(matches!(
            Command::parse("reseed x"),
            Err(ParseError::Usage(_))
        ));
    }
}
