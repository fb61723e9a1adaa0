//! `Sessions`: the end-to-end sessions that end at this node: the table that demultiplexes
//! segments, listeners, port allocation, timers, and the pump that hands the node their
//! segments, one at a time, for the links.
//!
//! Back-pressure is per session: a session is polled for segments only while the first link's
//! queue for its flow has room; when the link refuses a segment the session stalls (holding
//! that one segment) until the link names its flow writable again. Other sessions, and the
//! daemon, carry on.

use crate::overlay::events::{NodeEvent, SessionId};
use crate::overlay::wire::{flow_of, Class, Proto, RoutedHeader};
use ahash::AHashMap as HashMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::{BTreeSet, VecDeque};
use thiserror::Error;
use tracing::debug;
use weft_core::{Endpoint, Instant, NodeId};
use weft_transport::arq::FlowId;
use weft_transport::session::{Session, SessionConfig, SessionEvent, SessionState, SessionStats};

const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OpenError {
    #[error("port already in use")]
    PortInUse,
    #[error("no free local port")]
    NoPorts,
}

type Events = VecDeque<NodeEvent>;

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

impl Entry {
    /// Moves the session's events onto the node's queue: an accepted session is announced
    /// (`Incoming`) when it is established; one that ends before that ends unseen.
    fn publish(&mut self, id: SessionId, events: &mut Events) {
        while let Some(event) = self.session.poll_event() {
            if event == SessionEvent::Closed {
                self.closed = true;
            }
            if let Some((port, remote)) = self.unannounced {
                if event != SessionEvent::Connected {
                    // Before the handshake completes nothing is readable (the segment that
                    // completes it is acknowledged before its data), so only the end matters:
                    // never announced, never owned, nobody will release it.
                    if event == SessionEvent::Closed {
                        self.released = true;
                    }
                    continue;
                }
                self.unannounced = None;
                events.push_back(NodeEvent::Incoming { id, port, remote });
            }
            events.push_back(NodeEvent::Session { id, event });
        }
    }
}

struct SessionTable {
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
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub id: SessionId,
    pub local: Endpoint,
    pub remote: Endpoint,
    pub state: String,
    pub rtt_ms: f64,
    pub cwnd_bytes: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Segments that carried new data (how writes were coalesced).
    pub data_segments_sent: u64,
    pub retransmits: u64,
    pub fast_retransmits: u64,
    pub timeouts: u64,
    pub ce_reductions: u64,
    pub released: bool,
}

impl SessionTable {
    fn new(seed: u64) -> Self {
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

/// What `Sessions` needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    pub local: NodeId,
    /// Template for every session.
    pub session: SessionConfig,
    /// How the links carry session segments.
    pub class: Class,
    pub ttl: u8,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SessionCounters {
    pub malformed: u64,
    pub sessions_refused: u64,
}

pub struct Sessions {
    cfg: SessionsConfig,
    table: SessionTable,
    /// Routes changed since sessions last heard about reachability.
    routes_changed: bool,
    /// This pump round's sessions, and the one whose segments are being handed out.
    pumping: VecDeque<SessionId>,
    current: Option<SessionId>,
    counters: SessionCounters,
}

impl Sessions {
    pub fn new(cfg: SessionsConfig, seed: u64) -> Self {
        Sessions {
            cfg,
            table: SessionTable::new(seed),
            routes_changed: false,
            pumping: VecDeque::new(),
            current: None,
            counters: SessionCounters::default(),
        }
    }

    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    pub fn len(&self) -> usize {
        self.table.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.entries.is_empty()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.table.deadlines.first().map(|(t, _)| *t)
    }

    /// Some session may have segments to send (or reachability to learn).
    pub fn has_work(&self) -> bool {
        !self.table.ready.is_empty() || self.routes_changed
    }

    /// A link can take more of `flow`: its session (if local) may send again.
    pub fn flow_writable(&mut self, flow: FlowId) {
        if let Some(&id) = self.table.by_flow.get(&flow) {
            self.table.ready.insert(id);
        }
    }

    /// The routes changed: sessions learn their peers' reachability at the next pump.
    pub fn routes_changed(&mut self) {
        self.routes_changed = true;
    }

    /// Accept sessions to `port`.
    pub fn listen(&mut self, port: u16) -> Result<(), OpenError> {
        if !self.table.listeners.insert(port) {
            return Err(OpenError::PortInUse);
        }
        Ok(())
    }

    /// Stop accepting on `port` (established sessions carry on).
    pub fn unlisten(&mut self, port: u16) {
        self.table.listeners.remove(&port);
    }

    pub fn listeners(&self) -> Vec<u16> {
        self.table.listeners.iter().copied().collect()
    }

    /// Opens a session from (this node, `local_port` or an ephemeral port) to `remote`.
    pub fn connect(
        &mut self,
        now: Instant,
        local_port: Option<u16>,
        remote: Endpoint,
        reachable: bool,
        events: &mut Events,
    ) -> Result<(SessionId, Endpoint), OpenError> {
        let t = &mut self.table;
        let port = match local_port.filter(|&p| p != 0) {
            Some(p) => {
                if t.by_key.contains_key(&(p, remote)) {
                    return Err(OpenError::PortInUse);
                }
                p
            }
            None => t.allocate_port().ok_or(OpenError::NoPorts)?,
        };
        let local = Endpoint::new(self.cfg.local, port);
        let conn_id = t.rng.gen::<u32>() | 1;
        let mut session = Session::connect(self.cfg.session.clone(), local, remote, conn_id, now);
        session.set_route_available(now, reachable);
        let id = t.next_id;
        t.next_id += 1;
        t.insert(id, session);
        debug!(id, %local, %remote, "session connect");
        self.touch(id, events);
        Ok((id, local))
    }

    /// Runs `f` on a session, then publishes what it changed.
    pub fn with_session<R>(
        &mut self,
        id: SessionId,
        events: &mut Events,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Option<R> {
        let r = f(&mut self.table.entries.get_mut(&id)?.session);
        self.touch(id, events);
        Some(r)
    }

    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.table.entries.get(&id).map(|e| &e.session)
    }

    /// The application is gone. Unread data means an abort (like closing a TCP socket with
    /// unread bytes); otherwise the session finishes gracefully. It is forgotten once closed.
    pub fn release(&mut self, id: SessionId, events: &mut Events) {
        let Some(e) = self.table.entries.get_mut(&id) else {
            return;
        };
        e.released = true;
        if e.session.readable() > 0 || e.session.state() != SessionState::Established {
            e.session.abort();
        } else {
            e.session.shutdown_write();
        }
        self.touch(id, events);
    }

    pub fn stats(&self, id: SessionId) -> Option<(Endpoint, Endpoint, SessionStats)> {
        let e = self.table.entries.get(&id)?;
        Some((e.session.local(), e.session.remote(), e.session.info()))
    }

    pub fn summaries(&self) -> Vec<SessionSummary> {
        let mut v: Vec<SessionSummary> = self
            .table
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
                    cwnd_bytes: st.cwnd,
                    bytes_sent: st.bytes_sent,
                    bytes_received: st.bytes_received,
                    data_segments_sent: st.data_segments_sent,
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

    /// After any change to a session: publish its events, re-arm its timer, mark it for the
    /// pump, and forget it if it closed after the application let go.
    fn touch(&mut self, id: SessionId, events: &mut Events) {
        let Some(e) = self.table.entries.get_mut(&id) else {
            return;
        };
        e.publish(id, events);
        let (closed, released, deadline) = (e.closed, e.released, e.session.poll_timeout());
        if closed && released {
            self.table.remove(id);
            return;
        }
        self.table.set_deadline(id, deadline);
        self.table.ready.insert(id);
    }

    pub fn handle_timeout(&mut self, now: Instant, events: &mut Events) {
        while let Some(&(t, id)) = self.table.deadlines.first() {
            if t > now {
                break;
            }
            self.table.deadlines.remove(&(t, id));
            if let Some(e) = self.table.entries.get_mut(&id) {
                e.deadline = None;
                e.session.handle_timeout(now);
            }
            self.touch(id, events);
        }
    }

    /// A segment for this node. Returns a routed reset for the node to send when nothing
    /// here takes it (like a closed TCP port).
    pub fn on_segment(
        &mut self,
        now: Instant,
        header: &RoutedHeader,
        seg: &[u8],
        reachable: impl Fn(NodeId) -> bool,
        events: &mut Events,
    ) -> Option<Vec<u8>> {
        let Ok(summary) = Session::peek(seg) else {
            self.counters.malformed += 1;
            return None;
        };
        let key = (header.dst.port, header.src);
        if let Some(&id) = self.table.by_key.get(&key) {
            match self.table.entries.get_mut(&id) {
                Some(e) if e.session.conn_id() == summary.conn_id => {
                    if e.session.handle_segment(now, seg, header.ce()).is_err() {
                        self.counters.malformed += 1;
                    }
                    self.touch(id, events);
                    return None;
                }
                // A new connection reusing the port pair of one that has finished.
                Some(e)
                    if summary.is_syn()
                        && matches!(
                            e.session.state(),
                            SessionState::TimeWait | SessionState::Closed
                        ) =>
                {
                    self.table.remove(id);
                }
                _ => {}
            }
        }
        if summary.is_syn()
            && self.table.listeners.contains(&header.dst.port)
            && !self.table.by_key.contains_key(&key)
        {
            let local = Endpoint::new(self.cfg.local, header.dst.port);
            match Session::accept(self.cfg.session.clone(), local, header.src, seg, now) {
                Ok(mut session) => {
                    session.set_route_available(now, reachable(header.src.node));
                    let id = self.table.next_id;
                    self.table.next_id += 1;
                    self.table.insert(id, session);
                    if let Some(e) = self.table.entries.get_mut(&id) {
                        e.unannounced = Some((header.dst.port, header.src));
                    }
                    debug!(id, %local, remote = %header.src, "session accepted (announced once established)");
                    self.touch(id, events);
                }
                Err(_) => self.counters.malformed += 1,
            }
            return None;
        }
        let reply = Session::reset_reply(seg)?;
        self.counters.sessions_refused += 1;
        let mut packet = Vec::with_capacity(RoutedHeader::LEN + reply.len());
        packet.extend_from_slice(
            &RoutedHeader {
                flags: 0,
                proto: Proto::Session,
                class: Class::BestEffort,
                ttl: self.cfg.ttl,
                src: header.dst,
                dst: header.src,
            }
            .to_bytes(),
        );
        packet.extend_from_slice(&reply);
        Some(packet)
    }

    // ----- the pump -----------------------------------------------------------------------

    /// Starts a pump round over the sessions that are ready (a session made ready again
    /// during the round waits for the next one). Sessions first learn about route changes.
    pub fn begin_pump(
        &mut self,
        now: Instant,
        reachable: impl Fn(NodeId) -> bool,
        events: &mut Events,
    ) {
        if std::mem::take(&mut self.routes_changed) {
            let ids: Vec<SessionId> = self.table.entries.keys().copied().collect();
            for id in ids {
                let Some(e) = self.table.entries.get_mut(&id) else {
                    continue;
                };
                let node = e.session.remote().node;
                e.session.set_route_available(now, reachable(node));
                self.touch(id, events);
            }
        }
        self.pumping.extend(std::mem::take(&mut self.table.ready));
    }

    /// The next routed segment of this round, with its session: each session in turn until
    /// it has nothing to send or its window closes, or the node [`stall`](Self::stall)s it.
    pub fn next_segment(
        &mut self,
        now: Instant,
        events: &mut Events,
    ) -> Option<(SessionId, Vec<u8>)> {
        loop {
            let id = match self.current {
                Some(id) => id,
                None => {
                    let id = self.pumping.pop_front()?;
                    self.current = Some(id);
                    id
                }
            };
            if let Some(e) = self.table.entries.get_mut(&id) {
                let packet = match e.stalled.take() {
                    Some(p) => Some(p),
                    // The session left room for the routing header in front.
                    None => e.session.poll_transmit(now).map(|mut seg| {
                        let header = RoutedHeader {
                            flags: 0,
                            proto: Proto::Session,
                            class: self.cfg.class,
                            ttl: self.cfg.ttl,
                            src: e.session.local(),
                            dst: e.session.remote(),
                        };
                        seg[..RoutedHeader::LEN].copy_from_slice(&header.to_bytes());
                        seg
                    }),
                };
                if let Some(p) = packet {
                    return Some((id, p));
                }
            }
            self.finish_current(events);
        }
    }

    /// The first link refused the session's segment: it goes first once the flow drains,
    /// and the session waits until then.
    pub fn stall(&mut self, id: SessionId, packet: Vec<u8>, events: &mut Events) {
        if let Some(e) = self.table.entries.get_mut(&id) {
            e.stalled = Some(packet);
        }
        self.finish_current(events);
    }

    fn finish_current(&mut self, events: &mut Events) {
        let Some(id) = self.current.take() else {
            return;
        };
        // Transmitting may have changed the session's timer (pacing, retransmission).
        let deadline = self
            .table
            .entries
            .get(&id)
            .and_then(|e| e.session.poll_timeout());
        self.table.set_deadline(id, deadline);
        // Loopback sessions may have produced events for either end.
        if let Some(e) = self.table.entries.get_mut(&id) {
            e.publish(id, events);
            if e.closed && e.released {
                self.table.remove(id);
            }
        }
    }
}
