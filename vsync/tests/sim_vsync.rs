//! Seeded simulation of reliable groups with views (issue 21): processes crash, new ones join
//! (also while a view change runs), the network partitions into 2 or 3 components and merges,
//! links lose, delay and reorder messages, and one process may read slowly. An independent
//! checker reads every process's history (views installed, messages delivered) and checks:
//! - virtual synchrony: members that install the same two consecutive views delivered the
//!   same set of messages in the first;
//! - agreed order (total groups): any two members deliver their common messages in one order;
//! - FIFO per source, no message delivered twice, each delivered in the view it was sent in;
//! - self-delivery: a sender delivers its message in its view before installing the next;
//! - views: each member's ids increase; the transitional set is exactly the members that came
//!   from the same view; after faults stop, every live process is in one view of all of them
//!   and has delivered everything sent in it;
//! - memory: what a member holds stays within window × members.
//!
//! Prints the seeds and the counts checked.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::Duration;
use weft_core::Instant;
use weft_vsync::{Config, Event, Member, MemberId, Ordering, ViewId};

const SEEDS: u64 = 160;
const FAULTS_UNTIL: u64 = 8_000; // ms
const SENDS_UNTIL: u64 = 10_000;
const END: u64 = 14_000;
const MAX_ALIVE: usize = 7;

#[derive(Debug)]
enum Ev {
    Arrive { to: MemberId, bytes: Vec<u8> },
    Wake { p: usize },
    Oracle { p: usize },
    AppSend { p: usize },
    Read { p: usize },
    Fault,
}

enum Rec {
    View {
        id: ViewId,
        members: Vec<MemberId>,
        transitional: Vec<MemberId>,
    },
    Deliver {
        view: ViewId,
        sender: MemberId,
        counter: u32,
        msg: u64,
    },
}

struct Proc {
    id: MemberId,
    member: Option<Member>,
    comp: usize,
    wake_at: Option<u64>,
    slow: bool,
    history: Vec<Rec>,
    /// Messages it sent: (msg id, view, counter).
    sent: Vec<(u64, ViewId, u32)>,
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    processes: u64,
    crashes: u64,
    joins: u64,
    joins_in_flush: u64,
    partitions: u64,
    merges: u64,
    sent: u64,
    refused: u64,
    delivered: u64,
    views: u64,
    vs_pairs: u64,
    order_pairs: u64,
    fifo_streams: u64,
    self_checked: u64,
    retransmitted: u64,
    max_held: usize,
}

struct Sim {
    rng: ChaCha8Rng,
    now: u64, // microseconds
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    evs: HashMap<usize, Ev>,
    next_ev: usize,
    procs: Vec<Proc>,
    by_id: HashMap<MemberId, usize>,
    loss: f64,
    next_msg: u64,
    next_member: u64,
    cfg: Config,
    t: Totals,
}

impl Sim {
    fn at(&mut self, when_us: u64, ev: Ev) {
        self.seq += 1;
        let k = self.next_ev;
        self.next_ev += 1;
        self.evs.insert(k, ev);
        self.queue.push(Reverse((when_us, self.seq, k)));
    }

    fn instant(&self) -> Instant {
        Instant::from_micros(self.now)
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|&i| self.procs[i].member.is_some())
            .collect()
    }

    fn spawn(&mut self, comp: usize, slow: bool) -> usize {
        self.next_member += 1;
        let id = MemberId(self.next_member);
        let member = Member::new(id, self.instant(), self.cfg.clone());
        let p = self.procs.len();
        self.procs.push(Proc {
            id,
            member: Some(member),
            comp,
            wake_at: None,
            slow,
            history: Vec::new(),
            sent: Vec::new(),
        });
        self.by_id.insert(id, p);
        self.t.processes += 1;
        let d = self.rng.gen_range(1_000..30_000);
        self.at(self.now + d, Ev::AppSend { p });
        self.at(self.now + 1, Ev::Oracle { p });
        self.after(p);
        p
    }

    /// Every live process learns the topology after its own detection delay.
    fn topology_changed(&mut self) {
        for p in self.alive() {
            let d = self.rng.gen_range(20_000..250_000);
            self.at(self.now + d, Ev::Oracle { p });
        }
    }

    /// Carries what process `p` emitted, takes its events, arms its timer.
    fn after(&mut self, p: usize) {
        let now = self.now;
        let mut out = Vec::new();
        let Some(m) = self.procs[p].member.as_mut() else {
            return;
        };
        while let Some(t) = m.poll_transmit() {
            out.push(t);
        }
        let held = m.held();
        let next = m.poll_timeout().as_micros().max(now + 1);
        let slow = self.procs[p].slow && now < SENDS_UNTIL * 1000;
        if !slow {
            self.read_all(p);
        }
        self.t.max_held = self.t.max_held.max(held);
        let comp = self.procs[p].comp;
        for (to, bytes) in out {
            let Some(&q) = self.by_id.get(&to) else {
                continue;
            };
            if self.procs[q].member.is_none() || self.procs[q].comp != comp {
                continue;
            }
            if self.rng.gen_bool(self.loss) {
                continue;
            }
            let d = self.rng.gen_range(500..8_000);
            self.at(now + d, Ev::Arrive { to, bytes });
        }
        if self.procs[p].wake_at.is_none_or(|w| next < w || w <= now) {
            self.procs[p].wake_at = Some(next);
            self.at(next, Ev::Wake { p });
        }
    }

    fn read_all(&mut self, p: usize) {
        while self.read_one(p) {}
    }

    fn read_one(&mut self, p: usize) -> bool {
        let pr = &mut self.procs[p];
        let Some(m) = pr.member.as_mut() else {
            return false;
        };
        let Some(ev) = m.poll_event() else {
            return false;
        };
        pr.history.push(match ev {
            Event::View { view, transitional } => Rec::View {
                id: view.id,
                members: view.members,
                transitional,
            },
            Event::Deliver {
                view,
                sender,
                counter,
                payload,
            } => Rec::Deliver {
                view,
                sender,
                counter,
                msg: u64::from_be_bytes(payload[..8].try_into().unwrap()),
            },
        });
        true
    }

    fn fault(&mut self) {
        let alive = self.alive();
        let x: f64 = self.rng.gen();
        let comps: BTreeSet<usize> = alive.iter().map(|&p| self.procs[p].comp).collect();
        if x < 0.2 && alive.len() > 1 {
            let p = alive[self.rng.gen_range(0..alive.len())];
            self.procs[p].member = None;
            self.t.crashes += 1;
            self.topology_changed();
        } else if x < 0.45 && alive.len() < MAX_ALIVE {
            let comps: Vec<usize> = comps.into_iter().collect();
            let comp = comps[self.rng.gen_range(0..comps.len())];
            if alive
                .iter()
                .any(|&p| self.procs[p].member.as_ref().is_some_and(|m| m.flushing()))
            {
                self.t.joins_in_flush += 1;
            }
            self.spawn(comp, false);
            self.t.joins += 1;
            self.topology_changed();
        } else if x < 0.7 && alive.len() > 1 {
            let k = self.rng.gen_range(2..=3);
            for &p in &alive {
                self.procs[p].comp = self.rng.gen_range(0..k);
            }
            self.t.partitions += 1;
            self.topology_changed();
        } else if x < 0.9 {
            if comps.len() > 1 {
                self.t.merges += 1;
            }
            for &p in &alive {
                self.procs[p].comp = 0;
            }
            self.topology_changed();
        } else {
            self.loss = self.rng.gen_range(0.0..0.1);
        }
    }

    fn run(&mut self) {
        while let Some(Reverse((when, _, k))) = self.queue.pop() {
            if when > END * 1000 {
                break;
            }
            self.now = when;
            let now = self.instant();
            let Some(ev) = self.evs.remove(&k) else {
                continue;
            };
            match ev {
                Ev::Arrive { to, bytes } => {
                    let p = self.by_id[&to];
                    if let Some(m) = self.procs[p].member.as_mut() {
                        m.handle(now, &bytes);
                        self.after(p);
                    }
                }
                Ev::Wake { p } => {
                    if self.procs[p].wake_at != Some(when) {
                        continue;
                    }
                    self.procs[p].wake_at = None;
                    if let Some(m) = self.procs[p].member.as_mut() {
                        m.handle_timeout(now);
                        self.after(p);
                    }
                }
                Ev::Oracle { p } => {
                    let comp = self.procs[p].comp;
                    let cands: Vec<MemberId> = self
                        .alive()
                        .into_iter()
                        .filter(|&q| self.procs[q].comp == comp)
                        .map(|q| self.procs[q].id)
                        .collect();
                    if let Some(m) = self.procs[p].member.as_mut() {
                        m.set_candidates(now, cands);
                        self.after(p);
                    }
                }
                Ev::AppSend { p } => {
                    if self.procs[p].member.is_none() {
                        continue;
                    }
                    if when < SENDS_UNTIL * 1000 {
                        let d = self.rng.gen_range(2_000..60_000);
                        self.at(when + d, Ev::AppSend { p });
                    }
                    self.next_msg += 1;
                    let msg = self.next_msg;
                    let mut payload = msg.to_be_bytes().to_vec();
                    payload.resize(self.rng.gen_range(8..64), 0xab);
                    let m = self.procs[p].member.as_mut().unwrap();
                    let view = m.view().id;
                    match m.send(now, &payload) {
                        Ok(counter) => {
                            self.procs[p].sent.push((msg, view, counter));
                            self.t.sent += 1;
                        }
                        Err(_) => self.t.refused += 1,
                    }
                    self.after(p);
                }
                Ev::Read { p } => {
                    self.read_one(p);
                    if self.procs[p].member.is_some() {
                        self.at(when + 40_000, Ev::Read { p });
                        self.after(p);
                    }
                }
                Ev::Fault => {
                    self.fault();
                    if when < FAULTS_UNTIL * 1000 {
                        let d = self.rng.gen_range(100_000..700_000);
                        self.at(when + d, Ev::Fault);
                    } else {
                        // Faults stop: heal, no loss, let the views settle.
                        self.loss = 0.0;
                        let alive = self.alive();
                        for p in alive {
                            self.procs[p].comp = 0;
                        }
                        self.topology_changed();
                    }
                }
            }
        }
        for p in 0..self.procs.len() {
            self.read_all(p);
        }
    }
}

fn run_seed(seed: u64, t: &mut Totals) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ordering = if seed.is_multiple_of(2) {
        Ordering::Total
    } else {
        Ordering::Fifo
    };
    let cfg = Config {
        ordering,
        window: 16,
        status_interval: Duration::from_millis(rng.gen_range(20..60)),
        ack_delay: Duration::from_millis(2),
        retransmit: Duration::from_millis(40),
        propose_timeout: Duration::from_millis(300),
    };
    let mut sim = Sim {
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed),
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        evs: HashMap::new(),
        next_ev: 0,
        procs: Vec::new(),
        by_id: HashMap::new(),
        loss: rng.gen_range(0.0..0.05),
        next_msg: 0,
        next_member: seed << 16,
        cfg: cfg.clone(),
        t: Totals::default(),
    };
    let n = rng.gen_range(3..=5);
    let slow = seed.is_multiple_of(3);
    for i in 0..n {
        sim.spawn(0, slow && i == n - 1);
    }
    if slow {
        let p = n - 1;
        sim.at(1, Ev::Read { p });
    }
    let first = rng.gen_range(300_000..900_000);
    sim.at(first, Ev::Fault);
    sim.run();
    check(seed, &sim, &cfg, t);
    let st = sim.t;
    t.seeds += 1;
    t.processes += st.processes;
    t.crashes += st.crashes;
    t.joins += st.joins;
    t.joins_in_flush += st.joins_in_flush;
    t.partitions += st.partitions;
    t.merges += st.merges;
    t.sent += st.sent;
    t.refused += st.refused;
    t.max_held = t.max_held.max(st.max_held);
    for p in &sim.procs {
        if let Some(m) = &p.member {
            t.retransmitted += m.counters().retransmitted;
        }
    }
}

fn check(seed: u64, sim: &Sim, cfg: &Config, t: &mut Totals) {
    // Who sent what.
    let mut sent: HashMap<u64, (MemberId, ViewId, u32)> = HashMap::new();
    for p in &sim.procs {
        for &(msg, view, counter) in &p.sent {
            sent.insert(msg, (p.id, view, counter));
        }
    }
    // Per process: views in order, and per view the delivered messages in order.
    struct Hist {
        views: Vec<ViewId>,
        members: BTreeMap<ViewId, Vec<MemberId>>,
        trans: BTreeMap<ViewId, Vec<MemberId>>,
        dl: BTreeMap<ViewId, Vec<u64>>,
    }
    let mut hists = Vec::new();
    for p in &sim.procs {
        let mut h = Hist {
            views: Vec::new(),
            members: BTreeMap::new(),
            trans: BTreeMap::new(),
            dl: BTreeMap::new(),
        };
        let mut seen = HashSet::new();
        let mut fifo: HashMap<(ViewId, MemberId), u32> = HashMap::new();
        for r in &p.history {
            match r {
                Rec::View {
                    id,
                    members,
                    transitional,
                } => {
                    if let Some(last) = h.views.last() {
                        assert!(id > last, "seed {seed}: {:?} views not increasing", p.id);
                    }
                    assert!(members.contains(&p.id), "seed {seed}: not in own view");
                    h.views.push(*id);
                    h.members.insert(*id, members.clone());
                    h.trans.insert(*id, transitional.clone());
                    t.views += 1;
                }
                Rec::Deliver {
                    view,
                    sender,
                    counter,
                    msg,
                } => {
                    assert_eq!(
                        h.views.last(),
                        Some(view),
                        "seed {seed}: delivered outside its view"
                    );
                    assert!(
                        seen.insert(*msg),
                        "seed {seed}: {:?} delivered {msg} twice",
                        p.id
                    );
                    let Some(&(s, v, c)) = sent.get(msg) else {
                        panic!("seed {seed}: delivered {msg} that nobody sent");
                    };
                    assert_eq!(
                        (s, v, c),
                        (*sender, *view, *counter),
                        "seed {seed}: message {msg} delivered as another, or in another view"
                    );
                    let next = fifo.entry((*view, *sender)).or_insert(0);
                    assert_eq!(*counter, *next + 1, "seed {seed}: FIFO gap at {:?}", p.id);
                    *next = *counter;
                    h.dl.entry(*view).or_default().push(*msg);
                    t.delivered += 1;
                }
            }
        }
        t.fifo_streams += fifo.len() as u64;
        hists.push(h);
    }
    // Virtual synchrony: same two consecutive views, same delivered set in the first.
    let mut pairs: HashMap<(ViewId, ViewId), (usize, BTreeSet<u64>)> = HashMap::new();
    for (i, h) in hists.iter().enumerate() {
        for w in h.views.windows(2) {
            let set: BTreeSet<u64> = h.dl.get(&w[0]).into_iter().flatten().copied().collect();
            match pairs.get(&(w[0], w[1])) {
                Some((j, other)) => {
                    assert_eq!(
                        &set, other,
                        "seed {seed}: {:?} and {:?} went {:?} -> {:?} with different deliveries",
                        sim.procs[i].id, sim.procs[*j].id, w[0], w[1]
                    );
                    t.vs_pairs += 1;
                }
                None => {
                    pairs.insert((w[0], w[1]), (i, set));
                }
            }
            // The transitional set names exactly the new view's members that came from w[0].
            let trans = &h.trans[&w[1]];
            for (q, hq) in hists.iter().enumerate() {
                if let Some(k) = hq.views.iter().position(|v| *v == w[1]) {
                    let from_same = k > 0 && hq.views[k - 1] == w[0];
                    assert_eq!(
                        trans.contains(&sim.procs[q].id),
                        from_same,
                        "seed {seed}: transitional set of {:?} wrong about {:?}",
                        w[1],
                        sim.procs[q].id
                    );
                }
            }
        }
    }
    // Agreed order: common messages of a view in one order.
    if cfg.ordering == Ordering::Total {
        for i in 0..hists.len() {
            for j in i + 1..hists.len() {
                for (v, a) in &hists[i].dl {
                    let Some(b) = hists[j].dl.get(v) else {
                        continue;
                    };
                    let sa: HashSet<u64> = a.iter().copied().collect();
                    let sb: HashSet<u64> = b.iter().copied().collect();
                    let ca: Vec<u64> = a.iter().copied().filter(|m| sb.contains(m)).collect();
                    let cb: Vec<u64> = b.iter().copied().filter(|m| sa.contains(m)).collect();
                    assert_eq!(ca, cb, "seed {seed}: order differs in {v:?}");
                    t.order_pairs += 1;
                }
            }
        }
    }
    // Self-delivery: in its view, before the next one; at the end, in the final view.
    for (i, p) in sim.procs.iter().enumerate() {
        let h = &hists[i];
        let delivered: HashSet<u64> = h.dl.values().flatten().copied().collect();
        for &(msg, view, _) in &p.sent {
            let later = h.views.last().is_some_and(|last| *last > view);
            if later || p.member.is_some() {
                assert!(
                    delivered.contains(&msg),
                    "seed {seed}: {:?} never delivered its own {msg} of {view:?}",
                    p.id
                );
                t.self_checked += 1;
            }
        }
    }
    // After the faults: one view of every live process, everything sent in it delivered.
    let alive: Vec<usize> = (0..sim.procs.len())
        .filter(|&i| sim.procs[i].member.is_some())
        .collect();
    let ids: Vec<MemberId> = alive.iter().map(|&i| sim.procs[i].id).collect();
    let last = *hists[alive[0]].views.last().unwrap();
    if std::env::var("VSYNC_DEBUG").is_ok() {
        for &i in &alive {
            let m = sim.procs[i].member.as_ref().unwrap();
            eprintln!(
                "{:?} comp {} views {:?} {:?}",
                m.id(),
                sim.procs[i].comp,
                hists[i].views,
                m.debug_state()
            );
        }
    }
    for &i in &alive {
        let h = &hists[i];
        assert_eq!(
            h.views.last(),
            Some(&last),
            "seed {seed}: live processes did not merge into one view"
        );
        assert_eq!(
            h.members[&last], ids,
            "seed {seed}: final view is not the live set"
        );
        let mut want: Vec<u64> = sent
            .iter()
            .filter(|(_, (_, v, _))| *v == last)
            .map(|(m, _)| *m)
            .collect();
        want.sort_unstable();
        let mut got = h.dl.get(&last).cloned().unwrap_or_default();
        got.sort_unstable();
        assert_eq!(got, want, "seed {seed}: final view not fully delivered");
    }
    // Memory: a sender holds at most its window plus what arrived ahead, per member.
    let bound = (cfg.window as usize * 3) * MAX_ALIVE;
    assert!(
        sim.t.max_held <= bound,
        "seed {seed}: held {} > {bound}",
        sim.t.max_held
    );
}

#[test]
fn virtual_synchrony_over_many_seeds() {
    let mut t = Totals::default();
    let mut total_seeds = 0;
    let only: Option<u64> = std::env::var("VSYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    for seed in 0..SEEDS {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        run_seed(seed, &mut t);
        total_seeds += 1;
    }
    println!(
        "sim_vsync: seeds 0..{SEEDS} ({total_seeds}; even = total order, odd = FIFO; every third \
         with a reader at one message per 40 ms): {} processes, {} crashes, {} joins ({} while \
         a view change ran), {} partitions, {} merges",
        t.processes, t.crashes, t.joins, t.joins_in_flush, t.partitions, t.merges
    );
    println!(
        "sim_vsync: {} messages sent ({} refused by flow control or a flush), {} deliveries, \
         {} views installed, {} retransmissions",
        t.sent, t.refused, t.delivered, t.views, t.retransmitted
    );
    println!(
        "sim_vsync: checked {} same-two-views pairs (virtual synchrony), {} per-view order \
         pairs (total), {} FIFO streams, {} self-deliveries; most messages held by one member {}",
        t.vs_pairs, t.order_pairs, t.fifo_streams, t.self_checked, t.max_held
    );
    assert!(t.vs_pairs > 1000 && t.merges > 100 && t.joins_in_flush > 0);
}
