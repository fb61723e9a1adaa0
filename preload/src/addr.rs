//! Socket addresses as programs pass them: `sockaddr_in`, and `sockaddr_in6` holding IPv4
//! (v4-mapped `::ffff:a.b.c.d`, what a dual-stack `[::]` socket sees). The overlay is IPv4;
//! a v6 socket's overlay peers appear v4-mapped.

use libc::{c_int, sockaddr, sockaddr_storage, socklen_t};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ip {
    /// IPv4, or IPv4 mapped into IPv6.
    V4(Ipv4Addr),
    /// `::`
    V6Any,
    /// Any other IPv6 address: never the overlay.
    V6Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockAddr {
    /// `AF_INET` or `AF_INET6`: how the program spells it, kept when we answer.
    pub family: c_int,
    pub ip: Ip,
    pub port: u16,
}

impl SockAddr {
    pub fn v4(&self) -> Option<SocketAddrV4> {
        match self.ip {
            Ip::V4(ip) => Some(SocketAddrV4::new(ip, self.port)),
            _ => None,
        }
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self.ip, Ip::V6Any) || self.ip == Ip::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// Parses what the program passed; `None` for other families or lengths the kernel would
/// reject (the real call then reports the error).
///
/// # Safety
/// `addr` must be readable for `len` bytes (or null).
pub unsafe fn parse(addr: *const sockaddr, len: socklen_t) -> Option<SockAddr> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    let family = (*addr).sa_family as c_int;
    match family {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            let sin = std::ptr::read_unaligned(addr as *const libc::sockaddr_in);
            Some(SockAddr {
                family,
                ip: Ip::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                port: u16::from_be(sin.sin_port),
            })
        }
        // 24 bytes: the RFC 2133 sockaddr_in6 without sin6_scope_id, which Linux accepts.
        libc::AF_INET6 if len as usize >= 24 => {
            let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
            std::ptr::copy_nonoverlapping(
                addr as *const u8,
                &mut sin6 as *mut _ as *mut u8,
                (len as usize).min(std::mem::size_of::<libc::sockaddr_in6>()),
            );
            let ip6 = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let ip = match ip6.to_ipv4_mapped() {
                Some(v4) => Ip::V4(v4),
                None if ip6.is_unspecified() => Ip::V6Any,
                None => Ip::V6Other,
            };
            Some(SockAddr {
                family,
                ip,
                port: u16::from_be(sin6.sin6_port),
            })
        }
        _ => None,
    }
}

/// Parses a kernel-filled `sockaddr_storage`.
pub fn parse_storage(ss: &sockaddr_storage, len: socklen_t) -> Option<SockAddr> {
    // SAFETY: the storage is fully readable; len bounds what parse looks at.
    unsafe {
        parse(
            ss as *const _ as *const sockaddr,
            len.min(std::mem::size_of::<sockaddr_storage>() as socklen_t),
        )
    }
}

/// `a` spelled in `family` (`AF_INET6` → v4-mapped).
pub fn encode(family: c_int, a: SocketAddrV4) -> (sockaddr_storage, socklen_t) {
    // SAFETY: sockaddr_storage is plain data; we write a sockaddr_in(6) at its start, which
    // its size and alignment allow.
    unsafe {
        let mut ss: sockaddr_storage = std::mem::zeroed();
        if family == libc::AF_INET6 {
            let sin6 = &mut *(&mut ss as *mut sockaddr_storage as *mut libc::sockaddr_in6);
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().to_ipv6_mapped().octets();
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as socklen_t)
        } else {
            let sin = &mut *(&mut ss as *mut sockaddr_storage as *mut libc::sockaddr_in);
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (ss, std::mem::size_of::<libc::sockaddr_in>() as socklen_t)
        }
    }
}

/// The wildcard address of `family` with port 0 (what an implicit bind uses).
pub fn wildcard(family: c_int) -> (sockaddr_storage, socklen_t) {
    if family == libc::AF_INET6 {
        // SAFETY: as in encode.
        unsafe {
            let mut ss: sockaddr_storage = std::mem::zeroed();
            let sin6 = &mut *(&mut ss as *mut sockaddr_storage as *mut libc::sockaddr_in6);
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as socklen_t)
        }
    } else {
        encode(libc::AF_INET, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    }
}

/// Copies an address out the way the kernel does: at most `*outlen` bytes, and `*outlen` set
/// to the full length. Null pointers: nothing.
///
/// # Safety
/// `out` must be writable for `*outlen` bytes; `outlen` valid or null.
pub unsafe fn copy_out(
    src: &sockaddr_storage,
    srclen: socklen_t,
    out: *mut sockaddr,
    outlen: *mut socklen_t,
) {
    if out.is_null() || outlen.is_null() {
        return;
    }
    let room = *outlen as usize;
    let n = (srclen as usize)
        .min(room)
        .min(std::mem::size_of::<sockaddr_storage>());
    std::ptr::copy_nonoverlapping(src as *const _ as *const u8, out as *mut u8, n);
    *outlen = srclen;
}

/// Writes `a` (in `family`) to a program's buffer with kernel semantics.
///
/// # Safety
/// As [`copy_out`].
pub unsafe fn write_out(
    family: c_int,
    a: SocketAddrV4,
    out: *mut sockaddr,
    outlen: *mut socklen_t,
) {
    let (ss, len) = encode(family, a);
    copy_out(&ss, len, out, outlen);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a program passes, parsing never panics, and what parses re-encodes to
        /// the same address.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40), len in 0u32..64) {
            let mut ss: sockaddr_storage = unsafe { std::mem::zeroed() };
            let n = bytes.len().min(std::mem::size_of::<sockaddr_storage>());
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), &mut ss as *mut _ as *mut u8, n) };
            let len = len.min(n as u32);
            if let Some(a) = unsafe { parse(&ss as *const _ as *const sockaddr, len) } {
                if let Some(v4) = a.v4() {
                    let (enc, elen) = encode(a.family, v4);
                    prop_assert_eq!(parse_storage(&enc, elen).and_then(|b| b.v4()), Some(v4));
                }
            }
        }
    }

    #[test]
    fn v4_and_mapped_round_trip() {
        let a = SocketAddrV4::new(Ipv4Addr::new(127, 9, 0, 3), 5201);
        for family in [libc::AF_INET, libc::AF_INET6] {
            let (ss, len) = encode(family, a);
            let p = parse_storage(&ss, len).expect("parses");
            assert_eq!(p.family, family);
            assert_eq!(p.v4(), Some(a));
            assert!(!p.is_wildcard());
        }
    }

    #[test]
    fn wildcards_and_foreign_addresses() {
        for family in [libc::AF_INET, libc::AF_INET6] {
            let (ss, len) = wildcard(family);
            assert!(parse_storage(&ss, len).expect("parses").is_wildcard());
        }
        // SAFETY: a zeroed sockaddr_in6 with ::1.
        let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_addr.s6_addr = Ipv6Addr::LOCALHOST.octets();
        let p = unsafe { parse(&sin6 as *const _ as *const sockaddr, 28) }.expect("parses");
        assert_eq!(p.ip, Ip::V6Other);
        assert_eq!(p.v4(), None);
        // Too short for its family, or not IP at all: left to the kernel.
        let (ss, _) = encode(libc::AF_INET, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));
        assert_eq!(
            unsafe { parse(&ss as *const _ as *const sockaddr, 8) },
            None
        );
        let un = libc::sockaddr {
            sa_family: libc::AF_UNIX as libc::sa_family_t,
            sa_data: [0; 14],
        };
        assert_eq!(unsafe { parse(&un, 16) }, None);
        assert_eq!(unsafe { parse(std::ptr::null(), 16) }, None);
    }

    #[test]
    fn copy_out_truncates_like_the_kernel() {
        let (ss, len) = encode(
            libc::AF_INET6,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7),
        );
        let mut buf = [0xAAu8; 32];
        let mut outlen: socklen_t = 8;
        unsafe { copy_out(&ss, len, buf.as_mut_ptr() as *mut sockaddr, &mut outlen) };
        assert_eq!(outlen, 28);
        assert_eq!(buf[8], 0xAA, "nothing written past the caller's length");
        assert_eq!(u16::from_ne_bytes([buf[0], buf[1]]), libc::AF_INET6 as u16);
    }
}
