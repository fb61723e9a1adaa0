//! The single-producer single-consumer byte ring over shared memory, and its stream
//! operations. Each side keeps the index it owns privately and only ever *stores* it to the
//! shared header; the peer's index is loaded, validated against what this side already knows
//! (monotonic, never more than one capacity apart) and rejected as [`RingError::Corrupt`]
//! otherwise. After the first rejection a view stays poisoned: the session must be reset.

use std::io::{IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::layout::{RegionKind, RingHeader, END_CLOSED, END_OPEN, END_SEALED};
use super::region::{Direction, Memory};
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

/// A ring's memory as one side sees it: the header and the data area, with a private copy of
/// the capacity.
pub(crate) struct RingRef {
    memory: Arc<Memory>,
    direction: Direction,
    data: NonNull<u8>,
    capacity: u64,
}

// SAFETY: see `Memory`; a RingRef is only a window onto it.
unsafe impl Send for RingRef {}

impl RingRef {
    pub(crate) fn new(memory: Arc<Memory>, direction: Direction) -> Self {
        let (data, capacity) = memory.ring_data(direction);
        RingRef {
            memory,
            direction,
            data,
            capacity: capacity as u64,
        }
    }

    pub(crate) fn header(&self) -> &RingHeader {
        self.memory.ring_header(self.direction)
    }

    pub(crate) fn kind(&self) -> RegionKind {
        self.memory.geometry.kind
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    fn offset(&self, pos: u64) -> usize {
        (pos & (self.capacity - 1)) as usize
    }

    /// The (up to) two contiguous pieces of `len` bytes starting at `pos`. `len` is clamped to
    /// the capacity, so the pieces are always inside the data area.
    pub(crate) fn pieces(&self, pos: u64, len: usize) -> [(NonNull<u8>, usize); 2] {
        let cap = self.capacity as usize;
        let len = len.min(cap);
        let off = self.offset(pos);
        let first = len.min(cap - off);
        // SAFETY: off < cap, so data + off is inside the data area.
        let start = unsafe { NonNull::new_unchecked(self.data.as_ptr().add(off)) };
        [(start, first), (self.data, len - first)]
    }

    /// Copies `src` into the ring at `pos` (wrapping). `src.len()` must not exceed the capacity.
    pub(crate) fn copy_in(&self, pos: u64, src: &[u8]) {
        let mut done = 0;
        for (ptr, len) in self.pieces(pos, src.len()) {
            // SAFETY: the piece lies inside the data area; `src[done..done + len]` is in bounds
            // because the pieces add up to at most `src.len()`.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(done), ptr.as_ptr(), len) };
            done += len;
        }
    }

    /// Copies ring bytes at `pos` (wrapping) into `dst`.
    pub(crate) fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let mut done = 0;
        for (ptr, len) in self.pieces(pos, dst.len()) {
            // SAFETY: as in `copy_in`, with the roles swapped.
            unsafe { std::ptr::copy_nonoverlapping(ptr.as_ptr(), dst.as_mut_ptr().add(done), len) };
            done += len;
        }
    }

    /// The ring bytes at `pos` as two slices, valid for `'a`.
    ///
    /// A correct peer never writes bytes the caller owns; a hostile one can, and then the
    /// caller sees garbage bytes (u8 has no invalid values), never memory outside the ring.
    pub(crate) fn slices<'a>(&self, pos: u64, len: usize) -> (&'a [u8], &'a [u8]) {
        let [(a, a_len), (b, b_len)] = self.pieces(pos, len);
        // SAFETY: both pieces lie inside the mapping, which outlives 'a because the view that
        // hands out the slices holds the Arc<Memory> and is borrowed for 'a.
        unsafe {
            (
                std::slice::from_raw_parts(a.as_ptr(), a_len),
                std::slice::from_raw_parts(b.as_ptr(), b_len),
            )
        }
    }

    /// Like `slices`, mutable: the free space a producer fills before committing.
    pub(crate) fn slices_mut<'a>(&self, pos: u64, len: usize) -> (&'a mut [u8], &'a mut [u8]) {
        let [(a, a_len), (b, b_len)] = self.pieces(pos, len);
        // SAFETY: as in `slices`; the two pieces are disjoint (they only meet when one is
        // empty), and the producer hands them out under `&mut self`.
        unsafe {
            (
                std::slice::from_raw_parts_mut(a.as_ptr(), a_len),
                std::slice::from_raw_parts_mut(b.as_ptr(), b_len),
            )
        }
    }
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
            .field("direction", &self.ring.direction)
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
        if tail.wrapping_sub(head) > ring.capacity {
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
        let cached = self.ring.capacity - self.tail.wrapping_sub(self.head_seen);
        if cached >= wanted {
            return Ok(cached);
        }
        let head = self.ring.header().consumer.head.load(Ordering::Acquire);
        // Valid heads lie in [head_seen, tail]: never backwards, never past what we published.
        if head.wrapping_sub(self.head_seen) > self.tail.wrapping_sub(self.head_seen) {
            return Err(self.fail("consumer index out of range"));
        }
        self.head_seen = head;
        Ok(self.ring.capacity - self.tail.wrapping_sub(head))
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
        self.ring.capacity as usize
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
        Ok((self.ring.capacity - free) as usize)
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
            .field("direction", &self.ring.direction)
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
        if tail.wrapping_sub(head) > ring.capacity {
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
            .wrapping_add(self.ring.capacity)
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
        self.ring.capacity as usize
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
