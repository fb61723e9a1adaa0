//! Link security, the layer nearest the overlay socket: every received datagram is
//! authenticated and decrypted in place before anything else reads it (then the emulation
//! layer, then the node), and every datagram the node writes into the transmit queue is sealed
//! where it lies, so the fast path neither copies nor allocates. The protocol itself —
//! handshakes, sessions, rekeying, replay window, cookies — is `weft_secure::Links`
//! (sans-I/O); this layer only wires it between the socket and the node and reports on it.
//!
//! With `--insecure` nothing is sealed, and datagrams that carry an authentication trailer or
//! a link-security message are refused (counted) rather than misread as node packets.

use crate::config::Security;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use weft_core::{Instant, NodeId};
use weft_secure::link::PeerConfig;
use weft_secure::{LinkCounters, Links, Opened, PeerStatus, PublicKey};

pub struct LinkSecurity {
    /// None with `--insecure`.
    links: Option<Links>,
    counters: InsecureCounters,
}

/// What a daemon without keys refused.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct InsecureCounters {
    /// Packets carrying an authentication trailer or a handshake (a neighbour that runs with
    /// keys), dropped.
    pub secured_packets_refused: u64,
}

/// `weft status` on link security: this node's key, each link's peer key and session, and
/// every rejection counted before the node saw the packet.
#[derive(Debug, Serialize)]
pub struct SecurityStatus {
    /// `encrypted` (keys configured) or `insecure`.
    pub mode: &'static str,
    pub public_key: Option<PublicKey>,
    pub links: Vec<PeerStatus>,
    pub counters: LinkCounters,
    pub insecure: InsecureCounters,
}

impl LinkSecurity {
    /// `wall_clock_us`: microseconds since the Unix epoch at `now` (initiation timestamps must
    /// grow across restarts).
    pub fn new(security: &Security, now: Instant, wall_clock_us: u64) -> Self {
        let links = match security {
            Security::Insecure => None,
            Security::Keys { identity, links } => {
                let mut cfg = links.clone();
                cfg.wall_clock_us = wall_clock_us;
                Some(Links::new(identity.clone(), cfg, now))
            }
        };
        LinkSecurity {
            links,
            counters: InsecureCounters::default(),
        }
    }

    pub fn is_secure(&self) -> bool {
        self.links.is_some()
    }

    pub fn public_key(&self) -> Option<PublicKey> {
        self.links.as_ref().map(|l| l.public_key())
    }

    /// A datagram from `from`: the node packet it carries (decrypted in place), or `None` when
    /// it was a handshake message (handled) or was rejected (counted).
    pub fn open<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &'a mut [u8],
    ) -> Option<&'a [u8]> {
        if weft_secure::link::other_wire_version(data).is_some() {
            // Handed to the node unopened: it only reads the version byte, drops the packet
            // and shows the version on the neighbour (diagnostic state; no link changes).
            return Some(data);
        }
        match self.links.as_mut() {
            Some(links) => match links.open(now, from, data) {
                Opened::Deliver(packet) => Some(packet),
                Opened::Consumed | Opened::Dropped(_) => None,
            },
            None if weft_secure::link::is_secured(data) => {
                self.counters.secured_packets_refused += 1;
                None
            }
            None => Some(data),
        }
    }

    /// Seals the datagram for `dst` the node just appended at `buf[start..]`, appending its
    /// trailer; returns its new length, or `None` when it cannot leave yet (no session with
    /// that neighbour: counted, a handshake started, the node's own retries resend).
    pub fn seal(
        &mut self,
        now: Instant,
        dst: SocketAddr,
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Option<usize> {
        if let Some(links) = self.links.as_mut() {
            links.seal(now, dst, buf, start).ok()?;
        }
        Some(buf.len() - start)
    }

    /// The next handshake message to send, appended to `buf`: its destination and length.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<(SocketAddr, usize)> {
        let (dst, message) = self.links.as_mut()?.poll_transmit()?;
        buf.extend_from_slice(&message);
        Some((dst, message.len()))
    }

    /// A neighbour linked at run time. Errors (changing nothing): already a neighbour, or no
    /// key is known for it (none given and the admitted list does not name it).
    pub fn add_peer(&mut self, now: Instant, peer: PeerConfig) -> Result<(), String> {
        let Some(links) = self.links.as_mut() else {
            return Ok(());
        };
        let addr = peer.addr;
        if !links.add_peer(peer, now) {
            return Err(format!("{addr} is already a neighbour"));
        }
        if links.peer_identity(addr).is_none() {
            links.remove_peer(addr);
            return Err(format!(
                "no key for {addr}: give its public key (`weft neighbor add --public-key`, or `public_key` in the file) or list its node in `admitted_keys`"
            ));
        }
        Ok(())
    }

    /// A neighbour unlinked: its sessions and keys are forgotten.
    pub fn remove_peer(&mut self, addr: SocketAddr) {
        if let Some(links) = self.links.as_mut() {
            links.remove_peer(addr);
        }
    }

    /// A reloaded admitted list.
    pub fn set_admitted(&mut self, admitted: Option<Arc<weft_secure::Admitted>>) {
        if let Some(links) = self.links.as_mut() {
            links.set_admitted(admitted);
        }
    }

    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.links.as_ref()?.poll_timeout(now)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(links) = self.links.as_mut() {
            if links.poll_timeout(now).is_some_and(|t| t <= now) {
                links.handle_timeout(now);
            }
        }
    }

    /// A key a link handshake proved for a neighbour's node id (the key that may sign its
    /// flooded state).
    pub fn poll_identity(&mut self) -> Option<(NodeId, PublicKey)> {
        self.links.as_mut()?.poll_identity()
    }

    pub fn status(&self, now: Instant) -> SecurityStatus {
        match &self.links {
            Some(l) => SecurityStatus {
                mode: "encrypted",
                public_key: Some(l.public_key()),
                links: l.status(now),
                counters: *l.counters(),
                insecure: self.counters,
            },
            None => SecurityStatus {
                mode: "insecure",
                public_key: None,
                links: Vec::new(),
                counters: LinkCounters::default(),
                insecure: self.counters,
            },
        }
    }
}
