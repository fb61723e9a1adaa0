//! The producer's view of a ring. It keeps its tail privately and only ever stores it; the
//! consumer's head is loaded, validated (monotonic, never past the tail) and rejected as
//! [`RingError::Corrupt`] otherwise. After the first rejection the view stays poisoned: the
//! session must be reset.

use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::consumer::Remainder;
use super::layout::{RegionKind, END_CLOSED, END_OPEN, END_SEALED};
use super::region::{Direction, Memory};
use super::ring_ref::RingRef;
use super::RingError;

/// The producer's declared end of a ring, as the consumer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerEnd {
    Open,
    /// End of stream after the last published byte (`shutdown(SHUT_WR)`, FIN).
    Closed,
    /// The producer stopped using the ring (detach); later bytes travel on the socketpair.
    Sealed,
}

/// Producer view of one ring.
pub struct Producer {
    pub(crate) ring: RingRef,
    tail: u64,
    head_seen: u64,
    end: ProducerEnd,
    fault: Option<&'static str>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("direction", &self.ring.direction())
            .field("tail", &self.tail)
            .field("head_seen", &self.head_seen)
            .field("end", &self.end)
            .field("fault", &self.fault)
            .finish()
    }
}

impl Producer {
    pub(crate) fn attach(memory: Arc<Memory>, direction: Direction) -> Result<Self, RingError> {
        let ring = RingRef::new(memory, direction);
        let header = ring.header();
        let tail = header.producer.tail.load(Ordering::Acquire);
        let head = header.consumer.head.load(Ordering::Acquire);
        if tail.wrapping_sub(head) > ring.capacity() {
            return Err(RingError::Corrupt("indices out of range at attach"));
        }
        let end = match header.producer.state.load(Ordering::Acquire) {
            END_OPEN => ProducerEnd::Open,
            END_CLOSED => ProducerEnd::Closed,
            END_SEALED => ProducerEnd::Sealed,
            _ => return Err(RingError::Corrupt("unknown producer state at attach")),
        };
        Ok(Producer {
            ring,
            tail,
            head_seen: head,
            end,
            fault: None,
        })
    }

    fn fail(&mut self, why: &'static str) -> RingError {
        self.fault = Some(why);
        RingError::Corrupt(why)
    }

    fn check(&self) -> Result<(), RingError> {
        match self.fault {
            Some(why) => Err(RingError::Corrupt(why)),
            None => Ok(()),
        }
    }

    pub(crate) fn check_kind(&self, kind: RegionKind) -> Result<(), RingError> {
        if self.ring.kind() == kind {
            Ok(())
        } else {
            Err(RingError::WrongKind(self.ring.kind()))
        }
    }

    pub(crate) fn ensure_open(&self) -> Result<(), RingError> {
        self.check()?;
        match self.end {
            ProducerEnd::Open => Ok(()),
            _ => Err(RingError::Closed),
        }
    }

    /// Free space, reloading the consumer's index only when the cached value is below
    /// `wanted` (the common case of a fast consumer then costs no cache miss).
    pub(crate) fn free_space(&mut self, wanted: u64) -> Result<u64, RingError> {
        self.check()?;
        let cached = self.ring.capacity() - self.tail.wrapping_sub(self.head_seen);
        if cached >= wanted {
            return Ok(cached);
        }
        let head = self.ring.header().consumer.head.load(Ordering::Acquire);
        // Valid heads lie in [head_seen, tail]: never backwards, never past what we published.
        if head.wrapping_sub(self.head_seen) > self.tail.wrapping_sub(self.head_seen) {
            return Err(self.fail("consumer index out of range"));
        }
        self.head_seen = head;
        Ok(self.ring.capacity() - self.tail.wrapping_sub(head))
    }

    pub(crate) fn tail(&self) -> u64 {
        self.tail
    }

    pub(crate) fn publish(&mut self, len: u64) {
        self.tail = self.tail.wrapping_add(len);
        self.ring
            .header()
            .producer
            .tail
            .store(self.tail, Ordering::Release);
    }

    pub fn capacity(&self) -> usize {
        self.ring.capacity() as usize
    }

    pub fn kind(&self) -> RegionKind {
        self.ring.kind()
    }

    /// Bytes that can be written now.
    pub fn writable(&mut self) -> Result<usize, RingError> {
        self.ensure_open()?;
        Ok(self.free_space(u64::MAX)? as usize)
    }

    /// Bytes published and not yet consumed (what `SIOCOUTQ` reports).
    pub fn unconsumed(&mut self) -> Result<usize, RingError> {
        let free = self.free_space(u64::MAX)?;
        Ok((self.ring.capacity() - free) as usize)
    }

    /// Stream rings: copies as much of `data` as fits and publishes it; `Ok(0)` when full.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, RingError> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    /// Stream rings: copies as much of `bufs` (in order) as fits, publishes it once.
    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Result<usize, RingError> {
        self.check_kind(RegionKind::Stream)?;
        self.ensure_open()?;
        let wanted: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let mut room = self.free_space(wanted)?.min(wanted) as usize;
        let mut pos = self.tail;
        let mut written = 0;
        for buf in bufs {
            if room == 0 {
                break;
            }
            let n = buf.len().min(room);
            self.ring.copy_in(pos, &buf[..n]);
            pos = pos.wrapping_add(n as u64);
            room -= n;
            written += n;
        }
        if written > 0 {
            self.publish(written as u64);
        }
        Ok(written)
    }

    /// Stream rings: the free space as (up to) two slices to fill in place, then
    /// [`WriteGrant::commit`] how many bytes were filled.
    pub fn write_grant(&mut self) -> Result<WriteGrant<'_>, RingError> {
        self.check_kind(RegionKind::Stream)?;
        self.ensure_open()?;
        let len = self.free_space(u64::MAX)? as usize;
        Ok(WriteGrant {
            pos: self.tail,
            len,
            producer: self,
        })
    }

    /// End of stream: the consumer reads what was published, then sees [`ProducerEnd::Closed`].
    pub fn close(&mut self) -> Result<(), RingError> {
        self.end_with(ProducerEnd::Closed, END_CLOSED)
    }

    /// Stops using the ring at the current tail; the peer takes over from there.
    pub(crate) fn seal(&mut self) -> Result<(), RingError> {
        self.end_with(ProducerEnd::Sealed, END_SEALED)
    }

    fn end_with(&mut self, end: ProducerEnd, code: u32) -> Result<(), RingError> {
        self.check()?;
        if self.end != ProducerEnd::Open {
            return Err(RingError::Closed);
        }
        self.end = end;
        // The tail was stored (Release) with the last publication; Release here orders it
        // before the state, so a consumer that sees the state sees the final tail.
        self.ring
            .header()
            .producer
            .state
            .store(code, Ordering::Release);
        Ok(())
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.fault.is_some()
    }

    /// The producer turns reader of what its consumer left: `[head, tail)` where `head` is
    /// the consumer's final, sealed index (validated against what this side published).
    pub(crate) fn into_remainder(mut self, head: u64) -> Result<Remainder, RingError> {
        self.check()?;
        if head.wrapping_sub(self.head_seen) > self.tail.wrapping_sub(self.head_seen) {
            return Err(self.fail("sealed consumer index out of range"));
        }
        Ok(Remainder {
            ring: self.ring,
            pos: head,
            end: self.tail,
        })
    }
}

/// Free space of a producer, to fill in place; see [`Producer::write_grant`].
pub struct WriteGrant<'a> {
    producer: &'a mut Producer,
    pos: u64,
    len: usize,
}

impl WriteGrant<'_> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_slices(&mut self) -> (&mut [u8], &mut [u8]) {
        self.producer.ring.slices_mut(self.pos, self.len)
    }

    /// Publishes the first `len` bytes of the grant.
    pub fn commit(self, len: usize) -> Result<(), RingError> {
        if len > self.len {
            return Err(RingError::InvalidLength { len, max: self.len });
        }
        self.producer.publish(len as u64);
        Ok(())
    }
}
