//! The one topology format of weft: what `weft overlay up` (daemons on 127.0.0.N with their
//! receive-side emulation) and netemu (network namespaces joined by emulated links) both read.
//!
//! A file (TOML):
//!
//! ```toml
//! name = "diamond"
//! description = "primary 2 x 10 ms, alternate 2 x 15 ms"
//! nodes = ["s", "a", "b", "d"]
//! [defaults]            # every direction of every link
//! delay_ms = 10
//! [[link]]
//! between = ["s", "b"]
//! delay_ms = 15         # both directions of this link
//! [link.forward]        # s -> b only ("reverse" is b -> s)
//! loss_pct = 1
//! ```
//!
//! or a built-in shape: `chain:N`, `ring:N`, `diamond`, `diamond-tail`, `grid:RxC`,
//! `random:N[:SEED]`, optionally followed by `@PARAMS` for every link (`chain:5@delay=20ms,
//! loss=2%`). Shapes name their nodes `n1`, `n2`, ... Parameters (`params::ParamPatch`) are
//! the same keys everywhere. Which emulator applies them, and what a node's address is, is
//! the reader's business.

pub mod params;

pub use params::{ParamError, ParamPatch};
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TopologyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Longest node name: netemu's device names are `to-<peer>` and Linux allows 15 characters.
pub const MAX_NODE_NAME: usize = 12;
pub const MAX_NODES: usize = 250;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    name: String,
    #[serde(default)]
    description: String,
    nodes: Vec<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    congestion_control: Option<String>,
    #[serde(default)]
    defaults: ParamPatch,
    #[serde(default, rename = "link")]
    links: Vec<LinkFile>,
}

#[derive(Debug, Deserialize)]
struct LinkFile {
    between: [String; 2],
    #[serde(default)]
    cost: Option<f64>,
    #[serde(default)]
    forward: Option<ParamPatch>,
    #[serde(default)]
    reverse: Option<ParamPatch>,
    /// Parameters for both directions; checked against `ParamPatch`'s fields.
    #[serde(flatten)]
    both: toml::Table,
}

/// A parsed, validated topology (parameters not yet applied to any emulator).
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    pub name: String,
    pub description: String,
    pub nodes: Vec<String>,
    /// Applied to every direction of every link first.
    pub defaults: ParamPatch,
    pub links: Vec<Link>,
    /// IP MTU of the emulated links (netemu), if the file sets one.
    pub mtu: Option<u32>,
    /// Default TCP congestion control in every namespace (netemu), if set.
    pub congestion_control: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    /// Node indices; `a` is the first of `between`.
    pub a: usize,
    pub b: usize,
    /// Routing cost in milliseconds for netemu's static routes (weft routes by itself).
    pub cost_ms: Option<f64>,
    /// a → b, on top of `defaults` (the link's own and its `forward` table, merged).
    pub forward: ParamPatch,
    /// b → a.
    pub reverse: ParamPatch,
}

impl Link {
    /// The patch for packets travelling from `from` over this link.
    pub fn from_side(&self, from: usize) -> &ParamPatch {
        if from == self.a {
            &self.forward
        } else {
            &self.reverse
        }
    }
}

fn invalid<T>(s: String) -> Result<T, TopologyError> {
    Err(TopologyError::Invalid(s))
}

fn count(s: &str, what: &str) -> Result<usize, TopologyError> {
    let n: usize = s
        .parse()
        .map_err(|_| TopologyError::Invalid(format!("topology `{what}`: `{s}` is not a number")))?;
    if !(2..=MAX_NODES).contains(&n) {
        return invalid(format!(
            "topology `{what}`: {n} nodes is outside 2..={MAX_NODES}"
        ));
    }
    Ok(n)
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A name usable as a directory: letters, digits and `-`, the rest as `_`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Topology {
    /// A file if `spec` names one, else a built-in shape.
    pub fn load(spec: &str) -> Result<Self, TopologyError> {
        let path = Path::new(spec);
        if path.is_file() {
            return Self::from_file(path);
        }
        Self::shape(spec)
    }

    pub fn from_file(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        let file: TopologyFile = toml::from_str(text)?;
        if file.nodes.is_empty() || file.nodes.len() > MAX_NODES {
            return invalid(format!("nodes: need 1 to {MAX_NODES} nodes"));
        }
        let mut seen = BTreeSet::new();
        for name in &file.nodes {
            if !valid_node_name(name) {
                return invalid(format!(
                    "nodes: {name:?} must be 1-{MAX_NODE_NAME} characters [a-z0-9_], starting with a letter"
                ));
            }
            if !seen.insert(name.as_str()) {
                return invalid(format!("nodes: {name:?} appears twice"));
            }
        }
        let index = |name: &str| file.nodes.iter().position(|n| n == name);
        let mut links = Vec::new();
        let mut pairs = BTreeSet::new();
        for spec in file.links {
            let [first, second] = &spec.between;
            let context = format!("link {first}-{second}");
            let (Some(a), Some(b)) = (index(first), index(second)) else {
                return invalid(format!("{context}: between names an unknown node"));
            };
            if a == b {
                return invalid(format!("{context}: a link needs two different nodes"));
            }
            if !pairs.insert((a.min(b), a.max(b))) {
                return invalid(format!("{context}: these nodes are already linked"));
            }
            let both: ParamPatch =
                toml::Value::Table(spec.both)
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        TopologyError::Invalid(format!("{context}: {}", e.message()))
                    })?;
            let direction = |patch: &Option<ParamPatch>| {
                both.overlay(patch.as_ref().unwrap_or(&ParamPatch::default()))
            };
            let cost_ms = match spec.cost {
                None => None,
                Some(c) if c.is_finite() && (0.0..=1e9).contains(&c) => Some(c),
                Some(_) => return invalid(format!("{context}: cost must be ≥ 0 (ms)")),
            };
            links.push(Link {
                a,
                b,
                cost_ms,
                forward: direction(&spec.forward),
                reverse: direction(&spec.reverse),
            });
        }
        if let Some(mtu) = file.mtu {
            if !(576..=9000).contains(&mtu) {
                return invalid("mtu: must be between 576 and 9000".into());
            }
        }
        if let Some(cc) = &file.congestion_control {
            if cc.is_empty() || !cc.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return invalid("congestion_control: must be a kernel algorithm name".into());
            }
        }
        Ok(Topology {
            name: file.name,
            description: file.description,
            nodes: file.nodes,
            defaults: file.defaults,
            links,
            mtu: file.mtu,
            congestion_control: file.congestion_control,
        })
    }

    /// A built-in shape, its links all `@PARAMS` (the topology's defaults).
    pub fn shape(spec: &str) -> Result<Self, TopologyError> {
        let (shape, params) = match spec.split_once('@') {
            Some((s, p)) => (s, p),
            None => (spec, ""),
        };
        let defaults = ParamPatch::from_spec(params)
            .map_err(|e| TopologyError::Invalid(format!("topology `{spec}`: {e}")))?;
        let mut parts = shape.split(':');
        let kind = parts.next().unwrap_or_default();
        let arg = parts.next();
        // 1-based node numbers, as people say "node 3".
        let (nodes, edges): (usize, Vec<(usize, usize)>) = match (kind, arg) {
            ("chain", Some(n)) => {
                let n = count(n, "chain")?;
                (n, (1..n).map(|i| (i, i + 1)).collect())
            }
            ("ring", Some(n)) => {
                let n = count(n, "ring")?;
                let mut e: Vec<_> = (1..n).map(|i| (i, i + 1)).collect();
                if n > 2 {
                    e.push((n, 1));
                }
                (n, e)
            }
            ("diamond", None) => (4, vec![(1, 2), (1, 3), (2, 4), (3, 4)]),
            ("diamond-tail", None) => (5, vec![(1, 2), (1, 3), (2, 4), (3, 4), (4, 5)]),
            ("grid", Some(rc)) => {
                let bad = || TopologyError::Invalid("topology `grid`: expected grid:RxC".into());
                let (r, c) = rc.split_once('x').ok_or_else(bad)?;
                let (r, c): (usize, usize) = (
                    r.parse().map_err(|_| bad())?,
                    c.parse().map_err(|_| bad())?,
                );
                if r.saturating_mul(c) < 2 || r.saturating_mul(c) > MAX_NODES {
                    return invalid(format!("topology `grid`: 2..={MAX_NODES} nodes"));
                }
                let id = |i: usize, j: usize| i * c + j + 1;
                let mut e = Vec::new();
                for i in 0..r {
                    for j in 0..c {
                        if j + 1 < c {
                            e.push((id(i, j), id(i, j + 1)));
                        }
                        if i + 1 < r {
                            e.push((id(i, j), id(i + 1, j)));
                        }
                    }
                }
                (r * c, e)
            }
            ("random", Some(n)) => {
                let n = count(n, "random")?;
                let seed: u64 = match parts.next() {
                    Some(s) => s.parse().map_err(|_| {
                        TopologyError::Invalid(format!("topology `random`: bad seed `{s}`"))
                    })?,
                    None => 1,
                };
                // A random spanning tree, then n/2 extra links.
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let mut e = BTreeSet::new();
                for i in 2..=n {
                    let j = rng.gen_range(1..i);
                    e.insert((j, i));
                }
                let extra = n / 2;
                let mut tries = 0;
                while e.len() < n - 1 + extra && tries < 10_000 {
                    tries += 1;
                    let (a, b) = (rng.gen_range(1..=n), rng.gen_range(1..=n));
                    if a != b {
                        e.insert((a.min(b), a.max(b)));
                    }
                }
                (n, e.into_iter().collect())
            }
            _ => {
                return invalid(format!(
                    "topology `{spec}`: expected a file or chain:N, ring:N, diamond, diamond-tail, grid:RxC, random:N[:SEED]"
                ))
            }
        };
        let set: BTreeSet<(usize, usize)> = edges
            .into_iter()
            .map(|(a, b)| (a.min(b), a.max(b)))
            .collect();
        Ok(Topology {
            name: sanitize(spec),
            description: String::new(),
            nodes: (1..=nodes).map(|i| format!("n{i}")).collect(),
            defaults,
            links: set
                .into_iter()
                .map(|(a, b)| Link {
                    a: a - 1,
                    b: b - 1,
                    cost_ms: None,
                    forward: ParamPatch::default(),
                    reverse: ParamPatch::default(),
                })
                .collect(),
            mtu: None,
            congestion_control: None,
        })
    }

    /// The neighbours of node `i` (0-based), each with its link.
    pub fn neighbors_of(&self, i: usize) -> impl Iterator<Item = (usize, &Link)> + '_ {
        self.links.iter().filter_map(move |l| {
            if l.a == i {
                Some((l.b, l))
            } else if l.b == i {
                Some((l.a, l))
            } else {
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = Topology::shape("chain:4").unwrap();
        assert_eq!(t.nodes, ["n1", "n2", "n3", "n4"]);
        assert_eq!(t.links.len(), 3);
        assert_eq!(Topology::shape("ring:5").unwrap().links.len(), 5);
        assert_eq!(Topology::shape("diamond-tail").unwrap().links.len(), 5);
        assert_eq!(Topology::shape("grid:3x3").unwrap().links.len(), 12);
        let r = Topology::shape("random:20:7").unwrap();
        assert_eq!(r.nodes.len(), 20);
        assert!(r.links.len() >= 19);
        let t = Topology::shape("chain:3@delay=20ms,loss=2%").unwrap();
        assert_eq!(t.defaults.delay_ms, Some(20.0));
        assert_eq!(t.defaults.loss_pct, Some(2.0));
        assert_eq!(t.name, "chain_3_delay_20ms_loss_2_");
        assert!(Topology::shape("chain:3@delay=soon").is_err());
        assert!(Topology::shape("blob").is_err());
        assert!(Topology::shape("chain:1").is_err());
    }

    #[test]
    fn files_merge_link_and_direction_tables() {
        let t = Topology::parse(
            r#"name = "d"
               nodes = ["s", "d"]
               [defaults]
               delay_ms = 10
               [[link]]
               between = ["s", "d"]
               loss_pct = 1
               [link.reverse]
               loss_pct = 3
               rate_mbit = 5"#,
        )
        .unwrap();
        assert_eq!(t.defaults.delay_ms, Some(10.0));
        let l = &t.links[0];
        assert_eq!(l.forward.loss_pct, Some(1.0));
        assert_eq!(l.reverse.loss_pct, Some(3.0));
        assert_eq!(l.reverse.rate_mbit, Some(5.0));
        assert_eq!(l.from_side(1), &l.reverse);
        assert_eq!(t.neighbors_of(0).map(|(m, _)| m).collect::<Vec<_>>(), [1]);
    }
}
