//! `ServiceAddresses`: the node's side of service addresses (issue 20). The decision is
//! `weft_services::Services` (sans-I/O, its own crate); this owner adds what the node needs
//! around it: records in flooding's terms, where a packet or session to a service address
//! goes (its owner), and which local sessions opened through an address must be reset when
//! the address moves (its owner died, left this component, or lost a merge).

use crate::overlay::events::SessionId;
use crate::overlay::trust::Refused;
use crate::overlay::wire::{StateId, StateKind};
use ahash::AHashMap as HashMap;
use serde::Serialize;
use std::sync::Arc;
use weft_core::{Instant, NodeId};
use weft_secure::SecretKey;
use weft_services::{RecordOutcome, ServiceRecord, ServiceStatus, Services, ServicesConfig};

pub use weft_services::{ServiceConfig, DEFAULT_STABLE_PERIOD};

/// A service record ready for flooding.
pub struct ServiceFlood {
    pub id: StateId,
    pub bytes: Vec<u8>,
}

impl ServiceFlood {
    fn of(rec: &ServiceRecord) -> Self {
        ServiceFlood {
            id: StateId {
                kind: StateKind::Service,
                origin: rec.origin,
                key: 0,
                version: rec.version.as_u128(),
            },
            bytes: rec.to_bytes(),
        }
    }
}

/// What to do with a service record a neighbour sent (flooding's vocabulary).
pub enum ServiceOutcome {
    Flood(ServiceFlood),
    Reply(ServiceFlood),
    FloodAll(ServiceFlood),
    Nothing,
}

/// Where traffic to an address goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Not a service address: a node address.
    Node(NodeId),
    /// A service address and its owner in this component.
    Owner { address: NodeId, owner: NodeId },
    /// A service address with no live candidate in this component.
    NoOwner,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ServiceCounters {
    /// Owner changes seen here.
    pub owner_changes: u64,
    /// Local sessions reset because the owner they reached died, left or lost a merge.
    pub sessions_reset: u64,
    /// Sessions and datagrams to a service address with no owner.
    pub no_owner: u64,
    pub malformed: u64,
}

pub struct ServiceAddresses {
    machine: Services,
    /// Signs our own records (secure overlays); others' records keep the signature they came
    /// with, so re-flooding and full syncs pass them on unchanged.
    signer: Option<Arc<SecretKey>>,
    /// Our latest record, signed (signing once per version, not once per neighbour).
    own_signed: Option<ServiceRecord>,
    /// Local sessions opened through a service address: (address, the owner reached).
    bound: HashMap<SessionId, (NodeId, NodeId)>,
    counters: ServiceCounters,
}

impl ServiceAddresses {
    pub fn new(cfg: ServicesConfig, signer: Option<Arc<SecretKey>>, now: Instant) -> Self {
        ServiceAddresses {
            machine: Services::new(cfg, now),
            signer,
            own_signed: None,
            bound: HashMap::new(),
            counters: ServiceCounters::default(),
        }
    }

    pub fn resolve(&mut self, dst: NodeId) -> Resolved {
        if !self.machine.is_service(dst) {
            return Resolved::Node(dst);
        }
        match self.machine.owner(dst) {
            Some(owner) => Resolved::Owner {
                address: dst,
                owner,
            },
            None => {
                self.counters.no_owner += 1;
                Resolved::NoOwner
            }
        }
    }

    /// A local session reached `owner` through `address`.
    pub fn bind(&mut self, session: SessionId, address: NodeId, owner: NodeId) {
        self.bound.insert(session, (address, owner));
    }

    /// Forgets bindings of sessions that no longer exist.
    pub fn retain_sessions(&mut self, exists: impl Fn(SessionId) -> bool) {
        self.bound.retain(|&id, _| exists(id));
    }

    pub fn set_listening(&mut self, now: Instant, ports: impl IntoIterator<Item = u16>) {
        self.machine.set_listening(now, ports);
    }

    pub fn set_live(&mut self, now: Instant, live: impl IntoIterator<Item = NodeId>) {
        self.machine.set_live(now, live);
    }

    /// A record a neighbour sent: its identity (to acknowledge) and what to do. `None`: do
    /// not acknowledge (malformed, or from an origin whose key is not known yet: its sender
    /// resends it after the origin's advert arrived).
    pub fn on_record(
        &mut self,
        now: Instant,
        bytes: &[u8],
        check: impl FnOnce(&ServiceRecord) -> Result<(), Refused>,
    ) -> Option<(StateId, ServiceOutcome)> {
        let Ok(rec) = ServiceRecord::decode(bytes) else {
            self.counters.malformed += 1;
            return None;
        };
        let id = ServiceFlood::of(&rec).id;
        match check(&rec) {
            Ok(()) => {}
            Err(Refused::UnknownOrigin) => return None,
            Err(_) => return Some((id, ServiceOutcome::Nothing)),
        }
        let outcome = match self.machine.on_decoded(now, rec) {
            RecordOutcome::Flood(r) => ServiceOutcome::Flood(self.flood_of(r)),
            RecordOutcome::Reply(r) => ServiceOutcome::Reply(self.flood_of(r)),
            RecordOutcome::FloodAll(r) => ServiceOutcome::FloodAll(self.flood_of(r)),
            RecordOutcome::Nothing => ServiceOutcome::Nothing,
        };
        Some((id, outcome))
    }

    /// A record ready to send: ours signed (secure overlays), another's as it came.
    fn flood_of(&mut self, rec: ServiceRecord) -> ServiceFlood {
        if rec.origin != self.machine.config().local {
            return ServiceFlood::of(&rec);
        }
        let Some(key) = &self.signer else {
            return ServiceFlood::of(&rec);
        };
        match &self.own_signed {
            Some(held) if *held == rec => ServiceFlood::of(held),
            _ => {
                let signed = rec.signed(key);
                let flood = ServiceFlood::of(&signed);
                self.own_signed = Some(signed);
                flood
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.machine.next_deadline().is_some_and(|at| at <= now) {
            self.machine.handle_timeout(now);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.machine.next_deadline()
    }

    pub fn retain_origins(&mut self, now: Instant, known: impl Fn(NodeId) -> bool) {
        self.machine.retain_origins(now, known);
    }

    /// Our record, if it changed: flood it to every neighbour.
    pub fn take_flood(&mut self) -> Option<ServiceFlood> {
        let rec = self.machine.take_own_record()?;
        Some(self.flood_of(rec))
    }

    /// Every record held, for a neighbour's full sync.
    pub fn full_sync(&mut self) -> Vec<ServiceFlood> {
        let records: Vec<ServiceRecord> = self.machine.records().collect();
        records.into_iter().map(|r| self.flood_of(r)).collect()
    }

    /// Owner changes since the last call: the local sessions they reset (unbound here).
    pub fn take_resets(&mut self) -> Vec<SessionId> {
        let mut reset = Vec::new();
        while let Some(change) = self.machine.poll_change() {
            self.counters.owner_changes += 1;
            tracing::info!(
                address = %change.address,
                old = ?change.old,
                new = ?change.new,
                reason = ?change.reason,
                "service owner changed"
            );
            if !change.resets_sessions() {
                continue;
            }
            let Some(old) = change.old else { continue };
            self.bound.retain(|&id, &mut (address, owner)| {
                let hit = address == change.address && owner == old;
                if hit {
                    reset.push(id);
                }
                !hit
            });
        }
        self.counters.sessions_reset += reset.len() as u64;
        reset
    }

    pub fn owner(&self, address: NodeId) -> Option<NodeId> {
        self.machine.owner(address)
    }

    pub fn claims(&self, address: NodeId) -> bool {
        self.machine.claims(address)
    }

    pub fn addresses(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.machine.addresses()
    }

    pub fn status(&self, now: Instant) -> Vec<ServiceStatus> {
        self.machine.status(now)
    }

    pub fn counters(&self) -> ServiceCounters {
        self.counters
    }
}
