//! The session object: its state, construction (active and passive open), the application
//! side (read, write, shutdown, abort), route changes, statistics and the lifecycle events.
//! Received segments are handled in `input.rs`, output in `output.rs`, timers in `timers.rs`.

use super::config::{SessionConfig, MIN_MSS};
use super::recv::ReceiveStream;
use super::send::SendStream;
use super::wire::{Flags, Segment};
use super::{SessionError, SessionEvent, SessionState, SessionStats};
use crate::cc::{CongestionControl, LossClassifier, Pacer, RttEstimator};
use crate::marks::MarkResponse;
use std::collections::VecDeque;
use std::time::Duration;
use weft_core::{DecodeError, Endpoint, Instant};

/// The receiver's acknowledgement duty.
#[derive(Debug)]
pub(super) struct AckState {
    /// Acknowledge with the next poll.
    pub immediate: bool,
    /// Delayed-acknowledgement deadline.
    pub deadline: Option<Instant>,
    /// Segments received since the last acknowledgement.
    pub unacked_segments: u32,
    /// `tsval` to echo, and when that segment arrived.
    pub echo_tsval: u32,
    pub echo_arrival: Instant,
    /// CE-marked segments received (wrapping).
    pub ce_count: u32,
    /// Right edge of the window last advertised.
    pub advertised_right_edge: u64,
}

/// RACK state: the most recently sent segment known delivered.
#[derive(Debug, Default)]
pub(super) struct Rack {
    pub delivered: Option<(Instant, u64)>,
    /// RTT measured on that delivery.
    pub rtt: Duration,
    /// Reordering window, in quarters of the minimum RTT; doubles when a fast retransmission
    /// proves spurious.
    pub reorder_quarters: u32,
}

#[derive(Debug, Default, Clone)]
pub(super) struct Counters {
    pub segments_sent: u64,
    pub data_segments_sent: u64,
    pub segments_received: u64,
    pub retransmits: u64,
    pub fast_retransmits: u64,
    pub tail_loss_probes: u64,
    pub timeouts: u64,
    pub spurious_retransmits: u64,
    pub window_probes: u64,
    pub keepalive_probes: u64,
    pub ce_reductions: u64,
    pub ce_marks_received: u64,
    pub bytes_sent: u64,
    pub bytes_retransmitted: u64,
    pub bytes_acked: u64,
}

/// One end-to-end session (see the module documentation).
#[derive(Debug)]
pub struct Session {
    pub(super) cfg: SessionConfig,
    pub(super) local: Endpoint,
    pub(super) remote: Endpoint,
    pub(super) conn_id: u32,
    pub(super) state: SessionState,
    pub(super) created_at: Instant,
    pub(super) send: SendStream,
    pub(super) recv: ReceiveStream,
    pub(super) rtt: RttEstimator,
    pub(super) cc: Box<dyn CongestionControl>,
    /// Whether a loss found end to end is congestion or the path's random loss.
    pub(super) losses: LossClassifier,
    pub(super) pacer: Option<Pacer>,
    pub(super) rack: Rack,
    pub(super) ack: AckState,
    pub(super) peer_mss: usize,
    /// Largest `ack + window` the peer advertised.
    pub(super) peer_right_edge: u64,
    /// Peer's CE count as last seen.
    pub(super) peer_ce_count: u32,
    pub(super) marks: MarkResponse,
    /// The SYN (or SYN|ACK) is due.
    pub(super) handshake_pending: bool,
    pub(super) handshake_sends: u32,
    pub(super) rst_pending: bool,
    /// A PROBE segment is due.
    pub(super) probe_pending: bool,
    pub(super) rto_at: Option<Instant>,
    pub(super) backoff: u32,
    /// The next retransmission ignores the congestion window and pacer (after a timeout).
    pub(super) force_retransmit: bool,
    pub(super) rack_at: Option<Instant>,
    /// Tail loss probe timer (end-to-end mode).
    pub(super) tail_probe_at: Option<Instant>,
    /// A tail loss probe went out and nothing has been acknowledged since.
    pub(super) tail_probe_outstanding: bool,
    pub(super) pace_at: Option<Instant>,
    /// Corked (TCP_CORK / MSG_MORE): since when a partial segment has been held back.
    pub(super) cork_hold: Option<Instant>,
    /// The cork's 200 ms ceiling passed: the partial segment goes.
    pub(super) cork_expired: bool,
    /// Zero-window probe timer.
    pub(super) persist_at: Option<Instant>,
    pub(super) persist_backoff: u32,
    pub(super) keepalives_unanswered: u32,
    pub(super) time_wait_until: Option<Instant>,
    /// Start of the current wait for the peer (for the user timeout).
    pub(super) progress_at: Instant,
    pub(super) last_heard: Instant,
    pub(super) route_available: bool,
    /// Whether our FIN first went out after the peer's FIN had arrived: its acknowledgement
    /// then proves the peer holds our acknowledgement of its FIN, so no lingering is needed.
    pub(super) fin_sent_after_peer_fin: Option<bool>,
    pub(super) failed: bool,
    pub(super) write_blocked: bool,
    pub(super) peer_finished_reported: bool,
    pub(super) closed_reported: bool,
    pub(super) events: VecDeque<SessionEvent>,
    pub(super) counters: Counters,
    /// What the program set on its socket (`None`: the configuration decides).
    pub(super) options: Option<super::options::SessionOptions>,
}

/// The low 32 bits of the clock in microseconds: our `tsval`.
pub(super) fn timestamp(now: Instant) -> u32 {
    now.as_micros() as u32
}

impl Session {
    fn new(
        cfg: SessionConfig,
        local: Endpoint,
        remote: Endpoint,
        conn_id: u32,
        now: Instant,
        state: SessionState,
    ) -> Self {
        let cfg = cfg.sanitized();
        let mss = cfg.mss as u64;
        let cc = cfg.cc.build(mss, cfg.initial_window_packets, 1 << 40);
        let pacer = cfg
            .pacing
            .then(|| Pacer::new(mss * cfg.initial_window_packets));
        Session {
            send: SendStream::new(cfg.send_buffer_bytes),
            recv: ReceiveStream::new(cfg.recv_buffer_bytes as u64),
            rtt: RttEstimator::new(cfg.initial_rtt),
            cc,
            losses: LossClassifier::new(cfg.random_loss_tolerance, mss),
            pacer,
            rack: Rack {
                reorder_quarters: 1,
                ..Rack::default()
            },
            ack: AckState {
                immediate: false,
                deadline: None,
                unacked_segments: 0,
                echo_tsval: 0,
                echo_arrival: now,
                ce_count: 0,
                advertised_right_edge: 0,
            },
            peer_mss: cfg.mss,
            peer_right_edge: 0,
            peer_ce_count: 0,
            marks: MarkResponse::default(),
            handshake_pending: true,
            handshake_sends: 0,
            rst_pending: false,
            probe_pending: false,
            rto_at: None,
            backoff: 0,
            force_retransmit: false,
            rack_at: None,
            tail_probe_at: None,
            tail_probe_outstanding: false,
            pace_at: None,
            cork_hold: None,
            cork_expired: false,
            persist_at: None,
            persist_backoff: 0,
            keepalives_unanswered: 0,
            time_wait_until: None,
            progress_at: now,
            last_heard: now,
            route_available: true,
            fin_sent_after_peer_fin: None,
            failed: false,
            write_blocked: false,
            peer_finished_reported: false,
            closed_reported: false,
            events: VecDeque::new(),
            counters: Counters::default(),
            options: None,
            cfg,
            local,
            remote,
            conn_id,
            state,
            created_at: now,
        }
    }

    /// Active open. `conn_id` is random per session (distinguishes incarnations).
    pub fn connect(
        cfg: SessionConfig,
        local: Endpoint,
        remote: Endpoint,
        conn_id: u32,
        now: Instant,
    ) -> Self {
        Session::new(cfg, local, remote, conn_id, now, SessionState::SynSent)
    }

    /// Passive open from a received SYN segment (the daemon checked a listener exists).
    pub fn accept(
        cfg: SessionConfig,
        local: Endpoint,
        remote: Endpoint,
        syn: &[u8],
        now: Instant,
    ) -> Result<Self, DecodeError> {
        let seg = Segment::decode(syn)?;
        if !seg.flags.contains(Flags::SYN)
            || seg.flags.contains(Flags::ACK)
            || seg.flags.contains(Flags::RST)
        {
            return Err(DecodeError::Invalid("not a connection request"));
        }
        if seg.src_port != remote.port || seg.dst_port != local.port {
            return Err(DecodeError::Invalid("SYN ports do not match the endpoints"));
        }
        let mut s = Session::new(
            cfg,
            local,
            remote,
            seg.conn_id,
            now,
            SessionState::SynReceived,
        );
        s.learn_peer_mss(&seg);
        s.peer_right_edge = u64::from(seg.window);
        s.ack.echo_tsval = seg.tsval;
        s.ack.echo_arrival = now;
        s.counters.segments_received = 1;
        Ok(s)
    }

    pub fn conn_id(&self) -> u32 {
        self.conn_id
    }

    pub fn local(&self) -> Endpoint {
        self.local
    }

    pub fn remote(&self) -> Endpoint {
        self.remote
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Bytes accepted into the send buffer (0 once shut down, failed or closed).
    pub fn write(&mut self, data: &[u8]) -> usize {
        if self.state == SessionState::Closed || self.state == SessionState::TimeWait {
            return 0;
        }
        let n = self.send.write(data);
        if n < data.len() || self.send.capacity_left() == 0 {
            self.write_blocked = true;
        }
        n
    }

    pub fn send_capacity(&self) -> usize {
        match self.state {
            SessionState::Closed | SessionState::TimeWait => 0,
            _ => self.send.capacity_left(),
        }
    }

    /// In-order bytes; 0 when none are available (see [`SessionEvent::PeerFinished`] for EOF).
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = self.recv.read(buf);
        if n > 0 && self.state == SessionState::Established {
            // Tell a sender stalled on our window that it opened, without acknowledging every
            // small read.
            let threshold = (self.cfg.recv_buffer_bytes as u64 / 2)
                .min(2 * self.seg_mss() as u64)
                .max(1);
            if self.recv.right_edge() >= self.ack.advertised_right_edge + threshold {
                self.ack.immediate = true;
            }
        }
        self.update_lifecycle(None);
        n
    }

    pub fn readable(&self) -> usize {
        self.recv.readable()
    }

    /// The peer's FIN arrived and everything before it was read.
    pub fn peer_finished(&self) -> bool {
        self.recv.finished()
    }

    /// Send a FIN once the buffered data is out.
    pub fn shutdown_write(&mut self) {
        if self.state != SessionState::Closed {
            self.send.request_fin();
        }
    }

    /// Reset the session: a RST goes out with the next poll, then `Closed`.
    pub fn abort(&mut self) {
        if self.state == SessionState::Closed {
            return;
        }
        self.state = SessionState::Closed;
        self.failed = true;
        self.rst_pending = true;
    }

    /// The daemon's routing view: whether a route to the remote node currently exists. When
    /// a route comes back, the session probes at once instead of waiting out a backed-off
    /// retransmission timer.
    pub fn set_route_available(&mut self, now: Instant, available: bool) {
        let restored = available && !self.route_available;
        self.route_available = available;
        if !restored {
            return;
        }
        self.backoff = 0;
        match self.state {
            SessionState::SynSent | SessionState::SynReceived => self.handshake_pending = true,
            SessionState::Established => {
                if self.send.has_unacked() {
                    // Resend the oldest outstanding segment now, whatever the window says.
                    self.send.mark_first_in_flight_lost();
                    self.force_retransmit = true;
                    self.rto_at = Some(now + self.rto());
                }
                if self.persist_at.is_some() {
                    self.persist_backoff = 0;
                    self.persist_at = Some(now);
                }
            }
            SessionState::TimeWait | SessionState::Closed => {}
        }
    }

    pub fn info(&self) -> SessionStats {
        let c = &self.counters;
        SessionStats {
            state: self.state,
            rtt: self.rtt.srtt(),
            rttvar: self.rtt.rttvar(),
            min_rtt: self.rtt.min_rtt(),
            rto: self.rto(),
            cwnd: self.cc.window(),
            ssthresh: self.cc.ssthresh(),
            mss: self.seg_mss(),
            bytes_in_flight: self.send.in_flight(),
            peer_window: self.peer_right_edge.saturating_sub(self.send.nxt()),
            segments_sent: c.segments_sent,
            data_segments_sent: c.data_segments_sent,
            segments_received: c.segments_received,
            retransmits: c.retransmits,
            fast_retransmits: c.fast_retransmits,
            tail_loss_probes: c.tail_loss_probes,
            timeouts: c.timeouts,
            spurious_retransmits: c.spurious_retransmits,
            window_probes: c.window_probes,
            keepalive_probes: c.keepalive_probes,
            ce_reductions: c.ce_reductions,
            ce_marks_received: c.ce_marks_received,
            bytes_sent: c.bytes_sent,
            bytes_retransmitted: c.bytes_retransmitted,
            bytes_acked: c.bytes_acked,
            bytes_received: self.recv.bytes_received(),
        }
    }

    /// Largest segment to send: both ends' minimum.
    pub(super) fn seg_mss(&self) -> usize {
        self.cfg.mss.min(self.peer_mss)
    }

    pub(super) fn learn_peer_mss(&mut self, seg: &Segment<'_>) {
        if let Some(mss) = seg.mss {
            self.peer_mss = usize::from(mss).max(MIN_MSS);
        }
    }

    /// The retransmission timeout with backoff.
    pub(super) fn rto(&self) -> Duration {
        self.backed_off(self.backoff)
    }

    pub(super) fn backed_off(&self, exponent: u32) -> Duration {
        let base = self
            .rtt
            .rto(Duration::from_millis(1), self.cfg.min_rto, self.cfg.max_rto);
        base.saturating_mul(1 << exponent.min(16))
            .min(self.cfg.max_rto)
    }

    pub(super) fn fail(&mut self, error: SessionError) {
        if self.state == SessionState::Closed {
            return;
        }
        self.state = SessionState::Closed;
        self.failed = true;
        self.events.push_back(SessionEvent::Failed(error));
        self.update_lifecycle(None);
    }

    /// The error for a timeout: no route, or no answer.
    pub(super) fn timeout_error(&self) -> SessionError {
        if self.route_available {
            SessionError::TimedOut
        } else {
            SessionError::Unreachable
        }
    }

    /// Completion, EOF and writability after anything changed. `now` is None from calls
    /// that carry no time (a read); they cannot complete a close that needs one.
    pub(super) fn update_lifecycle(&mut self, now: Option<Instant>) {
        if let Some(now) = now {
            if self.state == SessionState::Established
                && self.send.fin_acked()
                && self.recv.fin_received()
            {
                if self.fin_sent_after_peer_fin == Some(true) {
                    self.state = SessionState::Closed;
                } else {
                    self.state = SessionState::TimeWait;
                    self.time_wait_until = Some(now + self.cfg.time_wait);
                }
            }
        }
        let open = !matches!(self.state, SessionState::Closed | SessionState::TimeWait);
        if self.write_blocked
            && open
            && self.send.capacity_left() >= (self.send.capacity() / 4).max(1)
        {
            self.write_blocked = false;
            self.events.push_back(SessionEvent::Writable);
        }
        if !self.failed && !self.peer_finished_reported && self.recv.finished() {
            self.peer_finished_reported = true;
            self.events.push_back(SessionEvent::PeerFinished);
        }
        let done = self.state == SessionState::Closed
            && !self.rst_pending
            && (self.failed || self.recv.readable() == 0);
        if done && !self.closed_reported {
            self.closed_reported = true;
            self.events.push_back(SessionEvent::Closed);
        }
    }
}
