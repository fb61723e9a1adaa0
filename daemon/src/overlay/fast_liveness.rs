//! Fast failure detection on links that carry traffic (issue 22): a BFD-like promise carried
//! in hellos, with the number of misses that declare a neighbour dead computed from the loss
//! measured on the link.
//!
//! While a link carries routed data (sent or received within [`ACTIVE_FOR`]), its end sends
//! something — data, an ack, a hello — at least every `interval`, sending a small hello when
//! nothing else left in that time, and says so in every hello (`Hello::fast_interval_us`).
//! A receiver that holds such a promise declares the neighbour dead after
//! [`misses_for`]`(loss)` intervals of silence instead of the dead interval: the number of
//! consecutive losses that happen by chance with probability [`FALSE_DEATH_TARGET`] at the
//! measured loss. Idle links keep the ordinary hellos (their cost does not change).
//!
//! A link that stops carrying traffic withdraws the promise in its next hellos, and keeps
//! sending at the fast interval for [`TAIL`] more intervals, so a receiver that lost the
//! first withdrawals still hears from it before its silence threshold (at most
//! [`MAX_MISSES`] intervals).

use std::time::Duration;
use weft_core::Instant;

/// A link carried data this recently: it is active and keeps its fast promise.
pub const ACTIVE_FOR: Duration = Duration::from_secs(1);
/// Chance per interval of a false death that the miss count aims at (per direction).
pub const FALSE_DEATH_TARGET: f64 = 1e-10;
/// Loss below this is treated as this (a fresh or lucky estimate must not make a link brittle).
pub const MIN_LOSS: f64 = 0.02;
/// The measured loss is scaled by this before use (the estimate is an EWMA of few samples).
pub const LOSS_MARGIN: f64 = 1.5;
/// Fewest and most intervals of silence that declare a neighbour dead.
pub const MIN_MISSES: u32 = 4;
pub const MAX_MISSES: u32 = 16;
/// Keepalives still sent at the fast interval after a link went idle (above `MAX_MISSES`, so
/// a receiver that missed the withdrawal still hears one before it would give up).
pub const TAIL: u8 = 24;
/// Promised intervals are clamped to this range.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(1);

/// Intervals of silence that declare a neighbour dead at `loss` (fraction of its packets
/// lost): the least n with `p^n ≤ FALSE_DEATH_TARGET`, p the loss with margin.
pub fn misses_for(loss: f64) -> u32 {
    let p = if loss.is_finite() {
        (loss * LOSS_MARGIN).clamp(MIN_LOSS, 0.9)
    } else {
        0.9
    };
    let n = (FALSE_DEATH_TARGET.ln() / p.ln()).ceil();
    // n is finite and positive: ln p < 0 for p in [MIN_LOSS, 0.9].
    (n as u32).clamp(MIN_MISSES, MAX_MISSES)
}

/// One link's fast-liveness state.
#[derive(Debug, Clone, Default)]
pub struct FastLiveness {
    /// When anything was last sent to the neighbour.
    last_sent: Option<Instant>,
    /// When routed data last crossed the link (either way).
    last_data: Option<Instant>,
    /// Whether the link counted as active at the last check (to start the tail).
    was_active: bool,
    /// Keepalives still owed at the fast interval after the link went idle.
    tail: u8,
    /// The interval the neighbour promised in its latest hello.
    peer_interval: Option<Duration>,
}

impl FastLiveness {
    pub fn on_sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
    }

    /// Routed data crossed the link: it is active from now on.
    pub fn on_data(&mut self, now: Instant) {
        self.last_data = Some(now);
        self.was_active = true;
    }

    fn active(&self, now: Instant) -> bool {
        self.last_data
            .is_some_and(|t| now.saturating_since(t) < ACTIVE_FOR)
    }

    /// The interval to promise in a hello sent now (None: no promise).
    pub fn promise(&self, now: Instant, interval: Option<Duration>) -> Option<Duration> {
        interval.filter(|_| self.active(now))
    }

    /// Moves between active and idle: a link that just went idle owes the tail.
    pub fn update(&mut self, now: Instant) {
        let active = self.active(now);
        if self.was_active && !active {
            self.tail = TAIL;
        }
        self.was_active = active;
    }

    /// When a keepalive falls due, as of the last [`update`](Self::update) (None: the link is
    /// idle and owes no tail, or nothing was ever sent).
    pub fn keepalive_due(&self, interval: Option<Duration>) -> Option<Instant> {
        let interval = interval?;
        if !self.was_active && self.tail == 0 {
            return None;
        }
        self.last_sent.map(|t| t + interval)
    }

    /// A keepalive was sent (one less owed in the tail).
    pub fn sent_keepalive(&mut self) {
        if !self.was_active {
            self.tail = self.tail.saturating_sub(1);
        }
    }

    /// The neighbour's hello promised this interval (0: none).
    pub fn on_peer_promise(&mut self, interval_us: u32) {
        self.peer_interval = (interval_us != 0).then(|| {
            Duration::from_micros(u64::from(interval_us)).clamp(MIN_INTERVAL, MAX_INTERVAL)
        });
    }

    /// The neighbour is no longer heard (link down, restart): its promise is void.
    pub fn forget_peer(&mut self) {
        self.peer_interval = None;
    }

    /// The silence after which the neighbour is dead under its promise, at `loss`.
    pub fn dead_after(&self, loss: f64) -> Option<Duration> {
        self.peer_interval.map(|i| i * misses_for(loss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_grow_with_loss_and_are_bounded() {
        assert_eq!(misses_for(0.0), 6); // 0.02^6 ≈ 6e-11
        assert_eq!(misses_for(f64::NAN), MAX_MISSES);
        let mut last = 0;
        for loss in [0.0, 0.01, 0.03, 0.05, 0.1, 0.2, 0.4, 1.0] {
            let n = misses_for(loss);
            assert!(n >= last, "{loss}: {n} < {last}");
            assert!((MIN_MISSES..=MAX_MISSES).contains(&n));
            let p = (loss * LOSS_MARGIN).clamp(MIN_LOSS, 0.9);
            if n < MAX_MISSES {
                assert!(p.powi(n as i32) <= FALSE_DEATH_TARGET, "{loss}: {n}");
            }
            last = n;
        }
        // 5 % loss: 9 misses (0.075^9 ≈ 7e-11): 45 ms at a 5 ms interval.
        assert_eq!(misses_for(0.05), 9);
    }

    #[test]
    fn an_idle_link_owes_a_tail_then_nothing() {
        let i = Some(Duration::from_millis(5));
        let mut f = FastLiveness::default();
        let t0 = Instant::from_nanos(1_000_000_000);
        f.on_sent(t0);
        assert_eq!(f.keepalive_due(i), None, "idle from the start");
        f.on_data(t0);
        assert_eq!(f.promise(t0, i), i);
        assert_eq!(f.keepalive_due(i), Some(t0 + Duration::from_millis(5)));
        f.update(t0 + ACTIVE_FOR / 2);
        f.sent_keepalive();
        assert!(f.keepalive_due(i).is_some(), "still active");
        let idle = t0 + ACTIVE_FOR;
        f.update(idle);
        assert_eq!(f.promise(idle, i), None);
        for k in 0..TAIL {
            assert!(f.keepalive_due(i).is_some(), "tail keepalive {k}");
            f.sent_keepalive();
        }
        assert_eq!(f.keepalive_due(i), None);
        f.on_data(idle);
        assert_eq!(f.keepalive_due(None), None, "off: never");
    }

    #[test]
    fn a_promise_sets_the_threshold() {
        let mut f = FastLiveness::default();
        assert_eq!(f.dead_after(0.0), None);
        f.on_peer_promise(5_000);
        assert_eq!(f.dead_after(0.0), Some(Duration::from_millis(30)));
        f.on_peer_promise(0);
        assert_eq!(f.dead_after(0.0), None);
        f.on_peer_promise(1);
        assert_eq!(f.dead_after(0.0), Some(MIN_INTERVAL * 6));
    }
}
