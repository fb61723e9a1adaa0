//! `weft completions SHELL` and `weft man DIR`: shell completions and manual pages generated
//! from the same clap definitions the programs parse, so they cannot drift from the flags.

use clap::Args;
use clap_complete::Shell;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: Shell,
    /// Complete `weftd` instead of `weft`.
    #[arg(long)]
    weftd: bool,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Directory to write weft.1, weft-SUBCOMMAND.1 and weftd.8 into (created if missing).
    dir: PathBuf,
}

/// Prints the completion script on stdout.
pub fn completions(a: CompletionsArgs) -> Result<i32, String> {
    let (mut cmd, name) = if a.weftd {
        (crate::args::WeftdArgs::command(), "weftd")
    } else {
        (super::command(), "weft")
    };
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, name, &mut script);
    // A closed stdout (`| head`) is the reader's choice, not an error.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
    Ok(0)
}

/// Writes the manual pages and lists them.
pub fn man(a: ManArgs) -> Result<i32, String> {
    let err = |e: std::io::Error| format!("{}: {e}", a.dir.display());
    std::fs::create_dir_all(&a.dir).map_err(err)?;
    clap_mangen::generate_to(super::command(), &a.dir).map_err(err)?;
    let weftd = clap_mangen::Man::new(crate::args::WeftdArgs::command())
        .section("8")
        .manual("System Manager's Manual");
    weftd.generate_to(&a.dir).map_err(err)?;
    let mut pages: Vec<String> = std::fs::read_dir(&a.dir)
        .map_err(err)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".1") || n.ends_with(".8"))
        .collect();
    pages.sort();
    for p in pages {
        println!("{}", a.dir.join(p).display());
    }
    Ok(0)
}
