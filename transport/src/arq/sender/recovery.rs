//! Loss recovery for the send half.
//!
//! Loss is detected two ways, both in about one link round trip:
//! - *By time-ordered SACK (RACK, RFC 8985).* Each data packet carries the sender's clock; the
//!   receiver echoes the stamp of the latest-sent packet it got. A packet sent more than a
//!   reordering window before a delivered one, and still unacknowledged one RTT after that, is
//!   lost. Retransmissions are covered as well as originals, because the echo names the
//!   transmission, not the sequence number.
//! - *By a timer.* The oldest packet in flight is lost once `srtt + max(4·rttvar, 1 ms) +
//!   max_ack_delay` passed since it left and since the last ack that made progress (the
//!   restart of RFC 6298 §5.3). This repairs sparse traffic (a message every 20 ms): no later
//!   packet needs to arrive first, and the previous message's ack came before this one left,
//!   so the timer runs from the send. In bulk, acks keep restarting it, which matters: packets
//!   released together by one ack leave the bottleneck one after another, so the last of a
//!   burst is acked a few serialisation times later than the RTT sample (taken on the first)
//!   predicts. Consecutive expiries without progress back off exponentially; the first counts
//!   as one congestion event, a second one in a row collapses the window (RFC 5681).
//!
//! Not every loss is congestion: see `cc::LossClassifier`.

use std::time::Duration;
use weft_core::Instant;

use super::{Sender, SlotState};

const RTO_GRANULARITY: Duration = Duration::from_millis(1);
const MIN_REORDER_WINDOW: Duration = Duration::from_micros(250);
const MAX_BACKOFF_SHIFT: u32 = 16;

impl Sender {
    /// The retransmission timeout after backoff.
    pub fn rto(&self) -> Duration {
        let base =
            self.rtt.srtt() + (self.rtt.rttvar() * 4).max(RTO_GRANULARITY) + self.cfg.max_ack_delay;
        let base = base.clamp(self.cfg.min_rto, self.cfg.max_rto);
        base.saturating_mul(1 << self.backoff.min(MAX_BACKOFF_SHIFT))
            .min(self.cfg.max_rto)
    }

    pub(super) fn reorder_window(&self) -> Duration {
        (self.rtt.min_rtt() / 4).max(MIN_REORDER_WINDOW)
    }

    pub(super) fn declare_lost(&mut self, now: Instant, seq: u64) -> bool {
        let Some(slot) = self.slot_mut(seq) else {
            return false;
        };
        if slot.state != SlotState::InFlight {
            return false;
        }
        slot.state = SlotState::Lost;
        let (len, sent) = (slot.len, slot.last_sent);
        self.in_flight_bytes -= len;
        self.in_flight_packets -= 1;
        self.lost.insert(seq);
        self.losses.on_lost();
        if self.loss_is_congestion() {
            self.counters.congestion_events += 1;
            self.cc.on_congestion_event(now, sent);
        }
        true
    }

    /// Whether the path looks congested rather than randomly lossy.
    pub(super) fn loss_is_congestion(&self) -> bool {
        self.losses.is_congestion(&self.rtt, self.cc.window())
    }

    pub fn loss_rate(&self) -> f64 {
        self.losses.loss_rate()
    }

    pub(super) fn detect_by_sack(&mut self, now: Instant) {
        self.rack_deadline = None;
        let Some((delivered_at, rack_rtt)) = self.rack else {
            return;
        };
        let reorder = self.reorder_window();
        while let Some(&front) = self.send_log.front() {
            if !self.is_live(&front) {
                self.send_log.pop_front();
                continue;
            }
            if front.at >= delivered_at {
                break;
            }
            let deadline = front.at + rack_rtt + reorder;
            if deadline > now {
                self.rack_deadline = Some(deadline);
                break;
            }
            self.send_log.pop_front();
            if self.declare_lost(now, front.seq) {
                self.counters.losses_by_sack += 1;
            }
        }
    }

    /// The earliest transmission still waiting for its ack expires at this time.
    pub(super) fn rto_deadline(&self) -> Option<Instant> {
        let oldest = self.send_log.iter().find(|t| self.is_live(t))?;
        Some(self.expiry(oldest.at))
    }

    pub(super) fn expiry(&self, sent: Instant) -> Instant {
        self.last_progress.map_or(sent, |p| p.max(sent)) + self.rto()
    }

    pub fn loss_timeout(&self) -> Option<Instant> {
        weft_core::time::earliest(self.rack_deadline, self.rto_deadline())
    }

    pub fn on_timeout(&mut self, now: Instant) {
        if self.rack_deadline.is_some_and(|d| d <= now) {
            self.detect_by_sack(now);
        }
        let mut expired = false;
        loop {
            self.pop_stale_front();
            let Some(&front) = self.send_log.front() else {
                break;
            };
            if self.expiry(front.at) > now {
                break;
            }
            self.send_log.pop_front();
            if self.declare_lost(now, front.seq) {
                self.counters.losses_by_timer += 1;
                expired = true;
            }
        }
        if expired {
            self.counters.timeouts += 1;
            // `declare_lost` already offered each loss as a congestion event; a second expiry
            // with no progress in between means the path is gone, not just congested.
            if self.backoff > 0 {
                self.cc.on_timeout(now);
            }
            self.backoff = (self.backoff + 1).min(MAX_BACKOFF_SHIFT);
        }
    }
}
