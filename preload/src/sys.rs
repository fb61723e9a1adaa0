//! Small system-call helpers used inside hooks (always through the real functions).

use crate::real;
use libc::{c_int, c_void, socklen_t};

pub fn inode(fd: c_int) -> Option<u64> {
    // SAFETY: fstat into a zeroed struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some(st.st_ino)
    }
}

/// Inode of `fd` if it is a socket.
pub fn socket_inode(fd: c_int) -> Option<u64> {
    // SAFETY: fstat into a zeroed struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
            .then_some(st.st_ino)
    }
}

pub fn getpid() -> libc::pid_t {
    // SAFETY: no preconditions.
    unsafe { libc::getpid() }
}

/// An `int`-valued socket option, read through the real `getsockopt`.
pub fn sockopt_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: v and len are valid out-parameters of the sizes given.
    let rc = unsafe {
        real::getsockopt(
            fd,
            level,
            name,
            &mut v as *mut c_int as *mut c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

pub fn set_sockopt_int(fd: c_int, level: c_int, name: c_int, v: c_int) -> bool {
    // SAFETY: a valid int option value.
    unsafe {
        real::setsockopt(
            fd,
            level,
            name,
            &v as *const c_int as *const c_void,
            std::mem::size_of::<c_int>() as socklen_t,
        ) == 0
    }
}

/// A fixed-size socket option (timeval, linger) read and written as raw bytes.
pub fn sockopt_raw<T: Copy>(fd: c_int, level: c_int, name: c_int) -> Option<T> {
    // SAFETY: T is plain data (timeval, linger) and len matches its size.
    unsafe {
        let mut v: T = std::mem::zeroed();
        let mut len = std::mem::size_of::<T>() as socklen_t;
        let rc = real::getsockopt(fd, level, name, &mut v as *mut T as *mut c_void, &mut len);
        (rc == 0 && len as usize == std::mem::size_of::<T>()).then_some(v)
    }
}

pub fn set_sockopt_raw<T: Copy>(fd: c_int, level: c_int, name: c_int, v: &T) -> bool {
    // SAFETY: v is plain data of the size given.
    unsafe {
        real::setsockopt(
            fd,
            level,
            name,
            v as *const T as *const c_void,
            std::mem::size_of::<T>() as socklen_t,
        ) == 0
    }
}

/// The socket's local address, through the real `getsockname`.
pub fn local_addr(fd: c_int) -> Option<(libc::sockaddr_storage, socklen_t)> {
    // SAFETY: a zeroed sockaddr_storage is a valid out-buffer of the size given.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        (real::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) == 0)
            .then_some((ss, len))
    }
}

/// The socket's peer address, through the real `getpeername`.
pub fn peer_addr(fd: c_int) -> Option<(libc::sockaddr_storage, socklen_t)> {
    // SAFETY: as in local_addr.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        (real::getpeername(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) == 0)
            .then_some((ss, len))
    }
}

/// CLOCK_MONOTONIC in milliseconds.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

pub fn close(fd: c_int) {
    // SAFETY: the caller owns fd.
    unsafe { real::close(fd) };
}

/// Waits for `events` on `fd` with the real `poll` (a cancellation point; `EINTR` comes back
/// to the caller). `timeout_ms < 0`: forever.
pub fn poll_one(fd: c_int, events: libc::c_short, timeout_ms: c_int) -> Result<libc::c_short, i32> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if rc < 0 {
        Err(crate::guard::errno())
    } else {
        Ok(p.revents)
    }
}
