//! Cost of the state machine alone: two links wired back to back with no channel, bulk data
//! one way. Reports packets per second; asserts nothing about speed (the host is shared).
//! `cargo test --release -p weft-transport --test arq -- --ignored --nocapture state_machine`

use std::time::Duration;
use weft_core::Instant;
use weft_transport::arq::{ArqConfig, ArqLink};

#[test]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
fn state_machine_packets_per_second() {
    for (label, size) in [("1350-byte", 1350usize), ("200-byte", 200)] {
        let cfg = ArqConfig::default();
        let mut now = Instant::ZERO;
        let mut a = ArqLink::new(cfg.clone(), now);
        let mut b = ArqLink::new(cfg, now);
        a.seed_rtt(Duration::from_micros(50));
        b.seed_rtt(Duration::from_micros(50));
        let target = 1_000_000u64;
        let (mut delivered, mut bodies, mut acks) = (0u64, 0u64, 0u64);
        let started = std::time::Instant::now();
        while delivered < target {
            while a.enqueue(1, vec![7; size]).is_ok() {}
            let mut sent = 0;
            while let Some((kind, body)) = a.poll_transmit(now) {
                bodies += 1;
                sent += 1;
                if let Ok(Some(_)) = b.handle_packet(now, kind, &body) {
                    delivered += 1;
                }
                if sent == 64 {
                    break;
                }
            }
            while let Some((kind, body)) = b.poll_transmit(now) {
                acks += 1;
                let _ = a.handle_packet(now, kind, &body);
            }
            // Virtual time runs at 10 Gbit/s of payload, so the pacer rarely holds back.
            now += Duration::from_nanos((sent.max(1) * size as u64 * 8) / 10);
            for link in [&mut a, &mut b] {
                if link.poll_timeout().is_some_and(|t| t <= now) {
                    link.handle_timeout(now);
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let rate = delivered as f64 / secs;
        println!(
            "{label}: {delivered} packets in {secs:.2} s: {:.0} packets/s ({:.2} Gbit/s of payload), \
             {bodies} data bodies, {acks} acks, retransmissions {}",
            rate,
            rate * size as f64 * 8.0 / 1e9,
            a.stats().retransmissions
        );
    }
}
