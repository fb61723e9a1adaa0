//! The session segment codec (layout documented in the parent module). Decoding validates
//! every length and relation once, so the state machine can trust a [`Segment`]'s fields.

use weft_core::{DecodeError, Reader, Writer};

pub const SEGMENT_VERSION: u8 = 1;
/// Bytes before the options.
pub const FIXED_HEADER_LEN: usize = 48;
/// Most SACK blocks an option can carry (its length byte bounds it).
pub const MAX_SACK_BLOCKS: usize = (u8::MAX as usize) / SACK_BLOCK_LEN;
const SACK_BLOCK_LEN: usize = 16;
const OPTION_MSS: u8 = 1;
const OPTION_SACK: u8 = 2;
const OPTION_HEADER_LEN: usize = 2;
const MSS_OPTION_LEN: usize = OPTION_HEADER_LEN + 2;

/// Segment flags (one byte on the wire). Unknown bits are carried but ignored.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    pub const SYN: Flags = Flags(0x01);
    pub const ACK: Flags = Flags(0x02);
    pub const FIN: Flags = Flags(0x04);
    pub const RST: Flags = Flags(0x08);
    /// Asks for an immediate acknowledgement (zero-window, keepalive and route probes).
    pub const PROBE: Flags = Flags(0x10);

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Flags::SYN, "SYN"),
            (Flags::ACK, "ACK"),
            (Flags::FIN, "FIN"),
            (Flags::RST, "RST"),
            (Flags::PROBE, "PROBE"),
        ];
        let mut first = true;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// Selective acknowledgement blocks, each a half-open byte range `[start, end)`.
#[derive(Clone, Copy, Default)]
pub struct SackBlocks {
    blocks: [(u64, u64); MAX_SACK_BLOCKS],
    len: usize,
}

impl SackBlocks {
    /// Appends a block; returns false (and drops it) when full.
    pub fn push(&mut self, start: u64, end: u64) -> bool {
        if self.len == MAX_SACK_BLOCKS {
            return false;
        }
        self.blocks[self.len] = (start, end);
        self.len += 1;
        true
    }

    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.blocks[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl PartialEq for SackBlocks {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SackBlocks {}

impl std::fmt::Debug for SackBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// One decoded segment; `payload` borrows from the datagram.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Segment<'a> {
    pub flags: Flags,
    pub conn_id: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// Stream offset of the first payload byte (or of the FIN when there is no payload).
    pub seq: u64,
    /// Next offset the sender of this segment expects (valid with ACK).
    pub ack: u64,
    /// Bytes the sender of this segment can accept beyond `ack`.
    pub window: u32,
    /// Sender's clock, microseconds, wrapping.
    pub tsval: u32,
    /// The `tsval` of the segment this one acknowledges (valid with ACK).
    pub tsecr: u32,
    /// Microseconds between that segment's arrival and this acknowledgement.
    pub ack_delay_us: u32,
    /// Congestion-experienced segments the sender of this one has received so far (wrapping).
    pub ce_count: u32,
    /// Largest segment (header + payload) the sender of this SYN accepts.
    pub mss: Option<u16>,
    pub sacks: SackBlocks,
    pub payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// Offset just past this segment in sequence space (a FIN occupies one offset).
    pub fn end(&self) -> u64 {
        self.seq + self.payload.len() as u64 + u64::from(self.flags.contains(Flags::FIN))
    }

    pub fn header_len(&self) -> usize {
        let mut n = FIXED_HEADER_LEN;
        if self.mss.is_some() {
            n += MSS_OPTION_LEN;
        }
        if !self.sacks.is_empty() {
            n += sack_option_len(self.sacks.len());
        }
        n
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let header_len = self.header_len();
        out.reserve(header_len + self.payload.len());
        let mut w = Writer::new(out);
        w.u8(SEGMENT_VERSION)
            .u8(self.flags.0)
            .u16(header_len as u16)
            .u32(self.conn_id)
            .u16(self.src_port)
            .u16(self.dst_port)
            .u64(self.seq)
            .u64(self.ack)
            .u32(self.window)
            .u32(self.tsval)
            .u32(self.tsecr)
            .u32(self.ack_delay_us)
            .u32(self.ce_count);
        if let Some(mss) = self.mss {
            w.u8(OPTION_MSS).u8(2).u16(mss);
        }
        if !self.sacks.is_empty() {
            w.u8(OPTION_SACK)
                .u8((self.sacks.len() * SACK_BLOCK_LEN) as u8);
            for &(start, end) in self.sacks.as_slice() {
                w.u64(start).u64(end);
            }
        }
        w.bytes(self.payload);
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    pub fn decode(buf: &'a [u8]) -> Result<Segment<'a>, DecodeError> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if version != SEGMENT_VERSION {
            return Err(DecodeError::Version(version));
        }
        let flags = Flags(r.u8()?);
        let header_len = r.u16()? as usize;
        if header_len < FIXED_HEADER_LEN {
            return Err(DecodeError::Invalid("segment header length below minimum"));
        }
        if header_len > buf.len() {
            return Err(DecodeError::Truncated {
                needed: header_len - buf.len(),
            });
        }
        let mut seg = Segment {
            flags,
            conn_id: r.u32()?,
            src_port: r.u16()?,
            dst_port: r.u16()?,
            seq: r.u64()?,
            ack: r.u64()?,
            window: r.u32()?,
            tsval: r.u32()?,
            tsecr: r.u32()?,
            ack_delay_us: r.u32()?,
            ce_count: r.u32()?,
            ..Segment::default()
        };
        let mut options = Reader::new(r.bytes(header_len - FIXED_HEADER_LEN)?);
        while !options.is_empty() {
            let kind = options.u8()?;
            let len = options.u8()? as usize;
            let mut value = Reader::new(options.bytes(len)?);
            match kind {
                OPTION_MSS => {
                    if len != 2 {
                        return Err(DecodeError::Invalid("MSS option length"));
                    }
                    seg.mss = Some(value.u16()?);
                }
                OPTION_SACK => {
                    if !len.is_multiple_of(SACK_BLOCK_LEN) || !seg.sacks.is_empty() {
                        return Err(DecodeError::Invalid("SACK option"));
                    }
                    while !value.is_empty() {
                        let (start, end) = (value.u64()?, value.u64()?);
                        if start >= end {
                            return Err(DecodeError::Invalid("empty or inverted SACK block"));
                        }
                        seg.sacks.push(start, end);
                    }
                }
                // Options a later version adds are skipped, so old peers interoperate.
                _ => {}
            }
        }
        seg.payload = r.rest();
        let fin = u64::from(flags.contains(Flags::FIN));
        if seg
            .seq
            .checked_add(seg.payload.len() as u64 + fin)
            .is_none()
        {
            return Err(DecodeError::Invalid(
                "segment runs past the end of the stream space",
            ));
        }
        if flags.contains(Flags::SYN) && (!seg.payload.is_empty() || flags.contains(Flags::FIN)) {
            return Err(DecodeError::Invalid("SYN with data or FIN"));
        }
        Ok(seg)
    }
}

/// Bytes a SACK option with `blocks` blocks takes.
pub fn sack_option_len(blocks: usize) -> usize {
    if blocks == 0 {
        0
    } else {
        OPTION_HEADER_LEN + blocks * SACK_BLOCK_LEN
    }
}

/// Largest number of SACK blocks that fit in `room` header bytes.
pub fn sack_blocks_fitting(room: usize) -> usize {
    room.saturating_sub(OPTION_HEADER_LEN) / SACK_BLOCK_LEN
}

/// What the daemon needs to route a segment to its session before decoding all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    pub conn_id: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub flags: Flags,
}

impl SegmentSummary {
    /// A connection request: SYN without ACK (hand it to a listener's `Session::accept`).
    pub fn is_syn(&self) -> bool {
        self.flags.contains(Flags::SYN) && !self.flags.contains(Flags::ACK)
    }

    pub fn is_rst(&self) -> bool {
        self.flags.contains(Flags::RST)
    }
}

pub fn peek(segment: &[u8]) -> Result<SegmentSummary, DecodeError> {
    let mut r = Reader::new(segment);
    let version = r.u8()?;
    if version != SEGMENT_VERSION {
        return Err(DecodeError::Version(version));
    }
    let flags = Flags(r.u8()?);
    let header_len = r.u16()? as usize;
    if header_len < FIXED_HEADER_LEN {
        return Err(DecodeError::Invalid("segment header length below minimum"));
    }
    if header_len > segment.len() {
        return Err(DecodeError::Truncated {
            needed: header_len - segment.len(),
        });
    }
    Ok(SegmentSummary {
        conn_id: r.u32()?,
        src_port: r.u16()?,
        dst_port: r.u16()?,
        flags,
    })
}

/// The RST answering `segment` (which matched no session), or None when it is itself a RST
/// or unreadable.
pub fn reset_reply(segment: &[u8]) -> Option<Vec<u8>> {
    let seg = Segment::decode(segment).ok()?;
    if seg.flags.contains(Flags::RST) {
        return None;
    }
    let reply = Segment {
        flags: Flags::RST.with(Flags::ACK),
        conn_id: seg.conn_id,
        src_port: seg.dst_port,
        dst_port: seg.src_port,
        seq: if seg.flags.contains(Flags::ACK) {
            seg.ack
        } else {
            0
        },
        ack: seg.end(),
        tsecr: seg.tsval,
        ..Segment::default()
    };
    Some(reply.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample<'a>(payload: &'a [u8]) -> Segment<'a> {
        let mut sacks = SackBlocks::default();
        sacks.push(100, 200);
        sacks.push(300, 1 << 40);
        Segment {
            flags: Flags::ACK.with(Flags::FIN),
            conn_id: 0xdead_beef,
            src_port: 5001,
            dst_port: 80,
            seq: u64::MAX - 1000,
            ack: 77,
            window: 1 << 20,
            tsval: 123_456,
            tsecr: 654_321,
            ack_delay_us: 250,
            ce_count: 3,
            mss: Some(1280),
            sacks,
            payload,
        }
    }

    #[test]
    fn round_trip() {
        let seg = sample(b"hello");
        let bytes = seg.to_vec();
        assert_eq!(bytes.len(), seg.header_len() + 5);
        assert_eq!(Segment::decode(&bytes), Ok(seg.clone()));
        let summary = peek(&bytes).unwrap();
        assert_eq!(summary.conn_id, 0xdead_beef);
        assert_eq!((summary.src_port, summary.dst_port), (5001, 80));
        assert!(!summary.is_syn() && !summary.is_rst());
        let bare = Segment {
            flags: Flags::SYN,
            ..Segment::default()
        };
        assert_eq!(Segment::decode(&bare.to_vec()), Ok(bare.clone()));
        assert_eq!(bare.to_vec().len(), FIXED_HEADER_LEN);
        assert!(peek(&bare.to_vec()).unwrap().is_syn());
    }

    #[test]
    fn unknown_options_are_skipped() {
        let seg = sample(b"x");
        let mut bytes = seg.to_vec();
        // Splice an unknown option (kind 99, 3 bytes) in front of the others.
        let header_len = seg.header_len() + 5;
        bytes[2..4].copy_from_slice(&(header_len as u16).to_be_bytes());
        bytes.splice(FIXED_HEADER_LEN..FIXED_HEADER_LEN, [99, 3, 1, 2, 3]);
        assert_eq!(Segment::decode(&bytes), Ok(seg));
    }

    #[test]
    fn rejects_malformed() {
        let seg = sample(b"data");
        let bytes = seg.to_vec();
        let mut v = bytes.clone();
        v[0] = 2;
        assert_eq!(Segment::decode(&v), Err(DecodeError::Version(2)));
        assert_eq!(peek(&v), Err(DecodeError::Version(2)));
        assert!(Segment::decode(&bytes[..FIXED_HEADER_LEN + 3]).is_err());
        let mut v = bytes.clone();
        v[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert!(Segment::decode(&v).is_err());
        // Sequence space overflow.
        let overflow = Segment {
            seq: u64::MAX - 2,
            ..sample(b"abcd")
        };
        assert!(Segment::decode(&overflow.to_vec()).is_err());
        let syn_data = Segment {
            flags: Flags::SYN,
            ..sample(b"abcd")
        };
        assert!(Segment::decode(&syn_data.to_vec()).is_err());
        let mut inverted = sample(b"");
        inverted.sacks = SackBlocks::default();
        inverted.sacks.push(5, 5);
        assert!(Segment::decode(&inverted.to_vec()).is_err());
    }

    #[test]
    fn reset_reply_mirrors_the_segment() {
        let seg = sample(b"data");
        let rst = reset_reply(&seg.to_vec()).unwrap();
        let r = Segment::decode(&rst).unwrap();
        assert!(r.flags.contains(Flags::RST));
        assert_eq!(r.conn_id, seg.conn_id);
        assert_eq!((r.src_port, r.dst_port), (seg.dst_port, seg.src_port));
        assert_eq!(reset_reply(&rst), None, "never answer a RST");
        assert_eq!(reset_reply(b"garbage"), None);
    }

    #[test]
    fn sack_room() {
        assert_eq!(sack_blocks_fitting(sack_option_len(3)), 3);
        assert_eq!(sack_blocks_fitting(sack_option_len(3) - 1), 2);
        assert_eq!(sack_blocks_fitting(0), 0);
        assert_eq!(MAX_SACK_BLOCKS, 15);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Segment::decode(&data);
            let _ = peek(&data);
            let _ = reset_reply(&data);
        }

        #[test]
        fn mutated_segments_never_panic(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8),
            cut in 0usize..200,
        ) {
            let mut bytes = sample(&payload).to_vec();
            for (at, value) in flips {
                let n = bytes.len();
                bytes[at % n] = value;
            }
            bytes.truncate(cut.max(1));
            if let Ok(seg) = Segment::decode(&bytes) {
                // Whatever decodes re-encodes to something that decodes identically.
                let again = seg.to_vec();
                prop_assert_eq!(Segment::decode(&again), Ok(seg));
            }
            let _ = peek(&bytes);
        }
    }
}
