//! Routing in simulation: on random 50-node topologies, after any single link or node failure
//! (and recovery) every surviving node's routes converge to the true shortest paths.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use weft_core::NodeId;
use weft_daemon::sim::{Sim, SimLink};

/// Per-hop slack for µs rounding in RTT measurement.
const TOLERANCE_PER_HOP_US: u64 = 20;

fn random_topology(seed: u64, n: usize, extra: usize) -> Sim {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut sim = Sim::new(seed);
    for _ in 0..n {
        sim.add_node(|_| {});
    }
    let mut edges = BTreeSet::new();
    for i in 1..n {
        let j = rng.gen_range(0..i);
        edges.insert((j, i));
    }
    while edges.len() < n - 1 + extra {
        let a = rng.gen_range(0..n);
        let b = rng.gen_range(0..n);
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    }
    for (a, b) in edges {
        let delay = Duration::from_millis(rng.gen_range(1..=20));
        sim.connect(a, b, SimLink::with_delay(delay));
    }
    sim.start();
    sim
}

/// Every live node has a route to exactly the nodes it can reach, each route's cost is the
/// true distance, and following next hops node by node reaches the destination along a path
/// whose true cost is the shortest.
fn check(sim: &Sim) -> Result<(), String> {
    let ids: BTreeMap<NodeId, usize> = (0..sim.len()).map(|i| (Sim::id_of(i), i)).collect();
    let graph = sim.live_graph();
    let tables: Vec<Option<BTreeMap<usize, (usize, u64)>>> = (0..sim.len())
        .map(|i| {
            sim.node(i).map(|n| {
                n.routes()
                    .filter_map(|(d, h, c)| Some((*ids.get(&d)?, (*ids.get(&h)?, c))))
                    .collect()
            })
        })
        .collect();
    for i in (0..sim.len()).filter(|&i| sim.is_alive(i)) {
        let routes = tables[i].as_ref().ok_or("dead")?;
        let (t, _) = graph.shortest_from(i);
        for j in (0..sim.len()).filter(|&j| j != i && sim.is_alive(j)) {
            match (t.get(j).filter(|&&d| d != u64::MAX), routes.get(&j)) {
                (None, None) => {}
                (None, Some(_)) => return Err(format!("node {i} routes to unreachable {j}")),
                (Some(_), None) => return Err(format!("node {i} has no route to reachable {j}")),
                (Some(&want), Some(&(_, cost))) => {
                    let slack = TOLERANCE_PER_HOP_US * sim.len() as u64;
                    if cost.abs_diff(want) > slack {
                        return Err(format!("node {i} → {j}: cost {cost}, true {want}"));
                    }
                    // Walk the next hops.
                    let mut at = i;
                    let mut total = 0;
                    let mut hops = 0u64;
                    while at != j {
                        let table = tables[at].as_ref().ok_or("walk through a dead node")?;
                        let &(next, _) = table
                            .get(&j)
                            .ok_or_else(|| format!("walk {i}→{j}: node {at} has no route"))?;
                        let link = sim.link(at, next).filter(|l| l.up).ok_or_else(|| {
                            format!("walk {i}→{j}: {at}→{next} is not a live link")
                        })?;
                        total += link.latency_cost();
                        at = next;
                        hops += 1;
                        if hops > sim.len() as u64 {
                            return Err(format!("routing loop from {i} to {j}"));
                        }
                    }
                    if total.abs_diff(want) > TOLERANCE_PER_HOP_US * hops {
                        return Err(format!("walk {i}→{j} costs {total}, shortest is {want}"));
                    }
                }
            }
        }
    }
    Ok(())
}

fn converge(sim: &mut Sim, limit: Duration) -> Result<Duration, String> {
    let start = sim.now;
    // Checking after every event is expensive; step in 20 ms slices.
    let slice = Duration::from_millis(20);
    while sim.now - start < limit {
        sim.run_for(slice);
        if check(sim).is_ok() {
            return Ok(sim.now - start);
        }
    }
    check(sim).map(|_| sim.now - start)
}

#[derive(Default)]
struct Times(Vec<Duration>);

impl Times {
    fn summary(&mut self) -> String {
        self.0.sort();
        let p = |q: f64| self.0[((self.0.len() - 1) as f64 * q) as usize];
        format!("p50 {:?} p99 {:?} max {:?}", p(0.5), p(0.99), p(1.0))
    }
}

/// One seed: converge, fail a random link or node, reconverge, repair, reconverge. Returns the
/// three convergence times.
fn run_seed(seed: u64) -> [Duration; 3] {
    let fail = |msg: String| -> ! {
        panic!("seed {seed}: {msg} (rerun with WEFT_SIM_FIRST_SEED={seed} WEFT_SIM_SEEDS=1)")
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sim = random_topology(seed, 50, 50);
    let initial = converge(&mut sim, Duration::from_secs(5))
        .unwrap_or_else(|e| fail(format!("initial: {e}")));
    sim.run_for(Duration::from_millis(rng.gen_range(0..200)));
    let node_failure = rng.gen_bool(0.5);
    let (a, b) = if node_failure {
        let v = rng.gen_range(0..sim.len());
        sim.crash(v);
        (v, v)
    } else {
        let links: Vec<(usize, usize)> = sim
            .links()
            .filter(|(a, b, _)| a < b)
            .map(|(a, b, _)| (a, b))
            .collect();
        let (a, b) = links[rng.gen_range(0..links.len())];
        sim.set_link(a, b, |l| l.up = false);
        (a, b)
    };
    let after_failure = converge(&mut sim, Duration::from_secs(5))
        .unwrap_or_else(|e| fail(format!("after failing {a}-{b} (node: {node_failure}): {e}")));
    if node_failure {
        sim.restart(a);
    } else {
        sim.set_link(a, b, |l| l.up = true);
    }
    let after_repair = converge(&mut sim, Duration::from_secs(5))
        .unwrap_or_else(|e| fail(format!("after repairing {a}-{b}: {e}")));
    [initial, after_failure, after_repair]
}

#[test]
fn fifty_nodes_converge_after_any_single_failure() {
    let seeds = std::env::var("WEFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200u64);
    let first = std::env::var("WEFT_SIM_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0u64);
    // Seeds are independent: spread them over the machine's cores.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let results: Vec<[Duration; 3]> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    (first + w..first + seeds)
                        .step_by(workers as usize)
                        .map(run_seed)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut times = [Times::default(), Times::default(), Times::default()];
    for r in results {
        for (t, d) in times.iter_mut().zip(r) {
            t.0.push(d);
        }
    }
    println!("convergence over {seeds} seeds (virtual time, 20 ms resolution):");
    println!("  initial        {}", times[0].summary());
    println!("  after failure  {}", times[1].summary());
    println!("  after repair   {}", times[2].summary());
}
