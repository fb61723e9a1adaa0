//! What the daemon told us about the overlay (this node, its proxy address, the node list and
//! overlay prefixes), readable without a lock.
//!
//! Every `connect`/`sendto` of every shimmed program asks "is this address overlay-bound?",
//! overwhelmingly with "no"; that answer must cost a few loads, not a mutex and two signal-mask
//! system calls. A seqlock over fixed arrays of atomics: the one writer (under the control
//! lock, signals blocked) bumps the sequence to odd, writes, bumps it to even; readers retry if
//! it moved. Readers never wait on a writer that could be interrupted, and never allocate, so
//! this is safe from signal handlers too.

use std::net::Ipv4Addr;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use weft_ipc::Welcome;

/// Nodes kept (sorted); a larger overlay should name itself with prefixes.
pub const MAX_NODES: usize = 8192;
pub const MAX_PREFIXES: usize = 32;

struct View {
    seq: AtomicU64,
    present: AtomicBool,
    node: AtomicU32,
    proxy_ip: AtomicU32,
    refreshed_ms: AtomicU64,
    count: AtomicUsize,
    nodes: [AtomicU32; MAX_NODES],
    prefix_count: AtomicUsize,
    /// (network << 8) | prefix length
    prefixes: [AtomicU64; MAX_PREFIXES],
}

static VIEW: View = View::new();

impl View {
    const fn new() -> View {
        View {
            seq: AtomicU64::new(0),
            present: AtomicBool::new(false),
            node: AtomicU32::new(0),
            proxy_ip: AtomicU32::new(0),
            refreshed_ms: AtomicU64::new(0),
            count: AtomicUsize::new(0),
            nodes: [const { AtomicU32::new(0) }; MAX_NODES],
            prefix_count: AtomicUsize::new(0),
            prefixes: [const { AtomicU64::new(0) }; MAX_PREFIXES],
        }
    }

    /// Runs `f` as a consistent read.
    fn read<R>(&self, f: impl Fn(&View) -> R) -> R {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let r = f(self);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return r;
            }
        }
    }

    /// Runs `f` as the (single) writer. Callers hold the control lock.
    fn write(&self, f: impl FnOnce(&View)) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::Release);
        f(self);
        self.seq.fetch_add(1, Ordering::Release);
    }
}

fn read<R>(f: impl Fn(&View) -> R) -> R {
    VIEW.read(f)
}

fn write(f: impl FnOnce(&View)) {
    VIEW.write(f)
}

fn store_nodes(v: &View, nodes: impl Iterator<Item = u32>) {
    let mut sorted: Vec<u32> = nodes.collect();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() > MAX_NODES {
        crate::log::debug!(
            "{} overlay nodes: only {MAX_NODES} are classified",
            sorted.len()
        );
        sorted.truncate(MAX_NODES);
    }
    for (slot, a) in v.nodes.iter().zip(&sorted) {
        slot.store(*a, Ordering::Relaxed);
    }
    v.count.store(sorted.len(), Ordering::Relaxed);
}

/// The daemon's welcome (a new connection).
pub fn publish(w: &Welcome, now_ms: u64) {
    write(|v| {
        v.node.store(w.node.0, Ordering::Relaxed);
        v.proxy_ip.store(u32::from(w.proxy_ip), Ordering::Relaxed);
        store_nodes(v, w.nodes.iter().map(|n| n.0));
        let n = w.prefixes.len().min(MAX_PREFIXES);
        for (slot, (a, len)) in v.prefixes.iter().zip(&w.prefixes) {
            slot.store(
                (u64::from(u32::from(*a)) << 8) | u64::from((*len).min(32)),
                Ordering::Relaxed,
            );
        }
        v.prefix_count.store(n, Ordering::Relaxed);
        v.refreshed_ms.store(now_ms, Ordering::Relaxed);
        v.present.store(true, Ordering::Relaxed);
    });
}

/// A fresh node list (`Reply::Nodes`); `None`: the refresh failed, try again later.
pub fn refreshed(nodes: Option<&[weft_core::NodeId]>, now_ms: u64) {
    write(|v| {
        if let Some(nodes) = nodes {
            store_nodes(v, nodes.iter().map(|n| n.0));
        }
        v.refreshed_ms.store(now_ms, Ordering::Relaxed);
    });
}

pub fn present() -> bool {
    read(|v| v.present.load(Ordering::Relaxed))
}

/// This node's address and the daemon's proxy address.
pub fn addresses() -> Option<(Ipv4Addr, Ipv4Addr)> {
    read(|v| {
        v.present.load(Ordering::Relaxed).then(|| {
            (
                Ipv4Addr::from(v.node.load(Ordering::Relaxed)),
                Ipv4Addr::from(v.proxy_ip.load(Ordering::Relaxed)),
            )
        })
    })
}

pub fn refreshed_ms() -> u64 {
    read(|v| v.refreshed_ms.load(Ordering::Relaxed))
}

/// `None` without a view; else whether `ip` is a node or lies in an overlay prefix.
pub fn contains(ip: Ipv4Addr) -> Option<bool> {
    contains_in(&VIEW, ip)
}

fn contains_in(view: &View, ip: Ipv4Addr) -> Option<bool> {
    let a = u32::from(ip);
    view.read(|v| {
        if !v.present.load(Ordering::Relaxed) {
            return None;
        }
        let n = v.count.load(Ordering::Relaxed).min(MAX_NODES);
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match v.nodes[mid].load(Ordering::Relaxed).cmp(&a) {
                std::cmp::Ordering::Equal => return Some(true),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        let p = v.prefix_count.load(Ordering::Relaxed).min(MAX_PREFIXES);
        let in_prefix = v.prefixes[..p].iter().any(|slot| {
            let e = slot.load(Ordering::Relaxed);
            let (net, len) = ((e >> 8) as u32, (e & 0xff) as u32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            a & mask == net & mask
        });
        Some(in_prefix)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use weft_core::NodeId;

    proptest! {
        /// Membership matches a plain set, whatever the node list and the probes.
        #[test]
        fn membership_matches_a_set(
            nodes in proptest::collection::vec(any::<u32>(), 0..300),
            probes in proptest::collection::vec(any::<u32>(), 0..100),
        ) {
            let v = Box::new(View::new());
            v.write(|v| store_nodes(v, nodes.iter().copied()));
            v.write(|v| v.present.store(true, Ordering::Relaxed));
            let set: BTreeSet<u32> = nodes.iter().copied().collect();
            for a in probes.iter().chain(nodes.iter()) {
                prop_assert_eq!(contains_in(&v, Ipv4Addr::from(*a)), Some(set.contains(a)));
            }
        }
    }

    #[test]
    fn nodes_and_prefixes_are_overlay() {
        assert_eq!(contains(Ipv4Addr::new(127, 9, 0, 3)), None, "no view yet");
        let w = Welcome {
            node: NodeId::from(Ipv4Addr::new(127, 9, 0, 1)),
            proxy_ip: Ipv4Addr::new(127, 9, 1, 1),
            nodes: (1..=200)
                .rev()
                .map(|i| NodeId::from(Ipv4Addr::new(127, 9, 0, i)))
                .collect(),
            prefixes: vec![
                (Ipv4Addr::new(10, 20, 0, 0), 16),
                (Ipv4Addr::new(1, 2, 3, 4), 40),
            ],
        };
        publish(&w, 5);
        assert_eq!(
            addresses(),
            Some((Ipv4Addr::new(127, 9, 0, 1), Ipv4Addr::new(127, 9, 1, 1)))
        );
        for i in 1..=200 {
            assert_eq!(
                contains(Ipv4Addr::new(127, 9, 0, i)),
                Some(true),
                "node {i}"
            );
        }
        assert_eq!(contains(Ipv4Addr::new(127, 9, 0, 201)), Some(false));
        assert_eq!(contains(Ipv4Addr::new(127, 0, 0, 1)), Some(false));
        assert_eq!(contains(Ipv4Addr::new(10, 20, 255, 1)), Some(true));
        assert_eq!(contains(Ipv4Addr::new(10, 21, 0, 1)), Some(false));
        assert_eq!(
            contains(Ipv4Addr::new(1, 2, 3, 4)),
            Some(true),
            "an over-long prefix is a host"
        );
        refreshed(Some(&[NodeId::from(Ipv4Addr::new(127, 9, 0, 250))]), 9);
        assert_eq!(contains(Ipv4Addr::new(127, 9, 0, 250)), Some(true));
        assert_eq!(contains(Ipv4Addr::new(127, 9, 0, 3)), Some(false));
        assert_eq!(refreshed_ms(), 9);
        refreshed(None, 12);
        assert_eq!(contains(Ipv4Addr::new(127, 9, 0, 250)), Some(true));
    }
}
