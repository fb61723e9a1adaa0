//! Many `Services` over an ideal flood (every record reaches every live node of its component
//! at once): the assignment's own properties, apart from flooding delays (the daemon's
//! simulation test, `daemon/tests/sim_services.rs`, adds those).

use super::*;
use proptest::prelude::*;

const PORT: u16 = 80;

fn t(ms: u64) -> Instant {
    Instant::from_micros(1_000_000 + ms * 1000)
}

struct Cluster {
    nodes: Vec<Option<Services>>,
    /// Component label of each node (live ones only matter).
    component: Vec<u32>,
    listening: Vec<bool>,
    runs: Vec<u64>,
    services: Vec<ServiceConfig>,
    now: Instant,
}

fn id(i: usize) -> NodeId {
    NodeId(0x0a00_0001 + i as u32)
}

fn addr(k: usize) -> NodeId {
    NodeId(0x0a09_0001 + k as u32)
}

impl Cluster {
    fn new(n: usize, services: Vec<ServiceConfig>) -> Self {
        let mut c = Cluster {
            nodes: (0..n).map(|_| None).collect(),
            component: vec![0; n],
            listening: vec![true; n],
            runs: vec![0; n],
            services,
            now: t(0),
        };
        for i in 0..n {
            c.boot(i);
        }
        c.settle();
        c.advance(1000);
        c
    }

    fn boot(&mut self, i: usize) {
        self.runs[i] += 1;
        let mut s = Services::new(
            ServicesConfig {
                local: id(i),
                epoch: self.runs[i] << 32,
                services: self.services.clone(),
                stable_period: Duration::from_secs(30),
                claim_hold: DEFAULT_CLAIM_HOLD,
            },
            self.now,
        );
        if self.listening[i] {
            s.set_listening(self.now, [PORT]);
        }
        self.nodes[i] = Some(s);
    }

    fn members(&self, comp: u32) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some() && self.component[i] == comp)
            .collect()
    }

    /// Tells every node its component and floods every record within it until quiet.
    fn settle(&mut self) {
        for _ in 0..20 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let Some(comp) = self.nodes[i].as_ref().map(|_| self.component[i]) else {
                    continue;
                };
                let live: Vec<NodeId> = self.members(comp).into_iter().map(id).collect();
                let now = self.now;
                let s = self.nodes[i].as_mut().unwrap();
                s.set_live(now, live);
            }
            for i in 0..self.nodes.len() {
                let Some(s) = self.nodes[i].as_ref() else {
                    continue;
                };
                let records: Vec<Vec<u8>> = s.records().map(|r| r.to_bytes()).collect();
                for j in self.members(self.component[i]) {
                    if j == i {
                        continue;
                    }
                    let now = self.now;
                    let peer = self.nodes[j].as_mut().unwrap();
                    for bytes in &records {
                        if matches!(
                            peer.on_record(now, bytes).unwrap(),
                            RecordOutcome::Flood(_) | RecordOutcome::FloodAll(_)
                        ) {
                            moved = true;
                        }
                    }
                }
            }
            for s in self.nodes.iter_mut().flatten() {
                while s.poll_change().is_some() {}
                if s.take_own_record().is_some() {
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("records did not settle");
    }

    /// Moves time on by `ms`, running every node's deadlines on the way.
    fn advance(&mut self, ms: u64) {
        self.settle();
        let until = self.now + Duration::from_millis(ms);
        for _ in 0..1000 {
            let next = self
                .nodes
                .iter()
                .flatten()
                .filter_map(|s| s.next_deadline())
                .min();
            let at = match next {
                Some(at) if at <= until => at.max(self.now),
                _ => until,
            };
            self.now = at;
            let now = self.now;
            for s in self.nodes.iter_mut().flatten() {
                s.handle_timeout(now);
            }
            self.settle();
            if at == until {
                return;
            }
        }
        panic!("deadlines did not settle");
    }

    /// Exactly one owner per address per component, agreed by all, claimed by it alone, and
    /// a candidate there; none only when no member serves it.
    fn check(&self) -> Result<(), String> {
        self.check_with(true)
    }

    /// `held`: the claim hold has passed since the last change, so the owner also claims.
    fn check_with(&self, held: bool) -> Result<(), String> {
        let comps: BTreeSet<u32> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .map(|i| self.component[i])
            .collect();
        for comp in comps {
            let members = self.members(comp);
            for k in 0..self.services.len() {
                let a = addr(k);
                let serving: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&i| self.listening[i] && self.may_serve(k, i))
                    .collect();
                let owners: BTreeSet<Option<NodeId>> = members
                    .iter()
                    .map(|&i| self.nodes[i].as_ref().unwrap().owner(a))
                    .collect();
                let claimants: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&i| self.nodes[i].as_ref().unwrap().claims(a))
                    .collect();
                if serving.is_empty() {
                    if owners != BTreeSet::from([None]) || !claimants.is_empty() {
                        return Err(format!("{a}: no candidate but owners {owners:?}"));
                    }
                    continue;
                }
                let [Some(owner)] = owners.iter().copied().collect::<Vec<_>>()[..] else {
                    return Err(format!("{a} in component {comp}: owners {owners:?}"));
                };
                if !serving.iter().any(|&i| id(i) == owner) {
                    return Err(format!("{a}: owner {owner} does not serve it"));
                }
                let claimed: Vec<NodeId> = claimants.iter().map(|&i| id(i)).collect();
                // A handover may have happened just now: the new owner's hold runs from it.
                let oi = (0..self.nodes.len()).find(|&i| id(i) == owner).unwrap();
                let fresh = self.nodes[oi]
                    .as_ref()
                    .unwrap()
                    .status(self.now)
                    .iter()
                    .any(|st| {
                        st.address == a && st.since_ms < DEFAULT_CLAIM_HOLD.as_millis() as u64
                    });
                let must_claim = held && !fresh;
                if (must_claim && claimed != vec![owner]) || claimed.iter().any(|&n| n != owner) {
                    return Err(format!("{a}: claimants {claimants:?}, owner {owner}"));
                }
            }
        }
        Ok(())
    }

    fn may_serve(&self, k: usize, i: usize) -> bool {
        let s = &self.services[k];
        s.nodes.is_empty() || s.nodes.contains(&id(i))
    }

    fn owner_in(&self, comp: u32, a: NodeId) -> Option<NodeId> {
        let i = *self.members(comp).first()?;
        self.nodes[i].as_ref().unwrap().owner(a)
    }
}

fn services(n: usize, candidates: &[&[usize]]) -> Vec<ServiceConfig> {
    let _ = n;
    candidates
        .iter()
        .enumerate()
        .map(|(k, c)| ServiceConfig {
            address: addr(k),
            nodes: c.iter().map(|&i| id(i)).collect(),
            ports: vec![PORT],
        })
        .collect()
}

#[test]
fn owner_moves_only_when_it_dies_and_stays_when_it_returns() {
    let mut c = Cluster::new(4, services(4, &[&[0, 1, 2]]));
    c.check().unwrap();
    let a = addr(0);
    let first = c.owner_in(0, a).unwrap();
    let fi = (0..4).find(|&i| id(i) == first).unwrap();
    c.nodes[fi] = None;
    c.advance(1000);
    c.check().unwrap();
    let second = c.owner_in(0, a).unwrap();
    assert_ne!(second, first);
    // The preferred node comes back: the address stays where it is (sticky) ...
    c.boot(fi);
    c.advance(1000);
    c.check().unwrap();
    assert_eq!(c.owner_in(0, a), Some(second));
    // ... until a stable period passes, then moves once and stays.
    c.advance(31_000);
    c.check().unwrap();
    assert_eq!(c.owner_in(0, a), Some(first));
    c.advance(60_000);
    assert_eq!(c.owner_in(0, a), Some(first));
}

#[test]
fn an_owner_that_stops_listening_gives_the_address_up() {
    let mut c = Cluster::new(3, services(3, &[&[]]));
    let a = addr(0);
    let first = c.owner_in(0, a).unwrap();
    let fi = (0..3).find(|&i| id(i) == first).unwrap();
    c.listening[fi] = false;
    let now = c.now;
    c.nodes[fi].as_mut().unwrap().set_listening(now, []);
    c.advance(1000);
    c.check().unwrap();
    assert_ne!(c.owner_in(0, a), Some(first));
    for i in 0..3 {
        c.listening[i] = false;
        let now = c.now;
        c.nodes[i].as_mut().unwrap().set_listening(now, []);
    }
    c.settle();
    c.check().unwrap();
    assert_eq!(c.owner_in(0, a), None);
}

#[test]
fn a_merge_keeps_one_owner_and_says_the_loser_was_superseded() {
    let mut c = Cluster::new(4, services(4, &[&[0, 1, 2, 3]]));
    let a = addr(0);
    c.component = vec![0, 0, 1, 1];
    c.advance(1000);
    c.check().unwrap();
    let (o0, o1) = (c.owner_in(0, a).unwrap(), c.owner_in(1, a).unwrap());
    assert_ne!(o0, o1);
    c.component = vec![0; 4];
    // Deliver by hand to see the change reasons.
    for i in 0..4 {
        let live: Vec<NodeId> = (0..4).map(id).collect();
        let now = c.now;
        c.nodes[i].as_mut().unwrap().set_live(now, live);
    }
    let mut reasons = Vec::new();
    for _ in 0..3 {
        for i in 0..4 {
            let recs: Vec<Vec<u8>> = c.nodes[i]
                .as_ref()
                .unwrap()
                .records()
                .map(|r| r.to_bytes())
                .collect();
            for j in 0..4 {
                if j != i {
                    let now = c.now;
                    for r in &recs {
                        c.nodes[j].as_mut().unwrap().on_record(now, r).unwrap();
                    }
                }
            }
        }
        for s in c.nodes.iter_mut().flatten() {
            while let Some(ch) = s.poll_change() {
                reasons.push(ch);
            }
        }
    }
    c.check().unwrap();
    let winner = c.owner_in(0, a).unwrap();
    let loser = if winner == o0 { o1 } else { o0 };
    assert!(reasons.iter().any(|ch| ch.old == Some(loser)
        && ch.new == Some(winner)
        && ch.reason == ChangeReason::Superseded
        && ch.resets_sessions()));
}

#[test]
fn own_older_record_is_answered_and_newer_is_outranked() {
    let cfg = ServicesConfig {
        local: id(0),
        epoch: 5 << 32,
        services: services(1, &[&[]]),
        stable_period: DEFAULT_STABLE_PERIOD,
        claim_hold: DEFAULT_CLAIM_HOLD,
    };
    let mut s = Services::new(cfg, t(0));
    s.set_listening(t(0), [PORT]);
    let mut old = s.own_record();
    old.version.epoch = 4 << 32;
    assert!(matches!(
        s.on_record(t(1), &old.to_bytes()),
        Ok(RecordOutcome::Reply(_))
    ));
    let mut newer = s.own_record();
    newer.version.epoch = 6 << 32;
    let Ok(RecordOutcome::FloodAll(ours)) = s.on_record(t(2), &newer.to_bytes()) else {
        panic!("not outranked");
    };
    assert!(ours.version > newer.version);
    assert!(s.on_record(t(3), &[1, 2, 3]).is_err());
    assert_eq!(s.malformed(), 1);
}

#[derive(Debug, Clone)]
enum Op {
    Crash(usize),
    Restart(usize),
    Listen(usize, bool),
    Partition(Vec<u32>),
    Heal,
    Wait(u64),
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..n).prop_map(Op::Crash),
        (0..n).prop_map(Op::Restart),
        (0..n, any::<bool>()).prop_map(|(i, l)| Op::Listen(i, l)),
        proptest::collection::vec(0..3u32, n).prop_map(Op::Partition),
        Just(Op::Heal),
        (1..40_000u64).prop_map(Op::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever happens, once records settle every component has exactly one owner per
    /// served address; and an owner that stays alive, serving and in its component keeps the
    /// address across events that do not touch it, short of a stable-period handover.
    #[test]
    fn exactly_one_owner_per_component(ops in proptest::collection::vec(op(6), 1..40)) {
        let cfg = services(6, &[&[0, 1, 2], &[2, 3, 4, 5], &[]]);
        let mut c = Cluster::new(6, cfg);
        for o in ops {
            match o {
                Op::Crash(i) => c.nodes[i] = None,
                Op::Restart(i) => if c.nodes[i].is_none() { c.boot(i) },
                Op::Listen(i, l) => {
                    c.listening[i] = l;
                    let now = c.now;
                    if let Some(s) = c.nodes[i].as_mut() {
                        if l { s.set_listening(now, [PORT]) } else { s.set_listening(now, []) }
                    }
                }
                Op::Partition(p) => c.component = p,
                Op::Heal => c.component = vec![0; 6],
                Op::Wait(ms) => c.advance(ms),
            }
            let now = c.now;
            for s in c.nodes.iter_mut().flatten() {
                s.handle_timeout(now);
            }
            c.settle();
            prop_assert!(c.check_with(false).is_ok(), "{:?}", c.check_with(false));
            c.advance(DEFAULT_CLAIM_HOLD.as_millis() as u64 + 1);
            prop_assert!(c.check().is_ok(), "{:?}", c.check());
        }
    }
}
