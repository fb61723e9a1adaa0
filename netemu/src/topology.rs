//! Topologies (the shared format of `weft_topology`: TOML files or built-in shapes) applied
//! to netemu's link model, and the addressing/routing plan derived from them.
//!
//! Addresses: node `i` (0-based, in file order) owns `10.76.0.(i+1)/32` on its loopback; link
//! `j` is the point-to-point pair `10.77.j.1` (first node) ↔ `10.77.j.2` (second node). Kernel
//! routes are static shortest paths by `cost` (default: the link's larger one-way delay), ties
//! broken first by hop count and then deterministically, so every path is unique and the path
//! from u to v is the reverse of the path from v to u.

use crate::model::LinkParams;
use crate::params::{ApplyPatch, ParamError};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TopologyError {
    #[error("{0}")]
    Format(#[from] weft_topology::TopologyError),
    #[error("{context}: {source}")]
    Param { context: String, source: ParamError },
    #[error("{0}")]
    Invalid(String),
}

/// Link bits of the tie-breaking cost must fit in 64 bits.
pub const MAX_LINKS: usize = 64;
pub const MAX_NODES: usize = weft_topology::MAX_NODES;

/// A parsed, validated topology.
#[derive(Clone, Debug)]
pub struct Topology {
    pub name: String,
    pub description: String,
    pub nodes: Vec<String>,
    pub links: Vec<Link>,
    pub mtu: u32,
    /// Default TCP congestion control to set in every namespace; None inherits the host's.
    /// Outside the initial namespace the kernel only accepts algorithms listed in
    /// `tcp_allowed_congestion_control`, so benchmarks pin theirs per socket instead.
    pub congestion_control: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Link {
    /// Node indices; `a` is the first of `between`.
    pub a: usize,
    pub b: usize,
    pub cost_us: Option<u64>,
    pub forward: LinkParams,
    pub reverse: LinkParams,
}

impl Topology {
    pub fn from_file(path: &Path) -> Result<Self, TopologyError> {
        Self::from_shared(weft_topology::Topology::from_file(path)?)
    }

    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        Self::from_shared(weft_topology::Topology::parse(text)?)
    }

    /// A file or a built-in shape (`chain:4@delay=10ms`).
    pub fn load(spec: &str) -> Result<Self, TopologyError> {
        Self::from_shared(weft_topology::Topology::load(spec)?)
    }

    /// Applies the shared description's parameters to netemu's model.
    pub fn from_shared(t: weft_topology::Topology) -> Result<Self, TopologyError> {
        if t.links.len() > MAX_LINKS {
            return Err(TopologyError::Invalid(format!(
                "link: at most {MAX_LINKS} links"
            )));
        }
        let base =
            t.defaults
                .apply(&LinkParams::default())
                .map_err(|source| TopologyError::Param {
                    context: "defaults".into(),
                    source,
                })?;
        let mut links = Vec::new();
        for l in &t.links {
            let context = format!("link {}-{}", t.nodes[l.a], t.nodes[l.b]);
            let direction = |patch: &weft_topology::ParamPatch, label: &str| {
                patch.apply(&base).map_err(|source| TopologyError::Param {
                    context: format!("{context} {label}"),
                    source,
                })
            };
            links.push(Link {
                a: l.a,
                b: l.b,
                cost_us: l.cost_ms.map(|c| (c * 1000.0).round() as u64),
                forward: direction(&l.forward, "forward")?,
                reverse: direction(&l.reverse, "reverse")?,
            });
        }
        Ok(Topology {
            name: t.name,
            description: t.description,
            nodes: t.nodes,
            links,
            mtu: t.mtu.unwrap_or(1500),
            congestion_control: t.congestion_control,
        })
    }

    pub fn link_name(&self, link: usize) -> String {
        let l = &self.links[link];
        format!("{}-{}", self.nodes[l.a], self.nodes[l.b])
    }

    /// Addresses, devices and static routes for namespaces named `<prefix>-<node>`.
    pub fn plan(&self, prefix: &str) -> Plan {
        let node_address = |i: usize| Ipv4Addr::new(10, 76, 0, (i + 1) as u8);
        let link_address = |j: usize, side: u8| Ipv4Addr::new(10, 77, j as u8, side);
        let device = |peer: usize| format!("to-{}", self.nodes[peer]);
        let next_hops = self.next_hops();
        let mut nodes = Vec::new();
        for (u, hops) in next_hops.iter().enumerate() {
            let mut routes = Vec::new();
            let mut route_to = |destination: Ipv4Addr, target: usize| {
                if let Some(peer) = hops[target] {
                    routes.push(Route {
                        destination,
                        device: device(peer),
                    });
                }
            };
            for v in 0..self.nodes.len() {
                if v != u {
                    route_to(node_address(v), v);
                }
            }
            for (j, link) in self.links.iter().enumerate() {
                if link.a != u && link.b != u {
                    route_to(link_address(j, 1), link.a);
                    route_to(link_address(j, 2), link.b);
                }
            }
            nodes.push(NodePlan {
                name: self.nodes[u].clone(),
                namespace: format!("{prefix}-{}", self.nodes[u]),
                address: node_address(u),
                routes,
            });
        }
        let links = self
            .links
            .iter()
            .enumerate()
            .map(|(j, l)| LinkPlan {
                name: self.link_name(j),
                a: self.nodes[l.a].clone(),
                b: self.nodes[l.b].clone(),
                a_device: device(l.b),
                b_device: device(l.a),
                a_address: link_address(j, 1),
                b_address: link_address(j, 2),
            })
            .collect();
        Plan {
            topology: self.name.clone(),
            prefix: prefix.to_string(),
            mtu: self.mtu,
            nodes,
            links,
        }
    }

    /// `next_hops[u][v]`: the neighbour u forwards to for destination v (None for u == v or
    /// when v is unreachable). Each destination's shortest-path tree is computed separately;
    /// unique path costs make all trees agree.
    fn next_hops(&self) -> Vec<Vec<Option<usize>>> {
        let n = self.nodes.len();
        let mut result = vec![vec![None; n]; n];
        for destination in 0..n {
            let mut cost: Vec<Option<u128>> = vec![None; n];
            let mut toward: Vec<Option<usize>> = vec![None; n];
            let mut done = vec![false; n];
            cost[destination] = Some(0);
            loop {
                let current = (0..n)
                    .filter(|&i| !done[i])
                    .filter_map(|i| cost[i].map(|c| (c, i)))
                    .min();
                let Some((c, u)) = current else { break };
                done[u] = true;
                for (j, link) in self.links.iter().enumerate() {
                    let neighbour = if link.a == u {
                        link.b
                    } else if link.b == u {
                        link.a
                    } else {
                        continue;
                    };
                    let candidate = c + self.link_cost(j);
                    let better = match cost[neighbour] {
                        None => true,
                        Some(old) => candidate < old,
                    };
                    if !done[neighbour] && better {
                        cost[neighbour] = Some(candidate);
                        toward[neighbour] = Some(u);
                    }
                }
            }
            for u in 0..n {
                result[u][destination] = toward[u];
            }
        }
        result
    }

    /// Delay dominates, then hop count, then one distinct bit per link so that no two
    /// different paths ever cost the same.
    fn link_cost(&self, j: usize) -> u128 {
        let link = &self.links[j];
        let delay_us = link.cost_us.unwrap_or_else(|| {
            let d = link.forward.delay.max(link.reverse.delay);
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
        });
        (u128::from(delay_us) << 72) | (1u128 << 64) | (1u128 << j)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub topology: String,
    pub prefix: String,
    pub mtu: u32,
    pub nodes: Vec<NodePlan>,
    pub links: Vec<LinkPlan>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub namespace: String,
    /// The node's own address (on its loopback), routed everywhere.
    pub address: Ipv4Addr,
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Route {
    /// A /32 destination.
    pub destination: Ipv4Addr,
    pub device: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkPlan {
    pub name: String,
    pub a: String,
    pub b: String,
    /// Device in a's namespace (named after b) and in b's namespace (named after a).
    pub a_device: String,
    pub b_device: String,
    pub a_address: Ipv4Addr,
    pub b_address: Ipv4Addr,
}

impl Plan {
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The device `from` uses toward `destination`, following the static routes.
    pub fn route_device(&self, from: &str, destination: Ipv4Addr) -> Option<&str> {
        self.node(from)?
            .routes
            .iter()
            .find(|r| r.destination == destination)
            .map(|r| r.device.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DIAMOND: &str = r#"
        name = "diamond"
        nodes = ["s", "a", "b", "d"]
        [defaults]
        delay_ms = 10
        [[link]]
        between = ["s", "a"]
        [[link]]
        between = ["a", "d"]
        [[link]]
        between = ["s", "b"]
        delay_ms = 15
        [[link]]
        between = ["b", "d"]
        delay_ms = 15
        [link.reverse]
        loss_pct = 2
    "#;

    #[test]
    fn diamond_routes_over_the_shorter_path_both_ways() {
        let t = Topology::parse(DIAMOND).unwrap();
        let plan = t.plan("x");
        let d = plan.node("d").unwrap().address;
        let s = plan.node("s").unwrap().address;
        assert_eq!(plan.route_device("s", d), Some("to-a"));
        assert_eq!(plan.route_device("a", d), Some("to-d"));
        assert_eq!(plan.route_device("d", s), Some("to-a"));
        assert_eq!(plan.node("s").unwrap().namespace, "x-s");
        assert_eq!(plan.links[2].name, "s-b");
        assert_eq!(plan.links[2].a_address, Ipv4Addr::new(10, 77, 2, 1));
        assert_eq!(t.links[2].forward.delay, Duration::from_millis(15));
        assert!((t.links[3].reverse.loss.expected_rate() - 0.02).abs() < 1e-12);
        assert_eq!(t.links[3].forward.loss.expected_rate(), 0.0);
    }

    #[test]
    fn equal_cost_grid_paths_are_symmetric_and_shortest() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/grid3x3.toml"),
        )
        .unwrap();
        let t = Topology::parse(&text).unwrap();
        let next = t.next_hops();
        let n = t.nodes.len();
        let path = |mut u: usize, v: usize| {
            let mut p = vec![u];
            while u != v {
                u = next[u][v].unwrap();
                p.push(u);
                assert!(p.len() <= n, "routing loop");
            }
            p
        };
        for u in 0..n {
            for v in 0..n {
                let forward = path(u, v);
                let mut backward = path(v, u);
                backward.reverse();
                assert_eq!(forward, backward, "{u}->{v}");
                // Manhattan distance on the grid: rows of 3.
                let hops = (u / 3).abs_diff(v / 3) + (u % 3).abs_diff(v % 3);
                assert_eq!(forward.len() - 1, hops, "{u}->{v}");
            }
        }
    }

    #[test]
    fn every_shipped_topology_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let t = Topology::from_file(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let plan = t.plan("p");
                // Every node reaches every other node.
                for node in &plan.nodes {
                    assert_eq!(
                        node.routes
                            .iter()
                            .filter(|r| r.destination.octets()[1] == 76)
                            .count(),
                        t.nodes.len() - 1,
                        "{}: {}",
                        path.display(),
                        node.name
                    );
                }
                count += 1;
            }
        }
        assert!(count >= 5, "expected the shipped topologies, found {count}");
    }

    #[test]
    fn invalid_files_name_the_problem() {
        let cases = [
            (
                r#"name="x"
nodes=["s","s"]"#,
                "appears twice",
            ),
            (
                r#"name="x"
nodes=["S"]"#,
                "must be",
            ),
            (
                r#"name="x"
nodes=["s","d"]
                [[link]]
                between=["s","q"]"#,
                "unknown node",
            ),
            (
                r#"name="x"
nodes=["s","d"]
                [[link]]
                between=["s","d"]
                dealy_ms=3"#,
                "dealy_ms",
            ),
            (
                r#"name="x"
nodes=["s","d"]
                [[link]]
                between=["s","d"]
                [link.forward]
                loss_pct=200"#,
                "link s-d forward: loss_pct",
            ),
            (
                r#"name="x"
nodes=["s","d"]
                [[link]]
                between=["s","d"]
                [[link]]
                between=["d","s"]"#,
                "already linked",
            ),
            (
                r#"name="x"
nodes=["s"]
mtu=100"#,
                "mtu",
            ),
        ];
        for (text, needle) in cases {
            let err = Topology::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
