//! Delivery addresses. The daemon hands a group datagram to each joined socket as a unicast
//! datagram from the sender's proxy, so every member socket needs a kernel address that
//! reaches it and no other socket: several sockets on one host may join the same group on the
//! same port (each must get its copy, as the kernel gives every socket bound to the group's
//! port its own), and overlays run several nodes on one host. Unicast to a port held by
//! several `SO_REUSEADDR` sockets reaches only one of them, so a receiver that binds to the
//! wildcard or to a group address is bound instead to an address of its own in
//! [`BLOCK`] (a loopback /16 nothing else uses), with the port it asked for; `getsockname`
//! still reports what it asked for.

use crate::{addr, real, sys};
use libc::{c_int, sockaddr};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};

/// 127.254.0.0/16: loopback addresses for member sockets.
pub const BLOCK: Ipv4Addr = Ipv4Addr::new(127, 254, 0, 0);
const BLOCK_BITS: u32 = 16;
/// Candidates tried before concluding that a wildcard socket holds the port.
const TRIES: u32 = 8;

pub fn in_block(ip: Ipv4Addr) -> bool {
    u32::from(ip) >> BLOCK_BITS == u32::from(BLOCK) >> BLOCK_BITS
}

/// Candidate `i` of a sequence seeded by `seed`: spread over the block, never its network
/// address.
pub fn candidate(seed: u64, i: u32) -> Ipv4Addr {
    // splitmix64: consecutive seeds and indices land far apart.
    let mut z = seed.wrapping_add(u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let host = (z as u32) & ((1 << BLOCK_BITS) - 1);
    let host = if host == 0 { 1 } else { host };
    Ipv4Addr::from(u32::from(BLOCK) | host)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A seed no other socket on the host is likely to share: kernel randomness, else the pid,
/// the clock and a counter.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom into a local buffer of its length.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getrandom,
            b.as_mut_ptr(),
            b.len(),
            libc::GRND_NONBLOCK,
        )
    };
    let mixed = (sys::getpid() as u64) << 40
        ^ sys::monotonic_ms().wrapping_mul(1_000_003)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed);
    if n == 8 {
        u64::from_ne_bytes(b) ^ mixed
    } else {
        mixed
    }
}

/// A fresh address in the block for a socket that cannot be bound to one (it was bound to the
/// wildcard before it joined): unicast to it reaches the wildcard socket, and the daemon keeps
/// its membership apart from every other socket's.
pub fn unbound_address(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(candidate(seed(), 0), port)
}

unsafe fn bind_to(fd: c_int, family: c_int, a: SocketAddrV4) -> Result<(), i32> {
    let (ss, len) = addr::encode(family, a);
    if real::bind(fd, &ss as *const _ as *const sockaddr, len) == 0 {
        Ok(())
    } else {
        Err(crate::guard::errno())
    }
}

/// Binds `fd` to a delivery address of its own with `port` (0: the kernel picks one), and
/// returns the address bound.
///
/// An address is its own when a bind without `SO_REUSEADDR`/`SO_REUSEPORT` succeeds, so the
/// program's reuse flags are cleared for the attempts and put back after. When every attempt
/// meets a socket already on the port (one bound to the wildcard conflicts with all), the
/// program's flags decide, as they would have for its own bind.
///
/// # Safety
/// `fd` is the program's socket, unbound.
pub unsafe fn bind_own(fd: c_int, family: c_int, port: u16) -> Result<SocketAddrV4, i32> {
    let reuse_addr = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap_or(0);
    let reuse_port = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT).unwrap_or(0);
    let restore = || {
        if reuse_addr != 0 {
            sys::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse_addr);
        }
        if reuse_port != 0 {
            sys::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, reuse_port);
        }
    };
    if reuse_addr != 0 {
        sys::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0);
    }
    if reuse_port != 0 {
        sys::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 0);
    }
    let seed = seed();
    for i in 0..TRIES {
        let a = SocketAddrV4::new(candidate(seed, i), port);
        match bind_to(fd, family, a) {
            Ok(()) => {
                restore();
                return bound(fd, a);
            }
            Err(libc::EADDRINUSE) => continue,
            Err(e) => {
                restore();
                return Err(e);
            }
        }
    }
    restore();
    let a = SocketAddrV4::new(candidate(seed, TRIES), port);
    bind_to(fd, family, a)?;
    bound(fd, a)
}

/// The address actually bound (the kernel's port when the program asked for 0).
fn bound(fd: c_int, asked: SocketAddrV4) -> Result<SocketAddrV4, i32> {
    let port = sys::local_addr(fd)
        .and_then(|(ss, len)| addr::parse_storage(&ss, len))
        .map_or(asked.port(), |a| a.port);
    Ok(SocketAddrV4::new(*asked.ip(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn candidates_stay_in_the_block_and_spread() {
        let mut seen = BTreeSet::new();
        for seed in 0..64u64 {
            for i in 0..TRIES {
                let a = candidate(seed, i);
                assert!(in_block(a), "{a}");
                assert_ne!(a, BLOCK);
                seen.insert(a);
            }
        }
        // 512 draws from 65 535 addresses: a handful of repeats at most.
        assert!(seen.len() > 500, "{} distinct", seen.len());
        assert!(!in_block(Ipv4Addr::new(127, 0, 0, 1)));
        assert!(!in_block(Ipv4Addr::new(127, 253, 255, 255)));
    }

    #[test]
    fn own_addresses_are_exclusive() {
        let fds: Vec<c_int> = (0..4)
            .map(|_| unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) })
            .collect();
        let one = 1;
        for &fd in &fds {
            assert!(fd >= 0);
            sys::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, one);
        }
        let first = unsafe { bind_own(fds[0], libc::AF_INET, 0) }.expect("bind");
        assert!(in_block(*first.ip()));
        let mut addrs = BTreeSet::from([*first.ip()]);
        for &fd in &fds[1..] {
            let a = unsafe { bind_own(fd, libc::AF_INET, first.port()) }.expect("bind");
            assert_eq!(a.port(), first.port());
            assert!(addrs.insert(*a.ip()), "{a} given twice");
            assert_eq!(
                sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR),
                Some(1),
                "the program's flag is back"
            );
        }
        for fd in fds {
            sys::close(fd);
        }
    }
}
