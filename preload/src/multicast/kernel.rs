//! Kernel delivery (`GroupDelivery::Kernel`): a shimmed socket's memberships are the kernel's
//! own, on loopback, so the kernel applies its rules (every errno, limits, filter modes,
//! `IP_MULTICAST_ALL`, membership per open file description) and delivers to every matching
//! socket the one copy the daemon sends to the group on loopback. What the shim does:
//!
//! - rewrites the interface of a membership request that names the overlay (the default
//!   interface, the node's address, the node's interface) to loopback, which needs no
//!   multicast route, and each source that is an overlay node to that node's alias address
//!   (the daemon's proxies of the node live there, so the kernel's source filter sees them);
//!   requests for other interfaces stay the kernel's business;
//! - after each change, reads the socket's filter back from the kernel (`MCAST_MSFILTER`)
//!   and tells the daemon (`GroupFilter`), which floods the node's aggregate;
//! - answers `IP_MSFILTER`/`MCAST_MSFILTER` queries with the sources translated back.
//!
//! A socket joined once on loopback and once on the overlay interface (mDNS responders do
//! this) holds one kernel membership for both, when the node's interface is not loopback
//! itself; the shim keeps which of the two the program asked for, per socket, and tells the
//! daemon only about overlay memberships.

use super::reliable;
pub use super::request::LOOPBACK_INDEX;
use super::request::*;
use crate::addr;
use crate::guard::fail;
use crate::log::debug;
use crate::{control, real, state, sys};
use libc::{c_int, c_void, socklen_t};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use weft_core::NodeId;
use weft_ipc::{GroupFilterSpec, GroupSocket, Reply, Request};

/// The most sources read back from the kernel for one group (its own cap is 10 by default).
const READ_SOURCES: usize = 64;
/// Largest option value the shim rewrites (bigger ones go to the kernel untouched: it
/// refuses them with `ENOBUFS`).
const MAX_VALUE: usize = 64 * 1024;

// ----- the node's interface ------------------------------------------------------------------

/// (node address, its interface index + 1; 0: not looked up yet).
static NODE_IFACE: AtomicU64 = AtomicU64::new(0);

/// The index of the interface that holds `addr`, if any.
pub(super) fn interface_index_of(addr: Ipv4Addr) -> Option<u32> {
    // SAFETY: getifaddrs/freeifaddrs pair; every pointer is checked before use.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return None;
        }
        let mut found = None;
        let mut p = list;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && c_int::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == addr {
                    let index = libc::if_nametoindex((*p).ifa_name);
                    if index != 0 {
                        found = Some(index);
                        break;
                    }
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(list);
        found
    }
}

/// The node's address and the index of its interface (loopback when the address is on
/// loopback, as on a host running several daemons on 127.0.0.N).
pub(crate) fn node_interface() -> Option<(Ipv4Addr, u32)> {
    let (node, _) = control::local_addresses()?;
    let cached = NODE_IFACE.load(Ordering::Relaxed);
    if cached != 0 && (cached >> 32) as u32 == u32::from(node) {
        return Some((node, (cached as u32).saturating_sub(1)));
    }
    let index = if node.is_loopback() {
        LOOPBACK_INDEX
    } else {
        interface_index_of(node).unwrap_or(0)
    };
    NODE_IFACE.store(
        (u64::from(u32::from(node)) << 32) | u64::from(index.saturating_add(1)),
        Ordering::Relaxed,
    );
    Some((node, index))
}

// ----- source aliases --------------------------------------------------------------------

static PROXY_NET: AtomicU32 = AtomicU32::new(0);

pub fn set_proxy_net(net: Ipv4Addr) {
    PROXY_NET.store(u32::from(net), Ordering::Relaxed);
}

/// Could `ip` be one of the daemon's alias addresses (its /16)? Asks the daemon how it
/// delivers the first time (a process that never used multicast receives from aliases too).
pub fn in_proxy_net(ip: Ipv4Addr) -> bool {
    if !ip.is_loopback() {
        return false;
    }
    let mut net = PROXY_NET.load(Ordering::Relaxed);
    if net == 0 && !super::delivery_known() {
        let _ = super::mode();
        net = PROXY_NET.load(Ordering::Relaxed);
    }
    net != 0 && u32::from(ip) & 0xffff_0000 == net
}

/// The alias address standing for overlay node `node` (cached per process).
fn alias_of(node: Ipv4Addr) -> Option<Ipv4Addr> {
    if let Some(a) = state::lock().mc_alias_of.get(&node) {
        return Some(*a);
    }
    match control::request(Request::SourceAlias {
        node: Some(NodeId::from(node)),
        ip: None,
    }) {
        Ok(Reply::SourceAlias { ip: Some(ip), .. }) => {
            let mut st = state::lock();
            st.mc_alias_of.insert(node, ip);
            st.mc_node_of.insert(ip, node);
            Some(ip)
        }
        _ => None,
    }
}

/// The overlay node an alias address stands for (`None`: not an alias).
fn node_of_alias(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    if !in_proxy_net(ip) {
        return None;
    }
    if let Some(n) = state::lock().mc_node_of.get(&ip) {
        return Some(*n);
    }
    match control::request(Request::SourceAlias {
        node: None,
        ip: Some(ip),
    }) {
        Ok(Reply::SourceAlias { node: Some(n), .. }) => {
            let n = n.addr();
            let mut st = state::lock();
            st.mc_alias_of.insert(n, ip);
            st.mc_node_of.insert(ip, n);
            Some(n)
        }
        _ => None,
    }
}

/// What a source in a program's filter becomes for the kernel.
fn source_for_kernel(s: Ipv4Addr) -> Ipv4Addr {
    let node = control::local_addresses().map(|(n, _)| n);
    if Some(s) == node || control::is_overlay(s) {
        alias_of(s).unwrap_or(s)
    } else {
        s
    }
}

/// What a source the kernel reports was in the program's terms.
fn source_for_program(s: Ipv4Addr) -> Ipv4Addr {
    node_of_alias(s).unwrap_or(s)
}

/// The program's bytes (at most [`MAX_VALUE`]), or `None` when the shim leaves them alone.
unsafe fn program_bytes(val: *const c_void, len: socklen_t) -> Option<Vec<u8>> {
    let len = len as usize;
    if val.is_null() || len == 0 || len > MAX_VALUE {
        return None;
    }
    Some(std::slice::from_raw_parts(val as *const u8, len).to_vec())
}

fn kernel_setsockopt(fd: c_int, name: c_int, b: &[u8]) -> c_int {
    // SAFETY: a buffer of its own length.
    unsafe {
        real::setsockopt(
            fd,
            libc::IPPROTO_IP,
            name,
            b.as_ptr() as *const c_void,
            b.len() as socklen_t,
        )
    }
}

/// A membership `setsockopt` on a socket whose memberships the kernel holds. `None`: not a
/// request the shim rewrites (the caller passes it to the kernel).
///
/// # Safety
/// Arguments as the program passed them to setsockopt.
pub unsafe fn setsockopt(
    fd: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> Option<c_int> {
    let bytes = program_bytes(val, len)?;
    let (node, node_index) = node_interface()?;
    let p = parse(name, &bytes, node, node_index)?;
    if p.iface == Iface::Other {
        return None;
    }
    let inode = sys::socket_inode(fd)?;
    let key = (inode, p.group);
    let held = state::lock().mc_ifaces.get(&key).copied().unwrap_or(0);
    let bit = p.iface.bit();
    let other = held & !bit;
    // One kernel membership serves loopback and the overlay interface alike: a join on the
    // second is already made, a leave of one of two keeps it.
    let rc = match p.change {
        Change::Leave if held & bit != 0 && other != 0 => 0,
        _ => {
            let rc = kernel_setsockopt(fd, name, &rewrite(&p, bytes, source_for_kernel));
            let absorbed = rc != 0
                && p.change == Change::Join
                && crate::guard::errno() == libc::EADDRINUSE
                && held & bit == 0
                && other != 0;
            if absorbed {
                0
            } else {
                rc
            }
        }
    };
    let errno = crate::guard::errno();
    // What the kernel holds now decides (a filter change can end the membership).
    let filter = read_filter(fd, p.group);
    let now = match (&filter, p.change, rc) {
        (None, _, _) => 0,
        (Some(_), Change::Join, 0) => held | bit,
        (Some(_), Change::Leave, 0) => other,
        // A membership the shim did not see made (inherited across exec, or a first
        // membership made by a source join): the interface this request named.
        (Some(_), _, _) if held == 0 => bit,
        _ => held,
    };
    {
        let mut st = state::lock();
        if now == 0 {
            st.mc_ifaces.remove(&key);
        } else {
            st.mc_ifaces.insert(key, now);
        }
    }
    // A refused join or leave changed nothing; a refused filter change may have (a source
    // drop from an any-source membership switches its mode before it fails).
    if rc == 0 || p.change == Change::Filter {
        // A membership the program made only on loopback does not attract the overlay.
        let overlay = filter.filter(|_| now & OVERLAY_BIT != 0);
        report(fd, inode, p.group, overlay);
    }
    if rc != 0 {
        return Some(fail(errno));
    }
    Some(0)
}

/// Tells the daemon what the kernel now holds for (socket, group), as far as the overlay is
/// concerned.
fn report(fd: c_int, inode: u64, group: Ipv4Addr, filter: Option<GroupFilterSpec>) {
    let joined = filter.is_some();
    match control::request(Request::GroupFilter {
        socket: GroupSocket::Kernel { inode },
        group: NodeId::from(group),
        filter,
        reliable: reliable::is_reliable(group),
    }) {
        Ok(_) => debug!("multicast fd {fd}: group {group} member: {joined}"),
        Err(e) => debug!("multicast fd {fd}: group {group}: daemon refused (errno {e})"),
    }
    if joined {
        super::note_kernel_member(fd);
    }
}

/// The socket's filter of `group` on loopback, in the program's terms (`None`: no
/// membership).
fn read_filter(fd: c_int, group: Ipv4Addr) -> Option<GroupFilterSpec> {
    let mut b = vec![0u8; GROUP_FILTER_HEADER + READ_SOURCES * SS_LEN];
    put_u32(&mut b, 0, LOOPBACK_INDEX);
    let (ss, _) = addr::encode(libc::AF_INET, std::net::SocketAddrV4::new(group, 0));
    // SAFETY: sockaddr_storage is plain bytes.
    let ss_bytes = unsafe {
        std::slice::from_raw_parts(&ss as *const _ as *const u8, std::mem::size_of_val(&ss))
    };
    b[8..8 + SS_LEN].copy_from_slice(&ss_bytes[..SS_LEN]);
    put_u32(&mut b, GROUP_FILTER_HEADER - 4, READ_SOURCES as u32);
    let mut len = b.len() as socklen_t;
    // SAFETY: a buffer of the length given.
    let rc = unsafe {
        real::getsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::MCAST_MSFILTER,
            b.as_mut_ptr() as *mut c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let exclude = u32_at(&b, GROUP_FILTER_HEADER - 8)? == libc::MCAST_EXCLUDE as u32;
    let count = (u32_at(&b, GROUP_FILTER_HEADER - 4)? as usize).min(READ_SOURCES);
    let sources = (0..count)
        .filter_map(|i| sockaddr_at(&b, GROUP_FILTER_HEADER + i * SS_LEN))
        .map(|s| NodeId::from(source_for_program(s)))
        .collect();
    Some(GroupFilterSpec { exclude, sources })
}

/// `getsockopt(IP_MSFILTER / MCAST_MSFILTER)`: asked about the overlay interface, answered
/// from the loopback membership, with the sources in the program's terms. `None`: the
/// kernel's own answer.
///
/// # Safety
/// Arguments as the program passed them to getsockopt.
pub unsafe fn getsockopt(
    fd: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Option<c_int> {
    if name != libc::IP_MSFILTER && name != libc::MCAST_MSFILTER {
        return None;
    }
    if len.is_null() || val.is_null() {
        return None;
    }
    let room = *len;
    let bytes = program_bytes(val, room)?;
    let (node, node_index) = node_interface()?;
    let p = parse(name, &bytes, node, node_index)?;
    if p.iface == Iface::Other {
        return None;
    }
    let mut b = rewrite(&p, bytes, |s| s);
    let mut got = room;
    let rc = real::getsockopt(
        fd,
        libc::IPPROTO_IP,
        name,
        b.as_mut_ptr() as *mut c_void,
        &mut got,
    );
    if rc != 0 {
        return Some(rc);
    }
    let got = (got as usize).min(b.len());
    if name == libc::IP_MSFILTER {
        put_ipv4(
            &mut b,
            4,
            ipv4_at(&bytes_of(val, 8), 4).unwrap_or(Ipv4Addr::UNSPECIFIED),
        );
        let mut at = MSFILTER_HEADER;
        while at + 4 <= got {
            if let Some(s) = ipv4_at(&b, at) {
                put_ipv4(&mut b, at, source_for_program(s));
            }
            at += 4;
        }
    } else {
        b[..4].copy_from_slice(&bytes_of(val, 4));
        let mut at = GROUP_FILTER_HEADER;
        while at + SS_LEN <= got {
            if let Some(s) = sockaddr_at(&b, at) {
                put_ipv4(&mut b, at + 4, source_for_program(s));
            }
            at += SS_LEN;
        }
    }
    std::ptr::copy_nonoverlapping(b.as_ptr(), val as *mut u8, got);
    *len = got as socklen_t;
    Some(0)
}

/// The first `n` bytes the program passed (its interface field, given back unchanged).
unsafe fn bytes_of(val: *const c_void, n: usize) -> Vec<u8> {
    std::slice::from_raw_parts(val as *const u8, n).to_vec()
}

/// Does a send from this socket leave on loopback (`IP_MULTICAST_IF` 127.0.0.1 or
/// loopback's index, on a node whose interface is another)? Then the kernel sends it: the
/// copy stays on this host, as the kernel's would.
pub fn sends_on_loopback(interface: Ipv4Addr, index: u32) -> bool {
    let Some((_, node_index)) = node_interface() else {
        return false;
    };
    node_index != LOOPBACK_INDEX
        && (index == LOOPBACK_INDEX || (index == 0 && interface.is_loopback()))
}
