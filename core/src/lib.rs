//! The vocabulary every weft crate shares. Nothing here does I/O or reads a clock: protocol
//! state machines take an [`Instant`] from their caller so that a simulator can drive them.

#![forbid(unsafe_code)]

pub mod codec;
pub mod header;
pub mod ids;
pub mod time;

pub use codec::{DecodeError, Reader, Writer};
pub use header::{Header, PacketKind, HEADER_LEN, MAGIC, WIRE_VERSION};
pub use ids::{Endpoint, NodeId};
pub use time::Instant;
