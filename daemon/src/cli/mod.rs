//! The `weft` command line.

mod datagram;
mod keys;
mod overlay;
mod run;
mod status;
mod stream;
pub mod topology;

use crate::client::{check, ControlClient};
use crate::config::DEFAULT_SOCKET;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use weft_ipc::{ClientKind, LinkAction, Reply, Request};

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "Control a weft overlay daemon and run programs over it"
)]
struct Cli {
    /// The daemon's control socket (default: $WEFT_SOCKET, then /tmp/weft/weftd.sock).
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

pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

pub fn connect(socket: &std::path::Path) -> Result<ControlClient, String> {
    ControlClient::connect(socket, ClientKind::Cli)
        .map_err(|e| format!("cannot reach weftd at {}: {e}", socket.display()))
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: {e}");
            1
        }
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
