//! The shim's per-process state behind one short-held lock: the fd table, the view of the
//! overlay (which addresses are overlay-bound), and the datagram proxy caches. The control
//! connection has its own lock (held across daemon round trips); the order is always
//! control → state, never the reverse.

use crate::fdtable::Table;
use crate::guard::{LockGuard, ShimLock};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicI32, Ordering};
use weft_core::Endpoint;
use weft_ipc::Welcome;

/// What the daemon told us about the overlay.
#[derive(Debug, Clone)]
pub struct View {
    pub node: Ipv4Addr,
    pub proxy_ip: Ipv4Addr,
    nodes: BTreeSet<u32>,
    prefixes: Vec<(u32, u8)>,
    /// When the node list was last fetched (CLOCK_MONOTONIC ms).
    pub refreshed_ms: u64,
}

impl View {
    pub fn from_welcome(w: &Welcome) -> View {
        View {
            node: w.node.addr(),
            proxy_ip: w.proxy_ip,
            nodes: w.nodes.iter().map(|n| n.0).collect(),
            prefixes: w
                .prefixes
                .iter()
                .map(|(a, len)| (u32::from(*a), (*len).min(32)))
                .collect(),
            refreshed_ms: 0,
        }
    }

    pub fn set_nodes(&mut self, nodes: &[weft_core::NodeId]) {
        self.nodes = nodes.iter().map(|n| n.0).collect();
    }

    /// The address names an overlay node (or lies in an overlay prefix).
    pub fn is_overlay(&self, ip: Ipv4Addr) -> bool {
        let a = u32::from(ip);
        self.nodes.contains(&a)
            || self.prefixes.iter().any(|&(p, len)| {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                a & mask == p & mask
            })
    }
}

pub struct Shared {
    pub table: Table,
    pub view: Option<View>,
    /// remote overlay endpoint → the kernel address on `proxy_ip` that stands for it.
    pub proxy_of: BTreeMap<Endpoint, SocketAddrV4>,
    /// proxy port → the overlay endpoint it stands for.
    pub remote_of: BTreeMap<u16, Endpoint>,
    /// Datagram ports this process registered, with how many of its sockets use each (two
    /// `SO_REUSEADDR` sockets on one port share the registration).
    pub dgram_ports: BTreeMap<u16, u32>,
    /// Listening ports this process registered.
    pub listen_ports: BTreeSet<u16>,
}

static SHARED: ShimLock<Shared> = ShimLock::new(Shared {
    table: Table::new(),
    view: None,
    proxy_of: BTreeMap::new(),
    remote_of: BTreeMap::new(),
    dgram_ports: BTreeMap::new(),
    listen_ports: BTreeSet::new(),
});

pub fn lock() -> LockGuard<'static, Shared> {
    SHARED.lock()
}

pub fn shared_lock() -> &'static ShimLock<Shared> {
    &SHARED
}

/// The process whose memory this state describes: a fork child takes it over in the atfork
/// handler; a vfork child (shared memory, no handler) must leave it alone.
static OWNER: AtomicI32 = AtomicI32::new(0);

pub fn set_owner(pid: libc::pid_t) {
    OWNER.store(pid, Ordering::Release);
}

/// This call runs in the process that owns the shim's state (not in a vfork child).
pub fn in_owner() -> bool {
    OWNER.load(Ordering::Acquire) == crate::sys::getpid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::NodeId;

    #[test]
    fn nodes_and_prefixes_are_overlay() {
        let w = Welcome {
            node: NodeId::from(Ipv4Addr::new(127, 9, 0, 1)),
            proxy_ip: Ipv4Addr::new(127, 9, 1, 1),
            nodes: vec![NodeId::from(Ipv4Addr::new(127, 9, 0, 3))],
            prefixes: vec![
                (Ipv4Addr::new(10, 20, 0, 0), 16),
                (Ipv4Addr::new(1, 2, 3, 4), 40),
            ],
        };
        let v = View::from_welcome(&w);
        assert!(v.is_overlay(Ipv4Addr::new(127, 9, 0, 3)));
        assert!(!v.is_overlay(Ipv4Addr::new(127, 9, 0, 4)));
        assert!(!v.is_overlay(Ipv4Addr::new(127, 0, 0, 1)));
        assert!(v.is_overlay(Ipv4Addr::new(10, 20, 255, 1)));
        assert!(!v.is_overlay(Ipv4Addr::new(10, 21, 0, 1)));
        assert!(
            v.is_overlay(Ipv4Addr::new(1, 2, 3, 4)),
            "an over-long prefix is a host"
        );
    }
}
