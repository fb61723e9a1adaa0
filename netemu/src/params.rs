//! Link parameters as people write them: in topology files (`[defaults]`, per link, per
//! direction) and in the control command `set LINK key=value ...`. One patch type serves both,
//! so a key means the same thing everywhere.

use crate::model::{LinkParams, LossModel, QueueLimit};
use serde::Deserialize;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
#[error("{key}: {problem}")]
pub struct ParamError {
    pub key: String,
    pub problem: String,
}

fn invalid(key: &str, problem: impl Into<String>) -> ParamError {
    ParamError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// A partial set of link parameters; absent fields keep their current value.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParamPatch {
    /// One-way propagation delay.
    pub delay_ms: Option<f64>,
    /// Uniform ± jitter around the delay (order-preserving).
    pub jitter_ms: Option<f64>,
    /// Average loss in percent (Bernoulli, or bursty together with `burst_pct`).
    pub loss_pct: Option<f64>,
    /// Spines-style burstiness: P(loss | previous loss) in percent.
    pub burst_pct: Option<f64>,
    /// Explicit Gilbert-Elliott chain: [p_good_to_bad, p_bad_to_good, loss_good, loss_bad],
    /// all fractions.
    pub ge: Option<[f64; 4]>,
    /// Link rate in Mbit/s; 0 removes the limit.
    pub rate_mbit: Option<f64>,
    /// Transmit queue limit in bytes.
    pub queue_bytes: Option<u64>,
    /// Transmit queue limit as time of link occupancy at the link rate.
    pub queue_ms: Option<f64>,
}

impl ParamPatch {
    /// Parse `key=value` words as typed in a control command.
    pub fn from_assignments<'a>(
        words: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ParamError> {
        let mut patch = ParamPatch::default();
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| invalid(word, "expected key=value"))?;
            let number = || -> Result<f64, ParamError> {
                value
                    .trim_end_matches('%')
                    .parse::<f64>()
                    .map_err(|_| invalid(key, format!("not a number: {value:?}")))
            };
            match key {
                "delay_ms" => patch.delay_ms = Some(number()?),
                "jitter_ms" => patch.jitter_ms = Some(number()?),
                "loss_pct" | "loss" => patch.loss_pct = Some(number()?),
                "burst_pct" | "burst" => patch.burst_pct = Some(number()?),
                "rate_mbit" => patch.rate_mbit = Some(number()?),
                "queue_ms" => patch.queue_ms = Some(number()?),
                "queue_bytes" => {
                    patch.queue_bytes = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| invalid(key, format!("not a byte count: {value:?}")))?,
                    )
                }
                "ge" => {
                    let parts: Result<Vec<f64>, _> =
                        value.split(',').map(|p| p.parse::<f64>()).collect();
                    match parts.ok().and_then(|v| <[f64; 4]>::try_from(v).ok()) {
                        Some(ge) => patch.ge = Some(ge),
                        None => {
                            return Err(invalid(
                                key,
                                "expected p_gb,p_bg,loss_good,loss_bad (fractions)",
                            ))
                        }
                    }
                }
                _ => return Err(invalid(key, "unknown parameter")),
            }
        }
        Ok(patch)
    }

    /// Later patches win field by field.
    pub fn overlay(&self, later: &ParamPatch) -> ParamPatch {
        ParamPatch {
            delay_ms: later.delay_ms.or(self.delay_ms),
            jitter_ms: later.jitter_ms.or(self.jitter_ms),
            loss_pct: later.loss_pct.or(self.loss_pct),
            burst_pct: later.burst_pct.or(self.burst_pct),
            ge: later.ge.or(self.ge),
            rate_mbit: later.rate_mbit.or(self.rate_mbit),
            queue_bytes: later.queue_bytes.or(self.queue_bytes),
            queue_ms: later.queue_ms.or(self.queue_ms),
        }
    }

    /// The parameters that result from applying this patch to `current`.
    pub fn apply(&self, current: &LinkParams) -> Result<LinkParams, ParamError> {
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

fn millis(key: &str, ms: f64) -> Result<Duration, ParamError> {
    if !ms.is_finite() || !(0.0..=600_000.0).contains(&ms) {
        return Err(invalid(key, "must be between 0 and 600000 ms"));
    }
    Ok(Duration::from_nanos((ms * 1e6).round() as u64))
}

fn percent(key: &str, pct: f64, max: f64) -> Result<f64, ParamError> {
    if !pct.is_finite() || !(0.0..=max).contains(&pct) {
        return Err(invalid(key, format!("must be between 0 and {max} percent")));
    }
    Ok(pct / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
