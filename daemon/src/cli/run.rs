//! `weft run -- PROG ARGS`: exec PROG in place with the shim preloaded (same PID, so signals,
//! job control and the exit status are PROG's own); writes nothing to stdout.
//!
//! It is loud about falling back: with no daemon answering it says so in one line on stderr
//! before PROG starts, and the shim says so once if a redirect fails later (the daemon went
//! away). `-q` silences both; `--strict` refuses to start PROG without a daemon (exit 69) and
//! makes the shim fail calls to overlay nodes (ENETUNREACH) instead of using the kernel.

use clap::Args;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Deliver this multicast group reliably to the program's sockets (hop-by-hop repair,
    /// per-source order): a group (239.1.2.3), a prefix (239.1.0.0/16, 239.1) or `*`.
    /// Repeatable; added to WEFT_RELIABLE_GROUPS.
    #[arg(long = "reliable-group", value_name = "GROUP")]
    reliable_groups: Vec<String>,
    /// Say nothing when the program's sockets fall back to the kernel network.
    #[arg(short, long)]
    quiet: bool,
    /// Fail instead of falling back: no daemon, no program (exit 69); a lost daemon makes
    /// connections to overlay nodes fail with ENETUNREACH.
    #[arg(long, conflicts_with = "quiet")]
    strict: bool,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The shim: $WEFT_PRELOAD, or libweft.so next to this executable.
pub fn shim_path() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("WEFT_PRELOAD") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate weft: {e}"))?;
    let dir = exe.parent().ok_or("cannot locate weft's directory")?;
    let candidates = [
        dir.join("libweft.so"),
        // Where packaging/install.sh puts it (PREFIX/bin/weft, PREFIX/lib/weft/libweft.so).
        dir.join("../lib/weft/libweft.so"),
        dir.join("../lib/libweft.so"),
    ];
    for candidate in candidates {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "libweft.so not found next to {} (set WEFT_PRELOAD)",
        exe.display()
    ))
}

/// sysexits' EX_UNAVAILABLE: `--strict` and no daemon.
const EXIT_NO_DAEMON: i32 = 69;

pub fn run(socket: &Path, a: RunArgs) -> Result<i32, String> {
    let shim = shim_path()?;
    let daemon_down = super::connect(socket).err();
    let shim = std::fs::canonicalize(&shim).map_err(|e| format!("{}: {e}", shim.display()))?;
    let socket = std::path::absolute(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(existing) if !existing.is_empty() => format!("{} {existing}", shim.display()),
        _ => shim.display().to_string(),
    };
    let (prog, args) = a.command.split_first().ok_or("no program given")?;
    if let Some(why) = &daemon_down {
        if a.strict {
            eprintln!("weft run: {why}: not starting {prog} (--strict)");
            return Ok(EXIT_NO_DAEMON);
        }
        if !a.quiet {
            eprintln!("weft run: {why}: {prog} runs on the kernel network (start weftd, or -q to silence this)");
        }
    }
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args)
        .env("LD_PRELOAD", preload)
        .env("WEFT_SOCKET", &socket);
    if let Some(groups) = reliable_groups(&a.reliable_groups)? {
        cmd.env(RELIABLE_GROUPS_ENV, groups);
    }
    if a.quiet {
        cmd.env("WEFT_QUIET", "1");
    }
    if a.strict {
        cmd.env("WEFT_STRICT", "1");
    }
    if daemon_down.is_some() {
        // Said above; the shim only speaks up again if a daemon appears and is lost.
        cmd.env("WEFT_REPORTED_DOWN", "1");
    }
    let err = cmd.exec();
    eprintln!("weft run: {prog}: {err}");
    Ok(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// What the shim reads to make joins of these groups reliable.
pub const RELIABLE_GROUPS_ENV: &str = "WEFT_RELIABLE_GROUPS";

/// `--reliable-group` values appended to any inherited `WEFT_RELIABLE_GROUPS`; `None` when
/// there are none. A value that is no group or prefix is a usage error.
fn reliable_groups(given: &[String]) -> Result<Option<String>, String> {
    for g in given {
        if !is_group_spec(g) {
            return Err(format!(
                "--reliable-group: `{g}` is not a multicast group or prefix (e.g. 239.1.2.3, 239.1.0.0/16, 239.1, *)"
            ));
        }
    }
    if given.is_empty() {
        return Ok(None);
    }
    let mut all: Vec<String> = std::env::var(RELIABLE_GROUPS_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .into_iter()
        .collect();
    all.extend(given.iter().cloned());
    Ok(Some(all.join(",")))
}

/// A group, a CIDR prefix, leading octets (`239.1`, `239.1.*`) or `*`.
fn is_group_spec(s: &str) -> bool {
    let s = s.trim();
    if s == "*" {
        return true;
    }
    if let Some((a, len)) = s.split_once('/') {
        return a.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32);
    }
    let body = s.trim_end_matches('*').trim_end_matches('.');
    let octets: Vec<&str> = body.split('.').collect();
    !body.is_empty() && octets.len() <= 4 && octets.iter().all(|o| o.parse::<u8>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_specs() {
        for ok in ["239.1.2.3", "239.1.0.0/16", "239.1", "239.1.*", "*"] {
            assert!(is_group_spec(ok), "{ok}");
        }
        for bad in ["", "239.1.2.3.4", "239.1.0.0/33", "group", "300.1"] {
            assert!(!is_group_spec(bad), "{bad}");
        }
        assert_eq!(reliable_groups(&[]), Ok(None));
        assert!(reliable_groups(&["nope".into()]).is_err());
    }
}
