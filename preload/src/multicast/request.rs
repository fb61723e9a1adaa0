//! Membership option values as the kernel lays them out: which group and interface a
//! request names, and the same request rewritten for loopback (see [`super::kernel`]).

use libc::c_int;
use std::net::Ipv4Addr;

/// Loopback's interface index (fixed by the kernel in every network namespace).
pub const LOOPBACK_INDEX: u32 = 1;

pub(super) const MREQ_SOURCE_LEN: usize = 12;
pub(super) const GROUP_REQ_LEN: usize = 136;
pub(super) const GROUP_SOURCE_REQ_LEN: usize = 264;
pub(super) const SS_LEN: usize = 128;
/// `ip_msfilter`: multiaddr, interface, fmode, numsrc, then 4-byte sources.
pub(super) const MSFILTER_HEADER: usize = 16;
/// `group_filter`: interface (+pad), group, fmode, numsrc, then sockaddr_storage sources.
pub(super) const GROUP_FILTER_HEADER: usize = 144;

/// Which interface a request names, as the overlay sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Iface {
    /// The overlay's (the default, the node's address or its interface).
    Overlay,
    /// Loopback, when the node's interface is another one.
    Loopback,
    /// Some other interface: the kernel's multicast, untouched.
    Other,
}

pub(super) const OVERLAY_BIT: u8 = 1;
pub(super) const LOOPBACK_BIT: u8 = 2;

impl Iface {
    pub(super) fn bit(self) -> u8 {
        match self {
            Iface::Overlay => OVERLAY_BIT,
            Iface::Loopback => LOOPBACK_BIT,
            Iface::Other => 0,
        }
    }
}

/// How the request spells things, with the byte offsets to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// `ip_mreq` (interface by address at 4) or `ip_mreqn` (address at 4, index at 8).
    Mreq { indexed: bool },
    /// `ip_mreq_source`: interface by address at 4, source at 8.
    MreqSource,
    /// `group_req`: index at 0, group at 8.
    GroupReq,
    /// `group_source_req`: index at 0, group at 8, source at 136.
    GroupSourceReq,
    /// `ip_msfilter`: interface address at 4, sources from 16.
    Msfilter,
    /// `group_filter`: index at 0, sources from 144.
    GroupFilter,
}

/// What kind of change a request makes to the group's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Join,
    Leave,
    /// Anything that edits the filter of an existing (or new source-specific) membership.
    Filter,
}

pub(super) struct Parsed {
    pub shape: Shape,
    pub group: Ipv4Addr,
    pub iface: Iface,
    pub change: Change,
}

pub(super) fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(bytes))
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(super) fn put_ipv4(b: &mut [u8], at: usize, a: Ipv4Addr) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&a.octets());
    }
}

pub(super) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
}

/// The IPv4 address of a `sockaddr_storage` at `at`, if it is `AF_INET`.
pub(super) fn sockaddr_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let family = u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?);
    (c_int::from(family) == libc::AF_INET).then(|| ipv4_at(b, at + 4))?
}

pub(super) fn classify_address(a: Ipv4Addr, node: Ipv4Addr, node_index: u32) -> Iface {
    if a.is_unspecified() || a == node {
        return Iface::Overlay;
    }
    if a.is_loopback() {
        return if node_index == LOOPBACK_INDEX {
            Iface::Overlay
        } else {
            Iface::Loopback
        };
    }
    match super::kernel::interface_index_of(a) {
        Some(i) if i == node_index => Iface::Overlay,
        _ => Iface::Other,
    }
}

pub(super) fn classify_index(i: u32, node_index: u32) -> Iface {
    if i == 0 || i == node_index {
        Iface::Overlay
    } else if i == LOOPBACK_INDEX {
        Iface::Loopback
    } else {
        Iface::Other
    }
}

pub(super) fn parse(name: c_int, b: &[u8], node: Ipv4Addr, node_index: u32) -> Option<Parsed> {
    let len = b.len();
    let (shape, change) = match name {
        libc::IP_ADD_MEMBERSHIP | libc::IP_DROP_MEMBERSHIP if len >= 8 => (
            Shape::Mreq { indexed: len >= 12 },
            if name == libc::IP_ADD_MEMBERSHIP {
                Change::Join
            } else {
                Change::Leave
            },
        ),
        libc::IP_ADD_SOURCE_MEMBERSHIP
        | libc::IP_DROP_SOURCE_MEMBERSHIP
        | libc::IP_BLOCK_SOURCE
        | libc::IP_UNBLOCK_SOURCE
            if len == MREQ_SOURCE_LEN =>
        {
            (Shape::MreqSource, Change::Filter)
        }
        libc::MCAST_JOIN_GROUP | libc::MCAST_LEAVE_GROUP if len >= GROUP_REQ_LEN => (
            Shape::GroupReq,
            if name == libc::MCAST_JOIN_GROUP {
                Change::Join
            } else {
                Change::Leave
            },
        ),
        libc::MCAST_JOIN_SOURCE_GROUP
        | libc::MCAST_LEAVE_SOURCE_GROUP
        | libc::MCAST_BLOCK_SOURCE
        | libc::MCAST_UNBLOCK_SOURCE
            if len == GROUP_SOURCE_REQ_LEN =>
        {
            (Shape::GroupSourceReq, Change::Filter)
        }
        libc::IP_MSFILTER if len >= MSFILTER_HEADER => (Shape::Msfilter, Change::Filter),
        libc::MCAST_MSFILTER if len >= GROUP_FILTER_HEADER => (Shape::GroupFilter, Change::Filter),
        _ => return None,
    };
    let (group, iface) = match shape {
        Shape::Mreq { indexed } => {
            let group = ipv4_at(b, 0)?;
            let index = if indexed { u32_at(b, 8)? } else { 0 };
            let iface = if index != 0 {
                classify_index(index, node_index)
            } else {
                classify_address(ipv4_at(b, 4)?, node, node_index)
            };
            (group, iface)
        }
        Shape::MreqSource | Shape::Msfilter => (
            ipv4_at(b, 0)?,
            classify_address(ipv4_at(b, 4)?, node, node_index),
        ),
        Shape::GroupReq | Shape::GroupSourceReq | Shape::GroupFilter => {
            // A group that is not AF_INET: the kernel's answer, untouched.
            (
                sockaddr_at(b, 8)?,
                classify_index(u32_at(b, 0)?, node_index),
            )
        }
    };
    Some(Parsed {
        shape,
        group,
        iface,
        change,
    })
}

/// The request with loopback for the interface and each source as `source_for_kernel` maps
/// it (a query's source list is output space: pass the identity).
pub(super) fn rewrite(
    p: &Parsed,
    mut b: Vec<u8>,
    source_for_kernel: impl Fn(Ipv4Addr) -> Ipv4Addr,
) -> Vec<u8> {
    match p.shape {
        Shape::Mreq { indexed } => {
            if indexed {
                put_ipv4(&mut b, 4, Ipv4Addr::UNSPECIFIED);
                put_u32(&mut b, 8, LOOPBACK_INDEX);
            } else {
                put_ipv4(&mut b, 4, Ipv4Addr::LOCALHOST);
            }
        }
        Shape::MreqSource => {
            put_ipv4(&mut b, 4, Ipv4Addr::LOCALHOST);
            if let Some(s) = ipv4_at(&b, 8) {
                put_ipv4(&mut b, 8, source_for_kernel(s));
            }
        }
        Shape::GroupReq => put_u32(&mut b, 0, LOOPBACK_INDEX),
        Shape::GroupSourceReq => {
            put_u32(&mut b, 0, LOOPBACK_INDEX);
            if let Some(s) = sockaddr_at(&b, GROUP_REQ_LEN) {
                put_ipv4(&mut b, GROUP_REQ_LEN + 4, source_for_kernel(s));
            }
        }
        Shape::Msfilter => {
            put_ipv4(&mut b, 4, Ipv4Addr::LOCALHOST);
            let mut at = MSFILTER_HEADER;
            while let Some(s) = ipv4_at(&b, at) {
                put_ipv4(&mut b, at, source_for_kernel(s));
                at += 4;
            }
        }
        Shape::GroupFilter => {
            put_u32(&mut b, 0, LOOPBACK_INDEX);
            let mut at = GROUP_FILTER_HEADER;
            while at + SS_LEN <= b.len() {
                if let Some(s) = sockaddr_at(&b, at) {
                    put_ipv4(&mut b, at + 4, source_for_kernel(s));
                }
                at += SS_LEN;
            }
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Ipv4Addr = Ipv4Addr::new(239, 1, 2, 3);
    const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);

    fn mreqn(iface: Ipv4Addr, index: u32) -> Vec<u8> {
        let mut v = G.octets().to_vec();
        v.extend(iface.octets());
        v.extend(index.to_ne_bytes());
        v
    }

    #[test]
    fn interfaces_are_classified_like_the_overlay_sees_them() {
        let p = parse(libc::IP_ADD_MEMBERSHIP, &mreqn(NODE, 0)[..8], NODE, 2).expect("parse");
        assert_eq!(
            (p.group, p.iface, p.change),
            (G, Iface::Overlay, Change::Join)
        );
        let p = parse(
            libc::IP_ADD_MEMBERSHIP,
            &mreqn(Ipv4Addr::LOCALHOST, 0),
            NODE,
            2,
        )
        .expect("parse");
        assert_eq!(p.iface, Iface::Loopback);
        let p = parse(
            libc::IP_ADD_MEMBERSHIP,
            &mreqn(Ipv4Addr::UNSPECIFIED, 2),
            NODE,
            2,
        )
        .expect("parse");
        assert_eq!(p.iface, Iface::Overlay);
        let p = parse(
            libc::IP_ADD_MEMBERSHIP,
            &mreqn(Ipv4Addr::UNSPECIFIED, 1),
            NODE,
            1,
        )
        .expect("parse");
        assert_eq!(p.iface, Iface::Overlay, "the node's interface is loopback");
        let p = parse(
            libc::IP_DROP_MEMBERSHIP,
            &mreqn(Ipv4Addr::UNSPECIFIED, 7),
            NODE,
            2,
        )
        .expect("parse");
        assert_eq!((p.iface, p.change), (Iface::Other, Change::Leave));
        assert!(parse(libc::IP_ADD_MEMBERSHIP, &mreqn(NODE, 0)[..7], NODE, 2).is_none());
        assert!(parse(
            libc::IP_ADD_SOURCE_MEMBERSHIP,
            &mreqn(NODE, 0)[..11],
            NODE,
            2
        )
        .is_none());
    }

    #[test]
    fn rewrites_name_loopback() {
        let p = Parsed {
            shape: Shape::Mreq { indexed: true },
            group: G,
            iface: Iface::Overlay,
            change: Change::Join,
        };
        let b = rewrite(&p, mreqn(NODE, 2), |s| s);
        assert_eq!(ipv4_at(&b, 0), Some(G));
        assert_eq!(ipv4_at(&b, 4), Some(Ipv4Addr::UNSPECIFIED));
        assert_eq!(u32_at(&b, 8), Some(LOOPBACK_INDEX));
        let p = Parsed {
            shape: Shape::Mreq { indexed: false },
            ..p
        };
        let b = rewrite(&p, mreqn(NODE, 0)[..8].to_vec(), |s| s);
        assert_eq!(ipv4_at(&b, 4), Some(Ipv4Addr::LOCALHOST));
        let mut gr = vec![0u8; GROUP_REQ_LEN];
        put_u32(&mut gr, 0, 2);
        gr[8..10].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        put_ipv4(&mut gr, 12, G);
        let p = parse(libc::MCAST_JOIN_GROUP, &gr, NODE, 2).expect("parse");
        assert_eq!((p.group, p.iface), (G, Iface::Overlay));
        let b = rewrite(&p, gr, |s| s);
        assert_eq!(u32_at(&b, 0), Some(LOOPBACK_INDEX));
    }
}
