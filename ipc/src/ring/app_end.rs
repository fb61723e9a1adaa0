//! The application's (shim's) end of a region: the steps of the protocol in the
//! [module docs](super) that the shim's hooks run.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::consumer::Consumer;
use super::producer::{Producer, ProducerEnd};
use super::protocol::{
    arm, status_of, take_flag, AppDetached, RegionStatus, RxWaitDecision, WaitDecision, Wakeup,
    MAX_OUTSTANDING_SIGNALS,
};
use super::region::Memory;
use super::RingError;

/// The application's (shim's) end: producer of TX, consumer of RX. One per socket in one
/// process at a time; the shim serialises the socket's hooks around it.
pub struct AppEnd {
    pub(super) memory: Arc<Memory>,
    tx: Producer,
    rx: Consumer,
    doorbells_drained: u64,
    filler_written: u64,
    /// RX_ARMED was last set by us and not yet seen taken.
    rx_armed: bool,
    /// Arms of ours the daemon took: each owes exactly one doorbell (or none, when its write
    /// found the socket full of earlier ones).
    rx_takes: u64,
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
            // Regions start armed, as if by us.
            rx_armed: true,
            rx_takes: doorbells_drained,
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
        let flag = &self.rx.ring.header().wait.consumer_waiting;
        if self.rx_armed && flag.load(Ordering::SeqCst) == 0 {
            self.rx_takes = self.rx_takes.wrapping_add(1);
        }
        arm(flag);
        self.rx_armed = true;
        self.check_open()?;
        if self.rx.readable()? > 0 || self.rx.producer_end()? != ProducerEnd::Open {
            return Ok(RxWaitDecision::Retry);
        }
        Ok(RxWaitDecision::Sleep {
            drain_doorbells: owed,
        })
    }

    /// Doorbells owed for arms taken before the last [`prepare_rx_sleep`](Self::prepare_rx_sleep)
    /// that are in the socket now and not drained: `Some(n)` once all of them are counted,
    /// `None` while one is still on its way (the daemon took the arm and has not counted the
    /// byte yet). A consumer that read the data a doorbell was rung for before the byte
    /// landed would otherwise leave the fd readable with nothing to read, which breaks a
    /// program that selects and then reads a blocking socket. Doorbells rung for the current
    /// arm are never included.
    pub fn settled_doorbells(&self) -> Option<u64> {
        let written = self
            .memory
            .region_header()
            .daemon
            .rx_doorbells_written
            .load(Ordering::SeqCst);
        if written.wrapping_sub(self.rx_takes) > MAX_OUTSTANDING_SIGNALS {
            // Fewer written than taken (wrapping): one is in flight.
            return None;
        }
        let owed = self.rx_takes.wrapping_sub(self.doorbells_drained);
        (owed <= MAX_OUTSTANDING_SIGNALS)
            .then_some(owed)
            .or(Some(0))
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
