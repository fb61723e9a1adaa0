//! An attacker on the same machine: UDP datagrams with any source address and port, sent
//! from a raw socket (IP_HDRINCL), and the daemon packet formats to fill them with. Only for
//! 127.0.0.0/8 destinations (the tests' own daemons).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub struct Spoofer {
    fd: OwnedFd,
}

impl Spoofer {
    pub fn new() -> Spoofer {
        // SAFETY: plain socket creation; the descriptor is owned right after.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(
            raw >= 0,
            "raw socket: {} (the red-team tests run as root)",
            std::io::Error::last_os_error()
        );
        // SAFETY: raw is a fresh descriptor we own.
        Spoofer {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        }
    }

    /// Sends `payload` as a UDP datagram from `src` to `dst`.
    pub fn send(&self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        assert!(dst.ip().is_loopback(), "spoofed traffic only to loopback");
        let udp_len = 8 + payload.len();
        let total = 20 + udp_len;
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
        p.extend_from_slice(&src.ip().octets());
        p.extend_from_slice(&dst.ip().octets());
        p.extend_from_slice(&src.port().to_be_bytes());
        p.extend_from_slice(&dst.port().to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        // UDP checksum 0: none (IPv4).
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(*dst.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sending a valid buffer to a valid sockaddr_in.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                p.as_ptr() as *const libc::c_void,
                p.len(),
                0,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            n,
            p.len() as isize,
            "raw send: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Default for Spoofer {
    fn default() -> Self {
        Spoofer::new()
    }
}

fn node(ip: Ipv4Addr) -> u32 {
    u32::from(ip)
}

/// The 16-byte outer header (docs: core/src/header.rs) with no authentication trailer.
pub fn header(kind: u8, sender: Ipv4Addr, incarnation: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(64);
    h.extend_from_slice(&0x5746u16.to_be_bytes());
    h.extend_from_slice(&[1, kind, 0, 0, 0, 0]);
    h.extend_from_slice(&node(sender).to_be_bytes());
    h.extend_from_slice(&incarnation.to_be_bytes());
    h
}

pub const HELLO: u8 = 1;
pub const STATE: u8 = 2;
pub const DATA: u8 = 4;

/// A hello (docs: daemon/src/overlay/wire.rs) claiming to have heard us at `peer_incarnation`.
pub fn hello(sender: Ipv4Addr, incarnation: u32, seq: u32, peer_incarnation: u32) -> Vec<u8> {
    let mut p = header(HELLO, sender, incarnation);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&1u64.to_be_bytes());
    p.extend_from_slice(&0u64.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&peer_incarnation.to_be_bytes());
    p
}

/// A link-state advert: origin, sequence, links (neighbour, cost).
pub fn advert(origin: Ipv4Addr, seq: u64, links: &[(Ipv4Addr, u32)]) -> Vec<u8> {
    let mut links = links.to_vec();
    links.sort();
    let mut a = Vec::new();
    a.extend_from_slice(&node(origin).to_be_bytes());
    a.extend_from_slice(&seq.to_be_bytes());
    a.extend_from_slice(&(links.len() as u16).to_be_bytes());
    for (n, c) in &links {
        a.extend_from_slice(&node(*n).to_be_bytes());
        a.extend_from_slice(&c.to_be_bytes());
    }
    a
}

/// A state packet carrying link-state adverts.
pub fn state(sender: Ipv4Addr, incarnation: u32, adverts: &[Vec<u8>]) -> Vec<u8> {
    let mut p = header(STATE, sender, incarnation);
    p.extend_from_slice(&(adverts.len() as u16).to_be_bytes());
    for a in adverts {
        p.push(1);
        p.extend_from_slice(&(a.len() as u16).to_be_bytes());
        p.extend_from_slice(a);
    }
    p
}

/// A best-effort routed packet: routing header (proto 1 datagram or 2 session) and body.
pub fn routed(
    sender: Ipv4Addr,
    incarnation: u32,
    proto: u8,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    body: &[u8],
) -> Vec<u8> {
    let mut p = header(DATA, sender, incarnation);
    p.extend_from_slice(&[0, proto, 0, 64]);
    p.extend_from_slice(&node(*src.ip()).to_be_bytes());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&node(*dst.ip()).to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// A whole datagram's fragment header and payload.
pub fn datagram_body(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// A session SYN (docs: transport/src/session/mod.rs), 48-byte header, no options.
pub fn syn(conn_id: u32, src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&[1, 0x01]);
    s.extend_from_slice(&48u16.to_be_bytes());
    s.extend_from_slice(&conn_id.to_be_bytes());
    s.extend_from_slice(&src_port.to_be_bytes());
    s.extend_from_slice(&dst_port.to_be_bytes());
    s.extend_from_slice(&0u64.to_be_bytes());
    s.extend_from_slice(&0u64.to_be_bytes());
    s.extend_from_slice(&65_535u32.to_be_bytes());
    s.extend_from_slice(&[0; 16]);
    s
}

/// `packet` with a made-up authentication trailer (key id, counter, tag): what an attacker
/// without keys can do to look like a sealed packet.
pub fn with_forged_trailer(mut packet: Vec<u8>, key_id: u16, counter: u64) -> Vec<u8> {
    packet[5] = 24;
    packet[6..8].copy_from_slice(&key_id.to_be_bytes());
    packet.extend_from_slice(&counter.to_le_bytes());
    packet.extend_from_slice(&[0xa5; 16]);
    packet
}
