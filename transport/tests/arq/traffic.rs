//! Test applications: planned packets per node, retried on back-pressure, and the
//! exactly-once bookkeeping.

use crate::sim::{make_packet, parse_packet, Sim};
use std::collections::{BTreeMap, VecDeque};
use weft_core::Instant;
use weft_transport::arq::{FlowId, Refusal};

#[derive(Debug, Clone)]
pub struct Planned {
    pub at: Instant,
    pub from: usize,
    pub flow: FlowId,
    pub len: usize,
}

/// Enqueues planned packets at their time; refused ones wait and are retried every
/// `retry` (the daemon would wait for `poll_writable`; retrying also covers that path).
pub struct Traffic {
    plan: VecDeque<Planned>,
    backlog: [VecDeque<(FlowId, Vec<u8>)>; 2],
    next_id: u64,
    retry: std::time::Duration,
    /// Ids enqueued (accepted) on each node, in order.
    pub accepted: [Vec<u64>; 2],
    pub refusals: u64,
}

impl Traffic {
    pub fn new(mut plan: Vec<Planned>) -> Traffic {
        plan.sort_by_key(|p| p.at);
        Traffic {
            plan: plan.into(),
            backlog: [VecDeque::new(), VecDeque::new()],
            next_id: 0,
            retry: std::time::Duration::from_millis(1),
            accepted: [Vec::new(), Vec::new()],
            refusals: 0,
        }
    }

    pub fn total_planned(&self) -> usize {
        self.plan.len()
            + self.backlog.iter().map(|b| b.len()).sum::<usize>()
            + self.accepted.iter().map(|a| a.len()).sum::<usize>()
    }

    pub fn is_done(&self) -> bool {
        self.plan.is_empty() && self.backlog.iter().all(|b| b.is_empty())
    }

    /// One application step; returns when it wants to run next.
    pub fn step(&mut self, sim: &mut Sim) -> Option<Instant> {
        let now = sim.now;
        while self.plan.front().is_some_and(|p| p.at <= now) {
            let Some(p) = self.plan.pop_front() else {
                break;
            };
            self.next_id += 1;
            self.backlog[p.from].push_back((p.flow, make_packet(self.next_id, p.flow, now, p.len)));
        }
        for from in 0..2 {
            let mut waiting = VecDeque::new();
            while let Some((flow, packet)) = self.backlog[from].pop_front() {
                let id = parse_packet(&packet).id;
                match sim.nodes[from].arq.enqueue(flow, packet) {
                    Ok(()) => self.accepted[from].push(id),
                    Err(refused) => {
                        assert_eq!(
                            refused.reason,
                            Refusal::QueueFull,
                            "seed {}: test packets fit the mss",
                            sim.seed
                        );
                        self.refusals += 1;
                        waiting.push_back((flow, refused.packet));
                    }
                }
            }
            self.backlog[from] = waiting;
        }
        let retry = (!self.backlog.iter().all(|b| b.is_empty())).then_some(now + self.retry);
        [self.plan.front().map(|p| p.at), retry]
            .into_iter()
            .flatten()
            .min()
    }
}

/// How many times each id arrived at `node`.
pub fn arrivals(sim: &Sim, node: usize) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for (_, packet) in &sim.nodes[node].received {
        *counts.entry(parse_packet(packet).id).or_insert(0) += 1;
    }
    counts
}

/// Asserts that every id accepted on each node arrived exactly once at the other, and
/// nothing else arrived.
pub fn assert_exactly_once(sim: &Sim, traffic: &Traffic, context: &str) {
    for from in 0..2 {
        let to = 1 - from;
        let got = arrivals(sim, to);
        let duplicated: Vec<_> = got
            .iter()
            .filter(|(_, &n)| n > 1)
            .map(|(id, _)| *id)
            .collect();
        assert!(
            duplicated.is_empty(),
            "seed {} ({context}): node {to} got ids {duplicated:?} more than once",
            sim.seed
        );
        let missing: Vec<_> = traffic.accepted[from]
            .iter()
            .filter(|id| !got.contains_key(id))
            .collect();
        assert!(
            missing.is_empty(),
            "seed {} ({context}): {} of {} packets {from}→{to} never arrived, first {:?}; stats {:?}",
            sim.seed,
            missing.len(),
            traffic.accepted[from].len(),
            &missing[..missing.len().min(5)],
            sim.nodes[from].arq.stats()
        );
        assert_eq!(
            got.len(),
            traffic.accepted[from].len(),
            "seed {} ({context}): unexpected packets at node {to}",
            sim.seed
        );
    }
}

/// Runs `traffic` until everything planned arrived or `deadline` passes.
pub fn run_to_completion(sim: &mut Sim, traffic: &mut Traffic, deadline: Instant) {
    let total = traffic.total_planned();
    let step = std::time::Duration::from_millis(50);
    while sim.now < deadline {
        let until = (sim.now + step).min(deadline);
        sim.run(until, |sim| traffic.step(sim));
        let arrived = sim.nodes[0].received.len() + sim.nodes[1].received.len();
        if traffic.is_done() && arrived >= total {
            return;
        }
    }
}
