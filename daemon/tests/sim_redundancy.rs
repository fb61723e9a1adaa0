//! Redundant copies on sparse links, through whole daemons: a session's sparse message stream
//! over 4 lossy hops loses its repair tail, and a bulk session over the same hops pays
//! essentially nothing. Virtual time only; each check prints its seed.

use std::time::Duration;
use weft_core::{Endpoint, Instant};
use weft_daemon::overlay::{NodeEvent, SessionId};
use weft_daemon::sim::{Sim, SimLink};
use weft_transport::arq::RedundancyConfig;
use weft_transport::session::SessionEvent;

const PORT: u16 = 5000;
const HOPS: usize = 4;
const HOP_DELAY: Duration = Duration::from_millis(10);
const MESSAGE: usize = 200;
const INTERVAL: Duration = Duration::from_millis(20);
/// A message is late beyond the path delay plus this: a copy (the default delay behind its
/// original, plus up to one 1 ms step of the test's reading) arrives within it, a link's
/// repair (about one 20 ms RTT) does not.
fn late_slack() -> Duration {
    RedundancyConfig::default().delay + Duration::from_millis(2)
}

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => vec![1, 2],
    }
}

/// A chain 0 – 1 – … – HOPS with `loss` per link and direction; a session from 0 to the end,
/// established.
fn chain(seed: u64, loss: f64, copies: bool) -> (Sim, SessionId, SessionId) {
    let mut sim = Sim::new(seed);
    for _ in 0..=HOPS {
        sim.add_node(|c| c.arq.redundancy.enabled = copies);
    }
    for i in 0..HOPS {
        let link = SimLink {
            loss,
            ..SimLink::with_delay(HOP_DELAY)
        };
        sim.connect(i, i + 1, link);
    }
    sim.start();
    sim.run_for(Duration::from_secs(2));
    sim.with_node(HOPS, |n, _| n.listen(PORT))
        .expect("server up")
        .expect("port free");
    let remote = Endpoint::new(Sim::id_of(HOPS), PORT);
    let (client, _) = sim
        .with_node(0, |n, now| n.connect(now, None, remote))
        .expect("client up")
        .expect("session opens");
    let mut server = None;
    let deadline = sim.now + Duration::from_secs(10);
    while server.is_none() && sim.now < deadline {
        sim.run_for(Duration::from_millis(5));
        for ev in std::mem::take(&mut sim.observed) {
            if let NodeEvent::Incoming { id, port: PORT, .. } = ev.event {
                server = Some(id);
            }
        }
    }
    let server = server.unwrap_or_else(|| panic!("seed {seed}: the session never arrived"));
    (sim, client, server)
}

/// Message delays (sorted) of a 50 messages/s stream of 200-byte messages, after its first
/// second (RTT estimates settle), and the copies sent on all links.
fn sparse_stream(seed: u64, loss: f64, copies: bool) -> (Vec<Duration>, u64) {
    let (mut sim, client, server) = chain(seed, loss, copies);
    let count = 1_500usize;
    let start = sim.now;
    let sent_at = |k: usize| start + INTERVAL * k as u32;
    let mut written = 0usize;
    let mut received = 0usize;
    let mut arrivals: Vec<Instant> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = sent_at(count) + Duration::from_secs(20);
    while arrivals.len() < count && sim.now < deadline {
        while written < count && sent_at(written) <= sim.now {
            let n = sim
                .with_node(0, |n, now| n.session_write(now, client, &[7u8; MESSAGE]))
                .unwrap_or(0);
            assert_eq!(
                n, MESSAGE,
                "seed {seed}: a sparse stream never fills the buffer"
            );
            written += 1;
        }
        sim.run_for(Duration::from_millis(1));
        // Bytes that became readable are dated by the event (exact), else by this step.
        let readable_at = std::mem::take(&mut sim.observed)
            .into_iter()
            .filter(|ev| {
                ev.node == HOPS
                    && matches!(
                        ev.event,
                        NodeEvent::Session { id, event: SessionEvent::Readable } if id == server
                    )
            })
            .map(|ev| ev.at)
            .next()
            .unwrap_or(sim.now);
        received += read_all(&mut sim, server, &mut buf);
        while arrivals.len() < received / MESSAGE {
            arrivals.push(readable_at);
        }
    }
    assert_eq!(
        arrivals.len(),
        count,
        "seed {seed} loss {loss} copies {copies}: not every message arrived"
    );
    let copies_sent = link_totals(&mut sim).copies;
    let mut delays: Vec<Duration> = arrivals
        .iter()
        .enumerate()
        .filter(|(k, _)| sent_at(*k) >= start + Duration::from_secs(1))
        .map(|(k, &at)| at - sent_at(k))
        .collect();
    delays.sort();
    (delays, copies_sent)
}

#[derive(Default, Debug)]
struct LinkTotals {
    bytes: u64,
    copies: u64,
    copy_bytes: u64,
    retransmissions: u64,
}

fn link_totals(sim: &mut Sim) -> LinkTotals {
    let mut t = LinkTotals::default();
    for i in 0..=HOPS {
        let Some(status) = sim.with_node(i, |n, now| n.status(now)) else {
            continue;
        };
        for arq in status.neighbors.iter().filter_map(|n| n.arq.as_ref()) {
            t.bytes += arq.bytes_sent;
            t.copies += arq.redundant_copies;
            t.copy_bytes += arq.redundant_bytes;
            t.retransmissions += arq.retransmissions;
        }
    }
    t
}

/// Everything the far end's session `server` has ready, in bytes.
fn read_all(sim: &mut Sim, server: SessionId, buf: &mut [u8]) -> usize {
    let mut total = 0;
    loop {
        let n = sim
            .with_node(HOPS, |n, now| n.session_read(now, server, buf))
            .unwrap_or(0);
        if n == 0 {
            return total;
        }
        total += n;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_sparse_session_over_four_lossy_hops_loses_its_repair_tail() {
    let path = HOP_DELAY * HOPS as u32;
    for loss in [0.01, 0.02] {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let mut copies = 0;
        for seed in seeds() {
            let (d, c) = sparse_stream(seed, loss, true);
            with.extend(d);
            copies += c;
            without.extend(sparse_stream(seed, loss, false).0);
        }
        with.sort();
        without.sort();
        let late = |d: &[Duration]| {
            d.iter().filter(|&&x| x > path + late_slack()).count() as f64 / d.len() as f64
        };
        let (late_with, late_without) = (late(&with), late(&without));
        println!(
            "sessions, {HOPS} hops × {HOP_DELAY:?}, {:.0} % loss, seeds {:?}: p50 {:?} / {:?}, \
             p99 {:?} with copies / {:?} without, p99.9 {:?} / {:?}; late (> {:?}) {:.2} % / \
             {:.2} %; {copies} copies",
            loss * 100.0,
            seeds(),
            percentile(&with, 0.5),
            percentile(&without, 0.5),
            percentile(&with, 0.99),
            percentile(&without, 0.99),
            percentile(&with, 0.999),
            percentile(&without, 0.999),
            path + late_slack(),
            late_with * 100.0,
            late_without * 100.0,
        );
        assert!(
            late_without > 0.02,
            "loss {loss} seeds {:?}: the baseline must show the repair tail",
            seeds()
        );
        assert!(
            late_with * 5.0 <= late_without,
            "loss {loss} seeds {:?}: {late_with} late with copies, {late_without} without",
            seeds()
        );
        assert!(
            percentile(&with, 0.99) <= path + late_slack(),
            "loss {loss} seeds {:?}: p99 {:?}",
            seeds(),
            percentile(&with, 0.99)
        );
    }
}

#[test]
fn a_bulk_session_pays_almost_nothing_for_copies() {
    for seed in seeds() {
        let (mut sim, client, server) = chain(seed, 0.02, true);
        let total = 4_000_000usize;
        let (mut written, mut received) = (0usize, 0usize);
        let chunk = vec![1u8; 64 * 1024];
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = sim.now + Duration::from_secs(120);
        while received < total && sim.now < deadline {
            if written < total {
                let part = &chunk[..(total - written).min(chunk.len())];
                written += sim
                    .with_node(0, |n, now| n.session_write(now, client, part))
                    .unwrap_or(0);
            }
            sim.run_for(Duration::from_millis(2));
            sim.observed.clear();
            received += read_all(&mut sim, server, &mut buf);
        }
        assert_eq!(received, total, "seed {seed}: the transfer did not finish");
        let t = link_totals(&mut sim);
        let share = t.copy_bytes as f64 / t.bytes as f64;
        println!(
            "seed {seed}: bulk session over {HOPS} hops at 2 % loss: {} link data bytes (both \
             ways), {} copies of {} bytes ({:.3} %), {} link retransmissions",
            t.bytes,
            t.copies,
            t.copy_bytes,
            share * 100.0,
            t.retransmissions
        );
        assert!(
            share < 0.01,
            "seed {seed}: copies took {:.3} % of the link data bytes",
            share * 100.0
        );
    }
}
