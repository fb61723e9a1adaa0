//! Listening ports and the hand-over of accepted sessions: either to the CLI over its control
//! connection, or to a shimmed application's kernel listener, which the daemon connects to
//! from its proxy address so that the application's own `accept` wakes up; the shim then
//! claims the session by the proxy port it sees as the peer. When to inject is decided by
//! the sans-I/O [`Backlogs`] (at most what the listener's accept queue holds, the rest held
//! in order until `accept` makes room); this file carries its actions out.

use super::streams::{socketpair, Phase};
use super::Daemon;
use crate::overlay::SessionId;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tracing::{debug, warn};
use weft_core::Endpoint;
use weft_ipc::{Event, ListenDelivery};

use crate::streams::backlog::{AbortReason, Action, Backlogs};

/// The fds of an injected session until `accept` claims it.
struct Claim {
    session: SessionId,
    /// The listener's uid: only it (or whoever holds the accepted connection) may claim.
    uid: u32,
    app_end: OwnedFd,
    /// The kernel connection that woke the application's listener; dropped once claimed.
    kernel: OwnedFd,
}

#[derive(Default)]
pub struct Listeners {
    /// Port → (control connection, delivery, its uid), most recent last.
    ports: HashMap<u16, Vec<(usize, ListenDelivery, u32)>>,
    /// Injected sessions by the proxy port of their kernel connection.
    claims: HashMap<u16, Claim>,
    /// When injected sessions go to the application.
    pub backlogs: Backlogs,
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

    /// Whether `fd` is the application's end of the kernel connection that stands for the
    /// session waiting at `proxy_port` (its names are ours swapped): whoever holds it accepted
    /// that connection, whatever its uid (a server that accepts after dropping privileges).
    pub fn proves_claim(&self, proxy_port: u16, fd: &OwnedFd) -> bool {
        let Some(c) = self.claims.get(&proxy_port) else {
            return false;
        };
        let names = |fd: &OwnedFd| Some((sock_name(fd, false)?, sock_name(fd, true)?));
        match (names(fd), names(&c.kernel)) {
            (Some((local, peer)), Some((k_local, k_peer))) => local == k_peer && peer == k_local,
            _ => false,
        }
    }

    /// `accept` took the connection from `proxy_port`: its session and the app's end.
    pub fn claim(
        &mut self,
        proxy_port: u16,
        actions: &mut Vec<Action>,
    ) -> Option<(SessionId, OwnedFd)> {
        let c = self.claims.remove(&proxy_port)?;
        self.backlogs
            .note_retransmits(retransmits_of(c.kernel.as_raw_fd()));
        self.backlogs.claimed(proxy_port, actions);
        Some((c.session, c.app_end))
    }

    /// The application closed the kernel connection that stood for an unclaimed session
    /// (typically: it closed its listener with the connection still in the backlog, and the
    /// kernel reset it). True when it did (the backlog then says what to abort).
    fn abandoned(&mut self, proxy_port: u16, actions: &mut Vec<Action>) -> bool {
        let Some(c) = self.claims.get(&proxy_port) else {
            return false;
        };
        let mut b = [0u8; 1];
        // SAFETY: a one-byte peek into a local buffer on a socket we own.
        let n = unsafe {
            libc::recv(
                c.kernel.as_raw_fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let gone =
            n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock);
        if gone {
            self.claims.remove(&proxy_port);
            self.backlogs.abandoned(proxy_port, actions);
        }
        gone
    }
}

/// Segments the kernel retransmitted on an injected connection: a SYN that a full accept
/// queue dropped, which pacing to the backlog is there to avoid.
fn retransmits_of(fd: std::os::fd::RawFd) -> u32 {
    // SAFETY: getsockopt into a zeroed tcp_info of the length passed.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        );
        if rc == 0 {
            info.tcpi_total_retrans
        } else {
            0
        }
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

/// A TCP socket's local (or, with `peer`, remote) IPv4 name.
fn sock_name(fd: &OwnedFd, peer: bool) -> Option<SocketAddrV4> {
    // SAFETY: get{sock,peer}name into a zeroed sockaddr_storage of the size we pass.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let p = &mut ss as *mut _ as *mut libc::sockaddr;
        let rc = if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        };
        if rc != 0 {
            return None;
        }
        match ss.ss_family as libc::c_int {
            libc::AF_INET => {
                let a = &*(&ss as *const _ as *const libc::sockaddr_in);
                Some(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                ))
            }
            libc::AF_INET6 => {
                let a = &*(&ss as *const _ as *const libc::sockaddr_in6);
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).to_ipv4_mapped()?;
                Some(SocketAddrV4::new(ip, u16::from_be(a.sin6_port)))
            }
            _ => None,
        }
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
        let mut actions = Vec::new();
        if self.listeners.abandoned(proxy_port, &mut actions) {
            debug!(
                proxy_port,
                "injected connection dropped before it was claimed"
            );
        }
        self.backlog_actions(actions);
    }

    /// `ClaimAccepted`: the session behind `proxy_port`; its slot goes to the next waiting.
    pub(super) fn claim_accepted(&mut self, proxy_port: u16) -> Option<(SessionId, OwnedFd)> {
        let mut actions = Vec::new();
        let claimed = self.listeners.claim(proxy_port, &mut actions);
        self.backlog_actions(actions);
        claimed
    }

    /// A shimmed listener registered `port` (or called `listen()` again) with `backlog`.
    pub(super) fn listener_backlog(&mut self, port: u16, backlog: u32) {
        let mut actions = Vec::new();
        self.listeners
            .backlogs
            .set_backlog(port, backlog, &mut actions);
        self.backlog_actions(actions);
    }

    /// The last listener on `port` went away.
    pub(super) fn listener_gone(&mut self, port: u16) {
        self.node.unlisten(port);
        let mut actions = Vec::new();
        self.listeners.backlogs.listener_gone(port, &mut actions);
        self.backlog_actions(actions);
    }

    /// A session with no stream ended: if it waited for an accept, it waits no more.
    pub(super) fn backlog_forget(&mut self, id: SessionId) {
        let mut actions = Vec::new();
        if let Some(proxy_port) = self.listeners.backlogs.forget(id, &mut actions) {
            self.listeners.claims.remove(&proxy_port);
        }
        self.backlog_actions(actions);
    }

    /// Injected sessions nobody accepted in time.
    pub(super) fn backlog_timeout(&mut self, now: weft_core::Instant) {
        if self
            .listeners
            .backlogs
            .poll_timeout()
            .is_some_and(|t| t <= now)
        {
            let mut actions = Vec::new();
            self.listeners.backlogs.handle_timeout(now, &mut actions);
            self.backlog_actions(actions);
        }
    }

    /// Carries out what the backlog decided, and what that leads to.
    pub(super) fn backlog_actions(&mut self, mut actions: Vec<Action>) {
        let mut i = 0;
        while i < actions.len() {
            match actions[i] {
                Action::Inject { port, session } => {
                    if let Err(e) = self.inject(port, session) {
                        debug!(port, session, "cannot inject a session: {e}");
                        self.listeners.backlogs.inject_failed(session, &mut actions);
                    }
                }
                Action::Abort {
                    session,
                    proxy_port,
                    reason,
                } => {
                    match reason {
                        AbortReason::Overflow => warn!(
                            session,
                            "accept backlog full: {} sessions already wait; session refused",
                            crate::streams::backlog::MAX_HELD
                        ),
                        _ => debug!(session, ?reason, "session given up before accept"),
                    }
                    if let Some(p) = proxy_port {
                        self.listeners.claims.remove(&p);
                    }
                    let now = self.clock.now();
                    self.node.session_abort(now, session);
                }
            }
            i += 1;
        }
    }

    /// Connects to the application's listener on behalf of `session`.
    fn inject(&mut self, port: u16, id: SessionId) -> io::Result<()> {
        let no = |what: &str| io::Error::new(io::ErrorKind::NotFound, what.to_string());
        let Some((_, ListenDelivery::Inject(addr), uid)) = self.listeners.current(port) else {
            return Err(no("no shimmed listener on the port"));
        };
        if self.node.session_stats(id).is_none() {
            return Err(no("the session is gone"));
        }
        let to = connectable(addr).ok_or_else(|| no("the listener's address"))?;
        let (ours, theirs) = socketpair()?;
        let inode = super::streams::inode_of(theirs.as_raw_fd()).unwrap_or(0);
        // The session waits for its claim, which says whether the app wants ring mode.
        let key = self.attach_stream(id, ours, inode, uid, Phase::Unclaimed, 0)?;
        let (kernel, proxy_port) = match inject_connect(self.cfg.proxy_ip, to) {
            Ok(k) => k,
            Err(e) => {
                self.detach_stream(key);
                return Err(e);
            }
        };
        // Watch it: if the application drops it unclaimed, the overlay client must hear at
        // once, as a kernel client would, not after the timeout.
        let _ = self.poll.registry().register(
            &mut SourceFd(&kernel.as_raw_fd()),
            Token(super::CLAIM_BASE + proxy_port as usize),
            Interest::READABLE,
        );
        debug!(
            port,
            proxy_port,
            session = id,
            "session waiting for the application's accept"
        );
        self.listeners.claims.insert(
            proxy_port,
            Claim {
                session: id,
                uid,
                app_end: theirs,
                kernel,
            },
        );
        self.listeners.backlogs.injected(id, proxy_port);
        Ok(())
    }

    /// A listener accepted a session: hand it to whoever listens on the port.
    pub(super) fn incoming_session(&mut self, id: SessionId, port: u16, remote: Endpoint) {
        let now = self.clock.now();
        let Some((conn, delivery, uid)) = self.listeners.current(port) else {
            self.node.session_abort(now, id);
            return;
        };
        if let ListenDelivery::Inject(_) = delivery {
            debug!(port, session = id, %remote, "session for a shimmed listener");
            let mut actions = Vec::new();
            self.listeners
                .backlogs
                .incoming(now, port, id, &mut actions);
            return self.backlog_actions(actions);
        }
        // The CLI takes plain bytes at once.
        let (ours, theirs) = match socketpair() {
            Ok(p) => p,
            Err(e) => {
                warn!("socketpair for an incoming session: {e}");
                return self.node.session_abort(now, id);
            }
        };
        let inode = super::streams::inode_of(theirs.as_raw_fd()).unwrap_or(0);
        if let Err(e) = self.attach_stream(id, ours, inode, uid, Phase::Established, 0) {
            warn!("attach incoming session: {e}");
            return self.node.session_abort(now, id);
        }
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
}
