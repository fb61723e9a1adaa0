//! Membership records: what one node says about one group, versioned so that flooding
//! converges whatever order the records arrive in.
//!
//! Wire format (big-endian, `weft_core::codec`), 21 bytes plus 4 per listed source, plus 64
//! when signed:
//!
//! ```text
//!  0        4       8               16    20      21                23
//!  | origin | group | version.epoch | seq | flags | [source count | sources (u32 each)] | [signature]
//! ```
//! `flags`: bit 0 present (clear = withdrawn), bit 1 reliable, bit 2 source list follows,
//! bit 3 an Ed25519 signature by the origin follows. Other bits must be zero. Sources are
//! strictly ascending, so a record has exactly one encoding and two nodes that hold equal
//! records hold equal bytes (Ed25519 signatures are deterministic).
//!
//! The signature covers the domain `weft_secure::domain::MEMBERSHIP` and the record's
//! encoding without bit 3 and without the signature: only the origin's key can make a
//! record about its memberships, so no relay or neighbour can join or leave for it.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use thiserror::Error;
use weft_core::{DecodeError, NodeId, Reader, Writer};
use weft_secure::{PublicKey, SecretKey, Signature, SIGNATURE_LEN};

/// Most sources one record may list. A node's aggregate over all its sockets is capped here so
/// that a record always fits one state packet (21 + 4 · 256 bytes).
pub const MAX_SOURCES: usize = 256;

/// Encoded size of a record without a source list.
pub const RECORD_HEADER_LEN: usize = 21;

const FLAG_PRESENT: u8 = 1 << 0;
const FLAG_RELIABLE: u8 = 1 << 1;
const FLAG_SOURCE_LIST: u8 = 1 << 2;
const FLAG_SIGNED: u8 = 1 << 3;
const KNOWN_FLAGS: u8 = FLAG_PRESENT | FLAG_RELIABLE | FLAG_SOURCE_LIST | FLAG_SIGNED;

/// Version of a record, ordered by `epoch` then `seq`. The daemon passes an epoch that grows
/// across restarts (a start timestamp or a persisted counter), so records issued before a
/// restart lose against those issued after it; `seq` counts changes within one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    pub epoch: u64,
    pub seq: u32,
}

impl Version {
    pub const fn new(epoch: u64, seq: u32) -> Self {
        Version { epoch, seq }
    }

    /// The smallest version greater than this one (saturates at the maximum).
    pub fn successor(self) -> Version {
        match self.seq.checked_add(1) {
            Some(seq) => Version {
                epoch: self.epoch,
                seq,
            },
            None => match self.epoch.checked_add(1) {
                Some(epoch) => Version { epoch, seq: 0 },
                None => self,
            },
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

/// Which sources a member accepts (IGMPv3/MLDv2 INCLUDE mode, or any-source).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceFilter {
    /// Any-source membership (`IP_ADD_MEMBERSHIP`).
    Any,
    /// Only these sources (`IP_ADD_SOURCE_MEMBERSHIP`); never empty, at most [`MAX_SOURCES`].
    Only(BTreeSet<NodeId>),
}

impl SourceFilter {
    pub fn accepts(&self, source: NodeId) -> bool {
        match self {
            SourceFilter::Any => true,
            SourceFilter::Only(sources) => sources.contains(&source),
        }
    }
}

/// What the origin says about the group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Membership {
    /// Not a member (left, or never joined in this epoch). Kept as a tombstone so that an
    /// older "present" record still in flight cannot resurrect the membership.
    Absent,
    /// A member. `reliable`: at least one local socket asked for the reliable mode, so the
    /// branches of the tree leading here are carried on hop-by-hop reliable links.
    Present {
        sources: SourceFilter,
        reliable: bool,
    },
}

impl Membership {
    pub fn is_present(&self) -> bool {
        matches!(self, Membership::Present { .. })
    }

    /// Whether this member wants packets from `source`.
    pub fn accepts(&self, source: NodeId) -> bool {
        match self {
            Membership::Absent => false,
            Membership::Present { sources, .. } => sources.accepts(source),
        }
    }

    pub fn is_reliable(&self) -> bool {
        matches!(self, Membership::Present { reliable: true, .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("invalid membership record: {0}")]
pub struct InvalidRecord(pub &'static str);

impl From<InvalidRecord> for DecodeError {
    fn from(e: InvalidRecord) -> Self {
        DecodeError::Invalid(e.0)
    }
}

/// One flooded fact: `origin`'s membership of `group` as of `version`. Keyed by
/// (origin, group); of two records with the same key the greater one (see [`Self::supersedes`])
/// wins everywhere.
///
/// Equality and hashing ignore the signature: it proves a record, it is not part of it.
#[derive(Clone, Debug)]
pub struct MembershipRecord {
    origin: NodeId,
    group: NodeId,
    version: Version,
    membership: Membership,
    signature: Option<Box<Signature>>,
}

impl PartialEq for MembershipRecord {
    fn eq(&self, other: &Self) -> bool {
        (self.origin, self.group, self.version, &self.membership)
            == (other.origin, other.group, other.version, &other.membership)
    }
}

impl Eq for MembershipRecord {}

impl std::hash::Hash for MembershipRecord {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self.origin, self.group, self.version, &self.membership).hash(h);
    }
}

impl MembershipRecord {
    /// Checks the invariants every decoder relies on: the group is a class D address, the
    /// origin is not, and a source list is non-empty and at most [`MAX_SOURCES`] long.
    pub fn new(
        origin: NodeId,
        group: NodeId,
        version: Version,
        membership: Membership,
    ) -> Result<Self, InvalidRecord> {
        if !group.is_multicast() {
            return Err(InvalidRecord("group is not a multicast address"));
        }
        if origin.is_multicast() {
            return Err(InvalidRecord("origin is a multicast address"));
        }
        if let Membership::Present {
            sources: SourceFilter::Only(list),
            ..
        } = &membership
        {
            if list.is_empty() {
                return Err(InvalidRecord("empty source list"));
            }
            if list.len() > MAX_SOURCES {
                return Err(InvalidRecord("too many sources"));
            }
            if list.iter().any(|s| s.is_multicast()) {
                return Err(InvalidRecord("multicast address as a source"));
            }
        }
        Ok(MembershipRecord {
            origin,
            group,
            version,
            membership,
            signature: None,
        })
    }

    pub fn signature(&self) -> Option<&Signature> {
        self.signature.as_deref()
    }

    /// The bytes a signature covers: the unsigned encoding.
    pub fn signed_body(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode_body(&mut Writer::new(&mut buf), false);
        buf
    }

    /// This record signed with the origin's key.
    pub fn signed(mut self, key: &SecretKey) -> Self {
        let sig = key.sign(weft_secure::domain::MEMBERSHIP, &self.signed_body());
        self.signature = Some(Box::new(sig));
        self
    }

    /// Whether the record carries a valid signature by `key`.
    pub fn verify(&self, key: &PublicKey) -> bool {
        self.signature.as_deref().is_some_and(|sig| {
            key.verify(weft_secure::domain::MEMBERSHIP, &self.signed_body(), sig)
        })
    }

    pub fn origin(&self) -> NodeId {
        self.origin
    }

    pub fn group(&self) -> NodeId {
        self.group
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn key(&self) -> (NodeId, NodeId) {
        (self.origin, self.group)
    }

    /// Total order between records with the same key: by version, then (only for two
    /// different records carrying one version, which the origin itself repairs) by content,
    /// so every node picks the same winner.
    pub fn precedence(&self, other: &MembershipRecord) -> Ordering {
        self.version
            .cmp(&other.version)
            .then_with(|| self.membership.cmp(&other.membership))
    }

    /// Whether this record replaces `other` (same key assumed).
    pub fn supersedes(&self, other: &MembershipRecord) -> bool {
        self.precedence(other) == Ordering::Greater
    }

    pub fn encoded_len(&self) -> usize {
        let signature = if self.signature.is_some() {
            SIGNATURE_LEN
        } else {
            0
        };
        signature
            + match &self.membership {
                Membership::Present {
                    sources: SourceFilter::Only(list),
                    ..
                } => RECORD_HEADER_LEN + 2 + 4 * list.len(),
                _ => RECORD_HEADER_LEN,
            }
    }

    pub fn encode(&self, w: &mut Writer<'_>) {
        self.encode_body(w, true);
    }

    fn encode_body(&self, w: &mut Writer<'_>, with_signature: bool) {
        let signed = if with_signature && self.signature.is_some() {
            FLAG_SIGNED
        } else {
            0
        };
        w.u32(self.origin.0)
            .u32(self.group.0)
            .u64(self.version.epoch)
            .u32(self.version.seq);
        match &self.membership {
            Membership::Absent => {
                w.u8(signed);
            }
            Membership::Present { sources, reliable } => {
                let mut flags = FLAG_PRESENT | signed;
                if *reliable {
                    flags |= FLAG_RELIABLE;
                }
                match sources {
                    SourceFilter::Any => {
                        w.u8(flags);
                    }
                    SourceFilter::Only(list) => {
                        // `new` caps the list at MAX_SOURCES, far below u16::MAX.
                        let count = u16::try_from(list.len()).unwrap_or(u16::MAX);
                        w.u8(flags | FLAG_SOURCE_LIST).u16(count);
                        for source in list.iter().take(usize::from(count)) {
                            w.u32(source.0);
                        }
                    }
                }
            }
        }
        if signed != 0 {
            if let Some(sig) = &self.signature {
                w.bytes(&sig[..]);
            }
        }
    }

    /// Reads exactly one record, so a state packet may carry several back to back.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let origin = NodeId(r.u32()?);
        let group = NodeId(r.u32()?);
        let version = Version {
            epoch: r.u64()?,
            seq: r.u32()?,
        };
        let flags = r.u8()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::Invalid("unknown membership flags"));
        }
        let signed = flags & FLAG_SIGNED != 0;
        let flags = flags & !FLAG_SIGNED;
        let membership = if flags & FLAG_PRESENT == 0 {
            if flags != 0 {
                return Err(DecodeError::Invalid("flags on a withdrawn membership"));
            }
            Membership::Absent
        } else {
            let sources = if flags & FLAG_SOURCE_LIST == 0 {
                SourceFilter::Any
            } else {
                let count = usize::from(r.u16()?);
                if count > MAX_SOURCES {
                    return Err(DecodeError::Invalid("too many sources"));
                }
                let mut list = BTreeSet::new();
                let mut previous: Option<NodeId> = None;
                for _ in 0..count {
                    let source = NodeId(r.u32()?);
                    if previous.is_some_and(|p| p >= source) {
                        return Err(DecodeError::Invalid("sources not strictly ascending"));
                    }
                    previous = Some(source);
                    list.insert(source);
                }
                SourceFilter::Only(list)
            };
            Membership::Present {
                sources,
                reliable: flags & FLAG_RELIABLE != 0,
            }
        };
        let mut record = MembershipRecord::new(origin, group, version, membership)?;
        if signed {
            let mut sig = [0u8; SIGNATURE_LEN];
            sig.copy_from_slice(r.bytes(SIGNATURE_LEN)?);
            record.signature = Some(Box::new(sig));
        }
        Ok(record)
    }

    /// Encodes into a fresh buffer (tests, status).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut Writer::new(&mut buf));
        buf
    }
}

impl fmt::Display for MembershipRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {} v{}: ", self.origin, self.group, self.version)?;
        match &self.membership {
            Membership::Absent => write!(f, "withdrawn"),
            Membership::Present { sources, reliable } => {
                match sources {
                    SourceFilter::Any => write!(f, "any source")?,
                    SourceFilter::Only(list) => {
                        write!(f, "sources")?;
                        for s in list {
                            write!(f, " {s}")?;
                        }
                    }
                }
                if *reliable {
                    write!(f, ", reliable")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn group(i: u8) -> NodeId {
        NodeId(u32::from_be_bytes([239, 1, 0, i]))
    }

    fn node(i: u8) -> NodeId {
        NodeId(u32::from_be_bytes([10, 0, 0, i]))
    }

    fn only(list: &[NodeId]) -> SourceFilter {
        SourceFilter::Only(list.iter().copied().collect())
    }

    #[test]
    fn round_trip_all_shapes() {
        let shapes = [
            Membership::Absent,
            Membership::Present {
                sources: SourceFilter::Any,
                reliable: false,
            },
            Membership::Present {
                sources: SourceFilter::Any,
                reliable: true,
            },
            Membership::Present {
                sources: only(&[node(9), node(3)]),
                reliable: false,
            },
        ];
        for membership in shapes {
            let rec = MembershipRecord::new(node(1), group(2), Version::new(7, 3), membership)
                .expect("valid record");
            let bytes = rec.to_bytes();
            assert_eq!(bytes.len(), rec.encoded_len());
            let mut r = Reader::new(&bytes);
            assert_eq!(MembershipRecord::decode(&mut r), Ok(rec));
            assert!(r.is_empty());
        }
    }

    #[test]
    fn several_records_back_to_back() {
        let a = MembershipRecord::new(node(1), group(1), Version::new(1, 1), Membership::Absent)
            .expect("valid");
        let b = MembershipRecord::new(
            node(2),
            group(1),
            Version::new(1, 2),
            Membership::Present {
                sources: only(&[node(4)]),
                reliable: true,
            },
        )
        .expect("valid");
        let mut buf = a.to_bytes();
        buf.extend(b.to_bytes());
        let mut r = Reader::new(&buf);
        assert_eq!(MembershipRecord::decode(&mut r), Ok(a));
        assert_eq!(MembershipRecord::decode(&mut r), Ok(b));
        assert!(r.is_empty());
    }

    #[test]
    fn rejects_invalid_records() {
        let rec = MembershipRecord::new(
            node(1),
            group(1),
            Version::new(1, 1),
            Membership::Present {
                sources: only(&[node(4), node(5)]),
                reliable: false,
            },
        )
        .expect("valid");
        let good = rec.to_bytes();

        let mut unicast_group = good.clone();
        unicast_group[4] = 10;
        let mut multicast_origin = good.clone();
        multicast_origin[0] = 224;
        let mut unknown_flag = good.clone();
        unknown_flag[20] |= 0x80;
        let mut absent_with_flags = good.clone();
        absent_with_flags[20] = FLAG_RELIABLE;
        let mut unsorted = good.clone();
        unsorted.swap(23 + 3, 27 + 3);
        let mut empty_list = good[..21].to_vec();
        empty_list.extend([0, 0]);
        let mut too_many = good[..21].to_vec();
        too_many.extend((MAX_SOURCES as u16 + 1).to_be_bytes());

        for bad in [
            unicast_group,
            multicast_origin,
            unknown_flag,
            absent_with_flags,
            unsorted,
        ] {
            assert!(matches!(
                MembershipRecord::decode(&mut Reader::new(&bad)),
                Err(DecodeError::Invalid(_))
            ));
        }
        for bad in [empty_list, too_many] {
            assert!(MembershipRecord::decode(&mut Reader::new(&bad)).is_err());
        }
        for cut in 0..good.len() {
            assert!(matches!(
                MembershipRecord::decode(&mut Reader::new(&good[..cut])),
                Err(DecodeError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn signatures_round_trip_and_bind_the_content() {
        let key = SecretKey::generate();
        let rec = MembershipRecord::new(
            node(1),
            group(2),
            Version::new(3, 4),
            Membership::Present {
                sources: only(&[node(5)]),
                reliable: true,
            },
        )
        .expect("valid");
        assert!(!rec.verify(&key.public()), "unsigned");
        let signed = rec.clone().signed(&key);
        assert_eq!(signed, rec, "the signature is not part of the content");
        let bytes = signed.to_bytes();
        assert_eq!(bytes.len(), rec.encoded_len() + SIGNATURE_LEN);
        let mut r = Reader::new(&bytes);
        let back = MembershipRecord::decode(&mut r).expect("decodes");
        assert!(r.is_empty());
        assert!(back.verify(&key.public()));
        assert!(!back.verify(&SecretKey::generate().public()));
        assert_eq!(back.to_bytes(), bytes, "one canonical encoding");
        // Any change to what was signed breaks the signature.
        for at in 0..RECORD_HEADER_LEN {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            if let Ok(rec) = MembershipRecord::decode(&mut Reader::new(&bad)) {
                assert!(!rec.verify(&key.public()), "byte {at}");
            }
        }
        let absent =
            MembershipRecord::new(node(1), group(2), Version::new(3, 5), Membership::Absent)
                .expect("valid")
                .signed(&key);
        let back = MembershipRecord::decode(&mut Reader::new(&absent.to_bytes())).expect("decodes");
        assert!(back.verify(&key.public()));
    }

    #[test]
    fn newer_versions_and_restarts_take_precedence() {
        let at = |epoch, seq, membership| {
            MembershipRecord::new(node(1), group(1), Version::new(epoch, seq), membership)
                .expect("valid")
        };
        let present = Membership::Present {
            sources: SourceFilter::Any,
            reliable: false,
        };
        assert!(at(1, 2, Membership::Absent).supersedes(&at(1, 1, present.clone())));
        assert!(at(2, 0, present.clone()).supersedes(&at(1, u32::MAX, Membership::Absent)));
        assert!(!at(1, 1, present.clone()).supersedes(&at(1, 1, present.clone())));
        assert_eq!(Version::new(1, u32::MAX).successor(), Version::new(2, 0));
        assert_eq!(
            Version::new(u64::MAX, u32::MAX).successor(),
            Version::new(u64::MAX, u32::MAX)
        );
    }

    fn arb_node() -> impl Strategy<Value = NodeId> {
        (0u32..0xe000_0000).prop_map(NodeId)
    }

    fn arb_record() -> impl Strategy<Value = MembershipRecord> {
        let membership = prop_oneof![
            Just(Membership::Absent),
            (any::<bool>()).prop_map(|reliable| Membership::Present {
                sources: SourceFilter::Any,
                reliable
            }),
            (
                proptest::collection::btree_set(arb_node(), 1..20),
                any::<bool>()
            )
                .prop_map(|(list, reliable)| Membership::Present {
                    sources: SourceFilter::Only(list),
                    reliable
                }),
        ];
        (
            arb_node(),
            0xe000_0000u32..0xf000_0000,
            any::<u64>(),
            any::<u32>(),
            membership,
        )
            .prop_map(|(origin, group, epoch, seq, membership)| {
                MembershipRecord::new(origin, NodeId(group), Version::new(epoch, seq), membership)
                    .expect("strategy builds valid records")
            })
    }

    proptest! {
        #[test]
        fn arbitrary_records_round_trip(rec in arb_record()) {
            let bytes = rec.to_bytes();
            prop_assert_eq!(bytes.len(), rec.encoded_len());
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(MembershipRecord::decode(&mut r), Ok(rec));
            prop_assert!(r.is_empty());
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut r = Reader::new(&data);
            while MembershipRecord::decode(&mut r).is_ok() {}
        }

        /// Mutations of valid encodings either fail cleanly or decode to a record whose
        /// encoding is exactly the bytes consumed (one canonical encoding per record).
        #[test]
        fn mutated_records_never_panic(
            rec in arb_record(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = rec.to_bytes();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let keep = cut.index(bytes.len() + 1);
            bytes.truncate(keep.max(bytes.len() / 2));
            let mut r = Reader::new(&bytes);
            if let Ok(decoded) = MembershipRecord::decode(&mut r) {
                let used = r.position();
                prop_assert_eq!(decoded.to_bytes(), bytes[..used].to_vec());
            }
        }
    }
}
