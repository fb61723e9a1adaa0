//! The per-process control connection to the daemon (`$WEFT_SOCKET`, `SOCK_SEQPACKET`).
//!
//! Opened lazily by the first call that needs it (never in the constructor), close-on-exec,
//! moved to a high descriptor number, and re-validated by inode before every use: programs
//! close descriptors behind our back (`close_range` in a child), and writing a control record
//! into whatever reused the number would be the worst possible failure. A fork child drops the
//! inherited connection in the atfork handler and opens its own. Requests are synchronous
//! under the control lock; the wait for a reply is bounded by `SO_RCVTIMEO`, and nothing that
//! waits on the program's own descriptors happens under it.

use crate::guard::{LockGuard, ShimLock};
use crate::log::debug;
use crate::state;
use crate::view;
use crate::{fdtable, real, sys};
use libc::c_int;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::OnceLock;
use weft_ipc::{fdpass, ClientKind, Incoming, Reply, Request, MAX_MESSAGE};

/// How long a request may wait for its reply before the connection is declared dead.
const REPLY_TIMEOUT_S: libc::time_t = 5;
/// After a failed attempt to reach the daemon, pass everything through this long.
const RETRY_MS: u64 = 1000;
/// A destination that is not in the node list refreshes the list at most this often.
const REFRESH_MS: u64 = 500;

struct Conn {
    fd: c_int,
    ino: u64,
    pid: libc::pid_t,
    buf: Vec<u8>,
}

enum Link {
    Idle,
    Up(Conn),
    Down { retry_at_ms: u64 },
}

static CONTROL: ShimLock<Link> = ShimLock::new(Link::Idle);
static PATH: OnceLock<Option<CString>> = OnceLock::new();
static FD: AtomicI32 = AtomicI32::new(-1);
static INODE: AtomicU64 = AtomicU64::new(0);
static SAID_NO_DAEMON: AtomicBool = AtomicBool::new(false);
/// The daemon answered at least once in this process.
static EVER_UP: AtomicBool = AtomicBool::new(false);
/// Until when (CLOCK_MONOTONIC ms) the daemon is known to be unreachable: lets pass-through
/// calls skip the locks entirely. `u64::MAX`: no `WEFT_SOCKET` at all.
static DOWN_UNTIL_MS: AtomicU64 = AtomicU64::new(0);

/// Remembers `$WEFT_SOCKET` (constructor; no connection yet).
pub fn init() {
    let path = std::env::var_os("WEFT_SOCKET")
        .filter(|p| !p.is_empty())
        .and_then(|p| CString::new(std::os::unix::ffi::OsStringExt::into_vec(p)).ok());
    let _ = PATH.set(path);
}

/// Fork `prepare`: hold the control lock across the fork.
///
/// # Safety
/// Pair with [`release_after_fork`] in parent and child.
pub unsafe fn acquire_for_fork() {
    CONTROL.acquire_for_fork();
}

/// Fork `parent`/`child`.
///
/// # Safety
/// Only after [`acquire_for_fork`] on this thread.
pub unsafe fn release_after_fork() {
    CONTROL.release_after_fork();
}

/// `fd` is our control socket, still open.
pub fn owns(fd: c_int) -> bool {
    fd >= 0
        && FD.load(Ordering::Relaxed) == fd
        && sys::inode(fd) == Some(INODE.load(Ordering::Relaxed))
}

/// The program is about to `dup2` onto our descriptor: move ours out of the way first.
pub fn relocate(fd: c_int) {
    let mut link = CONTROL.lock();
    if let Link::Up(c) = &mut *link {
        if c.fd == fd && owns(fd) {
            // SAFETY: duplicating our own descriptor; dup2 will close the old number.
            let new = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, (fd + 1) as libc::c_ulong) };
            fdtable::mark_private(fd, false);
            if new >= 0 {
                c.fd = new;
                FD.store(new, Ordering::Relaxed);
                fdtable::mark_private(new, true);
            } else {
                *link = Link::Idle;
            }
        }
    }
}

/// Fork child: the inherited connection belongs to the parent. Runs with the control lock
/// held by the fork handler.
///
/// # Safety
/// Only from the atfork child handler, while it holds the control lock.
pub unsafe fn forget_in_child() {
    let fd = FD.load(Ordering::Relaxed);
    if owns(fd) {
        real::close(fd);
        fdtable::mark_private(fd, false);
    }
    FD.store(-1, Ordering::Relaxed);
    // SAFETY: the fork handler holds the lock, so no guard can exist.
    *CONTROL.data_while_held_for_fork() = Link::Idle;
}

fn open(path: &CString) -> Result<Conn, i32> {
    let bytes = path.as_bytes();
    // SAFETY: building a sockaddr_un from a length-checked path.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= sa.sun_path.len() {
        return Err(libc::ENAMETOOLONG);
    }
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: plain socket calls on descriptors we create and own.
    unsafe {
        let raw = real::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(crate::guard::errno());
        }
        if real::connect(raw, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            let e = crate::guard::errno();
            real::close(raw);
            return Err(e);
        }
        let fd = real::fcntl(
            raw,
            libc::F_DUPFD_CLOEXEC,
            fdtable::PRIVATE_FD_BASE as libc::c_ulong,
        );
        let fd = if fd >= 0 {
            real::close(raw);
            fd
        } else {
            raw
        };
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT_S,
            tv_usec: 0,
        };
        sys::set_sockopt_raw(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv);
        sys::set_sockopt_raw(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv);
        let ino = sys::inode(fd).unwrap_or(0);
        Ok(Conn {
            fd,
            ino,
            pid: sys::getpid(),
            buf: vec![0; MAX_MESSAGE],
        })
    }
}

impl Conn {
    fn valid(&self) -> bool {
        self.pid == sys::getpid() && sys::inode(self.fd) == Some(self.ino)
    }

    fn roundtrip(&mut self, req: Request, fd: Option<RawFd>) -> Result<(Reply, Vec<OwnedFd>), i32> {
        let rec = req.encode().map_err(|_| libc::EINVAL)?;
        fdpass::send_record(self.fd, &rec, fd.as_slice())
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        loop {
            let got = fdpass::recv_record(self.fd, &mut self.buf, 0)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            if got.is_eof() {
                return Err(libc::ECONNRESET);
            }
            if got.truncated {
                return Err(libc::EPROTO);
            }
            match Incoming::decode(&self.buf[..got.len]) {
                Ok(Incoming::Reply(r)) => return Ok((r, got.fds)),
                // The shim never asks for events; skip any.
                Ok(Incoming::Event(_)) => continue,
                Err(_) => return Err(libc::EPROTO),
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.valid() {
            fdtable::mark_private(self.fd, false);
            sys::close(self.fd);
        }
    }
}

/// The live connection (opening it if needed and allowed).
fn connected(link: &mut Link) -> Result<&mut Conn, i32> {
    if !state::in_owner() {
        return Err(libc::ENETUNREACH);
    }
    let now = sys::monotonic_ms();
    let live = match link {
        Link::Up(c) if c.valid() => true,
        Link::Up(c) => {
            debug!(
                "control socket {} was closed behind our back; reconnecting",
                c.fd
            );
            // Not ours any more: forget it without closing whatever has the number now.
            c.pid = 0;
            false
        }
        Link::Down { retry_at_ms } if now < *retry_at_ms => return Err(libc::ENETUNREACH),
        _ => false,
    };
    if !live {
        *link = establish(now)?;
    }
    match link {
        Link::Up(c) => Ok(c),
        _ => Err(libc::ENETUNREACH),
    }
}

/// A new connection and its welcome, or the `Down` state to remember.
fn establish(now: u64) -> Result<Link, i32> {
    let Some(path) = PATH.get().and_then(|p| p.as_ref()) else {
        if !SAID_NO_DAEMON.swap(true, Ordering::Relaxed) {
            debug!("WEFT_SOCKET is not set: everything passes through to the kernel");
        }
        DOWN_UNTIL_MS.store(u64::MAX, Ordering::Relaxed);
        return Ok(Link::Down {
            retry_at_ms: u64::MAX,
        });
    };
    let hello = open(path).and_then(|mut c| {
        let req = Request::Hello {
            kind: ClientKind::Shim,
            pid: c.pid as u32,
        };
        match c.roundtrip(req, None)? {
            (Reply::Welcome(w), _) => Ok((c, w)),
            _ => Err(libc::EPROTO),
        }
    });
    match hello {
        Ok((c, w)) => {
            debug!(
                "connected to the daemon: node {} proxy {} ({} nodes)",
                w.node,
                w.proxy_ip,
                w.nodes.len()
            );
            FD.store(c.fd, Ordering::Relaxed);
            INODE.store(c.ino, Ordering::Relaxed);
            fdtable::mark_private(c.fd, true);
            DOWN_UNTIL_MS.store(0, Ordering::Relaxed);
            EVER_UP.store(true, Ordering::Relaxed);
            view::publish(&w, now);
            Ok(Link::Up(c))
        }
        Err(e) => {
            debug!(
                "daemon at {:?} unreachable (errno {e}): passing through",
                path
            );
            if EVER_UP.load(Ordering::Relaxed) || !crate::log::reported_down_at_start() {
                crate::log::notice(format_args!(
                    "no weftd answers at {} ({}): {}",
                    String::from_utf8_lossy(path.as_bytes()),
                    errno_text(e),
                    fallback_text()
                ));
            }
            DOWN_UNTIL_MS.store(now + RETRY_MS, Ordering::Relaxed);
            Ok(Link::Down {
                retry_at_ms: now + RETRY_MS,
            })
        }
    }
}

fn roundtrip_locked(
    link: &mut LockGuard<'_, Link>,
    req: Request,
    fd: Option<RawFd>,
) -> Result<(Reply, Vec<OwnedFd>), i32> {
    let conn = connected(link)?;
    match conn.roundtrip(req, fd) {
        Ok((Reply::Error { errno, message }, _)) => {
            debug!("daemon refused: {message} (errno {errno})");
            Err(if errno > 0 { errno } else { libc::EIO })
        }
        Ok(r) => Ok(r),
        Err(e) => {
            debug!("control connection failed (errno {e}); will reconnect");
            crate::log::notice(format_args!(
                "lost the connection to weftd ({}): {}",
                errno_text(e),
                fallback_text()
            ));
            let retry_at_ms = sys::monotonic_ms() + RETRY_MS;
            DOWN_UNTIL_MS.store(retry_at_ms, Ordering::Relaxed);
            **link = Link::Down { retry_at_ms };
            Err(libc::ENETUNREACH)
        }
    }
}

/// One request and its reply; an error reply comes back as `Err(errno)`.
pub fn request(req: Request) -> Result<Reply, i32> {
    request_fd(req, None).map(|(r, _)| r)
}

/// One request with an fd attached, and its reply with its first fd, if any.
pub fn request_fd(req: Request, fd: Option<RawFd>) -> Result<(Reply, Option<OwnedFd>), i32> {
    request_fds(req, fd).map(|(r, fds)| (r, fds.into_iter().next()))
}

/// One request with an fd attached, and its reply with every fd on it (a ring grant carries
/// several), in order.
pub fn request_fds(req: Request, fd: Option<RawFd>) -> Result<(Reply, Vec<OwnedFd>), i32> {
    let mut link = CONTROL.lock();
    roundtrip_locked(&mut link, req, fd)
}

/// Makes sure the view of the overlay exists (connecting if needed). `false`: no daemon.
pub fn ensure_view() -> bool {
    if view::present() {
        return true;
    }
    if known_down() {
        return false;
    }
    let mut link = CONTROL.lock();
    connected(&mut link).is_ok()
}

/// This node's address and the daemon's proxy address, if the daemon is reachable.
pub fn local_addresses() -> Option<(Ipv4Addr, Ipv4Addr)> {
    if !ensure_view() {
        return None;
    }
    view::addresses()
}

/// The daemon's proxy address, if we already talked to it (no lock, no connection attempt).
pub fn cached_proxy_ip() -> Option<Ipv4Addr> {
    view::addresses().map(|(_, proxy)| proxy)
}

fn errno_text(e: i32) -> &'static str {
    match e {
        libc::ENOENT => "no such socket",
        libc::ECONNREFUSED => "nothing listens on the socket",
        libc::EACCES | libc::EPERM => "permission denied",
        libc::ETIMEDOUT | libc::EAGAIN => "no reply",
        libc::EPROTO => "unexpected reply",
        _ => "cannot connect",
    }
}

fn fallback_text() -> &'static str {
    if crate::log::strict() {
        "connections to overlay nodes fail (--strict)"
    } else {
        "sockets to overlay nodes use the kernel network instead"
    }
}

/// With `WEFT_STRICT` and no daemon: must a call to `ip` fail rather than go to the kernel?
/// Yes for a node of the last view, and, without any view, for every address off loopback.
pub fn refuse_fallback(ip: Ipv4Addr) -> bool {
    if !crate::log::strict() || ip.is_unspecified() || ip.is_multicast() || !known_down() {
        return false;
    }
    match view::contains(ip) {
        Some(known) => known,
        None => !ip.is_loopback(),
    }
}

/// The daemon is known to be unreachable right now.
fn known_down() -> bool {
    let until = DOWN_UNTIL_MS.load(Ordering::Relaxed);
    until != 0 && (until == u64::MAX || sys::monotonic_ms() < until)
}

/// Is `ip` an overlay destination? A miss refreshes the node list (at most every
/// `REFRESH_MS`), so a node that joined after this process started is found. The common
/// answer ("no", or "yes" for a known node) takes no lock.
pub fn is_overlay(ip: Ipv4Addr) -> bool {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || known_down() {
        return false;
    }
    let now = sys::monotonic_ms();
    match view::contains(ip) {
        Some(true) => return true,
        Some(false) if now.saturating_sub(view::refreshed_ms()) < REFRESH_MS => return false,
        _ => {}
    }
    let mut link = CONTROL.lock();
    let had_view = view::present();
    if connected(&mut link).is_err() {
        return false;
    }
    // Another thread may have refreshed while we waited for the lock.
    if had_view && now.saturating_sub(view::refreshed_ms()) >= REFRESH_MS {
        let nodes = match roundtrip_locked(&mut link, Request::Nodes, None) {
            Ok((Reply::Nodes { nodes }, _)) => Some(nodes),
            _ => None,
        };
        view::refreshed(nodes.as_deref(), now);
    }
    drop(link);
    view::contains(ip) == Some(true)
}
