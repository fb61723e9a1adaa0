//! Emulated IP multicast in the node: membership records flooded like link state (with the
//! same reliable flooding and full sync), withdrawn when routing loses their node, and packets
//! forwarded along each source's shortest-path tree, pruned to members, so every packet
//! crosses each link at most once. Groups whose members asked for it ride the hop-by-hop
//! reliable links and are delivered in per-source order.

use crate::overlay::forwarding::{flow_of, Origin, RELAYED_QUEUE_LIMIT_BYTES};
use crate::overlay::neighbor::LinkState;
use crate::overlay::node::{Node, NodeEvent};
use crate::overlay::routing::{LinkStateDb, ShortestPathTree};
use crate::overlay::wire::{Class, FragmentHeader, RoutedHeader, StateId, StateKind};
use ahash::AHashMap as HashMap;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;
use weft_core::{Endpoint, Header, Instant, NodeId, PacketKind, Reader, Writer, HEADER_LEN};
use weft_multicast::{
    Applied, JoinError, MembershipRecord, MulticastStatus, ShortestPaths, SocketId,
};

/// A reliable group's receiver waits this long for a missing datagram before giving up on it.
const ORDER_HOLD: Duration = Duration::from_secs(2);
/// A reliable group's receiver holds the first datagrams of a source this long before
/// choosing where the source's order starts: relays forward out of order, so the first
/// datagram to arrive may be the second sent while the first is being repaired upstream.
const START_HOLD: Duration = Duration::from_millis(200);

/// Trees of every source, computed on demand from the link-state database and kept until the
/// database changes.
pub(super) struct SourceTrees<'a> {
    lsdb: RefCell<&'a mut LinkStateDb>,
    cache: &'a RefCell<(u64, HashMap<NodeId, ShortestPathTree>)>,
}

impl<'a> SourceTrees<'a> {
    pub(super) fn new(
        lsdb: &'a mut LinkStateDb,
        cache: &'a RefCell<(u64, HashMap<NodeId, ShortestPathTree>)>,
    ) -> Self {
        let generation = lsdb.generation();
        {
            let mut c = cache.borrow_mut();
            if c.0 != generation {
                c.0 = generation;
                c.1.clear();
            }
        }
        SourceTrees {
            lsdb: RefCell::new(lsdb),
            cache,
        }
    }
}

impl ShortestPaths for SourceTrees<'_> {
    fn generation(&self) -> u64 {
        self.lsdb.borrow().generation()
    }

    fn parent(&self, source: NodeId, node: NodeId) -> Option<NodeId> {
        let mut cache = self.cache.borrow_mut();
        let tree = cache
            .1
            .entry(source)
            .or_insert_with(|| self.lsdb.borrow_mut().shortest_paths(source));
        tree.parent(node)
    }
}

pub(super) fn membership_id(rec: &MembershipRecord) -> StateId {
    let v = rec.version();
    StateId {
        kind: StateKind::Membership,
        origin: rec.origin(),
        key: rec.group().0,
        version: ((v.epoch as u128) << 32) | v.seq as u128,
    }
}

/// Per (source, group) delivery order for reliable groups.
#[derive(Default)]
pub(super) struct Reorder {
    /// The id to deliver next; `None` during the start hold.
    next: Option<u32>,
    /// The first datagram of this source arrived then, with this id.
    first: Option<(Instant, u32)>,
    held: BTreeMap<u32, (Instant, Endpoint, Vec<u8>)>,
}

impl Reorder {
    /// When the start hold ends, if it has not yet.
    fn start_deadline(&self) -> Option<Instant> {
        match (self.next, self.first) {
            (None, Some((at, _))) => Some(at + START_HOLD),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MulticastCounters {
    /// Copies sent on links (one per tree branch per packet): the link stress.
    pub copies_sent: u64,
    pub delivered: u64,
    /// Copies that arrived from a neighbour other than the tree parent (routes settling).
    pub rpf_dropped: u64,
    /// Datagrams for groups with no member anywhere.
    pub no_members: u64,
    /// Reliable-group datagrams given up on after waiting for a gap.
    pub order_skipped: u64,
}

impl Node {
    fn trees(&mut self) -> (SourceTrees<'_>, &mut weft_multicast::Multicast) {
        (
            SourceTrees::new(&mut self.lsdb, &self.spt_cache),
            &mut self.mc,
        )
    }

    /// A local socket joins `group` (optionally only from `source`).
    pub fn mc_join(
        &mut self,
        now: Instant,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
        reliable: bool,
    ) -> Result<(), JoinError> {
        if let Some(rec) = self.mc.local_join(socket, group, source, reliable)? {
            self.flood_membership(&rec, None);
        }
        self.after_input(now);
        Ok(())
    }

    pub fn mc_leave(
        &mut self,
        now: Instant,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
    ) -> Result<(), JoinError> {
        if let Some(rec) = self.mc.local_leave(socket, group, source)? {
            self.flood_membership(&rec, None);
        }
        self.after_input(now);
        Ok(())
    }

    /// A socket went away: every membership it held ends.
    pub fn mc_close(&mut self, now: Instant, socket: SocketId) {
        for rec in self.mc.local_close(socket) {
            self.flood_membership(&rec, None);
        }
        self.after_input(now);
    }

    /// Local sockets that should get a datagram from `source` to `group`.
    pub fn mc_local_receivers(&self, group: NodeId, source: NodeId) -> Vec<SocketId> {
        self.mc.db().local_receivers(group, source).collect()
    }

    pub fn mc_status(&mut self) -> MulticastStatus {
        let (trees, mc) = self.trees();
        mc.status(&trees)
    }

    pub fn mc_counters(&self) -> MulticastCounters {
        self.mc_counters
    }

    pub(super) fn push_membership(&mut self, idx: usize, rec: &MembershipRecord) {
        // Our own records are signed as they leave (Ed25519 is deterministic: every copy is
        // the same bytes); others' carry their origin's signature.
        let signed;
        let rec = if rec.origin() == self.cfg.id && rec.signature().is_none() {
            signed = self.trust.sign_membership(rec.clone());
            &signed
        } else {
            rec
        };
        let mut bytes = Vec::with_capacity(rec.encoded_len());
        rec.encode(&mut Writer::new(&mut bytes));
        self.neighbors[idx].flood.push(membership_id(rec), bytes);
    }

    pub(super) fn flood_membership(&mut self, rec: &MembershipRecord, except: Option<usize>) {
        for idx in 0..self.neighbors.len() {
            if Some(idx) != except && self.neighbors[idx].state == LinkState::Up {
                self.push_membership(idx, rec);
            }
        }
    }

    pub(super) fn membership_full_sync(&mut self, idx: usize) {
        let records: Vec<MembershipRecord> = self.mc.records().cloned().collect();
        for rec in &records {
            self.push_membership(idx, rec);
        }
    }

    /// A membership record from neighbour `idx`; returns its id for the acknowledgement.
    pub(super) fn on_membership(&mut self, idx: usize, bytes: &[u8]) -> Option<StateId> {
        let Ok(rec) = MembershipRecord::decode(&mut Reader::new(bytes)) else {
            self.counters.malformed += 1;
            return None;
        };
        let id = membership_id(&rec);
        match self.trust.check_membership(&rec) {
            Ok(()) => {}
            // Its origin's advert has not arrived yet: no ack, so the sender resends it.
            Err(crate::overlay::trust::Refused::UnknownOrigin) => return None,
            // Refused for good (counted): acknowledged so the sender stops resending.
            Err(_) => return Some(id),
        }
        match self.mc.apply(rec.clone()) {
            Applied::Newer => self.flood_membership(&rec, Some(idx)),
            Applied::Same => {}
            Applied::Older => {
                if let Some(ours) = self.mc.record(rec.origin(), rec.group()).cloned() {
                    self.push_membership(idx, &ours);
                }
            }
            Applied::Corrected(fix) => self.flood_membership(&fix, None),
        }
        Some(id)
    }

    /// Routing lost these nodes: their memberships stop attracting traffic at once.
    pub(super) fn forget_unreachable_members(&mut self) {
        let gone: Vec<NodeId> = self
            .mc
            .records()
            .map(|r| r.origin())
            .filter(|&n| n != self.cfg.id && !self.first_hops.contains_key(&n))
            .collect();
        for n in gone {
            self.mc.forget_node(n);
        }
    }

    /// A datagram (or fragment) to a group: send one copy down each branch of the source's
    /// tree that leads to members, and deliver here if this node is one.
    pub(super) fn forward_multicast(
        &mut self,
        now: Instant,
        origin: Origin,
        mut packet: Vec<u8>,
        header: RoutedHeader,
    ) {
        let (source, group) = (header.src.node, header.dst.node);
        let from = match origin {
            Origin::Relayed(idx) => self.neighbors[idx].id,
            Origin::Local | Origin::Rerouted => None,
        };
        let fwd = {
            let (trees, mc) = self.trees();
            mc.forwarding(&trees, source, group).clone()
        };
        if let Origin::Relayed(_) = origin {
            if fwd.upstream != from {
                self.mc_counters.rpf_dropped += 1;
                return;
            }
            if header.ttl <= 1 {
                self.counters.ttl_expired += 1;
                return;
            }
            packet[RoutedHeader::TTL_OFFSET] = header.ttl - 1;
        }
        if origin == Origin::Local && fwd.next_hops.is_empty() && !fwd.deliver_locally {
            self.mc_counters.no_members += 1;
        }
        let flow = flow_of(header.src, header.dst);
        for hop in &fwd.next_hops {
            let Some(idx) = self
                .neighbors
                .iter()
                .position(|n| n.id == Some(hop.neighbour) && n.state == LinkState::Up)
            else {
                continue;
            };
            let mut copy = packet.clone();
            copy[2] = if hop.reliable {
                Class::Reliable as u8
            } else {
                Class::BestEffort as u8
            };
            self.mc_counters.copies_sent += 1;
            self.neighbors[idx].mcast_out += 1;
            if hop.reliable {
                if let Some(a) = self.neighbors[idx].arq.as_mut() {
                    if a.enqueue_with_limit(flow, copy, RELAYED_QUEUE_LIMIT_BYTES)
                        .is_err()
                    {
                        self.counters.dropped_backpressure += 1;
                    }
                }
            } else {
                let mut buf = Vec::with_capacity(HEADER_LEN + copy.len());
                let mut w = Writer::new(&mut buf);
                Header::new(PacketKind::Data, self.cfg.id, self.incarnation).encode(&mut w);
                w.bytes(&copy);
                self.send_to(idx, buf);
            }
        }
        // At the source, local members get their copy by loopback (the sender's choice).
        if fwd.deliver_locally && origin != Origin::Local {
            self.deliver_group(now, &packet, header);
        }
    }

    fn deliver_group(&mut self, now: Instant, packet: &[u8], header: RoutedHeader) {
        let Ok((_, body)) = RoutedHeader::decode(packet) else {
            return;
        };
        let Ok((frag, bytes)) = FragmentHeader::decode(body) else {
            self.counters.malformed += 1;
            return;
        };
        let Some(payload) = self.reassembler.add(
            now,
            header.src,
            frag.id,
            frag.offset as usize,
            frag.total as usize,
            bytes,
        ) else {
            return;
        };
        if header.class != Class::Reliable {
            self.mc_counters.delivered += 1;
            self.events.push_back(NodeEvent::Datagram {
                src: header.src,
                dst: header.dst,
                payload,
            });
            return;
        }
        // Reliable group: deliver in the source's order (ids count per destination).
        let key = (header.src, header.dst.node);
        let r = self.mc_order.entry(key).or_default();
        r.first.get_or_insert((now, frag.id));
        if let Some(next) = r.next {
            if frag.id.wrapping_sub(next) >= 1 << 31 {
                // Older than what was delivered: a late copy (or a duplicate after a reroute).
                return;
            }
        }
        r.held.insert(frag.id, (now, header.dst, payload));
        self.release_in_order(key, now);
    }

    fn release_in_order(&mut self, key: (Endpoint, NodeId), now: Instant) {
        let Some(r) = self.mc_order.get_mut(&key) else {
            return;
        };
        if r.next.is_none() {
            let Some((at, first_id)) = r.first else {
                return;
            };
            if now < at + START_HOLD {
                return;
            }
            // The order starts at the oldest id held, counted from the first one seen.
            let start = r
                .held
                .keys()
                .copied()
                .min_by_key(|id| id.wrapping_sub(first_id).wrapping_add(1 << 31));
            r.next = start;
        }
        loop {
            let Some(next) = r.next else { return };
            if let Some((_, dst, payload)) = r.held.remove(&next) {
                r.next = Some(next.wrapping_add(1));
                self.mc_counters.delivered += 1;
                self.events.push_back(NodeEvent::Datagram {
                    src: key.0,
                    dst,
                    payload,
                });
                continue;
            }
            // A gap: wait for it, up to ORDER_HOLD after the oldest held datagram arrived.
            let oldest = r.held.values().map(|(t, _, _)| *t).min();
            match oldest {
                Some(t) if now.saturating_since(t) >= ORDER_HOLD => {
                    let skip_to = r
                        .held
                        .keys()
                        .copied()
                        .min_by_key(|id| id.wrapping_sub(next));
                    if let Some(id) = skip_to {
                        self.mc_counters.order_skipped += id.wrapping_sub(next) as u64;
                        r.next = Some(id);
                    }
                }
                _ => return,
            }
        }
    }

    /// Reliable groups waiting on a gap get their hold timer here.
    pub(super) fn mc_order_timeouts(&mut self, now: Instant) {
        let keys: Vec<(Endpoint, NodeId)> = self
            .mc_order
            .iter()
            .filter(|(_, r)| !r.held.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.release_in_order(k, now);
        }
    }

    pub(super) fn mc_next_deadline(&self) -> Option<Instant> {
        self.mc_order
            .values()
            .flat_map(|r| {
                r.held
                    .values()
                    .map(|(t, _, _)| *t + ORDER_HOLD)
                    .chain(r.start_deadline())
            })
            .min()
    }
}
