//! Multicast for unmodified programs: joins, leaves and sends to 224.0.0.0/4 go through the
//! overlay whenever a daemon is reachable, with the kernel's semantics, so the kernel's own
//! answers on a host without a multicast route (`ENODEV` for joins, `ENETUNREACH` for sends)
//! never reach the program. Without a daemon everything stays the kernel's.
//!
//! The daemon says how it delivers group datagrams (`MulticastInfo`):
//! - **Kernel delivery** ([`kernel`]), the daemon alone in its network namespace: memberships
//!   are the kernel's own, on loopback (no multicast route needed), so every rule, limit and
//!   filter mode, `IP_MULTICAST_ALL`, and membership per open file description are the
//!   kernel's; the daemon sends each group datagram once to the group on loopback from the
//!   sender's proxy with the sender's TTL, and the kernel hands a copy to every socket that
//!   matches, whatever the order of bind, join and fork. `IP_MULTICAST_TTL`/`LOOP`/`IF`/`ALL`
//!   are set on the kernel socket too (so `getsockopt` is the kernel's).
//! - **Delivery addresses** ([`emulated`], [`delivery`]), a daemon sharing its namespace with another:
//!   memberships are emulated here with the kernel's rules (`weft_multicast::Memberships`);
//!   a member socket bound to the wildcard or a group address is bound to a delivery address
//!   of its own, where the daemon sends its copy.
//!
//! Either way the daemon hears each socket's filter after every change (`GroupFilter`).
//! Sending: `sendto`/`sendmsg`/`sendmmsg`/`connect` to a group go to the daemon's proxy for
//! (group, port); the socket's TTL and LOOP travel ahead as `MulticastSend` for its port. A
//! socket whose `IP_MULTICAST_IF` is loopback sends through the kernel (the copy stays on the
//! host). `WEFT_RELIABLE_GROUPS` ([`reliable`]) makes joins of listed groups reliable.

pub mod delivery;
mod emulated;
pub mod kernel;
pub mod option;
pub mod reliable;
mod request;

use crate::addr::{self, SockAddr};
use crate::dgram::{self, Dest};
use crate::fdtable::{self, Kind};
use crate::guard::{fail, KeepErrno};
use crate::log::debug;
use crate::{control, real, release, state, sys};
use libc::{c_int, c_void, socklen_t};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU8, Ordering};
use weft_core::Endpoint;
use weft_ipc::{GroupDelivery, Reply, Request};
use weft_multicast::Memberships;

/// The multicast side of one socket (shared by its duplicates).
#[derive(Debug, Clone)]
pub struct SocketGroups {
    /// Delivery addresses: the memberships, under the kernel's rules.
    pub members: Memberships,
    /// `IP_MULTICAST_TTL`: 0 keeps datagrams on this host, anything else reaches the overlay.
    pub ttl: u8,
    /// `IP_MULTICAST_LOOP`.
    pub loopback: bool,
    /// `IP_MULTICAST_IF`: the interface address, and index (0: by address).
    pub interface: Ipv4Addr,
    pub interface_index: u32,
    /// Delivery addresses: where the daemon delivers this socket's group datagrams.
    pub deliver_to: Option<SocketAddrV4>,
    /// What the program bound to, when the shim bound the socket to its delivery address.
    pub shown: Option<SockAddr>,
    /// The port whose send options the daemon holds from this socket.
    pub announced: Option<u16>,
    /// The process that told the daemon about the memberships (only it leaves them).
    pub owner: libc::pid_t,
    /// Kernel delivery: the kernel holds a membership of this socket the overlay serves.
    pub kernel_member: bool,
}

impl Default for SocketGroups {
    fn default() -> Self {
        SocketGroups {
            members: Memberships::default(),
            ttl: 1,
            loopback: true,
            interface: Ipv4Addr::UNSPECIFIED,
            interface_index: 0,
            deliver_to: None,
            shown: None,
            announced: None,
            owner: sys::getpid(),
            kernel_member: false,
        }
    }
}

/// Reads the environment (constructor).
pub fn init() {
    reliable::init();
}

// ----- how the daemon delivers ----------------------------------------------------------

const MODE_UNKNOWN: u8 = 0;
const MODE_ADDRESSES: u8 = 1;
const MODE_KERNEL: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNKNOWN);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Kernel,
    Addresses,
}

/// The daemon's answer is known (no round trip needed).
fn delivery_known() -> bool {
    MODE.load(Ordering::Relaxed) != MODE_UNKNOWN
}

/// How this process's daemon delivers group datagrams (asked once).
fn mode() -> Option<Mode> {
    match MODE.load(Ordering::Relaxed) {
        MODE_KERNEL => return Some(Mode::Kernel),
        MODE_ADDRESSES => return Some(Mode::Addresses),
        _ => {}
    }
    let mode = match control::request(Request::MulticastInfo) {
        Ok(Reply::MulticastInfo {
            delivery: GroupDelivery::Kernel { proxy_net },
        }) => {
            kernel::set_proxy_net(proxy_net);
            Mode::Kernel
        }
        Ok(_) => Mode::Addresses,
        Err(libc::ENETUNREACH) => return None,
        // A daemon that does not know the request delivers to addresses.
        Err(_) => Mode::Addresses,
    };
    debug!("group datagrams are delivered {mode:?}");
    MODE.store(
        if mode == Mode::Kernel {
            MODE_KERNEL
        } else {
            MODE_ADDRESSES
        },
        Ordering::Relaxed,
    );
    Some(mode)
}

/// Kernel delivery is known to be on (no daemon round trip).
pub fn kernel_delivery_known() -> bool {
    MODE.load(Ordering::Relaxed) == MODE_KERNEL
}

/// The socket's domain when its multicast belongs to the overlay: a datagram socket of this
/// process, and a daemon to talk to.
pub(super) fn managed(fd: c_int) -> Option<(c_int, Mode)> {
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
    if !control::ensure_view() {
        return None;
    }
    Some((domain, mode()?))
}

/// Runs `f` on the socket's multicast state, creating it (and the socket's entry) if needed.
pub(super) fn with_groups<R>(fd: c_int, f: impl FnOnce(&mut SocketGroups) -> R) -> R {
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
pub(super) fn snapshot(fd: c_int) -> Option<SocketGroups> {
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

/// Kernel delivery: the socket holds a membership the overlay serves (its last close asks
/// the daemon to look for closed member sockets).
pub(super) fn note_kernel_member(fd: c_int) {
    with_groups(fd, |g| g.kernel_member = true);
}

// ----- options -----------------------------------------------------------------------------

fn is_membership(name: c_int) -> bool {
    matches!(
        name,
        libc::IP_ADD_MEMBERSHIP
            | libc::IP_DROP_MEMBERSHIP
            | libc::IP_ADD_SOURCE_MEMBERSHIP
            | libc::IP_DROP_SOURCE_MEMBERSHIP
            | libc::IP_BLOCK_SOURCE
            | libc::IP_UNBLOCK_SOURCE
            | libc::IP_MSFILTER
            | libc::MCAST_JOIN_GROUP
            | libc::MCAST_LEAVE_GROUP
            | libc::MCAST_JOIN_SOURCE_GROUP
            | libc::MCAST_LEAVE_SOURCE_GROUP
            | libc::MCAST_BLOCK_SOURCE
            | libc::MCAST_UNBLOCK_SOURCE
            | libc::MCAST_MSFILTER
    )
}

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
    if level != libc::IPPROTO_IP {
        return None;
    }
    let send_option = matches!(
        name,
        libc::IP_MULTICAST_TTL | libc::IP_MULTICAST_LOOP | libc::IP_MULTICAST_IF
    );
    if !is_membership(name) && !send_option {
        return None;
    }
    let (_, mode) = managed(fd)?;
    match mode {
        Mode::Kernel if send_option => Some(kernel_send_option(fd, name, val, len)),
        Mode::Kernel => kernel::setsockopt(fd, name, val, len),
        Mode::Addresses => emulated::setsockopt(fd, name, val, len),
    }
}

/// Kernel delivery: `IP_MULTICAST_TTL`/`LOOP`/`IF` go to the kernel (its checks, its
/// `getsockopt`), and the shim keeps what the sends need.
unsafe fn kernel_send_option(fd: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int {
    let rc = real::setsockopt(fd, libc::IPPROTO_IP, name, val, len);
    if rc != 0 {
        return rc;
    }
    let _errno = KeepErrno::new();
    match name {
        libc::IP_MULTICAST_IF => {
            let b = std::slice::from_raw_parts(val as *const u8, len as usize);
            let word = |at: usize| -> Option<[u8; 4]> { b.get(at..at + 4)?.try_into().ok() };
            let (address, index) = match len as usize {
                n if n >= 12 => (
                    word(4).map(Ipv4Addr::from),
                    word(8).map(u32::from_ne_bytes).unwrap_or(0),
                ),
                n if n >= 8 => (word(4).map(Ipv4Addr::from), 0),
                _ => (word(0).map(Ipv4Addr::from), 0),
            };
            with_groups(fd, |g| {
                g.interface = address.unwrap_or(Ipv4Addr::UNSPECIFIED);
                g.interface_index = index;
                // The next send decides again between the kernel and the overlay.
                g.announced = None;
            });
        }
        _ => {
            let ttl = sys::sockopt_int(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL);
            let lp = sys::sockopt_int(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP);
            set_send_options(fd, |g| {
                if let Some(t) = ttl {
                    g.ttl = t.clamp(0, 255) as u8;
                }
                if let Some(l) = lp {
                    g.loopback = l != 0;
                }
            });
        }
    }
    0
}

/// `Some(rc)` for options the shim answers; `None`: the kernel answers.
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
    if level != libc::IPPROTO_IP {
        return None;
    }
    let emulated = matches!(
        name,
        libc::IP_MULTICAST_TTL | libc::IP_MULTICAST_LOOP | libc::IP_MULTICAST_IF
    );
    let filter = name == libc::IP_MSFILTER || name == libc::MCAST_MSFILTER;
    if !emulated && !filter {
        return None;
    }
    let (_, mode) = managed(fd)?;
    match mode {
        Mode::Kernel if filter => kernel::getsockopt(fd, name, val, len),
        Mode::Kernel => None,
        Mode::Addresses if emulated => Some(emulated::getsockopt(fd, name, val, len)),
        Mode::Addresses => None,
    }
}

pub(super) fn set_send_options(fd: c_int, f: impl FnOnce(&mut SocketGroups)) -> c_int {
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

pub use emulated::{before_implicit_bind, bind, shown_local};

/// The socket's last descriptor in this process closed. Delivery addresses: it leaves every
/// group. Kernel delivery: the kernel ended its memberships if no other process holds it;
/// the daemon looks now.
pub fn release(g: &SocketGroups) {
    if g.kernel_member {
        let _ = control::request(Request::MulticastCheck);
        return;
    }
    if g.owner != sys::getpid() {
        return;
    }
    if let Some(to) = g.deliver_to {
        let _ = emulated::tell(
            &Memberships::default(),
            &emulated::all_groups(&g.members),
            to,
        );
    }
}

// ----- sending -----------------------------------------------------------------------------

/// Bound (to its delivery address if it is a member), registered for replies, and its send
/// options with the daemon: ready to send to groups. Returns the port.
fn prepare_sender(fd: c_int, domain: c_int, mode: Mode) -> Result<u16, i32> {
    let port = dgram::ensure_registered(fd, domain)?;
    if mode == Mode::Kernel {
        // The kernel holds the options (a socket inherited across exec has no shim state).
        let ttl = sys::sockopt_int(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL);
        let lp = sys::sockopt_int(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP);
        with_groups(fd, |g| {
            if let Some(t) = ttl {
                g.ttl = t.clamp(0, 255) as u8;
            }
            if let Some(l) = lp {
                g.loopback = l != 0;
            }
        });
    }
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

/// Kernel delivery: the socket sends on loopback, so the kernel's send is the right one.
fn kernel_sends_on_loopback(fd: c_int) -> bool {
    let (address, index) = match snapshot(fd) {
        Some(g) => (g.interface, g.interface_index),
        None => {
            let a: Option<libc::in_addr> =
                sys::sockopt_raw(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF);
            (
                a.map_or(Ipv4Addr::UNSPECIFIED, |a| {
                    Ipv4Addr::from(u32::from_be(a.s_addr))
                }),
                0,
            )
        }
    };
    kernel::sends_on_loopback(address, index)
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
    let Some((domain, mode)) = managed(fd) else {
        return Dest::Keep;
    };
    let _errno = KeepErrno::new();
    if mode == Mode::Kernel && kernel_sends_on_loopback(fd) {
        return Dest::Keep;
    }
    if let Err(e) = prepare_sender(fd, domain, mode) {
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
    let (domain, mode) = managed(fd)?;
    if domain != family {
        return None;
    }
    if mode == Mode::Kernel && kernel_sends_on_loopback(fd) {
        return None;
    }
    if let Err(e) = prepare_sender(fd, domain, mode) {
        return Some(fail(e));
    }
    Some(dgram::connect(fd, family, Endpoint::from(dst)))
}
