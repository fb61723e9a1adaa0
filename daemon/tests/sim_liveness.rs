//! Failure detection in simulation (virtual time): a silent neighbour is declared dead within
//! the configured window, a restarted one is recognised by its incarnation, a healed link comes
//! back, and lossy links do not flap.

use std::time::Duration;
use weft_daemon::overlay::neighbor::LinkState;
use weft_daemon::sim::{Sim, SimLink};

fn pair(hello: Duration, dead: Duration, link: SimLink) -> Sim {
    let mut sim = Sim::new(5);
    for _ in 0..2 {
        sim.add_node(|c| {
            c.hello_interval = hello;
            c.dead_interval = dead;
        });
    }
    sim.connect(0, 1, link);
    sim.start();
    sim
}

fn state(sim: &Sim, i: usize) -> Option<LinkState> {
    sim.node(i)?.neighbor_states().first().copied()
}

#[test]
fn a_silent_neighbour_is_dead_within_the_window() {
    for (hello, dead) in [(100, 350), (100, 500), (50, 150), (1000, 3000)] {
        let (hello, dead) = (Duration::from_millis(hello), Duration::from_millis(dead));
        let mut sim = pair(hello, dead, SimLink::with_delay(Duration::from_millis(5)));
        assert!(sim.run_until(Duration::from_secs(5), |s| state(s, 0)
            == Some(LinkState::Up)
            && state(s, 1) == Some(LinkState::Up)));
        sim.run_for(Duration::from_millis(777));
        sim.set_link(0, 1, |l| l.up = false);
        let cut = sim.now;
        assert!(
            sim.run_until(dead * 2, |s| state(s, 0) == Some(LinkState::Down)
                && state(s, 1) == Some(LinkState::Down))
        );
        let took = sim.now - cut;
        // The last packet may have left just before the cut: at most `dead` after it.
        assert!(
            took <= dead,
            "hello {hello:?} dead {dead:?}: declared after {took:?}"
        );
        assert!(
            took + hello + Duration::from_millis(5) >= dead,
            "not before the window: {took:?}"
        );
        sim.set_link(0, 1, |l| l.up = true);
        assert!(
            sim.run_until(hello * 3, |s| state(s, 0) == Some(LinkState::Up)
                && state(s, 1) == Some(LinkState::Up)),
            "a healed link comes back within a few hellos"
        );
    }
}

#[test]
fn a_restart_is_recognised_by_its_incarnation() {
    let mut sim = pair(
        Duration::from_millis(100),
        Duration::from_millis(350),
        SimLink::with_delay(Duration::from_millis(5)),
    );
    sim.run_for(Duration::from_secs(1));
    sim.crash(1);
    sim.run_for(Duration::from_millis(50));
    sim.restart(1);
    assert!(sim.run_until(Duration::from_secs(2), |s| {
        s.node(0)
            .is_some_and(|n| n.counters().neighbor_restarts == 1)
    }));
    assert!(sim.run_until(Duration::from_secs(2), |s| state(s, 0)
        == Some(LinkState::Up)
        && state(s, 1) == Some(LinkState::Up)));
    // Routes through the restarted node are back.
    assert!(sim.node(0).is_some_and(|n| n.is_reachable(Sim::id_of(1))));
}

#[test]
fn lossy_links_do_not_flap() {
    // 20 % loss each way: hellos get through often enough that 350 ms of silence is rare.
    let link = SimLink {
        loss: 0.2,
        ..SimLink::with_delay(Duration::from_millis(10))
    };
    let mut sim = pair(Duration::from_millis(100), Duration::from_millis(350), link);
    sim.run_for(Duration::from_secs(60));
    let deaths: u64 = (0..2)
        .filter_map(|i| sim.node(i))
        .map(|n| n.counters().neighbors_declared_dead)
        .sum();
    // P(3 hellos in a row lost both ways...) is small: allow a rare flap, not a storm.
    println!("{deaths} false deaths in 60 s at 20 % loss each way");
    assert!(deaths <= 2, "{deaths} false deaths in 60 s");
}
