//! The model of one direction of one link lives in `weft-linkmodel`, shared with the daemon's
//! emulation, the simulator and the transport tests; netemu uses it unchanged. The tests here
//! check its loss models against netemu's own confidence intervals (`stats`).

pub use weft_linkmodel::{DirectionModel, DropReason, LinkParams, LossModel, QueueLimit, Verdict};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LossEstimate;
    use weft_core::Instant;

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
}
