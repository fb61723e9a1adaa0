//! Redundant copies for sparse links.
//!
//! A lost packet of a sparse flow (a message every 20 ms) is repaired by the loss timer about
//! one link RTT after it left, and that repair is what sets a sparse flow's tail latency. When
//! a link is *sparse* — nothing queued or awaiting retransmission, little in flight and a
//! recent send rate far below what the window carries — each new data packet is sent a second
//! time `delay` later, so one loss costs `delay` instead of a round trip. The copy repeats the
//! sequence number, so the receiver's duplicate suppression already keeps delivery exactly
//! once; it carries its own send time (so an RTT sampled from it is right) and a flag, so the
//! receiver counts copies apart from duplicates. The receiver acks a copy at once either way:
//! when the original's ack was lost, the copy's ack stops the timer from resending.
//!
//! Copies are not retransmissions: they do not enter the congestion window, the pacer or the
//! loss counters, and they do not count as link retransmissions. The sender restarts the
//! packet's loss timer from the copy (otherwise the timer, which runs about one RTT from the
//! original, would fire just before the copy's ack returns and resend a delivered packet), and
//! when the first ack for the packet echoes the copy's send time the original (or its ack) was
//! lost: the loss estimate hears of it as it would have heard of the repair, but no congestion
//! is signalled since nothing needed repair.
//!
//! What copies may cost is capped by a token bucket on copy bytes, refilled at a small
//! fraction of the link's rate (window / srtt) with a floor that covers a sparse stream; a
//! busy link is never sparse, so bulk transfers send essentially no copies. A copy whose
//! packet was acknowledged (or declared lost) before it was due is not sent, nor is one whose
//! packet was followed by [`FOLLOWERS_ENOUGH`] new packets by then: their acks reveal its loss
//! within about a round trip, and a copy would only add load. That matters on relays, whose
//! links forward each packet as it arrives and so look sparse to the tests above (nothing
//! queued, a window grown far beyond what is in flight) while they carry a bulk stream.

use std::collections::VecDeque;
use std::time::Duration;
use weft_core::Instant;

/// Settings of redundant copies on sparse links.
#[derive(Debug, Clone, PartialEq)]
pub struct RedundancyConfig {
    /// Send copies at all (on by default).
    pub enabled: bool,
    /// How long after its original a copy leaves (2 ms). Apart by more than one full-size
    /// packet's serialisation at 10 Mbit/s (1.2 ms), so original and copy do not fall into
    /// the same short burst of loss (a queue overflowing for a packet time or two, one
    /// corrupted frame); far below the ~20 ms link RTT after which the loss timer would repair
    /// the packet anyway. Kept short because each rescued packet arrives this much late, and
    /// at 1–2 % loss per link over 4 hops the rescued packets are the ones that set p99 (4 ms
    /// measured p99 49 ms on the benchmark's path where kernel CUBIC's was 147 ms: just over
    /// the 1/3 goal). On links whose RTT is shorter the ack usually comes first and the copy
    /// is dropped.
    pub delay: Duration,
    /// Copy bytes per second always allowed (32 000): twice a 50 messages/s stream of 200-byte
    /// messages with the overlay's headers (~330 bytes each), so such a stream is fully covered
    /// even beside a second one.
    pub budget_floor_bytes_per_sec: u64,
    /// Fraction of the link's estimated rate (window / srtt) copies may use when that is more
    /// than the floor (0.02).
    pub budget_fraction: f64,
}

impl Default for RedundancyConfig {
    fn default() -> Self {
        RedundancyConfig {
            enabled: true,
            delay: Duration::from_millis(2),
            budget_floor_bytes_per_sec: 32_000,
            budget_fraction: 0.02,
        }
    }
}

impl RedundancyConfig {
    pub(crate) fn sanitized(mut self) -> Self {
        if !(0.0..=1.0).contains(&self.budget_fraction) {
            self.budget_fraction = if self.budget_fraction > 1.0 { 1.0 } else { 0.0 };
        }
        self
    }
}

/// A link counts as sparse only while its recent send rate is below this share of what its
/// window carries per RTT...
const SPARSE_RATE_SHARE: f64 = 1.0 / 8.0;
/// ...and no more than this share of the window is in flight.
const SPARSE_IN_FLIGHT_SHARE: u64 = 4;
/// Time constant of the send-rate average: a few message intervals of a sparse flow, short
/// enough that a link returns to sparse soon after a bulk transfer ends.
const RATE_TIME_CONSTANT: Duration = Duration::from_millis(100);
/// The bucket holds this much time's worth of budget, so a short run of messages is covered.
const BUCKET_DEPTH: Duration = Duration::from_millis(200);
/// A packet followed by this many new packets before its copy is due gets no copy (a stream,
/// not a sparse flow: time-ordered loss detection hears of its loss from their acks). Two
/// sparse flows side by side interleave one packet each: below this.
pub(crate) const FOLLOWERS_ENOUGH: u64 = 4;

/// How loaded the link is when a new packet leaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkLoad {
    /// Something is queued or awaiting retransmission behind this packet.
    pub backlog: bool,
    /// Bytes in flight, this packet included.
    pub in_flight_bytes: u64,
    pub window: u64,
    pub srtt: Duration,
}

impl LinkLoad {
    /// Bytes per second the window carries at the current RTT.
    fn capacity(&self) -> f64 {
        self.window as f64 / self.srtt.as_secs_f64().max(1e-6)
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RedundancyCounters {
    pub copies_sent: u64,
    /// Payload bytes of the copies (comparable to `bytes_sent`).
    pub copy_bytes: u64,
    /// Copies not sent because enough new packets followed their original.
    pub copies_skipped_followed: u64,
}

/// Decides which packets get a copy and when it is due; owns the budget.
#[derive(Debug)]
pub(crate) struct Redundancy {
    cfg: RedundancyConfig,
    /// (due, seq), in due order (the delay is fixed and time only advances).
    pending: VecDeque<(Instant, u64)>,
    /// Budget left, bytes; refilled up to the bucket's depth.
    tokens: f64,
    refilled_at: Instant,
    /// Exponentially weighted send rate of new data, bytes per second.
    send_rate: f64,
    rate_at: Instant,
    pub counters: RedundancyCounters,
}

impl Redundancy {
    pub fn new(cfg: RedundancyConfig, now: Instant) -> Self {
        let tokens = cfg.budget_floor_bytes_per_sec as f64 * BUCKET_DEPTH.as_secs_f64();
        Redundancy {
            cfg,
            pending: VecDeque::new(),
            tokens,
            refilled_at: now,
            send_rate: 0.0,
            rate_at: now,
            counters: RedundancyCounters::default(),
        }
    }

    /// A new data packet of `len` payload bytes left as `seq`: schedule its copy if the link
    /// is sparse and the budget has room.
    pub fn on_new_sent(&mut self, now: Instant, seq: u64, len: u64, load: LinkLoad) {
        let capacity = load.capacity();
        // The rate before this packet: a sparse packet must not disqualify itself.
        let recent_rate = self.decayed_rate(now);
        self.send_rate = recent_rate + len as f64 / RATE_TIME_CONSTANT.as_secs_f64();
        self.rate_at = now;
        let sparse = !load.backlog
            && load.in_flight_bytes.saturating_mul(SPARSE_IN_FLIGHT_SHARE) <= load.window
            && recent_rate <= capacity * SPARSE_RATE_SHARE;
        if !self.cfg.enabled || !sparse {
            return;
        }
        self.refill(now, capacity);
        if self.tokens >= len as f64 {
            self.pending.push_back((now + self.cfg.delay, seq));
        }
    }

    /// The next due copy, if its packet still qualifies (`in_flight`, and fewer than
    /// [`FOLLOWERS_ENOUGH`] new packets sent after it: `next_seq` is the next new sequence
    /// number) and the budget admits it; copies that no longer qualify are dropped on the way.
    pub fn take_due(
        &mut self,
        now: Instant,
        load: LinkLoad,
        next_seq: u64,
        mut in_flight_len: impl FnMut(u64) -> Option<u64>,
    ) -> Option<u64> {
        while let Some(&(due, seq)) = self.pending.front() {
            if due > now {
                return None;
            }
            self.pending.pop_front();
            if next_seq.saturating_sub(seq.saturating_add(1)) >= FOLLOWERS_ENOUGH {
                self.counters.copies_skipped_followed += 1;
                continue;
            }
            let Some(len) = in_flight_len(seq) else {
                continue;
            };
            self.refill(now, load.capacity());
            if self.tokens < len as f64 {
                continue;
            }
            self.tokens -= len as f64;
            self.counters.copies_sent += 1;
            self.counters.copy_bytes += len;
            return Some(seq);
        }
        None
    }

    /// Drops the copies at the front whose packets no longer need one (acknowledged), so they
    /// cause no wakeup. Only the front: acks mostly arrive in order, and scanning the whole
    /// schedule on every ack cost a tenth of a relay's instructions; a stale copy further back
    /// is dropped when it falls due (`take_due` checks again).
    pub fn forget(&mut self, mut needed: impl FnMut(u64) -> bool) {
        while let Some(&(_, seq)) = self.pending.front() {
            if needed(seq) {
                return;
            }
            self.pending.pop_front();
        }
    }

    /// Drops every scheduled copy (the link's packets were taken or restarted).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.pending.front().map(|&(due, _)| due)
    }

    fn decayed_rate(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_since(self.rate_at).as_secs_f64();
        self.send_rate * (-elapsed / RATE_TIME_CONSTANT.as_secs_f64()).exp()
    }

    fn refill(&mut self, now: Instant, capacity: f64) {
        let rate =
            (capacity * self.cfg.budget_fraction).max(self.cfg.budget_floor_bytes_per_sec as f64);
        let elapsed = now.saturating_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + rate * elapsed).min(rate * BUCKET_DEPTH.as_secs_f64());
        self.refilled_at = self.refilled_at.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    fn idle_link() -> LinkLoad {
        LinkLoad {
            backlog: false,
            in_flight_bytes: 200,
            window: 13_500,
            srtt: Duration::from_millis(20),
        }
    }

    #[test]
    fn sparse_packets_get_one_copy_after_the_delay() {
        let cfg = RedundancyConfig {
            delay: Duration::from_millis(4),
            ..Default::default()
        };
        let mut r = Redundancy::new(cfg, t(0));
        r.on_new_sent(t(0), 0, 200, idle_link());
        assert_eq!(r.next_due(), Some(t(4)));
        assert_eq!(r.take_due(t(3), idle_link(), 1, |_| Some(200)), None);
        assert_eq!(r.take_due(t(4), idle_link(), 1, |_| Some(200)), Some(0));
        assert_eq!(
            r.take_due(t(4), idle_link(), 1, |_| Some(200)),
            None,
            "one copy"
        );
        assert_eq!(r.next_due(), None);
        assert_eq!(r.counters.copies_sent, 1);
        assert_eq!(r.counters.copy_bytes, 200);
    }

    #[test]
    fn busy_links_and_delivered_packets_get_no_copy() {
        let mut r = Redundancy::new(RedundancyConfig::default(), t(0));
        let queued = LinkLoad {
            backlog: true,
            ..idle_link()
        };
        r.on_new_sent(t(0), 0, 200, queued);
        let full = LinkLoad {
            in_flight_bytes: 10_000,
            ..idle_link()
        };
        r.on_new_sent(t(0), 1, 200, full);
        assert_eq!(r.next_due(), None);
        r.on_new_sent(t(1), 2, 200, idle_link());
        assert_eq!(
            r.take_due(t(10), idle_link(), 3, |_| None),
            None,
            "acked before due"
        );
        let off = RedundancyConfig {
            enabled: false,
            ..Default::default()
        };
        let mut r = Redundancy::new(off, t(0));
        r.on_new_sent(t(0), 0, 200, idle_link());
        assert_eq!(r.next_due(), None);
    }

    #[test]
    fn a_packet_followed_by_a_stream_gets_no_copy() {
        // A relay forwards each packet as it arrives: nothing queued, a window far above what
        // is in flight, so every packet looks sparse when it leaves. By the time the copies
        // fall due, those followed by enough new packets are left to loss detection.
        let mut r = Redundancy::new(RedundancyConfig::default(), t(0));
        r.on_new_sent(t(0), 0, 200, idle_link());
        r.on_new_sent(t(0), 1, 200, idle_link());
        let due = t(0) + RedundancyConfig::default().delay;
        // Packet 0 was followed by FOLLOWERS_ENOUGH packets (1 ..= FOLLOWERS_ENOUGH), packet 1
        // by one fewer.
        let next_seq = 1 + FOLLOWERS_ENOUGH;
        assert_eq!(
            r.take_due(due, idle_link(), next_seq, |_| Some(200)),
            Some(1)
        );
        assert_eq!(r.counters.copies_skipped_followed, 1);
        assert_eq!(r.next_due(), None);
    }

    #[test]
    fn forgetting_drops_acknowledged_copies_from_the_front() {
        let mut r = Redundancy::new(RedundancyConfig::default(), t(0));
        for seq in 0..3 {
            r.on_new_sent(t(0), seq, 200, idle_link());
        }
        // 0 and 2 acked: 0 goes now, 2 when it falls due (behind 1, which is still needed).
        r.forget(|seq| seq == 1);
        assert_eq!(r.pending.len(), 2);
        let due = t(0) + RedundancyConfig::default().delay;
        let in_flight = |seq| (seq == 1).then_some(200);
        assert_eq!(r.take_due(due, idle_link(), 3, in_flight), Some(1));
        assert_eq!(r.take_due(due, idle_link(), 3, in_flight), None);
        assert_eq!(r.next_due(), None);
    }

    #[test]
    fn a_fast_sender_stops_being_sparse() {
        // 1350-byte packets every 0.5 ms (21.6 Mbit/s) on a window that carries 5.4 Mbit/s:
        // copies stop once the rate average catches up, well before the budget would.
        let mut r = Redundancy::new(RedundancyConfig::default(), t(0));
        let mut copied = 0;
        for i in 0..200u64 {
            let now = Instant::from_micros(i * 500);
            r.on_new_sent(now, i, 1350, idle_link());
            copied += r.pending.len();
            r.clear();
        }
        assert!(copied <= 10, "{copied} copies");
    }

    #[test]
    fn the_budget_caps_copy_bytes() {
        let cfg = RedundancyConfig::default();
        let floor = cfg.budget_floor_bytes_per_sec;
        let mut r = Redundancy::new(cfg, t(0));
        // 1350-byte packets every 20 ms (67.5 kB/s) on a link whose window carries 675 kB/s:
        // sparse, and 2 % of the link's rate is below the floor, so the floor rules.
        for i in 0..500u64 {
            let now = t(20 * i);
            r.on_new_sent(now, i, 1350, idle_link());
            let due = now + Duration::from_millis(4);
            while r
                .take_due(due, idle_link(), i + 1, |_| Some(1350))
                .is_some()
            {}
        }
        let seconds = 10.0;
        let allowed = floor as f64 * (seconds + BUCKET_DEPTH.as_secs_f64()) + 1350.0;
        assert!(
            (r.counters.copy_bytes as f64) <= allowed,
            "{} copy bytes in {seconds} s",
            r.counters.copy_bytes
        );
        assert!(
            (r.counters.copy_bytes as f64) >= floor as f64 * seconds * 0.9,
            "the floor is usable"
        );
    }
}
