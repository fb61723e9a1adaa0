//! Reliable flooding of routing state: our own link-state advert, what neighbours send us,
//! acknowledgements, and the full sync a neighbour gets when its link comes up.

use crate::overlay::neighbor::{LinkState, Neighbor};
use crate::overlay::node::Node;
use crate::overlay::routing::Applied;
use crate::overlay::wire::{self, LinkStateAdvert, StateKind};
use std::time::Duration;
use tracing::debug;
use weft_core::{Header, Instant, NodeId, PacketKind, Writer, HEADER_LEN};

impl Node {
    /// Rebuilds our advert from the Up links and floods it if it changed.
    pub(super) fn originate(&mut self, force: bool) {
        let links: Vec<(NodeId, u32)> = self
            .neighbors
            .iter()
            .filter(|n| n.state == LinkState::Up && !n.cut)
            .filter_map(|n| n.id.map(|id| (id, n.announced_cost.max(1))))
            .collect();
        let trust = &self.trust;
        if let Some(advert) = self
            .lsdb
            .originate_with(links, force, |a| trust.sign_advert(a))
        {
            debug!(
                seq = advert.seq,
                links = advert.links.len(),
                "originate link state"
            );
            self.flood_advert(&advert, None);
        }
    }

    /// Full sync: a neighbour whose link just came up gets every record we hold.
    pub(super) fn full_sync(&mut self, idx: usize) {
        let adverts: Vec<LinkStateAdvert> = self.lsdb.adverts().cloned().collect();
        for a in adverts {
            self.push_advert(idx, &a);
        }
        self.membership_full_sync(idx);
    }

    pub(super) fn push_advert(&mut self, idx: usize, advert: &LinkStateAdvert) {
        let mut bytes = Vec::new();
        advert.encode(&mut bytes);
        self.neighbors[idx].flood.push(advert.id(), bytes);
    }

    /// Queue `advert` for every Up neighbour except `except` (where it came from).
    pub(super) fn flood_advert(&mut self, advert: &LinkStateAdvert, except: Option<usize>) {
        for idx in 0..self.neighbors.len() {
            if Some(idx) != except && self.neighbors[idx].state == LinkState::Up {
                self.push_advert(idx, advert);
            }
        }
    }

    pub(super) fn on_state(&mut self, now: Instant, idx: usize, body: &[u8]) {
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
                    // Only its origin may speak for a node: refused (and counted) before the
                    // database sees it; acknowledged so the sender stops resending it.
                    if let Err(why) = self.trust.check_advert(&advert) {
                        debug!(origin = %advert.origin, ?why, "advert refused");
                        continue;
                    }
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
                    if let Some(id) = self.on_membership(idx, bytes) {
                        acks.push(id);
                    }
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

    pub(super) fn flood_rto(nbr: &Neighbor) -> Duration {
        nbr.srtt().map_or(Duration::from_millis(100), |r| {
            (r * 3).clamp(Duration::from_millis(20), Duration::from_millis(500))
        })
    }

    pub(super) fn flush_floods(&mut self, now: Instant) {
        let budget = self
            .cfg
            .mtu
            .saturating_sub(HEADER_LEN + crate::overlay::node::AUTH_RESERVE + 2);
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

    pub(super) fn next_flood_due(&self) -> Option<Instant> {
        self.neighbors
            .iter()
            .filter(|n| n.state == LinkState::Up && !n.cut)
            .filter_map(|n| n.flood.next_due(Self::flood_rto(n)))
            .min()
    }
}
