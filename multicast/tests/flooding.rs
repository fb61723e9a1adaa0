//! Flooding convergence: replicas that receive the same records in any order (with
//! duplicates) end in the same state, older versions lose, restarts win, and stale records
//! from a previous life are withdrawn by their origin.

mod common;

use common::{announce, flood, full_sync, snapshot, Graph, Oracle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_core::NodeId;
use weft_multicast::{
    Applied, Membership, MembershipRecord, Multicast, SocketId, SourceFilter, Version,
};

fn group(i: u32) -> NodeId {
    NodeId(u32::from_be_bytes([239, 2, 0, 0]) + i)
}

fn node(i: u32) -> NodeId {
    NodeId(0x0a00_0000 + i)
}

/// A random local operation on `m`; returns the records it floods.
fn random_local_op(rng: &mut ChaCha8Rng, m: &mut Multicast) -> Vec<MembershipRecord> {
    let socket = SocketId(rng.gen_range(0..4));
    let g = group(rng.gen_range(0..5));
    let source = rng.gen_bool(0.4).then(|| node(rng.gen_range(0..6)));
    match rng.gen_range(0..10) {
        0..=4 => m
            .local_join(socket, g, source, rng.gen_bool(0.3))
            .ok()
            .flatten()
            .into_iter()
            .collect(),
        5..=8 => m
            .local_leave(socket, g, source)
            .ok()
            .flatten()
            .into_iter()
            .collect(),
        _ => m.local_close(socket),
    }
}

#[test]
fn replicas_converge_whatever_the_order() {
    for case in 0..100u64 {
        let seed = 0xf100_d000 + case;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut origins: Vec<Multicast> = (0..8).map(|i| Multicast::new(node(i), 77)).collect();
        let mut emitted = Vec::new();
        for _ in 0..rng.gen_range(10..120) {
            let o = rng.gen_range(0..origins.len());
            emitted.extend(random_local_op(&mut rng, &mut origins[o]));
        }
        let replicas: Vec<Multicast> = (0..6)
            .map(|r| {
                let mut replica = Multicast::new(node(100 + r), 1);
                let mut order = emitted.clone();
                let dups: Vec<_> = (0..emitted.len() / 3)
                    .filter_map(|_| emitted.choose(&mut rng).cloned())
                    .collect();
                order.extend(dups);
                order.shuffle(&mut rng);
                for rec in order {
                    replica.apply(rec);
                }
                replica
            })
            .collect();
        let reference = snapshot(&replicas[0]);
        for (r, replica) in replicas.iter().enumerate() {
            assert_eq!(
                snapshot(replica),
                reference,
                "seed {seed:#x}: replica {r} diverged"
            );
        }
        // And what they converge to is what each origin says about itself.
        for origin in &origins {
            for own in origin.records().filter(|r| r.origin() == origin.local()) {
                assert_eq!(
                    replicas[0].record(own.origin(), own.group()),
                    Some(own),
                    "seed {seed:#x}: replica disagrees with the origin"
                );
            }
        }
    }
}

#[test]
fn graph_flooding_converges_and_restarts_are_repaired() {
    for case in 0..60u64 {
        let seed = 0xf100_e000 + case;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.gen_range(3..=30);
        let graph = Graph::random(&mut rng, n, false);
        let mut nodes: Vec<Multicast> = graph
            .nodes
            .iter()
            .map(|&id| Multicast::new(id, 10))
            .collect();
        let mut messages = Vec::new();
        for _ in 0..rng.gen_range(1..4 * n) {
            let v = rng.gen_range(0..n);
            for r in random_local_op(&mut rng, &mut nodes[v]) {
                messages.extend(announce(&graph, v, &r));
            }
        }
        flood(&mut nodes, &graph, messages, &mut rng);
        let reference = snapshot(&nodes[0]);
        for (v, m) in nodes.iter().enumerate() {
            assert_eq!(
                snapshot(m),
                reference,
                "seed {seed:#x}: node {v} diverged after flooding"
            );
        }

        // A node restarts (state lost), with a later epoch or, worse, the same one; it makes a
        // few changes before its links come back, then each link full-syncs.
        let v = rng.gen_range(0..n);
        let epoch = if rng.gen_bool(0.5) { 11 } else { 10 };
        nodes[v] = Multicast::new(graph.nodes[v], epoch);
        let mut messages = Vec::new();
        for _ in 0..rng.gen_range(0..4) {
            for r in random_local_op(&mut rng, &mut nodes[v]) {
                messages.extend(announce(&graph, v, &r));
            }
        }
        for u in graph.neighbours(v).collect::<Vec<_>>() {
            messages.extend(full_sync(&nodes, v, u));
        }
        flood(&mut nodes, &graph, messages, &mut rng);
        let reference = snapshot(&nodes[0]);
        for (u, m) in nodes.iter().enumerate() {
            assert_eq!(
                snapshot(m),
                reference,
                "seed {seed:#x}: node {u} diverged after a restart"
            );
        }
        // Everyone's view of the restarted node is its current truth, not its previous life.
        let restarted = graph.nodes[v];
        for g in nodes[0].db().groups().collect::<Vec<_>>() {
            let said = nodes[0]
                .record(restarted, g)
                .map(|r| r.membership().clone());
            let truth = nodes[v]
                .record(restarted, g)
                .map(|r| r.membership().clone());
            let present = |m: &Option<Membership>| m.as_ref().is_some_and(Membership::is_present);
            assert_eq!(
                said, truth,
                "seed {seed:#x}: stale membership of {restarted} in {g}"
            );
            assert_eq!(
                present(&said),
                nodes[v].db().local_sockets_in(g) > 0,
                "seed {seed:#x}"
            );
        }
    }
}

#[test]
fn older_versions_lose_and_a_higher_incarnation_wins() {
    let any = Membership::Present {
        sources: SourceFilter::Any,
        reliable: false,
    };
    let g = group(1);
    let at = |epoch, seq, m: &Membership| {
        MembershipRecord::new(node(1), g, Version::new(epoch, seq), m.clone()).expect("valid")
    };
    let mut db = Multicast::new(node(2), 1);
    assert_eq!(db.apply(at(5, 3, &any)), Applied::Newer);
    assert_eq!(db.apply(at(5, 2, &Membership::Absent)), Applied::Older);
    assert_eq!(db.db().members(g).count(), 1);
    assert_eq!(
        db.apply(at(6, 1, &Membership::Absent)),
        Applied::Newer,
        "restart wins"
    );
    assert_eq!(db.db().members(g).count(), 0);
    assert_eq!(
        db.apply(at(5, 9, &any)),
        Applied::Older,
        "nothing from the old life comes back"
    );
}

/// A node that restarted and joined nothing still gets its previous life's memberships
/// withdrawn: its neighbours' full sync shows it the stale records and it corrects them.
#[test]
fn restart_withdraws_previous_life_without_new_joins() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let graph = Graph::random(&mut rng, 6, false);
    let mut nodes: Vec<Multicast> = graph
        .nodes
        .iter()
        .map(|&id| Multicast::new(id, 100))
        .collect();
    let mut messages = Vec::new();
    for g in 0..3 {
        let r = nodes[0]
            .local_join(SocketId(1), group(g), None, false)
            .expect("join")
            .expect("record");
        messages.extend(announce(&graph, 0, &r));
    }
    flood(&mut nodes, &graph, messages, &mut rng);
    assert!(nodes
        .iter()
        .all(|m| m.db().groups().all(|g| m.db().members(g).count() == 1)));

    nodes[0] = Multicast::new(graph.nodes[0], 200);
    let mut messages = Vec::new();
    for u in graph.neighbours(0).collect::<Vec<_>>() {
        messages.extend(full_sync(&nodes, 0, u));
    }
    flood(&mut nodes, &graph, messages, &mut rng);
    for (v, m) in nodes.iter().enumerate() {
        for g in 0..3 {
            assert_eq!(
                m.db().members(group(g)).count(),
                0,
                "node {v} still lists a dead join"
            );
            let version = m
                .record(graph.nodes[0], group(g))
                .map(|r| r.version().epoch);
            assert_eq!(
                version,
                Some(200),
                "node {v}: withdrawal issued in the new epoch"
            );
        }
    }
}

#[test]
fn forgotten_node_stops_attracting_traffic_at_once() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let graph = Graph::random(&mut rng, 8, false);
    let oracle = Oracle::new(&graph, 1);
    let mut nodes: Vec<Multicast> = graph
        .nodes
        .iter()
        .map(|&id| Multicast::new(id, 1))
        .collect();
    let g = group(9);
    let leaf = (1..8)
        .max_by_key(|&v| oracle.path(0, v).len())
        .expect("nodes");
    let r = nodes[leaf]
        .local_join(SocketId(1), g, None, false)
        .expect("join")
        .expect("record");
    let mut messages = announce(&graph, leaf, &r);
    // The source is a member too, so the group outlives the forgotten member.
    let r = nodes[0]
        .local_join(SocketId(1), g, None, false)
        .expect("join")
        .expect("record");
    messages.extend(announce(&graph, 0, &r));
    flood(&mut nodes, &graph, messages, &mut rng);
    let source = graph.nodes[0];
    let first_hop = oracle.path(0, leaf)[1];
    assert_eq!(
        nodes[0]
            .forwarding(&oracle, source, g)
            .next_hops
            .iter()
            .map(|h| h.neighbour)
            .collect::<Vec<_>>(),
        vec![graph.nodes[first_hop]]
    );
    // Routing has not even recomputed (same generation): forgetting alone prunes the branch.
    assert_eq!(nodes[0].forget_node(graph.nodes[leaf]), 1);
    assert!(nodes[0].forwarding(&oracle, source, g).next_hops.is_empty());
    assert_eq!(nodes[0].db().members(g).count(), 1);
}

#[test]
fn status_shows_groups_members_and_trees() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let graph = Graph::random(&mut rng, 5, false);
    let oracle = Oracle::new(&graph, 1);
    let mut nodes: Vec<Multicast> = graph
        .nodes
        .iter()
        .map(|&id| Multicast::new(id, 42))
        .collect();
    let g = group(3);
    let mut messages = Vec::new();
    for (v, member) in nodes.iter_mut().enumerate().skip(1) {
        let source = (v % 2 == 0).then_some(graph.nodes[0]);
        let r = member
            .local_join(SocketId(v as u64), g, source, v == 3)
            .expect("join")
            .expect("record");
        messages.extend(announce(&graph, v, &r));
    }
    flood(&mut nodes, &graph, messages, &mut rng);
    nodes[0].forwarding(&oracle, graph.nodes[0], g);
    let status = nodes[0].status(&oracle);
    assert_eq!(status.groups.len(), 1);
    assert_eq!(status.groups[0].members.len(), 4);
    assert_eq!(status.trees.len(), 1);
    assert!(!status.trees[0].next_hops.is_empty());
    let json = serde_json::to_string(&status).expect("status serialises");
    assert!(json.contains(&g.to_string()));
    assert!(
        json.contains("+reliable"),
        "the branch toward the reliable member is marked: {json}"
    );
}
