//! `Services`: one node's view of every service address (sans-I/O). Inputs: this node's
//! listening ports, the live nodes of its connected component (from routing), the service
//! records other nodes flooded, and `now`. Outputs: the owner of each address, the changes
//! (with why they happened), and this node's own record whenever it must be flooded.

use crate::assign::{self, Candidate};
use crate::record::{Entry, ServiceRecord, Version};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use weft_core::{DecodeError, Instant, NodeId};

/// A stable period of this long with a better-balanced owner available moves the address to
/// it (a handover: sessions already open stay where they are).
pub const DEFAULT_STABLE_PERIOD: Duration = Duration::from_secs(30);

/// An owner claims its address after holding it this long unclaimed (the daemon uses its
/// dead interval plus a hello: what a restarted node needs to link up and receive its
/// neighbours' records). A node that has just started, alone, does not claim what another
/// holds: when it links up it finds the claim and the address stays put.
pub const DEFAULT_CLAIM_HOLD: Duration = Duration::from_millis(500);

/// One configured service address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub address: NodeId,
    /// Nodes that may serve it; empty: any node with a listener that serves it.
    pub nodes: Vec<NodeId>,
    /// Ports whose listeners serve it; empty: any listening port.
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone)]
pub struct ServicesConfig {
    pub local: NodeId,
    /// Grows across runs of the node, so this run's record supersedes the last one's.
    pub epoch: u64,
    pub services: Vec<ServiceConfig>,
    pub stable_period: Duration,
    pub claim_hold: Duration,
}

/// Why an address changed owner (in this node's view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeReason {
    /// It had no owner.
    Assigned,
    /// The old owner died, left the component or stopped serving it.
    OwnerGone,
    /// Two owners met (components merged): the old one lost and gives it up.
    Superseded,
    /// The old owner handed it over for balance; it still serves what it has open.
    Handover,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerChange {
    pub address: NodeId,
    pub old: Option<NodeId>,
    pub new: Option<NodeId>,
    pub reason: ChangeReason,
}

impl OwnerChange {
    /// Sessions opened to the old owner through the address must be reset: it is gone, or it
    /// lost a merge. A handover keeps them (the old owner still serves them).
    pub fn resets_sessions(&self) -> bool {
        matches!(
            self.reason,
            ChangeReason::OwnerGone | ChangeReason::Superseded
        )
    }
}

/// What to do with a record a neighbour sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Installed: flood it on to every neighbour but the sender.
    Flood(ServiceRecord),
    /// We hold a newer version: send it back to the sender.
    Reply(ServiceRecord),
    /// Our own record came back newer than ours (an earlier run): ours now outranks it and
    /// goes to everyone.
    FloodAll(ServiceRecord),
    Nothing,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceStatus {
    pub address: NodeId,
    pub owner: Option<NodeId>,
    /// Live nodes of this component that serve it (sorted).
    pub candidates: Vec<NodeId>,
    /// Milliseconds since the owner last changed in this node's view.
    pub since_ms: u64,
    /// This node serves it (is a candidate) / holds it.
    pub serving: bool,
    pub claimed: bool,
    /// Configured on this node (else learned from another node's record).
    pub configured: bool,
}

#[derive(Debug, Clone)]
struct View {
    owner: Option<NodeId>,
    since: Instant,
    candidates: Vec<NodeId>,
    candidates_since: Instant,
}

/// Whether a held record speaks for its origin as it is now.
///
/// A record whose origin left this component may speak for an earlier run (a restarted
/// node's old claims must not count against the owner that took over) or for the other side
/// of a partition: it is stale, counts for nothing and is handed to nobody. When its origin
/// is back, a newer version normally follows within a flood (a restarted node floods its new
/// record; every node re-floods its record when its component gains nodes); if none has come
/// within the claim hold, the record held is the current one after all (the origin only
/// seemed to leave: a routing transient while links come and go) and counts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    Fresh,
    Stale,
    /// Its origin came back at this instant.
    Returned(Instant),
}

pub struct Services {
    cfg: ServicesConfig,
    seq: u32,
    listening: BTreeSet<u16>,
    /// Addresses this node serves (a candidate with a listener) and those it claims.
    serving: BTreeSet<NodeId>,
    claimed: BTreeSet<NodeId>,
    /// Other nodes' records, each with how far it may be believed (see [`Freshness`]).
    records: BTreeMap<NodeId, (ServiceRecord, Freshness)>,
    /// The latest `now` any input carried.
    clock: Instant,
    /// Live nodes of this component other than this one.
    live: BTreeSet<NodeId>,
    /// Nodes that were live here and left (died or were partitioned away): they may hold an
    /// older record of ours, so their return is what makes us re-flood ours.
    departed: BTreeSet<NodeId>,
    /// Whether this run's record has gone out since the component first had other nodes:
    /// until it has, a stale record of our previous run elsewhere would count on our return.
    announced: bool,
    views: BTreeMap<NodeId, View>,
    changes: VecDeque<OwnerChange>,
    /// Our record changed and has not been taken for flooding.
    own_dirty: bool,
    malformed: u64,
}

impl Services {
    pub fn new(cfg: ServicesConfig, now: Instant) -> Self {
        let mut s = Services {
            seq: 0,
            listening: BTreeSet::new(),
            serving: BTreeSet::new(),
            claimed: BTreeSet::new(),
            records: BTreeMap::new(),
            clock: now,
            live: BTreeSet::new(),
            departed: BTreeSet::new(),
            announced: false,
            views: BTreeMap::new(),
            changes: VecDeque::new(),
            own_dirty: false,
            malformed: 0,
            cfg,
        };
        s.recompute(now);
        s
    }

    pub fn config(&self) -> &ServicesConfig {
        &self.cfg
    }

    // ----- inputs -------------------------------------------------------------------------

    /// The ports local listeners accept on.
    pub fn set_listening(&mut self, now: Instant, ports: impl IntoIterator<Item = u16>) {
        self.listening = ports.into_iter().collect();
        let local = self.cfg.local;
        let serving: BTreeSet<NodeId> = self
            .cfg
            .services
            .iter()
            .filter(|s| s.nodes.is_empty() || s.nodes.contains(&local))
            .filter(|s| {
                if s.ports.is_empty() {
                    !self.listening.is_empty()
                } else {
                    s.ports.iter().any(|p| self.listening.contains(p))
                }
            })
            .map(|s| s.address)
            .collect();
        if serving != self.serving {
            self.serving = serving;
            self.bump();
        }
        self.recompute(now);
    }

    /// The nodes of this node's connected component (routing's reachable set; this node
    /// itself is always live).
    pub fn set_live(&mut self, now: Instant, live: impl IntoIterator<Item = NodeId>) {
        let local = self.cfg.local;
        let live: BTreeSet<NodeId> = live.into_iter().filter(|&n| n != local).collect();
        if live == self.live {
            return;
        }
        // Stale: its origin was in this component and left. A record whose origin routing
        // has not shown yet (a node that has just started) stays as it came.
        self.clock = self.clock.max(now);
        for (origin, (_, fresh)) in self.records.iter_mut() {
            match (self.live.contains(origin), live.contains(origin)) {
                (true, false) => *fresh = Freshness::Stale,
                (false, true) if *fresh == Freshness::Stale => *fresh = Freshness::Returned(now),
                _ => {}
            }
        }
        self.departed.extend(self.live.difference(&live).copied());
        let returned: Vec<NodeId> = live.intersection(&self.departed).copied().collect();
        if !returned.is_empty() || (!self.announced && !live.is_empty()) {
            self.announced = true;
            // Nodes back from a partition or a restart may hold our record only as stale, or
            // an older version that says we serve what we no longer do: every node re-floods,
            // serving or not; so does a node that has just started, once. Nodes never seen
            // before need no flood of their own (they learn our record from their neighbours'
            // full sync); re-flooding for each of them made a start of n nodes cost O(n)
            // floods per node.
            for n in returned {
                self.departed.remove(&n);
            }
            self.bump();
        }
        self.live = live;
        self.recompute(now);
    }

    /// A record a neighbour flooded.
    pub fn on_record(&mut self, now: Instant, bytes: &[u8]) -> Result<RecordOutcome, DecodeError> {
        match ServiceRecord::decode(bytes) {
            Ok(rec) => Ok(self.on_decoded(now, rec)),
            Err(e) => {
                self.malformed += 1;
                Err(e)
            }
        }
    }

    /// A record a neighbour flooded, decoded.
    pub fn on_decoded(&mut self, now: Instant, rec: ServiceRecord) -> RecordOutcome {
        if rec.origin == self.cfg.local {
            let ours = self.version();
            if rec.version > ours {
                // An earlier run of ours (or a clock that went back): outrank it.
                self.cfg.epoch = rec.version.epoch;
                self.seq = rec.version.seq.saturating_add(1);
                self.own_dirty = false;
                return RecordOutcome::FloodAll(self.own_record());
            }
            if rec.version < ours {
                return RecordOutcome::Reply(self.own_record());
            }
            return RecordOutcome::Nothing;
        }
        self.clock = self.clock.max(now);
        match self.records.get(&rec.origin) {
            // A stale record may speak for an earlier run: never handed on.
            Some((held, fresh)) if held.version > rec.version => {
                return if self.believed(*fresh) {
                    RecordOutcome::Reply(held.clone())
                } else {
                    RecordOutcome::Nothing
                };
            }
            Some((held, _)) if held.version == rec.version => return RecordOutcome::Nothing,
            _ => {}
        }
        // Fresh even if routing does not show its origin yet (a node that has just started
        // hears records before adverts settle): senders hand on only records they believe,
        // and it turns stale if its origin leaves this component.
        self.records
            .insert(rec.origin, (rec.clone(), Freshness::Fresh));
        self.recompute(now);
        RecordOutcome::Flood(rec)
    }

    /// Rebalancing waits for a stable period; call at [`Services::next_deadline`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.recompute(now);
    }

    /// Forgets records of nodes routing no longer knows at all.
    pub fn retain_origins(&mut self, now: Instant, known: impl Fn(NodeId) -> bool) {
        let before = self.records.len();
        self.records.retain(|&n, _| known(n));
        self.departed.retain(|&n| known(n));
        if self.records.len() != before {
            self.recompute(now);
        }
    }

    // ----- outputs ------------------------------------------------------------------------

    /// When a rebalancing decision is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let local = self.cfg.local;
        let handovers = self.claimed.iter().filter_map(|a| {
            let v = self.views.get(a)?;
            let best = assign::preferred(*a, v.candidates.iter().copied())?;
            (best != local).then_some(v.candidates_since + self.cfg.stable_period)
        });
        let claims = self.serving.iter().filter_map(|a| {
            let v = self.views.get(a)?;
            (v.owner == Some(local) && !self.claimed.contains(a))
                .then_some(v.since + self.cfg.claim_hold)
        });
        let returns = self.records.values().filter_map(|(_, fresh)| match fresh {
            Freshness::Returned(at) if !self.believed(*fresh) => Some(*at + self.cfg.claim_hold),
            _ => None,
        });
        handovers.chain(claims).chain(returns).min()
    }

    /// Our record, if it changed since last taken: flood it to every neighbour.
    pub fn take_own_record(&mut self) -> Option<ServiceRecord> {
        std::mem::take(&mut self.own_dirty).then(|| self.own_record())
    }

    pub fn own_record(&self) -> ServiceRecord {
        ServiceRecord {
            origin: self.cfg.local,
            version: self.version(),
            entries: self
                .serving
                .iter()
                .map(|&address| Entry {
                    address,
                    claimed: self.claimed.contains(&address),
                })
                .collect(),
            signature: None,
        }
    }

    /// Every record believed (ours first), for a neighbour's full sync. Stale ones stay
    /// here: they may speak for an earlier run of their origin.
    pub fn records(&self) -> impl Iterator<Item = ServiceRecord> + '_ {
        std::iter::once(self.own_record()).chain(
            self.records
                .values()
                .filter(|(_, fresh)| self.believed(*fresh))
                .map(|(r, _)| r.clone()),
        )
    }

    fn believed(&self, fresh: Freshness) -> bool {
        match fresh {
            Freshness::Fresh => true,
            Freshness::Stale => false,
            Freshness::Returned(at) => self.clock.saturating_since(at) >= self.cfg.claim_hold,
        }
    }

    pub fn poll_change(&mut self) -> Option<OwnerChange> {
        self.changes.pop_front()
    }

    /// The owner of a service address in this node's view (`None`: not a service address,
    /// or no live candidate in this component).
    pub fn owner(&self, address: NodeId) -> Option<NodeId> {
        self.views.get(&address)?.owner
    }

    /// Is `address` a service address (configured here or served somewhere)?
    pub fn is_service(&self, address: NodeId) -> bool {
        self.views.contains_key(&address)
    }

    pub fn addresses(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.views.keys().copied()
    }

    /// This node holds `address`.
    pub fn claims(&self, address: NodeId) -> bool {
        self.claimed.contains(&address)
    }

    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    pub fn status(&self, now: Instant) -> Vec<ServiceStatus> {
        self.views
            .iter()
            .map(|(&address, v)| ServiceStatus {
                address,
                owner: v.owner,
                candidates: v.candidates.clone(),
                since_ms: now.saturating_since(v.since).as_millis() as u64,
                serving: self.serving.contains(&address),
                claimed: self.claimed.contains(&address),
                configured: self.cfg.services.iter().any(|s| s.address == address),
            })
            .collect()
    }

    // ----- the decision -------------------------------------------------------------------

    fn version(&self) -> Version {
        Version {
            epoch: self.cfg.epoch,
            seq: self.seq,
        }
    }

    fn bump(&mut self) {
        self.seq = self.seq.saturating_add(1);
        self.own_dirty = true;
    }

    /// The live candidates of every known address, with their claims.
    fn candidates(&self) -> BTreeMap<NodeId, Vec<Candidate>> {
        let mut out: BTreeMap<NodeId, Vec<Candidate>> = BTreeMap::new();
        for s in &self.cfg.services {
            out.entry(s.address).or_default();
        }
        for (rec, fresh) in self.records.values() {
            let live = self.believed(*fresh) && self.live.contains(&rec.origin);
            for e in &rec.entries {
                let list = out.entry(e.address).or_default();
                if live {
                    list.push(Candidate {
                        node: rec.origin,
                        claimed: e.claimed,
                    });
                }
            }
        }
        for &a in &self.serving {
            out.entry(a).or_default().push(Candidate {
                node: self.cfg.local,
                claimed: self.claimed.contains(&a),
            });
        }
        for list in out.values_mut() {
            list.sort_by_key(|c| c.node);
        }
        out
    }

    /// Recomputes every owner; claims what this node now owns and gives up what it does not
    /// (or hands over what a stable period says belongs elsewhere), until that settles.
    fn recompute(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        let local = self.cfg.local;
        // Each round changes only our own claims, and a claim we drop is not re-taken, so
        // this settles in two or three rounds.
        for _ in 0..4 {
            let all = self.candidates();
            self.views.retain(|a, _| all.contains_key(a));
            for (&address, list) in &all {
                let owner = assign::owner(address, list);
                let nodes: Vec<NodeId> = list.iter().map(|c| c.node).collect();
                let view = self.views.entry(address).or_insert_with(|| View {
                    owner: None,
                    since: now,
                    candidates: Vec::new(),
                    candidates_since: now,
                });
                if view.candidates != nodes {
                    view.candidates = nodes;
                    view.candidates_since = now;
                }
                if view.owner != owner {
                    let reason = match view.owner {
                        None => ChangeReason::Assigned,
                        Some(old) => match list.iter().find(|c| c.node == old) {
                            None => ChangeReason::OwnerGone,
                            Some(c) if c.claimed => ChangeReason::Superseded,
                            Some(_) => ChangeReason::Handover,
                        },
                    };
                    self.changes.push_back(OwnerChange {
                        address,
                        old: view.owner,
                        new: owner,
                        reason,
                    });
                    view.owner = owner;
                    view.since = now;
                }
            }
            let claimed: BTreeSet<NodeId> = self
                .serving
                .iter()
                .copied()
                .filter(|a| {
                    let Some(v) = self.views.get(a) else {
                        return false;
                    };
                    if v.owner != Some(local) {
                        return false;
                    }
                    if !self.claimed.contains(a)
                        && now.saturating_since(v.since) < self.cfg.claim_hold
                    {
                        return false;
                    }
                    let preferred = assign::preferred(*a, v.candidates.iter().copied());
                    let settled =
                        now.saturating_since(v.candidates_since) >= self.cfg.stable_period;
                    // Hand over to the preferred candidate once things have been stable.
                    !(self.claimed.contains(a) && preferred != Some(local) && settled)
                })
                .collect();
            if claimed == self.claimed {
                return;
            }
            self.claimed = claimed;
            self.bump();
        }
    }
}

#[cfg(test)]
mod tests;
