//! The bulk transfer behind `msglat bulk-send` / `bulk-recv`: a byte stream whose every byte
//! is a function of its offset, so the receiver proves that what it read is exactly the
//! sender's stream (nothing missing, repeated or reordered) and counts it to the byte, and a
//! receive timeline in fixed bins that shows when delivery stalled (the failover benchmark
//! needs both: iperf3 reports the bytes its client *wrote*, which includes whatever was still
//! queued in socket buffers when it stopped). The benchmark reads stalls off the timeline.
//!
//! Pattern: the 8 bytes at offset `8k` are `mix(k)` as a little-endian `u64`, where `mix` is
//! SplitMix64's finaliser (a bijection whose bytes all vary), so a hole or a repeat of any
//! length breaks the sequence at its first byte, give or take a chance coincidence of a few
//! bytes.

use serde::Serialize;

/// Fill `buf` with the stream's bytes starting at stream offset `offset`.
pub fn fill(buf: &mut [u8], offset: u64) {
    let mut at = 0usize;
    let mut pos = offset;
    // Unaligned head: byte by byte up to the next word boundary.
    while at < buf.len() && !pos.is_multiple_of(8) {
        buf[at] = byte_at(pos);
        at += 1;
        pos += 1;
    }
    let mut chunks = buf[at..].chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word(pos / 8).to_le_bytes());
        pos += 8;
    }
    for b in chunks.into_remainder() {
        *b = byte_at(pos);
        pos += 1;
    }
}

fn word(k: u64) -> u64 {
    let mut z = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn byte_at(offset: u64) -> u8 {
    word(offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Checks received bytes against the pattern and counts them.
#[derive(Debug, Default)]
pub struct Verifier {
    received: u64,
    first_mismatch: Option<u64>,
    expected: Vec<u8>,
}

impl Verifier {
    pub fn push(&mut self, bytes: &[u8]) {
        if self.first_mismatch.is_none() {
            self.expected.resize(bytes.len(), 0);
            fill(&mut self.expected, self.received);
            if self.expected[..] != *bytes {
                let at = bytes
                    .iter()
                    .zip(&self.expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                self.first_mismatch = Some(self.received + at as u64);
            }
        }
        self.received += bytes.len() as u64;
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Stream offset of the first byte that was not the sender's byte at that offset.
    pub fn first_mismatch(&self) -> Option<u64> {
        self.first_mismatch
    }
}

/// Bytes received per fixed-width time bin, from a start time on.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub start_ns: u64,
    pub bin_ns: u64,
    pub bins: Vec<u64>,
}

/// Bins beyond this are folded into the last one (bounds memory for a stuck receiver).
const MAX_BINS: usize = 1 << 20;

impl Timeline {
    pub fn new(start_ns: u64, bin_ns: u64) -> Self {
        Timeline {
            start_ns,
            bin_ns: bin_ns.max(1),
            bins: Vec::new(),
        }
    }

    pub fn record(&mut self, at_ns: u64, bytes: u64) {
        let index = (at_ns.saturating_sub(self.start_ns) / self.bin_ns) as usize;
        let index = index.min(MAX_BINS - 1);
        if self.bins.len() <= index {
            self.bins.resize(index + 1, 0);
        }
        self.bins[index] += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stream(offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        fill(&mut v, offset);
        v
    }

    proptest! {
        #[test]
        fn fill_is_the_same_stream_however_it_is_cut(offset in 0u64..1 << 40, a in 0usize..40, b in 0usize..40) {
            let whole = stream(offset, a + b);
            let mut pieces = stream(offset, a);
            pieces.extend(stream(offset + a as u64, b));
            prop_assert_eq!(whole, pieces);
        }

        #[test]
        fn the_stream_in_any_pieces_verifies(cuts in proptest::collection::vec(1usize..3000, 1..20)) {
            let total: usize = cuts.iter().sum();
            let data = stream(0, total);
            let mut v = Verifier::default();
            let mut at = 0;
            for c in cuts {
                v.push(&data[at..at + c]);
                at += c;
            }
            prop_assert_eq!(v.received(), total as u64);
            prop_assert_eq!(v.first_mismatch(), None);
        }

        #[test]
        fn a_hole_is_found_where_it_starts(len in 16usize..5000, start in 0usize..5000, hole in 1usize..300) {
            // At least 8 bytes follow the hole: with fewer, all of them may match the bytes
            // they replace (1 byte: 1 in 256), and the property speaks of the first 8.
            let start = start % (len - 8);
            let data = stream(0, len + hole);
            let mut received = data[..start].to_vec();
            received.extend_from_slice(&data[start + hole..]);
            let mut v = Verifier::default();
            v.push(&received);
            // Each byte after the hole matches the one it replaces with chance 1/256.
            let found = v.first_mismatch();
            prop_assert!(matches!(found, Some(m) if m >= start as u64 && m < start as u64 + 8),
                "hole at {} found at {:?}", start, found);
        }
    }

    #[test]
    fn a_repeated_chunk_is_a_mismatch() {
        let data = stream(0, 4096);
        let mut v = Verifier::default();
        v.push(&data[..2048]);
        v.push(&data[1024..2048]);
        let found = v.first_mismatch();
        assert!(
            matches!(found, Some(m) if (2048..2056).contains(&m)),
            "{found:?}"
        );
        assert_eq!(v.received(), 3072);
    }

    #[test]
    fn timeline_counts_bytes_per_bin() {
        let mut t = Timeline::new(1_000, 10);
        for at in [1_000, 1_009, 1_050, 900] {
            t.record(at, 100);
        }
        // Before the start counts in the first bin.
        assert_eq!(t.bins, vec![300, 0, 0, 0, 0, 100]);
    }
}
