//! Congestion on rate-limited links, in virtual time: a relay in front of a slow link marks CE
//! on the standing queue and the session that feeds it slows down, so the relay's queue stays
//! bounded and nothing is dropped; a sender whose first link is slow is held back by that
//! link's flow queue (per-session back-pressure) while its other session runs at full speed.
//! Each check prints its seed; a run is reproduced exactly by its seed.

use std::time::Duration;
use weft_core::Endpoint;
use weft_daemon::overlay::{NodeEvent, SessionId, CE_THRESHOLD_BYTES, RELAYED_QUEUE_LIMIT_BYTES};
use weft_daemon::sim::{Sim, SimLink};
use weft_transport::arq::ArqConfig;

const PORT: u16 = 5000;
const HOP_DELAY: Duration = Duration::from_millis(5);
/// The slow link's rate: a tenth of what the fast links and the sessions could do.
const SLOW_BPS: u64 = 20_000_000;

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => vec![1, 2],
    }
}

fn slow() -> SimLink {
    SimLink {
        rate_bps: SLOW_BPS,
        // The emulated router's drop-tail queue: 50 ms at the rate.
        ..SimLink::with_delay(HOP_DELAY)
    }
}

/// One bulk session from `from` to `to`, with what the test watches.
struct Flow {
    from: usize,
    to: usize,
    client: SessionId,
    server: Option<SessionId>,
    written: usize,
    received: usize,
    /// Virtual time when the last byte arrived.
    done_at: Option<weft_core::Instant>,
}

/// Opens a session `from` → `to` (the server listens on `PORT`).
fn open(sim: &mut Sim, from: usize, to: usize) -> Flow {
    let _ = sim.with_node(to, |n, _| n.listen(PORT));
    let remote = Endpoint::new(Sim::id_of(to), PORT);
    let (client, _) = sim
        .with_node(from, |n, now| n.connect(now, None, remote))
        .expect("client up")
        .expect("session opens");
    Flow {
        from,
        to,
        client,
        server: None,
        written: 0,
        received: 0,
        done_at: None,
    }
}

/// Drives `flows` (each sending `total` bytes of a counting pattern, checked on arrival)
/// in 1 ms steps until all are delivered or `limit` passes; `watch` runs after every step.
fn run(
    sim: &mut Sim,
    flows: &mut [Flow],
    total: usize,
    limit: Duration,
    mut watch: impl FnMut(&mut Sim),
) {
    let pattern: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = sim.now + limit;
    while flows.iter().any(|f| f.done_at.is_none()) && sim.now < deadline {
        for f in flows.iter_mut() {
            if f.written < total {
                let (client, chunk) = (f.client, &pattern[f.written..]);
                f.written += sim
                    .with_node(f.from, |n, now| n.session_write(now, client, chunk))
                    .unwrap_or(0);
            }
        }
        sim.run_for(Duration::from_millis(1));
        for ev in std::mem::take(&mut sim.observed) {
            if let NodeEvent::Incoming { id, port: PORT, .. } = ev.event {
                if let Some(f) = flows
                    .iter_mut()
                    .find(|f| f.to == ev.node && f.server.is_none())
                {
                    f.server = Some(id);
                }
            }
        }
        for f in flows.iter_mut() {
            let Some(server) = f.server else { continue };
            loop {
                let n = sim
                    .with_node(f.to, |n, now| n.session_read(now, server, &mut buf))
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                assert_eq!(
                    &buf[..n],
                    &pattern[f.received..f.received + n],
                    "seed {}: bytes out of order or corrupted at {}",
                    sim.seed,
                    f.received
                );
                f.received += n;
            }
            if f.received == total && f.done_at.is_none() {
                f.done_at = Some(sim.now);
            }
        }
        watch(sim);
    }
}

/// Bytes queued on `node`'s reliable link toward node `toward`.
fn arq_queued(sim: &mut Sim, node: usize, toward: usize) -> u64 {
    let id = Sim::id_of(toward);
    sim.with_node(node, |n, now| {
        n.status(now)
            .neighbors
            .iter()
            .find(|nb| nb.node == Some(id))
            .and_then(|nb| nb.arq.as_ref())
            .map_or(0, |a| a.queued_bytes)
    })
    .unwrap_or(0)
}

/// What one run of the relay scenario shows.
#[derive(Debug, PartialEq)]
struct RelayRun {
    delivered_at: Duration,
    ce_marked: u64,
    ce_reductions: u64,
    dropped_backpressure: u64,
    max_relay_queue: u64,
    late_relay_queue: u64,
}

/// 0 –fast– 1 –slow– 2, one bulk session 0 → 2 of `total` bytes.
fn relay_run(seed: u64, total: usize) -> RelayRun {
    let mut sim = Sim::new(seed);
    for _ in 0..3 {
        sim.add_node(|_| {});
    }
    sim.connect(0, 1, SimLink::with_delay(HOP_DELAY));
    sim.connect(1, 2, slow());
    sim.start();
    sim.run_for(Duration::from_secs(2));
    let start = sim.now;
    let mut flows = [open(&mut sim, 0, 2)];
    let (mut max_queue, mut late_queue) = (0u64, 0u64);
    let settle = start + Duration::from_secs(2);
    run(
        &mut sim,
        &mut flows,
        total,
        Duration::from_secs(60),
        |sim| {
            let q = arq_queued(sim, 1, 2);
            max_queue = max_queue.max(q);
            if sim.now >= settle {
                late_queue = late_queue.max(q);
            }
        },
    );
    let f = &flows[0];
    assert_eq!(
        f.received, total,
        "seed {seed}: the session over the slow link did not finish"
    );
    let relay = sim.node(1).expect("relay up").counters();
    let client = sim
        .node(0)
        .expect("client up")
        .session_stats(f.client)
        .expect("session kept")
        .2;
    RelayRun {
        delivered_at: f.done_at.map_or(Duration::MAX, |t| t - start),
        ce_marked: relay.ce_marked,
        ce_reductions: client.ce_reductions,
        dropped_backpressure: relay.dropped_backpressure,
        max_relay_queue: max_queue,
        late_relay_queue: late_queue,
    }
}

#[test]
fn a_relay_before_a_slow_link_marks_ce_and_its_queue_stays_bounded() {
    // 20 MB at 20 Mbit/s: eight seconds of a link the session could overrun tenfold.
    let total = 20 << 20;
    for seed in seeds() {
        let r = relay_run(seed, total);
        println!("seed {seed}: {r:?}");
        assert!(
            r.ce_marked > 0,
            "seed {seed}: the relay never marked its standing queue: {r:?}"
        );
        assert!(
            r.ce_reductions > 0,
            "seed {seed}: the session never answered a mark: {r:?}"
        );
        assert_eq!(
            r.dropped_backpressure, 0,
            "seed {seed}: the relay dropped instead of pushing back: {r:?}"
        );
        // Marks keep the standing queue near the threshold once the session has settled
        // (within a few thresholds; the hard limit the relay would drop at is far above).
        assert!(
            r.late_relay_queue < 4 * CE_THRESHOLD_BYTES as u64
                && r.max_relay_queue < RELAYED_QUEUE_LIMIT_BYTES as u64,
            "seed {seed}: relay queue {} B with marks at {} B: {r:?}",
            r.late_relay_queue,
            CE_THRESHOLD_BYTES
        );
        // The slow link stays busy: the session slows down to its rate, not below it.
        let rate = total as f64 * 8.0 / r.delivered_at.as_secs_f64();
        assert!(
            rate > SLOW_BPS as f64 * 0.7,
            "seed {seed}: {:.1} Mbit/s over a {} Mbit/s link: {r:?}",
            rate / 1e6,
            SLOW_BPS / 1_000_000
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let seed = seeds()[0];
    assert_eq!(
        relay_run(seed, 4 << 20),
        relay_run(seed, 4 << 20),
        "seed {seed}: two runs differ"
    );
}

#[test]
fn a_slow_first_link_holds_back_only_the_session_that_uses_it() {
    // 1 –slow– 0 –fast– 2: node 0 sends to both.
    let total = 8 << 20;
    let limit = ArqConfig::default().flow_queue_limit_bytes as u64;
    for seed in seeds() {
        let mut sim = Sim::new(seed);
        for _ in 0..3 {
            sim.add_node(|_| {});
        }
        sim.connect(0, 1, slow());
        sim.connect(0, 2, SimLink::with_delay(HOP_DELAY));
        sim.start();
        sim.run_for(Duration::from_secs(2));
        let start = sim.now;
        let mut flows = [open(&mut sim, 0, 1), open(&mut sim, 0, 2)];
        let mut max_queue = 0u64;
        run(
            &mut sim,
            &mut flows,
            total,
            Duration::from_secs(60),
            |sim| {
                max_queue = max_queue.max(arq_queued(sim, 0, 1));
            },
        );
        let [slow_flow, fast_flow] = &flows;
        let took = |f: &Flow| f.done_at.map_or(Duration::MAX, |t| t - start);
        let counters = sim.node(0).expect("sender up").counters();
        println!(
            "seed {seed}: slow session {:?}, fast session {:?}, slow link queue max {max_queue} B, \
             dropped {}",
            took(slow_flow),
            took(fast_flow),
            counters.dropped_backpressure
        );
        assert_eq!(
            slow_flow.received, total,
            "seed {seed}: slow session unfinished"
        );
        assert_eq!(
            fast_flow.received, total,
            "seed {seed}: fast session unfinished"
        );
        // The slow session is held at its first link's flow queue (plus the packet that was
        // refused), not dropped and not queued without bound.
        let mss = sim.node(0).expect("sender up").config().routed_mtu() as u64;
        assert!(
            max_queue <= limit + mss,
            "seed {seed}: {max_queue} B queued on the slow link, flow limit {limit} B"
        );
        assert_eq!(counters.dropped_backpressure, 0, "seed {seed}");
        // The other session does not wait for it.
        assert!(
            took(fast_flow) * 4 < took(slow_flow),
            "seed {seed}: fast session {:?}, slow session {:?}",
            took(fast_flow),
            took(slow_flow)
        );
    }
}
