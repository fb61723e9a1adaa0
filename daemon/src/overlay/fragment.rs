//! Datagram fragmentation and reassembly: datagrams up to 65 507 bytes cross links whose
//! packets are much smaller. Reassembly happens at the destination only; incomplete datagrams
//! expire, and total buffered bytes are capped so a flood of first fragments cannot exhaust
//! memory.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use weft_core::{Endpoint, Instant};

pub const MAX_DATAGRAM: usize = 65_507;
/// A group datagram carries its sender's TTL ahead of the payload.
const MAX_REASSEMBLED: usize = MAX_DATAGRAM + 1;

/// Splits `len` bytes into (offset, length) pieces of at most `piece`.
pub fn pieces(len: usize, piece: usize) -> impl Iterator<Item = (usize, usize)> {
    let piece = piece.max(1);
    let count = len.div_ceil(piece).max(1);
    (0..count).map(move |i| {
        let off = i * piece;
        (off, piece.min(len - off))
    })
}

#[derive(Debug)]
struct Partial {
    total: usize,
    data: Vec<u8>,
    /// Received byte ranges, merged, keyed by start.
    have: BTreeMap<usize, usize>,
    received: usize,
    expires: Instant,
}

impl Partial {
    fn add(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        self.data[offset..end].copy_from_slice(bytes);
        let (mut start, mut stop) = (offset, end);
        // Merge with overlapping or touching ranges.
        let overlapping: Vec<(usize, usize)> = self
            .have
            .range(..=stop)
            .filter(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.have.remove(&s);
            self.received -= e - s;
            start = start.min(s);
            stop = stop.max(e);
        }
        self.have.insert(start, stop);
        self.received += stop - start;
    }

    fn complete(&self) -> bool {
        self.received == self.total
    }
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ReassemblyCounters {
    pub completed: u64,
    pub expired: u64,
    pub evicted: u64,
    pub inconsistent: u64,
}

#[derive(Debug)]
pub struct Reassembler {
    partial: HashMap<(Endpoint, u32), Partial>,
    buffered: usize,
    max_buffered: usize,
    timeout: Duration,
    pub counters: ReassemblyCounters,
}

impl Reassembler {
    pub fn new(timeout: Duration, max_buffered: usize) -> Self {
        Reassembler {
            partial: HashMap::new(),
            buffered: 0,
            max_buffered,
            timeout,
            counters: Default::default(),
        }
    }

    /// Adds a fragment; returns the whole datagram when it completes.
    pub fn add(
        &mut self,
        now: Instant,
        src: Endpoint,
        id: u32,
        offset: usize,
        total: usize,
        bytes: &[u8],
    ) -> Option<Vec<u8>> {
        if offset == 0 && bytes.len() == total {
            return Some(bytes.to_vec());
        }
        if total > MAX_REASSEMBLED || offset + bytes.len() > total {
            self.counters.inconsistent += 1;
            return None;
        }
        let key = (src, id);
        if !self.partial.contains_key(&key) {
            while self.buffered + total > self.max_buffered {
                if !self.evict_oldest() {
                    break;
                }
            }
            self.buffered += total;
            self.partial.insert(
                key,
                Partial {
                    total,
                    data: vec![0; total],
                    have: BTreeMap::new(),
                    received: 0,
                    expires: now + self.timeout,
                },
            );
        }
        let p = self.partial.get_mut(&key)?;
        if p.total != total {
            self.counters.inconsistent += 1;
            return None;
        }
        p.add(offset, bytes);
        if p.complete() {
            let done = self.partial.remove(&key)?;
            self.buffered -= done.total;
            self.counters.completed += 1;
            return Some(done.data);
        }
        None
    }

    fn evict_oldest(&mut self) -> bool {
        let Some(key) = self
            .partial
            .iter()
            .min_by_key(|(_, p)| p.expires)
            .map(|(k, _)| *k)
        else {
            return false;
        };
        if let Some(p) = self.partial.remove(&key) {
            self.buffered -= p.total;
            self.counters.evicted += 1;
        }
        true
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.partial.values().map(|p| p.expires).min()
    }

    pub fn expire(&mut self, now: Instant) {
        let before = self.partial.len();
        let mut freed = 0;
        self.partial.retain(|_, p| {
            let keep = p.expires > now;
            if !keep {
                freed += p.total;
            }
            keep
        });
        self.buffered -= freed;
        self.counters.expired += (before - self.partial.len()) as u64;
    }

    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::NodeId;

    fn ep() -> Endpoint {
        Endpoint::new(NodeId(1), 2)
    }

    #[test]
    fn pieces_cover_exactly() {
        let v: Vec<_> = pieces(10, 4).collect();
        assert_eq!(v, vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(pieces(0, 4).collect::<Vec<_>>(), vec![(0, 0)]);
        assert_eq!(pieces(65_507, 1400).map(|(_, l)| l).sum::<usize>(), 65_507);
    }

    #[test]
    fn reassembles_out_of_order_with_duplicates() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut r = Reassembler::new(Duration::from_secs(5), 1 << 20);
        let mut parts: Vec<_> = pieces(data.len(), 700).collect();
        parts.reverse();
        let dup = parts[2];
        parts.insert(1, dup);
        let mut out = None;
        for (off, len) in parts {
            if let Some(d) = r.add(
                Instant::ZERO,
                ep(),
                9,
                off,
                data.len(),
                &data[off..off + len],
            ) {
                assert!(out.is_none(), "delivered once");
                out = Some(d);
            }
        }
        assert_eq!(out.as_deref(), Some(&data[..]));
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn expires_and_caps_memory() {
        let mut r = Reassembler::new(Duration::from_secs(1), 10_000);
        for id in 0..10 {
            r.add(Instant::ZERO, ep(), id, 0, 4000, &[0; 100]);
        }
        assert!(r.pending() <= 2, "memory cap evicts");
        assert!(r.counters.evicted >= 8);
        r.expire(Instant::ZERO + Duration::from_secs(2));
        assert_eq!(r.pending(), 0);
        assert_eq!(
            r.add(Instant::ZERO, ep(), 1, 3990, 4000, &[0; 20]),
            None,
            "beyond the end"
        );
        assert_eq!(r.counters.inconsistent, 1);
    }
}
