//! Fast fail-over (issue 22) through whole daemons, in virtual time: on a diamond, a 1 kHz
//! probe over a reliable session loses nothing and stops for under 100 ms when its active link
//! is cut (fast liveness), where the dead interval alone stops it for about 350 ms; lossy
//! links carrying traffic see no false deaths; idle links send no keepalives. Each check
//! prints its seed.

use std::time::Duration;
use weft_core::{Endpoint, Instant};
use weft_daemon::overlay::{NodeEvent, SessionId};
use weft_daemon::sim::{Sim, SimLink};

const PORT: u16 = 5000;
const FAST: Duration = Duration::from_millis(5);
/// One probe message: its sequence number, padded.
const MESSAGE: usize = 16;
const PROBE_INTERVAL: Duration = Duration::from_millis(1);

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => vec![1, 2, 3],
    }
}

/// 0 ─5ms─ 1 ─5ms─ 3 and 0 ─7ms─ 2 ─7ms─ 3 (the path via 1 is the shorter), `loss` on every
/// link, and an established session from 0 to 3.
fn diamond(seed: u64, fast: Option<Duration>, loss: f64) -> (Sim, SessionId, SessionId) {
    let mut sim = Sim::new(seed);
    for _ in 0..4 {
        sim.add_node(|c| c.fast_probe = fast);
    }
    let link = |ms| SimLink {
        loss,
        ..SimLink::with_delay(Duration::from_millis(ms))
    };
    sim.connect(0, 1, link(5));
    sim.connect(1, 3, link(5));
    sim.connect(0, 2, link(7));
    sim.connect(2, 3, link(7));
    sim.start();
    sim.run_for(Duration::from_secs(2));
    sim.with_node(3, |n, _| n.listen(PORT))
        .expect("server up")
        .expect("port free");
    let remote = Endpoint::new(Sim::id_of(3), PORT);
    let (client, _) = sim
        .with_node(0, |n, now| n.connect(now, None, remote))
        .expect("client up")
        .expect("session opens");
    let mut server = None;
    let deadline = sim.now + Duration::from_secs(10);
    while server.is_none() && sim.now < deadline {
        sim.run_for(Duration::from_millis(1));
        for ev in std::mem::take(&mut sim.observed) {
            if let NodeEvent::Incoming { id, port: PORT, .. } = ev.event {
                server = Some(id);
            }
        }
    }
    let server = server.unwrap_or_else(|| panic!("seed {seed}: the session never arrived"));
    (sim, client, server)
}

/// What a probe run saw at the receiver.
struct Probe {
    /// Longest time without a delivery after the first second, in virtual time.
    outage: Duration,
    sent: u64,
}

/// Sends a probe message every millisecond for `run`, calling `disturb` once at `at` into the
/// run; checks that every message arrives, in order, and returns the longest silence at the
/// receiver.
fn probe(
    seed: u64,
    sim: &mut Sim,
    (client, server): (SessionId, SessionId),
    run: Duration,
    at: Duration,
    disturb: impl FnOnce(&mut Sim),
) -> Probe {
    let start = sim.now;
    let mut disturb = Some(disturb);
    let mut written = 0u64;
    let mut next_seq = 0u64;
    let mut partial: Vec<u8> = Vec::new();
    let mut last_arrival: Option<Instant> = None;
    let mut outage = Duration::ZERO;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = start + run + Duration::from_secs(10);
    loop {
        if sim.now >= start + at {
            if let Some(d) = disturb.take() {
                d(sim);
            }
        }
        while sim.now < start + run && start + PROBE_INTERVAL * written as u32 <= sim.now {
            let mut m = [0u8; MESSAGE];
            m[..8].copy_from_slice(&written.to_be_bytes());
            let n = sim
                .with_node(0, |n, now| n.session_write(now, client, &m))
                .unwrap_or(0);
            assert_eq!(n, MESSAGE, "seed {seed}: the probe never fills the buffer");
            written += 1;
        }
        sim.run_for(PROBE_INTERVAL);
        sim.observed.clear();
        loop {
            let n = sim
                .with_node(3, |n, now| n.session_read(now, server, &mut buf))
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            partial.extend_from_slice(&buf[..n]);
        }
        let whole = partial.len() / MESSAGE * MESSAGE;
        if whole > 0 {
            for m in partial[..whole].chunks(MESSAGE) {
                let seq = u64::from_be_bytes(m[..8].try_into().expect("8 bytes"));
                assert_eq!(seq, next_seq, "seed {seed}: out of order or lost");
                next_seq += 1;
            }
            partial.drain(..whole);
            if let Some(last) = last_arrival {
                if sim.now >= start + Duration::from_secs(1) {
                    outage = outage.max(sim.now - last);
                }
            }
            last_arrival = Some(sim.now);
        }
        if sim.now >= start + run && next_seq == written {
            break;
        }
        assert!(
            sim.now < deadline,
            "seed {seed}: {} of {written} messages arrived",
            next_seq
        );
    }
    Probe {
        outage,
        sent: written,
    }
}

fn fast_deaths(sim: &Sim, i: usize) -> u64 {
    sim.node(i).map_or(0, |n| n.counters().fast_deaths)
}

#[test]
fn a_cut_of_the_active_link_stops_a_reliable_probe_under_100ms_and_loses_nothing() {
    for seed in seeds() {
        let mut outages = Vec::new();
        for fast in [Some(FAST), None] {
            let (mut sim, client, server) = diamond(seed, fast, 0.0);
            let p = probe(
                seed,
                &mut sim,
                (client, server),
                Duration::from_secs(4),
                Duration::from_secs(2),
                |s| s.set_link(0, 1, |l| l.up = false),
            );
            println!(
                "seed {seed}: fast probe {fast:?}: cut of the active link 0-1: outage {:?}, \
                 0 of {} messages lost, fast deaths at 0: {}",
                p.outage,
                p.sent,
                fast_deaths(&sim, 0)
            );
            if fast.is_some() {
                assert!(
                    p.outage < Duration::from_millis(100),
                    "seed {seed}: outage {:?}",
                    p.outage
                );
                assert_eq!(fast_deaths(&sim, 0), 1, "seed {seed}: 0 saw the death");
                assert_eq!(fast_deaths(&sim, 1), 1, "seed {seed}: 1 saw the death");
            } else {
                assert_eq!(fast_deaths(&sim, 0), 0);
            }
            outages.push(p.outage);
        }
        assert!(
            outages[0] * 2 < outages[1],
            "seed {seed}: fast {:?} vs dead interval {:?}",
            outages[0],
            outages[1]
        );
    }
}

#[test]
fn a_cut_beyond_the_first_hop_loses_nothing() {
    for seed in seeds() {
        let mut outages = Vec::new();
        for fast in [Some(FAST), None] {
            let (mut sim, client, server) = diamond(seed, fast, 0.0);
            let p = probe(
                seed,
                &mut sim,
                (client, server),
                Duration::from_secs(4),
                Duration::from_secs(2),
                |s| s.set_link(1, 3, |l| l.up = false),
            );
            // What 1 held for 3 turns back toward 0, which refuses packets naming itself as
            // their source from a neighbour: the session's ends repair them.
            let refused = sim.node(0).map_or(0, |n| n.counters().unknown_source);
            println!(
                "seed {seed}: fast probe {fast:?}: cut of link 1-3 (the second hop): outage \
                 {:?}, 0 of {} lost; 0 refused {refused} packets turned back by 1",
                p.outage, p.sent
            );
            if fast.is_some() {
                assert_eq!(fast_deaths(&sim, 1), 1, "seed {seed}: 1 saw the death");
                assert_eq!(fast_deaths(&sim, 3), 1, "seed {seed}: 3 saw the death");
            }
            outages.push(p.outage);
        }
        assert!(
            outages[0] < outages[1],
            "seed {seed}: fast {:?} vs dead interval {:?}",
            outages[0],
            outages[1]
        );
    }
}

#[test]
fn busy_links_at_5_percent_loss_see_no_false_deaths() {
    let seed = seeds()[0];
    let (mut sim, client, server) = diamond(seed, Some(FAST), 0.05);
    // A 50 messages/s stream keeps the path via 1 active; the links via 2 stay idle.
    let run = Duration::from_secs(600);
    let start = sim.now;
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0u32;
    let mut read = 0usize;
    while sim.now < start + run {
        sim.with_node(0, |n, now| n.session_write(now, client, &[1u8; 160]));
        written += 1;
        sim.run_for(Duration::from_millis(20));
        sim.observed.clear();
        while let Some(n) = sim
            .with_node(3, |n, now| n.session_read(now, server, &mut buf))
            .filter(|&n| n > 0)
        {
            read += n;
        }
    }
    let deaths: u64 = (0..4)
        .filter_map(|i| sim.node(i))
        .map(|n| n.counters().neighbors_declared_dead)
        .sum();
    let keepalives: u64 = (0..4)
        .filter_map(|i| sim.node(i))
        .map(|n| n.counters().fast_keepalives)
        .sum();
    println!(
        "seed {seed}: {run:?} at 5 % loss per link, fast probe {FAST:?}: {deaths} false deaths, \
         {keepalives} keepalives, {read} of {} bytes read",
        written as usize * 160
    );
    assert!(keepalives > 0, "the active path kept its promise");
    assert_eq!(deaths, 0, "seed {seed}: false deaths");
}

#[test]
fn idle_links_send_no_keepalives() {
    let seed = seeds()[0];
    let (mut sim, client, server) = diamond(seed, Some(FAST), 0.0);
    probe(
        seed,
        &mut sim,
        (client, server),
        Duration::from_secs(2),
        Duration::from_secs(3),
        |_| {},
    );
    let keepalives = |sim: &Sim| -> u64 {
        (0..4)
            .filter_map(|i| sim.node(i))
            .map(|n| n.counters().fast_keepalives)
            .sum()
    };
    // The promise lapses a second after the traffic, then the tail.
    sim.run_for(Duration::from_secs(2));
    let before = keepalives(&sim);
    let bytes_before = sim.bytes_sent;
    sim.run_for(Duration::from_secs(10));
    let per_neighbour = (sim.bytes_sent - bytes_before) as f64 / 10.0 / 8.0;
    println!(
        "seed {seed}: idle after a probe: {} keepalives in 10 s, {per_neighbour:.0} B/s per \
         neighbour and direction (UDP payload)",
        keepalives(&sim) - before
    );
    assert!(before > 0);
    assert_eq!(
        keepalives(&sim),
        before,
        "seed {seed}: an idle link kept probing"
    );
    assert!(per_neighbour < 1000.0);
}
