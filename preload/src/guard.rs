//! Re-entrancy, locking and errno discipline for code that runs inside an application.
//!
//! - A hook entered from inside the shim (std closing an `OwnedFd`, `fdpass` calling
//!   `sendmsg`) must go straight to libc: [`Entered`] is a per-thread flag in const-initialised
//!   TLS (no destructor is registered, so it works during thread and process exit).
//! - Shim locks are pthread mutexes so the fork handlers can take them in `prepare` and release
//!   them in both parent and child. While one is held, signals are blocked and cancellation is
//!   disabled: a signal handler that longjmps (iperf3 does on SIGINT) or calls a hooked function,
//!   or an asynchronous `pthread_cancel` (iperf3 ≥ 3.16), can then never leave a lock held.
//!   Nothing blocking on the application's behalf happens under a lock.

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};

extern "C" {
    // glibc has it; the libc crate does not declare it.
    fn pthread_setcancelstate(state: libc::c_int, old: *mut libc::c_int) -> libc::c_int;
}
const PTHREAD_CANCEL_DISABLE: libc::c_int = 1;

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Proof that this thread is inside the shim; dropping it leaves.
pub struct Entered {
    was: bool,
}

impl Entered {
    /// Enters the shim, or `None` when this thread already is inside (the caller must then go
    /// straight to libc).
    pub fn enter() -> Option<Entered> {
        INSIDE.with(|c| {
            if c.get() {
                None
            } else {
                c.set(true);
                Some(Entered { was: false })
            }
        })
    }

    /// Marks this thread as inside the shim whatever it was (constructor, fork handlers).
    pub fn hold() -> Entered {
        INSIDE.with(|c| Entered {
            was: c.replace(true),
        })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        INSIDE.with(|c| c.set(self.was));
    }
}

pub fn errno() -> i32 {
    // SAFETY: __errno_location always returns this thread's errno.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e }
}

/// `-1` with `errno = e`: the failure return of most socket calls.
pub fn fail(e: i32) -> libc::c_int {
    set_errno(e);
    -1
}

/// What a hook returns, and whether that is a failure (errno then carries the reason).
pub trait HookResult: Copy {
    fn failed(self) -> bool;
}

impl HookResult for libc::c_int {
    fn failed(self) -> bool {
        self < 0
    }
}

impl HookResult for libc::ssize_t {
    fn failed(self) -> bool {
        self < 0
    }
}

impl HookResult for *mut libc::FILE {
    fn failed(self) -> bool {
        self.is_null()
    }
}

/// Restores errno when dropped: hooks must not change it on success.
pub struct KeepErrno(i32);

impl KeepErrno {
    #[allow(clippy::new_without_default)] // taking errno is an action, not a default
    pub fn new() -> KeepErrno {
        KeepErrno(errno())
    }
}

impl Drop for KeepErrno {
    fn drop(&mut self) {
        set_errno(self.0);
    }
}

/// A process-shared-nothing mutex over `T`, fork-aware (see the module docs).
pub struct ShimLock<T> {
    mutex: UnsafeCell<libc::pthread_mutex_t>,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by the mutex.
unsafe impl<T: Send> Sync for ShimLock<T> {}

pub struct LockGuard<'a, T> {
    lock: &'a ShimLock<T>,
    _quiet: Quiet,
}

thread_local! {
    /// How many `Quiet`s this thread holds, and what the outermost one saved. A depth count
    /// (not a stack of saved masks) makes the order guards drop in irrelevant.
    static QUIET_DEPTH: Cell<u32> = const { Cell::new(0) };
    // SAFETY: sigset_t is plain data; all-zero is the empty set.
    static QUIET_MASK: Cell<libc::sigset_t> = const { Cell::new(unsafe { std::mem::zeroed() }) };
    static QUIET_CANCEL: Cell<libc::c_int> = const { Cell::new(0) };
}

/// This thread holds a shim lock (signals are blocked by it).
pub fn quiet() -> bool {
    QUIET_DEPTH.with(|d| d.get()) > 0
}

/// The program's own signal mask: what is in force outside every shim lock.
pub fn program_sigmask() -> libc::sigset_t {
    if QUIET_DEPTH.with(|d| d.get()) > 0 {
        return QUIET_MASK.with(|m| m.get());
    }
    // SAFETY: querying the current mask into a local.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
        cur
    }
}

/// Cancellation disabled for as long as it lives (no system call): for short sections that
/// hold a lock across cancellable calls, where blocking signals as well ([`Quiet`]) would cost
/// two system calls per section. A signal handler may run inside such a section; what it may
/// do there is the section's owner's business (see `rings::io`).
pub struct NoCancel(libc::c_int);

impl NoCancel {
    #[allow(clippy::new_without_default)] // disabling cancellation is an action, not a default
    pub fn new() -> NoCancel {
        let mut old = 0;
        // SAFETY: plain libc call on a local.
        unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut old) };
        NoCancel(old)
    }
}

impl Drop for NoCancel {
    fn drop(&mut self) {
        let mut ignored = 0;
        // SAFETY: restoring the state saved by `new`.
        unsafe { pthread_setcancelstate(self.0, &mut ignored) };
    }
}

/// Signals blocked and cancellation disabled for as long as any one lives on this thread.
pub struct Quiet;

impl Quiet {
    #[allow(clippy::new_without_default)] // blocking signals is an action, not a default
    pub fn new() -> Quiet {
        if QUIET_DEPTH.with(|d| d.replace(d.get() + 1)) == 0 {
            // SAFETY: plain libc calls on locals.
            unsafe {
                let mut all: libc::sigset_t = std::mem::zeroed();
                let mut mask: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut mask);
                let mut cancel = 0;
                pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut cancel);
                QUIET_MASK.with(|m| m.set(mask));
                QUIET_CANCEL.with(|c| c.set(cancel));
            }
        }
        Quiet
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        if QUIET_DEPTH.with(|d| d.replace(d.get().saturating_sub(1))) == 1 {
            // SAFETY: restoring what the outermost Quiet saved.
            unsafe {
                let mut ignored = 0;
                pthread_setcancelstate(QUIET_CANCEL.with(|c| c.get()), &mut ignored);
                let mask = QUIET_MASK.with(|m| m.get());
                libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
            }
        }
    }
}

impl<T> ShimLock<T> {
    pub const fn new(data: T) -> ShimLock<T> {
        ShimLock {
            mutex: UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER),
            data: UnsafeCell::new(data),
        }
    }

    pub fn lock(&self) -> LockGuard<'_, T> {
        let quiet = Quiet::new();
        // SAFETY: the mutex is initialised statically and never moved (it lives in a static).
        unsafe { libc::pthread_mutex_lock(self.mutex.get()) };
        LockGuard {
            lock: self,
            _quiet: quiet,
        }
    }

    /// Fork `prepare`: take the mutex without a guard (signals are already quiet).
    ///
    /// # Safety
    /// Must be paired with [`ShimLock::release_after_fork`] in parent and child.
    pub unsafe fn acquire_for_fork(&self) {
        libc::pthread_mutex_lock(self.mutex.get());
    }

    /// The data, while [`ShimLock::acquire_for_fork`] holds the mutex.
    ///
    /// # Safety
    /// Only between `acquire_for_fork` and `release_after_fork`, on the forking thread.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn data_while_held_for_fork(&self) -> &mut T {
        &mut *self.data.get()
    }

    /// Fork `parent`/`child`: release what `acquire_for_fork` took.
    ///
    /// # Safety
    /// Only after [`ShimLock::acquire_for_fork`] on this thread.
    pub unsafe fn release_after_fork(&self) {
        libc::pthread_mutex_unlock(self.mutex.get());
    }
}

impl<T> Deref for LockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the mutex is held.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for LockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the mutex is held.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for LockGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard holds the mutex.
        // (`_quiet` drops after this: signals come back only once the mutex is free.)
        unsafe { libc::pthread_mutex_unlock(self.lock.mutex.get()) };
    }
}

/// Signals quiet across the fork handlers (`prepare` → `parent`/`child`).
pub struct ForkQuiet {
    mask: UnsafeCell<libc::sigset_t>,
}

// SAFETY: only touched between prepare and parent/child, under both shim locks.
unsafe impl Sync for ForkQuiet {}

impl Default for ForkQuiet {
    fn default() -> Self {
        Self::new()
    }
}

impl ForkQuiet {
    pub const fn new() -> ForkQuiet {
        // SAFETY: sigset_t is plain data; all-zero is the empty set.
        ForkQuiet {
            mask: UnsafeCell::new(unsafe { std::mem::zeroed() }),
        }
    }

    /// # Safety
    /// Fork `prepare` only.
    pub unsafe fn block(&self) {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, self.mask.get());
    }

    /// # Safety
    /// Fork `parent`/`child` only, after [`ForkQuiet::block`].
    pub unsafe fn restore(&self) {
        libc::pthread_sigmask(libc::SIG_SETMASK, self.mask.get(), std::ptr::null_mut());
    }
}
