//! `Forwarder`: the forwarding decision for routed packets that leave this node. It is a
//! function of (destination, class): best-effort packets go straight out as `Data`; reliable
//! ones are queued on the next hop's ARQ in their flow's queue, and relays mark CE when a
//! flow's queue stands long, so the session that feeds it slows down, and only that one.

use crate::overlay::links::{LinkId, Links};
use crate::overlay::routing::Routing;
use crate::overlay::wire::{flow_of, Class, RoutedHeader, RoutedPacket};
use ahash::AHashMap as HashMap;
use serde::Serialize;
use std::borrow::Cow;
use weft_core::Instant;
use weft_multicast::NextHop;
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
struct ArrivalBursts {
    at: Option<Instant>,
    bytes: HashMap<(LinkId, FlowId), usize>,
}

impl ArrivalBursts {
    /// The part of `queued` (the flow's queue at link `link`) that predates `now`.
    fn standing(&mut self, now: Instant, link: LinkId, flow: FlowId, queued: usize) -> usize {
        if self.at != Some(now) {
            self.at = Some(now);
            self.bytes.clear();
        }
        queued.saturating_sub(self.bytes.get(&(link, flow)).copied().unwrap_or(0))
    }

    fn record(&mut self, link: LinkId, flow: FlowId, len: usize) {
        *self.bytes.entry((link, flow)).or_default() += len;
    }
}

/// Where a packet being forwarded comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A local session or datagram: a full flow queue pushes back on the sender.
    Local,
    /// Received on this link: decrement the TTL, mark CE on long queues.
    Relayed(LinkId),
    /// Taken back from a link that died: send along the new route.
    Rerouted,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ForwardingCounters {
    pub ttl_expired: u64,
    pub no_route: u64,
    pub forwarded: u64,
    pub rerouted: u64,
    pub ce_marked: u64,
    pub dropped_backpressure: u64,
    /// Routed packets from a neighbour naming a source node the overlay does not know (or
    /// this node itself): made-up senders never reach an application or another link.
    pub unknown_source: u64,
}

#[derive(Debug, Default)]
pub struct Forwarder {
    arrivals: ArrivalBursts,
    counters: ForwardingCounters,
}

impl Forwarder {
    pub fn counters(&self) -> ForwardingCounters {
        self.counters
    }

    pub fn count_rerouted(&mut self, packets: usize) {
        self.counters.rerouted += packets as u64;
    }

    pub fn count_no_route(&mut self) {
        self.counters.no_route += 1;
    }

    /// Whether a routed packet may be handled at all: one relayed by a neighbour must name a
    /// source node the overlay knows, other than this one (counted when not).
    pub fn admit_source(
        &mut self,
        routing: &Routing,
        origin: Origin,
        header: &RoutedHeader,
    ) -> bool {
        if matches!(origin, Origin::Relayed(_)) && !routing.knows_other(header.src.node) {
            self.counters.unknown_source += 1;
            return false;
        }
        true
    }

    /// The TTL a packet leaves with: one less on a relay (`Err` when it expires here), as it
    /// came from a local sender or a dead link.
    pub fn hop_ttl(&mut self, origin: Origin, header: &RoutedHeader) -> Result<Option<u8>, ()> {
        if !matches!(origin, Origin::Relayed(_)) {
            return Ok(None);
        }
        if header.ttl <= 1 {
            self.counters.ttl_expired += 1;
            return Err(());
        }
        Ok(Some(header.ttl - 1))
    }

    /// Sends a unicast routed packet toward its destination. Returns a local packet that a
    /// reliable link refused (its flow's queue is full), so the sender can hold it until the
    /// flow drains.
    pub fn unicast(
        &mut self,
        now: Instant,
        links: &mut Links,
        routing: &Routing,
        origin: Origin,
        header: &RoutedHeader,
        packet: Cow<'_, [u8]>,
    ) -> Option<Vec<u8>> {
        let Ok(ttl) = self.hop_ttl(origin, header) else {
            return None;
        };
        let Some(link) = routing
            .first_hop(header.dst.node)
            .and_then(|hop| links.up_link_to(hop))
        else {
            self.counters.no_route += 1;
            return None;
        };
        let relayed = matches!(origin, Origin::Relayed(_));
        if relayed {
            self.counters.forwarded += 1;
        }
        match header.class {
            Class::BestEffort => {
                links.send_routed(link, &packet, |out| {
                    if let (Some(ttl), Ok(mut view)) = (ttl, RoutedPacket::new_checked(out)) {
                        view.set_ttl(ttl);
                    }
                });
                None
            }
            Class::Reliable => {
                let flow = flow_of(header.src, header.dst);
                let Some(queued) = links.flow_queued_bytes(link, flow) else {
                    self.counters.no_route += 1;
                    return None;
                };
                let standing = self.arrivals.standing(now, link, flow, queued);
                let mark = relayed && standing > CE_THRESHOLD_BYTES && !header.ce();
                let mut packet = packet.into_owned();
                if let Ok(mut view) = RoutedPacket::new_checked(&mut packet[..]) {
                    if let Some(ttl) = ttl {
                        view.set_ttl(ttl);
                    }
                    if mark {
                        view.set_ce();
                        self.counters.ce_marked += 1;
                    }
                }
                let len = packet.len();
                let limit = match origin {
                    Origin::Local => None,
                    Origin::Relayed(_) | Origin::Rerouted => Some(RELAYED_QUEUE_LIMIT_BYTES),
                };
                match links.enqueue(link, flow, packet, limit) {
                    Some(Ok(())) => {
                        self.arrivals.record(link, flow, len);
                        None
                    }
                    Some(Err(refused)) if origin == Origin::Local => Some(refused.packet),
                    Some(Err(_)) => {
                        self.counters.dropped_backpressure += 1;
                        None
                    }
                    None => None,
                }
            }
        }
    }

    /// One copy of a group packet down each branch in `hops`, on the reliable link where the
    /// branch asked for it; `ttl` is the relay's decremented TTL. Returns the copies sent.
    pub fn copy_to_branches(
        &mut self,
        links: &mut Links,
        header: &RoutedHeader,
        packet: &[u8],
        ttl: Option<u8>,
        hops: &[NextHop],
    ) -> u64 {
        let flow = flow_of(header.src, header.dst);
        let mut copies = 0;
        for hop in hops {
            let Some(link) = links.up_link_to(hop.neighbour) else {
                continue;
            };
            let class = if hop.reliable {
                Class::Reliable
            } else {
                Class::BestEffort
            };
            let patch = |out: &mut [u8]| {
                if let Ok(mut view) = RoutedPacket::new_checked(out) {
                    view.set_class(class);
                    if let Some(ttl) = ttl {
                        view.set_ttl(ttl);
                    }
                }
            };
            copies += 1;
            links.count_multicast(link);
            if hop.reliable {
                let mut copy = packet.to_vec();
                patch(&mut copy);
                if let Some(Err(_)) =
                    links.enqueue(link, flow, copy, Some(RELAYED_QUEUE_LIMIT_BYTES))
                {
                    self.counters.dropped_backpressure += 1;
                }
            } else {
                links.send_routed(link, packet, patch);
            }
        }
        copies
    }
}
