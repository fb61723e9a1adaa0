//! `weft cat NODE:PORT` and `weft listen --port P`: move bytes over an overlay session between
//! standard input/output and the peer, like `nc`. Standard input's end of file half-closes the
//! session; the program exits when the peer's side ends too.

use super::connect;
use crate::client::check;
use clap::Args;
use std::io::{Read, Write};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use weft_core::Endpoint;
use weft_ipc::{Event, ListenDelivery, Reply, Request};

#[derive(Args, Debug)]
pub struct CatArgs {
    /// The overlay endpoint NODE:PORT.
    to: SocketAddrV4,
    /// Local overlay port (default: ephemeral).
    #[arg(long)]
    from_port: Option<u16>,
}

#[derive(Args, Debug)]
pub struct ListenArgs {
    /// Overlay port to accept one session on.
    #[arg(long)]
    port: u16,
}

fn inode(fd: &OwnedFd) -> u64 {
    // SAFETY: fstat into a zeroed buffer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd.as_raw_fd(), &mut st);
        st.st_ino
    }
}

/// Copies stdin → stream (then half-closes) on a thread, stream → stdout here.
fn pump(stream: UnixStream) -> Result<i32, String> {
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let upload = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut reader = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 128 * 1024];
    let result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(0),
            Ok(n) => {
                if stdout.write_all(&buf[..n]).is_err() {
                    break Ok(0);
                }
            }
            Err(e) => break Err(format!("session: {e}")),
        }
    };
    let _ = stdout.flush();
    // The peer finishing its side is a half-close: keep sending until our input ends.
    let _ = upload.join();
    result
}

/// Why `node` cannot be reached right now, from the daemon's status (None: it can).
pub fn unreachable_reason(status: &serde_json::Value, node: std::net::Ipv4Addr) -> Option<String> {
    let name = node.to_string();
    if status["node"].as_str() == Some(name.as_str()) {
        return None;
    }
    let has_route = status["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["dst"].as_str() == Some(name.as_str()));
    if has_route {
        return None;
    }
    let known = status["known_nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| n.as_str() == Some(name.as_str()));
    Some(if known {
        format!("{name} is unreachable: the daemon knows it but has no route to it now (weft status shows the links)")
    } else {
        let reachable: Vec<&str> = status["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["dst"].as_str())
            .collect();
        format!(
            "{name} is not a node of this overlay (reachable: {})",
            if reachable.is_empty() {
                "none".to_string()
            } else {
                reachable.join(" ")
            }
        )
    })
}

pub fn cat(socket: &Path, a: CatArgs) -> Result<i32, String> {
    // A session to a node nobody can reach would wait for its handshake to time out: say why
    // at once instead.
    if let Some(why) = unreachable_reason(&super::status::fetch(socket)?, *a.to.ip()) {
        return Err(format!("connect to {}: {why}", a.to));
    }
    let mut c = connect(socket)?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    // SAFETY: `theirs` is a valid descriptor we own; converted to pass it to the daemon.
    let theirs: OwnedFd = theirs.into();
    let our_fd = OwnedFd::from(ours.try_clone().map_err(|e| e.to_string())?);
    let req = Request::Connect {
        dst: Endpoint::from(a.to),
        local_port: a.from_port,
        filler: 0,
        inode: inode(&our_fd),
        // Plain bytes: the CLI reads its socket with std, not through ring hooks.
        rings: false,
    };
    drop(our_fd);
    let (reply, _) = c
        .request_with_fd(req, Some(theirs.as_raw_fd()))
        .map_err(|e| e.to_string())?;
    drop(theirs);
    match check(reply) {
        Ok(Reply::Connecting { .. }) => {}
        Ok(other) => return Err(format!("unexpected reply {other:?}")),
        Err(e) => return Err(format!("connect to {}: {e}", a.to)),
    }
    let ino = {
        let f = ours.try_clone().map_err(|e| e.to_string())?;
        let fd: OwnedFd = f.into();
        inode(&fd)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next_route_check = Instant::now() + Duration::from_millis(500);
    loop {
        if Instant::now() >= next_route_check {
            next_route_check = Instant::now() + Duration::from_millis(500);
            if let Ok(status) = super::status::fetch(socket) {
                if let Some(why) = unreachable_reason(&status, *a.to.ip()) {
                    return Err(format!("connect to {}: {why}", a.to));
                }
            }
        }
        match check(
            c.request(Request::ConnectStatus { inode: ino })
                .map_err(|e| e.to_string())?,
        ) {
            Ok(Reply::ConnectStatus { result: None }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(Reply::ConnectStatus { result: Some(0) }) => break,
            Ok(Reply::ConnectStatus {
                result: Some(errno),
            }) => {
                return Err(format!(
                    "connect to {}: {}",
                    a.to,
                    std::io::Error::from_raw_os_error(errno)
                ))
            }
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
    pump(ours)
}

pub fn listen(socket: &Path, a: ListenArgs) -> Result<i32, String> {
    let mut c = connect(socket)?;
    match check(
        c.request(Request::Listen {
            port: a.port,
            delivery: ListenDelivery::Control,
            backlog: 0,
        })
        .map_err(|e| e.to_string())?,
    ) {
        Ok(Reply::Ok) => {}
        Ok(other) => return Err(format!("unexpected reply {other:?}")),
        Err(e) => return Err(format!("listen on {}: {e}", a.port)),
    }
    loop {
        match c.next_event(None).map_err(|e| e.to_string())? {
            Some((Event::Incoming { .. }, Some(fd))) => {
                // SAFETY: the daemon passed us this socketpair end.
                let stream =
                    unsafe { UnixStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
                return pump(stream);
            }
            Some(_) | None => continue,
        }
    }
}
