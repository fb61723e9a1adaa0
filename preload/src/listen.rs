//! Listeners stay kernel sockets, so ordinary clients keep arriving; a listener on a wildcard
//! or on this node's address is also registered with the daemon, which connects each overlay
//! session to it from its proxy address. `accept` recognises those connections by their peer
//! (on `proxy_ip`), claims the session and puts it in place of the accepted fd.

use crate::addr::{self, Ip, SockAddr};
use crate::fdtable::{Carry, Kind};
use crate::guard::KeepErrno;
use crate::log::debug;
use crate::sockopt::Opts;
use crate::stream::{self, ConnectState, Stream};
use crate::{control, fdtable, real, release, state, sys};
use libc::{c_int, sockaddr, sockaddr_storage, socklen_t};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use weft_ipc::{ListenDelivery, Reply, Request};

/// Where the daemon should connect to reach the kernel listener bound at `a`, if overlay
/// clients belong on it at all (a wildcard, or this node's address).
fn inject_address(fd: c_int, a: &SockAddr) -> Option<SocketAddrV4> {
    match a.ip {
        // A v6-only socket takes no IPv4, and the overlay is IPv4.
        Ip::V6Any if sys::sockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) == Some(1) => None,
        Ip::V6Any => Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, a.port)),
        Ip::V4(ip) if ip.is_unspecified() => Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, a.port)),
        Ip::V4(ip) => {
            let (node, _) = control::local_addresses()?;
            (ip == node).then_some(SocketAddrV4::new(ip, a.port))
        }
        Ip::V6Other => None,
    }
}

/// The backlog a successful `listen(fd, backlog)` put in force: the kernel takes a negative
/// or too large one as `net.core.somaxconn`.
fn effective_backlog(backlog: c_int) -> u32 {
    static SOMAXCONN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut max = SOMAXCONN.load(std::sync::atomic::Ordering::Relaxed);
    if max == 0 {
        max = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(4096);
        SOMAXCONN.store(max, std::sync::atomic::Ordering::Relaxed);
    }
    u32::try_from(backlog).map_or(max, |b| b.min(max))
}

/// After a successful real `listen()`: register the port for overlay clients, with the
/// backlog the daemon paces its injected connections to (again when `listen()` changes it).
pub fn after_listen(fd: c_int, backlog: c_int) {
    let _errno = KeepErrno::new();
    fdtable::mark_candidate(fd, false);
    if !state::in_owner() {
        return;
    }
    let again = matches!(state::lock().table.get(fd), Some(Kind::Listener { .. }));
    let Some(a) = sys::local_addr(fd).and_then(|(ss, len)| addr::parse_storage(&ss, len)) else {
        return;
    };
    let Some(inject) = inject_address(fd, &a) else {
        return;
    };
    let backlog = effective_backlog(backlog);
    let req = Request::Listen {
        port: a.port,
        delivery: ListenDelivery::Inject(SocketAddr::V4(inject)),
        backlog,
    };
    match control::request(req) {
        Ok(_) if again => debug!("listener fd {fd} on port {}: backlog now {backlog}", a.port),
        Ok(_) => {
            debug!(
                "listener fd {fd} on port {} registered (inject at {inject}, backlog {backlog})",
                a.port
            );
            let mut st = state::lock();
            let carry = match st.table.get_mut(fd) {
                Some(Kind::Unconnected(c)) => std::mem::take(c),
                _ => Carry::default(),
            };
            st.listen_ports.insert(a.port);
            let released = st.table.set(
                fd,
                Kind::Listener {
                    port: a.port,
                    owner: sys::getpid(),
                    carry,
                },
            );
            drop(st);
            release::release(released);
        }
        Err(e) => debug!(
            "listener fd {fd} on port {}: daemon refused (errno {e}); kernel clients only",
            a.port
        ),
    }
}

/// `accept`/`accept4` (`flags: None` for plain accept).
///
/// # Safety
/// `addr`/`len` as the program passed them.
pub unsafe fn accept(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: Option<c_int>,
) -> c_int {
    // An unusable address buffer: the kernel's own answer (it accepts, then fails the copy).
    if !addr.is_null() && (len.is_null() || (*len as i32) < 0) {
        return match flags {
            Some(f) => real::accept4(fd, addr, len, f),
            None => real::accept(fd, addr, len),
        };
    }
    let mut ss: sockaddr_storage = std::mem::zeroed();
    let mut sl = std::mem::size_of::<sockaddr_storage>() as socklen_t;
    let ssp = &mut ss as *mut sockaddr_storage as *mut sockaddr;
    let nfd = match flags {
        Some(f) => real::accept4(fd, ssp, &mut sl, f),
        None => real::accept(fd, ssp, &mut sl),
    };
    if nfd < 0 {
        return nfd;
    }
    let _errno = KeepErrno::new();
    release::forget_stale(nfd);
    match claim(fd, nfd, &ss, sl, flags.unwrap_or(0)) {
        Some(peer) => addr::write_out(ss.ss_family as c_int, peer, addr, len),
        None => addr::copy_out(&ss, sl, addr, len),
    }
    nfd
}

/// An accepted connection from the daemon's proxy address: swap in the overlay session.
fn claim(
    listener: c_int,
    nfd: c_int,
    ss: &sockaddr_storage,
    sl: socklen_t,
    flags: c_int,
) -> Option<SocketAddrV4> {
    let from = addr::parse_storage(ss, sl)?.v4()?;
    if !from.ip().is_loopback() || !state::in_owner() {
        return None;
    }
    let (_, proxy_ip) = control::local_addresses()?;
    if *from.ip() != proxy_ip {
        return None;
    }
    let listen_port = sys::local_addr(listener)
        .and_then(|(a, l)| addr::parse_storage(&a, l))?
        .port;
    let rings = crate::rings::wanted_for(nfd);
    let req = Request::ClaimAccepted {
        listen_port,
        proxy_port: from.port(),
        rings,
    };
    // The accepted connection goes along: holding it is what entitles this process to the
    // session, whatever its uid (a server that accepts after dropping privileges).
    let (peer, local, session, ring_fds) = match control::request_fds(req, Some(nfd)) {
        Ok((
            Reply::Claimed {
                peer: Some(peer),
                local,
                rings,
            },
            fds,
        )) if !fds.is_empty() => {
            let mut fds = fds.into_iter();
            let session = fds.next()?;
            (peer, local, session, rings.then(|| fds.collect::<Vec<_>>()))
        }
        Ok(_) => return None,
        Err(e) => {
            debug!("claim of {from} on port {listen_port} failed: errno {e}");
            return None;
        }
    };
    let domain = ss.ss_family as c_int;
    let carry = match state::lock().table.get(listener) {
        Some(Kind::Listener { carry, .. }) => carry.clone(),
        _ => Carry::default(),
    };
    if ring_fds.is_some() {
        // The daemon made the send buffer small for ring mode; the program's size is kept.
        let ring_carry = Carry {
            sndbuf: None,
            ..carry.clone()
        };
        stream::apply_buffers(&ring_carry, session.as_raw_fd(), None);
    } else {
        stream::apply_buffers(&carry, session.as_raw_fd(), None);
    }
    let opts = Opts::snapshot(listener, domain);
    // An accepted socket inherits SO_KEEPALIVE from its listener.
    if sys::sockopt_int(listener, libc::SOL_SOCKET, libc::SO_KEEPALIVE).is_some_and(|v| v != 0) {
        sys::set_sockopt_int(session.as_raw_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    }
    let cloexec = if flags & libc::SOCK_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    let nonblock = if flags & libc::SOCK_NONBLOCK != 0 {
        libc::O_NONBLOCK
    } else {
        0
    };
    // SAFETY: replacing the freshly accepted fd (not yet seen by the program).
    unsafe {
        if real::dup3(session.as_raw_fd(), nfd, cloexec) < 0 {
            debug!(
                "claim: dup3 onto {nfd} failed: errno {}",
                crate::guard::errno()
            );
            return None;
        }
        real::fcntl(nfd, libc::F_SETFL, nonblock as libc::c_ulong);
    }
    drop(session);
    debug!(
        "accepted overlay session from {} on fd {nfd}",
        peer.socket_addr()
    );
    let inode = sys::inode(nfd).unwrap_or(0);
    stream::push_options(nfd, inode, &opts, true);
    let s = Stream {
        inode,
        domain,
        state: ConnectState::Established { acknowledged: true },
        local,
        remote: Some(peer),
        opts,
        eof_checked: false,
    };
    let released = {
        let mut st = state::lock();
        if let Some(fds) = ring_fds {
            stream::install_ring(nfd, fds, true, &carry);
        }
        st.table.set(nfd, Kind::Stream(Box::new(s)))
    };
    release::release(released);
    Some(peer.socket_addr())
}
