//! The libc functions the shim interposes, resolved with `dlsym(RTLD_NEXT)`.
//!
//! Every pointer is resolved eagerly by the constructor ([`resolve_all`]); a call that arrives
//! before it (another library's constructor opening a socket) resolves its own slot on the
//! spot. No `Once`, no lazy std initialisation: nothing here can recurse into a hook or block.
//! Inside the shim, always call these instead of `libc::…` for a hooked name: our own export
//! of the same name comes first in the lookup scope.

use libc::{c_char, c_int, c_uint, c_ulong, c_void, pid_t, size_t, sockaddr, socklen_t, ssize_t};
use std::sync::atomic::{AtomicPtr, Ordering};

pub struct Slot {
    name: &'static str,
    ptr: AtomicPtr<c_void>,
}

impl Slot {
    pub const fn new(name: &'static str) -> Slot {
        Slot {
            name,
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    fn resolve(&self) -> *mut c_void {
        // SAFETY: `name` is a NUL-terminated literal (built with concat! below).
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr() as *const c_char) };
        self.ptr.store(p, Ordering::Release);
        p
    }

    /// The real function, or null when libc does not have it (optional symbols only).
    pub fn get(&self) -> *mut c_void {
        let p = self.ptr.load(Ordering::Acquire);
        if p.is_null() {
            self.resolve()
        } else {
            p
        }
    }

    /// The real function; a libc without it cannot run the program at all.
    pub fn required(&self) -> *mut c_void {
        let p = self.get();
        if p.is_null() {
            crate::log::fatal(self.name);
        }
        p
    }
}

macro_rules! real_fns {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty ;)*) => {
        #[allow(non_upper_case_globals)]
        pub mod slot {
            $( pub static $name: super::Slot = super::Slot::new(concat!(stringify!($name), "\0")); )*
        }

        /// Resolves every slot now (the constructor calls this).
        pub fn resolve_all() {
            $( slot::$name.resolve(); )*
        }

        $(
            /// # Safety
            /// Same contract as the libc function of this name.
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                // SAFETY: the slot holds libc's function of exactly this signature.
                let f: unsafe extern "C" fn($($ty),*) -> $ret =
                    std::mem::transmute(slot::$name.required());
                f($($arg),*)
            }
        )*
    };
}

real_fns! {
    socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    listen(fd: c_int, backlog: c_int) -> c_int;
    accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t;
    sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, vlen: c_uint, flags: c_int) -> c_int;
    recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    __recvfrom_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t;
    recvmmsg(fd: c_int, msgs: *mut libc::mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int;
    close(fd: c_int) -> c_int;
    dup(fd: c_int) -> c_int;
    dup2(old: c_int, new: c_int) -> c_int;
    dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int;
    execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    posix_spawn(pid: *mut pid_t, path: *const c_char, acts: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut c_char, envp: *const *mut c_char) -> c_int;
    posix_spawnp(pid: *mut pid_t, file: *const c_char, acts: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut c_char, envp: *const *mut c_char) -> c_int;
    read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t;
    writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t;
    recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
    __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t;
    __recv_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int) -> ssize_t;
    sendfile(out: c_int, input: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t;
    sendfile64(out: c_int, input: c_int, offset: *mut libc::off64_t, count: size_t) -> ssize_t;
    shutdown(fd: c_int, how: c_int) -> c_int;
    fdopen(fd: c_int, mode: *const c_char) -> *mut libc::FILE;
    splice(fd_in: c_int, off_in: *mut libc::loff_t, fd_out: c_int, off_out: *mut libc::loff_t, len: size_t, flags: c_uint) -> ssize_t;
}

/// `fcntl` is variadic in C: call it as such (the third argument is an int or a pointer).
///
/// # Safety
/// Same contract as `fcntl(2)`.
pub unsafe fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: libc's fcntl is `int fcntl(int, int, ...)`.
    let f: unsafe extern "C" fn(c_int, c_int, ...) -> c_int = std::mem::transmute(FCNTL.required());
    f(fd, cmd, arg)
}

/// # Safety
/// Same contract as `fcntl(2)`.
pub unsafe fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: glibc's fcntl64 is `int fcntl64(int, int, ...)`.
    let f: unsafe extern "C" fn(c_int, c_int, ...) -> c_int =
        std::mem::transmute(FCNTL64.required());
    f(fd, cmd, arg)
}

/// `ioctl` is variadic in C: call it as such (the third argument is an int or a pointer).
///
/// # Safety
/// Same contract as `ioctl(2)`.
pub unsafe fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    // SAFETY: glibc's ioctl is `int ioctl(int, unsigned long, ...)`.
    let f: unsafe extern "C" fn(c_int, c_ulong, ...) -> c_int =
        std::mem::transmute(IOCTL.required());
    f(fd, req, arg)
}

pub static IOCTL: Slot = Slot::new("ioctl\0");
pub static FCNTL: Slot = Slot::new("fcntl\0");
pub static FCNTL64: Slot = Slot::new("fcntl64\0");

/// `close_range(2)`: through libc when it has the wrapper (glibc ≥ 2.34), else the syscall.
///
/// # Safety
/// Closes descriptors: the caller decides which.
pub unsafe fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let p = CLOSE_RANGE.get();
    if p.is_null() {
        libc::syscall(libc::SYS_close_range, first, last, flags) as c_int
    } else {
        // SAFETY: libc's close_range has this signature.
        let f: unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int = std::mem::transmute(p);
        f(first, last, flags)
    }
}

/// `closefrom(3)` (never fails); `None` when this libc does not have it.
///
/// # Safety
/// Closes descriptors: the caller decides which.
pub unsafe fn closefrom(low: c_int) -> Option<()> {
    let p = CLOSEFROM.get();
    if p.is_null() {
        return None;
    }
    // SAFETY: libc's closefrom has this signature.
    let f: unsafe extern "C" fn(c_int) = std::mem::transmute(p);
    f(low);
    Some(())
}

pub static CLOSE_RANGE: Slot = Slot::new("close_range\0");
pub static CLOSEFROM: Slot = Slot::new("closefrom\0");

pub fn resolve_extra() {
    FCNTL.resolve();
    IOCTL.resolve();
    FCNTL64.resolve();
    CLOSE_RANGE.resolve();
    CLOSEFROM.resolve();
}
