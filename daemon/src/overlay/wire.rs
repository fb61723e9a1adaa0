//! Bodies of the daemon-level packets that follow the outer header: hellos, flooded state and
//! its acknowledgements, and the routed-packet header. (ARQ frames and session segments are
//! encoded by `weft_transport`, membership records by `weft_multicast`.)
//!
//! ```text
//! Hello:     seq u32 | sent_us u64 | echo_us u64 | echo_hold_us u32 | peer_incarnation u32
//! State:     count u16 | count × (kind u8 | len u16 | record bytes)
//! StateAck:  count u16 | count × (kind u8 | origin u32 | key u32 | version u128)
//! Routed:    flags u8 | proto u8 | class u8 | ttl u8 | src u32 | src_port u16 | dst u32 | dst_port u16
//!            then for datagrams: id u32 | offset u16 | total u16, then payload
//!            (a datagram to a group starts with the sender's multicast TTL, one byte)
//! ```

use weft_core::{DecodeError, Endpoint, NodeId, Reader, Writer};
use weft_secure::{PublicKey, SecretKey, Signature, SIGNATURE_LEN};
use weft_transport::arq::FlowId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub seq: u32,
    /// Sender's clock when sent (µs); echoed back for RTT.
    pub sent_us: u64,
    /// The `sent_us` of the latest hello the sender received from us (0: none yet).
    pub echo_us: u64,
    /// How long the sender held that hello before this one left (µs).
    pub echo_hold_us: u32,
    /// Our incarnation as the sender last saw it (0: it has not heard us): the two-way check.
    pub peer_incarnation: u32,
    /// Fast liveness (`fast_liveness`): the sender sends something at least this often (µs)
    /// until a hello says otherwise; 0: no promise. A trailing field: decoders that stop
    /// after `peer_incarnation` read a plain hello, and a hello without it promises nothing.
    pub fast_interval_us: u32,
}

impl Hello {
    pub const LEN: usize = 32;

    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u32(self.seq)
            .u64(self.sent_us)
            .u64(self.echo_us)
            .u32(self.echo_hold_us)
            .u32(self.peer_incarnation)
            .u32(self.fast_interval_us);
    }

    pub fn decode(body: &[u8]) -> Result<Hello, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Hello {
            seq: r.u32()?,
            sent_us: r.u64()?,
            echo_us: r.u64()?,
            echo_hold_us: r.u32()?,
            peer_incarnation: r.u32()?,
            fast_interval_us: if r.is_empty() { 0 } else { r.u32()? },
        })
    }
}

/// What a flooded record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum StateKind {
    LinkState = 1,
    Membership = 2,
    /// A node's service record (`weft_services::ServiceRecord`).
    Service = 3,
}

impl StateKind {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(StateKind::LinkState),
            2 => Ok(StateKind::Membership),
            3 => Ok(StateKind::Service),
            _ => Err(DecodeError::Invalid("state kind")),
        }
    }
}

/// Identity and version of a flooded record, which is all an acknowledgement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateId {
    pub kind: StateKind,
    pub origin: NodeId,
    /// Second key (the group for memberships; 0 for link state).
    pub key: u32,
    /// Ordered per (kind, origin, key): link-state sequence numbers, or a membership's
    /// (epoch, seq) as `epoch << 32 | seq`.
    pub version: u128,
}

/// A batch of encoded records, each tagged with its kind.
pub fn encode_state(records: &[(StateKind, &[u8])], w: &mut Writer<'_>) {
    w.u16(records.len() as u16);
    for (kind, bytes) in records {
        w.u8(*kind as u8).short_bytes(bytes);
    }
}

pub fn decode_state(body: &[u8]) -> Result<Vec<(StateKind, &[u8])>, DecodeError> {
    let mut r = Reader::new(body);
    let n = r.u16()? as usize;
    let mut out = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        let kind = StateKind::from_u8(r.u8()?)?;
        out.push((kind, r.short_bytes()?));
    }
    Ok(out)
}

pub const STATE_ID_LEN: usize = 25;

pub fn encode_acks(ids: &[StateId], w: &mut Writer<'_>) {
    w.u16(ids.len() as u16);
    for id in ids {
        w.u8(id.kind as u8)
            .u32(id.origin.0)
            .u32(id.key)
            .u64((id.version >> 64) as u64)
            .u64(id.version as u64);
    }
}

pub fn decode_acks(body: &[u8]) -> Result<Vec<StateId>, DecodeError> {
    let mut r = Reader::new(body);
    let n = r.u16()? as usize;
    let mut out = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        out.push(StateId {
            kind: StateKind::from_u8(r.u8()?)?,
            origin: NodeId(r.u32()?),
            key: r.u32()?,
            version: ((r.u64()? as u128) << 64) | r.u64()? as u128,
        });
    }
    Ok(out)
}

/// One node's adjacencies, flooded to every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStateAdvert {
    pub origin: NodeId,
    pub seq: u64,
    /// (neighbour, cost) sorted by neighbour; cost ≥ 1.
    pub links: Vec<(NodeId, u32)>,
    /// The origin's public key and signature (secure overlays): who may speak for `origin`.
    pub proof: Option<Box<AdvertProof>>,
}

/// Appended to a signed advert: the origin's public key, then its Ed25519 signature over
/// `weft_secure::domain::LINK_STATE` and the advert without the proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertProof {
    pub key: PublicKey,
    pub signature: Signature,
}

pub const ADVERT_PROOF_LEN: usize = weft_secure::keys::PUBLIC_LEN + SIGNATURE_LEN;

impl LinkStateAdvert {
    pub fn new(origin: NodeId, seq: u64, links: Vec<(NodeId, u32)>) -> Self {
        LinkStateAdvert {
            origin,
            seq,
            links,
            proof: None,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_body(out);
        if let Some(p) = &self.proof {
            out.extend_from_slice(&p.key.to_bytes());
            out.extend_from_slice(&p.signature);
        }
    }

    /// Attaches the origin's proof: its public key and signature over the advert.
    pub fn sign(&mut self, key: &SecretKey) {
        let signature = key.sign(weft_secure::domain::LINK_STATE, &self.signed_body());
        self.proof = Some(Box::new(AdvertProof {
            key: key.public(),
            signature,
        }));
    }

    /// What the signature covers.
    pub fn signed_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + 8 * self.links.len());
        self.encode_body(&mut out);
        out
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        w.u32(self.origin.0)
            .u64(self.seq)
            .u16(self.links.len() as u16);
        for (n, c) in &self.links {
            w.u32(n.0).u32(*c);
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<LinkStateAdvert, DecodeError> {
        let mut r = Reader::new(bytes);
        let origin = NodeId(r.u32()?);
        let seq = r.u64()?;
        let n = r.u16()? as usize;
        if n * 8 > r.remaining() {
            return Err(DecodeError::Truncated {
                needed: n * 8 - r.remaining(),
            });
        }
        let mut links = Vec::with_capacity(n);
        for _ in 0..n {
            let node = NodeId(r.u32()?);
            let cost = r.u32()?;
            if cost == 0 {
                return Err(DecodeError::Invalid("zero link cost"));
            }
            links.push((node, cost));
        }
        // Links must be sorted and unique: one advert, one encoding (what is signed is what
        // every node re-floods).
        if links.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(DecodeError::Invalid("advert links not strictly ascending"));
        }
        let proof = match r.remaining() {
            0 => None,
            ADVERT_PROOF_LEN => {
                let key = PublicKey::from_bytes(r.bytes(weft_secure::keys::PUBLIC_LEN)?)
                    .map_err(|_| DecodeError::Invalid("advert key"))?;
                let mut signature = [0u8; SIGNATURE_LEN];
                signature.copy_from_slice(r.bytes(SIGNATURE_LEN)?);
                Some(Box::new(AdvertProof { key, signature }))
            }
            _ => return Err(DecodeError::Invalid("bytes after the advert")),
        };
        Ok(LinkStateAdvert {
            origin,
            seq,
            links,
            proof,
        })
    }

    pub fn id(&self) -> StateId {
        StateId {
            kind: StateKind::LinkState,
            origin: self.origin,
            key: 0,
            version: self.seq as u128,
        }
    }
}

/// What a routed packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Proto {
    Datagram = 1,
    Session = 2,
}

/// How links treat a routed packet; the forwarding decision is a function of (destination,
/// class), so later classes (soft real-time, redundant paths) need no new wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum Class {
    BestEffort = 0,
    Reliable = 1,
}

pub const FLAG_CE: u8 = 0x01;

/// Outer-header flag on a hello: "answer at once" (sent while a neighbour is silent, so a
/// few lost hellos on a lossy link do not look like a dead neighbour).
pub const HELLO_PROBE: u8 = 0x01;
/// Outer-header flag on a hello: "I am stopping; take this link down now" (sent a few times by
/// a daemon that exits cleanly, so its neighbours reroute without waiting out the dead
/// interval). Daemons that do not know the flag read a plain hello.
pub const HELLO_LEAVING: u8 = 0x02;

/// The fields of a routed packet's header (its `Repr`, in smoltcp's terms): what senders
/// fill in and what [`RoutedPacket`] reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutedHeader {
    pub flags: u8,
    pub proto: Proto,
    pub class: Class,
    pub ttl: u8,
    pub src: Endpoint,
    /// A node, or a multicast group.
    pub dst: Endpoint,
}

/// Where each field of the routed header sits. Only this module knows.
mod routed_field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const PROTO: usize = 1;
    pub const CLASS: usize = 2;
    pub const TTL: usize = 3;
    pub const SRC_NODE: Range<usize> = 4..8;
    pub const SRC_PORT: Range<usize> = 8..10;
    pub const DST_NODE: Range<usize> = 10..14;
    pub const DST_PORT: Range<usize> = 14..16;
    pub const PAYLOAD: usize = 16;
}

impl RoutedHeader {
    pub const LEN: usize = routed_field::PAYLOAD;

    pub fn encode(&self, w: &mut Writer<'_>) {
        w.bytes(&self.to_bytes());
    }

    /// The encoded header, for writing into room a sender left in front of its payload.
    pub fn to_bytes(&self) -> [u8; RoutedHeader::LEN] {
        let mut b = [0u8; RoutedHeader::LEN];
        b[routed_field::FLAGS] = self.flags;
        b[routed_field::PROTO] = self.proto as u8;
        b[routed_field::CLASS] = self.class as u8;
        b[routed_field::TTL] = self.ttl;
        b[routed_field::SRC_NODE].copy_from_slice(&self.src.node.0.to_be_bytes());
        b[routed_field::SRC_PORT].copy_from_slice(&self.src.port.to_be_bytes());
        b[routed_field::DST_NODE].copy_from_slice(&self.dst.node.0.to_be_bytes());
        b[routed_field::DST_PORT].copy_from_slice(&self.dst.port.to_be_bytes());
        b
    }

    /// Parses the header and returns it with the payload.
    pub fn decode(packet: &[u8]) -> Result<(RoutedHeader, &[u8]), DecodeError> {
        let view = RoutedPacket::new_checked(packet)?;
        Ok((view.header(), &packet[routed_field::PAYLOAD..]))
    }

    pub fn ce(&self) -> bool {
        self.flags & FLAG_CE != 0
    }
}

/// A checked view over the bytes of a routed packet (smoltcp's `Packet<T>`): `new_checked`
/// validates the length and the enumerated fields once, then getters read in place and
/// setters patch in place, so a relay neither decodes twice nor re-encodes.
#[derive(Debug, Clone, Copy)]
pub struct RoutedPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RoutedPacket<T> {
    pub fn new_checked(buffer: T) -> Result<Self, DecodeError> {
        let b = buffer.as_ref();
        if b.len() < RoutedHeader::LEN {
            return Err(DecodeError::Truncated {
                needed: RoutedHeader::LEN - b.len(),
            });
        }
        Proto::from_u8(b[routed_field::PROTO])?;
        Class::from_u8(b[routed_field::CLASS])?;
        Ok(RoutedPacket { buffer })
    }

    fn byte(&self, at: usize) -> u8 {
        self.buffer.as_ref()[at]
    }

    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn u32_at(&self, r: std::ops::Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn flags(&self) -> u8 {
        self.byte(routed_field::FLAGS)
    }

    pub fn ce(&self) -> bool {
        self.flags() & FLAG_CE != 0
    }

    pub fn proto(&self) -> Proto {
        // Checked in `new_checked`; setters only write valid values.
        Proto::from_u8(self.byte(routed_field::PROTO)).unwrap_or(Proto::Datagram)
    }

    pub fn class(&self) -> Class {
        Class::from_u8(self.byte(routed_field::CLASS)).unwrap_or(Class::BestEffort)
    }

    pub fn ttl(&self) -> u8 {
        self.byte(routed_field::TTL)
    }

    pub fn src(&self) -> Endpoint {
        Endpoint::new(
            NodeId(self.u32_at(routed_field::SRC_NODE)),
            self.u16_at(routed_field::SRC_PORT),
        )
    }

    pub fn dst(&self) -> Endpoint {
        Endpoint::new(
            NodeId(self.u32_at(routed_field::DST_NODE)),
            self.u16_at(routed_field::DST_PORT),
        )
    }

    /// Every header field at once (decoded once per hop, then passed along).
    pub fn header(&self) -> RoutedHeader {
        RoutedHeader {
            flags: self.flags(),
            proto: self.proto(),
            class: self.class(),
            ttl: self.ttl(),
            src: self.src(),
            dst: self.dst(),
        }
    }

    /// What the packet carries after the routed header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[routed_field::PAYLOAD..]
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RoutedPacket<T> {
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[routed_field::TTL] = ttl;
    }

    pub fn set_ce(&mut self) {
        self.buffer.as_mut()[routed_field::FLAGS] |= FLAG_CE;
    }

    pub fn set_class(&mut self, class: Class) {
        self.buffer.as_mut()[routed_field::CLASS] = class as u8;
    }
}

impl Proto {
    fn from_u8(v: u8) -> Result<Proto, DecodeError> {
        match v {
            1 => Ok(Proto::Datagram),
            2 => Ok(Proto::Session),
            _ => Err(DecodeError::Invalid("routed proto")),
        }
    }
}

impl Class {
    fn from_u8(v: u8) -> Result<Class, DecodeError> {
        match v {
            0 => Ok(Class::BestEffort),
            1 => Ok(Class::Reliable),
            _ => Err(DecodeError::Invalid("service class")),
        }
    }
}

/// Flows are named by their endpoints, so every hop agrees and each session is its own flow.
pub fn flow_of(src: Endpoint, dst: Endpoint) -> FlowId {
    let mut x = ((src.node.0 as u64) << 32 | dst.node.0 as u64)
        ^ ((src.port as u64) << 16 | dst.port as u64).rotate_left(47);
    // splitmix64 finaliser
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fragment header of a datagram: every datagram carries it, fragmented or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    pub id: u32,
    pub offset: u16,
    pub total: u16,
}

impl FragmentHeader {
    pub const LEN: usize = 8;

    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u32(self.id).u16(self.offset).u16(self.total);
    }

    pub fn decode(body: &[u8]) -> Result<(FragmentHeader, &[u8]), DecodeError> {
        let mut r = Reader::new(body);
        let h = FragmentHeader {
            id: r.u32()?,
            offset: r.u16()?,
            total: r.u16()?,
        };
        let rest = r.rest();
        if h.offset as usize + rest.len() > h.total as usize {
            return Err(DecodeError::Invalid("fragment beyond datagram end"));
        }
        Ok((h, rest))
    }
}

/// A datagram to a group as it crosses the overlay: the sender's multicast TTL, which
/// receiving sockets report with `IP_RECVTTL` (every overlay host is one hop away), then the
/// payload. Unicast datagrams carry no such byte: their routed TTL is what is left.
pub struct GroupDatagram;

impl GroupDatagram {
    /// Bytes a group datagram adds ahead of the application's payload.
    pub const OVERHEAD: usize = 1;

    pub fn encode(hops: u8, payload: &[u8]) -> Vec<u8> {
        let mut datagram = Vec::with_capacity(payload.len() + Self::OVERHEAD);
        datagram.push(hops);
        datagram.extend_from_slice(payload);
        datagram
    }

    /// The sender's TTL and the payload of a reassembled group datagram.
    pub fn decode(mut datagram: Vec<u8>) -> Result<(u8, Vec<u8>), DecodeError> {
        let Some(&hops) = datagram.first() else {
            return Err(DecodeError::Invalid("group datagram without its TTL"));
        };
        datagram.drain(..Self::OVERHEAD);
        Ok((hops, datagram))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_round_trip() {
        let h = Hello {
            seq: 7,
            sent_us: 1,
            echo_us: 2,
            echo_hold_us: 3,
            peer_incarnation: 4,
            fast_interval_us: 5,
        };
        let mut v = Vec::new();
        h.encode(&mut Writer::new(&mut v));
        assert_eq!(v.len(), Hello::LEN);
        assert_eq!(Hello::decode(&v), Ok(h));
        // A hello from a daemon without fast liveness: no promise.
        assert_eq!(
            Hello::decode(&v[..28]),
            Ok(Hello {
                fast_interval_us: 0,
                ..h
            })
        );
        assert!(Hello::decode(&v[..30]).is_err());
    }

    #[test]
    fn lsa_round_trip_and_rejects_zero_cost() {
        let lsa = LinkStateAdvert::new(NodeId(1), 9, vec![(NodeId(2), 5), (NodeId(3), 1)]);
        let mut v = Vec::new();
        lsa.encode(&mut v);
        assert_eq!(LinkStateAdvert::decode(&v), Ok(lsa.clone()));
        let key = weft_secure::SecretKey::generate();
        let signature = key.sign(weft_secure::domain::LINK_STATE, &lsa.signed_body());
        let signed = LinkStateAdvert {
            proof: Some(Box::new(AdvertProof {
                key: key.public(),
                signature,
            })),
            ..lsa.clone()
        };
        let mut v = Vec::new();
        signed.encode(&mut v);
        assert_eq!(v.len(), lsa.signed_body().len() + ADVERT_PROOF_LEN);
        assert_eq!(LinkStateAdvert::decode(&v), Ok(signed));
        assert!(LinkStateAdvert::decode(&v[..v.len() - 1]).is_err());
        let bad = LinkStateAdvert::new(NodeId(1), 9, vec![(NodeId(2), 0)]);
        let mut v = Vec::new();
        bad.encode(&mut v);
        assert!(LinkStateAdvert::decode(&v).is_err());
    }

    #[test]
    fn state_batch_round_trip() {
        let mut v = Vec::new();
        encode_state(
            &[(StateKind::LinkState, b"abc"), (StateKind::Membership, b"")],
            &mut Writer::new(&mut v),
        );
        let got = decode_state(&v).unwrap();
        assert_eq!(
            got,
            vec![
                (StateKind::LinkState, &b"abc"[..]),
                (StateKind::Membership, &b""[..])
            ]
        );
        let ids = [StateId {
            kind: StateKind::Membership,
            origin: NodeId(3),
            key: 4,
            version: 5,
        }];
        let mut v = Vec::new();
        encode_acks(&ids, &mut Writer::new(&mut v));
        assert_eq!(v.len(), 2 + STATE_ID_LEN);
        assert_eq!(decode_acks(&v).unwrap(), ids);
    }

    #[test]
    fn routed_round_trip() {
        let h = RoutedHeader {
            flags: FLAG_CE,
            proto: Proto::Session,
            class: Class::Reliable,
            ttl: 64,
            src: Endpoint::new(NodeId(1), 2),
            dst: Endpoint::new(NodeId(3), 4),
        };
        let mut v = Vec::new();
        h.encode(&mut Writer::new(&mut v));
        assert_eq!(v.len(), RoutedHeader::LEN);
        v.extend_from_slice(b"x");
        let (d, rest) = RoutedHeader::decode(&v).unwrap();
        assert_eq!(d, h);
        assert!(d.ce());
        assert_eq!(rest, b"x");
        let mut view = RoutedPacket::new_checked(&mut v[..]).unwrap();
        assert_eq!(view.ttl(), 64);
        view.set_ttl(63);
        view.set_class(Class::BestEffort);
        assert_eq!(view.ttl(), 63);
        assert_eq!(view.header().class, Class::BestEffort);
        assert_eq!(view.payload(), b"x");
        assert!(RoutedPacket::new_checked(&v[..RoutedHeader::LEN - 1]).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = Hello::decode(&data);
            let _ = decode_state(&data);
            let _ = decode_acks(&data);
            let _ = LinkStateAdvert::decode(&data);
            let _ = RoutedHeader::decode(&data);
            if let Ok(view) = RoutedPacket::new_checked(&data[..]) {
                let _ = (view.header(), view.payload());
            }
            let _ = FragmentHeader::decode(&data);
            let _ = GroupDatagram::decode(data.clone());
        }
    }

    #[test]
    fn group_datagram_carries_the_senders_ttl() {
        let d = GroupDatagram::encode(7, b"hello");
        assert_eq!(d.len(), 5 + GroupDatagram::OVERHEAD);
        assert_eq!(GroupDatagram::decode(d).unwrap(), (7, b"hello".to_vec()));
        assert_eq!(
            GroupDatagram::decode(GroupDatagram::encode(0, b"")).unwrap(),
            (0, vec![])
        );
        assert!(GroupDatagram::decode(Vec::new()).is_err());
    }
}
