//! The member: the data path inside a view (send, receive without gaps, stability, delivery,
//! repair, flow control). View changes are in `flush.rs`.

use crate::wire::{Data, Entry, Message, MsgRec, Status, View, ViewId};
use crate::MemberId;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use weft_core::Instant;

/// Payloads longer than this are refused (they must fit a report's record).
pub const MAX_PAYLOAD: usize = 60_000;
/// A repair sends at most this many messages to one member at a time.
const REPAIR_BURST: u32 = 32;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub enum Ordering {
    /// Each sender's messages in the order it sent them.
    Fifo,
    /// One order for every member (Lamport timestamp, then sender).
    Total,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub ordering: Ordering,
    /// Messages a sender may have that not every member's application has taken.
    pub window: u32,
    /// Heartbeat and acknowledgement period.
    pub status_interval: Duration,
    /// A status follows received data after at most this long.
    pub ack_delay: Duration,
    /// A member's missing messages are sent again at most this often.
    pub retransmit: Duration,
    /// A proposal not answered by all its members within this is made again.
    pub propose_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ordering: Ordering::Total,
            window: 64,
            status_interval: Duration::from_millis(50),
            ack_delay: Duration::from_millis(5),
            retransmit: Duration::from_millis(100),
            propose_timeout: Duration::from_millis(500),
        }
    }
}

/// What the application sees, in order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// A new view; `transitional`: its members that come from our previous view.
    View {
        view: View,
        transitional: Vec<MemberId>,
    },
    Deliver {
        view: ViewId,
        sender: MemberId,
        counter: u32,
        payload: Vec<u8>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SendError {
    /// A view change is under way (the message would belong to the next view).
    Flushing,
    /// `window` messages are not yet taken by every member.
    Window,
    TooLarge,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Counters {
    pub views_installed: u64,
    pub sent: u64,
    pub delivered: u64,
    pub retransmitted: u64,
    pub refused_window: u64,
    pub refused_flushing: u64,
    pub proposals: u64,
    /// Installs not applied: stale, not for our view, or missing messages of the cut.
    pub installs_refused: u64,
    /// Messages of another view (or from outside it), dropped.
    pub stale: u64,
    pub malformed: u64,
}

pub(crate) struct Held {
    pub ts: u64,
    pub payload: Vec<u8>,
    /// Our own messages: when last sent.
    pub sent_at: Instant,
}

/// One sender of the current view, as this member knows it.
#[derive(Default)]
pub(crate) struct Sender {
    /// Messages received without a gap.
    pub contiguous: u32,
    /// Content held: received (in order or ahead), not yet both delivered here and received
    /// by every member.
    pub held: BTreeMap<u32, Held>,
    /// The sender's clock as far as messages received without a gap show it.
    pub last_ts: u64,
    /// A status (ts, sent) waiting for the gap before `sent` to close.
    pub pending: Option<(u64, u32)>,
    pub delivered: u32,
    /// Taken by our application.
    pub consumed: u32,
}

/// What a member of the view last said about itself.
pub(crate) struct Peer {
    pub recv: Vec<u32>,
    pub consumed: Vec<u32>,
    pub blocked: bool,
    /// Its statuses still name an older view.
    pub behind: bool,
    pub repair_at: Instant,
    pub install_at: Instant,
}

pub(crate) struct Proposal {
    pub id: ViewId,
    pub members: Vec<MemberId>,
    pub reports: BTreeMap<MemberId, crate::wire::Report>,
    pub started: Instant,
    pub resend_at: Instant,
}

pub struct Member {
    pub(crate) me: MemberId,
    pub(crate) cfg: Config,
    pub(crate) clock: u64,
    pub(crate) max_epoch: u64,
    pub(crate) view: View,
    pub(crate) my_pos: usize,
    pub(crate) senders: Vec<Sender>,
    pub(crate) peers: Vec<Peer>,
    /// Reported to a proposal: the view is frozen until we install the next.
    pub(crate) blocked: bool,
    pub(crate) first_report: Option<u64>,
    /// While frozen: the coordinator we last reported to (it hears our statuses too, so it
    /// can send its install again if we missed it).
    pub(crate) reported_to: Option<MemberId>,
    pub(crate) report_seq: u64,
    /// The install that made the current view (sent again to members that missed it).
    pub(crate) install: Option<(Vec<u8>, Vec<Entry>)>,
    pub(crate) candidates: Vec<MemberId>,
    pub(crate) proposal: Option<Proposal>,
    /// Since when some member of the view is seen frozen with no proposal of ours running.
    pub(crate) blocked_since: Option<Instant>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) out: VecDeque<(MemberId, Vec<u8>)>,
    pub(crate) next_status: Instant,
    pub(crate) ack_due: Option<Instant>,
    pub(crate) counters: Counters,
}

impl Member {
    /// A new member, alone in its first view (epoch 0).
    pub fn new(me: MemberId, now: Instant, cfg: Config) -> Self {
        let view = View {
            id: ViewId {
                epoch: 0,
                coord: me,
            },
            members: vec![me],
        };
        let mut m = Member {
            me,
            cfg,
            clock: 0,
            max_epoch: 0,
            view: view.clone(),
            my_pos: 0,
            senders: Vec::new(),
            peers: Vec::new(),
            blocked: false,
            first_report: None,
            reported_to: None,
            report_seq: 0,
            install: None,
            candidates: vec![me],
            proposal: None,
            blocked_since: None,
            events: VecDeque::new(),
            out: VecDeque::new(),
            next_status: now,
            ack_due: None,
            counters: Counters::default(),
        };
        m.reset_view(view, now);
        m.events.push_back(Event::View {
            view: m.view.clone(),
            transitional: vec![me],
        });
        m
    }

    pub fn id(&self) -> MemberId {
        self.me
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    /// A one-line account of the view-change state, for debugging.
    pub fn debug_state(&self) -> String {
        format!(
            "view {:?} cands {:?} blocked {} proposal {:?} max_epoch {} peers_blocked {:?}",
            self.view,
            self.candidates,
            self.blocked,
            self.proposal.as_ref().map(|p| (
                p.id,
                p.members.clone(),
                p.reports.keys().copied().collect::<Vec<_>>()
            )),
            self.max_epoch,
            self.peers.iter().map(|p| p.blocked).collect::<Vec<_>>()
        )
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Messages held (for retransmission, flush or delivery): bounded by window × members.
    pub fn held(&self) -> usize {
        self.senders.iter().map(|s| s.held.len()).sum()
    }

    /// Events not yet taken by the application.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn reset_view(&mut self, view: View, now: Instant) {
        let n = view.members.len();
        self.my_pos = view.position(self.me).unwrap_or(0);
        self.senders = (0..n).map(|_| Sender::default()).collect();
        self.peers = (0..n)
            .map(|_| Peer {
                recv: vec![0; n],
                consumed: vec![0; n],
                blocked: false,
                behind: false,
                repair_at: now,
                install_at: now,
            })
            .collect();
        self.senders[self.my_pos].last_ts = self.clock;
        self.view = view;
        self.blocked = false;
        self.first_report = None;
        self.reported_to = None;
        self.blocked_since = None;
        self.next_status = now;
    }

    /// The members this one can reach and that want to be in the group (it is always one).
    pub fn set_candidates(&mut self, now: Instant, candidates: impl IntoIterator<Item = MemberId>) {
        let mut c: Vec<MemberId> = candidates.into_iter().collect();
        c.push(self.me);
        c.sort_unstable();
        c.dedup();
        self.candidates = c;
        self.check_view_change(now);
    }

    /// A view change is under way here (the view is frozen).
    pub fn flushing(&self) -> bool {
        self.blocked
    }

    /// Whether [`Member::send`] would take a message now.
    pub fn writable(&self) -> bool {
        !self.blocked && self.in_flight() < self.cfg.window
    }

    fn in_flight(&self) -> u32 {
        let mine = &self.senders[self.my_pos];
        let taken = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if i == self.my_pos {
                    mine.consumed
                } else {
                    p.consumed[self.my_pos]
                }
            })
            .min()
            .unwrap_or(0);
        mine.contiguous.saturating_sub(taken)
    }

    /// The application multicasts `payload` to the view: its counter in the view.
    pub fn send(&mut self, now: Instant, payload: &[u8]) -> Result<u32, SendError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(SendError::TooLarge);
        }
        if self.blocked {
            self.counters.refused_flushing += 1;
            return Err(SendError::Flushing);
        }
        if self.in_flight() >= self.cfg.window {
            self.counters.refused_window += 1;
            return Err(SendError::Window);
        }
        self.clock = self.clock.saturating_add(1);
        let ts = self.clock;
        let mine = &mut self.senders[self.my_pos];
        let counter = mine.contiguous.saturating_add(1);
        mine.contiguous = counter;
        mine.last_ts = ts;
        mine.held.insert(
            counter,
            Held {
                ts,
                payload: payload.to_vec(),
                sent_at: now,
            },
        );
        self.counters.sent += 1;
        let bytes = Message::Data(Data {
            view: self.view.id,
            msg: MsgRec {
                sender: self.me,
                counter,
                ts,
                payload: payload.to_vec(),
            },
        })
        .to_bytes();
        self.send_to_view(&bytes);
        self.try_deliver();
        Ok(counter)
    }

    pub(crate) fn send_to_view(&mut self, bytes: &[u8]) {
        for &m in &self.view.members {
            if m != self.me {
                self.out.push_back((m, bytes.to_vec()));
            }
        }
    }

    /// The next datagram to carry: its destination member and bytes.
    pub fn poll_transmit(&mut self) -> Option<(MemberId, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next event for the application (taking a delivery frees window at its sender).
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        if let Event::Deliver { view, sender, .. } = &ev {
            if *view == self.view.id {
                if let Some(i) = self.view.position(*sender) {
                    self.senders[i].consumed = self.senders[i].consumed.saturating_add(1);
                }
            }
        }
        Some(ev)
    }

    /// Bytes another member sent.
    pub fn handle(&mut self, now: Instant, bytes: &[u8]) {
        match Message::decode(bytes) {
            Ok(msg) => self.handle_message(now, msg, bytes),
            Err(_) => self.counters.malformed += 1,
        }
    }

    fn handle_message(&mut self, now: Instant, msg: Message, bytes: &[u8]) {
        match msg {
            Message::Data(d) => self.on_data(now, d),
            Message::Status(s) => self.on_status(now, s),
            Message::Propose(p) => self.on_propose(now, p),
            Message::Report(r) => self.on_report(now, r),
            Message::Nack(n) => self.on_nack(now, n),
            Message::Install(i) => self.on_install(now, i, bytes),
        }
    }

    fn on_data(&mut self, now: Instant, d: Data) {
        let Some(i) = self.view.position(d.msg.sender) else {
            self.counters.stale += 1;
            return;
        };
        if d.view != self.view.id || i == self.my_pos || self.blocked {
            self.counters.stale += 1;
            return;
        }
        self.clock = self.clock.max(d.msg.ts);
        let window = self.cfg.window;
        let s = &mut self.senders[i];
        let c = d.msg.counter;
        if c > s.contiguous && c - s.contiguous <= window.saturating_mul(2) {
            s.held.entry(c).or_insert(Held {
                ts: d.msg.ts,
                payload: d.msg.payload,
                sent_at: now,
            });
            while let Some(next) = s.contiguous.checked_add(1) {
                let Some(h) = s.held.get(&next) else { break };
                s.last_ts = s.last_ts.max(h.ts);
                s.contiguous = next;
            }
            if let Some((ts, sent)) = s.pending {
                if s.contiguous >= sent {
                    s.last_ts = s.last_ts.max(ts);
                    s.pending = None;
                }
            }
        }
        let due = now + self.cfg.ack_delay;
        self.ack_due = Some(self.ack_due.map_or(due, |t| t.min(due)));
        self.try_deliver();
    }

    fn on_status(&mut self, now: Instant, st: Status) {
        let n = self.view.members.len();
        let Some(i) = self.view.position(st.from) else {
            self.counters.stale += 1;
            return;
        };
        if st.view != self.view.id {
            if st.view < self.view.id && i != self.my_pos {
                // A member of our view still in an older one: it missed the install.
                self.peers[i].behind = true;
                self.resend_install(now, i, st.view);
                self.check_view_change(now);
            }
            self.counters.stale += 1;
            return;
        }
        if i == self.my_pos || st.recv.len() != n || st.consumed.len() != n {
            self.counters.malformed += 1;
            return;
        }
        self.clock = self.clock.max(st.ts);
        let s = &mut self.senders[i];
        if s.contiguous >= st.sent {
            s.last_ts = s.last_ts.max(st.ts);
        } else {
            s.pending = Some((st.ts, st.sent));
        }
        let peer = &mut self.peers[i];
        peer.recv = st.recv;
        peer.consumed = st.consumed;
        peer.blocked = st.blocked;
        peer.behind = false;
        self.repair(now, i);
        self.gc();
        self.try_deliver();
        self.check_view_change(now);
    }

    /// Sends member `i` our messages its status says it lacks, if due.
    fn repair(&mut self, now: Instant, i: usize) {
        let have = self.peers[i].recv[self.my_pos];
        let mine = &mut self.senders[self.my_pos];
        if have >= mine.contiguous || now < self.peers[i].repair_at {
            return;
        }
        let to = self.view.members[i];
        let old = now
            .as_nanos()
            .saturating_sub(self.cfg.retransmit.as_nanos() as u64);
        let mut any = false;
        let last = mine.contiguous.min(have.saturating_add(REPAIR_BURST));
        for (&c, h) in mine.held.range_mut(have + 1..=last) {
            if h.sent_at.as_nanos() > old {
                continue;
            }
            h.sent_at = now;
            any = true;
            self.counters.retransmitted += 1;
            let bytes = Message::Data(Data {
                view: self.view.id,
                msg: MsgRec {
                    sender: self.me,
                    counter: c,
                    ts: h.ts,
                    payload: h.payload.clone(),
                },
            })
            .to_bytes();
            self.out.push_back((to, bytes));
        }
        if any {
            self.peers[i].repair_at = now + self.cfg.retransmit;
        }
    }

    /// Drops what every member received and we delivered.
    fn gc(&mut self) {
        for j in 0..self.senders.len() {
            let upto = self.everyone_has(j).min(self.senders[j].delivered);
            let s = &mut self.senders[j];
            while let Some((&c, _)) = s.held.first_key_value() {
                if c > upto {
                    break;
                }
                s.held.pop_first();
            }
        }
    }

    /// How many of sender `j`'s messages everyone in the view is known to have received.
    pub(crate) fn everyone_has(&self, j: usize) -> u32 {
        (0..self.view.members.len())
            .map(|i| {
                if i == self.my_pos {
                    self.senders[j].contiguous
                } else {
                    self.peers[i].recv[j]
                }
            })
            .min()
            .unwrap_or(0)
    }

    /// Delivers what is stable (total) or in order (FIFO). Nothing while frozen.
    pub(crate) fn try_deliver(&mut self) {
        if self.blocked {
            return;
        }
        self.senders[self.my_pos].last_ts = self.clock;
        match self.cfg.ordering {
            Ordering::Fifo => {
                for j in 0..self.senders.len() {
                    while self.senders[j].delivered < self.senders[j].contiguous {
                        self.deliver_next(j);
                    }
                }
            }
            Ordering::Total => {
                let stable = self.senders.iter().map(|s| s.last_ts).min().unwrap_or(0);
                while let Some((ts, j)) = self.next_in_order(None) {
                    if ts > stable {
                        break;
                    }
                    self.deliver_next(j);
                }
            }
        }
        self.gc();
    }

    /// The sender whose next undelivered message comes first in agreed order, among those
    /// received (or, with `cut`, up to each sender's cut count).
    pub(crate) fn next_in_order(&self, cut: Option<&[u32]>) -> Option<(u64, usize)> {
        let mut best: Option<(u64, MemberId, usize)> = None;
        for (j, s) in self.senders.iter().enumerate() {
            let limit = cut.map_or(s.contiguous, |c| c[j]);
            if s.delivered >= limit {
                continue;
            }
            let Some(h) = s.held.get(&s.delivered.saturating_add(1)) else {
                continue;
            };
            let key = (h.ts, self.view.members[j], j);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        best.map(|(ts, _, j)| (ts, j))
    }

    pub(crate) fn deliver_next(&mut self, j: usize) {
        let s = &mut self.senders[j];
        let c = s.delivered.saturating_add(1);
        let Some(h) = s.held.get(&c) else { return };
        s.delivered = c;
        self.counters.delivered += 1;
        self.events.push_back(Event::Deliver {
            view: self.view.id,
            sender: self.view.members[j],
            counter: c,
            payload: h.payload.clone(),
        });
    }

    fn status(&self) -> Message {
        Message::Status(Status {
            view: self.view.id,
            from: self.me,
            ts: self.clock,
            sent: self.senders[self.my_pos].contiguous,
            blocked: self.blocked,
            recv: self.senders.iter().map(|s| s.contiguous).collect(),
            consumed: self.senders.iter().map(|s| s.consumed).collect(),
        })
    }

    /// When [`Member::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_status;
        if let Some(a) = self.ack_due {
            t = t.min(a);
        }
        if let Some(p) = &self.proposal {
            t = t.min(p.resend_at).min(p.started + self.cfg.propose_timeout);
        }
        if let Some(b) = self.blocked_since {
            t = t.min(b + self.cfg.propose_timeout);
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_status || self.ack_due.is_some_and(|a| now >= a) {
            self.ack_due = None;
            self.next_status = now + self.cfg.status_interval;
            let bytes = self.status().to_bytes();
            self.send_to_view(&bytes);
            if let Some(c) = self.reported_to {
                if self.view.position(c).is_none() {
                    self.out.push_back((c, bytes));
                }
            }
        }
        self.resend_proposal(now);
        self.check_view_change(now);
    }
}
