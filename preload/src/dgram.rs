//! Datagrams stay on kernel UDP sockets. An overlay peer is represented by a daemon-owned
//! proxy address on `proxy_ip`: sending to the proxy from local port P leaves the overlay from
//! (this node, P); datagrams from the overlay arrive at the socket from the peer's proxy. The
//! shim registers the socket's port (`BindDatagram` with its kernel address), swaps overlay
//! destinations for proxies on the way out and proxies for overlay sources on the way in, so
//! kernel readiness, `connect()`ed demultiplexing, `MSG_PEEK` and timeouts all stay native.

use crate::addr::{self, Ip, SockAddr};
use crate::fdtable::{self, Kind};
use crate::guard::{fail, KeepErrno};
use crate::log::debug;
use crate::{control, real, release, state, sys};
use libc::{c_int, sockaddr, sockaddr_storage, socklen_t};
use std::net::{Ipv4Addr, SocketAddrV4};
use weft_core::Endpoint;
use weft_ipc::{Reply, Request};

fn is_dgram(fd: c_int) -> bool {
    sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_DGRAM)
}

fn registered_port(fd: c_int) -> Option<u16> {
    if fdtable::flags(fd) & fdtable::TRACKED == 0 {
        return None;
    }
    match state::lock().table.get(fd) {
        Some(Kind::Dgram { port, .. }) => *port,
        _ => None,
    }
}

/// Registers the socket's port with the daemon (binding it to the wildcard first if it is not
/// bound, as a first `sendto` would); returns the port.
pub(crate) fn ensure_registered(fd: c_int, domain: c_int) -> Result<u16, i32> {
    if let Some(port) = registered_port(fd) {
        return Ok(port);
    }
    let local = |fd| sys::local_addr(fd).and_then(|(ss, len)| addr::parse_storage(&ss, len));
    let mut a = local(fd).ok_or(libc::EINVAL)?;
    if a.port == 0 {
        // A group member gets its delivery address rather than the wildcard.
        crate::multicast::before_implicit_bind(fd, domain)?;
        a = local(fd).ok_or(libc::EINVAL)?;
    }
    if a.port == 0 {
        let (ss, len) = addr::wildcard(domain);
        // SAFETY: a valid wildcard sockaddr of its length.
        if unsafe { real::bind(fd, &ss as *const _ as *const sockaddr, len) } != 0 {
            return Err(crate::guard::errno());
        }
        a = local(fd).ok_or(libc::EINVAL)?;
    }
    let deliver_ip = match a.ip {
        Ip::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST,
        Ip::V4(ip) => ip,
        Ip::V6Any if sys::sockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) != Some(1) => {
            Ipv4Addr::LOCALHOST
        }
        // Bound where IPv4 cannot reach it.
        Ip::V6Any | Ip::V6Other => return Err(libc::ENETUNREACH),
    };
    register_port(a.port, SocketAddrV4::new(deliver_ip, a.port))?;
    debug!(
        "datagram fd {fd} registered on port {} (deliver to {deliver_ip})",
        a.port
    );
    let mut st = state::lock();
    if let Some(Kind::Dgram { port, owner, .. }) = st.table.get_mut(fd) {
        // A multicast member or sender: keep what it holds.
        *port = Some(a.port);
        *owner = sys::getpid();
        return Ok(a.port);
    }
    let released = st.table.set(
        fd,
        Kind::Dgram {
            port: Some(a.port),
            owner: sys::getpid(),
            remote: None,
            groups: None,
        },
    );
    drop(st);
    release::release(released);
    Ok(a.port)
}

fn register_port(port: u16, deliver_to: SocketAddrV4) -> Result<(), i32> {
    if let Some(n) = state::lock().dgram_ports.get_mut(&port) {
        *n += 1;
        return Ok(());
    }
    match control::request(Request::BindDatagram {
        port,
        deliver_to: Some(deliver_to),
    }) {
        Ok(Reply::Bound { .. } | Reply::Ok) => {
            *state::lock().dgram_ports.entry(port).or_insert(0) += 1;
            Ok(())
        }
        // Another program on this node holds the port (the kernel let both bind it, as with
        // SO_REUSEADDR): this socket still sends from it, and unicast for the port goes to
        // the other one, as the kernel would pick one socket too.
        Err(libc::EADDRINUSE) => {
            debug!("port {port} is registered by another program: sharing it");
            Ok(())
        }
        Ok(_) => Err(libc::EPROTO),
        Err(e) => Err(e),
    }
}

/// The kernel address that stands for `remote` (cached: proxies are stable per remote).
pub(crate) fn proxy_for(remote: Endpoint) -> Result<SocketAddrV4, i32> {
    if let Some(a) = state::lock().proxy_of.get(&remote) {
        return Ok(*a);
    }
    match control::request(Request::ProxyFor { remote }) {
        Ok(Reply::Proxy { addr }) => {
            let mut st = state::lock();
            st.proxy_of.insert(remote, addr);
            st.remote_of.insert(addr.port(), remote);
            st.proxy_at.insert(addr, Some(remote));
            Ok(addr)
        }
        Ok(_) => Err(libc::EPROTO),
        Err(e) => Err(e),
    }
}

/// Exact proxy addresses remembered (including "not a proxy") before the cache starts over.
const PROXY_AT_CACHE: usize = 4096;

/// The overlay endpoint behind the proxy at exactly `at` (kernel group delivery puts the
/// proxies of each node on an alias address of their own).
fn resolve_at(at: SocketAddrV4) -> Option<Endpoint> {
    if let Some(known) = state::lock().proxy_at.get(&at) {
        return *known;
    }
    let remote = match control::request(Request::ResolveProxyAt { addr: at }) {
        Ok(Reply::Resolved { remote }) => remote,
        _ => return None,
    };
    let mut st = state::lock();
    if st.proxy_at.len() >= PROXY_AT_CACHE {
        st.proxy_at.clear();
    }
    st.proxy_at.insert(at, remote);
    if let Some(ep) = remote {
        st.proxy_of.insert(ep, at);
    }
    remote
}

/// The overlay endpoint behind a proxy port.
fn resolve(proxy_port: u16) -> Option<Endpoint> {
    if let Some(ep) = state::lock().remote_of.get(&proxy_port) {
        return Some(*ep);
    }
    match control::request(Request::ResolveProxy { proxy_port }) {
        Ok(Reply::Resolved { remote: Some(ep) }) => {
            let mut st = state::lock();
            st.remote_of.insert(proxy_port, ep);
            st.proxy_of.insert(
                ep,
                SocketAddrV4::new(control::cached_proxy_ip()?, proxy_port),
            );
            Some(ep)
        }
        _ => None,
    }
}

/// After a successful real `bind()`: a datagram socket on a wildcard or this node's address
/// receives overlay datagrams even if it never sends.
pub fn after_bind(fd: c_int, a: &SockAddr) {
    let _errno = KeepErrno::new();
    if !is_dgram(fd) {
        return;
    }
    let wanted = a.is_wildcard()
        || match a.ip {
            Ip::V4(ip) => control::local_addresses().is_some_and(|(node, _)| node == ip),
            _ => false,
        };
    if wanted {
        if let Err(e) = ensure_registered(fd, a.family) {
            debug!(
                "datagram fd {fd} bound to port {}: not registered (errno {e})",
                a.port
            );
        }
    }
}

/// `connect()` of a datagram socket to an overlay endpoint: connect to its proxy instead.
pub fn connect(fd: c_int, domain: c_int, dst: Endpoint) -> c_int {
    if let Err(e) = ensure_registered(fd, domain) {
        return fail(e);
    }
    let proxy = match proxy_for(dst) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let (ss, len) = addr::encode(domain, proxy);
    // SAFETY: a valid sockaddr of its length.
    let rc = unsafe { real::connect(fd, &ss as *const _ as *const sockaddr, len) };
    if rc == 0 {
        set_remote(fd, Some(dst));
    }
    rc
}

/// The socket connects elsewhere (or dissolves its association): forget its overlay peer.
pub fn set_remote(fd: c_int, to: Option<Endpoint>) {
    if let Some(Kind::Dgram { remote, .. }) = state::lock().table.get_mut(fd) {
        *remote = to;
    }
}

/// What to do with a destination address passed to `sendto`/`sendmsg`/`sendmmsg`.
pub enum Dest {
    Keep,
    Replace(sockaddr_storage, socklen_t),
    /// A session: TCP ignores the destination of a connected socket (`AF_UNIX` would refuse).
    Strip,
    Fail(i32),
}

/// # Safety
/// `addr` readable for `len` bytes (or null).
pub unsafe fn destination(fd: c_int, addr: *const sockaddr, len: socklen_t) -> Dest {
    if addr.is_null() {
        return Dest::Keep;
    }
    let flags = fdtable::flags(fd);
    if crate::stream::is_session(fd) {
        return Dest::Strip;
    }
    let Some(sa) = addr::parse(addr, len) else {
        return Dest::Keep;
    };
    let Some(dst) = sa.v4() else {
        return Dest::Keep;
    };
    if dst.ip().is_multicast() {
        return crate::multicast::destination(fd, sa.family, dst);
    }
    if !control::is_overlay(*dst.ip()) || !state::in_owner() {
        if state::in_owner() && control::refuse_fallback(*dst.ip()) {
            return Dest::Fail(libc::ENETUNREACH);
        }
        return Dest::Keep;
    }
    let remote = Endpoint::from(dst);
    // Fast path: a registered socket and a known proxy.
    if flags & fdtable::TRACKED != 0 {
        let st = state::lock();
        if let (Some(Kind::Dgram { .. }), Some(p)) = (st.table.get(fd), st.proxy_of.get(&remote)) {
            let (ss, l) = addr::encode(sa.family, *p);
            return Dest::Replace(ss, l);
        }
    }
    if registered_port(fd).is_none() && !is_dgram(fd) {
        return Dest::Keep;
    }
    if let Err(e) = ensure_registered(fd, sa.family) {
        return Dest::Fail(e);
    }
    match proxy_for(remote) {
        Ok(p) => {
            let (ss, l) = addr::encode(sa.family, p);
            Dest::Replace(ss, l)
        }
        Err(e) => Dest::Fail(e),
    }
}

/// If a kernel-filled source address is one of the daemon's proxies, the overlay endpoint it
/// stands for (in the same family).
pub fn overlay_source(ss: &sockaddr_storage, len: socklen_t) -> Option<(c_int, SocketAddrV4)> {
    let sa = addr::parse_storage(ss, len)?;
    let a = sa.v4()?;
    if !a.ip().is_loopback() || !state::in_owner() {
        return None;
    }
    let proxy_ip = match control::cached_proxy_ip() {
        Some(p) => p,
        // A loopback source before we ever talked to the daemon (an inherited socket).
        None => control::local_addresses()?.1,
    };
    let alias = *a.ip() != proxy_ip && crate::multicast::kernel::in_proxy_net(*a.ip());
    if *a.ip() != proxy_ip && !alias {
        return None;
    }
    let _errno = KeepErrno::new();
    let remote = if alias {
        resolve_at(a)
    } else {
        resolve(a.port())
    };
    remote.map(|ep| (sa.family, ep.socket_addr()))
}

/// A datagram from a proxy arrived on loopback; the kernel's would have come in on the
/// node's interface: `IP_PKTINFO` says so (its index, its address where the datagram's
/// local address was the loopback delivery address).
///
/// # Safety
/// `msg` is the program's `msghdr` just filled by `recvmsg`/`recvmmsg`.
pub unsafe fn overlay_pktinfo(msg: *mut libc::msghdr) {
    if msg.is_null() || (*msg).msg_control.is_null() {
        return;
    }
    let Some((node, index)) = crate::multicast::kernel::node_interface() else {
        return;
    };
    if index == 0 || index == crate::multicast::kernel::LOOPBACK_INDEX {
        return;
    }
    let mut c = libc::CMSG_FIRSTHDR(msg);
    while !c.is_null() {
        let full = libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
        if (*c).cmsg_level == libc::IPPROTO_IP
            && (*c).cmsg_type == libc::IP_PKTINFO
            && (*c).cmsg_len as usize >= full
        {
            let data = libc::CMSG_DATA(c) as *mut libc::in_pktinfo;
            let mut pi = std::ptr::read_unaligned(data);
            let node_be = u32::from(node).to_be();
            if pi.ipi_ifindex == crate::multicast::kernel::LOOPBACK_INDEX as c_int {
                pi.ipi_ifindex = index as c_int;
            }
            if Ipv4Addr::from(u32::from_be(pi.ipi_spec_dst.s_addr)).is_loopback() {
                pi.ipi_spec_dst.s_addr = node_be;
            }
            if Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr)).is_loopback() {
                pi.ipi_addr.s_addr = node_be;
            }
            std::ptr::write_unaligned(data, pi);
        }
        c = libc::CMSG_NXTHDR(msg, c);
    }
}

/// `getpeername` of a datagram socket connected to a proxy: the overlay peer.
pub fn overlay_peer(
    fd: c_int,
    ss: &sockaddr_storage,
    len: socklen_t,
) -> Option<(c_int, SocketAddrV4)> {
    let a = addr::parse_storage(ss, len)?.v4()?;
    let proxy = control::cached_proxy_ip() == Some(*a.ip())
        || crate::multicast::kernel::in_proxy_net(*a.ip());
    if !a.ip().is_loopback() || !proxy || !is_dgram(fd) {
        return None;
    }
    overlay_source(ss, len)
}

/// `getsockname` of a datagram socket talking to an overlay peer: this node's address (the
/// kernel picked a loopback source to reach the proxy).
pub fn overlay_local(
    fd: c_int,
    ss: &sockaddr_storage,
    len: socklen_t,
) -> Option<(c_int, SocketAddrV4)> {
    if fdtable::flags(fd) & fdtable::TRACKED == 0 {
        return None;
    }
    let sa = addr::parse_storage(ss, len)?;
    let a = sa.v4()?;
    let connected = matches!(
        state::lock().table.get(fd),
        Some(Kind::Dgram {
            remote: Some(_),
            ..
        })
    );
    if !connected || !a.ip().is_loopback() {
        return None;
    }
    let (node, _) = crate::view::addresses()?;
    Some((sa.family, SocketAddrV4::new(node, a.port())))
}
