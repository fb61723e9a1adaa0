//! `weftd`'s command line. It lives in the library, not in the binary, so that the man page
//! generator (`weft man`) renders the same definition the daemon parses.

use crate::config::Flags;
use clap::{CommandFactory, Parser};
use std::path::PathBuf;

/// The weft overlay daemon
///
/// Links to its neighbours over UDP, routes around failures, repairs loss hop by hop, and
/// carries sessions, datagrams and multicast groups for local programs. Configuration comes
/// from a TOML file (--config; /etc/weft/weftd.toml when installed) and flags, which win.
#[derive(Parser, Debug, Default)]
#[command(
    name = "weftd",
    version,
    after_help = "Runs in the foreground and logs to stderr. SIGHUP reloads the configuration \
                  file; SIGTERM and SIGINT tell the neighbours, close the sessions and exit 0."
)]
pub struct WeftdArgs {
    /// TOML configuration file (flags override it).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check FILE (and any other flags given) and exit: 0 if valid, 2 with one line naming the
    /// first bad key otherwise. Binds nothing.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
    /// This node's overlay address (default: the listen address).
    #[arg(long, value_name = "IPV4")]
    pub node: Option<String>,
    /// UDP address for links to neighbours, e.g. 192.0.2.1:7470.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Neighbour daemon address, optionally with emulation for packets from it, its public
    /// key and its node id: 192.0.2.2:7470 or 192.0.2.2:7470/delay=10ms,loss=1%,key=KEY.
    /// Repeatable.
    #[arg(long = "neighbor", value_name = "ADDR[/SPEC]")]
    pub neighbors: Vec<String>,
    /// Control socket path (default /run/weft/weftd.sock; for a daemon not run by root,
    /// $XDG_RUNTIME_DIR/weft/weftd.sock when that is set).
    #[arg(long, env = "WEFT_SOCKET", value_name = "PATH")]
    pub socket: Option<String>,
    /// Group (name or gid) of the control socket (mode 0660): its members may use the overlay
    /// (default: the daemon's group).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Group (name or gid) whose members may administer the overlay (link set/cut/heal,
    /// neighbor add/remove) besides root and the daemon's user (default: none).
    #[arg(long, value_name = "GROUP")]
    pub admin_group: Option<String>,
    /// Loopback address the daemon's proxies use (default 127.77.x.y from the node address).
    #[arg(long, value_name = "IPV4")]
    pub proxy_ip: Option<String>,
    /// Accept link emulation (loss, delay, jitter, rate, cuts) in config and at run time.
    #[arg(long)]
    pub emulation: bool,
    /// Routing metric: latency or hops.
    #[arg(long, value_name = "METRIC")]
    pub metric: Option<String>,
    /// Session recovery: hop-by-hop or end-to-end.
    #[arg(long, value_name = "MODE")]
    pub recovery: Option<String>,
    /// Redundant copies of packets on sparse links (lower tail latency under loss): off, on
    /// (default) or the copy's delay after its original (default 2ms).
    #[arg(long, value_name = "off|on|DELAY")]
    pub redundancy: Option<String>,
    /// Hello period (default 100ms).
    #[arg(long, value_name = "DURATION")]
    pub hello_interval: Option<String>,
    /// Silence after which a neighbour is dead (default 350ms).
    #[arg(long, value_name = "DURATION")]
    pub dead_interval: Option<String>,
    /// Fast failure detection on links that carry traffic: off (default) or the keepalive
    /// interval (e.g. 5ms); a silent neighbour is dead after a number of intervals that
    /// grows with the measured loss.
    #[arg(long, value_name = "off|INTERVAL")]
    pub fast_probe: Option<String>,
    /// Largest UDP payload between daemons (default 1472).
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u32>,
    /// Hop limit of routed packets (default 64).
    #[arg(long, value_name = "HOPS")]
    pub ttl: Option<u8>,
    /// Log filter: error, warn, info (default), debug, trace or off; or per-module
    /// directives like `info,weft_daemon::overlay=debug`. WEFT_LOG overrides it.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Log line format: text (default) or json (one object per line).
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9470 (default: off).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// This node's secret key file (`weft keygen FILE` makes one). Links are authenticated
    /// and encrypted, flooded state signed; each neighbour needs a public key
    /// (`--neighbor ADDR/key=KEY` or `[[neighbor]] public_key`) or an entry in --admitted-keys.
    #[arg(long = "key", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// The overlay-wide list of admitted node keys: `NODE PUBLIC_KEY` lines.
    #[arg(long, value_name = "FILE")]
    pub admitted_keys: Option<PathBuf>,
    /// Run without link security: nothing authenticated, encrypted or signed.
    #[arg(long)]
    pub insecure: bool,
}

impl WeftdArgs {
    /// The flags as the configuration resolver takes them (`--check-config FILE` reads FILE).
    pub fn flags(&self) -> Flags {
        Flags {
            config: self.check_config.clone().or_else(|| self.config.clone()),
            node: self.node.clone(),
            listen: self.listen.clone(),
            socket: self.socket.clone(),
            socket_group: self.socket_group.clone(),
            admin_group: self.admin_group.clone(),
            proxy_ip: self.proxy_ip.clone(),
            emulation: self.emulation,
            metric: self.metric.clone(),
            recovery: self.recovery.clone(),
            redundancy: self.redundancy.clone(),
            hello_interval: self.hello_interval.clone(),
            dead_interval: self.dead_interval.clone(),
            fast_probe: self.fast_probe.clone(),
            mtu: self.mtu,
            ttl: self.ttl,
            neighbors: self.neighbors.clone(),
            log: self.log.clone(),
            log_format: self.log_format.clone(),
            metrics: self.metrics.clone(),
            key_file: self.key_file.clone(),
            admitted_keys: self.admitted_keys.clone(),
            insecure: self.insecure,
        }
    }

    pub fn command() -> clap::Command {
        <Self as CommandFactory>::command()
    }
}
