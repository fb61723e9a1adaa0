//! `Node`: one overlay daemon's protocol state. Links (hellos, liveness, incarnations), reliable
//! flooding of link state, shortest-path routing, and best-effort datagram forwarding with
//! fragmentation. Receive-side link emulation sits in front of all of it.

use crate::overlay::emulation::{Emulator, LinkParams, Verdict};
use crate::overlay::fragment::{pieces, Reassembler, MAX_DATAGRAM};
use crate::overlay::neighbor::{LinkState, Metric, Neighbor};
use crate::overlay::routing::{Applied, LinkStateDb, ShortestPathTree};
use crate::overlay::status::{Counters, NeighborStatus, NodeStatus, RouteStatus};
use crate::overlay::wire::{
    self, Class, FragmentHeader, Hello, LinkStateAdvert, Proto, RoutedHeader, StateKind,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;
use tracing::{debug, info};
use weft_core::{Endpoint, Header, Instant, NodeId, PacketKind, Writer, HEADER_LEN};

#[derive(Debug, Clone)]
pub struct NeighborConfig {
    /// Where the neighbour's daemon listens.
    pub addr: SocketAddr,
    /// Its node id, if it differs from the address (learned from its packets otherwise).
    pub id: Option<NodeId>,
    /// Emulation applied to packets received from it.
    pub link: LinkParams,
}

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
        }
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
const FORGET_UNREACHABLE: Duration = Duration::from_secs(60);

pub struct Node {
    cfg: NodeConfig,
    incarnation: u32,
    neighbors: Vec<Neighbor>,
    by_addr: HashMap<SocketAddr, usize>,
    lsdb: LinkStateDb,
    routes_generation: Option<u64>,
    tree: ShortestPathTree,
    first_hops: BTreeMap<NodeId, NodeId>,
    unreachable_since: HashMap<NodeId, Instant>,
    reassembler: Reassembler,
    next_datagram_id: u32,
    outbox: VecDeque<Transmit>,
    events: VecDeque<NodeEvent>,
    next_housekeeping: Instant,
    started: Instant,
    counters: Counters,
}

impl Node {
    /// `incarnation` must differ between runs (random); `first_seq` should grow across runs
    /// (e.g. derived from wall-clock time) so this run's adverts supersede the last run's.
    pub fn new(cfg: NodeConfig, now: Instant, incarnation: u32, first_seq: u64, seed: u64) -> Self {
        let mut neighbors = Vec::new();
        let mut by_addr = HashMap::new();
        let spread = cfg.hello_interval.as_nanos() as u64 / (cfg.neighbors.len() as u64 + 1);
        for (i, n) in cfg.neighbors.iter().enumerate() {
            let emulator = cfg.emulation.then(|| {
                Emulator::new(
                    n.link,
                    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        .wrapping_add(i as u64),
                )
            });
            let first = now + Duration::from_nanos(spread * i as u64);
            by_addr.insert(n.addr, neighbors.len());
            neighbors.push(Neighbor::new(n.addr, n.id, first, emulator));
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
            next_datagram_id: (seed as u32) | 1,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            next_housekeeping: now + HOUSEKEEPING,
            started: now,
            counters: Counters::default(),
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
            if now >= nbr.next_hello {
                nbr.next_hello = if now - nbr.next_hello > self.cfg.hello_interval {
                    now + self.cfg.hello_interval
                } else {
                    nbr.next_hello + self.cfg.hello_interval
                };
                self.send_hello(now, idx);
            }
        }
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
        for n in &self.neighbors {
            t = t.min(n.next_hello);
            if n.state != LinkState::Down {
                if let Some(h) = n.last_heard {
                    t = t.min(h + self.cfg.dead_interval);
                }
            }
            if let Some(d) = n.emulator.as_ref().and_then(|e| e.next_due()) {
                t = t.min(d);
            }
        }
        if let Some(d) = self.next_flood_due() {
            t = t.min(d);
        }
        if let Some(d) = self.reassembler.next_expiry() {
            t = t.min(d);
        }
        Some(t)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    // ----- local requests -----------------------------------------------------------------

    /// Sends a datagram from (this node, `src_port`) to `dst`, fragmenting as needed.
    pub fn send_datagram(
        &mut self,
        now: Instant,
        src_port: u16,
        dst: Endpoint,
        payload: &[u8],
        ttl: Option<u8>,
    ) -> Result<(), SendError> {
        if payload.len() > MAX_DATAGRAM {
            return Err(SendError::TooLarge);
        }
        let src = Endpoint::new(self.cfg.id, src_port);
        if dst.node == self.cfg.id {
            self.events.push_back(NodeEvent::Datagram {
                src,
                dst,
                payload: payload.to_vec(),
            });
            return Ok(());
        }
        if !self.first_hops.contains_key(&dst.node) {
            self.counters.no_route += 1;
            return Err(SendError::NoRoute);
        }
        let id = self.next_datagram_id;
        self.next_datagram_id = self.next_datagram_id.wrapping_add(1);
        let piece = self
            .cfg
            .mtu
            .saturating_sub(HEADER_LEN + RoutedHeader::LEN + FragmentHeader::LEN)
            .max(64);
        let header = RoutedHeader {
            flags: 0,
            proto: Proto::Datagram,
            class: Class::BestEffort,
            ttl: ttl.unwrap_or(self.cfg.default_ttl).max(1),
            src,
            dst,
        };
        for (offset, len) in pieces(payload.len(), piece) {
            let mut packet = Vec::with_capacity(RoutedHeader::LEN + FragmentHeader::LEN + len);
            let mut w = Writer::new(&mut packet);
            header.encode(&mut w);
            FragmentHeader {
                id,
                offset: offset as u16,
                total: payload.len() as u16,
            }
            .encode(&mut w);
            w.bytes(&payload[offset..offset + len]);
            self.forward(now, None, packet);
        }
        self.after_input(now);
        Ok(())
    }

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

    // ----- packet processing --------------------------------------------------------------

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
        }
        self.neighbors[idx].heard(now, data.len());
        match header.kind {
            PacketKind::Hello => match Hello::decode(body) {
                Ok(h) => self.on_hello(now, idx, &h),
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
            PacketKind::Data => self.forward(now, Some(idx), body.to_vec()),
            PacketKind::ReliableData | PacketKind::ReliableAck => {
                self.counters.unsupported += 1;
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
            self.send_hello(now, idx);
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

    fn set_link_state(&mut self, now: Instant, idx: usize, state: LinkState) {
        let before = self.neighbors[idx].state;
        self.neighbors[idx].state = state;
        if before == state {
            return;
        }
        let nbr = &self.neighbors[idx];
        info!(peer = %nbr.addr, node = ?nbr.id, ?before, ?state, "link state");
        if state == LinkState::Up {
            let cost = nbr.cost(self.cfg.metric);
            let nbr = &mut self.neighbors[idx];
            nbr.up_since = Some(now);
            nbr.announced_cost = cost;
            nbr.cost_announced_at = Some(now);
            // Full sync: the new neighbour gets every record we hold.
            let adverts: Vec<LinkStateAdvert> = self.lsdb.adverts().cloned().collect();
            for a in adverts {
                self.push_advert(idx, &a);
            }
            self.originate(false);
        } else if before == LinkState::Up {
            self.link_went_down(now, idx);
        }
    }

    fn link_went_down(&mut self, _now: Instant, idx: usize) {
        let nbr = &mut self.neighbors[idx];
        nbr.up_since = None;
        nbr.announced_cost = 0;
        nbr.flood.clear();
        self.originate(false);
    }

    fn send_hello(&mut self, now: Instant, idx: usize) {
        if self.neighbors[idx].cut {
            return;
        }
        let hello = self.neighbors[idx].make_hello(now);
        let mut buf = Vec::with_capacity(HEADER_LEN + Hello::LEN);
        let mut w = Writer::new(&mut buf);
        Header::new(PacketKind::Hello, self.cfg.id, self.incarnation).encode(&mut w);
        hello.encode(&mut w);
        self.send_to(idx, buf);
    }

    fn send_to(&mut self, idx: usize, payload: Vec<u8>) {
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

    // ----- flooding -----------------------------------------------------------------------

    /// Rebuilds our advert from the Up links and floods it if it changed.
    fn originate(&mut self, force: bool) {
        let links: Vec<(NodeId, u32)> = self
            .neighbors
            .iter()
            .filter(|n| n.state == LinkState::Up && !n.cut)
            .filter_map(|n| n.id.map(|id| (id, n.announced_cost.max(1))))
            .collect();
        if let Some(advert) = self.lsdb.originate(links, force) {
            debug!(
                seq = advert.seq,
                links = advert.links.len(),
                "originate link state"
            );
            self.flood_advert(&advert, None);
        }
    }

    fn push_advert(&mut self, idx: usize, advert: &LinkStateAdvert) {
        let mut bytes = Vec::new();
        advert.encode(&mut bytes);
        self.neighbors[idx].flood.push(advert.id(), bytes);
    }

    /// Queue `advert` for every Up neighbour except `except` (where it came from).
    fn flood_advert(&mut self, advert: &LinkStateAdvert, except: Option<usize>) {
        for idx in 0..self.neighbors.len() {
            if Some(idx) != except && self.neighbors[idx].state == LinkState::Up {
                self.push_advert(idx, advert);
            }
        }
    }

    fn on_state(&mut self, now: Instant, idx: usize, body: &[u8]) {
        let records = match wire::decode_state(body) {
            Ok(r) => r,
            Err(_) => {
                self.counters.malformed += 1;
                return;
            }
        };
        let mut acks = Vec::with_capacity(records.len());
        for (kind, bytes) in records {
            match kind {
                StateKind::LinkState => {
                    let Ok(advert) = LinkStateAdvert::decode(bytes) else {
                        self.counters.malformed += 1;
                        continue;
                    };
                    acks.push(advert.id());
                    match self.lsdb.apply(advert.clone()) {
                        Applied::Newer => self.flood_advert(&advert, Some(idx)),
                        Applied::Same => {}
                        Applied::Older => {
                            if let Some(ours) = self.lsdb.get(advert.origin).cloned() {
                                self.push_advert(idx, &ours);
                            }
                        }
                        Applied::OwnStale => self.originate(true),
                    }
                }
                StateKind::Membership => {
                    // Group membership records arrive with the multicast work; until then
                    // they are acknowledged (so senders stop resending) and counted.
                    self.counters.unsupported += 1;
                }
            }
        }
        if !acks.is_empty() {
            let mut buf = Vec::with_capacity(HEADER_LEN + 2 + acks.len() * wire::STATE_ID_LEN);
            let mut w = Writer::new(&mut buf);
            Header::new(PacketKind::StateAck, self.cfg.id, self.incarnation).encode(&mut w);
            wire::encode_acks(&acks, &mut w);
            self.send_to(idx, buf);
        }
        let _ = now;
    }

    fn flood_rto(nbr: &Neighbor) -> Duration {
        nbr.srtt().map_or(Duration::from_millis(100), |r| {
            (r * 3).clamp(Duration::from_millis(20), Duration::from_millis(500))
        })
    }

    fn flush_floods(&mut self, now: Instant) {
        let budget = self.cfg.mtu.saturating_sub(HEADER_LEN + 2);
        for idx in 0..self.neighbors.len() {
            let nbr = &mut self.neighbors[idx];
            if nbr.state != LinkState::Up || nbr.cut || nbr.flood.is_empty() {
                continue;
            }
            let rto = Self::flood_rto(nbr);
            for batch in nbr.flood.due(now, rto, budget) {
                let mut buf = Vec::with_capacity(self.cfg.mtu);
                let mut w = Writer::new(&mut buf);
                Header::new(PacketKind::State, self.cfg.id, self.incarnation).encode(&mut w);
                let refs: Vec<(StateKind, &[u8])> =
                    batch.iter().map(|(k, b)| (*k, b.as_slice())).collect();
                wire::encode_state(&refs, &mut w);
                self.counters.state_packets_sent += 1;
                self.send_to(idx, buf);
            }
        }
    }

    fn next_flood_due(&self) -> Option<Instant> {
        self.neighbors
            .iter()
            .filter(|n| n.state == LinkState::Up && !n.cut)
            .filter_map(|n| n.flood.next_due(Self::flood_rto(n)))
            .min()
    }

    // ----- routing and forwarding ---------------------------------------------------------

    fn after_input(&mut self, now: Instant) {
        self.flush_floods(now);
        self.recompute_routes();
    }

    fn recompute_routes(&mut self) {
        if self.routes_generation == Some(self.lsdb.generation()) {
            return;
        }
        self.routes_generation = Some(self.lsdb.generation());
        self.tree = self.lsdb.shortest_paths(self.cfg.id);
        let hops = self.tree.first_hops();
        if hops != self.first_hops {
            debug!(reachable = hops.len(), "routes changed");
            self.first_hops = hops;
            self.events.push_back(NodeEvent::RoutesChanged);
        }
    }

    fn forget_long_unreachable(&mut self, now: Instant) {
        let known: Vec<NodeId> = self.known_nodes();
        for n in known {
            if self.is_reachable(n) {
                self.unreachable_since.remove(&n);
            } else {
                self.unreachable_since.entry(n).or_insert(now);
            }
        }
        let forget: Vec<NodeId> = self
            .unreachable_since
            .iter()
            .filter(|(_, &t)| now - t >= FORGET_UNREACHABLE)
            .map(|(n, _)| *n)
            .collect();
        if !forget.is_empty() {
            self.lsdb.retain(|n| !forget.contains(&n));
            for n in forget {
                self.unreachable_since.remove(&n);
            }
        }
    }

    /// The Up neighbour to use toward `dst`.
    fn next_hop(&self, dst: NodeId) -> Option<usize> {
        let hop = *self.first_hops.get(&dst)?;
        self.neighbors
            .iter()
            .position(|n| n.id == Some(hop) && n.state == LinkState::Up && !n.cut)
    }

    /// Delivers or forwards a routed packet (`from`: the neighbour it came from, None if local).
    fn forward(&mut self, now: Instant, from: Option<usize>, mut packet: Vec<u8>) {
        let header = match RoutedHeader::decode(&packet) {
            Ok((h, _)) => h,
            Err(_) => {
                self.counters.malformed += 1;
                return;
            }
        };
        if header.dst.node == self.cfg.id {
            self.deliver_local(now, &packet);
            return;
        }
        if from.is_some() {
            if header.ttl <= 1 {
                self.counters.ttl_expired += 1;
                return;
            }
            packet[RoutedHeader::TTL_OFFSET] = header.ttl - 1;
        }
        let Some(idx) = self.next_hop(header.dst.node) else {
            self.counters.no_route += 1;
            return;
        };
        if from.is_some() {
            self.counters.forwarded += 1;
        }
        let mut buf = Vec::with_capacity(HEADER_LEN + packet.len());
        let mut w = Writer::new(&mut buf);
        Header::new(PacketKind::Data, self.cfg.id, self.incarnation).encode(&mut w);
        w.bytes(&packet);
        self.send_to(idx, buf);
    }

    fn deliver_local(&mut self, now: Instant, packet: &[u8]) {
        let Ok((header, body)) = RoutedHeader::decode(packet) else {
            return;
        };
        match header.proto {
            Proto::Datagram => {
                let Ok((frag, bytes)) = FragmentHeader::decode(body) else {
                    self.counters.malformed += 1;
                    return;
                };
                if let Some(payload) = self.reassembler.add(
                    now,
                    header.src,
                    frag.id,
                    frag.offset as usize,
                    frag.total as usize,
                    bytes,
                ) {
                    self.counters.datagrams_delivered += 1;
                    self.events.push_back(NodeEvent::Datagram {
                        src: header.src,
                        dst: header.dst,
                        payload,
                    });
                }
            }
            Proto::Session => {
                self.counters.unsupported += 1;
            }
        }
    }

    // ----- status -------------------------------------------------------------------------

    pub fn status(&self, now: Instant) -> NodeStatus {
        let neighbors = self
            .neighbors
            .iter()
            .map(|n| NeighborStatus {
                addr: n.addr.to_string(),
                node: n.id,
                state: n.state,
                rtt_ms: n.srtt().map(|d| d.as_secs_f64() * 1e3),
                min_rtt_ms: n.min_rtt().map(|d| d.as_secs_f64() * 1e3),
                hello_loss: n.hello_loss,
                cost: (n.state == LinkState::Up).then_some(n.announced_cost),
                cut: n.cut,
                up_for_ms: n.up_since.map(|t| (now - t).as_millis() as u64),
                emulation: n.emulator.as_ref().map(|e| (*e.params(), e.counters)),
                packets_in: n.packets_in,
                packets_out: n.packets_out,
                bytes_in: n.bytes_in,
                bytes_out: n.bytes_out,
                flood_pending: n.flood.len(),
            })
            .collect();
        let routes = self
            .first_hops
            .iter()
            .map(|(dst, hop)| RouteStatus {
                dst: *dst,
                next_hop: *hop,
                cost: self.tree.dist(*dst).unwrap_or(u64::MAX),
                path: self.tree.path(*dst).unwrap_or_default(),
            })
            .collect();
        let mut counters = self.counters;
        counters.reassembly = self.reassembler.counters;
        NodeStatus {
            node: self.cfg.id,
            incarnation: self.incarnation,
            metric: self.cfg.metric,
            emulation: self.cfg.emulation,
            uptime_ms: (now - self.started).as_millis() as u64,
            hello_interval_ms: self.cfg.hello_interval.as_millis() as u64,
            dead_interval_ms: self.cfg.dead_interval.as_millis() as u64,
            neighbors,
            routes,
            known_nodes: self.known_nodes(),
            counters,
        }
    }
}
