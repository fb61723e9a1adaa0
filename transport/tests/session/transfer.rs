//! Randomised transfers over impaired links, many seeds, both recovery modes: every byte
//! arrives once and in order, both FINs arrive, both ends close, nothing fails.

use crate::sim::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;
use weft_core::Instant;
use weft_transport::cc::Algorithm;
use weft_transport::session::{RecoveryMode, SessionConfig, SessionEvent, SessionStats};

#[derive(Debug, Clone)]
struct Scenario {
    cfg: SessionConfig,
    ab: LinkParams,
    ba: LinkParams,
    a_plan: AppPlan,
    b_plan: AppPlan,
    /// Tell the sessions the route is gone during the outage.
    signal_outage: Option<(Instant, Instant)>,
}

fn random_link(rng: &mut ChaCha8Rng, outage: Option<(Instant, Instant)>) -> LinkParams {
    let mut p = LinkParams {
        loss: if rng.gen_bool(0.8) {
            rng.gen_range(0.0..0.10)
        } else {
            0.0
        },
        delay: Duration::from_micros(rng.gen_range(1_000..50_000)),
        ..LinkParams::default()
    };
    if rng.gen_bool(0.3) {
        let good = Duration::from_millis(rng.gen_range(300..3_000));
        p.burst = Some((good, Duration::from_millis(rng.gen_range(5..50))));
    }
    if rng.gen_bool(0.5) {
        p.jitter = Duration::from_micros(rng.gen_range(100..20_000));
    }
    if rng.gen_bool(0.3) {
        p.duplicate = rng.gen_range(0.0..0.05);
    }
    if rng.gen_bool(0.4) {
        let bps = rng.gen_range(1_000_000..50_000_000);
        let queue = rng.gen_range(16_000..256_000);
        p.rate = Some((bps, queue));
        if rng.gen_bool(0.6) {
            p.ce_threshold = Some(queue / 4);
        }
    }
    p.outages.extend(outage);
    p
}

fn scenario(seed: u64, mode: RecoveryMode, large: bool) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cfg = SessionConfig {
        mode,
        ..SessionConfig::default()
    };
    if rng.gen_bool(0.3) {
        cfg.mss = rng.gen_range(200..1400);
    }
    if rng.gen_bool(0.3) {
        cfg.send_buffer_bytes = rng.gen_range(2_000..200_000);
        cfg.recv_buffer_bytes = rng.gen_range(1_000..200_000);
    }
    if rng.gen_bool(0.3) {
        cfg.cc = Algorithm::NewReno;
    }
    let outage = rng.gen_bool(0.3).then(|| {
        let start = at(Duration::from_millis(rng.gen_range(0..2_000)));
        (
            start,
            start + Duration::from_millis(rng.gen_range(100..3_000)),
        )
    });
    let size = |rng: &mut ChaCha8Rng| {
        if large {
            rng.gen_range(500_000..2_000_000)
        } else if rng.gen_bool(0.1) {
            0
        } else {
            rng.gen_range(1..30_000)
        }
    };
    let plan = |rng: &mut ChaCha8Rng, bytes: u64| AppPlan {
        send_bytes: bytes,
        chunk: rng.gen_range(1..20_000),
        read_pause: rng.gen_bool(0.2).then(|| {
            let s = at(Duration::from_millis(rng.gen_range(0..1_000)));
            (s, s + Duration::from_millis(rng.gen_range(100..2_000)))
        }),
        hold_open: false,
        wait_for_writable: rng.gen_bool(0.5),
    };
    let (a_bytes, b_bytes) = (size(&mut rng), size(&mut rng));
    Scenario {
        ab: random_link(&mut rng, outage),
        ba: random_link(&mut rng, outage),
        a_plan: plan(&mut rng, a_bytes),
        b_plan: plan(&mut rng, b_bytes),
        signal_outage: outage.filter(|_| rng.gen_bool(0.5)),
        cfg,
    }
}

pub struct Outcome {
    pub a: SessionStats,
    pub b: SessionStats,
    pub end: Instant,
}

fn run_scenario(seed: u64, sc: &Scenario) -> Result<Outcome, String> {
    let mut sim = Sim::new(
        seed,
        sc.cfg.clone(),
        sc.cfg.clone(),
        sc.ab.clone(),
        sc.ba.clone(),
    );
    sim.b.accept_plan = sc.b_plan.clone();
    sim.connect(CONN_ID, sc.a_plan.clone());
    if let Some((start, end)) = sc.signal_outage {
        sim.at(start, |s| {
            let now = s.now;
            for host in [&mut s.a, &mut s.b] {
                for c in host.conns.values_mut() {
                    c.session.set_route_available(now, false);
                }
            }
        });
        sim.at(end, |s| {
            let now = s.now;
            for host in [&mut s.a, &mut s.b] {
                for c in host.conns.values_mut() {
                    c.session.set_route_available(now, true);
                }
            }
        });
    }
    let fail = |sim: &Sim, why: String| {
        let describe = |h: &Host| {
            h.conn(CONN_ID).map(|c| {
                format!(
                    "written {} read {} events {:?} corrupt {:?}\n      {:?}",
                    c.written,
                    c.read,
                    c.events,
                    c.corrupt,
                    c.session.info()
                )
            })
        };
        format!(
            "seed {seed:#x}: {why}\n  scenario {sc:?}\n  A: {:?}\n  B: {:?}\n  links {:?} {:?}",
            describe(&sim.a),
            describe(&sim.b),
            sim.ab.counters,
            sim.ba.counters
        )
    };
    if let Err(e) = sim.run_until(at(Duration::from_secs(600)), |s| s.both_closed(CONN_ID)) {
        return Err(fail(&sim, e));
    }
    let (Some(a), Some(b)) = (sim.a.conn(CONN_ID), sim.b.conn(CONN_ID)) else {
        return Err(fail(&sim, "a session is missing".into()));
    };
    for (name, me, peer) in [("A", a, b), ("B", b, a)] {
        let problem = if let Some(c) = &me.corrupt {
            Some(format!("{name} read corrupt data: {c}"))
        } else if me.read != peer.plan.send_bytes {
            Some(format!(
                "{name} read {} of {} bytes",
                me.read, peer.plan.send_bytes
            ))
        } else if me
            .events
            .iter()
            .any(|e| matches!(e, SessionEvent::Failed(_)))
        {
            Some(format!("{name} failed"))
        } else if me.saw(SessionEvent::Connected) != 1
            || me.saw(SessionEvent::PeerFinished) != 1
            || me.saw(SessionEvent::Closed) != 1
        {
            Some(format!("{name} events wrong"))
        } else if me.events.last() != Some(&SessionEvent::Closed) {
            Some(format!("{name}: Closed is not the last event"))
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(fail(&sim, p));
        }
    }
    // A stale duplicate SYN may create a second session at B after the first closed; it
    // must never complete its handshake.
    for (i, (_, c)) in sim.b.finished.iter().enumerate() {
        if i > 0 && c.saw(SessionEvent::Connected) > 0 {
            return Err(fail(&sim, "a ghost session connected".into()));
        }
    }
    for c in sim.b.conns.values() {
        if c.saw(SessionEvent::Connected) > 0 {
            return Err(fail(&sim, "a ghost session connected".into()));
        }
    }
    Ok(Outcome {
        a: a.session.info(),
        b: b.session.info(),
        end: sim.now,
    })
}

fn many_seeds(mode: RecoveryMode, base: u64, count: u64, large: bool) -> Vec<Outcome> {
    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    for i in 0..count {
        let seed = base + i;
        let sc = scenario(seed, mode, large);
        match run_scenario(seed, &sc) {
            Ok(o) => outcomes.push(o),
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        let shown: Vec<_> = failures.iter().take(3).collect();
        panic!(
            "{} of {count} seeds failed ({mode:?}); first ones:\n{}",
            failures.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    outcomes
}

/// Seeds per mode: 500, or `WEFT_SEEDS` for a longer soak.
fn seed_count() -> u64 {
    std::env::var("WEFT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

#[test]
fn small_transfers_hop_by_hop_many_seeds() {
    let out = many_seeds(RecoveryMode::HopByHop, 0x1000, seed_count(), false);
    let retransmits: u64 = out.iter().map(|o| o.a.retransmits + o.b.retransmits).sum();
    println!(
        "{} seeds hop-by-hop: {retransmits} retransmissions in total",
        out.len()
    );
}

#[test]
fn small_transfers_end_to_end_many_seeds() {
    let out = many_seeds(RecoveryMode::EndToEndOnly, 0x2000, seed_count(), false);
    let fast: u64 = out
        .iter()
        .map(|o| o.a.fast_retransmits + o.b.fast_retransmits)
        .sum();
    println!(
        "{} seeds end-to-end: {fast} fast retransmissions in total",
        out.len()
    );
}

#[test]
fn large_transfers_both_modes() {
    for mode in [RecoveryMode::HopByHop, RecoveryMode::EndToEndOnly] {
        let count = std::env::var("WEFT_LARGE_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        for o in many_seeds(mode, 0x3000, count, true) {
            println!(
                "{mode:?}: finished at {:?}, A sent {} B, retransmitted {} B, cwnd {}",
                o.end, o.a.bytes_sent, o.a.bytes_retransmitted, o.a.cwnd
            );
        }
    }
}

/// Replays one seed: `WEFT_SEED=0x2007 WEFT_MODE=e2e|hbh [WEFT_LARGE=1] cargo test --test session replay -- --nocapture`.
#[test]
fn replay() {
    let Ok(seed) = std::env::var("WEFT_SEED") else {
        return;
    };
    let seed = u64::from_str_radix(seed.trim_start_matches("0x"), 16).expect("hex seed");
    let mode = match std::env::var("WEFT_MODE").as_deref() {
        Ok("e2e") => RecoveryMode::EndToEndOnly,
        _ => RecoveryMode::HopByHop,
    };
    let large = std::env::var("WEFT_LARGE").is_ok();
    let sc = scenario(seed, mode, large);
    println!("{sc:?}");
    match run_scenario(seed, &sc) {
        Ok(o) => println!("ok at {:?}\n{:?}\n{:?}", o.end, o.a, o.b),
        Err(e) => panic!("{e}"),
    }
}
