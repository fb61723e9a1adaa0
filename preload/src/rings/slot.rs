//! One lock and one ring state per descriptor number, in static memory: a hook finds its
//! socket's ring by indexing, with no table lock and nothing that could be freed under it.
//! The lock is a three-state futex mutex (uncontended: one compare-and-swap each way); it is
//! taken only with signals held off (see `rings` module docs), so no handler can run, or
//! longjmp out, while it is held.

use super::RingSock;
use crate::fdtable::FLAGS_LEN;
use libc::c_int;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

pub struct Slot {
    lock: AtomicU32,
    ring: UnsafeCell<Option<Box<RingSock>>>,
}

// SAFETY: `ring` is only touched through a `SlotGuard`, which holds `lock`.
unsafe impl Sync for Slot {}

impl Slot {
    const fn new() -> Slot {
        Slot {
            lock: AtomicU32::new(UNLOCKED),
            ring: UnsafeCell::new(None),
        }
    }

    fn futex(&self, op: c_int, val: u32) {
        // SAFETY: FUTEX_WAIT/WAKE on a live, aligned u32 of ours; no timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.lock.as_ptr(),
                op | libc::FUTEX_PRIVATE_FLAG,
                val,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }

    pub fn lock(&self) -> SlotGuard<'_> {
        if self
            .lock
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.lock.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
                self.futex(libc::FUTEX_WAIT, CONTENDED);
            }
        }
        SlotGuard { slot: self }
    }
}

pub struct SlotGuard<'a> {
    slot: &'a Slot,
}

impl SlotGuard<'_> {
    pub fn ring(&mut self) -> Option<&mut RingSock> {
        // SAFETY: the lock is held.
        unsafe { (*self.slot.ring.get()).as_deref_mut() }
    }

    pub fn take(&mut self) -> Option<Box<RingSock>> {
        // SAFETY: the lock is held.
        unsafe { (*self.slot.ring.get()).take() }
    }

    pub fn put(&mut self, ring: Box<RingSock>) -> Option<Box<RingSock>> {
        // SAFETY: the lock is held.
        unsafe { (*self.slot.ring.get()).replace(ring) }
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.slot.lock.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            self.slot.futex(libc::FUTEX_WAKE, 1);
        }
    }
}

static SLOTS: [Slot; FLAGS_LEN] = [const { Slot::new() }; FLAGS_LEN];
/// Highest descriptor that ever held a ring: scans (fork, exec) stop there.
static HIGHEST: AtomicI32 = AtomicI32::new(-1);

/// The slot of `fd`, if it can hold a ring at all.
pub fn of(fd: c_int) -> Option<&'static Slot> {
    usize::try_from(fd).ok().and_then(|i| SLOTS.get(i))
}

pub fn note_used(fd: c_int) {
    HIGHEST.fetch_max(fd, Ordering::AcqRel);
}

pub fn highest() -> c_int {
    HIGHEST.load(Ordering::Acquire)
}

/// Fork child: a lock held by a thread of the parent has no holder here, and the rings it
/// guarded were detached before the fork (whatever state is left belongs to the parent).
///
/// # Safety
/// Only in the atfork child handler, where this is the only thread.
pub unsafe fn reset_after_fork() {
    for fd in 0..=highest() {
        if let Some(slot) = of(fd) {
            slot.lock.store(UNLOCKED, Ordering::Relaxed);
            if let Some(ring) = (*slot.ring.get()).take() {
                // The mapping and the eventfd copy are this process's own to drop; the
                // parent's are untouched.
                drop(ring);
            }
        }
    }
}
