//! The contract between the shim (`preload`), the `weft` CLI and the daemon: control messages
//! on a per-process `SOCK_SEQPACKET` Unix socket, file-descriptor passing, and (for the data
//! path) shared-memory rings.

pub mod control;
pub mod fdpass;
pub mod ring;

pub use control::{
    ClientKind, ControlError, Event, GroupDelivery, GroupFilterSpec, GroupSocket, Incoming,
    LinkAction, ListenDelivery, NeighborAction, Reply, Request, SessionInfo, StreamOptions,
    Welcome, MAX_MESSAGE, PROTOCOL_VERSION,
};
