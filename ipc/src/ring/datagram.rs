//! Datagram operations: each record is a little-endian u32 payload length followed by the
//! payload, packed back to back and free to wrap across the end of the data area. The
//! producer publishes whole records only, so a consumer that finds a partial record, or a
//! length that runs past the producer's index or beyond the ring, has found corruption.

use std::io::IoSlice;

use super::consumer::Consumer;
use super::layout::{max_datagram, RegionKind, RECORD_HEADER};
use super::producer::Producer;
use super::ring_ref::RingRef;
use super::RingError;

/// One datagram handed out by [`Consumer::pop`] or [`Consumer::peek_datagram`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// The datagram's full length (what `recv` returns with `MSG_TRUNC`).
    pub len: usize,
    /// Bytes copied into the caller's buffer.
    pub copied: usize,
}

impl Datagram {
    /// The buffer was shorter than the datagram (`MSG_TRUNC` in `msg_flags`).
    pub fn truncated(&self) -> bool {
        self.copied < self.len
    }
}

/// Length of the record at `pos`, given `available` published bytes from there.
fn record_at(ring: &RingRef, pos: u64, available: u64) -> Result<Option<usize>, &'static str> {
    if available == 0 {
        return Ok(None);
    }
    if available < RECORD_HEADER as u64 {
        return Err("partial datagram record header");
    }
    let mut header = [0u8; RECORD_HEADER];
    ring.copy_out(pos, &mut header);
    let len = u32::from_le_bytes(header) as usize;
    if len > max_datagram(ring.capacity() as u32) {
        return Err("datagram length exceeds the ring");
    }
    if (RECORD_HEADER + len) as u64 > available {
        return Err("datagram record runs past the producer index");
    }
    Ok(Some(len))
}

impl Producer {
    /// Largest datagram this ring accepts.
    pub fn max_datagram(&self) -> usize {
        max_datagram(self.ring.capacity() as u32)
    }

    /// Datagram rings: publishes `payload` as one record. `Ok(false)` when there is no room
    /// now; [`RingError::TooLarge`] when it could never fit.
    pub fn push(&mut self, payload: &[u8]) -> Result<bool, RingError> {
        self.push_vectored(&[IoSlice::new(payload)])
    }

    /// Datagram rings: publishes the concatenation of `parts` as one record (`sendmsg`).
    pub fn push_vectored(&mut self, parts: &[IoSlice<'_>]) -> Result<bool, RingError> {
        self.check_kind(RegionKind::Datagram)?;
        self.ensure_open()?;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let max = self.max_datagram();
        if len > max {
            return Err(RingError::TooLarge { len, max });
        }
        let need = (RECORD_HEADER + len) as u64;
        if self.free_space(need)? < need {
            return Ok(false);
        }
        let mut pos = self.tail();
        self.ring.copy_in(pos, &(len as u32).to_le_bytes());
        pos = pos.wrapping_add(RECORD_HEADER as u64);
        for part in parts {
            self.ring.copy_in(pos, part);
            pos = pos.wrapping_add(part.len() as u64);
        }
        self.publish(need);
        Ok(true)
    }
}

impl Consumer {
    fn next_record(&mut self) -> Result<Option<usize>, RingError> {
        self.check_kind(RegionKind::Datagram)?;
        // The producer publishes whole records, so any cached non-zero count covers at least
        // the first whole record: reload only when nothing is cached.
        let available = self.available(1)?;
        match record_at(&self.ring, self.head(), available) {
            Ok(len) => Ok(len),
            Err(why) => Err(self.fail_corrupt(why)),
        }
    }

    fn fail_corrupt(&mut self, why: &'static str) -> RingError {
        self.poison(why);
        RingError::Corrupt(why)
    }

    /// Datagram rings: the length of the next datagram, if any (`FIONREAD` on a datagram
    /// socket).
    pub fn next_datagram_len(&mut self) -> Result<Option<usize>, RingError> {
        self.next_record()
    }

    /// Datagram rings: copies the next datagram (truncated to `buf`) and consumes it whole.
    pub fn pop(&mut self, buf: &mut [u8]) -> Result<Option<Datagram>, RingError> {
        let Some(datagram) = self.peek_datagram(buf)? else {
            return Ok(None);
        };
        self.release((RECORD_HEADER + datagram.len) as u64);
        Ok(Some(datagram))
    }

    /// Datagram rings: like [`pop`](Self::pop) without consuming (`MSG_PEEK`).
    pub fn peek_datagram(&mut self, buf: &mut [u8]) -> Result<Option<Datagram>, RingError> {
        let Some(len) = self.next_record()? else {
            return Ok(None);
        };
        let copied = len.min(buf.len());
        self.ring.copy_out(
            self.head().wrapping_add(RECORD_HEADER as u64),
            &mut buf[..copied],
        );
        Ok(Some(Datagram { len, copied }))
    }

    /// Datagram rings: the next datagram's payload in place as two slices, and a token to
    /// consume it with [`DatagramGrant::consume`].
    pub fn datagram_grant(&mut self) -> Result<Option<DatagramGrant<'_>>, RingError> {
        let Some(len) = self.next_record()? else {
            return Ok(None);
        };
        Ok(Some(DatagramGrant {
            len,
            consumer: self,
        }))
    }
}

/// The next datagram of a consumer, in place; see [`Consumer::datagram_grant`].
pub struct DatagramGrant<'a> {
    consumer: &'a mut Consumer,
    len: usize,
}

impl DatagramGrant<'_> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        let payload = self.consumer.head().wrapping_add(RECORD_HEADER as u64);
        self.consumer.ring.slices(payload, self.len)
    }

    pub fn consume(self) {
        self.consumer.release((RECORD_HEADER + self.len) as u64);
    }
}

impl super::consumer::Remainder {
    /// Datagram rings: copies and drops the next remaining datagram. A malformed record is
    /// corruption (the daemon resets the session rather than invent boundaries).
    pub fn pop(&mut self, buf: &mut [u8]) -> Result<Option<Datagram>, RingError> {
        if self.ring.kind() != RegionKind::Datagram {
            return Err(RingError::WrongKind(self.ring.kind()));
        }
        let available = self.end.wrapping_sub(self.pos);
        let Some(len) = record_at(&self.ring, self.pos, available).map_err(RingError::Corrupt)?
        else {
            return Ok(None);
        };
        let copied = len.min(buf.len());
        self.ring.copy_out(
            self.pos.wrapping_add(RECORD_HEADER as u64),
            &mut buf[..copied],
        );
        self.pos = self.pos.wrapping_add((RECORD_HEADER + len) as u64);
        Ok(Some(Datagram { len, copied }))
    }
}
