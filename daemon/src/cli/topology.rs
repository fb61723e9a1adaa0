//! Topologies for local overlays, in the one format netemu reads too (`weft_topology`: TOML
//! files like `topologies/diamond.toml`, or `chain:N`, `ring:N`, `diamond`, `diamond-tail`,
//! `grid:RxC`, `random:N[:SEED]`, optionally `@PARAMS`). Node `i` (1-based, in file order)
//! lives at 127.0.0.i; each direction's parameters become the receive-side emulation of the
//! daemon at its far end. `cost` and `congestion_control` are netemu's (weft routes by itself);
//! `mtu` (an IP MTU) sets the daemons' UDP payload (`mtu - 28`).

use crate::emulation::LinkParams;
use weft_topology::ParamPatch;

#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub name: String,
    /// Node names from the file (`n1`, `n2`, ... for shapes).
    pub names: Vec<String>,
    pub nodes: usize,
    /// (a, b), 1-based node numbers, a < b.
    pub links: Vec<(usize, usize)>,
    /// Per node (1-based index - 1): its neighbours and the emulation spec for packets from
    /// each (`weftd --neighbor ADDR/SPEC` / `[[neighbor]] link` syntax; empty: none).
    neighbors: Vec<Vec<(usize, String)>>,
    /// The daemons' `mtu` (UDP payload), when the file sets an IP MTU.
    pub daemon_mtu: Option<u32>,
}

/// A patch as the daemons' emulation spec, applied on top of `base`.
fn to_daemon(base: LinkParams, patch: &ParamPatch) -> Result<LinkParams, String> {
    if patch.ge.is_some() {
        return Err(
            "ge: the daemons' emulation has no explicit Gilbert-Elliott chain (use loss_pct and burst_pct)"
                .into(),
        );
    }
    let mut words = Vec::new();
    if let Some(ms) = patch.delay_ms {
        words.push(format!("delay={}us", (ms * 1e3).round()));
    }
    if let Some(ms) = patch.jitter_ms {
        words.push(format!("jitter={}us", (ms * 1e3).round()));
    }
    if let Some(p) = patch.loss_pct {
        words.push(format!("loss={p}%"));
    }
    if let Some(p) = patch.burst_pct {
        words.push(format!("burst={p}%"));
    }
    if let Some(m) = patch.rate_mbit {
        words.push(format!("rate={}bit", (m * 1e6).round()));
    }
    let mut params = base.apply_spec(&words.join(" "))?;
    match (patch.queue_bytes, patch.queue_ms) {
        (Some(_), Some(_)) => return Err("queue_bytes: give either queue_bytes or queue_ms".into()),
        (Some(b), None) => params.queue_bytes = b,
        (None, Some(ms)) if params.rate_bps > 0 => {
            params.queue_bytes = (params.rate_bps as f64 / 8.0 * ms / 1e3).round() as u64
        }
        (None, Some(_)) => return Err("queue_ms: needs a rate (rate_mbit)".into()),
        (None, None) => {}
    }
    Ok(params)
}

/// The spec string `LinkParams::apply_spec` reads back into `p` (empty for no emulation).
fn spec_of(p: &LinkParams) -> String {
    if p.is_identity() && p.queue_bytes == 0 {
        return String::new();
    }
    let mut words = vec![
        format!("delay={}us", p.delay.as_micros()),
        format!("jitter={}us", p.jitter.as_micros()),
        format!("loss={}%", p.loss * 100.0),
        format!("burst={}%", p.burst * 100.0),
    ];
    if p.rate_bps > 0 {
        words.push(format!("rate={}bit", p.rate_bps));
    }
    if p.queue_bytes > 0 {
        words.push(format!("queue={}b", p.queue_bytes));
    }
    words.join(" ")
}

impl Topology {
    pub fn parse(spec: &str) -> Result<Topology, String> {
        let t =
            weft_topology::Topology::load(spec).map_err(|e| format!("topology `{spec}`: {e}"))?;
        if t.links.is_empty() {
            return Err(format!("topology `{spec}`: no links"));
        }
        let base = to_daemon(LinkParams::default(), &t.defaults)
            .map_err(|e| format!("topology `{spec}`: defaults: {e}"))?;
        let mut neighbors = vec![Vec::new(); t.nodes.len()];
        for l in &t.links {
            let context = |e: String| {
                format!(
                    "topology `{spec}`: link {}-{}: {e}",
                    t.nodes[l.a], t.nodes[l.b]
                )
            };
            // What a receives comes from b (the reverse direction), and the other way round.
            let at_a = to_daemon(base, &l.reverse).map_err(context)?;
            let at_b = to_daemon(base, &l.forward).map_err(context)?;
            neighbors[l.a].push((l.b + 1, spec_of(&at_a)));
            neighbors[l.b].push((l.a + 1, spec_of(&at_b)));
        }
        let name = match std::path::Path::new(spec).is_file() {
            true => weft_topology::sanitize(&t.name),
            false => t.name.clone(),
        };
        Ok(Topology {
            name,
            nodes: t.nodes.len(),
            links: t
                .links
                .iter()
                .map(|l| ((l.a + 1).min(l.b + 1), (l.a + 1).max(l.b + 1)))
                .collect(),
            names: t.nodes,
            neighbors,
            daemon_mtu: t.mtu.map(|m| m.saturating_sub(28)),
        })
    }

    /// Node `n`'s (1-based) neighbours and the emulation spec for packets from each.
    pub fn neighbors_of(&self, n: usize) -> impl Iterator<Item = (usize, &str)> + '_ {
        self.neighbors
            .get(n.wrapping_sub(1))
            .into_iter()
            .flatten()
            .map(|(m, s)| (*m, s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn shapes_and_files_give_per_direction_emulation() {
        let t = Topology::parse("chain:4").unwrap();
        assert_eq!(t.nodes, 4);
        assert_eq!(t.links.len(), 3);
        assert_eq!(
            t.neighbors_of(2).map(|(m, _)| m).collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(t.neighbors_of(1).next(), Some((2, "")));
        let t = Topology::parse("chain:3@delay=20ms,loss=2%").unwrap();
        let spec = t.neighbors_of(1).next().unwrap().1.to_string();
        let p = LinkParams::default().apply_spec(&spec).unwrap();
        assert_eq!(p.delay, Duration::from_millis(20));
        assert!((p.loss - 0.02).abs() < 1e-12);
        assert!(Topology::parse("chain:3@delay=soon").is_err());
        assert!(Topology::parse("blob").is_err());

        // The shipped diamond: s-b is 15 ms both ways on top of the 10 ms / 100 Mbit/s default.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../topologies/diamond.toml");
        let t = Topology::parse(path).unwrap();
        assert_eq!(t.names, ["s", "a", "b", "d"]);
        let (_, from_b) = t.neighbors_of(1).find(|(m, _)| *m == 3).unwrap();
        let p = LinkParams::default().apply_spec(from_b).unwrap();
        assert_eq!(p.delay, Duration::from_millis(15));
        assert_eq!(p.rate_bps, 100_000_000);
        // queue_ms = 50 at 100 Mbit/s.
        assert_eq!(p.queue_bytes, 625_000);
    }

    #[test]
    fn directions_land_at_the_receiving_daemon() {
        let dir = std::env::temp_dir().join(format!("weft-topo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("asym.toml");
        std::fs::write(
            &f,
            "name = \"asym\"\nnodes = [\"x\", \"y\"]\n[[link]]\nbetween = [\"x\", \"y\"]\n[link.forward]\nloss_pct = 5\n",
        )
        .unwrap();
        let t = Topology::parse(f.to_str().unwrap()).unwrap();
        // x -> y loses 5 %: y's emulation of packets from x.
        let at_y = t.neighbors_of(2).next().unwrap().1;
        assert!(at_y.contains("loss=5%"), "{at_y}");
        assert_eq!(t.neighbors_of(1).next().unwrap().1, "");
        std::fs::remove_dir_all(&dir).ok();
    }
}
