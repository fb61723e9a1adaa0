//! The consumer's view of a ring, and what a detached consumer leaves behind. It keeps its
//! head privately and only ever stores it; the producer's tail is loaded, validated (monotonic,
//! at most one capacity ahead of the head, frozen once the producer ended the ring) and
//! rejected as [`RingError::Corrupt`] otherwise. After the first rejection the view stays
//! poisoned.

use std::io::IoSliceMut;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::layout::{RegionKind, END_CLOSED, END_OPEN, END_SEALED};
use super::producer::ProducerEnd;
use super::region::{Direction, Memory};
use super::ring_ref::RingRef;
use super::RingError;

/// Consumer view of one ring.
pub struct Consumer {
    pub(crate) ring: RingRef,
    head: u64,
    tail_seen: u64,
    /// Set once the producer's end (closed or sealed) has been observed: its tail is final.
    final_tail: Option<(u64, ProducerEnd)>,
    sealed: bool,
    fault: Option<&'static str>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("direction", &self.ring.direction())
            .field("head", &self.head)
            .field("tail_seen", &self.tail_seen)
            .field("final_tail", &self.final_tail)
            .field("sealed", &self.sealed)
            .field("fault", &self.fault)
            .finish()
    }
}

impl Consumer {
    pub(crate) fn attach(memory: Arc<Memory>, direction: Direction) -> Result<Self, RingError> {
        let ring = RingRef::new(memory, direction);
        let header = ring.header();
        let head = header.consumer.head.load(Ordering::Acquire);
        let tail = header.producer.tail.load(Ordering::Acquire);
        if tail.wrapping_sub(head) > ring.capacity() {
            return Err(RingError::Corrupt("indices out of range at attach"));
        }
        let sealed = header.consumer.state.load(Ordering::Acquire) != END_OPEN;
        Ok(Consumer {
            ring,
            head,
            tail_seen: tail,
            final_tail: None,
            sealed,
            fault: None,
        })
    }

    fn fail(&mut self, why: &'static str) -> RingError {
        self.fault = Some(why);
        RingError::Corrupt(why)
    }

    pub(crate) fn check(&self) -> Result<(), RingError> {
        if let Some(why) = self.fault {
            return Err(RingError::Corrupt(why));
        }
        if self.sealed {
            return Err(RingError::Closed);
        }
        Ok(())
    }

    pub(crate) fn check_kind(&self, kind: RegionKind) -> Result<(), RingError> {
        if self.ring.kind() == kind {
            Ok(())
        } else {
            Err(RingError::WrongKind(self.ring.kind()))
        }
    }

    fn refresh(&mut self) -> Result<(), RingError> {
        let tail = self.ring.header().producer.tail.load(Ordering::Acquire);
        if let Some((final_tail, _)) = self.final_tail {
            if tail != final_tail {
                return Err(self.fail("producer moved after ending the ring"));
            }
            return Ok(());
        }
        // Valid tails lie in [tail_seen, head + capacity].
        let limit = self
            .head
            .wrapping_add(self.ring.capacity())
            .wrapping_sub(self.tail_seen);
        if tail.wrapping_sub(self.tail_seen) > limit {
            return Err(self.fail("producer index out of range"));
        }
        self.tail_seen = tail;
        Ok(())
    }

    /// Bytes available, reloading the producer's index only when the cached count is below
    /// `wanted`.
    pub(crate) fn available(&mut self, wanted: u64) -> Result<u64, RingError> {
        self.check()?;
        let cached = self.tail_seen.wrapping_sub(self.head);
        if cached >= wanted {
            return Ok(cached);
        }
        self.refresh()?;
        Ok(self.tail_seen.wrapping_sub(self.head))
    }

    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Published bytes not yet consumed, as last seen (no reload).
    pub(crate) fn cached_len(&self) -> u64 {
        self.tail_seen.wrapping_sub(self.head)
    }

    pub(crate) fn release(&mut self, len: u64) {
        self.head = self.head.wrapping_add(len);
        self.ring
            .header()
            .consumer
            .head
            .store(self.head, Ordering::Release);
    }

    pub fn capacity(&self) -> usize {
        self.ring.capacity() as usize
    }

    pub fn kind(&self) -> RegionKind {
        self.ring.kind()
    }

    /// Bytes published and not yet consumed (stream rings: what `FIONREAD` reports).
    pub fn readable(&mut self) -> Result<usize, RingError> {
        Ok(self.available(u64::MAX)? as usize)
    }

    /// Whether the producer has ended the ring, and how. Once it has, its tail is frozen:
    /// any later move is reported as corruption.
    pub fn producer_end(&mut self) -> Result<ProducerEnd, RingError> {
        self.check()?;
        if let Some((_, end)) = self.final_tail {
            return Ok(end);
        }
        let end = match self.ring.header().producer.state.load(Ordering::Acquire) {
            END_OPEN => return Ok(ProducerEnd::Open),
            END_CLOSED => ProducerEnd::Closed,
            END_SEALED => ProducerEnd::Sealed,
            _ => return Err(self.fail("unknown producer state")),
        };
        // Acquire on the state makes the final tail visible: load it now and freeze it.
        self.refresh()?;
        self.final_tail = Some((self.tail_seen, end));
        Ok(end)
    }

    /// The producer has ended the ring and everything it published has been consumed: for a
    /// closed ring this is end of stream (`read` returns 0).
    pub fn is_finished(&mut self) -> Result<bool, RingError> {
        if self.producer_end()? == ProducerEnd::Open {
            return Ok(false);
        }
        Ok(self.available(u64::MAX)? == 0)
    }

    /// Stream rings: copies up to `buf.len()` bytes out and consumes them; `Ok(0)` when empty
    /// (see [`is_finished`](Self::is_finished) for end of stream).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        self.read_vectored(&mut [IoSliceMut::new(buf)])
    }

    /// Stream rings: fills `bufs` in order and consumes what was copied.
    pub fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> Result<usize, RingError> {
        let n = self.copy_vectored(bufs)?;
        if n > 0 {
            self.release(n as u64);
        }
        Ok(n)
    }

    /// Stream rings: like [`read`](Self::read) without consuming (`MSG_PEEK`).
    pub fn peek(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        self.copy_vectored(&mut [IoSliceMut::new(buf)])
    }

    fn copy_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> Result<usize, RingError> {
        self.check_kind(RegionKind::Stream)?;
        let wanted: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let mut left = self.available(wanted)?.min(wanted) as usize;
        let mut pos = self.head;
        let mut copied = 0;
        for buf in bufs.iter_mut() {
            if left == 0 {
                break;
            }
            let n = buf.len().min(left);
            self.ring.copy_out(pos, &mut buf[..n]);
            pos = pos.wrapping_add(n as u64);
            left -= n;
            copied += n;
        }
        Ok(copied)
    }

    /// Stream rings: discards up to `len` bytes (`recv(MSG_TRUNC)` on a stream socket).
    pub fn skip(&mut self, len: usize) -> Result<usize, RingError> {
        self.check_kind(RegionKind::Stream)?;
        let n = self.available(len as u64)?.min(len as u64);
        if n > 0 {
            self.release(n);
        }
        Ok(n as usize)
    }

    /// Stream rings: the readable bytes as (up to) two slices, consumed with
    /// [`ReadGrant::consume`]. Zero copy: e.g. the daemon hands them to its session.
    pub fn read_grant(&mut self) -> Result<ReadGrant<'_>, RingError> {
        self.check_kind(RegionKind::Stream)?;
        let len = self.available(u64::MAX)? as usize;
        Ok(ReadGrant {
            pos: self.head,
            len,
            consumer: self,
            _slices: PhantomData,
        })
    }

    /// Stops consuming at the current head; the producer takes over the rest.
    pub(crate) fn seal(&mut self) -> Result<(), RingError> {
        self.check()?;
        self.sealed = true;
        // The head was stored (Release) with the last consumption; Release here publishes it
        // before the state.
        self.ring
            .header()
            .consumer
            .state
            .store(END_SEALED, Ordering::Release);
        Ok(())
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.fault.is_some()
    }

    pub(crate) fn poison(&mut self, why: &'static str) {
        self.fault = Some(why);
    }
}

/// Readable bytes of a consumer, in place; see [`Consumer::read_grant`].
pub struct ReadGrant<'a> {
    consumer: &'a mut Consumer,
    pos: u64,
    len: usize,
    _slices: PhantomData<&'a [u8]>,
}

impl ReadGrant<'_> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        self.consumer.ring.slices(self.pos, self.len)
    }

    /// Consumes the first `len` bytes of the grant.
    pub fn consume(self, len: usize) -> Result<(), RingError> {
        if len > self.len {
            return Err(RingError::InvalidLength { len, max: self.len });
        }
        self.consumer.release(len as u64);
        Ok(())
    }
}

/// What a consumer left in a ring when it detached, read back by the ring's producer (the
/// daemon moves it into the socketpair). Private indices only: nothing here touches the
/// shared header any more.
pub struct Remainder {
    pub(crate) ring: RingRef,
    pub(crate) pos: u64,
    pub(crate) end: u64,
}

impl std::fmt::Debug for Remainder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remainder")
            .field("pos", &self.pos)
            .field("end", &self.end)
            .finish()
    }
}

impl Remainder {
    pub fn len(&self) -> usize {
        self.end.wrapping_sub(self.pos) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    pub fn kind(&self) -> RegionKind {
        self.ring.kind()
    }

    /// The remaining bytes (for a datagram ring: the raw records) as two slices.
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        self.ring.slices(self.pos, self.len())
    }

    /// Drops the first `len` remaining bytes (clamped to what remains); returns how many.
    pub fn consume(&mut self, len: usize) -> usize {
        let n = len.min(self.len());
        self.pos = self.pos.wrapping_add(n as u64);
        n
    }

    /// Copies and drops up to `buf.len()` bytes.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.len());
        self.ring.copy_out(self.pos, &mut buf[..n]);
        self.consume(n)
    }
}
