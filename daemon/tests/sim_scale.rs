//! Routing and flooding at scale (issue 18): simulated overlays of real `Node`s on random and
//! preferential-attachment (Internet-like) graphs. After the initial flood settles, one link
//! fails; the test checks that every node's routes are the true shortest paths again and
//! that the flood stays linear in the number of links, and prints, per size: detection,
//! convergence after detection, flood records and datagrams per change (total, per node, per
//! link), SPF runs and CPU per change, and link-state memory per node.
//!
//! CI runs the small sizes; `WEFT_SIM_SCALE=50,100,250,500,1000 cargo test --profile ci -p
//! weft-daemon --test sim_scale -- --nocapture` prints the whole table.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use weft_core::NodeId;
use weft_daemon::overlay::routing::Routing;
use weft_daemon::overlay::wire::LinkStateAdvert;
use weft_daemon::sim::{Sim, SimLink};

/// Sizes CI runs (each in both graph families).
const CI_SIZES: &[usize] = &[50, 100];
/// The goal: every node holds the change within this long after the failure was detected.
const PROPAGATION_GOAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Family {
    /// A random spanning tree plus as many random extra edges: mean degree 4.
    Random,
    /// Barabási–Albert preferential attachment, two edges per new node: a few hubs, mean
    /// degree 4, the degree distribution of Internet AS graphs.
    Preferential,
}

fn edges_of(family: Family, n: usize, rng: &mut ChaCha8Rng) -> BTreeSet<(usize, usize)> {
    let mut edges = BTreeSet::new();
    match family {
        Family::Random => {
            for i in 1..n {
                edges.insert((rng.gen_range(0..i), i));
            }
            while edges.len() < 2 * (n - 1) {
                let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
                if a != b {
                    edges.insert((a.min(b), a.max(b)));
                }
            }
        }
        Family::Preferential => {
            // Endpoints of every edge so far: drawing from it picks a node by its degree.
            let mut ends = vec![0, 1, 1, 2, 2, 0];
            edges.extend([(0, 1), (1, 2), (0, 2)]);
            for i in 3..n {
                let mut picked = BTreeSet::new();
                while picked.len() < 2 {
                    picked.insert(ends[rng.gen_range(0..ends.len())]);
                }
                for j in picked {
                    edges.insert((j, i));
                    ends.extend([j, i]);
                }
            }
        }
    }
    edges
}

fn build(family: Family, n: usize, seed: u64) -> Sim {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5ca1e);
    let mut sim = Sim::new(seed);
    for _ in 0..n {
        sim.add_node(|_| {});
    }
    for (a, b) in edges_of(family, n, &mut rng) {
        let delay = Duration::from_millis(rng.gen_range(1..=20));
        sim.connect(a, b, SimLink::with_delay(delay));
    }
    sim.start();
    sim
}

/// Every node routes to every other along a shortest path: its route's cost is the true
/// distance (within the RTT measurement's rounding, 20 µs per hop) and its next hop is a
/// neighbour on a shortest path.
fn check_routes(sim: &Sim) -> Result<(), String> {
    let graph = sim.live_graph();
    let n = sim.len();
    let index: BTreeMap<NodeId, usize> = (0..n).map(|i| (Sim::id_of(i), i)).collect();
    let all: Vec<(Vec<u64>, Vec<u32>)> = (0..n).map(|s| graph.shortest_from(s)).collect();
    for (src, (dist, hops)) in all.iter().enumerate() {
        let routes: BTreeMap<usize, (usize, u64)> = sim
            .node(src)
            .ok_or("node down")?
            .routes()
            .filter_map(|(d, h, c)| Some((*index.get(&d)?, (*index.get(&h)?, c))))
            .collect();
        let reachable = dist.iter().filter(|&&d| d != u64::MAX).count() - 1;
        if routes.len() != reachable {
            return Err(format!(
                "node {src}: {} routes, {reachable} reachable",
                routes.len()
            ));
        }
        for (&dst, &(hop, cost)) in &routes {
            let slack = 20 * (u64::from(hops[dst]) + 1);
            if cost.abs_diff(dist[dst]) > slack {
                return Err(format!(
                    "node {src} -> {dst}: cost {cost}, true {}",
                    dist[dst]
                ));
            }
            let Some(&(_, c)) = graph.adj[src].iter().find(|(v, _)| *v == hop) else {
                return Err(format!(
                    "node {src} -> {dst}: next hop {hop} is no neighbour"
                ));
            };
            let through = c.saturating_add(all[hop].0[dst]);
            if through.abs_diff(dist[dst]) > slack {
                return Err(format!(
                    "node {src} -> {dst}: via {hop} costs {through}, true {}",
                    dist[dst]
                ));
            }
        }
    }
    Ok(())
}

/// Longest shortest path in hops (breadth-first from every node).
fn hops_diameter(adj: &[Vec<(usize, u64)>]) -> usize {
    let mut best = 0;
    for s in 0..adj.len() {
        let mut seen = vec![usize::MAX; adj.len()];
        let mut q = VecDeque::from([s]);
        seen[s] = 0;
        while let Some(u) = q.pop_front() {
            for &(v, _) in &adj[u] {
                if seen[v] == usize::MAX {
                    seen[v] = seen[u] + 1;
                    best = best.max(seen[v]);
                    q.push_back(v);
                }
            }
        }
    }
    best
}

/// Whether removing the link a–b leaves the graph connected.
fn stays_connected(sim: &Sim, a: usize, b: usize) -> bool {
    let adj = sim.live_graph().adj;
    let mut seen = vec![false; adj.len()];
    let mut q = VecDeque::from([a]);
    seen[a] = true;
    while let Some(u) = q.pop_front() {
        for &(v, _) in &adj[u] {
            if (u, v) != (a, b) && (u, v) != (b, a) && !seen[v] {
                seen[v] = true;
                q.push_back(v);
            }
        }
    }
    seen[b]
}

fn lists(advert: Option<&LinkStateAdvert>, neighbour: NodeId) -> bool {
    advert.is_some_and(|a| a.links.iter().any(|(v, _)| *v == neighbour))
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    records: u64,
    record_bytes: u64,
    datagrams: u64,
    spf_runs: u64,
}

fn totals(sim: &Sim) -> Totals {
    let mut t = Totals::default();
    for i in 0..sim.len() {
        if let Some(node) = sim.node(i) {
            let c = node.counters();
            t.records += c.state_records_sent;
            t.record_bytes += c.state_record_bytes_sent;
            t.datagrams += c.state_packets_sent;
            t.spf_runs += node.routing_stats().spf_runs;
        }
    }
    t
}

fn since(a: Totals, b: Totals) -> Totals {
    Totals {
        records: b.records - a.records,
        record_bytes: b.record_bytes - a.record_bytes,
        datagrams: b.datagrams - a.datagrams,
        spf_runs: b.spf_runs - a.spf_runs,
    }
}

/// Wall-clock cost of one route computation over node 0's final database: a fresh `Routing`
/// fed every advert, then one advert re-originated per round so each round rebuilds the graph
/// and runs Dijkstra, as a changed database does. Printed, never asserted.
fn spf_cost(sim: &Sim) -> Duration {
    let Some(node) = sim.node(0) else {
        return Duration::ZERO;
    };
    let mut routing = Routing::new(Sim::id_of(0), 1, None);
    let mut adverts: Vec<LinkStateAdvert> = node
        .known_nodes()
        .into_iter()
        .filter_map(|id| node.advert(id).cloned())
        .collect();
    for a in &adverts {
        if a.origin == Sim::id_of(0) {
            routing.originate(a.links.clone(), false);
        } else {
            routing.on_advert(a.clone());
        }
    }
    routing.refresh();
    let rounds = 20u32;
    let started = std::time::Instant::now();
    for r in 0..rounds {
        let k = 1 + r as usize % (adverts.len() - 1).max(1);
        if let Some(a) = adverts.get_mut(k) {
            a.seq += 1;
            routing.on_advert(a.clone());
        }
        routing.refresh();
    }
    started.elapsed() / rounds
}

struct Row {
    family: Family,
    nodes: usize,
    links: usize,
    diameter: usize,
    cold: Duration,
    cold_records_per_node: f64,
    detection: Duration,
    propagation: Duration,
    change: Totals,
    spf: Duration,
    memory_per_node: usize,
}

fn run(family: Family, n: usize, seed: u64) -> Row {
    let mut sim = build(family, n, seed);
    let links = sim.links().count() / 2;
    // Cold start: every node's advert floods to every node.
    let t0 = sim.now;
    let start_totals = totals(&sim);
    let everyone_knows_everyone = |sim: &Sim| {
        (0..sim.len()).all(|i| sim.node(i).is_some_and(|nd| nd.routes().count() == n - 1))
    };
    let mut settled = false;
    for _ in 0..200 {
        sim.run_for(Duration::from_millis(50));
        if everyone_knows_everyone(&sim) {
            settled = true;
            break;
        }
    }
    assert!(
        settled,
        "seed {seed}: {family:?} {n}: cold start did not converge"
    );
    let cold = sim.now - t0;
    // Let RTT-based costs settle (their changes re-originate adverts) before the failure.
    sim.run_for(Duration::from_secs(3));
    let cold_records = since(start_totals, totals(&sim)).records;
    if let Err(e) = check_routes(&sim) {
        panic!("seed {seed}: {family:?} {n}: before the failure: {e}");
    }

    // One link fails: a random one whose loss leaves the graph connected.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa11);
    let all: Vec<(usize, usize)> = sim
        .links()
        .filter(|(a, b, _)| a < b)
        .map(|(a, b, _)| (a, b))
        .collect();
    let (a, b) = loop {
        let (a, b) = all[rng.gen_range(0..all.len())];
        if stays_connected(&sim, a, b) {
            break (a, b);
        }
    };
    let (ida, idb) = (Sim::id_of(a), Sim::id_of(b));
    let before = totals(&sim);
    let failed_at = sim.now;
    sim.set_link(a, b, |l| l.up = false);
    let mut detected: Option<Duration> = None;
    let mut holds = vec![false; n];
    let mut converged: Option<Duration> = None;
    let step = Duration::from_millis(1);
    while sim.now - failed_at < Duration::from_secs(5) {
        sim.run_for(step);
        let t = sim.now - failed_at;
        let own = |i: usize, peer: NodeId| {
            sim.node(i)
                .is_some_and(|nd| !lists(nd.advert(Sim::id_of(i)), peer))
        };
        if detected.is_none() && own(a, idb) && own(b, ida) {
            detected = Some(t);
        }
        for (i, held) in holds.iter_mut().enumerate() {
            if !*held {
                let Some(nd) = sim.node(i) else { continue };
                *held = !lists(nd.advert(ida), idb) && !lists(nd.advert(idb), ida);
            }
        }
        if holds.iter().all(|h| *h) {
            converged = Some(t);
            break;
        }
    }
    let (Some(detection), Some(converged)) = (detected, converged) else {
        panic!("seed {seed}: {family:?} {n}: link {a}-{b}: no convergence within 5 s");
    };
    // Let every resend and late ack play out, then count what the change cost.
    sim.run_for(Duration::from_secs(2));
    let change = since(before, totals(&sim));
    if let Err(e) = check_routes(&sim) {
        panic!("seed {seed}: {family:?} {n}: after link {a}-{b} failed: {e}");
    }
    let diameter = hops_diameter(&sim.live_graph().adj);
    let memory: usize = (0..n)
        .filter_map(|i| sim.node(i).map(|nd| nd.routing_stats().memory_bytes))
        .sum();
    Row {
        family,
        nodes: n,
        links,
        diameter,
        cold,
        cold_records_per_node: cold_records as f64 / n as f64,
        detection,
        propagation: converged.saturating_sub(detection),
        change,
        spf: spf_cost(&sim),
        memory_per_node: memory / n,
    }
}

fn print(rows: &[Row]) {
    println!(
        "\n| graph | nodes | links | diameter (hops) | cold start s | cold records/node | \
         detection ms | convergence after detection ms | flood records/change | per node | \
         per link | state datagrams/change | flood kB/change | SPF runs/node/change | \
         SPF µs (wall) | SPF CPU ms/change (all nodes) | link-state kB/node |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let spf_runs = r.change.spf_runs as f64 / r.nodes as f64;
        println!(
            "| {:?} | {} | {} | {} | {:.2} | {:.0} | {} | {} | {} | {:.2} | {:.2} | {} | {:.1} | {:.2} | {:.0} | {:.1} | {:.1} |",
            r.family,
            r.nodes,
            r.links,
            r.diameter,
            r.cold.as_secs_f64(),
            r.cold_records_per_node,
            r.detection.as_millis(),
            r.propagation.as_millis(),
            r.change.records,
            r.change.records as f64 / r.nodes as f64,
            r.change.records as f64 / r.links as f64,
            r.change.datagrams,
            r.change.record_bytes as f64 / 1e3,
            spf_runs,
            r.spf.as_secs_f64() * 1e6,
            r.change.spf_runs as f64 * r.spf.as_secs_f64() * 1e3,
            r.memory_per_node as f64 / 1e3,
        );
    }
}

fn sizes() -> Vec<usize> {
    match std::env::var("WEFT_SIM_SCALE") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .filter(|&n| n >= 4)
            .collect(),
        Err(_) => CI_SIZES.to_vec(),
    }
}

#[test]
fn routing_and_flooding_scale_linearly_after_a_link_failure() {
    let mut rows = Vec::new();
    for n in sizes() {
        for family in [Family::Random, Family::Preferential] {
            let seed = 18_000 + n as u64;
            let row = run(family, n, seed);
            // Each of the two endpoints' new adverts crosses every link at most once each way.
            let bound = 2 * 2 * row.links as u64;
            assert!(
                row.change.records <= bound,
                "seed {seed}: {family:?} {n}: {} flood records for one change, more than {bound} \
                 (two adverts, each link both ways)",
                row.change.records
            );
            assert!(
                row.propagation <= PROPAGATION_GOAL,
                "seed {seed}: {family:?} {n}: the change reached every node {} ms after \
                 detection (goal {} ms)",
                row.propagation.as_millis(),
                PROPAGATION_GOAL.as_millis()
            );
            rows.push(row);
        }
    }
    print(&rows);
}
