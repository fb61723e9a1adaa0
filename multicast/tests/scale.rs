//! Scale: 64 nodes, 1 000 groups, 20 senders. Checks exactly-once delivery for every
//! (sender, group) and prints membership state and control traffic per node and the cost of a
//! forwarding decision (figures are reported, never asserted). Run with
//! `cargo test --release -p weft-multicast --test scale -- --ignored --nocapture`.

mod common;

use common::{
    announce, flood, forward_and_check, full_sync, ForwardTotals, Graph, Oracle, TruthMembership,
};
use rand::seq::{IteratorRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use weft_core::NodeId;
use weft_multicast::{compute_forwarding, Multicast, SocketId};

const NODES: usize = 64;
const GROUPS: u32 = 1_000;
const SENDERS: usize = 20;
const SEED: u64 = 0x5ca1_e000;

fn group(i: u32) -> NodeId {
    NodeId(u32::from_be_bytes([239, 3, 0, 0]) + i)
}

/// CPU time of this thread: the machine is shared, so wall-clock figures would include time
/// spent descheduled.
fn thread_cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn summary(values: impl Iterator<Item = u64>) -> String {
    let v: Vec<u64> = values.collect();
    let min = v.iter().min().copied().unwrap_or(0);
    let max = v.iter().max().copied().unwrap_or(0);
    let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    format!("min {min}, mean {mean:.0}, max {max}")
}

#[test]
#[ignore = "scale figures; run in release with --ignored --nocapture"]
fn scale_64_nodes_1000_groups_20_senders() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let graph = Graph::random(&mut rng, NODES, false);
    let oracle = Oracle::new(&graph, 1);
    let mut nodes: Vec<Multicast> = graph
        .nodes
        .iter()
        .map(|&id| Multicast::new(id, 1))
        .collect();
    let senders: Vec<usize> = (0..NODES).choose_multiple(&mut rng, SENDERS);
    let mut truth = TruthMembership::default();

    // 1..=8 member nodes per group; a fifth of them source-specific (1-3 of the senders), a
    // tenth reliable.
    let mut messages = Vec::new();
    let mut joins = 0u64;
    for g in 0..GROUPS {
        let count = rng.gen_range(1..=8);
        let members = (0..NODES).choose_multiple(&mut rng, count);
        for v in members {
            let sources: Vec<Option<NodeId>> = if rng.gen_bool(0.2) {
                let k = rng.gen_range(1..=3);
                senders
                    .choose_multiple(&mut rng, k)
                    .map(|&s| Some(graph.nodes[s]))
                    .collect()
            } else {
                vec![None]
            };
            let reliable = rng.gen_bool(0.1);
            for source in sources {
                let result = nodes[v].local_join(SocketId(1), group(g), source, reliable);
                let record = result.expect("fresh socket joins succeed");
                truth.join(v, group(g), 1, source, reliable);
                joins += 1;
                if let Some(r) = record {
                    messages.extend(announce(&graph, v, &r));
                }
            }
        }
    }
    let started = thread_cpu_time();
    let stats = flood(&mut nodes, &graph, messages, &mut rng);
    let flood_time = thread_cpu_time() - started;
    let reference: Vec<_> = nodes[0].records().cloned().collect();
    for (v, m) in nodes.iter().enumerate() {
        assert!(
            m.records().eq(reference.iter()),
            "node {v} did not converge"
        );
    }

    println!(
        "topology: {NODES} nodes, {} links; {GROUPS} groups, {SENDERS} senders, {joins} socket joins",
        graph.link_count()
    );
    println!(
        "membership state per node: {} records, {} bytes encoded (the full sync to a new neighbour)",
        nodes[0].db().record_count(),
        nodes[0].db().encoded_len()
    );
    println!(
        "initial flood per node: records sent {}; bytes sent {}; {} applies in {:.0} ms CPU",
        summary(stats.records_sent.iter().copied()),
        summary(stats.bytes_sent.iter().copied()),
        stats.applies,
        flood_time * 1e3
    );

    // One more join once everything is settled: what a single change costs the overlay.
    let v = rng.gen_range(0..NODES);
    let r = nodes[v]
        .local_join(SocketId(2), group(GROUPS), None, false)
        .expect("join")
        .expect("record");
    truth.join(v, group(GROUPS), 2, None, false);
    let one = flood(&mut nodes, &graph, announce(&graph, v, &r), &mut rng);
    println!(
        "one join: {} records ({} bytes) sent overlay-wide, {} per node at most",
        one.records_sent.iter().sum::<u64>(),
        one.bytes_sent.iter().sum::<u64>(),
        one.records_sent.iter().max().copied().unwrap_or(0)
    );
    let (a, b) = (0, graph.neighbours(0).next().expect("connected"));
    let sync = full_sync(&nodes, a, b);
    println!(
        "full sync over one new link: {} records each way",
        sync.len() / 2
    );

    // Every (sender, group) packet: exactly once to each accepting member, no link twice.
    let mut totals = ForwardTotals::default();
    let started = thread_cpu_time();
    for &s in &senders {
        for g in 0..=GROUPS {
            if let Err(e) = forward_and_check(
                &mut nodes,
                &graph,
                &oracle,
                &truth,
                s,
                group(g),
                &mut totals,
            ) {
                panic!("seed {SEED:#x}: {e}");
            }
        }
    }
    let check_time = thread_cpu_time() - started;
    println!(
        "{} packets: {} deliveries, {} link transmissions on trees vs {} for unicast fan-out \
         ({:.1}%), simulated and checked in {:.0} ms CPU",
        totals.packets,
        totals.deliveries,
        totals.link_transmissions,
        totals.unicast_fanout,
        100.0 * totals.link_transmissions as f64 / totals.unicast_fanout.max(1) as f64,
        check_time * 1e3
    );
    println!(
        "tree cache entries per node: {}",
        summary(nodes.iter().map(|m| m.cache_stats().entries as u64))
    );

    // Cost of a decision at nodes that get the packet: cached lookups, and cold computations.
    let work: Vec<(usize, NodeId, NodeId)> = (0..NODES)
        .flat_map(|v| {
            let oracle = &oracle;
            let graph = &graph;
            let senders = &senders;
            (0..=GROUPS).flat_map(move |g| {
                senders
                    .iter()
                    .filter(move |&&s| oracle.reachable(s, v))
                    .map(move |&s| (v, graph.nodes[s], group(g)))
            })
        })
        .collect();
    let mut hops = 0usize;
    for &(v, s, g) in &work {
        hops += nodes[v].forwarding(&oracle, s, g).next_hops.len();
    }
    let rounds = 5;
    // Node by node, as one daemon would see its own packets (`work` is sorted by node).
    let started = thread_cpu_time();
    for per_node in work.chunk_by(|a, b| a.0 == b.0) {
        for _ in 0..rounds {
            for &(v, s, g) in per_node {
                hops += black_box(nodes[v].forwarding(&oracle, s, g))
                    .next_hops
                    .len();
            }
        }
    }
    let warm = (thread_cpu_time() - started) / (rounds * work.len()) as f64;
    let started = thread_cpu_time();
    for &(v, s, g) in &work {
        hops += black_box(compute_forwarding(nodes[v].db(), &oracle, s, g))
            .next_hops
            .len();
    }
    let cold = (thread_cpu_time() - started) / work.len() as f64;
    black_box(hops);
    println!(
        "forwarding decision (CPU time): {:.0} ns cached, {:.2} µs computed from scratch ({} (node, source, group) triples)",
        warm * 1e9,
        cold * 1e6,
        work.len()
    );
}
