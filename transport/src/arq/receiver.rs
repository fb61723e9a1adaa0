//! Receive half of a link: duplicate suppression and the ack schedule. Packets are handed up
//! the moment they are new, in whatever order they come (relays must not wait for holes).

use std::time::Duration;
use weft_core::Instant;

use super::ranges::SeqRanges;
use super::wire::{AckFrame, DataHeader, Echo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    New,
    Duplicate,
    /// Further ahead than the receive window allows: dropped (the sender will resend).
    BeyondWindow,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ReceiverCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Duplicates other than redundant copies (those are `copies_discarded`).
    pub duplicates: u64,
    pub beyond_window: u64,
    /// Redundant copies that arrived first and were handed up (their original was lost or late).
    pub copies_used: u64,
    /// Redundant copies that found their original already received.
    pub copies_discarded: u64,
}

#[derive(Debug)]
pub(crate) struct Receiver {
    /// False until the first data packet tells us where the sender's sequence stands.
    synced: bool,
    /// Every sequence number below was received or given up by the sender.
    cumulative: u64,
    /// Received sequence numbers above `cumulative`.
    above: SeqRanges,
    highest: Option<u64>,
    window: u64,
    /// Timestamp of the latest-sent packet received and when it arrived.
    latest_tx: Option<(u32, Instant)>,
    max_ack_delay: Duration,
    /// New packets not yet covered by an ack we sent.
    unacked: u32,
    /// Set when the sender is best served by an ack at once: a gap, a duplicate, a request.
    ack_now_since: Option<Instant>,
    ack_deadline: Option<Instant>,
    /// A duplicate the next ack must cover, so a sender with stale knowledge stops resending.
    duplicate_hint: Option<u64>,
    pub counters: ReceiverCounters,
}

/// True if `a` is later than `b` on the 32-bit microsecond clock (wraps every ~71 minutes).
fn later(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Receiver {
    pub fn new(window: u64, max_ack_delay: Duration) -> Self {
        Receiver {
            synced: false,
            cumulative: 0,
            above: SeqRanges::default(),
            highest: None,
            window,
            latest_tx: None,
            max_ack_delay,
            unacked: 0,
            ack_now_since: None,
            ack_deadline: None,
            duplicate_hint: None,
            counters: ReceiverCounters::default(),
        }
    }

    /// Forgets the peer's sequence (it restarted); keeps the counters.
    pub fn reset(&mut self) {
        let counters = std::mem::take(&mut self.counters);
        *self = Receiver::new(self.window, self.max_ack_delay);
        self.counters = counters;
    }

    pub fn on_data(&mut self, now: Instant, header: &DataHeader, len: usize) -> Arrival {
        if !self.synced {
            self.synced = true;
            self.cumulative = header.base;
        } else if header.base > self.cumulative {
            self.advance_to(header.base);
        }
        let seq = header.seq;
        if seq >= self.cumulative && seq - self.cumulative >= self.window {
            self.counters.beyond_window += 1;
            return Arrival::BeyondWindow;
        }
        // The echo names the latest-sent transmission that got here (duplicates included:
        // they too show what the path delivered).
        let newer = match self.latest_tx {
            Some((t, _)) => later(header.tx_time_us, t),
            None => true,
        };
        if newer {
            self.latest_tx = Some((header.tx_time_us, now));
        }
        if seq < self.cumulative || self.above.contains(seq) {
            // A duplicate copy is still acked at once: if the original's ack was lost, this
            // one reaches the sender before its timer would resend a delivered packet.
            if header.copy {
                self.counters.copies_discarded += 1;
            } else {
                self.counters.duplicates += 1;
            }
            self.duplicate_hint = Some(seq);
            self.ack_now_since.get_or_insert(now);
            return Arrival::Duplicate;
        }
        let in_sequence = match self.highest {
            Some(h) => seq == h + 1,
            None => seq == self.cumulative,
        };
        if seq == self.cumulative {
            self.advance_to(seq + 1);
        } else {
            self.above.insert(seq, seq + 1, |_, _| {});
        }
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        self.counters.packets += 1;
        self.counters.bytes += len as u64;
        if header.copy {
            self.counters.copies_used += 1;
        }
        self.unacked = self.unacked.saturating_add(1);
        if header.ack_now || !in_sequence || self.unacked >= header.ack_every {
            self.ack_now_since.get_or_insert(now);
        } else {
            self.ack_deadline.get_or_insert(now + self.max_ack_delay);
        }
        Arrival::New
    }

    fn advance_to(&mut self, floor: u64) {
        self.above.remove_below(floor);
        self.cumulative = floor;
        if let Some((_, end)) = self.above.pop_first_if_starts_at(floor) {
            self.cumulative = end;
        }
    }

    /// Whether an ack should leave now (piggybacked if data goes, standalone otherwise).
    pub fn ack_due(&self, now: Instant) -> bool {
        self.ack_now_since.is_some() || self.ack_deadline.is_some_and(|d| d <= now)
    }

    /// When the pending ack falls due (in the past if it is due already).
    pub fn ack_timeout(&self) -> Option<Instant> {
        self.ack_now_since.or(self.ack_deadline)
    }

    /// The ack to send now, naming at most `max_ranges` ranges; marks the schedule as served.
    pub fn take_ack(&mut self, now: Instant, max_ranges: usize) -> AckFrame {
        let echo = self.latest_tx.map(|(tx_time_us, at)| Echo {
            tx_time_us,
            delay_us: u32::try_from(now.saturating_since(at).as_micros()).unwrap_or(u32::MAX),
        });
        let mut ranges: Vec<(u64, u64)> = self.above.iter_descending().take(max_ranges).collect();
        // The newest ranges drive loss detection; a duplicate's range corrects a sender whose
        // view of older ranges was lost with an earlier ack.
        if let Some(hinted) = self
            .duplicate_hint
            .and_then(|d| self.above.range_containing(d))
        {
            if max_ranges > 0 && !ranges.contains(&hinted) {
                if ranges.len() == max_ranges {
                    ranges.pop();
                }
                let at = ranges.partition_point(|r| r.0 > hinted.0);
                ranges.insert(at, hinted);
            }
        }
        self.unacked = 0;
        self.ack_now_since = None;
        self.ack_deadline = None;
        self.duplicate_hint = None;
        AckFrame {
            cumulative: self.cumulative,
            window: u32::try_from(self.window).unwrap_or(u32::MAX),
            echo,
            ranges,
        }
    }

    #[cfg(test)]
    pub fn cumulative(&self) -> u64 {
        self.cumulative
    }

    pub fn gap_count(&self) -> usize {
        self.above.range_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seq: u64, base: u64) -> DataHeader {
        DataHeader {
            ack_now: false,
            ack_every: 4,
            seq,
            base,
            tx_time_us: seq as u32,
            copy: false,
        }
    }

    fn t(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn suppresses_duplicates_and_reports_holes() {
        let mut r = Receiver::new(1000, Duration::from_millis(2));
        assert_eq!(r.on_data(t(0), &data(0, 0), 10), Arrival::New);
        assert!(!r.ack_due(t(1)), "in-order data waits for the ack timer");
        assert!(r.ack_due(t(2)));
        assert_eq!(r.on_data(t(1), &data(2, 0), 10), Arrival::New);
        assert!(r.ack_due(t(1)), "a gap is acked at once");
        assert_eq!(r.on_data(t(1), &data(4, 0), 10), Arrival::New);
        assert_eq!(r.on_data(t(1), &data(2, 0), 10), Arrival::Duplicate);
        assert_eq!(r.on_data(t(1), &data(0, 0), 10), Arrival::Duplicate);
        let ack = r.take_ack(t(1), 8);
        assert_eq!(ack.cumulative, 1);
        assert_eq!(ack.ranges, vec![(4, 5), (2, 3)]);
        assert_eq!(ack.echo.map(|e| e.tx_time_us), Some(4));
        assert!(!r.ack_due(t(100)));
        assert_eq!(r.on_data(t(2), &data(1, 0), 10), Arrival::New);
        assert_eq!(r.on_data(t(2), &data(3, 0), 10), Arrival::New);
        assert_eq!(r.cumulative(), 5);
        assert_eq!(r.counters.duplicates, 2);
    }

    #[test]
    fn follows_the_senders_base_and_window() {
        let mut r = Receiver::new(10, Duration::from_millis(2));
        assert_eq!(
            r.on_data(t(0), &data(500, 498), 1),
            Arrival::New,
            "first packet syncs"
        );
        assert_eq!(r.cumulative(), 498);
        assert_eq!(r.on_data(t(0), &data(508, 498), 1), Arrival::BeyondWindow);
        assert_eq!(
            r.on_data(t(0), &data(505, 501), 1),
            Arrival::New,
            "the sender gave up on 498..501"
        );
        assert_eq!(r.cumulative(), 501);
        assert_eq!(r.take_ack(t(0), 8).ranges, vec![(505, 506)]);
    }

    #[test]
    fn duplicate_range_is_reported_even_when_ranges_overflow() {
        let mut r = Receiver::new(1000, Duration::from_millis(2));
        for seq in [2, 4, 6, 8, 10] {
            r.on_data(t(0), &data(seq, 0), 1);
        }
        r.take_ack(t(0), 2);
        r.on_data(t(0), &data(2, 0), 1);
        assert_eq!(r.take_ack(t(0), 2).ranges, vec![(10, 11), (2, 3)]);
    }

    #[test]
    fn copies_are_counted_apart_from_duplicates() {
        let mut r = Receiver::new(1000, Duration::from_millis(2));
        let original = DataHeader {
            ack_now: true,
            ..data(0, 0)
        };
        let copy = DataHeader {
            copy: true,
            tx_time_us: 7,
            ..original
        };
        assert_eq!(r.on_data(t(0), &original, 10), Arrival::New);
        let ack = r.take_ack(t(0), 8);
        assert_eq!(ack.cumulative, 1);
        assert_eq!(r.on_data(t(1), &copy, 10), Arrival::Duplicate);
        assert!(r.ack_due(t(1)), "covers a lost ack of the original");
        assert_eq!(r.take_ack(t(1), 8).echo.map(|e| e.tx_time_us), Some(7));
        assert_eq!(r.counters.copies_discarded, 1);
        assert_eq!(
            r.counters.duplicates, 0,
            "copies are not counted as duplicates"
        );

        // The original of seq 1 is lost: its copy is handed up and acked at once.
        let copy = DataHeader {
            copy: true,
            ack_now: true,
            ..data(1, 0)
        };
        assert_eq!(r.on_data(t(5), &copy, 10), Arrival::New);
        assert!(r.ack_due(t(5)));
        assert_eq!(r.counters.copies_used, 1);
        assert_eq!(r.counters.packets, 2);
        assert_eq!(r.take_ack(t(5), 8).cumulative, 2);
    }
}
