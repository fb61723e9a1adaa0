//! Multicast socket option values as programs pass them, decoded with the kernel's length
//! rules (`net/ipv4/ip_sockglue.c`), and the values `getsockopt` hands back. Pure: byte slices
//! in, values or an errno out, so every spelling is unit- and property-tested.
//!
//! Measured on this kernel (Linux 6.x, a namespace with a multicast route on `lo`):
//! - `IP_ADD/DROP_MEMBERSHIP`: at least 8 bytes (`ip_mreq`); 12 or more is read as `ip_mreqn`.
//! - `IP_ADD/DROP_SOURCE_MEMBERSHIP`: exactly 12 bytes (`ip_mreq_source`).
//! - `MCAST_JOIN/LEAVE_GROUP`: at least 136 bytes (`group_req`); a group that is not
//!   `AF_INET` is `EINVAL`.
//! - `MCAST_JOIN/LEAVE_SOURCE_GROUP`: exactly 264 bytes (`group_source_req`); a group or
//!   source that is not `AF_INET` is `EADDRNOTAVAIL`.
//! - `IP_MULTICAST_TTL`: an int (−1 means the default, 1), or with 1–3 bytes an unsigned
//!   char; above 255 or below −1 is `EINVAL`. `IP_MULTICAST_LOOP`: int or char, any non-zero
//!   is on. `IP_MULTICAST_IF`: at least 4 bytes: `in_addr`, 8 `ip_mreq`, 12+ `ip_mreqn`; the
//!   interface address is what `getsockopt` returns.

use libc::c_int;
use std::net::Ipv4Addr;

/// Size of `struct ip_mreq`.
pub const IP_MREQ_LEN: usize = 8;
/// Size of `struct ip_mreqn`.
pub const IP_MREQN_LEN: usize = 12;
/// Size of `struct ip_mreq_source`.
pub const IP_MREQ_SOURCE_LEN: usize = 12;
/// Size of `struct group_req` on 64-bit Linux.
pub const GROUP_REQ_LEN: usize = 136;
/// Size of `struct group_source_req` on 64-bit Linux.
pub const GROUP_SOURCE_REQ_LEN: usize = 264;
/// The most of an option value any decoder here looks at.
pub const MAX_OPTION_LEN: usize = GROUP_SOURCE_REQ_LEN;

/// A change to a socket's group memberships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipOp {
    /// Any-source join (`IP_ADD_MEMBERSHIP`, `MCAST_JOIN_GROUP`).
    Join(Ipv4Addr),
    /// Drop the whole membership (`IP_DROP_MEMBERSHIP`, `MCAST_LEAVE_GROUP`).
    Leave(Ipv4Addr),
    /// Add one source (`IP_ADD_SOURCE_MEMBERSHIP`, `MCAST_JOIN_SOURCE_GROUP`).
    AddSource { group: Ipv4Addr, source: Ipv4Addr },
    /// Drop one source (`IP_DROP_SOURCE_MEMBERSHIP`, `MCAST_LEAVE_SOURCE_GROUP`).
    DropSource { group: Ipv4Addr, source: Ipv4Addr },
}

/// What a multicast `setsockopt` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOption {
    Membership(MembershipOp),
    Ttl(u8),
    Loop(bool),
    /// The interface address (`0.0.0.0`: the default interface).
    Interface(Ipv4Addr),
}

/// The IPv4-level options the overlay emulates.
pub fn is_emulated(level: c_int, name: c_int) -> bool {
    level == libc::IPPROTO_IP
        && matches!(
            name,
            libc::IP_ADD_MEMBERSHIP
                | libc::IP_DROP_MEMBERSHIP
                | libc::IP_ADD_SOURCE_MEMBERSHIP
                | libc::IP_DROP_SOURCE_MEMBERSHIP
                | libc::MCAST_JOIN_GROUP
                | libc::MCAST_LEAVE_GROUP
                | libc::MCAST_JOIN_SOURCE_GROUP
                | libc::MCAST_LEAVE_SOURCE_GROUP
                | libc::IP_MULTICAST_IF
                | libc::IP_MULTICAST_TTL
                | libc::IP_MULTICAST_LOOP
        )
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(bytes))
}

/// The IPv4 address in a `sockaddr_storage` at `at`, if its family is `AF_INET`.
fn sockaddr_in_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let family = u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?);
    if c_int::from(family) != libc::AF_INET {
        return None;
    }
    ipv4_at(b, at + 4)
}

/// Offset of `gr_group` / `gsr_group` (after the interface index and padding).
const GROUP_OFFSET: usize = 8;
/// Offset of `gsr_source`.
const SOURCE_OFFSET: usize = GROUP_OFFSET + 128;

/// Decodes a multicast `setsockopt`. `val` holds the program's bytes (at most
/// [`MAX_OPTION_LEN`] of them), `len` is the length it passed.
pub fn parse_set(name: c_int, val: &[u8], len: usize) -> Result<SetOption, i32> {
    let einval = Err(libc::EINVAL);
    match name {
        libc::IP_ADD_MEMBERSHIP | libc::IP_DROP_MEMBERSHIP => {
            if len < IP_MREQ_LEN {
                return einval;
            }
            let group = ipv4_at(val, 0).ok_or(libc::EINVAL)?;
            Ok(SetOption::Membership(if name == libc::IP_ADD_MEMBERSHIP {
                MembershipOp::Join(group)
            } else {
                MembershipOp::Leave(group)
            }))
        }
        libc::IP_ADD_SOURCE_MEMBERSHIP | libc::IP_DROP_SOURCE_MEMBERSHIP => {
            if len != IP_MREQ_SOURCE_LEN {
                return einval;
            }
            let group = ipv4_at(val, 0).ok_or(libc::EINVAL)?;
            let source = ipv4_at(val, 8).ok_or(libc::EINVAL)?;
            Ok(SetOption::Membership(
                if name == libc::IP_ADD_SOURCE_MEMBERSHIP {
                    MembershipOp::AddSource { group, source }
                } else {
                    MembershipOp::DropSource { group, source }
                },
            ))
        }
        libc::MCAST_JOIN_GROUP | libc::MCAST_LEAVE_GROUP => {
            if len < GROUP_REQ_LEN {
                return einval;
            }
            let group = sockaddr_in_at(val, GROUP_OFFSET).ok_or(libc::EINVAL)?;
            Ok(SetOption::Membership(if name == libc::MCAST_JOIN_GROUP {
                MembershipOp::Join(group)
            } else {
                MembershipOp::Leave(group)
            }))
        }
        libc::MCAST_JOIN_SOURCE_GROUP | libc::MCAST_LEAVE_SOURCE_GROUP => {
            if len != GROUP_SOURCE_REQ_LEN {
                return einval;
            }
            let group = sockaddr_in_at(val, GROUP_OFFSET).ok_or(libc::EADDRNOTAVAIL)?;
            let source = sockaddr_in_at(val, SOURCE_OFFSET).ok_or(libc::EADDRNOTAVAIL)?;
            Ok(SetOption::Membership(
                if name == libc::MCAST_JOIN_SOURCE_GROUP {
                    MembershipOp::AddSource { group, source }
                } else {
                    MembershipOp::DropSource { group, source }
                },
            ))
        }
        libc::IP_MULTICAST_TTL => {
            let v = int_or_char(val, len)?;
            match v {
                -1 => Ok(SetOption::Ttl(1)),
                0..=255 => Ok(SetOption::Ttl(v as u8)),
                _ => einval,
            }
        }
        libc::IP_MULTICAST_LOOP => Ok(SetOption::Loop(int_or_char(val, len)? != 0)),
        libc::IP_MULTICAST_IF => {
            if len < 4 {
                return einval;
            }
            // in_addr alone is the address; ip_mreq/ip_mreqn carry it second.
            let at = if len >= IP_MREQ_LEN { 4 } else { 0 };
            Ok(SetOption::Interface(ipv4_at(val, at).ok_or(libc::EINVAL)?))
        }
        _ => Err(libc::ENOPROTOOPT),
    }
}

/// An int, or an unsigned char when shorter (what the kernel accepts for byte options).
fn int_or_char(val: &[u8], len: usize) -> Result<i32, i32> {
    if len >= 4 {
        let b: [u8; 4] = val
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or(libc::EINVAL)?;
        Ok(i32::from_ne_bytes(b))
    } else if len >= 1 {
        val.first().map(|&b| i32::from(b)).ok_or(libc::EINVAL)
    } else {
        Err(libc::EINVAL)
    }
}

/// The bytes `getsockopt` returns for a byte-sized option (TTL, LOOP) given the caller's
/// room: one unsigned char when the room is 1–3 bytes, else an int cut to the room.
pub fn encode_byte_option(v: u8, room: usize) -> Vec<u8> {
    if (1..4).contains(&room) {
        vec![v]
    } else {
        let b = i32::from(v).to_ne_bytes();
        b[..room.min(4)].to_vec()
    }
}

/// The bytes `getsockopt(IP_MULTICAST_IF)` returns: the `in_addr`, cut to the room.
pub fn encode_interface(a: Ipv4Addr, room: usize) -> Vec<u8> {
    a.octets()[..room.min(4)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: Ipv4Addr = Ipv4Addr::new(239, 1, 2, 3);
    const S: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn mreqn(g: Ipv4Addr, iface: Ipv4Addr, index: i32) -> Vec<u8> {
        let mut v = g.octets().to_vec();
        v.extend(iface.octets());
        v.extend(index.to_ne_bytes());
        v
    }

    fn storage(a: Option<Ipv4Addr>) -> Vec<u8> {
        let mut v = vec![0u8; 128];
        match a {
            Some(a) => {
                v[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                v[4..8].copy_from_slice(&a.octets());
            }
            None => v[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes()),
        }
        v
    }

    fn group_req(g: Option<Ipv4Addr>) -> Vec<u8> {
        let mut v = vec![0u8; 8];
        v.extend(storage(g));
        v
    }

    fn group_source_req(g: Option<Ipv4Addr>, s: Option<Ipv4Addr>) -> Vec<u8> {
        let mut v = group_req(g);
        v.extend(storage(s));
        v
    }

    fn set(name: c_int, v: &[u8]) -> Result<SetOption, i32> {
        parse_set(name, v, v.len())
    }

    #[test]
    fn joins_in_every_spelling() {
        let m = SetOption::Membership;
        let mreq = &mreqn(G, Ipv4Addr::UNSPECIFIED, 0)[..8];
        assert_eq!(
            set(libc::IP_ADD_MEMBERSHIP, mreq),
            Ok(m(MembershipOp::Join(G)))
        );
        assert_eq!(
            set(libc::IP_ADD_MEMBERSHIP, &mreqn(G, Ipv4Addr::LOCALHOST, 1)),
            Ok(m(MembershipOp::Join(G)))
        );
        assert_eq!(set(libc::IP_ADD_MEMBERSHIP, &mreq[..7]), Err(libc::EINVAL));
        assert_eq!(
            set(libc::IP_DROP_MEMBERSHIP, mreq),
            Ok(m(MembershipOp::Leave(G)))
        );
        let mut src = mreq.to_vec();
        src.extend(S.octets());
        assert_eq!(
            set(libc::IP_ADD_SOURCE_MEMBERSHIP, &src),
            Ok(m(MembershipOp::AddSource {
                group: G,
                source: S
            }))
        );
        assert_eq!(
            set(libc::IP_DROP_SOURCE_MEMBERSHIP, &src),
            Ok(m(MembershipOp::DropSource {
                group: G,
                source: S
            }))
        );
        src.push(0);
        assert_eq!(set(libc::IP_ADD_SOURCE_MEMBERSHIP, &src), Err(libc::EINVAL));
        let gr = group_req(Some(G));
        assert_eq!(gr.len(), GROUP_REQ_LEN);
        assert_eq!(
            set(libc::MCAST_JOIN_GROUP, &gr),
            Ok(m(MembershipOp::Join(G)))
        );
        assert_eq!(set(libc::MCAST_JOIN_GROUP, &gr[..135]), Err(libc::EINVAL));
        let mut long = group_source_req(Some(G), Some(S));
        assert_eq!(long.len(), GROUP_SOURCE_REQ_LEN);
        assert_eq!(
            set(libc::MCAST_JOIN_GROUP, &long),
            Ok(m(MembershipOp::Join(G))),
            "a longer buffer is read as a group_req"
        );
        assert_eq!(
            set(libc::MCAST_LEAVE_GROUP, &group_req(None)),
            Err(libc::EINVAL)
        );
        assert_eq!(
            set(libc::MCAST_JOIN_SOURCE_GROUP, &long),
            Ok(m(MembershipOp::AddSource {
                group: G,
                source: S
            }))
        );
        assert_eq!(
            set(libc::MCAST_LEAVE_SOURCE_GROUP, &long),
            Ok(m(MembershipOp::DropSource {
                group: G,
                source: S
            }))
        );
        assert_eq!(
            set(libc::MCAST_JOIN_SOURCE_GROUP, &long[..263]),
            Err(libc::EINVAL)
        );
        assert_eq!(
            set(
                libc::MCAST_JOIN_SOURCE_GROUP,
                &group_source_req(Some(G), None)
            ),
            Err(libc::EADDRNOTAVAIL)
        );
        long.push(0);
        assert_eq!(set(libc::MCAST_JOIN_SOURCE_GROUP, &long), Err(libc::EINVAL));
    }

    #[test]
    fn ttl_loop_and_interface_like_the_kernel() {
        let int = |v: i32| v.to_ne_bytes().to_vec();
        assert_eq!(set(libc::IP_MULTICAST_TTL, &[0]), Ok(SetOption::Ttl(0)));
        assert_eq!(
            set(libc::IP_MULTICAST_TTL, &[7, 0, 0]),
            Ok(SetOption::Ttl(7))
        );
        assert_eq!(
            set(libc::IP_MULTICAST_TTL, &int(64)),
            Ok(SetOption::Ttl(64))
        );
        assert_eq!(set(libc::IP_MULTICAST_TTL, &int(-1)), Ok(SetOption::Ttl(1)));
        assert_eq!(set(libc::IP_MULTICAST_TTL, &int(-2)), Err(libc::EINVAL));
        assert_eq!(set(libc::IP_MULTICAST_TTL, &int(256)), Err(libc::EINVAL));
        assert_eq!(set(libc::IP_MULTICAST_TTL, &[]), Err(libc::EINVAL));
        let mut eight = int(9);
        eight.extend([0; 4]);
        assert_eq!(set(libc::IP_MULTICAST_TTL, &eight), Ok(SetOption::Ttl(9)));
        assert_eq!(
            set(libc::IP_MULTICAST_LOOP, &int(7)),
            Ok(SetOption::Loop(true))
        );
        assert_eq!(
            set(libc::IP_MULTICAST_LOOP, &[0, 1]),
            Ok(SetOption::Loop(false))
        );
        assert_eq!(set(libc::IP_MULTICAST_LOOP, &[]), Err(libc::EINVAL));
        let a = Ipv4Addr::new(127, 0, 0, 9);
        assert_eq!(
            set(libc::IP_MULTICAST_IF, &a.octets()),
            Ok(SetOption::Interface(a))
        );
        assert_eq!(
            set(libc::IP_MULTICAST_IF, &mreqn(G, a, 0)[..8]),
            Ok(SetOption::Interface(a))
        );
        assert_eq!(
            set(libc::IP_MULTICAST_IF, &mreqn(G, a, 3)),
            Ok(SetOption::Interface(a))
        );
        assert_eq!(set(libc::IP_MULTICAST_IF, &[1, 2, 3]), Err(libc::EINVAL));
    }

    #[test]
    fn getsockopt_sizes() {
        assert_eq!(encode_byte_option(5, 1), vec![5]);
        assert_eq!(encode_byte_option(5, 3), vec![5]);
        assert_eq!(encode_byte_option(5, 4), 5i32.to_ne_bytes().to_vec());
        assert_eq!(encode_byte_option(5, 8), 5i32.to_ne_bytes().to_vec());
        assert!(encode_byte_option(5, 0).is_empty());
        let a = Ipv4Addr::new(1, 2, 3, 4);
        assert_eq!(encode_interface(a, 12), vec![1, 2, 3, 4]);
        assert_eq!(encode_interface(a, 2), vec![1, 2]);
    }

    proptest! {
        /// Any bytes, any claimed length: a value or an errno, never a panic, and the
        /// length rules hold whatever the content.
        #[test]
        fn never_panics(
            name in prop_oneof![
                Just(libc::IP_ADD_MEMBERSHIP), Just(libc::IP_DROP_MEMBERSHIP),
                Just(libc::IP_ADD_SOURCE_MEMBERSHIP), Just(libc::IP_DROP_SOURCE_MEMBERSHIP),
                Just(libc::MCAST_JOIN_GROUP), Just(libc::MCAST_LEAVE_GROUP),
                Just(libc::MCAST_JOIN_SOURCE_GROUP), Just(libc::MCAST_LEAVE_SOURCE_GROUP),
                Just(libc::IP_MULTICAST_IF), Just(libc::IP_MULTICAST_TTL),
                Just(libc::IP_MULTICAST_LOOP), any::<c_int>()],
            val in proptest::collection::vec(any::<u8>(), 0..300),
            claimed in 0usize..600,
        ) {
            let shown = &val[..val.len().min(claimed).min(MAX_OPTION_LEN)];
            let r = parse_set(name, shown, claimed);
            if claimed < 4 && name != libc::IP_MULTICAST_TTL && name != libc::IP_MULTICAST_LOOP {
                prop_assert!(r.is_err());
            }
            if name == libc::IP_ADD_SOURCE_MEMBERSHIP && claimed != IP_MREQ_SOURCE_LEN {
                prop_assert_eq!(r, Err(libc::EINVAL));
            }
        }
    }
}
