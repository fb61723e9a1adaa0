//! The model of one direction of one link, sans-I/O: given a packet's length and the time it
//! was read, decide whether it is dropped (and why) or when it must be written out.
//!
//! Order of the stages follows a real link: a cut link accepts nothing; the transmit queue
//! admits or tail-drops; the packet is serialised at the link rate; it is lost on the wire
//! (after it used its share of the link, as corruption would); it arrives after the propagation
//! delay plus jitter. Departures are clamped to be non-decreasing so one FIFO per direction
//! stays ordered and no heap is needed (order-preserving jitter, like the C prototype).

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

    /// The long-run fraction of packets this model loses.
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
        }
    }

    /// Lag-one autocorrelation of the chain's state (0 for independent losses). Loss counts of
    /// a correlated process vary more than binomial ones; confidence intervals widen by
    /// `(1+λ)/(1−λ)` in variance.
    pub fn state_correlation(&self) -> f64 {
        match *self {
            LossModel::GilbertElliott { p_gb, p_bg, .. } => (1.0 - p_gb - p_bg).clamp(0.0, 0.999),
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
    /// Uniform jitter of ± this amount, order-preserving.
    pub jitter: Duration,
    pub loss: LossModel,
    /// Bits per second; 0 means no rate limit (and therefore no queue).
    pub rate_bps: u64,
    pub queue: QueueLimit,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: LossModel::None,
            rate_bps: 0,
            queue: QueueLimit::Time(Duration::from_millis(50)),
        }
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
    Deliver { due: Instant },
    Drop(DropReason),
}

/// One direction's state: parameters, the loss chain, the serialiser and the FIFO clamp.
#[derive(Clone, Debug)]
pub struct DirectionModel {
    params: LinkParams,
    up: bool,
    rng: ChaCha8Rng,
    in_bad_state: bool,
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
    }

    /// Decide the fate of a packet of `len` bytes read at `now`.
    pub fn on_packet(&mut self, now: Instant, len: usize) -> Verdict {
        if !self.up {
            return Verdict::Drop(DropReason::Down);
        }
        let depart = match self.serialise(now, len) {
            Some(t) => t,
            None => return Verdict::Drop(DropReason::Queue),
        };
        if self.lose() {
            return Verdict::Drop(DropReason::Loss);
        }
        let mut due = depart + self.params.delay;
        let jitter = nanos(self.params.jitter);
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
        Verdict::Deliver { due }
    }

    /// Admit the packet to the transmit queue and return when its last bit leaves, or `None`
    /// when the queue is full.
    fn serialise(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let rate = self.params.rate_bps;
        if rate == 0 {
            return Some(now);
        }
        let start = self.tx_free_at.max(now);
        let backlog_ns = u128::from(start.as_nanos() - now.as_nanos());
        let backlog_bytes = backlog_ns * u128::from(rate) / 8_000_000_000;
        let limit = u128::from(self.params.queue.bytes_at(rate));
        // An empty queue always admits one packet, however small the limit.
        if backlog_bytes > 0 && backlog_bytes + len as u128 > limit {
            return None;
        }
        let serialisation_ns = (len as u128 * 8_000_000_000).div_ceil(u128::from(rate));
        let serialisation_ns = u64::try_from(serialisation_ns).unwrap_or(u64::MAX);
        self.tx_free_at = start + Duration::from_nanos(serialisation_ns);
        Some(self.tx_free_at)
    }

    fn lose(&mut self) -> bool {
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
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LossEstimate;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn t(ns: u64) -> Instant {
        Instant::from_nanos(ns)
    }

    fn loss_fraction(model: LossModel, seed: u64, n: u64) -> (u64, f64) {
        let mut dir = DirectionModel::new(
            LinkParams {
                loss: model,
                ..LinkParams::default()
            },
            seed,
        );
        let mut lost = 0;
        let mut bursts = 0;
        let mut previous_lost = false;
        for i in 0..n {
            let is_lost = dir.on_packet(t(i * 1000), 100) == Verdict::Drop(DropReason::Loss);
            if is_lost {
                lost += 1;
                if !previous_lost {
                    bursts += 1;
                }
            }
            previous_lost = is_lost;
        }
        let mean_burst = if bursts == 0 {
            0.0
        } else {
            lost as f64 / bursts as f64
        };
        (lost, mean_burst)
    }

    #[test]
    fn bernoulli_loss_rate_is_within_its_confidence_interval() {
        for seed in 1..=3 {
            let model = LossModel::Bernoulli { p: 0.02 };
            let n = 200_000;
            let (lost, mean_burst) = loss_fraction(model, seed, n);
            let estimate = LossEstimate::new(n, lost, &model, 3.29);
            assert!(estimate.within, "seed {seed}: {estimate:?}");
            assert!(mean_burst < 1.1, "seed {seed}: mean burst {mean_burst}");
        }
    }

    #[test]
    fn spines_burst_parameters_give_loss_rate_and_burst_length() {
        // 1% average loss, burst 30%: mean burst length 1/(1-0.3) = 1.43.
        for seed in 1..=3 {
            let model = LossModel::from_loss_and_burst(0.01, 0.3);
            assert!((model.expected_rate() - 0.01).abs() < 1e-12);
            let n = 500_000;
            let (lost, mean_burst) = loss_fraction(model, seed, n);
            let estimate = LossEstimate::new(n, lost, &model, 3.29);
            assert!(estimate.within, "seed {seed}: {estimate:?}");
            assert!(
                (mean_burst - 1.0 / 0.7).abs() < 0.1,
                "seed {seed}: mean burst {mean_burst}"
            );
        }
    }

    #[test]
    fn gilbert_elliott_expected_rate_matches_stationary_distribution() {
        let model = LossModel::GilbertElliott {
            p_gb: 0.002,
            p_bg: 0.25,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        assert!((model.expected_rate() - 0.002 / 0.252).abs() < 1e-12);
        let n = 1_000_000;
        let (lost, mean_burst) = loss_fraction(model, 7, n);
        assert!(LossEstimate::new(n, lost, &model, 3.29).within);
        assert!((mean_burst - 4.0).abs() < 0.4, "mean burst {mean_burst}");
    }

    #[test]
    fn zero_loss_and_burst_mappings_are_simple() {
        assert_eq!(LossModel::from_loss_and_burst(0.0, 0.5), LossModel::None);
        assert_eq!(
            LossModel::from_loss_and_burst(0.05, 0.0),
            LossModel::Bernoulli { p: 0.05 }
        );
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
        let mut dues = Vec::new();
        for _ in 0..5 {
            match dir.on_packet(t(0), 1000) {
                Verdict::Deliver { due } => dues.push(due.as_nanos()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            dues,
            vec![11_000_000, 12_000_000, 13_000_000, 14_000_000, 15_000_000]
        );
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
            Verdict::Deliver { due: t(5) },
            "a healed link delivers at once"
        );
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
                if let Verdict::Deliver { due } = dir.on_packet(t(now), len) {
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
