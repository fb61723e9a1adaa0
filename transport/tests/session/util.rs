//! Shorthands shared by the scenario tests.

use crate::sim::*;
use std::time::Duration;
use weft_transport::session::{SessionConfig, SessionEvent, SessionStats};

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn link(delay_ms: u64) -> LinkParams {
    LinkParams {
        delay: ms(delay_ms),
        ..LinkParams::default()
    }
}

/// A 10 Mbit/s path, so a long transfer is still running when the test interferes.
pub fn slow(delay_ms: u64) -> LinkParams {
    LinkParams {
        delay: ms(delay_ms),
        rate: Some((10_000_000, 500_000)),
        ..LinkParams::default()
    }
}

pub fn sim(cfg: SessionConfig, ab: LinkParams, ba: LinkParams) -> Sim {
    Sim::new(7, cfg.clone(), cfg, ab, ba)
}

pub fn a_stats(sim: &Sim) -> SessionStats {
    sim.a.conn(CONN_ID).expect("A's session").session.info()
}

pub fn b_stats(sim: &Sim) -> SessionStats {
    sim.b.conn(CONN_ID).expect("B's session").session.info()
}

pub fn a_has(sim: &Sim, e: SessionEvent) -> bool {
    sim.a.events(CONN_ID).contains(&e)
}

pub fn b_has(sim: &Sim, e: SessionEvent) -> bool {
    sim.b.events(CONN_ID).contains(&e)
}

pub fn set_route(sim: &mut Sim, available: bool) {
    let now = sim.now;
    for host in [&mut sim.a, &mut sim.b] {
        for c in host.conns.values_mut() {
            c.session.set_route_available(now, available);
        }
    }
}
