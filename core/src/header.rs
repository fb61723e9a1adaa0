//! The outer header that starts every datagram between daemons.
//!
//! ```text
//!  0      2        3      4       5          6          8          12            16
//!  | magic | version | kind | flags | auth_len | key id   | sender  | incarnation |
//! ```
//! `auth_len` is the length of the authentication trailer at the end of the datagram (0 on
//! insecure links; `weft_secure::TRAILER_LEN` with link security, which also puts the
//! session's key id in bytes 6..8 and authenticates the whole header). Kinds 16–19 are link
//! security's own messages (handshake, response, cookie reply, keepalive), consumed below the
//! node. `incarnation` is random per daemon start,
//! so a neighbour that restarted is recognised from its first packet.

use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::NodeId;

pub const MAGIC: u16 = 0x5746; // "WF"
pub const WIRE_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketKind {
    /// Liveness, RTT echo and incarnation.
    Hello = 1,
    /// Flooded routing state (link-state adverts, group memberships).
    State = 2,
    /// Acknowledgement of flooded state.
    StateAck = 3,
    /// A routed packet on a best-effort link.
    Data = 4,
    /// A routed packet on the hop-by-hop reliable link (carries ARQ sequence and acks).
    ReliableData = 5,
    /// A standalone ARQ acknowledgement.
    ReliableAck = 6,
}

impl PacketKind {
    pub fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => PacketKind::Hello,
            2 => PacketKind::State,
            3 => PacketKind::StateAck,
            4 => PacketKind::Data,
            5 => PacketKind::ReliableData,
            6 => PacketKind::ReliableAck,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: PacketKind,
    pub flags: u8,
    pub auth_len: u8,
    pub sender: NodeId,
    pub incarnation: u32,
}

impl Header {
    pub fn new(kind: PacketKind, sender: NodeId, incarnation: u32) -> Self {
        Header {
            kind,
            flags: 0,
            auth_len: 0,
            sender,
            incarnation,
        }
    }

    pub fn encode(&self, w: &mut Writer<'_>) {
        w.bytes(&self.to_bytes());
    }

    /// The encoded header, for writing over room reserved in front of a body whose packet kind
    /// is known only once the body is written.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        out[2] = WIRE_VERSION;
        out[3] = self.kind as u8;
        out[4] = self.flags;
        out[5] = self.auth_len;
        out[8..12].copy_from_slice(&self.sender.0.to_be_bytes());
        out[12..16].copy_from_slice(&self.incarnation.to_be_bytes());
        out
    }

    /// Parses the header and returns it with the body (the bytes between the header and the
    /// authentication trailer).
    pub fn decode(packet: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
        let mut r = Reader::new(packet);
        if r.u16()? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = PacketKind::from_u8(r.u8()?)?;
        let flags = r.u8()?;
        let auth_len = r.u8()?;
        r.u16()?;
        let sender = NodeId(r.u32()?);
        let incarnation = r.u32()?;
        let rest = r.rest();
        let body_len =
            rest.len()
                .checked_sub(auth_len as usize)
                .ok_or_else(|| DecodeError::Truncated {
                    needed: auth_len as usize - rest.len(),
                })?;
        Ok((
            Header {
                kind,
                flags,
                auth_len,
                sender,
                incarnation,
            },
            &rest[..body_len],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let h = Header::new(PacketKind::State, NodeId(0x7f000001), 42);
        let mut v = Vec::new();
        h.encode(&mut Writer::new(&mut v));
        assert_eq!(v.len(), HEADER_LEN);
        v.extend_from_slice(b"body");
        let (d, body) = Header::decode(&v).unwrap();
        assert_eq!(d, h);
        assert_eq!(body, b"body");
        assert_eq!(h.to_bytes()[..], v[..HEADER_LEN]);
    }

    #[test]
    fn rejects_foreign_packets() {
        assert_eq!(
            Header::decode(b"GET / HTTP/1.1\r\n\r\n").unwrap_err(),
            DecodeError::BadMagic
        );
        let mut v = Vec::new();
        Header::new(PacketKind::Hello, NodeId(1), 1).encode(&mut Writer::new(&mut v));
        v[2] = 9;
        assert_eq!(Header::decode(&v).unwrap_err(), DecodeError::Version(9));
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Header::decode(&data);
        }
    }
}
