//! `netemu`: a userspace link emulator for benchmarks and tests. Hosts are network namespaces;
//! every link is a pair of point-to-point TUN devices, one in each namespace, and one thread
//! moves packets between them applying delay, order-preserving jitter, Bernoulli or
//! Gilbert-Elliott loss, a rate limit with a drop-tail queue, and cuts, per direction, all
//! changeable at run time. Kernel TCP (forwarded by the middle namespaces) and overlay UDP
//! cross exactly the same emulated links.
//!
//! The link model ([`model`]) is sans-I/O and unit-tested on its own; [`engine`] is the packet
//! loop; [`emulator`] builds and removes a [`topology`]; [`control`] is the run-time protocol.
//! [`probe`] holds the message-latency probe behind the `msglat` binary, [`bulk`] its
//! verified bulk transfer.

pub mod bulk;
pub mod control;
pub mod emulator;
pub mod engine;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod params;
pub mod probe;
pub mod ring;
pub mod stats;
pub mod sys;
pub mod topology;

pub use emulator::{unique_prefix, Emulator, Options, RunningEmulator};
pub use topology::{Plan, Topology};
