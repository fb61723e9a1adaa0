//! The sans-I/O overlay node and everything it is made of. Nothing in here reads a clock or
//! touches a socket: `Node` takes datagrams, timeouts and local requests with a `now`, and hands
//! back datagrams to send, events for local applications, and its next deadline.
//!
//! Modules depend on each other in one direction only (listed bottom-up): `wire`, `fragment`,
//! `events`, `fast_liveness`, `neighbor`, `flood`, `trust`, `config` → `links`, `routing`, `datagrams`, `sessions` →
//! `forwarding`, `groups`, `services` → `status` → `node`.

pub mod config;
mod datagrams;
pub mod events;
pub mod fast_liveness;
pub mod flood;
mod forwarding;
pub mod fragment;
mod groups;
pub mod links;
pub mod neighbor;
pub mod node;
pub mod routing;
pub mod services;
pub mod sessions;
pub mod status;
pub mod trust;
pub mod wire;

pub use config::{NeighborConfig, NodeConfig, AUTH_RESERVE};
pub use events::{NodeEvent, SessionId};
pub use forwarding::{CE_THRESHOLD_BYTES, RELAYED_QUEUE_LIMIT_BYTES};
pub use groups::MulticastCounters;
pub use links::TransmitMeta;
pub use node::{Node, SendError};
pub use sessions::OpenError;
