//! Exactly-once delivery over hostile channels, cuts, `take_all` and `reset`.

use crate::sim::{at_ms, ms, parse_packet, seeds, Bursts, Channel, Sim};
use crate::traffic::{arrivals, assert_exactly_once, run_to_completion, Planned, Traffic};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::time::Duration;
use weft_core::Instant;
use weft_transport::arq::{ArqConfig, RedundancyConfig};
use weft_transport::cc::Algorithm;

fn random_channel(rng: &mut ChaCha8Rng) -> Channel {
    Channel {
        delay: Duration::from_micros(rng.gen_range(100..30_000)),
        jitter: if rng.gen_bool(0.5) {
            Duration::from_micros(rng.gen_range(0..10_000))
        } else {
            Duration::ZERO
        },
        loss: rng.gen_range(0.0..0.2),
        bursts: rng.gen_bool(0.3).then(|| Bursts {
            enter: rng.gen_range(0.005..0.05),
            leave: rng.gen_range(0.2..0.6),
            loss: rng.gen_range(0.5..1.0),
        }),
        duplicate: if rng.gen_bool(0.3) {
            rng.gen_range(0.0..0.05)
        } else {
            0.0
        },
        rate: rng
            .gen_bool(0.3)
            .then(|| rng.gen_range(1_000_000..20_000_000)),
        queue_bytes: rng.gen_range(10_000..100_000),
        cuts: vec![],
    }
}

fn random_config(rng: &mut ChaCha8Rng, max_ack_delay: Duration) -> ArqConfig {
    let limit = rng.gen_range(2_000..64_000);
    ArqConfig {
        mss: rng.gen_range(200..=1350),
        cc: [Algorithm::Cubic, Algorithm::NewReno, Algorithm::None][rng.gen_range(0..3)],
        initial_window_packets: rng.gen_range(1..20),
        max_window_bytes: rng.gen_range(20_000..4_000_000),
        min_rto: Duration::from_micros(rng.gen_range(1_000..20_000)),
        max_rto: Duration::from_millis(rng.gen_range(200..2_000)),
        initial_rtt: Duration::from_millis(rng.gen_range(1..300)),
        flow_queue_limit_bytes: limit,
        flow_queue_low_water_bytes: limit / 4,
        max_ack_delay,
        max_outstanding_packets: if rng.gen_bool(0.2) {
            rng.gen_range(2..64)
        } else {
            1 << 16
        },
        pacing: rng.gen_bool(0.7),
        pacing_burst_packets: rng.gen_range(1..16),
        random_loss_tolerance: if rng.gen_bool(0.5) { 0.0 } else { 0.05 },
        redundancy: RedundancyConfig {
            enabled: rng.gen_bool(0.7),
            delay: Duration::from_micros(rng.gen_range(0..30_000)),
            budget_floor_bytes_per_sec: rng.gen_range(0..1_000_000),
            budget_fraction: rng.gen_range(0.0..0.5),
        },
    }
}

fn random_plan(rng: &mut ChaCha8Rng, mss: [usize; 2]) -> Vec<Planned> {
    let mut plan = Vec::new();
    for (from, &mss) in mss.iter().enumerate() {
        let count = rng.gen_range(0..300);
        let flows = rng.gen_range(1..5);
        let span_ms = rng.gen_range(1..2_000);
        for _ in 0..count {
            plan.push(Planned {
                at: Instant::from_micros(rng.gen_range(0..span_ms * 1000)),
                from,
                flow: rng.gen_range(0..flows),
                len: rng.gen_range(24..=mss),
            });
        }
    }
    plan
}

/// After everything arrived and the acks settled, nothing may stay held or owed.
fn assert_settled(sim: &Sim, context: &str) {
    for (i, node) in sim.nodes.iter().enumerate() {
        let stats = node.arq.stats();
        assert_eq!(
            stats.unacked_packets, 0,
            "seed {} ({context}): node {i} still holds unacked packets: {stats:?}",
            sim.seed
        );
        assert_eq!(
            stats.queued_packets, 0,
            "seed {} ({context}): node {i} still has queued packets",
            sim.seed
        );
        assert_eq!(
            node.decode_errors, 0,
            "seed {} ({context}): node {i} failed to decode a body",
            sim.seed
        );
        assert!(
            node.arq.is_idle(),
            "seed {} ({context}): node {i} is not idle",
            sim.seed
        );
    }
}

#[test]
fn every_packet_arrives_exactly_once_over_random_channels() {
    let mut retransmissions = 0;
    let mut duplicates = 0;
    for seed in seeds(300) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let max_ack_delay = Duration::from_micros(rng.gen_range(0..5_000));
        let configs = [
            random_config(&mut rng, max_ack_delay),
            random_config(&mut rng, max_ack_delay),
        ];
        let channels = [random_channel(&mut rng), random_channel(&mut rng)];
        let plan = random_plan(&mut rng, [configs[0].mss, configs[1].mss]);
        let context = format!("{:?} / {:?}", channels, configs);
        let mut sim = Sim::new(seed, configs, channels);
        let mut traffic = Traffic::new(plan);
        run_to_completion(&mut sim, &mut traffic, at_ms(300_000));
        assert_exactly_once(&sim, &traffic, &context);
        let settle = sim.now + Duration::from_secs(30);
        sim.run_idle(settle);
        assert_settled(&sim, &context);
        for node in &sim.nodes {
            let s = node.arq.stats();
            retransmissions += s.retransmissions;
            duplicates += s.duplicates;
        }
    }
    // The channels must actually have exercised recovery and duplicate suppression.
    if std::env::var("ARQ_SEED").is_err() {
        assert!(
            retransmissions > 1000 && duplicates > 100,
            "retransmissions {retransmissions}, duplicates {duplicates}"
        );
    }
}

fn one_way_plan(count: usize, interval: Duration, len: usize) -> Vec<Planned> {
    (0..count)
        .map(|i| Planned {
            at: Instant::ZERO + interval * i as u32,
            from: 0,
            flow: (i % 3) as u64,
            len,
        })
        .collect()
}

fn lossy(loss: f64) -> Channel {
    Channel {
        delay: ms(10),
        jitter: ms(2),
        loss,
        ..Channel::default()
    }
}

#[test]
fn ack_loss_only() {
    let mut duplicates = 0;
    for seed in seeds(50) {
        let mut sim = Sim::new(seed, Default::default(), [lossy(0.0), lossy(0.3)]);
        let mut traffic = Traffic::new(one_way_plan(500, ms(2), 500));
        run_to_completion(&mut sim, &mut traffic, at_ms(120_000));
        assert_exactly_once(&sim, &traffic, "ack loss only");
        sim.run_idle(sim.now + Duration::from_secs(10));
        assert_settled(&sim, "ack loss only");
        assert_eq!(sim.channel_counters(0).lost, 0);
        duplicates += sim.nodes[1].arq.stats().duplicates;
    }
    if std::env::var("ARQ_SEED").is_err() {
        assert!(
            duplicates > 0,
            "lost acks must have caused some (suppressed) resends"
        );
    }
}

#[test]
fn data_loss_only() {
    for seed in seeds(50) {
        let mut sim = Sim::new(seed, Default::default(), [lossy(0.2), lossy(0.0)]);
        let mut traffic = Traffic::new(one_way_plan(500, ms(2), 500));
        run_to_completion(&mut sim, &mut traffic, at_ms(120_000));
        assert_exactly_once(&sim, &traffic, "data loss only");
        sim.run_idle(sim.now + Duration::from_secs(10));
        assert_settled(&sim, "data loss only");
        let stats = sim.nodes[0].arq.stats();
        let lost = sim.channel_counters(0).lost;
        let received = sim.nodes[1].arq.stats();
        let duplicates = received.duplicates;
        assert_eq!(
            duplicates + received.redundant_copies_discarded + lost,
            stats.retransmissions + stats.redundant_copies,
            "seed {seed}: every resend or copy either repairs a loss or arrives as a counted \
             duplicate or discarded copy"
        );
        assert!(
            duplicates * 4 <= lost.max(4),
            "seed {seed}: {duplicates} needless resends for {lost} losses"
        );
    }
}

#[test]
fn a_cut_that_heals() {
    for seed in seeds(50) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cut = (
            at_ms(rng.gen_range(100..1_000)),
            at_ms(rng.gen_range(1_200..3_000)),
        );
        let mut channels = [lossy(0.02), lossy(0.02)];
        for c in &mut channels {
            c.cuts.push(cut);
        }
        let cfg = ArqConfig::default();
        let max_rto = cfg.max_rto;
        let mut sim = Sim::new(seed, [cfg.clone(), cfg], channels);
        let mut plan = one_way_plan(200, ms(10), 300);
        plan.extend(
            one_way_plan(200, ms(10), 300)
                .into_iter()
                .map(|p| Planned { from: 1, ..p }),
        );
        let mut traffic = Traffic::new(plan);
        run_to_completion(&mut sim, &mut traffic, at_ms(60_000));
        assert_exactly_once(&sim, &traffic, "cut that heals");
        // Once healed, backed-off timers must bring everything across within about max_rto.
        let last = sim
            .nodes
            .iter()
            .flat_map(|n| n.received.iter().map(|(t, _)| *t))
            .max()
            .unwrap_or(Instant::ZERO);
        assert!(
            last <= cut.1 + max_rto * 2,
            "seed {seed}: last arrival {last:?}, cut healed at {:?}",
            cut.1
        );
    }
}

#[test]
fn take_all_after_a_cut_returns_exactly_the_undelivered_packets() {
    for seed in seeds(50) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cut_at = at_ms(rng.gen_range(200..1_500));
        // Data cut for good. The sender can only know what was acked: acks are sent only in
        // answer to data, so a lost ack for a packet delivered just before the cut would
        // never be repeated. Hence a lossless ack path (the full-cut test covers the rest).
        let mut channels = [lossy(rng.gen_range(0.0..0.1)), lossy(0.0)];
        channels[0].cuts.push((cut_at, at_ms(u64::MAX / 2_000_000)));
        let mut sim = Sim::new(seed, Default::default(), channels);
        let mut traffic = Traffic::new(one_way_plan(300, ms(7), 600));
        sim.run(at_ms(2_100), |sim| traffic.step(sim));
        // Let the last acks for packets delivered before the cut come back.
        sim.run(at_ms(4_000), |sim| traffic.step(sim));
        assert!(
            traffic.is_done(),
            "seed {seed}: the plan fits in the queues"
        );
        let delivered: BTreeSet<u64> = arrivals(&sim, 1).keys().copied().collect();
        let taken = sim.nodes[0].arq.take_all();
        let taken_ids: BTreeSet<u64> = taken.iter().map(|(_, p)| parse_packet(p).id).collect();
        assert_eq!(
            taken_ids.len(),
            taken.len(),
            "seed {seed}: take_all returned a packet twice"
        );
        let all: BTreeSet<u64> = traffic.accepted[0].iter().copied().collect();
        let undelivered: BTreeSet<u64> = all.difference(&delivered).copied().collect();
        assert_eq!(
            taken_ids, undelivered,
            "seed {seed}: take_all must return exactly the undelivered packets"
        );
        for (flow, p) in &taken {
            assert_eq!(
                *flow,
                parse_packet(p).flow,
                "seed {seed}: packet came back with the wrong flow"
            );
        }
        let ids: Vec<u64> = taken.iter().map(|(_, p)| parse_packet(p).id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: take_all must return oldest first"
        );
        let stats = sim.nodes[0].arq.stats();
        assert_eq!(
            (
                stats.unacked_packets,
                stats.queued_packets,
                stats.in_flight_bytes
            ),
            (0, 0, 0),
            "seed {seed}: link left empty"
        );

        // The link stays usable: heal, send the taken packets again, and every id arrives once.
        sim.channel_mut(0).cuts.clear();
        for (flow, p) in taken {
            sim.nodes[0]
                .arq
                .enqueue(flow, p)
                .expect("queues are empty after take_all");
        }
        sim.run_idle(sim.now + Duration::from_secs(20));
        assert_exactly_once(&sim, &traffic, "resend after take_all");
        assert_settled(&sim, "resend after take_all");
    }
}

#[test]
fn take_all_after_a_full_cut_loses_nothing() {
    for seed in seeds(50) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cut_at = at_ms(rng.gen_range(200..1_500));
        let mut channels = [lossy(0.05), lossy(0.05)];
        for c in &mut channels {
            c.cuts.push((cut_at, at_ms(u64::MAX / 2_000_000)));
        }
        let mut sim = Sim::new(seed, Default::default(), channels);
        let mut traffic = Traffic::new(one_way_plan(300, ms(7), 600));
        sim.run(at_ms(4_000), |sim| traffic.step(sim));
        let delivered = arrivals(&sim, 1);
        assert!(
            delivered.values().all(|&n| n == 1),
            "seed {seed}: duplicate delivery"
        );
        let taken: BTreeSet<u64> = sim.nodes[0]
            .arq
            .take_all()
            .iter()
            .map(|(_, p)| parse_packet(p).id)
            .collect();
        for id in &traffic.accepted[0] {
            assert!(
                delivered.contains_key(id) || taken.contains(id),
                "seed {seed}: packet {id} neither delivered nor returned"
            );
        }
        // Only packets whose ack the cut swallowed can be both delivered and returned.
        let both = taken.iter().filter(|id| delivered.contains_key(id)).count();
        assert!(
            both <= 10,
            "seed {seed}: {both} delivered packets returned by take_all"
        );
    }
}

#[test]
fn reset_after_the_peer_restarts() {
    for seed in seeds(30) {
        let mut sim = Sim::new(seed, Default::default(), [lossy(0.05), lossy(0.05)]);
        let mut traffic = Traffic::new(one_way_plan(400, ms(5), 400));
        sim.run(at_ms(1_000), |sim| traffic.step(sim));
        let before = arrivals(&sim, 1);
        // Node 1 restarts: a fresh link (and fresh delivery log); node 0 learns of it.
        sim.nodes[1].arq = weft_transport::arq::ArqLink::new(ArqConfig::default(), sim.now);
        sim.nodes[1].received.clear();
        sim.clear_wire();
        let now = sim.now;
        sim.nodes[0].arq.reset(now);
        run_to_completion(&mut sim, &mut traffic, at_ms(30_000));
        sim.run_idle(sim.now + Duration::from_secs(5));
        let after = arrivals(&sim, 1);
        assert!(
            after.values().all(|&n| n == 1),
            "seed {seed}: the new incarnation got duplicates"
        );
        for id in &traffic.accepted[0] {
            assert!(
                before.contains_key(id) || after.contains_key(id),
                "seed {seed}: packet {id} lost across the restart"
            );
        }
        assert_settled(&sim, "after reset");
    }
}

#[test]
fn a_smaller_peer_window_is_respected() {
    for seed in seeds(20) {
        let big = ArqConfig {
            cc: Algorithm::None,
            initial_window_packets: 64,
            ..ArqConfig::default()
        };
        let small = ArqConfig {
            max_outstanding_packets: 8,
            ..ArqConfig::default()
        };
        let channel = Channel {
            rate: Some(5_000_000),
            queue_bytes: 20_000,
            ..lossy(0.05)
        };
        let mut sim = Sim::new(seed, [big, small], [channel, lossy(0.05)]);
        let mut traffic = Traffic::new(one_way_plan(500, Duration::from_micros(200), 1000));
        run_to_completion(&mut sim, &mut traffic, at_ms(120_000));
        assert_exactly_once(&sim, &traffic, "small peer window");
        // Only the first flight, sent before any ack named the window, may overshoot it.
        let beyond = sim.nodes[1].arq.stats().drops.beyond_window;
        assert!(
            beyond <= 64,
            "seed {seed}: {beyond} packets sent beyond the advertised window"
        );
    }
}
