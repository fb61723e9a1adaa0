//! Multicast for unmodified programs: joins, leaves and sends to 224.0.0.0/4 go through the
//! overlay whenever a daemon is reachable, with the kernel's semantics, so the kernel's own
//! answers on a host without a multicast route (`ENODEV` for joins, `ENETUNREACH` for sends)
//! never reach the program. Without a daemon everything stays the kernel's.
//!
//! - Options ([`option`]) are decoded in every spelling and applied to the socket's
//!   memberships with the kernel's errors ([`membership`]); the daemon hears the resulting
//!   `Join`/`Leave` for the socket's delivery address ([`delivery`]). The kernel never sees a
//!   membership; `IP_MULTICAST_TTL`/`LOOP`/`IF` are kept here and answered by `getsockopt`.
//! - Receiving: a member socket bound to the wildcard or a group address is bound to a
//!   delivery address of its own; the daemon sends each copy there from the sender's proxy, so
//!   `recvfrom` names the true sender (rewritten by [`crate::dgram`]). A join before `bind` is
//!   held until the bind; a join after a wildcard bind gets a private address that reaches
//!   the socket (it cannot be told apart from another wildcard socket on the same port).
//! - Sending: `sendto`/`sendmsg`/`sendmmsg`/`connect` to a group go to the daemon's proxy for
//!   (group, port); the socket's TTL and LOOP travel ahead as `MulticastSend` for its port.
//! - Membership belongs to the socket: the last close leaves every group; a process that dies
//!   loses its control connection, and the daemon drops its memberships.
//! - `WEFT_RELIABLE_GROUPS` ([`reliable`]) makes joins of listed groups reliable.

pub mod delivery;
pub mod membership;
pub mod option;
pub mod reliable;

use crate::addr::{self, Ip, SockAddr};
use crate::dgram::{self, Dest};
use crate::fdtable::{self, Kind};
use crate::guard::{fail, KeepErrno};
use crate::log::debug;
use crate::{control, release, state, sys};
use libc::{c_int, c_void, sockaddr, sockaddr_storage, socklen_t};
use membership::{DaemonOp, Memberships};
use option::SetOption;
use std::net::{Ipv4Addr, SocketAddrV4};
use weft_core::{Endpoint, NodeId};
use weft_ipc::Request;

/// The multicast side of one socket (shared by its duplicates).
#[derive(Debug, Clone)]
pub struct SocketGroups {
    pub members: Memberships,
    /// `IP_MULTICAST_TTL`: 0 keeps datagrams on this host, anything else reaches the overlay.
    pub ttl: u8,
    /// `IP_MULTICAST_LOOP`.
    pub loopback: bool,
    /// `IP_MULTICAST_IF` (accepted and reported; the overlay has one interface).
    pub interface: Ipv4Addr,
    /// Where the daemon delivers this socket's group datagrams (once it is bound).
    pub deliver_to: Option<SocketAddrV4>,
    /// What the program bound to, when the shim bound the socket to its delivery address.
    pub shown: Option<SockAddr>,
    /// The port whose send options the daemon holds from this socket.
    pub announced: Option<u16>,
    /// The process that told the daemon about the memberships (only it leaves them).
    pub owner: libc::pid_t,
}

impl Default for SocketGroups {
    fn default() -> Self {
        SocketGroups {
            members: Memberships::default(),
            ttl: 1,
            loopback: true,
            interface: Ipv4Addr::UNSPECIFIED,
            deliver_to: None,
            shown: None,
            announced: None,
            owner: sys::getpid(),
        }
    }
}

/// Reads the environment (constructor).
pub fn init() {
    reliable::init();
}

/// The socket's domain when its multicast belongs to the overlay: a datagram socket of this
/// process, and a daemon to talk to.
fn managed(fd: c_int) -> Option<c_int> {
    if !state::in_owner()
        || sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_DGRAM)
    {
        return None;
    }
    let domain = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return None;
    }
    let _errno = KeepErrno::new();
    control::ensure_view().then_some(domain)
}

/// Runs `f` on the socket's multicast state, creating it (and the socket's entry) if needed.
fn with_groups<R>(fd: c_int, f: impl FnOnce(&mut SocketGroups) -> R) -> R {
    let mut st = state::lock();
    if !matches!(st.table.get(fd), Some(Kind::Dgram { .. })) {
        let released = st.table.set(
            fd,
            Kind::Dgram {
                port: None,
                owner: sys::getpid(),
                remote: None,
                groups: None,
            },
        );
        if released.is_some() {
            drop(st);
            release::release(released);
            st = state::lock();
        }
    }
    match st.table.get_mut(fd) {
        Some(Kind::Dgram { groups, .. }) => f(groups.get_or_insert_with(Default::default)),
        // Set just above, under the same lock (or re-taken right after).
        _ => f(&mut SocketGroups::default()),
    }
}

/// A copy of the socket's multicast state, if it has any.
fn snapshot(fd: c_int) -> Option<SocketGroups> {
    if fdtable::flags(fd) & fdtable::TRACKED == 0 {
        return None;
    }
    match state::lock().table.get(fd) {
        Some(Kind::Dgram {
            groups: Some(g), ..
        }) => Some((**g).clone()),
        _ => None,
    }
}

// ----- options -----------------------------------------------------------------------------

/// `Some(rc)` when the option was handled here; `None`: the caller goes on to the kernel.
///
/// # Safety
/// Arguments as the program passed them to setsockopt.
pub unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> Option<c_int> {
    if !option::is_emulated(level, name) {
        return None;
    }
    managed(fd)?;
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
        SetOption::Membership(op) => change_membership(fd, op),
        SetOption::Ttl(ttl) => set_send_options(fd, |g| g.ttl = ttl),
        SetOption::Loop(on) => set_send_options(fd, |g| g.loopback = on),
        SetOption::Interface(a) => {
            with_groups(fd, |g| g.interface = a);
            0
        }
    })
}

/// `Some(rc)` for `IP_MULTICAST_TTL`/`LOOP`/`IF` on a socket whose multicast is the
/// overlay's; `None`: the kernel answers.
///
/// # Safety
/// Arguments as the program passed them to getsockopt.
pub unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Option<c_int> {
    let ours = level == libc::IPPROTO_IP
        && matches!(
            name,
            libc::IP_MULTICAST_TTL | libc::IP_MULTICAST_LOOP | libc::IP_MULTICAST_IF
        );
    if !ours {
        return None;
    }
    managed(fd)?;
    if len.is_null() {
        return Some(fail(libc::EFAULT));
    }
    if (*len as i32) < 0 {
        return Some(fail(libc::EINVAL));
    }
    let g = snapshot(fd).unwrap_or_default();
    let room = *len as usize;
    let bytes = match name {
        libc::IP_MULTICAST_TTL => option::encode_byte_option(g.ttl, room),
        libc::IP_MULTICAST_LOOP => option::encode_byte_option(u8::from(g.loopback), room),
        _ => option::encode_interface(g.interface, room),
    };
    if !bytes.is_empty() && val.is_null() {
        return Some(fail(libc::EFAULT));
    }
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), val as *mut u8, bytes.len());
    *len = bytes.len() as socklen_t;
    Some(0)
}

fn set_send_options(fd: c_int, f: impl FnOnce(&mut SocketGroups)) -> c_int {
    let announced = with_groups(fd, |g| {
        f(g);
        g.announced.map(|port| (port, g.ttl, g.loopback))
    });
    if let Some((port, hops, loopback)) = announced {
        if let Err(e) = control::request(Request::MulticastSend {
            port,
            hops,
            loopback,
        }) {
            debug!("multicast send options for port {port}: daemon refused (errno {e})");
        }
    }
    0
}

// ----- memberships -------------------------------------------------------------------------

fn to_request(op: DaemonOp, deliver_to: SocketAddrV4) -> Request {
    match op {
        DaemonOp::Join { group, source } => Request::Join {
            group: NodeId::from(group),
            source: source.map(NodeId::from),
            deliver_to,
            reliable: reliable::is_reliable(group),
        },
        DaemonOp::Leave { group, source } => Request::Leave {
            group: NodeId::from(group),
            source: source.map(NodeId::from),
            deliver_to,
        },
    }
}

/// Tells the daemon; a refused join comes back as its errno (a daemon that went away as the
/// kernel's answer without a multicast route). Refused leaves only log: the socket's own
/// memberships decide what the program sees.
fn tell(ops: &[DaemonOp], deliver_to: SocketAddrV4) -> Result<(), i32> {
    for &op in ops {
        match control::request(to_request(op, deliver_to)) {
            Ok(_) => debug!("multicast {op:?} for {deliver_to}"),
            Err(e) if matches!(op, DaemonOp::Leave { .. }) => {
                debug!("multicast {op:?} for {deliver_to}: daemon refused (errno {e})")
            }
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

fn change_membership(fd: c_int, op: option::MembershipOp) -> c_int {
    let (mut members, known) = with_groups(fd, |g| (g.members.clone(), g.deliver_to));
    let outcome = members.apply(op);
    if let (Err(e), true) = (outcome.result, outcome.daemon.is_empty()) {
        return fail(e);
    }
    let deliver_to = known.or_else(|| delivery_for_bound(fd));
    match (known, deliver_to) {
        (Some(to), _) => {
            if let Err(e) = tell(&outcome.daemon, to) {
                return fail(e);
            }
        }
        // Bound behind the shim's back (or before the daemon was there): the daemon learns
        // every membership now.
        (None, Some(to)) => {
            if let Err(e) = tell(&members.join_all(), to) {
                return fail(e);
            }
        }
        // Unbound: held until bind.
        (None, None) => {}
    }
    with_groups(fd, |g| {
        g.members = members;
        g.deliver_to = deliver_to;
        g.owner = sys::getpid();
    });
    match outcome.result {
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
    if let Err(e) = tell(&members.join_all(), deliver_to) {
        debug!("multicast fd {fd}: daemon refused its memberships (errno {e})");
    }
}

/// `bind()` of a datagram socket to a group address, or to the wildcard by a socket that
/// already joined: bind it to a delivery address of its own instead. `None`: the real bind.
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
    let domain = managed(fd)?;
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

/// The shim is about to bind an unbound socket implicitly (a first send): a member socket
/// gets its delivery address rather than the wildcard.
pub fn before_implicit_bind(fd: c_int, domain: c_int) -> Result<(), i32> {
    if !has_memberships(fd) {
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

/// The socket's last descriptor closed: it leaves every group.
pub fn release(g: &SocketGroups) {
    if g.owner != sys::getpid() {
        return;
    }
    if let Some(to) = g.deliver_to {
        let _ = tell(&g.members.leave_all(), to);
    }
}

// ----- sending -----------------------------------------------------------------------------

/// Bound (to its delivery address if it is a member), registered for replies, and its send
/// options with the daemon: ready to send to groups. Returns the port.
fn prepare_sender(fd: c_int, domain: c_int) -> Result<u16, i32> {
    let port = dgram::ensure_registered(fd, domain)?;
    let (announced, hops, loopback) = with_groups(fd, |g| (g.announced, g.ttl, g.loopback));
    if announced != Some(port) {
        control::request(Request::MulticastSend {
            port,
            hops,
            loopback,
        })?;
        with_groups(fd, |g| g.announced = Some(port));
    }
    Ok(port)
}

/// What `sendto`/`sendmsg`/`sendmmsg` to group `dst` become.
pub fn destination(fd: c_int, family: c_int, dst: SocketAddrV4) -> Dest {
    if !state::in_owner() {
        return Dest::Keep;
    }
    let remote = Endpoint::from(dst);
    // Fast path: a sender that already sent to this group.
    if fdtable::flags(fd) & fdtable::TRACKED != 0 {
        let st = state::lock();
        if let (
            Some(Kind::Dgram {
                port: Some(port),
                groups: Some(g),
                ..
            }),
            Some(p),
        ) = (st.table.get(fd), st.proxy_of.get(&remote))
        {
            if g.announced == Some(*port) {
                let (ss, l) = addr::encode(family, *p);
                return Dest::Replace(ss, l);
            }
        }
    }
    let Some(domain) = managed(fd) else {
        return Dest::Keep;
    };
    let _errno = KeepErrno::new();
    if let Err(e) = prepare_sender(fd, domain) {
        return Dest::Fail(e);
    }
    match dgram::proxy_for(remote) {
        Ok(p) => {
            let (ss, l) = addr::encode(family, p);
            Dest::Replace(ss, l)
        }
        Err(e) => Dest::Fail(e),
    }
}

/// `connect()` of a datagram socket to group `dst` (iperf2's sender): connected to the
/// group's proxy, so `write`/`send` multicast. `None`: the kernel's connect.
pub fn connect(fd: c_int, family: c_int, dst: SocketAddrV4) -> Option<c_int> {
    let domain = managed(fd)?;
    if domain != family {
        return None;
    }
    if let Err(e) = prepare_sender(fd, domain) {
        return Some(fail(e));
    }
    Some(dgram::connect(fd, family, Endpoint::from(dst)))
}
