//! Listening ports and the hand-over of accepted sessions: either to the CLI over its control
//! connection, or to a shimmed application's kernel listener, which the daemon connects to
//! from its proxy address so that the application's own `accept` wakes up; the shim then
//! claims the session by the proxy port it sees as the peer.

use super::streams::{socketpair, Phase};
use super::Daemon;
use crate::overlay::SessionId;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};
use tracing::{debug, warn};
use weft_core::Endpoint;
use weft_ipc::{Event, ListenDelivery};

/// An application that does not accept within this long loses the session.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(120);

struct Claim {
    session: SessionId,
    /// The listener's uid: only it may claim the session.
    uid: u32,
    app_end: OwnedFd,
    /// The kernel connection that woke the application's listener; dropped once claimed.
    _kernel: OwnedFd,
    expires: Instant,
}

#[derive(Default)]
pub struct Listeners {
    /// Port → (control connection, delivery, its uid), most recent last.
    ports: HashMap<u16, Vec<(usize, ListenDelivery, u32)>>,
    claims: HashMap<u16, Claim>,
}

impl Listeners {
    /// Returns true if this is the port's first listener.
    pub fn add(&mut self, port: u16, conn: usize, delivery: ListenDelivery, uid: u32) -> bool {
        let v = self.ports.entry(port).or_default();
        v.retain(|(c, d, _)| !(*c == conn && *d == delivery));
        v.push((conn, delivery, uid));
        v.len() == 1
    }

    /// A uid other than `uid` listening on `port`, if any.
    pub fn other_owner(&self, port: u16, uid: u32) -> Option<u32> {
        self.ports
            .get(&port)
            .and_then(|v| v.iter().map(|(_, _, u)| *u).find(|u| *u != uid))
    }

    /// Returns true if the port has no listener left.
    pub fn remove(&mut self, port: u16, conn: usize) -> bool {
        let Some(v) = self.ports.get_mut(&port) else {
            return false;
        };
        if let Some(i) = v.iter().rposition(|(c, _, _)| *c == conn) {
            v.remove(i);
        }
        if v.is_empty() {
            self.ports.remove(&port);
            return true;
        }
        false
    }

    /// A control connection went away: the ports it was the last listener on.
    pub fn drop_client(&mut self, conn: usize) -> Vec<u16> {
        let mut emptied = Vec::new();
        self.ports.retain(|port, v| {
            v.retain(|(c, _, _)| *c != conn);
            if v.is_empty() {
                emptied.push(*port);
            }
            !v.is_empty()
        });
        emptied
    }

    fn current(&self, port: u16) -> Option<(usize, ListenDelivery, u32)> {
        self.ports.get(&port).and_then(|v| v.last().copied())
    }

    /// The uid a waiting session at `proxy_port` belongs to.
    pub fn claim_owner(&self, proxy_port: u16) -> Option<u32> {
        self.claims.get(&proxy_port).map(|c| c.uid)
    }

    pub fn claim(&mut self, proxy_port: u16) -> Option<(SessionId, OwnedFd)> {
        self.claims
            .remove(&proxy_port)
            .map(|c| (c.session, c.app_end))
    }

    /// The application closed the kernel connection that stood for an unclaimed session
    /// (typically: it closed its listener with the connection still in the backlog, and the
    /// kernel reset it). Returns the session to abort; `None` while it is still waiting.
    fn abandoned(&mut self, proxy_port: u16) -> Option<SessionId> {
        let c = self.claims.get(&proxy_port)?;
        let mut b = [0u8; 1];
        // SAFETY: a one-byte peek into a local buffer on a socket we own.
        let n = unsafe {
            libc::recv(
                c._kernel.as_raw_fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let gone =
            n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock);
        if gone {
            self.claims.remove(&proxy_port).map(|c| c.session)
        } else {
            None
        }
    }

    /// Sessions whose application never accepted them.
    pub fn expire_claims(&mut self) -> Vec<SessionId> {
        let now = Instant::now();
        let mut gone = Vec::new();
        self.claims.retain(|_, c| {
            let keep = c.expires > now;
            if !keep {
                gone.push(c.session);
            }
            keep
        });
        gone
    }
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Connects (non-blocking) from `from_ip` to `to`; returns the socket and its local port.
fn inject_connect(from_ip: Ipv4Addr, to: SocketAddrV4) -> io::Result<(OwnedFd, u16)> {
    // SAFETY: socket/bind/connect/getsockname with valid sockaddr_in values; the fd is owned.
    unsafe {
        let raw = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sockaddr_in(SocketAddrV4::new(from_ip, 0));
        if libc::bind(raw, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let dst = sockaddr_in(to);
        if libc::connect(raw, &dst as *const _ as *const libc::sockaddr, len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut glen = len;
        if libc::getsockname(raw, &mut got as *mut _ as *mut libc::sockaddr, &mut glen) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((fd, u16::from_be(got.sin_port)))
    }
}

/// Where to connect to reach a kernel listener bound to `addr`.
fn connectable(addr: SocketAddr) -> Option<SocketAddrV4> {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => Ipv4Addr::LOCALHOST,
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) if v6.is_unspecified() => Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
    };
    Some(SocketAddrV4::new(ip, addr.port()))
}

impl Daemon {
    /// Readiness on the kernel connection of an unclaimed session.
    pub(super) fn claim_event(&mut self, proxy_port: u16) {
        if let Some(id) = self.listeners.abandoned(proxy_port) {
            debug!(
                proxy_port,
                "injected connection dropped before it was claimed"
            );
            let now = self.clock.now();
            self.node.session_abort(now, id);
        }
    }

    /// A listener accepted a session: hand it to whoever listens on the port.
    pub(super) fn incoming_session(&mut self, id: SessionId, port: u16, remote: Endpoint) {
        let now = self.clock.now();
        let Some((conn, delivery, uid)) = self.listeners.current(port) else {
            self.node.session_abort(now, id);
            return;
        };
        let (ours, theirs) = match socketpair() {
            Ok(p) => p,
            Err(e) => {
                warn!("socketpair for an incoming session: {e}");
                return self.node.session_abort(now, id);
            }
        };
        let inode = super::streams::inode_of(theirs.as_raw_fd()).unwrap_or(0);
        // A shimmed listener's session waits for its claim, which says whether the app wants
        // ring mode; the CLI takes plain bytes at once.
        let phase = match delivery {
            ListenDelivery::Control => Phase::Established,
            ListenDelivery::Inject(_) => Phase::Unclaimed,
        };
        if let Err(e) = self.attach_stream(id, ours, inode, uid, phase, 0) {
            warn!("attach incoming session: {e}");
            return self.node.session_abort(now, id);
        }
        match delivery {
            ListenDelivery::Control => {
                let Ok(rec) = (Event::Incoming { port, peer: remote }).encode() else {
                    return;
                };
                let sent = self
                    .conns
                    .get_mut(&conn)
                    .map(|c| c.event(&rec, Some(theirs.as_raw_fd())));
                if !matches!(sent, Some(Ok(true))) {
                    debug!(port, "listener could not take the session");
                    self.node.session_abort(now, id);
                }
            }
            ListenDelivery::Inject(addr) => {
                let Some(to) = connectable(addr) else {
                    return self.node.session_abort(now, id);
                };
                match inject_connect(self.cfg.proxy_ip, to) {
                    Ok((kernel, proxy_port)) => {
                        // Watch it: if the application drops it unclaimed, the overlay client
                        // must hear at once, as a kernel client would, not after the timeout.
                        let _ = self.poll.registry().register(
                            &mut SourceFd(&kernel.as_raw_fd()),
                            Token(super::CLAIM_BASE + proxy_port as usize),
                            Interest::READABLE,
                        );
                        debug!(port, proxy_port, %remote, "session waiting for the application's accept");
                        self.listeners.claims.insert(
                            proxy_port,
                            Claim {
                                session: id,
                                uid,
                                app_end: theirs,
                                _kernel: kernel,
                                expires: Instant::now() + CLAIM_TIMEOUT,
                            },
                        );
                    }
                    Err(e) => {
                        debug!(port, "cannot reach the application's listener at {to}: {e}");
                        self.node.session_abort(now, id);
                    }
                }
            }
        }
    }
}
