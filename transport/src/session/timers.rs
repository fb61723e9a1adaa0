//! Deadlines: handshake and data retransmission, RACK reordering, delayed acknowledgement,
//! pacing, zero-window probes, keepalive, connect/user/idle timeouts and TIME-WAIT.

use super::config::RecoveryMode;
use super::connection::Session;
use super::{SessionError, SessionState};
use weft_core::time::earliest;
use weft_core::Instant;

impl Session {
    fn connect_deadline(&self) -> Option<Instant> {
        matches!(
            self.state,
            SessionState::SynSent | SessionState::SynReceived
        )
        .then(|| self.created_at + self.cfg.connect_timeout)
    }

    /// While data is unacknowledged or a zero window is being probed, the peer must show
    /// progress within the user timeout.
    fn user_deadline(&self) -> Option<Instant> {
        let waiting = self.send.has_unacked() || self.persist_at.is_some();
        (self.state == SessionState::Established && waiting)
            .then(|| self.progress_at + self.user_timeout())
    }

    fn idle_deadline(&self) -> Option<Instant> {
        let idle = self.cfg.idle_timeout?;
        (self.state == SessionState::Established).then(|| self.last_heard + idle)
    }

    /// The next keepalive probe, or (after the last unanswered one) the failure; with an
    /// explicit user timeout and a probe out, no later than that timeout after the peer was
    /// last heard (Linux's `tcp_keepalive_timer`).
    fn keepalive_deadline(&self) -> Option<Instant> {
        let k = self.keepalive()?;
        let quiet =
            !self.send.has_unacked() && self.send.unsent() == 0 && self.persist_at.is_none();
        if self.state != SessionState::Established || !quiet {
            return None;
        }
        let next = self.last_heard + k.idle + k.interval * self.keepalives_unanswered;
        let cut = self
            .explicit_user_timeout()
            .filter(|_| self.keepalives_unanswered > 0)
            .map(|ut| self.last_heard + ut);
        Some(cut.map_or(next, |c| c.min(next)))
    }

    /// Keepalive has given up: every probe unanswered, or (explicit user timeout) a probe out
    /// and the peer silent for that long.
    fn keepalive_exhausted(&self, now: Instant) -> bool {
        let Some(k) = self.keepalive() else {
            return false;
        };
        let by_count = self.keepalives_unanswered >= k.probes;
        let by_time = self
            .explicit_user_timeout()
            .is_some_and(|ut| self.keepalives_unanswered > 0 && self.last_heard + ut <= now);
        by_count || by_time
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == SessionState::Closed {
            return None;
        }
        [
            self.rto_at,
            self.rack_at,
            self.tail_probe_at,
            self.ack.deadline,
            self.pace_at,
            self.cork_deadline(),
            self.persist_at,
            self.time_wait_until
                .filter(|_| self.state == SessionState::TimeWait),
            self.connect_deadline(),
            self.user_deadline(),
            self.idle_deadline(),
            self.keepalive_deadline(),
        ]
        .into_iter()
        .fold(None, earliest)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == SessionState::Closed {
            return;
        }
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.connect_deadline()) || due(self.user_deadline()) {
            let error = self.timeout_error();
            self.fail(error);
            return;
        }
        if due(self.idle_deadline()) {
            self.fail(SessionError::TimedOut);
            return;
        }
        if due(self.keepalive_deadline()) {
            if self.keepalive_exhausted(now) {
                let error = self.timeout_error();
                self.fail(error);
                return;
            }
            self.keepalives_unanswered += 1;
            self.counters.keepalive_probes += 1;
            self.probe_pending = true;
        }
        if self.state == SessionState::TimeWait && due(self.time_wait_until) {
            self.state = SessionState::Closed;
            self.update_lifecycle(Some(now));
            return;
        }
        if due(self.rto_at) {
            self.rto_at = None;
            self.on_retransmission_timeout(now);
        }
        if due(self.rack_at) {
            self.rack_at = None;
            if self.cfg.mode == RecoveryMode::EndToEndOnly {
                self.detect_losses(now);
            }
        }
        if due(self.tail_probe_at) {
            self.tail_probe_at = None;
            if self.send.first_lost().is_none() && self.send.mark_last_in_flight_lost() {
                self.counters.tail_loss_probes += 1;
                self.tail_probe_outstanding = true;
                self.force_retransmit = true;
            }
        }
        if due(self.ack.deadline) {
            self.ack.deadline = None;
            self.ack.immediate = true;
        }
        if due(self.pace_at) {
            self.pace_at = None;
        }
        if due(self.cork_deadline()) {
            self.cork_hold = None;
            self.cork_expired = true;
        }
        if due(self.persist_at) {
            self.counters.window_probes += 1;
            self.probe_pending = true;
            self.persist_backoff = (self.persist_backoff + 1).min(16);
            self.persist_at = Some(now + self.backed_off(self.persist_backoff));
        }
    }

    fn on_retransmission_timeout(&mut self, now: Instant) {
        self.backoff = (self.backoff + 1).min(16);
        match self.state {
            SessionState::SynSent | SessionState::SynReceived => self.handshake_pending = true,
            SessionState::Established if self.send.has_unacked() => {
                self.counters.timeouts += 1;
                // Over repaired links only the oldest segment and the holes the receiver
                // reported are presumed lost: the links deliver (or reroute) the rest, and
                // resending a whole window into a path that just broke would only queue
                // behind the repair.

                match self.cfg.mode {
                    RecoveryMode::HopByHop => {
                        self.send.mark_holes_lost_on_timeout(now, self.rtt.srtt())
                    }
                    RecoveryMode::EndToEndOnly => {
                        self.send.mark_lost_on_timeout(now, self.rtt.srtt())
                    }
                };

                // The first retransmission goes out whatever the window says, and the timer
                // keeps running (backed off) until an acknowledgement makes progress.
                self.force_retransmit = true;
                self.rto_at = Some(now + self.rto());
                self.rack_at = None;
                self.tail_probe_at = None;
                // Over repaired links congestion shows up as CE marks, and a first timeout
                // means a repair took long or a relay crashed, not congestion: keep the
                // window (a spurious timeout then costs a few duplicate segments, not the
                // throughput). Repeated timeouts mean the path is still broken: stop pouring
                // a window into it.
                // End to end, a first timeout on a randomly lossy path (a lost tail or a lost
                // retransmission) is one loss event like any other, not a reason to restart
                // from two segments.
                let first = self.backoff == 1;
                self.losses.on_lost();
                match self.cfg.mode {
                    RecoveryMode::HopByHop if first => {}
                    RecoveryMode::EndToEndOnly if first => {
                        if self.losses.is_congestion(&self.rtt, self.cc.window()) {
                            self.cc.on_congestion_event(now, now);
                        }
                    }
                    _ => self.cc.on_timeout(now),
                }
            }
            _ => self.backoff = 0,
        }
    }

    /// Queued events are also the daemon's cue to wake the application.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }
}
