//! Overlay addressing: a node is named by an IPv4 address (by default the one its daemon
//! listens on); an endpoint is (node, 16-bit port), like a UDP/TCP socket address.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// Dotted-quad text in human-readable formats (JSON status), a plain u32 in binary ones.
impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&self.addr())
        } else {
            s.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse::<Ipv4Addr>()
                .map(NodeId::from)
                .map_err(serde::de::Error::custom)
        } else {
            u32::deserialize(d).map(NodeId)
        }
    }
}

impl NodeId {
    pub fn addr(self) -> Ipv4Addr {
        Ipv4Addr::from(self.0)
    }

    /// Class D (224.0.0.0/4) addresses name multicast groups, never nodes.
    pub fn is_multicast(self) -> bool {
        self.addr().is_multicast()
    }
}

impl From<Ipv4Addr> for NodeId {
    fn from(a: Ipv4Addr) -> Self {
        NodeId(u32::from(a))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub node: NodeId,
    pub port: u16,
}

impl Endpoint {
    pub fn new(node: NodeId, port: u16) -> Self {
        Endpoint { node, port }
    }

    pub fn socket_addr(self) -> SocketAddrV4 {
        SocketAddrV4::new(self.node.addr(), self.port)
    }
}

impl From<SocketAddrV4> for Endpoint {
    fn from(a: SocketAddrV4) -> Self {
        Endpoint::new(NodeId::from(*a.ip()), a.port())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.port)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
