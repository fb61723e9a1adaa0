//! Source-rooted trees on random topologies, memberships and source filters: every node acts
//! only on its own forwarding answer, and the packet reaches each member that accepts the
//! source exactly once, crossing each link at most once.

mod common;

use common::{
    announce, flood, forward_and_check, full_sync, ForwardTotals, Graph, Oracle, TruthMembership,
};
use rand::seq::{IteratorRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_core::NodeId;
use weft_multicast::{MembershipRecord, Multicast, SocketId};

const CASES: u64 = 200;
const BASE_SEED: u64 = 0x7ee5_0000;

fn group(i: u32) -> NodeId {
    NodeId(u32::from_be_bytes([239, 1, 0, 0]) + i)
}

struct Case {
    rng: ChaCha8Rng,
    graph: Graph,
    nodes: Vec<Multicast>,
    truth: TruthMembership,
    groups: Vec<NodeId>,
    /// Probability that a node joins a given group, per group.
    density: Vec<f64>,
    /// Sources whose packets are simulated, fixed per case so caches stay warm across rounds.
    sources: Vec<usize>,
}

impl Case {
    fn new(seed: u64) -> Case {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.gen_range(5..=64);
        let graph = Graph::random(&mut rng, n, true);
        let nodes = graph
            .nodes
            .iter()
            .map(|&id| Multicast::new(id, 1_000))
            .collect();
        let group_count = rng.gen_range(1..=3);
        let groups = (0..group_count).map(group).collect();
        let density = (0..group_count).map(|_| rng.gen_range(0.05..0.6)).collect();
        let sources = if n <= 12 {
            (0..n).collect()
        } else {
            (0..n).choose_multiple(&mut rng, 8)
        };
        Case {
            rng,
            graph,
            nodes,
            truth: TruthMembership::default(),
            groups,
            density,
            sources,
        }
    }

    /// One random join attempt on `node`; refused joins (double join, mixed modes) are part
    /// of the test too: they must leave the truth and the record unchanged.
    fn random_join(&mut self, node: usize, g: usize) -> Option<MembershipRecord> {
        let group = self.groups[g];
        let socket = self.rng.gen_range(0..3u64);
        let source = if self.rng.gen_bool(0.35) {
            self.graph.nodes.choose(&mut self.rng).copied()
        } else {
            None
        };
        let reliable = self.rng.gen_bool(0.25);
        let result = self.nodes[node].local_join(SocketId(socket), group, source, reliable);
        match result {
            Ok(record) => {
                self.truth.join(node, group, socket, source, reliable);
                record
            }
            Err(_) => None,
        }
    }

    fn random_leave(&mut self, node: usize) -> Option<MembershipRecord> {
        let joined: Vec<(NodeId, u64, Option<NodeId>)> = self
            .truth
            .joins
            .iter()
            .filter(|((v, _), _)| *v == node)
            .flat_map(|(&(_, group), sockets)| {
                sockets.iter().map(move |(&socket, (sources, _))| {
                    (
                        group,
                        socket,
                        sources.as_ref().and_then(|s| s.iter().next().copied()),
                    )
                })
            })
            .collect();
        let &(group, socket, first_source) = joined.choose(&mut self.rng)?;
        let source = if self.rng.gen_bool(0.5) {
            first_source
        } else {
            None
        };
        let record = self.nodes[node]
            .local_leave(SocketId(socket), group, source)
            .expect("leaving a membership the truth model holds succeeds");
        self.truth.leave(node, group, socket, source);
        record
    }

    /// Random joins and leaves on up to `n` nodes; returns (origin, record) to flood.
    fn random_changes(&mut self) -> Vec<(usize, MembershipRecord)> {
        let n = self.graph.nodes.len();
        let mut updates = Vec::new();
        for _ in 0..self.rng.gen_range(1..=n) {
            let node = self.rng.gen_range(0..n);
            let record = if self.rng.gen_bool(0.5) {
                self.random_leave(node)
            } else {
                let g = self.rng.gen_range(0..self.groups.len());
                self.random_join(node, g)
            };
            updates.extend(record.map(|r| (node, r)));
        }
        updates
    }

    fn check_all(&mut self, oracle: &Oracle, seed: u64, totals: &mut ForwardTotals) {
        let n = self.graph.nodes.len();
        for source in self.sources.clone() {
            for &group in &self.groups {
                if let Err(e) = forward_and_check(
                    &mut self.nodes,
                    &self.graph,
                    oracle,
                    &self.truth,
                    source,
                    group,
                    totals,
                ) {
                    panic!(
                        "seed {seed:#x} ({n} nodes, {} links): {e}",
                        self.graph.link_count()
                    );
                }
            }
        }
    }
}

#[test]
fn every_member_gets_exactly_one_copy_and_no_link_carries_two() {
    let mut totals = ForwardTotals::default();
    let mut node_total = 0;
    for case in 0..CASES {
        let seed = BASE_SEED + case;
        let mut c = Case::new(seed);
        let n = c.graph.nodes.len();
        node_total += n;

        let mut initial = Vec::new();
        for node in 0..n {
            for g in 0..c.groups.len() {
                if c.rng.gen_bool(c.density[g]) {
                    let joins = c.rng.gen_range(1..=3);
                    for _ in 0..joins {
                        if let Some(r) = c.random_join(node, g) {
                            initial.extend(announce(&c.graph, node, &r));
                        }
                    }
                }
            }
        }
        flood(&mut c.nodes, &c.graph, initial, &mut c.rng);
        let oracle = Oracle::new(&c.graph, 1);
        c.check_all(&oracle, seed, &mut totals);

        // Change membership and topology; caches are warm and must notice both.
        let updates = c.random_changes();
        let mut new_links = Vec::new();
        for _ in 0..c.rng.gen_range(1..=3) {
            let u = c.rng.gen_range(0..n);
            if let Some(v) = c.graph.neighbours(u).choose(&mut c.rng) {
                c.graph.remove_link(u, v);
            }
            let (a, b) = (c.rng.gen_range(0..n), c.rng.gen_range(0..n));
            if a != b && !c.graph.has_link(a, b) {
                c.graph.add_link(&mut c.rng, a, b);
                new_links.push((a, b));
            }
        }
        let oracle = Oracle::new(&c.graph, 2);
        for (v, node) in c.nodes.iter_mut().enumerate() {
            for u in 0..n {
                if !oracle.reachable(v, u) {
                    node.forget_node(c.graph.nodes[u]);
                }
            }
        }
        let mut messages: Vec<_> = updates
            .iter()
            .flat_map(|(node, r)| announce(&c.graph, *node, r))
            .collect();
        for &(a, b) in &new_links {
            messages.extend(full_sync(&c.nodes, a, b));
        }
        flood(&mut c.nodes, &c.graph, messages, &mut c.rng);
        c.check_all(&oracle, seed, &mut totals);

        // Membership alone changes (same topology generation): the caches must notice.
        let messages = c
            .random_changes()
            .iter()
            .flat_map(|(node, r)| announce(&c.graph, *node, r))
            .collect();
        flood(&mut c.nodes, &c.graph, messages, &mut c.rng);
        c.check_all(&oracle, seed, &mut totals);
    }
    assert!(
        totals.deliveries > 0,
        "the generator produced no deliveries at all"
    );
    println!(
        "{CASES} topologies ({node_total} nodes, 3 rounds each): {} packets, {} deliveries, \
         {} link transmissions on trees vs {} for unicast fan-out ({:.1}%)",
        totals.packets,
        totals.deliveries,
        totals.link_transmissions,
        totals.unicast_fanout,
        100.0 * totals.link_transmissions as f64 / totals.unicast_fanout.max(1) as f64
    );
}

/// The source filter prunes whole branches: a member that lists only other sources attracts
/// nothing from this one, and the tree from a listed source still reaches it.
#[test]
fn source_filters_prune_the_tree() {
    // A line a - b - c - d with unit costs; d accepts only a, c accepts only b.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut graph = Graph::random(&mut rng, 4, false);
    for u in 0..4 {
        for v in graph.neighbours(u).collect::<Vec<_>>() {
            graph.remove_link(u, v);
        }
    }
    for u in 0..3 {
        graph.add_link(&mut rng, u, u + 1);
    }
    let ids = graph.nodes.clone();
    let g = group(1);
    let mut nodes: Vec<Multicast> = ids.iter().map(|&id| Multicast::new(id, 1)).collect();
    let mut truth = TruthMembership::default();
    let mut initial = Vec::new();
    for (node, source) in [(3usize, ids[0]), (2, ids[1])] {
        let r = nodes[node]
            .local_join(SocketId(1), g, Some(source), false)
            .expect("join");
        truth.join(node, g, 1, Some(source), false);
        initial.extend(announce(&graph, node, &r.expect("first join floods")));
    }
    flood(&mut nodes, &graph, initial, &mut rng);
    let oracle = Oracle::new(&graph, 1);
    let mut totals = ForwardTotals::default();
    for (source, id) in ids.iter().enumerate() {
        forward_and_check(&mut nodes, &graph, &oracle, &truth, source, g, &mut totals)
            .unwrap_or_else(|e| panic!("source {id}: {e}"));
    }
    // From a: 3 links to d. From b: 1 link to c. From c, d: nobody accepts them.
    assert_eq!(totals.link_transmissions, 4);
    assert_eq!(totals.deliveries, 2);
    assert!(nodes[0].forwarding(&oracle, ids[2], g).next_hops.is_empty());
}
