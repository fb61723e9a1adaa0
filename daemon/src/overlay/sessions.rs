//! End-to-end sessions inside the node: the table that demultiplexes segments, listeners,
//! port allocation, timers, and the pump that moves segments from sessions onto links.
//!
//! Back-pressure is per session: a session is polled for segments only while the first link's
//! queue for its flow has room; when the link refuses a segment the session stalls (holding
//! that one segment) until the link names its flow writable again. Other sessions, and the
//! daemon, carry on.

use crate::overlay::forwarding::{flow_of, Origin};
use crate::overlay::node::{Node, NodeEvent};
use crate::overlay::wire::{Class, Proto, RoutedHeader};
use ahash::AHashMap as HashMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeSet;
use thiserror::Error;
use tracing::debug;
use weft_core::{Endpoint, Instant, Writer};
use weft_transport::arq::FlowId;
use weft_transport::session::{RecoveryMode, Session, SessionEvent, SessionState, SessionStats};

pub type SessionId = u64;

const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OpenError {
    #[error("port already in use")]
    PortInUse,
    #[error("no free local port")]
    NoPorts,
}

struct Entry {
    session: Session,
    flow: FlowId,
    /// A routed segment the first link refused; it goes first once the flow drains.
    stalled: Option<Vec<u8>>,
    deadline: Option<Instant>,
    /// The application let go: forget the session once it closes.
    released: bool,
    closed: bool,
    /// Accepted from a SYN but not yet announced: the listener hears of the session only
    /// once the handshake completed (the opener echoed our SYN|ACK), as a kernel's accept()
    /// returns only established connections, so a spoofed SYN claims nothing.
    unannounced: Option<(u16, Endpoint)>,
}

pub struct SessionTable {
    entries: HashMap<SessionId, Entry>,
    by_key: HashMap<(u16, Endpoint), SessionId>,
    by_flow: HashMap<FlowId, SessionId>,
    listeners: BTreeSet<u16>,
    ports_in_use: HashMap<u16, usize>,
    next_id: SessionId,
    next_ephemeral: u16,
    rng: ChaCha8Rng,
    deadlines: BTreeSet<(Instant, SessionId)>,
    ready: BTreeSet<SessionId>,
    /// Routes changed since sessions last heard about reachability.
    pub(super) routes_changed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub id: SessionId,
    pub local: Endpoint,
    pub remote: Endpoint,
    pub state: String,
    pub rtt_ms: f64,
    pub cwnd: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    pub fast_retransmits: u64,
    pub timeouts: u64,
    pub ce_reductions: u64,
    pub released: bool,
}

impl SessionTable {
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5e55_1045);
        let next_ephemeral = rng.gen_range(EPHEMERAL);
        SessionTable {
            entries: HashMap::new(),
            by_key: HashMap::new(),
            by_flow: HashMap::new(),
            listeners: BTreeSet::new(),
            ports_in_use: HashMap::new(),
            next_id: 1,
            next_ephemeral,
            rng,
            deadlines: BTreeSet::new(),
            ready: BTreeSet::new(),
            routes_changed: false,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A link can take more of `flow`: its session (if local) may send again.
    pub fn flow_writable(&mut self, flow: FlowId) {
        if let Some(&id) = self.by_flow.get(&flow) {
            self.ready.insert(id);
        }
    }

    fn allocate_port(&mut self) -> Option<u16> {
        let span = (EPHEMERAL.end() - EPHEMERAL.start()) as usize + 1;
        for _ in 0..span {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p >= *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            if !self.ports_in_use.contains_key(&p) && !self.listeners.contains(&p) {
                return Some(p);
            }
        }
        None
    }

    fn insert(&mut self, id: SessionId, session: Session) {
        let key = (session.local().port, session.remote());
        let flow = flow_of(session.local(), session.remote());
        *self.ports_in_use.entry(key.0).or_default() += 1;
        self.by_key.insert(key, id);
        self.by_flow.insert(flow, id);
        self.entries.insert(
            id,
            Entry {
                session,
                flow,
                stalled: None,
                deadline: None,
                released: false,
                closed: false,
                unannounced: None,
            },
        );
        self.ready.insert(id);
    }

    fn remove(&mut self, id: SessionId) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        let key = (e.session.local().port, e.session.remote());
        if self.by_key.get(&key) == Some(&id) {
            self.by_key.remove(&key);
        }
        if self.by_flow.get(&e.flow) == Some(&id) {
            self.by_flow.remove(&e.flow);
        }
        if let Some(n) = self.ports_in_use.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.ports_in_use.remove(&key.0);
            }
        }
        if let Some(d) = e.deadline {
            self.deadlines.remove(&(d, id));
        }
        self.ready.remove(&id);
    }

    fn set_deadline(&mut self, id: SessionId, deadline: Option<Instant>) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if e.deadline == deadline {
            return;
        }
        if let Some(old) = e.deadline {
            self.deadlines.remove(&(old, id));
        }
        if let Some(new) = deadline {
            self.deadlines.insert((new, id));
        }
        e.deadline = deadline;
    }
}

impl Node {
    fn session_config(&self) -> weft_transport::session::SessionConfig {
        self.cfg.session.clone()
    }

    fn session_class(&self) -> Class {
        match self.cfg.recovery {
            RecoveryMode::HopByHop => Class::Reliable,
            RecoveryMode::EndToEndOnly => Class::BestEffort,
        }
    }

    /// Accept sessions to `port`.
    pub fn listen(&mut self, port: u16) -> Result<(), OpenError> {
        if !self.sessions.listeners.insert(port) {
            return Err(OpenError::PortInUse);
        }
        Ok(())
    }

    /// Stop accepting on `port` (established sessions carry on).
    pub fn unlisten(&mut self, port: u16) {
        self.sessions.listeners.remove(&port);
    }

    /// Opens a session from (this node, `local_port` or an ephemeral port) to `remote`.
    pub fn connect(
        &mut self,
        now: Instant,
        local_port: Option<u16>,
        remote: Endpoint,
    ) -> Result<(SessionId, Endpoint), OpenError> {
        let port = match local_port.filter(|&p| p != 0) {
            Some(p) => {
                if self.sessions.by_key.contains_key(&(p, remote)) {
                    return Err(OpenError::PortInUse);
                }
                p
            }
            None => self.sessions.allocate_port().ok_or(OpenError::NoPorts)?,
        };
        let local = Endpoint::new(self.cfg.id, port);
        let conn_id = self.sessions.rng.gen::<u32>() | 1;
        let mut session = Session::connect(self.session_config(), local, remote, conn_id, now);
        session.set_route_available(now, self.is_reachable(remote.node));
        let id = self.sessions.next_id;
        self.sessions.next_id += 1;
        self.sessions.insert(id, session);
        debug!(id, %local, %remote, "session connect");
        self.touch_session(now, id);
        self.after_input(now);
        Ok((id, local))
    }

    fn with_session<R>(
        &mut self,
        now: Instant,
        id: SessionId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Option<R> {
        let r = f(&mut self.sessions.entries.get_mut(&id)?.session);
        self.touch_session(now, id);
        self.after_input(now);
        Some(r)
    }

    /// Bytes accepted into the session's send buffer.
    pub fn session_write(&mut self, now: Instant, id: SessionId, data: &[u8]) -> usize {
        self.with_session(now, id, |s| s.write(data)).unwrap_or(0)
    }

    /// In-order bytes read from the session.
    pub fn session_read(&mut self, now: Instant, id: SessionId, buf: &mut [u8]) -> usize {
        self.with_session(now, id, |s| s.read(buf)).unwrap_or(0)
    }

    pub fn session_readable(&self, id: SessionId) -> usize {
        self.sessions
            .entries
            .get(&id)
            .map_or(0, |e| e.session.readable())
    }

    pub fn session_send_capacity(&self, id: SessionId) -> usize {
        self.sessions
            .entries
            .get(&id)
            .map_or(0, |e| e.session.send_capacity())
    }

    pub fn session_peer_finished(&self, id: SessionId) -> bool {
        self.sessions
            .entries
            .get(&id)
            .is_some_and(|e| e.session.peer_finished())
    }

    /// Half-close: FIN after everything written so far.
    pub fn session_shutdown(&mut self, now: Instant, id: SessionId) {
        self.with_session(now, id, |s| s.shutdown_write());
    }

    /// Reset the session.
    pub fn session_abort(&mut self, now: Instant, id: SessionId) {
        self.with_session(now, id, |s| s.abort());
    }

    /// The application is gone. Unread data means an abort (like closing a TCP socket with
    /// unread bytes); otherwise the session finishes gracefully. It is forgotten once closed.
    pub fn session_release(&mut self, now: Instant, id: SessionId) {
        let Some(e) = self.sessions.entries.get_mut(&id) else {
            return;
        };
        e.released = true;
        if e.session.readable() > 0 || e.session.state() != SessionState::Established {
            e.session.abort();
        } else {
            e.session.shutdown_write();
        }
        self.touch_session(now, id);
        self.after_input(now);
    }

    pub fn session_stats(&self, id: SessionId) -> Option<(Endpoint, Endpoint, SessionStats)> {
        let e = self.sessions.entries.get(&id)?;
        Some((e.session.local(), e.session.remote(), e.session.info()))
    }

    pub fn session_summaries(&self) -> Vec<SessionSummary> {
        let mut v: Vec<SessionSummary> = self
            .sessions
            .entries
            .iter()
            .map(|(id, e)| {
                let st = e.session.info();
                SessionSummary {
                    id: *id,
                    local: e.session.local(),
                    remote: e.session.remote(),
                    state: format!("{:?}", st.state).to_lowercase(),
                    rtt_ms: st.rtt.as_secs_f64() * 1e3,
                    cwnd: st.cwnd,
                    bytes_sent: st.bytes_sent,
                    bytes_received: st.bytes_received,
                    retransmits: st.retransmits,
                    fast_retransmits: st.fast_retransmits,
                    timeouts: st.timeouts,
                    ce_reductions: st.ce_reductions,
                    released: e.released,
                }
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    pub fn listeners(&self) -> Vec<u16> {
        self.sessions.listeners.iter().copied().collect()
    }

    /// After any change to a session: publish its events, re-arm its timer, mark it for the
    /// pump, and forget it if it closed after the application let go.
    fn touch_session(&mut self, _now: Instant, id: SessionId) {
        let Some(e) = self.sessions.entries.get_mut(&id) else {
            return;
        };
        while let Some(event) = e.session.poll_event() {
            if event == SessionEvent::Closed {
                e.closed = true;
            }
            if let Some((port, remote)) = e.unannounced {
                match event {
                    SessionEvent::Connected => {
                        e.unannounced = None;
                        self.events
                            .push_back(NodeEvent::Incoming { id, port, remote });
                    }
                    // Never announced, never owned: it ends unseen.
                    _ => {
                        e.released = true;
                        continue;
                    }
                }
            }
            self.events.push_back(NodeEvent::Session { id, event });
        }
        let (closed, released, deadline) = (e.closed, e.released, e.session.poll_timeout());
        if closed && released {
            self.sessions.remove(id);
            return;
        }
        self.sessions.set_deadline(id, deadline);
        self.sessions.ready.insert(id);
    }

    pub(super) fn session_timeouts(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.sessions.deadlines.first() {
            if t > now {
                break;
            }
            self.sessions.deadlines.remove(&(t, id));
            if let Some(e) = self.sessions.entries.get_mut(&id) {
                e.deadline = None;
                e.session.handle_timeout(now);
            }
            self.touch_session(now, id);
        }
    }

    /// A segment for this node.
    pub(super) fn on_segment(&mut self, now: Instant, header: &RoutedHeader, seg: &[u8]) {
        let Ok(summary) = Session::peek(seg) else {
            self.counters.malformed += 1;
            return;
        };
        let key = (header.dst.port, header.src);
        if let Some(&id) = self.sessions.by_key.get(&key) {
            let e = self.sessions.entries.get_mut(&id);
            match e {
                Some(e) if e.session.conn_id() == summary.conn_id => {
                    if e.session.handle_segment(now, seg, header.ce()).is_err() {
                        self.counters.malformed += 1;
                    }
                    self.touch_session(now, id);
                    return;
                }
                // A new connection reusing the port pair of one that has finished.
                Some(e)
                    if summary.is_syn()
                        && matches!(
                            e.session.state(),
                            SessionState::TimeWait | SessionState::Closed
                        ) =>
                {
                    self.sessions.remove(id);
                }
                _ => {}
            }
        }
        if summary.is_syn()
            && self.sessions.listeners.contains(&header.dst.port)
            && !self.sessions.by_key.contains_key(&key)
        {
            let local = Endpoint::new(self.cfg.id, header.dst.port);
            match Session::accept(self.session_config(), local, header.src, seg, now) {
                Ok(mut session) => {
                    session.set_route_available(now, self.is_reachable(header.src.node));
                    let id = self.sessions.next_id;
                    self.sessions.next_id += 1;
                    self.sessions.insert(id, session);
                    if let Some(e) = self.sessions.entries.get_mut(&id) {
                        e.unannounced = Some((header.dst.port, header.src));
                    }
                    debug!(id, %local, remote = %header.src, "session accepted (announced once established)");
                    self.touch_session(now, id);
                }
                Err(_) => self.counters.malformed += 1,
            }
            return;
        }
        // No session and no listener: refuse, like a closed TCP port.
        if let Some(reply) = Session::reset_reply(seg) {
            self.counters.sessions_refused += 1;
            let packet = self.routed(header.dst, header.src, Class::BestEffort, &reply);
            self.forward(now, Origin::Local, packet);
        }
    }

    fn routed(&self, src: Endpoint, dst: Endpoint, class: Class, body: &[u8]) -> Vec<u8> {
        let header = RoutedHeader {
            flags: 0,
            proto: Proto::Session,
            class,
            ttl: self.cfg.default_ttl,
            src,
            dst,
        };
        let mut packet = Vec::with_capacity(RoutedHeader::LEN + body.len());
        let mut w = Writer::new(&mut packet);
        header.encode(&mut w);
        w.bytes(body);
        packet
    }

    /// Moves segments from ready sessions onto links, each until it has nothing to send, its
    /// window closes, or its first link pushes back.
    pub(super) fn pump_sessions(&mut self, now: Instant) {
        if std::mem::take(&mut self.sessions.routes_changed) {
            let ids: Vec<SessionId> = self.sessions.entries.keys().copied().collect();
            for id in ids {
                let Some(e) = self.sessions.entries.get_mut(&id) else {
                    continue;
                };
                let node = e.session.remote().node;
                let reachable = node == self.cfg.id || self.first_hops.contains_key(&node);
                e.session.set_route_available(now, reachable);
                self.touch_session(now, id);
            }
        }
        let class = self.session_class();
        // Bounded: a session made ready again while pumping waits for the next call.
        let ready: Vec<SessionId> = std::mem::take(&mut self.sessions.ready)
            .into_iter()
            .collect();
        for id in ready {
            while let Some(e) = self.sessions.entries.get_mut(&id) {
                let packet = match e.stalled.take() {
                    Some(p) => p,
                    None => match e.session.poll_transmit(now) {
                        Some(mut seg) => {
                            // The session left room for the routing header in front.
                            let (local, remote) = (e.session.local(), e.session.remote());
                            let header = RoutedHeader {
                                flags: 0,
                                proto: Proto::Session,
                                class,
                                ttl: self.cfg.default_ttl,
                                src: local,
                                dst: remote,
                            };
                            let mut head = Vec::with_capacity(RoutedHeader::LEN);
                            header.encode(&mut Writer::new(&mut head));
                            seg[..RoutedHeader::LEN].copy_from_slice(&head);
                            seg
                        }
                        None => break,
                    },
                };
                if let Some(refused) = self.forward(now, Origin::Local, packet) {
                    if let Some(e) = self.sessions.entries.get_mut(&id) {
                        e.stalled = Some(refused);
                    }
                    break;
                }
            }
            // Transmitting may have changed the session's timer (pacing, retransmission).
            let deadline = self
                .sessions
                .entries
                .get(&id)
                .and_then(|e| e.session.poll_timeout());
            self.sessions.set_deadline(id, deadline);
            // Loopback sessions may have produced events for either end.
            if let Some(e) = self.sessions.entries.get_mut(&id) {
                while let Some(event) = e.session.poll_event() {
                    if event == SessionEvent::Closed {
                        e.closed = true;
                    }
                    self.events.push_back(NodeEvent::Session { id, event });
                }
                if e.closed && e.released {
                    self.sessions.remove(id);
                }
            }
        }
    }
}
