//! Whatever a neighbour sends, the link must not panic, and what it cannot parse is counted.

use crate::sim::ms;
use proptest::prelude::*;
use weft_core::{Instant, PacketKind};
use weft_transport::arq::{ArqConfig, ArqLink};

/// Two links that exchanged some traffic both ways, plus the bodies they sent.
fn warmed_up_pair() -> (ArqLink, ArqLink, Vec<(PacketKind, Vec<u8>)>) {
    let mut now = Instant::ZERO;
    let mut a = ArqLink::new(ArqConfig::default(), now);
    let mut b = ArqLink::new(ArqConfig::default(), now);
    let mut captured = Vec::new();
    for i in 0..40u64 {
        let _ = a.enqueue(i % 3, vec![i as u8; 100 + i as usize]);
        let _ = b.enqueue(i % 2, vec![i as u8; 50]);
        now += ms(1);
        // Drop every fifth body so there are holes, SACK ranges and retransmissions.
        let links = [&mut a, &mut b];
        for from in 0..2 {
            let mut n = 0;
            while let Some((kind, body)) = links[from].poll_transmit(now) {
                n += 1;
                captured.push((kind, body.clone()));
                if n % 5 != 0 {
                    let _ = links[1 - from].handle_packet(now, kind, &body);
                }
            }
        }
        for link in [&mut a, &mut b] {
            if link.poll_timeout().is_some_and(|t| t <= now) {
                link.handle_timeout(now);
            }
        }
    }
    (a, b, captured)
}

fn kind_of(k: u8) -> PacketKind {
    [
        PacketKind::ReliableData,
        PacketKind::ReliableAck,
        PacketKind::Hello,
        PacketKind::Data,
    ][k as usize % 4]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn hostile_bodies_never_panic(
        inputs in proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..120), any::<u16>(), proptest::collection::vec((any::<u16>(), any::<u8>()), 0..6)),
            1..40,
        )
    ) {
        let (mut a, _b, captured) = warmed_up_pair();
        let mut now = Instant::ZERO + ms(100);
        let mut malformed = 0u64;
        for (kind, random, pick, flips) in inputs {
            // Half the time a real body with a few bytes flipped, else random bytes.
            let (kind, body) = if pick % 2 == 0 && !captured.is_empty() {
                let (kind, mut body) = captured[pick as usize % captured.len()].clone();
                for (at, value) in flips {
                    if !body.is_empty() {
                        let len = body.len();
                        body[at as usize % len] ^= value;
                    }
                }
                (kind, body)
            } else {
                (kind_of(kind), random)
            };
            now += ms(1);
            if a.handle_packet(now, kind, &body).is_err() {
                malformed += 1;
            }
            while a.poll_transmit(now).is_some() {}
            if a.poll_timeout().is_some_and(|t| t <= now) {
                a.handle_timeout(now);
            }
        }
        prop_assert_eq!(a.stats().drops.malformed, malformed);
        // The link still answers: new data queues and leaves.
        prop_assert!(a.enqueue(9, vec![1; 10]).is_ok());
        let _ = a.poll_transmit(now + ms(1000));
    }
}
