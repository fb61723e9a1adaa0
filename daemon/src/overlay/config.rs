//! The node's configuration: who it is, its neighbours, and the templates its links and
//! sessions are built from.

use crate::overlay::neighbor::Metric;
use crate::overlay::services::{ServiceConfig, DEFAULT_STABLE_PERIOD};
use crate::overlay::trust::TrustConfig;
use crate::overlay::wire::RoutedHeader;
use std::net::SocketAddr;
use std::time::Duration;
use weft_core::{NodeId, HEADER_LEN};
use weft_transport::arq::{self, ArqConfig};
use weft_transport::session::{RecoveryMode, SessionConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborConfig {
    /// Where the neighbour's daemon listens.
    pub addr: SocketAddr,
    /// Its node id, if it differs from the address (learned from its packets otherwise).
    pub id: Option<NodeId>,
}

/// Bytes kept free at the end of every datagram for link security's trailer (counter + tag).
pub const AUTH_RESERVE: usize = weft_secure::TRAILER_LEN;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub neighbors: Vec<NeighborConfig>,
    pub hello_interval: Duration,
    /// Silence after which a neighbour is declared dead.
    pub dead_interval: Duration,
    /// Fast liveness (`fast_liveness`): on links that carry traffic, send something at least
    /// this often and declare a neighbour that promised the same dead after a loss-dependent
    /// number of silent intervals. None: off (only the dead interval).
    pub fast_probe: Option<Duration>,
    pub metric: Metric,
    /// Largest UDP payload sent between daemons.
    pub mtu: usize,
    pub default_ttl: u8,
    /// Who repairs loss for sessions: the links (hop by hop) or only the ends.
    pub recovery: RecoveryMode,
    /// Template for every link's ARQ (its `mss` is derived from `mtu`).
    pub arq: ArqConfig,
    /// Template for every session (its `mss` and `mode` are derived).
    pub session: SessionConfig,
    /// Service addresses this node may serve (`[[service]]`).
    pub services: Vec<ServiceConfig>,
    /// How long a better-balanced owner must have been available before an address moves
    /// to it.
    pub service_stable_period: Duration,
    /// Signing and checking of flooded state (None: an insecure overlay).
    pub trust: Option<TrustConfig>,
}

impl NodeConfig {
    pub fn new(id: NodeId) -> Self {
        NodeConfig {
            id,
            neighbors: Vec::new(),
            hello_interval: Duration::from_millis(100),
            dead_interval: Duration::from_millis(350),
            fast_probe: None,
            metric: Metric::Latency,
            mtu: 1472,
            default_ttl: 64,
            recovery: RecoveryMode::HopByHop,
            arq: ArqConfig::default(),
            session: SessionConfig::default(),
            services: Vec::new(),
            service_stable_period: DEFAULT_STABLE_PERIOD,
            trust: None,
        }
    }

    /// Largest routed packet (routing header + payload) a link carries.
    pub fn routed_mtu(&self) -> usize {
        self.mtu
            .saturating_sub(HEADER_LEN + AUTH_RESERVE + arq::DATA_OVERHEAD)
            .max(256)
    }

    /// The derived parts: every link's ARQ carries routed packets of `routed_mtu`, and every
    /// session's segments fit behind the routed header.
    pub(crate) fn derive(&mut self) {
        self.arq.mss = self.routed_mtu();
        self.session.mss = self.routed_mtu() - RoutedHeader::LEN;
        self.session.mode = self.recovery;
        self.session.headroom = RoutedHeader::LEN;
        if self.recovery == RecoveryMode::HopByHop {
            // Over repaired links the session's window reacts to CE marks from relays, not to
            // loss; starting it at ten segments would throttle a stream whose rate needs more
            // than ten segments per end-to-end round trip (links and relays pace the real rate).
            self.session.initial_window_packets = self.session.initial_window_packets.max(64);
        }
    }
}
