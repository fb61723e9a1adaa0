//! What `weft status` shows: a serialisable snapshot of the node.

use crate::overlay::emulation::{EmulationCounters, LinkParams};
use crate::overlay::fragment::ReassemblyCounters;
use crate::overlay::neighbor::{LinkState, Metric};
use crate::overlay::node::Node;
use crate::overlay::sessions::SessionSummary;
use serde::Serialize;
use weft_core::{Instant, NodeId};

#[derive(Debug, Clone, Serialize)]
pub struct NeighborStatus {
    pub addr: String,
    pub node: Option<NodeId>,
    pub state: LinkState,
    pub rtt_ms: Option<f64>,
    pub min_rtt_ms: Option<f64>,
    /// Fraction of the neighbour's hellos lost (EWMA).
    pub hello_loss: f64,
    pub cost: Option<u32>,
    pub cut: bool,
    pub up_for_ms: Option<u64>,
    pub emulation: Option<(LinkParams, EmulationCounters)>,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub flood_pending: usize,
    pub mcast_out: u64,
    /// The hop-by-hop reliable link toward this neighbour.
    pub arq: Option<ArqStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArqStatus {
    pub srtt_ms: f64,
    pub cwnd: u64,
    pub in_flight_bytes: u64,
    pub queued_bytes: u64,
    pub queued_flows: u64,
    pub packets_sent: u64,
    /// Payload bytes of new data packets (retransmissions and copies not included).
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub retransmissions: u64,
    /// Redundant copies sent on sparse links (not retransmissions).
    pub redundant_copies: u64,
    pub redundant_bytes: u64,
    /// Copies received before their original (the packets they saved a repair).
    pub redundant_copies_used: u64,
    pub losses_by_sack: u64,
    pub losses_by_timer: u64,
    pub timeouts: u64,
    pub congestion_events: u64,
    pub loss_rate_ppm: u64,
    pub duplicates: u64,
}

impl From<weft_transport::arq::ArqStats> for ArqStatus {
    fn from(s: weft_transport::arq::ArqStats) -> Self {
        ArqStatus {
            srtt_ms: s.srtt.as_secs_f64() * 1e3,
            cwnd: s.cwnd,
            in_flight_bytes: s.in_flight_bytes,
            queued_bytes: s.queued_bytes,
            queued_flows: s.queued_flows,
            packets_sent: s.packets_sent,
            bytes_sent: s.bytes_sent,
            packets_received: s.packets_received,
            retransmissions: s.retransmissions,
            redundant_copies: s.redundant_copies,
            redundant_bytes: s.redundant_bytes,
            redundant_copies_used: s.redundant_copies_used,
            losses_by_sack: s.losses_by_sack,
            losses_by_timer: s.losses_by_timer,
            timeouts: s.timeouts,
            congestion_events: s.congestion_events,
            loss_rate_ppm: s.loss_rate_ppm,
            duplicates: s.duplicates,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    pub dst: NodeId,
    pub next_hop: NodeId,
    pub cost: u64,
    pub path: Vec<NodeId>,
}

/// Every reason a packet was dropped, and what was done.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counters {
    pub unknown_sender: u64,
    pub malformed: u64,
    pub unsupported: u64,
    pub dropped_cut: u64,
    pub ttl_expired: u64,
    pub no_route: u64,
    pub forwarded: u64,
    pub datagrams_delivered: u64,
    pub neighbors_declared_dead: u64,
    pub neighbor_restarts: u64,
    pub state_packets_sent: u64,
    pub reliable_before_up: u64,
    pub rerouted: u64,
    pub ce_marked: u64,
    pub dropped_backpressure: u64,
    pub sessions_refused: u64,
    /// Routed packets from a neighbour naming a source node the overlay does not know (or
    /// this node itself): made-up senders never reach an application.
    pub unknown_source: u64,
    pub reassembly: ReassemblyCounters,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub incarnation: u32,
    pub metric: Metric,
    pub emulation: bool,
    pub uptime_ms: u64,
    pub hello_interval_ms: u64,
    pub dead_interval_ms: u64,
    pub neighbors: Vec<NeighborStatus>,
    pub routes: Vec<RouteStatus>,
    pub known_nodes: Vec<NodeId>,
    pub listeners: Vec<u16>,
    pub sessions: Vec<SessionSummary>,
    pub multicast: weft_multicast::MulticastStatus,
    pub multicast_counters: crate::overlay::multicast::MulticastCounters,
    pub counters: Counters,
    /// Flooded records refused for their origin's signature (secure overlays).
    pub trust: crate::overlay::trust::TrustCounters,
}

impl Node {
    /// Drop and event counters (what `status` reports, without building the rest).
    pub fn counters(&self) -> Counters {
        let mut c = self.counters;
        c.reassembly = self.reassembler.counters;
        c
    }

    /// Each configured neighbour's link state, in configuration order.
    pub fn neighbor_states(&self) -> Vec<LinkState> {
        self.neighbors.iter().map(|n| n.state).collect()
    }

    // ----- status -------------------------------------------------------------------------

    pub fn status(&mut self, now: Instant) -> NodeStatus {
        let neighbors = self
            .neighbors
            .iter()
            .map(|n| NeighborStatus {
                addr: n.addr.to_string(),
                node: n.id,
                state: n.state,
                rtt_ms: n.srtt().map(|d| d.as_secs_f64() * 1e3),
                min_rtt_ms: n.min_rtt().map(|d| d.as_secs_f64() * 1e3),
                hello_loss: n.hello_loss,
                cost: (n.state == LinkState::Up).then_some(n.announced_cost),
                cut: n.cut,
                up_for_ms: n.up_since.map(|t| (now - t).as_millis() as u64),
                emulation: n.emulator.as_ref().map(|e| (*e.params(), e.counters)),
                packets_in: n.packets_in,
                packets_out: n.packets_out,
                bytes_in: n.bytes_in,
                bytes_out: n.bytes_out,
                flood_pending: n.flood.len(),
                mcast_out: n.mcast_out,
                arq: n.arq.as_ref().map(|a| a.stats().into()),
            })
            .collect();
        let routes = self
            .first_hops
            .iter()
            .map(|(dst, hop)| RouteStatus {
                dst: *dst,
                next_hop: *hop,
                cost: self.tree.dist(*dst).unwrap_or(u64::MAX),
                path: self.tree.path(*dst).unwrap_or_default(),
            })
            .collect();
        let mut counters = self.counters;
        counters.reassembly = self.reassembler.counters;
        NodeStatus {
            node: self.cfg.id,
            incarnation: self.incarnation,
            metric: self.cfg.metric,
            emulation: self.cfg.emulation,
            uptime_ms: (now - self.started).as_millis() as u64,
            hello_interval_ms: self.cfg.hello_interval.as_millis() as u64,
            dead_interval_ms: self.cfg.dead_interval.as_millis() as u64,
            neighbors,
            routes,
            known_nodes: self.known_nodes(),
            listeners: self.listeners(),
            sessions: self.session_summaries(),
            multicast: self.mc_status(),
            trust: self.trust.counters(),
            multicast_counters: self.mc_counters(),
            counters,
        }
    }
}
