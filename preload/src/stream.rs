//! Outbound overlay streams: `connect()` to an overlay node turns the program's fd into one
//! end of an `AF_UNIX` socketpair whose other end the daemon pumps into an overlay session.
//!
//! The kernel keeps all readiness: the app end's send buffer is filled to `EAGAIN` with
//! filler bytes before the hand-over, so the fd is neither readable nor writable until the
//! daemon either drains exactly that filler (established: `POLLOUT`, an `EPOLLOUT` edge) or
//! shuts its end down (failed: `POLLHUP`). The outcome itself comes from `ConnectStatus`.
//! `dup3` carries the fd number, `FD_CLOEXEC`, the `F_GETFL` flags (per open file
//! description, so lost by `dup3`) and the epoll registrations made before `connect`.

use crate::fdtable::{self, Carry, Kind};
use crate::guard::{errno, fail};
use crate::interrupt::{SignalsHeld, Wait};
use crate::log::debug;
use crate::sockopt::{Opts, TcpState};
use crate::{control, real, state, sys};
use libc::c_int;
use std::os::fd::OwnedFd;
use weft_core::Endpoint;
use weft_ipc::{Reply, Request, SessionInfo, StreamOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectState {
    Pending,
    /// `acknowledged` once `connect()` itself has returned 0: a later `connect` is `EISCONN`.
    Established {
        acknowledged: bool,
    },
    /// `reported` once `SO_ERROR` or `connect` handed the errno to the program.
    Failed {
        errno: i32,
        reported: bool,
    },
}

impl ConnectState {
    pub fn tcp_state(self) -> TcpState {
        match self {
            ConnectState::Pending => TcpState::SynSent,
            ConnectState::Established { .. } => TcpState::Established,
            ConnectState::Failed { .. } => TcpState::Close,
        }
    }
}

/// A transplanted session, as the shim remembers it.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Inode of the app end: the daemon's key for every query about it.
    pub inode: u64,
    /// `AF_INET` or `AF_INET6`: the family the program created, used for every name.
    pub domain: c_int,
    pub state: ConnectState,
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
    pub opts: Opts,
    /// End of file was seen and the daemon asked once whether the session failed.
    pub eof_checked: bool,
}

/// The stream state of `fd`, if it is a session. Checked against the descriptor's inode: a
/// session closed behind our back (stdio's `fclose`, a raw syscall) must not lend its state to
/// whatever reused the number (a socketpair, a received fd).
pub fn get(fd: c_int) -> Option<Stream> {
    if fdtable::flags(fd) & fdtable::TRACKED == 0 {
        return None;
    }
    let s = match state::lock().table.get(fd) {
        Some(Kind::Stream(s)) => (**s).clone(),
        _ => return None,
    };
    if sys::inode(fd) == Some(s.inode) {
        Some(s)
    } else {
        crate::release::forget_stale(fd);
        None
    }
}

/// `fd` is a session (without copying its state out).
pub fn is_session(fd: c_int) -> bool {
    fdtable::flags(fd) & fdtable::TRACKED != 0
        && matches!(state::lock().table.get(fd), Some(Kind::Stream(_)))
        && get(fd).is_some()
}

/// Changes the state of `fd`'s session if it is still the same session (`inode`).
fn update(fd: c_int, inode: u64, f: impl FnOnce(&mut Stream)) {
    if let Some(Kind::Stream(s)) = state::lock().table.get_mut(fd) {
        if s.inode == inode {
            f(s);
        }
    }
}

fn query_status(inode: u64) -> ConnectState {
    match control::request(Request::ConnectStatus { inode }) {
        Ok(Reply::ConnectStatus { result: None }) => ConnectState::Pending,
        Ok(Reply::ConnectStatus { result: Some(0) }) => ConnectState::Established {
            acknowledged: false,
        },
        Ok(Reply::ConnectStatus { result: Some(e) }) => ConnectState::Failed {
            errno: e,
            reported: false,
        },
        Ok(_) => ConnectState::Failed {
            errno: libc::EPROTO,
            reported: false,
        },
        Err(e) => ConnectState::Failed {
            errno: e,
            reported: false,
        },
    }
}

/// The fd shows the outcome (writable, hung up or in error).
fn signalled(fd: c_int) -> bool {
    sys::poll_one(fd, libc::POLLOUT, 0)
        .is_ok_and(|r| r & (libc::POLLOUT | libc::POLLHUP | libc::POLLERR) != 0)
}

/// Brings a pending connect up to date without blocking; returns the session as it is now.
pub fn settle(fd: c_int) -> Option<Stream> {
    let s = get(fd)?;
    if s.state != ConnectState::Pending || !signalled(fd) {
        return Some(s);
    }
    let now = query_status(s.inode);
    update(fd, s.inode, |st| {
        if st.state == ConnectState::Pending {
            st.state = now;
        }
    });
    get(fd)
}

/// Waits (blocking connect) for the outcome, with the kernel's answers: `EINTR` when a signal
/// interrupts it (unless the kernel would restart), `EINPROGRESS` when `SO_SNDTIMEO` runs out;
/// the connect then goes on in the background.
fn wait_outcome(fd: c_int, inode: u64, timeout_ms: c_int, held: &SignalsHeld) -> c_int {
    // The daemon records the outcome before it signals the fd; allow it a moment if a query
    // still races the signal.
    let mut unsettled_polls = 0;
    loop {
        match held.wait(fd, libc::POLLOUT, timeout_ms) {
            Err(e) => return fail(e),
            Ok(Wait::TimedOut) => return fail(libc::EINPROGRESS),
            Ok(Wait::Interrupted) => return fail(libc::EINTR),
            Ok(Wait::Ready(_)) => {}
        }
        match query_status(inode) {
            ConnectState::Pending if unsettled_polls < 200 => {
                unsettled_polls += 1;
                // SAFETY: plain sleep.
                unsafe { libc::usleep(5_000) };
            }
            ConnectState::Pending => {
                update(fd, inode, |s| {
                    s.state = ConnectState::Failed {
                        errno: libc::ECONNRESET,
                        reported: true,
                    }
                });
                return fail(libc::ECONNRESET);
            }
            ConnectState::Established { .. } => {
                update(fd, inode, |s| {
                    s.state = ConnectState::Established { acknowledged: true }
                });
                return 0;
            }
            ConnectState::Failed { errno: e, .. } => {
                update(fd, inode, |s| {
                    s.state = ConnectState::Failed {
                        errno: e,
                        reported: true,
                    }
                });
                return fail(e);
            }
        }
    }
}

/// `SO_SNDTIMEO` as a poll timeout (`-1`: none).
fn send_timeout_ms(fd: c_int) -> c_int {
    match sys::sockopt_raw::<libc::timeval>(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO) {
        Some(tv) if tv.tv_sec > 0 || tv.tv_usec > 0 => {
            (tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000).min(c_int::MAX as i64) as c_int
        }
        _ => -1,
    }
}

static FILLER: [u8; 65536] = [0; 65536];

/// Fills `fd`'s send buffer until `EAGAIN`; returns how many bytes that took.
fn fill(fd: c_int) -> Result<u32, i32> {
    let mut total: u64 = 0;
    loop {
        // SAFETY: writing from a static buffer.
        let n = unsafe {
            libc::send(
                fd,
                FILLER.as_ptr() as *const libc::c_void,
                FILLER.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            total += n as u64;
            continue;
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return u32::try_from(total).map_err(|_| libc::ENOBUFS),
            e => return Err(e),
        }
    }
}

fn socketpair() -> Result<(c_int, c_int), i32> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc == 0 {
        Ok((fds[0], fds[1]))
    } else {
        Err(errno())
    }
}

/// Socket-level options a program may have set that the socketpair end must keep.
fn copy_socket_options(from: c_int, to: c_int) {
    for name in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        if let Some(tv) = sys::sockopt_raw::<libc::timeval>(from, libc::SOL_SOCKET, name) {
            if tv.tv_sec != 0 || tv.tv_usec != 0 {
                sys::set_sockopt_raw(to, libc::SOL_SOCKET, name, &tv);
            }
        }
    }
    if let Some(l) = sys::sockopt_raw::<libc::linger>(from, libc::SOL_SOCKET, libc::SO_LINGER) {
        if l.l_onoff != 0 {
            sys::set_sockopt_raw(to, libc::SOL_SOCKET, libc::SO_LINGER, &l);
        }
    }
    for name in [libc::SO_KEEPALIVE, libc::SO_PRIORITY, libc::SO_OOBINLINE] {
        if let Some(v) = sys::sockopt_int(from, libc::SOL_SOCKET, name) {
            if v != 0 {
                sys::set_sockopt_int(to, libc::SOL_SOCKET, name, v);
            }
        }
    }
}

/// Applies the buffer sizes the program asked for. Over `AF_UNIX` only the sender's buffer
/// limits a direction, so the receive size also goes to the daemon end's send side.
pub fn apply_buffers(carry: &Carry, app: c_int, daemon: Option<c_int>) {
    if let Some(b) = carry.sndbuf {
        sys::set_sockopt_int(app, libc::SOL_SOCKET, libc::SO_SNDBUF, b);
    }
    if let Some(b) = carry.rcvbuf {
        sys::set_sockopt_int(app, libc::SOL_SOCKET, libc::SO_RCVBUF, b);
        if let Some(d) = daemon {
            sys::set_sockopt_int(d, libc::SOL_SOCKET, libc::SO_SNDBUF, b);
        }
    }
}

/// Puts the session now on `fd` into ring mode with the memfd and eventfd the daemon granted;
/// when that fails the session is shut down (the daemon already runs it in ring mode).
pub fn install_ring(fd: c_int, fds: Vec<OwnedFd>, established: bool, carry: &Carry) {
    let mut fds = fds.into_iter();
    let installed = match (fds.next(), fds.next()) {
        (Some(memfd), Some(wake)) => {
            crate::rings::install(fd, memfd, wake, established, carry.sndbuf, carry.rcvbuf)
        }
        _ => Err(libc::EPROTO),
    };
    if let Err(e) = installed {
        // The daemon moves this session's bytes through the region now: without it the
        // socket would stay silent. End the session visibly instead (EOF, EPIPE).
        debug!("fd {fd}: ring region unusable (errno {e}); session shut down");
        restore_sndbuf(fd, carry);
        // SAFETY: shutdown on the session's own fd.
        unsafe { real::shutdown(fd, libc::SHUT_RDWR) };
    }
}

/// Plain mode after asking for rings: the send buffer goes back to what the program wanted.
fn restore_sndbuf(fd: c_int, carry: &Carry) {
    let size = carry
        .sndbuf
        .unwrap_or_else(crate::rings::default_sndbuf_request);
    sys::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size);
}

/// A socket can become a session only while the kernel has not started anything on it
/// (`TCP_CLOSE`): otherwise the kernel's own answer (`EISCONN`, `EALREADY`) stands.
fn is_fresh_tcp(fd: c_int) -> bool {
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: info is a writable buffer of len bytes.
    let rc = unsafe {
        real::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    rc == 0 && len >= 1 && info[0] == TcpState::Close as u8
}

/// `connect()` of a stream socket to an overlay endpoint.
pub fn connect(fd: c_int, domain: c_int, dst: Endpoint) -> c_int {
    // A blocking connect holds signals from its start, so one that arrives while the session
    // is being set up interrupts it just as one during the wait does.
    // SAFETY: F_GETFL on the program's fd.
    let blocking = unsafe { real::fcntl(fd, libc::F_GETFL, 0) } & libc::O_NONBLOCK == 0;
    let held = blocking.then(SignalsHeld::new);
    if !is_fresh_tcp(fd) {
        drop(held);
        return pass_connect(fd, domain, dst);
    }
    let carry = take_carry(fd);
    let opts = Opts::snapshot(fd, domain);
    transplant(fd, domain, dst, carry, opts, held)
}

/// The kernel's answer for a socket that is not ours to redirect.
fn pass_connect(fd: c_int, domain: c_int, dst: Endpoint) -> c_int {
    let (ss, len) = crate::addr::encode(domain, dst.socket_addr());
    // SAFETY: a valid sockaddr of the given length.
    unsafe { real::connect(fd, &ss as *const _ as *const libc::sockaddr, len) }
}

fn take_carry(fd: c_int) -> Carry {
    fdtable::mark_candidate(fd, false);
    let mut st = state::lock();
    match st.table.get_mut(fd) {
        Some(Kind::Unconnected(c)) => std::mem::take(c),
        _ => Carry::default(),
    }
}

fn transplant(
    fd: c_int,
    domain: c_int,
    dst: Endpoint,
    carry: Carry,
    opts: Opts,
    held: Option<SignalsHeld>,
) -> c_int {
    // SAFETY: fcntl queries on the program's fd.
    let (status_flags, fd_flags) = unsafe {
        (
            real::fcntl(fd, libc::F_GETFL, 0),
            real::fcntl(fd, libc::F_GETFD, 0),
        )
    };
    if status_flags < 0 || fd_flags < 0 {
        return fail(errno());
    }

    let timeout_ms = send_timeout_ms(fd);
    let local_port = sys::local_addr(fd)
        .and_then(|(ss, len)| crate::addr::parse_storage(&ss, len))
        .map(|a| a.port)
        .filter(|&p| p != 0);
    let (app, daemon_end) = match socketpair() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let rings = crate::rings::wanted_for(fd);
    if rings {
        // Ring mode: the socket carries only doorbells and credit filler, and its send buffer
        // must be small so a little filler makes it unwritable; the program's sizes are kept
        // for reporting and for after a detach.
        let ring_carry = Carry {
            sndbuf: None,
            ..carry.clone()
        };
        apply_buffers(&ring_carry, app, Some(daemon_end));
        sys::set_sockopt_int(
            app,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            crate::rings::APP_SNDBUF,
        );
    } else {
        apply_buffers(&carry, app, Some(daemon_end));
    }
    copy_socket_options(fd, app);
    let filler = match fill(app) {
        Ok(n) => n,
        Err(e) => {
            sys::close(app);
            sys::close(daemon_end);
            return fail(e);
        }
    };
    let inode = sys::inode(app).unwrap_or(0);
    let reply = control::request_fds(
        Request::Connect {
            dst,
            local_port,
            filler,
            inode,
            rings,
        },
        Some(daemon_end),
    );
    sys::close(daemon_end);
    let (local, ring_fds) = match reply {
        Ok((Reply::Connecting { local, rings }, fds)) => (local, rings.then_some(fds)),
        Ok(_) => {
            sys::close(app);
            return fail(libc::EPROTO);
        }
        Err(e) => {
            sys::close(app);
            debug!(
                "connect fd {fd} to {} refused by the daemon: errno {e}",
                dst.socket_addr()
            );
            return fail(e);
        }
    };
    let cloexec = if fd_flags & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: replacing the program's fd with the app end, then restoring its flags.
    unsafe {
        if real::dup3(app, fd, cloexec) < 0 {
            let e = errno();
            real::close(app);
            return fail(e);
        }
        real::close(app);
        real::fcntl(fd, libc::F_SETFL, status_flags as libc::c_ulong);
        for reg in &carry.epoll {
            let mut ev = libc::epoll_event {
                events: reg.events,
                u64: reg.data,
            };
            if real::epoll_ctl(reg.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) != 0 {
                debug!(
                    "re-adding fd {fd} to epoll {} failed: errno {}",
                    reg.epfd,
                    errno()
                );
            }
        }
    }
    debug!(
        "fd {fd} → overlay session to {} (local {}, filler {filler})",
        dst.socket_addr(),
        local.socket_addr()
    );
    let opts_now = opts.clone();
    let stream = Stream {
        inode,
        domain,
        state: ConnectState::Pending,
        local: Some(local),
        remote: Some(dst),
        opts,
        eof_checked: false,
    };
    let released = {
        let mut st = state::lock();
        // Under the state lock: a fork's detach sweep runs under it too.
        if let Some(fds) = ring_fds {
            install_ring(fd, fds, false, &carry);
        } else if rings {
            restore_sndbuf(fd, &carry);
        }
        st.table.set(fd, Kind::Stream(Box::new(stream)))
    };
    crate::release::release(released);
    push_options(fd, inode, &opts_now, true);
    match held {
        Some(held) => wait_outcome(fd, inode, timeout_ms, &held),
        None => fail(libc::EINPROGRESS),
    }
}

/// `connect()` again on a session: the kernel's answers for each stage.
pub fn reconnect(fd: c_int, s: Stream, dst: Option<Endpoint>) -> c_int {
    match s.state {
        ConnectState::Pending => {
            // SAFETY: F_GETFL on the program's fd.
            let nonblocking = unsafe { real::fcntl(fd, libc::F_GETFL, 0) } & libc::O_NONBLOCK != 0;
            if nonblocking {
                match settle(fd).map(|s| s.state) {
                    Some(ConnectState::Pending) | None => fail(libc::EALREADY),
                    Some(_) => reconnect_settled(fd, s.inode),
                }
            } else {
                let held = SignalsHeld::new();
                wait_outcome(fd, s.inode, send_timeout_ms(fd), &held)
            }
        }
        ConnectState::Established { .. }
        | ConnectState::Failed {
            reported: false, ..
        } => reconnect_settled(fd, s.inode),
        ConnectState::Failed { reported: true, .. } => {
            // The kernel lets a failed socket try again (to any address).
            match dst {
                Some(dst) => {
                    // SAFETY: F_GETFL on the program's fd.
                    let blocking =
                        unsafe { real::fcntl(fd, libc::F_GETFL, 0) } & libc::O_NONBLOCK == 0;
                    let held = blocking.then(SignalsHeld::new);
                    transplant(fd, s.domain, dst, Carry::default(), s.opts, held)
                }
                None => fail(libc::ECONNABORTED),
            }
        }
    }
}

fn reconnect_settled(fd: c_int, inode: u64) -> c_int {
    let mut out = 0;
    update(fd, inode, |s| match s.state {
        ConnectState::Established {
            acknowledged: false,
        } => {
            s.state = ConnectState::Established { acknowledged: true };
        }
        ConnectState::Established { acknowledged: true } => out = libc::EISCONN,
        ConnectState::Failed {
            errno: e,
            reported: false,
        } => {
            s.state = ConnectState::Failed {
                errno: e,
                reported: true,
            };
            out = e;
        }
        ConnectState::Failed { .. } => out = libc::ECONNABORTED,
        ConnectState::Pending => out = libc::EALREADY,
    });
    if out == 0 {
        0
    } else {
        fail(out)
    }
}

/// `getsockopt(SO_ERROR)` on a session: the connect's errno once, like the kernel.
pub fn so_error(fd: c_int) -> c_int {
    let Some(s) = settle(fd) else { return 0 };
    let mut out = 0;
    update(fd, s.inode, |st| {
        if let ConnectState::Failed {
            errno: e,
            reported: false,
        } = st.state
        {
            st.state = ConnectState::Failed {
                errno: e,
                reported: true,
            };
            out = e;
        }
    });
    // The socketpair's own pending error (ECONNRESET when the daemon dropped unread filler)
    // is consumed either way, so reads later see plain EOF.
    let own = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR).unwrap_or(0);
    if out != 0 {
        out
    } else if matches!(s.state, ConnectState::Failed { .. }) {
        0
    } else {
        own
    }
}

/// End of file (a read returned 0, or a write `EPIPE`) on an established session: if the
/// session timed out (user timeout, keepalive: `ETIMEDOUT`, or `EHOSTUNREACH` with no route
/// left), the errno the kernel's socket would report, once, as its pending error; later
/// calls see plain end of file. A session that ended otherwise is asked about once.
pub fn eof_error(fd: c_int) -> Option<i32> {
    let s = get(fd)?;
    if s.eof_checked || !matches!(s.state, ConnectState::Established { .. }) {
        return None;
    }
    let e = match control::request(Request::ConnectStatus { inode: s.inode }) {
        // Still running: a zero-length read, or the peer's FIN (asked again next time).
        Ok(Reply::ConnectStatus { result: Some(0) }) => return None,
        Ok(Reply::ConnectStatus {
            result: Some(e @ (libc::ETIMEDOUT | libc::EHOSTUNREACH)),
        }) => e,
        _ => {
            update(fd, s.inode, |st| st.eof_checked = true);
            return None;
        }
    };
    update(fd, s.inode, |st| {
        st.state = ConnectState::Failed {
            errno: e,
            reported: true,
        }
    });
    debug!("fd {fd}: session timed out (errno {e})");
    Some(e)
}

/// Tells the daemon the options of the session on `fd` that change what it does (user
/// timeout, keepalive, Nagle, cork). `only_if_set`: skip it at a fresh connect or accept
/// when none is set (the session then sends as with `TCP_NODELAY`: no round trip to the
/// daemon for programs that set nothing; preload/README.md).
pub fn push_options(fd: c_int, inode: u64, opts: &Opts, only_if_set: bool) {
    let keepalive =
        sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE).is_some_and(|v| v != 0);
    let options = opts.stream_options(keepalive);
    push_stream_options(fd, inode, options, only_if_set);
}

/// Before a write on `fd`: with `MSG_MORE` on a session, the daemon corks it first (once per
/// run of such writes), so the bytes wait for the rest as the kernel's would.
pub fn more_before(fd: c_int, flags: c_int) {
    if flags & libc::MSG_MORE == 0 || fdtable::flags(fd) & fdtable::MORE != 0 {
        return;
    }
    let Some(s) = get(fd) else { return };
    let keepalive =
        sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE).is_some_and(|v| v != 0);
    let options = StreamOptions {
        cork: true,
        ..s.opts.stream_options(keepalive)
    };
    push_stream_options(fd, s.inode, options, false);
    fdtable::mark_more(fd, true);
}

/// After a write on `fd`: the first one without `MSG_MORE` after a run of them ends the
/// run; the program's own `TCP_CORK` setting applies again (and pushes what waited).
pub fn more_after(fd: c_int, flags: c_int) {
    if flags & libc::MSG_MORE != 0 || fdtable::flags(fd) & fdtable::MORE == 0 {
        return;
    }
    fdtable::mark_more(fd, false);
    if let Some(s) = get(fd) {
        push_options(fd, s.inode, &s.opts, false);
    }
}

fn push_stream_options(fd: c_int, inode: u64, options: StreamOptions, only_if_set: bool) {
    if only_if_set && !options.keepalive && options.user_timeout_ms == 0 && !options.cork {
        return;
    }
    if let Err(e) = control::request(Request::SessionOptions { inode, options }) {
        debug!("fd {fd}: session options not applied (errno {e})");
    }
}

/// The daemon's figures for a session.
pub fn session_info(inode: u64) -> Option<SessionInfo> {
    match control::request(Request::SessionInfo { inode }) {
        Ok(Reply::Session(info)) => Some(info),
        _ => None,
    }
}

/// Is `fd`, which the shim has no record of, a session the daemon knows (inherited across
/// exec, received with `SCM_RIGHTS`)? Only unnamed `AF_UNIX` stream sockets can be; the
/// answer is remembered either way, so each descriptor is asked about once.
pub fn adopt(fd: c_int) -> Option<Stream> {
    if !state::in_owner() || matches!(state::lock().table.get(fd), Some(Kind::Foreign)) {
        return None;
    }
    let (ss, len) = sys::local_addr(fd)?;
    let unnamed_unix = ss.ss_family as c_int == libc::AF_UNIX
        && len as usize == std::mem::size_of::<libc::sa_family_t>();
    if !unnamed_unix
        || sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
        || !control::ensure_view()
    {
        return None;
    }
    let inode = sys::socket_inode(fd)?;
    let kind = match session_info(inode) {
        Some(i) if i.remote.is_some() => Kind::Stream(Box::new(Stream {
            inode,
            domain: libc::AF_INET,
            state: if i.established {
                ConnectState::Established { acknowledged: true }
            } else {
                ConnectState::Pending
            },
            local: i.local,
            remote: i.remote,
            opts: Opts::default(),
            eof_checked: false,
        })),
        _ => Kind::Foreign,
    };
    let released = state::lock().table.set(fd, kind);
    crate::release::release(released);
    get(fd)
}
