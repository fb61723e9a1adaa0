//! The vocabulary of the wake-up protocol in the [module docs](super), shared by
//! [`AppEnd`](super::AppEnd) and [`DaemonEnd`](super::DaemonEnd): their methods do the
//! shared-memory part of a step and answer with these values, which name the syscall (if any)
//! the caller makes next. Nothing here touches a socket or a clock.

use std::sync::atomic::{fence, AtomicU32, Ordering};

use super::consumer::{Consumer, Remainder};
use super::layout::{REGION_DETACHED, REGION_OPEN, REGION_RESET};
use super::region::Memory;
use super::RingError;

/// Signal bytes (doorbells, filler) that can sit in one direction of a socketpair are bounded
/// by its buffer (a few hundred KiB at most); a count further apart is a lie.
pub(super) const MAX_OUTSTANDING_SIGNALS: u64 = 1 << 24;

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

/// Outcome of [`AppEnd::prepare_rx_sleep`](super::AppEnd::prepare_rx_sleep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum RxWaitDecision {
    /// Data, end of stream or a status change raced in: read again, drain nothing.
    Retry,
    /// Read (`MSG_DONTWAIT`) and drop up to `drain_doorbells` bytes from the socket, report
    /// them with [`AppEnd::doorbells_drained`](super::AppEnd::doorbells_drained), then return `EAGAIN` or block in `poll`.
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
    /// with [`DaemonEnd::filler_drained`](super::DaemonEnd::filler_drained): the app's fd turns writable.
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

/// What the application does once the daemon has detached (see [`AppEnd::detach_outcome`](super::AppEnd::detach_outcome)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppDetached {
    /// Read and drop exactly this many doorbell bytes from the socket (blocking is fine:
    /// all of them are written or being written); every byte after them is stream data.
    pub discard_doorbells: u64,
}

/// What the daemon holds after [`DaemonEnd::detach`](super::DaemonEnd::detach). Its outgoing bytes on the socketpair
/// must be, in order: one doorbell byte (already counted), the `rx_remainder`, then live data
/// (or, if RX was closed, `shutdown(SHUT_WR)` right after the remainder). Its incoming bytes
/// are: `discard_filler` bytes to drop (all already in the socket: fewer means the app
/// lied, reset), then plain data, which the session takes only after
/// everything in `tx` has been consumed. If `tx` ends [`ProducerEnd::Closed`](super::ProducerEnd::Closed) (the app shut
/// its write side down before detaching) the stream ends there and no plain data follows.
#[derive(Debug)]
pub struct DaemonDetached {
    pub tx: Consumer,
    pub rx_remainder: Remainder,
    pub discard_filler: u64,
}

pub(super) fn status_of(memory: &Memory) -> Result<RegionStatus, RingError> {
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
pub(super) fn take_flag(flag: &AtomicU32) -> Wakeup {
    if flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::SeqCst) != 0 {
        Wakeup::Needed
    } else {
        Wakeup::NotNeeded
    }
}

pub(super) fn arm(flag: &AtomicU32) {
    arm_with(flag, 1);
}

pub(super) fn arm_with(flag: &AtomicU32, value: u32) {
    flag.store(value, Ordering::SeqCst);
    // Pairs with the fence in the peer's publish step (a Dekker pair): after both fences,
    // either the peer sees the flag or we see the peer's index.
    fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{AppEnd, DaemonEnd, RegionKind, SharedRegion};

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
