//! The read/write family on a ring fd: copy between the program's buffers and the rings, wake
//! the daemon only when it sleeps, and keep the socket's readiness exact (doorbells drained
//! when RX runs dry, credit filler written when TX is full). A step runs under the slot lock
//! with signals quiet; a wait runs outside it, with the kernel's own semantics.

use super::signals::{drain, drain_owed_doorbells, drop_late_doorbells, wake_daemon, write_filler};
use super::{abandon, slot, RingSock};
use crate::guard::{errno, set_errno, Entered, NoCancel};
use crate::interrupt::{SignalsHeld, Wait};
use crate::stream::{self, ConnectState};
use crate::{real, sys};
use libc::{c_int, c_void, iovec, ssize_t};
use weft_ipc::ring::{RegionStatus, RxWaitDecision, WaitDecision, Wakeup};

/// How a ring call ends.
pub enum Outcome {
    /// Bytes moved (0: end of stream).
    Count(usize),
    /// Fails with this errno.
    Fail(i32),
    /// Not (or no longer) a ring fd: do the real call, after `done` bytes already moved.
    Plain { done: usize },
}

impl Outcome {
    /// The C return value, with errno as the kernel would leave it: unchanged on success.
    pub fn ret(self, entry_errno: i32) -> Option<ssize_t> {
        match self {
            Outcome::Count(n) => {
                set_errno(entry_errno);
                Some(n as ssize_t)
            }
            Outcome::Fail(e) => {
                set_errno(e);
                Some(-1)
            }
            Outcome::Plain { .. } => None,
        }
    }
}

/// Total length of an iovec array.
pub fn iov_len(iov: &[iovec]) -> usize {
    iov.iter().fold(0usize, |a, v| a.saturating_add(v.iov_len))
}

/// The program's buffers at byte offset `skip`, as (pointer, length) pieces.
fn pieces(iov: &[iovec], mut skip: usize) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
    iov.iter().filter_map(move |v| {
        if v.iov_len <= skip {
            skip -= v.iov_len;
            return None;
        }
        let piece = (
            // SAFETY (of later use): the program vouches for its buffers, as with read(2).
            (v.iov_base as *mut u8).wrapping_add(skip),
            v.iov_len - skip,
        );
        skip = 0;
        Some(piece)
    })
}

/// Copies `src` into the program's buffers from offset `skip`; returns the bytes copied.
unsafe fn scatter(iov: &[iovec], skip: usize, mut src: &[u8]) -> usize {
    let mut copied = 0;
    for (ptr, len) in pieces(iov, skip) {
        if src.is_empty() {
            break;
        }
        let n = len.min(src.len());
        std::ptr::copy_nonoverlapping(src.as_ptr(), ptr, n);
        src = &src[n..];
        copied += n;
    }
    copied
}

/// Copies from the program's buffers (from offset `skip`) into `dst`; returns the count.
unsafe fn gather(iov: &[iovec], skip: usize, dst: &mut [u8]) -> usize {
    let mut copied = 0;
    for (ptr, len) in pieces(iov, skip) {
        if copied == dst.len() {
            break;
        }
        let n = len.min(dst.len() - copied);
        std::ptr::copy_nonoverlapping(ptr, dst[copied..].as_mut_ptr(), n);
        copied += n;
    }
    copied
}

/// What a locked step decided.
enum Step {
    Done(Outcome),
    /// Sleep outside the lock, then try again.
    Wait,
    /// A write before the session is established.
    NotEstablished,
}

struct Recv<'a> {
    iov: &'a [iovec],
    total: usize,
    peek: bool,
    discard: bool,
    waitall: bool,
    got: usize,
    /// The socket reported end of file while we waited.
    socket_eof: bool,
}

impl RingSock {
    /// Keeps the fd's readability exact after a read: RX ran dry, so arm and drop the
    /// doorbells that made the fd readable.
    fn rx_drained(&mut self, fd: c_int) {
        let empty = matches!(self.end.rx().readable(), Ok(0));
        if empty && matches!(self.end.rx().is_finished(), Ok(false)) {
            drain_owed_doorbells(fd, &mut self.end);
        }
    }

    unsafe fn recv_step(&mut self, fd: c_int, r: &mut Recv<'_>) -> Result<Step, i32> {
        loop {
            let copied = {
                let grant = self.end.rx().read_grant().map_err(|_| libc::EIO)?;
                let at = if r.peek { 0 } else { r.got };
                let want = r.total - at;
                let n = grant.len().min(want);
                if n > 0 && !r.discard {
                    let (a, b) = grant.as_slices();
                    let first = a.len().min(n);
                    scatter(r.iov, at, &a[..first]);
                    scatter(r.iov, at + first, &b[..n - first]);
                }
                if !r.peek && n > 0 {
                    grant.consume(n).map_err(|_| libc::EIO)?;
                }
                n
            };
            if r.peek {
                if copied > 0 && (!r.waitall || copied == r.total) {
                    return Ok(Step::Done(Outcome::Count(copied)));
                }
            } else if copied > 0 {
                r.got += copied;
                if self.end.after_rx_consume() == Wakeup::Needed {
                    wake_daemon(self.wake);
                }
                if !r.waitall || r.got == r.total {
                    self.rx_drained(fd);
                    return Ok(Step::Done(Outcome::Count(r.got)));
                }
            }
            if self.end.rx().is_finished().map_err(|_| libc::EIO)? {
                let n = if r.peek { copied } else { r.got };
                return Ok(Step::Done(Outcome::Count(n)));
            }
            match self.end.status() {
                Ok(RegionStatus::Open) => {}
                _ => return Err(libc::ECONNRESET),
            }
            if r.socket_eof {
                // Our end of file with the region open: the daemon is gone.
                return Err(libc::ECONNRESET);
            }
            match self.end.prepare_rx_sleep() {
                Ok(RxWaitDecision::Retry) => continue,
                Ok(RxWaitDecision::Sleep { drain_doorbells }) => {
                    let n = drain(fd, drain_doorbells);
                    self.end.doorbells_drained(n).map_err(|_| libc::EIO)?;
                    drop_late_doorbells(fd, &mut self.end);
                    return Ok(Step::Wait);
                }
                Err(_) => return Err(libc::ECONNRESET),
            }
        }
    }

    /// Copies from the program's buffers into TX from offset `*sent`; false when TX is full.
    unsafe fn send_some(&mut self, iov: &[iovec], total: usize, sent: &mut usize) -> bool {
        let Ok(mut grant) = self.end.tx().write_grant() else {
            return false;
        };
        let want = total - *sent;
        let n = grant.len().min(want);
        if n == 0 {
            return false;
        }
        let (a, b) = grant.as_mut_slices();
        let first = a.len().min(n);
        gather(iov, *sent, &mut a[..first]);
        gather(iov, *sent + first, &mut b[..n - first]);
        if grant.commit(n).is_err() {
            return false;
        }
        *sent += n;
        if self.end.after_tx_publish() == Wakeup::Needed {
            wake_daemon(self.wake);
        }
        true
    }

    unsafe fn send_step(
        &mut self,
        fd: c_int,
        iov: &[iovec],
        total: usize,
        sent: &mut usize,
    ) -> Result<Step, i32> {
        if self.shut_wr {
            return Ok(Step::Done(Outcome::Plain { done: *sent }));
        }
        match self.end.status() {
            Ok(RegionStatus::Open) => {}
            _ => return Err(libc::ECONNRESET),
        }
        if !self.established {
            return Ok(Step::NotEstablished);
        }
        loop {
            while *sent < total && self.send_some(iov, total, sent) {}
            if *sent == total {
                return Ok(Step::Done(Outcome::Count(*sent)));
            }
            // TX is full: make the fd unwritable until the daemon has made room.
            self.end.prepare_tx_block(1);
            let filler = write_filler(fd);
            match self.end.filler_written(filler, 1) {
                Ok(WaitDecision::Retry) => continue,
                Ok(WaitDecision::Sleep) => return Ok(Step::Wait),
                Err(_) => return Err(libc::ECONNRESET),
            }
        }
    }
}

/// Runs `step` on `fd`'s ring under its lock with signals quiet. A ring that turns out reset
/// (or whose daemon vanished) is abandoned: the fd continues as a plain socket.
///
/// Signals are not blocked (that would cost two system calls per call, most of a small
/// write's cost): a handler that interrupts a step and uses a ring fd itself gets the ring
/// like any caller, except on the very fd whose step it interrupted, where it fails with
/// `EAGAIN` instead of deadlocking on the lock its own thread holds. Cancellation is off, so
/// a cancellation point inside a step cannot leave the lock held.
fn locked<R>(
    fd: c_int,
    step: impl FnOnce(&mut RingSock) -> Result<R, i32>,
) -> Option<Result<R, i32>> {
    let slot = slot::of(fd)?;
    if HELD.with(|h| h.get()) == fd {
        return Some(Err(libc::EAGAIN));
    }
    let _inside = Entered::hold();
    let _no_cancel = NoCancel::new();
    let held = HeldFd::new(fd);
    let mut g = slot.lock();
    let ring = g.ring()?;
    let result = step(ring);
    if let Err(libc::ECONNRESET) = result {
        if let Some(ring) = g.take() {
            abandon(fd, ring);
        }
        return None;
    }
    drop(g);
    drop(held);
    Some(result)
}

thread_local! {
    /// The ring fd whose step this thread is in (-1: none).
    static HELD: std::cell::Cell<c_int> = const { std::cell::Cell::new(-1) };
}

/// Marks this thread as inside a step on `fd` (restoring the previous mark when dropped).
struct HeldFd(c_int);

impl HeldFd {
    fn new(fd: c_int) -> HeldFd {
        HeldFd(HELD.with(|h| h.replace(fd)))
    }
}

impl Drop for HeldFd {
    fn drop(&mut self) {
        HELD.with(|h| h.set(self.0));
    }
}

/// The daemon's end is gone while the region still says open: continue as a plain socket.
fn abandon_ring(fd: c_int) {
    let _ = locked(fd, |_| Err::<(), i32>(libc::ECONNRESET));
}

fn nonblocking(fd: c_int, flags: c_int) -> bool {
    // SAFETY: F_GETFL on the program's fd.
    flags & libc::MSG_DONTWAIT != 0
        || unsafe { real::fcntl(fd, libc::F_GETFL, 0) } & libc::O_NONBLOCK != 0
}

/// Waits for the fd to turn writable as a blocking send would: `EINTR` unless the kernel would
/// restart, `EAGAIN` when `SO_SNDTIMEO` runs out.
fn wait_writable(fd: c_int) -> Result<(), i32> {
    let timeout_ms =
        match sys::sockopt_raw::<libc::timeval>(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO) {
            Some(tv) if tv.tv_sec > 0 || tv.tv_usec > 0 => {
                (tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000).min(c_int::MAX as i64) as c_int
            }
            _ => -1,
        };
    let held = SignalsHeld::new();
    match held.wait(fd, libc::POLLOUT, timeout_ms) {
        // Our peer end is gone (the daemon closed it): the caller leaves ring mode.
        Ok(Wait::Ready(ev))
            if ev & libc::POLLOUT == 0 && ev & (libc::POLLHUP | libc::POLLERR) != 0 =>
        {
            Err(libc::EPIPE)
        }
        Ok(Wait::Ready(_)) => Ok(()),
        Ok(Wait::TimedOut) => Err(libc::EAGAIN),
        Ok(Wait::Interrupted) => Err(libc::EINTR),
        Err(e) => Err(e),
    }
}

/// `recv`-family on a ring fd into `iov`.
///
/// # Safety
/// `iov` describes writable buffers of the program's, as for `readv(2)`.
pub unsafe fn recv(fd: c_int, iov: &[iovec], flags: c_int) -> Outcome {
    let peek = flags & libc::MSG_PEEK != 0;
    let mut r = Recv {
        iov,
        total: iov_len(iov),
        peek,
        discard: flags & libc::MSG_TRUNC != 0,
        waitall: flags & libc::MSG_WAITALL != 0 && flags & libc::MSG_DONTWAIT == 0,
        got: 0,
        socket_eof: false,
    };
    if flags & libc::MSG_OOB != 0 {
        return Outcome::Plain { done: 0 };
    }
    if r.total == 0 {
        return Outcome::Count(0);
    }
    loop {
        match locked(fd, |ring| ring.recv_step(fd, &mut r)) {
            None => {
                return if r.got > 0 {
                    Outcome::Count(r.got)
                } else {
                    Outcome::Plain { done: 0 }
                }
            }
            Some(Err(e)) => return Outcome::Fail(e),
            Some(Ok(Step::Done(o))) => return o,
            Some(Ok(Step::Wait)) | Some(Ok(Step::NotEstablished)) => {}
        }
        // Outside the lock, with the program's signal mask: a one-byte peek blocks exactly as
        // the program's own recv would (or returns EAGAIN on a non-blocking socket).
        let mut byte = 0u8;
        let n = real::recv(
            fd,
            &mut byte as *mut u8 as *mut c_void,
            1,
            libc::MSG_PEEK | (flags & libc::MSG_DONTWAIT),
        );
        if n == 0 {
            r.socket_eof = true;
        } else if n < 0 {
            let e = errno();
            return if r.got > 0 {
                Outcome::Count(r.got)
            } else {
                Outcome::Fail(e)
            };
        }
    }
}

/// `send`-family on a ring fd from `iov`.
///
/// # Safety
/// `iov` describes readable buffers of the program's, as for `writev(2)`.
pub unsafe fn send(fd: c_int, iov: &[iovec], flags: c_int) -> Outcome {
    if flags & libc::MSG_OOB != 0 {
        return Outcome::Plain { done: 0 };
    }
    let total = iov_len(iov);
    let mut sent = 0usize;
    loop {
        match locked(fd, |ring| ring.send_step(fd, iov, total, &mut sent)) {
            None => return Outcome::Plain { done: sent },
            Some(Err(e)) => return Outcome::Fail(e),
            Some(Ok(Step::Done(o))) => return o,
            Some(Ok(Step::Wait)) => {
                if nonblocking(fd, flags) {
                    return if sent > 0 {
                        Outcome::Count(sent)
                    } else {
                        Outcome::Fail(libc::EAGAIN)
                    };
                }
                match wait_writable(fd) {
                    Ok(()) => {}
                    Err(libc::EPIPE) => {
                        abandon_ring(fd);
                        return Outcome::Plain { done: sent };
                    }
                    Err(_) if sent > 0 => return Outcome::Count(sent),
                    Err(e) => return Outcome::Fail(e),
                }
            }
            Some(Ok(Step::NotEstablished)) => {
                match stream::settle(fd).map(|s| s.state) {
                    Some(ConnectState::Pending) => {
                        if nonblocking(fd, flags) {
                            return Outcome::Fail(libc::EAGAIN);
                        }
                        match wait_writable(fd) {
                            Ok(()) => {}
                            Err(libc::EPIPE) => {
                                abandon_ring(fd);
                                return Outcome::Plain { done: 0 };
                            }
                            Err(e) => return Outcome::Fail(e),
                        }
                    }
                    // Established, or failed: a failed session's region is reset, which the
                    // next step turns into a plain socket (EPIPE, as in plain mode).
                    _ => super::set_established(fd),
                }
            }
        }
    }
}

/// `ioctl(FIONREAD)` / `ioctl(SIOCOUTQ)` on a ring fd.
pub fn queued(fd: c_int, outgoing: bool) -> Option<c_int> {
    let n = locked(fd, |ring| {
        let n = if outgoing {
            ring.end.tx().unconsumed()
        } else {
            ring.end.rx().readable()
        };
        n.map_err(|_| libc::EIO)
    })?
    .ok()?;
    Some(n.min(c_int::MAX as usize) as c_int)
}

/// `shutdown(SHUT_WR)` on a ring fd: end of stream after what TX holds. The socket's own
/// write side is shut too, so later writes fail with `EPIPE` from the kernel.
pub fn shutdown_write(fd: c_int) {
    let _ = locked(fd, |ring| {
        if ring.end.tx().close().is_ok() && ring.end.after_tx_publish() == Wakeup::Needed {
            wake_daemon(ring.wake);
        }
        ring.shut_wr = true;
        Ok(())
    });
}

/// `sendfile(out_fd = ring fd, in_fd, offset, count)`: read from `in_fd` no more than TX can
/// take, then send it through the ring.
///
/// # Safety
/// `offset` is null or points to the program's `off_t`.
pub unsafe fn sendfile(
    out: c_int,
    input: c_int,
    offset: *mut libc::off_t,
    count: usize,
) -> Outcome {
    let mut buf = vec![0u8; count.clamp(1, 256 * 1024)];
    let mut done = 0usize;
    while done < count {
        let room = locked(out, |ring| ring.end.tx().writable().map_err(|_| libc::EIO));
        let room = match room {
            Some(Ok(r)) => r,
            Some(Err(e)) => return Outcome::Fail(e),
            None => return Outcome::Plain { done },
        };
        // A full ring: let one byte through the send path, which waits as the kernel would.
        let chunk = (count - done).min(buf.len()).min(room.max(1));
        let n = if offset.is_null() {
            real::read(input, buf.as_mut_ptr() as *mut c_void, chunk)
        } else {
            libc::pread(input, buf.as_mut_ptr() as *mut c_void, chunk, *offset)
        };
        if n < 0 {
            return if done > 0 {
                Outcome::Count(done)
            } else {
                Outcome::Fail(errno())
            };
        }
        if n == 0 {
            break;
        }
        let n = n as usize;
        let iov = [iovec {
            iov_base: buf.as_mut_ptr() as *mut c_void,
            iov_len: n,
        }];
        let (sent, stop) = match send(out, &iov, 0) {
            Outcome::Count(s) => (s, s < n),
            Outcome::Fail(e) if done == 0 && e != libc::EAGAIN => return Outcome::Fail(e),
            Outcome::Fail(e) if done == 0 => {
                unread(input, offset, n);
                return Outcome::Fail(e);
            }
            Outcome::Fail(_) => (0, true),
            Outcome::Plain { done: d } if done + d == 0 => {
                unread(input, offset, n);
                return Outcome::Plain { done: 0 };
            }
            Outcome::Plain { done: d } => (d, true),
        };
        if sent < n {
            unread(input, offset, n - sent);
        }
        if !offset.is_null() {
            *offset += sent as libc::off_t;
        }
        done += sent;
        if stop {
            break;
        }
    }
    Outcome::Count(done)
}

/// Gives back input read but not sent (a file position moves back; a pipe cannot).
unsafe fn unread(input: c_int, offset: *mut libc::off_t, len: usize) {
    if offset.is_null() {
        libc::lseek(input, -(len as libc::off_t), libc::SEEK_CUR);
    }
}
