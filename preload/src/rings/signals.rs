//! What crosses the socketpair and the eventfd in ring mode instead of data: the eventfd
//! write that wakes the daemon, doorbells drained (exactly those owed, including one still on
//! its way) and credit filler written. See the protocol in `weft_ipc::ring`.

use crate::guard::errno;
use crate::{real, sys};
use libc::{c_int, c_void};
use weft_ipc::ring::RxWaitDecision;

/// Writes the eventfd: the daemon sleeps and has work now.
pub fn wake_daemon(wake: c_int) {
    let one: u64 = 1;
    // SAFETY: 8 bytes from a live u64 into our eventfd; EAGAIN (counter saturated) means a
    // wake is pending anyway.
    unsafe { real::write(wake, &one as *const u64 as *const c_void, 8) };
}

/// Reads and drops up to `count` bytes without blocking; returns how many.
pub(super) fn drain(fd: c_int, count: u64) -> u64 {
    let mut buf = [0u8; 256];
    let mut done = 0u64;
    while done < count {
        let want = (count - done).min(buf.len() as u64) as usize;
        // SAFETY: reading into a live stack buffer.
        let n = unsafe {
            real::recv(
                fd,
                buf.as_mut_ptr() as *mut c_void,
                want,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            done += n as u64;
        } else if n < 0 && errno() == libc::EINTR {
            continue;
        } else {
            break;
        }
    }
    done
}

/// Drops the doorbells the daemon has counted and we have not drained (all of them are in
/// the socket already: the daemon counts one only after writing it).
pub fn drain_owed_doorbells(fd: c_int, end: &mut weft_ipc::ring::AppEnd) {
    if let Ok(RxWaitDecision::Sleep { drain_doorbells }) = end.prepare_rx_sleep() {
        let n = drain(fd, drain_doorbells);
        let _ = end.doorbells_drained(n);
        drop_late_doorbells(fd, end);
    }
    // Otherwise data or a reset raced in: nothing is owed that the wait step would not drain.
}

/// How long (in yields) to wait for a doorbell the daemon has decided to ring but not yet
/// counted: it is between two instructions of its loop, so this is short unless it was
/// descheduled right there.
const LATE_DOORBELL_SPINS: u32 = 2000;

/// RX is empty and armed: drops doorbells rung for data we already read, including one still
/// on its way, so a readable fd always means something to read (see
/// `AppEnd::settled_doorbells`).
pub(super) fn drop_late_doorbells(fd: c_int, end: &mut weft_ipc::ring::AppEnd) {
    for _ in 0..LATE_DOORBELL_SPINS {
        match end.settled_doorbells() {
            Some(0) => return,
            Some(n) => {
                let got = drain(fd, n);
                if end.doorbells_drained(got).is_err() || got == n {
                    return;
                }
            }
            None => {}
        }
        // SAFETY: plain syscall.
        unsafe { libc::sched_yield() };
    }
}

/// Reads and drops exactly `count` bytes, waiting for them (a detach's doorbells: the last
/// one may still be on its way).
pub fn discard_exactly(fd: c_int, count: u64) {
    let mut done = 0;
    while done < count {
        done += drain(fd, count - done);
        if done < count {
            match sys::poll_one(fd, libc::POLLIN, 1000) {
                Ok(ev) if ev & libc::POLLIN == 0 && ev & (libc::POLLHUP | libc::POLLERR) != 0 => {
                    return;
                }
                _ => {}
            }
        }
    }
}

static FILLER: [u8; 4096] = [0; 4096];

/// Credit filler until the socket is full; returns the bytes written.
pub(super) fn write_filler(fd: c_int) -> u64 {
    let mut total = 0u64;
    loop {
        // SAFETY: sending from a static buffer.
        let n = unsafe {
            real::send(
                fd,
                FILLER.as_ptr() as *const c_void,
                FILLER.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            total += n as u64;
        } else if n < 0 && errno() == libc::EINTR {
            continue;
        } else {
            return total;
        }
    }
}
