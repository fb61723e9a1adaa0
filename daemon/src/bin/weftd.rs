//! `weftd`: the overlay daemon. Runs in the foreground, logs to stderr, exits 0 on SIGTERM.

use clap::Parser;
use weft_daemon::args::WeftdArgs;
use weft_daemon::config::DaemonConfig;

fn main() {
    let args = WeftdArgs::parse();
    let flags = args.flags();
    let cfg = match DaemonConfig::resolve(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weftd: {e}");
            std::process::exit(2);
        }
    };
    if let Some(path) = &args.check_config {
        println!("{}: ok ({})", path.display(), cfg.summary());
        return;
    }
    let logs = match weft_daemon::logging::init(&cfg.log) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("weftd: {e}");
            std::process::exit(2);
        }
    };
    let result = weft_daemon::io::Daemon::new(cfg).and_then(|d| d.with_reload(flags, logs).run());
    if let Err(e) = result {
        eprintln!("weftd: {e}");
        std::process::exit(1);
    }
}
