//! Neighbours that change while the node runs: added (`weft neighbor add`, a reload),
//! removed, re-parameterised (a reload's emulation), and neighbours that leave cleanly (a
//! stopping daemon's hello with `HELLO_LEAVING`), plus the peer that speaks another wire
//! version. A removed neighbour keeps its slot (cut, silent, out of status) so that indices
//! held elsewhere stay valid; adding its address again revives the slot.

use super::emulation::{Emulator, LinkParams};
use super::neighbor::{LinkState, Neighbor};
use super::node::{NeighborConfig, Node};
use super::wire::{Hello, HELLO_LEAVING};
use crate::logging::Maybe;
use std::net::SocketAddr;
use tracing::{info, warn};
use weft_core::{Header, Instant, PacketKind, Writer, HEADER_LEN, WIRE_VERSION};

/// Copies of the leave hello: one lost datagram must not cost a neighbour the dead interval.
const LEAVE_COPIES: usize = 3;

impl Node {
    /// Links to a new neighbour (its hellos start at once). Errors: already a neighbour, our
    /// own address, or emulation asked for while it is off.
    pub fn add_neighbor(&mut self, now: Instant, n: NeighborConfig) -> Result<(), String> {
        if self.by_addr.contains_key(&n.addr) {
            return Err(format!("{} is already a neighbour", n.addr));
        }
        if !n.link.is_identity() && !self.cfg.emulation {
            return Err("link emulation is disabled: start weftd with --emulation".into());
        }
        let emulator = self.cfg.emulation.then(|| {
            Emulator::new(
                n.link,
                now.as_nanos() ^ (self.neighbors.len() as u64).wrapping_mul(0x9e37_79b9),
            )
        });
        let idx = match self
            .neighbors
            .iter()
            .position(|x| x.retired && x.addr == n.addr)
        {
            Some(idx) => {
                self.neighbors[idx] = Neighbor::new(n.addr, n.id, now, emulator);
                idx
            }
            None => {
                self.neighbors
                    .push(Neighbor::new(n.addr, n.id, now, emulator));
                self.neighbors.len() - 1
            }
        };
        self.by_addr.insert(n.addr, idx);
        self.cfg.neighbors.retain(|c| c.addr != n.addr);
        info!(peer = %n.addr, node = %Maybe(&n.id), "neighbour added");
        self.cfg.neighbors.push(n);
        self.send_hello(now, idx, false);
        self.after_input(now);
        Ok(())
    }

    /// Unlinks a neighbour: it is told we are leaving it, the link goes down (what it held
    /// is rerouted) and its packets count as from an unknown sender from now on.
    pub fn remove_neighbor(&mut self, now: Instant, addr: SocketAddr) -> Result<(), String> {
        let idx = *self
            .by_addr
            .get(&addr)
            .ok_or_else(|| format!("{addr} is not a neighbour"))?;
        self.send_leave(now, idx);
        if self.neighbors[idx].state == LinkState::Up {
            self.neighbors[idx].state = LinkState::Down;
            self.link_went_down(now, idx);
        }
        let nbr = &mut self.neighbors[idx];
        nbr.state = LinkState::Down;
        nbr.retired = true;
        nbr.cut = true;
        self.by_addr.remove(&addr);
        self.cfg.neighbors.retain(|c| c.addr != addr);
        info!(peer = %addr, "neighbour removed");
        self.after_input(now);
        Ok(())
    }

    /// New receive-side emulation for packets from `addr` (a reload).
    pub fn set_neighbor_link(&mut self, addr: SocketAddr, link: LinkParams) -> Result<(), String> {
        let idx = *self
            .by_addr
            .get(&addr)
            .ok_or_else(|| format!("{addr} is not a neighbour"))?;
        match self.neighbors[idx].emulator.as_mut() {
            Some(e) => e.set_params(link),
            None if link.is_identity() => {}
            None => return Err("link emulation is disabled: start weftd with --emulation".into()),
        }
        if let Some(c) = self.cfg.neighbors.iter_mut().find(|c| c.addr == addr) {
            c.link = link;
        }
        info!(peer = %addr, params = %link, "link emulation set");
        Ok(())
    }

    /// The daemon is stopping: tell every neighbour, so it reroutes now rather than after
    /// the dead interval. Sends go out with the next `poll_transmit`.
    pub fn leave(&mut self, now: Instant) {
        for idx in 0..self.neighbors.len() {
            if !self.neighbors[idx].retired {
                self.send_leave(now, idx);
            }
        }
    }

    fn send_leave(&mut self, now: Instant, idx: usize) {
        if self.neighbors[idx].cut {
            return;
        }
        for _ in 0..LEAVE_COPIES {
            let hello = self.neighbors[idx].make_hello(now);
            let mut buf = Vec::with_capacity(HEADER_LEN + Hello::LEN);
            let mut w = Writer::new(&mut buf);
            let mut header = Header::new(PacketKind::Hello, self.cfg.id, self.incarnation);
            header.flags |= HELLO_LEAVING;
            header.encode(&mut w);
            hello.encode(&mut w);
            self.send_to(idx, buf);
        }
    }

    /// A neighbour said it is leaving: its link goes down now, without waiting for silence.
    pub(super) fn on_leave(&mut self, now: Instant, idx: usize) {
        if self.neighbors[idx].state == LinkState::Down {
            return; // a second copy
        }
        let nbr = &self.neighbors[idx];
        info!(peer = %nbr.addr, node = %Maybe(&nbr.id), "neighbour leaving: link down at once");
        self.counters.neighbor_leaves += 1;
        self.set_link_state(now, idx, LinkState::Down);
        // Silence from here on must not count as a second failure, and its next hello (a
        // restart) brings the link back through the usual two-way check.
        self.neighbors[idx].last_heard = None;
    }

    /// A packet in another wire version: dropped, counted, shown on the neighbour, and logged
    /// at warn the first time (and whenever the version it speaks changes).
    pub(super) fn wire_version_mismatch(&mut self, idx: usize, theirs: u8) {
        self.counters.wire_version_mismatch += 1;
        let nbr = &mut self.neighbors[idx];
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
