//! Reliable groups with membership views (issue 21), pure logic.
//!
//! A [`Member`] is one process of a group. Its caller (the daemon, or a simulator) tells it
//! which members it can reach ([`Member::set_candidates`]: from routing and group records),
//! hands it the bytes other members sent, and carries what it emits ([`Member::poll_transmit`])
//! to the named member. Nothing here reads a clock or touches a socket: every input takes a
//! `now`.
//!
//! **Views.** Members see a sequence of views (id, sorted members). The least candidate is the
//! coordinator: when its candidates differ from the view (join, leave, crash, partition,
//! merge), or a member is stuck in a failed reconfiguration, it proposes a view with a fresh
//! id. Each member answers with a [`wire::Report`] of its current view (what it received, and
//! the messages not every member is known to have) and *freezes* that view: it accepts and
//! delivers nothing more of it. Reports carry a per-member sequence number, so no agreement is
//! needed beforehand and a member may answer several proposals (a join during
//! reconfiguration restarts the proposal with the joiner; nobody waits for a dead
//! coordinator: the next least candidate proposes). With every report in, the coordinator
//! sends one [`wire::Install`]: the view and, per previous view, the *cut* (each sender's
//! message count: the most any of its members received) with the messages some of them lack.
//! A member installs only an install computed from a report of its current view made since
//! it froze; it first delivers the rest of the cut.
//!
//! **Virtual synchrony.** Two members that install the same two consecutive views V → V' both
//! delivered exactly the cut of V that V's install named (each had delivered a subset of what
//! it reported, and the cut contains every report), so the same set. A message is delivered in
//! the view it was sent in or not at all; its sender delivers it (its own report holds it).
//!
//! **Order.** Messages carry Lamport timestamps; agreed (total) order is (timestamp, sender).
//! A message is delivered once every member's clock (from its messages and statuses, each
//! received without a gap) has passed its timestamp, so every member delivers a view's
//! messages in one increasing order, the cut's included. FIFO groups deliver each sender's
//! messages as soon as they arrive in order. Loss is repaired by the sender from the
//! acknowledgements in periodic [`wire::Status`] messages.
//!
//! **Flow control.** A sender may have at most `window` messages that not every member's
//! application has taken ([`Member::send`] refuses more, as a full socket buffer would), and a
//! member holds a message only until every member received it and it was delivered here, so
//! memory is bounded by window × members.
#![forbid(unsafe_code)]

mod flush;
mod machine;
pub mod wire;

pub use machine::{Config, Counters, Event, Member, Ordering, SendError};
pub use wire::{MemberId, View, ViewId};
