//! Neighbours that change while the node runs: added (`weft neighbor add`, a reload), removed,
//! and neighbours that leave cleanly (a stopping daemon's hello with `HELLO_LEAVING`), plus the
//! peer that speaks another wire version. A removed neighbour keeps its slot (retired: cut,
//! silent, left out of status) so that the link ids others hold stay valid; adding its address
//! again revives the slot.

use super::{LinkId, Links};
use crate::logging::Maybe;
use crate::overlay::neighbor::{LinkState, Neighbor};
use crate::overlay::wire::{HELLO_LEAVING, HELLO_PROBE};
use std::net::SocketAddr;
use tracing::{info, warn};
use weft_core::{Instant, NodeId, PacketKind, WIRE_VERSION};

/// Copies of the leave hello: one lost datagram must not cost a neighbour the dead interval.
const LEAVE_COPIES: usize = 3;

impl Links {
    /// Links to a new neighbour; its first hello leaves with the next poll. Errors: already a
    /// neighbour.
    pub fn add_neighbor(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        id: Option<NodeId>,
    ) -> Result<LinkId, String> {
        if self.by_addr.contains_key(&addr) {
            return Err(format!("{addr} is already a neighbour"));
        }
        let fresh = Neighbor::new(addr, id, now);
        let link = match self
            .neighbors
            .iter()
            .position(|n| n.retired && n.addr == addr)
        {
            Some(link) => {
                self.neighbors[link] = fresh;
                link
            }
            None => {
                self.neighbors.push(fresh);
                self.neighbors.len() - 1
            }
        };
        self.by_addr.insert(addr, link);
        info!(peer = %addr, node = %Maybe(&id), "neighbour added");
        self.send_hello(now, link, false);
        Ok(link)
    }

    /// Unlinks a neighbour: it is told we are leaving it, the link goes down (what its ARQ
    /// held comes back in `LinkEvent::Down`) and its packets count as from an unknown sender
    /// from now on.
    pub fn remove_neighbor(&mut self, now: Instant, addr: SocketAddr) -> Result<(), String> {
        let link = self
            .by_addr
            .remove(&addr)
            .ok_or_else(|| format!("{addr} is not a neighbour"))?;
        self.send_leave(now, link);
        self.set_state(now, link, LinkState::Down);
        let nbr = &mut self.neighbors[link];
        nbr.retired = true;
        nbr.cut = true;
        nbr.last_heard = None;
        info!(peer = %addr, "neighbour removed");
        Ok(())
    }

    /// Every live link has delivered what it carries (nothing queued or unacknowledged): a
    /// stopping node waits for this before it leaves, so its last resets reach their peers.
    pub fn all_delivered(&self) -> bool {
        self.neighbors
            .iter()
            .filter(|n| !n.retired && n.state == LinkState::Up && !n.cut)
            .all(|n| n.arq.as_ref().is_none_or(|a| a.is_idle()))
    }

    /// The node is stopping: tell every neighbour, so it reroutes now rather than after the
    /// dead interval. The hellos leave with the next polls.
    pub fn leave(&mut self, now: Instant) {
        for link in 0..self.neighbors.len() {
            if !self.neighbors[link].retired {
                self.send_leave(now, link);
            }
        }
    }

    fn send_leave(&mut self, now: Instant, link: LinkId) {
        for _ in 0..LEAVE_COPIES {
            let hello = self.neighbors[link].make_hello(now, None);
            self.send(link, PacketKind::Hello, HELLO_LEAVING, |w| hello.encode(w));
        }
    }

    /// A hello carrying `flags` arrived on `link`; true when it said the neighbour leaves
    /// (then its link is down already).
    pub(super) fn on_leaving_hello(&mut self, now: Instant, link: LinkId, flags: u8) -> bool {
        if flags & HELLO_LEAVING == 0 {
            return false;
        }
        debug_assert_eq!(HELLO_LEAVING & HELLO_PROBE, 0);
        if self.neighbors[link].state != LinkState::Down {
            let nbr = &self.neighbors[link];
            info!(peer = %nbr.addr, node = %Maybe(&nbr.id), "neighbour leaving: link down at once");
            self.counters.neighbor_leaves += 1;
            self.set_state(now, link, LinkState::Down);
        }
        // Its silence from here on is no failure, and its next plain hello (a restart) brings
        // the link back through the usual two-way check.
        self.neighbors[link].last_heard = None;
        true
    }

    /// A datagram in another wire version on `link`: dropped, counted, shown on the
    /// neighbour, and logged at warn the first time (and whenever the version it speaks
    /// changes).
    pub(super) fn wire_version_mismatch(&mut self, link: LinkId, theirs: u8) {
        self.counters.wire_version_mismatch += 1;
        let nbr = &mut self.neighbors[link];
        if nbr.wire_version_mismatch != Some(theirs) {
            warn!(
                peer = %nbr.addr,
                ours = WIRE_VERSION,
                theirs,
                "neighbour speaks another wire version: its packets are dropped (run the same weft version on both)"
            );
            nbr.wire_version_mismatch = Some(theirs);
        }
    }
}
