//! Test oracle shared by the integration tests: random topologies, an independent Dijkstra
//! implementing `ShortestPaths`, a reliable-flooding simulator, and a packet-forwarding
//! simulator that checks the exactly-once properties.
#![allow(dead_code)] // each test binary uses a different subset

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use weft_core::NodeId;
use weft_multicast::{Applied, MembershipRecord, Multicast, ShortestPaths};

/// Undirected links with a cost per direction (asymmetric costs are allowed), nodes named by
/// shuffled addresses so that index order and id order differ.
#[derive(Debug, Clone)]
pub struct Graph {
    pub nodes: Vec<NodeId>,
    pub index: HashMap<NodeId, usize>,
    /// `adj[u]`: (v, cost of u→v).
    pub adj: Vec<Vec<(usize, u32)>>,
}

impl Graph {
    /// A random graph of `n` nodes: a random spanning tree plus up to `2n` extra links, costs
    /// 1..=4 (small, so ties are common). With `allow_partition`, sometimes one tree link is
    /// left out, which splits the graph in two.
    pub fn random(rng: &mut ChaCha8Rng, n: usize, allow_partition: bool) -> Graph {
        let mut ids: Vec<u32> = (0..n as u32).map(|i| 0x0a00_0000 + i * 7 + 1).collect();
        ids.shuffle(rng);
        let nodes: Vec<NodeId> = ids.into_iter().map(NodeId).collect();
        let index = nodes.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let mut g = Graph {
            nodes,
            index,
            adj: vec![Vec::new(); n],
        };
        let skip = if allow_partition && n > 2 && rng.gen_bool(0.15) {
            Some(rng.gen_range(1..n))
        } else {
            None
        };
        for v in 1..n {
            if Some(v) == skip {
                continue;
            }
            let u = rng.gen_range(0..v);
            g.add_link(rng, u, v);
        }
        let extra = rng.gen_range(0..=2 * n);
        for _ in 0..extra {
            let u = rng.gen_range(0..n);
            let v = rng.gen_range(0..n);
            if Some(v) == skip || Some(u) == skip {
                continue;
            }
            g.add_link(rng, u, v);
        }
        g
    }

    pub fn add_link(&mut self, rng: &mut ChaCha8Rng, u: usize, v: usize) {
        if u == v || self.adj[u].iter().any(|&(w, _)| w == v) {
            return;
        }
        self.adj[u].push((v, rng.gen_range(1..=4)));
        self.adj[v].push((u, rng.gen_range(1..=4)));
    }

    pub fn remove_link(&mut self, u: usize, v: usize) {
        self.adj[u].retain(|&(w, _)| w != v);
        self.adj[v].retain(|&(w, _)| w != u);
    }

    pub fn has_link(&self, u: usize, v: usize) -> bool {
        self.adj[u].iter().any(|&(w, _)| w == v)
    }

    pub fn neighbours(&self, u: usize) -> impl Iterator<Item = usize> + '_ {
        self.adj[u].iter().map(|&(v, _)| v)
    }

    pub fn link_count(&self) -> usize {
        self.adj.iter().map(Vec::len).sum::<usize>() / 2
    }
}

/// Shortest-path trees from every source by Dijkstra, ties broken toward the predecessor with
/// the smaller node id (what every node of a real overlay would compute identically).
pub struct Oracle {
    generation: u64,
    index: HashMap<NodeId, usize>,
    nodes: Vec<NodeId>,
    /// `parents[s][v]`: predecessor of v on s's tree.
    parents: Vec<Vec<Option<usize>>>,
    reachable: Vec<Vec<bool>>,
}

impl Oracle {
    pub fn new(graph: &Graph, generation: u64) -> Oracle {
        let n = graph.nodes.len();
        let mut parents = Vec::with_capacity(n);
        let mut reachable = Vec::with_capacity(n);
        for s in 0..n {
            let (p, r) = dijkstra(graph, s);
            parents.push(p);
            reachable.push(r);
        }
        Oracle {
            generation,
            index: graph.index.clone(),
            nodes: graph.nodes.clone(),
            parents,
            reachable,
        }
    }

    pub fn reachable(&self, source: usize, node: usize) -> bool {
        self.reachable[source][node]
    }

    pub fn parent_index(&self, source: usize, node: usize) -> Option<usize> {
        self.parents[source][node]
    }

    /// Nodes on the path from `source` to `node`, both included, source first.
    pub fn path(&self, source: usize, node: usize) -> Vec<usize> {
        let mut path = vec![node];
        let mut cur = node;
        while let Some(p) = self.parents[source][cur] {
            path.push(p);
            cur = p;
        }
        path.reverse();
        path
    }
}

fn dijkstra(graph: &Graph, source: usize) -> (Vec<Option<usize>>, Vec<bool>) {
    let n = graph.nodes.len();
    let mut dist = vec![u64::MAX; n];
    let mut parent: Vec<Option<usize>> = vec![None; n];
    let mut done = vec![false; n];
    let mut heap = BinaryHeap::new();
    dist[source] = 0;
    heap.push(Reverse((0u64, graph.nodes[source], source)));
    while let Some(Reverse((d, _, u))) = heap.pop() {
        if done[u] {
            continue;
        }
        done[u] = true;
        for &(v, cost) in &graph.adj[u] {
            let nd = d + u64::from(cost);
            let better = nd < dist[v]
                || (nd == dist[v]
                    && !done[v]
                    && parent[v].is_some_and(|p| graph.nodes[u] < graph.nodes[p]));
            if better {
                dist[v] = nd;
                parent[v] = Some(u);
                heap.push(Reverse((nd, graph.nodes[v], v)));
            }
        }
    }
    (parent, done)
}

impl ShortestPaths for Oracle {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn parent(&self, source: NodeId, node: NodeId) -> Option<NodeId> {
        let s = *self.index.get(&source)?;
        let v = *self.index.get(&node)?;
        self.parents[s][v].map(|p| self.nodes[p])
    }
}

/// Per-node control traffic of a flooding run.
#[derive(Debug, Clone, Default)]
pub struct FloodStats {
    pub records_sent: Vec<u64>,
    pub bytes_sent: Vec<u64>,
    pub applies: u64,
}

/// A record in flight on a link: (from, to, record).
pub type Message = (usize, usize, MembershipRecord);

/// `from` floods a record it originated (or corrected) to all its neighbours.
pub fn announce(graph: &Graph, from: usize, record: &MembershipRecord) -> Vec<Message> {
    graph
        .neighbours(from)
        .map(|to| (from, to, record.clone()))
        .collect()
}

/// A new link `a`–`b` came up: each end sends the other every record it holds.
pub fn full_sync(nodes: &[Multicast], a: usize, b: usize) -> Vec<Message> {
    let one_way =
        |from: usize, to: usize| nodes[from].records().map(move |r| (from, to, r.clone()));
    one_way(a, b).chain(one_way(b, a)).collect()
}

/// Reliable flooding over `graph`'s links in a random global order (more adversarial than
/// per-link FIFO): `Newer` goes on to every other neighbour, `Corrected` to every neighbour,
/// `Older` is answered with the held record.
pub fn flood(
    nodes: &mut [Multicast],
    graph: &Graph,
    initial: Vec<Message>,
    rng: &mut ChaCha8Rng,
) -> FloodStats {
    let n = nodes.len();
    let mut stats = FloodStats {
        records_sent: vec![0; n],
        bytes_sent: vec![0; n],
        applies: 0,
    };
    let mut in_flight: Vec<Message> = Vec::new();
    let send = |stats: &mut FloodStats,
                in_flight: &mut Vec<Message>,
                from: usize,
                to: usize,
                rec: &MembershipRecord| {
        stats.records_sent[from] += 1;
        stats.bytes_sent[from] += rec.encoded_len() as u64;
        in_flight.push((from, to, rec.clone()));
    };
    for (from, to, rec) in initial {
        send(&mut stats, &mut in_flight, from, to, &rec);
    }
    while !in_flight.is_empty() {
        let pick = rng.gen_range(0..in_flight.len());
        let (from, at, rec) = in_flight.swap_remove(pick);
        // Go through the wire format, as the daemon would.
        let bytes = rec.to_bytes();
        let decoded = MembershipRecord::decode(&mut weft_core::Reader::new(&bytes))
            .expect("own encoding decodes");
        stats.applies += 1;
        match nodes[at].apply(decoded) {
            Applied::Newer => {
                for to in graph.neighbours(at).filter(|&to| to != from) {
                    send(&mut stats, &mut in_flight, at, to, &rec);
                }
            }
            Applied::Corrected(correction) => {
                for to in graph.neighbours(at) {
                    send(&mut stats, &mut in_flight, at, to, &correction);
                }
            }
            Applied::Older => {
                if let Some(held) = nodes[at].record(rec.origin(), rec.group()).cloned() {
                    send(&mut stats, &mut in_flight, at, from, &held);
                }
            }
            Applied::Same => {}
        }
    }
    stats
}

/// Sorted snapshot of a node's records, for comparing replicas.
pub fn snapshot(node: &Multicast) -> Vec<Vec<u8>> {
    node.records().map(MembershipRecord::to_bytes).collect()
}

/// One node's sockets in one group: socket → (None: any source, or the listed sources; reliable).
pub type SocketJoins = BTreeMap<u64, (Option<BTreeSet<NodeId>>, bool)>;

/// The test's own model of which sockets joined what, to compare the crate against.
#[derive(Debug, Clone, Default)]
pub struct TruthMembership {
    /// (node index, group) → that node's sockets in the group.
    pub joins: BTreeMap<(usize, NodeId), SocketJoins>,
}

impl TruthMembership {
    pub fn accepts(&self, node: usize, group: NodeId, source: NodeId) -> bool {
        self.joins.get(&(node, group)).is_some_and(|sockets| {
            sockets.values().any(|(s, _)| match s {
                None => true,
                Some(list) => list.contains(&source),
            })
        })
    }

    /// Nodes where some socket joined `group` asking for the reliable mode.
    pub fn reliable_members(&self, group: NodeId) -> BTreeSet<usize> {
        self.joins
            .iter()
            .filter(|((_, g), sockets)| *g == group && sockets.values().any(|&(_, r)| r))
            .map(|(&(node, _), _)| node)
            .collect()
    }

    /// Records what a successful `local_join` did.
    pub fn join(
        &mut self,
        node: usize,
        group: NodeId,
        socket: u64,
        source: Option<NodeId>,
        reliable: bool,
    ) {
        let sockets = self.joins.entry((node, group)).or_default();
        let entry = sockets
            .entry(socket)
            .or_insert_with(|| (source.map(|_| BTreeSet::new()), false));
        match (&mut entry.0, source) {
            (Some(list), Some(s)) => {
                list.insert(s);
            }
            // The kernel's rule: a source added to an any-source membership makes it
            // source-specific.
            (list @ None, Some(s)) => *list = Some(BTreeSet::from([s])),
            (_, None) => {}
        }
        entry.1 |= reliable;
    }

    /// Records what a successful `local_leave` did.
    pub fn leave(&mut self, node: usize, group: NodeId, socket: u64, source: Option<NodeId>) {
        let Some(sockets) = self.joins.get_mut(&(node, group)) else {
            return;
        };
        let drop_socket = match (sockets.get_mut(&socket), source) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some((Some(list), _)), Some(s)) => {
                list.remove(&s);
                list.is_empty()
            }
            (Some((None, _)), Some(_)) => false,
        };
        if drop_socket {
            sockets.remove(&socket);
        }
        if sockets.is_empty() {
            self.joins.remove(&(node, group));
        }
    }
}

/// Totals over every packet simulated.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardTotals {
    pub packets: u64,
    pub link_transmissions: u64,
    pub unicast_fanout: u64,
    pub deliveries: u64,
}

/// Sends one packet from `source` to `group` with every node acting only on its own
/// `forwarding` answer, and checks: each reachable member accepting the source gets exactly one
/// copy, nobody else gets one, no directed link carries two, only tree links carry copies, the
/// number of transmissions is the size of the pruned tree, and reliable flags cover exactly the
/// paths to reliable members.
pub fn forward_and_check(
    nodes: &mut [Multicast],
    graph: &Graph,
    oracle: &Oracle,
    truth: &TruthMembership,
    source: usize,
    group: NodeId,
    totals: &mut ForwardTotals,
) -> Result<(), String> {
    let n = nodes.len();
    let s_id = graph.nodes[source];
    let reliable_members = truth.reliable_members(group);
    let mut deliveries = vec![0u32; n];
    let mut carried: HashMap<(usize, usize), (u32, bool)> = HashMap::new();
    let mut queue = vec![(source, None::<usize>)];
    let mut steps = 0;
    while let Some((at, from)) = queue.pop() {
        steps += 1;
        if steps > 4 * n * n {
            return Err(format!("packet from {s_id} to {group} loops"));
        }
        let f = nodes[at].forwarding(oracle, s_id, group).clone();
        if let Some(from) = from {
            if f.upstream != Some(graph.nodes[from]) {
                return Err(format!(
                    "{} got the packet from {} but expects it from {:?}",
                    graph.nodes[at], graph.nodes[from], f.upstream
                ));
            }
        }
        if f.deliver_locally {
            deliveries[at] += 1;
        }
        for hop in f.next_hops {
            let to = *graph
                .index
                .get(&hop.neighbour)
                .ok_or_else(|| format!("unknown next hop {}", hop.neighbour))?;
            if !graph.has_link(at, to) {
                return Err(format!(
                    "{} forwards to non-neighbour {}",
                    graph.nodes[at], hop.neighbour
                ));
            }
            let entry = carried.entry((at, to)).or_insert((0, hop.reliable));
            entry.0 += 1;
            queue.push((to, Some(at)));
        }
    }

    let mut tree_nodes: BTreeSet<usize> = BTreeSet::new();
    let mut reliable_links: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut unicast = 0u64;
    for (v, &got) in deliveries.iter().enumerate() {
        let wanted = truth.accepts(v, group, s_id);
        let expected = u32::from(wanted && oracle.reachable(source, v));
        if got != expected {
            return Err(format!(
                "{} (member accepting {s_id}: {wanted}, reachable: {}) got {} copies of {group}",
                graph.nodes[v],
                oracle.reachable(source, v),
                got
            ));
        }
        if expected == 1 {
            let path = oracle.path(source, v);
            unicast += (path.len() - 1) as u64;
            if reliable_members.contains(&v) {
                reliable_links.extend(path.windows(2).map(|w| (w[0], w[1])));
            }
            tree_nodes.extend(path);
        }
    }
    for (&(u, v), &(count, reliable)) in &carried {
        if count != 1 {
            return Err(format!(
                "link {}→{} carried {count} copies",
                graph.nodes[u], graph.nodes[v]
            ));
        }
        if oracle.parent_index(source, v) != Some(u) || !tree_nodes.contains(&v) {
            return Err(format!(
                "link {}→{} is not on the pruned tree",
                graph.nodes[u], graph.nodes[v]
            ));
        }
        if reliable != reliable_links.contains(&(u, v)) {
            return Err(format!(
                "link {}→{} reliable flag {reliable}, expected {}",
                graph.nodes[u], graph.nodes[v], !reliable
            ));
        }
    }
    let tree_links = tree_nodes.len().saturating_sub(1);
    if carried.len() != tree_links {
        return Err(format!(
            "{} transmissions for a tree of {tree_links} links",
            carried.len()
        ));
    }
    totals.packets += 1;
    totals.link_transmissions += carried.len() as u64;
    totals.unicast_fanout += unicast;
    totals.deliveries += deliveries.iter().map(|&d| u64::from(d)).sum::<u64>();
    Ok(())
}
