//! Two `ArqLink`s joined by a simulated channel in virtual time. Each direction has its own
//! loss (Bernoulli or Gilbert–Elliott bursts), delay, jitter (which reorders), duplication,
//! rate limit with a drop-tail queue (all decided by the shared `weft-linkmodel`), and cut
//! windows. Everything derives from one seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;
use weft_core::{Instant, PacketKind};
use weft_linkmodel::{DirectionModel, DropReason, LinkParams, LossModel, QueueLimit, Verdict};
use weft_transport::arq::{ArqConfig, ArqLink, FlowId};

#[derive(Debug, Clone, Copy)]
pub struct Bursts {
    /// Per packet, chance to enter / leave the bad state.
    pub enter: f64,
    pub leave: f64,
    /// Loss probability while bad.
    pub loss: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Channel {
    pub delay: Duration,
    /// Extra delay, uniform in [0, jitter); packets may overtake each other.
    pub jitter: Duration,
    /// Loss probability (in the good state when `bursts` is set).
    pub loss: f64,
    pub bursts: Option<Bursts>,
    pub duplicate: f64,
    /// Bits per second; `None` for unlimited.
    pub rate: Option<u64>,
    /// Drop-tail limit of the rate limiter's queue, bytes.
    pub queue_bytes: usize,
    /// Packets entering the channel during these [from, to) windows vanish.
    pub cuts: Vec<(Instant, Instant)>,
}

#[derive(Debug, Default, Clone)]
pub struct ChannelCounters {
    pub sent: u64,
    pub lost: u64,
    pub cut: u64,
    pub queue_drops: u64,
    pub duplicated: u64,
}

/// One direction of a channel: the shared link model, fed from `channel` (which tests may
/// change between packets), with the channel's cut windows in front.
pub struct Direction {
    pub channel: Channel,
    model: DirectionModel,
    counters: ChannelCounters,
}

impl Channel {
    /// The channel in the shared model's terms (its jitter reorders).
    fn params(&self) -> LinkParams {
        let loss = match self.bursts {
            Some(b) => LossModel::GilbertElliott {
                p_gb: b.enter,
                p_bg: b.leave,
                loss_good: self.loss,
                loss_bad: b.loss,
            },
            None if self.loss > 0.0 => LossModel::Bernoulli { p: self.loss },
            None => LossModel::None,
        };
        LinkParams {
            delay: self.delay,
            jitter: self.jitter,
            reorder: true,
            loss,
            duplicate: self.duplicate,
            rate_bps: self.rate.unwrap_or(0),
            queue: QueueLimit::Bytes(self.queue_bytes as u64),
        }
    }
}

impl Direction {
    /// A direction whose randomness is stream `stream` of `seed`.
    pub fn new(channel: Channel, seed: u64, stream: u64) -> Direction {
        let seed = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Direction {
            model: DirectionModel::new(channel.params(), seed),
            channel,
            counters: ChannelCounters::default(),
        }
    }

    /// Arrival times of the copies that survive (0, 1 or 2).
    pub fn carry(&mut self, now: Instant, len: usize) -> Vec<Instant> {
        self.counters.sent += 1;
        let c = &self.channel;
        if c.cuts.iter().any(|&(from, to)| now >= from && now < to) {
            self.counters.cut += 1;
            return vec![];
        }
        let params = c.params();
        if params != *self.model.params() {
            self.model.set_params(params);
        }
        match self.model.on_packet(now, len) {
            Verdict::Drop(DropReason::Queue) => {
                self.counters.queue_drops += 1;
                vec![]
            }
            Verdict::Drop(_) => {
                self.counters.lost += 1;
                vec![]
            }
            Verdict::Deliver { due, copy, .. } => {
                if copy.is_some() {
                    self.counters.duplicated += 1;
                }
                std::iter::once(due).chain(copy).collect()
            }
        }
    }
}

pub struct Node {
    pub arq: ArqLink,
    /// (time, packet) for every packet `handle_packet` handed up.
    pub received: Vec<(Instant, Vec<u8>)>,
    pub writable: Vec<FlowId>,
    pub decode_errors: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    id: u64,
    to: usize,
    kind: u8,
    body: Vec<u8>,
}

pub struct Sim {
    pub now: Instant,
    pub nodes: [Node; 2],
    directions: [Direction; 2],
    wire: BinaryHeap<Reverse<InFlight>>,
    next_id: u64,
    pub seed: u64,
}

/// Loops at one instant beyond this mean a timer that never clears: a bug.
const MAX_STEPS_AT_ONE_INSTANT: u32 = 1_000_000;

impl Sim {
    /// `channels[0]` carries node 0 → node 1, `channels[1]` the way back.
    pub fn new(seed: u64, configs: [ArqConfig; 2], channels: [Channel; 2]) -> Sim {
        let now = Instant::ZERO;
        let [c0, c1] = configs;
        let [ch0, ch1] = channels;
        let node = |cfg| Node {
            arq: ArqLink::new(cfg, now),
            received: Vec::new(),
            writable: Vec::new(),
            decode_errors: 0,
        };
        let direction = |channel, stream| Direction::new(channel, seed, stream);
        Sim {
            now,
            nodes: [node(c0), node(c1)],
            directions: [direction(ch0, 1), direction(ch1, 2)],
            wire: BinaryHeap::new(),
            next_id: 0,
            seed,
        }
    }

    pub fn channel_mut(&mut self, from: usize) -> &mut Channel {
        &mut self.directions[from].channel
    }

    pub fn channel_counters(&self, from: usize) -> &ChannelCounters {
        &self.directions[from].counters
    }

    /// Drops everything in transit, as the daemon does with packets that carry a previous
    /// incarnation of their sender or receiver.
    pub fn clear_wire(&mut self) {
        self.wire.clear();
    }

    fn flush(&mut self) {
        for from in 0..2 {
            while let Some((kind, body)) = self.nodes[from].arq.poll_transmit(self.now) {
                for at in self.directions[from].carry(self.now, body.len()) {
                    self.next_id += 1;
                    self.wire.push(Reverse(InFlight {
                        at,
                        id: self.next_id,
                        to: 1 - from,
                        kind: kind as u8,
                        body: body.clone(),
                    }));
                }
            }
            while let Some(flow) = self.nodes[from].arq.poll_writable() {
                self.nodes[from].writable.push(flow);
            }
        }
    }

    /// Runs until `until`. `app` is called at the start and then whenever the time it asked
    /// for comes; it returns the next time it wants to run (or `None`).
    pub fn run(&mut self, until: Instant, mut app: impl FnMut(&mut Sim) -> Option<Instant>) {
        let mut app_at = Some(self.now);
        let mut steps_here = 0;
        loop {
            if app_at.is_some_and(|t| t <= self.now) {
                app_at = app(self);
            }
            self.flush();
            let next = [
                self.wire.peek().map(|Reverse(p)| p.at),
                self.nodes[0].arq.poll_timeout(),
                self.nodes[1].arq.poll_timeout(),
                app_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|&t| t <= until) else {
                self.now = self.now.max(until);
                return;
            };
            if next <= self.now {
                steps_here += 1;
                assert!(
                    steps_here < MAX_STEPS_AT_ONE_INSTANT,
                    "seed {}: stuck at {:?}",
                    self.seed,
                    self.now
                );
            } else {
                steps_here = 0;
                self.now = next;
            }
            while self.wire.peek().is_some_and(|Reverse(p)| p.at <= self.now) {
                let Some(Reverse(p)) = self.wire.pop() else {
                    break;
                };
                let kind = PacketKind::from_u8(p.kind).expect("the sim only carries ARQ kinds");
                let node = &mut self.nodes[p.to];
                match node.arq.handle_packet(self.now, kind, &p.body) {
                    Ok(Some(packet)) => node.received.push((self.now, packet)),
                    Ok(None) => {}
                    Err(_) => node.decode_errors += 1,
                }
            }
            for node in &mut self.nodes {
                if node.arq.poll_timeout().is_some_and(|t| t <= self.now) {
                    node.arq.handle_timeout(self.now);
                }
            }
        }
    }

    /// Runs without an application until `until`.
    pub fn run_idle(&mut self, until: Instant) {
        self.run(until, |_| None);
    }
}

/// A test packet: `[id: u64][flow: u64][enqueue time ns: u64]` padded to `len`.
pub fn make_packet(id: u64, flow: FlowId, now: Instant, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(24));
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&flow.to_be_bytes());
    p.extend_from_slice(&now.as_nanos().to_be_bytes());
    p.resize(len.max(24), (id % 251) as u8);
    p
}

pub struct Parsed {
    pub id: u64,
    pub flow: FlowId,
    pub sent: Instant,
}

pub fn parse_packet(p: &[u8]) -> Parsed {
    let field = |i: usize| {
        u64::from_be_bytes(
            p[i * 8..i * 8 + 8]
                .try_into()
                .expect("test packets are ≥ 24 bytes"),
        )
    };
    Parsed {
        id: field(0),
        flow: field(1),
        sent: Instant::from_nanos(field(2)),
    }
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

pub fn at_ms(v: u64) -> Instant {
    Instant::from_nanos(v * 1_000_000)
}

/// Seeds to run: `ARQ_SEED=n` replays one, `ARQ_SEEDS=n` runs `0..n` (a longer soak),
/// otherwise `0..count`.
pub fn seeds(count: u64) -> Vec<u64> {
    let var = |name| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    match (var("ARQ_SEED"), var("ARQ_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, Some(n)) => (0..n).collect(),
        (None, None) => (0..count).collect(),
    }
}
