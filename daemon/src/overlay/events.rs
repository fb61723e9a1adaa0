//! What the node tells the application layer: the one vocabulary every owner inside the node
//! reports in (they push onto the node's queue in the order things happen).

use weft_core::Endpoint;
use weft_transport::session::SessionEvent;

pub type SessionId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A datagram for a local application.
    Datagram {
        src: Endpoint,
        dst: Endpoint,
        payload: Vec<u8>,
        /// The IP TTL a receiving socket reports (`IP_RECVTTL`): for a group datagram the
        /// sender's multicast TTL (every overlay host is one hop away), else what is left of
        /// the routed packet's.
        ttl: u8,
    },
    /// The set of reachable nodes or the routes changed.
    RoutesChanged,
    /// A listener on `port` accepted a new session.
    Incoming {
        id: SessionId,
        port: u16,
        remote: Endpoint,
    },
    /// Something happened to a session.
    Session { id: SessionId, event: SessionEvent },
}
