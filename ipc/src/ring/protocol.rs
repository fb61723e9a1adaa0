//! The two ends of a region and the wake-up protocol of the [module docs](super), as sans-I/O
//! steps: each method does the shared-memory part of a step and tells the caller which
//! syscall (if any) the protocol needs next. Nothing here touches a socket or a clock.

use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;

use super::byte_ring::{Consumer, Producer, ProducerEnd, Remainder};
use super::layout::{REGION_DETACHED, REGION_OPEN, REGION_RESET};
use super::region::Memory;
use super::RingError;

/// Signal bytes (doorbells, filler) that can sit in one direction of a socketpair are bounded
/// by its buffer (a few hundred KiB at most); a count further apart is a lie.
const MAX_OUTSTANDING_SIGNALS: u64 = 1 << 24;

/// Whether the peer must be woken now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Wakeup {
    /// The peer sleeps waiting for what was just done: wake it (see the module docs for the
    /// channel of each direction).
    Needed,
    NotNeeded,
}

/// Outcome of a "prepare to sleep" step: the need-wakeup flag is set and the ring rechecked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum WaitDecision {
    /// The condition cleared while arming (data, space, end of stream or a status change
    /// raced in): do not sleep, try the operation again.
    Retry,
    /// Safe to sleep: the peer will wake us.
    Sleep,
}

/// Outcome of [`AppEnd::prepare_rx_sleep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum RxWaitDecision {
    /// Data, end of stream or a status change raced in: read again, drain nothing.
    Retry,
    /// Read (`MSG_DONTWAIT`) and drop up to `drain_doorbells` bytes from the socket, report
    /// them with [`AppEnd::doorbells_drained`], then return `EAGAIN` or block in `poll`.
    Sleep { drain_doorbells: u64 },
}

/// What the daemon does with credit filler waiting in its end of the socketpair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum FillerAction {
    /// No filler is known to be pending.
    Nothing,
    /// TX is still too full: leave the filler unread so the app's fd stays unwritable.
    Hold,
    /// Read everything from the socket (`MSG_DONTWAIT` until `EAGAIN`) and report the count
    /// with [`DaemonEnd::filler_drained`]: the app's fd turns writable.
    Drain,
}

/// The daemon's side of the region's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionStatus {
    Open,
    /// The daemon completed a detach: the socketpair carries plain bytes.
    Detached,
    /// The session failed with this errno; rings are dead.
    Reset {
        errno: i32,
    },
}

/// What the application does once the daemon has detached (see [`AppEnd::detach_outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppDetached {
    /// Read and drop exactly this many doorbell bytes from the socket (blocking is fine:
    /// all of them are written or being written); every byte after them is stream data.
    pub discard_doorbells: u64,
}

/// What the daemon holds after [`DaemonEnd::detach`]. Its outgoing bytes on the socketpair
/// must be, in order: one doorbell byte (already counted), the `rx_remainder`, then live data
/// (or, if RX was closed, `shutdown(SHUT_WR)` right after the remainder). Its incoming bytes
/// are: `discard_filler` bytes to drop (all already in the socket: fewer means the app
/// lied, reset), then plain data, which the session takes only after
/// everything in `tx` has been consumed. If `tx` ends [`ProducerEnd::Closed`] (the app shut
/// its write side down before detaching) the stream ends there and no plain data follows.
#[derive(Debug)]
pub struct DaemonDetached {
    pub tx: Consumer,
    pub rx_remainder: Remainder,
    pub discard_filler: u64,
}

fn status_of(memory: &Memory) -> Result<RegionStatus, RingError> {
    let daemon = &memory.region_header().daemon;
    match daemon.status.load(Ordering::Acquire) {
        REGION_OPEN => Ok(RegionStatus::Open),
        REGION_DETACHED => Ok(RegionStatus::Detached),
        REGION_RESET => {
            let errno = daemon.error.load(Ordering::Relaxed);
            // An errno the app can hand to read()/write(): anything else becomes EIO.
            Ok(RegionStatus::Reset {
                errno: if (1..4096).contains(&errno) {
                    errno
                } else {
                    libc::EIO
                },
            })
        }
        _ => Err(RingError::Corrupt("unknown region status")),
    }
}

/// Swaps a need-wakeup flag to 0 if it is set: the single owed wakeup goes to whoever takes
/// the flag. The Relaxed pre-check spares a locked instruction on the hot path.
fn take_flag(flag: &AtomicU32) -> Wakeup {
    if flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::SeqCst) != 0 {
        Wakeup::Needed
    } else {
        Wakeup::NotNeeded
    }
}

fn arm(flag: &AtomicU32) {
    arm_with(flag, 1);
}

fn arm_with(flag: &AtomicU32, value: u32) {
    flag.store(value, Ordering::SeqCst);
    // Pairs with the fence in the peer's publish step (a Dekker pair): after both fences,
    // either the peer sees the flag or we see the peer's index.
    fence(Ordering::SeqCst);
}

/// The application's (shim's) end: producer of TX, consumer of RX. One per socket in one
/// process at a time; the shim serialises the socket's hooks around it.
pub struct AppEnd {
    memory: Arc<Memory>,
    tx: Producer,
    rx: Consumer,
    doorbells_drained: u64,
    filler_written: u64,
}

impl std::fmt::Debug for AppEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppEnd")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

impl AppEnd {
    pub(crate) fn new(memory: Arc<Memory>, tx: Producer, rx: Consumer) -> Self {
        let app = &memory.region_header().app;
        let doorbells_drained = app.rx_doorbells_drained.load(Ordering::Relaxed);
        let filler_written = app.tx_filler_written.load(Ordering::Relaxed);
        AppEnd {
            memory,
            tx,
            rx,
            doorbells_drained,
            filler_written,
        }
    }

    /// The TX ring (application → daemon).
    pub fn tx(&mut self) -> &mut Producer {
        &mut self.tx
    }

    /// The RX ring (daemon → application).
    pub fn rx(&mut self) -> &mut Consumer {
        &mut self.rx
    }

    /// One load: hooks call this (or [`check_open`](Self::check_open)) before using the rings.
    pub fn status(&self) -> Result<RegionStatus, RingError> {
        status_of(&self.memory)
    }

    /// `Err(Reset { errno })` after a reset, `Err(Closed)` once detached.
    pub fn check_open(&self) -> Result<(), RingError> {
        match self.status()? {
            RegionStatus::Open => Ok(()),
            RegionStatus::Detached => Err(RingError::Closed),
            RegionStatus::Reset { errno } => Err(RingError::Reset { errno }),
        }
    }

    /// After publishing into TX (or closing it): whether the daemon sleeps on an empty TX
    /// and must be woken (wake channel: the region's eventfd).
    pub fn after_tx_publish(&mut self) -> Wakeup {
        fence(Ordering::SeqCst);
        take_flag(&self.tx.ring.header().wait.consumer_waiting)
    }

    /// After consuming from RX: whether the daemon waits for RX space that is now there and
    /// must be woken (eventfd). The daemon's flag holds how many bytes it waits for, so
    /// consuming a few bytes of a full datagram ring does not wake it for nothing.
    pub fn after_rx_consume(&mut self) -> Wakeup {
        fence(Ordering::SeqCst);
        let flag = &self.rx.ring.header().wait.producer_waiting;
        let needed = flag.load(Ordering::Relaxed);
        if needed == 0 {
            return Wakeup::NotNeeded;
        }
        // Our cached view of the producer's tail can only lag, so this free count can only
        // be too high: at worst a spurious wakeup, never a missed one.
        let free = self.rx.capacity() as u64 - self.rx.cached_len();
        if free < needed as u64 {
            return Wakeup::NotNeeded;
        }
        take_flag(flag)
    }

    /// RX was found empty and not finished; the caller is about to return `EAGAIN` or block.
    /// Snapshots the doorbell count, sets RX_ARMED, then rechecks the ring (and the region
    /// status: a reset is `Err(Reset)`, so a caller never sleeps through it). Only doorbells
    /// written before the snapshot may be drained: one rung because of this arming stays in
    /// the socket and makes the fd readable.
    pub fn prepare_rx_sleep(&mut self) -> Result<RxWaitDecision, RingError> {
        let written = self
            .memory
            .region_header()
            .daemon
            .rx_doorbells_written
            .load(Ordering::SeqCst);
        let owed = written.wrapping_sub(self.doorbells_drained);
        if owed > MAX_OUTSTANDING_SIGNALS {
            return Err(RingError::Corrupt("doorbell count out of range"));
        }
        arm(&self.rx.ring.header().wait.consumer_waiting);
        self.check_open()?;
        if self.rx.readable()? > 0 || self.rx.producer_end()? != ProducerEnd::Open {
            return Ok(RxWaitDecision::Retry);
        }
        Ok(RxWaitDecision::Sleep {
            drain_doorbells: owed,
        })
    }

    /// Reports doorbell bytes read out of the socket.
    pub fn doorbells_drained(&mut self, count: u64) -> Result<(), RingError> {
        let written = self
            .memory
            .region_header()
            .daemon
            .rx_doorbells_written
            .load(Ordering::Acquire);
        let drained = self.doorbells_drained.wrapping_add(count);
        if written.wrapping_sub(drained) > MAX_OUTSTANDING_SIGNALS {
            return Err(RingError::Corrupt(
                "drained more doorbells than were written",
            ));
        }
        self.doorbells_drained = drained;
        self.memory
            .region_header()
            .app
            .rx_doorbells_drained
            .store(drained, Ordering::Release);
        Ok(())
    }

    /// TX had no room for `needed` bytes (1 for a stream write, the record for a datagram):
    /// sets TX_BLOCKED to that need. Next, write credit filler into the socket until `EAGAIN`
    /// and report it with [`filler_written`](Self::filler_written).
    pub fn prepare_tx_block(&mut self, needed: usize) {
        let needed = needed.clamp(1, self.tx.capacity()) as u32;
        self.tx
            .ring
            .header()
            .wait
            .producer_waiting
            .store(needed, Ordering::SeqCst);
    }

    /// Reports filler bytes written (possibly 0) and rechecks TX, after the filler: space
    /// the daemon freed meanwhile is seen here; space it frees later comes with a drain of
    /// the filler (the daemon reacts to its socket turning readable).
    pub fn filler_written(&mut self, count: u64, needed: usize) -> Result<WaitDecision, RingError> {
        self.filler_written = self.filler_written.wrapping_add(count);
        self.memory
            .region_header()
            .app
            .tx_filler_written
            .store(self.filler_written, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.check_open()?;
        if self.tx.writable()? >= needed.max(1) {
            return Ok(WaitDecision::Retry);
        }
        Ok(WaitDecision::Sleep)
    }

    /// Stops using the rings (fork, dup, exec, fd passing, an access the shim cannot see):
    /// seals TX at its tail and RX at its head and raises the detach request. Next, wake the
    /// daemon (eventfd), wait until the fd is readable and [`detach_outcome`] says detached.
    ///
    /// [`detach_outcome`]: Self::detach_outcome
    pub fn request_detach(&mut self) -> Result<(), RingError> {
        if self.tx.ensure_open().is_ok() {
            self.tx.seal()?;
        }
        if self.rx.check().is_ok() {
            self.rx.seal()?;
        }
        self.memory
            .region_header()
            .app
            .detach_requested
            .store(1, Ordering::SeqCst);
        Ok(())
    }

    /// `None` until the daemon has detached; then how many doorbell bytes precede the data.
    pub fn detach_outcome(&mut self) -> Result<Option<AppDetached>, RingError> {
        if self.status()? != RegionStatus::Detached {
            return Ok(None);
        }
        let written = self
            .memory
            .region_header()
            .daemon
            .rx_doorbells_written
            .load(Ordering::Acquire);
        let discard = written.wrapping_sub(self.doorbells_drained);
        if discard > MAX_OUTSTANDING_SIGNALS {
            return Err(RingError::Corrupt("doorbell count out of range"));
        }
        Ok(Some(AppDetached {
            discard_doorbells: discard,
        }))
    }

    /// A ring view hit corruption: the session must be reset.
    pub fn is_poisoned(&self) -> bool {
        self.tx.is_poisoned() || self.rx.is_poisoned()
    }
}

/// The daemon's end: consumer of TX, producer of RX.
pub struct DaemonEnd {
    memory: Arc<Memory>,
    tx: Consumer,
    rx: Producer,
    filler_drained: u64,
    doorbells_written: u64,
    low_watermark: usize,
}

impl std::fmt::Debug for DaemonEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonEnd")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

impl DaemonEnd {
    pub(crate) fn new(memory: Arc<Memory>, tx: Consumer, rx: Producer) -> Self {
        let doorbells_written = memory
            .region_header()
            .daemon
            .rx_doorbells_written
            .load(Ordering::Relaxed);
        let low_watermark = tx.capacity() / 4;
        DaemonEnd {
            memory,
            tx,
            rx,
            filler_drained: 0,
            doorbells_written,
            low_watermark,
        }
    }

    /// The TX ring (application → daemon).
    pub fn tx(&mut self) -> &mut Consumer {
        &mut self.tx
    }

    /// The RX ring (daemon → application).
    pub fn rx(&mut self) -> &mut Producer {
        &mut self.rx
    }

    pub fn status(&self) -> Result<RegionStatus, RingError> {
        status_of(&self.memory)
    }

    /// Free TX space at which held filler is released (default: a quarter of TX), so a
    /// blocked writer wakes to room for a real write rather than a byte.
    pub fn set_low_watermark(&mut self, bytes: usize) {
        self.low_watermark = bytes.clamp(1, self.tx.capacity());
    }

    /// After publishing into RX: whether RX_ARMED was set. `Needed`: write one doorbell byte
    /// into the socketpair and, once the write succeeded, call
    /// [`doorbell_written`](Self::doorbell_written).
    pub fn after_rx_publish(&mut self) -> Wakeup {
        fence(Ordering::SeqCst);
        take_flag(&self.rx.ring.header().wait.consumer_waiting)
    }

    /// Counts one doorbell byte that reached the socket. Not called when the write failed
    /// with `EAGAIN` (the socket already holds doorbells, so the fd is readable anyway).
    pub fn doorbell_written(&mut self) {
        self.doorbells_written = self.doorbells_written.wrapping_add(1);
        self.memory
            .region_header()
            .daemon
            .rx_doorbells_written
            .store(self.doorbells_written, Ordering::SeqCst);
    }

    /// End of stream on RX (the remote end sent FIN), with the doorbell step of a publication.
    pub fn close_rx(&mut self) -> Result<Wakeup, RingError> {
        self.rx.close()?;
        Ok(self.after_rx_publish())
    }

    /// RX had no room for `needed` bytes: sets RX_FULL to that need and rechecks. `Sleep`:
    /// the app wakes the daemon (eventfd) once its reads have freed that much.
    pub fn prepare_rx_full(&mut self, needed: usize) -> Result<WaitDecision, RingError> {
        let needed = needed.clamp(1, self.rx.capacity());
        arm_with(&self.rx.ring.header().wait.producer_waiting, needed as u32);
        if self.rx.free_space(needed as u64)? >= needed as u64 || self.app_requested_detach() {
            return Ok(WaitDecision::Retry);
        }
        Ok(WaitDecision::Sleep)
    }

    /// TX was found empty: sets TX_ARMED and rechecks. `Sleep`: the app will wake the daemon
    /// (eventfd) after its next publication. Reset the eventfd *before* looking at the rings,
    /// never after this step.
    pub fn prepare_tx_idle(&mut self) -> Result<WaitDecision, RingError> {
        arm(&self.tx.ring.header().wait.consumer_waiting);
        if self.tx.readable()? > 0
            || self.tx.producer_end()? != ProducerEnd::Open
            || self.app_requested_detach()
        {
            return Ok(WaitDecision::Retry);
        }
        Ok(WaitDecision::Sleep)
    }

    /// Decides about credit filler. Call it when the socketpair end turned readable
    /// (`socket_readable`: it then holds filler) and after each batch of TX consumption.
    pub fn filler_action(&mut self, socket_readable: bool) -> Result<FillerAction, RingError> {
        fence(Ordering::SeqCst);
        let needed = self
            .tx
            .ring
            .header()
            .wait
            .producer_waiting
            .load(Ordering::Relaxed) as usize;
        if !socket_readable && needed == 0 {
            return Ok(FillerAction::Nothing);
        }
        // Release the writer once it can make real progress: the watermark, or more if its
        // blocked datagram needs more (clamped: the value comes from the untrusted app).
        let threshold = self.low_watermark.max(needed.min(self.tx.capacity()));
        let free = self.tx.capacity() - self.tx.readable()?;
        if free < threshold {
            return Ok(FillerAction::Hold);
        }
        self.tx
            .ring
            .header()
            .wait
            .producer_waiting
            .store(0, Ordering::SeqCst);
        Ok(FillerAction::Drain)
    }

    /// Reports filler bytes read out of the socket.
    pub fn filler_drained(&mut self, count: u64) {
        self.filler_drained = self.filler_drained.wrapping_add(count);
    }

    /// The app asked to stop using the rings: call [`detach`](Self::detach).
    pub fn app_requested_detach(&self) -> bool {
        self.memory
            .region_header()
            .app
            .detach_requested
            .load(Ordering::Acquire)
            != 0
    }

    /// Completes a detach the app requested: validates its seals, marks the region detached
    /// (counting the one doorbell byte the daemon must now write first) and hands back what
    /// is left to move. Errors mean the app broke the protocol: reset the session.
    pub fn detach(mut self) -> Result<DaemonDetached, RingError> {
        if !self.app_requested_detach() {
            return Err(RingError::Protocol("detach without a request"));
        }
        // Closed is fine too: the app shut down its write side before detaching, so the TX
        // ring ends the stream and no plain bytes will follow the filler.
        if self.tx.producer_end()? == ProducerEnd::Open {
            return Err(RingError::Protocol("detach requested with TX not sealed"));
        }
        let rx_header = self.rx.ring.header();
        if rx_header.consumer.state.load(Ordering::Acquire) != super::layout::END_SEALED {
            return Err(RingError::Protocol("detach requested with RX not sealed"));
        }
        let sealed_head = rx_header.consumer.head.load(Ordering::Acquire);
        let filler_written = self
            .memory
            .region_header()
            .app
            .tx_filler_written
            .load(Ordering::Acquire);
        let discard_filler = filler_written.wrapping_sub(self.filler_drained);
        if discard_filler > MAX_OUTSTANDING_SIGNALS {
            return Err(RingError::Corrupt("filler count out of range"));
        }
        self.doorbell_written();
        let daemon = &self.memory.region_header().daemon;
        daemon.status.store(REGION_DETACHED, Ordering::SeqCst);
        let rx_remainder = self.rx.into_remainder(sealed_head)?;
        Ok(DaemonDetached {
            tx: self.tx,
            rx_remainder,
            discard_filler,
        })
    }

    /// Fails the session: the app's next operation returns `errno`. Then shut the daemon's
    /// end of the socketpair down so that every waiter in the app wakes.
    pub fn reset(&mut self, errno: i32) {
        let daemon = &self.memory.region_header().daemon;
        daemon.error.store(errno, Ordering::Relaxed);
        daemon.status.store(REGION_RESET, Ordering::Release);
    }

    /// A ring view hit corruption: reset the session.
    pub fn is_poisoned(&self) -> bool {
        self.tx.is_poisoned() || self.rx.is_poisoned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{RegionKind, SharedRegion};

    fn pair(kind: RegionKind, cap: u32) -> (AppEnd, DaemonEnd) {
        SharedRegion::anonymous(kind, cap, cap)
            .unwrap()
            .split()
            .unwrap()
    }

    #[test]
    fn the_first_publication_rings_a_doorbell_and_the_next_does_not() {
        let (mut app, mut daemon) = pair(RegionKind::Stream, 64);
        assert_eq!(daemon.rx().write(b"a").unwrap(), 1);
        assert_eq!(daemon.after_rx_publish(), Wakeup::Needed);
        daemon.doorbell_written();
        assert_eq!(daemon.rx().write(b"b").unwrap(), 1);
        assert_eq!(daemon.after_rx_publish(), Wakeup::NotNeeded);
        // Same for TX: the daemon starts armed.
        assert_eq!(app.tx().write(b"x").unwrap(), 1);
        assert_eq!(app.after_tx_publish(), Wakeup::Needed);
        assert_eq!(app.tx().write(b"y").unwrap(), 1);
        assert_eq!(app.after_tx_publish(), Wakeup::NotNeeded);
    }

    #[test]
    fn an_app_with_data_waiting_is_told_to_retry_and_drains_nothing() {
        let (mut app, mut daemon) = pair(RegionKind::Stream, 64);
        daemon.rx().write(b"abc").unwrap();
        let _ = daemon.after_rx_publish();
        daemon.doorbell_written();
        assert_eq!(app.prepare_rx_sleep().unwrap(), RxWaitDecision::Retry);
        let mut buf = [0u8; 8];
        assert_eq!(app.rx().read(&mut buf).unwrap(), 3);
        // Empty now: the one doorbell written before the snapshot may be drained.
        assert_eq!(
            app.prepare_rx_sleep().unwrap(),
            RxWaitDecision::Sleep { drain_doorbells: 1 }
        );
        app.doorbells_drained(1).unwrap();
        assert!(matches!(
            app.doorbells_drained(1),
            Err(RingError::Corrupt(_))
        ));
    }

    #[test]
    fn the_daemon_is_woken_for_rx_space_only_once_enough_is_free() {
        let (mut app, mut daemon) = pair(RegionKind::Datagram, 64);
        assert!(daemon.rx().push(&[1; 28]).unwrap());
        assert!(daemon.rx().push(&[2; 28]).unwrap());
        assert!(!daemon.rx().push(&[3; 40]).unwrap());
        assert_eq!(daemon.prepare_rx_full(44).unwrap(), WaitDecision::Sleep);
        let mut buf = [0u8; 64];
        app.rx().pop(&mut buf).unwrap().unwrap();
        assert_eq!(
            app.after_rx_consume(),
            Wakeup::NotNeeded,
            "32 free, 44 needed"
        );
        app.rx().pop(&mut buf).unwrap().unwrap();
        assert_eq!(app.after_rx_consume(), Wakeup::Needed);
        assert_eq!(
            app.after_rx_consume(),
            Wakeup::NotNeeded,
            "one wakeup per arming"
        );
    }

    #[test]
    fn filler_is_held_until_the_blocked_writer_can_progress() {
        let (mut app, mut daemon) = pair(RegionKind::Stream, 64);
        daemon.set_low_watermark(16);
        assert_eq!(app.tx().write(&[0; 64]).unwrap(), 64);
        app.prepare_tx_block(1);
        assert_eq!(app.filler_written(300, 1).unwrap(), WaitDecision::Sleep);
        assert_eq!(daemon.filler_action(true).unwrap(), FillerAction::Hold);
        daemon.tx().skip(8).unwrap();
        assert_eq!(daemon.filler_action(false).unwrap(), FillerAction::Hold);
        daemon.tx().skip(8).unwrap();
        assert_eq!(daemon.filler_action(false).unwrap(), FillerAction::Drain);
        assert_eq!(daemon.filler_action(false).unwrap(), FillerAction::Nothing);
    }

    #[test]
    fn a_reset_ends_every_wait_with_its_errno() {
        let (mut app, mut daemon) = pair(RegionKind::Stream, 64);
        daemon.reset(libc::ECONNRESET);
        assert_eq!(
            app.status().unwrap(),
            RegionStatus::Reset {
                errno: libc::ECONNRESET
            }
        );
        assert!(matches!(
            app.prepare_rx_sleep(),
            Err(RingError::Reset {
                errno: libc::ECONNRESET
            })
        ));
        app.prepare_tx_block(1);
        assert!(matches!(
            app.filler_written(0, 1),
            Err(RingError::Reset { .. })
        ));
        // An errno the app could not return is reported as EIO.
        daemon.reset(-5);
        assert_eq!(
            app.status().unwrap(),
            RegionStatus::Reset { errno: libc::EIO }
        );
    }

    #[test]
    fn detach_needs_a_request_and_both_seals() {
        let (_app, daemon) = pair(RegionKind::Stream, 64);
        assert!(
            matches!(daemon.detach(), Err(RingError::Protocol(_))),
            "no request"
        );
        let (app, daemon) = pair(RegionKind::Stream, 64);
        app.memory
            .region_header()
            .app
            .detach_requested
            .store(1, Ordering::SeqCst);
        assert!(
            matches!(daemon.detach(), Err(RingError::Protocol(_))),
            "rings not sealed"
        );
    }
}
