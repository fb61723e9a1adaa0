//! Delivery addresses (`GroupDelivery::Addresses`, a daemon sharing its network namespace
//! with another): memberships are emulated here with the kernel's rules
//! (`weft_multicast::Memberships`) and reported per socket; a member socket bound to the
//! wildcard or to a group is bound to a delivery address of its own ([`super::delivery`]),
//! where the daemon sends its copy; `IP_MULTICAST_TTL`/`LOOP`/`IF` are kept here.

use super::option::{self, SetOption};
use super::{
    delivery, kernel_delivery_known, managed, reliable, set_send_options, snapshot, with_groups,
    Mode,
};
use crate::addr::{self, Ip, SockAddr};
use crate::fdtable;
use crate::guard::fail;
use crate::log::debug;
use crate::{control, sys};
use libc::{c_int, c_void, sockaddr, sockaddr_storage, socklen_t};
use std::net::SocketAddrV4;
use weft_core::NodeId;
use weft_ipc::{GroupFilterSpec, GroupSocket, Request};
use weft_multicast::{FilterMode, MembershipOp, Memberships, SocketFilter};

/// Delivery addresses: the option is emulated here.
pub(super) unsafe fn setsockopt(
    fd: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> Option<c_int> {
    if !option::is_emulated(libc::IPPROTO_IP, name) {
        return None;
    }
    let len = len as usize;
    if len > 0 && val.is_null() {
        return Some(fail(libc::EFAULT));
    }
    let shown = len.min(option::MAX_OPTION_LEN);
    let bytes: &[u8] = if shown == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(val as *const u8, shown)
    };
    let opt = match option::parse_set(name, bytes, len) {
        Ok(o) => o,
        Err(e) => return Some(fail(e)),
    };
    Some(match opt {
        SetOption::Membership(op) => change_membership(fd, membership_op(op)),
        SetOption::Ttl(ttl) => set_send_options(fd, |g| g.ttl = ttl),
        SetOption::Loop(on) => set_send_options(fd, |g| g.loopback = on),
        SetOption::Interface(a) => {
            with_groups(fd, |g| g.interface = a);
            0
        }
    })
}

fn membership_op(op: option::MembershipOp) -> MembershipOp {
    use option::MembershipOp as O;
    match op {
        O::Join(g) => MembershipOp::Join(NodeId::from(g)),
        O::Leave(g) => MembershipOp::Leave(NodeId::from(g)),
        O::AddSource { group, source } => MembershipOp::AddSource {
            group: NodeId::from(group),
            source: NodeId::from(source),
        },
        O::DropSource { group, source } => MembershipOp::DropSource {
            group: NodeId::from(group),
            source: NodeId::from(source),
        },
    }
}

pub(super) unsafe fn getsockopt(
    fd: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    if len.is_null() {
        return fail(libc::EFAULT);
    }
    if (*len as i32) < 0 {
        return fail(libc::EINVAL);
    }
    let g = snapshot(fd).unwrap_or_default();
    let room = *len as usize;
    let bytes = match name {
        libc::IP_MULTICAST_TTL => option::encode_byte_option(g.ttl, room),
        libc::IP_MULTICAST_LOOP => option::encode_byte_option(u8::from(g.loopback), room),
        _ => option::encode_interface(g.interface, room),
    };
    if !bytes.is_empty() && val.is_null() {
        return fail(libc::EFAULT);
    }
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), val as *mut u8, bytes.len());
    *len = bytes.len() as socklen_t;
    0
}

fn spec(f: &SocketFilter) -> GroupFilterSpec {
    GroupFilterSpec {
        exclude: f.mode == FilterMode::Exclude,
        sources: f.sources.iter().copied().collect(),
    }
}

/// Tells the daemon the socket's filter of each of `groups`; a daemon that went away is the
/// kernel's answer without a multicast route.
pub(super) fn tell(
    members: &Memberships,
    groups: &[NodeId],
    deliver_to: SocketAddrV4,
) -> Result<(), i32> {
    for &group in groups {
        let filter = members.filter(group);
        match control::request(Request::GroupFilter {
            socket: GroupSocket::Delivery(deliver_to),
            group,
            filter: filter.map(spec),
            reliable: reliable::is_reliable(group.addr()),
        }) {
            Ok(_) => debug!("multicast {group} for {deliver_to}: {filter:?}"),
            Err(libc::ENETUNREACH) => return Err(libc::ENODEV),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where copies for a socket that is already bound can reach it; `None` while it is unbound.
fn delivery_for_bound(fd: c_int) -> Option<SocketAddrV4> {
    let a = sys::local_addr(fd).and_then(|(ss, len)| addr::parse_storage(&ss, len))?;
    if a.port == 0 {
        return None;
    }
    match a.ip {
        Ip::V4(ip) if delivery::in_block(ip) => Some(SocketAddrV4::new(ip, a.port)),
        Ip::V4(ip) if ip.is_unspecified() || ip.is_multicast() => {
            Some(delivery::unbound_address(a.port))
        }
        Ip::V6Any => Some(delivery::unbound_address(a.port)),
        Ip::V4(ip) => Some(SocketAddrV4::new(ip, a.port)),
        Ip::V6Other => None,
    }
}

pub(super) fn all_groups(m: &Memberships) -> Vec<NodeId> {
    m.groups().map(|(g, _)| g).collect()
}

fn change_membership(fd: c_int, op: MembershipOp) -> c_int {
    let (mut members, known) = with_groups(fd, |g| (g.members.clone(), g.deliver_to));
    let applied = members.apply(op);
    let result = applied.result.map_err(|e| e.errno());
    if !applied.changed {
        return match result {
            Ok(()) => 0,
            Err(e) => fail(e),
        };
    }
    let deliver_to = known.or_else(|| delivery_for_bound(fd));
    let told = match (known, deliver_to) {
        (Some(to), _) => tell(&members, &[op.group()], to),
        // Bound behind the shim's back (or before the daemon was there): the daemon learns
        // every membership now.
        (None, Some(to)) => tell(&members, &all_groups(&members), to),
        // Unbound: held until bind.
        (None, None) => Ok(()),
    };
    if let Err(e) = told {
        return fail(e);
    }
    with_groups(fd, |g| {
        g.members = members;
        g.deliver_to = deliver_to;
        g.owner = sys::getpid();
    });
    match result {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

fn has_memberships(fd: c_int) -> bool {
    snapshot(fd).is_some_and(|g| !g.members.is_empty())
}

/// A member socket just got its delivery address: the daemon learns its memberships.
fn bound_to_delivery(fd: c_int, deliver_to: SocketAddrV4, shown: Option<SockAddr>) {
    let members = with_groups(fd, |g| {
        g.deliver_to = Some(deliver_to);
        g.shown = shown;
        g.owner = sys::getpid();
        g.members.clone()
    });
    debug!("multicast fd {fd}: delivery address {deliver_to}");
    if let Err(e) = tell(&members, &all_groups(&members), deliver_to) {
        debug!("multicast fd {fd}: daemon refused its memberships (errno {e})");
    }
}

/// Delivery addresses: `bind()` of a datagram socket to a group address, or to the wildcard
/// by a socket that already joined: bind it to a delivery address of its own instead.
/// `None`: the real bind.
///
/// # Safety
/// `addr` readable for `len` bytes (or null).
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> Option<c_int> {
    let a = addr::parse(addr, len)?;
    let wanted = match a.ip {
        Ip::V4(ip) if ip.is_multicast() => true,
        Ip::V4(ip) if ip.is_unspecified() => has_memberships(fd),
        Ip::V6Any => has_memberships(fd),
        _ => false,
    };
    if !wanted {
        return None;
    }
    let (domain, mode) = managed(fd)?;
    if mode == Mode::Kernel {
        return None;
    }
    let v6only = domain == libc::AF_INET6
        && sys::sockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) == Some(1);
    // Anything the kernel would refuse (wrong family, already bound) it refuses itself.
    let bound = sys::local_addr(fd)
        .and_then(|(ss, l)| addr::parse_storage(&ss, l))
        .is_some_and(|b| b.port != 0);
    if domain != a.family || v6only || bound {
        return None;
    }
    match delivery::bind_own(fd, domain, a.port) {
        Ok(at) => {
            let shown = SockAddr { port: 0, ..a };
            bound_to_delivery(fd, at, Some(shown));
            Some(0)
        }
        Err(e) => Some(fail(e)),
    }
}

/// The shim is about to bind an unbound socket implicitly (a first send): with delivery
/// addresses, a member socket gets its delivery address rather than the wildcard.
pub fn before_implicit_bind(fd: c_int, domain: c_int) -> Result<(), i32> {
    if !has_memberships(fd) || kernel_delivery_known() {
        return Ok(());
    }
    // SAFETY: the program's socket, unbound (the caller checked).
    let at = unsafe { delivery::bind_own(fd, domain, 0) }?;
    let (ss, len) = addr::wildcard(domain);
    let shown = addr::parse_storage(&ss, len);
    bound_to_delivery(fd, at, shown);
    Ok(())
}

/// `getsockname` of a socket the shim bound to its delivery address: what the program bound.
pub fn shown_local(
    fd: c_int,
    ss: &sockaddr_storage,
    len: socklen_t,
) -> Option<(sockaddr_storage, socklen_t)> {
    if fdtable::flags(fd) & fdtable::TRACKED == 0 {
        return None;
    }
    let real = addr::parse_storage(ss, len)?;
    match real.ip {
        Ip::V4(ip) if delivery::in_block(ip) => {}
        _ => return None,
    }
    let shown = snapshot(fd)?.shown?;
    Some(match shown.ip {
        Ip::V4(ip) => addr::encode(shown.family, SocketAddrV4::new(ip, real.port)),
        _ => {
            let (mut out, l) = addr::wildcard(shown.family);
            // SAFETY: wildcard() wrote a sockaddr_in(6) at the start of the storage.
            unsafe {
                if shown.family == libc::AF_INET6 {
                    (*(&mut out as *mut sockaddr_storage as *mut libc::sockaddr_in6)).sin6_port =
                        real.port.to_be();
                } else {
                    (*(&mut out as *mut sockaddr_storage as *mut libc::sockaddr_in)).sin_port =
                        real.port.to_be();
                }
            }
            (out, l)
        }
    })
}
