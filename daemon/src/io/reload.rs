//! SIGHUP: re-read the configuration (the same file and flags the daemon started with) and
//! apply what can change while sessions stay open: logging, neighbours and their emulation.
//! Settings that shape the node itself (its address, sockets, timers) need a restart; a
//! changed one is logged and the running value kept. A configuration that no longer resolves
//! is logged and nothing changes.

use super::Daemon;
use crate::config::{DaemonConfig, Flags};
use crate::logging::LogHandle;
use tracing::{info, warn};

/// What a reload starts from.
pub struct Reloader {
    pub flags: Flags,
    pub logs: LogHandle,
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
            "{:?} {:?} {:?} {} {} {:?} {:?} {}",
            c.node.hello_interval,
            c.node.dead_interval,
            c.node.metric,
            c.node.mtu,
            c.node.default_ttl,
            c.node.recovery,
            c.node.arq.redundancy,
            c.node.emulation
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
        self.reloader = Some(Reloader { flags, logs });
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
        changed.extend(self.reload_neighbors(&new));
        self.cfg.log = new.log;
        info!(changed = %if changed.is_empty() { "nothing".to_string() } else { changed.join(" ") }, "configuration reloaded");
    }
}

impl Daemon {
    /// Neighbours added, removed or with new emulation. (Until the node can add and remove
    /// links at run time, only emulation changes apply.)
    fn reload_neighbors(&mut self, new: &DaemonConfig) -> Vec<String> {
        let old = &self.cfg.node.neighbors;
        let added = new
            .node
            .neighbors
            .iter()
            .filter(|n| !old.iter().any(|o| o.addr == n.addr))
            .count();
        let removed = old
            .iter()
            .filter(|o| !new.node.neighbors.iter().any(|n| n.addr == o.addr))
            .count();
        if added + removed > 0 {
            warn!(added, removed, "reload: neighbour changes need a restart");
        }
        Vec::new()
    }
}
