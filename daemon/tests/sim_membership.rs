//! Neighbours that change while nodes run, in simulation (virtual time): a leaving relay is
//! routed around as soon as its leave arrives (the dead interval never comes into it), a
//! neighbour added at run time links and routes, a removed one is unlinked on both sides and
//! can come back, and a peer speaking another wire version is counted and shown, not taken
//! for garbage.

use std::net::SocketAddr;
use std::time::Duration;
use weft_core::{Header, NodeId, PacketKind, Writer};
use weft_daemon::overlay::neighbor::LinkState;
use weft_daemon::overlay::NeighborConfig;
use weft_daemon::sim::{Sim, SimLink};

const DELAY: Duration = Duration::from_millis(5);
/// Far longer than any wait below: whatever happens in them is not the dead interval's doing.
const DEAD: Duration = Duration::from_secs(30);

fn next_hop(sim: &Sim, from: usize, to: usize) -> Option<NodeId> {
    sim.node(from)?
        .routes()
        .find(|(dst, _, _)| *dst == Sim::id_of(to))
        .map(|(_, hop, _)| hop)
}

fn link_state(sim: &Sim, at: usize, peer: usize) -> Option<LinkState> {
    let node = sim.node(at)?;
    let i = node
        .neighbors()
        .position(|(a, _)| a == Sim::addr_of(peer))?;
    node.neighbor_states().get(i).copied()
}

fn configured(sim: &Sim, at: usize) -> Vec<SocketAddr> {
    sim.node(at)
        .map(|n| n.neighbors().map(|(a, _)| a).collect())
        .unwrap_or_default()
}

fn slow_dead(sim: &mut Sim, n: usize) {
    for _ in 0..n {
        sim.add_node(|c| c.dead_interval = DEAD);
    }
}

#[test]
fn a_leaving_relay_is_routed_around_when_its_leave_arrives() {
    // 0 -1- 3 over relay 1 (5 ms links), or over 2 (20 ms links).
    let mut sim = Sim::new(11);
    slow_dead(&mut sim, 4);
    sim.connect(0, 1, SimLink::with_delay(DELAY));
    sim.connect(1, 3, SimLink::with_delay(DELAY));
    sim.connect(0, 2, SimLink::with_delay(DELAY * 4));
    sim.connect(2, 3, SimLink::with_delay(DELAY * 4));
    sim.start();
    assert!(sim.run_until(Duration::from_secs(10), |s| next_hop(s, 0, 3)
        == Some(Sim::id_of(1))
        && next_hop(s, 3, 0) == Some(Sim::id_of(1))));
    sim.run_for(Duration::from_secs(1));

    sim.with_node(1, |n, now| n.leave(now));
    sim.crash(1);
    let left = sim.now;
    assert!(sim.run_until(Duration::from_secs(1), |s| next_hop(s, 0, 3)
        == Some(Sim::id_of(2))
        && next_hop(s, 3, 0) == Some(Sim::id_of(2))));
    let took = sim.now - left;
    println!("rerouted {took:?} after the leave (link delay {DELAY:?})");
    // The leave crosses one link; nothing else has to happen first.
    assert!(took <= DELAY + Duration::from_millis(1), "{took:?}");
    for n in [0, 3] {
        let c = sim.node(n).unwrap().counters();
        assert_eq!(
            (c.neighbor_leaves, c.neighbors_declared_dead),
            (1, 0),
            "{n}"
        );
        assert_eq!(link_state(&sim, n, 1), Some(LinkState::Down));
    }
    // Its silence from then on is no second failure.
    sim.run_for(DEAD + Duration::from_secs(1));
    for n in [0, 3] {
        let c = sim.node(n).unwrap().counters();
        assert_eq!(
            (c.neighbor_leaves, c.neighbors_declared_dead),
            (1, 0),
            "{n}"
        );
    }
    // A restart links again through the usual two-way check.
    sim.restart(1);
    assert!(sim.run_until(Duration::from_secs(5), |s| next_hop(s, 0, 3)
        == Some(Sim::id_of(1))));
}

#[test]
fn a_neighbour_added_at_run_time_links_routes_and_can_be_removed_and_come_back() {
    // 0 - 1 configured; 1 and 2 can reach each other but neither names the other.
    let mut sim = Sim::new(12);
    slow_dead(&mut sim, 3);
    sim.connect(0, 1, SimLink::with_delay(DELAY));
    sim.cable(1, 2, SimLink::with_delay(DELAY));
    sim.start();
    sim.run_for(Duration::from_secs(2));
    assert_eq!(next_hop(&sim, 0, 2), None);
    assert!(sim.node(1).unwrap().counters().unknown_sender == 0);

    let add = |sim: &mut Sim, at: usize, peer: usize| {
        sim.with_node(at, |n, now| {
            n.add_neighbor(
                now,
                NeighborConfig {
                    addr: Sim::addr_of(peer),
                    id: None,
                },
            )
        })
        .unwrap()
    };
    add(&mut sim, 1, 2).unwrap();
    add(&mut sim, 2, 1).unwrap();
    let e = add(&mut sim, 1, 2).unwrap_err();
    assert!(e.contains("already a neighbour"), "{e}");
    assert!(sim.run_until(Duration::from_secs(2), |s| next_hop(s, 0, 2)
        == Some(Sim::id_of(1))
        && next_hop(s, 2, 0) == Some(Sim::id_of(1))));
    assert_eq!(configured(&sim, 1), [Sim::addr_of(0), Sim::addr_of(2)]);

    // Removing it tells it: the far side takes the link down at once, both lose the route.
    sim.with_node(1, |n, now| n.remove_neighbor(now, Sim::addr_of(2)))
        .unwrap()
        .unwrap();
    assert_eq!(configured(&sim, 1), [Sim::addr_of(0)]);
    let removed = sim.now;
    assert!(
        sim.run_until(Duration::from_secs(1), |s| next_hop(s, 0, 2).is_none()
            && link_state(s, 2, 1) == Some(LinkState::Down))
    );
    assert!(sim.now - removed <= DELAY * 2, "{:?}", sim.now - removed);
    assert_eq!(sim.node(2).unwrap().counters().neighbor_leaves, 1);
    // Node 2 still names 1 and keeps saying hello: 1 drops those as from a stranger.
    let strangers = sim.node(1).unwrap().counters().unknown_sender;
    sim.run_for(Duration::from_secs(1));
    assert!(sim.node(1).unwrap().counters().unknown_sender > strangers);
    assert_eq!(link_state(&sim, 2, 1), Some(LinkState::Down));
    assert!(sim
        .with_node(1, |n, now| n.remove_neighbor(now, Sim::addr_of(2)))
        .unwrap()
        .is_err());

    // Added again: the retired slot comes back and so does the route.
    add(&mut sim, 1, 2).unwrap();
    assert!(sim.run_until(Duration::from_secs(2), |s| next_hop(s, 0, 2)
        == Some(Sim::id_of(1))));
    assert_eq!(configured(&sim, 1), [Sim::addr_of(0), Sim::addr_of(2)]);
    assert_eq!(sim.node(1).unwrap().status(sim.now).neighbors.len(), 2);
}

#[test]
fn another_wire_version_is_counted_and_shown_on_the_neighbour() {
    let mut sim = Sim::new(13);
    slow_dead(&mut sim, 2);
    sim.connect(0, 1, SimLink::with_delay(DELAY));
    sim.start();
    sim.run_for(Duration::from_secs(1));
    let mut packet = Vec::new();
    Header::new(PacketKind::Hello, Sim::id_of(1), 7).encode(&mut Writer::new(&mut packet));
    packet.extend_from_slice(&[0; 28]);
    packet[2] = 9;
    let before = sim.node(0).unwrap().counters();
    for _ in 0..3 {
        sim.with_node(0, |n, now| n.handle_datagram(now, Sim::addr_of(1), &packet));
    }
    let after = sim.node(0).unwrap().counters();
    assert_eq!(
        after.wire_version_mismatch,
        before.wire_version_mismatch + 3
    );
    assert_eq!(after.malformed, before.malformed, "not taken for garbage");
    let status = sim.node(0).unwrap().status(sim.now);
    assert_eq!(status.neighbors[0].wire_version_mismatch, Some(9));
    // The real neighbour, speaking our version, is not disturbed.
    assert_eq!(link_state(&sim, 0, 1), Some(LinkState::Up));
}
