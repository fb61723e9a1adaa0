//! Encoding of ARQ bodies (the layout is documented at the top of `arq/mod.rs`). Decoding
//! validates everything before the state machine sees it, so a malformed body has no effect.

use weft_core::{DecodeError, Reader, Writer};

/// Data flag: the sender has nothing more queued, so an ack now is what ends its wait.
pub(crate) const FLAG_ACK_NOW: u8 = 0x01;
/// Data flag bits 1–3: log2 of how many packets the receiver may gather into one ack.
const ACK_EVERY_SHIFT: u32 = 1;
const ACK_EVERY_MASK: u8 = 0x0e;
/// Data flag: a redundant copy of a packet already sent (see `arq/redundancy.rs`). Receivers
/// that predate it ignore it and see an ordinary duplicate.
const FLAG_COPY: u8 = 0x10;
/// Ack flag: `echo_time`/`echo_delay` are meaningful.
const ACK_FLAG_ECHO: u8 = 0x01;

pub(crate) const DATA_HEADER_LEN: usize = 1 + 8 + 4 + 4;
pub(crate) const ACK_FIXED_LEN: usize = 8 + 4 + 1 + 4 + 4 + 1;
pub(crate) const RANGE_LEN: usize = 8;
/// SACK ranges a data packet carries at most; standalone acks carry more.
pub(crate) const MAX_PIGGYBACK_RANGES: usize = 4;
/// Sequence numbers start at 0 and grow by one per packet, so they never get near this; a
/// body claiming more is forged or corrupt (and would overflow the arithmetic that follows).
pub(crate) const MAX_SEQ: u64 = 1 << 62;
/// The most ranges any ack can name (the count is a u8).
pub(crate) const MAX_RANGES: usize = u8::MAX as usize;

/// The timestamp the peer stamped on the latest-sent data packet it received, and how long
/// that packet waited before this ack left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Echo {
    pub tx_time_us: u32,
    pub delay_us: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct AckFrame {
    /// Every sequence number below this was received (or given up by the sender).
    pub cumulative: u64,
    /// Sequence numbers from `cumulative` on that the receiver accepts.
    pub window: u32,
    pub echo: Option<Echo>,
    /// Received ranges above `cumulative`, half-open, highest first, neither touching.
    pub ranges: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataHeader {
    pub ack_now: bool,
    /// The receiver may hold its ack until this many new packets arrived (a power of two).
    pub ack_every: u32,
    pub seq: u64,
    /// The oldest sequence number the sender may still send; everything below is done.
    pub base: u64,
    pub tx_time_us: u32,
    /// A redundant copy, sent blind a few ms after the original (counted apart).
    pub copy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataFrame<'a> {
    pub header: DataHeader,
    pub ack: AckFrame,
    pub payload: &'a [u8],
}

#[cfg(test)]
pub(crate) fn ack_len(ranges: usize) -> usize {
    ACK_FIXED_LEN + RANGE_LEN * ranges
}

impl AckFrame {
    pub fn encode(&self, w: &mut Writer<'_>) {
        let echo = self.echo.unwrap_or(Echo {
            tx_time_us: 0,
            delay_us: 0,
        });
        let ranges = &self.ranges[..self.ranges.len().min(MAX_RANGES)];
        w.u64(self.cumulative)
            .u32(self.window)
            .u8(if self.echo.is_some() {
                ACK_FLAG_ECHO
            } else {
                0
            })
            .u32(echo.tx_time_us)
            .u32(echo.delay_us)
            .u8(ranges.len() as u8);
        let mut previous_start = None;
        for &(start, end) in ranges {
            // The receiver's window bounds every offset far below u32::MAX; saturate rather than
            // wrap if a caller ever breaks that, so the peer rejects instead of misreading.
            let offset = match previous_start {
                None => end.saturating_sub(self.cumulative),
                Some(prev) => u64::saturating_sub(prev, end),
            };
            w.u32(u32::try_from(offset).unwrap_or(u32::MAX));
            w.u32(u32::try_from(end.saturating_sub(start)).unwrap_or(u32::MAX));
            previous_start = Some(start);
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<AckFrame, DecodeError> {
        let cumulative = r.u64()?;
        let window = r.u32()?;
        let flags = r.u8()?;
        let tx_time_us = r.u32()?;
        let delay_us = r.u32()?;
        let count = r.u8()? as usize;
        if r.remaining() < count * RANGE_LEN {
            return Err(DecodeError::Truncated {
                needed: count * RANGE_LEN - r.remaining(),
            });
        }
        let mut ranges = Vec::with_capacity(count);
        let mut previous_start: Option<u64> = None;
        for _ in 0..count {
            let offset = u64::from(r.u32()?);
            let len = u64::from(r.u32()?);
            let end = match previous_start {
                None => cumulative.checked_add(offset),
                Some(prev) if offset > 0 => prev.checked_sub(offset),
                Some(_) => return Err(DecodeError::Invalid("ack ranges touch")),
            }
            .ok_or(DecodeError::Invalid("ack range offset out of bounds"))?;
            let start = end
                .checked_sub(len)
                .ok_or(DecodeError::Invalid("ack range length"))?;
            if len == 0 || start <= cumulative {
                return Err(DecodeError::Invalid(
                    "ack range not above the cumulative ack",
                ));
            }
            ranges.push((start, end));
            previous_start = Some(start);
        }
        let echo = (flags & ACK_FLAG_ECHO != 0).then_some(Echo {
            tx_time_us,
            delay_us,
        });
        Ok(AckFrame {
            cumulative,
            window,
            echo,
            ranges,
        })
    }
}

impl DataHeader {
    fn encode(&self, w: &mut Writer<'_>) {
        let every_log2 = self.ack_every.max(1).ilog2().min(7) as u8;
        let ack_now = if self.ack_now { FLAG_ACK_NOW } else { 0 };
        let copy = if self.copy { FLAG_COPY } else { 0 };
        let flags = ack_now | copy | (every_log2 << ACK_EVERY_SHIFT);
        let base_gap = u32::try_from(self.seq.saturating_sub(self.base)).unwrap_or(u32::MAX);
        w.u8(flags).u64(self.seq).u32(base_gap).u32(self.tx_time_us);
    }

    fn decode(r: &mut Reader<'_>) -> Result<DataHeader, DecodeError> {
        let flags = r.u8()?;
        let seq = r.u64()?;
        let base_gap = u64::from(r.u32()?);
        let tx_time_us = r.u32()?;
        if seq >= MAX_SEQ {
            return Err(DecodeError::Invalid("sequence number out of range"));
        }
        let base = seq
            .checked_sub(base_gap)
            .ok_or(DecodeError::Invalid("base above sequence number"))?;
        Ok(DataHeader {
            ack_now: flags & FLAG_ACK_NOW != 0,
            ack_every: 1 << ((flags & ACK_EVERY_MASK) >> ACK_EVERY_SHIFT),
            seq,
            base,
            tx_time_us,
            copy: flags & FLAG_COPY != 0,
        })
    }
}

/// Appends a `ReliableData` body to `out`.
pub(crate) fn encode_data(out: &mut Vec<u8>, header: &DataHeader, ack: &AckFrame, payload: &[u8]) {
    let mut w = Writer::new(out);
    header.encode(&mut w);
    ack.encode(&mut w);
    w.bytes(payload);
}

/// Appends a `ReliableAck` body to `out`.
pub(crate) fn encode_ack(out: &mut Vec<u8>, ack: &AckFrame) {
    ack.encode(&mut Writer::new(out));
}

pub(crate) fn decode_data(body: &[u8]) -> Result<DataFrame<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let header = DataHeader::decode(&mut r)?;
    let ack = AckFrame::decode(&mut r)?;
    Ok(DataFrame {
        header,
        ack,
        payload: r.rest(),
    })
}

pub(crate) fn decode_ack(body: &[u8]) -> Result<AckFrame, DecodeError> {
    let mut r = Reader::new(body);
    let ack = AckFrame::decode(&mut r)?;
    if !r.is_empty() {
        return Err(DecodeError::Invalid("trailing bytes after ack"));
    }
    Ok(ack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_ack() -> AckFrame {
        AckFrame {
            cumulative: 1_000_000_000_000,
            window: 4096,
            echo: Some(Echo {
                tx_time_us: 0xdead_beef,
                delay_us: 1234,
            }),
            ranges: vec![
                (1_000_000_000_050, 1_000_000_000_060),
                (1_000_000_000_010, 1_000_000_000_011),
            ],
        }
    }

    #[test]
    fn data_round_trip() {
        let header = DataHeader {
            ack_now: true,
            ack_every: 16,
            seq: 77,
            base: 70,
            tx_time_us: 5,
            copy: true,
        };
        let ack = sample_ack();
        let mut body = Vec::new();
        encode_data(&mut body, &header, &ack, b"payload");
        assert_eq!(body.len(), DATA_HEADER_LEN + ack_len(2) + 7);
        let frame = decode_data(&body).unwrap();
        assert_eq!(frame.header, header);
        assert_eq!(frame.ack, ack);
        assert_eq!(frame.payload, b"payload");
    }

    #[test]
    fn ack_round_trip_without_echo() {
        let ack = AckFrame {
            cumulative: 3,
            window: 7,
            echo: None,
            ranges: vec![],
        };
        let mut body = Vec::new();
        encode_ack(&mut body, &ack);
        assert_eq!(body.len(), ACK_FIXED_LEN);
        assert_eq!(decode_ack(&body).unwrap(), ack);
        body.push(0);
        assert!(decode_ack(&body).is_err(), "trailing garbage is rejected");
    }

    #[test]
    fn rejects_inconsistent_fields() {
        let mut body = Vec::new();
        let header = DataHeader {
            ack_now: false,
            ack_every: 1,
            seq: 5,
            base: 5,
            tx_time_us: 0,
            copy: false,
        };
        encode_data(&mut body, &header, &AckFrame::default(), b"");
        let mut huge = body.clone();
        huge[1..9].copy_from_slice(&(u64::MAX - 1).to_be_bytes());
        assert_eq!(
            decode_data(&huge).unwrap_err(),
            DecodeError::Invalid("sequence number out of range")
        );
        body[9..13].copy_from_slice(&6u32.to_be_bytes());
        assert_eq!(
            decode_data(&body).unwrap_err(),
            DecodeError::Invalid("base above sequence number")
        );

        let mut ack = Vec::new();
        encode_ack(
            &mut ack,
            &AckFrame {
                cumulative: 10,
                window: 100,
                echo: None,
                ranges: vec![(12, 14)],
            },
        );
        // A range reaching down to the cumulative point is contradictory.
        ack[ACK_FIXED_LEN + 4..ACK_FIXED_LEN + 8].copy_from_slice(&4u32.to_be_bytes());
        assert!(decode_ack(&ack).is_err());
    }

    proptest! {
        #[test]
        fn ack_round_trips(cumulative in 0u64..u64::MAX / 2, gaps in proptest::collection::vec((1u64..1000, 1u64..1000), 0..20)) {
            // Build descending, non-touching ranges from the top down.
            let mut top = cumulative + gaps.iter().map(|(g, l)| g + l).sum::<u64>() + 1;
            let mut ranges = Vec::new();
            for (gap, len) in gaps {
                let end = top;
                let start = end - len;
                ranges.push((start, end));
                top = start - gap;
            }
            let ack = AckFrame { cumulative, window: u32::MAX, echo: None, ranges };
            let mut body = Vec::new();
            encode_ack(&mut body, &ack);
            prop_assert_eq!(decode_ack(&body).unwrap(), ack);
        }

        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_data(&body);
            let _ = decode_ack(&body);
        }

        #[test]
        fn mutated_bodies_never_panic(flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8), cut in 0usize..200) {
            let mut body = Vec::new();
            let header = DataHeader { ack_now: false, ack_every: 4, seq: 1 << 40, base: (1 << 40) - 3, tx_time_us: 9, copy: false };
            encode_data(&mut body, &header, &sample_ack(), &[7; 40]);
            for (at, value) in flips {
                let len = body.len();
                body[at % len] ^= value;
            }
            body.truncate(cut.max(1));
            if let Ok(frame) = decode_data(&body) {
                for w in frame.ack.ranges.windows(2) {
                    prop_assert!(w[0].0 > w[1].1, "decoded ranges must be descending and apart");
                }
                for &(s, e) in &frame.ack.ranges {
                    prop_assert!(s > frame.ack.cumulative && s < e);
                }
            }
            let _ = decode_ack(&body);
        }
    }
}
