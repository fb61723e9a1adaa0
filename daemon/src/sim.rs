//! A deterministic network simulator for the sans-I/O core: many nodes, a virtual clock, links
//! with delay, jitter (and so reordering), loss, duplication, a rate limit with a drop-tail
//! queue, and cuts (each direction one `weft_linkmodel::DirectionModel`), node crashes and
//! restarts. One seed reproduces a whole run; tests print it when a check fails.

use crate::overlay::{NeighborConfig, Node, NodeConfig, NodeEvent};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use weft_core::{Instant, NodeId};
use weft_linkmodel::{DirectionModel, LinkParams, LossModel, QueueLimit, Verdict};

pub const PORT: u16 = 7470;

/// One simulated link's parameters (both directions get the same).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimLink {
    pub delay: Duration,
    /// Extra delay in `[0, jitter)`, independent per packet: packets overtake each other.
    pub jitter: Duration,
    pub loss: f64,
    pub duplicate: f64,
    pub up: bool,
    /// Bits per second; 0 for unlimited.
    pub rate_bps: u64,
    /// The drop-tail queue in front of the rate limit, bytes; 0 for 50 ms at the rate.
    pub queue_bytes: u64,
}

impl SimLink {
    /// The cost the latency metric gives this link once its RTT is measured (1 ms per hop plus
    /// the one-way delay, in µs), written out independently of the node so tests can check
    /// the routes against it.
    pub fn latency_cost(&self) -> u64 {
        1_000 + self.delay.as_micros() as u64
    }

    pub fn with_delay(delay: Duration) -> Self {
        SimLink {
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            up: true,
            rate_bps: 0,
            queue_bytes: 0,
        }
    }

    /// The link in the shared model's terms.
    pub fn params(&self) -> LinkParams {
        LinkParams {
            delay: self.delay,
            jitter: self.jitter,
            reorder: true,
            loss: if self.loss > 0.0 {
                LossModel::Bernoulli { p: self.loss }
            } else {
                LossModel::None
            },
            duplicate: self.duplicate,
            rate_bps: self.rate_bps,
            queue: if self.queue_bytes > 0 {
                QueueLimit::Bytes(self.queue_bytes)
            } else {
                QueueLimit::Time(Duration::from_millis(50))
            },
        }
    }
}

struct SimNode {
    cfg: NodeConfig,
    addr: SocketAddr,
    node: Option<Node>,
    runs: u32,
    /// Bumped whenever the node's deadline may have changed; stale heap entries are skipped.
    timer_version: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    to: usize,
    from: SocketAddr,
    payload: Vec<u8>,
}

/// An application event a node produced, with when and where.
#[derive(Debug, Clone)]
pub struct Observed {
    pub at: Instant,
    pub node: usize,
    pub event: NodeEvent,
}

pub struct Sim {
    pub now: Instant,
    pub seed: u64,
    rng: ChaCha8Rng,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    links: BTreeMap<(usize, usize), SimLink>,
    /// Each direction's model, keyed like `links`.
    models: BTreeMap<(usize, usize), DirectionModel>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    seq: u64,
    pub observed: Vec<Observed>,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    /// When set, every datagram sent is also recorded here as (from, to, payload).
    pub tap: Option<Vec<(SocketAddr, SocketAddr, Vec<u8>)>>,
    scratch: Vec<u8>,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        Sim {
            now: Instant::from_nanos(1_000_000_000),
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            links: BTreeMap::new(),
            models: BTreeMap::new(),
            in_flight: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            observed: Vec::new(),
            packets_sent: 0,
            bytes_sent: 0,
            tap: None,
            scratch: Vec::with_capacity(64 * 1024),
        }
    }

    /// Node `i` lives at 10.(i/250).(i%250+1).1 — stable, readable addresses.
    pub fn addr_of(i: usize) -> SocketAddr {
        let ip = Ipv4Addr::new(10, (i / 250) as u8, (i % 250) as u8 + 1, 1);
        SocketAddr::new(ip.into(), PORT)
    }

    pub fn id_of(i: usize) -> NodeId {
        match Self::addr_of(i).ip() {
            std::net::IpAddr::V4(v4) => NodeId::from(v4),
            std::net::IpAddr::V6(_) => NodeId(0),
        }
    }

    /// Adds a node; `tweak` adjusts its configuration (neighbours are added by `connect`).
    pub fn add_node(&mut self, tweak: impl FnOnce(&mut NodeConfig)) -> usize {
        let i = self.nodes.len();
        let addr = Self::addr_of(i);
        let mut cfg = NodeConfig::new(Self::id_of(i));
        tweak(&mut cfg);
        self.by_addr.insert(addr, i);
        self.nodes.push(SimNode {
            cfg,
            addr,
            node: None,
            runs: 0,
            timer_version: 0,
        });
        i
    }

    /// A bidirectional link (same parameters both ways), configured on both nodes. Call
    /// before `start`.
    pub fn connect(&mut self, a: usize, b: usize, link: SimLink) {
        let (aa, ba) = (self.nodes[a].addr, self.nodes[b].addr);
        self.nodes[a]
            .cfg
            .neighbors
            .push(NeighborConfig { addr: ba, id: None });
        self.nodes[b]
            .cfg
            .neighbors
            .push(NeighborConfig { addr: aa, id: None });
        self.cable(a, b, link);
    }

    /// A path that carries packets between `a` and `b` without either being configured as
    /// the other's neighbour (they may be linked at run time with `Node::add_neighbor`).
    pub fn cable(&mut self, a: usize, b: usize, link: SimLink) {
        for key in [(a, b), (b, a)] {
            self.links.insert(key, link);
            let mut model = DirectionModel::new(link.params(), self.direction_seed(key));
            model.set_up(link.up);
            self.models.insert(key, model);
        }
    }

    /// Every direction draws its own random stream from the run's seed.
    fn direction_seed(&self, (a, b): (usize, usize)) -> u64 {
        let mut x = self.seed ^ ((a as u64) << 32 | b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x
    }

    pub fn start(&mut self) {
        for i in 0..self.nodes.len() {
            self.boot(i);
        }
    }

    fn boot(&mut self, i: usize) {
        let incarnation = self.rng.gen::<u32>() | 1;
        let seed = self.rng.gen::<u64>();
        let sn = &mut self.nodes[i];
        sn.runs += 1;
        // Adverts of a later run must outrank the previous run's, as wall-clock seeding does.
        let first_seq = (sn.runs as u64) << 32;
        sn.node = Some(Node::new(
            sn.cfg.clone(),
            self.now,
            incarnation,
            first_seq,
            seed,
        ));
        self.after_touch(i);
    }

    pub fn crash(&mut self, i: usize) {
        self.nodes[i].node = None;
        self.nodes[i].timer_version += 1;
    }

    pub fn restart(&mut self, i: usize) {
        self.boot(i);
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.nodes[i].node.is_some()
    }

    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes[i].node.as_ref()
    }

    /// Runs `f` on a live node, then collects what it produced.
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut Node, Instant) -> R) -> Option<R> {
        let now = self.now;
        let r = f(self.nodes[i].node.as_mut()?, now);
        self.after_touch(i);
        Some(r)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn link(&self, a: usize, b: usize) -> Option<SimLink> {
        self.links.get(&(a, b)).copied()
    }

    pub fn links(&self) -> impl Iterator<Item = (usize, usize, SimLink)> + '_ {
        self.links.iter().map(|(&(a, b), l)| (a, b, *l))
    }

    /// Changes both directions of a link (packets already on it keep their arrival times).
    pub fn set_link(&mut self, a: usize, b: usize, f: impl Fn(&mut SimLink)) {
        for key in [(a, b), (b, a)] {
            if let Some(l) = self.links.get_mut(&key) {
                f(l);
                if let Some(m) = self.models.get_mut(&key) {
                    m.set_params(l.params());
                    m.set_up(l.up);
                }
            }
        }
    }

    fn after_touch(&mut self, i: usize) {
        let from = self.nodes[i].addr;
        let Some(node) = self.nodes[i].node.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        // One buffer, reused as the I/O layer reuses its transmit queue.
        let buf = &mut self.scratch;
        while let Some(t) = node.poll_transmit(self.now, buf) {
            out.push((t.dst, buf.clone()));
            buf.clear();
        }
        while let Some(e) = node.poll_event() {
            self.observed.push(Observed {
                at: self.now,
                node: i,
                event: e,
            });
        }
        let deadline = node.poll_timeout();
        for (dst, payload) in out {
            self.transmit(i, from, dst, payload);
        }
        let sn = &mut self.nodes[i];
        sn.timer_version += 1;
        if let Some(d) = deadline {
            self.timers
                .push(Reverse((d.max(self.now), i, sn.timer_version)));
        }
    }

    fn transmit(&mut self, from_idx: usize, from: SocketAddr, dst: SocketAddr, payload: Vec<u8>) {
        self.packets_sent += 1;
        self.bytes_sent += payload.len() as u64;
        if let Some(tap) = self.tap.as_mut() {
            tap.push((from, dst, payload.clone()));
        }
        let Some(&to) = self.by_addr.get(&dst) else {
            return;
        };
        let Some(model) = self.models.get_mut(&(from_idx, to)) else {
            return;
        };
        let Verdict::Deliver { due, copy, .. } = model.on_packet(self.now, payload.len()) else {
            return;
        };
        if let Some(at) = copy {
            self.seq += 1;
            self.in_flight.push(Reverse(InFlight {
                at,
                seq: self.seq,
                to,
                from,
                payload: payload.clone(),
            }));
        }
        self.seq += 1;
        self.in_flight.push(Reverse(InFlight {
            at: due,
            seq: self.seq,
            to,
            from,
            payload,
        }));
    }

    /// Processes the next event; false when there is none before `until`.
    fn step(&mut self, until: Instant) -> bool {
        // Drop stale timer entries.
        while let Some(Reverse((_, i, v))) = self.timers.peek() {
            if self.nodes[*i].timer_version != *v || self.nodes[*i].node.is_none() {
                self.timers.pop();
            } else {
                break;
            }
        }
        let next_packet = self.in_flight.peek().map(|Reverse(p)| p.at);
        let next_timer = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let next = match (next_packet, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return false,
            },
        };
        if next > until {
            return false;
        }
        self.now = self.now.max(next);
        if next_packet == Some(next) {
            let Some(Reverse(p)) = self.in_flight.pop() else {
                return false;
            };
            if let Some(node) = self.nodes[p.to].node.as_mut() {
                node.handle_datagram(self.now, p.from, &p.payload);
                self.after_touch(p.to);
            }
        } else {
            let Some(Reverse((_, i, _))) = self.timers.pop() else {
                return false;
            };
            if let Some(node) = self.nodes[i].node.as_mut() {
                node.handle_timeout(self.now);
                self.after_touch(i);
            }
        }
        true
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.step(until) {}
        self.now = until;
    }

    /// Runs until `done` holds (checked after every event) or `limit` passes; returns whether
    /// it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let until = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if !self.step(until) {
                self.now = until;
                return done(self);
            }
        }
    }
}

/// The overlay as it really is — live links between live nodes, with their latency costs — for
/// checking the nodes' routes against the true shortest paths.
pub struct LiveGraph {
    /// Per node, its live neighbours and the cost of the link to each.
    pub adj: Vec<Vec<(usize, u64)>>,
}

impl LiveGraph {
    /// True distances from `src` (`u64::MAX` where unreachable) and the hop count of the
    /// shortest path found to each.
    pub fn shortest_from(&self, src: usize) -> (Vec<u64>, Vec<u32>) {
        let mut dist = vec![u64::MAX; self.adj.len()];
        let mut hops = vec![0u32; self.adj.len()];
        let mut heap = BinaryHeap::new();
        dist[src] = 0;
        heap.push(Reverse((0u64, src)));
        while let Some(Reverse((d, u))) = heap.pop() {
            if d > dist[u] {
                continue;
            }
            for &(v, c) in &self.adj[u] {
                if d + c < dist[v] {
                    dist[v] = d + c;
                    hops[v] = hops[u] + 1;
                    heap.push(Reverse((d + c, v)));
                }
            }
        }
        (dist, hops)
    }
}

impl Sim {
    pub fn live_graph(&self) -> LiveGraph {
        let mut adj = vec![Vec::new(); self.len()];
        for (a, b, l) in self.links() {
            if l.up && self.is_alive(a) && self.is_alive(b) {
                adj[a].push((b, l.latency_cost()));
            }
        }
        LiveGraph { adj }
    }
}
