//! socket, connect, bind, listen, accept, accept4, getsockname, getpeername, getsockopt,
//! setsockopt.

use super::hook;
use crate::addr;
use crate::fdtable::{self, Carry, Kind, CANDIDATE, TRACKED};
use crate::guard::{fail, KeepErrno};
use crate::release::forget_stale;
use crate::sockopt::{self, Outcome};
use crate::stream::{self, Stream};
use crate::{control, dgram, listen, multicast, real, state, sys};
use libc::{c_int, c_void, sockaddr, socklen_t};
use weft_core::Endpoint;

hook! {
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
        let fd = real::socket(domain, ty, protocol);
        if fd >= 0 {
            let _errno = KeepErrno::new();
            forget_stale(fd);
            let stream = ty & 0xf == libc::SOCK_STREAM;
            if stream && (domain == libc::AF_INET || domain == libc::AF_INET6) {
                fdtable::mark_candidate(fd, true);
            }
        }
        fd
    }

    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        connect_hook(fd, addr, len)
    }

    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        let rc = match multicast::bind(fd, addr, len) {
            Some(rc) => rc,
            None => real::bind(fd, addr, len),
        };
        if rc == 0 && state::in_owner() {
            if let Some(a) = addr::parse(addr, len) {
                dgram::after_bind(fd, &a);
            }
        }
        rc
    }

    fn listen(fd: c_int, backlog: c_int) -> c_int {
        let rc = real::listen(fd, backlog);
        if rc == 0 {
            listen::after_listen(fd, backlog);
        }
        rc
    }

    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        listen::accept(fd, addr, len, None)
    }

    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
        listen::accept(fd, addr, len, Some(flags))
    }

    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        names(fd, addr, len, Which::Local)
    }

    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        names(fd, addr, len, Which::Peer)
    }

    fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int {
        getsockopt_hook(fd, level, name, val, len)
    }

    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int {
        setsockopt_hook(fd, level, name, val, len)
    }
}

unsafe fn connect_hook(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let flags = fdtable::flags(fd);
    let parsed = addr::parse(addr, len);
    if !state::in_owner() {
        return real::connect(fd, addr, len);
    }
    if flags & TRACKED != 0 {
        if let Some(s) = stream::get(fd) {
            let dst = parsed
                .and_then(|a| a.v4())
                .filter(|d| control::is_overlay(*d.ip()))
                .map(Endpoint::from);
            return stream::reconnect(fd, s, dst);
        }
    }
    if let Some(group) = parsed
        .and_then(|a| a.v4())
        .filter(|d| d.ip().is_multicast())
    {
        if let Some(family) = parsed.map(|a| a.family) {
            if let Some(rc) = multicast::connect(fd, family, group) {
                return rc;
            }
        }
    }
    let overlay = parsed
        .and_then(|a| a.v4().map(|d| (a.family, d)))
        .filter(|(_, d)| control::is_overlay(*d.ip()));
    let Some((family, dst)) = overlay else {
        if parsed
            .and_then(|a| a.v4())
            .is_some_and(|d| control::refuse_fallback(*d.ip()))
        {
            return fail(libc::ENETUNREACH);
        }
        // Kernel destination (or AF_UNSPEC): the kernel's socket, untouched.
        if flags & (TRACKED | CANDIDATE) != 0 {
            forget_before_kernel_connect(fd);
        }
        return real::connect(fd, addr, len);
    };
    let domain = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN);
    let ty = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE);
    let v6only = domain == Some(libc::AF_INET6)
        && sys::sockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) == Some(1);
    if domain != Some(family) || v6only {
        return real::connect(fd, addr, len);
    }
    match ty {
        Some(libc::SOCK_STREAM) => stream::connect(fd, family, Endpoint::from(dst)),
        Some(libc::SOCK_DGRAM) => dgram::connect(fd, family, Endpoint::from(dst)),
        _ => real::connect(fd, addr, len),
    }
}

/// A socket about to connect through the kernel: no transplant will carry anything over, and a
/// datagram socket stops talking to its overlay peer.
fn forget_before_kernel_connect(fd: c_int) {
    fdtable::mark_candidate(fd, false);
    let mut st = state::lock();
    match st.table.get_mut(fd) {
        Some(Kind::Unconnected(_)) => {
            st.table.detach(fd);
        }
        Some(Kind::Dgram { remote, .. }) => *remote = None,
        _ => {}
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Local,
    Peer,
}

/// A session's name (the overlay endpoints), or the kernel's with proxies rewritten.
unsafe fn names(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, which: Which) -> c_int {
    let real_call = |out: *mut sockaddr, l: *mut socklen_t| match which {
        Which::Local => real::getsockname(fd, out, l),
        Which::Peer => real::getpeername(fd, out, l),
    };
    if addr.is_null() || len.is_null() || (*len as i32) < 0 || !state::in_owner() {
        return real_call(addr, len);
    }
    if fdtable::flags(fd) & TRACKED != 0 {
        if let Some(s) = stream::get(fd) {
            return session_name(fd, s, which, addr, len);
        }
    }
    let mut ss: libc::sockaddr_storage = std::mem::zeroed();
    let mut sl = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    let rc = real_call(&mut ss as *mut _ as *mut sockaddr, &mut sl);
    if rc != 0 {
        return rc;
    }
    let _errno = KeepErrno::new();
    if ss.ss_family as c_int == libc::AF_UNIX {
        if let Some(s) = stream::adopt(fd) {
            return session_name(fd, s, which, addr, len);
        }
    }
    if which == Which::Local {
        if let Some((shown, shown_len)) = multicast::shown_local(fd, &ss, sl) {
            addr::copy_out(&shown, shown_len, addr, len);
            return 0;
        }
    }
    let rewritten = match which {
        Which::Peer => dgram::overlay_peer(fd, &ss, sl),
        Which::Local => dgram::overlay_local(fd, &ss, sl),
    };
    match rewritten {
        Some((family, a)) => addr::write_out(family, a, addr, len),
        None => addr::copy_out(&ss, sl, addr, len),
    }
    0
}

unsafe fn session_name(
    fd: c_int,
    s: Stream,
    which: Which,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    let name = match which {
        Which::Local => s
            .local
            .or_else(|| stream::session_info(s.inode).and_then(|i| i.local)),
        Which::Peer => {
            let settled = stream::settle(fd).unwrap_or(s.clone());
            match settled.state {
                stream::ConnectState::Established { .. } => settled.remote,
                _ => return fail(libc::ENOTCONN),
            }
        }
    };
    let a = name.unwrap_or_else(|| Endpoint::new(weft_core::NodeId(0), 0));
    addr::write_out(s.domain, a.socket_addr(), addr, len);
    0
}

unsafe fn getsockopt_hook(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    if !state::in_owner() {
        return real::getsockopt(fd, level, name, val, len);
    }
    if let Some(rc) = ring_sndbuf(fd, level, name, val, len) {
        return rc;
    }
    if let Some(rc) = multicast::getsockopt(fd, level, name, val, len) {
        return rc;
    }
    if fdtable::flags(fd) & TRACKED != 0 {
        if let Some(s) = stream::get(fd) {
            return session_getsockopt(fd, s, level, name, val, len);
        }
        if is_udp_offload(level, name) && is_overlay_dgram(fd) {
            return fail(libc::ENOPROTOOPT);
        }
        return real::getsockopt(fd, level, name, val, len);
    }
    let rc = real::getsockopt(fd, level, name, val, len);
    if looks_like_unix(fd, rc, level, name, val) {
        let _errno = KeepErrno::new();
        if let Some(s) = stream::adopt(fd) {
            drop(_errno);
            return session_getsockopt(fd, s, level, name, val, len);
        }
    }
    rc
}

/// `SO_SNDBUF` of a ring fd: what the program set (as the kernel would report it), not the
/// minimal buffer ring mode runs with.
unsafe fn ring_sndbuf(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Option<c_int> {
    if level != libc::SOL_SOCKET || name != libc::SO_SNDBUF || !crate::rings::is_ring(fd) {
        return None;
    }
    if val.is_null() || len.is_null() || (*len as usize) < std::mem::size_of::<c_int>() {
        return None;
    }
    let v = crate::rings::reported_sndbuf(fd)?;
    std::ptr::write_unaligned(val as *mut c_int, v);
    *len = std::mem::size_of::<c_int>() as socklen_t;
    Some(0)
}

/// The answer a session inherited from elsewhere would give before the shim knows it: an
/// `AF_UNIX` domain, or a refusal of TCP/IP options. Only then is it worth asking the daemon.
unsafe fn looks_like_unix(
    fd: c_int,
    rc: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
) -> bool {
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_DOMAIN) => {
            rc == 0 && !val.is_null() && *(val as *const c_int) == libc::AF_UNIX
        }
        (libc::SOL_SOCKET, libc::SO_PROTOCOL) => {
            rc == 0
                && sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) == Some(libc::AF_UNIX)
        }
        (libc::IPPROTO_TCP | libc::IPPROTO_IP | libc::IPPROTO_IPV6, _) => {
            rc != 0 && crate::guard::errno() == libc::EOPNOTSUPP
        }
        _ => false,
    }
}

unsafe fn session_getsockopt(
    fd: c_int,
    s: Stream,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    if level == libc::SOL_SOCKET {
        if len.is_null() {
            return fail(libc::EFAULT);
        }
        let v = match name {
            libc::SO_ERROR => stream::so_error(fd),
            libc::SO_DOMAIN => s.domain,
            libc::SO_PROTOCOL => libc::IPPROTO_TCP,
            libc::SO_PEERCRED => {
                // What TCP reports: no peer process.
                let cred = libc::ucred {
                    pid: 0,
                    uid: 65534,
                    gid: 65534,
                };
                let bytes = std::slice::from_raw_parts(
                    &cred as *const libc::ucred as *const u8,
                    std::mem::size_of::<libc::ucred>(),
                );
                return outcome(sockopt::put_bytes(bytes, val, len));
            }
            _ => return real::getsockopt(fd, level, name, val, len),
        };
        return outcome(sockopt::put_int(v, val, len));
    }
    match s.opts.get(level, name, val, len) {
        Outcome::Pass => real::getsockopt(fd, level, name, val, len),
        Outcome::NeedSession => {
            let info = stream::session_info(s.inode);
            if name == libc::TCP_MAXSEG {
                return outcome(sockopt::put_int(sockopt::mss_of(info.as_ref()), val, len));
            }
            let state = stream::settle(fd).map_or(s.state, |now| now.state);
            let image = sockopt::tcp_info(state.tcp_state(), &info.unwrap_or_default());
            outcome(sockopt::put_bytes(&image, val, len))
        }
        other => outcome(other),
    }
}

fn outcome(o: Outcome) -> c_int {
    match o {
        Outcome::Fail(e) => fail(e),
        _ => 0,
    }
}

fn is_udp_offload(level: c_int, name: c_int) -> bool {
    level == libc::IPPROTO_UDP && (name == libc::UDP_SEGMENT || name == libc::UDP_GRO)
}

fn is_overlay_dgram(fd: c_int) -> bool {
    matches!(state::lock().table.get(fd), Some(Kind::Dgram { .. }))
}

unsafe fn setsockopt_hook(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    if let Some(rc) = multicast::setsockopt(fd, level, name, val, len) {
        return rc;
    }
    let flags = fdtable::flags(fd);
    if !state::in_owner() {
        return real::setsockopt(fd, level, name, val, len);
    }
    let buffer = level == libc::SOL_SOCKET && (name == libc::SO_SNDBUF || name == libc::SO_RCVBUF);
    if buffer
        && crate::rings::is_ring(fd)
        && len as usize >= std::mem::size_of::<c_int>()
        && !val.is_null()
        && crate::rings::set_buffer(fd, name, std::ptr::read_unaligned(val as *const c_int))
            .is_some()
    {
        // Ring mode keeps the socket's own send buffer minimal (credit filler); the size is
        // reported back and applied if the socket ever leaves ring mode.
        return 0;
    }
    if flags & (TRACKED | CANDIDATE) == 0 {
        let rc = real::setsockopt(fd, level, name, val, len);
        let tcp_level = matches!(
            level,
            libc::IPPROTO_TCP | libc::IPPROTO_IP | libc::IPPROTO_IPV6
        );
        if rc != 0
            && tcp_level
            && crate::guard::errno() == libc::EOPNOTSUPP
            && stream::adopt(fd).is_some()
        {
            return setsockopt_hook(fd, level, name, val, len);
        }
        return rc;
    }
    if flags & TRACKED != 0 {
        if is_udp_offload(level, name) && is_overlay_dgram(fd) {
            return fail(libc::ENOPROTOOPT);
        }
        let mut st = state::lock();
        if let Some(Kind::Stream(s)) = st.table.get_mut(fd) {
            let o = s.opts.set(level, name, val, len);
            let inode = s.inode;
            drop(st);
            if sys::inode(fd) != Some(inode) {
                // Stale: forget it and treat the fd as what it is now.
                crate::release::forget_stale(fd);
                return setsockopt_hook(fd, level, name, val, len);
            }
            let rc = match o {
                Outcome::Pass | Outcome::NeedSession => real::setsockopt(fd, level, name, val, len),
                other => outcome(other),
            };
            if rc == 0 && sockopt::drives_session(level, name) {
                let now = match state::lock().table.get(fd) {
                    Some(Kind::Stream(s)) => Some((s.inode, s.opts.clone())),
                    _ => None,
                };
                if let Some((inode, opts)) = now {
                    stream::push_options(fd, inode, &opts, false);
                }
            }
            return rc;
        }
    }
    let rc = real::setsockopt(fd, level, name, val, len);
    let buffer = level == libc::SOL_SOCKET && (name == libc::SO_SNDBUF || name == libc::SO_RCVBUF);
    if rc == 0 && buffer && len as usize >= std::mem::size_of::<c_int>() && !val.is_null() {
        remember_buffer(fd, name, std::ptr::read_unaligned(val as *const c_int));
    }
    rc
}

/// A buffer size the program set on a socket that may still become a session (or a listener
/// whose sessions inherit it).
fn remember_buffer(fd: c_int, name: c_int, v: c_int) {
    let mut st = state::lock();
    let carry = match st.table.get_mut(fd) {
        Some(Kind::Unconnected(c)) | Some(Kind::Listener { carry: c, .. }) => c,
        Some(_) => return,
        None => {
            if fdtable::flags(fd) & CANDIDATE == 0 {
                return;
            }
            st.table.set(fd, Kind::Unconnected(Carry::default()));
            match st.table.get_mut(fd) {
                Some(Kind::Unconnected(c)) => c,
                _ => return,
            }
        }
    };
    if name == libc::SO_SNDBUF {
        carry.sndbuf = Some(v);
    } else {
        carry.rcvbuf = Some(v);
    }
}
