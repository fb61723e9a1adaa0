//! `Node`: one overlay daemon's protocol state, as a thin coordinator over owners that keep
//! their state private and talk through it, as quinn-proto's `Endpoint` does with its
//! connections:
//!
//! - [`Links`]: neighbours, hellos, liveness, flooding queues, the hop-by-hop ARQ, the outbox;
//!   it reports [`LinkEvent`]s and hands received routed packets and flooded records back.
//! - [`Routing`]: the link-state database, shortest paths, first hops.
//! - [`Forwarder`]: the forwarding decision for packets that leave (CE marks, back-pressure).
//! - [`Sessions`]: end-to-end sessions ending here; the node pumps their segments.
//! - [`Groups`]: multicast membership, trees and reliable-group order.
//! - [`Datagrams`]: fragmentation and reassembly.
//! - [`ServiceAddresses`]: who owns each service address, and where traffic to one goes.
//! - [`Trust`]: which key may speak for each node; flooded records are checked against it
//!   before Routing or Groups see them (secure overlays; Routing and Groups sign their own).
//!
//! Inputs record what changed; floods, route recomputation and the session pump run once per
//! batch, in the first `poll_transmit` after it (the I/O layer hands a receive batch over,
//! then drains).

use crate::overlay::config::{NeighborConfig, NodeConfig};
use crate::overlay::datagrams::Datagrams;
use crate::overlay::events::{NodeEvent, SessionId};
use crate::overlay::forwarding::{Forwarder, Origin};
use crate::overlay::fragment::MAX_DATAGRAM;
use crate::overlay::groups::{FloodRecord, Groups, MembershipOutcome, MulticastCounters};
use crate::overlay::links::{Inbound, LinkEvent, LinkId, Links, LinksConfig, TransmitMeta};
use crate::overlay::neighbor::{LinkState, Metric};
use crate::overlay::routing::{AdvertOutcome, Routing, RoutingStats};
use crate::overlay::services::{Resolved, ServiceAddresses, ServiceFlood, ServiceOutcome};
use crate::overlay::sessions::{OpenError, SessionSummary, Sessions, SessionsConfig};
use crate::overlay::status::{Counters, NodeStatus};
use crate::overlay::trust::Trust;
use crate::overlay::wire::{
    self, Class, GroupDatagram, LinkStateAdvert, Proto, RoutedHeader, RoutedPacket, StateId,
    StateKind,
};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;
use tracing::debug;
use weft_core::{Endpoint, Instant, NodeId};
use weft_multicast::{JoinError, MulticastStatus, SocketFilter, SocketId};
use weft_transport::session::{RecoveryMode, SessionError, SessionEvent, SessionStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SendError {
    #[error("datagram larger than {MAX_DATAGRAM} bytes")]
    TooLarge,
    #[error("no route to the destination node")]
    NoRoute,
}

const HOUSEKEEPING: Duration = Duration::from_secs(1);

pub struct Node {
    cfg: NodeConfig,
    incarnation: u32,
    links: Links,
    routing: Routing,
    forwarder: Forwarder,
    datagrams: Datagrams,
    sessions: Sessions,
    groups: Groups,
    services: ServiceAddresses,
    /// The local listeners changed: service records follow at the next poll.
    listeners_changed: bool,
    /// The latest `now` any input carried (for inputs that come without one).
    clock: Instant,
    trust: Trust,
    events: VecDeque<NodeEvent>,
    /// Input arrived (at this time) since the last poll: floods, routes and sessions have
    /// work for the next `poll_transmit`.
    pending: Option<Instant>,
    /// Flooded records that failed to decode.
    malformed: u64,
    next_housekeeping: Instant,
    started: Instant,
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
        cfg.derive();
        let incarnation = incarnation.max(1);
        let neighbors: Vec<(SocketAddr, Option<NodeId>)> =
            cfg.neighbors.iter().map(|n| (n.addr, n.id)).collect();
        let links = Links::new(
            LinksConfig {
                id: cfg.id,
                incarnation,
                hello_interval: cfg.hello_interval,
                dead_interval: cfg.dead_interval,
                metric: cfg.metric,
                mtu: cfg.mtu,
                arq: cfg.arq.clone(),
            },
            &neighbors,
            now,
        );
        let sessions = Sessions::new(
            SessionsConfig {
                local: cfg.id,
                session: cfg.session.clone(),
                class: match cfg.recovery {
                    RecoveryMode::HopByHop => Class::Reliable,
                    RecoveryMode::EndToEndOnly => Class::BestEffort,
                },
                ttl: cfg.default_ttl,
            },
            seed,
        );
        let signer = cfg.trust.as_ref().map(|t| t.identity.clone());
        let mut node = Node {
            incarnation,
            links,
            routing: Routing::new(cfg.id, first_seq, signer.clone()),
            forwarder: Forwarder::default(),
            datagrams: Datagrams::new(seed),
            sessions,
            groups: Groups::new(cfg.id, first_seq, signer),
            trust: Trust::new(cfg.id, cfg.trust.clone()),
            services: ServiceAddresses::new(
                weft_services::ServicesConfig {
                    local: cfg.id,
                    epoch: first_seq,
                    services: cfg.services.clone(),
                    stable_period: cfg.service_stable_period,
                    // What a restarted node needs to link up and hear its neighbours' claims.
                    claim_hold: cfg.dead_interval + cfg.hello_interval,
                },
                cfg.trust.as_ref().map(|t| t.identity.clone()),
                now,
            ),
            listeners_changed: false,
            clock: now,
            events: VecDeque::new(),
            pending: None,
            malformed: 0,
            next_housekeeping: now + HOUSEKEEPING,
            started: now,
            cfg,
        };
        node.originate(false);
        node.refresh_routes();
        node.flush_services();
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

    /// A neighbour's link proved `key` for `node` (link security's handshake): that key alone
    /// may sign its flooded state.
    pub fn bind_neighbor_key(&mut self, node: NodeId, key: weft_secure::PublicKey) {
        self.trust.bind_neighbor(node, key);
    }

    // ----- inputs -------------------------------------------------------------------------

    /// A datagram arrived on the overlay socket.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let inbound = self.links.receive(now, from, data);
        self.link_events(now);
        match inbound {
            Some(Inbound::State { link, body }) => self.on_state(link, body),
            Some(Inbound::Routed { link, packet }) => {
                self.forward(now, Origin::Relayed(link), packet);
            }
            None => {}
        }
        self.touched(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.links.handle_timeout(now);
        self.link_events(now);
        self.sessions.handle_timeout(now, &mut self.events);
        self.groups.handle_timeout(now, &mut self.events);
        self.services.handle_timeout(now);
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.datagrams.expire(now);
            self.routing.forget_long_unreachable(now);
            let routing = &self.routing;
            let known = routing.known_nodes();
            self.services
                .retain_origins(now, |n| known.binary_search(&n).is_ok());
            let sessions = &self.sessions;
            self.services
                .retain_sessions(|id| sessions.session(id).is_some());
        }
        self.touched(now);
    }

    /// The earliest time `handle_timeout` must run (at once while a batch awaits its poll).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(at) = self.pending {
            return Some(at);
        }
        let deadlines = [
            self.links.poll_timeout(),
            self.datagrams.next_expiry(),
            self.sessions.next_deadline(),
            self.groups.next_deadline(),
            self.services.next_deadline(),
        ];
        Some(
            deadlines
                .into_iter()
                .flatten()
                .fold(self.next_housekeeping, Instant::min),
        )
    }

    /// Appends the next datagram to send to `buf` (which the caller owns and reuses) and says
    /// where it goes: control and best-effort traffic first, then the reliable links in turn
    /// (each within its congestion window and pacing), refilled from sessions.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<TransmitMeta> {
        if self.pending.take().is_some() {
            // Once per batch of input: what the batch changed.
            self.clock = self.clock.max(now);
            if std::mem::take(&mut self.listeners_changed) {
                self.services.set_listening(now, self.sessions.listeners());
            }
            self.refresh_routes();
            self.flush_services();
            self.links.flush_floods(now);
            self.pump_sessions(now);
        }
        if let Some(t) = self.links.poll_transmit(now, buf) {
            self.link_events(now);
            return Some(t);
        }
        if self.sessions.has_work() {
            self.pump_sessions(now);
            let t = self.links.poll_transmit(now, buf);
            self.link_events(now);
            return t;
        }
        None
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    fn touched(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        self.pending = Some(self.pending.map_or(now, |t| t.min(now)));
    }

    // ----- between the owners -------------------------------------------------------------

    /// What the links reported.
    fn link_events(&mut self, now: Instant) {
        while let Some(event) = self.links.poll_event() {
            match event {
                LinkEvent::Up(link) => {
                    // Full sync: the neighbour gets every record we hold.
                    let adverts: Vec<LinkStateAdvert> = self.routing.adverts().cloned().collect();
                    for a in &adverts {
                        self.links.push_record(link, a.id(), encode_advert(a));
                    }
                    for rec in self.groups.full_sync() {
                        self.links.push_record(link, rec.id, rec.bytes);
                    }
                    for rec in self.services.full_sync() {
                        self.links.push_record(link, rec.id, rec.bytes);
                    }
                    self.originate(false);
                }
                LinkEvent::Down { stranded, .. } => {
                    self.originate(false);
                    self.refresh_routes();
                    if !stranded.is_empty() {
                        debug!(packets = stranded.len(), "rerouting packets of a dead link");
                        self.forwarder.count_rerouted(stranded.len());
                    }
                    for (_, packet) in stranded {
                        self.forward(now, Origin::Rerouted, Cow::Owned(packet));
                    }
                }
                LinkEvent::CostChanged => self.originate(false),
                LinkEvent::Writable(flow) => self.sessions.flow_writable(flow),
            }
        }
    }

    /// Rebuilds our advert from the Up links and floods it if it changed.
    fn originate(&mut self, force: bool) {
        if let Some(advert) = self.routing.originate(self.links.adjacencies(), force) {
            self.links
                .flood_record(advert.id(), &encode_advert(&advert), None);
        }
    }

    /// Recomputes routes if the database changed, and tells whoever depends on them.
    fn refresh_routes(&mut self) {
        if !self.routing.refresh() {
            return;
        }
        self.sessions.routes_changed();
        let routing = &self.routing;
        self.groups.forget_unreachable(|n| routing.is_reachable(n));
        self.services
            .set_live(self.clock, routing.routes().map(|(n, _, _)| n));
        self.flush_services();
        self.events.push_back(NodeEvent::RoutesChanged);
    }

    /// Floods our service record if it changed, and resets the local sessions whose service
    /// address moved away from the owner they reached (it died, left, or lost a merge).
    fn flush_services(&mut self) {
        if let Some(rec) = self.services.take_flood() {
            self.links.flood_record(rec.id, &rec.bytes, None);
        }
        for id in self.services.take_resets() {
            debug!(session = id, "service owner gone: resetting the session");
            self.events.push_back(NodeEvent::Session {
                id,
                event: SessionEvent::Failed(SessionError::Reset),
            });
            self.sessions
                .with_session(id, &mut self.events, |s| s.abort());
        }
    }

    /// A service record from `link`: install, flood on, answer. Returns what to acknowledge.
    fn on_service_record(&mut self, link: LinkId, bytes: &[u8]) -> Option<StateId> {
        let trust = &mut self.trust;
        let (id, outcome) =
            self.services
                .on_record(self.clock, bytes, |rec| match trust.check_service(rec) {
                    Ok(()) => Ok(()),
                    Err(why) => {
                        debug!(origin = %rec.origin, ?why, "service record refused");
                        Err(why)
                    }
                })?;
        match outcome {
            ServiceOutcome::Flood(ServiceFlood { id, bytes }) => {
                self.links.flood_record(id, &bytes, Some(link))
            }
            ServiceOutcome::Reply(ServiceFlood { id, bytes }) => {
                self.links.push_record(link, id, bytes)
            }
            ServiceOutcome::FloodAll(ServiceFlood { id, bytes }) => {
                self.links.flood_record(id, &bytes, None)
            }
            ServiceOutcome::Nothing => {}
        }
        self.flush_services();
        Some(id)
    }

    fn flood_membership(&mut self, rec: FloodRecord, except: Option<LinkId>) {
        self.links.flood_record(rec.id, &rec.bytes, except);
    }

    /// Flooded records from `link`: install, flood on, answer, acknowledge.
    fn on_state(&mut self, link: LinkId, body: &[u8]) {
        let Ok(records) = wire::decode_state(body) else {
            self.malformed += 1;
            return;
        };
        let mut acks = Vec::with_capacity(records.len());
        for (kind, bytes) in records {
            match kind {
                StateKind::LinkState => {
                    let Ok(advert) = LinkStateAdvert::decode(bytes) else {
                        self.malformed += 1;
                        continue;
                    };
                    acks.push(advert.id());
                    // Only its origin may speak for a node: refused (and counted) before the
                    // database sees it, acknowledged so the sender stops resending it.
                    if let Err(why) = self.trust.check_advert(&advert) {
                        debug!(origin = %advert.origin, ?why, "advert refused");
                        continue;
                    }
                    match self.routing.on_advert(advert) {
                        AdvertOutcome::Flood(a) => {
                            self.links
                                .flood_record(a.id(), &encode_advert(&a), Some(link))
                        }
                        AdvertOutcome::Reply(ours) => {
                            self.links
                                .push_record(link, ours.id(), encode_advert(&ours))
                        }
                        AdvertOutcome::Reoriginate => self.originate(true),
                        AdvertOutcome::Nothing => {}
                    }
                }
                StateKind::Membership => {
                    let trust = &mut self.trust;
                    let checked = self
                        .groups
                        .on_membership(bytes, |rec| trust.check_membership(rec));
                    let Some((id, outcome)) = checked else {
                        continue;
                    };
                    acks.push(id);
                    match outcome {
                        MembershipOutcome::Flood(rec) => self.flood_membership(rec, Some(link)),
                        MembershipOutcome::Reply(rec) => {
                            self.links.push_record(link, rec.id, rec.bytes)
                        }
                        MembershipOutcome::FloodAll(rec) => self.flood_membership(rec, None),
                        MembershipOutcome::Nothing => {}
                    }
                }
                StateKind::Service => {
                    if let Some(id) = self.on_service_record(link, bytes) {
                        acks.push(id);
                    }
                }
            }
        }
        self.links.send_state_acks(link, &acks);
    }

    /// Delivers or forwards a routed packet (decoded once here, then passed along). Returns
    /// a local packet that a reliable link refused, so the sender can hold it.
    fn forward(&mut self, now: Instant, origin: Origin, packet: Cow<'_, [u8]>) -> Option<Vec<u8>> {
        let Ok(view) = RoutedPacket::new_checked(&packet[..]) else {
            self.malformed += 1;
            return None;
        };
        let header = view.header();
        if !self.forwarder.admit_source(&self.routing, origin, &header) {
            return None;
        }
        if header.dst.node.is_multicast() {
            self.forward_group(now, origin, &header, &packet);
            return None;
        }
        if header.dst.node == self.cfg.id {
            self.deliver_local(now, &header, &packet[RoutedHeader::LEN..]);
            if let Cow::Owned(buf) = packet {
                self.links.recycle(buf);
            }
            return None;
        }
        if self.routing.is_stale() {
            self.refresh_routes();
        }
        self.forwarder
            .unicast(now, &mut self.links, &self.routing, origin, &header, packet)
    }

    fn deliver_local(&mut self, now: Instant, header: &RoutedHeader, body: &[u8]) {
        match header.proto {
            Proto::Datagram => {
                if let Some(whole) = self.datagrams.reassemble(now, header.src, body) {
                    self.datagrams.count_delivered();
                    self.events.push_back(NodeEvent::Datagram {
                        src: header.src,
                        dst: header.dst,
                        payload: whole.payload,
                        ttl: header.ttl,
                    });
                }
            }
            Proto::Session => {
                let routing = &self.routing;
                let reply = self.sessions.on_segment(
                    now,
                    header,
                    body,
                    |n| routing.is_reachable(n),
                    &mut self.events,
                );
                if let Some(reply) = reply {
                    self.forward(now, Origin::Local, Cow::Owned(reply));
                }
            }
        }
    }

    /// A datagram (or fragment) to a group: one copy down each branch of the source's tree
    /// that leads to members, and delivery here if this node is one.
    fn forward_group(
        &mut self,
        now: Instant,
        origin: Origin,
        header: &RoutedHeader,
        packet: &[u8],
    ) {
        let from = match origin {
            Origin::Relayed(link) => self.links.neighbor_id(link),
            Origin::Local | Origin::Rerouted => None,
        };
        let fwd = self
            .groups
            .forwarding(&mut self.routing, header.src.node, header.dst.node);
        if matches!(origin, Origin::Relayed(_)) && fwd.upstream != from {
            self.groups.count_rpf_drop();
            return;
        }
        let Ok(ttl) = self.forwarder.hop_ttl(origin, header) else {
            return;
        };
        let no_members =
            origin == Origin::Local && fwd.next_hops.is_empty() && !fwd.deliver_locally;
        // At the source, local members get their copy by loopback (the sender's choice).
        let deliver = fwd.deliver_locally && origin != Origin::Local;
        let copies =
            self.forwarder
                .copy_to_branches(&mut self.links, header, packet, ttl, &fwd.next_hops);
        self.groups.count_copies(copies);
        if no_members {
            self.groups.count_no_members();
        }
        if deliver {
            if let Some(whole) =
                self.datagrams
                    .reassemble(now, header.src, &packet[RoutedHeader::LEN..])
            {
                let reliable = header.class == Class::Reliable;
                self.groups.deliver(
                    now,
                    header,
                    whole.id,
                    whole.payload,
                    reliable,
                    &mut self.events,
                );
            }
        }
    }

    /// Moves segments from ready sessions onto links, each until it has nothing to send, its
    /// window closes, or its first link pushes back.
    fn pump_sessions(&mut self, now: Instant) {
        let routing = &self.routing;
        self.sessions
            .begin_pump(now, |n| routing.is_reachable(n), &mut self.events);
        while let Some((id, packet)) = self.sessions.next_segment(now, &mut self.events) {
            if let Some(refused) = self.forward(now, Origin::Local, Cow::Owned(packet)) {
                self.sessions.stall(id, refused, &mut self.events);
            }
        }
    }

    // ----- local requests: links and routes -----------------------------------------------

    /// Administratively cut (or heal) the link to the neighbour at `addr`: nothing is sent to
    /// it or accepted from it. False when no neighbour has that address.
    pub fn set_link_cut(&mut self, now: Instant, addr: SocketAddr, cut: bool) -> bool {
        let found = self.links.set_cut(addr, cut);
        self.touched(now);
        found
    }

    /// A reloaded admitted list (`admitted_keys`) for the records flooded to us.
    pub fn set_admitted(&mut self, admitted: Option<std::sync::Arc<weft_secure::Admitted>>) {
        self.trust.set_admitted(admitted);
    }

    /// Links to a new neighbour while running (`weft neighbor add`, a reload).
    pub fn add_neighbor(&mut self, now: Instant, n: NeighborConfig) -> Result<(), String> {
        self.links.add_neighbor(now, n.addr, n.id)?;
        self.cfg.neighbors.push(n);
        self.touched(now);
        Ok(())
    }

    /// Unlinks the neighbour at `addr` (telling it so); what its link held is rerouted.
    pub fn remove_neighbor(&mut self, now: Instant, addr: SocketAddr) -> Result<(), String> {
        self.links.remove_neighbor(now, addr)?;
        self.cfg.neighbors.retain(|c| c.addr != addr);
        self.link_events(now);
        self.touched(now);
        Ok(())
    }

    /// Every live link has delivered what it carries (see `Links::all_delivered`).
    pub fn links_delivered(&self) -> bool {
        self.links.all_delivered()
    }

    /// The node is stopping: every neighbour is told, so it reroutes at once.
    pub fn leave(&mut self, now: Instant) {
        self.links.leave(now);
        self.touched(now);
    }

    /// Each neighbour's address and node id (once known), in the order they were added.
    pub fn neighbors(&self) -> impl Iterator<Item = (SocketAddr, Option<NodeId>)> + '_ {
        self.links.neighbors()
    }

    /// Every node in the link-state database (reachable or not), sorted.
    pub fn known_nodes(&self) -> Vec<NodeId> {
        self.routing.known_nodes()
    }

    pub fn is_reachable(&self, node: NodeId) -> bool {
        self.routing.is_reachable(node)
    }

    /// Next hop and path cost toward every reachable node.
    pub fn routes(&self) -> impl Iterator<Item = (NodeId, NodeId, u64)> + '_ {
        self.routing.routes()
    }

    /// The link-state advert held for `origin` (ours included).
    pub fn advert(&self, origin: NodeId) -> Option<&LinkStateAdvert> {
        self.routing.advert(origin)
    }

    pub fn routing_stats(&self) -> RoutingStats {
        self.routing.stats()
    }

    // ----- local requests: datagrams ------------------------------------------------------

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
        let dst = match self.services.resolve(dst.node) {
            Resolved::Node(_) => dst,
            Resolved::Owner { owner, .. } => Endpoint::new(owner, dst.port),
            Resolved::NoOwner => {
                self.forwarder.count_no_route();
                return Err(SendError::NoRoute);
            }
        };
        if dst.node == self.cfg.id {
            self.events.push_back(NodeEvent::Datagram {
                src,
                dst,
                payload: payload.to_vec(),
                ttl: self.cfg.default_ttl,
            });
            return Ok(());
        }
        if self.routing.is_stale() {
            self.refresh_routes();
        }
        if self.routing.first_hop(dst.node).is_none() {
            self.forwarder.count_no_route();
            return Err(SendError::NoRoute);
        }
        let id = self.datagrams.take_id();
        let ttl = ttl.unwrap_or(self.cfg.default_ttl).max(1);
        self.send_fragments(now, src, dst, ttl, id, payload);
        Ok(())
    }

    /// Sends a datagram to a group. `hops` is the application's multicast TTL: it travels
    /// with the datagram (receivers report it), and any value reaches the whole overlay
    /// (every overlay host is one hop away, as most multicast programs assume with their
    /// default TTL of 1) unless [`Groups::stays_on_host`]. With `loopback`
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
                ttl: hops,
            });
        }
        if self.groups.stays_on_host(hops, dst.node) {
            return Ok(());
        }
        let id = self
            .groups
            .next_datagram_id(src, dst.node, self.datagrams.peek_id());
        let datagram = GroupDatagram::encode(hops, payload);
        self.send_fragments(now, src, dst, self.cfg.default_ttl, id, &datagram);
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
        let header = RoutedHeader {
            flags: 0,
            proto: Proto::Datagram,
            class: Class::BestEffort,
            ttl,
            src,
            dst,
        };
        for packet in Datagrams::fragments(self.cfg.routed_mtu(), header, id, payload) {
            self.forward(now, Origin::Local, Cow::Owned(packet));
        }
        self.touched(now);
    }

    // ----- local requests: groups ---------------------------------------------------------

    /// A local socket joins `group` (optionally only from `source`).
    pub fn mc_join(
        &mut self,
        now: Instant,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
        reliable: bool,
    ) -> Result<(), JoinError> {
        if let Some(rec) = self.groups.join(socket, group, source, reliable)? {
            self.flood_membership(rec, None);
        }
        self.touched(now);
        Ok(())
    }

    pub fn mc_leave(
        &mut self,
        now: Instant,
        socket: SocketId,
        group: NodeId,
        source: Option<NodeId>,
    ) -> Result<(), JoinError> {
        if let Some(rec) = self.groups.leave(socket, group, source)? {
            self.flood_membership(rec, None);
        }
        self.touched(now);
        Ok(())
    }

    /// A local socket's filter of `group`, as the kernel holds it (`None`: not a member).
    pub fn mc_set_filter(
        &mut self,
        now: Instant,
        socket: SocketId,
        group: NodeId,
        filter: Option<SocketFilter>,
        reliable: bool,
    ) {
        if let Some(rec) = self.groups.set_filter(socket, group, filter, reliable) {
            self.flood_membership(rec, None);
        }
        self.touched(now);
    }

    /// A socket went away: every membership it held ends.
    pub fn mc_close(&mut self, now: Instant, socket: SocketId) {
        for rec in self.groups.close(socket) {
            self.flood_membership(rec, None);
        }
        self.touched(now);
    }

    /// Local sockets that should get a datagram from `source` to `group`.
    pub fn mc_local_receivers(&self, group: NodeId, source: NodeId) -> Vec<SocketId> {
        self.groups.local_receivers(group, source)
    }

    pub fn mc_status(&self) -> MulticastStatus {
        self.groups.status()
    }

    pub fn mc_counters(&self) -> MulticastCounters {
        self.groups.counters()
    }

    // ----- local requests: sessions -------------------------------------------------------

    /// Accept sessions to `port` (which may make this node serve service addresses).
    pub fn listen(&mut self, port: u16) -> Result<(), OpenError> {
        self.listeners_changed = true;
        self.touched(self.clock);
        self.sessions.listen(port)
    }

    /// Stop accepting on `port` (established sessions carry on).
    pub fn unlisten(&mut self, port: u16) {
        self.listeners_changed = true;
        self.touched(self.clock);
        self.sessions.unlisten(port)
    }

    pub fn listeners(&self) -> Vec<u16> {
        self.sessions.listeners()
    }

    /// Opens a session from (this node, `local_port` or an ephemeral port) to `remote`.
    pub fn connect(
        &mut self,
        now: Instant,
        local_port: Option<u16>,
        remote: Endpoint,
    ) -> Result<(SessionId, Endpoint), OpenError> {
        if self.routing.is_stale() {
            self.refresh_routes();
        }
        let resolved = self.services.resolve(remote.node);
        let remote = match resolved {
            Resolved::Owner { owner, .. } => Endpoint::new(owner, remote.port),
            Resolved::Node(_) | Resolved::NoOwner => remote,
        };
        let reachable = resolved != Resolved::NoOwner && self.routing.is_reachable(remote.node);
        let opened = self
            .sessions
            .connect(now, local_port, remote, reachable, &mut self.events);
        match (resolved, &opened) {
            (Resolved::Owner { address, owner }, Ok((id, _))) => {
                self.services.bind(*id, address, owner);
            }
            (Resolved::NoOwner, Ok((id, _))) => {
                // No live instance in this component: fail at once, as a kernel connect to
                // an unreachable host would.
                let id = *id;
                self.events.push_back(NodeEvent::Session {
                    id,
                    event: SessionEvent::Failed(SessionError::Unreachable),
                });
                self.sessions
                    .with_session(id, &mut self.events, |s| s.abort());
            }
            _ => {}
        }
        self.touched(now);
        opened
    }

    /// Bytes accepted into the session's send buffer.
    pub fn session_write(&mut self, now: Instant, id: SessionId, data: &[u8]) -> usize {
        let n = self
            .sessions
            .with_session(id, &mut self.events, |s| s.write(data));
        self.touched(now);
        n.unwrap_or(0)
    }

    /// In-order bytes read from the session.
    pub fn session_read(&mut self, now: Instant, id: SessionId, buf: &mut [u8]) -> usize {
        let n = self
            .sessions
            .with_session(id, &mut self.events, |s| s.read(buf));
        self.touched(now);
        n.unwrap_or(0)
    }

    pub fn session_readable(&self, id: SessionId) -> usize {
        self.sessions.session(id).map_or(0, |s| s.readable())
    }

    pub fn session_send_capacity(&self, id: SessionId) -> usize {
        self.sessions.session(id).map_or(0, |s| s.send_capacity())
    }

    pub fn session_peer_finished(&self, id: SessionId) -> bool {
        self.sessions.session(id).is_some_and(|s| s.peer_finished())
    }

    /// Half-close: FIN after everything written so far.
    pub fn session_shutdown(&mut self, now: Instant, id: SessionId) {
        self.sessions
            .with_session(id, &mut self.events, |s| s.shutdown_write());
        self.touched(now);
    }

    /// The program changed its socket options (user timeout, keepalive). False when there is
    /// no such session.
    pub fn session_set_options(
        &mut self,
        now: Instant,
        id: SessionId,
        options: weft_transport::session::SessionOptions,
    ) -> bool {
        let found = self
            .sessions
            .with_session(id, &mut self.events, |s| s.set_options(now, options))
            .is_some();
        self.touched(now);
        found
    }

    /// Reset the session.
    pub fn session_abort(&mut self, now: Instant, id: SessionId) {
        self.sessions
            .with_session(id, &mut self.events, |s| s.abort());
        self.touched(now);
    }

    /// The application is gone. Unread data means an abort (like closing a TCP socket with
    /// unread bytes); otherwise the session finishes gracefully. It is forgotten once closed.
    pub fn session_release(&mut self, now: Instant, id: SessionId) {
        self.sessions.release(id, &mut self.events);
        self.touched(now);
    }

    pub fn session_stats(&self, id: SessionId) -> Option<(Endpoint, Endpoint, SessionStats)> {
        self.sessions.stats(id)
    }

    pub fn session_summaries(&self) -> Vec<SessionSummary> {
        self.sessions.summaries()
    }

    // ----- service addresses --------------------------------------------------------------

    /// The owner of a service address in this node's view (`None`: no live candidate in
    /// this component, or not a service address).
    pub fn service_owner(&self, address: NodeId) -> Option<NodeId> {
        self.services.owner(address)
    }

    /// This node holds (claims) the service address.
    pub fn service_claimed(&self, address: NodeId) -> bool {
        self.services.claims(address)
    }

    /// Every service address this node knows of.
    pub fn service_addresses(&self) -> Vec<NodeId> {
        self.services.addresses().collect()
    }

    pub fn services_status(&self, now: Instant) -> Vec<weft_services::ServiceStatus> {
        self.services.status(now)
    }

    /// Every address the overlay answers for: known nodes and service addresses (what the
    /// shim sends to the overlay rather than the kernel).
    pub fn overlay_addresses(&self) -> Vec<NodeId> {
        let mut all = self.known_nodes();
        all.extend(self.services.addresses());
        all.sort_unstable();
        all.dedup();
        all
    }

    // ----- status -------------------------------------------------------------------------

    /// Drop and event counters (what `status` reports, without building the rest).
    pub fn counters(&self) -> Counters {
        let l = self.links.counters();
        let f = self.forwarder.counters();
        let s = self.sessions.counters();
        Counters {
            unknown_sender: l.unknown_sender,
            malformed: l.malformed
                + self.malformed
                + self.groups.malformed()
                + self.datagrams.malformed()
                + s.malformed,
            unsupported: 0,
            dropped_cut: l.dropped_cut,
            ttl_expired: f.ttl_expired,
            no_route: f.no_route,
            forwarded: f.forwarded,
            datagrams_delivered: self.datagrams.delivered(),
            neighbors_declared_dead: l.neighbors_declared_dead,
            neighbor_restarts: l.neighbor_restarts,
            neighbor_leaves: l.neighbor_leaves,
            wire_version_mismatch: l.wire_version_mismatch,
            state_packets_sent: l.state_packets_sent,
            state_records_sent: l.state_records_sent,
            state_record_bytes_sent: l.state_record_bytes_sent,
            reliable_before_up: l.reliable_before_up,
            rerouted: f.rerouted,
            ce_marked: f.ce_marked,
            dropped_backpressure: f.dropped_backpressure,
            sessions_refused: s.sessions_refused,
            unknown_source: f.unknown_source,
            reassembly: self.datagrams.reassembly(),
        }
    }

    /// Each neighbour's link state, in the order they were added.
    pub fn neighbor_states(&self) -> Vec<LinkState> {
        self.links.states()
    }

    pub fn status(&self, now: Instant) -> NodeStatus {
        NodeStatus {
            node: self.cfg.id,
            incarnation: self.incarnation,
            metric: self.cfg.metric,
            cost_unit: match self.cfg.metric {
                Metric::Latency => "us",
                Metric::Hops => "hops",
            },
            uptime_ms: (now - self.started).as_millis() as u64,
            hello_interval_ms: self.cfg.hello_interval.as_millis() as u64,
            dead_interval_ms: self.cfg.dead_interval.as_millis() as u64,
            neighbors: self.links.status(now),
            routes: self.routing.status(),
            routing: self.routing.stats(),
            known_nodes: self.known_nodes(),
            listeners: self.listeners(),
            sessions: self.session_summaries(),
            multicast: self.mc_status(),
            multicast_counters: self.mc_counters(),
            services: self.services.status(now),
            service_counters: self.services.counters(),
            counters: self.counters(),
            trust: self.trust.counters(),
        }
    }
}

fn encode_advert(advert: &LinkStateAdvert) -> Vec<u8> {
    let mut bytes = Vec::new();
    advert.encode(&mut bytes);
    bytes
}
