//! The daemon's overlay UDP socket, with batched receive (`recvmmsg`) and send (`sendmmsg`),
//! and with UDP segmentation offload both ways where the kernel has it: runs of same-sized
//! packets to one neighbour leave as one GSO send (`UDP_SEGMENT`), and the kernel may hand
//! several received packets over as one coalesced buffer (`UDP_GRO`). Per-packet system call
//! and stack cost is most of what a daemon spends per packet.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const BATCH: usize = 32;
const SLOT: usize = 65_536;
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most segments one GSO send carries (the kernel allows 64 or more).
const GSO_MAX_SEGMENTS: usize = 64;
/// Largest payload of one GSO send (one IP datagram's worth).
const GSO_MAX_BYTES: usize = 65_000;
const CMSG_SPACE: usize = 32;

/// What the socket did, for `weft status` (the bench divides datagrams by calls: how well
/// batching and segmentation offload work on the path at hand).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct UdpCounters {
    /// `recvmmsg` calls that returned something, and the datagrams they carried.
    pub recv_calls: u64,
    pub recv_datagrams: u64,
    /// Receive buffers that held several coalesced (GRO) datagrams.
    pub recv_coalesced: u64,
    /// `sendmmsg` calls, the messages they carried (one per segmented run) and the datagrams.
    pub send_calls: u64,
    pub send_messages: u64,
    pub send_datagrams: u64,
}

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; CMSG_SPACE]);

pub struct OverlaySocket {
    fd: OwnedFd,
    bufs: Vec<u8>,
    lens: [usize; BATCH],
    /// Segment size of a coalesced (GRO) receive, 0 when the slot holds one datagram.
    segs: [usize; BATCH],
    addrs: [libc::sockaddr_in; BATCH],
    cmsgs: [Cmsg; BATCH],
    gso: bool,
    counters: UdpCounters,
}

fn to_sockaddr(a: &SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(a: &libc::sockaddr_in) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        u32::from_be(a.sin_addr.s_addr).into(),
        u16::from_be(a.sin_port),
    ))
}

fn set_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: setsockopt with a valid int option value.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

fn set_buffer(fd: RawFd, opt: libc::c_int, force: libc::c_int, bytes: libc::c_int) {
    if !set_int(fd, libc::SOL_SOCKET, force, bytes) {
        set_int(fd, libc::SOL_SOCKET, opt, bytes);
    }
}

impl OverlaySocket {
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let SocketAddr::V4(v4) = addr else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
        };
        // SAFETY: plain socket creation; the fd is owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sa = to_sockaddr(&v4);
        // SAFETY: binding to a valid sockaddr_in.
        let rc = unsafe {
            libc::bind(
                raw,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        set_buffer(raw, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, 8 << 20);
        set_buffer(raw, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, 8 << 20);
        // Coalesced receives are optional: without them every datagram arrives on its own.
        set_int(raw, SOL_UDP, UDP_GRO, 1);
        Ok(OverlaySocket {
            fd,
            bufs: vec![0; SLOT * BATCH],
            lens: [0; BATCH],
            segs: [0; BATCH],
            addrs: [to_sockaddr(&SocketAddrV4::new(0.into(), 0)); BATCH],
            cmsgs: [Cmsg([0; CMSG_SPACE]); BATCH],
            gso: std::env::var_os("WEFT_NO_GSO").is_none(),
            counters: UdpCounters::default(),
        })
    }

    pub fn counters(&self) -> UdpCounters {
        self.counters
    }

    /// Receives up to `BATCH` buffers; returns how many (0 when none are waiting).
    pub fn recv_batch(&mut self) -> io::Result<usize> {
        // SAFETY: every iovec points into `bufs` at a distinct SLOT-sized slice, every
        // msg_name at a distinct sockaddr_in, every msg_control at a distinct cmsg buffer;
        // all outlive the call.
        unsafe {
            let mut iovs: [libc::iovec; BATCH] = std::mem::zeroed();
            let mut msgs: [libc::mmsghdr; BATCH] = std::mem::zeroed();
            for i in 0..BATCH {
                iovs[i].iov_base = self.bufs.as_mut_ptr().add(i * SLOT) as *mut libc::c_void;
                iovs[i].iov_len = SLOT;
                msgs[i].msg_hdr.msg_iov = &mut iovs[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
                msgs[i].msg_hdr.msg_name =
                    &mut self.addrs[i] as *mut libc::sockaddr_in as *mut libc::c_void;
                msgs[i].msg_hdr.msg_namelen =
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                msgs[i].msg_hdr.msg_control = self.cmsgs[i].0.as_mut_ptr() as *mut libc::c_void;
                msgs[i].msg_hdr.msg_controllen = CMSG_SPACE;
            }
            let n = libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            );
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                    _ => Err(e),
                };
            }
            self.counters.recv_calls += 1;
            for (i, msg) in msgs.iter().enumerate().take(n as usize) {
                self.lens[i] = msg.msg_len as usize;
                self.segs[i] = 0;
                let mut hdr = libc::CMSG_FIRSTHDR(&msg.msg_hdr);
                while !hdr.is_null() {
                    if (*hdr).cmsg_level == SOL_UDP && (*hdr).cmsg_type == UDP_GRO {
                        let size = std::ptr::read_unaligned(libc::CMSG_DATA(hdr) as *const u16);
                        self.segs[i] = size as usize;
                    }
                    hdr = libc::CMSG_NXTHDR(&msg.msg_hdr, hdr);
                }
                let seg = self.segs[i];
                if seg > 0 && self.lens[i] > seg {
                    self.counters.recv_coalesced += 1;
                    self.counters.recv_datagrams += self.lens[i].div_ceil(seg) as u64;
                } else {
                    self.counters.recv_datagrams += 1;
                }
            }
            Ok(n as usize)
        }
    }

    /// The datagrams in buffer `i` of the last batch (several when the kernel coalesced them).
    pub fn received(&self, i: usize) -> (SocketAddr, impl Iterator<Item = &[u8]> + '_) {
        let buf = &self.bufs[i * SLOT..i * SLOT + self.lens[i]];
        let seg = if self.segs[i] == 0 {
            buf.len().max(1)
        } else {
            self.segs[i]
        };
        (from_sockaddr(&self.addrs[i]), buf.chunks(seg))
    }

    /// Like [`Self::received`], with the datagrams writable (link security decrypts them in
    /// place).
    pub fn received_mut(&mut self, i: usize) -> (SocketAddr, std::slice::ChunksMut<'_, u8>) {
        let buf = &mut self.bufs[i * SLOT..i * SLOT + self.lens[i]];
        let seg = if self.segs[i] == 0 {
            buf.len().max(1)
        } else {
            self.segs[i]
        };
        (from_sockaddr(&self.addrs[i]), buf.chunks_mut(seg))
    }

    /// Sends as many of `packets` as the socket takes; returns how many packets were consumed
    /// (the rest should wait for writability). Runs of packets to one destination with one
    /// size (the last may be shorter) go out as one segmented send.
    pub fn send_batch<'a>(
        &mut self,
        packets: impl Iterator<Item = (SocketAddr, &'a [u8])>,
    ) -> io::Result<usize> {
        // Group into sends: (destination, segment size, first iovec, iovec count).
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(BATCH * 4);
        let mut groups: Vec<(libc::sockaddr_in, usize, usize, usize)> = Vec::with_capacity(BATCH);
        let mut last_len = 0usize;
        let mut group_bytes = 0usize;
        for (dst, payload) in packets {
            let SocketAddr::V4(v4) = dst else { continue };
            let sa = to_sockaddr(&v4);
            let extend = self.gso
                && groups.last().is_some_and(|g| {
                    g.0.sin_addr.s_addr == sa.sin_addr.s_addr
                        && g.0.sin_port == sa.sin_port
                        && payload.len() <= g.1
                        && last_len == g.1
                        && g.3 < GSO_MAX_SEGMENTS
                        && group_bytes + payload.len() <= GSO_MAX_BYTES
                });
            if extend {
                if let Some(g) = groups.last_mut() {
                    g.3 += 1;
                }
                group_bytes += payload.len();
            } else {
                if groups.len() == BATCH {
                    break;
                }
                groups.push((sa, payload.len(), iovs.len(), 1));
                group_bytes = payload.len();
            }
            last_len = payload.len();
            iovs.push(libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            });
        }
        if groups.is_empty() {
            return Ok(0);
        }
        let mut cmsgs = vec![Cmsg([0; CMSG_SPACE]); groups.len()];
        // SAFETY: every mmsghdr references iovecs, addresses and control buffers that live
        // until sendmmsg returns and are not moved meanwhile.
        unsafe {
            let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(groups.len());
            for (k, g) in groups.iter_mut().enumerate() {
                let mut m: libc::mmsghdr = std::mem::zeroed();
                m.msg_hdr.msg_iov = iovs.as_mut_ptr().add(g.2);
                m.msg_hdr.msg_iovlen = g.3;
                m.msg_hdr.msg_name = &mut g.0 as *mut libc::sockaddr_in as *mut libc::c_void;
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                if g.3 > 1 {
                    m.msg_hdr.msg_control = cmsgs[k].0.as_mut_ptr() as *mut libc::c_void;
                    m.msg_hdr.msg_controllen =
                        libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
                    let hdr = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                    (*hdr).cmsg_level = SOL_UDP;
                    (*hdr).cmsg_type = UDP_SEGMENT;
                    (*hdr).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(hdr) as *mut u16, g.1 as u16);
                }
                msgs.push(m);
            }
            let n = libc::sendmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            );
            self.counters.send_calls += 1;
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                    // The device cannot segment: stop trying and resend these one by one.
                    Some(libc::EIO) if groups[0].3 > 1 => {
                        self.gso = false;
                        Ok(0)
                    }
                    // A neighbour's port being closed (ICMP) must not stop the daemon.
                    Some(libc::ECONNREFUSED) => Ok(groups[0].3),
                    _ => Err(e),
                };
            }
            let sent: usize = groups.iter().take(n as usize).map(|g| g.3).sum();
            self.counters.send_messages += n as u64;
            self.counters.send_datagrams += sent as u64;
            Ok(sent)
        }
    }
}

/// Datagrams waiting for the socket, written back to back into one reused buffer (the node
/// appends each with `poll_transmit(now, &mut buf)`), so queueing a datagram allocates
/// nothing once the buffer has grown to the usual backlog.
#[derive(Debug, Default)]
pub struct TxQueue {
    bytes: Vec<u8>,
    /// (destination, start in `bytes`, length), oldest first.
    items: VecDeque<(SocketAddr, usize, usize)>,
}

impl TxQueue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Lets `fill` append one datagram to the buffer; it returns the destination and length
    /// of what it appended, or `None` (and appends nothing) when it has nothing to send.
    pub fn push_with(
        &mut self,
        fill: impl FnOnce(&mut Vec<u8>) -> Option<(SocketAddr, usize)>,
    ) -> bool {
        let start = self.bytes.len();
        match fill(&mut self.bytes) {
            Some((dst, len)) => {
                debug_assert_eq!(self.bytes.len(), start + len);
                self.items.push_back((dst, start, len));
                true
            }
            None => {
                self.bytes.truncate(start);
                false
            }
        }
    }

    pub fn front_dst(&self) -> Option<SocketAddr> {
        self.items.front().map(|&(dst, _, _)| dst)
    }

    /// The waiting datagrams, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.items
            .iter()
            .map(|&(dst, start, len)| (dst, &self.bytes[start..start + len]))
    }

    /// Forgets the `n` oldest datagrams (sent or given up on).
    pub fn consume(&mut self, n: usize) {
        self.items.drain(..n.min(self.items.len()));
        match self.items.front() {
            None => self.bytes.clear(),
            // A backlog that never empties: move it to the front once the sent part is large.
            Some(&(_, first, _)) if first > self.bytes.len() / 2 => {
                self.bytes.drain(..first);
                for item in self.items.iter_mut() {
                    item.1 -= first;
                }
            }
            Some(_) => {}
        }
    }
}

impl AsRawFd for OverlaySocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn queue_keeps_order_and_compacts() {
        let mut q = TxQueue::default();
        for i in 0..10u8 {
            assert!(q.push_with(|b| {
                b.extend_from_slice(&[i; 3]);
                Some((dst(i as u16), 3))
            }));
        }
        assert!(!q.push_with(|b| {
            b.push(99);
            None
        }));
        assert_eq!(q.len(), 10);
        q.consume(6);
        let left: Vec<(SocketAddr, Vec<u8>)> = q.iter().map(|(d, p)| (d, p.to_vec())).collect();
        assert_eq!(left.len(), 4);
        for (k, (d, p)) in left.iter().enumerate() {
            let i = 6 + k as u8;
            assert_eq!(*d, dst(i as u16));
            assert_eq!(p, &vec![i; 3]);
        }
        q.consume(10);
        assert!(q.is_empty());
        assert_eq!(q.front_dst(), None);
    }
}
