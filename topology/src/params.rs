//! Link parameters as people write them: in topology files (`[defaults]`, per link, per
//! direction), after a shape (`chain:4@delay=10ms,loss=1%`) and in netemu's `set LINK
//! key=value ...`. One patch type serves all of them, so a key means the same everywhere;
//! what a patch does to a link is up to the emulator that applies it (netemu's model or the
//! daemons' receive-side emulation).

use serde::Deserialize;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
#[error("{key}: {problem}")]
pub struct ParamError {
    pub key: String,
    pub problem: String,
}

pub fn invalid(key: &str, problem: impl Into<String>) -> ParamError {
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

/// `20ms`, `500us`, `1.5s` as milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let ms = match unit {
        "ns" => v / 1e6,
        "us" | "µs" => v / 1e3,
        "ms" => v,
        "s" => v * 1e3,
        _ => return None,
    };
    ms.is_finite().then_some(ms)
}

/// `50mbit`, `1gbit`, `800kbit`, `9600bit` as Mbit/s.
fn rate_mbit(s: &str) -> Option<f64> {
    let s = s.to_ascii_lowercase();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let mult = match unit {
        "bit" | "bps" => 1e-6,
        "kbit" | "kbps" => 1e-3,
        "mbit" | "mbps" => 1.0,
        "gbit" | "gbps" => 1e3,
        _ => return None,
    };
    Some(v * mult)
}

/// `64kb`, `1mb`, `1500b`, `1500` as bytes.
fn size_bytes(s: &str) -> Option<u64> {
    let s = s.to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let mult = match unit {
        "" | "b" => 1.0,
        "kb" | "k" => 1024.0,
        "mb" | "m" => 1024.0 * 1024.0,
        _ => return None,
    };
    let b = v * mult;
    (b.is_finite() && (0.0..1e12).contains(&b)).then_some(b as u64)
}

impl ParamPatch {
    /// Parses `key=value` words. Every key has a unit in its name (`delay_ms=10`,
    /// `loss_pct=1`, `rate_mbit=50`, `queue_bytes=65536`) or a short name whose value
    /// carries the unit (`delay=10ms`, `jitter=2ms`, `loss=1%`, `burst=30%`, `rate=50mbit`,
    /// `queue=64kb`), as `weft link set` and `weftd --neighbor ADDR/SPEC` take them.
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
            let with_unit = |v: Option<f64>, example: &str| {
                v.ok_or_else(|| {
                    invalid(
                        key,
                        format!("expected a value like {example}, got {value:?}"),
                    )
                })
            };
            match key {
                "delay_ms" => patch.delay_ms = Some(number()?),
                "delay" => patch.delay_ms = Some(with_unit(duration_ms(value), "10ms")?),
                "jitter_ms" => patch.jitter_ms = Some(number()?),
                "jitter" => patch.jitter_ms = Some(with_unit(duration_ms(value), "2ms")?),
                "loss_pct" | "loss" => patch.loss_pct = Some(number()?),
                "burst_pct" | "burst" => patch.burst_pct = Some(number()?),
                "rate_mbit" => patch.rate_mbit = Some(number()?),
                "rate" => patch.rate_mbit = Some(with_unit(rate_mbit(value), "50mbit")?),
                "queue_ms" => patch.queue_ms = Some(number()?),
                "queue_bytes" | "queue" => {
                    patch.queue_bytes = Some(
                        size_bytes(value)
                            .ok_or_else(|| invalid(key, format!("not a byte count: {value:?}")))?,
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

    /// `delay=10ms,loss=1%` or `delay=10ms loss=1%` (what follows `@` in a shape).
    pub fn from_spec(spec: &str) -> Result<Self, ParamError> {
        Self::from_assignments(
            spec.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|w| !w.is_empty()),
        )
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

    pub fn is_empty(&self) -> bool {
        *self == ParamPatch::default()
    }
}

/// A millisecond value as a duration, checked.
pub fn millis(key: &str, ms: f64) -> Result<Duration, ParamError> {
    if !ms.is_finite() || !(0.0..=600_000.0).contains(&ms) {
        return Err(invalid(key, "must be between 0 and 600000 ms"));
    }
    Ok(Duration::from_nanos((ms * 1e6).round() as u64))
}

/// A percentage as a fraction, checked against `0..=max` percent.
pub fn percent(key: &str, pct: f64, max: f64) -> Result<f64, ParamError> {
    if !pct.is_finite() || !(0.0..=max).contains(&pct) {
        return Err(invalid(key, format!("must be between 0 and {max} percent")));
    }
    Ok(pct / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_mean_the_same() {
        let long = ParamPatch::from_assignments([
            "delay_ms=10",
            "jitter_ms=2",
            "loss_pct=1",
            "burst_pct=30",
            "rate_mbit=50",
            "queue_bytes=65536",
        ])
        .unwrap();
        let short =
            ParamPatch::from_spec("delay=10ms,jitter=2ms loss=1% burst=30% rate=50mbit queue=64kb")
                .unwrap();
        assert_eq!(long, short);
        assert_eq!(
            ParamPatch::from_spec("delay=1.5s").unwrap().delay_ms,
            Some(1500.0)
        );
        assert!(ParamPatch::from_spec("").unwrap().is_empty());
    }

    #[test]
    fn bad_input_names_the_key() {
        assert_eq!(
            ParamPatch::from_assignments(["delay=3"]).unwrap_err().key,
            "delay"
        );
        assert_eq!(
            ParamPatch::from_assignments(["loss_pct=abc"])
                .unwrap_err()
                .key,
            "loss_pct"
        );
        assert_eq!(
            ParamPatch::from_assignments(["ge=0.1,0.2"])
                .unwrap_err()
                .key,
            "ge"
        );
        assert_eq!(
            ParamPatch::from_assignments(["rate=fast"]).unwrap_err().key,
            "rate"
        );
        assert!(ParamPatch::from_assignments(["novalue"]).is_err());
        assert!(ParamPatch::from_assignments(["colour=red"]).is_err());
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
