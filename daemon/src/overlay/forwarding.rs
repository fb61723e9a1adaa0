//! Routes, forwarding and datagrams. The forwarding decision is a function of (destination,
//! class): best-effort packets go straight out as `Data`; reliable ones are queued on the next
//! hop's ARQ in their flow's queue (relays mark CE when a flow's queue stands long, so the
//! session that feeds it slows down, and only that one).

use crate::overlay::fragment::{pieces, MAX_DATAGRAM};
use crate::overlay::neighbor::LinkState;
use crate::overlay::node::{Node, NodeEvent, SendError, FORGET_UNREACHABLE};
use crate::overlay::wire::{Class, FragmentHeader, Proto, RoutedHeader, FLAG_CE};
use ahash::AHashMap as HashMap;
use tracing::debug;
use weft_core::{Endpoint, Header, Instant, NodeId, PacketKind, Writer, HEADER_LEN};
use weft_transport::arq::FlowId;

/// A relay marks congestion on a flow whose standing queue at the next link holds more than
/// this (see [`ArrivalBursts`]).
pub const CE_THRESHOLD_BYTES: usize = 64 * 1024;
/// Hard per-flow limit for packets already admitted upstream (relayed, or rerouted from a
/// dead link): CE marks keep queues far below it; past it a relay drops and the session's
/// end-to-end recovery repairs.
pub const RELAYED_QUEUE_LIMIT_BYTES: usize = 4 << 20;

/// What each (link, flow) queue took at the current instant. The I/O layer hands a receive
/// batch over at one instant and transmits between batches, so a flow's queue minus what it
/// took at this instant is what was already waiting: a standing queue, which is what a mark
/// should report. Counting the batch itself marks every burst of (GRO-coalesced) arrivals on a
/// fast path, and the session, answering marks meant for real queues, leaves the path idle.
#[derive(Debug, Default)]
pub struct ArrivalBursts {
    at: Option<Instant>,
    bytes: HashMap<(usize, FlowId), usize>,
}

impl ArrivalBursts {
    /// The part of `queued` (the flow's queue at link `link`) that predates `now`.
    fn standing(&mut self, now: Instant, link: usize, flow: FlowId, queued: usize) -> usize {
        if self.at != Some(now) {
            self.at = Some(now);
            self.bytes.clear();
        }
        queued.saturating_sub(self.bytes.get(&(link, flow)).copied().unwrap_or(0))
    }

    fn record(&mut self, link: usize, flow: FlowId, len: usize) {
        *self.bytes.entry((link, flow)).or_default() += len;
    }
}

/// Where a packet being forwarded comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A local session or datagram: a full flow queue pushes back on the sender.
    Local,
    /// Received from this neighbour: decrement the TTL, mark CE on long queues.
    Relayed(usize),
    /// Taken back from a link that died: send along the new route.
    Rerouted,
}

/// Flows are named by their endpoints, so every hop agrees and each session is its own flow.
pub fn flow_of(src: Endpoint, dst: Endpoint) -> FlowId {
    let mut x = ((src.node.0 as u64) << 32 | dst.node.0 as u64)
        ^ ((src.port as u64) << 16 | dst.port as u64).rotate_left(47);
    // splitmix64 finaliser
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Node {
    pub(super) fn recompute_routes(&mut self) {
        if self.routes_generation == Some(self.lsdb.generation()) {
            return;
        }
        self.routes_generation = Some(self.lsdb.generation());
        self.tree = self.lsdb.shortest_paths(self.cfg.id);
        let hops = self.tree.first_hops();
        if hops != self.first_hops {
            debug!(reachable = hops.len(), "routes changed");
            self.first_hops = hops;
            self.sessions.routes_changed = true;
            self.forget_unreachable_members();
            self.events.push_back(NodeEvent::RoutesChanged);
        }
    }

    pub(super) fn forget_long_unreachable(&mut self, now: Instant) {
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
    /// A link that went silent (cut) stays the next hop until it is declared dead: reliable
    /// packets wait in its ARQ and are rerouted then, rather than being dropped now.
    pub(super) fn next_hop(&self, dst: NodeId) -> Option<usize> {
        let hop = *self.first_hops.get(&dst)?;
        self.neighbors
            .iter()
            .position(|n| n.id == Some(hop) && n.state == LinkState::Up)
    }

    /// Delivers or forwards a routed packet. Returns a local packet that a reliable link refused
    /// (its flow's queue is full), so the sender can hold it until the flow drains.
    pub(super) fn forward(
        &mut self,
        now: Instant,
        origin: Origin,

        mut packet: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let header = match RoutedHeader::decode(&packet) {
            Ok((h, _)) => h,
            Err(_) => {
                self.counters.malformed += 1;
                return None;
            }
        };
        if matches!(origin, Origin::Relayed(_))
            && (header.src.node == self.cfg.id || self.lsdb.get(header.src.node).is_none())
        {
            self.counters.unknown_source += 1;
            return None;
        }
        if header.dst.node.is_multicast() {
            self.forward_multicast(now, origin, packet, header);
            return None;
        }
        if header.dst.node == self.cfg.id {
            self.deliver_local(now, &packet);
            return None;
        }
        let relayed = matches!(origin, Origin::Relayed(_));
        if relayed {
            if header.ttl <= 1 {
                self.counters.ttl_expired += 1;
                return None;
            }
            packet[RoutedHeader::TTL_OFFSET] = header.ttl - 1;
        }
        self.recompute_routes();
        let Some(idx) = self.next_hop(header.dst.node) else {
            self.counters.no_route += 1;
            return None;
        };
        if relayed {
            self.counters.forwarded += 1;
        }
        match header.class {
            Class::BestEffort => {
                let mut buf = Vec::with_capacity(HEADER_LEN + packet.len());
                let mut w = Writer::new(&mut buf);
                Header::new(PacketKind::Data, self.cfg.id, self.incarnation).encode(&mut w);
                w.bytes(&packet);
                self.send_to(idx, buf);
                None
            }
            Class::Reliable => {
                let flow = flow_of(header.src, header.dst);
                let Some(a) = self.neighbors[idx].arq.as_mut() else {
                    self.counters.no_route += 1;
                    return None;
                };
                let standing = self
                    .arrivals
                    .standing(now, idx, flow, a.flow_queued_bytes(flow));
                if relayed && standing > CE_THRESHOLD_BYTES && !header.ce() {
                    packet[RoutedHeader::FLAGS_OFFSET] |= FLAG_CE;
                    self.counters.ce_marked += 1;
                }
                let len = packet.len();
                let queued = match origin {
                    Origin::Local => a.enqueue(flow, packet),
                    Origin::Relayed(_) | Origin::Rerouted => {
                        a.enqueue_with_limit(flow, packet, RELAYED_QUEUE_LIMIT_BYTES)
                    }
                };
                match queued {
                    Ok(()) => {
                        self.arrivals.record(idx, flow, len);
                        None
                    }
                    Err(refused) if origin == Origin::Local => Some(refused.packet),

                    Err(_) => {
                        self.counters.dropped_backpressure += 1;
                        None
                    }
                }
            }
        }
    }

    /// Flows that link `idx` can take again: their sessions may send.
    pub(super) fn wake_writable_flows(&mut self, idx: usize) {
        let Some(a) = self.neighbors[idx].arq.as_mut() else {
            return;
        };
        while let Some(flow) = a.poll_writable() {
            self.sessions.flow_writable(flow);
        }
    }

    pub(super) fn deliver_local(&mut self, now: Instant, packet: &[u8]) {
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
            Proto::Session => self.on_segment(now, &header, body),
        }
    }

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
        if dst.node.is_multicast() {
            return self.send_group(now, src_port, dst, payload, 1, true);
        }
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
        let ttl = ttl.unwrap_or(self.cfg.default_ttl).max(1);
        self.send_fragments(now, src, dst, ttl, id, payload);
        Ok(())
    }

    /// Sends a datagram to a group. `hops` is the application's multicast TTL: 0 keeps it on
    /// this host; any other value reaches the whole overlay (every overlay host is one hop
    /// away, as most multicast programs assume with their default TTL of 1). With `loopback`
    /// (IP_MULTICAST_LOOP, on by default) this host's members get a copy too.
    pub fn send_group(
        &mut self,
        now: Instant,
        src_port: u16,
        dst: Endpoint,
        payload: &[u8],
        hops: u8,
        loopback: bool,
    ) -> Result<(), SendError> {
        if payload.len() > MAX_DATAGRAM {
            return Err(SendError::TooLarge);
        }
        let src = Endpoint::new(self.cfg.id, src_port);
        if loopback {
            self.events.push_back(NodeEvent::Datagram {
                src,
                dst,
                payload: payload.to_vec(),
            });
        }
        if hops == 0 {
            return Ok(());
        }
        let next = self
            .mc_next_id
            .entry((src, dst.node))
            .or_insert(self.next_datagram_id);
        let id = *next;
        *next = next.wrapping_add(1);
        self.send_fragments(now, src, dst, self.cfg.default_ttl, id, payload);
        Ok(())
    }

    /// Cuts a best-effort datagram into routed fragments of datagram `id` and forwards them.
    fn send_fragments(
        &mut self,
        now: Instant,
        src: Endpoint,
        dst: Endpoint,
        ttl: u8,
        id: u32,
        payload: &[u8],
    ) {
        let piece = self.cfg.routed_mtu() - RoutedHeader::LEN - FragmentHeader::LEN;
        let header = RoutedHeader {
            flags: 0,
            proto: Proto::Datagram,
            class: Class::BestEffort,
            ttl,
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
            self.forward(now, Origin::Local, packet);
        }
        self.after_input(now);
    }
}
