//! A deterministic two-host network for sessions: each direction is a link with loss
//! (Bernoulli and Gilbert-Elliott bursts), delay with jitter (reordering), duplication, a
//! rate limit with a drop-tail queue that sets CE marks past a threshold (all decided by the
//! shared `weft-linkmodel`), and outages and surgical drops in front of it. Each
//! host is a miniature daemon: it demultiplexes by conn_id, accepts SYNs when listening,
//! answers strays with `reset_reply` and frees sessions on `Closed`. Applications write a
//! deterministic byte pattern and verify every byte they read at its offset.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;
use weft_core::{Endpoint, Instant, NodeId};
use weft_linkmodel::{self as model, DirectionModel, LossModel, QueueLimit, Verdict};
use weft_transport::session::{Session, SessionConfig, SessionEvent};

pub fn at(d: Duration) -> Instant {
    Instant::ZERO + d
}

#[derive(Debug, Clone, Default)]
pub struct LinkParams {
    pub loss: f64,
    /// Gilbert-Elliott in continuous time: mean durations of the good and of the bad state
    /// (in which every packet is lost). Bursts are spans of time, not of packets, so sparse
    /// traffic (retransmissions backing off) does not see implausibly long bursts.
    pub burst: Option<(Duration, Duration)>,
    pub delay: Duration,
    /// Extra uniform delay in `[0, jitter)` per packet: reorders.
    pub jitter: Duration,
    pub duplicate: f64,
    /// Bottleneck rate in bits per second, with its queue limit in bytes.
    pub rate: Option<(u64, usize)>,
    /// Queue length (bytes) beyond which packets are CE-marked.
    pub ce_threshold: Option<usize>,
    /// Windows in which everything sent is lost.
    pub outages: Vec<(Instant, Instant)>,
    /// Ordinal numbers (1-based) of packets to drop, for surgical losses.
    pub drop_nth: Vec<u64>,
    /// Drop the first packet this predicate accepts.
    pub drop_first_matching: Option<fn(&[u8]) -> bool>,
}

#[derive(Debug, Default, Clone)]
pub struct LinkCounters {
    pub sent: u64,
    pub dropped: u64,
    pub marked: u64,
    pub duplicated: u64,
}

pub struct Link {
    pub params: LinkParams,
    /// The shared link model, fed from `params` (which tests may change between packets).
    model: DirectionModel,
    serial: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: BTreeMap<u64, (Vec<u8>, bool)>,
    pub counters: LinkCounters,
    /// Drop everything from now on (a vanished peer).
    pub blackhole: bool,
    /// When each packet was offered to the link.
    pub send_times: Vec<Instant>,
}

impl LinkParams {
    /// The link in the shared model's terms (its jitter reorders).
    fn model(&self) -> model::LinkParams {
        let loss = match self.burst {
            Some((good, bad)) => LossModel::GilbertElliottTimed {
                mean_good: good,
                mean_bad: bad,
                loss_good: self.loss,
                loss_bad: 1.0,
            },
            None if self.loss > 0.0 => LossModel::Bernoulli { p: self.loss },
            None => LossModel::None,
        };
        let (rate_bps, limit) = self.rate.unwrap_or((0, 0));
        model::LinkParams {
            delay: self.delay,
            jitter: self.jitter,
            reorder: true,
            loss,
            duplicate: self.duplicate,
            rate_bps,
            queue: QueueLimit::Bytes(limit as u64),
        }
    }
}

impl Link {
    pub fn new(params: LinkParams, seed: u64) -> Self {
        Link {
            model: DirectionModel::new(params.model(), seed),
            params,
            serial: 0,
            queue: BinaryHeap::new(),
            packets: BTreeMap::new(),
            counters: LinkCounters::default(),
            blackhole: false,
            send_times: Vec::new(),
        }
    }

    pub fn send(&mut self, now: Instant, packet: Vec<u8>) {
        self.counters.sent += 1;
        self.send_times.push(now);
        let matched = self.params.drop_first_matching.is_some_and(|f| f(&packet));
        if matched {
            self.params.drop_first_matching = None;
        }
        let p = &self.params;
        let in_outage = p.outages.iter().any(|&(s, e)| now >= s && now < e);
        if matched || self.blackhole || in_outage || p.drop_nth.contains(&self.counters.sent) {
            self.counters.dropped += 1;
            return;
        }
        let params = p.model();
        if params != *self.model.params() {
            self.model.set_params(params);
        }
        let Verdict::Deliver { due, copy, backlog } = self.model.on_packet(now, packet.len())
        else {
            self.counters.dropped += 1;
            return;
        };
        let ce = self.params.ce_threshold.is_some_and(|t| backlog > t as u64);
        if ce {
            self.counters.marked += 1;
        }
        self.counters.duplicated += copy.is_some() as u64;
        for at in std::iter::once(due).chain(copy) {
            self.serial += 1;
            self.queue.push(Reverse((at, self.serial)));
            self.packets.insert(self.serial, (packet.clone(), ce));
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    pub fn pop_due(&mut self, now: Instant) -> Option<(Vec<u8>, bool)> {
        let &Reverse((t, serial)) = self.queue.peek()?;
        if t > now {
            return None;
        }
        self.queue.pop();
        self.packets.remove(&serial)
    }
}

/// Eight bytes of the stream in direction `dir` for `seed` (splitmix64 of the word index).
fn pattern_word(seed: u64, dir: u64, word_index: u64) -> u64 {
    let mut z = seed ^ (dir << 62) ^ word_index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with the stream bytes starting at `offset`.
pub fn fill_pattern(seed: u64, dir: u64, offset: u64, buf: &mut [u8]) {
    let (mut pos, mut off) = (0, offset);
    while pos < buf.len() {
        let word = pattern_word(seed, dir, off >> 3).to_le_bytes();
        let start = (off & 7) as usize;
        let n = (8 - start).min(buf.len() - pos);
        buf[pos..pos + n].copy_from_slice(&word[start..start + n]);
        pos += n;
        off += n as u64;
    }
}

/// What one application does with its session.
#[derive(Debug, Clone)]
pub struct AppPlan {
    /// Bytes to write, then shut down writing.
    pub send_bytes: u64,
    /// Largest single write / read.
    pub chunk: usize,
    /// Stop reading during this window (flow control).
    pub read_pause: Option<(Instant, Instant)>,
    /// Do not shut down writing after `send_bytes` (the test will change the plan).
    pub hold_open: bool,
    /// Once the send buffer is full, write again only after `Writable` (as a daemon that
    /// stops polling the application's socket would).
    pub wait_for_writable: bool,
}

impl Default for AppPlan {
    fn default() -> Self {
        AppPlan {
            send_bytes: 0,
            chunk: 16 * 1024,
            read_pause: None,
            hold_open: false,
            wait_for_writable: false,
        }
    }
}

pub struct Conn {
    pub session: Session,
    pub plan: AppPlan,
    /// 0 for the active opener's stream, 1 for the acceptor's.
    pub dir: u64,
    pub written: u64,
    pub read: u64,
    /// Waiting for `Writable`.
    pub write_blocked: bool,
    pub events: Vec<SessionEvent>,
    pub corrupt: Option<String>,
    /// Reusable buffer for the bytes a read should return.
    expected: Vec<u8>,
}

impl Conn {
    fn new(session: Session, plan: AppPlan, dir: u64) -> Self {
        Conn {
            session,
            plan,
            dir,
            written: 0,
            read: 0,
            write_blocked: false,
            events: Vec::new(),
            corrupt: None,
            expected: Vec::new(),
        }
    }

    fn app_step(&mut self, now: Instant, seed: u64, scratch: &mut Vec<u8>) {
        while self.written < self.plan.send_bytes && !self.write_blocked {
            let room = self.session.send_capacity();
            let n = (self.plan.send_bytes - self.written)
                .min(room as u64)
                .min(self.plan.chunk as u64) as usize;
            if n == 0 {
                break;
            }
            if scratch.len() < n {
                scratch.resize(n, 0);
            }
            fill_pattern(seed, self.dir, self.written, &mut scratch[..n]);
            let accepted = self.session.write(&scratch[..n]);
            self.written += accepted as u64;
            self.write_blocked = self.plan.wait_for_writable && self.session.send_capacity() == 0;
            if accepted < n {
                break;
            }
        }
        if self.written == self.plan.send_bytes && !self.plan.hold_open {
            self.session.shutdown_write();
        }
        let paused = self
            .plan
            .read_pause
            .is_some_and(|(s, e)| now >= s && now < e);
        if paused {
            return;
        }
        let want = self.plan.chunk.max(1);
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        loop {
            let n = self.session.read(&mut scratch[..want]);
            if n == 0 {
                break;
            }
            if self.corrupt.is_none() {
                self.expected.resize(n, 0);
                fill_pattern(seed, 1 - self.dir, self.read, &mut self.expected);
                if scratch[..n] != self.expected[..] {
                    let i = (0..n)
                        .find(|&i| scratch[i] != self.expected[i])
                        .unwrap_or(0);
                    self.corrupt = Some(format!("byte {} differs", self.read + i as u64));
                }
            }
            self.read += n as u64;
        }
    }

    pub fn saw(&self, e: SessionEvent) -> usize {
        self.events.iter().filter(|&&x| x == e).count()
    }
}

pub struct Host {
    pub endpoint: Endpoint,
    pub listening: bool,
    pub cfg: SessionConfig,
    /// The plan for sessions this host accepts.
    pub accept_plan: AppPlan,
    pub conns: BTreeMap<u32, Conn>,
    /// Connections that reached `Closed` and were freed, in order.
    pub finished: Vec<(u32, Conn)>,
    pub resets_sent: u64,
    pub rejected_segments: u64,
    outbox: Vec<Vec<u8>>,
}

impl Host {
    pub fn new(endpoint: Endpoint, cfg: SessionConfig) -> Self {
        Host {
            endpoint,
            listening: false,
            cfg,
            accept_plan: AppPlan::default(),
            conns: BTreeMap::new(),
            finished: Vec::new(),
            resets_sent: 0,
            rejected_segments: 0,
            outbox: Vec::new(),
        }
    }

    pub fn receive(&mut self, now: Instant, remote: Endpoint, bytes: &[u8], ce: bool) {
        let Ok(summary) = Session::peek(bytes) else {
            self.rejected_segments += 1;
            return;
        };
        if let Some(conn) = self.conns.get_mut(&summary.conn_id) {
            if conn.session.handle_segment(now, bytes, ce).is_err() {
                self.rejected_segments += 1;
            }
        } else if summary.is_syn() && self.listening {
            match Session::accept(self.cfg.clone(), self.endpoint, remote, bytes, now) {
                Ok(session) => {
                    self.conns.insert(
                        summary.conn_id,
                        Conn::new(session, self.accept_plan.clone(), 1),
                    );
                }
                Err(_) => self.rejected_segments += 1,
            }
        } else if let Some(rst) = Session::reset_reply(bytes) {
            self.resets_sent += 1;
            self.outbox.push(rst);
        }
    }

    /// Runs the applications, collects events and frees closed sessions.
    fn step(&mut self, now: Instant, seed: u64, scratch: &mut Vec<u8>) {
        let mut closed = Vec::new();
        for (&id, conn) in self.conns.iter_mut() {
            conn.app_step(now, seed, scratch);
            while let Some(e) = conn.session.poll_event() {
                conn.events.push(e);
                if e == SessionEvent::Writable {
                    conn.write_blocked = false;
                    conn.app_step(now, seed, scratch);
                }
                if e == SessionEvent::Closed {
                    closed.push(id);
                }
            }
        }
        for id in closed {
            if let Some(conn) = self.conns.remove(&id) {
                self.finished.push((id, conn));
            }
        }
    }

    /// The connection with `conn_id`, live or finished.
    pub fn conn(&self, conn_id: u32) -> Option<&Conn> {
        self.conns.get(&conn_id).or_else(|| {
            self.finished
                .iter()
                .find(|(id, _)| *id == conn_id)
                .map(|(_, c)| c)
        })
    }

    pub fn conn_mut(&mut self, conn_id: u32) -> Option<&mut Conn> {
        self.conns.get_mut(&conn_id)
    }

    /// Every event of `conn_id`, live or finished.
    pub fn events(&self, conn_id: u32) -> Vec<SessionEvent> {
        self.conn(conn_id)
            .map(|c| c.events.clone())
            .unwrap_or_default()
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut next = None;
        for conn in self.conns.values() {
            next = weft_core::time::earliest(next, conn.session.poll_timeout());
            if let Some((s, e)) = conn.plan.read_pause {
                for t in [s, e] {
                    if t > now {
                        next = weft_core::time::earliest(next, Some(t));
                    }
                }
            }
        }
        next
    }
}

/// A scheduled action on the simulation at a virtual time.
pub type Action = Box<dyn FnMut(&mut Sim)>;

pub struct Sim {
    pub seed: u64,
    pub now: Instant,
    pub a: Host,
    pub b: Host,
    pub ab: Link,
    pub ba: Link,
    actions: Vec<(Instant, Action)>,
    scratch: Vec<u8>,
}

pub const A_ADDR: [u8; 4] = [127, 0, 0, 1];
pub const B_ADDR: [u8; 4] = [127, 0, 0, 2];
pub const CONN_ID: u32 = 0x5eed_0001;

impl Sim {
    pub fn new(
        seed: u64,
        cfg_a: SessionConfig,
        cfg_b: SessionConfig,
        ab: LinkParams,
        ba: LinkParams,
    ) -> Self {
        let a_ep = Endpoint::new(NodeId(u32::from_be_bytes(A_ADDR)), 40000);
        let b_ep = Endpoint::new(NodeId(u32::from_be_bytes(B_ADDR)), 5001);
        let mut b = Host::new(b_ep, cfg_b);
        b.listening = true;
        Sim {
            seed,
            now: Instant::ZERO,
            a: Host::new(a_ep, cfg_a),
            b,
            ab: Link::new(ab, seed ^ 0xab),
            ba: Link::new(ba, seed ^ 0xba),
            actions: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// A opens a session to B with `plan`.
    pub fn connect(&mut self, conn_id: u32, plan: AppPlan) {
        let s = Session::connect(
            self.a.cfg.clone(),
            self.a.endpoint,
            self.b.endpoint,
            conn_id,
            self.now,
        );
        self.a.conns.insert(conn_id, Conn::new(s, plan, 0));
    }

    pub fn at(&mut self, t: Instant, action: impl FnMut(&mut Sim) + 'static) {
        self.actions.push((t, Box::new(action)));
    }

    fn transmit(&mut self) -> Result<(), String> {
        for (host, link) in [(&mut self.a, &mut self.ab), (&mut self.b, &mut self.ba)] {
            for rst in host.outbox.drain(..) {
                link.send(self.now, rst);
            }
            for conn in host.conns.values_mut() {
                let mut n = 0;
                while let Some(seg) = conn.session.poll_transmit(self.now) {
                    let mss = conn.session.info().mss;
                    if seg.len() > mss {
                        return Err(format!("segment of {} bytes exceeds mss {mss}", seg.len()));
                    }
                    link.send(self.now, seg);
                    n += 1;
                    if n > 100_000 {
                        return Err("poll_transmit never returns None".into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Advances until `done` holds (checked between steps) or `limit`; Err on a stall,
    /// livelock or time limit, naming the seed.
    pub fn run_until(
        &mut self,
        limit: Instant,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Result<(), String> {
        let mut same_time_steps = 0;
        loop {
            let mut i = 0;
            while i < self.actions.len() {
                if self.actions[i].0 <= self.now {
                    let (_, mut action) = self.actions.remove(i);
                    action(self);
                } else {
                    i += 1;
                }
            }
            let (seed, now) = (self.seed, self.now);
            self.a.step(now, seed, &mut self.scratch);
            self.b.step(now, seed, &mut self.scratch);
            self.transmit()?;
            self.a.step(now, seed, &mut self.scratch);
            self.b.step(now, seed, &mut self.scratch);
            if done(self) {
                return Ok(());
            }
            let mut next = [
                self.ab.next_due(),
                self.ba.next_due(),
                self.a.next_deadline(self.now),
                self.b.next_deadline(self.now),
            ]
            .into_iter()
            .fold(None, weft_core::time::earliest);
            for (t, _) in &self.actions {
                next = weft_core::time::earliest(next, Some(*t));
            }
            let Some(next) = next else {
                return Err(format!(
                    "seed {:#x}: stalled at {:?} with nothing scheduled",
                    self.seed, self.now
                ));
            };
            if next <= self.now {
                same_time_steps += 1;
                if same_time_steps > 10_000 {
                    return Err(format!("seed {:#x}: livelock at {:?}", self.seed, self.now));
                }
            } else {
                same_time_steps = 0;
            }
            if next > limit {
                return Err(format!(
                    "seed {:#x}: time limit {:?} reached",
                    self.seed, limit
                ));
            }
            self.now = self.now.max(next);
            let now = self.now;
            while let Some((p, ce)) = self.ab.pop_due(now) {
                let from = self.a.endpoint;
                self.b.receive(now, from, &p, ce);
            }
            while let Some((p, ce)) = self.ba.pop_due(now) {
                let from = self.b.endpoint;
                self.a.receive(now, from, &p, ce);
            }
            for host in [&mut self.a, &mut self.b] {
                for conn in host.conns.values_mut() {
                    if conn.session.poll_timeout().is_some_and(|t| t <= now) {
                        conn.session.handle_timeout(now);
                    }
                }
            }
        }
    }

    /// Advances to exactly `t`, handling everything due until then.
    pub fn run_to(&mut self, t: Instant) -> Result<(), String> {
        self.at(t, |_| {});
        self.run_until(t, |s| s.now >= t)
    }

    /// Both ends of `conn_id` reached `Closed` and were freed.
    pub fn both_closed(&self, conn_id: u32) -> bool {
        let a_done = self.a.finished.iter().any(|(id, _)| *id == conn_id);
        let b_done = self.b.finished.iter().any(|(id, _)| *id == conn_id);
        a_done && b_done
    }
}
