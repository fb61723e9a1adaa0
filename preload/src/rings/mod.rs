//! Ring mode: an overlay stream's bytes move through a shared-memory region mapped from the
//! daemon (`weft_ipc::ring`; its module docs are the protocol) instead of crossing the kernel
//! twice through the socketpair. The socketpair stays the program's fd and its only readiness
//! source: the daemon rings a doorbell byte into it when RX turns non-empty while we sleep, and
//! we fill it with credit filler when TX is full, so poll/select/epoll (level and edge) see the
//! session's readiness without being hooked.
//!
//! Every read/write-family entry point on a ring fd comes here ([`io`]). What the shim cannot
//! follow revokes ring mode first ([`detach`]): fork, dup, `SCM_RIGHTS`, exec, `fdopen`,
//! `splice`, `sendmmsg`/`recvmmsg`, `shutdown(SHUT_RD)`. The unconsumed bytes then travel on
//! the socketpair, in order, with nothing lost or doubled.
//!
//! Discipline: ring state lives in a per-fd slot ([`slot`]) behind a futex lock, taken only
//! while signals are held off and cancellation is disabled (`guard::Quiet`), so a signal
//! handler can neither find the ring half-updated nor longjmp out of a locked section. Waits
//! (an empty RX, a full TX) happen outside the lock, in a real `recv`/`send` on the socket
//! with the program's own signal mask, so `EINTR`, `SA_RESTART`, `SO_RCVTIMEO`/`SO_SNDTIMEO`
//! and cancellation are the kernel's. Ring mode is never used for descriptors 0–2 (stdio reads
//! and writes them through glibc internals the shim cannot see). `WEFT_RINGS=0` turns it off.

pub mod io;
mod signals;
mod slot;

use crate::fdtable::{self, PRIVATE, RING, RING_WAKE};
use crate::guard::{Entered, Quiet};
use crate::log::debug;
use crate::real;
use libc::c_int;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use weft_ipc::ring::{AppEnd, RegionStatus, SharedRegion};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// `SO_SNDBUF` of a ring socket: the kernel's minimum, so a little credit filler makes the fd
/// unwritable.
pub const APP_SNDBUF: c_int = 1;

/// Reads `WEFT_RINGS` (constructor): `0`, `off`, `false` or `no` turn ring mode off.
pub fn init() {
    // SAFETY: getenv during the constructor, before the program's threads exist.
    let val = unsafe { libc::getenv(c"WEFT_RINGS".as_ptr()) };
    if val.is_null() {
        return;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    let val = unsafe { std::ffi::CStr::from_ptr(val) }.to_bytes();
    let off = [&b"0"[..], b"off", b"false", b"no"]
        .iter()
        .any(|v| val.eq_ignore_ascii_case(v));
    ENABLED.store(!off, Ordering::Relaxed);
}

/// Whether a new session on `fd` should ask for ring mode.
pub fn wanted_for(fd: c_int) -> bool {
    ENABLED.load(Ordering::Relaxed) && fd > 2 && (fd as usize) < fdtable::FLAGS_LEN
}

/// `fd` is in ring mode (one load; the hooks' first question).
#[inline]
pub fn is_ring(fd: c_int) -> bool {
    fdtable::flags(fd) & RING != 0
}

/// What one ring-mode socket holds in this process.
pub struct RingSock {
    end: AppEnd,
    /// The region's eventfd (ours: moved to a private number); wakes the daemon.
    wake: c_int,
    /// The session is established (before that, writes wait as on a connecting socket).
    established: bool,
    /// The program shut its write side down.
    shut_wr: bool,
    /// `SO_SNDBUF`/`SO_RCVBUF` as the program set them: the socket's own send buffer must stay
    /// small in ring mode, so they are reported, and applied after a detach.
    sndbuf: Option<c_int>,
    rcvbuf: Option<c_int>,
}

impl Drop for RingSock {
    fn drop(&mut self) {
        fdtable::mark_private(self.wake, false);
        fdtable::mark_ring_wake(self.wake, false);
        // SAFETY: closing the eventfd this ring owns.
        unsafe { real::close(self.wake) };
    }
}

/// Figures for tests and debugging, per process.
pub static INSTALLED: AtomicU64 = AtomicU64::new(0);
pub static DETACHED: AtomicU64 = AtomicU64::new(0);

/// Where descriptors from `fd` upward go when the shim keeps them: away from the numbers
/// programs expect.
fn relocate_private(fd: OwnedFd) -> c_int {
    let raw = fd.as_raw_fd();
    // SAFETY: duplicating a descriptor we own.
    let high = unsafe {
        real::fcntl(
            raw,
            libc::F_DUPFD_CLOEXEC,
            fdtable::PRIVATE_FD_BASE as libc::c_ulong,
        )
    };
    if high < 0 {
        return fd.into_raw_fd();
    }
    drop(fd);
    high
}

/// Puts the session on `fd` into ring mode with the region and eventfd the daemon passed.
/// The caller holds the state lock (so a fork cannot come between this and its detach
/// sweep). `Err(errno)` when the region cannot be used.
pub fn install(
    fd: c_int,
    memfd: OwnedFd,
    wake: OwnedFd,
    established: bool,
    sndbuf: Option<c_int>,
    rcvbuf: Option<c_int>,
) -> Result<(), i32> {
    let Some(slot) = slot::of(fd).filter(|_| fd > 2) else {
        return Err(libc::EBADF);
    };
    let region = SharedRegion::map(memfd.as_fd()).map_err(|e| {
        debug!("fd {fd}: ring region refused: {e}");
        libc::EPROTO
    })?;
    let end = region.into_app_end().map_err(|_| libc::EPROTO)?;
    drop(memfd);
    let wake = relocate_private(wake);
    fdtable::mark_private(wake, true);
    fdtable::mark_ring_wake(wake, true);
    let ring = Box::new(RingSock {
        end,
        wake,
        established,
        shut_wr: false,
        sndbuf,
        rcvbuf,
    });
    let _quiet = Quiet::new();
    let mut g = slot.lock();
    g.put(ring);
    slot::note_used(fd);
    fdtable::mark_ring(fd, true);
    INSTALLED.fetch_add(1, Ordering::Relaxed);
    debug!("fd {fd}: ring mode (wake fd {wake})");
    Ok(())
}

/// The connect of a ring stream completed.
pub fn set_established(fd: c_int) {
    with_ring(fd, |r| r.established = true);
}

/// Runs `f` on `fd`'s ring, if it has one.
fn with_ring<R>(fd: c_int, f: impl FnOnce(&mut RingSock) -> R) -> Option<R> {
    if !is_ring(fd) {
        return None;
    }
    let slot = slot::of(fd)?;
    let _quiet = Quiet::new();
    let mut g = slot.lock();
    g.ring().map(f)
}

/// `fd` is being closed (or replaced by `dup2`): its ring goes without a detach; the daemon
/// sees the socket's hang-up and takes what TX holds.
pub fn forget(fd: c_int) {
    if !is_ring(fd) {
        return;
    }
    let Some(slot) = slot::of(fd) else { return };
    let _quiet = Quiet::new();
    let mut g = slot.lock();
    fdtable::mark_ring(fd, false);
    let ring = g.take();
    drop(g);
    drop(ring);
}

/// What the program set with `setsockopt(SO_SNDBUF/SO_RCVBUF)` on a ring fd: remembered,
/// not applied (the socket's own buffer must stay small). `None`: not a ring fd.
pub fn set_buffer(fd: c_int, name: c_int, value: c_int) -> Option<()> {
    with_ring(fd, |r| {
        if name == libc::SO_SNDBUF {
            r.sndbuf = Some(value);
        } else {
            r.rcvbuf = Some(value);
        }
    })
}

/// `getsockopt(SO_SNDBUF)` on a ring fd: what the kernel would report for the program's
/// setting (doubled), or the system default.
pub fn reported_sndbuf(fd: c_int) -> Option<c_int> {
    with_ring(fd, |r| r.sndbuf)
        .map(|set| set.map_or_else(default_sndbuf, |v| v.saturating_mul(2).max(4608)))
}

/// The `SO_SNDBUF` request that gives a socket the system's default buffer (the kernel
/// doubles what it is asked for).
pub fn default_sndbuf_request() -> c_int {
    default_sndbuf() / 2
}

/// `net.core.wmem_default`: what a socket's send buffer is before anyone sets it.
fn default_sndbuf() -> c_int {
    static CACHED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    let v = CACHED.load(Ordering::Relaxed);
    if v > 0 {
        return v;
    }
    let read = std::fs::read_to_string("/proc/sys/net/core/wmem_default")
        .ok()
        .and_then(|s| s.trim().parse::<c_int>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(212_992);
    CACHED.store(read, Ordering::Relaxed);
    read
}

/// How long a detach waits for the daemon's answer.
const DETACH_TIMEOUT_MS: u64 = 30_000;

/// Revokes ring mode on `fd` (the program is about to do something the shim cannot follow).
/// Blocks until the daemon has taken over; afterwards `fd` is a plain socketpair end whose
/// bytes continue exactly where the rings left off.
pub fn detach(fd: c_int) {
    if !is_ring(fd) {
        return;
    }
    let Some(slot) = slot::of(fd) else { return };
    let _inside = Entered::hold();
    let _quiet = Quiet::new();
    let mut g = slot.lock();
    let Some(ring) = g.take() else { return };
    finish_detach(fd, ring);
    // Cleared only now: a thread that read the flag waits for the lock, then finds no ring
    // and uses the socket plainly, after the hand-over.
    fdtable::mark_ring(fd, false);
    drop(g);
}

/// Detaches every ring fd (fork: parent and child would share them). `only_inherited`: just
/// those that survive an exec (no `FD_CLOEXEC`).
pub fn detach_all(only_inherited: bool) {
    for fd in 0..=slot::highest() {
        if !is_ring(fd) {
            continue;
        }
        if only_inherited {
            // SAFETY: F_GETFD on a descriptor number; a closed one answers EBADF.
            let flags = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
            if flags < 0 || flags & libc::FD_CLOEXEC != 0 {
                continue;
            }
        }
        detach(fd);
    }
}

/// Fork child: nothing of the parent's rings is ours (they were detached before the fork; a
/// ring installed in the instant between is the parent's alone).
///
/// # Safety
/// Only from the atfork child handler.
pub unsafe fn after_fork_child() {
    for fd in 0..=slot::highest() {
        if is_ring(fd) {
            fdtable::mark_ring(fd, false);
        }
    }
    slot::reset_after_fork();
}

/// The sealing half of a detach and the wait for the daemon, with the slot lock held and
/// signals quiet. Whatever goes wrong, `fd` ends up a plain socket.
fn finish_detach(fd: c_int, mut ring: Box<RingSock>) {
    let clean = ring.end.request_detach().is_ok();
    signals::wake_daemon(ring.wake);
    if clean {
        await_detach(fd, &mut ring);
    } else {
        // A poisoned ring cannot be sealed: the daemon resets the session when it notices.
        debug!("fd {fd}: ring corrupted; detaching without a hand-over");
    }
    restore_buffers(fd, &ring);
    DETACHED.fetch_add(1, Ordering::Relaxed);
    debug!("fd {fd}: ring detached");
    drop(ring);
}

/// Waits for the daemon's `DETACHED`, then drops exactly the doorbells that precede the data.
fn await_detach(fd: c_int, ring: &mut RingSock) {
    // Signals are held meanwhile: a daemon that never answers must not leave the program
    // unkillable. Past this, the fd continues as a plain socket without the hand-over.
    let deadline = crate::sys::monotonic_ms() + DETACH_TIMEOUT_MS;
    loop {
        if crate::sys::monotonic_ms() > deadline {
            debug!("fd {fd}: the daemon did not take over in time; plain socket from here");
            return;
        }
        match ring.end.detach_outcome() {
            Ok(Some(d)) => {
                signals::discard_exactly(fd, d.discard_doorbells);
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
        if let Ok(RegionStatus::Reset { .. }) = ring.end.status() {
            // The session failed meanwhile: only doorbells are in the socket; drop them.
            signals::drain_owed_doorbells(fd, &mut ring.end);
            return;
        }
        // Doorbells counted so far are all in the socket and precede everything else: drop
        // them so the next readable event is the daemon's answer.
        signals::drain_owed_doorbells(fd, &mut ring.end);
        match crate::sys::poll_one(fd, libc::POLLIN, 100) {
            Ok(ev) if ev & (libc::POLLHUP | libc::POLLERR) != 0 && ev & libc::POLLIN == 0 => {
                return; // the daemon is gone
            }
            // A doorbell not counted yet keeps the fd readable: let the daemon run.
            Ok(ev) if ev & libc::POLLIN != 0 => {
                // SAFETY: plain syscall.
                unsafe { libc::usleep(200) };
            }
            _ => {}
        }
    }
}

/// After a detach the socket carries the data itself: give it the send buffer the program
/// asked for (or the system default) instead of the ring mode's minimum.
fn restore_buffers(fd: c_int, ring: &RingSock) {
    let size = ring.sndbuf.unwrap_or_else(default_sndbuf_request);
    crate::sys::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size);
    if let Some(r) = ring.rcvbuf {
        crate::sys::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, r);
    }
}

/// The region was reset (the session failed) or the daemon vanished: drop the doorbells and
/// continue as a plain socket, which then reports end of file and `EPIPE` as plain mode does.
fn abandon(fd: c_int, mut ring: Box<RingSock>) {
    signals::drain_owed_doorbells(fd, &mut ring.end);
    fdtable::mark_ring(fd, false);
    debug!("fd {fd}: ring session reset; plain socket from here");
    drop(ring);
}

/// `fd` is one of our ring eventfds (for the close/dup protection of private fds).
pub fn owns_wake(fd: c_int) -> bool {
    fdtable::flags(fd) & RING_WAKE != 0 && fdtable::flags(fd) & PRIVATE != 0
}

/// The program is about to `dup2` onto one of our eventfds: move it.
pub fn relocate_wake(fd: c_int) {
    for ring_fd in 0..=slot::highest() {
        let moved = with_ring(ring_fd, |r| {
            if r.wake != fd {
                return false;
            }
            // SAFETY: duplicating our own descriptor; the program's dup2 closes the old one.
            let new = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, (fd + 1) as libc::c_ulong) };
            if new >= 0 {
                fdtable::mark_private(fd, false);
                fdtable::mark_ring_wake(fd, false);
                fdtable::mark_private(new, true);
                fdtable::mark_ring_wake(new, true);
                r.wake = new;
            }
            true
        });
        if moved == Some(true) {
            return;
        }
    }
}
