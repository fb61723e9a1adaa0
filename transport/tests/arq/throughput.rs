//! Bulk transfer in virtual time: fair shares between flows, per-flow back-pressure, the
//! congestion window's response to loss, and goodput on a lossy link.

use crate::sim::{at_ms, make_packet, ms, parse_packet, seeds, Channel, Sim};
use std::collections::BTreeMap;
use std::time::Duration;
use weft_core::Instant;
use weft_transport::arq::{ArqConfig, ArqStats, FlowId, Refusal};
use weft_transport::cc::Algorithm;

/// Keeps each flow's queue on node 0 full: enqueues until refused, every millisecond.
struct Bulk {
    flows: Vec<(FlowId, usize)>,
    next_id: u64,
}

impl Bulk {
    fn step(&mut self, sim: &mut Sim) -> Option<Instant> {
        for &(flow, len) in &self.flows {
            loop {
                self.next_id += 1;
                let packet = make_packet(self.next_id, flow, sim.now, len);
                match sim.nodes[0].arq.enqueue(flow, packet) {
                    Ok(()) => {}
                    Err(refused) => {
                        assert_eq!(refused.reason, Refusal::QueueFull);
                        break;
                    }
                }
            }
        }
        Some(sim.now + ms(1))
    }
}

/// Bytes node 1 received per flow between `from` and `to`.
fn received_bytes(sim: &Sim, from: Instant, to: Instant) -> BTreeMap<FlowId, u64> {
    let mut bytes = BTreeMap::new();
    for (at, p) in &sim.nodes[1].received {
        if *at >= from && *at < to {
            *bytes.entry(parse_packet(p).flow).or_insert(0) += p.len() as u64;
        }
    }
    bytes
}

fn mbit_per_s(bytes: u64, span: Duration) -> f64 {
    bytes as f64 * 8.0 / span.as_secs_f64() / 1e6
}

fn rate_limited(rate: u64, queue_bytes: usize) -> Channel {
    Channel {
        delay: ms(10),
        rate: Some(rate),
        queue_bytes,
        ..Channel::default()
    }
}

#[test]
fn two_backlogged_flows_share_a_rate_limited_link_fairly() {
    for seed in seeds(3) {
        for cc in [Algorithm::Cubic, Algorithm::NewReno] {
            let cfg = ArqConfig {
                cc,
                ..ArqConfig::default()
            };
            let ack_path = Channel {
                delay: ms(10),
                ..Channel::default()
            };
            let mut sim = Sim::new(
                seed,
                [cfg.clone(), cfg],
                [rate_limited(10_000_000, 40_000), ack_path],
            );
            // Different packet sizes: DRR must share bytes, not packets.
            let mut bulk = Bulk {
                flows: vec![(1, 1350), (2, 200)],
                next_id: 0,
            };
            let (start, end) = (at_ms(2_000), at_ms(12_000));
            sim.run(end, |sim| bulk.step(sim));
            let bytes = received_bytes(&sim, start, end);
            let total: u64 = bytes.values().sum();
            let share = |flow| *bytes.get(&flow).unwrap_or(&0) as f64 / total.max(1) as f64;
            let goodput = mbit_per_s(total, end - start);
            println!(
                "fairness {cc:?} seed {seed}: shares {:.3}/{:.3}, goodput {goodput:.2} Mbit/s",
                share(1),
                share(2)
            );
            for flow in [1, 2] {
                assert!(
                    (0.4..=0.6).contains(&share(flow)),
                    "seed {seed} {cc:?}: flow {flow} got {:.3}",
                    share(flow)
                );
            }
            // Payload bytes only; headers take about 6 % of 10 Mbit/s with 200-byte packets.
            assert!(
                goodput >= 8.0,
                "seed {seed} {cc:?}: goodput {goodput:.2} Mbit/s of 10"
            );
        }
    }
}

#[test]
fn a_full_flow_does_not_block_another() {
    let cut_until = at_ms(1_000);
    let mut channel = Channel {
        delay: ms(5),
        ..Channel::default()
    };
    channel.cuts.push((Instant::ZERO, cut_until));
    let cfg = ArqConfig {
        flow_queue_limit_bytes: 20_000,
        flow_queue_low_water_bytes: 5_000,
        ..ArqConfig::default()
    };
    let mut sim = Sim::new(
        1,
        [cfg.clone(), cfg],
        [
            channel,
            Channel {
                delay: ms(5),
                ..Channel::default()
            },
        ],
    );
    let link = &mut sim.nodes[0].arq;
    let mut id = 0;
    let mut fill = |flow: FlowId, link: &mut weft_transport::arq::ArqLink| {
        let mut accepted = 0;
        loop {
            id += 1;
            match link.enqueue(flow, make_packet(id, flow, Instant::ZERO, 1000)) {
                Ok(()) => accepted += 1,
                Err(refused) => {
                    assert_eq!(refused.reason, Refusal::QueueFull);
                    assert_eq!(
                        parse_packet(&refused.packet).id,
                        id,
                        "the refused packet comes back"
                    );
                    return accepted;
                }
            }
        }
    };
    let first = fill(1, link);
    assert!(first >= 20, "flow 1 took {first} packets before refusing");
    assert!(
        link.enqueue(1, vec![0; 100]).is_err(),
        "flow 1 stays refused while full"
    );
    let second = fill(2, link);
    assert!(
        second >= 19,
        "flow 2 must get its own room while flow 1 is full, took {second}"
    );
    assert!(link.flow_queued_bytes(1) <= 20_000 && link.flow_queued_bytes(2) <= 20_000);
    let too_big = link.enqueue(3, vec![0; 5000]).expect_err("larger than mss");
    assert_eq!(too_big.reason, Refusal::TooLarge);
    assert_eq!(link.stats().drops.too_large, 1);
    // Nothing drains while the link is cut; once it heals, both flows are told to resume.
    sim.run_idle(at_ms(900));
    assert!(
        sim.nodes[0].writable.is_empty(),
        "no room was freed during the cut"
    );
    sim.run_idle(at_ms(5_000));
    let mut writable = sim.nodes[0].writable.clone();
    writable.sort();
    assert_eq!(
        writable,
        vec![1, 2],
        "each refused flow is reported writable exactly once"
    );
    assert_eq!(sim.nodes[1].received.len(), first + second);
}

/// cwnd samples every 5 ms.
fn cwnd_trace(sim: &mut Sim, bulk: &mut Bulk, end: Instant) -> Vec<(Instant, ArqStats)> {
    let mut trace = Vec::new();
    while sim.now < end {
        let until = sim.now + ms(5);
        sim.run(until, |sim| bulk.step(sim));
        trace.push((sim.now, sim.nodes[0].arq.stats()));
    }
    trace
}

/// Asserts that the window drops when a loss is read as congestion and then grows well
/// above the reduced value before the next drop (a sawtooth, not a one-way slide).
fn assert_shrinks_and_regrows(trace: &[(Instant, ArqStats)], context: &str) {
    let drops: Vec<usize> = (1..trace.len())
        .filter(|&i| {
            let (before, after) = (&trace[i - 1].1, &trace[i].1);
            (after.cwnd as f64) < before.cwnd as f64 * 0.9
                && after.congestion_events > before.congestion_events
        })
        .collect();
    assert!(
        !drops.is_empty(),
        "{context}: the window never shrank on a loss"
    );
    let cycle = drops.iter().enumerate().find_map(|(k, &d)| {
        let next = drops.get(k + 1).copied().unwrap_or(trace.len());
        let after = trace[d].1.cwnd;
        let peak = trace[d..next]
            .iter()
            .map(|(_, s)| s.cwnd)
            .max()
            .unwrap_or(0);
        (peak as f64 >= after as f64 * 1.2).then_some((
            trace[d - 1].1.cwnd,
            after,
            peak,
            trace[d].0,
        ))
    });
    let Some((before, after, peak, at)) = cycle else {
        panic!(
            "{context}: after none of {} drops did the window grow back",
            drops.len()
        );
    };
    println!(
        "{context}: {} drops; e.g. cwnd {before} → {after} at {at:?}, then back up to {peak}",
        drops.len()
    );
}

#[test]
fn window_shrinks_on_congestion_and_grows_back() {
    for cc in [Algorithm::Cubic, Algorithm::NewReno] {
        let cfg = ArqConfig {
            cc,
            ..ArqConfig::default()
        };
        let ack_path = Channel {
            delay: ms(10),
            ..Channel::default()
        };
        let mut sim = Sim::new(
            7,
            [cfg.clone(), cfg],
            [rate_limited(20_000_000, 60_000), ack_path],
        );
        let mut bulk = Bulk {
            flows: vec![(1, 1350)],
            next_id: 0,
        };
        let trace = cwnd_trace(&mut sim, &mut bulk, at_ms(15_000));
        assert_shrinks_and_regrows(&trace, &format!("{cc:?} drop-tail"));
        let last = &trace[trace.len() - 1].1;
        assert!(
            last.congestion_events >= 2,
            "{cc:?}: only {} congestion events",
            last.congestion_events
        );
    }
}

#[test]
fn window_shrinks_on_random_loss_when_every_loss_counts() {
    for cc in [Algorithm::Cubic, Algorithm::NewReno] {
        let cfg = ArqConfig {
            cc,
            random_loss_tolerance: 0.0,
            ..ArqConfig::default()
        };
        let lossy = Channel {
            delay: ms(10),
            loss: 0.01,
            ..Channel::default()
        };
        let mut sim = Sim::new(3, [cfg.clone(), cfg], [lossy.clone(), lossy]);
        let mut bulk = Bulk {
            flows: vec![(1, 1350)],
            next_id: 0,
        };
        let trace = cwnd_trace(&mut sim, &mut bulk, at_ms(10_000));
        assert_shrinks_and_regrows(&trace, &format!("{cc:?} random loss, tolerance 0"));
    }
}

/// A 50 Mbit/s link with 1 % loss each way and 10 ms delay: random loss must not throttle
/// the link (a TCP-like response would allow ~6.6 Mbit/s), congestion still must.
#[test]
fn lossy_50_mbit_link_is_filled() {
    for seed in seeds(2) {
        let mut results = Vec::new();
        for tolerance in [0.05, 0.0] {
            let cfg = ArqConfig {
                random_loss_tolerance: tolerance,
                ..ArqConfig::default()
            };
            let forward = Channel {
                loss: 0.01,
                ..rate_limited(50_000_000, 125_000)
            };
            let back = Channel {
                delay: ms(10),
                loss: 0.01,
                ..Channel::default()
            };
            let mut sim = Sim::new(seed, [cfg.clone(), cfg], [forward, back]);
            let mut bulk = Bulk {
                flows: vec![(1, 1350)],
                next_id: 0,
            };
            let (start, end) = (at_ms(2_000), at_ms(8_000));
            sim.run(end, |sim| bulk.step(sim));
            let goodput = mbit_per_s(received_bytes(&sim, start, end).values().sum(), end - start);
            let stats = sim.nodes[0].arq.stats();
            println!(
                "lossy 50 Mbit/s seed {seed} tolerance {tolerance}: goodput {goodput:.1} Mbit/s, cwnd {}, srtt {:?}, \
                 congestion events {}, losses {}+{}, queue drops {}",
                stats.cwnd,
                stats.srtt,
                stats.congestion_events,
                stats.losses_by_sack,
                stats.losses_by_timer,
                sim.channel_counters(0).queue_drops
            );
            if tolerance > 0.0 {
                // Bulk repairs come from SACK, not timers, and acks are batched.
                assert!(
                    stats.losses_by_timer * 10 <= stats.losses_by_sack,
                    "seed {seed}: {stats:?}"
                );
                let acks = sim.nodes[1].arq.stats().acks_sent;
                println!(
                    "  {acks} standalone acks for {} data packets",
                    stats.packets_sent + stats.retransmissions
                );
                assert!(
                    acks * 4 <= stats.packets_sent,
                    "seed {seed}: {acks} acks for {} packets",
                    stats.packets_sent
                );
            }
            results.push(goodput);
        }
        assert!(
            results[0] >= 40.0,
            "seed {seed}: goodput {:.1} Mbit/s on a 50 Mbit/s link with 1% loss",
            results[0]
        );
        assert!(
            results[1] < results[0],
            "seed {seed}: tolerating random loss must help"
        );
    }
}

/// Both directions busy: every data packet carries the reverse acks, so most ack blocks ride
/// on data. Standalone acks remain for the moments the reverse data is held by its window or
/// pacer when an ack falls due (as in TCP); waiting for data there would stall short links.
#[test]
fn acks_ride_on_reverse_data() {
    for seed in seeds(3) {
        let channel = Channel {
            loss: 0.01,
            ..rate_limited(10_000_000, 40_000)
        };
        let mut sim = Sim::new(seed, Default::default(), [channel.clone(), channel]);
        let mut forward = Bulk {
            flows: vec![(1, 1350)],
            next_id: 0,
        };
        let mut backward = Bulk {
            flows: vec![(2, 1350)],
            next_id: 1 << 40,
        };
        sim.run(at_ms(5_000), |sim| {
            forward.step(sim);
            // The same application on node 1: swap roles for one step.
            sim.nodes.swap(0, 1);
            let next = backward.step(sim);
            sim.nodes.swap(0, 1);
            next
        });
        for node in 0..2 {
            let stats = sim.nodes[node].arq.stats();
            let data = stats.packets_sent + stats.retransmissions;
            let carried = data as f64 / (data + stats.acks_sent) as f64;
            println!(
                "seed {seed} node {node}: {data} data packets, {} standalone acks: {:.0} % of ack blocks on data",
                stats.acks_sent,
                carried * 100.0
            );
            assert!(
                stats.packets_sent > 2_000,
                "seed {seed}: node {node} sent only {}",
                stats.packets_sent
            );
            assert!(
                carried >= 0.7,
                "seed {seed}: node {node}: only {:.2} of ack blocks on data",
                carried
            );
        }
    }
}

/// A clean 1 Gbit/s link with a 100 µs RTT (loopback-like): the window, pacer and ack
/// frequency must keep up at microsecond scales.
#[test]
fn clean_gigabit_link_is_filled() {
    let channel = Channel {
        delay: Duration::from_micros(50),
        ..rate_limited(1_000_000_000, 256_000)
    };
    let back = Channel {
        delay: Duration::from_micros(50),
        ..Channel::default()
    };
    let mut sim = Sim::new(1, Default::default(), [channel, back]);
    let mut bulk = Bulk {
        flows: vec![(1, 1350)],
        next_id: 0,
    };
    let (start, end) = (at_ms(200), at_ms(700));
    sim.run(end, |sim| bulk.step(sim));
    let goodput = mbit_per_s(received_bytes(&sim, start, end).values().sum(), end - start);
    let stats = sim.nodes[0].arq.stats();
    let acks = sim.nodes[1].arq.stats().acks_sent;
    println!(
        "clean 1 Gbit/s, 100 µs RTT: goodput {goodput:.0} Mbit/s, cwnd {}, srtt {:?}, {} packets, {acks} acks, {} retransmissions, {} congestion events",
        stats.cwnd, stats.srtt, stats.packets_sent, stats.retransmissions, stats.congestion_events
    );
    // The sim's rate counts ARQ bodies (1350 + 39 bytes), so 972 Mbit/s is the ceiling.
    assert!(
        goodput >= 850.0,
        "goodput {goodput:.0} Mbit/s on a clean 1 Gbit/s link"
    );
    assert!(
        acks * 8 <= stats.packets_sent,
        "{acks} acks for {} packets",
        stats.packets_sent
    );
}

/// A 10 Mbit/s link (the benchmark's) with 5 % loss each way: with the default tolerance the
/// random loss neither throttles the link nor times it out.
#[test]
fn five_percent_loss_on_a_10_mbit_link_is_filled() {
    for seed in seeds(2) {
        let cfg = ArqConfig::default();
        let forward = Channel {
            loss: 0.05,
            ..rate_limited(10_000_000, 50_000)
        };
        let back = Channel {
            delay: ms(10),
            loss: 0.05,
            ..Channel::default()
        };
        let mut sim = Sim::new(seed, [cfg.clone(), cfg], [forward, back]);
        let mut bulk = Bulk {
            flows: vec![(1, 1350)],
            next_id: 0,
        };
        let (start, end) = (at_ms(2_000), at_ms(12_000));
        sim.run(end, |sim| bulk.step(sim));
        let goodput = mbit_per_s(received_bytes(&sim, start, end).values().sum(), end - start);
        let stats = sim.nodes[0].arq.stats();
        println!("10 Mbit/s, 5 % loss, seed {seed}: {goodput:.2} Mbit/s, {stats:?}");
        assert!(
            goodput >= 8.0,
            "seed {seed}: {goodput:.2} Mbit/s on a 10 Mbit/s link with 5 % loss: {stats:?}"
        );
        assert_eq!(stats.timeouts, 0, "seed {seed}: {stats:?}");
    }
}
