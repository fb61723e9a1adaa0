//! Origin authentication of flooded state. In a secure overlay every link-state advert carries
//! its origin's public key and Ed25519 signature, every membership record its origin's
//! signature; every receiver checks them before the record touches its databases, so a relay
//! cannot alter a record and no node can speak for another.
//!
//! Which key may speak for a node id (the trust model):
//! - With an admitted list (`admitted_keys`): exactly the key it lists. Records of unlisted
//!   nodes, or signed with any other key, are refused: neither a relay nor an authenticated
//!   neighbour can forge, alter or invent a node.
//! - Without one (per-neighbour keys only): a neighbour's id is bound to the key its link
//!   authenticated; any other node's id is bound to the key carried in the first valid advert
//!   for it (trust on first use, along authenticated links), and from then on only that key
//!   may speak for it. Outsiders and relays still cannot forge or alter anything, but a
//!   malicious authenticated neighbour could introduce made-up nodes or be the first to claim
//!   an unseen id: overlays whose members do not all trust each other use the admitted list.
//!
//! Bindings last for the daemon's lifetime (a node that changes its key is re-admitted by
//! restarting its peers or listing the new key).

use crate::overlay::wire::LinkStateAdvert;
use ahash::AHashMap as HashMap;
use serde::Serialize;
use std::sync::Arc;
use weft_core::NodeId;
use weft_multicast::MembershipRecord;
use weft_secure::{domain, Admitted, PublicKey, SecretKey};
use weft_services::ServiceRecord;

/// What signs and checks flooded state (absent in an insecure overlay).
#[derive(Debug, Clone)]
pub struct TrustConfig {
    pub identity: Arc<SecretKey>,
    pub admitted: Option<Arc<Admitted>>,
}

/// Flooded records refused for their origin's signature.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct TrustCounters {
    /// No signature in a secure overlay.
    pub unsigned: u64,
    /// The signature does not verify.
    pub bad_signature: u64,
    /// The origin is not in the admitted list, or signs with a key the list does not give it.
    pub unadmitted: u64,
    /// Signed with a key other than the one already bound to the origin.
    pub key_conflict: u64,
    /// A membership record from an origin whose key is not known yet (its advert comes first).
    pub unknown_origin: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Unsigned,
    BadSignature,
    Unadmitted,
    KeyConflict,
    UnknownOrigin,
}

#[derive(Debug)]
pub struct Trust {
    local: NodeId,
    cfg: Option<TrustConfig>,
    bound: HashMap<NodeId, PublicKey>,
    counters: TrustCounters,
}

impl Trust {
    pub fn new(local: NodeId, cfg: Option<TrustConfig>) -> Self {
        Trust {
            local,
            cfg,
            bound: HashMap::new(),
            counters: TrustCounters::default(),
        }
    }

    pub fn is_secure(&self) -> bool {
        self.cfg.is_some()
    }

    /// A reloaded admitted list: records are checked against it from now on (what was
    /// accepted before stays until it ages out or is replaced).
    pub fn set_admitted(&mut self, admitted: Option<Arc<Admitted>>) {
        if let Some(cfg) = self.cfg.as_mut() {
            cfg.admitted = admitted;
        }
    }

    pub fn counters(&self) -> TrustCounters {
        self.counters
    }

    /// The key that may speak for `node`, if one is known.
    pub fn key_for(&self, node: NodeId) -> Option<PublicKey> {
        let cfg = self.cfg.as_ref()?;
        if node == self.local {
            return Some(cfg.identity.public());
        }
        match &cfg.admitted {
            Some(a) => a.get(&node).copied(),
            None => self.bound.get(&node).copied(),
        }
    }

    /// A neighbour's link authenticated `key` for `node`: the strongest evidence there is, so
    /// it replaces a binding learned from an advert (counted when they differ).
    pub fn bind_neighbor(&mut self, node: NodeId, key: PublicKey) {
        if node == self.local || self.cfg.as_ref().is_none_or(|c| c.admitted.is_some()) {
            return;
        }
        if let Some(old) = self.bound.insert(node, key) {
            if old != key {
                self.counters.key_conflict += 1;
            }
        }
    }

    fn refuse(&mut self, r: Refused) -> Result<(), Refused> {
        let c = &mut self.counters;
        match r {
            Refused::Unsigned => c.unsigned += 1,
            Refused::BadSignature => c.bad_signature += 1,
            Refused::Unadmitted => c.unadmitted += 1,
            Refused::KeyConflict => c.key_conflict += 1,
            Refused::UnknownOrigin => c.unknown_origin += 1,
        }
        Err(r)
    }

    /// Whether a received advert may be believed; binds its origin's key on first use.
    pub fn check_advert(&mut self, advert: &LinkStateAdvert) -> Result<(), Refused> {
        let Some(cfg) = &self.cfg else { return Ok(()) };
        let Some(proof) = &advert.proof else {
            return self.refuse(Refused::Unsigned);
        };
        let expected = if advert.origin == self.local {
            Some(cfg.identity.public())
        } else if let Some(a) = &cfg.admitted {
            match a.get(&advert.origin) {
                Some(k) => Some(*k),
                None => return self.refuse(Refused::Unadmitted),
            }
        } else {
            self.bound.get(&advert.origin).copied()
        };
        if let Some(k) = expected {
            if k != proof.key {
                return self.refuse(if cfg.admitted.is_some() {
                    Refused::Unadmitted
                } else {
                    Refused::KeyConflict
                });
            }
        }
        if !proof
            .key
            .verify(domain::LINK_STATE, &advert.signed_body(), &proof.signature)
        {
            return self.refuse(Refused::BadSignature);
        }
        if expected.is_none() {
            self.bound.insert(advert.origin, proof.key);
        }
        Ok(())
    }

    pub fn check_membership(&mut self, record: &MembershipRecord) -> Result<(), Refused> {
        self.check_signed(record.origin(), record.signature().is_some(), |k| {
            record.verify(k)
        })
    }

    /// A service record (issue 20): its origin's signature, checked like a membership record's.
    pub fn check_service(&mut self, record: &ServiceRecord) -> Result<(), Refused> {
        self.check_signed(record.origin, record.signature.is_some(), |k| {
            record.verify(k)
        })
    }

    /// A record signed by its origin (not an advert: its key comes from the advert or the
    /// admitted list, never from the record itself).
    fn check_signed(
        &mut self,
        origin: NodeId,
        signed: bool,
        verify: impl FnOnce(&PublicKey) -> bool,
    ) -> Result<(), Refused> {
        if self.cfg.is_none() {
            return Ok(());
        }
        if !signed {
            return self.refuse(Refused::Unsigned);
        }
        let Some(key) = self.key_for(origin) else {
            let admitted = self.cfg.as_ref().is_some_and(|c| c.admitted.is_some());
            return self.refuse(if admitted {
                Refused::Unadmitted
            } else {
                Refused::UnknownOrigin
            });
        };
        if !verify(&key) {
            return self.refuse(Refused::BadSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_multicast::{Membership, Version};

    fn n(i: u8) -> NodeId {
        NodeId(u32::from_be_bytes([127, 0, 0, i]))
    }

    fn signed(key: &SecretKey, origin: NodeId, seq: u64) -> LinkStateAdvert {
        let mut a = LinkStateAdvert::new(origin, seq, vec![(n(9), 1)]);
        a.sign(key);
        a
    }

    fn trust(me: &Arc<SecretKey>, admitted: Option<Admitted>) -> Trust {
        Trust::new(
            n(1),
            Some(TrustConfig {
                identity: me.clone(),
                admitted: admitted.map(Arc::new),
            }),
        )
    }

    #[test]
    fn first_key_binds_and_nobody_else_may_speak_for_the_node() {
        let me = Arc::new(SecretKey::generate());
        let (alice, mallory) = (SecretKey::generate(), SecretKey::generate());
        let mut t = trust(&me, None);
        assert_eq!(t.check_advert(&signed(&alice, n(2), 1)), Ok(()));
        assert_eq!(t.key_for(n(2)), Some(alice.public()));
        assert_eq!(
            t.check_advert(&signed(&mallory, n(2), 2)),
            Err(Refused::KeyConflict)
        );
        assert_eq!(
            t.check_advert(&signed(&mallory, n(1), 2)),
            Err(Refused::KeyConflict),
            "nor for us"
        );
        let mut altered = signed(&alice, n(2), 3);
        altered.links.push((n(7), 1));
        assert_eq!(t.check_advert(&altered), Err(Refused::BadSignature));
        assert_eq!(
            t.check_advert(&LinkStateAdvert::new(n(3), 1, vec![])),
            Err(Refused::Unsigned)
        );
        let c = t.counters();
        assert_eq!((c.key_conflict, c.bad_signature, c.unsigned), (2, 1, 1));
        // Our own adverts verify.
        let mut own = LinkStateAdvert::new(n(1), 5, vec![]);
        own.sign(&me);
        assert_eq!(t.check_advert(&own), Ok(()));
    }

    #[test]
    fn the_admitted_list_is_the_only_source_of_keys() {
        let me = Arc::new(SecretKey::generate());
        let alice = SecretKey::generate();
        let list: Admitted = [(n(1), me.public()), (n(2), alice.public())].into();
        let mut t = trust(&me, Some(list));
        assert_eq!(t.check_advert(&signed(&alice, n(2), 1)), Ok(()));
        let stranger = SecretKey::generate();
        assert_eq!(
            t.check_advert(&signed(&stranger, n(3), 1)),
            Err(Refused::Unadmitted)
        );
        assert_eq!(
            t.check_advert(&signed(&stranger, n(2), 1)),
            Err(Refused::Unadmitted)
        );
        let rec = MembershipRecord::new(
            n(2),
            NodeId(u32::from_be_bytes([239, 1, 1, 1])),
            Version::new(1, 1),
            Membership::Absent,
        )
        .expect("valid");
        assert_eq!(t.check_membership(&rec), Err(Refused::Unsigned));
        assert_eq!(
            t.check_membership(&rec.clone().signed(&stranger)),
            Err(Refused::BadSignature)
        );
        assert_eq!(t.check_membership(&rec.signed(&alice)), Ok(()));
    }

    #[test]
    fn insecure_overlays_check_nothing() {
        let mut t = Trust::new(n(1), None);
        assert_eq!(
            t.check_advert(&LinkStateAdvert::new(n(2), 1, vec![])),
            Ok(())
        );
        let rec = MembershipRecord::new(
            n(2),
            NodeId(u32::from_be_bytes([239, 1, 1, 1])),
            weft_multicast::Version::new(1, 1),
            weft_multicast::Membership::Absent,
        )
        .expect("valid");
        assert_eq!(t.check_membership(&rec), Ok(()));
    }
}

#[cfg(test)]
mod service_tests {
    use super::*;
    use weft_services::{Entry, Version};

    fn n(i: u8) -> NodeId {
        NodeId(u32::from_be_bytes([127, 0, 0, i]))
    }

    #[test]
    fn service_records_need_their_origins_signature() {
        let me = Arc::new(SecretKey::generate());
        let (alice, mallory) = (SecretKey::generate(), SecretKey::generate());
        let list: Admitted = [(n(1), me.public()), (n(2), alice.public())].into();
        let mut t = Trust::new(
            n(1),
            Some(TrustConfig {
                identity: me.clone(),
                admitted: Some(Arc::new(list)),
            }),
        );
        let rec = |origin| ServiceRecord {
            origin,
            version: Version { epoch: 1, seq: 1 },
            entries: vec![Entry {
                address: NodeId(u32::from_be_bytes([10, 9, 0, 1])),
                claimed: true,
            }],
            signature: None,
        };
        assert_eq!(t.check_service(&rec(n(2))), Err(Refused::Unsigned));
        assert_eq!(t.check_service(&rec(n(2)).signed(&alice)), Ok(()));
        assert_eq!(
            t.check_service(&rec(n(2)).signed(&mallory)),
            Err(Refused::BadSignature),
            "nobody else may claim an address for node 2"
        );
        assert_eq!(
            t.check_service(&rec(n(3)).signed(&mallory)),
            Err(Refused::Unadmitted)
        );
        let mut altered = rec(n(2)).signed(&alice);
        altered.entries[0].claimed = false;
        assert_eq!(t.check_service(&altered), Err(Refused::BadSignature));
        assert_eq!(t.check_service(&rec(n(1)).signed(&me)), Ok(()));
        // An insecure overlay takes records as they come.
        let mut open = Trust::new(n(1), None);
        assert_eq!(open.check_service(&rec(n(2))), Ok(()));
    }
}
