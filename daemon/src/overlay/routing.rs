//! Link-state database and shortest paths. Every node floods its adjacencies; every node runs
//! Dijkstra over the same database with the same deterministic tie-breaking, so all nodes agree
//! on every source's shortest-path tree (multicast relies on that).
//!
//! An edge u→v is used only when both u and v list each other (two-way check): a dead node's
//! stale advert cannot attract traffic, and a one-way link is no link.

use crate::overlay::wire::LinkStateAdvert;
use ahash::AHashMap as HashMap;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;
use weft_core::{Instant, NodeId};
use weft_secure::SecretKey;

/// Adverts of nodes unreachable this long are forgotten.
const FORGET_UNREACHABLE: Duration = Duration::from_secs(60);

/// What to do about an advert a neighbour sent.
#[derive(Debug, PartialEq, Eq)]
pub enum AdvertOutcome {
    /// Installed: flood it to every neighbour but the sender.
    Flood(LinkStateAdvert),
    /// We hold a newer version: send ours back to the sender.
    Reply(LinkStateAdvert),
    /// A stale copy of our own advert outranks ours: originate above it.
    Reoriginate,
    Nothing,
}

/// What routing holds and has computed (`weft status`, the scale simulation).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RoutingStats {
    /// Adverts in the link-state database (ours included) and the adjacencies they list.
    pub adverts: usize,
    pub advert_links: usize,
    /// Shortest-path computations of our own routes (one per batch of input that changed the
    /// database), and of other sources' trees (multicast).
    pub spf_runs: u64,
    pub source_trees: u64,
    /// Heap bytes of the database, the graph built from it, our tree and the first hops, from
    /// the containers' element sizes (allocator overhead not counted).
    pub memory_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    pub dst: NodeId,
    pub next_hop: NodeId,
    /// Unit: the status's `cost_unit`.
    pub cost: u64,
    pub path: Vec<NodeId>,
}

/// The node's routing: the link-state database, this node's shortest-path tree and the
/// first hop toward every reachable node. Changes to the database mark the routes stale;
/// [`Routing::refresh`] recomputes them once, however many changes a batch of input made.
#[derive(Debug)]
pub struct Routing {
    local: NodeId,
    lsdb: LinkStateDb,
    /// The database generation the routes were computed from.
    computed: Option<u64>,
    tree: ShortestPathTree,
    first_hops: BTreeMap<NodeId, NodeId>,
    unreachable_since: HashMap<NodeId, Instant>,
    spf_runs: u64,
    source_trees: u64,
    /// Signs our adverts (secure overlays): only their origin may speak for a node.
    signer: Option<Arc<SecretKey>>,
}

impl Routing {
    pub fn new(local: NodeId, first_seq: u64, signer: Option<Arc<SecretKey>>) -> Self {
        Routing {
            local,
            signer,
            lsdb: LinkStateDb::new(local, first_seq),
            computed: None,
            tree: ShortestPathTree::default(),
            first_hops: BTreeMap::new(),
            unreachable_since: HashMap::new(),
            spf_runs: 0,
            source_trees: 0,
        }
    }

    /// Our advert for these adjacencies, if it changed (or `force`): flood it.
    pub fn originate(
        &mut self,
        adjacencies: Vec<(NodeId, u32)>,
        force: bool,
    ) -> Option<LinkStateAdvert> {
        let signer = self.signer.as_deref();
        let advert = self.lsdb.originate_with(adjacencies, force, |a| {
            if let Some(key) = signer {
                a.sign(key);
            }
        })?;
        debug!(
            seq = advert.seq,
            links = advert.links.len(),
            "originate link state"
        );
        Some(advert)
    }

    pub fn on_advert(&mut self, advert: LinkStateAdvert) -> AdvertOutcome {
        let origin = advert.origin;
        match self.lsdb.apply(advert.clone()) {
            Applied::Newer => AdvertOutcome::Flood(advert),
            Applied::Same => AdvertOutcome::Nothing,
            Applied::Older => match self.lsdb.get(origin) {
                Some(ours) => AdvertOutcome::Reply(ours.clone()),
                None => AdvertOutcome::Nothing,
            },
            Applied::OwnStale => AdvertOutcome::Reoriginate,
        }
    }

    /// Every advert held (a new neighbour's full sync).
    pub fn adverts(&self) -> impl Iterator<Item = &LinkStateAdvert> {
        self.lsdb.adverts()
    }

    pub fn is_stale(&self) -> bool {
        self.computed != Some(self.lsdb.generation())
    }

    /// Recomputes the routes if the database changed; true when the first hops changed.
    pub fn refresh(&mut self) -> bool {
        if !self.is_stale() {
            return false;
        }
        self.computed = Some(self.lsdb.generation());
        self.spf_runs += 1;
        self.tree = self.lsdb.shortest_paths(self.local);
        let hops = self.tree.first_hops();
        if hops == self.first_hops {
            return false;
        }
        debug!(reachable = hops.len(), "routes changed");
        self.first_hops = hops;
        true
    }

    /// Bumped on every change to the graph (multicast trees are cached per generation).
    pub fn generation(&self) -> u64 {
        self.lsdb.generation()
    }

    /// The shortest-path tree rooted at another node (multicast forwards along those).
    pub fn tree_from(&mut self, source: NodeId) -> ShortestPathTree {
        self.source_trees += 1;
        self.lsdb.shortest_paths(source)
    }

    /// The advert held for `origin` (ours included).
    pub fn advert(&self, origin: NodeId) -> Option<&LinkStateAdvert> {
        self.lsdb.get(origin)
    }

    pub fn stats(&self) -> RoutingStats {
        use std::mem::size_of;
        let adverts = self.lsdb.adverts.len();
        let advert_links: usize = self.lsdb.adverts().map(|a| a.links.len()).sum();
        let link_bytes: usize = self
            .lsdb
            .adverts()
            .map(|a| a.links.capacity() * size_of::<(NodeId, u32)>())
            .sum();
        let db = adverts * (size_of::<NodeId>() + size_of::<LinkStateAdvert>()) + link_bytes;
        let graph = self.lsdb.graph.as_ref().map_or(0, |(_, g)| {
            g.nodes.capacity() * size_of::<NodeId>()
                + g.edges.capacity() * size_of::<Vec<(u32, u32)>>()
                + g.edges
                    .iter()
                    .map(|e| e.capacity() * size_of::<(u32, u32)>())
                    .sum::<usize>()
        });
        let tree = self.tree.nodes.capacity() * size_of::<NodeId>()
            + self.tree.dist.capacity() * size_of::<u64>()
            + self.tree.parent.capacity() * size_of::<u32>();
        let hops = self.first_hops.len() * 2 * size_of::<NodeId>()
            + self.unreachable_since.len() * (size_of::<NodeId>() + size_of::<Instant>());
        RoutingStats {
            adverts,
            advert_links,
            spf_runs: self.spf_runs,
            source_trees: self.source_trees,
            memory_bytes: db + graph + tree + hops,
        }
    }

    pub fn first_hop(&self, dst: NodeId) -> Option<NodeId> {
        self.first_hops.get(&dst).copied()
    }

    pub fn is_reachable(&self, node: NodeId) -> bool {
        node == self.local || self.first_hops.contains_key(&node)
    }

    /// Whether `node` is another node this overlay knows (its advert is held).
    pub fn knows_other(&self, node: NodeId) -> bool {
        node != self.local && self.lsdb.get(node).is_some()
    }

    /// Every node in the link-state database (reachable or not), sorted.
    pub fn known_nodes(&self) -> Vec<NodeId> {
        self.lsdb.adverts().map(|a| a.origin).collect()
    }

    /// Next hop and path cost toward every reachable node.
    pub fn routes(&self) -> impl Iterator<Item = (NodeId, NodeId, u64)> + '_ {
        self.first_hops
            .iter()
            .map(|(d, h)| (*d, *h, self.tree.dist(*d).unwrap_or(u64::MAX)))
    }

    pub fn status(&self) -> Vec<RouteStatus> {
        self.first_hops
            .iter()
            .map(|(dst, hop)| RouteStatus {
                dst: *dst,
                next_hop: *hop,
                cost: self.tree.dist(*dst).unwrap_or(u64::MAX),
                path: self.tree.path(*dst).unwrap_or_default(),
            })
            .collect()
    }

    /// Forgets the adverts of nodes unreachable for a long time.
    pub fn forget_long_unreachable(&mut self, now: Instant) {
        for n in self.known_nodes() {
            if self.is_reachable(n) {
                self.unreachable_since.remove(&n);
            } else {
                self.unreachable_since.entry(n).or_insert(now);
            }
        }
        let forget: Vec<NodeId> = self
            .unreachable_since
            .iter()
            .filter(|(_, &t)| now - t >= FORGET_UNREACHABLE)
            .map(|(n, _)| *n)
            .collect();
        if !forget.is_empty() {
            self.lsdb.retain(|n| !forget.contains(&n));
            for n in forget {
                self.unreachable_since.remove(&n);
            }
        }
    }
}

/// Serial-number order (RFC 1982) on 64-bit sequence numbers: `a` is newer than `b` when it is
/// ahead by less than half the number space. No value is a maximum, so one advert carrying
/// 2^64−1 cannot pin an origin: the next one (wrapping to 0) is newer again, and no arithmetic
/// on a received number can overflow.
pub fn seq_newer(a: u64, b: u64) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 63
}

#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Installed: flood it on.
    Newer,
    /// We already had this version.
    Same,
    /// Ours is newer: send ours back to whoever sent this one.
    Older,
    /// A copy of our own advert from before a restart that outranks ours: re-originate above it.
    OwnStale,
}

#[derive(Debug)]
pub struct LinkStateDb {
    local: NodeId,
    adverts: BTreeMap<NodeId, LinkStateAdvert>,
    next_seq: u64,
    /// Bumped on every change to the graph.
    generation: u64,
    /// The graph with the two-way check applied, rebuilt lazily per generation.
    graph: Option<(u64, Graph)>,
}

/// Dense adjacency: nodes sorted by id, edges as (index, cost).
#[derive(Debug, Default)]
struct Graph {
    nodes: Vec<NodeId>,
    edges: Vec<Vec<(u32, u32)>>,
}

impl Graph {
    fn index(&self, n: NodeId) -> Option<usize> {
        self.nodes.binary_search(&n).ok()
    }
}

impl LinkStateDb {
    /// `first_seq` should grow across restarts (the I/O layer passes wall-clock based values)
    /// so a restarted node's adverts win at once; `Applied::OwnStale` covers clock trouble.
    pub fn new(local: NodeId, first_seq: u64) -> Self {
        LinkStateDb {
            local,
            adverts: BTreeMap::new(),
            next_seq: first_seq.max(1),
            generation: 0,
            graph: None,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn adverts(&self) -> impl Iterator<Item = &LinkStateAdvert> {
        self.adverts.values()
    }

    pub fn get(&self, origin: NodeId) -> Option<&LinkStateAdvert> {
        self.adverts.get(&origin)
    }

    pub fn own(&self) -> Option<&LinkStateAdvert> {
        self.adverts.get(&self.local)
    }

    /// Replaces our own advert if the adjacency set changed (or `force`); returns it to flood.
    pub fn originate(&mut self, links: Vec<(NodeId, u32)>, force: bool) -> Option<LinkStateAdvert> {
        self.originate_with(links, force, |_| {})
    }

    /// As [`Self::originate`], with `sign` attaching the origin's proof before the advert is
    /// stored (full syncs send what is stored).
    pub fn originate_with(
        &mut self,
        mut links: Vec<(NodeId, u32)>,
        force: bool,
        sign: impl FnOnce(&mut LinkStateAdvert),
    ) -> Option<LinkStateAdvert> {
        links.sort_unstable();
        links.dedup_by_key(|(n, _)| *n);
        if !force && self.own().is_some_and(|a| a.links == links) {
            return None;
        }
        let mut advert = LinkStateAdvert::new(self.local, self.next_seq, links);
        sign(&mut advert);
        self.next_seq = self.next_seq.wrapping_add(1);
        self.adverts.insert(self.local, advert.clone());
        self.generation += 1;
        Some(advert)
    }

    pub fn apply(&mut self, advert: LinkStateAdvert) -> Applied {
        if advert.origin == self.local {
            let ours = self.own().map_or(0, |a| a.seq);
            return if seq_newer(advert.seq, ours) {
                // Restart rule: a copy of ours from before a restart (or, unsigned, a forgery)
                // outranks ours; originate just above it, which every node then prefers.
                let above = advert.seq.wrapping_add(1);
                if seq_newer(above, self.next_seq) {
                    self.next_seq = above;
                }
                Applied::OwnStale
            } else if advert.seq == ours {
                Applied::Same
            } else {
                Applied::Older
            };
        }
        match self.adverts.get(&advert.origin) {
            Some(have) if have.seq == advert.seq => Applied::Same,
            Some(have) if !seq_newer(advert.seq, have.seq) => Applied::Older,
            _ => {
                self.adverts.insert(advert.origin, advert);
                self.generation += 1;
                Applied::Newer
            }
        }
    }

    /// Drops the adverts of nodes for which `keep` is false (long-unreachable nodes).
    pub fn retain(&mut self, mut keep: impl FnMut(NodeId) -> bool) {
        let before = self.adverts.len();
        let local = self.local;
        self.adverts.retain(|n, _| *n == local || keep(*n));
        if self.adverts.len() != before {
            self.generation += 1;
        }
    }

    fn graph(&mut self) -> &Graph {
        if self
            .graph
            .as_ref()
            .is_none_or(|(g, _)| *g != self.generation)
        {
            let nodes: Vec<NodeId> = self.adverts.keys().copied().collect();
            let edges = self
                .adverts
                .values()
                .map(|a| {
                    a.links
                        .iter()
                        .filter_map(|&(v, c)| {
                            let back = self.adverts.get(&v)?;
                            back.links
                                .binary_search_by_key(&a.origin, |(n, _)| *n)
                                .ok()?;
                            let vi = nodes.binary_search(&v).ok()?;
                            Some((vi as u32, c.max(1)))
                        })
                        .collect()
                })
                .collect();
            self.graph = Some((self.generation, Graph { nodes, edges }));
        }
        match &self.graph {
            Some((_, g)) => g,
            None => unreachable!("graph was just built"),
        }
    }

    /// Shortest-path tree rooted at `source`.
    pub fn shortest_paths(&mut self, source: NodeId) -> ShortestPathTree {
        shortest_path_tree(self.graph(), source)
    }
}

const NONE: u32 = u32::MAX;

/// Distances and parents from one source. Among equal-cost predecessors the one with the
/// smallest id is the parent, so every node derives the same tree from the same database.
#[derive(Debug, Clone, Default)]
pub struct ShortestPathTree {
    pub source: Option<NodeId>,
    nodes: Vec<NodeId>,
    dist: Vec<u64>,
    parent: Vec<u32>,
}

impl ShortestPathTree {
    fn index(&self, n: NodeId) -> Option<usize> {
        self.nodes.binary_search(&n).ok()
    }

    pub fn dist(&self, n: NodeId) -> Option<u64> {
        self.index(n)
            .map(|i| self.dist[i])
            .filter(|&d| d != u64::MAX)
    }

    pub fn parent(&self, n: NodeId) -> Option<NodeId> {
        let p = self.parent[self.index(n)?];
        (p != NONE).then(|| self.nodes[p as usize])
    }

    /// Reachable nodes (including the source) with their distance.
    pub fn reachable(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.nodes
            .iter()
            .zip(&self.dist)
            .filter(|(_, &d)| d != u64::MAX)
            .map(|(n, d)| (*n, *d))
    }

    /// The path source → … → `dst`, or None if unreachable.
    pub fn path(&self, dst: NodeId) -> Option<Vec<NodeId>> {
        let source = self.source?;
        self.dist(dst)?;
        let mut path = vec![dst];
        let mut at = dst;
        while at != source {
            at = self.parent(at)?;
            path.push(at);
            if path.len() > self.nodes.len() + 1 {
                return None;
            }
        }
        path.reverse();
        Some(path)
    }

    /// For every reachable destination, the neighbour of the source to forward to.
    pub fn first_hops(&self) -> BTreeMap<NodeId, NodeId> {
        let Some(src) = self.source.and_then(|s| self.index(s)) else {
            return BTreeMap::new();
        };
        let mut order: Vec<(u64, usize)> = self
            .dist
            .iter()
            .enumerate()
            .filter(|(_, &d)| d != u64::MAX)
            .map(|(i, &d)| (d, i))
            .collect();
        order.sort_unstable();
        let mut hop = vec![NONE; self.nodes.len()];
        let mut out = BTreeMap::new();
        for (_, i) in order {
            if i == src {
                continue;
            }
            let p = self.parent[i];
            if p == NONE {
                continue;
            }
            hop[i] = if p as usize == src {
                i as u32
            } else {
                hop[p as usize]
            };
            if hop[i] != NONE {
                out.insert(self.nodes[i], self.nodes[hop[i] as usize]);
            }
        }
        out
    }
}

fn shortest_path_tree(graph: &Graph, source: NodeId) -> ShortestPathTree {
    let n = graph.nodes.len();
    let mut tree = ShortestPathTree {
        source: Some(source),
        nodes: graph.nodes.clone(),
        dist: vec![u64::MAX; n],
        parent: vec![NONE; n],
    };
    let Some(s) = graph.index(source) else {
        tree.nodes = vec![source];
        tree.dist = vec![0];
        tree.parent = vec![NONE];
        return tree;
    };
    let mut done = vec![false; n];
    let mut heap = BinaryHeap::new();
    tree.dist[s] = 0;
    heap.push(Reverse((0u64, s as u32)));
    while let Some(Reverse((d, u))) = heap.pop() {
        let u = u as usize;
        if done[u] {
            continue;
        }
        done[u] = true;
        for &(v, c) in &graph.edges[u] {
            let vi = v as usize;
            if done[vi] {
                continue;
            }
            let nd = d + c as u64;
            let old = tree.dist[vi];
            if nd < old {
                tree.dist[vi] = nd;
                tree.parent[vi] = u as u32;
                heap.push(Reverse((nd, v)));
            } else if nd == old && graph.nodes[u] < graph.nodes[tree.parent[vi] as usize] {
                tree.parent[vi] = u as u32;
            }
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u32) -> NodeId {
        NodeId(i)
    }

    fn db_with(edges: &[(u32, u32, u32)]) -> LinkStateDb {
        let mut db = LinkStateDb::new(n(1), 1);
        let mut per: BTreeMap<u32, Vec<(NodeId, u32)>> = BTreeMap::new();
        for &(a, b, c) in edges {
            per.entry(a).or_default().push((n(b), c));
            per.entry(b).or_default().push((n(a), c));
        }
        for (origin, links) in per {
            if origin == 1 {
                db.originate(links, false);
            } else {
                let mut links = links;
                links.sort_unstable();
                assert_eq!(
                    db.apply(LinkStateAdvert::new(n(origin), 1, links)),
                    Applied::Newer
                );
            }
        }
        db
    }

    #[test]
    fn diamond_prefers_cheaper_branch_and_breaks_ties_by_id() {
        // 1-2-4 costs 2, 1-3-4 costs 2: tie → parent of 4 is 2 (smaller id).
        let mut db = db_with(&[(1, 2, 1), (2, 4, 1), (1, 3, 1), (3, 4, 1), (4, 5, 1)]);
        let t = db.shortest_paths(n(1));
        assert_eq!(t.path(n(5)), Some(vec![n(1), n(2), n(4), n(5)]));
        assert_eq!(t.first_hops().get(&n(5)), Some(&n(2)));
        let mut db = db_with(&[(1, 2, 5), (2, 4, 5), (1, 3, 1), (3, 4, 1), (4, 5, 1)]);
        let t = db.shortest_paths(n(1));
        assert_eq!(t.path(n(5)), Some(vec![n(1), n(3), n(4), n(5)]));
        assert_eq!(t.dist(n(5)), Some(3));
    }

    #[test]
    fn one_way_links_are_not_used() {
        let mut db = db_with(&[(1, 2, 1)]);
        // 2 claims a link to 3, but 3 does not list 2.
        db.apply(LinkStateAdvert::new(n(2), 2, vec![(n(1), 1), (n(3), 1)]));
        db.apply(LinkStateAdvert::new(n(3), 1, vec![]));
        let t = db.shortest_paths(n(1));
        assert!(t.path(n(3)).is_none());
        assert!(t.path(n(2)).is_some());
    }

    #[test]
    fn versions_order_and_own_stale_adverts() {
        let mut db = LinkStateDb::new(n(1), 10);
        let a = LinkStateAdvert::new(n(2), 5, vec![]);
        assert_eq!(db.apply(a.clone()), Applied::Newer);
        assert_eq!(db.apply(a.clone()), Applied::Same);
        assert_eq!(db.apply(LinkStateAdvert { seq: 4, ..a }), Applied::Older);
        db.originate(vec![], false);
        let own_seq = db.own().unwrap().seq;
        assert_eq!(
            db.apply(LinkStateAdvert::new(n(1), own_seq + 100, vec![])),
            Applied::OwnStale
        );
        let re = db.originate(vec![], true).unwrap();
        assert!(re.seq > own_seq + 100);
        assert!(
            db.originate(vec![], false).is_none(),
            "no change, no advert"
        );
    }

    #[test]
    fn the_largest_sequence_number_neither_panics_nor_pins() {
        let mut db = LinkStateDb::new(n(1), 1000);
        db.originate(vec![], false);
        // Someone else's advert at 2^64-1, then the origin's next one (wrapped): newer.
        assert_eq!(
            db.apply(LinkStateAdvert::new(n(2), u64::MAX, vec![])),
            Applied::Newer
        );
        assert_eq!(
            db.apply(LinkStateAdvert::new(n(2), 3, vec![])),
            Applied::Newer
        );
        assert_eq!(db.get(n(2)).map(|a| a.seq), Some(3));
        // 2^64-1 is just behind small numbers: a copy of our own there is older, not newer.
        assert_eq!(
            db.apply(LinkStateAdvert::new(n(1), u64::MAX, vec![])),
            Applied::Older
        );
        // A copy of our own far ahead: we re-originate above it, and win.
        let ahead = 1000 + (1 << 62);
        assert_eq!(
            db.apply(LinkStateAdvert::new(n(1), ahead, vec![])),
            Applied::OwnStale
        );
        let re = db.originate(vec![], true).expect("re-originated");
        assert!(seq_newer(re.seq, ahead));
        // Near the top of the space the restart rule wraps instead of overflowing.
        let mut top = LinkStateDb::new(n(1), u64::MAX - 1);
        top.originate(vec![], false);
        assert_eq!(
            top.apply(LinkStateAdvert::new(n(1), u64::MAX, vec![])),
            Applied::OwnStale
        );
        let re = top.originate(vec![], true).expect("re-originated");
        assert_eq!(re.seq, 0, "wrapped");
        assert!(seq_newer(re.seq, u64::MAX));
        // Half the space away is not newer either way: kept as held.
        assert!(!seq_newer(5 + (1 << 63), 5) && !seq_newer(5, 5 + (1 << 63)));
    }
}
