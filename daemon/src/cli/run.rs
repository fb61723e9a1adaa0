//! `weft run -- PROG ARGS`: exec PROG in place with the shim preloaded (same PID, so signals,
//! job control and the exit status are PROG's own); writes nothing to stdout.

use clap::Args;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct RunArgs {
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
    for candidate in [dir.join("libweft.so"), dir.join("../lib/libweft.so")] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "libweft.so not found next to {} (set WEFT_PRELOAD)",
        exe.display()
    ))
}

pub fn run(socket: &Path, a: RunArgs) -> Result<i32, String> {
    let shim = shim_path()?;
    let shim = std::fs::canonicalize(&shim).map_err(|e| format!("{}: {e}", shim.display()))?;
    let socket = std::path::absolute(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(existing) if !existing.is_empty() => format!("{} {existing}", shim.display()),
        _ => shim.display().to_string(),
    };
    let (prog, args) = a.command.split_first().ok_or("no program given")?;
    let err = std::process::Command::new(prog)
        .args(args)
        .env("LD_PRELOAD", preload)
        .env("WEFT_SOCKET", &socket)
        .exec();
    eprintln!("weft run: {prog}: {err}");
    Ok(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}
