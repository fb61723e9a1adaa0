//! Hop-by-hop reliable link: selective-repeat ARQ between two neighbours, with congestion
//! control, pacing and per-flow fair queueing. One [`ArqLink`] per neighbour carries both
//! directions. It is sans-I/O: the daemon feeds it received bodies and the time, and sends
//! what [`ArqLink::poll_transmit`] returns.
//!
//! Packets are handed up the moment they are new, in any order: relays never wait for a hole
//! to fill (order is restored end to end by the session). Loss is found within about one link
//! RTT, even for sparse traffic: see `sender/recovery.rs` for the two detectors.
//!
//! # Wire format
//! Bodies follow the 16-byte outer header; integers are big-endian.
//!
//! `ReliableData` (kind 5): a data packet that also carries the acks for the other direction.
//! ```text
//!  u8   flags        bit 0 ACK_NOW: nothing else is queued behind this packet, ack at once;
//!                    bits 1-3: log2 of how many new packets one ack may cover;
//!                    bit 4 COPY: a redundant copy of a packet sent before (sparse links,
//!                    see `redundancy.rs`), counted apart from other duplicates;
//!                    other bits are ignored
//!  u64  seq          per-link, per-direction packet number (never reused, never wraps)
//!  u32  base_gap     seq − base, where base is the oldest sequence number the sender may
//!                    still send; the receiver treats everything below base as done
//!  u32  tx_time      sender's clock in microseconds, modulo 2^32 (echoed back)
//!  ack  (below)      acknowledgement of the reverse direction, at most 4 ranges
//!  ...  payload      the routed packet, opaque
//! ```
//! `ReliableAck` (kind 6): an ack alone (when there is no data to carry it).
//! ```text
//!  u64  cumulative   every sequence number below was received
//!  u32  window       the receiver accepts sequence numbers below cumulative + window
//!  u8   flags        bit 0: echo fields valid (the receiver has seen data)
//!  u32  echo_time    tx_time of the latest-sent data packet received
//!  u32  echo_delay   microseconds that packet waited before this ack left
//!  u8   count        number of ranges that follow (≤ 255)
//!  count × { u32 offset, u32 length }
//!                    received ranges above `cumulative`, highest first; a range ends at
//!                    cumulative + offset (the first) or at the previous range's start − offset
//!                    (offset ≥ 1), and covers the `length` (≥ 1) numbers below its end
//! ```
//! The receiver acks at once on a gap, a hole filled, a duplicate or ACK_NOW, otherwise
//! after the requested number of packets or `max_ack_delay`. Acks never acknowledge acks.
//! SACK is never reneged (what was acked was handed up), so the sender keeps what it learnt.

mod config;
mod pool;
mod queues;
mod ranges;
mod receiver;
mod redundancy;
mod sender;
mod wire;

pub use config::ArqConfig;
pub use pool::BufferPool;
pub use redundancy::RedundancyConfig;

use std::time::Duration;
use weft_core::{DecodeError, Instant, PacketKind};

use crate::cc::RttEstimator;
use queues::FlowQueues;
use receiver::{Arrival, Receiver};
use redundancy::{LinkLoad, Redundancy};
use sender::{Blocked, Sender, SenderConfig};
use wire::{DataHeader, MAX_PIGGYBACK_RANGES, MAX_RANGES};

/// Names the flow a packet belongs to (the daemon hashes the routed packet's endpoints).
pub type FlowId = u64;

/// Bytes a data body adds to its payload at most (header and piggybacked ack).
pub const DATA_OVERHEAD: usize =
    wire::DATA_HEADER_LEN + wire::ACK_FIXED_LEN + wire::RANGE_LEN * MAX_PIGGYBACK_RANGES;

/// `enqueue` refused a packet; it comes back to the caller untouched.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("packet refused by the reliable link: {reason:?}")]
pub struct Backpressure {
    pub packet: Vec<u8>,
    pub reason: Refusal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The flow's queue is over `flow_queue_limit_bytes`; wait for `poll_writable`.
    QueueFull,
    /// Longer than `mss`: it can never be sent on this link.
    TooLarge,
}

/// Estimates and gauges (RTT, window, queues) and counters (which only grow), for
/// `weft status` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArqStats {
    pub srtt: Duration,
    pub rttvar: Duration,
    pub min_rtt: Duration,
    /// Current retransmission timeout, after backoff.
    pub rto: Duration,
    pub cwnd: u64,
    pub ssthresh: u64,
    pub in_slow_start: bool,
    pub in_flight_bytes: u64,
    pub in_flight_packets: u64,
    /// Packets sent and not yet known delivered (in flight, lost or awaiting retransmission).
    pub unacked_packets: u64,
    pub queued_bytes: u64,
    pub queued_packets: u64,
    pub queued_flows: u64,
    /// New data packets sent (retransmissions and redundant copies not included).
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub retransmissions: u64,
    /// Redundant copies sent on a sparse link (not retransmissions: see `RedundancyConfig`).
    pub redundant_copies: u64,
    /// Payload bytes of those copies (comparable to `bytes_sent`).
    pub redundant_bytes: u64,
    /// Copies left unsent because a stream of new packets followed the original.
    pub redundant_copies_skipped: u64,
    /// Copies received before their original, which was lost or late: the packets they saved.
    pub redundant_copies_used: u64,
    /// Copies received after their original (suppressed, not counted in `duplicates`).
    pub redundant_copies_discarded: u64,
    /// Data packets the peer acknowledged.
    pub packets_acked: u64,
    /// Standalone `ReliableAck` bodies sent.
    pub acks_sent: u64,
    /// Ack blocks processed (standalone or piggybacked).
    pub acks_received: u64,
    /// New data packets received and handed up.
    pub packets_received: u64,
    pub bytes_received: u64,
    /// Received again (suppressed); redundant copies are counted apart.
    pub duplicates: u64,
    /// Losses found by SACK (a later-sent packet arrived first).
    pub losses_by_sack: u64,
    /// Losses found by the retransmission timer.
    pub losses_by_timer: u64,
    /// Times the retransmission timer expired.
    pub timeouts: u64,
    /// Losses read as congestion (the others were taken for random loss).
    pub congestion_events: u64,
    /// Recent fraction of packets lost, in parts per million.
    pub loss_rate_ppm: u64,
    /// Holes in the receive sequence right now.
    pub receive_gaps: u64,
    pub drops: ArqDrops,
}

/// What was thrown away, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArqDrops {
    /// Bodies that did not decode.
    pub malformed: u64,
    /// Data too far ahead of the receive window.
    pub beyond_window: u64,
    /// Acks naming packets never sent (ignored).
    pub invalid_acks: u64,
    /// `enqueue` refusals because a flow queue was full.
    pub backpressure: u64,
    /// `enqueue` refusals because the packet exceeded `mss`.
    pub too_large: u64,
}

/// The reliable link to one neighbour, both directions.
#[derive(Debug)]
pub struct ArqLink {
    cfg: ArqConfig,
    sender: Sender,
    receiver: Receiver,
    queues: FlowQueues,
    redundancy: Redundancy,
    /// The pacer held data back until then (cleared whenever `poll_transmit` runs).
    pacing_until: Option<Instant>,
    /// The latest time any call brought (for `take_all`, which is not told the time).
    last_now: Instant,
    /// When a data packet last asked for an immediate ack.
    last_ack_request: Option<Instant>,
    acks_sent: u64,
    drops: ArqDrops,
}

impl ArqLink {
    pub fn new(cfg: ArqConfig, now: Instant) -> Self {
        let cfg = cfg.sanitized();
        let sender = Sender::new(
            SenderConfig {
                min_rto: cfg.min_rto,
                max_rto: cfg.max_rto,
                max_ack_delay: cfg.max_ack_delay,
                max_outstanding: cfg.max_outstanding_packets,
                pacing: cfg.pacing,
                mss: cfg.mss as u64,
                random_loss_tolerance: cfg.random_loss_tolerance,
            },
            RttEstimator::new(cfg.initial_rtt),
            cfg.build_cc(),
            cfg.build_pacer(),
            now,
        );
        ArqLink {
            receiver: Receiver::new(cfg.max_outstanding_packets, cfg.max_ack_delay),
            queues: FlowQueues::new(
                cfg.mss,
                cfg.flow_queue_limit_bytes,
                cfg.flow_queue_low_water_bytes,
            ),
            redundancy: Redundancy::new(cfg.redundancy.clone(), now),
            sender,
            pacing_until: None,
            last_now: now,
            last_ack_request: None,
            acks_sent: 0,
            drops: ArqDrops::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &ArqConfig {
        &self.cfg
    }

    /// Queues an opaque packet (≤ mss) on `flow`. Refused, and returned, when that flow's
    /// queue is full (`poll_writable` names it once it drains) or the packet is too large;
    /// other flows are unaffected.
    pub fn enqueue(&mut self, flow: FlowId, packet: Vec<u8>) -> Result<(), Backpressure> {
        if packet.len() > self.cfg.mss {
            self.drops.too_large += 1;
            return Err(Backpressure {
                packet,
                reason: Refusal::TooLarge,
            });
        }
        self.queues.push(flow, packet).map_err(|packet| {
            self.drops.backpressure += 1;
            Backpressure {
                packet,
                reason: Refusal::QueueFull,
            }
        })
    }

    /// `enqueue` with a different limit for this flow's queue: relays and packets rerouted from
    /// a dead link were admitted upstream already and use a larger, hard limit rather than the
    /// back-pressure limit meant for local senders.
    pub fn enqueue_with_limit(
        &mut self,
        flow: FlowId,
        packet: Vec<u8>,
        limit: usize,
    ) -> Result<(), Backpressure> {
        if packet.len() > self.cfg.mss {
            self.drops.too_large += 1;
            return Err(Backpressure {
                packet,
                reason: Refusal::TooLarge,
            });
        }
        self.queues
            .push_with_limit(flow, packet, limit)
            .map_err(|packet| {
                self.drops.backpressure += 1;
                Backpressure {
                    packet,
                    reason: Refusal::QueueFull,
                }
            })
    }

    pub fn flow_queued_bytes(&self, flow: FlowId) -> usize {
        self.queues.flow_bytes(flow)
    }

    /// An ARQ body from the neighbour (after the outer header, whose kind is `kind`). Returns
    /// the carried packet if it is new; duplicates are suppressed. Malformed bodies change
    /// nothing and are counted.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        kind: PacketKind,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, DecodeError> {
        self.handle_packet_pooled(now, kind, body, &mut BufferPool::none())
    }

    /// As [`handle_packet`](Self::handle_packet), taking the buffer for the carried packet
    /// from `pool` and giving it the buffers of packets this ack shows delivered.
    pub fn handle_packet_pooled(
        &mut self,
        now: Instant,
        kind: PacketKind,
        body: &[u8],
        pool: &mut BufferPool,
    ) -> Result<Option<Vec<u8>>, DecodeError> {
        self.observe(now);
        match kind {
            PacketKind::ReliableData => {
                let frame = wire::decode_data(body).inspect_err(|_| self.drops.malformed += 1)?;
                self.on_ack(now, &frame.ack, pool);
                match self
                    .receiver
                    .on_data(now, &frame.header, frame.payload.len())
                {
                    Arrival::New => {
                        let mut packet = pool.take();
                        packet.extend_from_slice(frame.payload);
                        Ok(Some(packet))
                    }
                    Arrival::Duplicate | Arrival::BeyondWindow => Ok(None),
                }
            }
            PacketKind::ReliableAck => {
                let ack = wire::decode_ack(body).inspect_err(|_| self.drops.malformed += 1)?;
                self.on_ack(now, &ack, pool);
                Ok(None)
            }
            other => {
                self.drops.malformed += 1;
                Err(DecodeError::UnknownKind(other as u8))
            }
        }
    }

    /// The next body to send now, if any: a retransmission, new data (DRR across flows), or
    /// a standalone ack; respecting the congestion window and the pacer. Call it until it
    /// returns `None` after every `enqueue`, `handle_packet` and `handle_timeout`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(PacketKind, Vec<u8>)> {
        let mut body = Vec::new();
        self.poll_transmit_into(now, &mut body)
            .map(|kind| (kind, body))
    }

    /// As [`poll_transmit`](Self::poll_transmit), appending the body to `out` (which may
    /// already hold the outer header) to spare a copy.
    pub fn poll_transmit_into(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<PacketKind> {
        self.observe(now);
        self.pacing_until = None;
        // A due copy goes first: it is small, time-critical, and outside the window.
        if self.send_copy(now, out) {
            return Some(PacketKind::ReliableData);
        }
        if let Some(len) = self.sender.peek_lost() {
            if self.may_send(now, len) {
                self.send_retransmission(now, out);
                return Some(PacketKind::ReliableData);
            }
        } else if let Some(len) = self
            .queues
            .peek_len()
            .filter(|_| self.sender.can_send_new())
        {
            if self.may_send(now, len as u64) {
                self.send_new(now, out);
                return Some(PacketKind::ReliableData);
            }
        }
        if self.receiver.ack_due(now) {
            let max_ranges =
                ((self.cfg.max_body_len() - wire::ACK_FIXED_LEN) / wire::RANGE_LEN).min(MAX_RANGES);
            let ack = self.receiver.take_ack(now, max_ranges);
            wire::encode_ack(out, &ack);
            self.acks_sent += 1;
            return Some(PacketKind::ReliableAck);
        }
        None
    }

    fn observe(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
    }

    fn on_ack(&mut self, now: Instant, ack: &wire::AckFrame, pool: &mut BufferPool) {
        self.sender.on_ack(now, ack, pool);
        let sender = &self.sender;
        self.redundancy
            .forget(|seq| sender.in_flight_len(seq).is_some());
    }

    fn link_load(&self) -> LinkLoad {
        LinkLoad {
            backlog: !self.queues.is_empty() || self.sender.has_lost(),
            in_flight_bytes: self.sender.in_flight().0,
            window: self.sender.cc().window(),
            srtt: self.sender.rtt().srtt(),
        }
    }

    /// Sends the redundant copy that is due, if any.
    fn send_copy(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let load = self.link_load();
        let sender = &self.sender;
        let Some(seq) = self
            .redundancy
            .take_due(now, load, sender.next_seq(), |seq| {
                sender.in_flight_len(seq)
            })
        else {
            return false;
        };
        self.sender.record_copy(now, seq);
        // Acked at once, whether it arrives first or finds the original (whose ack it covers).
        self.write_data(now, seq, true, true, out);
        true
    }

    fn may_send(&mut self, now: Instant, len: u64) -> bool {
        match self.sender.check_send(now, len) {
            Ok(()) => true,
            Err(Blocked::PacedUntil(at)) => {
                self.pacing_until = Some(at);
                false
            }
            Err(Blocked::Window) => false,
        }
    }

    /// Nothing else waits to be sent, so the peer's prompt ack is what we wait for next.
    fn nothing_left(&mut self) -> bool {
        self.queues.is_empty() && self.sender.peek_lost().is_none()
    }

    fn send_retransmission(&mut self, now: Instant, out: &mut Vec<u8>) {
        let queue_empty = self.queues.is_empty();
        let Some(seq) = self.sender.retransmit(now, queue_empty) else {
            return;
        };
        // A repair is worth an immediate ack: the sender learns at once whether it landed.
        self.write_data(now, seq, true, false, out);
    }

    fn send_new(&mut self, now: Instant, out: &mut Vec<u8>) {
        let Some(held) = self.queues.pop() else {
            return;
        };
        let queue_empty = self.queues.is_empty();
        let len = held.packet.len() as u64;
        let seq = self.sender.send_new(now, held, queue_empty);
        let load = self.link_load();
        self.redundancy.on_new_sent(now, seq, len, load);
        let ack_now = self.nothing_left() && self.may_ask_for_ack(now);
        self.write_data(now, seq, ack_now, false, out);
    }

    /// The end of a burst asks the peer for an ack at once, but at most once per
    /// `max_ack_delay`: the peer acks within that delay anyway, so asking more often gains
    /// nothing, and a relay forwarding a stream one packet per arrival ends a "burst" with
    /// every packet (an ack per data packet, half the datagrams on the path, before this).
    /// A sparse flow's packets are further apart and each still asks.
    fn may_ask_for_ack(&mut self, now: Instant) -> bool {
        if self
            .last_ack_request
            .is_some_and(|t| now.saturating_since(t) < self.cfg.max_ack_delay)
        {
            return false;
        }
        self.last_ack_request = Some(now);
        true
    }

    fn write_data(&mut self, now: Instant, seq: u64, ack_now: bool, copy: bool, out: &mut Vec<u8>) {
        let ack = self.receiver.take_ack(now, MAX_PIGGYBACK_RANGES);
        let header = DataHeader {
            ack_now,
            ack_every: self.sender.ack_every(),
            seq,
            base: self.sender.base(),
            tx_time_us: now.as_micros() as u32,
            copy,
        };
        wire::encode_data(out, &header, &ack, self.sender.payload(seq));
    }

    /// When to call `handle_timeout` (and then `poll_transmit`) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let paced = self
            .pacing_until
            .filter(|_| !self.queues.is_empty() || self.sender.has_lost());
        [
            self.sender.loss_timeout(),
            self.receiver.ack_timeout(),
            paced,
            self.redundancy.next_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the loss timers; afterwards drain `poll_transmit`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.observe(now);
        self.sender.on_timeout(now);
    }

    /// Flows whose queue fell below the low-water mark since the last call (resume feeding).
    pub fn poll_writable(&mut self) -> Option<FlowId> {
        self.queues.pop_writable()
    }

    /// On link death: every queued or unacknowledged packet with its flow, oldest first (in
    /// the order they were enqueued, across flows). The link is left empty and usable: sequence
    /// numbers continue and the peer is told to skip the abandoned ones. Packets the peer
    /// received but could not acknowledge before the link died are included (the end-to-end
    /// session drops such duplicates).
    pub fn take_all(&mut self) -> Vec<(FlowId, Vec<u8>)> {
        let mut all = self.sender.take_outstanding(
            self.cfg.build_cc(),
            self.cfg.build_pacer(),
            self.last_now,
        );
        all.extend(self.queues.drain_all());
        all.sort_unstable_by_key(|held| held.order);
        self.pacing_until = None;
        self.redundancy.clear();
        all.into_iter()
            .map(|held| (held.flow, held.packet))
            .collect()
    }

    /// The neighbour restarted (new incarnation): forget both directions' sequence state and
    /// the RTT; packets still held (queued or unacknowledged) stay and are sent afresh. The
    /// daemon must call this whenever the peer's incarnation changes, or the fresh peer's
    /// packets would look like old duplicates.
    pub fn reset(&mut self, now: Instant) {
        self.observe(now);
        let mut held =
            self.sender
                .take_outstanding(self.cfg.build_cc(), self.cfg.build_pacer(), now);
        held.extend(self.queues.drain_all());
        held.sort_unstable_by_key(|held| held.order);
        self.queues.requeue(held);
        self.sender
            .reset_rtt(RttEstimator::new(self.cfg.initial_rtt));
        self.receiver.reset();
        self.pacing_until = None;
        self.redundancy.clear();
    }

    /// An RTT measured elsewhere (hellos); used only until the link has its own sample.
    pub fn seed_rtt(&mut self, rtt: Duration) {
        self.sender.seed_rtt(rtt);
    }

    /// Nothing queued, unacknowledged or owed to the peer.
    pub fn is_idle(&self) -> bool {
        self.queues.is_empty()
            && self.sender.outstanding() == 0
            && self.receiver.ack_timeout().is_none()
    }

    pub fn stats(&self) -> ArqStats {
        let rtt = self.sender.rtt();
        let cc = self.sender.cc();
        let (in_flight_bytes, in_flight_packets) = self.sender.in_flight();
        let (queued_bytes, queued_packets) = self.queues.totals();
        let s = &self.sender.counters;
        let r = &self.receiver.counters;
        ArqStats {
            srtt: rtt.srtt(),
            rttvar: rtt.rttvar(),
            min_rtt: rtt.min_rtt(),
            rto: self.sender.rto(),
            cwnd: cc.window(),
            ssthresh: cc.ssthresh(),
            in_slow_start: cc.in_slow_start(),
            in_flight_bytes,
            in_flight_packets,
            unacked_packets: self.sender.unacked() as u64,
            queued_bytes: queued_bytes as u64,
            queued_packets: queued_packets as u64,
            queued_flows: self.queues.flow_count() as u64,
            packets_sent: s.packets_sent,
            bytes_sent: s.bytes_sent,
            retransmissions: s.retransmissions,
            redundant_copies: self.redundancy.counters.copies_sent,
            redundant_bytes: self.redundancy.counters.copy_bytes,
            redundant_copies_skipped: self.redundancy.counters.copies_skipped_followed,
            redundant_copies_used: r.copies_used,
            redundant_copies_discarded: r.copies_discarded,
            packets_acked: s.packets_acked,
            acks_sent: self.acks_sent,
            acks_received: s.acks_processed,
            packets_received: r.packets,
            bytes_received: r.bytes,
            duplicates: r.duplicates,
            losses_by_sack: s.losses_by_sack,
            losses_by_timer: s.losses_by_timer,
            timeouts: s.timeouts,
            congestion_events: s.congestion_events,
            loss_rate_ppm: (self.sender.loss_rate() * 1e6) as u64,
            receive_gaps: self.receiver.gap_count() as u64,
            drops: ArqDrops {
                beyond_window: r.beyond_window,
                invalid_acks: s.invalid_acks,
                ..self.drops.clone()
            },
        }
    }
}
