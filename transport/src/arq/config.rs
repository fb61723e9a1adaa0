//! The settings of a reliable link, and how contradictory ones are resolved.

use std::time::Duration;

use super::{RedundancyConfig, DATA_OVERHEAD};
use crate::cc::{self, Pacer};

/// Largest window the sequence bookkeeping supports, in packets.
const MAX_OUTSTANDING_LIMIT: u64 = 1 << 24;

#[derive(Debug, Clone)]
pub struct ArqConfig {
    /// Largest payload (routed packet) per ARQ packet, bytes. 1350 leaves room in a 1500-byte
    /// MTU for IP/UDP (28), the outer header (16), [`DATA_OVERHEAD`] (71) and a 16-byte
    /// authentication tag. Also the DRR quantum.
    pub mss: usize,
    /// Congestion control: CUBIC by default (TCP-friendly), NewReno, or none (experiments).
    pub cc: cc::Algorithm,
    /// Initial window, packets (RFC 6928: 10).
    pub initial_window_packets: u64,
    /// Ceiling on the congestion window, bytes. 8 MiB covers 1 Gbit/s at 60 ms RTT.
    pub max_window_bytes: u64,
    /// Floor on the retransmission timer. 10 ms: far below TCP's 200 ms because a link RTT is
    /// short and recovery speed is the point; high enough that scheduling hiccups on a loaded
    /// host rarely fire it on a LAN link.
    pub min_rto: Duration,
    /// Ceiling on the retransmission timer after backoff. 1 s: the daemon declares a silent
    /// neighbour dead well before, so a longer wait would only delay recovery after a heal.
    pub max_rto: Duration,
    /// RTT assumed before the first sample (100 ms, WAN-ish); the daemon should call
    /// [`ArqLink::seed_rtt`] with its hello RTT as soon as it has one.
    pub initial_rtt: Duration,
    /// A flow's queue on this link takes no more packets beyond this many bytes (256 KiB).
    pub flow_queue_limit_bytes: usize,
    /// A refused flow is reported writable again once its queue drains to this (limit / 4).
    pub flow_queue_low_water_bytes: usize,
    /// Longest an ack is held hoping to cover more packets (2 ms). The peer's retransmission
    /// timer allows for its own value, so keep it the same on both ends (a larger value here
    /// than at the peer can fire the peer's timer needlessly).
    pub max_ack_delay: Duration,
    /// Most packets between the oldest unacknowledged one and the newest sent (65 536). Also
    /// the receive window advertised to the peer; each sender keeps to the smaller of its own
    /// and the peer's, so the ends may differ.
    pub max_outstanding_packets: u64,
    /// Spread each window over an RTT instead of sending it in one burst.
    pub pacing: bool,
    /// Packets the pacer lets out back to back (10).
    pub pacing_burst_packets: u64,
    /// Loss rate (fraction of packets) the link may see without reading it as congestion,
    /// while it shows no queueing delay either (0.15). 0 makes every loss a congestion
    /// signal, as in TCP. See `cc::LossClassifier` for why. At 0.05 a link with 5 % random
    /// loss (the benchmark's worst level) read its own loss as congestion half of the time and
    /// carried a quarter of its rate; queueing delay still marks every shared bottleneck, so
    /// the rate threshold is only the backstop for drops without a queue (policers).
    pub random_loss_tolerance: f64,
    /// Redundant copies of new packets while the link is sparse (on by default).
    pub redundancy: RedundancyConfig,
}

impl Default for ArqConfig {
    fn default() -> Self {
        let limit = 256 * 1024;
        ArqConfig {
            mss: 1350,
            cc: cc::Algorithm::Cubic,
            initial_window_packets: 10,
            max_window_bytes: 8 << 20,
            min_rto: Duration::from_millis(10),
            max_rto: Duration::from_secs(1),
            initial_rtt: Duration::from_millis(100),
            flow_queue_limit_bytes: limit,
            flow_queue_low_water_bytes: limit / 4,
            max_ack_delay: Duration::from_millis(2),
            max_outstanding_packets: 1 << 16,
            pacing: true,
            pacing_burst_packets: 10,
            random_loss_tolerance: 0.15,
            redundancy: RedundancyConfig::default(),
        }
    }
}

impl ArqConfig {
    /// Largest body [`ArqLink::poll_transmit`] produces.
    pub fn max_body_len(&self) -> usize {
        self.mss.max(1) + DATA_OVERHEAD
    }

    /// The same settings with contradictions resolved, so no setting can break the link.
    pub(super) fn sanitized(mut self) -> Self {
        self.mss = self.mss.max(1);
        self.initial_window_packets = self.initial_window_packets.max(1);
        self.max_window_bytes = self.max_window_bytes.max(2 * self.mss as u64);
        self.max_rto = self.max_rto.max(self.min_rto);
        self.flow_queue_low_water_bytes = self
            .flow_queue_low_water_bytes
            .min(self.flow_queue_limit_bytes);
        self.max_outstanding_packets = self.max_outstanding_packets.clamp(2, MAX_OUTSTANDING_LIMIT);
        self.pacing_burst_packets = self.pacing_burst_packets.max(1);
        self.redundancy = self.redundancy.sanitized();
        if !(0.0..=1.0).contains(&self.random_loss_tolerance) {
            self.random_loss_tolerance = if self.random_loss_tolerance > 1.0 {
                1.0
            } else {
                0.0
            };
        }
        self
    }

    pub(super) fn build_cc(&self) -> Box<dyn cc::CongestionControl> {
        self.cc.build(
            self.mss as u64,
            self.initial_window_packets,
            self.max_window_bytes,
        )
    }

    pub(super) fn build_pacer(&self) -> Pacer {
        Pacer::new(self.pacing_burst_packets * self.mss as u64)
    }
}
