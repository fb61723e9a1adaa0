//! Small topologies for local overlays: built-in shapes or a file of links.
//!
//! Built-ins: `chain:N`, `ring:N`, `diamond`, `diamond-tail`, `grid:RxC`, `random:N[:SEED]`,
//! each optionally followed by `@SPEC` (link emulation for every link, e.g.
//! `chain:5@delay=20ms,loss=2%`). A file has one link per line, `A B [SPEC...]`, nodes
//! numbered from 1 (node N lives at 127.0.0.N); `#` starts a comment.

use crate::emulation::LinkParams;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub name: String,
    pub nodes: usize,
    /// (a, b, emulation spec applied to both directions), 1-based node numbers, a < b.
    pub links: Vec<(usize, usize, String)>,
}

fn edges_to_links(
    edges: impl IntoIterator<Item = (usize, usize)>,
    spec: &str,
) -> Vec<(usize, usize, String)> {
    let set: BTreeSet<(usize, usize)> = edges
        .into_iter()
        .map(|(a, b)| (a.min(b), a.max(b)))
        .collect();
    set.into_iter()
        .map(|(a, b)| (a, b, spec.to_string()))
        .collect()
}

fn count(s: &str, what: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("topology `{what}`: `{s}` is not a number"))?;
    if !(2..=250).contains(&n) {
        return Err(format!("topology `{what}`: {n} nodes is outside 2..=250"));
    }
    Ok(n)
}

impl Topology {
    pub fn parse(spec: &str) -> Result<Topology, String> {
        if Path::new(spec).is_file() {
            return Self::from_file(Path::new(spec));
        }
        let (shape, link_spec) = match spec.split_once('@') {
            Some((s, l)) => (s, l.replace(',', " ")),
            None => (spec, String::new()),
        };
        if !link_spec.is_empty() {
            LinkParams::default().apply_spec(&link_spec)?;
        }
        let mut parts = shape.split(':');
        let kind = parts.next().unwrap_or_default();
        let arg = parts.next();
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
                let (r, c) = rc.split_once('x').ok_or("topology `grid`: expected grid:RxC")?;
                let (r, c): (usize, usize) = (
                    r.parse().map_err(|_| "topology `grid`: bad row count")?,
                    c.parse().map_err(|_| "topology `grid`: bad column count")?,
                );
                if r * c < 2 || r * c > 250 {
                    return Err("topology `grid`: 2..=250 nodes".into());
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
                    Some(s) => s.parse().map_err(|_| format!("topology `random`: bad seed `{s}`"))?,
                    None => 1,
                };
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
                return Err(format!(
                    "topology `{spec}`: expected a file or chain:N, ring:N, diamond, diamond-tail, grid:RxC, random:N[:SEED]"
                ))
            }
        };
        Ok(Topology {
            name: sanitize(spec),
            nodes,
            links: edges_to_links(edges, &link_spec),
        })
    }

    pub fn from_file(path: &Path) -> Result<Topology, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut links = Vec::new();
        let mut nodes = 0;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |msg: String| format!("{}:{}: {msg}", path.display(), i + 1);
            let mut words = line.split_whitespace();
            let a: usize = words
                .next()
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| at("expected `A B [link spec]`".into()))?;
            let b: usize = words
                .next()
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| at("expected `A B [link spec]`".into()))?;
            if a == 0 || b == 0 || a > 250 || b > 250 || a == b {
                return Err(at(format!("bad link {a}-{b} (nodes are 1..=250)")));
            }
            let spec: Vec<&str> = words.collect();
            let spec = spec.join(" ");
            LinkParams::default().apply_spec(&spec).map_err(at)?;
            nodes = nodes.max(a).max(b);
            links.push((a.min(b), a.max(b), spec));
        }
        if links.is_empty() {
            return Err(format!("{}: no links", path.display()));
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "overlay".into());
        Ok(Topology {
            name: sanitize(&name),
            nodes,
            links,
        })
    }

    pub fn neighbors_of(&self, n: usize) -> impl Iterator<Item = (usize, &str)> + '_ {
        self.links.iter().filter_map(move |(a, b, s)| {
            if *a == n {
                Some((*b, s.as_str()))
            } else if *b == n {
                Some((*a, s.as_str()))
            } else {
                None
            }
        })
    }
}

fn sanitize(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = Topology::parse("chain:4").unwrap();
        assert_eq!(t.nodes, 4);
        assert_eq!(t.links.len(), 3);
        assert_eq!(Topology::parse("ring:5").unwrap().links.len(), 5);
        assert_eq!(Topology::parse("diamond-tail").unwrap().links.len(), 5);
        assert_eq!(Topology::parse("grid:3x3").unwrap().links.len(), 12);
        let r = Topology::parse("random:20:7").unwrap();
        assert_eq!(r.nodes, 20);
        assert!(r.links.len() >= 19);
        let t = Topology::parse("chain:3@delay=20ms,loss=2%").unwrap();
        assert_eq!(t.links[0].2, "delay=20ms loss=2%");
        assert!(Topology::parse("chain:3@delay=soon").is_err());
        assert!(Topology::parse("blob").is_err());
    }
}
