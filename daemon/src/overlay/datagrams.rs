//! `Datagrams`: best-effort datagrams between (node, port) endpoints, up to 64 KiB: cut into
//! routed fragments at the source, reassembled at the destination (unicast and group alike).

use crate::overlay::fragment::{pieces, Reassembler, ReassemblyCounters};
use crate::overlay::wire::{Class, FragmentHeader, Proto, RoutedHeader};
use std::time::Duration;
use weft_core::{Endpoint, Instant, Writer};

pub struct Datagrams {
    reassembler: Reassembler,
    next_id: u32,
    delivered: u64,
    malformed: u64,
}

/// A whole datagram, reassembled.
pub struct Whole {
    /// The source's id of the datagram (group receivers order by it).
    pub id: u32,
    pub payload: Vec<u8>,
}

impl Datagrams {
    pub fn new(seed: u64) -> Self {
        Datagrams {
            reassembler: Reassembler::new(Duration::from_secs(5), 32 << 20),
            next_id: (seed as u32) | 1,
            delivered: 0,
            malformed: 0,
        }
    }

    /// The id the next unicast datagram gets (groups seed their sequences with it).
    pub fn peek_id(&self) -> u32 {
        self.next_id
    }

    pub fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// The routed fragments of datagram `id`, each at most `routed_mtu` bytes.
    pub fn fragments<'a>(
        routed_mtu: usize,
        header: RoutedHeader,
        id: u32,
        payload: &'a [u8],
    ) -> impl Iterator<Item = Vec<u8>> + 'a {
        let piece = routed_mtu - RoutedHeader::LEN - FragmentHeader::LEN;
        debug_assert!(header.proto == Proto::Datagram && header.class == Class::BestEffort);
        pieces(payload.len(), piece).map(move |(offset, len)| {
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
            packet
        })
    }

    /// A fragment for this node (`body` follows the routed header); the whole datagram once
    /// its last fragment is in.
    pub fn reassemble(&mut self, now: Instant, src: Endpoint, body: &[u8]) -> Option<Whole> {
        let Ok((frag, bytes)) = FragmentHeader::decode(body) else {
            self.malformed += 1;
            return None;
        };
        let payload = self.reassembler.add(
            now,
            src,
            frag.id,
            frag.offset as usize,
            frag.total as usize,
            bytes,
        )?;
        Some(Whole {
            id: frag.id,
            payload,
        })
    }

    pub fn count_delivered(&mut self) {
        self.delivered += 1;
    }

    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    pub fn reassembly(&self) -> ReassemblyCounters {
        self.reassembler.counters
    }

    pub fn expire(&mut self, now: Instant) {
        self.reassembler.expire(now);
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.reassembler.next_expiry()
    }
}
