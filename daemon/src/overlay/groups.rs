//! `Groups`: emulated IP multicast at this node. Membership records are flooded like link
//! state (the node carries them on the links' reliable flooding) and withdrawn when routing
//! loses their node; each packet follows its source's shortest-path tree, pruned to members,
//! so it crosses each link at most once. Groups whose members asked for it ride the hop-by-hop
//! reliable links and are delivered here in per-source order.

use crate::overlay::events::NodeEvent;
use crate::overlay::routing::{Routing, ShortestPathTree};
use crate::overlay::trust::Refused;
use crate::overlay::wire::{GroupDatagram, RoutedHeader, StateId, StateKind};
use ahash::AHashMap as HashMap;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use weft_core::{Endpoint, Instant, NodeId, Reader, Writer};
use weft_multicast::{
    Applied, Forwarding, JoinError, MembershipRecord, MulticastStatus, ShortestPaths, SocketFilter,
    SocketId,
};
use weft_secure::SecretKey;

/// A reliable group's receiver waits this long for a missing datagram before giving up on it.
const ORDER_HOLD: Duration = Duration::from_secs(2);
/// A reliable group's receiver holds the first datagrams of a source this long before
/// choosing where the source's order starts: relays forward out of order, so the first
/// datagram to arrive may be the second sent while the first is being repaired upstream.
const START_HOLD: Duration = Duration::from_millis(200);

/// Shortest-path trees of the sources packets came from, for one link-state generation.
#[derive(Default)]
struct SourceTrees {
    generation: u64,
    trees: HashMap<NodeId, ShortestPathTree>,
}

impl SourceTrees {
    /// Makes sure `source`'s tree for the current routing generation is at hand.
    fn ensure(&mut self, routing: &mut Routing, source: NodeId) {
        if self.generation != routing.generation() {
            self.generation = routing.generation();
            self.trees.clear();
        }
        if !self.trees.contains_key(&source) {
            let tree = routing.tree_from(source);
            self.trees.insert(source, tree);
        }
    }
}

/// The trees as the multicast crate asks for them. Only sources made sure of are answered
/// (`forwarding` asks about its source alone; `status` asks nothing but the generation).
impl ShortestPaths for SourceTrees {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn parent(&self, source: NodeId, node: NodeId) -> Option<NodeId> {
        self.trees.get(&source)?.parent(node)
    }
}

/// The identity and version of a membership record, as flooding acknowledges it.
fn membership_id(rec: &MembershipRecord) -> StateId {
    let v = rec.version();
    StateId {
        kind: StateKind::Membership,
        origin: rec.origin(),
        key: rec.group().0,
        version: ((v.epoch as u128) << 32) | v.seq as u128,
    }
}

/// A membership record ready for flooding.
pub struct FloodRecord {
    pub id: StateId,
    pub bytes: Vec<u8>,
}

impl FloodRecord {
    fn of(rec: &MembershipRecord) -> Self {
        let mut bytes = Vec::with_capacity(rec.encoded_len());
        rec.encode(&mut Writer::new(&mut bytes));
        FloodRecord {
            id: membership_id(rec),
            bytes,
        }
    }
}

/// Signs this node's own records as they leave (secure overlays; others' records carry
/// their origin's signature already). Ed25519 is deterministic: every copy is the same bytes.
#[derive(Clone)]
struct Signer {
    local: NodeId,
    key: Option<Arc<SecretKey>>,
}

impl Signer {
    fn record(&self, rec: &MembershipRecord) -> FloodRecord {
        match &self.key {
            Some(key) if rec.origin() == self.local && rec.signature().is_none() => {
                FloodRecord::of(&rec.clone().signed(key))
            }
            _ => FloodRecord::of(rec),
        }
    }
}

/// What to do about a membership record a neighbour sent.
pub enum MembershipOutcome {
    /// Installed: flood it to every neighbour but the sender.
    Flood(FloodRecord),
    /// We hold a newer version: send ours back to the sender.
    Reply(FloodRecord),
    /// The record needed correcting: flood the correction to everyone.
    FloodAll(FloodRecord),
    Nothing,
}

/// Per (source, group) delivery order for reliable groups.
#[derive(Default)]
struct Reorder {
    /// The id to deliver next; `None` during the start hold.
    next: Option<u32>,
    /// The first datagram of this source arrived then, with this id.
    first: Option<(Instant, u32)>,
    /// Arrival, destination, the sender's TTL and the payload of each datagram held.
    held: BTreeMap<u32, (Instant, Endpoint, u8, Vec<u8>)>,
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

pub struct Groups {
    local: NodeId,
    signer: Signer,
    mc: weft_multicast::Multicast,
    trees: SourceTrees,
    order: HashMap<(Endpoint, NodeId), Reorder>,
    /// Next datagram id per (local source endpoint, group): receivers order per source
    /// endpoint, so each needs its own gap-free sequence.
    next_id: HashMap<(Endpoint, NodeId), u32>,
    counters: MulticastCounters,
    malformed: u64,
}

type Events = VecDeque<NodeEvent>;

impl Groups {
    /// `signer`: this node's key in a secure overlay (its records are signed).
    pub fn new(local: NodeId, epoch: u64, signer: Option<Arc<SecretKey>>) -> Self {
        Groups {
            local,
            signer: Signer { local, key: signer },
            mc: weft_multicast::Multicast::new(local, epoch),
            trees: SourceTrees::default(),
            order: HashMap::new(),
            next_id: HashMap::new(),
            counters: MulticastCounters::default(),
            malformed: 0,
        }
    }

    pub fn counters(&self) -> MulticastCounters {
        self.counters
    }

    /// Membership records and group datagrams that failed to decode.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// A local socket joins `group` (optionally only from `source`): the record to flood.
    pub fn join(
        &mut self,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
        reliable: bool,
    ) -> Result<Option<FloodRecord>, JoinError> {
        let signer = &self.signer;
        Ok(self
            .mc
            .local_join(socket, group, source, reliable)?
            .map(|r| signer.record(&r)))
    }

    pub fn leave(
        &mut self,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
    ) -> Result<Option<FloodRecord>, JoinError> {
        let signer = &self.signer;
        Ok(self
            .mc
            .local_leave(socket, group, source)?
            .map(|r| signer.record(&r)))
    }

    /// A local socket's filter of `group` as the kernel holds it (`None`: not a member),
    /// for sockets whose memberships the kernel applies: the record to flood.
    pub fn set_filter(
        &mut self,
        socket: SocketId,
        group: NodeId,
        filter: Option<SocketFilter>,
        reliable: bool,
    ) -> Option<FloodRecord> {
        self.mc
            .local_set_filter(socket, group, filter, reliable)
            .map(|r| self.signer.record(&r))
    }

    /// Some local socket is a member of `group`.
    pub fn has_local_member(&self, group: NodeId) -> bool {
        self.mc.db().local_sockets_in(group) > 0
    }

    /// Whether a datagram a local program sends to `group` with multicast TTL `hops` stays
    /// on this host. TTL 0 keeps it here when this host is a member; Linux sends a TTL 0
    /// datagram from a host that is not onto the link all the same (receivers see TTL 0),
    /// and so does the overlay.
    pub fn stays_on_host(&self, hops: u8, group: NodeId) -> bool {
        hops == 0 && self.has_local_member(group)
    }

    /// A socket went away: every membership it held ends.
    pub fn close(&mut self, socket: SocketId) -> Vec<FloodRecord> {
        let signer = &self.signer;
        self.mc
            .local_close(socket)
            .iter()
            .map(|r| signer.record(r))
            .collect()
    }

    /// Local sockets that should get a datagram from `source` to `group`.
    pub fn local_receivers(&self, group: NodeId, source: NodeId) -> Vec<SocketId> {
        self.mc.db().local_receivers(group, source).collect()
    }

    pub fn status(&self) -> MulticastStatus {
        self.mc.status(&self.trees)
    }

    /// Every record held, for a new neighbour's full sync.
    pub fn full_sync(&self) -> Vec<FloodRecord> {
        self.mc.records().map(|r| self.signer.record(r)).collect()
    }

    /// A membership record from a neighbour: its id to acknowledge, and what to flood.
    /// `check` says whether its origin signed it (`Trust`), before the database sees it: a
    /// record refused for good is acknowledged (so the sender stops resending it) and
    /// dropped; one whose origin's key is not known yet is not acknowledged, so it comes
    /// again after the origin's advert.
    pub fn on_membership(
        &mut self,
        bytes: &[u8],
        check: impl FnOnce(&MembershipRecord) -> Result<(), Refused>,
    ) -> Option<(StateId, MembershipOutcome)> {
        let Ok(rec) = MembershipRecord::decode(&mut Reader::new(bytes)) else {
            self.malformed += 1;
            return None;
        };
        let id = membership_id(&rec);
        match check(&rec) {
            Ok(()) => {}
            Err(Refused::UnknownOrigin) => return None,
            Err(_) => return Some((id, MembershipOutcome::Nothing)),
        }
        let signer = &self.signer;
        let outcome = match self.mc.apply(rec.clone()) {
            Applied::Newer => MembershipOutcome::Flood(FloodRecord::of(&rec)),
            Applied::Same => MembershipOutcome::Nothing,
            Applied::Older => match self.mc.record(rec.origin(), rec.group()) {
                Some(ours) => MembershipOutcome::Reply(signer.record(ours)),
                None => MembershipOutcome::Nothing,
            },
            Applied::Corrected(fix) => MembershipOutcome::FloodAll(signer.record(&fix)),
        };
        Some((id, outcome))
    }

    /// Routing lost these nodes: their memberships stop attracting traffic at once.
    pub fn forget_unreachable(&mut self, reachable: impl Fn(NodeId) -> bool) {
        let gone: Vec<NodeId> = self
            .mc
            .records()
            .map(|r| r.origin())
            .filter(|&n| n != self.local && !reachable(n))
            .collect();
        for n in gone {
            self.mc.forget_node(n);
        }
    }

    /// This node's part of `source`'s tree toward the members of `group`.
    pub fn forwarding(
        &mut self,
        routing: &mut Routing,
        source: NodeId,
        group: NodeId,
    ) -> &Forwarding {
        self.trees.ensure(routing, source);
        self.mc.forwarding(&self.trees, source, group)
    }

    pub fn count_rpf_drop(&mut self) {
        self.counters.rpf_dropped += 1;
    }

    pub fn count_no_members(&mut self) {
        self.counters.no_members += 1;
    }

    pub fn count_copies(&mut self, copies: u64) {
        self.counters.copies_sent += copies;
    }

    /// The id of the next datagram from local `src` to `group`; `first` seeds a new sequence.
    pub fn next_datagram_id(&mut self, src: Endpoint, group: NodeId, first: u32) -> u32 {
        let next = self.next_id.entry((src, group)).or_insert(first);
        let id = *next;
        *next = next.wrapping_add(1);
        id
    }

    /// A whole group datagram ([`GroupDatagram`], datagram `id` of its source) for a group
    /// this node is a member of.
    pub fn deliver(
        &mut self,
        now: Instant,
        header: &RoutedHeader,
        id: u32,
        datagram: Vec<u8>,
        reliable: bool,
        events: &mut Events,
    ) {
        let Ok((ttl, payload)) = GroupDatagram::decode(datagram) else {
            self.malformed += 1;
            return;
        };
        if !reliable {
            self.counters.delivered += 1;
            events.push_back(NodeEvent::Datagram {
                src: header.src,
                dst: header.dst,
                payload,
                ttl,
            });
            return;
        }
        // Reliable group: deliver in the source's order (ids count per destination).
        let key = (header.src, header.dst.node);
        let r = self.order.entry(key).or_default();
        r.first.get_or_insert((now, id));
        if let Some(next) = r.next {
            if id.wrapping_sub(next) >= 1 << 31 {
                // Older than what was delivered: a late copy (or a duplicate after a reroute).
                return;
            }
        }
        r.held.insert(id, (now, header.dst, ttl, payload));
        self.release_in_order(key, now, events);
    }

    fn release_in_order(&mut self, key: (Endpoint, NodeId), now: Instant, events: &mut Events) {
        let Some(r) = self.order.get_mut(&key) else {
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
            if let Some((_, dst, ttl, payload)) = r.held.remove(&next) {
                r.next = Some(next.wrapping_add(1));
                self.counters.delivered += 1;
                events.push_back(NodeEvent::Datagram {
                    src: key.0,
                    dst,
                    payload,
                    ttl,
                });
                continue;
            }
            // A gap: wait for it, up to ORDER_HOLD after the oldest held datagram arrived.
            let oldest = r.held.values().map(|(t, ..)| *t).min();
            match oldest {
                Some(t) if now.saturating_since(t) >= ORDER_HOLD => {
                    let skip_to = r
                        .held
                        .keys()
                        .copied()
                        .min_by_key(|id| id.wrapping_sub(next));
                    if let Some(id) = skip_to {
                        self.counters.order_skipped += id.wrapping_sub(next) as u64;
                        r.next = Some(id);
                    }
                }
                _ => return,
            }
        }
    }

    /// Reliable groups waiting on a gap get their hold timer here.
    pub fn handle_timeout(&mut self, now: Instant, events: &mut Events) {
        let keys: Vec<(Endpoint, NodeId)> = self
            .order
            .iter()
            .filter(|(_, r)| !r.held.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.release_in_order(k, now, events);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.order
            .values()
            .flat_map(|r| {
                r.held
                    .values()
                    .map(|(t, ..)| *t + ORDER_HOLD)
                    .chain(r.start_deadline())
            })
            .min()
    }
}
