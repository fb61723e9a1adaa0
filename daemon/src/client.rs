//! The client side of the control socket, used by the `weft` CLI and by tests.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;
use weft_ipc::control::Incoming;
use weft_ipc::{fdpass, ClientKind, Event, Reply, Request, Welcome, MAX_MESSAGE};

pub struct ControlClient {
    fd: OwnedFd,
    pub welcome: Welcome,
    buf: Vec<u8>,
    /// Events that arrived while waiting for a reply.
    pending_events: std::collections::VecDeque<(Event, Option<OwnedFd>)>,
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl ControlClient {
    pub fn connect(path: &Path, kind: ClientKind) -> io::Result<ControlClient> {
        // SAFETY: plain socket creation and connect with a valid sockaddr_un.
        let fd = unsafe {
            let raw = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(raw)
        };
        // SAFETY: sockaddr_un is plain data.
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        if bytes.len() >= sa.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "socket path too long",
            ));
        }
        for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        // SAFETY: as above.
        if unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                len,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        let timeout = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: setting a receive timeout with a valid timeval.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let mut c = ControlClient {
            fd,
            welcome: Welcome {
                node: weft_core::NodeId(0),
                proxy_ip: [127, 0, 0, 1].into(),
                nodes: vec![],
                prefixes: vec![],
            },
            buf: vec![0; MAX_MESSAGE],
            pending_events: Default::default(),
        };
        match c.request(Request::Hello {
            kind,
            pid: std::process::id(),
        })? {
            Reply::Welcome(w) => c.welcome = w,
            other_reply => return Err(other(format!("unexpected hello reply: {other_reply:?}"))),
        }
        Ok(c)
    }

    pub fn request(&mut self, req: Request) -> io::Result<Reply> {
        self.request_with_fd(req, None).map(|(r, _)| r)
    }

    /// Sends a request (with an fd if given) and waits for its reply (and any fd on it).
    pub fn request_with_fd(
        &mut self,
        req: Request,
        fd: Option<RawFd>,
    ) -> io::Result<(Reply, Option<OwnedFd>)> {
        let rec = req.encode().map_err(|e| other(e.to_string()))?;
        fdpass::send_record(self.fd.as_raw_fd(), &rec, fd.as_slice())?;
        loop {
            match self.receive()? {
                (Incoming::Reply(r), fd) => return Ok((r, fd)),
                (Incoming::Event(e), fd) => self.pending_events.push_back((e, fd)),
            }
        }
    }

    fn receive(&mut self) -> io::Result<(Incoming, Option<OwnedFd>)> {
        let mut rec = fdpass::recv_record(self.fd.as_raw_fd(), &mut self.buf, 0)?;
        if rec.is_eof() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the control connection",
            ));
        }
        let msg = Incoming::decode(&self.buf[..rec.len]).map_err(|e| other(e.to_string()))?;
        Ok((msg, rec.take_fd()))
    }

    /// Waits for the next unsolicited event (`None` on timeout).
    pub fn next_event(
        &mut self,
        timeout: Option<Duration>,
    ) -> io::Result<Option<(Event, Option<OwnedFd>)>> {
        if let Some(e) = self.pending_events.pop_front() {
            return Ok(Some(e));
        }
        let tv = match timeout {
            Some(t) => libc::timeval {
                tv_sec: t.as_secs() as libc::time_t,
                tv_usec: t.subsec_micros() as libc::suseconds_t,
            },
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        // SAFETY: setting a receive timeout with a valid timeval (0 = block forever).
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        match self.receive() {
            Ok((Incoming::Event(e), fd)) => Ok(Some((e, fd))),
            Ok((Incoming::Reply(r), _)) => Err(other(format!("unexpected reply: {r:?}"))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Turns an error reply into an `io::Error` carrying the errno.
pub fn check(reply: Reply) -> io::Result<Reply> {
    match reply {
        Reply::Error { errno, message } => Err(io::Error::new(
            io::Error::from_raw_os_error(errno).kind(),
            message,
        )),
        r => Ok(r),
    }
}
