//! A raw control-socket client for the red-team tests: what any local user could write.
//!
//!     weft-control-raw SOCKET REQUEST_JSON...     one reply line per request
//!     weft-control-raw SOCKET --scan-claims FROM TO
//!
//! Requests are `weft_ipc::Request` as JSON; each reply prints as JSON followed by ` fds=N`
//! (a `Connect` passes one end of a fresh socketpair, as the shim does). `--scan-claims`
//! sends `ClaimAccepted` for every proxy port in FROM..=TO (what stole a session before the
//! control socket checked anything) and prints `claimed=N refused=N empty=N`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use weft_ipc::{fdpass, Incoming, Reply, Request, MAX_MESSAGE};

fn connect(path: &str) -> Result<OwnedFd, String> {
    // SAFETY: plain socket creation and connect with a valid sockaddr_un; the fd is owned.
    unsafe {
        let raw = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let mut sa: libc::sockaddr_un = std::mem::zeroed();
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = std::ffi::OsStr::new(path).as_bytes();
        if bytes.len() >= sa.sun_path.len() {
            return Err("socket path too long".into());
        }
        for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::connect(raw, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(format!(
                "connect {path}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(fd)
    }
}

fn socketpair() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair fills two fds, owned at once.
    unsafe {
        if libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

fn request(sock: RawFd, req: Request) -> Result<(Reply, usize), String> {
    // A connect passes one end of a socketpair; the other stays open until the process ends.
    let pair = match req {
        Request::Connect { .. } => Some(socketpair()?),
        _ => None,
    };
    let fds: Vec<RawFd> = pair.iter().map(|(_, theirs)| theirs.as_raw_fd()).collect();
    let rec = req.encode().map_err(|e| e.to_string())?;
    fdpass::send_record(sock, &rec, &fds).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let r = fdpass::recv_record(sock, &mut buf, 0).map_err(|e| e.to_string())?;
        if r.is_eof() {
            return Err("the daemon closed the connection".into());
        }
        match Incoming::decode(&buf[..r.len]).map_err(|e| e.to_string())? {
            Incoming::Reply(reply) => {
                if let Some((ours, _)) = pair {
                    std::mem::forget(ours);
                }
                return Ok((reply, r.fds.len()));
            }
            Incoming::Event(_) => continue,
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let [socket, rest @ ..] = args else {
        return Err(
            "usage: weft-control-raw SOCKET REQUEST_JSON... | --scan-claims FROM TO".into(),
        );
    };
    let sock = connect(socket)?;
    if let [flag, from, to] = rest {
        if flag == "--scan-claims" {
            let from: u16 = from.parse().map_err(|_| "FROM: a port")?;
            let to: u16 = to.parse().map_err(|_| "TO: a port")?;
            let (mut claimed, mut refused, mut empty) = (0, 0, 0);
            for proxy_port in from..=to {
                let req = Request::ClaimAccepted {
                    listen_port: 0,
                    proxy_port,
                    rings: false,
                };
                match request(sock.as_raw_fd(), req)?.0 {
                    Reply::Claimed { peer: Some(_), .. } => claimed += 1,
                    Reply::Error { .. } => refused += 1,
                    _ => empty += 1,
                }
            }
            println!("claimed={claimed} refused={refused} empty={empty}");
            return Ok(());
        }
    }
    for json in rest {
        let req: Request = serde_json::from_str(json).map_err(|e| format!("{json}: {e}"))?;
        let (reply, fds) = request(sock.as_raw_fd(), req)?;
        println!(
            "{} fds={fds}",
            serde_json::to_string(&reply).map_err(|e| e.to_string())?
        );
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("weft-control-raw: {e}");
        std::process::exit(1);
    }
}
