//! `WEFT_LOG=debug` logging from inside hooks: formatted into a stack buffer and written with
//! the raw `write` syscall to a private duplicate of the stderr the program started with. No
//! allocation, no std I/O (which would recurse into our own hooks), errno preserved.

use crate::guard::KeepErrno;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);
/// `WEFT_QUIET`: no notices (`weft run -q`).
static QUIET: AtomicBool = AtomicBool::new(false);
/// `WEFT_STRICT`: fail instead of falling back to the kernel (`weft run --strict`).
static STRICT: AtomicBool = AtomicBool::new(false);
/// `WEFT_REPORTED_DOWN`: `weft run` already said that no daemon answered at start.
static REPORTED_DOWN: AtomicBool = AtomicBool::new(false);
/// A notice went out already (one per process).
static NOTICED: AtomicBool = AtomicBool::new(false);
static FD: AtomicI32 = AtomicI32::new(-1);
static INODE: AtomicU64 = AtomicU64::new(0);

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `fd` is the private log descriptor, still open.
pub fn owns(fd: libc::c_int) -> bool {
    fd >= 0
        && FD.load(Ordering::Relaxed) == fd
        && crate::sys::inode(fd) == Some(INODE.load(Ordering::Relaxed))
}

/// Moves the log descriptor away from `fd` (the program is about to `dup2` onto it).
pub fn relocate(fd: libc::c_int) {
    if !owns(fd) {
        return;
    }
    // SAFETY: duplicating our own descriptor, then closing the old number.
    let new = unsafe { crate::real::fcntl(fd, libc::F_DUPFD_CLOEXEC, (fd + 1) as libc::c_ulong) };
    if new >= 0 {
        FD.store(new, Ordering::Relaxed);
        crate::fdtable::mark_private(new, true);
    } else {
        ENABLED.store(false, Ordering::Relaxed);
        FD.store(-1, Ordering::Relaxed);
    }
    crate::fdtable::mark_private(fd, false);
}

/// An environment flag is set: present, non-empty and not `0`.
fn env_flag(name: &std::ffi::CStr) -> bool {
    // SAFETY: getenv during the constructor, before the program's threads exist.
    let val = unsafe { libc::getenv(name.as_ptr()) };
    if val.is_null() {
        return false;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(val) }.to_bytes();
    !v.is_empty() && v != b"0"
}

pub fn strict() -> bool {
    STRICT.load(Ordering::Relaxed)
}

pub fn reported_down_at_start() -> bool {
    REPORTED_DOWN.load(Ordering::Relaxed)
}

/// One line on the program's stderr, at most once per process, unless `WEFT_QUIET`: what
/// `weft run` promises when a redirect cannot happen.
pub fn notice(args: std::fmt::Arguments<'_>) {
    if QUIET.load(Ordering::Relaxed) || NOTICED.swap(true, Ordering::Relaxed) {
        return;
    }
    let _errno = KeepErrno::new();
    let mut b = StackBuf {
        buf: [0; 640],
        len: 0,
    };
    let _ = write!(b, "weft: ");
    let _ = b.write_fmt(args);
    b.buf[b.len] = b'\n';
    b.len += 1;
    // SAFETY: raw write of an initialised stack buffer to the program's stderr.
    unsafe { libc::syscall(libc::SYS_write, 2, b.buf.as_ptr(), b.len) };
}

/// Turns logging on when `WEFT_LOG` asks for debug or trace (the daemon's variable), and
/// reads the notice settings.
pub fn init() {
    QUIET.store(env_flag(c"WEFT_QUIET"), Ordering::Relaxed);
    STRICT.store(env_flag(c"WEFT_STRICT"), Ordering::Relaxed);
    REPORTED_DOWN.store(env_flag(c"WEFT_REPORTED_DOWN"), Ordering::Relaxed);
    // SAFETY: getenv during the constructor, before the program's threads exist.
    let val = unsafe { libc::getenv(c"WEFT_LOG".as_ptr()) };
    if val.is_null() {
        return;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    let val = unsafe { std::ffi::CStr::from_ptr(val) }.to_bytes();
    let wanted = val.windows(5).any(|w| w.eq_ignore_ascii_case(b"debug"))
        || val.windows(5).any(|w| w.eq_ignore_ascii_case(b"trace"));
    if !wanted {
        return;
    }
    // SAFETY: duplicating stderr onto a fresh close-on-exec descriptor.
    let fd = unsafe {
        crate::real::fcntl(
            2,
            libc::F_DUPFD_CLOEXEC,
            crate::fdtable::PRIVATE_FD_BASE as libc::c_ulong,
        )
    };
    if fd < 0 {
        return;
    }
    INODE.store(crate::sys::inode(fd).unwrap_or(0), Ordering::Relaxed);
    FD.store(fd, Ordering::Relaxed);
    crate::fdtable::mark_private(fd, true);
    ENABLED.store(true, Ordering::Relaxed);
}

struct StackBuf {
    buf: [u8; 640],
    len: usize,
}

impl Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - 1 - self.len; // keep one byte for the newline
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

pub fn write(args: std::fmt::Arguments<'_>) {
    let _errno = KeepErrno::new();
    let fd = FD.load(Ordering::Relaxed);
    if fd < 0 || crate::sys::inode(fd) != Some(INODE.load(Ordering::Relaxed)) {
        return;
    }
    let mut b = StackBuf {
        buf: [0; 640],
        len: 0,
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let _ = write!(b, "weft-shim[{pid}]: ");
    let _ = b.write_fmt(args);
    b.buf[b.len] = b'\n';
    b.len += 1;
    // SAFETY: raw write of an initialised stack buffer.
    unsafe { libc::syscall(libc::SYS_write, fd, b.buf.as_ptr(), b.len) };
}

/// libc lacks a function the shim cannot do without: say which, then abort.
pub fn fatal(name: &str) -> ! {
    let msg = b"weft shim: libc lacks a required function: ";
    // SAFETY: raw writes of static/borrowed bytes to stderr, then abort.
    unsafe {
        libc::syscall(libc::SYS_write, 2, msg.as_ptr(), msg.len());
        libc::syscall(
            libc::SYS_write,
            2,
            name.as_ptr(),
            name.len().saturating_sub(1),
        );
        libc::syscall(libc::SYS_write, 2, b"\n".as_ptr(), 1usize);
        libc::abort()
    }
}

/// `debug!(...)`: formatted only when `WEFT_LOG=debug`.
macro_rules! debug {
    ($($t:tt)*) => {
        if $crate::log::enabled() {
            $crate::log::write(format_args!($($t)*))
        }
    };
}
pub(crate) use debug;
