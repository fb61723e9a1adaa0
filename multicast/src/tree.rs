//! Source-rooted shortest-path trees. Every node computes, from the same link-state graph and
//! the same membership, the part of S's tree that concerns it: the children that lead toward
//! members accepting S. The union of those local answers is the tree pruned to the members, so
//! a packet crosses each overlay link at most once.
//!
//! A node L forwards to child C exactly when some member M accepting S has a shortest path
//! from S that passes through L then C. That is found by walking M's parent chain toward S; the
//! walk is memoised so one computation visits each node of the tree once.

use crate::db::MembershipDb;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use weft_core::NodeId;

/// The daemon's shortest-path trees, one per source, computed from its link-state graph.
/// Every node must answer identically for the same graph (deterministic tie-breaking), or the
/// per-node answers do not compose into one tree.
pub trait ShortestPaths {
    /// Changes whenever any answer of [`Self::parent`] may change (a new graph or new costs).
    fn generation(&self) -> u64;

    /// The predecessor of `node` on the shortest-path tree rooted at `source` (the neighbour
    /// of `node` a packet from `source` arrives from), or `None` when `node` is `source` or is
    /// unreachable from it.
    fn parent(&self, source: NodeId, node: NodeId) -> Option<NodeId>;
}

/// One branch of the tree out of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextHop {
    pub neighbour: NodeId,
    /// A member downstream asked for the reliable mode: carry the packet on the hop-by-hop
    /// reliable link. The flag is consistent along the tree (every branch above a reliable
    /// member is reliable), so reliable members get a fully repaired path.
    pub reliable: bool,
}

/// What this node does with a packet from `source` to a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// This node is a member that accepts the source. At the source itself the daemon still
    /// applies `IP_MULTICAST_LOOP`.
    pub deliver_locally: bool,
    /// The neighbour this node expects the packet from (its parent on the source's tree);
    /// `None` at the source or when the source cannot reach this node. The daemon may drop
    /// copies from anyone else (a reverse-path check) to stop loops while routes settle.
    pub upstream: Option<NodeId>,
    /// Children toward members, in node order. Empty when this node is a leaf or off-tree.
    pub next_hops: Vec<NextHop>,
}

/// Computes this node's forwarding for (source, group) without caching.
pub fn compute_forwarding<P: ShortestPaths + ?Sized>(
    db: &MembershipDb,
    paths: &P,
    source: NodeId,
    group: NodeId,
) -> Forwarding {
    let local = db.local();
    let deliver_locally = db
        .record(local, group)
        .is_some_and(|r| r.membership().accepts(source));
    let upstream = if local == source {
        None
    } else {
        paths.parent(source, local)
    };
    if local != source && upstream.is_none() {
        // Off the source's tree: nothing downstream of us.
        return Forwarding {
            deliver_locally,
            upstream,
            next_hops: Vec::new(),
        };
    }

    let mut walk = TreeWalk {
        paths,
        source,
        local,
        marks: HashMap::new(),
        path: Vec::new(),
    };
    let mut branches: BTreeMap<NodeId, bool> = BTreeMap::new();
    for member in db.members(group) {
        let node = member.origin();
        if node == local || node == source || !member.membership().accepts(source) {
            continue;
        }
        if let Some(child) = walk.child_toward(node) {
            *branches.entry(child).or_default() |= member.membership().is_reliable();
        }
    }
    let next_hops = branches
        .into_iter()
        .map(|(neighbour, reliable)| NextHop {
            neighbour,
            reliable,
        })
        .collect();
    Forwarding {
        deliver_locally,
        upstream,
        next_hops,
    }
}

#[derive(Clone, Copy)]
enum Mark {
    /// On the chain being walked now; meeting it again means the parent relation has a cycle.
    Walking,
    /// Resolved: the child of `local` this node's path from the source goes through, if any.
    Via(Option<NodeId>),
}

struct TreeWalk<'a, P: ?Sized> {
    paths: &'a P,
    source: NodeId,
    local: NodeId,
    marks: HashMap<NodeId, Mark>,
    path: Vec<NodeId>,
}

impl<P: ShortestPaths + ?Sized> TreeWalk<'_, P> {
    /// The child of `local` on the source's path to `node`, or `None` if that path does not
    /// pass through `local` (or `node` is unreachable, or the parent relation is broken).
    fn child_toward(&mut self, node: NodeId) -> Option<NodeId> {
        self.path.clear();
        let mut current = node;
        let via = loop {
            match self.marks.get(&current) {
                Some(Mark::Via(via)) => break *via,
                Some(Mark::Walking) => break None,
                None => {}
            }
            self.marks.insert(current, Mark::Walking);
            self.path.push(current);
            match self.paths.parent(self.source, current) {
                None => break None,
                Some(parent) if parent == self.local => break Some(current),
                Some(parent) if parent == self.source => break None,
                Some(parent) => current = parent,
            }
        };
        for &n in &self.path {
            self.marks.insert(n, Mark::Via(via));
        }
        via
    }
}

#[derive(Debug, Clone)]
struct CachedForwarding {
    topology_generation: u64,
    membership_generation: u64,
    forwarding: Forwarding,
}

/// Hit and miss counts of a [`TreeCache`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
}

/// Forwarding answers per (source, group), valid while neither the topology generation nor the
/// group's membership generation changed; a lookup is one hash probe, so a forwarding decision
/// costs O(neighbours) to act on.
#[derive(Debug, Clone)]
pub struct TreeCache {
    entries: HashMap<(NodeId, NodeId), CachedForwarding>,
    capacity: usize,
    hits: u64,
    misses: u64,
}

/// Default bound on cached (source, group) pairs: 20 senders × 1 000 groups fit three times.
pub const DEFAULT_CACHE_CAPACITY: usize = 1 << 16;

impl Default for TreeCache {
    fn default() -> Self {
        TreeCache::with_capacity(DEFAULT_CACHE_CAPACITY)
    }
}

impl TreeCache {
    /// `capacity` bounds memory when packets name many (source, group) pairs; past it, stale
    /// entries go first, then everything.
    pub fn with_capacity(capacity: usize) -> Self {
        TreeCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            hits: 0,
            misses: 0,
        }
    }

    /// This node's forwarding for a packet from `source` to `group`. `db` must be the same
    /// database on every call (generations are only comparable within one database).
    pub fn forwarding<P: ShortestPaths + ?Sized>(
        &mut self,
        db: &MembershipDb,
        paths: &P,
        source: NodeId,
        group: NodeId,
    ) -> &Forwarding {
        let topology_generation = paths.generation();
        let membership_generation = db.group_generation(group);
        let key = (source, group);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.evict(db, topology_generation);
        }
        let fresh = |c: &CachedForwarding| {
            c.topology_generation == topology_generation
                && c.membership_generation == membership_generation
        };
        let recompute = || CachedForwarding {
            topology_generation,
            membership_generation,
            forwarding: compute_forwarding(db, paths, source, group),
        };
        // One hash probe on the hot path (a valid entry).
        let cached = match self.entries.entry(key) {
            Entry::Occupied(slot) if fresh(slot.get()) => {
                self.hits += 1;
                slot.into_mut()
            }
            Entry::Occupied(mut slot) => {
                self.misses += 1;
                slot.insert(recompute());
                slot.into_mut()
            }
            Entry::Vacant(slot) => {
                self.misses += 1;
                slot.insert(recompute())
            }
        };
        &cached.forwarding
    }

    fn evict(&mut self, db: &MembershipDb, topology_generation: u64) {
        self.entries.retain(|&(_, group), c| {
            c.topology_generation == topology_generation
                && c.membership_generation == db.group_generation(group)
        });
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
    }

    /// Cached answers that are still valid for `db` and `paths`, in (source, group) order: the
    /// tree from this node as `weft status` shows it.
    pub fn valid_entries<P: ShortestPaths + ?Sized>(
        &self,
        db: &MembershipDb,
        paths: &P,
    ) -> Vec<(NodeId, NodeId, &Forwarding)> {
        let topology_generation = paths.generation();
        let mut out: Vec<_> = self
            .entries
            .iter()
            .filter(|(&(_, group), c)| {
                c.topology_generation == topology_generation
                    && c.membership_generation == db.group_generation(group)
            })
            .map(|(&(source, group), c)| (source, group, &c.forwarding))
            .collect();
        out.sort_by_key(|&(source, group, _)| (source, group));
        out
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.len(),
            hits: self.hits,
            misses: self.misses,
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::SocketId;
    use crate::record::{Membership, MembershipRecord, SourceFilter, Version};

    const G: NodeId = NodeId(0xef00_0001);

    fn n(i: u32) -> NodeId {
        NodeId(0x0a00_0000 + i)
    }

    /// A fixed tree: parents given per node, one source.
    struct Fixed {
        generation: u64,
        parents: HashMap<NodeId, NodeId>,
    }

    impl ShortestPaths for Fixed {
        fn generation(&self) -> u64 {
            self.generation
        }
        fn parent(&self, _source: NodeId, node: NodeId) -> Option<NodeId> {
            self.parents.get(&node).copied()
        }
    }

    fn member(db: &mut MembershipDb, node: NodeId, reliable: bool) {
        let m = Membership::Present {
            sources: SourceFilter::Any,
            reliable,
        };
        let r = MembershipRecord::new(node, G, Version::new(1, 1), m).expect("valid");
        db.apply(r);
    }

    // 1 is the source; 1 -> 2 -> {3, 4}; 3 -> 5.
    fn chain(generation: u64) -> Fixed {
        let parents = [(2, 1), (3, 2), (4, 2), (5, 3)].map(|(c, p)| (n(c), n(p)));
        Fixed {
            generation,
            parents: parents.into_iter().collect(),
        }
    }

    #[test]
    fn prunes_to_members_and_marks_reliable_branches() {
        let mut db = MembershipDb::new(n(2), 1);
        member(&mut db, n(5), true);
        member(&mut db, n(4), false);
        let f = compute_forwarding(&db, &chain(1), n(1), G);
        assert!(!f.deliver_locally);
        assert_eq!(f.upstream, Some(n(1)));
        assert_eq!(
            f.next_hops,
            vec![
                NextHop {
                    neighbour: n(3),
                    reliable: true
                },
                NextHop {
                    neighbour: n(4),
                    reliable: false
                }
            ]
        );
        db.local_join(SocketId(1), G, Some(n(9)), false)
            .expect("join");
        let f = compute_forwarding(&db, &chain(1), n(1), G);
        assert!(!f.deliver_locally, "the local member accepts only 10.0.0.9");
    }

    #[test]
    fn off_tree_node_and_cyclic_parents_forward_nothing() {
        let mut db = MembershipDb::new(n(7), 1);
        member(&mut db, n(5), false);
        assert_eq!(
            compute_forwarding(&db, &chain(1), n(1), G),
            Forwarding::default()
        );
        let cyclic = Fixed {
            generation: 1,
            parents: [(7, 1), (5, 6), (6, 5)]
                .map(|(c, p)| (n(c), n(p)))
                .into_iter()
                .collect(),
        };
        assert!(compute_forwarding(&db, &cyclic, n(1), G)
            .next_hops
            .is_empty());
    }

    #[test]
    fn cache_follows_generations() {
        let mut db = MembershipDb::new(n(2), 1);
        member(&mut db, n(4), false);
        let mut cache = TreeCache::default();
        let hops = |f: &Forwarding| f.next_hops.iter().map(|h| h.neighbour).collect::<Vec<_>>();
        assert_eq!(hops(cache.forwarding(&db, &chain(1), n(1), G)), vec![n(4)]);
        assert_eq!(hops(cache.forwarding(&db, &chain(1), n(1), G)), vec![n(4)]);
        member(&mut db, n(5), false);
        assert_eq!(
            hops(cache.forwarding(&db, &chain(1), n(1), G)),
            vec![n(3), n(4)]
        );
        let mut moved = chain(2);
        moved.parents.insert(n(4), n(3));
        assert_eq!(hops(cache.forwarding(&db, &moved, n(1), G)), vec![n(3)]);
        assert_eq!(
            cache.stats(),
            CacheStats {
                entries: 1,
                hits: 1,
                misses: 3
            }
        );
        assert_eq!(cache.valid_entries(&db, &moved).len(), 1);
        assert!(cache.valid_entries(&db, &chain(1)).is_empty());
    }

    #[test]
    fn capacity_bounds_the_cache() {
        let mut db = MembershipDb::new(n(2), 1);
        member(&mut db, n(4), false);
        let mut cache = TreeCache::with_capacity(4);
        for s in 0..10 {
            cache.forwarding(&db, &chain(1), n(100 + s), G);
            assert!(cache.stats().entries <= 4);
        }
    }
}
