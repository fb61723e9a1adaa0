//! End-to-end reliable sessions: a byte stream between two overlay endpoints (node, port).
//!
//! Below a session is the overlay, an unreliable datagram service that may reorder, duplicate
//! and lose segments and may set a congestion-experienced (CE) mark on them. The sender keeps
//! every byte until the destination acknowledges it end to end, so a session survives a link
//! cut, a reroute or a relay crash with no byte lost, duplicated or reordered. [`RecoveryMode`]
//! chooses who repairs loss: the overlay links (the session's retransmission is a backstop
//! that must not fire on the reordering a reroute causes) or the ends alone (TCP-like).
//!
//! [`Session`] is sans-I/O: the daemon feeds it segments, timeouts and application bytes with
//! the current time, and polls it for segments to send, its next deadline and events.
//!
//! # Segment format (version 1)
//!
//! Big-endian; one segment per overlay datagram, following the daemon's routing header (which
//! names the source and destination nodes).
//!
//! ```text
//!  0        1        2             4            8          10         12
//!  | version| flags  | header_len  | conn_id    | src_port | dst_port |
//! 12 | seq: u64 (stream offset of the first payload byte, or of the FIN)       |
//! 20 | ack: u64 (next offset expected from the peer: cumulative ack)           |
//! 28 | window: u32 (bytes acceptable beyond ack)  | 32 | tsval: u32 (µs)       |
//! 36 | tsecr: u32 (echoed tsval)  | 40 | ack_delay: u32 (µs) | 44 | ce_count: u32 |
//! 48 | options: kind u8, len u8, value[len] ... up to header_len | payload ...  |
//! ```
//!
//! - `flags`: SYN 0x01, ACK 0x02, FIN 0x04, RST 0x08, PROBE 0x10 (acknowledge at once;
//!   zero-window, keepalive and route probes). Every segment but the first SYN carries ACK.
//! - `conn_id` is chosen at random by the active opener and used by both directions; it tells
//!   incarnations of the same port pair apart, so there are no initial sequence numbers:
//!   each direction's stream starts at offset 0 and 64-bit offsets never wrap. A FIN occupies
//!   one offset after the last byte, so its acknowledgement is explicit.
//! - `window` is relative to `ack`; the receiver never moves the right edge `ack + window`
//!   backwards, so the sender keeps the largest edge it has seen (acks may arrive reordered).
//! - `tsval` is the sender's clock in microseconds (wrapping). A receiver echoes in `tsecr` the
//!   `tsval` of the latest segment that brought it new data (or a SYN or probe) and in
//!   `ack_delay` how long ago that segment arrived, so every acknowledgement yields an exact
//!   RTT sample, including for retransmitted data, and an echo older than a retransmission
//!   reveals that the retransmission was spurious.
//! - `ce_count` counts CE-marked segments received (wrapping); the sender reduces its window
//!   when it grows, at most once per round trip.
//! - `header_len` covers the options, so later versions may add options old peers skip.
//!   Options: 1 = MSS (u16, in SYNs: the largest segment the sender accepts); 2 = SACK
//!   (`len / 16` blocks of `start: u64, end: u64`, half-open, the most recent first).
//!
//! # Recovery
//!
//! Both modes keep a SACK scoreboard with fixed segment boundaries and retransmit on a
//! timeout (RFC 6298, exponential backoff up to `max_rto`); a timeout presumes lost the
//! oldest segment in flight and those sent at least an RTT ago (RFC 8985 §6.3) and resends
//! the first at once. `EndToEndOnly` adds RACK (a segment is lost once one sent after it
//! was delivered and a reordering window has passed; the window widens when a fast
//! retransmission proves spurious) and tail loss probes. `HopByHop` infers nothing from
//! reordering and keeps its window on a first timeout (its congestion signal is CE marks).

//! Timestamp echoes detect spurious retransmissions; a spurious timeout puts the segments
//! it condemned but did not yet resend back in flight. Each increase of the peer's CE count
//! reduces the window at most once per round trip.
//!
//! # What the daemon does
//!
//! - Demultiplex by (remote node, `src_port`, `dst_port`, `conn_id`) from
//!   [`Session::peek`]; hand a SYN for a listening port to [`Session::accept`]; answer any
//!   other segment that matches no session with [`Session::reset_reply`].
//! - After every input (segment, timeout, application read or write), drain
//!   [`Session::poll_transmit`] and [`Session::poll_event`], then sleep until
//!   [`Session::poll_timeout`].
//! - Report route changes with [`Session::set_route_available`]; free the session on
//!   [`SessionEvent::Closed`].
//!
//! # Lifecycle and events
//!
//! Active open sends SYN (retransmitted with exponential backoff until `connect_timeout`);
//! the passive side answers SYN|ACK; the opener's first ACK completes the handshake. Every
//! session ends with exactly one [`SessionEvent::Closed`], after a [`SessionEvent::Failed`]
//! when it did not end gracefully. Error mapping for the shim: `Refused` → ECONNREFUSED,
//! `TimedOut` → ETIMEDOUT, `Unreachable` → EHOSTUNREACH, `Reset` → ECONNRESET (EPIPE on
//! write); [`SessionEvent::PeerFinished`] is EOF.

mod config;
mod connection;
mod input;
mod options;
mod output;
mod ranges;
mod recv;
mod send;
mod timers;
mod wire;

pub use config::{RecoveryMode, SessionConfig, MIN_MSS};
pub use connection::Session;
pub use options::{Keepalive, SessionOptions};
pub use wire::{Flags, SegmentSummary, FIXED_HEADER_LEN, SEGMENT_VERSION};

use std::time::Duration;

/// Why a session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The destination has no listener on the port (a RST answered the SYN).
    #[error("connection refused")]
    Refused,
    /// The peer stopped answering (connect, user or keepalive timeout).
    #[error("connection timed out")]
    TimedOut,
    /// The timeout expired while the daemon had no route to the peer.
    #[error("no route to host")]
    Unreachable,
    /// The peer reset the session.
    #[error("connection reset by peer")]
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// The handshake completed.
    Connected,
    /// In-order bytes became available after none were (edge-triggered).
    Readable,
    /// Send-buffer space opened (at least a quarter of it) after a write filled it or was cut
    /// short.
    Writable,
    /// The application has read everything up to the peer's FIN: end of file.
    PeerFinished,
    Failed(SessionError),
    /// Nothing more will happen; the session can be freed.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// SYN sent, waiting for the answer.
    SynSent,
    /// SYN received and answered, waiting for the handshake's last ACK.
    SynReceived,
    Established,
    /// Both directions finished; re-acknowledging retransmitted FINs for a while.
    TimeWait,
    Closed,
}

/// Transport figures (what `TCP_INFO` reports, and what tests and benchmarks count).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionStats {
    pub state: SessionState,
    pub rtt: Duration,
    pub rttvar: Duration,
    pub min_rtt: Duration,
    /// Current retransmission timeout, backoff included.
    pub rto: Duration,
    pub cwnd: u64,
    pub ssthresh: u64,
    /// Largest segment used (both ends' minimum).
    pub mss: usize,
    pub bytes_in_flight: u64,
    /// Bytes the peer's window still allows beyond what was sent.
    pub peer_window: u64,
    pub segments_sent: u64,
    /// Segments that carried new data (retransmissions not counted): how writes were
    /// coalesced (Nagle, cork).
    pub data_segments_sent: u64,
    pub segments_received: u64,
    /// Segments sent again, for any reason (SYNs included).
    pub retransmits: u64,
    /// Segments declared lost from SACK information (RACK), before any timeout.
    pub fast_retransmits: u64,
    /// Tail loss probes sent (end-to-end mode): the last segment resent when acknowledgements
    /// stop, so that a lost tail is repaired by SACK instead of a timeout.
    pub tail_loss_probes: u64,
    /// Retransmission timeouts that fired with data outstanding.
    pub timeouts: u64,
    /// Retransmissions later shown unnecessary (the original arrived).
    pub spurious_retransmits: u64,
    pub window_probes: u64,
    pub keepalive_probes: u64,
    /// Window reductions caused by the peer echoing CE marks.
    pub ce_reductions: u64,
    /// CE-marked segments received.
    pub ce_marks_received: u64,
    /// Payload bytes handed to the overlay, retransmissions included.
    pub bytes_sent: u64,
    pub bytes_retransmitted: u64,
    /// Payload bytes the peer acknowledged.
    pub bytes_acked: u64,
    /// Distinct payload bytes received.
    pub bytes_received: u64,
}

impl Session {
    /// Cheap parse of a segment for demultiplexing: conn_id, ports and whether it is a SYN /
    /// RST.
    pub fn peek(segment: &[u8]) -> Result<SegmentSummary, weft_core::DecodeError> {
        wire::peek(segment)
    }

    /// The RST to answer a segment that matches no session (closed port, stale conn_id);
    /// None if the segment is itself a RST (or unreadable).
    pub fn reset_reply(segment: &[u8]) -> Option<Vec<u8>> {
        wire::reset_reply(segment)
    }
}
