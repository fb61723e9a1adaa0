//! A ring's memory as one side sees it: where its header and data area are, and copies in
//! and out that wrap at the end. Every length is clamped to the capacity, so no caller, however
//! wrong its indices, can reach outside the data area.

use std::ptr::NonNull;
use std::sync::Arc;

use super::layout::{RegionKind, RingHeader};
use super::region::{Direction, Memory};

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

    pub(crate) fn direction(&self) -> Direction {
        self.direction
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
