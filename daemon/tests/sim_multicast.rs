//! Multicast through real node code in simulation: exactly one copy per member, nothing for
//! non-members, each packet on each link at most once; reliable groups lose nothing over lossy
//! links and keep per-source order; joins and leaves take effect within a second; and the
//! scale figures for 64 nodes, 1 000 groups, 20 senders.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use weft_core::{Endpoint, NodeId};
use weft_daemon::overlay::NodeEvent;
use weft_daemon::sim::{Sim, SimLink};
use weft_multicast::SocketId;

const PORT: u16 = 4000;

fn group(i: u32) -> NodeId {
    NodeId(u32::from(std::net::Ipv4Addr::new(
        239,
        1,
        (i >> 8) as u8,
        i as u8,
    )))
}

fn topology(seed: u64, n: usize, link: SimLink) -> Sim {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sim = Sim::new(seed);
    for _ in 0..n {
        sim.add_node(|_| {});
    }
    let mut edges = BTreeSet::new();
    for i in 1..n {
        edges.insert((rng.gen_range(0..i), i));
    }
    for _ in 0..n / 2 {
        let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    }
    for (a, b) in edges {
        let mut l = link;
        l.delay = Duration::from_millis(rng.gen_range(1..=10));
        sim.connect(a, b, l);
    }
    sim.start();
    sim.run_for(Duration::from_secs(3));
    sim
}

fn socket(i: usize) -> SocketId {
    SocketId::from(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(127, 0, 0, 1),
        20000 + i as u16,
    ))
}

/// Deliveries per node: (source, payload) in arrival order, for `group`.
fn deliveries(sim: &mut Sim, group: NodeId) -> BTreeMap<usize, Vec<(NodeId, Vec<u8>)>> {
    let mut out: BTreeMap<usize, Vec<(NodeId, Vec<u8>)>> = BTreeMap::new();
    for ev in std::mem::take(&mut sim.observed) {
        if let NodeEvent::Datagram {
            src, dst, payload, ..
        } = ev.event
        {
            if dst.node == group {
                out.entry(ev.node).or_default().push((src.node, payload));
            }
        }
    }
    out
}

fn mcast_out(sim: &mut Sim) -> u64 {
    (0..sim.len())
        .filter_map(|i| sim.with_node(i, |n, now| n.status(now)))
        .flat_map(|s| s.neighbors)
        .map(|n| n.mcast_out)
        .sum()
}

#[test]
fn every_member_gets_exactly_one_copy_and_no_link_carries_two() {
    let mut total_tx = 0u64;
    let mut total_unicast = 0u64;
    for seed in 0..40u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 1000);
        let n = rng.gen_range(5..=24);
        let mut sim = topology(seed, n, SimLink::with_delay(Duration::from_millis(1)));
        let g = group(1);
        let members: BTreeSet<usize> = (0..n).filter(|_| rng.gen_bool(0.4)).collect();
        for &m in &members {
            sim.with_node(m, |node, now| node.mc_join(now, socket(0), g, None, false))
                .expect("alive")
                .expect("join");
        }
        sim.run_for(Duration::from_secs(1));
        sim.observed.clear();
        let before = mcast_out(&mut sim);
        let source = rng.gen_range(0..n);
        let count = 20;
        for k in 0..count {
            sim.with_node(source, |node, now| {
                node.send_group(now, 5, Endpoint::new(g, PORT), &[k as u8; 100], 1, false)
            })
            .expect("alive")
            .expect("send");
            sim.run_for(Duration::from_millis(10));
        }
        sim.run_for(Duration::from_secs(1));
        let got = deliveries(&mut sim, g);
        for node in 0..n {
            let want = if members.contains(&node) && node != source {
                count
            } else {
                0
            };
            let have = got.get(&node).map_or(0, |v| v.len());
            assert_eq!(
                have,
                want,
                "seed {seed}: node {node} got {have} copies, member: {}",
                members.contains(&node)
            );
        }
        let sent = mcast_out(&mut sim) - before;
        // A tree over the members reached: at most one copy per node other than the source.
        assert!(
            sent / count as u64 <= (n - 1) as u64,
            "seed {seed}: {sent} link copies for {count} packets"
        );
        // Unicast fan-out: one copy per member per hop of its shortest path.
        let routes = sim
            .with_node(source, |node, now| node.status(now).routes)
            .expect("source");
        let unicast: u64 = members
            .iter()
            .filter(|&&m| m != source)
            .map(|&m| {
                let r = routes
                    .iter()
                    .find(|r| r.dst == Sim::id_of(m))
                    .expect("route to member");
                (r.path.len() - 1) as u64 * count as u64
            })
            .sum();
        assert!(
            sent <= unicast,
            "seed {seed}: multicast {sent} copies vs unicast {unicast}"
        );
        total_tx += sent;
        total_unicast += unicast;
    }
    println!(
        "40 topologies: {total_tx} link transmissions for multicast vs {total_unicast} for unicast fan-out ({:.1} %)",
        total_tx as f64 * 100.0 / total_unicast.max(1) as f64
    );
}

/// Two source ports on one node, interleaved: each source's datagrams arrive whole and in
/// its order at every member, also when a source's very first datagram is the one lost.
#[test]
fn reliable_groups_lose_nothing_on_lossy_links_and_keep_order() {
    const PORTS: [u16; 2] = [5, 6];
    for seed in 0..40u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 77);
        let n = rng.gen_range(5..=12);
        let link = SimLink {
            loss: 0.02,
            ..SimLink::with_delay(Duration::from_millis(5))
        };
        let mut sim = topology(seed, n, link);
        let g = group(2);
        let members: Vec<usize> = (1..n).filter(|_| rng.gen_bool(0.5)).collect();
        for &m in &members {
            sim.with_node(m, |node, now| node.mc_join(now, socket(1), g, None, true))
                .expect("alive")
                .expect("join");
        }
        sim.run_for(Duration::from_secs(2));
        sim.observed.clear();
        let count = 200u32;
        for k in 0..count {
            for port in PORTS {
                let mut payload = port.to_be_bytes().to_vec();
                payload.extend_from_slice(&k.to_be_bytes());
                sim.with_node(0, |node, now| {
                    node.send_group(now, port, Endpoint::new(g, PORT), &payload, 1, false)
                });
            }
            sim.run_for(Duration::from_millis(5));
        }
        sim.run_for(Duration::from_secs(5));
        let got = deliveries(&mut sim, g);
        for &m in &members {
            for port in PORTS {
                let seq: Vec<u32> = got
                    .get(&m)
                    .map(|v| {
                        v.iter()
                            .filter(|(_, p)| p[..2] == port.to_be_bytes())
                            .map(|(_, p)| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(
                    seq,
                    (0..count).collect::<Vec<_>>(),
                    "seed {seed}: member {m} got {} from port {port} in order?",
                    seq.len()
                );
            }
        }
    }
}

#[test]
fn joins_and_leaves_take_effect_within_a_second() {
    let mut sim = topology(9, 12, SimLink::with_delay(Duration::from_millis(10)));
    let g = group(3);
    let (source, member) = (0, 11);
    // A steady stream: one datagram every 10 ms.
    let mut k = 0u32;
    let mut tick = |sim: &mut Sim, ms: u64| {
        for _ in 0..ms / 10 {
            sim.with_node(source, |node, now| {
                node.send_group(now, 5, Endpoint::new(g, PORT), &k.to_be_bytes(), 1, false)
            });
            k += 1;
            sim.run_for(Duration::from_millis(10));
        }
    };
    tick(&mut sim, 500);
    sim.observed.clear();
    let joined_at = sim.now;
    sim.with_node(member, |node, now| {
        node.mc_join(now, socket(2), g, None, false)
    })
    .expect("alive")
    .expect("join");
    tick(&mut sim, 1500);
    let first = sim
        .observed
        .iter()
        .find(|o| {
            o.node == member && matches!(&o.event, NodeEvent::Datagram { dst, .. } if dst.node == g)
        })
        .map(|o| o.at)
        .expect("the new member got traffic");
    assert!(
        first - joined_at < Duration::from_secs(1),
        "first delivery {:?} after the join",
        first - joined_at
    );
    sim.observed.clear();
    let left_at = sim.now;
    sim.with_node(member, |node, now| node.mc_leave(now, socket(2), g, None))
        .expect("alive")
        .expect("leave");
    tick(&mut sim, 2000);
    let last = sim
        .observed
        .iter()
        .filter(|o| {
            o.node == member && matches!(&o.event, NodeEvent::Datagram { dst, .. } if dst.node == g)
        })
        .map(|o| o.at)
        .max();
    if let Some(last) = last {
        assert!(
            last - left_at < Duration::from_secs(1),
            "traffic {:?} after the leave",
            last - left_at
        );
    }
    // A crashed member is withdrawn once routing loses it: no more copies toward it.
    sim.with_node(member, |node, now| {
        node.mc_join(now, socket(2), g, None, false)
    })
    .expect("alive")
    .expect("join");
    tick(&mut sim, 500);
    sim.crash(member);
    tick(&mut sim, 1000);
    let before = mcast_out(&mut sim);
    tick(&mut sim, 1000);
    let after = mcast_out(&mut sim);
    assert_eq!(after, before, "copies still sent toward the crashed member");
    println!("join → first delivery {:?}", first - joined_at);
}

#[test]
fn scale_64_nodes_1000_groups_20_senders() {
    let mut rng = ChaCha8Rng::seed_from_u64(64);
    let mut sim = topology(64, 64, SimLink::with_delay(Duration::from_millis(2)));
    let packets_before = sim.packets_sent;
    let bytes_before = sim.bytes_sent;
    let t0 = sim.now;
    let mut joins = 0;
    for gi in 0..1000u32 {
        for node in 0..64 {
            if rng.gen_bool(0.08) {
                // A socket per group: one socket holds at most 20 (the kernel's limit).
                sim.with_node(node, |n, now| {
                    n.mc_join(now, socket(gi as usize), group(gi), None, false)
                })
                .expect("alive")
                .expect("join");
                joins += 1;
            }
        }
    }
    sim.run_for(Duration::from_secs(5));
    let secs = (sim.now - t0).as_secs_f64();
    let control_packets = sim.packets_sent - packets_before;
    let control_bytes = sim.bytes_sent - bytes_before;
    sim.observed.clear();
    let senders: Vec<(usize, u32)> = (0..20)
        .map(|_| (rng.gen_range(0..64), rng.gen_range(0..1000)))
        .collect();
    let cpu = std::time::Instant::now();
    for round in 0..10u8 {
        for &(s, gi) in &senders {
            sim.with_node(s, |n, now| {
                n.send_group(
                    now,
                    5,
                    Endpoint::new(group(gi), PORT),
                    &[round; 200],
                    1,
                    false,
                )
            });
        }
        sim.run_for(Duration::from_millis(50));
    }
    let elapsed = cpu.elapsed();
    let delivered = sim
        .observed
        .iter()
        .filter(|o| matches!(o.event, NodeEvent::Datagram { .. }))
        .count();
    let st = sim.with_node(0, |n, now| n.status(now)).expect("alive");
    println!(
        "64 nodes, 1000 groups ({joins} joins), 20 senders: membership {} records / {} bytes per node; \
         join flood {:.0} packets and {:.0} kB per node in {secs:.1} s; 200 datagrams → {delivered} deliveries; \
         {:.1} µs of simulation per delivery (forwarding decisions cached per source and group)",
        st.multicast.records,
        st.multicast.encoded_bytes,
        control_packets as f64 / 64.0,
        control_bytes as f64 / 64.0 / 1e3,
        elapsed.as_secs_f64() * 1e6 / delivered.max(1) as f64,
    );
    assert!(
        st.multicast.records >= joins / 2,
        "every node holds the memberships"
    );
    assert!(delivered > 0);
}
