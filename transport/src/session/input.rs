//! What a session does with a received segment: handshake completion, data reassembly and
//! the acknowledgement policy, acknowledgement processing (RTT samples, SACK scoreboard,
//! spurious-retransmission detection, RACK loss detection, CE reaction, window updates).

use super::config::RecoveryMode;
use super::connection::{timestamp, Session};
use super::wire::{Flags, Segment, MAX_SACK_BLOCKS};
use super::{SessionError, SessionEvent, SessionState};
use std::time::Duration;
use weft_core::{DecodeError, Instant};

/// Reordering window cap, in quarters of the minimum RTT.
const MAX_REORDER_QUARTERS: u32 = 64;

impl Session {
    /// When the segment we sent with `tsval == tsecr` left, if the echo is plausible.
    fn echo_time(&self, now: Instant, tsecr: u32) -> Option<Instant> {
        let elapsed = u64::from(timestamp(now).wrapping_sub(tsecr));
        let lifetime = now.saturating_since(self.created_at).as_micros() as u64;
        (elapsed <= lifetime + 1).then(|| now - Duration::from_micros(elapsed))
    }

    fn take_rtt_sample(&mut self, now: Instant, sent: Instant, ack_delay_us: u32) {
        let raw = now.saturating_since(sent);
        let delay = Duration::from_micros(u64::from(ack_delay_us));
        let adjusted = raw
            .checked_sub(delay)
            .filter(|a| !self.rtt.has_sample() || *a >= self.rtt.min_rtt())
            .unwrap_or(raw);
        self.rtt.update(adjusted);
    }

    pub fn handle_segment(
        &mut self,
        now: Instant,
        segment: &[u8],
        ce: bool,
    ) -> Result<(), DecodeError> {
        let seg = Segment::decode(segment)?;
        if seg.conn_id != self.conn_id
            || seg.src_port != self.remote.port
            || seg.dst_port != self.local.port
        {
            return Err(DecodeError::Invalid("segment belongs to another session"));
        }
        if self.state == SessionState::Closed {
            return Ok(());
        }
        self.counters.segments_received += 1;
        let ack_eliciting = !seg.payload.is_empty()
            || seg.flags.contains(Flags::FIN)
            || seg.flags.contains(Flags::PROBE);
        if ce {
            self.counters.ce_marks_received += 1;
            self.ack.ce_count = self.ack.ce_count.wrapping_add(1);
            // Tell the sender now, but never answer a pure ACK (ACKs could ping-pong).
            self.ack.immediate |= ack_eliciting;
        }
        if seg.flags.contains(Flags::RST) {
            match self.state {
                SessionState::SynSent => self.fail(SessionError::Refused),
                SessionState::TimeWait => {
                    self.state = SessionState::Closed;
                    self.update_lifecycle(None);
                }
                _ => self.fail(SessionError::Reset),
            }
            return Ok(());
        }
        self.last_heard = now;
        self.keepalives_unanswered = 0;
        let syn = seg.flags.contains(Flags::SYN);
        let has_ack = seg.flags.contains(Flags::ACK);
        match self.state {
            SessionState::SynSent => {
                if syn && has_ack && seg.ack == 0 {
                    self.complete_open(now, &seg);
                }
                return Ok(());
            }
            SessionState::SynReceived => {
                if syn && !has_ack {
                    // Our SYN|ACK was lost: answer the retransmitted SYN.
                    self.handshake_pending = true;
                    return Ok(());
                }
                // The handshake completes only with an echo of a timestamp this incarnation
                // sent: a stale duplicate SYN that created us after the real session ended
                // draws an answer echoing the old incarnation's clock, and dies here.
                if !has_ack || syn || self.echo_time(now, seg.tsecr).is_none() {
                    return Ok(());
                }
                self.complete_open(now, &seg);
            }
            SessionState::Established | SessionState::TimeWait => {
                if syn {
                    // A retransmitted SYN|ACK means our handshake ACK was lost.
                    self.ack.immediate |= has_ack;
                    return Ok(());
                }
            }
            SessionState::Closed => return Ok(()),
        }
        if !seg.payload.is_empty() || seg.flags.contains(Flags::FIN) {
            self.on_data(now, &seg)?;
            if self.state == SessionState::TimeWait {
                // The peer has not heard our last acknowledgement yet: wait for it afresh.
                self.time_wait_until = Some(now + self.cfg.time_wait);
            }
        }
        if seg.flags.contains(Flags::PROBE) {
            self.ack.immediate = true;
            self.ack.echo_tsval = seg.tsval;
            self.ack.echo_arrival = now;
        }
        if has_ack {
            self.on_ack(now, &seg);
        }
        self.update_lifecycle(Some(now));
        Ok(())
    }

    /// The handshake completed (SYN|ACK received, or the ACK answering ours).
    fn complete_open(&mut self, now: Instant, seg: &Segment<'_>) {
        if self.state == SessionState::SynSent {
            self.learn_peer_mss(seg);
            self.ack.echo_tsval = seg.tsval;
            self.ack.echo_arrival = now;
            self.ack.immediate = true;
        }
        if let Some(sent) = self.echo_time(now, seg.tsecr) {
            self.take_rtt_sample(now, sent, seg.ack_delay_us);
        }
        self.peer_right_edge = self
            .peer_right_edge
            .max(seg.ack.saturating_add(u64::from(seg.window)));
        self.state = SessionState::Established;
        self.handshake_pending = false;
        self.rto_at = None;
        self.backoff = 0;
        self.progress_at = now;
        self.events.push_back(SessionEvent::Connected);
    }

    fn on_data(&mut self, now: Instant, seg: &Segment<'_>) -> Result<(), DecodeError> {
        let was_readable = self.recv.readable() > 0;
        let fin = seg.flags.contains(Flags::FIN);
        let arrival = self
            .recv
            .on_data(seg.seq, seg.payload, fin)
            .map_err(DecodeError::Invalid)?;
        if arrival.new_data {
            self.ack.echo_tsval = seg.tsval;
            self.ack.echo_arrival = now;
        }
        let urgent = !arrival.new_data
            || arrival.out_of_order
            || arrival.beyond_window
            || self.recv.fin_received();
        self.ack.unacked_segments += 1;
        if urgent || self.ack.unacked_segments >= self.ack_every_segments() {
            self.ack.immediate = true;
        } else if self.ack.deadline.is_none() {
            self.ack.deadline = Some(now + self.cfg.ack_delay);
        }
        if !was_readable && self.recv.readable() > 0 {
            self.events.push_back(SessionEvent::Readable);
        }
        Ok(())
    }

    /// In-order segments folded into one ack. End to end, acks drive loss detection: one
    /// per two segments, as TCP does. Over repaired links an ack only returns window and
    /// carries marks, and each one is a reliable packet on every link back to the sender (with
    /// that link's own acks): one per two segments was a third of a busy relay's packets.
    fn ack_every_segments(&self) -> u32 {
        match self.cfg.mode {
            RecoveryMode::EndToEndOnly => 2,
            RecoveryMode::HopByHop => 16,
        }
    }

    fn on_ack(&mut self, now: Instant, seg: &Segment<'_>) {
        let sent_end = self.send.sent_end();
        if seg.ack > sent_end {
            // Acknowledges what was never sent: not from our peer's current state.
            return;
        }
        let edge = seg.ack.saturating_add(u64::from(seg.window));
        if edge > self.peer_right_edge {
            self.peer_right_edge = edge;
            if edge > self.send.nxt() {
                self.persist_at = None;
                self.persist_backoff = 0;
            }
        }
        let una = self.send.una().max(seg.ack);
        let mut sacks = [(0u64, 0u64); MAX_SACK_BLOCKS];
        let mut n = 0;
        for &(start, end) in seg.sacks.as_slice() {
            let start = start.max(una);
            if start < end && end <= sent_end {
                sacks[n] = (start, end);
                n += 1;
            }
        }
        let waiting_on_data = self.send.has_unacked();
        let summary = self.send.on_ack(seg.ack, &sacks[..n]);
        let echo_sent = self.echo_time(now, seg.tsecr);
        if summary.progress || !waiting_on_data {
            // Progress, or an answer while only probing: the peer is alive.
            self.progress_at = now;
        }
        if summary.progress {
            self.counters.bytes_acked += summary.newly_acked_bytes;
            for _ in 0..summary.newly_acked_bytes.div_ceil(self.cfg.mss as u64) {
                self.losses.on_delivered();
            }
            if let Some(sent) = echo_sent {
                self.take_rtt_sample(now, sent, seg.ack_delay_us);
            }
        }
        for &(sent_at, by_timeout) in &summary.retransmitted {
            // The echo predates the retransmission: the original got through.
            let retransmission_ts = timestamp(sent_at);
            if (retransmission_ts.wrapping_sub(seg.tsecr) as i32) > 0 {
                self.counters.spurious_retransmits += 1;
                if by_timeout {
                    self.send.undo_timeout_losses();
                } else {
                    self.rack.reorder_quarters =
                        (self.rack.reorder_quarters * 2).min(MAX_REORDER_QUARTERS);
                }
            }
        }
        if let Some((sent_at, end, retransmitted, app_limited)) = summary.latest {
            let rtt = now.saturating_since(sent_at);
            // An ACK for the original of a retransmitted segment would look impossibly fast.
            let newer = !matches!(self.rack.delivered, Some((d, _)) if d > sent_at);
            if newer && !(retransmitted && rtt < self.rtt.min_rtt()) {
                self.rack.delivered = Some((sent_at, end));
                self.rack.rtt = rtt;
            }
            if summary.newly_acked_bytes > 0 {
                self.cc.on_ack(
                    now,
                    sent_at,
                    summary.newly_acked_bytes,
                    &self.rtt,
                    app_limited,
                );
            }
        }
        let ce_delta = seg.ce_count.wrapping_sub(self.peer_ce_count);
        let mut marked = 0;
        if ce_delta != 0 && ce_delta < (1 << 31) {
            self.peer_ce_count = seg.ce_count;
            marked = u64::from(ce_delta);
        }
        let acked_segments = summary.newly_acked_bytes.div_ceil(self.cfg.mss as u64);
        if let Some(factor) = self
            .marks
            .on_ack(now, self.rtt.srtt(), acked_segments, marked)
        {
            let before = self.cc.window();
            self.cc
                .on_congestion_marks(now, echo_sent.unwrap_or(now), factor);
            if self.cc.window() < before {
                self.counters.ce_reductions += 1;
            }
        }
        if self.cfg.mode == RecoveryMode::EndToEndOnly {
            self.detect_losses(now);
        }
        if summary.cumulative_advanced {
            self.backoff = 0;
            self.rto_at = self.send.has_unacked().then(|| now + self.rto());
        }
        if summary.progress {
            self.tail_probe_outstanding = false;
        }
        if !self.send.has_unacked() {
            self.rto_at = None;
            self.rack_at = None;
        }
        self.arm_tail_probe(now);
    }

    /// RACK-TLP (RFC 8985 §7): in end-to-end mode, when acknowledgements stop with data in
    /// flight, resend the last segment after two RTTs so that SACK (not the much later
    /// timeout) repairs a lost tail.
    pub(super) fn arm_tail_probe(&mut self, now: Instant) {
        self.tail_probe_at = None;
        let eligible = self.cfg.mode == RecoveryMode::EndToEndOnly
            && self.state == SessionState::Established
            && self.send.has_unacked()
            && self.send.first_lost().is_none()
            && !self.tail_probe_outstanding;
        if !eligible {
            return;
        }
        let mut pto = self.rtt.srtt() * 2;
        if self.send.in_flight() <= self.seg_mss() as u64 {
            // A lone segment's acknowledgement may be delayed by the receiver.
            pto += self.cfg.ack_delay;
        }
        let at = now + pto;
        if self.rto_at.is_none_or(|rto| at < rto) {
            self.tail_probe_at = Some(at);
        }
    }

    /// RACK: declare lost what was sent well before something that got through.
    pub(super) fn detect_losses(&mut self, now: Instant) {
        let Some((sent, end)) = self.rack.delivered else {
            return;
        };
        let quarter = self.rtt.min_rtt() / 4;
        let reorder = (quarter * self.rack.reorder_quarters).min(self.rtt.srtt());
        let scan = self
            .send
            .detect_losses(now, sent, end, self.rack.rtt + reorder);
        self.rack_at = scan.next_deadline;
        if scan.marked > 0 {
            self.counters.fast_retransmits += scan.marked as u64;
            for _ in 0..scan.marked {
                self.losses.on_lost();
            }
            if self.losses.is_congestion(&self.rtt, self.cc.window()) {
                self.cc
                    .on_congestion_event(now, scan.latest_sent_at.unwrap_or(now));
            }
        }
    }
}
