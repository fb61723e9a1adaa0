//! Redundant copies on sparse links: they must take the repair round trip out of a sparse
//! stream's tail, stay out of loss, retransmission and congestion accounting, and cost a bulk
//! transfer essentially nothing.

use crate::chain::{percentile, sparse_stream, without_copies, HOPS};
use crate::latency::sparse_over_one_lossy_link;
use crate::sim::{make_packet, ms, seeds, Channel, Sim};
use std::time::Duration;
use weft_core::Instant;
use weft_transport::arq::{ArqConfig, ArqStats, RedundancyConfig, Refusal};

/// 4 links × 10 ms: the path delay.
const PATH_DELAY: Duration = Duration::from_millis(40);
/// A message is late when it took longer than the path plus this: a copy (the default delay
/// behind its original) arrives within it, a repair by the link (about one 20 ms RTT) does not.
fn late_slack() -> Duration {
    RedundancyConfig::default().delay + Duration::from_millis(1)
}

struct StreamOutcome {
    delays: Vec<Duration>,
    retransmissions: u64,
    copies: u64,
    copies_used: u64,
    congestion_events: u64,
}

fn stream(loss: f64, cfg: &ArqConfig) -> StreamOutcome {
    let mut out = StreamOutcome {
        delays: Vec::new(),
        retransmissions: 0,
        copies: 0,
        copies_used: 0,
        congestion_events: 0,
    };
    for seed in seeds(4) {
        let (chain, delays) = sparse_stream(seed, loss, cfg);
        out.delays.extend(delays);
        for link in chain.links.iter().flatten() {
            let s = link.stats();
            out.retransmissions += s.retransmissions;
            out.copies += s.redundant_copies;
            out.copies_used += s.redundant_copies_used;
            out.congestion_events += s.congestion_events;
        }
    }
    out.delays.sort();
    out
}

fn late_fraction(delays: &[Duration]) -> f64 {
    let late = delays
        .iter()
        .filter(|&&d| d > PATH_DELAY + late_slack())
        .count();
    late as f64 / delays.len() as f64
}

/// The benchmark's latency cell in virtual time (4 hops × 10 ms, 1 % and 2 % loss per link
/// both ways, 200-byte messages at 50/s). Without copies about 4–8 % of messages meet a loss
/// and wait a link RTT for the repair; with copies only a packet whose original and copy are
/// both lost (≈ HOPS·p²) does.
#[test]
fn copies_take_the_repair_out_of_a_sparse_streams_tail() {
    for loss in [0.01, 0.02] {
        let with = stream(loss, &ArqConfig::default());
        let without = stream(loss, &without_copies());
        let (late_with, late_without) =
            (late_fraction(&with.delays), late_fraction(&without.delays));
        let p99 = |d: &[Duration]| percentile(d, 0.99);
        println!(
            "{HOPS} hops × 10 ms, {:.0} % loss: p99 {:?} with copies, {:?} without; \
             late (> {:?}) {:.3} % vs {:.3} %; p99.9 {:?} vs {:?}; \
             link retransmissions {} vs {}; copies {} ({} used); congestion events {} vs {}",
            loss * 100.0,
            p99(&with.delays),
            p99(&without.delays),
            PATH_DELAY + late_slack(),
            late_with * 100.0,
            late_without * 100.0,
            percentile(&with.delays, 0.999),
            percentile(&without.delays, 0.999),
            with.retransmissions,
            without.retransmissions,
            with.copies,
            with.copies_used,
            with.congestion_events,
            without.congestion_events,
        );
        assert!(
            late_without > 0.02,
            "loss {loss}: the baseline must show the repair tail ({late_without})"
        );
        assert!(
            late_with * 5.0 <= late_without,
            "loss {loss}: {late_with} of messages late with copies, {late_without} without"
        );
        assert!(
            p99(&with.delays) <= PATH_DELAY + late_slack(),
            "loss {loss}: p99 {:?} with copies",
            p99(&with.delays)
        );
        assert!(with.copies_used > 0, "loss {loss}: copies saved nothing");
        assert!(
            with.retransmissions * 5 <= without.retransmissions,
            "loss {loss}: a loss the copy covered must not be repaired ({} vs {})",
            with.retransmissions,
            without.retransmissions
        );
        assert!(with.congestion_events <= without.congestion_events);
    }
}

fn sparse_over_one_link(seed: u64, cfg: ArqConfig) -> (ArqStats, ArqStats) {
    let (sim, _) = sparse_over_one_lossy_link(seed, cfg);
    (sim.nodes[0].arq.stats(), sim.nodes[1].arq.stats())
}

/// A copy is no retransmission and no duplicate; the loss estimate still sees the link's
/// loss (the copy hides it from the application, not from the estimate); the RTT is not
/// inflated by copies (an echo names the transmission it answers).
#[test]
fn copies_keep_loss_rtt_and_counters_honest() {
    let (mut est_with, mut est_without) = (0u64, 0u64);
    for seed in seeds(8) {
        let (sender, receiver) = sparse_over_one_link(seed, ArqConfig::default());
        let (plain, _) = sparse_over_one_link(seed, without_copies());
        println!(
            "seed {seed}: copies {} ({} used, {} discarded), retransmissions {} vs {} without, \
             duplicates {}, loss estimate {} vs {} ppm, srtt {:?} vs {:?}",
            sender.redundant_copies,
            receiver.redundant_copies_used,
            receiver.redundant_copies_discarded,
            sender.retransmissions,
            plain.retransmissions,
            receiver.duplicates,
            sender.loss_rate_ppm,
            plain.loss_rate_ppm,
            sender.srtt,
            plain.srtt
        );
        assert_eq!(
            sender.packets_sent, 3_000,
            "seed {seed}: copies are not new packets"
        );
        assert!(
            sender.redundant_copies >= 2_900,
            "seed {seed}: a sparse stream is copied in full ({})",
            sender.redundant_copies
        );
        // Copies the channel dropped arrive nowhere.
        assert!(
            receiver.redundant_copies_used + receiver.redundant_copies_discarded
                <= sender.redundant_copies
        );
        assert!(
            receiver.redundant_copies_used >= 20,
            "seed {seed}: at 2 % loss about 60 originals are lost ({})",
            receiver.redundant_copies_used
        );
        // Only retransmissions duplicate (the channel does not): ~2 900 copies are not among them.
        assert!(
            receiver.duplicates <= sender.retransmissions,
            "seed {seed}: {} duplicates, {} retransmissions",
            receiver.duplicates,
            sender.retransmissions
        );
        assert!(
            sender.retransmissions * 4 <= plain.retransmissions,
            "seed {seed}: {} retransmissions with copies, {} without",
            sender.retransmissions,
            plain.retransmissions
        );
        assert_eq!(sender.congestion_events, 0, "seed {seed}");
        let srtt = sender.srtt.as_secs_f64() * 1e3;
        assert!(
            (19.0..=23.0).contains(&srtt),
            "seed {seed}: srtt {:?} on a 20 ms link",
            sender.srtt
        );
        est_with += sender.loss_rate_ppm;
        est_without += plain.loss_rate_ppm;
    }
    // Both see data and ack losses (≈ 4 %); an EWMA of ~128 packets is noisy, so compare sums.
    let ratio = est_with as f64 / est_without.max(1) as f64;
    assert!(
        (0.5..=2.0).contains(&ratio),
        "loss estimate {est_with} ppm (summed) with copies, {est_without} without"
    );
}

/// A bulk sender on a lossy link is never sparse: copies stay far below 1 % of its bytes,
/// both when it keeps the queue full and when it sends in bursts that let the queue drain.
#[test]
fn bulk_transfers_pay_almost_nothing() {
    for seed in seeds(3) {
        for (name, burst_bytes, every) in [
            ("backlogged", usize::MAX, ms(1)),
            ("bursty", 30_000, ms(30)),
        ] {
            let lossy = Channel {
                delay: ms(10),
                loss: 0.02,
                rate: Some(10_000_000),
                queue_bytes: 60_000,
                ..Channel::default()
            };
            let acks = Channel {
                delay: ms(10),
                loss: 0.02,
                ..Channel::default()
            };
            let cfg = ArqConfig::default();
            let mut sim = Sim::new(seed, [cfg.clone(), cfg], [lossy, acks]);
            let mut next_id = 0u64;
            sim.run(Instant::ZERO + Duration::from_secs(10), |sim| {
                let mut budget = burst_bytes;
                while budget >= 1350 {
                    next_id += 1;
                    let packet = make_packet(next_id, 1, sim.now, 1350);
                    match sim.nodes[0].arq.enqueue(1, packet) {
                        Ok(()) => budget -= 1350,
                        Err(refused) => {
                            assert_eq!(refused.reason, Refusal::QueueFull);
                            break;
                        }
                    }
                }
                Some(sim.now + every)
            });
            let s = sim.nodes[0].arq.stats();
            let share = s.redundant_bytes as f64 / s.bytes_sent as f64;
            println!(
                "seed {seed} {name}: {} data bytes, {} copy bytes ({:.4} %), {} copies, {} retransmissions",
                s.bytes_sent,
                s.redundant_bytes,
                share * 100.0,
                s.redundant_copies,
                s.retransmissions
            );
            assert!(
                s.bytes_sent > 5_000_000,
                "seed {seed} {name}: the transfer ran ({} bytes)",
                s.bytes_sent
            );
            assert!(
                share < 0.01,
                "seed {seed} {name}: copies took {:.3} % of the data bytes",
                share * 100.0
            );
        }
    }
}
