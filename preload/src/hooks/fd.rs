//! close, close_range, closefrom, dup, dup2, dup3, fcntl, fcntl64, epoll_ctl: bookkeeping
//! only. They never fail for the program's own descriptors; the shim's own (control socket,
//! log) survive a program that closes everything (`close_range(3, ~0)`, daemonising loops).

use super::hook;
use crate::fdtable::{self, EpollReg, Kind, CANDIDATE, PRIVATE, RING, TRACKED};
use crate::guard::{errno, set_errno, KeepErrno};
use crate::{control, log, real, release, rings, state};
use libc::{c_int, c_uint, c_ulong};

hook! {
    fn close(fd: c_int) -> c_int {
        let flags = fdtable::flags(fd);
        if flags == 0 {
            return real::close(fd);
        }
        if flags & RING != 0 {
            rings::forget(fd);
        }
        if flags & PRIVATE != 0 {
            if fdtable::is_private(fd) {
                return 0;
            }
            fdtable::mark_private(fd, false);
        }
        if !state::in_owner() {
            return real::close(fd);
        }
        let released = if flags & (TRACKED | CANDIDATE) != 0 {
            state::lock().table.detach(fd)
        } else {
            None
        };
        let rc = real::close(fd);
        let e = errno();
        release::release(released);
        set_errno(e);
        rc
    }

    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
        close_range_hook(first, last, flags)
    }

    fn dup(fd: c_int) -> c_int {
        // Two numbers for one socket: the rings cannot follow both.
        rings::detach(fd);
        let new = real::dup(fd);
        if new >= 0 {
            after_dup(fd, new);
        }
        new
    }

    fn dup2(old: c_int, new: c_int) -> c_int {
        if old == new {
            return real::dup2(old, new);
        }
        protect_private(new);
        rings::detach(old);
        let rc = real::dup2(old, new);
        if rc >= 0 {
            // What `new` was is closed now: its ring goes with it.
            rings::forget(new);
            after_dup(old, new);
        }
        rc
    }

    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
        if old != new {
            protect_private(new);
            rings::detach(old);
        }
        let rc = real::dup3(old, new, flags);
        if rc >= 0 {
            rings::forget(new);
            after_dup(old, new);
        }
        rc
    }

    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
        if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
            rings::detach(fd);
        }
        let rc = real::fcntl(fd, cmd, arg);
        if rc >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) {
            after_dup(fd, rc);
        }
        rc
    }

    fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
        if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
            rings::detach(fd);
        }
        let rc = real::fcntl64(fd, cmd, arg);
        if rc >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) {
            after_dup(fd, rc);
        }
        rc
    }

    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int {
        let rc = real::epoll_ctl(epfd, op, fd, ev);
        if rc == 0 && fdtable::flags(fd) & CANDIDATE != 0 && state::in_owner() {
            record_epoll(epfd, op, fd, ev);
        }
        rc
    }
}

/// `closefrom(3)` is not in every libc this may run with, so it is exported by hand and calls
/// libc's only when there is one.
/// # Safety
/// The contract of libc\'s `closefrom`.
#[no_mangle]
pub unsafe extern "C" fn closefrom(low: c_int) {
    let Some(_inside) = super::enter() else {
        if real::closefrom(low).is_none() {
            real::close_range(low.max(0) as c_uint, c_uint::MAX, 0);
        }
        return;
    };
    let _errno = KeepErrno::new();
    let low = low.max(0);
    if close_range_hook(low as c_uint, c_uint::MAX, 0) != 0 && real::closefrom(low).is_none() {
        // close_range(2) is missing (kernel < 5.9) and so is libc's closefrom: close one by one
        // up to the descriptor limit, sparing ours.
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        for fd in low..(lim.rlim_cur.min(1 << 20) as c_int) {
            if !fdtable::is_private(fd) {
                real::close(fd);
            }
        }
    }
}

/// `dup2`/`dup3` onto one of the shim's own descriptors: move ours away first.
fn protect_private(new: c_int) {
    if fdtable::flags(new) & PRIVATE != 0 && fdtable::is_private(new) {
        if control::owns(new) {
            control::relocate(new);
        }
        if log::owns(new) {
            log::relocate(new);
        }
        if rings::owns_wake(new) {
            rings::relocate_wake(new);
        }
    }
}

/// `new` is a duplicate of `old` now: share what the shim knows (and drop what `new` was).
fn after_dup(old: c_int, new: c_int) {
    let tracked = (fdtable::flags(old) | fdtable::flags(new)) & (TRACKED | CANDIDATE) != 0;
    if !tracked || !state::in_owner() {
        return;
    }
    let _errno = KeepErrno::new();
    let released = state::lock().table.share(old, new);
    release::release(released);
}

unsafe fn close_range_hook(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    if flags & (libc::CLOSE_RANGE_CLOEXEC as c_int) != 0 || first > last || !state::in_owner() {
        return real::close_range(first, last, flags);
    }
    let lo = first.min(c_int::MAX as c_uint) as c_int;
    let hi = last.min(c_int::MAX as c_uint) as c_int;
    let mut released = Vec::new();
    {
        let mut st = state::lock();
        for fd in st.table.fds_in(lo, hi) {
            released.push(st.table.detach(fd));
        }
    }
    for fd in lo..=hi.min(fdtable::FLAGS_LEN as c_int - 1) {
        if fdtable::flags(fd) & CANDIDATE != 0 {
            fdtable::mark_candidate(fd, false);
        }
        if fdtable::flags(fd) & RING != 0 {
            rings::forget(fd);
        }
    }
    // Close around our own descriptors.
    let mut ours: Vec<c_int> = (lo..=hi.min(fdtable::FLAGS_LEN as c_int - 1))
        .filter(|&fd| fdtable::flags(fd) & PRIVATE != 0 && fdtable::is_private(fd))
        .collect();
    ours.sort_unstable();
    let mut rc = 0;
    let mut e = 0;
    let mut close_span = |a: u64, b: u64| {
        if real::close_range(a as c_uint, b as c_uint, flags) != 0 && rc == 0 {
            rc = -1;
            e = errno();
        }
    };
    let mut from = first as u64;
    for p in ours {
        if p as u64 > from {
            close_span(from, p as u64 - 1);
        }
        from = p as u64 + 1;
    }
    if from <= last as u64 {
        close_span(from, last as u64);
    }
    for r in released {
        release::release(r);
    }
    if rc != 0 {
        set_errno(e);
    }
    rc
}

unsafe fn record_epoll(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) {
    let _errno = KeepErrno::new();
    let reg = (!ev.is_null()).then(|| EpollReg {
        epfd,
        events: (*ev).events,
        data: (*ev).u64,
    });
    let mut st = state::lock();
    if st.table.get(fd).is_none() {
        st.table.set(fd, Kind::Unconnected(Default::default()));
    }
    if let Some(Kind::Unconnected(c)) = st.table.get_mut(fd) {
        c.epoll.retain(|r| r.epfd != epfd);
        if op != libc::EPOLL_CTL_DEL {
            if let Some(reg) = reg {
                c.epoll.push(reg);
            }
        }
    }
}
