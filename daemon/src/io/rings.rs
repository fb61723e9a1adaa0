//! Ring mode for application streams: the session's bytes move through a shared-memory region
//! (`weft_ipc::ring`) instead of the socketpair, which stays the application's fd and its only
//! readiness source (doorbell bytes toward the app, credit filler from it). The app wakes us
//! through the region's eventfd; we drain TX into the session and fill RX from it in batches,
//! without a system call per message while both sides are busy.
//!
//! The steps follow the protocol in the `weft_ipc::ring` module docs; this file only adds the
//! event loop's bookkeeping. A detach (the shim revoking ring mode on fork, dup, exec, fd
//! passing or stdio) turns the stream into a plain one: the final doorbell and the RX
//! remainder go out before live data, the filler written before the seal is dropped and the TX
//! ring's last bytes reach the session before anything read from the socket.

use super::streams::AppStream;
use super::{Daemon, RING_BASE};
use crate::overlay::{Node, SessionId};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use serde::Serialize;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tracing::{debug, warn};
use weft_core::Instant;
use weft_ipc::ring::{
    DaemonEnd, FillerAction, ProducerEnd, RegionKind, RingError, SharedRegion, WaitDecision, Wakeup,
};

/// Bytes in each direction's ring. Large enough that a 64 KiB write and the daemon's batches
/// pipeline; small enough that a thousand sessions fit comfortably in memory.
pub const RING_CAPACITY: u32 = 512 * 1024;
/// The app end's send buffer in ring mode: small, so a little credit filler makes the fd
/// unwritable (the kernel rounds it up to its minimum).
pub const APP_SNDBUF: libc::c_int = 1;
/// Passes over one stream per service call before other work gets a turn.
const ROUNDS: usize = 8;

/// What a ring-mode stream holds besides its socketpair end.
pub struct RingLink {
    end: DaemonEnd,
    /// The region's eventfd: the app writes it to wake us.
    wake: OwnedFd,
    /// Our socket end turned readable and we have not drained it since (edge-triggered epoll:
    /// the readiness must be remembered; it means credit filler is waiting).
    socket_readable: bool,
    /// The app closed TX (`shutdown(SHUT_WR)`) and the session has its FIN.
    fin_sent: bool,
    /// RX carries the end of stream (the peer finished).
    rx_closed: bool,
    /// A doorbell the app is owed found its socket full: rung again once it is writable (the
    /// app counts on one byte per arm it sees taken).
    doorbell_pending: bool,
}

/// Figures for `weft status`.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RingCounters {
    /// Streams that ran in ring mode, ever.
    pub attached: u64,
    /// Of those, detached to plain socketpair bytes at the app's request.
    pub detached: u64,
    /// Reset because a ring was corrupted or the protocol broken.
    pub corrupted: u64,
    /// Doorbell bytes written to apps.
    pub doorbells: u64,
    /// Times an app's eventfd woke us.
    pub wakeups: u64,
    /// Times credit filler was drained (a blocked app writer released).
    pub filler_drains: u64,
    /// Bytes moved app → session and session → app through rings.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// What a pass over a ring stream asks its caller to do next.
enum Next {
    /// Nothing more until the next event.
    Wait,
    /// The app asked to leave ring mode.
    Detach,
    /// The app has closed its end and everything it published reached the session.
    Release,
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn reset_eventfd(fd: RawFd) {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64; EAGAIN (nothing pending) is fine.
    unsafe { libc::read(fd, &mut value as *mut u64 as *mut libc::c_void, 8) };
}

/// One doorbell byte; `Err` when the app's end is gone.
fn send_doorbell(fd: RawFd) -> Result<bool, ()> {
    let byte = [1u8];
    // SAFETY: sending one byte from a live buffer.
    let n = unsafe {
        libc::send(
            fd,
            byte.as_ptr() as *const libc::c_void,
            1,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n == 1 {
        return Ok(true);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(false),
        _ => Err(()),
    }
}

/// Reads everything waiting in our socket end (credit filler). Returns the byte count and
/// whether the app's side has shut down (end of file).
fn drain_socket(fd: RawFd, scratch: &mut [u8]) -> (u64, bool) {
    let mut total = 0u64;
    loop {
        // SAFETY: reading into a live buffer.
        let n = unsafe {
            libc::recv(
                fd,
                scratch.as_mut_ptr() as *mut libc::c_void,
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return (total, true),
            n if n > 0 => total += n as u64,
            _ => {
                let e = io::Error::last_os_error().raw_os_error();
                if e == Some(libc::EINTR) {
                    continue;
                }
                return (total, e != Some(libc::EAGAIN));
            }
        }
    }
}

/// App → session, as much as the session takes; returns the bytes moved.
fn forward_tx(
    node: &mut Node,
    now: Instant,
    id: SessionId,
    end: &mut DaemonEnd,
) -> Result<usize, RingError> {
    let mut moved = 0;
    loop {
        let cap = node.session_send_capacity(id);
        if cap == 0 {
            return Ok(moved);
        }
        let grant = end.tx().read_grant()?;
        if grant.is_empty() {
            return Ok(moved);
        }
        let mut taken = 0;
        {
            let (a, b) = grant.as_slices();
            for piece in [a, b] {
                if taken >= cap || piece.is_empty() {
                    break;
                }
                let want = piece.len().min(cap - taken);
                let n = node.session_write(now, id, &piece[..want]);
                taken += n;
                if n < want {
                    break;
                }
            }
        }
        grant.consume(taken)?;
        if taken == 0 {
            return Ok(moved);
        }
        moved += taken;
    }
}

impl RingLink {
    /// Counts and writes a doorbell if the app sleeps on an empty RX. `Err`: the app is gone.
    fn ring_doorbell(&mut self, fd: RawFd, counters: &mut RingCounters) -> Result<(), ()> {
        if self.end.after_rx_publish() == Wakeup::Needed {
            self.doorbell_pending = true;
        }
        self.flush_doorbell(fd, counters)
    }

    /// Writes the owed doorbell, if any and if the socket takes it.
    fn flush_doorbell(&mut self, fd: RawFd, counters: &mut RingCounters) -> Result<(), ()> {
        if self.doorbell_pending && send_doorbell(fd)? {
            self.doorbell_pending = false;
            self.end.doorbell_written();
            counters.doorbells += 1;
        }
        Ok(())
    }

    /// Session → app, as much as RX holds; returns the bytes moved. `app_gone` is set when
    /// a doorbell cannot be delivered.
    fn fill_rx(
        &mut self,
        node: &mut Node,
        now: Instant,
        id: SessionId,
        fd: RawFd,
        counters: &mut RingCounters,
        app_gone: &mut bool,
    ) -> Result<usize, RingError> {
        let mut moved = 0;
        // A detach request makes every RX wait step answer Retry: leave it to the caller.
        while !self.rx_closed && !self.end.app_requested_detach() {
            let pending = node.session_readable(id);
            if pending == 0 {
                if node.session_peer_finished(id) {
                    if self.end.close_rx()? == Wakeup::Needed {
                        self.doorbell_pending = true;
                    }
                    if self.flush_doorbell(fd, counters).is_err() {
                        *app_gone = true;
                    }
                    self.rx_closed = true;
                }
                break;
            }
            if self.end.rx().writable()? == 0 {
                // Wake-up once a good batch fits, not for every byte the app reads.
                let need = pending.min(self.end.rx().capacity() / 4).max(1);
                match self.end.prepare_rx_full(need)? {
                    WaitDecision::Retry => continue,
                    WaitDecision::Sleep => break,
                }
            }
            let mut grant = self.end.rx().write_grant()?;
            let n = {
                let (a, b) = grant.as_mut_slices();
                let mut n = node.session_read(now, id, a);
                if n == a.len() && !b.is_empty() {
                    n += node.session_read(now, id, b);
                }
                n
            };
            grant.commit(n)?;
            if n == 0 {
                break;
            }
            moved += n;
            if self.ring_doorbell(fd, counters).is_err() {
                *app_gone = true;
            }
        }
        Ok(moved)
    }

    /// One service pass: TX into the session, filler, RX from the session, until idle.
    fn pump(
        &mut self,
        node: &mut Node,
        now: Instant,
        s: &mut StreamSide,
        scratch: &mut [u8],
        counters: &mut RingCounters,
    ) -> Result<Next, RingError> {
        reset_eventfd(self.wake.as_raw_fd());
        if self.flush_doorbell(s.fd, counters).is_err() {
            s.app_closed = true;
        }
        for _ in 0..ROUNDS {
            if self.end.app_requested_detach() {
                return Ok(Next::Detach);
            }
            let sent = forward_tx(node, now, s.id, &mut self.end)?;
            counters.tx_bytes += sent as u64;
            match self.end.filler_action(self.socket_readable)? {
                FillerAction::Drain => {
                    // Everything in the socket is filler: in ring mode the app writes nothing
                    // else there. End of file only means it shut its side down, which its
                    // TX ring also says.
                    let (n, _eof) = drain_socket(s.fd, scratch);
                    self.end.filler_drained(n);
                    self.socket_readable = false;
                    counters.filler_drains += 1;
                }
                FillerAction::Hold | FillerAction::Nothing => {}
            }
            let tx_end = self.end.tx().producer_end()?;
            let tx_left = self.end.tx().readable()?;
            if tx_end == ProducerEnd::Closed && tx_left == 0 && !self.fin_sent {
                node.session_shutdown(now, s.id);
                self.fin_sent = true;
            }
            if s.app_closed {
                // Nobody reads RX any more; what the app published still goes out.
                if tx_left == 0 {
                    return Ok(Next::Release);
                }
                return Ok(Next::Wait);
            }
            let mut app_gone = false;
            let received = self.fill_rx(node, now, s.id, s.fd, counters, &mut app_gone)?;
            counters.rx_bytes += received as u64;
            if app_gone {
                s.app_closed = true;
                continue;
            }
            if sent > 0 || received > 0 {
                continue;
            }
            // Idle. TX bytes the session had no room for wait for its Writable event.
            if tx_left > 0 || tx_end != ProducerEnd::Open {
                return Ok(Next::Wait);
            }
            match self.end.prepare_tx_idle()? {
                WaitDecision::Retry => continue,
                WaitDecision::Sleep => return Ok(Next::Wait),
            }
        }
        // Still busy: come back after the rest of the loop had a turn.
        s.still_busy = true;
        Ok(Next::Wait)
    }
}

/// The parts of an [`AppStream`] a ring pass reads and changes.
struct StreamSide {
    id: SessionId,
    fd: RawFd,
    app_closed: bool,
    still_busy: bool,
}

impl RingLink {
    /// The app asked to leave ring mode.
    pub(super) fn detach_requested(&self) -> bool {
        self.end.app_requested_detach()
    }

    /// The session failed: every waiter in the app wakes to `errno` once our end of the
    /// socketpair closes (its hooks then see end of file, as in plain mode, and `SO_ERROR`
    /// reports the errno).
    pub(super) fn reset(&mut self, errno: i32) {
        self.end.reset(errno);
    }
}

impl Daemon {
    /// Puts stream `key` into ring mode: a fresh region and eventfd, and the app end's send
    /// buffer made small when we hold that end (a claim; a connecting shim sizes its own).
    /// Returns the memfd and eventfd to pass to the app.
    pub(super) fn attach_ring(
        &mut self,
        key: u64,
        app_end: Option<RawFd>,
    ) -> io::Result<[OwnedFd; 2]> {
        if !self.streams.contains_key(&key) {
            return Err(io::Error::other("no such stream"));
        }
        let (region, memfd) =
            SharedRegion::create(RegionKind::Stream, RING_CAPACITY, RING_CAPACITY)
                .map_err(|e| io::Error::other(e.to_string()))?;
        let end = region
            .into_daemon_end()
            .map_err(|e| io::Error::other(e.to_string()))?;
        let wake = eventfd()?;
        let theirs = wake.try_clone()?;
        self.poll.registry().register(
            &mut SourceFd(&wake.as_raw_fd()),
            Token(RING_BASE + key as usize),
            Interest::READABLE,
        )?;
        let small = APP_SNDBUF;
        // SAFETY: setsockopt with a pointer to a live int of the right size.
        if let Some(app_end) = app_end {
            unsafe {
                libc::setsockopt(
                    app_end,
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    &small as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        if let Some(s) = self.streams.get_mut(&key) {
            s.ring = Some(Box::new(RingLink {
                end,
                wake,
                socket_readable: false,
                fin_sent: false,
                rx_closed: false,
                doorbell_pending: false,
            }));
        }
        self.ring_counters.attached += 1;
        self.dirty_streams.insert(key);
        Ok([memfd, theirs])
    }

    /// The app rang a stream's eventfd.
    pub(super) fn ring_event(&mut self, key: u64) {
        if self.streams.contains_key(&key) {
            self.ring_counters.wakeups += 1;
            self.dirty_streams.insert(key);
        }
    }

    /// Services an established ring-mode stream (called by `service_stream` once any connect
    /// filler is gone).
    pub(super) fn service_ring(&mut self, key: u64) {
        let now = self.clock.now();
        let Some(s) = self.streams.get_mut(&key) else {
            return;
        };
        let Some(mut link) = s.ring.take() else {
            return;
        };
        let mut side = StreamSide {
            id: s.id,
            fd: s.fd.as_raw_fd(),
            app_closed: s.app_closed,
            still_busy: false,
        };
        link.socket_readable |= s.app_readable;
        s.app_readable = false;
        let result = link.pump(
            &mut self.node,
            now,
            &mut side,
            &mut self.scratch,
            &mut self.ring_counters,
        );
        let Some(s) = self.streams.get_mut(&key) else {
            return;
        };
        s.app_closed = side.app_closed;
        s.ring = Some(link);
        match result {
            Ok(Next::Wait) => {
                if side.still_busy {
                    self.dirty_streams.insert(key);
                }
            }
            Ok(Next::Detach) => self.detach_ring(key),
            Ok(Next::Release) => {
                self.detach_stream(key);
                self.release_session(now, side.id);
                debug!(session = side.id, "application closed its ring stream");
            }
            Err(e) => {
                warn!(session = side.id, "ring stream failed: {e}");
                if e.is_fatal() {
                    self.ring_counters.corrupted += 1;
                }
                self.fail_stream(key, libc::EIO);
            }
        }
    }

    /// Stops watching a ring's eventfd (the link is being dropped).
    pub(super) fn forget_ring(&self, link: &RingLink) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&link.wake.as_raw_fd()));
    }

    /// The app asked to leave ring mode: from now on the stream is plain socketpair bytes.
    pub(super) fn detach_ring(&mut self, key: u64) {
        let Some(link) = self.streams.get_mut(&key).and_then(|s| s.ring.take()) else {
            return;
        };
        self.forget_ring(&link);
        let RingLink { end, fin_sent, .. } = *link;
        let detached = match end.detach() {
            Ok(d) => d,
            Err(e) => {
                warn!("ring detach refused: {e}");
                self.ring_counters.corrupted += 1;
                return self.fail_stream(key, libc::EIO);
            }
        };
        let Some(s) = self.streams.get_mut(&key) else {
            return;
        };
        // Out: the final doorbell, the RX bytes the app never read, then live data.
        let remainder = &detached.rx_remainder;
        let mut out = Vec::with_capacity(1 + remainder.len());
        out.push(1u8);
        let (a, b) = remainder.as_slices();
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        let unsent = std::mem::take(&mut s.staged);
        out.extend_from_slice(&unsent[s.staged_at.min(unsent.len())..]);
        s.staged = out;
        s.staged_at = 0;
        // In: the filler written before the seal, then TX's last bytes, then socket data.
        s.filler_left += detached.discard_filler as usize;
        s.tx_leftover = Some(detached.tx);
        s.tx_leftover_fin_sent = fin_sent;
        s.app_readable = true;
        s.app_writable = true;
        self.ring_counters.detached += 1;
        self.dirty_streams.insert(key);
        debug!(
            session = s.id,
            discard_filler = detached.discard_filler,
            "ring stream detached"
        );
    }

    pub(super) fn ring_counters(&self) -> RingCounters {
        self.ring_counters
    }
}

/// Plain-mode leftovers of a detach: TX bytes sealed in the ring go to the session before any
/// byte read from the socket. Returns true once nothing is left (the stream may read its
/// socket).
pub(super) fn forward_leftover(node: &mut Node, now: Instant, s: &mut AppStream) -> bool {
    let Some(tx) = s.tx_leftover.as_mut() else {
        return true;
    };
    loop {
        let cap = node.session_send_capacity(s.id);
        let Ok(left) = tx.readable() else {
            break;
        };
        if left == 0 {
            let closed = matches!(tx.producer_end(), Ok(ProducerEnd::Closed));
            s.tx_leftover = None;
            if closed && !s.tx_leftover_fin_sent {
                // The app shut its write side before detaching: no plain data follows.
                s.app_eof = true;
                node.session_shutdown(now, s.id);
            }
            return true;
        }
        if cap == 0 {
            return false;
        }
        let Ok(grant) = tx.read_grant() else {
            break;
        };
        let (a, _) = grant.as_slices();
        let want = a.len().min(cap);
        let n = node.session_write(now, s.id, &a[..want]);
        if grant.consume(n).is_err() || n == 0 {
            return false;
        }
    }
    // A corrupted leftover: drop it (the stream carries on from the socket).
    s.tx_leftover = None;
    true
}
