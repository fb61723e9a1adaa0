//! The receiving half of a session: reassembly of out-of-order data, the in-order byte queue
//! the application reads from, the advertised window and the SACK blocks to report.
//!
//! The window is the byte range `[read_offset, read_offset + capacity)`: anything beyond it is
//! dropped, so memory stays bounded, and its right edge only ever moves forward (the window
//! never shrinks, which lets the sender trust the largest edge it has seen).

use super::ranges::RangeSet;
use super::wire::SackBlocks;
use std::collections::{BTreeMap, VecDeque};

/// How a data segment changed the receive state (drives the acknowledgement policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arrival {
    /// Some bytes (or the FIN) were new.
    pub new_data: bool,
    /// New bytes extended the in-order stream.
    pub advanced: bool,
    /// Something arrived above a gap, or a gap was being filled: acknowledge at once.
    pub out_of_order: bool,
    /// Bytes were dropped because they lay beyond the window.
    pub beyond_window: bool,
}

#[derive(Debug)]
pub struct ReceiveStream {
    capacity: u64,
    /// Bytes consumed by the application.
    read_offset: u64,
    /// In-order bytes `[read_offset, read_offset + ready.len())` not yet read.
    ready: VecDeque<u8>,
    /// Out-of-order pieces above the in-order end, disjoint, keyed by offset.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_ranges: RangeSet,
    /// Offset of the peer's FIN, once known.
    fin_offset: Option<u64>,
    /// Range of the most recent out-of-order arrival (reported first among SACK blocks).
    latest_block: Option<(u64, u64)>,
    bytes_received: u64,
}

impl ReceiveStream {
    pub fn new(capacity: u64) -> Self {
        ReceiveStream {
            capacity,
            read_offset: 0,
            ready: VecDeque::new(),
            pending: BTreeMap::new(),
            pending_ranges: RangeSet::default(),
            fin_offset: None,
            latest_block: None,
            bytes_received: 0,
        }
    }

    /// End of the in-order data.
    fn in_order_end(&self) -> u64 {
        self.read_offset + self.ready.len() as u64
    }

    /// The cumulative acknowledgement: the next offset expected (past the FIN once complete).
    pub fn ack_offset(&self) -> u64 {
        self.in_order_end() + u64::from(self.fin_received())
    }

    /// The FIN and everything before it arrived.
    pub fn fin_received(&self) -> bool {
        self.fin_offset == Some(self.in_order_end())
    }

    /// The application has read everything up to the peer's FIN.
    pub fn finished(&self) -> bool {
        self.fin_received() && self.ready.is_empty()
    }

    pub fn right_edge(&self) -> u64 {
        self.read_offset + self.capacity
    }

    /// The window to advertise with the current cumulative ack.
    pub fn window(&self) -> u32 {
        let w = self.right_edge().saturating_sub(self.in_order_end());
        u32::try_from(w).unwrap_or(u32::MAX)
    }

    pub fn readable(&self) -> usize {
        self.ready.len()
    }

    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    pub fn has_gaps(&self) -> bool {
        !self.pending_ranges.is_empty()
    }

    /// Accepts `payload` at `seq` (with a FIN after it if `fin`). Errors name protocol
    /// violations (a FIN that moves, data past the FIN); the state is then unchanged.
    pub fn on_data(
        &mut self,
        seq: u64,
        payload: &[u8],
        fin: bool,
    ) -> Result<Arrival, &'static str> {
        let end = seq + payload.len() as u64;
        let highest_seen = self
            .pending_ranges
            .last()
            .map_or(self.in_order_end(), |(_, e)| e);
        if let Some(f) = self.fin_offset {
            if (fin && end != f) || end > f {
                return Err("data or FIN beyond the peer's FIN");
            }
        } else if fin && end < highest_seen {
            return Err("FIN below data already received");
        }
        let mut arrival = Arrival {
            out_of_order: self.has_gaps(),
            ..Arrival::default()
        };
        if fin && self.fin_offset.is_none() {
            self.fin_offset = Some(end);
            arrival.new_data = true;
        }
        let expected = self.in_order_end();
        let start = seq.max(expected);
        let limit = end.min(self.right_edge());
        arrival.beyond_window = end > self.right_edge();
        if start < limit {
            let skip = (start - seq) as usize;
            let data = &payload[skip..skip + (limit - start) as usize];
            if start == expected {
                self.accept_in_order(data, &mut arrival);
            } else {
                self.accept_out_of_order(start, data, &mut arrival);
            }
        }
        Ok(arrival)
    }

    fn accept_in_order(&mut self, data: &[u8], arrival: &mut Arrival) {
        // Part of it may already sit in `pending` (a retransmission covering a SACKed piece):
        // take only up to the first pending piece, then splice the pending pieces in.
        let start = self.in_order_end();
        let first_pending = self.pending_ranges.first().map_or(u64::MAX, |(s, _)| s);
        let take = ((first_pending - start) as usize).min(data.len());
        self.ready.extend(&data[..take]);
        self.bytes_received += take as u64;
        arrival.new_data |= take > 0;
        arrival.advanced |= take > 0;
        if take < data.len() {
            // The rest overlaps pending data or continues past it: store what is new there.
            let rest_start = start + take as u64;
            self.accept_out_of_order(rest_start, &data[take..], arrival);
        }
        self.drain_pending();
    }

    fn accept_out_of_order(&mut self, start: u64, data: &[u8], arrival: &mut Arrival) {
        arrival.out_of_order = true;
        // A peer scattering tiny pieces would otherwise cost far more memory than the window;
        // past the limit new pieces are dropped (the sender repairs them later).
        if self.pending.len() >= self.max_pending_pieces() {
            arrival.beyond_window = true;
            return;
        }
        let end = start + data.len() as u64;
        for (s, e) in self.pending_ranges.insert(start, end) {
            let piece = &data[(s - start) as usize..(e - start) as usize];
            self.pending.insert(s, piece.to_vec());
            self.bytes_received += e - s;
            arrival.new_data = true;
        }
        self.latest_block = self.pending_ranges.containing(start);
        self.drain_pending();
    }

    /// Most out-of-order pieces held: enough for a window of small segments.
    fn max_pending_pieces(&self) -> usize {
        (self.capacity / 64) as usize + 64
    }

    /// Moves pending pieces that now continue the in-order stream into `ready`.
    fn drain_pending(&mut self) {
        let before = self.in_order_end();
        loop {
            let end = self.in_order_end();
            let Some(entry) = self.pending.first_entry() else {
                break;
            };
            if *entry.key() != end {
                break;
            }
            let piece = entry.remove();
            self.ready.extend(&piece);
        }
        if self.in_order_end() != before {
            self.pending_ranges.remove_below(self.in_order_end());
        }
    }

    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.ready.len());
        let (a, b) = self.ready.as_slices();
        let from_a = n.min(a.len());
        buf[..from_a].copy_from_slice(&a[..from_a]);
        buf[from_a..n].copy_from_slice(&b[..n - from_a]);
        self.ready.drain(..n);
        self.read_offset += n as u64;
        n
    }

    /// Up to `max` SACK blocks: the most recent arrival's block first, then the lowest blocks
    /// (those the sender needs to repair the head of the stream).
    pub fn sack_blocks(&self, max: usize) -> SackBlocks {
        let mut out = SackBlocks::default();
        if max == 0 {
            return out;
        }
        let latest = self
            .latest_block
            .and_then(|(s, _)| self.pending_ranges.containing(s));
        if let Some((s, e)) = latest {
            out.push(s, e);
        }
        for (s, e) in self.pending_ranges.iter() {
            if out.len() >= max {
                break;
            }
            if Some((s, e)) != latest {
                out.push(s, e);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &mut ReceiveStream) -> Vec<u8> {
        let mut buf = vec![0u8; r.readable()];
        let n = r.read(&mut buf);
        buf.truncate(n);
        buf
    }

    #[test]
    fn reassembles_out_of_order_with_overlaps() {
        let mut r = ReceiveStream::new(1000);
        let data: Vec<u8> = (0..100u8).collect();
        let a = r.on_data(50, &data[50..70], false).unwrap();
        assert!(a.new_data && a.out_of_order && !a.advanced);
        assert_eq!(r.ack_offset(), 0);
        assert_eq!(r.sack_blocks(4).as_slice(), &[(50, 70)]);
        r.on_data(80, &data[80..90], false).unwrap();
        assert_eq!(r.sack_blocks(4).as_slice(), &[(80, 90), (50, 70)]);
        // Overlapping retransmission that fills the head and part of the SACKed piece.
        let a = r.on_data(0, &data[0..60], false).unwrap();
        assert!(a.advanced);
        assert_eq!(r.ack_offset(), 70);
        r.on_data(65, &data[65..100], true).unwrap();
        assert_eq!(r.ack_offset(), 101, "FIN counts one offset");
        assert!(r.fin_received());
        assert_eq!(read_all(&mut r), data);
        assert!(r.finished());
        assert_eq!(r.bytes_received(), 100);
    }

    #[test]
    fn duplicates_are_not_new() {
        let mut r = ReceiveStream::new(100);
        assert!(r.on_data(0, b"abc", false).unwrap().new_data);
        let a = r.on_data(0, b"abc", false).unwrap();
        assert!(!a.new_data);
        assert_eq!(read_all(&mut r), b"abc");
    }

    #[test]
    fn window_bounds_buffering_and_never_shrinks() {
        let mut r = ReceiveStream::new(10);
        assert_eq!(r.window(), 10);
        let a = r.on_data(0, b"0123456789abc", false).unwrap();
        assert!(a.beyond_window);
        assert_eq!(r.ack_offset(), 10);
        assert_eq!(r.window(), 0);
        let mut buf = [0u8; 4];
        assert_eq!(r.read(&mut buf), 4);
        assert_eq!(r.window(), 4);
        assert_eq!(r.right_edge(), 14);
    }

    #[test]
    fn scattered_pieces_are_bounded() {
        let mut r = ReceiveStream::new(64 * 100);
        for i in 0..1000u64 {
            r.on_data(1 + 2 * i, b"x", false).unwrap();
        }
        assert_eq!(r.pending.len(), r.max_pending_pieces());
        // The in-order stream still advances through what was kept.
        r.on_data(0, b"x", false).unwrap();
        assert_eq!(r.ack_offset(), 2);
    }

    #[test]
    fn fin_violations_are_rejected() {
        let mut r = ReceiveStream::new(100);
        r.on_data(0, b"abc", true).unwrap();
        assert!(r.on_data(3, b"d", false).is_err());
        assert!(r.on_data(0, b"ab", true).is_err());
        assert!(
            r.on_data(0, b"abc", true).is_ok(),
            "a retransmitted FIN is fine"
        );
        let mut r = ReceiveStream::new(100);
        r.on_data(10, b"xyz", false).unwrap();
        assert!(r.on_data(0, b"ab", true).is_err());
    }
}
