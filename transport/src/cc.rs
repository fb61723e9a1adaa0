//! Congestion control shared by the reliable link and end-to-end sessions: an RTT estimator
//! (RFC 6298), NewReno and CUBIC (RFC 9438) windows in bytes, and a pacer.
//!
//! A congestion *event* (loss detected by SACK/NACK, or a congestion mark) is reported with the
//! send time of the packet that revealed it, so that one window of losses causes one reduction:
//! events about packets sent before the current recovery period began are ignored.

use std::fmt::Debug;
use std::time::Duration;
use weft_core::Instant;

/// Smoothed RTT, variance and minimum, per RFC 6298.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min_rtt: Option<Duration>,
    latest: Duration,
    initial: Duration,
}

impl RttEstimator {
    pub fn new(initial: Duration) -> Self {
        RttEstimator {
            srtt: None,
            rttvar: initial / 2,
            min_rtt: None,
            latest: initial,
            initial,
        }
    }

    pub fn update(&mut self, sample: Duration) {
        self.latest = sample;
        self.min_rtt = Some(self.min_rtt.map_or(sample, |m| m.min(sample)));
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(sample);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
    }

    pub fn has_sample(&self) -> bool {
        self.srtt.is_some()
    }

    /// The smoothed RTT, or the configured initial guess before the first sample.
    pub fn srtt(&self) -> Duration {
        self.srtt.unwrap_or(self.initial)
    }

    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    pub fn min_rtt(&self) -> Duration {
        self.min_rtt.unwrap_or(self.initial)
    }

    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// srtt + max(granularity, 4·rttvar), clamped to `[min, max]`.
    pub fn rto(&self, granularity: Duration, min: Duration, max: Duration) -> Duration {
        let base = self.srtt() + (self.rttvar * 4).max(granularity);
        base.clamp(min, max)
    }
}

/// Which algorithm a window follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    NewReno,
    #[default]
    Cubic,
    /// No congestion control: the window stays at its maximum (for experiments only).
    None,
}

impl Algorithm {
    pub fn build(
        self,
        mss: u64,
        initial_window_packets: u64,
        max_window: u64,
    ) -> Box<dyn CongestionControl> {
        match self {
            Algorithm::NewReno => Box::new(NewReno::new(mss, initial_window_packets, max_window)),
            Algorithm::Cubic => Box::new(Cubic::new(mss, initial_window_packets, max_window)),
            Algorithm::None => Box::new(Unlimited { max_window }),
        }
    }
}

pub trait CongestionControl: Debug + Send {
    /// Bytes that may be in flight.
    fn window(&self) -> u64;
    /// `bytes` newly acknowledged; `app_limited` when the sender had less than a window to send.
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        rtt: &RttEstimator,
        app_limited: bool,
    );
    /// A loss or congestion mark on a packet sent at `sent`.
    fn on_congestion_event(&mut self, now: Instant, sent: Instant);
    /// Congestion marks on packets sent at `sent`, answered in proportion to how much traffic
    /// was marked (see [`crate::marks`]): the window becomes `window · factor`, at most once
    /// per round, like a congestion event.
    fn on_congestion_marks(&mut self, now: Instant, sent: Instant, factor: f64);
    /// A retransmission timeout fired: collapse to the minimum window.
    fn on_timeout(&mut self, now: Instant);
    fn in_slow_start(&self) -> bool;
    fn ssthresh(&self) -> u64;
    fn name(&self) -> &'static str;
}

const MIN_WINDOW_PACKETS: u64 = 2;

/// `window · factor`, with the factor kept to a reduction.
fn scaled(window: u64, factor: f64) -> u64 {
    (window as f64 * factor.clamp(0.0, 1.0)) as u64
}

#[derive(Debug, Clone)]
pub struct NewReno {
    mss: u64,
    window: u64,
    ssthresh: u64,
    max_window: u64,
    recovery_start: Option<Instant>,
    /// Bytes acknowledged since the last window increase in congestion avoidance.
    bytes_acked: u64,
}

impl NewReno {
    pub fn new(mss: u64, initial_window_packets: u64, max_window: u64) -> Self {
        let mss = mss.max(1);
        NewReno {
            mss,
            window: (mss * initial_window_packets).min(max_window),
            ssthresh: u64::MAX,
            max_window,
            recovery_start: None,
            bytes_acked: 0,
        }
    }
}

impl CongestionControl for NewReno {
    fn window(&self) -> u64 {
        self.window
    }

    fn on_ack(
        &mut self,
        _now: Instant,
        sent: Instant,
        bytes: u64,
        _rtt: &RttEstimator,
        app_limited: bool,
    ) {
        if app_limited || self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes;
        } else {
            self.bytes_acked += bytes;
            if self.bytes_acked >= self.window {
                self.bytes_acked -= self.window;
                self.window += self.mss;
            }
        }
        self.window = self.window.min(self.max_window);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        self.window = (self.window / 2).max(self.mss * MIN_WINDOW_PACKETS);
        self.ssthresh = self.window;
        self.bytes_acked = 0;
    }

    fn on_congestion_marks(&mut self, now: Instant, sent: Instant, factor: f64) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        self.window = scaled(self.window, factor).max(self.mss * MIN_WINDOW_PACKETS);
        self.ssthresh = self.window;
        self.bytes_acked = 0;
    }

    fn on_timeout(&mut self, now: Instant) {
        self.ssthresh = (self.window / 2).max(self.mss * MIN_WINDOW_PACKETS);
        self.window = self.mss * MIN_WINDOW_PACKETS;
        self.recovery_start = Some(now);
        self.bytes_acked = 0;
    }

    fn in_slow_start(&self) -> bool {
        self.window < self.ssthresh
    }

    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn name(&self) -> &'static str {
        "newreno"
    }
}

/// CUBIC per RFC 9438, with the Reno-friendly region.
#[derive(Debug, Clone)]
pub struct Cubic {
    mss: u64,
    window: u64,
    ssthresh: u64,
    max_window: u64,
    recovery_start: Option<Instant>,
    /// Window (bytes) just before the last reduction.
    w_max: f64,
    /// Time to grow back to `w_max`, seconds.
    k: f64,
    /// Start of the current congestion-avoidance epoch.
    epoch_start: Option<Instant>,
    /// Reno-friendly estimate of the window, bytes.
    w_est: f64,
}

const CUBIC_C: f64 = 0.4;
const CUBIC_BETA: f64 = 0.7;

impl Cubic {
    pub fn new(mss: u64, initial_window_packets: u64, max_window: u64) -> Self {
        let mss = mss.max(1);
        Cubic {
            mss,
            window: (mss * initial_window_packets).min(max_window),
            ssthresh: u64::MAX,
            max_window,
            recovery_start: None,
            w_max: 0.0,
            k: 0.0,
            epoch_start: None,
            w_est: 0.0,
        }
    }

    fn cubic_window(&self, t: f64) -> f64 {
        let mss = self.mss as f64;
        CUBIC_C * (t - self.k).powi(3) * mss + self.w_max
    }
}

impl CongestionControl for Cubic {
    fn window(&self) -> u64 {
        self.window
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        rtt: &RttEstimator,
        app_limited: bool,
    ) {
        if app_limited || self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        if self.window < self.ssthresh {
            self.window = (self.window + bytes).min(self.max_window);
            return;
        }
        let mss = self.mss as f64;
        let epoch = *self.epoch_start.get_or_insert_with(|| {
            self.w_est = self.window as f64;
            if self.w_max < self.window as f64 {
                self.w_max = self.window as f64;
            }
            now
        });
        if self.k == 0.0 && self.w_max > self.window as f64 {
            self.k = ((self.w_max - self.window as f64) / mss / CUBIC_C).cbrt();
        }
        let t = now.saturating_since(epoch).as_secs_f64();
        let srtt = rtt.srtt().as_secs_f64();
        let target = self
            .cubic_window(t + srtt)
            .clamp(self.window as f64, 1.5 * self.window as f64);
        // Reno-friendly estimate grows by alpha·mss per window acked.
        let alpha = 3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA);
        self.w_est += alpha * mss * (bytes as f64) / (self.window as f64).max(1.0);
        let w = self.window as f64;
        let next = if self.w_est > target {
            self.w_est
        } else {
            w + (target - w) * (bytes as f64) / w.max(1.0)
        };
        self.window = (next as u64).clamp(self.mss * MIN_WINDOW_PACKETS, self.max_window);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        let w = self.window as f64;
        // Fast convergence: release bandwidth if the window is shrinking.
        self.w_max = if w < self.w_max {
            w * (1.0 + CUBIC_BETA) / 2.0
        } else {
            w
        };
        self.window = ((w * CUBIC_BETA) as u64).max(self.mss * MIN_WINDOW_PACKETS);
        self.ssthresh = self.window;
        self.k = ((self.w_max - self.window as f64).max(0.0) / self.mss as f64 / CUBIC_C).cbrt();
        self.epoch_start = None;
    }

    fn on_congestion_marks(&mut self, now: Instant, sent: Instant, factor: f64) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        let w = self.window;
        self.w_max = w as f64;
        self.window = scaled(w, factor).max(self.mss * MIN_WINDOW_PACKETS);
        self.ssthresh = self.window;
        self.k = ((self.w_max - self.window as f64).max(0.0) / self.mss as f64 / CUBIC_C).cbrt();
        self.epoch_start = None;
    }

    fn on_timeout(&mut self, now: Instant) {
        self.on_congestion_event(now, now);
        self.window = self.mss * MIN_WINDOW_PACKETS;
        self.epoch_start = None;
    }

    fn in_slow_start(&self) -> bool {
        self.window < self.ssthresh
    }

    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn name(&self) -> &'static str {
        "cubic"
    }
}

#[derive(Debug, Clone)]
struct Unlimited {
    max_window: u64,
}

impl CongestionControl for Unlimited {
    fn window(&self) -> u64 {
        self.max_window
    }
    fn on_ack(&mut self, _: Instant, _: Instant, _: u64, _: &RttEstimator, _: bool) {}
    fn on_congestion_event(&mut self, _: Instant, _: Instant) {}
    fn on_congestion_marks(&mut self, _: Instant, _: Instant, _: f64) {}
    fn on_timeout(&mut self, _: Instant) {}
    fn in_slow_start(&self) -> bool {
        false
    }
    fn ssthresh(&self) -> u64 {
        u64::MAX
    }
    fn name(&self) -> &'static str {
        "none"
    }
}

/// The finest pacing interval a sender relies on its I/O loop to honour.
pub const PACING_GRANULARITY: Duration = Duration::from_millis(1);

/// Spreads a window's worth of packets over an RTT instead of sending them in one burst.
/// Token bucket: tokens refill at `gain · window / srtt` bytes per second, capped at `burst`.
#[derive(Debug, Clone)]
pub struct Pacer {
    tokens: f64,
    burst: f64,
    last: Option<Instant>,
}

impl Pacer {
    pub fn new(burst_bytes: u64) -> Self {
        Pacer {
            tokens: burst_bytes as f64,
            burst: burst_bytes as f64,
            last: None,
        }
    }

    fn rate(window: u64, srtt: Duration, slow_start: bool) -> f64 {
        let gain = if slow_start { 2.0 } else { 1.25 };
        let secs = srtt.as_secs_f64().max(1e-6);
        gain * window as f64 / secs
    }

    /// None if `bytes` may go now; otherwise when they may.
    ///
    /// The bucket holds at least [`PACING_GRANULARITY`] of the rate: an I/O loop cannot wake
    /// more often than its timer allows (epoll counts in milliseconds), so a fixed burst of a
    /// few packets per wake-up would cap a fast link far below its window (10 packets per
    /// millisecond is 108 Mbit/s).
    pub fn delay(
        &mut self,
        now: Instant,
        bytes: u64,
        window: u64,
        srtt: Duration,
        slow_start: bool,
    ) -> Option<Instant> {
        let rate = Self::rate(window, srtt, slow_start);
        let burst = self.burst.max(rate * PACING_GRANULARITY.as_secs_f64());
        if let Some(last) = self.last {
            self.tokens =
                (self.tokens + now.saturating_since(last).as_secs_f64() * rate).min(burst);
        }
        self.last = Some(now);
        let need = bytes as f64;
        if self.tokens >= need || self.tokens >= burst {
            return None;
        }
        let wait = (need.min(burst) - self.tokens) / rate;
        Some(now + Duration::from_secs_f64(wait.max(1e-6)))
    }

    pub fn on_sent(&mut self, bytes: u64) {
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u64 = 1000;

    fn t(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn rtt_estimator_follows_rfc6298() {
        let mut r = RttEstimator::new(Duration::from_millis(100));
        assert!(!r.has_sample());
        r.update(Duration::from_millis(40));
        assert_eq!(r.srtt(), Duration::from_millis(40));
        assert_eq!(r.rttvar(), Duration::from_millis(20));
        r.update(Duration::from_millis(80));
        assert_eq!(r.srtt(), Duration::from_millis(45));
        assert_eq!(r.min_rtt(), Duration::from_millis(40));
        let rto = r.rto(
            Duration::from_millis(1),
            Duration::from_millis(200),
            Duration::from_secs(60),
        );
        assert_eq!(rto, Duration::from_millis(200));
    }

    fn exercise(cc: &mut dyn CongestionControl) {
        let rtt = RttEstimator::new(Duration::from_millis(10));
        let w0 = cc.window();
        assert!(cc.in_slow_start());
        cc.on_ack(t(10), t(0), 5 * MSS, &rtt, false);
        assert_eq!(cc.window(), w0 + 5 * MSS, "slow start grows by bytes acked");
        let before = cc.window();
        cc.on_congestion_event(t(20), t(15));
        let after = cc.window();
        assert!(after < before, "a loss shrinks the window");
        cc.on_congestion_event(t(21), t(16));
        assert_eq!(cc.window(), after, "losses of the same flight count once");
        assert!(!cc.in_slow_start());
        for i in 0..200 {
            cc.on_ack(t(30 + i), t(25 + i), MSS, &rtt, false);
        }
        assert!(cc.window() > after, "congestion avoidance grows again");
        cc.on_timeout(t(500));
        assert_eq!(cc.window(), 2 * MSS);
    }

    #[test]
    fn newreno_basics() {
        exercise(&mut NewReno::new(MSS, 10, 1 << 30));
    }

    #[test]
    fn cubic_basics() {
        exercise(&mut Cubic::new(MSS, 10, 1 << 30));
    }

    #[test]
    fn app_limited_acks_do_not_grow() {
        let rtt = RttEstimator::new(Duration::from_millis(10));
        let mut cc = Cubic::new(MSS, 10, 1 << 30);
        cc.on_ack(t(1), t(0), 5 * MSS, &rtt, true);
        assert_eq!(cc.window(), 10 * MSS);
    }

    #[test]
    fn pacer_spreads_sends() {
        let mut p = Pacer::new(2 * MSS);
        let srtt = Duration::from_millis(10);
        let window = 10 * MSS;
        assert_eq!(p.delay(t(0), MSS, window, srtt, false), None);
        p.on_sent(MSS);
        assert_eq!(p.delay(t(0), MSS, window, srtt, false), None);
        p.on_sent(MSS);
        let next = p
            .delay(t(0), MSS, window, srtt, false)
            .expect("bucket empty");
        // 1.25 · 10 kB / 10 ms = 1.25 MB/s → 1 kB takes 0.8 ms.
        assert!(next > t(0) && next < t(1), "{next:?}");
    }

    #[test]
    fn a_fast_pacer_lets_a_millisecond_of_data_go_per_wake_up() {
        let mut p = Pacer::new(2 * MSS);
        let srtt = Duration::from_millis(1);
        // 1.25 · 800 kB / 1 ms = 1 GB/s: 1 MB per millisecond.
        let window = 800 * MSS;
        p.delay(t(0), MSS, window, srtt, false);
        p.on_sent(2 * MSS);
        let mut sent = 0;
        while p.delay(t(1), MSS, window, srtt, false).is_none() {
            p.on_sent(MSS);
            sent += 1;
        }
        // A bucket of two packets would let two through after a 1 ms sleep.
        assert!(
            (990..=1000).contains(&sent),
            "sent {sent} packets in one wake-up"
        );
    }
}

/// Tells random loss from congestion. A TCP-like response to 1 % random loss on a 20 ms link
/// caps the window near 12 packets (about 6.6 Mbit/s), so a lossy path could never be filled.
/// A loss counts as congestion only when the path shows queueing delay (smoothed RTT above
/// the minimum by a quarter of it, and by 2 ms or by 16 of our packets: the backlog estimate
/// of TCP Veno) or when the recent loss rate exceeds `tolerance` (like BBRv2's loss
/// threshold). At a shared bottleneck whose queue fills, losses coincide with queueing delay
/// and the sender backs off like CUBIC or NewReno. A tolerance of 0 makes every loss
/// congestion, as in TCP.
#[derive(Debug, Clone)]
pub struct LossClassifier {
    loss_rate: f64,
    tolerance: f64,
    mss: u64,
}

/// Queueing delay (beyond a quarter of the base RTT) that marks a loss as congestion...
const MIN_QUEUE_SIGNAL: Duration = Duration::from_millis(2);
/// ...or, on paths too short for 2 ms of queue to be the norm, this many of our own packets
/// waiting in queues.
const MIN_BACKLOG_PACKETS: u64 = 16;
/// Weight of one packet in the loss-rate average (about the last 128 packets).
const LOSS_RATE_GAIN: f64 = 1.0 / 128.0;

impl LossClassifier {
    pub fn new(tolerance: f64, mss: u64) -> Self {
        LossClassifier {
            loss_rate: 0.0,
            tolerance: tolerance.clamp(0.0, 1.0),
            mss: mss.max(1),
        }
    }

    pub fn on_delivered(&mut self) {
        self.loss_rate *= 1.0 - LOSS_RATE_GAIN;
    }

    pub fn on_lost(&mut self) {
        self.loss_rate = self.loss_rate * (1.0 - LOSS_RATE_GAIN) + LOSS_RATE_GAIN;
    }

    /// Recent fraction of packets lost.
    pub fn loss_rate(&self) -> f64 {
        self.loss_rate
    }

    /// Whether a loss now should be read as congestion.
    pub fn is_congestion(&self, rtt: &RttEstimator, window: u64) -> bool {
        let (srtt, min_rtt) = (rtt.srtt(), rtt.min_rtt());
        let queueing = srtt.saturating_sub(min_rtt);
        // Our own bytes sitting in queues along the path (Veno's backlog estimate).
        let backlog = window as f64 * queueing.as_secs_f64() / srtt.as_secs_f64().max(1e-9);
        let queue_built = queueing >= min_rtt / 4
            && (queueing >= MIN_QUEUE_SIGNAL || backlog >= (MIN_BACKLOG_PACKETS * self.mss) as f64);
        queue_built || self.loss_rate > self.tolerance
    }
}

#[cfg(test)]
mod loss_classifier_tests {
    use super::*;

    #[test]
    fn random_loss_without_queueing_is_not_congestion() {
        let mut rtt = RttEstimator::new(Duration::from_millis(20));
        for _ in 0..20 {
            rtt.update(Duration::from_millis(20));
        }
        let mut c = LossClassifier::new(0.05, 1000);
        for i in 0..1000 {
            if i % 50 == 0 {
                c.on_lost();
            } else {
                c.on_delivered();
            }
        }
        assert!(!c.is_congestion(&rtt, 100_000), "2 % loss, no queue");
        // A queue builds: the same loss is now congestion.
        for _ in 0..20 {
            rtt.update(Duration::from_millis(40));
        }
        assert!(c.is_congestion(&rtt, 100_000));
        // Heavy loss is congestion even without a queue.
        let mut rtt = RttEstimator::new(Duration::from_millis(20));
        rtt.update(Duration::from_millis(20));
        for _ in 0..200 {
            c.on_lost();
        }
        assert!(c.is_congestion(&rtt, 100_000));
        let mut strict = LossClassifier::new(0.0, 1000);
        strict.on_lost();
        assert!(
            strict.is_congestion(&rtt, 1),
            "tolerance 0: every loss is congestion"
        );
    }
}
