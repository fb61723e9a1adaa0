//! What `weft status` shows: a serialisable snapshot of the node.

use crate::overlay::emulation::{EmulationCounters, LinkParams};
use crate::overlay::fragment::ReassemblyCounters;
use crate::overlay::neighbor::{LinkState, Metric};
use serde::Serialize;
use weft_core::NodeId;

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
    pub counters: Counters,
}
