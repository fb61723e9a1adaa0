//! Link parameters as people write them (`weft_topology::ParamPatch`: topology files,
//! shapes and the control command `set LINK key=value ...`) applied to netemu's link model.

use crate::model::{LinkParams, LossModel, QueueLimit};
pub use weft_topology::params::{invalid, millis, percent, ParamError, ParamPatch};

/// What a patch does to netemu's model.
pub trait ApplyPatch {
    /// The parameters that result from applying this patch to `current`.
    fn apply(&self, current: &LinkParams) -> Result<LinkParams, ParamError>;
}

impl ApplyPatch for ParamPatch {
    fn apply(&self, current: &LinkParams) -> Result<LinkParams, ParamError> {
        let mut next = *current;
        if let Some(ms) = self.delay_ms {
            next.delay = millis("delay_ms", ms)?;
        }
        if let Some(ms) = self.jitter_ms {
            next.jitter = millis("jitter_ms", ms)?;
        }
        if self.ge.is_some() && (self.loss_pct.is_some() || self.burst_pct.is_some()) {
            return Err(invalid(
                "ge",
                "give either ge or loss_pct/burst_pct, not both",
            ));
        }
        if let Some([p_gb, p_bg, loss_good, loss_bad]) = self.ge {
            for v in [p_gb, p_bg, loss_good, loss_bad] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(invalid("ge", "every value must be a fraction in [0, 1]"));
                }
            }
            next.loss = LossModel::GilbertElliott {
                p_gb,
                p_bg,
                loss_good,
                loss_bad,
            };
        } else if self.loss_pct.is_some() || self.burst_pct.is_some() {
            let loss = match self.loss_pct {
                Some(pct) => percent("loss_pct", pct, 100.0)?,
                None => current.loss.expected_rate(),
            };
            // Setting only the loss keeps today's burstiness; setting only the burst keeps
            // today's average loss.
            let burst = match self.burst_pct {
                Some(pct) => percent("burst_pct", pct, 99.9)?,
                None => spines_burst(&current.loss).unwrap_or(0.0),
            };
            next.loss = LossModel::from_loss_and_burst(loss, burst);
        }
        if let Some(mbit) = self.rate_mbit {
            if !mbit.is_finite() || mbit < 0.0 {
                return Err(invalid("rate_mbit", "must be ≥ 0"));
            }
            next.rate_bps = (mbit * 1e6).round() as u64;
        }
        match (self.queue_bytes, self.queue_ms) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "queue_bytes",
                    "give either queue_bytes or queue_ms, not both",
                ))
            }
            (Some(bytes), None) => next.queue = QueueLimit::Bytes(bytes),
            (None, Some(ms)) => next.queue = QueueLimit::Time(millis("queue_ms", ms)?),
            (None, None) => {}
        }
        Ok(next)
    }
}

/// The burst parameter of a chain built by `LossModel::from_loss_and_burst`.
fn spines_burst(model: &LossModel) -> Option<f64> {
    match *model {
        LossModel::GilbertElliott {
            p_bg,
            loss_good,
            loss_bad,
            ..
        } if loss_good == 0.0 && loss_bad == 1.0 => Some(1.0 - p_bg),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn assignments_parse_and_apply() {
        let patch = ParamPatch::from_assignments([
            "delay_ms=10",
            "loss=1%",
            "burst_pct=30",
            "rate_mbit=10",
            "queue_bytes=125000",
        ])
        .unwrap();
        let p = patch.apply(&LinkParams::default()).unwrap();
        assert_eq!(p.delay, Duration::from_millis(10));
        assert_eq!(p.rate_bps, 10_000_000);
        assert_eq!(p.queue, QueueLimit::Bytes(125_000));
        assert!((p.loss.expected_rate() - 0.01).abs() < 1e-12);
        assert_eq!(
            spines_burst(&p.loss).map(|b| (b * 100.0).round()),
            Some(30.0)
        );
    }

    #[test]
    fn changing_only_the_loss_keeps_the_burstiness() {
        let bursty = ParamPatch::from_assignments(["loss_pct=1", "burst_pct=60"])
            .unwrap()
            .apply(&LinkParams::default())
            .unwrap();
        let more = ParamPatch::from_assignments(["loss_pct=2"])
            .unwrap()
            .apply(&bursty)
            .unwrap();
        assert!((more.loss.expected_rate() - 0.02).abs() < 1e-12);
        assert_eq!(
            spines_burst(&more.loss).map(|b| (b * 100.0).round()),
            Some(60.0)
        );
        let none = ParamPatch::from_assignments(["loss=0"])
            .unwrap()
            .apply(&more)
            .unwrap();
        assert_eq!(none.loss, LossModel::None);
    }

    #[test]
    fn bad_input_names_the_key() {
        let err = ParamPatch::from_assignments(["delay=3"]).unwrap_err();
        assert_eq!(err.key, "delay");
        let err = ParamPatch::from_assignments(["loss_pct=abc"]).unwrap_err();
        assert_eq!(err.key, "loss_pct");
        let err = ParamPatch::from_assignments(["loss_pct=150"])
            .unwrap()
            .apply(&LinkParams::default())
            .unwrap_err();
        assert_eq!(err.key, "loss_pct");
        let err = ParamPatch::from_assignments(["ge=0.1,0.2"]).unwrap_err();
        assert_eq!(err.key, "ge");
        let err = ParamPatch::from_assignments(["queue_ms=5", "queue_bytes=10"])
            .unwrap()
            .apply(&LinkParams::default())
            .unwrap_err();
        assert_eq!(err.key, "queue_bytes");
        assert!(ParamPatch::from_assignments(["novalue"]).is_err());
    }

    #[test]
    fn overlay_prefers_the_later_patch() {
        let base = ParamPatch {
            delay_ms: Some(10.0),
            rate_mbit: Some(5.0),
            ..ParamPatch::default()
        };
        let later = ParamPatch {
            delay_ms: Some(15.0),
            ..ParamPatch::default()
        };
        let merged = base.overlay(&later);
        assert_eq!(merged.delay_ms, Some(15.0));
        assert_eq!(merged.rate_mbit, Some(5.0));
    }
}
