//! One configured neighbour: liveness from hellos (two-way check, incarnations), RTT and loss
//! estimates, the link cost it contributes to routing, and whether it is administratively cut.

use crate::overlay::fast_liveness::FastLiveness;
use crate::overlay::flood::FloodQueue;
use crate::overlay::wire::Hello;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use weft_core::{Instant, NodeId};
use weft_transport::arq::ArqLink;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Nothing heard within the dead interval.
    Down,
    /// We hear them; they have not yet shown that they hear us.
    Init,
    /// Two-way: both sides hear each other. Only Up links carry traffic and appear in adverts.
    Up,
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkState::Down => "down",
            LinkState::Init => "init",
            LinkState::Up => "up",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Hops,
    #[default]
    Latency,
}

/// Minimum RTT over a sliding window of two `WINDOW` halves: a path's propagation delay
/// without the queueing that load adds, so routes do not flap under traffic.
#[derive(Debug, Clone, Default)]
struct WindowedMin {
    current: Option<Duration>,
    previous: Option<Duration>,
    started: Option<Instant>,
}

impl WindowedMin {
    const WINDOW: Duration = Duration::from_secs(5);

    fn update(&mut self, now: Instant, sample: Duration) {
        let start = *self.started.get_or_insert(now);
        if now - start >= Self::WINDOW {
            self.previous = self.current.take();
            self.started = Some(now);
        }
        self.current = Some(self.current.map_or(sample, |c| c.min(sample)));
    }

    fn get(&self) -> Option<Duration> {
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug)]
pub struct Neighbor {
    pub addr: SocketAddr,
    /// Learned from its packets (or fixed by configuration).
    pub id: Option<NodeId>,
    pub configured_id: Option<NodeId>,
    pub incarnation: Option<u32>,
    pub state: LinkState,
    pub last_heard: Option<Instant>,
    pub next_hello: Instant,
    /// While the neighbour is silent for more than 1.5 hello periods: when to probe next.
    pub next_probe: Option<Instant>,
    hello_seq: u32,
    /// (their `sent_us`, when we received it) of their latest hello, echoed in ours.
    last_hello_rx: Option<(u64, Instant)>,
    last_rx_seq: Option<u32>,
    srtt: Option<Duration>,
    min_rtt: WindowedMin,
    /// Fraction of their hellos lost (EWMA).
    pub hello_loss: f64,
    /// Cost currently in our advert for this link.
    pub announced_cost: u32,
    pub cost_announced_at: Option<Instant>,
    pub cut: bool,
    /// Routing state we owe this neighbour.
    pub flood: FloodQueue,
    /// The hop-by-hop reliable link, from the first time the link comes up; reset only when
    /// the neighbour restarts (a new incarnation), so both ends keep agreeing on sequences.
    pub arq: Option<ArqLink>,
    pub up_since: Option<Instant>,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Multicast copies sent on this link.
    pub mcast_out: u64,
    /// Removed at run time (`weft neighbor remove`, a reload): kept as a cut, silent slot so
    /// that link ids stay valid; `links/membership.rs` revives it if the address comes back.
    pub retired: bool,
    /// The wire version of the last packet it sent that we could not read (another weft).
    pub wire_version_mismatch: Option<u8>,
    /// Fast failure detection while the link carries traffic (issue 22).
    pub fast: FastLiveness,
}

impl Neighbor {
    pub fn new(addr: SocketAddr, configured_id: Option<NodeId>, first_hello: Instant) -> Self {
        Neighbor {
            addr,
            id: configured_id,
            configured_id,
            incarnation: None,
            state: LinkState::Down,
            last_heard: None,
            next_hello: first_hello,
            next_probe: None,
            hello_seq: 0,
            last_hello_rx: None,
            last_rx_seq: None,
            srtt: None,
            min_rtt: WindowedMin::default(),
            hello_loss: 0.0,
            announced_cost: 0,
            cost_announced_at: None,
            cut: false,
            flood: FloodQueue::default(),
            arq: None,
            up_since: None,
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            mcast_out: 0,
            retired: false,
            wire_version_mismatch: None,
            fast: FastLiveness::default(),
        }
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.get()
    }

    /// Forget everything learned from a previous incarnation of the neighbour.
    pub fn reset(&mut self) {
        self.incarnation = None;
        self.state = LinkState::Down;
        self.last_hello_rx = None;
        self.last_rx_seq = None;
        self.up_since = None;
        self.flood.clear();
        self.fast.forget_peer();
    }

    /// Validates the sender of a packet: a known neighbour with a different incarnation has
    /// restarted. Returns true if the link had to be reset.
    pub fn observe_incarnation(&mut self, sender: NodeId, incarnation: u32) -> bool {
        let restarted = self.incarnation.is_some_and(|i| i != incarnation);
        if restarted {
            self.reset();
        }
        self.incarnation = Some(incarnation);
        if self.configured_id.is_none() {
            self.id = Some(sender);
        }
        restarted
    }

    pub fn heard(&mut self, now: Instant, bytes: usize) {
        self.last_heard = Some(now);
        self.next_probe = None;
        self.packets_in += 1;
        self.bytes_in += bytes as u64;
    }

    /// Processes a hello; returns the link state it implies (the caller applies it).
    pub fn on_hello(&mut self, now: Instant, hello: &Hello, my_incarnation: u32) -> LinkState {
        if let Some(last) = self.last_rx_seq {
            let gap = hello.seq.wrapping_sub(last);
            if (1..1000).contains(&gap) {
                for _ in 1..gap {
                    self.hello_loss = self.hello_loss * 0.98 + 0.02;
                }
                self.hello_loss *= 0.98;
            }
        }
        self.last_rx_seq = Some(hello.seq);
        self.fast.on_peer_promise(hello.fast_interval_us);
        self.last_hello_rx = Some((hello.sent_us, now));
        if hello.echo_us != 0 {
            let rtt_us = now
                .as_micros()
                .saturating_sub(hello.echo_us)
                .saturating_sub(hello.echo_hold_us as u64);
            if rtt_us > 0 && rtt_us < 60_000_000 {
                let sample = Duration::from_micros(rtt_us);
                self.srtt = Some(self.srtt.map_or(sample, |s| (s * 7 + sample) / 8));
                self.min_rtt.update(now, sample);
            }
        }
        if hello.peer_incarnation == my_incarnation {
            LinkState::Up
        } else {
            LinkState::Init
        }
    }

    /// Our next hello; `fast` is the fast-liveness interval we promise (None: no promise).
    pub fn make_hello(&mut self, now: Instant, fast: Option<Duration>) -> Hello {
        self.hello_seq = self.hello_seq.wrapping_add(1);
        let (echo_us, echo_hold_us) = match self.last_hello_rx {
            Some((sent, at)) => (
                sent,
                now.saturating_since(at).as_micros().min(u32::MAX as u128) as u32,
            ),
            None => (0, 0),
        };
        Hello {
            seq: self.hello_seq,
            sent_us: now.as_micros().max(1),
            echo_us,
            echo_hold_us,
            peer_incarnation: if self.state == LinkState::Down {
                0
            } else {
                self.incarnation.unwrap_or(0)
            },
            fast_interval_us: fast.map_or(0, |d| d.as_micros().clamp(1, u32::MAX as u128) as u32),
        }
    }

    /// The routing cost of this link under `metric`: hops = 1; latency = 1 ms per hop (so
    /// that fewer hops win among near-zero latencies) plus the one-way delay in µs.
    pub fn cost(&self, metric: Metric) -> u32 {
        match metric {
            Metric::Hops => 1,
            Metric::Latency => {
                let one_way = self.min_rtt().map_or(0, |r| r.as_micros() as u64 / 2);
                (1_000 + one_way).min(u32::MAX as u64) as u32
            }
        }
    }

    /// Whether `new` differs enough from the announced cost to re-announce (hysteresis: 10 %
    /// and 500 µs), at most once per second.
    pub fn cost_needs_update(&self, now: Instant, new: u32) -> bool {
        if self.announced_cost == 0 {
            return true;
        }
        let diff = new.abs_diff(self.announced_cost);
        let significant = diff > self.announced_cost / 10 && diff > 500;
        significant
            && self
                .cost_announced_at
                .is_none_or(|t| now - t >= Duration::from_secs(1))
    }
}
