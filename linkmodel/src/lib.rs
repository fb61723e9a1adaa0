//! The one model of one direction of an emulated link, sans-I/O: given a packet's length and
//! the time it entered the link, decide whether it is dropped (and why) or when it arrives
//! (and when its duplicate does, if it is duplicated). Every emulated link in weft uses it:
//! the daemon's receive-side emulation, the simulator's links, the transport tests' channels
//! and netemu's TUN-pair links.
//!
//! Order of the stages follows a real link: a cut link accepts nothing; the transmit queue
//! admits or tail-drops; the packet is serialised at the link rate; it is lost on the wire
//! (after it used its share of the link, as corruption would); it arrives after the
//! propagation delay plus jitter. Jitter either keeps order (±jitter, arrivals clamped to be
//! non-decreasing, so one FIFO per direction suffices: netem's and Spines' behaviour) or
//! reorders (each packet an independent extra delay in `[0, jitter)`: a path that reorders,
//! for testing what must survive reordering).

#![forbid(unsafe_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::time::Duration;
use weft_core::Instant;

/// How packets are lost on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossModel {
    None,
    /// Each packet is lost independently with probability `p`.
    Bernoulli {
        p: f64,
    },
    /// Two-state Markov chain evaluated per packet: move good→bad with `p_gb`, bad→good with
    /// `p_bg`, then lose the packet with the loss probability of the state it is in.
    GilbertElliott {
        p_gb: f64,
        p_bg: f64,
        loss_good: f64,
        loss_bad: f64,
    },
    /// The same chain in continuous time: the good and bad states last `mean_good` and
    /// `mean_bad` on average (exponentially distributed). Bursts are spans of time, not of
    /// packets, so sparse traffic (retransmissions backing off) does not meet implausibly
    /// long bursts.
    GilbertElliottTimed {
        #[serde(with = "duration_us")]
        mean_good: Duration,
        #[serde(with = "duration_us")]
        mean_bad: Duration,
        loss_good: f64,
        loss_bad: f64,
    },
}

mod duration_us {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

impl LossModel {
    /// Spines' `setlink` parameterisation: average loss `loss` and `burst` = P(loss | previous
    /// loss), so that loss rate and mean burst length `1/(1-burst)` are set independently.
    /// `p11 = burst`, `p01 = loss·(1−burst)/(1−loss)`.
    pub fn from_loss_and_burst(loss: f64, burst: f64) -> LossModel {
        if loss <= 0.0 {
            return LossModel::None;
        }
        if burst <= 0.0 {
            return LossModel::Bernoulli { p: loss };
        }
        let p01 = if loss >= 1.0 {
            1.0
        } else {
            loss * (1.0 - burst) / (1.0 - loss)
        };
        LossModel::GilbertElliott {
            p_gb: p01.min(1.0),
            p_bg: 1.0 - burst,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// The long-run fraction of packets this model loses (for the timed chain: of time spent
    /// losing, which is the packet loss rate of evenly spread traffic).
    pub fn expected_rate(&self) -> f64 {
        match *self {
            LossModel::None => 0.0,
            LossModel::Bernoulli { p } => p,
            LossModel::GilbertElliott {
                p_gb,
                p_bg,
                loss_good,
                loss_bad,
            } => {
                if p_gb + p_bg <= 0.0 {
                    // Never leaves the good state it starts in.
                    return loss_good;
                }
                let bad = p_gb / (p_gb + p_bg);
                (1.0 - bad) * loss_good + bad * loss_bad
            }
            LossModel::GilbertElliottTimed {
                mean_good,
                mean_bad,
                loss_good,
                loss_bad,
            } => {
                let (g, b) = (mean_good.as_secs_f64(), mean_bad.as_secs_f64());
                if g + b <= 0.0 {
                    return loss_good;
                }
                let bad = b / (g + b);
                (1.0 - bad) * loss_good + bad * loss_bad
            }
        }
    }

    /// Lag-one autocorrelation of the chain's state (0 for independent losses). Loss counts of
    /// a correlated process vary more than binomial ones; confidence intervals widen by
    /// `(1+λ)/(1−λ)` in variance. The timed chain's correlation depends on packet spacing;
    /// it is reported as the highest this function returns, which only widens intervals.
    pub fn state_correlation(&self) -> f64 {
        match *self {
            LossModel::GilbertElliott { p_gb, p_bg, .. } => (1.0 - p_gb - p_bg).clamp(0.0, 0.999),
            LossModel::GilbertElliottTimed { .. } => 0.999,
            _ => 0.0,
        }
    }
}

/// The transmit queue's capacity: bytes, or time of link occupancy at the current rate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueLimit {
    Bytes(u64),
    Time(Duration),
}

impl QueueLimit {
    pub fn bytes_at(&self, rate_bps: u64) -> u64 {
        match *self {
            QueueLimit::Bytes(b) => b,
            QueueLimit::Time(d) => {
                let bytes = d.as_nanos() * u128::from(rate_bps) / 8_000_000_000;
                u64::try_from(bytes).unwrap_or(u64::MAX)
            }
        }
    }
}

/// Everything configurable about one direction of a link.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LinkParams {
    pub delay: Duration,
    /// Uniform jitter: ±this amount keeping order, or `[0, jitter)` reordering (`reorder`).
    pub jitter: Duration,
    /// Jitter reorders packets (see the module docs).
    pub reorder: bool,
    pub loss: LossModel,
    /// Probability that a delivered packet arrives twice.
    pub duplicate: f64,
    /// Bits per second; 0 means no rate limit (and therefore no queue).
    pub rate_bps: u64,
    pub queue: QueueLimit,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: false,
            loss: LossModel::None,
            duplicate: 0.0,
            rate_bps: 0,
            queue: QueueLimit::Time(Duration::from_millis(50)),
        }
    }
}

impl LinkParams {
    /// A link that changes nothing about the packets it carries.
    pub fn is_identity(&self) -> bool {
        self.loss.expected_rate() <= 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.duplicate <= 0.0
            && self.rate_bps == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The link is cut.
    Down,
    /// Lost on the wire by the loss model.
    Loss,
    /// Tail-dropped because the transmit queue was full.
    Queue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Deliver {
        due: Instant,
        /// When the packet's duplicate arrives, if it has one.
        copy: Option<Instant>,
        /// Bytes queued ahead of the packet when it entered (what an ECN marker looks at).
        backlog: u64,
    },
    Drop(DropReason),
}

/// One direction's state: parameters, the loss chain, the serialiser and the FIFO clamp.
#[derive(Clone, Debug)]
pub struct DirectionModel {
    params: LinkParams,
    up: bool,
    rng: ChaCha8Rng,
    in_bad_state: bool,
    /// When the timed chain's state was last brought up to date.
    chain_at: Option<Instant>,
    tx_free_at: Instant,
    last_due: Instant,
}

impl DirectionModel {
    pub fn new(params: LinkParams, seed: u64) -> Self {
        DirectionModel {
            params,
            up: true,
            rng: ChaCha8Rng::seed_from_u64(seed),
            in_bad_state: false,
            chain_at: None,
            tx_free_at: Instant::ZERO,
            last_due: Instant::ZERO,
        }
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// New parameters apply to packets read from now on; packets already scheduled keep their
    /// due times, and order is still preserved.
    pub fn set_params(&mut self, params: LinkParams) {
        if params.loss != self.params.loss {
            self.in_bad_state = false;
            self.chain_at = None;
        }
        self.params = params;
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn set_up(&mut self, up: bool) {
        self.up = up;
    }

    /// Restart the random stream (common random numbers across benchmark arms).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
        self.in_bad_state = false;
        self.chain_at = None;
    }

    /// Bytes waiting in the transmit queue at `now`.
    pub fn backlog(&self, now: Instant) -> u64 {
        let rate = self.params.rate_bps;
        if rate == 0 {
            return 0;
        }
        let backlog_ns = u128::from(self.tx_free_at.saturating_since(now).as_nanos() as u64);
        u64::try_from(backlog_ns * u128::from(rate) / 8_000_000_000).unwrap_or(u64::MAX)
    }

    /// Decide the fate of a packet of `len` bytes entering the link at `now`.
    pub fn on_packet(&mut self, now: Instant, len: usize) -> Verdict {
        if !self.up {
            return Verdict::Drop(DropReason::Down);
        }
        let backlog = self.backlog(now);
        let depart = match self.serialise(now, len, backlog) {
            Some(t) => t,
            None => return Verdict::Drop(DropReason::Queue),
        };
        if self.lose(now) {
            return Verdict::Drop(DropReason::Loss);
        }
        let duplicated =
            self.params.duplicate > 0.0 && self.rng.gen::<f64>() < self.params.duplicate;
        let due = self.arrival(depart);
        let copy = duplicated.then(|| self.arrival(depart));
        Verdict::Deliver { due, copy, backlog }
    }

    /// When a packet that left the transmitter at `depart` arrives.
    fn arrival(&mut self, depart: Instant) -> Instant {
        let base = depart + self.params.delay;
        let jitter = nanos(self.params.jitter);
        if self.params.reorder {
            return if jitter > 0 {
                base + Duration::from_nanos(self.rng.gen_range(0..jitter))
            } else {
                base
            };
        }
        let mut due = base;
        if jitter > 0 {
            let offset = self.rng.gen_range(0..=2 * jitter);
            // offset - jitter in [-jitter, +jitter], but never before departure.
            due = if offset >= jitter {
                due + Duration::from_nanos(offset - jitter)
            } else {
                (due - Duration::from_nanos(jitter - offset)).max(depart)
            };
        }
        let due = due.max(self.last_due);
        self.last_due = due;
        due
    }

    /// Admit the packet to the transmit queue and return when its last bit leaves, or `None`
    /// when the queue is full.
    fn serialise(&mut self, now: Instant, len: usize, backlog: u64) -> Option<Instant> {
        let rate = self.params.rate_bps;
        if rate == 0 {
            return Some(now);
        }
        let start = self.tx_free_at.max(now);
        let limit = self.params.queue.bytes_at(rate);
        // An empty queue always admits one packet, however small the limit.
        if backlog > 0 && u128::from(backlog) + len as u128 > u128::from(limit) {
            return None;
        }
        let serialisation_ns = (len as u128 * 8_000_000_000).div_ceil(u128::from(rate));
        let serialisation_ns = u64::try_from(serialisation_ns).unwrap_or(u64::MAX);
        self.tx_free_at = start + Duration::from_nanos(serialisation_ns);
        Some(self.tx_free_at)
    }

    fn lose(&mut self, now: Instant) -> bool {
        match self.params.loss {
            LossModel::None => false,
            LossModel::Bernoulli { p } => self.rng.gen::<f64>() < p,
            LossModel::GilbertElliott {
                p_gb,
                p_bg,
                loss_good,
                loss_bad,
            } => {
                let flip = if self.in_bad_state { p_bg } else { p_gb };
                if self.rng.gen::<f64>() < flip {
                    self.in_bad_state = !self.in_bad_state;
                }
                let p = if self.in_bad_state {
                    loss_bad
                } else {
                    loss_good
                };
                self.rng.gen::<f64>() < p
            }
            LossModel::GilbertElliottTimed {
                mean_good,
                mean_bad,
                loss_good,
                loss_bad,
            } => {
                // P(bad after dt) = π + (1{bad} − π)·e^{−(λ+μ)·dt}, λ = 1/good, μ = 1/bad.
                let to_bad = 1.0 / mean_good.as_secs_f64().max(1e-9);
                let to_good = 1.0 / mean_bad.as_secs_f64().max(1e-9);
                let stationary_bad = to_bad / (to_bad + to_good);
                let dt = self
                    .chain_at
                    .map_or(f64::INFINITY, |t| now.saturating_since(t).as_secs_f64());
                let now_bad = if self.in_bad_state { 1.0 } else { 0.0 };
                let p_bad =
                    stationary_bad + (now_bad - stationary_bad) * (-(to_bad + to_good) * dt).exp();
                self.in_bad_state = self.rng.gen::<f64>() < p_bad.clamp(0.0, 1.0);
                self.chain_at = Some(now);
                let p = if self.in_bad_state {
                    loss_bad
                } else {
                    loss_good
                };
                p > 0.0 && (p >= 1.0 || self.rng.gen::<f64>() < p)
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn t(ns: u64) -> Instant {
        Instant::from_nanos(ns)
    }

    fn due(v: Verdict) -> Instant {
        match v {
            Verdict::Deliver { due, .. } => due,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rate_limit_spaces_back_to_back_packets_by_serialisation_time() {
        // 8 Mbit/s: 1000 bytes take 1 ms.
        let params = LinkParams {
            delay: 10 * MS,
            rate_bps: 8_000_000,
            queue: QueueLimit::Bytes(10_000),
            ..LinkParams::default()
        };
        let mut dir = DirectionModel::new(params, 1);
        let dues: Vec<u64> = (0..5)
            .map(|_| due(dir.on_packet(t(0), 1000)).as_nanos())
            .collect();
        assert_eq!(
            dues,
            vec![11_000_000, 12_000_000, 13_000_000, 14_000_000, 15_000_000]
        );
    }

    #[test]
    fn the_verdict_reports_the_backlog_ahead() {
        let params = LinkParams {
            rate_bps: 8_000_000,
            queue: QueueLimit::Bytes(100_000),
            ..LinkParams::default()
        };
        let mut dir = DirectionModel::new(params, 1);
        let backlogs: Vec<u64> = (0..3)
            .map(|_| match dir.on_packet(t(0), 1000) {
                Verdict::Deliver { backlog, .. } => backlog,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(backlogs, vec![0, 1000, 2000]);
        // Half a millisecond later half a packet has left.
        assert_eq!(dir.backlog(t(500_000)), 2500);
    }

    #[test]
    fn full_queue_tail_drops_and_drains_with_time() {
        let params = LinkParams {
            rate_bps: 8_000_000,
            queue: QueueLimit::Bytes(3000),
            ..LinkParams::default()
        };
        let mut dir = DirectionModel::new(params, 1);
        let verdicts: Vec<_> = (0..6).map(|_| dir.on_packet(t(0), 1000)).collect();
        let dropped = verdicts
            .iter()
            .filter(|v| **v == Verdict::Drop(DropReason::Queue))
            .count();
        // Backlog before each packet: 0, 1000, 2000 admitted; 3000+1000 > 3000 dropped.
        assert_eq!(dropped, 3, "{verdicts:?}");
        // 2 ms later two packets have left: room for two more.
        assert!(matches!(
            dir.on_packet(t(2_000_000), 1000),
            Verdict::Deliver { .. }
        ));
    }

    #[test]
    fn time_based_queue_limit_follows_the_rate() {
        let limit = QueueLimit::Time(Duration::from_millis(50));
        assert_eq!(limit.bytes_at(10_000_000), 62_500);
        assert_eq!(limit.bytes_at(0), 0);
    }

    #[test]
    fn a_cut_link_drops_everything_and_heals() {
        let mut dir = DirectionModel::new(LinkParams::default(), 1);
        dir.set_up(false);
        assert_eq!(dir.on_packet(t(5), 100), Verdict::Drop(DropReason::Down));
        dir.set_up(true);
        assert_eq!(
            dir.on_packet(t(5), 100),
            Verdict::Deliver {
                due: t(5),
                copy: None,
                backlog: 0
            },
            "a healed link delivers at once"
        );
    }

    #[test]
    fn reordering_jitter_reorders_and_duplicates_arrive_twice() {
        let params = LinkParams {
            delay: 10 * MS,
            jitter: 5 * MS,
            reorder: true,
            duplicate: 0.1,
            ..LinkParams::default()
        };
        let mut dir = DirectionModel::new(params, 3);
        let mut last = t(0);
        let (mut reordered, mut copies) = (0, 0);
        for i in 0..2000u64 {
            let now = t(i * 100_000);
            let Verdict::Deliver { due, copy, .. } = dir.on_packet(now, 100) else {
                panic!("nothing is lost");
            };
            assert!(due >= now + 10 * MS && due < now + 15 * MS);
            if due < last {
                reordered += 1;
            }
            last = due;
            if let Some(c) = copy {
                assert!(c >= now + 10 * MS && c < now + 15 * MS);
                copies += 1;
            }
        }
        assert!(reordered > 500, "reordered {reordered}");
        // 2000 trials at 10 %: σ ≈ 13.
        assert!((130..=270).contains(&copies), "copies {copies}");
    }

    #[test]
    fn timed_bursts_lose_the_share_of_time_spent_bad() {
        // Good 90 ms, bad 10 ms on average: 10 % of evenly spread packets lost, in runs.
        let model = LossModel::GilbertElliottTimed {
            mean_good: 90 * MS,
            mean_bad: 10 * MS,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        assert!((model.expected_rate() - 0.1).abs() < 1e-12);
        let mut dir = DirectionModel::new(
            LinkParams {
                loss: model,
                ..LinkParams::default()
            },
            9,
        );
        let n = 200_000u64;
        let (mut lost, mut bursts, mut previous) = (0u64, 0u64, false);
        for i in 0..n {
            // One packet per 0.1 ms: a 10 ms burst spans about 100 packets.
            let is_lost = dir.on_packet(t(i * 100_000), 100) == Verdict::Drop(DropReason::Loss);
            lost += is_lost as u64;
            bursts += (is_lost && !previous) as u64;
            previous = is_lost;
        }
        let rate = lost as f64 / n as f64;
        assert!((0.06..0.14).contains(&rate), "rate {rate}");
        let mean_burst = lost as f64 / bursts.max(1) as f64;
        assert!(mean_burst > 50.0, "mean burst {mean_burst} packets");
    }

    #[test]
    fn reseeding_repeats_the_loss_pattern() {
        let params = LinkParams {
            loss: LossModel::Bernoulli { p: 0.3 },
            ..LinkParams::default()
        };
        let mut dir = DirectionModel::new(params, 42);
        let first: Vec<_> = (0..200).map(|i| dir.on_packet(t(i), 100)).collect();
        dir.reseed(42);
        let second: Vec<_> = (0..200).map(|i| dir.on_packet(t(1000 + i), 100)).collect();
        let lost = |v: &[Verdict]| {
            v.iter()
                .map(|x| matches!(x, Verdict::Drop(_)))
                .collect::<Vec<_>>()
        };
        assert_eq!(lost(&first), lost(&second));
    }

    proptest! {
        #[test]
        fn departures_are_ordered_and_never_early(
            seed in any::<u64>(),
            delay_us in 0u64..50_000,
            jitter_us in 0u64..20_000,
            rate_kbit in prop_oneof![Just(0u64), 100u64..1_000_000],
            gaps in proptest::collection::vec((0u64..2_000_000, 40usize..1500), 1..300),
        ) {
            let params = LinkParams {
                delay: Duration::from_micros(delay_us),
                jitter: Duration::from_micros(jitter_us),
                rate_bps: rate_kbit * 1000,
                queue: QueueLimit::Bytes(64_000),
                ..LinkParams::default()
            };
            let mut dir = DirectionModel::new(params, seed);
            let mut now = 0u64;
            let mut last_due = 0u64;
            for (gap, len) in gaps {
                now += gap;
                if let Verdict::Deliver { due, .. } = dir.on_packet(t(now), len) {
                    let due = due.as_nanos();
                    prop_assert!(due >= last_due, "reordered (seed {seed})");
                    let earliest = now + (delay_us.saturating_sub(jitter_us)) * 1000;
                    prop_assert!(due >= earliest, "early by {} ns (seed {seed})", earliest - due);
                    last_due = due;
                }
            }
        }
    }
}
