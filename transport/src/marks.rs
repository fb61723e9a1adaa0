//! How a session answers congestion marks (CE) from relays: in proportion to the share of its
//! traffic that was marked, as DCTCP does (RFC 8257).
//!
//! Relays mark a flow's packets once its queue passes a shallow threshold, so that relay queues
//! stay short. Halving the window on every marked round, as for a loss, leaves a fast path idle:
//! when the relays are busy processes on a shared CPU, one scheduling hiccup queues a few
//! milliseconds of a fast flow and marks a handful of packets of an otherwise empty queue. A
//! queue that persists marks nearly every packet, the marked share tends to 1, and the window
//! halves each round, as it did before.

use std::time::Duration;
use weft_core::Instant;

/// Weight of the newest observation window in the marked share (RFC 8257's `g`).
const GAIN: f64 = 1.0 / 16.0;

#[derive(Debug, Clone)]
pub struct MarkResponse {
    /// Smoothed share of segments marked (DCTCP's α), starting at 1 so that the first marks
    /// are answered as firmly as a loss.
    alpha: f64,
    window_end: Option<Instant>,
    acked: u64,
    marked: u64,
}

impl Default for MarkResponse {
    fn default() -> Self {
        MarkResponse {
            alpha: 1.0,
            window_end: None,
            acked: 0,
            marked: 0,
        }
    }
}

impl MarkResponse {
    /// An ack that newly covers `acked` segments, `marked` of which arrived with CE. Returns
    /// the factor to apply to the congestion window when there are marks. Observation windows
    /// last one smoothed RTT.
    pub fn on_ack(&mut self, now: Instant, srtt: Duration, acked: u64, marked: u64) -> Option<f64> {
        match self.window_end {
            Some(end) if now < end => {}
            Some(_) => {
                let total = self.acked.max(self.marked);
                if total > 0 {
                    let share = self.marked as f64 / total as f64;
                    self.alpha = (1.0 - GAIN) * self.alpha + GAIN * share;
                }
                self.acked = 0;
                self.marked = 0;
                self.window_end = Some(now + srtt);
            }
            None => self.window_end = Some(now + srtt),
        }
        self.acked += acked;
        self.marked += marked;
        (marked > 0).then(|| 1.0 - self.alpha / 2.0)
    }

    pub fn marked_share(&self) -> f64 {
        self.alpha
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    const RTT: Duration = Duration::from_millis(10);

    #[test]
    fn first_marks_halve_the_window() {
        let mut m = MarkResponse::default();
        assert_eq!(m.on_ack(t(0), RTT, 10, 1), Some(0.5));
    }

    #[test]
    fn rare_marks_cost_little_once_the_share_is_known() {
        let mut m = MarkResponse::default();
        // 100 rounds of 100 segments, one marked segment every tenth round.
        let mut last = None;
        for round in 0..100u64 {
            let marked = u64::from(round % 10 == 9);
            last = m.on_ack(t(round * 10), RTT, 100, marked).or(last);
        }
        let factor = last.unwrap_or(0.0);
        assert!(m.marked_share() < 0.01, "share {}", m.marked_share());
        assert!(factor > 0.99, "factor {factor}");
    }

    #[test]
    fn a_standing_queue_marks_everything_and_halves_each_round() {
        let mut m = MarkResponse::default();
        for round in 0..50u64 {
            m.on_ack(t(round * 10), RTT, 100, 100);
        }
        assert!(m.marked_share() > 0.99);
        let factor = m.on_ack(t(500), RTT, 100, 100).unwrap_or(1.0);
        assert!(factor < 0.51, "factor {factor}");
    }

    #[test]
    fn the_share_follows_the_marked_fraction() {
        let mut m = MarkResponse::default();
        for round in 0..200u64 {
            m.on_ack(t(round * 10), RTT, 100, 30);
        }
        assert!(
            (m.marked_share() - 0.3).abs() < 0.01,
            "share {}",
            m.marked_share()
        );
    }
}
