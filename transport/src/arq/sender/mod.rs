//! Send half of a link: the record of every unacknowledged packet, transmissions, ack and
//! RTT processing, and the gate of congestion window and pacer. Loss detection and the
//! reading of losses as congestion live in `recovery`.

mod recovery;

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;
use weft_core::Instant;

use super::pool::BufferPool;
use super::queues::Held;
use super::ranges::SeqRanges;
use super::wire::{AckFrame, Echo};
use super::FlowId;
use crate::cc::{CongestionControl, LossClassifier, Pacer, RttEstimator};

/// Echoes claiming a send time further back than this are nonsense and ignored.
const MAX_ECHO_AGE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    InFlight,
    /// Declared lost, waiting in `lost` for a retransmission.
    Lost,
    /// Reported received by SACK (never reneged: the peer handed it up already).
    Sacked,
}

#[derive(Debug)]
struct Slot {
    flow: FlowId,
    /// Place in the link's enqueue order (see `Held`).
    order: u64,
    /// Emptied once the packet is known delivered.
    payload: Vec<u8>,
    len: u64,
    state: SlotState,
    last_sent: Instant,
    transmissions: u32,
    /// Sent while the link had nothing else to send: its ack must not grow the window.
    app_limited: bool,
    /// When a redundant copy of it left, if one did.
    copy_sent: Option<Instant>,
}

/// One transmission, in send order; stale once its packet is acked, lost or sent again.
#[derive(Debug, Clone, Copy)]
struct Transmission {
    at: Instant,
    seq: u64,
    number: u32,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SenderCounters {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub retransmissions: u64,
    pub acks_processed: u64,
    pub invalid_acks: u64,
    pub losses_by_sack: u64,
    pub losses_by_timer: u64,
    pub timeouts: u64,
    pub packets_acked: u64,
    /// Losses read as congestion (the window was offered a reduction).
    pub congestion_events: u64,
}

/// Timer and window settings the sender needs from `ArqConfig`.
#[derive(Debug, Clone)]
pub(crate) struct SenderConfig {
    pub min_rto: Duration,
    pub max_rto: Duration,
    pub max_ack_delay: Duration,
    pub max_outstanding: u64,
    pub pacing: bool,
    pub mss: u64,
    pub random_loss_tolerance: f64,
}

#[derive(Debug)]
pub(crate) struct Sender {
    cfg: SenderConfig,
    next_seq: u64,
    /// The oldest sequence number not yet known delivered; `slots[0]` holds it.
    base: u64,
    slots: VecDeque<Slot>,
    send_log: VecDeque<Transmission>,
    /// Packets declared lost, resent lowest first: the lowest hole is what holds the
    /// receiver's window back.
    lost: BTreeSet<u64>,
    /// Sequence numbers ≥ `base` the peer reported by SACK.
    sacked: SeqRanges,
    in_flight_bytes: u64,
    in_flight_packets: u64,
    rtt: RttEstimator,
    cc: Box<dyn CongestionControl>,
    pacer: Pacer,
    backoff: u32,
    /// First sequence number beyond the receive window the peer last advertised.
    peer_window_end: Option<u64>,
    /// The last time an ack acknowledged something new (restarts the timer).
    last_progress: Option<Instant>,
    /// Moving average of the fraction of packets lost.
    losses: LossClassifier,
    /// Send time and RTT of the latest-sent transmission known delivered.
    rack: Option<(Instant, Duration)>,
    rack_deadline: Option<Instant>,
    /// Echoes older than this were already sampled.
    last_echo: Option<Instant>,
    /// Earlier echoes cannot be ours (sent before a reset).
    epoch_start: Instant,
    pub counters: SenderCounters,
}

/// What stops a packet from leaving now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocked {
    Window,
    PacedUntil(Instant),
}

impl Sender {
    pub fn new(
        cfg: SenderConfig,
        rtt: RttEstimator,
        cc: Box<dyn CongestionControl>,
        pacer: Pacer,
        now: Instant,
    ) -> Self {
        Sender {
            losses: LossClassifier::new(cfg.random_loss_tolerance, cfg.mss),
            cfg,
            next_seq: 0,
            base: 0,
            slots: VecDeque::new(),
            send_log: VecDeque::new(),
            lost: BTreeSet::new(),
            sacked: SeqRanges::default(),
            in_flight_bytes: 0,
            in_flight_packets: 0,
            rtt,
            cc,
            pacer,
            backoff: 0,
            peer_window_end: None,
            last_progress: None,
            rack: None,
            rack_deadline: None,
            last_echo: None,
            epoch_start: Instant::from_micros(now.as_micros()),
            counters: SenderCounters::default(),
        }
    }

    /// Gives up every packet not known delivered (oldest first) and restarts congestion
    /// control; sequence numbers continue, and the next data packet tells the peer to skip.
    pub fn take_outstanding(
        &mut self,
        cc: Box<dyn CongestionControl>,
        pacer: Pacer,
        now: Instant,
    ) -> Vec<Held> {
        let taken = self
            .slots
            .drain(..)
            .filter(|slot| slot.state != SlotState::Sacked)
            .map(|slot| Held {
                order: slot.order,
                flow: slot.flow,
                packet: slot.payload,
            })
            .collect();
        self.base = self.next_seq;
        self.send_log.clear();
        self.lost.clear();
        self.sacked.clear();
        self.in_flight_bytes = 0;
        self.in_flight_packets = 0;
        self.cc = cc;
        self.pacer = pacer;
        self.backoff = 0;
        self.last_progress = None;
        self.peer_window_end = None;
        self.rack = None;
        self.rack_deadline = None;
        self.last_echo = None;
        self.epoch_start = Instant::from_micros(now.as_micros());
        taken
    }

    pub fn reset_rtt(&mut self, rtt: RttEstimator) {
        self.rtt = rtt;
    }

    pub fn seed_rtt(&mut self, sample: Duration) {
        if !self.rtt.has_sample() {
            self.rtt.update(sample);
        }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    /// The sequence number the next new packet gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    pub fn cc(&self) -> &dyn CongestionControl {
        self.cc.as_ref()
    }

    pub fn in_flight(&self) -> (u64, u64) {
        (self.in_flight_bytes, self.in_flight_packets)
    }

    pub fn outstanding(&self) -> usize {
        self.slots.len()
    }

    /// Room for one more new packet in our window and in the one the peer advertised.
    pub fn can_send_new(&self) -> bool {
        self.next_seq - self.base < self.cfg.max_outstanding && self.in_peer_window(self.next_seq)
    }

    /// The peer would accept `seq` (as far as its last ack told).
    fn in_peer_window(&self, seq: u64) -> bool {
        match self.peer_window_end {
            Some(end) => seq < end,
            None => true,
        }
    }

    pub fn has_lost(&self) -> bool {
        !self.lost.is_empty()
    }

    /// How many packets the receiver may fold into one ack: about eight acks per window,
    /// so bulk transfers do not pay an ack per packet while small windows stay ack-clocked.
    pub fn ack_every(&self) -> u32 {
        let window_packets = self.cc.window() / self.cfg.mss.max(1);
        let wanted = (window_packets / 8).clamp(2, 64) as u32;
        1 << wanted.ilog2()
    }

    /// Whether `len` bytes may leave now under the congestion window and the pacer.
    pub fn check_send(&mut self, now: Instant, len: u64) -> Result<(), Blocked> {
        let window = self.cc.window();
        if self.in_flight_bytes > 0 && self.in_flight_bytes + len > window {
            return Err(Blocked::Window);
        }
        if self.cfg.pacing {
            let srtt = self.rtt.srtt();
            if let Some(at) = self
                .pacer
                .delay(now, len, window, srtt, self.cc.in_slow_start())
            {
                return Err(Blocked::PacedUntil(at));
            }
        }
        Ok(())
    }

    /// Length of the next packet waiting for retransmission, if the peer's window admits it
    /// (stale entries are dropped on the way).
    pub fn peek_lost(&mut self) -> Option<u64> {
        while let Some(&seq) = self.lost.first() {
            match self.slot(seq) {
                Some(slot) if slot.state == SlotState::Lost => {
                    return self.in_peer_window(seq).then_some(slot.len);
                }
                _ => {
                    self.lost.pop_first();
                }
            }
        }
        None
    }

    /// Retransmits the packet `peek_lost` named and returns its sequence number.
    /// `queue_empty`: no new data waits behind it.
    pub fn retransmit(&mut self, now: Instant, queue_empty: bool) -> Option<u64> {
        self.peek_lost()?;
        let seq = self.lost.pop_first()?;
        self.counters.retransmissions += 1;
        self.transmit(now, seq, queue_empty);
        Some(seq)
    }

    /// Records a new packet as sent now and returns its sequence number.
    /// `queue_empty`: no new data waits behind it.
    pub fn send_new(&mut self, now: Instant, held: Held, queue_empty: bool) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let len = held.packet.len() as u64;
        self.slots.push_back(Slot {
            flow: held.flow,
            order: held.order,
            payload: held.packet,
            len,
            state: SlotState::InFlight,
            last_sent: now,
            transmissions: 0,
            app_limited: false,
            copy_sent: None,
        });
        self.counters.packets_sent += 1;
        self.counters.bytes_sent += len;
        self.transmit(now, seq, queue_empty);
        seq
    }

    /// Length of `seq` if it is in flight: neither known delivered nor declared lost (a lost
    /// packet is retransmitted, so a copy would be redundant twice over).
    pub fn in_flight_len(&self, seq: u64) -> Option<u64> {
        self.slot(seq)
            .filter(|slot| slot.state == SlotState::InFlight)
            .map(|slot| slot.len)
    }

    /// A redundant copy of `seq` (in flight) left now. It is not a retransmission: window,
    /// pacer and counters are untouched. The packet's loss timer and time-ordered detection
    /// run from the copy, the transmission most likely to be acked last; timed from the
    /// original, the timer would expire just before the copy's ack returns.
    pub fn record_copy(&mut self, now: Instant, seq: u64) {
        let Some(slot) = self
            .slot_mut(seq)
            .filter(|s| s.state == SlotState::InFlight)
        else {
            return;
        };
        slot.last_sent = now;
        slot.transmissions += 1;
        slot.copy_sent = Some(now);
        let number = slot.transmissions;
        self.send_log.push_back(Transmission {
            at: now,
            seq,
            number,
        });
        self.compact_send_log();
    }

    /// The payload of an unacknowledged packet (empty once it is known delivered).
    pub fn payload(&self, seq: u64) -> &[u8] {
        self.slot(seq).map_or(&[][..], |slot| &slot.payload[..])
    }

    /// Packets sent and not yet known delivered.
    pub fn unacked(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.state != SlotState::Sacked)
            .count()
    }

    fn transmit(&mut self, now: Instant, seq: u64, queue_empty: bool) {
        let len = self.slot(seq).map_or(0, |slot| slot.len);
        // Nothing else to send and room in the window: the window is not what limits us, so
        // this packet's ack says nothing about capacity.
        let app_limited = queue_empty
            && self.peek_lost().is_none()
            && self.in_flight_bytes + len < self.cc.window();
        let Some(slot) = self.slot_mut(seq) else {
            return;
        };
        slot.state = SlotState::InFlight;
        slot.last_sent = now;
        slot.transmissions += 1;
        slot.app_limited = app_limited;
        let (len, number) = (slot.len, slot.transmissions);
        self.in_flight_bytes += len;
        self.in_flight_packets += 1;
        self.send_log.push_back(Transmission {
            at: now,
            seq,
            number,
        });
        self.pacer.on_sent(len);
        self.compact_send_log();
    }

    fn slot(&self, seq: u64) -> Option<&Slot> {
        let index = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get(index)
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let index = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(index)
    }

    fn is_live(&self, t: &Transmission) -> bool {
        self.slot(t.seq)
            .is_some_and(|s| s.state == SlotState::InFlight && s.transmissions == t.number)
    }

    /// Stale transmissions behind a long-lived one would pile up; rebuild when they dominate.
    fn compact_send_log(&mut self) {
        if self.send_log.len() > 64 && self.send_log.len() as u64 > 4 * self.in_flight_packets {
            let log = std::mem::take(&mut self.send_log);
            self.send_log = log.into_iter().filter(|t| self.is_live(t)).collect();
        }
    }

    fn pop_stale_front(&mut self) {
        while let Some(front) = self.send_log.front() {
            if self.is_live(front) {
                break;
            }
            self.send_log.pop_front();
        }
    }

    /// Processes the peer's ack. Returns false (and changes nothing) if it acknowledges
    /// packets never sent.
    /// Buffers of packets now known delivered go to `pool`.
    pub fn on_ack(&mut self, now: Instant, ack: &AckFrame, pool: &mut BufferPool) -> bool {
        let beyond = |seq: u64| seq > self.next_seq;
        if beyond(ack.cumulative) || ack.ranges.iter().any(|&(_, end)| beyond(end)) {
            self.counters.invalid_acks += 1;
            return false;
        }
        self.counters.acks_processed += 1;
        // A peer configured with a smaller window than ours is respected, not flooded.
        let window_end = ack.cumulative.saturating_add(u64::from(ack.window));
        self.peer_window_end = Some(
            self.peer_window_end
                .map_or(window_end, |e| e.max(window_end)),
        );
        let echoed = ack.echo.and_then(|echo| self.echo_sent_time(now, echo));
        if let (Some(echo), Some(sent)) = (ack.echo, echoed) {
            self.on_echo(now, sent, echo);
        }
        let mut progress = false;
        while self.base < ack.cumulative {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            self.base += 1;
            progress |= self.on_delivered(now, &slot, echoed);
            pool.give(slot.payload);
        }
        self.sacked.remove_below(self.base);
        for &(start, end) in &ack.ranges {
            let mut fresh = Vec::new();
            self.sacked
                .insert(start.max(self.base), end, |a, b| fresh.push((a, b)));
            for (a, b) in fresh {
                for seq in a..b {
                    progress |= self.mark_sacked(now, seq, echoed, pool);
                }
            }
        }
        while self
            .slots
            .front()
            .is_some_and(|s| s.state == SlotState::Sacked)
        {
            self.slots.pop_front();
            self.base += 1;
        }
        self.sacked.remove_below(self.base);
        if progress {
            self.backoff = 0;
            self.last_progress = Some(now);
        }
        self.detect_by_sack(now);
        self.pop_stale_front();
        true
    }

    /// When the transmission an echo names left (on our clock), if the echo is plausible.
    fn echo_sent_time(&self, now: Instant, echo: Echo) -> Option<Instant> {
        let now_us = now.as_micros();
        let age_us = u64::from((now_us as u32).wrapping_sub(echo.tx_time_us));
        let sent = now_us.checked_sub(age_us).map(Instant::from_micros)?;
        (Duration::from_micros(age_us) <= MAX_ECHO_AGE && sent >= self.epoch_start).then_some(sent)
    }

    /// Samples the RTT from an echo of the transmission that left at `sent`.
    fn on_echo(&mut self, now: Instant, sent: Instant, echo: Echo) {
        if self.last_echo.is_some_and(|e| sent <= e) {
            return;
        }
        self.last_echo = Some(sent);
        let age = now.saturating_since(sent);
        let delay = Duration::from_micros(u64::from(echo.delay_us));
        // RFC 9002 §5.3: subtract the peer's ack delay unless that would undercut the minimum.
        let sample = if age.saturating_sub(delay) >= self.rtt.min_rtt() || !self.rtt.has_sample() {
            age.saturating_sub(delay).max(Duration::from_micros(1))
        } else {
            age
        };
        self.rtt.update(sample);
        self.rack = Some((sent, age));
    }

    /// Books a packet as delivered; false if it was already. `echoed`: when the transmission
    /// the acknowledging ack echoes left.
    fn on_delivered(&mut self, now: Instant, slot: &Slot, echoed: Option<Instant>) -> bool {
        match slot.state {
            SlotState::Sacked => return false,
            SlotState::InFlight => {
                self.in_flight_bytes -= slot.len;
                self.in_flight_packets -= 1;
            }
            SlotState::Lost => {}
        }
        self.counters.packets_acked += 1;
        // Its first ack echoing the copy means the original or its ack was lost. Without the
        // copy that loss would have cost a retransmission, which the estimate counts; nothing
        // needed repair, so it is no congestion signal.
        if slot.copy_sent.is_some() && slot.copy_sent == echoed {
            self.losses.on_lost();
        }
        self.losses.on_delivered();
        self.cc
            .on_ack(now, slot.last_sent, slot.len, &self.rtt, slot.app_limited);
        true
    }

    fn mark_sacked(
        &mut self,
        now: Instant,
        seq: u64,
        echoed: Option<Instant>,
        pool: &mut BufferPool,
    ) -> bool {
        let Some(index) = seq
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return false;
        };
        let before = Slot {
            payload: std::mem::take(&mut slot.payload),
            ..*slot
        };
        slot.state = SlotState::Sacked;
        let progress = self.on_delivered(now, &before, echoed);
        pool.give(before.payload);
        progress
    }
}
