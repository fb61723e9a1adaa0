//! Session configuration and its defaults.

use super::wire::FIXED_HEADER_LEN;
use crate::cc::Algorithm;
use std::time::Duration;

/// Who repairs loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryMode {
    /// The overlay links repair loss hop by hop. The session retransmits only on its
    /// retransmission timeout (a backstop for relay crashes and reroutes) and never infers
    /// loss from reordering; congestion-experienced marks are its congestion signal.
    #[default]
    HopByHop,
    /// Best-effort links: the ends do all recovery, TCP-like (SACK with RACK-style time-based
    /// fast retransmit, retransmission timeout, congestion control on loss and marks).
    EndToEndOnly,
}

/// Smallest `mss` accepted: a header with a few SACK blocks and some payload.
pub const MIN_MSS: usize = FIXED_HEADER_LEN + 80;

#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// Largest segment (session header + payload) handed to the overlay; the daemon sets it
    /// from its datagram budget. The smaller of both ends' values is used. Default 1280.
    pub mss: usize,
    /// Bytes the application may queue that the destination has not acknowledged. 4 MiB.
    pub send_buffer_bytes: usize,
    /// Receive buffer, which is also the largest window advertised. 4 MiB.
    pub recv_buffer_bytes: usize,
    pub mode: RecoveryMode,
    /// Congestion control. CUBIC.
    pub cc: Algorithm,
    /// Initial congestion window, in segments. 10 (RFC 6928).
    pub initial_window_packets: u64,
    /// Loss rate (fraction of segments) the path may show, without queueing delay, before
    /// losses count as congestion (`cc::LossClassifier`); 0 = every loss is congestion.
    /// Default 20 %: an end-to-end path adds up the random loss of all its links (2 % on
    /// each of 4 links is 7.8 % each way), and a session that halves on every one of those
    /// could not carry a stream at all; queueing delay still marks real congestion.
    pub random_loss_tolerance: f64,
    /// Zero bytes `poll_transmit` puts before each segment, for the caller to fill with its
    /// own header (0 by default).
    pub headroom: usize,
    /// Spread each window over an RTT instead of bursting it. On.
    pub pacing: bool,
    /// An active open gives up after this long (SYN retransmitted with exponential backoff
    /// starting at the initial RTO). 20 s.
    pub connect_timeout: Duration,
    /// An established session whose data (or probes) stay unacknowledged this long fails,
    /// like TCP_USER_TIMEOUT. 30 s.
    pub user_timeout: Duration,
    /// Idle time before keepalive probes start (SO_KEEPALIVE + TCP_KEEPIDLE). Off.
    pub keepalive: Option<Duration>,
    /// Time between unanswered keepalive probes (TCP_KEEPINTVL). 75 s, as Linux.
    pub keepalive_interval: Duration,
    /// Unanswered keepalive probes before the session fails (TCP_KEEPCNT). 9, as Linux.
    pub keepalive_probes: u32,
    /// Fail a session from which nothing has been heard for this long. Off.
    pub idle_timeout: Option<Duration>,
    /// Retransmission timeout bounds. 200 ms and 10 s (so a recovered path is probed at
    /// least every 10 s; the user timeout bounds the total wait).
    pub min_rto: Duration,
    pub max_rto: Duration,
    /// RTT assumed before the first sample; the first SYN is retransmitted after
    /// `3 × initial_rtt` (clamped to the RTO bounds). 100 ms.
    pub initial_rtt: Duration,
    /// Longest a receiver holds back an acknowledgement (every second full segment is
    /// acknowledged at once). 5 ms.
    pub ack_delay: Duration,
    /// How long the side that acknowledged the last FIN stays around to re-acknowledge a
    /// retransmitted FIN before reporting `Closed` (restarted by each retransmission). It
    /// must outlast the peer's longest retransmission interval, or a peer whose timer backed
    /// off meets a RST instead of an acknowledgement. 20 s (twice the default `max_rto`).
    pub time_wait: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            mss: 1280,
            send_buffer_bytes: 4 << 20,
            recv_buffer_bytes: 4 << 20,
            mode: RecoveryMode::HopByHop,
            cc: Algorithm::Cubic,
            initial_window_packets: 10,
            random_loss_tolerance: 0.20,
            headroom: 0,
            pacing: true,
            connect_timeout: Duration::from_secs(20),
            user_timeout: Duration::from_secs(30),
            keepalive: None,
            keepalive_interval: Duration::from_secs(75),
            keepalive_probes: 9,
            idle_timeout: None,
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(10),
            initial_rtt: Duration::from_millis(100),
            ack_delay: Duration::from_millis(5),
            time_wait: Duration::from_secs(20),
        }
    }
}

impl SessionConfig {
    /// The same configuration with every field forced into a workable range (a config file
    /// or a socket option may hold anything).
    pub fn sanitized(mut self) -> Self {
        self.mss = self.mss.clamp(MIN_MSS, u16::MAX as usize);
        self.send_buffer_bytes = self.send_buffer_bytes.max(1);
        self.recv_buffer_bytes = self.recv_buffer_bytes.clamp(1, u32::MAX as usize);
        self.initial_window_packets = self.initial_window_packets.clamp(1, 1 << 16);
        self.keepalive_probes = self.keepalive_probes.max(1);
        let ms = Duration::from_millis;
        self.min_rto = self.min_rto.max(ms(1));
        self.max_rto = self.max_rto.max(self.min_rto);
        self.initial_rtt = self.initial_rtt.max(Duration::from_micros(100));
        self.connect_timeout = self.connect_timeout.max(ms(1));
        self.user_timeout = self.user_timeout.max(ms(1));
        self.keepalive_interval = self.keepalive_interval.max(ms(1));
        self.keepalive = self.keepalive.map(|d| d.max(ms(1)));
        self.idle_timeout = self.idle_timeout.map(|d| d.max(ms(1)));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kernel_like() {
        let d = SessionConfig::default();
        assert!(d.connect_timeout <= Duration::from_secs(20));
        assert!(d.user_timeout <= Duration::from_secs(30));
        assert_eq!(
            d.keepalive, None,
            "keepalive is off unless asked for, as in TCP"
        );
        assert_eq!(d.idle_timeout, None, "idle sessions stay up");
        assert_eq!(d.mode, RecoveryMode::HopByHop);
        assert!(
            d.time_wait >= 2 * d.max_rto,
            "TIME-WAIT outlasts a backed-off peer"
        );
    }

    #[test]
    fn sanitizing_repairs_nonsense() {
        let cfg = SessionConfig {
            mss: 3,
            recv_buffer_bytes: 0,
            min_rto: Duration::from_secs(5),
            max_rto: Duration::ZERO,
            ..SessionConfig::default()
        }
        .sanitized();
        assert_eq!(cfg.mss, MIN_MSS);
        assert_eq!(cfg.recv_buffer_bytes, 1);
        assert_eq!(cfg.max_rto, cfg.min_rto);
        assert_eq!(
            SessionConfig::default().sanitized(),
            SessionConfig::default()
        );
    }
}
