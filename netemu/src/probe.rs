//! The message-latency probe behind `msglat`: fixed-size messages stamped with their intended
//! send time (CLOCK_MONOTONIC, shared by all namespaces), framed the same way over TCP and
//! UDP, and a receiver that turns arrivals into one-way latency percentiles, RFC 3550 jitter,
//! loss, duplicates and reordering.
//!
//! Messages carry the *intended* send time of a fixed schedule, not the time `write` returned:
//! a sender held up by a full TCP window still charges the wait to latency (no coordinated
//! omission).
//!
//! Wire format (little endian): magic `u32`, total size `u32`, sequence `u64`, send time
//! `u64` in ns, then padding up to the size. The end marker has its own magic and carries the
//! number of data messages sent in the sequence field.

use crate::stats::{InterarrivalJitter, LatencySummary};
use serde::Serialize;

pub const HEADER_LEN: usize = 24;
pub const MAX_MESSAGE: usize = 65_000;
const MAGIC_DATA: u32 = u32::from_be_bytes(*b"MLAT");
const MAGIC_END: u32 = u32::from_be_bytes(*b"MEND");
/// Sequence numbers beyond this are treated as corrupt (bounds the duplicate bitmap).
const MAX_SEQUENCE: u64 = 100_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    Data {
        seq: u64,
        send_ns: u64,
        size: usize,
    },
    /// End of stream; `sent` data messages were sent.
    End {
        sent: u64,
    },
}

/// Fill `buf` (its whole length is the message size, ≥ HEADER_LEN) with a message.
pub fn encode(buf: &mut [u8], frame: Frame) {
    if buf.len() < HEADER_LEN {
        return;
    }
    let (magic, seq, send_ns) = match frame {
        Frame::Data { seq, send_ns, .. } => (MAGIC_DATA, seq, send_ns),
        Frame::End { sent } => (MAGIC_END, sent, 0),
    };
    buf[0..4].copy_from_slice(&magic.to_le_bytes());
    let size = buf.len() as u32;
    buf[4..8].copy_from_slice(&size.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    buf[16..24].copy_from_slice(&send_ns.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decode the header at the start of `b`: the frame and its total size, or None if `b` does
/// not start with a valid header (too short, wrong magic, impossible size).
pub fn decode_header(b: &[u8]) -> Option<(Frame, usize)> {
    let magic = u32_at(b, 0)?;
    let size = u32_at(b, 4)? as usize;
    let seq = u64_at(b, 8)?;
    let send_ns = u64_at(b, 16)?;
    if !(HEADER_LEN..=MAX_MESSAGE).contains(&size) {
        return None;
    }
    match magic {
        MAGIC_DATA => Some((Frame::Data { seq, send_ns, size }, size)),
        MAGIC_END => Some((Frame::End { sent: seq }, size)),
        _ => None,
    }
}

/// Splits a TCP byte stream back into frames.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Corrupt;

impl StreamDecoder {
    /// Append received bytes and return every frame they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, Corrupt> {
        self.pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut offset = 0;
        while self.pending.len() - offset >= HEADER_LEN {
            let (frame, size) = decode_header(&self.pending[offset..]).ok_or(Corrupt)?;
            if self.pending.len() - offset < size {
                break;
            }
            frames.push(frame);
            offset += size;
        }
        self.pending.drain(..offset);
        Ok(frames)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub seq: u64,
    pub send_ns: u64,
    pub recv_ns: u64,
}

/// Collects arrivals in order.
#[derive(Default)]
pub struct Recorder {
    samples: Vec<Sample>,
    seen: Vec<bool>,
    duplicates: u64,
    reordered: u64,
    corrupt: u64,
    highest: Option<u64>,
    sent: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Distinct data messages received (all, including warm-up).
    pub received: u64,
    /// Data messages the sender says it sent, if its end marker arrived.
    pub sent: Option<u64>,
    pub lost: Option<u64>,
    pub duplicates: u64,
    pub reordered: u64,
    pub corrupt: u64,
    /// Messages sent during the warm-up and left out of the latency figures.
    pub warmup_excluded: u64,
    pub latency: LatencySummary,
    pub jitter_ms: f64,
    /// Fraction of measured messages slower than each deadline (ms → fraction).
    pub over_deadline: Vec<(f64, f64)>,
    pub first_recv_ns: Option<u64>,
    pub last_recv_ns: Option<u64>,
}

impl Recorder {
    pub fn record(&mut self, frame: Frame, recv_ns: u64) {
        match frame {
            Frame::End { sent } => self.sent = Some(sent),
            Frame::Data { seq, send_ns, .. } => {
                if seq > MAX_SEQUENCE {
                    self.corrupt += 1;
                    return;
                }
                let index = seq as usize;
                if index >= self.seen.len() {
                    self.seen.resize(index + 1, false);
                }
                if self.seen[index] {
                    self.duplicates += 1;
                    return;
                }
                self.seen[index] = true;
                if self.highest.is_some_and(|h| seq < h) {
                    self.reordered += 1;
                }
                self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
                self.samples.push(Sample {
                    seq,
                    send_ns,
                    recv_ns,
                });
            }
        }
    }

    pub fn record_corrupt(&mut self) {
        self.corrupt += 1;
    }

    pub fn end_seen(&self) -> bool {
        self.sent.is_some()
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Figures over messages sent at least `warmup_ns` after the first one.
    pub fn report(&self, warmup_ns: u64, deadlines_ms: &[f64]) -> Report {
        let first_send = self.samples.iter().map(|s| s.send_ns).min().unwrap_or(0);
        let cutoff = first_send.saturating_add(warmup_ns);
        let mut jitter = InterarrivalJitter::default();
        let mut latencies = Vec::new();
        for s in self.samples.iter().filter(|s| s.send_ns >= cutoff) {
            let latency = s.recv_ns as i64 - s.send_ns as i64;
            latencies.push(latency);
            jitter.observe(s.send_ns as i64, s.recv_ns as i64);
        }
        let measured = latencies.len().max(1) as f64;
        let over_deadline = deadlines_ms
            .iter()
            .map(|&d| {
                let limit = (d * 1e6) as i64;
                let over = latencies.iter().filter(|&&l| l > limit).count();
                (d, over as f64 / measured)
            })
            .collect();
        let received = self.samples.len() as u64;
        Report {
            received,
            sent: self.sent,
            lost: self.sent.map(|s| s.saturating_sub(received)),
            duplicates: self.duplicates,
            reordered: self.reordered,
            corrupt: self.corrupt,
            warmup_excluded: received - latencies.len() as u64,
            latency: LatencySummary::from_nanos(&latencies),
            jitter_ms: jitter.value_ns() / 1e6,
            over_deadline,
            first_recv_ns: self.samples.iter().map(|s| s.recv_ns).min(),
            last_recv_ns: self.samples.iter().map(|s| s.recv_ns).max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(seq: u64, send_ns: u64, size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        encode(&mut b, Frame::Data { seq, send_ns, size });
        b
    }

    #[test]
    fn frames_round_trip_through_a_split_stream() {
        let mut stream = Vec::new();
        for i in 0..10 {
            stream.extend(data(i, 1000 + i, 200));
        }
        let mut end = vec![0u8; HEADER_LEN];
        encode(&mut end, Frame::End { sent: 10 });
        stream.extend(end);
        let mut decoder = StreamDecoder::default();
        let mut frames = Vec::new();
        for chunk in stream.chunks(37) {
            frames.extend(decoder.push(chunk).unwrap());
        }
        assert_eq!(frames.len(), 11);
        assert_eq!(
            frames[3],
            Frame::Data {
                seq: 3,
                send_ns: 1003,
                size: 200
            }
        );
        assert_eq!(frames[10], Frame::End { sent: 10 });
    }

    #[test]
    fn garbage_in_a_stream_is_reported() {
        let mut decoder = StreamDecoder::default();
        assert_eq!(decoder.push(&[0xff; 64]), Err(Corrupt));
    }

    #[test]
    fn recorder_counts_loss_duplicates_and_reordering() {
        let mut r = Recorder::default();
        let f = |seq, send_ns| Frame::Data {
            seq,
            send_ns,
            size: 200,
        };
        r.record(f(0, 0), 10_000_000);
        r.record(f(2, 40_000_000), 50_000_000);
        r.record(f(1, 20_000_000), 55_000_000); // late: reordered
        r.record(f(2, 40_000_000), 60_000_000); // duplicate
        r.record(Frame::End { sent: 4 }, 70_000_000);
        let report = r.report(0, &[20.0]);
        assert_eq!(report.received, 3);
        assert_eq!(report.sent, Some(4));
        assert_eq!(report.lost, Some(1));
        assert_eq!(report.duplicates, 1);
        assert_eq!(report.reordered, 1);
        assert_eq!(report.latency.min_ms, 10.0);
        assert_eq!(report.latency.max_ms, 35.0);
        // 35 ms is over the 20 ms deadline: one of three.
        assert!((report.over_deadline[0].1 - 1.0 / 3.0).abs() < 1e-9);
        // Warm-up of 30 ms leaves only the message sent at 40 ms.
        let warm = r.report(30_000_000, &[]);
        assert_eq!(warm.warmup_excluded, 2);
        assert_eq!(warm.latency.count, 1);
    }

    #[test]
    fn absurd_sequence_numbers_do_not_allocate() {
        let mut r = Recorder::default();
        r.record(
            Frame::Data {
                seq: u64::MAX,
                send_ns: 0,
                size: 24,
            },
            1,
        );
        assert_eq!(r.report(0, &[]).corrupt, 1);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_header(&bytes);
            let mut d = StreamDecoder::default();
            let _ = d.push(&bytes);
        }
    }
}
