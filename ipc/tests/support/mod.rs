//! Real-I/O drivers of the ring protocol for tests and the benchmark: the app side over its
//! socketpair end (doorbells in, filler out) and the region's eventfd, the daemon side as a
//! small poll loop. This is what the shim and the daemon will do, minus their bookkeeping.

#![allow(dead_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use weft_ipc::ring::{
    AppEnd, DaemonEnd, Datagram, FillerAction, RingError, RxWaitDecision, WaitDecision, Wakeup,
};

/// No progress for this long means a lost wakeup (a hang detector, not a timing assertion).
pub const STALL: Duration = Duration::from_secs(60);

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `(app end, daemon end)` of an `AF_UNIX SOCK_STREAM` socketpair; the app end gets the
/// smallest send buffer so a little filler makes it unwritable.
pub fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })
    .expect("socketpair");
    // SAFETY: the kernel just returned these descriptors.
    let (app, daemon) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let small: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live int of the right size.
    cvt(unsafe {
        libc::setsockopt(
            app.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &small as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    })
    .expect("SO_SNDBUF");
    (app, daemon)
}

pub fn eventfd() -> OwnedFd {
    // SAFETY: plain syscall; the result is checked.
    let fd =
        cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }).expect("eventfd");
    // SAFETY: the kernel just returned this descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn notify(eventfd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64.
    let rc = unsafe { libc::write(eventfd, &one as *const u64 as *const libc::c_void, 8) };
    assert_eq!(rc, 8, "eventfd write: {}", io::Error::last_os_error());
}

pub fn reset_eventfd(eventfd: RawFd) {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64; EAGAIN (nothing pending) is fine.
    unsafe { libc::read(eventfd, &mut value as *mut u64 as *mut libc::c_void, 8) };
}

/// Non-blocking send; `Ok(0)` on EAGAIN or when the peer is gone (`EPIPE`, `ECONNRESET`:
/// signal bytes to a closed peer do not matter).
pub fn send_some(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: data is a live buffer of data.len() bytes.
    let n = unsafe {
        libc::send(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Ok(n as usize);
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
            Ok(0)
        }
        io::ErrorKind::Interrupted => send_some(fd, data),
        _ => Err(err),
    }
}

/// Non-blocking receive; `Ok(0)` on EAGAIN, EOF or a peer that closed with signal bytes
/// unread (`ECONNRESET`).
pub fn recv_some(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a live buffer of buf.len() bytes.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return Ok(n as usize);
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionReset => Ok(0),
        io::ErrorKind::Interrupted => recv_some(fd, buf),
        _ => Err(err),
    }
}

/// Waits for any of `fds` (with their events); panics after [`STALL`] without an event.
pub fn wait(fds: &mut [libc::pollfd], what: &str) {
    loop {
        // SAFETY: fds is a live array of pollfd.
        let rc = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                STALL.as_millis() as i32,
            )
        };
        if rc > 0 {
            return;
        }
        if rc == 0 {
            panic!("stalled {STALL:?} waiting for {what}: lost wakeup");
        }
        let err = io::Error::last_os_error();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted, "poll: {err}");
    }
}

pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// The application side, blocking (like a blocking socket under the shim).
pub struct AppIo {
    pub end: AppEnd,
    pub sock: OwnedFd,
    pub wake: OwnedFd,
    pub filler: u64,
    pub doorbells: u64,
    pub sleeps: u64,
    pub wakes: u64,
}

impl AppIo {
    pub fn new(end: AppEnd, sock: OwnedFd, wake: OwnedFd) -> Self {
        AppIo {
            end,
            sock,
            wake,
            filler: 0,
            doorbells: 0,
            sleeps: 0,
            wakes: 0,
        }
    }

    fn wake_daemon(&mut self, w: Wakeup) {
        if w == Wakeup::Needed {
            self.wakes += 1;
            notify(self.wake.as_raw_fd());
        }
    }

    /// Fills the socket with filler and rechecks; sleeps in poll(POLLOUT) if still full.
    fn block_on_tx(&mut self, needed: usize) -> Result<(), RingError> {
        self.end.prepare_tx_block(needed);
        let filler = [0u8; 512];
        let mut written = 0u64;
        loop {
            let n = send_some(self.sock.as_raw_fd(), &filler)?;
            if n == 0 {
                break;
            }
            written += n as u64;
        }
        self.filler += written;
        if self.end.filler_written(written, needed)? == WaitDecision::Sleep {
            self.sleeps += 1;
            wait(
                &mut [pollfd(self.sock.as_raw_fd(), libc::POLLOUT)],
                "TX space (POLLOUT)",
            );
        }
        Ok(())
    }

    pub fn write_all(&mut self, mut data: &[u8]) -> Result<(), RingError> {
        while !data.is_empty() {
            let n = self.end.tx().write(data)?;
            if n > 0 {
                data = &data[n..];
                let w = self.end.after_tx_publish();
                self.wake_daemon(w);
            } else {
                self.block_on_tx(1)?;
            }
        }
        Ok(())
    }

    pub fn push(&mut self, datagram: &[u8]) -> Result<(), RingError> {
        loop {
            if self.end.tx().push(datagram)? {
                let w = self.end.after_tx_publish();
                self.wake_daemon(w);
                return Ok(());
            }
            self.block_on_tx(datagram.len() + weft_ipc::ring::RECORD_HEADER)?;
        }
    }

    pub fn close_tx(&mut self) -> Result<(), RingError> {
        self.end.tx().close()?;
        let w = self.end.after_tx_publish();
        self.wake_daemon(w);
        Ok(())
    }

    /// Waits for RX data (or end): drains the doorbells the protocol allows, then polls.
    fn block_on_rx(&mut self) -> Result<bool, RingError> {
        match self.end.prepare_rx_sleep()? {
            RxWaitDecision::Retry => Ok(true),
            RxWaitDecision::Sleep { drain_doorbells } => {
                let mut buf = [0u8; 64];
                let mut drained = 0u64;
                while drained < drain_doorbells {
                    let want = (drain_doorbells - drained).min(buf.len() as u64) as usize;
                    let n = recv_some(self.sock.as_raw_fd(), &mut buf[..want])?;
                    if n == 0 {
                        break;
                    }
                    drained += n as u64;
                }
                self.doorbells += drained;
                self.end.doorbells_drained(drained)?;
                self.sleeps += 1;
                wait(
                    &mut [pollfd(self.sock.as_raw_fd(), libc::POLLIN)],
                    "RX data (POLLIN)",
                );
                Ok(false)
            }
        }
    }

    /// Blocking read: `Ok(0)` only at end of stream.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        loop {
            let n = self.end.rx().read(buf)?;
            if n > 0 {
                let w = self.end.after_rx_consume();
                self.wake_daemon(w);
                return Ok(n);
            }
            if self.end.rx().is_finished()? {
                return Ok(0);
            }
            self.block_on_rx()?;
        }
    }

    /// Blocking datagram receive: `Ok(None)` only at end of stream.
    pub fn pop(&mut self, buf: &mut [u8]) -> Result<Option<Datagram>, RingError> {
        loop {
            if let Some(d) = self.end.rx().pop(buf)? {
                let w = self.end.after_rx_consume();
                self.wake_daemon(w);
                return Ok(Some(d));
            }
            if self.end.rx().is_finished()? {
                return Ok(None);
            }
            self.block_on_rx()?;
        }
    }
}

/// What a daemon loop moves: TX bytes/datagrams out of the ring, RX bytes/datagrams in.
pub trait Pump {
    /// Consume from TX; returns whether anything was consumed.
    fn consume(&mut self, end: &mut DaemonEnd) -> Result<bool, RingError>;
    /// Produce into RX.
    fn produce(&mut self, end: &mut DaemonEnd) -> Result<Produced, RingError>;
}

pub enum Produced {
    /// Published something.
    Some,
    /// RX had no room for the next piece, which needs this many bytes.
    Full { needed: usize },
    /// Nothing left: close RX.
    Finished,
}

#[derive(Default, Debug)]
pub struct DaemonStats {
    pub sleeps: u64,
    pub doorbells: u64,
    pub filler: u64,
}

/// The daemon's event loop for one region until TX is closed and consumed and the pump has
/// closed RX.
pub fn run_daemon(
    end: &mut DaemonEnd,
    sock: &OwnedFd,
    wake: &OwnedFd,
    pump: &mut dyn Pump,
) -> Result<DaemonStats, RingError> {
    let mut stats = DaemonStats::default();
    let mut socket_readable = false;
    let mut rx_closed = false;
    let mut buf = [0u8; 4096];
    loop {
        reset_eventfd(wake.as_raw_fd());
        let mut busy = false;
        while pump.consume(end)? {
            busy = true;
        }
        match end.filler_action(socket_readable)? {
            FillerAction::Drain => {
                loop {
                    let n = recv_some(sock.as_raw_fd(), &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    stats.filler += n as u64;
                    end.filler_drained(n as u64);
                }
                socket_readable = false;
            }
            FillerAction::Hold | FillerAction::Nothing => {}
        }
        let mut rx_quiet = rx_closed;
        while !rx_closed {
            match pump.produce(end)? {
                Produced::Some => {
                    busy = true;
                    if end.after_rx_publish() == Wakeup::Needed
                        && send_some(sock.as_raw_fd(), &[1])? == 1
                    {
                        stats.doorbells += 1;
                        end.doorbell_written();
                    }
                }
                Produced::Full { needed } => {
                    if end.prepare_rx_full(needed)? == WaitDecision::Sleep {
                        rx_quiet = true;
                        break;
                    }
                }
                Produced::Finished => {
                    if end.close_rx()? == Wakeup::Needed && send_some(sock.as_raw_fd(), &[1])? == 1
                    {
                        stats.doorbells += 1;
                        end.doorbell_written();
                    }
                    rx_closed = true;
                    rx_quiet = true;
                }
            }
        }
        let tx_finished = end.tx().is_finished()?;
        if tx_finished && rx_closed {
            return Ok(stats);
        }
        if busy || end.tx().readable()? > 0 {
            continue;
        }
        let tx_quiet = tx_finished || end.prepare_tx_idle()? == WaitDecision::Sleep;
        if !(tx_quiet && rx_quiet) {
            continue;
        }
        stats.sleeps += 1;
        let mut fds = [
            pollfd(wake.as_raw_fd(), libc::POLLIN),
            pollfd(sock.as_raw_fd(), libc::POLLIN),
        ];
        wait(&mut fds, "daemon wakeup (eventfd or filler)");
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
            socket_readable = true;
        }
    }
}

/// Test payload: the byte at stream position p is `PATTERN[p % PERIOD]`; the period is
/// prime so chunk boundaries never line up with it.
pub struct Pattern {
    bytes: Vec<u8>,
}

pub const PERIOD: usize = 1_048_573;
pub const MAX_SLICE: usize = 1 << 17;

impl Pattern {
    pub fn new(seed: u64) -> Self {
        let mut x = seed | 1;
        let bytes = (0..PERIOD + MAX_SLICE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect::<Vec<u8>>();
        // Make the tail repeat the head so any window of MAX_SLICE bytes is contiguous.
        let mut bytes = bytes;
        let (head, tail) = bytes.split_at_mut(PERIOD);
        tail.copy_from_slice(&head[..MAX_SLICE]);
        Pattern { bytes }
    }

    /// `len <= MAX_SLICE` bytes of the stream from position `pos`.
    pub fn at(&self, pos: u64, len: usize) -> &[u8] {
        let start = (pos % PERIOD as u64) as usize;
        &self.bytes[start..start + len]
    }
}

/// A log-uniform size in `1..=max`: many small pieces and some large ones.
pub fn chunk_len(rng: &mut impl rand::Rng, max: usize) -> usize {
    let bits = rng.gen_range(0..=max.ilog2());
    rng.gen_range(1..=(1usize << bits)).min(max)
}

/// Daemon-side pump for byte streams: checks TX against `tx_pattern` (zero-copy reads) and
/// feeds `rx_total` bytes of `rx_pattern` into RX in random chunks.
pub struct StreamPump<'a, R: rand::Rng> {
    pub tx_pattern: &'a Pattern,
    pub rx_pattern: &'a Pattern,
    pub tx_received: u64,
    pub rx_sent: u64,
    pub rx_total: u64,
    pub rng: R,
}

impl<R: rand::Rng> Pump for StreamPump<'_, R> {
    fn consume(&mut self, end: &mut DaemonEnd) -> Result<bool, RingError> {
        let grant = end.tx().read_grant()?;
        if grant.is_empty() {
            return Ok(false);
        }
        let (a, b) = grant.as_slices();
        for piece in [a, b] {
            for part in piece.chunks(MAX_SLICE) {
                assert!(
                    part == self.tx_pattern.at(self.tx_received, part.len()),
                    "TX stream differs after {} bytes",
                    self.tx_received
                );
                self.tx_received += part.len() as u64;
            }
        }
        let n = grant.len();
        grant.consume(n)?;
        Ok(true)
    }

    fn produce(&mut self, end: &mut DaemonEnd) -> Result<Produced, RingError> {
        if self.rx_sent == self.rx_total {
            return Ok(Produced::Finished);
        }
        let len = chunk_len(&mut self.rng, MAX_SLICE).min((self.rx_total - self.rx_sent) as usize);
        let n = end.rx().write(self.rx_pattern.at(self.rx_sent, len))?;
        self.rx_sent += n as u64;
        Ok(if n == 0 {
            Produced::Full { needed: 1 }
        } else {
            Produced::Some
        })
    }
}

/// Daemon-side pump for datagrams: the sizes of both directions come from seeded generators
/// the app side replays, payloads from the patterns at a running position.
pub struct DatagramPump<'a, R: rand::Rng> {
    pub tx_pattern: &'a Pattern,
    pub rx_pattern: &'a Pattern,
    pub tx_sizes: R,
    pub tx_received: u64,
    pub tx_datagrams: u64,
    pub rx_sizes: R,
    pub rx_next: Option<usize>,
    pub rx_sent: u64,
    pub rx_total: u64,
    pub max_datagram: usize,
    pub buf: Vec<u8>,
}

impl<R: rand::Rng> Pump for DatagramPump<'_, R> {
    fn consume(&mut self, end: &mut DaemonEnd) -> Result<bool, RingError> {
        let Some(d) = end.tx().pop(&mut self.buf)? else {
            return Ok(false);
        };
        let expected = chunk_len(&mut self.tx_sizes, self.max_datagram);
        assert_eq!(
            d.len, expected,
            "datagram {} has the wrong length",
            self.tx_datagrams
        );
        assert!(!d.truncated());
        assert!(
            &self.buf[..d.len] == self.tx_pattern.at(self.tx_received, d.len),
            "datagram {} differs",
            self.tx_datagrams
        );
        self.tx_received += d.len as u64;
        self.tx_datagrams += 1;
        Ok(true)
    }

    fn produce(&mut self, end: &mut DaemonEnd) -> Result<Produced, RingError> {
        if self.rx_sent >= self.rx_total {
            return Ok(Produced::Finished);
        }
        let len = *self
            .rx_next
            .get_or_insert_with(|| chunk_len(&mut self.rx_sizes, self.max_datagram));
        if !end.rx().push(self.rx_pattern.at(self.rx_sent, len))? {
            return Ok(Produced::Full {
                needed: len + weft_ipc::ring::RECORD_HEADER,
            });
        }
        self.rx_next = None;
        self.rx_sent += len as u64;
        Ok(Produced::Some)
    }
}
