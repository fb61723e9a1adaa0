//! SIGHUP: re-read the configuration (the same file and flags the daemon started with) and
//! apply what can change while sessions stay open: logging, neighbours and their emulation.
//! Settings that shape the node itself (its address, sockets, timers) need a restart; a
//! changed one is logged and the running value kept. A configuration that no longer resolves
//! is logged and nothing changes.

use super::Daemon;
use crate::config::{DaemonConfig, Flags, Security};
use crate::emulation::LinkParams;
use crate::logging::LogHandle;
use crate::overlay::NeighborConfig;
use std::net::SocketAddr;
use tracing::{info, warn};
use weft_secure::link::PeerConfig;
use weft_secure::PublicKey;

/// What a reload starts from.
pub struct Reloader {
    pub flags: Flags,
    pub logs: LogHandle,
    /// The neighbours the configuration named at the last (re)load, with their emulation.
    pub file_neighbors: Vec<(NeighborConfig, LinkParams)>,
}

/// The configuration's neighbours, each with its initial link parameters.
fn neighbors_of(c: &DaemonConfig) -> Vec<(NeighborConfig, LinkParams)> {
    c.node
        .neighbors
        .iter()
        .map(|n| {
            let link = c
                .emulation
                .links
                .iter()
                .find(|(a, _)| *a == n.addr)
                .map_or_else(LinkParams::default, |(_, l)| *l);
            (n.clone(), link)
        })
        .collect()
}

/// The settings a reload cannot change, as (name, running value, new value) when they differ.
fn needs_restart(old: &DaemonConfig, new: &DaemonConfig) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, a: String, b: String| {
        if a != b {
            out.push((name, a, b));
        }
    };
    check("node", old.node.id.to_string(), new.node.id.to_string());
    check("listen", old.listen.to_string(), new.listen.to_string());
    check(
        "socket",
        old.socket.display().to_string(),
        new.socket.display().to_string(),
    );
    check(
        "socket_group",
        format!("{:?}", old.access.socket_group),
        format!("{:?}", new.access.socket_group),
    );
    check(
        "admin_group",
        format!("{:?}", old.access.admin_group),
        format!("{:?}", new.access.admin_group),
    );
    check(
        "proxy_ip",
        old.proxy_ip.to_string(),
        new.proxy_ip.to_string(),
    );
    check(
        "metrics",
        format!("{:?}", old.metrics),
        format!("{:?}", new.metrics),
    );
    let n = |c: &DaemonConfig| {
        format!(
            "{:?} {:?} {:?} {:?} {} {} {:?} {:?} {}",
            c.node.hello_interval,
            c.node.dead_interval,
            c.node.fast_probe,
            c.node.metric,
            c.node.mtu,
            c.node.default_ttl,
            c.node.recovery,
            c.node.arq.redundancy,
            c.emulation.enabled
        )
    };
    check(
        "timers, metric, mtu, ttl, recovery, redundancy or emulation",
        n(old),
        n(new),
    );
    out
}

impl Daemon {
    /// Lets SIGHUP reload from `flags` (and the file they name) and swap the log settings.
    pub fn with_reload(mut self, flags: Flags, logs: LogHandle) -> Daemon {
        let file_neighbors = neighbors_of(&self.cfg);
        self.reloader = Some(Reloader {
            flags,
            logs,
            file_neighbors,
        });
        self
    }

    pub(super) fn reload(&mut self) {
        let Some(reloader) = self.reloader.as_mut() else {
            warn!("SIGHUP: nothing to reload from");
            return;
        };
        let new = match DaemonConfig::resolve(&reloader.flags) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "reload failed: keeping the running configuration");
                return;
            }
        };
        let mut changed: Vec<String> = Vec::new();
        match reloader.logs.reload(&new.log) {
            Ok(c) => changed.extend(c.iter().map(|s| s.to_string())),
            Err(e) => warn!(error = %e, "reload: logging unchanged"),
        }
        for (name, was, now) in needs_restart(&self.cfg, &new) {
            warn!(setting = name, running = %was, configured = %now, "reload: needs a restart; keeping the running value");
        }
        changed.extend(self.reload_security(&new));
        changed.extend(self.reload_neighbors(&new));
        self.cfg.log = new.log;
        info!(changed = %if changed.is_empty() { "nothing".to_string() } else { changed.join(" ") }, "configuration reloaded");
    }
}

impl Daemon {
    /// A changed admitted list applies at once, to the links (which key each neighbour must
    /// prove) and to the flooded records; this node's own key and the insecure mode need a
    /// restart.
    fn reload_security(&mut self, new: &DaemonConfig) -> Vec<String> {
        let (
            Security::Keys {
                identity: running,
                links: old,
            },
            Security::Keys {
                identity: configured,
                links: wanted,
            },
        ) = (&mut self.cfg.security, &new.security)
        else {
            if self.cfg.security.is_secure() != new.security.is_secure() {
                warn!(
                    setting = "insecure",
                    "reload: needs a restart; keeping the running value"
                );
            }
            return Vec::new();
        };
        if running.public() != configured.public() {
            warn!(
                setting = "key_file",
                running = %running.public(),
                configured = %configured.public(),
                "reload: needs a restart; keeping the running value"
            );
        }
        if old.admitted.as_deref() == wanted.admitted.as_deref() {
            return Vec::new();
        }
        old.admitted = wanted.admitted.clone();
        self.security.set_admitted(wanted.admitted.clone());
        self.node.set_admitted(wanted.admitted.clone());
        vec!["admitted_keys".to_string()]
    }

    /// The public key the configuration gives neighbour `addr`, if it gives one (else the
    /// admitted list supplies it).
    fn configured_key(cfg: &DaemonConfig, addr: SocketAddr) -> Option<PublicKey> {
        match &cfg.security {
            Security::Keys { links, .. } => links.peers.iter().find(|p| p.addr == addr)?.key,
            Security::Insecure => None,
        }
    }

    /// Applies the difference between what the file said at the last (re)load and what it
    /// says now: neighbours added, removed, or with new emulation. Neighbours added or
    /// removed at run time (`weft neighbor`) stay as they are unless the file names them.
    fn reload_neighbors(&mut self, new: &DaemonConfig) -> Vec<String> {
        let Some(reloader) = self.reloader.as_mut() else {
            return Vec::new();
        };
        let wanted = neighbors_of(new);
        let old = std::mem::replace(&mut reloader.file_neighbors, wanted.clone());
        let mut changed = Vec::new();
        for (o, _) in &old {
            if !wanted.iter().any(|(n, _)| n.addr == o.addr) {
                match self.remove_neighbor(o.addr) {
                    Ok(()) => changed.push(format!("-neighbor {}", o.addr)),
                    Err(e) => warn!(peer = %o.addr, error = %e, "reload: cannot remove"),
                }
            }
        }
        for (n, link) in &wanted {
            match old.iter().find(|(o, _)| o.addr == n.addr) {
                None => {
                    match self.add_neighbor(n.clone(), *link, Self::configured_key(new, n.addr)) {
                        Ok(()) => changed.push(format!("+neighbor {}", n.addr)),
                        Err(e) => warn!(peer = %n.addr, error = %e, "reload: cannot add"),
                    }
                }
                Some((_, was)) if was != link => match self.emulation.add_link(n.addr, *link) {
                    Ok(()) => {
                        info!(peer = %n.addr, params = %link, "link emulation set");
                        changed.push(format!("link {}", n.addr));
                    }
                    Err(e) => warn!(peer = %n.addr, error = %e, "reload: cannot set emulation"),
                },
                Some(_) => {}
            }
        }
        self.drain_node();
        changed
    }

    /// Links to a neighbour at run time: the node's link and its emulation.
    fn add_neighbor(
        &mut self,
        n: NeighborConfig,
        link: LinkParams,
        key: Option<PublicKey>,
    ) -> Result<(), String> {
        if n.addr == self.cfg.listen {
            return Err(format!("{} is this daemon's own address", n.addr));
        }
        if !link.is_identity() && !self.emulation.enabled() {
            return Err("link emulation is disabled: start weftd with --emulation".into());
        }
        let addr = n.addr;
        let now = self.clock.now();
        if self.node.config().neighbors.iter().any(|m| m.addr == addr) {
            return Err(format!("{addr} is already a neighbour"));
        }
        self.security.add_peer(
            now,
            PeerConfig {
                addr,
                node: n.id,
                key,
            },
        )?;
        if let Err(e) = self.node.add_neighbor(now, n) {
            self.security.remove_peer(addr);
            return Err(e);
        }
        self.emulation.add_link(addr, link)?;
        self.neighbors_changed();
        Ok(())
    }

    fn remove_neighbor(&mut self, addr: SocketAddr) -> Result<(), String> {
        self.node.remove_neighbor(self.clock.now(), addr)?;
        // The leave the node just queued is sealed with the link's keys before they go.
        self.drain_node();
        self.security.remove_peer(addr);
        self.emulation.remove_link(addr);
        self.neighbors_changed();
        Ok(())
    }

    /// The running configuration follows the node's neighbours (what `status` and a later
    /// reload compare against).
    fn neighbors_changed(&mut self) {
        self.cfg.node.neighbors = self.node.config().neighbors.clone();
        let emulation = &self.emulation;
        self.cfg.emulation.links = self
            .cfg
            .node
            .neighbors
            .iter()
            .map(|n| {
                let params = emulation.params(n.addr).unwrap_or_default();
                (n.addr, params)
            })
            .collect();
    }

    /// `weft neighbor add|remove ADDR`.
    pub(super) fn neighbor_request(
        &mut self,
        addr: std::net::SocketAddr,
        action: weft_ipc::NeighborAction,
    ) -> Result<(), String> {
        match action {
            weft_ipc::NeighborAction::Add { node, link, key } => {
                let link = LinkParams::default().apply_spec(&link)?;
                let key = match key {
                    Some(k) => {
                        Some(PublicKey::parse(&k).map_err(|e| format!("`--public-key`: {e}"))?)
                    }
                    None => None,
                };
                if key.is_some() && !self.security.is_secure() {
                    return Err("`--public-key`: this daemon runs --insecure (no link keys)".into());
                }
                self.add_neighbor(NeighborConfig { addr, id: node }, link, key)?;
            }
            weft_ipc::NeighborAction::Remove => self.remove_neighbor(addr)?,
        }
        self.drain_node();
        Ok(())
    }
}
