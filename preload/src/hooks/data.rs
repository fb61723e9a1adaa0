//! The read/write family (read, write, readv, writev, recv, send, the `_chk` variants,
//! sendfile, ioctl(FIONREAD/SIOCOUTQ), shutdown) and the calls that revoke ring mode because
//! the shim cannot follow them (fdopen, splice). On a descriptor that is not in ring mode each
//! costs one flag load before libc's function; on a ring fd the bytes go through `rings::io`.

use super::hook;
use crate::real;
use crate::rings::{self, io};
use libc::{c_char, c_int, c_uint, c_ulong, c_void, iovec, size_t, ssize_t};

/// The largest iovec array the kernel accepts (`UIO_MAXIOV`).
const IOV_MAX: c_int = 1024;

/// Like `hook!`, for calls whose first argument is the descriptor: on a ring fd the body runs
/// even when this thread is already inside the shim (a signal handler that interrupted a hook),
/// because the real call on a ring fd would read or write the socket behind the rings' back.
///
/// `=> post` names what the result goes through afterwards (`after_read`, `after_write`),
/// except in a nested call, where the shim must not ask the daemon anything.
macro_rules! ring_hook {
    ($(
        fn $name:ident($fd:ident : $fdty:ty $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty => $post:ident $body:block
    )*) => {$(
        /// # Safety
        /// The contract of the libc function of the same name.
        #[no_mangle]
        pub unsafe extern "C" fn $name($fd: $fdty $(, $arg: $ty)*) -> $ret {
            let inside = crate::hooks::enter();
            if inside.is_none() && !(crate::hooks::is_ready() && rings::is_ring($fd)) {
                return crate::real::$name($fd $(, $arg)*);
            }
            let entry_errno = crate::guard::errno();
            #[allow(clippy::redundant_closure_call)]
            let result: $ret = (|| -> $ret { $body })();
            let result = if inside.is_some() { $post($fd, result) } else { result };
            if !crate::guard::HookResult::failed(result) {
                crate::guard::set_errno(entry_errno);
            }
            result
        }
    )*};
}

ring_hook! {
    fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t => after_read {
        if rings::is_ring(fd) {
            if let Some(r) = recv_one(fd, buf, n, 0) {
                return r;
            }
        }
        real::read(fd, buf, n)
    }

    fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t => after_read {
        if rings::is_ring(fd) && n <= buflen {
            if let Some(r) = recv_one(fd, buf, n, 0) {
                return r;
            }
        }
        real::__read_chk(fd, buf, n, buflen)
    }

    fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t => after_read {
        if rings::is_ring(fd) {
            if let Some(r) = recv_one(fd, buf, n, flags) {
                return r;
            }
        }
        real::recv(fd, buf, n, flags)
    }

    fn __recv_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int) -> ssize_t => after_read {
        if rings::is_ring(fd) && n <= buflen {
            if let Some(r) = recv_one(fd, buf, n, flags) {
                return r;
            }
        }
        real::__recv_chk(fd, buf, n, buflen, flags)
    }

    fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t => after_read {
        if rings::is_ring(fd) {
            if let Some(v) = iovecs(iov, cnt) {
                if let Some(r) = io::recv(fd, v, 0).ret(crate::guard::errno()) {
                    return r;
                }
            }
        }
        real::readv(fd, iov, cnt)
    }

    fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t => after_write {
        let r = if rings::is_ring(fd) {
            let iov = [iovec { iov_base: buf as *mut c_void, iov_len: n }];
            send_then_plain(fd, &iov, 0, |rest| real::write(fd, rest.iov_base, rest.iov_len))
        } else {
            real::write(fd, buf, n)
        };
        crate::stream::more_after(fd, 0);
        r
    }

    fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t => after_write {
        crate::stream::more_before(fd, flags);
        let r = if rings::is_ring(fd) {
            let iov = [iovec { iov_base: buf as *mut c_void, iov_len: n }];
            send_then_plain(fd, &iov, flags, |rest| {
                real::send(fd, rest.iov_base, rest.iov_len, flags)
            })
        } else {
            real::send(fd, buf, n, flags)
        };
        crate::stream::more_after(fd, flags);
        r
    }

    fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t => after_write {
        let r = match iovecs(iov, cnt).filter(|_| rings::is_ring(fd)) {
            Some(v) => send_vectored(fd, v, 0, |rest| real::writev(fd, rest.as_ptr(), rest.len() as c_int)),
            None => real::writev(fd, iov, cnt),
        };
        crate::stream::more_after(fd, 0);
        r
    }

}

hook! {
    fn sendfile(out: c_int, input: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t {
        if rings::is_ring(input) {
            rings::detach(input);
        }
        if rings::is_ring(out) {
            let entry = crate::guard::errno();
            match io::sendfile(out, input, offset, count) {
                io::Outcome::Plain { done } if done > 0 => return done as ssize_t,
                io::Outcome::Plain { .. } => {}
                o => return o.ret(entry).unwrap_or(-1),
            }
        }
        real::sendfile(out, input, offset, count)
    }

    fn sendfile64(out: c_int, input: c_int, offset: *mut libc::off64_t, count: size_t) -> ssize_t {
        if rings::is_ring(input) {
            rings::detach(input);
        }
        if rings::is_ring(out) {
            let entry = crate::guard::errno();
            // off64_t is off_t on the 64-bit targets this builds for.
            match io::sendfile(out, input, offset as *mut libc::off_t, count) {
                io::Outcome::Plain { done } if done > 0 => return done as ssize_t,
                io::Outcome::Plain { .. } => {}
                o => return o.ret(entry).unwrap_or(-1),
            }
        }
        real::sendfile64(out, input, offset, count)
    }

    fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
        if rings::is_ring(fd) && !arg.is_null() {
            let outgoing = match req {
                libc::FIONREAD => Some(false),
                libc::TIOCOUTQ => Some(true),
                _ => None,
            };
            if let Some(outgoing) = outgoing {
                if let Some(n) = io::queued(fd, outgoing) {
                    *(arg as *mut c_int) = n;
                    return 0;
                }
            }
        }
        real::ioctl(fd, req, arg)
    }

    fn shutdown(fd: c_int, how: c_int) -> c_int {
        if rings::is_ring(fd) {
            match how {
                libc::SHUT_WR => io::shutdown_write(fd),
                // Reads that must fail from now on are the kernel's: leave ring mode.
                _ => rings::detach(fd),
            }
        }
        real::shutdown(fd, how)
    }

    fn fdopen(fd: c_int, mode: *const c_char) -> *mut libc::FILE {
        // stdio reads and writes through libc internals the hooks never see.
        rings::detach(fd);
        real::fdopen(fd, mode)
    }

    fn splice(fd_in: c_int, off_in: *mut libc::loff_t, fd_out: c_int, off_out: *mut libc::loff_t, len: size_t, flags: c_uint) -> ssize_t {
        rings::detach(fd_in);
        rings::detach(fd_out);
        real::splice(fd_in, off_in, fd_out, off_out, len, flags)
    }
}

/// A read that found end of file on a session that timed out fails with the session's errno
/// (once), as the kernel's socket would.
fn after_read(fd: c_int, r: ssize_t) -> ssize_t {
    if r != 0 {
        return r;
    }
    match crate::stream::eof_error(fd) {
        Some(e) => {
            crate::guard::set_errno(e);
            -1
        }
        None => 0,
    }
}

/// A write that met `EPIPE` on a session that timed out fails with the session's errno
/// (once) instead. (The `SIGPIPE` the socketpair raised has been delivered already; the
/// kernel's socket would not raise it for that first write.)
fn after_write(fd: c_int, r: ssize_t) -> ssize_t {
    if r != -1 || crate::guard::errno() != libc::EPIPE {
        return r;
    }
    if let Some(e) = crate::stream::eof_error(fd) {
        crate::guard::set_errno(e);
    }
    r
}

/// The program's iovec array, if the kernel would accept its count.
unsafe fn iovecs<'a>(iov: *const iovec, cnt: c_int) -> Option<&'a [iovec]> {
    if iov.is_null() || !(0..=IOV_MAX).contains(&cnt) {
        return None;
    }
    Some(std::slice::from_raw_parts(iov, cnt as usize))
}

/// A receive into one buffer on a ring fd; `None`: not (any more) a ring fd, do the real call.
unsafe fn recv_one(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> Option<ssize_t> {
    let entry = crate::guard::errno();
    let iov = [iovec {
        iov_base: buf,
        iov_len: n,
    }];
    io::recv(fd, &iov, flags).ret(entry)
}

/// A send of one buffer on a ring fd; what the ring did not take (it was detached or reset
/// meanwhile) goes through `plain`, in order after it.
unsafe fn send_then_plain(
    fd: c_int,
    iov: &[iovec; 1],
    flags: c_int,
    plain: impl FnOnce(iovec) -> ssize_t,
) -> ssize_t {
    let empty = iovec {
        iov_base: iov[0].iov_base,
        iov_len: 0,
    };
    send_vectored(fd, iov, flags, |rest| {
        plain(rest.first().copied().unwrap_or(empty))
    })
}

/// A vectored send on a ring fd; the part the ring did not take goes through `plain`.
///
/// # Safety
/// `iov` describes readable buffers of the program's, as for `writev(2)`.
pub unsafe fn send_vectored(
    fd: c_int,
    iov: &[iovec],
    flags: c_int,
    plain: impl FnOnce(&[iovec]) -> ssize_t,
) -> ssize_t {
    let entry = crate::guard::errno();
    match io::send(fd, iov, flags) {
        io::Outcome::Plain { done } => {
            let rest = tail(iov, done);
            if rest.is_empty() && done > 0 {
                return done as ssize_t;
            }
            let n = plain(&rest);
            match (n, done) {
                (n, 0) => n,
                (n, done) if n < 0 => {
                    crate::guard::set_errno(entry);
                    done as ssize_t
                }
                (n, done) => n + done as ssize_t,
            }
        }
        o => o.ret(entry).unwrap_or(-1),
    }
}

/// The iovecs after the first `skip` bytes.
fn tail(iov: &[iovec], mut skip: usize) -> Vec<iovec> {
    let mut out = Vec::with_capacity(iov.len());
    for v in iov {
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        out.push(iovec {
            iov_base: (v.iov_base as *mut u8).wrapping_add(skip) as *mut c_void,
            iov_len: v.iov_len - skip,
        });
        skip = 0;
    }
    out
}

/// `sendto` on a ring fd (a connected stream ignores the address, as TCP does).
///
/// # Safety
/// `buf` holds `n` readable bytes, as for `send(2)`.
pub unsafe fn ring_sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    let iov = [iovec {
        iov_base: buf as *mut c_void,
        iov_len: n,
    }];
    send_then_plain(fd, &iov, flags, |rest| {
        real::sendto(fd, rest.iov_base, rest.iov_len, flags, std::ptr::null(), 0)
    })
}

/// `recvfrom` on a ring fd: a stream reports no source address.
///
/// # Safety
/// The contract of `recvfrom(2)` for `buf`, `addr` and `len`.
pub unsafe fn ring_recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> Option<ssize_t> {
    let r = recv_one(fd, buf, n, flags)?;
    if r >= 0 && !addr.is_null() && !len.is_null() {
        *len = 0;
    }
    Some(r)
}

/// `sendmsg` on a ring fd without ancillary data (with it, the fd leaves ring mode first).
///
/// # Safety
/// `msg` is a valid `msghdr`, as for `sendmsg(2)`.
pub unsafe fn ring_sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> Option<ssize_t> {
    if (*msg).msg_controllen != 0 {
        rings::detach(fd);
        return None;
    }
    let v = iovecs((*msg).msg_iov, (*msg).msg_iovlen as c_int)?;
    Some(send_vectored(fd, v, flags, |rest| {
        let mut copy = *msg;
        copy.msg_iov = rest.as_ptr() as *mut iovec;
        copy.msg_iovlen = rest.len() as _;
        real::sendmsg(fd, &copy, flags)
    }))
}

/// `recvmsg` on a ring fd: no name, no ancillary data, no flags (a stream has none).
///
/// # Safety
/// `msg` is a valid `msghdr`, as for `recvmsg(2)`.
pub unsafe fn ring_recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> Option<ssize_t> {
    let v = iovecs((*msg).msg_iov, (*msg).msg_iovlen as c_int)?;
    let r = io::recv(fd, v, flags).ret(crate::guard::errno())?;
    if r >= 0 {
        (*msg).msg_namelen = 0;
        (*msg).msg_controllen = 0;
        (*msg).msg_flags = 0;
    }
    Some(r)
}

/// Descriptors about to leave this process in an `SCM_RIGHTS` message: their rings are
/// revoked first (the receiver reads the socket plainly).
///
/// # Safety
/// `msg` is null or a valid `msghdr` whose control buffer is as long as it says.
pub unsafe fn revoke_passed(msg: *const libc::msghdr) {
    if msg.is_null() || (*msg).msg_control.is_null() || (*msg).msg_controllen == 0 {
        return;
    }
    let mut hdr = libc::CMSG_FIRSTHDR(msg);
    while !hdr.is_null() {
        if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
            let data = libc::CMSG_DATA(hdr) as *const c_int;
            let bytes = ((*hdr).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            for i in 0..bytes / std::mem::size_of::<c_int>() {
                let fd = std::ptr::read_unaligned(data.add(i));
                if rings::is_ring(fd) {
                    rings::detach(fd);
                }
            }
        }
        hdr = libc::CMSG_NXTHDR(msg, hdr);
    }
}
