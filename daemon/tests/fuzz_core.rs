//! Random and mutated packets fed to the decoders and to a running node (links, flooding,
//! ARQ, sessions, datagrams): nothing panics, and the node keeps working afterwards.

use proptest::prelude::*;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use weft_core::{Endpoint, Header, Instant};
use weft_daemon::overlay::{NeighborConfig, Node, NodeConfig};
use weft_daemon::sim::{Sim, SimLink};

/// Real traffic between two nodes: hellos, link state, acks, reliable data, session
/// segments, fragmented datagrams.
fn corpus() -> &'static Vec<(SocketAddr, Vec<u8>)> {
    static CORPUS: OnceLock<Vec<(SocketAddr, Vec<u8>)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut sim = Sim::new(3);
        let a = sim.add_node(|_| {});
        let b = sim.add_node(|_| {});
        sim.connect(a, b, SimLink::with_delay(Duration::from_millis(2)));
        sim.tap = Some(Vec::new());
        sim.start();
        sim.run_for(Duration::from_secs(1));
        sim.with_node(b, |n, _| n.listen(80))
            .expect("b")
            .expect("listen");
        let (id, _) = sim
            .with_node(a, |n, now| {
                n.connect(now, None, Endpoint::new(Sim::id_of(b), 80))
            })
            .expect("a")
            .expect("connect");
        sim.run_for(Duration::from_millis(200));
        sim.with_node(a, |n, now| n.session_write(now, id, &[9u8; 20_000]));
        sim.with_node(a, |n, now| {
            n.send_datagram(now, 5, Endpoint::new(Sim::id_of(b), 6), &[1u8; 5000], None)
        })
        .expect("a")
        .expect("datagram");
        sim.run_for(Duration::from_millis(500));
        sim.with_node(a, |n, now| n.session_shutdown(now, id));
        sim.run_for(Duration::from_millis(500));
        sim.tap
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, to, _)| *to == Sim::addr_of(b))
            .map(|(from, _, p)| (from, p))
            .collect()
    })
}

fn target() -> Node {
    let mut cfg = NodeConfig::new(Sim::id_of(1));
    cfg.neighbors.push(NeighborConfig {
        addr: Sim::addr_of(0),
        id: None,
    });
    let mut node = Node::new(cfg, Instant::from_nanos(1_000_000_000), 7, 1 << 32, 11);
    let _ = node.listen(80);
    node
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    Splice(usize, Vec<u8>),
}

fn mutate(mut p: Vec<u8>, m: &Mutation) -> Vec<u8> {
    match m {
        Mutation::Flip(i, x) if !p.is_empty() => {
            let i = i % p.len();
            p[i] ^= x | 1;
        }
        Mutation::Truncate(n) => p.truncate(n % (p.len() + 1)),
        Mutation::Extend(tail) => p.extend_from_slice(tail),
        Mutation::Splice(i, bytes) if !p.is_empty() => {
            let i = i % p.len();
            for (k, b) in bytes.iter().enumerate() {
                if let Some(slot) = p.get_mut(i + k) {
                    *slot = *b;
                }
            }
        }
        _ => {}
    }
    p
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Mutation::Splice(i, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..40)) {
        let mut node = target();
        let mut now = Instant::from_nanos(1_000_000_000);
        for p in packets {
            now += Duration::from_millis(3);
            node.handle_datagram(now, Sim::addr_of(0), &p);
            node.handle_datagram(now, "192.0.2.9:7470".parse().expect("addr"), &p);
            node.handle_timeout(now);
            while node.poll_transmit(now, &mut Vec::new()).is_some() {}
            while node.poll_event().is_some() {}
        }
    }

    #[test]
    fn mutated_real_traffic_never_panics(picks in proptest::collection::vec((any::<usize>(), mutation()), 1..200)) {
        let corpus = corpus();
        // Every kind of packet is represented (hello, state, ack, data, reliable data/ack).
        let kinds: std::collections::BTreeSet<u8> = corpus.iter().filter_map(|(_, p)| Header::decode(p).ok().map(|(h, _)| h.kind as u8)).collect();
        prop_assert!(kinds.len() >= 5, "corpus kinds {:?}", kinds);
        let mut node = target();
        let mut now = Instant::from_nanos(1_000_000_000);
        for (i, m) in picks {
            let (from, p) = &corpus[i % corpus.len()];
            now += Duration::from_micros(500);
            // The original first (so state exists to be confused), then the mutant.
            node.handle_datagram(now, *from, p);
            node.handle_datagram(now, *from, &mutate(p.clone(), &m));
            if i % 7 == 0 {
                node.handle_timeout(now);
            }
            while node.poll_transmit(now, &mut Vec::new()).is_some() {}
            while node.poll_event().is_some() {}
        }
        // Still alive and answering: the status renders.
        let _ = node.status(now);
    }
}
