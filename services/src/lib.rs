//! Service addresses (issue 20): an overlay address that exactly one live node of each
//! connected component owns, as Wackamole keeps cluster addresses covered.
//!
//! Every node floods one [`ServiceRecord`]: the service addresses it serves (it is a
//! configured candidate and a local program listens) and which of them it holds. From those
//! records and the live nodes of its component (routing's reachable set) each node computes
//! the same owner per address ([`assign::owner`]): the preferred claimant by rendezvous
//! hashing, else the preferred candidate, which then claims it. Claims make ownership sticky:
//! a node that returns does not take an address back at once; after a stable period the
//! holder hands over to the preferred candidate (balance). Two claimants meet only after a
//! merge; the same one wins on every node and the other gives up.
//!
//! Sans-I/O: [`Services`] takes events and a `now`, reports [`OwnerChange`]s and the record
//! to flood; the daemon's `overlay::Node` carries records on its reliable flooding.
#![forbid(unsafe_code)]

pub mod assign;
mod machine;
pub mod record;

pub use machine::{
    ChangeReason, OwnerChange, RecordOutcome, ServiceConfig, ServiceStatus, Services,
    ServicesConfig, DEFAULT_CLAIM_HOLD, DEFAULT_STABLE_PERIOD,
};
pub use record::{Entry, ServiceRecord, Version};
