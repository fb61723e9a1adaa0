//! A clean stop (SIGTERM, SIGINT): local sessions get a FIN and a grace period to finish
//! (then an RST), relaying goes on meanwhile, and the neighbours are told the node is
//! leaving, so they reroute at once instead of waiting out the dead interval. A second
//! signal skips the grace period. The daemon then exits 0.

use super::Daemon;
use std::time::{Duration, Instant};
use tracing::info;

/// How long open sessions may take to finish after their FIN before they are reset.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long the links may take to deliver the last resets before the node leaves (a leave
/// takes the links down at once, and what they still held would be lost with them).
pub const STOP_LINGER: Duration = Duration::from_millis(500);

impl Daemon {
    pub(super) fn begin_stop(&mut self) {
        let now = self.clock.now();
        if self.stopping.is_some() {
            info!("second stop signal: resetting what is left");
            self.stopping = Some(Instant::now());
            return;
        }
        let open = self.open_sessions();
        info!(
            sessions = open.len(),
            grace_ms = STOP_GRACE.as_millis() as u64,
            "stopping: closing sessions"
        );
        for id in open {
            self.node.session_shutdown(now, id);
        }
        self.stopping = Some(Instant::now() + STOP_GRACE);
        self.drain_node();
    }

    /// Sessions that have not finished both directions yet.
    fn open_sessions(&self) -> Vec<crate::overlay::SessionId> {
        self.node
            .session_summaries()
            .into_iter()
            .filter(|s| s.state != "timewait" && s.state != "closed")
            .map(|s| s.id)
            .collect()
    }

    /// Called every loop pass while stopping: once sessions are done (or the grace is over),
    /// reset the rest; once the links delivered those resets (or the linger is over), tell the
    /// neighbours and end the loop.
    pub(super) fn continue_stop(&mut self, deadline: Instant) {
        let now = self.clock.now();
        let Some(linger) = self.lingering else {
            let open = self.open_sessions();
            if !open.is_empty() && Instant::now() < deadline {
                return;
            }
            if !open.is_empty() {
                info!(
                    sessions = open.len(),
                    "grace period over: resetting sessions"
                );
            }
            for id in open {
                self.node.session_abort(now, id);
            }
            self.drain_node();
            self.flush_udp();
            self.lingering = Some(Instant::now() + STOP_LINGER);
            return;
        };
        if !self.node.links_delivered() && Instant::now() < linger {
            return;
        }
        self.node.leave(now);
        self.drain_node();
        self.flush_udp();
        info!("told the neighbours we are leaving");
        self.stop = true;
    }
}
