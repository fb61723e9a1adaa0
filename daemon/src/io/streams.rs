//! Application streams: each overlay session is bound to the daemon's end of an `AF_UNIX`
//! socketpair whose other end is the application's fd (via the shim, or the CLI). Bytes move
//! between the socketpair and the session only as fast as each side takes them, so a slow
//! reader or a congested path pushes back on that one application, nothing else.
//!
//! Connect outcome protocol (see `weft_ipc::control`): the client filled its end with `filler`
//! bytes before handing ours over; we read them away when the session is established (its fd
//! turns writable), or read everything, close our end and remember the errno when it fails.
//!
//! A stream in ring mode (`rings.rs`) moves its bytes through shared memory instead; this file
//! keeps what both modes share (phases, filler, failure, release) and the plain pump, which a
//! detached ring stream falls back to.

use super::rings::{self, RingLink};
use super::{Daemon, STREAM_BASE};
use crate::overlay::SessionId;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant as StdInstant};
use tracing::debug;
use weft_core::Endpoint;
use weft_ipc::ring::Consumer;
use weft_transport::session::{Keepalive, SessionError, SessionEvent, SessionOptions};

const CHUNK: usize = 64 * 1024;
/// How long the outcome of a failed or reset stream stays queryable after we let go of it.
const OUTCOME_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    /// An incoming session injected into a shimmed listener, not yet claimed by `accept`:
    /// nothing moves until the claim says whether the app wants ring mode.
    Unclaimed,
    Established,
}

pub struct AppStream {
    pub id: SessionId,
    pub fd: OwnedFd,
    /// Inode of the application's end (what the shim queries by).
    pub inode: u64,
    /// The uid the session belongs to (who connected, or who listened): only it may ask.
    pub uid: u32,
    pub phase: Phase,
    /// Bytes to read from the socket and drop before anything else: connect filler, or the
    /// credit filler a detached ring stream left behind.
    pub(super) filler_left: usize,
    /// Edge-triggered readiness we have not yet exhausted.
    pub(super) app_readable: bool,
    pub(super) app_writable: bool,
    /// The application half-closed (we sent FIN).
    pub(super) app_eof: bool,
    /// Bytes taken from the session not yet written to the application.
    pub(super) staged: Vec<u8>,
    pub(super) staged_at: usize,
    /// We half-closed toward the application after the peer's FIN.
    pub(super) fin_delivered: bool,
    /// Every holder of the application's end has closed it.
    pub(super) app_closed: bool,
    /// Ring mode, while it lasts.
    pub(super) ring: Option<Box<RingLink>>,
    /// After a detach: TX bytes sealed in the ring, owed to the session before socket data.
    pub(super) tx_leftover: Option<Consumer>,
    /// The ring had already carried the app's end of stream to the session.
    pub(super) tx_leftover_fin_sent: bool,
}

/// Outcome of streams we no longer hold (failed connects, resets), by inode.
pub struct Outcome {
    pub errno: i32,
    pub uid: u32,
    pub expires: StdInstant,
}

pub fn inode_of(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat into a zeroed stat buffer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some(st.st_ino)
    }
}

pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// `socketpair(AF_UNIX, SOCK_STREAM)`: (ours, theirs), both close-on-exec, ours non-blocking.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and ours.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    set_nonblocking(a.as_raw_fd());
    Ok((a, b))
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reading into a valid buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: writing from a valid buffer; MSG_NOSIGNAL so a gone peer is EPIPE, not SIGPIPE.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The program's socket options as the session applies them (kernel units → durations).
pub fn session_options(o: weft_ipc::StreamOptions) -> SessionOptions {
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    SessionOptions {
        user_timeout: (o.user_timeout_ms > 0)
            .then(|| Duration::from_millis(u64::from(o.user_timeout_ms))),
        keepalive: o.keepalive.then(|| Keepalive {
            idle: secs(o.keepidle_s),
            interval: secs(o.keepintvl_s),
            probes: o.keepcnt,
        }),
        nodelay: o.nodelay,
        cork: o.cork,
    }
}

pub fn errno_of(e: SessionError) -> i32 {
    match e {
        SessionError::Refused => libc::ECONNREFUSED,
        SessionError::TimedOut => libc::ETIMEDOUT,
        SessionError::Unreachable => libc::EHOSTUNREACH,
        SessionError::Reset => libc::ECONNRESET,
    }
}

impl Daemon {
    /// Binds a session to the daemon's end of a socketpair; returns the stream's key.
    pub(super) fn attach_stream(
        &mut self,
        id: SessionId,
        fd: OwnedFd,
        inode: u64,
        uid: u32,
        phase: Phase,
        filler: usize,
    ) -> io::Result<u64> {
        set_nonblocking(fd.as_raw_fd());
        let key = self.next_stream;
        self.next_stream += 1;
        self.poll.registry().register(
            &mut SourceFd(&fd.as_raw_fd()),
            Token(STREAM_BASE + key as usize),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.streams.insert(
            key,
            AppStream {
                id,
                fd,
                inode,
                uid,
                phase,
                filler_left: filler,
                app_readable: true,
                app_writable: true,
                app_eof: false,
                staged: Vec::new(),
                staged_at: 0,
                fin_delivered: false,
                app_closed: false,
                ring: None,
                tx_leftover: None,
                tx_leftover_fin_sent: false,
            },
        );
        self.stream_by_session.insert(id, key);
        self.stream_by_inode.insert(inode, key);
        self.dirty_streams.insert(key);
        Ok(key)
    }

    /// `accept` in a shimmed app claimed an injected session: it starts moving, through
    /// rings if the app asked for them and they could be set up. Returns the fds to pass.
    pub(super) fn start_claimed(
        &mut self,
        id: SessionId,
        app_end: RawFd,
        rings: bool,
    ) -> Option<[OwnedFd; 2]> {
        let key = *self.stream_by_session.get(&id)?;
        let s = self.streams.get_mut(&key)?;
        if s.phase != Phase::Unclaimed {
            return None;
        }
        s.phase = Phase::Established;
        self.dirty_streams.insert(key);
        if !rings {
            return None;
        }
        match self.attach_ring(key, Some(app_end)) {
            Ok(fds) => Some(fds),
            Err(e) => {
                debug!(session = id, "no ring for a claimed session: {e}");
                None
            }
        }
    }

    pub(super) fn detach_stream(&mut self, key: u64) -> Option<AppStream> {
        let s = self.streams.remove(&key)?;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&s.fd.as_raw_fd()));
        if let Some(link) = &s.ring {
            self.forget_ring(link);
        }
        self.stream_by_session.remove(&s.id);
        self.stream_by_inode.remove(&s.inode);
        self.dirty_streams.remove(&key);
        Some(s)
    }

    /// The session failed or was reset: the application sees end of file (and EPIPE on
    /// write); the shim's SO_ERROR reports `errno`.
    pub(super) fn fail_stream(&mut self, key: u64, errno: i32) {
        let Some(mut s) = self.detach_stream(key) else {
            return;
        };
        if let Some(mut link) = s.ring.take() {
            // Ring waiters in the app wake to the reset (our end closes below).
            link.reset(errno);
        }
        // Read away filler and unsent data first: closing with unread bytes would turn the
        // application's view into ECONNRESET instead of a clean end of file.
        let mut buf = vec![0u8; CHUNK];
        while matches!(read_fd(s.fd.as_raw_fd(), &mut buf), Ok(n) if n > 0) {}
        self.outcomes.insert(
            s.inode,
            Outcome {
                errno,
                uid: s.uid,
                expires: StdInstant::now() + OUTCOME_TTL,
            },
        );
        debug!(session = s.id, errno, "stream failed");
        // Nobody will hold this session any more (its outcome is kept by inode above): let
        // the node forget it, or it lingers as "closed" forever.
        let now = self.clock.now();
        self.node.session_release(now, s.id);
    }

    /// Readiness on the daemon's end of an application stream. `hung_up` (EPOLLHUP) means
    /// every holder of the application's end closed it; what it wrote before is still ours
    /// to read and forward.
    pub(super) fn stream_event(&mut self, key: u64, readable: bool, writable: bool, hung_up: bool) {
        let Some(s) = self.streams.get_mut(&key) else {
            return;
        };
        s.app_readable |= readable || hung_up;
        s.app_writable |= writable;
        s.app_closed |= hung_up;
        self.dirty_streams.insert(key);
    }

    /// The application is gone: the session finishes (or resets if unread data is left), and
    /// data arriving later resets it (see `released_sessions`).
    pub(super) fn release_session(&mut self, now: weft_core::Instant, id: SessionId) {
        self.node.session_release(now, id);
        self.released_sessions.insert(id);
    }

    /// What the node said about sessions: mark their streams for service.
    pub(super) fn session_event(&mut self, id: SessionId, event: SessionEvent) {
        let Some(&key) = self.stream_by_session.get(&id) else {
            match event {
                SessionEvent::Closed | SessionEvent::Failed(_) => {
                    self.released_sessions.remove(&id);
                    // It may have been waiting for a shimmed listener's accept.
                    self.backlog_forget(id);
                }
                SessionEvent::Readable if self.released_sessions.contains(&id) => {
                    // Nobody will read it, and the peer would wait for window forever.
                    let now = self.clock.now();
                    self.released_sessions.remove(&id);
                    self.node.session_abort(now, id);
                }
                _ => {}
            }
            return;
        };
        match event {
            SessionEvent::Connected => {
                // An unclaimed incoming session stays so until `accept` claims it.
                if let Some(s) = self
                    .streams
                    .get_mut(&key)
                    .filter(|s| s.phase == Phase::Connecting)
                {
                    s.phase = Phase::Established;
                }
            }
            SessionEvent::Failed(e) => return self.fail_stream(key, errno_of(e)),
            SessionEvent::Readable
            | SessionEvent::Writable
            | SessionEvent::PeerFinished
            | SessionEvent::Closed => {}
        }
        self.dirty_streams.insert(key);
    }

    /// Takes what the program has written so far on the stream of `inode` into its session
    /// now, not at the next readiness event.
    pub(super) fn pull_app_bytes(&mut self, inode: u64) {
        let Some(&key) = self.stream_by_inode.get(&inode) else {
            return;
        };
        if let Some(s) = self.streams.get_mut(&key) {
            s.app_readable = true;
        }
        self.service_stream(key);
    }

    /// Moves bytes both ways for every stream that may have work.
    pub(super) fn service_streams(&mut self) {
        for _ in 0..16 {
            let dirty: BTreeSet<u64> = std::mem::take(&mut self.dirty_streams);
            if dirty.is_empty() {
                return;
            }
            for key in dirty {
                self.service_stream(key);
            }
            self.drain_node();
        }
    }

    fn service_stream(&mut self, key: u64) {
        let now = self.clock.now();
        let Some(s) = self.streams.get_mut(&key) else {
            return;
        };
        if s.phase != Phase::Established {
            // A detach (a fork during a non-blocking connect) must not wait for the outcome.
            if s.ring.as_ref().is_some_and(|r| r.detach_requested()) {
                self.detach_ring(key);
            }
            let Some(s) = self.streams.get_mut(&key) else {
                return;
            };
            if s.app_closed {
                // Closed before the handshake finished: abandon the attempt.
                let id = s.id;
                self.detach_stream(key);
                self.release_session(now, id);
            }
            return;
        }
        let Some(mut s) = self.streams.get_mut(&key) else {
            return;
        };
        let (id, fd) = (s.id, s.fd.as_raw_fd());
        // The handshake is done: take the filler away, which makes the app's fd writable.
        while s.filler_left > 0 {
            let want = s.filler_left.min(self.scratch.len());
            match read_fd(fd, &mut self.scratch[..want]) {
                Ok(n) if n > 0 => s.filler_left -= n,
                _ => break,
            }
        }
        if s.ring.is_some() {
            self.service_ring(key);
            return;
        }
        // Session → application.
        while !s.app_closed && s.app_writable {
            if s.staged_at < s.staged.len() {
                match write_fd(fd, &s.staged[s.staged_at..]) {
                    Ok(n) => s.staged_at += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.app_writable = false,
                    Err(_) => s.app_closed = true,
                }
                continue;
            }
            let mut staged = std::mem::take(&mut s.staged);
            staged.resize(CHUNK, 0);
            let n = self.node.session_read(now, id, &mut staged);
            staged.truncate(n);
            let Some(again) = self.streams.get_mut(&key) else {
                return;
            };
            s = again;
            s.staged = staged;
            s.staged_at = 0;
            if n == 0 {
                break;
            }
        }
        if !s.app_closed
            && s.staged_at >= s.staged.len()
            && !s.fin_delivered
            && self.node.session_peer_finished(id)
        {
            // SAFETY: half-closing our own socket: the application reads end of file.
            unsafe { libc::shutdown(fd, libc::SHUT_WR) };
            s.fin_delivered = true;
        }
        // Application → session: what a detached ring still holds goes first, and the socket
        // is read only once the filler before its data is gone.
        if !rings::forward_leftover(&mut self.node, now, s) || s.filler_left > 0 {
            return;
        }
        while s.app_readable && !s.app_eof {
            let cap = self.node.session_send_capacity(id).min(self.scratch.len());
            if cap == 0 {
                break;
            }
            match read_fd(fd, &mut self.scratch[..cap]) {
                Ok(0) => s.app_eof = true,
                Ok(n) => {
                    self.node.session_write(now, id, &self.scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.app_readable = false,
                Err(_) => {
                    s.app_eof = true;
                    s.app_closed = true;
                }
            }
            let Some(again) = self.streams.get_mut(&key) else {
                return;
            };
            s = again;
            if s.app_eof && !s.app_closed {
                // Half-close: the peer reads end of file, we may still deliver to the app.
                self.node.session_shutdown(now, id);
                let Some(again) = self.streams.get_mut(&key) else {
                    return;
                };
                s = again;
            }
        }
        if s.app_closed && s.app_eof {
            // Everything the application wrote is in the session: let it finish (or reset it
            // if unread data was left, as closing a TCP socket would).
            self.detach_stream(key);
            self.release_session(now, id);
            debug!(session = id, "application closed its stream");
        }
    }

    /// Drops remembered outcomes nobody asked about in time.
    pub(super) fn expire_outcomes(&mut self) {
        let now = StdInstant::now();
        self.outcomes.retain(|_, o| o.expires > now);
    }

    /// `ConnectStatus{inode}`: the owner's uid and the outcome so far.
    pub(super) fn connect_status(&self, inode: u64) -> Option<(u32, Option<i32>)> {
        if let Some(s) = self.stream_by_inode.get(&inode).map(|k| &self.streams[k]) {
            return Some((
                s.uid,
                match s.phase {
                    Phase::Connecting => None,
                    Phase::Unclaimed | Phase::Established => Some(0),
                },
            ));
        }
        self.outcomes.get(&inode).map(|o| (o.uid, Some(o.errno)))
    }

    /// The session behind the application's end `inode`, and its owner's uid.
    pub(super) fn stream_session(&self, inode: u64) -> Option<(SessionId, u32)> {
        self.stream_by_inode.get(&inode).map(|k| {
            let s = &self.streams[k];
            (s.id, s.uid)
        })
    }

    pub(super) fn remote_of(&self, id: SessionId) -> Option<(Endpoint, Endpoint)> {
        self.node.session_stats(id).map(|(l, r, _)| (l, r))
    }
}
