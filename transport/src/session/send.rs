//! The sending half of a session: the byte queue the application writes into, kept until the
//! destination acknowledges it end to end, and the scoreboard of segments in flight (which
//! were SACKed, which are deemed lost and wait for retransmission).
//!
//! Segment boundaries are fixed when a range is first sent, so SACK blocks (which the
//! receiver builds from what arrived) line up with scoreboard entries.

use std::collections::{BTreeSet, VecDeque};
use weft_core::Instant;

#[derive(Debug, Clone)]
pub struct SentSegment {
    pub start: u64,
    pub len: u32,
    pub fin: bool,
    /// Time of the latest transmission.
    pub sent_at: Instant,
    pub transmissions: u32,
    pub sacked: bool,
    /// Deemed lost and waiting to be retransmitted.
    pub lost: bool,
    /// Marked lost by a retransmission timeout (for spurious-timeout detection).
    pub lost_by_timeout: bool,
    /// The sender had nothing more to send when this went out.
    pub app_limited: bool,
}

impl SentSegment {
    pub fn end(&self) -> u64 {
        self.start + u64::from(self.len) + u64::from(self.fin)
    }

    fn in_flight(&self) -> bool {
        !self.sacked && !self.lost
    }
}

/// What one acknowledgement changed on the scoreboard.
#[derive(Debug, Default)]
pub struct AckedSummary {
    /// Payload bytes newly acknowledged cumulatively or by SACK.
    pub newly_acked_bytes: u64,
    /// Some segment (or the FIN) was newly acknowledged.
    pub progress: bool,
    /// The cumulative point moved.
    pub cumulative_advanced: bool,
    /// Latest transmission time among newly acknowledged segments, with that segment's end,
    /// whether it had been retransmitted, and whether it was sent app-limited.
    pub latest: Option<(Instant, u64, bool, bool)>,
    /// Newly acknowledged segments that had been retransmitted, with their latest
    /// transmission time and whether a timeout had marked them lost.
    pub retransmitted: Vec<(Instant, bool)>,
    /// A segment sent before another already-acknowledged one was acknowledged late:
    /// the path reorders.
    pub reordering_seen: bool,
}

/// Result of a RACK loss scan.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LossScan {
    pub marked: usize,
    pub latest_sent_at: Option<Instant>,
    /// When a segment not yet lost would become so.
    pub next_deadline: Option<Instant>,
}

#[derive(Debug)]
pub struct SendStream {
    capacity: usize,
    /// Oldest unacknowledged offset.
    una: u64,
    /// Bytes `[una, una + buf.len())`: unacknowledged and unsent data.
    buf: VecDeque<u8>,
    /// Next never-sent offset.
    nxt: u64,
    fin_requested: bool,
    fin_sent: bool,
    fin_acked: bool,
    /// Segments `[una, nxt)` in offset order.
    segments: VecDeque<SentSegment>,
    /// Starts of segments deemed lost, awaiting retransmission.
    lost: BTreeSet<u64>,
    /// Payload bytes neither acknowledged, SACKed nor deemed lost.
    in_flight: u64,
    /// Latest send time among acknowledged segments (detects reordering).
    latest_acked_sent_at: Option<Instant>,
}

impl SendStream {
    pub fn new(capacity: usize) -> Self {
        SendStream {
            capacity,
            una: 0,
            buf: VecDeque::new(),
            nxt: 0,
            fin_requested: false,
            fin_sent: false,
            fin_acked: false,
            segments: VecDeque::new(),
            lost: BTreeSet::new(),
            in_flight: 0,
            latest_acked_sent_at: None,
        }
    }

    pub fn capacity_left(&self) -> usize {
        if self.fin_requested {
            return 0;
        }
        self.capacity.saturating_sub(self.buf.len())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.capacity_left());
        self.buf.extend(&data[..n]);
        n
    }

    /// Offset just past the last byte written.
    pub fn data_end(&self) -> u64 {
        self.una + self.buf.len() as u64
    }

    pub fn una(&self) -> u64 {
        self.una
    }

    pub fn nxt(&self) -> u64 {
        self.nxt
    }

    pub fn request_fin(&mut self) {
        self.fin_requested = true;
    }

    pub fn fin_acked(&self) -> bool {
        self.fin_acked
    }

    /// Bytes written but never sent.
    pub fn unsent(&self) -> u64 {
        self.data_end() - self.nxt
    }

    /// The FIN still has to go out for the first time.
    pub fn fin_unsent(&self) -> bool {
        self.fin_requested && !self.fin_sent
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Offset just past everything sent (the FIN included).
    pub fn sent_end(&self) -> u64 {
        self.nxt + u64::from(self.fin_sent)
    }

    /// Anything (data or FIN) sent and not yet acknowledged.
    pub fn has_unacked(&self) -> bool {
        !self.segments.is_empty()
    }

    #[cfg(test)]
    pub fn segments(&self) -> impl Iterator<Item = &SentSegment> {
        self.segments.iter()
    }

    /// Copies `[start, start + len)` of the byte queue into `out`.
    pub fn copy_bytes(&self, start: u64, len: usize, out: &mut Vec<u8>) {
        let from = (start - self.una) as usize;
        let to = from + len;
        let (a, b) = self.buf.as_slices();
        if from < a.len() {
            out.extend_from_slice(&a[from..to.min(a.len())]);
        }
        if to > a.len() {
            out.extend_from_slice(&b[from.saturating_sub(a.len())..to - a.len()]);
        }
    }

    /// Records a first transmission of `[nxt, nxt + len)` (plus the FIN if `fin`).
    pub fn on_new_sent(
        &mut self,
        now: Instant,
        len: u32,
        fin: bool,
        app_limited: bool,
    ) -> SentSegment {
        let seg = SentSegment {
            start: self.nxt,
            len,
            fin,
            sent_at: now,
            transmissions: 1,
            sacked: false,
            lost: false,
            lost_by_timeout: false,
            app_limited,
        };
        self.nxt += u64::from(len);
        self.fin_sent |= fin;
        self.in_flight += u64::from(len);
        self.segments.push_back(seg.clone());
        seg
    }

    fn index_of(&self, start: u64) -> Option<usize> {
        let i = self.segments.partition_point(|s| s.start < start);
        (self.segments.get(i)?.start == start).then_some(i)
    }

    /// The lowest segment awaiting retransmission.
    pub fn first_lost(&self) -> Option<&SentSegment> {
        let start = *self.lost.first()?;
        self.index_of(start).map(|i| &self.segments[i])
    }

    /// Records a retransmission of the segment starting at `start`.
    pub fn on_retransmitted(&mut self, start: u64, now: Instant) {
        let Some(i) = self.index_of(start) else {
            return;
        };
        let seg = &mut self.segments[i];
        if seg.lost {
            seg.lost = false;
            self.in_flight += u64::from(seg.len);
        }
        seg.sent_at = now;
        seg.transmissions += 1;
        self.lost.remove(&start);
    }

    fn mark_lost_at(&mut self, i: usize, by_timeout: bool) -> bool {
        let seg = &mut self.segments[i];
        if !seg.in_flight() {
            return false;
        }
        seg.lost = true;
        seg.lost_by_timeout = by_timeout;
        self.in_flight -= u64::from(seg.len);
        self.lost.insert(seg.start);
        true
    }

    /// A retransmission timeout: the oldest segment in flight, and every one sent at least
    /// `age` ago, are presumed lost (RFC 8985 §6.3; younger ones may still arrive). Returns
    /// how many were newly marked.
    pub fn mark_lost_on_timeout(&mut self, now: Instant, age: std::time::Duration) -> usize {
        let mut marked = 0;
        let mut first = true;
        for i in 0..self.segments.len() {
            let seg = &self.segments[i];
            if !seg.in_flight() {
                continue;
            }
            if first || seg.sent_at + age <= now {
                marked += usize::from(self.mark_lost_at(i, true));
            }
            first = false;
        }
        marked
    }

    /// A timeout over repaired links: the oldest segment in flight, and the holes the receiver
    /// reported (in flight below a SACKed segment) that left at least `age` ago, are lost.
    /// Segments beyond the highest SACKed one are most likely still on their way (a reroute
    /// delays them; it does not lose them). Returns how many were marked.
    pub fn mark_holes_lost_on_timeout(&mut self, now: Instant, age: std::time::Duration) -> usize {
        let highest_sacked = self.segments.iter().rposition(|s| s.sacked);
        let mut marked = 0;
        let mut first = true;
        for i in 0..self.segments.len() {
            let seg = &self.segments[i];
            if !seg.in_flight() {
                continue;
            }
            let hole = highest_sacked.is_some_and(|h| i < h) && seg.sent_at + age <= now;
            if first || hole {
                marked += usize::from(self.mark_lost_at(i, true));
            }
            first = false;
        }
        marked
    }

    /// The timeout that marked segments lost was spurious: put the ones not yet resent back
    /// in flight.
    pub fn undo_timeout_losses(&mut self) {
        let starts: Vec<u64> = self.lost.iter().copied().collect();
        for start in starts {
            if let Some(i) = self.index_of(start) {
                let seg = &mut self.segments[i];
                if seg.lost_by_timeout {
                    seg.lost = false;
                    seg.lost_by_timeout = false;
                    self.in_flight += u64::from(seg.len);
                    self.lost.remove(&start);
                }
            }
        }
    }

    /// Marks the oldest segment neither SACKed nor already lost for retransmission (a probe
    /// after the path came back). Returns whether there was one.
    pub fn mark_first_in_flight_lost(&mut self) -> bool {
        match self.segments.iter().position(SentSegment::in_flight) {
            Some(i) => self.mark_lost_at(i, false),
            None => false,
        }
    }

    /// Marks the newest segment in flight for retransmission (a tail loss probe), as if a
    /// timer had declared it lost. Returns whether there was one.
    pub fn mark_last_in_flight_lost(&mut self) -> bool {
        match self.segments.iter().rposition(SentSegment::in_flight) {
            Some(i) => self.mark_lost_at(i, true),
            None => false,
        }
    }

    /// RACK (RFC 8985): a segment sent before the most recently delivered one is lost once
    /// `wait` has passed since it was sent. Marks those and returns how many were marked,
    /// the latest send time among them, and the earliest time another one would qualify.
    pub fn detect_losses(
        &mut self,
        now: Instant,
        delivered_sent_at: Instant,
        delivered_end: u64,
        wait: std::time::Duration,
    ) -> LossScan {
        let mut scan = LossScan::default();
        for i in 0..self.segments.len() {
            let seg = &self.segments[i];
            let sent_earlier = seg.sent_at < delivered_sent_at
                || (seg.sent_at == delivered_sent_at && seg.end() <= delivered_end);
            if !sent_earlier {
                // Never-retransmitted segments go out in offset order, and anything above
                // one was (re)sent after it: nothing further can qualify.
                if seg.transmissions == 1 {
                    break;
                }
                continue;
            }
            if !seg.in_flight() {
                continue;
            }
            let deadline = seg.sent_at + wait;
            let sent_at = seg.sent_at;
            if deadline <= now {
                if self.mark_lost_at(i, false) {
                    scan.marked += 1;
                    scan.latest_sent_at = scan.latest_sent_at.max(Some(sent_at));
                }
            } else {
                scan.next_deadline = weft_core::time::earliest(scan.next_deadline, Some(deadline));
            }
        }
        scan
    }

    /// Applies a cumulative ack and SACK blocks.
    pub fn on_ack(&mut self, ack: u64, sacks: &[(u64, u64)]) -> AckedSummary {
        let mut out = AckedSummary::default();
        let data_ack = ack.min(self.data_end());
        while let Some(front) = self.segments.front() {
            if front.end() > ack {
                break;
            }
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            self.lost.remove(&seg.start);
            if !seg.sacked {
                self.note_acked(&seg, &mut out);
                if !seg.lost {
                    self.in_flight -= u64::from(seg.len);
                }
            }
            if seg.fin {
                self.fin_acked = true;
                out.progress = true;
            }
        }
        // The receiver trimmed a segment at its window edge and acknowledged part of it.
        if let Some(front) = self.segments.front_mut() {
            if front.start < data_ack {
                let cut = data_ack - front.start;
                if !front.sacked && !front.lost {
                    self.in_flight -= cut;
                }
                self.lost.remove(&front.start);
                front.start = data_ack;
                front.len -= cut as u32;
                out.newly_acked_bytes += cut;
                if front.lost {
                    self.lost.insert(front.start);
                }
            }
        }
        if data_ack > self.una {
            self.buf.drain(..(data_ack - self.una) as usize);
            self.una = data_ack;
            out.cumulative_advanced = true;
            out.progress = true;
        }
        for &(start, end) in sacks {
            let mut i = self.segments.partition_point(|s| s.start < start);
            while i < self.segments.len() && self.segments[i].end() <= end {
                let seg = &mut self.segments[i];
                if !seg.sacked {
                    seg.sacked = true;
                    let was_lost = seg.lost;
                    seg.lost = false;
                    let seg = seg.clone();
                    if was_lost {
                        self.lost.remove(&seg.start);
                    } else {
                        self.in_flight -= u64::from(seg.len);
                    }
                    self.note_acked(&seg, &mut out);
                }
                i += 1;
            }
        }
        out
    }

    fn note_acked(&mut self, seg: &SentSegment, out: &mut AckedSummary) {
        out.newly_acked_bytes += u64::from(seg.len);
        out.progress = true;
        let retransmitted = seg.transmissions > 1;
        if retransmitted {
            out.retransmitted.push((seg.sent_at, seg.lost_by_timeout));
        } else if self.latest_acked_sent_at.is_some_and(|t| seg.sent_at < t) {
            out.reordering_seen = true;
        }
        if !matches!(out.latest, Some((t, ..)) if seg.sent_at < t) {
            out.latest = Some((seg.sent_at, seg.end(), retransmitted, seg.app_limited));
        }
        self.latest_acked_sent_at = Some(
            self.latest_acked_sent_at
                .map_or(seg.sent_at, |t| t.max(seg.sent_at)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    fn sender_with_segments(n: u64) -> SendStream {
        let mut s = SendStream::new(1 << 20);
        let data: Vec<u8> = (0..n * 100).map(|i| i as u8).collect();
        assert_eq!(s.write(&data), data.len());
        for i in 0..n {
            s.on_new_sent(t(i), 100, false, false);
        }
        s
    }

    #[test]
    fn cumulative_and_selective_acks() {
        let mut s = sender_with_segments(5);
        assert_eq!(s.in_flight(), 500);
        let a = s.on_ack(100, &[(300, 500)]);
        assert_eq!(a.newly_acked_bytes, 300);
        assert!(a.cumulative_advanced);
        assert_eq!(
            s.in_flight(),
            200,
            "[100, 300) is neither acknowledged nor SACKed"
        );
        assert_eq!(s.una(), 100);
        let mut out = Vec::new();
        s.copy_bytes(100, 4, &mut out);
        assert_eq!(out, vec![100, 101, 102, 103]);
        let a = s.on_ack(500, &[]);
        assert_eq!(
            a.newly_acked_bytes, 200,
            "SACKed bytes are not counted twice"
        );
        assert!(!s.has_unacked());
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn rack_marks_only_segments_sent_before_a_delivered_one() {
        let mut s = sender_with_segments(4);
        // Segment 2 (sent at t2) delivered; 0 and 1 were sent earlier.
        s.on_ack(0, &[(200, 300)]);
        let scan = s.detect_losses(
            t(2) + Duration::from_micros(500),
            t(2),
            300,
            Duration::from_millis(2),
        );
        assert_eq!(scan.marked, 1, "segment 0 waited long enough");
        assert_eq!(scan.latest_sent_at, Some(t(0)));
        assert_eq!(
            scan.next_deadline,
            Some(t(3)),
            "segment 1 qualifies at t1 + 2 ms"
        );
        assert_eq!(s.first_lost().map(|x| x.start), Some(0));
        assert_eq!(s.in_flight(), 200);
        s.on_retransmitted(0, t(4));
        assert!(s.first_lost().is_none());
        assert_eq!(s.in_flight(), 300);
        let a = s.on_ack(100, &[]);
        assert_eq!(a.retransmitted.len(), 1);
    }

    #[test]
    fn timeout_marks_everything_and_can_be_undone() {
        let mut s = sender_with_segments(3);
        s.on_ack(0, &[(100, 200)]);
        assert_eq!(
            s.mark_lost_on_timeout(t(2), Duration::from_millis(5)),
            1,
            "only the oldest is old enough"
        );
        assert_eq!(s.in_flight(), 100);
        assert_eq!(
            s.mark_lost_on_timeout(t(7), Duration::from_millis(5)),
            1,
            "now the third is too"
        );
        assert_eq!(s.in_flight(), 0);
        s.on_retransmitted(0, t(10));
        s.undo_timeout_losses();
        assert!(s.first_lost().is_none());
        assert_eq!(s.in_flight(), 200);
    }

    #[test]
    fn partial_ack_trims_the_front_segment() {
        let mut s = sender_with_segments(2);
        let a = s.on_ack(150, &[]);
        assert_eq!(a.newly_acked_bytes, 150);
        assert_eq!(s.in_flight(), 50);
        assert_eq!(
            s.segments().next().map(|x| (x.start, x.len)),
            Some((150, 50))
        );
    }

    #[test]
    fn fin_is_acknowledged_past_the_data() {
        let mut s = SendStream::new(100);
        s.write(b"abc");
        s.request_fin();
        assert_eq!(s.capacity_left(), 0);
        s.on_new_sent(t(0), 3, true, true);
        s.on_ack(3, &[]);
        assert!(!s.fin_acked());
        s.on_ack(4, &[]);
        assert!(s.fin_acked() && !s.has_unacked());
    }
}
