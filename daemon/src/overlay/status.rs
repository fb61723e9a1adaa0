//! What `weft status` shows: a serialisable snapshot of the node, composed from what each
//! owner reports about itself.

use crate::overlay::fragment::ReassemblyCounters;
use crate::overlay::groups::MulticastCounters;
use crate::overlay::links::NeighborStatus;
use crate::overlay::neighbor::Metric;
use crate::overlay::routing::{RouteStatus, RoutingStats};
use crate::overlay::services::ServiceCounters;
use crate::overlay::sessions::SessionSummary;
use crate::overlay::trust::TrustCounters;
use serde::Serialize;
use weft_core::NodeId;

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
    /// Of those, declared dead by fast liveness (silence under the neighbour's promise).
    pub fast_deaths: u64,
    /// Hellos sent because a link that carries traffic had sent nothing for the fast interval.
    pub fast_keepalives: u64,
    pub neighbor_restarts: u64,
    /// Neighbours that said they were leaving (a clean stop): links taken down at once.
    pub neighbor_leaves: u64,
    /// Datagrams from a neighbour speaking another wire version (dropped).
    pub wire_version_mismatch: u64,
    pub state_packets_sent: u64,
    pub state_records_sent: u64,
    pub state_record_bytes_sent: u64,
    pub reliable_before_up: u64,
    pub rerouted: u64,
    pub ce_marked: u64,
    pub dropped_backpressure: u64,
    pub sessions_refused: u64,
    /// Routed packets from a neighbour naming a source node the overlay does not know (or
    /// this node itself), dropped.
    pub unknown_source: u64,
    pub reassembly: ReassemblyCounters,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub incarnation: u32,
    pub metric: Metric,
    /// What link and route costs count: `us` (latency metric) or `hops`.
    pub cost_unit: &'static str,
    pub uptime_ms: u64,
    pub hello_interval_ms: u64,
    pub dead_interval_ms: u64,
    /// Serialised by the daemon, which adds what its emulation layer knows of each link.
    #[serde(skip)]
    pub neighbors: Vec<NeighborStatus>,
    pub routes: Vec<RouteStatus>,
    pub routing: RoutingStats,
    pub known_nodes: Vec<NodeId>,
    pub listeners: Vec<u16>,
    pub sessions: Vec<SessionSummary>,
    pub multicast: weft_multicast::MulticastStatus,
    pub multicast_counters: MulticastCounters,
    /// Every service address this node knows: owner, live candidates, since when.
    pub services: Vec<weft_services::ServiceStatus>,
    pub service_counters: ServiceCounters,
    pub counters: Counters,
    /// Flooded records refused for their origin's signature (secure overlays).
    pub trust: TrustCounters,
}
