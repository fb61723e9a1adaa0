//! The accept backlog of shimmed listeners, sans-I/O.
//!
//! An overlay session to a shimmed listener reaches the application as a kernel connection
//! the daemon makes to the listener from its proxy address (`io/listeners.rs`); `accept` in
//! the application claims the session by that connection's port. The listener's kernel
//! accept queue holds `backlog + 1` connections (the `listen()` argument, capped at
//! `somaxconn`); a connection attempt beyond that has its SYN dropped and retried by the
//! kernel after 1, 3, 7, 15 … s, so a burst of sessions injected at once made most of them
//! wait seconds for a retransmitted SYN, and some longer than their client would.
//!
//! [`Backlogs`] paces the injections instead: at most `backlog + 1` sessions of a port are
//! injected and not yet claimed (never more than the kernel queue takes, so no SYN is
//! dropped); the others wait here in arrival order, like connections in a kernel's SYN
//! queue, bounded ([`MAX_HELD`] per port) and counted. A claim, an injected connection the
//! application dropped unclaimed, or a failed injection frees a slot and the oldest waiting
//! session goes next. Nothing is dropped silently: every session that leaves without being
//! claimed does so by an [`Action::Abort`] whose [`AbortReason`] is counted.

use crate::overlay::SessionId;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use weft_core::Instant;

/// Sessions of one port that may wait for a free slot (the kernel's `tcp_max_syn_backlog`
/// is of this order); one more is refused, counted as `overflowed`.
pub const MAX_HELD: usize = 1024;
/// A session the application has not accepted within this long (waiting or injected) is
/// given up, counted as `expired`.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(120);
/// The kernel's default `somaxconn`: the largest window a port gets.
pub const MAX_BACKLOG: u32 = 4096;

/// Why a session leaves without being claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// [`MAX_HELD`] sessions were already waiting.
    Overflow,
    /// Not claimed within [`CLAIM_TIMEOUT`].
    Expired,
    /// The port's last listener went away with the session still waiting.
    ListenerGone,
    /// The application closed the injected connection without claiming it (its listener
    /// closed with the connection in its queue, as a kernel resets it).
    Abandoned,
    /// The connection to the application's listener could not be made.
    InjectFailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Connect to the application's listener for this session now, then report the proxy
    /// port with [`Backlogs::injected`] (or the failure with [`Backlogs::inject_failed`]).
    Inject { port: u16, session: SessionId },
    /// Give the session up. `proxy_port`: the injected connection standing for it, to close.
    Abort {
        session: SessionId,
        proxy_port: Option<u16>,
        reason: AbortReason,
    },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BacklogCounters {
    /// Sessions that found the window full and waited for a slot.
    pub held: u64,
    /// Connections made to applications' listeners.
    pub injected: u64,
    /// Sessions an application accepted.
    pub claimed: u64,
    /// Sessions refused because [`MAX_HELD`] were waiting.
    pub overflowed: u64,
    pub expired: u64,
    pub listener_gone: u64,
    pub abandoned: u64,
    pub inject_failed: u64,
    /// Most sessions of one port waiting at once.
    pub max_waiting: u64,
    /// Segments the kernel retransmitted on injected connections before they were claimed
    /// (a SYN a full accept queue dropped): pacing keeps this at 0 unless other clients of
    /// the same listener fill its queue.
    pub syn_retransmits: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    session: SessionId,
    /// `None` between [`Action::Inject`] and the I/O layer's report.
    proxy_port: Option<u16>,
    since: Instant,
}

#[derive(Debug, Default)]
struct Port {
    window: usize,
    waiting: VecDeque<(SessionId, Instant)>,
    slots: Vec<Slot>,
}

#[derive(Debug, Default)]
pub struct Backlogs {
    ports: HashMap<u16, Port>,
    /// Every session held here, by the port it waits on.
    port_of: HashMap<SessionId, u16>,
    counters: BacklogCounters,
}

/// The window for a `listen()` backlog as the kernel applies it: capped at [`MAX_BACKLOG`],
/// and the accept queue holds one more than the backlog.
fn window_of(backlog: u32) -> usize {
    backlog.min(MAX_BACKLOG) as usize + 1
}

impl Backlogs {
    pub fn counters(&self) -> BacklogCounters {
        self.counters
    }

    /// Sessions waiting for a slot on `port` and sessions injected there, not yet claimed.
    pub fn depth(&self, port: u16) -> (usize, usize) {
        self.ports
            .get(&port)
            .map_or((0, 0), |p| (p.waiting.len(), p.slots.len()))
    }

    /// A listener (re)registered `port` with this `listen()` backlog. A larger window lets
    /// waiting sessions go at once.
    pub fn set_backlog(&mut self, port: u16, backlog: u32, actions: &mut Vec<Action>) {
        self.ports.entry(port).or_default().window = window_of(backlog);
        self.refill(port, actions);
    }

    /// An established session for a shimmed listener on `port`: injected now or held.
    pub fn incoming(
        &mut self,
        now: Instant,
        port: u16,
        session: SessionId,
        actions: &mut Vec<Action>,
    ) {
        let p = self.ports.entry(port).or_insert_with(|| Port {
            window: window_of(0),
            ..Port::default()
        });
        if p.waiting.is_empty() && p.slots.len() < p.window {
            p.slots.push(Slot {
                session,
                proxy_port: None,
                since: now,
            });
            self.port_of.insert(session, port);
            actions.push(Action::Inject { port, session });
            return;
        }
        if p.waiting.len() >= MAX_HELD {
            self.counters.overflowed += 1;
            actions.push(Action::Abort {
                session,
                proxy_port: None,
                reason: AbortReason::Overflow,
            });
            return;
        }
        p.waiting.push_back((session, now));
        self.counters.held += 1;
        self.counters.max_waiting = self.counters.max_waiting.max(p.waiting.len() as u64);
        self.port_of.insert(session, port);
    }

    /// The connection for an [`Action::Inject`] is on its way, from `proxy_port`.
    pub fn injected(&mut self, session: SessionId, proxy_port: u16) {
        let Some(slot) = self.slot_mut(session) else {
            return;
        };
        slot.proxy_port = Some(proxy_port);
        self.counters.injected += 1;
    }

    /// What the kernel retransmitted on a claimed connection (its `TCP_INFO`).
    pub fn note_retransmits(&mut self, n: u32) {
        self.counters.syn_retransmits += u64::from(n);
    }

    /// The connection for an [`Action::Inject`] could not be made: the session is aborted
    /// and its slot goes to the next.
    pub fn inject_failed(&mut self, session: SessionId, actions: &mut Vec<Action>) {
        let Some(port) = self.take_slot(|s| s.session == session) else {
            return;
        };
        self.counters.inject_failed += 1;
        actions.push(Action::Abort {
            session,
            proxy_port: None,
            reason: AbortReason::InjectFailed,
        });
        self.refill(port, actions);
    }

    /// `accept` in the application claimed the connection from `proxy_port`: its session,
    /// if it is one of ours.
    pub fn claimed(&mut self, proxy_port: u16, actions: &mut Vec<Action>) -> Option<SessionId> {
        let session = self.slot_by_proxy(proxy_port)?;
        let port = self.take_slot(|s| s.session == session)?;
        self.counters.claimed += 1;
        self.refill(port, actions);
        Some(session)
    }

    /// The application closed the connection from `proxy_port` without claiming it.
    pub fn abandoned(&mut self, proxy_port: u16, actions: &mut Vec<Action>) {
        let Some(session) = self.slot_by_proxy(proxy_port) else {
            return;
        };
        let Some(port) = self.take_slot(|s| s.session == session) else {
            return;
        };
        self.counters.abandoned += 1;
        actions.push(Action::Abort {
            session,
            proxy_port: Some(proxy_port),
            reason: AbortReason::Abandoned,
        });
        self.refill(port, actions);
    }

    /// The session ended by itself (its client reset it, say): it no longer waits or holds
    /// a slot. Returns the proxy port of its injected connection, if it had one.
    pub fn forget(&mut self, session: SessionId, actions: &mut Vec<Action>) -> Option<u16> {
        let port = *self.port_of.get(&session)?;
        let p = self.ports.get_mut(&port)?;
        if let Some(i) = p.waiting.iter().position(|(s, _)| *s == session) {
            p.waiting.remove(i);
            self.port_of.remove(&session);
            return None;
        }
        let proxy = p
            .slots
            .iter()
            .find(|s| s.session == session)
            .and_then(|s| s.proxy_port);
        self.take_slot(|s| s.session == session)?;
        self.refill(port, actions);
        proxy
    }

    /// The port has no listener any more: sessions still waiting are aborted. Injected ones
    /// stay until the application's kernel resets them (`abandoned`) or claims them.
    pub fn listener_gone(&mut self, port: u16, actions: &mut Vec<Action>) {
        let Some(p) = self.ports.get_mut(&port) else {
            return;
        };
        for (session, _) in std::mem::take(&mut p.waiting) {
            self.port_of.remove(&session);
            self.counters.listener_gone += 1;
            actions.push(Action::Abort {
                session,
                proxy_port: None,
                reason: AbortReason::ListenerGone,
            });
        }
        if p.slots.is_empty() {
            self.ports.remove(&port);
        }
    }

    /// The earliest moment a held session expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ports
            .values()
            .flat_map(|p| {
                let first_waiting = p.waiting.front().map(|(_, t)| *t);
                let oldest_slot = p.slots.iter().map(|s| s.since).min();
                first_waiting.into_iter().chain(oldest_slot)
            })
            .min()
            .map(|t| t + CLAIM_TIMEOUT)
    }

    /// Sessions not claimed within [`CLAIM_TIMEOUT`] are aborted.
    pub fn handle_timeout(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let due = |since: Instant| since + CLAIM_TIMEOUT <= now;
        let ports: Vec<u16> = self.ports.keys().copied().collect();
        for port in ports {
            let Some(p) = self.ports.get_mut(&port) else {
                continue;
            };
            let mut gone: Vec<(SessionId, Option<u16>)> = Vec::new();
            p.slots.retain(|s| {
                let keep = !due(s.since);
                if !keep {
                    gone.push((s.session, s.proxy_port));
                }
                keep
            });
            while p.waiting.front().is_some_and(|(_, t)| due(*t)) {
                if let Some((s, _)) = p.waiting.pop_front() {
                    gone.push((s, None));
                }
            }
            for (session, proxy_port) in gone {
                self.port_of.remove(&session);
                self.counters.expired += 1;
                actions.push(Action::Abort {
                    session,
                    proxy_port,
                    reason: AbortReason::Expired,
                });
            }
            self.refill(port, actions);
        }
    }

    fn slot_mut(&mut self, session: SessionId) -> Option<&mut Slot> {
        let port = *self.port_of.get(&session)?;
        self.ports
            .get_mut(&port)?
            .slots
            .iter_mut()
            .find(|s| s.session == session)
    }

    fn slot_by_proxy(&self, proxy_port: u16) -> Option<SessionId> {
        self.ports
            .values()
            .flat_map(|p| p.slots.iter())
            .find(|s| s.proxy_port == Some(proxy_port))
            .map(|s| s.session)
    }

    /// Removes the first slot matching `f`; returns its port.
    fn take_slot(&mut self, f: impl Fn(&Slot) -> bool) -> Option<u16> {
        for (&port, p) in self.ports.iter_mut() {
            if let Some(i) = p.slots.iter().position(&f) {
                let slot = p.slots.swap_remove(i);
                self.port_of.remove(&slot.session);
                return Some(port);
            }
        }
        None
    }

    /// Hands free slots of `port` to the oldest waiting sessions.
    fn refill(&mut self, port: u16, actions: &mut Vec<Action>) {
        let Some(p) = self.ports.get_mut(&port) else {
            return;
        };
        while p.slots.len() < p.window {
            let Some((session, since)) = p.waiting.pop_front() else {
                break;
            };
            p.slots.push(Slot {
                session,
                proxy_port: None,
                since,
            });
            actions.push(Action::Inject { port, session });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ms: u64) -> Instant {
        Instant::from_micros(ms * 1_000)
    }

    fn injects(actions: &[Action]) -> Vec<SessionId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Inject { session, .. } => Some(*session),
                Action::Abort { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_burst_is_injected_a_window_at_a_time_in_arrival_order() {
        let mut b = Backlogs::default();
        let mut a = Vec::new();
        b.set_backlog(80, 5, &mut a);
        assert!(a.is_empty());
        for s in 1..=100 {
            b.incoming(t(0), 80, s, &mut a);
        }
        // The kernel's queue takes backlog + 1: exactly that many connect at once.
        assert_eq!(injects(&a), (1..=6).collect::<Vec<_>>());
        assert_eq!(b.depth(80), (94, 6));
        for (i, s) in (1..=6).enumerate() {
            b.injected(s, 40_000 + i as u16);
        }
        let mut claimed = Vec::new();
        let mut next_proxy = 40_006u16;
        let mut pending: VecDeque<(SessionId, u16)> =
            (1..=6).map(|s| (s, 40_000 + s as u16 - 1)).collect();
        while let Some((s, proxy)) = pending.pop_front() {
            let mut a = Vec::new();
            assert_eq!(b.claimed(proxy, &mut a), Some(s));
            claimed.push(s);
            for n in injects(&a) {
                b.injected(n, next_proxy);
                pending.push_back((n, next_proxy));
                next_proxy += 1;
            }
            let (waiting, slots) = b.depth(80);
            assert!(slots <= 6, "never more in flight than the queue holds");
            assert_eq!(waiting + slots + claimed.len(), 100);
        }
        assert_eq!(claimed, (1..=100).collect::<Vec<_>>());
        let c = b.counters();
        assert_eq!(
            (c.held, c.injected, c.claimed, c.overflowed),
            (94, 100, 100, 0)
        );
        assert_eq!(c.max_waiting, 94);
        assert_eq!(b.depth(80), (0, 0));
    }

    #[test]
    fn overflow_expiry_and_a_gone_listener_are_aborts_that_count() {
        let mut b = Backlogs::default();
        let mut a = Vec::new();
        b.set_backlog(80, 0, &mut a);
        for s in 0..(MAX_HELD as u64 + 2) {
            b.incoming(t(0), 80, s, &mut a);
        }
        // One injected (backlog 0 still queues one), MAX_HELD waiting, one refused.
        assert_eq!(injects(&a), vec![0]);
        assert_eq!(
            a.last(),
            Some(&Action::Abort {
                session: MAX_HELD as u64 + 1,
                proxy_port: None,
                reason: AbortReason::Overflow
            })
        );
        assert_eq!(b.counters().overflowed, 1);
        b.injected(0, 1000);
        assert_eq!(b.poll_timeout(), Some(t(0) + CLAIM_TIMEOUT));
        let mut a = Vec::new();
        b.handle_timeout(t(1), &mut a);
        assert!(a.is_empty(), "nothing is due yet");
        b.handle_timeout(t(0) + CLAIM_TIMEOUT, &mut a);
        assert_eq!(b.counters().expired, MAX_HELD as u64 + 1);
        assert!(a.contains(&Action::Abort {
            session: 0,
            proxy_port: Some(1000),
            reason: AbortReason::Expired
        }));
        assert_eq!(b.depth(80), (0, 0));
        // Sessions waiting when the listener goes are aborted; injected ones wait for the
        // application's kernel to reset them.
        let mut a = Vec::new();
        for s in 10..13 {
            b.incoming(t(5), 80, s, &mut a);
        }
        b.injected(10, 2000);
        b.listener_gone(80, &mut a);
        assert_eq!(b.counters().listener_gone, 2);
        assert_eq!(b.depth(80), (0, 1));
        let mut a = Vec::new();
        b.abandoned(2000, &mut a);
        assert_eq!(
            a,
            vec![Action::Abort {
                session: 10,
                proxy_port: Some(2000),
                reason: AbortReason::Abandoned
            }]
        );
    }

    #[test]
    fn a_failed_injection_or_a_forgotten_session_passes_the_slot_on() {
        let mut b = Backlogs::default();
        let mut a = Vec::new();
        b.set_backlog(7, 0, &mut a);
        for s in 1..=4 {
            b.incoming(t(0), 7, s, &mut a);
        }
        assert_eq!(injects(&a), vec![1]);
        let mut a = Vec::new();
        b.inject_failed(1, &mut a);
        assert_eq!(injects(&a), vec![2]);
        b.injected(2, 9);
        // A waiting session that ends leaves the queue; an injected one frees its slot.
        let mut a = Vec::new();
        assert_eq!(b.forget(3, &mut a), None);
        assert!(a.is_empty());
        assert_eq!(b.forget(2, &mut a), Some(9));
        assert_eq!(injects(&a), vec![4]);
        // A larger backlog lets more go at once.
        for s in 5..=8 {
            b.incoming(t(0), 7, s, &mut a);
        }
        let mut a = Vec::new();
        b.set_backlog(7, 3, &mut a);
        assert_eq!(injects(&a), vec![5, 6, 7]);
        assert_eq!(b.claimed(12345, &mut a), None, "not one of ours");
    }

    proptest! {
        /// Whatever happens in whatever order, no port has more sessions in flight than its
        /// window, and every session is claimed, aborted with a reason or still held: none
        /// vanishes.
        #[test]
        fn sessions_are_conserved(ops in proptest::collection::vec((0u8..7, 0u64..40, 0u16..4), 1..300)) {
            let mut b = Backlogs::default();
            let mut next = 0u64;
            let mut live: Vec<SessionId> = Vec::new();
            let mut proxies: HashMap<u16, SessionId> = HashMap::new();
            let mut next_proxy = 1u16;
            let mut done = 0u64;
            let mut now = t(0);
            let mut a = Vec::new();
            for (op, x, port) in ops {
                match op {
                    0 | 1 => { next += 1; live.push(next); b.incoming(now, port, next, &mut a); }
                    2 => b.set_backlog(port, x as u32 % 4, &mut a),
                    3 => if let Some((&p, _)) = proxies.iter().nth(x as usize % proxies.len().max(1)) {
                        if b.claimed(p, &mut a).is_some() { done += 1; }
                        proxies.remove(&p);
                    },
                    4 => if let Some((&p, _)) = proxies.iter().nth(x as usize % proxies.len().max(1)) {
                        b.abandoned(p, &mut a);
                        proxies.remove(&p);
                    },
                    5 => b.listener_gone(port, &mut a),
                    _ => { now += Duration::from_secs(x * 4); b.handle_timeout(now, &mut a); }
                }
                for act in std::mem::take(&mut a) {
                    match act {
                        Action::Inject { session, .. } => {
                            if x % 5 == 0 {
                                b.inject_failed(session, &mut a);
                            } else {
                                b.injected(session, next_proxy);
                                proxies.insert(next_proxy, session);
                                next_proxy = next_proxy.wrapping_add(1).max(1);
                            }
                        }
                        Action::Abort { session, proxy_port, .. } => {
                            done += 1;
                            if let Some(p) = proxy_port { proxies.remove(&p); }
                            live.retain(|s| *s != session);
                        }
                    }
                }
                // Follow-up actions of failed injections.
                for act in std::mem::take(&mut a) {
                    if let Action::Abort { .. } = act { done += 1; }
                    if let Action::Inject { session, .. } = act {
                        b.injected(session, next_proxy);
                        proxies.insert(next_proxy, session);
                        next_proxy = next_proxy.wrapping_add(1).max(1);
                    }
                }
                for (&port, p) in &b.ports {
                    // Windows here are 1..=4 (a lowered backlog keeps what is in flight).
                    prop_assert!(p.slots.len() <= 4, "port {} over its window", port);
                }
            }
            let held: usize = b.ports.values().map(|p| p.waiting.len() + p.slots.len()).sum();
            prop_assert_eq!(held as u64 + done, next);
            prop_assert_eq!(b.port_of.len(), held);
        }
    }
}
