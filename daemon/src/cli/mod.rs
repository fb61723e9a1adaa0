//! The `weft` command line.

mod datagram;
mod diag;
mod docs;
mod keys;
mod overlay;
mod run;
mod status;
mod stream;
pub mod topology;

use crate::client::{check, ControlClient};
use crate::config::DEFAULT_SOCKET;
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use weft_ipc::{ClientKind, LinkAction, Reply, Request};

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "Control a weft overlay daemon and run programs over it"
)]
struct Cli {
    /// The daemon's control socket (default: $WEFT_SOCKET, then /run/weft/weftd.sock if it
    /// exists, then $XDG_RUNTIME_DIR/weft/weftd.sock).
    #[arg(long, global = true, env = "WEFT_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The node, its neighbours (state, RTT, loss) and its routes. Exits non-zero when the
    /// daemon does not answer.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Link emulation and cuts (the daemon must run with --emulation for `set`).
    Link {
        #[command(subcommand)]
        action: LinkCmd,
    },
    /// Send datagrams over the overlay.
    Send(datagram::SendArgs),
    /// Receive datagrams on an overlay port and print one line per datagram.
    Recv(datagram::RecvArgs),
    /// Open a session to NODE:PORT and copy stdin/stdout over it (like nc).
    Cat(stream::CatArgs),
    /// Accept one session on an overlay port and copy stdin/stdout over it (like nc -l).
    Listen(stream::ListenArgs),
    /// Run a program with the shim: its sockets to overlay nodes go over the overlay.
    Run(run::RunArgs),
    /// Start, stop or inspect a local overlay of daemons on 127.0.0.N (no root needed).
    Overlay(overlay::OverlayArgs),
    /// Create a node's secret key file (mode 0600) and print its public key.
    Keygen(keys::KeygenArgs),
    /// Print the public key of a secret key (from FILE or standard input).
    Pubkey(keys::PubkeyArgs),
    /// Round-trip time and loss to a node over the overlay, and the path the routes give.
    Ping(diag::PingArgs),
    /// Every hop of the path to a node: its round-trip time, and the RTT and loss of the link
    /// leading to it as that hop measures them.
    Trace(diag::TraceArgs),
    /// Link to or unlink from a neighbour daemon now, without a restart (not saved in the
    /// configuration file: add it there too to keep it).
    Neighbor {
        #[command(subcommand)]
        action: NeighborCmd,
    },
    /// Print a shell completion script: `weft completions bash > /etc/bash_completion.d/weft`.
    Completions(docs::CompletionsArgs),
    /// Write the manual pages (weft.1, weft-SUBCOMMAND.1, weftd.8) into a directory.
    Man(docs::ManArgs),
}

#[derive(Subcommand, Debug)]
enum NeighborCmd {
    /// Start linking to the daemon at ADDR (IP or IP:PORT, default port 7470). The other
    /// daemon must list this one too (or `weft neighbor add` it back).
    Add {
        addr: String,
        /// Its overlay address, when it differs from ADDR's.
        #[arg(long)]
        node: Option<std::net::Ipv4Addr>,
        /// Emulation for packets from it, e.g. "delay=10ms loss=1%" (needs weftd --emulation).
        #[arg(long, default_value = "")]
        link: String,
        /// Its public key (what `weft keygen` printed on it), when this daemon's admitted
        /// list does not name it.
        #[arg(long = "public-key", value_name = "KEY")]
        key: Option<String>,
    },
    /// Stop linking to the daemon at ADDR: it is told at once and traffic reroutes.
    Remove { addr: String },
}

#[derive(Subcommand, Debug)]
enum LinkCmd {
    /// Set emulation on packets received from PEER: loss=2% burst=30% delay=20ms jitter=2ms rate=50mbit queue=64kb
    Set {
        peer: String,
        #[arg(required = true)]
        params: Vec<String>,
    },
    /// Cut the link to PEER (both directions, at this daemon).
    Cut { peer: String },
    /// Undo a cut.
    Heal { peer: String },
}

/// The `weft` command line as clap sees it (for completions and manual pages).
pub fn command() -> clap::Command {
    Cli::command()
}

pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        // The system daemon's socket, else this user's own daemon's.
        let system = PathBuf::from(DEFAULT_SOCKET);
        if system.exists() {
            return system;
        }
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let user = crate::config::default_socket(
            uid.max(1),
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        );
        if user.exists() {
            user
        } else {
            system
        }
    })
}

pub fn connect(socket: &std::path::Path) -> Result<ControlClient, String> {
    ControlClient::connect(socket, ClientKind::Cli).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (only members of the socket's group may use it: see `ls -l` on it)"
        } else {
            ""
        };
        format!("cannot reach weftd at {}: {e}{hint}", socket.display())
    })
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let socket = socket_path(cli.socket);
    let result = match cli.command {
        Command::Status { json } => status::run(&socket, json),
        Command::Link { action } => link(&socket, action),
        Command::Send(a) => datagram::send(&socket, a),
        Command::Recv(a) => datagram::recv(&socket, a),
        Command::Cat(a) => stream::cat(&socket, a),
        Command::Listen(a) => stream::listen(&socket, a),
        Command::Run(a) => run::run(&socket, a),
        Command::Overlay(a) => overlay::run(a),
        Command::Keygen(a) => keys::keygen(a),
        Command::Pubkey(a) => keys::pubkey(a),
        Command::Ping(a) => diag::ping(&socket, a),
        Command::Trace(a) => diag::trace(&socket, a),
        Command::Neighbor { action } => neighbor(&socket, action),
        Command::Completions(a) => docs::completions(a),
        Command::Man(a) => docs::man(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: {e}");
            1
        }
    }
}

fn neighbor(socket: &std::path::Path, cmd: NeighborCmd) -> Result<i32, String> {
    let (addr, action) = match cmd {
        NeighborCmd::Add {
            addr,
            node,
            link,
            key,
        } => (
            addr,
            weft_ipc::NeighborAction::Add {
                node: node.map(weft_core::NodeId::from),
                link,
                key,
            },
        ),
        NeighborCmd::Remove { addr } => (addr, weft_ipc::NeighborAction::Remove),
    };
    let sock_addr = match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a,
        Err(_) => match addr.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => std::net::SocketAddr::new(ip.into(), crate::config::DEFAULT_PORT),
            Err(_) => return Err(format!("`{addr}` is not an address like 192.0.2.2:7470")),
        },
    };
    let mut c = connect(socket)?;
    match check(
        c.request(Request::Neighbor {
            addr: sock_addr,
            action,
        })
        .map_err(|e| e.to_string())?,
    ) {
        Ok(Reply::Ok) => Ok(0),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn link(socket: &std::path::Path, cmd: LinkCmd) -> Result<i32, String> {
    let (peer, action) = match cmd {
        LinkCmd::Set { peer, params } => (peer, LinkAction::Set(params.join(" "))),
        LinkCmd::Cut { peer } => (peer, LinkAction::Cut),
        LinkCmd::Heal { peer } => (peer, LinkAction::Heal),
    };
    let mut c = connect(socket)?;
    match check(
        c.request(Request::Link { peer, action })
            .map_err(|e| e.to_string())?,
    ) {
        Ok(Reply::Ok) => Ok(0),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: shared by every process (and network namespace) on the
/// machine, so one-way delays need no clock sync.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
