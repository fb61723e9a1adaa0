//! What a session sends: handshake segments, retransmissions, new data, probes and
//! acknowledgements, in that order of precedence, within the congestion window, the peer's
//! window and the pacer's rate.

use super::connection::{timestamp, Session};
use super::wire::{
    sack_blocks_fitting, sack_option_len, Flags, SackBlocks, Segment, FIXED_HEADER_LEN,
    MAX_SACK_BLOCKS,
};
use super::SessionState;
use weft_core::Instant;

/// SACK blocks carried by data segments (pure ACKs carry as many as fit).
const SACK_BLOCKS_WITH_DATA: usize = 4;

impl Session {
    /// One segment (header + payload ≤ mss) to send now, or None (window, pacing, nothing),
    /// preceded by `SessionConfig::headroom` zero bytes.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.rst_pending {
            return Some(self.emit_reset(now));
        }
        match self.state {
            SessionState::SynSent | SessionState::SynReceived => {
                self.handshake_pending.then(|| self.emit_handshake(now))
            }
            SessionState::Established => self
                .transmit_data(now)
                .or_else(|| self.transmit_probe(now))
                .or_else(|| self.transmit_ack(now)),
            SessionState::TimeWait => self.transmit_ack(now),
            SessionState::Closed => None,
        }
    }

    /// Fields every segment carries, reflecting the current receive state.
    fn segment_template(&self, now: Instant, flags: Flags) -> Segment<'static> {
        let ack_delay = now.saturating_since(self.ack.echo_arrival).as_micros();
        Segment {
            flags,
            conn_id: self.conn_id,
            src_port: self.local.port,
            dst_port: self.remote.port,
            seq: self.send.nxt(),
            ack: self.recv.ack_offset(),
            window: self.recv.window(),
            tsval: timestamp(now),
            tsecr: self.ack.echo_tsval,
            ack_delay_us: u32::try_from(ack_delay).unwrap_or(u32::MAX),
            ce_count: self.ack.ce_count,
            ..Segment::default()
        }
    }

    /// Encodes `seg` followed by `payload` bytes of the send stream at `seg.seq`.
    fn emit(&mut self, seg: &Segment<'_>, payload: usize) -> Vec<u8> {
        // Zeroed headroom for the caller's own header (the daemon's routing header), so the
        // segment needs no second copy on its way out.
        let headroom = self.cfg.headroom;
        let mut out = Vec::with_capacity(headroom + seg.header_len() + payload);
        out.resize(headroom, 0);
        seg.encode(&mut out);
        if payload > 0 {
            self.send.copy_bytes(seg.seq, payload, &mut out);
        }
        self.counters.segments_sent += 1;
        if seg.flags.contains(Flags::ACK) {
            self.ack.immediate = false;
            self.ack.deadline = None;
            self.ack.unacked_segments = 0;
            self.ack.advertised_right_edge = self.recv.right_edge();
        }
        out
    }

    fn emit_reset(&mut self, now: Instant) -> Vec<u8> {
        self.rst_pending = false;
        let seg = self.segment_template(now, Flags::RST.with(Flags::ACK));
        let out = self.emit(&seg, 0);
        self.update_lifecycle(Some(now));
        out
    }

    fn emit_handshake(&mut self, now: Instant) -> Vec<u8> {
        self.handshake_pending = false;
        let mut seg = if self.state == SessionState::SynSent {
            Segment {
                tsecr: 0,
                ack_delay_us: 0,
                ..self.segment_template(now, Flags::SYN)
            }
        } else {
            self.segment_template(now, Flags::SYN.with(Flags::ACK))
        };
        seg.seq = 0;
        seg.ack = 0;
        seg.mss = Some(self.cfg.mss as u16);
        if self.handshake_sends > 0 {
            self.counters.retransmits += 1;
        }
        self.handshake_sends += 1;
        self.rto_at = Some(now + self.rto());
        self.emit(&seg, 0)
    }

    fn cwnd_allows(&self, len: u64) -> bool {
        let in_flight = self.send.in_flight();
        in_flight == 0 || in_flight + len <= self.cc.window()
    }

    /// Whether the pacer holds `len` bytes back (then `pace_at` says until when).
    fn pacing_blocks(&mut self, now: Instant, len: u64) -> bool {
        let window = self.cc.window();
        let slow_start = self.cc.in_slow_start();
        let srtt = self.rtt.srtt();
        self.pace_at = self
            .pacer
            .as_mut()
            .and_then(|p| p.delay(now, len.max(1), window, srtt, slow_start));
        self.pace_at.is_some()
    }

    fn note_sent_payload(&mut self, now: Instant, len: u64) {
        if let Some(p) = self.pacer.as_mut() {
            p.on_sent(len.max(1));
        }
        self.counters.bytes_sent += len;
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rto());
        }
    }

    fn transmit_data(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(lost) = self.send.first_lost() {
            let (start, len, fin) = (lost.start, u64::from(lost.len), lost.fin);
            if !self.force_retransmit && (!self.cwnd_allows(len) || self.pacing_blocks(now, len)) {
                return None;
            }
            self.force_retransmit = false;
            let room = self
                .seg_mss()
                .saturating_sub(FIXED_HEADER_LEN + len as usize);
            let sacks = self
                .recv
                .sack_blocks(sack_blocks_fitting(room).min(SACK_BLOCKS_WITH_DATA));
            let flags = if fin {
                Flags::ACK.with(Flags::FIN)
            } else {
                Flags::ACK
            };
            let seg = Segment {
                seq: start,
                sacks,
                ..self.segment_template(now, flags)
            };
            self.send.on_retransmitted(start, now);
            self.counters.retransmits += 1;
            self.counters.bytes_retransmitted += len;
            self.note_sent_payload(now, len);
            // Resending the oldest unacknowledged segment restarts the timer (as Linux does):
            // its answer takes a round trip, and a timer still running from before the loss
            // would expire first, time out spuriously and collapse the window.
            if start == self.send.una() {
                self.rto_at = Some(now + self.rto());
            }
            return Some(self.emit(&seg, len as usize));
        }
        // Nothing to repair: a forced retransmission has no object any more.
        self.force_retransmit = false;
        let unsent = self.send.unsent();
        let fin_unsent = self.send.fin_unsent();
        if unsent == 0 && !fin_unsent {
            return None;
        }
        let sacks = self.recv.sack_blocks(SACK_BLOCKS_WITH_DATA);
        let room =
            self.seg_mss()
                .saturating_sub(FIXED_HEADER_LEN + sack_option_len(sacks.len())) as u64;
        let window = self.peer_right_edge.saturating_sub(self.send.nxt());
        let len = unsent.min(window).min(room);
        if len == 0 && unsent > 0 {
            // Zero window: probe it once nothing is left to acknowledge.
            if !self.send.has_unacked() && self.persist_at.is_none() {
                self.persist_at = Some(now + self.backed_off(self.persist_backoff));
                self.progress_at = now;
            }
            return None;
        }
        // Avoid silly segments: with data in flight, wait for acks to open a full one.
        if len < unsent && len < room && self.send.has_unacked() {
            return None;
        }
        // Cork and Nagle hold a partial segment that would carry everything written so far.
        if len > 0 && len == unsent && len < room && !fin_unsent && self.hold_partial(now) {
            return None;
        }
        if len > 0 && (!self.cwnd_allows(len) || self.pacing_blocks(now, len)) {
            return None;
        }
        let fin = fin_unsent && len == unsent;
        if len == 0 && !fin {
            return None;
        }
        let was_idle = !self.send.has_unacked();
        let app_limited = len == unsent && self.send.in_flight() + len < self.cc.window();
        let flags = if fin {
            Flags::ACK.with(Flags::FIN)
        } else {
            Flags::ACK
        };
        let seg = Segment {
            sacks,
            ..self.segment_template(now, flags)
        };
        self.send.on_new_sent(now, len as u32, fin, app_limited);
        self.partial_sent();
        if len > 0 {
            self.counters.data_segments_sent += 1;
        }
        if fin && self.fin_sent_after_peer_fin.is_none() {
            self.fin_sent_after_peer_fin = Some(self.recv.fin_received());
        }
        if was_idle {
            self.progress_at = now;
        }
        self.note_sent_payload(now, len);
        let out = self.emit(&seg, len as usize);
        self.arm_tail_probe(now);
        Some(out)
    }

    fn transmit_probe(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.probe_pending {
            return None;
        }
        self.probe_pending = false;
        let seg = self.segment_template(now, Flags::ACK.with(Flags::PROBE));
        Some(self.emit(&seg, 0))
    }

    fn transmit_ack(&mut self, now: Instant) -> Option<Vec<u8>> {
        let due = self.ack.immediate || self.ack.deadline.is_some_and(|d| d <= now);
        if !due {
            return None;
        }
        let room = self.seg_mss().saturating_sub(FIXED_HEADER_LEN);
        let sacks: SackBlocks = self
            .recv
            .sack_blocks(sack_blocks_fitting(room).min(MAX_SACK_BLOCKS));
        let seg = Segment {
            sacks,
            ..self.segment_template(now, Flags::ACK)
        };
        Some(self.emit(&seg, 0))
    }
}
