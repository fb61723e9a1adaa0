//! `Node`: one overlay daemon's protocol state. Links (hellos, liveness, incarnations, the
//! hop-by-hop reliable ARQ), reliable flooding of link state (`flooding.rs`), shortest-path
//! routing and forwarding (`forwarding.rs`), datagrams, and end-to-end sessions
//! (`sessions.rs`). Receive-side link emulation sits in front of all of it.

use crate::overlay::emulation::{Emulator, LinkParams, Verdict};
use crate::overlay::forwarding::{ArrivalBursts, Origin};
use crate::overlay::fragment::{Reassembler, MAX_DATAGRAM};
use crate::overlay::neighbor::{LinkState, Metric, Neighbor};
use crate::overlay::routing::{LinkStateDb, ShortestPathTree};
use crate::overlay::sessions::{SessionId, SessionTable};
use crate::overlay::status::Counters;
use crate::overlay::wire::{self, Hello, RoutedHeader, HELLO_PROBE};
use ahash::AHashMap as HashMap;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;
use tracing::{debug, info};
use weft_core::{Endpoint, Header, Instant, NodeId, PacketKind, Writer, HEADER_LEN};
use weft_transport::arq::{self, ArqConfig, ArqLink};
use weft_transport::session::{RecoveryMode, SessionConfig, SessionEvent};

#[derive(Debug, Clone)]
pub struct NeighborConfig {
    /// Where the neighbour's daemon listens.
    pub addr: SocketAddr,
    /// Its node id, if it differs from the address (learned from its packets otherwise).
    pub id: Option<NodeId>,
    /// Emulation applied to packets received from it.
    pub link: LinkParams,
}

/// Bytes kept free at the end of every datagram for link security's trailer (counter + tag).
pub const AUTH_RESERVE: usize = weft_secure::TRAILER_LEN;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub neighbors: Vec<NeighborConfig>,
    pub hello_interval: Duration,
    /// Silence after which a neighbour is declared dead.
    pub dead_interval: Duration,
    pub metric: Metric,
    /// Accept run-time link emulation commands.
    pub emulation: bool,
    /// Largest UDP payload sent between daemons.
    pub mtu: usize,
    pub default_ttl: u8,
    /// Who repairs loss for sessions: the links (hop by hop) or only the ends.
    pub recovery: RecoveryMode,
    /// Template for every link's ARQ (its `mss` is derived from `mtu`).
    pub arq: ArqConfig,
    /// Template for every session (its `mss` and `mode` are derived).
    pub session: SessionConfig,
    /// Signing and checking of flooded state (None: an insecure overlay).
    pub trust: Option<crate::overlay::trust::TrustConfig>,
}

impl NodeConfig {
    pub fn new(id: NodeId) -> Self {
        NodeConfig {
            id,
            neighbors: Vec::new(),
            hello_interval: Duration::from_millis(100),
            dead_interval: Duration::from_millis(350),
            metric: Metric::Latency,
            emulation: false,
            mtu: 1472,
            default_ttl: 64,
            recovery: RecoveryMode::HopByHop,
            arq: ArqConfig::default(),
            session: SessionConfig::default(),
            trust: None,
        }
    }

    /// Largest routed packet (routing header + payload) a link carries.
    pub fn routed_mtu(&self) -> usize {
        self.mtu
            .saturating_sub(HEADER_LEN + AUTH_RESERVE + arq::DATA_OVERHEAD)
            .max(256)
    }
}

/// A datagram for the I/O layer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A datagram for a local application.
    Datagram {
        src: Endpoint,
        dst: Endpoint,
        payload: Vec<u8>,
    },
    /// The set of reachable nodes or the routes changed.
    RoutesChanged,
    /// A listener on `port` accepted a new session.
    Incoming {
        id: SessionId,
        port: u16,
        remote: Endpoint,
    },
    /// Something happened to a session.
    Session { id: SessionId, event: SessionEvent },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SendError {
    #[error("datagram larger than {MAX_DATAGRAM} bytes")]
    TooLarge,
    #[error("no route to the destination node")]
    NoRoute,
}

const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Adverts of nodes unreachable this long are forgotten.
pub(super) const FORGET_UNREACHABLE: Duration = Duration::from_secs(60);

pub struct Node {
    pub(super) cfg: NodeConfig,
    pub(super) incarnation: u32,
    pub(super) neighbors: Vec<Neighbor>,
    pub(super) by_addr: HashMap<SocketAddr, usize>,
    pub(super) lsdb: LinkStateDb,
    pub(super) routes_generation: Option<u64>,
    pub(super) tree: ShortestPathTree,
    pub(super) first_hops: BTreeMap<NodeId, NodeId>,
    pub(super) unreachable_since: HashMap<NodeId, Instant>,
    pub(super) reassembler: Reassembler,
    pub(super) arrivals: ArrivalBursts,
    pub(super) next_datagram_id: u32,
    pub(super) outbox: VecDeque<Transmit>,
    pub(super) events: VecDeque<NodeEvent>,
    pub(super) sessions: SessionTable,
    /// Where `poll_transmit` resumes its round over the links' ARQs.
    pub(super) next_link: usize,
    pub(super) next_housekeeping: Instant,
    pub(super) started: Instant,
    pub(super) counters: Counters,
    pub(super) mc: weft_multicast::Multicast,
    /// Shortest-path trees per source (for multicast), valid for one link-state generation.
    pub(super) spt_cache: std::cell::RefCell<(u64, HashMap<NodeId, ShortestPathTree>)>,
    pub(super) mc_order: HashMap<(Endpoint, NodeId), crate::overlay::multicast::Reorder>,
    /// Datagram ids per group: consecutive, so reliable groups can restore order.
    /// Next datagram id per (local source endpoint, group): receivers order per source
    /// endpoint, so each needs its own gap-free sequence.
    pub(super) mc_next_id: HashMap<(Endpoint, NodeId), u32>,
    pub(super) mc_counters: crate::overlay::multicast::MulticastCounters,
    pub(super) trust: crate::overlay::trust::Trust,
}

impl Node {
    /// `incarnation` must differ between runs (random); `first_seq` should grow across runs
    /// (e.g. derived from wall-clock time) so this run's adverts supersede the last run's.
    pub fn new(
        mut cfg: NodeConfig,
        now: Instant,
        incarnation: u32,
        first_seq: u64,
        seed: u64,
    ) -> Self {
        cfg.arq.mss = cfg.routed_mtu();
        cfg.session.mss = cfg.routed_mtu() - RoutedHeader::LEN;
        cfg.session.mode = cfg.recovery;
        cfg.session.headroom = RoutedHeader::LEN;
        if cfg.recovery == RecoveryMode::HopByHop {
            // Over repaired links the session's window reacts to CE marks from relays, not to
            // loss; starting it at ten segments would throttle a stream whose rate needs more
            // than ten segments per end-to-end round trip (links and relays pace the real rate).
            cfg.session.initial_window_packets = cfg.session.initial_window_packets.max(64);
        }
        let mut neighbors = Vec::new();
        let mut by_addr = HashMap::new();
        for (i, n) in cfg.neighbors.iter().enumerate() {
            let emulator = cfg.emulation.then(|| {
                Emulator::new(
                    n.link,
                    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        .wrapping_add(i as u64),
                )
            });
            // Every neighbour's hello falls due on the same tick: one wake-up sends them all.
            by_addr.insert(n.addr, neighbors.len());
            neighbors.push(Neighbor::new(n.addr, n.id, now, emulator));
        }
        let mut node = Node {
            lsdb: LinkStateDb::new(cfg.id, first_seq),
            incarnation: incarnation.max(1),
            neighbors,
            by_addr,
            routes_generation: None,
            tree: ShortestPathTree::default(),
            first_hops: BTreeMap::new(),
            unreachable_since: HashMap::new(),
            reassembler: Reassembler::new(Duration::from_secs(5), 32 << 20),
            arrivals: ArrivalBursts::default(),
            next_datagram_id: (seed as u32) | 1,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            sessions: SessionTable::new(seed),
            next_link: 0,
            next_housekeeping: now + HOUSEKEEPING,
            started: now,
            counters: Counters::default(),
            mc: weft_multicast::Multicast::new(cfg.id, first_seq),
            spt_cache: Default::default(),
            mc_order: HashMap::new(),
            mc_next_id: HashMap::new(),
            mc_counters: Default::default(),
            trust: crate::overlay::trust::Trust::new(cfg.id, cfg.trust.clone()),
            cfg,
        };
        node.originate(false);
        node.recompute_routes();
        node
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// A neighbour's link proved `key` for `node`: that key alone may sign its state.
    pub fn bind_neighbor_key(&mut self, node: NodeId, key: weft_secure::PublicKey) {
        self.trust.bind_neighbor(node, key);
    }

    // ----- inputs -------------------------------------------------------------------------

    /// A datagram arrived on the overlay socket.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some(&idx) = self.by_addr.get(&from) else {
            self.counters.unknown_sender += 1;
            return;
        };
        let nbr = &mut self.neighbors[idx];
        if nbr.cut {
            self.counters.dropped_cut += 1;
            return;
        }
        let verdict = match nbr.emulator.as_mut() {
            Some(e) if !e.params().is_identity() || e.held() > 0 => e.admit(now, data),
            _ => Verdict::Pass,
        };
        if verdict == Verdict::Pass {
            self.process_packet(now, idx, data);
        }
        self.after_input(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for idx in 0..self.neighbors.len() {
            // Emulated packets whose time has come.
            while let Some(pkt) = self.neighbors[idx]
                .emulator
                .as_mut()
                .and_then(|e| e.pop_due(now))
            {
                if !self.neighbors[idx].cut {
                    self.process_packet(now, idx, &pkt);
                }
            }
            let nbr = &mut self.neighbors[idx];
            if nbr.state != LinkState::Down
                && nbr
                    .last_heard
                    .is_some_and(|t| now - t >= self.cfg.dead_interval)
            {
                info!(peer = %nbr.addr, node = ?nbr.id, "neighbour dead: silent for {:?}", now - nbr.last_heard.unwrap_or(now));
                self.counters.neighbors_declared_dead += 1;
                self.set_link_state(now, idx, LinkState::Down);
            }
            let nbr = &mut self.neighbors[idx];
            if let Some(a) = nbr.arq.as_mut() {
                if a.poll_timeout().is_some_and(|t| t <= now) {
                    a.handle_timeout(now);
                }
            }
            if let Some(probe_at) = self.probe_due(idx) {
                if now >= probe_at {
                    self.neighbors[idx].next_probe = Some(now + self.cfg.hello_interval / 4);
                    self.send_hello(now, idx, true);
                }
            }
            let nbr = &mut self.neighbors[idx];
            if now >= nbr.next_hello {
                nbr.next_hello = if now - nbr.next_hello > self.cfg.hello_interval {
                    now + self.cfg.hello_interval
                } else {
                    nbr.next_hello + self.cfg.hello_interval
                };
                self.send_hello(now, idx, false);
            }
        }
        self.session_timeouts(now);
        self.mc_order_timeouts(now);
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.reassembler.expire(now);
            self.forget_long_unreachable(now);
        }
        self.after_input(now);
    }

    /// The earliest time `handle_timeout` must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_housekeeping;
        for (i, n) in self.neighbors.iter().enumerate() {
            t = t.min(n.next_hello);
            if let Some(p) = self.probe_due(i) {
                t = t.min(p);
            }
            if n.state != LinkState::Down {
                if let Some(h) = n.last_heard {
                    t = t.min(h + self.cfg.dead_interval);
                }
            }
            if let Some(d) = n.emulator.as_ref().and_then(|e| e.next_due()) {
                t = t.min(d);
            }
            if let Some(d) = n.arq.as_ref().and_then(|a| a.poll_timeout()) {
                t = t.min(d);
            }
        }
        if let Some(d) = self.next_flood_due() {
            t = t.min(d);
        }
        if let Some(d) = self.reassembler.next_expiry() {
            t = t.min(d);
        }
        if let Some(d) = self.sessions.next_deadline() {
            t = t.min(d);
        }
        if let Some(d) = self.mc_next_deadline() {
            t = t.min(d);
        }
        Some(t)
    }

    /// The next datagram to send: control and best-effort traffic first, then the reliable
    /// links in turn (each within its congestion window and pacing), refilled from sessions.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(t) = self.outbox.pop_front() {
            return Some(t);
        }
        if let Some(t) = self.poll_links(now) {
            return Some(t);
        }
        if self.sessions.has_ready() {
            self.pump_sessions(now);
            if let Some(t) = self.outbox.pop_front() {
                return Some(t);
            }
            return self.poll_links(now);
        }
        None
    }

    /// One round over the links' ARQs, resuming where the last one stopped.
    fn poll_links(&mut self, now: Instant) -> Option<Transmit> {
        let n = self.neighbors.len();
        for k in 0..n {
            let idx = (self.next_link + k) % n;
            let nbr = &mut self.neighbors[idx];
            if nbr.cut {
                continue;
            }
            let Some(a) = nbr.arq.as_mut() else { continue };
            let mut buf = Vec::with_capacity(self.cfg.mtu);
            Header::new(PacketKind::ReliableData, self.cfg.id, self.incarnation)
                .encode(&mut Writer::new(&mut buf));
            if let Some(kind) = a.poll_transmit_into(now, &mut buf) {
                buf[3] = kind as u8;
                self.next_link = (idx + 1) % n;
                nbr.packets_out += 1;
                nbr.bytes_out += buf.len() as u64;
                let dst = nbr.addr;
                // Sending may have freed queue space for sessions fed by this link.
                self.wake_writable_flows(idx);
                return Some(Transmit { dst, payload: buf });
            }
        }
        None
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    // ----- local requests -----------------------------------------------------------------

    /// `weft link set|cut|heal`: `peer` is a node id or a neighbour address.
    pub fn link_command(
        &mut self,
        now: Instant,
        peer: &str,
        action: &weft_ipc::LinkAction,
    ) -> Result<(), String> {
        if !self.cfg.emulation {
            return Err("link emulation is disabled: start weftd with --emulation".into());
        }
        let idx = self
            .find_neighbor(peer)
            .ok_or_else(|| format!("no neighbour `{peer}`"))?;
        match action {
            weft_ipc::LinkAction::Cut => {
                info!(peer, "link cut");
                self.neighbors[idx].cut = true;
            }
            weft_ipc::LinkAction::Heal => {
                info!(peer, "link healed");
                self.neighbors[idx].cut = false;
            }
            weft_ipc::LinkAction::Set(spec) => {
                let nbr = &mut self.neighbors[idx];
                let current = nbr
                    .emulator
                    .as_ref()
                    .map(|e| *e.params())
                    .unwrap_or_default();
                let params = current.apply_spec(spec)?;
                if let Some(e) = nbr.emulator.as_mut() {
                    e.set_params(params);
                }
                info!(peer, ?params, "link emulation set");
            }
        }
        self.after_input(now);
        Ok(())
    }

    fn find_neighbor(&self, peer: &str) -> Option<usize> {
        if let Ok(addr) = peer.parse::<SocketAddr>() {
            return self.by_addr.get(&addr).copied();
        }
        let ip: std::net::Ipv4Addr = peer.parse().ok()?;
        let id = NodeId::from(ip);
        self.neighbors
            .iter()
            .position(|n| n.id == Some(id))
            .or_else(|| {
                self.neighbors
                    .iter()
                    .position(|n| n.addr.ip() == std::net::IpAddr::V4(ip))
            })
    }

    /// Every node in the link-state database (reachable or not), sorted.
    pub fn known_nodes(&self) -> Vec<NodeId> {
        self.lsdb.adverts().map(|a| a.origin).collect()
    }

    pub fn is_reachable(&self, node: NodeId) -> bool {
        node == self.cfg.id || self.first_hops.contains_key(&node)
    }

    /// Next hop and path cost toward every reachable node.
    pub fn routes(&self) -> impl Iterator<Item = (NodeId, NodeId, u64)> + '_ {
        self.first_hops
            .iter()
            .map(|(d, h)| (*d, *h, self.tree.dist(*d).unwrap_or(u64::MAX)))
    }

    // ----- links --------------------------------------------------------------------------

    fn process_packet(&mut self, now: Instant, idx: usize, data: &[u8]) {
        let (header, body) = match Header::decode(data) {
            Ok(x) => x,
            Err(e) => {
                self.counters.malformed += 1;
                debug!(peer = %self.neighbors[idx].addr, "malformed packet: {e}");
                return;
            }
        };
        if header.sender == self.cfg.id {
            self.counters.malformed += 1;
            return;
        }
        let nbr = &mut self.neighbors[idx];
        if nbr.configured_id.is_some_and(|id| id != header.sender) {
            self.counters.unknown_sender += 1;
            return;
        }
        let was_up = nbr.state == LinkState::Up;
        if nbr.observe_incarnation(header.sender, header.incarnation) {
            info!(peer = %nbr.addr, node = %header.sender, "neighbour restarted (new incarnation)");
            self.counters.neighbor_restarts += 1;
            if was_up {
                self.link_went_down(now, idx);
            }
            // Its fresh sequence numbers must not look like old duplicates.
            if let Some(a) = self.neighbors[idx].arq.as_mut() {
                a.reset(now);
            }
        }
        self.neighbors[idx].heard(now, data.len());
        match header.kind {
            PacketKind::Hello => match Hello::decode(body) {
                Ok(h) => {
                    self.on_hello(now, idx, &h);
                    if header.flags & HELLO_PROBE != 0 {
                        self.send_hello(now, idx, false);
                    }
                }
                Err(_) => self.counters.malformed += 1,
            },
            PacketKind::State => self.on_state(now, idx, body),
            PacketKind::StateAck => match wire::decode_acks(body) {
                Ok(ids) => {
                    let q = &mut self.neighbors[idx].flood;
                    for id in &ids {
                        q.ack(id);
                    }
                }
                Err(_) => self.counters.malformed += 1,
            },
            PacketKind::Data => {
                self.forward(now, Origin::Relayed(idx), body.to_vec());
            }
            PacketKind::ReliableData | PacketKind::ReliableAck => {
                let nbr = &mut self.neighbors[idx];
                let Some(a) = nbr.arq.as_mut().filter(|_| nbr.state == LinkState::Up) else {
                    // Not (yet) two-way: the peer's ARQ will resend.
                    self.counters.reliable_before_up += 1;
                    return;
                };
                match a.handle_packet(now, header.kind, body) {
                    Ok(Some(packet)) => {
                        self.forward(now, Origin::Relayed(idx), packet);
                    }
                    Ok(None) => {}
                    Err(_) => self.counters.malformed += 1,
                }
                self.wake_writable_flows(idx);
            }
        }
    }

    fn on_hello(&mut self, now: Instant, idx: usize, hello: &Hello) {
        let before = self.neighbors[idx].state;
        let after = self.neighbors[idx].on_hello(now, hello, self.incarnation);
        if before != after {
            self.set_link_state(now, idx, after);
            // Answer at once so the other side completes its two-way check without waiting
            // for the next periodic hello.
            self.send_hello(now, idx, false);
        }
        if after == LinkState::Up {
            let cost = self.neighbors[idx].cost(self.cfg.metric);
            if self.neighbors[idx].cost_needs_update(now, cost) {
                let nbr = &mut self.neighbors[idx];
                debug!(peer = %nbr.addr, old = nbr.announced_cost, new = cost, "link cost update");
                nbr.announced_cost = cost;
                nbr.cost_announced_at = Some(now);
                self.originate(false);
            }
        }
    }

    pub(super) fn set_link_state(&mut self, now: Instant, idx: usize, state: LinkState) {
        let before = self.neighbors[idx].state;
        self.neighbors[idx].state = state;
        if before == state {
            return;
        }
        let nbr = &self.neighbors[idx];
        info!(peer = %nbr.addr, node = ?nbr.id, ?before, ?state, "link state");
        if state == LinkState::Up {
            let cost = nbr.cost(self.cfg.metric);
            let arq_cfg = self.cfg.arq.clone();
            let nbr = &mut self.neighbors[idx];
            nbr.up_since = Some(now);
            nbr.announced_cost = cost;
            nbr.cost_announced_at = Some(now);
            let srtt = nbr.srtt();
            let a = nbr.arq.get_or_insert_with(|| ArqLink::new(arq_cfg, now));
            if let Some(rtt) = srtt {
                a.seed_rtt(rtt);
            }
            self.full_sync(idx);
            self.originate(false);
        } else if before == LinkState::Up {
            self.link_went_down(now, idx);
        }
    }

    /// The link stopped being usable: withdraw it from routing and send what its ARQ held
    /// along the new routes, so nothing waits for end-to-end recovery.
    fn link_went_down(&mut self, now: Instant, idx: usize) {
        let nbr = &mut self.neighbors[idx];
        nbr.up_since = None;
        nbr.announced_cost = 0;
        nbr.flood.clear();
        let stranded = nbr.arq.as_mut().map(|a| a.take_all()).unwrap_or_default();
        self.originate(false);
        self.recompute_routes();
        if !stranded.is_empty() {
            debug!(packets = stranded.len(), "rerouting packets of a dead link");
            self.counters.rerouted += stranded.len() as u64;
        }
        for (_, packet) in stranded {
            self.forward(now, Origin::Rerouted, packet);
        }
    }

    fn send_hello(&mut self, now: Instant, idx: usize, probe: bool) {
        if self.neighbors[idx].cut {
            return;
        }
        let hello = self.neighbors[idx].make_hello(now);
        let mut buf = Vec::with_capacity(HEADER_LEN + Hello::LEN);
        let mut w = Writer::new(&mut buf);
        let mut header = Header::new(PacketKind::Hello, self.cfg.id, self.incarnation);
        if probe {
            header.flags |= HELLO_PROBE;
        }
        header.encode(&mut w);
        hello.encode(&mut w);
        self.send_to(idx, buf);
    }

    /// When to probe a neighbour that has gone quiet (None while it is heard normally).
    fn probe_due(&self, idx: usize) -> Option<Instant> {
        let n = &self.neighbors[idx];
        if n.state == LinkState::Down || n.cut {
            return None;
        }
        let quiet_from = n.last_heard? + self.cfg.hello_interval * 3 / 2;
        Some(n.next_probe.unwrap_or(quiet_from).max(quiet_from))
    }

    pub(super) fn send_to(&mut self, idx: usize, payload: Vec<u8>) {
        let nbr = &mut self.neighbors[idx];
        if nbr.cut {
            self.counters.dropped_cut += 1;
            return;
        }
        nbr.packets_out += 1;
        nbr.bytes_out += payload.len() as u64;
        self.outbox.push_back(Transmit {
            dst: nbr.addr,
            payload,
        });
    }

    pub(super) fn after_input(&mut self, now: Instant) {
        self.flush_floods(now);
        self.recompute_routes();
        self.pump_sessions(now);
    }
}
