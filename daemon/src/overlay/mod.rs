//! The sans-I/O overlay node and everything it is made of. Nothing in here reads a clock or
//! touches a socket: `Node` takes datagrams, timeouts and local requests with a `now`, and hands
//! back datagrams to send, events for local applications, and its next deadline.

pub mod emulation;
pub mod flood;
mod flooding;
mod forwarding;
pub mod fragment;
mod multicast;
pub mod neighbor;
pub mod node;
pub mod routing;
pub mod sessions;
pub mod status;
pub mod trust;
pub mod wire;

pub use multicast::MulticastCounters;
pub use node::{NeighborConfig, Node, NodeConfig, NodeEvent, SendError, Transmit};
pub use sessions::{OpenError, SessionId};
