//! The shim's per-process state behind one short-held lock: the fd table and the datagram
//! proxy caches (the view of the overlay is lock-free, in `view`). The control
//! connection has its own lock (held across daemon round trips); the order is always
//! control → state, never the reverse.

use crate::fdtable::Table;
use crate::guard::{LockGuard, ShimLock};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicI32, Ordering};
use weft_core::Endpoint;

pub struct Shared {
    pub table: Table,
    /// remote overlay endpoint → the kernel address on `proxy_ip` that stands for it.
    pub proxy_of: BTreeMap<Endpoint, SocketAddrV4>,
    /// proxy port → the overlay endpoint it stands for.
    pub remote_of: BTreeMap<u16, Endpoint>,
    /// Datagram ports this process registered, with how many of its sockets use each (two
    /// `SO_REUSEADDR` sockets on one port share the registration).
    pub dgram_ports: BTreeMap<u16, u32>,
    /// Listening ports this process registered.
    pub listen_ports: BTreeSet<u16>,
    /// Kernel group delivery: overlay node → the alias address its proxies live on, and back.
    pub mc_alias_of: BTreeMap<Ipv4Addr, Ipv4Addr>,
    pub mc_node_of: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Kernel group delivery: per (socket inode, group), which interfaces the program joined
    /// on (one kernel membership serves loopback and the overlay interface).
    pub mc_ifaces: BTreeMap<(u64, Ipv4Addr), u8>,
    /// Exact proxy addresses → the overlay endpoint behind them (`None`: not a proxy).
    pub proxy_at: BTreeMap<SocketAddrV4, Option<Endpoint>>,
}

static SHARED: ShimLock<Shared> = ShimLock::new(Shared {
    table: Table::new(),
    proxy_of: BTreeMap::new(),
    remote_of: BTreeMap::new(),
    dgram_ports: BTreeMap::new(),
    listen_ports: BTreeSet::new(),
    mc_alias_of: BTreeMap::new(),
    mc_node_of: BTreeMap::new(),
    mc_ifaces: BTreeMap::new(),
    proxy_at: BTreeMap::new(),
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
