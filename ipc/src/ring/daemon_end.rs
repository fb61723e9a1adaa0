//! The daemon's end of a region: the steps of the protocol in the [module docs](super) that
//! the daemon's event loop runs.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::consumer::Consumer;
use super::layout::{END_SEALED, REGION_DETACHED, REGION_RESET};
use super::producer::{Producer, ProducerEnd};
use super::protocol::{
    arm, arm_with, status_of, take_flag, DaemonDetached, FillerAction, RegionStatus, WaitDecision,
    Wakeup, MAX_OUTSTANDING_SIGNALS,
};
use super::region::Memory;
use super::RingError;

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
        if rx_header.consumer.state.load(Ordering::Acquire) != END_SEALED {
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
