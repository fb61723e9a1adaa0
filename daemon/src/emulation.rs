//! Receive-side link emulation (the kernel here has no netem), a layer between the overlay
//! socket and the node: loss (Bernoulli or Gilbert–Elliott bursts), delay with
//! order-preserving jitter, a rate limit with a drop-tail byte queue, all decided by the
//! shared link model (`weft-linkmodel`); this layer parses what users type, holds delayed
//! packets and counts. Applied to packets from
//! one neighbour before the node sees them, only when the daemon runs with emulation allowed.
//! `weft link set|cut|heal` lands here: parameters stay in this layer, cuts become the node's
//! administrative cut of the link (both directions).

use crate::overlay::Node;
use ahash::AHashMap as HashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tracing::info;
use weft_core::{Instant, NodeId};
use weft_ipc::LinkAction;
use weft_linkmodel::{self as model, DirectionModel, LossModel, QueueLimit};

/// The emulation of every configured neighbour's link (receive side).
#[derive(Debug)]
pub struct Emulation {
    enabled: bool,
    links: Vec<(SocketAddr, Emulator)>,
    by_addr: HashMap<SocketAddr, usize>,
    seed: u64,
}

impl Emulation {
    /// `links`: every neighbour with its initial parameters. Without `enabled` nothing is
    /// emulated and commands are refused.
    pub fn new(enabled: bool, links: &[(SocketAddr, LinkParams)], seed: u64) -> Self {
        let mut e = Emulation {
            enabled,
            links: Vec::new(),
            by_addr: HashMap::new(),
            seed: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        };
        for &(addr, params) in links {
            // Checked when the configuration was resolved: without emulation every link is
            // the identity.
            let _ = e.add_link(addr, params);
        }
        e
    }

    /// A neighbour joined (`weft neighbor add`, a reload) with these parameters, or a known
    /// neighbour's parameters changed (a reload). Refused when emulation is off and `params`
    /// would emulate something.
    pub fn add_link(&mut self, addr: SocketAddr, params: LinkParams) -> Result<(), String> {
        if !self.enabled {
            return match params.is_identity() {
                true => Ok(()),
                false => Err("link emulation is disabled: start weftd with --emulation".into()),
            };
        }
        match self.by_addr.get(&addr) {
            Some(&i) => self.links[i].1.set_params(params),
            None => {
                self.seed = self.seed.wrapping_add(1);
                self.by_addr.insert(addr, self.links.len());
                self.links.push((addr, Emulator::new(params, self.seed)));
            }
        }
        Ok(())
    }

    /// A neighbour was removed: its held packets are dropped with it.
    pub fn remove_link(&mut self, addr: SocketAddr) {
        if self.by_addr.remove(&addr).is_none() {
            return;
        }
        self.links.retain(|(a, _)| *a != addr);
        self.by_addr = self
            .links
            .iter()
            .enumerate()
            .map(|(i, (a, _))| (*a, i))
            .collect();
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A datagram from `from`: hand it to the node now (`Pass`), or later, or never.
    pub fn admit(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Verdict {
        match self.by_addr.get(&from).map(|&i| &mut self.links[i].1) {
            Some(e) if !e.params().is_identity() || e.held() > 0 => e.admit(now, data),
            _ => Verdict::Pass,
        }
    }

    /// When the next held datagram is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.links.iter().filter_map(|(_, e)| e.next_due()).min()
    }

    /// A held datagram whose time has come, with its sender.
    pub fn pop_due(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        self.links
            .iter_mut()
            .find_map(|(addr, e)| e.pop_due(now).map(|p| (*addr, p)))
    }

    /// The parameters of the link from `addr` (None: not emulated).
    pub fn params(&self, addr: SocketAddr) -> Option<LinkParams> {
        self.by_addr.get(&addr).map(|&i| *self.links[i].1.params())
    }

    pub fn status(&self, addr: SocketAddr) -> Option<EmulationStatus> {
        let &i = self.by_addr.get(&addr)?;
        let e = &self.links[i].1;
        Some(EmulationStatus {
            params: e.params().into(),
            counters: e.counters,
        })
    }

    /// `weft link set|cut|heal`: `peer` is a node id or a neighbour address.
    pub fn command(
        &mut self,
        node: &mut Node,
        now: Instant,
        peer: &str,
        action: &LinkAction,
    ) -> Result<(), String> {
        if !self.enabled {
            return Err("link emulation is disabled: start weftd with --emulation".into());
        }
        let addr = find_neighbor(node, peer).ok_or_else(|| format!("no neighbour `{peer}`"))?;
        match action {
            LinkAction::Cut => {
                info!(peer, "link cut");
                node.set_link_cut(now, addr, true);
            }
            LinkAction::Heal => {
                info!(peer, "link healed");
                node.set_link_cut(now, addr, false);
            }
            LinkAction::Set(spec) => {
                let i = self
                    .by_addr
                    .get(&addr)
                    .copied()
                    .ok_or_else(|| format!("no neighbour `{peer}`"))?;
                let e = &mut self.links[i].1;
                let params = e.params().apply_spec(spec)?;
                e.set_params(params);
                info!(peer, params = %params, "link emulation set");
            }
        }
        Ok(())
    }
}

/// The neighbour `peer` names: its address, its node id, or the IP of its address.
fn find_neighbor(node: &Node, peer: &str) -> Option<SocketAddr> {
    if let Ok(addr) = peer.parse::<SocketAddr>() {
        return node.neighbors().find(|(a, _)| *a == addr).map(|(a, _)| a);
    }
    let ip: Ipv4Addr = peer.parse().ok()?;
    let id = NodeId::from(ip);
    node.neighbors()
        .find(|(_, n)| *n == Some(id))
        .or_else(|| node.neighbors().find(|(a, _)| a.ip() == IpAddr::V4(ip)))
        .map(|(a, _)| a)
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LinkParams {
    /// Long-run fraction of packets lost, 0..1.
    pub loss: f64,
    /// Probability that a loss follows a loss (Gilbert–Elliott, Spines' "burst"); 0 = Bernoulli.
    pub burst: f64,
    #[serde(with = "duration_us")]
    pub delay: Duration,
    /// Uniform ±jitter, clamped so packets stay in order.
    #[serde(with = "duration_us")]
    pub jitter: Duration,
    /// Bits per second; 0 = unlimited.
    pub rate_bps: u64,
    /// Drop-tail queue of the rate limiter in bytes; 0 = 50 ms at the rate (at least 64 KiB).
    pub queue_bytes: u64,
}

mod duration_us {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}

/// As `weft link set` takes it: `loss=1% burst=30% delay=10ms jitter=1ms rate=50000000bit`.
impl std::fmt::Display for LinkParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loss={}% burst={}% delay={:?} jitter={:?} rate={}bit queue={}b",
            self.loss * 100.0,
            self.burst * 100.0,
            self.delay,
            self.jitter,
            self.rate_bps,
            self.queue_bytes
        )
    }
}

impl LinkParams {
    pub fn is_identity(&self) -> bool {
        self.loss == 0.0 && self.delay.is_zero() && self.jitter.is_zero() && self.rate_bps == 0
    }

    /// Parses `loss=2% burst=30% delay=20ms jitter=2ms rate=50mbit queue=64kb` (space or
    /// comma separated) on top of `self`. The error names the field and the problem.
    pub fn apply_spec(mut self, spec: &str) -> Result<LinkParams, String> {
        for item in spec
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
        {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("link parameter `{item}`: expected key=value"))?;
            let bad = |what: &str| format!("link parameter `{key}`: {what} (got `{value}`)");
            match key {
                "loss" => self.loss = parse_fraction(value).ok_or_else(|| bad("expected a percentage like 2%"))?,
                "burst" => self.burst = parse_fraction(value).ok_or_else(|| bad("expected a percentage like 30%"))?,
                "delay" => self.delay = parse_duration(value).ok_or_else(|| bad("expected a duration like 20ms"))?,
                "jitter" => self.jitter = parse_duration(value).ok_or_else(|| bad("expected a duration like 2ms"))?,
                "rate" => self.rate_bps = parse_rate(value).ok_or_else(|| bad("expected a rate like 50mbit"))?,
                "queue" => self.queue_bytes = parse_bytes(value).ok_or_else(|| bad("expected a size like 64kb"))?,
                _ => {
                    return Err(format!(
                        "link parameter `{key}`: unknown (expected loss, burst, delay, jitter, rate or queue)"
                    ))
                }
            }
        }
        if self.loss >= 1.0 {
            return Err("link parameter `loss`: must be below 100%".into());
        }
        if self.burst >= 1.0 {
            return Err("link parameter `burst`: must be below 100%".into());
        }
        if self.jitter > self.delay {
            return Err("link parameter `jitter`: must not exceed `delay`".into());
        }
        Ok(self)
    }

    fn queue_limit(&self) -> u64 {
        if self.queue_bytes > 0 {
            self.queue_bytes
        } else {
            (self.rate_bps / 8 / 20).max(64 * 1024)
        }
    }

    /// The same link in the shared model's terms (Spines' loss and burst become its
    /// Gilbert-Elliott chain; jitter keeps order).
    pub fn model(&self) -> model::LinkParams {
        model::LinkParams {
            delay: self.delay,
            jitter: self.jitter,
            reorder: false,
            loss: LossModel::from_loss_and_burst(self.loss, self.burst),
            duplicate: 0.0,
            rate_bps: self.rate_bps,
            queue: QueueLimit::Bytes(self.queue_limit()),
        }
    }
}

/// `2%`, `0.5%` or a bare fraction `0.02`.
pub fn parse_fraction(s: &str) -> Option<f64> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().ok()? / 100.0,
        None => s.trim().parse::<f64>().ok()?,
    };
    (v.is_finite() && (0.0..=1.0).contains(&v)).then_some(v)
}

/// `20ms`, `500us`, `1.5s`, `100ns`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "ns" => v / 1e9,
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        _ => return None,
    };
    (secs.is_finite() && (0.0..3600.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// `50mbit`, `1gbit`, `800kbit`, `9600bit` (also `bps` spellings).
pub fn parse_rate(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let mult = match unit {
        "" | "bit" | "bps" => 1.0,
        "kbit" | "kbps" => 1e3,
        "mbit" | "mbps" => 1e6,
        "gbit" | "gbps" => 1e9,
        _ => return None,
    };
    let r = v * mult;
    (r.is_finite() && (0.0..1e12).contains(&r)).then_some(r as u64)
}

/// `64kb`, `1mb`, `1500b`, `1500`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "b" => 1,
        "kb" | "k" | "kib" => 1024,
        "mb" | "m" | "mib" => 1024 * 1024,
        _ => return None,
    };
    v.checked_mul(mult)
}

/// Receive-side emulation of one link in `weft status --json`: what is set and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct EmulationStatus {
    pub params: EmulationParams,
    pub counters: EmulationCounters,
}

/// [`LinkParams`] with units in the names.
#[derive(Debug, Clone, Serialize)]
pub struct EmulationParams {
    /// Long-run fraction of packets lost, 0..1.
    pub loss_ratio: f64,
    /// Probability that a loss follows a loss, 0..1 (0: independent losses).
    pub burst_ratio: f64,
    pub delay_us: u64,
    pub jitter_us: u64,
    /// 0: unlimited.
    pub rate_bps: u64,
    /// 0: 50 ms at the rate (at least 64 KiB).
    pub queue_bytes: u64,
}

impl From<&LinkParams> for EmulationParams {
    fn from(p: &LinkParams) -> Self {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        EmulationParams {
            loss_ratio: p.loss,
            burst_ratio: p.burst,
            delay_us: us(p.delay),
            jitter_us: us(p.jitter),
            rate_bps: p.rate_bps,
            queue_bytes: p.queue_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EmulationCounters {
    pub received: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub delivered: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the packet to the node now.
    Pass,
    /// Held; `pop_due` releases it later.
    Held,
    Dropped,
}

/// One neighbour's receive-side emulator: the shared link model decides each packet's fate,
/// and the packets it delays wait here until they are due.
#[derive(Debug)]
pub struct Emulator {
    params: LinkParams,
    model: DirectionModel,
    held: VecDeque<(Instant, Vec<u8>)>,
    pub counters: EmulationCounters,
}

impl Emulator {
    pub fn new(params: LinkParams, seed: u64) -> Self {
        Emulator {
            model: DirectionModel::new(params.model(), seed),
            params,
            held: VecDeque::new(),
            counters: EmulationCounters::default(),
        }
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// New parameters apply to packets arriving from now on; held packets keep their times.
    pub fn set_params(&mut self, params: LinkParams) {
        self.params = params;
        self.model.set_params(params.model());
    }

    pub fn admit(&mut self, now: Instant, packet: &[u8]) -> Verdict {
        self.counters.received += 1;
        let due = match self.model.on_packet(now, packet.len()) {
            model::Verdict::Deliver { due, .. } => due,
            model::Verdict::Drop(model::DropReason::Queue) => {
                self.counters.dropped_queue += 1;
                return Verdict::Dropped;
            }
            model::Verdict::Drop(model::DropReason::Loss | model::DropReason::Down) => {
                self.counters.dropped_loss += 1;
                return Verdict::Dropped;
            }
        };
        if due <= now && self.held.is_empty() {
            self.counters.delivered += 1;
            return Verdict::Pass;
        }
        self.held.push_back((due, packet.to_vec()));
        Verdict::Held
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|(t, _)| *t)
    }

    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.held.front()?.0 <= now {
            self.counters.delivered += 1;
            return self.held.pop_front().map(|(_, p)| p);
        }
        None
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_names_bad_fields() {
        let p = LinkParams::default()
            .apply_spec("loss=2% delay=20ms jitter=2ms rate=50mbit")
            .unwrap();
        assert_eq!(p.loss, 0.02);
        assert_eq!(p.delay, Duration::from_millis(20));
        assert_eq!(p.jitter, Duration::from_millis(2));
        assert_eq!(p.rate_bps, 50_000_000);
        let p = p.apply_spec("loss=0,burst=30%,queue=64kb").unwrap();
        assert_eq!(p.loss, 0.0);
        assert_eq!(
            p.delay,
            Duration::from_millis(20),
            "unmentioned fields keep their value"
        );
        assert_eq!(p.queue_bytes, 65536);
        let e = LinkParams::default().apply_spec("delay=fast").unwrap_err();
        assert!(e.contains("`delay`"), "{e}");
        let e = LinkParams::default().apply_spec("colour=red").unwrap_err();
        assert!(e.contains("`colour`"), "{e}");
        assert!(LinkParams::default().apply_spec("loss=100%").is_err());
        assert!(LinkParams::default()
            .apply_spec("delay=1ms jitter=2ms")
            .is_err());
    }

    fn run(params: LinkParams, n: usize, gap: Duration) -> (Emulator, Vec<(Instant, Instant)>) {
        let mut e = Emulator::new(params, 7);
        let mut out = Vec::new();
        let mut now = Instant::ZERO;
        let mut sent_at = VecDeque::new();
        for i in 0..n {
            now += gap;
            let pkt = (i as u64).to_be_bytes();
            match e.admit(now, &pkt) {
                Verdict::Pass => out.push((now, now)),
                Verdict::Held => sent_at.push_back((i as u64, now)),
                Verdict::Dropped => {}
            }
            while let Some(p) = e.pop_due(now) {
                let id = u64::from_be_bytes(p[..8].try_into().unwrap());
                let (sid, t) = sent_at.pop_front().unwrap();
                assert_eq!(sid, id, "FIFO order kept");
                out.push((t, now));
            }
        }
        (e, out)
    }

    #[test]
    fn bernoulli_loss_rate_is_close() {
        let p = LinkParams {
            loss: 0.05,
            ..Default::default()
        };
        let (e, out) = run(p, 20_000, Duration::from_millis(1));
        let lost = e.counters.dropped_loss as f64 / 20_000.0;
        // 20 000 trials at p = 5 %: σ ≈ 0.15 %, so ±0.8 % is > 5σ.
        assert!((lost - 0.05).abs() < 0.008, "lost {lost}");
        assert_eq!(out.len() as u64, e.counters.delivered);
    }

    #[test]
    fn gilbert_bursts_average_to_the_loss_rate() {
        let p = LinkParams {
            loss: 0.02,
            burst: 0.5,
            ..Default::default()
        };
        let (e, _) = run(p, 100_000, Duration::from_micros(100));
        let lost = e.counters.dropped_loss as f64 / 100_000.0;
        assert!((lost - 0.02).abs() < 0.006, "lost {lost}");
    }

    #[test]
    fn delay_and_jitter_hold_packets_in_order() {
        let p = LinkParams {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            ..Default::default()
        };
        let (_, out) = run(p, 2_000, Duration::from_micros(500));
        assert!(out.len() > 1900);
        for (sent, got) in &out {
            let d = *got - *sent;
            assert!(d >= Duration::from_millis(8), "{d:?}");
        }
    }

    #[test]
    fn rate_limit_queues_then_drops() {
        // 1 Mbit/s, 1000-byte packets every 1 ms = 8 Mbit/s offered: most must drop.
        let p = LinkParams {
            rate_bps: 1_000_000,
            queue_bytes: 10_000,
            ..Default::default()
        };
        let mut e = Emulator::new(p, 1);
        let mut now = Instant::ZERO;
        let pkt = vec![0u8; 1000];
        let mut delivered = 0;
        for _ in 0..1000 {
            now += Duration::from_millis(1);
            if e.admit(now, &pkt) == Verdict::Pass {
                delivered += 1;
            }
            while e.pop_due(now).is_some() {
                delivered += 1;
            }
        }
        // One second at 1 Mbit/s carries 125 packets (+ the queue still held).
        assert!((110..=140).contains(&delivered), "delivered {delivered}");
        assert!(e.counters.dropped_queue > 800);
    }
}
