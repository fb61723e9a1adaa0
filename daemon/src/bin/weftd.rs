//! `weftd`: the overlay daemon. Runs in the foreground, logs to stderr, exits 0 on SIGTERM.

use clap::Parser;
use std::path::PathBuf;
use weft_daemon::config::{DaemonConfig, Flags};

/// The weft overlay daemon.
#[derive(Parser, Debug)]
#[command(name = "weftd", version, about)]
struct Args {
    /// TOML configuration file (flags override it).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// This node's overlay address (default: the listen address).
    #[arg(long)]
    node: Option<String>,
    /// UDP address for links to neighbours, e.g. 127.0.0.1:7470.
    #[arg(long)]
    listen: Option<String>,
    /// Neighbour daemon address, optionally with emulation for packets from it, its public
    /// key and its node id: 127.0.0.2:7470 or 127.0.0.2:7470/delay=10ms,loss=1%,key=KEY.
    /// Repeatable.
    #[arg(long = "neighbor")]
    neighbors: Vec<String>,
    /// Control socket path (default /tmp/weft/weftd.sock).
    #[arg(long, env = "WEFT_SOCKET")]
    socket: Option<String>,
    /// Loopback address the daemon's proxies use (default 127.77.x.y from the node address).
    #[arg(long)]
    proxy_ip: Option<String>,
    /// Accept link emulation (loss, delay, jitter, rate, cuts) in config and at run time.
    #[arg(long)]
    emulation: bool,
    /// Routing metric: latency or hops.
    #[arg(long)]
    metric: Option<String>,
    /// Session recovery: hop-by-hop or end-to-end.
    #[arg(long)]
    recovery: Option<String>,
    /// Redundant copies of packets on sparse links (lower tail latency under loss): off, on
    /// (default) or the copy's delay after its original (default 2ms).
    #[arg(long)]
    redundancy: Option<String>,
    /// Hello period (default 100ms).
    #[arg(long)]
    hello_interval: Option<String>,
    /// Silence after which a neighbour is dead (default 350ms).
    #[arg(long)]
    dead_interval: Option<String>,
    /// Largest UDP payload between daemons (default 1472).
    #[arg(long)]
    mtu: Option<u32>,
    /// Log filter (error, warn, info, debug, trace; or a tracing filter). Also WEFT_LOG.
    #[arg(long)]
    log: Option<String>,
    /// This node's secret key file (`weft keygen FILE` makes one). Links are authenticated
    /// and encrypted, flooded state signed; each neighbour needs a public key
    /// (`--neighbor ADDR/key=KEY` or `[[neighbor]] public_key`) or an entry in --admitted-keys.
    #[arg(long = "key")]
    key_file: Option<PathBuf>,
    /// The overlay-wide list of admitted node keys: `NODE PUBLIC_KEY` lines.
    #[arg(long)]
    admitted_keys: Option<PathBuf>,
    /// Run without link security: nothing authenticated, encrypted or signed.
    #[arg(long)]
    insecure: bool,
}

fn main() {
    let args = Args::parse();
    let flags = Flags {
        config: args.config,
        node: args.node,
        listen: args.listen,
        socket: args.socket,
        proxy_ip: args.proxy_ip,
        emulation: args.emulation,
        metric: args.metric,
        recovery: args.recovery,
        redundancy: args.redundancy,
        hello_interval: args.hello_interval,
        dead_interval: args.dead_interval,
        mtu: args.mtu,
        neighbors: args.neighbors,
        log: args.log,
        key_file: args.key_file,
        admitted_keys: args.admitted_keys,
        insecure: args.insecure,
    };
    let cfg = match DaemonConfig::resolve(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weftd: {e}");
            std::process::exit(2);
        }
    };
    let filter = std::env::var("WEFT_LOG").unwrap_or_else(|_| cfg.log.clone());
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("weftd: `log`: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = weft_daemon::io::Daemon::new(cfg).and_then(|d| d.run());
    if let Err(e) = result {
        eprintln!("weftd: {e}");
        std::process::exit(1);
    }
}
