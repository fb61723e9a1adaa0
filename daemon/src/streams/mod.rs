//! Sans-I/O decisions about application streams that belong to no single session: the
//! accept backlog of shimmed listeners ([`backlog`]). The I/O layer (`io/listeners.rs`,
//! `io/streams.rs`) carries out what these machines decide.

pub mod backlog;
