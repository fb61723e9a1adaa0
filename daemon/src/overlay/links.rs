//! `Links`: the node's links to its configured neighbours and everything that is about one
//! link: the outer header, hellos, liveness (two-way check, incarnations, probes, the dead
//! interval), link costs, the reliable flooding queues, the hop-by-hop ARQ, and the datagrams
//! waiting to leave. It knows nothing of routes, sessions or groups: what others must react to
//! it reports as [`LinkEvent`]s, and what it received for others it hands back as [`Inbound`].

use crate::overlay::config::AUTH_RESERVE;
mod membership;

use crate::logging::Maybe;
use crate::overlay::neighbor::{LinkState, Metric, Neighbor};
use crate::overlay::wire::{self, Hello, StateId, StateKind, HELLO_PROBE};
use ahash::AHashMap as HashMap;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tracing::{debug, info};
use weft_core::{DecodeError, Header, Instant, NodeId, PacketKind, Writer, HEADER_LEN};
use weft_transport::arq::{ArqConfig, ArqLink, Backpressure, BufferPool, FlowId};

/// Spare packet buffers the links keep (about a megabyte and a half at the default MTU).
const POOL_BUFFERS: usize = 1024;

/// A neighbour's slot (stable for the node's life: a removed neighbour's slot is retired,
/// never reused for another address).
pub type LinkId = usize;

/// What `Links` needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct LinksConfig {
    pub id: NodeId,
    pub incarnation: u32,
    pub hello_interval: Duration,
    pub dead_interval: Duration,
    pub metric: Metric,
    pub mtu: usize,
    pub arq: ArqConfig,
    /// Fast liveness on links that carry traffic: the keepalive interval (None: off).
    pub fast_probe: Option<Duration>,
}

/// Something about the links that the rest of the node must act on.
#[derive(Debug)]
pub enum LinkEvent {
    /// The link became two-way: owe the neighbour a full sync, re-announce adjacencies.
    Up(LinkId),
    /// The link stopped being usable; `stranded` is what its ARQ held, to send along the new
    /// routes so nothing waits for end-to-end recovery.
    Down {
        link: LinkId,
        stranded: Vec<(FlowId, Vec<u8>)>,
    },
    /// A link's announced cost changed: re-announce adjacencies.
    CostChanged,
    /// A reliable link can take more of this flow.
    Writable(FlowId),
}

/// What a received datagram carried for the rest of the node.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// Flooded records (link state, memberships) from `link`.
    State { link: LinkId, body: &'a [u8] },
    /// A routed packet from `link`: borrowed from the datagram (best effort) or handed up by
    /// the link's ARQ.
    Routed { link: LinkId, packet: Cow<'a, [u8]> },
}

/// Where the next datagram goes and how long it is (its bytes were appended to the caller's
/// buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransmitMeta {
    pub dst: SocketAddr,
    pub len: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LinkCounters {
    pub unknown_sender: u64,
    pub malformed: u64,
    pub dropped_cut: u64,
    pub neighbors_declared_dead: u64,
    /// Of those, declared dead by fast liveness (silence under the neighbour's promise).
    pub fast_deaths: u64,
    /// Hellos sent because an active link had been silent for the fast interval.
    pub fast_keepalives: u64,
    pub neighbor_restarts: u64,
    /// Neighbours that said they were leaving (a clean stop): links taken down at once.
    pub neighbor_leaves: u64,
    /// Datagrams from a neighbour speaking another wire version (dropped).
    pub wire_version_mismatch: u64,
    pub state_packets_sent: u64,
    /// Flooded records in those packets (resends included) and their bytes.
    pub state_records_sent: u64,
    pub state_record_bytes_sent: u64,
    pub reliable_before_up: u64,
}

/// Control and best-effort datagrams waiting to leave (in buffers from the links' pool).
#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Outgoing>,
}

#[derive(Debug)]
struct Outgoing {
    link: LinkId,
    dst: SocketAddr,
    /// A routed packet (not link control): the link carries traffic.
    data: bool,
    payload: Vec<u8>,
}

impl Outbox {
    fn push(&mut self, out: Outgoing) {
        self.queue.push_back(out);
    }

    /// Moves the oldest datagram into `buf`, and its buffer back to `pool`; returns the link
    /// it leaves on and whether it was data.
    fn pop_into(
        &mut self,
        buf: &mut Vec<u8>,
        pool: &mut BufferPool,
    ) -> Option<(TransmitMeta, LinkId, bool)> {
        let out = self.queue.pop_front()?;
        buf.extend_from_slice(&out.payload);
        let len = out.payload.len();
        pool.give(out.payload);
        Some((TransmitMeta { dst: out.dst, len }, out.link, out.data))
    }
}

pub struct Links {
    cfg: LinksConfig,
    neighbors: Vec<Neighbor>,
    by_addr: HashMap<SocketAddr, LinkId>,
    outbox: Outbox,
    /// Packet buffers shared by every link: what one link's ARQ frees, another's reuses.
    pool: BufferPool,
    events: VecDeque<LinkEvent>,
    /// Where `poll_transmit` resumes its round over the links' ARQs.
    next_link: usize,
    counters: LinkCounters,
}

impl Links {
    pub fn new(cfg: LinksConfig, neighbors: &[(SocketAddr, Option<NodeId>)], now: Instant) -> Self {
        let mut links = Links {
            neighbors: Vec::with_capacity(neighbors.len()),
            by_addr: HashMap::new(),
            outbox: Outbox::default(),
            pool: BufferPool::new(POOL_BUFFERS),
            events: VecDeque::new(),
            next_link: 0,
            counters: LinkCounters::default(),
            cfg,
        };
        for &(addr, id) in neighbors {
            // Every neighbour's hello falls due on the same tick: one wake-up sends them all.
            links.by_addr.insert(addr, links.neighbors.len());
            links.neighbors.push(Neighbor::new(addr, id, now));
        }
        links
    }

    pub fn len(&self) -> usize {
        self.neighbors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.neighbors.is_empty()
    }

    pub fn counters(&self) -> LinkCounters {
        self.counters
    }

    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// The neighbours linked now (not the removed ones), in the order they were added.
    fn current(&self) -> impl Iterator<Item = &Neighbor> + '_ {
        self.neighbors.iter().filter(|n| !n.retired)
    }

    /// Each neighbour's address and node id (once known), in the order they were added.
    pub fn neighbors(&self) -> impl Iterator<Item = (SocketAddr, Option<NodeId>)> + '_ {
        self.current().map(|n| (n.addr, n.id))
    }

    pub fn states(&self) -> Vec<LinkState> {
        self.current().map(|n| n.state).collect()
    }

    pub fn is_up(&self, link: LinkId) -> bool {
        self.neighbors[link].state == LinkState::Up
    }

    pub fn neighbor_id(&self, link: LinkId) -> Option<NodeId> {
        self.neighbors[link].id
    }

    /// The Up link to neighbour `node`.
    /// A link that went silent (cut) stays usable until it is declared dead: reliable packets
    /// wait in its ARQ and are rerouted then, rather than being dropped now.
    pub fn up_link_to(&self, node: NodeId) -> Option<LinkId> {
        self.neighbors
            .iter()
            .position(|n| n.id == Some(node) && n.state == LinkState::Up)
    }

    /// (neighbour, cost) of every Up link: this node's link-state advert.
    pub fn adjacencies(&self) -> Vec<(NodeId, u32)> {
        self.neighbors
            .iter()
            .filter(|n| n.state == LinkState::Up && !n.cut)
            .filter_map(|n| n.id.map(|id| (id, n.announced_cost.max(1))))
            .collect()
    }

    /// Administratively cut (or heal) the link to `addr`: nothing is sent or received on it.
    pub fn set_cut(&mut self, addr: SocketAddr, cut: bool) -> bool {
        let Some(&link) = self.by_addr.get(&addr) else {
            return false;
        };
        self.neighbors[link].cut = cut;
        true
    }

    // ----- receiving ----------------------------------------------------------------------

    /// A datagram arrived from `from`. Link-level packets are handled here; what the rest of
    /// the node must see comes back as [`Inbound`] (and as events).
    pub fn receive<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &'a [u8],
    ) -> Option<Inbound<'a>> {
        let Some(&link) = self.by_addr.get(&from) else {
            self.counters.unknown_sender += 1;
            return None;
        };
        if self.neighbors[link].cut {
            self.counters.dropped_cut += 1;
            return None;
        }
        let (header, body) = match Header::decode(data) {
            Ok(x) => x,
            Err(DecodeError::Version(theirs)) => {
                self.wire_version_mismatch(link, theirs);
                return None;
            }
            Err(e) => {
                self.counters.malformed += 1;
                debug!(peer = %self.neighbors[link].addr, "malformed packet: {e}");
                return None;
            }
        };
        if header.sender == self.cfg.id {
            self.counters.malformed += 1;
            return None;
        }
        let nbr = &mut self.neighbors[link];
        if nbr.configured_id.is_some_and(|id| id != header.sender) {
            self.counters.unknown_sender += 1;
            return None;
        }
        let was_up = nbr.state == LinkState::Up;
        if nbr.observe_incarnation(header.sender, header.incarnation) {
            info!(peer = %nbr.addr, node = %header.sender, "neighbour restarted: new incarnation");
            self.counters.neighbor_restarts += 1;
            if was_up {
                self.went_down(link);
            }
            // Its fresh sequence numbers must not look like old duplicates.
            if let Some(a) = self.neighbors[link].arq.as_mut() {
                a.reset(now);
            }
        }
        self.neighbors[link].heard(now, data.len());
        match header.kind {
            PacketKind::Hello => {
                match Hello::decode(body) {
                    Ok(_) if self.on_leaving_hello(now, link, header.flags) => {}
                    Ok(h) => {
                        self.on_hello(now, link, &h);
                        if header.flags & HELLO_PROBE != 0 {
                            self.send_hello(now, link, false);
                        }
                    }
                    Err(_) => self.counters.malformed += 1,
                }
                None
            }
            PacketKind::State => Some(Inbound::State { link, body }),
            PacketKind::StateAck => {
                match wire::decode_acks(body) {
                    Ok(ids) => {
                        let q = &mut self.neighbors[link].flood;
                        for id in &ids {
                            q.ack(id);
                        }
                    }
                    Err(_) => self.counters.malformed += 1,
                }
                None
            }
            PacketKind::Data => {
                self.neighbors[link].fast.on_data(now);
                Some(Inbound::Routed {
                    link,
                    packet: Cow::Borrowed(body),
                })
            }
            PacketKind::ReliableData | PacketKind::ReliableAck => {
                let nbr = &mut self.neighbors[link];
                if header.kind == PacketKind::ReliableData {
                    nbr.fast.on_data(now);
                }
                let Some(a) = nbr.arq.as_mut().filter(|_| nbr.state == LinkState::Up) else {
                    // Not (yet) two-way: the peer's ARQ will resend.
                    self.counters.reliable_before_up += 1;
                    return None;
                };
                let got = a.handle_packet_pooled(now, header.kind, body, &mut self.pool);
                self.wake_writable_flows(link);
                match got {
                    Ok(Some(packet)) => Some(Inbound::Routed {
                        link,
                        packet: Cow::Owned(packet),
                    }),
                    Ok(None) => None,
                    Err(_) => {
                        self.counters.malformed += 1;
                        None
                    }
                }
            }
        }
    }

    fn on_hello(&mut self, now: Instant, link: LinkId, hello: &Hello) {
        let before = self.neighbors[link].state;
        let after = self.neighbors[link].on_hello(now, hello, self.cfg.incarnation);
        if before != after {
            self.set_state(now, link, after);
            // Answer at once so the other side completes its two-way check without waiting
            // for the next periodic hello.
            self.send_hello(now, link, false);
        }
        if after == LinkState::Up {
            let cost = self.neighbors[link].cost(self.cfg.metric);
            if self.neighbors[link].cost_needs_update(now, cost) {
                let nbr = &mut self.neighbors[link];
                debug!(peer = %nbr.addr, old = nbr.announced_cost, new = cost, "link cost update");
                nbr.announced_cost = cost;
                nbr.cost_announced_at = Some(now);
                self.events.push_back(LinkEvent::CostChanged);
            }
        }
    }

    fn set_state(&mut self, now: Instant, link: LinkId, state: LinkState) {
        let before = self.neighbors[link].state;
        self.neighbors[link].state = state;
        if before == state {
            return;
        }
        let nbr = &self.neighbors[link];
        info!(peer = %nbr.addr, node = %Maybe(&nbr.id), before = %before, state = %state, "link state");
        if state == LinkState::Up {
            let cost = nbr.cost(self.cfg.metric);
            let arq_cfg = &self.cfg.arq;
            let nbr = &mut self.neighbors[link];
            nbr.up_since = Some(now);
            nbr.announced_cost = cost;
            nbr.cost_announced_at = Some(now);
            let srtt = nbr.srtt();
            let a = nbr
                .arq
                .get_or_insert_with(|| ArqLink::new(arq_cfg.clone(), now));
            if let Some(rtt) = srtt {
                a.seed_rtt(rtt);
            }
            self.events.push_back(LinkEvent::Up(link));
        } else if before == LinkState::Up {
            self.went_down(link);
        }
    }

    /// The link stopped being usable: withdraw it and hand back what its ARQ held.
    fn went_down(&mut self, link: LinkId) {
        let nbr = &mut self.neighbors[link];
        nbr.up_since = None;
        nbr.announced_cost = 0;
        nbr.flood.clear();
        nbr.fast.forget_peer();
        let stranded = nbr.arq.as_mut().map(|a| a.take_all()).unwrap_or_default();
        self.events.push_back(LinkEvent::Down { link, stranded });
    }

    /// Flows that link `link` can take again: their sessions may send.
    fn wake_writable_flows(&mut self, link: LinkId) {
        let Some(a) = self.neighbors[link].arq.as_mut() else {
            return;
        };
        while let Some(flow) = a.poll_writable() {
            self.events.push_back(LinkEvent::Writable(flow));
        }
    }

    // ----- time ---------------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        for link in 0..self.neighbors.len() {
            let nbr = &mut self.neighbors[link];
            if nbr.retired {
                continue;
            }
            nbr.fast.update(now);
            let (dead_after, fast) = self.dead_after(link);
            let nbr = &mut self.neighbors[link];
            if nbr.state != LinkState::Down && nbr.last_heard.is_some_and(|t| now - t >= dead_after)
            {
                let silent = now - nbr.last_heard.unwrap_or(now);
                info!(peer = %nbr.addr, node = %Maybe(&nbr.id), silent_ms = silent.as_millis() as u64, fast, "neighbour dead");
                self.counters.neighbors_declared_dead += 1;
                if fast {
                    self.counters.fast_deaths += 1;
                }
                self.set_state(now, link, LinkState::Down);
            }
            let nbr = &mut self.neighbors[link];
            if let Some(a) = nbr.arq.as_mut() {
                if a.poll_timeout().is_some_and(|t| t <= now) {
                    a.handle_timeout(now);
                }
            }
            if let Some(probe_at) = self.probe_due(link) {
                if now >= probe_at {
                    self.neighbors[link].next_probe = Some(now + self.cfg.hello_interval / 4);
                    self.send_hello(now, link, true);
                }
            }
            let nbr = &mut self.neighbors[link];
            if now >= nbr.next_hello {
                nbr.next_hello = if now - nbr.next_hello > self.cfg.hello_interval {
                    now + self.cfg.hello_interval
                } else {
                    nbr.next_hello + self.cfg.hello_interval
                };
                self.send_hello(now, link, false);
            }
            if self.keepalive_due(link).is_some_and(|t| now >= t) {
                self.counters.fast_keepalives += 1;
                self.send_hello(now, link, false);
                self.neighbors[link].fast.sent_keepalive();
            }
        }
    }

    /// The silence after which the neighbour on `link` is dead, and whether that is fast
    /// liveness's threshold (shorter than the dead interval).
    fn dead_after(&self, link: LinkId) -> (Duration, bool) {
        let nbr = &self.neighbors[link];
        match self
            .cfg
            .fast_probe
            .and_then(|_| nbr.fast.dead_after(nbr.hello_loss))
        {
            Some(fast) if fast < self.cfg.dead_interval => (fast, true),
            _ => (self.cfg.dead_interval, false),
        }
    }

    /// When an Up link that carries traffic must send a keepalive (None: not owed).
    fn keepalive_due(&self, link: LinkId) -> Option<Instant> {
        let n = &self.neighbors[link];
        if n.state != LinkState::Up || n.cut {
            return None;
        }
        n.fast.keepalive_due(self.cfg.fast_probe)
    }

    /// The earliest time `handle_timeout` (or a flood flush) must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |d: Instant| t = Some(t.map_or(d, |t| t.min(d)));
        for (i, n) in self.neighbors.iter().enumerate() {
            if n.retired {
                continue;
            }
            at(n.next_hello);
            if let Some(p) = self.probe_due(i) {
                at(p);
            }
            if n.state != LinkState::Down {
                if let Some(h) = n.last_heard {
                    at(h + self.dead_after(i).0);
                }
            }
            if let Some(k) = self.keepalive_due(i) {
                at(k);
            }
            if let Some(d) = n.arq.as_ref().and_then(|a| a.poll_timeout()) {
                at(d);
            }
            if n.state == LinkState::Up && !n.cut {
                if let Some(d) = n.flood.next_due(flood_rto(n)) {
                    at(d);
                }
            }
        }
        t
    }

    /// When to probe a neighbour that has gone quiet (None while it is heard normally).
    fn probe_due(&self, link: LinkId) -> Option<Instant> {
        let n = &self.neighbors[link];
        if n.state == LinkState::Down || n.cut {
            return None;
        }
        let quiet_from = n.last_heard? + self.cfg.hello_interval * 3 / 2;
        Some(n.next_probe.unwrap_or(quiet_from).max(quiet_from))
    }

    // ----- sending ------------------------------------------------------------------------

    /// Queues a link-level datagram of `kind` whose body `body` writes; returns the body as
    /// queued (None when the link is cut).
    fn send(
        &mut self,
        link: LinkId,
        kind: PacketKind,
        flags: u8,
        body: impl FnOnce(&mut Writer),
    ) -> Option<&mut [u8]> {
        let nbr = &mut self.neighbors[link];
        if nbr.cut {
            self.counters.dropped_cut += 1;
            return None;
        }
        let mut buf = self.pool.take();
        let mut w = Writer::new(&mut buf);
        let mut header = Header::new(kind, self.cfg.id, self.cfg.incarnation);
        header.flags = flags;
        header.encode(&mut w);
        body(&mut w);
        nbr.packets_out += 1;
        nbr.bytes_out += buf.len() as u64;
        self.outbox.push(Outgoing {
            link,
            dst: nbr.addr,
            data: kind == PacketKind::Data,
            payload: buf,
        });
        self.outbox
            .queue
            .back_mut()
            .map(|o| &mut o.payload[HEADER_LEN..])
    }

    fn send_hello(&mut self, now: Instant, link: LinkId, probe: bool) {
        if self.neighbors[link].cut {
            return;
        }
        let nbr = &mut self.neighbors[link];
        let promise = if nbr.state == LinkState::Up {
            nbr.fast.promise(now, self.cfg.fast_probe)
        } else {
            None
        };
        let hello = nbr.make_hello(now, promise);
        // Counted as sent now (it leaves at the next poll): the keepalive timer moves on.
        nbr.fast.on_sent(now);
        let flags = if probe { HELLO_PROBE } else { 0 };
        self.send(link, PacketKind::Hello, flags, |w| hello.encode(w));
    }

    /// A routed packet on the best-effort path: the outer header, then `packet`, which
    /// `patch` may then adjust in place (a relay's TTL, a group copy's class).
    pub fn send_routed(&mut self, link: LinkId, packet: &[u8], patch: impl FnOnce(&mut [u8])) {
        if let Some(queued) = self.send(link, PacketKind::Data, 0, |w| {
            w.bytes(packet);
        }) {
            patch(queued);
        }
    }

    /// Acknowledges flooded records received on `link`.
    pub fn send_state_acks(&mut self, link: LinkId, acks: &[StateId]) {
        if acks.is_empty() {
            return;
        }
        self.send(link, PacketKind::StateAck, 0, |w| {
            wire::encode_acks(acks, w)
        });
    }

    /// The reliable link's queue for `flow`: how many bytes it holds.
    pub fn flow_queued_bytes(&self, link: LinkId, flow: FlowId) -> Option<usize> {
        self.neighbors[link]
            .arq
            .as_ref()
            .map(|a| a.flow_queued_bytes(flow))
    }

    /// Queues a routed packet on `link`'s ARQ in `flow`'s queue (with a hard `limit` for
    /// packets admitted upstream, the back-pressure limit otherwise). `None`: no ARQ yet.
    pub fn enqueue(
        &mut self,
        link: LinkId,
        flow: FlowId,
        packet: Vec<u8>,
        limit: Option<usize>,
    ) -> Option<Result<(), Backpressure>> {
        let a = self.neighbors[link].arq.as_mut()?;
        Some(match limit {
            None => a.enqueue(flow, packet),
            Some(limit) => a.enqueue_with_limit(flow, packet, limit),
        })
    }

    /// A routed packet's buffer that is no longer needed (delivered here).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.pool.give(buf);
    }

    /// A multicast copy left on `link` (link stress, for status).
    pub fn count_multicast(&mut self, link: LinkId) {
        self.neighbors[link].mcast_out += 1;
    }

    // ----- flooding -----------------------------------------------------------------------

    /// Owe the neighbour on `link` this record until it acknowledges it.
    pub fn push_record(&mut self, link: LinkId, id: StateId, record: Vec<u8>) {
        self.neighbors[link].flood.push(id, record);
    }

    /// Owe every Up neighbour except `except` this record.
    pub fn flood_record(&mut self, id: StateId, record: &[u8], except: Option<LinkId>) {
        for (i, n) in self.neighbors.iter_mut().enumerate() {
            if Some(i) != except && n.state == LinkState::Up {
                n.flood.push(id, record.to_vec());
            }
        }
    }

    /// Sends the records due on every link, batched into as few packets as fit.
    pub fn flush_floods(&mut self, now: Instant) {
        let budget = self.cfg.mtu.saturating_sub(HEADER_LEN + AUTH_RESERVE + 2);
        for link in 0..self.neighbors.len() {
            let nbr = &mut self.neighbors[link];
            if nbr.state != LinkState::Up || nbr.cut || nbr.flood.is_empty() {
                continue;
            }
            let rto = flood_rto(nbr);
            for batch in nbr.flood.due(now, rto, budget) {
                let refs: Vec<(StateKind, &[u8])> =
                    batch.iter().map(|(k, b)| (*k, b.as_slice())).collect();
                self.counters.state_packets_sent += 1;
                self.counters.state_records_sent += refs.len() as u64;
                self.counters.state_record_bytes_sent +=
                    refs.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
                self.send(link, PacketKind::State, 0, |w| wire::encode_state(&refs, w));
            }
        }
    }

    // ----- transmitting -------------------------------------------------------------------

    /// Appends the next datagram to `buf`: control and best-effort traffic first, then the
    /// reliable links in turn (each within its congestion window and pacing).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<TransmitMeta> {
        if let Some((t, link, data)) = self.outbox.pop_into(buf, &mut self.pool) {
            let fast = &mut self.neighbors[link].fast;
            fast.on_sent(now);
            if data {
                fast.on_data(now);
            }
            return Some(t);
        }
        let n = self.neighbors.len();
        for k in 0..n {
            let link = (self.next_link + k) % n;
            let nbr = &mut self.neighbors[link];
            if nbr.cut {
                continue;
            }
            let Some(a) = nbr.arq.as_mut() else { continue };
            let start = buf.len();
            // Room for the outer header, written once the ARQ has said what it sends.
            buf.resize(start + HEADER_LEN, 0);
            let Some(kind) = a.poll_transmit_into(now, buf) else {
                buf.truncate(start);
                continue;
            };
            let header = Header::new(kind, self.cfg.id, self.cfg.incarnation);
            buf[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
            let len = buf.len() - start;
            self.next_link = (link + 1) % n;
            nbr.packets_out += 1;
            nbr.bytes_out += len as u64;
            nbr.fast.on_sent(now);
            if kind == PacketKind::ReliableData {
                nbr.fast.on_data(now);
            }
            let dst = nbr.addr;
            // Sending may have freed queue space for sessions fed by this link.
            self.wake_writable_flows(link);
            return Some(TransmitMeta { dst, len });
        }
        None
    }

    // ----- status -------------------------------------------------------------------------

    /// One entry per current neighbour, in the order of [`Links::neighbors`].
    pub fn status(&self, now: Instant) -> Vec<NeighborStatus> {
        self.neighbors
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.retired)
            .map(|(i, n)| NeighborStatus {
                addr: n.addr.to_string(),
                node: n.id,
                state: n.state,
                rtt_ms: n.srtt().map(|d| d.as_secs_f64() * 1e3),
                min_rtt_ms: n.min_rtt().map(|d| d.as_secs_f64() * 1e3),
                hello_loss_ratio: n.hello_loss,
                fast_dead_after_ms: match self.dead_after(i) {
                    (d, true) => Some(d.as_secs_f64() * 1e3),
                    _ => None,
                },
                cost: (n.state == LinkState::Up).then_some(n.announced_cost),
                cut: n.cut,
                wire_version_mismatch: n.wire_version_mismatch,
                up_for_ms: n.up_since.map(|t| (now - t).as_millis() as u64),
                packets_in: n.packets_in,
                packets_out: n.packets_out,
                bytes_in: n.bytes_in,
                bytes_out: n.bytes_out,
                flood_pending: n.flood.len(),
                mcast_out: n.mcast_out,
                arq: n.arq.as_ref().map(|a| ArqStatus::from(a.stats())),
            })
            .collect()
    }
}

fn flood_rto(nbr: &Neighbor) -> Duration {
    nbr.srtt().map_or(Duration::from_millis(100), |r| {
        (r * 3).clamp(Duration::from_millis(20), Duration::from_millis(500))
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct NeighborStatus {
    pub addr: String,
    pub node: Option<NodeId>,
    pub state: LinkState,
    pub rtt_ms: Option<f64>,
    pub min_rtt_ms: Option<f64>,
    /// Fraction of the neighbour's hellos lost (EWMA), 0..1.
    pub hello_loss_ratio: f64,
    /// Under the neighbour's fast-liveness promise (the link carries traffic): the silence
    /// that declares it dead now, from the measured loss (None: the dead interval applies).
    pub fast_dead_after_ms: Option<f64>,
    /// The link's routing cost (unit: the status's `cost_unit`).
    pub cost: Option<u32>,
    pub cut: bool,
    /// The neighbour's wire version when it differs from ours (its packets are dropped).
    pub wire_version_mismatch: Option<u8>,
    pub up_for_ms: Option<u64>,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub flood_pending: usize,
    pub mcast_out: u64,
    /// The hop-by-hop reliable link toward this neighbour.
    pub arq: Option<ArqStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArqStatus {
    pub srtt_ms: f64,
    pub cwnd_bytes: u64,
    pub in_flight_bytes: u64,
    pub queued_bytes: u64,
    pub queued_flows: u64,
    pub packets_sent: u64,
    /// Payload bytes of new data packets (retransmissions and copies not included).
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub retransmissions: u64,
    /// Redundant copies sent on sparse links (not retransmissions).
    pub redundant_copies: u64,
    pub redundant_bytes: u64,
    /// Copies received before their original (the packets they saved a repair).
    pub redundant_copies_used: u64,
    pub losses_by_sack: u64,
    pub losses_by_timer: u64,
    pub timeouts: u64,
    pub congestion_events: u64,
    pub loss_rate_ppm: u64,
    pub duplicates: u64,
    /// Standalone acks sent (acks riding on data are not counted).
    pub acks_sent: u64,
    /// Copies not sent because a stream of new packets followed their original.
    pub redundant_copies_skipped: u64,
}

impl From<weft_transport::arq::ArqStats> for ArqStatus {
    fn from(s: weft_transport::arq::ArqStats) -> Self {
        ArqStatus {
            srtt_ms: s.srtt.as_secs_f64() * 1e3,
            cwnd_bytes: s.cwnd,
            in_flight_bytes: s.in_flight_bytes,
            queued_bytes: s.queued_bytes,
            queued_flows: s.queued_flows,
            packets_sent: s.packets_sent,
            bytes_sent: s.bytes_sent,
            packets_received: s.packets_received,
            retransmissions: s.retransmissions,
            redundant_copies: s.redundant_copies,
            redundant_bytes: s.redundant_bytes,
            redundant_copies_used: s.redundant_copies_used,
            losses_by_sack: s.losses_by_sack,
            losses_by_timer: s.losses_by_timer,
            timeouts: s.timeouts,
            congestion_events: s.congestion_events,
            loss_rate_ppm: s.loss_rate_ppm,
            duplicates: s.duplicates,
            acks_sent: s.acks_sent,
            redundant_copies_skipped: s.redundant_copies_skipped,
        }
    }
}
