//! The overlay echo service behind `weft ping` and `weft trace`: a datagram to port
//! `ECHO_PORT` of a node that no program has bound goes back to its sender with the
//! responder's view of its own links appended (so `weft trace` learns every hop's link RTT
//! and loss from the hop itself). Plain datagrams, no new wire message: a probe takes the
//! path the node's routes give it and is lost where datagrams are lost.

use super::Daemon;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use weft_core::{Endpoint, NodeId};

/// The overlay port of the echo service (the port of the classic echo service).
pub const ECHO_PORT: u16 = 7;
/// Requests start with this; anything else sent to the port is dropped.
pub const ECHO_MAGIC: &[u8] = b"weft-ping ";
/// Replies per second at most (a probe storm must not become a reply storm).
const MAX_REPLIES_PER_SECOND: u32 = 200;

/// What a responder says about one of its links.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EchoLink {
    pub node: Option<NodeId>,
    pub state: String,
    pub rtt_ms: Option<f64>,
    /// Fraction of the peer's hellos this responder did not receive (peer → responder).
    pub hello_loss_ratio: f64,
    /// Fraction of data packets the responder's reliable link to the peer lost.
    pub data_loss_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EchoReport {
    pub node: NodeId,
    pub links: Vec<EchoLink>,
}

/// Splits a reply into the echoed request and the responder's report.
pub fn parse_reply(payload: &[u8]) -> Option<(&[u8], EchoReport)> {
    let cut = payload.iter().position(|&b| b == b'\n')?;
    let report = serde_json::from_slice(&payload[cut + 1..]).ok()?;
    Some((&payload[..cut], report))
}

#[derive(Debug, Default)]
pub struct EchoBudget {
    window: Option<Instant>,
    used: u32,
}

impl EchoBudget {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        if self
            .window
            .is_none_or(|w| now - w >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.used = 0;
        }
        self.used += 1;
        self.used <= MAX_REPLIES_PER_SECOND
    }
}

impl Daemon {
    /// A datagram for `ECHO_PORT` that no program bound. True if it was an echo request.
    pub(super) fn echo(&mut self, src: Endpoint, payload: &[u8]) -> bool {
        if !payload.starts_with(ECHO_MAGIC) || payload.contains(&b'\n') {
            return false;
        }
        if !self.echo_budget.take() {
            return true;
        }
        let now = self.clock.now();
        let status = self.node.status(now);
        let report = EchoReport {
            node: status.node,
            links: status
                .neighbors
                .iter()
                .map(|n| EchoLink {
                    node: n.node,
                    state: n.state.to_string(),
                    rtt_ms: n.rtt_ms,
                    hello_loss_ratio: n.hello_loss_ratio,
                    data_loss_ratio: n.arq.as_ref().map(|a| a.loss_rate_ppm as f64 / 1e6),
                })
                .collect(),
        };
        let mut reply = payload.to_vec();
        reply.push(b'\n');
        if serde_json::to_writer(&mut reply, &report).is_err() {
            return true;
        }
        // No route back: the prober counts a loss, which is what happened.
        let _ = self.node.send_datagram(now, ECHO_PORT, src, &reply, None);
        // Through the one drain that seals what the node writes (a reply that skipped link
        // security was refused by the neighbour as unauthenticated).
        self.drain_node();
        true
    }
}
