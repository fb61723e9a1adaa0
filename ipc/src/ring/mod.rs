//! Shared-memory rings: the data path between a shimmed socket and `weftd`.
//!
//! # Layout
//!
//! One region per socket, in a memfd the daemon creates ([`SharedRegion::create`]: sealed
//! against shrink/grow/seal) and passes to the shim with `SCM_RIGHTS`; the shim maps it with
//! [`SharedRegion::map`], which checks the seals, the size and every geometry word before it
//! trusts anything, then keeps the geometry privately. The region holds:
//!
//! ```text
//! RegionHeader  geometry line : magic "WEFTRING", version, kind, tx/rx capacity, total length
//!               app line      : detach_requested, tx_filler_written, rx_doorbells_drained
//!               daemon line   : status (OPEN/DETACHED/RESET), error (errno), rx_doorbells_written
//! RingHeader TX consumer line : head, consumer state (OPEN/SEALED)
//!               producer line : tail, producer state (OPEN/CLOSED/SEALED)
//!               wait line     : consumer_waiting (TX_ARMED), producer_waiting (TX_BLOCKED)
//! RingHeader RX (same)          consumer_waiting = RX_ARMED, producer_waiting = RX_FULL
//! TX data (capacity bytes, page aligned), RX data
//! ```
//!
//! Every header word is an atomic on its own 128-byte line group (writer-separated, so the
//! producer's and the consumer's words never share a line). Indices are free-running u64
//! byte counts; `tail - head <= capacity`, capacity a power of two. A producer publishes with
//! `tail.store(Release)` after copying; a consumer loads `tail` with Acquire, copies, then
//! `head.store(Release)`. Each side keeps the index it owns privately and never reads it back;
//! the peer's index is validated on every load (monotonic, at most one capacity ahead or
//! behind) and a violation poisons the view: [`RingError::Corrupt`], then reset the session.
//! A stream ring carries bytes; a datagram ring carries records (u32 length + payload, may wrap
//! across the end), whole records only. One producer and one consumer per ring: the shim
//! serialises the hooks of one socket (a per-socket lock) around its [`AppEnd`].
//!
//! # Who wakes whom
//!
//! The socketpair stays the app's fd and its only readiness source. The two directions:
//!
//! * **daemon → app** carries *doorbell* bytes (before a detach; plain data after).
//! * **app → daemon** carries *credit filler* bytes (before a detach; plain data after).
//! * The daemon is woken through the region's **eventfd** (created by the daemon, passed with
//!   the memfd). Wakes to the daemon cannot ride the socketpair: while the app holds TX
//!   filler in it, that direction is full, and a wake written behind filler would be lost.
//!
//! Each need-wakeup flag is *set* by the side going to sleep and *taken* (swapped to 0) by the
//! side that then owes exactly one wakeup. The race between "I check, you sleep" is closed by
//! a Dekker pair: the sleeper stores its flag, `fence(SeqCst)`, rechecks the ring; the peer
//! stores its index, `fence(SeqCst)`, loads the flag. At least one of them sees the other.
//! Both consumers start armed, so the first publication always wakes.
//!
//! **RX data (daemon → app), doorbells.** Invariant: whenever RX is non-empty (or ended), the
//! app's fd is readable or a doorbell is on its way.
//! 1. Daemon: publish into RX, then [`DaemonEnd::after_rx_publish`]; on `Needed` write one
//!    byte into its socket end and, if the write succeeded, [`DaemonEnd::doorbell_written`]
//!    (`rx_doorbells_written += 1`). An `EAGAIN` is fine: undrained doorbells already make
//!    the fd readable.
//! 2. App `read`/`recv`: copy from RX, [`AppEnd::after_rx_consume`] (wake the daemon if it
//!    waits for RX space). Return the bytes. Never drain doorbells while RX holds data.
//! 3. App found RX empty and not ended: [`AppEnd::prepare_rx_sleep`] snapshots
//!    `rx_doorbells_written`, sets RX_ARMED, fences and rechecks. `Retry` → read again.
//!    `Sleep { drain_doorbells: n }` → read and drop at most `n` bytes (`MSG_DONTWAIT`),
//!    report them ([`AppEnd::doorbells_drained`]), then return `EAGAIN` (non-blocking) or
//!    `poll(POLLIN)` on the real fd and go to 2. Only doorbells counted *before* the arm may
//!    be drained: a doorbell rung for this arm has a higher count, stays in the socket and
//!    wakes the poll. Draining everything instead would be the classic lost wakeup.
//!
//!    Why this is enough: the app drains only on the path that leaves RX_ARMED set, and the
//!    daemon clears RX_ARMED only by taking it, which rings a doorbell; so "not armed" always
//!    comes with an undrained doorbell. Data the app finds on its recheck (published before
//!    it armed) therefore sits behind a doorbell that is still in the socket.
//! 4. End of stream: [`DaemonEnd::close_rx`] (the doorbell step included); the app's read
//!    returns 0 once [`Consumer::is_finished`]. The app never drains doorbells after EOF, so
//!    the fd stays readable, as a kernel socket at EOF does.
//!
//! **TX data (app → daemon), eventfd.**
//! 1. App `write`/`send`: copy into TX, [`AppEnd::after_tx_publish`]; on `Needed` write the
//!    eventfd. Return the count.
//! 2. Daemon woken: read (reset) the eventfd **first**, then consume TX. TX empty and not
//!    ended: [`DaemonEnd::prepare_tx_idle`] sets TX_ARMED, fences, rechecks: `Retry` →
//!    consume again, `Sleep` → back to epoll. While the daemon is busy, the app makes no
//!    syscall at all.
//!
//! **TX back-pressure, credit filler.** Invariant: the app's fd is unwritable only while TX is
//! (nearly) full, and the daemon releases it once TX has `low_watermark` free bytes.
//! 1. App found TX full: [`AppEnd::prepare_tx_block`] (sets TX_BLOCKED to the bytes it needs:
//!    1 for a stream, the record for a datagram), write filler into the socket until `EAGAIN`
//!    (its `SO_SNDBUF` is small), then [`AppEnd::filler_written`] with the count: it
//!    publishes `tx_filler_written`, fences and rechecks TX. `Retry` → write
//!    into the ring (leftover filler is harmless, see 3). `Sleep` → return `EAGAIN` or block
//!    in `poll(POLLOUT)` on the real fd. The recheck spares a needless sleep when the daemon
//!    freed space meanwhile; correctness rests on the daemon reacting to its socket turning
//!    readable, which the filler itself causes.
//! 2. Daemon: on its socket end turning readable, and after each batch of TX consumption,
//!    [`DaemonEnd::filler_action`]: `Hold` while free TX space is under the low watermark or
//!    the blocked datagram's need (the filler keeps the app's fd unwritable; with
//!    edge-triggered epoll remember that the socket is readable), `Drain` once it is not: read the socket to `EAGAIN`, report with
//!    [`DaemonEnd::filler_drained`]; the app's fd turns writable (`POLLOUT` edge).
//! 3. Early or spurious drains only cause a spurious `POLLOUT`; the app rechecks the ring.
//!    Filler held while TX has free space cannot strand the app: the daemon drains as soon as
//!    its consumption reaches the watermark, and TX is non-empty so it keeps consuming.
//!
//! **RX back-pressure.** Daemon found RX without room for a record or chunk:
//! [`DaemonEnd::prepare_rx_full`] (sets RX_FULL to the bytes it needs, fences, rechecks); on
//! `Sleep` stop feeding RX. The app's [`AppEnd::after_rx_consume`] takes the flag once its
//! reads have freed that much, and writes the eventfd.
//!
//! # Detach (revocation)
//!
//! The shim may stop using the rings at any time (fork via `pthread_atfork`, `dup*`, fd
//! passing, exec, stdio on the socket): the unconsumed bytes then travel on the socketpair
//! without loss, duplication or reordering.
//! 1. App (holding the socket's lock; no other hook runs): [`AppEnd::request_detach`] seals TX
//!    at its tail (producer state SEALED), seals RX at its head (consumer state SEALED) and
//!    sets `detach_requested`; it writes the eventfd. From now on it writes plain bytes to
//!    the socket; they queue behind the filler and the TX ring's bytes.
//! 2. Daemon: seeing [`DaemonEnd::app_requested_detach`], calls [`DaemonEnd::detach`]: it
//!    validates both seals, counts one final doorbell, sets status DETACHED and returns
//!    [`DaemonDetached`]. Outgoing, it writes that doorbell byte, then the RX remainder the
//!    app never read, then live data, as socket space allows. Incoming, it drops exactly
//!    `discard_filler` bytes (filler written before the seal), consumes TX up to the seal,
//!    then treats socket bytes as stream data.
//! 3. App: waits for the fd to turn readable (the final doorbell) and for
//!    [`AppEnd::detach_outcome`] to say detached, then reads and drops exactly
//!    `discard_doorbells` bytes. Every later byte is data in order; the socket is plain.
//!
//! # End, reset and corruption
//!
//! * App `shutdown(SHUT_WR)`: [`Producer::close`] on TX, then the publish step; the daemon
//!   sends FIN after consuming to the close ([`Consumer::is_finished`] with
//!   [`ProducerEnd::Closed`]; a finished *sealed* ring is a detach, not end of stream). An app that exits or closes without the shim
//!   seeing it leaves TX open: the daemon's `POLLHUP` on its socket end tells it, and it
//!   consumes what was published before sending FIN.
//! * Remote FIN: [`DaemonEnd::close_rx`]. Remote RST or session failure:
//!   [`DaemonEnd::reset`] with an errno, then `shutdown(SHUT_RDWR)` on the daemon's end so
//!   every waiter wakes; the app's hooks check [`AppEnd::check_open`] (one load) and the
//!   wait steps fail with [`RingError::Reset`], whose errno the hook returns.
//! * A [`RingError::Corrupt`] on either side: the peer broke the ring; reset the session
//!   (the daemon with `EIO`). Views stay poisoned, nothing is read out of bounds.
//!
//! Shared-memory caveat: a hostile peer can change data bytes while we copy them; we then
//! deliver garbage bytes, never memory outside the ring (all bounds come from private state).

mod app_end;
mod consumer;
mod daemon_end;
mod datagram;
mod layout;
mod producer;
mod protocol;
mod region;
mod ring_ref;

use thiserror::Error;

pub use app_end::AppEnd;
pub use consumer::{Consumer, ReadGrant, Remainder};
pub use daemon_end::DaemonEnd;
pub use datagram::{Datagram, DatagramGrant};
pub use layout::{RegionKind, MAX_CAPACITY, MIN_CAPACITY, RECORD_HEADER, REGION_VERSION};
pub use producer::{Producer, ProducerEnd, WriteGrant};
pub use protocol::{
    AppDetached, DaemonDetached, FillerAction, RegionStatus, RxWaitDecision, WaitDecision, Wakeup,
};
pub use region::SharedRegion;

#[derive(Debug, Error)]
pub enum RingError {
    /// The peer left the shared state inconsistent; the view is poisoned.
    #[error("shared ring corrupted: {0}")]
    Corrupt(&'static str),
    /// The peer did something the protocol forbids (e.g. detach without sealing).
    #[error("ring protocol violated: {0}")]
    Protocol(&'static str),
    /// A memfd that is not a valid region (at map time).
    #[error("not a valid shared region: {0}")]
    BadRegion(&'static str),
    #[error("ring capacity {0} is not a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}]")]
    InvalidCapacity(u64),
    #[error("datagram of {len} bytes exceeds the ring's limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("length {len} exceeds the {max} bytes granted")]
    InvalidLength { len: usize, max: usize },
    #[error("operation not valid on a {0:?} ring")]
    WrongKind(RegionKind),
    /// This side already closed or sealed the ring.
    #[error("ring end closed")]
    Closed,
    /// The daemon reset the session; hand `errno` to the application.
    #[error("session reset (errno {errno})")]
    Reset { errno: i32 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl RingError {
    /// The session is unusable (reset it), as opposed to a caller mistake.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            RingError::Corrupt(_) | RingError::Protocol(_) | RingError::BadRegion(_)
        )
    }
}
