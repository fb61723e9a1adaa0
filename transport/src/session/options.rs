//! Options a program sets on its socket that change how its session behaves, applied while
//! it runs ([`Session::set_options`]): `TCP_USER_TIMEOUT`, `SO_KEEPALIVE` with
//! `TCP_KEEPIDLE`/`TCP_KEEPINTVL`/`TCP_KEEPCNT`, `TCP_NODELAY` and `TCP_CORK` (also what
//! `MSG_MORE` does for one write). A session nobody set options on keeps its
//! [`SessionConfig`](super::SessionConfig) values and sends as `TCP_NODELAY` does.
//!
//! Coalescing, as Linux: a segment shorter than a full one that would carry everything
//! written so far is held back while corked (until uncorked, until the writes fill a full
//! segment, or [`CORK_CEILING`] after it was first held) and, with Nagle's algorithm on
//! (`nodelay: false`), while earlier data is unacknowledged. A FIN is never held.

use super::connection::Session;
use std::time::Duration;
use weft_core::Instant;

/// Longest a cork holds a partial segment back (Linux: 200 ms).
pub const CORK_CEILING: Duration = Duration::from_millis(200);

/// `SO_KEEPALIVE` on, with its three parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// `TCP_KEEPIDLE`: quiet time before the first probe.
    pub idle: Duration,
    /// `TCP_KEEPINTVL`: time between unanswered probes.
    pub interval: Duration,
    /// `TCP_KEEPCNT`: unanswered probes before the session fails.
    pub probes: u32,
}

/// The socket options of one session, as the program last set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionOptions {
    /// `TCP_USER_TIMEOUT`; `None` (0 on the socket) is the configured default. With
    /// keepalive on, it also bounds the probing as on Linux: the session fails once a probe
    /// is unanswered and nothing was heard for this long, whatever `probes` says.
    pub user_timeout: Option<Duration>,
    /// `SO_KEEPALIVE`; `None` is off.
    pub keepalive: Option<Keepalive>,
    /// `TCP_NODELAY`: off means Nagle's algorithm.
    pub nodelay: bool,
    /// `TCP_CORK` (or a write with `MSG_MORE` in progress).
    pub cork: bool,
}

impl SessionOptions {
    /// The same options with every duration at least a millisecond and at least one probe.
    pub fn sanitized(mut self) -> Self {
        let ms = Duration::from_millis(1);
        self.user_timeout = self.user_timeout.map(|d| d.max(ms));
        self.keepalive = self.keepalive.map(|k| Keepalive {
            idle: k.idle.max(ms),
            interval: k.interval.max(ms),
            probes: k.probes.max(1),
        });
        self
    }
}

impl Session {
    /// The program changed its socket options: the timers follow from `now` on (a probe
    /// count already reached fails at the next deadline, as on Linux).
    pub fn set_options(&mut self, now: Instant, options: SessionOptions) {
        self.options = Some(options.sanitized());
        if !options.cork {
            // Uncorking pushes what was held at once.
            self.cork_hold = None;
            self.cork_expired = false;
        }
        // A quiet time measured from a moment before keepalive was on would fire at once;
        // Linux restarts the keepalive timer when SO_KEEPALIVE is switched on.
        if options.keepalive.is_some() && self.keepalives_unanswered == 0 {
            self.last_heard = self.last_heard.max(now);
        }
    }

    pub fn options(&self) -> Option<SessionOptions> {
        self.options
    }

    /// The user timeout in force.
    pub(super) fn user_timeout(&self) -> Duration {
        self.options
            .and_then(|o| o.user_timeout)
            .unwrap_or(self.cfg.user_timeout)
    }

    /// The keepalive in force: the program's, or the configuration's if it set none.
    pub(super) fn keepalive(&self) -> Option<Keepalive> {
        match self.options {
            Some(o) => o.keepalive,
            None => self.cfg.keepalive.map(|idle| Keepalive {
                idle,
                interval: self.cfg.keepalive_interval,
                probes: self.cfg.keepalive_probes,
            }),
        }
    }

    fn corked(&self) -> bool {
        self.options.is_some_and(|o| o.cork)
    }

    /// Whether a partial segment carrying everything written so far waits (cork, Nagle).
    pub(super) fn hold_partial(&mut self, now: Instant) -> bool {
        if self.corked() {
            if self.cork_expired {
                return false;
            }
            self.cork_hold.get_or_insert(now);
            return true;
        }
        let nagle = self.options.is_some_and(|o| !o.nodelay);
        nagle && self.send.has_unacked()
    }

    /// New data went out: a later partial segment starts its own cork hold.
    pub(super) fn partial_sent(&mut self) {
        self.cork_hold = None;
        self.cork_expired = false;
    }

    /// When the cork's ceiling releases the held partial segment.
    pub(super) fn cork_deadline(&self) -> Option<Instant> {
        self.cork_hold
            .filter(|_| self.corked() && !self.cork_expired)
            .map(|t| t + CORK_CEILING)
    }

    /// A user timeout the program set (Linux lets it cut keepalive probing short).
    pub(super) fn explicit_user_timeout(&self) -> Option<Duration> {
        self.options.and_then(|o| o.user_timeout)
    }
}
