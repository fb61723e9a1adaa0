//! Kernel delivery of group datagrams (`weft_ipc::GroupDelivery::Kernel`).
//!
//! The kernel already knows how to hand one multicast datagram to every socket that should
//! see it: several sockets on one port, `SO_REUSEPORT`, a socket bound to the group,
//! `IP_MULTICAST_ALL`, include and exclude source filters, memberships that belong to the
//! open file description and end with its last close. So a shimmed socket's memberships are
//! real kernel memberships on loopback (which needs no multicast route), and the daemon sends
//! each group datagram for this node once, to the group on loopback, from the proxy that
//! stands for its sender, with the sender's TTL: one `sendto` however many local sockets
//! receive it, and every socket observes what it would on a kernel network.
//!
//! Two consequences are handled here:
//! - A source filter names source addresses, and the datagrams come from proxies, so the
//!   proxies of each source node live on an alias address of their own (inside the proxy
//!   address's /16): a filter on node N becomes a filter on N's alias.
//! - The kernel ends a membership when the socket's last holder closes it or dies, and tells
//!   nobody: the daemon checks every [`CHECK_EVERY`] (and when a shim says a member socket
//!   may have closed) which member sockets still exist, and drops the memberships of the
//!   others: a socket that `/proc/net/udp` does not list (closed, or unbound: joined before
//!   `bind`) and whose group has fewer users on loopback in `/proc/net/igmp` than the daemon
//!   knows member sockets.
//!
//! Loopback is shared by everything in a network namespace: two daemons there would each
//! deliver to the other's sockets. The first daemon in a namespace claims kernel delivery
//! (an abstract Unix socket name, which is per namespace); a daemon that finds it taken
//! delivers to per-socket addresses instead.

use super::Daemon;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};
use tracing::{debug, info};
use weft_core::NodeId;
use weft_multicast::SocketId;

/// The kernel makes every host a member of the all-hosts group 224.0.0.1 (on loopback too):
/// so is this node, for as long as it runs (a socket of its own, never pruned).
const ALL_HOSTS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);
const HOST_ITSELF: u64 = u64::MAX >> 1;

/// How often the daemon looks for member sockets that closed.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// The abstract socket name that claims loopback multicast in a network namespace.
const CLAIM: &[u8] = b"weft/group-delivery";

pub struct KernelGroups {
    /// Held for the daemon's life: the claim on this namespace's loopback multicast.
    _claim: OwnedFd,
    /// The network the alias addresses are taken from (the proxy address's /16).
    pub proxy_net: Ipv4Addr,
    first: u32,
    aliases: HashMap<NodeId, Ipv4Addr>,
    nodes: HashMap<Ipv4Addr, NodeId>,
    next: u32,
    next_check: Instant,
    /// Member sockets (by inode) and the groups they joined, as the shims reported them.
    members: HashMap<u64, BTreeSet<NodeId>>,
    /// Member sockets seen bound (listed in `/proc/net/udp`) at least once.
    seen_bound: HashSet<u64>,
    /// Membership checks run, and sockets found closed.
    pub checks: u64,
    pub closed_found: u64,
}

/// Claims kernel delivery for this network namespace, if no other daemon holds it.
fn claim() -> Option<OwnedFd> {
    // SAFETY: plain socket calls on a descriptor we create; the address is built in place.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_un = std::mem::zeroed();
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in sa.sun_path[1..].iter_mut().zip(CLAIM) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + 1 + CLAIM.len();
        let rc = libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            len as libc::socklen_t,
        );
        (rc == 0).then_some(owned)
    }
}

/// Per group, how many memberships the kernel holds on loopback (`/proc/net/igmp`).
fn loopback_group_users() -> Option<HashMap<NodeId, u32>> {
    let text = std::fs::read_to_string("/proc/net/igmp").ok()?;
    let mut out = HashMap::new();
    let mut on_loopback = false;
    for line in text.lines().skip(1) {
        if !line.starts_with('\t') {
            // "1\tlo        :     2      V3": a device line.
            let mut f = line.split_whitespace();
            on_loopback = f.next() == Some("1");
            continue;
        }
        if !on_loopback {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(group), Some(users)) = (f.next(), f.next()) else {
            continue;
        };
        let (Ok(group), Ok(users)) = (u32::from_str_radix(group, 16), users.parse::<u32>()) else {
            continue;
        };
        // The kernel prints the network-order address as a host integer.
        out.insert(NodeId::from(Ipv4Addr::from(u32::from_be(group))), users);
    }
    Some(out)
}

/// Inodes of every UDP socket in this network namespace.
fn live_udp_inodes() -> Option<HashSet<u64>> {
    let mut out = HashSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            // No IPv6 in this kernel is fine; no IPv4 table means we cannot tell.
            if table.ends_with("udp") {
                return None;
            }
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9).and_then(|f| f.parse().ok()) {
                out.insert(inode);
            }
        }
    }
    Some(out)
}

impl KernelGroups {
    pub fn new(proxy_ip: Ipv4Addr) -> Option<KernelGroups> {
        let claim = claim()?;
        let net = u32::from(proxy_ip) & 0xffff_0000;
        let first = u32::from(proxy_ip);
        info!(proxy_net = %Ipv4Addr::from(net), "group datagrams are delivered through the kernel");
        Some(KernelGroups {
            _claim: claim,
            proxy_net: Ipv4Addr::from(net),
            first,
            aliases: HashMap::new(),
            nodes: HashMap::new(),
            next: first,
            next_check: Instant::now(),
            members: HashMap::new(),
            seen_bound: HashSet::new(),
            checks: 0,
            closed_found: 0,
        })
    }

    /// The alias address of `node` (made on first use; this node's is the proxy address).
    pub fn alias(&mut self, node: NodeId, this_node: NodeId) -> Option<Ipv4Addr> {
        if let Some(a) = self.aliases.get(&node) {
            return Some(*a);
        }
        let ip = if node == this_node {
            Ipv4Addr::from(self.first)
        } else {
            self.fresh()?
        };
        self.aliases.insert(node, ip);
        self.nodes.insert(ip, node);
        Some(ip)
    }

    /// The next unused address of the /16 (never .0 or .255, never 127.0.0.0/24).
    fn fresh(&mut self) -> Option<Ipv4Addr> {
        let net = u32::from(self.proxy_net);
        for _ in 0..=0xffff {
            self.next = net | (self.next.wrapping_add(1) & 0xffff);
            let ip = Ipv4Addr::from(self.next);
            let last = ip.octets()[3];
            if last == 0 || last == 255 || self.next >> 8 == 0x007f_0000 {
                continue;
            }
            if self.next != self.first && !self.nodes.contains_key(&ip) {
                return Some(ip);
            }
        }
        None
    }

    /// The node whose alias `ip` is.
    pub fn node_of(&self, ip: Ipv4Addr) -> Option<NodeId> {
        self.nodes.get(&ip).copied()
    }

    /// A shim reported a socket's filter of `group` (`joined`: it is a member).
    pub fn reported(&mut self, inode: u64, group: NodeId, joined: bool) {
        let groups = self.members.entry(inode).or_default();
        if joined {
            groups.insert(group);
        } else {
            groups.remove(&group);
            if groups.is_empty() {
                self.members.remove(&inode);
            }
        }
    }

    /// The member sockets that closed. A socket not listed in `/proc/net/udp` (closed,
    /// never bound, or skipped by a listing that raced with other sockets opening and
    /// closing) has closed only if the kernel also counts fewer memberships of one of its
    /// groups on loopback than the daemon knows sockets: then as many of the unlisted ones
    /// as are missing go, those seen bound before first.
    fn closed(&mut self, live: &HashSet<u64>) -> Vec<u64> {
        for &inode in self.members.keys() {
            if live.contains(&inode) {
                self.seen_bound.insert(inode);
            }
        }
        let mut unlisted: Vec<u64> = self
            .members
            .keys()
            .copied()
            .filter(|i| !live.contains(i))
            .collect();
        if unlisted.is_empty() {
            return Vec::new();
        }
        let Some(users) = loopback_group_users() else {
            return Vec::new();
        };
        unlisted.sort_by_key(|i| (!self.seen_bound.contains(i), *i));
        let groups: BTreeSet<NodeId> = unlisted
            .iter()
            .flat_map(|i| self.members[i].iter().copied())
            .collect();
        let mut gone: Vec<u64> = Vec::new();
        for g in groups {
            let known = self.members.values().filter(|gs| gs.contains(&g)).count() as u32;
            let kernel_own = u32::from(g == NodeId::from(ALL_HOSTS));
            let held = users
                .get(&g)
                .copied()
                .unwrap_or(0)
                .saturating_sub(kernel_own);
            let mut missing = known.saturating_sub(held);
            // Sockets already found closed for another group count here too.
            missing = missing.saturating_sub(
                gone.iter()
                    .filter(|i| self.members[*i].contains(&g))
                    .count() as u32,
            );
            for &i in &unlisted {
                if missing == 0 {
                    break;
                }
                if self.members[&i].contains(&g) && !gone.contains(&i) {
                    gone.push(i);
                    missing -= 1;
                }
            }
        }
        for i in &gone {
            self.members.remove(i);
            self.seen_bound.remove(i);
        }
        gone
    }

    /// When the next membership check is due.
    pub fn check_due(&self) -> Instant {
        self.next_check
    }
}

impl Daemon {
    pub(super) fn start_kernel_groups(&mut self) {
        self.kernel_groups = KernelGroups::new(self.cfg.proxy_ip);
        if self.kernel_groups.is_some() {
            let now = self.clock.now();
            self.node.mc_set_filter(
                now,
                SocketId::kernel(HOST_ITSELF),
                NodeId::from(ALL_HOSTS),
                Some(weft_multicast::SocketFilter::any()),
                false,
            );
        }
        if self.kernel_groups.is_none() {
            info!(
                "another daemon delivers group datagrams through this network namespace's \
                 loopback: delivering to per-socket addresses"
            );
        }
    }

    /// Drops the memberships of member sockets that no longer exist. `force`: now, rather
    /// than when the periodic check is due.
    pub(super) fn check_kernel_members(&mut self, force: bool) {
        let Some(kg) = self.kernel_groups.as_mut() else {
            return;
        };
        let now = Instant::now();
        if !force && now < kg.next_check {
            return;
        }
        kg.next_check = now + CHECK_EVERY;
        if kg.members.is_empty() {
            return;
        }
        let Some(live) = live_udp_inodes() else {
            return;
        };
        kg.checks += 1;
        let gone: Vec<SocketId> = kg.closed(&live).into_iter().map(SocketId::kernel).collect();
        if gone.is_empty() {
            return;
        }
        kg.closed_found += gone.len() as u64;
        debug!(
            count = gone.len(),
            "member sockets closed: their memberships end"
        );
        self.release_memberships(gone);
    }

    /// How long the event loop may sleep before a membership check is due (`None`: no
    /// kernel-held memberships to check).
    pub(super) fn kernel_check_timeout(&self) -> Option<Duration> {
        let kg = self.kernel_groups.as_ref()?;
        if kg.members.is_empty() {
            return None;
        }
        Some(kg.check_due().saturating_duration_since(Instant::now()))
    }
}
